//! `pact enroll` and `pact node enroll|list|inspect|decommission` end to end: the real `pact`
//! binary against a real `pact-journal --dev`. A batch file registers what it can and names
//! each line the journal refused (exit 1); the same file again is a no-op; `list` filters by
//! state and vCluster, as text and JSON; only a platform admin registers or decommissions
//! (exit 2); a decommissioned node lists as revoked and frees its hardware for another.

#[path = "../../journal/tests/common/mod.rs"]
mod common;
mod support;

use common::Journal;
use pact_proto::auth::{HmacVerifier, DEV_ISSUER};
use support::{parse_json, Cli, Json, Tok};

fn token(j: &Journal, subject: &str, role: &str) -> String {
    HmacVerifier::new(&j.hmac_secret(), DEV_ISSUER, "pact").mint(subject, role, 600).unwrap()
}

fn rows(text: &str) -> Vec<Json> {
    match parse_json(text) {
        Json::Arr(a) => a,
        other => panic!("not a JSON array: {other:?}"),
    }
}

#[test]
fn enroll_batch_list_inspect_decommission() {
    let j = Journal::start("cli-enroll");
    let cli = Cli::new(&j, "enroll");
    let admin = j.token();
    let ops = token(&j, "olga", "pact-ops-ml");

    // One node by hardware id (two fields), one by --mac.
    let out = cli.ok(
        Tok::Flag(&admin),
        &[
            "enroll",
            "gpu-001",
            "--hardware-id",
            "aa:bb:cc:00:00:01",
            "--hardware-id",
            "uuid:4C4C4544-0042-3510-8052-B2C04F4E3232",
        ],
    );
    assert!(out.contains("gpu-001"), "{out}");
    cli.ok(Tok::Flag(&admin), &["node", "enroll", "gpu-002", "--mac", "AA-BB-CC-00-00-02", "--bmc-serial", "BMC2"]);
    // Ops may not register (exit 2), nor may anyone reuse a MAC (exit 4: conflict).
    let r = cli.run(Tok::Flag(&ops), &["node", "enroll", "gpu-009", "--mac", "aa:bb:cc:00:00:09"]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = cli.run(Tok::Flag(&admin), &["node", "enroll", "gpu-009", "--mac", "aa:bb:cc:00:00:02"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("already registered to node gpu-002"), "{r:?}");

    // A batch: three good lines, one whose MAC is taken; refused lines are named, exit 1.
    let csv = j.dir.join("nodes.csv");
    std::fs::write(
        &csv,
        "node_id,mac,bmc_serial\n# rack 4\ncpu-101,aa:bb:cc:01:01:01,S101\ncpu-102,aa:bb:cc:01:01:02\n\n\
         cpu-103,aa:bb:cc:01:01:03,S103\ncpu-104,aa:bb:cc:00:00:01\n",
    )
    .unwrap();
    let r = cli.run(Tok::Flag(&admin), &["node", "enroll", "--batch", csv.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("cpu-104") && r.stdout.contains("gpu-001"), "{r:?}");
    assert!(r.stderr.contains("enrolled 3 of 4 nodes (1 failed)"), "{r:?}");
    // A bad file is refused before anything is sent, naming the line.
    let bad = j.dir.join("bad.csv");
    std::fs::write(&bad, "cpu-201,aa:bb:cc:02:02:01\ncpu-202,not-a-mac\n").unwrap();
    let r = cli.run(Tok::Flag(&admin), &["node", "enroll", "--batch", bad.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("bad.csv:2"), "{r:?}");

    // list: every node registered; JSON carries the same.
    let text = cli.ok(Tok::Flag(&admin), &["node", "list"]);
    for n in ["gpu-001", "gpu-002", "cpu-101", "cpu-102", "cpu-103"] {
        assert!(text.contains(n), "{n} missing:\n{text}");
    }
    assert!(!text.contains("cpu-201") && !text.contains("cpu-104"), "{text}");
    let all = rows(&cli.ok(Tok::Flag(&admin), &["node", "list", "--output", "json"]));
    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|n| n.get("state").str() == "registered"), "{all:?}");
    // Assigned nodes: ops of ml sees those (and only those); --vcluster and --unassigned filter.
    cli.ok(Tok::Flag(&admin), &["node", "assign", "cpu-101", "--vcluster", "ml"]);
    let seen = rows(&cli.ok(Tok::Flag(&ops), &["node", "list", "--output", "json"]));
    assert_eq!(seen.iter().map(|n| n.get("node_id").str()).collect::<Vec<_>>(), ["cpu-101"]);
    let ml = rows(&cli.ok(Tok::Flag(&admin), &["node", "list", "--vcluster", "ml", "--output", "json"]));
    assert_eq!(ml.len(), 1);
    let free = rows(&cli.ok(Tok::Flag(&admin), &["node", "list", "--unassigned", "--output", "json"]));
    assert_eq!(free.len(), 4);

    // inspect: the registration as recorded (MACs normalised).
    let inspect = cli.ok(Tok::Flag(&admin), &["node", "inspect", "gpu-002"]);
    assert!(inspect.contains("aa:bb:cc:00:00:02") && inspect.contains("BMC2"), "{inspect}");
    assert!(inspect.contains("registered") && inspect.contains("dev-admin"), "{inspect}");
    let r = cli.run(Tok::Flag(&admin), &["node", "inspect", "nosuch"]);
    assert_eq!(r.code, 1, "{r:?}");
    // Whether a node exists is for those who may read it: ops of ml is refused, not told.
    let r = cli.run(Tok::Flag(&ops), &["node", "inspect", "nosuch"]);
    assert_eq!(r.code, 2, "{r:?}");

    // decommission: admin only; then revoked, and its MAC free for another node.
    let r = cli.run(Tok::Flag(&ops), &["node", "decommission", "gpu-002"]);
    assert_eq!(r.code, 2, "{r:?}");
    let out = cli.ok(Tok::Flag(&admin), &["node", "decommission", "gpu-002", "--force"]);
    assert!(out.starts_with("decommissioned gpu-002"), "{out}");
    let revoked = rows(&cli.ok(Tok::Flag(&admin), &["node", "list", "--state", "revoked", "--output", "json"]));
    assert_eq!(revoked.iter().map(|n| n.get("node_id").str()).collect::<Vec<_>>(), ["gpu-002"]);
    cli.ok(Tok::Flag(&admin), &["node", "enroll", "gpu-009", "--mac", "aa:bb:cc:00:00:02"]);
    let r = cli.run(Tok::Flag(&admin), &["node", "decommission", "gpu-002"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already decommissioned"), "{r:?}");

    // Each registration and the decommissioning are journal entries by the admin.
    let entries = cli.entries(&admin);
    let kinds: Vec<&str> = entries.iter().map(|e| e.get("entry_type").str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "NODE_ENROLLED").count(), 6, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "NODE_DECOMMISSIONED").count(), 1, "{kinds:?}");
}
