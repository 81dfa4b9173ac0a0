//! The agent's API server (port 9445) end to end: the real `pact-agent` binary as an ordinary
//! service (not PID 1, the child subreaper) booted from a real `pact-journal --dev` into
//! vCluster `apitest` (two `/bin/sleep` services, recorded with the real `pact apply` and
//! `pact node assign`), with a node certificate made here (rcgen, signed by a CA of the test's
//! own) and `[agent.shell.auth]` holding an HMAC secret the test mints tokens from. Every call
//! goes over real TLS with `pact_proto::client`.
//!
//! Needs root and a cgroup2 mount (the pact backend's scopes; this host's hybrid layout has one
//! at /sys/fs/cgroup/unified, which the agent picks); prints "skipped: <reason>" otherwise. The
//! agent runs with `--node-id <this host's name>`, so its hostname item changes nothing.
//! The tests take turns (one lock): each agent runs the same services in the same scopes. The
//! services are named api-a and api-b, so another agent on this host (lifecycle.rs runs a and
//! b) never shares their scopes.

mod support;

use pact_proto::auth::HmacVerifier;
use pact_proto::client::{CallError, Client};
use pact_proto::shell::{exec_output, ExecOutput, PowerRequest, ServiceControlRequest, ServiceControlResponse};
use pact_proto::{ErrorCode, Method, RemoteError};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use support::{cgroup_skip_reason, cmdline, free_port, hostname, poll, Agent, Journal, TempDir, TestCa};

const VC: &str = "apitest";
const SECRET: &str = "api-test-secret-api-test-secret-0123";
const ISSUER: &str = "https://idp.test/realm";
const AUDIENCE: &str = "pact-cli";

static ONE_AGENT_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A dev journal holding the overlay (two services) with this host assigned to it.
fn journal_with_overlay(dir: &Path) -> Journal {
    let j = Journal::start(dir);
    let spec = dir.join("overlay.toml");
    std::fs::write(
        &spec,
        format!(
            "[vcluster.{VC}]\nsupervisor_backend = \"pact\"\n\n\
             [vcluster.{VC}.services.api-a]\nbinary = \"/bin/sleep\"\nargs = [\"3600\"]\nrestart = \"never\"\norder = 1\n\n\
             [vcluster.{VC}.services.api-b]\nbinary = \"/bin/sleep\"\nargs = [\"3601\"]\nrestart = \"never\"\norder = 2\n"
        ),
    )
    .unwrap();
    j.pact(&["apply", spec.to_str().unwrap()]);
    j.pact(&["node", "assign", &hostname(), "--vcluster", VC]);
    j
}

/// A test's turn (the tests take turns, see above), its temp dir and the journal with the
/// overlay; None, once it has said why, where the test cannot run here.
fn begin(name: &str) -> Option<(MutexGuard<'static, ()>, TempDir, Journal)> {
    let turn = ONE_AGENT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(why) = cgroup_skip_reason() {
        println!("skipped: {why}");
        return None;
    }
    let dir = TempDir::new(&format!("agent-api-{name}"));
    let journal = journal_with_overlay(&dir);
    Some((turn, dir, journal))
}

/// A node certificate for localhost and 127.0.0.1 (`node.crt`, `node.key`) signed by `ca`,
/// whose certificate goes to `ca.crt`.
fn make_certificates(dir: &Path, ca: &TestCa) {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"], &hostname());
    std::fs::write(dir.join("ca.crt"), &ca.pem).unwrap();
    std::fs::write(dir.join("node.crt"), cert).unwrap();
    std::fs::write(dir.join("node.key"), key).unwrap();
}

/// `[agent.shell.auth]`: issuer, audience, HMAC secret.
struct ShellAuth {
    issuer: String,
    audience: String,
    secret: String,
}

/// The test's own: tokens come from `token()`.
fn test_auth() -> Option<ShellAuth> {
    Some(ShellAuth { issuer: ISSUER.into(), audience: AUDIENCE.into(), secret: SECRET.into() })
}

/// The dev journal's: the CLI's admin token (`<data>/dev/admin.token`) verifies on the agent too.
fn journal_auth(j: &Journal) -> Option<ShellAuth> {
    let secret = std::fs::read_to_string(j.dev("hmac.secret")).unwrap().trim().to_string();
    Some(ShellAuth { issuer: "pact-dev".into(), audience: "pact".into(), secret })
}

/// What the agent.toml holds besides the journal.
struct Setup {
    certificate: bool,
    auth: Option<ShellAuth>,
}

/// The agent (`--node-id` this host's name) with its API on a free port, which it returns.
fn start_agent(dir: &Path, j: &Journal, setup: Setup) -> (Agent, u16) {
    let api_port = free_port();
    let mut toml = format!(
        "[agent]\ncache_dir = \"{cache}\"\n\n\
         [agent.journal]\nendpoints = [\"{endpoint}\"]\ntls_ca = \"{ca}\"\ntoken_path = \"{token}\"\n",
        cache = dir.join("cache").display(),
        endpoint = j.endpoint(),
        ca = j.dev("ca.crt").display(),
        token = j.dev("admin.token").display(),
    );
    if setup.certificate {
        toml += &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            dir.join("node.crt").display(),
            dir.join("node.key").display()
        );
    }
    toml += &format!(
        "\n[agent.shell]\nlisten = \"127.0.0.1:{api_port}\"\n\n[agent.capability]\nmanifest_path = \"{}\"\n",
        dir.join("capability.json").display()
    );
    if let Some(a) = setup.auth {
        toml += &format!(
            "\n[agent.shell.auth]\nissuer = \"{}\"\naudience = \"{}\"\nhmac_secret = \"{}\"\n",
            a.issuer, a.audience, a.secret
        );
    }
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, toml).unwrap();
    (Agent::start(&cfg, &["--node-id", &hostname()]), api_port)
}

/// A client of the agent's API on `port`, trusting `<dir>/ca.crt`.
fn client(dir: &Path, port: u16, token: &str) -> Client {
    let tls = pact_proto::tls::client_config(&dir.join("ca.crt")).unwrap();
    Client::connect(&format!("127.0.0.1:{port}"), tls, token, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to the agent's API: {e}"))
}

fn token(subject: &str, role: &str) -> String {
    HmacVerifier::new(SECRET.as_bytes(), ISSUER, AUDIENCE).mint(subject, role, 600).unwrap()
}

fn control(c: &mut Client, name: &str, action: &str) -> Result<ServiceControlResponse, CallError> {
    c.call(Method::ServiceControl, &ServiceControlRequest { name: name.into(), action: action.into() })
}

fn remote<T: std::fmt::Debug>(r: Result<T, CallError>) -> RemoteError {
    match r {
        Err(CallError::Remote(e)) => e,
        other => panic!("expected an error from the agent, got {other:?}"),
    }
}

/// (state, pid) of one service in a response that must hold exactly that one.
fn one(r: &ServiceControlResponse, name: &str) -> (String, u32) {
    assert_eq!(r.services.len(), 1, "{r:?}");
    assert_eq!(r.services[0].name, name, "{r:?}");
    (r.services[0].state.clone(), r.services[0].pid)
}

#[test]
fn services_are_controlled_and_the_node_powered_off_through_the_api() {
    let Some((_turn, dir, journal)) = begin("control") else { return };
    make_certificates(&dir, &TestCa::new("pact agent API test CA"));
    let (mut agent, api_port) = start_agent(&dir, &journal, Setup { certificate: true, auth: test_auth() });
    let listening = agent.console.wait_for("PACT: api: listening on", Duration::from_secs(30));
    assert!(listening.contains(&format!("127.0.0.1:{}", api_port)) && listening.contains("HS256"), "{listening}");
    agent.console.wait_for("PACT-READY", Duration::from_secs(60));

    // Status of every service, as the platform admin.
    let mut admin = client(&dir, api_port, &token("root-admin", "pact-platform-admin"));
    let all = control(&mut admin, "", "status").unwrap();
    let names: Vec<&str> = all.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api-a", "api-b"], "{all:?}");
    for s in &all.services {
        assert_eq!(s.state, "running", "{s:?}");
        assert!(cmdline(s.pid).starts_with("/bin/sleep 360"), "pid {} of {} is {:?}", s.pid, s.name, cmdline(s.pid));
    }
    let (a1, b1) = (all.services[0].pid, all.services[1].pid);

    // Ops of the node's vCluster: stop b; answered once b has stopped, its process gone.
    let mut ops = client(&dir, api_port, &token("olga", &format!("pact-ops-{VC}")));
    let r = control(&mut ops, "api-b", "stop").unwrap();
    assert_eq!(one(&r, "api-b"), ("stopped".to_string(), 0));
    assert!(cmdline(b1).is_empty(), "b's process {b1} still exists: {:?}", cmdline(b1));
    assert_eq!(one(&control(&mut ops, "api-b", "status").unwrap(), "api-b"), ("stopped".to_string(), 0));
    assert!(cmdline(a1).starts_with("/bin/sleep 3600"), "a was left alone");
    // start b: running again, a new process.
    let r = control(&mut ops, "api-b", "start").unwrap();
    let (state, b2) = one(&r, "api-b");
    assert_eq!(state, "running");
    assert!(b2 != 0 && b2 != b1, "b's new pid {b2} (was {b1})");
    assert!(cmdline(b2).starts_with("/bin/sleep 3601"), "{:?}", cmdline(b2));
    // restart a: answered once the new instance runs.
    let r = control(&mut ops, "api-a", "restart").unwrap();
    let (state, a2) = one(&r, "api-a");
    assert_eq!(state, "running");
    assert!(a2 != 0 && a2 != a1, "a's new pid {a2} (was {a1})");
    assert!(cmdline(a1).is_empty(), "a's old process {a1} still exists");
    assert!(cmdline(a2).starts_with("/bin/sleep 3600"), "{:?}", cmdline(a2));
    // An unknown service: an error naming it.
    for action in ["start", "stop", "restart", "status"] {
        let e = remote(control(&mut ops, "nosuch", action));
        assert_eq!(e.code, ErrorCode::NotFound, "{action}: {e}");
        assert!(e.message.contains("nosuch"), "{action}: {e}");
    }

    // A token with the wrong signature: Unauthenticated, nothing done.
    let forged = HmacVerifier::new(b"not-the-agents-secret-not-the-agents", ISSUER, AUDIENCE).mint(
        "mallory",
        "pact-platform-admin",
        600,
    );
    let mut bad = client(&dir, api_port, &forged.unwrap());
    assert_eq!(remote(control(&mut bad, "api-a", "stop")).code, ErrorCode::Unauthenticated);
    // A viewer reads status but may not stop anything; ops of another vCluster may do nothing.
    let mut viewer = client(&dir, api_port, &token("vera", &format!("pact-viewer-{VC}")));
    assert_eq!(control(&mut viewer, "", "status").unwrap().services.len(), 2);
    assert_eq!(remote(control(&mut viewer, "api-a", "stop")).code, ErrorCode::PermissionDenied);
    let mut stranger = client(&dir, api_port, &token("sam", "pact-ops-elsewhere"));
    assert_eq!(remote(control(&mut stranger, "", "status")).code, ErrorCode::PermissionDenied);
    let no_power: Result<ExecOutput, _> =
        viewer.call(Method::Power, &PowerRequest { action: "poweroff".into(), reason: "viewer".into() });
    assert_eq!(remote(no_power).code, ErrorCode::PermissionDenied);
    let all = control(&mut admin, "", "status").unwrap();
    assert!(all.services.iter().all(|s| s.state == "running"), "refused requests changed nothing: {all:?}");
    assert_eq!((all.services[0].pid, all.services[1].pid), (a2, b2));

    // Every request is on the console with the caller and the outcome.
    for want in [
        "PACT: api: root-admin pact-platform-admin ServiceControl status * -> ok: 2 services".to_string(),
        format!("PACT: api: olga pact-ops-{VC} ServiceControl stop api-b -> ok: api-b stopped pid=0"),
        format!("PACT: api: olga pact-ops-{VC} ServiceControl restart api-a -> ok: api-a running pid={a2}"),
        format!("PACT: api: olga pact-ops-{VC} ServiceControl start nosuch -> NotFound"),
        "PACT: api: - - ServiceControl stop api-a -> Unauthenticated".to_string(),
        format!("PACT: api: vera pact-viewer-{VC} ServiceControl stop api-a -> PermissionDenied"),
        "PACT: api: sam pact-ops-elsewhere ServiceControl status * -> PermissionDenied".to_string(),
    ] {
        agent.console.wait_for(&want, Duration::from_secs(10));
    }
    // And on the journal's record, as ADMIN_OPERATION entries on the node, written with the
    // agent's identity: every action and every refusal, but not the allowed status reads.
    let wanted = [
        format!("api: olga pact-ops-{VC} ServiceControl stop api-b -> ok"),
        format!("api: olga pact-ops-{VC} ServiceControl restart api-a -> ok"),
        "api: - - ServiceControl stop api-a -> Unauthenticated".to_string(),
        format!("api: vera pact-viewer-{VC} ServiceControl stop api-a -> PermissionDenied"),
        "api: sam pact-ops-elsewhere ServiceControl status * -> PermissionDenied".to_string(),
    ];
    let node_scope = format!("node:{}", hostname());
    let log = poll(Duration::from_secs(20), Duration::from_millis(200), || {
        let text = journal.pact(&["log", "--type", "admin_operation", "--scope", &node_scope, "-n", "100"]);
        wanted.iter().all(|w| text.contains(w.as_str())).then_some(text)
    })
    .unwrap_or_else(|| panic!("the API's decisions are not all in the journal"));
    assert!(!log.contains("ServiceControl status * -> ok"), "an allowed read was recorded:\n{log}");

    // Power-off as ops: answered exit_code 0 once scheduled; as a service, the agent then
    // stops its services and exits 0.
    let out: ExecOutput =
        ops.call(Method::Power, &PowerRequest { action: "poweroff".into(), reason: "api test".into() }).unwrap();
    assert_eq!(out.output, Some(exec_output::Output::ExitCode(0)));
    let st = agent.exit_within(Duration::from_secs(60));
    assert!(st.success(), "the agent exits 0 after a power request as a service, got {st}");
    assert!(cmdline(a2).is_empty() && cmdline(b2).is_empty(), "services stopped with the agent");
    // The agent has exited: what it printed is still on its way through the pipe.
    agent.console.wait_for(
        &format!("PACT: api: olga pact-ops-{VC} Power poweroff reason=\"api test\" -> ok: scheduled"),
        Duration::from_secs(10),
    );
    agent.console.wait_for("PACT: shutting down (PowerOff): stopping services", Duration::from_secs(10));
    agent.console.wait_for("not PID 1: services stopped, exiting", Duration::from_secs(10));
}

#[test]
fn without_shell_auth_every_request_is_refused_and_without_a_certificate_there_is_no_server() {
    let Some((_turn, dir, journal)) = begin("closed") else { return };
    make_certificates(&dir, &TestCa::new("pact agent API test CA"));

    // No [agent.shell.auth]: a token that would verify under any secret is refused, for
    // every method, and nothing happens.
    let (mut agent, api_port) = start_agent(&dir, &journal, Setup { certificate: true, auth: None });
    agent.console.wait_for("PACT: api: listening on", Duration::from_secs(30));
    agent.console.wait_for("PACT-READY", Duration::from_secs(60));
    let mut c = client(&dir, api_port, &token("root-admin", "pact-platform-admin"));
    for (name, action) in [("", "status"), ("api-a", "stop"), ("api-b", "restart")] {
        let e = remote(control(&mut c, name, action));
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::Unauthenticated, "no [agent.shell.auth]: the agent accepts no token"),
            "{action}"
        );
    }
    let r: Result<ExecOutput, _> =
        c.call(Method::Power, &PowerRequest { action: "poweroff".into(), reason: String::new() });
    assert_eq!(remote(r).code, ErrorCode::Unauthenticated);
    let services = agent.console.lines_with("PACT-SERVICE");
    assert!(services.iter().any(|l| l.starts_with("PACT-SERVICE api-a running")), "{services:?}");
    assert!(agent.running(), "the refused power-off stopped the agent");
    agent.console.wait_count("-> Unauthenticated: no [agent.shell.auth]", 4, Duration::from_secs(10));
    assert!(agent.console.lines_with("stopping").is_empty(), "a refused request stopped something");
    assert!(agent.terminate(Duration::from_secs(30)).success());

    // No node certificate: the server does not start, and the console says why.
    let (mut agent, api_port) = start_agent(&dir, &journal, Setup { certificate: false, auth: test_auth() });
    let why = agent.console.wait_for("PACT: api: not started", Duration::from_secs(30));
    assert!(why.contains("tls_cert and tls_key are not configured") && why.contains("enrolls"), "{why}");
    agent.console.wait_for("PACT-READY", Duration::from_secs(60));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err(),
        "something listens on the API port of an agent without a certificate"
    );
    assert!(agent.terminate(Duration::from_secs(30)).success());
}

/// The other half: the real `pact service` and `pact poweroff` commands against this agent,
/// with the CA and the token the CLI uses for the journal (the node's certificate is signed by
/// the journal's CA, and the agent verifies the journal's development tokens).
#[test]
fn the_pact_cli_controls_services_and_powers_the_node_off() {
    let Some((_turn, dir, journal)) = begin("cli") else { return };
    let tls = journal.data.join("tls");
    make_certificates(&dir, &TestCa::from_files(&tls.join("ca.crt"), &tls.join("ca.key")));
    let auth = journal_auth(&journal);
    let (mut agent, api_port) = start_agent(&dir, &journal, Setup { certificate: true, auth });
    agent.console.wait_for("PACT: api: listening on", Duration::from_secs(30));
    agent.console.wait_for("PACT-READY", Duration::from_secs(60));
    let node = hostname();
    let at = format!("127.0.0.1:{}", api_port);
    let status = journal.pact(&["service", "status", &node, "--agent-endpoint", &at]);
    for svc in ["api-a", "api-b"] {
        assert!(
            status.lines().any(|l| l.split_whitespace().take(2).eq([svc, "running"])),
            "pact service status:\n{status}"
        );
    }
    let stopped = journal.pact(&["service", "stop", &node, "api-b", "--agent-endpoint", &at]);
    assert!(stopped.lines().any(|l| l.split_whitespace().take(2).eq(["api-b", "stopped"])), "{stopped}");
    let json = journal.pact(&["--output", "json", "service", "status", &node, "api-b", "--agent-endpoint", &at]);
    assert!(json.contains("\"name\":\"api-b\"") && json.contains("\"state\":\"stopped\""), "{json}");
    agent
        .console
        .wait_for("PACT: api: dev-admin pact-platform-admin ServiceControl stop api-b -> ok", Duration::from_secs(10));
    let off = journal.pact(&["poweroff", &node, "--reason", "cli test", "--agent-endpoint", &at]);
    assert!(off.contains("the agent scheduled it"), "{off}");
    let st = agent.exit_within(Duration::from_secs(60));
    assert!(st.success(), "the agent exits 0 after pact poweroff, got {st}");
    agent.console.wait_for("Power poweroff reason=\"cli test\" -> ok: scheduled", Duration::from_secs(10));
}
