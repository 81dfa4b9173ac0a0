//! The HTTPS baseline: nginx serving the same overlay and node-delta bytes as static files
//! over TLS 1.3, to the same simulated nodes (each on its own new TLS connection: GET the
//! overlay, then its delta on the same keep-alive connection, SHA-256 of both checked).
//!
//! nginx runs in the foreground with a generated configuration in a temp dir: `daemon off`,
//! `master_process on`, `worker_processes` = the cores the journals got, `access_log off`,
//! TLS 1.3 only, the journal's own certificate and key (ECDSA P-256, rcgen), a `reuseport`
//! listener with a backlog of 1024 (the journal's shards listen with SO_REUSEPORT and a
//! backlog of 1024 too; nginx's default of 511 drops SYNs at 1000 connections in flight and
//! costs those nodes 1-7 s of SYN retransmits).

use crate::boot_payload::node_name;
use crate::pact_boot::close;
use crate::storm::{connect, sha256_hex, Boot, Tls};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the Debian package puts it; else `nginx` on PATH.
pub fn find_nginx(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.is_file() {
        return Some(sbin);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("nginx")).find(|p| p.is_file()))
}

pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: ").to_string())
        .unwrap_or_default()
}

/// The head of an HTTP/1.1 response.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_length: usize,
    /// Bytes of the status line and headers, including the blank line.
    pub len: usize,
    /// `Connection: close` was sent.
    pub close: bool,
}

/// Parses a response head from the front of `buf`: Ok(None) until the blank line has
/// arrived. Only what a static file server sends is accepted: a Content-Length body
/// (chunked transfer coding is refused), at most 64 KiB of head.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let end = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => p + 4,
        None if buf.len() > 64 * 1024 => return Err("response head over 64 KiB".into()),
        None => return Ok(None),
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status =
        parts.next().and_then(|s| s.parse::<u16>().ok()).ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut content_length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header line: {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<usize>().map_err(|_| format!("bad Content-Length: {value:?}"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err("conflicting Content-Length headers".into());
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("Transfer-Encoding {value:?} is not supported by this client"));
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    let content_length = content_length.ok_or("response without Content-Length")?;
    Ok(Some(Head { status, content_length, len: end, close }))
}

/// A keep-alive HTTP/1.1 client on one TLS connection.
pub struct HttpConn {
    pub s: Tls,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn new(s: Tls) -> HttpConn {
        HttpConn { s, buf: Vec::with_capacity(64 * 1024) }
    }

    /// GET `path`; returns the body and when the head arrived (as an Instant).
    pub fn get(&mut self, path: &str) -> Result<(Vec<u8>, Instant), String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: pact-perf\r\nAccept: */*\r\n\r\n");
        self.s.write_all(req.as_bytes()).and_then(|_| self.s.flush()).map_err(|e| format!("request: {e}"))?;
        let mut chunk = [0u8; 16 * 1024];
        let head = loop {
            if let Some(h) = parse_head(&self.buf)? {
                break h;
            }
            let n = self.s.read(&mut chunk).map_err(|e| format!("response: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head_at = Instant::now();
        if head.status != 200 {
            return Err(format!("HTTP {} for {}", head.status, path.split('/').nth(1).unwrap_or("")));
        }
        let need = head.len + head.content_length;
        while self.buf.len() < need {
            let n = self.s.read(&mut chunk).map_err(|e| format!("body: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection in a body".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head.len..need].to_vec();
        self.buf.drain(..need);
        Ok((body, head_at))
    }
}

/// A running nginx; killed (SIGTERM, then SIGKILL) on drop.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub root: PathBuf,
}

/// The files nginx serves: `/overlay/bench` and `/delta/<node>`.
pub fn overlay_path() -> String {
    format!("/overlay/{}", crate::boot_payload::VCLUSTER)
}

pub fn delta_path(i: usize) -> String {
    format!("/delta/{}", node_name(i))
}

fn config(root: &Path, port: u16, workers: usize, cert: &Path, key: &Path) -> String {
    let r = root.display();
    format!(
        "# generated by pact-perf boot-storm
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000;
    client_body_temp_path {r}/tmp/body;
    proxy_temp_path {r}/tmp/proxy;
    fastcgi_temp_path {r}/tmp/fastcgi;
    uwsgi_temp_path {r}/tmp/uwsgi;
    scgi_temp_path {r}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} ssl reuseport backlog=1024;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        root {r}/www;
        location / {{ }}
    }}
}}
",
        cert = cert.display(),
        key = key.display()
    )
}

impl Nginx {
    /// Writes the files and the configuration under `root` (wiped first) and starts nginx.
    pub fn start(
        bin: &Path,
        root: &Path,
        workers: usize,
        cert: &Path,
        key: &Path,
        overlay: &[u8],
        deltas: &[Vec<u8>],
    ) -> Result<Nginx, String> {
        let _ = std::fs::remove_dir_all(root);
        let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        for d in ["www/overlay", "www/delta", "tmp"] {
            std::fs::create_dir_all(root.join(d)).map_err(|e| io(&root.join(d), e))?;
        }
        let www = root.join("www");
        let p = www.join(overlay_path().trim_start_matches('/'));
        std::fs::write(&p, overlay).map_err(|e| io(&p, e))?;
        for (i, d) in deltas.iter().enumerate() {
            let p = www.join(delta_path(i).trim_start_matches('/'));
            std::fs::write(&p, d).map_err(|e| io(&p, e))?;
        }
        let (c, k) = (root.join("server.crt"), root.join("server.key"));
        std::fs::copy(cert, &c).map_err(|e| io(cert, e))?;
        std::fs::copy(key, &k).map_err(|e| io(key, e))?;
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let conf = root.join("nginx.conf");
        std::fs::write(&conf, config(root, port, workers, &c, &k)).map_err(|e| io(&conf, e))?;
        let log = std::fs::File::create(root.join("stderr.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(root.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().map_err(|e| format!("{e}"))?;
        let mut n = Nginx { child, addr, root: root.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = n.child.try_wait() {
                let err = std::fs::read_to_string(root.join("error.log")).unwrap_or_default()
                    + &std::fs::read_to_string(root.join("stderr.log")).unwrap_or_default();
                return Err(format!("nginx exited ({status}): {}", err.trim()));
            }
            // Up once its workers exist and the port answers.
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && n.pids().len() > workers
            {
                return Ok(n);
            }
            if Instant::now() > deadline {
                return Err("nginx did not start listening in 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut v = vec![master];
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(master) {
                    v.push(pid);
                }
            }
        }
        v
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.pids().into_iter().map(crate::quorum::proc_cpu_seconds).sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(self.root.join("www"));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The baseline's simulated nodes.
pub struct HttpsTarget {
    pub addr: SocketAddr,
    pub name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    pub timeout: Duration,
    pub overlay_sha: String,
    pub delta_sha: Vec<String>,
    /// Negotiated TLS parameters of the first boot.
    pub tls_desc: std::sync::OnceLock<String>,
}

impl HttpsTarget {
    pub fn boot(&self, i: usize) -> Result<Boot, String> {
        let t0 = Instant::now();
        let (s, phases) = connect(self.addr, &self.name, &self.tls, self.timeout, t0)?;
        if self.tls_desc.get().is_none() {
            let _ = self.tls_desc.set(crate::storm::describe(&s.conn));
        }
        let mut c = HttpConn::new(s);
        let request_sent = t0.elapsed();
        let (overlay, head_at) = c.get(&overlay_path())?;
        let first_byte = head_at.duration_since(t0);
        let (delta, _) = c.get(&delta_path(i))?;
        let done = t0.elapsed();
        if sha256_hex(&overlay) != self.overlay_sha {
            return Err("overlay checksum mismatch".into());
        }
        if self.delta_sha.get(i).is_none_or(|d| *d != sha256_hex(&delta)) {
            return Err("delta checksum mismatch".into());
        }
        let (wire_in, wire_out) = (c.s.sock.read, c.s.sock.written);
        close(&mut c.s);
        Ok(Boot {
            total: done,
            phases,
            hello: phases.tls,
            request_sent,
            first_byte,
            done,
            wire_in,
            wire_out,
            payload: (overlay.len() + delta.len()) as u64,
            retries: 0,
            busy_wait: Duration::ZERO,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let r = b"HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length: 5\r\nConnection: keep-alive\r\n\r\nhello";
        let h = parse_head(r).unwrap().unwrap();
        assert_eq!(h, Head { status: 200, content_length: 5, len: r.len() - 5, close: false });
        assert_eq!(&r[h.len..], b"hello");
        // Incomplete: wait for more.
        assert_eq!(parse_head(&r[..20]).unwrap(), None);
        let h =
            parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.status, h.content_length, h.close), (404, 0, true));
        assert!(parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").unwrap().unwrap().close);
    }

    #[test]
    fn bad_heads_are_refused() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0 hi\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 2x0 OK\r\nContent-Length: 1\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(parse_head(&vec![b'a'; 70 * 1024]).is_err());
    }

    #[test]
    fn config_is_tls13_only_without_access_log() {
        let c = config(Path::new("/r"), 8443, 2, Path::new("/r/c.crt"), Path::new("/r/k.key"));
        for want in [
            "daemon off;",
            "master_process on;",
            "worker_processes 2;",
            "access_log off;",
            "ssl_protocols TLSv1.3;",
            "listen 127.0.0.1:8443 ssl reuseport backlog=1024;",
            "ssl_certificate /r/c.crt;",
        ] {
            assert!(c.contains(want), "{want} missing from\n{c}");
        }
    }
}
