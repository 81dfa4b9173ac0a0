//! The agent as an ordinary service (not PID 1: the child subreaper) against a real
//! `pact-journal --dev`: a live change reaches it through the subscription and only the
//! service whose declaration changed is restarted; and a node whose journal is gone boots
//! from its verified cache, then reconciles with the journal when it is back.
//!
//! Needs root and a cgroup2 mount (the pact backend's scopes); prints a skip line otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{cgroup_skip_reason, cmdline, hostname, Agent, Journal, TempDir};

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

/// The agent as node `node`, with its own copy of the journal's token (the journal's dir may
/// be down later).
fn start_agent(dir: &Path, j: &Journal, node: &str) -> Agent {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\ncache_dir = \"{}\"\n[agent.journal]\nendpoints = [\"{}\"]\ntls_ca = \"{}\"\ntoken_path = \"{}\"\n",
            dir.join("cache").display(),
            j.endpoint(),
            j.dev("ca.crt").display(),
            dir.join("agent.token").display()
        ),
    )
    .unwrap();
    std::fs::copy(j.dev("admin.token"), dir.join("agent.token")).unwrap();
    Agent::start(&cfg, &["--node-id", node])
}

/// The pid of `svc` in the last `PACT-SERVICE svc running pid=N` line seen.
fn running_pid(agent: &Agent, svc: &str) -> u32 {
    agent
        .console
        .seen
        .iter()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"PACT-SERVICE") && f.get(1) == Some(&svc) && f.get(2) == Some(&"running"))
                .then(|| f.get(3)?.strip_prefix("pid=")?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no running line for {svc}: {}", agent.console.seen.join("\n")))
}

/// SIGTERM: the agent stops its services and exits 0.
fn stop(mut agent: Agent) {
    let st = agent.terminate(Duration::from_secs(30));
    assert!(st.success(), "the agent exits 0 on SIGTERM, got {st}");
}

/// The pid in "... service b: started (pid N)".
fn started_pid(line: &str) -> u32 {
    line.rsplit("(pid ")
        .next()
        .and_then(|r| r.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

#[test]
fn live_changes_restart_only_what_changed_and_a_cached_config_boots_without_journal() {
    if let Some(why) = cgroup_skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = TempDir::new("agent-life");
    let mut j = Journal::start(&dir);
    // The node id is this host's name, so the hostname item changes nothing here.
    let node = hostname();
    j.pact(&["apply", spec(&dir, "2001").to_str().unwrap()]);
    j.pact(&["node", "assign", &node, "--vcluster", "life"]);

    // 1. Boot from the journal; then a live change to b only.
    let mut agent = start_agent(&dir, &j, &node);
    agent.console.wait_next("PACT-READY", Duration::from_secs(30));
    let (a1, b1) = (running_pid(&agent, "a"), running_pid(&agent, "b"));
    assert!(cmdline(b1).contains("2001"));
    j.pact(&["apply", spec(&dir, "2002").to_str().unwrap()]);
    // b's old instance must exit before the new one starts: its start is reported later, by
    // the supervisor (not among the reconcile's own lines).
    let b2 = started_pid(&agent.console.wait_next("service b: started", Duration::from_secs(30)));
    assert_ne!(b2, b1, "b was restarted");
    assert!(cmdline(b2).contains("2002"), "b runs its new declaration: {}", cmdline(b2));
    assert!(cmdline(a1).contains("1001"), "a was left alone (same pid {a1} still running)");
    assert!(!agent.console.seen.iter().any(|l| l.contains("service a: stopping")), "a was not touched");
    stop(agent);
    assert!(cmdline(a1).is_empty() && cmdline(b2).is_empty(), "services stopped with the agent");

    // 2. A change while the node is down, then the journal goes away too.
    j.pact(&["apply", spec(&dir, "2003").to_str().unwrap()]);
    j.kill();
    let mut agent = start_agent(&dir, &j, &node);
    agent.console.wait_next("booting from the cached config", Duration::from_secs(60));
    agent.console.wait_next("PACT-READY", Duration::from_secs(30));
    let (a3, b3) = (running_pid(&agent, "a"), running_pid(&agent, "b"));
    assert!(cmdline(b3).contains("2002"), "the cache holds what the node last verified: {}", cmdline(b3));

    // 3. The journal returns: the agent reconciles to what was committed meanwhile.
    j.spawn();
    let b4 = started_pid(&agent.console.wait_next("service b: started", Duration::from_secs(90)));
    assert_ne!(b4, b3);
    assert!(cmdline(b4).contains("2003"), "{}", cmdline(b4));
    assert!(cmdline(a3).contains("1001"), "a kept running through the reconcile");
    stop(agent);
}
