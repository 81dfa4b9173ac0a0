//! `pact-journal` driven the way an operator drives it: the deployment guide's journal.toml,
//! `--check`, a real start from that file (no `--dev`), SIGTERM, restart, `--bootstrap` on an
//! initialised data dir, and the exit codes for bad configuration, bad flags and a locked dir.

mod common;

use common::{free_port, temp_dir, Journal, JOURNAL_ENV};
use pact_proto::auth::HmacVerifier;
use pact_proto::client::{CallError, Client};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::journal::{
    AppendEntryRequest, AppendEntryResponse, JournalStatus, JournalStatusRequest, ListEntriesRequest,
};
use pact_proto::{ErrorCode, Method};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// /etc/pact/journal.toml exactly as the deployment guide writes it ("Create
/// /etc/pact/journal.toml (same on all nodes, node ID comes from env)").
const GUIDE_JOURNAL_TOML: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../images/examples/journal.toml"));

const GUIDE_ISSUER: &str = "https://auth.example.org/realms/hpc";
const SECRET: &str = "config-cli-test-secret-0123456789abcdef";
/// How long anything may take before the test gives up (never a timing assertion).
const DEADLINE: Duration = Duration::from_secs(30);

fn journal(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pact-journal"));
    c.args(args);
    for v in JOURNAL_ENV {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A running journal process, killed when dropped; its output goes to files.
struct Proc {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, dir: &Path, label: &str) -> Proc {
        let stdout = dir.join(format!("{label}.stdout"));
        let stderr = dir.join(format!("{label}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start pact-journal");
        Proc { child: Some(child), stdout, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits for the process to exit on its own (failing the test after the deadline).
    fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.try_exit() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < until, "pact-journal did not exit within {DEADLINE:?}:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (through kill(1): no unsafe code in tests), then waits for the exit.
    fn terminate(&mut self) -> ExitStatus {
        let st = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status().expect("run kill");
        assert!(st.success(), "kill -TERM failed");
        self.wait_exit()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a journal that is expected to exit by itself; returns (exit code, stdout, stderr).
fn run_to_exit(cmd: Command, dir: &Path, label: &str) -> (i32, String, String) {
    let mut p = Proc::spawn(cmd, dir, label);
    let st = p.wait_exit();
    let out = std::fs::read_to_string(&p.stdout).unwrap_or_default();
    (st.code().unwrap_or(-1), out, p.stderr())
}

/// A temp dir removed when the test passes.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `text` with `from` replaced by `to`, insisting that `from` occurs exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once in the config");
    text.replacen(from, to, 1)
}

/// The guide's file for one node on loopback: members cut to node 1, data dir and both
/// listeners moved to the test's own places. Everything else is the guide's.
fn one_node_config(data_dir: &Path, port: u16, raft_port: u16, metrics_port: u16) -> String {
    let t = replace_once(
        GUIDE_JOURNAL_TOML,
        "members = [\n\"1:journal-1.mgmt:9444\",\n\"2:journal-2.mgmt:9444\",\n\"3:journal-3.mgmt:9444\"\n]",
        &format!("members = [\n\"1:127.0.0.1:{raft_port}\"\n]"),
    );
    let t = replace_once(&t, "data_dir = \"/var/lib/pact/journal\"", &format!("data_dir = \"{}\"", data_dir.display()));
    let t = replace_once(&t, "listen_addr = \"0.0.0.0:9443\"", &format!("listen_addr = \"127.0.0.1:{port}\""));
    // No OPA sidecar here (the guide runs one on localhost:8181): without it every write would
    // be refused as "policy engine unavailable". The policy engine has its own tests (policy.rs).
    let t = replace_once(&t, "[policy]\nenabled = true", "[policy]\nenabled = false");
    replace_once(
        &t,
        "prometheus_listen = \"0.0.0.0:9091\"",
        &format!("prometheus_listen = \"127.0.0.1:{metrics_port}\""),
    )
}

/// A plain-HTTP GET on the metrics port: (status code, body), or None if it cannot connect.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// Waits until `/health` answers 200 and an authenticated status call on the client port
/// succeeds; fails the test if the process exits or the deadline passes.
fn wait_serving(p: &mut Proc, metrics_port: u16, endpoint: &str, ca: &Path, token: &str) -> Client {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(st) = p.try_exit() {
            panic!("pact-journal exited with {st} while starting:\n{}", p.output());
        }
        let healthy = matches!(http_get(metrics_port, "/health"), Some((200, _)));
        if healthy && ca.exists() {
            if let Ok(tls) = pact_proto::tls::client_config(ca) {
                if let Ok(mut c) = Client::connect(endpoint, tls, token, Duration::from_secs(10)) {
                    let st: Result<JournalStatus, _> = c.call(Method::JournalStatus, &JournalStatusRequest {});
                    match st {
                        Ok(s) if s.leader_id != 0 => return c,
                        Ok(_) => {}
                        // A wrong token will not get better by waiting.
                        Err(e) => assert!(
                            !matches!(&e, CallError::Remote(r) if r.code == ErrorCode::Unauthenticated),
                            "the journal refused the test's token: {e}\n{}",
                            p.output()
                        ),
                    }
                }
            }
        }
        assert!(Instant::now() < until, "pact-journal not serving within {DEADLINE:?}:\n{}", p.output());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn list_all(c: &mut Client) -> Vec<ConfigEntry> {
    let req = ListEntriesRequest { limit: 10_000, oldest_first: true, ..Default::default() };
    c.call_stream(Method::ListEntries, &req).expect("list entries")
}

#[test]
fn the_guide_config_passes_check_and_lists_inactive_settings() {
    let dir = Dir(temp_dir("cfg-check"));
    let f = write(&dir.0, "journal.toml", GUIDE_JOURNAL_TOML);
    let fs = f.to_str().unwrap();

    let (code, out, err) =
        run_to_exit(journal(&["--config", fs, "--check"], &[("PACT_JOURNAL_NODE_ID", "1")]), &dir.0, "check");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("{fs}: configuration OK")), "{out}");
    assert!(out.contains("node id 1"), "{out}");
    assert!(out.contains("data dir /var/lib/pact/journal"), "{out}");
    let notes: Vec<&str> = out.lines().filter(|l| l.contains("configured, not yet active:")).collect();
    assert!(notes.iter().any(|n| n.contains("telemetry.loki")), "no note about telemetry.loki: {out}");
    // The policy engine is active: the guide's OPA sidecar is what it asks.
    assert!(!notes.iter().any(|n| n.contains("policy")), "{out}");
    assert!(out.contains("policy engine: opa at http://localhost:8181/v1/data/pact"), "{out}");
    // The boot stream cap is enforced now, so it is no longer listed as inactive.
    assert!(!notes.iter().any(|n| n.contains("max_concurrent_boot_streams")), "{out}");

    // The guide's file is shared and the id comes from the environment: `--check` without an
    // id validates it as each journal it lists; starting without one is a clear refusal.
    let (code, out, err) = run_to_exit(journal(&["--config", fs, "--check"], &[]), &dir.0, "check-no-id");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("node id not set") && out.contains("checked as 1, 2, 3"), "{out}");
    let (code, _, err) = run_to_exit(journal(&["--config", fs], &[]), &dir.0, "start-no-id");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("PACT_JOURNAL_NODE_ID"), "{err}");
    // A node id that is not a member.
    let (code, _, err) =
        run_to_exit(journal(&["--config", fs, "--check"], &[("PACT_JOURNAL_NODE_ID", "7")]), &dir.0, "check-7");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("journal.raft.members"), "{err}");
    // The same file through PACT_JOURNAL_CONFIG.
    let (code, out, err) = run_to_exit(
        journal(&["--check"], &[("PACT_JOURNAL_CONFIG", fs), ("PACT_JOURNAL_NODE_ID", "2")]),
        &dir.0,
        "check-env",
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("node id 2"), "{out}");
}

#[test]
fn a_one_node_journal_from_the_guide_config_serves_stops_restarts_and_refuses_bootstrap() {
    let dir = Dir(temp_dir("cfg-one"));
    let data = dir.0.join("data");
    let (port, raft_port, metrics_port) = (free_port(), free_port(), free_port());
    let cfg = write(&dir.0, "journal.toml", &one_node_config(&data, port, raft_port, metrics_port));
    let cfg = cfg.to_str().unwrap().to_string();
    let endpoint = format!("127.0.0.1:{port}");
    let ca = data.join("tls/ca.crt");
    let token =
        HmacVerifier::new(SECRET.as_bytes(), GUIDE_ISSUER, "pact").mint("ops-alice", "pact-platform-admin", 600);
    let token = token.unwrap();
    let start = |label: &str, extra: &[&str]| {
        let mut args = vec!["--config", cfg.as_str()];
        args.extend_from_slice(extra);
        Proc::spawn(journal(&args, &[("PACT_OIDC_HMAC_SECRET", SECRET)]), &dir.0, label)
    };

    // First start: no --dev, no --bootstrap; one member is initialised implicitly.
    let mut p = start("first", &[]);
    let mut c = wait_serving(&mut p, metrics_port, &endpoint, &ca, &token);
    assert!(data.join("tls/ca.crt").exists() && data.join("tls/server.crt").exists());
    assert!(!data.join("dev").exists(), "no dev credentials without --dev");
    let entry = ConfigEntry {
        entry_type: EntryType::Commit as i32,
        scope: Some(Scope { target: Some(Target::VclusterId("config-cli".into())) }),
        policy_ref: "recorded from the guide's config".into(),
        ..Default::default()
    };
    let r: AppendEntryResponse =
        c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(entry.clone()) }).expect("append");
    assert_eq!(r.sequence, 1);
    // A token for another issuer (the dev one) is refused by this journal.
    let dev_token = HmacVerifier::new(SECRET.as_bytes(), "pact-dev", "pact").mint("eve", "pact-platform-admin", 600);
    let mut bad = Client::connect(
        &endpoint,
        pact_proto::tls::client_config(&ca).unwrap(),
        &dev_token.unwrap(),
        Duration::from_secs(10),
    )
    .unwrap();
    let refused: Result<AppendEntryResponse, _> =
        bad.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(entry.clone()) });
    assert_eq!(refused.expect_err("wrong issuer must be refused").exit_code(), 2);

    // /health reads the store as it is: an append is acknowledged at commit, a moment before
    // its applied state is stored, so the count may take that moment to show. Two entries:
    // the append, and the record of the refused token (written in the background).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (code, body) = loop {
        let (code, body) = http_get(metrics_port, "/health").expect("GET /health");
        if body.contains("\"entries\":2") || std::time::Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"role\":\"leader\""), "{body}");
    assert!(body.contains("\"entries\":2"), "{body}");
    let (code, metrics) = http_get(metrics_port, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("pact_journal_up"), "{metrics}");
    let gauge = |text: &str, name: &str| -> u64 {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name}{{"))).unwrap_or_else(|| panic!("{name}: {text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    // The raft log file holds the founding reset and the appends: more than its 8-byte header.
    assert!(gauge(&metrics, "pact_journal_raft_log_bytes") > 8, "{metrics}");
    // The applier stores within its 20 ms batching delay: the lag drains to 0 when idle.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = http_get(metrics_port, "/metrics").expect("GET /metrics");
        if gauge(&m, "pact_journal_store_lag_entries") == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the store lag never drained: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The guide asks for JSON logs; they are.
    let err = p.stderr();
    assert!(err.lines().any(|l| l.starts_with('{') && l.contains("\"level\"")), "{err}");
    assert!(err.contains("configured, not yet active"), "{err}");

    drop(c);
    drop(bad);
    let st = p.terminate();
    assert_eq!(st.code(), Some(0), "SIGTERM must be a clean exit:\n{}", p.output());

    // Restart: same data, same CA, the entry is still there with its author from the token.
    let mut p = start("second", &[]);
    let mut c = wait_serving(&mut p, metrics_port, &endpoint, &ca, &token);
    let all = list_all(&mut c);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0].sequence, 1);
    assert!(all[1].policy_ref.starts_with("denied: AppendEntry: unauthenticated: token rejected"), "{all:?}");
    assert_eq!(all[1].author.as_ref().map(|a| a.principal.as_str()), Some("journal-1"));
    assert_eq!(all[0].policy_ref, "recorded from the guide's config");
    assert_eq!(all[0].author.as_ref().map(|a| a.principal.as_str()), Some("ops-alice"));
    let r: AppendEntryResponse =
        c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(entry) }).expect("append after restart");
    assert_eq!(r.sequence, 3, "sequences continue after a restart");
    drop(c);
    let st = p.terminate();
    assert_eq!(st.code(), Some(0), "{}", p.output());

    // --bootstrap on the initialised dir: refused, and the data is untouched.
    let mut p = start("bootstrap", &["--bootstrap"]);
    let st = p.wait_exit();
    assert_eq!(st.code(), Some(4), "{}", p.output());
    assert!(p.stderr().contains("--bootstrap refused"), "{}", p.output());

    let mut p = start("third", &[]);
    let mut c = wait_serving(&mut p, metrics_port, &endpoint, &ca, &token);
    assert_eq!(list_all(&mut c).len(), 3);
    drop(c);
    assert_eq!(p.terminate().code(), Some(0), "{}", p.output());
}

/// A config file valid except for `from` → `to`, with the data dir and ports on the test's
/// own places so that if it were accepted it would not touch the machine's real ones.
fn broken_config(dir: &Path, name: &str, from: &str, to: &str) -> (PathBuf, String) {
    let good = one_node_config(&dir.join("data"), free_port(), free_port(), free_port());
    let text = replace_once(&good, from, to);
    (write(dir, name, &text), text)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in the text") + 1
}

#[test]
fn bad_configs_exit_3_naming_file_line_and_key_and_bad_flags_exit_2() {
    let dir = Dir(temp_dir("cfg-bad"));
    let env = [("PACT_OIDC_HMAC_SECRET", SECRET)];

    // The one-node config itself is accepted (so each failure below is about its one change).
    let good = write(&dir.0, "good.toml", &one_node_config(&dir.0.join("data"), free_port(), free_port(), free_port()));
    let (code, out, err) = run_to_exit(journal(&["--config", good.to_str().unwrap(), "--check"], &env), &dir.0, "good");
    assert_eq!(code, 0, "{out}\n{err}");

    // An unknown key (a typo): file, line, dotted key and the key it probably meant.
    let (f, text) = broken_config(&dir.0, "unknown.toml", "prometheus_listen =", "prometheus_listn =");
    let (code, _, err) = run_to_exit(journal(&["--config", f.to_str().unwrap()], &env), &dir.0, "unknown");
    assert_eq!(code, 3, "{err}");
    let at = format!("{}:{}:", f.display(), line_of(&text, "prometheus_listn"));
    assert!(err.contains(&at), "expected {at:?} in {err}");
    assert!(err.contains("telemetry.prometheus_listn"), "{err}");
    assert!(err.contains("did you mean `telemetry.prometheus_listen`"), "{err}");
    assert!(!dir.0.join("data").exists(), "nothing may be created for a bad config");

    // A wrong type: file, line and key, and what was found.
    let (f, text) = broken_config(&dir.0, "type.toml", "snapshot_interval = 10000", "snapshot_interval = \"ten\"");
    let (code, _, err) = run_to_exit(journal(&["--config", f.to_str().unwrap()], &env), &dir.0, "type");
    assert_eq!(code, 3, "{err}");
    let at = format!("{}:{}:", f.display(), line_of(&text, "snapshot_interval"));
    assert!(err.contains(&at), "expected {at:?} in {err}");
    assert!(err.contains("journal.raft.snapshot_interval"), "{err}");
    assert!(err.contains("\"ten\""), "{err}");
    // A wrong type in a nested section, and a bad enum value.
    let (f, _) = broken_config(&dir.0, "bool.toml", "prometheus_enabled = true", "prometheus_enabled = \"yes\"");
    let (code, _, err) = run_to_exit(journal(&["--config", f.to_str().unwrap(), "--check"], &env), &dir.0, "bool");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("telemetry.prometheus_enabled"), "{err}");
    let (f, _) = broken_config(&dir.0, "level.toml", "log_level = \"info\"", "log_level = \"loud\"");
    let (code, _, err) = run_to_exit(journal(&["--config", f.to_str().unwrap(), "--check"], &env), &dir.0, "level");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("telemetry.log_level"), "{err}");
    // TOML that does not parse: file and line.
    let (f, text) = broken_config(&dir.0, "syntax.toml", "[journal.streaming]", "[journal.streaming");
    let (code, _, err) = run_to_exit(journal(&["--config", f.to_str().unwrap(), "--check"], &env), &dir.0, "syntax");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("{}:{}:", f.display(), line_of(&text, "[journal.streaming"))), "{err}");

    // An unreadable path.
    let (code, _, err) = run_to_exit(journal(&["--config", "/nonexistent/x.toml"], &env), &dir.0, "missing");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
    // A bad environment variable is a configuration error too, naming the variable.
    let (code, _, err) = run_to_exit(
        journal(&["--config", good.to_str().unwrap(), "--check"], &[("PACT_JOURNAL_LISTEN", "nowhere")]),
        &dir.0,
        "env",
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("PACT_JOURNAL_LISTEN"), "{err}");

    // Bad command lines exit 2 and name the flag.
    for (args, needle) in [
        (&["--bogus"][..], "--bogus"),
        (&["--check", "--confg", "x"], "did you mean --config"),
        (&["--node-id", "zero"], "--node-id"),
        (&["--node-id", "0"], "--node-id"),
        (&["--cores"], "--cores"),
        (&["stray"], "stray"),
        (&["--config", "a.toml", "--config", "b.toml"], "more than once"),
    ] {
        let (code, _, err) = run_to_exit(journal(args, &[]), &dir.0, "flags");
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (code, out, _) = run_to_exit(journal(&["--help"], &[]), &dir.0, "help");
    assert_eq!(code, 0);
    assert!(out.contains("--bootstrap"), "{out}");
}

#[test]
fn a_second_journal_on_the_same_data_dir_exits_4() {
    let j = Journal::start("cfg-locked");
    let dir = Dir(temp_dir("cfg-locked-second"));
    let data = j.data_dir();
    // Other ports, so only the data dir is shared.
    let (port, metrics) = (free_port().to_string(), format!("127.0.0.1:{}", free_port()));
    let listen = format!("127.0.0.1:{port}");
    let args = ["--dev", "--data-dir", data.to_str().unwrap(), "--listen", &listen, "--metrics-listen", &metrics];
    let (code, _, err) = run_to_exit(journal(&args, &[]), &dir.0, "second");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("locked"), "{err}");
    // The first one is unaffected.
    let st: JournalStatus = j.client().call(Method::JournalStatus, &JournalStatusRequest {}).unwrap();
    assert_eq!(st.role, "leader");
}

#[test]
fn a_second_journal_on_a_port_in_use_exits_5_and_the_first_keeps_all_traffic() {
    let j = Journal::start("cfg-port");
    let dir = Dir(temp_dir("cfg-port-second"));
    let data = dir.0.join("data");
    let metrics = format!("127.0.0.1:{}", free_port());
    let listen = j.endpoint();
    let args = ["--dev", "--data-dir", data.to_str().unwrap(), "--listen", &listen, "--metrics-listen", &metrics];
    let (code, _, err) = run_to_exit(journal(&args, &[]), &dir.0, "second");
    assert_eq!(code, 5, "{err}");
    assert!(err.contains(&listen), "{err}");
    // Every connection still reaches the first journal (its CA verifies every handshake).
    for _ in 0..6 {
        let st: JournalStatus = j.client().call(Method::JournalStatus, &JournalStatusRequest {}).unwrap();
        assert_eq!(st.role, "leader");
    }
}

#[test]
fn dev_tokens_are_signed_with_the_configured_secret_when_there_is_one() {
    let dir = Dir(temp_dir("cfg-dev-secret"));
    let data = dir.0.join("data");
    let (port, metrics_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let args = ["--dev", "--data-dir", data.to_str().unwrap(), "--listen", &listen, "--metrics-listen", &metrics];
    let secret = "a-configured-secret-of-more-than-32-bytes";
    let mut p = Proc::spawn(journal(&args, &[("PACT_OIDC_HMAC_SECRET", secret)]), &dir.0, "dev");
    let token = loop {
        if let Ok(t) = std::fs::read_to_string(data.join("dev/admin.token")) {
            break t.trim().to_string();
        }
        assert!(p.try_exit().is_none(), "{}", p.output());
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut c = wait_serving(&mut p, metrics_port, &listen, &data.join("dev/ca.crt"), &token);
    let st: JournalStatus = c.call(Method::JournalStatus, &JournalStatusRequest {}).unwrap();
    assert_eq!(st.role, "leader");
    assert!(!data.join("dev/hmac.secret").exists(), "no second secret is made when one is configured");
}
