//! The raft shard's driver: one loop over the raft-rs `Ready` contract (`replica.rs`), with
//! the log file (`wal.rs`) and LMDB for durability and the peer port for messages. Each round
//! it takes a batch of inputs (client proposals, membership changes, read barriers, peer
//! messages), ticks the clock, then runs one replica round: messages that may go out at once,
//! the committed entries applied to the in-memory shadow (their clients are answered now),
//! one log write with one `fdatasync` (new entries and the hard state) on the executor's
//! blocking pool, advance, then the messages that needed the round to be durable.
//!
//! The applied state reaches LMDB through the applier, behind the log and off the path every
//! commit waits for: committed entries queue up, and one LMDB transaction at a time stores
//! what has queued, on a second blocking thread, while rounds go on. Reads on this replica
//! wait for it (`Shared::durable_applied`), and the log is compacted only past what it stored.
//! A snapshot install is the exception: it waits for the applier, then replaces the state.
//!
//! The same loop runs a single voter and a quorum member: peers only add a transport.

use crate::peer::Peers;
use crate::raft_log::RaftStorage;
use crate::replica::{apply_entries, Replica, Round};
use crate::shard::{Ask, Outcome, Proposal, Shard};
use crate::shared::{Shared, ROLE_CANDIDATE, ROLE_FOLLOWER, ROLE_LEADER, ROLE_PRE_CANDIDATE, ROLE_SHUTDOWN};
use crate::state;
use crate::store::{LmdbState, Store};
use crate::wal::{MemLog, Record, Wal};
use crate::{debug, error, info, warn};
use futures_lite::future::poll_once;
use glommio::channels::local_channel::{LocalReceiver, LocalSender};
use glommio::channels::shared_channel::ConnectedSender;
use pact_proto::journal::{ApplyResult, Command, Member, MembershipAction, ProposalOrigin};
use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, Message, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Raft's clock. Fine-grained so that the randomised election timeouts of two followers
/// rarely fall in the same tick (both would campaign at once and split the vote, costing a
/// second timeout): 35 distinct timeouts between 0.55 and 0.9 s, where 50 ms ticks gave 10.
pub const TICK: Duration = Duration::from_millis(10);

/// How far behind its tick schedule the driver catches up; further behind, it drops ticks.
const MAX_TICK_CATCH_UP: Duration = Duration::from_millis(100);

/// Raft's timing in ticks of [`TICK`] (`[journal.raft] election_tick`, `heartbeat_tick`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The leader lease: a follower that heard from its leader more recently than this
    /// ignores (pre-)vote requests, and a leader that hears from no quorum for this long steps
    /// down. Elections start a little later, see [`Timing::min_election_tick`].
    pub election_tick: usize,
    /// A leader sends heartbeats (carrying the commit index) this often.
    pub heartbeat_tick: usize,
}

impl Timing {
    /// A lease of 500 ms, elections after 550 to 900 ms without a leader, heartbeats every
    /// 100 ms: a dead leader is replaced in under a second.
    pub const DEFAULT: Timing = Timing { election_tick: 50, heartbeat_tick: 10 };

    /// The randomised election timeout's lower bound: 10% past the lease. raft-rs draws from
    /// the lease itself upwards, so a follower drawing the shortest timeout asked a peer whose
    /// own lease, started a tick later by the same append, had not run out; the peer ignored
    /// it, and the follower waited a second full timeout (measured: about 1 failover in 12
    /// took 1.0 s instead of 0.5).
    pub fn min_election_tick(&self) -> usize {
        self.election_tick + (self.election_tick / 10).max(1)
    }

    /// The randomised election timeout's upper bound (exclusive): 1.8× the lease. raft-rs's
    /// 2× would let a dead leader's replacement take up to a second plus the election.
    pub fn max_election_tick(&self) -> usize {
        (self.election_tick * 9 / 5).max(self.min_election_tick() + 1)
    }
}

/// Most inputs taken into one round (one durable commit).
pub const MAX_BATCH: usize = 1024;
/// Inputs queued for the driver (proposals from every shard, peer messages).
pub const INBOX: usize = 8192;

/// Everything the driver reacts to.
pub enum Input {
    Proposal(Proposal),
    Raft(Box<Message>),
    /// A peer link failed; raft should slow down towards it.
    Unreachable(u64),
    /// A snapshot message to a peer was written (true) or lost (false).
    SnapshotDone(u64, bool),
    /// A peer that dialed us said who it is: where its Raft port is (used until the address
    /// book has it), and, for a journal started with `--learner`, that it wants to join.
    PeerHello(Member),
    /// The applier's LMDB transaction finished (its result is in its task).
    Applied,
}

pub struct DriverConfig {
    pub snapshot_interval: u64,
    /// Raft addresses known from configuration (the founder needs them to invite members; a
    /// joining journal needs them to answer before it has the replicated address book).
    pub configured_peers: Vec<(u64, String)>,
    /// On the founding start: the other members to add once this journal leads.
    pub invite: Vec<Member>,
    pub timing: Timing,
}

/// Who the driver talks to: this shard (its clients' answers), the other shards' result
/// queues, the peers, and its own inbox (for the applier's completion).
pub struct Links {
    pub local: Rc<Shard>,
    pub remote_results: Vec<ConnectedSender<(u64, Outcome)>>,
    pub peers: Peers,
    pub inbox_tx: Rc<LocalSender<Input>>,
}

/// The raft log, opened and reconciled (`raft_log::open`), for the driver.
pub struct LogFiles {
    pub wal: Wal,
    pub log: MemLog,
}

/// Committed entries whose state is not in LMDB yet: their clients were answered from the
/// shadow, the log holds them, and the applier stores them in order.
#[derive(Default)]
struct ApplyQueue {
    entries: Vec<Entry>,
    /// The conf state after the last queued membership change, stored with the entries.
    conf_state: Option<ConfState>,
    /// What the shadow answered for them: the stored results must be identical.
    results: Vec<(ProposalOrigin, ApplyResult)>,
    /// When the oldest of them was queued.
    since: Option<Instant>,
}

/// Most applied entries waiting for LMDB before the driver waits for the applier (it only
/// falls this far behind when LMDB is much slower than the log).
const MAX_APPLY_LAG: usize = 65_536;
/// The applier stores what has queued once this many entries wait, once the oldest has waited
/// `APPLY_DELAY`, or at once when a reader waits for it (`Shared::store_wanted`). An LMDB
/// commit costs two flushes and several page writes: one per entry cost a lone client a third
/// of its throughput on a 2-core machine, for state only readers look at. Measured at 16
/// clients on a 3-journal quorum, a 20 ms delay gave 6% more commits/s than 5 ms; what it
/// delays is subscription updates (by at most that, on top of the feed's 5 ms poll).
const APPLY_BATCH: usize = 1024;
const APPLY_DELAY: Duration = Duration::from_millis(20);

type ApplierOutput = (u64, Vec<(ProposalOrigin, ApplyResult)>, Result<Vec<(ProposalOrigin, ApplyResult)>, String>);

pub struct Driver {
    replica: Replica<RaftStorage>,
    store: Store,
    /// The raft log in memory (shared with `RaftStorage`) and its file (used on the blocking
    /// pool, one write at a time).
    log: Rc<RefCell<MemLog>>,
    wal: Arc<Mutex<Wal>>,
    /// The driver's own inbox, for the applier's completion.
    inbox_tx: Rc<LocalSender<Input>>,
    shared: Arc<Shared>,
    local: Rc<Shard>,
    remote_results: Vec<ConnectedSender<(u64, Outcome)>>,
    peers: Peers,
    cfg: DriverConfig,
    last_role: StateRole,
    /// Read barriers waiting for the applied index to reach their read index.
    reads: BTreeMap<u64, Vec<(u32, u64)>>,
    /// Requests raft took but has not answered, with the term they were taken in. When the
    /// term moves on they are answered at once ("the leader changed; it may or may not have
    /// been applied") instead of leaving the client to its timeout: a follower forwards to
    /// the leader it knows, and a dead leader loses what it was sent.
    inflight: HashMap<(u32, u64), u64>,
    last_term: u64,
    /// In-memory mirror of what `apply` reads; answers clients at commit time.
    shadow: state::Shadow,
    /// Committed entries answered from the shadow, waiting for the applier.
    queue: ApplyQueue,
    /// The applier's transaction in flight (one at a time).
    applier: Option<glommio::Task<ApplierOutput>>,
    last_compacted: u64,
    /// Approvals whose expiry this leader proposed, and when (not proposed again for 10 s).
    expiring: HashMap<u64, Instant>,
    last_sweep: Instant,
}

pub fn raft_config(id: u64, applied: u64, timing: Timing) -> raft::Config {
    raft::Config {
        id,
        election_tick: timing.election_tick,
        min_election_tick: timing.min_election_tick(),
        max_election_tick: timing.max_election_tick(),
        heartbeat_tick: timing.heartbeat_tick,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

/// One LMDB transaction of applied state (the applier's, or a snapshot install's): the
/// snapshot if any, the committed entries, the conf state after them. On the blocking pool.
fn store_applied(
    store: &Store,
    snapshot: Option<&Snapshot>,
    entries: &[Entry],
    cs: Option<&ConfState>,
) -> Result<Vec<(ProposalOrigin, ApplyResult)>, String> {
    let mut w = store.write_txn().map_err(|e| e.to_string())?;
    if let Some(s) = snapshot {
        store.install_snapshot(&mut w, s).map_err(|e| e.to_string())?;
    }
    let results = apply_entries(&mut LmdbState::new(store, &mut w), entries)?;
    if let Some(cs) = cs {
        store.write_conf_state(&mut w, cs).map_err(|e| e.to_string())?;
    }
    w.commit().map_err(|e| e.to_string())?;
    Ok(results)
}

fn read_ctx(shard: u32, id: u64) -> Vec<u8> {
    let mut v = shard.to_be_bytes().to_vec();
    v.extend_from_slice(&id.to_be_bytes());
    v
}

fn parse_read_ctx(b: &[u8]) -> Option<(u32, u64)> {
    Some((u32::from_be_bytes(b.get(..4)?.try_into().ok()?), u64::from_be_bytes(b.get(4..12)?.try_into().ok()?)))
}

impl Driver {
    pub fn new(
        store: Store,
        files: LogFiles,
        shared: Arc<Shared>,
        links: Links,
        cfg: DriverConfig,
    ) -> Result<Driver, String> {
        let Links { local, remote_results, peers, inbox_tx } = links;
        let applied = store.applied_index().map_err(|e| e.to_string())?;
        let rc = raft_config(shared.node_id, applied, cfg.timing);
        rc.validate().map_err(|e| format!("raft config: {e}"))?;
        let (first, last_index, commit) = (files.log.first, files.log.last(), files.log.hs.commit);
        let log = Rc::new(RefCell::new(files.log));
        let node =
            RawNode::new(&rc, RaftStorage { log: log.clone(), store: store.clone() }, &crate::log::raft_logger())
                .map_err(|e| format!("raft: {e}"))?;
        let shadow = store.shadow().map_err(|e| e.to_string())?;
        // Reads wait until the state they see includes what this replica had already answered
        // before it restarted (`Shared::acked_index`). That is at least its persisted commit
        // index; a lone voter answered everything in its log (its own disk was the quorum).
        let conf = store.conf_state().map_err(|e| e.to_string())?;
        let barrier = if conf.voters == [shared.node_id] { last_index } else { commit };
        shared.durable_applied.store(applied, Ordering::Relaxed);
        shared.acked_index.store(barrier.max(applied), Ordering::Relaxed);
        shared.log_bytes.store(files.wal.size(), Ordering::Relaxed);
        let d = Driver {
            replica: Replica::new(node),
            store,
            log,
            wal: Arc::new(Mutex::new(files.wal)),
            inbox_tx,
            shared,
            local,
            remote_results,
            peers,
            cfg,
            last_role: StateRole::Follower,
            reads: BTreeMap::new(),
            inflight: HashMap::new(),
            last_term: 0,
            shadow,
            queue: ApplyQueue::default(),
            applier: None,
            last_compacted: first - 1,
            expiring: HashMap::new(),
            last_sweep: Instant::now(),
        };
        d.refresh_peers();
        Ok(d)
    }

    fn node(&mut self) -> &mut RawNode<RaftStorage> {
        &mut self.replica.node
    }

    /// Peer addresses: configuration first, the replicated address book (as applied, in the
    /// shadow) over it.
    fn refresh_peers(&self) {
        let mut book: HashMap<u64, String> = self.cfg.configured_peers.iter().cloned().collect();
        for m in self.shadow.members.values() {
            if !m.raft_addr.is_empty() {
                book.insert(m.id, m.raft_addr.clone());
            }
        }
        let list: Vec<(u64, String)> = book.into_iter().collect();
        self.peers.set_addresses(&list);
    }

    pub async fn run(mut self, inbox: LocalReceiver<Input>) {
        let me = self.shared.node_id;
        let voters: Vec<u64> = self.replica.node.raft.prs().conf().voters().ids().iter().collect();
        if voters == [me] {
            // The only voter: become leader now rather than after an election timeout.
            if let Err(e) = self.node().campaign() {
                warn!("campaign: {e}");
            }
        } else if voters.is_empty() {
            info!("no membership yet: waiting to be added through the replicated membership");
        }
        // Status readers see real values from the start, not zeros.
        self.publish();
        // Ticks keep to a schedule rather than counting from when the last one ran, so a
        // loop that wakes a little late each time, or is held up by a busy machine for a few
        // ticks, does not stretch every timeout with it: missed ticks are caught up one per
        // iteration (after the messages that arrived meanwhile, which reset the clocks they
        // concern). A loop further behind than MAX_TICK_CATCH_UP (a stopped process) drops
        // the rest instead.
        let mut next_tick = Instant::now() + TICK;
        loop {
            if self.shared.is_shutting_down() {
                break;
            }
            let mut batch = 0usize;
            if !self.replica.has_pending() {
                let mut left = next_tick.saturating_duration_since(Instant::now());
                if !self.queue.entries.is_empty() {
                    // Wake to start the applier on time (and for readers that wait for it).
                    left = left.min(Duration::from_millis(1));
                }
                match glommio::timer::timeout(left.max(Duration::from_millis(1)), async { Ok(inbox.recv().await) })
                    .await
                {
                    Ok(Some(i)) => {
                        self.take(i);
                        batch += 1;
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            while batch < MAX_BATCH {
                match poll_once(inbox.recv()).await {
                    Some(Some(i)) => {
                        self.take(i);
                        batch += 1;
                    }
                    _ => break,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.node().tick();
                next_tick += TICK;
                if now >= next_tick + MAX_TICK_CATCH_UP {
                    next_tick = now + TICK;
                }
                self.invite_members();
                self.sweep_approvals();
            }
            if let Err(e) = self.round().await {
                // A store failure means we can no longer promise durability: stop taking
                // writes rather than acknowledge something we may not have kept.
                error!("raft driver stopped: {e}");
                self.shared.failed.store(true, Ordering::Relaxed);
                self.shared.shutdown.store(true, Ordering::Relaxed);
                break;
            }
        }
        if let Err(e) = self.drain_applier().await {
            warn!("storing the last applied entries at shutdown: {e} (they are replayed from the log)");
        }
        while let Some(Some(i)) = poll_once(inbox.recv()).await {
            if let Input::Proposal(p) = i {
                self.route(p.shard, p.proposal_id, Outcome::Dropped("the journal is shutting down".into()));
            }
        }
        self.shared.role.store(ROLE_SHUTDOWN, Ordering::Relaxed);
        info!("raft driver stopped at applied index {}", self.shared.applied_index.load(Ordering::Relaxed));
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Proposal(p) => self.propose(p),
            Input::Raft(m) => {
                if let Err(e) = self.replica.step(*m) {
                    debug!("raft step: {e}");
                }
            }
            Input::Unreachable(id) => self.node().report_unreachable(id),
            Input::PeerHello(m) => {
                if !m.raft_addr.is_empty() && !self.peers.knows(m.id) {
                    self.cfg.configured_peers.retain(|(i, _)| *i != m.id);
                    self.cfg.configured_peers.push((m.id, m.raft_addr.clone()));
                    self.refresh_peers();
                }
                // A journal that asks to join as a learner (it proved its id with its
                // certificate from the cluster CA): the leader adds it, like an invitation.
                let conf = self.replica.node.raft.prs().conf();
                let member = conf.voters().contains(m.id) || conf.learners().contains(&m.id);
                if m.role == "learner"
                    && !member
                    && self.replica.node.raft.state == StateRole::Leader
                    && !self.cfg.invite.iter().any(|i| i.id == m.id)
                {
                    info!("journal {} asks to join as a learner", m.id);
                    self.cfg.invite.push(m);
                }
            }
            Input::SnapshotDone(id, ok) => {
                let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                self.node().report_snapshot(id, status);
            }
            // Collected by `reap_applier` at the start of the next round.
            Input::Applied => {}
        }
    }

    fn propose(&mut self, p: Proposal) {
        let (shard, id) = (p.shard, p.proposal_id);
        let r = match p.ask {
            Ask::Write(data) => self.node().propose(vec![], data),
            Ask::Membership { change, node_id, context } => {
                let kind = match change {
                    MembershipAction::AddVoter | MembershipAction::Promote => ConfChangeType::AddNode,
                    MembershipAction::AddLearner => ConfChangeType::AddLearnerNode,
                    MembershipAction::Remove => ConfChangeType::RemoveNode,
                    MembershipAction::Unspecified => {
                        self.route(shard, id, Outcome::Dropped("no membership action given".into()));
                        return;
                    }
                };
                let mut cc = ConfChange::default();
                cc.set_change_type(kind);
                cc.node_id = node_id;
                cc.context = context.into();
                self.node().propose_conf_change(vec![], cc)
            }
            Ask::ReadIndex => {
                self.node().read_index(read_ctx(shard, id));
                Ok(())
            }
        };
        if r.is_ok() {
            let term = self.replica.node.raft.term;
            self.inflight.insert((shard, id), term);
            return;
        }
        if let Err(e) = r {
            let why = match e {
                raft::Error::ProposalDropped => {
                    "no leader yet (or a membership change is in progress); retry shortly".into()
                }
                other => format!("refused: {other}"),
            };
            self.route(shard, id, Outcome::Dropped(why));
        }
    }

    fn route(&mut self, shard: u32, proposal_id: u64, outcome: Outcome) {
        self.inflight.remove(&(shard, proposal_id));
        if shard == self.local.id {
            self.local.deliver(proposal_id, outcome);
        } else if let Some(tx) = self.remote_results.get(shard as usize - 1) {
            if tx.try_send((proposal_id, outcome)).is_err() {
                warn!("result queue to shard {shard} full; request {proposal_id} will time out");
            }
        }
    }

    /// The leader proposes EXPIRED decisions for pending approvals past their `expires_at`
    /// (from the shadow, which holds every pending approval), at most every
    /// `approval::SWEEP_INTERVAL` and at most 256 per sweep. The state machine checks the
    /// expiry again against the command's own timestamp, so a replayed or duplicated proposal
    /// is refused, never applied twice.
    fn sweep_approvals(&mut self) {
        if self.last_sweep.elapsed() < crate::approval::SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = Instant::now();
        if self.replica.node.raft.state != StateRole::Leader {
            self.expiring.clear();
            return;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let ts = pact_proto::config::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() };
        self.expiring.retain(|_, at| at.elapsed() < Duration::from_secs(10));
        let due: Vec<(u64, pact_proto::policy::PendingApproval)> = self
            .shadow
            .approvals
            .iter()
            .filter(|(id, a)| {
                let e = a.expires_at.unwrap_or_default();
                (e.seconds, e.nanos) <= (ts.seconds, ts.nanos) && !self.expiring.contains_key(id)
            })
            .take(256)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        let journal = crate::audit::journal_identity(self.shared.node_id);
        for (id, a) in due {
            let entry = crate::approval::decision_entry(
                &a,
                id,
                pact_proto::policy::ApprovalStatus::Expired,
                "",
                journal.clone(),
            );
            let cmd = Command {
                origin: None,
                proposed_at: Some(ts),
                op: Some(pact_proto::journal::command::Op::AppendEntry(entry)),
                member: None,
            };
            match self.node().propose(vec![], cmd.encode_to_vec()) {
                Ok(()) => {
                    self.expiring.insert(id, Instant::now());
                    info!("approval {id} expired; proposing its EXPIRED decision");
                }
                Err(e) => debug!("proposing the expiry of approval {id}: {e}"),
            }
        }
    }

    /// The founding journal adds the configured members, one at a time, once it leads.
    fn invite_members(&mut self) {
        if self.cfg.invite.is_empty() || self.replica.node.raft.state != StateRole::Leader {
            return;
        }
        // One change in flight at a time (raft-rs refuses a second while one is pending).
        if self.replica.node.raft.has_pending_conf() {
            return;
        }
        let conf = self.replica.node.raft.prs().conf();
        let voters: Vec<u64> = conf.voters().ids().iter().collect();
        let learners: Vec<u64> = conf.learners().iter().copied().collect();
        let before = self.cfg.invite.len();
        self.cfg.invite.retain(|m| {
            let is_learner = m.role == "learner";
            !(voters.contains(&m.id) || (is_learner && learners.contains(&m.id)))
        });
        if self.cfg.invite.len() != before {
            // Small and rare (once per founding member): a direct write is fine here.
            if let Err(e) = self.store.set_invites(&self.cfg.invite) {
                warn!("recording the remaining invitations: {e}");
            }
        }
        let Some(m) = self.cfg.invite.first().cloned() else { return };
        let ctx = Command { member: Some(m.clone()), ..Default::default() };
        let mut cc = ConfChange::default();
        cc.set_change_type(if m.role == "learner" { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode });
        cc.node_id = m.id;
        cc.context = ctx.encode_to_vec().into();
        match self.node().propose_conf_change(vec![], cc) {
            Ok(()) => info!("inviting journal {} ({}) as a {}", m.id, m.raft_addr, m.role),
            Err(e) => debug!("inviting journal {}: {e}", m.id),
        }
    }

    async fn round(&mut self) -> Result<(), String> {
        self.reap_applier().await?;
        let Some(mut round) = self.replica.begin()? else {
            self.start_applier(false);
            self.publish();
            return Ok(());
        };
        if !round.send_now.is_empty() {
            self.peers.send(std::mem::take(&mut round.send_now));
        }
        let had_membership = round.apply.iter().any(|e| e.get_entry_type() != raft::eraftpb::EntryType::EntryNormal)
            || round.snapshot.is_some();
        let reads: Vec<(u64, Vec<u8>)> = round.read_states.iter().map(|r| (r.index, r.request_ctx.clone())).collect();
        // The hard state goes with every log write: term and vote must be durable before the
        // round's votes go out, and the commit index rides along for free.
        let hs = round.hard_state.clone().unwrap_or_else(|| self.replica.node.raft.hard_state());
        if let Some(snap) = round.snapshot.clone() {
            self.install_snapshot(snap, &round, hs).await?;
        } else {
            // Answer this replica's clients now: the entries are committed (durable on a
            // quorum), and their results are what the applier will store. Reads on this
            // replica wait for the applier (`Shared::acked_index`), so a client still reads
            // its writes.
            let results = apply_entries(&mut self.shadow, &round.apply)?;
            if let Some(last) = round.apply.last() {
                self.shared.acked_index.fetch_max(last.index, Ordering::Relaxed);
            }
            for (origin, result) in results.iter().cloned() {
                self.answer(origin, result);
            }
            self.queue.entries.extend(round.apply.iter().cloned());
            if round.conf_state.is_some() {
                self.queue.conf_state = round.conf_state.clone();
            }
            self.queue.results.extend(results);
            if !round.apply.is_empty() {
                self.queue.since.get_or_insert_with(Instant::now);
            }
            // When due, store them in parallel with the log write below.
            self.start_applier(false);
            // A round with nothing new for the log (only commits learned, or only messages)
            // writes nothing: a commit index is never needed for safety, and a lost one is
            // learned again (at start it is at least the applied index).
            let term_vote_changed = round.hard_state.as_ref().is_some_and(|h| {
                let l = self.log.borrow();
                (h.term, h.vote) != (l.hs.term, l.hs.vote)
            });
            if !round.append.is_empty() || term_vote_changed {
                let record = Record { reset: None, hs: Some(hs), entries: std::mem::take(&mut round.append) };
                self.write_log(record, false).await?;
            }
        }
        let after = self.replica.finish(round);
        if !after.is_empty() {
            self.peers.send(after);
        }
        if had_membership {
            self.refresh_peers();
        }
        for (index, ctx) in reads {
            if let Some((shard, id)) = parse_read_ctx(&ctx) {
                self.reads.entry(index).or_default().push((shard, id));
            }
        }
        self.release_reads();
        if self.queue.entries.len() >= MAX_APPLY_LAG {
            // LMDB fell far behind the log: let it catch up before taking more.
            self.drain_applier().await?;
        }
        self.maybe_compact().await?;
        Shared::inc(&self.shared.ready_rounds_total);
        self.publish();
        Ok(())
    }

    /// A snapshot from the leader (this replica was new, or too far behind): wait for the
    /// applier, replace the state in LMDB (then apply what was committed with it), then
    /// restart the log after it. In that order: a crash in between leaves a state ahead of
    /// the log, which `raft_log::open` recognises and completes.
    async fn install_snapshot(
        &mut self,
        snap: Snapshot,
        round: &Round,
        hs: raft::eraftpb::HardState,
    ) -> Result<(), String> {
        self.drain_applier().await?;
        let meta = snap.get_metadata().clone();
        let (index, term) = (meta.index, meta.term);
        let (store, apply, cs) = (self.store.clone(), round.apply.clone(), round.conf_state.clone());
        let results =
            glommio::executor().spawn_blocking(move || store_applied(&store, Some(&snap), &apply, cs.as_ref())).await?;
        let applied = round.apply.last().map(|e| e.index).unwrap_or(index);
        self.shared.durable_applied.fetch_max(applied, Ordering::Relaxed);
        self.shared.acked_index.fetch_max(applied, Ordering::Relaxed);
        let record = Record { reset: Some((index, term)), hs: Some(hs), entries: round.append.clone() };
        self.write_log(record, true).await?;
        self.last_compacted = index;
        self.shadow = self.store.shadow().map_err(|e| e.to_string())?;
        for (origin, result) in results {
            self.answer(origin, result);
        }
        Ok(())
    }

    /// Makes a record durable in the log file (appended, or as a rewrite of the whole file),
    /// then updates the in-memory log raft-rs reads.
    async fn write_log(&mut self, record: Record, rewrite: bool) -> Result<(), String> {
        let wal = self.wal.clone();
        let (record, size) = glommio::executor()
            .spawn_blocking(move || -> Result<(Record, u64), String> {
                let mut wal = wal.lock().unwrap_or_else(|p| p.into_inner());
                if rewrite {
                    wal.rewrite(&record).map_err(|e| e.to_string())?;
                } else {
                    wal.append(&crate::wal::encode(&record).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
                }
                Ok((record, wal.size()))
            })
            .await?;
        self.shared.log_bytes.store(size, Ordering::Relaxed);
        self.log.borrow_mut().apply(&record).map_err(|e| e.to_string())
    }

    /// Starts the applier on what has queued, when due (see `APPLY_DELAY`) or `now`, unless
    /// it is busy. It runs one LMDB transaction on the blocking pool and then wakes the driver
    /// through its inbox.
    fn start_applier(&mut self, now: bool) {
        if self.applier.is_some() || self.queue.entries.is_empty() {
            return;
        }
        let due = now
            || self.queue.entries.len() >= APPLY_BATCH
            || self.queue.since.is_some_and(|t| t.elapsed() >= APPLY_DELAY)
            || self.shared.store_wanted.load(Ordering::Relaxed) > self.shared.durable_applied.load(Ordering::Relaxed);
        if !due {
            return;
        }
        let q = std::mem::take(&mut self.queue);
        let last = q.entries.last().map(|e| e.index).unwrap_or(0);
        let (store, tx) = (self.store.clone(), self.inbox_tx.clone());
        self.applier = Some(glommio::spawn_local(async move {
            let (entries, cs) = (q.entries, q.conf_state);
            let stored =
                glommio::executor().spawn_blocking(move || store_applied(&store, None, &entries, cs.as_ref())).await;
            let _ = tx.send(Input::Applied).await;
            (last, q.results, stored)
        }));
    }

    /// Collects a finished applier, if any (without waiting).
    async fn reap_applier(&mut self) -> Result<(), String> {
        let Some(task) = self.applier.as_mut() else { return Ok(()) };
        if let Some(out) = poll_once(task).await {
            self.applier = None;
            self.applier_done(out)?;
        }
        Ok(())
    }

    /// Waits for the applier and stores everything still queued.
    async fn drain_applier(&mut self) -> Result<(), String> {
        loop {
            if let Some(task) = self.applier.take() {
                let out = task.await;
                self.applier_done(out)?;
            }
            if self.queue.entries.is_empty() {
                return Ok(());
            }
            self.start_applier(true);
        }
    }

    fn applier_done(&mut self, (last, expected, stored): ApplierOutput) -> Result<(), String> {
        let stored = stored?;
        // The shadow and the store must agree: apply is deterministic.
        assert_eq!(expected, stored, "in-memory and stored apply results differ");
        self.shared.durable_applied.fetch_max(last, Ordering::Relaxed);
        Ok(())
    }

    fn answer(&mut self, origin: ProposalOrigin, result: ApplyResult) {
        if origin.node_id == self.shared.node_id {
            self.route(origin.shard, origin.proposal_id, Outcome::Applied(result));
        }
    }

    fn release_reads(&mut self) {
        let applied = self.replica.node.raft.raft_log.applied;
        let ready: Vec<u64> = self.reads.range(..=applied).map(|(k, _)| *k).collect();
        for k in ready {
            for (shard, id) in self.reads.remove(&k).unwrap_or_default() {
                self.route(shard, id, Outcome::ReadReady);
            }
        }
    }

    /// Every `snapshot_interval` applied entries, drop the log up to the applied index (as
    /// stored in LMDB, so a restart never needs what was dropped): the log file is rewritten
    /// with what is left. A lagging or new peer then gets a snapshot of the applied state.
    async fn maybe_compact(&mut self) -> Result<(), String> {
        let applied = self.shared.durable_applied.load(Ordering::Relaxed).min(self.replica.node.raft.raft_log.applied);
        if self.cfg.snapshot_interval == 0 || applied < self.last_compacted + self.cfg.snapshot_interval {
            return Ok(());
        }
        let record = self.log.borrow().compacted(applied).map_err(|e| e.to_string())?;
        self.write_log(record, true).await?;
        self.last_compacted = applied;
        info!("compacted the raft log through index {applied}");
        Ok(())
    }

    /// Answers requests taken in an earlier term, or all of them when this node stops leading
    /// (a leader cut off from its quorum steps down without a new term; see `inflight`).
    fn fail_stale(&mut self) {
        let term = self.replica.node.raft.term;
        let stepped_down = self.last_role == StateRole::Leader && self.replica.node.raft.state != StateRole::Leader;
        if term == self.last_term && !stepped_down {
            return;
        }
        self.last_term = term;
        let stale: Vec<(u32, u64)> =
            self.inflight.iter().filter(|(_, t)| stepped_down || **t < term).map(|(k, _)| *k).collect();
        for (shard, id) in stale {
            self.route(
                shard,
                id,
                Outcome::Dropped(
                    "the Raft leader changed before this was committed; it may or may not have been applied".into(),
                ),
            );
        }
        // Read barriers are re-asked by nobody: drop them the same way.
        let reads: Vec<(u32, u64)> = std::mem::take(&mut self.reads).into_values().flatten().collect();
        for (shard, id) in reads {
            self.route(shard, id, Outcome::Dropped("the Raft leader changed; retry the read".into()));
        }
    }

    /// Publishes the raft status for metrics, /health and JournalStatus.
    fn publish(&mut self) {
        self.fail_stale();
        let r = &self.replica.node.raft;
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
        s.is_learner.store(r.prs().conf().learners().contains(&s.node_id), Ordering::Relaxed);
        s.term.store(r.term, Ordering::Relaxed);
        s.leader_id.store(r.leader_id, Ordering::Relaxed);
        s.commit_index.store(r.raft_log.committed, Ordering::Relaxed);
        s.applied_index.store(r.raft_log.applied, Ordering::Relaxed);
        s.last_index.store(r.raft_log.last_index(), Ordering::Relaxed);
        s.first_index.store(self.last_compacted + 1, Ordering::Relaxed);
        s.snapshot_index.store(self.last_compacted, Ordering::Relaxed);
        if role == StateRole::Leader {
            let mut matched = s.matched.lock().unwrap_or_else(|p| p.into_inner());
            matched.clear();
            for (id, pr) in r.prs().iter() {
                matched.insert(*id, pr.matched);
            }
        }
    }
}
