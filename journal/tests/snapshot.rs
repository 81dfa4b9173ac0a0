//! Log compaction and snapshots in a 3-journal quorum (`[journal.raft] snapshot_interval = 20`):
//! - after ~100 appends every journal has compacted its Raft log;
//! - a learner added afterwards cannot be sent the compacted entries, so it catches up through
//!   a snapshot of the leader's applied state, and then follows the log;
//! - a journal restarted (SIGTERM, and kill -9) recovers from its snapshot plus its log (it is
//!   restarted cut off from the others, so what it holds is what it recovered);
//! - a journal that was down while the others compacted past its log catches up by snapshot.
//!
//! Each check: every acknowledged append at its sequence with its payload, sequences gap-free,
//! all replicas identical.

mod cluster;

use cluster::{check_replicas, lock, Cluster, LoadLog, Opts};
use pact_proto::journal::JournalStatus;
use std::sync::Mutex;
use std::time::Duration;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Appends `n` entries, round robin over `via`, each acknowledged (retrying a failed one under
/// a new label: its fate is unknown and the check allows it either way).
fn append_n(c: &Cluster, log: &Mutex<LoadLog>, via: &[u64], prefix: &str, n: usize) {
    let mut done = 0;
    let mut attempt = 0;
    while done < n {
        let id = via[attempt % via.len()];
        attempt += 1;
        assert!(attempt < n * 3 + 20, "too many failed appends: {:?}", lock(log).errored);
        if c.append_via(id, log, &format!("{prefix}-{attempt}")).is_ok() {
            done += 1;
        }
    }
}

fn describe(s: &JournalStatus) -> String {
    format!(
        "journal {}: {} applied {} snapshot {} log {}..={}",
        s.node_id, s.role, s.applied_index, s.snapshot_index, s.first_log_index, s.last_log_index
    )
}

/// The journal's Raft log starts after a compaction snapshot (not the founding one at index 1).
fn assert_compacted(s: &JournalStatus) {
    assert!(s.snapshot_index > 1 && s.first_log_index == s.snapshot_index + 1, "not compacted: {}", describe(s));
}

#[test]
fn learners_and_restarts_recover_through_snapshots() {
    let mut c = Cluster::start("snapshot", 3, Opts { snapshot_interval: Some(20), ..Default::default() });
    let log: Mutex<LoadLog> = Mutex::default();
    append_n(&c, &log, &[1, 2, 3], "first", 100);
    let st = c.wait_settled(secs(30));
    for id in [1, 2, 3] {
        let s = c.status(id).unwrap();
        c.say(&describe(&s));
        assert_compacted(&s);
    }
    check_replicas(&c, &[1, 2, 3], &lock(&log), "after 100 appends");
    let leader_first = st.first_log_index;
    assert!(leader_first > 2, "the leader's log was not compacted: {}", describe(&st));

    // A learner joins: the leader no longer has entries 2..first_log_index, so the learner
    // must install a snapshot covering at least those.
    c.add_node(4, vec![1, 2, 3, 4]);
    c.start_node(4);
    c.add_learner(2, 4);
    c.wait_caught_up(4, secs(30));
    let s4 = c.status(4).unwrap();
    c.say(&format!("learner caught up: {}", describe(&s4)));
    assert_eq!(s4.role, "learner");
    assert!(
        s4.snapshot_index + 1 >= leader_first && s4.first_log_index == s4.snapshot_index + 1,
        "the learner did not start from a snapshot (the leader's log started at {leader_first}): {}",
        describe(&s4)
    );
    c.wait_settled(secs(30));
    check_replicas(&c, &[1, 2, 3, 4], &lock(&log), "learner caught up by snapshot");
    // It follows the log from there.
    append_n(&c, &log, &[1, 2, 3, 4], "after-learner", 30);
    c.wait_settled(secs(30));
    check_replicas(&c, &[1, 2, 3, 4], &lock(&log), "learner follows the log");

    // Restarts recover from snapshot + log: SIGTERM of a follower, kill -9 of the leader.
    let l = c.wait_leader(secs(10));
    let f = [1, 2, 3].into_iter().find(|i| *i != l).unwrap();
    let (before, held) = (c.status(f).unwrap(), c.entries(f));
    assert!(c.terminate(f).unwrap().success());
    // Restarted cut off from the others, it can only have what its own snapshot and log hold.
    c.cut(f);
    c.start_node(f);
    let (after, holds) = (c.status(f).unwrap(), c.entries(f));
    c.say(&format!("restarted {f} (cut off): before {}; after {}", describe(&before), describe(&after)));
    assert_eq!((after.snapshot_index, after.first_log_index), (before.snapshot_index, before.first_log_index));
    assert!(holds == held, "journal {f} did not recover its entries from its snapshot and log");
    c.heal(f);
    c.wait_settled(secs(30));
    let (before, held) = (c.status(l).unwrap(), c.entries(l));
    c.kill9(l);
    c.wait_new_leader(l, secs(20));
    append_n(&c, &log, &[1, 2, 3, 4].into_iter().filter(|i| *i != l).collect::<Vec<_>>(), "leader-down", 10);
    c.cut(l);
    c.start_node(l);
    let (after, holds) = (c.status(l).unwrap(), c.entries(l));
    c.say(&format!("restarted {l} after kill -9 (cut off): before {}; after {}", describe(&before), describe(&after)));
    assert_eq!((after.snapshot_index, after.first_log_index), (before.snapshot_index, before.first_log_index));
    assert!(holds == held, "journal {l} did not recover its entries from its snapshot and log");
    c.heal(l);
    c.wait_caught_up(l, secs(30));
    c.wait_settled(secs(30));
    check_replicas(&c, &[1, 2, 3, 4], &lock(&log), "restarts");

    // A journal down while the others compact past its log catches up by snapshot.
    let l = c.wait_leader(secs(10));
    let f = [1, 2, 3].into_iter().find(|i| *i != l).unwrap();
    c.kill9(f);
    let down_at = c.status(l).unwrap().last_log_index;
    let others: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|i| *i != f).collect();
    append_n(&c, &log, &others, "while-down", 60);
    let ls = c.wait_settled(secs(30));
    assert!(ls.first_log_index > down_at + 1, "the leader did not compact past {down_at}: {}", describe(&ls));
    c.start_node(f);
    c.wait_caught_up(f, secs(30));
    let sf = c.status(f).unwrap();
    c.say(&format!("{f} back after missing compacted entries: {}", describe(&sf)));
    assert!(sf.snapshot_index > down_at, "journal {f} did not catch up through a snapshot: {}", describe(&sf));
    c.wait_settled(secs(30));
    let r = check_replicas(&c, &[1, 2, 3, 4], &lock(&log), "caught up by snapshot after downtime");
    c.assert_all_alive();
    c.say(&format!("done: {r:?}"));
}
