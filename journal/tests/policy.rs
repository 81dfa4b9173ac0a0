//! The policy engine against a real journal: a Rego policy refuses what the built-in role rules
//! allow (exit 3, on the record) and never allows what they refuse; an OPA endpoint that does
//! not answer refuses writes and leaves reads to the built-in rules; an OPA endpoint's answer
//! decides (a small HTTP server stands in for OPA's wire; the Rego engine is the real one).

mod common;

use common::{journal_bin, path_str, temp_dir, Journal};
use pact_proto::auth::{HmacVerifier, DEV_ISSUER};
use pact_proto::client::{CallError, Client};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse, ListEntriesRequest};
use pact_proto::Method;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const POLICY: &str = r#"
package pact

default allow := true

secret_write if {
    input.action == "write"
    input.vcluster == "secret"
    input.role != "pact-platform-admin"
}

allow := false if secret_write

deny_reason := "vc:secret is written by platform admins only" if secret_write

# Writes to vc:gated wait for a second person.
require_approval if {
    input.action == "write"
    input.vcluster == "gated"
}

# Says yes to dave, whatever he asks: the built-in rules still refuse what his role may not do.
allow := true if input.principal == "dave"
"#;

fn client_as(j: &Journal, subject: &str, role: &str) -> Client {
    let token = HmacVerifier::new(&j.hmac_secret(), DEV_ISSUER, "pact").mint(subject, role, 600).unwrap();
    Client::connect(&j.endpoint(), j.tls(), &token, Duration::from_secs(10)).unwrap()
}

fn entry(on: Target, msg: &str) -> ConfigEntry {
    ConfigEntry {
        entry_type: EntryType::Commit as i32,
        scope: Some(Scope { target: Some(on) }),
        policy_ref: msg.into(),
        ..Default::default()
    }
}

fn vc(v: &str) -> Target {
    Target::VclusterId(v.into())
}

fn append(c: &mut Client, e: ConfigEntry) -> Result<AppendEntryResponse, CallError> {
    c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(e) })
}

fn list(c: &mut Client, scope: Option<Target>) -> Result<Vec<ConfigEntry>, CallError> {
    let req = ListEntriesRequest {
        scope: scope.map(|t| Scope { target: Some(t) }),
        limit: 10_000,
        oldest_first: true,
        ..Default::default()
    };
    c.call_stream(Method::ListEntries, &req)
}

fn refused(r: Result<AppendEntryResponse, CallError>, exit: u8, want: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.exit_code(), exit, "{e}");
            assert!(e.to_string().contains(want), "{e} should say {want:?}");
        }
        Ok(a) => panic!("appended as {}, expected a refusal saying {want:?}", a.sequence),
    }
}

/// Waits for a `denied:` record by `who` mentioning `what`.
fn recorded(admin: &mut Client, who: &str, what: &str) -> ConfigEntry {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = list(admin, None).expect("admin lists");
        if let Some(d) = all.into_iter().find(|e| {
            e.policy_ref.starts_with("denied: ")
                && e.policy_ref.contains(what)
                && e.author.as_ref().is_some_and(|a| a.principal == who)
        }) {
            assert_eq!(d.entry_type, EntryType::AdminOperation as i32);
            return d;
        }
        assert!(Instant::now() < deadline, "no denial by {who} mentioning {what:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A config file turning the policy engine on with `engine` (the `[policy.engine]` body).
fn config(dir: &std::path::Path, engine: &str) -> PathBuf {
    let f = dir.join("journal.toml");
    std::fs::write(&f, format!("[policy]\nenabled = true\n\n[policy.engine]\n{engine}\n")).unwrap();
    f
}

#[test]
fn a_rego_policy_refuses_more_never_less() {
    let dir = temp_dir("policy-rego");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("pact.rego"), POLICY).unwrap();
    let cfg = config(&dir, &format!("type = \"rego\"\npolicy_dir = \"{}\"", path_str(&policies)));
    let j = Journal::start_with("policy-rego", &["--config", &path_str(&cfg)]);
    assert!(j.log_text().contains("policy engine: rego, 1 file(s)"), "{}", j.log_text());
    let mut admin = j.client();
    append(&mut admin, entry(vc("secret"), "admin-secret")).unwrap();

    // The floor allows ops of secret to write vc:secret; the policy does not.
    let mut alice = client_as(&j, "alice", "pact-ops-secret");
    refused(append(&mut alice, entry(vc("secret"), "alice-secret")), 3, "vc:secret is written by platform admins only");
    // A read the policy does not mention passes.
    let seen = list(&mut alice, Some(vc("secret"))).expect("alice reads vc:secret");
    assert!(seen.iter().any(|e| e.policy_ref == "admin-secret"), "{seen:?}");
    // The policy says yes to dave; his role (ops of hpc) may not write vc:ml: refused.
    let mut dave = client_as(&j, "dave", "pact-ops-hpc");
    refused(append(&mut dave, entry(vc("ml"), "dave-ml")), 2, "pact-ops-hpc may not write vc:ml");
    append(&mut dave, entry(vc("hpc"), "dave-hpc")).unwrap();
    // The policy asks for a second person on vc:gated: the write is held, not applied.
    let mut erin = client_as(&j, "erin", "pact-ops-gated");
    let held = append(&mut erin, entry(vc("gated"), "erin-gated")).unwrap();
    assert!(!held.pending_approval_id.is_empty(), "{held:?}");

    let d = recorded(&mut admin, "alice", "denied by policy: vc:secret is written by platform admins only");
    assert!(d.policy_ref.starts_with("denied: AppendEntry: "), "{}", d.policy_ref);
    recorded(&mut admin, "dave", "pact-ops-hpc may not write vc:ml");
    let all = list(&mut admin, None).unwrap();
    assert!(all
        .iter()
        .any(|e| e.entry_type == EntryType::PendingApproval as i32 && e.policy_ref.contains("erin-gated")));
    for never in ["alice-secret", "dave-ml", "erin-gated"] {
        assert!(!all.iter().any(|e| e.policy_ref == never), "{never} was applied");
    }

    // A syntax error stops --check (and the start) with the file and line.
    std::fs::write(policies.join("broken.rego"), "package pact\n\nallow := if {\n").unwrap();
    let out = std::process::Command::new(journal_bin())
        .args(["--dev", "--check", "--config", &path_str(&cfg), "--data-dir", &path_str(&dir.join("d2"))])
        .env_remove("PACT_JOURNAL_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("broken.rego:3"), "{err}");
}

#[test]
fn an_unreachable_opa_leaves_the_floor_deciding_and_refuses_what_depends_on_policy() {
    let dir = temp_dir("policy-degraded");
    let closed = common::free_port();
    let cfg = config(&dir, &format!("type = \"opa\"\nopa_endpoint = \"http://127.0.0.1:{closed}/v1/data/pact\""));
    let j = Journal::start_with("policy-degraded", &["--config", &path_str(&cfg)]);
    let mut admin = j.client();
    // The cached role bindings still work: role-allowed writes and reads go through...
    append(&mut admin, entry(vc("ml"), "admin-ml")).unwrap();
    let mut ops = client_as(&j, "alice", "pact-ops-ml");
    append(&mut ops, entry(vc("ml"), "ops-ml")).unwrap();
    let mut viewer = client_as(&j, "bob", "pact-viewer-ml");
    list(&mut viewer, Some(vc("ml"))).expect("a viewer reads its vCluster");
    // ...and what the roles refuse stays refused.
    let e = list(&mut viewer, Some(vc("hpc"))).expect_err("a viewer of ml reading hpc");
    assert_eq!(e.exit_code(), 2, "{e}");
    // What depends on policy is refused: a regulated role's write (two-person approval), an
    // emergency.
    let mut carol = client_as(&j, "carol", "pact-regulated-ml");
    refused(append(&mut carol, entry(vc("ml"), "carol-ml")), 3, "depends on policy");
    let emergency = ConfigEntry { entry_type: EntryType::EmergencyStart as i32, ..entry(vc("ml"), "admin-emergency") };
    refused(append(&mut admin, emergency), 3, "depends on policy");
    // Every degraded decision is on the record.
    recorded(&mut admin, "carol", "policy engine unavailable");
    recorded(&mut admin, "dev-admin", "depends on policy");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = list(&mut admin, None).unwrap();
        let degraded = |who: &str| {
            all.iter().any(|e| {
                e.policy_ref.starts_with("degraded: AppendEntry: write allowed on the built-in role rules")
                    && e.author.as_ref().is_some_and(|a| a.principal == who)
            })
        };
        if degraded("alice") && degraded("dev-admin") {
            assert!(all.iter().any(|e| e.policy_ref == "ops-ml") && all.iter().any(|e| e.policy_ref == "admin-ml"));
            assert!(!all.iter().any(|e| e.policy_ref == "carol-ml" || e.policy_ref == "admin-emergency"), "{all:?}");
            break;
        }
        assert!(Instant::now() < deadline, "degraded decisions not recorded: {all:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Answers every request on `l` like OPA would: writes refused, reads allowed.
fn fake_opa(l: std::net::TcpListener) {
    for s in l.incoming() {
        let Ok(mut s) = s else { return };
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        let body = loop {
            let Ok(n) = s.read(&mut buf) else { break String::new() };
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    break body.to_string();
                }
            }
            if n == 0 {
                break String::new();
            }
        };
        let answer = if body.contains("\"write\"") {
            r#"{"result": {"allow": false, "deny_reason": "opa: no writes today"}}"#
        } else {
            r#"{"result": {"allow": true}}"#
        };
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
    }
}

#[test]
fn an_opa_answer_decides() {
    let dir = temp_dir("policy-opa");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || fake_opa(l));
    let cfg = config(&dir, &format!("type = \"opa\"\nopa_endpoint = \"http://127.0.0.1:{port}/v1/data/pact\""));
    let j = Journal::start_with("policy-opa", &["--config", &path_str(&cfg)]);
    let mut admin = j.client();
    refused(append(&mut admin, entry(vc("ml"), "admin-ml")), 3, "opa: no writes today");
    list(&mut admin, Some(vc("ml"))).expect("reads are allowed");
    recorded(&mut admin, "dev-admin", "denied by policy: opa: no writes today");
}

/// SIGHUP reloads the policies without a restart: a rule removed from the file stops refusing;
/// a file that does not parse leaves the policies in force (and says why); the journal keeps
/// serving throughout.
#[test]
fn sighup_reloads_the_policies_and_a_bad_file_keeps_the_old_ones() {
    let dir = temp_dir("policy-sighup");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("pact.rego"), POLICY).unwrap();
    let cfg = config(&dir, &format!("type = \"rego\"\npolicy_dir = \"{}\"", path_str(&policies)));
    let j = Journal::start_with("policy-sighup", &["--config", &path_str(&cfg)]);
    let mut alice = client_as(&j, "alice", "pact-ops-secret");
    refused(append(&mut alice, entry(vc("secret"), "before")), 3, "vc:secret is written by platform admins only");

    let hup = |j: &Journal| {
        let pid = j.child.as_ref().unwrap().id();
        let st = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
        assert!(st.success());
    };
    let wait_log = |j: &Journal, what: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while j.log_text().matches(what).count() < n {
            assert!(Instant::now() < deadline, "no {what:?} (x{n}) in the log:\n{}", j.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The rule for vc:secret removed: after SIGHUP, alice writes there.
    std::fs::write(
        policies.join("pact.rego"),
        POLICY.replace("input.vcluster == \"secret\"", "input.vcluster == \"none\""),
    )
    .unwrap();
    hup(&j);
    wait_log(&j, "SIGHUP: policies reloaded", 1);
    append(&mut alice, entry(vc("secret"), "after")).expect("the rule is gone");

    // A broken file: not reloaded, the previous policies stay, the journal serves on.
    std::fs::write(policies.join("pact.rego"), "package pact\n\nallow := if {\n").unwrap();
    hup(&j);
    wait_log(&j, "SIGHUP: policies not reloaded", 1);
    assert!(j.log_text().contains("pact.rego:3"), "{}", j.log_text());
    append(&mut alice, entry(vc("secret"), "still")).expect("the policies in force stay");
    assert!(j.child.as_ref().is_some(), "the journal is still running");
    let mut admin = j.client();
    let all = list(&mut admin, Some(vc("secret"))).unwrap();
    assert!(all.iter().any(|e| e.policy_ref == "still"));
}
