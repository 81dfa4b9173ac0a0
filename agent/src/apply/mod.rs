//! Applying declared config to the node: hostname, sysctl, kernel modules, mounts and files.
//!
//! The input is what a node streams from the journal: its vCluster's overlay and its own
//! declared spec (`NodeDeltaBody.node_spec`), combined by [`merge`]. [`apply_all`] then makes the
//! node match, dimension by dimension in a fixed order (hostname, sysctl, modules, mounts,
//! files: modules before mounts because a file system may come from a module, mounts before
//! files because a file may live on a mount), and reports every item with its [`Outcome`].
//! One failing item never stops the others.
//!
//! **Idempotent, so live updates simply re-apply.** Every item is compared with what the node
//! has before anything is changed, and an item that already matches is reported
//! [`Outcome::Unchanged`] without being touched (a sysctl is read, `/proc/modules` is read, the
//! mount table is read, a file is compared). That is cheap enough (no process is started, no
//! network is touched for a mount that is already there) that the live-update path may call
//! `apply_all` with the whole new merged spec. [`diff`] exists for what re-applying cannot tell:
//! which items a new spec *dropped* (apply never undoes an item: a sysctl's earlier value is
//! unknown, unloading a module or unmounting a file system under a running job is the admin's
//! call), and to narrow a re-apply to the changed items when the caller wants its report to
//! list only those.
//!
//! **Not applied here:** `network`, `packages` and `uenv` produce no items (they arrive with
//! their own issues); `services` belong to the supervisor.
//!
//! Per dimension, see the module docs of [`hostname`], [`sysctl`], [`modules`], [`mounts`] and
//! [`files`] (what counts as unchanged, how NFS is mounted, what a timed-out mount leaves behind,
//! how modules and their dependencies are found).

pub mod files;
pub mod hostname;
pub mod modules;
pub mod mounts;
pub mod sysctl;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use pact_proto::config::VClusterSpec;

/// How long a mount that may block on I/O (NFS and every other non-local type) may take before
/// it is reported as timed out, when the caller has no better number.
pub const DEFAULT_NFS_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the node's state lives. On a node every path is the real one ([`Target::system`]);
/// tests point `root`, `proc_sys` and `modules_dir` at temporary directories.
#[derive(Debug, Clone)]
pub struct Target {
    /// Declared paths (files, mount points, bind sources) are taken relative to this: "/" on a node.
    pub root: PathBuf,
    /// Where sysctls are read and written: `/proc/sys` on a node.
    pub proc_sys: PathBuf,
    /// Where kernel modules are looked up: `/lib/modules/<uname -r>` on a node.
    pub modules_dir: PathBuf,
    /// How long a mount that may block on the network (NFS, ...) may take.
    pub nfs_timeout: Duration,
}

impl Target {
    /// The running system: `/`, `/proc/sys`, `/lib/modules/<uname -r>`.
    pub fn system(nfs_timeout: Duration) -> Target {
        let release = rustix::system::uname().release().to_string_lossy().into_owned();
        Target {
            root: PathBuf::from("/"),
            proc_sys: PathBuf::from("/proc/sys"),
            modules_dir: Path::new("/lib/modules").join(release),
            nfs_timeout,
        }
    }

    /// A declared absolute path under `root`. Refused: relative paths and `.`/`..` components
    /// (a declared path must not escape the root, and must name one place unambiguously).
    pub fn resolve(&self, declared: &str) -> Result<PathBuf, String> {
        let p = Path::new(declared);
        let mut comps = p.components();
        if comps.next() != Some(Component::RootDir) {
            return Err(format!("{declared:?} is not an absolute path"));
        }
        let mut out = self.root.clone();
        for c in comps {
            match c {
                Component::Normal(n) => out.push(n),
                _ => return Err(format!("{declared:?} contains '.' or '..'")),
            }
        }
        Ok(out)
    }
}

/// What happened to one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node did not match and now does.
    Applied,
    /// The node already matched; nothing was changed.
    Unchanged,
    /// The item could not be applied; the text says why (with the OS error where there is one).
    Failed(String),
    /// The item was not attempted because something it depends on failed (e.g. a file under
    /// a mount that did not come up); the text says what.
    Skipped(String),
}

/// The outcome of one declared item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    /// "hostname" | "sysctl" | "modules" | "mounts" | "files".
    pub dimension: &'static str,
    /// The hostname, sysctl key, module name, mount point or file path (as declared).
    pub item: String,
    pub outcome: Outcome,
    pub took: Duration,
}

/// The dimensions [`apply_all`] reports, in the order it applies them.
pub const DIMENSIONS: [&str; 5] = ["hostname", "sysctl", "modules", "mounts", "files"];

/// The node's effective spec: the vCluster overlay with the node's own declarations on top.
///
/// Key by key the node wins: `sysctl`, `mounts`, `network` and `packages` are unioned with the
/// node's value replacing the overlay's; `files` are matched by path and `services` by name (a
/// node entry replaces the overlay's entry in place, new ones follow in the node's order);
/// `modules` are the overlay's, then the node's that the overlay does not already load.
/// `vcluster_id`, `base_image`, `supervisor_backend`, `policy` and `uenv` are the overlay's: a
/// node cannot declare its own policy or image.
pub fn merge(overlay: &VClusterSpec, node: Option<&VClusterSpec>) -> VClusterSpec {
    let mut out = overlay.clone();
    let Some(node) = node else { return out };
    for (k, v) in &node.sysctl {
        out.sysctl.insert(k.clone(), v.clone());
    }
    for (k, v) in &node.mounts {
        out.mounts.insert(k.clone(), v.clone());
    }
    for (k, v) in &node.network {
        out.network.insert(k.clone(), v.clone());
    }
    for (k, v) in &node.packages {
        out.packages.insert(k.clone(), v.clone());
    }
    for m in &node.modules {
        if !out.modules.contains(m) {
            out.modules.push(m.clone());
        }
    }
    for f in &node.files {
        match out.files.iter_mut().find(|x| x.path == f.path) {
            Some(x) => *x = f.clone(),
            None => out.files.push(f.clone()),
        }
    }
    for s in &node.services {
        match out.services.iter_mut().find(|x| x.name == s.name) {
            Some(x) => *x = s.clone(),
            None => out.services.push(s.clone()),
        }
    }
    out
}

/// Makes the node match `spec` (and `hostname`, when given), in the order hostname, sysctl,
/// modules, mounts, files. Returns one result per item, in that order; within a dimension, in
/// the spec's order (maps in key order, so a parent mount point comes before the mounts under it).
pub fn apply_all(spec: &VClusterSpec, hostname: Option<&str>, t: &Target) -> Vec<ItemResult> {
    let mut out = Vec::new();
    if let Some(h) = hostname {
        out.push(timed("hostname", h, || hostname::apply(h)));
    }
    for (key, value) in &spec.sysctl {
        out.push(timed("sysctl", key, || sysctl::apply(&t.proc_sys, key, value)));
    }
    if !spec.modules.is_empty() {
        let mut loader = modules::Loader::new(t);
        for m in &spec.modules {
            out.push(timed("modules", m, || loader.load(m)));
        }
    }
    // Mount points that did not come up: nothing is mounted or written beneath them, or it
    // would be hidden (and look lost) once the mount succeeds on a later apply.
    let mut failed_mounts: Vec<PathBuf> = Vec::new();
    for (path, m) in &spec.mounts {
        let r = timed("mounts", path, || match under_failed(t, path, &failed_mounts) {
            Some(skip) => skip,
            None => mounts::apply(t, path, m),
        });
        if matches!(r.outcome, Outcome::Failed(_) | Outcome::Skipped(_)) {
            if let Ok(p) = t.resolve(path) {
                failed_mounts.push(p);
            }
        }
        out.push(r);
    }
    for f in &spec.files {
        out.push(timed("files", &f.path, || match under_failed(t, &f.path, &failed_mounts) {
            Some(skip) => skip,
            None => files::apply(t, f),
        }));
    }
    out
}

fn under_failed(t: &Target, declared: &str, failed: &[PathBuf]) -> Option<Outcome> {
    let p = t.resolve(declared).ok()?;
    let m = failed.iter().find(|m| p.starts_with(m))?;
    let rel = m.strip_prefix(&t.root).unwrap_or(m);
    Some(Outcome::Skipped(format!("under the mount /{}, which did not come up", rel.display())))
}

/// Runs one item, timed. A panic (a bug) fails that item instead of ending the apply, and
/// with it possibly the agent running as PID 1.
fn timed(dimension: &'static str, item: &str, f: impl FnOnce() -> Outcome) -> ItemResult {
    let start = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        Outcome::Failed(format!("internal error: {}", msg.unwrap_or_else(|| "panic".into())))
    });
    ItemResult { dimension, item: item.to_string(), outcome, took: start.elapsed() }
}

/// What changed between two merged specs, in the dimensions [`apply_all`] applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecDiff {
    /// A spec holding only the new or changed sysctls, modules, mounts and files (everything
    /// else empty): `apply_all(&d.changed, ..)` touches only those.
    pub changed: VClusterSpec,
    /// `(dimension, item)` for each item `old` declared and `new` no longer does. Apply does
    /// not undo them; the caller decides (and reports) what to do.
    pub removed: Vec<(&'static str, String)>,
}

impl SpecDiff {
    /// True when nothing apply cares about changed.
    pub fn is_empty(&self) -> bool {
        let c = &self.changed;
        self.removed.is_empty()
            && c.sysctl.is_empty()
            && c.modules.is_empty()
            && c.mounts.is_empty()
            && c.files.is_empty()
    }
}

/// Which sysctls, modules, mounts and files `new` adds or changes relative to `old`, and which
/// it drops. Hostname, services, network, packages and uenv are not compared.
pub fn diff(old: &VClusterSpec, new: &VClusterSpec) -> SpecDiff {
    let mut d = SpecDiff::default();
    d.changed.sysctl = changed_entries(&old.sysctl, &new.sysctl);
    d.changed.mounts = changed_entries(&old.mounts, &new.mounts);
    d.changed.modules = new.modules.iter().filter(|m| !old.modules.contains(m)).cloned().collect();
    d.changed.files =
        new.files.iter().filter(|f| old.files.iter().find(|o| o.path == f.path) != Some(*f)).cloned().collect();
    let removed_keys = |o: Vec<&String>, dim: &'static str, d: &mut SpecDiff| {
        d.removed.extend(o.into_iter().map(|k| (dim, k.clone())));
    };
    removed_keys(old.sysctl.keys().filter(|k| !new.sysctl.contains_key(*k)).collect(), "sysctl", &mut d);
    removed_keys(old.modules.iter().filter(|m| !new.modules.contains(m)).collect(), "modules", &mut d);
    removed_keys(old.mounts.keys().filter(|k| !new.mounts.contains_key(*k)).collect(), "mounts", &mut d);
    removed_keys(
        old.files.iter().map(|f| &f.path).filter(|p| !new.files.iter().any(|f| &f.path == *p)).collect(),
        "files",
        &mut d,
    );
    d
}

fn changed_entries<V: Clone + PartialEq>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A report for the console and the log: the first line counts the outcomes per dimension
/// (dimensions without items are left out), then one line per failed or skipped item.
///
/// ```text
/// apply: hostname 1 unchanged; sysctl 2 applied, 1 failed; mounts 1 applied (0.012 s)
/// FAILED sysctl kernel.nope: no such sysctl kernel.nope (/proc/sys/kernel/nope)
/// ```
pub fn summary(results: &[ItemResult]) -> String {
    if results.is_empty() {
        return "apply: nothing declared".to_string();
    }
    let mut parts = Vec::new();
    for dim in DIMENSIONS {
        let (mut applied, mut unchanged, mut failed, mut skipped) = (0, 0, 0, 0);
        for r in results.iter().filter(|r| r.dimension == dim) {
            match r.outcome {
                Outcome::Applied => applied += 1,
                Outcome::Unchanged => unchanged += 1,
                Outcome::Failed(_) => failed += 1,
                Outcome::Skipped(_) => skipped += 1,
            }
        }
        let counts: Vec<String> =
            [(applied, "applied"), (unchanged, "unchanged"), (failed, "failed"), (skipped, "skipped")]
                .into_iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{n} {what}"))
                .collect();
        if !counts.is_empty() {
            parts.push(format!("{dim} {}", counts.join(", ")));
        }
    }
    let total: Duration = results.iter().map(|r| r.took).sum();
    let mut s = format!("apply: {} ({:.3} s)", parts.join("; "), total.as_secs_f64());
    for r in results {
        let (tag, why) = match &r.outcome {
            Outcome::Failed(why) => ("FAILED", why),
            Outcome::Skipped(why) => ("SKIPPED", why),
            _ => continue,
        };
        let _ = write!(s, "\n{tag} {} {}: {why}", r.dimension, r.item);
    }
    s
}

/// An OS error as text with its errno ("Invalid argument (os error 22)").
pub(crate) fn errno_text(e: rustix::io::Errno) -> String {
    std::io::Error::from(e).to_string()
}
