//! `boot-storm`: N simulated nodes boot at once, C in flight at a time. Each opens its own
//! new TLS connection to a journal's client port, does the pact hello, sends one
//! StreamBootConfig and reads the whole stream (overlay chunks, its node delta, the
//! completion), checking every checksum (`pact_boot.rs`).
//!
//! Setups, each started by the benchmark and loaded through the normal write path first (one
//! COMMIT of a realistic ~150 KiB-compressed vCluster spec, then one small COMMIT per node,
//! `boot_payload.rs`): (a) one `--dev` journal; (b) 3 voters + 2 learners on 127.0.0.1, the
//! nodes spread over all five client ports (boot streams are served by any replica).
//!
//! Baselines from the same run: nginx serving the same bytes over TLS 1.3 (`nginx.rs`), and
//! the in-memory TLS ceiling (`tls_ceiling.rs`).

use crate::boot_payload::{self, node_name, node_spec, overlay_spec, VCLUSTER};
use crate::commit::ErrorCount;
use crate::journal_proc::{default_binary, JournalProc};
use crate::nginx::{self, HttpsTarget, Nginx};
use crate::pact_boot::{request_frame, Capture, PactTarget};
use crate::quorum::{Quorum, NODES};
use crate::storm::{self, fresh_node_config, ms, sha256_hex, Storm};
use crate::tls_ceiling;
use nanoserde::SerJson;
use pact_proto::client::{CallError, Client};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope, VClusterSpec};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse};
use pact_proto::Method;
use prost::Message;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Learners next to the 3 voters in setup (b).
const LEARNERS: usize = 2;
/// How long the first boot of a setup may keep failing before the setup is declared broken
/// (the journal applies the last writes, builds the overlay).
const FIRST_BOOT_LIMIT: Duration = Duration::from_secs(60);
/// A boot that keeps getting Busy gives up after this long.
const BUSY_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    Single,
    Quorum,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Single => "pact 1 journal",
            Setup::Quorum => "pact 3 voters + 2 learners",
        }
    }

    fn journals(self) -> usize {
        match self {
            Setup::Single => 1,
            Setup::Quorum => NODES + LEARNERS,
        }
    }
}

struct Opts {
    boots: usize,
    concurrency: usize,
    cores: usize,
    setups: Vec<Setup>,
    nginx: Option<bool>,
    nginx_path: Option<PathBuf>,
    ceiling: bool,
    ceiling_seconds: f64,
    overlay_kib: usize,
    writers: usize,
    /// `[journal.streaming] max_concurrent_boot_streams` for the journals (None: their default).
    max_boot_streams: Option<u64>,
    seed: u64,
    timeout: Duration,
    journal: PathBuf,
    dir: PathBuf,
    json: Option<PathBuf>,
}

fn parse(args: Vec<std::ffi::OsString>) -> Result<Opts, String> {
    use lexopt::prelude::*;
    let mut o = Opts {
        boots: 10_000,
        concurrency: 1000,
        cores: 1,
        setups: vec![Setup::Single, Setup::Quorum],
        nginx: None,
        nginx_path: None,
        ceiling: true,
        ceiling_seconds: 3.0,
        overlay_kib: 150,
        writers: 16,
        max_boot_streams: None,
        seed: 1,
        timeout: Duration::from_secs(60),
        journal: default_binary(),
        dir: PathBuf::from("perf/results"),
        json: None,
    };
    let mut p = lexopt::Parser::from_args(args);
    fn value(p: &mut lexopt::Parser) -> Result<String, String> {
        p.value().map_err(|e| e.to_string())?.string().map_err(|e| e.to_string())
    }
    fn num<T>(v: String, flag: &str, lo: T, hi: T) -> Result<T, String>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let n: T = v.parse().map_err(|_| format!("--{flag}: expected a number, got {v:?}"))?;
        if n < lo || n > hi {
            return Err(format!("--{flag}: expected {lo}..={hi}, got {n}"));
        }
        Ok(n)
    }
    while let Some(a) = p.next().map_err(|e| e.to_string())? {
        let name = match a {
            Long(l) => l.to_string(),
            other => return Err(format!("boot-storm: unexpected {:?}", other.unexpected())),
        };
        if name == "no-ceiling" {
            o.ceiling = false;
            continue;
        }
        let v = value(&mut p)?;
        match name.as_str() {
            "boots" => o.boots = num(v, "boots", 1, 99_999)?,
            "concurrency" => o.concurrency = num(v, "concurrency", 1, 16_384)?,
            "cores" => o.cores = num(v, "cores", 1, 1024)?,
            "setups" => {
                o.setups = Vec::new();
                for s in v.split(',').map(str::trim) {
                    let s = match s {
                        "single" => Setup::Single,
                        "quorum" => Setup::Quorum,
                        "none" => continue,
                        other => return Err(format!("--setups: expected single, quorum or none, got {other:?}")),
                    };
                    if !o.setups.contains(&s) {
                        o.setups.push(s);
                    }
                }
            }
            "baseline" => {
                o.nginx = Some(match v.as_str() {
                    "nginx" => true,
                    "none" => false,
                    other => return Err(format!("--baseline: expected nginx or none, got {other:?}")),
                })
            }
            "nginx" => o.nginx_path = Some(PathBuf::from(v)),
            "ceiling-seconds" => o.ceiling_seconds = num(v, "ceiling-seconds", 0.1, 600.0)?,
            "overlay-kib" => o.overlay_kib = num(v, "overlay-kib", 16, 3072)?,
            "writers" => o.writers = num(v, "writers", 1, 256)?,
            "max-boot-streams" => o.max_boot_streams = Some(num(v, "max-boot-streams", 1, u64::MAX)?),
            "seed" => o.seed = num(v, "seed", 0, u64::MAX)?,
            "timeout" => o.timeout = Duration::from_secs(num(v, "timeout", 1, 3600)?),
            "journal" => o.journal = PathBuf::from(v),
            "dir" => o.dir = PathBuf::from(v),
            "json" => o.json = Some(PathBuf::from(v)),
            other => return Err(format!("boot-storm: unknown option --{other}")),
        }
    }
    Ok(o)
}

// ---- the report ----

#[derive(SerJson, Default)]
struct Row {
    setup: String,
    /// "pact" or "nginx".
    server: String,
    /// Journal processes, or nginx worker processes.
    processes: u32,
    /// Cores given to the server in total (sum of --cores over the journals; nginx workers).
    cores: u32,
    /// Negotiated TLS version, cipher suite and key exchange group.
    tls: String,
    boots: u64,
    ok: u64,
    failed: u64,
    busy_retries: u64,
    busy_wait_seconds: f64,
    seconds: f64,
    boots_per_sec: f64,
    /// Time to config: connect start (first attempt) to ConfigComplete / the delta's body end.
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// TLS record bytes the clients received per second, 1 MB = 10^6 bytes.
    mb_per_sec: f64,
    /// Overlay + delta bytes per second.
    payload_mb_per_sec: f64,
    wire_in_bytes_per_boot: f64,
    wire_out_bytes_per_boot: f64,
    payload_bytes_per_boot: f64,
    /// utime+stime of the server processes (journals, or nginx master + workers) during the storm.
    server_cpu_seconds: f64,
    server_cpu_s_per_1k_boots: f64,
    /// This process (the simulated nodes) during the storm.
    client_cpu_s_per_1k_boots: f64,
    /// Where the time goes, client view, means over successful boots (ms from the
    /// successful attempt's connect start): TCP connected, TLS handshake done (client side),
    /// pact hello answered (= TLS for HTTP), request sent, first response frame/head,
    /// ConfigComplete.
    mean_tcp_ms: f64,
    mean_tls_ms: f64,
    mean_hello_ms: f64,
    mean_request_sent_ms: f64,
    mean_first_byte_ms: f64,
    mean_done_ms: f64,
    /// Share of the mean boot spent until the TLS handshake was done.
    tls_share_pct: f64,
    tls_done_p50_ms: f64,
    tls_done_p99_ms: f64,
    /// From TLS done to completion.
    after_tls_p50_ms: f64,
    after_tls_p99_ms: f64,
    /// pact rows: boots/s over the nginx row with as many workers as the journals had cores
    /// (0 when nginx did not run).
    ratio_vs_nginx: f64,
    ceiling_boots_per_sec: f64,
    pct_of_ceiling: f64,
    /// Server CPU per boot over nginx's (same core count): below 1, pact spends less.
    cpu_ratio_vs_nginx: f64,
    /// The ceiling's server-side cost per boot over the measured server CPU per boot, in %:
    /// how close the server's whole per-boot CPU (TLS, framing, syscalls, kernel TCP time
    /// charged to it, storage reads) comes to the bare in-memory TLS work.
    cpu_pct_of_ceiling: f64,
    failures: Vec<ErrorCount>,
}

#[derive(SerJson, Default)]
struct OverlayInfo {
    /// "journal" (as received from the first pact setup) or "synthetic" (no pact setup ran).
    source: String,
    target_kib: u32,
    spec_encoded_bytes: u64,
    compressed_bytes: u64,
    raw_bytes: u64,
    chunks: u32,
    version: u64,
    checksum: String,
}

#[derive(SerJson, Default)]
struct DeltaInfo {
    node_spec_bytes_mean: f64,
    mean_bytes: f64,
    min_bytes: u64,
    max_bytes: u64,
}

#[derive(SerJson)]
struct Load {
    setup: String,
    entries: u64,
    seconds: f64,
    entries_per_sec: f64,
}

#[derive(SerJson)]
struct CeilingReport {
    definition: String,
    boots: u64,
    batches: u64,
    request_bytes: u64,
    /// The median batch's mean; the fastest and slowest batch's means next to it.
    server_us_per_boot: f64,
    server_us_min_batch: f64,
    server_us_max_batch: f64,
    server_handshake_us_per_boot: f64,
    server_transfer_us_per_boot: f64,
    client_us_per_boot: f64,
    per_core_boots_per_sec: f64,
    tls: String,
}

#[derive(SerJson)]
struct Report {
    benchmark: String,
    boots: u64,
    concurrency: u32,
    cores_per_journal: u32,
    machine_cpus: u32,
    /// /proc/loadavg when the run started and when it ended: other work on the machine
    /// (load at the start) skews every number.
    load_average_start: String,
    load_average_end: String,
    seed: u64,
    client: String,
    tls: String,
    overlay: OverlayInfo,
    delta: DeltaInfo,
    loads: Vec<Load>,
    rows: Vec<Row>,
    nginx_version: String,
    nginx_skipped: String,
    ceiling: Option<CeilingReport>,
}

const CLIENT_MODEL: &str = "one std thread per in-flight node (256 KiB stack), blocking rustls 0.23 on ring, \
     resumption off (every boot a full handshake), TCP_NODELAY, close_notify at the end";

fn row_from(setup: String, server: &str, processes: usize, cores: usize, s: &Storm, server_cpu: f64) -> Row {
    let ok = s.ok.max(1) as f64;
    let per_1k = |cpu: f64| if s.ok > 0 { cpu / s.ok as f64 * 1000.0 } else { 0.0 };
    let mean_done = s.mean_ms(s.sum_done_us);
    Row {
        setup,
        server: server.into(),
        processes: processes as u32,
        cores: cores as u32,
        boots: s.boots as u64,
        ok: s.ok,
        failed: s.failed,
        busy_retries: s.retries,
        busy_wait_seconds: s.busy_wait.as_secs_f64(),
        seconds: s.seconds,
        boots_per_sec: s.boots_per_sec(),
        p50_ms: ms(&s.total, 0.5),
        p99_ms: ms(&s.total, 0.99),
        p999_ms: ms(&s.total, 0.999),
        max_ms: if s.total.is_empty() { 0.0 } else { s.total.max() as f64 / 1000.0 },
        mb_per_sec: s.wire_in as f64 / s.seconds.max(1e-9) / 1e6,
        payload_mb_per_sec: s.payload as f64 / s.seconds.max(1e-9) / 1e6,
        wire_in_bytes_per_boot: s.wire_in as f64 / ok,
        wire_out_bytes_per_boot: s.wire_out as f64 / ok,
        payload_bytes_per_boot: s.payload as f64 / ok,
        server_cpu_seconds: server_cpu,
        server_cpu_s_per_1k_boots: per_1k(server_cpu),
        client_cpu_s_per_1k_boots: per_1k(s.client_cpu),
        mean_tcp_ms: s.mean_ms(s.sum_tcp_us),
        mean_tls_ms: s.mean_ms(s.sum_tls_us),
        mean_hello_ms: s.mean_ms(s.sum_hello_us),
        mean_request_sent_ms: s.mean_ms(s.sum_request_us),
        mean_first_byte_ms: s.mean_ms(s.sum_first_byte_us),
        mean_done_ms: mean_done,
        tls_share_pct: if mean_done > 0.0 { s.mean_ms(s.sum_tls_us) / mean_done * 100.0 } else { 0.0 },
        tls_done_p50_ms: ms(&s.to_tls, 0.5),
        tls_done_p99_ms: ms(&s.to_tls, 0.99),
        after_tls_p50_ms: ms(&s.after_tls, 0.5),
        after_tls_p99_ms: ms(&s.after_tls, 0.99),
        failures: s.failures.list(),
        ..Default::default()
    }
}

// ---- journals ----

enum Journals {
    Single(JournalProc, PathBuf),
    Quorum(Quorum),
}

impl Journals {
    fn start(o: &Opts, setup: Setup) -> Result<Journals, String> {
        let config = o
            .max_boot_streams
            .map(|n| format!("[journal.streaming]\nmax_concurrent_boot_streams = {n}\n"))
            .unwrap_or_default();
        match setup {
            Setup::Single => {
                let data = o.dir.join("boot-storm-journal");
                let config = (!config.is_empty()).then_some(config.as_str());
                let j = JournalProc::start_with_config(&o.journal, &data, Some(o.cores), config)?;
                Ok(Journals::Single(j, data))
            }
            Setup::Quorum => {
                let root = o.dir.join("boot-storm-quorum");
                let mut q = Quorum::start_with_config(&o.journal, &root, Some(o.cores), &config)?;
                q.add_learners(LEARNERS, Duration::from_secs(90))?;
                Ok(Journals::Quorum(q))
            }
        }
    }

    fn endpoints(&self) -> Vec<String> {
        match self {
            Journals::Single(j, _) => vec![j.endpoint.clone()],
            Journals::Quorum(q) => q.endpoints(),
        }
    }

    /// Where writes go: the voters.
    fn write_endpoints(&self) -> Vec<String> {
        let mut e = self.endpoints();
        e.truncate(NODES);
        e
    }

    fn token(&self) -> &str {
        match self {
            Journals::Single(j, _) => &j.token,
            Journals::Quorum(q) => &q.token,
        }
    }

    fn tls(&self) -> Arc<rustls::ClientConfig> {
        match self {
            Journals::Single(j, _) => j.tls.clone(),
            Journals::Quorum(q) => q.tls.clone(),
        }
    }

    fn tls_dir(&self) -> PathBuf {
        match self {
            Journals::Single(_, data) => data.join("tls"),
            Journals::Quorum(q) => q.tls_dir(0),
        }
    }

    fn cpu_seconds(&self) -> f64 {
        match self {
            Journals::Single(j, _) => j.cpu_seconds(),
            Journals::Quorum(q) => q.cpu_seconds(),
        }
    }

    /// Every journal has applied everything committed so far.
    fn settle(&mut self) -> Result<(), String> {
        match self {
            Journals::Single(..) => Ok(()),
            Journals::Quorum(q) => q.wait_all_applied(Duration::from_secs(120)),
        }
    }
}

impl Drop for Journals {
    fn drop(&mut self) {
        if let Journals::Single(_, data) = self {
            let _ = std::fs::remove_dir_all(&*data);
            let _ = std::fs::remove_file(data.with_extension("toml"));
        }
    }
}

fn commit(scope: Target, spec: VClusterSpec, what: &str) -> AppendEntryRequest {
    AppendEntryRequest {
        entry: Some(ConfigEntry {
            entry_type: EntryType::Commit as i32,
            scope: Some(Scope { target: Some(scope) }),
            policy_ref: format!("pact-perf boot-storm: {what}"),
            declared: Some(spec),
            ..Default::default()
        }),
    }
}

/// One AppendEntry, reconnecting and retrying a few times on a broken connection.
fn append(
    conn: &mut Option<Client>,
    endpoint: &str,
    tls: &Arc<rustls::ClientConfig>,
    token: &str,
    req: &AppendEntryRequest,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(100 * attempt));
        }
        if conn.is_none() {
            match Client::connect(endpoint, tls.clone(), token, Duration::from_secs(30)) {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.call::<_, AppendEntryResponse>(Method::AppendEntry, req) {
            Ok(_) => return Ok(()),
            Err(CallError::Remote(e))
                if e.code == pact_proto::ErrorCode::Busy || e.code == pact_proto::ErrorCode::Unavailable =>
            {
                last = e.to_string();
                std::thread::sleep(Duration::from_millis(u64::from(e.retry_after_ms.max(50))));
            }
            Err(CallError::Remote(e)) => return Err(format!("AppendEntry: {e}")),
            Err(e) => {
                last = e.to_string();
                *conn = None;
            }
        }
    }
    Err(format!("AppendEntry: {last}"))
}

/// The overlay COMMIT, then one COMMIT per node from `writers` threads over the voters.
fn load(j: &Journals, o: &Opts, overlay: &VClusterSpec) -> Result<Load, String> {
    let endpoints = j.write_endpoints();
    let tls = j.tls();
    let token = j.token().to_string();
    let start = Instant::now();
    let mut conn = None;
    append(
        &mut conn,
        &endpoints[0],
        &tls,
        &token,
        &commit(Target::VclusterId(VCLUSTER.into()), overlay.clone(), "overlay"),
    )?;
    let next = AtomicUsize::new(0);
    let error: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for w in 0..o.writers.min(o.boots) {
            let (next, error, endpoints, tls, token) = (&next, &error, &endpoints, &tls, &token);
            s.spawn(move || {
                let ep = &endpoints[w % endpoints.len()];
                let mut conn = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= o.boots || error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        return;
                    }
                    let req = commit(Target::NodeId(node_name(i)), node_spec(o.seed, i), "node");
                    if let Err(e) = append(&mut conn, ep, tls, token, &req) {
                        if let Ok(mut g) = error.lock() {
                            g.get_or_insert(format!("{}: {e}", node_name(i)));
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().ok().flatten() {
        return Err(e);
    }
    let seconds = start.elapsed().as_secs_f64();
    let entries = o.boots as u64 + 1;
    Ok(Load { setup: String::new(), entries, seconds, entries_per_sec: entries as f64 / seconds })
}

fn targets(endpoints: &[String]) -> Result<Vec<(SocketAddr, ServerName<'static>)>, String> {
    endpoints
        .iter()
        .map(|e| {
            let addr: SocketAddr = e.parse().map_err(|_| format!("{e}: not an address"))?;
            let name = pact_proto::tls::server_name_for(e).map_err(|e| e.to_string())?;
            Ok((addr, name))
        })
        .collect()
}

struct PactResult {
    row: Row,
    load: Load,
    capture: Capture,
    /// Copies of the journal's CA, certificate and key (for nginx and the ceiling).
    tls_files: (PathBuf, PathBuf, PathBuf),
    request_bytes: usize,
}

/// Copies the journal's TLS material out of its data dir (which goes with the journals).
fn keep_tls(from: &Path, to: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut out = Vec::new();
    for f in ["ca.crt", "server.crt", "server.key"] {
        let (a, b) = (from.join(f), to.join(f));
        std::fs::copy(&a, &b).map_err(|e| format!("{}: {e}", a.display()))?;
        out.push(b);
    }
    Ok((out[0].clone(), out[1].clone(), out[2].clone()))
}

fn run_pact(o: &Opts, setup: Setup, overlay: &VClusterSpec, keep_deltas: bool) -> Result<PactResult, String> {
    eprintln!("boot-storm: {}: starting journals (--cores {} each)", setup.label(), o.cores);
    let mut j = Journals::start(o, setup)?;
    eprintln!(
        "boot-storm: {}: writing the overlay and {} node entries ({} writers)",
        setup.label(),
        o.boots,
        o.writers
    );
    let mut ld = load(&j, o, overlay)?;
    ld.setup = setup.label().into();
    eprintln!(
        "boot-storm: {}: {} entries in {:.1} s ({:.0}/s)",
        setup.label(),
        ld.entries,
        ld.seconds,
        ld.entries_per_sec
    );
    j.settle()?;
    let endpoints = j.endpoints();
    let base_tls = j.tls();
    let mut target = PactTarget {
        endpoints: targets(&endpoints)?,
        tls: fresh_node_config(&base_tls),
        token: j.token().to_string(),
        timeout: o.timeout,
        busy_limit: BUSY_LIMIT,
        capture: Capture::new(o.boots, false),
    };
    // The first boot, untimed: the stream works on every journal (or why not).
    for (e, endpoint) in endpoints.iter().enumerate() {
        let deadline = Instant::now() + FIRST_BOOT_LIMIT;
        loop {
            match target.boot_at(e % o.boots, e) {
                Ok(_) => break,
                Err(m) if Instant::now() > deadline => {
                    return Err(format!("{}: StreamBootConfig on {} does not work: {m}", setup.label(), endpoint))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    target.capture = Capture::new(o.boots, keep_deltas);
    eprintln!("boot-storm: {}: {} boots, {} at a time", setup.label(), o.boots, o.concurrency);
    let cpu0 = j.cpu_seconds();
    let s = storm::run(o.boots, o.concurrency, |i| target.boot(i))?;
    let cpu = j.cpu_seconds() - cpu0;
    let mut row = row_from(setup.label().into(), "pact", setup.journals(), setup.journals() * o.cores, &s, cpu);
    row.tls = target.capture.tls.get().cloned().unwrap_or_default();
    let tls_files = keep_tls(&j.tls_dir(), &o.dir.join("boot-storm-tls"))?;
    let request_bytes = pact_proto::frame::HANDSHAKE_LEN
        + request_frame(&target.token, o.boots - 1, 1).encode().map(|b| b.len()).unwrap_or(0);
    drop(j);
    Ok(PactResult { row, load: ld, capture: target.capture, tls_files, request_bytes })
}

/// TLS material when no pact setup ran: a `--dev` journal makes it (the same kind).
fn tls_from_dev_journal(o: &Opts) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let data = o.dir.join("boot-storm-tls-journal");
    let j = JournalProc::start(&o.journal, &data, Some(1))?;
    let files = keep_tls(&data.join("tls"), &o.dir.join("boot-storm-tls"));
    drop(j);
    let _ = std::fs::remove_dir_all(&data);
    files
}

fn run_nginx(
    bin: &Path,
    o: &Opts,
    workers: usize,
    tls_files: &(PathBuf, PathBuf, PathBuf),
    overlay: &[u8],
    deltas: &[Vec<u8>],
) -> Result<Row, String> {
    let root = std::env::temp_dir().join(format!("pact-perf-nginx-{}-{workers}", std::process::id()));
    eprintln!("boot-storm: nginx, {workers} worker(s): {} boots, {} at a time", o.boots, o.concurrency);
    let n = Nginx::start(bin, &root, workers, &tls_files.1, &tls_files.2, overlay, deltas)?;
    let base = pact_proto::tls::client_config(&tls_files.0).map_err(|e| e.to_string())?;
    let target = HttpsTarget {
        addr: n.addr,
        name: pact_proto::tls::server_name_for(&n.addr.to_string()).map_err(|e| e.to_string())?,
        tls: fresh_node_config(&base),
        timeout: o.timeout,
        overlay_sha: sha256_hex(overlay),
        delta_sha: deltas.iter().map(|d| sha256_hex(d)).collect(),
        tls_desc: std::sync::OnceLock::new(),
    };
    target.boot(0).map_err(|e| format!("nginx: the first boot failed: {e}"))?;
    let cpu0 = n.cpu_seconds();
    let s = storm::run(o.boots, o.concurrency, |i| target.boot(i))?;
    let cpu = n.cpu_seconds() - cpu0;
    drop(n);
    let _ = std::fs::remove_dir_all(&root);
    let name = format!("nginx {workers} worker{}", if workers == 1 { "" } else { "s" });
    let mut row = row_from(name, "nginx", workers, workers, &s, cpu);
    row.tls = target.tls_desc.get().cloned().unwrap_or_default();
    Ok(row)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The soft limit on open files (from /proc/self/limits).
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn print_table(rows: &[Row]) {
    let opt = |v: f64, prec: usize| if v > 0.0 { format!("{v:.prec$}") } else { "-".into() };
    println!(
        "{:<28} {:>7} {:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11} {:>9} {:>10} {:>11} {:>10}",
        "setup",
        "ok",
        "failed",
        "retries",
        "boots/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "MB/s",
        "cpu s/1k",
        "x nginx",
        "% ceiling",
        "cpu x nginx",
        "cpu % ceil"
    );
    for r in rows {
        println!(
            "{:<28} {:>7} {:>6} {:>7} {:>8.0} {:>8.1} {:>8.1} {:>9.1} {:>8.1} {:>11.3} {:>9} {:>10} {:>11} {:>10}",
            r.setup,
            r.ok,
            r.failed,
            r.busy_retries,
            r.boots_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.mb_per_sec,
            r.server_cpu_s_per_1k_boots,
            opt(r.ratio_vs_nginx, 2),
            opt(r.pct_of_ceiling, 1),
            opt(r.cpu_ratio_vs_nginx, 2),
            opt(r.cpu_pct_of_ceiling, 1),
        );
    }
    for r in rows {
        println!("  {}: {}", r.setup, r.tls);
    }
    println!("where the time goes (client view, means in ms from the successful attempt's connect start):");
    println!(
        "{:<28} {:>7} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7} {:>12} {:>12} {:>12}",
        "setup",
        "tcp",
        "tls done",
        "hello",
        "req sent",
        "1st byte",
        "complete",
        "tls %",
        "tls p50/p99",
        "rest p50/p99",
        "client cpu/1k"
    );
    for r in rows {
        println!(
            "{:<28} {:>7.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>9.2} {:>7.1} {:>12} {:>12} {:>12.3}",
            r.setup,
            r.mean_tcp_ms,
            r.mean_tls_ms,
            r.mean_hello_ms,
            r.mean_request_sent_ms,
            r.mean_first_byte_ms,
            r.mean_done_ms,
            r.tls_share_pct,
            format!("{:.1}/{:.1}", r.tls_done_p50_ms, r.tls_done_p99_ms),
            format!("{:.1}/{:.1}", r.after_tls_p50_ms, r.after_tls_p99_ms),
            r.client_cpu_s_per_1k_boots
        );
    }
    for r in rows.iter().filter(|r| !r.failures.is_empty()) {
        println!("  {}: {} failed boots:", r.setup, r.failed);
        for e in &r.failures {
            println!("    {:>7} x {}", e.count, e.message);
        }
    }
}

pub fn run(args: Vec<std::ffi::OsString>) -> Result<(), (u8, String)> {
    let o = parse(args).map_err(|e| (2, e))?;
    std::fs::create_dir_all(&o.dir).map_err(|e| (1, format!("{}: {e}", o.dir.display())))?;
    let machine_cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load_start = load_average();
    println!("load average at start: {load_start} (other work on this machine skews every number below)");
    if let Some(limit) = open_files_limit() {
        if limit < o.concurrency as u64 + 256 {
            return Err((
                1,
                format!(
                    "open files limit {limit} is too low for --concurrency {} (ulimit -n {})",
                    o.concurrency,
                    o.concurrency + 256
                ),
            ));
        }
    }
    let nginx_bin = nginx::find_nginx(o.nginx_path.as_deref());
    let (use_nginx, nginx_skipped) = match (o.nginx, &nginx_bin) {
        (Some(true), None) => {
            return Err((1, "--baseline nginx: no nginx binary (apt-get install nginx-light)".into()))
        }
        (Some(false), _) => (false, "--baseline none".to_string()),
        (None, None) => {
            (false, "no nginx binary at /usr/sbin/nginx or on PATH (apt-get install nginx-light)".to_string())
        }
        (_, Some(_)) => (true, String::new()),
    };
    if !nginx_skipped.is_empty() {
        println!("note: nginx baseline skipped: {nginx_skipped}");
    }
    let overlay_spec = overlay_spec(o.seed, o.overlay_kib * 1024);
    let node_spec_mean = (0..o.boots.min(1000)).map(|i| node_spec(o.seed, i).encoded_len()).sum::<usize>() as f64
        / o.boots.min(1000) as f64;
    // pact setups; the first one's bytes feed the baselines.
    let mut rows = Vec::new();
    let mut loads = Vec::new();
    let mut first: Option<PactResult> = None;
    let mut tls_desc = String::new();
    for (k, &setup) in o.setups.iter().enumerate() {
        let mut r = run_pact(&o, setup, &overlay_spec, k == 0).map_err(|e| (1, e))?;
        tls_desc = r.capture.tls.get().cloned().unwrap_or_default();
        loads.push(std::mem::replace(
            &mut r.load,
            Load { setup: String::new(), entries: 0, seconds: 0.0, entries_per_sec: 0.0 },
        ));
        rows.push(std::mem::take(&mut r.row));
        if first.is_none() {
            first = Some(r);
        }
    }
    let (overlay_bytes, deltas, overlay_info, delta_info, tls_files, request_bytes) = match &first {
        Some(p) => {
            let ov = p.capture.overlay.get().cloned().ok_or((1, "no boot received the overlay".to_string()))?;
            let deltas: Vec<Vec<u8>> = p
                .capture
                .deltas
                .lock()
                .map_err(|_| (1, "poisoned".to_string()))?
                .iter()
                .map(|d| d.clone().unwrap_or_default())
                .collect();
            let info = OverlayInfo {
                source: "journal".into(),
                target_kib: o.overlay_kib as u32,
                spec_encoded_bytes: overlay_spec.encoded_len() as u64,
                compressed_bytes: ov.bytes.len() as u64,
                raw_bytes: u64::from(ov.raw_size),
                chunks: ov.chunks,
                version: ov.version,
                checksum: ov.checksum.clone(),
            };
            let c = &p.capture;
            let d = DeltaInfo {
                node_spec_bytes_mean: node_spec_mean,
                mean_bytes: c.delta_mean(),
                min_bytes: c.delta_min.load(Ordering::Relaxed).min(c.delta_max.load(Ordering::Relaxed)),
                max_bytes: c.delta_max.load(Ordering::Relaxed),
            };
            let mismatch = c.overlay_mismatch.load(Ordering::Relaxed);
            if mismatch > 0 {
                println!("warning: {mismatch} boots received an overlay with another checksum than the first boot");
            }
            (ov.bytes, deltas, info, d, p.tls_files.clone(), p.request_bytes)
        }
        None => {
            // Synthetic bytes of the same sizes: pseudo-random overlay, the node specs as deltas.
            let bytes = boot_payload::Rng::new(o.seed).bytes(o.overlay_kib * 1024);
            let deltas: Vec<Vec<u8>> = (0..o.boots).map(|i| node_spec(o.seed, i).encode_to_vec()).collect();
            let n = deltas.len().max(1) as f64;
            let info = OverlayInfo {
                source: "synthetic".into(),
                target_kib: o.overlay_kib as u32,
                spec_encoded_bytes: overlay_spec.encoded_len() as u64,
                compressed_bytes: bytes.len() as u64,
                checksum: sha256_hex(&bytes),
                ..Default::default()
            };
            let d = DeltaInfo {
                node_spec_bytes_mean: node_spec_mean,
                mean_bytes: deltas.iter().map(|d| d.len()).sum::<usize>() as f64 / n,
                min_bytes: deltas.iter().map(|d| d.len() as u64).min().unwrap_or(0),
                max_bytes: deltas.iter().map(|d| d.len() as u64).max().unwrap_or(0),
            };
            let files = tls_from_dev_journal(&o).map_err(|e| (1, e))?;
            (bytes, deltas, info, d, files, 512)
        }
    };
    // A node whose boot failed in the first setup has no delta to serve: the baselines get
    // its node spec's encoding instead (about the same size), and the run says so.
    let mut deltas = deltas;
    let missing = deltas.iter().filter(|d| d.is_empty()).count();
    if missing > 0 {
        println!("note: {missing} nodes have no delta from the journal (failed boots); the baselines serve their node spec bytes");
        for (i, d) in deltas.iter_mut().enumerate().filter(|(_, d)| d.is_empty()) {
            *d = node_spec(o.seed, i).encode_to_vec();
        }
    }
    println!(
        "overlay: {} B compressed ({} KiB; target {} KiB), {} B raw, {} chunk(s), spec {} B prost; node delta {:.0} B mean ({}..{}), node spec {:.0} B",
        overlay_info.compressed_bytes,
        overlay_info.compressed_bytes / 1024,
        o.overlay_kib,
        overlay_info.raw_bytes,
        overlay_info.chunks,
        overlay_info.spec_encoded_bytes,
        delta_info.mean_bytes,
        delta_info.min_bytes,
        delta_info.max_bytes,
        delta_info.node_spec_bytes_mean
    );
    // nginx, once per distinct core count the pact setups had (one worker per core).
    let mut nginx_version = String::new();
    if let (true, Some(bin)) = (use_nginx, &nginx_bin) {
        nginx_version = nginx::version(bin);
        let mut counts: Vec<usize> = rows.iter().map(|r| r.cores as usize).collect();
        if counts.is_empty() {
            counts.push(o.cores);
        }
        counts.dedup();
        counts.sort_unstable();
        counts.dedup();
        for w in counts {
            let r = run_nginx(bin, &o, w, &tls_files, &overlay_bytes, &deltas).map_err(|e| (1, e))?;
            rows.push(r);
        }
    }
    let ceiling = if o.ceiling {
        eprintln!("boot-storm: in-memory TLS ceiling, one thread, {:.1} s", o.ceiling_seconds);
        let server_cfg = pact_proto::tls::server_config(&tls_files.1, &tls_files.2).map_err(|e| (1, e.to_string()))?;
        let client_cfg =
            fresh_node_config(&pact_proto::tls::client_config(&tls_files.0).map_err(|e| (1, e.to_string()))?);
        let c =
            tls_ceiling::measure(&server_cfg, &client_cfg, request_bytes, &overlay_bytes, &deltas, o.ceiling_seconds)
                .map_err(|e| (1, format!("ceiling: {e}")))?;
        Some(CeilingReport {
            definition: "server-side cost per boot = wall time inside the server's rustls calls (ServerConnection::new, \
                         read_tls, process_new_packets, reading the request, writing overlay + delta + close_notify, write_tls) \
                         for a full TLS 1.3 handshake plus the request client->server and the overlay and node delta \
                         server->client, in memory (no sockets, no framing, no storage), one thread; boots in batches \
                         of 100, each batch's times scaled by the share of its wall time the thread was on a CPU \
                         (/proc/thread-self/schedstat), median batch mean; ceiling boots/s = min(cores given to the \
                         server, machine CPUs) / that cost"
                .into(),
            boots: c.boots,
            batches: c.batches,
            request_bytes: request_bytes as u64,
            server_us_per_boot: c.server_us_per_boot,
            server_us_min_batch: c.server_us_min_batch,
            server_us_max_batch: c.server_us_max_batch,
            server_handshake_us_per_boot: c.handshake_server_us,
            server_transfer_us_per_boot: c.transfer_server_us,
            client_us_per_boot: c.client_us_per_boot,
            per_core_boots_per_sec: 1e6 / c.server_us_per_boot,
            tls: c.tls,
        })
    } else {
        None
    };
    // Ratios.
    let nginx_rows: Vec<(u32, f64, f64)> = rows
        .iter()
        .filter(|r| r.server == "nginx")
        .map(|r| (r.cores, r.boots_per_sec, r.server_cpu_s_per_1k_boots))
        .collect();
    let ratio = |a: f64, b: f64| if a > 0.0 && b > 0.0 { a / b } else { 0.0 };
    for r in rows.iter_mut() {
        if r.server == "pact" {
            if let Some((_, rate, cpu)) = nginx_rows.iter().find(|(c, _, _)| *c == r.cores) {
                r.ratio_vs_nginx = ratio(r.boots_per_sec, *rate);
                r.cpu_ratio_vs_nginx = ratio(r.server_cpu_s_per_1k_boots, *cpu);
            }
        }
        if let Some(c) = &ceiling {
            let cores = (r.cores as usize).min(machine_cpus) as f64;
            r.ceiling_boots_per_sec = cores * c.per_core_boots_per_sec;
            r.pct_of_ceiling = ratio(r.boots_per_sec, r.ceiling_boots_per_sec) * 100.0;
            // s per 1000 boots = ms per boot.
            r.cpu_pct_of_ceiling = ratio(c.server_us_per_boot / 1000.0, r.server_cpu_s_per_1k_boots) * 100.0;
        }
    }
    println!(
        "boot-storm: {} boots, {} in flight; journal --cores {} each; machine CPUs {machine_cpus}; TLS {}",
        o.boots, o.concurrency, o.cores, tls_desc
    );
    println!("client: {CLIENT_MODEL}");
    for l in &loads {
        println!("load ({}): {} AppendEntry in {:.1} s ({:.0}/s)", l.setup, l.entries, l.seconds, l.entries_per_sec);
    }
    print_table(&rows);
    if let Some(c) = &ceiling {
        println!(
            "ceiling (in-memory rustls, one thread, {} boots, {} B request): server {:.0} us/boot (batches {:.0}..{:.0}; \
             {:.0} handshake + {:.0} transfer), client {:.0} us/boot; {:.0} boots/s per core ({})",
            c.boots,
            c.request_bytes,
            c.server_us_per_boot,
            c.server_us_min_batch,
            c.server_us_max_batch,
            c.server_handshake_us_per_boot,
            c.server_transfer_us_per_boot,
            c.client_us_per_boot,
            c.per_core_boots_per_sec,
            c.tls
        );
    }
    let failed: u64 = rows.iter().map(|r| r.failed).sum();
    let report = Report {
        benchmark: "boot-storm".into(),
        boots: o.boots as u64,
        concurrency: o.concurrency as u32,
        cores_per_journal: o.cores as u32,
        machine_cpus: machine_cpus as u32,
        load_average_start: load_start,
        load_average_end: load_average(),
        seed: o.seed,
        client: CLIENT_MODEL.into(),
        tls: tls_desc,
        overlay: overlay_info,
        delta: delta_info,
        loads,
        rows,
        nginx_version,
        nginx_skipped,
        ceiling,
    };
    let json_path = o.json.clone().unwrap_or_else(|| o.dir.join("boot-storm.json"));
    std::fs::write(&json_path, report.serialize_json()).map_err(|e| (1, format!("{}: {e}", json_path.display())))?;
    println!("written: {}", json_path.display());
    let _ = std::fs::remove_dir_all(o.dir.join("boot-storm-tls"));
    if failed > 0 {
        return Err((1, format!("{failed} boots failed (see the table)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<std::ffi::OsString> {
        a.iter().map(|s| s.into()).collect()
    }

    #[test]
    fn defaults_and_flags() {
        let o = parse(args(&[])).unwrap();
        assert_eq!((o.boots, o.concurrency, o.cores, o.overlay_kib), (10_000, 1000, 1, 150));
        assert_eq!(o.setups, vec![Setup::Single, Setup::Quorum]);
        assert!(o.ceiling);
        let o =
            parse(args(&["--boots", "2000", "--concurrency", "200", "--setups", "quorum", "--no-ceiling"])).unwrap();
        assert_eq!((o.boots, o.concurrency, o.setups.clone(), o.ceiling), (2000, 200, vec![Setup::Quorum], false));
        assert!(parse(args(&["--setups", "none"])).unwrap().setups.is_empty());
        assert!(parse(args(&["--boots", "0"])).is_err());
        assert!(parse(args(&["--setups", "three"])).is_err());
        assert!(parse(args(&["--baseline", "apache"])).is_err());
        assert_eq!(parse(args(&["--baseline", "none"])).unwrap().nginx, Some(false));
    }
}
