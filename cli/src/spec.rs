//! vCluster overlay specs (`pact apply <file>`): the documented overlay format
//! (upstream-pact-features.md §5.4 a) read in full into `VClusterSpec`s, and the complete state
//! delta a declared spec amounts to. A file may also declare nodes (`[node.NAME]`): a node's own
//! config, written with the keys of a vCluster table minus the vCluster-wide ones, recorded as
//! a `VClusterSpec` with an empty `vcluster_id`.
//!
//! Unlike the upstream's `pact apply`, which ignored unknown keys and half the documented
//! format, everything here is read and checked: unknown keys (with a suggestion), wrong types,
//! bad enum strings, missing binaries, duplicate or unknown services, dependency cycles and
//! files with no content each give an error with the line and the full dotted key.
//!
//! Services may be written as named tables (`[vcluster.X.services.NAME]`) or as an array of
//! tables (`[[vcluster.X.services]]` with `name = ...`); both give the same spec. Output is
//! deterministic: vClusters and nodes sorted by name, files by path, services by (order, name);
//! the maps are BTreeMaps.

use std::collections::{BTreeMap, BTreeSet};

use pact_proto::config::{
    health_check, DeltaAction, FileDelta, FileSpec, HealthCheck, KernelDelta, MountDelta, MountSpec, NetworkDelta,
    PackageDelta, PolicySpec, RestartPolicy, ServiceDelta, ServiceSpec, StateDelta, VClusterSpec,
};
use pact_proto::tomlcfg::{ConfigError, Field, Section, TomlFile};
use toml_edit::Value;

/// The seven state dimensions (D2), the only valid policy categories.
pub const DIMENSIONS: [&str; 7] = ["mounts", "files", "network", "services", "kernel", "packages", "gpu"];

/// Health-check interval when a check gives none.
pub const DEFAULT_HEALTH_INTERVAL_SECONDS: u32 = 30;

const VCLUSTER_KEYS: &[&str] = &[
    "base_image",
    "supervisor_backend",
    "uenv",
    "sysctl",
    "modules",
    "mounts",
    "files",
    "services",
    "network",
    "packages",
    "policy",
];
/// Settings that belong to a vCluster as a whole (its image, supervisor, uenv and policy): a
/// node takes them from the vCluster it is assigned to.
const VCLUSTER_ONLY_KEYS: &[&str] = &["base_image", "supervisor_backend", "uenv", "policy"];
/// A `[node.NAME]` table: VCLUSTER_KEYS without VCLUSTER_ONLY_KEYS.
const NODE_KEYS: &[&str] = &["sysctl", "modules", "mounts", "files", "services", "network", "packages"];
const MOUNT_KEYS: &[&str] = &["type", "source", "options", "read_only"];
const FILE_KEYS: &[&str] = &["content", "content_hash", "mode", "owner", "group"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "binary",
    "args",
    "env",
    "restart",
    "restart_delay_seconds",
    "depends_on",
    "order",
    "cgroup_slice",
    "cgroup_memory_max",
    "cgroup_cpu_weight",
    "cgroup_io_max",
    "cgroup_pids_max",
    "health_check",
    "state",
];
const HEALTH_KEYS: &[&str] = &["type", "url", "port", "interval_seconds"];
const POLICY_KEYS: &[&str] = &[
    "drift_sensitivity",
    "base_commit_window_seconds",
    "emergency_window_seconds",
    "enforcement_mode",
    "auto_converge_categories",
    "require_ack_categories",
    "regulated",
    "two_person_approval",
    "approval_timeout_seconds",
    "audit_retention_days",
    "federation_template",
    "emergency_allowed",
    "ai_exec_allowed",
    "exec_whitelist",
    "shell_whitelist",
    "blacklist_patterns",
];

/// What one spec file declares: vClusters and nodes, each sorted by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpecFile {
    pub vclusters: Vec<VClusterSpec>,
    pub nodes: Vec<NodeSpec>,
}

/// A `[node.NAME]` table: the node's own declared config.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub node_id: String,
    /// `vcluster_id` is empty: the node's vCluster comes from its assignment, not the file.
    pub spec: VClusterSpec,
}

/// Which kind of table is being read; errors and the allowed keys depend on it.
#[derive(Clone, Copy, PartialEq)]
enum Owner {
    VCluster,
    Node,
}

impl Owner {
    fn noun(self) -> &'static str {
        match self {
            Owner::VCluster => "vCluster",
            Owner::Node => "node",
        }
    }
}

/// Reads an overlay spec file. `path_label` is what errors call the file.
pub fn parse_spec(path_label: &str, text: &str) -> Result<SpecFile, ConfigError> {
    let file = TomlFile::parse(path_label, text)?;
    let root = file.root();
    root.check_keys(&["vcluster", "node"])?;
    let (vclusters, nodes) = (root.get("vcluster"), root.get("node"));
    if vclusters.is_none() && nodes.is_none() {
        return Err(ConfigError::new(
            path_label,
            None,
            "",
            "nothing declared: expected at least one [vcluster.NAME] or [node.NAME] table",
        ));
    }
    // A `[vcluster]` or `[node]` header with nothing under it is a mistake even when the other
    // kind is present: it was meant to hold something.
    fn tables<'a>(f: Option<Field<'a>>, what: &str) -> Result<Vec<Field<'a>>, ConfigError> {
        let Some(f) = f else { return Ok(Vec::new()) };
        let fields = f.section()?.fields();
        if fields.is_empty() {
            return Err(f.error(format!("no {what}: expected at least one [{}.NAME] table", f.key())));
        }
        Ok(fields)
    }
    let mut out = SpecFile::default();
    for f in tables(vclusters, "vCluster")? {
        out.vclusters.push(parse_table(&f, Owner::VCluster)?);
    }
    for f in tables(nodes, "node")? {
        let spec = parse_table(&f, Owner::Node)?;
        out.nodes.push(NodeSpec { node_id: f.key().to_string(), spec });
    }
    out.vclusters.sort_by(|a, b| a.vcluster_id.cmp(&b.vcluster_id));
    out.nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(out)
}

/// vCluster and node names: `[A-Za-z0-9][A-Za-z0-9_-]*`. They end up in roles (pact-ops-NAME)
/// and scopes, so the CLI holds every name it sends to this alphabet.
pub fn is_valid_name(s: &str) -> bool {
    is_name(s, false)
}

/// Service names: the vCluster alphabet plus '.' and '@' (`getty@tty1`, `dbus.socket`).
pub fn is_valid_service_name(s: &str) -> bool {
    is_name(s, true)
}

/// `sha256:<hex>` of a file's content, as FileDelta and FileSpec carry it.
pub fn content_hash(content: &str) -> String {
    pact_proto::content_hash(content.as_bytes())
}

/// The complete state delta of a declared spec: everything it declares, as the change that
/// would bring a bare node to it. sysctls and services are MODIFY (they exist in some state
/// already), modules, mounts and packages are ADD, files are MODIFY (written whole).
pub fn state_delta(spec: &VClusterSpec) -> StateDelta {
    let kernel = spec
        .sysctl
        .iter()
        .map(|(key, value)| KernelDelta {
            key: key.clone(),
            action: DeltaAction::Modify as i32,
            declared_value: Some(value.clone()),
            actual_value: None,
        })
        .chain(spec.modules.iter().map(|m| KernelDelta {
            key: format!("module:{m}"),
            action: DeltaAction::Add as i32,
            declared_value: None,
            actual_value: None,
        }))
        .collect();
    let mounts = spec
        .mounts
        .iter()
        .map(|(path, m)| MountDelta {
            path: path.clone(),
            action: DeltaAction::Add as i32,
            declared: Some(m.clone()),
            actual: None,
        })
        .collect();
    let files = spec
        .files
        .iter()
        .map(|f| FileDelta {
            path: f.path.clone(),
            action: DeltaAction::Modify as i32,
            // The content itself is in the declared spec; the delta carries its hash.
            content_hash: f.content.as_deref().map(content_hash).or_else(|| f.content_hash.clone()),
            mode: f.mode,
            owner: f.owner.clone(),
            group: f.group.clone(),
            // The declared spec carries the content itself.
            content: None,
        })
        .collect();
    let services = spec
        .services
        .iter()
        .map(|s| ServiceDelta {
            name: s.name.clone(),
            action: DeltaAction::Modify as i32,
            declared_state: Some(if s.state.is_empty() { "running".to_string() } else { s.state.clone() }),
            actual_state: None,
        })
        .collect();
    let network = spec
        .network
        .iter()
        .map(|(iface, detail)| NetworkDelta {
            interface: iface.clone(),
            action: DeltaAction::Modify as i32,
            detail: Some(detail.clone()),
        })
        .collect();
    let packages = spec
        .packages
        .iter()
        .map(|(name, version)| PackageDelta {
            name: name.clone(),
            action: DeltaAction::Add as i32,
            version: Some(version.clone()),
        })
        .collect();
    StateDelta { mounts, files, network, services, kernel, packages, gpu: Vec::new() }
}

// ---- one vCluster or node ----

fn parse_table(field: &Field<'_>, owner: Owner) -> Result<VClusterSpec, ConfigError> {
    let name = field.key();
    if !is_valid_name(name) {
        return Err(key_error(
            field,
            format!(
                "invalid {} name {name:?}: use letters, digits, '-' and '_', starting with a letter or digit",
                owner.noun()
            ),
        ));
    }
    let t = field.section()?;
    let mut spec = match owner {
        Owner::VCluster => {
            t.check_keys(VCLUSTER_KEYS)?;
            VClusterSpec {
                vcluster_id: name.to_string(),
                base_image: non_empty(&t, "base_image")?.unwrap_or_default(),
                supervisor_backend: t
                    .one_of("supervisor_backend", &["pact", "systemd"])?
                    .unwrap_or_default()
                    .to_string(),
                uenv: non_empty(&t, "uenv")?.unwrap_or_default(),
                ..VClusterSpec::default()
            }
        }
        Owner::Node => {
            t.check_keys(NODE_KEYS).map_err(|mut e| {
                // Still the unknown-key error, plus where such a key does belong.
                let key = e.key.rsplit('.').next().unwrap_or_default();
                if VCLUSTER_ONLY_KEYS.contains(&key) {
                    e.message.push_str(&format!(
                        " (`{key}` is a vCluster-wide setting: put it under [vcluster.NAME]; the node takes it from its vCluster)"
                    ));
                }
                e
            })?;
            VClusterSpec::default()
        }
    };

    if let Some(s) = t.section("sysctl")? {
        read_sysctl(&s, "", &mut spec.sysctl)?;
    }
    if let Some(m) = t.section("modules")? {
        m.check_keys(&["load"])?;
        if let Some(load) = m.get("load") {
            spec.modules = load.string_array()?;
            for (i, e) in load.array()?.iter().enumerate() {
                let module = &spec.modules[i];
                if module.is_empty() || module.chars().any(|c| c.is_whitespace() || c == '/') {
                    return Err(e.expected("a kernel module name"));
                }
                if spec.modules[..i].contains(module) {
                    return Err(e.error(format!("module {module:?} is listed twice")));
                }
            }
        }
    }
    if let Some(mounts) = t.section("mounts")? {
        for f in mounts.fields() {
            check_path(&f)?;
            spec.mounts.insert(f.key().to_string(), read_mount(&f.section()?)?);
        }
    }
    if let Some(files) = t.section("files")? {
        for f in files.fields() {
            check_path(&f)?;
            spec.files.push(read_file_spec(&f)?);
        }
        spec.files.sort_by(|a, b| a.path.cmp(&b.path));
    }
    if let Some(services) = t.get("services") {
        spec.services = read_services(&services, owner)?;
    }
    if let Some(network) = t.section("network")? {
        for f in network.fields() {
            let iface = f.key();
            // IFNAMSIZ is 16 including the NUL.
            if iface.is_empty() || iface.len() > 15 || iface.chars().any(|c| c.is_whitespace() || c == '/' || c == ':')
            {
                return Err(key_error(&f, format!("invalid interface name {iface:?}")));
            }
            spec.network.insert(iface.to_string(), non_empty_field(&f)?);
        }
    }
    if let Some(packages) = t.section("packages")? {
        for f in packages.fields() {
            let name = f.key();
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                return Err(key_error(&f, format!("invalid package name {name:?}")));
            }
            spec.packages.insert(name.to_string(), non_empty_field(&f)?);
        }
    }
    // Only a vCluster gets this far with a `policy` key (check_keys above).
    if let Some(p) = t.section("policy")? {
        spec.policy = Some(read_policy(&p)?);
    }
    Ok(spec)
}

/// sysctl values may be strings or bare numbers (`"vm.swappiness" = 10`). An unquoted dotted
/// key (`vm.swappiness = "10"`) is a nested table in TOML; it is flattened back to the dotted
/// name, since that is what the writer meant.
fn read_sysctl(s: &Section<'_>, prefix: &str, out: &mut BTreeMap<String, String>) -> Result<(), ConfigError> {
    for f in s.fields() {
        let key = if prefix.is_empty() { f.key().to_string() } else { format!("{prefix}.{}", f.key()) };
        if f.is_table_like() {
            read_sysctl(&f.section()?, &key, out)?;
            continue;
        }
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c == '=') {
            return Err(key_error(&f, format!("invalid sysctl name {key:?}")));
        }
        let value = f.scalar_string()?;
        if value.trim().is_empty() {
            return Err(f.expected("a non-empty value"));
        }
        // Two spellings of one name ("a.b" and a.b) would silently overwrite each other.
        if out.insert(key.clone(), value).is_some() {
            return Err(key_error(&f, format!("sysctl {key:?} is set twice")));
        }
    }
    Ok(())
}

fn read_mount(m: &Section<'_>) -> Result<MountSpec, ConfigError> {
    m.check_keys(MOUNT_KEYS)?;
    Ok(MountSpec {
        fs_type: non_empty_field(&m.require("type")?)?,
        source: non_empty_field(&m.require("source")?)?,
        options: m.string("options")?.unwrap_or_default(),
        read_only: m.bool("read_only")?.unwrap_or(false),
    })
}

fn read_file_spec(f: &Field<'_>) -> Result<FileSpec, ConfigError> {
    let t = f.section()?;
    t.check_keys(FILE_KEYS)?;
    let content = t.string("content")?;
    let given_hash = match t.get("content_hash") {
        None => None,
        Some(h) => {
            let v = h.string()?;
            let hex = v.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
                return Err(h.expected("\"sha256:\" and 64 lowercase hex digits"));
            }
            // Both given: they must agree, or the journal would record a hash of nothing.
            if let Some(c) = &content {
                let actual = content_hash(c);
                if actual != v {
                    return Err(h.error(format!("does not match the content, whose hash is {actual}")));
                }
            }
            Some(v)
        }
    };
    if content.is_none() && given_hash.is_none() {
        return Err(t.error(format!("file {} needs `content` or `content_hash`", f.key())));
    }
    let mode = t.get("mode").map(|m| parse_mode(&m)).transpose()?;
    Ok(FileSpec {
        path: f.key().to_string(),
        content,
        content_hash: given_hash,
        mode,
        owner: non_empty(&t, "owner")?,
        group: non_empty(&t, "group")?,
    })
}

/// A file mode: a string of 3 or 4 octal digits ("644", "0644", "0o644") or an integer written
/// in octal (0o644). A decimal integer is refused: `mode = 644` would be 0o1204, surely not
/// what was meant.
fn parse_mode(f: &Field<'_>) -> Result<u32, ConfigError> {
    let what = "a file mode such as \"0644\" or 0o644";
    let parsed = match f.value() {
        Some(Value::String(s)) => {
            let digits = s.value().strip_prefix("0o").unwrap_or(s.value());
            let octal = (3..=4).contains(&digits.len()) && digits.chars().all(|c| ('0'..='7').contains(&c));
            octal.then(|| u32::from_str_radix(digits, 8).ok()).flatten()
        }
        Some(Value::Integer(i)) => {
            let raw = f.raw().unwrap_or_default();
            if !raw.starts_with("0o") && raw != "0" {
                return Err(f.error(format!(
                    "expected {what}, found the decimal integer {raw}: write it as a string (\"0{raw}\") or in octal (0o{raw})"
                )));
            }
            u32::try_from(*i.value()).ok().filter(|m| *m <= 0o7777)
        }
        _ => None,
    };
    parsed.ok_or_else(|| f.expected(what))
}

// ---- services ----

fn read_services<'a>(field: &Field<'a>, owner: Owner) -> Result<Vec<ServiceSpec>, ConfigError> {
    // (spec, its table) so later checks can point at the right line.
    let mut read: Vec<(ServiceSpec, Section<'a>)> = Vec::new();
    if field.is_table_like() {
        // [vcluster.X.services.NAME]: the table key is the name.
        for f in field.section()?.fields() {
            let t = f.section()?;
            read.push((read_service(&t, Some(&f))?, t));
        }
    } else if field.is_array() {
        // [[vcluster.X.services]] with name = "...".
        for t in field.sections()? {
            let spec = read_service(&t, None)?;
            if let Some((_, first)) = read.iter().find(|(s, _)| s.name == spec.name) {
                let at = first.line().map_or(String::new(), |l| format!(" (first at line {l})"));
                let name_field = t.require("name")?;
                return Err(name_field.error(format!("duplicate service name {:?}{at}", spec.name)));
            }
            read.push((spec, t));
        }
    } else {
        return Err(field.expected("service tables ([services.NAME] or [[services]])"));
    }

    // Every dependency must be a service of this same table (vCluster or node), and there must
    // be no cycle.
    let names: BTreeSet<&str> = read.iter().map(|(s, _)| s.name.as_str()).collect();
    for (spec, t) in &read {
        for (i, dep) in spec.depends_on.iter().enumerate() {
            if !names.contains(dep.as_str()) {
                let e = &t.require("depends_on")?.array()?[i];
                return Err(e.error(format!("unknown service {dep:?} (this {} has: {})", owner.noun(), list(&names))));
            }
        }
    }
    let deps: BTreeMap<&str, &[String]> =
        read.iter().map(|(s, _)| (s.name.as_str(), s.depends_on.as_slice())).collect();
    if let Some(cycle) = find_cycle(&deps) {
        let (_, t) = read.iter().find(|(s, _)| s.name == cycle[0]).expect("cycle names a service");
        return Err(t.require("depends_on")?.error(format!("dependency cycle: {}", cycle.join(" -> "))));
    }

    let mut services: Vec<ServiceSpec> = read.into_iter().map(|(s, _)| s).collect();
    services.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
    Ok(services)
}

fn list(names: &BTreeSet<&str>) -> String {
    names.iter().copied().collect::<Vec<_>>().join(", ")
}

/// A cycle in the dependency graph, as the path `a, b, ..., a`; the search starts from the
/// smallest name so the report is the same on every run.
fn find_cycle<'s>(deps: &BTreeMap<&'s str, &'s [String]>) -> Option<Vec<&'s str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit<'s>(
        node: &'s str,
        deps: &BTreeMap<&'s str, &'s [String]>,
        marks: &mut BTreeMap<&'s str, Mark>,
        path: &mut Vec<&'s str>,
    ) -> Option<Vec<&'s str>> {
        marks.insert(node, Mark::OnPath);
        path.push(node);
        for dep in deps.get(node).copied().unwrap_or_default() {
            let dep = dep.as_str();
            match marks.get(dep).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let start = path.iter().position(|n| *n == dep).expect("on path");
                    let mut cycle = path[start..].to_vec();
                    cycle.push(dep);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(dep, deps, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in deps.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(node, deps, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// One service table. `named` is the `services.NAME` key in the named-table form.
fn read_service(t: &Section<'_>, named: Option<&Field<'_>>) -> Result<ServiceSpec, ConfigError> {
    t.check_keys(SERVICE_KEYS)?;
    let name = match (named, t.get("name")) {
        (Some(key), Some(n)) => {
            // Allowed for symmetry with the array form, but it must agree with the table key.
            let v = n.string()?;
            if v != key.key() {
                return Err(n.error(format!("{v:?} differs from the table name {:?}", key.key())));
            }
            v
        }
        (Some(key), None) => {
            if !is_name(key.key(), true) {
                return Err(key_error(
                    key,
                    format!("invalid service name {:?}: use letters, digits, '-', '_', '.' and '@'", key.key()),
                ));
            }
            key.key().to_string()
        }
        (None, Some(n)) => n.string()?,
        (None, None) => return Err(t.missing("name")),
    };
    if !is_name(&name, true) {
        let f = t.require("name")?;
        return Err(f.error(format!("invalid service name {name:?}: use letters, digits, '-', '_', '.' and '@'")));
    }

    let binary_field = t.require("binary")?;
    let binary = binary_field.string()?;
    if !binary.starts_with('/') || binary.contains('\0') {
        return Err(binary_field.expected("an absolute path"));
    }

    let mut env = BTreeMap::new();
    if let Some(e) = t.section("env")? {
        for f in e.fields() {
            let k = f.key();
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(key_error(&f, format!("invalid environment variable name {k:?}")));
            }
            env.insert(k.to_string(), f.scalar_string()?);
        }
    }

    let restart = match t.one_of("restart", &["always", "on-failure", "never"])? {
        None | Some("always") => RestartPolicy::Always,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some(_) => RestartPolicy::Never,
    };

    let depends_on = t.string_array("depends_on")?.unwrap_or_default();
    if let Some(f) = t.get("depends_on") {
        for (i, e) in f.array()?.iter().enumerate() {
            if depends_on[i] == name {
                return Err(e.error(format!("service {name:?} cannot depend on itself")));
            }
            if depends_on[..i].contains(&depends_on[i]) {
                return Err(e.error(format!("{:?} is listed twice", depends_on[i])));
            }
        }
    }

    let cgroup_memory_max = match t.get("cgroup_memory_max") {
        None => None,
        Some(f) => {
            let v = f.scalar_string()?;
            if !is_memory_size(&v) {
                return Err(f.expected("a size like \"512M\", a number of bytes, or \"max\""));
            }
            Some(v)
        }
    };

    Ok(ServiceSpec {
        name,
        binary,
        args: t.string_array("args")?.unwrap_or_default(),
        env,
        restart: restart as i32,
        restart_delay_seconds: t.u32("restart_delay_seconds", 0..=u32::MAX)?.unwrap_or(0),
        depends_on,
        order: t.u32("order", 0..=u32::MAX)?.unwrap_or(0),
        cgroup_slice: cgroup_slice(t)?,
        cgroup_memory_max,
        cgroup_cpu_weight: t.u32("cgroup_cpu_weight", 1..=10_000)?,
        cgroup_io_max: non_empty(t, "cgroup_io_max")?,
        cgroup_pids_max: t.u32("cgroup_pids_max", 1..=u32::MAX)?,
        health_check: t.get("health_check").map(|f| read_health_check(&f)).transpose()?,
        state: t.one_of("state", &["running", "stopped"])?.unwrap_or("running").to_string(),
    })
}

/// `{ type = "process" }`, `{ type = "http", url = "..." }` or `{ type = "tcp", port = N }`,
/// each with an optional `interval_seconds`.
fn read_health_check(f: &Field<'_>) -> Result<HealthCheck, ConfigError> {
    let t = f.section()?;
    t.check_keys(HEALTH_KEYS)?;
    let kind = t.require("type")?.one_of(&["process", "http", "tcp"])?;
    // A key that belongs to another type is a mistake, not something to ignore.
    for (key, owner) in [("url", "http"), ("port", "tcp")] {
        if kind != owner {
            if let Some(k) = t.get(key) {
                return Err(k.error(format!(
                    "`{key}` applies to health checks of type \"{owner}\" only, this one is \"{kind}\""
                )));
            }
        }
    }
    let check = match kind {
        "process" => health_check::Check::Process(true),
        "http" => {
            let u = t.require("url")?;
            let url = u.string()?;
            let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty()) {
                return Err(u.expected("an http:// or https:// URL"));
            }
            health_check::Check::HttpUrl(url)
        }
        _ => health_check::Check::TcpPort(t.require("port")?.u32(1..=65_535)?),
    };
    Ok(HealthCheck {
        check: Some(check),
        interval_seconds: t.u32("interval_seconds", 1..=u32::MAX)?.unwrap_or(DEFAULT_HEALTH_INTERVAL_SECONDS),
    })
}

// ---- policy ----

fn read_policy(p: &Section<'_>) -> Result<PolicySpec, ConfigError> {
    p.check_keys(POLICY_KEYS)?;
    let categories = |key: &str| -> Result<Vec<String>, ConfigError> {
        let Some(f) = p.get(key) else { return Ok(Vec::new()) };
        let values = f.string_array()?;
        for (i, e) in f.array()?.iter().enumerate() {
            e.one_of(&DIMENSIONS)?;
            if values[..i].contains(&values[i]) {
                return Err(e.error(format!("{:?} is listed twice", values[i])));
            }
        }
        Ok(values)
    };
    Ok(PolicySpec {
        drift_sensitivity: p.f64("drift_sensitivity", 0.0..=f64::MAX)?,
        base_commit_window_seconds: p.u32("base_commit_window_seconds", 1..=u32::MAX)?,
        emergency_window_seconds: p.u32("emergency_window_seconds", 1..=u32::MAX)?,
        enforcement_mode: p.one_of("enforcement_mode", &["observe", "warn", "enforce"])?.map(str::to_string),
        auto_converge_categories: categories("auto_converge_categories")?,
        require_ack_categories: categories("require_ack_categories")?,
        regulated: p.bool("regulated")?,
        two_person_approval: p.bool("two_person_approval")?,
        approval_timeout_seconds: p.u32("approval_timeout_seconds", 1..=u32::MAX)?,
        audit_retention_days: p.u32("audit_retention_days", 0..=u32::MAX)?,
        federation_template: non_empty(p, "federation_template")?,
        emergency_allowed: p.bool("emergency_allowed")?,
        ai_exec_allowed: p.bool("ai_exec_allowed")?,
        exec_whitelist: p.string_array("exec_whitelist")?.unwrap_or_default(),
        shell_whitelist: p.string_array("shell_whitelist")?.unwrap_or_default(),
        blacklist_patterns: p.string_array("blacklist_patterns")?.unwrap_or_default(),
    })
}

// ---- small checks ----

/// An error about a table key itself (a bad name), at the key's line.
fn key_error(f: &Field<'_>, message: String) -> ConfigError {
    ConfigError::new(f.file().path(), f.key_line().or_else(|| f.line()), f.path(), message)
}

/// vCluster names: `[A-Za-z0-9][A-Za-z0-9_-]*`; service names also allow '.' and '@'
/// (systemd-style `getty@tty1`, `dbus.socket`).
fn is_name(s: &str, service: bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (service && (c == '.' || c == '@')))
}

/// Mount points and file paths: absolute, normalised, not "/" itself.
fn check_path(f: &Field<'_>) -> Result<(), ConfigError> {
    let p = f.key();
    let ok = p.starts_with('/')
        && p.len() > 1
        && !p.ends_with('/')
        && !p.contains('\0')
        && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(key_error(f, format!("invalid path {p:?}: expected an absolute path such as \"/etc/motd\"")))
    }
}

/// cgroup memory.max style sizes: "max", bytes, or a number with a K/M/G/T suffix.
fn is_memory_size(v: &str) -> bool {
    if v == "max" {
        return true;
    }
    let digits = v.strip_suffix(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']).unwrap_or(v);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

/// `infra`, `network`, `gpu` or `audit`, also written `pact.slice/<name>` or with `.slice`.
/// `workload` is refused here as the agent refuses it: workload.slice belongs to the workload
/// scheduler, and pact places nothing there (invariant RI1), so the admin learns it at apply.
fn cgroup_slice(t: &Section<'_>) -> Result<Option<String>, ConfigError> {
    let Some(f) = t.get("cgroup_slice") else { return Ok(None) };
    let v = non_empty_field(&f)?;
    let short = v.strip_prefix("pact.slice/").unwrap_or(&v);
    let short = short.strip_suffix(".slice").unwrap_or(short);
    match short {
        "infra" | "network" | "gpu" | "audit" => Ok(Some(v)),
        "workload" => Err(f.error(
            "workload.slice belongs to the workload scheduler; pact places services only under pact.slice/{infra,network,gpu,audit}",
        )),
        _ => Err(f.expected("one of \"infra\", \"network\", \"gpu\", \"audit\" (optionally as \"pact.slice/<name>\")")),
    }
}

fn non_empty(t: &Section<'_>, key: &str) -> Result<Option<String>, ConfigError> {
    t.get(key).map(|f| non_empty_field(&f)).transpose()
}

fn non_empty_field(f: &Field<'_>) -> Result<String, ConfigError> {
    let v = f.string()?;
    if v.trim().is_empty() {
        return Err(f.expected("a non-empty string"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../images/examples/ml-training.toml");

    /// The complete example of reference §5.4 (a), verbatim.
    const REFERENCE_EXAMPLE: &str = r#"
[vcluster.ml-training]
base_image = "alps-ml-2026q1"          # SquashFS image name (informational)
supervisor_backend = "pact"            # "pact" | "systemd"

[vcluster.ml-training.sysctl]          # kernel dimension
"vm.nr_hugepages" = "1024"
"vm.swappiness" = "10"
"vm.overcommit_memory" = "1"
"net.core.rmem_max" = "16777216"
"net.core.wmem_max" = "16777216"

[vcluster.ml-training.modules]
load = ["nvidia", "nvidia_uvm", "nfs", "cxi_core"]

[vcluster.ml-training.mounts]
"/scratch"  = { type = "nfs", source = "storage01:/ml-scratch" }
"/datasets" = { type = "nfs", source = "storage02:/shared-datasets", read_only = true }

# services as named tables …
[vcluster.ml-training.services.chronyd]
binary = "/usr/sbin/chronyd"
args = ["-d"]
restart = "always"                     # always | on-failure | never
restart_delay_seconds = 5
order = 1

[vcluster.ml-training.services.nvidia-persistenced]
binary = "/usr/bin/nvidia-persistenced"
args = ["--no-persistence-mode", "--verbose"]
restart = "always"
order = 2

[vcluster.ml-training.services.lattice-node-agent]
binary = "/usr/bin/lattice-node-agent"
args = ["--config", "/etc/lattice/agent.toml"]
restart = "always"
restart_delay_seconds = 10
depends_on = ["chronyd"]
cgroup_memory_max = "512M"
health_check = { type = "http", url = "http://localhost:9100/health", interval_seconds = 30 }
order = 10

# … or (examples/config/*.toml) as an array of tables:
# [[vcluster.ml-training.services]]
# name = "chronyd"
# binary = "/usr/sbin/chronyd"
# order = 1
# restart = "always"
# restart_delay_seconds = 5
# cgroup_slice = "pact.slice/infra"    # pact.slice/{infra,gpu,audit,network} (never workload.slice)

[vcluster.ml-training.policy]
drift_sensitivity = 2.0
base_commit_window_seconds = 900
enforcement_mode = "enforce"           # observe | warn | enforce
auto_converge_categories = ["services", "kernel"]
require_ack_categories = ["mounts", "network", "gpu"]
regulated = false
two_person_approval = false
approval_timeout_seconds = 1800        # how long a held change waits (journal default 1800)
audit_retention_days = 2555
federation_template = "regulated-sensitive"
"#;

    fn one(text: &str) -> VClusterSpec {
        let mut file = parse_spec("spec.toml", text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((file.vclusters.len(), file.nodes.len()), (1, 0));
        file.vclusters.remove(0)
    }

    fn err(text: &str) -> ConfigError {
        parse_spec("spec.toml", text).expect_err("should be rejected")
    }

    /// A minimal vCluster with one extra service-table body for `svc`.
    fn with_service(body: &str) -> String {
        format!("[vcluster.vc.services.svc]\nbinary = \"/bin/svc\"\n{body}")
    }

    #[test]
    fn example_file_parses() {
        let specs = parse_spec("images/examples/ml-training.toml", EXAMPLE).unwrap_or_else(|e| panic!("{e}")).vclusters;
        let ids: Vec<&str> = specs.iter().map(|s| s.vcluster_id.as_str()).collect();
        assert_eq!(ids, ["inference", "ml-training"]);

        let ml = &specs[1];
        assert_eq!(ml.base_image, "alps-ml-2026q1");
        assert_eq!(ml.supervisor_backend, "pact");
        assert_eq!(ml.sysctl.len(), 5);
        assert_eq!(ml.sysctl["vm.nr_hugepages"], "1024");
        assert_eq!(ml.modules, ["nvidia", "nvidia_uvm", "nfs", "cxi_core"]);
        assert_eq!(
            ml.mounts["/datasets"],
            MountSpec {
                fs_type: "nfs".into(),
                source: "storage02:/shared-datasets".into(),
                options: String::new(),
                read_only: true
            }
        );
        assert_eq!(ml.mounts["/scratch"].options, "vers=4.2,noatime");
        assert!(!ml.mounts["/scratch"].read_only);
        let paths: Vec<&str> = ml.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/etc/chrony.conf", "/etc/motd"]);
        assert_eq!(ml.files[0].mode, Some(0o644));
        assert_eq!(ml.files[1].mode, Some(0o644));
        assert_eq!(ml.files[1].group.as_deref(), Some("root"));
        assert_eq!(ml.files[0].group, None);
        let names: Vec<&str> = ml.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["chronyd", "nvidia-persistenced", "lattice-node-agent"]);
        let agent = &ml.services[2];
        assert_eq!(agent.depends_on, ["chronyd"]);
        assert_eq!(agent.cgroup_memory_max.as_deref(), Some("512M"));
        assert_eq!(
            agent.health_check,
            Some(HealthCheck {
                check: Some(health_check::Check::HttpUrl("http://localhost:9100/health".into())),
                interval_seconds: 30
            })
        );
        assert_eq!(ml.services[0].health_check.as_ref().unwrap().check, Some(health_check::Check::Process(true)));
        assert_eq!(ml.network["hsn0"], "mtu 9000");
        assert_eq!(ml.packages["cuda-toolkit"], "12.4");
        let p = ml.policy.as_ref().unwrap();
        assert_eq!(p.drift_sensitivity, Some(2.0));
        assert_eq!(p.enforcement_mode.as_deref(), Some("enforce"));
        assert_eq!(p.require_ack_categories, ["mounts", "network", "gpu"]);
        assert_eq!(p.approval_timeout_seconds, Some(1800));
        assert_eq!(p.blacklist_patterns.len(), 6);

        let inf = &specs[0];
        assert_eq!(inf.uenv, "prgenv-gnu/24.11");
        assert_eq!(inf.sysctl["vm.swappiness"], "10");
        let names: Vec<&str> = inf.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["chronyd", "model-server"]);
        let server = &inf.services[1];
        assert_eq!(server.restart, RestartPolicy::OnFailure as i32);
        assert_eq!(server.env["CUDA_VISIBLE_DEVICES"], "0,1,2,3");
        assert_eq!(server.cgroup_cpu_weight, Some(200));
        assert_eq!(server.cgroup_pids_max, Some(4096));
        assert_eq!(server.health_check.as_ref().unwrap().check, Some(health_check::Check::TcpPort(8080)));
        assert_eq!(server.state, "running");
        assert_eq!(inf.policy.as_ref().unwrap().exec_whitelist, ["nvidia-smi", "ps", "journalctl"]);
    }

    #[test]
    fn reference_example_parses() {
        let spec = one(REFERENCE_EXAMPLE);
        assert_eq!(spec.vcluster_id, "ml-training");
        assert_eq!(spec.services.len(), 3);
        assert_eq!(spec.services[0].restart, RestartPolicy::Always as i32);
        assert_eq!(spec.services[0].restart_delay_seconds, 5);
        assert!(spec.files.is_empty());
        assert_eq!(spec.policy.as_ref().unwrap().audit_retention_days, Some(2555));
        assert_eq!(spec.policy.as_ref().unwrap().federation_template.as_deref(), Some("regulated-sensitive"));
    }

    #[test]
    fn both_service_forms_give_identical_specs() {
        let named = r#"
[vcluster.vc.services.web]
binary = "/usr/bin/web"
args = ["--port", "80"]
env = { A = "1", B = 2 }
restart = "on-failure"
restart_delay_seconds = 3
depends_on = ["db", "cache"]
order = 5
cgroup_slice = "pact.slice/gpu"
cgroup_memory_max = "1G"
cgroup_cpu_weight = 100
cgroup_io_max = "8:0 rbps=1048576"
cgroup_pids_max = 100
health_check = { type = "tcp", port = 80 }
state = "stopped"

[vcluster.vc.services.db]
binary = "/usr/bin/db"
order = 1

[vcluster.vc.services.cache]
name = "cache"
binary = "/usr/bin/cache"
order = 1
"#;
        let array = r#"
[[vcluster.vc.services]]
name = "cache"
binary = "/usr/bin/cache"
order = 1

[[vcluster.vc.services]]
name = "web"
binary = "/usr/bin/web"
args = ["--port", "80"]
env = { B = 2, A = "1" }
restart = "on-failure"
restart_delay_seconds = 3
depends_on = ["db", "cache"]
order = 5
cgroup_slice = "pact.slice/gpu"
cgroup_memory_max = "1G"
cgroup_cpu_weight = 100
cgroup_io_max = "8:0 rbps=1048576"
cgroup_pids_max = 100
health_check = { type = "tcp", port = 80 }
state = "stopped"

[[vcluster.vc.services]]
name = "db"
binary = "/usr/bin/db"
order = 1
"#;
        let inline = r#"
[vcluster.vc]
services = [
  { name = "db", binary = "/usr/bin/db", order = 1 },
  { name = "web", binary = "/usr/bin/web", args = ["--port", "80"], env = { A = "1", B = "2" }, restart = "on-failure", restart_delay_seconds = 3, depends_on = ["db", "cache"], order = 5, cgroup_slice = "pact.slice/gpu", cgroup_memory_max = "1G", cgroup_cpu_weight = 100, cgroup_io_max = "8:0 rbps=1048576", cgroup_pids_max = 100, health_check = { type = "tcp", port = 80 }, state = "stopped" },
  { name = "cache", binary = "/usr/bin/cache", order = 1 },
]
"#;
        let a = one(named);
        assert_eq!(a, one(array));
        assert_eq!(a, one(inline));
        assert_eq!(state_delta(&a), state_delta(&one(array)));
        // Sorted by (order, name).
        let names: Vec<&str> = a.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["cache", "db", "web"]);
        let web = &a.services[2];
        assert_eq!(web.env["B"], "2");
        assert_eq!(web.state, "stopped");
        assert_eq!(web.health_check.as_ref().unwrap().interval_seconds, DEFAULT_HEALTH_INTERVAL_SECONDS);
    }

    #[test]
    fn unknown_keys_with_suggestion_and_full_key() {
        let text = "[vcluster.ml-training.services.chronyd]\nbinary = \"/usr/sbin/chronyd\"\nrestrat = \"always\"\n";
        let e = err(text);
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key, "vcluster.ml-training.services.chronyd.restrat");
        assert_eq!(
            e.to_string(),
            "spec.toml:3: unknown key `vcluster.ml-training.services.chronyd.restrat` (did you mean `vcluster.ml-training.services.chronyd.restart`?)"
        );
        let e = err("[vcluster.vc]\nbase_imag = \"x\"\n");
        assert_eq!(e.message, "unknown key `vcluster.vc.base_imag` (did you mean `vcluster.vc.base_image`?)");
        let e = err("[vclusters.vc]\n");
        assert_eq!(e.message, "unknown key `vclusters` (did you mean `vcluster`?)");
        let e = err("[vcluster.vc.mounts]\n\"/x\" = { type = \"nfs\", source = \"a:/b\", readonly = true }\n");
        assert!(e.message.contains("did you mean `vcluster.vc.mounts.\"/x\".read_only`?"), "{e}");
        let e = err("[vcluster.vc.policy]\ntwo_person_aproval = true\n");
        assert!(e.message.contains("(did you mean `vcluster.vc.policy.two_person_approval`?)"), "{e}");
        let e = err(&with_service("health_check = { type = \"http\", uri = \"http://x/\" }\n"));
        assert!(e.message.contains("did you mean `vcluster.vc.services.svc.health_check.url`?"), "{e}");
        let e = err("[vcluster.vc.modules]\nlod = [\"x\"]\n");
        assert!(e.message.contains("did you mean `vcluster.vc.modules.load`?"), "{e}");
    }

    #[test]
    fn invalid_enum_strings() {
        let text = "[vcluster.ml-training.services.chronyd]\nbinary = \"/usr/sbin/chronyd\"\nrestart = \"sometimes\"\n";
        let e = err(text);
        assert_eq!(e.key, "vcluster.ml-training.services.chronyd.restart");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.message, "expected one of \"always\", \"on-failure\", \"never\", found a string \"sometimes\"");
        let e = err(&with_service("restart = \"on_failure\"\n"));
        assert!(e.message.ends_with("(did you mean \"on-failure\"?)"), "{e}");
        let e = err(&with_service("state = \"started\"\n"));
        assert_eq!(e.key, "vcluster.vc.services.svc.state");
        let e = err("[vcluster.vc]\nsupervisor_backend = \"openrc\"\n");
        assert_eq!(e.key, "vcluster.vc.supervisor_backend");
        let e = err("[vcluster.vc.policy]\nenforcement_mode = \"enforcing\"\n");
        assert_eq!(e.key, "vcluster.vc.policy.enforcement_mode");
        let e = err("[vcluster.vc.policy]\nauto_converge_categories = [\"kernel\", \"sysctl\"]\n");
        assert_eq!(e.key, "vcluster.vc.policy.auto_converge_categories[1]");
        let e = err(&with_service("health_check = { type = \"exec\" }\n"));
        assert_eq!(e.key, "vcluster.vc.services.svc.health_check.type");
    }

    #[test]
    fn wrong_types() {
        let e = err(&with_service("order = \"1\"\n"));
        assert_eq!(
            e.to_string(),
            "spec.toml:3: key `vcluster.vc.services.svc.order`: expected a non-negative integer, found a string \"1\""
        );
        let e = err(&with_service("args = \"-d\"\n"));
        assert_eq!(e.message, "expected an array of strings, found a string \"-d\"");
        let e = err(&with_service("args = [\"-d\", 1]\n"));
        assert_eq!(e.key, "vcluster.vc.services.svc.args[1]");
        let e = err(&with_service("cgroup_cpu_weight = 0\n"));
        assert_eq!(e.message, "expected an integer from 1 to 10000, found an integer 0");
        let e = err(&with_service("cgroup_cpu_weight = 20000\n"));
        assert_eq!(e.message, "expected an integer from 1 to 10000, found an integer 20000");
        let e = err(&with_service("cgroup_memory_max = \"lots\"\n"));
        assert_eq!(e.key, "vcluster.vc.services.svc.cgroup_memory_max");
        assert_eq!(
            one(&with_service("cgroup_memory_max = 1048576\n")).services[0].cgroup_memory_max.as_deref(),
            Some("1048576")
        );
        let e = err(&with_service("restart_delay_seconds = -1\n"));
        assert_eq!(e.key, "vcluster.vc.services.svc.restart_delay_seconds");
        let e = err(&with_service("env = { A = true }\n"));
        assert_eq!(e.key, "vcluster.vc.services.svc.env.A");
        let e = err(&with_service("binary = 5\n"));
        assert!(e.message.contains("duplicate key"), "{e}");
        let e = err("[vcluster.vc.mounts]\n\"/x\" = { type = \"nfs\", source = \"a:/b\", read_only = \"yes\" }\n");
        assert_eq!(e.key, "vcluster.vc.mounts.\"/x\".read_only");
        assert_eq!(e.line, Some(2));
        let e = err("[vcluster.vc.mounts]\n\"/x\" = { type = \"nfs\" }\n");
        assert_eq!(e.message, "missing required key `vcluster.vc.mounts.\"/x\".source`");
        let e = err("[vcluster.vc.mounts]\n\"/x\" = \"nfs\"\n");
        assert!(e.message.starts_with("expected a table, found a string"), "{e}");
        let e = err("[vcluster.vc]\nmodules = [\"nvidia\"]\n");
        assert_eq!(e.key, "vcluster.vc.modules");
        let e = err("[vcluster.vc.policy]\ndrift_sensitivity = \"high\"\n");
        assert_eq!(e.message, "expected a number of at least 0, found a string \"high\"");
        let e = err("[vcluster.vc.policy]\nregulated = 1\n");
        assert_eq!(e.key, "vcluster.vc.policy.regulated");
        let e = err("[vcluster.vc.policy]\napproval_timeout_seconds = 0\n");
        assert_eq!(e.key, "vcluster.vc.policy.approval_timeout_seconds");
        let e = err("[vcluster.vc.policy]\nblacklist_patterns = \"/tmp/**\"\n");
        assert_eq!(e.key, "vcluster.vc.policy.blacklist_patterns");
        let e = err("[vcluster.vc.packages]\ncuda = 12.4\n");
        assert_eq!(e.key, "vcluster.vc.packages.cuda");
        let e = err("[vcluster.vc.network]\nhsn0 = 9000\n");
        assert_eq!(e.key, "vcluster.vc.network.hsn0");
        let e = err("[vcluster.vc]\nservices = \"chronyd\"\n");
        assert!(e.message.starts_with("expected service tables"), "{e}");
    }

    #[test]
    fn missing_binary() {
        let e = err("[vcluster.ml-training.services.chronyd]\nargs = [\"-d\"]\n");
        assert_eq!(e.key, "vcluster.ml-training.services.chronyd.binary");
        assert_eq!(e.line, Some(1));
        assert_eq!(e.to_string(), "spec.toml:1: missing required key `vcluster.ml-training.services.chronyd.binary`");
        let e = err("[[vcluster.vc.services]]\nname = \"a\"\n");
        assert_eq!(e.key, "vcluster.vc.services[0].binary");
        let e = err("[[vcluster.vc.services]]\nbinary = \"/bin/a\"\n");
        assert_eq!(e.key, "vcluster.vc.services[0].name");
        let e = err(&with_service("binary = \"svc\"\n").replace("binary = \"/bin/svc\"\n", ""));
        assert_eq!(e.message, "expected an absolute path, found a string \"svc\"");
    }

    #[test]
    fn duplicate_and_bad_service_names() {
        let text = "[[vcluster.vc.services]]\nname = \"a\"\nbinary = \"/bin/a\"\n\n[[vcluster.vc.services]]\nname = \"a\"\nbinary = \"/bin/b\"\n";
        let e = err(text);
        assert_eq!(e.key, "vcluster.vc.services[1].name");
        assert_eq!(e.line, Some(6));
        assert_eq!(e.message, "duplicate service name \"a\" (first at line 1)");
        let e = err("[vcluster.vc.services.a]\nname = \"b\"\nbinary = \"/bin/a\"\n");
        assert_eq!(e.message, "\"b\" differs from the table name \"a\"");
        let e = err("[[vcluster.vc.services]]\nname = \"a b\"\nbinary = \"/bin/a\"\n");
        assert!(e.message.starts_with("invalid service name"), "{e}");
        let e = err("[vcluster.\"a b\"]\n");
        assert!(e.message.starts_with("invalid vCluster name"), "{e}");
        assert_eq!(
            one("[vcluster.vc.services.\"getty@tty1\"]\nbinary = \"/sbin/agetty\"\n").services[0].name,
            "getty@tty1"
        );
    }

    #[test]
    fn cgroup_slices_are_pacts_own() {
        for ok in ["infra", "pact.slice/gpu", "pact.slice/audit.slice", "network.slice"] {
            let spec = parse_spec("spec.toml", &with_service(&format!("cgroup_slice = {ok:?}\n"))).unwrap();
            assert_eq!(spec.vclusters[0].services[0].cgroup_slice.as_deref(), Some(ok));
        }
        let e = err(&with_service("cgroup_slice = \"workload\"\n")).to_string();
        assert!(e.contains("spec.toml:3") && e.contains("workload scheduler"), "{e}");
        let e = err(&with_service("cgroup_slice = \"pact.slice/infr\"\n")).to_string();
        assert!(e.contains("one of \"infra\""), "{e}");
    }

    #[test]
    fn dependency_errors() {
        let e = err(&with_service("depends_on = [\"chronyd\"]\n"));
        assert_eq!(e.key, "vcluster.vc.services.svc.depends_on[0]");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.message, "unknown service \"chronyd\" (this vCluster has: svc)");
        let e = err(&with_service("depends_on = [\"svc\"]\n"));
        assert_eq!(e.message, "service \"svc\" cannot depend on itself");
        let text = r#"
[vcluster.vc.services.a]
binary = "/bin/a"
depends_on = ["b"]
[vcluster.vc.services.b]
binary = "/bin/b"
depends_on = ["c"]
[vcluster.vc.services.c]
binary = "/bin/c"
depends_on = ["a"]
[vcluster.vc.services.d]
binary = "/bin/d"
depends_on = ["a"]
"#;
        let e = err(text);
        assert_eq!(e.key, "vcluster.vc.services.a.depends_on");
        assert_eq!(e.line, Some(4));
        assert_eq!(e.message, "dependency cycle: a -> b -> c -> a");
        // The same graph in array form.
        let e = err("[[vcluster.vc.services]]\nname = \"x\"\nbinary = \"/bin/x\"\ndepends_on = [\"y\"]\n[[vcluster.vc.services]]\nname = \"y\"\nbinary = \"/bin/y\"\ndepends_on = [\"x\"]\n");
        assert_eq!(e.key, "vcluster.vc.services[0].depends_on");
        assert_eq!(e.message, "dependency cycle: x -> y -> x");
        // A diamond is not a cycle.
        one("[vcluster.vc.services.a]\nbinary = \"/a\"\n[vcluster.vc.services.b]\nbinary = \"/b\"\ndepends_on = [\"a\"]\n[vcluster.vc.services.c]\nbinary = \"/c\"\ndepends_on = [\"a\"]\n[vcluster.vc.services.d]\nbinary = \"/d\"\ndepends_on = [\"b\", \"c\"]\n");
    }

    #[test]
    fn files_content_hash_and_mode() {
        let e = err("[vcluster.vc.files]\n\"/etc/motd\" = { mode = \"0644\" }\n");
        assert_eq!(e.key, "vcluster.vc.files.\"/etc/motd\"");
        assert_eq!(e.line, Some(2));
        assert_eq!(e.message, "file /etc/motd needs `content` or `content_hash`");
        let hash = content_hash("hi\n");
        assert_eq!(hash, "sha256:98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4");
        let spec = one(&format!("[vcluster.vc.files]\n\"/a\" = {{ content_hash = \"{hash}\" }}\n\"/b\" = {{ content = \"hi\\n\", content_hash = \"{hash}\" }}\n"));
        assert_eq!(spec.files[0].content_hash.as_deref(), Some(hash.as_str()));
        assert_eq!(spec.files[1].content.as_deref(), Some("hi\n"));
        let e = err(&format!("[vcluster.vc.files]\n\"/b\" = {{ content = \"bye\\n\", content_hash = \"{hash}\" }}\n"));
        assert!(e.message.starts_with("does not match the content"), "{e}");
        let e = err("[vcluster.vc.files]\n\"/a\" = { content_hash = \"md5:abc\" }\n");
        assert_eq!(e.key, "vcluster.vc.files.\"/a\".content_hash");
        let mode = |m: &str| -> Result<Option<u32>, ConfigError> {
            parse_spec("spec.toml", &format!("[vcluster.vc.files]\n\"/a\" = {{ content = \"\", mode = {m} }}\n"))
                .map(|s| s.vclusters[0].files[0].mode)
        };
        assert_eq!(mode("\"0644\"").unwrap(), Some(0o644));
        assert_eq!(mode("\"644\"").unwrap(), Some(0o644));
        assert_eq!(mode("\"0o600\"").unwrap(), Some(0o600));
        assert_eq!(mode("\"1777\"").unwrap(), Some(0o1777));
        assert_eq!(mode("0o755").unwrap(), Some(0o755));
        let e = mode("644").unwrap_err();
        assert_eq!(e.key, "vcluster.vc.files.\"/a\".mode");
        assert!(e.message.contains("write it as a string (\"0644\") or in octal (0o644)"), "{e}");
        assert!(mode("\"0999\"").is_err());
        assert!(mode("\"rw-r--r--\"").is_err());
        assert!(mode("0o17777").is_err());
        assert!(mode("true").is_err());
        let e = err("[vcluster.vc.files]\n\"etc/motd\" = { content = \"x\" }\n");
        assert!(e.message.starts_with("invalid path \"etc/motd\""), "{e}");
        let e = err("[vcluster.vc.mounts]\n\"/a/../b\" = { type = \"nfs\", source = \"a:/b\" }\n");
        assert!(e.message.starts_with("invalid path"), "{e}");
    }

    #[test]
    fn health_checks() {
        let e = err(&with_service("health_check = { type = \"http\" }\n"));
        assert_eq!(e.message, "missing required key `vcluster.vc.services.svc.health_check.url`");
        let e = err(&with_service("health_check = { type = \"tcp\", url = \"http://x/\" }\n"));
        assert_eq!(e.key, "vcluster.vc.services.svc.health_check.url");
        assert!(e.message.contains("type \"http\" only"), "{e}");
        let e = err(&with_service("health_check = { type = \"tcp\", port = 70000 }\n"));
        assert_eq!(e.key, "vcluster.vc.services.svc.health_check.port");
        let e = err(&with_service("health_check = { type = \"http\", url = \"localhost:80\" }\n"));
        assert!(e.message.starts_with("expected an http:// or https:// URL"), "{e}");
        let e = err(&with_service("health_check = { interval_seconds = 5 }\n"));
        assert_eq!(e.key, "vcluster.vc.services.svc.health_check.type");
        // A [table] works as well as an inline table.
        let spec = one(&with_service(
            "[vcluster.vc.services.svc.health_check]\ntype = \"tcp\"\nport = 22\ninterval_seconds = 7\n",
        ));
        assert_eq!(
            spec.services[0].health_check,
            Some(HealthCheck { check: Some(health_check::Check::TcpPort(22)), interval_seconds: 7 })
        );
    }

    #[test]
    fn sysctl_values_and_dotted_keys() {
        let spec = one("[vcluster.vc.sysctl]\n\"vm.swappiness\" = 10\nkernel.pid_max = \"4194304\"\n\"vm.x\" = 0.5\n");
        assert_eq!(spec.sysctl["vm.swappiness"], "10");
        assert_eq!(spec.sysctl["kernel.pid_max"], "4194304");
        assert_eq!(spec.sysctl["vm.x"], "0.5");
        let e = err("[vcluster.vc.sysctl]\n\"vm.swappiness\" = true\n");
        assert_eq!(e.key, "vcluster.vc.sysctl.\"vm.swappiness\"");
        assert_eq!(e.message, "expected a string or a number, found a boolean true");
        let e = err("[vcluster.vc.sysctl]\n\"vm.swappiness\" = 1\nvm.swappiness = 2\n");
        assert_eq!(e.message, "sysctl \"vm.swappiness\" is set twice");
        let e = err("[vcluster.vc.modules]\nload = [\"nvidia\", \"nvidia\"]\n");
        assert_eq!(e.key, "vcluster.vc.modules.load[1]");
    }

    #[test]
    fn file_level_errors() {
        let e = err("");
        assert_eq!(
            e.to_string(),
            "spec.toml: nothing declared: expected at least one [vcluster.NAME] or [node.NAME] table"
        );
        let e = err("[vcluster]\n");
        assert_eq!(e.line, Some(1));
        let e = err("[vcluster.vc]\nbase_image = \n");
        assert_eq!(e.line, Some(2));
        assert!(e.message.starts_with("invalid TOML"), "{e}");
        let e = err("[vcluster.vc]\nbase_image = \"a\"\n[vcluster.vc]\n");
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn node_tables_beside_and_without_vclusters() {
        let text = r#"
[vcluster.ml.sysctl]
"vm.swappiness" = "10"

[node.n2.sysctl]
"vm.nr_hugepages" = 64

[node.n1.mounts]
"/local" = { type = "xfs", source = "/dev/nvme0n1" }
[node.n1.services.probe]
binary = "/usr/bin/probe"
[node.n1.files]
"/etc/node-role" = { content = "login\n", mode = "0644" }
[node.n1.packages]
ipmitool = "1.8"
"#;
        let file = parse_spec("spec.toml", text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file.vclusters.len(), 1);
        assert_eq!(file.vclusters[0].vcluster_id, "ml");
        let ids: Vec<&str> = file.nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2"], "sorted by name");
        let n1 = &file.nodes[0].spec;
        // A node's spec names no vCluster: that comes from its assignment.
        assert_eq!(n1.vcluster_id, "");
        assert_eq!(n1.mounts["/local"].fs_type, "xfs");
        assert_eq!(n1.services[0].name, "probe");
        assert_eq!(n1.files[0].content.as_deref(), Some("login\n"));
        assert_eq!(n1.policy, None);
        let d = state_delta(n1);
        assert_eq!((d.mounts.len(), d.services.len(), d.files.len(), d.packages.len()), (1, 1, 1, 1));
        assert_eq!(file.nodes[1].spec.sysctl["vm.nr_hugepages"], "64");
        // Nodes alone are a complete file too.
        let only = parse_spec("spec.toml", "[node.x1000c0s0b0n0.sysctl]\n\"vm.swappiness\" = 1\n").unwrap();
        assert!(only.vclusters.is_empty());
        assert_eq!(only.nodes[0].node_id, "x1000c0s0b0n0");
    }

    #[test]
    fn node_keys_are_the_vcluster_keys_but_the_vcluster_wide_ones() {
        let mut both: Vec<&str> = NODE_KEYS.iter().chain(VCLUSTER_ONLY_KEYS).copied().collect();
        let mut all = VCLUSTER_KEYS.to_vec();
        both.sort_unstable();
        all.sort_unstable();
        assert_eq!(both, all);
    }

    #[test]
    fn node_table_errors() {
        // The vCluster-wide keys are unknown keys in a node table, with where they belong.
        for (text, key, line) in [
            ("[node.n1]\nbase_image = \"img\"\n", "base_image", 2),
            ("[node.n1]\nsysctl = {}\nsupervisor_backend = \"pact\"\n", "supervisor_backend", 3),
            ("[node.n1]\nuenv = \"prgenv\"\n", "uenv", 2),
            ("[node.n1.policy]\nregulated = true\n", "policy", 1),
        ] {
            let e = err(text);
            assert_eq!(e.key, format!("node.n1.{key}"), "{text}");
            assert_eq!(e.line, Some(line), "{text}");
            assert!(e.message.starts_with(&format!("unknown key `node.n1.{key}`")), "{e}");
            assert!(e.message.contains("vCluster-wide setting"), "{e}");
        }
        let e = err("[node.n1]\nsysctls = {}\n");
        assert_eq!(e.line, Some(2));
        assert_eq!(e.message, "unknown key `node.n1.sysctls` (did you mean `node.n1.sysctl`?)");
        let e = err("[nodes.n1]\n");
        assert_eq!(e.message, "unknown key `nodes` (did you mean `node`?)");
        let e = err("[vcluster.vc]\n[node.\"n 1\"]\n");
        assert_eq!(e.line, Some(2));
        assert!(e.message.starts_with("invalid node name \"n 1\""), "{e}");
        let e = err("[node]\n");
        assert_eq!((e.line, e.message.as_str()), (Some(1), "no node: expected at least one [node.NAME] table"));
        let e = err("[vcluster.vc]\n[node]\n");
        assert_eq!(e.line, Some(2));
        let e = err("[node.n1.files]\n\"/etc/x\" = { mode = \"0644\" }\n");
        assert_eq!((e.key.as_str(), e.line), ("node.n1.files.\"/etc/x\"", Some(2)));
        let e = err("[node.n1.services.a]\nbinary = \"/a\"\ndepends_on = [\"chronyd\"]\n");
        assert_eq!(e.key, "node.n1.services.a.depends_on[0]");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.message, "unknown service \"chronyd\" (this node has: a)");
        let e = err("[node.n1.sysctl]\n\"vm.swappiness\" = [1]\n");
        assert_eq!((e.key.as_str(), e.line), ("node.n1.sysctl.\"vm.swappiness\"", Some(2)));
    }

    #[test]
    fn output_is_deterministic() {
        let text = "[vcluster.b.services.z]\nbinary = \"/z\"\n[vcluster.b.services.y]\nbinary = \"/y\"\norder = 0\n[vcluster.a]\n[vcluster.b.files]\n\"/z\" = { content = \"\" }\n\"/a\" = { content = \"\" }\n";
        let specs = parse_spec("spec.toml", text).unwrap().vclusters;
        assert_eq!(specs, parse_spec("spec.toml", text).unwrap().vclusters);
        assert_eq!(specs[0].vcluster_id, "a");
        assert_eq!(specs[0], VClusterSpec { vcluster_id: "a".into(), ..VClusterSpec::default() });
        let names: Vec<&str> = specs[1].services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["y", "z"]);
        assert_eq!(specs[1].files[0].path, "/a");
    }

    #[test]
    fn state_delta_of_a_declared_spec() {
        let text = r#"
[vcluster.vc.sysctl]
"vm.swappiness" = "10"
[vcluster.vc.modules]
load = ["nvidia"]
[vcluster.vc.mounts]
"/scratch" = { type = "nfs", source = "s:/x", options = "ro", read_only = true }
[vcluster.vc.files]
"/etc/motd" = { content = "hi\n", mode = "0640", owner = "root", group = "adm" }
"/etc/issue" = { content_hash = "sha256:0000000000000000000000000000000000000000000000000000000000000000" }
[vcluster.vc.services.chronyd]
binary = "/usr/sbin/chronyd"
[vcluster.vc.services.old]
binary = "/usr/bin/old"
state = "stopped"
[vcluster.vc.network]
hsn0 = "mtu 9000"
[vcluster.vc.packages]
cuda-toolkit = "12.4"
"#;
        let d = state_delta(&one(text));
        let modify = DeltaAction::Modify as i32;
        let add = DeltaAction::Add as i32;
        assert_eq!(
            d.kernel,
            vec![
                KernelDelta {
                    key: "vm.swappiness".into(),
                    action: modify,
                    declared_value: Some("10".into()),
                    actual_value: None
                },
                KernelDelta { key: "module:nvidia".into(), action: add, declared_value: None, actual_value: None },
            ]
        );
        assert_eq!(
            d.mounts,
            vec![MountDelta {
                path: "/scratch".into(),
                action: add,
                declared: Some(MountSpec {
                    fs_type: "nfs".into(),
                    source: "s:/x".into(),
                    options: "ro".into(),
                    read_only: true
                }),
                actual: None,
            }]
        );
        assert_eq!(
            d.files,
            vec![
                FileDelta {
                    path: "/etc/issue".into(),
                    action: modify,
                    content_hash: Some(format!("sha256:{}", "0".repeat(64))),
                    mode: None,
                    owner: None,
                    group: None,
                    content: None,
                },
                FileDelta {
                    path: "/etc/motd".into(),
                    action: modify,
                    content_hash: Some(content_hash("hi\n")),
                    mode: Some(0o640),
                    owner: Some("root".into()),
                    group: Some("adm".into()),
                    content: None,
                },
            ]
        );
        assert_eq!(
            d.services,
            vec![
                ServiceDelta {
                    name: "chronyd".into(),
                    action: modify,
                    declared_state: Some("running".into()),
                    actual_state: None
                },
                ServiceDelta {
                    name: "old".into(),
                    action: modify,
                    declared_state: Some("stopped".into()),
                    actual_state: None
                },
            ]
        );
        assert_eq!(
            d.network,
            vec![NetworkDelta { interface: "hsn0".into(), action: modify, detail: Some("mtu 9000".into()) }]
        );
        assert_eq!(
            d.packages,
            vec![PackageDelta { name: "cuda-toolkit".into(), action: add, version: Some("12.4".into()) }]
        );
        assert!(d.gpu.is_empty());
        // An empty spec declares nothing.
        assert_eq!(state_delta(&VClusterSpec::default()), StateDelta::default());
    }

    #[test]
    fn example_file_state_delta() {
        let specs = parse_spec("ml-training.toml", EXAMPLE).unwrap().vclusters;
        let d = state_delta(&specs[1]);
        assert_eq!(d.kernel.len(), 5 + 4);
        assert_eq!(d.mounts.len(), 2);
        assert_eq!(d.files.len(), 2);
        assert_eq!(d.services.len(), 3);
        assert_eq!(d.network.len(), 1);
        assert_eq!(d.packages.len(), 1);
    }
}
