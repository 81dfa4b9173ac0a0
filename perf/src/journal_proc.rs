//! Starts a `pact-journal --dev` for a benchmark and stops it afterwards.

use pact_proto::client::Client;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct JournalProc {
    pub child: Child,
    pub endpoint: String,
    pub token: String,
    pub tls: Arc<rustls::ClientConfig>,
}

/// The benchmark journals' log level: `PACT_LOG` when set (info shows raft-rs's elections),
/// else warn, so that logging stays out of the figures.
pub fn journal_log_level() -> String {
    std::env::var("PACT_LOG").unwrap_or_else(|_| "warn".to_string())
}

pub fn default_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().map(|d| d.join("pact-journal")).unwrap_or_else(|| PathBuf::from("pact-journal"))
}

impl JournalProc {
    pub fn start(binary: &Path, data_dir: &Path, cores: Option<usize>) -> Result<JournalProc, String> {
        Self::start_with_config(binary, data_dir, cores, None)
    }

    /// `config`: the text of a journal.toml to start it with (`--config`), if any.
    pub fn start_with_config(
        binary: &Path,
        data_dir: &Path,
        cores: Option<usize>,
        config: Option<&str>,
    ) -> Result<JournalProc, String> {
        let _ = std::fs::remove_dir_all(data_dir);
        std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
        // The client port's next port must be free too: a journal listens for Raft there.
        let (ports, metrics) = crate::quorum::free_ports(1)?;
        let (port, metrics) = (ports[0], metrics[0]);
        let endpoint = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(data_dir.with_extension("log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(binary);
        cmd.arg("--dev")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(&endpoint)
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics}"))
            .env("PACT_LOG", journal_log_level())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some(c) = cores {
            cmd.arg("--cores").arg(c.to_string());
        }
        if let Some(text) = config {
            let path = data_dir.with_extension("toml");
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            cmd.arg("--config").arg(path);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e} (build it with `cargo build --release --workspace`)", binary.display()))?;
        let dev = data_dir.join("dev");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let (Ok(token), Ok(tls)) =
                (std::fs::read_to_string(dev.join("admin.token")), pact_proto::tls::client_config(&dev.join("ca.crt")))
            {
                let token = token.trim().to_string();
                if let Ok(mut c) = Client::connect(&endpoint, tls.clone(), &token, Duration::from_secs(5)) {
                    let st: Result<pact_proto::journal::JournalStatus, _> =
                        c.call(pact_proto::Method::JournalStatus, &pact_proto::journal::JournalStatusRequest {});
                    if st.map(|s| s.leader_id != 0).unwrap_or(false) {
                        return Ok(JournalProc { child, endpoint, token, tls });
                    }
                }
            }
            if Instant::now() > deadline {
                return Err("the journal did not become ready in 30s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Total CPU seconds (user + system) the journal process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }
}

impl Drop for JournalProc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
