//! A power-off that two people approved reaches the node: on a node of a vCluster whose policy
//! asks for two-person approval, `pact poweroff NODE` by one operator is held (the node is not
//! asked); a second operator's `pact approve accept` appends the approved entry, the journal
//! delivers it to the node's subscription as a power order, and the agent (here an ordinary
//! service, which exits instead of powering the machine off) carries it out, naming both
//! people. A restarted agent that sees the same order again, older than itself, ignores it.

mod support;

use pact_proto::auth::{HmacVerifier, DEV_ISSUER};
use std::time::Duration;
use support::{hostname, pact_cli, run_ok, Agent, Journal, TempDir};

const VC: &str = "regulated";

fn token(j: &Journal, subject: &str, role: &str) -> String {
    let secret = std::fs::read(j.dev("hmac.secret")).unwrap();
    HmacVerifier::new(&secret, DEV_ISSUER, "pact").mint(subject, role, 600).unwrap()
}

fn pact_as(dir: &std::path::Path, j: &Journal, token: &str, args: &[&str]) -> String {
    let mut cmd = pact_cli(dir);
    cmd.arg("--endpoint").arg(j.endpoint()).arg("--ca-cert").arg(j.dev("ca.crt")).arg("--token").arg(token).args(args);
    run_ok(&mut cmd, &format!("pact {}", args.join(" "))).0
}

#[test]
fn an_approved_poweroff_is_carried_out_by_the_node() {
    let dir = TempDir::new("agent-approved-power");
    let j = Journal::start(&dir);
    let node = hostname();
    let spec = dir.join("regulated.toml");
    std::fs::write(&spec, format!("[vcluster.{VC}]\n\n[vcluster.{VC}.policy]\ntwo_person_approval = true\n")).unwrap();
    j.pact(&["apply", spec.to_str().unwrap()]);
    j.pact(&["node", "assign", &node, "--vcluster", VC]);

    let cgroup = dir.join("not-a-cgroup");
    std::fs::create_dir_all(&cgroup).unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\ncache_dir = \"{d}/cache\"\nrun_dir = \"{d}/run\"\n\n[agent.supervisor]\ncgroup_root = \"{cg}\"\n\n\
             [agent.journal]\nendpoints = [\"{ep}\"]\ntls_ca = \"{ca}\"\ntoken_path = \"{tok}\"\n\n\
             [agent.shell]\nenabled = false\n",
            d = dir.display(),
            cg = cgroup.display(),
            ep = j.endpoint(),
            ca = j.dev("ca.crt").display(),
            tok = j.dev("admin.token").display(),
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&cfg, &["--node-id", &node]);
    agent.console.wait_for(&format!("PACT-READY node={node}"), Duration::from_secs(60));

    let (alice, bob) = (token(&j, "alice", &format!("pact-ops-{VC}")), token(&j, "bob", &format!("pact-ops-{VC}")));
    let held = pact_as(&dir, &j, &alice, &["poweroff", &node, "--reason", "firmware update"]);
    assert!(held.starts_with("pending approval ") && held.contains("the node was not asked"), "{held}");
    let id = held.trim_start_matches("pending approval ").split(':').next().unwrap().to_string();
    assert!(agent.running(), "the node acted on a request that is only pending");

    let out = pact_as(&dir, &j, &bob, &["approve", "accept", &id]);
    assert!(out.starts_with(&format!("approval {id} approved")), "{out}");
    let line = agent.console.wait_for("PACT: power order poweroff", Duration::from_secs(30));
    assert!(
        line.contains("approved by bob (requested by alice)")
            && line.contains("firmware update")
            && line.contains("carrying it out"),
        "{line}"
    );
    let st = agent.exit_within(Duration::from_secs(60));
    assert!(st.success(), "a service agent exits 0 for a power-off, got {st}");
    agent.console.wait_for("PACT: shutting down (PowerOff)", Duration::from_secs(10));

    // Started again, the agent catches up through the same order: older than itself, ignored.
    std::thread::sleep(Duration::from_millis(1100));
    let mut again = Agent::start(&cfg, &["--node-id", &node]);
    again.console.wait_for(&format!("PACT-READY node={node}"), Duration::from_secs(60));
    let stale = again.console.wait_for("PACT: power order poweroff", Duration::from_secs(30));
    assert!(stale.contains("not carried out"), "{stale}");
    assert!(again.running(), "a replayed order powered the node off again");
    assert!(again.terminate(Duration::from_secs(30)).success());
}
