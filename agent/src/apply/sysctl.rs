//! Sysctls: `<proc_sys>/<key>` with the dots of the key turned into `/` (a key that already
//! uses `/` is taken as it is, which is how `sysctl(8)` names keys whose parts contain dots,
//! e.g. `net/ipv4/conf/eth0.100/rp_filter`).
//!
//! The current value is read first; when it equals the declared one with whitespace
//! normalised (the kernel prints vectors tab-separated: `net.ipv4.tcp_rmem` reads
//! `4096\t131072\t6291456`) the key is [`Outcome::Unchanged`] and nothing is written. A key
//! with no file is "no such sysctl"; a value the kernel refuses fails with its errno text.
//! The written value is not read back: several keys print a value in another form than they
//! accept (`kernel.printk` takes one number and prints four), so a re-read would report false
//! failures; the next apply compares again anyway.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::Outcome;

/// The file a key lives in, or why the key is not a valid name.
pub fn key_path(proc_sys: &Path, key: &str) -> Result<PathBuf, String> {
    let rel = if key.contains('/') { key.to_string() } else { key.replace('.', "/") };
    let mut out = proc_sys.to_path_buf();
    for part in rel.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("invalid sysctl key {key:?}"));
        }
        out.push(part);
    }
    Ok(out)
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn apply(proc_sys: &Path, key: &str, value: &str) -> Outcome {
    let path = match key_path(proc_sys, key) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e),
    };
    let current = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Outcome::Failed(format!("no such sysctl {key} ({})", path.display()));
        }
        // Write-only keys (vm.compact_memory, ...) cannot be compared: write them.
        Err(e) if e.kind() == ErrorKind::PermissionDenied => String::new(),
        Err(e) => return Outcome::Failed(format!("reading {}: {e}", path.display())),
    };
    if !current.is_empty() && normalise(&current) == normalise(value) {
        return Outcome::Unchanged;
    }
    // One write(2) of the whole value: procfs parses each write on its own, so a value split
    // over two writes would be taken as two values. Truncation matters only for tests that
    // point proc_sys at ordinary files; procfs ignores it.
    let written =
        OpenOptions::new().write(true).truncate(true).open(&path).and_then(|mut f| f.write_all(value.as_bytes()));
    match written {
        Ok(()) => Outcome::Applied,
        Err(e) => Outcome::Failed(format!("writing {:?} to {}: {e}", value, path.display())),
    }
}
