//! What the agent's end-to-end tests share (`mod support;` in api.rs, lifecycle.rs,
//! qemu_node.rs and dev_stack.rs): the workspace's binaries, free loopback ports, temp dirs
//! removed when a test passes, a real `pact-journal --dev` and the real `pact` CLI against it,
//! a `pact-agent` whose console the test reads line by line, certificates from a CA of the
//! test's own, and polling with a deadline. Every process a test starts here is ended when
//! its handle is dropped, a failed test's included.
#![allow(dead_code)]

use std::io::{BufRead, Read};
use std::net::{TcpListener, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A binary of this workspace's build: `pact-agent` is this package's own (cargo names it to
/// the tests); the others are found next to the test's own target dir.
pub fn bin(name: &str) -> PathBuf {
    if name == "pact-agent" {
        if let Some(p) = option_env!("CARGO_BIN_EXE_pact-agent") {
            return PathBuf::from(p);
        }
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build --workspace`; images/dev/test.sh builds the workspace)",
        p.display()
    );
    p
}

/// A loopback port nobody listens on, in 10000..32000 (below the ephemeral range), distinct
/// within this process; where a process starts depends on its pid, so that test binaries
/// running side by side seldom try the same ports.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, std::process::id() % 1100 * 20, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let p = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpStream::connect(("127.0.0.1", p)).is_err() {
            return p;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

/// A fresh directory under the system's temp dir, removed on drop when the test passed and
/// kept (its path printed) when it failed, for what the processes wrote there.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `<tmp>/pact-<name>-<pid>-<n>`, empty.
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("pact-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} (the test failed)", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Calls `f` every `every` until it gives `Some`, for at most `within` (`f` runs at least
/// once, and once more at the deadline); `None` if it never did.
pub fn poll<T>(within: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// Runs `cmd` to completion: its (stdout, stderr). Panics with both when it fails.
pub fn run_ok(cmd: &mut Command, what: &str) -> (String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}{stderr}", out.status);
    (stdout, stderr)
}

/// The real `pact` CLI, kept from the caller's settings: HOME and the working directory are
/// `home` (so no ~/.config/pact/ and no ./.pact-dev/), and no PACT_* setting is inherited.
pub fn pact_cli(home: &Path) -> Command {
    let mut cmd = Command::new(bin("pact"));
    cmd.env("HOME", home).current_dir(home);
    for v in [
        "PACT_ENDPOINT",
        "PACT_TOKEN",
        "PACT_TLS_CA",
        "PACT_VCLUSTER",
        "PACT_OUTPUT",
        "PACT_CLI_CONFIG",
        "PACT_DEV_DIR",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// This host's name (the journal's development certificate names it).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

/// A process's command line, arguments joined by spaces; empty once it is gone.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Why a test of the pact backend's cgroup scopes cannot run here, if it cannot: it needs
/// root and a cgroup2 mount where the agent looks (/sys/fs/cgroup, or /sys/fs/cgroup/unified
/// in a hybrid layout).
pub fn cgroup_skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (the pact backend's cgroup scopes)".into());
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v2 = info.lines().any(|l| {
        l.split(" - ").nth(1).is_some_and(|r| r.starts_with("cgroup2 "))
            && matches!(l.split(' ').nth(4), Some("/sys/fs/cgroup" | "/sys/fs/cgroup/unified"))
    });
    (!v2).then(|| "no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified".into())
}

/// `pact-journal --dev` on free loopback ports (client, Raft, metrics; kept across restarts),
/// its output in `<dir>/journal.log`; killed on drop.
pub struct Journal {
    /// Where the log is (and, for `start`, the data dir).
    pub dir: PathBuf,
    /// `--data-dir`: the development credentials are in its `dev/`.
    pub data: PathBuf,
    /// The client port.
    pub port: u16,
    raft_port: u16,
    metrics_port: u16,
    child: Option<Child>,
    /// A journal.toml it starts with (`--config`), if any.
    config: Option<PathBuf>,
}

impl Journal {
    /// Data in `<dir>/data`; returns once the journal has a leader.
    pub fn start(dir: &Path) -> Journal {
        Journal::start_in(dir, &dir.join("data"))
    }

    /// Data in `data`; returns once the journal has a leader.
    pub fn start_in(dir: &Path, data: &Path) -> Journal {
        Journal::start_configured(dir, data, None)
    }

    /// Data in `data`, started with `config` as its journal.toml; returns once it has a leader.
    pub fn start_configured(dir: &Path, data: &Path, config: Option<&str>) -> Journal {
        let config = config.map(|text| {
            let path = dir.join("journal.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut j = Journal {
            dir: dir.to_path_buf(),
            data: data.to_path_buf(),
            port: free_port(),
            raft_port: free_port(),
            metrics_port: free_port(),
            child: None,
            config,
        };
        j.spawn();
        j
    }

    /// (Re)starts the process on the same ports and data; returns once it has a leader.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the journal is running already");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("journal.log")).unwrap();
        let mut cmd = Command::new(bin("pact-journal"));
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .args(["--dev", "--data-dir"])
            .arg(&self.data)
            .arg("--listen")
            .arg(self.endpoint())
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .arg("--raft-listen")
            .arg(format!("127.0.0.1:{}", self.raft_port))
            .env_remove("PACT_JOURNAL_CONFIG")
            .env_remove("PACT_OIDC_HMAC_SECRET")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start pact-journal");
        self.child = Some(child);
        let ready = poll(Duration::from_secs(30), Duration::from_millis(50), || {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("pact-journal exited with {st}:\n{}", self.log());
            }
            self.ready().then_some(())
        });
        assert!(ready.is_some(), "journal not ready in 30 s:\n{}", self.log());
    }

    /// Whether it answers JournalStatus (with the dev admin token, over TLS) with a leader.
    pub fn ready(&self) -> bool {
        let Ok(token) = std::fs::read_to_string(self.dev("admin.token")) else { return false };
        let Ok(tls) = pact_proto::tls::client_config(&self.dev("ca.crt")) else { return false };
        let Ok(mut c) =
            pact_proto::client::Client::connect(&self.endpoint(), tls, token.trim(), Duration::from_secs(5))
        else {
            return false;
        };
        let st: Result<pact_proto::journal::JournalStatus, _> =
            c.call(pact_proto::Method::JournalStatus, &pact_proto::journal::JournalStatusRequest {});
        st.map(|s| s.leader_id != 0).unwrap_or(false)
    }

    /// Stops the process (SIGKILL); `spawn` brings it back.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A file of the development credentials (`<data>/dev/<file>`).
    pub fn dev(&self, file: &str) -> PathBuf {
        self.data.join("dev").join(file)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("journal.log")).unwrap_or_default()
    }

    /// The real CLI against this journal: its endpoint, CA and admin token given as flags.
    pub fn cli(&self) -> Command {
        let token = std::fs::read_to_string(self.dev("admin.token")).unwrap();
        let mut cmd = pact_cli(&self.dir);
        cmd.arg("--endpoint")
            .arg(self.endpoint())
            .arg("--ca-cert")
            .arg(self.dev("ca.crt"))
            .arg("--token")
            .arg(token.trim());
        cmd
    }

    /// `pact ARGS` against this journal, which must succeed; its standard output.
    pub fn pact(&self, args: &[&str]) -> String {
        run_ok(self.cli().args(args), &format!("pact {}", args.join(" "))).0
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("the journal's log, last lines:\n{}", lines[lines.len().saturating_sub(40)..].join("\n"));
        }
    }
}

/// A process's output, a line at a time, as the test receives it (read on threads of their
/// own: the lines reach the test a little after they were written).
pub struct Console {
    rx: Receiver<String>,
    /// Every line received so far.
    pub seen: Vec<String>,
    /// How much of `seen` `wait_next` has gone past.
    next: usize,
}

impl Console {
    /// Reads `streams` to their end (invalid UTF-8 replaced, line ends stripped).
    pub fn read(streams: Vec<Box<dyn Read + Send>>) -> Console {
        let (tx, rx) = mpsc::channel();
        for stream in streams {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(stream);
                let mut buf = Vec::new();
                while r.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                    if tx.send(line).is_err() {
                        return;
                    }
                    buf.clear();
                }
            });
        }
        Console { rx, seen: Vec::new(), next: 0 }
    }

    /// The child's standard output and error (those of them that are piped).
    pub fn of(child: &mut Child) -> Console {
        let mut streams: Vec<Box<dyn Read + Send>> = Vec::new();
        if let Some(o) = child.stdout.take() {
            streams.push(Box::new(o));
        }
        if let Some(e) = child.stderr.take() {
            streams.push(Box::new(e));
        }
        Console::read(streams)
    }

    /// The next line, waiting up to `within`; it is added to `seen`. Disconnected: every
    /// stream has ended.
    pub fn recv(&mut self, within: Duration) -> Result<String, RecvTimeoutError> {
        let l = self.rx.recv_timeout(within)?;
        self.seen.push(l.clone());
        Ok(l)
    }

    /// Adds to `seen` whatever has arrived.
    pub fn drain(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l);
        }
    }

    /// Everything so far, one line after another.
    pub fn text(&mut self) -> String {
        self.drain();
        self.seen.join("\n")
    }

    /// The first line (seen already, or arriving within `within`) that contains `what`.
    pub fn wait_for(&mut self, what: &str, within: Duration) -> String {
        self.wait_from(0, what, within).1
    }

    /// The first line after the one the last `wait_next` returned that contains `what`,
    /// waiting up to `within`: what has happened since.
    pub fn wait_next(&mut self, what: &str, within: Duration) -> String {
        let (i, l) = self.wait_from(self.next, what, within);
        self.next = i + 1;
        l
    }

    fn wait_from(&mut self, from: usize, what: &str, within: Duration) -> (usize, String) {
        if let Some(i) = self.seen.iter().skip(from).position(|l| l.contains(what)) {
            return (from + i, self.seen[from + i].clone());
        }
        let deadline = Instant::now() + within;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.contains(what) => return (self.seen.len() - 1, l),
                Ok(_) => {}
                Err(_) => panic!("no line with {what:?} within {within:?}; it said:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Every line so far that contains `what`.
    pub fn lines_with(&mut self, what: &str) -> Vec<String> {
        self.drain();
        self.seen.iter().filter(|l| l.contains(what)).cloned().collect()
    }

    /// Waits until `n` lines contain `what`.
    pub fn wait_count(&mut self, what: &str, n: usize, within: Duration) {
        if poll(within, Duration::from_millis(20), || (self.lines_with(what).len() >= n).then_some(())).is_none() {
            panic!("fewer than {n} lines with {what:?} within {within:?}; it said:\n{}", self.seen.join("\n"));
        }
    }
}

/// SIGTERM to a process.
pub fn terminate(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
}

/// The real `pact-agent` as an ordinary service (not PID 1), its stdout and stderr read into
/// `console`. On drop it is asked to stop (SIGTERM: it stops its services first) and killed
/// only if it has not ended in 30 s, so a failed test leaves no services behind; a failed
/// test also prints what it said.
pub struct Agent {
    child: Option<Child>,
    pub console: Console,
}

impl Agent {
    /// `pact-agent --config CONFIG ARGS`, with none of the caller's PACT_AGENT_* settings.
    pub fn start(config: &Path, args: &[&str]) -> Agent {
        let mut cmd = Command::new(bin("pact-agent"));
        cmd.arg("--config").arg(config).args(args);
        for v in [
            "PACT_AGENT_CONFIG",
            "PACT_AGENT_NODE_ID",
            "PACT_AGENT_ENDPOINTS",
            "PACT_AGENT_TOKEN",
            "PACT_AGENT_VCLUSTER",
        ] {
            cmd.env_remove(v);
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start pact-agent");
        let console = Console::of(&mut child);
        Agent { child: Some(child), console }
    }

    /// Its pid (it must not have been waited for yet).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the agent has exited").id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits up to `within` for it to exit by itself; panics with its console if it does not.
    pub fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("the agent was waited for already");
        match poll(within, Duration::from_millis(50), || child.try_wait().unwrap()) {
            Some(st) => {
                self.child = None;
                st
            }
            None => panic!("the agent did not exit within {within:?}; it said:\n{}", self.console.text()),
        }
    }

    /// SIGTERM (the agent stops its services and exits 0), then `exit_within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        terminate(self.pid());
        self.exit_within(within)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(c.id());
            let _ = poll(Duration::from_secs(30), Duration::from_millis(50), || c.try_wait().ok().flatten());
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("the agent said:\n{}", self.console.text());
        }
    }
}

/// A certificate authority of the test's own (rcgen), for certificates the agent serves.
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    /// The CA certificate, PEM: what a client trusts.
    pub pem: String,
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, common_name);
        let cert = ca.self_signed(&key).unwrap();
        let pem = cert.pem();
        TestCa { key, cert, pem }
    }

    /// An existing CA from its certificate and key (PEM files).
    pub fn from_files(cert: &Path, key: &Path) -> TestCa {
        let pem = std::fs::read_to_string(cert).unwrap();
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(key).unwrap()).unwrap();
        // The CA's own parameters re-signed: an issuer with its name and key, whose
        // signatures verify against the original CA certificate.
        let cert = rcgen::CertificateParams::from_ca_cert_pem(&pem).unwrap().self_signed(&key).unwrap();
        TestCa { key, cert, pem }
    }

    /// A certificate for `names` (DNS names or IP addresses) with `common_name`, signed by
    /// this CA: (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str], common_name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let cert = leaf.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}
