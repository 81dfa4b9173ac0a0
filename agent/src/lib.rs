//! pact-agent's library: what the agent binary is built from.
//!
//! - `journal_client`: boot stream and live subscription against the journals.
//! - `boot`: the boot sequence's journal half (stream, verify, cache, apply) and live updates.
//! - `apply`: hostname, sysctl, kernel modules, mounts and files from a declared spec.
//! - `capability`: CPU, memory, network and storage facts for `/run/pact/capability.json`.
//! - `config`: agent.toml, agent.env, the environment, the kernel command line, flags.
//! - `init`: PID 1 duties (pseudo filesystems, console, reaping, watchdog, shutdown).
//! - `sys`: the signalfd (the agent's only unsafe code outside small syscall wrappers).

pub mod apply;
pub mod boot;
pub mod capability;
pub mod config;
pub mod init;
pub mod journal_client;
pub mod sys;
