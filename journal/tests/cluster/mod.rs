//! Multi-journal test harness: N real `pact-journal` processes on loopback, each with its own
//! data dir, client port, Raft port, metrics port and journal.toml, one cluster CA (made here
//! with rcgen) and HMAC-signed tokens, plus:
//!
//! - faults: kill -9, SIGTERM, SIGSTOP/SIGCONT (through the `kill` command: no unsafe), restart
//!   on the same data dir, and a real network cut of a journal's Raft traffic;
//! - waits with deadlines (a leader, a settled cluster), never fixed long sleeps;
//! - a load generator (client threads that append, reconnect to another journal on error,
//!   and record what was acknowledged at which sequence) and the replica checks.
//!
//! ## The network cut
//!
//! Every journal's Raft address, as the others know it (`[journal.raft] members` and the
//! replicated address book), is a TCP proxy run by this harness; the journal itself listens on
//! its real Raft port (`--raft-listen`) behind it. A Raft link is one connection dialed by the
//! sender, so every Raft byte between two journals goes through the receiver's proxy. The
//! proxy knows the receiver; it finds the sender by looking up which journal process owns the
//! connecting socket (`/proc/net/tcp` inode → `/proc/<pid>/fd`). Cutting journal k closes every
//! proxied connection into or out of k and refuses (accepts and closes) new ones until healed,
//! so k neither hears nor is heard, as with a pulled cable.
//!
//! ## Ports, logs, failures
//!
//! Ports come from a block reserved per test process above the ephemeral range (lock files in
//! `$TMPDIR/pact-test-ports/`, taken over once their owner has exited), so concurrent test
//! runs do not collide. One cluster runs at a time per test process. Each journal logs to
//! `<work dir>/journal-<id>/journal.log` (`PACT_TEST_JOURNAL_LOG=debug` sets their `PACT_LOG`);
//! on a panic the harness prints every journal's status and the tail of its log, and keeps the
//! work dir. Journals are killed when the `Cluster` drops (not if the test process is killed).
#![allow(dead_code)]

use pact_proto::client::{CallError, Client};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::journal::{
    AppendEntryRequest, AppendEntryResponse, ChangeMembershipRequest, ChangeMembershipResponse, JournalStatus,
    JournalStatusRequest, ListEntriesRequest, MembershipAction,
};
use pact_proto::Method;
use prost::Message as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a call to a journal may take before the harness calls it failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ports are handed out in blocks of this many, one block reserved per test process at a time.
const PORT_BLOCK: u64 = 40;

/// A loopback port no one listens on, outside the kernel's ephemeral range, handed out once
/// per test process (as in `common/mod.rs`: a journal restarted on "its" port must not find a
/// stranger there). Taken above the ephemeral range (61000-65535 with Linux's defaults), away
/// from `common`'s region below it, from a block this process reserves (see [`reserve_block`]):
/// test processes running side by side (a second `cargo test`) never share a block.
pub fn free_port() -> u16 {
    static RANGE: Mutex<(u64, u64)> = Mutex::new((0, 0));
    let mut r = lock(&RANGE);
    loop {
        if r.0 >= r.1 {
            let start = reserve_block();
            *r = (start, start + PORT_BLOCK);
        }
        let p = r.0 as u16;
        r.0 += 1;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpStream::connect(("127.0.0.1", p)).is_err() {
            return p;
        }
    }
}

/// Reserves a block of ports for this process: a file named after the block's first port in
/// `$TMPDIR/pact-test-ports/`, created exclusively, holding the owner's pid. A block whose
/// owner is no longer running is taken over.
fn reserve_block() -> u64 {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let (start, end) = if 65535 - hi >= 2000 { (hi + 1, 65535) } else { (20_000.min(lo / 2), lo) };
    let slots = ((end - start) / PORT_BLOCK).max(1);
    let dir = std::env::temp_dir().join("pact-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let me = std::process::id();
    let claim = |f: &Path| {
        let mut h = std::fs::OpenOptions::new().write(true).create_new(true).open(f).ok()?;
        h.write_all(me.to_string().as_bytes()).ok()
    };
    for k in 0..slots {
        let first = start + (me as u64 + k) % slots * PORT_BLOCK;
        let f = dir.join(first.to_string());
        if claim(&f).is_some() {
            return first;
        }
        let owner = std::fs::read_to_string(&f).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = owner {
            if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(&f);
                if claim(&f).is_some() {
                    return first;
                }
            }
        }
    }
    panic!("no free block of test ports in {start}..{end} (see {})", dir.display());
}

/// A number unique in this test process (for names).
fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::SeqCst)
}

pub fn journal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pact-journal"))
}

/// Panics with `what` (and the cluster's logs, printed by its Drop) when `f` has not returned
/// Some before the deadline.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// The network: proxies in front of every journal's Raft port.

struct ProxyConn {
    id: u64,
    src: Option<u64>,
    dst: u64,
    down: TcpStream,
    up: TcpStream,
}

#[derive(Default)]
struct NetState {
    isolated: HashSet<u64>,
    conns: Vec<ProxyConn>,
}

impl NetState {
    fn allowed(&self, src: Option<u64>, dst: u64) -> bool {
        if self.isolated.contains(&dst) {
            return false;
        }
        match src {
            Some(s) => !self.isolated.contains(&s),
            // An unidentified sender only passes while nobody is cut off.
            None => self.isolated.is_empty(),
        }
    }

    /// Closes every proxied connection a cut now forbids.
    fn enforce(&self) {
        for c in self.conns.iter().filter(|c| !self.allowed(c.src, c.dst)) {
            let _ = c.down.shutdown(Shutdown::Both);
            let _ = c.up.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Default)]
pub struct Net {
    state: Mutex<NetState>,
    /// Journal id → pid of its running process (to tell who dials).
    pids: Mutex<HashMap<u64, u32>>,
    next_conn: AtomicU64,
    stop: AtomicBool,
    /// Connections refused because of a cut, and connections proxied (for reports).
    pub refused: AtomicU64,
    pub proxied: AtomicU64,
    /// Connections whose sender could not be identified.
    pub unidentified: AtomicU64,
}

impl Net {
    pub fn isolate(&self, id: u64) {
        let mut s = lock(&self.state);
        s.isolated.insert(id);
        s.enforce();
    }

    pub fn heal(&self, id: u64) {
        lock(&self.state).isolated.remove(&id);
    }

    pub fn heal_all(&self) {
        lock(&self.state).isolated.clear();
    }

    fn shutdown_all(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let s = lock(&self.state);
        for c in &s.conns {
            let _ = c.down.shutdown(Shutdown::Both);
            let _ = c.up.shutdown(Shutdown::Both);
        }
    }

    /// Which journal owns the client end of a connection from `peer_port` to `listen_port`.
    fn identify(&self, peer_port: u16, listen_port: u16) -> Option<u64> {
        for _ in 0..10 {
            if let Some(inode) = socket_inode(peer_port, listen_port) {
                let target = format!("socket:[{inode}]");
                let pids: Vec<(u64, u32)> = lock(&self.pids).iter().map(|(a, b)| (*a, *b)).collect();
                for (id, pid) in pids {
                    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                        for e in rd.flatten() {
                            if std::fs::read_link(e.path()).map(|l| l.as_os_str() == target.as_str()).unwrap_or(false) {
                                return Some(id);
                            }
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

/// The inode of the TCP socket whose local port is `local` and remote port `remote`.
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    let port = |s: &str| u16::from_str_radix(s.rsplit(':').next()?, 16).ok();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && port(cols[1]) == Some(local) && port(cols[2]) == Some(remote) {
                if let Ok(inode) = cols[9].parse::<u64>() {
                    if inode != 0 {
                        return Some(inode);
                    }
                }
            }
        }
    }
    None
}

fn proxy_accept_loop(net: Arc<Net>, listener: TcpListener, dst: u64, upstream: u16) {
    let listen_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    listener.set_nonblocking(true).expect("nonblocking proxy listener");
    while !net.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, peer)) => {
                let net = net.clone();
                std::thread::spawn(move || proxy_conn(net, s, peer, listen_port, dst, upstream));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn proxy_conn(net: Arc<Net>, down: TcpStream, peer: SocketAddr, listen_port: u16, dst: u64, upstream: u16) {
    let _ = down.set_nonblocking(false);
    let src = net.identify(peer.port(), listen_port);
    if src.is_none() {
        net.unidentified.fetch_add(1, Ordering::Relaxed);
    }
    if !lock(&net.state).allowed(src, dst) {
        net.refused.fetch_add(1, Ordering::Relaxed);
        let _ = down.shutdown(Shutdown::Both);
        return;
    }
    let Ok(up) = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], upstream)), Duration::from_secs(1))
    else {
        let _ = down.shutdown(Shutdown::Both);
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    let id = net.next_conn.fetch_add(1, Ordering::SeqCst);
    let (Ok(d2), Ok(u2), Ok(d3), Ok(u3)) = (down.try_clone(), up.try_clone(), down.try_clone(), up.try_clone()) else {
        return;
    };
    {
        // Checked again under the lock a cut takes, so a connection never slips past a cut.
        let mut s = lock(&net.state);
        if !s.allowed(src, dst) || net.stop.load(Ordering::SeqCst) {
            net.refused.fetch_add(1, Ordering::Relaxed);
            let _ = down.shutdown(Shutdown::Both);
            let _ = up.shutdown(Shutdown::Both);
            return;
        }
        s.conns.push(ProxyConn { id, src, dst, down: d3, up: u3 });
    }
    net.proxied.fetch_add(1, Ordering::Relaxed);
    let back = std::thread::spawn(move || pump(u2, d2));
    pump(down, up);
    let _ = back.join();
    lock(&net.state).conns.retain(|c| c.id != id);
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// Journals.

pub struct Node {
    pub id: u64,
    pub client_port: u16,
    /// Where the journal listens for Raft (`--raft-listen`).
    pub raft_port: u16,
    /// Its Raft address as every other journal knows it (the proxy in front of raft_port).
    pub proxy_port: u16,
    pub metrics_port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// SIGSTOPped and not yet continued.
    pub frozen: bool,
    /// Pass --bootstrap at the next start (node 1's first start only).
    bootstrap_next: bool,
    /// Pass --learner at every start: the journal asks the quorum to add it as a learner.
    pub learner: bool,
    /// The journals its configuration names (written at each start).
    listed: Vec<u64>,
    proxy: Option<JoinHandle<()>>,
}

impl Node {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    pub fn raft_addr(&self) -> String {
        format!("127.0.0.1:{}", self.proxy_port)
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("journal.log")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("journal.toml")
    }
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// `[journal.raft] snapshot_interval` (the journal's default when None).
    pub snapshot_interval: Option<u64>,
    /// `--cores` for every journal (the journal's default, all online CPUs, when None).
    pub cores: Option<usize>,
    /// `[journal.raft] election_tick` (the journal's default when None).
    pub election_tick: Option<usize>,
}

pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    ca_key: PathBuf,
    secret: String,
    issuer: String,
    audience: String,
    pub token: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub nodes: BTreeMap<u64, Node>,
    pub net: Arc<Net>,
    pub opts: Opts,
    started: Instant,
    /// One cluster at a time per test process: tests in one file run one after the other
    /// instead of sharing the CPUs (released after Drop has stopped the journals).
    _one_at_a_time: MutexGuard<'static, ()>,
}

pub const ISSUER: &str = "pact-cluster-test";
pub const AUDIENCE: &str = "pact";
pub const SUBJECT: &str = "tester";

impl Cluster {
    /// Makes the CA, token and n journals (node 1 founds with --bootstrap and invites the
    /// others), starts them all and waits until every one of them is a voter that has applied
    /// the same index.
    pub fn start(name: &str, n: u64, opts: Opts) -> Cluster {
        let mut c = Cluster::new(name, opts);
        for id in 1..=n {
            c.add_node(id, (1..=n).collect());
        }
        c.nodes.get_mut(&1).unwrap().bootstrap_next = true;
        for id in 1..=n {
            c.spawn(id);
        }
        c.wait_leader(Duration::from_secs(30));
        let ids: Vec<u64> = (1..=n).collect();
        wait_for("every founding journal to be a voter", Duration::from_secs(30), || {
            let l = c.leader()?;
            let st = c.status(l).ok()?;
            let voters: Vec<u64> = st.members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect();
            (voters == ids).then_some(())
        });
        c.wait_settled(Duration::from_secs(30));
        c
    }

    pub fn new(name: &str, opts: Opts) -> Cluster {
        static ONE: Mutex<()> = Mutex::new(());
        let one_at_a_time = lock(&ONE);
        let dir = std::env::temp_dir().join(format!("pact-cluster-{name}-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        make_ca(&ca_cert, &ca_key);
        let secret = format!("cluster-test-secret-{}-{}-{:?}", std::process::id(), unique(), Instant::now());
        let token = pact_proto::auth::HmacVerifier::new(secret.as_bytes(), ISSUER, AUDIENCE)
            .mint(SUBJECT, "pact-platform-admin", 3600)
            .unwrap();
        let tls = pact_proto::tls::client_config(&ca_cert).unwrap();
        Cluster {
            name: name.into(),
            dir,
            ca_cert,
            ca_key,
            secret,
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            token,
            tls,
            nodes: BTreeMap::new(),
            net: Arc::new(Net::default()),
            opts,
            started: Instant::now(),
            _one_at_a_time: one_at_a_time,
        }
    }

    /// Seconds since the cluster was made (for progress lines).
    pub fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn say(&self, what: &str) {
        eprintln!("[{:>6.2}s {}] {what}", self.t(), self.name);
    }

    /// Makes journal `id` (ports, proxy, data dir, journal.toml naming `listed`, which must
    /// include `id` and journals already made), without starting it.
    pub fn add_node(&mut self, id: u64, listed: Vec<u64>) {
        assert!(!self.nodes.contains_key(&id), "journal {id} exists");
        let dir = self.dir.join(format!("journal-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (client_port, raft_port, metrics_port) = (free_port(), free_port(), free_port());
        let listener = loop {
            if let Ok(l) = TcpListener::bind(("127.0.0.1", free_port())) {
                break l;
            }
        };
        let proxy_port = listener.local_addr().unwrap().port();
        let net = self.net.clone();
        let proxy = std::thread::spawn(move || proxy_accept_loop(net, listener, id, raft_port));
        self.nodes.insert(
            id,
            Node {
                id,
                client_port,
                raft_port,
                proxy_port,
                metrics_port,
                dir,
                child: None,
                frozen: false,
                bootstrap_next: false,
                learner: false,
                listed,
                proxy: Some(proxy),
            },
        );
    }

    fn write_config(&self, id: u64) {
        let listed = &self.nodes[&id].listed;
        let members: Vec<String> =
            listed.iter().map(|i| format!("\"{i}:127.0.0.1:{}\"", self.nodes[i].proxy_port)).collect();
        let mut toml = format!("[journal.raft]\nmembers = [{}]\n", members.join(", "));
        if let Some(n) = self.opts.snapshot_interval {
            toml.push_str(&format!("snapshot_interval = {n}\n"));
        }
        if let Some(n) = self.opts.election_tick {
            toml.push_str(&format!("election_tick = {n}\n"));
        }
        let peers: Vec<String> =
            listed.iter().map(|i| format!("{i}=127.0.0.1:{}", self.nodes[i].client_port)).collect();
        std::fs::write(self.nodes[&id].config_path(), toml).unwrap();
        std::fs::write(self.nodes[&id].dir.join("peers"), peers.join(",")).unwrap();
    }

    /// Starts journal `id`'s process (on its existing data dir, if any). Does not wait.
    pub fn spawn(&mut self, id: u64) {
        self.write_config(id);
        let opts = self.opts.clone();
        let (ca_cert, ca_key) = (self.ca_cert.clone(), self.ca_key.clone());
        let (secret, issuer, audience) = (self.secret.clone(), self.issuer.clone(), self.audience.clone());
        let n = self.nodes.get_mut(&id).expect("no such journal");
        assert!(n.child.is_none(), "journal {id} is already running");
        let peers = std::fs::read_to_string(n.dir.join("peers")).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(n.log_path()).unwrap();
        {
            let mut l = &log;
            let _ = writeln!(l, "----- harness: starting journal {id} -----");
        }
        let mut cmd = Command::new(journal_bin());
        cmd.arg("--config")
            .arg(n.config_path())
            .arg("--data-dir")
            .arg(n.data_dir())
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(n.endpoint())
            .arg("--peers")
            .arg(peers.trim())
            .arg("--raft-listen")
            .arg(format!("127.0.0.1:{}", n.raft_port))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", n.metrics_port));
        if let Some(c) = opts.cores {
            cmd.arg("--cores").arg(c.to_string());
        }
        if n.bootstrap_next {
            cmd.arg("--bootstrap");
            n.bootstrap_next = false;
        }
        if n.learner {
            cmd.arg("--learner");
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("PACT_") {
                cmd.env_remove(k);
            }
        }
        // PACT_TEST_JOURNAL_LOG=debug (say) sets the journals' PACT_LOG, for digging into a failure.
        if let Ok(level) = std::env::var("PACT_TEST_JOURNAL_LOG") {
            cmd.env("PACT_LOG", level);
        }
        let child = cmd
            .env("PACT_CA_CERT", ca_cert)
            .env("PACT_CA_KEY", ca_key)
            .env("PACT_OIDC_HMAC_SECRET", secret)
            .env("PACT_OIDC_ISSUER", issuer)
            .env("PACT_OIDC_AUDIENCE", audience)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start pact-journal");
        lock(&self.net.pids).insert(id, child.id());
        n.child = Some(child);
        n.frozen = false;
    }

    /// Starts journal `id` and waits until it answers a status call.
    pub fn start_node(&mut self, id: u64) {
        self.spawn(id);
        self.wait_answers(id, Duration::from_secs(30));
    }

    pub fn wait_answers(&mut self, id: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.assert_alive(id);
            if self.status(id).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "journal {id} does not answer after {within:?}");
            std::thread::sleep(POLL);
        }
    }

    /// Panics (with its log) if journal `id` was started and has exited.
    pub fn assert_alive(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).unwrap();
        if let Some(c) = n.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                let log = std::fs::read_to_string(n.log_path()).unwrap_or_default();
                n.child = None;
                panic!("journal {id} exited with {st}:\n{}", tail(&log, 60));
            }
        }
    }

    /// Every started journal is still running (none crashed).
    pub fn assert_all_alive(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.assert_alive(id);
        }
    }

    pub fn kill9(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).unwrap();
        if let Some(mut c) = n.child.take() {
            if n.frozen {
                let _ = Command::new("kill").arg("-CONT").arg(c.id().to_string()).status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        n.frozen = false;
        lock(&self.net.pids).remove(&id);
    }

    /// SIGTERM and wait for the exit (kill -9 after 20 s); returns the exit status.
    pub fn terminate(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let n = self.nodes.get_mut(&id).unwrap();
        let mut c = n.child.take()?;
        if n.frozen {
            let _ = Command::new("kill").arg("-CONT").arg(c.id().to_string()).status();
            n.frozen = false;
        }
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Ok(Some(st)) = c.try_wait() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                break c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        lock(&self.net.pids).remove(&id);
        st
    }

    /// SIGSTOP: the process stays, its sockets stay open, it does nothing.
    pub fn freeze(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).unwrap();
        let pid = n.pid().expect("journal not running");
        assert!(Command::new("kill").arg("-STOP").arg(pid.to_string()).status().unwrap().success());
        n.frozen = true;
    }

    pub fn thaw(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).unwrap();
        let pid = n.pid().expect("journal not running");
        assert!(Command::new("kill").arg("-CONT").arg(pid.to_string()).status().unwrap().success());
        n.frozen = false;
    }

    /// Cuts journal `id`'s Raft traffic to and from every other journal.
    pub fn cut(&self, id: u64) {
        self.net.isolate(id);
    }

    pub fn heal(&self, id: u64) {
        self.net.heal(id);
    }

    pub fn client(&self, id: u64) -> Result<Client, CallError> {
        self.client_with_timeout(id, CALL_TIMEOUT)
    }

    pub fn client_with_timeout(&self, id: u64, timeout: Duration) -> Result<Client, CallError> {
        Client::connect(&self.nodes[&id].endpoint(), self.tls.clone(), &self.token, timeout)
    }

    pub fn status(&self, id: u64) -> Result<JournalStatus, String> {
        let n = &self.nodes[&id];
        if !n.running() || n.frozen {
            return Err(format!("journal {id} is not running"));
        }
        let mut c = self.client_with_timeout(id, STATUS_TIMEOUT).map_err(|e| e.to_string())?;
        c.call(Method::JournalStatus, &JournalStatusRequest {}).map_err(|e| e.to_string())
    }

    /// One value from journal `id`'s /metrics.
    pub fn metric(&self, id: u64, name: &str) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.nodes[&id].metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} from journal {id}: {text}"))
    }

    /// Whether the harness runs journal `id` and has not stopped it.
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes.get(&id).map(|n| n.running() && !n.frozen).unwrap_or(false)
    }

    /// Running, not frozen.
    pub fn live(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.running() && !n.frozen).map(|n| n.id).collect()
    }

    /// The leader, as the journals see it now: a journal that says it leads, whose term and
    /// leadership a majority of its voters (counting itself) confirm. None when there is none.
    pub fn leader(&self) -> Option<u64> {
        let sts: Vec<JournalStatus> = self.live().into_iter().filter_map(|id| self.status(id).ok()).collect();
        let mut best: Option<&JournalStatus> = None;
        for s in sts.iter().filter(|s| s.role == "leader" && s.leader_id == s.node_id) {
            if best.map(|b| s.term > b.term).unwrap_or(true) {
                best = Some(s);
            }
        }
        let l = best?;
        let voters: Vec<u64> = l.members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect();
        let agree =
            sts.iter().filter(|s| voters.contains(&s.node_id) && s.leader_id == l.node_id && s.term == l.term).count();
        (agree > voters.len() / 2).then_some(l.node_id)
    }

    pub fn wait_leader(&self, within: Duration) -> u64 {
        wait_for("a leader", within, || self.leader())
    }

    /// Waits for a leader other than `old`.
    pub fn wait_new_leader(&self, old: u64, within: Duration) -> u64 {
        wait_for(&format!("a leader other than {old}"), within, || self.leader().filter(|l| *l != old))
    }

    /// Waits until the cluster is quiet and converged: a leader, and every member of its
    /// membership that is up (not killed or stopped by the harness) answers with the same
    /// commit index, applied index and last sequence, the leader has committed its whole log;
    /// twice in a row. Returns the leader's status.
    pub fn wait_settled(&self, within: Duration) -> JournalStatus {
        let mut last: Option<(u64, u64)> = None;
        let mut why = String::new();
        let deadline = Instant::now() + within;
        loop {
            match self.settled_once() {
                Ok(st) => {
                    let key = (st.applied_index, st.last_sequence);
                    if last == Some(key) {
                        return st;
                    }
                    last = Some(key);
                }
                Err(e) => {
                    why = e;
                    last = None;
                }
            }
            if Instant::now() > deadline {
                panic!("the cluster did not settle within {within:?}: {why}\n{}", self.status_table());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn settled_once(&self) -> Result<JournalStatus, String> {
        let l = self.leader().ok_or("no leader")?;
        let ls = self.status(l)?;
        if ls.commit_index != ls.last_log_index {
            return Err(format!("the leader has committed {} of {}", ls.commit_index, ls.last_log_index));
        }
        for m in ls.members.iter().filter(|m| self.is_up(m.id)) {
            let s = self.status(m.id).map_err(|e| format!("member {}: {e}", m.id))?;
            if (s.commit_index, s.applied_index, s.last_sequence)
                != (ls.commit_index, ls.applied_index, ls.last_sequence)
            {
                return Err(format!(
                    "member {}: commit {} applied {} last_seq {}; leader {l}: commit {} applied {} last_seq {}",
                    m.id,
                    s.commit_index,
                    s.applied_index,
                    s.last_sequence,
                    ls.commit_index,
                    ls.applied_index,
                    ls.last_sequence
                ));
            }
        }
        Ok(ls)
    }

    /// Waits until journal `id` has applied at least what the leader had committed when this
    /// was called (under load: it keeps up).
    pub fn wait_caught_up(&self, id: u64, within: Duration) {
        let target = wait_for("the leader's commit index", within, || {
            let l = self.leader()?;
            self.status(l).ok().map(|s| s.commit_index)
        });
        wait_for(&format!("journal {id} to apply index {target}"), within, || {
            self.status(id).ok().filter(|s| s.applied_index >= target).map(|_| ())
        });
    }

    /// A membership change through journal `via` (forwarded to the leader). Retries while the
    /// outcome is unknown (leader change, a change in progress) until `done` holds for the
    /// leader's membership.
    pub fn change_membership(
        &self,
        via: u64,
        req: ChangeMembershipRequest,
        done: impl Fn(&JournalStatus) -> bool,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        let mut errors = Vec::new();
        loop {
            let r: Result<ChangeMembershipResponse, String> = self
                .client(via)
                .map_err(|e| e.to_string())
                .and_then(|mut c| c.call(Method::ChangeMembership, &req).map_err(|e| e.to_string()));
            if let Err(e) = &r {
                errors.push(e.clone());
            }
            let ok = wait_until(Duration::from_secs(3), || {
                self.leader().and_then(|l| self.status(l).ok()).map(|s| done(&s)).unwrap_or(false)
            });
            if ok {
                if !errors.is_empty() {
                    self.say(&format!("membership change {req:?} done after errors: {errors:?}"));
                }
                return;
            }
            assert!(Instant::now() < deadline, "membership change {req:?} not done in {within:?}: {errors:?}");
        }
    }

    pub fn add_learner(&self, via: u64, id: u64) {
        let n = &self.nodes[&id];
        let req = ChangeMembershipRequest {
            action: MembershipAction::AddLearner as i32,
            node_id: id,
            raft_addr: n.raft_addr(),
            client_addr: n.endpoint(),
        };
        self.change_membership(via, req, |s| has_member(s, id, "learner"), Duration::from_secs(30));
    }

    pub fn add_voter(&self, via: u64, id: u64) {
        let n = &self.nodes[&id];
        let req = ChangeMembershipRequest {
            action: MembershipAction::AddVoter as i32,
            node_id: id,
            raft_addr: n.raft_addr(),
            client_addr: n.endpoint(),
        };
        self.change_membership(via, req, |s| has_member(s, id, "voter"), Duration::from_secs(30));
    }

    pub fn promote(&self, via: u64, id: u64) {
        let req =
            ChangeMembershipRequest { action: MembershipAction::Promote as i32, node_id: id, ..Default::default() };
        self.change_membership(via, req, |s| has_member(s, id, "voter"), Duration::from_secs(30));
    }

    pub fn remove(&self, via: u64, id: u64) {
        let req =
            ChangeMembershipRequest { action: MembershipAction::Remove as i32, node_id: id, ..Default::default() };
        self.change_membership(via, req, |s| !s.members.iter().any(|m| m.id == id), Duration::from_secs(30));
    }

    /// Every entry journal `id` holds, oldest first, from its own replica (paged).
    pub fn entries(&self, id: u64) -> Vec<ConfigEntry> {
        let mut c = self.client(id).unwrap_or_else(|e| panic!("connect to journal {id}: {e}"));
        let mut all: Vec<ConfigEntry> = Vec::new();
        loop {
            let from = all.last().map(|e| e.sequence + 1).unwrap_or(1);
            let page: Vec<ConfigEntry> = c
                .call_stream(
                    Method::ListEntries,
                    &ListEntriesRequest {
                        limit: 10_000,
                        oldest_first: true,
                        from_sequence: Some(from),
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("list entries on journal {id}: {e}"));
            let done = page.len() < 10_000;
            all.extend(page);
            if done {
                return all;
            }
        }
    }

    /// Appends one entry through journal `id` and records it in `log` (acknowledged or not).
    pub fn append_via(&self, id: u64, log: &Mutex<LoadLog>, label: &str) -> Result<u64, CallError> {
        lock(log).sent.insert(label.to_string());
        let r: Result<AppendEntryResponse, CallError> = self
            .client(id)
            .and_then(|mut c| c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(entry_for(label)) }));
        match &r {
            Ok(a) => lock(log).ack(label, a.sequence),
            Err(e) => lock(log).errored.push((label.to_string(), e.to_string())),
        }
        r.map(|a| a.sequence)
    }

    pub fn endpoints(&self, ids: &[u64]) -> Vec<String> {
        ids.iter().map(|i| self.nodes[i].endpoint()).collect()
    }

    /// The proxies' counters, for progress lines.
    pub fn net_report(&self) -> String {
        format!(
            "raft connections: {} proxied, {} refused by cuts, {} from an unidentified sender",
            self.net.proxied.load(Ordering::Relaxed),
            self.net.refused.load(Ordering::Relaxed),
            self.net.unidentified.load(Ordering::Relaxed)
        )
    }

    /// One line per journal: its own view (role, term, leader, indexes, members).
    pub fn status_table(&self) -> String {
        let mut out = String::new();
        for id in self.nodes.keys() {
            let line = match self.status(*id) {
                Ok(s) => format!(
                    "  {id}: {} term {} leader {} commit {} applied {} last_seq {} log {}..={} snap {} members {:?}",
                    s.role,
                    s.term,
                    s.leader_id,
                    s.commit_index,
                    s.applied_index,
                    s.last_sequence,
                    s.first_log_index,
                    s.last_log_index,
                    s.snapshot_index,
                    s.members.iter().map(|m| format!("{}:{}", m.id, m.role)).collect::<Vec<_>>()
                ),
                Err(e) => format!("  {id}: {e}"),
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    fn dump_logs(&self) {
        eprintln!("===== journal status at the failure =====\n{}", self.status_table());
        for n in self.nodes.values() {
            let log = std::fs::read_to_string(n.log_path()).unwrap_or_default();
            eprintln!("===== journal {} log ({}), last lines =====\n{}", n.id, n.log_path().display(), tail(&log, 40));
        }
        eprintln!("cluster work dir kept: {}", self.dir.display());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill9(id);
        }
        self.net.shutdown_all();
        for n in self.nodes.values_mut() {
            if let Some(p) = n.proxy.take() {
                let _ = p.join();
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn has_member(s: &JournalStatus, id: u64, role: &str) -> bool {
    s.members.iter().any(|m| m.id == id && m.role == role)
}

/// Polls `f` until true or the time is up; returns whether it became true.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn make_ca(cert: &Path, key: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let k = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "pact cluster test CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let c = p.self_signed(&k).unwrap();
    std::fs::write(cert, c.pem()).unwrap();
    std::fs::write(key, k.serialize_pem()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// What the clients write, and the checks.

pub const VCLUSTER: &str = "quorum-test";

/// A deterministic payload per label, so a replica's copy can be checked byte for byte.
pub fn policy_ref_for(label: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{label} payload-{h:016x}-{}", "x".repeat((h % 64) as usize))
}

pub fn entry_for(label: &str) -> ConfigEntry {
    ConfigEntry {
        entry_type: EntryType::Commit as i32,
        scope: Some(Scope { target: Some(Target::VclusterId(VCLUSTER.into())) }),
        policy_ref: policy_ref_for(label),
        ..Default::default()
    }
}

#[derive(Default, Clone)]
pub struct LoadLog {
    /// label → the sequence it was acknowledged with.
    pub acked: HashMap<String, u64>,
    /// Appends that failed (their fate unknown): label, error.
    pub errored: Vec<(String, String)>,
    /// Every label ever sent.
    pub sent: HashSet<String>,
    /// Sequences acknowledged twice (must stay empty).
    pub duplicate_seqs: Vec<(u64, String, String)>,
    by_seq: HashMap<u64, String>,
}

impl LoadLog {
    pub fn ack(&mut self, label: &str, seq: u64) {
        if let Some(other) = self.by_seq.insert(seq, label.to_string()) {
            self.duplicate_seqs.push((seq, other, label.to_string()));
        }
        self.acked.insert(label.to_string(), seq);
    }
}

/// Client threads appending without pause, each starting on its own journal; on an error the
/// client drops its connection and the next append goes to the next journal in the list.
pub struct Load {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    paused: Arc<AtomicUsize>,
    pub endpoints: Arc<Mutex<Vec<String>>>,
    pub log: Arc<Mutex<LoadLog>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(c: &Cluster, clients: usize, endpoints: Vec<String>) -> Load {
        let mut l = Load {
            stop: Arc::default(),
            pause: Arc::default(),
            paused: Arc::default(),
            endpoints: Arc::new(Mutex::new(endpoints)),
            log: Arc::default(),
            threads: Vec::new(),
        };
        for w in 0..clients {
            let (stop, pause, paused, endpoints, log) =
                (l.stop.clone(), l.pause.clone(), l.paused.clone(), l.endpoints.clone(), l.log.clone());
            let (tls, token) = (c.tls.clone(), c.token.clone());
            l.threads.push(std::thread::spawn(move || {
                let mut target = w;
                let mut client: Option<Client> = None;
                for i in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if pause.load(Ordering::SeqCst) {
                        paused.fetch_add(1, Ordering::SeqCst);
                        while pause.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        paused.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    if client.is_none() {
                        let ep = {
                            let eps = lock(&endpoints);
                            eps[target % eps.len()].clone()
                        };
                        match Client::connect(&ep, tls.clone(), &token, CALL_TIMEOUT) {
                            Ok(c) => client = Some(c),
                            Err(_) => {
                                target += 1;
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                    }
                    let label = format!("w{w}-{i}");
                    lock(&log).sent.insert(label.clone());
                    let r: Result<AppendEntryResponse, CallError> = client
                        .as_mut()
                        .unwrap()
                        .call(Method::AppendEntry, &AppendEntryRequest { entry: Some(entry_for(&label)) });
                    match r {
                        Ok(a) => lock(&log).ack(&label, a.sequence),
                        Err(e) => {
                            lock(&log).errored.push((label, e.to_string()));
                            client = None;
                            target += 1;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            }));
        }
        l
    }

    pub fn acked(&self) -> usize {
        lock(&self.log).acked.len()
    }

    pub fn errors(&self) -> usize {
        lock(&self.log).errored.len()
    }

    /// Waits until `n` more appends have been acknowledged (the cluster makes progress).
    pub fn wait_progress(&self, n: usize, within: Duration) {
        let start = self.acked();
        wait_for(&format!("{n} more acknowledged appends (had {start})"), within, || {
            (self.acked() >= start + n).then_some(())
        });
    }

    /// Stops every client between two appends (none in flight) and waits until they are.
    pub fn pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        let n = self.threads.len();
        wait_for("the clients to pause", Duration::from_secs(30), || {
            (self.paused.load(Ordering::SeqCst) == n).then_some(())
        });
    }

    pub fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }

    pub fn set_endpoints(&self, eps: Vec<String>) {
        *lock(&self.endpoints) = eps;
    }

    pub fn stop(mut self) -> LoadLog {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        lock(&self.log).clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Whether an append's error says it was refused before it reached the Raft log (so it must
/// never appear: a client retrying it would write it twice).
pub fn definitely_not_applied(error: &str) -> bool {
    ["retry shortly", "the journal is shutting down", "the raft shard is not running"].iter().any(|m| error.contains(m))
        || error.starts_with("refused:")
}

/// What a check saw.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The journals checked.
    pub journals: Vec<u64>,
    pub entries: usize,
    pub acked: usize,
    pub errored: usize,
    /// Entries present whose append was not acknowledged (in flight at a failure).
    pub unacked_present: usize,
    /// Errored appends whose error said they were refused (never applied).
    pub refused: usize,
}

/// On every journal in `ids`: sequences 1..=N without a gap; every acknowledged append present
/// exactly once, at its acknowledged sequence, with its payload; every present entry one that a
/// client sent, once; timestamps never going backwards; and all replicas identical.
pub fn check_replicas(c: &Cluster, ids: &[u64], log: &LoadLog, when: &str) -> Checked {
    assert!(
        log.duplicate_seqs.is_empty(),
        "{when}: one sequence acknowledged for two appends: {:?}",
        log.duplicate_seqs
    );
    let refused: HashMap<&str, &str> =
        log.errored.iter().filter(|(_, e)| definitely_not_applied(e)).map(|(l, e)| (l.as_str(), e.as_str())).collect();
    let mut reference: Option<(u64, Vec<ConfigEntry>)> = None;
    let mut unacked_present = 0;
    for &id in ids {
        let entries = c.entries(id);
        let mut seen: HashSet<&str> = HashSet::new();
        let mut last_ts = (i64::MIN, 0u32);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.sequence, i as u64 + 1, "{when}: journal {id}: sequence gap at position {i}");
            let label = e.policy_ref.split(' ').next().unwrap_or_default();
            assert!(log.sent.contains(label), "{when}: journal {id}: entry {} ({label:?}) was never sent", e.sequence);
            if let Some(err) = refused.get(label) {
                panic!(
                    "{when}: journal {id}: {label} (sequence {}) is present, but its append was refused: {err}",
                    e.sequence
                );
            }
            assert!(seen.insert(label), "{when}: journal {id}: {label} appears twice (second at {})", e.sequence);
            assert_eq!(e.policy_ref, policy_ref_for(label), "{when}: journal {id}: {label}'s payload differs");
            let expected = entry_for(label);
            assert_eq!(
                (e.entry_type, &e.scope),
                (expected.entry_type, &expected.scope),
                "{when}: journal {id}: {label}"
            );
            assert_eq!(e.author.as_ref().map(|a| a.principal.as_str()), Some(SUBJECT), "{when}: journal {id}: author");
            let ts = e.timestamp.map(|t| (t.seconds, t.nanos)).unwrap_or_default();
            assert!(ts >= last_ts, "{when}: journal {id}: timestamp goes backwards at {}", e.sequence);
            last_ts = ts;
        }
        for (label, seq) in &log.acked {
            let got = entries.get((*seq as usize).wrapping_sub(1));
            let at = got.map(|e| e.policy_ref.split(' ').next().unwrap_or_default());
            assert_eq!(
                at,
                Some(label.as_str()),
                "{when}: journal {id}: acknowledged {label} (sequence {seq}) is not at its sequence (journal holds {} entries)",
                entries.len()
            );
        }
        let here_unacked = seen.iter().filter(|l| !log.acked.contains_key(**l)).count();
        match &reference {
            None => {
                unacked_present = here_unacked;
                reference = Some((id, entries));
            }
            Some((rid, r)) => {
                assert_eq!(
                    r.len(),
                    entries.len(),
                    "{when}: journal {id} holds {} entries, journal {rid} {}",
                    entries.len(),
                    r.len()
                );
                for (a, b) in r.iter().zip(&entries) {
                    assert!(
                        a.encode_to_vec() == b.encode_to_vec(),
                        "{when}: journals {rid} and {id} differ at sequence {}: {a:?} vs {b:?}",
                        a.sequence
                    );
                }
            }
        }
    }
    let n = reference.map(|(_, r)| r.len()).unwrap_or(0);
    Checked {
        journals: ids.to_vec(),
        entries: n,
        acked: log.acked.len(),
        errored: log.errored.len(),
        unacked_present,
        refused: refused.len(),
    }
}

/// Pauses the clients, waits for the cluster to settle, checks every member of the leader's
/// membership, resumes the clients.
pub fn settle_and_check(c: &Cluster, load: &Load, when: &str) -> Checked {
    load.pause();
    let st = c.wait_settled(Duration::from_secs(30));
    let ids: Vec<u64> = st.members.iter().map(|m| m.id).filter(|id| c.is_up(*id)).collect();
    let log = lock(&load.log).clone();
    let r = check_replicas(c, &ids, &log, when);
    c.say(&format!(
        "{when}: checked journals {ids:?} (leader {}): {} entries, {} acknowledged, {} errored ({} refused), {} unacknowledged present",
        st.node_id, r.entries, r.acked, r.errored, r.refused, r.unacked_present
    ));
    load.resume();
    r
}
