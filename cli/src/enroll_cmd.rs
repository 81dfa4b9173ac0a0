//! `pact enroll` and `pact node enroll|list|inspect|decommission`: node registration by
//! hardware identity and the enrollment records (RegisterNode, BatchRegisterNodes, ListNodes,
//! InspectNode, DecommissionNode). Every command line, and a batch file as a whole, is checked
//! here before anything connects; what the journal refuses maps to exit codes as for any other
//! command (`Failure` from `CallError`).

use crate::node_cmd::checked_name;
use crate::output::{self, Format};
use crate::settings::Settings;
use crate::Failure;
use nanoserde::SerJson;
use pact_proto::config::{Identity, Timestamp};
use pact_proto::enrollment::{
    BatchRegisterNodesRequest, BatchRegisterNodesResponse, DecommissionNodeRequest, DecommissionNodeResponse,
    EnrollmentState, HardwareIdentity, InspectNodeRequest, ListNodesRequest, ListNodesResponse, NodeEnrollment,
    NodeSummary, RegisterNodeRequest, RegisterNodeResponse,
};
use pact_proto::Method;
use std::collections::{BTreeMap, HashMap};

pub const HELP: &str = "\
USAGE: pact enroll NODE --hardware-id HW [--hardware-id HW ...] [--mac MAC] [--bmc-serial S]

Registers NODE by its hardware identity, so that it can enroll (obtain its certificate) when
it boots. The node is not assigned to a vCluster: use `pact node assign` for that.

HW is one identity field, with a prefix or recognised by its form:
  mac:AA:BB:CC:DD:EE:FF   a MAC address (':' or '-' separated; stored lowercase with ':').
                          The first MAC given is the boot interface's, which an enrolling
                          node is matched by; every MAC is kept in mac_addresses
  uuid:UUID               the SMBIOS system UUID (8-4-4-4-12 hex, stored lowercase)
  serial:TEXT             the board serial
  bmc:TEXT                the BMC serial
  tpm:HEX                 SHA-256 (64 hex) of the TPM endorsement key
Without a prefix, a MAC, a UUID or 64 hex digits is recognised; anything else is refused.
Give --hardware-id once per field. --mac MAC and --bmc-serial S are the same as
--hardware-id mac:MAC and --hardware-id bmc:S. See also `pact node --help` (node enroll,
node list, node inspect, node decommission).";

/// Nodes one BatchRegisterNodes request may carry.
pub const MAX_BATCH: usize = 10_000;

const HW_FORMS: &str = "mac:AA:BB:CC:DD:EE:FF, uuid:UUID, serial:BOARD_SERIAL, bmc:BMC_SERIAL, tpm:64-HEX, \
                        or a bare MAC, UUID or 64-hex TPM EK hash";

/// What the command line gave besides the positionals.
#[derive(Default, Clone, Debug)]
pub struct Opts<'a> {
    /// Every `--hardware-id`, in order.
    pub hardware_ids: Vec<&'a str>,
    pub mac: Option<&'a str>,
    pub bmc_serial: Option<&'a str>,
    pub batch: Option<&'a str>,
    pub state: Option<&'a str>,
    /// `--vcluster` as typed on the command line (None when it would come from a default).
    pub vcluster_flag: Option<&'a str>,
    pub unassigned: bool,
    pub force: bool,
}

impl Opts<'_> {
    /// The options that were given, as typed.
    fn given(&self) -> Vec<&'static str> {
        let mut g = Vec::new();
        let mut add = |on: bool, name| {
            if on {
                g.push(name);
            }
        };
        add(!self.hardware_ids.is_empty(), "--hardware-id");
        add(self.mac.is_some(), "--mac");
        add(self.bmc_serial.is_some(), "--bmc-serial");
        add(self.batch.is_some(), "--batch");
        add(self.state.is_some(), "--state");
        add(self.vcluster_flag.is_some(), "--vcluster");
        add(self.unassigned, "--unassigned");
        add(self.force, "--force");
        g
    }

    /// Refuses the options `cmd` does not take.
    fn only(&self, cmd: &str, allowed: &[&str], help: &str) -> Result<(), Failure> {
        match self.given().into_iter().find(|o| !allowed.contains(o)) {
            Some("--vcluster") if cmd.ends_with("enroll") => Err(Failure::usage(format!(
                "`pact {cmd}` takes no --vcluster: registering a node does not assign it (use `pact node assign` afterwards)"
            ))),
            Some(o) => Err(Failure::usage(format!("`pact {cmd}` takes no option {o}; see `pact {help} --help`"))),
            None => Ok(()),
        }
    }
}

/// A checked command line: the one request it sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Register(RegisterNodeRequest),
    Batch(Vec<RegisterNodeRequest>),
    List(ListNodesRequest),
    Inspect(InspectNodeRequest),
    Decommission(DecommissionNodeRequest),
}

/// One identity field, parsed and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HwId {
    Mac(String),
    SmbiosUuid(String),
    BoardSerial(String),
    BmcSerial(String),
    TpmEkHash(String),
}

/// A MAC address: six hex pairs separated by ':' or '-' (one separator throughout), as
/// lowercase `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(v: &str) -> Option<String> {
    let sep = if v.contains(':') { ':' } else { '-' };
    let parts: Vec<&str> = v.split(sep).collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| parts.join(":").to_ascii_lowercase())
}

/// A UUID, 8-4-4-4-12 hex digits, lowercase.
pub fn parse_uuid(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.split('-').collect();
    let lens = parts.iter().map(|p| p.len()).collect::<Vec<_>>();
    let ok = lens == [8, 4, 4, 4, 12] && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| v.to_ascii_lowercase())
}

/// SHA-256 in hex (64 digits), lowercase.
pub fn parse_sha256_hex(v: &str) -> Option<String> {
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_ascii_lowercase())
}

/// A serial number: trimmed, not empty, no control characters.
fn parse_serial(what: &str, v: &str) -> Result<String, String> {
    let t = v.trim();
    if t.is_empty() {
        return Err(format!("empty {what}"));
    }
    if t.chars().any(char::is_control) {
        return Err(format!("{what} {v:?} holds a control character"));
    }
    Ok(t.to_string())
}

/// One `--hardware-id` value (or a batch file's hardware-id column); the error names the value
/// and the accepted forms.
pub fn parse_hardware_id(v: &str) -> Result<HwId, String> {
    let v = v.trim();
    if let Some((prefix, rest)) = v.split_once(':') {
        let rest = rest.trim();
        let bad = |what: &str| format!("{v:?}: not {what}");
        match prefix.to_ascii_lowercase().as_str() {
            "mac" => {
                return parse_mac(rest)
                    .map(HwId::Mac)
                    .ok_or_else(|| bad("a MAC address (six hex pairs separated by ':' or '-')"))
            }
            "uuid" => {
                return parse_uuid(rest).map(HwId::SmbiosUuid).ok_or_else(|| bad("a UUID (8-4-4-4-12 hex digits)"))
            }
            "tpm" => {
                return parse_sha256_hex(rest)
                    .map(HwId::TpmEkHash)
                    .ok_or_else(|| bad("a TPM EK hash (64 hex digits, SHA-256)"))
            }
            "serial" => {
                return parse_serial("board serial", rest).map(HwId::BoardSerial).map_err(|e| format!("{v:?}: {e}"))
            }
            "bmc" => return parse_serial("BMC serial", rest).map(HwId::BmcSerial).map_err(|e| format!("{v:?}: {e}")),
            _ => {}
        }
    }
    if let Some(m) = parse_mac(v) {
        Ok(HwId::Mac(m))
    } else if let Some(u) = parse_uuid(v) {
        Ok(HwId::SmbiosUuid(u))
    } else if let Some(h) = parse_sha256_hex(v) {
        Ok(HwId::TpmEkHash(h))
    } else {
        Err(format!("{v:?} is not a hardware id; use {HW_FORMS}"))
    }
}

/// Adds one field to an identity. The first MAC is the boot interface's (`mac_address`); every
/// MAC goes to `mac_addresses` once. A single-valued field given twice with different values
/// is refused.
pub fn add_hardware_id(hw: &mut HardwareIdentity, id: HwId) -> Result<(), String> {
    fn set(slot: &mut Option<String>, what: &str, v: String) -> Result<(), String> {
        match slot {
            Some(old) if *old != v => Err(format!("two {what}s given ({old:?} and {v:?})")),
            _ => {
                *slot = Some(v);
                Ok(())
            }
        }
    }
    match id {
        HwId::Mac(m) => {
            if hw.mac_address.is_empty() {
                hw.mac_address = m.clone();
            }
            if !hw.mac_addresses.contains(&m) {
                hw.mac_addresses.push(m);
            }
            Ok(())
        }
        HwId::SmbiosUuid(u) => set(&mut hw.smbios_uuid, "SMBIOS UUID", u),
        HwId::BoardSerial(s) => set(&mut hw.board_serial, "board serial", s),
        HwId::BmcSerial(s) => set(&mut hw.bmc_serial, "BMC serial", s),
        HwId::TpmEkHash(h) => set(&mut hw.tpm_ek_hash, "TPM EK hash", h),
    }
}

fn has_identity(hw: &HardwareIdentity) -> bool {
    !hw.mac_address.is_empty()
        || !hw.mac_addresses.is_empty()
        || hw.smbios_uuid.is_some()
        || hw.board_serial.is_some()
        || hw.bmc_serial.is_some()
        || hw.tpm_ek_hash.is_some()
        || !hw.extra.is_empty()
}

/// The identity from --mac, --hardware-id ... and --bmc-serial, in that order (so --mac is the
/// boot MAC when given).
fn identity_from(opts: &Opts<'_>) -> Result<HardwareIdentity, Failure> {
    let mut hw = HardwareIdentity::default();
    if let Some(m) = opts.mac {
        let m = parse_mac(m.trim()).ok_or_else(|| {
            Failure::usage(format!("--mac {m:?}: not a MAC address (six hex pairs separated by ':' or '-')"))
        })?;
        add_hardware_id(&mut hw, HwId::Mac(m)).map_err(Failure::usage)?;
    }
    for v in &opts.hardware_ids {
        let id = parse_hardware_id(v).map_err(|e| Failure::usage(format!("--hardware-id {e}")))?;
        add_hardware_id(&mut hw, id).map_err(|e| Failure::usage(format!("--hardware-id: {e}")))?;
    }
    if let Some(s) = opts.bmc_serial {
        let s = parse_serial("BMC serial", s).map_err(|e| Failure::usage(format!("--bmc-serial: {e}")))?;
        add_hardware_id(&mut hw, HwId::BmcSerial(s)).map_err(Failure::usage)?;
    }
    Ok(hw)
}

/// `pact enroll NODE --hardware-id HW ...`.
pub fn plan_enroll(args: &[String], opts: &Opts<'_>) -> Result<Plan, Failure> {
    opts.only("enroll", &["--hardware-id", "--mac", "--bmc-serial"], "enroll")?;
    let node = args.first().ok_or_else(|| Failure::usage("`pact enroll` needs NODE, the node's id"))?;
    if let Some(extra) = args.get(1) {
        return Err(Failure::usage(format!("`pact enroll`: unexpected argument {extra:?}")));
    }
    let node = checked_name("node", node)?;
    let hw = identity_from(opts)?;
    if !has_identity(&hw) {
        return Err(Failure::usage(format!("`pact enroll {node}` needs at least one --hardware-id HW ({HW_FORMS})")));
    }
    Ok(Plan::Register(RegisterNodeRequest { node_id: node.to_string(), hardware_identity: Some(hw) }))
}

/// Whether `pact node SUB` is one of this module's.
pub fn is_node_subcommand(sub: &str) -> bool {
    matches!(sub, "enroll" | "list" | "inspect" | "decommission")
}

/// `pact node enroll|list|inspect|decommission ...`: args start with the subcommand.
pub fn plan_node(args: &[String], opts: &Opts<'_>) -> Result<Plan, Failure> {
    let sub = args.first().map(String::as_str).unwrap_or_default();
    let rest = args.get(1..).unwrap_or_default();
    let node_arg = |max: usize| -> Result<Option<&str>, Failure> {
        if let Some(extra) = rest.get(max) {
            return Err(Failure::usage(format!("`pact node {sub}`: unexpected argument {extra:?}")));
        }
        rest.first().map(|n| checked_name("node", n)).transpose()
    };
    let needs_node = |n: Option<&str>| -> Result<String, Failure> {
        n.map(str::to_string).ok_or_else(|| Failure::usage(format!("`pact node {sub}` needs NODE, the node's id")))
    };
    match sub {
        "enroll" => {
            opts.only("node enroll", &["--hardware-id", "--mac", "--bmc-serial", "--batch"], "node")?;
            if let Some(path) = opts.batch {
                if let Some(n) = rest.first() {
                    return Err(Failure::usage(format!(
                        "`pact node enroll --batch FILE` takes no NODE ({n:?}): the nodes come from the file"
                    )));
                }
                if let Some(o) = opts.given().into_iter().find(|o| *o != "--batch") {
                    return Err(Failure::usage(format!(
                        "`pact node enroll --batch FILE` takes no {o}: each node's identity comes from the file"
                    )));
                }
                let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{path}: {e}")))?;
                let nodes = parse_batch(path, &text).map_err(Failure::usage)?;
                return Ok(Plan::Batch(nodes));
            }
            let node = needs_node(node_arg(1)?)?;
            if opts.mac.is_none() {
                return Err(Failure::usage(format!(
                    "`pact node enroll {node}` needs --mac MAC, the boot interface's MAC address (or use --batch FILE)"
                )));
            }
            let hw = identity_from(opts)?;
            Ok(Plan::Register(RegisterNodeRequest { node_id: node, hardware_identity: Some(hw) }))
        }
        "list" => {
            opts.only("node list", &["--state", "--vcluster", "--unassigned"], "node")?;
            node_arg(0)?;
            if opts.unassigned && opts.vcluster_flag.is_some() {
                return Err(Failure::usage("`pact node list`: --unassigned and --vcluster exclude each other"));
            }
            let state_filter = opts.state.map(parse_state).transpose()?.map(|s| s as i32);
            let vcluster_filter =
                opts.vcluster_flag.map(|v| checked_name("vCluster", v).map(str::to_string)).transpose()?;
            Ok(Plan::List(ListNodesRequest { state_filter, vcluster_filter, unassigned_only: opts.unassigned }))
        }
        "inspect" => {
            opts.only("node inspect", &[], "node")?;
            Ok(Plan::Inspect(InspectNodeRequest { node_id: needs_node(node_arg(1)?)? }))
        }
        "decommission" => {
            opts.only("node decommission", &["--force"], "node")?;
            let node_id = needs_node(node_arg(1)?)?;
            Ok(Plan::Decommission(DecommissionNodeRequest { node_id, force: opts.force }))
        }
        other => Err(Failure::usage(format!("unknown node subcommand {other:?}\n\n{}", crate::node_cmd::HELP))),
    }
}

/// `--state`: registered, active, inactive or revoked (any case).
pub fn parse_state(v: &str) -> Result<EnrollmentState, Failure> {
    let name = format!("ENROLLMENT_STATE_{}", v.trim().to_ascii_uppercase());
    EnrollmentState::from_str_name(&name)
        .filter(|s| *s != EnrollmentState::Unspecified)
        .ok_or_else(|| Failure::usage(format!("--state {v:?}: expected registered, active, inactive or revoked")))
}

/// An enrollment state as the CLI prints it: `registered`, `active`, ...
pub fn state_text(s: i32) -> String {
    match EnrollmentState::try_from(s) {
        Ok(s) => s.as_str_name().trim_start_matches("ENROLLMENT_STATE_").to_ascii_lowercase(),
        Err(_) => format!("state_{s}"),
    }
}

/// A batch file: `node_id,mac[,bmc_serial[,hardware_id...]]` per line; an optional header
/// (first line whose first field is `node_id` or `node`), `#` comments and blank lines are
/// skipped; fields are trimmed. Errors name `path:line`.
pub fn parse_batch(path: &str, text: &str) -> Result<Vec<RegisterNodeRequest>, String> {
    let mut nodes = Vec::new();
    let mut seen_node: HashMap<String, usize> = HashMap::new();
    let mut seen_mac: HashMap<String, (usize, String)> = HashMap::new();
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if std::mem::take(&mut first) && matches!(fields[0].to_ascii_lowercase().as_str(), "node_id" | "node") {
            continue;
        }
        let err = |m: String| format!("{path}:{n}: {m}");
        let node = fields[0];
        if node.is_empty() {
            return Err(err("no node id (columns: node_id,mac[,bmc_serial[,hardware_id...]])".into()));
        }
        if !crate::spec::is_valid_name(node) {
            return Err(err(format!(
                "invalid node name {node:?}: use letters, digits, '-' and '_', starting with a letter or digit"
            )));
        }
        if let Some(prev) = seen_node.insert(node.to_string(), n) {
            return Err(err(format!("node {node} is also on line {prev}")));
        }
        let mac = match fields.get(1) {
            None | Some(&"") => {
                return Err(err(format!("node {node} has no MAC (columns: node_id,mac[,bmc_serial[,hardware_id...]])")))
            }
            Some(m) => parse_mac(m)
                .ok_or_else(|| err(format!("{m:?} is not a MAC address (six hex pairs separated by ':' or '-')")))?,
        };
        if let Some((prev, other)) = seen_mac.insert(mac.clone(), (n, node.to_string())) {
            return Err(err(format!("MAC {mac} is also on line {prev} (node {other})")));
        }
        let mut hw = HardwareIdentity::default();
        add_hardware_id(&mut hw, HwId::Mac(mac)).map_err(err)?;
        if let Some(s) = fields.get(2).filter(|s| !s.is_empty()) {
            let s = parse_serial("BMC serial", s).map_err(err)?;
            add_hardware_id(&mut hw, HwId::BmcSerial(s)).map_err(err)?;
        }
        for v in fields.iter().skip(3).filter(|v| !v.is_empty()) {
            add_hardware_id(&mut hw, parse_hardware_id(v).map_err(err)?).map_err(err)?;
        }
        nodes.push(RegisterNodeRequest { node_id: node.to_string(), hardware_identity: Some(hw) });
    }
    if nodes.is_empty() {
        return Err(format!("{path}: no nodes (columns: node_id,mac[,bmc_serial[,hardware_id...]])"));
    }
    if nodes.len() > MAX_BATCH {
        return Err(format!("{path}: {} nodes; a batch takes at most {MAX_BATCH} (split the file)", nodes.len()));
    }
    Ok(nodes)
}

// ---- output ----

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct RegisteredJson {
    pub node_id: String,
    pub state: String,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct BatchResultJson {
    pub node_id: String,
    pub success: bool,
    pub state: String,
    pub error: Option<String>,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct BatchJson {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub results: Vec<BatchResultJson>,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct NodeSummaryJson {
    pub node_id: String,
    pub state: String,
    pub vcluster_id: String,
    pub mac_address: String,
    pub last_seen: String,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct IdentityJson {
    pub principal: String,
    pub role: String,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct HardwareJson {
    pub mac_address: String,
    pub mac_addresses: Vec<String>,
    pub smbios_uuid: Option<String>,
    pub board_serial: Option<String>,
    pub bmc_serial: Option<String>,
    pub tpm_ek_hash: Option<String>,
    pub extra: BTreeMap<String, String>,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct NodeEnrollmentJson {
    pub node_id: String,
    pub domain_id: String,
    pub state: String,
    pub vcluster_id: String,
    pub hardware_identity: HardwareJson,
    pub cert_serial: String,
    pub cert_serials: Vec<String>,
    pub cert_expires_at: String,
    pub last_seen: String,
    pub enrolled_at: String,
    pub enrolled_by: Option<IdentityJson>,
    pub active_sessions: u32,
    /// Hex SHA-256 of each public key certified for the node.
    pub key_hashes: Vec<String>,
    pub decommissioned_at: Option<String>,
    pub decommissioned_by: Option<IdentityJson>,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct DecommissionedJson {
    pub node_id: String,
    pub state: String,
    pub sessions_terminated: u32,
    pub cert_serial_revoked: String,
}

fn identity_json(i: Option<&Identity>) -> Option<IdentityJson> {
    i.map(|i| IdentityJson { principal: i.principal.clone(), role: i.role.clone() })
}

fn ts(t: Option<&Timestamp>) -> String {
    output::rfc3339(t)
}

pub fn summary_json(n: &NodeSummary) -> NodeSummaryJson {
    NodeSummaryJson {
        node_id: n.node_id.clone(),
        state: state_text(n.enrollment_state),
        vcluster_id: n.vcluster_id.clone(),
        mac_address: n.mac_address.clone(),
        last_seen: ts(n.last_seen.as_ref()),
    }
}

/// The `pact node list` table (NODE STATE VCLUSTER MAC LAST-SEEN), columns as wide as their
/// widest value.
pub fn list_text(nodes: &[NodeSummary]) -> String {
    if nodes.is_empty() {
        return "no nodes\n".into();
    }
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let rows: Vec<[String; 5]> = nodes
        .iter()
        .map(summary_json)
        .map(|j| [j.node_id, j.state, dash(j.vcluster_id), dash(j.mac_address), dash(j.last_seen)])
        .collect();
    crate::output::table5(["NODE", "STATE", "VCLUSTER", "MAC", "LAST-SEEN"], &rows)
}

pub fn enrollment_json(e: &NodeEnrollment) -> NodeEnrollmentJson {
    let hw = e.hardware_identity.clone().unwrap_or_default();
    NodeEnrollmentJson {
        node_id: e.node_id.clone(),
        domain_id: e.domain_id.clone(),
        state: state_text(e.enrollment_state),
        vcluster_id: e.vcluster_id.clone(),
        hardware_identity: HardwareJson {
            mac_address: hw.mac_address,
            mac_addresses: hw.mac_addresses,
            smbios_uuid: hw.smbios_uuid,
            board_serial: hw.board_serial,
            bmc_serial: hw.bmc_serial,
            tpm_ek_hash: hw.tpm_ek_hash,
            extra: hw.extra,
        },
        cert_serial: e.cert_serial.clone(),
        cert_serials: e.cert_serials.clone(),
        cert_expires_at: ts(e.cert_expires_at.as_ref()),
        last_seen: ts(e.last_seen.as_ref()),
        enrolled_at: ts(e.enrolled_at.as_ref()),
        enrolled_by: identity_json(e.enrolled_by.as_ref()),
        active_sessions: e.active_sessions,
        key_hashes: e.key_hashes.iter().map(|h| pact_proto::hex(h)).collect(),
        decommissioned_at: e.decommissioned_at.as_ref().map(|t| ts(Some(t))),
        decommissioned_by: identity_json(e.decommissioned_by.as_ref()),
    }
}

/// `pact node inspect`: one `key: value` line per field.
pub fn inspect_text(e: &NodeEnrollment) -> String {
    let j = enrollment_json(e);
    let hw = &j.hardware_identity;
    let or = |s: &str, none: &str| if s.is_empty() { none.to_string() } else { s.to_string() };
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let who = |i: &Option<IdentityJson>| match i {
        Some(i) if i.role.is_empty() => i.principal.clone(),
        Some(i) => format!("{} ({})", i.principal, i.role),
        None => "-".into(),
    };
    let other_macs: Vec<&str> = hw.mac_addresses.iter().map(String::as_str).filter(|m| *m != hw.mac_address).collect();
    // cert_serials supersedes cert_serial; an older journal fills only the latter.
    let serials = if j.cert_serials.is_empty() { or(&j.cert_serial, "-") } else { j.cert_serials.join(", ") };
    let mut lines: Vec<(&str, String)> = vec![
        ("node", j.node_id.clone()),
        ("state", j.state.clone()),
        ("vcluster", or(&j.vcluster_id, "(none)")),
        ("mac", or(&hw.mac_address, "-")),
        ("other macs", if other_macs.is_empty() { "-".into() } else { other_macs.join(", ") }),
        ("smbios uuid", opt(&hw.smbios_uuid)),
        ("board serial", opt(&hw.board_serial)),
        ("bmc serial", opt(&hw.bmc_serial)),
        ("tpm ek hash", opt(&hw.tpm_ek_hash)),
    ];
    if !hw.extra.is_empty() {
        lines.push(("extra", hw.extra.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")));
    }
    if !j.domain_id.is_empty() {
        lines.push(("domain", j.domain_id.clone()));
    }
    lines.extend([
        ("cert serials", serials),
        ("cert expires", or(&j.cert_expires_at, "-")),
        ("active sessions", j.active_sessions.to_string()),
        ("last seen", or(&j.last_seen, "-")),
        ("enrolled at", or(&j.enrolled_at, "-")),
        ("enrolled by", who(&j.enrolled_by)),
    ]);
    if let Some(at) = &j.decommissioned_at {
        lines.push(("decommissioned at", at.clone()));
    }
    if j.decommissioned_by.is_some() {
        lines.push(("decommissioned by", who(&j.decommissioned_by)));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines.into_iter().map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:"))).collect()
}

pub fn decommissioned_text(r: &DecommissionNodeResponse, node: &str) -> String {
    let node = if r.node_id.is_empty() { node } else { &r.node_id };
    let mut out = if r.cert_serial_revoked.is_empty() {
        format!("decommissioned {node}\n")
    } else {
        format!("decommissioned {node} (certificate serial {} revoked)\n", r.cert_serial_revoked)
    };
    if r.sessions_terminated > 0 {
        out.push_str(&format!("terminated {} active session(s)\n", r.sessions_terminated));
    }
    out
}

/// A batch's outcome: the per-node results (every node sent appears once; one the journal did
/// not answer for counts as failed), the failure lines and the summary.
pub fn batch_outcome(sent: &[RegisterNodeRequest], r: &BatchRegisterNodesResponse) -> (BatchJson, String, String) {
    let by_node: HashMap<&str, &pact_proto::enrollment::BatchNodeResult> =
        r.results.iter().map(|x| (x.node_id.as_str(), x)).collect();
    let results: Vec<BatchResultJson> = sent
        .iter()
        .map(|n| match by_node.get(n.node_id.as_str()) {
            Some(x) => BatchResultJson {
                node_id: n.node_id.clone(),
                success: x.success,
                state: state_text(x.enrollment_state),
                error: if x.success {
                    None
                } else {
                    Some(
                        x.error.clone().filter(|e| !e.is_empty()).unwrap_or_else(|| "refused (no reason given)".into()),
                    )
                },
            },
            None => BatchResultJson {
                node_id: n.node_id.clone(),
                success: false,
                state: state_text(0),
                error: Some("no result from the journal".into()),
            },
        })
        .collect();
    let total = sent.len() as u64;
    let succeeded = results.iter().filter(|x| x.success).count() as u64;
    let failed = total - succeeded;
    let lines: String = results
        .iter()
        .filter(|x| !x.success)
        .map(|x| format!("{}: {}\n", x.node_id, x.error.as_deref().unwrap_or_default()))
        .collect();
    let summary = format!("enrolled {succeeded} of {total} nodes ({failed} failed)");
    (BatchJson { total, succeeded, failed, results }, lines, summary)
}

/// Writes to stdout now (a batch with failures prints its report, then fails with exit 1).
fn print_now(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let nl = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
    let _ = stdout.write_all(text.as_bytes()).and_then(|_| stdout.write_all(nl.as_bytes()));
    let _ = stdout.flush();
}

/// Sends the checked request and formats the answer.
pub fn execute(plan: Plan, s: &Settings) -> Result<String, Failure> {
    let mut c = crate::commands::connect(s)?;
    match plan {
        Plan::Register(req) => {
            let r: RegisterNodeResponse = c.call(Method::RegisterNode, &req)?;
            let node_id = if r.node_id.is_empty() { req.node_id } else { r.node_id };
            let j = RegisteredJson { node_id, state: state_text(r.enrollment_state) };
            Ok(match s.output {
                Format::Json => j.serialize_json(),
                Format::Text => format!("enrolled {} (state {})\n", j.node_id, j.state),
            })
        }
        Plan::Batch(nodes) => {
            let r: BatchRegisterNodesResponse =
                c.call(Method::BatchRegisterNodes, &BatchRegisterNodesRequest { nodes: nodes.clone() })?;
            let (j, lines, summary) = batch_outcome(&nodes, &r);
            let body = match s.output {
                Format::Json => j.serialize_json(),
                Format::Text => lines,
            };
            if j.failed > 0 {
                print_now(&body);
                return Err(Failure::usage(summary));
            }
            Ok(match s.output {
                Format::Json => body,
                Format::Text => format!("{summary}\n"),
            })
        }
        Plan::List(req) => {
            let r: ListNodesResponse = c.call(Method::ListNodes, &req)?;
            Ok(match s.output {
                Format::Json => r.nodes.iter().map(summary_json).collect::<Vec<_>>().serialize_json(),
                Format::Text => list_text(&r.nodes),
            })
        }
        Plan::Inspect(req) => {
            let r: NodeEnrollment = c.call(Method::InspectNode, &req)?;
            Ok(match s.output {
                Format::Json => enrollment_json(&r).serialize_json(),
                Format::Text => inspect_text(&r),
            })
        }
        Plan::Decommission(req) => {
            let r: DecommissionNodeResponse = c.call(Method::DecommissionNode, &req)?;
            Ok(match s.output {
                Format::Json => DecommissionedJson {
                    node_id: if r.node_id.is_empty() { req.node_id.clone() } else { r.node_id.clone() },
                    state: state_text(r.enrollment_state),
                    sessions_terminated: r.sessions_terminated,
                    cert_serial_revoked: r.cert_serial_revoked.clone(),
                }
                .serialize_json(),
                Format::Text => decommissioned_text(&r, &req.node_id),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "aa:bb:cc:dd:ee:ff";
    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn hw(plan: Plan) -> (String, HardwareIdentity) {
        match plan {
            Plan::Register(r) => (r.node_id, r.hardware_identity.unwrap()),
            other => panic!("not a registration: {other:?}"),
        }
    }

    fn refused_enroll(a: &[&str], o: &Opts<'_>) -> String {
        let f = plan_enroll(&args(a), o).expect_err("should be refused");
        assert_eq!(f.code, crate::EXIT_ERROR);
        f.message
    }

    fn refused_node(a: &[&str], o: &Opts<'_>) -> String {
        let f = plan_node(&args(a), o).expect_err("should be refused");
        assert_eq!(f.code, crate::EXIT_ERROR);
        f.message
    }

    #[test]
    fn hardware_id_prefixes() {
        assert_eq!(parse_hardware_id("mac:AA-BB-CC-DD-EE-FF"), Ok(HwId::Mac(MAC.into())));
        assert_eq!(parse_hardware_id("MAC:aa:bb:cc:dd:ee:ff"), Ok(HwId::Mac(MAC.into())));
        assert_eq!(
            parse_hardware_id("uuid:4C4C4544-0042-3010-8052-B4C04F384D32"),
            Ok(HwId::SmbiosUuid("4c4c4544-0042-3010-8052-b4c04f384d32".into()))
        );
        assert_eq!(parse_hardware_id("serial: CN7475 "), Ok(HwId::BoardSerial("CN7475".into())));
        // A serial may itself hold ':' (only the first one separates the prefix).
        assert_eq!(parse_hardware_id("bmc:BMC:12"), Ok(HwId::BmcSerial("BMC:12".into())));
        assert_eq!(parse_hardware_id(&format!("tpm:{}", HASH.to_uppercase())), Ok(HwId::TpmEkHash(HASH.into())));
    }

    #[test]
    fn hardware_id_auto_detection() {
        assert_eq!(parse_hardware_id("AA:BB:CC:DD:EE:FF"), Ok(HwId::Mac(MAC.into())));
        assert_eq!(parse_hardware_id("aa-bb-cc-dd-ee-ff"), Ok(HwId::Mac(MAC.into())));
        assert_eq!(
            parse_hardware_id("4C4C4544-0042-3010-8052-B4C04F384D32"),
            Ok(HwId::SmbiosUuid("4c4c4544-0042-3010-8052-b4c04f384d32".into()))
        );
        assert_eq!(parse_hardware_id(HASH), Ok(HwId::TpmEkHash(HASH.into())));
    }

    #[test]
    fn bad_hardware_ids_name_the_value_and_the_forms() {
        for v in ["CN7475", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:fg", "aa:bb-cc:dd:ee:ff", "foo:bar", "", &HASH[1..]] {
            let e = parse_hardware_id(v).unwrap_err();
            assert!(e.contains(&format!("{v:?}")) && e.contains("uuid:UUID") && e.contains("tpm:64-HEX"), "{e}");
        }
        assert!(parse_hardware_id("mac:xx").unwrap_err().contains("not a MAC address"));
        assert!(parse_hardware_id("uuid:1234").unwrap_err().contains("not a UUID"));
        assert!(parse_hardware_id("tpm:abc").unwrap_err().contains("not a TPM EK hash"));
        assert!(parse_hardware_id("serial:").unwrap_err().contains("empty board serial"));
        assert!(parse_hardware_id("bmc:  ").unwrap_err().contains("empty BMC serial"));
        assert!(parse_hardware_id("bmc:a\u{7}b").unwrap_err().contains("control character"));
    }

    #[test]
    fn enroll_builds_the_identity() {
        let o = Opts {
            hardware_ids: vec![
                "AA:BB:CC:DD:EE:FF",
                "mac:11-22-33-44-55-66",
                "serial:S1",
                "uuid:4c4c4544-0042-3010-8052-b4c04f384d32",
                "bmc:B1",
                HASH,
            ],
            ..Default::default()
        };
        let (node, h) = hw(plan_enroll(&args(&["n1"]), &o).unwrap());
        assert_eq!(node, "n1");
        assert_eq!(h.mac_address, MAC);
        assert_eq!(h.mac_addresses, [MAC, "11:22:33:44:55:66"]);
        assert_eq!(h.board_serial.as_deref(), Some("S1"));
        assert_eq!(h.bmc_serial.as_deref(), Some("B1"));
        assert_eq!(h.smbios_uuid.as_deref(), Some("4c4c4544-0042-3010-8052-b4c04f384d32"));
        assert_eq!(h.tpm_ek_hash.as_deref(), Some(HASH));
        // One field is enough, and it need not be a MAC.
        let (_, h) =
            hw(plan_enroll(&args(&["n1"]), &Opts { hardware_ids: vec!["serial:S1"], ..Default::default() }).unwrap());
        assert!(h.mac_address.is_empty() && h.mac_addresses.is_empty());
        // The same value twice is fine; two different ones for one field are not.
        let o = Opts { hardware_ids: vec!["serial:S1", "serial:S1", MAC, MAC], ..Default::default() };
        assert_eq!(hw(plan_enroll(&args(&["n1"]), &o).unwrap()).1.mac_addresses, [MAC]);
        let o = Opts { hardware_ids: vec!["serial:S1", "serial:S2"], ..Default::default() };
        assert!(refused_enroll(&["n1"], &o).contains("two board serials given"));
    }

    #[test]
    fn enroll_argument_errors() {
        let one = Opts { hardware_ids: vec![MAC], ..Default::default() };
        assert_eq!(refused_enroll(&[], &one), "`pact enroll` needs NODE, the node's id");
        assert!(
            refused_enroll(&["n1"], &Opts::default()).starts_with("`pact enroll n1` needs at least one --hardware-id")
        );
        assert!(refused_enroll(&["n 1"], &one).starts_with("invalid node name \"n 1\""));
        assert_eq!(refused_enroll(&["n1", "n2"], &one), "`pact enroll`: unexpected argument \"n2\"");
        let m = refused_enroll(&["n1"], &Opts { hardware_ids: vec!["CN7475"], ..Default::default() });
        assert!(m.starts_with("--hardware-id \"CN7475\" is not a hardware id; use mac:"), "{m}");
        let m = refused_enroll(&["n1"], &Opts { vcluster_flag: Some("ml"), ..one.clone() });
        assert!(m.contains("takes no --vcluster"), "{m}");
        let m = refused_enroll(&["n1"], &Opts { force: true, ..one.clone() });
        assert_eq!(m, "`pact enroll` takes no option --force; see `pact enroll --help`");
    }

    #[test]
    fn node_enroll_with_mac_and_bmc_serial() {
        let o = Opts { mac: Some("AA-BB-CC-DD-EE-FF"), bmc_serial: Some(" B1 "), ..Default::default() };
        let (node, h) = hw(plan_node(&args(&["enroll", "n1"]), &o).unwrap());
        assert_eq!((node.as_str(), h.mac_address.as_str(), h.bmc_serial.as_deref()), ("n1", MAC, Some("B1")));
        assert_eq!(h.mac_addresses, [MAC]);
        // --mac is the boot MAC even when --hardware-id gives another.
        let o = Opts { mac: Some(MAC), hardware_ids: vec!["11:22:33:44:55:66"], ..Default::default() };
        let (_, h) = hw(plan_node(&args(&["enroll", "n1"]), &o).unwrap());
        assert_eq!(h.mac_address, MAC);
        assert_eq!(h.mac_addresses, [MAC, "11:22:33:44:55:66"]);
    }

    #[test]
    fn node_argument_errors() {
        let mac = Opts { mac: Some(MAC), ..Default::default() };
        assert_eq!(refused_node(&["enroll"], &mac), "`pact node enroll` needs NODE, the node's id");
        let m = refused_node(&["enroll", "n1"], &Opts { bmc_serial: Some("B1"), ..Default::default() });
        assert!(m.starts_with("`pact node enroll n1` needs --mac MAC"), "{m}");
        assert!(refused_node(&["enroll", "n1"], &Opts { mac: Some("zz"), ..Default::default() })
            .starts_with("--mac \"zz\": not a MAC address"));
        assert_eq!(refused_node(&["enroll", "n1", "n2"], &mac), "`pact node enroll`: unexpected argument \"n2\"");
        let batch = Opts { batch: Some("/nonexistent/nodes.csv"), ..Default::default() };
        let m = refused_node(&["enroll", "n1"], &batch);
        assert!(m.starts_with("`pact node enroll --batch FILE` takes no NODE (\"n1\")"), "{m}");
        let m = refused_node(&["enroll"], &Opts { mac: Some(MAC), ..batch.clone() });
        assert!(m.starts_with("`pact node enroll --batch FILE` takes no --mac"), "{m}");
        assert!(refused_node(&["enroll"], &batch).starts_with("/nonexistent/nodes.csv: "));
        let m = refused_node(&["enroll", "n1"], &Opts { vcluster_flag: Some("ml"), ..mac.clone() });
        assert!(m.contains("takes no --vcluster"), "{m}");

        assert_eq!(refused_node(&["inspect"], &Opts::default()), "`pact node inspect` needs NODE, the node's id");
        assert!(refused_node(&["inspect", "a/b"], &Opts::default()).starts_with("invalid node name \"a/b\""));
        let m = refused_node(&["inspect", "n1"], &Opts { force: true, ..Default::default() });
        assert_eq!(m, "`pact node inspect` takes no option --force; see `pact node --help`");
        assert_eq!(
            refused_node(&["decommission"], &Opts::default()),
            "`pact node decommission` needs NODE, the node's id"
        );
        assert_eq!(refused_node(&["list", "n1"], &Opts::default()), "`pact node list`: unexpected argument \"n1\"");
        let m = refused_node(&["list"], &Opts { state: Some("gone"), ..Default::default() });
        assert_eq!(m, "--state \"gone\": expected registered, active, inactive or revoked");
        let m = refused_node(&["list"], &Opts { unassigned: true, vcluster_flag: Some("ml"), ..Default::default() });
        assert!(m.contains("exclude each other"), "{m}");
        assert!(refused_node(&["list"], &Opts { vcluster_flag: Some("m l"), ..Default::default() })
            .starts_with("invalid vCluster name"));
        let m = refused_node(&["list"], &mac);
        assert_eq!(m, "`pact node list` takes no option --mac; see `pact node --help`");
    }

    #[test]
    fn node_list_inspect_decommission_requests() {
        let o = Opts { state: Some("Active"), vcluster_flag: Some("ml"), ..Default::default() };
        assert_eq!(
            plan_node(&args(&["list"]), &o).unwrap(),
            Plan::List(ListNodesRequest {
                state_filter: Some(EnrollmentState::Active as i32),
                vcluster_filter: Some("ml".into()),
                unassigned_only: false
            })
        );
        let o = Opts { unassigned: true, ..Default::default() };
        assert_eq!(
            plan_node(&args(&["list"]), &o).unwrap(),
            Plan::List(ListNodesRequest { state_filter: None, vcluster_filter: None, unassigned_only: true })
        );
        assert_eq!(
            plan_node(&args(&["inspect", "n1"]), &Opts::default()).unwrap(),
            Plan::Inspect(InspectNodeRequest { node_id: "n1".into() })
        );
        assert_eq!(
            plan_node(&args(&["decommission", "n1"]), &Opts { force: true, ..Default::default() }).unwrap(),
            Plan::Decommission(DecommissionNodeRequest { node_id: "n1".into(), force: true })
        );
        for s in ["registered", "active", "inactive", "revoked"] {
            assert_eq!(state_text(parse_state(s).unwrap() as i32), s);
        }
        assert!(parse_state("unspecified").is_err());
    }

    #[test]
    fn batch_file_header_comments_and_columns() {
        let text = format!(
            "# rack 12\n\nnode_id, mac, bmc_serial\n n1 , AA-BB-CC-DD-EE-FF , B1\nn2,11:22:33:44:55:66\n  # spare\nn3,11:22:33:44:55:77,,serial:S3,{HASH}\n"
        );
        let nodes = parse_batch("nodes.csv", &text).unwrap();
        assert_eq!(nodes.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["n1", "n2", "n3"]);
        let h: Vec<&HardwareIdentity> = nodes.iter().map(|n| n.hardware_identity.as_ref().unwrap()).collect();
        assert_eq!((h[0].mac_address.as_str(), h[0].bmc_serial.as_deref()), (MAC, Some("B1")));
        assert_eq!(h[0].mac_addresses, [MAC]);
        assert_eq!((h[1].mac_address.as_str(), h[1].bmc_serial.as_deref()), ("11:22:33:44:55:66", None));
        assert_eq!((h[2].board_serial.as_deref(), h[2].tpm_ek_hash.as_deref()), (Some("S3"), Some(HASH)));
        // No header; `node` as a header too.
        assert_eq!(parse_batch("f", "n1,aa:bb:cc:dd:ee:ff").unwrap().len(), 1);
        assert_eq!(parse_batch("f", "node,mac\nn1,aa:bb:cc:dd:ee:ff").unwrap().len(), 1);
    }

    #[test]
    fn batch_file_errors_name_file_and_line() {
        let bad = |text: &str| parse_batch("nodes.csv", text).unwrap_err();
        assert_eq!(
            bad("node_id,mac\nn1,aa:bb:cc:dd:ee:ff\n\nn2,zz\n"),
            "nodes.csv:4: \"zz\" is not a MAC address (six hex pairs separated by ':' or '-')"
        );
        assert!(bad("n1\n").starts_with("nodes.csv:1: node n1 has no MAC"));
        assert!(bad("n1,\n").starts_with("nodes.csv:1: node n1 has no MAC"));
        assert!(bad("# c\nn 1,aa:bb:cc:dd:ee:ff\n").starts_with("nodes.csv:2: invalid node name \"n 1\""));
        assert!(bad(",aa:bb:cc:dd:ee:ff\n").starts_with("nodes.csv:1: no node id"));
        assert_eq!(bad("n1,aa:bb:cc:dd:ee:ff\nn1,11:22:33:44:55:66\n"), "nodes.csv:2: node n1 is also on line 1");
        assert_eq!(
            bad("n1,aa:bb:cc:dd:ee:ff\nn2,AA-BB-CC-DD-EE-FF\n"),
            "nodes.csv:2: MAC aa:bb:cc:dd:ee:ff is also on line 1 (node n1)"
        );
        let m = bad("n1,aa:bb:cc:dd:ee:ff,B1,CN7475\n");
        assert!(m.starts_with("nodes.csv:1: \"CN7475\" is not a hardware id; use mac:"), "{m}");
        let m = bad("n1,aa:bb:cc:dd:ee:ff,B1,bmc:B2\n");
        assert!(m.starts_with("nodes.csv:1: two BMC serials given"), "{m}");
        // A header is only a header on the first line.
        assert!(bad("n1,aa:bb:cc:dd:ee:ff\nnode_id,mac\n").starts_with("nodes.csv:2: \"mac\" is not a MAC address"));
        assert!(bad("# nothing\n\n").starts_with("nodes.csv: no nodes"));
        assert!(bad("node_id,mac\n").starts_with("nodes.csv: no nodes"));
    }

    #[test]
    fn batch_file_too_many_nodes() {
        let line = |i: usize| format!("n{i},02:00:00:{:02x}:{:02x}:{:02x}\n", i >> 16, (i >> 8) & 255, i & 255);
        let max: String = (0..MAX_BATCH).map(line).collect();
        assert_eq!(parse_batch("big.csv", &max).unwrap().len(), MAX_BATCH);
        let over = format!("{max}{}", line(MAX_BATCH));
        assert_eq!(
            parse_batch("big.csv", &over).unwrap_err(),
            "big.csv: 10001 nodes; a batch takes at most 10000 (split the file)"
        );
    }

    #[test]
    fn batch_outcome_lists_failures_and_sums_up() {
        use pact_proto::enrollment::BatchNodeResult;
        let sent = parse_batch("f", "n1,aa:bb:cc:dd:ee:01\nn2,aa:bb:cc:dd:ee:02\nn3,aa:bb:cc:dd:ee:03\n").unwrap();
        let r = BatchRegisterNodesResponse {
            results: vec![
                BatchNodeResult { node_id: "n1".into(), success: true, enrollment_state: 1, error: None },
                BatchNodeResult {
                    node_id: "n2".into(),
                    success: false,
                    enrollment_state: 0,
                    error: Some("MAC already registered to n9".into()),
                },
            ],
            succeeded: 1,
            failed: 1,
        };
        let (j, lines, summary) = batch_outcome(&sent, &r);
        assert_eq!(lines, "n2: MAC already registered to n9\nn3: no result from the journal\n");
        assert_eq!(summary, "enrolled 1 of 3 nodes (2 failed)");
        assert_eq!((j.total, j.succeeded, j.failed), (3, 1, 2));
        let json = j.serialize_json();
        assert!(json.contains("\"state\":\"registered\""), "{json}");
        let all_ok = BatchRegisterNodesResponse {
            results: sent
                .iter()
                .map(|n| BatchNodeResult {
                    node_id: n.node_id.clone(),
                    success: true,
                    enrollment_state: 1,
                    error: None,
                })
                .collect(),
            succeeded: 3,
            failed: 0,
        };
        let (_, lines, summary) = batch_outcome(&sent, &all_ok);
        assert_eq!((lines.as_str(), summary.as_str()), ("", "enrolled 3 of 3 nodes (0 failed)"));
    }

    #[test]
    fn list_inspect_and_decommission_output() {
        let nodes = vec![
            NodeSummary {
                node_id: "n1".into(),
                enrollment_state: EnrollmentState::Active as i32,
                vcluster_id: "ml".into(),
                last_seen: Some(Timestamp { seconds: 0, nanos: 0 }),
                mac_address: MAC.into(),
            },
            NodeSummary {
                node_id: "node-long".into(),
                enrollment_state: EnrollmentState::Registered as i32,
                ..Default::default()
            },
        ];
        assert_eq!(
            list_text(&nodes),
            "NODE       STATE       VCLUSTER  MAC                LAST-SEEN\n\
             n1         active      ml        aa:bb:cc:dd:ee:ff  1970-01-01T00:00:00Z\n\
             node-long  registered  -         -                  -\n"
        );
        assert_eq!(list_text(&[]), "no nodes\n");
        let json = nodes.iter().map(summary_json).collect::<Vec<_>>().serialize_json();
        assert!(json.starts_with("[{\"node_id\":\"n1\",\"state\":\"active\",\"vcluster_id\":\"ml\""), "{json}");

        let e = NodeEnrollment {
            node_id: "n1".into(),
            enrollment_state: EnrollmentState::Revoked as i32,
            hardware_identity: Some(HardwareIdentity {
                mac_address: MAC.into(),
                mac_addresses: vec![MAC.into(), "11:22:33:44:55:66".into()],
                bmc_serial: Some("B\"1".into()),
                ..Default::default()
            }),
            cert_serials: vec!["0a".into(), "09".into()],
            enrolled_by: Some(Identity {
                principal: "alice".into(),
                role: "pact-platform-admin".into(),
                principal_type: 0,
            }),
            decommissioned_at: Some(Timestamp { seconds: 0, nanos: 0 }),
            decommissioned_by: Some(Identity { principal: "bob".into(), role: String::new(), principal_type: 0 }),
            key_hashes: vec![vec![0xab, 0x01]],
            ..Default::default()
        };
        let t = inspect_text(&e);
        for line in [
            "node:              n1\n",
            "state:             revoked\n",
            "vcluster:          (none)\n",
            "mac:               aa:bb:cc:dd:ee:ff\n",
            "other macs:        11:22:33:44:55:66\n",
            "smbios uuid:       -\n",
            "bmc serial:        B\"1\n",
            "cert serials:      0a, 09\n",
            "last seen:         -\n",
            "enrolled by:       alice (pact-platform-admin)\n",
            "decommissioned at: 1970-01-01T00:00:00Z\n",
            "decommissioned by: bob\n",
        ] {
            assert!(t.contains(line), "{line:?} missing from\n{t}");
        }
        let json = enrollment_json(&e).serialize_json();
        assert!(json.contains("\"bmc_serial\":\"B\\\"1\""), "escaped: {json}");
        assert!(json.contains("\"key_hashes\":[\"ab01\"]"), "{json}");
        assert!(json.contains("\"cert_serials\":[\"0a\",\"09\"]"), "{json}");
        assert!(!json.contains("smbios_uuid"), "left out when unset: {json}");

        let r =
            DecommissionNodeResponse { node_id: "n1".into(), cert_serial_revoked: "0a".into(), ..Default::default() };
        assert_eq!(decommissioned_text(&r, "n1"), "decommissioned n1 (certificate serial 0a revoked)\n");
        let r = DecommissionNodeResponse { sessions_terminated: 2, ..Default::default() };
        assert_eq!(decommissioned_text(&r, "n1"), "decommissioned n1\nterminated 2 active session(s)\n");
    }
}
