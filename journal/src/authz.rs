//! Who may do what on the journal: the built-in role rules. They are the floor: the policy
//! engine (`policy.rs`, asked by `rpc` after these allowed a request) may refuse more, never
//! allow more.
//!
//! | role                      | reads                                   | writes                                   |
//! |---------------------------|-----------------------------------------|------------------------------------------|
//! | `pact-platform-admin`     | everything                              | everything                               |
//! | `pact-ops-<vc>`           | global, vc:<vc>, nodes assigned to <vc> | vc:<vc>, nodes assigned to <vc>          |
//! | `pact-viewer-<vc>`        | global, vc:<vc>, nodes assigned to <vc> | nothing                                  |
//! | `pact-regulated-<vc>`     | as ops                                  | entries on vc:<vc> and its nodes, held for a second person's approval |
//! | `pact-service-agent`      | its own node (token `sub` = node id)    | its own node's state                     |
//! | `pact-service-ai`         | everything                              | nothing; never an emergency              |
//!
//! Two-person approval (`approval.rs`, [`Gate`]): an entry appended by `pact-regulated-<vc>`
//! is always held; one appended by `pact-ops-<vc>` is held when the vCluster's policy says
//! `two_person_approval` or `regulated`. Platform-admin writes are never held: that is the
//! break-glass, and the entry names the admin as its author. Agents report about their own
//! node and are not held. Who decides ([`check_decide`]): platform-admin, or `pact-ops-<vc>` /
//! `pact-regulated-<vc>` of the approval's vCluster, never the requester.
//!
//! Entries that change the cluster's shape (node assignment, enrollment, certificates,
//! policy, membership) are platform-admin only, whatever their scope. Any other role string
//! is refused.

use pact_proto::auth::Caller;
use pact_proto::config::EntryType;

pub const ADMIN: &str = "pact-platform-admin";
pub const SERVICE_AGENT: &str = "pact-service-agent";
pub const SERVICE_AI: &str = "pact-service-ai";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role<'a> {
    Admin,
    Ops(&'a str),
    Viewer(&'a str),
    Regulated(&'a str),
    ServiceAgent,
    ServiceAi,
    Unknown,
}

pub fn role(c: &Caller) -> Role<'_> {
    let r = c.role.as_str();
    let scoped = |prefix: &str| r.strip_prefix(prefix).filter(|vc| !vc.is_empty());
    match r {
        ADMIN => Role::Admin,
        SERVICE_AGENT => Role::ServiceAgent,
        SERVICE_AI => Role::ServiceAi,
        _ => {
            if let Some(vc) = scoped("pact-ops-") {
                Role::Ops(vc)
            } else if let Some(vc) = scoped("pact-viewer-") {
                Role::Viewer(vc)
            } else if let Some(vc) = scoped("pact-regulated-") {
                Role::Regulated(vc)
            } else {
                Role::Unknown
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// What a request touches. A node carries the vCluster it is assigned to (None: unassigned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Global,
    VCluster(&'a str),
    Node { node: &'a str, vcluster: Option<String> },
}

impl Target<'_> {
    pub fn describe(&self) -> String {
        match self {
            Target::Global => "global".into(),
            Target::VCluster(v) => format!("vc:{v}"),
            Target::Node { node, .. } => format!("node:{node}"),
        }
    }
}

/// Whether `caller` may `need` on `target`; the refusal says what the role allows.
pub fn check(caller: &Caller, need: Need, target: &Target) -> Result<(), String> {
    let in_vc = |vc: &str| match target {
        Target::Global => need == Need::Read,
        Target::VCluster(v) => *v == vc,
        Target::Node { vcluster, .. } => vcluster.as_deref() == Some(vc),
    };
    let what = match need {
        Need::Read => "read",
        Need::Write => "write",
    };
    let denied = |allows: String| Err(format!("{} may not {what} {}: {allows}", caller.role, target.describe()));
    match role(caller) {
        Role::Admin => Ok(()),
        Role::Ops(vc) if in_vc(vc) => Ok(()),
        Role::Ops(vc) => denied(format!("it acts on vc:{vc} and the nodes assigned to it")),
        Role::Viewer(vc) if need == Need::Read && in_vc(vc) => Ok(()),
        Role::Viewer(vc) => denied(format!("it only reads vc:{vc}, its nodes and global entries")),
        Role::Regulated(vc) if need == Need::Read && in_vc(vc) => Ok(()),
        Role::Regulated(vc) if need == Need::Write => denied(format!(
            "its writes on vc:{vc} and its nodes are entries held for two-person approval (AppendEntry); nothing else"
        )),
        Role::Regulated(vc) => denied(format!("it only reads vc:{vc}, its nodes and global entries")),
        Role::ServiceAgent => match target {
            Target::Node { node, .. } if *node == caller.principal => Ok(()),
            _ => denied(format!("an agent acts only on its own node (node:{})", caller.principal)),
        },
        Role::ServiceAi if need == Need::Read => Ok(()),
        Role::ServiceAi => denied("the AI identity only reads the journal".into()),
        Role::Unknown => Err(format!("{:?} is not a pact role", caller.role)),
    }
}

/// Entry types only a platform admin may append, whatever their scope: they change the
/// cluster's shape or its rules.
pub fn admin_only(t: EntryType) -> bool {
    matches!(
        t,
        EntryType::NodeAssigned
            | EntryType::NodeMoved
            | EntryType::NodeUnassigned
            | EntryType::NodeEnrolled
            | EntryType::NodeActivated
            | EntryType::NodeDeactivated
            | EntryType::NodeDecommissioned
            | EntryType::CertSigned
            | EntryType::CertRevoked
            | EntryType::PolicyUpdate
    )
}

/// How an allowed append is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Applied at once.
    Direct,
    /// Held as a pending approval until a second person decides.
    Approval,
}

/// The vCluster a target belongs to (none for global entries and unassigned nodes).
pub fn vcluster_of<'a>(target: &'a Target) -> Option<&'a str> {
    match target {
        Target::Global => None,
        Target::VCluster(v) => Some(v),
        Target::Node { vcluster, .. } => vcluster.as_deref(),
    }
}

/// Whether `caller` may append an entry of type `t` on `target`, and how. `two_person`: the
/// target's vCluster policy has `two_person_approval` or `regulated`.
pub fn check_append(caller: &Caller, t: EntryType, target: &Target, two_person: bool) -> Result<Gate, String> {
    if matches!(t, EntryType::EmergencyStart | EntryType::EmergencyEnd) && role(caller) == Role::ServiceAi {
        return Err(format!("{} may never start or end an emergency", caller.role));
    }
    if admin_only(t) && role(caller) != Role::Admin {
        return Err(format!("{} entries need {ADMIN} (caller has {})", t.as_str_name(), caller.role));
    }
    if matches!(t, EntryType::PendingApproval | EntryType::ApprovalDecision) {
        return Err(format!(
            "{} entries are made by the journal (DecideApproval, `pact approve`), not appended",
            t.as_str_name()
        ));
    }
    match role(caller) {
        Role::Regulated(vc) if vcluster_of(target) == Some(vc) => Ok(Gate::Approval),
        Role::Ops(_) if two_person => check(caller, Need::Write, target).map(|()| Gate::Approval),
        _ => check(caller, Need::Write, target).map(|()| Gate::Direct),
    }
}

/// Whether `caller` may decide an approval on `target` requested by `requester`.
pub fn check_decide(caller: &Caller, requester: &str, target: &Target) -> Result<(), String> {
    if caller.principal == requester {
        return Err(format!(
            "{} requested this change and may not decide it: two-person approval needs a second person",
            caller.principal
        ));
    }
    let vc = vcluster_of(target);
    match role(caller) {
        Role::Admin => Ok(()),
        Role::Ops(v) | Role::Regulated(v) if vc == Some(v) => Ok(()),
        _ => Err(format!(
            "{} may not decide approvals on {}: deciders are {ADMIN}{}",
            caller.role,
            target.describe(),
            vc.map(|v| format!(", pact-ops-{v} and pact-regulated-{v}")).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: &str, sub: &str) -> Caller {
        Caller { principal: sub.into(), role: role.into(), principal_type: "human".into() }
    }

    fn node(n: &str, vc: Option<&str>) -> Target<'static> {
        Target::Node { node: Box::leak(n.to_string().into_boxed_str()), vcluster: vc.map(str::to_string) }
    }

    #[test]
    fn the_role_table() {
        let (r, w) = (Need::Read, Need::Write);
        let ml = Target::VCluster("ml");
        let other = Target::VCluster("other");
        let admin = caller(ADMIN, "root");
        let ops = caller("pact-ops-ml", "alice");
        let viewer = caller("pact-viewer-ml", "bob");
        let reg = caller("pact-regulated-ml", "carol");
        let agent = caller(SERVICE_AGENT, "n1");
        let ai = caller(SERVICE_AI, "mcp");
        for t in [&ml, &other, &Target::Global, &node("n1", None)] {
            assert!(check(&admin, w, t).is_ok());
        }
        assert!(check(&ops, w, &ml).is_ok());
        assert!(check(&ops, w, &node("n1", Some("ml"))).is_ok());
        assert!(check(&ops, r, &Target::Global).is_ok());
        let e = check(&ops, w, &other).unwrap_err();
        assert!(e.contains("pact-ops-ml may not write vc:other"), "{e}");
        assert!(check(&ops, w, &node("n2", Some("other"))).is_err());
        assert!(check(&ops, w, &node("n3", None)).is_err());
        assert!(check(&ops, w, &Target::Global).is_err());
        assert!(check(&viewer, r, &ml).is_ok());
        assert!(check(&viewer, w, &ml).unwrap_err().contains("only reads"));
        assert!(check(&viewer, r, &other).is_err());
        assert!(check(&reg, r, &ml).is_ok());
        assert!(check(&reg, w, &ml).unwrap_err().contains("held for two-person approval"));
        assert!(check(&agent, w, &node("n1", Some("ml"))).is_ok());
        assert!(check(&agent, r, &node("n2", Some("ml"))).is_err());
        assert!(check(&agent, r, &ml).is_err());
        assert!(check(&ai, r, &other).is_ok());
        assert!(check(&ai, w, &ml).is_err());
        for bogus in ["pact-ops-", "admin", "", "pact-platform-admins"] {
            assert!(check(&caller(bogus, "x"), r, &ml).is_err(), "{bogus}");
        }
    }

    #[test]
    fn entry_types() {
        let ops = caller("pact-ops-ml", "alice");
        let ml = Target::VCluster("ml");
        assert_eq!(check_append(&ops, EntryType::Commit, &ml, false), Ok(Gate::Direct));
        let e = check_append(&ops, EntryType::NodeAssigned, &node("n1", Some("ml")), false).unwrap_err();
        assert!(e.contains("ENTRY_TYPE_NODE_ASSIGNED") && e.contains(ADMIN), "{e}");
        let ai = caller(SERVICE_AI, "mcp");
        assert!(check_append(&ai, EntryType::EmergencyStart, &ml, false).unwrap_err().contains("never"));
        assert!(check_append(&caller(ADMIN, "root"), EntryType::EmergencyStart, &ml, false).is_ok());
        for t in [EntryType::PendingApproval, EntryType::ApprovalDecision] {
            assert!(check_append(&caller(ADMIN, "root"), t, &ml, false).unwrap_err().contains("made by the journal"));
        }
    }

    #[test]
    fn two_person_gates() {
        let ml = Target::VCluster("ml");
        let admin = caller(ADMIN, "root");
        let ops = caller("pact-ops-ml", "alice");
        let reg = caller("pact-regulated-ml", "carol");
        let agent = caller(SERVICE_AGENT, "n1");
        // Regulated: always held, on its vCluster and its nodes; refused elsewhere.
        assert_eq!(check_append(&reg, EntryType::Commit, &ml, false), Ok(Gate::Approval));
        assert_eq!(check_append(&reg, EntryType::Commit, &node("n1", Some("ml")), false), Ok(Gate::Approval));
        assert!(check_append(&reg, EntryType::Commit, &Target::VCluster("hpc"), false).is_err());
        assert!(check_append(&reg, EntryType::Commit, &Target::Global, false).is_err());
        // Ops: held where the policy asks for two persons; admin never (break-glass); agents not.
        assert_eq!(check_append(&ops, EntryType::Commit, &ml, true), Ok(Gate::Approval));
        assert!(check_append(&ops, EntryType::Commit, &Target::VCluster("hpc"), true).is_err());
        assert_eq!(check_append(&admin, EntryType::Commit, &ml, true), Ok(Gate::Direct));
        assert_eq!(check_append(&agent, EntryType::Commit, &node("n1", Some("ml")), true), Ok(Gate::Direct));
        // Deciders: admin, ops/regulated of that vCluster, never the requester.
        assert!(check_decide(&ops, "carol", &ml).is_ok());
        assert!(check_decide(&reg, "alice", &node("n1", Some("ml"))).is_ok());
        assert!(check_decide(&admin, "carol", &ml).is_ok());
        assert!(check_decide(&reg, "carol", &ml).unwrap_err().contains("second person"));
        assert!(check_decide(&admin, "root", &ml).unwrap_err().contains("second person"));
        for c in [
            caller("pact-viewer-ml", "bob"),
            caller("pact-ops-hpc", "dave"),
            caller("pact-regulated-hpc", "erin"),
            agent,
            caller(SERVICE_AI, "mcp"),
        ] {
            let e = check_decide(&c, "carol", &ml).unwrap_err();
            assert!(e.contains("may not decide approvals on vc:ml"), "{e}");
        }
    }
}
