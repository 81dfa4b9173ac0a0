//! A 3-journal quorum under a steady stream of appends from 3 clients (each starting on its
//! own journal, moving to the next one on any error), through a sequence of faults:
//!
//! 1. kill -9 of the leader, then its restart on the same data dir;
//! 2. SIGSTOP of a follower for about 2 s, then SIGCONT;
//! 3. a restart (SIGTERM, start) of every journal, one by one;
//! 4. a network cut of the leader's Raft traffic, then of a follower's, each healed;
//! 5. membership: a 4th journal added as a learner, promoted to voter, a 5th added as a voter,
//!    then one of the founding voters removed, then the leader itself.
//!
//! After each fault the clients pause, the cluster settles, and on every member: every
//! acknowledged append is present exactly once, at its acknowledged sequence, with its payload;
//! sequences are 1..=N without a gap; every entry is one a client sent, once; all replicas hold
//! the same entries. Unacknowledged appends may or may not be present.

mod cluster;

use cluster::{check_replicas, has_member, lock, settle_and_check, Cluster, Load, LoadLog, Opts};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn three_journals_keep_every_acknowledged_append_through_faults() {
    let mut c = Cluster::start("quorum", 3, Opts::default());
    c.say("3 journals up");
    let load = Load::start(&c, 3, c.endpoints(&[1, 2, 3]));
    load.wait_progress(30, secs(30));
    settle_and_check(&c, &load, "baseline");

    // 1. kill -9 the leader under load; the other two elect a leader and keep accepting
    //    appends; the old leader restarts on its data dir and catches up.
    let old = c.wait_leader(secs(10));
    load.wait_progress(20, secs(30));
    c.kill9(old);
    let new = c.wait_new_leader(old, secs(20));
    c.say(&format!("killed leader {old}; new leader {new}"));
    load.wait_progress(20, secs(30));
    c.start_node(old);
    c.wait_caught_up(old, secs(30));
    settle_and_check(&c, &load, "kill -9 of the leader");

    // 2. SIGSTOP a follower for ~2 s: the other two keep going; it catches up after SIGCONT.
    let l = c.wait_leader(secs(10));
    let f = [1, 2, 3].into_iter().find(|i| *i != l).unwrap();
    load.wait_progress(10, secs(30));
    let frozen_at = Instant::now();
    c.freeze(f);
    load.wait_progress(10, secs(30));
    if let Some(rest) = Duration::from_secs(2).checked_sub(frozen_at.elapsed()) {
        std::thread::sleep(rest);
    }
    c.thaw(f);
    c.say(&format!("follower {f} was stopped for {:.1}s", frozen_at.elapsed().as_secs_f64()));
    c.wait_caught_up(f, secs(30));
    settle_and_check(&c, &load, "SIGSTOP/SIGCONT of a follower");

    // 3. Restart every journal, one by one (SIGTERM, then start on the same data dir).
    for id in [1, 2, 3] {
        let st = c.terminate(id).expect("journal was running");
        assert!(st.success(), "journal {id} exited with {st} on SIGTERM");
        c.start_node(id);
        c.wait_leader(secs(20));
        c.wait_caught_up(id, secs(30));
        load.wait_progress(10, secs(30));
        c.say(&format!("restarted journal {id}"));
    }
    settle_and_check(&c, &load, "rolling restart");

    // 4. Cut the leader off (Raft traffic both ways): the other two elect a new leader and
    //    keep going; after healing, the old leader rejoins as a follower.
    let l = c.wait_leader(secs(10));
    load.wait_progress(10, secs(30));
    c.cut(l);
    let new = c.wait_new_leader(l, secs(20));
    c.say(&format!("cut leader {l} off; {new} leads"));
    load.wait_progress(20, secs(30));
    c.say("progress");
    c.heal(l);
    c.say(&format!("cut leader {l} off; {new} led meanwhile; healed"));
    c.wait_caught_up(l, secs(30));
    settle_and_check(&c, &load, "cut of the leader");
    //    Then a follower: the leader keeps its quorum; the follower catches up after healing.
    let l = c.wait_leader(secs(10));
    let f = [1, 2, 3].into_iter().find(|i| *i != l).unwrap();
    c.cut(f);
    load.wait_progress(20, secs(30));
    c.heal(f);
    c.say(&format!("cut follower {f} off and healed"));
    c.wait_caught_up(f, secs(30));
    settle_and_check(&c, &load, "cut of a follower");

    // 5. Membership. A 4th journal, started empty, added as a learner: it catches up and
    //    serves reads but does not vote.
    c.add_node(4, vec![1, 2, 3, 4]);
    c.start_node(4);
    c.add_learner(1, 4);
    c.wait_caught_up(4, secs(30));
    assert_eq!(c.status(4).unwrap().role, "learner");
    settle_and_check(&c, &load, "learner 4 added");
    //    Promoted to voter; clients may now use it too.
    c.promote(2, 4);
    load.set_endpoints(c.endpoints(&[1, 2, 3, 4]));
    load.wait_progress(20, secs(30));
    assert_ne!(c.status(4).unwrap().role, "learner");
    settle_and_check(&c, &load, "4 promoted to voter");
    //    A 5th journal added directly as a voter.
    c.add_node(5, vec![1, 2, 3, 4, 5]);
    c.start_node(5);
    c.add_voter(3, 5);
    c.wait_caught_up(5, secs(30));
    load.set_endpoints(c.endpoints(&[1, 2, 3, 4, 5]));
    load.wait_progress(20, secs(30));
    let st = settle_and_check(&c, &load, "5 added as a voter");
    assert!(st.entries > 0);
    //    Remove one founding voter (not the leader); the other four carry on.
    let l = c.wait_leader(secs(10));
    let gone = [1, 2, 3].into_iter().find(|i| *i != l).unwrap();
    let stay: Vec<u64> = [1, 2, 3, 4, 5].into_iter().filter(|i| *i != gone).collect();
    load.set_endpoints(c.endpoints(&stay));
    c.remove(stay[0], gone);
    let term = c.terminate(gone);
    c.say(&format!("removed voter {gone} (exit {term:?})"));
    load.wait_progress(20, secs(30));
    let lst = c.status(c.wait_leader(secs(10))).unwrap();
    assert!(!lst.members.iter().any(|m| m.id == gone), "{gone} is still a member: {:?}", lst.members);
    assert!(stay.iter().all(|i| has_member(&lst, *i, "voter")), "members: {:?}", lst.members);
    settle_and_check(&c, &load, "voter removed");
    //    Remove the leader itself, under load: it steps down, the other three elect a leader
    //    among themselves and keep taking appends while it still runs.
    let l = c.wait_leader(secs(10));
    let stay: Vec<u64> = stay.into_iter().filter(|i| *i != l).collect();
    load.set_endpoints(c.endpoints(&stay));
    c.remove(stay[0], l);
    let new = c.wait_new_leader(l, secs(20));
    load.wait_progress(20, secs(30));
    c.assert_alive(l);
    let text = std::fs::read_to_string(c.nodes[&l].log_path()).unwrap_or_default();
    assert!(!text.contains("panicked"), "the removed leader {l} panicked");
    let term = c.terminate(l);
    c.say(&format!("removed the leader {l} (exit {term:?}); {new} leads"));
    let lst = c.status(c.wait_leader(secs(10))).unwrap();
    assert!(!lst.members.iter().any(|m| m.id == l), "{l} is still a member: {:?}", lst.members);
    settle_and_check(&c, &load, "leader removed");

    load.pause();
    c.wait_settled(secs(30));
    let log = load.stop();
    let r = check_replicas(&c, &stay, &log, "final");
    c.assert_all_alive();
    c.say(&format!("done: {r:?}; {}", c.net_report()));
}

/// Removing the leader itself (no load): the remaining voters elect a leader among themselves
/// and take appends while the removed journal still runs; the removed journal neither keeps
/// the others from electing nor crashes. (Before commit a3473b8, raft-rs left such a leader
/// leading a configuration it was not in: no election until it was stopped, or a panic in
/// `Raft::maybe_commit` when an append response advanced its commit index.)
#[test]
fn removing_the_leader_hands_over_leadership() {
    let mut c = Cluster::start("remove-leader", 4, Opts::default());
    let log: Mutex<LoadLog> = Mutex::default();
    append_before(&c, &log, 20);
    let l = c.wait_leader(secs(10));
    let stay: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|i| *i != l).collect();
    c.remove(stay[0], l);
    let new = c.wait_new_leader(l, secs(20));
    c.say(&format!("removed leader {l}; {new} leads"));
    for (k, id) in stay.iter().enumerate() {
        // A journal that has not heard from the new leader yet answers Unavailable ("the
        // leader changed before this was committed; it may or may not have been applied"):
        // a client retries, as this one does, under a new label (the unacknowledged one may or
        // may not be in the log, which check_replicas allows).
        let deadline = Instant::now() + secs(10);
        let mut attempt = 0;
        loop {
            match c.append_via(*id, &log, &format!("after-{k}-{attempt}")) {
                Ok(_) => break,
                Err(pact_proto::client::CallError::Remote(e))
                    if e.code == pact_proto::ErrorCode::Unavailable && Instant::now() < deadline =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("append through {id} after removing the leader: {e}"),
            }
        }
    }
    c.assert_alive(l);
    let text = std::fs::read_to_string(c.nodes[&l].log_path()).unwrap_or_default();
    assert!(!text.contains("panicked"), "the removed leader {l} panicked");
    assert!(c.terminate(l).unwrap().success());
    c.wait_settled(secs(30));
    check_replicas(&c, &stay, &lock(&log), "leader removed");
}

/// `[journal.raft] election_tick` is what the journals use: with 300 ticks the survivors of a
/// killed leader wait at least 3.3 s without a leader before one campaigns. (Ticks never run
/// ahead of their schedule, and catching up late ones shortens a timeout by at most 100 ms, so
/// the bound holds on a loaded machine; the default, 50 ticks, elects within a second.)
#[test]
fn the_configured_election_timeout_holds_elections_back() {
    let mut c = Cluster::start("election-tick", 3, Opts { election_tick: Some(300), ..Default::default() });
    let log: Mutex<LoadLog> = Mutex::default();
    append_before(&c, &log, 5);
    let old = c.wait_leader(secs(30));
    c.kill9(old);
    let killed = Instant::now();
    let new = loop {
        if let Some(l) = c.leader().filter(|l| *l != old) {
            break l;
        }
        assert!(killed.elapsed() < secs(30), "no new leader 30 s after killing leader {old}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = killed.elapsed();
    c.say(&format!("killed leader {old}; {new} leads after {} ms", took.as_millis()));
    // The followers heard the leader at most a heartbeat (100 ms) before the kill.
    assert!(
        took >= Duration::from_millis(2_500),
        "a new leader {} ms after the kill, with a 3 s election timeout",
        took.as_millis()
    );
    let survivor = [1, 2, 3].into_iter().find(|i| *i != old).unwrap();
    c.append_via(survivor, &log, "after").unwrap();
    c.wait_settled(secs(30));
    check_replicas(&c, &c.live(), &lock(&log), "election timeout");
}

/// A follower's idle link to another follower notices that peer's death by itself, without
/// writing into it. Raft links are one-way: before, a follower learned that a peer had died
/// (and restarted) only when its first message after the restart, typically the answer to a
/// pre-vote, vanished into the dead socket, and a failover then took a second election
/// timeout. The link's failure shows as `pact_journal_raft_peer_errors_total`.
#[test]
fn an_idle_link_notices_its_peer_die() {
    let mut c = Cluster::start("idle-link", 3, Opts::default());
    let log: Mutex<LoadLog> = Mutex::default();
    append_before(&c, &log, 5);
    // The old leader dialed both others; once stopped, replaced and continued, it is a
    // follower with an open link to the other follower, which nothing writes on.
    let old = c.wait_leader(secs(30));
    c.freeze(old);
    let new = c.wait_new_leader(old, secs(30));
    c.thaw(old);
    c.wait_settled(secs(30));
    let other = [1, 2, 3].into_iter().find(|i| *i != old && *i != new).unwrap();
    let before = c.metric(old, "pact_journal_raft_peer_errors_total");
    c.say(&format!("{new} leads; follower {old} has {before} peer errors; killing follower {other}"));
    c.kill9(other);
    let noticed = Instant::now();
    cluster::wait_for(&format!("journal {old} to notice that {other} died"), secs(10), || {
        (c.metric(old, "pact_journal_raft_peer_errors_total") > before).then_some(())
    });
    c.say(&format!("{old} noticed after {} ms", noticed.elapsed().as_millis()));
    assert_eq!(c.leader(), Some(new), "a follower's death moved the leadership");
    c.start_node(other);
    c.append_via(old, &log, "after").unwrap();
    c.wait_settled(secs(30));
    check_replicas(&c, &c.live(), &lock(&log), "idle link");
}

/// `count` appends labelled before-N, spread round-robin over the running journals.
fn append_before(c: &Cluster, log: &Mutex<LoadLog>, count: usize) {
    let ids = c.live();
    for i in 0..count {
        c.append_via(ids[i % ids.len()], log, &format!("before-{i}")).unwrap();
    }
}
