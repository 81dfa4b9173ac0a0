//! Command-line parsing (lexopt) and the commands themselves. Each command returns the text
//! to print, or a `Failure` carrying its exit code; `watch`, a live stream, prints as it goes
//! and returns nothing to print.

use crate::output::{self, Format};
use crate::settings::{self, GlobalFlags, Settings};
use crate::{spec, Failure, EXIT_AUTH};
use lexopt::prelude::*;
use nanoserde::SerJson;
use pact_proto::client::Client;
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope, VClusterSpec};
use pact_proto::journal::{
    AppendEntryRequest, AppendEntryResponse, GetNodeStateRequest, JournalStatus, JournalStatusRequest,
    ListEntriesRequest,
};
use pact_proto::Method;
use std::ffi::OsString;

pub const USAGE: &str = "\
pact - configuration and admin operations for diskless HPC clusters

USAGE: pact [GLOBAL OPTIONS] <COMMAND> [ARGS]

COMMANDS:
  status [NODE]               journal status, or a node's recorded config state
  log [-n N] [--scope S]      journal entries, newest first
  commit -m MSG               record a commit on the current vCluster
  rollback SEQ [-m MSG]       record a rollback to entry SEQ
  apply SPEC.toml             record vCluster overlay and node specs as commits
  approve list [--all]        changes held for two-person approval
  approve accept ID           approve one (not your own): the held change is applied
  approve deny ID -m REASON   reject one
  node assign NODE --vcluster NAME
                              put a node into a vCluster
  node move NODE --to-vcluster NAME
                              move a node to another vCluster
  node unassign NODE          take a node out of its vCluster
  enroll NODE --hardware-id HW
                              register a node by its hardware identity (MAC, UUID, serial, TPM)
  node enroll NODE --mac MAC [--bmc-serial S]
                              register a node by its boot MAC (and BMC serial)
  node enroll --batch FILE.csv
                              register many nodes (node_id,mac[,bmc_serial[,hardware_id...]])
  node list [--state S] [--vcluster NAME] [--unassigned]
                              the nodes the journal knows, with state, vCluster, MAC, last seen
  node inspect NODE           one node's enrollment: identity, certificates, history
  node decommission NODE [--force]
                              revoke a node's certificate; it may not enroll again
  watch [--vcluster NAME] [--node NODE] [--from SEQ] [--count N]
                              follow config updates as they are committed
  journal status              every journal: role, term, commit/applied index, lag
  journal add-voter ID --raft-addr H:P --client-addr H:P
  journal add-learner ID --raft-addr H:P --client-addr H:P
  journal promote ID          make a learner a voter
  journal remove ID           remove a voter or learner
  service status NODE [SERVICE]
                              a node's supervised services (asks its agent)
  service start|stop|restart NODE SERVICE
                              control one service on a node
  reboot NODE [--reason TEXT] record a reboot in the journal, then ask the node's agent
  poweroff NODE [--reason TEXT]
                              record a power-off in the journal, then ask the node's agent
  login [--device-code | --service-account] [--issuer URL] [--client-id ID]
                              log in at the OpenID provider; the token is cached per journal
  logout [--all]              forget the cached token (and revoke it at the OpenID provider)

GLOBAL OPTIONS:
  --endpoint HOST:PORT        journal address        [PACT_ENDPOINT]   (default: the last
                              `pact login`'s, else localhost:9443)
  --token TOKEN               bearer token           [PACT_TOKEN]
  --ca-cert FILE              CA to trust            [PACT_TLS_CA]     (default /etc/pact/ca.crt)
  --vcluster NAME             default vCluster       [PACT_VCLUSTER]   (default \"default\")
  --output text|json          output format          [PACT_OUTPUT]
  --linearizable              reads wait for the Raft read index (as current as the leader)
  --agent-endpoint HOST:PORT  service/reboot/poweroff: the agent's address (default NODE:9445)
  -h, --help                  help (also after any command)
  -V, --version               version

AUTHENTICATION:
  The token is the first of: --token, PACT_TOKEN, cli.toml's token/token_path, the cached
  `pact login` token for the endpoint (~/.config/pact/tokens.json, mode 0600; refreshed
  silently when it expires within a minute), ~/.config/pact/token, the --dev profile's.
  `pact login` finds the OpenID provider from --issuer, PACT_OIDC_ISSUER or cli.toml's
  oidc_issuer; client id from --client-id, PACT_CLIENT_ID or client_id (default \"pact\");
  PACT_OIDC_RESOURCE / oidc_resource is sent as resource=. See `pact login --help`.

Settings also come from ~/.config/pact/cli.toml and, next to a `pact-journal --dev`,
from ./.pact-dev/dev/cli.toml. Exit codes: 0 ok, 1 error, 2 auth, 3 policy, 4 conflict,
5 journal or agent unreachable/timeout, 6 not whitelisted, 10 rollback blocked.";

const STATUS_HELP: &str = "\
USAGE: pact status [NODE]

Without NODE: this journal replica's role, term, leader, commit/applied index and entry
count. With NODE: the node's recorded config state (COMMITTED, DRIFTED, ...).";

const LOG_HELP: &str = "\
USAGE: pact log [-n N] [--scope node:ID|vc:NAME|global] [--from SEQ] [--to SEQ] [--oldest-first]
                [--type TYPE[,TYPE...]] [--author PRINCIPAL]

Journal entries, newest first, with their state deltas. -n defaults to 20 (max 10000).
--type: only these entry types (commit, rollback, admin_operation, node_assigned, ...; the
names `pact log` prints). --author: only entries by this principal (a token's sub).
Refused requests are ADMIN_OPERATION entries whose message starts with \"denied:\".
Without --scope, a caller who may not read everything sees what its role may read.";

const COMMIT_HELP: &str = "\
USAGE: pact commit -m MSG [--ttl SECONDS] [--node NODE]

Records a COMMIT entry on the current vCluster (or on NODE). --ttl: 900..=864000.";

const ROLLBACK_HELP: &str = "\
USAGE: pact rollback SEQ [-m MSG] [--node NODE]

Records a ROLLBACK entry whose parent is SEQ on the current vCluster (or on NODE).
(Agents act on it once the agent issue lands; today it is a journal record.)";

const APPLY_HELP: &str = "\
USAGE: pact apply SPEC.toml [--dry-run]

Reads a spec file of vCluster overlays ([vcluster.NAME]: base_image, supervisor_backend,
uenv, sysctl, modules, mounts, files, services, network, packages, policy) and node configs
([node.NAME]: the same keys except base_image, supervisor_backend, uenv and policy, which a
node takes from its vCluster), and records one COMMIT per vCluster and one per node, each
carrying the complete state delta and the declared spec. A file may hold either or both.
The whole file is checked before anything is sent.
--dry-run: check and print the deltas, send nothing.";

struct Parsed {
    globals: GlobalFlags,
    command: Option<String>,
    positionals: Vec<String>,
    opts: Vec<(&'static str, String)>,
    flags: Vec<&'static str>,
    help: bool,
    version: bool,
}

/// Options that take a value: (long name, short name).
const VALUE_OPTS: &[(&str, Option<char>)] = &[
    ("endpoint", None),
    ("token", None),
    ("ca-cert", None),
    ("vcluster", None),
    ("output", None),
    ("n", Some('n')),
    ("scope", None),
    ("from", None),
    ("to", None),
    ("message", Some('m')),
    ("m", None),
    ("ttl", None),
    ("node", None),
    ("raft-addr", None),
    ("client-addr", None),
    ("to-vcluster", None),
    ("count", None),
    ("agent-endpoint", None),
    ("reason", None),
    ("type", None),
    ("author", None),
    ("issuer", None),
    ("client-id", None),
    ("callback-port", None),
    ("timeout", None),
    ("hardware-id", None),
    ("mac", None),
    ("bmc-serial", None),
    ("batch", None),
    ("state", None),
];
const FLAG_OPTS: &[&str] = &[
    "oldest-first",
    "dry-run",
    "linearizable",
    "device-code",
    "service-account",
    "no-browser",
    "all",
    "force",
    "unassigned",
];

fn parse(args: Vec<OsString>) -> Result<Parsed, Failure> {
    let mut p = Parsed {
        globals: GlobalFlags::default(),
        command: None,
        positionals: vec![],
        opts: vec![],
        flags: vec![],
        help: false,
        version: false,
    };
    let mut parser = lexopt::Parser::from_args(args);
    let bad = |e: lexopt::Error| Failure::usage(format!("{e}\n\n{USAGE}"));
    while let Some(arg) = parser.next().map_err(bad)? {
        match arg {
            Short('h') | Long("help") => p.help = true,
            Short('V') | Long("version") => p.version = true,
            Short(c) => {
                let (name, _) = VALUE_OPTS
                    .iter()
                    .find(|(_, s)| *s == Some(c))
                    .ok_or_else(|| Failure::usage(format!("unknown option -{c}")))?;
                let v = parser.value().map_err(bad)?.string().map_err(bad)?;
                p.opts.push((name, v));
            }
            Long(l) => {
                if let Some(f) = FLAG_OPTS.iter().find(|f| **f == l) {
                    p.flags.push(f);
                    continue;
                }
                let (name, _) = VALUE_OPTS
                    .iter()
                    .find(|(n, _)| *n == l)
                    .ok_or_else(|| Failure::usage(format!("unknown option --{l}")))?;
                let v = parser.value().map_err(bad)?.string().map_err(bad)?;
                match *name {
                    "endpoint" => p.globals.endpoint = Some(v),
                    "token" => p.globals.token = Some(v),
                    "ca-cert" => p.globals.ca_cert = Some(v.into()),
                    "vcluster" => p.globals.vcluster = Some(v),
                    "output" => p.globals.output = Some(v),
                    "m" => p.opts.push(("message", v)),
                    other => p.opts.push((other, v)),
                }
            }
            Value(v) => {
                let v = v.string().map_err(bad)?;
                if p.command.is_none() {
                    p.command = Some(v);
                } else {
                    p.positionals.push(v);
                }
            }
        }
    }
    Ok(p)
}

impl Parsed {
    fn opt(&self, name: &str) -> Option<&str> {
        self.opts.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of an option that may be repeated, in order.
    fn opts_all(&self, name: &str) -> Vec<&str> {
        self.opts.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_str()).collect()
    }

    /// `pact enroll` and `pact node enroll|list|inspect|decommission`: what they may be given.
    fn enroll_opts(&self) -> crate::enroll_cmd::Opts<'_> {
        crate::enroll_cmd::Opts {
            hardware_ids: self.opts_all("hardware-id"),
            mac: self.opt("mac"),
            bmc_serial: self.opt("bmc-serial"),
            batch: self.opt("batch"),
            state: self.opt("state"),
            // Only what was typed: a filter never falls back to the default vCluster.
            vcluster_flag: self.globals.vcluster.as_deref(),
            unassigned: self.flag("unassigned"),
            force: self.flag("force"),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    /// Refuses options the command does not take.
    fn only(
        &self,
        cmd: &str,
        allowed_opts: &[&str],
        allowed_flags: &[&str],
        max_positionals: usize,
    ) -> Result<(), Failure> {
        if let Some((n, _)) = self.opts.iter().find(|(n, _)| !allowed_opts.contains(n)) {
            return Err(Failure::usage(format!("`pact {cmd}` takes no option --{n}; see `pact {cmd} --help`")));
        }
        if let Some(f) = self.flags.iter().find(|f| !allowed_flags.contains(f)) {
            return Err(Failure::usage(format!("`pact {cmd}` takes no option --{f}; see `pact {cmd} --help`")));
        }
        if self.positionals.len() > max_positionals {
            return Err(Failure::usage(format!(
                "`pact {cmd}`: unexpected argument {:?}",
                self.positionals[max_positionals]
            )));
        }
        Ok(())
    }
}

pub fn run(args: Vec<OsString>, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Failure> {
    let p = parse(args)?;
    if p.version {
        return Ok(format!("pact {}", pact_proto::VERSION));
    }
    let Some(cmd) = p.command.clone() else {
        if p.help {
            return Ok(USAGE.into());
        }
        return Err(Failure::usage(format!("no command given\n\n{USAGE}")));
    };
    let help = match cmd.as_str() {
        "status" => STATUS_HELP,
        "log" => LOG_HELP,
        "commit" => COMMIT_HELP,
        "rollback" => ROLLBACK_HELP,
        "apply" => APPLY_HELP,
        "journal" => crate::journal_cmd::HELP,
        "approve" => crate::approve_cmd::HELP,
        "node" => crate::node_cmd::HELP,
        "enroll" => crate::enroll_cmd::HELP,
        "watch" => crate::watch_cmd::HELP,
        "service" => crate::agent_cmd::SERVICE_HELP,
        "reboot" => crate::agent_cmd::REBOOT_HELP,
        "poweroff" => crate::agent_cmd::POWEROFF_HELP,
        "login" => crate::login::LOGIN_HELP,
        "logout" => crate::login::LOGOUT_HELP,
        "help" => return Ok(USAGE.into()),
        other => return Err(Failure::usage(format!("unknown command {other:?}\n\n{USAGE}"))),
    };
    if p.help {
        return Ok(help.into());
    }
    let mut s = settings::resolve(&p.globals, env).map_err(Failure::usage)?;
    match cmd.as_str() {
        "login" => return login(&p, &s, env),
        "logout" => {
            p.only("logout", &[], &["all"], 0)?;
            return crate::login::logout(p.flag("all"), &s, env);
        }
        _ => {}
    }
    // Every other command talks to the journal or an agent with a token.
    crate::tokens::resolve_token(&mut s)?;
    match cmd.as_str() {
        "status" => status(&p, &s),
        "log" => log(&p, &s),
        "commit" => commit(&p, &s),
        "rollback" => rollback(&p, &s),
        "journal" => {
            p.only("journal", &["raft-addr", "client-addr"], &["linearizable"], 2)?;
            let opts = crate::journal_cmd::Opts {
                raft_addr: p.opt("raft-addr").map(str::to_string),
                client_addr: p.opt("client-addr").map(str::to_string),
            };
            let first = || connect_with(&s, p.flag("linearizable"));
            crate::journal_cmd::run(&p.positionals, &opts, &s, first)
        }
        "approve" => {
            p.only("approve", &["scope", "message"], &["all"], 2)?;
            let opts =
                crate::approve_cmd::Opts { all: p.flag("all"), scope: p.opt("scope"), message: p.opt("message") };
            crate::approve_cmd::run(&p.positionals, &opts, &s)
        }
        "enroll" => {
            p.only("enroll", &["hardware-id", "mac", "bmc-serial"], &[], 1)?;
            let plan = crate::enroll_cmd::plan_enroll(&p.positionals, &p.enroll_opts())?;
            crate::enroll_cmd::execute(plan, &s)
        }
        "node" if p.positionals.first().is_some_and(|sub| crate::enroll_cmd::is_node_subcommand(sub)) => {
            // plan_node counts the positionals itself, naming the subcommand.
            let opts = &["hardware-id", "mac", "bmc-serial", "batch", "state"];
            p.only("node", opts, &["force", "unassigned"], p.positionals.len())?;
            let plan = crate::enroll_cmd::plan_node(&p.positionals, &p.enroll_opts())?;
            crate::enroll_cmd::execute(plan, &s)
        }
        "node" => {
            p.only("node", &["to-vcluster"], &[], 2)?;
            let opts = crate::node_cmd::Opts {
                // Only what was typed: an assignment never falls back to the default vCluster.
                vcluster_flag: p.globals.vcluster.as_deref(),
                to_vcluster: p.opt("to-vcluster"),
            };
            crate::node_cmd::run(&p.positionals, &opts, &s)
        }
        "watch" => {
            p.only("watch", &["node", "from", "count"], &[], 0)?;
            let opts = crate::watch_cmd::Opts::parse(
                p.globals.vcluster.as_deref(),
                p.opt("node"),
                p.opt("from"),
                p.opt("count"),
            )?;
            // watch prints as it goes; nothing is left to print at the end.
            crate::watch_cmd::run(&opts, &s).map(|()| String::new())
        }
        "service" => {
            p.only("service", &["agent-endpoint"], &[], 3)?;
            let c = crate::agent_cmd::ServiceCommand::parse(&p.positionals, p.opt("agent-endpoint"))?;
            crate::agent_cmd::service(&c, &s)
        }
        "reboot" | "poweroff" => {
            p.only(&cmd, &["agent-endpoint", "reason"], &[], 1)?;
            let c =
                crate::agent_cmd::PowerCommand::parse(&cmd, &p.positionals, p.opt("reason"), p.opt("agent-endpoint"))?;
            crate::agent_cmd::power(&c, &s)
        }
        _ => apply(&p, &s),
    }
}

fn login(p: &Parsed, s: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Failure> {
    use crate::login::{Flow, LoginOpts};
    p.only(
        "login",
        &["issuer", "client-id", "callback-port", "timeout"],
        &["device-code", "service-account", "no-browser"],
        0,
    )?;
    let flow = match (p.flag("device-code"), p.flag("service-account")) {
        (true, true) => {
            return Err(Failure::usage("`pact login`: --device-code and --service-account exclude each other"))
        }
        (true, false) => Flow::DeviceCode,
        (false, true) => Flow::ServiceAccount,
        (false, false) => Flow::Browser,
    };
    let callback_port = match p.opt("callback-port") {
        Some(v) => u16::try_from(parse_u64("--callback-port", v)?)
            .map_err(|_| Failure::usage(format!("--callback-port {v}: expected 0..=65535")))?,
        None => crate::login::DEFAULT_CALLBACK_PORT,
    };
    let timeout = match p.opt("timeout") {
        Some(v) => match parse_u64("--timeout", v)? {
            t @ 1..=86_400 => std::time::Duration::from_secs(t),
            _ => return Err(Failure::usage(format!("--timeout {v}: expected 1..=86400 seconds"))),
        },
        None => crate::login::DEFAULT_LOGIN_TIMEOUT,
    };
    let nonempty = |o: &str| p.opt(o).map(str::to_string).filter(|v| !v.trim().is_empty());
    let o = LoginOpts {
        flow,
        issuer: nonempty("issuer"),
        client_id: nonempty("client-id"),
        callback_port,
        timeout,
        no_browser: p.flag("no-browser"),
    };
    crate::login::login(&o, s, env)
}

fn connect_with(s: &Settings, linearizable: bool) -> Result<Client, Failure> {
    let mut c = connect(s)?;
    c.set_linearizable(linearizable);
    Ok(c)
}

pub fn connect(s: &Settings) -> Result<Client, Failure> {
    let token = token(s)?;
    Ok(Client::connect(&s.endpoint, tls(s)?, token, s.timeout)?)
}

/// The bearer token every request carries (journal and agents alike), or the exit-2 failure
/// that says how to give one.
pub fn token(s: &Settings) -> Result<&str, Failure> {
    s.token.as_deref().ok_or_else(|| {
        Failure::new(
            EXIT_AUTH,
            format!(
                "not authenticated: no token for {} (run `pact login`, pass --token, set PACT_TOKEN, put one in ~/.config/pact/token, or run next to a `pact-journal --dev`)",
                s.endpoint
            ),
        )
    })
}

/// TLS trusting the configured CA (the journal's and the agents' certificates come from it).
pub fn tls(s: &Settings) -> Result<std::sync::Arc<rustls::ClientConfig>, Failure> {
    pact_proto::tls::client_config(&s.ca_cert)
        .map_err(|e| Failure::usage(format!("{e} (pass --ca-cert or set PACT_TLS_CA)")))
}

fn scope_vc(s: &Settings, node: Option<&str>) -> Scope {
    match node {
        Some(n) => Scope { target: Some(Target::NodeId(n.into())) },
        None => Scope { target: Some(Target::VclusterId(s.vcluster.clone())) },
    }
}

pub fn parse_scope(text: &str) -> Result<Scope, Failure> {
    let target = if text == "global" {
        Target::Global(true)
    } else if let Some(n) = text.strip_prefix("node:").filter(|n| !n.is_empty()) {
        Target::NodeId(n.into())
    } else if let Some(v) = text.strip_prefix("vc:").filter(|v| !v.is_empty()) {
        Target::VclusterId(v.into())
    } else {
        return Err(Failure::usage(format!("--scope {text:?}: expected node:ID, vc:NAME or global")));
    };
    Ok(Scope { target: Some(target) })
}

pub fn parse_u64(name: &str, v: &str) -> Result<u64, Failure> {
    v.parse().map_err(|_| Failure::usage(format!("{name} {v:?}: expected a non-negative integer")))
}

fn status(p: &Parsed, s: &Settings) -> Result<String, Failure> {
    p.only("status", &[], &["linearizable"], 1)?;
    let mut c = connect_with(s, p.flag("linearizable"))?;
    match p.positionals.first() {
        None => {
            let st: JournalStatus = c.call(Method::JournalStatus, &JournalStatusRequest {})?;
            let j = output::journal_status_json(&st);
            Ok(match s.output {
                Format::Json => j.serialize_json(),
                Format::Text => format!(
                    "Journal node {} ({}), term {}, leader {}\n  commit index {}, applied index {}\n  entries {}, last sequence {}\n  voters {:?}\n  version {}\n",
                    j.node_id, j.role, j.term, j.leader_id, j.commit_index, j.applied_index, j.entries, j.last_sequence, j.voters, j.version
                ),
            })
        }
        Some(node) => {
            let st: pact_proto::config::NodeConfigState =
                c.call(Method::GetNodeState, &GetNodeStateRequest { node_id: node.clone() })?;
            let j = output::NodeStateJson {
                node_id: st.node_id.clone(),
                state: output::config_state_text(st.state),
                since_sequence: st.since_sequence,
                updated_at: output::rfc3339(st.updated_at.as_ref()),
                updated_by: st.updated_by.map(|i| i.principal).unwrap_or_default(),
            };
            Ok(match s.output {
                Format::Json => j.serialize_json(),
                Format::Text => format!(
                    "Node: {}  State: {}  (since seq {}, {} by {})\n",
                    j.node_id, j.state, j.since_sequence, j.updated_at, j.updated_by
                ),
            })
        }
    }
}

fn log(p: &Parsed, s: &Settings) -> Result<String, Failure> {
    p.only("log", &["n", "scope", "from", "to", "type", "author"], &["oldest-first", "linearizable"], 0)?;
    let limit = match p.opt("n") {
        Some(v) => parse_u64("-n", v)?.clamp(1, 10_000) as u32,
        None => 20,
    };
    let scope = p.opt("scope").map(parse_scope).transpose()?;
    let req = ListEntriesRequest {
        scope,
        from_sequence: p.opt("from").map(|v| parse_u64("--from", v)).transpose()?,
        to_sequence: p.opt("to").map(|v| parse_u64("--to", v)).transpose()?,
        limit,
        oldest_first: p.flag("oldest-first"),
        entry_types: p.opt("type").map(parse_entry_types).transpose()?.unwrap_or_default(),
        author: p.opt("author").unwrap_or_default().to_string(),
    };
    let mut c = connect_with(s, p.flag("linearizable"))?;
    let entries: Vec<ConfigEntry> = c.call_stream(Method::ListEntries, &req)?;
    Ok(match s.output {
        Format::Json => entries.iter().map(output::entry_json).collect::<Vec<_>>().serialize_json(),
        Format::Text => output::entries_text(&entries),
    })
}

/// `--type commit,admin_operation`: entry type names as `pact log` prints them, any case.
fn parse_entry_types(v: &str) -> Result<Vec<i32>, Failure> {
    v.split(',')
        .map(|t| {
            let name = format!("ENTRY_TYPE_{}", t.trim().to_ascii_uppercase().replace('-', "_"));
            pact_proto::config::EntryType::from_str_name(&name)
                .filter(|e| *e != pact_proto::config::EntryType::Unspecified)
                .map(|e| e as i32)
                .ok_or_else(|| {
                    Failure::usage(format!("--type {t:?}: not an entry type (commit, rollback, admin_operation, ...)"))
                })
        })
        .collect()
}

/// Records one entry; the journal's answer (its sequence and timestamp).
pub fn append_entry(s: &Settings, entry: ConfigEntry) -> Result<AppendEntryResponse, Failure> {
    let mut c = connect(s)?;
    Ok(c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(entry) })?)
}

pub fn append(s: &Settings, entry: ConfigEntry) -> Result<String, Failure> {
    let scope = output::scope_text(entry.scope.as_ref());
    let kind = output::entry_type_text(entry.entry_type);
    let r = append_entry(s, entry)?;
    let j = output::AppendedJson {
        sequence: r.sequence,
        timestamp: output::rfc3339(r.timestamp.as_ref()),
        scope,
        entry_type: kind,
        pending_approval_id: r.pending_approval_id.clone(),
    };
    Ok(match s.output {
        Format::Json => j.serialize_json(),
        // Held for a second person: not an error (exit 0), and not applied yet.
        Format::Text if !j.pending_approval_id.is_empty() => format!(
            "pending approval {}: {} on {} waits for a second person (`pact approve accept {}`)\n",
            j.pending_approval_id, j.entry_type, j.scope, j.pending_approval_id
        ),
        Format::Text => format!("{} recorded (seq:{}) on {}\n", j.entry_type, j.sequence, j.scope),
    })
}

fn commit(p: &Parsed, s: &Settings) -> Result<String, Failure> {
    p.only("commit", &["message", "ttl", "node"], &[], 0)?;
    let msg = p.opt("message").ok_or_else(|| Failure::usage("`pact commit` needs -m MSG"))?;
    if msg.trim().is_empty() {
        return Err(Failure::usage("the commit message is empty"));
    }
    let ttl = p.opt("ttl").map(|v| parse_u64("--ttl", v)).transpose()?;
    if let Some(t) = ttl {
        if !(900..=864_000).contains(&t) {
            return Err(Failure::usage(format!("--ttl {t}: expected 900..=864000 seconds")));
        }
    }
    let entry = ConfigEntry {
        entry_type: EntryType::Commit as i32,
        scope: Some(scope_vc(s, p.opt("node"))),
        policy_ref: msg.to_string(),
        ttl_seconds: ttl.map(|t| t as u32),
        ..Default::default()
    };
    append(s, entry)
}

fn rollback(p: &Parsed, s: &Settings) -> Result<String, Failure> {
    p.only("rollback", &["message", "node"], &[], 1)?;
    let seq =
        p.positionals.first().ok_or_else(|| Failure::usage("`pact rollback` needs SEQ, the entry to roll back to"))?;
    let seq = parse_u64("SEQ", seq)?;
    let entry = ConfigEntry {
        entry_type: EntryType::Rollback as i32,
        scope: Some(scope_vc(s, p.opt("node"))),
        parent: Some(seq),
        policy_ref: p.opt("message").map(str::to_string).unwrap_or_else(|| format!("rollback to {seq}")),
        ..Default::default()
    };
    append(s, entry)
}

fn apply(p: &Parsed, s: &Settings) -> Result<String, Failure> {
    p.only("apply", &[], &["dry-run"], 1)?;
    let path = p.positionals.first().ok_or_else(|| Failure::usage("`pact apply` needs SPEC.toml"))?;
    let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{path}: {e}")))?;
    // parse_spec refuses a file that declares nothing.
    let file = spec::parse_spec(path, &text).map_err(|e| Failure::usage(e.to_string()))?;
    let commit = |target: Target, declared: VClusterSpec| ConfigEntry {
        entry_type: EntryType::Commit as i32,
        scope: Some(Scope { target: Some(target) }),
        state_delta: Some(spec::state_delta(&declared)),
        policy_ref: format!("apply:{path}"),
        declared: Some(declared),
        ..Default::default()
    };
    // vClusters first: a node's config is layered on its vCluster's overlay.
    let entries: Vec<ConfigEntry> = file
        .vclusters
        .into_iter()
        .map(|vc| commit(Target::VclusterId(vc.vcluster_id.clone()), vc))
        .chain(file.nodes.into_iter().map(|n| commit(Target::NodeId(n.node_id), n.spec)))
        .collect();
    if p.flag("dry-run") {
        return Ok(match s.output {
            Format::Json => entries.iter().map(output::entry_json).collect::<Vec<_>>().serialize_json(),
            Format::Text => format!("dry run: nothing sent\n{}", output::entries_text(&entries)),
        });
    }
    let mut out = String::new();
    let mut json = Vec::new();
    for e in entries {
        let one = append(s, e)?;
        match s.output {
            Format::Json => json.push(one),
            Format::Text => out.push_str(&one),
        }
    }
    Ok(match s.output {
        Format::Json => format!("[{}]", json.join(",")),
        Format::Text => out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn globals_anywhere_and_options_per_command() {
        let p = parse(args(&["--output", "json", "log", "-n", "5", "--scope", "vc:ml", "--endpoint", "h:1"])).unwrap();
        assert_eq!(p.command.as_deref(), Some("log"));
        assert_eq!(p.globals.output.as_deref(), Some("json"));
        assert_eq!(p.globals.endpoint.as_deref(), Some("h:1"));
        assert_eq!(p.opt("n"), Some("5"));
        assert!(p.only("log", &["n", "scope"], &[], 0).is_ok());
        assert!(p.only("commit", &["message"], &[], 0).is_err());
        assert!(parse(args(&["log", "--bogus"])).is_err());
    }

    #[test]
    fn scopes_parse() {
        assert!(matches!(parse_scope("global").unwrap().target, Some(Target::Global(true))));
        assert!(matches!(parse_scope("node:n1").unwrap().target, Some(Target::NodeId(n)) if n == "n1"));
        assert!(parse_scope("node:").is_err());
        assert!(parse_scope("cluster:x").is_err());
    }

    #[test]
    fn help_and_version_need_no_journal() {
        let env = |_: &str| None;
        assert!(run(args(&["--version"]), &env).unwrap().starts_with("pact "));
        for c in [
            "status", "log", "commit", "rollback", "apply", "node", "watch", "journal", "service", "reboot",
            "poweroff", "enroll",
        ] {
            assert!(run(args(&[c, "--help"]), &env).unwrap().contains("USAGE"));
        }
        assert_eq!(run(args(&["frobnicate"]), &env).unwrap_err().code, 1);
    }

    /// No config files, a default vCluster from the environment and a token that no journal
    /// accepts: what these tests expect is refused by the command line, before connecting.
    fn isolated(k: &str) -> Option<String> {
        match k {
            "PACT_CLI_CONFIG" => Some("/nonexistent/cli.toml".into()),
            "PACT_DEV_DIR" => Some("/nonexistent".into()),
            "PACT_VCLUSTER" => Some("from-env".into()),
            "PACT_TOKEN" => Some("t".into()),
            _ => None,
        }
    }

    fn refused(a: &[&str]) -> String {
        let f = run(args(a), &isolated).expect_err("should be refused");
        assert_eq!(f.code, 1, "{}", f.message);
        f.message
    }

    #[test]
    fn node_and_watch_command_lines() {
        // --vcluster is global: it is read before or after the command, and only a typed one
        // counts for `node assign` (PACT_VCLUSTER is set above).
        let p = parse(args(&["--vcluster", "ml", "node", "assign", "n1"])).unwrap();
        assert_eq!(
            (p.globals.vcluster.as_deref(), p.positionals.as_slice()),
            (Some("ml"), &["assign".into(), "n1".into()][..])
        );
        let m = refused(&["node", "assign", "n1"]);
        assert!(m.contains("needs --vcluster NAME on the command line"), "{m}");
        let m = refused(&["node", "assign", "n1", "n2", "--vcluster", "ml"]);
        assert_eq!(m, "`pact node`: unexpected argument \"n2\"");
        let m = refused(&["node", "move", "n1", "--to", "5"]);
        assert_eq!(m, "`pact node` takes no option --to; see `pact node --help`");
        let m = refused(&["node", "move", "n1", "--to-vcluster"]);
        assert!(m.contains("--to-vcluster"), "{m}");
        let p = parse(args(&["node", "move", "n1", "--to-vcluster", "inf"])).unwrap();
        assert_eq!(p.opt("to-vcluster"), Some("inf"));

        let m = refused(&["watch", "--to-vcluster", "x"]);
        assert_eq!(m, "`pact watch` takes no option --to-vcluster; see `pact watch --help`");
        assert_eq!(refused(&["watch", "ml"]), "`pact watch`: unexpected argument \"ml\"");
        assert_eq!(refused(&["watch", "--count", "x"]), "--count \"x\": expected a non-negative integer");
        assert_eq!(refused(&["watch", "--from", "1.5"]), "--from \"1.5\": expected a non-negative integer");
        let p = parse(args(&["watch", "--node", "n1", "--from", "0", "--count", "1", "--output", "json"])).unwrap();
        assert_eq!((p.opt("node"), p.opt("from"), p.opt("count")), (Some("n1"), Some("0"), Some("1")));
        assert!(p.only("watch", &["node", "from", "count"], &[], 0).is_ok());
        // Help needs no journal and names the commands.
        assert!(USAGE.contains("node assign NODE --vcluster NAME") && USAGE.contains("watch ["));
        assert!(run(args(&["node", "--help"]), &isolated).unwrap().contains("pact node move NODE --to-vcluster NAME"));
        assert!(run(args(&["watch", "-h"]), &isolated).unwrap().contains("--count N"));
    }

    #[test]
    fn enroll_command_lines() {
        // Help needs no journal and names the commands.
        for line in [
            "enroll NODE --hardware-id HW",
            "node enroll NODE --mac MAC [--bmc-serial S]",
            "node enroll --batch FILE.csv",
            "node list [--state S] [--vcluster NAME] [--unassigned]",
            "node inspect NODE",
            "node decommission NODE [--force]",
        ] {
            assert!(USAGE.contains(line), "{line:?} missing from USAGE");
        }
        assert!(run(args(&["enroll", "--help"]), &isolated).unwrap().starts_with("USAGE: pact enroll NODE"));
        let h = run(args(&["node", "list", "--help"]), &isolated).unwrap();
        assert!(h.contains("pact node enroll --batch FILE.csv") && h.contains("pact node decommission NODE"), "{h}");

        // Repeated --hardware-id reaches the command in order.
        let p =
            parse(args(&["enroll", "n1", "--hardware-id", "serial:S", "--hardware-id", "aa:bb:cc:dd:ee:ff"])).unwrap();
        assert_eq!(p.enroll_opts().hardware_ids, ["serial:S", "aa:bb:cc:dd:ee:ff"]);
        let p = parse(args(&["node", "list", "--unassigned", "--state", "active"])).unwrap();
        let o = p.enroll_opts();
        assert!(o.unassigned && o.state == Some("active") && o.vcluster_flag.is_none());

        // Usage errors, refused before anything connects (exit 1).
        assert_eq!(refused(&["enroll"]), "`pact enroll` needs NODE, the node's id");
        assert!(refused(&["enroll", "n1"]).starts_with("`pact enroll n1` needs at least one --hardware-id"));
        assert!(
            refused(&["enroll", "n1", "--hardware-id", "x"]).starts_with("--hardware-id \"x\" is not a hardware id")
        );
        assert_eq!(
            refused(&["enroll", "n1", "--batch", "f"]),
            "`pact enroll` takes no option --batch; see `pact enroll --help`"
        );
        assert!(refused(&["node", "enroll", "n1"]).starts_with("`pact node enroll n1` needs --mac MAC"));
        assert!(refused(&["node", "enroll", "--batch", "f.csv", "n1"]).contains("takes no NODE"));
        assert!(refused(&["node", "enroll", "--batch", "/nonexistent/f.csv"]).starts_with("/nonexistent/f.csv: "));
        assert_eq!(refused(&["node", "inspect"]), "`pact node inspect` needs NODE, the node's id");
        assert_eq!(
            refused(&["node", "decommission", "n1", "n2"]),
            "`pact node decommission`: unexpected argument \"n2\""
        );
        assert!(refused(&["node", "list", "--state", "x"]).starts_with("--state \"x\""));
        assert_eq!(
            refused(&["node", "list", "--mac", "x"]),
            "`pact node list` takes no option --mac; see `pact node --help`"
        );
        // The new options belong to the new subcommands only.
        assert_eq!(
            refused(&["node", "assign", "n1", "--vcluster", "ml", "--force"]),
            "`pact node` takes no option --force; see `pact node --help`"
        );
        assert_eq!(
            refused(&["node", "inspect", "n1", "--to-vcluster", "ml"]),
            "`pact node` takes no option --to-vcluster; see `pact node --help`"
        );
        assert_eq!(refused(&["log", "--state", "x"]), "`pact log` takes no option --state; see `pact log --help`");
    }

    #[test]
    fn service_reboot_and_poweroff_command_lines() {
        // Help needs neither a journal nor an agent, and USAGE lists the commands.
        for c in ["service", "reboot", "poweroff"] {
            let h = run(args(&[c, "--help"]), &isolated).unwrap();
            assert!(h.starts_with(&format!("USAGE: pact {c} ")), "{h}");
        }
        assert_eq!(run(args(&["service", "-h"]), &isolated).unwrap(), crate::agent_cmd::SERVICE_HELP);
        assert_eq!(run(args(&["reboot", "n1", "--help"]), &isolated).unwrap(), crate::agent_cmd::REBOOT_HELP);
        assert_eq!(run(args(&["poweroff", "--help"]), &isolated).unwrap(), crate::agent_cmd::POWEROFF_HELP);
        for line in [
            "service status NODE [SERVICE]",
            "service start|stop|restart NODE SERVICE",
            "reboot NODE [--reason TEXT]",
            "poweroff NODE [--reason TEXT]",
            "--agent-endpoint HOST:PORT",
            "5 journal or agent unreachable/timeout",
        ] {
            assert!(USAGE.contains(line), "{line:?} missing from USAGE");
        }

        // The options reach the commands, before or after the positionals.
        let p = parse(args(&["reboot", "--reason", "bios update", "n1", "--agent-endpoint", "10.0.0.1:9"])).unwrap();
        assert_eq!((p.command.as_deref(), p.positionals.as_slice()), (Some("reboot"), &["n1".to_string()][..]));
        assert_eq!((p.opt("reason"), p.opt("agent-endpoint")), (Some("bios update"), Some("10.0.0.1:9")));
        let p = parse(args(&["service", "restart", "n1", "chronyd", "--agent-endpoint=h:1"])).unwrap();
        assert_eq!(p.positionals, ["restart", "n1", "chronyd"]);
        assert_eq!(p.opt("agent-endpoint"), Some("h:1"));

        // Usage errors, all refused before anything connects (exit 1).
        let m = refused(&["reboot", "n1", "--reason"]);
        assert!(m.contains("--reason") && m.contains("missing argument"), "{m}");
        let m = refused(&["service", "status", "n1", "--agent-endpoint"]);
        assert!(m.contains("--agent-endpoint") && m.contains("missing argument"), "{m}");
        assert_eq!(refused(&["reboot"]), "`pact reboot` needs NODE, the node's id");
        assert_eq!(refused(&["poweroff", "--reason", "x"]), "`pact poweroff` needs NODE, the node's id");
        assert_eq!(refused(&["reboot", "n1", "n2"]), "`pact reboot`: unexpected argument \"n2\"");
        assert_eq!(refused(&["reboot", "n1", "--reason", " "]), "--reason is empty: say why, or leave --reason out");
        assert_eq!(refused(&["service", "status"]), "`pact service status` needs NODE, the node's id");
        assert!(refused(&["service"]).starts_with("`pact service` needs an action"));
        assert!(refused(&["service", "kill", "n1", "x"]).starts_with("unknown service action \"kill\""));
        assert_eq!(refused(&["service", "start", "n1"]), "`pact service start` needs SERVICE, the service's name");
        assert_eq!(refused(&["service", "status", "n1", "a", "b"]), "`pact service`: unexpected argument \"b\"");
        // Options of one command are refused by the others.
        assert_eq!(
            refused(&["service", "status", "n1", "--reason", "x"]),
            "`pact service` takes no option --reason; see `pact service --help`"
        );
        assert_eq!(
            refused(&["reboot", "n1", "--count", "1"]),
            "`pact reboot` takes no option --count; see `pact reboot --help`"
        );
        assert_eq!(
            refused(&["poweroff", "n1", "--linearizable"]),
            "`pact poweroff` takes no option --linearizable; see `pact poweroff --help`"
        );
        assert_eq!(
            refused(&["status", "--agent-endpoint", "h:1"]),
            "`pact status` takes no option --agent-endpoint; see `pact status --help`"
        );
        assert_eq!(refused(&["log", "--reason", "x"]), "`pact log` takes no option --reason; see `pact log --help`");
    }
}
