//! Two-person approval against a real journal over real TLS: a regulated write is held, not
//! applied; the requester cannot decide it (attack row 13), nor can a viewer (row 14) or ops
//! of another vCluster, and every such refusal is on the record; ops of the vCluster approves
//! and the held entry appears with the requester as author right after the decision; a
//! rejection keeps its reason; an approval expires (the vCluster's policy sets a 1 s
//! timeout); pending approvals survive a restart.

mod common;

use common::Journal;
use pact_proto::auth::{HmacVerifier, DEV_ISSUER};
use pact_proto::client::{CallError, Client};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, PolicySpec, Scope, VClusterSpec};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse, ListEntriesRequest};
use pact_proto::policy::{
    ApprovalStatus, DecideApprovalRequest, DecideApprovalResponse, ListApprovalsRequest, ListApprovalsResponse,
    PendingApproval,
};
use pact_proto::Method;
use prost::Message as _;
use std::time::{Duration, Instant};

fn client_as(j: &Journal, subject: &str, role: &str) -> Client {
    let token = HmacVerifier::new(&j.hmac_secret(), DEV_ISSUER, "pact").mint(subject, role, 600).unwrap();
    Client::connect(&j.endpoint(), j.tls(), &token, Duration::from_secs(10)).unwrap()
}

fn vc(v: &str) -> Option<Scope> {
    Some(Scope { target: Some(Target::VclusterId(v.into())) })
}

fn commit(on: &str, msg: &str) -> ConfigEntry {
    ConfigEntry { entry_type: EntryType::Commit as i32, scope: vc(on), policy_ref: msg.into(), ..Default::default() }
}

fn append(c: &mut Client, e: ConfigEntry) -> Result<AppendEntryResponse, CallError> {
    c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(e) })
}

fn held(c: &mut Client, e: ConfigEntry) -> String {
    let r = append(c, e).expect("append");
    assert!(!r.pending_approval_id.is_empty(), "expected the write to be held: {r:?}");
    assert_eq!(r.pending_approval_id, r.sequence.to_string(), "the id is the PENDING_APPROVAL entry's sequence");
    r.pending_approval_id
}

fn decide(c: &mut Client, id: &str, decision: &str, reason: Option<&str>) -> Result<DecideApprovalResponse, CallError> {
    let req =
        DecideApprovalRequest { approval_id: id.into(), decision: decision.into(), reason: reason.map(str::to_string) };
    c.call(Method::DecideApproval, &req)
}

fn approvals(c: &mut Client, all: bool) -> Vec<PendingApproval> {
    let r: ListApprovalsResponse = c
        .call(Method::ListPendingApprovals, &ListApprovalsRequest { scope_filter: None, include_decided: all })
        .expect("list approvals");
    r.approvals
}

fn entries(admin: &mut Client) -> Vec<ConfigEntry> {
    admin
        .call_stream(
            Method::ListEntries,
            &ListEntriesRequest { limit: 10_000, oldest_first: true, ..Default::default() },
        )
        .expect("list entries")
}

fn refused(r: Result<DecideApprovalResponse, CallError>, code: u8, want: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.exit_code(), code, "{e}");
            assert!(e.to_string().contains(want), "{e} should say {want:?}");
        }
        Ok(a) => panic!("decided (seq {}), expected a refusal saying {want:?}", a.sequence),
    }
}

/// Polls until `f` holds (no sleeping as synchronisation: a deadline and a short poll).
fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn regulated_writes_wait_for_a_second_person() {
    let mut j = Journal::start("approvals");
    let mut admin = j.client();
    append(&mut admin, commit("ml", "baseline")).unwrap();
    let mut carol = client_as(&j, "carol", "pact-regulated-ml");
    let mut alice = client_as(&j, "alice", "pact-ops-ml");
    let mut bob = client_as(&j, "bob", "pact-viewer-ml");
    let mut dave = client_as(&j, "dave", "pact-ops-hpc");

    // Held, not applied.
    let id = held(&mut carol, commit("ml", "reg-change"));
    assert!(!entries(&mut admin).iter().any(|e| e.policy_ref == "reg-change"));
    let listed = approvals(&mut bob, false);
    assert_eq!(listed.len(), 1, "a viewer of ml sees ml's approvals: {listed:?}");
    let a = &listed[0];
    assert_eq!((a.approval_id.as_str(), a.status), (id.as_str(), ApprovalStatus::Pending as i32));
    assert_eq!(a.requester.as_ref().unwrap().principal, "carol");
    assert!(a.action.contains("reg-change"), "{a:?}");
    let created = a.created_at.unwrap().seconds;
    assert_eq!(a.expires_at.unwrap().seconds - created, 1800, "the default timeout");
    assert!(approvals(&mut dave, false).is_empty(), "ops of hpc does not see ml's approvals");

    // Row 13: the requester approving; row 14: a viewer approving; ops of another vCluster.
    refused(decide(&mut carol, &id, "approved", None), 2, "second person");
    refused(decide(&mut bob, &id, "approved", None), 2, "may not decide approvals on vc:ml");
    refused(decide(&mut dave, &id, "approved", None), 2, "may not decide approvals on vc:ml");
    refused(decide(&mut alice, "999999", "approved", None), 1, "no approval 999999");
    refused(decide(&mut alice, &id, "maybe", None), 1, "expected approved or rejected");

    // Ops of ml approves: the decision, then the held entry with the requester as author.
    let d = decide(&mut alice, &id, "approved", None).unwrap();
    let all = entries(&mut admin);
    let decision = all.iter().find(|e| e.sequence == d.sequence).unwrap();
    assert_eq!(decision.entry_type, EntryType::ApprovalDecision as i32);
    assert_eq!(decision.author.as_ref().unwrap().principal, "alice");
    assert_eq!(decision.parent, Some(id.parse().unwrap()));
    assert_eq!(decision.policy_ref, format!("approved {id}"));
    let executed = all.iter().find(|e| e.sequence == d.sequence + 1).unwrap();
    assert_eq!((executed.entry_type, executed.policy_ref.as_str()), (EntryType::Commit as i32, "reg-change"));
    assert_eq!(executed.author.as_ref().unwrap().principal, "carol");
    assert_eq!(executed.author.as_ref().unwrap().role, "pact-regulated-ml");
    let rec = PendingApproval::decode(&executed.approval[..]).unwrap();
    assert_eq!((rec.approval_id.as_str(), rec.approver.unwrap().principal.as_str()), (id.as_str(), "alice"));
    refused(decide(&mut alice, &id, "approved", None), 1, "already approved");
    assert!(approvals(&mut alice, false).is_empty());

    // Rejected with a reason: nothing applied.
    let id2 = held(&mut carol, commit("ml", "reg-rejected"));
    let d2 = decide(&mut admin, &id2, "rejected", Some("not during the run")).unwrap();
    let all = entries(&mut admin);
    assert!(!all.iter().any(|e| e.policy_ref == "reg-rejected"));
    assert_eq!(
        all.iter().find(|e| e.sequence == d2.sequence).unwrap().policy_ref,
        format!("rejected {id2}: not during the run")
    );
    let decided = approvals(&mut admin, true);
    let r2 = decided.iter().find(|a| a.approval_id == id2).unwrap();
    assert_eq!((r2.status, r2.reason.as_str()), (ApprovalStatus::Rejected as i32, "not during the run"));

    // The refusals are on the record, by their callers.
    let want = [("carol", "DecideApproval"), ("bob", "DecideApproval"), ("dave", "DecideApproval")];
    let denials = until("three denial records", Duration::from_secs(10), || {
        let d: Vec<ConfigEntry> =
            entries(&mut admin).into_iter().filter(|e| e.policy_ref.starts_with("denied: DecideApproval")).collect();
        (d.len() >= want.len()).then_some(d)
    });
    for (who, what) in want {
        assert!(
            denials
                .iter()
                .any(|d| d.author.as_ref().is_some_and(|a| a.principal == who) && d.policy_ref.contains(what)),
            "no denial by {who}: {denials:#?}"
        );
    }
    assert!(denials.iter().any(|d| d.policy_ref.contains("second person")), "{denials:#?}");

    // A vCluster whose policy asks for two persons holds ops writes too, with its timeout;
    // the platform admin's write goes through (break-glass) under the admin's name.
    let policy = VClusterSpec {
        policy: Some(PolicySpec {
            two_person_approval: Some(true),
            approval_timeout_seconds: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    append(&mut admin, ConfigEntry { declared: Some(policy), ..commit("secure", "secure policy") }).unwrap();
    let mut frank = client_as(&j, "frank", "pact-ops-secure");
    let id3 = held(&mut frank, commit("secure", "ops-on-secure"));
    let direct = append(&mut admin, commit("secure", "break-glass")).unwrap();
    assert!(direct.pending_approval_id.is_empty(), "{direct:?}");
    // Expiry: the leader's sweep records it; then nobody can decide it.
    let expired = until("the approval expires", Duration::from_secs(15), || {
        approvals(&mut admin, true)
            .into_iter()
            .find(|a| a.approval_id == id3 && a.status == ApprovalStatus::Expired as i32)
    });
    assert_eq!(expired.approver.as_ref().unwrap().principal, "journal-1");
    refused(decide(&mut admin, &id3, "approved", None), 1, "already expired");
    let all = entries(&mut admin);
    assert!(all.iter().any(|e| e.policy_ref == format!("expired {id3}")));
    assert!(!all.iter().any(|e| e.policy_ref == "ops-on-secure"));

    // Pending approvals survive a restart and can be decided after it.
    let id4 = held(&mut carol, commit("ml", "across-restart"));
    drop((admin, carol, alice, bob, dave, frank));
    j.terminate();
    j.spawn();
    let mut alice = client_as(&j, "alice", "pact-ops-ml");
    let pending = approvals(&mut alice, false);
    assert_eq!(pending.iter().map(|a| a.approval_id.as_str()).collect::<Vec<_>>(), [id4.as_str()]);
    let d4 = decide(&mut alice, &id4, "accept", None).unwrap();
    let mut admin = j.client();
    let all = entries(&mut admin);
    let executed = all.iter().find(|e| e.sequence == d4.sequence + 1).unwrap();
    assert_eq!(
        (executed.policy_ref.as_str(), executed.author.as_ref().unwrap().principal.as_str()),
        ("across-restart", "carol")
    );
}
