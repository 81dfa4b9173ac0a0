//! The service supervisor: declared services (`ServiceSpec`) kept running, behind one API over
//! two backends.
//!
//! - **pact** ([`BackendKind::Pact`], PID 1 on a diskless node): each service is a child
//!   process of the agent in its own cgroup v2 scope
//!   `<cgroup_root>/pact.slice/<slice>.slice/<name>.scope`, entered before `exec` (see
//!   `spawn.rs`), with `memory.max`, `cpu.weight`, `io.max` and `pids.max` written from the
//!   declaration. `<cgroup_root>/workload.slice` is created empty for the workload scheduler.
//!   stdout and stderr append to `<log_dir>/<name>.log`, rotated from [`Supervisor::tick`].
//!   Restarts follow the policy (always / on-failure / never) with exponential backoff; stops
//!   are SIGTERM to the main process, then after `stop_grace` `cgroup.kill` on the scope.
//!   When the main process ends, whatever it left in its scope is killed at once: a service
//!   is its main process (run daemons in the foreground). The process gets an empty
//!   environment plus `PATH` and its declared `env`, `/` as working directory, /dev/null as
//!   stdin, and its own session. "Running" means spawned: there is no readiness protocol, so
//!   a dependent starts as soon as its dependencies' processes have exec'd.
//!   Backoff: the first restart waits `restart_delay_seconds` (0 means 100 ms), each further
//!   one twice the previous, capped at `backoff_max`; a run of at least `backoff_reset`
//!   starts the sequence over.
//! - **systemd** ([`BackendKind::Systemd`], the agent as an ordinary service): the same
//!   declarations become `pact-<name>.service` unit files (see `systemd.rs` for the exact
//!   mapping), followed by `systemctl daemon-reload`; start, stop, restart and status go
//!   through `systemctl`. systemd reaps, restarts and limits.
//!
//! **Threads and blocking.** Everything runs on the caller's thread (the agent's main loop),
//! except TCP and HTTP health checks, which run on one worker thread started on first use.
//! No call blocks except [`Supervisor::stop_all`] (shutdown) and, on the systemd backend, the
//! `systemctl` invocations (`--no-block` for start, stop and restart).
//!
//! **Reaping.** As PID 1 the main loop reaps every child with `waitpid(-1)` and hands each
//! `(pid, status)` to [`Supervisor::child_exited`], which says whether it was a service's main
//! process. Orphans that a service double-forked are reparented to PID 1 and reaped by that
//! same loop (they are not ours: `child_exited` returns false). Elsewhere (tests, or an agent
//! that is not PID 1 and not the only waiter) [`Supervisor::reap_own`] waits for exactly the
//! services' main processes and nothing else.
//!
//! **Reconcile.** [`Supervisor::reconcile`] takes the whole desired set. Declarations are
//! checked and ordered first (`spec.rs`): refused ones (bad name or limit, unknown
//! dependency, cycle, duplicate) are reported and treated as absent (so a running service
//! whose new declaration is refused is stopped, as if removed). Then only services whose
//! declaration is new, changed or gone are touched (a change of only `order` or
//! `health_check` is taken without a restart): gone or changed ones are stopped
//! dependents-first (a service is not sent SIGTERM while a service that depends on it, and is
//! being stopped too, is still running), a changed one starts again with its new declaration
//! once its old instance has exited, and a service starts only once every service it depends
//! on is running. Stops finish asynchronously (`tick`, `child_exited`); the changes returned
//! say what was done and what is still pending, and later outcomes appear in
//! [`Supervisor::take_events`].

mod cgroup;
mod health;
mod logs;
mod pact;
mod spawn;
mod spec;
mod systemd;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pact_proto::config::ServiceSpec;

pub use spec::{valid_name, DEFAULT_HEALTH_INTERVAL, MIN_RESTART_DELAY};
pub use systemd::unit_file_for;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Pact,
    Systemd,
}

#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    pub backend: BackendKind,
    /// pact backend: a cgroup2 mount (or a delegated subtree of one): `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// pact backend: where `<name>.log` files go: `/run/pact/logs`.
    pub log_dir: PathBuf,
    /// A log over this size is rotated at the next check (about once a second).
    pub log_max_bytes: u64,
    /// Rotated copies kept (`<name>.log.1` … `.N`); 0 keeps none (the log is only truncated).
    pub log_keep: u32,
    /// Time between SIGTERM and SIGKILL (pact) / `TimeoutStopSec=` (systemd).
    pub stop_grace: Duration,
    /// Cap of the exponential restart delay (a declared `restart_delay_seconds` above the cap
    /// is still honoured as is: the cap never shortens what was declared).
    pub backoff_max: Duration,
    /// A service that stayed up this long before it ended restarts after its base delay
    /// again instead of the doubled one.
    pub backoff_reset: Duration,
    /// systemd backend: where unit files go: `/run/systemd/system` (gone at reboot, like the
    /// rest of a diskless node's state) or `/etc/systemd/system`.
    pub systemd_unit_dir: PathBuf,
    /// systemd backend: the `systemctl` program (tests point it at a recording stand-in).
    pub systemctl: PathBuf,
    /// pact backend: when `cgroup_root` cannot be set up (an agent run as an ordinary
    /// service, as a user or in a container whose cgroup2 is read-only), run services without
    /// scopes instead of refusing to start: each in its own session and process group, which
    /// is what stop and kill then act on, with a warning for every declared limit. Never on a
    /// node: as PID 1 the agent mounts cgroup2 itself and requires it.
    pub cgroups_optional: bool,
}

impl SupervisorConfig {
    /// The node defaults: `/sys/fs/cgroup`, `/run/pact/logs` (10 MiB, 3 copies), 10 s grace,
    /// backoff capped at 60 s and reset after 60 s up, units in `/run/systemd/system`.
    pub fn defaults(backend: BackendKind) -> SupervisorConfig {
        SupervisorConfig {
            backend,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            log_dir: PathBuf::from("/run/pact/logs"),
            log_max_bytes: 10 << 20,
            log_keep: 3,
            stop_grace: Duration::from_secs(10),
            backoff_max: Duration::from_secs(60),
            backoff_reset: Duration::from_secs(60),
            systemd_unit_dir: PathBuf::from("/run/systemd/system"),
            systemctl: PathBuf::from("systemctl"),
            cgroups_optional: false,
        }
    }
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig::defaults(BackendKind::Pact)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No service of that name is declared.
    UnknownService(String),
    /// The backend could not be set up (cgroup tree, unit directory).
    Setup(String),
    /// A start failed (cgroup scope, log file, exec) or is blocked (a dependency is not
    /// running: the service then starts by itself once it is).
    Start(String),
    /// `systemctl` failed or could not be run.
    Systemctl(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownService(n) => write!(f, "no service {n:?} is declared"),
            Error::Setup(m) | Error::Start(m) | Error::Systemctl(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitInfo {
    Code(i32),
    Signal(i32),
}

impl ExitInfo {
    /// From a `waitpid` status; `None` for stopped/continued (not an end).
    pub fn from_wait_status(st: rustix::process::WaitStatus) -> Option<ExitInfo> {
        match (st.exit_status(), st.terminating_signal()) {
            (Some(c), _) => Some(ExitInfo::Code(c)),
            (None, Some(s)) => Some(ExitInfo::Signal(s)),
            _ => None,
        }
    }

    pub fn success(self) -> bool {
        self == ExitInfo::Code(0)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitInfo::Code(c) => write!(f, "exit code {c}"),
            ExitInfo::Signal(s) => {
                write!(f, "signal {s}{}", signal_name(*s).map(|n| format!(" ({n})")).unwrap_or_default())
            }
        }
    }
}

fn signal_name(s: i32) -> Option<&'static str> {
    Some(match s {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    /// The main process is alive (systemd: ActiveState=active).
    Running,
    /// Asked to stop: SIGTERM sent, SIGKILL after the grace period.
    Stopping,
    /// Ended; a restart is scheduled (`restart_at`, `restart_delay`).
    BackingOff,
    /// Should run, but waits: for a dependency to run, or for its previous instance to exit.
    Waiting,
    /// Not running and not meant to: declared "stopped", or stopped through the API.
    Stopped,
    /// Ended by itself and not restarted (policy never, or on-failure after success), or
    /// could not be started and the policy says not to retry (`last_error`).
    Exited,
    /// systemd backend: a state this API has no name for, or systemctl failed (`detail`).
    Unknown,
}

impl ServiceState {
    /// The name the console (`PACT-SERVICE`) and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Running => "running",
            ServiceState::Stopping => "stopping",
            ServiceState::BackingOff => "backingoff",
            ServiceState::Waiting => "waiting",
            ServiceState::Stopped => "stopped",
            ServiceState::Exited => "exited",
            ServiceState::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// No health check is declared.
    NotChecked,
    /// Declared, no result yet (or the service is not running).
    Pending,
    Healthy,
    Unhealthy(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// The declared state: true for "running".
    pub declared_running: bool,
    pub pid: Option<i32>,
    /// Since when the current instance runs.
    pub since: Option<Instant>,
    /// Restarts after the service ended by itself (not counting starts asked through the API).
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
    pub last_error: Option<String>,
    /// BackingOff: the delay chosen for this restart, and when it is due.
    pub restart_delay: Option<Duration>,
    pub restart_at: Option<Instant>,
    pub health: Health,
    pub health_checked_at: Option<Instant>,
    /// pact backend: the service's cgroup scope.
    pub cgroup: Option<PathBuf>,
    /// Things declared but not in effect, e.g. a limit whose controller is missing.
    pub warnings: Vec<String>,
    /// Backend detail: why it waits (pact), "ActiveState/SubState" (systemd).
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// No longer declared.
    Removed,
    /// Its declaration changed; it starts again with the new one.
    Changed,
    /// Now declared with state "stopped".
    DeclaredStopped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The declaration was refused (reason); nothing of it runs.
    Rejected(String),
    /// Stop begun (SIGTERM sent, or queued until its dependents have stopped; systemd: stop
    /// job queued); it completes in `tick`/`child_exited`.
    Stopping(StopReason),
    /// It was not running: nothing to stop.
    Stopped(StopReason),
    StopFailed(String),
    /// Started now (pid; systemd: None, the start job is queued).
    Started {
        pid: Option<i32>,
    },
    StartFailed(String),
    /// Starts later by itself: once its previous instance has exited, or its dependencies run.
    StartQueued(String),
    /// New, declared with state "stopped": known, not started.
    DeclaredStopped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub service: String,
    pub kind: ChangeKind,
}

impl Change {
    pub fn is_error(&self) -> bool {
        matches!(self.kind, ChangeKind::Rejected(_) | ChangeKind::StopFailed(_) | ChangeKind::StartFailed(_))
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::Removed => "no longer declared",
            StopReason::Changed => "declaration changed",
            StopReason::DeclaredStopped => "declared stopped",
        })
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.service;
        match &self.kind {
            ChangeKind::Rejected(why) => write!(f, "service {n}: declaration refused: {why}"),
            ChangeKind::Stopping(r) => write!(f, "service {n}: stopping ({r})"),
            ChangeKind::Stopped(r) => write!(f, "service {n}: stopped ({r})"),
            ChangeKind::StopFailed(e) => write!(f, "service {n}: stop failed: {e}"),
            ChangeKind::Started { pid: Some(p) } => write!(f, "service {n}: started (pid {p})"),
            ChangeKind::Started { pid: None } => write!(f, "service {n}: start queued with systemd"),
            ChangeKind::StartFailed(e) => write!(f, "service {n}: start failed: {e}"),
            ChangeKind::StartQueued(why) => write!(f, "service {n}: starts {why}"),
            ChangeKind::DeclaredStopped => write!(f, "service {n}: declared stopped, not started"),
        }
    }
}

/// The supervisor's own log lines kept for the caller to drain ([`Supervisor::take_events`]);
/// beyond this many undrained, the oldest are dropped (and counted).
const MAX_EVENTS: usize = 256;

#[derive(Default)]
struct Events {
    lines: std::collections::VecDeque<String>,
    dropped: u64,
}

impl Events {
    fn push(&mut self, line: String) {
        if self.lines.len() == MAX_EVENTS {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(line);
    }

    fn take(&mut self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.lines.len() + 1);
        if self.dropped > 0 {
            out.push(format!("supervisor: {} older event lines were dropped (not drained in time)", self.dropped));
            self.dropped = 0;
        }
        out.extend(self.lines.drain(..));
        out
    }
}

enum Backend {
    Pact(pact::PactBackend),
    Systemd(systemd::SystemdBackend),
}

pub struct Supervisor {
    backend: Backend,
    notes: Vec<String>,
}

impl Supervisor {
    /// pact backend: checks that `cgroup_root` is cgroup2, creates
    /// `pact.slice/{infra,network,gpu,audit}.slice` and `workload.slice`, enables the
    /// controllers the root offers (memory, cpu, io, pids) level by level, and creates
    /// `log_dir`. systemd backend: creates `systemd_unit_dir`. What it found (controllers
    /// enabled or missing) is in [`Supervisor::notes`].
    pub fn new(cfg: SupervisorConfig) -> Result<Supervisor, Error> {
        let (backend, notes) = match cfg.backend {
            BackendKind::Pact => {
                let (b, notes) = pact::PactBackend::new(cfg)?;
                (Backend::Pact(b), notes)
            }
            BackendKind::Systemd => {
                let (b, notes) = systemd::SystemdBackend::new(cfg)?;
                (Backend::Systemd(b), notes)
            }
        };
        Ok(Supervisor { backend, notes })
    }

    pub fn backend(&self) -> BackendKind {
        match self.backend {
            Backend::Pact(_) => BackendKind::Pact,
            Backend::Systemd(_) => BackendKind::Systemd,
        }
    }

    /// What `new` found, one line each, for the boot log.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Makes the running services match `desired` (the whole set). See the module docs.
    pub fn reconcile(&mut self, desired: &[ServiceSpec]) -> Vec<Change> {
        let now = Instant::now();
        match &mut self.backend {
            Backend::Pact(b) => b.reconcile(desired, now),
            Backend::Systemd(b) => b.reconcile(desired),
        }
    }

    /// Starts a declared service now (also one declared "stopped", or one that exited).
    /// Running already: Ok. A dependency not running: `Error::Start`, and the service starts
    /// by itself once the dependency runs.
    pub fn start(&mut self, name: &str) -> Result<(), Error> {
        let now = Instant::now();
        match &mut self.backend {
            Backend::Pact(b) => b.start(name, now),
            Backend::Systemd(b) => b.start(name),
        }
    }

    /// Stops a service (SIGTERM now, SIGKILL after the grace period from `tick`). It stays
    /// stopped until `start`, `restart` or a changed declaration.
    pub fn stop(&mut self, name: &str) -> Result<(), Error> {
        let now = Instant::now();
        match &mut self.backend {
            Backend::Pact(b) => b.stop(name, now),
            Backend::Systemd(b) => b.stop(name),
        }
    }

    /// Stops (if running) and starts again once the old instance has exited.
    pub fn restart(&mut self, name: &str) -> Result<(), Error> {
        let now = Instant::now();
        match &mut self.backend {
            Backend::Pact(b) => b.restart(name, now),
            Backend::Systemd(b) => b.restart(name),
        }
    }

    pub fn status(&self, name: &str) -> Option<ServiceStatus> {
        match &self.backend {
            Backend::Pact(b) => b.status(name),
            Backend::Systemd(b) => b.status(name),
        }
    }

    /// Every declared service (and those still stopping after their removal), in start order.
    pub fn status_all(&self) -> Vec<ServiceStatus> {
        match &self.backend {
            Backend::Pact(b) => b.status_all(),
            Backend::Systemd(b) => b.status_all(),
        }
    }

    /// A child was reaped by the caller (PID 1's `waitpid(-1)` loop): true if it was a
    /// service's main process, which is then handled (restart, stop completion, ...).
    pub fn child_exited(&mut self, pid: i32, status: ExitInfo) -> bool {
        let now = Instant::now();
        match &mut self.backend {
            Backend::Pact(b) => b.child_exited(pid, status, now),
            Backend::Systemd(_) => false,
        }
    }

    /// Reaps the services' main processes that ended (`waitpid(pid, WNOHANG)` each), for a
    /// caller that is not reaping every child itself.
    pub fn reap_own(&mut self) {
        let now = Instant::now();
        if let Backend::Pact(b) = &mut self.backend {
            b.reap_own(now);
        }
    }

    /// Does what is due at `now`: restarts after backoff, SIGKILL of stops past the grace,
    /// health checks (results in `status`), log rotation, removal of emptied scopes, and
    /// starts that were waiting for a dependency. Never blocks.
    pub fn tick(&mut self, now: Instant) {
        match &mut self.backend {
            Backend::Pact(b) => b.tick(now),
            Backend::Systemd(b) => b.tick(now),
        }
    }

    /// When `tick` next has something to do; None: nothing until another call changes things.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.backend {
            Backend::Pact(b) => b.next_deadline(),
            Backend::Systemd(b) => b.next_deadline(),
        }
    }

    /// Rotates the logs that are over `log_max_bytes` now (also done from `tick`, about once
    /// a second while a service runs).
    pub fn rotate_logs(&mut self) {
        if let Backend::Pact(b) = &mut self.backend {
            b.rotate_logs();
        }
    }

    /// Shutdown: every service, dependents first (reverse start order), SIGTERM, up to
    /// `stop_grace`, then SIGKILL to the whole scope, each one ended before the next is
    /// stopped. Blocks. Nothing is started afterwards.
    pub fn stop_all(&mut self) {
        match &mut self.backend {
            Backend::Pact(b) => b.stop_all(),
            Backend::Systemd(b) => b.stop_all(),
        }
    }

    /// The supervisor's log lines since the last call (exits, restarts, kills, warnings).
    pub fn take_events(&mut self) -> Vec<String> {
        match &mut self.backend {
            Backend::Pact(b) => b.events.take(),
            Backend::Systemd(b) => b.events.take(),
        }
    }
}
