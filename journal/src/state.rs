//! The state machine: applying committed commands to the store. Deterministic and
//! idempotent by raft index: every replica applies the same commands in the same order and
//! gets the same state, and an index at or below `applied_index` is skipped, so replaying
//! the log after a crash changes nothing.

use crate::store::Result;
use pact_proto::config::{ConfigEntry, ConfigState, EntryType, NodeConfigState, Timestamp};
use pact_proto::enrollment::{CaPublished, NodeEnrollment};
use pact_proto::journal::{
    apply_result, command, ApplyResult, ChangeMembershipResponse, Command, Member, NodeRecord, OverlayRecord,
    SetNodeStateResponse,
};
use pact_proto::policy::{ApprovalStatus, PendingApproval};

/// What the state machine reads and writes, inside one transaction. The journal's is an LMDB
/// write transaction (`store::LmdbState`); the simulation's is in memory. Both run this
/// module's `apply`, so the simulation checks the journal's own state machine.
pub trait StateTxn {
    fn applied_index(&self) -> Result<u64>;
    fn set_applied_index(&mut self, index: u64) -> Result<()>;
    /// The next sequence to assign (sequences start at 1; 0 means "none").
    fn next_sequence(&self) -> Result<u64>;
    fn set_next_sequence(&mut self, seq: u64) -> Result<()>;
    fn last_timestamp(&self) -> Result<(i64, u32)>;
    fn set_last_timestamp(&mut self, ts: (i64, u32)) -> Result<()>;
    fn put_entry(&mut self, e: &ConfigEntry) -> Result<()>;
    /// Whether this state keeps declared state (overlays, node records); the Shadow does not.
    fn keeps_declared(&self) -> bool {
        true
    }
    fn get_overlay(&self, vc: &str) -> Result<Option<OverlayRecord>>;
    /// The newest overlay version at or before `seq`.
    fn overlay_at(&self, vc: &str, seq: u64) -> Result<Option<OverlayRecord>>;
    /// A new overlay version (current record, history, compressed boot form).
    fn put_overlay(&mut self, o: &OverlayRecord, blob: &[u8]) -> Result<()>;
    fn get_node_record(&self, node: &str) -> Result<Option<NodeRecord>>;
    /// The newest node record version at or before `seq`.
    fn node_record_at(&self, node: &str, seq: u64) -> Result<Option<NodeRecord>>;
    fn put_node_record(&mut self, n: &NodeRecord) -> Result<()>;
    fn put_node_state(&mut self, s: &NodeConfigState) -> Result<()>;
    fn members(&self) -> Result<Vec<Member>>;
    fn put_member(&mut self, m: &Member) -> Result<()>;
    fn remove_member(&mut self, id: u64) -> Result<()>;
    /// A two-person approval by id (its PENDING_APPROVAL entry's sequence); see `approval`.
    fn get_approval(&self, id: u64) -> Result<Option<PendingApproval>>;
    fn put_approval(&mut self, id: u64, a: &PendingApproval) -> Result<()>;
    /// How many approvals are PENDING.
    fn pending_approvals(&self) -> Result<u64>;
    fn set_pending_approvals(&mut self, n: u64) -> Result<()>;
    // Enrollment (see `enroll`): kept only where `keeps_declared`; the defaults keep nothing.
    fn get_enrollment(&self, _node: &str) -> Result<Option<NodeEnrollment>> {
        Ok(None)
    }
    fn put_enrollment(&mut self, _e: &NodeEnrollment) -> Result<()> {
        Ok(())
    }
    fn hardware_owner(&self, _key: &str) -> Result<Option<String>> {
        Ok(None)
    }
    fn put_hardware_owner(&mut self, _key: &str, _node: Option<&str>) -> Result<()> {
        Ok(())
    }
    fn put_enrollment_ca(&mut self, _ca: &CaPublished) -> Result<()> {
        Ok(())
    }
}

/// The few values `apply` reads (applied index, next sequence, last timestamp, the address
/// book), kept in memory by the raft shard. Running `apply` over it gives a committed
/// command's result (its sequence, its timestamp) as soon as the entry is committed, so the
/// client is answered without waiting for the transaction that stores the applied state:
/// the entry is already durable on a quorum, and replaying it gives the same result. Writes
/// of entries, overlays and node states are no-ops here; the LMDB transaction does them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shadow {
    pub applied: u64,
    pub next_sequence: u64,
    pub last_ts: (i64, u32),
    pub members: std::collections::BTreeMap<u64, Member>,
    /// PENDING approvals only, without their held request (see `approval`); the leader's
    /// expiry sweep reads them.
    pub approvals: std::collections::BTreeMap<u64, PendingApproval>,
}

impl StateTxn for Shadow {
    fn applied_index(&self) -> Result<u64> {
        Ok(self.applied)
    }
    fn set_applied_index(&mut self, index: u64) -> Result<()> {
        self.applied = index;
        Ok(())
    }
    fn next_sequence(&self) -> Result<u64> {
        Ok(self.next_sequence.max(1))
    }
    fn set_next_sequence(&mut self, seq: u64) -> Result<()> {
        self.next_sequence = seq;
        Ok(())
    }
    fn last_timestamp(&self) -> Result<(i64, u32)> {
        Ok(self.last_ts)
    }
    fn set_last_timestamp(&mut self, ts: (i64, u32)) -> Result<()> {
        self.last_ts = ts;
        Ok(())
    }
    fn put_entry(&mut self, _: &ConfigEntry) -> Result<()> {
        Ok(())
    }
    // Declared state is derived data that no early answer depends on: the LMDB transaction
    // builds it.
    fn keeps_declared(&self) -> bool {
        false
    }
    fn get_overlay(&self, _: &str) -> Result<Option<OverlayRecord>> {
        Ok(None)
    }
    fn overlay_at(&self, _: &str, _: u64) -> Result<Option<OverlayRecord>> {
        Ok(None)
    }
    fn put_overlay(&mut self, _: &OverlayRecord, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn get_node_record(&self, _: &str) -> Result<Option<NodeRecord>> {
        Ok(None)
    }
    fn node_record_at(&self, _: &str, _: u64) -> Result<Option<NodeRecord>> {
        Ok(None)
    }
    fn put_node_record(&mut self, _: &NodeRecord) -> Result<()> {
        Ok(())
    }
    fn put_node_state(&mut self, _: &NodeConfigState) -> Result<()> {
        Ok(())
    }
    fn members(&self) -> Result<Vec<Member>> {
        Ok(self.members.values().cloned().collect())
    }
    fn put_member(&mut self, m: &Member) -> Result<()> {
        self.members.insert(m.id, m.clone());
        Ok(())
    }
    fn remove_member(&mut self, id: u64) -> Result<()> {
        self.members.remove(&id);
        Ok(())
    }
    fn get_approval(&self, id: u64) -> Result<Option<PendingApproval>> {
        Ok(self.approvals.get(&id).cloned())
    }
    fn put_approval(&mut self, id: u64, a: &PendingApproval) -> Result<()> {
        if a.status == ApprovalStatus::Pending as i32 {
            self.approvals.insert(id, PendingApproval { original_request: Vec::new(), ..a.clone() });
        } else {
            self.approvals.remove(&id);
        }
        Ok(())
    }
    fn pending_approvals(&self) -> Result<u64> {
        Ok(self.approvals.len() as u64)
    }
    fn set_pending_approvals(&mut self, _: u64) -> Result<()> {
        Ok(())
    }
}

/// A committed membership change, as the state machine sees it: the address book follows the
/// raft configuration.
#[derive(Clone, Debug, PartialEq)]
pub enum MembershipChange {
    /// Add or update a voter or learner; `member.role` says which.
    Upsert(Member),
    Remove(u64),
}

/// One committed raft entry, decoded.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    /// A new leader's empty entry.
    Empty,
    Command(&'a Command),
    Membership(&'a MembershipChange),
}

pub const TTL_MIN_SECS: u32 = 900;
pub const TTL_MAX_SECS: u32 = 864_000;
/// Most content a committed file delta may carry.
pub const MAX_DELTA_FILE_CONTENT: usize = 64 * 1024;
/// Longest id (node, vCluster) the journal stores.
pub const MAX_ID_LEN: usize = 253;

/// Checks an entry as far as it can be checked without the journal's state. Run by the RPC
/// layer before proposing (a clear error, nothing sent to raft) and again at apply.
pub fn validate_entry(e: &ConfigEntry) -> std::result::Result<(), String> {
    match EntryType::try_from(e.entry_type) {
        Ok(EntryType::Unspecified) | Err(_) => {
            return Err(format!("entry_type {} is not a known entry type", e.entry_type))
        }
        Ok(_) => {}
    }
    let author = e.author.as_ref().ok_or("author is missing")?;
    if author.principal.trim().is_empty() {
        return Err("author principal is empty".into());
    }
    if author.role.trim().is_empty() {
        return Err("author role is empty".into());
    }
    let scope = e.scope.as_ref().and_then(|s| s.target.as_ref()).ok_or("scope is missing")?;
    use pact_proto::config::scope::Target;
    match scope {
        Target::NodeId(id) | Target::VclusterId(id) => validate_id(id, "scope id")?,
        Target::Global(_) => {}
    }
    if let Some(ttl) = e.ttl_seconds {
        if ttl != 0 && !(TTL_MIN_SECS..=TTL_MAX_SECS).contains(&ttl) {
            return Err(format!("ttl_seconds {ttl} is outside {TTL_MIN_SECS}..={TTL_MAX_SECS}"));
        }
    }
    if e.entry_type == EntryType::Rollback as i32 && e.parent.is_none() {
        return Err("a rollback needs a parent (the sequence to roll back to)".into());
    }
    let on_node = matches!(scope, Target::NodeId(_));
    match EntryType::try_from(e.entry_type) {
        Ok(EntryType::NodeAssigned | EntryType::NodeMoved) => {
            if !on_node {
                return Err("an assignment's scope must be the node (node:ID)".into());
            }
            validate_id(&e.target_vcluster, "target_vcluster")?;
        }
        Ok(EntryType::NodeUnassigned) if !on_node => {
            return Err("an unassignment's scope must be the node (node:ID)".into());
        }
        _ if !e.target_vcluster.is_empty() => {
            return Err("target_vcluster is only for NODE_ASSIGNED and NODE_MOVED entries".into());
        }
        _ => {}
    }
    crate::enroll::validate(e)?;
    if let Some(d) = &e.state_delta {
        for f in &d.files {
            if f.content.as_ref().is_some_and(|c| c.len() > MAX_DELTA_FILE_CONTENT) {
                return Err(format!(
                    "file {} in the state delta carries {} bytes of content; at most {MAX_DELTA_FILE_CONTENT} (declare larger files with `pact apply`)",
                    f.path,
                    f.content.as_ref().map_or(0, |c| c.len())
                ));
            }
        }
    }
    Ok(())
}

pub fn validate_id(id: &str, what: &str) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("{what} is longer than {MAX_ID_LEN} bytes"));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{what} {id:?} contains whitespace or control characters"));
    }
    Ok(())
}

fn rejected(reason: String) -> ApplyResult {
    ApplyResult { result: Some(apply_result::Result::Rejected(reason)) }
}

/// Applies one committed raft entry at `index`. Returns None when the index was already
/// applied (replay after a crash). The caller commits the transaction.
pub fn apply<T: StateTxn>(t: &mut T, index: u64, input: Input<'_>) -> Result<Option<ApplyResult>> {
    let applied = t.applied_index()?;
    if index <= applied {
        return Ok(None);
    }
    assert_eq!(index, applied + 1, "apply out of order: index {index} after applied {applied}");
    let result = match input {
        Input::Empty => ApplyResult { result: None },
        Input::Command(cmd) => apply_command(t, cmd)?,
        Input::Membership(change) => {
            match change {
                MembershipChange::Upsert(m) => t.put_member(m)?,
                MembershipChange::Remove(id) => t.remove_member(*id)?,
            }
            let members = t.members()?;
            ApplyResult { result: Some(apply_result::Result::Membership(ChangeMembershipResponse { members })) }
        }
    };
    t.set_applied_index(index)?;
    Ok(Some(result))
}

fn apply_command<T: StateTxn>(t: &mut T, cmd: &Command) -> Result<ApplyResult> {
    // Timestamps never go backwards, even if the proposer's clock does.
    let (last_s, last_n) = t.last_timestamp()?;
    let proposed = cmd.proposed_at.unwrap_or_default();
    let ts = if (proposed.seconds, proposed.nanos) > (last_s, last_n) {
        proposed
    } else {
        Timestamp { seconds: last_s, nanos: last_n }
    };
    match &cmd.op {
        None => Ok(rejected("empty command".into())),
        Some(command::Op::AppendEntry(entry)) => {
            if let Err(reason) = validate_entry(entry) {
                return Ok(rejected(reason));
            }
            let seq = t.next_sequence()?;
            if let Some(p) = entry.parent {
                if p >= seq || p == 0 {
                    return Ok(rejected(format!("parent {p} is not an earlier entry (the next sequence is {seq})")));
                }
            }
            match EntryType::try_from(entry.entry_type) {
                Ok(EntryType::PendingApproval) => return crate::approval::apply_pending(t, entry, ts),
                Ok(EntryType::ApprovalDecision) => return crate::approval::apply_decision(t, entry, ts),
                _ if !entry.enrollment.is_empty() && !crate::enroll::is_enrollment_type(entry.entry_type) => {
                    return Ok(rejected("only enrollment entries carry an enrollment record".into()))
                }
                _ if !entry.approval.is_empty() => {
                    return Ok(rejected("only the journal's own approval entries carry an approval record".into()))
                }
                _ => {}
            }
            let seq = crate::approval::append(t, entry.clone(), ts)?;
            Ok(ApplyResult {
                result: Some(apply_result::Result::Appended(pact_proto::journal::AppendEntryResponse {
                    sequence: seq,
                    timestamp: Some(ts),
                    pending_approval_id: String::new(),
                })),
            })
        }
        Some(command::Op::PublishCa(ca)) => {
            if t.keeps_declared() {
                t.put_enrollment_ca(ca)?;
            }
            Ok(ApplyResult { result: None })
        }
        Some(command::Op::SetNodeState(req)) => {
            if let Err(reason) = validate_id(&req.node_id, "node id") {
                return Ok(rejected(reason));
            }
            match ConfigState::try_from(req.state) {
                Ok(ConfigState::Unspecified) | Err(_) => {
                    return Ok(rejected(format!("state {} is not a known config state", req.state)))
                }
                Ok(_) => {}
            }
            let since = t.next_sequence()? - 1;
            let s = NodeConfigState {
                node_id: req.node_id.clone(),
                state: req.state,
                since_sequence: since,
                updated_at: Some(ts),
                updated_by: req.author.clone(),
            };
            t.put_node_state(&s)?;
            t.set_last_timestamp((ts.seconds, ts.nanos))?;
            Ok(ApplyResult {
                result: Some(apply_result::Result::NodeStateSet(SetNodeStateResponse { sequence: since })),
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::Store;
    use pact_proto::config::{scope::Target, Identity, Scope};

    fn entry() -> ConfigEntry {
        ConfigEntry {
            entry_type: EntryType::Commit as i32,
            scope: Some(Scope { target: Some(Target::VclusterId("ml".into())) }),
            author: Some(Identity {
                principal: "alice".into(),
                role: "pact-platform-admin".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn cmd(e: ConfigEntry, secs: i64) -> Command {
        Command {
            origin: None,
            proposed_at: Some(Timestamp { seconds: secs, nanos: 0 }),
            op: Some(command::Op::AppendEntry(e)),
            member: None,
        }
    }

    pub(crate) fn appended(r: &ApplyResult) -> u64 {
        match &r.result {
            Some(apply_result::Result::Appended(a)) => a.sequence,
            other => panic!("expected appended, got {other:?}"),
        }
    }

    pub(crate) fn reject_reason(r: &ApplyResult) -> String {
        match &r.result {
            Some(apply_result::Result::Rejected(s)) => s.clone(),
            other => panic!("expected rejection, got {other:?}"),
        }
    }

    #[test]
    fn validation_rules() {
        assert!(validate_entry(&entry()).is_ok());
        let mut e = entry();
        e.author.as_mut().unwrap().principal.clear();
        assert!(validate_entry(&e).unwrap_err().contains("principal"));
        let mut e = entry();
        e.author.as_mut().unwrap().role = " ".into();
        assert!(validate_entry(&e).unwrap_err().contains("role"));
        for (ttl, ok) in [(0, true), (899, false), (900, true), (864_000, true), (864_001, false)] {
            let mut e = entry();
            e.ttl_seconds = Some(ttl);
            assert_eq!(validate_entry(&e).is_ok(), ok, "ttl {ttl}");
        }
        let mut e = entry();
        e.entry_type = 999;
        assert!(validate_entry(&e).is_err());
        let mut e = entry();
        e.scope = None;
        assert!(validate_entry(&e).is_err());
    }

    #[test]
    fn sequences_are_gap_free_timestamps_monotonic_and_replay_is_a_no_op() {
        let dir = std::env::temp_dir().join(format!("pact-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, 2).unwrap();
        let mut w = store.write_txn().unwrap();
        let mut t = crate::store::LmdbState::new(&store, &mut w);
        let r1 = apply(&mut t, 1, Input::Command(&cmd(entry(), 100))).unwrap().unwrap();
        // A clock that went backwards does not move timestamps back.
        let r2 = apply(&mut t, 2, Input::Command(&cmd(entry(), 50))).unwrap().unwrap();
        // A leader's empty entry only moves the applied index.
        assert_eq!(apply(&mut t, 3, Input::Empty).unwrap().unwrap().result, None);
        let mut bad = entry();
        bad.parent = Some(10);
        let r4 = apply(&mut t, 4, Input::Command(&cmd(bad, 200))).unwrap().unwrap();
        let mut child = entry();
        child.parent = Some(1);
        let r5 = apply(&mut t, 5, Input::Command(&cmd(child, 200))).unwrap().unwrap();
        // Replaying an applied index changes nothing.
        assert!(apply(&mut t, 5, Input::Command(&cmd(entry(), 300))).unwrap().is_none());
        // Membership changes maintain the address book.
        let m = Member { id: 2, raft_addr: "h2:9444".into(), client_addr: "h2:9443".into(), role: "voter".into() };
        let r6 = apply(&mut t, 6, Input::Membership(&MembershipChange::Upsert(m.clone()))).unwrap().unwrap();
        assert!(matches!(r6.result, Some(apply_result::Result::Membership(ref x)) if x.members == vec![m.clone()]));
        apply(&mut t, 7, Input::Membership(&MembershipChange::Remove(2))).unwrap().unwrap();
        assert!(t.members().unwrap().is_empty());
        w.commit().unwrap();
        assert_eq!((appended(&r1), appended(&r2), appended(&r5)), (1, 2, 3));
        assert!(reject_reason(&r4).contains("not an earlier entry"));
        let r = store.read_txn().unwrap();
        let e2 = store.get_entry(&r, 2).unwrap().unwrap();
        assert_eq!(e2.timestamp.unwrap().seconds, 100);
        assert_eq!(store.entry_count(&r).unwrap(), 3);
        let newest = store.list_entries(&r, None, 1..=u64::MAX, 2, false, &|_| true).unwrap();
        assert_eq!(newest.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![3, 2]);
        drop(r);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
