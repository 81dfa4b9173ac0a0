//! Who may do what on the journal: the built-in role rules. They are the floor: a policy
//! engine (later) may refuse more, never allow more.
//!
//! | role                      | reads                                   | writes                                   |
//! |---------------------------|-----------------------------------------|------------------------------------------|
//! | `pact-platform-admin`     | everything                              | everything                               |
//! | `pact-ops-<vc>`           | global, vc:<vc>, nodes assigned to <vc> | vc:<vc>, nodes assigned to <vc>          |
//! | `pact-viewer-<vc>`        | global, vc:<vc>, nodes assigned to <vc> | nothing                                  |
//! | `pact-regulated-<vc>`     | as ops                                  | refused until two-person approval exists |
//! | `pact-service-agent`      | its own node (token `sub` = node id)    | its own node's state                     |
//! | `pact-service-ai`         | everything                              | nothing; never an emergency              |
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
        Role::Regulated(_) if need == Need::Write => {
            denied("its writes need two-person approval, which this journal does not serve yet".into())
        }
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

/// Whether `caller` may append an entry of type `t` on `target`.
pub fn check_append(caller: &Caller, t: EntryType, target: &Target) -> Result<(), String> {
    if matches!(t, EntryType::EmergencyStart | EntryType::EmergencyEnd) && role(caller) == Role::ServiceAi {
        return Err(format!("{} may never start or end an emergency", caller.role));
    }
    if admin_only(t) && role(caller) != Role::Admin {
        return Err(format!("{} entries need {ADMIN} (caller has {})", t.as_str_name(), caller.role));
    }
    check(caller, Need::Write, target)
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
        assert!(check(&reg, w, &ml).unwrap_err().contains("two-person approval"));
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
        assert!(check_append(&ops, EntryType::Commit, &ml).is_ok());
        let e = check_append(&ops, EntryType::NodeAssigned, &node("n1", Some("ml"))).unwrap_err();
        assert!(e.contains("ENTRY_TYPE_NODE_ASSIGNED") && e.contains(ADMIN), "{e}");
        let ai = caller(SERVICE_AI, "mcp");
        assert!(check_append(&ai, EntryType::EmergencyStart, &ml).unwrap_err().contains("never"));
        assert!(check_append(&caller(ADMIN, "root"), EntryType::EmergencyStart, &ml).is_ok());
    }
}
