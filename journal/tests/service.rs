//! The config/log service end to end over real TLS: append, get, list (scope filters, ranges,
//! order, limits), node config state, and the vCluster overlay record.

mod common;

use common::Journal;
use pact_proto::client::{CallError, Client};
use pact_proto::config::{scope::Target, ConfigEntry, ConfigState, EntryType, NodeConfigState, Scope, VClusterSpec};
use pact_proto::journal::{
    AppendEntryRequest, AppendEntryResponse, GetEntryRequest, GetNodeStateRequest, GetOverlayRequest,
    ListEntriesRequest, OverlayRecord, SetNodeStateRequest, SetNodeStateResponse,
};
use pact_proto::{ErrorCode, Method};
use std::collections::BTreeMap;

fn scope(t: Target) -> Option<Scope> {
    Some(Scope { target: Some(t) })
}

fn append(c: &mut Client, s: Option<Scope>, label: &str) -> AppendEntryResponse {
    let e =
        ConfigEntry { entry_type: EntryType::Commit as i32, scope: s, policy_ref: label.into(), ..Default::default() };
    c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(e) }).unwrap()
}

fn list(c: &mut Client, req: ListEntriesRequest) -> Vec<u64> {
    let v: Vec<ConfigEntry> = c.call_stream(Method::ListEntries, &req).unwrap();
    v.iter().map(|e| e.sequence).collect()
}

fn remote_code<T: std::fmt::Debug>(r: Result<T, CallError>) -> ErrorCode {
    match r {
        Err(CallError::Remote(e)) => e.code,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[test]
fn append_get_and_list_with_filters() {
    let j = Journal::start("service-list");
    let mut c = j.client();
    let n1 = scope(Target::NodeId("node-001".into()));
    let vc = scope(Target::VclusterId("ml".into()));
    let global = scope(Target::Global(true));
    let mut last_ts = (0, 0);
    for i in 0..9u64 {
        let s = [n1.clone(), vc.clone(), global.clone()][(i % 3) as usize].clone();
        let r = append(&mut c, s, &format!("e{i}"));
        assert_eq!(r.sequence, i + 1, "sequences are assigned 1, 2, 3, ...");
        let ts = r.timestamp.unwrap();
        assert!((ts.seconds, ts.nanos) >= last_ts, "timestamps never go backwards");
        last_ts = (ts.seconds, ts.nanos);
    }
    let e: ConfigEntry = c.call(Method::GetEntry, &GetEntryRequest { sequence: 5 }).unwrap();
    assert_eq!((e.sequence, e.policy_ref.as_str()), (5, "e4"));
    let author = e.author.unwrap();
    assert_eq!((author.principal.as_str(), author.role.as_str()), ("dev-admin", "pact-platform-admin"));

    // Newest first by default; 0 = the default limit.
    assert_eq!(list(&mut c, ListEntriesRequest::default()), vec![9, 8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(list(&mut c, ListEntriesRequest { limit: 2, ..Default::default() }), vec![9, 8]);
    assert_eq!(list(&mut c, ListEntriesRequest { oldest_first: true, limit: 3, ..Default::default() }), vec![1, 2, 3]);
    assert_eq!(
        list(&mut c, ListEntriesRequest { from_sequence: Some(3), to_sequence: Some(6), ..Default::default() }),
        vec![6, 5, 4, 3]
    );
    assert_eq!(list(&mut c, ListEntriesRequest { scope: n1.clone(), ..Default::default() }), vec![7, 4, 1]);
    assert_eq!(list(&mut c, ListEntriesRequest { scope: vc.clone(), ..Default::default() }), vec![8, 5, 2]);
    assert_eq!(
        list(&mut c, ListEntriesRequest { scope: global, from_sequence: Some(4), ..Default::default() }),
        vec![9, 6]
    );
    assert!(list(&mut c, ListEntriesRequest { scope: scope(Target::NodeId("node-00".into())), ..Default::default() })
        .is_empty());
}

#[test]
fn node_config_state_round_trips_through_raft() {
    let j = Journal::start("service-node");
    let mut c = j.client();
    let missing: Result<NodeConfigState, _> =
        c.call(Method::GetNodeState, &GetNodeStateRequest { node_id: "node-7".into() });
    assert_eq!(remote_code(missing), ErrorCode::NotFound);
    append(&mut c, scope(Target::NodeId("node-7".into())), "first");
    let set = SetNodeStateRequest { node_id: "node-7".into(), state: ConfigState::Drifted as i32, author: None };
    let r: SetNodeStateResponse = c.call(Method::SetNodeState, &set).unwrap();
    assert_eq!(r.sequence, 1, "state is stamped with the latest entry's sequence");
    let s: NodeConfigState = c.call(Method::GetNodeState, &GetNodeStateRequest { node_id: "node-7".into() }).unwrap();
    assert_eq!(s.state, ConfigState::Drifted as i32);
    assert_eq!(s.updated_by.unwrap().principal, "dev-admin", "the author comes from the token");
    let bad = SetNodeStateRequest { node_id: "node 7".into(), state: ConfigState::Committed as i32, author: None };
    assert_eq!(remote_code(c.call::<_, SetNodeStateResponse>(Method::SetNodeState, &bad)), ErrorCode::InvalidArgument);
    let bad = SetNodeStateRequest { node_id: "node-7".into(), state: 99, author: None };
    assert_eq!(remote_code(c.call::<_, SetNodeStateResponse>(Method::SetNodeState, &bad)), ErrorCode::InvalidArgument);
}

#[test]
fn a_commit_with_a_declared_spec_becomes_the_overlay_record() {
    let j = Journal::start("service-overlay");
    let mut c = j.client();
    let missing: Result<OverlayRecord, _> = c.call(Method::GetOverlay, &GetOverlayRequest { vcluster_id: "ml".into() });
    assert_eq!(remote_code(missing), ErrorCode::NotFound);
    let spec = VClusterSpec {
        vcluster_id: "ml".into(),
        sysctl: BTreeMap::from([("vm.swappiness".to_string(), "10".to_string())]),
        ..Default::default()
    };
    let e = ConfigEntry {
        entry_type: EntryType::Commit as i32,
        scope: scope(Target::VclusterId("ml".into())),
        policy_ref: "apply:test".into(),
        declared: Some(spec.clone()),
        ..Default::default()
    };
    let r: AppendEntryResponse = c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(e) }).unwrap();
    let o: OverlayRecord = c.call(Method::GetOverlay, &GetOverlayRequest { vcluster_id: "ml".into() }).unwrap();
    assert_eq!(o.version, r.sequence);
    assert_eq!(o.spec.unwrap(), spec);
    assert_eq!(o.checksum.len(), 64, "SHA-256 hex");
}
