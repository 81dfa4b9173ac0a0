//! The service supervisor against real processes and a real cgroup2 hierarchy.
//!
//! Every pact-backend test needs root and a writable cgroup2 mount: it creates a private
//! subtree `<mount>/pact-test-<pid>-<n>` as the supervisor's cgroup root, and removes it (after
//! killing what is left in it) when it ends. Without root or cgroup2 a test prints
//! "skipped: <test>: <reason>" to stderr and returns. The systemd test needs neither: systemd
//! is not running here, so `systemctl` is a small script that records its arguments, and the
//! unit files are compared byte for byte.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pact_agent::supervisor::{
    BackendKind, Change, ChangeKind, Error, ExitInfo, Health, ServiceState, StopReason, Supervisor, SupervisorConfig,
};
use pact_proto::config::{health_check::Check, HealthCheck, RestartPolicy, ServiceSpec};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst))
}

/// A cgroup2 mount: (mount point, the mount's root inside the hierarchy). /sys/fs/cgroup
/// first when it is cgroup2, else the first other one (here: /sys/fs/cgroup/unified).
fn cgroup2_mount() -> Option<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<(PathBuf, String)> = info
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split(' ').next()? != "cgroup2" {
                return None;
            }
            let f: Vec<&str> = pre.split(' ').collect();
            Some((PathBuf::from(f.get(4)?), f.get(3)?.to_string()))
        })
        .collect();
    found.sort_by_key(|(p, _)| p != Path::new("/sys/fs/cgroup"));
    found.into_iter().next()
}

/// A private cgroup subtree and temporary directory for one test.
struct Env {
    cg: PathBuf,
    /// `cg` as /proc/<pid>/cgroup names it ("/pact-test-...").
    cg_in_proc: String,
    tmp: PathBuf,
}

impl Env {
    fn new(test: &str) -> Option<Env> {
        if !rustix::process::geteuid().is_root() {
            eprintln!(
                "skipped: {test}: needs root to create cgroups (running as uid {})",
                rustix::process::geteuid().as_raw()
            );
            return None;
        }
        let Some((mount, mount_root)) = cgroup2_mount() else {
            eprintln!("skipped: {test}: no cgroup2 file system is mounted");
            return None;
        };
        let name = unique("pact-test");
        let cg = mount.join(&name);
        if let Err(e) = std::fs::create_dir(&cg) {
            eprintln!("skipped: {test}: cannot create a test cgroup {}: {e}", cg.display());
            return None;
        }
        let tmp = std::env::temp_dir().join(unique("pact-sup-test"));
        std::fs::create_dir_all(&tmp).expect("temp dir");
        let cg_in_proc = Path::new(&mount_root).join(&name).to_string_lossy().into_owned();
        Some(Env { cg, cg_in_proc, tmp })
    }

    fn cfg(&self) -> SupervisorConfig {
        SupervisorConfig {
            backend: BackendKind::Pact,
            cgroup_root: self.cg.clone(),
            log_dir: self.tmp.join("logs"),
            log_max_bytes: 1 << 20,
            log_keep: 3,
            stop_grace: Duration::from_secs(2),
            backoff_max: Duration::from_secs(2),
            backoff_reset: Duration::from_secs(10),
            systemd_unit_dir: self.tmp.join("units"),
            systemctl: PathBuf::from("systemctl"),
            cgroups_optional: false,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }

    fn scope(&self, slice: &str, service: &str) -> PathBuf {
        self.cg.join("pact.slice").join(format!("{slice}.slice")).join(format!("{service}.scope"))
    }
}

fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever a failed test left running goes; cgroup.kill covers the whole subtree.
        let _ = std::fs::write(self.cg.join("cgroup.kill"), "1");
        for _ in 0..300 {
            if remove_cgroup_tree(&self.cg).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.cg.exists() {
            eprintln!("warning: could not remove the test cgroup {}", self.cg.display());
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn sh(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        binary: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

fn with(mut s: ServiceSpec, f: impl FnOnce(&mut ServiceSpec)) -> ServiceSpec {
    f(&mut s);
    s
}

/// Plays the agent's loop (reap, tick, sleep until the next deadline, at most 20 ms) until
/// `cond` holds or `timeout` passes.
fn run_until(sup: &mut Supervisor, timeout: Duration, mut cond: impl FnMut(&mut Supervisor) -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        sup.reap_own();
        sup.tick(Instant::now());
        if cond(sup) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        let nap = sup
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(20))
            .min(Duration::from_millis(20));
        std::thread::sleep(nap.max(Duration::from_millis(1)));
    }
}

fn state(sup: &Supervisor, name: &str) -> ServiceState {
    sup.status(name).unwrap_or_else(|| panic!("{name} has no status")).state
}

fn pid(sup: &Supervisor, name: &str) -> i32 {
    sup.status(name).and_then(|s| s.pid).unwrap_or_else(|| panic!("{name} has no pid: {:?}", sup.status(name)))
}

fn alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; "State: Z" means it ended.
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
        .unwrap_or(false)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn lines(p: &Path) -> Vec<String> {
    read(p).lines().map(str::to_string).collect()
}

fn wait_file_lines(sup: &mut Supervisor, p: &Path, n: usize) {
    assert!(
        run_until(sup, Duration::from_secs(10), |_| lines(p).len() >= n),
        "{} never reached {n} lines: {:?}",
        p.display(),
        lines(p)
    );
}

#[test]
fn restart_policy_and_backoff() {
    let Some(env) = Env::new("restart_policy_and_backoff") else { return };
    let mut cfg = env.cfg();
    cfg.backoff_max = Duration::from_millis(800);
    cfg.backoff_reset = Duration::from_millis(1000);
    let mut sup = Supervisor::new(cfg).unwrap();
    let runs = env.file("crash.runs");
    let policy = |s: ServiceSpec, p: RestartPolicy| with(s, |s| s.restart = p as i32);
    let count = |name: &str| env.file(name);
    let changes = sup.reconcile(&[
        // restart_delay_seconds 0: a 100 ms base, doubled per quick crash, capped at 800 ms.
        policy(sh("crash", &format!("date +%s.%N >> {}; exit 3", runs.display())), RestartPolicy::Always),
        // Runs longer than backoff_reset each time: its delay never grows.
        policy(
            sh("steady", &format!("echo x >> {}; sleep 1.2; exit 1", count("steady").display())),
            RestartPolicy::Always,
        ),
        policy(sh("ok-once", &format!("echo x >> {}; exit 0", count("ok-once").display())), RestartPolicy::OnFailure),
        policy(sh("fail", &format!("echo x >> {}; exit 1", count("fail").display())), RestartPolicy::OnFailure),
        policy(sh("killed", &format!("echo x >> {}; kill -9 $$", count("killed").display())), RestartPolicy::OnFailure),
        policy(sh("never", &format!("echo x >> {}; exit 1", count("never").display())), RestartPolicy::Never),
    ]);
    assert!(changes.iter().all(|c| matches!(c.kind, ChangeKind::Started { pid: Some(_) })), "{changes:?}");

    // Every scheduled restart of "crash", as status shows it.
    let mut delays: Vec<Duration> = Vec::new();
    let mut steady_delays: Vec<Duration> = Vec::new();
    let mut seen: Vec<Instant> = Vec::new();
    let mut steady_seen: Vec<Instant> = Vec::new();
    let ok = run_until(&mut sup, Duration::from_secs(20), |sup| {
        for (name, delays, seen) in
            [("crash", &mut delays, &mut seen), ("steady", &mut steady_delays, &mut steady_seen)]
        {
            let st = sup.status(name).unwrap();
            if let (ServiceState::BackingOff, Some(at), Some(d)) = (st.state, st.restart_at, st.restart_delay) {
                if !seen.contains(&at) {
                    seen.push(at);
                    delays.push(d);
                }
            }
        }
        delays.len() >= 7 && steady_delays.len() >= 2
    });
    assert!(ok, "crash delays {delays:?}, steady delays {steady_delays:?}");
    let ms = |v: &[Duration]| v.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>();
    assert_eq!(ms(&delays[..7]), [100, 200, 400, 800, 800, 800, 800], "doubling from 100 ms, capped at 800 ms");
    assert_eq!(ms(&steady_delays[..2]), [100, 100], "a run longer than backoff_reset starts the backoff over");

    let crash = sup.status("crash").unwrap();
    assert_eq!(crash.last_exit, Some(ExitInfo::Code(3)));
    assert!(crash.restarts >= 6, "{crash:?}");
    // The processes' own timestamps: no restart came before its delay (the first run has no
    // delay before it). Loose on the other side: only that the cap holds.
    let stamps: Vec<f64> = lines(&runs).iter().map(|l| l.parse().unwrap()).collect();
    assert!(stamps.len() >= 7, "{stamps:?}");
    for (i, w) in stamps.windows(2).enumerate().take(6) {
        let gap = w[1] - w[0];
        let d = delays[i].as_secs_f64();
        assert!(gap >= d - 0.005, "restart {i} came after {gap:.3}s, before its delay {d}s");
        assert!(gap < d + 2.0, "restart {i} came after {gap:.3}s, far beyond its delay {d}s");
    }

    // on-failure: a clean exit stays down, a failure or a signal restarts; never: stays down.
    assert_eq!(state(&sup, "ok-once"), ServiceState::Exited);
    assert_eq!(sup.status("ok-once").unwrap().last_exit, Some(ExitInfo::Code(0)));
    assert_eq!(lines(&count("ok-once")).len(), 1);
    assert!(lines(&count("fail")).len() >= 3, "on-failure after exit 1 restarts");
    assert!(lines(&count("killed")).len() >= 3, "on-failure after a signal restarts");
    assert_eq!(sup.status("killed").unwrap().last_exit, Some(ExitInfo::Signal(9)));
    assert_eq!(state(&sup, "never"), ServiceState::Exited);
    assert_eq!(sup.status("never").unwrap().last_exit, Some(ExitInfo::Code(1)));
    assert_eq!(lines(&count("never")).len(), 1);
    let events = sup.take_events().join("\n");
    assert!(events.contains("service crash: pid") && events.contains("(exit code 3); restart in 800ms"), "{events}");
    assert!(events.contains("service never: pid") && events.contains("not restarted (restart policy)"), "{events}");
    sup.stop_all();
}

#[test]
fn dependency_order() {
    let Some(env) = Env::new("dependency_order") else { return };
    let mut sup = Supervisor::new(env.cfg()).unwrap();
    let log = env.file("starts");
    let scope_procs = |s: &str| env.scope("infra", s).join("cgroup.procs");
    // Each writes its name and pid when it starts, and checks that every dependency already
    // runs in its scope (a dependency is started, and has exec'd, before its dependents).
    let svc = |name: &str, order: u32, deps: &[&str]| {
        let checks: String = deps
            .iter()
            .map(|d| {
                format!("[ -n \"$(cat {})\" ] || echo MISSING-{d} >> {}; ", scope_procs(d).display(), log.display())
            })
            .collect();
        with(sh(name, &format!("{checks}echo {name} $$ >> {}; exec sleep 60", log.display())), |s| {
            s.order = order;
            s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        })
    };
    let changes = sup.reconcile(&[
        svc("web", 1, &["db", "cache"]),
        svc("cache", 9, &[]),
        svc("zz", 1, &["ntp"]),
        svc("db", 5, &[]),
        svc("agent", 1, &[]),
        svc("ntp", 0, &[]),
        svc("orphan", 0, &["nowhere"]),
        svc("x", 0, &["y"]),
        svc("y", 0, &["x"]),
        with(svc("off", 0, &[]), |s| s.state = "stopped".into()),
        svc("late", 0, &["off"]),
    ]);
    let expected = ["ntp", "agent", "zz", "db", "cache", "web"];

    let rejected: BTreeMap<&str, &str> = changes
        .iter()
        .filter_map(|c| match &c.kind {
            ChangeKind::Rejected(w) => Some((c.service.as_str(), w.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(rejected["orphan"], "depends on \"nowhere\", which is not declared");
    assert_eq!(rejected["x"], "dependency cycle: x -> y -> x");
    assert_eq!(rejected["y"], "dependency cycle: y -> x -> y");
    assert!(sup.status("x").is_none() && sup.status("orphan").is_none(), "refused declarations do not run");
    let started: Vec<&str> =
        changes.iter().filter(|c| matches!(c.kind, ChangeKind::Started { .. })).map(|c| c.service.as_str()).collect();
    assert_eq!(started, expected);
    assert!(changes.contains(&Change { service: "off".into(), kind: ChangeKind::DeclaredStopped }), "{changes:?}");
    assert!(
        changes
            .contains(&Change { service: "late".into(), kind: ChangeKind::StartQueued("once off is running".into()) }),
        "{changes:?}"
    );
    assert_eq!(state(&sup, "late"), ServiceState::Waiting);
    assert_eq!(state(&sup, "off"), ServiceState::Stopped);

    wait_file_lines(&mut sup, &log, expected.len());
    // Start order as the processes saw it: pids are handed out in fork order (unwrapped here
    // in case the pid counter wrapped around during the test).
    let mut seen: Vec<(i64, String)> = lines(&log)
        .iter()
        .map(|l| {
            assert!(!l.starts_with("MISSING"), "a dependency was not running when its dependent started: {l}");
            let (n, p) = l.split_once(' ').unwrap();
            (p.parse().unwrap(), n.to_string())
        })
        .collect();
    let max = seen.iter().map(|s| s.0).max().unwrap();
    for s in seen.iter_mut() {
        if max - s.0 > 16384 {
            s.0 += 1 << 22;
        }
    }
    seen.sort();
    assert_eq!(seen.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), expected);

    // Starting the stopped dependency lets its waiting dependent start by itself.
    sup.start("off").unwrap();
    wait_file_lines(&mut sup, &log, expected.len() + 2);
    assert_eq!(state(&sup, "late"), ServiceState::Running);
    let all = lines(&log);
    assert!(all.iter().all(|l| !l.starts_with("MISSING")), "{all:?}");
    sup.stop_all();
}

#[test]
fn reverse_order_shutdown() {
    let Some(env) = Env::new("reverse_order_shutdown") else { return };
    let mut cfg = env.cfg();
    cfg.stop_grace = Duration::from_secs(5);
    let mut sup = Supervisor::new(cfg).unwrap();
    let log = env.file("events");
    // Each takes a while to stop, so a supervisor that did not wait for one before stopping
    // the next would interleave the lines.
    let svc = |name: &str, deps: &[&str]| {
        let l = log.display();
        with(
            sh(
                name,
                &format!("trap 'echo begin-{name} >> {l}; sleep 0.3; echo end-{name} >> {l}; exit 0' TERM; echo up-{name} >> {l}; sleep 1000 & wait"),
            ),
            |s| s.depends_on = deps.iter().map(|d| d.to_string()).collect(),
        )
    };
    sup.reconcile(&[svc("c", &["b"]), svc("a", &[]), svc("b", &["a"])]);
    wait_file_lines(&mut sup, &log, 3);
    let scopes: Vec<PathBuf> = ["a", "b", "c"].iter().map(|s| env.scope("infra", s)).collect();
    for s in &scopes {
        assert_eq!(read(&s.join("cgroup.procs")).lines().count(), 2, "sh and its sleep in {}", s.display());
    }
    sup.stop_all();
    assert_eq!(lines(&log)[3..], ["begin-c", "end-c", "begin-b", "end-b", "begin-a", "end-a"]);
    for n in ["a", "b", "c"] {
        let st = sup.status(n).unwrap();
        assert_eq!(st.state, ServiceState::Stopped, "{st:?}");
        assert_eq!(st.last_exit, Some(ExitInfo::Code(0)), "stopped by SIGTERM, not killed: {st:?}");
    }
    // The sleeps each shell left behind were killed with their scope, and the scopes removed.
    for s in &scopes {
        assert!(!s.exists(), "{} was not removed", s.display());
    }
    assert!(
        sup.reconcile(&[svc("d", &[])]).iter().all(|c| matches!(c.kind, ChangeKind::Rejected(_))),
        "nothing starts after stop_all"
    );
}

/// The agent's PID-1 loop in small: reap every child with waitpid(-1), hand each to the
/// supervisor, keep the ones it says are not its own; until `until` holds (10 s at most).
fn pid1_loop(sup: &mut Supervisor, not_ours: &mut Vec<i32>, until: impl Fn(&Supervisor, &[i32]) -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        while let Ok(Some((p, st))) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {
            let p = p.as_raw_nonzero().get();
            if let Some(exit) = ExitInfo::from_wait_status(st) {
                if !sup.child_exited(p, exit) {
                    not_ours.push(p);
                }
            }
        }
        sup.tick(Instant::now());
        if until(sup, not_ours) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Runs in its own process (started by `double_fork_reaped`), because it makes that process
/// a child subreaper and reaps with waitpid(-1), exactly as the agent's PID-1 loop does; in
/// the shared test process that would steal other tests' children.
#[test]
#[ignore = "run by double_fork_reaped in a process of its own"]
fn double_fork_reaped_inner() {
    let Some(env) = Env::new("double_fork_reaped") else { return };
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let mut sup = Supervisor::new(env.cfg()).unwrap();
    let pidfile = env.file("orphan.pid");
    // The inner shell backgrounds a sleep and exits at once: that sleep is orphaned and
    // reparented to the nearest subreaper, this process.
    sup.reconcile(&[sh("forker", &format!("sh -c 'sleep 300 & echo $! > {}'; exec sleep 300", pidfile.display()))]);
    let mut not_ours: Vec<i32> = Vec::new();
    assert!(
        pid1_loop(&mut sup, &mut not_ours, |_, _| !read(&pidfile).trim().is_empty()),
        "the service never wrote its orphan's pid"
    );
    let orphan: i32 = read(&pidfile).trim().parse().unwrap();
    let main = pid(&sup, "forker");
    let ppid = read(Path::new(&format!("/proc/{orphan}/status")))
        .lines()
        .find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().parse::<i32>().unwrap()))
        .unwrap();
    assert_eq!(ppid, me, "the orphan was reparented to the subreaper");
    let procs = read(&env.scope("infra", "forker").join("cgroup.procs"));
    assert!(procs.lines().any(|l| l == orphan.to_string()), "the orphan is in the service's scope: {procs}");

    sup.stop("forker").unwrap();
    assert!(
        pid1_loop(&mut sup, &mut not_ours, |sup, not_ours| sup.status("forker").unwrap().state
            == ServiceState::Stopped
            && not_ours.contains(&orphan)),
        "the orphan {orphan} was not reaped (reaped, not ours: {:?}; status {:?})",
        not_ours,
        sup.status("forker")
    );
    assert!(!not_ours.contains(&main), "child_exited did not recognise the main process as the service's");
    assert!(!Path::new(&format!("/proc/{orphan}")).exists(), "the orphan is gone, zombie included");
    assert_eq!(sup.status("forker").unwrap().last_exit, Some(ExitInfo::Signal(libc::SIGTERM)));
    let scope = env.scope("infra", "forker");
    assert!(pid1_loop(&mut sup, &mut not_ours, |_, _| !scope.exists()), "the emptied scope was removed");
    let events = sup.take_events().join("\n");
    assert!(events.contains("killed 1 process(es) left in its scope"), "{events}");
    println!("double_fork_reaped_inner: orphan {orphan} of service pid {main} killed and reaped");
}

#[test]
fn double_fork_reaped() {
    let Some(_env) = Env::new("double_fork_reaped") else { return };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "double_fork_reaped_inner", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "the inner test failed");
    assert!(text.contains("1 passed") && text.contains("orphan"), "the inner test did not run: {text}");
}

#[test]
fn sigterm_ignored_gets_sigkill() {
    let Some(env) = Env::new("sigterm_ignored_gets_sigkill") else { return };
    let mut cfg = env.cfg();
    cfg.stop_grace = Duration::from_millis(500);
    let mut sup = Supervisor::new(cfg).unwrap();
    let up = env.file("up");
    let stubborn =
        |name: &str| sh(name, &format!("trap '' TERM; echo {name} >> {}; while :; do sleep 0.05; done", up.display()));
    sup.reconcile(&[stubborn("stubborn"), sh("polite", "exec sleep 1000"), stubborn("stubborn-at-shutdown")]);
    wait_file_lines(&mut sup, &up, 2);

    let t0 = Instant::now();
    sup.stop("stubborn").unwrap();
    sup.stop("polite").unwrap();
    assert_eq!(state(&sup, "stubborn"), ServiceState::Stopping);
    assert!(run_until(&mut sup, Duration::from_secs(10), |s| state(s, "stubborn") == ServiceState::Stopped));
    assert!(t0.elapsed() >= Duration::from_millis(500), "SIGKILL only after the grace period");
    let st = sup.status("stubborn").unwrap();
    assert_eq!(st.last_exit, Some(ExitInfo::Signal(libc::SIGKILL)), "{st:?}");
    assert_eq!(sup.status("polite").unwrap().last_exit, Some(ExitInfo::Signal(libc::SIGTERM)), "SIGTERM was enough");
    let events = sup.take_events().join("\n");
    assert!(events.contains("service stubborn: did not stop within 500ms; SIGKILL to its scope"), "{events}");
    assert!(!events.contains("service polite: did not stop"), "{events}");
    let scope = env.scope("infra", "stubborn");
    assert!(
        run_until(&mut sup, Duration::from_secs(5), |_| !scope.exists()),
        "scope emptied (the loop's sleeps too) and removed"
    );

    // The same at shutdown, where stop_all waits for it.
    sup.stop_all();
    let st = sup.status("stubborn-at-shutdown").unwrap();
    assert_eq!((st.state, st.last_exit), (ServiceState::Stopped, Some(ExitInfo::Signal(libc::SIGKILL))));
}

#[test]
fn cgroup_placement_before_exec() {
    let Some(env) = Env::new("cgroup_placement_before_exec") else { return };
    let mut sup = Supervisor::new(env.cfg()).unwrap();
    // cat's very first action reads where it is: it must already be in its scope.
    let probe = with(
        ServiceSpec {
            name: "whereami".into(),
            binary: "/bin/cat".into(),
            args: vec!["/proc/self/cgroup".into()],
            ..Default::default()
        },
        |s| {
            s.restart = RestartPolicy::Never as i32;
            s.cgroup_slice = Some("pact.slice/gpu".into());
        },
    );
    let runner = with(sh("runner", "exec sleep 1000"), |s| s.cgroup_slice = Some("audit".into()));
    sup.reconcile(&[probe, runner]);
    assert!(run_until(&mut sup, Duration::from_secs(10), |s| state(s, "whereami") == ServiceState::Exited));
    let log = read(&env.tmp.join("logs/whereami.log"));
    let expected = format!("0::{}/pact.slice/gpu.slice/whereami.scope", env.cg_in_proc);
    assert!(log.lines().any(|l| l == expected), "expected {expected:?} in the log:\n{log}");
    assert_eq!(sup.status("whereami").unwrap().cgroup, Some(env.scope("gpu", "whereami")));
    // A running service's pid is its scope's only process.
    let p = pid(&sup, "runner");
    assert_eq!(read(&env.scope("audit", "runner").join("cgroup.procs")).trim(), p.to_string());
    // The tree new() made, workload.slice included (and left empty).
    for s in ["infra", "network", "gpu", "audit"] {
        assert!(env.cg.join(format!("pact.slice/{s}.slice")).is_dir());
    }
    assert!(env.cg.join("workload.slice").is_dir());
    assert_eq!(read(&env.cg.join("workload.slice/cgroup.procs")), "");
    sup.stop_all();
}

/// The block device io.max can be set on: the first /sys/block entry that is a real disk.
fn some_block_device() -> Option<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .filter(|e| {
            !e.file_name().to_string_lossy().starts_with("loop") && !e.file_name().to_string_lossy().starts_with("zram")
        })
        .filter_map(|e| Some(read(&e.path().join("dev")).trim().to_string()).filter(|d| !d.is_empty()))
        .collect();
    v.sort();
    v.into_iter().next()
}

fn limited(dev: Option<&str>) -> ServiceSpec {
    with(sh("limited", "exec sleep 1000"), |s| {
        s.cgroup_memory_max = Some("512M".into());
        s.cgroup_cpu_weight = Some(250);
        s.cgroup_pids_max = Some(64);
        s.cgroup_io_max = dev.map(|d| format!("{d} rbps=1048576"));
        s.cgroup_slice = Some("network".into());
    })
}

#[test]
fn cgroup_limits_written() {
    let Some(env) = Env::new("cgroup_limits_written") else { return };
    let offered = read(&env.cg.join("cgroup.controllers"));
    let available: Vec<&str> =
        ["memory", "cpu", "io", "pids"].into_iter().filter(|c| offered.split_whitespace().any(|x| x == *c)).collect();
    if available.is_empty() {
        eprintln!(
            "skipped: cgroup_limits_written: none of memory, cpu, io, pids is available in {} (cgroup.controllers: {:?}); \
             they are bound to cgroup v1 on this host. missing_controllers_are_reported covers this case",
            env.cg.display(),
            offered.trim()
        );
        return;
    }
    let dev = some_block_device();
    let mut sup = Supervisor::new(env.cfg()).unwrap();
    sup.reconcile(&[limited(dev.as_deref())]);
    let p = pid(&sup, "limited");
    let scope = env.scope("network", "limited");
    assert_eq!(read(&scope.join("cgroup.procs")).trim(), p.to_string());
    let st = sup.status("limited").unwrap();
    for (c, file, want) in
        [("memory", "memory.max", "536870912"), ("cpu", "cpu.weight", "250"), ("pids", "pids.max", "64")]
    {
        if available.contains(&c) {
            assert_eq!(read(&scope.join(file)).trim(), want, "{file}");
        } else {
            eprintln!("skipped: cgroup_limits_written: {file}: the {c} controller is not available here");
            assert!(st.warnings.iter().any(|w| w.starts_with(file)), "{file} not reported: {:?}", st.warnings);
        }
    }
    match (&dev, available.contains(&"io")) {
        (Some(d), true) => {
            let io = read(&scope.join("io.max"));
            assert!(io.lines().any(|l| l.starts_with(&format!("{d} rbps=1048576 "))), "io.max: {io:?}");
        }
        (None, _) => eprintln!("skipped: cgroup_limits_written: io.max: no block device to limit"),
        (Some(_), false) => {
            eprintln!("skipped: cgroup_limits_written: io.max: the io controller is not available here")
        }
    }
    if available.len() == 4 && dev.is_some() {
        assert!(st.warnings.is_empty(), "{:?}", st.warnings);
    }
    sup.stop_all();
}

#[test]
fn missing_controllers_are_reported() {
    let Some(env) = Env::new("missing_controllers_are_reported") else { return };
    let offered = read(&env.cg.join("cgroup.controllers"));
    let missing: Vec<&str> =
        ["memory", "cpu", "io", "pids"].into_iter().filter(|c| !offered.split_whitespace().any(|x| x == *c)).collect();
    if missing.is_empty() {
        eprintln!("skipped: missing_controllers_are_reported: every controller is available here (cgroup_limits_written checks the limits)");
        return;
    }
    let mut sup = Supervisor::new(env.cfg()).unwrap();
    let notes = sup.notes().join("\n");
    assert!(notes.contains(&format!("cgroup controllers {} are not available", missing.join(", "))), "{notes}");
    let changes = sup.reconcile(&[limited(Some("8:0"))]);
    assert!(matches!(changes[0].kind, ChangeKind::Started { .. }), "the service runs without its limits: {changes:?}");
    let st = sup.status("limited").unwrap();
    assert_eq!(st.state, ServiceState::Running);
    for (c, file) in [("memory", "memory.max"), ("cpu", "cpu.weight"), ("io", "io.max"), ("pids", "pids.max")] {
        if missing.contains(&c) {
            let w = st
                .warnings
                .iter()
                .find(|w| w.starts_with(file))
                .unwrap_or_else(|| panic!("{file} not reported: {:?}", st.warnings));
            assert!(w.contains(&format!("the {c} controller is not available in this cgroup2 hierarchy")), "{w}");
        }
    }
    let events = sup.take_events().join("\n");
    assert!(events.contains("service limited: memory.max") || !missing.contains(&"memory"), "{events}");
    sup.stop_all();
}

#[test]
fn logs_written_and_rotated() {
    let Some(env) = Env::new("logs_written_and_rotated") else { return };
    let mut cfg = env.cfg();
    cfg.log_max_bytes = 2000;
    cfg.log_keep = 2;
    let mut sup = Supervisor::new(cfg).unwrap();
    sup.reconcile(&[sh(
        "chatty",
        "i=0; while :; do echo \"out $i ................................................\"; echo \"err $i\" >&2; i=$((i+1)); sleep 0.01; done",
    )]);
    let log = env.tmp.join("logs/chatty.log");
    let copy = |n: u32| env.tmp.join(format!("logs/chatty.log.{n}"));
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    for round in 1..=3u32 {
        assert!(
            run_until(&mut sup, Duration::from_secs(10), |_| size(&log) > 2000),
            "round {round}: the log never grew"
        );
        sup.rotate_logs();
        let first = read(&copy(1));
        assert!(first.len() > 2000, "round {round}: .1 holds the rotated log ({} bytes)", first.len());
        assert!(first.contains("\nout ") && first.contains("\nerr "), "stdout and stderr both land in the log");
        if round == 1 {
            assert!(
                first.contains("[pact-agent ") && first.contains("] started pid "),
                "the supervisor notes its own lines"
            );
        }
        assert!(size(&log) < 2000, "round {round}: the log was truncated");
    }
    assert!(copy(2).exists(), "two copies kept");
    assert!(!copy(3).exists(), "never more than log_keep copies");

    // tick rotates by itself (checked about once a second).
    assert!(run_until(&mut sup, Duration::from_secs(10), |_| size(&log) > 2000));
    assert!(run_until(&mut sup, Duration::from_secs(5), |_| size(&log) < 2000), "tick did not rotate");
    // O_APPEND: after a truncate the service writes at the new end, leaving no hole of NULs.
    std::thread::sleep(Duration::from_millis(100));
    let bytes = std::fs::read(&log).unwrap();
    assert!(!bytes.is_empty() && !bytes.contains(&0), "the log after rotation is plain text");
    sup.stop_all();
}

/// A tiny HTTP server: /ok answers 200, anything else 503.
fn http_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 1024];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let resp = if req.starts_with("GET /ok HTTP/1.0\r\n") && req.contains("\r\nHost: 127.0.0.1:") {
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
            } else {
                "HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
            };
            let _ = c.write_all(resp.as_bytes());
        }
    });
    port
}

#[test]
fn health_checks() {
    let Some(env) = Env::new("health_checks") else { return };
    let mut sup = Supervisor::new(env.cfg()).unwrap();
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // dropped: refused
    let http = http_server();
    let checked = |name: &str, check: Check| {
        with(sh(name, "exec sleep 1000"), |s| {
            s.health_check = Some(HealthCheck { check: Some(check), interval_seconds: 1 })
        })
    };
    sup.reconcile(&[
        checked("tcp-ok", Check::TcpPort(u32::from(open_port))),
        checked("tcp-bad", Check::TcpPort(u32::from(closed_port))),
        checked("http-ok", Check::HttpUrl(format!("http://127.0.0.1:{http}/ok"))),
        checked("http-bad", Check::HttpUrl(format!("http://127.0.0.1:{http}/bad"))),
        checked("https", Check::HttpUrl("https://127.0.0.1:1/".into())),
        checked("proc", Check::Process(true)),
        sh("unchecked", "exec sleep 1000"),
    ]);
    let names = ["tcp-ok", "tcp-bad", "http-ok", "http-bad", "https", "proc"];
    for n in names {
        assert_eq!(sup.status(n).unwrap().health, Health::Pending, "{n} before its first check");
    }
    let done = run_until(&mut sup, Duration::from_secs(15), |s| {
        names.iter().all(|n| s.status(n).unwrap().health != Health::Pending)
    });
    let health: BTreeMap<&str, Health> = names.iter().map(|n| (*n, sup.status(n).unwrap().health)).collect();
    assert!(done, "{health:?}");
    assert_eq!(health["tcp-ok"], Health::Healthy);
    assert_eq!(health["http-ok"], Health::Healthy);
    assert_eq!(health["proc"], Health::Healthy);
    let why = |n: &str| match &health[n] {
        Health::Unhealthy(w) => w.clone(),
        other => panic!("{n} should be unhealthy: {other:?}"),
    };
    assert!(why("tcp-bad").contains(&format!("TCP connect to 127.0.0.1:{closed_port}")), "{}", why("tcp-bad"));
    assert!(why("http-bad").contains("HTTP 503"), "{}", why("http-bad"));
    assert!(why("https").contains("https:// health checks are not supported"), "{}", why("https"));
    assert_eq!(sup.status("unchecked").unwrap().health, Health::NotChecked);
    assert!(sup.status("tcp-ok").unwrap().health_checked_at.is_some());

    // The process check follows the process; a network check follows its port.
    drop(open);
    sup.stop("proc").unwrap();
    assert!(run_until(&mut sup, Duration::from_secs(10), |s| matches!(
        s.status("tcp-ok").unwrap().health,
        Health::Unhealthy(_)
    )));
    assert_eq!(sup.status("proc").unwrap().health, Health::Pending, "not checked while stopped");
    sup.stop_all();
}

#[test]
fn reconcile_touches_only_changed_services() {
    let Some(env) = Env::new("reconcile_touches_only_changed_services") else { return };
    let mut sup = Supervisor::new(env.cfg()).unwrap();
    let log = env.file("terms");
    let sleeper = |name: &str| sh(name, "exec sleep 1000");
    // p and q (q depends on p) note when SIGTERM arrives; q takes a while to go.
    let l = log.display();
    let up = env.file("up");
    let u = up.display();
    let p = sh("p", &format!("trap 'echo p-term >> {l}; exit 0' TERM; echo p >> {u}; sleep 1000 & wait"));
    let q = with(
        sh("q", &format!("trap 'echo q-term >> {l}; sleep 0.3; echo q-gone >> {l}; exit 0' TERM; echo q >> {u}; sleep 1000 & wait")),
        |s| s.depends_on = vec!["p".into()],
    );
    let d = with(sleeper("d"), |s| s.depends_on = vec!["a".into()]);
    let first = [sleeper("a"), sleeper("b"), sleeper("c"), d.clone(), p, q];
    sup.reconcile(&first);
    wait_file_lines(&mut sup, &up, 2); // their traps are set
    let before: BTreeMap<&str, i32> = ["a", "b", "c", "d", "p", "q"].iter().map(|n| (*n, pid(&sup, n))).collect();

    assert_eq!(sup.reconcile(&first), [], "the same declarations change nothing");
    for (n, p) in &before {
        assert_eq!(pid(&sup, n), *p, "{n} untouched");
    }

    // b changes, c, p and q go, e is new; a and d (which depends on a) stay as they are,
    // and so does a whose `order` alone changed (nothing about its process did).
    let b2 = with(sleeper("b"), |s| s.args = vec!["-c".into(), "exec sleep 999".into()]);
    let changes = sup.reconcile(&[with(sleeper("a"), |s| s.order = 7), b2, d, sleeper("e")]);
    let kinds: BTreeMap<&str, Vec<&ChangeKind>> = changes.iter().fold(BTreeMap::new(), |mut m, c| {
        m.entry(c.service.as_str()).or_default().push(&c.kind);
        m
    });
    assert_eq!(kinds["c"], [&ChangeKind::Stopping(StopReason::Removed)]);
    assert_eq!(kinds["p"], [&ChangeKind::Stopping(StopReason::Removed)]);
    assert_eq!(kinds["q"], [&ChangeKind::Stopping(StopReason::Removed)]);
    assert_eq!(
        kinds["b"],
        [
            &ChangeKind::Stopping(StopReason::Changed),
            &ChangeKind::StartQueued("once its previous instance has exited".into())
        ]
    );
    assert!(matches!(kinds["e"][..], [ChangeKind::Started { pid: Some(_) }]), "{changes:?}");
    assert!(!kinds.contains_key("a") && !kinds.contains_key("d"), "{changes:?}");

    let settled = run_until(&mut sup, Duration::from_secs(10), |s| {
        s.status("c").is_none()
            && s.status("p").is_none()
            && s.status("q").is_none()
            && state(s, "b") == ServiceState::Running
    });
    assert!(settled, "{:?}", sup.status_all());
    assert_eq!(pid(&sup, "a"), before["a"]);
    assert_eq!(pid(&sup, "d"), before["d"]);
    assert_ne!(pid(&sup, "b"), before["b"], "b restarted");
    let cmdline = read(Path::new(&format!("/proc/{}/cmdline", pid(&sup, "b"))));
    assert!(cmdline.contains("999"), "b runs its new declaration: {cmdline:?}");
    for n in ["b", "c", "p", "q"] {
        assert!(!alive(before[n]), "old {n} (pid {}) is gone", before[n]);
    }
    // q depends on p: p got its SIGTERM only once q had ended.
    assert_eq!(lines(&log), ["q-term", "q-gone", "p-term"]);
    let names: Vec<String> = sup.status_all().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["b", "e", "a", "d"], "status in the new start order (a now has order 7)");
    sup.stop_all();
}

#[test]
fn api_start_stop_restart_and_declared_stopped() {
    let Some(env) = Env::new("api_start_stop_restart_and_declared_stopped") else { return };
    let mut sup = Supervisor::new(env.cfg()).unwrap();
    let changes = sup.reconcile(&[
        with(sh("idle", "exec sleep 1000"), |s| s.state = "stopped".into()),
        with(
            ServiceSpec { name: "ghost".into(), binary: "/nonexistent/bin/ghost".into(), ..Default::default() },
            |s| s.restart = RestartPolicy::Never as i32,
        ),
    ]);
    assert_eq!(changes[0], Change { service: "idle".into(), kind: ChangeKind::DeclaredStopped });
    match &changes[1].kind {
        ChangeKind::StartFailed(e) => assert!(e.starts_with("exec /nonexistent/bin/ghost: "), "{e}"),
        other => panic!("{other:?}"),
    }
    let ghost = sup.status("ghost").unwrap();
    assert_eq!(ghost.state, ServiceState::Exited);
    assert!(ghost.last_error.as_deref().unwrap_or_default().contains("No such file"), "{ghost:?}");
    assert!(!env.scope("infra", "ghost").exists(), "no scope left behind by a failed start");

    let idle = sup.status("idle").unwrap();
    assert_eq!((idle.state, idle.declared_running, idle.pid), (ServiceState::Stopped, false, None));
    sup.start("idle").unwrap();
    let p1 = pid(&sup, "idle");
    sup.restart("idle").unwrap();
    assert!(run_until(&mut sup, Duration::from_secs(10), |s| s.status("idle").unwrap().pid.is_some_and(|p| p != p1)));
    assert!(!alive(p1));
    let p2 = pid(&sup, "idle");
    sup.stop("idle").unwrap();
    assert!(run_until(&mut sup, Duration::from_secs(10), |s| state(s, "idle") == ServiceState::Stopped));
    assert!(!alive(p2));
    // Stopped through the API, it stays stopped: nothing restarts it.
    assert!(!run_until(&mut sup, Duration::from_millis(500), |s| state(s, "idle") != ServiceState::Stopped));
    sup.restart("idle").unwrap();
    assert_eq!(state(&sup, "idle"), ServiceState::Running);

    assert_eq!(sup.start("nope"), Err(Error::UnknownService("nope".into())));
    assert_eq!(sup.stop("nope"), Err(Error::UnknownService("nope".into())));
    assert!(sup.status("nope").is_none());
    sup.stop_all();
    assert_eq!(state(&sup, "idle"), ServiceState::Stopped);
}

#[test]
fn pact_backend_refuses_a_root_that_is_not_cgroup2() {
    let tmp = std::env::temp_dir().join(unique("pact-not-cgroup"));
    std::fs::create_dir_all(&tmp).unwrap();
    let cfg = SupervisorConfig { cgroup_root: tmp.clone(), log_dir: tmp.join("logs"), ..SupervisorConfig::default() };
    match Supervisor::new(cfg) {
        Err(Error::Setup(e)) => assert!(e.contains("is not a cgroup2 file system"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a plain directory was accepted as a cgroup2 root"),
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

// ---- systemd backend ----

const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
# Stand-in for systemctl: records each call; `show` answers like systemd for a running unit.
echo "$*" >> "$(dirname "$0")/calls"
case "$*" in
  *pact-broken.service*) echo "Job for pact-broken.service failed." >&2; exit 1 ;;
  show*) printf 'ActiveState=active\nSubState=running\nMainPID=4242\nNRestarts=3\n' ;;
esac
exit 0
"#;

struct Fake {
    dir: PathBuf,
}

impl Fake {
    fn new() -> Fake {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(unique("pact-systemd-test"));
        std::fs::create_dir_all(dir.join("units")).unwrap();
        let bin = dir.join("systemctl");
        std::fs::write(&bin, FAKE_SYSTEMCTL).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake { dir }
    }

    fn cfg(&self) -> SupervisorConfig {
        SupervisorConfig {
            systemd_unit_dir: self.dir.join("units"),
            systemctl: self.dir.join("systemctl"),
            ..SupervisorConfig::defaults(BackendKind::Systemd)
        }
    }

    /// The calls since the last look.
    fn calls(&self) -> Vec<String> {
        let p = self.dir.join("calls");
        let v = lines(&p);
        let _ = std::fs::remove_file(&p);
        v
    }

    fn unit(&self, name: &str) -> String {
        read(&self.dir.join("units").join(format!("pact-{name}.service")))
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn systemd_decls() -> Vec<ServiceSpec> {
    let db = ServiceSpec {
        name: "db".into(),
        binary: "/usr/bin/db server".into(),
        args: vec![
            "--port".into(),
            "5432".into(),
            "a b".into(),
            "$HOME".into(),
            "50%".into(),
            "say \"hi\"\\".into(),
            ";".into(),
        ],
        env: [("B".to_string(), "two words".to_string()), ("A".to_string(), "1% \"q\"".to_string())]
            .into_iter()
            .collect(),
        restart: RestartPolicy::OnFailure as i32,
        restart_delay_seconds: 5,
        cgroup_slice: Some("network".into()),
        cgroup_memory_max: Some("512M".into()),
        cgroup_cpu_weight: Some(200),
        cgroup_pids_max: Some(64),
        cgroup_io_max: Some("8:0 rbps=1048576 wiops=100; 8:16 wbps=max riops=50".into()),
        health_check: Some(HealthCheck { check: Some(Check::TcpPort(5432)), interval_seconds: 10 }),
        ..Default::default()
    };
    let web = ServiceSpec {
        name: "web".into(),
        binary: "/usr/bin/web".into(),
        depends_on: vec!["db".into()],
        restart: RestartPolicy::Never as i32,
        order: 1,
        ..Default::default()
    };
    let spare = ServiceSpec {
        name: "spare".into(),
        binary: "/usr/bin/spare".into(),
        state: "stopped".into(),
        ..Default::default()
    };
    vec![web, db, spare]
}

#[test]
fn systemd_unit_files_exact() {
    let fake = Fake::new();
    // Someone's own unit with our prefix: never touched (no marker line).
    std::fs::write(fake.dir.join("units/pact-manual.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
    let mut sup = Supervisor::new(fake.cfg()).unwrap();
    let changes = sup.reconcile(&systemd_decls());
    assert_eq!(
        changes,
        [
            Change { service: "db".into(), kind: ChangeKind::Started { pid: None } },
            Change { service: "spare".into(), kind: ChangeKind::DeclaredStopped },
            Change { service: "web".into(), kind: ChangeKind::Started { pid: None } },
        ]
    );
    assert_eq!(
        fake.unit("db"),
        r#"# Generated by pact-agent from the declaration of service "db"; pact rewrites or removes this file.
[Unit]
Description=pact service db
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart="/usr/bin/db server" "--port" "5432" "a b" "$$HOME" "50%%" "say \"hi\"\\" \;
Environment="A=1%% \"q\""
Environment="B=two words"
Restart=on-failure
RestartSec=5s
KillMode=mixed
TimeoutStopSec=10s
Slice=pact-network.slice
MemoryMax=536870912
CPUWeight=200
TasksMax=64
IOReadBandwidthMax=/dev/block/8:0 1048576
IOWriteIOPSMax=/dev/block/8:0 100
IOReadIOPSMax=/dev/block/8:16 50
"#
    );
    assert_eq!(
        fake.unit("web"),
        r#"# Generated by pact-agent from the declaration of service "web"; pact rewrites or removes this file.
[Unit]
Description=pact service web
After=pact-db.service
Requires=pact-db.service
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart="/usr/bin/web"
Restart=no
RestartSec=100ms
KillMode=mixed
TimeoutStopSec=10s
Slice=pact-infra.slice
"#
    );
    assert!(fake.unit("spare").contains("ExecStart=\"/usr/bin/spare\"\n"), "a declared-stopped service has its unit");
    assert_eq!(
        fake.calls(),
        ["daemon-reload", "--no-block start pact-db.service", "--no-block start pact-web.service"]
    );

    let st = sup.status("db").unwrap();
    assert_eq!(
        (st.state, st.pid, st.restarts, st.detail.as_str()),
        (ServiceState::Running, Some(4242), 3, "active/running")
    );
    assert_eq!(st.health, Health::Pending, "the tcp check runs from the agent");
    assert_eq!(fake.calls(), ["show -p ActiveState,SubState,MainPID,NRestarts pact-db.service"]);
    assert_eq!(sup.status_all().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["db", "spare", "web"]);
    fake.calls();

    // Unchanged: nothing written, nothing called.
    assert_eq!(sup.reconcile(&systemd_decls()), []);
    assert_eq!(fake.calls(), Vec::<String>::new());

    // web changes, spare goes, db stays.
    let mut next = systemd_decls();
    next[0].args = vec!["--verbose".into()];
    next.pop();
    let changes = sup.reconcile(&next);
    assert_eq!(
        changes,
        [
            Change { service: "spare".into(), kind: ChangeKind::Stopping(StopReason::Removed) },
            Change { service: "web".into(), kind: ChangeKind::Started { pid: None } },
        ]
    );
    assert_eq!(
        fake.calls(),
        ["--no-block stop pact-spare.service", "daemon-reload", "--no-block restart pact-web.service"]
    );
    assert!(!fake.dir.join("units/pact-spare.service").exists());
    assert!(fake.unit("web").contains("ExecStart=\"/usr/bin/web\" \"--verbose\"\n"));
    assert!(fake.dir.join("units/pact-manual.service").exists(), "a unit without the marker is not ours");

    // An agent restarted with the same declarations rewrites nothing and restarts nothing
    // (start of an active unit is a no-op for systemd).
    let mut again = Supervisor::new(fake.cfg()).unwrap();
    let changes = again.reconcile(&next);
    assert!(changes.iter().all(|c| c.kind == ChangeKind::Started { pid: None }), "{changes:?}");
    assert_eq!(fake.calls(), ["--no-block start pact-db.service", "--no-block start pact-web.service"]);

    // The API, and a systemctl failure.
    again.restart("web").unwrap();
    again.stop("db").unwrap();
    again.start("db").unwrap();
    assert_eq!(again.start("nope"), Err(Error::UnknownService("nope".into())));
    assert_eq!(
        fake.calls(),
        ["--no-block restart pact-web.service", "--no-block stop pact-db.service", "--no-block start pact-db.service"]
    );
    let mut broken = next.clone();
    broken.push(ServiceSpec { name: "broken".into(), binary: "/bin/false".into(), ..Default::default() });
    let changes = again.reconcile(&broken);
    match &changes[..] {
        [Change { service, kind: ChangeKind::StartFailed(e) }] if service == "broken" => {
            assert!(e.contains("Job for pact-broken.service failed."), "{e}")
        }
        other => panic!("{other:?}"),
    }
    fake.calls();

    // Shutdown: dependents first, each stop waited for (no --no-block).
    again.stop_all();
    assert_eq!(fake.calls(), ["stop pact-web.service", "stop pact-db.service", "stop pact-broken.service"]);
}

/// The systemd backend's unit files, checked by systemd's own parser (`systemd-analyze
/// verify`, offline): every key known, every value parsed, dependencies resolved. The other
/// systemd tests drive a recording stand-in for `systemctl`; this one is the real parser.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Some(analyze) =
        ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].into_iter().find(|p| Path::new(p).exists())
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: systemd-analyze is required (apt-get install systemd)"
        );
        println!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("pact-sd-verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let verify = |files: &[PathBuf]| {
        let out = std::process::Command::new(analyze)
            .arg("verify")
            .arg("--man=no")
            .args(files)
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let mut files = Vec::new();
    for mut d in systemd_decls() {
        // verify checks that ExecStart names an executable.
        d.binary = "/bin/sleep".into();
        let unit = pact_agent::supervisor::unit_file_for(&d, Duration::from_secs(10)).unwrap();
        let f = dir.join(format!("pact-{}.service", d.name));
        std::fs::write(&f, unit).unwrap();
        files.push(f);
    }
    let (ok, stderr) = verify(&files);
    assert!(ok && stderr.trim().is_empty(), "systemd-analyze verify: ok={ok}\n{stderr}");
    // The check has teeth: a value systemd cannot parse is reported.
    let bad = dir.join("pact-bad.service");
    let db = files.iter().find(|f| f.ends_with("pact-db.service")).unwrap();
    let unit = std::fs::read_to_string(db).unwrap().replace("CPUWeight=200", "CPUWeight=lots");
    assert!(unit.contains("CPUWeight=lots"));
    std::fs::write(&bad, unit).unwrap();
    let (_, stderr) = verify(&[bad]);
    assert!(stderr.contains("Invalid CPU weight"), "a bad value must be reported: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
