//! The LMDB store (through heed): the applied state, the conf state that goes with it, and
//! the raft metadata that is not the log (the raft log and hard state are in `wal.rs`).
//! Layouts live in `codec.rs`. Writers: only the raft shard (through `persist_ready` and
//! `apply`), always on its blocking pool. Readers: any shard, with short read transactions
//! (LMDB MVCC: readers never block the writer).

use crate::codec::{self, *};
use crate::state::StateTxn;
use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn};
use pact_proto::config::{ConfigEntry, NodeConfigState, Scope};
use pact_proto::enrollment::{CaPublished, NodeEnrollment};
use pact_proto::journal::{Member, NodeRecord, OverlayRecord};
use pact_proto::policy::{ApprovalStatus, PendingApproval};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Virtual size of the memory map. LMDB only uses disk for what is written.
const MAP_SIZE: usize = 64 << 30;
const MAX_READERS: u32 = 1024;
/// Most entries one list request looks at (filters may skip most of them).
pub const MAX_LIST_SCAN: usize = 100_000;

pub type Db = Database<Bytes, Bytes>;

#[derive(Debug)]
pub enum StoreError {
    Lmdb(heed::Error),
    Corrupt(String),
    Io(std::io::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Lmdb(e) => write!(f, "LMDB: {e}"),
            StoreError::Corrupt(m) => write!(f, "corrupt store: {m}"),
            StoreError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        StoreError::Lmdb(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

struct Inner {
    env: Env,
    raft_log: Db,
    raft_meta: Db,
    state_meta: Db,
    entries: Db,
    entry_scope: Db,
    overlays: Db,
    overlay_hist: Db,
    overlay_blobs: Db,
    members: Db,
    approvals: Db,
    enroll: Db,
    nodes: Vec<Db>,
}

/// Cheap to clone; shared by every shard.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`. `partitions` is used only when the
    /// store is new; an existing store keeps the count it was created with.
    pub fn open(data_dir: &Path, partitions: u32) -> Result<Store> {
        let dir = data_dir.join("journal.mdb");
        std::fs::create_dir_all(&dir).map_err(StoreError::Io)?;
        // SAFETY: LMDB requires that the same environment is not opened twice in one process
        // and that the files are not modified by anything else; the journal opens it once
        // and holds an exclusive lock file on the data dir (see `sys::lock_data_dir`).
        // heed's `read-txn-no-tls` feature opens with MDB_NOTLS: read transactions are not
        // tied to a thread slot, so several tasks on one glommio executor may each hold one.
        #[allow(unsafe_code)]
        let env =
            unsafe { EnvOpenOptions::new().map_size(MAP_SIZE).max_dbs(16 + 1024).max_readers(MAX_READERS).open(&dir)? };
        let mut w = env.write_txn()?;
        let raft_log = env.create_database(&mut w, Some(DB_RAFT_LOG))?;
        let raft_meta = env.create_database(&mut w, Some(DB_RAFT_META))?;
        let state_meta: Db = env.create_database(&mut w, Some(DB_STATE_META))?;
        let entries = env.create_database(&mut w, Some(DB_ENTRIES))?;
        let entry_scope = env.create_database(&mut w, Some(DB_ENTRY_SCOPE))?;
        let overlays = env.create_database(&mut w, Some(DB_OVERLAYS))?;
        let members = env.create_database(&mut w, Some(DB_MEMBERS))?;
        let overlay_hist = env.create_database(&mut w, Some(DB_OVERLAY_HIST))?;
        let overlay_blobs = env.create_database(&mut w, Some(DB_OVERLAY_BLOBS))?;
        let approvals = env.create_database(&mut w, Some(DB_APPROVALS))?;
        let enroll = env.create_database(&mut w, Some(DB_ENROLL))?;
        let parts = match state_meta.get(&w, KEY_PARTITIONS)? {
            Some(b) => read_u64(b).ok_or_else(|| StoreError::Corrupt("partitions".into()))? as u32,
            None => {
                let p = partitions.clamp(1, 1024);
                state_meta.put(&mut w, KEY_PARTITIONS, &u64_key(u64::from(p)))?;
                p
            }
        };
        let mut nodes = Vec::with_capacity(parts as usize);
        for p in 0..parts {
            nodes.push(env.create_database(&mut w, Some(&node_db_name(p)))?);
        }
        w.commit()?;
        Ok(Store {
            inner: Arc::new(Inner {
                env,
                raft_log,
                raft_meta,
                state_meta,
                entries,
                entry_scope,
                overlays,
                overlay_hist,
                overlay_blobs,
                members,
                approvals,
                enroll,
                nodes,
            }),
        })
    }

    pub fn read_txn(&self) -> Result<RoTxn<'_>> {
        Ok(self.inner.env.read_txn()?)
    }

    pub fn write_txn(&self) -> Result<RwTxn<'_>> {
        Ok(self.inner.env.write_txn()?)
    }

    // ---------------- raft side ----------------

    pub fn is_bootstrapped(&self) -> Result<bool> {
        let r = self.read_txn()?;
        Ok(self.inner.raft_meta.get(&r, KEY_BOOTSTRAPPED)?.is_some())
    }

    /// Creates the initial membership: a ConfState with these voters, and the log start.
    /// Refused when the store already has one.
    pub fn bootstrap(&self, me: &Member) -> Result<()> {
        let mut w = self.write_txn()?;
        if self.inner.raft_meta.get(&w, KEY_BOOTSTRAPPED)?.is_some() {
            return Err(StoreError::Corrupt("already bootstrapped".into()));
        }
        // The founding member alone, recorded as a snapshot at index 1 (term 1): the raft log
        // (`wal.rs`) starts at 2, so every journal that joins later is sent that snapshot first
        // and learns the founding membership (and the founder's address) from it; everything
        // after comes through replicated conf changes. The log itself is started from this
        // snapshot point when it is opened (`raft_log::open`).
        let cs = ConfState { voters: vec![me.id], ..Default::default() };
        self.put_proto(&mut w, KEY_CONF_STATE, &cs)?;
        self.inner.raft_meta.put(&mut w, KEY_SNAPSHOT_INDEX, &u64_key(1))?;
        self.inner.raft_meta.put(&mut w, KEY_SNAPSHOT_TERM, &u64_key(1))?;
        self.inner.state_meta.put(&mut w, KEY_APPLIED_INDEX, &u64_key(1))?;
        self.inner.members.put(&mut w, &u64_key(me.id), &me.encode_to_vec())?;
        self.inner.raft_meta.put(&mut w, KEY_BOOTSTRAPPED, &u64_key(1))?;
        w.commit()?;
        Ok(())
    }

    fn put_proto(&self, w: &mut RwTxn, key: &[u8], m: &dyn protobuf::Message) -> Result<()> {
        let bytes = m.write_to_bytes().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.inner.raft_meta.put(w, key, &bytes)?;
        Ok(())
    }

    fn get_proto<M: protobuf::Message + Default>(&self, r: &RoTxn, key: &[u8]) -> Result<Option<M>> {
        match self.inner.raft_meta.get(r, key)? {
            None => Ok(None),
            Some(b) => {
                let mut m = M::default();
                m.merge_from_bytes(b)
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(key))))?;
                Ok(Some(m))
            }
        }
    }

    pub fn conf_state(&self) -> Result<ConfState> {
        let r = self.read_txn()?;
        Ok(self.get_proto(&r, KEY_CONF_STATE)?.unwrap_or_default())
    }

    /// The conf state in force at the applied index; written with the applied entries.
    pub fn write_conf_state(&self, w: &mut RwTxn, cs: &ConfState) -> Result<()> {
        self.put_proto(w, KEY_CONF_STATE, cs)
    }

    /// Index and term of the snapshot the applied state was last installed from (the
    /// founding membership at (1, 1) on a bootstrapped journal; (0, 0) before anything).
    pub fn snapshot_point(&self) -> Result<(u64, u64)> {
        let r = self.read_txn()?;
        let g = |k| -> Result<u64> { Ok(self.inner.raft_meta.get(&r, k)?.and_then(read_u64).unwrap_or(0)) };
        Ok((g(KEY_SNAPSHOT_INDEX)?, g(KEY_SNAPSHOT_TERM)?))
    }

    /// A data dir written before the raft log moved out of LMDB (`wal.rs`) kept it in
    /// `raft_log`, with the hard state and log start in `raft_meta`. Returns that log, once,
    /// for `raft_log::open` to move into the log file (then `drop_legacy_raft_log`).
    pub fn legacy_raft_log(&self) -> Result<Option<crate::wal::MemLog>> {
        let r = self.read_txn()?;
        let Some(hs) = self.get_proto::<HardState>(&r, KEY_HARD_STATE)? else { return Ok(None) };
        let first = self.inner.raft_meta.get(&r, KEY_FIRST_INDEX)?.and_then(read_u64).unwrap_or(1);
        let snap_term = self.inner.raft_meta.get(&r, KEY_SNAPSHOT_TERM)?.and_then(read_u64).unwrap_or(0);
        let mut entries = Vec::new();
        for kv in self.inner.raft_log.iter(&r)? {
            let (k, v) = kv?;
            let mut e = Entry::default();
            e.merge_from_bytes(v).map_err(|x| StoreError::Corrupt(format!("legacy raft entry: {x}")))?;
            if read_u64(k) != Some(e.index) || e.index != first + entries.len() as u64 {
                return Err(StoreError::Corrupt(format!("legacy raft log: entry {} out of place", e.index)));
            }
            entries.push(e);
        }
        Ok(Some(crate::wal::MemLog { first, snap_term, entries, hs }))
    }

    pub fn drop_legacy_raft_log(&self) -> Result<()> {
        let mut w = self.write_txn()?;
        self.inner.raft_log.clear(&mut w)?;
        self.inner.raft_meta.delete(&mut w, KEY_HARD_STATE)?;
        self.inner.raft_meta.delete(&mut w, KEY_FIRST_INDEX)?;
        w.commit()?;
        Ok(())
    }

    /// Test support: a data dir in the layout before `wal.rs` (the raft log in LMDB).
    #[cfg(test)]
    pub(crate) fn write_legacy_raft_log(&self, log: &crate::wal::MemLog) -> Result<()> {
        let mut w = self.write_txn()?;
        for e in &log.entries {
            let bytes = e.write_to_bytes().map_err(|err| StoreError::Corrupt(err.to_string()))?;
            self.inner.raft_log.put(&mut w, &u64_key(e.index), &bytes)?;
        }
        self.put_proto(&mut w, KEY_HARD_STATE, &log.hs)?;
        self.inner.raft_meta.put(&mut w, KEY_FIRST_INDEX, &u64_key(log.first))?;
        w.commit()?;
        Ok(())
    }

    /// Replaces the applied state with a snapshot's and restarts the raft log after it, inside
    /// the caller's transaction (raft hands a follower a snapshot when it is too far behind).
    pub fn install_snapshot(&self, w: &mut RwTxn, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        let records = snapshot_records(&snap.data)
            .ok_or_else(|| StoreError::Corrupt(format!("snapshot at index {} is truncated", meta.index)))?;
        self.inner.state_meta.clear(w)?;
        self.inner.entries.clear(w)?;
        self.inner.entry_scope.clear(w)?;
        self.inner.overlays.clear(w)?;
        self.inner.overlay_hist.clear(w)?;
        self.inner.overlay_blobs.clear(w)?;
        self.inner.members.clear(w)?;
        self.inner.approvals.clear(w)?;
        self.inner.enroll.clear(w)?;
        for db in &self.inner.nodes {
            db.clear(w)?;
        }
        let parts = self.partitions();
        for (kind, k, v) in records {
            let db = match kind {
                SNAP_STATE_META if k == KEY_PARTITIONS => continue, // ours stays ours
                SNAP_STATE_META => &self.inner.state_meta,
                SNAP_ENTRIES => &self.inner.entries,
                SNAP_ENTRY_SCOPE => &self.inner.entry_scope,
                SNAP_OVERLAYS => &self.inner.overlays,
                SNAP_MEMBERS => &self.inner.members,
                SNAP_OVERLAY_HIST => &self.inner.overlay_hist,
                SNAP_OVERLAY_BLOBS => &self.inner.overlay_blobs,
                SNAP_APPROVALS => &self.inner.approvals,
                SNAP_ENROLL => &self.inner.enroll,
                SNAP_NODE_STATE | SNAP_NODE_RECORD => {
                    let id = codec::node_of_key(k).ok_or_else(|| StoreError::Corrupt("snapshot node key".into()))?;
                    &self.inner.nodes[codec::partition_of(id, parts) as usize]
                }
                other => return Err(StoreError::Corrupt(format!("snapshot record kind {other}"))),
            };
            db.put(w, k, v)?;
        }
        self.inner.state_meta.put(w, KEY_PARTITIONS, &u64_key(u64::from(parts)))?;
        self.inner.state_meta.put(w, KEY_APPLIED_INDEX, &u64_key(meta.index))?;
        self.inner.raft_meta.put(w, KEY_SNAPSHOT_INDEX, &u64_key(meta.index))?;
        self.inner.raft_meta.put(w, KEY_SNAPSHOT_TERM, &u64_key(meta.term))?;
        self.inner.raft_meta.put(w, KEY_BOOTSTRAPPED, &u64_key(1))?;
        self.put_proto(w, KEY_CONF_STATE, meta.get_conf_state())?;
        Ok(())
    }

    /// The applied state as snapshot data, with its metadata (index = applied index; its
    /// term comes from the raft log through `term_of`, or is the installed snapshot's).
    pub fn build_snapshot(&self, term_of: &dyn Fn(u64) -> Option<u64>) -> Result<Snapshot> {
        let (snap_index, snap_term) = self.snapshot_point()?;
        let r = self.read_txn()?;
        let applied = self.meta_u64(&r, KEY_APPLIED_INDEX)?;
        let term = if applied == snap_index {
            snap_term
        } else {
            term_of(applied).ok_or_else(|| StoreError::Corrupt(format!("applied entry {applied} is not in the log")))?
        };
        let mut data = Vec::new();
        let tables: [(u8, &Db); 9] = [
            (SNAP_STATE_META, &self.inner.state_meta),
            (SNAP_ENTRIES, &self.inner.entries),
            (SNAP_ENTRY_SCOPE, &self.inner.entry_scope),
            (SNAP_OVERLAYS, &self.inner.overlays),
            (SNAP_MEMBERS, &self.inner.members),
            (SNAP_OVERLAY_HIST, &self.inner.overlay_hist),
            (SNAP_OVERLAY_BLOBS, &self.inner.overlay_blobs),
            (SNAP_APPROVALS, &self.inner.approvals),
            (SNAP_ENROLL, &self.inner.enroll),
        ];
        for (kind, db) in tables {
            for kv in db.iter(&r)? {
                let (k, v) = kv?;
                put_snapshot_record(&mut data, kind, k, v);
            }
        }
        for db in &self.inner.nodes {
            for kv in db.iter(&r)? {
                let (k, v) = kv?;
                let kind = if matches!(k.first(), Some(&TAG_NODE_RECORD | &TAG_NODE_HIST)) {
                    SNAP_NODE_RECORD
                } else {
                    SNAP_NODE_STATE
                };
                put_snapshot_record(&mut data, kind, k, v);
            }
        }
        let conf_state: ConfState = self.get_proto(&r, KEY_CONF_STATE)?.unwrap_or_default();
        let meta = SnapshotMetadata { index: applied, term, conf_state: Some(conf_state).into(), ..Default::default() };
        Ok(Snapshot { data: data.into(), metadata: Some(meta).into(), ..Default::default() })
    }

    /// Members the founder has still to invite (see `codec::KEY_INVITES`).
    pub fn invites(&self) -> Result<Vec<Member>> {
        let r = self.read_txn()?;
        match self.inner.raft_meta.get(&r, KEY_INVITES)? {
            None => Ok(Vec::new()),
            Some(b) => Ok(decode_prost::<pact_proto::journal::ChangeMembershipResponse>(b, "invites")?.members),
        }
    }

    pub fn set_invites(&self, members: &[Member]) -> Result<()> {
        let mut w = self.write_txn()?;
        if members.is_empty() {
            self.inner.raft_meta.delete(&mut w, KEY_INVITES)?;
        } else {
            let v = pact_proto::journal::ChangeMembershipResponse { members: members.to_vec() };
            self.inner.raft_meta.put(&mut w, KEY_INVITES, &v.encode_to_vec())?;
        }
        w.commit()?;
        Ok(())
    }

    /// The values the raft shard keeps in memory (see `state::Shadow`), as stored now.
    pub fn shadow(&self) -> Result<crate::state::Shadow> {
        let r = self.read_txn()?;
        Ok(crate::state::Shadow {
            applied: self.meta_u64(&r, KEY_APPLIED_INDEX)?,
            next_sequence: self.next_sequence(&r)?,
            last_ts: self.last_timestamp(&r)?,
            members: members_in(&self.inner.members, &r)?.into_iter().map(|m| (m.id, m)).collect(),
            approvals: self.pending_approvals_in(&r)?,
        })
    }

    /// Every PENDING approval, without its held request (what `state::Shadow` keeps). One walk
    /// of `approvals`, at start and after a snapshot is installed.
    fn pending_approvals_in(&self, r: &RoTxn) -> Result<std::collections::BTreeMap<u64, PendingApproval>> {
        let mut out = std::collections::BTreeMap::new();
        for kv in self.inner.approvals.iter(r)? {
            let (k, v) = kv?;
            let mut a: PendingApproval = decode_prost(v, "approval")?;
            if a.status == ApprovalStatus::Pending as i32 {
                a.original_request.clear();
                out.insert(read_u64(k).ok_or_else(|| StoreError::Corrupt("approval key".into()))?, a);
            }
        }
        Ok(out)
    }

    /// A node's enrollment record.
    pub fn get_enrollment(&self, r: &RoTxn, node: &str) -> Result<Option<NodeEnrollment>> {
        match self.inner.enroll.get(r, &enroll_key(b'n', node.as_bytes()))? {
            None => Ok(None),
            Some(b) => Ok(Some(decode_prost(b, "enrollment")?)),
        }
    }

    pub fn put_enrollment(&self, w: &mut RwTxn, e: &NodeEnrollment) -> Result<()> {
        self.inner.enroll.put(w, &enroll_key(b'n', e.node_id.as_bytes()), &e.encode_to_vec())?;
        Ok(())
    }

    /// Enrollment records in node id order, at most `limit`, looking at no more than
    /// `MAX_LIST_SCAN` of them; `keep` filters.
    pub fn list_enrollments(
        &self,
        r: &RoTxn,
        limit: usize,
        keep: &dyn Fn(&NodeEnrollment) -> bool,
    ) -> Result<Vec<NodeEnrollment>> {
        let mut out = Vec::new();
        for kv in self.inner.enroll.prefix_iter(r, b"n")?.take(MAX_LIST_SCAN) {
            let e: NodeEnrollment = decode_prost(kv?.1, "enrollment")?;
            if keep(&e) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The node a hardware key (`enroll::hardware_keys`) is registered to.
    pub fn hardware_owner(&self, r: &RoTxn, key: &str) -> Result<Option<String>> {
        Ok(self
            .inner
            .enroll
            .get(r, &enroll_key(b'h', key.as_bytes()))?
            .map(|b| String::from_utf8_lossy(b).into_owned()))
    }

    pub fn put_hardware_owner(&self, w: &mut RwTxn, key: &str, node: Option<&str>) -> Result<()> {
        let k = enroll_key(b'h', key.as_bytes());
        match node {
            Some(n) => self.inner.enroll.put(w, &k, n.as_bytes())?,
            None => {
                self.inner.enroll.delete(w, &k)?;
            }
        }
        Ok(())
    }

    /// Every journal's current enrollment CA.
    pub fn enrollment_cas(&self, r: &RoTxn) -> Result<Vec<CaPublished>> {
        let mut out = Vec::new();
        for kv in self.inner.enroll.prefix_iter(r, b"i")? {
            out.push(decode_prost(kv?.1, "enrollment CA")?);
        }
        Ok(out)
    }

    pub fn put_enrollment_ca(&self, w: &mut RwTxn, ca: &CaPublished) -> Result<()> {
        self.inner.enroll.put(w, &enroll_key(b'i', &ca.journal_id.to_be_bytes()), &ca.encode_to_vec())?;
        Ok(())
    }

    pub fn get_approval(&self, r: &RoTxn, id: u64) -> Result<Option<PendingApproval>> {
        match self.inner.approvals.get(r, &u64_key(id))? {
            None => Ok(None),
            Some(b) => Ok(Some(decode_prost(b, "approval")?)),
        }
    }

    /// How many approvals are PENDING.
    pub fn pending_approval_count(&self, r: &RoTxn) -> Result<u64> {
        self.meta_u64(r, KEY_APPROVALS_PENDING)
    }

    /// Approvals newest first (PENDING only unless `include_decided`), at most `limit`, looking
    /// at no more than `MAX_LIST_SCAN` records.
    pub fn list_approvals(&self, r: &RoTxn, include_decided: bool, limit: usize) -> Result<Vec<PendingApproval>> {
        let mut out = Vec::new();
        for kv in self.inner.approvals.rev_iter(r)?.take(MAX_LIST_SCAN) {
            let a: PendingApproval = decode_prost(kv?.1, "approval")?;
            if include_decided || a.status == ApprovalStatus::Pending as i32 {
                out.push(a);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn members(&self) -> Result<Vec<Member>> {
        let r = self.read_txn()?;
        members_in(&self.inner.members, &r)
    }

    // ---------------- applied state ----------------

    pub fn partitions(&self) -> u32 {
        self.inner.nodes.len() as u32
    }

    pub fn meta_u64(&self, r: &RoTxn, key: &[u8]) -> Result<u64> {
        Ok(self.inner.state_meta.get(r, key)?.and_then(read_u64).unwrap_or(0))
    }

    pub fn applied_index(&self) -> Result<u64> {
        let r = self.read_txn()?;
        self.meta_u64(&r, KEY_APPLIED_INDEX)
    }

    /// The next sequence to assign (sequences start at 1; 0 means "none").
    pub fn next_sequence(&self, r: &RoTxn) -> Result<u64> {
        Ok(self.meta_u64(r, KEY_NEXT_SEQUENCE)?.max(1))
    }

    pub fn last_timestamp(&self, r: &RoTxn) -> Result<(i64, u32)> {
        Ok(self.inner.state_meta.get(r, KEY_LAST_TS)?.and_then(decode_ts).unwrap_or((0, 0)))
    }

    pub fn put_meta(&self, w: &mut RwTxn, key: &[u8], v: &[u8]) -> Result<()> {
        self.inner.state_meta.put(w, key, v)?;
        Ok(())
    }

    pub fn put_entry(&self, w: &mut RwTxn, e: &ConfigEntry) -> Result<()> {
        self.inner.entries.put(w, &u64_key(e.sequence), &e.encode_to_vec())?;
        if let Some(k) = e.scope.as_ref().and_then(|s| scope_index_key(s, e.sequence)) {
            self.inner.entry_scope.put(w, &k, &[])?;
        }
        Ok(())
    }

    pub fn get_entry(&self, r: &RoTxn, seq: u64) -> Result<Option<ConfigEntry>> {
        match self.inner.entries.get(r, &u64_key(seq))? {
            None => Ok(None),
            Some(b) => Ok(Some(decode_prost(b, "entry")?)),
        }
    }

    pub fn entry_count(&self, r: &RoTxn) -> Result<u64> {
        Ok(self.inner.entries.len(r)?)
    }

    /// Entries in [from, to], optionally for one scope, newest first unless `oldest_first`,
    /// at most `limit`.
    pub fn list_entries(
        &self,
        r: &RoTxn,
        scope: Option<&Scope>,
        seqs: std::ops::RangeInclusive<u64>,
        limit: usize,
        oldest_first: bool,
        keep: &dyn Fn(&ConfigEntry) -> bool,
    ) -> Result<Vec<ConfigEntry>> {
        let (from, to) = (*seqs.start(), *seqs.end());
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        // Without a scope, walk `entries` by sequence; with one, walk that scope's index and
        // look each entry up. Either way one cursor, forwards or backwards.
        let (db, lo, hi) = match scope.and_then(scope_prefix) {
            None => (&self.inner.entries, u64_key(from).to_vec(), u64_key(to).to_vec()),
            Some(prefix) => {
                let (mut lo, mut hi) = (prefix.clone(), prefix);
                lo.extend_from_slice(&u64_key(from));
                hi.extend_from_slice(&u64_key(to));
                (&self.inner.entry_scope, lo, hi)
            }
        };
        let range = (std::ops::Bound::Included(&lo[..]), std::ops::Bound::Included(&hi[..]));
        type Cursor<'t> = Box<dyn Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>> + 't>;
        let cursor: Cursor =
            if oldest_first { Box::new(db.range(r, &range)?) } else { Box::new(db.rev_range(r, &range)?) };
        let indexed = scope.is_some_and(|s| s.target.is_some());
        let mut out = Vec::new();
        // A filter that matches little must not turn one request into a walk of the whole
        // log: at most MAX_LIST_SCAN entries are looked at (the answer is then shorter).
        for kv in cursor.take(MAX_LIST_SCAN) {
            let (k, v) = kv?;
            let e = if indexed {
                let seq = sequence_of_index_key(k).ok_or_else(|| StoreError::Corrupt("entry_scope key".into()))?;
                self.get_entry(r, seq)?
                    .ok_or_else(|| StoreError::Corrupt(format!("index names missing entry {seq}")))?
            } else {
                decode_prost(v, "entry")?
            };
            if keep(&e) {
                out.push(e);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A new version of a vCluster's overlay: the current record, its history entry and
    /// its compressed boot form.
    pub fn put_overlay(&self, w: &mut RwTxn, o: &OverlayRecord, blob: &[u8]) -> Result<()> {
        let bytes = o.encode_to_vec();
        self.inner.overlays.put(w, o.vcluster_id.as_bytes(), &bytes)?;
        self.inner.overlay_hist.put(w, &versioned_key(None, &o.vcluster_id, o.version), &bytes)?;
        let mut value = Vec::with_capacity(8 + blob.len());
        value.extend_from_slice(&u64_key(o.version));
        value.extend_from_slice(blob);
        self.inner.overlay_blobs.put(w, o.vcluster_id.as_bytes(), &value)?;
        Ok(())
    }

    /// The overlay version in force right after sequence `seq`: the newest at or before it.
    pub fn overlay_at(&self, r: &RoTxn, vcluster: &str, seq: u64) -> Result<Option<OverlayRecord>> {
        let (lo, hi) = (versioned_key(None, vcluster, 0), versioned_key(None, vcluster, seq));
        let range = (std::ops::Bound::Included(&lo[..]), std::ops::Bound::Included(&hi[..]));
        match self.inner.overlay_hist.rev_range(r, &range)?.next() {
            None => Ok(None),
            Some(kv) => Ok(Some(decode_prost(kv?.1, "overlay history")?)),
        }
    }

    /// The current overlay's version and compressed boot form, borrowed from the map (copy
    /// the bytes before the transaction ends). One lookup and no decoding: boot requests call
    /// this to check that what they cache is current.
    pub fn overlay_blob<'t>(&self, r: &'t RoTxn, vcluster: &str) -> Result<Option<(u64, &'t [u8])>> {
        match self.inner.overlay_blobs.get(r, vcluster.as_bytes())? {
            None => Ok(None),
            Some(v) if v.len() >= 8 => Ok(Some((read_u64(&v[..8]).unwrap_or(0), &v[8..]))),
            Some(_) => Err(StoreError::Corrupt(format!("overlay blob of {vcluster} is shorter than its header"))),
        }
    }

    pub fn put_node_record(&self, w: &mut RwTxn, n: &NodeRecord) -> Result<()> {
        let bytes = n.encode_to_vec();
        let db = self.node_db(&n.node_id);
        db.put(w, &node_record_key(&n.node_id), &bytes)?;
        db.put(w, &versioned_key(Some(TAG_NODE_HIST), &n.node_id, n.version), &bytes)?;
        Ok(())
    }

    pub fn get_node_record(&self, r: &RoTxn, node_id: &str) -> Result<Option<NodeRecord>> {
        match self.node_db(node_id).get(r, &node_record_key(node_id))? {
            None => Ok(None),
            Some(b) => Ok(Some(decode_prost(b, "node record")?)),
        }
    }

    /// The node record in force right after sequence `seq`.
    pub fn node_record_at(&self, r: &RoTxn, node_id: &str, seq: u64) -> Result<Option<NodeRecord>> {
        let lo = versioned_key(Some(TAG_NODE_HIST), node_id, 0);
        let hi = versioned_key(Some(TAG_NODE_HIST), node_id, seq);
        let range = (std::ops::Bound::Included(&lo[..]), std::ops::Bound::Included(&hi[..]));
        match self.node_db(node_id).rev_range(r, &range)?.next() {
            None => Ok(None),
            Some(kv) => Ok(Some(decode_prost(kv?.1, "node history")?)),
        }
    }

    pub fn get_overlay(&self, r: &RoTxn, vcluster: &str) -> Result<Option<OverlayRecord>> {
        match self.inner.overlays.get(r, vcluster.as_bytes())? {
            None => Ok(None),
            Some(b) => Ok(Some(decode_prost(b, "overlay")?)),
        }
    }

    fn node_db(&self, node_id: &str) -> &Db {
        &self.inner.nodes[codec::partition_of(node_id, self.partitions()) as usize]
    }

    pub fn put_node_state(&self, w: &mut RwTxn, s: &NodeConfigState) -> Result<()> {
        self.node_db(&s.node_id).put(w, s.node_id.as_bytes(), &s.encode_to_vec())?;
        Ok(())
    }

    pub fn get_node_state(&self, r: &RoTxn, node_id: &str) -> Result<Option<NodeConfigState>> {
        match self.node_db(node_id).get(r, node_id.as_bytes())? {
            None => Ok(None),
            Some(b) => Ok(Some(decode_prost(b, "node state")?)),
        }
    }
}

fn members_in(db: &Db, r: &RoTxn) -> Result<Vec<Member>> {
    let mut out = Vec::new();
    for kv in db.iter(r)? {
        out.push(decode_prost(kv?.1, "member")?);
    }
    Ok(out)
}

fn enroll_key(tag: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(tag);
    k.extend_from_slice(id);
    k
}

/// The state machine's view of an LMDB write transaction.
pub struct LmdbState<'s, 'w, 'e> {
    store: &'s Store,
    w: &'w mut RwTxn<'e>,
}

impl<'s, 'w, 'e> LmdbState<'s, 'w, 'e> {
    pub fn new(store: &'s Store, w: &'w mut RwTxn<'e>) -> Self {
        LmdbState { store, w }
    }
}

impl StateTxn for LmdbState<'_, '_, '_> {
    fn get_enrollment(&self, node: &str) -> Result<Option<NodeEnrollment>> {
        self.store.get_enrollment(self.w, node)
    }
    fn put_enrollment(&mut self, e: &NodeEnrollment) -> Result<()> {
        self.store.put_enrollment(self.w, e)
    }
    fn hardware_owner(&self, key: &str) -> Result<Option<String>> {
        self.store.hardware_owner(self.w, key)
    }
    fn put_hardware_owner(&mut self, key: &str, node: Option<&str>) -> Result<()> {
        self.store.put_hardware_owner(self.w, key, node)
    }
    fn put_enrollment_ca(&mut self, ca: &CaPublished) -> Result<()> {
        self.store.put_enrollment_ca(self.w, ca)
    }
    fn applied_index(&self) -> Result<u64> {
        self.store.meta_u64(self.w, KEY_APPLIED_INDEX)
    }
    fn set_applied_index(&mut self, index: u64) -> Result<()> {
        self.store.put_meta(self.w, KEY_APPLIED_INDEX, &u64_key(index))
    }
    fn next_sequence(&self) -> Result<u64> {
        self.store.next_sequence(self.w)
    }
    fn set_next_sequence(&mut self, seq: u64) -> Result<()> {
        self.store.put_meta(self.w, KEY_NEXT_SEQUENCE, &u64_key(seq))
    }
    fn last_timestamp(&self) -> Result<(i64, u32)> {
        self.store.last_timestamp(self.w)
    }
    fn set_last_timestamp(&mut self, ts: (i64, u32)) -> Result<()> {
        self.store.put_meta(self.w, KEY_LAST_TS, &encode_ts(ts.0, ts.1))
    }
    fn put_entry(&mut self, e: &ConfigEntry) -> Result<()> {
        self.store.put_entry(self.w, e)
    }
    fn get_overlay(&self, vc: &str) -> Result<Option<OverlayRecord>> {
        self.store.get_overlay(self.w, vc)
    }
    fn overlay_at(&self, vc: &str, seq: u64) -> Result<Option<OverlayRecord>> {
        self.store.overlay_at(self.w, vc, seq)
    }
    fn put_overlay(&mut self, o: &OverlayRecord, blob: &[u8]) -> Result<()> {
        self.store.put_overlay(self.w, o, blob)
    }
    fn get_node_record(&self, node: &str) -> Result<Option<NodeRecord>> {
        self.store.get_node_record(self.w, node)
    }
    fn node_record_at(&self, node: &str, seq: u64) -> Result<Option<NodeRecord>> {
        self.store.node_record_at(self.w, node, seq)
    }
    fn put_node_record(&mut self, n: &NodeRecord) -> Result<()> {
        self.store.put_node_record(self.w, n)
    }
    fn put_node_state(&mut self, s: &NodeConfigState) -> Result<()> {
        self.store.put_node_state(self.w, s)
    }
    fn members(&self) -> Result<Vec<Member>> {
        members_in(&self.store.inner.members, self.w)
    }
    fn put_member(&mut self, m: &Member) -> Result<()> {
        self.store.inner.members.put(self.w, &u64_key(m.id), &m.encode_to_vec())?;
        Ok(())
    }
    fn remove_member(&mut self, id: u64) -> Result<()> {
        self.store.inner.members.delete(self.w, &u64_key(id))?;
        Ok(())
    }
    fn get_approval(&self, id: u64) -> Result<Option<PendingApproval>> {
        self.store.get_approval(self.w, id)
    }
    fn put_approval(&mut self, id: u64, a: &PendingApproval) -> Result<()> {
        self.store.inner.approvals.put(self.w, &u64_key(id), &a.encode_to_vec())?;
        Ok(())
    }
    fn pending_approvals(&self) -> Result<u64> {
        self.store.pending_approval_count(self.w)
    }
    fn set_pending_approvals(&mut self, n: u64) -> Result<()> {
        self.store.put_meta(self.w, KEY_APPROVALS_PENDING, &u64_key(n))
    }
}

fn decode_prost<M: prost::Message + Default>(b: &[u8], what: &str) -> Result<M> {
    M::decode(b).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_proto::config::scope::Target;

    fn scope(t: Target) -> Scope {
        Scope { target: Some(t) }
    }

    #[test]
    fn listing_by_scope_range_and_direction() {
        let dir = std::env::temp_dir().join(format!("pact-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, 3).unwrap();
        let scopes = [
            scope(Target::NodeId("n1".into())),
            scope(Target::VclusterId("ml".into())),
            scope(Target::Global(true)),
            scope(Target::NodeId("n10".into())),
        ];
        let mut w = store.write_txn().unwrap();
        for seq in 1..=12u64 {
            let e =
                ConfigEntry { sequence: seq, scope: Some(scopes[(seq % 4) as usize].clone()), ..Default::default() };
            store.put_entry(&mut w, &e).unwrap();
        }
        w.commit().unwrap();
        let r = store.read_txn().unwrap();
        let seqs = |s: Option<&Scope>, from, to, limit, oldest| -> Vec<u64> {
            store.list_entries(&r, s, from..=to, limit, oldest, &|_| true).unwrap().iter().map(|e| e.sequence).collect()
        };
        assert_eq!(seqs(None, 1, u64::MAX, 3, false), vec![12, 11, 10]);
        assert_eq!(seqs(None, 1, u64::MAX, 3, true), vec![1, 2, 3]);
        assert_eq!(seqs(None, 5, 7, 100, true), vec![5, 6, 7]);
        // n1 holds 4 and 8 and 12; n10 (a longer id with the same prefix) must not leak in.
        assert_eq!(seqs(Some(&scopes[0]), 1, u64::MAX, 100, false), vec![12, 8, 4]);
        assert_eq!(seqs(Some(&scopes[3]), 1, u64::MAX, 100, true), vec![3, 7, 11]);
        assert_eq!(seqs(Some(&scopes[2]), 1, 6, 100, true), vec![2, 6]);
        assert_eq!(seqs(Some(&scopes[1]), 2, 9, 1, true), vec![5]);
        assert!(seqs(None, 9, 3, 100, true).is_empty());
        drop(r);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
