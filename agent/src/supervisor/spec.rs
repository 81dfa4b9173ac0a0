//! Declarations: each `ServiceSpec` checked and normalised into a [`Decl`], and a set of them
//! put in start order.
//!
//! Both backends start from the same [`plan`], so a declaration means the same thing whichever
//! runs it: the same names are refused, the same limits are parsed the same way, and services
//! start in the same order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pact_proto::config::{health_check::Check, RestartPolicy, ServiceSpec};

/// The health-check interval when a declaration gives none (the CLI's default too).
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);

/// The base restart delay when `restart_delay_seconds` is 0: doubling from zero would never
/// back off, so a crash loop would spin; 100 ms is systemd's own `RestartSec` default.
pub const MIN_RESTART_DELAY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slice {
    Infra,
    Network,
    Gpu,
    Audit,
}

impl Slice {
    pub const ALL: [Slice; 4] = [Slice::Infra, Slice::Network, Slice::Gpu, Slice::Audit];

    pub fn name(self) -> &'static str {
        match self {
            Slice::Infra => "infra",
            Slice::Network => "network",
            Slice::Gpu => "gpu",
            Slice::Audit => "audit",
        }
    }

    /// Accepts the short name and the spellings the overlay examples use: "gpu", "gpu.slice",
    /// "pact.slice/gpu", "pact.slice/gpu.slice".
    fn parse(s: &str) -> Result<Slice, String> {
        let short = s.strip_prefix("pact.slice/").unwrap_or(s);
        let short = short.strip_suffix(".slice").unwrap_or(short);
        match short {
            "infra" => Ok(Slice::Infra),
            "network" => Ok(Slice::Network),
            "gpu" => Ok(Slice::Gpu),
            "audit" => Ok(Slice::Audit),
            // workload.slice is the workload scheduler's (pact never places anything there).
            "workload" => Err(format!(
                "cgroup_slice {s:?}: workload.slice belongs to the workload scheduler and pact places no \
                 service there; use infra, network, gpu or audit"
            )),
            _ => Err(format!("cgroup_slice {s:?}: expected infra, network, gpu or audit")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

/// A cgroup limit value: a number, or "max" (no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Max,
    Value(u64),
}

/// One `io.max` entry: a block device and its limits (`None` = "max").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoLimit {
    pub major: u32,
    pub minor: u32,
    /// (key, limit) in the order declared; key is rbps, wbps, riops or wiops.
    pub limits: Vec<(&'static str, Limit)>,
}

impl IoLimit {
    /// The line `io.max` takes.
    pub fn cgroup_line(&self) -> String {
        let mut s = format!("{}:{}", self.major, self.minor);
        for (k, v) in &self.limits {
            match v {
                Limit::Max => s.push_str(&format!(" {k}=max")),
                Limit::Value(n) => s.push_str(&format!(" {k}={n}")),
            }
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The main process is alive.
    Process,
    /// A TCP connect to 127.0.0.1:port succeeds.
    Tcp(u16),
    /// An HTTP GET of the URL answers 2xx.
    Http(String),
}

/// A checked declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct Decl {
    pub spec: ServiceSpec,
    pub slice: Slice,
    pub restart: Restart,
    /// The first restart delay; each consecutive restart doubles it up to the cap.
    pub base_delay: Duration,
    pub memory_max: Option<Limit>,
    pub cpu_weight: Option<u32>,
    pub io_max: Vec<IoLimit>,
    pub pids_max: Option<u32>,
    pub health: Option<(Probe, Duration)>,
    /// Declared state "running" (true) or "stopped" (false).
    pub run: bool,
}

impl Decl {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn depends_on(&self) -> &[String] {
        &self.spec.depends_on
    }

    /// Whether the two differ at most in `order` and `health_check`, which say nothing about
    /// the process itself: such a change is taken without restarting the service (as on the
    /// systemd backend, where neither is part of the unit).
    pub fn same_process(&self, other: &Decl) -> bool {
        let strip = |d: &Decl| ServiceSpec { order: 0, health_check: None, ..d.spec.clone() };
        strip(self) == strip(other)
    }
}

/// The CLI's rule, so that anything `pact apply` accepts is accepted here: a letter or digit,
/// then letters, digits, '-', '_', '.', '@'. The name ends up in file names, cgroup directory
/// names and unit names, so no '/' and no leading '.' can ever get through.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// "max", a number of bytes, or a number with a K/M/G/T suffix (powers of 1024, as the
/// kernel's memparse and systemd read them), normalised to bytes so both backends write the
/// same number.
pub fn parse_size(v: &str) -> Result<Limit, String> {
    if v == "max" {
        return Ok(Limit::Max);
    }
    let (digits, shift) = match v.as_bytes().last() {
        Some(b'K' | b'k') => (&v[..v.len() - 1], 10),
        Some(b'M' | b'm') => (&v[..v.len() - 1], 20),
        Some(b'G' | b'g') => (&v[..v.len() - 1], 30),
        Some(b'T' | b't') => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a size (bytes, a number with K/M/G/T, or \"max\")"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("{v:?} is too large"))?;
    n.checked_mul(1u64 << shift).map(Limit::Value).ok_or_else(|| format!("{v:?} is too large"))
}

/// cgroup v2 `io.max` syntax: one or more entries separated by newlines or ';', each
/// "MAJ:MIN key=value..." with keys rbps, wbps, riops, wiops and values a number or "max".
pub fn parse_io_max(v: &str) -> Result<Vec<IoLimit>, String> {
    let mut out = Vec::new();
    for entry in v.split(['\n', ';']).map(str::trim).filter(|e| !e.is_empty()) {
        let mut words = entry.split_whitespace();
        let dev = words.next().unwrap_or_default();
        let (major, minor) = dev
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("io.max entry {entry:?}: expected a device as MAJOR:MINOR first (e.g. \"8:0\")"))?;
        let mut limits = Vec::new();
        for w in words {
            let (k, val) =
                w.split_once('=').ok_or_else(|| format!("io.max entry {entry:?}: {w:?} is not key=value"))?;
            let key = ["rbps", "wbps", "riops", "wiops"]
                .into_iter()
                .find(|x| *x == k)
                .ok_or_else(|| format!("io.max entry {entry:?}: unknown key {k:?} (rbps, wbps, riops, wiops)"))?;
            if limits.iter().any(|(x, _)| *x == key) {
                return Err(format!("io.max entry {entry:?}: {key} given twice"));
            }
            let limit = if val == "max" {
                Limit::Max
            } else {
                Limit::Value(
                    val.parse().map_err(|_| format!("io.max entry {entry:?}: {val:?} is not a number or \"max\""))?,
                )
            };
            limits.push((key, limit));
        }
        if limits.is_empty() {
            return Err(format!("io.max entry {entry:?}: no limits given"));
        }
        out.push(IoLimit { major, minor, limits });
    }
    if out.is_empty() {
        return Err(format!("io.max {v:?}: no entries"));
    }
    Ok(out)
}

/// Checks one declaration on its own (names, limits, state, health check).
pub fn check(spec: &ServiceSpec) -> Result<Decl, String> {
    if !valid_name(&spec.name) {
        return Err(format!(
            "invalid service name {:?}: use letters, digits, '-', '_', '.' and '@', starting with a letter or digit",
            spec.name
        ));
    }
    if spec.binary.is_empty() || spec.binary.contains('\0') || spec.args.iter().any(|a| a.contains('\0')) {
        return Err("binary must be a non-empty path, and no argument may contain a NUL byte".into());
    }
    for (k, v) in &spec.env {
        if !valid_env_name(k) || v.contains('\0') {
            return Err(format!("invalid environment variable {k:?}"));
        }
    }
    let mut seen = BTreeSet::new();
    for d in &spec.depends_on {
        if !seen.insert(d) {
            return Err(format!("depends_on lists {d:?} twice"));
        }
    }
    let restart = match RestartPolicy::try_from(spec.restart) {
        Ok(RestartPolicy::Unspecified | RestartPolicy::Always) => Restart::Always,
        Ok(RestartPolicy::OnFailure) => Restart::OnFailure,
        Ok(RestartPolicy::Never) => Restart::Never,
        Err(_) => return Err(format!("unknown restart policy {}", spec.restart)),
    };
    let run = match spec.state.as_str() {
        "" | "running" => true,
        "stopped" => false,
        other => return Err(format!("state {other:?}: expected \"running\" or \"stopped\"")),
    };
    let slice = match &spec.cgroup_slice {
        None => Slice::Infra,
        Some(s) => Slice::parse(s)?,
    };
    let memory_max =
        spec.cgroup_memory_max.as_deref().map(parse_size).transpose().map_err(|e| format!("cgroup_memory_max: {e}"))?;
    if let Some(w) = spec.cgroup_cpu_weight {
        if !(1..=10_000).contains(&w) {
            return Err(format!("cgroup_cpu_weight {w}: expected 1 to 10000"));
        }
    }
    if spec.cgroup_pids_max == Some(0) {
        return Err("cgroup_pids_max 0 would forbid the service's own process".into());
    }
    let io_max = match &spec.cgroup_io_max {
        None => Vec::new(),
        Some(v) => parse_io_max(v).map_err(|e| format!("cgroup_io_max: {e}"))?,
    };
    let health = match &spec.health_check {
        None => None,
        Some(h) => {
            let interval = if h.interval_seconds == 0 {
                DEFAULT_HEALTH_INTERVAL
            } else {
                Duration::from_secs(u64::from(h.interval_seconds))
            };
            let probe = match &h.check {
                None => return Err("health_check names no check (process, http_url or tcp_port)".into()),
                Some(Check::Process(_)) => Probe::Process,
                Some(Check::TcpPort(p)) => match u16::try_from(*p) {
                    Ok(p) if p > 0 => Probe::Tcp(p),
                    _ => return Err(format!("health_check tcp_port {p}: expected 1 to 65535")),
                },
                Some(Check::HttpUrl(u)) => Probe::Http(u.clone()),
            };
            Some((probe, interval))
        }
    };
    let base_delay = Duration::from_secs(u64::from(spec.restart_delay_seconds)).max(MIN_RESTART_DELAY);
    Ok(Decl {
        spec: spec.clone(),
        slice,
        restart,
        base_delay,
        memory_max,
        cpu_weight: spec.cgroup_cpu_weight,
        io_max,
        pids_max: spec.cgroup_pids_max,
        health,
        run,
    })
}

/// A set of declarations in start order, and the ones refused with the reason.
#[derive(Debug, Default)]
pub struct Plan {
    pub decls: Vec<Decl>,
    pub rejected: Vec<(String, String)>,
}

/// Checks every declaration, then orders the accepted ones: dependencies first, then `order`,
/// then name. Refused, with the reason, are: declarations that fail [`check`], names declared
/// more than once (all copies: which one was meant is unknowable), services whose dependency
/// is not declared or was itself refused, and every service on or behind a dependency cycle.
/// A refused declaration is treated as absent: nothing of it runs.
pub fn plan(desired: &[ServiceSpec]) -> Plan {
    let mut rejected = Vec::new();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for s in desired {
        *count.entry(s.name.as_str()).or_default() += 1;
    }
    let mut decls: BTreeMap<String, Decl> = BTreeMap::new();
    for s in desired {
        if count[s.name.as_str()] > 1 {
            rejected
                .push((s.name.clone(), format!("service {:?} is declared {} times", s.name, count[s.name.as_str()])));
            continue;
        }
        match check(s) {
            Ok(d) => {
                decls.insert(d.spec.name.clone(), d);
            }
            Err(e) => rejected.push((s.name.clone(), e)),
        }
    }

    // Unknown dependencies, repeated until nothing more falls: refusing one service can leave
    // its dependents with an unknown dependency in turn.
    loop {
        let bad: Vec<(String, String)> = decls
            .values()
            .filter_map(|d| {
                let missing = d.depends_on().iter().find(|x| !decls.contains_key(x.as_str()))?;
                let why = if rejected.iter().any(|(n, _)| n == missing) {
                    format!("depends on {missing:?}, whose declaration was refused")
                } else {
                    format!("depends on {missing:?}, which is not declared")
                };
                Some((d.name().to_string(), why))
            })
            .collect();
        if bad.is_empty() {
            break;
        }
        for (n, why) in bad {
            decls.remove(&n);
            rejected.push((n, why));
        }
    }

    // Kahn's algorithm; among the services whose dependencies are all placed, the lowest
    // (order, name) goes next.
    let mut waiting_on: BTreeMap<&str, usize> = decls.iter().map(|(n, d)| (n.as_str(), d.depends_on().len())).collect();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (n, d) in &decls {
        for dep in d.depends_on() {
            dependents.entry(dep.as_str()).or_default().push(n.as_str());
        }
    }
    let mut ready: BTreeSet<(u32, &str)> =
        waiting_on.iter().filter(|(_, c)| **c == 0).map(|(n, _)| (decls[*n].spec.order, *n)).collect();
    let mut sorted: Vec<String> = Vec::new();
    while let Some(first) = ready.pop_first() {
        sorted.push(first.1.to_string());
        for dep in dependents.get(first.1).map(Vec::as_slice).unwrap_or_default() {
            let c = waiting_on.get_mut(dep).expect("every dependent is declared");
            *c -= 1;
            if *c == 0 {
                ready.insert((decls[*dep].spec.order, *dep));
            }
        }
    }
    if sorted.len() < decls.len() {
        let placed: BTreeSet<&str> = sorted.iter().map(String::as_str).collect();
        let left: Vec<&str> = decls.keys().map(String::as_str).filter(|n| !placed.contains(n)).collect();
        for n in &left {
            let why = match find_cycle(n, &decls) {
                Some(cycle) => format!("dependency cycle: {}", cycle.join(" -> ")),
                None => {
                    let blocked = decls[*n]
                        .depends_on()
                        .iter()
                        .find(|d| !placed.contains(d.as_str()))
                        .cloned()
                        .unwrap_or_default();
                    format!("depends on {blocked:?}, which is caught in a dependency cycle")
                }
            };
            rejected.push((n.to_string(), why));
        }
    }
    Plan { decls: sorted.iter().map(|n| decls.remove(n).expect("sorted names are declared")).collect(), rejected }
}

/// A path from `start` back to itself through `depends_on`, if `start` lies on a cycle.
fn find_cycle(start: &str, decls: &BTreeMap<String, Decl>) -> Option<Vec<String>> {
    fn walk(
        at: &str,
        start: &str,
        decls: &BTreeMap<String, Decl>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for d in decls.get(at).map(Decl::depends_on).unwrap_or_default() {
            if d == start {
                path.push(d.clone());
                return true;
            }
            if seen.insert(d.clone()) {
                path.push(d.clone());
                if walk(d, start, decls, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(start, start, decls, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, order: u32, deps: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            binary: "/bin/true".into(),
            order,
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.decls.iter().map(Decl::name).collect()
    }

    #[test]
    fn order_is_dependencies_then_order_then_name() {
        let p =
            plan(&[svc("web", 1, &["db"]), svc("db", 9, &[]), svc("b", 1, &[]), svc("a", 1, &[]), svc("ntp", 0, &[])]);
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        // web has the lowest order among the late ones, but waits for db (order 9).
        assert_eq!(names(&p), ["ntp", "a", "b", "db", "web"]);
    }

    #[test]
    fn unknown_dependencies_cycles_and_duplicates_are_refused() {
        let p = plan(&[
            svc("ok", 0, &[]),
            svc("orphan", 0, &["nowhere"]),
            svc("behind-orphan", 0, &["orphan"]),
            svc("x", 0, &["y"]),
            svc("y", 0, &["x"]),
            svc("behind-cycle", 0, &["x"]),
            svc("self", 0, &["self"]),
            svc("twice", 0, &[]),
            svc("twice", 1, &[]),
        ]);
        assert_eq!(names(&p), ["ok"]);
        let why: BTreeMap<&str, &str> = p.rejected.iter().map(|(n, w)| (n.as_str(), w.as_str())).collect();
        assert_eq!(why["orphan"], "depends on \"nowhere\", which is not declared");
        assert_eq!(why["behind-orphan"], "depends on \"orphan\", whose declaration was refused");
        assert_eq!(why["x"], "dependency cycle: x -> y -> x");
        assert_eq!(why["y"], "dependency cycle: y -> x -> y");
        assert_eq!(why["behind-cycle"], "depends on \"x\", which is caught in a dependency cycle");
        assert_eq!(why["self"], "dependency cycle: self -> self");
        assert_eq!(why["twice"], "service \"twice\" is declared 2 times");
    }

    #[test]
    fn limits_are_parsed_and_bad_ones_refused() {
        assert_eq!(parse_size("512M"), Ok(Limit::Value(512 << 20)));
        assert_eq!(parse_size("4096"), Ok(Limit::Value(4096)));
        assert_eq!(parse_size("max"), Ok(Limit::Max));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
        let io = parse_io_max("8:0 rbps=1048576 wiops=max; 259:1 wbps=2097152").unwrap();
        assert_eq!(io.len(), 2);
        assert_eq!(io[0].cgroup_line(), "8:0 rbps=1048576 wiops=max");
        assert_eq!(io[1].cgroup_line(), "259:1 wbps=2097152");
        assert!(parse_io_max("default rbps=1").is_err());
        assert!(parse_io_max("8:0 speed=1").is_err());
        assert!(parse_io_max("8:0").is_err());

        let mut s = svc("a", 0, &[]);
        s.cgroup_slice = Some("pact.slice/gpu".into());
        assert_eq!(check(&s).unwrap().slice, Slice::Gpu);
        s.cgroup_slice = Some("workload".into());
        assert!(check(&s).unwrap_err().contains("workload scheduler"));
        s.cgroup_slice = None;
        s.cgroup_cpu_weight = Some(0);
        assert!(check(&s).is_err());
        s.cgroup_cpu_weight = None;
        s.state = "paused".into();
        assert!(check(&s).is_err());
        s.state = String::new();
        s.name = "../etc".into();
        assert!(check(&s).is_err());
    }
}
