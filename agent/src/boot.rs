//! The agent's journal thread: the boot sequence's network half (connect, stream, verify,
//! apply), then live updates through the subscription, each applied with the same code.
//! Services are the main loop's: this thread hands it the declared services to reconcile.
//!
//! **Cache.** Every verified boot config is kept in `cache_dir/boot.frames` (the stream items,
//! re-encoded as pact frames). When no journal answers within the first rounds of retries,
//! the agent boots from that copy (its checksums are verified again on read), says so on the
//! console, and keeps trying the journals in the background; once one answers, the agent
//! streams with its cached versions, applies what changed and follows the subscription as
//! usual. A node with no cache keeps retrying (capped backoff) and says so on the console.

use crate::apply::{self, ItemResult, Outcome};
use crate::config::AgentConfig;
use crate::journal_client::{self, BootConfig, Event, JournalClient};
use pact_proto::config::{ServiceSpec, VClusterSpec};
use pact_proto::frame::{self, Frame, FrameKind, MAX_FRAME_BODY};
use pact_proto::stream::{config_chunk, ConfigChunk, ConfigComplete, NodeDelta, OverlayChunk};
use pact_proto::Method;
use prost::Message as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// What the other threads (the journal thread, the API server's connections) tell the main loop.
pub enum Msg {
    /// A config was applied (at boot, or a live update): reconcile these services. `vcluster`
    /// is the vCluster the journal served (its assignment wins over what the node asked for).
    Applied { services: Vec<ServiceSpec>, vcluster: String, first: bool, from: String, phases: Vec<(String, Duration)> },
    /// A line for the console and log.
    Log(String),
    /// The API asks for a service action (`crate::api`); the main loop answers on `reply`
    /// (once the action has settled, see `api::Controls`). A dropped `reply` means the
    /// caller gave up waiting.
    Control { name: String, action: crate::api::Action, reply: SyncSender<crate::api::ControlReply> },
    /// The API asks for a reboot or a power-off. The main loop shuts down as for the signal;
    /// before the node goes down (or the agent exits, when not PID 1) it waits briefly on
    /// `answered`, which the API connection closes once its answer is written.
    Power { action: crate::init::PowerAction, reason: String, answered: Receiver<()> },
}

/// Wakes the main loop's poll after a send.
pub trait Wake: Send {
    fn wake(&self);
}

pub struct Link<W: Wake> {
    pub tx: SyncSender<Msg>,
    pub waker: W,
}

impl<W: Wake> Link<W> {
    fn send(&self, m: Msg) {
        // Bounded: if the main loop is far behind, this thread waits, which is what we want
        // (nothing else to do until the services are reconciled).
        if self.tx.send(m).is_ok() {
            self.waker.wake();
        }
    }

    fn log(&self, line: String) {
        self.send(Msg::Log(line));
    }

    /// Sends without waiting (for threads that must not block on a busy main loop, like the
    /// API server's); wakes the main loop when the message was queued.
    pub fn try_send(&self, m: Msg) -> Result<(), TrySendError<Msg>> {
        self.tx.try_send(m)?;
        self.waker.wake();
        Ok(())
    }
}

/// The agent's bearer token, when it has one (`PACT_AGENT_TOKEN`, else `token_path`).
pub fn agent_token(cfg: &AgentConfig) -> Option<String> {
    std::env::var("PACT_AGENT_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| {
        std::fs::read_to_string(&cfg.journal.token_path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
    })
}

/// The certificate files an agent without a token enrolls into (`tls_cert`/`tls_key`, else
/// `<run_dir>/agent.crt` and `agent.key`), with the enroller that keeps them current; None
/// when the agent has a token.
pub fn enroller(
    cfg: &AgentConfig,
    log: std::sync::Arc<dyn Fn(&str) + Send + Sync>,
) -> Option<std::sync::Arc<crate::enroll::Enroller>> {
    if agent_token(cfg).is_some() {
        return None;
    }
    let cert = cfg.journal.tls_cert.clone().unwrap_or_else(|| cfg.run_dir.join("agent.crt"));
    let key = cfg.journal.tls_key.clone().unwrap_or_else(|| cfg.run_dir.join("agent.key"));
    Some(std::sync::Arc::new(crate::enroll::Enroller::new(
        cert,
        key,
        cfg.journal.tls_ca.clone(),
        cfg.journal.endpoints.clone(),
        &cfg.node_id,
        log,
    )))
}

/// How the journal client authenticates: the token when there is one, else `identity`'s
/// certificate. With a token no client certificate is offered: the token decides, and the
/// node's `tls_cert` (its API's certificate) may come from a CA the journal does not know,
/// which would fail the handshake.
pub fn journal_config(
    cfg: &AgentConfig,
    identity: Option<std::sync::Arc<dyn crate::enroll::IdentitySource>>,
) -> Result<journal_client::Config, String> {
    let tls = pact_proto::tls::client_config(&cfg.journal.tls_ca).map_err(|e| format!("journal TLS: {e}"))?;
    let token = match &identity {
        Some(_) => String::new(),
        None => agent_token(cfg).ok_or_else(|| {
            format!(
                "no agent token ({} is missing or empty, PACT_AGENT_TOKEN unset) and no certificate enrollment",
                cfg.journal.token_path.display()
            )
        })?,
    };
    let mut c = journal_client::Config::new(cfg.journal.endpoints.clone(), tls, &token, &cfg.node_id, &cfg.vcluster);
    c.backoff_max = Duration::from_secs(60);
    c.identity = identity;
    Ok(c)
}

fn cache_path(cfg: &AgentConfig) -> PathBuf {
    cfg.cache_dir.join("boot.frames")
}

/// The stream items a verified boot config came from (what `assemble` verifies again).
fn as_items(b: &BootConfig, node_id: &str) -> Vec<ConfigChunk> {
    let node_data = b.node.encode_to_vec();
    vec![
        ConfigChunk {
            chunk: Some(config_chunk::Chunk::BaseOverlay(OverlayChunk {
                version: b.overlay_version,
                vcluster_id: b.vcluster.clone(),
                data: b.overlay_compressed.clone(),
                chunk_index: 0,
                total_chunks: 1,
                checksum: b.overlay_checksum.clone(),
                compressed_size: b.overlay_compressed.len() as u32,
                raw_size: b.overlay.encoded_len() as u32,
            })),
        },
        ConfigChunk {
            chunk: Some(config_chunk::Chunk::NodeDelta(NodeDelta {
                node_id: node_id.to_string(),
                version: b.node_version,
                checksum: b.node_checksum.clone(),
                data: node_data,
            })),
        },
        ConfigChunk {
            chunk: Some(config_chunk::Chunk::Complete(ConfigComplete {
                base_version: b.overlay_version,
                node_version: b.node_version,
                timestamp: None,
                unchanged: false,
            })),
        },
    ]
}

pub fn save_cache(path: &Path, b: &BootConfig, node_id: &str) -> Result<(), String> {
    let mut out = Vec::new();
    for item in as_items(b, node_id) {
        Frame::new(FrameKind::StreamItem, Method::StreamBootConfig as u16, 0, item.encode_to_vec())
            .encode_into(&mut out)
            .map_err(|e| e.to_string())?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &out).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn load_cache(path: &Path) -> Result<BootConfig, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let frames = frame::decode_all(&bytes, MAX_FRAME_BODY).map_err(|e| format!("{}: {e}", path.display()))?;
    let items: Result<Vec<ConfigChunk>, _> = frames.iter().map(|f| ConfigChunk::decode(&f.body[..])).collect();
    let items = items.map_err(|e| format!("{}: {e}", path.display()))?;
    journal_client::assemble(&items, None, "cache").map_err(|e| format!("{}: {e}", path.display()))
}

/// The boot config merged (node declarations over the overlay) and applied.
fn apply_config(b: &BootConfig, hostname: Option<&str>, target: &apply::Target) -> (VClusterSpec, Vec<ItemResult>) {
    let merged = apply::merge(&b.overlay, b.node.node_spec.as_ref());
    let results = apply::apply_all(&merged, hostname, target);
    (merged, results)
}

fn report<W: Wake>(link: &Link<W>, results: &[ItemResult]) {
    for r in results {
        let outcome = match &r.outcome {
            Outcome::Applied => "applied".to_string(),
            Outcome::Unchanged => "unchanged".to_string(),
            Outcome::Failed(m) => format!("FAILED {m}"),
            Outcome::Skipped(m) => format!("skipped {m}"),
        };
        link.log(format!("PACT-APPLY {} {} {}", r.dimension, r.item, outcome));
    }
}

/// Seconds since the Unix epoch, by this node's clock.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// How old an approved power order may be and still be carried out.
pub const POWER_ORDER_MAX_AGE_S: i64 = 600;

/// An approved reboot or power-off, from the subscription. Carried out only if it was approved
/// after this agent started and less than `POWER_ORDER_MAX_AGE_S` ago: a subscription that
/// resumes from an earlier sequence (after the reboot the order caused, say) replays old
/// orders, and those must not power the node down again. (Node and journal clocks are
/// assumed to agree within seconds, as NTP/PTP keeps them.)
fn power_order<W: Wake>(link: &Link<W>, o: &pact_proto::stream::PowerOrder, started_unix: i64) {
    let at = o.approved_at.map(|t| t.seconds).unwrap_or(0);
    let what =
        format!("{} approved by {} (requested by {}) at {at}: {:?}", o.action, o.approved_by, o.requested_by, o.reason);
    let action = match o.action.as_str() {
        "reboot" => crate::init::PowerAction::Reboot,
        "poweroff" => crate::init::PowerAction::PowerOff,
        other => return link.log(format!("PACT: power order {other:?} is not reboot or poweroff; ignored")),
    };
    if at < started_unix || at < unix_now() - POWER_ORDER_MAX_AGE_S {
        return link.log(format!("PACT: power order {what}: from before this agent started; not carried out"));
    }
    link.log(format!("PACT: power order {what}: carrying it out"));
    let (done, answered) = std::sync::mpsc::sync_channel(0);
    drop(done);
    link.send(Msg::Power { action, reason: format!("approved {}: {}", o.action, o.reason), answered });
}

/// The journal thread's whole life: boot, then follow changes. Returns only if the
/// configuration makes talking to a journal impossible (the error says why).
/// `hostname`: what to set the node's hostname to (None: leave it, as an agent that is not
/// PID 1 does: the operating system around it owns the name).
pub fn run<W: Wake>(
    cfg: AgentConfig,
    identity: Option<std::sync::Arc<dyn crate::enroll::IdentitySource>>,
    hostname: Option<String>,
    target: apply::Target,
    link: Link<W>,
) -> String {
    let jcfg = match journal_config(&cfg, identity) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let cache = cache_path(&cfg);
    let started = Instant::now();
    let started_unix = unix_now();

    // First rounds with a limit, so a cached config can take over if no journal answers.
    let mut first = jcfg.clone();
    first.max_rounds = Some(3);
    let mut client = JournalClient::new(first);
    let mut booted_from_cache = false;
    let mut current = match client.boot(None) {
        Ok(b) => b,
        Err(e) => {
            link.log(format!("PACT: no journal answered ({e})"));
            match load_cache(&cache) {
                Ok(b) => {
                    link.log(format!(
                        "PACT: booting from the cached config (overlay {} v{}, node v{}); will reconcile when a journal answers",
                        b.vcluster, b.overlay_version, b.node_version
                    ));
                    booted_from_cache = true;
                    b
                }
                Err(why) => {
                    link.log(format!(
                        "PACT: no usable cached config ({why}); retrying the journals with capped backoff"
                    ));
                    client = JournalClient::new(jcfg.clone());
                    loop {
                        match client.boot(None) {
                            Ok(b) => break b,
                            Err(e) => {
                                link.log(format!("PACT: journal: {e}; retrying"));
                                std::thread::sleep(Duration::from_secs(5));
                            }
                        }
                    }
                }
            }
        }
    };
    let streamed = started.elapsed();
    link.log(format!(
        "PACT: boot config from {}: vCluster {} overlay v{} ({} B compressed), node delta v{}",
        current.endpoint,
        current.vcluster,
        current.overlay_version,
        current.overlay_compressed.len(),
        current.node_version
    ));
    if !booted_from_cache {
        if let Err(e) = save_cache(&cache, &current, &cfg.node_id) {
            link.log(format!("PACT: cannot cache the boot config: {e}"));
        }
    }
    let t = Instant::now();
    let (merged, results) = apply_config(&current, hostname.as_deref(), &target);
    let applied = t.elapsed();
    report(&link, &results);
    link.send(Msg::Applied {
        services: merged.services.clone(),
        vcluster: current.vcluster.clone(),
        first: true,
        from: current.endpoint.clone(),
        phases: vec![("stream".into(), streamed), ("apply".into(), applied)],
    });

    // Live updates: any change refetches the boot config with the cached versions (only
    // what changed travels), then applies and reconciles through the same code as at boot.
    let mut fetch = JournalClient::new(jcfg.clone());
    let mut subscriber = JournalClient::new(jcfg);
    let refetch = |current: &mut BootConfig, fetch: &mut JournalClient, why: &str| match fetch.boot(Some(current)) {
        Ok(b) if b.unchanged => {}
        Ok(b) => {
            *current = b;
            if let Err(e) = save_cache(&cache, current, &cfg.node_id) {
                link.log(format!("PACT: cannot cache the boot config: {e}"));
            }
            let (merged, results) = apply_config(current, hostname.as_deref(), &target);
            report(&link, &results);
            link.send(Msg::Applied {
                services: merged.services.clone(),
                vcluster: current.vcluster.clone(),
                first: false,
                from: why.to_string(),
                phases: vec![],
            });
        }
        Err(e) => link.log(format!("PACT: refetch ({why}) failed: {e}")),
    };
    if booted_from_cache {
        // Blocks (retrying with capped backoff) until a journal answers.
        refetch(&mut current, &mut fetch, "reconcile after booting from cache");
    }
    let mut from = current.overlay_version.max(current.node_version);
    loop {
        let mut sub = subscriber.subscribe(from);
        loop {
            match sub.next_event() {
                Ok(Event::Update(u)) => match &u.update {
                    Some(pact_proto::stream::config_update::Update::PowerOrder(o)) => {
                        power_order(&link, o, started_unix)
                    }
                    _ => refetch(&mut current, &mut fetch, &format!("update at sequence {}", u.sequence)),
                },
                Ok(Event::Resync { reason, resume_from }) => {
                    link.log(format!("PACT: resync ({reason}); refetching"));
                    refetch(&mut current, &mut fetch, "resync");
                    from = resume_from;
                    break;
                }
                Err(e) => {
                    link.log(format!("PACT: subscription: {e}; resubscribing"));
                    from = sub.last_sequence();
                    std::thread::sleep(Duration::from_secs(1));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_proto::stream::NodeDeltaBody;

    fn boot_config() -> BootConfig {
        let mut overlay = VClusterSpec { vcluster_id: "ml".into(), ..Default::default() };
        overlay.sysctl.insert("vm.swappiness".into(), "10".into());
        let blob = zstd::bulk::compress(&overlay.encode_to_vec(), 3).unwrap();
        let node = NodeDeltaBody { assigned_vcluster: "ml".into(), ..Default::default() };
        BootConfig {
            vcluster: "ml".into(),
            overlay_version: 7,
            overlay_checksum: journal_client::sha256_hex(&blob),
            overlay_compressed: blob,
            overlay,
            node_version: 9,
            node_checksum: journal_client::sha256_hex(&node.encode_to_vec()),
            node,
            unchanged: false,
            endpoint: "j1:9443".into(),
        }
    }

    #[test]
    fn the_cache_round_trips_and_a_tampered_cache_is_refused() {
        let dir = std::env::temp_dir().join(format!("pact-agent-cache-{}", std::process::id()));
        let path = dir.join("boot.frames");
        let b = boot_config();
        save_cache(&path, &b, "n1").unwrap();
        let back = load_cache(&path).unwrap();
        assert_eq!((back.overlay.clone(), back.overlay_version, back.node_version), (b.overlay.clone(), 7, 9));
        assert_eq!(back.overlay_checksum, b.overlay_checksum);
        // One flipped byte anywhere in the overlay bytes: refused, never applied.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 3;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(load_cache(&path).is_err());
        assert!(load_cache(&dir.join("missing")).unwrap_err().contains("missing"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
