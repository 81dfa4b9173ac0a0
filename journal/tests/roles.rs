//! Roles per vCluster against a real journal over real TLS: what each role may read and write,
//! that refusals leave nothing applied, and that every refusal is on the record with the
//! verified caller as author (the security plane's attack rows 10-12).

mod common;

use common::Journal;
use pact_proto::auth::{HmacVerifier, DEV_ISSUER};
use pact_proto::client::{CallError, Client};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse, GetOverlayRequest, ListEntriesRequest};
use pact_proto::Method;
use std::time::{Duration, Instant};

fn client_as(j: &Journal, subject: &str, role: &str) -> Client {
    let token = HmacVerifier::new(&j.hmac_secret(), DEV_ISSUER, "pact").mint(subject, role, 600).unwrap();
    Client::connect(&j.endpoint(), j.tls(), &token, Duration::from_secs(10)).unwrap()
}

fn scope(t: Target) -> Option<Scope> {
    Some(Scope { target: Some(t) })
}

fn entry(kind: EntryType, on: Target, msg: &str) -> ConfigEntry {
    ConfigEntry { entry_type: kind as i32, scope: scope(on), policy_ref: msg.into(), ..Default::default() }
}

fn append(c: &mut Client, e: ConfigEntry) -> Result<AppendEntryResponse, CallError> {
    c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(e) })
}

fn list(c: &mut Client, req: ListEntriesRequest) -> Vec<ConfigEntry> {
    c.call_stream(Method::ListEntries, &req).expect("list entries")
}

fn all(admin: &mut Client) -> Vec<ConfigEntry> {
    list(admin, ListEntriesRequest { limit: 10_000, oldest_first: true, ..Default::default() })
}

fn refused(r: Result<AppendEntryResponse, CallError>, want: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.to_string().contains(want), "{e} should say {want:?}");
        }
        Ok(a) => panic!("appended as {}, expected a refusal saying {want:?}", a.sequence),
    }
}

#[test]
fn roles_are_enforced_per_vcluster_and_refusals_are_recorded() {
    let j = Journal::start("roles");
    let mut admin = j.client();
    let vc = |v: &str| Target::VclusterId(v.into());
    append(&mut admin, entry(EntryType::Commit, vc("ml"), "admin-ml")).unwrap();
    append(&mut admin, entry(EntryType::Commit, vc("hpc"), "admin-hpc")).unwrap();
    let assign = ConfigEntry {
        target_vcluster: "ml".into(),
        ..entry(EntryType::NodeAssigned, Target::NodeId("n1".into()), "assign n1")
    };
    append(&mut admin, assign.clone()).unwrap();

    // Ops of ml: writes to vc:ml and to its node; not to hpc, not global, not assignments.
    let mut ops = client_as(&j, "alice", "pact-ops-ml");
    append(&mut ops, entry(EntryType::Commit, vc("ml"), "ops-ml")).unwrap();
    append(&mut ops, entry(EntryType::Commit, Target::NodeId("n1".into()), "ops-n1")).unwrap();
    refused(append(&mut ops, entry(EntryType::Commit, vc("hpc"), "ops-hpc")), "pact-ops-ml may not write vc:hpc");
    refused(append(&mut ops, entry(EntryType::Commit, Target::Global(true), "ops-global")), "may not write global");
    refused(
        append(
            &mut ops,
            ConfigEntry {
                target_vcluster: "ml".into(),
                ..entry(EntryType::NodeAssigned, Target::NodeId("n2".into()), "ops-assign")
            },
        ),
        "need pact-platform-admin",
    );
    // Its reads: a scope it may read, one it may not, and an unscoped list filtered to ml.
    let own = list(&mut ops, ListEntriesRequest { scope: scope(vc("ml")), ..Default::default() });
    assert!(own.iter().any(|e| e.policy_ref == "admin-ml"));
    let e = ops.call_stream::<_, ConfigEntry>(
        Method::ListEntries,
        &ListEntriesRequest { scope: scope(vc("hpc")), ..Default::default() },
    );
    assert_eq!(e.expect_err("ops-ml reading hpc").exit_code(), 2);
    let seen = list(&mut ops, ListEntriesRequest { limit: 1000, ..Default::default() });
    assert!(seen.iter().all(|e| e.policy_ref != "admin-hpc"), "{seen:?}");
    assert!(seen.iter().any(|e| e.policy_ref == "ops-n1"), "ops sees its node: {seen:?}");
    assert!(ops
        .call::<_, pact_proto::journal::OverlayRecord>(
            Method::GetOverlay,
            &GetOverlayRequest { vcluster_id: "hpc".into() }
        )
        .is_err());

    // Row 10: a viewer writing. Row 11: ops of another vCluster. Row 12: the AI starting an
    // emergency.
    let mut viewer = client_as(&j, "bob", "pact-viewer-ml");
    refused(append(&mut viewer, entry(EntryType::Commit, vc("ml"), "viewer-ml")), "only reads");
    let mut other_ops = client_as(&j, "dave", "pact-ops-hpc");
    refused(
        append(&mut other_ops, entry(EntryType::Commit, vc("ml"), "hpc-ops-on-ml")),
        "pact-ops-hpc may not write vc:ml",
    );
    let mut ai = client_as(&j, "mcp", "pact-service-ai");
    refused(
        append(&mut ai, entry(EntryType::EmergencyStart, vc("ml"), "ai-emergency")),
        "never start or end an emergency",
    );
    assert!(!list(&mut ai, ListEntriesRequest::default()).is_empty(), "the AI reads");
    // Regulated: reads, and its writes wait for two-person approval.
    let mut reg = client_as(&j, "carol", "pact-regulated-ml");
    let held = append(&mut reg, entry(EntryType::Commit, vc("ml"), "reg-ml")).unwrap();
    assert!(!held.pending_approval_id.is_empty(), "a regulated write is held: {held:?}");
    refused(append(&mut reg, entry(EntryType::Commit, vc("hpc"), "reg-hpc")), "pact-regulated-ml may not write vc:hpc");
    // An agent: only its own node.
    let mut agent = client_as(&j, "n1", "pact-service-agent");
    refused(append(&mut agent, entry(EntryType::Commit, Target::NodeId("n2".into()), "agent-n2")), "its own node");
    // Not a pact role at all.
    let mut nobody = client_as(&j, "eve", "pact-wizard");
    refused(append(&mut nobody, entry(EntryType::Commit, vc("ml"), "eve")), "is not a pact role");

    // Nothing refused was applied; each refusal is a `denied:` record by its caller.
    let want = [
        ("alice", "AppendEntry: pact-ops-ml may not write vc:hpc"),
        ("alice", "global"),
        ("alice", "ENTRY_TYPE_NODE_ASSIGNED"),
        ("alice", "ListEntries: pact-ops-ml may not read vc:hpc"),
        ("alice", "GetOverlay: pact-ops-ml may not read vc:hpc"),
        ("bob", "only reads"),
        ("dave", "vc:ml"),
        ("mcp", "emergency"),
        ("carol", "two-person"),
        ("n1", "own node"),
        ("eve", "not a pact role"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let denials = loop {
        let d: Vec<ConfigEntry> =
            all(&mut admin).into_iter().filter(|e| e.policy_ref.starts_with("denied: ")).collect();
        if d.len() >= want.len() || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let entries = all(&mut admin);
    for refused_msg in [
        "ops-hpc",
        "ops-global",
        "ops-assign",
        "viewer-ml",
        "hpc-ops-on-ml",
        "ai-emergency",
        "reg-ml",
        "reg-hpc",
        "agent-n2",
        "eve",
    ] {
        assert!(!entries.iter().any(|e| e.policy_ref == refused_msg), "{refused_msg} was applied");
    }
    assert_eq!(denials.len(), want.len(), "{denials:#?}");
    // Records are written in the background by the shard that refused, so their order across
    // connections is not the order of the requests: match them as a set.
    let mut left: Vec<&ConfigEntry> = denials.iter().collect();
    for (who, what) in want {
        let at = left
            .iter()
            .position(|d| d.author.as_ref().is_some_and(|a| a.principal == who) && d.policy_ref.contains(what))
            .unwrap_or_else(|| panic!("no denial by {who} mentioning {what:?} in {denials:#?}"));
        let d = left.remove(at);
        assert_eq!(d.entry_type, EntryType::AdminOperation as i32);
    }
    // `pact log` filters by type and author (the fields of ListEntries).
    let by_bob = list(
        &mut admin,
        ListEntriesRequest {
            author: "bob".into(),
            entry_types: vec![EntryType::AdminOperation as i32],
            limit: 100,
            ..Default::default()
        },
    );
    assert_eq!(by_bob.len(), 1, "{by_bob:?}");
    assert!(by_bob[0].policy_ref.starts_with("denied: AppendEntry: pact-viewer-ml may not write vc:ml"));
    let commits_by_alice = list(
        &mut admin,
        ListEntriesRequest {
            author: "alice".into(),
            entry_types: vec![EntryType::Commit as i32],
            ..Default::default()
        },
    );
    assert_eq!(commits_by_alice.iter().map(|e| e.policy_ref.as_str()).collect::<Vec<_>>(), ["ops-n1", "ops-ml"]);
}
