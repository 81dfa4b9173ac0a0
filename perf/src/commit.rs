//! `commit`: the journal's write path end to end (TLS, frame, token check, raft proposal,
//! LMDB append + fsync, apply, answer). C clients, each on its own connection, append
//! entries carrying a payload of the given size for T seconds.
//!
//! Baseline, same run, same disk: one writer appending the same payload to a file with
//! `fdatasync` after each write, i.e. what one durable write per commit would cost. The
//! ratio shows how far batching (one fsync per raft Ready round) takes the journal past that.

use crate::etcd::{etcd_on_path, etcd_version, run_etcd, EtcdRow};
use crate::journal_proc::{default_binary, JournalProc};
use hdrhistogram::Histogram;
use nanoserde::SerJson;
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse};
use pact_proto::Method;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(SerJson)]
struct Row {
    clients: u32,
    seconds: f64,
    commits: u64,
    errors: u64,
    commits_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    journal_cpu_seconds: f64,
    fsync_baseline_per_sec: f64,
    ratio_to_fsync_baseline: f64,
}

#[derive(SerJson)]
struct Report {
    benchmark: String,
    payload_bytes: u32,
    journal_cores: u32,
    machine_cpus: u32,
    rows: Vec<Row>,
    /// "etcd" or "none".
    baseline: String,
    etcd_version: String,
    /// One per row when the etcd baseline ran, else empty.
    etcd: Vec<EtcdComparison>,
}

/// pact against etcd at one client count. Ratios are pact/etcd: throughput above 1 and
/// p99 below 1 favour pact.
#[derive(SerJson)]
struct EtcdComparison {
    clients: u32,
    pact_commits_per_sec: f64,
    pact_p99_ms: f64,
    etcd: EtcdRow,
    throughput_ratio: f64,
    p99_ratio: f64,
}

fn compare_to_etcd(pact: &Row, etcd: EtcdRow) -> EtcdComparison {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    EtcdComparison {
        clients: pact.clients,
        pact_commits_per_sec: pact.commits_per_sec,
        pact_p99_ms: pact.p99_ms,
        throughput_ratio: ratio(pact.commits_per_sec, etcd.puts_per_sec),
        p99_ratio: ratio(pact.p99_ms, etcd.p99_ms),
        etcd,
    }
}

fn print_etcd_table(version: &str, rows: &[EtcdComparison]) {
    println!(
        "baseline: etcd {version}, 3 members on 127.0.0.1 (fsync on), puts to the leader via the v3 JSON gateway; \
         ratios are pact/etcd"
    );
    println!(
        "{:>8} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "clients", "puts", "errors", "puts/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "cpu s", "x thrput", "x p99"
    );
    for c in rows {
        let e = &c.etcd;
        println!(
            "{:>8} {:>9} {:>7} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>10.2} {:>10.2}",
            c.clients,
            e.puts,
            e.errors,
            e.puts_per_sec,
            e.p50_ms,
            e.p99_ms,
            e.p999_ms,
            e.max_ms,
            e.etcd_cpu_seconds,
            c.throughput_ratio,
            c.p99_ratio
        );
    }
}

struct Opts {
    clients: Vec<u32>,
    seconds: u64,
    payload: usize,
    cores: Option<usize>,
    journal: PathBuf,
    dir: PathBuf,
    json: Option<PathBuf>,
    /// Run etcd side by side (`--baseline etcd`).
    etcd: bool,
}

fn parse(args: Vec<std::ffi::OsString>) -> Result<Opts, String> {
    use lexopt::prelude::*;
    let mut o = Opts {
        clients: vec![1, 16, 64],
        seconds: 10,
        payload: 1024,
        cores: None,
        journal: default_binary(),
        dir: PathBuf::from("perf/results"),
        json: None,
        etcd: etcd_on_path().is_some(),
    };
    let mut p = lexopt::Parser::from_args(args);
    fn value(p: &mut lexopt::Parser) -> Result<String, String> {
        p.value().map_err(|e| e.to_string())?.string().map_err(|e| e.to_string())
    }
    while let Some(a) = p.next().map_err(|e| e.to_string())? {
        let name = match a {
            Long(l) => l.to_string(),
            other => return Err(format!("commit: unexpected {:?}", other.unexpected())),
        };
        let mut val = || value(&mut p);
        match name.as_str() {
            "clients" => {
                o.clients = val()?
                    .split(',')
                    .map(|c| c.trim().parse::<u32>().map_err(|_| format!("--clients: {c:?} is not a number")))
                    .collect::<Result<_, _>>()?;
                if o.clients.iter().any(|c| *c == 0 || *c > 4096) {
                    return Err("--clients: each count must be 1..=4096".into());
                }
            }
            "seconds" => o.seconds = val()?.parse().map_err(|_| "--seconds: expected a number")?,
            "payload" => o.payload = val()?.parse().map_err(|_| "--payload: expected a number of bytes")?,
            "cores" => o.cores = Some(val()?.parse().map_err(|_| "--cores: expected a number")?),
            "journal" => o.journal = PathBuf::from(val()?),
            "dir" => o.dir = PathBuf::from(val()?),
            "json" => o.json = Some(PathBuf::from(val()?)),
            "baseline" => {
                o.etcd = match val()?.as_str() {
                    "etcd" => true,
                    "none" => false,
                    other => return Err(format!("--baseline: expected etcd or none, got {other:?}")),
                }
            }
            other => return Err(format!("commit: unknown option --{other}")),
        }
    }
    if o.payload > 512 * 1024 {
        return Err("--payload: at most 512 KiB".into());
    }
    Ok(o)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn fsync_baseline(dir: &std::path::Path, payload: usize, seconds: u64) -> Result<f64, String> {
    let path = dir.join("fsync-baseline.dat");
    let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let buf = vec![0x5au8; payload];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        f.write_all(&buf).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

fn one_run(o: &Opts, clients: u32) -> Result<Row, String> {
    let data = o.dir.join(format!("commit-journal-c{clients}"));
    let j = JournalProc::start(&o.journal, &data, o.cores)?;
    let cpu_before = j.cpu_seconds();
    let payload: String = "x".repeat(o.payload);
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let start = Instant::now();
    let mut threads = Vec::new();
    for c in 0..clients {
        let mut client = j.client()?;
        let payload = payload.clone();
        threads.push(std::thread::spawn(move || {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0u64;
            let scope = Some(Scope { target: Some(Target::VclusterId(format!("bench-{}", c % 8))) });
            while Instant::now() < deadline {
                let entry = ConfigEntry {
                    entry_type: EntryType::Commit as i32,
                    scope: scope.clone(),
                    policy_ref: payload.clone(),
                    ..Default::default()
                };
                let t = Instant::now();
                let r: Result<AppendEntryResponse, _> =
                    client.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(entry) });
                match r {
                    Ok(_) => {
                        let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Err(_) => errors += 1,
                }
            }
            (h, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut errors = 0;
    for t in threads {
        let (h, e) = t.join().map_err(|_| "a client thread panicked".to_string())?;
        hist.add(h).map_err(|e| e.to_string())?;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = j.cpu_seconds() - cpu_before;
    drop(j);
    let _ = std::fs::remove_dir_all(&data);
    let commits = hist.len();
    Ok(Row {
        clients,
        seconds: secs,
        commits,
        errors,
        commits_per_sec: commits as f64 / secs,
        p50_ms: ms(&hist, 0.5),
        p99_ms: ms(&hist, 0.99),
        p999_ms: ms(&hist, 0.999),
        max_ms: hist.max() as f64 / 1000.0,
        journal_cpu_seconds: cpu,
        fsync_baseline_per_sec: 0.0,
        ratio_to_fsync_baseline: 0.0,
    })
}

pub fn run(args: Vec<std::ffi::OsString>) -> Result<(), (u8, String)> {
    let o = parse(args).map_err(|e| (2, e))?;
    std::fs::create_dir_all(&o.dir).map_err(|e| (1, format!("{}: {e}", o.dir.display())))?;
    let etcd_version = match (o.etcd, etcd_on_path()) {
        (false, None) => {
            println!("note: etcd baseline skipped: no etcd binary on PATH (apt-get install etcd-server)");
            String::new()
        }
        (false, Some(_)) => String::new(),
        (true, None) => {
            return Err((1, "--baseline etcd: no etcd binary on PATH (apt-get install etcd-server)".into()))
        }
        (true, Some(bin)) => etcd_version(&bin).map_err(|e| (1, e))?,
    };
    let baseline = fsync_baseline(&o.dir, o.payload, o.seconds.min(5)).map_err(|e| (1, e))?;
    let mut rows = Vec::new();
    let mut etcd = Vec::new();
    for &c in &o.clients {
        let mut r = one_run(&o, c).map_err(|e| (1, e))?;
        r.fsync_baseline_per_sec = baseline;
        r.ratio_to_fsync_baseline = r.commits_per_sec / baseline;
        if o.etcd {
            let e = run_etcd(c, o.seconds, o.payload, &o.dir).map_err(|e| (1, format!("etcd baseline: {e}")))?;
            etcd.push(compare_to_etcd(&r, e));
        }
        rows.push(r);
    }
    println!(
        "commit: {} B payload, journal cores {}, {} s per row; baseline: fdatasync'd {} B appends, one writer: {:.0}/s",
        o.payload,
        o.cores.map(|c| c.to_string()).unwrap_or_else(|| "all".into()),
        o.seconds,
        o.payload,
        baseline
    );
    println!(
        "{:>8} {:>9} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "clients", "commits", "errors", "commits/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "cpu s", "x fsync"
    );
    for r in &rows {
        println!(
            "{:>8} {:>9} {:>7} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>9.2}",
            r.clients,
            r.commits,
            r.errors,
            r.commits_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.journal_cpu_seconds,
            r.ratio_to_fsync_baseline
        );
    }
    if o.etcd {
        print_etcd_table(&etcd_version, &etcd);
    }
    let report = Report {
        benchmark: "commit".into(),
        payload_bytes: o.payload as u32,
        journal_cores: o.cores.unwrap_or(0) as u32,
        machine_cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        rows,
        baseline: if o.etcd { "etcd" } else { "none" }.into(),
        etcd_version,
        etcd,
    };
    let json_path = o.json.clone().unwrap_or_else(|| o.dir.join("commit.json"));
    std::fs::write(&json_path, report.serialize_json()).map_err(|e| (1, format!("{}: {e}", json_path.display())))?;
    println!("written: {}", json_path.display());
    Ok(())
}
