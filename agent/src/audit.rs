//! The agent's API decisions on the journal's record.
//!
//! Each decision of the API server (9445) that is an action, allowed or refused, or a refused
//! read, becomes an ADMIN_OPERATION entry on the node's scope, appended with the agent's own
//! identity (its certificate, or its token): the journal records the agent as the author and
//! the line names the caller the agent verified, their role, the method, its arguments and the
//! outcome. The console line is printed at once; the entry follows on a thread of its own, so
//! a journal that does not answer never delays an answer.
//!
//! Bounds: at most `MAX_QUEUED` lines wait (a flood of refusals while the journals are away
//! drops the excess, counted and reported in the next entry); a failed append is retried
//! every `RETRY`, in order.

use crate::journal_client::Config;
use pact_proto::client::Client;
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse};
use pact_proto::Method;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Lines waiting for the journal, at most.
pub const MAX_QUEUED: usize = 1024;
/// Pause after a failed append.
pub const RETRY: Duration = Duration::from_secs(5);

pub struct Recorder {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

type Log = Arc<dyn Fn(&str) + Send + Sync>;

impl Recorder {
    /// Starts the thread that appends the lines through `cfg`'s endpoints and identity.
    pub fn start(cfg: Config, node_id: &str, log: Log) -> Arc<Recorder> {
        let (tx, rx) = sync_channel(MAX_QUEUED);
        let dropped = Arc::new(AtomicU64::new(0));
        let (node, d, say) = (node_id.to_string(), dropped.clone(), log.clone());
        let spawned = std::thread::Builder::new().name("audit".into()).spawn(move || run(rx, cfg, node, d, log));
        if let Err(e) = spawned {
            say(&format!("PACT: api: decisions are not recorded in the journal: {e}"));
        }
        Arc::new(Recorder { tx, dropped })
    }

    /// Queues one decision line; never blocks.
    pub fn record(&self, line: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn entry(node: &str, line: String) -> ConfigEntry {
    ConfigEntry {
        entry_type: EntryType::AdminOperation as i32,
        scope: Some(Scope { target: Some(Target::NodeId(node.to_string())) }),
        policy_ref: line,
        ..Default::default()
    }
}

fn append(cfg: &Config, e: &ConfigEntry) -> Result<u64, String> {
    let tls = match &cfg.identity {
        Some(i) => i.client_tls()?,
        None => cfg.tls.clone(),
    };
    let mut last = "no journal endpoints".to_string();
    for ep in &cfg.endpoints {
        let r = Client::connect(ep, tls.clone(), &cfg.token, cfg.timeout).and_then(|mut c| {
            c.call::<_, AppendEntryResponse>(Method::AppendEntry, &AppendEntryRequest { entry: Some(e.clone()) })
        });
        match r {
            Ok(a) => return Ok(a.sequence),
            Err(err) => last = format!("{ep}: {err}"),
        }
    }
    Err(last)
}

fn run(rx: Receiver<String>, cfg: Config, node: String, dropped: Arc<AtomicU64>, log: Log) {
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut failing = false;
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(l) => queue.push_back(l),
                Err(_) => return,
            }
        }
        while queue.len() < MAX_QUEUED {
            match rx.try_recv() {
                Ok(l) => queue.push_back(l),
                Err(_) => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            queue.push_back(format!("api: {lost} decision(s) not recorded: more than {MAX_QUEUED} were waiting"));
        }
        let Some(line) = queue.front().cloned() else { continue };
        match append(&cfg, &entry(&node, line)) {
            Ok(_) => {
                queue.pop_front();
                if failing {
                    log("PACT: api: decisions recorded in the journal again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    log(&format!("PACT: api: a decision could not be recorded in the journal ({e}); retrying"));
                    failing = true;
                }
                // Wait, but keep taking lines (up to the bound) meanwhile.
                match rx.recv_timeout(RETRY) {
                    Ok(l) if queue.len() < MAX_QUEUED => queue.push_back(l),
                    Ok(_) => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }
}
