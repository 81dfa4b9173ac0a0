//! pact-journal's configuration: command-line flags, environment variables and
//! `/etc/pact/journal.toml` (deployment guide; reference §5.6), resolved into one
//! [`JournalConfig`]. Precedence everywhere: flag > environment > file > default (DESIGN.md §8).
//!
//! Every mistake is a [`ConfigError`] naming the file and line, the environment variable or the
//! flag. Keys the journal accepts (they appear in the deployment guide) but whose feature is not
//! implemented yet are read, validated and listed in [`JournalConfig::not_yet_active`] so the
//! binary can warn about them instead of silently ignoring them.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::raft_driver::Timing;
use pact_proto::tomlcfg::{ConfigError, Section, TomlFile};

/// Read when neither `--config` nor `PACT_JOURNAL_CONFIG` names a file, if it exists
/// (never with `--dev`).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pact/journal.toml";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9443";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/pact/journal";
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9091";
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 10_000;
/// `[journal.raft] election_tick` / `heartbeat_tick` at most: 10 minutes in 10 ms ticks.
pub const MAX_TICKS: usize = 60_000;
pub const DEFAULT_MAX_CONCURRENT_BOOT_STREAMS: u64 = 15_000;
pub const DEFAULT_SUBSCRIBER_BUFFER: u64 = 1024;
pub const DEFAULT_CERT_LIFETIME_SECONDS: u64 = 259_200;
/// Upstream documented 100/min; at that rate the re-enrollment that follows a quorum restart
/// would take 10,000 nodes 100 minutes. 6,000/min (100/s) takes them 100 s.
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: u64 = 6_000;
pub const DEFAULT_HEARTBEAT_TIMEOUT_SECONDS: u64 = 300;
pub const DEFAULT_SYNC_INTERVAL_SECONDS: u64 = 300;
/// Shortest HMAC secret accepted for development tokens.
pub const MIN_HMAC_SECRET: usize = 32;
/// `--dev` defaults: loopback only, data in the current directory.
pub const DEV_LISTEN: &str = "127.0.0.1:9443";
pub const DEV_METRICS_LISTEN: &str = "127.0.0.1:9091";
pub const DEV_DATA_DIR: &str = ".pact-dev";

pub const USAGE: &str = "\
pact-journal: pact's Raft-replicated configuration and audit journal

Usage: pact-journal [OPTIONS]

Options:
  --config FILE          config file [env PACT_JOURNAL_CONFIG; default /etc/pact/journal.toml
                         when it exists, none with --dev]
  --data-dir DIR         data directory [env PACT_JOURNAL_DATA_DIR; journal.data_dir;
                         default /var/lib/pact/journal]
  --listen ADDR          client address [env PACT_JOURNAL_LISTEN; journal.listen_addr;
                         default 0.0.0.0:9443]
  --node-id N            this node's Raft id, 1 or more [env PACT_JOURNAL_NODE_ID; default: the
                         only member when there is one, 1 with --dev]
  --peers LIST           journal nodes as 1=host:9443,2=host:9443 [env PACT_JOURNAL_PEERS]
  --metrics-listen ADDR  Prometheus metrics address [env PACT_JOURNAL_METRICS_LISTEN;
                         telemetry.prometheus_listen; default 0.0.0.0:9091]
  --raft-listen ADDR     Raft peer port [env PACT_JOURNAL_RAFT_LISTEN; default: the listen
                         address's IP with this node's members port, else listen port + 1]
  --cores N              executor threads [default: online CPUs]
  --bootstrap            initialise a new Raft cluster (first start of node 1 only; never on
                         restarts or on other nodes)
  --learner              join the quorum that PEERS / [journal.raft] members name as a learner
                         (a non-voting read replica): it asks the leader over the Raft port,
                         authenticated by its certificate from the cluster CA
  --dev                  development mode: throw-away CA, certificate and admin token in
                         DIR/dev/, no default config file, node id 1; defaults become
                         data dir ./.pact-dev, listen 127.0.0.1:9443, metrics 127.0.0.1:9091
  --check                validate the configuration, print it and exit
  --mint-token SUBJECT   print a 1-hour pact-platform-admin token signed with the configured
                         HMAC secret (PACT_OIDC_HMAC_SECRET / [policy.iam] hmac_secret), and
                         exit: for development and scripts, never with JWKS
  -h, --help             print this help and exit
  -V, --version          print the version and exit

Other environment: PACT_OIDC_ISSUER, PACT_OIDC_AUDIENCE, PACT_OIDC_JWKS_URL,
PACT_OIDC_HMAC_SECRET (over [policy.iam] oidc_issuer, oidc_audience, jwks_url, hmac_secret);
PACT_OIDC_CA_BUNDLE: the CA bundle for https fetches from the IdP (default: the system's);
PACT_POLICY_DIR: the Rego policy directory (over [policy.engine] policy_dir; default
/etc/pact/policies), read when [policy] enabled = true with the rego engine.
Precedence: flag > environment > file > default.
";

/// The command line, as given (values are validated by [`load`] unless noted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// Already checked to be a positive integer by [`parse_args`].
    pub node_id: Option<u64>,
    pub peers: Option<String>,
    pub metrics_listen: Option<String>,
    pub raft_listen: Option<String>,
    /// `--mint-token SUBJECT`: print a pact-platform-admin token signed with the configured
    /// HMAC secret, then exit (development and scripts only).
    pub mint_token: Option<String>,
    /// Already checked to be a positive integer by [`parse_args`].
    pub cores: Option<usize>,
    pub bootstrap: bool,
    /// `--learner`: join the quorum named by PEERS/members as a learner (non-voting replica).
    pub learner: bool,
    pub dev: bool,
    pub check: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    Run(Box<Flags>),
    Help,
    Version,
}

/// Parses the arguments after the program name (`std::env::args_os().skip(1)`).
/// `-h`/`--help` and `-V`/`--version` win over everything else on the line.
/// Errors name the flag, e.g. `--node-id: expected a positive integer, found "x"`.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, String> {
    use lexopt::prelude::*;

    let mut parser = lexopt::Parser::from_args(args);
    let mut flags = Flags::default();
    loop {
        let arg = match parser.next() {
            Ok(Some(arg)) => arg,
            Ok(None) => break,
            Err(e) => return Err(lexopt_message(e)),
        };
        match arg {
            Short('h') | Long("help") => return Ok(Invocation::Help),
            Short('V') | Long("version") => return Ok(Invocation::Version),
            Long("config") => {
                let v = flag_value(&mut parser, "--config")?;
                set_once(&mut flags.config, PathBuf::from(v), "--config")?;
            }
            Long("data-dir") => {
                let v = flag_value(&mut parser, "--data-dir")?;
                set_once(&mut flags.data_dir, PathBuf::from(v), "--data-dir")?;
            }
            Long("listen") => {
                let v = flag_string(&mut parser, "--listen")?;
                set_once(&mut flags.listen, v, "--listen")?;
            }
            Long("node-id") => {
                let v = flag_string(&mut parser, "--node-id")?;
                let n = positive(&v).ok_or_else(|| format!("--node-id: expected a positive integer, found {v:?}"))?;
                set_once(&mut flags.node_id, n, "--node-id")?;
            }
            Long("peers") => {
                let v = flag_string(&mut parser, "--peers")?;
                set_once(&mut flags.peers, v, "--peers")?;
            }
            Long("metrics-listen") => {
                let v = flag_string(&mut parser, "--metrics-listen")?;
                set_once(&mut flags.metrics_listen, v, "--metrics-listen")?;
            }
            Long("mint-token") => {
                let v = flag_string(&mut parser, "--mint-token")?;
                set_once(&mut flags.mint_token, v, "--mint-token")?;
            }
            Long("raft-listen") => {
                let v = flag_string(&mut parser, "--raft-listen")?;
                set_once(&mut flags.raft_listen, v, "--raft-listen")?;
            }
            Long("cores") => {
                let v = flag_string(&mut parser, "--cores")?;
                let n = positive(&v)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| format!("--cores: expected a positive integer, found {v:?}"))?;
                set_once(&mut flags.cores, n, "--cores")?;
            }
            Long("bootstrap") => flags.bootstrap = true,
            Long("learner") => flags.learner = true,
            Long("dev") => flags.dev = true,
            Long("check") => flags.check = true,
            Long(other) => {
                let known = [
                    "config",
                    "data-dir",
                    "listen",
                    "node-id",
                    "peers",
                    "metrics-listen",
                    "raft-listen",
                    "mint-token",
                    "cores",
                    "bootstrap",
                    "learner",
                    "dev",
                    "check",
                    "help",
                    "version",
                ];
                let mut msg = format!("unknown flag --{other}");
                if let Some(near) = pact_proto::tomlcfg::suggest(other, &known) {
                    msg.push_str(&format!(" (did you mean --{near}?)"));
                }
                return Err(msg + "; see --help");
            }
            Short(c) => return Err(format!("unknown flag -{c}; see --help")),
            Value(v) => {
                return Err(format!(
                    "unexpected argument {:?}: pact-journal takes only flags; see --help",
                    v.to_string_lossy()
                ))
            }
        }
    }
    Ok(Invocation::Run(Box::new(flags)))
}

fn lexopt_message(e: lexopt::Error) -> String {
    match e {
        lexopt::Error::MissingValue { option: Some(o) } => format!("{o}: needs a value"),
        lexopt::Error::UnexpectedValue { option, .. } => format!("{option}: takes no value"),
        other => other.to_string(),
    }
}

fn flag_value(parser: &mut lexopt::Parser, flag: &str) -> Result<OsString, String> {
    parser.value().map_err(|_| format!("{flag}: needs a value"))
}

fn flag_string(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    flag_value(parser, flag)?.into_string().map_err(|v| format!("{flag}: not valid UTF-8: {:?}", v.to_string_lossy()))
}

/// A flag given twice is a mistake (which one did the operator mean?), not "last one wins".
fn set_once<T>(slot: &mut Option<T>, value: T, flag: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{flag}: given more than once"));
    }
    *slot = Some(value);
    Ok(())
}

fn positive(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok().filter(|n| *n >= 1)
}

/// One journal node: `id`, and the address other nodes reach it at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    /// As written: a name, an IPv4 address, or an IPv6 address in brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.id, self.host, self.port)
    }
}

/// Splits `host:port` (host may be `[v6]`); the host must be non-empty and the port 1-65535.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    // A bare v6 address ("::1:9443") is ambiguous; insist on brackets.
    if host.is_empty() || host.chars().any(char::is_whitespace) || (host.contains(':') && !bracketed) {
        return None;
    }
    Some((host.to_string(), port))
}

/// Parses `--peers` / `PACT_JOURNAL_PEERS`: `1=host:9443,2=host:9443` (spaces around entries
/// allowed, empty entries skipped). Rejects duplicate ids.
pub fn parse_peers(list: &str) -> Result<Vec<Peer>, String> {
    let mut peers: Vec<Peer> = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || format!("expected entries like 1=host:9443, found {entry:?}");
        let (id, addr) = entry.split_once('=').ok_or_else(bad)?;
        let id = positive(id).ok_or_else(bad)?;
        let (host, port) = split_host_port(addr.trim()).ok_or_else(bad)?;
        if peers.iter().any(|p| p.id == id) {
            return Err(format!("node id {id} appears more than once"));
        }
        peers.push(Peer { id, host, port });
    }
    if peers.is_empty() {
        return Err("expected entries like 1=host:9443, found none".to_string());
    }
    Ok(peers)
}

/// Parses one `[journal.raft] members` entry: `1:journal-1.mgmt:9444`.
pub fn parse_member(entry: &str) -> Result<Peer, String> {
    let bad = || format!("expected \"id:host:port\" like \"1:journal-1.mgmt:9444\", found {entry:?}");
    let (id, addr) = entry.split_once(':').ok_or_else(bad)?;
    let id = positive(id).ok_or_else(bad)?;
    let (host, port) = split_host_port(addr).ok_or_else(bad)?;
    Ok(Peer { id, host, port })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub const NAMES: [&'static str; 5] = ["trace", "debug", "info", "warn", "error"];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    fn from_name(s: &str) -> LogLevel {
        match s {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            _ => LogLevel::Info,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[policy.engine] type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyEngineType {
    Opa,
    Rego,
    Builtin,
}

/// `[journal.raft]` (members are resolved into [`JournalConfig::members`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    pub snapshot_interval: u64,
    /// In ticks of 10 ms (`raft_driver::TICK`); default 50 (0.5 s, randomised up to 0.9 s).
    pub election_tick: usize,
    /// In ticks of 10 ms; default 10 (100 ms).
    pub heartbeat_tick: usize,
}

impl RaftConfig {
    pub fn timing(&self) -> Timing {
        Timing { election_tick: self.election_tick, heartbeat_tick: self.heartbeat_tick }
    }
}

/// `[journal.streaming]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamingConfig {
    pub max_concurrent_boot_streams: u64,
    /// Updates queued per live subscription before the subscriber is told to resync
    /// (pact's own key; not in the deployment guide).
    pub subscriber_buffer: u64,
}

/// `[journal.enrollment]`: the cluster CA, and the limits of enrollment (`enroll`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentConfig {
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub cert_lifetime_seconds: u64,
    pub rate_limit_per_minute: u64,
    pub heartbeat_timeout_seconds: u64,
}

/// `[policy.iam]`, with `PACT_OIDC_*` applied. Tokens are verified against issuer, audience
/// and their signature: RS256/ES256 against the JWKS (`jwks_url`, else the issuer's discovery
/// document when the issuer is a URL), HS256 against the HMAC secret when one is set.
#[derive(Clone, PartialEq, Eq)]
pub struct IamConfig {
    pub oidc_issuer: Option<String>,
    pub oidc_audience: Option<String>,
    pub jwks_url: Option<String>,
    pub hmac_secret: Option<String>,
}

// Hand-written so the secret never reaches a log line through `{:?}`.
impl fmt::Debug for IamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IamConfig")
            .field("oidc_issuer", &self.oidc_issuer)
            .field("oidc_audience", &self.oidc_audience)
            .field("jwks_url", &self.jwks_url)
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEngineConfig {
    /// None: `rego` when `[policy] enabled`.
    pub engine_type: Option<PolicyEngineType>,
    pub opa_endpoint: Option<String>,
    /// Where `rego` reads its `*.rego` files (`PACT_POLICY_DIR`; None: /etc/pact/policies).
    pub policy_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederationConfig {
    pub sovra_endpoint: Option<String>,
    pub sync_interval_seconds: u64,
}

/// `[policy]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    pub enabled: bool,
    pub iam: IamConfig,
    pub engine: PolicyEngineConfig,
    pub federation: FederationConfig,
}

/// `[telemetry]` as written in the file (see [`JournalConfig::metrics_listen`] for the
/// resolved metrics address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub prometheus_enabled: bool,
    pub prometheus_listen: SocketAddr,
    pub loki_enabled: bool,
    pub loki_endpoint: Option<String>,
}

/// Everything the journal needs to start, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// The file that was read, if any.
    pub config_file: Option<PathBuf>,
    pub node_id: u64,
    /// Client address (`--listen`, `PACT_JOURNAL_LISTEN`, `journal.listen_addr`).
    pub listen_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// From `--peers` / `PACT_JOURNAL_PEERS` (client addresses); empty when not given.
    pub peers: Vec<Peer>,
    /// From `[journal.raft] members` (Raft addresses); empty when not given.
    pub members: Vec<Peer>,
    pub raft: RaftConfig,
    pub streaming: StreamingConfig,
    pub enrollment: EnrollmentConfig,
    pub policy: PolicyConfig,
    pub telemetry: TelemetryConfig,
    /// Where to serve Prometheus metrics: `--metrics-listen`, `PACT_JOURNAL_METRICS_LISTEN`,
    /// else `telemetry.prometheus_listen` (default 0.0.0.0:9091) when
    /// `telemetry.prometheus_enabled` (default true); None = no metrics listener. An explicit
    /// flag or variable turns metrics on even when the file disables them.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the Raft peer port listens: `--raft-listen`, `PACT_JOURNAL_RAFT_LISTEN`, else
    /// resolved at start-up (see ARCHITECTURE.md, "Peer addresses").
    pub raft_listen: Option<SocketAddr>,
    /// `[journal.raft] learners` ("id:host:port" Raft addresses): non-voting replicas the
    /// founding journal adds after the voters.
    pub learners: Vec<Peer>,
    /// Executor threads: `--cores`, else the number of online CPUs.
    pub cores: usize,
    pub bootstrap: bool,
    pub learner: bool,
    pub dev: bool,
    /// Settings that were given but whose feature is not implemented yet, one line each
    /// (e.g. "journal.enrollment.*"); the binary should warn about each.
    pub not_yet_active: Vec<String>,
    /// `--check` with no node id and several journals listed: the ids it must be valid as.
    pub check_as_each: Vec<u64>,
}

/// Reads the configuration: which file (`--config`, else `PACT_JOURNAL_CONFIG`, else
/// /etc/pact/journal.toml if it exists, but no default file with `--dev`), then environment
/// and flags over it. `env` looks a variable up (`|k| std::env::var(k).ok()`); empty values
/// count as unset.
pub fn load(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<JournalConfig, ConfigError> {
    load_with_default(flags, env, Path::new(DEFAULT_CONFIG_PATH))
}

/// [`load`] with the default file location as a parameter, so tests do not depend on what the
/// machine has under /etc.
fn load_with_default(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    default_path: &Path,
) -> Result<JournalConfig, ConfigError> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());

    let config_file = if let Some(p) = &flags.config {
        Some(p.clone())
    } else if let Some(p) = env("PACT_JOURNAL_CONFIG") {
        Some(PathBuf::from(p))
    } else if !flags.dev && default_path.exists() {
        Some(default_path.to_path_buf())
    } else {
        None
    };

    // Defaults, then the file over them.
    let mut cfg = JournalConfig {
        config_file: config_file.clone(),
        node_id: 0, // resolved below
        listen_addr: if flags.dev { DEV_LISTEN } else { DEFAULT_LISTEN }.parse().expect("default listen address"),
        data_dir: PathBuf::from(if flags.dev { DEV_DATA_DIR } else { DEFAULT_DATA_DIR }),
        peers: Vec::new(),
        members: Vec::new(),
        raft: RaftConfig {
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            election_tick: Timing::DEFAULT.election_tick,
            heartbeat_tick: Timing::DEFAULT.heartbeat_tick,
        },
        streaming: StreamingConfig {
            max_concurrent_boot_streams: DEFAULT_MAX_CONCURRENT_BOOT_STREAMS,
            subscriber_buffer: DEFAULT_SUBSCRIBER_BUFFER,
        },
        enrollment: EnrollmentConfig {
            ca_cert: None,
            ca_key: None,
            cert_lifetime_seconds: DEFAULT_CERT_LIFETIME_SECONDS,
            rate_limit_per_minute: DEFAULT_RATE_LIMIT_PER_MINUTE,
            heartbeat_timeout_seconds: DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
        },
        policy: PolicyConfig {
            enabled: false,
            iam: IamConfig { oidc_issuer: None, oidc_audience: None, jwks_url: None, hmac_secret: None },
            engine: PolicyEngineConfig { engine_type: None, opa_endpoint: None, policy_dir: None },
            federation: FederationConfig { sovra_endpoint: None, sync_interval_seconds: DEFAULT_SYNC_INTERVAL_SECONDS },
        },
        telemetry: TelemetryConfig {
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            prometheus_enabled: true,
            prometheus_listen: if flags.dev { DEV_METRICS_LISTEN } else { DEFAULT_METRICS_LISTEN }
                .parse()
                .expect("default metrics address"),
            loki_enabled: false,
            loki_endpoint: None,
        },
        metrics_listen: None,
        raft_listen: None,
        learners: Vec::new(),
        cores: 1,
        bootstrap: flags.bootstrap,
        learner: flags.learner,
        dev: flags.dev,
        not_yet_active: Vec::new(),
        check_as_each: Vec::new(),
    };
    // Where members came from, for errors that point at them after the file is closed.
    let mut members_at: Option<(String, Option<usize>)> = None;
    if let Some(path) = &config_file {
        let file = TomlFile::load(path)?;
        read_file(&file, &mut cfg, &mut members_at)?;
    }

    // Environment over the file, flags over the environment.
    if let Some(v) = env("PACT_JOURNAL_LISTEN") {
        cfg.listen_addr = v.trim().parse().map_err(|_| {
            ConfigError::env(
                "PACT_JOURNAL_LISTEN",
                format!("expected a socket address like \"0.0.0.0:9443\", found {v:?}"),
            )
        })?;
    }
    if let Some(v) = &flags.listen {
        cfg.listen_addr = v.trim().parse().map_err(|_| {
            ConfigError::flag("--listen", format!("expected a socket address like \"0.0.0.0:9443\", found {v:?}"))
        })?;
    }

    if let Some(v) = env("PACT_JOURNAL_DATA_DIR") {
        cfg.data_dir = PathBuf::from(v);
    }
    if let Some(v) = &flags.data_dir {
        if v.as_os_str().is_empty() {
            return Err(ConfigError::flag("--data-dir", "expected a directory, found an empty value"));
        }
        cfg.data_dir = v.clone();
    }

    // Where the peer list came from, for messages.
    let mut peers_from = "";
    if let Some(v) = env("PACT_JOURNAL_PEERS") {
        cfg.peers = parse_peers(&v).map_err(|m| ConfigError::env("PACT_JOURNAL_PEERS", m))?;
        peers_from = "PACT_JOURNAL_PEERS";
    }
    if let Some(v) = &flags.peers {
        cfg.peers = parse_peers(v).map_err(|m| ConfigError::flag("--peers", m))?;
        peers_from = "--peers";
    }

    // Metrics: an explicit address turns them on; otherwise the file decides.
    cfg.metrics_listen = cfg.telemetry.prometheus_enabled.then_some(cfg.telemetry.prometheus_listen);
    if let Some(v) = env("PACT_JOURNAL_METRICS_LISTEN") {
        cfg.metrics_listen = Some(v.trim().parse().map_err(|_| {
            ConfigError::env(
                "PACT_JOURNAL_METRICS_LISTEN",
                format!("expected a socket address like \"0.0.0.0:9091\", found {v:?}"),
            )
        })?);
    }
    for (v, what) in [(env("PACT_JOURNAL_RAFT_LISTEN"), "env"), (flags.raft_listen.clone(), "flag")] {
        let Some(v) = v.filter(|v| !v.trim().is_empty()) else { continue };
        let parsed = v.trim().parse().map_err(|_| {
            let msg = format!("expected a socket address like 0.0.0.0:9444, found {v:?}");
            if what == "env" {
                ConfigError::env("PACT_JOURNAL_RAFT_LISTEN", msg)
            } else {
                ConfigError::flag("--raft-listen", msg)
            }
        })?;
        cfg.raft_listen = Some(parsed);
    }
    if let Some(v) = &flags.metrics_listen {
        cfg.metrics_listen = Some(v.trim().parse().map_err(|_| {
            ConfigError::flag(
                "--metrics-listen",
                format!("expected a socket address like \"0.0.0.0:9091\", found {v:?}"),
            )
        })?);
    }

    if let Some(v) = env("PACT_POLICY_DIR") {
        cfg.policy.engine.policy_dir = Some(PathBuf::from(v));
    }
    let iam = &mut cfg.policy.iam;
    if let Some(v) = env("PACT_OIDC_ISSUER") {
        iam.oidc_issuer = Some(v);
    }
    if let Some(v) = env("PACT_OIDC_AUDIENCE") {
        iam.oidc_audience = Some(v);
    }
    if let Some(v) = env("PACT_OIDC_JWKS_URL") {
        if !(v.starts_with("https://") || v.starts_with("http://")) {
            return Err(ConfigError::env("PACT_OIDC_JWKS_URL", format!("expected an http(s) URL, found {v:?}")));
        }
        iam.jwks_url = Some(v);
    }
    let from_env = env("PACT_OIDC_HMAC_SECRET");
    if let Some(v) = from_env.clone() {
        iam.hmac_secret = Some(v);
    }
    // HS256 with a short secret is guessable; jwt-simple refuses keys under 32 bytes anyway,
    // which would otherwise show up as every token being rejected.
    if let Some(secret) = &iam.hmac_secret {
        if secret.len() < MIN_HMAC_SECRET {
            let msg = format!("the HMAC secret must be at least {MIN_HMAC_SECRET} bytes, found {}", secret.len());
            return Err(match from_env {
                Some(_) => ConfigError::env("PACT_OIDC_HMAC_SECRET", msg),
                None => ConfigError::new(
                    config_file.as_ref().map_or("configuration".to_string(), |p| p.display().to_string()),
                    None,
                    "policy.iam.hmac_secret",
                    msg,
                ),
            });
        }
    }
    // Tokens are checked against both issuer and audience; one without the other is a
    // half-configured verifier.
    let file_label = config_file.as_ref().map_or("configuration".to_string(), |p| p.display().to_string());
    match (&iam.oidc_issuer, &iam.oidc_audience) {
        (Some(_), None) => {
            return Err(ConfigError::new(
                &file_label,
                None,
                "policy.iam.oidc_audience",
                "not set, but oidc_issuer is: set both in [policy.iam] or PACT_OIDC_AUDIENCE",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                &file_label,
                None,
                "policy.iam.oidc_issuer",
                "not set, but oidc_audience is: set both in [policy.iam] or PACT_OIDC_ISSUER",
            ));
        }
        _ => {}
    }

    cfg.cores = match flags.cores {
        Some(0) => return Err(ConfigError::flag("--cores", "expected a positive integer, found 0")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };

    // The node id, and where it came from (for messages).
    let env_node_id = match env("PACT_JOURNAL_NODE_ID") {
        Some(v) => Some(positive(&v).ok_or_else(|| {
            ConfigError::env("PACT_JOURNAL_NODE_ID", format!("expected a positive integer, found {v:?}"))
        })?),
        None => None,
    };
    let known_ids: BTreeSet<u64> = cfg.peers.iter().chain(&cfg.members).map(|p| p.id).collect();
    let (node_id, node_id_from) = if let Some(n) = flags.node_id {
        if n == 0 {
            return Err(ConfigError::flag("--node-id", "expected a positive integer, found 0"));
        }
        (n, "--node-id")
    } else if let Some(n) = env_node_id {
        (n, "PACT_JOURNAL_NODE_ID")
    } else if known_ids.len() == 1 {
        (*known_ids.iter().next().expect("one id"), "")
    } else if flags.dev && known_ids.is_empty() {
        (1, "")
    } else if flags.check && known_ids.len() > 1 {
        // The guide's journal.toml is the same file on every journal, with the id from the
        // environment: `--check` without an id validates it as each listed journal in turn.
        cfg.check_as_each = known_ids.iter().copied().collect();
        (*known_ids.iter().next().expect("several ids"), "")
    } else {
        let mut message = "node id not set: pass --node-id or set PACT_JOURNAL_NODE_ID".to_string();
        if known_ids.len() > 1 {
            message.push_str(&format!(" (the configuration lists {} nodes)", known_ids.len()));
        }
        return Err(ConfigError::new("configuration", None, "", message));
    };
    cfg.node_id = node_id;
    let id_error = |m: String| match node_id_from {
        "--node-id" => ConfigError::flag("--node-id", m),
        "PACT_JOURNAL_NODE_ID" => ConfigError::env("PACT_JOURNAL_NODE_ID", m),
        _ => ConfigError::new("configuration", None, "", m),
    };
    let ids = |v: &[Peer]| v.iter().map(|p| p.id.to_string()).collect::<Vec<_>>().join(", ");
    // A journal started with --learner joins an existing quorum that the lists describe; it
    // need not be in them.
    if !cfg.peers.is_empty() && !flags.learner && !cfg.peers.iter().any(|p| p.id == node_id) {
        return Err(id_error(format!("node id {node_id} is not in {peers_from} (ids {})", ids(&cfg.peers))));
    }
    let learner = flags.learner || cfg.learners.iter().any(|p| p.id == node_id);
    if !cfg.members.is_empty() && !learner && !cfg.members.iter().any(|p| p.id == node_id) {
        return Err(id_error(format!("node id {node_id} is not in journal.raft.members (ids {})", ids(&cfg.members))));
    }

    // Both lists describe the same nodes (client and Raft addresses): same ids in both.
    if !cfg.peers.is_empty() && !cfg.members.is_empty() {
        let (file, line) = members_at.clone().unwrap_or_default();
        let at_members = |m: String| ConfigError::new(file.clone(), line, "journal.raft.members", m);
        for p in &cfg.peers {
            if !cfg.members.iter().any(|m| m.id == p.id) {
                return Err(at_members(format!(
                    "node {} is in {peers_from} but missing from journal.raft.members",
                    p.id
                )));
            }
        }
        for m in &cfg.members {
            if !cfg.peers.iter().any(|p| p.id == m.id) {
                return Err(at_members(format!(
                    "node {} is in journal.raft.members but missing from {peers_from}",
                    m.id
                )));
            }
        }
    }

    if let Some(l) = cfg.learners.iter().find(|l| cfg.members.iter().any(|m| m.id == l.id)) {
        return Err(ConfigError::new(
            cfg.config_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            None,
            "journal.raft.learners",
            format!("node {} is listed both as a member (voter) and as a learner", l.id),
        ));
    }
    Ok(cfg)
}

/// Reads every table of journal.toml into `cfg`, rejecting unknown keys and wrong types, and
/// notes present-but-inactive keys in `cfg.not_yet_active`.
fn read_file(
    file: &TomlFile,
    cfg: &mut JournalConfig,
    members_at: &mut Option<(String, Option<usize>)>,
) -> Result<(), ConfigError> {
    let root = file.root();
    root.check_keys(&["journal", "policy", "telemetry"])?;
    let inactive = &mut cfg.not_yet_active;

    if let Some(j) = root.section("journal")? {
        j.check_keys(&["listen_addr", "data_dir", "raft", "streaming", "enrollment"])?;
        if let Some(a) = j.socket_addr("listen_addr")? {
            cfg.listen_addr = a;
        }
        if let Some(d) = non_empty(&j, "data_dir")? {
            cfg.data_dir = PathBuf::from(d);
        }

        if let Some(r) = j.section("raft")? {
            r.check_keys(&["members", "learners", "snapshot_interval", "election_tick", "heartbeat_tick"])?;
            if let Some(field) = r.get("learners") {
                for e in field.array()? {
                    let learner = parse_member(&e.string()?).map_err(|m| e.error(m))?;
                    if cfg.learners.iter().any(|m| m.id == learner.id) {
                        return Err(e.error(format!("node id {} appears more than once", learner.id)));
                    }
                    cfg.learners.push(learner);
                }
            }
            if let Some(field) = r.get("members") {
                *members_at = Some((file.path().to_string(), field.line()));
                if field.value().and_then(|v| v.as_array()).is_none() {
                    return Err(field.expected("an array of \"id:host:port\" strings"));
                }
                for e in field.array()? {
                    let member = parse_member(&e.string()?).map_err(|m| e.error(m))?;
                    if cfg.members.iter().any(|m| m.id == member.id) {
                        return Err(e.error(format!("node id {} appears more than once", member.id)));
                    }
                    cfg.members.push(member);
                }
                if cfg.members.is_empty() {
                    return Err(field.error("expected at least one member, found an empty array"));
                }
            }
            if let Some(n) = r.u64("snapshot_interval", 1..=u64::MAX)? {
                cfg.raft.snapshot_interval = n;
            }
            // Bounded so that a typo cannot stall elections for hours: 10 minutes at most.
            let election = r.get("election_tick").map(|f| f.usize(2..=MAX_TICKS)).transpose()?;
            let heartbeat = r.get("heartbeat_tick").map(|f| f.usize(1..=MAX_TICKS)).transpose()?;
            cfg.raft.election_tick = election.unwrap_or(Timing::DEFAULT.election_tick);
            cfg.raft.heartbeat_tick = heartbeat.unwrap_or(Timing::DEFAULT.heartbeat_tick);
            // A leader must heartbeat within every election timeout, or followers depose it.
            let (e, h) = (cfg.raft.election_tick, cfg.raft.heartbeat_tick);
            if e <= h {
                // Blame the key that was given; with both given, election_tick.
                let (key, msg) = if election.is_some() {
                    let default = if heartbeat.is_none() { ", the default" } else { "" };
                    (
                        "election_tick",
                        format!("must be greater than journal.raft.heartbeat_tick ({h}{default}), found {e}"),
                    )
                } else {
                    (
                        "heartbeat_tick",
                        format!("must be less than journal.raft.election_tick ({e}, the default), found {h}"),
                    )
                };
                return Err(r.require(key)?.error(msg));
            }
        }

        if let Some(s) = j.section("streaming")? {
            s.check_keys(&["max_concurrent_boot_streams", "subscriber_buffer"])?;
            if let Some(n) = s.u64("max_concurrent_boot_streams", 1..=u64::MAX)? {
                cfg.streaming.max_concurrent_boot_streams = n;
            }
            if let Some(n) = s.u64("subscriber_buffer", 1..=1_000_000)? {
                cfg.streaming.subscriber_buffer = n;
            }
        }

        if let Some(e) = j.section("enrollment")? {
            e.check_keys(&[
                "ca_cert",
                "ca_key",
                "cert_lifetime_seconds",
                "rate_limit_per_minute",
                "heartbeat_timeout_seconds",
            ])?;
            let en = &mut cfg.enrollment;
            en.ca_cert = non_empty(&e, "ca_cert")?.map(PathBuf::from);
            en.ca_key = non_empty(&e, "ca_key")?.map(PathBuf::from);
            // The CA needs both halves.
            let missing = match (&en.ca_cert, &en.ca_key) {
                (Some(_), None) => Some(("ca_key", "ca_cert")),
                (None, Some(_)) => Some(("ca_cert", "ca_key")),
                _ => None,
            };
            if let Some((absent, present)) = missing {
                let message = format!("missing, but {present} is set: the CA needs both");
                return Err(ConfigError::new(file.path(), e.line(), e.key_path(absent), message));
            }
            if let Some(n) = e.u64("cert_lifetime_seconds", 1..=u64::MAX)? {
                en.cert_lifetime_seconds = n;
            }
            if let Some(n) = e.u64("rate_limit_per_minute", 1..=u64::MAX)? {
                en.rate_limit_per_minute = n;
            }
            if let Some(n) = e.u64("heartbeat_timeout_seconds", 1..=u64::MAX)? {
                en.heartbeat_timeout_seconds = n;
            }
            // Nodes are not marked inactive after a silence yet: certificates simply expire.
            if e.contains("heartbeat_timeout_seconds") {
                inactive.push("journal.enrollment.heartbeat_timeout_seconds".to_string());
            }
        }
    }

    if let Some(p) = root.section("policy")? {
        p.check_keys(&["enabled", "iam", "engine", "federation"])?;
        if let Some(b) = p.bool("enabled")? {
            cfg.policy.enabled = b;
        }
        if let Some(iam) = p.section("iam")? {
            iam.check_keys(&["oidc_issuer", "oidc_audience", "jwks_url", "hmac_secret"])?;
            let c = &mut cfg.policy.iam;
            c.oidc_issuer = non_empty(&iam, "oidc_issuer")?;
            c.oidc_audience = non_empty(&iam, "oidc_audience")?;
            c.jwks_url = url(&iam, "jwks_url")?;
            c.hmac_secret = non_empty(&iam, "hmac_secret")?;
        }
        if let Some(e) = p.section("engine")? {
            e.check_keys(&["type", "opa_endpoint", "policy_dir"])?;
            let c = &mut cfg.policy.engine;
            c.engine_type = e.one_of("type", &["opa", "rego", "builtin"])?.map(|t| match t {
                "opa" => PolicyEngineType::Opa,
                "rego" => PolicyEngineType::Rego,
                _ => PolicyEngineType::Builtin,
            });
            c.opa_endpoint = url(&e, "opa_endpoint")?;
            c.policy_dir = non_empty(&e, "policy_dir")?.map(PathBuf::from);
        }
        if let Some(f) = p.section("federation")? {
            f.check_keys(&["sovra_endpoint", "sync_interval_seconds"])?;
            let c = &mut cfg.policy.federation;
            c.sovra_endpoint = url(&f, "sovra_endpoint")?;
            if let Some(n) = f.u64("sync_interval_seconds", 1..=u64::MAX)? {
                c.sync_interval_seconds = n;
            }
            if !f.is_empty() {
                inactive.push("policy.federation.*".to_string());
            }
        }
    }

    if let Some(t) = root.section("telemetry")? {
        t.check_keys(&[
            "log_level",
            "log_format",
            "prometheus_enabled",
            "prometheus_listen",
            "loki_enabled",
            "loki_endpoint",
        ])?;
        let c = &mut cfg.telemetry;
        if let Some(l) = t.one_of("log_level", &LogLevel::NAMES)? {
            c.log_level = LogLevel::from_name(l);
        }
        if let Some(f) = t.one_of("log_format", &["text", "json"])? {
            c.log_format = if f == "json" { LogFormat::Json } else { LogFormat::Text };
        }
        if let Some(b) = t.bool("prometheus_enabled")? {
            c.prometheus_enabled = b;
        }
        if let Some(a) = t.socket_addr("prometheus_listen")? {
            c.prometheus_listen = a;
        }
        if let Some(b) = t.bool("loki_enabled")? {
            c.loki_enabled = b;
        }
        c.loki_endpoint = url(&t, "loki_endpoint")?;
        if c.loki_enabled || c.loki_endpoint.is_some() {
            inactive.push("telemetry.loki_enabled/loki_endpoint".to_string());
        }
    }
    Ok(())
}

/// A string that must not be empty.
fn non_empty(s: &Section<'_>, key: &str) -> Result<Option<String>, ConfigError> {
    match s.get(key) {
        None => Ok(None),
        Some(f) => {
            let v = f.string()?;
            if v.trim().is_empty() {
                return Err(f.expected("a non-empty string"));
            }
            Ok(Some(v))
        }
    }
}

/// An http(s) URL (checked only for its scheme and a host part).
fn url(s: &Section<'_>, key: &str) -> Result<Option<String>, ConfigError> {
    match s.get(key) {
        None => Ok(None),
        Some(f) => {
            let v = f.string()?;
            let rest = v.strip_prefix("https://").or_else(|| v.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return Err(f.expected("an http:// or https:// URL"));
            }
            Ok(Some(v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// /etc/pact/journal.toml exactly as the deployment guide writes it (3-node quorum).
    const GUIDE_JOURNAL_TOML: &str =
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../images/examples/journal.toml"));

    /// A temporary file that is removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!("pact-journal-cfg-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    }

    fn no_default() -> &'static Path {
        Path::new("/nonexistent/pact/journal.toml")
    }

    fn load_text(text: &str, flags: Flags, env: &[(&str, &str)]) -> Result<JournalConfig, ConfigError> {
        let f = TempFile::new(&format!("{:x}.toml", text.len() ^ (env.len() << 20)), text);
        let flags = Flags { config: Some(f.0.clone()), ..flags };
        load_with_default(&flags, &env_of(env), no_default())
    }

    fn args(list: &[&str]) -> Result<Invocation, String> {
        parse_args(list.iter().map(OsString::from))
    }

    #[test]
    fn deployment_guide_file_parses() {
        let cfg = load_text(GUIDE_JOURNAL_TOML, Flags::default(), &[("PACT_JOURNAL_NODE_ID", "2")]).unwrap();
        assert_eq!(cfg.node_id, 2);
        assert_eq!(cfg.listen_addr, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/pact/journal"));
        assert_eq!(cfg.members.len(), 3);
        assert_eq!(cfg.members[2], Peer { id: 3, host: "journal-3.mgmt".into(), port: 9444 });
        assert_eq!(cfg.members[0].to_string(), "1=journal-1.mgmt:9444");
        assert!(cfg.peers.is_empty());
        assert_eq!(cfg.raft.snapshot_interval, 10_000);
        assert_eq!(cfg.streaming.max_concurrent_boot_streams, 15_000);
        assert!(cfg.policy.enabled);
        assert_eq!(cfg.policy.iam.oidc_issuer.as_deref(), Some("https://auth.example.org/realms/hpc"));
        assert_eq!(cfg.policy.iam.oidc_audience.as_deref(), Some("pact"));
        assert_eq!(cfg.policy.engine.engine_type, Some(PolicyEngineType::Opa));
        assert_eq!(cfg.policy.engine.opa_endpoint.as_deref(), Some("http://localhost:8181/v1/data/pact"));
        assert_eq!(cfg.policy.engine.policy_dir, None);
        assert_eq!(cfg.telemetry.log_level, LogLevel::Info);
        assert_eq!(cfg.telemetry.log_format, LogFormat::Json);
        assert_eq!(cfg.metrics_listen, Some("0.0.0.0:9091".parse().unwrap()));
        assert!(cfg.telemetry.loki_enabled);
        assert_eq!(cfg.not_yet_active, vec!["telemetry.loki_enabled/loki_endpoint"]);
    }

    #[test]
    fn policy_engine_keys() {
        let text = "[policy]\nenabled = true\n[policy.engine]\ntype = \"rego\"\npolicy_dir = \"/srv/policies\"\n";
        let cfg = load_text(text, Flags { dev: true, ..Flags::default() }, &[]).unwrap();
        assert!(cfg.policy.enabled);
        assert_eq!(cfg.policy.engine.engine_type, Some(PolicyEngineType::Rego));
        assert_eq!(cfg.policy.engine.policy_dir, Some(PathBuf::from("/srv/policies")));
        assert!(cfg.not_yet_active.is_empty(), "{:?}", cfg.not_yet_active);
        let cfg = load_text(text, Flags { dev: true, ..Flags::default() }, &[("PACT_POLICY_DIR", "/env/p")]).unwrap();
        assert_eq!(cfg.policy.engine.policy_dir, Some(PathBuf::from("/env/p")));
        let e = load_text("[policy.engine]\npolicy_dirs = \"/x\"\n", Flags { dev: true, ..Flags::default() }, &[])
            .unwrap_err();
        assert!(e.message.contains("policy_dir"), "{e}");
    }

    #[test]
    fn guide_env_file_with_guide_toml() {
        // journal-2's /etc/pact/journal.env from the guide, with the guide's journal.toml.
        let env = [
            ("PACT_JOURNAL_NODE_ID", "2"),
            ("PACT_JOURNAL_LISTEN", "0.0.0.0:9443"),
            ("PACT_JOURNAL_DATA_DIR", "/var/lib/pact/journal"),
            ("PACT_JOURNAL_PEERS", "1=journal-1:9443,2=journal-2:9443,3=journal-3:9443"),
        ];
        let cfg = load_text(GUIDE_JOURNAL_TOML, Flags::default(), &env).unwrap();
        assert_eq!(cfg.peers.len(), 3);
        assert_eq!(cfg.peers[1].to_string(), "2=journal-2:9443");
        assert!(cfg.not_yet_active.iter().all(|n| !n.contains("PEERS") && !n.contains("members")));
    }

    #[test]
    fn node_id_required_with_several_members() {
        let e = load_text(GUIDE_JOURNAL_TOML, Flags::default(), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: node id not set: pass --node-id or set PACT_JOURNAL_NODE_ID (the configuration lists 3 nodes)"
        );
        // Not in the members.
        let flags = Flags { node_id: Some(4), ..Flags::default() };
        let e = load_text(GUIDE_JOURNAL_TOML, flags, &[]).unwrap_err();
        assert_eq!(e.to_string(), "flag --node-id: node id 4 is not in journal.raft.members (ids 1, 2, 3)");
    }

    #[test]
    fn node_id_from_the_only_member_or_dev() {
        let cfg = load_text("[journal.raft]\nmembers = [\"7:localhost:9444\"]\n", Flags::default(), &[]).unwrap();
        assert_eq!(cfg.node_id, 7);
        assert!(cfg.not_yet_active.is_empty());
        let cfg = load_with_default(&Flags { dev: true, ..Flags::default() }, &env_of(&[]), no_default()).unwrap();
        assert_eq!(cfg.node_id, 1);
        assert!(cfg.dev);
        let e = load_with_default(&Flags::default(), &env_of(&[]), no_default()).unwrap_err();
        assert!(e.message.starts_with("node id not set"), "{e}");
    }

    #[test]
    fn unknown_key_with_suggestion() {
        let text = "[journal]\nlisten_adr = \"0.0.0.0:9443\"\n";
        let e = load_text(text, Flags { dev: true, ..Flags::default() }, &[]).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key, "journal.listen_adr");
        assert!(
            e.to_string().ends_with(":2: unknown key `journal.listen_adr` (did you mean `journal.listen_addr`?)"),
            "{e}"
        );
        let e =
            load_text("[telemetry]\nlog_levl = \"info\"\n", Flags { dev: true, ..Flags::default() }, &[]).unwrap_err();
        assert!(e.message.contains("did you mean `telemetry.log_level`?"), "{e}");
        let e = load_text("[jornal]\n", Flags { dev: true, ..Flags::default() }, &[]).unwrap_err();
        assert_eq!(e.message, "unknown key `jornal` (did you mean `journal`?)");
    }

    #[test]
    fn wrong_types_name_file_line_key() {
        let dev = Flags { dev: true, ..Flags::default() };
        let text = "[journal]\ndata_dir = \"/d\"\n\n[journal.raft]\nsnapshot_interval = \"ten\"\n";
        let e = load_text(text, dev.clone(), &[]).unwrap_err();
        let path = e.file.clone();
        assert_eq!(
            e.to_string(),
            format!(
                "{path}:5: key `journal.raft.snapshot_interval`: expected a positive integer, found a string \"ten\""
            )
        );
        let e = load_text("[journal.raft]\nsnapshot_interval = 0\n", dev.clone(), &[]).unwrap_err();
        assert_eq!(e.message, "expected a positive integer, found an integer 0");
        let e = load_text("[policy]\nenabled = \"yes\"\n", dev.clone(), &[]).unwrap_err();
        assert_eq!(e.message, "expected a boolean (true or false), found a string \"yes\"");
        let e = load_text("[journal]\nlisten_addr = \"nowhere\"\n", dev.clone(), &[]).unwrap_err();
        assert_eq!(e.key, "journal.listen_addr");
        let e = load_text("[telemetry]\nlog_level = \"verbose\"\n", dev.clone(), &[]).unwrap_err();
        assert!(e.message.starts_with("expected one of \"trace\", \"debug\", \"info\", \"warn\", \"error\""), "{e}");
        let e = load_text("[policy.engine]\ntype = \"opaa\"\n", dev.clone(), &[]).unwrap_err();
        assert!(e.message.ends_with("(did you mean \"opa\"?)"), "{e}");
        let e = load_text("[journal.raft]\nmembers = [\"1:a:9444\", \"x\"]\n", dev.clone(), &[]).unwrap_err();
        assert_eq!(e.key, "journal.raft.members[1]");
        assert!(e.message.contains("id:host:port"), "{e}");
        let e = load_text("[journal.raft]\nmembers = [\"1:a:9444\", \"1:b:9444\"]\n", dev.clone(), &[]).unwrap_err();
        assert_eq!(e.message, "node id 1 appears more than once");
        let e = load_text("[journal.raft]\nmembers = \"1:a:9444\"\n", dev.clone(), &[]).unwrap_err();
        assert!(e.message.starts_with("expected an array of \"id:host:port\" strings"), "{e}");
        let e = load_text("[journal.raft]\nelection_tick = 2\nheartbeat_tick = 3\n", dev.clone(), &[]).unwrap_err();
        assert_eq!(e.key, "journal.raft.election_tick");
        assert_eq!(e.message, "must be greater than journal.raft.heartbeat_tick (3), found 2");
        // One key alone is checked against the other's default (10 ticks, 50 ticks).
        let e = load_text("[journal.raft]\nelection_tick = 8\n", dev.clone(), &[]).unwrap_err();
        assert_eq!(e.message, "must be greater than journal.raft.heartbeat_tick (10, the default), found 8");
        let e = load_text("[journal.raft]\nheartbeat_tick = 50\n", dev.clone(), &[]).unwrap_err();
        assert_eq!(e.key, "journal.raft.heartbeat_tick");
        assert_eq!(e.message, "must be less than journal.raft.election_tick (50, the default), found 50");
        let e = load_text("[journal.raft]\nelection_tick = 60001\n", dev.clone(), &[]).unwrap_err();
        assert_eq!(e.key, "journal.raft.election_tick");
        let cfg = load_text("[journal.raft]\nheartbeat_tick = 20\n", dev.clone(), &[]).unwrap();
        assert_eq!((cfg.raft.election_tick, cfg.raft.heartbeat_tick), (50, 20));
        let e = load_text("[telemetry]\nloki_endpoint = \"loki:3100\"\n", dev.clone(), &[]).unwrap_err();
        assert!(e.message.starts_with("expected an http:// or https:// URL"), "{e}");
        let e = load_text("[journal.enrollment]\nca_cert = \"/c\"\n", dev.clone(), &[]).unwrap_err();
        assert_eq!(e.key, "journal.enrollment.ca_key");
        let e = load_text("[journal]\ndata_dir = \"\"\n", dev.clone(), &[]).unwrap_err();
        assert!(e.message.starts_with("expected a non-empty string"), "{e}");
        let e = load_text("[journal\n", dev, &[]).unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.starts_with("invalid TOML"), "{e}");
    }

    #[test]
    fn all_sections_read() {
        let text = r#"
[journal.raft]
election_tick = 10
heartbeat_tick = 2
[journal.enrollment]
ca_cert = "/etc/pact/ca/ca.crt"
ca_key = "/etc/pact/ca/ca.key"
cert_lifetime_seconds = 3600
rate_limit_per_minute = 5
heartbeat_timeout_seconds = 60
[policy.iam]
oidc_issuer = "pact-dev"
oidc_audience = "pact"
hmac_secret = "s3cret-s3cret-s3cret-s3cret-s3cret"
jwks_url = "https://idp/certs"
[policy.federation]
sovra_endpoint = "https://sovra.mgmt:8443"
sync_interval_seconds = 60
[telemetry]
prometheus_enabled = false
"#;
        let cfg = load_text(text, Flags { dev: true, ..Flags::default() }, &[]).unwrap();
        assert_eq!(cfg.raft.election_tick, 10);
        assert_eq!(cfg.raft.heartbeat_tick, 2);
        assert_eq!(cfg.enrollment.ca_key, Some(PathBuf::from("/etc/pact/ca/ca.key")));
        assert_eq!(cfg.enrollment.cert_lifetime_seconds, 3600);
        assert_eq!(cfg.enrollment.rate_limit_per_minute, 5);
        assert_eq!(cfg.enrollment.heartbeat_timeout_seconds, 60);
        assert_eq!(cfg.policy.iam.hmac_secret.as_deref(), Some("s3cret-s3cret-s3cret-s3cret-s3cret"));
        assert!(!format!("{:?}", cfg.policy.iam).contains("s3cret"));
        assert_eq!(cfg.policy.federation.sync_interval_seconds, 60);
        assert_eq!(cfg.metrics_listen, None);
        assert_eq!(cfg.not_yet_active, vec!["journal.enrollment.heartbeat_timeout_seconds", "policy.federation.*"]);
        // Metrics off in the file, but asked for explicitly.
        let flags = Flags { dev: true, metrics_listen: Some("127.0.0.1:9999".into()), ..Flags::default() };
        let cfg = load_text(text, flags, &[]).unwrap();
        assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9999".parse().unwrap()));
    }

    #[test]
    fn unreadable_path() {
        let flags = Flags { config: Some(PathBuf::from("/nonexistent/dir/journal.toml")), ..Flags::default() };
        let e = load_with_default(&flags, &env_of(&[]), no_default()).unwrap_err();
        assert_eq!(e.file, "/nonexistent/dir/journal.toml");
        assert!(e.to_string().starts_with("/nonexistent/dir/journal.toml: cannot read config file: "), "{e}");
        // Same through the environment variable.
        let e = load_with_default(
            &Flags::default(),
            &env_of(&[("PACT_JOURNAL_CONFIG", "/nonexistent/x.toml")]),
            no_default(),
        )
        .unwrap_err();
        assert_eq!(e.file, "/nonexistent/x.toml");
    }

    #[test]
    fn which_file_is_read() {
        let default = TempFile::new("default.toml", "[journal]\ndata_dir = \"/from-default\"\n");
        let other = TempFile::new("other.toml", "[journal]\ndata_dir = \"/from-env\"\n");
        let one = [("PACT_JOURNAL_NODE_ID", "1")];
        // The default file, when it exists.
        let cfg = load_with_default(&Flags::default(), &env_of(&one), &default.0).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/from-default"));
        assert_eq!(cfg.config_file.as_deref(), Some(default.0.as_path()));
        // Not with --dev.
        let cfg = load_with_default(&Flags { dev: true, ..Flags::default() }, &env_of(&[]), &default.0).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from(DEV_DATA_DIR));
        assert_eq!(cfg.config_file, None);
        // PACT_JOURNAL_CONFIG over the default, even with --dev.
        let env = env_of(&[("PACT_JOURNAL_CONFIG", other.0.to_str().unwrap())]);
        let cfg = load_with_default(&Flags { dev: true, ..Flags::default() }, &env, &default.0).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/from-env"));
        // --config over PACT_JOURNAL_CONFIG.
        let flags = Flags { config: Some(default.0.clone()), dev: true, ..Flags::default() };
        let cfg = load_with_default(&flags, &env, &default.0).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/from-default"));
    }

    #[test]
    fn precedence_flag_env_file_default() {
        let text = r#"
[journal]
listen_addr = "10.0.0.1:1001"
data_dir = "/file"
[journal.raft]
members = ["1:a:9444"]
[policy.iam]
oidc_issuer = "file-issuer"
oidc_audience = "file-aud"
hmac_secret = "file-secret-file-secret-file-secret-0"
[telemetry]
prometheus_listen = "10.0.0.1:2001"
"#;
        // File over defaults.
        let cfg = load_text(text, Flags::default(), &[]).unwrap();
        assert_eq!(cfg.listen_addr, "10.0.0.1:1001".parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from("/file"));
        assert_eq!(cfg.metrics_listen, Some("10.0.0.1:2001".parse().unwrap()));
        assert_eq!(cfg.node_id, 1);
        assert_eq!(cfg.policy.iam.hmac_secret.as_deref(), Some("file-secret-file-secret-file-secret-0"));

        // Environment over the file.
        let env = [
            ("PACT_JOURNAL_LISTEN", "10.0.0.2:1002"),
            ("PACT_JOURNAL_DATA_DIR", "/env"),
            ("PACT_JOURNAL_METRICS_LISTEN", "10.0.0.2:2002"),
            ("PACT_JOURNAL_NODE_ID", "1"),
            ("PACT_JOURNAL_PEERS", "1=env-host:9443"),
            ("PACT_OIDC_ISSUER", "env-issuer"),
            ("PACT_OIDC_AUDIENCE", "env-aud"),
            ("PACT_OIDC_HMAC_SECRET", "env-secret-env-secret-env-secret-0"),
        ];
        let cfg = load_text(text, Flags::default(), &env).unwrap();
        assert_eq!(cfg.listen_addr, "10.0.0.2:1002".parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from("/env"));
        assert_eq!(cfg.metrics_listen, Some("10.0.0.2:2002".parse().unwrap()));
        assert_eq!(cfg.peers[0].host, "env-host");
        assert_eq!(cfg.policy.iam.oidc_issuer.as_deref(), Some("env-issuer"));
        assert_eq!(cfg.policy.iam.oidc_audience.as_deref(), Some("env-aud"));
        assert_eq!(cfg.policy.iam.hmac_secret.as_deref(), Some("env-secret-env-secret-env-secret-0"));

        // Flags over the environment.
        let flags = Flags {
            listen: Some("10.0.0.3:1003".into()),
            data_dir: Some(PathBuf::from("/flag")),
            metrics_listen: Some("10.0.0.3:2003".into()),
            node_id: Some(1),
            peers: Some("1=flag-host:9443".into()),
            cores: Some(3),
            bootstrap: true,
            ..Flags::default()
        };
        let cfg = load_text(text, flags, &env).unwrap();
        assert_eq!(cfg.listen_addr, "10.0.0.3:1003".parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from("/flag"));
        assert_eq!(cfg.metrics_listen, Some("10.0.0.3:2003".parse().unwrap()));
        assert_eq!(cfg.peers[0].host, "flag-host");
        assert_eq!(cfg.cores, 3);
        assert!(cfg.bootstrap);

        // Defaults when nothing is given: production ones, and loopback/local ones with --dev.
        let env = env_of(&[("PACT_JOURNAL_NODE_ID", "1")]);
        let cfg = load_with_default(&Flags::default(), &env, no_default()).unwrap();
        assert_eq!(cfg.listen_addr, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(cfg.metrics_listen, Some(DEFAULT_METRICS_LISTEN.parse().unwrap()));
        let cfg = load_with_default(&Flags { dev: true, ..Flags::default() }, &env_of(&[]), no_default()).unwrap();
        assert_eq!(cfg.listen_addr, DEV_LISTEN.parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from(DEV_DATA_DIR));
        assert_eq!(cfg.metrics_listen, Some(DEV_METRICS_LISTEN.parse().unwrap()));
        assert_eq!(cfg.raft.snapshot_interval, DEFAULT_SNAPSHOT_INTERVAL);
        assert_eq!(cfg.telemetry.log_format, LogFormat::Text);
        assert!(!cfg.policy.enabled);
        assert!(cfg.cores >= 1);
        assert_eq!(cfg.policy.iam.oidc_issuer, None);
        // Empty variables count as unset.
        let cfg = load_with_default(
            &Flags { dev: true, ..Flags::default() },
            &env_of(&[("PACT_JOURNAL_LISTEN", "")]),
            no_default(),
        )
        .unwrap();
        assert_eq!(cfg.listen_addr, DEV_LISTEN.parse().unwrap());
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let dev = Flags { dev: true, ..Flags::default() };
        let load_env = |pairs: &[(&str, &str)]| load_with_default(&dev, &env_of(pairs), no_default());
        let e = load_env(&[("PACT_JOURNAL_PEERS", "1=a:9443,x")]).unwrap_err();
        assert_eq!(e.key, "PACT_JOURNAL_PEERS");
        assert_eq!(
            e.to_string(),
            "environment variable PACT_JOURNAL_PEERS: expected entries like 1=host:9443, found \"x\""
        );
        let e = load_env(&[("PACT_JOURNAL_PEERS", "1=a:9443,1=b:9443")]).unwrap_err();
        assert_eq!(e.to_string(), "environment variable PACT_JOURNAL_PEERS: node id 1 appears more than once");
        let e = load_env(&[("PACT_OIDC_HMAC_SECRET", "short")]).unwrap_err();
        assert_eq!(e.key, "PACT_OIDC_HMAC_SECRET");
        assert!(e.to_string().contains("at least 32 bytes"), "{e}");
        for bad in ["0=a:9443", "1=a", "1=a:0", "1=a:99999", "1=:9443", "1=::1:9443", "a=b:1", ","] {
            let e = load_env(&[("PACT_JOURNAL_PEERS", bad)]).unwrap_err();
            assert_eq!(e.key, "PACT_JOURNAL_PEERS", "{bad}");
        }
        // Node id 1 (the --dev default) is not among the peers.
        let e = load_env(&[("PACT_JOURNAL_PEERS", "2=a:9443,3=b:9443")]).unwrap_err();
        assert!(e.message.starts_with("node id not set"), "{e}");
        let e = load_env(&[("PACT_JOURNAL_PEERS", "2=a:9443,3=b:9443"), ("PACT_JOURNAL_NODE_ID", "1")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable PACT_JOURNAL_NODE_ID: node id 1 is not in PACT_JOURNAL_PEERS (ids 2, 3)"
        );
        let e = load_env(&[("PACT_JOURNAL_NODE_ID", "one")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable PACT_JOURNAL_NODE_ID: expected a positive integer, found \"one\""
        );
        let e = load_env(&[("PACT_JOURNAL_LISTEN", "9443")]).unwrap_err();
        assert_eq!(e.key, "PACT_JOURNAL_LISTEN");
        let e = load_env(&[("PACT_JOURNAL_METRICS_LISTEN", "x:y")]).unwrap_err();
        assert_eq!(e.key, "PACT_JOURNAL_METRICS_LISTEN");
        let e = load_env(&[("PACT_OIDC_ISSUER", "x")]).unwrap_err();
        assert_eq!(e.key, "policy.iam.oidc_audience");
        // IPv6 peers in brackets are fine.
        let cfg = load_env(&[("PACT_JOURNAL_PEERS", " 1=[::1]:9443 , ")]).unwrap();
        assert_eq!(cfg.peers[0].to_string(), "1=[::1]:9443");
        let e = load_with_default(&Flags { listen: Some("x".into()), ..dev.clone() }, &env_of(&[]), no_default())
            .unwrap_err();
        assert_eq!(e.to_string(), "flag --listen: expected a socket address like \"0.0.0.0:9443\", found \"x\"");
    }

    #[test]
    fn peers_and_members_must_agree() {
        let text = "[journal.raft]\nmembers = [\"1:a:9444\", \"2:b:9444\"]\n";
        let env = [("PACT_JOURNAL_NODE_ID", "1"), ("PACT_JOURNAL_PEERS", "1=a:9443,2=b:9443,3=c:9443")];
        let e = load_text(text, Flags::default(), &env).unwrap_err();
        assert_eq!(e.key, "journal.raft.members");
        assert_eq!(e.line, Some(2));
        assert!(e.message.ends_with("node 3 is in PACT_JOURNAL_PEERS but missing from journal.raft.members"), "{e}");
        let flags = Flags { peers: Some("1=a:9443".into()), ..Flags::default() };
        let e = load_text(text, flags, &env).unwrap_err();
        assert!(e.message.ends_with("node 2 is in journal.raft.members but missing from --peers"), "{e}");
        let env = [("PACT_JOURNAL_NODE_ID", "2"), ("PACT_JOURNAL_PEERS", "2=b:9443,1=a:9443")];
        let cfg = load_text(text, Flags::default(), &env).unwrap();
        assert_eq!(cfg.node_id, 2);
    }

    #[test]
    fn parse_args_flags() {
        assert_eq!(args(&[]).unwrap(), Invocation::Run(Box::default()));
        assert_eq!(args(&["--dev", "-h"]).unwrap(), Invocation::Help);
        assert_eq!(args(&["--help"]).unwrap(), Invocation::Help);
        assert_eq!(args(&["-V"]).unwrap(), Invocation::Version);
        assert_eq!(args(&["--version"]).unwrap(), Invocation::Version);
        let got = args(&[
            "--config",
            "/c.toml",
            "--data-dir=/d",
            "--listen",
            "127.0.0.1:1",
            "--node-id",
            "3",
            "--peers",
            "3=h:1",
            "--metrics-listen",
            "127.0.0.1:2",
            "--cores",
            "2",
            "--bootstrap",
            "--dev",
            "--check",
        ])
        .unwrap();
        assert_eq!(
            got,
            Invocation::Run(Box::new(Flags {
                config: Some("/c.toml".into()),
                data_dir: Some("/d".into()),
                listen: Some("127.0.0.1:1".into()),
                node_id: Some(3),
                peers: Some("3=h:1".into()),
                metrics_listen: Some("127.0.0.1:2".into()),
                raft_listen: None,
                mint_token: None,
                cores: Some(2),
                bootstrap: true,
                learner: false,
                dev: true,
                check: true,
            }))
        );
    }

    #[test]
    fn parse_args_errors_name_the_flag() {
        assert_eq!(args(&["--node-id", "abc"]).unwrap_err(), "--node-id: expected a positive integer, found \"abc\"");
        assert_eq!(args(&["--node-id", "0"]).unwrap_err(), "--node-id: expected a positive integer, found \"0\"");
        assert_eq!(args(&["--cores", "-1"]).unwrap_err(), "--cores: expected a positive integer, found \"-1\"");
        assert_eq!(args(&["--config"]).unwrap_err(), "--config: needs a value");
        assert_eq!(args(&["--bootstrap=yes"]).unwrap_err(), "--bootstrap: takes no value");
        assert_eq!(args(&["--listn", "x"]).unwrap_err(), "unknown flag --listn (did you mean --listen?); see --help");
        assert_eq!(args(&["-x"]).unwrap_err(), "unknown flag -x; see --help");
        assert!(args(&["serve"]).unwrap_err().starts_with("unexpected argument \"serve\""));
        assert_eq!(args(&["--listen", "a", "--listen", "b"]).unwrap_err(), "--listen: given more than once");
        assert!(USAGE.contains("--metrics-listen ADDR"));
    }

    #[test]
    fn member_and_peer_parsing() {
        assert_eq!(
            parse_member("1:journal-1.mgmt:9444").unwrap(),
            Peer { id: 1, host: "journal-1.mgmt".into(), port: 9444 }
        );
        assert_eq!(parse_member("2:[fe80::1]:9444").unwrap().host, "[fe80::1]");
        assert!(parse_member("1=journal-1:9444").is_err());
        assert!(parse_member("1:journal-1").is_err());
        assert_eq!(parse_peers("1=a:1,2=b:2").unwrap().len(), 2);
        assert!(parse_peers("").is_err());
    }
}
