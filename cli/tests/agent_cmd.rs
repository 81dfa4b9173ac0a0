//! End to end: `pact service`, `pact reboot` and `pact poweroff` with the real `pact` binary, a
//! real `pact-journal --dev`, and a stand-in for the node's agent.
//!
//! The agent's own server (agent/src/api.rs) is being written as this is; until it exists,
//! `FakeAgent` is the peer on the agent's port: a TLS listener with the dev journal's server
//! certificate (signed by the CA the CLI is given), speaking the pact handshake and frames
//! through proto's own codec. It records every request (and, for Power, what the journal held
//! for the node at that moment) and answers ServiceControl and Power with canned but well-formed
//! responses, or with the Error frame a test asks for. It accepts any token: what is under test
//! is the CLI.

#[path = "../../journal/tests/common/mod.rs"]
mod common;
mod support;

use common::Journal;
use pact_proto::client::Client;
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::frame::{self, read_frame, write_frame, Frame, FrameKind, HANDSHAKE_LEN, MAX_FRAME_BODY};
use pact_proto::journal::ListEntriesRequest;
use pact_proto::shell::{
    exec_output::Output, ExecOutput, PowerRequest, ServiceControlRequest, ServiceControlResponse, ServiceStatusEntry,
};
use pact_proto::wire::Request;
use pact_proto::{ErrorCode, Method, RemoteError};
use prost::Message;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use support::{parse_json, Cli, Json, Run, Tok};

// ---------------------------------------------------------------------------------------------
// The stand-in agent.

/// How the fake agent answers every request from now on.
#[derive(Clone, Debug)]
enum Answer {
    /// ServiceControl from its service table; Power with exit code 0 (scheduled).
    Normal,
    /// An Error frame with this code.
    Error(ErrorCode),
    /// Power answered with this output (ServiceControl as in Normal).
    Power(Output),
}

/// One request as the fake agent received it.
#[derive(Clone, Debug)]
struct Received {
    method: u16,
    token: String,
    body: Vec<u8>,
    /// Power only: the journal's entries on `node:<its node>` when the request arrived.
    journal_at_arrival: Vec<ConfigEntry>,
}

/// Where the fake agent looks in the journal when a Power request arrives.
struct JournalView {
    endpoint: String,
    ca: PathBuf,
    token: String,
}

impl JournalView {
    fn node_entries(&self, node: &str) -> Vec<ConfigEntry> {
        let tls = pact_proto::tls::client_config(&self.ca).unwrap();
        let mut c = Client::connect(&self.endpoint, tls, &self.token, Duration::from_secs(10)).expect("journal");
        let req = ListEntriesRequest {
            scope: Some(Scope { target: Some(Target::NodeId(node.into())) }),
            limit: 1000,
            oldest_first: true,
            ..Default::default()
        };
        c.call_stream(Method::ListEntries, &req).expect("list the node's entries")
    }
}

struct Shared {
    node: String,
    tls: Arc<rustls::ServerConfig>,
    answer: Mutex<Answer>,
    services: Mutex<Vec<ServiceStatusEntry>>,
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    journal: JournalView,
    stop: AtomicBool,
}

struct FakeAgent {
    addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

fn svc(name: &str, state: &str, pid: u32, uptime_seconds: u64, restart_count: u32) -> ServiceStatusEntry {
    ServiceStatusEntry { name: name.into(), state: state.into(), pid, uptime_seconds, restart_count }
}

impl FakeAgent {
    /// The agent of `node`, on a free loopback port, with `j`'s server certificate.
    fn start(j: &Journal, node: &str) -> FakeAgent {
        let tls_dir = j.data_dir().join("tls");
        let tls = pact_proto::tls::server_config(&tls_dir.join("server.crt"), &tls_dir.join("server.key"))
            .expect("the dev journal's server certificate");
        let port = common::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the fake agent");
        let shared = Arc::new(Shared {
            node: node.into(),
            tls,
            answer: Mutex::new(Answer::Normal),
            services: Mutex::new(vec![
                svc("chronyd", "running", 4242, 3723, 0),
                svc("node-exporter", "failed", 0, 0, 5),
                svc("sshd", "running", 77, 90_061, 2),
            ]),
            received: Mutex::new(vec![]),
            connections: AtomicUsize::new(0),
            journal: JournalView { endpoint: j.endpoint(), ca: j.ca(), token: j.token() },
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                sh.connections.fetch_add(1, Ordering::SeqCst);
                let sh = sh.clone();
                std::thread::spawn(move || serve(conn, &sh));
            }
        });
        FakeAgent { addr: format!("127.0.0.1:{port}"), shared, accept: Some(accept) }
    }

    fn answer(&self, a: Answer) {
        *self.shared.answer.lock().unwrap() = a;
    }

    fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One connection: TLS, the server's half of the handshake, then request → answer until the
/// client goes away.
fn serve(tcp: TcpStream, sh: &Shared) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
    let conn = rustls::ServerConnection::new(sh.tls.clone()).expect("TLS server connection");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let mut hello = [0u8; HANDSHAKE_LEN];
    if s.read_exact(&mut hello).is_err() {
        return;
    }
    let Ok((_, answer)) = frame::server_answer(&hello) else { return };
    if s.write_all(&answer).and_then(|_| s.flush()).is_err() {
        return;
    }
    while let Ok(f) = read_frame(&mut s, MAX_FRAME_BODY) {
        assert_eq!(f.kind, FrameKind::Request, "the CLI sends requests only");
        let req = Request::decode(&f.body[..]).expect("a pact.wire.Request");
        let mut rec =
            Received { method: f.method, token: req.bearer_token, body: req.body.clone(), journal_at_arrival: vec![] };
        if f.method == Method::Power as u16 {
            rec.journal_at_arrival = sh.journal.node_entries(&sh.node);
        }
        sh.received.lock().unwrap().push(rec);
        let answer = sh.answer.lock().unwrap().clone();
        let reply = match (answer, Method::from_u16(f.method)) {
            (Answer::Error(code), _) => Err(RemoteError::new(code, format!("the fake agent answers {code:?}"))),
            (_, Some(Method::ServiceControl)) => {
                let r = ServiceControlRequest::decode(&req.body[..]).expect("a ServiceControlRequest");
                service_control(&mut sh.services.lock().unwrap(), &r).map(|resp| resp.encode_to_vec())
            }
            (a, Some(Method::Power)) => {
                PowerRequest::decode(&req.body[..]).expect("a PowerRequest");
                let output = match a {
                    Answer::Power(o) => o,
                    _ => Output::ExitCode(0),
                };
                Ok(ExecOutput { output: Some(output) }.encode_to_vec())
            }
            (_, other) => Err(RemoteError::new(ErrorCode::Unimplemented, format!("not served here: {other:?}"))),
        };
        let out = match reply {
            Ok(body) => Frame::new(FrameKind::Response, f.method, f.request_id, body),
            Err(e) => Frame::new(FrameKind::Error, f.method, f.request_id, e.to_body().encode_to_vec()),
        };
        if write_frame(&mut s, &out).is_err() || s.flush().is_err() {
            return;
        }
    }
}

/// The canned supervisor: a status answer lists what was asked; start, stop and restart change
/// the service's entry and answer with it.
fn service_control(
    table: &mut [ServiceStatusEntry],
    r: &ServiceControlRequest,
) -> Result<ServiceControlResponse, RemoteError> {
    if r.action == "status" && r.name.is_empty() {
        return Ok(ServiceControlResponse { services: table.to_vec() });
    }
    let e = table
        .iter_mut()
        .find(|e| e.name == r.name)
        .ok_or_else(|| RemoteError::new(ErrorCode::NotFound, format!("no service named {:?} on this node", r.name)))?;
    match r.action.as_str() {
        "status" => {}
        "stop" => *e = svc(&e.name, "stopped", 0, 0, e.restart_count),
        "start" => *e = svc(&e.name, "running", 5001, 0, e.restart_count),
        "restart" => *e = svc(&e.name, "running", e.pid + 1000, 0, e.restart_count + 1),
        other => return Err(RemoteError::new(ErrorCode::InvalidArgument, format!("unknown action {other:?}"))),
    }
    Ok(ServiceControlResponse { services: vec![e.clone()] })
}

// ---------------------------------------------------------------------------------------------

fn service_request(r: &Received) -> ServiceControlRequest {
    assert_eq!(r.method, Method::ServiceControl as u16, "{r:?}");
    ServiceControlRequest::decode(&r.body[..]).unwrap()
}

fn power_request(r: &Received) -> PowerRequest {
    assert_eq!(r.method, Method::Power as u16, "{r:?}");
    PowerRequest::decode(&r.body[..]).unwrap()
}

fn failed(r: &Run, code: i32) -> &str {
    assert_eq!(r.code, code, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(r.stderr.starts_with("pact: "), "{r:?}");
    &r.stderr
}

#[test]
fn service_status_and_control_through_the_agent() {
    let j = Journal::start("agent-svc");
    let agent = FakeAgent::start(&j, "n1");
    let cli = Cli::new(&j, "svc");
    let token = j.token();
    let at = agent.addr.as_str();

    // Every service: the table, and the request as the agent saw it.
    let out = cli.ok(Tok::Flag(&token), &["service", "status", "n1", "--agent-endpoint", at]);
    assert_eq!(
        out,
        "\
NAME           STATE    PID   UPTIME  RESTARTS
chronyd        running  4242  1h02m   0
node-exporter  failed   -     -       5
sshd           running  77    1d01h   2
"
    );
    let rec = agent.received();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].token, token, "the CLI's usual token");
    assert_eq!(service_request(&rec[0]), ServiceControlRequest { name: String::new(), action: "status".into() });

    // The same as JSON (PACT_TOKEN this time), every field of every service.
    let all =
        parse_json(&cli.ok(Tok::Env(&token), &["--output", "json", "service", "status", "n1", "--agent-endpoint", at]));
    let all = all.arr();
    assert_eq!(all.len(), 3, "{all:?}");
    let row = |j: &Json| {
        (
            j.get("node").str().to_string(),
            j.get("name").str().to_string(),
            j.get("state").str().to_string(),
            j.get("pid").u64(),
            j.get("uptime_seconds").u64(),
            j.get("restart_count").u64(),
        )
    };
    assert_eq!(row(&all[0]), ("n1".into(), "chronyd".into(), "running".into(), 4242, 3723, 0));
    assert_eq!(row(&all[1]), ("n1".into(), "node-exporter".into(), "failed".into(), 0, 0, 5));
    assert_eq!(row(&all[2]), ("n1".into(), "sshd".into(), "running".into(), 77, 90_061, 2));

    // One service.
    let one = parse_json(
        &cli.ok(Tok::Flag(&token), &["service", "status", "n1", "sshd", "--agent-endpoint", at, "--output", "json"]),
    );
    assert_eq!(one.arr().len(), 1);
    assert_eq!(row(&one.arr()[0]), ("n1".into(), "sshd".into(), "running".into(), 77, 90_061, 2));
    assert_eq!(
        service_request(&agent.received()[2]),
        ServiceControlRequest { name: "sshd".into(), action: "status".into() }
    );

    // stop, start, restart: the request names the action and the service; the output is the
    // state the agent reports afterwards.
    let out = cli.ok(Tok::Flag(&token), &["service", "stop", "n1", "chronyd", "--agent-endpoint", at]);
    assert_eq!(out, "NAME     STATE    PID  UPTIME  RESTARTS\nchronyd  stopped  -    -       0\n");
    let out = cli.ok(Tok::Flag(&token), &["service", "start", "n1", "chronyd", "--agent-endpoint", at]);
    assert_eq!(out, "NAME     STATE    PID   UPTIME  RESTARTS\nchronyd  running  5001  0s      0\n");
    let out = cli.ok(Tok::Flag(&token), &["--agent-endpoint", at, "service", "restart", "n1", "sshd"]);
    assert_eq!(out, "NAME  STATE    PID   UPTIME  RESTARTS\nsshd  running  1077  0s      3\n");
    let rec = agent.received();
    assert_eq!(rec.len(), 6);
    let sent: Vec<ServiceControlRequest> = rec[3..].iter().map(service_request).collect();
    assert_eq!(
        sent,
        [
            ServiceControlRequest { name: "chronyd".into(), action: "stop".into() },
            ServiceControlRequest { name: "chronyd".into(), action: "start".into() },
            ServiceControlRequest { name: "sshd".into(), action: "restart".into() },
        ]
    );
    assert!(rec.iter().all(|r| r.token == token));
    assert_eq!(agent.connections(), 6, "one connection per command");

    // Usage errors are refused before connecting: the agent sees nothing.
    for args in [
        &["service", "reload", "n1", "sshd"][..],
        &["service", "start", "n1"],
        &["service", "status"],
        &["service", "status", "n1", "a", "b"],
        &["service", "status", "n1", "--reason", "x"],
    ] {
        let mut a = args.to_vec();
        a.extend(["--agent-endpoint", at]);
        failed(&cli.run(Tok::Flag(&token), &a), 1);
    }
    assert_eq!(agent.connections(), 6, "usage errors never connect");
    // Service control records nothing in the journal.
    assert!(cli.entries(&token).is_empty());
}

#[test]
fn agent_errors_map_to_the_exit_code_table() {
    let j = Journal::start("agent-errors");
    let agent = FakeAgent::start(&j, "n1");
    let cli = Cli::new(&j, "errors");
    let token = j.token();
    let at = agent.addr.as_str();

    // The agent's own NotFound for a service it does not supervise: exit 1, its message.
    let r = cli.run(Tok::Flag(&token), &["service", "restart", "n1", "nosuch", "--agent-endpoint", at]);
    let e = failed(&r, 1);
    assert!(e.contains("the agent on n1 refused: no service named \"nosuch\" on this node (NotFound)"), "{e}");

    for (code, exit) in [
        (ErrorCode::Unauthenticated, 2),
        (ErrorCode::PermissionDenied, 2),
        (ErrorCode::NotFound, 1),
        (ErrorCode::InvalidArgument, 1),
        (ErrorCode::Unavailable, 5),
    ] {
        agent.answer(Answer::Error(code));
        for args in [&["service", "status", "n1"][..], &["service", "stop", "n1", "sshd"]] {
            let mut a = args.to_vec();
            a.extend(["--agent-endpoint", at]);
            let r = cli.run(Tok::Flag(&token), &a);
            let e = failed(&r, exit);
            assert!(e.contains(&format!("the agent on n1 refused: the fake agent answers {code:?} ({code:?})")), "{e}");
        }
    }
    let before = agent.connections();
    // No token at all: refused by the CLI (exit 2) before it connects to anything.
    let e = failed(&cli.run(Tok::None, &["service", "status", "n1", "--agent-endpoint", at]), 2).to_string();
    assert!(e.contains("no token"), "{e}");
    assert_eq!(agent.connections(), before);
}

#[test]
fn an_unreachable_agent_exits_5() {
    let j = Journal::start("agent-unreachable");
    let cli = Cli::new(&j, "unreachable");
    let token = j.token();

    // Nobody listens.
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let r = cli.run(Tok::Flag(&token), &["service", "status", "n1", "--agent-endpoint", &nowhere]);
    let e = failed(&r, 5);
    assert!(e.contains(&format!("the agent on n1 is unreachable ({nowhere})")), "{e}");
    assert!(!e.contains("journal"), "an agent is not a journal: {e}");

    // Something listens but hangs up without TLS.
    let port = common::free_port();
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let hangup = std::thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        drop(c);
    });
    let r = cli.run(Tok::Flag(&token), &["service", "status", "n1", "--agent-endpoint", &format!("127.0.0.1:{port}")]);
    failed(&r, 5);
    hangup.join().unwrap();

    // Without --agent-endpoint the agent is NODE:9445 (checked where nothing listens there).
    let taken = |a: &str| TcpStream::connect_timeout(&a.parse().unwrap(), Duration::from_secs(1)).is_ok();
    if taken("127.0.0.1:9445") || taken("[::1]:9445") {
        eprintln!("port 9445 is in use on this machine: the default-address case is left out");
    } else {
        let r = cli.run(Tok::Flag(&token), &["service", "status", "localhost"]);
        let e = failed(&r, 5);
        assert!(e.contains("the agent on localhost is unreachable (localhost:9445)"), "{e}");
    }
}

/// The node's ADMIN_OPERATION entries as `pact log --output json` shows them:
/// (sequence, entry_type, scope, message, author).
fn logged(cli: &Cli, token: &str) -> Vec<(u64, String, String, String, String)> {
    cli.entries(token)
        .iter()
        .rev()
        .map(|e| {
            (
                e.get("sequence").u64(),
                e.get("entry_type").str().to_string(),
                e.get("scope").str().to_string(),
                e.get("message").str().to_string(),
                e.get("author").str().to_string(),
            )
        })
        .collect()
}

fn admin_op(seq: u64, message: &str) -> (u64, String, String, String, String) {
    (seq, "ADMIN_OPERATION".into(), "node:n1".into(), message.into(), "dev-admin".into())
}

#[test]
fn reboot_and_poweroff_are_recorded_before_the_agent_is_asked() {
    let j = Journal::start("agent-power");
    let agent = FakeAgent::start(&j, "n1");
    let cli = Cli::new(&j, "power");
    let token = j.token();
    let at = agent.addr.as_str();

    let out = cli.ok(Tok::Flag(&token), &["reboot", "n1", "--reason", "kernel update", "--agent-endpoint", at]);
    assert_eq!(out, "reboot of n1 recorded (seq:1); the agent scheduled it\n");
    let rec = agent.received();
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0].token, token);
    assert_eq!(power_request(&rec[0]), PowerRequest { action: "reboot".into(), reason: "kernel update".into() });
    // When the Power request reached the agent, the journal already held the record.
    let seen = &rec[0].journal_at_arrival;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].sequence, 1);
    assert_eq!(seen[0].entry_type, EntryType::AdminOperation as i32);
    assert_eq!(seen[0].scope, Some(Scope { target: Some(Target::NodeId("n1".into())) }));
    assert_eq!(seen[0].policy_ref, "reboot: kernel update");
    assert_eq!(seen[0].author.as_ref().map(|a| a.principal.as_str()), Some("dev-admin"), "from the token");

    // poweroff without --reason, as JSON.
    let p = parse_json(&cli.ok(Tok::Flag(&token), &["--output", "json", "poweroff", "n1", "--agent-endpoint", at]));
    assert_eq!(p.get("node").str(), "n1");
    assert_eq!(p.get("action").str(), "poweroff");
    assert_eq!(p.get("reason").str(), "no reason given");
    assert_eq!(p.get("sequence").u64(), 2);
    let rec = agent.received();
    assert_eq!(rec.len(), 2, "{rec:?}");
    assert_eq!(power_request(&rec[1]), PowerRequest { action: "poweroff".into(), reason: "no reason given".into() });
    let seen: Vec<(u64, &str)> =
        rec[1].journal_at_arrival.iter().map(|e| (e.sequence, e.policy_ref.as_str())).collect();
    assert_eq!(seen, [(1, "reboot: kernel update"), (2, "poweroff: no reason given")]);

    // The journal's log shows both, and the JSON timestamp is the entry's.
    assert_eq!(logged(&cli, &token), [admin_op(1, "reboot: kernel update"), admin_op(2, "poweroff: no reason given")]);
    let newest = cli.entries(&token);
    assert_eq!(p.get("timestamp").str(), newest[0].get("timestamp").str());
    assert!(!p.get("timestamp").str().is_empty());
}

#[test]
fn a_journal_that_refuses_or_is_unreachable_means_the_node_is_never_contacted() {
    let j = Journal::start("agent-nojournal");
    let agent = FakeAgent::start(&j, "n1");
    let cli = Cli::new(&j, "nojournal");
    let token = j.token();
    let at = agent.addr.as_str();

    // The journal refuses the token (the fake agent would take any): exit 2, nothing sent.
    let foreign = pact_proto::auth::HmacVerifier::new(b"another-secret-another-secret-xx", "pact-dev", "pact")
        .mint("mallory", "pact-platform-admin", 600)
        .unwrap();
    for (tok, what) in [(Tok::Flag("garbage"), "garbage"), (Tok::Flag(&foreign), "foreign key"), (Tok::None, "none")] {
        let r = cli.run(tok, &["reboot", "n1", "--reason", "x", "--agent-endpoint", at]);
        let e = failed(&r, 2);
        assert!(e.contains("reboot of n1 was not recorded in the journal, so the node was not asked"), "{what}: {e}");
    }
    // The journal is unreachable: exit 5, nothing sent.
    let nowhere = Cli::at(&format!("127.0.0.1:{}", common::free_port()), &j.ca(), "nojournal-nowhere");
    let r = nowhere.run(Tok::Flag(&token), &["poweroff", "n1", "--agent-endpoint", at]);
    let e = failed(&r, 5);
    assert!(e.contains("poweroff of n1 was not recorded in the journal, so the node was not asked"), "{e}");
    assert!(e.contains("journal unreachable"), "{e}");

    assert_eq!(agent.connections(), 0, "the node was never contacted");
    assert!(agent.received().is_empty());
    // No reboot was recorded; only the journal's own records of the refused tokens.
    let recorded = cli.entries(&token);
    assert!(recorded.iter().all(|e| e.get("message").str().starts_with("denied: ")), "only refusals: {recorded:?}");

    // The same command line with a token the journal takes does reach that agent.
    cli.ok(Tok::Flag(&token), &["reboot", "n1", "--reason", "x", "--agent-endpoint", at]);
    assert_eq!(agent.connections(), 1);
    let after: Vec<_> = logged(&cli, &token).into_iter().filter(|e| !e.3.starts_with("denied: ")).collect();
    let seq = after.first().map(|e| e.0).unwrap_or(0);
    assert_eq!(after, [admin_op(seq, "reboot: x")]);
}

#[test]
fn an_agent_that_does_not_schedule_it_leaves_the_record_and_says_so() {
    let j = Journal::start("agent-refuses");
    let agent = FakeAgent::start(&j, "n1");
    let cli = Cli::new(&j, "refuses");
    let token = j.token();
    let at = agent.addr.as_str();

    agent.answer(Answer::Error(ErrorCode::PermissionDenied));
    let r = cli.run(Tok::Flag(&token), &["reboot", "n1", "--agent-endpoint", at]);
    let e = failed(&r, 2);
    assert!(
        e.contains("reboot of n1 recorded (seq:1), but not scheduled: the agent on n1 refused: the fake agent answers PermissionDenied"),
        "{e}"
    );
    agent.answer(Answer::Power(Output::ExitCode(1)));
    let r = cli.run(Tok::Flag(&token), &["poweroff", "n1", "--agent-endpoint", at]);
    let e = failed(&r, 1);
    assert!(e.contains("poweroff of n1 recorded (seq:2), but not scheduled: the agent answered exit code 1"), "{e}");
    agent.answer(Answer::Power(Output::Error("a shutdown is already under way".into())));
    let r = cli.run(Tok::Flag(&token), &["reboot", "n1", "--reason", "again", "--agent-endpoint", at]);
    let e = failed(&r, 1);
    assert!(
        e.contains("recorded (seq:3), but not scheduled: the agent answered: a shutdown is already under way"),
        "{e}"
    );
    assert_eq!(agent.received().len(), 3, "each was sent once the journal had it");

    // An agent that cannot be reached: recorded, then exit 5.
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let r = cli.run(Tok::Flag(&token), &["reboot", "n1", "--agent-endpoint", &nowhere]);
    let e = failed(&r, 5);
    assert!(e.contains("reboot of n1 recorded (seq:4), but not scheduled: the agent on n1 is unreachable"), "{e}");

    assert_eq!(
        logged(&cli, &token),
        [
            admin_op(1, "reboot: no reason given"),
            admin_op(2, "poweroff: no reason given"),
            admin_op(3, "reboot: again"),
            admin_op(4, "reboot: no reason given"),
        ]
    );
}
