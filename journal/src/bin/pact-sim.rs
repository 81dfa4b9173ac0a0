//! Runs the journal's deterministic simulation (`pact_journal::sim`) over many seeds and
//! prints every failing seed, so it can be replayed with its trace.
//!
//! ```text
//! pact-sim --seeds 10000 [--start N] [--replicas 3|5] [--jobs J] [--fault-steps S] [--heal-steps S] [--no-churn]
//! pact-sim --seed N [--replicas 3|5] [--verbose]
//! ```
//!
//! Exit status: 0 when every seed passed, 1 when any failed, 2 on a usage error.

use pact_journal::sim::{run_seed, SimFailure, SimOptions, SimReport};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

struct Args {
    seeds: u64,
    start: u64,
    one: Option<u64>,
    jobs: usize,
    opts: SimOptions,
}

fn parse() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        seeds: 100,
        start: 0,
        one: None,
        jobs: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        opts: SimOptions::default(),
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("seeds") => a.seeds = p.value()?.parse()?,
            Long("start") => a.start = p.value()?.parse()?,
            Long("seed") => a.one = Some(p.value()?.parse()?),
            Long("replicas") => a.opts.replicas = p.value()?.parse()?,
            Long("clients") => a.opts.clients = p.value()?.parse()?,
            Long("jobs") => a.jobs = p.value()?.parse::<usize>()?.max(1),
            Long("fault-steps") => a.opts.fault_steps = p.value()?.parse()?,
            Long("heal-steps") => a.opts.heal_steps = p.value()?.parse()?,
            Long("no-churn") => a.opts.churn = false,
            Short('v') | Long("verbose") => a.opts.verbose = true,
            Short('h') | Long("help") => {
                println!(
                    "usage: pact-sim --seeds N [--start S] [--replicas R] [--jobs J] [--fault-steps F] [--heal-steps H] [--no-churn]\n       pact-sim --seed N [--replicas R] [--verbose]"
                );
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    if a.opts.replicas == 0 {
        return Err("--replicas must be at least 1".into());
    }
    Ok(a)
}

fn replay_hint(f: &SimFailure) -> String {
    format!(
        "cargo run --release -p pact-journal --bin pact-sim -- --seed {} --replicas {} --verbose",
        f.seed, f.replicas
    )
}

/// Sums the counters of passing runs (the highest term is a maximum).
fn add(t: &mut SimReport, r: &SimReport) {
    t.steps += r.steps;
    t.ops += r.ops;
    t.acked += r.acked;
    t.refused += r.refused;
    t.unknown += r.unknown;
    t.sequences += r.sequences;
    t.leaders += r.leaders;
    t.max_term = t.max_term.max(r.max_term);
    t.crashes += r.crashes;
    t.torn_writes += r.torn_writes;
    t.restarts += r.restarts;
    t.partitions += r.partitions;
    t.messages += r.messages;
    t.dropped += r.dropped;
    t.duplicated += r.duplicated;
    t.snapshots_sent += r.snapshots_sent;
    t.snapshots_installed += r.snapshots_installed;
    t.compactions += r.compactions;
    t.conf_changes += r.conf_changes;
}

/// A failure message with its numbers masked and cut short: what kind of failure it is.
fn kind(message: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out.chars().take(80).collect()
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pact-sim: {e}");
            std::process::exit(2);
        }
    };
    if let Some(seed) = args.one {
        let t = Instant::now();
        match run_seed(seed, &args.opts) {
            Ok(r) => {
                println!("seed {seed} passed in {:.2} s", t.elapsed().as_secs_f64());
                println!("{r:#?}");
            }
            Err(f) => {
                println!("FAIL {f}");
                println!("last trace lines:");
                for l in &f.trace {
                    println!("  {l}");
                }
                std::process::exit(1);
            }
        }
        return;
    }

    // A panicking seed is reported with its location by `run_seed`; the default hook's
    // message (and backtrace) for each one would drown the summary.
    std::panic::set_hook(Box::new(|_| {}));
    // Seeds are handed out one at a time to `jobs` threads; each run is single-threaded and
    // deterministic, so which thread runs a seed does not matter.
    let started = Instant::now();
    let next = AtomicU64::new(args.start);
    let end = args.start + args.seeds;
    let failures: Mutex<Vec<SimFailure>> = Mutex::new(Vec::new());
    let total: Mutex<SimReport> = Mutex::new(SimReport::default());
    let passed = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..args.jobs {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                match run_seed(seed, &args.opts) {
                    Ok(r) => {
                        passed.fetch_add(1, Ordering::Relaxed);
                        add(&mut total.lock().unwrap_or_else(|p| p.into_inner()), &r);
                    }
                    Err(f) => {
                        println!("FAIL {f}\n  replay: {}", replay_hint(&f));
                        failures.lock().unwrap_or_else(|p| p.into_inner()).push(f);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort_by_key(|f| f.seed);
    let t = total.into_inner().unwrap_or_else(|p| p.into_inner());
    let passed = passed.into_inner();
    println!(
        "{} seeds from {} ({} replicas): {} passed, {} failed in {:.1} s",
        args.seeds,
        args.start,
        args.opts.replicas,
        passed,
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "passing runs, in all: {} steps, {} appends ({} acknowledged, {} refused, {} unknown), {} sequences, {} leaders (highest term {}), {} crashes ({} torn writes), {} restarts, {} partitions, {} messages ({} dropped, {} duplicated), {} snapshots sent, {} installed, {} compactions, {} conf changes applied",
        t.steps,
        t.ops,
        t.acked,
        t.refused,
        t.unknown,
        t.sequences,
        t.leaders,
        t.max_term,
        t.crashes,
        t.torn_writes,
        t.restarts,
        t.partitions,
        t.messages,
        t.dropped,
        t.duplicated,
        t.snapshots_sent,
        t.snapshots_installed,
        t.compactions,
        t.conf_changes
    );
    if !failures.is_empty() {
        println!("failing seeds:");
        for f in &failures {
            println!("  {f}");
        }
        // The same violation tends to recur across seeds: group them (digits masked) so a
        // new kind of failure stands out among known ones.
        let mut kinds: std::collections::BTreeMap<String, Vec<u64>> = std::collections::BTreeMap::new();
        for f in &failures {
            kinds.entry(kind(&f.message)).or_default().push(f.seed);
        }
        println!("failures by kind:");
        for (k, seeds) in &kinds {
            let shown: Vec<String> = seeds.iter().take(10).map(|s| s.to_string()).collect();
            let more = if seeds.len() > 10 { " ..." } else { "" };
            println!("  {:>5} x {k}\n          seeds {}{more}", seeds.len(), shown.join(" "));
        }
        std::process::exit(1);
    }
}
