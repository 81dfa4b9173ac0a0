//! Byte layouts of everything the journal keeps in LMDB. This is the only module that knows
//! them; change a layout here and nowhere else.
//!
//! One LMDB environment per data dir (`<data_dir>/journal.mdb/`), with these named databases:
//!
//! | database      | key                                         | value                                   |
//! |---------------|---------------------------------------------|-----------------------------------------|
//! | `raft_log`    | raft index, u64 big-endian (8 bytes)         | `eraftpb::Entry`: legacy, read once at start and moved into the log file (`wal.rs`) |
//! | `raft_meta`   | ASCII name: `conf_state` (protobuf; the membership at the applied index), `bootstrapped`, `snapshot_index`, `snapshot_term` (u64 BE; the snapshot the state was last installed from, (1, 1) when founded); `invites` (prost); legacy `hard_state`, `first_index` |
//! | `state_meta`  | ASCII name: `applied_index`, `next_sequence`, `last_ts`, `partitions` | u64 BE (`last_ts`: i64 BE secs + u32 BE nanos) |
//! | `entries`     | sequence, u64 big-endian                     | `pact.config.ConfigEntry`, prost bytes  |
//! | `entry_scope` | scope tag (1 byte) + scope id + 0x00 + sequence u64 BE | empty                      |
//! | `overlays`    | vCluster id, UTF-8                           | `pact.journal.OverlayRecord`, prost (current) |
//! | `overlay_hist`| vCluster id + 0x00 + version u64 BE          | `pact.journal.OverlayRecord`, prost (every version, for rollbacks and subscriptions) |
//! | `overlay_blobs`| vCluster id, UTF-8                          | version u64 BE + the current overlay's boot form (`spec` prost-encoded, zstd level 3) |
//! | `nodes.<p>`   | node id, UTF-8                               | `pact.config.NodeConfigState`, prost    |
//! | `nodes.<p>`   | 0x01 + node id                               | `pact.journal.NodeRecord`, prost (assignment + declared config, current) |
//! | `nodes.<p>`   | 0x02 + node id + 0x00 + version u64 BE       | `pact.journal.NodeRecord`, prost (every version) |
//! | `members`     | raft node id, u64 big-endian                 | `pact.journal.Member`, prost            |
//! | `approvals`   | approval id (= its PENDING_APPROVAL entry's sequence), u64 BE | `pact.policy.PendingApproval`, prost, current status (held request included) |
//!
//! `state_meta` also holds `approvals_pending` (u64 BE): how many `approvals` records are
//! PENDING, kept in the same transaction as the records (the bound `approval::MAX_PENDING`).
//!
//! The raft log and hard state live in `<data_dir>/raft.wal/` (layout in `wal.rs`), not here.
//! `snapshot_index`/`snapshot_term` let a start finish a snapshot install that a crash
//! interrupted between LMDB and the log (`raft_log::open`).
//!
//! Snapshot data (what raft ships to a lagging or new replica) is the applied state as a
//! sequence of records, each `kind u8 | key_len u32 BE | key | value_len u32 BE | value`, in
//! this order: kind 1 `state_meta`, 2 `entries`, 3 `entry_scope`, 4 `overlays`, 5 `members`,
//! 6 node states (key = node id, so the receiver re-partitions them over its own `nodes.<p>`),
//! 7 `overlay_hist`, 8 `overlay_blobs`, 9 node records and their history (key as stored in
//! `nodes.<p>`, re-partitioned by the node id inside it), 10 `approvals`.
//!
//! Node ids never contain bytes below 0x20 (the RPC layer and the state machine reject
//! control characters), so the 0x01/0x02 tags cannot collide with a node-state key.
//!
//! Big-endian integers make LMDB's lexicographic key order equal numeric order, so ranges
//! and "newest first" are plain cursor walks. Per-node data is split over `partitions`
//! databases (fixed when the data dir is created) by FNV-1a of the node id, so each core's
//! shard can own a partition (DESIGN.md §4).
//!
//! Scope tags: `g` global, `v` vCluster, `n` node. Ids may not contain 0x00 (the RPC layer
//! rejects them), which keeps the index unambiguous.

use pact_proto::config::{scope::Target, Scope};

pub const DB_RAFT_LOG: &str = "raft_log";
pub const DB_RAFT_META: &str = "raft_meta";
pub const DB_STATE_META: &str = "state_meta";
pub const DB_ENTRIES: &str = "entries";
pub const DB_ENTRY_SCOPE: &str = "entry_scope";
pub const DB_OVERLAYS: &str = "overlays";
pub const DB_MEMBERS: &str = "members";
pub const DB_OVERLAY_HIST: &str = "overlay_hist";
pub const DB_OVERLAY_BLOBS: &str = "overlay_blobs";
pub const DB_APPROVALS: &str = "approvals";
/// Enrollment (journal/src/enroll.rs): `n<node>` a node's record (pact.enrollment.NodeEnrollment),
/// `h<hardware key>` the node a hardware identity is registered to, `i<journal id, u64 BE>`
/// that journal's current enrollment CA (pact.enrollment.CaPublished).
pub const DB_ENROLL: &str = "enroll";

pub const KEY_SNAPSHOT_INDEX: &[u8] = b"snapshot_index";
/// Founder only: members still to invite (`pact.journal.ChangeMembershipResponse`, prost), so a
/// founder that restarts before every invitation was applied picks up where it stopped.
pub const KEY_INVITES: &[u8] = b"invites";
pub const KEY_SNAPSHOT_TERM: &[u8] = b"snapshot_term";

/// Record kinds in snapshot data.
pub const SNAP_STATE_META: u8 = 1;
pub const SNAP_ENTRIES: u8 = 2;
pub const SNAP_ENTRY_SCOPE: u8 = 3;
pub const SNAP_OVERLAYS: u8 = 4;
pub const SNAP_MEMBERS: u8 = 5;
pub const SNAP_NODE_STATE: u8 = 6;
pub const SNAP_OVERLAY_HIST: u8 = 7;
pub const SNAP_OVERLAY_BLOBS: u8 = 8;
pub const SNAP_NODE_RECORD: u8 = 9;
pub const SNAP_APPROVALS: u8 = 10;
pub const SNAP_ENROLL: u8 = 11;

pub const TAG_NODE_RECORD: u8 = 0x01;
pub const TAG_NODE_HIST: u8 = 0x02;

/// `id + 0x00 + version BE`: one version of a vCluster's overlay or of a node record (with
/// `tag` in front for node records).
pub fn versioned_key(tag: Option<u8>, id: &str, version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 10);
    k.extend(tag);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(&u64_key(version));
    k
}

pub fn node_record_key(node_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(node_id.len() + 1);
    k.push(TAG_NODE_RECORD);
    k.extend_from_slice(node_id.as_bytes());
    k
}

/// The node id inside any `nodes.<p>` key (state, record or history).
pub fn node_of_key(k: &[u8]) -> Option<&str> {
    let rest = match *k.first()? {
        TAG_NODE_RECORD => &k[1..],
        TAG_NODE_HIST => {
            let body = &k[1..];
            &body[..body.iter().position(|b| *b == 0)?]
        }
        _ => k,
    };
    std::str::from_utf8(rest).ok().filter(|s| !s.is_empty())
}

pub fn put_snapshot_record(out: &mut Vec<u8>, kind: u8, key: &[u8], value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

/// Splits snapshot data into records; None if the bytes are not a whole number of records.
/// One snapshot record: (kind, key, value).
pub type SnapshotRecord<'a> = (u8, &'a [u8], &'a [u8]);

pub fn snapshot_records(mut data: &[u8]) -> Option<Vec<SnapshotRecord<'_>>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let kind = *data.first()?;
        let klen = u32::from_be_bytes(data.get(1..5)?.try_into().ok()?) as usize;
        let key = data.get(5..5 + klen)?;
        let rest = data.get(5 + klen..)?;
        let vlen = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let value = rest.get(4..4 + vlen)?;
        out.push((kind, key, value));
        data = rest.get(4 + vlen..)?;
    }
    Some(out)
}

pub const KEY_HARD_STATE: &[u8] = b"hard_state";
pub const KEY_CONF_STATE: &[u8] = b"conf_state";
pub const KEY_FIRST_INDEX: &[u8] = b"first_index";
pub const KEY_BOOTSTRAPPED: &[u8] = b"bootstrapped";
pub const KEY_APPLIED_INDEX: &[u8] = b"applied_index";
pub const KEY_NEXT_SEQUENCE: &[u8] = b"next_sequence";
pub const KEY_LAST_TS: &[u8] = b"last_ts";
pub const KEY_PARTITIONS: &[u8] = b"partitions";
pub const KEY_APPROVALS_PENDING: &[u8] = b"approvals_pending";

pub fn node_db_name(partition: u32) -> String {
    format!("nodes.{partition}")
}

pub fn u64_key(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn read_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

pub fn encode_ts(secs: i64, nanos: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&secs.to_be_bytes());
    b[8..].copy_from_slice(&nanos.to_be_bytes());
    b
}

pub fn decode_ts(b: &[u8]) -> Option<(i64, u32)> {
    if b.len() != 12 {
        return None;
    }
    Some((i64::from_be_bytes(b[..8].try_into().ok()?), u32::from_be_bytes(b[8..].try_into().ok()?)))
}

/// FNV-1a: stable across builds and platforms (unlike std's hasher), so a node's partition
/// never moves.
pub fn partition_of(node_id: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

/// Prefix of every index key for one scope: tag + id + 0x00.
pub fn scope_prefix(scope: &Scope) -> Option<Vec<u8>> {
    let (tag, id): (u8, &str) = match scope.target.as_ref()? {
        Target::Global(_) => (b'g', ""),
        Target::VclusterId(v) => (b'v', v),
        Target::NodeId(n) => (b'n', n),
    };
    let mut k = Vec::with_capacity(id.len() + 2);
    k.push(tag);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    Some(k)
}

pub fn scope_index_key(scope: &Scope, sequence: u64) -> Option<Vec<u8>> {
    let mut k = scope_prefix(scope)?;
    k.extend_from_slice(&u64_key(sequence));
    Some(k)
}

/// The sequence at the end of an index key.
pub fn sequence_of_index_key(k: &[u8]) -> Option<u64> {
    if k.len() < 8 {
        return None;
    }
    read_u64(&k[k.len() - 8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_endian_keys_sort_numerically() {
        let mut keys: Vec<[u8; 8]> = [5u64, 300, 1, 70000, 2].iter().map(|v| u64_key(*v)).collect();
        keys.sort();
        let back: Vec<u64> = keys.iter().map(|k| read_u64(k).unwrap()).collect();
        assert_eq!(back, vec![1, 2, 5, 300, 70000]);
    }

    #[test]
    fn scope_keys_are_prefix_free_between_ids() {
        let a = Scope { target: Some(Target::NodeId("node1".into())) };
        let b = Scope { target: Some(Target::NodeId("node10".into())) };
        let ka = scope_index_key(&a, 7).unwrap();
        assert!(ka.starts_with(&scope_prefix(&a).unwrap()));
        assert!(!ka.starts_with(&scope_prefix(&b).unwrap()));
        assert!(!scope_index_key(&b, 7).unwrap().starts_with(&scope_prefix(&a).unwrap()));
        assert_eq!(sequence_of_index_key(&ka), Some(7));
    }

    #[test]
    fn partitions_are_stable() {
        assert_eq!(partition_of("node-0001", 4), partition_of("node-0001", 4));
        assert!(partition_of("x", 3) < 3);
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn snapshot_records_round_trip_and_reject_truncation() {
        let mut d = Vec::new();
        put_snapshot_record(&mut d, SNAP_ENTRIES, b"k1", b"v1");
        put_snapshot_record(&mut d, SNAP_MEMBERS, b"", b"value two");
        let r = snapshot_records(&d).unwrap();
        assert_eq!(r, vec![(SNAP_ENTRIES, &b"k1"[..], &b"v1"[..]), (SNAP_MEMBERS, &b""[..], &b"value two"[..])]);
        let boundary = 1 + 4 + 2 + 4 + 2;
        for cut in (1..d.len()).filter(|c| *c != boundary) {
            assert!(snapshot_records(&d[..cut]).is_none(), "cut at {cut}");
        }
        assert_eq!(snapshot_records(&d[..boundary]).unwrap().len(), 1);
    }

    #[test]
    fn node_keys_name_their_node() {
        assert_eq!(node_of_key(b"n1"), Some("n1"));
        assert_eq!(node_of_key(&node_record_key("n1")), Some("n1"));
        assert_eq!(node_of_key(&versioned_key(Some(TAG_NODE_HIST), "n1", 9)), Some("n1"));
        assert_eq!(node_of_key(&[TAG_NODE_RECORD]), None);
        // Versions of one id sort numerically and never interleave with a longer id's.
        let (a, b) = (versioned_key(None, "vc", 2), versioned_key(None, "vc", 300));
        assert!(a < b && b < versioned_key(None, "vc1", 1));
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(decode_ts(&encode_ts(-5, 7)), Some((-5, 7)));
        assert_eq!(decode_ts(&[1, 2]), None);
    }
}
