//! The test harness for images/idp, shared by `journal/tests/oidc.rs` and `cli/tests/login.rs`
//! (each includes it with `#[path = "../../images/idp/harness.rs"] mod idp;`): installs
//! images/idp's node_modules (`npm ci`, bounded) after checking `node` and `npm`, skips the
//! test when they cannot be had (unless CI=true), runs `node server.js` until `IDP READY`, and
//! starts a lone `pact-journal` (not `--dev`) that takes its keys from the IdP's discovery.
//! Child processes are killed when dropped.
//!
//! Only std and `pact_proto` (a dependency of both crates), plus the crate's `common` module
//! (journal/tests/common/mod.rs, which both tests include as `mod common`). JSON stays in the
//! tests: the journal's reads it with serde_json, the CLI's with its own parser.
#![allow(dead_code)]

use crate::common::{free_port, journal_bin, JOURNAL_ENV};
use pact_proto::httpget;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a start-up, one request or one `pact login` may take before the test gives up.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How long `npm ci` may take.
pub const NPM_DEADLINE: Duration = Duration::from_secs(300);
/// The IdP's confidential client (client_secret_basic).
pub const CLIENT_ID: &str = "pact-test";
pub const CLIENT_SECRET: &str = "pact-test-secret";
/// The resource the IdP issues access tokens for, and their `aud`.
pub const RESOURCE: &str = "urn:pact";
pub const AUDIENCE: &str = "pact";
pub const ADMIN: &str = "pact-platform-admin";

pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Calls `f` until it gives `Some`, every `every`, for at most `within`.
pub fn poll<T>(within: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// The lines `from` gives, through a thread (so a wait on them can time out); the thread
/// keeps draining `from` until it closes.
pub fn lines_of(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    rx
}

/// A child process killed (and reaped) when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub name: &'static str,
}

impl Proc {
    pub fn new(child: Child, name: &'static str) -> Proc {
        Proc { child: Some(child), name }
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            eprintln!("stopping {}", self.name);
        }
        self.kill();
    }
}

/// The test's temp dir, removed when the test passes.
pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Installing images/idp.

/// images/idp, from the crate (journal/ or cli/) that includes this file.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("images").join("idp")
}

/// The major version of `node --version`, or why there is none.
pub fn node_major() -> Result<u32, String> {
    let out = Command::new("node").arg("--version").output().map_err(|e| format!("node is not installed ({e})"))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    v.trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("`node --version` said {v:?}"))
}

/// images/idp with its node_modules installed (npm's output in `log`), or why it cannot be had.
pub fn prepare(log: &Path) -> Result<PathBuf, String> {
    let major = node_major()?;
    if major < 18 {
        return Err(format!("node {major} is too old (oidc-provider 8 needs 18 or later)"));
    }
    Command::new("npm").arg("--version").output().map_err(|e| format!("npm is not installed ({e})"))?;
    let dir = source_dir().canonicalize().map_err(|e| format!("images/idp: {e}"))?;
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return Ok(dir);
    }
    let verb = if dir.join("package-lock.json").exists() { "ci" } else { "install" };
    eprintln!("images/idp: npm {verb} (node_modules is missing)");
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new("npm")
        .args([verb, "--no-audit", "--no-fund", "--omit=dev"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    let mut npm = Proc::new(child, "npm");
    let until = Instant::now() + NPM_DEADLINE;
    let status = loop {
        if let Some(st) = npm.exited() {
            npm.child = None;
            break st;
        }
        if Instant::now() > until {
            npm.kill();
            return Err(format!("npm {verb} took longer than {NPM_DEADLINE:?}"));
        }
        sleep_ms(100);
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if !status.success() || !dir.join("node_modules/oidc-provider/package.json").exists() {
        let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("npm {verb} in {} failed ({status}):\n{}", dir.display(), tail.join("\n")));
    }
    Ok(dir)
}

/// [`prepare`] with npm's output in `dir`/npm.log, or `None` once the test is skipped: it
/// prints `SKIP: <reason>`, and fails instead where CI=true.
pub fn prepare_or_skip(dir: &Path) -> Option<PathBuf> {
    match prepare(&dir.join("npm.log")) {
        Ok(d) => Some(d),
        Err(why) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true, so this cannot be skipped: {why}");
            println!("SKIP: {why}");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Running it.

/// A running images/idp/server.js.
pub struct Idp {
    pub proc: Proc,
    pub port: u16,
    pub stderr: PathBuf,
}

impl Idp {
    /// Starts the IdP from `src` on `port` with the private JWKS in `keys` (generated there
    /// when the file does not exist) and `args` besides (`--kid`, `--test-signing`, …), its
    /// stderr in the file `stderr`; returns once it printed IDP READY.
    pub fn start(src: &Path, port: u16, keys: &Path, args: &[&str], stderr: &Path) -> Idp {
        let issuer = format!("http://127.0.0.1:{port}");
        let mut child = Command::new("node")
            .arg(src.join("server.js"))
            .args(["--port", &port.to_string(), "--issuer", &issuer])
            .arg("--keys")
            .arg(keys)
            .args(args)
            .current_dir(src)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(stderr).unwrap()))
            .spawn()
            .expect("start node images/idp/server.js");
        let rx = lines_of(child.stdout.take().unwrap());
        let mut idp = Idp { proc: Proc::new(child, "the IdP"), port, stderr: stderr.to_path_buf() };
        let until = Instant::now() + DEADLINE;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.trim() == format!("IDP READY {issuer}") => return idp,
                Ok(line) => eprintln!("idp: {line}"),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the IdP exited (or is about to).
                    let _ = poll(Duration::from_secs(5), Duration::from_millis(20), || idp.proc.exited());
                    panic!("the IdP exited before it was ready:\n{}", idp.stderr_text());
                }
            }
            if let Some(st) = idp.proc.exited() {
                panic!("the IdP exited with {st} before it was ready:\n{}", idp.stderr_text());
            }
            assert!(Instant::now() < until, "the IdP was not ready within {DEADLINE:?}:\n{}", idp.stderr_text());
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// A POST to the token endpoint, as the test (not the CLI) makes it: (status, body).
    pub fn post_token(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, String) {
        let url = format!("{}/token", self.issuer());
        let r = httpget::post_form(&url, None, form, basic, DEADLINE)
            .unwrap_or_else(|e| panic!("token request: {e}\n{}", self.stderr_text()));
        (r.status, r.text())
    }

    /// One request to the IdP at `path` (see [`http`]).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Result<Answer, String> {
        http(method, &format!("{}{path}", self.issuer()), headers, body)
    }
}

/// An HTTP answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.0 request on loopback (so the answer is never chunked): the URL's host is
/// connected to as 127.0.0.1 (a `localhost` callback included, which is where the CLI
/// listens). `Accept: */*` unless `headers` name another.
pub fn http(method: &str, url: &str, headers: &[(&str, String)], body: &[u8]) -> Result<Answer, String> {
    let u = httpget::Url::parse(url)?;
    let mut s = TcpStream::connect(("127.0.0.1", u.port)).map_err(|e| format!("connect {url}: {e}"))?;
    s.set_read_timeout(Some(DEADLINE)).map_err(|e| e.to_string())?;
    let mut req =
        format!("{method} {} HTTP/1.0\r\nHost: {}:{}\r\nContent-Length: {}\r\n", u.path, u.host, u.port, body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept")) {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).and_then(|_| s.write_all(body)).map_err(|e| format!("send {url}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read {url}: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{url}: no HTTP header in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{url}: bad status line in {head:?}"))?;
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Ok(Answer { status, headers, body: body.to_string() })
}

// ---------------------------------------------------------------------------------------
// A journal that verifies the IdP's tokens.

/// A lone journal, bootstrapped, not `--dev`: tokens from `issuer`'s discovery only.
pub struct OidcJournal {
    pub proc: Proc,
    pub endpoint: String,
    pub ca: PathBuf,
    pub log: PathBuf,
}

impl OidcJournal {
    /// Starts one in `dir` (data in `dir`/journal, output in `dir`/journal.log) trusting
    /// `issuer` for the audience `pact`.
    pub fn start(dir: &Path, issuer: &str) -> OidcJournal {
        let data = dir.join("journal");
        let config = dir.join("journal.toml");
        // An empty file: nothing from /etc/pact/journal.toml, everything from flags and env.
        std::fs::write(&config, "").unwrap();
        let (port, metrics, raft) = (free_port(), free_port(), free_port());
        let log = dir.join("journal.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(journal_bin());
        for v in JOURNAL_ENV {
            cmd.env_remove(v);
        }
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
            .args(["--node-id", "1", "--bootstrap", "--cores", "1"])
            .env("PACT_OIDC_ISSUER", issuer)
            .env("PACT_OIDC_AUDIENCE", AUDIENCE)
            .env("PACT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start pact-journal");
        OidcJournal {
            proc: Proc::new(child, "pact-journal"),
            endpoint: format!("127.0.0.1:{port}"),
            ca: data.join("tls").join("ca.crt"),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the journal accepts a token, as `read` reports: it runs `pact log -n 1`
    /// with that token and gives (exit code, stderr). Fails with the journal's log.
    pub fn wait_accepts(&mut self, mut read: impl FnMut() -> (i32, String)) {
        let mut last = String::new();
        let ok = poll(DEADLINE, Duration::from_millis(200), || {
            if let Some(st) = self.proc.exited() {
                panic!("pact-journal exited with {st}:\n{}", self.log_text());
            }
            if !self.ca.exists() {
                return None;
            }
            let (code, stderr) = read();
            last = format!("exit {code}: {stderr}");
            (code == 0).then_some(())
        });
        assert!(
            ok.is_some(),
            "the journal did not accept the IdP's token within {DEADLINE:?} (last `pact log`: {last})\n--- journal log ---\n{}",
            self.log_text()
        );
    }
}
