//! pact-perf: benchmarks, each run side by side with a baseline on the same machine and
//! reported as a ratio. Numbers live here, never in tests.
//!
//! Exit codes: 0 ok, 1 benchmark failed, 2 bad command line.

mod commit;
mod etcd;
mod journal_proc;
mod quorum;

use std::process::ExitCode;

const USAGE: &str = "\
pact-perf: pact's benchmark suite

USAGE: pact-perf <BENCHMARK> [OPTIONS]

BENCHMARKS:
  commit     C concurrent clients append 1 KiB entries for T seconds to journals this
             benchmark starts itself: by default a 3-voter quorum on 127.0.0.1 (its own CA and
             token, clients round-robin over the 3 journals, followers forwarding to the
             leader), or one `--dev` journal with --nodes 1. Baselines: the same disk's
             fsync'd-append ceiling, and a 3-member etcd 3.4 cluster on 127.0.0.1 given the
             same load. With 3 nodes it then measures leader failover: 4 clients append while
             the leader is killed (SIGKILL), N times; time to a new leader and to the next
             acknowledged append.
             Options: --clients LIST (default 1,16,64)  --seconds T (default 10)
                      --payload BYTES (default 1024)     --cores N (cores per journal, default all)
                      --nodes 1|3 (default 3)
                      --failover | --no-failover (default: on with --nodes 3)
                      --failover-runs N (default 5)
                      --journal PATH (default: pact-journal next to this binary)
                      --dir DIR (data and results, default ./perf/results)
                      --json FILE (default DIR/commit.json)
                      --baseline etcd|none (default etcd when `etcd` is on PATH)
             Needs openssl on PATH with --nodes 3 (the run's cluster CA).

Build with `cargo build --release -p pact-perf -p pact-journal` and run target/release/pact-perf.";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(bench) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<_> = args.collect();
    let result = match bench.to_str() {
        Some("commit") => commit::run(rest),
        Some("-h") | Some("--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("-V") | Some("--version") => {
            println!("pact-perf {}", pact_proto::VERSION);
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("pact-perf: unknown benchmark {bench:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("pact-perf: {msg}");
            ExitCode::from(code)
        }
    }
}
