//! The diskless-node test (DESIGN.md §9.5): the agent booted as PID 1 of a QEMU guest from a
//! project-built image, streaming its configuration from a real `pact-journal --dev` on the host.
//!
//! 1. A journal on 127.0.0.1:<free port> holds, for vCluster `test` (recorded with the real
//!    `pact apply` and `pact node assign`), an overlay that sets a sysctl, writes a file, mounts a
//!    tmpfs and starts two services, `b` depending on `a`.
//! 2. `images/node/build-image.sh` builds the node image around this build's agent (stripped):
//!    the initramfs variant, and in a second test the SquashFS-root variant. The node reaches the
//!    host's 127.0.0.1 as 10.0.2.2 (QEMU user networking), under the host's own hostname (the name
//!    the journal's development certificate carries), through the image's /etc/hosts.
//! 3. `images/node/run-qemu.sh` boots it (KVM only when the CPU offers it, else TCG) with
//!    `pact.test_check=...` and a host port forwarded to the node's API server (9445). The
//!    initramfs node carries no token and no certificate: the test registers its MAC with
//!    `pact enroll node-001 --hardware-id mac:...`, and the node enrolls at boot (its API then
//!    serves the certificate the journal signed). The SquashFS node carries a token and a
//!    certificate for `node-001` signed by a CA the test makes. Both have an
//!    `[agent.shell.auth]` with an HMAC secret the test mints a `pact-ops-test` token from. The
//!    test reads the serial console and checks each effect from the agent's tagged lines (matched
//!    by tag, not by line start: SeaBIOS writes escape sequences), most of all the `PACT-CHECK`
//!    lines the agent evaluates inside the node once it is ready.
//! 4. At `PACT-READY` the test asks the node's API from the host over real TLS: `ServiceControl`
//!    status (a and b running, with the pids the console reported), then `Power` poweroff (exit
//!    code 0 once scheduled). QEMU must then exit by itself, status 0 (a clean power-off, the
//!    services stopped b before a). The initramfs node also loads the kernel's software
//!    watchdog (`build-image.sh --softdog 3`) and is held up 8 s after ready: the agent must arm
//!    it and keep petting it, or the node resets. The kernel parameter `pact.test_poweroff_after_ready=1`
//!    still powers a node off by itself, for manual runs; the test uses the API.
//!
//! Without qemu-system-x86_64 or a kernel (images/node/fetch-kernel.sh needs apt and the package
//! registry), the test prints "skipped: <reason>" and passes, except with CI=true, where a
//! missing piece fails it (.ci/run installs them).
//!
//! The console protocol is in images/node/README.md. `PACT_NODE_AGENT=PATH` boots another agent
//! binary (a release build, say; a relative path is the workspace root's). The console of a
//! boot is kept in the test's temp dir with the host's time before each line, and its tail is
//! printed when the test fails.

mod support;

use pact_proto::auth::HmacVerifier;
use pact_proto::client::Client;
use pact_proto::shell::{exec_output, ExecOutput, PowerRequest, ServiceControlRequest, ServiceControlResponse};
use pact_proto::Method;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{bin, free_port, hostname, poll, run_ok, terminate, Console, Journal, TempDir, TestCa};

/// Per boot: QEMU is killed past this (run-qemu.sh's own limit), the test gives up a little later.
const BOOT_TIMEOUT_S: u64 = 120;
const NODE: &str = "node-001";
const MOTD: &str = "pact diskless test node\n";
/// The node's `[agent.shell.auth]`: the test mints its tokens from these.
const API_SECRET: &str = "qemu-node-api-secret-qemu-node-api-secret";
const API_ISSUER: &str = "https://idp.test/qemu";
const API_AUDIENCE: &str = "pact-cli";
/// The role the test calls the node's API with: ops of the node's vCluster.
const API_ROLE: &str = "pact-ops-test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Skips (prints why, passes) or, under CI=true, fails.
fn unavailable(reason: &str) {
    if in_ci() {
        panic!("{reason} (CI=true: the QEMU node test must run; .ci/run installs what it needs)");
    }
    println!("skipped: {reason}");
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PACT_NODE_AGENT") {
        // cargo runs tests in the package's directory: a relative path is the workspace's.
        return repo_root().join(p);
    }
    bin("pact-agent")
}

/// What the node needs from the host, or why the test cannot run here.
struct Prereqs {
    kernel: PathBuf,
}

fn prereqs() -> Result<Prereqs, String> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err("the node image is x86_64 Linux".into());
    }
    for tool in ["qemu-system-x86_64", "cpio", "bash", "timeout"] {
        if !on_path(tool) {
            return Err(format!(
                "{tool} is not installed (apt-get install --no-install-recommends qemu-system-x86 cpio)"
            ));
        }
    }
    let out = Command::new(repo_root().join("images/node/fetch-kernel.sh"))
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("images/node/fetch-kernel.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no node kernel (images/node/fetch-kernel.sh needs apt and the package registry): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let kernel = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().to_string();
    Ok(Prereqs { kernel: PathBuf::from(kernel) })
}

/// The overlay: one item of each kind the issue names. The services run /bin/sleep (copied into
/// the image with `--extra`; the image has no userland of its own). The checks run the moment
/// the node is ready, so nothing a service writes after its start could be checked reliably:
/// the start order shows in the pids the agent reports.
fn overlay_spec() -> String {
    format!(
        r#"[vcluster.test]
supervisor_backend = "pact"

[vcluster.test.sysctl]
"vm.swappiness" = "13"

[vcluster.test.files]
"/etc/motd" = {{ content = {motd:?}, mode = "0644", owner = "root", group = "root" }}

[vcluster.test.mounts]
"/scratch" = {{ type = "tmpfs", source = "tmpfs", options = "size=16m,mode=1777" }}

[vcluster.test.services.a]
binary = "/bin/sleep"
args = ["3600"]
restart = "never"
order = 1
cgroup_memory_max = "64M"
cgroup_pids_max = 32
cgroup_cpu_weight = 50

[vcluster.test.services.b]
binary = "/bin/sleep"
args = ["3601"]
restart = "never"
depends_on = ["a"]
order = 2
"#,
        motd = MOTD,
    )
}

/// How the test reaches the node's API server: a CA it made (the node's certificate is signed by
/// it) and the host port forwarded to the node's 9445 (chosen at each boot).
struct Api {
    ca: PathBuf,
}

/// A CA (`dir/api-ca.crt`, trusted by the test only) and the node's certificate for `node-001`
/// signed by it (`input/agent.crt`, `input/agent.key`, which go into the image).
fn node_certificate(dir: &Path, input: &Path) -> Api {
    let ca = TestCa::new("pact QEMU test CA");
    let (cert, key) = ca.issue(&[NODE], NODE);
    std::fs::write(input.join("agent.crt"), cert).unwrap();
    std::fs::write(input.join("agent.key"), key).unwrap();
    let path = dir.join("api-ca.crt");
    std::fs::write(&path, &ca.pem).unwrap();
    Api { ca: path }
}

/// The MAC QEMU gives the node's first network interface (run-qemu.sh sets none).
const QEMU_MAC: &str = "52:54:00:12:34:56";

/// A journal holding the test overlay, the image input dir pointing the node at it, and how to
/// reach the node's API. `enroll`: the image carries no token and no certificate; the node is
/// registered by its MAC (`pact enroll`) and enrolls at boot, and its API then serves the
/// certificate the journal signed.
fn journal_with_overlay(dir: &Path, enroll: bool) -> (Journal, PathBuf, Api) {
    let host = hostname();
    assert!(
        !host.is_empty() && host != "localhost" && host.parse::<std::net::IpAddr>().is_err(),
        "this test needs a host name other than localhost (the node reaches the journal under it); have {host:?}"
    );
    let journal = Journal::start(dir);
    let spec = dir.join("overlay.toml");
    std::fs::write(&spec, overlay_spec()).unwrap();
    println!("{}", journal.pact(&["apply", spec.to_str().unwrap()]).trim());
    println!("{}", journal.pact(&["node", "assign", NODE, "--vcluster", "test"]).trim());

    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("agent.toml"),
        format!(
            "[agent]\nenforcement_mode = \"enforce\"\n\n[agent.supervisor]\nbackend = \"pact\"\n\n\
             [agent.journal]\nendpoints = [\"{host}:{}\"]\ntls_ca = \"/etc/pact/ca.crt\"\n\
             tls_cert = \"/etc/pact/agent.crt\"\ntls_key = \"/etc/pact/agent.key\"\n\n\
             [agent.shell]\nlisten = \"0.0.0.0:9445\"\n\n\
             [agent.shell.auth]\nissuer = \"{API_ISSUER}\"\naudience = \"{API_AUDIENCE}\"\nhmac_secret = \"{API_SECRET}\"\n",
            journal.port
        ),
    )
    .unwrap();
    std::fs::copy(journal.dev("ca.crt"), input.join("ca.crt")).unwrap();
    let api = if enroll {
        let hw = format!("mac:{QEMU_MAC}");
        println!("{}", journal.pact(&["enroll", NODE, "--hardware-id", hw.as_str()]).trim());
        Api { ca: journal.dev("ca.crt") }
    } else {
        std::fs::copy(journal.dev("admin.token"), input.join("agent.token")).unwrap();
        node_certificate(dir, &input)
    };
    std::fs::write(input.join("hosts"), format!("10.0.2.2\t{host}\n")).unwrap();
    (journal, input, api)
}

/// The node's API from the host: TCP to the forwarded port, TLS checked against the test's CA
/// under the node's name, the pact handshake. Retried while the node's server is not up yet.
fn api_client(api: &Api, port: u16) -> Result<Client, String> {
    let tls = pact_proto::tls::client_config(&api.ca).map_err(|e| e.to_string())?;
    let token = HmacVerifier::new(API_SECRET.as_bytes(), API_ISSUER, API_AUDIENCE).mint("qemu-test", API_ROLE, 600)?;
    let mut last = String::new();
    poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let t = Duration::from_secs(10);
        pact_proto::client::connect_tcp(&format!("127.0.0.1:{port}"), t)
            .and_then(|tcp| pact_proto::client::tls_over(tcp, &format!("{NODE}:9445"), tls.clone(), t))
            .and_then(|s| Client::over(s, NODE, &token))
            .map_err(|e| last = e.to_string())
            .ok()
    })
    .ok_or_else(|| format!("the node's API on 127.0.0.1:{port}: {last}"))
}

/// Once the node is ready: the status of every service, then a clean power-off, both through
/// the node's API. Returns the status.
fn status_then_poweroff(api: &Api, port: u16) -> Result<ServiceControlResponse, String> {
    let mut c = api_client(api, port)?;
    let status: ServiceControlResponse = c
        .call(Method::ServiceControl, &ServiceControlRequest { name: String::new(), action: "status".into() })
        .map_err(|e| format!("ServiceControl status through the API: {e}"))?;
    let out: ExecOutput = c
        .call(Method::Power, &PowerRequest { action: "poweroff".into(), reason: "qemu_node test".into() })
        .map_err(|e| format!("Power poweroff through the API: {e}"))?;
    if out.output != Some(exec_output::Output::ExitCode(0)) {
        return Err(format!("Power poweroff answered {out:?}, expected exit code 0"));
    }
    Ok(status)
}

fn build_image(p: &Prereqs, input: &Path, out: &Path, squashfs: bool, softdog: Option<u32>) {
    let mut cmd = Command::new(repo_root().join("images/node/build-image.sh"));
    cmd.arg("--agent").arg(agent_bin()).arg("--out").arg(out).arg("--input").arg(input).arg("--kernel").arg(&p.kernel);
    cmd.args(["--extra", "/bin/sleep"]);
    if squashfs {
        cmd.arg("--squashfs");
    }
    if let Some(secs) = softdog {
        cmd.arg("--softdog").arg(secs.to_string());
    }
    let t = Instant::now();
    let (stdout, stderr) = run_ok(&mut cmd, "build-image.sh");
    println!("{} [{:.1} s]", format!("{stdout}{stderr}").trim(), t.elapsed().as_secs_f64());
}

/// What one boot gave: the console's lines, QEMU's exit status, the wall time, and the status
/// the node's API reported at ready.
struct Boot {
    lines: Vec<String>,
    exit: Option<i32>,
    took: Duration,
    api_status: ServiceControlResponse,
}

/// The end of a boot's console, for a failure message.
fn console_tail(lines: &[String], log: &Path) -> String {
    let tail = &lines[lines.len().saturating_sub(150)..];
    format!("console, last {} lines (all in {}):\n{}", tail.len(), log.display(), tail.join("\n"))
}

/// Ends QEMU (run-qemu.sh exec'd `timeout`, which passes SIGTERM on to QEMU): SIGKILL if it
/// has not ended 5 s after SIGTERM.
fn kill_qemu(child: &mut Child) {
    terminate(child.id());
    let _ = poll(Duration::from_secs(5), Duration::from_millis(100), || child.try_wait().ok().flatten());
    let _ = child.kill();
    let _ = child.wait();
}

/// One boot: the console's lines (all of them, also written to `log` with the host's time of
/// arrival); at `PACT-READY`, the API's status and power-off request (`status_then_poweroff`,
/// on a thread of its own while the console keeps being read). Fails the test if the API calls
/// fail or QEMU does not exit by itself in time.
/// `hold`: how long the node stays up after PACT-READY before the test asks it for its status
/// and the power-off (long enough for a watchdog that is not petted to fire).
fn boot(image: &Path, append: &str, log: &Path, api: &Api, hold: Duration) -> Boot {
    let t0 = Instant::now();
    let api_port = free_port();
    let mut child = Command::new(repo_root().join("images/node/run-qemu.sh"))
        .arg("--image")
        .arg(image)
        .arg("--timeout")
        .arg(BOOT_TIMEOUT_S.to_string())
        .arg("--node-id")
        .arg(NODE)
        .arg("--append")
        .arg(append)
        .arg("--hostfwd")
        .arg(format!("tcp:127.0.0.1:{api_port}-10.0.2.15:9445"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run-qemu.sh");
    let mut console = Console::of(&mut child);
    let deadline = t0 + Duration::from_secs(BOOT_TIMEOUT_S + 15);
    let mut file = std::fs::File::create(log).unwrap();
    let mut api_call: Option<mpsc::Receiver<Result<ServiceControlResponse, String>>> = None;
    let mut api_status = None;
    loop {
        let got = console.recv(Duration::from_millis(200));
        if let Ok(l) = &got {
            use std::io::Write;
            // The log carries the host's clock (seconds since QEMU started) before each line.
            let _ = writeln!(file, "{:8.3} {l}", t0.elapsed().as_secs_f64());
            if api_call.is_none() && l.contains("PACT-READY ") {
                let (tx, rx) = mpsc::channel();
                let (ca, port) = (Api { ca: api.ca.clone() }, api_port);
                std::thread::spawn(move || {
                    std::thread::sleep(hold);
                    let _ = tx.send(status_then_poweroff(&ca, port));
                });
                api_call = Some(rx);
            }
        }
        if let Some(Ok(r)) = api_call.as_ref().map(|c| c.try_recv()) {
            match r {
                Ok(st) => api_status = Some(st),
                Err(why) => {
                    kill_qemu(&mut child);
                    panic!("{why}\n{}", console_tail(&console.seen, log));
                }
            }
        }
        match got {
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                kill_qemu(&mut child);
                panic!(
                    "QEMU still running {} s after start; {}",
                    BOOT_TIMEOUT_S + 15,
                    console_tail(&console.seen, log)
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let status = child.wait().unwrap();
    let lines = console.seen;
    let took = t0.elapsed();
    let api_status = match (api_status, api_call) {
        (Some(st), _) => st,
        (None, Some(c)) => match c.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(st)) => st,
            Ok(Err(why)) => panic!("{why}\n{}", console_tail(&lines, log)),
            Err(_) => panic!("the API calls did not finish after QEMU exited\n{}", console_tail(&lines, log)),
        },
        (None, None) => panic!("QEMU exited ({status}) before the node was ready\n{}", console_tail(&lines, log)),
    };
    Boot { lines, exit: status.code(), took, api_status }
}

/// The console's tagged lines: everything from the tag on (whatever the line had before it),
/// without a kernel message that landed in the middle of the agent's line (the kernel writes
/// to the serial port directly, so its `[    2.877791] ...` can cut in before the newline).
fn tagged<'a>(lines: &'a [String], tag: &str) -> Vec<(usize, &'a str)> {
    let tag = format!("{tag} ");
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.find(&tag).map(|p| (i, strip_kernel_message(&l[p + tag.len()..]).trim())))
        .collect()
}

/// Cuts `text` at the first `[ <seconds>.<micros>]` kernel timestamp, if any.
fn strip_kernel_message(text: &str) -> &str {
    let b = text.as_bytes();
    for (i, _) in text.match_indices('[') {
        let mut j = i + 1;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        let digits = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
        let k = j + digits;
        if digits > 0 && b.get(k) == Some(&b'.') {
            let micros = b[k + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if micros == 6 && b.get(k + 1 + micros) == Some(&b']') {
                return &text[..i];
            }
        }
    }
    text
}

#[test]
fn kernel_messages_are_cut_out_of_agent_lines() {
    assert_eq!(strip_kernel_message("mode=0644 uid=0 gid=0[    2.877791] IPv6: link up"), "mode=0644 uid=0 gid=0");
    assert_eq!(strip_kernel_message("a [b] c"), "a [b] c");
    assert_eq!(strip_kernel_message("x=[12.5]"), "x=[12.5]");
}

/// Checks every effect from the console of a boot and the API's answers; panics with the
/// console on any miss.
fn check_node(boot: &Boot, log: &Path, softdog: Option<u32>) {
    let (lines, exit) = (&boot.lines[..], boot.exit);
    let fail = |why: String| -> ! { panic!("{why}\n{}", console_tail(lines, log)) };

    // The watchdog: armed by the agent as PID 1, petted at a third of its timeout through the
    // whole boot and the hold after ready (longer than the timeout), and never fired: a reset
    // would show the kernel's message, a second boot, or a failed API call.
    if let Some(secs) = softdog {
        let want = format!("PACT: watchdog /dev/watchdog: timeout {secs} s, petted every {} ms", secs * 1000 / 3);
        if !lines.iter().any(|l| l.contains(&want)) {
            fail(format!("no console line {want:?}"));
        }
        if lines.iter().any(|l| l.contains("Initiating system reboot")) {
            fail("the watchdog fired".into());
        }
        if tagged(lines, "PACT-READY").len() != 1 {
            fail("PACT-READY more than once: the node was reset".into());
        }
        println!("  watchdog: {want:?}, no reset");
    }

    if lines.iter().any(|l| l.contains("Kernel panic")) {
        fail("the kernel panicked (did PID 1 exit?)".into());
    }
    let ready = tagged(lines, "PACT-READY");
    let Some(&(ready_at, ready_line)) = ready.first() else { fail("no PACT-READY line".into()) };
    if ready_line.split_whitespace().next() != Some(&format!("node={NODE}")) {
        fail(format!("PACT-READY says {ready_line:?}, expected node={NODE}"));
    }

    // Boot phases: each a name and its milliseconds; printed for the report.
    let phases = tagged(lines, "PACT-BOOT");
    if phases.is_empty() {
        fail("no PACT-BOOT phase lines".into());
    }
    for (_, p) in &phases {
        let ok = p.starts_with("phase=")
            && p.split_whitespace().any(|f| f.strip_prefix("ms=").is_some_and(|n| n.parse::<u64>().is_ok()));
        if !ok {
            fail(format!("malformed PACT-BOOT line {p:?} (want phase=<name> ms=<n>)"));
        }
        println!("  PACT-BOOT {p}");
    }

    // Each declared item was applied (dimension and item as the agent's apply step names them).
    let applied = tagged(lines, "PACT-APPLY");
    for (dimension, item) in [("sysctl", "vm.swappiness"), ("files", "/etc/motd"), ("mounts", "/scratch")] {
        let hit = applied.iter().find(|(_, l)| {
            let mut f = l.split_whitespace();
            f.next() == Some(dimension) && f.next() == Some(item)
        });
        match hit {
            None => fail(format!("no PACT-APPLY {dimension} {item} line")),
            Some((_, l)) => {
                let outcome = l.split_whitespace().nth(2).unwrap_or("");
                if !["applied", "unchanged"].contains(&outcome) {
                    fail(format!("{item} was not applied: PACT-APPLY {l}"));
                }
            }
        }
    }
    if let Some((_, l)) =
        applied.iter().find(|(_, l)| l.split_whitespace().nth(2).is_some_and(|o| o.eq_ignore_ascii_case("failed")))
    {
        fail(format!("an item failed: PACT-APPLY {l}"));
    }

    // The node's own view, evaluated by the agent after ready.
    let checks: Vec<(String, String)> = tagged(lines, "PACT-CHECK")
        .into_iter()
        .filter_map(|(_, l)| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let check = |key: &str| -> String {
        checks
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| fail(format!("no PACT-CHECK {key}=")))
    };
    let swappiness = check("sysctl:vm.swappiness");
    if swappiness != "13" {
        fail(format!("vm.swappiness is {swappiness:?} in the node, expected 13"));
    }
    let motd = check("file:/etc/motd");
    if motd != MOTD.trim_end() {
        fail(format!("/etc/motd in the node starts {motd:?}, expected {MOTD:?}"));
    }
    let st = check("stat:/etc/motd");
    if st != "mode=0644 uid=0 gid=0" {
        fail(format!("/etc/motd's mode and owner in the node: {st:?}, expected mode=0644 uid=0 gid=0"));
    }
    let scratch = check("mount:/scratch");
    if scratch != "tmpfs" {
        fail(format!("/scratch in the node: {scratch:?}, expected a tmpfs"));
    }
    // The node's cgroup2 is clean (the agent mounted it), so the limits must really be there.
    for (file, want) in [("memory.max", "67108864"), ("pids.max", "32"), ("cpu.weight", "50")] {
        let v = check(&format!("cgroup:a:{file}"));
        if v != want {
            fail(format!("service a's {file} in the node is {v:?}, expected {want}"));
        }
    }
    for s in ["a", "b"] {
        let v = check(&format!("service:{s}"));
        if v != "running" {
            fail(format!("service {s} in the node: {v:?}, expected running"));
        }
    }
    // Dependency order at start: a was started (forked) before b, so it has the lower pid
    // (a fresh node's pids only grow). At shutdown, reverse order when the agent reports stops.
    let services = tagged(lines, "PACT-SERVICE");
    let pid_of = |name: &str| -> u32 {
        services
            .iter()
            .filter(|(i, _)| *i <= ready_at)
            .filter_map(|(_, l)| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&name) && f.get(1) == Some(&"running"))
                    .then(|| f.get(2)?.strip_prefix("pid=")?.parse().ok())?
            })
            .next_back()
            .unwrap_or_else(|| fail(format!("no PACT-SERVICE {name} running pid=<n> line before ready")))
    };
    let (a_pid, b_pid) = (pid_of("a"), pid_of("b"));
    if a_pid == 0 || b_pid == 0 || a_pid >= b_pid {
        fail(format!("a (pid {a_pid}) was not started before b (pid {b_pid}), which depends on it"));
    }

    // The node's API, asked from the host at ready: both services running, with the pids the
    // console reported.
    let api: Vec<(&str, &str, u32)> =
        boot.api_status.services.iter().map(|s| (s.name.as_str(), s.state.as_str(), s.pid)).collect();
    if api != [("a", "running", a_pid), ("b", "running", b_pid)] {
        fail(format!("the API's status: {api:?}, expected a (pid {a_pid}) and b (pid {b_pid}) running"));
    }
    println!("  API status: {api:?}");
    let audit = |what: &str| lines.iter().any(|l| l.contains(what));
    if !audit("PACT: api: listening on 0.0.0.0:9445") {
        fail("no PACT: api: listening on 0.0.0.0:9445 line".into());
    }
    for want in [
        format!("PACT: api: qemu-test {API_ROLE} ServiceControl status * -> ok: 2 services"),
        format!("PACT: api: qemu-test {API_ROLE} Power poweroff reason=\"qemu_node test\" -> ok: scheduled"),
    ] {
        if !audit(&want) {
            fail(format!("no console line {want:?}"));
        }
    }

    // The power-off the API asked for: services stopped dependents first (b before a).
    let stopping = |name: &str| {
        let tag = format!("PACT: supervisor: service {name}: stopping");
        lines.iter().enumerate().skip(ready_at).find_map(|(i, l)| l.contains(&tag).then_some(i))
    };
    match (stopping("a"), stopping("b")) {
        (Some(a), Some(b)) if a < b => {
            fail("at poweroff a stopped before b (expected reverse dependency order)".into())
        }
        (Some(_), Some(_)) => println!("  services stopped in reverse order at poweroff"),
        _ => fail("no `PACT: supervisor: service <name>: stopping` lines for a and b at poweroff".into()),
    }

    // A clean poweroff: QEMU exits by itself, status 0 (a panic with -no-reboot exits too, but
    // was caught above; the timeout gives 124).
    if exit != Some(0) {
        fail(format!("QEMU exit status {exit:?} (124: the node did not power off in {BOOT_TIMEOUT_S} s)"));
    }
}

const APPEND: &str = "pact.test_check=sysctl:vm.swappiness,file:/etc/motd,mount:/scratch,service:a,service:b,\
cgroup:a:memory.max,cgroup:a:pids.max,cgroup:a:cpu.weight,stat:/etc/motd";

/// The initramfs node also carries the kernel's software watchdog with this timeout, and is
/// held up after ready for [`WATCHDOG_HOLD`].
const SOFTDOG_SECS: u32 = 3;
const WATCHDOG_HOLD: Duration = Duration::from_secs(8);

fn node_test(name: &str, squashfs: bool, softdog: Option<u32>, enroll: bool) {
    let p = match prereqs() {
        Ok(p) => p,
        Err(reason) => return unavailable(&reason),
    };
    let dir = TempDir::new(&format!("qemu-{name}"));
    let (journal, input, api) = journal_with_overlay(&dir, enroll);
    let image = dir.join("image");
    build_image(&p, &input, &image, squashfs, softdog);
    let log = dir.join("console.log");
    let hold = if softdog.is_some() { WATCHDOG_HOLD } else { Duration::ZERO };
    let b = boot(&image, APPEND, &log, &api, hold);
    println!(
        "boot ({name}): QEMU exited {:?} after {:.1} s; console in {}",
        b.exit,
        b.took.as_secs_f64(),
        log.display()
    );
    check_node(&b, &log, softdog);
    if enroll {
        let line = b.lines.iter().find(|l| l.contains("PACT: enrolled as"));
        let line = line.unwrap_or_else(|| panic!("the node did not enroll\n{}", console_tail(&b.lines, &log)));
        assert!(line.contains(&format!("enrolled as {NODE}")), "{line}");
        println!("{}", strip_kernel_message(line));
        let inspect = journal.pact(&["node", "inspect", NODE]);
        assert!(inspect.to_lowercase().contains("active"), "pact node inspect:\n{inspect}");
        println!("{}", inspect.trim());
    }
    drop(journal);
}

#[test]
fn node_boots_from_initramfs_and_applies_its_overlay() {
    node_test("initramfs", false, Some(SOFTDOG_SECS), true);
}

#[test]
fn node_boots_with_squashfs_root_and_applies_its_overlay() {
    node_test("squashfs", true, None, false);
}
