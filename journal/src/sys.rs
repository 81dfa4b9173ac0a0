//! The few raw syscalls the journal needs: signal masking and waiting, and an exclusive
//! lock on the data dir. Kept here so `unsafe` stays in one small, reviewed place.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::path::Path;

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and every thread it spawns
/// afterwards), so only `wait_for_signal` sees them.
pub fn block_shutdown_signals() {
    let set = shutdown_signals();
    // SAFETY: pthread_sigmask only reads the initialised set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Waits for one of the blocked signals; returns its number.
pub fn wait_for_signal() -> i32 {
    let set = shutdown_signals();
    // SAFETY: sigwait reads the initialised set and writes the signal number into `sig`.
    unsafe {
        let mut sig: libc::c_int = 0;
        loop {
            if libc::sigwait(&set, &mut sig) == 0 {
                return sig;
            }
        }
    }
}

/// Takes an exclusive, non-blocking lock on `<dir>/LOCK`. Two journals on one data dir
/// would corrupt each other's view of the raft log; the second is refused.
pub fn lock_data_dir(dir: &Path) -> Result<File, String> {
    let path = dir.join("LOCK");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(format!("{} is locked: another pact-journal is using data dir {}", path.display(), dir.display()));
    }
    Ok(f)
}

/// The CPUs this process may run on (its affinity mask, which containers and cgroups narrow),
/// in ascending order. Shards are pinned to these, not to whatever ids the machine has.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most size_of::<cpu_set_t>() bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|c| libc::CPU_ISSET(*c, &set)).collect()
    }
}

/// Hands a bound, listening std socket to glommio (which has no constructor taking options).
pub fn into_glommio_listener(l: std::net::TcpListener) -> std::io::Result<glommio::net::TcpListener> {
    let fd = l.into_raw_fd();
    // SAFETY: `fd` is a listening TCP socket we own (just released from `l`); glommio takes
    // ownership and closes it when its listener drops.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(fd) })
}
