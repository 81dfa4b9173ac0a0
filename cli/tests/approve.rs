//! `pact approve list|accept|deny` end to end: the real `pact` binary against a real
//! `pact-journal --dev`, with per-role tokens. A regulated `pact commit` prints its pending
//! approval and exits 0; the requester's own `accept` is refused (exit 2); ops of the vCluster
//! accepts; `deny` needs a reason; a decided approval is exit 1.

#[path = "../../journal/tests/common/mod.rs"]
mod common;
mod support;

use common::Journal;
use pact_proto::auth::{HmacVerifier, DEV_ISSUER};
use support::{parse_json, Cli, Json, Tok};

fn token(j: &Journal, subject: &str, role: &str) -> String {
    HmacVerifier::new(&j.hmac_secret(), DEV_ISSUER, "pact").mint(subject, role, 600).unwrap()
}

/// The id in "pending approval ID: ...".
fn pending_id(out: &str) -> String {
    let rest = out.strip_prefix("pending approval ").unwrap_or_else(|| panic!("not pending: {out:?}"));
    rest.split(':').next().unwrap().to_string()
}

#[test]
fn approve_list_accept_deny() {
    let j = Journal::start("cli-approve");
    let cli = Cli::new(&j, "approve");
    let admin = j.token();
    let carol = token(&j, "carol", "pact-regulated-ml");
    let alice = token(&j, "alice", "pact-ops-ml");
    let bob = token(&j, "bob", "pact-viewer-ml");

    let out = cli.ok(Tok::Flag(&carol), &["--vcluster", "ml", "commit", "-m", "held change"]);
    let id = pending_id(&out);
    assert!(out.contains("waits for a second person"), "{out}");
    let json =
        parse_json(&cli.ok(Tok::Flag(&carol), &["--vcluster", "ml", "--output", "json", "commit", "-m", "second"]));
    let id2 = json.get("pending_approval_id").str().to_string();
    assert_eq!(id2, json.get("sequence").u64().to_string());

    // list: text and json, pending only by default.
    let text = cli.ok(Tok::Flag(&bob), &["approve", "list"]);
    assert!(text.contains("held change") && text.contains("carol (pact-regulated-ml)"), "{text}");
    let rows = match parse_json(&cli.ok(Tok::Flag(&alice), &["approve", "list", "--output", "json"])) {
        Json::Arr(a) => a,
        other => panic!("{other:?}"),
    };
    let ids: Vec<&str> = rows.iter().map(|r| r.get("id").str()).collect();
    assert_eq!(ids, [id2.as_str(), id.as_str()], "newest first");
    assert!(rows.iter().all(|r| r.get("status").str() == "pending" && r.get("scope").str() == "vc:ml"));

    // The requester and a viewer may not decide (exit 2); deny needs a reason (exit 1, local).
    let r = cli.run(Tok::Flag(&carol), &["approve", "accept", &id]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("second person"), "{r:?}");
    assert_eq!(cli.run(Tok::Flag(&bob), &["approve", "accept", &id]).code, 2);
    let r = cli.run(Tok::Flag(&alice), &["approve", "deny", &id2]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("-m REASON"), "{r:?}");

    // ops of ml accepts one and denies the other.
    let out = cli.ok(Tok::Flag(&alice), &["approve", "accept", &id]);
    assert!(out.starts_with(&format!("approval {id} approved")), "{out}");
    let out = cli.ok(Tok::Flag(&alice), &["approve", "deny", &id2, "-m", "not now"]);
    assert!(out.starts_with(&format!("approval {id2} rejected")), "{out}");
    let r = cli.run(Tok::Flag(&alice), &["approve", "accept", &id]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already approved"), "{r:?}");
    assert_eq!(cli.ok(Tok::Flag(&alice), &["approve", "list"]).trim(), "no pending approvals");
    let all = cli.ok(Tok::Flag(&alice), &["approve", "list", "--all"]);
    assert!(all.contains("rejected by alice (pact-ops-ml): not now"), "{all}");

    // The held commit is in the log, by carol, right after alice's decision.
    let entries = cli.entries(&admin);
    let commit = entries.iter().find(|e| e.get("message").str() == "held change").expect("the held change applied");
    assert_eq!(commit.get("author").str(), "carol");
    assert!(!entries.iter().any(|e| e.get("message").str() == "second"));

    // Help texts.
    let help = cli.ok(Tok::None, &["approve", "--help"]);
    assert!(help.contains("pact approve deny ID -m REASON"), "{help}");
    assert!(cli.ok(Tok::None, &["--help"]).contains("approve accept ID"));
}
