//! kill -9 while four clients append, then restart on the same data dir:
//! - every acknowledged entry is present, at the sequence it was acknowledged with, unchanged;
//! - every present entry is one a client sent (acknowledged, or in flight at the kill: at most
//!   one per client), so nothing appears that nobody wrote;
//! - sequences are 1..=N without a gap, and appends continue at N+1.

mod common;

use common::Journal;
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse, ListEntriesRequest};
use pact_proto::Method;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;

fn entry(label: String) -> ConfigEntry {
    ConfigEntry {
        entry_type: EntryType::Commit as i32,
        scope: Some(Scope { target: Some(Target::VclusterId("crash".into())) }),
        policy_ref: label,
        ..Default::default()
    }
}

fn all_entries(j: &Journal) -> Vec<ConfigEntry> {
    j.client()
        .call_stream(
            Method::ListEntries,
            &ListEntriesRequest { limit: 10_000, oldest_first: true, ..Default::default() },
        )
        .unwrap()
}

#[test]
fn kill_dash_nine_under_load_loses_nothing_acknowledged() {
    let mut j = Journal::start("crash");
    let stop = Arc::new(AtomicBool::new(false));
    // label -> acknowledged sequence
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut threads = Vec::new();
    for c in 0..CLIENTS {
        let mut client = j.client();
        let (stop, acked) = (stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let mut sent = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let label = format!("client-{c}-{i}");
                sent.push(label.clone());
                let r: Result<AppendEntryResponse, _> =
                    client.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(entry(label.clone())) });
                match r {
                    Ok(a) => {
                        acked.lock().unwrap().insert(label, a.sequence);
                    }
                    // The journal died under us: this request's fate is unknown, and we stop.
                    Err(_) => break,
                }
            }
            sent
        }));
    }
    // Let the clients get going, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    j.kill9();
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200, "only {} appends acknowledged before the kill", acked.len());

    j.spawn();
    let entries = all_entries(&j);
    // Gap-free from 1.
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1, "sequence gap at position {i}");
    }
    let by_label: HashMap<&str, u64> = entries.iter().map(|e| (e.policy_ref.as_str(), e.sequence)).collect();
    assert_eq!(by_label.len(), entries.len(), "an entry appears twice");
    for (label, seq) in &acked {
        assert_eq!(by_label.get(label.as_str()), Some(seq), "acknowledged {label} (seq {seq}) is missing or moved");
    }
    let unacked_present: Vec<&str> = by_label.keys().filter(|l| !acked.contains_key(**l)).copied().collect();
    for l in &unacked_present {
        assert!(sent.iter().any(|s| s == l), "entry {l} was never sent by any client");
    }
    assert!(
        unacked_present.len() <= CLIENTS,
        "more unacknowledged entries than requests in flight: {unacked_present:?}"
    );

    // Appends continue right after the last entry.
    let r: AppendEntryResponse = j
        .client()
        .call(Method::AppendEntry, &AppendEntryRequest { entry: Some(entry("after-restart".into())) })
        .unwrap();
    assert_eq!(r.sequence, entries.len() as u64 + 1);
}
