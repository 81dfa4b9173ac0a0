//! The agent as an ordinary service (not PID 1: the child subreaper) against a real
//! `pact-journal --dev`: a live change reaches it through the subscription and only the
//! service whose declaration changed is restarted; and a node whose journal is gone boots
//! from its verified cache, then reconciles with the journal when it is back.
//!
//! Needs root and a cgroup2 mount (the pact backend's scopes); prints a skip line otherwise.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

fn bin(name: &str) -> PathBuf {
    if name == "pact-agent" {
        if let Some(p) = option_env!("CARGO_BIN_EXE_pact-agent") {
            return PathBuf::from(p);
        }
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(p.exists(), "{} is missing: `cargo build --workspace` first", p.display());
    p
}

fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 24_000 + (std::process::id() % 400) as u16 * 16, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(p < 32_000, "ran out of test ports");
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (cgroup scopes)".into());
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v2 = info.lines().any(|l| {
        l.split(" - ").nth(1).is_some_and(|r| r.starts_with("cgroup2 "))
            && matches!(l.split(' ').nth(4), Some("/sys/fs/cgroup" | "/sys/fs/cgroup/unified"))
    });
    (!v2).then(|| "no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified".into())
}

struct Journal {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Journal {
    fn start(dir: &Path, port: u16) -> Journal {
        let mut j = Journal { dir: dir.to_path_buf(), port, child: None };
        j.spawn();
        j
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("journal.log")).unwrap();
        let child = Command::new(bin("pact-journal"))
            .args(["--dev", "--data-dir"])
            .arg(self.dir.join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", self.port + 2))
            .arg("--raft-listen")
            .arg(format!("127.0.0.1:{}", self.port + 1))
            .env_remove("PACT_JOURNAL_CONFIG")
            .env_remove("PACT_OIDC_HMAC_SECRET")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Command::new(bin("pact"))
            .args(self.cli_args())
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "journal not ready in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn dev(&self, f: &str) -> PathBuf {
        self.dir.join("data/dev").join(f)
    }

    fn cli_args(&self) -> Vec<String> {
        let token = std::fs::read_to_string(self.dev("admin.token")).unwrap_or_default();
        vec![
            "--endpoint".into(),
            format!("127.0.0.1:{}", self.port),
            "--ca-cert".into(),
            self.dev("ca.crt").display().to_string(),
            "--token".into(),
            token.trim().to_string(),
        ]
    }

    fn pact(&self, args: &[&str]) {
        let out = Command::new(bin("pact")).args(self.cli_args()).args(args).env("HOME", &self.dir).output().unwrap();
        assert!(
            out.status.success(),
            "pact {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spec(dir: &Path, b_arg: &str) -> PathBuf {
    let p = dir.join(format!("spec-{b_arg}.toml"));
    std::fs::write(
        &p,
        format!(
            "[vcluster.life.services.a]\nbinary = \"/bin/sleep\"\nargs = [\"1001\"]\norder = 1\n\n\
             [vcluster.life.services.b]\nbinary = \"/bin/sleep\"\nargs = [\"{b_arg}\"]\ndepends_on = [\"a\"]\norder = 2\n"
        ),
    )
    .unwrap();
    p
}

struct Agent {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Agent {
    fn start(dir: &Path, j: &Journal, node: &str) -> Agent {
        let cfg = dir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "[agent]\ncache_dir = \"{}\"\n[agent.journal]\nendpoints = [\"127.0.0.1:{}\"]\ntls_ca = \"{}\"\ntoken_path = \"{}\"\n",
                dir.join("cache").display(),
                j.port,
                j.dev("ca.crt").display(),
                dir.join("agent.token").display()
            ),
        )
        .unwrap();
        // The agent keeps its own copy of the token: the journal's dir may be down later.
        std::fs::copy(j.dev("admin.token"), dir.join("agent.token")).unwrap();
        let mut child = Command::new(bin("pact-agent"))
            .arg("--config")
            .arg(&cfg)
            .arg("--node-id")
            .arg(node)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Agent { child, lines, seen: Vec::new() }
    }

    /// Waits for a line containing `what`; returns it.
    fn wait_for(&mut self, what: &str, within: Duration) -> String {
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
                    panic!("no line with {what:?} within {within:?}; agent said:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// The pid of `svc` in the last `PACT-SERVICE svc running pid=N` line seen.
    fn pid(&self, svc: &str) -> u32 {
        self.seen
            .iter()
            .rev()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&"PACT-SERVICE") && f.get(1) == Some(&svc) && f.get(2) == Some(&"running"))
                    .then(|| f.get(3)?.strip_prefix("pid=")?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no running line for {svc}: {}", self.seen.join("\n")))
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "the agent exits 0 on SIGTERM, got {st}");
    }
}

/// The pid in "... service b: started (pid N)".
fn started_pid(line: &str) -> u32 {
    line.rsplit("(pid ")
        .next()
        .and_then(|r| r.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pact-agent-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn live_changes_restart_only_what_changed_and_a_cached_config_boots_without_journal() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = temp("life");
    let mut j = Journal::start(&dir, free_port());
    // The node id is this host's name, so the hostname item changes nothing here.
    let node = hostname();
    j.pact(&["apply", spec(&dir, "2001").to_str().unwrap()]);
    j.pact(&["node", "assign", &node, "--vcluster", "life"]);

    // 1. Boot from the journal; then a live change to b only.
    let mut agent = Agent::start(&dir, &j, &node);
    agent.wait_for("PACT-READY", Duration::from_secs(30));
    let (a1, b1) = (agent.pid("a"), agent.pid("b"));
    assert!(cmdline(b1).contains("2001"));
    j.pact(&["apply", spec(&dir, "2002").to_str().unwrap()]);
    // b's old instance must exit before the new one starts: its start is reported later, by
    // the supervisor (not among the reconcile's own lines).
    let b2 = started_pid(&agent.wait_for("service b: started", Duration::from_secs(30)));
    assert_ne!(b2, b1, "b was restarted");
    assert!(cmdline(b2).contains("2002"), "b runs its new declaration: {}", cmdline(b2));
    assert!(cmdline(a1).contains("1001"), "a was left alone (same pid {a1} still running)");
    assert!(!agent.seen.iter().any(|l| l.contains("service a: stopping")), "a was not touched");
    agent.stop();
    assert!(cmdline(a1).is_empty() && cmdline(b2).is_empty(), "services stopped with the agent");

    // 2. A change while the node is down, then the journal goes away too.
    j.pact(&["apply", spec(&dir, "2003").to_str().unwrap()]);
    j.kill();
    let mut agent = Agent::start(&dir, &j, &node);
    agent.wait_for("booting from the cached config", Duration::from_secs(60));
    agent.wait_for("PACT-READY", Duration::from_secs(30));
    let (a3, b3) = (agent.pid("a"), agent.pid("b"));
    assert!(cmdline(b3).contains("2002"), "the cache holds what the node last verified: {}", cmdline(b3));

    // 3. The journal returns: the agent reconciles to what was committed meanwhile.
    j.spawn();
    let b4 = started_pid(&agent.wait_for("service b: started", Duration::from_secs(90)));
    assert_ne!(b4, b3);
    assert!(cmdline(b4).contains("2003"), "{}", cmdline(b4));
    assert!(cmdline(a3).contains("1001"), "a kept running through the reconcile");
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
