//! Service logs: `<log_dir>/<service>.log`, which the service's stdout and stderr append to
//! directly (no pipe, no copying thread: the agent stays small and a service never blocks on
//! the agent), bounded by copy-and-truncate rotation checked from the supervisor's tick.
//!
//! Rotation: when the file is over the limit, `.N-1` → `.N`, …, `.1` → `.2`, the file is
//! copied to `.1`, then truncated to zero. The service's descriptor is O_APPEND, so its next
//! write lands at the new end of file (no sparse hole). As with logrotate's `copytruncate`,
//! a line written between the copy and the truncate is lost; the window is one copy of at
//! most a little over `log_max_bytes`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn path(dir: &Path, service: &str) -> PathBuf {
    dir.join(format!("{service}.log"))
}

fn rotated(log: &Path, n: u32) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Opens (creating) a service's log for appending. Mode 0640: logs may hold things a
/// service prints about its configuration.
pub fn open(dir: &Path, service: &str) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    OpenOptions::new().append(true).create(true).mode(0o640).open(path(dir, service))
}

/// Appends one line from the supervisor itself (start, exit, kill), tagged so it cannot be
/// taken for the service's own output.
pub fn note(dir: &Path, service: &str, line: &str) {
    if let Ok(mut f) = open(dir, service) {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let _ = writeln!(f, "[pact-agent {}.{:03}] {line}", t.as_secs(), t.subsec_millis());
    }
}

/// Rotates `log` if it is over `max_bytes`, keeping `keep` old copies (0: just truncate).
/// Returns whether it rotated.
pub fn rotate_if_needed(log: &Path, max_bytes: u64, keep: u32) -> io::Result<bool> {
    let len = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    if keep > 0 {
        for n in (1..keep).rev() {
            match std::fs::rename(rotated(log, n), rotated(log, n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        std::fs::copy(log, rotated(log, 1))?;
    }
    // Not O_TRUNC through open(2) of a new description: set_len on a write handle is the
    // same ftruncate(2) and works whatever the service's descriptor does.
    OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_shifts_copies_and_keeps_at_most_keep() {
        let dir = std::env::temp_dir().join(format!("pact-logs-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = path(&dir, "svc");
        for round in 0..4 {
            let mut f = open(&dir, "svc").unwrap();
            f.write_all(format!("round {round} ").repeat(20).as_bytes()).unwrap();
            assert!(rotate_if_needed(&log, 100, 2).unwrap());
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        }
        assert!(!rotate_if_needed(&log, 100, 2).unwrap(), "an empty log is not rotated");
        assert!(std::fs::read_to_string(rotated(&log, 1)).unwrap().starts_with("round 3 "));
        assert!(std::fs::read_to_string(rotated(&log, 2)).unwrap().starts_with("round 2 "));
        assert!(!rotated(&log, 3).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
