//! A journal started with `--learner` (and the quorum's addresses) asks the leader to add it
//! as a learner over the Raft port, authenticated by its certificate from the cluster CA;
//! it then catches up and serves reads, without anyone running `pact journal add-learner`.

mod cluster;

use cluster::{wait_for, Cluster, Opts};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse};
use pact_proto::Method;
use std::time::Duration;

#[test]
fn a_learner_started_by_flag_joins_and_catches_up() {
    let mut c = Cluster::start("learner-flag", 3, Opts::default());
    let leader = c.wait_leader(Duration::from_secs(30));
    let mut client = c.client(leader).unwrap();
    for i in 0..10 {
        let e = ConfigEntry {
            entry_type: EntryType::Commit as i32,
            scope: Some(Scope { target: Some(Target::VclusterId("learner".into())) }),
            policy_ref: format!("before-{i}"),
            ..Default::default()
        };
        let _: AppendEntryResponse = client.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(e) }).unwrap();
    }
    // Journal 4's configuration names the three voters, not itself.
    c.add_node(4, vec![1, 2, 3]);
    c.nodes.get_mut(&4).unwrap().learner = true;
    c.start_node(4);
    wait_for("journal 4 to be a learner", Duration::from_secs(30), || {
        let st = c.status(c.leader()?).ok()?;
        st.members.iter().any(|m| m.id == 4 && m.role == "learner").then_some(())
    });
    c.wait_caught_up(4, Duration::from_secs(30));
    let on_learner = c.entries(4);
    assert_eq!(on_learner.len(), 10);
    assert_eq!(on_learner, c.entries(leader));
    // Still a learner: the voters are unchanged.
    let st = c.status(leader).unwrap();
    let voters: Vec<u64> = st.members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect();
    assert_eq!(voters, vec![1, 2, 3]);
}
