//! The machine's local ceiling for a boot's TLS work, measured in memory on one core.
//!
//! One thread runs, per boot: a new rustls `ServerConnection` (the journal's own server
//! config: its certificate and key, the same provider and defaults) and a `ClientConnection`
//! (a fresh node's config: no resumption), wired through memory buffers: the full TLS 1.3
//! handshake, then a request of `request_bytes` client→server (what the pact hello plus a
//! StreamBootConfig request weigh), then the overlay and the node delta server→client, then
//! close_notify. No sockets, no syscalls, no framing, no storage.
//!
//! **Definition**: server-side cost per boot = wall time spent inside the server's rustls
//! calls (`ServerConnection::new`, `read_tls`, `process_new_packets`, reading the request,
//! writing the plaintext, `write_tls`), summed over a boot, on one thread. Boots run in
//! batches of 100; a batch's times are scaled by the share of its wall time the thread was
//! on a CPU (`/proc/thread-self/schedstat`), so preemption by other work does not count, and
//! the median batch's mean is the result. Client-side cost is the same for the client's
//! calls. The ceiling for a server given K cores is K / server-side cost per boot, with K
//! capped at the machine's CPUs.

use rustls::{ClientConnection, ServerConnection};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Ceiling {
    pub boots: u64,
    pub batches: u64,
    /// The median batch's mean.
    pub server_us_per_boot: f64,
    pub server_us_min_batch: f64,
    pub server_us_max_batch: f64,
    pub client_us_per_boot: f64,
    pub handshake_server_us: f64,
    pub transfer_server_us: f64,
    pub tls: String,
}

/// Moves everything `from` wants to send into `to`. Returns the bytes moved.
fn pump_client_to_server(
    c: &mut ClientConnection,
    s: &mut ServerConnection,
    buf: &mut Vec<u8>,
    ct: &mut Duration,
    st: &mut Duration,
) -> Result<usize, String> {
    buf.clear();
    let t = Instant::now();
    while c.wants_write() {
        c.write_tls(buf).map_err(|e| format!("client write_tls: {e}"))?;
    }
    *ct += t.elapsed();
    if buf.is_empty() {
        return Ok(0);
    }
    let t = Instant::now();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        s.read_tls(&mut rd).map_err(|e| format!("server read_tls: {e}"))?;
        s.process_new_packets().map_err(|e| format!("server: {e}"))?;
    }
    *st += t.elapsed();
    Ok(buf.len())
}

/// Moves everything the server wants to send into the client, reading the client's
/// plaintext into `sink` as it goes (rustls bounds the plaintext it buffers).
fn pump_server_to_client(
    s: &mut ServerConnection,
    c: &mut ClientConnection,
    buf: &mut Vec<u8>,
    sink: &mut Vec<u8>,
    st: &mut Duration,
    ct: &mut Duration,
) -> Result<usize, String> {
    buf.clear();
    let t = Instant::now();
    while s.wants_write() {
        s.write_tls(buf).map_err(|e| format!("server write_tls: {e}"))?;
    }
    *st += t.elapsed();
    if buf.is_empty() {
        return Ok(0);
    }
    let t = Instant::now();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        c.read_tls(&mut rd).map_err(|e| format!("client read_tls: {e}"))?;
        c.process_new_packets().map_err(|e| format!("client: {e}"))?;
        drain_client(c, sink)?;
    }
    *ct += t.elapsed();
    Ok(buf.len())
}

/// Reads whatever plaintext the client has, into `sink`.
fn drain_client(c: &mut ClientConnection, sink: &mut Vec<u8>) -> Result<(), String> {
    let mut tmp = [0u8; 16 * 1024];
    loop {
        match c.reader().read(&mut tmp) {
            Ok(0) => return Ok(()),
            Ok(n) => sink.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("client read: {e}")),
        }
    }
}

/// The server sends `data`: as much as rustls takes at a time, then out to the client.
fn send(
    s: &mut ServerConnection,
    c: &mut ClientConnection,
    data: &[u8],
    buf: &mut Vec<u8>,
    sink: &mut Vec<u8>,
    st: &mut Duration,
    ct: &mut Duration,
) -> Result<(), String> {
    let mut sent = 0;
    while sent < data.len() {
        let t = Instant::now();
        let n = s.writer().write(&data[sent..]).map_err(|e| format!("server write: {e}"))?;
        *st += t.elapsed();
        sent += n;
        pump_server_to_client(s, c, buf, sink, st, ct)?;
        if n == 0 && !s.wants_write() {
            return Err("the server connection takes no more plaintext".into());
        }
    }
    Ok(())
}

pub struct OneBoot {
    pub server: Duration,
    pub client: Duration,
    pub server_handshake: Duration,
}

/// One boot in memory; checks the client got exactly `overlay` then `delta`.
pub fn one_boot(
    server_cfg: &Arc<rustls::ServerConfig>,
    client_cfg: &Arc<rustls::ClientConfig>,
    name: &rustls::pki_types::ServerName<'static>,
    request: &[u8],
    overlay: &[u8],
    delta: &[u8],
    buf: &mut Vec<u8>,
) -> Result<OneBoot, String> {
    let (mut st, mut ct) = (Duration::ZERO, Duration::ZERO);
    let t = Instant::now();
    let mut s = ServerConnection::new(server_cfg.clone()).map_err(|e| format!("server: {e}"))?;
    st += t.elapsed();
    let t = Instant::now();
    let mut c = ClientConnection::new(client_cfg.clone(), name.clone()).map_err(|e| format!("client: {e}"))?;
    ct += t.elapsed();
    let mut plain = Vec::with_capacity(overlay.len() + delta.len());
    let mut rounds = 0;
    while c.is_handshaking() || s.is_handshaking() {
        let a = pump_client_to_server(&mut c, &mut s, buf, &mut ct, &mut st)?;
        let b = pump_server_to_client(&mut s, &mut c, buf, &mut plain, &mut st, &mut ct)?;
        rounds += 1;
        if (a == 0 && b == 0) || rounds > 20 {
            return Err("the in-memory handshake stalled".into());
        }
    }
    let server_handshake = st;
    // The request.
    let t = Instant::now();
    c.writer().write_all(request).map_err(|e| e.to_string())?;
    ct += t.elapsed();
    pump_client_to_server(&mut c, &mut s, buf, &mut ct, &mut st)?;
    let t = Instant::now();
    let mut got = vec![0u8; request.len()];
    s.reader().read_exact(&mut got).map_err(|e| format!("server read: {e}"))?;
    st += t.elapsed();
    send(&mut s, &mut c, overlay, buf, &mut plain, &mut st, &mut ct)?;
    send(&mut s, &mut c, delta, buf, &mut plain, &mut st, &mut ct)?;
    let t = Instant::now();
    s.send_close_notify();
    st += t.elapsed();
    pump_server_to_client(&mut s, &mut c, buf, &mut plain, &mut st, &mut ct)?;
    if plain.len() != overlay.len() + delta.len()
        || plain[..overlay.len()] != *overlay
        || plain[overlay.len()..] != *delta
    {
        return Err(format!("the client got {} bytes, not the {} sent", plain.len(), overlay.len() + delta.len()));
    }
    Ok(OneBoot { server: st, client: ct, server_handshake })
}

/// Runs boots for about `seconds` (at least 50) on this thread, delta `i` for boot `i`.
pub fn measure(
    server_cfg: &Arc<rustls::ServerConfig>,
    client_cfg: &Arc<rustls::ClientConfig>,
    request_bytes: usize,
    overlay: &[u8],
    deltas: &[Vec<u8>],
    seconds: f64,
) -> Result<Ceiling, String> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?.to_owned();
    let request = vec![0x50u8; request_bytes];
    let mut buf = Vec::with_capacity(overlay.len() + 64 * 1024);
    // Warm-up (allocator, caches, lazily built tables).
    for i in 0..10 {
        one_boot(server_cfg, client_cfg, &name, &request, overlay, &deltas[i % deltas.len()], &mut buf)?;
    }
    let tls = {
        let mut s = ServerConnection::new(server_cfg.clone()).map_err(|e| e.to_string())?;
        let mut c = ClientConnection::new(client_cfg.clone(), name.clone()).map_err(|e| e.to_string())?;
        let (mut a, mut b) = (Duration::ZERO, Duration::ZERO);
        let mut sink = Vec::new();
        while c.is_handshaking() || s.is_handshaking() {
            pump_client_to_server(&mut c, &mut s, &mut buf, &mut a, &mut b)?;
            pump_server_to_client(&mut s, &mut c, &mut buf, &mut sink, &mut a, &mut b)?;
        }
        crate::storm::describe(&c)
    };
    // Batches of BATCH boots; each batch's times are scaled by the share of its wall time the
    // thread was actually on a CPU (other work on the machine preempts it), and the median
    // batch is reported.
    let mut batches: Vec<(f64, f64, f64)> = Vec::new();
    let start = Instant::now();
    let mut n = 0u64;
    while batches.len() < MIN_BATCHES || start.elapsed().as_secs_f64() < seconds {
        let (mut server, mut client, mut hs) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let on_cpu0 = on_cpu_ns();
        let t = Instant::now();
        for _ in 0..BATCH {
            let d = &deltas[n as usize % deltas.len()];
            let b = one_boot(server_cfg, client_cfg, &name, &request, overlay, d, &mut buf)?;
            server += b.server;
            client += b.client;
            hs += b.server_handshake;
            n += 1;
        }
        let wall = t.elapsed().as_nanos() as f64;
        let scale = match (on_cpu0, on_cpu_ns()) {
            (Some(a), Some(b)) if wall > 0.0 && b > a => ((b - a) as f64 / wall).min(1.0),
            _ => 1.0,
        };
        let per = |d: Duration| d.as_secs_f64() * 1e6 * scale / BATCH as f64;
        batches.push((per(server), per(client), per(hs)));
    }
    batches.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (server, client, hs) = batches[batches.len() / 2];
    Ok(Ceiling {
        boots: n,
        batches: batches.len() as u64,
        server_us_per_boot: server,
        server_us_min_batch: batches[0].0,
        server_us_max_batch: batches[batches.len() - 1].0,
        client_us_per_boot: client,
        handshake_server_us: hs,
        transfer_server_us: server - hs,
        tls,
    })
}

/// Boots per measured batch, and the fewest batches a measurement takes.
const BATCH: u64 = 100;
const MIN_BATCHES: usize = 5;

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`, first field).
fn on_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert =
            CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca_cert, &ca_key).unwrap();
        let provider = pact_proto::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca_cert.der().to_vec())).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), crate::storm::fresh_node_config(&Arc::new(client)))
    }

    #[test]
    fn an_in_memory_boot_delivers_every_byte() {
        let (s, c) = configs();
        let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
        let overlay: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut buf = Vec::new();
        for delta in [vec![1u8; 1000], Vec::new()] {
            let b = one_boot(&s, &c, &name, &[9u8; 400], &overlay, &delta, &mut buf).unwrap();
            assert!(b.server >= b.server_handshake);
        }
        let m = measure(&s, &c, 400, &overlay[..1000], &[vec![2u8; 10]], 0.0).unwrap();
        assert_eq!((m.boots, m.batches), (BATCH * MIN_BATCHES as u64, MIN_BATCHES as u64));
        assert!(m.server_us_min_batch <= m.server_us_per_boot && m.server_us_per_boot <= m.server_us_max_batch);
        assert!(m.tls.contains("TLSv1_3"), "{}", m.tls);
    }
}
