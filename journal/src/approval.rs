//! Two-person approval, as the state machine applies it. Deterministic: everything here reads
//! only the command and the replicated state, so every replica (and the in-memory shadow)
//! reaches the same result.
//!
//! - A PENDING_APPROVAL entry carries (`ConfigEntry.approval`) a `PendingApproval` whose
//!   `original_request` is the held `AppendEntryRequest` (author = the requester, from the
//!   verified token). Applying it appends the entry (sequence S), and records the approval
//!   with id `S` (decimal), status PENDING, `created_at` = the entry's timestamp and
//!   `expires_at` = that plus the proposer's timeout (`expires_at - created_at` of the
//!   proposed record, clamped to 1 s..=[`MAX_TIMEOUT_SECS`]). Refused past [`MAX_PENDING`].
//! - An APPROVAL_DECISION entry (author = the approver, or the journal for an expiry; parent =
//!   S) carries a `PendingApproval` with `approval_id`, the decision `status` and `reason`.
//!   Applying it: the approval must be PENDING; APPROVED/REJECTED only before `expires_at`
//!   and never by the requester; EXPIRED only at or after `expires_at`. The decision entry is
//!   appended (sequence D) and the record updated. On APPROVED the held entry is appended in
//!   the same apply step with sequence D + 1, author = the requester, its own fields
//!   unchanged (a rollback keeps its parent), and `approval` = the decided record (requester
//!   and approver; the held request left out). One raft command, one transaction: a crash
//!   cannot leave an approved request unexecuted.
//! - The in-memory shadow keeps only PENDING approvals and without their held request (a
//!   bound on memory): the held entry was validated when the approval was recorded and
//!   validation reads nothing else, so executing it cannot fail, and the shadow only needs
//!   its sequence.

use crate::state::StateTxn;
use crate::store::{Result, StoreError};
use pact_proto::config::{ConfigEntry, EntryType, Timestamp};
use pact_proto::journal::{apply_result, AppendEntryRequest, AppendEntryResponse, ApplyResult};
use pact_proto::policy::{ApprovalStatus, PendingApproval};
use prost::Message as _;

/// Most approvals PENDING at once; more are refused until some are decided or expire.
pub const MAX_PENDING: u64 = 10_000;
/// How long an approval stays open when the vCluster's policy does not say.
pub const DEFAULT_TIMEOUT_SECS: u32 = 1800;
/// Longest a policy may keep an approval open.
pub const MAX_TIMEOUT_SECS: u32 = 7 * 24 * 3600;
/// The leader proposes expiries this often.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest reason kept in a decision.
pub const MAX_REASON: usize = 1024;

fn rejected(reason: String) -> ApplyResult {
    ApplyResult { result: Some(apply_result::Result::Rejected(reason)) }
}

fn appended(sequence: u64, ts: Timestamp) -> ApplyResult {
    ApplyResult {
        result: Some(apply_result::Result::Appended(AppendEntryResponse {
            sequence,
            timestamp: Some(ts),
            pending_approval_id: String::new(),
        })),
    }
}

/// The approval id of a PENDING_APPROVAL entry's sequence, and back.
pub fn id_of(seq: u64) -> String {
    seq.to_string()
}

pub fn parse_id(id: &str) -> Option<u64> {
    id.trim().parse::<u64>().ok().filter(|v| *v > 0)
}

pub use pact_proto::approval_status_text as status_text;

/// The held entry inside an approval's request.
pub fn held_entry(a: &PendingApproval) -> std::result::Result<ConfigEntry, String> {
    AppendEntryRequest::decode(&a.original_request[..])
        .map_err(|e| format!("the held request does not decode: {e}"))?
        .entry
        .ok_or_else(|| "the held request has no entry".to_string())
}

fn is_approval_type(t: i32) -> bool {
    t == EntryType::PendingApproval as i32 || t == EntryType::ApprovalDecision as i32
}

/// Appends one entry (already validated): sequence, timestamp, declared state.
pub fn append<T: StateTxn>(t: &mut T, mut e: ConfigEntry, ts: Timestamp) -> Result<u64> {
    let seq = t.next_sequence()?;
    e.sequence = seq;
    e.timestamp = Some(ts);
    t.put_entry(&e)?;
    t.set_next_sequence(seq + 1)?;
    t.set_last_timestamp((ts.seconds, ts.nanos))?;
    crate::declared::on_entry(t, &e)?;
    Ok(seq)
}

/// Applies a PENDING_APPROVAL entry (validated by `state::validate_entry`).
pub fn apply_pending<T: StateTxn>(t: &mut T, entry: &ConfigEntry, ts: Timestamp) -> Result<ApplyResult> {
    let Ok(mut a) = PendingApproval::decode(&entry.approval[..]) else {
        return Ok(rejected("a PENDING_APPROVAL entry needs its approval record".into()));
    };
    let held = match held_entry(&a) {
        Ok(h) => h,
        Err(m) => return Ok(rejected(m)),
    };
    if let Err(m) = crate::state::validate_entry(&held) {
        return Ok(rejected(format!("the held entry is not valid: {m}")));
    }
    if is_approval_type(held.entry_type) || !held.approval.is_empty() {
        return Ok(rejected("an approval entry cannot itself be held for approval".into()));
    }
    if held.scope != entry.scope || held.author != entry.author {
        return Ok(rejected("the held entry's scope and author must be the approval's".into()));
    }
    let pending = t.pending_approvals()?;
    if pending >= MAX_PENDING {
        return Ok(rejected(format!(
            "{pending} approvals are pending, the most this journal holds ({MAX_PENDING}); decide some (`pact approve list`) or let them expire"
        )));
    }
    let asked = a.expires_at.unwrap_or_default().seconds.saturating_sub(a.created_at.unwrap_or_default().seconds);
    let timeout = asked.clamp(1, i64::from(MAX_TIMEOUT_SECS));
    let seq = t.next_sequence()?;
    a.approval_id = id_of(seq);
    a.status = ApprovalStatus::Pending as i32;
    a.scope = entry.scope.clone();
    a.requester = entry.author.clone();
    a.approver = None;
    a.reason = String::new();
    a.created_at = Some(ts);
    a.expires_at = Some(Timestamp { seconds: ts.seconds.saturating_add(timeout), nanos: ts.nanos });
    let mut e = entry.clone();
    e.approval = a.encode_to_vec();
    let got = append(t, e, ts)?;
    assert_eq!(got, seq, "a pending approval's id is its entry's sequence");
    t.put_approval(seq, &a)?;
    t.set_pending_approvals(pending + 1)?;
    Ok(appended(seq, ts))
}

/// Applies an APPROVAL_DECISION entry (validated by `state::validate_entry`).
pub fn apply_decision<T: StateTxn>(t: &mut T, entry: &ConfigEntry, ts: Timestamp) -> Result<ApplyResult> {
    let Ok(d) = PendingApproval::decode(&entry.approval[..]) else {
        return Ok(rejected("an APPROVAL_DECISION entry needs its decision record".into()));
    };
    let Some(id) = parse_id(&d.approval_id) else {
        return Ok(rejected(format!("{:?} is not an approval id", d.approval_id)));
    };
    if entry.parent != Some(id) {
        return Ok(rejected(format!("a decision on approval {id} must have parent {id}")));
    }
    let Some(mut a) = t.get_approval(id)?.filter(|a| a.status == ApprovalStatus::Pending as i32) else {
        return Ok(rejected(format!("approval {id} is not pending (already decided, expired, or unknown)")));
    };
    let status = ApprovalStatus::try_from(d.status).unwrap_or(ApprovalStatus::Unspecified);
    let expires = a.expires_at.unwrap_or_default();
    let expired = (ts.seconds, ts.nanos) >= (expires.seconds, expires.nanos);
    let approver = entry.author.clone().unwrap_or_default();
    match status {
        ApprovalStatus::Approved | ApprovalStatus::Rejected => {
            if expired {
                return Ok(rejected(format!(
                    "approval {id} expired at {}s; it can no longer be decided",
                    expires.seconds
                )));
            }
            if a.requester.as_ref().is_none_or(|r| r.principal == approver.principal) {
                return Ok(rejected(format!(
                    "approval {id} was requested by {}: a second person must decide it",
                    approver.principal
                )));
            }
        }
        ApprovalStatus::Expired if !expired => {
            return Ok(rejected(format!("approval {id} does not expire before {}s", expires.seconds)));
        }
        ApprovalStatus::Expired => {}
        _ => return Ok(rejected(format!("{} is not a decision", d.status))),
    }
    if t.keeps_declared() && a.original_request.is_empty() {
        return Err(StoreError::Corrupt(format!("approval {id} has lost its held request")));
    }
    a.status = status as i32;
    a.approver = Some(approver);
    a.reason = d.reason.chars().filter(|c| !c.is_control()).take(MAX_REASON).collect();
    let mut record = a.clone();
    record.original_request.clear();
    let mut e = entry.clone();
    e.scope = a.scope.clone();
    e.approval = record.encode_to_vec();
    let decision = append(t, e, ts)?;
    let held = if status == ApprovalStatus::Approved {
        // The shadow keeps no held request (see the module doc); its `append` stores nothing.
        let mut held = if a.original_request.is_empty() {
            ConfigEntry::default()
        } else {
            held_entry(&a).map_err(|m| StoreError::Corrupt(format!("approval {id}: {m}")))?
        };
        held.author = a.requester.clone();
        held.approval = record.encode_to_vec();
        Some(held)
    } else {
        None
    };
    t.put_approval(id, &a)?;
    let pending = t.pending_approvals()?;
    t.set_pending_approvals(pending.saturating_sub(1))?;
    if let Some(held) = held {
        let executed = append(t, held, ts)?;
        assert_eq!(executed, decision + 1, "an approved request is appended right after its decision");
    }
    Ok(appended(decision, ts))
}

/// The decision entry a client (or the expiry sweep) proposes.
pub fn decision_entry(
    a: &PendingApproval,
    id: u64,
    status: ApprovalStatus,
    reason: &str,
    author: pact_proto::config::Identity,
) -> ConfigEntry {
    let verb = status_text(status as i32);
    let policy_ref = if reason.is_empty() { format!("{verb} {id}") } else { format!("{verb} {id}: {reason}") };
    let d = PendingApproval {
        approval_id: id_of(id),
        status: status as i32,
        reason: reason.to_string(),
        ..Default::default()
    };
    ConfigEntry {
        entry_type: EntryType::ApprovalDecision as i32,
        scope: a.scope.clone(),
        author: Some(author),
        parent: Some(id),
        policy_ref: policy_ref.chars().take(MAX_REASON + 64).collect(),
        approval: d.encode_to_vec(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{appended as seq, cmd, reject_reason as why};
    use crate::state::{apply, Input, Shadow};
    use crate::store::{LmdbState, Store};
    use pact_proto::config::{scope::Target, Identity, Scope};
    use pact_proto::journal::Command;

    fn who(p: &str, role: &str) -> Identity {
        Identity { principal: p.into(), role: role.into(), ..Default::default() }
    }

    fn scope() -> Option<Scope> {
        Some(Scope { target: Some(Target::VclusterId("ml".into())) })
    }

    fn pending_entry(msg: &str, timeout: i64) -> ConfigEntry {
        let carol = who("carol", "pact-regulated-ml");
        let held = ConfigEntry {
            entry_type: EntryType::Commit as i32,
            scope: scope(),
            author: Some(carol.clone()),
            policy_ref: msg.into(),
            ..Default::default()
        };
        let a = PendingApproval {
            original_request: AppendEntryRequest { entry: Some(held) }.encode_to_vec(),
            original_method: 1,
            created_at: Some(Timestamp { seconds: 1000, nanos: 0 }),
            expires_at: Some(Timestamp { seconds: 1000 + timeout, nanos: 0 }),
            ..Default::default()
        };
        ConfigEntry {
            entry_type: EntryType::PendingApproval as i32,
            scope: scope(),
            author: Some(carol),
            policy_ref: format!("pending approval: {msg}"),
            approval: a.encode_to_vec(),
            ..Default::default()
        }
    }

    /// Runs the same commands on the store and on the shadow: the results must agree.
    fn run(t: &mut LmdbState, shadow: &mut Shadow, index: &mut u64, c: Command) -> ApplyResult {
        *index += 1;
        let a = apply(t, *index, Input::Command(&c)).unwrap().unwrap();
        let b = apply(shadow, *index, Input::Command(&c)).unwrap().unwrap();
        assert_eq!(a, b, "store and shadow differ");
        a
    }

    #[test]
    fn pending_approve_reject_expire_and_self_approval() {
        let dir = std::env::temp_dir().join(format!("pact-approval-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, 2).unwrap();
        let mut w = store.write_txn().unwrap();
        let mut t = LmdbState::new(&store, &mut w);
        let mut shadow = Shadow::default();
        let mut i = 0;
        let alice = who("alice", "pact-ops-ml");
        let carol = who("carol", "pact-regulated-ml");
        // 1: held; nothing else is appended.
        let p1 = seq(&run(&mut t, &mut shadow, &mut i, cmd(pending_entry("one", 60), 1000)));
        assert_eq!(p1, 1);
        assert_eq!(t.pending_approvals().unwrap(), 1);
        assert_eq!(shadow.approvals.len(), 1);
        assert!(shadow.approvals[&1].original_request.is_empty(), "the shadow keeps no held request");
        let a = t.get_approval(1).unwrap().unwrap();
        assert_eq!((a.approval_id.as_str(), a.status), ("1", ApprovalStatus::Pending as i32));
        assert_eq!(a.expires_at.unwrap().seconds, 1060);
        // Self-approval is refused at apply too.
        let own = decision_entry(&a, 1, ApprovalStatus::Approved, "", carol.clone());
        assert!(why(&run(&mut t, &mut shadow, &mut i, cmd(own, 1001))).contains("second person"));
        // An expiry before its time is refused.
        let early = decision_entry(&a, 1, ApprovalStatus::Expired, "", who("journal-1", "pact-journal"));
        assert!(why(&run(&mut t, &mut shadow, &mut i, cmd(early, 1001))).contains("does not expire before"));
        // Approved: the decision (2) and the held entry (3), author = the requester.
        let ok = decision_entry(&a, 1, ApprovalStatus::Approved, "", alice.clone());
        assert_eq!(seq(&run(&mut t, &mut shadow, &mut i, cmd(ok.clone(), 1002))), 2);
        assert_eq!(t.next_sequence().unwrap(), 4);
        assert_eq!(shadow.next_sequence, 4);
        assert!(shadow.approvals.is_empty());
        assert_eq!(t.pending_approvals().unwrap(), 0);
        // Decided once: a second decision is refused.
        assert!(why(&run(&mut t, &mut shadow, &mut i, cmd(ok, 1003))).contains("not pending"));
        // 4: held, then rejected with a reason (5); nothing executed.
        let p4 = seq(&run(&mut t, &mut shadow, &mut i, cmd(pending_entry("two", 60), 1004)));
        let a4 = t.get_approval(p4).unwrap().unwrap();
        let no = decision_entry(&a4, p4, ApprovalStatus::Rejected, "not now", alice.clone());
        assert_eq!(seq(&run(&mut t, &mut shadow, &mut i, cmd(no, 1005))), 5);
        assert_eq!(t.next_sequence().unwrap(), 6);
        // 6: held; past its expiry an approval is refused, an expiry accepted (7).
        let p6 = seq(&run(&mut t, &mut shadow, &mut i, cmd(pending_entry("three", 5), 1006)));
        let a6 = t.get_approval(p6).unwrap().unwrap();
        let late = decision_entry(&a6, p6, ApprovalStatus::Approved, "", alice.clone());
        assert!(why(&run(&mut t, &mut shadow, &mut i, cmd(late, 1011))).contains("expired"));
        let exp = decision_entry(&a6, p6, ApprovalStatus::Expired, "", who("journal-1", "pact-journal"));
        assert_eq!(seq(&run(&mut t, &mut shadow, &mut i, cmd(exp, 1011))), 7);
        // A client cannot smuggle an approval record onto an ordinary entry.
        let mut forged = pending_entry("x", 60);
        forged.entry_type = EntryType::Commit as i32;
        assert!(why(&run(&mut t, &mut shadow, &mut i, cmd(forged, 1012))).contains("only the journal"));
        w.commit().unwrap();
        let r = store.read_txn().unwrap();
        let executed = store.get_entry(&r, 3).unwrap().unwrap();
        assert_eq!(executed.entry_type, EntryType::Commit as i32);
        assert_eq!(executed.policy_ref, "one");
        assert_eq!(executed.author.as_ref().unwrap().principal, "carol");
        let rec = PendingApproval::decode(&executed.approval[..]).unwrap();
        assert_eq!(rec.approver.unwrap().principal, "alice");
        assert_eq!(rec.status, ApprovalStatus::Approved as i32);
        let decision = store.get_entry(&r, 2).unwrap().unwrap();
        assert_eq!((decision.author.unwrap().principal.as_str(), decision.parent), ("alice", Some(1)));
        assert_eq!(decision.policy_ref, "approved 1");
        assert_eq!(store.get_entry(&r, 5).unwrap().unwrap().policy_ref, "rejected 4: not now");
        let all = store.list_approvals(&r, true, 100).unwrap();
        let statuses: Vec<_> = all.iter().map(|a| (a.approval_id.as_str(), status_text(a.status))).collect();
        assert_eq!(statuses, vec![("6", "expired"), ("4", "rejected"), ("1", "approved")]);
        // The held request stays on the decided record, for the audit.
        assert!(!all[2].original_request.is_empty());
        assert_eq!(store.shadow().unwrap().approvals.len(), 0);
        drop(r);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn snapshots_carry_approvals() {
        let base = std::env::temp_dir().join(format!("pact-approval-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (a, b) = (Store::open(&base.join("a"), 2).unwrap(), Store::open(&base.join("b"), 3).unwrap());
        let me = pact_proto::journal::Member {
            id: 1,
            raft_addr: "h:1".into(),
            client_addr: "h:2".into(),
            role: "voter".into(),
        };
        a.bootstrap(&me).unwrap();
        let mut w = a.write_txn().unwrap();
        let mut t = LmdbState::new(&a, &mut w);
        apply(&mut t, 2, Input::Command(&cmd(pending_entry("one", 60), 1000))).unwrap().unwrap();
        apply(&mut t, 3, Input::Command(&cmd(pending_entry("two", 60), 1000))).unwrap().unwrap();
        w.commit().unwrap();
        // Entries 2 and 3 are term-1 entries of the raft log.
        let snap = a.build_snapshot(&|i| (i <= 3).then_some(1)).unwrap();
        let mut w = b.write_txn().unwrap();
        b.install_snapshot(&mut w, &snap).unwrap();
        w.commit().unwrap();
        let r = b.read_txn().unwrap();
        assert_eq!(b.pending_approval_count(&r).unwrap(), 2);
        assert_eq!(b.get_approval(&r, 2).unwrap().unwrap().approval_id, "2");
        assert!(!b.get_approval(&r, 2).unwrap().unwrap().original_request.is_empty());
        drop(r);
        assert_eq!(b.shadow().unwrap(), a.shadow().unwrap());
        assert_eq!(b.shadow().unwrap().approvals.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn the_pending_bound() {
        let mut shadow = Shadow::default();
        for n in 0..3u64 {
            shadow.approvals.insert(n + 1, PendingApproval::default());
        }
        assert_eq!(shadow.pending_approvals().unwrap(), 3);
        // At the bound a new approval is refused, and nothing is appended.
        let mut full = Shadow::default();
        for n in 0..MAX_PENDING {
            full.approvals.insert(n + 1, PendingApproval::default());
        }
        full.next_sequence = MAX_PENDING + 1;
        let r = apply(&mut full, 1, Input::Command(&cmd(pending_entry("over", 60), 1000))).unwrap().unwrap();
        assert!(why(&r).contains("most this journal holds"));
        assert_eq!(full.next_sequence, MAX_PENDING + 1);
    }
}
