//! `pact watch`: follows the journal's config updates (SubscribeConfigUpdates) as they are
//! committed, printing each one the moment it arrives. Unlike the other commands, which return
//! their text to print at the end, this one writes as it goes and flushes every line.

use crate::commands::{connect, parse_u64};
use crate::output::{self, Format};
use crate::settings::Settings;
use crate::{spec, Failure};
use nanoserde::SerJson;
use pact_proto::client::CallError;
use pact_proto::journal::{JournalStatus, JournalStatusRequest};
use pact_proto::stream::{config_update::Update, ConfigUpdate, SubscribeRequest};
use pact_proto::Method;
use std::io::Write;
use std::time::Duration;

pub const HELP: &str = "\
USAGE: pact watch [--vcluster NAME] [--node NODE] [--from SEQ] [--count N]

Follows config updates as the journal commits them, one line each:
  [HH:MM:SS] seq:N KIND detail     (time in UTC)
KIND is OVERLAY (a vCluster's overlay), NODE_DELTA (a node's own config or assignment),
POLICY, BLACKLIST or RESYNC. --output json prints one JSON object per line instead.

--vcluster NAME  only this vCluster's updates. Only when given on the command line: the
                 default vCluster is not used, so a plain `pact watch` follows everything.
--node NODE      this node's updates (and, without --vcluster, its vCluster's)
--from SEQ       first replay the updates after journal sequence SEQ (0: all of them);
                 default: from now
--count N        exit after printing N updates

Exit 0 after --count updates, when the journal ends the stream, or after a RESYNC (the
journal could not go on; re-run with the --from it names). Exit 5 when the journal is
unreachable or sends nothing, not even a keepalive, for 30 seconds.";

/// The journal sends a keepalive every few seconds on an idle subscription; this much silence
/// means it is gone. (The configured request timeout applies if it is longer.)
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// Characters of a checksum shown in text output: enough to tell versions apart by eye.
const SHORT_CHECKSUM: usize = 12;

#[derive(Debug, PartialEq)]
pub struct Opts {
    /// "" = every vCluster.
    pub vcluster: String,
    /// "" = every node.
    pub node: String,
    /// None = from the journal's last sequence now.
    pub from: Option<u64>,
    pub count: Option<u64>,
}

impl Opts {
    /// `vcluster_flag` is `--vcluster` as typed on the command line, never the default.
    pub fn parse(
        vcluster_flag: Option<&str>,
        node: Option<&str>,
        from: Option<&str>,
        count: Option<&str>,
    ) -> Result<Opts, Failure> {
        let name = |what: &str, v: Option<&str>| -> Result<String, Failure> {
            match v {
                None => Ok(String::new()),
                Some(v) if spec::is_valid_name(v) => Ok(v.to_string()),
                Some(v) => Err(Failure::usage(format!(
                    "invalid {what} name {v:?}: use letters, digits, '-' and '_', starting with a letter or digit"
                ))),
            }
        };
        let count = count.map(|v| parse_u64("--count", v)).transpose()?;
        if count == Some(0) {
            return Err(Failure::usage("--count 0: expected at least 1 (leave --count out to watch until stopped)"));
        }
        Ok(Opts {
            vcluster: name("vCluster", vcluster_flag)?,
            node: name("node", node)?,
            from: from.map(|v| parse_u64("--from", v)).transpose()?,
            count,
        })
    }
}

/// Why following stopped (every way but an error).
#[derive(Debug, PartialEq)]
pub enum End {
    /// --count updates were printed.
    Count,
    /// The journal ended the stream.
    Stream { printed: u64 },
    /// The journal sent a Resync (printed) and will send nothing more.
    Resync { resume_from: u64 },
    /// Stdout was closed (`pact watch | head -1`): not an error.
    ReaderGone,
}

pub fn run(o: &Opts, s: &Settings) -> Result<(), Failure> {
    let mut c = connect(s)?;
    let from_sequence = match o.from {
        Some(f) => f,
        None => {
            let st: JournalStatus = c.call(Method::JournalStatus, &JournalStatusRequest {})?;
            st.last_sequence
        }
    };
    c.set_read_timeout(Some(s.timeout.max(SILENCE_LIMIT)))?;
    let req = SubscribeRequest { node_id: o.node.clone(), vcluster_id: o.vcluster.clone(), from_sequence };
    let id = c.start_stream(Method::SubscribeConfigUpdates, &req)?;
    let stdout = std::io::stdout();
    let end = follow(|| c.next_item(id), s.output, o.count, &mut stdout.lock())?;
    // Notes go to stderr so stdout stays one update per line; a closed stderr loses nothing.
    let mut err = std::io::stderr();
    match end {
        End::Resync { resume_from } => {
            let _ = writeln!(
                err,
                "pact: the journal cannot continue this watch incrementally; re-run with --from {resume_from} to pick up from there"
            );
        }
        End::Stream { printed } => {
            let _ = writeln!(err, "pact: the journal ended the stream ({printed} update(s) printed)");
        }
        End::Count | End::ReaderGone => {}
    }
    Ok(())
}

/// Prints every update `next` yields (keepalives aside) to `out`, flushing each line, until
/// `count` updates, the end of the stream, a Resync, or a closed `out`.
pub fn follow(
    mut next: impl FnMut() -> Result<Option<ConfigUpdate>, CallError>,
    format: Format,
    count: Option<u64>,
    out: &mut dyn Write,
) -> Result<End, Failure> {
    let mut printed = 0u64;
    while let Some(u) = next()? {
        let Some(j) = update_json(&u) else { continue };
        let line = match format {
            Format::Json => j.serialize_json(),
            Format::Text => update_text(&j),
        };
        if out.write_all(line.as_bytes()).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush()).is_err() {
            return Ok(End::ReaderGone);
        }
        printed += 1;
        if let Some(Update::Resync(r)) = &u.update {
            return Ok(End::Resync { resume_from: r.resume_from });
        }
        if count == Some(printed) {
            return Ok(End::Count);
        }
    }
    Ok(End::Stream { printed })
}

/// One update as `--output json` prints it; the text line is made from the same fields.
/// Absent fields are left out of the JSON.
#[derive(SerJson, Debug, Clone, PartialEq, Default)]
pub struct UpdateJson {
    pub sequence: u64,
    pub timestamp: String,
    pub kind: String,
    pub vcluster_id: Option<String>,
    pub node_id: Option<String>,
    pub version: Option<u64>,
    pub checksum: Option<String>,
    pub enforcement_mode: Option<String>,
    pub patterns: Option<Vec<String>>,
    pub reason: Option<String>,
    pub resume_from: Option<u64>,
}

fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// None for a keepalive (an update with nothing in it).
pub fn update_json(u: &ConfigUpdate) -> Option<UpdateJson> {
    let base =
        UpdateJson { sequence: u.sequence, timestamp: output::rfc3339(u.timestamp.as_ref()), ..Default::default() };
    Some(match u.update.as_ref()? {
        Update::OverlayChange(o) => UpdateJson {
            kind: "OVERLAY".into(),
            vcluster_id: Some(o.vcluster_id.clone()),
            version: Some(o.version),
            checksum: Some(o.checksum.clone()),
            ..base
        },
        Update::NodeChange(n) => UpdateJson {
            kind: "NODE_DELTA".into(),
            node_id: Some(n.node_id.clone()),
            version: Some(n.version),
            checksum: Some(n.checksum.clone()),
            ..base
        },
        Update::PolicyChange(p) => {
            let policy = p.policy.clone().unwrap_or_default();
            // The declared spec carries the mode when the rendered policy leaves it empty.
            let mode = some(&policy.enforcement_mode)
                .or_else(|| p.spec.as_ref().and_then(|s| s.enforcement_mode.clone()).filter(|m| !m.is_empty()));
            UpdateJson { kind: "POLICY".into(), vcluster_id: some(&policy.vcluster_id), enforcement_mode: mode, ..base }
        }
        Update::BlacklistChange(b) => UpdateJson {
            kind: "BLACKLIST".into(),
            vcluster_id: some(&b.vcluster_id),
            patterns: Some(b.patterns.clone()),
            ..base
        },
        Update::Resync(r) => UpdateJson {
            kind: "RESYNC".into(),
            reason: Some(r.reason.clone()),
            resume_from: Some(r.resume_from),
            ..base
        },
        Update::PowerOrder(p) => UpdateJson {
            kind: "POWER_ORDER".into(),
            node_id: Some(p.node_id.clone()),
            reason: Some(format!(
                "{} approved by {} (requested by {}): {}",
                p.action, p.approved_by, p.requested_by, p.reason
            )),
            ..base
        },
    })
}

/// `HH:MM:SS` (UTC) of a timestamp, `--:--:--` when the update carries none.
fn clock(ts: &str) -> &str {
    ts.get(11..19).unwrap_or("--:--:--")
}

fn short(checksum: &str) -> String {
    match checksum.char_indices().nth(SHORT_CHECKSUM) {
        Some((cut, _)) => format!("{}…", &checksum[..cut]),
        None => checksum.to_string(),
    }
}

/// `[HH:MM:SS] seq:N KIND detail`.
pub fn update_text(j: &UpdateJson) -> String {
    let mut detail = Vec::new();
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            detail.push(format!("{k}={v}"));
        }
    };
    match j.kind.as_str() {
        "POWER_ORDER" => {
            add("node", j.node_id.clone());
            add("order", j.reason.clone());
        }
        "RESYNC" => {
            add("resume_from", j.resume_from.map(|n| n.to_string()));
            // Last: a reason is free text.
            add("reason", j.reason.clone());
        }
        kind => {
            // A policy or blacklist update without a vCluster is not about one vCluster.
            let scope = if matches!(kind, "POLICY" | "BLACKLIST") && j.vcluster_id.is_none() {
                Some("global".to_string())
            } else {
                None
            };
            add("vc", j.vcluster_id.clone());
            add("node", j.node_id.clone());
            add("version", j.version.map(|v| v.to_string()));
            add("checksum", j.checksum.as_deref().map(short));
            add("enforcement", j.enforcement_mode.clone());
            add("patterns", j.patterns.as_ref().map(|p| p.len().to_string()));
            if let Some(s) = scope {
                detail.insert(0, s);
            }
        }
    }
    format!("[{}] seq:{} {} {}", clock(&j.timestamp), j.sequence, j.kind, detail.join(" ")).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_proto::config::{PolicySpec, Timestamp};
    use pact_proto::policy::VClusterPolicy;
    use pact_proto::stream::{BlacklistChanged, NodeDeltaChanged, OverlayChanged, PolicyChanged, Resync};
    use std::collections::VecDeque;

    // 2026-11-18T11:06:40Z
    const T: i64 = 1_795_000_000;

    fn upd(sequence: u64, update: Option<Update>) -> ConfigUpdate {
        ConfigUpdate { sequence, timestamp: Some(Timestamp { seconds: T, nanos: 0 }), update }
    }

    fn overlay(sequence: u64, vc: &str) -> ConfigUpdate {
        upd(
            sequence,
            Some(Update::OverlayChange(OverlayChanged {
                vcluster_id: vc.into(),
                version: sequence,
                checksum: "abcd1234ef0123456789".into(),
            })),
        )
    }

    fn keepalive(sequence: u64) -> ConfigUpdate {
        upd(sequence, None)
    }

    /// Runs `follow` over `items` (then the end of the stream); returns the end, the output,
    /// and how many items were left unread.
    fn run(
        items: Vec<Result<Option<ConfigUpdate>, CallError>>,
        format: Format,
        count: Option<u64>,
    ) -> (Result<End, Failure>, String, usize) {
        let mut q: VecDeque<_> = items.into();
        let mut out = Vec::new();
        let end = follow(|| q.pop_front().unwrap_or(Ok(None)), format, count, &mut out);
        (end, String::from_utf8(out).unwrap(), q.len())
    }

    #[test]
    fn text_lines_per_kind() {
        let line = |u: ConfigUpdate| update_text(&update_json(&u).unwrap());
        assert_eq!(line(overlay(12, "ml")), "[11:06:40] seq:12 OVERLAY vc=ml version=12 checksum=abcd1234ef01…");
        let short_sum = upd(
            3,
            Some(Update::NodeChange(NodeDeltaChanged { node_id: "n1".into(), version: 3, checksum: "ab12".into() })),
        );
        assert_eq!(line(short_sum), "[11:06:40] seq:3 NODE_DELTA node=n1 version=3 checksum=ab12");
        let policy = upd(
            4,
            Some(Update::PolicyChange(PolicyChanged {
                policy: Some(VClusterPolicy { vcluster_id: "ml".into(), ..Default::default() }),
                spec: Some(PolicySpec { enforcement_mode: Some("enforce".into()), ..Default::default() }),
            })),
        );
        assert_eq!(line(policy), "[11:06:40] seq:4 POLICY vc=ml enforcement=enforce");
        let bl = upd(
            5,
            Some(Update::BlacklistChange(BlacklistChanged {
                patterns: vec!["/tmp/**".into(), "/var/log/**".into()],
                vcluster_id: String::new(),
            })),
        );
        assert_eq!(line(bl), "[11:06:40] seq:5 BLACKLIST global patterns=2");
        let mut rs = upd(6, Some(Update::Resync(Resync { reason: "fell behind".into(), resume_from: 40 })));
        rs.timestamp = None;
        assert_eq!(line(rs), "[--:--:--] seq:6 RESYNC resume_from=40 reason=fell behind");
        assert_eq!(update_json(&keepalive(9)), None);
    }

    #[test]
    fn json_lines_carry_the_full_checksum_and_leave_out_absent_fields() {
        let (end, out, _) = run(vec![Ok(Some(overlay(12, "ml")))], Format::Json, Some(1));
        assert_eq!(end.unwrap(), End::Count);
        assert_eq!(
            out,
            "{\"sequence\":12,\"timestamp\":\"2026-11-18T11:06:40Z\",\"kind\":\"OVERLAY\",\"vcluster_id\":\"ml\",\"version\":12,\"checksum\":\"abcd1234ef0123456789\"}\n"
        );
    }

    #[test]
    fn keepalives_are_neither_printed_nor_counted() {
        let items = vec![
            Ok(Some(keepalive(0))),
            Ok(Some(overlay(1, "a"))),
            Ok(Some(keepalive(1))),
            Ok(Some(keepalive(1))),
            Ok(Some(overlay(2, "b"))),
            Ok(Some(overlay(3, "c"))),
        ];
        let (end, out, left) = run(items, Format::Text, Some(2));
        assert_eq!(end.unwrap(), End::Count);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].contains("seq:1 OVERLAY vc=a"), "{out}");
        assert!(lines[1].contains("seq:2 OVERLAY vc=b"), "{out}");
        assert_eq!(left, 1, "stops reading at --count");
    }

    #[test]
    fn ends_at_the_end_of_the_stream_and_after_a_resync() {
        let (end, out, _) = run(vec![Ok(Some(overlay(1, "a"))), Ok(Some(keepalive(1)))], Format::Text, Some(5));
        assert_eq!(end.unwrap(), End::Stream { printed: 1 });
        assert_eq!(out.lines().count(), 1);

        let resync = upd(7, Some(Update::Resync(Resync { reason: "compacted".into(), resume_from: 7 })));
        let (end, out, left) = run(vec![Ok(Some(resync)), Ok(Some(overlay(8, "a")))], Format::Text, None);
        assert_eq!(end.unwrap(), End::Resync { resume_from: 7 });
        assert_eq!(out, "[11:06:40] seq:7 RESYNC resume_from=7 reason=compacted\n");
        assert_eq!(left, 1, "nothing is read after a resync");
    }

    #[test]
    fn a_lost_journal_is_an_error_and_a_closed_stdout_is_not() {
        let items = vec![Ok(Some(overlay(1, "a"))), Err(CallError::Unreachable("timed out".into()))];
        let (end, out, _) = run(items, Format::Text, None);
        let f = end.unwrap_err();
        assert_eq!(f.code, 5, "{}", f.message);
        assert_eq!(out.lines().count(), 1, "what came before is printed");

        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut q: VecDeque<_> = vec![overlay(1, "a"), overlay(2, "b")].into();
        let end = follow(|| Ok(q.pop_front()), Format::Text, None, &mut Closed);
        assert_eq!(end.unwrap(), End::ReaderGone);
        assert_eq!(q.len(), 1, "stops at the first failed write");
    }

    #[test]
    fn options() {
        let o = Opts::parse(Some("ml"), Some("n1"), Some("0"), Some("3")).unwrap();
        assert_eq!(o, Opts { vcluster: "ml".into(), node: "n1".into(), from: Some(0), count: Some(3) });
        let o = Opts::parse(None, None, None, None).unwrap();
        assert_eq!(o, Opts { vcluster: String::new(), node: String::new(), from: None, count: None });
        let e = Opts::parse(None, None, Some("-1"), None).unwrap_err();
        assert_eq!(e.message, "--from \"-1\": expected a non-negative integer");
        let e = Opts::parse(None, None, None, Some("many")).unwrap_err();
        assert_eq!(e.message, "--count \"many\": expected a non-negative integer");
        let e = Opts::parse(None, None, None, Some("0")).unwrap_err();
        assert!(e.message.starts_with("--count 0: expected at least 1"), "{}", e.message);
        let e = Opts::parse(Some("a b"), None, None, None).unwrap_err();
        assert!(e.message.starts_with("invalid vCluster name \"a b\""), "{}", e.message);
        let e = Opts::parse(None, Some("n/1"), None, None).unwrap_err();
        assert!(e.message.starts_with("invalid node name \"n/1\""), "{}", e.message);
    }
}
