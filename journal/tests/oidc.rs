//! `pact-journal` against a real OpenID provider: images/idp (oidc-provider 8 on Node.js)
//! issues RS256 access tokens for the audience `pact`; a journal started without `--dev`
//! and without an HMAC secret finds the IdP's keys through its discovery document, accepts
//! the IdP's tokens (the entry's author is the token's `sub`), refuses a table of forged and
//! misused tokens with exit code 2 while recording nothing, and follows a key rotation at
//! the IdP (a token with a new `kid` is accepted once the journal refetches the JWKS, and a
//! token signed with the retired key is refused).
//!
//! Needs `node` (18 or later) and `npm`; `images/idp/node_modules` is installed (`npm ci`)
//! when missing. Without them the test prints `SKIP: <reason>` and passes, unless CI=true,
//! where it fails. It also needs the `pact` CLI next to the test's target dir (`cargo build
//! --workspace`, as images/dev/test.sh does).

mod common;
#[path = "../../images/idp/harness.rs"]
mod idp;

use common::{free_port, temp_dir};
use idp::{now_secs, poll, Dir, Idp, OidcJournal as Journal, ADMIN, AUDIENCE, CLIENT_ID, CLIENT_SECRET};
use jwt_simple::prelude::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// How long a key rotation may take to be picked up: the journal refetches the JWKS at most
/// once per 10 s (`pact_proto::auth::MIN_REFRESH`), counted from its last fetch.
const ROTATION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(25);

/// Every variable the CLI reads.
const CLI_ENV: &[&str] =
    &["PACT_ENDPOINT", "PACT_TOKEN", "PACT_TLS_CA", "PACT_VCLUSTER", "PACT_OUTPUT", "PACT_CLI_CONFIG", "PACT_DEV_DIR"];

// ---------------------------------------------------------------------------------------
// The identity provider (images/idp, run by its harness), with `--test-signing`, asked
// for tokens and keys.

/// The IdP's key `kid` (RS256), and `--test-signing`.
fn idp_args(kid: &str) -> [&str; 5] {
    ["--kid", kid, "--alg", "RS256", "--test-signing"]
}

trait TestIdp {
    /// An access token from the token endpoint: client_credentials for `pact-test`, with
    /// the role (and subject) this test chooses.
    fn client_credentials(&self, role: &str, subject: Option<&str>) -> String;
    /// A token signed with the IdP's current key, with any claims (POST /test/sign, which
    /// only `--test-signing` serves): defaults iss = the issuer, aud = pact, sub = pact-test,
    /// iat = now, exp = now + 600; `claims` overrides them (null leaves one out).
    fn sign(&self, claims: Value) -> String;
    /// The public JWKS the IdP serves, found the way the journal finds it (discovery).
    fn jwks(&self) -> Value;
}

impl TestIdp for Idp {
    fn client_credentials(&self, role: &str, subject: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("pact_role", role)];
        if let Some(s) = subject {
            form.push(("pact_subject", s));
        }
        let (code, body) = self.post_token(&form, Some((CLIENT_ID, CLIENT_SECRET)));
        assert_eq!(code, 200, "token endpoint answered {code}: {body}\n{}", self.stderr_text());
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("token response {body:?}: {e}"));
        assert_eq!(v["token_type"], "Bearer", "{body}");
        v["access_token"].as_str().unwrap_or_else(|| panic!("no access_token in {body}")).to_string()
    }

    fn sign(&self, claims: Value) -> String {
        let body = json!({ "claims": claims }).to_string();
        let a = self
            .request("POST", "/test/sign", &[("Content-Type", "application/json".into())], body.as_bytes())
            .unwrap_or_else(|e| panic!("/test/sign: {e}"));
        assert_eq!(a.status, 200, "/test/sign answered {}: {}", a.status, a.body);
        a.body.trim().to_string()
    }

    fn jwks(&self) -> Value {
        let a = self.request("GET", "/.well-known/openid-configuration", &[], b"").unwrap();
        assert_eq!(a.status, 200, "discovery: {}", a.body);
        let doc: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(doc["issuer"], self.issuer().as_str(), "{}", a.body);
        let uri = doc["jwks_uri"].as_str().unwrap().to_string();
        let path = uri.strip_prefix(&self.issuer()).unwrap_or_else(|| panic!("jwks_uri {uri} is not under the issuer"));
        let a = self.request("GET", path, &[], b"").unwrap();
        assert_eq!(a.status, 200, "jwks: {}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// Tokens, taken apart and put together by hand.

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

fn decode_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap_or_else(|| panic!("{token:?} has no part {i}"));
    let bytes = Base64UrlSafeNoPadding::decode_to_vec(part, None).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn header(token: &str) -> Value {
    decode_part(token, 0)
}

fn payload(token: &str) -> Value {
    decode_part(token, 1)
}

// ---------------------------------------------------------------------------------------
// The journal (started by the harness) and the CLI.

/// The `pact` CLI of this workspace, kept from the caller's settings: HOME and the working
/// directory are a temp dir, no PACT_* variable is inherited.
struct Cli {
    bin: PathBuf,
    home: PathBuf,
    endpoint: String,
    ca: PathBuf,
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn new(home: PathBuf, journal: &Journal) -> Cli {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("pact");
        assert!(
            bin.exists(),
            "{} is missing: build it first (`cargo build -p pact-cli`; images/dev/test.sh builds the workspace)",
            bin.display()
        );
        std::fs::create_dir_all(&home).unwrap();
        Cli { bin, home, endpoint: journal.endpoint.clone(), ca: journal.ca.clone() }
    }

    fn run(&self, token: Option<&str>, args: &[&str]) -> Outcome {
        let mut cmd = Command::new(&self.bin);
        for v in CLI_ENV {
            cmd.env_remove(v);
        }
        cmd.env("HOME", &self.home).current_dir(&self.home).stdin(Stdio::null());
        cmd.args(["--endpoint", &self.endpoint]).arg("--ca-cert").arg(&self.ca);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let out = cmd.args(args).output().expect("run pact");
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }

    /// Every entry, newest first (`pact log --output json`), read with `token`.
    fn entries(&self, token: &str) -> Vec<Value> {
        let o = self.run(Some(token), &["--output", "json", "log", "-n", "10000"]);
        assert_eq!(o.code, 0, "pact log failed ({}): {}", o.code, o.stderr);
        serde_json::from_str::<Value>(&o.stdout)
            .unwrap_or_else(|e| panic!("pact log --output json: {e}: {}", o.stdout))
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("pact log --output json is not an array: {}", o.stdout))
    }

    /// `pact commit -m msg` with `token` must succeed and record `msg` by the token's `sub`.
    fn commit_ok(&self, token: &str, msg: &str) {
        let o = self.run(Some(token), &["commit", "-m", msg]);
        assert_eq!(o.code, 0, "pact commit -m {msg} failed ({}): {}", o.code, o.stderr);
        let entries = self.entries(token);
        let e = entries.iter().find(|e| e["message"] == msg).unwrap_or_else(|| panic!("{msg} not in {entries:?}"));
        let claims = payload(token);
        assert_eq!(e["author"], claims["sub"], "the author of {msg} is the token's sub: {e}");
        assert_eq!(e["role"], claims["pact_role"], "the role of {msg} is the token's pact_role: {e}");
        println!("  {msg}: recorded as seq {} by {} ({})", e["sequence"], e["author"], e["role"]);
    }
}

/// Waits until the journal accepts `token` for a read; fails with the journal's log.
fn wait_accepts(journal: &mut Journal, cli: &Cli, token: &str) {
    journal.wait_accepts(|| {
        let o = cli.run(Some(token), &["log", "-n", "1"]);
        (o.code, o.stderr)
    });
}

#[test]
fn journal_verifies_tokens_from_a_real_openid_provider() {
    let dir = Dir(temp_dir("oidc"));
    let Some(idp_src) = idp::prepare_or_skip(&dir.0) else { return };

    // 1. The IdP, with key A.
    let idp_port = free_port();
    let keys_a = dir.0.join("keys-a.json");
    let mut idp = Idp::start(&idp_src, idp_port, &keys_a, &idp_args("a"), &dir.0.join("idp-a.stderr"));
    let issuer = idp.issuer();
    println!("IdP ready at {issuer} (key a)");
    let jwks_a = idp.jwks();
    let key_a =
        jwks_a["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "a").cloned().expect("kid a in the JWKS");

    // 2. The journal: issuer and audience only, so its keys come from discovery.
    let mut journal = Journal::start(&dir.0, &issuer);
    let cli = Cli::new(dir.0.join("home"), &journal);

    // 3. An IdP token works, and its sub is the author.
    let admin = idp.client_credentials(ADMIN, None);
    let h = header(&admin);
    assert_eq!((h["alg"].as_str(), h["kid"].as_str()), (Some("RS256"), Some("a")), "{h}");
    let claims = payload(&admin);
    assert_eq!(
        (claims["iss"].as_str(), claims["aud"].as_str(), claims["sub"].as_str(), claims["pact_role"].as_str()),
        (Some(issuer.as_str()), Some(AUDIENCE), Some(CLIENT_ID), Some(ADMIN)),
        "{claims}"
    );
    wait_accepts(&mut journal, &cli, &admin);
    let accepted_at = Instant::now();
    cli.commit_ok(&admin, "ok-1");

    // 4. The attacks: each is refused with exit 2 and records nothing.
    let now = now_secs();
    let signed = |claims: Value| idp.sign(claims);
    // Controls: tokens made the same ways as the attacks below, with nothing wrong in them,
    // are accepted (so each attack is refused for its one defect).
    let control_signed = signed(json!({ "pact_role": ADMIN }));
    let viewer = idp.client_credentials("pact-viewer-x", None);
    for (what, token) in [("/test/sign, good claims", &control_signed), ("IdP token, pact-viewer-x", &viewer)] {
        let o = cli.run(Some(token), &["log", "-n", "1"]);
        assert_eq!(o.code, 0, "control ({what}) must be accepted: {}", o.stderr);
        println!("control: {what}: accepted");
    }

    let good_payload = Base64UrlSafeNoPadding::encode_to_string(payload(&admin).to_string()).unwrap();
    let alg_none = format!("{}.{good_payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let rsa_a = RS256PublicKey::from_jwk(&key_a.to_string()).expect("key a as an RSA public key");
    let pem_a = rsa_a.to_pem().unwrap();
    let hs256_with = |secret: &[u8]| {
        let mut custom = serde_json::Map::new();
        custom.insert("pact_role".into(), ADMIN.into());
        let c = Claims::with_custom_claims(custom, Duration::from_secs(600))
            .with_issuer(&issuer)
            .with_audience(AUDIENCE)
            .with_subject("mallory");
        HS256Key::from_bytes(secret).with_key_id("a").authenticate(c).unwrap()
    };
    let forged_role = {
        let mut parts: Vec<String> = viewer.split('.').map(str::to_string).collect();
        let mut p = payload(&viewer);
        p["pact_role"] = ADMIN.into();
        parts[1] = b64(p.to_string().as_bytes());
        parts.join(".")
    };
    let unknown_kid = {
        // Signed with key A, but naming a kid the JWKS does not list.
        let mut parts: Vec<String> = control_signed.split('.').map(str::to_string).collect();
        let mut h = header(&control_signed);
        h["kid"] = "zzz".into();
        parts[0] = b64(h.to_string().as_bytes());
        parts.join(".")
    };
    let rows: Vec<(&str, Option<String>)> = vec![
        ("1 no token", None),
        ("2 malformed (abc.def)", Some("abc.def".into())),
        (
            "3 expired (exp now-1h, RS256 key a)",
            Some(signed(json!({ "pact_role": ADMIN, "iat": now - 7200, "exp": now - 3600 }))),
        ),
        ("4 not yet valid (nbf now+1h)", Some(signed(json!({ "pact_role": ADMIN, "nbf": now + 3600 })))),
        ("5 wrong issuer", Some(signed(json!({ "pact_role": ADMIN, "iss": "https://evil.example/realms/pact" })))),
        ("6 wrong audience", Some(signed(json!({ "pact_role": ADMIN, "aud": "not-pact" })))),
        ("7 alg none", Some(alg_none)),
        ("8a HS256, secret = key a's public PEM", Some(hs256_with(pem_a.as_bytes()))),
        ("8b HS256, secret = key a's public JWK", Some(hs256_with(key_a.to_string().as_bytes()))),
        ("9 role forged after signing (viewer->admin)", Some(forged_role)),
        ("10 unknown kid (key a, kid zzz)", Some(unknown_kid)),
        ("11 no sub", Some(signed(json!({ "pact_role": ADMIN, "sub": null })))),
        ("12 no exp", Some(signed(json!({ "pact_role": ADMIN, "exp": null })))),
    ];
    // Each attack must be refused (exit 2), must not be applied, and must leave exactly one
    // new entry: the journal's `denied:` record of it (row 1 never reaches the journal: the
    // CLI refuses to send a request without a token). The records are written in the
    // background, so the count is polled.
    let mut count = cli.entries(&admin).len();
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for (i, (name, token)) in rows.iter().enumerate() {
        let msg = format!("attack-{}", i + 1);
        let o = cli.run(token.as_deref(), &["commit", "-m", &msg]);
        let want_records = usize::from(token.is_some());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let after = loop {
            let after = cli.entries(&admin);
            if after.len() >= count + want_records || std::time::Instant::now() > deadline {
                break after;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let applied = after.iter().any(|e| e["message"] == msg.as_str());
        let new: Vec<&Value> = after.iter().filter(|e| e["sequence"].as_u64().unwrap_or(0) > count as u64).collect();
        count = after.len();
        let denial_recorded = new.len() == want_records
            && new.iter().all(|e| {
                e["message"].as_str().is_some_and(|m| m.starts_with("denied: AppendEntry: unauthenticated:"))
                    && e["author"] == "journal-1"
            });
        let why = o.stderr.lines().last().unwrap_or("").trim_start_matches("pact: ").to_string();
        if o.code != 2 || applied || !denial_recorded {
            failures.push(format!(
                "{name}: exit {} (want 2), applied {applied}, new entries {new:?}: {} {}",
                o.code, o.stdout, o.stderr
            ));
        }
        let record = match (want_records, new.first()) {
            (0, _) => "-".to_string(),
            (_, Some(e)) => format!("seq {}", e["sequence"]),
            (_, None) => "MISSING".to_string(),
        };
        table.push((name.to_string(), o.code, applied, record, why));
    }
    println!("\n{:<44} {:>4} {:<8} {:<9} journal/CLI said", "attack", "exit", "applied", "denial");
    for (name, code, applied, record, why) in &table {
        let verdict = if *code == 2 && !applied && record != "MISSING" { "" } else { "   <-- WRONG" };
        println!("{name:<44} {code:>4} {:<8} {record:<9} {why}{verdict}", if *applied { "YES" } else { "no" });
    }
    println!();
    assert!(
        failures.is_empty(),
        "attacks not refused:\n{}\n--- journal log ---\n{}",
        failures.join("\n"),
        journal.log_text()
    );
    assert!(
        !cli.entries(&admin).iter().any(|e| e["message"].as_str().is_some_and(|m| m.starts_with("attack-"))),
        "an attack was recorded"
    );

    // 5. Rotation: the IdP restarts on the same port with key B only.
    idp.stop();
    let keys_b = dir.0.join("keys-b.json");
    let mut idp = Idp::start(&idp_src, idp_port, &keys_b, &idp_args("b"), &dir.0.join("idp-b.stderr"));
    let jwks_b = idp.jwks();
    let kids: Vec<&str> = jwks_b["keys"].as_array().unwrap().iter().filter_map(|k| k["kid"].as_str()).collect();
    assert_eq!(kids, ["b"], "the rotated IdP serves key b only");
    println!(
        "IdP restarted with key b only ({:.1} s after the journal first accepted a token)",
        accepted_at.elapsed().as_secs_f64()
    );
    let rotated = idp.client_credentials(ADMIN, Some("ops-rotated"));
    assert_eq!(header(&rotated)["kid"], "b");
    // The journal refetches on the unknown kid b, but at most once per 10 s since its last
    // fetch (at start-up or at the first token): refused until then, accepted after.
    let rotation_started = Instant::now();
    let mut attempts = Vec::new();
    let ok = poll(ROTATION_DEADLINE, std::time::Duration::from_millis(500), || {
        let o = cli.run(Some(&rotated), &["log", "-n", "1"]);
        attempts.push((rotation_started.elapsed().as_secs_f64(), o.code, o.stderr.clone()));
        (o.code == 0).then_some(())
    });
    let refused_first = attempts.iter().filter(|(_, c, _)| *c != 0).count();
    assert!(
        ok.is_some(),
        "a token signed with the new key b was not accepted within {ROTATION_DEADLINE:?}: {:?}\n--- journal log ---\n{}",
        attempts.last(),
        journal.log_text()
    );
    println!(
        "rotation: kid b accepted {:.1} s after the restart ({refused_first} refused attempt(s) before, e.g. {:?})",
        rotation_started.elapsed().as_secs_f64(),
        attempts.first().map(|a| a.2.as_str()).unwrap_or("")
    );
    for (_, code, stderr) in attempts.iter().filter(|(_, c, _)| *c != 0) {
        assert_eq!(*code, 2, "before the refetch, the kid-b token is refused as unauthenticated: {stderr}");
    }
    cli.commit_ok(&rotated, "ok-2");
    // The retired key A: refused now that the journal holds B's JWKS.
    let old_read = cli.run(Some(&admin), &["log", "-n", "1"]);
    let old_write = cli.run(Some(&admin), &["commit", "-m", "retired-key"]);
    let after = cli.entries(&rotated);
    println!(
        "retired key a: log exit {} ({}), commit exit {} ({})",
        old_read.code, old_read.stderr, old_write.code, old_write.stderr
    );
    assert_eq!(old_read.code, 2, "a token signed with the retired key a must be refused: {}", old_read.stderr);
    assert_eq!(old_write.code, 2, "a token signed with the retired key a must be refused: {}", old_write.stderr);
    assert!(!after.iter().any(|e| e["message"] == "retired-key"), "a commit with the retired key was applied");

    idp.stop();
    journal.proc.kill();
}
