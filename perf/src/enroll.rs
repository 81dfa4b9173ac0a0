//! `pact-perf enroll`: the wave of enrollments a boot storm brings (every node of a new
//! cluster, or all of them again after the quorum restarted and retired its enrollment CAs).
//!
//! One `--dev` journal (its enrollment rate limit raised out of the way, so the journal's own
//! cost is measured; the default limit, 6,000/min, is a policy, not a capacity). N nodes are
//! registered with BatchRegisterNodes; each then enrolls as an agent does: a new TLS
//! connection, no credentials, its hardware identity and a CSR for its own key (made before
//! the clock starts), C at a time. Reported: registrations/s, enrollments/s, latency
//! p50/p99/p999, and the journal's CPU per enrollment.
//!
//! Baselines, same run: the journal's own signing code in this process on one thread (parse
//! and verify the CSR, sign), so the ratio says what the network, TLS and the raft record of
//! each certificate cost on top; and plain appends (a 1 KiB entry on a new TLS connection per
//! write, the same C), the journal's cost of any recorded, durable write.

use crate::journal_proc::{self, JournalProc};
use hdrhistogram::Histogram;
use pact_proto::client::Client;
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::enrollment::{
    BatchRegisterNodesRequest, BatchRegisterNodesResponse, EnrollRequest, EnrollResponse, HardwareIdentity,
    RegisterNodeRequest,
};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse};
use pact_proto::Method;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Opts {
    nodes: usize,
    concurrency: usize,
    journal: PathBuf,
    dir: PathBuf,
    cores: Option<usize>,
}

fn mac(i: usize) -> String {
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", (i >> 24) & 0xff, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

fn node(i: usize) -> String {
    format!("node-{i:05}")
}

fn hw(i: usize) -> HardwareIdentity {
    HardwareIdentity { mac_address: mac(i), ..Default::default() }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs `work(i)` for i in 0..n on `c` threads; each result's latency goes into one histogram.
/// Returns (wall seconds, latencies, failures).
fn drive(
    n: usize,
    c: usize,
    work: Arc<dyn Fn(usize) -> Result<(), String> + Send + Sync>,
) -> (f64, Histogram<u64>, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds")));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let threads: Vec<_> = (0..c.max(1))
        .map(|_| {
            let (next, hist, errors, work) = (next.clone(), hist.clone(), errors.clone(), work.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                match work(i) {
                    Ok(()) => {
                        let us = t.elapsed().as_micros().max(1) as u64;
                        let _ = hist.lock().map(|mut h| h.record(us.min(120_000_000)));
                    }
                    Err(e) => {
                        let _ = errors.lock().map(|mut v| v.push(e));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let wall = start.elapsed().as_secs_f64();
    let h = hist.lock().map(|h| h.clone()).unwrap_or_else(|_| Histogram::new(3).expect("histogram"));
    let e = errors.lock().map(|v| v.clone()).unwrap_or_default();
    (wall, h, e)
}

pub fn run(args: Vec<std::ffi::OsString>) -> Result<(), (u8, String)> {
    use lexopt::prelude::*;
    let usage = |m: String| (2u8, m);
    let mut o = Opts {
        nodes: 10_000,
        concurrency: 256,
        journal: journal_proc::default_binary(),
        dir: PathBuf::from("perf/results"),
        cores: None,
    };
    let mut p = lexopt::Parser::from_args(args);
    fn num(p: &mut lexopt::Parser, name: &str) -> Result<usize, (u8, String)> {
        let v = p.value().map_err(|e| (2u8, e.to_string()))?;
        v.parse().map_err(|e| (2u8, format!("--{name}: {e:?}")))
    }
    while let Some(arg) = p.next().map_err(|e| usage(e.to_string()))? {
        match arg {
            Long("nodes") => o.nodes = num(&mut p, "nodes")?.max(1),
            Long("concurrency") => o.concurrency = num(&mut p, "concurrency")?.max(1),
            Long("cores") => o.cores = Some(num(&mut p, "cores")?.max(1)),
            Long("journal") => o.journal = PathBuf::from(p.value().map_err(|e| usage(e.to_string()))?),
            Long("dir") => o.dir = PathBuf::from(p.value().map_err(|e| usage(e.to_string()))?),
            other => return Err(usage(other.unexpected().to_string())),
        }
    }
    let fail = |m: String| (1u8, m);
    std::fs::create_dir_all(&o.dir).map_err(|e| fail(format!("{}: {e}", o.dir.display())))?;

    // Every node's key and CSR, made before any clock starts (a node makes its own).
    let t = Instant::now();
    let csrs: Vec<Vec<u8>> = (0..o.nodes)
        .map(|i| pact_agent::identity::new_key_and_csr(&node(i)).map(|k| k.csr_der))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    println!("{} keys and CSRs made in {:.1} s (client side, not measured)", o.nodes, t.elapsed().as_secs_f64());

    // Baseline 1: the journal's signing code alone, in this process, one thread.
    let dev = o.dir.join("enroll-ca");
    let _ = std::fs::remove_dir_all(&dev);
    let files = pact_journal::pki::ensure_tls(&dev, 1, &[], None).map_err(fail)?;
    let root = std::fs::read_to_string(&files.ca_cert).map_err(|e| fail(e.to_string()))?;
    let root_key = std::fs::read_to_string(&files.ca_key).map_err(|e| fail(e.to_string()))?;
    let authority = pact_journal::enroll::Authority::new(
        1,
        &root,
        &root_key,
        pact_journal::enroll::DEFAULT_CERT_LIFETIME,
        pact_journal::enroll::RateLimits::from_per_minute(u64::MAX),
    )
    .map_err(fail)?;
    let sample = o.nodes.min(2_000);
    let t = Instant::now();
    for (i, csr) in csrs.iter().take(sample).enumerate() {
        authority.sign(&node(i), csr, None, false).map_err(fail)?;
    }
    let sign_per_s = sample as f64 / t.elapsed().as_secs_f64();

    // The journal.
    let config = "[journal.enrollment]\nrate_limit_per_minute = 100000000\n";
    let j = JournalProc::start_with_config(&o.journal, &o.dir.join("enroll-journal"), o.cores, Some(config))
        .map_err(fail)?;
    let connect = |token: &str| Client::connect(&j.endpoint, j.tls.clone(), token, Duration::from_secs(60));

    // Registration, in batches.
    let t = Instant::now();
    let mut admin = connect(&j.token).map_err(|e| fail(e.to_string()))?;
    for chunk in (0..o.nodes).collect::<Vec<_>>().chunks(pact_journal::enroll::MAX_BATCH) {
        let nodes =
            chunk.iter().map(|&i| RegisterNodeRequest { node_id: node(i), hardware_identity: Some(hw(i)) }).collect();
        let r: BatchRegisterNodesResponse = admin
            .call(Method::BatchRegisterNodes, &BatchRegisterNodesRequest { nodes })
            .map_err(|e| fail(e.to_string()))?;
        if r.failed > 0 {
            return Err(fail(format!(
                "{} registrations failed: {:?}",
                r.failed,
                r.results.iter().find(|x| !x.success)
            )));
        }
    }
    let reg_per_s = o.nodes as f64 / t.elapsed().as_secs_f64();

    // Enrollment: each node on its own new connection, no credentials.
    let (endpoint, tls) = (j.endpoint.clone(), j.tls.clone());
    let csrs = Arc::new(csrs);
    let enroll_one: Arc<dyn Fn(usize) -> Result<(), String> + Send + Sync> = Arc::new(move |i| {
        let mut c = Client::connect(&endpoint, tls.clone(), "", Duration::from_secs(60)).map_err(|e| e.to_string())?;
        let req = EnrollRequest { hardware_identity: Some(hw(i)), csr: csrs[i].clone(), node_id: node(i) };
        let r: EnrollResponse = c.call(Method::Enroll, &req).map_err(|e| e.to_string())?;
        if r.node_id != node(i) {
            return Err(format!("node {i} enrolled as {}", r.node_id));
        }
        Ok(())
    });
    // One wave of `o.nodes` calls, `o.concurrency` at a time: wall seconds, latencies and the
    // journal's CPU seconds; any failure fails the benchmark.
    let wave = |what: &str, one| {
        let cpu0 = j.cpu_seconds();
        let (wall, hist, errors) = drive(o.nodes, o.concurrency, one);
        if let Some(first) = errors.first() {
            return Err(fail(format!("{} {what} failed; first: {first}", errors.len())));
        }
        Ok((wall, hist, j.cpu_seconds() - cpu0))
    };
    let (wall, hist, cpu) = wave("enrollments", enroll_one)?;
    let enroll_per_s = o.nodes as f64 / wall;

    // Baseline 2: the same number of plain appends, each on a new connection.
    let (endpoint, tls, token) = (j.endpoint.clone(), j.tls.clone(), j.token.clone());
    let append_one: Arc<dyn Fn(usize) -> Result<(), String> + Send + Sync> = Arc::new(move |i| {
        let mut c =
            Client::connect(&endpoint, tls.clone(), &token, Duration::from_secs(60)).map_err(|e| e.to_string())?;
        let e = ConfigEntry {
            entry_type: EntryType::AdminOperation as i32,
            scope: Some(Scope { target: Some(Target::NodeId(node(i))) }),
            policy_ref: "x".repeat(1024),
            ..Default::default()
        };
        let _: AppendEntryResponse =
            c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(e) }).map_err(|e| e.to_string())?;
        Ok(())
    });
    let (awall, ahist, acpu) = wave("appends", append_one)?;
    let append_per_s = o.nodes as f64 / awall;

    println!("pact-perf enroll: {} nodes, {} at a time, journal cores {:?}", o.nodes, o.concurrency, o.cores);
    println!("  registration (BatchRegisterNodes): {reg_per_s:.0} nodes/s");
    println!(
        "  enrollment: {enroll_per_s:.0}/s ({wall:.1} s for all), latency p50 {:.1} ms p99 {:.1} ms p999 {:.1} ms, journal CPU {:.2} ms each",
        ms(&hist, 0.5),
        ms(&hist, 0.99),
        ms(&hist, 0.999),
        cpu * 1000.0 / o.nodes as f64
    );
    println!(
        "  baseline, plain appends on new connections: {append_per_s:.0}/s, p50 {:.1} ms p99 {:.1} ms, journal CPU {:.2} ms each",
        ms(&ahist, 0.5),
        ms(&ahist, 0.99),
        acpu * 1000.0 / o.nodes as f64
    );
    println!("  baseline, signing alone (this process, one thread, {sample} CSRs): {sign_per_s:.0}/s");
    println!(
        "  ratios: enrollment/append {:.2}x throughput, {:.2}x CPU; enrollment/signing-alone {:.2}x",
        enroll_per_s / append_per_s,
        if acpu > 0.0 { cpu / acpu } else { 0.0 },
        enroll_per_s / sign_per_s
    );
    let json = format!(
        "{{\"nodes\":{},\"concurrency\":{},\"registrations_per_s\":{reg_per_s:.1},\"enrollments_per_s\":{enroll_per_s:.1},\"enroll_p50_ms\":{:.2},\"enroll_p99_ms\":{:.2},\"enroll_cpu_ms\":{:.3},\"appends_per_s\":{append_per_s:.1},\"append_cpu_ms\":{:.3},\"sign_alone_per_s\":{sign_per_s:.1}}}\n",
        o.nodes,
        o.concurrency,
        ms(&hist, 0.5),
        ms(&hist, 0.99),
        cpu * 1000.0 / o.nodes as f64,
        acpu * 1000.0 / o.nodes as f64
    );
    let out = o.dir.join("enroll.json");
    std::fs::write(&out, json).map_err(|e| fail(format!("{}: {e}", out.display())))?;
    println!("  results in {}", out.display());
    Ok(())
}
