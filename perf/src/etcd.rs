//! etcd 3.4 baseline for `commit`: a 3-member etcd cluster on 127.0.0.1, started by the
//! benchmark itself, written to through etcd's v3 JSON gateway (`POST /v3/kv/put`) over
//! plain HTTP/1.1 keep-alive, one TCP connection per client, sequential requests.
//!
//! etcd runs with its defaults (fsync on every raft append and backend commit, 100 ms
//! heartbeat, 1 s election timeout); only the backend quota is raised so that long runs
//! do not hit the 2 GiB default and turn into alarms.
//!
//! Clients talk to the leader only. That is etcd's best case: a put sent to a follower
//! is forwarded to the leader over gRPC, one more hop. pact's clients may talk to any
//! node because followers forward too, so where pact is measured against followers the
//! comparison favours etcd.
//!
//! The gateway is not etcd's native protocol (gRPC over HTTP/2): in 3.4 it decodes the
//! JSON and re-issues the call to the member's own gRPC server over a loopback
//! connection, which costs some CPU per put. It is what a client without a gRPC stack
//! would use, the same position pact-perf's clients are in.

use hdrhistogram::Histogram;
use nanoserde::SerJson;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd run at one client count.
#[derive(SerJson, Clone, Default)]
pub struct EtcdRow {
    pub clients: u32,
    pub seconds: f64,
    pub puts: u64,
    pub errors: u64,
    pub puts_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// User + system CPU seconds, summed over the three etcd processes, during the run.
    pub etcd_cpu_seconds: f64,
}

const MEMBERS: usize = 3;
/// Backend quota: 8 GiB, etcd's documented maximum (the default is 2 GiB).
const QUOTA_BACKEND_BYTES: u64 = 8 * 1024 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The `etcd` binary found on PATH, if any.
pub fn etcd_on_path() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

/// `etcd --version`'s first line's version, e.g. "3.4.23".
pub fn etcd_version(binary: &Path) -> Result<String, String> {
    let out = Command::new(binary).arg("--version").output().map_err(|e| format!("{}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("{} --version: unexpected output {text:?}", binary.display()))
}

struct Member {
    name: String,
    child: Child,
    /// host:port of the member's client listener.
    client_addr: String,
    log: PathBuf,
}

/// A running 3-member etcd cluster; stopped (processes killed and reaped) and its data
/// directories removed on drop. Logs are kept next to the data directory.
pub struct EtcdCluster {
    members: Vec<Member>,
    data_root: PathBuf,
}

/// `n` distinct free ports on 127.0.0.1: all listeners are held until every port is picked.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())).collect()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

impl EtcdCluster {
    /// Starts the cluster with data under `data_root` (wiped first) and waits until every
    /// member is healthy and all agree on a leader.
    pub fn start(binary: &Path, data_root: &Path) -> Result<EtcdCluster, String> {
        let _ = std::fs::remove_dir_all(data_root);
        std::fs::create_dir_all(data_root).map_err(|e| format!("{}: {e}", data_root.display()))?;
        let ports = free_ports(2 * MEMBERS)?;
        let names: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}")).collect();
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial_cluster =
            (0..MEMBERS).map(|i| format!("{}={}", names[i], peer_url(i))).collect::<Vec<_>>().join(",");
        let token = format!("pact-perf-{}-{}", std::process::id(), ports[0]);
        let mut cluster = EtcdCluster { members: Vec::new(), data_root: data_root.to_path_buf() };
        for (i, name) in names.iter().enumerate() {
            let client_addr = format!("127.0.0.1:{}", ports[2 * i]);
            let log = data_root.with_file_name(format!(
                "{}-{name}.log",
                data_root.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "etcd".into())
            ));
            let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let mut cmd = Command::new(binary);
            // ETCD_* variables would override flags or clash with them; start from none.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD") {
                    cmd.env_remove(k);
                }
            }
            cmd.arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(data_root.join(name))
                .arg("--listen-client-urls")
                .arg(format!("http://{client_addr}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://{client_addr}"))
                .arg("--listen-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-advertise-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-token")
                .arg(&token)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--quota-backend-bytes")
                .arg(QUOTA_BACKEND_BYTES.to_string())
                .arg("--logger")
                .arg("zap")
                .arg("--log-outputs")
                .arg("stderr")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log_file.try_clone().map_err(|e| e.to_string())?))
                .stderr(Stdio::from(log_file));
            let child = cmd.spawn().map_err(|e| format!("{}: {e}", binary.display()))?;
            cluster.members.push(Member { name: name.clone(), child, client_addr, log });
        }
        cluster.wait_ready(Duration::from_secs(60))?;
        Ok(cluster)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            for m in &mut self.members {
                if let Ok(Some(status)) = m.child.try_wait() {
                    return Err(format!(
                        "etcd member {} exited during start ({status}); {}:\n{}",
                        m.name,
                        m.log.display(),
                        log_tail(&m.log)
                    ));
                }
            }
            let healthy = self.members.iter().all(|m| {
                HttpConn::connect(&m.client_addr)
                    .and_then(|mut c| c.request("GET", "/health", b""))
                    .map(|(code, body)| code == 200 && String::from_utf8_lossy(&body).contains("\"true\""))
                    .unwrap_or(false)
            });
            if healthy && self.leader_addr().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("etcd did not become healthy in {}s; logs: {}", limit.as_secs(), self.logs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        self.members.iter().map(|m| m.log.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// The client address of the member every member names as leader, via
    /// `POST /v3/maintenance/status` (`leader` against `header.member_id`).
    pub fn leader_addr(&self) -> Result<String, String> {
        let mut leader_ids = Vec::new();
        let mut own_ids = Vec::new();
        for m in &self.members {
            let mut c = HttpConn::connect(&m.client_addr)?;
            let (code, body) = c.request("POST", "/v3/maintenance/status", b"{}")?;
            let body = String::from_utf8_lossy(&body).into_owned();
            if code != 200 {
                return Err(format!("{}: /v3/maintenance/status: HTTP {code}: {body}", m.name));
            }
            let leader = json_field(&body, "leader").ok_or_else(|| format!("{}: no leader yet", m.name))?;
            let own = json_field(&body, "member_id").ok_or_else(|| format!("{}: no member_id in {body}", m.name))?;
            if leader == "0" {
                return Err(format!("{}: no leader yet", m.name));
            }
            leader_ids.push(leader);
            own_ids.push(own);
        }
        if leader_ids.iter().any(|l| *l != leader_ids[0]) {
            return Err(format!("members disagree on the leader: {leader_ids:?}"));
        }
        own_ids
            .iter()
            .position(|id| *id == leader_ids[0])
            .map(|i| self.members[i].client_addr.clone())
            .ok_or_else(|| format!("leader {} is not a member ({own_ids:?})", leader_ids[0]))
    }

    /// Total CPU seconds (user + system) the etcd processes have used so far.
    pub fn cpu_seconds(&self) -> f64 {
        // /proc reports clock ticks in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
        let tck = 100.0;
        self.members
            .iter()
            .map(|m| {
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", m.child.id())).unwrap_or_default();
                // Fields after the command name, which is in parentheses and may contain spaces.
                let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                (ticks(11) + ticks(12)) / tck
            })
            .sum()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // SIGKILL, not SIGTERM: the data is thrown away, and a SIGTERM'd leader first tries
        // to hand leadership over, which with every member going down at once waits out a
        // 7 s timeout. Each child is reaped, so no zombies are left.
        for m in &mut self.members {
            let _ = m.child.kill();
        }
        for m in &mut self.members {
            let _ = m.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_root);
    }
}

/// The value of the first `"key": ...` in a JSON text, unquoted if it is a string. Enough
/// for etcd's status and range answers, whose uint64s are decimal strings (grpc-gateway
/// JSON); not a JSON parser (a key inside a string value would fool it).
fn json_field(body: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let at = body.find(&pat)? + pat.len();
    let rest = body[at..].trim_start().strip_prefix(':')?.trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        s.find('"').map(|end| s[..end].to_string())
    } else {
        let end = rest.find(|c: char| c == ',' || c == '}' || c.is_whitespace()).unwrap_or(rest.len());
        Some(rest[..end].to_string())
    }
}

pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

/// A minimal HTTP/1.1 keep-alive client over one TCP connection.
struct HttpConn {
    addr: String,
    r: BufReader<TcpStream>,
    buf: Vec<u8>,
    closed: bool,
}

impl HttpConn {
    fn connect(addr: &str) -> Result<HttpConn, String> {
        let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let s = TcpStream::connect_timeout(&sock, IO_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        Ok(HttpConn { addr: addr.to_string(), r: BufReader::new(s), buf: Vec::new(), closed: false })
    }

    /// Sends one request and reads the whole answer: (status code, body).
    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        if self.closed {
            return Err("connection closed by the server".into());
        }
        self.buf.clear();
        write!(
            self.buf,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        self.buf.extend_from_slice(body);
        self.r.get_mut().write_all(&self.buf).map_err(|e| format!("write: {e}"))?;
        self.read_response()
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        if self.r.read_line(&mut l).map_err(|e| format!("read: {e}"))? == 0 {
            self.closed = true;
            return Err("connection closed by the server".into());
        }
        Ok(l.trim_end_matches(['\r', '\n']).to_string())
    }

    fn read_response(&mut self) -> Result<(u16, Vec<u8>), String> {
        let status = self.line()?;
        let code = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|_| status.starts_with("HTTP/1."))
            .ok_or_else(|| format!("bad status line {status:?}"))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        loop {
            let h = self.line()?;
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else { continue };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => self.closed |= value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let size_line = self.line()?;
                let hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {size_line:?}"))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line()?.is_empty() {}
                    break;
                }
                let at = body.len();
                body.resize(at + size, 0);
                self.r.read_exact(&mut body[at..]).map_err(|e| format!("read: {e}"))?;
                let mut crlf = [0u8; 2];
                self.r.read_exact(&mut crlf).map_err(|e| format!("read: {e}"))?;
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.r.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
        } else if code >= 200 && code != 204 && code != 304 {
            // No length: the body runs to the end of the connection.
            self.r.read_to_end(&mut body).map_err(|e| format!("read: {e}"))?;
            self.closed = true;
        }
        Ok((code, body))
    }
}

/// How many keys lie in [from, to), by a linearizable `count_only` range.
fn count_keys(addr: &str, from: &[u8], to: &[u8]) -> Result<u64, String> {
    let body = format!("{{\"key\":\"{}\",\"range_end\":\"{}\",\"count_only\":true}}", base64(from), base64(to));
    let (code, answer) = HttpConn::connect(addr)?.request("POST", "/v3/kv/range", body.as_bytes())?;
    let answer = String::from_utf8_lossy(&answer);
    if code != 200 {
        return Err(format!("/v3/kv/range: HTTP {code}: {answer}"));
    }
    // The gateway leaves zero-valued fields out.
    json_field(&answer, "count")
        .map_or(Ok(0), |c| c.parse().map_err(|_| format!("/v3/kv/range: bad count in {answer}")))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Starts a 3-member etcd cluster under `dir`, runs `clients` clients each putting
/// `payload`-byte values under unique keys ("bench/{client}/{n}") to the leader for
/// `seconds`, and stops the cluster.
pub fn run_etcd(clients: u32, seconds: u64, payload: usize, dir: &Path) -> Result<EtcdRow, String> {
    let binary = etcd_on_path().ok_or("no etcd binary on PATH (apt-get install etcd-server)")?;
    let cluster = EtcdCluster::start(&binary, &dir.join(format!("commit-etcd-c{clients}")))?;
    let leader = cluster.leader_addr()?;
    let value = base64(&vec![b'x'; payload]);
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(HttpConn::connect(&leader)?);
    }
    let cpu_before = cluster.cpu_seconds();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut threads = Vec::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        let value = value.clone();
        let leader = leader.clone();
        threads.push(std::thread::spawn(move || {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0u64;
            let mut body = String::with_capacity(value.len() + 64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                body.clear();
                body.push_str("{\"key\":\"");
                body.push_str(&base64(format!("bench/{c}/{n}").as_bytes()));
                body.push_str("\",\"value\":\"");
                body.push_str(&value);
                body.push_str("\"}");
                n += 1;
                let t = Instant::now();
                match conn.request("POST", "/v3/kv/put", body.as_bytes()) {
                    Ok((200, _)) => {
                        let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        // Broken or closed connection: open a new one (not timed), backing off
                        // a little so that a member that is down does not turn into a busy loop.
                        std::thread::sleep(Duration::from_millis(10));
                        if let Ok(c2) = HttpConn::connect(&leader) {
                            conn = c2;
                        }
                    }
                }
                if conn.closed {
                    if let Ok(c2) = HttpConn::connect(&leader) {
                        conn = c2;
                    }
                }
            }
            (h, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut errors = 0;
    for t in threads {
        let (h, e) = t.join().map_err(|_| "an etcd client thread panicked".to_string())?;
        hist.add(h).map_err(|e| e.to_string())?;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cluster.cpu_seconds() - cpu_before;
    let puts = hist.len();
    // Every acknowledged put must be there (a put counted as an error may be there too).
    let stored = count_keys(&leader, b"bench/", b"bench0")?;
    if stored < puts {
        return Err(format!("etcd acknowledged {puts} puts but holds {stored} bench/ keys"));
    }
    drop(cluster);
    Ok(EtcdRow {
        clients,
        seconds: secs,
        puts,
        errors,
        puts_per_sec: puts as f64 / secs,
        p50_ms: ms(&hist, 0.5),
        p99_ms: ms(&hist, 0.99),
        p999_ms: ms(&hist, 0.999),
        max_ms: hist.max() as f64 / 1000.0,
        etcd_cpu_seconds: cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn json_field_reads_strings_and_numbers() {
        let b =
            r#"{"header":{"cluster_id":"1","member_id":"42","revision":"1"},"version":"3.4.23","leader":"42","n": 7}"#;
        assert_eq!(json_field(b, "member_id").as_deref(), Some("42"));
        assert_eq!(json_field(b, "leader").as_deref(), Some("42"));
        assert_eq!(json_field(b, "n").as_deref(), Some("7"));
        assert_eq!(json_field(b, "absent"), None);
    }
}
