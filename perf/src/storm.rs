//! The boot-storm client side, shared by pact and the HTTPS baseline: N simulated nodes, C in
//! flight at once, each on its own new TCP + TLS connection.
//!
//! One std thread per in-flight node, blocking rustls (no async runtime): with C = 1000 that
//! is 1000 threads with 256 KiB stacks. Measured on a 2-CPU machine, the client's CPU per boot
//! does not grow with the thread count (about 0.47-0.50 CPU s per 1000 boots at C = 200 and at
//! C = 1000, of which about 0.18-0.24 is the client's own TLS work measured in memory), so a
//! glommio/futures-rustls client would save little; the client's CPU time is reported next to
//! the server's so its share of the machine stays visible.

use crate::commit::Messages;
use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Stack of each in-flight node's thread.
const STACK: usize = 256 * 1024;
/// Histogram range: 1 µs .. 10 min.
const HIST_MAX_US: u64 = 600_000_000;

/// A TCP stream that counts the bytes it reads and writes (TLS records included).
pub struct Counted {
    pub tcp: TcpStream,
    pub read: u64,
    pub written: u64,
}

impl Read for Counted {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let n = self.tcp.read(b)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.tcp.write(b)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

pub type Tls = StreamOwned<ClientConnection, Counted>;

/// Times of one connection, from the start of its TCP connect.
#[derive(Clone, Copy, Default)]
pub struct Phases {
    /// TCP connected.
    pub tcp: Duration,
    /// The client's side of the TLS handshake is done (it has sent Finished).
    pub tls: Duration,
}

/// TCP connect and the TLS handshake, with timeouts.
pub fn connect(
    addr: SocketAddr,
    name: &ServerName<'static>,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    t0: Instant,
) -> Result<(Tls, Phases), String> {
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let tcp_done = t0.elapsed();
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(tls.clone(), name.clone()).map_err(|e| format!("TLS: {e}"))?;
    let mut s = StreamOwned::new(conn, Counted { tcp, read: 0, written: 0 });
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| format!("TLS handshake: {e}"))?;
    }
    Ok((s, Phases { tcp: tcp_done, tls: t0.elapsed() }))
}

/// The negotiated TLS parameters of a connection, for the report.
pub fn describe(c: &ClientConnection) -> String {
    format!(
        "{:?}, {:?}, {:?}",
        c.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
        c.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default(),
        c.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())).unwrap_or_default()
    )
    .replace('"', "")
}

/// A client config for simulated nodes: a fresh node has no TLS session to resume, so
/// resumption is off and every connection is a full handshake.
pub fn fresh_node_config(base: &Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut c = (**base).clone();
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// What one successful boot saw.
#[derive(Clone, Copy, Default)]
pub struct Boot {
    /// From the first attempt's connect start to the completion (busy waits included).
    pub total: Duration,
    /// Of the successful attempt, from its connect start.
    pub phases: Phases,
    /// The protocol handshake after TLS answered (pact's 8-byte hello; zero for HTTP).
    pub hello: Duration,
    /// The request was sent (from connect start).
    pub request_sent: Duration,
    /// The first response frame / response head arrived.
    pub first_byte: Duration,
    /// Completion: ConfigComplete / the end of the second response body.
    pub done: Duration,
    /// TLS record bytes received / sent on the successful attempt.
    pub wire_in: u64,
    pub wire_out: u64,
    /// Overlay + delta bytes (the payload itself).
    pub payload: u64,
    /// Busy answers before the successful attempt, and how long they made it wait.
    pub retries: u32,
    pub busy_wait: Duration,
}

/// The merged outcome of a storm.
pub struct Storm {
    pub boots: usize,
    pub ok: u64,
    pub failed: u64,
    pub retries: u64,
    pub busy_wait: Duration,
    pub seconds: f64,
    pub total: Histogram<u64>,
    pub to_tls: Histogram<u64>,
    pub after_tls: Histogram<u64>,
    pub sum_total_us: f64,
    pub sum_tcp_us: f64,
    pub sum_tls_us: f64,
    pub sum_hello_us: f64,
    pub sum_request_us: f64,
    pub sum_done_us: f64,
    pub sum_first_byte_us: f64,
    pub wire_in: u64,
    pub wire_out: u64,
    pub payload: u64,
    pub failures: Messages,
    /// Our own (client) CPU seconds during the storm.
    pub client_cpu: f64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant, valid histogram bounds")
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, HIST_MAX_US)
}

impl Storm {
    fn new(boots: usize) -> Storm {
        Storm {
            boots,
            ok: 0,
            failed: 0,
            retries: 0,
            busy_wait: Duration::ZERO,
            seconds: 0.0,
            total: hist(),
            to_tls: hist(),
            after_tls: hist(),
            sum_total_us: 0.0,
            sum_tcp_us: 0.0,
            sum_tls_us: 0.0,
            sum_hello_us: 0.0,
            sum_request_us: 0.0,
            sum_done_us: 0.0,
            sum_first_byte_us: 0.0,
            wire_in: 0,
            wire_out: 0,
            payload: 0,
            failures: Messages::default(),
            client_cpu: 0.0,
        }
    }

    fn record(&mut self, b: &Boot) {
        self.ok += 1;
        self.retries += u64::from(b.retries);
        self.busy_wait += b.busy_wait;
        let _ = self.total.record(us(b.total));
        let _ = self.to_tls.record(us(b.phases.tls));
        let _ = self.after_tls.record(us(b.done.saturating_sub(b.phases.tls)));
        let f = |d: Duration| d.as_secs_f64() * 1e6;
        self.sum_total_us += f(b.total);
        self.sum_tcp_us += f(b.phases.tcp);
        self.sum_tls_us += f(b.phases.tls);
        self.sum_hello_us += f(b.hello);
        self.sum_request_us += f(b.request_sent);
        self.sum_first_byte_us += f(b.first_byte);
        self.sum_done_us += f(b.done);
        self.wire_in += b.wire_in;
        self.wire_out += b.wire_out;
        self.payload += b.payload;
    }

    fn merge(&mut self, o: Storm) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.retries += o.retries;
        self.busy_wait += o.busy_wait;
        let _ = self.total.add(&o.total);
        let _ = self.to_tls.add(&o.to_tls);
        let _ = self.after_tls.add(&o.after_tls);
        self.sum_total_us += o.sum_total_us;
        self.sum_tcp_us += o.sum_tcp_us;
        self.sum_tls_us += o.sum_tls_us;
        self.sum_hello_us += o.sum_hello_us;
        self.sum_request_us += o.sum_request_us;
        self.sum_first_byte_us += o.sum_first_byte_us;
        self.sum_done_us += o.sum_done_us;
        self.wire_in += o.wire_in;
        self.wire_out += o.wire_out;
        self.payload += o.payload;
        self.failures.merge(o.failures);
    }

    pub fn boots_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn mean_ms(&self, sum_us: f64) -> f64 {
        if self.ok == 0 {
            0.0
        } else {
            sum_us / self.ok as f64 / 1000.0
        }
    }
}

pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `boots` boots, `concurrency` at a time: boot `i` is `one(i)`. The clock starts when
/// every thread is ready (thread creation is not timed) and stops when the last boot ends.
pub fn run<F>(boots: usize, concurrency: usize, one: F) -> Result<Storm, String>
where
    F: Fn(usize) -> Result<Boot, String> + Sync,
{
    let threads = concurrency.min(boots).max(1);
    let next = AtomicUsize::new(0);
    // Held for writing until every thread is started: the threads wait on a read lock.
    let gate = RwLock::new(());
    let mut out = Storm::new(boots);
    let mut start = Instant::now();
    let mut cpu_before = 0.0;
    let mut end = start;
    let joined: Result<Vec<Storm>, String> = std::thread::scope(|s| {
        let closed = gate.write().map_err(|_| "gate poisoned".to_string())?;
        let mut handles = Vec::with_capacity(threads);
        let mut spawn_error = None;
        for t in 0..threads {
            let (next, gate, one) = (&next, &gate, &one);
            let h =
                std::thread::Builder::new().name(format!("node-{t}")).stack_size(STACK).spawn_scoped(s, move || {
                    let mut st = Storm::new(0);
                    drop(gate.read());
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= boots {
                            break;
                        }
                        match one(i) {
                            Ok(b) => st.record(&b),
                            Err(m) => {
                                st.failed += 1;
                                st.failures.add(&m, 1);
                            }
                        }
                    }
                    st
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // The threads already started find nothing left to do.
                    next.store(boots, Ordering::SeqCst);
                    spawn_error = Some(format!("cannot start client thread {t}: {e}"));
                    break;
                }
            }
        }
        cpu_before = crate::quorum::proc_cpu_seconds(std::process::id());
        start = Instant::now();
        drop(closed);
        let mut v = Vec::with_capacity(threads);
        for h in handles {
            v.push(h.join().map_err(|_| "a client thread panicked".to_string())?);
        }
        end = Instant::now();
        match spawn_error {
            Some(e) => Err(e),
            None => Ok(v),
        }
    });
    for st in joined? {
        out.merge(st);
    }
    out.seconds = end.duration_since(start).as_secs_f64();
    out.client_cpu = crate::quorum::proc_cpu_seconds(std::process::id()) - cpu_before;
    Ok(out)
}

pub use pact_proto::sha256_hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_runs_every_boot_once() {
        let seen = std::sync::Mutex::new(vec![0u32; 50]);
        let s = run(50, 7, |i| {
            seen.lock().unwrap()[i] += 1;
            if i % 10 == 3 {
                Err(format!("bad {}", i % 2))
            } else {
                Ok(Boot { total: Duration::from_millis(2), payload: 10, retries: 1, ..Default::default() })
            }
        })
        .unwrap();
        assert!(seen.lock().unwrap().iter().all(|&n| n == 1));
        assert_eq!((s.ok, s.failed, s.retries, s.payload), (45, 5, 45, 450));
        assert_eq!(s.failures.list()[0].message, "bad 1");
        assert_eq!(s.total.len(), 45);
    }
}
