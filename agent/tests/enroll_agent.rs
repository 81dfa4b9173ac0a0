//! A fresh agent enrolls, with the real binaries: an admin registers this machine's hardware
//! with `pact enroll NODE --hardware-id ...`; an agent with no token and no certificate reads
//! its hardware identity, makes a key, enrolls, boots from the journal over mutual TLS and
//! serves its API (9445) with the enrolled certificate, which the CLI verifies against the
//! cluster CA. With 30-second certificates it renews at 2/3 of their life, over mutual TLS,
//! and its API presents the renewed one. A journal restart retires the enrollment CA: the agent's subscription is
//! refused, it enrolls again by itself and carries on. Decommissioning the node ends its
//! subscription within a keepalive, and the node cannot enroll again: it is inert.

mod support;

use std::time::Duration;
use support::{free_port, run_ok, Agent, Journal, TempDir};

const NODE: &str = "enr-node";

#[test]
fn a_fresh_agent_enrolls_boots_over_mutual_tls_and_re_enrolls_after_a_ca_change() {
    let hw = pact_agent::identity::read_hardware_identity(std::path::Path::new("/"));
    let mut ids: Vec<String> = Vec::new();
    if !hw.mac_address.is_empty() {
        ids.push(format!("mac:{}", hw.mac_address));
    }
    if let Some(u) = &hw.smbios_uuid {
        ids.push(format!("uuid:{u}"));
    }
    if ids.is_empty() {
        eprintln!("SKIP: this machine shows no MAC address and no SMBIOS UUID to enroll with");
        return;
    }
    let tmp = TempDir::new("agent-enroll");
    // Certificates of 30 s, so that the agent renews (at 2/3) while the test watches.
    let lifetime = "[journal.enrollment]\ncert_lifetime_seconds = 30\n";
    let mut journal = Journal::start_configured(&tmp, &tmp.join("j"), Some(lifetime));
    let mut enroll = vec!["enroll", NODE];
    for id in &ids {
        enroll.extend(["--hardware-id", id.as_str()]);
    }
    let out = journal.pact(&enroll);
    assert!(out.contains(NODE), "pact enroll: {out}");

    // An agent.toml with no token and certificate paths that do not exist yet.
    let node = tmp.join("node");
    let cgroup = tmp.join("not-a-cgroup");
    std::fs::create_dir_all(&cgroup).unwrap();
    let api = format!("127.0.0.1:{}", free_port());
    let secret = std::fs::read_to_string(journal.dev("hmac.secret")).unwrap();
    let cfg = tmp.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[agent]
node_id = "{NODE}"
vcluster = "dev"
cache_dir = "{n}/cache"
run_dir = "{n}/run"
[agent.supervisor]
backend = "pact"
cgroup_root = "{cg}"
[agent.journal]
endpoints = ["{ep}"]
tls_enabled = true
tls_ca = "{ca}"
tls_cert = "{n}/agent.crt"
tls_key = "{n}/agent.key"
token_path = "{n}/no.token"
[agent.shell]
enabled = true
listen = "{api}"
[agent.shell.auth]
issuer = "pact-dev"
audience = "pact"
hmac_secret = "{secret}"
"#,
            n = node.display(),
            cg = cgroup.display(),
            ep = journal.endpoint(),
            ca = journal.dev("ca.crt").display(),
            secret = secret.trim(),
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&cfg, &[]);
    println!("{}", out.trim());
    let enrolled = agent.console.wait_next("PACT: enrolled as", Duration::from_secs(30));
    assert!(enrolled.contains(NODE), "{enrolled}");
    println!("agent: {enrolled}");
    agent.console.wait_next(&format!("PACT-READY node={NODE}"), Duration::from_secs(30));
    let mode =
        std::fs::metadata(node.join("agent.key")).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.unwrap() & 0o777, 0o600, "the node's key is private");

    let inspect = journal.pact(&["node", "inspect", NODE]);
    assert!(inspect.to_lowercase().contains("active"), "pact node inspect:\n{inspect}");
    let list = journal.pact(&["node", "list"]);
    assert!(list.contains(NODE), "pact node list:\n{list}");
    println!("$ pact node list\n{list}$ pact node inspect {NODE}\n{inspect}");

    // The API serves the enrolled certificate; the CLI verifies it against the cluster CA.
    agent.console.wait_for("PACT: api: listening on", Duration::from_secs(10));
    let status = run_ok(
        journal.cli().args(["service", "status", NODE, "--agent-endpoint", api.as_str()]),
        "pact service status",
    )
    .0;
    assert!(!status.is_empty());

    // Renewal at 2/3 of the lifetime (20 s), over mutual TLS, with a new key.
    let renewed = agent.console.wait_next("PACT: certificate renewed", Duration::from_secs(60));
    println!("agent: {renewed}");
    let inspect = journal.pact(&["node", "inspect", NODE]);
    let serials = inspect.lines().find(|l| l.starts_with("cert serials:")).unwrap_or_default().to_string();
    assert_eq!(serials.split(',').count(), 2, "the renewed-from certificate stays valid until the next: {serials}");
    run_ok(
        journal.cli().args(["service", "status", NODE, "--agent-endpoint", api.as_str()]),
        "pact service status, after renewal",
    );

    // A journal restart: a new enrollment CA; the agent is refused and enrolls again.
    journal.kill();
    journal.spawn();
    let line = agent.console.wait_next("client certificate refused", Duration::from_secs(60));
    assert!(line.contains("no journal uses any more"), "{line}");
    let again = agent.console.wait_next("PACT: enrolled as", Duration::from_secs(30));
    assert!(again.contains(NODE), "{again}");
    println!("after the journal's restart:\nagent: {line}\nagent: {again}");

    // Decommissioned: the subscription ends within a keepalive (10 s) and enrollment is refused.
    let out = journal.pact(&["node", "decommission", NODE]);
    assert!(out.contains("decommissioned"), "{out}");
    let refused = agent.console.wait_next("decommissioned", Duration::from_secs(30));
    assert!(refused.contains("client certificate refused"), "{refused}");
    let inert = agent.console.wait_next("no node is registered", Duration::from_secs(30));
    println!("after pact node decommission:\nagent: {refused}\nagent: {inert}");
    let inspect = journal.pact(&["node", "inspect", NODE]);
    assert!(inspect.to_lowercase().contains("revoked"), "pact node inspect:\n{inspect}");
}
