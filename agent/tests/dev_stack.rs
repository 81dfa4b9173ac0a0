//! The README's development stack end to end, with the real binaries and real TLS:
//! `pact-journal --dev` writes, besides the CLI's `cli.toml`, an `agent.toml` (with
//! `agent.crt`, `agent.key` and `agent.token`) for a local agent running as node `dev-node`;
//! the agent started from it as an ordinary process boots into the empty `dev` vCluster, and
//! what `pact apply` and `pact node assign dev-node` then declare is applied to this machine.
//!
//! The agent.toml is used as written except for two lines: the API's port (a free one, not
//! 9445) and `[agent.supervisor] cgroup_root` pointing at an empty ordinary directory, so
//! that the pact backend's fallback for an agent that is not PID 1 and has no usable cgroup2
//! is taken every time, as root too: services run without scopes, each in its own session and
//! process group. Such an agent also leaves the hostname alone.
//!
//! The CLI finds the journal, token and CA through `PACT_DEV_DIR` (the dev dir's cli.toml),
//! and reaches the agent with `--agent-endpoint`.

mod support;

use nanoserde::DeJson;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{cmdline, free_port, hostname, pact_cli, poll, run_ok, Agent, Journal, TempDir};

const NODE: &str = "dev-node";
const VC: &str = "devvc";

/// One service in `pact service ... --output json` (the fields the test reads).
#[derive(DeJson, Debug, Clone)]
struct ServiceState {
    node: String,
    name: String,
    state: String,
    pid: u32,
}

/// The stack: the journal's data in `<tmp>/j`, the CLI configured by its dev dir only.
struct Stack {
    tmp: PathBuf,
    dev: PathBuf,
    /// `--agent-endpoint`: where the agent's API listens.
    api: String,
}

impl Stack {
    /// `pact ARGS` with `PACT_DEV_DIR` and nothing else to go by.
    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = pact_cli(&self.tmp);
        cmd.env("PACT_DEV_DIR", &self.dev).args(args);
        cmd
    }

    /// `pact ARGS`, which must succeed; its standard output.
    fn pact(&self, args: &[&str]) -> String {
        run_ok(&mut self.cli(args), &format!("pact {}", args.join(" "))).0
    }

    /// `pact service ACTION dev-node [SERVICE] --agent-endpoint A --output json`, parsed; what
    /// pact said if it failed.
    fn service(&self, action: &str, service: Option<&str>) -> Result<Vec<ServiceState>, String> {
        let mut args = vec!["service", action, NODE];
        args.extend(service);
        args.extend(["--agent-endpoint", self.api.as_str(), "--output", "json"]);
        let out = self.cli(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("pact {args:?}: {}{text}{}", out.status, String::from_utf8_lossy(&out.stderr)));
        }
        Ok(Vec::<ServiceState>::deserialize_json(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}")))
    }

    /// The one service `name` in the answer to `action`, which must succeed.
    fn one(&self, action: &str, name: &str) -> ServiceState {
        let all = self.service(action, Some(name)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), 1, "{action} {name}: {all:?}");
        assert_eq!((all[0].node.as_str(), all[0].name.as_str()), (NODE, name), "{all:?}");
        all[0].clone()
    }
}

/// Services the test saw running, killed on drop if still there (the agent stops them when it
/// ends normally; this is for an agent that did not).
struct Leftovers(Vec<u32>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if cmdline(pid).starts_with("/bin/sleep 1000") {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits up to `within` for `pid` to be gone, zombie included (its parent reaped it).
fn gone_within(pid: u32, within: Duration) -> bool {
    poll(within, Duration::from_millis(20), || (!alive(pid)).then_some(())).is_some()
}

/// Fields 4 to 6 of /proc/PID/stat (proc(5)): (parent pid, process group, session).
fn stat_ids(pid: u32) -> (u32, u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) is in parentheses and may hold anything: count after the last ')'.
    let rest = &stat[stat.rfind(')').expect("a ) in /proc/PID/stat") + 1..];
    let f: Vec<u32> = rest.split_whitespace().skip(1).take(3).map(|v| v.parse().unwrap()).collect();
    (f[0], f[1], f[2])
}

/// The value of `key` in the TOML table `table` (dotted, e.g. "agent.shell.auth").
fn toml_str(doc: &toml_edit::DocumentMut, table: &str, key: &str) -> String {
    let mut item = doc.as_item();
    for t in table.split('.') {
        item = &item[t];
    }
    item[key].as_str().unwrap_or_else(|| panic!("no string {table}.{key} in agent.toml")).to_string()
}

#[test]
fn the_dev_stack_runs_an_agent_beside_the_journal_without_cgroups() {
    let tmp = TempDir::new("agent-dev-stack");
    let host_before = hostname();

    // 1. The journal, and what --dev wrote for the CLI and the agent.
    let journal = Journal::start_in(&tmp, &tmp.join("j"));
    let stack = Stack { tmp: tmp.to_path_buf(), dev: tmp.join("j/dev"), api: format!("127.0.0.1:{}", free_port()) };
    let cfg = stack.dev.join("agent.toml");
    let answered = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        (cfg.exists() && stack.cli(&["status"]).output().unwrap().status.success()).then_some(())
    });
    assert!(answered.is_some(), "no {} or `pact status` (PACT_DEV_DIR) failing after 30 s", cfg.display());
    let status = stack.pact(&["status"]);
    assert!(status.contains("(leader)"), "pact status:\n{status}");
    for f in ["cli.toml", "admin.token", "ca.crt", "agent.crt", "agent.key", "agent.token"] {
        assert!(stack.dev.join(f).is_file(), "--dev wrote no {f}");
    }
    let text = std::fs::read_to_string(&cfg).unwrap();
    let doc: toml_edit::DocumentMut = text.parse().unwrap_or_else(|e| panic!("agent.toml: {e}\n{text}"));
    let agent_dir = std::fs::canonicalize(stack.dev.join("agent")).unwrap();
    assert_eq!(toml_str(&doc, "agent", "node_id"), NODE);
    assert_eq!(toml_str(&doc, "agent", "vcluster"), "dev");
    for key in ["cache_dir", "run_dir"] {
        let dir = toml_str(&doc, "agent", key);
        assert!(Path::new(&dir).starts_with(&agent_dir), "agent.{key} = {dir:?}, not under {}", agent_dir.display());
    }
    let endpoints: Vec<&str> = doc["agent"]["journal"]["endpoints"]
        .as_array()
        .expect("agent.journal.endpoints")
        .iter()
        .flat_map(|v| v.as_str())
        .collect();
    assert_eq!(endpoints, [journal.endpoint()]);
    for (key, file) in
        [("tls_ca", "ca.crt"), ("tls_cert", "agent.crt"), ("tls_key", "agent.key"), ("token_path", "agent.token")]
    {
        let path = toml_str(&doc, "agent.journal", key);
        assert_eq!(
            std::fs::canonicalize(&path).unwrap(),
            std::fs::canonicalize(stack.dev.join(file)).unwrap(),
            "{key}"
        );
    }
    assert_eq!(toml_str(&doc, "agent.shell", "listen"), "127.0.0.1:9445");
    let secret = std::fs::read_to_string(stack.dev.join("hmac.secret")).unwrap();
    assert_eq!(
        [toml_str(&doc, "agent.shell.auth", "issuer"), toml_str(&doc, "agent.shell.auth", "audience")],
        ["pact-dev", "pact"]
    );
    assert_eq!(toml_str(&doc, "agent.shell.auth", "hmac_secret"), secret.trim());

    // 2. The agent from that agent.toml: its API on a free port, cgroup_root an ordinary dir.
    let not_a_cgroup = tmp.join("not-a-cgroup");
    std::fs::create_dir(&not_a_cgroup).unwrap();
    let listen = "listen = \"127.0.0.1:9445\"\n";
    assert_eq!(text.matches(listen).count(), 1, "agent.toml:\n{text}");
    assert_eq!(text.matches("[agent.supervisor]\n").count(), 1, "agent.toml:\n{text}");
    let text = text.replace(listen, &format!("listen = \"{}\"\n", stack.api)).replace(
        "[agent.supervisor]\n",
        &format!("[agent.supervisor]\ncgroup_root = \"{}\"\n", not_a_cgroup.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut leftovers = Leftovers(Vec::new());
    let mut agent = Agent::start(&cfg, &[]);
    agent.console.wait_for(&format!("PACT-READY node={NODE}"), Duration::from_secs(30));
    // Lines printed before the ready line: here already, or on their way through the pipe.
    let soon = Duration::from_secs(5);
    let no_cgroup = agent.console.wait_for("cgroup v2 unavailable", soon);
    assert!(
        no_cgroup.contains(&not_a_cgroup.display().to_string())
            && no_cgroup.contains("services run without scopes or limits, each in its own process group"),
        "{no_cgroup}"
    );
    agent.console.wait_for("PACT: not PID 1: the hostname is left to the system", soon);
    assert!(agent.console.lines_with("PACT-APPLY hostname").is_empty(), "the agent applied a hostname");
    let booted = agent.console.wait_for("PACT: boot config from", soon);
    assert!(booted.contains(&format!("{}: vCluster dev overlay", journal.endpoint())), "{booted}");
    let none = stack.service("status", None).unwrap_or_else(|e| panic!("{e}"));
    assert!(none.is_empty(), "services before any assignment: {none:?}");

    // 3. A vCluster with a file and a service, and the node assigned to it.
    let hello = tmp.join("out/hello.txt");
    let spec = tmp.join("devvc.toml");
    std::fs::write(
        &spec,
        format!(
            "[vcluster.{VC}.files.{path:?}]\ncontent = \"hi\\n\"\nmode = \"0640\"\n\n\
             [vcluster.{VC}.services.sleeper]\nbinary = \"/bin/sleep\"\nargs = [\"1000\"]\n",
            path = hello.display().to_string(),
        ),
    )
    .unwrap();
    stack.pact(&["apply", spec.to_str().unwrap()]);
    stack.pact(&["node", "assign", NODE, "--vcluster", VC]);

    // 4. The service runs, outside any cgroup of the agent's, leading its own process group.
    let running = poll(Duration::from_secs(20), Duration::from_millis(100), || {
        stack
            .service("status", None)
            .ok()?
            .into_iter()
            .find(|s| s.name == "sleeper" && s.state == "running" && s.pid != 0)
    });
    let pid =
        running.unwrap_or_else(|| panic!("sleeper not running after 20 s: {:?}", stack.service("status", None))).pid;
    leftovers.0.push(pid);
    assert_eq!(cmdline(pid).trim_end(), "/bin/sleep 1000", "pid {pid}");
    assert_eq!(std::fs::read_to_string(&hello).unwrap(), "hi\n");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&hello).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "{}'s mode is {mode:o}", hello.display());
    }
    let applied = agent.console.wait_for("PACT-APPLY files", soon);
    assert_eq!(applied, format!("PACT-APPLY files {} applied", hello.display()));
    let (ppid, pgrp, session) = stat_ids(pid);
    assert_eq!(ppid, agent.pid(), "sleeper's parent");
    assert_eq!((pgrp, session), (pid, pid), "sleeper leads its own process group and session");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(!cgroups.contains("pact.slice"), "sleeper is in a pact scope:\n{cgroups}");
    assert!(std::fs::read_dir(&not_a_cgroup).unwrap().next().is_none(), "the agent wrote into its cgroup_root");

    // 5. Stop: answered once it has stopped; the agent reaps it.
    let stopped = stack.one("stop", "sleeper");
    assert_eq!((stopped.state.as_str(), stopped.pid), ("stopped", 0), "{stopped:?}");
    assert!(gone_within(pid, Duration::from_secs(10)), "pid {pid} still exists after the stop: {:?}", cmdline(pid));
    let st = stack.one("status", "sleeper");
    assert_eq!((st.state.as_str(), st.pid), ("stopped", 0), "{st:?}");

    // 6. Start again; then SIGTERM to the agent stops it and exits 0.
    let started = stack.one("start", "sleeper");
    assert_eq!(started.state, "running", "{started:?}");
    let pid2 = started.pid;
    leftovers.0.push(pid2);
    assert!(pid2 != 0 && pid2 != pid, "the new pid {pid2} (was {pid})");
    assert_eq!(cmdline(pid2).trim_end(), "/bin/sleep 1000", "pid {pid2}");
    assert_eq!(stat_ids(pid2).1, pid2, "the restarted sleeper leads its own process group");
    let exit = agent.terminate(Duration::from_secs(15));
    assert_eq!(exit.code(), Some(0), "the agent's exit on SIGTERM: {exit}");
    assert!(gone_within(pid2, Duration::from_secs(5)), "pid {pid2} outlived the agent: {:?}", cmdline(pid2));
    agent.console.wait_for("not PID 1: services stopped, exiting", Duration::from_secs(5));
    assert!(agent.console.lines_with("PACT-APPLY hostname").is_empty(), "the agent applied a hostname");
    assert_eq!(hostname(), host_before, "the agent changed this machine's hostname");
}
