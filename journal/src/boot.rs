//! Boot streaming and subscriptions: the journal's hot path (DESIGN.md §4).
//!
//! A boot request is served entirely by the shard that accepted the connection, from memory,
//! on any replica (leader, follower or learner), never through Raft:
//! 1. the node's record (assignment and declared config) and the overlay's current version
//!    come from this replica's LMDB, one lookup each, no decoding of the overlay itself;
//! 2. the overlay's chunks come from the shard's cache, pre-encoded as frame bodies, and are
//!    rebuilt from the stored boot form whenever the stored version differs from the cached
//!    one, so a stale overlay is never served;
//! 3. overlay chunks, then the node delta, then the completion message.
//!
//! Concurrency is capped across all shards by `[journal.streaming] max_concurrent_boot_streams`;
//! past the cap the node gets a BUSY error with a jittered `retry_after_ms`, never a hang.
//!
//! Subscriptions: each shard runs one feed task that follows the store's sequence and fans
//! the updates of each new entry out to that shard's subscribers through bounded queues. A
//! subscriber first catches up from LMDB (from its `from_sequence` to the feed's position),
//! then joins the feed in the same synchronous step, so nothing falls between the two. A
//! subscriber whose queue is full is marked; it gets a Resync after what it already has,
//! never a silent drop.

use crate::authz;
use crate::declared::{self, sha256_hex};
use crate::shard::ShardRef;
use crate::shared::Shared;
use crate::state::validate_id;
use futures_lite::{AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use heed::RoTxn;
use pact_proto::auth::Caller;
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, PolicySpec, Timestamp};
use pact_proto::frame::{encode_header, FrameHeader, FrameKind, HEADER_LEN};
use pact_proto::journal::{NodeRecord, OverlayRecord};
use pact_proto::policy::VClusterPolicy;
use pact_proto::stream::{
    config_chunk, config_update, BlacklistChanged, BootConfigRequest, ConfigChunk, ConfigComplete, ConfigUpdate,
    NodeDelta, NodeDeltaChanged, OverlayChanged, OverlayChunk, PolicyChanged, PowerOrder, Resync, SubscribeRequest,
};
use pact_proto::wire::Request;
use pact_proto::{ErrorCode, Method, RemoteError};
use prost::Message as _;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Overlay bytes per chunk (the upstream's documented 64 KiB).
pub const CHUNK_SIZE: usize = 64 * 1024;
/// BUSY answers ask the node to wait this long, plus up to the same again in jitter, so a
/// refused wave does not come back in lockstep.
pub const BUSY_RETRY_MS: u32 = 250;
/// A quiet subscription gets a keepalive this often (and so notices a dead client).
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// How often a shard's feed looks for newly applied entries.
const FEED_POLL: Duration = Duration::from_millis(5);
/// Entries read per LMDB transaction while catching up or fanning out.
const FEED_BATCH: usize = 256;

/// A vCluster's overlay as this shard serves it: each chunk already encoded as the body of
/// a StreamItem frame.
pub struct Built {
    pub version: u64,
    pub checksum: String,
    pub chunks: Vec<Vec<u8>>,
}

/// Per-shard boot state: the overlay cache and the subscription feed.
#[derive(Default)]
pub struct Local {
    overlays: RefCell<HashMap<String, Rc<Built>>>,
    feed_cursor: Cell<u64>,
    subscribers: RefCell<Vec<Rc<Subscriber>>>,
    rng: Cell<u64>,
}

struct Subscriber {
    /// Empty: every node (`pact watch`).
    node_id: String,
    /// The vCluster followed: the node's assignment when it has one, else the request's.
    /// Empty with no node: everything.
    vcluster: RefCell<String>,
    requested_vcluster: String,
    /// The feed delivers only entries after this sequence (what catch-up already covered).
    after: Cell<u64>,
    tx: LocalSender<ConfigUpdate>,
    overflowed: Cell<bool>,
}

impl Local {
    fn jitter_ms(&self, max: u32) -> u32 {
        // xorshift64: cheap, and good enough to spread retries.
        let mut x = self.rng.get();
        if x == 0 {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            x = (t.as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15) | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x % u64::from(max.max(1))) as u32
    }
}

/// Decrements the active-stream gauge however the stream ends.
struct StreamSlot<'a>(&'a Shared);

impl Drop for StreamSlot<'_> {
    fn drop(&mut self) {
        self.0.boot_streams_active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> RemoteError {
    RemoteError::new(code, msg)
}

fn internal(e: impl std::fmt::Display) -> RemoteError {
    err(ErrorCode::Internal, e.to_string())
}

fn now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() }
}

/// Writes one frame, header and body in one write: every write to a TLS stream becomes at
/// least one record and one send, so a separate 12-byte header would double both.
async fn write_frame<S: AsyncWrite + Unpin>(
    io: &mut S,
    kind: FrameKind,
    method: u16,
    id: u32,
    body: &[u8],
) -> Result<(), String> {
    let mut w = FrameWriter::new(body.len() + HEADER_LEN);
    w.push(io, kind, method, id, body).await?;
    w.drain(io).await
}

/// Frames gathered into writes of about `FLUSH_AT` bytes: a boot stream (overlay chunks,
/// node delta, completion, end) goes out in full 16 KiB TLS records and few sends.
struct FrameWriter {
    buf: Vec<u8>,
}

const FLUSH_AT: usize = 64 * 1024;

impl FrameWriter {
    fn new(capacity: usize) -> FrameWriter {
        FrameWriter { buf: Vec::with_capacity(capacity) }
    }

    async fn push<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        kind: FrameKind,
        method: u16,
        id: u32,
        body: &[u8],
    ) -> Result<(), String> {
        let h = encode_header(&FrameHeader { kind, method, request_id: id, body_len: body.len() as u32 });
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(body);
        if self.buf.len() >= FLUSH_AT {
            self.drain(io).await?;
        }
        Ok(())
    }

    /// Writes what is gathered (not flushed: the caller flushes at the end of a reply).
    async fn drain<S: AsyncWrite + Unpin>(&mut self, io: &mut S) -> Result<(), String> {
        if !self.buf.is_empty() {
            io.write_all(&self.buf).await.map_err(|e| e.to_string())?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Turns a request-level failure into an Error frame; the connection stays open.
async fn answer_error<S: AsyncWrite + Unpin>(
    shard: &ShardRef,
    io: &mut S,
    method: u16,
    id: u32,
    e: RemoteError,
) -> Result<(), String> {
    Shared::inc(&shard.shared.request_errors_total);
    if e.code == ErrorCode::Unauthenticated || e.code == ErrorCode::PermissionDenied {
        Shared::inc(&shard.shared.auth_failures_total);
    }
    write_frame(io, FrameKind::Error, method, id, &e.to_body().encode_to_vec()).await?;
    io.flush().await.map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- boot streams

/// Serves one StreamBootConfig request. Err only when the connection itself failed.
pub async fn stream_boot<S: AsyncWrite + Unpin>(
    shard: &ShardRef,
    conn: &crate::rpc::Conn,
    io: &mut S,
    id: u32,
    req: &Request,
) -> Result<(), String> {
    let m = Method::StreamBootConfig as u16;
    let started = Instant::now();
    let shared = &shard.shared;
    let active = shared.boot_streams_active.fetch_add(1, Ordering::Relaxed) + 1;
    let _slot = StreamSlot(shared);
    if active > shared.max_boot_streams.load(Ordering::Relaxed) {
        Shared::inc(&shared.boot_streams_busy_total);
        let mut e = err(
            ErrorCode::Busy,
            format!("busy: {} boot streams in progress (max_concurrent_boot_streams); retry", active - 1),
        );
        e.retry_after_ms = BUSY_RETRY_MS + shard.boot.jitter_ms(BUSY_RETRY_MS);
        return answer_error(shard, io, m, id, e).await;
    }
    // Read-your-writes: an admin's commit is acknowledged a moment before its applied state
    // is stored; a boot right after it must see it.
    if let Err(e) = shard.wait_stored().await {
        return answer_error(shard, io, m, id, e).await;
    }
    let caller = match crate::rpc::authenticate(shard, conn, &req.bearer_token, Method::StreamBootConfig).await {
        Ok(c) => c,
        Err(e) => {
            Shared::inc(&shared.boot_stream_errors_total);
            return answer_error(shard, io, m, id, e).await;
        }
    };
    let plan = match plan_boot(shard, req, &caller) {
        Ok(p) => p,
        Err(e) => {
            Shared::inc(&shared.boot_stream_errors_total);
            if e.code == ErrorCode::PermissionDenied {
                crate::rpc::record_denial(shard, Some(&caller), Method::StreamBootConfig, &e.message);
            }
            return answer_error(shard, io, m, id, e).await;
        }
    };
    let mut w = FrameWriter::new(FLUSH_AT + CHUNK_SIZE + 1024);
    let send_overlay = plan.last_known_version != Some(plan.overlay.version);
    if send_overlay {
        for chunk in &plan.overlay.chunks {
            w.push(io, FrameKind::StreamItem, m, id, chunk).await?;
        }
    }
    let send_delta = plan.last_known_node_version != Some(plan.node.version);
    if send_delta {
        let delta = ConfigChunk {
            chunk: Some(config_chunk::Chunk::NodeDelta(NodeDelta {
                node_id: plan.node.node_id.clone(),
                version: plan.node.version,
                data: declared::node_delta_bytes(&plan.node),
                checksum: plan.node.checksum.clone(),
            })),
        };
        w.push(io, FrameKind::StreamItem, m, id, &delta.encode_to_vec()).await?;
    }
    let complete = ConfigChunk {
        chunk: Some(config_chunk::Chunk::Complete(ConfigComplete {
            base_version: plan.overlay.version,
            node_version: plan.node.version,
            timestamp: Some(now()),
            unchanged: !send_overlay && !send_delta,
        })),
    };
    w.push(io, FrameKind::StreamItem, m, id, &complete.encode_to_vec()).await?;
    // Counted before the last bytes leave, so a node that has read its whole stream (and a
    // test reading /metrics right after) always sees it counted.
    Shared::inc(&shared.boot_streams_total);
    shared.observe_boot_stream(started.elapsed());
    w.push(io, FrameKind::EndOfStream, m, id, &[]).await?;
    w.drain(io).await?;
    io.flush().await.map_err(|e| e.to_string())?;
    Ok(())
}

struct BootPlan {
    overlay: Rc<Built>,
    node: NodeRecord,
    last_known_version: Option<u64>,
    last_known_node_version: Option<u64>,
}

/// After [`crate::rpc::authenticate`]; `caller` must be allowed to read the node.
fn plan_boot(shard: &ShardRef, req: &Request, caller: &Caller) -> Result<BootPlan, RemoteError> {
    let r = BootConfigRequest::decode(&req.body[..])
        .map_err(|e| err(ErrorCode::InvalidArgument, format!("StreamBootConfig request does not decode: {e}")))?;
    validate_id(&r.node_id, "node_id").map_err(|m| err(ErrorCode::InvalidArgument, m))?;
    if !r.vcluster_id.is_empty() {
        validate_id(&r.vcluster_id, "vcluster_id").map_err(|m| err(ErrorCode::InvalidArgument, m))?;
    }
    let txn = shard.store.read_txn().map_err(internal)?;
    let node = shard
        .store
        .get_node_record(&txn, &r.node_id)
        .map_err(internal)?
        .unwrap_or_else(|| declared::empty_node_record(&r.node_id));
    // The journal's assignment wins over what the node believes.
    let vc = if node.assigned_vcluster.is_empty() { r.vcluster_id.clone() } else { node.assigned_vcluster.clone() };
    if vc.is_empty() {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "node {} has no vCluster: it is not assigned (pact node assign {} --vcluster V) and the request names none",
                r.node_id, r.node_id
            ),
        ));
    }
    let target = authz::Target::Node { node: &r.node_id, vcluster: Some(vc.clone()) };
    authz::check(caller, authz::Need::Read, &target).map_err(|m| err(ErrorCode::PermissionDenied, m))?;
    let overlay = cached_overlay(shard, &txn, &vc)?;
    Ok(BootPlan {
        overlay,
        node,
        last_known_version: r.last_known_version,
        last_known_node_version: r.last_known_node_version,
    })
}

/// The shard's copy of `vc`'s overlay, rebuilt when the stored version moved on (or was
/// never cached here). A vCluster with no declared state yet gets an empty overlay at
/// version 0, so a node can boot with its own delta before anything is applied.
fn cached_overlay(shard: &ShardRef, txn: &RoTxn, vc: &str) -> Result<Rc<Built>, RemoteError> {
    let stored = shard.store.overlay_blob(txn, vc).map_err(internal)?;
    let stored_version = stored.map_or(0, |(v, _)| v);
    if let Some(b) = shard.boot.overlays.borrow().get(vc) {
        if b.version == stored_version {
            return Ok(b.clone());
        }
    }
    let (blob, raw_size) = match stored {
        Some((_, blob)) => {
            let rec = shard
                .store
                .get_overlay(txn, vc)
                .map_err(internal)?
                .ok_or_else(|| internal(format!("vCluster {vc} has a boot form but no overlay record")))?;
            // The stored record and the stored bytes are written in one transaction; a
            // mismatch is a bug, and serving it would hand nodes bytes they will refuse.
            let checksum = sha256_hex(blob);
            if rec.version != stored_version || rec.checksum != checksum {
                return Err(internal(format!(
                    "vCluster {vc}: stored overlay version {stored_version} / checksum {checksum} do not match its record ({} / {})",
                    rec.version, rec.checksum
                )));
            }
            (blob.to_vec(), rec.raw_size)
        }
        None => {
            let (rec, blob) = declared::build_overlay(vc, 0, Default::default()).map_err(internal)?;
            (blob, rec.raw_size)
        }
    };
    let built = Rc::new(chunk_overlay(vc, stored_version, &blob, raw_size));
    Shared::inc(&shard.shared.overlay_builds_total);
    shard.boot.overlays.borrow_mut().insert(vc.to_string(), built.clone());
    Ok(built)
}

/// Splits a compressed overlay into StreamItem bodies.
pub fn chunk_overlay(vc: &str, version: u64, blob: &[u8], raw_size: u32) -> Built {
    let checksum = sha256_hex(blob);
    let pieces: Vec<&[u8]> = if blob.is_empty() { vec![&[][..]] } else { blob.chunks(CHUNK_SIZE).collect() };
    let total = pieces.len() as u32;
    let chunks = pieces
        .iter()
        .enumerate()
        .map(|(i, data)| {
            ConfigChunk {
                chunk: Some(config_chunk::Chunk::BaseOverlay(OverlayChunk {
                    version,
                    vcluster_id: vc.to_string(),
                    data: data.to_vec(),
                    chunk_index: i as u32,
                    total_chunks: total,
                    checksum: checksum.clone(),
                    compressed_size: blob.len() as u32,
                    raw_size,
                })),
            }
            .encode_to_vec()
        })
        .collect();
    Built { version, checksum, chunks }
}

// ---------------------------------------------------------------- subscriptions

/// What one entry means to subscribers: each update with the topic it is about.
enum Topic {
    VCluster(String),
    /// A node, and the vCluster it is assigned to after the entry.
    Node {
        node: String,
        assigned: String,
    },
}

/// The updates entry `e` produced, read from the declared state's history (so catching up
/// from LMDB and the live feed give the same answer).
/// The power order an entry carries for its node: an ADMIN_OPERATION `reboot: REASON` or
/// `poweroff: REASON` (what `pact reboot|poweroff` records) that a second person approved (the
/// entry an approval executed carries the approval record). Unapproved ones are not orders:
/// the CLI asks the agent itself, after recording them.
fn power_order(node: &str, e: &ConfigEntry) -> Option<PowerOrder> {
    use prost::Message as _;
    if e.entry_type != EntryType::AdminOperation as i32 || e.approval.is_empty() {
        return None;
    }
    let a = pact_proto::policy::PendingApproval::decode(&e.approval[..]).ok()?;
    if a.status != pact_proto::policy::ApprovalStatus::Approved as i32 {
        return None;
    }
    let (action, reason) = e.policy_ref.split_once(": ").unwrap_or((e.policy_ref.as_str(), ""));
    if !matches!(action, "reboot" | "poweroff") {
        return None;
    }
    Some(PowerOrder {
        node_id: node.to_string(),
        action: action.to_string(),
        reason: reason.to_string(),
        requested_by: a.requester.map(|i| i.principal).unwrap_or_default(),
        approved_by: a.approver.map(|i| i.principal).unwrap_or_default(),
        approved_at: e.timestamp,
    })
}

fn updates_for(shard: &ShardRef, txn: &RoTxn, e: &ConfigEntry) -> Result<Vec<(Topic, ConfigUpdate)>, RemoteError> {
    let store = &shard.store;
    let seq = e.sequence;
    let update = |u: config_update::Update| ConfigUpdate { sequence: seq, timestamp: e.timestamp, update: Some(u) };
    let mut out = Vec::new();
    match e.scope.as_ref().and_then(|s| s.target.as_ref()) {
        Some(Target::VclusterId(vc)) => {
            let Some(now) = store.overlay_at(txn, vc, seq).map_err(internal)?.filter(|o| o.version == seq) else {
                return Ok(out); // the entry did not change the overlay
            };
            out.push((Topic::VCluster(vc.clone()), update(overlay_changed(&now))));
            let before = store.overlay_at(txn, vc, seq - 1).map_err(internal)?;
            let policy = |o: Option<&OverlayRecord>| o.and_then(|o| o.spec.as_ref()).and_then(|s| s.policy.clone());
            let (old, new) = (policy(before.as_ref()), policy(Some(&now)));
            if old != new {
                let spec = new.clone().unwrap_or_default();
                out.push((
                    Topic::VCluster(vc.clone()),
                    update(config_update::Update::PolicyChange(PolicyChanged {
                        policy: Some(policy_of(vc, &spec, &now, e.timestamp)),
                        spec: Some(spec),
                    })),
                ));
                let patterns =
                    |p: &Option<PolicySpec>| p.as_ref().map(|p| p.blacklist_patterns.clone()).unwrap_or_default();
                if patterns(&old) != patterns(&new) {
                    out.push((
                        Topic::VCluster(vc.clone()),
                        update(config_update::Update::BlacklistChange(BlacklistChanged {
                            patterns: patterns(&new),
                            vcluster_id: vc.clone(),
                        })),
                    ));
                }
            }
        }
        Some(Target::NodeId(node)) => {
            if let Some(order) = power_order(node, e) {
                let assigned = store.get_node_record(txn, node).map_err(internal)?.map(|r| r.assigned_vcluster);
                out.push((
                    Topic::Node { node: node.clone(), assigned: assigned.unwrap_or_default() },
                    update(config_update::Update::PowerOrder(order)),
                ));
                return Ok(out);
            }
            let Some(rec) = store.node_record_at(txn, node, seq).map_err(internal)?.filter(|r| r.version == seq) else {
                return Ok(out);
            };
            let topic = || Topic::Node { node: node.clone(), assigned: rec.assigned_vcluster.clone() };
            out.push((
                topic(),
                update(config_update::Update::NodeChange(NodeDeltaChanged {
                    node_id: node.clone(),
                    version: seq,
                    checksum: rec.checksum.clone(),
                })),
            ));
            let moved = matches!(
                EntryType::try_from(e.entry_type),
                Ok(EntryType::NodeAssigned | EntryType::NodeMoved | EntryType::NodeUnassigned)
            );
            if moved && !rec.assigned_vcluster.is_empty() {
                // The node follows another overlay from now on.
                let vc = &rec.assigned_vcluster;
                let o = store.overlay_at(txn, vc, seq).map_err(internal)?.unwrap_or_else(|| {
                    let (rec, _) = declared::build_overlay(vc, 0, Default::default()).unwrap_or_default();
                    rec
                });
                out.push((topic(), update(overlay_changed(&o))));
            }
        }
        _ => {}
    }
    Ok(out)
}

fn overlay_changed(o: &OverlayRecord) -> config_update::Update {
    config_update::Update::OverlayChange(OverlayChanged {
        vcluster_id: o.vcluster_id.clone(),
        version: o.version,
        checksum: o.checksum.clone(),
    })
}

/// The policy service's view of a declared policy (the fields both share).
fn policy_of(vc: &str, p: &PolicySpec, o: &OverlayRecord, at: Option<Timestamp>) -> VClusterPolicy {
    VClusterPolicy {
        vcluster_id: vc.to_string(),
        policy_id: format!("{vc}@{}", o.version),
        updated_at: at,
        drift_sensitivity: p.drift_sensitivity.unwrap_or_default(),
        base_commit_window_seconds: p.base_commit_window_seconds.unwrap_or_default(),
        emergency_window_seconds: p.emergency_window_seconds.unwrap_or_default(),
        auto_converge_categories: p.auto_converge_categories.clone(),
        require_ack_categories: p.require_ack_categories.clone(),
        enforcement_mode: p.enforcement_mode.clone().unwrap_or_default(),
        regulated: p.regulated.unwrap_or_default(),
        two_person_approval: p.two_person_approval.unwrap_or_default(),
        audit_retention_days: p.audit_retention_days.unwrap_or_default(),
        federation_template: p.federation_template.clone(),
        supervisor_backend: o.spec.as_ref().map(|s| s.supervisor_backend.clone()).unwrap_or_default(),
        exec_whitelist: p.exec_whitelist.clone(),
        shell_whitelist: p.shell_whitelist.clone(),
        emergency_allowed: p.emergency_allowed.unwrap_or_default(),
        ai_exec_allowed: p.ai_exec_allowed.unwrap_or_default(),
        ..Default::default()
    }
}

impl Subscriber {
    /// Whether `topic` concerns this subscriber; follows the node's assignment as it moves.
    fn wants(&self, topic: &Topic) -> bool {
        match topic {
            Topic::VCluster(vc) => {
                let mine = self.vcluster.borrow();
                mine.is_empty() && self.node_id.is_empty() || *mine == *vc
            }
            Topic::Node { node, assigned } => {
                if self.node_id.is_empty() {
                    let mine = self.vcluster.borrow();
                    mine.is_empty() || *mine == *assigned
                } else if *node == self.node_id {
                    let follow = if assigned.is_empty() { self.requested_vcluster.clone() } else { assigned.clone() };
                    *self.vcluster.borrow_mut() = follow;
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// Follows the store and fans new entries out to this shard's subscribers. Runs on every
/// shard until shutdown.
pub async fn feed(shard: ShardRef) {
    let start = shard.store.read_txn().ok().and_then(|t| shard.store.next_sequence(&t).ok()).unwrap_or(1);
    shard.boot.feed_cursor.set(start.saturating_sub(1));
    while !shard.shared.is_shutting_down() {
        glommio::timer::sleep(FEED_POLL).await;
        if let Err(e) = feed_once(&shard) {
            crate::warn!("subscription feed on shard {}: {}", shard.id, e.message);
        }
    }
}

fn feed_once(shard: &ShardRef) -> Result<(), RemoteError> {
    let txn = shard.store.read_txn().map_err(internal)?;
    let latest = shard.store.next_sequence(&txn).map_err(internal)?.saturating_sub(1);
    let mut cursor = shard.boot.feed_cursor.get();
    if latest <= cursor {
        return Ok(());
    }
    if shard.boot.subscribers.borrow().is_empty() {
        shard.boot.feed_cursor.set(latest);
        return Ok(());
    }
    while cursor < latest {
        let batch =
            shard.store.list_entries(&txn, None, cursor + 1..=latest, FEED_BATCH, true, &|_| true).map_err(internal)?;
        let Some(last) = batch.last().map(|e| e.sequence) else { break };
        for e in &batch {
            let updates = updates_for(shard, &txn, e)?;
            let subs = shard.boot.subscribers.borrow();
            for s in subs.iter().filter(|s| s.after.get() < e.sequence && !s.overflowed.get()) {
                for (topic, u) in &updates {
                    if s.wants(topic) && s.tx.try_send(u.clone()).is_err() {
                        s.overflowed.set(true);
                        break;
                    }
                }
            }
        }
        cursor = last;
        shard.boot.feed_cursor.set(cursor);
    }
    Ok(())
}

/// Serves one SubscribeConfigUpdates request until the client goes away, shutdown, or a
/// resync. Err only when the connection itself failed.
pub async fn subscribe<S: AsyncWrite + Unpin>(
    shard: &ShardRef,
    conn: &crate::rpc::Conn,
    io: &mut S,
    id: u32,
    req: &Request,
) -> Result<(), String> {
    let m = Method::SubscribeConfigUpdates as u16;
    if let Err(e) = shard.wait_stored().await {
        return answer_error(shard, io, m, id, e).await;
    }
    let caller = match crate::rpc::authenticate(shard, conn, &req.bearer_token, Method::SubscribeConfigUpdates).await {
        Ok(c) => c,
        Err(e) => return answer_error(shard, io, m, id, e).await,
    };
    let (sub, rx, mut last) = match open_subscription(shard, req, &caller) {
        Ok(x) => x,
        Err(e) => {
            if e.code == ErrorCode::PermissionDenied {
                crate::rpc::record_denial(shard, Some(&caller), Method::SubscribeConfigUpdates, &e.message);
            }
            return answer_error(shard, io, m, id, e).await;
        }
    };
    shard.shared.subscriptions_active.fetch_add(1, Ordering::Relaxed);
    // A subscription that a certificate authenticated is checked again at each keepalive, so
    // a decommissioned node's stream ends within one keepalive period.
    let by_cert = (req.bearer_token.is_empty() && !conn.chain.is_empty()).then_some(conn);
    let result = run_subscription(shard, io, id, &sub, &rx, &mut last, by_cert).await;
    shard.shared.subscriptions_active.fetch_sub(1, Ordering::Relaxed);
    shard.boot.subscribers.borrow_mut().retain(|s| !Rc::ptr_eq(s, &sub));
    result
}

type Opened = (Rc<Subscriber>, LocalReceiver<ConfigUpdate>, u64);

/// After [`crate::rpc::authenticate`]; `caller` must be allowed to read what it follows.
fn open_subscription(shard: &ShardRef, req: &Request, caller: &Caller) -> Result<Opened, RemoteError> {
    let r = SubscribeRequest::decode(&req.body[..])
        .map_err(|e| err(ErrorCode::InvalidArgument, format!("SubscribeConfigUpdates request does not decode: {e}")))?;
    if !r.node_id.is_empty() {
        validate_id(&r.node_id, "node_id").map_err(|m| err(ErrorCode::InvalidArgument, m))?;
    }
    if !r.vcluster_id.is_empty() {
        validate_id(&r.vcluster_id, "vcluster_id").map_err(|m| err(ErrorCode::InvalidArgument, m))?;
    }
    // Which vCluster the node followed at `from_sequence`.
    let mut vc = r.vcluster_id.clone();
    if !r.node_id.is_empty() {
        let txn = shard.store.read_txn().map_err(internal)?;
        if let Some(rec) = shard.store.node_record_at(&txn, &r.node_id, r.from_sequence).map_err(internal)? {
            if !rec.assigned_vcluster.is_empty() {
                vc = rec.assigned_vcluster;
            }
        }
    }
    let may = if !r.node_id.is_empty() {
        authz::check(
            caller,
            authz::Need::Read,
            &authz::Target::Node { node: &r.node_id, vcluster: Some(vc.clone()).filter(|v| !v.is_empty()) },
        )
    } else if !vc.is_empty() {
        authz::check(caller, authz::Need::Read, &authz::Target::VCluster(&vc))
    } else if matches!(authz::role(caller), authz::Role::Admin | authz::Role::ServiceAi) {
        Ok(())
    } else {
        Err(format!("{} may not follow every vCluster: name a vCluster or a node", caller.role))
    };
    may.map_err(|m| err(ErrorCode::PermissionDenied, m))?;
    let queue = shard.shared.subscriber_buffer.load(Ordering::Relaxed).clamp(1, 1_000_000) as usize;
    let (tx, rx) = local_channel::new_bounded(queue);
    let sub = Rc::new(Subscriber {
        node_id: r.node_id,
        vcluster: RefCell::new(vc),
        requested_vcluster: r.vcluster_id,
        after: Cell::new(r.from_sequence),
        tx,
        overflowed: Cell::new(false),
    });
    Ok((sub, rx, r.from_sequence))
}

async fn run_subscription<S: AsyncWrite + Unpin>(
    shard: &ShardRef,
    io: &mut S,
    id: u32,
    sub: &Rc<Subscriber>,
    rx: &LocalReceiver<ConfigUpdate>,
    last: &mut u64,
    by_cert: Option<&crate::rpc::Conn>,
) -> Result<(), String> {
    let m = Method::SubscribeConfigUpdates as u16;
    // Catch up from the store until level with the feed, then join it without yielding in
    // between: every later entry is the feed's to deliver.
    loop {
        let cursor = shard.boot.feed_cursor.get();
        if *last >= cursor {
            sub.after.set(*last);
            shard.boot.subscribers.borrow_mut().push(sub.clone());
            break;
        }
        let items = {
            let txn = shard.store.read_txn().map_err(|e| e.to_string())?;
            let batch = shard
                .store
                .list_entries(&txn, None, *last + 1..=cursor, FEED_BATCH, true, &|_| true)
                .map_err(|e| e.to_string())?;
            let mut items = Vec::new();
            for e in &batch {
                for (topic, u) in updates_for(shard, &txn, e).map_err(|e| e.message)? {
                    if sub.wants(&topic) {
                        items.push(u.encode_to_vec());
                    }
                }
            }
            match batch.last() {
                Some(e) => *last = e.sequence,
                None => *last = cursor, // compacted away or not yet readable: nothing to send
            }
            items
        };
        for body in items {
            write_frame(io, FrameKind::StreamItem, m, id, &body).await?;
        }
        io.flush().await.map_err(|e| e.to_string())?;
    }
    loop {
        if shard.shared.is_shutting_down() {
            write_frame(io, FrameKind::EndOfStream, m, id, &[]).await?;
            return io.flush().await.map_err(|e| e.to_string());
        }
        let next = glommio::timer::timeout(KEEPALIVE, async { Ok(rx.recv().await) }).await;
        match next {
            Ok(Some(u)) => {
                *last = (*last).max(u.sequence);
                write_frame(io, FrameKind::StreamItem, m, id, &u.encode_to_vec()).await?;
                // Write what else is queued before flushing.
                while let Some(Some(u)) = futures_lite::future::poll_once(rx.recv()).await {
                    *last = (*last).max(u.sequence);
                    write_frame(io, FrameKind::StreamItem, m, id, &u.encode_to_vec()).await?;
                }
                io.flush().await.map_err(|e| e.to_string())?;
            }
            Ok(None) => return Ok(()),
            Err(_) => {
                if let Some(conn) = by_cert {
                    if let Err(crate::enroll::CertRefusal::Refused(why)) =
                        crate::enroll::check_client_chain(&shard.store, &conn.chain, &conn.memo)
                    {
                        let e = err(ErrorCode::Unauthenticated, format!("client certificate refused: {why}"));
                        return answer_error(shard, io, m, id, e).await;
                    }
                }
                // Quiet: nothing is queued, so everything up to the feed's cursor that
                // concerns this subscriber was delivered.
                if !sub.overflowed.get() {
                    *last = (*last).max(shard.boot.feed_cursor.get());
                }
                let keepalive = ConfigUpdate { sequence: *last, timestamp: Some(now()), update: None };
                write_frame(io, FrameKind::StreamItem, m, id, &keepalive.encode_to_vec()).await?;
                io.flush().await.map_err(|e| e.to_string())?;
            }
        }
        if sub.overflowed.get() {
            // Write what was queued before the overflow, then tell the node where its
            // stream stops being complete.
            while let Some(Some(u)) = futures_lite::future::poll_once(rx.recv()).await {
                *last = (*last).max(u.sequence);
                write_frame(io, FrameKind::StreamItem, m, id, &u.encode_to_vec()).await?;
            }
            Shared::inc(&shard.shared.subscription_resyncs_total);
            let resync = ConfigUpdate {
                sequence: *last,
                timestamp: Some(now()),
                update: Some(config_update::Update::Resync(Resync {
                    reason: format!(
                        "subscriber fell more than {} updates behind ([journal.streaming] subscriber_buffer)",
                        shard.shared.subscriber_buffer.load(Ordering::Relaxed)
                    ),
                    resume_from: *last,
                })),
            };
            write_frame(io, FrameKind::StreamItem, m, id, &resync.encode_to_vec()).await?;
            write_frame(io, FrameKind::EndOfStream, m, id, &[]).await?;
            return io.flush().await.map_err(|e| e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_blob_in_order() {
        let blob: Vec<u8> = (0..(CHUNK_SIZE * 2 + 10)).map(|i| (i % 251) as u8).collect();
        let b = chunk_overlay("ml", 9, &blob, 12345);
        assert_eq!(b.chunks.len(), 3);
        let mut joined = Vec::new();
        for (i, c) in b.chunks.iter().enumerate() {
            let Some(config_chunk::Chunk::BaseOverlay(o)) = ConfigChunk::decode(&c[..]).unwrap().chunk else {
                panic!("not an overlay chunk")
            };
            assert_eq!((o.chunk_index, o.total_chunks, o.version), (i as u32, 3, 9));
            assert_eq!(o.checksum, sha256_hex(&blob));
            joined.extend_from_slice(&o.data);
        }
        assert_eq!(joined, blob);
        // An empty overlay is still one chunk, so the node sees its version and checksum.
        assert_eq!(chunk_overlay("ml", 0, &[], 0).chunks.len(), 1);
    }
}
