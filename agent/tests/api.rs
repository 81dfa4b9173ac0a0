//! The agent's API server (port 9445) end to end: the real `pact-agent` binary as an ordinary
//! service (not PID 1, the child subreaper) booted from a real `pact-journal --dev` into
//! vCluster `apitest` (two `/bin/sleep` services, recorded with the real `pact apply` and
//! `pact node assign`), with a node certificate made here (rcgen, signed by a CA of the test's
//! own) and `[agent.shell.auth]` holding an HMAC secret the test mints tokens from. Every call
//! goes over real TLS with `pact_proto::client`.
//!
//! Needs root and a cgroup2 mount (the pact backend's scopes; this host's hybrid layout has one
//! at /sys/fs/cgroup/unified, which the agent picks); prints "skipped: <reason>" otherwise. The
//! agent runs with `--node-id <this host's name>`, so its hostname item changes nothing.
//! The tests take turns (one lock): each agent runs the same services in the same scopes. The
//! services are named api-a and api-b, so another agent on this host (lifecycle.rs runs a and
//! b) never shares their scopes.

use pact_proto::auth::HmacVerifier;
use pact_proto::client::{CallError, Client};
use pact_proto::shell::{exec_output, ExecOutput, PowerRequest, ServiceControlRequest, ServiceControlResponse};
use pact_proto::{ErrorCode, Method, RemoteError};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const VC: &str = "apitest";
const SECRET: &str = "api-test-secret-api-test-secret-0123";
const ISSUER: &str = "https://idp.test/realm";
const AUDIENCE: &str = "pact-cli";

static ONE_AGENT_AT_A_TIME: Mutex<()> = Mutex::new(());

fn bin(name: &str) -> PathBuf {
    if name == "pact-agent" {
        return PathBuf::from(env!("CARGO_BIN_EXE_pact-agent"));
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p pact-journal -p pact-cli`; images/dev/test.sh builds the workspace)",
        p.display()
    );
    p
}

/// A loopback port nobody listens on, below the ephemeral range, distinct within this process.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 14_000 + (std::process::id() % 300) as u16 * 20, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(p < 32_000, "ran out of test ports");
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            return p;
        }
    }
}

fn skip_reason() -> Option<String> {
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pact-agent-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `pact-journal --dev` on free loopback ports, killed on drop.
struct Journal {
    dir: PathBuf,
    port: u16,
    child: Child,
}

impl Journal {
    fn start(dir: &Path) -> Journal {
        let port = free_port();
        let log = std::fs::File::create(dir.join("journal.log")).unwrap();
        let child = Command::new(bin("pact-journal"))
            .args(["--dev", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--raft-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .env_remove("PACT_JOURNAL_CONFIG")
            .env_remove("PACT_OIDC_HMAC_SECRET")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start pact-journal");
        let j = Journal { dir: dir.to_path_buf(), port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !j.ready() {
            assert!(
                Instant::now() < deadline,
                "journal not ready in 30 s: {}",
                std::fs::read_to_string(dir.join("journal.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        j
    }

    fn ready(&self) -> bool {
        let Ok(token) = std::fs::read_to_string(self.dev("admin.token")) else { return false };
        let Ok(tls) = pact_proto::tls::client_config(&self.dev("ca.crt")) else { return false };
        let Ok(mut c) = Client::connect(&format!("127.0.0.1:{}", self.port), tls, token.trim(), Duration::from_secs(5))
        else {
            return false;
        };
        let st: Result<pact_proto::journal::JournalStatus, _> =
            c.call(Method::JournalStatus, &pact_proto::journal::JournalStatusRequest {});
        st.map(|s| s.leader_id != 0).unwrap_or(false)
    }

    fn dev(&self, f: &str) -> PathBuf {
        self.dir.join("data/dev").join(f)
    }

    /// The real CLI against this journal; its standard output.
    fn pact(&self, args: &[&str]) -> String {
        let token = std::fs::read_to_string(self.dev("admin.token")).unwrap();
        let mut cmd = Command::new(bin("pact"));
        cmd.arg("--endpoint")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--ca-cert")
            .arg(self.dev("ca.crt"))
            .arg("--token")
            .arg(token.trim())
            .args(args)
            .env("HOME", &self.dir)
            .current_dir(&self.dir);
        for v in ["PACT_ENDPOINT", "PACT_TOKEN", "PACT_TLS_CA", "PACT_VCLUSTER", "PACT_OUTPUT"] {
            cmd.env_remove(v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "pact {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The overlay (two services) and this host assigned to it.
    fn with_overlay(dir: &Path) -> Journal {
        let j = Journal::start(dir);
        let spec = dir.join("overlay.toml");
        std::fs::write(
            &spec,
            format!(
                "[vcluster.{VC}]\nsupervisor_backend = \"pact\"\n\n\
                 [vcluster.{VC}.services.api-a]\nbinary = \"/bin/sleep\"\nargs = [\"3600\"]\nrestart = \"never\"\norder = 1\n\n\
                 [vcluster.{VC}.services.api-b]\nbinary = \"/bin/sleep\"\nargs = [\"3601\"]\nrestart = \"never\"\norder = 2\n"
            ),
        )
        .unwrap();
        j.pact(&["apply", spec.to_str().unwrap()]);
        j.pact(&["node", "assign", &hostname(), "--vcluster", VC]);
        j
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node certificate for localhost and 127.0.0.1 (`node.crt`, `node.key`) signed by a CA of
/// the test's own, or by the CA whose (certificate, key) PEM files are given; that CA goes to
/// `ca.crt`.
fn make_certificates(dir: &Path, ca_files: Option<(&Path, &Path)>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let (ca_key, ca_cert, ca_pem) = match ca_files {
        None => {
            let ca_key = KeyPair::generate().unwrap();
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name.push(DnType::CommonName, "pact agent API test CA");
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let pem = ca_cert.pem();
            (ca_key, ca_cert, pem)
        }
        Some((cert, key)) => {
            let pem = std::fs::read_to_string(cert).unwrap();
            let ca_key = KeyPair::from_pem(&std::fs::read_to_string(key).unwrap()).unwrap();
            // The CA's own parameters re-signed: an issuer with its name and key, whose
            // signatures verify against the original CA certificate.
            let ca_cert = CertificateParams::from_ca_cert_pem(&pem).unwrap().self_signed(&ca_key).unwrap();
            (ca_key, ca_cert, pem)
        }
    };
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, hostname());
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.join("node.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
}

/// `[agent.shell.auth]`: issuer, audience, HMAC secret.
struct ShellAuth {
    issuer: String,
    audience: String,
    secret: String,
}

/// The test's own: tokens come from `token()`.
fn test_auth() -> Option<ShellAuth> {
    Some(ShellAuth { issuer: ISSUER.into(), audience: AUDIENCE.into(), secret: SECRET.into() })
}

/// The dev journal's: the CLI's admin token (`<data>/dev/admin.token`) verifies on the agent too.
fn journal_auth(j: &Journal) -> Option<ShellAuth> {
    let secret = std::fs::read_to_string(j.dev("hmac.secret")).unwrap().trim().to_string();
    Some(ShellAuth { issuer: "pact-dev".into(), audience: "pact".into(), secret })
}

/// What the agent.toml holds besides the journal.
struct Setup {
    certificate: bool,
    auth: Option<ShellAuth>,
}

struct Agent {
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
    api_port: u16,
    dir: PathBuf,
}

impl Agent {
    fn start(dir: &Path, j: &Journal, setup: Setup) -> Agent {
        let api_port = free_port();
        let mut toml = format!(
            "[agent]\ncache_dir = \"{cache}\"\n\n\
             [agent.journal]\nendpoints = [\"127.0.0.1:{port}\"]\ntls_ca = \"{ca}\"\ntoken_path = \"{token}\"\n",
            cache = dir.join("cache").display(),
            port = j.port,
            ca = j.dev("ca.crt").display(),
            token = j.dev("admin.token").display(),
        );
        if setup.certificate {
            toml += &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                dir.join("node.crt").display(),
                dir.join("node.key").display()
            );
        }
        toml += &format!(
            "\n[agent.shell]\nlisten = \"127.0.0.1:{api_port}\"\n\n[agent.capability]\nmanifest_path = \"{}\"\n",
            dir.join("capability.json").display()
        );
        if let Some(a) = setup.auth {
            toml += &format!(
                "\n[agent.shell.auth]\nissuer = \"{}\"\naudience = \"{}\"\nhmac_secret = \"{}\"\n",
                a.issuer, a.audience, a.secret
            );
        }
        let cfg = dir.join("agent.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut cmd = Command::new(bin("pact-agent"));
        cmd.arg("--config").arg(&cfg).arg("--node-id").arg(hostname());
        for v in [
            "PACT_AGENT_CONFIG",
            "PACT_AGENT_NODE_ID",
            "PACT_AGENT_ENDPOINTS",
            "PACT_AGENT_TOKEN",
            "PACT_AGENT_VCLUSTER",
        ] {
            cmd.env_remove(v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start pact-agent");
        let (tx, lines) = std::sync::mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Agent { child: Some(child), lines, seen: Vec::new(), api_port, dir: dir.to_path_buf() }
    }

    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// Waits for a console line containing `what`; returns it.
    fn wait_for(&mut self, what: &str, within: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(what)) {
            return l.clone();
        }
        let deadline = Instant::now() + within;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(what) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    panic!("no line with {what:?} within {within:?}; the agent said:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Every console line so far that contains `what`.
    fn lines_with(&mut self, what: &str) -> Vec<String> {
        self.drain();
        self.seen.iter().filter(|l| l.contains(what)).cloned().collect()
    }

    /// Waits until `n` console lines contain `what` (lines reach the test through a pipe and a
    /// thread, a little after the agent printed them).
    fn wait_count(&mut self, what: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.lines_with(what).len() < n {
            if Instant::now() > deadline {
                panic!(
                    "fewer than {n} lines with {what:?} within {within:?}; the agent said:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self, token: &str) -> Client {
        let tls = pact_proto::tls::client_config(&self.dir.join("ca.crt")).unwrap();
        Client::connect(&format!("127.0.0.1:{}", self.api_port), tls, token, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to the agent's API: {e}"))
    }

    /// Waits for the agent to exit by itself.
    fn exit_within(&mut self, t: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + t;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            if Instant::now() > deadline {
                self.drain();
                panic!("the agent did not exit within {t:?}; it said:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (the agent stops its services and exits 0).
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.as_ref().unwrap().id();
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        self.exit_within(Duration::from_secs(30))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A failed test still leaves no services behind: SIGTERM stops them, SIGKILL only if
        // the agent does not end.
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn token(subject: &str, role: &str) -> String {
    HmacVerifier::new(SECRET.as_bytes(), ISSUER, AUDIENCE).mint(subject, role, 600).unwrap()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn control(c: &mut Client, name: &str, action: &str) -> Result<ServiceControlResponse, CallError> {
    c.call(Method::ServiceControl, &ServiceControlRequest { name: name.into(), action: action.into() })
}

fn remote<T: std::fmt::Debug>(r: Result<T, CallError>) -> RemoteError {
    match r {
        Err(CallError::Remote(e)) => e,
        other => panic!("expected an error from the agent, got {other:?}"),
    }
}

/// (state, pid) of one service in a response that must hold exactly that one.
fn one(r: &ServiceControlResponse, name: &str) -> (String, u32) {
    assert_eq!(r.services.len(), 1, "{r:?}");
    assert_eq!(r.services[0].name, name, "{r:?}");
    (r.services[0].state.clone(), r.services[0].pid)
}

#[test]
fn services_are_controlled_and_the_node_powered_off_through_the_api() {
    let _turn = ONE_AGENT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let dir = temp("control");
    let journal = Journal::with_overlay(&dir);
    make_certificates(&dir, None);
    let mut agent = Agent::start(&dir, &journal, Setup { certificate: true, auth: test_auth() });
    let listening = agent.wait_for("PACT: api: listening on", Duration::from_secs(30));
    assert!(listening.contains(&format!("127.0.0.1:{}", agent.api_port)) && listening.contains("HS256"), "{listening}");
    agent.wait_for("PACT-READY", Duration::from_secs(60));

    // Status of every service, as the platform admin.
    let mut admin = agent.client(&token("root-admin", "pact-platform-admin"));
    let all = control(&mut admin, "", "status").unwrap();
    let names: Vec<&str> = all.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api-a", "api-b"], "{all:?}");
    for s in &all.services {
        assert_eq!(s.state, "running", "{s:?}");
        assert!(cmdline(s.pid).starts_with("/bin/sleep 360"), "pid {} of {} is {:?}", s.pid, s.name, cmdline(s.pid));
    }
    let (a1, b1) = (all.services[0].pid, all.services[1].pid);

    // Ops of the node's vCluster: stop b; answered once b has stopped, its process gone.
    let mut ops = agent.client(&token("olga", &format!("pact-ops-{VC}")));
    let r = control(&mut ops, "api-b", "stop").unwrap();
    assert_eq!(one(&r, "api-b"), ("stopped".to_string(), 0));
    assert!(cmdline(b1).is_empty(), "b's process {b1} still exists: {:?}", cmdline(b1));
    assert_eq!(one(&control(&mut ops, "api-b", "status").unwrap(), "api-b"), ("stopped".to_string(), 0));
    assert!(cmdline(a1).starts_with("/bin/sleep 3600"), "a was left alone");
    // start b: running again, a new process.
    let r = control(&mut ops, "api-b", "start").unwrap();
    let (state, b2) = one(&r, "api-b");
    assert_eq!(state, "running");
    assert!(b2 != 0 && b2 != b1, "b's new pid {b2} (was {b1})");
    assert!(cmdline(b2).starts_with("/bin/sleep 3601"), "{:?}", cmdline(b2));
    // restart a: answered once the new instance runs.
    let r = control(&mut ops, "api-a", "restart").unwrap();
    let (state, a2) = one(&r, "api-a");
    assert_eq!(state, "running");
    assert!(a2 != 0 && a2 != a1, "a's new pid {a2} (was {a1})");
    assert!(cmdline(a1).is_empty(), "a's old process {a1} still exists");
    assert!(cmdline(a2).starts_with("/bin/sleep 3600"), "{:?}", cmdline(a2));
    // An unknown service: an error naming it.
    for action in ["start", "stop", "restart", "status"] {
        let e = remote(control(&mut ops, "nosuch", action));
        assert_eq!(e.code, ErrorCode::NotFound, "{action}: {e}");
        assert!(e.message.contains("nosuch"), "{action}: {e}");
    }

    // A token with the wrong signature: Unauthenticated, nothing done.
    let forged = HmacVerifier::new(b"not-the-agents-secret-not-the-agents", ISSUER, AUDIENCE).mint(
        "mallory",
        "pact-platform-admin",
        600,
    );
    let mut bad = agent.client(&forged.unwrap());
    assert_eq!(remote(control(&mut bad, "api-a", "stop")).code, ErrorCode::Unauthenticated);
    // A viewer reads status but may not stop anything; ops of another vCluster may do nothing.
    let mut viewer = agent.client(&token("vera", &format!("pact-viewer-{VC}")));
    assert_eq!(control(&mut viewer, "", "status").unwrap().services.len(), 2);
    assert_eq!(remote(control(&mut viewer, "api-a", "stop")).code, ErrorCode::PermissionDenied);
    let mut stranger = agent.client(&token("sam", "pact-ops-elsewhere"));
    assert_eq!(remote(control(&mut stranger, "", "status")).code, ErrorCode::PermissionDenied);
    let no_power: Result<ExecOutput, _> =
        viewer.call(Method::Power, &PowerRequest { action: "poweroff".into(), reason: "viewer".into() });
    assert_eq!(remote(no_power).code, ErrorCode::PermissionDenied);
    let all = control(&mut admin, "", "status").unwrap();
    assert!(all.services.iter().all(|s| s.state == "running"), "refused requests changed nothing: {all:?}");
    assert_eq!((all.services[0].pid, all.services[1].pid), (a2, b2));

    // Every request is on the console with the caller and the outcome.
    for want in [
        "PACT: api: root-admin pact-platform-admin ServiceControl status * -> ok: 2 services".to_string(),
        format!("PACT: api: olga pact-ops-{VC} ServiceControl stop api-b -> ok: api-b stopped pid=0"),
        format!("PACT: api: olga pact-ops-{VC} ServiceControl restart api-a -> ok: api-a running pid={a2}"),
        format!("PACT: api: olga pact-ops-{VC} ServiceControl start nosuch -> NotFound"),
        "PACT: api: - - ServiceControl stop api-a -> Unauthenticated".to_string(),
        format!("PACT: api: vera pact-viewer-{VC} ServiceControl stop api-a -> PermissionDenied"),
        "PACT: api: sam pact-ops-elsewhere ServiceControl status * -> PermissionDenied".to_string(),
    ] {
        agent.wait_for(&want, Duration::from_secs(10));
    }

    // Power-off as ops: answered exit_code 0 once scheduled; as a service, the agent then
    // stops its services and exits 0.
    let out: ExecOutput =
        ops.call(Method::Power, &PowerRequest { action: "poweroff".into(), reason: "api test".into() }).unwrap();
    assert_eq!(out.output, Some(exec_output::Output::ExitCode(0)));
    let st = agent.exit_within(Duration::from_secs(60));
    assert!(st.success(), "the agent exits 0 after a power request as a service, got {st}");
    assert!(cmdline(a2).is_empty() && cmdline(b2).is_empty(), "services stopped with the agent");
    // The agent has exited: what it printed is still on its way through the pipe.
    agent.wait_for(
        &format!("PACT: api: olga pact-ops-{VC} Power poweroff reason=\"api test\" -> ok: scheduled"),
        Duration::from_secs(10),
    );
    agent.wait_for("PACT: shutting down (PowerOff): stopping services", Duration::from_secs(10));
    agent.wait_for("not PID 1: services stopped, exiting", Duration::from_secs(10));
    drop(journal);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_shell_auth_every_request_is_refused_and_without_a_certificate_there_is_no_server() {
    let _turn = ONE_AGENT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let dir = temp("closed");
    let journal = Journal::with_overlay(&dir);
    make_certificates(&dir, None);

    // No [agent.shell.auth]: a token that would verify under any secret is refused, for
    // every method, and nothing happens.
    let mut agent = Agent::start(&dir, &journal, Setup { certificate: true, auth: None });
    agent.wait_for("PACT: api: listening on", Duration::from_secs(30));
    agent.wait_for("PACT-READY", Duration::from_secs(60));
    let mut c = agent.client(&token("root-admin", "pact-platform-admin"));
    for (name, action) in [("", "status"), ("api-a", "stop"), ("api-b", "restart")] {
        let e = remote(control(&mut c, name, action));
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::Unauthenticated, "no [agent.shell.auth]: the agent accepts no token"),
            "{action}"
        );
    }
    let r: Result<ExecOutput, _> =
        c.call(Method::Power, &PowerRequest { action: "poweroff".into(), reason: String::new() });
    assert_eq!(remote(r).code, ErrorCode::Unauthenticated);
    let services = agent.lines_with("PACT-SERVICE");
    assert!(services.iter().any(|l| l.starts_with("PACT-SERVICE api-a running")), "{services:?}");
    assert!(agent.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the refused power-off stopped the agent");
    agent.wait_count("-> Unauthenticated: no [agent.shell.auth]", 4, Duration::from_secs(10));
    assert!(agent.lines_with("stopping").is_empty(), "a refused request stopped something");
    assert!(agent.terminate().success());

    // No node certificate: the server does not start, and the console says why.
    let mut agent = Agent::start(&dir, &journal, Setup { certificate: false, auth: test_auth() });
    let why = agent.wait_for("PACT: api: not started", Duration::from_secs(30));
    assert!(why.contains("tls_cert and tls_key are not configured") && why.contains("enrollment"), "{why}");
    agent.wait_for("PACT-READY", Duration::from_secs(60));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", agent.api_port)).is_err(),
        "something listens on the API port of an agent without a certificate"
    );
    assert!(agent.terminate().success());
    drop(journal);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The other half: the real `pact service` and `pact poweroff` commands against this agent,
/// with the CA and the token the CLI uses for the journal (the node's certificate is signed by
/// the journal's CA, and the agent verifies the journal's development tokens).
#[test]
fn the_pact_cli_controls_services_and_powers_the_node_off() {
    let _turn = ONE_AGENT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let dir = temp("cli");
    let journal = Journal::with_overlay(&dir);
    let tls = journal.dir.join("data/tls");
    make_certificates(&dir, Some((&tls.join("ca.crt"), &tls.join("ca.key"))));
    let auth = journal_auth(&journal);
    let mut agent = Agent::start(&dir, &journal, Setup { certificate: true, auth });
    agent.wait_for("PACT: api: listening on", Duration::from_secs(30));
    agent.wait_for("PACT-READY", Duration::from_secs(60));
    let node = hostname();
    let at = format!("127.0.0.1:{}", agent.api_port);
    let status = journal.pact(&["service", "status", &node, "--agent-endpoint", &at]);
    for svc in ["api-a", "api-b"] {
        assert!(
            status.lines().any(|l| l.split_whitespace().take(2).eq([svc, "running"])),
            "pact service status:\n{status}"
        );
    }
    let stopped = journal.pact(&["service", "stop", &node, "api-b", "--agent-endpoint", &at]);
    assert!(stopped.lines().any(|l| l.split_whitespace().take(2).eq(["api-b", "stopped"])), "{stopped}");
    let json = journal.pact(&["--output", "json", "service", "status", &node, "api-b", "--agent-endpoint", &at]);
    assert!(json.contains("\"name\":\"api-b\"") && json.contains("\"state\":\"stopped\""), "{json}");
    agent.wait_for("PACT: api: dev-admin pact-platform-admin ServiceControl stop api-b -> ok", Duration::from_secs(10));
    let off = journal.pact(&["poweroff", &node, "--reason", "cli test", "--agent-endpoint", &at]);
    assert!(off.contains("the agent scheduled it"), "{off}");
    let st = agent.exit_within(Duration::from_secs(60));
    assert!(st.success(), "the agent exits 0 after pact poweroff, got {st}");
    agent.wait_for("Power poweroff reason=\"cli test\" -> ok: scheduled", Duration::from_secs(10));
    drop(journal);
    let _ = std::fs::remove_dir_all(&dir);
}
