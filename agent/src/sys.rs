//! The agent's few syscalls that rustix has no safe call for: blocking signals and reading
//! them through a signalfd. Every `unsafe` block of the init path is here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The signals the agent handles itself, in its main loop.
pub const HANDLED: [i32; 7] =
    [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPWR, libc::SIGUSR1, libc::SIGUSR2];

/// A signalfd for `HANDLED`, with those signals blocked for the whole process. Call before
/// any thread starts: threads inherit the mask, so no signal is ever delivered to a handler
/// or lost; they all queue on this fd. Children get a clean mask (std resets it at spawn).
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    #[allow(unsafe_code)]
    pub fn block_and_open() -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset before use; sigprocmask
        // and signalfd are given valid pointers to it; the returned fd is checked and owned.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in HANDLED {
                libc::sigaddset(&mut set, s);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(SignalFd { fd: OwnedFd::from_raw_fd(fd) })
        }
    }

    /// Signals pending now (non-blocking; several of one kind may collapse into one).
    pub fn read_all(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        while let Ok(n) = rustix::io::read(&self.fd, &mut buf) {
            if n != buf.len() {
                break;
            }
            // ssi_signo is the first u32 of signalfd_siginfo.
            out.push(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as i32);
        }
        out
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

pub fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPWR => "SIGPWR",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn raise_usr1() {
        // SAFETY: raise(3) takes a signal number and touches no memory of ours.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
    }

    #[test]
    fn a_blocked_signal_arrives_on_the_fd() {
        // Run in a child process: blocking signals in the test harness would leak into
        // other tests' threads.
        let exe = std::env::current_exe().unwrap();
        if std::env::var_os("PACT_SIGNALFD_CHILD").is_some() {
            let fd = SignalFd::block_and_open().unwrap();
            // Thread-directed: only this test thread blocks the signal (the harness's other
            // threads do not, and a process-directed SIGUSR1 could kill the child there).
            raise_usr1();
            let got = fd.read_all();
            assert_eq!(got, vec![libc::SIGUSR1]);
            return;
        }
        let st = std::process::Command::new(exe)
            .args(["--exact", "sys::tests::a_blocked_signal_arrives_on_the_fd", "--nocapture"])
            .env("PACT_SIGNALFD_CHILD", "1")
            .status()
            .unwrap();
        assert!(st.success());
    }
}
