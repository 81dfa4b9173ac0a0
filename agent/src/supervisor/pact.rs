//! The pact backend: services as child processes of the agent, one cgroup v2 scope each.
//!
//! Each service is a small state machine ([`Phase`]); every event (reconcile, an API call, a
//! reaped child, a tick) updates it and then calls [`PactBackend::drive`], which sends the
//! stops that may go now (a service is not stopped while a dependent that is also stopping
//! still runs) and starts what may start now (wanted, not running, every dependency
//! running), in declaration order. Nothing waits except `stop_all`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pact_proto::config::ServiceSpec;
use rustix::process::{Pid, Signal, WaitOptions};

use super::health::Monitor;
use super::spec::{self, Decl, Limit, Restart};
use super::{
    cgroup, logs, spawn, Change, ChangeKind, Error, Events, ExitInfo, Health, ServiceState, ServiceStatus, StopReason,
    SupervisorConfig,
};

/// A service's environment starts empty (the agent's own, as PID 1, is the kernel's and
/// says nothing useful) with this PATH, then its declared `env`, which may replace it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How often logs are checked for rotation while a service runs.
const LOG_CHECK: Duration = Duration::from_secs(1);

/// How long `stop_all` waits for a process after SIGKILL before giving up on it (a process in
/// uninterruptible sleep cannot die until its I/O ends; shutdown must not hang on it).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Retry interval of removing a scope whose killed processes had not left yet.
const SCOPE_RETRY: Duration = Duration::from_millis(50);

/// How long a start waits for killed leftovers of the previous instance to leave its scope.
const LEFTOVER_WAIT: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Not running. Starts when wanted and its dependencies run.
    Down,
    Running {
        pid: i32,
        since: Instant,
    },
    Stopping {
        pid: i32,
        deadline: Instant,
        killed: bool,
    },
    Backoff {
        until: Instant,
        delay: Duration,
    },
    /// Ended by itself and the policy says not to restart.
    Exited,
}

struct Svc {
    /// The declaration the current (or last) instance runs with.
    decl: Decl,
    /// Position in the declared start order.
    rank: usize,
    /// A changed declaration, applied once the current instance has exited.
    next: Option<Decl>,
    /// No longer declared: forgotten once its instance has exited.
    removed: bool,
    /// Whether it should run now (declared "running", or asked through the API).
    want_run: bool,
    /// A stop asked by reconcile, sent once no dependent that is stopping too still runs.
    stop_pending: Option<StopReason>,
    phase: Phase,
    restarts: u32,
    /// Consecutive restarts without a long enough run: the exponent of the backoff.
    backoff_step: u32,
    last_exit: Option<ExitInfo>,
    last_error: Option<String>,
    warnings: Vec<String>,
    last_log_error: Option<String>,
}

impl Svc {
    fn pid(&self) -> Option<i32> {
        match self.phase {
            Phase::Running { pid, .. } | Phase::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn running(&self) -> bool {
        matches!(self.phase, Phase::Running { .. })
    }

    /// Running, or stopping, because of a stop that was asked (its dependencies must wait).
    fn going_down(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. }) || (self.running() && self.stop_pending.is_some())
    }

    /// The declaration it will have once settled: what reconcile compares against.
    fn effective(&self) -> &Decl {
        self.next.as_ref().unwrap_or(&self.decl)
    }
}

pub struct PactBackend {
    cfg: SupervisorConfig,
    services: BTreeMap<String, Svc>,
    monitor: Monitor,
    pub(super) events: Events,
    /// Scopes whose removal failed because killed processes had not left yet.
    leftover_scopes: Vec<PathBuf>,
    next_log_check: Option<Instant>,
    shutting_down: bool,
    /// False: no usable cgroup2 (`cgroups_optional`); services run in their own process
    /// groups without scopes or limits.
    cgroups: bool,
}

/// Starts done by one `drive`: (service, pid or error).
type Starts = Vec<(String, Result<i32, String>)>;

impl PactBackend {
    pub fn new(cfg: SupervisorConfig) -> Result<(PactBackend, Vec<String>), Error> {
        // Set up is not enough: slices that someone else made may exist but not be ours to
        // write (an agent run as an ordinary user after one run as root).
        let usable = |root: &std::path::Path| {
            cgroup::setup(root).and_then(|notes| {
                for slice in super::spec::Slice::ALL {
                    let dir = cgroup::slice_dir(root, slice);
                    rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK)
                        .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
                }
                Ok(notes)
            })
        };
        let (notes, cgroups) = match usable(&cfg.cgroup_root) {
            Ok(notes) => (notes, true),
            Err(e) if cfg.cgroups_optional => (
                vec![format!(
                    "cgroup v2 unavailable ({e}): services run without scopes or limits, each in its own process group"
                )],
                false,
            ),
            Err(e) => return Err(Error::Setup(e)),
        };
        std::fs::create_dir_all(&cfg.log_dir)
            .map_err(|e| Error::Setup(format!("create {}: {e}", cfg.log_dir.display())))?;
        let b = PactBackend {
            cfg,
            services: BTreeMap::new(),
            monitor: Monitor::default(),
            events: Events::default(),
            leftover_scopes: Vec::new(),
            next_log_check: None,
            shutting_down: false,
            cgroups,
        };
        Ok((b, notes))
    }

    fn scope(&self, d: &Decl) -> PathBuf {
        cgroup::scope_dir(&self.cfg.cgroup_root, d.slice, d.name())
    }

    fn event(&mut self, line: String) {
        self.events.push(line);
    }

    /// Names in start order (ascending rank, then name) or the reverse.
    fn by_rank(&self, reverse: bool) -> Vec<String> {
        let mut v: Vec<(usize, &String)> = self.services.iter().map(|(n, s)| (s.rank, n)).collect();
        v.sort();
        if reverse {
            v.reverse();
        }
        v.into_iter().map(|(_, n)| n.clone()).collect()
    }

    pub fn reconcile(&mut self, desired: &[ServiceSpec], now: Instant) -> Vec<Change> {
        let plan = spec::plan(desired);
        let mut changes: Vec<Change> = plan
            .rejected
            .into_iter()
            .map(|(service, why)| Change { service, kind: ChangeKind::Rejected(why) })
            .collect();
        if self.shutting_down {
            changes.extend(plan.decls.into_iter().map(|d| Change {
                service: d.spec.name,
                kind: ChangeKind::Rejected("the supervisor is shutting down".into()),
            }));
            return changes;
        }
        let new: BTreeMap<String, (usize, Decl)> =
            plan.decls.into_iter().enumerate().map(|(i, d)| (d.spec.name.clone(), (i, d))).collect();

        // Gone or changed services, dependents first.
        let mut touched: Vec<String> = Vec::new();
        for name in self.by_rank(true) {
            let s = self.services.get_mut(&name).expect("listed");
            match new.get(&name) {
                None if s.removed => {}
                None => {
                    s.removed = true;
                    s.next = None;
                    s.want_run = false;
                    changes.push(self.request_stop(&name, StopReason::Removed));
                }
                Some((rank, d)) => {
                    s.rank = *rank;
                    if !s.removed && s.effective() == d {
                        continue; // unchanged: left alone, whatever its state
                    }
                    if !s.removed && s.next.is_none() && s.decl.same_process(d) {
                        // Only `order` or the health check changed: kept running as it is.
                        let rearm = s.decl.health != d.health;
                        s.decl = d.clone();
                        if let (true, Phase::Running { pid, .. }) = (rearm, s.phase) {
                            match &d.health {
                                Some((probe, interval)) => self.monitor.arm(&name, probe, *interval, Some(pid), now),
                                None => self.monitor.disarm(&name),
                            }
                        }
                        continue;
                    }
                    s.removed = false;
                    let reason = if d.run { StopReason::Changed } else { StopReason::DeclaredStopped };
                    s.next = Some(d.clone());
                    if d.run {
                        touched.push(name.clone());
                    }
                    let c = self.request_stop(&name, reason);
                    // A changed service that was not running just takes its new declaration;
                    // only a declared stop is worth a line then.
                    if !matches!(c.kind, ChangeKind::Stopped(StopReason::Changed)) {
                        changes.push(c);
                    }
                }
            }
        }
        // New services.
        for (name, (rank, d)) in new {
            if self.services.contains_key(&name) {
                continue;
            }
            if d.run {
                touched.push(name.clone());
            } else {
                changes.push(Change { service: name.clone(), kind: ChangeKind::DeclaredStopped });
            }
            self.services.insert(
                name,
                Svc {
                    want_run: d.run,
                    decl: d,
                    rank,
                    next: None,
                    removed: false,
                    stop_pending: None,
                    phase: Phase::Down,
                    restarts: 0,
                    backoff_step: 0,
                    last_exit: None,
                    last_error: None,
                    warnings: Vec::new(),
                    last_log_error: None,
                },
            );
        }

        let mut started: BTreeMap<String, Result<i32, String>> = self.drive(now).into_iter().collect();
        let mut order: Vec<(usize, String)> = touched.into_iter().map(|n| (self.services[&n].rank, n)).collect();
        order.sort();
        for (_, name) in order {
            let kind = match started.remove(&name) {
                Some(Ok(pid)) => ChangeKind::Started { pid: Some(pid) },
                Some(Err(e)) => ChangeKind::StartFailed(e),
                None => ChangeKind::StartQueued(self.wait_reason(&name).unwrap_or_else(|| "later".into())),
            };
            changes.push(Change { service: name, kind });
        }
        // Anything else drive started (a dependent that was waiting for a touched service).
        self.log_starts(started.into_iter().collect());
        changes
    }

    /// Marks a service to stop for `reason`. Running: the SIGTERM is sent by `drive`;
    /// otherwise it settles at once (takes its next declaration, or is forgotten).
    fn request_stop(&mut self, name: &str, reason: StopReason) -> Change {
        let s = self.services.get_mut(name).expect("known service");
        let kind = match s.phase {
            Phase::Running { .. } => {
                s.stop_pending = Some(reason);
                ChangeKind::Stopping(reason)
            }
            Phase::Stopping { .. } => ChangeKind::Stopping(reason),
            Phase::Down | Phase::Exited | Phase::Backoff { .. } => {
                s.phase = Phase::Down;
                self.settle(name);
                ChangeKind::Stopped(reason)
            }
        };
        Change { service: name.to_string(), kind }
    }

    /// A service that is not running takes its next declaration, or is forgotten if removed.
    fn settle(&mut self, name: &str) {
        let Some(s) = self.services.get_mut(name) else { return };
        if !matches!(s.phase, Phase::Down | Phase::Exited) {
            return;
        }
        if s.removed {
            self.services.remove(name);
            self.monitor.disarm(name);
            self.event(format!("service {name}: removed"));
        } else if let Some(d) = s.next.take() {
            s.want_run = d.run;
            s.decl = d;
            s.backoff_step = 0;
            s.phase = Phase::Down;
            s.warnings.clear();
        }
    }

    /// Why a service that should run cannot start yet, if it cannot.
    fn wait_reason(&self, name: &str) -> Option<String> {
        let s = &self.services[name];
        if s.next.is_some() || s.going_down() {
            return Some("once its previous instance has exited".into());
        }
        for dep in s.decl.depends_on() {
            match self.services.get(dep) {
                None => return Some(format!("once {dep} is declared")),
                Some(d) if d.removed || !d.running() || d.going_down() || d.next.is_some() => {
                    return Some(format!("once {dep} is running"))
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Sends the stops that may go now and starts what may start now.
    fn drive(&mut self, now: Instant) -> Starts {
        let mut started = Vec::new();
        if self.shutting_down {
            return started;
        }
        for name in self.by_rank(true) {
            let s = &self.services[&name];
            if s.stop_pending.is_none() || !s.running() {
                continue;
            }
            let dependent_still_up = self
                .services
                .iter()
                .any(|(other, t)| other != &name && t.going_down() && t.decl.depends_on().contains(&name));
            if !dependent_still_up {
                self.signal_stop(&name, now);
            }
        }
        for name in self.by_rank(false) {
            let Some(s) = self.services.get(&name) else { continue };
            if !s.want_run || s.removed || !matches!(s.phase, Phase::Down) || self.wait_reason(&name).is_some() {
                continue;
            }
            let r = self.start_instance(&name, now);
            started.push((name, r));
        }
        started
    }

    fn log_starts(&mut self, started: Starts) {
        for (name, r) in started {
            let line = match r {
                Ok(pid) => format!("service {name}: started (pid {pid})"),
                Err(e) => format!("service {name}: start failed: {e}"),
            };
            self.event(line);
        }
    }

    /// SIGTERM to the main process; SIGKILL to the scope follows from `tick` after the grace.
    fn signal_stop(&mut self, name: &str, now: Instant) {
        let grace = self.cfg.stop_grace;
        let s = self.services.get_mut(name).expect("known service");
        let Phase::Running { pid, .. } = s.phase else { return };
        s.stop_pending = None;
        s.phase = Phase::Stopping { pid, deadline: now + grace, killed: false };
        if let Some(p) = Pid::from_raw(pid) {
            // ESRCH: it has already ended and waits to be reaped, which completes the stop.
            let _ = rustix::process::kill_process(p, Signal::TERM);
        }
        self.monitor.disarm(name);
        logs::note(&self.cfg.log_dir, name, &format!("stopping: SIGTERM to pid {pid}"));
        self.event(format!("service {name}: stopping (SIGTERM to pid {pid}, SIGKILL in {})", fmt_dur(grace)));
    }

    /// The grace period is over: kill the whole scope, and the main process directly in case
    /// it moved itself out of its scope.
    fn escalate(&mut self, name: &str) {
        let Some(s) = self.services.get_mut(name) else { return };
        let Phase::Stopping { pid, ref mut killed, .. } = s.phase else { return };
        *killed = true;
        let scope = cgroup::scope_dir(&self.cfg.cgroup_root, s.decl.slice, name);
        let what = if self.cgroups { "its scope" } else { "its process group" };
        let mut line =
            format!("service {name}: did not stop within {}; SIGKILL to {what}", fmt_dur(self.cfg.stop_grace));
        let killed = if self.cgroups { cgroup::kill_all(&scope).map_err(|e| e.to_string()) } else { kill_group(pid) };
        if let Err(e) = killed {
            line.push_str(&format!(" failed ({e}), SIGKILL to pid {pid} only"));
        }
        if let Some(p) = Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, Signal::KILL);
        }
        logs::note(&self.cfg.log_dir, name, &line);
        self.event(line);
    }

    /// Spawns the service's process in its scope. On failure the restart policy decides
    /// between a retry after backoff and staying down.
    fn start_instance(&mut self, name: &str, now: Instant) -> Result<i32, String> {
        let decl = self.services[name].decl.clone();
        match self.spawn(&decl) {
            Ok((pid, warnings)) => {
                let s = self.services.get_mut(name).expect("known service");
                s.phase = Phase::Running { pid, since: now };
                s.last_error = None;
                if warnings != s.warnings {
                    for w in &warnings {
                        self.events.push(format!("service {name}: {w}"));
                    }
                }
                let s = self.services.get_mut(name).expect("known service");
                s.warnings = warnings;
                if let Some((probe, interval)) = &decl.health {
                    self.monitor.arm(name, probe, *interval, Some(pid), now);
                }
                self.next_log_check.get_or_insert(now + LOG_CHECK);
                Ok(pid)
            }
            Err(e) => {
                logs::note(&self.cfg.log_dir, name, &format!("start failed: {e}"));
                let s = self.services.get_mut(name).expect("known service");
                s.last_error = Some(e.clone());
                if decl.restart == Restart::Never {
                    s.phase = Phase::Exited;
                    s.want_run = false;
                } else {
                    let delay = self.next_delay(name, None);
                    let s = self.services.get_mut(name).expect("known service");
                    s.phase = Phase::Backoff { until: now + delay, delay };
                }
                Err(e)
            }
        }
    }

    /// The scope, its limits, the log, then the process. Returns the pid and what was
    /// declared but could not be put in effect.
    fn spawn(&self, d: &Decl) -> Result<(i32, Vec<String>), String> {
        let name = d.name();
        if !self.cgroups {
            return self.spawn_without_cgroup(d);
        }
        let scope = self.scope(d);
        match std::fs::create_dir(&scope) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create cgroup scope {}: {e}", scope.display())),
        }
        let mut warnings = Vec::new();
        if cgroup::populated(&scope) {
            // Usually the previous instance's leftovers, killed at its exit and still on their
            // way out; anything else is killed now. Only what outlives that is worth a word.
            let r = cgroup::kill_all(&scope);
            let until = Instant::now() + LEFTOVER_WAIT;
            while cgroup::populated(&scope) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            let n = cgroup::procs(&scope).len();
            if n > 0 || r.is_err() {
                warnings.push(format!(
                    "{n} process(es) of an earlier instance are still in {} after SIGKILL{}",
                    scope.display(),
                    r.err().map(|e| format!(" ({e})")).unwrap_or_default()
                ));
            }
        }
        warnings.extend(apply_limits(&self.cfg.cgroup_root, &scope, d));
        let procs = OpenOptions::new()
            .write(true)
            .open(scope.join("cgroup.procs"))
            .map_err(|e| format!("open {}/cgroup.procs: {e}", scope.display()))?;
        let log = logs::open(&self.cfg.log_dir, name)
            .map_err(|e| format!("open log {}: {e}", logs::path(&self.cfg.log_dir, name).display()))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let mut cmd = Command::new(&d.spec.binary);
        cmd.args(&d.spec.args)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&d.spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .current_dir("/");
        spawn::enter_cgroup_before_exec(&mut cmd, Some(procs));
        match cmd.spawn() {
            Ok(child) => {
                // Dropping `Child` neither waits nor kills: the reaping is the main loop's
                // (`child_exited`) or `reap_own`'s.
                let pid = child.id() as i32;
                logs::note(
                    &self.cfg.log_dir,
                    name,
                    &format!("started pid {pid}: {} {}", d.spec.binary, d.spec.args.join(" ")),
                );
                Ok((pid, warnings))
            }
            Err(e) => {
                let _ = cgroup::remove(&scope, Duration::ZERO);
                Err(format!("exec {}: {e}", d.spec.binary))
            }
        }
    }

    /// `cgroups_optional` without a cgroup2: the process in its own session and process
    /// group, the log as usual, and a warning for each declared limit.
    fn spawn_without_cgroup(&self, d: &Decl) -> Result<(i32, Vec<String>), String> {
        let name = d.name();
        let spec = &d.spec;
        let declared = [
            ("memory.max", spec.cgroup_memory_max.is_some()),
            ("cpu.weight", spec.cgroup_cpu_weight.is_some()),
            ("io.max", spec.cgroup_io_max.is_some()),
            ("pids.max", spec.cgroup_pids_max.is_some()),
        ];
        let warnings: Vec<String> = declared
            .iter()
            .filter(|(_, set)| *set)
            .map(|(file, _)| format!("{file} not applied: this agent runs without cgroup v2"))
            .collect();
        let log = logs::open(&self.cfg.log_dir, name)
            .map_err(|e| format!("open log {}: {e}", logs::path(&self.cfg.log_dir, name).display()))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let mut cmd = Command::new(&spec.binary);
        cmd.args(&spec.args)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .current_dir("/");
        spawn::enter_cgroup_before_exec(&mut cmd, None);
        let child = cmd.spawn().map_err(|e| format!("exec {}: {e}", spec.binary))?;
        let pid = child.id() as i32;
        logs::note(
            &self.cfg.log_dir,
            name,
            &format!("started pid {pid} (no cgroup): {} {}", spec.binary, spec.args.join(" ")),
        );
        Ok((pid, warnings))
    }

    /// The next restart delay: base × 2^step, capped at `backoff_max` (never below the
    /// declared base); the step starts over when the instance ran at least `backoff_reset`.
    fn next_delay(&mut self, name: &str, ran: Option<Duration>) -> Duration {
        let (cap, reset) = (self.cfg.backoff_max, self.cfg.backoff_reset);
        let s = self.services.get_mut(name).expect("known service");
        if ran.is_some_and(|r| r >= reset) {
            s.backoff_step = 0;
        }
        let base = s.decl.base_delay;
        let factor = 1u32.checked_shl(s.backoff_step).unwrap_or(u32::MAX);
        s.backoff_step = s.backoff_step.saturating_add(1).min(32);
        base.saturating_mul(factor).min(cap.max(base))
    }

    /// The main process of `name` ended (`exit` None: it was reaped by someone else).
    fn on_exit(&mut self, name: &str, exit: Option<ExitInfo>, now: Instant) {
        let Some(s) = self.services.get_mut(name) else { return };
        let (pid, ran, stopping) = match s.phase {
            Phase::Running { pid, since } => {
                (pid, Some(now.saturating_duration_since(since)), s.stop_pending.is_some())
            }
            Phase::Stopping { pid, .. } => (pid, None, true),
            _ => return,
        };
        s.last_exit = exit;
        s.stop_pending = None;
        let scope = cgroup::scope_dir(&self.cfg.cgroup_root, s.decl.slice, name);
        let policy = s.decl.restart;
        self.monitor.disarm(name);

        // A service is its main process: what it left behind goes with it.
        let mut line = match exit {
            Some(e) => format!("service {name}: pid {pid} ended ({e})"),
            None => format!("service {name}: pid {pid} was reaped elsewhere; its exit status is unknown"),
        };
        if !self.cgroups {
            // What it left in its process group goes with it (ESRCH: nothing was left).
            let _ = kill_group(pid);
        } else {
            if cgroup::populated(&scope) {
                let n = cgroup::procs(&scope).len();
                match cgroup::kill_all(&scope) {
                    Ok(()) => line.push_str(&format!("; killed {n} process(es) left in its scope")),
                    Err(e) => line.push_str(&format!("; could not kill what is left in its scope: {e}")),
                }
            }
            // Killed processes leave asynchronously; rather than wait here, removal is retried
            // from tick.
            if cgroup::remove(&scope, Duration::ZERO).is_err() && !self.leftover_scopes.contains(&scope) {
                self.leftover_scopes.push(scope);
            }
        }

        let s = self.services.get_mut(name).expect("checked above");
        if stopping || self.shutting_down {
            s.phase = Phase::Down;
            line.push_str("; stopped");
        } else {
            let failed = !exit.is_some_and(ExitInfo::success);
            let again = match policy {
                Restart::Always => true,
                Restart::OnFailure => failed,
                Restart::Never => false,
            };
            if again {
                let delay = self.next_delay(name, ran);
                let s = self.services.get_mut(name).expect("checked above");
                s.phase = Phase::Backoff { until: now + delay, delay };
                line.push_str(&format!("; restart in {}", fmt_dur(delay)));
            } else {
                s.phase = Phase::Exited;
                s.want_run = false;
                line.push_str("; not restarted (restart policy)");
            }
        }
        logs::note(&self.cfg.log_dir, name, &line);
        self.event(line);
        self.settle(name);
        let started = self.drive(now);
        self.log_starts(started);
    }

    pub fn start(&mut self, name: &str, now: Instant) -> Result<(), Error> {
        if self.shutting_down {
            return Err(Error::Start("the supervisor is shutting down".into()));
        }
        let s = self.services.get_mut(name).filter(|s| !s.removed).ok_or_else(|| Error::UnknownService(name.into()))?;
        s.want_run = true;
        s.backoff_step = 0;
        match s.phase {
            Phase::Running { .. } | Phase::Stopping { .. } => return Ok(()),
            Phase::Backoff { .. } | Phase::Exited | Phase::Down => s.phase = Phase::Down,
        }
        if let Some(why) = self.wait_reason(name) {
            return Err(Error::Start(format!("service {name} starts {why}")));
        }
        let r = self.start_instance(name, now);
        let started = self.drive(now);
        self.log_starts(started);
        r.map(drop).map_err(Error::Start)
    }

    pub fn stop(&mut self, name: &str, now: Instant) -> Result<(), Error> {
        let s = self.services.get_mut(name).filter(|s| !s.removed).ok_or_else(|| Error::UnknownService(name.into()))?;
        s.want_run = false;
        s.stop_pending = None;
        match s.phase {
            Phase::Running { .. } => self.signal_stop(name, now),
            Phase::Backoff { .. } | Phase::Exited => s.phase = Phase::Down,
            Phase::Down | Phase::Stopping { .. } => {}
        }
        Ok(())
    }

    pub fn restart(&mut self, name: &str, now: Instant) -> Result<(), Error> {
        let s = self.services.get_mut(name).filter(|s| !s.removed).ok_or_else(|| Error::UnknownService(name.into()))?;
        match s.phase {
            Phase::Running { .. } => {
                // Wanted, so `drive` starts it again as soon as the old instance is reaped.
                s.want_run = true;
                s.backoff_step = 0;
                self.signal_stop(name, now);
                Ok(())
            }
            Phase::Stopping { .. } => {
                s.want_run = true;
                Ok(())
            }
            _ => self.start(name, now),
        }
    }

    pub fn child_exited(&mut self, pid: i32, status: ExitInfo, now: Instant) -> bool {
        let Some(name) = self.services.iter().find(|(_, s)| s.pid() == Some(pid)).map(|(n, _)| n.clone()) else {
            return false;
        };
        self.on_exit(&name, Some(status), now);
        true
    }

    pub fn reap_own(&mut self, now: Instant) {
        let ours: Vec<(String, i32)> = self.services.iter().filter_map(|(n, s)| Some((n.clone(), s.pid()?))).collect();
        for (name, pid) in ours {
            let Some(p) = Pid::from_raw(pid) else { continue };
            match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
                Ok(Some((_, st))) => {
                    if let Some(e) = ExitInfo::from_wait_status(st) {
                        self.on_exit(&name, Some(e), now);
                    }
                }
                Ok(None) => {}
                // Not our child any more: someone else's waitpid(-1) took it.
                Err(rustix::io::Errno::CHILD) => {
                    if let Some(s) = self.services.get_mut(&name) {
                        s.last_error = Some(format!("pid {pid} was reaped by another waiter; exit status unknown"));
                    }
                    self.on_exit(&name, None, now);
                }
                Err(_) => {} // EINTR: next time
            }
        }
    }

    pub fn tick(&mut self, now: Instant) {
        self.monitor.tick(now);
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in &names {
            match self.services[name].phase {
                Phase::Stopping { deadline, killed: false, .. } if deadline <= now => self.escalate(name),
                Phase::Backoff { until, .. } if until <= now => {
                    let s = self.services.get_mut(name).expect("listed");
                    s.phase = Phase::Down;
                    s.restarts += 1;
                }
                _ => {}
            }
        }
        // A scope that a new instance already uses is not left over any more.
        let in_use: Vec<PathBuf> =
            self.services.values().filter(|s| s.pid().is_some()).map(|s| self.scope(&s.decl)).collect();
        self.leftover_scopes.retain(|scope| !in_use.contains(scope) && cgroup::remove(scope, Duration::ZERO).is_err());
        if self.next_log_check.is_some_and(|t| t <= now) {
            self.rotate_logs();
            let any_running = self.services.values().any(|s| s.pid().is_some());
            self.next_log_check = any_running.then_some(now + LOG_CHECK);
        }
        let started = self.drive(now);
        self.log_starts(started);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let phases = self.services.values().filter_map(|s| match s.phase {
            Phase::Stopping { deadline, killed: false, .. } => Some(deadline),
            Phase::Backoff { until, .. } => Some(until),
            _ => None,
        });
        let scopes = (!self.leftover_scopes.is_empty()).then(|| Instant::now() + SCOPE_RETRY);
        phases.chain(scopes).chain(self.next_log_check).chain(self.monitor.next_deadline()).min()
    }

    pub fn rotate_logs(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let path = logs::path(&self.cfg.log_dir, &name);
            let r = logs::rotate_if_needed(&path, self.cfg.log_max_bytes, self.cfg.log_keep);
            let err = r.err().map(|e| format!("service {name}: log rotation of {} failed: {e}", path.display()));
            let s = self.services.get_mut(&name).expect("listed");
            // Said once per distinct failure, not once a second.
            match err {
                Some(e) if s.last_log_error.as_ref() != Some(&e) => {
                    s.last_log_error = Some(e.clone());
                    self.events.push(e);
                }
                Some(_) => {}
                None => s.last_log_error = None,
            }
        }
    }

    pub fn stop_all(&mut self) {
        self.shutting_down = true;
        for name in self.by_rank(true) {
            let Some(s) = self.services.get_mut(&name) else { continue };
            s.want_run = false;
            s.stop_pending = None;
            match s.phase {
                Phase::Running { .. } => self.signal_stop(&name, Instant::now()),
                Phase::Stopping { .. } => {}
                Phase::Backoff { .. } | Phase::Exited | Phase::Down => {
                    s.phase = Phase::Down;
                    continue;
                }
            }
            self.wait_for_exit(&name);
        }
        self.leftover_scopes.retain(|scope| cgroup::remove(scope, Duration::from_millis(200)).is_err());
    }

    /// Waits (polling) for a stopping service's main process, escalating to SIGKILL at its
    /// deadline; gives up `KILL_WAIT` after the SIGKILL.
    fn wait_for_exit(&mut self, name: &str) {
        let mut killed_at: Option<Instant> = None;
        loop {
            let Some(Phase::Stopping { pid, deadline, killed }) = self.services.get(name).map(|s| s.phase) else {
                return;
            };
            let Some(p) = Pid::from_raw(pid) else { return };
            match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
                Ok(Some((_, st))) => {
                    if let Some(e) = ExitInfo::from_wait_status(st) {
                        self.on_exit(name, Some(e), Instant::now());
                        return;
                    }
                }
                Ok(None) => {}
                Err(rustix::io::Errno::CHILD) => {
                    self.on_exit(name, None, Instant::now());
                    return;
                }
                Err(_) => {}
            }
            let now = Instant::now();
            if !killed && now >= deadline {
                self.escalate(name);
                killed_at = Some(now);
            } else if killed && killed_at.is_none() {
                // Escalated by an earlier tick.
                killed_at = Some(now);
            }
            if killed_at.is_some_and(|t| now >= t + KILL_WAIT) {
                self.event(format!(
                    "service {name}: pid {pid} did not end {} after SIGKILL (uninterruptible sleep?); shutdown goes on without it",
                    fmt_dur(KILL_WAIT)
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn status_of(&self, name: &str, s: &Svc) -> ServiceStatus {
        let wait = if s.want_run || s.next.as_ref().is_some_and(|n| n.run) { self.wait_reason(name) } else { None };
        let state = match s.phase {
            Phase::Running { .. } => ServiceState::Running,
            Phase::Stopping { .. } => ServiceState::Stopping,
            Phase::Backoff { .. } => ServiceState::BackingOff,
            Phase::Exited => ServiceState::Exited,
            Phase::Down if wait.is_some() || s.want_run => ServiceState::Waiting,
            Phase::Down => ServiceState::Stopped,
        };
        let detail = match (&s.phase, s.stop_pending) {
            (Phase::Running { .. }, Some(r)) => format!("stop queued ({r}) until its dependents have stopped"),
            (Phase::Down, _) if wait.is_some() => format!("starts {}", wait.clone().unwrap_or_default()),
            _ if s.removed => "no longer declared; forgotten once stopped".into(),
            _ => String::new(),
        };
        let health = match &s.decl.health {
            None => (Health::NotChecked, None),
            Some(_) => self.monitor.health(name).unwrap_or((Health::Pending, None)),
        };
        let (restart_delay, restart_at) = match s.phase {
            Phase::Backoff { until, delay } => (Some(delay), Some(until)),
            _ => (None, None),
        };
        ServiceStatus {
            name: name.to_string(),
            state,
            declared_running: s.effective().run && !s.removed,
            pid: s.pid(),
            since: match s.phase {
                Phase::Running { since, .. } => Some(since),
                _ => None,
            },
            restarts: s.restarts,
            last_exit: s.last_exit,
            last_error: s.last_error.clone(),
            restart_delay,
            restart_at,
            health: health.0,
            health_checked_at: health.1,
            cgroup: self.cgroups.then(|| self.scope(&s.decl)),
            warnings: s.warnings.clone(),
            detail,
        }
    }

    pub fn status(&self, name: &str) -> Option<ServiceStatus> {
        self.services.get(name).map(|s| self.status_of(name, s))
    }

    pub fn status_all(&self) -> Vec<ServiceStatus> {
        self.by_rank(false).iter().map(|n| self.status_of(n, &self.services[n])).collect()
    }
}

/// SIGKILL to the process group a service leads (it called setsid before exec).
fn kill_group(pid: i32) -> Result<(), String> {
    let p = Pid::from_raw(pid).ok_or_else(|| format!("invalid pid {pid}"))?;
    rustix::process::kill_process_group(p, Signal::KILL).map_err(|e| format!("kill process group {pid}: {e}"))
}

/// Writes the declared limits into the scope; each one that cannot be applied becomes a
/// warning saying why (the usual one: its controller is not in this cgroup2 hierarchy, being
/// bound to cgroup v1, so the scope has no interface file for it).
fn apply_limits(root: &Path, scope: &Path, d: &Decl) -> Vec<String> {
    let mut wanted: Vec<(&str, &str, String)> = Vec::new();
    if let Some(m) = d.memory_max {
        wanted.push(("memory", "memory.max", limit_text(m)));
    }
    if let Some(w) = d.cpu_weight {
        wanted.push(("cpu", "cpu.weight", w.to_string()));
    }
    for io in &d.io_max {
        wanted.push(("io", "io.max", io.cgroup_line()));
    }
    if let Some(p) = d.pids_max {
        wanted.push(("pids", "pids.max", p.to_string()));
    }
    let mut warnings = Vec::new();
    for (controller, file, value) in wanted {
        let path = scope.join(file);
        if !path.exists() {
            let offered = cgroup::controllers(root);
            let why = if offered.contains(controller) {
                format!(
                    "the {controller} controller is not enabled for {} (see the supervisor's notes for why)",
                    scope.parent().unwrap_or(scope).display()
                )
            } else {
                format!(
                    "the {controller} controller is not available in this cgroup2 hierarchy ({}/cgroup.controllers lists: {})",
                    root.display(),
                    if offered.is_empty() { "nothing".to_string() } else { offered.into_iter().collect::<Vec<_>>().join(" ") }
                )
            };
            warnings.push(format!("{file} {value:?} not applied: {why}"));
        } else if let Err(e) = cgroup::write(&path, &value) {
            warnings.push(format!("{file} {value:?} not applied: writing {}: {e}", path.display()));
        }
    }
    warnings
}

fn limit_text(l: Limit) -> String {
    match l {
        Limit::Max => "max".into(),
        Limit::Value(n) => n.to_string(),
    }
}

pub fn fmt_dur(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_proto::config::ServiceSpec;

    /// The values and files the limits go to. (A real cgroup is exercised by the integration
    /// test cgroup_limits_written where the controllers exist; here, a directory with the
    /// interface files as empty files shows what is written where.)
    #[test]
    fn limits_go_to_their_interface_files() {
        let dir = std::env::temp_dir().join(format!("pact-limits-unit-{}", std::process::id()));
        let scope = dir.join("pact.slice/infra.slice/x.scope");
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), "cpu io memory\n").unwrap();
        for f in ["memory.max", "cpu.weight", "io.max"] {
            std::fs::write(scope.join(f), "").unwrap();
        }
        let d = spec::check(&ServiceSpec {
            name: "x".into(),
            binary: "/bin/true".into(),
            cgroup_memory_max: Some("1G".into()),
            cgroup_cpu_weight: Some(300),
            cgroup_io_max: Some("8:0 rbps=100 wbps=max".into()),
            cgroup_pids_max: Some(10),
            ..Default::default()
        })
        .unwrap();
        let warnings = apply_limits(&dir, &scope, &d);
        let read = |f: &str| std::fs::read_to_string(scope.join(f)).unwrap();
        assert_eq!(read("memory.max"), "1073741824");
        assert_eq!(read("cpu.weight"), "300");
        assert_eq!(read("io.max"), "8:0 rbps=100 wbps=max");
        assert_eq!(
            warnings,
            [format!(
                "pids.max \"10\" not applied: the pids controller is not available in this cgroup2 hierarchy \
                 ({}/cgroup.controllers lists: cpu io memory)",
                dir.display()
            )]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
