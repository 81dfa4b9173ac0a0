//! pact-agent: the node agent. As PID 1 on a diskless node it mounts the pseudo filesystems,
//! loads its early modules and brings up the network from `ip=`, streams its boot config
//! from the journals, applies it, starts and supervises the services, and reaps every
//! process; as an ordinary service it does the same minus the init duties, as the child
//! subreaper.
//!
//! One main loop (this thread): signals through a signalfd, reaping, the supervisor's
//! timers, the watchdog, and what the journal thread and the API server (`api.rs`, port 9445)
//! send. It never exits when PID 1: a fatal error is logged and the loop keeps reaping until
//! an admin reboots the node.
//!
//! Shutdown: SIGTERM/SIGPWR or an API power-off request power the node off, SIGINT or an API
//! reboot request reboot it, after the services are stopped in reverse order. As an ordinary
//! service (not PID 1) any of these stops the services and exits 0.
//!
//! Console protocol (one line each, tagged so a serial log can be searched):
//! `PACT-BOOT phase=<name> ms=<n>`, `PACT-APPLY <dimension> <item> <outcome>`,
//! `PACT-SERVICE <name> <state> pid=<n>`, `PACT-READY node=<id>`, and, for each key in
//! `pact.test_check=` on the kernel command line, `PACT-CHECK <key>=<value>` once ready.
//!
//! Exit codes (not PID 1): 0 stopped by SIGTERM/SIGINT or an API power request, 1 runtime
//! failure, 2 bad command line, 3 bad configuration.

use pact_agent::api;
use pact_agent::boot::{self, Msg, Wake};
use pact_agent::config::{self, AgentConfig, Flags, Sources};
use pact_agent::init::{self, PowerAction};
use pact_agent::supervisor::{self, Supervisor, SupervisorConfig};
use pact_agent::sys::{self, SignalFd};
use pact_agent::{apply, capability, early};
use rustix::event::{EventfdFlags, PollFd, PollFlags};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 3;

const USAGE: &str = "\
pact-agent: pact's node agent (init, supervisor, config apply)

USAGE: pact-agent [--config FILE] [--node-id ID] [--vcluster NAME] [--check]

  --config FILE     agent.toml (default /etc/pact/agent.toml)     [PACT_AGENT_CONFIG]
  --node-id ID      this node's id (else PACT_AGENT_NODE_ID, pact.node_id= on the
                    kernel command line, [agent] node_id, the hostname)
  --vcluster NAME   the vCluster this node expects (the journal's assignment wins)
  --check           resolve and print the configuration, then exit
  -V, --version     -h, --help

Also reads /etc/pact/agent.env (KEY=VALUE). Runs as PID 1 (init) or as a service.
Exit codes: 0 stopped, 1 runtime failure, 2 bad command line, 3 bad configuration.";

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn parse_flags() -> Result<(Flags, bool), String> {
    use lexopt::prelude::*;
    let mut flags = Flags::default();
    let mut check = false;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("config") => flags.config = Some(PathBuf::from(p.value().map_err(|e| e.to_string())?)),
            Long("node-id") => {
                flags.node_id = Some(p.value().map_err(|e| e.to_string())?.string().map_err(|e| format!("{e:?}"))?)
            }
            Long("vcluster") => {
                flags.vcluster = Some(p.value().map_err(|e| e.to_string())?.string().map_err(|e| format!("{e:?}"))?)
            }
            Long("check") => check = true,
            Short('V') | Long("version") => {
                say(&format!("pact-agent {}", pact_proto::VERSION));
                std::process::exit(0);
            }
            Short('h') | Long("help") => {
                say(USAGE);
                std::process::exit(0);
            }
            // The kernel passes init its unknown command-line words; as PID 1 they are not ours.
            Value(_) if init::is_pid1() => {}
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok((flags, check))
}

struct EventWaker(Arc<OwnedFd>);

impl Wake for EventWaker {
    fn wake(&self) {
        let _ = rustix::io::write(&*self.0, &1u64.to_ne_bytes());
    }
}

/// Modules PID 1 loads on a thread of their own, after the early ones (one `.ko` path a line,
/// as in `/etc/pact/early-modules`).
const BACKGROUND_MODULES: &str = "/etc/pact/background-modules";

fn report_modules(results: Vec<(String, Result<(), String>)>, note: &str) {
    for (m, r) in results {
        if let Err(e) = r {
            say(&format!("PACT: background module {m}: {e}{note}"));
        }
    }
}

/// As PID 1 an error must never end the process: log it and keep reaping forever.
fn hold_forever(sig: &SignalFd, why: &str) -> ! {
    say(&format!("PACT: fatal: {why}; the agent keeps reaping until the node is rebooted"));
    loop {
        let mut fds = [PollFd::new(sig, PollFlags::IN)];
        let _ = rustix::event::poll(&mut fds, None);
        let _ = sig.read_all();
        let _ = init::reap_all();
    }
}

fn main() -> ExitCode {
    let t0 = Instant::now();
    let mono0 = early::monotonic_ns();
    let pid1 = init::is_pid1();
    let (flags, check) = match parse_flags() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("pact-agent: {e}\n\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Before any thread: every handled signal is blocked and read from this fd.
    let sig = match SignalFd::block_and_open() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pact-agent: signalfd: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let mut phases: Vec<(String, Duration)> = Vec::new();
    if pid1 {
        let steps = init::mount_pseudo_filesystems();
        if let Err(e) = init::setup_console() {
            say(&format!("PACT: console: {e}"));
        }
        say(&format!("PACT: pact-agent {} starting as PID 1", pact_proto::VERSION));
        for (what, r) in steps {
            if let Err(e) = r {
                say(&format!("PACT: {what}: {e}"));
            }
        }
        phases.push(("init".into(), t0.elapsed()));
    } else if let Err(e) = init::become_subreaper() {
        say(&format!("PACT: {e}"));
    }
    // After a switch to the SquashFS root, the boot started in the initramfs: its phases and
    // the switch come first, and the total counts from there (CLOCK_MONOTONIC survives exec).
    let mut boot_t0 = t0;
    if pid1 && early::root_is_switched() {
        if let Some((start, first)) = std::env::var(early::STAGE1_ENV).ok().and_then(|v| early::stage1_parse(&v)) {
            let before = Duration::from_nanos(mono0.saturating_sub(start));
            let ran: Duration = first.iter().map(|(_, d)| *d).sum();
            let mut all: Vec<(String, Duration)> = first.into_iter().map(|(n, d)| (format!("stage1-{n}"), d)).collect();
            all.push(("switch".into(), before.saturating_sub(ran)));
            all.append(&mut phases);
            phases = all;
            boot_t0 = t0.checked_sub(before).unwrap_or(t0);
        }
        std::env::remove_var(early::STAGE1_ENV);
    }
    if let Err(e) = init::protect_from_oom() {
        say(&format!("PACT: {e}"));
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // After a switch from the initramfs to a SquashFS root, the first stage already loaded
    // the modules and brought the network up.
    if pid1 && !early::root_is_switched() {
        let t = Instant::now();
        for (m, r) in early::load_modules(std::path::Path::new("/etc/pact/early-modules")) {
            if let Err(e) = r {
                say(&format!("PACT: early module {m}: {e}"));
            }
        }
        match early::parse_ip_param(&cmdline) {
            Some(Ok(ip)) => {
                if let Err(e) = early::configure_network(&ip) {
                    say(&format!("PACT: network {}: {e}", ip.device));
                }
            }
            Some(Err(e)) => say(&format!("PACT: ip= on the kernel command line: {e}")),
            None => {}
        }
        phases.push(("early".into(), t.elapsed()));
        // `pact.root=squashfs:/dev/vda`: mount the SquashFS root with a tmpfs overlay and
        // exec the agent in it (still PID 1); returns only on failure.
        if let Some(dev) =
            config::cmdline_value(&cmdline, "pact.root").and_then(|v| v.strip_prefix("squashfs:").map(str::to_string))
        {
            say(&format!("PACT: switching to the SquashFS root on {dev}"));
            std::env::set_var(early::STAGE1_ENV, early::stage1_record(mono0, &phases));
            if let Err(e) = early::switch_root_from_squashfs(&dev) {
                hold_forever(&sig, &format!("SquashFS root {dev}: {e}"));
            }
        }
    }

    let env = |k: &str| std::env::var(k).ok();
    let t = Instant::now();
    let cfg = match load_config(&flags, &env, &cmdline) {
        Ok(c) => c,
        Err(e) if pid1 => hold_forever(&sig, &format!("configuration: {e}")),
        Err(e) => {
            eprintln!("pact-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    phases.push(("config".into(), t.elapsed()));
    if check {
        say(&format!("{}: configuration OK", cfg.source.as_deref().unwrap_or("(defaults)")));
        say(&format!("node id {} (from {}), vCluster {:?}", cfg.node_id, cfg.node_id_from, cfg.vcluster));
        say(&format!("journal endpoints {:?}, CA {}", cfg.journal.endpoints, cfg.journal.tls_ca.display()));
        say(&format!("supervisor backend {:?}, enforcement {:?}", cfg.backend, cfg.enforcement_mode));
        for k in &cfg.not_yet_active {
            say(&format!("configured, not yet active: {k}"));
        }
        return ExitCode::SUCCESS;
    }
    for k in &cfg.not_yet_active {
        say(&format!("PACT: configured, not yet active: {k}"));
    }
    match run(pid1, &sig, cfg, &cmdline, boot_t0, phases) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if pid1 => hold_forever(&sig, &e),
        Err(e) => {
            eprintln!("pact-agent: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn load_config(flags: &Flags, env: &dyn Fn(&str) -> Option<String>, cmdline: &str) -> Result<AgentConfig, String> {
    let file = config::read_config_file(flags, env).map_err(|e| e.to_string())?;
    let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let src = Sources {
        env,
        cmdline,
        hostname: &hostname,
        env_file: config::read_optional(std::path::Path::new(config::DEFAULT_ENV_FILE)),
    };
    config::resolve(flags, &src, file.as_ref().map(|(l, t)| (l.as_str(), t.as_str()))).map_err(|e| e.to_string())
}

fn run(
    pid1: bool,
    sig: &SignalFd,
    cfg: AgentConfig,
    cmdline: &str,
    t0: Instant,
    mut phases: Vec<(String, Duration)>,
) -> Result<(), String> {
    let mut sup_cfg = SupervisorConfig::defaults(match cfg.backend {
        config::Backend::Pact => supervisor::BackendKind::Pact,
        config::Backend::Systemd => supervisor::BackendKind::Systemd,
    });
    if let Some(root) = cfg.cgroup_root.clone().or_else(cgroup2_root) {
        sup_cfg.cgroup_root = root;
    }
    sup_cfg.log_dir = cfg.run_dir.join("logs");
    sup_cfg.cgroups_optional = !pid1;
    let stop_grace = sup_cfg.stop_grace;
    let mut sup = Supervisor::new(sup_cfg).map_err(|e| format!("supervisor: {e}"))?;
    for n in sup.notes() {
        say(&format!("PACT: supervisor: {n}"));
    }
    let wake_fd = Arc::new(
        rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
            .map_err(|e| format!("eventfd: {e}"))?,
    );
    // Modules nothing early needs (the software watchdog) load on their own thread, while
    // the boot stream waits on the network, instead of before it.
    let mut background_modules = None;
    if pid1 && std::path::Path::new(BACKGROUND_MODULES).exists() {
        let waker = EventWaker(wake_fd.clone());
        let spawned = std::thread::Builder::new().name("modules".into()).spawn(move || {
            let results = early::load_modules(std::path::Path::new(BACKGROUND_MODULES));
            waker.wake();
            results
        });
        match spawned {
            Ok(h) => background_modules = Some(h),
            Err(e) => report_modules(early::load_modules(std::path::Path::new(BACKGROUND_MODULES)), &e.to_string()),
        }
    }
    // Only init owns the watchdog: opening the device arms it, and an agent that is a
    // service must not make the machine's reset depend on itself. With background modules,
    // it is opened once they are in (its driver may be one of them).
    let open_watchdog = || match pid1.then(|| init::Watchdog::open(std::path::Path::new("/dev/watchdog"))).flatten() {
        Some(Ok(w)) => {
            let timeout = w.timeout.map_or_else(|| "not reported".to_string(), |t| format!("{} s", t.as_secs()));
            say(&format!(
                "PACT: watchdog /dev/watchdog: timeout {timeout}, petted every {} ms",
                w.pet_interval().as_millis()
            ));
            Some(w)
        }
        Some(Err(e)) => {
            say(&format!("PACT: watchdog: {e}"));
            None
        }
        None => None,
    };
    let mut watchdog = if background_modules.is_none() { open_watchdog() } else { None };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(64);
    // As init the agent names the node (ip=...:hostname, else the node id); as a service it
    // leaves the name to the system it runs on.
    let hostname = pid1.then(|| {
        early::parse_ip_param(cmdline)
            .and_then(|r| r.ok())
            .and_then(|ip| ip.hostname)
            .unwrap_or_else(|| cfg.node_id.clone())
    });
    if !pid1 {
        say("PACT: not PID 1: the hostname is left to the system");
    }
    let node_id = cfg.node_id.clone();
    let manifest = cfg.capability_manifest.clone();
    let run_dir = cfg.run_dir.clone();
    let api_shared = api::Shared::new();
    // Without a token the agent identifies itself by an enrolled certificate (`enroll`).
    let enroller = boot::enroller(&cfg, Arc::new(|l: &str| say(l)));
    if let Some(e) = &enroller {
        say(&format!(
            "PACT: identity: certificate {} (enrolled with the journals when missing, renewed at 2/3 of its life)",
            e.cert.display()
        ));
        let e = e.clone();
        std::thread::Builder::new()
            .name("renew".into())
            .spawn(move || e.renewal_loop())
            .map_err(|e| format!("renewal thread: {e}"))?;
    }
    let identity = enroller.map(|e| e as Arc<dyn pact_agent::enroll::IdentitySource>);
    start_api(&cfg, identity.clone(), &api_shared, boot::Link { tx: tx.clone(), waker: EventWaker(wake_fd.clone()) });
    let mut controls = api::Controls::new(sup.backend(), stop_grace);
    let mut power_answered: Option<std::sync::mpsc::Receiver<()>> = None;
    let link = boot::Link { tx, waker: EventWaker(wake_fd.clone()) };
    let target = apply::Target::system(apply::DEFAULT_NFS_TIMEOUT);
    std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || {
            let why = boot::run(cfg, identity, hostname, target, link);
            say(&format!("PACT: journal thread stopped: {why}"));
        })
        .map_err(|e| format!("journal thread: {e}"))?;

    let checks: Vec<String> = config::cmdline_value(cmdline, "pact.test_check")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let poweroff_after_ready = config::cmdline_value(cmdline, "pact.test_poweroff_after_ready").as_deref() == Some("1");
    let mut ready = false;
    loop {
        let now = Instant::now();
        let mut deadline = sup.next_deadline().unwrap_or(now + Duration::from_secs(60));
        if let Some(w) = &watchdog {
            deadline = deadline.min(w.next_due());
        }
        if let Some(d) = controls.next_deadline() {
            deadline = deadline.min(d);
        }
        let timeout = deadline.saturating_duration_since(now).min(Duration::from_secs(60));
        let ts =
            rustix::event::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: i64::from(timeout.subsec_nanos()) };
        let mut fds = [PollFd::new(sig, PollFlags::IN), PollFd::new(&*wake_fd, PollFlags::IN)];
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        if background_modules.as_ref().is_some_and(|h| h.is_finished()) {
            match background_modules.take().map(|h| h.join()) {
                Some(Ok(results)) => report_modules(results, ""),
                _ => say("PACT: background modules: the loading thread failed"),
            }
            watchdog = open_watchdog();
        }
        let mut stop: Option<PowerAction> = None;
        for s in sig.read_all() {
            match s {
                libc::SIGCHLD => {}
                libc::SIGTERM | libc::SIGPWR => stop = Some(PowerAction::PowerOff),
                libc::SIGINT => stop = Some(PowerAction::Reboot),
                other => say(&format!("PACT: {} ignored", sys::signal_name(other))),
            }
        }
        for (pid, exit) in init::reap_all() {
            sup.child_exited(pid, exit_info(exit));
        }
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*wake_fd, &mut buf);
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Log(l) => say(&l),
                Msg::Control { name, action, reply } => {
                    controls.request(&mut sup, name, action, reply, Instant::now());
                }
                Msg::Power { action, reason, answered } => {
                    say(&format!("PACT: power request ({action:?}) through the API: {reason:?}"));
                    stop = Some(action);
                    power_answered = Some(answered);
                }
                Msg::Applied { services, vcluster, first, from, phases: p } => {
                    api_shared.set_vcluster(&vcluster);
                    let t = Instant::now();
                    for c in sup.reconcile(&services) {
                        say(&format!("PACT: service change: {c}"));
                    }
                    for st in sup.status_all() {
                        say(&format!("PACT-SERVICE {} {} pid={}", st.name, state_name(&st.state), st.pid.unwrap_or(0)));
                    }
                    if first && !ready {
                        phases.extend(p);
                        phases.push(("services".into(), t.elapsed()));
                        let t = Instant::now();
                        let cap = capability::collect();
                        if let Err(e) = capability::write_json(&manifest, &cap) {
                            say(&format!("PACT: {}: {e}", manifest.display()));
                        }
                        phases.push(("capability".into(), t.elapsed()));
                        if let Err(e) = std::fs::create_dir_all(&run_dir)
                            .and_then(|_| std::fs::write(run_dir.join("ready"), format!("{node_id}\n")))
                        {
                            say(&format!("PACT: {}: {e}", run_dir.join("ready").display()));
                        }
                        for (name, d) in &phases {
                            say(&format!("PACT-BOOT phase={name} ms={}", d.as_millis()));
                        }
                        say(&format!("PACT-BOOT phase=total ms={}", t0.elapsed().as_millis()));
                        say(&format!("PACT-READY node={node_id} from={from}"));
                        ready = true;
                        for c in &checks {
                            say(&format!("PACT-CHECK {c}={}", check_value(c, &sup)));
                        }
                        if poweroff_after_ready {
                            stop = Some(PowerAction::PowerOff);
                        }
                    }
                }
            }
        }
        sup.tick(Instant::now());
        controls.poll(&sup, Instant::now());
        for e in sup.take_events() {
            say(&format!("PACT: supervisor: {e}"));
        }
        if let Some(w) = watchdog.as_mut() {
            w.pet_if_due(Instant::now());
        }
        if let Some(action) = stop {
            // New API requests are refused from now on; those waiting for an answer get
            // Unavailable (their reply channels close with `controls`).
            api_shared.set_shutting_down();
            drop(controls);
            say(&format!("PACT: shutting down ({action:?}): stopping services"));
            sup.stop_all();
            for (pid, exit) in init::reap_all() {
                sup.child_exited(pid, exit_info(exit));
            }
            for e in sup.take_events() {
                say(&format!("PACT: supervisor: {e}"));
            }
            // An API power request: its answer goes out before the node (or the agent) ends.
            if let Some(answered) = power_answered.take() {
                let _ = answered.recv_timeout(Duration::from_secs(5));
            }
            if !pid1 {
                say(&format!("PACT: not PID 1: services stopped, exiting instead of {action:?}"));
                return Ok(());
            }
            if let Some(w) = watchdog.take() {
                w.disarm();
            }
            say("PACT: syncing, unmounting, powering off");
            return Err(init::power(action));
        }
    }
}

/// One `pact.test_check=` key, evaluated inside the node: `sysctl:KEY`, `file:PATH` (its
/// first line), `stat:PATH` (mode, uid, gid), `mount:PATH` (the filesystem type mounted there), `service:NAME` (state),
/// `cgroup:NAME:FILE` (a file of the service's cgroup scope).
fn check_value(key: &str, sup: &Supervisor) -> String {
    let (kind, arg) = key.split_once(':').unwrap_or((key, ""));
    let first_line = |p: &str| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|e| format!("<{e}>"))
    };
    match kind {
        "sysctl" => first_line(&format!("/proc/sys/{}", arg.replace('.', "/"))),
        "file" => first_line(arg),
        "stat" => {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(arg)
                .map(|m| format!("mode={:04o} uid={} gid={}", m.mode() & 0o7777, m.uid(), m.gid()))
                .unwrap_or_else(|e| format!("<{e}>"))
        }
        "mount" => std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .rfind(|l| l.split(' ').nth(4) == Some(arg))
                    .and_then(|l| l.split(" - ").nth(1).and_then(|rest| rest.split(' ').next()).map(str::to_string))
            })
            .unwrap_or_else(|| "<not mounted>".into()),
        "service" => sup.status(arg).map(|s| state_name(&s.state).to_string()).unwrap_or_else(|| "<unknown>".into()),
        "cgroup" => {
            let (svc, file) = arg.split_once(':').unwrap_or((arg, ""));
            match sup.status(svc).and_then(|s| s.cgroup) {
                Some(dir) => first_line(&dir.join(file).display().to_string()),
                None => "<no cgroup>".into(),
            }
        }
        _ => "<unknown check>".into(),
    }
}

fn exit_info(e: init::Exit) -> supervisor::ExitInfo {
    match e {
        init::Exit::Code(c) => supervisor::ExitInfo::Code(c),
        init::Exit::Signal(s) => supervisor::ExitInfo::Signal(s),
    }
}

fn state_name(s: &supervisor::ServiceState) -> &'static str {
    s.as_str()
}

/// Starts the API server on `[agent.shell] listen`, or says on the console why it does not run.
/// With an identity source, the server starts once the node holds a certificate (on a thread of its
/// own, so the boot does not wait) and presents whatever certificate is current.
fn start_api(
    cfg: &AgentConfig,
    identity: Option<Arc<dyn pact_agent::enroll::IdentitySource>>,
    shared: &Arc<api::Shared>,
    link: boot::Link<EventWaker>,
) {
    if !cfg.shell_enabled {
        say("PACT: api: not started: [agent.shell] enabled = false");
        return;
    }
    // The API's decisions go on the journal's record through the agent's own identity.
    let record = match boot::journal_config(cfg, identity.clone()) {
        Ok(j) => Some(pact_agent::audit::Recorder::start(j, &cfg.node_id, Arc::new(|l: &str| say(l)))),
        Err(e) => {
            say(&format!("PACT: api: decisions are not recorded in the journal: {e}"));
            None
        }
    };
    if let Some(id) = identity {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        let spawned = std::thread::Builder::new().name("api-start".into()).spawn(move || {
            let tls = id.ready().and_then(|()| {
                let (cert, key) = id.cert_files();
                Arc::new(pact_agent::enroll::ReloadingCert::new(cert, key)?).server_config()
            });
            match tls {
                Ok(tls) => serve_api(&cfg, tls, &shared, link, record),
                Err(why) => say(&format!("PACT: api: not started on {}: {why}", cfg.shell_listen)),
            }
        });
        if let Err(e) = spawned {
            say(&format!("PACT: api: not started: {e}"));
        }
        return;
    }
    match api::tls_config(cfg) {
        Ok(tls) => serve_api(cfg, tls, shared, link, record),
        Err(why) => say(&format!("PACT: api: not started on {}: {why}", cfg.shell_listen)),
    }
}

fn serve_api(
    cfg: &AgentConfig,
    tls: Arc<rustls::ServerConfig>,
    shared: &Arc<api::Shared>,
    link: boot::Link<EventWaker>,
    record: Option<Arc<pact_agent::audit::Recorder>>,
) {
    let auth = api::Auth::from_config(cfg.shell_auth.as_ref());
    let described = auth.describe();
    let prefetch = auth.clone();
    // The JWKS ahead of the first token, off the boot path (a failure only means the first
    // token fetches it).
    let _ = std::thread::Builder::new().name("jwks".into()).spawn(move || match prefetch.prefetch() {
        Some(Ok(n)) => say(&format!("PACT: api: token keys: {n} key(s) from the issuer's JWKS")),
        Some(Err(e)) => say(&format!("PACT: api: token keys: {e}; fetching again when a token needs them")),
        None => {}
    });
    let server = api::Server {
        tls,
        auth,
        shared: shared.clone(),
        link,
        limits: api::Limits::default(),
        log: Arc::new(|l: &str| say(l)),
        record,
    };
    match server.spawn(cfg.shell_listen) {
        Ok(addr) => say(&format!("PACT: api: listening on {addr} (TLS; {described})")),
        Err(e) => say(&format!("PACT: api: not started: cannot listen on {}: {e}", cfg.shell_listen)),
    }
}

/// Where cgroup v2 is mounted: /sys/fs/cgroup on a unified system (and on a node this agent
/// booted), else the hybrid layout's /sys/fs/cgroup/unified.
fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let v2: Vec<&str> = info
        .lines()
        .filter(|l| l.split(" - ").nth(1).is_some_and(|r| r.starts_with("cgroup2 ")))
        .filter_map(|l| l.split(' ').nth(4))
        .collect();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].iter().find(|p| v2.contains(p)).map(PathBuf::from)
}
