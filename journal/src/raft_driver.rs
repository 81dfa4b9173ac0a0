//! The raft shard's driver: one loop in the raft-rs `Ready` contract. Each round it takes a
//! batch of proposals, ticks the clock, then handles one `Ready`: messages, snapshot,
//! committed entries (applied), new entries and hard state (persisted, fsynced), advance,
//! then the light ready's commit index and committed entries. LMDB writes run on the
//! executor's blocking pool so the reactor keeps serving clients.
//!
//! This issue runs a single voter: there is no peer to send messages to yet, and the loop
//! counts any message it would send as a peer error. Peers arrive with the quorum issue and
//! only add a transport: every write already goes proposal → log → apply.

use crate::shard::{Outcome, Proposal, Shard};
use crate::shared::{Shared, ROLE_CANDIDATE, ROLE_FOLLOWER, ROLE_LEADER, ROLE_PRE_CANDIDATE, ROLE_SHUTDOWN};
use crate::state;
use crate::store::{RaftStorage, Store};
use crate::{debug, error, info, warn};
use futures_lite::future::poll_once;
use glommio::channels::local_channel::LocalReceiver;
use glommio::channels::shared_channel::ConnectedSender;
use pact_proto::journal::{ApplyResult, Command};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, HardState, Message};
use raft::{RawNode, StateRole};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one apply transaction produced: results to route, and conf changes for raft-rs.
type Applied = (Vec<(Command, ApplyResult)>, Vec<Entry>);

pub const TICK: Duration = Duration::from_millis(100);
/// Most proposals taken into one Ready round (one fsync).
pub const MAX_BATCH: usize = 1024;

pub struct Driver {
    pub node: RawNode<RaftStorage>,
    pub store: Store,
    pub shared: Arc<Shared>,
    /// The raft shard's own handlers.
    pub local: Rc<Shard>,
    /// Result channels to shards 1..N (index = shard id - 1).
    pub remote_results: Vec<ConnectedSender<(u64, Outcome)>>,
    last_role: StateRole,
    /// Entries the last round learned are committed (the light ready), with the commit index
    /// that covers them: applied in the next round's transaction, together with that round's
    /// log append, so a busy journal pays one LMDB commit per round instead of two.
    pending_apply: Vec<Entry>,
    pending_commit: Option<u64>,
}

pub fn raft_config(id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: 10,
        heartbeat_tick: 3,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

impl Driver {
    pub fn new(
        store: Store,
        shared: Arc<Shared>,
        local: Rc<Shard>,
        remote_results: Vec<ConnectedSender<(u64, Outcome)>>,
    ) -> Result<Driver, String> {
        let applied = store.applied_index().map_err(|e| e.to_string())?;
        let cfg = raft_config(shared.node_id, applied);
        cfg.validate().map_err(|e| format!("raft config: {e}"))?;
        let node = RawNode::new(&cfg, RaftStorage { store: store.clone() }, &crate::log::raft_logger())
            .map_err(|e| format!("raft: {e}"))?;
        Ok(Driver {
            node,
            store,
            shared,
            local,
            remote_results,
            last_role: StateRole::Follower,
            pending_apply: Vec::new(),
            pending_commit: None,
        })
    }

    pub async fn run(mut self, inbox: LocalReceiver<Proposal>) {
        let voters = self.node.raft.prs().conf().voters().ids().iter().collect::<Vec<_>>();
        if voters == [self.shared.node_id] {
            // The only voter: no one to wait for, become leader now rather than after an election timeout.
            if let Err(e) = self.node.campaign() {
                warn!("campaign: {e}");
            }
        } else if voters.is_empty() {
            info!("no membership yet: waiting to be added to a cluster");
        }
        let mut last_tick = Instant::now();
        loop {
            if self.shared.is_shutting_down() {
                break;
            }
            let mut batch = 0usize;
            // With committed entries waiting to be applied, go straight to the next round
            // (taking whatever proposals are already queued); otherwise wait for a proposal
            // or the next tick.
            if self.pending_apply.is_empty() && self.pending_commit.is_none() {
                let left = TICK.saturating_sub(last_tick.elapsed());
                match glommio::timer::timeout(left.max(Duration::from_millis(1)), async { Ok(inbox.recv().await) })
                    .await
                {
                    Ok(Some(p)) => {
                        self.propose(p);
                        batch += 1;
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            while batch < MAX_BATCH {
                match poll_once(inbox.recv()).await {
                    Some(Some(p)) => {
                        self.propose(p);
                        batch += 1;
                    }
                    _ => break,
                }
            }
            if last_tick.elapsed() >= TICK {
                self.node.tick();
                last_tick = Instant::now();
            }
            if let Err(e) = self.on_ready().await {
                // A store failure here means we can no longer promise durability: stop
                // taking writes rather than acknowledge something we may not have kept.
                error!("raft driver stopped: {e}");
                self.shared.failed.store(true, Ordering::Relaxed);
                self.shared.shutdown.store(true, Ordering::Relaxed);
                break;
            }
        }
        // Refuse anything still queued.
        while let Some(Some(p)) = poll_once(inbox.recv()).await {
            self.route(p.shard, p.proposal_id, Outcome::Dropped("the journal is shutting down".into()));
        }
        self.shared.role.store(ROLE_SHUTDOWN, Ordering::Relaxed);
        info!("raft driver stopped at applied index {}", self.shared.applied_index.load(Ordering::Relaxed));
    }

    fn propose(&mut self, p: Proposal) {
        if let Err(e) = self.node.propose(vec![], p.data) {
            let why = match e {
                raft::Error::ProposalDropped => "no leader yet; retry shortly".to_string(),
                other => format!("proposal refused: {other}"),
            };
            self.route(p.shard, p.proposal_id, Outcome::Dropped(why));
        } else if self.node.raft.state != StateRole::Leader {
            // raft-rs forwards to a known leader; with none it drops without an error on some paths.
            debug!("proposal taken while {:?}", self.node.raft.state);
        }
    }

    fn route(&self, shard: u32, proposal_id: u64, outcome: Outcome) {
        if shard == self.local.id {
            self.local.deliver(proposal_id, outcome);
        } else if let Some(tx) = self.remote_results.get(shard as usize - 1) {
            if tx.try_send((proposal_id, outcome)).is_err() {
                // The shard's result queue is full or gone: its handler will time out.
                warn!("result queue to shard {shard} full; proposal {proposal_id} will time out");
            }
        }
    }

    fn send_messages(&self, msgs: Vec<Message>) {
        for m in msgs {
            // No peer transport in a single-voter journal (quorum issue).
            Shared::inc(&self.shared.peer_errors_total);
            debug!("dropping raft message {:?} to {}", m.get_msg_type(), m.to);
        }
    }

    /// One round of the Ready contract, in one LMDB transaction (one durable commit):
    /// apply what the previous round learned is committed (already durable in the log), apply
    /// this Ready's committed entries, append this Ready's entries and persist its hard state.
    /// Then advance; the light ready's committed entries wait for the next round, which the
    /// run loop starts without waiting.
    async fn on_ready(&mut self) -> Result<(), String> {
        let has_ready = self.node.has_ready();
        if !has_ready && self.pending_apply.is_empty() && self.pending_commit.is_none() {
            self.publish();
            return Ok(());
        }
        let mut to_apply = std::mem::take(&mut self.pending_apply);
        let mut commit = self.pending_commit.take();
        let mut append = Vec::new();
        let mut hs: Option<HardState> = None;
        let mut rd = None;
        if has_ready {
            let mut r = self.node.ready();
            if !r.messages().is_empty() {
                self.send_messages(r.take_messages());
            }
            if !r.snapshot().is_empty() {
                return Err("received a snapshot, which a single-voter journal never does".into());
            }
            to_apply.extend(r.take_committed_entries());
            append = r.take_entries();
            hs = r.hs().cloned();
            rd = Some(r);
        }
        // The commit index that covers every entry applied in this transaction is persisted in
        // it too, so a restart never finds applied > committed.
        if let Some(c) = commit.take() {
            let mut h = hs.take().unwrap_or_else(|| self.node.raft.hard_state());
            h.commit = h.commit.max(c);
            hs = Some(h);
        }
        let last_applied = to_apply.last().map(|e| e.index);
        self.persist_and_apply(to_apply, append, hs).await?;
        if let Some(i) = last_applied {
            self.node.advance_apply_to(i);
        }
        if let Some(r) = rd {
            if !r.persisted_messages().is_empty() {
                let mut r = r;
                self.send_messages(r.take_persisted_messages());
                self.advance(r);
            } else {
                self.advance(r);
            }
        }
        Shared::inc(&self.shared.ready_rounds_total);
        self.publish();
        Ok(())
    }

    fn advance(&mut self, rd: raft::Ready) {
        let mut light = self.node.advance(rd);
        if let Some(c) = light.commit_index() {
            self.pending_commit = Some(c);
        }
        if !light.messages().is_empty() {
            self.send_messages(light.take_messages());
        }
        self.pending_apply.extend(light.take_committed_entries());
        if !self.pending_apply.is_empty() && self.pending_commit.is_none() {
            self.pending_commit = Some(self.node.raft.raft_log.committed);
        }
    }

    /// One transaction: apply committed entries, append new ones, persist the hard state.
    /// Then answers the proposers on this replica and applies conf changes to raft-rs.
    async fn persist_and_apply(
        &mut self,
        apply: Vec<Entry>,
        append: Vec<Entry>,
        hs: Option<HardState>,
    ) -> Result<(), String> {
        if apply.is_empty() && append.is_empty() && hs.is_none() {
            return Ok(());
        }
        let store = self.store.clone();
        let (results, conf_entries) = glommio::executor()
            .spawn_blocking(move || -> Result<Applied, String> {
                let mut w = store.write_txn().map_err(|e| e.to_string())?;
                let mut results = Vec::new();
                let mut confs = Vec::new();
                for e in apply {
                    match e.get_entry_type() {
                        EntryType::EntryNormal if e.data.is_empty() => {
                            state::apply(&store, &mut w, e.index, None).map_err(|x| x.to_string())?;
                        }
                        EntryType::EntryNormal => {
                            let cmd = Command::decode(&e.data[..])
                                .map_err(|x| format!("raft entry {} does not decode as a Command: {x}", e.index))?;
                            if let Some(r) =
                                state::apply(&store, &mut w, e.index, Some(&cmd)).map_err(|x| x.to_string())?
                            {
                                results.push((cmd, r));
                            }
                        }
                        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                            state::apply(&store, &mut w, e.index, None).map_err(|x| x.to_string())?;
                            confs.push(e);
                        }
                    }
                }
                store.write_raft(&mut w, &append, hs.as_ref(), None).map_err(|x| x.to_string())?;
                w.commit().map_err(|x| x.to_string())?;
                Ok((results, confs))
            })
            .await?;
        for e in conf_entries {
            let cs = if e.get_entry_type() == EntryType::EntryConfChange {
                let mut cc = ConfChange::default();
                cc.merge_from_bytes(&e.data).map_err(|x| format!("conf change {}: {x}", e.index))?;
                self.node.apply_conf_change(&cc)
            } else {
                let mut cc = ConfChangeV2::default();
                cc.merge_from_bytes(&e.data).map_err(|x| format!("conf change {}: {x}", e.index))?;
                self.node.apply_conf_change(&cc)
            }
            .map_err(|x| format!("applying conf change {}: {x}", e.index))?;
            let store = self.store.clone();
            glommio::executor()
                .spawn_blocking(move || store.persist_ready(&[], None, Some(&cs)))
                .await
                .map_err(|x| x.to_string())?;
        }
        for (cmd, result) in results {
            if let Some(o) = cmd.origin {
                if o.node_id == self.shared.node_id {
                    self.route(o.shard, o.proposal_id, Outcome::Applied(result));
                }
            }
        }
        Ok(())
    }

    /// Publishes the raft status for metrics, /health and JournalStatus.
    fn publish(&mut self) {
        let r = &self.node.raft;
        let role = r.state;
        if role != self.last_role {
            if role == StateRole::Leader {
                Shared::inc(&self.shared.elections_total);
                info!("became leader at term {}", r.term);
            }
            self.last_role = role;
        }
        let s = &self.shared;
        s.role.store(
            match role {
                StateRole::Leader => ROLE_LEADER,
                StateRole::Candidate => ROLE_CANDIDATE,
                StateRole::PreCandidate => ROLE_PRE_CANDIDATE,
                StateRole::Follower => ROLE_FOLLOWER,
            },
            Ordering::Relaxed,
        );
        s.term.store(r.term, Ordering::Relaxed);
        s.leader_id.store(r.leader_id, Ordering::Relaxed);
        s.commit_index.store(r.raft_log.committed, Ordering::Relaxed);
        s.applied_index.store(r.raft_log.applied, Ordering::Relaxed);
        s.last_index.store(r.raft_log.last_index(), Ordering::Relaxed);
    }
}
