//! PID 1 duties: the pseudo filesystems, the console, reaping, the watchdog, the agent's own
//! OOM protection, and the shutdown sequence. When the agent is not PID 1 (an ordinary
//! service on a node with systemd, or a test), it becomes the child subreaper instead, so
//! the services' orphaned grandchildren are still its to reap.

use rustix::mount::{MountFlags, UnmountFlags};
use rustix::process::WaitOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

/// What one early step did, for the boot log.
pub type Step = (String, Result<(), String>);

/// Mounts the pseudo filesystems a diskless node's init must provide, in order; each one
/// already mounted (by an initramfs wrapper, or a kernel that automounts devtmpfs) is kept.
pub fn mount_pseudo_filesystems() -> Vec<Step> {
    let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let table: [(&str, &str, &str, MountFlags, &str); 8] = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, ""),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, ""),
        ("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID, "mode=0755"),
        ("devpts", "/dev/pts", "devpts", MountFlags::NOSUID | MountFlags::NOEXEC, "gid=5,mode=0620,ptmxmode=0666"),
        ("tmpfs", "/dev/shm", "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, "mode=1777"),
        ("tmpfs", "/run", "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, "mode=1777"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid_nodev_noexec, "nsdelegate"),
    ];
    let mut out = Vec::new();
    for (src, target, fstype, flags, data) in table {
        let r = (|| {
            if is_mount_point(target) {
                return Ok(());
            }
            std::fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
            let data = std::ffi::CString::new(data).map_err(|e| e.to_string())?;
            rustix::mount::mount(src, target, fstype, flags, data.as_c_str())
                .map_err(|e| format!("mount {fstype} on {target}: {e}"))
        })();
        out.push((format!("mount {target}"), r));
    }
    out
}

/// Whether `path` is a mount point, from /proc/self/mountinfo (false before /proc exists).
pub fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| t.lines().any(|l| l.split(' ').nth(4) == Some(path)))
        .unwrap_or(false)
}

/// Points stdin, stdout and stderr at /dev/console when the kernel left them closed or
/// pointing nowhere, so the boot log reaches the serial console.
pub fn setup_console() -> Result<(), String> {
    use std::os::fd::AsFd;
    let console = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .map_err(|e| format!("/dev/console: {e}"))?;
    let results = [
        rustix::stdio::dup2_stdin(console.as_fd()),
        rustix::stdio::dup2_stdout(console.as_fd()),
        rustix::stdio::dup2_stderr(console.as_fd()),
    ];
    for (fd, r) in results.into_iter().enumerate() {
        r.map_err(|e| format!("dup2 /dev/console to fd {fd}: {e}"))?;
    }
    Ok(())
}

/// The agent is the last process the kernel should kill for memory.
pub fn protect_from_oom() -> Result<(), String> {
    std::fs::write("/proc/self/oom_score_adj", "-1000").map_err(|e| format!("/proc/self/oom_score_adj: {e}"))
}

pub fn become_subreaper() -> Result<(), String> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Reaps every child that has ended (ours or reparented orphans), without blocking.
pub fn reap_all() -> Vec<(i32, Exit)> {
    let mut out = Vec::new();
    while let Ok(Some((pid, st))) = rustix::process::wait(WaitOptions::NOHANG) {
        let exit = match (st.exit_status(), st.terminating_signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            _ => continue, // stopped/continued: not an end
        };
        out.push((pid.as_raw_nonzero().get(), exit));
    }
    out
}

/// The hardware watchdog, petted from the main loop. Any write pets it; the magic 'V' before
/// close disarms it (when the driver allows), which a clean shutdown does just before
/// reboot(2) so the node is not reset halfway through unmounting.
pub struct Watchdog {
    file: std::fs::File,
    last: Instant,
    /// A third of the driver's timeout (so two missed pets still leave time), within
    /// [`WATCHDOG_PET_MIN`]..=[`WATCHDOG_PET`]; [`WATCHDOG_PET`] when the driver does not say.
    every: Duration,
    /// The driver's timeout, when it answered WDIOC_GETTIMEOUT.
    pub timeout: Option<Duration>,
}

/// Longest pet interval: well under any real watchdog's usual timeout (drivers default to
/// 30-60 s).
pub const WATCHDOG_PET: Duration = Duration::from_secs(5);
/// Shortest pet interval, for watchdogs set to a timeout of a few seconds.
pub const WATCHDOG_PET_MIN: Duration = Duration::from_millis(500);

/// `WDIOC_GETTIMEOUT` = `_IOR('W', 7, int)` (linux/watchdog.h).
const WDIOC_GETTIMEOUT: libc::c_ulong = 0x8004_5707;

/// The timeout the watchdog driver behind `file` will fire after, in seconds.
#[allow(unsafe_code)]
fn watchdog_timeout(file: &std::fs::File) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut secs: libc::c_int = 0;
    // SAFETY: WDIOC_GETTIMEOUT writes one c_int through the pointer, which points at a live
    // c_int on this stack; the descriptor is open for the duration of the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_GETTIMEOUT as _, &mut secs as *mut libc::c_int) };
    (r == 0 && secs > 0).then_some(secs as u32)
}

/// How often to pet a watchdog that fires after `timeout` (None: the driver did not say).
pub fn pet_interval_for(timeout: Option<Duration>) -> Duration {
    timeout.map_or(WATCHDOG_PET, |t| (t / 3).clamp(WATCHDOG_PET_MIN, WATCHDOG_PET))
}

impl Watchdog {
    /// Opens the device, which arms it: from here on the node resets unless it is petted.
    pub fn open(path: &Path) -> Option<Result<Watchdog, String>> {
        if !path.exists() {
            return None;
        }
        Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map(|file| {
                    let timeout = watchdog_timeout(&file).map(|s| Duration::from_secs(u64::from(s)));
                    let every = pet_interval_for(timeout);
                    Watchdog { file, last: Instant::now() - every, every, timeout }
                })
                .map_err(|e| format!("{}: {e}", path.display())),
        )
    }

    pub fn pet_interval(&self) -> Duration {
        self.every
    }

    pub fn pet_if_due(&mut self, now: Instant) {
        if now.duration_since(self.last) >= self.every {
            let _ = self.file.write_all(b"\0");
            self.last = now;
        }
    }

    pub fn next_due(&self) -> Instant {
        self.last + self.every
    }

    pub fn disarm(mut self) {
        let _ = self.file.write_all(b"V");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

/// The end of a PID 1: sync, unmount everything it can (deepest first, lazily when busy),
/// sync again, then reboot(2). Never returns on success; returns the error otherwise so the
/// caller can keep reaping.
pub fn power(action: PowerAction) -> String {
    rustix::fs::sync();
    let mut targets: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| t.lines().filter_map(|l| l.split(' ').nth(4).map(str::to_string)).collect())
        .unwrap_or_default();
    targets.reverse();
    for t in targets.iter().filter(|t| t.as_str() != "/") {
        if rustix::mount::unmount(t.as_str(), UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(t.as_str(), UnmountFlags::DETACH);
        }
    }
    let _ = rustix::mount::mount_remount("/", MountFlags::RDONLY, "");
    rustix::fs::sync();
    let cmd = match action {
        PowerAction::PowerOff => rustix::system::RebootCommand::PowerOff,
        PowerAction::Reboot => rustix::system::RebootCommand::Restart,
    };
    match rustix::system::reboot(cmd) {
        Ok(()) => "reboot(2) returned".into(),
        Err(e) => format!("reboot(2): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pet_interval_follows_the_timeout() {
        let s = Duration::from_secs;
        assert_eq!(pet_interval_for(None), WATCHDOG_PET);
        assert_eq!(pet_interval_for(Some(s(60))), WATCHDOG_PET);
        assert_eq!(pet_interval_for(Some(s(6))), s(2));
        assert_eq!(pet_interval_for(Some(s(1))), WATCHDOG_PET_MIN);
    }
}
