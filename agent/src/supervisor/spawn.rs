//! The one `unsafe` of the supervisor: what a service's child process does between fork and
//! exec.
//!
//! **Why before exec.** Moving a process into its scope after `spawn` returned would leave a
//! window in which the service runs (and may fork) in the agent's own cgroup, outside its
//! limits, and its children would stay there. Writing "0" (meaning "the writer") to the
//! scope's `cgroup.procs` from the forked child, before `exec`, places the service before
//! any of its code runs; everything it forks later is born in the scope. The parent opens
//! `cgroup.procs` first, so the child only makes a write(2) on an inherited descriptor.
//! (`clone3(CLONE_INTO_CGROUP)` would do the same in one syscall, but std cannot spawn with
//! it.) If the write fails, exec does not happen and `spawn` returns the error.
//!
//! **Why setsid.** The service leads its own session and process group: a Ctrl-C on the
//! agent's console does not reach it, and it has no controlling terminal to lose.

use std::fs::File;
use std::process::Command;

/// Makes `cmd`'s child join the cgroup whose `cgroup.procs` is `procs` (None: an agent
/// running without cgroups, see `SupervisorConfig::cgroups_optional`) and start a new
/// session, before it execs.
#[allow(unsafe_code)]
pub fn enter_cgroup_before_exec(cmd: &mut std::process::Command, procs: Option<File>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child of a possibly multi-threaded parent, where
    // only async-signal-safe operations are allowed. It resets the signal mask (a zeroed
    // sigset_t, then sigemptyset and sigprocmask on it), then makes two raw syscalls through
    // rustix (setsid(2), and write(2) on a descriptor opened by the parent and owned by the
    // closure), allocates nothing, takes no lock, and turns an errno into io::Error without
    // allocating (`from_raw_os_error`).
    unsafe {
        cmd.pre_exec(move || {
            // The agent blocks the signals it reads through its signalfd, and a blocked mask
            // survives fork and exec: without this a service could never be stopped with
            // SIGTERM. sigprocmask(2) is async-signal-safe; the set lives on this stack.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            rustix::process::setsid()?;
            if let Some(procs) = &procs {
                rustix::io::write(procs, b"0")?;
            }
            Ok(())
        })
    }
}
