//! pact-agent: the node agent (init, supervisor, config apply, drift, commit windows,
//! exec/shell server). This build carries only its command-line surface; the agent itself
//! is built by the agent issue, and until then this binary refuses to run rather than
//! pretend to manage a node.
//!
//! Exit codes: 0 `--help`/`--version`, 1 not yet able to run, 2 bad command line.

use std::process::ExitCode;

const USAGE: &str = "\
pact-agent: pact's node agent

USAGE: pact-agent [--config FILE]

This build does not manage nodes yet (the agent arrives with its own issue).";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("-V") | Some("--version") => {
            println!("pact-agent {}", pact_proto::VERSION);
            ExitCode::SUCCESS
        }
        Some("-h") | Some("--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        None | Some("--config") => {
            eprintln!("pact-agent: this build cannot manage a node yet; see `pact-agent --help`");
            ExitCode::from(1)
        }
        Some(other) => {
            eprintln!("pact-agent: unknown argument {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
