//! The operations port (9091): `GET /metrics` (Prometheus text format 0.0.4) and
//! `GET /health` (JSON). Plain HTTP/1.1, one request per connection, small and bounded:
//! requests over 8 KiB or slower than 5 s are dropped. Metric names are listed in
//! ARCHITECTURE.md; dashboards and alert rules use exactly these.

use crate::debug;
use crate::shard::ShardRef;
use crate::shared::{Shared, ROLE_LEADER};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_OPEN: u64 = 256;

pub async fn serve(shard: ShardRef, listener: TcpListener) {
    crate::server::accept_loop(&shard.shared.clone(), &listener, MAX_OPEN, |stream| {
        let shard = shard.clone();
        async move {
            if let Err(e) = one_request(&shard, stream).await {
                debug!("metrics request: {e}");
            }
        }
    })
    .await;
}

async fn one_request(shard: &ShardRef, mut stream: TcpStream) -> Result<(), String> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the request ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, 431, "text/plain", "request too large\n").await;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET\n").await;
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            let body = metrics_text(shard);
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        "/health" => {
            let (code, body) = health(shard);
            respond(&mut stream, code, "application/json", &body).await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found: try /metrics or /health\n").await,
    }
}

async fn respond(stream: &mut TcpStream, code: u16, ctype: &str, body: &str) -> Result<(), String> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    stream.write_all(body.as_bytes()).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// 200 when this replica runs and knows a leader; 503 otherwise (shutting down, no quorum).
pub fn health(shard: &ShardRef) -> (u16, String) {
    let s = &shard.shared;
    let leader = s.leader_id.load(Ordering::Relaxed);
    let ok = !s.is_shutting_down() && leader != 0;
    let entries = shard.store.read_txn().ok().and_then(|t| shard.store.entry_count(&t).ok()).unwrap_or(0);
    let body = format!(
        "{{\"status\":\"{}\",\"role\":\"{}\",\"node_id\":{},\"leader_id\":{},\"term\":{},\"commit_index\":{},\"applied_index\":{},\"entries\":{}}}\n",
        if ok { "healthy" } else { "unavailable" },
        s.role_name(),
        s.node_id,
        leader,
        s.term.load(Ordering::Relaxed),
        s.commit_index.load(Ordering::Relaxed),
        s.applied_index.load(Ordering::Relaxed),
        entries
    );
    (if ok { 200 } else { 503 }, body)
}

pub fn metrics_text(shard: &ShardRef) -> String {
    let s: &Shared = &shard.shared;
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let log_entries = (g(&s.last_index) + 1).saturating_sub(g(&s.first_index));
    let store_lag = g(&s.applied_index).saturating_sub(g(&s.durable_applied));
    let entries = shard.store.read_txn().ok().and_then(|t| shard.store.entry_count(&t).ok()).unwrap_or(0);
    let metrics: [(&str, &str, &str, u64); 33] = [
        ("pact_journal_up", "gauge", "1 while this journal process serves.", 1),
        (
            "pact_journal_raft_leader",
            "gauge",
            "1 if this node is the raft leader, else 0.",
            u64::from(s.role.load(Ordering::Relaxed) == ROLE_LEADER),
        ),
        ("pact_journal_raft_leader_id", "gauge", "Node id of the current leader (0 = none known).", g(&s.leader_id)),
        ("pact_journal_raft_term", "gauge", "Current raft term.", g(&s.term)),
        ("pact_journal_raft_commit_index", "gauge", "Highest raft index known committed.", g(&s.commit_index)),
        (
            "pact_journal_raft_applied_index",
            "gauge",
            "Highest raft index applied to the state machine.",
            g(&s.applied_index),
        ),
        ("pact_journal_raft_log_entries", "gauge", "Entries held in the raft log (log size).", log_entries),
        ("pact_journal_raft_log_bytes", "gauge", "Bytes of records in the raft log file.", g(&s.log_bytes)),
        (
            "pact_journal_store_lag_entries",
            "gauge",
            "Applied raft entries whose state is not yet stored in LMDB (the applier's queue).",
            store_lag,
        ),
        ("pact_journal_raft_snapshot_index", "gauge", "Index of the latest snapshot (0 = none).", g(&s.snapshot_index)),
        ("pact_journal_raft_proposals_total", "counter", "Proposals submitted to raft.", g(&s.proposals_total)),
        (
            "pact_journal_raft_proposals_failed_total",
            "counter",
            "Proposals dropped or timed out.",
            g(&s.proposals_failed_total),
        ),
        ("pact_journal_raft_elections_total", "counter", "Times this node became leader.", g(&s.elections_total)),
        (
            "pact_journal_raft_peer_errors_total",
            "counter",
            "Raft messages that could not be delivered to a peer.",
            g(&s.peer_errors_total),
        ),
        ("pact_journal_entries", "gauge", "Config entries stored.", entries),
        ("pact_journal_requests_total", "counter", "Client requests received.", g(&s.requests_total)),
        (
            "pact_journal_request_errors_total",
            "counter",
            "Client requests answered with an error.",
            g(&s.request_errors_total),
        ),
        (
            "pact_journal_auth_failures_total",
            "counter",
            "Requests refused for a missing or bad token.",
            g(&s.auth_failures_total),
        ),
        (
            "pact_journal_protocol_errors_total",
            "counter",
            "Connections closed for protocol violations.",
            g(&s.protocol_errors_total),
        ),
        ("pact_journal_connections_open", "gauge", "Client connections open now.", g(&s.connections_open)),
        ("pact_journal_connections_total", "counter", "Client connections accepted.", g(&s.connections_total)),
        (
            "pact_journal_connections_refused_total",
            "counter",
            "Client connections refused over the per-shard cap.",
            g(&s.connections_refused_total),
        ),
        (
            "pact_journal_boot_streams_active",
            "gauge",
            "Boot streams in progress (all shards).",
            g(&s.boot_streams_active),
        ),
        ("pact_journal_boot_streams_total", "counter", "Boot streams served to completion.", g(&s.boot_streams_total)),
        (
            "pact_journal_boot_streams_busy_total",
            "counter",
            "Boot requests answered BUSY (over max_concurrent_boot_streams).",
            g(&s.boot_streams_busy_total),
        ),
        (
            "pact_journal_boot_stream_errors_total",
            "counter",
            "Boot requests refused (bad request, auth, no vCluster).",
            g(&s.boot_stream_errors_total),
        ),
        (
            "pact_journal_denials_recorded_total",
            "counter",
            "Refused requests (authentication or role) recorded as denied: ADMIN_OPERATION entries.",
            g(&s.denials_recorded_total),
        ),
        (
            "pact_journal_denials_unrecorded_total",
            "counter",
            "Refused requests only counted, over the recording bound; the next record carries their number.",
            g(&s.denials_unrecorded_total),
        ),
        (
            "pact_journal_policy_degraded_total",
            "counter",
            "Requests decided while the policy engine did not answer: writes refused, reads on the built-in rules.",
            g(&s.policy_degraded_total),
        ),
        (
            "pact_journal_overlay_builds_total",
            "counter",
            "Overlay chunk sets built into a shard's cache (first use or new version).",
            g(&s.overlay_builds_total),
        ),
        ("pact_journal_subscriptions_active", "gauge", "Live config subscriptions.", g(&s.subscriptions_active)),
        (
            "pact_journal_subscription_resyncs_total",
            "counter",
            "Subscribers told to resync after falling behind their queue.",
            g(&s.subscription_resyncs_total),
        ),
        (
            "pact_journal_max_concurrent_boot_streams",
            "gauge",
            "The configured boot stream cap.",
            g(&s.max_boot_streams),
        ),
    ];
    let mut out = String::with_capacity(4096);
    for (name, kind, help, v) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node_id=\"{}\"}} {v}", s.node_id);
    }
    // A Prometheus histogram: cumulative buckets, then sum and count.
    let name = "pact_journal_boot_stream_duration_seconds";
    let _ =
        writeln!(out, "# HELP {name} Time to serve a boot stream, request to end of stream.\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, b) in s.boot_stream_buckets.iter().enumerate() {
        cumulative += g(b);
        let le = crate::shared::BOOT_BUCKETS_SECONDS.get(i).map_or("+Inf".to_string(), |v| v.to_string());
        let _ = writeln!(out, "{name}_bucket{{node_id=\"{}\",le=\"{le}\"}} {cumulative}", s.node_id);
    }
    let secs = g(&s.boot_stream_micros_total) as f64 / 1e6;
    let _ = writeln!(
        out,
        "{name}_sum{{node_id=\"{}\"}} {secs:.6}\n{name}_count{{node_id=\"{}\"}} {cumulative}",
        s.node_id, s.node_id
    );
    out
}
