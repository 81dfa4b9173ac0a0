//! pact-perf: benchmarks, each run side by side with a baseline on the same machine and
//! reported as a ratio. Numbers live here, never in tests.
//!
//! Exit codes: 0 ok, 1 benchmark failed, 2 bad command line.

mod agent;
mod boot_payload;
mod boot_storm;
mod commit;
mod enroll;
mod etcd;
mod journal_proc;
mod nginx;
mod pact_boot;
mod quorum;
mod storm;
mod tls_ceiling;

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
                      --payload BYTES (default 1024)
                      --cores N (executors per journal; default: with 3 nodes the machine's
                        CPUs / 3, at least 1, since the journals share the machine; with 1
                        node all CPUs)
                      --nodes 1|3 (default 3)
                      --failover | --no-failover (default: on with --nodes 3)
                      --failover-runs N (default 5)
                      --repeat N (default 1): each client count N times, pact and etcd
                        alternating, each time on a fresh quorum; a summary gives the
                        medians and the range of the ratios
                      --journal PATH (default: pact-journal next to this binary)
                      --dir DIR (data and results, default ./perf/results)
                      --json FILE (default DIR/commit.json)
                      --baseline etcd|none (default etcd when `etcd` is on PATH)
             Needs openssl on PATH with --nodes 3 (the run's cluster CA). The journals log
             at warn into DIR/*.log; PACT_LOG=debug (set for pact-perf) is handed on to them
             and shows raft-rs's elections.
  enroll     N nodes registered (BatchRegisterNodes), then each enrolls as an agent does (a new
             TLS connection, no credentials, its hardware identity and a CSR made beforehand),
             C at a time, against one --dev journal whose enrollment rate limit is raised out
             of the way. Reports registrations/s, enrollments/s, latency p50/p99/p999 and the
             journal's CPU per enrollment. Baselines, same run: plain 1 KiB appends, each on a
             new connection, same C; and the journal's signing code alone in this process.
             Options: --nodes N (default 10000)  --concurrency C (default 256)
                      --cores N (journal cores, default all)  --journal PATH  --dir DIR
  boot-storm N simulated nodes boot, C at a time, each on its OWN new TLS connection to a
             journal's client port: pact hello, one StreamBootConfig, the whole stream read
             (overlay chunks, its node delta, ConfigComplete), SHA-256 of the reassembled
             overlay and of the delta checked. A Busy answer is waited out (retry_after_ms)
             and retried on a new connection to the next journal; anything else fails the
             boot and is counted. Journals started by the benchmark, loaded through
             AppendEntry: one COMMIT for vCluster `bench` whose spec compresses to about
             --overlay-kib KiB, one small COMMIT per node (node-00001..). Setups: `single`
             (one --dev journal) and `quorum` (3 voters + 2 learners, nodes spread over all 5).
             Baselines, same run, reported as ratios: nginx (TLS 1.3 only, the journal's
             certificate, worker_processes = the journals' cores, access_log off) serving the
             same overlay and delta bytes, each node GETting both on its own new connection;
             and the in-memory TLS ceiling: one thread, rustls ServerConnection and
             ClientConnection wired through memory, full handshake, the request, overlay +
             delta, close_notify. Its server-side cost per boot = wall time inside the server's
             rustls calls, in batches of 100 boots, each batch scaled by the share of its wall
             time the thread was on a CPU (/proc/thread-self/schedstat), median batch mean;
             ceiling boots/s = min(cores given to the server, machine CPUs) / that cost.
             Reports boots/s, time to config (connect start to ConfigComplete, first attempt,
             Busy waits included) p50/p99/p999, MB/s received (TLS bytes, 1 MB = 10^6 B),
             server CPU s per 1000 boots (utime+stime of the journal or nginx processes),
             ratios pact/nginx of boots/s and of CPU per boot, % of the ceiling's boots/s and
             the ceiling's CPU per boot as a % of the server's, and the TLS handshake vs the
             rest of each boot as the client sees it. The client shares the machine: on a small
             one, boots/s is bound by all CPUs together; compare CPU per boot there.
             Client: one std thread per in-flight node, blocking rustls, no resumption.
             Options: --boots N (default 10000)  --concurrency C (default 1000)
                      --cores N (cores per journal, default 1)
                      --setups LIST (single,quorum; default both; `none` = baselines only,
                        on synthetic bytes of the same sizes)
                      --baseline nginx|none (default nginx when /usr/sbin/nginx or nginx on PATH)
                      --nginx PATH  --no-ceiling  --ceiling-seconds S (default 3)
                      --overlay-kib K (default 150)  --writers W (setup write threads, default 16)
                      --max-boot-streams N (the journals' [journal.streaming]
                        max_concurrent_boot_streams; default: theirs; lower it to see Busy)
                      --seed N (default 1)  --timeout S (per socket operation, default 60)
                      --journal PATH  --dir DIR (default ./perf/results)
                      --json FILE (default DIR/boot-storm.json)
             Exit code 1 when any boot failed (the results are written first).
  agent      the agent's footprint: a release pact-agent boots from a --dev journal as a
             service (not PID 1), supervises 5 `sleep` services, idles --idle S seconds; then
             VmRSS, VmHWM and threads from /proc/<pid>/status, beside `sleep`'s (baseline, same
             run, ratio); the binary's size unstripped and stripped (objcopy --strip-all); and
             the agent's own boot phases (its PACT-BOOT lines). Needs root for cgroups.
             Options: --agent PATH (default: target/agent/pact-agent, the size-optimised
                        `cargo build --profile agent -p pact-agent`, else target/release's)
                      --journal PATH  --idle S (default 5)  --dir DIR (default ./perf/results)

Build with `cargo build --release -p pact-perf -p pact-journal -p pact-agent` and run target/release/pact-perf.";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(bench) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<_> = args.collect();
    let result = match bench.to_str() {
        Some("commit") => commit::run(rest),
        Some("agent") => agent::run(rest),
        Some("boot-storm") => boot_storm::run(rest),
        Some("enroll") => enroll::run(rest),
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
