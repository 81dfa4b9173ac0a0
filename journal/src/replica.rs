//! The raft-rs `Ready` contract, without I/O. The journal's driver (glommio, the log file,
//! LMDB, TLS peers) and the deterministic simulation (memory, seeded faults) both run a replica through
//! this, so the simulation tests the same round logic the journal runs.
//!
//! One round:
//! 1. `begin` takes a `Ready` (if any) and returns a `Round`: messages that may go out now
//!    (a leader's appends, sent in parallel with its own fsync), a snapshot to install,
//!    committed entries to apply (those the previous round learned of, then this Ready's), a
//!    conf state to persist when a committed membership change was applied to raft-rs, new
//!    entries to append and the hard state to persist, plus read states.
//! 2. The caller makes it durable: the snapshot first (with the entries committed with it),
//!    then the new entries and the hard state (the log file); committed entries and their conf
//!    state may be stored later, in order (the driver's applier), since the log holds them.
//! 3. `finish` advances raft-rs and returns the messages that may only go out after the
//!    round is durable (votes, and a follower's acknowledgements).
//!
//! Entries the light ready reports committed wait for the next round; the caller starts that
//! round at once (`has_work`).

use crate::state::{self, MembershipChange, StateTxn};
use pact_proto::journal::{ApplyResult, Command, Member, ProposalOrigin};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, Snapshot,
};
use raft::{RawNode, ReadState, Ready, Storage};

pub struct Round {
    pub send_now: Vec<Message>,
    pub snapshot: Option<Snapshot>,
    pub apply: Vec<Entry>,
    pub conf_state: Option<ConfState>,
    pub append: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub read_states: Vec<ReadState>,
    ready: Option<Ready>,
}

pub struct Replica<S: Storage> {
    pub node: RawNode<S>,
    pending_apply: Vec<Entry>,
    pending_commit: Option<u64>,
    /// On a leader: the last index that holds a request another journal forwarded (see
    /// `step`); until it is committed, commits are broadcast.
    bcast_until: u64,
}

/// A committed raft entry, decoded for the state machine.
pub enum Decoded {
    Empty,
    Command(Box<Command>),
    Membership(MembershipChange),
}

/// Decodes a committed entry. Conf changes carry the member's addresses in their context.
pub fn decode_entry(e: &Entry) -> Result<Decoded, String> {
    match e.get_entry_type() {
        EntryType::EntryNormal if e.data.is_empty() => Ok(Decoded::Empty),
        EntryType::EntryNormal => Command::decode(&e.data[..])
            .map(|c| Decoded::Command(Box::new(c)))
            .map_err(|x| format!("raft entry {} does not decode as a Command: {x}", e.index)),
        EntryType::EntryConfChange => {
            let mut cc = ConfChange::default();
            cc.merge_from_bytes(&e.data).map_err(|x| format!("conf change {}: {x}", e.index))?;
            let member = context_member(&cc.context, e.index)?;
            Ok(Decoded::Membership(membership_change(cc.get_change_type(), cc.node_id, member)))
        }
        EntryType::EntryConfChangeV2 => {
            let mut cc = ConfChangeV2::default();
            cc.merge_from_bytes(&e.data).map_err(|x| format!("conf change {}: {x}", e.index))?;
            // pact proposes one change at a time; a V2 entry carries exactly one.
            let single = cc.changes.first().ok_or_else(|| format!("conf change {} is empty", e.index))?;
            let member = context_member(&cc.context, e.index)?;
            Ok(Decoded::Membership(membership_change(single.get_change_type(), single.node_id, member)))
        }
    }
}

/// Applies committed entries through `state::apply` (on the LMDB transaction, the in-memory
/// shadow or the simulation's state alike) and returns the results owed to their proposers.
pub fn apply_entries<T: StateTxn>(t: &mut T, entries: &[Entry]) -> Result<Vec<(ProposalOrigin, ApplyResult)>, String> {
    let mut out = Vec::new();
    for e in entries {
        let decoded = decode_entry(e)?;
        let (input, origin) = match &decoded {
            Decoded::Empty => (state::Input::Empty, None),
            Decoded::Command(c) => (state::Input::Command(c), c.origin),
            Decoded::Membership(m) => (state::Input::Membership(m), membership_origin(e)),
        };
        if let Some(r) = state::apply(t, e.index, input).map_err(|x| x.to_string())? {
            if let Some(o) = origin {
                out.push((o, r));
            }
        }
    }
    Ok(out)
}

/// The proposer of a membership change (in the conf change context), to answer it.
pub fn membership_origin(e: &Entry) -> Option<ProposalOrigin> {
    let mut cc = ConfChange::default();
    cc.merge_from_bytes(&e.data).ok()?;
    Command::decode(&cc.context[..]).ok()?.origin
}

/// A conf change's context is a `Command` carrying the proposer (to answer it) and the
/// member's addresses.
fn context_member(ctx: &[u8], index: u64) -> Result<Option<Member>, String> {
    if ctx.is_empty() {
        return Ok(None);
    }
    let c = Command::decode(ctx).map_err(|x| format!("conf change {index} context: {x}"))?;
    Ok(c.member)
}

fn membership_change(kind: ConfChangeType, node_id: u64, member: Option<Member>) -> MembershipChange {
    match kind {
        ConfChangeType::RemoveNode => MembershipChange::Remove(node_id),
        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
            let role = if kind == ConfChangeType::AddNode { "voter" } else { "learner" };
            let mut m = member.unwrap_or_default();
            m.id = node_id;
            m.role = role.into();
            MembershipChange::Upsert(m)
        }
    }
}

impl<S: Storage> Replica<S> {
    pub fn new(mut node: RawNode<S>) -> Replica<S> {
        node.skip_bcast_commit(true);
        Replica { node, pending_apply: Vec::new(), pending_commit: None, bcast_until: 0 }
    }

    /// Steps a message from a peer. A leader tells followers a new commit index right away
    /// (an empty append to each, and their answers) only while a follower waits for it: when
    /// entries it forwarded (its clients' writes, answered once it applies them) are not yet
    /// committed. Otherwise the commit index rides on the next append or heartbeat (within
    /// 100 ms), which halves the messages per write for clients of the leader. Reads are
    /// unaffected: a read index is confirmed with heartbeats, which carry the commit index.
    pub fn step(&mut self, m: Message) -> raft::Result<()> {
        let from_elsewhere = m.get_msg_type() == raft::eraftpb::MessageType::MsgPropose && m.from != self.node.raft.id;
        let r = self.node.step(m);
        if from_elsewhere && self.node.raft.state == raft::StateRole::Leader {
            self.bcast_until = self.bcast_until.max(self.node.raft.raft_log.last_index());
            self.node.skip_bcast_commit(false);
        }
        r
    }

    /// Whether a round would do anything (a Ready, or committed entries not yet applied).
    pub fn has_work(&self) -> bool {
        self.node.has_ready() || !self.pending_apply.is_empty() || self.pending_commit.is_some()
    }

    /// Whether committed entries are waiting: the caller should run the next round now.
    pub fn has_pending(&self) -> bool {
        !self.pending_apply.is_empty() || self.pending_commit.is_some()
    }

    pub fn begin(&mut self) -> Result<Option<Round>, String> {
        if !self.has_work() {
            return Ok(None);
        }
        let mut round = Round {
            send_now: Vec::new(),
            snapshot: None,
            apply: std::mem::take(&mut self.pending_apply),
            conf_state: None,
            append: Vec::new(),
            hard_state: None,
            read_states: Vec::new(),
            ready: None,
        };
        let commit = self.pending_commit.take();
        if self.node.has_ready() {
            let mut rd = self.node.ready();
            round.send_now = rd.take_messages();
            if !rd.snapshot().is_empty() {
                // Anything pending is older than the snapshot, which replaces it.
                round.apply.clear();
                round.snapshot = Some(rd.snapshot().clone());
            }
            round.apply.extend(rd.take_committed_entries());
            round.append = rd.take_entries();
            round.hard_state = rd.hs().cloned();
            round.read_states = rd.take_read_states();
            round.ready = Some(rd);
        }
        // The commit index covering everything applied in this round is persisted with it, so
        // a restart never finds applied > committed.
        if let Some(c) = commit {
            let mut hs = round.hard_state.take().unwrap_or_else(|| self.node.raft.hard_state());
            hs.commit = hs.commit.max(c);
            round.hard_state = Some(hs);
        }
        // Committed membership changes take effect in raft-rs now; the resulting conf state is
        // stored with the entry that made it, with the address book the state machine keeps.
        for e in &round.apply {
            let cs = match e.get_entry_type() {
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(&e.data).map_err(|x| format!("conf change {}: {x}", e.index))?;
                    Some(self.node.apply_conf_change(&cc))
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    cc.merge_from_bytes(&e.data).map_err(|x| format!("conf change {}: {x}", e.index))?;
                    Some(self.node.apply_conf_change(&cc))
                }
                EntryType::EntryNormal => None,
            };
            if let Some(cs) = cs {
                round.conf_state = Some(cs.map_err(|x| format!("applying conf change {}: {x}", e.index))?);
            }
        }
        // A leader that has just applied its own removal steps down (as etcd does): raft-rs
        // would otherwise keep it leading a configuration it is not in, and panic the next
        // time it tries to advance the commit index over its own missing progress.
        if let Some(cs) = &round.conf_state {
            let raft = &mut self.node.raft;
            if raft.state == raft::StateRole::Leader && !cs.voters.contains(&raft.id) {
                let term = raft.term;
                raft.become_follower(term, raft::INVALID_ID);
            }
        }
        Ok(Some(round))
    }

    /// After the round is durable. Returns the messages that may go out now.
    pub fn finish(&mut self, round: Round) -> Vec<Message> {
        if self.node.raft.raft_log.committed >= self.bcast_until {
            self.node.skip_bcast_commit(true);
        }
        let mut out = Vec::new();
        // With a Ready, `advance` marks its committed entries (and the earlier pending ones)
        // applied; without one, say so ourselves.
        if round.ready.is_none() {
            if let Some(i) = round.apply.last().map(|e| e.index) {
                if i > self.node.raft.raft_log.applied {
                    self.node.advance_apply_to(i);
                }
            }
        }
        if let Some(mut rd) = round.ready {
            out.extend(rd.take_persisted_messages());
            let mut light = self.node.advance(rd);
            if let Some(c) = light.commit_index() {
                self.pending_commit = Some(c);
            }
            out.extend(light.take_messages());
            self.pending_apply.extend(light.take_committed_entries());
            if !self.pending_apply.is_empty() && self.pending_commit.is_none() {
                self.pending_commit = Some(self.node.raft.raft_log.committed);
            }
        }
        out
    }
}
