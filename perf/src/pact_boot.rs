//! One simulated node's boot against the journal: a new TLS connection, the pact hello, one
//! StreamBootConfig request, the whole stream read and checked (overlay chunks in order and
//! their SHA-256, the node delta's SHA-256, exactly one ConfigComplete, then EndOfStream).
//! A Busy answer is waited out (`retry_after_ms`) and the boot retried on a new connection to
//! the next journal in the list; anything else fails the boot.

use crate::boot_payload::{node_name, VCLUSTER};
use crate::storm::{connect, describe, sha256_hex, Boot, Tls};
use pact_proto::frame::{self, read_frame, write_frame, FrameIoError, HANDSHAKE_LEN, MAX_FRAME_BODY};
use pact_proto::stream::{config_chunk::Chunk, BootConfigRequest, ConfigChunk};
use pact_proto::wire::{ErrorBody, Request};
use pact_proto::{ErrorCode, Frame, FrameKind, Method};
use prost::Message;
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The overlay as the first successful boot received it.
#[derive(Clone)]
pub struct Overlay {
    /// The compressed overlay, reassembled.
    pub bytes: Vec<u8>,
    pub checksum: String,
    pub version: u64,
    pub chunks: u32,
    pub raw_size: u32,
}

/// What the boots leave behind for the report and for the HTTPS baseline.
pub struct Capture {
    pub overlay: OnceLock<Overlay>,
    /// Boots whose overlay checksum differed from the first one's (should stay 0).
    pub overlay_mismatch: AtomicU64,
    /// Each node's delta bytes (only when `keep_deltas`).
    pub deltas: Mutex<Vec<Option<Vec<u8>>>>,
    pub keep_deltas: bool,
    pub delta_min: AtomicU64,
    pub delta_max: AtomicU64,
    pub delta_sum: AtomicU64,
    pub deltas_seen: AtomicU64,
    /// Negotiated TLS version, cipher suite and key exchange of the first boot.
    pub tls: OnceLock<String>,
}

impl Capture {
    pub fn new(nodes: usize, keep_deltas: bool) -> Capture {
        Capture {
            overlay: OnceLock::new(),
            overlay_mismatch: AtomicU64::new(0),
            deltas: Mutex::new(if keep_deltas { vec![None; nodes] } else { Vec::new() }),
            keep_deltas,
            delta_min: AtomicU64::new(u64::MAX),
            delta_max: AtomicU64::new(0),
            delta_sum: AtomicU64::new(0),
            deltas_seen: AtomicU64::new(0),
            tls: OnceLock::new(),
        }
    }

    pub fn delta_mean(&self) -> f64 {
        let n = self.deltas_seen.load(Ordering::Relaxed);
        if n == 0 {
            0.0
        } else {
            self.delta_sum.load(Ordering::Relaxed) as f64 / n as f64
        }
    }
}

pub struct PactTarget {
    pub endpoints: Vec<(SocketAddr, ServerName<'static>)>,
    pub tls: Arc<rustls::ClientConfig>,
    pub token: String,
    pub timeout: Duration,
    /// A boot that keeps getting Busy gives up after this long.
    pub busy_limit: Duration,
    pub capture: Capture,
}

enum AttemptError {
    Busy(u32),
    Fail(String),
}

fn fail(what: &str, e: impl std::fmt::Display) -> AttemptError {
    AttemptError::Fail(format!("{what}: {e}"))
}

fn frame_err(what: &str, e: FrameIoError) -> AttemptError {
    match e {
        FrameIoError::Closed => AttemptError::Fail(format!("{what}: the journal closed the connection")),
        other => fail(what, other),
    }
}

/// What a boot stream must look like, item by item. Pure: the unit tests feed it items.
#[derive(Default)]
pub struct StreamCheck {
    pub overlay: Vec<u8>,
    pub checksum: String,
    pub version: u64,
    pub total_chunks: u32,
    pub chunks: u32,
    pub compressed_size: u32,
    pub raw_size: u32,
    pub delta: Option<Vec<u8>>,
    pub complete: bool,
}

impl StreamCheck {
    pub fn item(&mut self, node: &str, c: ConfigChunk) -> Result<(), String> {
        if self.complete {
            return Err("a stream item after ConfigComplete".into());
        }
        match c.chunk {
            Some(Chunk::BaseOverlay(o)) => {
                if self.delta.is_some() {
                    return Err("an overlay chunk after the node delta".into());
                }
                if o.vcluster_id != VCLUSTER {
                    return Err(format!("overlay chunk for vCluster {:?}", o.vcluster_id));
                }
                if self.chunks == 0 {
                    if o.total_chunks == 0 {
                        return Err("overlay chunk with total_chunks 0".into());
                    }
                    self.total_chunks = o.total_chunks;
                    self.checksum = o.checksum.clone();
                    self.version = o.version;
                    self.compressed_size = o.compressed_size;
                    self.raw_size = o.raw_size;
                    self.overlay.reserve(o.compressed_size as usize);
                } else if o.total_chunks != self.total_chunks
                    || o.checksum != self.checksum
                    || o.version != self.version
                {
                    return Err("overlay chunks disagree on total_chunks, checksum or version".into());
                }
                if o.chunk_index != self.chunks {
                    return Err(format!("overlay chunk {} where {} was due", o.chunk_index, self.chunks));
                }
                if self.chunks >= self.total_chunks {
                    return Err("more overlay chunks than total_chunks".into());
                }
                self.overlay.extend_from_slice(&o.data);
                self.chunks += 1;
            }
            Some(Chunk::NodeDelta(d)) => {
                if self.delta.is_some() {
                    return Err("a second node delta".into());
                }
                if d.node_id != node {
                    return Err(format!("node delta for {:?}", d.node_id));
                }
                if sha256_hex(&d.data) != d.checksum.to_ascii_lowercase() {
                    return Err("node delta checksum mismatch".into());
                }
                self.delta = Some(d.data);
            }
            Some(Chunk::Complete(_)) => {
                if self.chunks != self.total_chunks || self.chunks == 0 {
                    return Err(format!(
                        "ConfigComplete after {} of {} overlay chunks",
                        self.chunks, self.total_chunks
                    ));
                }
                if self.delta.is_none() {
                    return Err("ConfigComplete without a node delta".into());
                }
                self.complete = true;
            }
            None => return Err("an empty ConfigChunk".into()),
        }
        Ok(())
    }

    /// After the stream: the reassembled overlay against its announced size and checksum.
    pub fn finish(&self) -> Result<(), String> {
        if !self.complete {
            return Err("EndOfStream without ConfigComplete".into());
        }
        if self.overlay.len() != self.compressed_size as usize {
            return Err(format!(
                "overlay is {} bytes, compressed_size says {}",
                self.overlay.len(),
                self.compressed_size
            ));
        }
        if sha256_hex(&self.overlay) != self.checksum.to_ascii_lowercase() {
            return Err("overlay checksum mismatch".into());
        }
        Ok(())
    }
}

/// The request frame of node `i` (hello not included).
pub fn request_frame(token: &str, i: usize, request_id: u32) -> Frame {
    let body = BootConfigRequest {
        node_id: node_name(i),
        vcluster_id: VCLUSTER.into(),
        last_known_version: None,
        last_known_node_version: None,
    };
    let req = Request { bearer_token: token.to_string(), body: body.encode_to_vec(), linearizable: false };
    Frame::new(FrameKind::Request, Method::StreamBootConfig as u16, request_id, req.encode_to_vec())
}

impl PactTarget {
    /// One whole boot of node `i`, Busy retries included, starting on journal `i mod n`.
    pub fn boot(&self, i: usize) -> Result<Boot, String> {
        self.boot_at(i, i % self.endpoints.len())
    }

    /// One whole boot of node `i`, starting on journal `ep`.
    pub fn boot_at(&self, i: usize, mut ep: usize) -> Result<Boot, String> {
        let first = Instant::now();
        let mut retries = 0u32;
        let mut busy_wait = Duration::ZERO;
        loop {
            let t0 = Instant::now();
            match self.attempt(i, ep, t0) {
                Ok(mut b) => {
                    b.total = t0.duration_since(first) + b.done;
                    b.retries = retries;
                    b.busy_wait = busy_wait;
                    return Ok(b);
                }
                Err(AttemptError::Busy(ms)) => {
                    retries += 1;
                    if first.elapsed() > self.busy_limit {
                        return Err(format!("gave up after {retries} Busy answers in {:?}", self.busy_limit));
                    }
                    let wait = Duration::from_millis(u64::from(ms.max(1)));
                    std::thread::sleep(wait);
                    busy_wait += wait;
                    ep = (ep + 1) % self.endpoints.len();
                }
                Err(AttemptError::Fail(m)) => return Err(m),
            }
        }
    }

    fn attempt(&self, i: usize, ep: usize, t0: Instant) -> Result<Boot, AttemptError> {
        let (addr, name) = &self.endpoints[ep];
        let (mut s, phases) = connect(*addr, name, &self.tls, self.timeout, t0).map_err(AttemptError::Fail)?;
        if self.capture.tls.get().is_none() {
            let _ = self.capture.tls.set(describe(&s.conn));
        }
        s.write_all(&frame::client_hello()).and_then(|_| s.flush()).map_err(|e| fail("hello", e))?;
        let mut answer = [0u8; HANDSHAKE_LEN];
        s.read_exact(&mut answer).map_err(|e| fail("hello answer", e))?;
        frame::check_server_answer(&answer).map_err(AttemptError::Fail)?;
        let hello = t0.elapsed();
        let id = 1;
        write_frame(&mut s, &request_frame(&self.token, i, id)).map_err(|e| frame_err("request", e))?;
        s.flush().map_err(|e| fail("request", e))?;
        let request_sent = t0.elapsed();
        let node = node_name(i);
        let mut check = StreamCheck::default();
        let mut first_byte = None;
        let mut done = Duration::ZERO;
        loop {
            let f = read_frame(&mut s, MAX_FRAME_BODY).map_err(|e| frame_err("stream", e))?;
            first_byte.get_or_insert_with(|| t0.elapsed());
            if f.request_id != id {
                return Err(fail("stream", format!("a frame for request {}", f.request_id)));
            }
            match f.kind {
                FrameKind::StreamItem => {
                    let c = ConfigChunk::decode(&f.body[..]).map_err(|e| fail("ConfigChunk", e))?;
                    check.item(&node, c).map_err(AttemptError::Fail)?;
                    if check.complete {
                        done = t0.elapsed();
                    }
                }
                FrameKind::EndOfStream => break,
                FrameKind::Error => {
                    let b = ErrorBody::decode(&f.body[..]).map_err(|e| fail("error frame", e))?;
                    let code = ErrorCode::from_u32(b.code);
                    if code == ErrorCode::Busy {
                        return Err(AttemptError::Busy(b.retry_after_ms));
                    }
                    return Err(AttemptError::Fail(format!("{code}: {}", b.message)));
                }
                other => return Err(fail("stream", format!("unexpected {other:?} frame"))),
            }
        }
        check.finish().map_err(AttemptError::Fail)?;
        let wire_in = s.sock.read;
        let wire_out = s.sock.written;
        close(&mut s);
        let delta = check.delta.take().unwrap_or_default();
        let payload = (check.overlay.len() + delta.len()) as u64;
        self.keep(i, check, delta);
        Ok(Boot {
            total: Duration::ZERO,
            phases,
            hello,
            request_sent,
            first_byte: first_byte.unwrap_or_default(),
            done,
            wire_in,
            wire_out,
            payload,
            retries: 0,
            busy_wait: Duration::ZERO,
        })
    }

    fn keep(&self, i: usize, check: StreamCheck, delta: Vec<u8>) {
        let c = &self.capture;
        let n = delta.len() as u64;
        c.delta_min.fetch_min(n, Ordering::Relaxed);
        c.delta_max.fetch_max(n, Ordering::Relaxed);
        c.delta_sum.fetch_add(n, Ordering::Relaxed);
        c.deltas_seen.fetch_add(1, Ordering::Relaxed);
        if c.keep_deltas {
            if let Ok(mut d) = c.deltas.lock() {
                if let Some(slot) = d.get_mut(i) {
                    *slot = Some(delta);
                }
            }
        }
        match c.overlay.get() {
            Some(o) => {
                if o.checksum != check.checksum {
                    c.overlay_mismatch.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                let _ = c.overlay.set(Overlay {
                    checksum: check.checksum,
                    version: check.version,
                    chunks: check.total_chunks,
                    raw_size: check.raw_size,
                    bytes: check.overlay,
                });
            }
        }
    }
}

/// Ends the connection the way a node would: close_notify, then the socket closes on drop.
pub fn close(s: &mut Tls) {
    s.conn.send_close_notify();
    let _ = s.conn.complete_io(&mut s.sock);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_proto::stream::{ConfigComplete, NodeDelta, OverlayChunk};

    fn chunk(data: &[u8], index: u32, total: u32, whole: &[u8]) -> ConfigChunk {
        ConfigChunk {
            chunk: Some(Chunk::BaseOverlay(OverlayChunk {
                version: 9,
                vcluster_id: VCLUSTER.into(),
                data: data.to_vec(),
                chunk_index: index,
                total_chunks: total,
                checksum: sha256_hex(whole),
                compressed_size: whole.len() as u32,
                raw_size: 1000,
            })),
        }
    }

    fn delta(node: &str, data: &[u8], checksum: Option<&str>) -> ConfigChunk {
        ConfigChunk {
            chunk: Some(Chunk::NodeDelta(NodeDelta {
                node_id: node.into(),
                version: 3,
                data: data.to_vec(),
                checksum: checksum.map(str::to_string).unwrap_or_else(|| sha256_hex(data)),
            })),
        }
    }

    fn complete() -> ConfigChunk {
        ConfigChunk { chunk: Some(Chunk::Complete(ConfigComplete::default())) }
    }

    #[test]
    fn a_good_stream_passes() {
        let whole = b"abcdefghij";
        let mut c = StreamCheck::default();
        c.item("node-00001", chunk(b"abcd", 0, 2, whole)).unwrap();
        c.item("node-00001", chunk(b"efghij", 1, 2, whole)).unwrap();
        c.item("node-00001", delta("node-00001", b"delta", None)).unwrap();
        c.item("node-00001", complete()).unwrap();
        c.finish().unwrap();
        assert_eq!(c.overlay, whole);
        assert_eq!(c.delta.as_deref(), Some(&b"delta"[..]));
    }

    #[test]
    fn bad_streams_fail() {
        let whole = b"abcdefghij";
        // out of order
        let mut c = StreamCheck::default();
        assert!(c.item("n", chunk(b"efghij", 1, 2, whole)).is_err());
        // a corrupted chunk
        let mut c = StreamCheck::default();
        c.item("n", chunk(b"abcX", 0, 2, whole)).unwrap();
        c.item("n", chunk(b"efghij", 1, 2, whole)).unwrap();
        c.item("n", delta("n", b"d", None)).unwrap();
        c.item("n", complete()).unwrap();
        assert!(c.finish().unwrap_err().contains("checksum"));
        // a delta for someone else, a bad delta checksum
        let mut c = StreamCheck::default();
        c.item("n", chunk(whole, 0, 1, whole)).unwrap();
        assert!(c.item("n", delta("m", b"d", None)).is_err());
        assert!(c.item("n", delta("n", b"d", Some("00"))).is_err());
        // complete before the overlay is whole, and without a delta
        let mut c = StreamCheck::default();
        c.item("n", chunk(b"abcd", 0, 2, whole)).unwrap();
        assert!(c.item("n", complete()).is_err());
        let mut c = StreamCheck::default();
        c.item("n", chunk(whole, 0, 1, whole)).unwrap();
        assert!(c.item("n", complete()).is_err());
        // no ConfigComplete at all
        let mut c = StreamCheck::default();
        c.item("n", chunk(whole, 0, 1, whole)).unwrap();
        c.item("n", delta("n", b"d", None)).unwrap();
        assert!(c.finish().is_err());
    }
}
