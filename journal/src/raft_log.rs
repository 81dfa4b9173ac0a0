//! The raft log as raft-rs sees it: the log file (`wal.rs`) replayed into memory, reconciled
//! at start with the applied state in LMDB, and served to raft-rs through `RaftStorage`.
//!
//! Two stores, one rule: the log is made durable first, and LMDB's applied state only ever
//! covers entries the log holds (or held before a compaction). So at start:
//! - LMDB applied index `a` inside the log (`first - 1 <= a <= last`): the normal case. The
//!   entries after `a` are applied again (the driver's applier may not have stored them before
//!   a crash); apply is deterministic, so the state comes out the same.
//! - `a` past the log's end, or the log starting after `a + 1`: only a snapshot installed into
//!   LMDB whose log reset had not happened yet (or a founding journal's first start). LMDB's
//!   snapshot point must then be `a`, and the log restarts there.
//! - anything else is corruption, refused with both ranges named.

use crate::store::{Result, Store, StoreError};
use crate::wal::{MemLog, Record, Wal};
use crate::{info, warn};
use protobuf::Message as _;
use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

/// Where the log lives under the data dir.
pub const DIR: &str = "raft.wal";

/// Opens (or creates) the log under `data_dir` and reconciles it with `store`.
pub fn open(data_dir: &Path, store: &Store) -> Result<(Wal, MemLog)> {
    let dir = data_dir.join(DIR);
    let (mut wal, mut log, dropped) = Wal::open(&dir)?;
    if dropped > 0 {
        warn!("raft log: cut {dropped} bytes of a write a crash interrupted (never acknowledged)");
    }
    if let Some(legacy) = store.legacy_raft_log()? {
        if log == MemLog::empty() {
            let r = legacy.compacted(legacy.first - 1)?;
            wal.rewrite(&r)?;
            info!(
                "raft log: moved entries {}..={} and the hard state out of LMDB into {}",
                legacy.first,
                legacy.last(),
                dir.display()
            );
            log = legacy;
        }
        store.drop_legacy_raft_log()?;
    }
    let applied = store.applied_index()?;
    let (snap_index, snap_term) = store.snapshot_point()?;
    if applied == 0 && snap_index == 0 {
        // Never bootstrapped nor joined: an empty log, filled by the leader's snapshot.
        return Ok((wal, log));
    }
    if applied > log.last() || applied + 1 < log.first {
        if snap_index != applied {
            return Err(StoreError::Corrupt(format!(
                "the raft log holds {}..={} but the applied state is at {applied} (installed snapshot {snap_index})",
                log.first,
                log.last()
            )));
        }
        let mut hs = log.hs.clone();
        hs.term = hs.term.max(snap_term);
        hs.commit = applied;
        let r = Record { reset: Some((snap_index, snap_term)), hs: Some(hs), entries: Vec::new() };
        wal.rewrite(&r)?;
        log = MemLog::empty();
        log.apply(&r)?;
        info!("raft log: restarted after the snapshot at index {snap_index} (term {snap_term})");
    }
    // Everything applied was committed, even if the hard state recording that did not reach
    // the log before a crash.
    log.hs.commit = log.hs.commit.max(applied);
    Ok((wal, log))
}

/// `raft::Storage::entries` over a log (the journal's and the simulation's): entries
/// `low..high`, at least one, then as many as fit `max_size` bytes.
pub fn entries_in(log: &MemLog, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
    let max_size = max_size.unwrap_or(u64::MAX);
    if low < log.first {
        return Err(raft::Error::Store(StorageError::Compacted));
    }
    assert!(high <= log.last() + 1, "entries({low}, {high}) past the last index {}", log.last());
    let mut out = Vec::new();
    let mut size = 0u64;
    for idx in low..high {
        let e = log.get(idx).ok_or(raft::Error::Store(StorageError::Unavailable))?;
        size += u64::from(e.compute_size());
        if !out.is_empty() && size > max_size {
            break;
        }
        out.push(e.clone());
    }
    Ok(out)
}

/// `raft::Storage::term` over a log: the entry's term, or the snapshot's just before it.
pub fn term_in(log: &MemLog, idx: u64) -> raft::Result<u64> {
    if idx + 1 < log.first {
        return Err(raft::Error::Store(StorageError::Compacted));
    }
    log.term(idx).ok_or(raft::Error::Store(StorageError::Unavailable))
}

fn storage_err(e: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// raft-rs reads its durable log through this: the in-memory copy of the log file, which the
/// driver updates after each write is flushed; conf state and snapshots come from LMDB.
pub struct RaftStorage {
    pub log: Rc<RefCell<MemLog>>,
    pub store: Store,
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let conf_state = self.store.conf_state().map_err(storage_err)?;
        Ok(RaftState { hard_state: self.log.borrow().hs.clone(), conf_state })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        entries_in(&self.log.borrow(), low, high, max_size.into())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        term_in(&self.log.borrow(), idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log.borrow().first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log.borrow().last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let log = self.log.borrow();
        let snap = self.store.build_snapshot(&|i| log.term(i)).map_err(storage_err)?;
        if snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LmdbState;
    use pact_proto::journal::Member;
    use raft::eraftpb::HardState;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pact-raftlog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn me() -> Member {
        Member { id: 1, raft_addr: "h:1".into(), client_addr: "h:2".into(), role: "voter".into() }
    }

    fn empty_entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    #[test]
    fn a_founded_journal_starts_its_log_after_the_founding_snapshot() {
        let d = dir("found");
        let store = Store::open(&d, 1).unwrap();
        store.bootstrap(&me()).unwrap();
        let (_, log) = open(&d, &store).unwrap();
        assert_eq!((log.first, log.last(), log.snap_term, log.hs.term, log.hs.commit), (2, 1, 1, 1, 1));
        // And again: the reset was made durable, nothing changes.
        drop(store);
        let store = Store::open(&d, 1).unwrap();
        assert_eq!(open(&d, &store).unwrap().1, log);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn applied_state_behind_the_log_is_replayed_and_commit_covers_it() {
        let d = dir("behind");
        let store = Store::open(&d, 1).unwrap();
        store.bootstrap(&me()).unwrap();
        let (mut wal, mut log) = open(&d, &store).unwrap();
        let r = Record {
            hs: Some(HardState { term: 2, vote: 1, commit: 3, ..Default::default() }),
            entries: (2..=5).map(|i| empty_entry(i, 2)).collect(),
            ..Default::default()
        };
        wal.append(&crate::wal::encode(&r).unwrap()).unwrap();
        log.apply(&r).unwrap();
        // The applier stored up to 4 (its commit index reached the state, not the log).
        let mut w = store.write_txn().unwrap();
        crate::replica::apply_entries(&mut LmdbState::new(&store, &mut w), &log.entries[..3]).unwrap();
        w.commit().unwrap();
        drop(wal);
        let (_, back) = open(&d, &store).unwrap();
        assert_eq!((back.first, back.last(), back.hs.commit), (2, 5, 4));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_state_the_log_cannot_explain_is_refused() {
        let d = dir("corrupt");
        let store = Store::open(&d, 1).unwrap();
        store.bootstrap(&me()).unwrap();
        let (mut wal, log) = open(&d, &store).unwrap();
        // The state applied to 7 (no snapshot there), the log only to 1.
        let mut w = store.write_txn().unwrap();
        store.put_meta(&mut w, crate::codec::KEY_APPLIED_INDEX, &crate::codec::u64_key(7)).unwrap();
        w.commit().unwrap();
        wal.rewrite(&log.compacted(1).unwrap()).unwrap();
        drop(wal);
        let e = open(&d, &store).unwrap_err().to_string();
        assert!(e.contains("holds 2..=1 but the applied state is at 7"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_legacy_data_dir_moves_its_log_out_of_lmdb() {
        let d = dir("legacy");
        let store = Store::open(&d, 1).unwrap();
        store.bootstrap(&me()).unwrap();
        let legacy = MemLog {
            first: 2,
            snap_term: 1,
            entries: (2..=6).map(|i| empty_entry(i, 3)).collect(),
            hs: HardState { term: 3, vote: 1, commit: 6, ..Default::default() },
        };
        store.write_legacy_raft_log(&legacy).unwrap();
        let (_, log) = open(&d, &store).unwrap();
        assert_eq!(log, legacy);
        assert!(store.legacy_raft_log().unwrap().is_none(), "moved once");
        drop(store);
        let store = Store::open(&d, 1).unwrap();
        assert_eq!(open(&d, &store).unwrap().1, legacy, "and kept in the log file");
        let _ = std::fs::remove_dir_all(&d);
    }
}
