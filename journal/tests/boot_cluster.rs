//! Boot streaming on a quorum: three voters and a learner (started by flag) all serve the
//! same overlay bytes, from their own store, never through Raft; and a node's subscription
//! on a follower keeps every change, once, across a leader change and across the loss of
//! the journal it was connected to (the agent's client resumes on the next one).

mod cluster;

use cluster::{wait_for, Cluster, Opts};
use pact_agent::journal_client::{Config, Event, JournalClient};
use pact_proto::config::{
    scope::Target, ConfigEntry, DeltaAction, EntryType, KernelDelta, Scope, StateDelta, VClusterSpec,
};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse};
use pact_proto::stream::config_update;
use pact_proto::Method;
use std::time::Duration;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Appends through whichever journal answers (followers forward to the leader).
fn append(c: &Cluster, e: ConfigEntry) -> u64 {
    let deadline = std::time::Instant::now() + secs(30);
    loop {
        for id in c.live() {
            let Ok(mut client) = c.client(id) else { continue };
            let r: Result<AppendEntryResponse, _> =
                client.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(e.clone()) });
            if let Ok(r) = r {
                return r.sequence;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no journal accepted an append in 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn vc_change(c: &Cluster, n: u32) -> u64 {
    append(
        c,
        ConfigEntry {
            entry_type: EntryType::Commit as i32,
            scope: Some(Scope { target: Some(Target::VclusterId("ml".into())) }),
            policy_ref: format!("change {n}"),
            state_delta: Some(StateDelta {
                kernel: vec![KernelDelta {
                    key: "vm.swappiness".into(),
                    action: DeltaAction::Modify as i32,
                    declared_value: Some(n.to_string()),
                    actual_value: None,
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

#[test]
fn every_replica_serves_the_same_overlay_and_subscriptions_survive_failover() {
    let mut c = Cluster::start("boot-cluster", 3, Opts::default());
    let mut spec = VClusterSpec::default();
    spec.sysctl.insert("vm.swappiness".into(), "0".into());
    spec.modules = vec!["nvidia".into()];
    let base = append(
        &c,
        ConfigEntry {
            entry_type: EntryType::Commit as i32,
            scope: Some(Scope { target: Some(Target::VclusterId("ml".into())) }),
            policy_ref: "apply".into(),
            declared: Some(spec),
            ..Default::default()
        },
    );
    c.add_node(4, vec![1, 2, 3]);
    c.nodes.get_mut(&4).unwrap().learner = true;
    c.start_node(4);
    wait_for("journal 4 to be a learner", secs(30), || {
        let st = c.status(c.leader()?).ok()?;
        st.members.iter().any(|m| m.id == 4 && m.role == "learner").then_some(())
    });
    c.wait_caught_up(4, secs(30));

    // Every replica, learner included, serves byte-identical overlays built on its own.
    let agent = |c: &Cluster, ids: &[u64], node: &str| {
        let mut cfg = Config::new(c.endpoints(ids), c.tls.clone(), &c.token, node, "ml");
        cfg.backoff_min = Duration::from_millis(100);
        cfg.backoff_max = Duration::from_millis(1000);
        JournalClient::new(cfg)
    };
    let boots: Vec<_> = [1, 2, 3, 4].iter().map(|id| agent(&c, &[*id], "n1").boot(None).unwrap()).collect();
    for b in &boots {
        assert_eq!(b.overlay_version, base);
        assert_eq!(b.overlay_compressed, boots[0].overlay_compressed, "served by {}", b.endpoint);
        assert_eq!(b.overlay_checksum, boots[0].overlay_checksum);
    }

    // A subscription that starts on a follower and may move to any journal.
    let leader = c.wait_leader(secs(10));
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let others: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|i| *i != follower).collect();
    let mut order = vec![follower];
    order.extend(&others);
    let mut cfg = Config::new(c.endpoints(&order), c.tls.clone(), &c.token, "n1", "ml");
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(1000);
    let (tx, rx) = std::sync::mpsc::channel::<Result<u64, String>>();
    std::thread::spawn(move || {
        let mut a = JournalClient::new(cfg);
        a.prefer(0); // start on the follower
        let mut sub = a.subscribe(base);
        loop {
            let sent = match sub.next_event() {
                Ok(Event::Update(u)) => match u.update {
                    Some(config_update::Update::OverlayChange(_)) => tx.send(Ok(u.sequence)).is_ok(),
                    _ => true,
                },
                Ok(Event::Resync { reason, .. }) => tx.send(Err(format!("resync: {reason}"))).is_ok(),
                Err(e) => tx.send(Err(e.to_string())).is_ok(),
            };
            if !sent {
                return;
            }
        }
    });
    let next = || rx.recv_timeout(secs(60)).expect("an update within 60 s").expect("no error or resync");

    let mut expected = Vec::new();
    let mut got = Vec::new();
    expected.push(vc_change(&c, 1));
    got.push(next());

    // Leader change: kill the leader; the follower's subscription keeps delivering.
    c.kill9(leader);
    let new_leader = c.wait_new_leader(leader, secs(30));
    c.say(&format!("killed leader {leader}; {new_leader} leads"));
    for n in 2..5 {
        expected.push(vc_change(&c, n));
    }
    for _ in 2..5 {
        got.push(next());
    }
    c.start_node(leader);

    // Loss of the journal the node was connected to: it resumes on another one.
    c.kill9(follower);
    c.say(&format!("killed journal {follower}, the subscription's"));
    for n in 5..9 {
        expected.push(vc_change(&c, n));
    }
    for _ in 5..9 {
        got.push(next());
    }
    assert_eq!(got, expected, "every change once, in order, across both failovers");
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "no duplicate afterwards");

    // The restarted old leader caught up and serves the latest overlay too.
    c.wait_caught_up(leader, secs(30));
    let last = agent(&c, &[leader], "n1").boot(None).unwrap();
    assert_eq!(last.overlay_version, *expected.last().unwrap());
    assert_eq!(last.overlay.sysctl["vm.swappiness"], "8");
}
