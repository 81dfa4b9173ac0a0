//! Test harness: runs the real `pact-journal` binary with `--dev` in a temp dir on free
//! loopback ports, and talks to it over real TLS. Shared by journal and CLI tests.
#![allow(dead_code)]

use pact_proto::client::Client;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A loopback port no one listens on, below the kernel's ephemeral range (32768+), handed
/// out once per test process: a port from `bind(:0)` can be handed to another test the moment
/// its first user closes it, and a journal restarting on "its" port would then find a stranger.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 10_000 + (std::process::id() % 1000) as u16 * 20, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(p < 32_000, "ran out of test ports");
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            return p;
        }
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pact-test-{name}-{}-{}", std::process::id(), free_port()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The journal binary: this package's own when testing the journal, else the one next to
/// the running test's target dir (the README's `cargo test --workspace` builds both).
pub fn journal_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_pact-journal") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("pact-journal");
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p pact-journal`; `cargo test --workspace` does)",
        p.display()
    );
    p
}

pub struct Journal {
    pub dir: PathBuf,
    pub port: u16,
    pub metrics_port: u16,
    pub raft_port: u16,
    pub child: Option<Child>,
    pub extra_args: Vec<String>,
    pub log: PathBuf,
}

impl Journal {
    pub fn start(name: &str) -> Journal {
        Journal::start_with(name, &[])
    }

    pub fn start_with(name: &str, extra: &[&str]) -> Journal {
        let dir = temp_dir(name);
        let mut j = Journal {
            log: dir.join("journal.log"),
            dir,
            port: free_port(),
            metrics_port: free_port(),
            raft_port: free_port(),
            child: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        j.spawn();
        j
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(journal_bin())
            .arg("--dev")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(self.endpoint())
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .arg("--raft-listen")
            .arg(format!("127.0.0.1:{}", self.raft_port))
            .args(&self.extra_args)
            .env_remove("PACT_JOURNAL_CONFIG")
            .env_remove("PACT_OIDC_HMAC_SECRET")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start pact-journal");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until an authenticated status call succeeds and a leader is known.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("pact-journal exited with {st}: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
                }
            }
            if let Ok(mut c) = self.try_client() {
                let st: Result<pact_proto::journal::JournalStatus, _> =
                    c.call(pact_proto::Method::JournalStatus, &pact_proto::journal::JournalStatusRequest {});
                if st.map(|s| s.leader_id != 0).unwrap_or(false) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "journal not ready in 30s: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn dev_dir(&self) -> PathBuf {
        self.data_dir().join("dev")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dev_dir().join("admin.token")).unwrap().trim().to_string()
    }

    pub fn hmac_secret(&self) -> Vec<u8> {
        std::fs::read(self.dev_dir().join("hmac.secret")).unwrap()
    }

    pub fn ca(&self) -> PathBuf {
        self.dev_dir().join("ca.crt")
    }

    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        pact_proto::tls::client_config(&self.ca()).unwrap()
    }

    pub fn try_client(&self) -> Result<Client, pact_proto::client::CallError> {
        let token = std::fs::read_to_string(self.dev_dir().join("admin.token")).unwrap_or_default();
        let tls = pact_proto::tls::client_config(&self.ca())
            .map_err(|e| pact_proto::client::CallError::Unreachable(e.to_string()))?;
        Client::connect(&self.endpoint(), tls, token.trim(), Duration::from_secs(10))
    }

    pub fn client(&self) -> Client {
        self.try_client().expect("connect to journal")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SIGTERM through the kill command keeps the test free of unsafe code.
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Every variable the journal reads; a test's journal starts without them, so the caller's
/// environment cannot leak in.
pub const JOURNAL_ENV: &[&str] = &[
    "PACT_JOURNAL_CONFIG",
    "PACT_JOURNAL_NODE_ID",
    "PACT_JOURNAL_LISTEN",
    "PACT_JOURNAL_DATA_DIR",
    "PACT_JOURNAL_PEERS",
    "PACT_JOURNAL_METRICS_LISTEN",
    "PACT_JOURNAL_RAFT_LISTEN",
    "PACT_OIDC_ISSUER",
    "PACT_OIDC_AUDIENCE",
    "PACT_OIDC_JWKS_URL",
    "PACT_OIDC_HMAC_SECRET",
    "PACT_OIDC_CA_BUNDLE",
    "PACT_POLICY_DIR",
    "PACT_LOG",
];
