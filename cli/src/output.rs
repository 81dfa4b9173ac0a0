//! How read commands print: text tables for people, JSON (nanoserde) for scripts. Every read
//! command goes through one of the `*Json` types here, so `--output json` is stable.

use nanoserde::SerJson;
use pact_proto::config::{
    scope::Target, ConfigEntry, ConfigState, DeltaAction, EntryType, Scope, StateDelta, Timestamp,
};
use pact_proto::journal::JournalStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// RFC 3339 UTC from Unix seconds (civil-from-days, Howard Hinnant's algorithm).
pub fn rfc3339(ts: Option<&Timestamp>) -> String {
    let Some(ts) = ts else { return String::new() };
    let secs = ts.seconds;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn scope_text(s: Option<&Scope>) -> String {
    match s.and_then(|s| s.target.as_ref()) {
        Some(Target::NodeId(n)) => format!("node:{n}"),
        Some(Target::VclusterId(v)) => format!("vc:{v}"),
        Some(Target::Global(_)) => "global".into(),
        None => "-".into(),
    }
}

pub fn entry_type_text(t: i32) -> String {
    match EntryType::try_from(t) {
        Ok(t) => t.as_str_name().trim_start_matches("ENTRY_TYPE_").to_string(),
        Err(_) => format!("TYPE_{t}"),
    }
}

pub fn config_state_text(s: i32) -> String {
    match ConfigState::try_from(s) {
        Ok(s) => s.as_str_name().trim_start_matches("CONFIG_STATE_").to_string(),
        Err(_) => format!("STATE_{s}"),
    }
}

fn action_text(a: i32) -> String {
    match DeltaAction::try_from(a) {
        Ok(a) => a.as_str_name().trim_start_matches("DELTA_ACTION_").to_string(),
        Err(_) => format!("ACTION_{a}"),
    }
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct DeltaItemJson {
    pub dimension: String,
    pub action: String,
    pub key: String,
    pub value: Option<String>,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct DeltaJson {
    pub kernel: Vec<DeltaItemJson>,
    pub mounts: Vec<DeltaItemJson>,
    pub files: Vec<DeltaItemJson>,
    pub services: Vec<DeltaItemJson>,
    pub network: Vec<DeltaItemJson>,
    pub packages: Vec<DeltaItemJson>,
    pub gpu: Vec<DeltaItemJson>,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct EntryJson {
    pub sequence: u64,
    pub timestamp: String,
    pub entry_type: String,
    pub scope: String,
    pub author: String,
    pub role: String,
    pub parent: Option<u64>,
    pub message: String,
    pub ttl_seconds: Option<u32>,
    pub emergency_reason: Option<String>,
    /// NODE_ASSIGNED and NODE_MOVED: the vCluster the node now belongs to.
    pub target_vcluster: Option<String>,
    pub state_delta: Option<DeltaJson>,
}

fn item(dimension: &str, action: i32, key: String, value: Option<String>) -> DeltaItemJson {
    DeltaItemJson { dimension: dimension.into(), action: action_text(action), key, value }
}

pub fn delta_json(d: &StateDelta) -> DeltaJson {
    DeltaJson {
        kernel: d.kernel.iter().map(|k| item("kernel", k.action, k.key.clone(), k.declared_value.clone())).collect(),
        mounts: d
            .mounts
            .iter()
            .map(|m| {
                let v = m.declared.as_ref().map(|s| {
                    let mut v = format!("{}:{}", s.fs_type, s.source);
                    if !s.options.is_empty() {
                        v.push_str(&format!(" ({})", s.options));
                    }
                    if s.read_only {
                        v.push_str(" [ro]");
                    }
                    v
                });
                item("mounts", m.action, m.path.clone(), v)
            })
            .collect(),
        files: d
            .files
            .iter()
            .map(|f| {
                let mut parts = Vec::new();
                if let Some(h) = &f.content_hash {
                    parts.push(h.clone());
                }
                if let Some(m) = f.mode {
                    parts.push(format!("mode {m:04o}"));
                }
                if let Some(o) = &f.owner {
                    parts.push(format!("owner {o}"));
                }
                if let Some(g) = &f.group {
                    parts.push(format!("group {g}"));
                }
                item("files", f.action, f.path.clone(), (!parts.is_empty()).then(|| parts.join(", ")))
            })
            .collect(),
        services: d
            .services
            .iter()
            .map(|s| item("services", s.action, s.name.clone(), s.declared_state.clone()))
            .collect(),
        network: d.network.iter().map(|n| item("network", n.action, n.interface.clone(), n.detail.clone())).collect(),
        packages: d.packages.iter().map(|p| item("packages", p.action, p.name.clone(), p.version.clone())).collect(),
        gpu: d.gpu.iter().map(|g| item("gpu", g.action, g.gpu_index.to_string(), g.detail.clone())).collect(),
    }
}

pub fn entry_json(e: &ConfigEntry) -> EntryJson {
    let author = e.author.clone().unwrap_or_default();
    EntryJson {
        sequence: e.sequence,
        timestamp: rfc3339(e.timestamp.as_ref()),
        entry_type: entry_type_text(e.entry_type),
        scope: scope_text(e.scope.as_ref()),
        author: author.principal,
        role: author.role,
        parent: e.parent,
        message: e.policy_ref.clone(),
        ttl_seconds: e.ttl_seconds,
        emergency_reason: e.emergency_reason.clone(),
        target_vcluster: (!e.target_vcluster.is_empty()).then(|| e.target_vcluster.clone()),
        state_delta: e.state_delta.as_ref().map(delta_json),
    }
}

pub fn entries_text(entries: &[ConfigEntry]) -> String {
    let mut out =
        format!("{:<7} {:<20} {:<16} {:<22} {:<14} {}\n", "SEQ", "TIME", "TYPE", "SCOPE", "AUTHOR", "MESSAGE");
    for e in entries {
        let j = entry_json(e);
        let mut msg = j.message.clone();
        if let Some(p) = j.parent {
            msg = format!("{msg} (parent {p})").trim().to_string();
        }
        out.push_str(&format!(
            "{:<7} {:<20} {:<16} {:<22} {:<14} {}\n",
            j.sequence, j.timestamp, j.entry_type, j.scope, j.author, msg
        ));
        if let Some(d) = &j.state_delta {
            for it in
                [&d.kernel, &d.mounts, &d.files, &d.services, &d.network, &d.packages, &d.gpu].into_iter().flatten()
            {
                let v = it.value.as_deref().map(|v| format!(" = {v}")).unwrap_or_default();
                out.push_str(&format!("        {:<9} {:<7} {}{}\n", it.dimension, it.action, it.key, v));
            }
        }
    }
    out
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct NodeStateJson {
    pub node_id: String,
    pub state: String,
    pub since_sequence: u64,
    pub updated_at: String,
    pub updated_by: String,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct JournalStatusJson {
    pub node_id: u64,
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_sequence: u64,
    pub entries: u64,
    pub voters: Vec<u64>,
    pub version: String,
}

pub fn journal_status_json(s: &JournalStatus) -> JournalStatusJson {
    JournalStatusJson {
        node_id: s.node_id,
        role: s.role.clone(),
        term: s.term,
        leader_id: s.leader_id,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_sequence: s.last_sequence,
        entries: s.entries,
        voters: s.members.iter().map(|m| m.id).collect(),
        version: s.version.clone(),
    }
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct AppendedJson {
    pub sequence: u64,
    pub timestamp: String,
    pub scope: String,
    pub entry_type: String,
    /// Non-empty when the journal held the entry for two-person approval (`sequence` is then
    /// the PENDING_APPROVAL entry's) instead of applying it.
    pub pending_approval_id: String,
}

/// A five-column table, each column but the last as wide as its widest cell, two spaces apart.
pub fn table5(header: [&str; 5], rows: &[[String; 5]]) -> String {
    let header = header.map(String::from);
    let mut width = [0usize; 4];
    for r in std::iter::once(&header).chain(rows) {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, w) in r.iter().zip(width) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        line.push_str(&r[4]);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(Some(&Timestamp { seconds: 0, nanos: 0 })), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(Some(&Timestamp { seconds: 951_782_400, nanos: 0 })), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(Some(&Timestamp { seconds: 1_795_000_000, nanos: 0 })), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn entry_json_carries_the_delta() {
        use pact_proto::config::{KernelDelta, MountDelta, MountSpec};
        let e = ConfigEntry {
            sequence: 3,
            entry_type: EntryType::Commit as i32,
            scope: Some(Scope { target: Some(Target::VclusterId("ml".into())) }),
            state_delta: Some(StateDelta {
                kernel: vec![KernelDelta {
                    key: "vm.swappiness".into(),
                    action: 3,
                    declared_value: Some("10".into()),
                    actual_value: None,
                }],
                mounts: vec![MountDelta {
                    path: "/scratch".into(),
                    action: 1,
                    declared: Some(MountSpec {
                        fs_type: "nfs".into(),
                        source: "s:/x".into(),
                        options: String::new(),
                        read_only: true,
                    }),
                    actual: None,
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let j = entry_json(&e).serialize_json();
        assert!(j.contains("\"entry_type\":\"COMMIT\""), "{j}");
        assert!(!j.contains("target_vcluster"), "left out when empty: {j}");
        assert!(j.contains("\"scope\":\"vc:ml\""), "{j}");
        assert!(j.contains("vm.swappiness"), "{j}");
        assert!(j.contains("nfs:s:/x [ro]"), "{j}");
        let moved = ConfigEntry {
            entry_type: EntryType::NodeMoved as i32,
            scope: Some(Scope { target: Some(Target::NodeId("n1".into())) }),
            target_vcluster: "inference".into(),
            ..Default::default()
        };
        let j = entry_json(&moved).serialize_json();
        assert!(j.contains("\"entry_type\":\"NODE_MOVED\""), "{j}");
        assert!(j.contains("\"scope\":\"node:n1\""), "{j}");
        assert!(j.contains("\"target_vcluster\":\"inference\""), "{j}");
    }
}
