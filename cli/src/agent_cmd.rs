//! The commands that talk to a node's agent on its exec/shell port (9445):
//! `pact service start|stop|restart|status NODE [SERVICE]` (method ServiceControl) and
//! `pact reboot|poweroff NODE [--reason TEXT]` (method Power).
//!
//! The agent's port speaks the journal client port's framing (TLS, the pact handshake, request
//! frames carrying the bearer token), so `pact_proto::client::Client` is the client here too,
//! with the CA and token the CLI uses for the journal. The address is `NODE:9445` unless
//! `--agent-endpoint HOST[:PORT]` says otherwise.
//!
//! A reboot or power-off is audited first: an ADMIN_OPERATION entry on scope `node:NODE` is
//! appended to the journal, and only once the journal has recorded it is the agent asked. A
//! journal that refuses or cannot be reached means the node is never contacted.

use crate::commands;
use crate::output::{self, Format};
use crate::settings::Settings;
use crate::{spec, Failure, EXIT_ERROR};
use nanoserde::SerJson;
use pact_proto::client::{CallError, Client};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::shell::{
    exec_output::Output, ExecOutput, PowerRequest, ServiceControlRequest, ServiceControlResponse, ServiceStatusEntry,
};
use pact_proto::Method;

pub const SERVICE_HELP: &str = "\
USAGE: pact service status NODE [SERVICE] [--agent-endpoint HOST[:PORT]]
       pact service start|stop|restart NODE SERVICE [--agent-endpoint HOST[:PORT]]

Asks the agent on NODE for the state of its supervised services (all of them, or SERVICE),
or to start, stop or restart SERVICE, and prints the state the agent reports afterwards:

  NAME            STATE      PID     UPTIME    RESTARTS

PID and UPTIME are \"-\" when the agent reports none (a service that is not running).
--output json prints an array of {node, name, state, pid, uptime_seconds, restart_count}
(pid 0: not running). The agent answers a stop or restart once it has settled; pact waits
for an answer up to timeout_seconds (cli.toml, default 30 s).

The agent listens on NODE:9445. --agent-endpoint HOST[:PORT] reaches it at another address
(the port defaults to 9445); the agent's certificate must then name HOST. The connection uses
the CA (--ca-cert, PACT_TLS_CA) and the token pact uses for the journal; the agent checks the
token itself. pact records nothing in the journal for these commands.

Exit codes: 0 ok; 1 unknown service or another error; 2 token refused or role not allowed;
5 the agent is unreachable or did not answer in time.";

/// `pact reboot --help` and `pact poweroff --help`: one text, two verbs.
macro_rules! power_help {
    ($cmd:literal, $what:literal, $verb:literal) => {
        concat!(
            "USAGE: pact ",
            $cmd,
            " NODE [--reason TEXT] [--agent-endpoint HOST[:PORT]]

",
            $what,
            " NODE, in two steps:
  1. an ADMIN_OPERATION entry on scope node:NODE, message \"",
            $cmd,
            ": TEXT\", is appended to the
     journal (--endpoint), which records the token's subject as its author;
  2. only once the journal has recorded it, the agent on NODE (port 9445, or
     --agent-endpoint) is asked to ",
            $verb,
            ". It answers once it has scheduled that, then stops the
     node's services in reverse order and does it (an agent that is not PID 1 stops its
     services and exits instead).

If the journal refuses the entry or cannot be reached, the node is not contacted and pact
exits with the journal's code. If the agent then refuses or cannot be reached, the entry stays
(the journal is append-only), and pact says so, naming the entry's sequence, and exits with
the agent's code.

--reason TEXT                 why, recorded in the journal and sent to the agent: one line, at
                              most 1024 bytes. Default: \"no reason given\" (pact cannot read
                              who you are from the token; the journal can, and records it).
--agent-endpoint HOST[:PORT]  the agent's address, as for `pact service`.
--output json                 {node, action, reason, sequence, timestamp}

Exit codes: 0 recorded and scheduled; 1 error; 2 token refused or role not allowed (by the
journal or the agent); 5 the journal or the agent is unreachable or did not answer in time."
        )
    };
}

pub const REBOOT_HELP: &str = power_help!("reboot", "Reboots", "reboot");
pub const POWEROFF_HELP: &str = power_help!("poweroff", "Powers off", "power off");

/// What `--reason` says when it is left out.
pub const DEFAULT_REASON: &str = "no reason given";
/// The longest `--reason` accepted, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// Where the agent of `node` listens: `NODE:9445`, or `--agent-endpoint` (HOST, HOST:PORT,
/// [V6]:PORT or a bare IPv6 address; a missing port is 9445, never the journal's 9443).
pub fn agent_address(node: &str, endpoint: Option<&str>) -> Result<String, Failure> {
    let default_port = pact_proto::ports::AGENT_SHELL;
    let Some(e) = endpoint else {
        return Ok(format!("{node}:{default_port}"));
    };
    let bad = |why: &str| Failure::usage(format!("--agent-endpoint {e:?}: {why}; expected HOST or HOST:PORT"));
    if e.is_empty() || e.contains("://") || e.contains('/') || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("not an address"));
    }
    let (host, port) = if let Some(rest) = e.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("no closing ']'"))?;
        match after {
            "" => (host, None),
            a => (host, Some(a.strip_prefix(':').ok_or_else(|| bad("expected ':' after ']'"))?)),
        }
    } else if e.matches(':').count() > 1 {
        // A bare IPv6 address: every ':' belongs to it.
        (e, None)
    } else {
        match e.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (e, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port is not 1..=65535"))?,
    };
    Ok(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

fn checked_node(cmd: &str, node: Option<&String>) -> Result<String, Failure> {
    let node = node.ok_or_else(|| Failure::usage(format!("`pact {cmd}` needs NODE, the node's id")))?;
    if !spec::is_valid_name(node) {
        return Err(Failure::usage(format!(
            "invalid node name {node:?}: use letters, digits, '-' and '_', starting with a letter or digit"
        )));
    }
    Ok(node.clone())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
    Status,
}

impl ServiceAction {
    fn parse(s: &str) -> Option<ServiceAction> {
        Some(match s {
            "start" => ServiceAction::Start,
            "stop" => ServiceAction::Stop,
            "restart" => ServiceAction::Restart,
            "status" => ServiceAction::Status,
            _ => return None,
        })
    }

    /// The wire name (ServiceControlRequest.action).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
            ServiceAction::Status => "status",
        }
    }
}

/// A checked `pact service ...` command line.
#[derive(Debug, PartialEq)]
pub struct ServiceCommand {
    pub action: ServiceAction,
    pub node: String,
    /// "" = every service (status only).
    pub service: String,
    /// Where the agent listens.
    pub address: String,
}

impl ServiceCommand {
    /// `args`: ACTION NODE [SERVICE]. Every usage error is found here, before anything connects.
    pub fn parse(args: &[String], agent_endpoint: Option<&str>) -> Result<ServiceCommand, Failure> {
        let word =
            args.first().ok_or_else(|| Failure::usage(format!("`pact service` needs an action\n\n{SERVICE_HELP}")))?;
        let action = ServiceAction::parse(word).ok_or_else(|| {
            Failure::usage(format!("unknown service action {word:?}: expected start, stop, restart or status"))
        })?;
        let cmd = format!("service {}", action.as_str());
        let node = checked_node(&cmd, args.get(1))?;
        let service = match (args.get(2), action) {
            (None, ServiceAction::Status) => String::new(),
            (None, _) => return Err(Failure::usage(format!("`pact {cmd}` needs SERVICE, the service's name"))),
            (Some(s), _) if spec::is_valid_service_name(s) => s.clone(),
            (Some(s), _) => {
                return Err(Failure::usage(format!(
                    "invalid service name {s:?}: use letters, digits, '-', '_', '.' and '@', starting with a letter or digit"
                )))
            }
        };
        if let Some(extra) = args.get(3) {
            return Err(Failure::usage(format!("`pact service`: unexpected argument {extra:?}")));
        }
        let address = agent_address(&node, agent_endpoint)?;
        Ok(ServiceCommand { action, node, service, address })
    }

    pub fn request(&self) -> ServiceControlRequest {
        ServiceControlRequest { name: self.service.clone(), action: self.action.as_str().into() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

impl PowerAction {
    /// The wire name (PowerRequest.action), also the command's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Reboot => "reboot",
            PowerAction::Poweroff => "poweroff",
        }
    }
}

/// A checked `pact reboot|poweroff ...` command line.
#[derive(Debug, PartialEq)]
pub struct PowerCommand {
    pub action: PowerAction,
    pub node: String,
    pub reason: String,
    pub address: String,
}

impl PowerCommand {
    /// `cmd` is "reboot" or "poweroff"; `args`: NODE.
    pub fn parse(
        cmd: &str,
        args: &[String],
        reason: Option<&str>,
        agent_endpoint: Option<&str>,
    ) -> Result<PowerCommand, Failure> {
        let action = match cmd {
            "reboot" => PowerAction::Reboot,
            "poweroff" => PowerAction::Poweroff,
            other => {
                return Err(Failure::usage(format!("unknown power action {other:?}: expected reboot or poweroff")))
            }
        };
        let node = checked_node(cmd, args.first())?;
        if let Some(extra) = args.get(1) {
            return Err(Failure::usage(format!("`pact {cmd}`: unexpected argument {extra:?}")));
        }
        let reason = match reason {
            None => DEFAULT_REASON.to_string(),
            Some(r) => {
                let r = r.trim();
                if r.is_empty() {
                    return Err(Failure::usage("--reason is empty: say why, or leave --reason out"));
                }
                if r.chars().any(char::is_control) {
                    return Err(Failure::usage("--reason must be one line (no newlines, tabs or control characters)"));
                }
                if r.len() > MAX_REASON_LEN {
                    return Err(Failure::usage(format!(
                        "--reason is {} bytes long; at most {MAX_REASON_LEN}",
                        r.len()
                    )));
                }
                r.to_string()
            }
        };
        let address = agent_address(&node, agent_endpoint)?;
        Ok(PowerCommand { action, node, reason, address })
    }

    /// The journal entry recorded before the agent is asked.
    pub fn entry(&self) -> ConfigEntry {
        ConfigEntry {
            entry_type: EntryType::AdminOperation as i32,
            scope: Some(Scope { target: Some(Target::NodeId(self.node.clone())) }),
            policy_ref: format!("{}: {}", self.action.as_str(), self.reason),
            ..Default::default()
        }
    }

    pub fn request(&self) -> PowerRequest {
        PowerRequest { action: self.action.as_str().into(), reason: self.reason.clone() }
    }
}

/// An agent call's failure as the CLI reports it: the exit code from the shared table, and a
/// message that names the node's agent (the shared client words its own for the journal).
pub fn agent_failure(node: &str, address: &str, e: CallError) -> Failure {
    let code = e.exit_code();
    let message = match e {
        CallError::Remote(r) => format!("the agent on {node} refused: {} ({})", r.message, r.code),
        CallError::Unreachable(m) => {
            format!("the agent on {node} is unreachable ({address}): {}", m.replace("the journal", "the agent"))
        }
        CallError::Protocol(m) => format!("the agent on {node} ({address}) answered wrongly: {m}"),
    };
    Failure::new(code, message)
}

fn agent_client(s: &Settings, node: &str, address: &str) -> Result<Client, Failure> {
    let token = commands::token(s)?;
    let tls = commands::tls(s)?;
    Client::connect(address, tls, token, s.timeout).map_err(|e| agent_failure(node, address, e))
}

/// One service in `--output json`.
#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct ServiceJson {
    pub node: String,
    pub name: String,
    pub state: String,
    /// 0 when not running.
    pub pid: u32,
    pub uptime_seconds: u64,
    pub restart_count: u32,
}

pub fn service_json(node: &str, e: &ServiceStatusEntry) -> ServiceJson {
    ServiceJson {
        node: node.to_string(),
        name: e.name.clone(),
        state: e.state.clone(),
        pid: e.pid,
        uptime_seconds: e.uptime_seconds,
        restart_count: e.restart_count,
    }
}

/// "45s", "12m05s", "3h04m", "2d03h"; "-" for a service that is not running.
pub fn uptime_text(pid: u32, secs: u64) -> String {
    if pid == 0 && secs == 0 {
        return "-".into();
    }
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The table `pact service` prints, columns as wide as their widest cell.
pub fn services_text(entries: &[ServiceStatusEntry]) -> String {
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                e.state.clone(),
                if e.pid == 0 { "-".into() } else { e.pid.to_string() },
                uptime_text(e.pid, e.uptime_seconds),
                e.restart_count.to_string(),
            ]
        })
        .collect();
    crate::output::table5(["NAME", "STATE", "PID", "UPTIME", "RESTARTS"], &rows)
}

/// `pact service ...`: one ServiceControl call, its answer as a table or JSON.
pub fn service(c: &ServiceCommand, s: &Settings) -> Result<String, Failure> {
    let mut client = agent_client(s, &c.node, &c.address)?;
    let r: ServiceControlResponse =
        client.call(Method::ServiceControl, &c.request()).map_err(|e| agent_failure(&c.node, &c.address, e))?;
    if !c.service.is_empty() && !r.services.iter().any(|e| e.name == c.service) {
        return Err(Failure::new(
            EXIT_ERROR,
            format!(
                "the agent on {} answered {} {} without that service's state",
                c.node,
                c.action.as_str(),
                c.service
            ),
        ));
    }
    Ok(match s.output {
        Format::Json => r.services.iter().map(|e| service_json(&c.node, e)).collect::<Vec<_>>().serialize_json(),
        Format::Text if r.services.is_empty() => format!("{}: no supervised services\n", c.node),
        Format::Text => services_text(&r.services),
    })
}

/// Whether the agent's answer to Power says it scheduled the operation.
pub fn power_outcome(out: &ExecOutput) -> Result<(), String> {
    match &out.output {
        Some(Output::ExitCode(0)) => Ok(()),
        Some(Output::ExitCode(n)) => Err(format!("the agent answered exit code {n}")),
        Some(Output::Error(m)) => Err(format!("the agent answered: {m}")),
        Some(Output::Stdout(b) | Output::Stderr(b)) => {
            Err(format!("the agent answered output without an exit code: {:?}", String::from_utf8_lossy(b)))
        }
        None => Err("the agent's answer is empty".into()),
    }
}

/// `pact reboot|poweroff` in `--output json`.
#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct PowerJson {
    pub node: String,
    pub action: String,
    pub reason: String,
    /// The journal entry that records the operation.
    pub sequence: u64,
    pub timestamp: String,
}

/// `pact reboot|poweroff NODE`: the journal record first, then the agent.
pub fn power(c: &PowerCommand, s: &Settings) -> Result<String, Failure> {
    let what = format!("{} of {}", c.action.as_str(), c.node);
    let recorded = commands::append_entry(s, c.entry()).map_err(|f| {
        Failure::new(
            f.code,
            format!("{what} was not recorded in the journal, so the node was not asked: {}", f.message),
        )
    })?;
    let seq = recorded.sequence;
    if !recorded.pending_approval_id.is_empty() {
        // Held for two-person approval: nothing is recorded yet, so the node is not asked.
        let id = &recorded.pending_approval_id;
        return Ok(format!(
            "pending approval {id}: {what} waits for a second person (`pact approve accept {id}`); the node was not asked: the journal sends it the order once approved\n"
        ));
    }
    let after =
        |f: Failure| Failure::new(f.code, format!("{what} recorded (seq:{seq}), but not scheduled: {}", f.message));
    let mut client = agent_client(s, &c.node, &c.address).map_err(after)?;
    let out: ExecOutput =
        client.call(Method::Power, &c.request()).map_err(|e| after(agent_failure(&c.node, &c.address, e)))?;
    power_outcome(&out).map_err(|m| after(Failure::new(EXIT_ERROR, m)))?;
    Ok(match s.output {
        Format::Json => PowerJson {
            node: c.node.clone(),
            action: c.action.as_str().into(),
            reason: c.reason.clone(),
            sequence: seq,
            timestamp: output::rfc3339(recorded.timestamp.as_ref()),
        }
        .serialize_json(),
        Format::Text => format!("{what} recorded (seq:{seq}); the agent scheduled it\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_proto::{ErrorCode, RemoteError};

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn svc(a: &[&str]) -> Result<ServiceCommand, Failure> {
        ServiceCommand::parse(&args(a), None)
    }

    fn refused_service(a: &[&str]) -> String {
        let f = svc(a).expect_err("should be refused");
        assert_eq!(f.code, EXIT_ERROR, "{}", f.message);
        f.message
    }

    #[test]
    fn service_command_lines() {
        let c = svc(&["status", "n1"]).unwrap();
        assert_eq!(
            c,
            ServiceCommand {
                action: ServiceAction::Status,
                node: "n1".into(),
                service: String::new(),
                address: "n1:9445".into()
            }
        );
        assert_eq!(c.request(), ServiceControlRequest { name: String::new(), action: "status".into() });
        for (word, action) in [
            ("start", ServiceAction::Start),
            ("stop", ServiceAction::Stop),
            ("restart", ServiceAction::Restart),
            ("status", ServiceAction::Status),
        ] {
            let c = svc(&[word, "node-7", "getty@tty1"]).unwrap();
            assert_eq!((c.action, c.node.as_str(), c.service.as_str()), (action, "node-7", "getty@tty1"));
            assert_eq!(c.request(), ServiceControlRequest { name: "getty@tty1".into(), action: word.into() });
        }
        let c = ServiceCommand::parse(&args(&["stop", "n1", "dbus.socket"]), Some("10.0.0.7:19445")).unwrap();
        assert_eq!((c.address.as_str(), c.service.as_str()), ("10.0.0.7:19445", "dbus.socket"));
    }

    #[test]
    fn service_argument_errors_say_what_is_wrong() {
        assert!(refused_service(&[]).starts_with("`pact service` needs an action"));
        assert_eq!(
            refused_service(&["reload", "n1", "x"]),
            "unknown service action \"reload\": expected start, stop, restart or status"
        );
        assert_eq!(refused_service(&["status"]), "`pact service status` needs NODE, the node's id");
        assert_eq!(refused_service(&["restart"]), "`pact service restart` needs NODE, the node's id");
        for a in ["start", "stop", "restart"] {
            assert_eq!(refused_service(&[a, "n1"]), format!("`pact service {a}` needs SERVICE, the service's name"));
        }
        assert!(refused_service(&["status", "n 1"]).starts_with("invalid node name \"n 1\""));
        assert!(refused_service(&["status", "n1.cluster"]).starts_with("invalid node name"));
        assert!(refused_service(&["start", "n1", "-x"]).starts_with("invalid service name \"-x\""));
        assert!(refused_service(&["start", "n1", "a/b"]).starts_with("invalid service name \"a/b\""));
        assert_eq!(refused_service(&["status", "n1", "a", "b"]), "`pact service`: unexpected argument \"b\"");
        let f = ServiceCommand::parse(&args(&["status", "n1"]), Some("h:0")).unwrap_err();
        assert!(f.message.starts_with("--agent-endpoint \"h:0\""), "{}", f.message);
    }

    #[test]
    fn agent_addresses() {
        assert_eq!(agent_address("n1", None).unwrap(), "n1:9445");
        assert_eq!(agent_address("n1", Some("10.1.2.3")).unwrap(), "10.1.2.3:9445", "9445, not the journal's 9443");
        assert_eq!(agent_address("n1", Some("bmc-gw:2222")).unwrap(), "bmc-gw:2222");
        assert_eq!(agent_address("n1", Some("[::1]:7")).unwrap(), "[::1]:7");
        assert_eq!(agent_address("n1", Some("[fe80::1]")).unwrap(), "[fe80::1]:9445");
        assert_eq!(agent_address("n1", Some("::1")).unwrap(), "[::1]:9445");
        for bad in ["", "https://h:1", "h:1/x", "h:", "h:x", "h:70000", "h:0", ":9445", "[::1", "[::1]x", "h 1:2"] {
            let f = agent_address("n1", Some(bad)).expect_err(bad);
            assert_eq!(f.code, EXIT_ERROR);
            assert!(f.message.starts_with(&format!("--agent-endpoint {bad:?}: ")), "{}", f.message);
            assert!(f.message.ends_with("expected HOST or HOST:PORT"), "{}", f.message);
        }
    }

    fn pw(cmd: &str, a: &[&str], reason: Option<&str>) -> Result<PowerCommand, Failure> {
        PowerCommand::parse(cmd, &args(a), reason, None)
    }

    #[test]
    fn power_command_lines_and_the_entry_they_record() {
        let c = pw("reboot", &["n1"], Some("  kernel 6.12 update ")).unwrap();
        assert_eq!((c.action, c.node.as_str(), c.reason.as_str()), (PowerAction::Reboot, "n1", "kernel 6.12 update"));
        assert_eq!(c.address, "n1:9445");
        let e = c.entry();
        assert_eq!(e.entry_type, 29, "ADMIN_OPERATION");
        assert_eq!(e.entry_type, EntryType::AdminOperation as i32);
        assert_eq!(e.scope, Some(Scope { target: Some(Target::NodeId("n1".into())) }));
        assert_eq!(e.policy_ref, "reboot: kernel 6.12 update");
        assert_eq!((e.parent, e.ttl_seconds, e.target_vcluster.as_str()), (None, None, ""));
        assert!(e.author.is_none(), "the journal takes the author from the token");
        assert_eq!(c.request(), PowerRequest { action: "reboot".into(), reason: "kernel 6.12 update".into() });

        let c = pw("poweroff", &["n2"], None).unwrap();
        assert_eq!(c.reason, DEFAULT_REASON);
        assert_eq!(c.entry().policy_ref, "poweroff: no reason given");
        assert_eq!(c.request(), PowerRequest { action: "poweroff".into(), reason: "no reason given".into() });
        let c = PowerCommand::parse("poweroff", &args(&["n2"]), None, Some("127.0.0.1:1234")).unwrap();
        assert_eq!(c.address, "127.0.0.1:1234");
        let long = "x".repeat(MAX_REASON_LEN);
        assert_eq!(pw("reboot", &["n1"], Some(&long)).unwrap().reason.len(), MAX_REASON_LEN);
    }

    #[test]
    fn power_argument_errors_say_what_is_wrong() {
        let refused = |cmd: &str, a: &[&str], reason: Option<&str>| {
            let f = pw(cmd, a, reason).expect_err("should be refused");
            assert_eq!(f.code, EXIT_ERROR, "{}", f.message);
            f.message
        };
        assert_eq!(refused("reboot", &[], None), "`pact reboot` needs NODE, the node's id");
        assert_eq!(refused("poweroff", &[], Some("x")), "`pact poweroff` needs NODE, the node's id");
        assert_eq!(refused("reboot", &["n1", "n2"], None), "`pact reboot`: unexpected argument \"n2\"");
        assert!(refused("reboot", &["n/1"], None).starts_with("invalid node name \"n/1\""));
        assert_eq!(refused("reboot", &["n1"], Some("")), "--reason is empty: say why, or leave --reason out");
        assert_eq!(refused("reboot", &["n1"], Some("   ")), "--reason is empty: say why, or leave --reason out");
        assert!(refused("reboot", &["n1"], Some("two\nlines")).starts_with("--reason must be one line"));
        assert!(refused("reboot", &["n1"], Some("a\tb")).starts_with("--reason must be one line"));
        let long = "x".repeat(MAX_REASON_LEN + 1);
        assert_eq!(refused("reboot", &["n1"], Some(&long)), "--reason is 1025 bytes long; at most 1024");
        assert!(refused("halt", &["n1"], None).starts_with("unknown power action \"halt\""));
        let f = PowerCommand::parse("reboot", &args(&["n1"]), None, Some("x://y")).unwrap_err();
        assert!(f.message.starts_with("--agent-endpoint"), "{}", f.message);
    }

    #[test]
    fn agent_errors_keep_the_exit_code_table_and_name_the_agent() {
        let remote = |code: ErrorCode| {
            agent_failure("n1", "n1:9445", CallError::Remote(RemoteError::new(code, "no such service \"x\"")))
        };
        for (code, exit) in [
            (ErrorCode::Unauthenticated, 2),
            (ErrorCode::PermissionDenied, 2),
            (ErrorCode::NotFound, 1),
            (ErrorCode::InvalidArgument, 1),
            (ErrorCode::Unavailable, 5),
            (ErrorCode::Timeout, 5),
            (ErrorCode::NotWhitelisted, 6),
        ] {
            assert_eq!(remote(code).code, exit, "{code}");
        }
        assert_eq!(remote(ErrorCode::NotFound).message, "the agent on n1 refused: no such service \"x\" (NotFound)");
        let f = agent_failure("n1", "n1:9445", CallError::Unreachable("timed out waiting for the journal".into()));
        assert_eq!(
            (f.code, f.message.as_str()),
            (5, "the agent on n1 is unreachable (n1:9445): timed out waiting for the agent")
        );
        let f = agent_failure("n1", "h:1", CallError::Protocol("bad magic".into()));
        assert_eq!((f.code, f.message.as_str()), (1, "the agent on n1 (h:1) answered wrongly: bad magic"));
    }

    fn entry(name: &str, state: &str, pid: u32, up: u64, restarts: u32) -> ServiceStatusEntry {
        ServiceStatusEntry { name: name.into(), state: state.into(), pid, uptime_seconds: up, restart_count: restarts }
    }

    #[test]
    fn uptimes_read_well() {
        assert_eq!(uptime_text(0, 0), "-");
        assert_eq!(uptime_text(12, 0), "0s");
        assert_eq!(uptime_text(12, 59), "59s");
        assert_eq!(uptime_text(12, 60), "1m00s");
        assert_eq!(uptime_text(12, 725), "12m05s");
        assert_eq!(uptime_text(12, 3600), "1h00m");
        assert_eq!(uptime_text(12, 3 * 3600 + 4 * 60 + 59), "3h04m");
        assert_eq!(uptime_text(12, 2 * 86_400 + 3 * 3600), "2d03h");
        assert_eq!(uptime_text(0, 30), "30s", "an uptime the agent reports is shown even without a pid");
    }

    #[test]
    fn service_table_and_json() {
        let list = [
            entry("chronyd", "running", 4242, 3723, 0),
            entry("node-exporter", "failed", 0, 0, 5),
            entry("sshd", "running", 77, 90_061, 2),
        ];
        let t = services_text(&list);
        assert_eq!(
            t,
            "\
NAME           STATE    PID   UPTIME  RESTARTS
chronyd        running  4242  1h02m   0
node-exporter  failed   -     -       5
sshd           running  77    1d01h   2
"
        );
        assert_eq!(services_text(&[]), "NAME  STATE  PID  UPTIME  RESTARTS\n");
        let j = list.iter().map(|e| service_json("n1", e)).collect::<Vec<_>>().serialize_json();
        assert_eq!(
            j,
            concat!(
                r#"[{"node":"n1","name":"chronyd","state":"running","pid":4242,"uptime_seconds":3723,"restart_count":0},"#,
                r#"{"node":"n1","name":"node-exporter","state":"failed","pid":0,"uptime_seconds":0,"restart_count":5},"#,
                r#"{"node":"n1","name":"sshd","state":"running","pid":77,"uptime_seconds":90061,"restart_count":2}]"#
            )
        );
    }

    #[test]
    fn only_exit_code_zero_means_scheduled() {
        let out = |o: Option<Output>| ExecOutput { output: o };
        assert_eq!(power_outcome(&out(Some(Output::ExitCode(0)))), Ok(()));
        assert_eq!(power_outcome(&out(Some(Output::ExitCode(3)))), Err("the agent answered exit code 3".into()));
        assert_eq!(
            power_outcome(&out(Some(Output::Error("already shutting down".into())))),
            Err("the agent answered: already shutting down".into())
        );
        assert!(power_outcome(&out(Some(Output::Stderr(b"x".to_vec())))).unwrap_err().contains("without an exit code"));
        assert_eq!(power_outcome(&out(None)), Err("the agent's answer is empty".into()));
    }

    #[test]
    fn power_json_shape() {
        let j = PowerJson {
            node: "n1".into(),
            action: "reboot".into(),
            reason: "no reason given".into(),
            sequence: 7,
            timestamp: "2026-01-01T00:00:00Z".into(),
        }
        .serialize_json();
        assert_eq!(
            j,
            r#"{"node":"n1","action":"reboot","reason":"no reason given","sequence":7,"timestamp":"2026-01-01T00:00:00Z"}"#
        );
    }

    #[test]
    fn help_texts_name_the_commands_ports_and_defaults() {
        assert!(SERVICE_HELP.starts_with("USAGE: pact service status NODE [SERVICE]"));
        assert!(SERVICE_HELP.contains("pact service start|stop|restart NODE SERVICE"));
        assert!(SERVICE_HELP.contains("NODE:9445") && SERVICE_HELP.contains("--agent-endpoint HOST[:PORT]"));
        assert!(REBOOT_HELP.starts_with("USAGE: pact reboot NODE [--reason TEXT]"));
        assert!(REBOOT_HELP.contains("Reboots NODE") && REBOOT_HELP.contains("\"reboot: TEXT\""));
        assert!(REBOOT_HELP.contains("asked to reboot."), "{REBOOT_HELP}");
        assert!(POWEROFF_HELP.contains("asked to power off."), "{POWEROFF_HELP}");
        assert!(POWEROFF_HELP.starts_with("USAGE: pact poweroff NODE [--reason TEXT]"));
        assert!(POWEROFF_HELP.contains("Powers off NODE") && POWEROFF_HELP.contains("\"poweroff: TEXT\""));
        for h in [REBOOT_HELP, POWEROFF_HELP] {
            assert!(h.contains(DEFAULT_REASON) && h.contains("ADMIN_OPERATION") && h.contains("node:NODE"), "{h}");
            assert!(h.contains(&format!("{MAX_REASON_LEN} bytes")), "{h}");
        }
    }
}
