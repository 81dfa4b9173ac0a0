//! State shared by every shard thread: metrics counters, the raft status snapshot the raft
//! shard publishes, and the shutdown flag. Everything here is atomics: no locks on the hot path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Shared {
    pub node_id: u64,
    /// Policies reloaded on SIGHUP (main's signal thread); each shard takes its own copy when
    /// `policy_generation` moves (`rpc::refresh_policy`).
    pub policy_reload: std::sync::Mutex<Option<crate::policy::PolicyEngine>>,
    pub policy_generation: std::sync::atomic::AtomicU64,
    pub shutdown: AtomicBool,
    /// Set when the raft driver stopped on an error (exit code 1 instead of 0).
    pub failed: AtomicBool,
    // raft status, published by the raft shard after each Ready round
    pub role: AtomicU8,
    pub term: AtomicU64,
    pub leader_id: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub last_index: AtomicU64,
    /// First index in the raft log (everything before is compacted into the snapshot).
    pub first_index: AtomicU64,
    /// Bytes of records in the raft log file (`wal.rs`).
    pub log_bytes: AtomicU64,
    pub last_sequence: AtomicU64,
    pub snapshot_index: AtomicU64,
    /// Highest raft index whose results were sent to clients (possibly before being stored).
    pub acked_index: AtomicU64,
    /// Highest raft index whose applied state is committed to LMDB (readable).
    pub durable_applied: AtomicU64,
    /// Highest index a waiting reader needs stored: the raft driver's applier stores what has
    /// queued now instead of after its batching delay.
    pub store_wanted: AtomicU64,
    pub is_learner: AtomicBool,
    /// On the leader: each member's matched log index (for status and lag).
    pub matched: Mutex<HashMap<u64, u64>>,
    // counters
    pub proposals_total: AtomicU64,
    pub proposals_failed_total: AtomicU64,
    pub elections_total: AtomicU64,
    pub peer_errors_total: AtomicU64,
    pub requests_total: AtomicU64,
    pub request_errors_total: AtomicU64,
    pub auth_failures_total: AtomicU64,
    pub protocol_errors_total: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused_total: AtomicU64,
    pub ready_rounds_total: AtomicU64,
    // boot streaming and subscriptions (boot.rs)
    /// `[journal.streaming] max_concurrent_boot_streams`, across all shards.
    pub max_boot_streams: AtomicU64,
    /// `[journal.streaming] subscriber_buffer`: updates queued per subscription.
    pub subscriber_buffer: AtomicU64,
    pub boot_streams_active: AtomicU64,
    pub boot_streams_total: AtomicU64,
    pub boot_streams_busy_total: AtomicU64,
    pub boot_stream_errors_total: AtomicU64,
    /// Refused requests put on the record, and those only counted (see `audit`).
    pub denials_recorded_total: AtomicU64,
    pub denials_unrecorded_total: AtomicU64,
    /// Requests decided without the policy engine because it did not answer (`rpc::consult`).
    pub policy_degraded_total: AtomicU64,
    pub boot_stream_micros_total: AtomicU64,
    /// Completed boot streams by duration: counts per `BOOT_BUCKETS_SECONDS` upper bound
    /// (not cumulative here; `/metrics` sums them), the last slot for +Inf.
    pub boot_stream_buckets: [AtomicU64; BOOT_BUCKETS_SECONDS.len() + 1],
    pub overlay_builds_total: AtomicU64,
    pub subscriptions_active: AtomicU64,
    pub subscription_resyncs_total: AtomicU64,
}

/// Upper bounds of `pact_journal_boot_stream_duration_seconds`'s buckets (the boot-slow alert
/// looks at its p99 against 10 s).
pub const BOOT_BUCKETS_SECONDS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

pub const ROLE_FOLLOWER: u8 = 0;
pub const ROLE_CANDIDATE: u8 = 1;
pub const ROLE_LEADER: u8 = 2;
pub const ROLE_PRE_CANDIDATE: u8 = 3;
pub const ROLE_SHUTDOWN: u8 = 4;

impl Shared {
    pub fn new(node_id: u64) -> Shared {
        Shared { node_id, ..Default::default() }
    }

    pub fn role_name(&self) -> &'static str {
        if self.is_learner.load(Ordering::Relaxed) && self.role.load(Ordering::Relaxed) == ROLE_FOLLOWER {
            return "learner";
        }
        match self.role.load(Ordering::Relaxed) {
            ROLE_LEADER => "leader",
            ROLE_CANDIDATE => "candidate",
            ROLE_PRE_CANDIDATE => "pre-candidate",
            ROLE_SHUTDOWN => "shutdown",
            _ => "follower",
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_boot_stream(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = BOOT_BUCKETS_SECONDS.iter().position(|b| secs <= *b).unwrap_or(BOOT_BUCKETS_SECONDS.len());
        self.boot_stream_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.boot_stream_micros_total.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}
