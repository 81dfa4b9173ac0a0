//! The agent's journal client: fetches the boot configuration (overlay, then node delta) and
//! follows live changes, against a list of journals (`[agent.journal] endpoints`).
//!
//! - Endpoints are tried starting at a random one (so 10,000 booting nodes spread over the
//!   quorum and its learners instead of all hitting the first), then in order; after a full
//!   round of failures the client backs off exponentially with full jitter.
//! - A BUSY answer (the journal's boot stream cap) is not a failure: the client waits the
//!   `retry_after_ms` the journal gave, plus jitter, and tries again.
//! - Everything received is verified before use: chunk order and count, the SHA-256 of the
//!   reassembled overlay and of the node delta, and the decompressed size.
//! - A subscription remembers the last sequence it saw (keepalives included) and, when its
//!   connection breaks or the journal goes quiet for too long, resumes from there on the
//!   next journal, so it sees every change once: no gap, no duplicate.
//!
//! Blocking, plain threads (DESIGN.md §5): the agent runs this on its journal-client thread.

use pact_proto::client::{CallError, Client};
use pact_proto::config::VClusterSpec;
use pact_proto::stream::{
    config_chunk, config_update, BootConfigRequest, ConfigChunk, ConfigUpdate, NodeDeltaBody, SubscribeRequest,
};
use pact_proto::{ErrorCode, Method, RemoteError};
use prost::Message as _;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Largest compressed overlay a node accepts.
pub const MAX_OVERLAY_COMPRESSED: usize = 64 << 20;
/// Largest decompressed overlay a node accepts (the journal's own build limit).
pub const MAX_OVERLAY_RAW: usize = 64 << 20;
/// The journal sends a keepalive every 10 s; three missed ones mean it is gone.
pub const SUBSCRIPTION_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Config {
    /// `host:port` of every journal (voters and learners alike).
    pub endpoints: Vec<String>,
    pub tls: Arc<rustls::ClientConfig>,
    pub token: String,
    pub node_id: String,
    /// What the node believes; the journal's assignment wins.
    pub vcluster: String,
    pub timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Rounds over all endpoints before giving up (None: never give up).
    pub max_rounds: Option<u32>,
    /// Certificate identity (no token): each connection uses the enrolled certificate as it is
    /// on disk then, and a journal refusing it makes the agent enroll again.
    pub identity: Option<Arc<dyn crate::enroll::IdentitySource>>,
}

impl Config {
    pub fn new(
        endpoints: Vec<String>,
        tls: Arc<rustls::ClientConfig>,
        token: &str,
        node_id: &str,
        vcluster: &str,
    ) -> Config {
        Config {
            endpoints,
            tls,
            token: token.to_string(),
            node_id: node_id.to_string(),
            vcluster: vcluster.to_string(),
            timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            max_rounds: None,
            identity: None,
        }
    }
}

/// A verified boot configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct BootConfig {
    pub vcluster: String,
    pub overlay_version: u64,
    pub overlay_checksum: String,
    /// The compressed overlay exactly as received (what a node caches).
    pub overlay_compressed: Vec<u8>,
    pub overlay: VClusterSpec,
    pub node_version: u64,
    pub node_checksum: String,
    pub node: NodeDeltaBody,
    /// The journal had nothing newer than the cached copy the request named.
    pub unchanged: bool,
    /// The journal that served it.
    pub endpoint: String,
}

#[derive(Debug)]
pub enum Error {
    /// Received bytes do not match their checksum: never applied.
    Checksum {
        what: String,
        expected: String,
        got: String,
    },
    /// The stream broke the protocol (chunk order, sizes, missing parts).
    Protocol(String),
    /// The journal refused the request (bad request, auth...).
    Remote(RemoteError),
    Unreachable(String),
    /// Every endpoint failed for `rounds` rounds.
    GaveUp {
        rounds: u32,
        last: Box<Error>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Checksum { what, expected, got } => {
                write!(f, "{what}: checksum mismatch (expected {expected}, got {got}); not applied")
            }
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
            Error::Remote(e) => write!(f, "journal refused: {:?}: {}", e.code, e.message),
            Error::Unreachable(m) => write!(f, "journal unreachable: {m}"),
            Error::GaveUp { rounds, last } => write!(f, "every journal failed {rounds} times; last: {last}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<CallError> for Error {
    fn from(e: CallError) -> Error {
        match e {
            CallError::Remote(r) => Error::Remote(r),
            CallError::Unreachable(m) => Error::Unreachable(m),
            CallError::Protocol(m) => Error::Protocol(m),
        }
    }
}

impl Error {
    /// Worth trying another journal (or the same one later).
    fn retryable(&self) -> bool {
        match self {
            Error::Remote(r) => {
                matches!(r.code, ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Busy | ErrorCode::Internal)
            }
            Error::Unreachable(_) | Error::Protocol(_) | Error::Checksum { .. } => true,
            Error::GaveUp { .. } => false,
        }
    }
}

/// Verifies and assembles the items of one boot stream. `cached` is what the node already
/// had (it named its versions in the request), reused when the journal says unchanged.
pub fn assemble(items: &[ConfigChunk], cached: Option<&BootConfig>, endpoint: &str) -> Result<BootConfig, Error> {
    let proto = |m: String| Error::Protocol(m);
    let mut overlay: Option<(String, u64, String, u32, Vec<u8>)> = None; // vc, version, checksum, raw size, bytes
    let mut expected_chunks = 0u32;
    let mut chunks_seen = 0u32;
    let mut delta = None;
    let mut complete = None;
    for item in items {
        match &item.chunk {
            Some(config_chunk::Chunk::BaseOverlay(c)) => {
                if complete.is_some() || delta.is_some() {
                    return Err(proto("an overlay chunk after the node delta or the completion".into()));
                }
                if c.chunk_index != chunks_seen {
                    return Err(proto(format!("overlay chunk {} arrived in position {chunks_seen}", c.chunk_index)));
                }
                let o = overlay.get_or_insert_with(|| {
                    expected_chunks = c.total_chunks;
                    (c.vcluster_id.clone(), c.version, c.checksum.clone(), c.raw_size, Vec::new())
                });
                if c.total_chunks != expected_chunks || c.version != o.1 || c.checksum != o.2 {
                    return Err(proto(format!(
                        "overlay chunk {} does not belong to the stream it arrived in",
                        c.chunk_index
                    )));
                }
                if o.4.len() + c.data.len() > MAX_OVERLAY_COMPRESSED {
                    return Err(proto(format!("overlay larger than {MAX_OVERLAY_COMPRESSED} bytes")));
                }
                o.4.extend_from_slice(&c.data);
                chunks_seen += 1;
            }
            Some(config_chunk::Chunk::NodeDelta(d)) => {
                if complete.is_some() || delta.is_some() {
                    return Err(proto("a second node delta, or one after the completion".into()));
                }
                delta = Some(d.clone());
            }
            Some(config_chunk::Chunk::Complete(c)) => {
                if complete.is_some() {
                    return Err(proto("two completion messages".into()));
                }
                complete = Some(*c);
            }
            None => return Err(proto("an empty stream item".into())),
        }
    }
    let complete = complete.ok_or_else(|| proto("the stream ended without its completion message".into()))?;
    let (vcluster, overlay_version, overlay_checksum, overlay_compressed, spec) = match overlay {
        Some((vc, version, checksum, raw_size, bytes)) => {
            if chunks_seen != expected_chunks {
                return Err(proto(format!("{chunks_seen} of {expected_chunks} overlay chunks arrived")));
            }
            let got = sha256_hex(&bytes);
            if got != checksum {
                return Err(Error::Checksum {
                    what: format!("overlay of {vc} version {version}"),
                    expected: checksum,
                    got,
                });
            }
            if raw_size as usize > MAX_OVERLAY_RAW {
                return Err(proto(format!("overlay announces {raw_size} bytes decompressed, over {MAX_OVERLAY_RAW}")));
            }
            let raw = zstd::bulk::decompress(&bytes, raw_size as usize)
                .map_err(|e| proto(format!("overlay of {vc} does not decompress: {e}")))?;
            let spec =
                VClusterSpec::decode(&raw[..]).map_err(|e| proto(format!("overlay of {vc} does not decode: {e}")))?;
            (vc, version, checksum, bytes, spec)
        }
        None => {
            let c = cached.filter(|c| c.overlay_version == complete.base_version).ok_or_else(|| {
                proto(format!("no overlay sent and no cached copy of version {}", complete.base_version))
            })?;
            (
                c.vcluster.clone(),
                c.overlay_version,
                c.overlay_checksum.clone(),
                c.overlay_compressed.clone(),
                c.overlay.clone(),
            )
        }
    };
    if overlay_version != complete.base_version {
        return Err(proto(format!("overlay version {overlay_version} but completion says {}", complete.base_version)));
    }
    let (node_version, node_checksum, node) = match delta {
        Some(d) => {
            let got = sha256_hex(&d.data);
            if got != d.checksum {
                return Err(Error::Checksum {
                    what: format!("node delta of {} version {}", d.node_id, d.version),
                    expected: d.checksum,
                    got,
                });
            }
            let body =
                NodeDeltaBody::decode(&d.data[..]).map_err(|e| proto(format!("node delta does not decode: {e}")))?;
            (d.version, d.checksum, body)
        }
        None => {
            let c = cached.filter(|c| c.node_version == complete.node_version).ok_or_else(|| {
                proto(format!("no node delta sent and no cached copy of version {}", complete.node_version))
            })?;
            (c.node_version, c.node_checksum.clone(), c.node.clone())
        }
    };
    if node_version != complete.node_version {
        return Err(proto(format!("node delta version {node_version} but completion says {}", complete.node_version)));
    }
    Ok(BootConfig {
        vcluster,
        overlay_version,
        overlay_checksum,
        overlay_compressed,
        overlay: spec,
        node_version,
        node_checksum,
        node,
        unchanged: complete.unchanged,
        endpoint: endpoint.to_string(),
    })
}

pub use pact_proto::sha256_hex;

/// Where the next attempt goes and how long to wait before it.
struct Rotation {
    rng: u64,
    next: usize,
    failures_in_round: usize,
    rounds: u32,
    backoff: Duration,
}

impl Rotation {
    fn new(n: usize, min: Duration) -> Rotation {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut r = Rotation {
            rng: (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32) | 1,
            next: 0,
            failures_in_round: 0,
            rounds: 0,
            backoff: min,
        };
        r.next = (r.random() % n.max(1) as u64) as usize;
        r
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn jitter(&mut self, up_to: Duration) -> Duration {
        let ms = up_to.as_millis().max(1) as u64;
        Duration::from_millis(self.random() % ms)
    }
}

pub struct JournalClient {
    cfg: Config,
    rot: Rotation,
    /// BUSY answers seen (the boot-storm benchmark and the logs report them).
    pub busy_retries: u64,
}

impl JournalClient {
    pub fn new(cfg: Config) -> JournalClient {
        let rot = Rotation::new(cfg.endpoints.len(), cfg.backoff_min);
        JournalClient { cfg, rot, busy_retries: 0 }
    }

    /// Makes the next attempt go to `endpoints[index]` (normally the start is random).
    pub fn prefer(&mut self, index: usize) {
        self.rot.next = index % self.cfg.endpoints.len().max(1);
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn connect(&self, endpoint: &str) -> Result<Client, Error> {
        let tls = match &self.cfg.identity {
            Some(i) => i.client_tls().map_err(|m| Error::Unreachable(format!("no certificate: {m}")))?,
            None => self.cfg.tls.clone(),
        };
        Ok(Client::connect(endpoint, tls, &self.cfg.token, self.cfg.timeout)?)
    }

    /// Moves to the next endpoint after a failure; sleeps (backoff with full jitter) after a
    /// whole round failed. Err when `max_rounds` is used up.
    fn failed(&mut self, e: Error) -> Result<(), Error> {
        if let (Some(en), Error::Remote(r)) = (&self.cfg.identity, &e) {
            if crate::enroll::refuses_certificate(r) {
                // Blocks until a journal signs a new certificate; then this is worth a retry.
                en.refused(&r.message)
                    .map_err(|m| Error::Unreachable(format!("{}; enrolling again: {m}", r.message)))?;
                return Ok(());
            }
        }
        if !e.retryable() {
            return Err(e);
        }
        let n = self.cfg.endpoints.len().max(1);
        self.rot.next = (self.rot.next + 1) % n;
        self.rot.failures_in_round += 1;
        if self.rot.failures_in_round >= n {
            self.rot.failures_in_round = 0;
            self.rot.rounds += 1;
            if self.cfg.max_rounds.is_some_and(|m| self.rot.rounds >= m) {
                return Err(Error::GaveUp { rounds: self.rot.rounds, last: Box::new(e) });
            }
            let wait = self.rot.jitter(self.rot.backoff);
            std::thread::sleep(wait);
            self.rot.backoff = (self.rot.backoff * 2).min(self.cfg.backoff_max);
        }
        Ok(())
    }

    fn succeeded(&mut self) {
        self.rot.failures_in_round = 0;
        self.rot.rounds = 0;
        self.rot.backoff = self.cfg.backoff_min;
    }

    /// The verified boot configuration, from whichever journal answers. With `cached`, only
    /// what changed since is transferred.
    pub fn boot(&mut self, cached: Option<&BootConfig>) -> Result<BootConfig, Error> {
        if self.cfg.endpoints.is_empty() {
            return Err(Error::Unreachable("no journal endpoints configured ([agent.journal] endpoints)".into()));
        }
        loop {
            let endpoint = self.cfg.endpoints[self.rot.next].clone();
            match self.boot_from(&endpoint, cached) {
                Ok(b) => {
                    self.succeeded();
                    return Ok(b);
                }
                Err(Error::Remote(r)) if r.code == ErrorCode::Busy => {
                    // Not a failure: the journal asked us to come back a little later.
                    self.busy_retries += 1;
                    let base = Duration::from_millis(u64::from(r.retry_after_ms.max(1)));
                    let wait = base + self.rot.jitter(base);
                    std::thread::sleep(wait);
                }
                Err(e) => self.failed(e)?,
            }
        }
    }

    /// One attempt against one journal.
    pub fn boot_from(&self, endpoint: &str, cached: Option<&BootConfig>) -> Result<BootConfig, Error> {
        let mut c = self.connect(endpoint)?;
        let req = BootConfigRequest {
            node_id: self.cfg.node_id.clone(),
            vcluster_id: self.cfg.vcluster.clone(),
            last_known_version: cached.map(|c| c.overlay_version),
            last_known_node_version: cached.map(|c| c.node_version),
        };
        let id = c.start_stream(Method::StreamBootConfig, &req)?;
        let mut items = Vec::new();
        while let Some(item) = c.next_item::<ConfigChunk>(id)? {
            items.push(item);
            if items.len() > MAX_OVERLAY_COMPRESSED / 1024 {
                return Err(Error::Protocol("boot stream with too many items".into()));
            }
        }
        assemble(&items, cached, endpoint)
    }

    /// Follows changes after `from_sequence`, failing over and resuming as needed.
    pub fn subscribe(&mut self, from_sequence: u64) -> Subscription<'_> {
        Subscription { client: self, conn: None, last: from_sequence, resumes: 0 }
    }
}

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Update(Box<ConfigUpdate>),
    /// The journal could not keep this node's stream complete: re-run the boot stream, then
    /// subscribe again from `resume_from`.
    Resync {
        reason: String,
        resume_from: u64,
    },
}

pub struct Subscription<'a> {
    client: &'a mut JournalClient,
    conn: Option<(Client, u32)>,
    last: u64,
    /// Times the subscription reconnected and resumed.
    pub resumes: u64,
}

impl Subscription<'_> {
    /// The last sequence seen; resuming from it neither repeats nor skips an update.
    pub fn last_sequence(&self) -> u64 {
        self.last
    }

    fn open(&mut self) -> Result<(), Error> {
        let endpoint = self.client.cfg.endpoints[self.client.rot.next].clone();
        let mut c = self.client.connect(&endpoint)?;
        c.set_read_timeout(Some(SUBSCRIPTION_READ_TIMEOUT))?;
        let req = SubscribeRequest {
            node_id: self.client.cfg.node_id.clone(),
            vcluster_id: self.client.cfg.vcluster.clone(),
            from_sequence: self.last,
        };
        let id = c.start_stream(Method::SubscribeConfigUpdates, &req)?;
        self.conn = Some((c, id));
        Ok(())
    }

    /// The next change (keepalives are consumed here). Blocks; reconnects to the next journal
    /// and resumes from the last sequence when a connection fails.
    pub fn next_event(&mut self) -> Result<Event, Error> {
        if self.client.cfg.endpoints.is_empty() {
            return Err(Error::Unreachable("no journal endpoints configured ([agent.journal] endpoints)".into()));
        }
        loop {
            if self.conn.is_none() {
                if let Err(e) = self.open() {
                    self.client.failed(e)?;
                    continue;
                }
            }
            let (c, id) = self.conn.as_mut().expect("connection opened above");
            let got = c.next_item::<ConfigUpdate>(*id);
            match got {
                Ok(Some(u)) => {
                    self.client.succeeded();
                    match u.update {
                        None => self.last = self.last.max(u.sequence), // keepalive
                        Some(config_update::Update::Resync(r)) => {
                            self.conn = None;
                            self.last = r.resume_from;
                            return Ok(Event::Resync { reason: r.reason, resume_from: r.resume_from });
                        }
                        Some(_) => {
                            if u.sequence < self.last {
                                // Already seen before a reconnect: the journal replays from
                                // `last`, and only entries after it, so this is a bug there.
                                return Err(Error::Protocol(format!(
                                    "update for sequence {} after {} was already seen",
                                    u.sequence, self.last
                                )));
                            }
                            self.last = u.sequence;
                            return Ok(Event::Update(Box::new(u)));
                        }
                    }
                }
                Ok(None) => {
                    // The journal ended the stream (shutting down): resume elsewhere.
                    self.conn = None;
                    self.resumes += 1;
                    self.client.failed(Error::Unreachable("the journal ended the subscription".into()))?;
                }
                Err(e) => {
                    self.conn = None;
                    self.resumes += 1;
                    self.client.failed(e.into())?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_proto::stream::{ConfigComplete, NodeDelta, OverlayChunk};

    fn stream(spec: &VClusterSpec, corrupt: Option<usize>) -> Vec<ConfigChunk> {
        let blob = zstd::bulk::compress(&spec.encode_to_vec(), 3).unwrap();
        let checksum = sha256_hex(&blob);
        let pieces: Vec<&[u8]> = blob.chunks(7).collect();
        let mut items: Vec<ConfigChunk> = pieces
            .iter()
            .enumerate()
            .map(|(i, d)| ConfigChunk {
                chunk: Some(config_chunk::Chunk::BaseOverlay(OverlayChunk {
                    version: 5,
                    vcluster_id: "ml".into(),
                    data: d.to_vec(),
                    chunk_index: i as u32,
                    total_chunks: pieces.len() as u32,
                    checksum: checksum.clone(),
                    compressed_size: blob.len() as u32,
                    raw_size: spec.encoded_len() as u32,
                })),
            })
            .collect();
        if let Some(i) = corrupt {
            if let Some(config_chunk::Chunk::BaseOverlay(o)) = &mut items[i].chunk {
                o.data[0] ^= 1;
            }
        }
        let body = NodeDeltaBody { assigned_vcluster: "ml".into(), ..Default::default() }.encode_to_vec();
        items.push(ConfigChunk {
            chunk: Some(config_chunk::Chunk::NodeDelta(NodeDelta {
                node_id: "n1".into(),
                version: 9,
                checksum: sha256_hex(&body),
                data: body,
            })),
        });
        items.push(ConfigChunk {
            chunk: Some(config_chunk::Chunk::Complete(ConfigComplete {
                base_version: 5,
                node_version: 9,
                timestamp: None,
                unchanged: false,
            })),
        });
        items
    }

    fn spec() -> VClusterSpec {
        let mut s = VClusterSpec { vcluster_id: "ml".into(), ..Default::default() };
        for i in 0..50 {
            s.sysctl.insert(format!("k{i}"), format!("v{i}"));
        }
        s
    }

    #[test]
    fn a_good_stream_assembles() {
        let b = assemble(&stream(&spec(), None), None, "j1").unwrap();
        assert_eq!(b.overlay, spec());
        assert_eq!((b.overlay_version, b.node_version, b.node.assigned_vcluster.as_str()), (5, 9, "ml"));
        // Nothing resent: the cached copy is reused when the versions match.
        let items = vec![ConfigChunk {
            chunk: Some(config_chunk::Chunk::Complete(ConfigComplete {
                base_version: 5,
                node_version: 9,
                timestamp: None,
                unchanged: true,
            })),
        }];
        let again = assemble(&items, Some(&b), "j2").unwrap();
        assert_eq!(again.overlay, b.overlay);
        assert!(again.unchanged);
        // ...but not when they do not.
        assert!(matches!(assemble(&items, None, "j2"), Err(Error::Protocol(_))));
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let n = stream(&spec(), None).len() - 2;
        for i in 0..n {
            match assemble(&stream(&spec(), Some(i)), None, "j1") {
                Err(Error::Checksum { what, .. }) => assert!(what.contains("overlay of ml"), "{what}"),
                other => panic!("chunk {i} corrupted: {other:?}"),
            }
        }
        let mut items = stream(&spec(), None);
        if let Some(config_chunk::Chunk::NodeDelta(d)) = &mut items[n].chunk {
            d.data.push(0);
        }
        assert!(matches!(assemble(&items, None, "j1"), Err(Error::Checksum { .. })));
    }

    #[test]
    fn missing_reordered_or_trailing_parts_are_refused() {
        let good = stream(&spec(), None);
        let n = good.len() - 2;
        assert!(n > 2);
        let mut missing = good.clone();
        missing.remove(1);
        assert!(matches!(assemble(&missing, None, "j"), Err(Error::Protocol(_))));
        let mut swapped = good.clone();
        swapped.swap(0, 1);
        assert!(matches!(assemble(&swapped, None, "j"), Err(Error::Protocol(_))));
        let mut no_end = good.clone();
        no_end.pop();
        assert!(matches!(assemble(&no_end, None, "j"), Err(Error::Protocol(_))));
        let mut late = good.clone();
        late.push(good[0].clone());
        assert!(matches!(assemble(&late, None, "j"), Err(Error::Protocol(_))));
    }
}
