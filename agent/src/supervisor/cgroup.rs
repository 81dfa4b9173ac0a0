//! cgroup v2 file system helpers for the pact backend: the slice tree, controllers, limits,
//! killing a scope and removing it.
//!
//! Layout (the hpc-node contract that the workload scheduler expects):
//! `<root>/pact.slice/{infra,network,gpu,audit}.slice/<service>.scope` for services and
//! `<root>/workload.slice/`, created empty and never written again by pact. The `.scope`
//! suffix follows systemd's naming for a group of processes started by someone else than
//! systemd, so an admin reading the tree sees the familiar shape.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::spec::Slice;

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// The controllers services' limits need: memory.max, cpu.weight, io.max, pids.max.
pub const CONTROLLERS: [&str; 4] = ["memory", "cpu", "io", "pids"];

pub fn is_cgroup2(path: &Path) -> Result<bool, String> {
    let st = rustix::fs::statfs(path).map_err(|e| format!("statfs {}: {e}", path.display()))?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)] // f_type's width differs between libc targets
    Ok(st.f_type as u64 == CGROUP2_SUPER_MAGIC)
}

/// Writes one value to a cgroup file, in a single write(2): the kernel parses each write as
/// one command, so a split write would be two (or an error).
pub fn write(path: &Path, value: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// The controllers listed in `<dir>/cgroup.controllers` (what this cgroup may enable for its
/// children).
pub fn controllers(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

pub fn slice_dir(root: &Path, slice: Slice) -> PathBuf {
    root.join("pact.slice").join(format!("{}.slice", slice.name()))
}

pub fn scope_dir(root: &Path, slice: Slice, service: &str) -> PathBuf {
    slice_dir(root, slice).join(format!("{service}.scope"))
}

fn mkdir(p: &Path) -> Result<(), String> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("create cgroup {}: {e}", p.display())),
    }
}

/// Creates the slice tree and enables, level by level, those of [`CONTROLLERS`] the root
/// offers. Returns one line per fact worth logging (what was enabled, what is missing and
/// why), or an error when the tree itself cannot be made.
pub fn setup(root: &Path) -> Result<Vec<String>, String> {
    if !is_cgroup2(root)? {
        return Err(format!("{} is not a cgroup2 file system (mount one there first)", root.display()));
    }
    let mut notes = Vec::new();
    let pact = root.join("pact.slice");
    mkdir(&pact)?;
    mkdir(&root.join("workload.slice"))?;
    for s in Slice::ALL {
        mkdir(&slice_dir(root, s))?;
    }
    let offered = controllers(root);
    let missing: Vec<&str> = CONTROLLERS.iter().copied().filter(|c| !offered.contains(*c)).collect();
    if !missing.is_empty() {
        notes.push(format!(
            "cgroup controllers {} are not available in {} (its cgroup.controllers lists: {}); they are probably bound to a \
             cgroup v1 hierarchy. Declared {} will not be applied, and each affected service says so in its status",
            missing.join(", "),
            root.display(),
            if offered.is_empty() { "nothing".to_string() } else { offered.iter().cloned().collect::<Vec<_>>().join(" ") },
            missing.iter().map(|c| limit_file(c)).collect::<Vec<_>>().join(", ")
        ));
    }
    // Each level may only enable what its parent enabled; a failure at one level is reported
    // and the levels below simply see fewer controllers.
    let mut levels = vec![root.to_path_buf(), pact.clone()];
    levels.extend(Slice::ALL.iter().map(|s| slice_dir(root, *s)));
    for dir in &levels {
        let here = controllers(dir);
        for c in CONTROLLERS.iter().filter(|c| here.contains(**c)) {
            if let Err(e) = write(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
                notes
                    .push(format!("cannot enable the {c} controller in {}/cgroup.subtree_control: {e}", dir.display()));
            }
        }
    }
    let usable = controllers(&slice_dir(root, Slice::Infra));
    let usable: Vec<&str> = CONTROLLERS.iter().copied().filter(|c| usable.contains(*c)).collect();
    notes.push(format!(
        "cgroup controllers enabled for services: {}",
        if usable.is_empty() { "none".to_string() } else { usable.join(" ") }
    ));
    Ok(notes)
}

/// The interface file a controller's limit is written to.
pub fn limit_file(controller: &str) -> &'static str {
    match controller {
        "memory" => "memory.max",
        "cpu" => "cpu.weight",
        "io" => "io.max",
        _ => "pids.max",
    }
}

pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether any process (in this cgroup or below) is still alive, from `cgroup.events`.
pub fn populated(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("cgroup.events")) {
        Ok(t) => t.lines().any(|l| l == "populated 1"),
        Err(_) => !procs(dir).is_empty(),
    }
}

/// Kills every process in the cgroup: `cgroup.kill` (Linux ≥ 5.14) does it atomically, even
/// against a process that is forking; without it, SIGKILL each pid of `cgroup.procs` until
/// the list stays empty (bounded, since a fork bomb could refill it forever).
pub fn kill_all(dir: &Path) -> Result<(), String> {
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        return write(&kill, "1").map_err(|e| format!("{}: {e}", kill.display()));
    }
    for _ in 0..20 {
        let pids = procs(dir);
        if pids.is_empty() {
            return Ok(());
        }
        for p in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(p) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("{}: processes keep appearing after 20 rounds of SIGKILL", dir.display()))
}

/// Removes a scope once it is empty. Killed processes leave the cgroup asynchronously, so
/// this waits up to `wait` for `populated 0`; the caller retries later if it still fails.
pub fn remove(dir: &Path, wait: Duration) -> io::Result<()> {
    let until = Instant::now() + wait;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}
