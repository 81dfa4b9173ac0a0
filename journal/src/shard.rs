//! One shard per core: a glommio executor that serves its own client connections and reads
//! the store directly. Writes become proposals that go to the raft shard (shard 0) over a
//! bounded channel; the raft shard sends each result back to the shard that proposed it.

use crate::shared::Shared;
use crate::store::Store;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::ConnectedSender;
use pact_proto::auth::TokenVerifier;
use pact_proto::config::Timestamp;
use pact_proto::journal::{command, ApplyResult, Command, Member, MembershipAction, ProposalOrigin};
use pact_proto::{ErrorCode, RemoteError};
use prost::Message as _;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Proposals queued towards the raft shard, per shard. Past this, writers wait (backpressure).
pub const PROPOSAL_QUEUE: usize = 4096;
/// Results queued back from the raft shard, per shard.
pub const RESULT_QUEUE: usize = 4096;
/// How long a client write may wait for its command to be applied.
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a shard asks of the raft shard.
pub enum Ask {
    /// A prost-encoded `Command` to replicate and apply.
    Write(Vec<u8>),
    /// A membership change; `context` is a prost-encoded `Command` carrying the origin and
    /// the member's addresses.
    Membership { change: MembershipAction, node_id: u64, context: Vec<u8> },
    /// A read barrier: answered once this replica has applied everything committed now.
    ReadIndex,
}

/// A request on its way to the raft shard, tagged with where the answer goes.
pub struct Proposal {
    pub shard: u32,
    pub proposal_id: u64,
    pub ask: Ask,
}

/// What a proposer hears back.
#[derive(Debug)]
pub enum Outcome {
    Applied(ApplyResult),
    /// The read barrier was reached.
    ReadReady,
    /// Raft refused the proposal (no leader yet, or shutting down).
    Dropped(String),
}

pub enum ProposalTx {
    /// The raft shard's own handlers feed its inbox directly.
    Local(Rc<LocalSender<crate::raft_driver::Input>>),
    Remote(ConnectedSender<Proposal>),
}

pub struct Shard {
    pub id: u32,
    pub store: Store,
    pub shared: Arc<Shared>,
    pub verifier: Option<Arc<TokenVerifier>>,
    pub proposals: ProposalTx,
    /// This shard's overlay cache and subscription feed.
    pub boot: crate::boot::Local,
    /// Bounds on recording refused requests (see `audit`).
    pub audit: crate::audit::Limiter,
    /// This shard's copy of the policy engine (None: the built-in role rules alone decide).
    pub policy: Option<RefCell<crate::policy::PolicyEngine>>,
    /// OPA queries this shard is waiting for (bounded by `rpc::MAX_OPA_IN_FLIGHT`).
    pub opa_in_flight: Cell<u32>,
    /// When this shard last logged a read served without the policy engine (one line per 10 s).
    pub policy_warned: Cell<Option<std::time::Instant>>,
    /// This journal's enrollment CA (None: enrollment unavailable), shared by its shards.
    pub authority: Option<Arc<crate::enroll::Authority>>,
    /// The `Shared::policy_generation` this shard's policy copy is from.
    pub policy_seen: Cell<u64>,
    pending: RefCell<HashMap<u64, LocalSender<Outcome>>>,
    next_proposal: Cell<u64>,
}

impl Shard {
    pub fn new(
        id: u32,
        store: Store,
        shared: Arc<Shared>,
        verifier: Option<Arc<TokenVerifier>>,
        proposals: ProposalTx,
    ) -> Shard {
        Shard {
            id,
            store,
            shared,
            verifier,
            proposals,
            boot: Default::default(),
            audit: Default::default(),
            policy: None,
            opa_in_flight: Cell::new(0),
            policy_warned: Cell::new(None),
            authority: None,
            policy_seen: Cell::new(0),
            pending: RefCell::new(HashMap::new()),
            next_proposal: Cell::new(1),
        }
    }

    /// Routes a result from the raft shard to the waiting handler (if it is still waiting).
    pub fn deliver(&self, proposal_id: u64, outcome: Outcome) {
        if let Some(tx) = self.pending.borrow_mut().remove(&proposal_id) {
            let _ = tx.try_send(outcome);
        }
    }

    fn origin(&self) -> (u64, ProposalOrigin) {
        let proposal_id = self.next_proposal.get();
        self.next_proposal.set(proposal_id + 1);
        (proposal_id, ProposalOrigin { node_id: self.shared.node_id, shard: self.id, proposal_id })
    }

    fn now() -> Timestamp {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() }
    }

    /// Proposes a command and waits until it is applied (or refused, or times out).
    pub async fn propose(&self, op: command::Op) -> Result<ApplyResult, RemoteError> {
        let (proposal_id, origin) = self.origin();
        let cmd = Command { origin: Some(origin), proposed_at: Some(Self::now()), op: Some(op), member: None };
        match self.ask(proposal_id, Ask::Write(cmd.encode_to_vec())).await? {
            Outcome::Applied(r) => Ok(r),
            other => Err(RemoteError::new(ErrorCode::Internal, format!("unexpected answer to a write: {other:?}"))),
        }
    }

    /// Proposes a membership change and waits until it is applied.
    pub async fn change_membership(
        &self,
        change: MembershipAction,
        node_id: u64,
        member: Member,
    ) -> Result<ApplyResult, RemoteError> {
        let (proposal_id, origin) = self.origin();
        let ctx = Command { origin: Some(origin), proposed_at: Some(Self::now()), op: None, member: Some(member) };
        let ask = Ask::Membership { change, node_id, context: ctx.encode_to_vec() };
        match self.ask(proposal_id, ask).await? {
            Outcome::Applied(r) => Ok(r),
            other => Err(RemoteError::new(ErrorCode::Internal, format!("unexpected answer to a change: {other:?}"))),
        }
    }

    /// Waits until everything already answered to clients is stored (readable), at most 2 s.
    pub async fn wait_stored(&self) -> Result<(), RemoteError> {
        use std::sync::atomic::Ordering;
        let target = self.shared.acked_index.load(Ordering::Relaxed);
        if self.shared.durable_applied.load(Ordering::Relaxed) < target {
            self.shared.store_wanted.fetch_max(target, Ordering::Relaxed);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.shared.durable_applied.load(Ordering::Relaxed) < target {
            if std::time::Instant::now() > deadline {
                return Err(RemoteError::new(ErrorCode::Timeout, "the journal's store is not keeping up (2 s)"));
            }
            glommio::timer::sleep(Duration::from_micros(200)).await;
        }
        Ok(())
    }

    /// Waits until this replica has applied everything the leader had committed when asked.
    pub async fn read_barrier(&self) -> Result<(), RemoteError> {
        let (proposal_id, _) = self.origin();
        match self.ask(proposal_id, Ask::ReadIndex).await? {
            Outcome::ReadReady => Ok(()),
            other => Err(RemoteError::new(ErrorCode::Internal, format!("unexpected answer to a read: {other:?}"))),
        }
    }

    async fn ask(&self, proposal_id: u64, ask: Ask) -> Result<Outcome, RemoteError> {
        if self.shared.is_shutting_down() {
            return Err(RemoteError::new(ErrorCode::Unavailable, "the journal is shutting down"));
        }
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(proposal_id, tx);
        let p = Proposal { shard: self.id, proposal_id, ask };
        let sent = match &self.proposals {
            ProposalTx::Local(s) => s.send(crate::raft_driver::Input::Proposal(p)).await.is_ok(),
            ProposalTx::Remote(s) => s.send(p).await.is_ok(),
        };
        if !sent {
            self.pending.borrow_mut().remove(&proposal_id);
            return Err(RemoteError::new(ErrorCode::Unavailable, "the raft shard is not running"));
        }
        Shared::inc(&self.shared.proposals_total);
        let waited = glommio::timer::timeout(PROPOSAL_TIMEOUT, async { Ok(rx.recv().await) }).await;
        match waited {
            Ok(Some(Outcome::Dropped(why))) => {
                Shared::inc(&self.shared.proposals_failed_total);
                Err(RemoteError::new(ErrorCode::Unavailable, why))
            }
            Ok(Some(o)) => Ok(o),
            Ok(None) => Err(RemoteError::new(ErrorCode::Unavailable, "the raft shard stopped")),
            Err(_) => {
                self.pending.borrow_mut().remove(&proposal_id);
                Shared::inc(&self.shared.proposals_failed_total);
                Err(RemoteError::new(
                    ErrorCode::Timeout,
                    format!(
                        "not done within {}s (no leader or no quorum?); a write may or may not have been applied",
                        PROPOSAL_TIMEOUT.as_secs()
                    ),
                ))
            }
        }
    }
}

pub type ShardRef = Rc<Shard>;
