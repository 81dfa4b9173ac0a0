//! A 3-voter journal quorum on 127.0.0.1 for a benchmark, started the way
//! `images/dev/quorum.sh` starts one (deployment guide, Step 2): a cluster CA made for the
//! run, `PACT_JOURNAL_PEERS` with the client addresses (each Raft port is the client port
//! plus one), `--bootstrap` on node 1 only, an HMAC secret/issuer/audience in `PACT_OIDC_*` on
//! every node and a `pact-platform-admin` token minted from them.
//!
//! Nodes can be killed (SIGKILL) and restarted on the same data dir and ports, for the
//! failover measurement. Everything is killed on drop and the data removed; logs are kept
//! next to the data root.

use pact_proto::auth::HmacVerifier;
use pact_proto::client::Client;
use pact_proto::journal::{JournalStatus, JournalStatusRequest};
use pact_proto::Method;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NODES: usize = 3;
const ISSUER: &str = "pact-perf";
const AUDIENCE: &str = "pact";

pub struct Node {
    pub id: u64,
    /// Client address, host:port (the Raft port is the next one).
    pub endpoint: String,
    metrics: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Started with `--learner`: joins the quorum as a non-voting replica.
    learner: bool,
}

pub struct Quorum {
    binary: PathBuf,
    cores: Option<usize>,
    root: PathBuf,
    config: PathBuf,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    secret: String,
    peers: String,
    pub nodes: Vec<Node>,
    pub token: String,
    pub tls: Arc<rustls::ClientConfig>,
}

/// `n` client ports whose next port is free too (the Raft port), plus `n` metrics ports,
/// all distinct: every listener is held until all are picked. Taken below the kernel's
/// ephemeral range (32768+): after a boot storm, tens of thousands of client sockets sit in
/// TIME_WAIT on ephemeral ports, and a port the kernel hands out for `:0` often has a busy
/// neighbour.
pub fn free_ports(n: usize) -> Result<(Vec<u16>, Vec<u16>), String> {
    let bind = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p));
    let (lo, hi) = (20_000u32, 32_000u32);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let start = lo + std::process::id().wrapping_mul(7919).wrapping_add(seed) % (hi - lo);
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let mut candidate = start;
    for _ in 0..(hi - lo) {
        if ports.len() == 2 * n {
            break;
        }
        let p = candidate as u16;
        candidate = if candidate + 2 >= hi { lo } else { candidate + 2 };
        let want_pair = ports.len() < n;
        let Ok(l) = bind(p) else { continue };
        if want_pair {
            let Ok(next) = bind(p + 1) else { continue };
            held.push(next);
        }
        held.push(l);
        ports.push(p);
    }
    if ports.len() < 2 * n {
        return Err(format!("could not find {n} free port pairs and {n} ports on 127.0.0.1 in {lo}..{hi}"));
    }
    let metrics = ports.split_off(n);
    Ok((ports, metrics))
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The cluster CA, as `images/deploy/setup-ca.sh` makes it (ECDSA P-256, CA:TRUE); the
/// journals make their own node certificates from it at start.
fn make_ca(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .args(["-days", "30", "-subj", "/CN=pact-perf cluster CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e} (the 3-node mode needs openssl to make its CA)"))?;
    if !out.status.success() {
        return Err(format!("openssl req: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok((crt, key))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// User + system CPU seconds process `pid` has used so far (0 when it cannot be read).
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux whatever the kernel's HZ.
    (ticks(11) + ticks(12)) / 100.0
}

/// Where the cluster stands: the leader all running nodes agree on.
pub struct Health {
    pub leader: u64,
    pub term: u64,
}

impl Quorum {
    /// Starts three journals with data under `root` (wiped first) and waits until all three
    /// are voters and report the same leader.
    pub fn start(binary: &Path, root: &Path, cores: Option<usize>) -> Result<Quorum, String> {
        Self::start_with_config(binary, root, cores, "")
    }

    /// Like [`Quorum::start`], every journal reading `config` as its journal.toml.
    pub fn start_with_config(binary: &Path, root: &Path, cores: Option<usize>, config: &str) -> Result<Quorum, String> {
        let _ = std::fs::remove_dir_all(root);
        std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let (ca_cert, ca_key) = make_ca(&root.join("ca"))?;
        // A configuration file (empty unless given), so that no /etc/pact/journal.toml on this
        // machine counts.
        let config_text = config;
        let config = root.join("journal.toml");
        std::fs::write(&config, config_text).map_err(|e| format!("{}: {e}", config.display()))?;
        let secret = random_hex(32)?;
        let token = HmacVerifier::new(secret.as_bytes(), ISSUER, AUDIENCE).mint(
            "pact-perf",
            "pact-platform-admin",
            24 * 3600,
        )?;
        let tls = pact_proto::tls::client_config(&ca_cert).map_err(|e| e.to_string())?;
        let (ports, metrics) = free_ports(NODES)?;
        let peers = (0..NODES).map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[i])).collect::<Vec<_>>().join(",");
        let stem = root.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "quorum".into());
        let nodes = (0..NODES)
            .map(|i| Node {
                id: i as u64 + 1,
                endpoint: format!("127.0.0.1:{}", ports[i]),
                metrics: format!("127.0.0.1:{}", metrics[i]),
                data_dir: root.join(format!("journal-{}", i + 1)),
                log: root.with_file_name(format!("{stem}-journal-{}.log", i + 1)),
                child: None,
                learner: false,
            })
            .collect();
        let mut q = Quorum {
            binary: binary.to_path_buf(),
            cores,
            root: root.to_path_buf(),
            config,
            ca_cert,
            ca_key,
            secret,
            peers,
            nodes,
            token,
            tls,
        };
        for i in 0..NODES {
            let _ = std::fs::remove_file(&q.nodes[i].log);
            q.spawn(i, i == 0)?;
        }
        q.wait_healthy(Duration::from_secs(60))?;
        Ok(q)
    }

    fn spawn(&mut self, i: usize, bootstrap: bool) -> Result<(), String> {
        let n = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(|e| format!("{}: {e}", n.log.display()))?;
        let mut cmd = Command::new(&self.binary);
        // PACT_* from the caller's environment would change these journals; start from none.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PACT_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--metrics-listen")
            .arg(&n.metrics)
            .env("PACT_JOURNAL_NODE_ID", n.id.to_string())
            .env("PACT_JOURNAL_LISTEN", &n.endpoint)
            .env("PACT_JOURNAL_DATA_DIR", &n.data_dir)
            .env("PACT_JOURNAL_PEERS", &self.peers)
            .env("PACT_CA_CERT", &self.ca_cert)
            .env("PACT_CA_KEY", &self.ca_key)
            .env("PACT_OIDC_HMAC_SECRET", &self.secret)
            .env("PACT_OIDC_ISSUER", ISSUER)
            .env("PACT_OIDC_AUDIENCE", AUDIENCE)
            .env("PACT_LOG", crate::journal_proc::journal_log_level())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if bootstrap {
            cmd.arg("--bootstrap");
        }
        if n.learner {
            cmd.arg("--learner");
        }
        if let Some(c) = self.cores {
            cmd.arg("--cores").arg(c.to_string());
        }
        let child = cmd.spawn().map_err(|e| {
            format!("{}: {e} (build it with `cargo build --release -p pact-journal`)", self.binary.display())
        })?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// A client of node `i` (index into `nodes`).
    pub fn client(&self, i: usize, timeout: Duration) -> Result<Client, String> {
        Client::connect(&self.nodes[i].endpoint, self.tls.clone(), &self.token, timeout)
            .map_err(|e| format!("journal {}: {e}", self.nodes[i].id))
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.endpoint.clone()).collect()
    }

    pub fn status(&self, i: usize) -> Result<JournalStatus, String> {
        let mut c = self.client(i, Duration::from_secs(2))?;
        c.call(Method::JournalStatus, &JournalStatusRequest {})
            .map_err(|e| format!("journal {}: {e}", self.nodes[i].id))
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn check_running(&mut self) -> Result<(), String> {
        for n in &mut self.nodes {
            if let Some(c) = &mut n.child {
                if let Ok(Some(status)) = c.try_wait() {
                    n.child = None;
                    return Err(format!(
                        "journal {} exited ({status}); {}:\n{}",
                        n.id,
                        n.log.display(),
                        log_tail(&n.log)
                    ));
                }
            }
        }
        Ok(())
    }

    /// One look: every node running, all report the same leader, the leader has 3 voters
    /// and every follower has applied what the leader had committed a moment before.
    fn healthy(&self) -> Result<Health, String> {
        let st = (0..NODES).map(|i| self.status(i)).collect::<Result<Vec<_>, _>>()?;
        let leader = st[0].leader_id;
        if leader == 0 || st.iter().any(|s| s.leader_id != leader) {
            return Err(format!("leaders reported: {:?}", st.iter().map(|s| s.leader_id).collect::<Vec<_>>()));
        }
        let li = self.index_of(leader).ok_or_else(|| format!("leader {leader} is not one of ours"))?;
        let voters = st[li].members.iter().filter(|m| m.role == "voter").count();
        if voters != NODES {
            return Err(format!("the leader lists {voters} voters"));
        }
        let committed = st[li].commit_index;
        for i in (0..NODES).filter(|&i| i != li) {
            let s = self.status(i)?;
            if s.applied_index < committed || s.leader_id != leader {
                return Err(format!(
                    "journal {} has applied {} of the leader's {committed}",
                    self.nodes[i].id, s.applied_index
                ));
            }
        }
        Ok(Health { leader, term: st[li].term })
    }

    /// Waits until [`Quorum::healthy`] holds.
    pub fn wait_healthy(&mut self, limit: Duration) -> Result<Health, String> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_running()?;
            let why = match self.healthy() {
                Ok(h) => return Ok(h),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "the quorum did not become healthy in {}s ({why}); logs: {}",
                    limit.as_secs(),
                    self.nodes.iter().map(|n| n.log.display().to_string()).collect::<Vec<_>>().join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (`Child::kill`) of node `i`, then reaps it. Returns when the process is gone.
    pub fn kill(&mut self, i: usize) -> Result<(), String> {
        let mut c = self.nodes[i].child.take().ok_or_else(|| format!("journal {} is not running", self.nodes[i].id))?;
        c.kill().map_err(|e| format!("kill journal {}: {e}", self.nodes[i].id))?;
        c.wait().map_err(|e| format!("wait for journal {}: {e}", self.nodes[i].id))?;
        Ok(())
    }

    /// Starts node `i` again on its data dir and ports (never with `--bootstrap`). A port
    /// the killed process held may be refused for a moment: tries again a few times.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        for attempt in 0..5 {
            self.spawn(i, false)?;
            // A bind refusal shows within the journal's 3 s port probe plus start-up.
            let until = Instant::now() + Duration::from_secs(5);
            let mut exited = None;
            while Instant::now() < until {
                if let Some(Ok(Some(s))) = self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                    exited = Some(s);
                    break;
                }
                if self.status(i).is_ok() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            match exited {
                None => return Ok(()),
                Some(s) => {
                    self.nodes[i].child = None;
                    if attempt == 4 {
                        return Err(format!(
                            "journal {} did not restart ({s}); {}:\n{}",
                            self.nodes[i].id,
                            self.nodes[i].log.display(),
                            log_tail(&self.nodes[i].log)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        Ok(())
    }

    /// Starts `count` more journals (ids 4, 5, ...) with `--learner` and the quorum's
    /// `PACT_JOURNAL_PEERS`: each asks the leader over the Raft port to add it as a learner.
    /// Returns once the leader lists every one of them as a learner and each has applied
    /// what the leader had committed.
    pub fn add_learners(&mut self, count: usize, limit: Duration) -> Result<(), String> {
        let (ports, metrics) = free_ports(count)?;
        let stem = self.root.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "quorum".into());
        for k in 0..count {
            let id = (self.nodes.len() + 1) as u64;
            let log = self.root.with_file_name(format!("{stem}-journal-{id}.log"));
            let _ = std::fs::remove_file(&log);
            self.nodes.push(Node {
                id,
                endpoint: format!("127.0.0.1:{}", ports[k]),
                metrics: format!("127.0.0.1:{}", metrics[k]),
                data_dir: self.root.join(format!("journal-{id}")),
                log,
                child: None,
                learner: true,
            });
            let i = self.nodes.len() - 1;
            self.spawn(i, false)?;
        }
        let deadline = Instant::now() + limit;
        loop {
            self.check_running()?;
            let why = match self.learners_joined() {
                Ok(()) => match self.wait_all_applied(deadline.saturating_duration_since(Instant::now())) {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!("the learners did not join in {}s ({why})", limit.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn learners_joined(&self) -> Result<(), String> {
        let h = self.healthy()?;
        let li = self.index_of(h.leader).ok_or("no leader")?;
        let st = self.status(li)?;
        for n in self.nodes.iter().filter(|n| n.learner) {
            if !st.members.iter().any(|m| m.id == n.id && m.role == "learner") {
                return Err(format!("the leader does not list journal {} as a learner yet", n.id));
            }
        }
        Ok(())
    }

    /// Waits until every journal (voters and learners) has applied what the leader had
    /// committed when this was called.
    pub fn wait_all_applied(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let h = self.wait_healthy(limit)?;
        let li = self.index_of(h.leader).ok_or("no leader")?;
        let committed = self.status(li)?.commit_index;
        loop {
            self.check_running()?;
            let behind: Vec<String> = (0..self.nodes.len())
                .filter_map(|i| match self.status(i) {
                    Ok(s) if s.applied_index >= committed => None,
                    Ok(s) => Some(format!("journal {} at {}", self.nodes[i].id, s.applied_index)),
                    Err(e) => Some(e),
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not all journals applied index {committed}: {}", behind.join(", ")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where journal `i` keeps its TLS material (`ca.crt`, `server.crt`, `server.key`).
    pub fn tls_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].data_dir.join("tls")
    }

    /// User + system CPU seconds used so far, summed over the running journals.
    pub fn cpu_seconds(&self) -> f64 {
        self.nodes.iter().filter_map(|n| n.child.as_ref()).map(|c| proc_cpu_seconds(c.id())).sum()
    }
}

impl Drop for Quorum {
    fn drop(&mut self) {
        // SIGKILL: the data is thrown away, and SIGTERM'd members going down together
        // would only wait on each other.
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
