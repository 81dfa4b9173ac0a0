//! pact-agent's library: what the agent binary is built from.
//!
//! - `api`: the API server on 9445 (service control, power requests) and the main loop's
//!   half of it.
//! - `journal_client`: boot stream and live subscription against the journals.
//! - `boot`: the boot sequence's journal half (stream, verify, cache, apply) and live updates.
//! - `apply`: hostname, sysctl, kernel modules, mounts and files from a declared spec.
//! - `supervisor`: services, behind one API over two backends (pact: cgroup v2 scopes and
//!   child processes; systemd: unit files and systemctl).
//! - `capability`: CPU, memory, network and storage facts for `/run/pact/capability.json`.
//! - `config`: agent.toml, agent.env, the environment, the kernel command line, flags.
//! - `early`: what PID 1 does before the journal is reachable (modules, network from `ip=`,
//!   the switch to a SquashFS root).
//! - `init`: PID 1 duties (pseudo filesystems, console, reaping, watchdog, shutdown).
//! - `sys`: the signalfd.

pub mod api;
pub mod apply;
pub mod audit;
pub mod boot;
pub mod capability;
pub mod config;
pub mod early;
pub mod enroll;
pub mod identity;
pub mod init;
pub mod journal_client;
pub mod supervisor;
pub mod sys;
