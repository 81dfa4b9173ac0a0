//! pact: the command line for the journal and the nodes' agents.
//!
//! Exit codes (DESIGN.md §8, one table for this binary):
//!
//! | code | meaning                                                            |
//! |------|--------------------------------------------------------------------|
//! | 0    | success                                                            |
//! | 1    | error (bad usage, bad input file, not found, server-side failure)  |
//! | 2    | authentication or authorisation failure (no/bad/expired token)     |
//! | 3    | policy rejection                                                   |
//! | 4    | conflict (concurrent modification)                                 |
//! | 5    | journal or node agent unreachable, or timed out                    |
//! | 6    | command not whitelisted                                            |
//! | 10   | rollback blocked                                                   |
//!
//! A write held for two-person approval is not a failure: the command prints
//! `pending approval ID ...` (JSON: `pending_approval_id`) and exits 0; `pact approve` decides it.

mod agent_cmd;
mod approve_cmd;
mod commands;
mod enroll_cmd;
mod journal_cmd;
mod login;
mod node_cmd;
mod oidc;
mod output;
mod settings;
mod spec;
mod tokens;
mod watch_cmd;

use std::process::ExitCode;

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_AUTH: u8 = 2;

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(EXIT_ERROR, message)
    }
}

impl From<pact_proto::client::CallError> for Failure {
    fn from(e: pact_proto::client::CallError) -> Failure {
        Failure::new(e.exit_code(), e.to_string())
    }
}

fn main() -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    match commands::run(std::env::args_os().skip(1).collect(), &env) {
        Ok(text) => {
            if !text.is_empty() {
                // A reader that went away (`pact log | head`) is not an error.
                use std::io::Write as _;
                let nl = if text.ends_with('\n') { "" } else { "\n" };
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(text.as_bytes()).and_then(|_| stdout.write_all(nl.as_bytes()));
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("pact: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
