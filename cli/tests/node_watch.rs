//! End to end: `pact node assign|move|unassign`, `[node.NAME]` specs in `pact apply`, and
//! `pact watch`, with the real `pact` binary against a real `pact-journal --dev`.

#[path = "../../journal/tests/common/mod.rs"]
mod common;
mod support;

use common::Journal;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{log_rows, parse_json, write, Cli, Json, Tok};

/// Long enough for a journal on a loaded CI machine, short enough that a watch that never
/// prints fails the test instead of hanging it.
const WATCH_LIMIT: Duration = Duration::from_secs(30);

/// `[HH:MM:SS] seq:N KIND detail` split into (clock, seq, kind, detail).
fn watch_line(line: &str) -> (String, u64, String, String) {
    let (clock, rest) = line.split_once("] ").unwrap_or_else(|| panic!("no [time] in {line:?}"));
    let clock = clock.strip_prefix('[').unwrap_or_else(|| panic!("no [time] in {line:?}"));
    let ok_clock = clock.len() == 8
        && clock.char_indices().all(|(i, c)| if i == 2 || i == 5 { c == ':' } else { c.is_ascii_digit() });
    assert!(ok_clock, "time is not HH:MM:SS in {line:?}");
    let mut f = rest.splitn(3, ' ');
    let seq = f.next().and_then(|s| s.strip_prefix("seq:")).and_then(|s| s.parse().ok());
    let seq = seq.unwrap_or_else(|| panic!("no seq:N in {line:?}"));
    let kind = f.next().unwrap_or_default().to_string();
    (clock.to_string(), seq, kind, f.next().unwrap_or_default().to_string())
}

#[test]
fn watch_line_reader_reads_what_it_should() {
    let (clock, seq, kind, detail) = watch_line("[09:05:00] seq:12 OVERLAY vc=ml version=12 checksum=abcd1234ef01…");
    assert_eq!((clock.as_str(), seq, kind.as_str()), ("09:05:00", 12, "OVERLAY"));
    assert_eq!(detail, "vc=ml version=12 checksum=abcd1234ef01…");
}

#[test]
fn assign_move_unassign_round_trip() {
    let j = Journal::start("nw-assign");
    let cli = Cli::new(&j, "assign");
    let token = j.token();

    // --vcluster is a global option: before the command works as well as after.
    let out = cli.ok(Tok::Flag(&token), &["--vcluster", "ml", "node", "assign", "n1"]);
    assert_eq!(out.trim(), "NODE_ASSIGNED recorded (seq:1) on node:n1");
    // Already in ml: assigning it elsewhere is refused by the journal and records nothing.
    let r = cli.run(Tok::Flag(&token), &["node", "assign", "n1", "--vcluster", "inference"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.starts_with("pact: ") && r.stderr.contains("n1"), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    let out = cli.ok(Tok::Flag(&token), &["node", "move", "n1", "--to-vcluster", "inference"]);
    assert_eq!(out.trim(), "NODE_MOVED recorded (seq:2) on node:n1");
    let out = cli.ok(Tok::Flag(&token), &["node", "unassign", "n1"]);
    assert_eq!(out.trim(), "NODE_UNASSIGNED recorded (seq:3) on node:n1");
    // Not assigned any more (n1) or never (n2): nothing to unassign or move.
    for args in [&["node", "unassign", "n1"][..], &["node", "move", "n2", "--to-vcluster", "ml"]] {
        let r = cli.run(Tok::Flag(&token), args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("pact: "), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
    assert_eq!(cli.entries(&token).len(), 3, "the refusals recorded nothing");

    // The log shows the three, newest first, with the vCluster each one moved the node to.
    let rows = log_rows(&cli.ok(Tok::Flag(&token), &["log", "--scope", "node:n1"]));
    let summary: Vec<(u64, &str, &str, &str)> =
        rows.iter().map(|(s, t, sc, m)| (*s, t.as_str(), sc.as_str(), m.as_str())).collect();
    assert_eq!(
        summary,
        [
            (3, "NODE_UNASSIGNED", "node:n1", "unassign"),
            (2, "NODE_MOVED", "node:n1", "move to inference"),
            (1, "NODE_ASSIGNED", "node:n1", "assign to ml"),
        ]
    );
    let all = cli.entries(&token);
    let targets: Vec<Option<&str>> = all.iter().map(|e| e.opt("target_vcluster").map(Json::str)).collect();
    assert_eq!(targets, [None, Some("inference"), Some("ml")]);
    assert!(all.iter().all(|e| e.get("author").str() == "dev-admin"), "{all:?}");

    // JSON output, as the other append commands give it.
    let j2 = parse_json(&cli.ok(Tok::Flag(&token), &["--output", "json", "node", "assign", "n1", "--vcluster", "ml"]));
    assert_eq!(j2.get("sequence").u64(), 4);
    assert_eq!(j2.get("entry_type").str(), "NODE_ASSIGNED");
    assert_eq!(j2.get("scope").str(), "node:n1");
    assert!(!j2.get("timestamp").str().is_empty());

    // A default vCluster from the environment is not enough to assign: refused before sending.
    let out = cli
        .command(Tok::Flag(&token), &["node", "assign", "n2"])
        .env("PACT_VCLUSTER", "ml")
        .output()
        .expect("run pact");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs --vcluster NAME on the command line"), "{stderr}");
    assert_eq!(cli.entries(&token).len(), 4);
}

#[test]
fn watch_prints_overlay_updates_for_the_vcluster_it_follows() {
    let j = Journal::start("nw-watch-vc");
    let cli = Cli::new(&j, "watch-vc");
    let token = j.token();
    let ml = write(&cli.home, "ml.toml", "[vcluster.ml.sysctl]\n\"vm.swappiness\" = \"10\"\n");
    let other = write(&cli.home, "other.toml", "[vcluster.other.sysctl]\n\"vm.swappiness\" = \"60\"\n");
    assert_eq!(cli.ok(Tok::Flag(&token), &["apply", ml.to_str().unwrap()]).trim(), "COMMIT recorded (seq:1) on vc:ml");
    assert_eq!(
        cli.ok(Tok::Flag(&token), &["apply", other.to_str().unwrap()]).trim(),
        "COMMIT recorded (seq:2) on vc:other"
    );

    let r =
        cli.run_within(WATCH_LIMIT, Tok::Flag(&token), &["watch", "--vcluster", "ml", "--count", "1", "--from", "0"]);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{r:?}");
    let (_, seq, kind, detail) = watch_line(lines[0]);
    assert_eq!((seq, kind.as_str()), (1, "OVERLAY"), "{r:?}");
    assert!(detail.starts_with("vc=ml version="), "{r:?}");
    // The checksum is shortened to 12 characters and an ellipsis.
    let sum = detail.split("checksum=").nth(1).unwrap_or_else(|| panic!("no checksum in {detail:?}"));
    assert_eq!(sum.chars().count(), 13, "{detail:?}");
    assert!(sum.ends_with('…'), "{detail:?}");

    // The other vCluster's stream starts at its own update.
    let r = cli.run_within(
        WATCH_LIMIT,
        Tok::Flag(&token),
        &["watch", "--vcluster", "other", "--count", "1", "--from", "0"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let (_, seq, kind, detail) = watch_line(r.stdout.trim_end());
    assert_eq!((seq, kind.as_str()), (2, "OVERLAY"), "{r:?}");
    assert!(detail.starts_with("vc=other "), "{r:?}");

    // One JSON object per line, with the whole checksum.
    let r = cli.run_within(
        WATCH_LIMIT,
        Tok::Flag(&token),
        &["--output", "json", "watch", "--vcluster", "ml", "--count", "1", "--from", "0"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 1, "{r:?}");
    let u = parse_json(&r.stdout);
    assert_eq!(u.get("kind").str(), "OVERLAY");
    assert_eq!(u.get("sequence").u64(), 1);
    assert_eq!(u.get("vcluster_id").str(), "ml");
    let sum = u.get("checksum").str();
    assert!(sum.len() > 12 && sum.chars().all(|c| c.is_ascii_hexdigit()), "{u:?}");
    assert!(u.get("timestamp").str().ends_with('Z'), "{u:?}");
}

#[test]
fn watch_without_from_starts_now() {
    let j = Journal::start("nw-watch-now");
    let cli = Cli::new(&j, "watch-now");
    let token = j.token();
    let spec = |n: u32| {
        let p =
            write(&cli.home, &format!("ml-{n}.toml"), &format!("[vcluster.ml.sysctl]\n\"vm.swappiness\" = \"{n}\"\n"));
        p.to_str().unwrap().to_string()
    };
    cli.ok(Tok::Flag(&token), &["apply", &spec(0)]);

    let mut watch = cli
        .command(Tok::Flag(&token), &["watch", "--vcluster", "ml", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pact watch");
    // The watch subscribes at some moment after it starts; changes keep coming until it has
    // seen one. What it prints must be one of them, never the change from before it started.
    let deadline = Instant::now() + WATCH_LIMIT;
    let mut n = 0;
    let status = loop {
        if let Some(st) = watch.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = watch.kill();
            let out = watch.wait_with_output().unwrap();
            panic!("pact watch printed no update in {WATCH_LIMIT:?}: {out:?}");
        }
        n += 1;
        cli.ok(Tok::Flag(&token), &["apply", &spec(n)]);
        std::thread::sleep(Duration::from_millis(300));
    };
    let out = watch.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(status.success(), "{status} {out:?}");
    let (_, seq, kind, detail) = watch_line(stdout.trim_end());
    assert_eq!(kind, "OVERLAY", "{stdout}");
    assert!(detail.starts_with("vc=ml "), "{stdout}");
    assert!(seq >= 2, "replayed the change from before the watch started: {stdout}");
}

#[test]
fn node_specs_are_applied_and_watched_as_node_deltas() {
    let j = Journal::start("nw-node-spec");
    let cli = Cli::new(&j, "node-spec");
    let token = j.token();

    let node_only = write(
        &cli.home,
        "n1.toml",
        "[node.n1.sysctl]\n\"vm.nr_hugepages\" = 64\n[node.n1.mounts]\n\"/local\" = { type = \"xfs\", source = \"/dev/nvme0n1\" }\n",
    );
    // --dry-run shows the node's entry and sends nothing.
    let out = cli.ok(Tok::Flag(&token), &["apply", "--dry-run", node_only.to_str().unwrap()]);
    assert!(out.starts_with("dry run: nothing sent"), "{out}");
    assert!(out.contains("node:n1") && out.contains("vm.nr_hugepages"), "{out}");
    assert!(cli.entries(&token).is_empty());

    let out = cli.ok(Tok::Flag(&token), &["apply", node_only.to_str().unwrap()]);
    assert_eq!(out.trim(), "COMMIT recorded (seq:1) on node:n1");
    let e = &cli.entries(&token)[0];
    assert_eq!((e.get("entry_type").str(), e.get("scope").str()), ("COMMIT", "node:n1"));
    assert!(e.get("message").str().starts_with("apply:"), "{e:?}");
    let d = e.get("state_delta");
    assert_eq!(d.get("kernel").arr()[0].get("key").str(), "vm.nr_hugepages");
    assert_eq!(d.get("mounts").arr()[0].get("key").str(), "/local");

    let r = cli.run_within(WATCH_LIMIT, Tok::Flag(&token), &["watch", "--node", "n1", "--from", "0", "--count", "1"]);
    assert_eq!(r.code, 0, "{r:?}");
    let (_, seq, kind, detail) = watch_line(r.stdout.trim_end());
    assert_eq!((seq, kind.as_str()), (1, "NODE_DELTA"), "{r:?}");
    assert!(detail.starts_with("node=n1 version="), "{r:?}");

    // vClusters and nodes in one file: vClusters first, each sorted by name.
    let both = write(
        &cli.home,
        "both.toml",
        "[node.n3.sysctl]\n\"vm.swappiness\" = 1\n[vcluster.ml.sysctl]\n\"vm.swappiness\" = 10\n[node.n2.sysctl]\n\"vm.swappiness\" = 2\n",
    );
    let out = cli.ok(Tok::Flag(&token), &["apply", both.to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "COMMIT recorded (seq:2) on vc:ml",
            "COMMIT recorded (seq:3) on node:n2",
            "COMMIT recorded (seq:4) on node:n3"
        ]
    );

    // A vCluster-only key in a node table: file, line and key, and nothing recorded.
    let text =
        "[vcluster.vc.sysctl]\n\"vm.swappiness\" = 10\n[node.n4]\nsysctl = {}\n[node.n4.policy]\nregulated = true\n";
    let bad = write(&cli.home, "bad.toml", text);
    let r = cli.run(Tok::Flag(&token), &["apply", bad.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&format!("{}:5:", bad.display())), "{r:?}");
    assert!(r.stderr.contains("unknown key `node.n4.policy`"), "{r:?}");
    assert!(r.stderr.contains("vCluster-wide"), "{r:?}");
    assert_eq!(cli.entries(&token).len(), 4);
}
