//! A 5-journal quorum survives two failures: kill -9 of the leader and a follower under load,
//! appends still succeed through every survivor, and after both restart all five converge
//! with every acknowledged append in place. Then three failures: no quorum, so no append is
//! acknowledged; one restart restores the quorum, the rest rejoin and converge.

mod cluster;

use cluster::{check_replicas, settle_and_check, wait_for, Cluster, Load, Opts};
use std::time::Duration;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn five_journals_survive_two_failures() {
    let mut c = Cluster::start("quorum5", 5, Opts::default());
    c.say("5 journals up");
    let all = [1, 2, 3, 4, 5];
    let load = Load::start(&c, 3, c.endpoints(&all));
    load.wait_progress(30, secs(30));
    settle_and_check(&c, &load, "baseline");

    // Two down, the leader among them.
    let l = c.wait_leader(secs(10));
    let f = all.into_iter().find(|i| *i != l).unwrap();
    load.wait_progress(20, secs(30));
    c.kill9(l);
    c.kill9(f);
    let new = c.wait_new_leader(l, secs(20));
    c.say(&format!("killed leader {l} and follower {f}; new leader {new}"));
    load.wait_progress(30, secs(30));
    let survivors: Vec<u64> = all.into_iter().filter(|i| *i != l && *i != f).collect();
    for (k, id) in survivors.iter().enumerate() {
        let seq = c
            .append_via(*id, &load.log, &format!("direct-two-down-{k}"))
            .unwrap_or_else(|e| panic!("append through journal {id} with 2 of 5 down: {e}"));
        assert!(seq > 0);
    }
    settle_and_check(&c, &load, "two of five down");
    c.start_node(l);
    c.start_node(f);
    c.wait_caught_up(l, secs(30));
    c.wait_caught_up(f, secs(30));
    let r = settle_and_check(&c, &load, "both restarted");
    assert_eq!(r.journals, all);
    c.say(&format!("all five converged at {} entries", r.entries));

    // Three down: no quorum. Nothing new is acknowledged; appends fail (or time out).
    load.pause();
    c.wait_settled(secs(30));
    let l = c.wait_leader(secs(10));
    let mut down: Vec<u64> = vec![l];
    down.extend(all.into_iter().filter(|i| *i != l).take(2));
    for id in &down {
        c.kill9(*id);
    }
    let up: Vec<u64> = all.into_iter().filter(|i| !down.contains(i)).collect();
    let (acked_before, errors_before) = (load.acked(), load.errors());
    load.set_endpoints(c.endpoints(&up));
    load.resume();
    // Let the clients try for a while (until each has seen a few failures), then stop them.
    wait_for("the clients to fail a few appends", secs(30), || (load.errors() >= errors_before + 10).then_some(()));
    for id in &up {
        let r = c.append_via(*id, &load.log, &format!("direct-three-down-{id}"));
        assert!(r.is_err(), "journal {id} acknowledged an append with 3 of 5 journals down: {r:?}");
    }
    load.pause();
    // The clients were paused (nothing in flight) when the three went down.
    let acked = load.acked() - acked_before;
    assert_eq!(acked, 0, "appends acknowledged with 3 of 5 journals down");
    c.say(&format!("{down:?} down: {} appends failed, none acknowledged", load.errors() - errors_before));

    // One back: quorum again (3 of 5), appends succeed.
    c.start_node(down[0]);
    load.set_endpoints(c.endpoints(&all));
    load.resume();
    load.wait_progress(30, secs(30));
    c.start_node(down[1]);
    c.start_node(down[2]);
    for id in &down {
        c.wait_caught_up(*id, secs(30));
    }
    settle_and_check(&c, &load, "three down, all restarted");

    load.pause();
    c.wait_settled(secs(30));
    let log = load.stop();
    let r = check_replicas(&c, &all, &log, "final");
    c.assert_all_alive();
    c.say(&format!("done: {r:?}; {}", c.net_report()));
}
