//! Health checks: "process" is answered on the spot (kill(pid, 0)); TCP and HTTP checks go to
//! one worker thread so that a slow or silent peer never holds up the supervisor's tick.
//!
//! The worker is started on the first network check and has a bounded queue. At most one
//! check per service is in flight at a time, so the queue cannot grow past the number of
//! services; every connect, read and write has a timeout, so one check ends within a few
//! times [`TIMEOUT`]. (Host name resolution for an HTTP URL has no timeout of its own, which
//! is one more reason it runs off the supervisor's thread.)

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use super::spec::Probe;
use super::Health;

/// Connect, read and write timeout of one network check.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// When the first check runs after a start (or the interval, if shorter): a service needs a
/// moment to open its port, and a check at the very instant of the start would only say
/// "not yet".
pub const FIRST_CHECK_AFTER: Duration = Duration::from_secs(1);

/// How often the supervisor should look for results while a network check is in flight.
pub const RESULT_POLL: Duration = Duration::from_millis(100);

const QUEUE: usize = 64;

enum NetProbe {
    Tcp(u16),
    Http(String),
}

struct Job {
    service: String,
    instance: u64,
    probe: NetProbe,
}

struct Outcome {
    service: String,
    instance: u64,
    result: Result<(), String>,
}

struct Worker {
    jobs: SyncSender<Job>,
    results: Receiver<Outcome>,
}

impl Worker {
    fn start() -> std::io::Result<Worker> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(QUEUE);
        let (res_tx, results) = mpsc::channel();
        // Ends by itself when the supervisor (the only sender) is dropped.
        std::thread::Builder::new().name("pact-health".into()).stack_size(64 * 1024).spawn(move || {
            for job in job_rx {
                let result = match &job.probe {
                    NetProbe::Tcp(port) => check_tcp(*port, TIMEOUT),
                    NetProbe::Http(url) => check_http(url, TIMEOUT),
                };
                if res_tx.send(Outcome { service: job.service, instance: job.instance, result }).is_err() {
                    break;
                }
            }
        })?;
        Ok(Worker { jobs, results })
    }
}

struct Entry {
    probe: Probe,
    interval: Duration,
    pid: Option<i32>,
    next: Instant,
    in_flight: bool,
    /// Bumped at every (re)arm, so a late answer about a previous instance is dropped.
    instance: u64,
    health: Health,
    at: Option<Instant>,
}

/// The health checks of every service that has one and is running (pact backend) or
/// declared (systemd backend).
#[derive(Default)]
pub struct Monitor {
    entries: BTreeMap<String, Entry>,
    worker: Option<Worker>,
    instance: u64,
}

impl Monitor {
    /// Starts checking `service` (again) from `now`: its health is "pending" until the first
    /// result. `pid` is the main process for the process check.
    pub fn arm(&mut self, service: &str, probe: &Probe, interval: Duration, pid: Option<i32>, now: Instant) {
        self.instance += 1;
        self.entries.insert(
            service.to_string(),
            Entry {
                probe: probe.clone(),
                interval,
                pid,
                next: now + interval.min(FIRST_CHECK_AFTER),
                in_flight: false,
                instance: self.instance,
                health: Health::Pending,
                at: None,
            },
        );
    }

    pub fn disarm(&mut self, service: &str) {
        self.entries.remove(service);
    }

    pub fn health(&self, service: &str) -> Option<(Health, Option<Instant>)> {
        self.entries.get(service).map(|e| (e.health.clone(), e.at))
    }

    /// Takes the results that arrived and starts the checks that are due. Never blocks.
    pub fn tick(&mut self, now: Instant) {
        if let Some(w) = &self.worker {
            while let Ok(o) = w.results.try_recv() {
                if let Some(e) = self.entries.get_mut(&o.service).filter(|e| e.instance == o.instance) {
                    e.in_flight = false;
                    e.health = match o.result {
                        Ok(()) => Health::Healthy,
                        Err(why) => Health::Unhealthy(why),
                    };
                    e.at = Some(now);
                }
            }
        }
        for (name, e) in self.entries.iter_mut() {
            if e.next > now || e.in_flight {
                continue;
            }
            e.next = now + e.interval;
            let net = match &e.probe {
                Probe::Process => {
                    let alive = e
                        .pid
                        .and_then(rustix::process::Pid::from_raw)
                        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
                    e.health = if alive {
                        Health::Healthy
                    } else {
                        Health::Unhealthy("the main process is not running".into())
                    };
                    e.at = Some(now);
                    continue;
                }
                Probe::Tcp(p) => NetProbe::Tcp(*p),
                Probe::Http(u) => NetProbe::Http(u.clone()),
            };
            if self.worker.is_none() {
                match Worker::start() {
                    Ok(w) => self.worker = Some(w),
                    Err(err) => {
                        e.health = Health::Unhealthy(format!("cannot start the health-check thread: {err}"));
                        e.at = Some(now);
                        continue;
                    }
                }
            }
            let w = self.worker.as_ref().expect("started above");
            match w.jobs.try_send(Job { service: name.clone(), instance: e.instance, probe: net }) {
                Ok(()) => e.in_flight = true,
                // Full cannot happen with one job per service in flight; if it ever does,
                // the check simply runs at the next interval.
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => {
                    self.worker = None;
                    e.health = Health::Unhealthy("the health-check thread ended".into());
                    e.at = Some(now);
                    break;
                }
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.values().map(|e| if e.in_flight { Instant::now() + RESULT_POLL } else { e.next }).min()
    }
}

/// A TCP connection to 127.0.0.1:port is accepted.
pub fn check_tcp(port: u16, timeout: Duration) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, timeout).map(drop).map_err(|e| format!("TCP connect to {addr}: {e}"))
}

/// `http://host[:port][/path]`: GET over HTTP/1.0, healthy on a 2xx status line.
pub fn check_http(url: &str, timeout: Duration) -> Result<(), String> {
    let rest = match url.strip_prefix("http://") {
        Some(r) => r,
        None if url.starts_with("https://") => {
            return Err("https:// health checks are not supported by the agent (no TLS client for them); \
                        declare an http:// URL or a tcp_port"
                .into())
        }
        None => return Err(format!("{url:?} is not an http:// URL")),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() || path.contains(['\r', '\n', ' ']) {
        return Err(format!("{url:?} is not a usable http:// URL"));
    }
    // A bracketed IPv6 literal has colons of its own; the port is what follows "]:".
    let has_port = match hostport.rfind(']') {
        Some(i) => hostport[i..].contains(':'),
        None => hostport.contains(':'),
    };
    let target = if has_port { hostport.to_string() } else { format!("{hostport}:80") };
    let addrs: Vec<SocketAddr> = target.to_socket_addrs().map_err(|e| format!("resolve {hostport}: {e}"))?.collect();
    let mut last = format!("{hostport} resolved to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
                let req = format!(
                    "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: pact-agent\r\nConnection: close\r\n\r\n"
                );
                s.write_all(req.as_bytes()).map_err(|e| format!("GET {url}: {e}"))?;
                return read_status(&mut s).map_err(|e| format!("GET {url}: {e}"));
            }
            Err(e) => last = format!("connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// Reads the status line ("HTTP/1.x NNN reason") and judges it; the rest is not needed.
fn read_status(s: &mut TcpStream) -> Result<(), String> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or_default().trim_end();
    let mut words = line.split_whitespace();
    let code = match (words.next(), words.next()) {
        (Some(v), Some(c)) if v.starts_with("HTTP/") => {
            c.parse::<u16>().map_err(|_| format!("bad status line {line:?}"))?
        }
        _ => return Err(if line.is_empty() { "no HTTP response".into() } else { format!("bad status line {line:?}") }),
    };
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP {code}: {line}"))
    }
}
