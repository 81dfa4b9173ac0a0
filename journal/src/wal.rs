//! The raft log and hard state: an append-only file, made durable with one `fdatasync` per
//! raft round. Appending entries is the one write every commit waits for (a leader's own
//! copy, each follower's acknowledgement), so it is kept to one sequential write and one
//! flush; LMDB commits cost two flushes and several page writes. The applied state stays in
//! LMDB (`store.rs`), stored by the driver's applier behind the log, and replayed from the log
//! after a crash (see `reconcile`).
//!
//! # Layout
//!
//! `<data_dir>/raft.wal/wal-<generation, 20 decimal digits>`, one file at a time:
//!
//! ```text
//! file   := "PACTWAL1" record*
//! record := len u32 LE | crc u32 LE (CRC-32C of payload) | payload (len bytes)
//! payload:= flags u8
//!           [flags & 1: reset   := index u64 LE | term u64 LE]
//!           [flags & 2: hs      := term u64 LE | vote u64 LE | commit u64 LE]
//!           [flags & 4: entries := count u32 LE | (len u32 LE | eraftpb::Entry bytes)*count]
//! ```
//!
//! A record is replayed in that order: `reset` drops the whole log, which then starts after
//! `index` (whose term raft needs); `entries` truncate any suffix from their first index and
//! append (raft may overwrite an uncommitted tail after a leader change); `hs` replaces the
//! hard state.
//!
//! The file grows in zero-filled chunks of `CHUNK` bytes, so the records end before the file
//! does: `fdatasync` after a write into blocks the file already has flushes only that data,
//! while a write past the end also flushes the inode (here 95 against 128 µs per flush).
//!
//! Rounds are written one after another, each flushed before the next is written, so only the
//! last record can be torn by a crash: replay stops at the first record that is short, fails
//! its checksum or reads as zeros. What follows it is a torn write or preallocated zeros; a
//! torn write is overwritten with zeros, so no stale bytes behind a later, shorter record can
//! ever be read back as a record. Nothing after the last good record was ever acknowledged.
//!
//! Compaction and snapshot installation rewrite the file: generation n+1 is written as
//! `.tmp` with one record (`reset` at the compaction point, the hard state, the entries
//! after it), flushed, renamed, the directory flushed, and generation n removed. A crash at
//! any point leaves one complete generation (the highest) to replay.

use crate::store::{Result, StoreError};
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PACTWAL1";
const FLAG_RESET: u8 = 1;
const FLAG_HS: u8 = 2;
const FLAG_ENTRIES: u8 = 4;
const HEADER: usize = 8;
/// The file is extended this much at a time (zero-filled, then flushed with its size).
const CHUNK: u64 = 4 << 20;

/// The raft log as raft-rs reads it (`store::RaftStorage`): entries `first..=last()`, the
/// term of the entry before `first`, and the hard state. Kept whole in memory between
/// compactions (at most `snapshot_interval` entries plus what is in flight).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemLog {
    pub first: u64,
    pub snap_term: u64,
    pub entries: Vec<Entry>,
    pub hs: HardState,
}

/// One record: what one round (or a rewrite) makes durable.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub reset: Option<(u64, u64)>,
    pub hs: Option<HardState>,
    pub entries: Vec<Entry>,
}

impl MemLog {
    pub fn empty() -> MemLog {
        MemLog { first: 1, ..Default::default() }
    }

    pub fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    pub fn get(&self, index: u64) -> Option<&Entry> {
        index.checked_sub(self.first).and_then(|o| self.entries.get(o as usize))
    }

    /// The term of `index`: the entry's, or the snapshot's for the entry before the log.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index + 1 == self.first {
            return Some(self.snap_term);
        }
        self.get(index).map(|e| e.term)
    }

    /// Applies a record (replay, and the driver once the record is durable). Refuses what
    /// would leave a gap or go below the log start: raft never asks for that, so it means
    /// a corrupt file or a driver bug.
    pub fn apply(&mut self, r: &Record) -> Result<()> {
        if let Some((index, term)) = r.reset {
            self.entries.clear();
            self.first = index + 1;
            self.snap_term = term;
        }
        if let Some(first) = r.entries.first() {
            if first.index < self.first || first.index > self.last() + 1 {
                return Err(StoreError::Corrupt(format!(
                    "raft log: entries from {} do not fit a log of {}..={}",
                    first.index,
                    self.first,
                    self.last()
                )));
            }
            self.entries.truncate((first.index - self.first) as usize);
            for e in &r.entries {
                if e.index != self.last() + 1 {
                    return Err(StoreError::Corrupt(format!(
                        "raft log: entry {} follows {} (a gap)",
                        e.index,
                        self.last()
                    )));
                }
                self.entries.push(e.clone());
            }
        }
        if let Some(hs) = &r.hs {
            self.hs = hs.clone();
        }
        Ok(())
    }

    /// The record that recreates this log from nothing after dropping everything up to
    /// `through` (which must be in the log or just before it).
    pub fn compacted(&self, through: u64) -> Result<Record> {
        let term = self
            .term(through)
            .ok_or_else(|| StoreError::Corrupt(format!("compaction point {through} is not in the raft log")))?;
        let keep = (through + 1).saturating_sub(self.first) as usize;
        Ok(Record { reset: Some((through, term)), hs: Some(self.hs.clone()), entries: self.entries[keep..].to_vec() })
    }
}

/// The CRC-32C (Castagnoli) table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c = CRC_TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// A record's bytes, framing included.
pub fn encode(r: &Record) -> Result<Vec<u8>> {
    let mut p = Vec::with_capacity(64 + r.entries.iter().map(|e| e.data.len() + 32).sum::<usize>());
    let flags = if r.reset.is_some() { FLAG_RESET } else { 0 }
        | if r.hs.is_some() { FLAG_HS } else { 0 }
        | if r.entries.is_empty() { 0 } else { FLAG_ENTRIES };
    p.push(flags);
    if let Some((i, t)) = r.reset {
        p.extend_from_slice(&i.to_le_bytes());
        p.extend_from_slice(&t.to_le_bytes());
    }
    if let Some(hs) = &r.hs {
        for v in [hs.term, hs.vote, hs.commit] {
            p.extend_from_slice(&v.to_le_bytes());
        }
    }
    if !r.entries.is_empty() {
        p.extend_from_slice(&(r.entries.len() as u32).to_le_bytes());
        for e in &r.entries {
            let b = e.write_to_bytes().map_err(|x| StoreError::Corrupt(format!("entry {}: {x}", e.index)))?;
            p.extend_from_slice(&(b.len() as u32).to_le_bytes());
            p.extend_from_slice(&b);
        }
    }
    let len = u32::try_from(p.len()).map_err(|_| StoreError::Corrupt("a raft round over 4 GiB".into()))?;
    let mut out = Vec::with_capacity(8 + p.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c(&p).to_le_bytes());
    out.extend_from_slice(&p);
    Ok(out)
}

/// Reads little-endian integers off a payload whose checksum already matched.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt("raft log record is shorter than its fields".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
}

/// A payload (checksum already verified) back into a record.
pub fn decode_payload(p: &[u8]) -> Result<Record> {
    let mut c = Cursor(p);
    let flags = c.take(1)?[0];
    if flags & !(FLAG_RESET | FLAG_HS | FLAG_ENTRIES) != 0 {
        return Err(StoreError::Corrupt(format!("raft log record flags {flags:#x}")));
    }
    let mut r = Record::default();
    if flags & FLAG_RESET != 0 {
        r.reset = Some((c.u64()?, c.u64()?));
    }
    if flags & FLAG_HS != 0 {
        r.hs = Some(HardState { term: c.u64()?, vote: c.u64()?, commit: c.u64()?, ..Default::default() });
    }
    if flags & FLAG_ENTRIES != 0 {
        let n = c.u32()?;
        for _ in 0..n {
            let len = c.u32()? as usize;
            let mut e = Entry::default();
            e.merge_from_bytes(c.take(len)?).map_err(|x| StoreError::Corrupt(format!("raft log entry: {x}")))?;
            r.entries.push(e);
        }
    }
    if !c.0.is_empty() {
        return Err(StoreError::Corrupt(format!("raft log record has {} trailing bytes", c.0.len())));
    }
    Ok(r)
}

/// Splits file bytes (after the header) into verified payloads. Returns them and the length
/// of the valid prefix; anything after is a torn last write.
pub fn scan(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while data.len() - at >= 8 {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap_or_default());
        let Some(p) = data.get(at + 8..at + 8 + len) else { break };
        if len == 0 || crc32c(p) != crc {
            break;
        }
        out.push(p);
        at += 8 + len;
    }
    (out, at)
}

/// The open log file.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    generation: u64,
    file: File,
    /// Where the records end (the next one is written here).
    end: u64,
    /// The file's length: zeros from `end` on.
    allocated: u64,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
}

fn name(generation: u64) -> String {
    format!("wal-{generation:020}")
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("flushing", dir, e))
}

impl Wal {
    /// Opens the log under `dir` (created if missing) and replays it. A torn last record is
    /// cut off (and reported in the returned count of dropped bytes); a record that passes
    /// its checksum but does not fit the log is corruption, and refused.
    pub fn open(dir: &Path) -> Result<(Wal, MemLog, u64)> {
        fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let mut gens = Vec::new();
        for d in fs::read_dir(dir).map_err(|e| io("listing", dir, e))? {
            let d = d.map_err(|e| io("listing", dir, e))?;
            let n = d.file_name().to_string_lossy().into_owned();
            if n.ends_with(".tmp") {
                // A rewrite that never completed; the generation before it is intact.
                fs::remove_file(d.path()).map_err(|e| io("removing", &d.path(), e))?;
            } else if let Some(g) = n.strip_prefix("wal-").and_then(|g| g.parse::<u64>().ok()) {
                gens.push(g);
            }
        }
        gens.sort_unstable();
        let Some(&generation) = gens.last() else {
            let wal = Wal::create(dir, 1, &Record::default())?;
            return Ok((wal, MemLog::empty(), 0));
        };
        for g in &gens[..gens.len() - 1] {
            // Superseded by a completed rewrite that crashed before removing them.
            let p = dir.join(name(*g));
            fs::remove_file(&p).map_err(|e| io("removing", &p, e))?;
        }
        let path = dir.join(name(generation));
        let data = fs::read(&path).map_err(|e| io("reading", &path, e))?;
        if data.len() < HEADER || &data[..HEADER] != MAGIC {
            return Err(StoreError::Corrupt(format!("{} is not a pact raft log (bad header)", path.display())));
        }
        let (payloads, valid) = scan(&data[HEADER..]);
        let mut log = MemLog::empty();
        for (n, p) in payloads.iter().enumerate() {
            let r = decode_payload(p)
                .map_err(|e| StoreError::Corrupt(format!("{}: record {}: {e}", path.display(), n + 1)))?;
            log.apply(&r).map_err(|e| StoreError::Corrupt(format!("{}: record {}: {e}", path.display(), n + 1)))?;
        }
        let end = HEADER + valid;
        // After the records: preallocated zeros, and maybe a torn write, zeroed here.
        let dirty = data[end..].iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
        let file = OpenOptions::new().write(true).open(&path).map_err(|e| io("opening", &path, e))?;
        if dirty > 0 {
            file.write_all_at(&vec![0; dirty], end as u64).map_err(|e| io("clearing a torn write in", &path, e))?;
            file.sync_data().map_err(|e| io("flushing", &path, e))?;
        }
        let wal = Wal { dir: dir.to_path_buf(), generation, file, end: end as u64, allocated: data.len() as u64 };
        Ok((wal, log, dirty as u64))
    }

    /// Extends the file with zeros to hold at least `need` bytes, and flushes it with its size.
    fn extend(&mut self, need: u64) -> Result<()> {
        let path = self.dir.join(name(self.generation));
        let target = need.div_ceil(CHUNK).max(1) * CHUNK;
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at).map_err(|e| io("extending", &path, e))?;
            at += n as u64;
        }
        self.file.sync_all().map_err(|e| io("flushing", &path, e))?;
        self.allocated = target;
        Ok(())
    }

    /// Writes generation `generation` holding `first` (through a temporary name) and makes
    /// it the log.
    fn create(dir: &Path, generation: u64, first: &Record) -> Result<Wal> {
        let tmp = dir.join(format!("{}.tmp", name(generation)));
        let path = dir.join(name(generation));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(|e| io("creating", &tmp, e))?;
        let mut bytes = MAGIC.to_vec();
        if *first != Record::default() {
            bytes.extend_from_slice(&encode(first)?);
        }
        f.write_all(&bytes).map_err(|e| io("writing", &tmp, e))?;
        let len = bytes.len() as u64;
        let mut wal = Wal { dir: dir.to_path_buf(), generation, file: f, end: len, allocated: len };
        // Preallocates the first chunk, and flushes everything.
        wal.extend(len + 1)?;
        fs::rename(&tmp, &path).map_err(|e| io("renaming", &tmp, e))?;
        sync_dir(dir)?;
        Ok(wal)
    }

    /// Appends one encoded record and flushes it (`fdatasync`).
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let need = self.end + bytes.len() as u64;
        if need > self.allocated {
            self.extend(need)?;
        }
        let path = self.dir.join(name(self.generation));
        self.file.write_all_at(bytes, self.end).map_err(|e| io("writing", &path, e))?;
        self.file.sync_data().map_err(|e| io("flushing", &path, e))?;
        self.end = need;
        Ok(())
    }

    /// Replaces the file with a new generation holding only `r` (a compaction or snapshot
    /// reset), then removes the old one.
    pub fn rewrite(&mut self, r: &Record) -> Result<()> {
        let next = Wal::create(&self.dir, self.generation + 1, r)?;
        let old = self.dir.join(name(self.generation));
        *self = next;
        fs::remove_file(&old).map_err(|e| io("removing", &old, e))?;
        Ok(())
    }

    /// Bytes of records in the current file, header included (for metrics).
    pub fn size(&self) -> u64 {
        self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, n: usize) -> Entry {
        Entry { index, term, data: vec![index as u8; n].into(), ..Default::default() }
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pact-wal-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn crc32c_known_answer() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn records_round_trip() {
        let r = Record {
            reset: Some((9, 2)),
            hs: Some(HardState { term: 3, vote: 1, commit: 11, ..Default::default() }),
            entries: vec![entry(10, 2, 5), entry(11, 3, 0)],
        };
        let b = encode(&r).unwrap();
        let (p, valid) = scan(&b);
        assert_eq!(valid, b.len());
        assert_eq!(decode_payload(p[0]).unwrap(), r);
        let only_hs = Record { hs: r.hs.clone(), ..Default::default() };
        assert_eq!(decode_payload(scan(&encode(&only_hs).unwrap()).0[0]).unwrap(), only_hs);
    }

    #[test]
    fn the_log_follows_raft_semantics() {
        let mut log = MemLog::empty();
        log.apply(&Record { reset: Some((1, 1)), ..Default::default() }).unwrap();
        log.apply(&Record { entries: (2..=5).map(|i| entry(i, 1, 1)).collect(), ..Default::default() }).unwrap();
        // A new leader overwrites an uncommitted tail.
        log.apply(&Record { entries: vec![entry(4, 2, 1)], ..Default::default() }).unwrap();
        assert_eq!((log.first, log.last(), log.term(4), log.term(1)), (2, 4, Some(2), Some(1)));
        let gap = log.apply(&Record { entries: vec![entry(7, 2, 1)], ..Default::default() });
        assert!(gap.unwrap_err().to_string().contains("do not fit"), "a gap is refused");
        let below = log.apply(&Record { entries: vec![entry(1, 2, 1)], ..Default::default() });
        assert!(below.is_err(), "below the start is refused");
        let c = log.compacted(3).unwrap();
        assert_eq!((c.reset, c.entries.len()), (Some((3, 1)), 1));
        assert!(log.compacted(9).is_err());
    }

    /// Every prefix of a file (a crash at any byte of the last write) replays to the rounds
    /// that were complete, and the file is cut back to them.
    #[test]
    fn a_torn_last_write_is_cut_off() {
        let dir = tmpdir("torn");
        let (mut wal, _, _) = Wal::open(&dir).unwrap();
        let rounds: Vec<Record> = (0..4u64)
            .map(|k| Record {
                hs: Some(HardState { term: 1, vote: 1, commit: k, ..Default::default() }),
                entries: vec![entry(k + 1, 1, 100 + k as usize)],
                ..Default::default()
            })
            .collect();
        let mut ends = vec![HEADER as u64];
        for r in &rounds {
            wal.append(&encode(r).unwrap()).unwrap();
            ends.push(wal.size());
        }
        drop(wal);
        let path = dir.join(name(1));
        let full = fs::read(&path).unwrap();
        assert_eq!(full.len() as u64, CHUNK, "preallocated");
        let last = *ends.last().unwrap() as usize;
        assert!(full[last..].iter().all(|b| *b == 0));
        for cut in HEADER..=last {
            // A crash that wrote only part of the last record, into preallocated space.
            // (Only a little of the preallocated space is kept: writing 4 MiB per cut is slow.)
            let mut torn = full[..cut].to_vec();
            torn.resize(last + 64, 0);
            fs::write(&path, &torn).unwrap();
            let (mut wal, log, dropped) = Wal::open(&dir).unwrap();
            let complete = ends.iter().filter(|e| **e <= cut as u64).count() - 1;
            assert_eq!(log.entries.len(), complete, "cut at {cut}");
            let partial = &full[ends[complete] as usize..cut];
            let nonzero = partial.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1) as u64;
            assert_eq!(dropped, nonzero, "cut at {cut}");
            assert_eq!(wal.size(), ends[complete], "the next record goes where the good ones end");
            let after = fs::read(&path).unwrap();
            assert!(after[ends[complete] as usize..].iter().all(|b| *b == 0), "the torn write is zeroed");
            if cut == last - 1 {
                // A shorter record written over the cleared tail reads back alone.
                let short = Record { hs: rounds[0].hs.clone(), ..Default::default() };
                wal.append(&encode(&short).unwrap()).unwrap();
                drop(wal);
                let (_, back, dropped) = Wal::open(&dir).unwrap();
                assert_eq!((back.entries.len(), back.hs.commit, dropped), (3, 0, 0));
            }
        }
        // A flipped bit in the last record is a torn write too; in the header it is refused.
        let mut bad = full.clone();
        bad[last - 1] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert_eq!(Wal::open(&dir).unwrap().1.entries.len(), 3);
        let mut bad = full;
        bad[0] = b'X';
        fs::write(&path, &bad).unwrap();
        assert!(Wal::open(&dir).unwrap_err().to_string().contains("bad header"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn rewrites_replace_the_file_and_survive_leftovers() {
        let dir = tmpdir("rewrite");
        let (mut wal, mut log, _) = Wal::open(&dir).unwrap();
        let r =
            Record { reset: Some((1, 1)), entries: (2..=20).map(|i| entry(i, 1, 50)).collect(), ..Default::default() };
        wal.append(&encode(&r).unwrap()).unwrap();
        log.apply(&r).unwrap();
        log.hs = HardState { term: 1, vote: 1, commit: 18, ..Default::default() };
        let c = log.compacted(15).unwrap();
        wal.rewrite(&c).unwrap();
        let tail = Record { entries: vec![entry(21, 1, 50)], ..Default::default() };
        wal.append(&encode(&tail).unwrap()).unwrap();
        drop(wal);
        // A rewrite that crashed before finishing leaves a .tmp; one that crashed before
        // removing the old generation leaves it. Neither changes what is replayed.
        fs::write(dir.join(format!("{}.tmp", name(3))), b"garbage").unwrap();
        // (An older file that ends with its records, without preallocation, reads the same.)
        fs::write(dir.join(name(1)), MAGIC).unwrap();
        let (_, back, dropped) = Wal::open(&dir).unwrap();
        assert_eq!((back.first, back.last(), back.snap_term, back.hs.commit, dropped), (16, 21, 1, 18, 0));
        let names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|d| d.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, vec![name(2)]);
        let _ = fs::remove_dir_all(&dir);
    }
}
