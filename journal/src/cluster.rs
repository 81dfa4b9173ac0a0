//! Who the journals are and where they listen, from configuration.
//!
//! Two sources name the journals (the deployment guide uses both):
//! - `PACT_JOURNAL_PEERS` / `--peers`: `id=host:port` **client** addresses (9443);
//! - `[journal.raft] members`: `id:host:port` **Raft** addresses (9444).
//!
//! Each journal's Raft address comes from `members` when it is listed there; otherwise it is
//! derived from its `PEERS` entry: the same host, client port + 1 (9443 → 9444). Each client
//! address comes from `PEERS`; otherwise from `members`: the same host, Raft port − 1. When
//! both lists are given, each address comes from its own list and the ids must match (checked
//! when the configuration is read). `[journal.raft] learners` adds non-voting members.
//!
//! This journal's Raft port listens on `--raft-listen` / `PACT_JOURNAL_RAFT_LISTEN` if given,
//! else on the client listen address's IP with its own Raft address's port (listen port + 1
//! when it is not listed anywhere).

use crate::config::JournalConfig;
use pact_proto::journal::Member;
use std::net::SocketAddr;
use std::path::PathBuf;

pub struct Cluster {
    /// Every configured journal, voters first, then learners (role set).
    pub all: Vec<Member>,
    /// This journal, when configured.
    pub me: Option<Member>,
    pub raft_listen: SocketAddr,
}

fn with_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// "host:port" → "host" (without IPv6 brackets).
pub fn host_of(addr: &str) -> String {
    pact_proto::tls::host_of(addr).to_string()
}

pub fn resolve(cfg: &JournalConfig) -> Result<Cluster, String> {
    let mut ids: Vec<u64> = cfg.members.iter().chain(&cfg.peers).map(|p| p.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut all = Vec::new();
    for id in ids {
        let member = cfg.members.iter().find(|p| p.id == id);
        let peer = cfg.peers.iter().find(|p| p.id == id);
        let raft_addr = match (member, peer) {
            (Some(m), _) => with_port(&m.host, m.port),
            (None, Some(p)) => with_port(
                &p.host,
                p.port
                    .checked_add(1)
                    .ok_or(format!("journal {id}: client port {} has no port after it for Raft", p.port))?,
            ),
            (None, None) => unreachable!("id came from one of the lists"),
        };
        let client_addr = match (peer, member) {
            (Some(p), _) => with_port(&p.host, p.port),
            (None, Some(m)) => with_port(&m.host, m.port.saturating_sub(1)),
            (None, None) => unreachable!("id came from one of the lists"),
        };
        all.push(Member { id, raft_addr, client_addr, role: "voter".into() });
    }
    for l in &cfg.learners {
        all.push(Member {
            id: l.id,
            raft_addr: with_port(&l.host, l.port),
            client_addr: with_port(&l.host, l.port.saturating_sub(1)),
            role: "learner".into(),
        });
    }
    let me = all.iter().find(|m| m.id == cfg.node_id).cloned();
    let raft_listen = match cfg.raft_listen {
        Some(a) => a,
        None => {
            let port = match &me {
                Some(m) => m.raft_addr.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or("bad raft address")?,
                None => cfg.listen_addr.port().checked_add(1).ok_or("the listen port has no port after it for Raft")?,
            };
            SocketAddr::new(cfg.listen_addr.ip(), port)
        }
    };
    Ok(Cluster { all, me, raft_listen })
}

/// This journal as the founding member when no list names it (a lone journal).
pub fn lone_member(cfg: &JournalConfig, raft_listen: SocketAddr) -> Member {
    let advertise = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            let h = crate::pki::hostname();
            with_port(if h.is_empty() { "localhost" } else { &h }, a.port())
        } else {
            a.to_string()
        }
    };
    Member {
        id: cfg.node_id,
        raft_addr: advertise(raft_listen),
        client_addr: advertise(cfg.listen_addr),
        role: "voter".into(),
    }
}

/// The cluster CA (certificate, key): `[journal.enrollment] ca_cert`/`ca_key`, else
/// `PACT_CA_CERT`/`PACT_CA_KEY`, else `/etc/pact/ca/ca.crt` and `ca.key` when both exist
/// (not with `--dev`, which keeps to its data dir).
pub fn cluster_ca(cfg: &JournalConfig) -> Option<(PathBuf, PathBuf)> {
    if let (Some(c), Some(k)) = (&cfg.enrollment.ca_cert, &cfg.enrollment.ca_key) {
        return Some((c.clone(), k.clone()));
    }
    if let (Ok(c), Ok(k)) = (std::env::var("PACT_CA_CERT"), std::env::var("PACT_CA_KEY")) {
        if !c.is_empty() && !k.is_empty() {
            return Some((c.into(), k.into()));
        }
    }
    let (c, k) = (PathBuf::from("/etc/pact/ca/ca.crt"), PathBuf::from("/etc/pact/ca/ca.key"));
    (!cfg.dev && c.exists() && k.exists()).then_some((c, k))
}
