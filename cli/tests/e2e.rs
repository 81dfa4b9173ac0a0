//! End to end: the real `pact` binary against a real `pact-journal --dev` (TLS, tokens, raft),
//! started by the shared harness. Every CLI run gets a clean environment: no user config, no
//! dev profile, an empty HOME, so only what a test passes reaches the CLI (`support`).

#[path = "../../journal/tests/common/mod.rs"]
mod common;
mod support;

use common::Journal;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};
use support::{log_rows, parse_json, write, Cli, Json, Run, Tok};

const EXAMPLE_SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/examples/ml-training.toml");

#[test]
fn json_reader_reads_what_it_should() {
    let v = parse_json(r#" [ {"a": 1, "b": "x\"y\u0041", "c": null, "d": [true, false], "e": {}} , [] ] "#);
    let first = &v.arr()[0];
    assert_eq!(first.get("a").u64(), 1);
    assert_eq!(first.get("b").str(), "x\"yA");
    assert_eq!(first.get("c"), &Json::Null);
    assert_eq!(first.get("d").arr(), &[Json::Bool(true), Json::Bool(false)]);
    assert_eq!(v.arr()[1], Json::Arr(vec![]));
}

// ---------------------------------------------------------------------------------------------
// Tokens made by hand: base64url and HS256 with ring, so a test can write any claims.

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (k, b)| acc | (u32::from(*b) << (16 - 8 * k)));
        for k in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * k)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn b64url_matches_rfc4648_vectors() {
    // RFC 4648 §10, without padding, plus the two url-safe characters.
    for (raw, enc) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(b64url(raw.as_bytes()), enc);
    }
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An HS256 JWT with the dev issuer and audience, valid from `nbf` to `exp` (Unix seconds).
fn hand_jwt(secret: &[u8], sub: &str, iat: i64, nbf: i64, exp: i64) -> String {
    let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = format!(
        r#"{{"iss":"pact-dev","aud":"pact","sub":"{sub}","pact_role":"pact-platform-admin","iat":{iat},"nbf":{nbf},"exp":{exp}}}"#
    );
    let input = format!("{header}.{}", b64url(claims.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

// ---------------------------------------------------------------------------------------------

/// The delta items of one dimension, as (action, key, value).
fn items(delta: &Json, dim: &str) -> Vec<(String, String, Option<String>)> {
    delta
        .get(dim)
        .arr()
        .iter()
        .map(|it| {
            assert_eq!(it.get("dimension").str(), dim, "{it:?}");
            let value = it.opt("value").filter(|v| **v != Json::Null).map(|v| v.str().to_string());
            (it.get("action").str().to_string(), it.get("key").str().to_string(), value)
        })
        .collect()
}

fn has(list: &[(String, String, Option<String>)], action: &str, key: &str, value: Option<&str>) -> bool {
    list.iter().any(|(a, k, v)| a == action && k == key && v.as_deref() == value)
}

#[test]
fn apply_records_each_vcluster_with_its_full_delta() {
    let j = Journal::start("e2e-apply");
    let cli = Cli::new(&j, "apply");
    let token = j.token();
    assert!(cli.entries(&token).is_empty());

    let out = cli.ok(Tok::Flag(&token), &["apply", EXAMPLE_SPEC]);
    // One COMMIT per vCluster, sorted by name.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["COMMIT recorded (seq:1) on vc:inference", "COMMIT recorded (seq:2) on vc:ml-training"]);

    // The newest entry, through PACT_TOKEN this time.
    let newest = parse_json(&cli.ok(Tok::Env(&token), &["log", "-n", "1", "--output", "json"]));
    let newest = newest.arr();
    assert_eq!(newest.len(), 1, "{newest:?}");
    let e = &newest[0];
    assert_eq!(e.get("sequence").u64(), 2);
    assert_eq!(e.get("entry_type").str(), "COMMIT");
    assert_eq!(e.get("scope").str(), "vc:ml-training");
    // The author comes from the verified token.
    assert_eq!(e.get("author").str(), "dev-admin");
    assert_eq!(e.get("role").str(), "pact-platform-admin");
    assert!(e.get("message").str().starts_with("apply:"), "{e:?}");
    assert!(!e.get("timestamp").str().is_empty());
    let d = e.get("state_delta");
    let kernel = items(d, "kernel");
    assert!(has(&kernel, "MODIFY", "vm.swappiness", Some("10")), "{kernel:?}");
    assert!(has(&kernel, "MODIFY", "vm.nr_hugepages", Some("1024")), "{kernel:?}");
    assert!(has(&kernel, "ADD", "module:nvidia", None), "{kernel:?}");
    let mounts = items(d, "mounts");
    let scratch: Vec<_> = mounts.iter().filter(|(_, k, _)| k == "/scratch").collect();
    assert_eq!(scratch.len(), 1, "{mounts:?}");
    assert_eq!(scratch[0].0, "ADD");
    let v = scratch[0].2.as_deref().unwrap_or_default();
    assert!(v.starts_with("nfs:storage01:/ml-scratch"), "{v}");
    assert!(has(&mounts, "ADD", "/datasets", Some("nfs:storage02:/shared-datasets [ro]")), "{mounts:?}");
    let services = items(d, "services");
    assert!(has(&services, "MODIFY", "chronyd", Some("running")), "{services:?}");
    assert!(has(&services, "MODIFY", "lattice-node-agent", Some("running")), "{services:?}");
    assert!(has(&items(d, "network"), "MODIFY", "hsn0", Some("mtu 9000")));
    assert!(has(&items(d, "packages"), "ADD", "cuda-toolkit", Some("12.4")));
    assert_eq!(items(d, "files").len(), 2);

    // Scoped: exactly the inference entry, with its own delta (no ml-training leakage).
    let inf = parse_json(&cli.ok(Tok::Flag(&token), &["log", "--scope", "vc:inference", "--output", "json"]));
    let inf = inf.arr();
    assert_eq!(inf.len(), 1, "{inf:?}");
    assert_eq!(inf[0].get("sequence").u64(), 1);
    assert_eq!(inf[0].get("scope").str(), "vc:inference");
    assert_eq!(inf[0].get("entry_type").str(), "COMMIT");
    let d = inf[0].get("state_delta");
    // A bare number in the spec is stored as a string.
    assert!(has(&items(d, "kernel"), "MODIFY", "vm.swappiness", Some("10")));
    assert!(has(&items(d, "mounts"), "ADD", "/models", Some("nfs:storage02:/models [ro]")));
    let services = items(d, "services");
    assert!(has(&services, "MODIFY", "model-server", Some("running")), "{services:?}");
    assert!(!services.iter().any(|(_, k, _)| k == "lattice-node-agent"), "{services:?}");
    // A scope with no entries lists nothing.
    let none = parse_json(&cli.ok(Tok::Flag(&token), &["log", "--scope", "vc:nope", "--output", "json"]));
    assert!(none.arr().is_empty(), "{none:?}");
    assert_eq!(cli.entries(&token).len(), 2);
}

#[test]
fn commit_and_rollback_show_newest_first_and_bad_ones_record_nothing() {
    let j = Journal::start("e2e-commit");
    let cli = Cli::new(&j, "commit");
    let token = j.token();

    let out = cli.ok(Tok::Flag(&token), &["commit", "-m", "first change"]);
    assert_eq!(out.trim(), "COMMIT recorded (seq:1) on vc:default");
    let out = cli.ok(Tok::Flag(&token), &["--vcluster", "ml", "commit", "-m", "msg"]);
    assert_eq!(out.trim(), "COMMIT recorded (seq:2) on vc:ml");
    let out = cli.ok(Tok::Flag(&token), &["--vcluster", "ml", "rollback", "1"]);
    assert_eq!(out.trim(), "ROLLBACK recorded (seq:3) on vc:ml");

    let rows = log_rows(&cli.ok(Tok::Flag(&token), &["log"]));
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [3, 2, 1]);
    assert_eq!((rows[0].1.as_str(), rows[0].2.as_str()), ("ROLLBACK", "vc:ml"));
    assert!(rows[0].3.ends_with("(parent 1)"), "{rows:?}");
    assert_eq!((rows[1].1.as_str(), rows[1].2.as_str(), rows[1].3.as_str()), ("COMMIT", "vc:ml", "msg"));
    assert_eq!((rows[2].1.as_str(), rows[2].3.as_str()), ("COMMIT", "first change"));
    // The JSON view agrees and carries the parent.
    let all = cli.entries(&token);
    assert_eq!(all[0].get("parent").u64(), 1);
    assert_eq!(all[0].get("entry_type").str(), "ROLLBACK");
    assert_eq!(all[1].opt("parent"), None, "{:?}", all[1]);
    // --oldest-first reverses it.
    let rows = log_rows(&cli.ok(Tok::Flag(&token), &["log", "--oldest-first"]));
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);

    // A rollback to an entry that does not exist: refused by the journal, nothing recorded.
    let r = cli.run(Tok::Flag(&token), &["rollback", "999"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("parent 999"), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_eq!(cli.entries(&token).len(), 3);

    // A TTL out of range is refused by the CLI before it connects: the same exit code with
    // an endpoint where nobody listens proves nothing was sent.
    let r = cli.run(Tok::Flag(&token), &["commit", "-m", "x", "--ttl", "10"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--ttl 10"), "{r:?}");
    let nowhere = Cli::at(&format!("127.0.0.1:{}", common::free_port()), &j.ca(), "commit-nowhere");
    let r = nowhere.run(Tok::Flag(&token), &["commit", "-m", "x", "--ttl", "10"]);
    assert_eq!(r.code, 1, "refused before connecting: {r:?}");
    assert_eq!(cli.entries(&token).len(), 3);
    // The edges of the range are accepted.
    let out = cli.ok(Tok::Flag(&token), &["commit", "-m", "timed", "--ttl", "900"]);
    assert!(out.contains("seq:4"), "{out}");
    let all = cli.entries(&token);
    assert_eq!(all[0].get("ttl_seconds").u64(), 900);
}

/// The 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).expect("line in the spec") + 1
}

#[test]
fn bad_specs_name_file_line_and_key_and_record_nothing() {
    let j = Journal::start("e2e-badspec");
    let cli = Cli::new(&j, "badspec");
    let token = j.token();
    // A good vCluster first: a half-applied file would record it.
    let good = "[vcluster.aaa-good]\nbase_image = \"img\"\n[vcluster.aaa-good.sysctl]\n\"vm.swappiness\" = \"10\"\n\n";

    let unknown = format!(
        "{good}[vcluster.zzz]\nbase_image = \"img\"\n[vcluster.zzz.services.chronyd]\nbinary = \"/usr/sbin/chronyd\"\nrestrat = \"always\"\n"
    );
    let f = write(&cli.home, "unknown-key.toml", &unknown);
    let r = cli.run(Tok::Flag(&token), &["apply", f.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    let at = format!("{}:{}:", f.display(), line_of(&unknown, "restrat"));
    assert!(r.stderr.contains(&at), "expected {at:?} in {r:?}");
    assert!(r.stderr.contains("vcluster.zzz.services.chronyd.restrat"), "{r:?}");
    assert!(r.stderr.contains("vcluster.zzz.services.chronyd.restart"), "a suggestion: {r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");

    let wrong_type = format!(
        "{good}[vcluster.zzz]\nbase_image = \"img\"\n[vcluster.zzz.services.chronyd]\nbinary = \"/usr/sbin/chronyd\"\norder = \"first\"\n"
    );
    let f = write(&cli.home, "wrong-type.toml", &wrong_type);
    let r = cli.run(Tok::Flag(&token), &["apply", f.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    let at = format!("{}:{}:", f.display(), line_of(&wrong_type, "order"));
    assert!(r.stderr.contains(&at), "expected {at:?} in {r:?}");
    assert!(r.stderr.contains("vcluster.zzz.services.chronyd.order"), "{r:?}");
    assert!(r.stderr.contains("\"first\""), "names what it found: {r:?}");

    // A quoted dotted key, wrong type (an array for a sysctl value).
    let sysctl = format!("{good}[vcluster.zzz]\n[vcluster.zzz.sysctl]\n\"vm.swappiness\" = [1]\n");
    let f = write(&cli.home, "sysctl.toml", &sysctl);
    let r = cli.run(Tok::Flag(&token), &["apply", f.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    let at = format!("{}:{}:", f.display(), line_of(&sysctl, "\"vm.swappiness\" = [1]"));
    assert!(r.stderr.contains(&at), "expected {at:?} in {r:?}");
    assert!(r.stderr.contains("vcluster.zzz.sysctl.\"vm.swappiness\""), "{r:?}");

    // --dry-run of the good part alone sends nothing either.
    let f = write(&cli.home, "good.toml", good);
    let out = cli.ok(Tok::Flag(&token), &["apply", "--dry-run", f.to_str().unwrap()]);
    assert!(out.starts_with("dry run: nothing sent"), "{out}");
    // A missing file.
    let r = cli.run(Tok::Flag(&token), &["apply", "/nonexistent/spec.toml"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("/nonexistent/spec.toml"), "{r:?}");

    assert!(cli.entries(&token).is_empty(), "nothing may be recorded");
    // And the good part alone is accepted, so the refusals above were about the bad keys.
    let out = cli.ok(Tok::Flag(&token), &["apply", f.to_str().unwrap()]);
    assert_eq!(out.trim(), "COMMIT recorded (seq:1) on vc:aaa-good");
}

#[test]
fn missing_bad_expired_and_foreign_tokens_exit_2_and_record_nothing() {
    let j = Journal::start("e2e-auth");
    let cli = Cli::new(&j, "auth");
    let token = j.token();
    let secret = j.hmac_secret();
    let t = now();

    // The hand-made token machinery is right: a valid one is accepted (and authors its entry).
    let valid = hand_jwt(&secret, "hand-made", t - 60, t - 60, t + 600);
    cli.ok(Tok::Env(&valid), &["commit", "-m", "by a hand-made token"]);
    let all = cli.entries(&token);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].get("author").str(), "hand-made");
    let count = 1;
    // A refused request is never applied; the journal records the refusal itself as a
    // `denied:` ADMIN_OPERATION entry (written in the background), which is not counted here.
    let applied = || cli.entries(&token).iter().filter(|e| !e.get("message").str().starts_with("denied:")).count();

    let refused = |what: &str, r: Run| {
        assert_eq!(r.code, 2, "{what}: {r:?}");
        assert!(r.stdout.is_empty(), "{what}: {r:?}");
        assert_eq!(applied(), count, "{what}: nothing may be applied");
        r.stderr
    };

    // No token anywhere (no flag, no PACT_TOKEN, empty HOME, no config, no dev profile).
    let e = refused("no token", cli.run(Tok::None, &["commit", "-m", "anonymous"]));
    assert!(e.contains("no token"), "{e}");
    assert!(e.contains("--token") && e.contains("PACT_TOKEN"), "says how to give one: {e}");
    refused("no token, read", cli.run(Tok::None, &["log"]));
    // An empty PACT_TOKEN is no token.
    let e = refused("empty token", cli.run(Tok::Env(""), &["commit", "-m", "empty"]));
    assert!(e.contains("no token"), "{e}");

    // Garbage.
    let e = refused("garbage", cli.run(Tok::Flag("garbage"), &["commit", "-m", "garbage"]));
    assert!(e.contains("token"), "{e}");
    refused("three garbage parts", cli.run(Tok::Flag("a.b.c"), &["commit", "-m", "abc"]));
    refused("garbage via env", cli.run(Tok::Env("not-a-jwt"), &["apply", EXAMPLE_SPEC]));

    // Expired an hour ago (well past the 30 s clock-skew tolerance), right key.
    let expired = hand_jwt(&secret, "mallory", t - 7200, t - 7200, t - 3600);
    let e = refused("expired", cli.run(Tok::Flag(&expired), &["commit", "-m", "expired"]));
    assert!(e.to_ascii_lowercase().contains("expired"), "{e}");
    refused("expired, apply", cli.run(Tok::Env(&expired), &["apply", EXAMPLE_SPEC]));
    // Not valid yet.
    let future = hand_jwt(&secret, "mallory", t, t + 3600, t + 7200);
    refused("not yet valid", cli.run(Tok::Flag(&future), &["commit", "-m", "future"]));

    // A well-formed token signed with a different secret, same issuer and audience.
    let other = pact_proto::auth::HmacVerifier::new(b"another-secret-another-secret-xx", "pact-dev", "pact");
    let foreign = other.mint("mallory", "pact-platform-admin", 600).unwrap();
    let e = refused("foreign key", cli.run(Tok::Flag(&foreign), &["commit", "-m", "foreign"]));
    assert!(e.contains("token rejected"), "{e}");
    refused("foreign key, hand-made", cli.run(Tok::Flag(&hand_jwt(b"x", "m", t, t, t + 600)), &["log"]));
    // Right key, wrong issuer.
    let wrong_iss = pact_proto::auth::HmacVerifier::new(&secret, "someone-else", "pact");
    let t2 = wrong_iss.mint("mallory", "pact-platform-admin", 600).unwrap();
    refused("wrong issuer", cli.run(Tok::Flag(&t2), &["commit", "-m", "iss"]));
    // --token wins over PACT_TOKEN: a bad flag with a good variable is still refused.
    let mut c = Command::new(env!("CARGO_BIN_EXE_pact"));
    c.args(["--endpoint", &j.endpoint(), "--ca-cert"])
        .arg(j.ca())
        .args(["--token", &foreign, "commit", "-m", "flag wins"])
        .env("PACT_TOKEN", &token)
        .env("PACT_CLI_CONFIG", "/nonexistent")
        .env("PACT_DEV_DIR", "/nonexistent")
        .env("HOME", &cli.home)
        .current_dir(&cli.home);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--token wins over PACT_TOKEN: {out:?}");
    assert_eq!(applied(), count);
    // Every refusal that reached the journal is on the record, authored by the journal (no
    // caller was verified): ten, all but the three the CLI refused itself (no token twice, empty token).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let denied: Vec<_> = cli
            .entries(&token)
            .into_iter()
            .filter(|e| e.get("message").str().starts_with("denied: ") && e.get("author").str() == "journal-1")
            .collect();
        if denied.len() >= 10 {
            assert!(denied.iter().all(|e| e.get("message").str().contains("unauthenticated")), "{denied:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "refusals not recorded: {denied:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn status_shows_the_leader_and_unknown_nodes_are_errors() {
    let j = Journal::start("e2e-status");
    let cli = Cli::new(&j, "status");
    let token = j.token();
    cli.ok(Tok::Flag(&token), &["commit", "-m", "one"]);

    let text = cli.ok(Tok::Flag(&token), &["status"]);
    assert!(text.starts_with("Journal node 1 (leader)"), "{text}");
    assert!(text.contains("leader 1"), "{text}");
    assert!(text.contains("entries 1, last sequence 1"), "{text}");

    let s = parse_json(&cli.ok(Tok::Flag(&token), &["status", "--output", "json"]));
    assert_eq!(s.get("role").str(), "leader");
    assert_eq!(s.get("node_id").u64(), 1);
    assert_eq!(s.get("leader_id").u64(), 1);
    assert!(s.get("term").u64() >= 1);
    assert_eq!(s.get("entries").u64(), 1);
    assert_eq!(s.get("last_sequence").u64(), 1);
    assert!(s.get("applied_index").u64() >= 1);
    assert_eq!(s.get("voters").arr(), &[Json::Num(1.0)]);
    assert!(!s.get("version").str().is_empty());
    // PACT_OUTPUT works as the flag does.
    let mut c = Command::new(env!("CARGO_BIN_EXE_pact"));
    c.args(["--endpoint", &j.endpoint(), "--ca-cert"])
        .arg(j.ca())
        .args(["--token", &token, "status"])
        .env("PACT_OUTPUT", "json")
        .env("PACT_CLI_CONFIG", "/nonexistent")
        .env("PACT_DEV_DIR", "/nonexistent")
        .env("HOME", &cli.home)
        .current_dir(&cli.home);
    let out = c.output().unwrap();
    assert!(out.status.success());
    assert_eq!(parse_json(&String::from_utf8_lossy(&out.stdout)).get("role").str(), "leader");

    let r = cli.run(Tok::Flag(&token), &["status", "some-node"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no config state recorded"), "{r:?}");
    assert!(r.stderr.contains("some-node"), "{r:?}");
    let r = cli.run(Tok::Flag(&token), &["--output", "json", "status", "some-node"]);
    assert_eq!(r.code, 1, "{r:?}");
}

#[test]
fn an_unreachable_journal_exits_5() {
    let mut j = Journal::start("e2e-unreachable");
    let token = j.token();
    // Nobody listens on a fresh free port.
    let nowhere = Cli::at(&format!("127.0.0.1:{}", common::free_port()), &j.ca(), "unreachable");
    for args in [&["status"][..], &["log"], &["commit", "-m", "lost"], &["apply", EXAMPLE_SPEC]] {
        let r = nowhere.run(Tok::Flag(&token), args);
        assert_eq!(r.code, 5, "{args:?}: {r:?}");
        assert!(r.stderr.contains("unreachable"), "{args:?}: {r:?}");
    }
    // The journal's own port once it has stopped.
    let cli = Cli::new(&j, "stopped");
    cli.ok(Tok::Flag(&token), &["status"]);
    let st = j.terminate().expect("journal was running");
    assert!(st.success(), "SIGTERM: {st}");
    let r = cli.run(Tok::Flag(&token), &["status"]);
    assert_eq!(r.code, 5, "{r:?}");
}

#[test]
fn journal_status_and_membership_commands() {
    let j = Journal::start("e2e-journal");
    let cli = Cli::new(&j, "journal");
    let token = j.token();

    let text = cli.ok(Tok::Flag(&token), &["journal", "status"]);
    assert!(text.contains("leader: 1; quorum healthy"), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("1  voter    leader")), "{text}");

    let q = parse_json(&cli.ok(Tok::Flag(&token), &["--output", "json", "journal", "status"]));
    assert_eq!(q.get("leader_id").u64(), 1);
    assert_eq!(q.get("healthy"), &Json::Bool(true));
    let members = q.get("members").arr();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].get("membership").str(), "voter");
    assert_eq!(members[0].get("role").str(), "leader");
    assert_eq!(members[0].get("lag").u64(), 0);

    // A linearizable read goes through the read index and answers the same.
    cli.ok(Tok::Flag(&token), &["commit", "-m", "read me"]);
    let out = cli.ok(Tok::Flag(&token), &["--linearizable", "log", "-n", "1"]);
    assert!(out.contains("read me"), "{out}");

    // Bad membership requests are refused before or by the journal, changing nothing.
    let r = cli.run(Tok::Flag(&token), &["journal", "add-voter", "2"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--raft-addr"), "{r:?}");
    let r = cli.run(Tok::Flag(&token), &["journal", "remove", "7"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not a member"), "{r:?}");
    let r = cli.run(Tok::Flag(&token), &["journal", "promote", "1"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not a learner"), "{r:?}");
    let r = cli.run(Tok::Flag(&token), &["journal", "frobnicate"]);
    assert_eq!(r.code, 1, "{r:?}");
    let text = cli.ok(Tok::Flag(&token), &["journal", "status"]);
    assert!(text.contains("leader: 1; quorum healthy"), "{text}");
}
