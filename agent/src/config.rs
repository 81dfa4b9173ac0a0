//! `/etc/pact/agent.toml`, `/etc/pact/agent.env`, the environment, the kernel command line and
//! flags, resolved into one `AgentConfig`. Precedence: flag > environment (the process's, then
//! agent.env's) > kernel command line > file > default.
//!
//! Every section and key of the deployment guide's agent.toml is read and checked (unknown
//! keys are refused with a suggestion, wrong types name the file, line and key). Keys whose
//! feature arrives with a later issue (observers, exec's whitelist, JWKS, commit windows,
//! identity providers) are parsed and validated now and listed by `not_yet_active`, so an admin
//! sees that they are configured but not yet in effect instead of wondering.

use pact_proto::tomlcfg::{ConfigError, Section, TomlFile};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/pact/agent.toml";
pub const DEFAULT_ENV_FILE: &str = "/etc/pact/agent.env";
pub const DEFAULT_CA: &str = "/etc/pact/ca.crt";
/// Until enrollment (the security-plane issue) gives agents certificates, an agent presents a
/// bearer token to the journal, read from here (or `PACT_AGENT_TOKEN`).
pub const DEFAULT_TOKEN_PATH: &str = "/etc/pact/agent.token";
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/pact/cache";
pub const DEFAULT_RUN_DIR: &str = "/run/pact";
/// Shortest `[agent.shell.auth] hmac_secret` accepted (as the journal's).
pub const MIN_HMAC_SECRET: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnforcementMode {
    Observe,
    Enforce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Pact,
    Systemd,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JournalSection {
    pub endpoints: Vec<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: PathBuf,
    pub token_path: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ShellAuth {
    pub issuer: String,
    pub audience: String,
    pub jwks_url: Option<String>,
    pub hmac_secret: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// Where the file came from (None: defaults only).
    pub source: Option<String>,
    pub node_id: String,
    /// Which source gave the node id ("flag", "PACT_AGENT_NODE_ID", "kernel command line", ...).
    pub node_id_from: &'static str,
    /// What the node believes; the journal's assignment wins.
    pub vcluster: String,
    pub enforcement_mode: EnforcementMode,
    pub backend: Backend,
    pub journal: JournalSection,
    pub ebpf_enabled: bool,
    pub inotify_enabled: bool,
    pub netlink_enabled: bool,
    pub shell_enabled: bool,
    pub shell_listen: SocketAddr,
    pub whitelist_mode: String,
    pub shell_auth: Option<ShellAuth>,
    pub base_window_seconds: u32,
    pub drift_sensitivity: f64,
    pub emergency_window_seconds: u32,
    pub blacklist: Vec<String>,
    pub identity_provider: String,
    pub spire_socket: Option<PathBuf>,
    pub capability_manifest: PathBuf,
    /// Last verified boot config, for booting when no journal answers.
    pub cache_dir: PathBuf,
    /// `ready`, `logs/` and (unless `[agent.capability] manifest_path` says otherwise)
    /// `capability.json`: `/run/pact` on a node.
    pub run_dir: PathBuf,
    /// `[agent.supervisor] cgroup_root`: the cgroup2 (sub)tree the pact backend uses; None:
    /// the system's cgroup2 mount.
    pub cgroup_root: Option<PathBuf>,
    /// Configured keys whose feature is not active yet.
    pub not_yet_active: Vec<String>,
}

/// The guide's default blacklist (paths whose changes are never drift).
pub const DEFAULT_BLACKLIST: [&str; 8] =
    ["/tmp/**", "/var/log/**", "/proc/**", "/sys/**", "/dev/**", "/run/user/**", "/run/pact/**", "/run/lattice/**"];

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            source: None,
            node_id: String::new(),
            node_id_from: "",
            vcluster: String::new(),
            enforcement_mode: EnforcementMode::Observe,
            // The systemd variant of the release defaults to the systemd backend.
            backend: if cfg!(feature = "backend-systemd") { Backend::Systemd } else { Backend::Pact },
            journal: JournalSection {
                endpoints: Vec::new(),
                tls_cert: None,
                tls_key: None,
                tls_ca: PathBuf::from(DEFAULT_CA),
                token_path: PathBuf::from(DEFAULT_TOKEN_PATH),
            },
            ebpf_enabled: false,
            inotify_enabled: true,
            netlink_enabled: true,
            shell_enabled: true,
            shell_listen: SocketAddr::from(([0, 0, 0, 0], pact_proto::ports::AGENT_SHELL)),
            whitelist_mode: "strict".into(),
            shell_auth: None,
            base_window_seconds: 900,
            drift_sensitivity: 2.0,
            emergency_window_seconds: 14_400,
            blacklist: DEFAULT_BLACKLIST.iter().map(|s| s.to_string()).collect(),
            identity_provider: "ephemeral".into(),
            spire_socket: None,
            capability_manifest: PathBuf::from("/run/pact/capability.json"),
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            cgroup_root: None,
            not_yet_active: Vec::new(),
        }
    }
}

/// What the command line said (lexopt in main.rs).
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub node_id: Option<String>,
    pub vcluster: Option<String>,
}

/// Where outside values come from (the real process in main, fixed maps in tests).
pub struct Sources<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Contents of /proc/cmdline ("" when unreadable).
    pub cmdline: &'a str,
    pub hostname: &'a str,
    /// Contents of /etc/pact/agent.env, if present: (path label, text).
    pub env_file: Option<(String, String)>,
}

/// `KEY=VALUE` lines (`#` comments, optional quotes, optional `export `), as systemd's
/// EnvironmentFile reads them. Errors name the file and line.
pub fn parse_env_file(label: &str, text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("{label}:{}: expected KEY=VALUE, found {raw:?}", i + 1));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{label}:{}: {k:?} is not a variable name", i + 1));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The value of `key=` on a kernel command line (the last one wins, as for the kernel; quotes
/// and `--` handled by `early::cmdline_value`); a bare or empty `key` counts as absent.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    crate::early::cmdline_value(cmdline, key).filter(|v| !v.is_empty())
}

/// Resolves the configuration. `file` is the config file's text when one was found.
pub fn resolve(flags: &Flags, src: &Sources<'_>, file: Option<(&str, &str)>) -> Result<AgentConfig, ConfigError> {
    let env_pairs = match &src.env_file {
        Some((label, text)) => parse_env_file(label, text).map_err(|m| ConfigError::new(label, None, "", m))?,
        None => Vec::new(),
    };
    let env = |k: &str| -> Option<String> {
        (src.env)(k)
            .or_else(|| env_pairs.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone()))
            .filter(|v| !v.is_empty())
    };
    let mut cfg = AgentConfig::default();
    let mut file_node_id = None;
    let mut file_vcluster = None;
    if let Some((label, text)) = file {
        let f = TomlFile::parse(label, text)?;
        read_file(&f, &mut cfg, &mut file_node_id, &mut file_vcluster)?;
        cfg.source = Some(label.to_string());
    }

    // Node id: flag > PACT_AGENT_NODE_ID > pact.node_id= (pact.nodeid= as OpenCHAMI images
    // write it) > [agent] node_id > hostname.
    let (node, from) = if let Some(n) = flags.node_id.clone() {
        (n, "--node-id")
    } else if let Some(n) = env("PACT_AGENT_NODE_ID") {
        (n, "PACT_AGENT_NODE_ID")
    } else if let Some(n) =
        cmdline_value(src.cmdline, "pact.node_id").or_else(|| cmdline_value(src.cmdline, "pact.nodeid"))
    {
        (n, "kernel command line")
    } else if let Some(n) = file_node_id {
        (n, "[agent] node_id")
    } else {
        (src.hostname.to_string(), "hostname")
    };
    let bad_id = |id: &str| id.is_empty() || id.len() > 253 || id.chars().any(|c| c.is_control() || c.is_whitespace());
    if bad_id(&node) {
        return Err(ConfigError::new(
            "node id",
            None,
            "",
            format!("node id {node:?} (from {from}) is empty or not a valid id: set PACT_AGENT_NODE_ID, pact.node_id= on the kernel command line, or the hostname"),
        ));
    }
    cfg.node_id = node;
    cfg.node_id_from = from;
    cfg.vcluster = flags
        .vcluster
        .clone()
        .or_else(|| env("PACT_AGENT_VCLUSTER"))
        .or_else(|| cmdline_value(src.cmdline, "pact.vcluster"))
        .or(file_vcluster)
        .unwrap_or_default();
    if let Some(e) = env("PACT_AGENT_ENDPOINTS").or_else(|| cmdline_value(src.cmdline, "pact.journal")) {
        cfg.journal.endpoints = e.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    }
    if cfg.journal.endpoints.is_empty() {
        return Err(ConfigError::new(
            cfg.source.as_deref().unwrap_or("configuration"),
            None,
            "agent.journal.endpoints",
            "no journal endpoints: set [agent.journal] endpoints, PACT_AGENT_ENDPOINTS or pact.journal= on the kernel command line",
        ));
    }
    Ok(cfg)
}

fn non_empty(s: &Section<'_>, key: &str) -> Result<Option<String>, ConfigError> {
    match s.string(key)? {
        Some(v) if v.trim().is_empty() => {
            Err(s.get(key).map(|f| f.error("must not be empty")).unwrap_or_else(|| s.missing(key)))
        }
        other => Ok(other),
    }
}

fn read_file(
    f: &TomlFile,
    cfg: &mut AgentConfig,
    node_id: &mut Option<String>,
    vcluster: &mut Option<String>,
) -> Result<(), ConfigError> {
    let root = f.root();
    root.check_keys(&["agent", "telemetry"])?;
    let Some(a) = root.section("agent")? else {
        return Err(root.error("no [agent] section"));
    };
    a.check_keys(&[
        "node_id",
        "vcluster",
        "enforcement_mode",
        "cache_dir",
        "run_dir",
        "supervisor",
        "journal",
        "observer",
        "shell",
        "commit_window",
        "blacklist",
        "identity",
        "capability",
        "enrollment",
    ])?;
    *node_id = non_empty(&a, "node_id")?;
    *vcluster = non_empty(&a, "vcluster")?;
    if let Some(m) = a.one_of("enforcement_mode", &["observe", "enforce"])? {
        cfg.enforcement_mode = if m == "enforce" { EnforcementMode::Enforce } else { EnforcementMode::Observe };
    }
    if let Some(d) = non_empty(&a, "cache_dir")? {
        cfg.cache_dir = PathBuf::from(d);
    }
    if let Some(d) = non_empty(&a, "run_dir")? {
        cfg.run_dir = PathBuf::from(d);
        // `[agent.capability] manifest_path`, read below, still wins.
        cfg.capability_manifest = cfg.run_dir.join("capability.json");
    }
    if let Some(s) = a.section("supervisor")? {
        s.check_keys(&["backend", "cgroup_root"])?;
        cfg.cgroup_root = non_empty(&s, "cgroup_root")?.map(PathBuf::from);
        if let Some(b) = s.one_of("backend", &["pact", "systemd"])? {
            cfg.backend = if b == "systemd" { Backend::Systemd } else { Backend::Pact };
        }
    }
    if let Some(j) = a.section("journal")? {
        j.check_keys(&["endpoints", "tls_enabled", "tls_cert", "tls_key", "tls_ca", "token_path"])?;
        if let Some(e) = j.string_array("endpoints")? {
            if e.iter().any(|x| x.trim().is_empty()) {
                return Err(j
                    .get("endpoints")
                    .map(|f| f.error("an endpoint is empty"))
                    .unwrap_or_else(|| j.missing("endpoints")));
            }
            cfg.journal.endpoints = e;
        }
        if j.bool("tls_enabled")? == Some(false) {
            return Err(j
                .get("tls_enabled")
                .map(|f| f.error("pact's journal speaks TLS only; remove tls_enabled or set it to true"))
                .unwrap_or_else(|| j.missing("tls_enabled")));
        }
        cfg.journal.tls_cert = non_empty(&j, "tls_cert")?.map(PathBuf::from);
        cfg.journal.tls_key = non_empty(&j, "tls_key")?.map(PathBuf::from);
        if cfg.journal.tls_cert.is_some() != cfg.journal.tls_key.is_some() {
            return Err(j.error("tls_cert and tls_key go together: set both or neither"));
        }
        if let Some(c) = non_empty(&j, "tls_ca")? {
            cfg.journal.tls_ca = PathBuf::from(c);
        }
        if let Some(t) = non_empty(&j, "token_path")? {
            cfg.journal.token_path = PathBuf::from(t);
        }
    }
    if let Some(o) = a.section("observer")? {
        o.check_keys(&["ebpf_enabled", "inotify_enabled", "netlink_enabled"])?;
        cfg.ebpf_enabled = o.bool("ebpf_enabled")?.unwrap_or(cfg.ebpf_enabled);
        cfg.inotify_enabled = o.bool("inotify_enabled")?.unwrap_or(cfg.inotify_enabled);
        cfg.netlink_enabled = o.bool("netlink_enabled")?.unwrap_or(cfg.netlink_enabled);
        cfg.not_yet_active.push("agent.observer.* (drift observers)".into());
    }
    if let Some(s) = a.section("shell")? {
        s.check_keys(&["enabled", "listen", "whitelist_mode", "auth"])?;
        cfg.shell_enabled = s.bool("enabled")?.unwrap_or(cfg.shell_enabled);
        if let Some(l) = s.socket_addr("listen")? {
            cfg.shell_listen = l;
        }
        if let Some(m) = s.one_of("whitelist_mode", &["strict", "learning", "bypass"])? {
            cfg.whitelist_mode = m.to_string();
        }
        if s.get("whitelist_mode").is_some() {
            cfg.not_yet_active.push("agent.shell.whitelist_mode (exec arrives with the exec/shell issue)".into());
        }
        if let Some(au) = s.section("auth")? {
            au.check_keys(&["issuer", "audience", "jwks_url", "hmac_secret"])?;
            let issuer = non_empty(&au, "issuer")?.ok_or_else(|| au.missing("issuer"))?;
            let audience = non_empty(&au, "audience")?.ok_or_else(|| au.missing("audience"))?;
            let hmac_secret = non_empty(&au, "hmac_secret")?;
            if let Some(h) = &hmac_secret {
                if h.len() < MIN_HMAC_SECRET {
                    let msg = format!("the HMAC secret must be at least {MIN_HMAC_SECRET} bytes, found {}", h.len());
                    return Err(au
                        .get("hmac_secret")
                        .map(|f| f.error(msg))
                        .unwrap_or_else(|| au.missing("hmac_secret")));
                }
            }
            let jwks_url = non_empty(&au, "jwks_url")?;
            if let Some(u) = &jwks_url {
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    return Err(au
                        .get("jwks_url")
                        .map(|f| f.error("expected an http(s) URL"))
                        .unwrap_or_else(|| au.missing("jwks_url")));
                }
            }
            cfg.shell_auth = Some(ShellAuth { issuer, audience, jwks_url, hmac_secret });
        }
    }
    if let Some(c) = a.section("commit_window")? {
        c.check_keys(&["base_window_seconds", "drift_sensitivity", "emergency_window_seconds"])?;
        cfg.base_window_seconds = c.u32("base_window_seconds", 1..=864_000)?.unwrap_or(cfg.base_window_seconds);
        cfg.drift_sensitivity = c.f64("drift_sensitivity", 0.0..=1_000_000.0)?.unwrap_or(cfg.drift_sensitivity);
        cfg.emergency_window_seconds =
            c.u32("emergency_window_seconds", 1..=864_000)?.unwrap_or(cfg.emergency_window_seconds);
        cfg.not_yet_active.push("agent.commit_window.* (commit windows)".into());
    }
    if let Some(b) = a.section("blacklist")? {
        b.check_keys(&["patterns"])?;
        if let Some(p) = b.string_array("patterns")? {
            cfg.blacklist = p;
        }
    }
    if let Some(i) = a.section("identity")? {
        i.check_keys(&["provider", "spire_socket"])?;
        if let Some(p) = i.one_of("provider", &["spire", "ephemeral"])? {
            cfg.identity_provider = p.to_string();
        }
        cfg.spire_socket = non_empty(&i, "spire_socket")?.map(PathBuf::from);
        // "ephemeral" (the journals' CA, `enroll`) is what the agent does; SPIRE is to come.
        if cfg.identity_provider == "spire" {
            cfg.not_yet_active
                .push("agent.identity.provider = \"spire\" (the agent enrolls with the journals' CA instead)".into());
        }
    }
    if let Some(c) = a.section("capability")? {
        c.check_keys(&["manifest_path", "socket_path", "gpu_poll_interval_seconds"])?;
        if let Some(p) = non_empty(&c, "manifest_path")? {
            cfg.capability_manifest = PathBuf::from(p);
        }
        let _ = non_empty(&c, "socket_path")?;
        let _ = c.u32("gpu_poll_interval_seconds", 1..=86_400)?;
    }
    if let Some(e) = a.section("enrollment")? {
        e.check_keys(&["journal_endpoints", "ca_cert", "cert_dir", "renewal_before_expiry_seconds"])?;
        let _ = e.string_array("journal_endpoints")?;
        let _ = non_empty(&e, "ca_cert")?;
        let _ = non_empty(&e, "cert_dir")?;
        let _ = e.u64("renewal_before_expiry_seconds", 1..=u64::MAX)?;
        cfg.not_yet_active.push("agent.enrollment.* (certificate enrollment)".into());
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
        let _ = t.one_of("log_level", &["error", "warn", "info", "debug", "trace"])?;
        let _ = t.one_of("log_format", &["text", "json"])?;
        let _ = t.bool("prometheus_enabled")?;
        let _ = t.socket_addr("prometheus_listen")?;
        let _ = t.bool("loki_enabled")?;
        let _ = non_empty(&t, "loki_endpoint")?;
    }
    Ok(())
}

/// Reads the config file named by the flag or `PACT_AGENT_CONFIG`, else the default path if
/// it exists. Returns (label, text).
pub fn read_config_file(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, String)>, ConfigError> {
    let (path, required) = match (&flags.config, env("PACT_AGENT_CONFIG")) {
        (Some(p), _) => (p.clone(), true),
        (None, Some(p)) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some((path.display().to_string(), t))),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::new(path.display().to_string(), None, "", format!("cannot read: {e}"))),
    }
}

pub fn read_optional(path: &Path) -> Option<(String, String)> {
    std::fs::read_to_string(path).ok().map(|t| (path.display().to_string(), t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUIDE: &str = r#"[agent]
enforcement_mode = "enforce"
[agent.supervisor]
backend = "pact"
[agent.journal]
endpoints = ["journal-1.mgmt:9443", "journal-2.mgmt:9443", "journal-3.mgmt:9443"]
tls_enabled = true
tls_cert = "/etc/pact/agent.crt"
tls_key = "/etc/pact/agent.key"
tls_ca = "/etc/pact/ca.crt"
[agent.observer]
ebpf_enabled = true
inotify_enabled = true
netlink_enabled = true
[agent.shell]
enabled = true
listen = "0.0.0.0:9445"
whitelist_mode = "strict"
[agent.commit_window]
base_window_seconds = 900
drift_sensitivity = 2.0
emergency_window_seconds = 14400
[agent.blacklist]
patterns = ["/tmp/**", "/var/log/**", "/proc/**", "/sys/**", "/dev/**",
"/run/user/**", "/run/pact/**", "/run/lattice/**"]
[agent.identity]
provider = "spire"
spire_socket = "/run/spire/agent.sock"
[agent.shell.auth]
issuer = "https://your-idp/realm"
audience = "pact-cli"
jwks_url = "https://your-idp/realm/protocol/openid-connect/certs"
"#;

    fn src<'a>(env: &'a dyn Fn(&str) -> Option<String>, cmdline: &'a str) -> Sources<'a> {
        Sources { env, cmdline, hostname: "host-7", env_file: None }
    }

    #[test]
    fn the_guides_agent_toml_reads_as_written() {
        let none = |_: &str| None;
        let c = resolve(&Flags::default(), &src(&none, ""), Some(("agent.toml", GUIDE))).unwrap();
        assert_eq!(c.enforcement_mode, EnforcementMode::Enforce);
        assert_eq!(c.backend, Backend::Pact);
        assert_eq!(c.journal.endpoints.len(), 3);
        assert_eq!(c.journal.tls_cert.as_deref(), Some(Path::new("/etc/pact/agent.crt")));
        assert_eq!(c.blacklist.len(), 8);
        assert_eq!(c.shell_auth.as_ref().unwrap().audience, "pact-cli");
        assert_eq!(c.identity_provider, "spire");
        assert_eq!((c.node_id.as_str(), c.node_id_from), ("host-7", "hostname"));
        assert!(c.not_yet_active.iter().any(|k| k.contains("observer")));
        // The API server is active; exec's whitelist and JWKS are not yet.
        assert!(!c.not_yet_active.iter().any(|k| k.contains("9445")));
        assert!(c.not_yet_active.iter().any(|k| k.starts_with("agent.shell.whitelist_mode")));
        assert!(!c.not_yet_active.iter().any(|k| k.contains("jwks_url")));
        assert_eq!(
            c.shell_auth.as_ref().unwrap().jwks_url.as_deref(),
            Some("https://your-idp/realm/protocol/openid-connect/certs")
        );
    }

    #[test]
    fn node_id_precedence() {
        let env = |k: &str| (k == "PACT_AGENT_NODE_ID").then(|| "from-env".to_string());
        let none = |_: &str| None;
        let cmd = "console=ttyS0 pact.node_id=from-cmdline quiet";
        let file = Some(("a.toml", "[agent]\nnode_id = \"from-file\"\n[agent.journal]\nendpoints = [\"j:9443\"]\n"));
        let flags = Flags { node_id: Some("from-flag".into()), ..Default::default() };
        assert_eq!(resolve(&flags, &src(&env, cmd), file).unwrap().node_id, "from-flag");
        assert_eq!(resolve(&Flags::default(), &src(&env, cmd), file).unwrap().node_id, "from-env");
        assert_eq!(resolve(&Flags::default(), &src(&none, cmd), file).unwrap().node_id, "from-cmdline");
        assert_eq!(resolve(&Flags::default(), &src(&none, "pact.nodeid=ochami"), file).unwrap().node_id, "ochami");
        assert_eq!(resolve(&Flags::default(), &src(&none, ""), file).unwrap().node_id, "from-file");
        // agent.env supplies what the process environment does not.
        let mut s = src(&none, "");
        s.env_file = Some(("agent.env".into(), "# comment\nexport PACT_AGENT_NODE_ID=\"envfile\"\n".into()));
        let c = resolve(&Flags::default(), &s, file).unwrap();
        assert_eq!((c.node_id.as_str(), c.node_id_from), ("envfile", "PACT_AGENT_NODE_ID"));
    }

    #[test]
    fn mistakes_name_the_file_line_and_key() {
        let none = |_: &str| None;
        let bad = "[agent]\nenforcement_mode = \"enforcing\"\n";
        let e = resolve(&Flags::default(), &src(&none, ""), Some(("a.toml", bad))).unwrap_err().to_string();
        assert!(e.contains("a.toml:2") && e.contains("enforcement_mode"), "{e}");
        let typo = "[agent.journal]\nendpoint = [\"j:9443\"]\n";
        let e = resolve(&Flags::default(), &src(&none, ""), Some(("a.toml", typo))).unwrap_err().to_string();
        assert!(e.contains("endpoints"), "suggests the right key: {e}");
        let plaintext = "[agent.journal]\nendpoints = [\"j:9443\"]\ntls_enabled = false\n";
        let e = resolve(&Flags::default(), &src(&none, ""), Some(("a.toml", plaintext))).unwrap_err().to_string();
        assert!(e.contains("TLS only"), "{e}");
        let e = resolve(&Flags::default(), &src(&none, ""), Some(("a.toml", "[agent]\n"))).unwrap_err().to_string();
        assert!(e.contains("no journal endpoints"), "{e}");
        let short = "[agent.journal]\nendpoints = [\"j:9443\"]\n[agent.shell.auth]\nissuer = \"i\"\naudience = \"a\"\nhmac_secret = \"short\"\n";
        let e = resolve(&Flags::default(), &src(&none, ""), Some(("a.toml", short))).unwrap_err().to_string();
        assert!(e.contains("a.toml:6") && e.contains("at least 32 bytes"), "{e}");
        let e = parse_env_file("agent.env", "A=1\nnot a line\n").unwrap_err();
        assert!(e.contains("agent.env:2"), "{e}");
        // Endpoints from the kernel command line (PXE-booted nodes without a baked config).
        let c = resolve(&Flags::default(), &src(&none, "pact.journal=a:9443,b:9443"), None).unwrap();
        assert_eq!(c.journal.endpoints, vec!["a:9443", "b:9443"]);
    }

    #[test]
    fn run_dir_and_cgroup_root() {
        let none = |_: &str| None;
        let c = resolve(&Flags::default(), &src(&none, "pact.journal=a:9443"), None).unwrap();
        assert_eq!(c.run_dir, Path::new(DEFAULT_RUN_DIR));
        assert_eq!(c.capability_manifest, Path::new("/run/pact/capability.json"));
        assert_eq!(c.cgroup_root, None);
        let t = "[agent]\nrun_dir = \"/srv/pact\"\n[agent.supervisor]\ncgroup_root = \"/sys/fs/cgroup/delegated\"\n\
                 [agent.journal]\nendpoints = [\"j:9443\"]\n";
        let c = resolve(&Flags::default(), &src(&none, ""), Some(("a.toml", t))).unwrap();
        assert_eq!(c.run_dir, Path::new("/srv/pact"));
        assert_eq!(c.capability_manifest, Path::new("/srv/pact/capability.json"));
        assert_eq!(c.cgroup_root.as_deref(), Some(Path::new("/sys/fs/cgroup/delegated")));
        // An explicit manifest path still wins over run_dir.
        let t2 = format!("{t}[agent.capability]\nmanifest_path = \"/x/cap.json\"\n");
        let c = resolve(&Flags::default(), &src(&none, ""), Some(("a.toml", &t2))).unwrap();
        assert_eq!(c.capability_manifest, Path::new("/x/cap.json"));
    }
}
