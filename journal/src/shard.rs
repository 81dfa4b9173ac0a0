//! One shard per core: a glommio executor that serves its own client connections and reads
//! the store directly. Writes become proposals that go to the raft shard (shard 0) over a
//! bounded channel; the raft shard sends each result back to the shard that proposed it.

use crate::shared::Shared;
use crate::store::Store;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::ConnectedSender;
use pact_proto::auth::HmacVerifier;
use pact_proto::config::Timestamp;
use pact_proto::journal::{command, ApplyResult, Command, ProposalOrigin};
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

/// A write on its way to raft. `data` is a prost-encoded `Command`.
pub struct Proposal {
    pub shard: u32,
    pub proposal_id: u64,
    pub data: Vec<u8>,
}

/// What a proposer hears back.
#[derive(Debug)]
pub enum Outcome {
    Applied(ApplyResult),
    /// Raft refused the proposal (no leader yet, or shutting down).
    Dropped(String),
}

pub enum ProposalTx {
    /// The raft shard's own handlers feed its inbox directly.
    Local(Rc<LocalSender<Proposal>>),
    Remote(ConnectedSender<Proposal>),
}

pub struct Shard {
    pub id: u32,
    pub store: Store,
    pub shared: Arc<Shared>,
    pub verifier: Option<HmacVerifier>,
    pub proposals: ProposalTx,
    pending: RefCell<HashMap<u64, LocalSender<Outcome>>>,
    next_proposal: Cell<u64>,
}

impl Shard {
    pub fn new(
        id: u32,
        store: Store,
        shared: Arc<Shared>,
        verifier: Option<HmacVerifier>,
        proposals: ProposalTx,
    ) -> Shard {
        Shard {
            id,
            store,
            shared,
            verifier,
            proposals,
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

    /// Proposes a command and waits until it is applied (or refused, or times out).
    pub async fn propose(&self, op: command::Op) -> Result<ApplyResult, RemoteError> {
        if self.shared.is_shutting_down() {
            return Err(RemoteError::new(ErrorCode::Unavailable, "the journal is shutting down"));
        }
        let proposal_id = self.next_proposal.get();
        self.next_proposal.set(proposal_id + 1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let cmd = Command {
            origin: Some(ProposalOrigin { node_id: self.shared.node_id, shard: self.id, proposal_id }),
            proposed_at: Some(Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() }),
            op: Some(op),
        };
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(proposal_id, tx);
        let p = Proposal { shard: self.id, proposal_id, data: cmd.encode_to_vec() };
        let sent = match &self.proposals {
            ProposalTx::Local(s) => s.send(p).await.is_ok(),
            ProposalTx::Remote(s) => s.send(p).await.is_ok(),
        };
        if !sent {
            self.pending.borrow_mut().remove(&proposal_id);
            return Err(RemoteError::new(ErrorCode::Unavailable, "the raft shard is not running"));
        }
        Shared::inc(&self.shared.proposals_total);
        let waited = glommio::timer::timeout(PROPOSAL_TIMEOUT, async { Ok(rx.recv().await) }).await;
        match waited {
            Ok(Some(Outcome::Applied(r))) => Ok(r),
            Ok(Some(Outcome::Dropped(why))) => {
                Shared::inc(&self.shared.proposals_failed_total);
                Err(RemoteError::new(ErrorCode::Unavailable, why))
            }
            Ok(None) => Err(RemoteError::new(ErrorCode::Unavailable, "the raft shard stopped")),
            Err(_) => {
                self.pending.borrow_mut().remove(&proposal_id);
                Shared::inc(&self.shared.proposals_failed_total);
                Err(RemoteError::new(
                    ErrorCode::Timeout,
                    format!("the write was not applied within {}s (no quorum?)", PROPOSAL_TIMEOUT.as_secs()),
                ))
            }
        }
    }
}

pub type ShardRef = Rc<Shard>;
