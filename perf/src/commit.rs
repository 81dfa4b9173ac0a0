//! `commit`: the journal's write path end to end (TLS, frame, token check, raft proposal,
//! LMDB append + fsync, replication, apply, answer). C clients, each on its own connection,
//! append entries carrying a payload of the given size for T seconds.
//!
//! `--nodes 3` (the default) runs a 3-voter quorum on 127.0.0.1 (`quorum.rs`) with the
//! clients spread round-robin over the three journals: a client of a follower is answered
//! once the leader has committed its entry and the follower has applied it, the normal pact
//! client style. `--nodes 1` runs one `pact-journal --dev` (no replication).
//!
//! Baseline, same run, same disk: one writer appending the same payload to a file with
//! `fdatasync` after each write, i.e. what one durable write per commit would cost. The
//! ratio shows how far batching (one fsync per raft Ready round) takes the journal past that.
//!
//! `--failover` (3 nodes; on by default there): 4 clients append in a loop while the leader
//! is killed with SIGKILL, 5 times; reported are the times from the kill until a surviving
//! journal reports a new leader and until the first append sent after the kill is
//! acknowledged.

use crate::etcd::{etcd_on_path, etcd_version, run_etcd, EtcdRow};
use crate::journal_proc::{default_binary, JournalProc};
use crate::quorum::{Quorum, NODES};
use hdrhistogram::Histogram;
use nanoserde::SerJson;
use pact_proto::client::{CallError, Client};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse, JournalStatus, JournalStatusRequest};
use pact_proto::Method;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client that got an error waits this long before its next append (not timed).
const RETRY_BACKOFF: Duration = Duration::from_millis(5);
/// Distinct error messages kept per row; the rest are counted under "(other)".
const MAX_MESSAGES: usize = 16;
/// Appending clients during the failover measurement.
const FAILOVER_CLIENTS: u32 = 4;
/// How long a failover may take (leader and first ack) before the benchmark gives up.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);

#[derive(SerJson, Clone)]
pub struct ErrorCount {
    pub message: String,
    pub count: u64,
}

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
    /// User + system CPU seconds during the row, summed over the journal processes.
    journal_cpu_seconds: f64,
    fsync_baseline_per_sec: f64,
    ratio_to_fsync_baseline: f64,
    /// Raft term at the end of the row minus at its start (3 nodes): elections under load.
    raft_term_changes: u64,
    errors_by_message: Vec<ErrorCount>,
}

#[derive(SerJson)]
struct FailoverRun {
    run: u32,
    killed_node: u64,
    term_before: u64,
    new_leader: u64,
    term_after: u64,
    /// From the SIGKILL until a surviving journal's JournalStatus names a new leader.
    new_leader_ms: f64,
    /// From the SIGKILL until the first append sent after the kill is acknowledged.
    first_ack_ms: f64,
    /// Client errors from the kill until both of the above were seen.
    errors: u64,
    /// From the restart of the killed journal until it answers JournalStatus.
    restarted_answers_ms: f64,
    /// From the restart of the killed journal until all three agree on the leader and have
    /// applied what it had committed.
    healthy_again_ms: f64,
}

#[derive(SerJson)]
struct Spread {
    min_ms: f64,
    median_ms: f64,
    max_ms: f64,
}

#[derive(SerJson)]
struct FailoverReport {
    clients: u32,
    retry_backoff_ms: f64,
    runs: Vec<FailoverRun>,
    new_leader: Spread,
    first_ack: Spread,
    errors_by_message: Vec<ErrorCount>,
}

#[derive(SerJson)]
struct Report {
    benchmark: String,
    /// pact voters: 1 (`--nodes 1`, one `--dev` journal) or 3.
    nodes: u32,
    /// How clients pick their journal.
    client_routing: String,
    payload_bytes: u32,
    journal_cores: u32,
    machine_cpus: u32,
    rows: Vec<Row>,
    /// "etcd" or "none".
    baseline: String,
    etcd_version: String,
    /// One per row when the etcd baseline ran, else empty.
    etcd: Vec<EtcdComparison>,
    /// The leader failover measurement; absent when it did not run (--nodes 1, --no-failover).
    failover: Option<FailoverReport>,
    /// With the etcd baseline: per client count, the medians over the `--repeat` runs.
    summary: Vec<Summary>,
}

/// Medians over the repetitions of one client count (pact and etcd ran alternately, each
/// repetition on a fresh quorum), and the range of the per-run throughput ratios.
#[derive(SerJson)]
struct Summary {
    clients: u32,
    runs: u32,
    pact_commits_per_sec: f64,
    etcd_puts_per_sec: f64,
    throughput_ratio: f64,
    min_throughput_ratio: f64,
    max_throughput_ratio: f64,
    pact_p99_ms: f64,
    etcd_p99_ms: f64,
    p99_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn summarize(rows: &[EtcdComparison]) -> Vec<Summary> {
    let mut counts: Vec<u32> = rows.iter().map(|r| r.clients).collect();
    counts.dedup();
    counts
        .into_iter()
        .map(|c| {
            let runs: Vec<&EtcdComparison> = rows.iter().filter(|r| r.clients == c).collect();
            let col = |f: &dyn Fn(&EtcdComparison) -> f64| runs.iter().map(|r| f(r)).collect::<Vec<f64>>();
            let (pact, etcd) = (median(col(&|r| r.pact_commits_per_sec)), median(col(&|r| r.etcd.puts_per_sec)));
            let (pact_p99, etcd_p99) = (median(col(&|r| r.pact_p99_ms)), median(col(&|r| r.etcd.p99_ms)));
            let ratios = col(&|r| r.throughput_ratio);
            Summary {
                clients: c,
                runs: runs.len() as u32,
                pact_commits_per_sec: pact,
                etcd_puts_per_sec: etcd,
                throughput_ratio: if etcd > 0.0 { pact / etcd } else { 0.0 },
                min_throughput_ratio: ratios.iter().copied().fold(f64::INFINITY, f64::min),
                max_throughput_ratio: ratios.iter().copied().fold(0.0, f64::max),
                pact_p99_ms: pact_p99,
                etcd_p99_ms: etcd_p99,
                p99_ratio: if etcd_p99 > 0.0 { pact_p99 / etcd_p99 } else { 0.0 },
            }
        })
        .collect()
}

fn print_summary(rows: &[Summary]) {
    println!("summary: medians over the runs of each client count; ratios are pact/etcd (range of the per-run ratios)");
    println!(
        "{:>8} {:>5} {:>11} {:>9} {:>9} {:>13} {:>10} {:>10} {:>7}",
        "clients", "runs", "pact c/s", "etcd p/s", "x thrput", "range", "pact p99", "etcd p99", "x p99"
    );
    for s in rows {
        println!(
            "{:>8} {:>5} {:>11.0} {:>9.0} {:>9.2} {:>6.2}-{:<6.2} {:>10.2} {:>10.2} {:>7.2}",
            s.clients,
            s.runs,
            s.pact_commits_per_sec,
            s.etcd_puts_per_sec,
            s.throughput_ratio,
            s.min_throughput_ratio,
            s.max_throughput_ratio,
            s.pact_p99_ms,
            s.etcd_p99_ms,
            s.p99_ratio
        );
    }
}

/// pact against etcd at one client count. Ratios are pact/etcd: throughput above 1 and
/// p99 below 1 favour pact.
#[derive(SerJson)]
struct EtcdComparison {
    clients: u32,
    pact_nodes: u32,
    pact_commits_per_sec: f64,
    pact_p99_ms: f64,
    etcd: EtcdRow,
    throughput_ratio: f64,
    p99_ratio: f64,
}

fn compare_to_etcd(pact: &Row, nodes: u32, etcd: EtcdRow) -> EtcdComparison {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    EtcdComparison {
        clients: pact.clients,
        pact_nodes: nodes,
        pact_commits_per_sec: pact.commits_per_sec,
        pact_p99_ms: pact.p99_ms,
        throughput_ratio: ratio(pact.commits_per_sec, etcd.puts_per_sec),
        p99_ratio: ratio(pact.p99_ms, etcd.p99_ms),
        etcd,
    }
}

fn print_etcd_table(version: &str, nodes: u32, rows: &[EtcdComparison]) {
    println!(
        "baseline: etcd {version}, 3 members on 127.0.0.1 (fsync on), puts to the leader via the v3 JSON gateway; \
         pact: {} against it; ratios are pact/etcd",
        if nodes == 1 { "1 journal (no replication)".to_string() } else { format!("{nodes} voters") }
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
    nodes: u32,
    /// None: the default for the node count (on with 3).
    failover: Option<bool>,
    failover_runs: u32,
    /// Runs per client count (`--repeat`).
    repeat: u32,
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
        nodes: 3,
        failover: None,
        failover_runs: 5,
        repeat: 1,
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
        match name.as_str() {
            "failover" => {
                o.failover = Some(true);
                continue;
            }
            "no-failover" => {
                o.failover = Some(false);
                continue;
            }
            _ => {}
        }
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
            "nodes" => {
                o.nodes = match val()?.as_str() {
                    "1" => 1,
                    "3" => 3,
                    other => return Err(format!("--nodes: expected 1 or 3, got {other:?}")),
                }
            }
            "failover-runs" => {
                o.failover_runs = val()?.parse().map_err(|_| "--failover-runs: expected a number")?;
                if o.failover_runs == 0 || o.failover_runs > 100 {
                    return Err("--failover-runs: expected 1..=100".into());
                }
            }
            "repeat" => {
                o.repeat = val()?.parse().map_err(|_| "--repeat: expected a number")?;
                if o.repeat == 0 || o.repeat > 20 {
                    return Err("--repeat: expected 1..=20".into());
                }
            }
            other => return Err(format!("commit: unknown option --{other}")),
        }
    }
    if o.payload > 512 * 1024 {
        return Err("--payload: at most 512 KiB".into());
    }
    if o.nodes == 1 && o.failover == Some(true) {
        return Err("--failover needs --nodes 3 (one journal has no one to fail over to)".into());
    }
    if o.cores.is_none() && o.nodes > 1 {
        o.cores = Some(colocated_cores(machine_cpus(), o.nodes));
    }
    Ok(o)
}

/// Executors per journal when `nodes` journals share a machine of `cpus` CPUs: the CPUs split
/// between them, at least one each. A journal pins one executor per core and by default takes
/// every core, so three on two cores would run six pinned executors, and a write arriving on a
/// shard other than the raft shard would cross between them twice (ARCHITECTURE.md).
fn colocated_cores(cpus: usize, nodes: u32) -> usize {
    (cpus / nodes.max(1) as usize).max(1)
}

fn machine_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl Opts {
    fn failover(&self) -> bool {
        self.failover.unwrap_or(self.nodes == 3)
    }
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

/// Error messages and how often each came.
#[derive(Default)]
pub(crate) struct Messages(BTreeMap<String, u64>);

impl Messages {
    pub(crate) fn add(&mut self, m: &str, n: u64) {
        if self.0.len() >= MAX_MESSAGES && !self.0.contains_key(m) {
            *self.0.entry("(other)".into()).or_default() += n;
        } else {
            *self.0.entry(m.to_string()).or_default() += n;
        }
    }

    pub(crate) fn merge(&mut self, other: Messages) {
        for (m, n) in other.0 {
            self.add(&m, n);
        }
    }

    pub(crate) fn list(&self) -> Vec<ErrorCount> {
        let mut v: Vec<ErrorCount> = self.0.iter().map(|(m, n)| ErrorCount { message: m.clone(), count: *n }).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.count));
        v
    }
}

/// One client connection, to one of the journals. A broken connection is dropped; the next
/// append reconnects, to the same journal or (`move_on`) the next one in the list.
struct Appender {
    endpoints: Arc<Vec<String>>,
    at: usize,
    conn: Option<Client>,
    tls: Arc<rustls::ClientConfig>,
    token: String,
    timeout: Duration,
    move_on: bool,
}

impl Appender {
    fn new(
        endpoints: Arc<Vec<String>>,
        at: usize,
        tls: Arc<rustls::ClientConfig>,
        token: &str,
        timeout: Duration,
        move_on: bool,
    ) -> Appender {
        Appender { endpoints, at, conn: None, tls, token: token.to_string(), timeout, move_on }
    }

    fn broken(&mut self) {
        self.conn = None;
        if self.move_on {
            self.at = (self.at + 1) % self.endpoints.len();
        }
    }

    fn connect(&mut self) -> Result<(), String> {
        if self.conn.is_none() {
            let ep = &self.endpoints[self.at];
            match Client::connect(ep, self.tls.clone(), &self.token, self.timeout) {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    self.broken();
                    return Err(format!("connect: {e}"));
                }
            }
        }
        Ok(())
    }

    /// One append on the open connection ([`Appender::connect`] first).
    fn append(&mut self, req: &AppendEntryRequest) -> Result<(), String> {
        let c = self.conn.as_mut().ok_or("not connected")?;
        match c.call::<_, AppendEntryResponse>(Method::AppendEntry, req) {
            Ok(_) => Ok(()),
            Err(CallError::Remote(e)) => Err(format!("{}: {}", e.code, e.message)),
            Err(e) => {
                self.broken();
                Err(e.to_string())
            }
        }
    }
}

fn request(c: u32, payload: &str) -> AppendEntryRequest {
    let entry = ConfigEntry {
        entry_type: EntryType::Commit as i32,
        scope: Some(Scope { target: Some(Target::VclusterId(format!("bench-{}", c % 8))) }),
        policy_ref: payload.to_string(),
        ..Default::default()
    };
    AppendEntryRequest { entry: Some(entry) }
}

struct Load {
    hist: Histogram<u64>,
    errors: u64,
    messages: Messages,
    seconds: f64,
}

/// Every appender appends in a loop until `seconds` have passed; each append is timed
/// (reconnects and the back-off after an error are not).
fn run_load(appenders: Vec<Appender>, payload: &str, seconds: u64) -> Result<Load, String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut threads = Vec::new();
    for (c, mut app) in appenders.into_iter().enumerate() {
        let req = request(c as u32, payload);
        threads.push(std::thread::spawn(move || {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0u64;
            let mut messages = Messages::default();
            while Instant::now() < deadline {
                let r = app.connect().and_then(|_| {
                    let t = Instant::now();
                    app.append(&req).map(|_| t.elapsed())
                });
                match r {
                    Ok(d) => {
                        let _ = h.record((d.as_micros() as u64).max(1));
                    }
                    Err(m) => {
                        errors += 1;
                        messages.add(&m, 1);
                        std::thread::sleep(RETRY_BACKOFF);
                    }
                }
            }
            (h, errors, messages)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut errors = 0;
    let mut messages = Messages::default();
    for t in threads {
        let (h, e, m) = t.join().map_err(|_| "a client thread panicked".to_string())?;
        hist.add(h).map_err(|e| e.to_string())?;
        errors += e;
        messages.merge(m);
    }
    Ok(Load { hist, errors, messages, seconds: start.elapsed().as_secs_f64() })
}

fn row(clients: u32, load: Load, cpu: f64, term_changes: u64) -> Row {
    let commits = load.hist.len();
    Row {
        clients,
        seconds: load.seconds,
        commits,
        errors: load.errors,
        commits_per_sec: commits as f64 / load.seconds,
        p50_ms: ms(&load.hist, 0.5),
        p99_ms: ms(&load.hist, 0.99),
        p999_ms: ms(&load.hist, 0.999),
        max_ms: load.hist.max() as f64 / 1000.0,
        journal_cpu_seconds: cpu,
        fsync_baseline_per_sec: 0.0,
        ratio_to_fsync_baseline: 0.0,
        raft_term_changes: term_changes,
        errors_by_message: load.messages.list(),
    }
}

/// One `pact-journal --dev`.
fn one_run_single(o: &Opts, clients: u32) -> Result<Row, String> {
    let data = o.dir.join(format!("commit-journal-c{clients}"));
    let j = JournalProc::start(&o.journal, &data, o.cores)?;
    let endpoints = Arc::new(vec![j.endpoint.clone()]);
    let mut apps = Vec::new();
    for _ in 0..clients {
        let mut a = Appender::new(endpoints.clone(), 0, j.tls.clone(), &j.token, Duration::from_secs(30), false);
        a.connect()?;
        apps.push(a);
    }
    let cpu_before = j.cpu_seconds();
    let load = run_load(apps, &"x".repeat(o.payload), o.seconds)?;
    let cpu = j.cpu_seconds() - cpu_before;
    drop(j);
    let _ = std::fs::remove_dir_all(&data);
    Ok(row(clients, load, cpu, 0))
}

/// The highest term any journal reports.
fn max_term(q: &Quorum) -> u64 {
    (0..NODES).filter_map(|i| q.status(i).ok()).map(|s| s.term).max().unwrap_or(0)
}

/// A 3-voter quorum; client `c` talks to journal `c % 3`.
fn one_run_quorum(o: &Opts, clients: u32) -> Result<Row, String> {
    let q = Quorum::start(&o.journal, &o.dir.join(format!("commit-quorum-c{clients}")), o.cores)?;
    let endpoints = Arc::new(q.endpoints());
    let mut apps = Vec::new();
    for c in 0..clients {
        let mut a = Appender::new(
            endpoints.clone(),
            c as usize % NODES,
            q.tls.clone(),
            &q.token,
            Duration::from_secs(30),
            false,
        );
        a.connect()?;
        apps.push(a);
    }
    let term_before = max_term(&q);
    let cpu_before = q.cpu_seconds();
    let load = run_load(apps, &"x".repeat(o.payload), o.seconds)?;
    let cpu = q.cpu_seconds() - cpu_before;
    let term_after = max_term(&q);
    Ok(row(clients, load, cpu, term_after.saturating_sub(term_before)))
}

/// What the failover clients and the measuring thread share. Times are nanoseconds since `base`.
struct Shared {
    base: Instant,
    stop: AtomicBool,
    /// Appends sent at or after this time count as "after the kill" (u64::MAX: none do).
    eligible_from: AtomicU64,
    /// When the first eligible append was acknowledged (u64::MAX: not yet).
    first_ack: AtomicU64,
    errors: AtomicU64,
    messages: Mutex<Messages>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

fn failover_client(s: Arc<Shared>, mut app: Appender, req: AppendEntryRequest) {
    while !s.stop.load(Ordering::Relaxed) {
        let r = app.connect().and_then(|_| {
            let t0 = s.now();
            app.append(&req).map(|_| t0)
        });
        match r {
            Ok(t0) => {
                let t1 = s.now();
                if t0 >= s.eligible_from.load(Ordering::SeqCst) {
                    s.first_ack.fetch_min(t1, Ordering::SeqCst);
                }
            }
            Err(m) => {
                s.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut g) = s.messages.lock() {
                    g.add(&m, 1);
                }
                std::thread::sleep(RETRY_BACKOFF);
            }
        }
    }
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Spread { min_ms: v.first().copied().unwrap_or(0.0), median_ms: median, max_ms: v.last().copied().unwrap_or(0.0) }
}

/// JournalStatus on a kept connection, reconnecting once when it broke.
fn poll_status(q: &Quorum, i: usize, conn: &mut Option<Client>) -> Option<JournalStatus> {
    if conn.is_none() {
        *conn = q.client(i, Duration::from_secs(2)).ok();
    }
    let r = conn.as_mut()?.call::<_, JournalStatus>(Method::JournalStatus, &JournalStatusRequest {});
    match r {
        Ok(s) => Some(s),
        Err(_) => {
            *conn = None;
            None
        }
    }
}

fn one_failover(q: &mut Quorum, s: &Shared, run: u32) -> Result<FailoverRun, String> {
    let before = q.wait_healthy(FAILOVER_LIMIT)?;
    let killed = before.leader;
    let li = q.index_of(killed).ok_or("the leader is not one of ours")?;
    let survivors: Vec<usize> = (0..NODES).filter(|&i| i != li).collect();
    let mut status_conns: Vec<Option<Client>> =
        survivors.iter().map(|&i| q.client(i, Duration::from_secs(2)).ok()).collect();
    let errors_before = s.errors.load(Ordering::SeqCst);
    s.first_ack.store(u64::MAX, Ordering::SeqCst);
    let t_kill = s.now();
    q.kill(li)?;
    // Only appends sent once the process is gone count: nothing sent earlier can be answered by it.
    s.eligible_from.store(s.now(), Ordering::SeqCst);
    let deadline = Instant::now() + FAILOVER_LIMIT;
    let mut new_leader: Option<(u64, u64, u64)> = None;
    loop {
        if new_leader.is_none() {
            for (k, &i) in survivors.iter().enumerate() {
                if let Some(st) = poll_status(q, i, &mut status_conns[k]) {
                    if st.leader_id != 0 && st.leader_id != killed {
                        new_leader = Some((st.leader_id, s.now(), st.term));
                        break;
                    }
                }
            }
        }
        let ack = s.first_ack.load(Ordering::SeqCst);
        if let (Some((leader, at, term)), true) = (new_leader, ack != u64::MAX) {
            s.eligible_from.store(u64::MAX, Ordering::SeqCst);
            let errors = s.errors.load(Ordering::SeqCst) - errors_before;
            let t_restart = Instant::now();
            q.restart(li)?;
            let answers = t_restart.elapsed();
            q.wait_healthy(FAILOVER_LIMIT)?;
            return Ok(FailoverRun {
                run,
                killed_node: killed,
                term_before: before.term,
                new_leader: leader,
                term_after: term,
                new_leader_ms: at.saturating_sub(t_kill) as f64 / 1e6,
                first_ack_ms: ack.saturating_sub(t_kill) as f64 / 1e6,
                errors,
                restarted_answers_ms: answers.as_secs_f64() * 1000.0,
                healthy_again_ms: t_restart.elapsed().as_secs_f64() * 1000.0,
            });
        }
        if Instant::now() > deadline {
            return Err(format!(
                "failover run {run}: {} within {}s of killing leader {killed}",
                if new_leader.is_none() { "no new leader reported" } else { "no append acknowledged" },
                FAILOVER_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn failover(o: &Opts) -> Result<FailoverReport, String> {
    let mut q = Quorum::start(&o.journal, &o.dir.join("commit-failover"), o.cores)?;
    let endpoints = Arc::new(q.endpoints());
    let s = Arc::new(Shared {
        base: Instant::now(),
        stop: AtomicBool::new(false),
        eligible_from: AtomicU64::new(u64::MAX),
        first_ack: AtomicU64::new(u64::MAX),
        errors: AtomicU64::new(0),
        messages: Mutex::new(Messages::default()),
    });
    let payload = "x".repeat(o.payload);
    let mut threads = Vec::new();
    for c in 0..FAILOVER_CLIENTS {
        let app = Appender::new(
            endpoints.clone(),
            c as usize % NODES,
            q.tls.clone(),
            &q.token,
            Duration::from_secs(10),
            true,
        );
        let (s, req) = (s.clone(), request(c, &payload));
        threads.push(std::thread::spawn(move || failover_client(s, app, req)));
    }
    let mut runs = Vec::new();
    let mut result = Ok(());
    for run in 1..=o.failover_runs {
        // Steady load before each kill.
        std::thread::sleep(Duration::from_secs(1));
        match one_failover(&mut q, &s, run) {
            Ok(r) => {
                eprintln!(
                    "failover {run}/{}: killed leader {}, new leader {} after {:.0} ms, first ack after {:.0} ms",
                    o.failover_runs, r.killed_node, r.new_leader, r.new_leader_ms, r.first_ack_ms
                );
                runs.push(r);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    s.stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    drop(q);
    result?;
    let messages = s.messages.lock().map(|m| m.list()).unwrap_or_default();
    Ok(FailoverReport {
        clients: FAILOVER_CLIENTS,
        retry_backoff_ms: RETRY_BACKOFF.as_secs_f64() * 1000.0,
        new_leader: spread(runs.iter().map(|r| r.new_leader_ms).collect()),
        first_ack: spread(runs.iter().map(|r| r.first_ack_ms).collect()),
        runs,
        errors_by_message: messages,
    })
}

fn print_failover(f: &FailoverReport) {
    println!(
        "failover: SIGKILL of the leader while {} clients append (round-robin over the 3 journals; after an error a \
         client waits {} ms and retries, on another journal when its connection broke); then the killed journal is \
         restarted (answers ms: until it answers JournalStatus; healthy ms: until all 3 agree on the leader and \
         have applied its commit index), and the next run kills the leader after 1 s of load",
        f.clients, f.retry_backoff_ms
    );
    println!(
        "{:>4} {:>7} {:>6} {:>7} {:>6} {:>13} {:>13} {:>7} {:>11} {:>11}",
        "run",
        "killed",
        "term",
        "leader",
        "term",
        "new leader ms",
        "first ack ms",
        "errors",
        "answers ms",
        "healthy ms"
    );
    for r in &f.runs {
        println!(
            "{:>4} {:>7} {:>6} {:>7} {:>6} {:>13.1} {:>13.1} {:>7} {:>11.0} {:>11.0}",
            r.run,
            r.killed_node,
            r.term_before,
            r.new_leader,
            r.term_after,
            r.new_leader_ms,
            r.first_ack_ms,
            r.errors,
            r.restarted_answers_ms,
            r.healthy_again_ms
        );
    }
    for (what, sp) in [("new leader reported", &f.new_leader), ("first append acknowledged", &f.first_ack)] {
        println!("  {what:<26} min {:>8.1} ms  median {:>8.1} ms  max {:>8.1} ms", sp.min_ms, sp.median_ms, sp.max_ms);
    }
    print_messages("  client errors during the failover runs:", &f.errors_by_message);
}

fn print_messages(title: &str, m: &[ErrorCount]) {
    if m.is_empty() {
        return;
    }
    println!("{title}");
    for e in m {
        println!("    {:>7} x {}", e.count, e.message);
    }
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
        for _ in 0..o.repeat {
            let r = if o.nodes == 1 { one_run_single(&o, c) } else { one_run_quorum(&o, c) };
            let mut r = r.map_err(|e| (1, e))?;
            r.fsync_baseline_per_sec = baseline;
            r.ratio_to_fsync_baseline = r.commits_per_sec / baseline;
            if o.etcd {
                let e = run_etcd(c, o.seconds, o.payload, &o.dir).map_err(|e| (1, format!("etcd baseline: {e}")))?;
                etcd.push(compare_to_etcd(&r, o.nodes, e));
            }
            rows.push(r);
        }
    }
    let summary = summarize(&etcd);
    let failover = if o.failover() { Some(failover(&o).map_err(|e| (1, format!("failover: {e}")))?) } else { None };
    let routing = if o.nodes == 1 {
        "one journal".to_string()
    } else {
        format!("round-robin over the {NODES} journals (client c on journal c mod {NODES}); followers forward to the leader")
    };
    println!(
        "commit: {} B payload, pact {}, journal cores {}, {} s per row; baseline: fdatasync'd {} B appends, one writer: {:.0}/s",
        o.payload,
        if o.nodes == 1 { "1 journal (--dev, no replication)".to_string() } else { format!("{} voters on 127.0.0.1", o.nodes) },
        o.cores.map(|c| c.to_string()).unwrap_or_else(|| "all".into()),
        o.seconds,
        o.payload,
        baseline
    );
    if o.nodes > 1 {
        println!(
            "clients: {routing}; cpu s is summed over the {} journals; after an error a client waits {} ms",
            o.nodes,
            RETRY_BACKOFF.as_millis()
        );
    }
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
    for r in &rows {
        if r.raft_term_changes > 0 {
            println!(
                "  {} clients: the raft term moved by {} during the row (leader elections)",
                r.clients, r.raft_term_changes
            );
        }
        print_messages(&format!("  {} clients: errors:", r.clients), &r.errors_by_message);
    }
    if o.etcd {
        print_etcd_table(&etcd_version, o.nodes, &etcd);
        print_summary(&summary);
    }
    if let Some(f) = &failover {
        print_failover(f);
    }
    let report = Report {
        benchmark: "commit".into(),
        nodes: o.nodes,
        client_routing: routing,
        payload_bytes: o.payload as u32,
        journal_cores: o.cores.unwrap_or(0) as u32,
        machine_cpus: machine_cpus() as u32,
        rows,
        baseline: if o.etcd { "etcd" } else { "none" }.into(),
        etcd_version,
        etcd,
        failover,
        summary,
    };
    let json_path = o.json.clone().unwrap_or_else(|| o.dir.join("commit.json"));
    std::fs::write(&json_path, report.serialize_json()).map_err(|e| (1, format!("{}: {e}", json_path.display())))?;
    println!("written: {}", json_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<std::ffi::OsString> {
        a.iter().map(|s| s.into()).collect()
    }

    #[test]
    fn three_nodes_and_failover_by_default() {
        let o = parse(args(&[])).unwrap();
        assert_eq!(o.nodes, 3);
        assert!(o.failover());
        assert_eq!(o.failover_runs, 5);
        let o = parse(args(&["--nodes", "1"])).unwrap();
        assert!(!o.failover());
        assert!(!parse(args(&["--no-failover"])).unwrap().failover());
        assert!(parse(args(&["--nodes", "1", "--failover"])).is_err());
        assert!(parse(args(&["--nodes", "2"])).is_err());
        assert!(parse(args(&["--failover-runs", "0"])).is_err());
        assert_eq!(parse(args(&["--repeat", "3"])).unwrap().repeat, 3);
        assert!(parse(args(&["--repeat", "0"])).is_err());
    }

    #[test]
    fn colocated_journals_split_the_cores() {
        assert_eq!(colocated_cores(2, 3), 1);
        assert_eq!(colocated_cores(16, 3), 5);
        assert_eq!(colocated_cores(64, 1), 64);
        assert_eq!(colocated_cores(1, 3), 1);
        // Three voters by default: each gets its share; an explicit --cores wins; one journal
        // (--nodes 1) takes every core, as the journal itself does.
        assert_eq!(parse(args(&[])).unwrap().cores, Some(colocated_cores(machine_cpus(), 3)));
        assert_eq!(parse(args(&["--cores", "2"])).unwrap().cores, Some(2));
        assert_eq!(parse(args(&["--nodes", "1"])).unwrap().cores, None);
    }

    #[test]
    fn the_summary_takes_medians_per_client_count() {
        let comparison = |clients: u32, pact: f64, etcd: f64| EtcdComparison {
            clients,
            pact_nodes: 3,
            pact_commits_per_sec: pact,
            pact_p99_ms: 1.0,
            etcd: EtcdRow { puts_per_sec: etcd, p99_ms: 2.0, ..Default::default() },
            throughput_ratio: pact / etcd,
            p99_ratio: 0.5,
        };
        let rows = [
            comparison(1, 100.0, 50.0),
            comparison(1, 300.0, 100.0),
            comparison(1, 200.0, 200.0),
            comparison(16, 10.0, 5.0),
        ];
        let s = summarize(&rows);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].runs, s[0].pact_commits_per_sec, s[0].etcd_puts_per_sec), (3, 200.0, 100.0));
        assert_eq!((s[0].throughput_ratio, s[0].min_throughput_ratio, s[0].max_throughput_ratio), (2.0, 1.0, 3.0));
        assert_eq!((s[0].pact_p99_ms, s[0].etcd_p99_ms, s[0].p99_ratio), (1.0, 2.0, 0.5));
        assert_eq!((s[1].clients, s[1].runs, s[1].throughput_ratio), (16, 1, 2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn spread_takes_min_median_max() {
        let s = spread(vec![3.0, 1.0, 2.0, 5.0, 4.0]);
        assert_eq!((s.min_ms, s.median_ms, s.max_ms), (1.0, 3.0, 5.0));
        assert_eq!(spread(vec![4.0, 1.0]).median_ms, 2.5);
        assert_eq!(spread(Vec::new()).max_ms, 0.0);
    }

    #[test]
    fn messages_are_capped() {
        let mut m = Messages::default();
        for i in 0..MAX_MESSAGES + 3 {
            m.add(&format!("e{i}"), 1);
        }
        m.add("e0", 5);
        let l = m.list();
        assert_eq!(l.len(), MAX_MESSAGES + 1);
        assert_eq!((l[0].message.as_str(), l[0].count), ("e0", 6));
        assert_eq!(l.iter().find(|e| e.message == "(other)").map(|e| e.count), Some(3));
    }
}
