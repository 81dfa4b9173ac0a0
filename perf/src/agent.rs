//! `pact-perf agent`: the agent's footprint. A real `pact-agent` (release build) boots from a
//! `--dev` journal as an ordinary service (the child subreaper), supervises 5 services, and
//! idles; then its resident memory (VmRSS, VmHWM) and thread count are read from /proc, next
//! to a baseline measured the same way in the same run: `sleep`, the smallest process the
//! node runs anyway. Also the agent binary's size, unstripped and stripped, and the boot
//! phases the agent itself reported (its `PACT-BOOT` lines).

use crate::journal_proc::{self, JournalProc};
use pact_proto::client::Client;
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope, ServiceSpec, VClusterSpec};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse};
use pact_proto::Method;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

fn append(c: &mut Client, e: ConfigEntry) -> Result<u64, String> {
    let r: AppendEntryResponse =
        c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(e) }).map_err(|e| e.to_string())?;
    Ok(r.sequence)
}

pub fn run(args: Vec<std::ffi::OsString>) -> Result<(), (u8, String)> {
    use lexopt::prelude::*;
    let usage = |m: String| (2u8, m);
    // The size-optimised build the node image uses (`--profile agent`), else the release one.
    let release = journal_proc::default_binary().with_file_name("pact-agent");
    let sized = release.parent().and_then(|d| d.parent()).map(|t| t.join("agent").join("pact-agent"));
    let mut agent = sized.filter(|p| p.exists()).unwrap_or(release);
    let mut journal = journal_proc::default_binary();
    let mut idle = 5u64;
    let mut dir = PathBuf::from("perf/results");
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| usage(e.to_string()))? {
        match arg {
            Long("agent") => agent = PathBuf::from(p.value().map_err(|e| usage(e.to_string()))?),
            Long("journal") => journal = PathBuf::from(p.value().map_err(|e| usage(e.to_string()))?),
            Long("idle") => {
                idle =
                    p.value().map_err(|e| usage(e.to_string()))?.parse().map_err(|e| usage(format!("--idle: {e:?}")))?
            }
            Long("dir") => dir = PathBuf::from(p.value().map_err(|e| usage(e.to_string()))?),
            other => return Err(usage(other.unexpected().to_string())),
        }
    }
    let fail = |m: String| (1u8, m);
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let work = dir.join("agent-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| fail(e.to_string()))?;

    // Binary size.
    let size = std::fs::metadata(&agent).map_err(|e| fail(format!("{}: {e}", agent.display())))?.len();
    let stripped_path = work.join("pact-agent.stripped");
    let stripped = Command::new("objcopy")
        .arg("--strip-all")
        .arg(&agent)
        .arg(&stripped_path)
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| std::fs::metadata(&stripped_path).ok())
        .map(|m| m.len());

    // The journal and the node's declared state: 5 services, all `sleep`.
    let j = JournalProc::start(&journal, &work.join("journal"), Some(1)).map_err(fail)?;
    let mut c = Client::connect(&j.endpoint, j.tls.clone(), &j.token, Duration::from_secs(10))
        .map_err(|e| fail(e.to_string()))?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let services = (1..=5)
        .map(|i| ServiceSpec {
            name: format!("svc{i}"),
            binary: "/bin/sleep".into(),
            args: vec!["100000".into()],
            order: i,
            ..Default::default()
        })
        .collect();
    let spec = VClusterSpec { services, ..Default::default() };
    let scope = |t| Some(Scope { target: Some(t) });
    append(
        &mut c,
        ConfigEntry {
            entry_type: EntryType::Commit as i32,
            scope: scope(Target::VclusterId("bench".into())),
            policy_ref: "perf agent".into(),
            declared: Some(spec),
            ..Default::default()
        },
    )
    .map_err(fail)?;
    // Node id = this host's name, so applying the hostname changes nothing here.
    append(
        &mut c,
        ConfigEntry {
            entry_type: EntryType::NodeAssigned as i32,
            scope: scope(Target::NodeId(hostname.clone())),
            target_vcluster: "bench".into(),
            policy_ref: "perf agent".into(),
            ..Default::default()
        },
    )
    .map_err(fail)?;
    let data = work.join("journal").join("dev");
    let cfg = work.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\ncache_dir = \"{}\"\n[agent.journal]\nendpoints = [\"{}\"]\ntls_ca = \"{}\"\ntoken_path = \"{}\"\n",
            work.join("cache").display(),
            j.endpoint,
            data.join("ca.crt").display(),
            data.join("admin.token").display()
        ),
    )
    .map_err(|e| fail(e.to_string()))?;

    let started = Instant::now();
    let mut child = Command::new(&agent)
        .arg("--config")
        .arg(&cfg)
        .arg("--node-id")
        .arg(&hostname)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("{}: {e}", agent.display())))?;
    let pid = child.id();
    let out = child.stdout.take().ok_or_else(|| fail("no stdout".into()))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut phases = Vec::new();
    let mut running = 0;
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(ready_by.saturating_duration_since(Instant::now()))
            .map_err(|_| fail("the agent did not report ready within 30 s".into()))?;
        if let Some(rest) = line.strip_prefix("PACT-BOOT ") {
            phases.push(rest.to_string());
        }
        if line.starts_with("PACT-SERVICE ") && line.contains(" running ") {
            running += 1;
        }
        if line.starts_with("PACT-READY") {
            break;
        }
    }
    let to_ready = started.elapsed();
    std::thread::sleep(Duration::from_secs(idle));
    let rss = status_kib(pid, "VmRSS:").unwrap_or(0);
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    let threads = status_kib(pid, "Threads:").unwrap_or(0);
    let (anon, file) = (status_kib(pid, "RssAnon:").unwrap_or(0), status_kib(pid, "RssFile:").unwrap_or(0));

    let mut sleeper = Command::new("/bin/sleep").arg("100000").spawn().map_err(|e| fail(e.to_string()))?;
    std::thread::sleep(Duration::from_millis(300));
    let base_rss = status_kib(sleeper.id(), "VmRSS:").unwrap_or(0);
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = child.wait();
    drop(j);

    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut report = String::new();
    report.push_str(&format!(
        "agent: {} ({} services running at ready, {:.0} ms from start to ready as a service)\n",
        agent.display(),
        running,
        to_ready.as_secs_f64() * 1e3
    ));
    report.push_str(&format!(
        "idle RSS after {idle} s: {:.2} MiB (peak {:.2} MiB), {threads} threads; baseline `sleep` RSS {:.2} MiB; ratio agent/sleep {:.1}x; target < 5 MiB\n",
        mib(rss),
        mib(hwm),
        mib(base_rss),
        rss as f64 / base_rss.max(1) as f64
    ));
    report.push_str(&format!(
        "  of which anonymous (heap, stacks) {:.2} MiB, file-backed (code, libraries) {:.2} MiB\n",
        mib(anon),
        mib(file)
    ));
    report.push_str(&format!(
        "binary: {:.2} MiB unstripped, {} stripped\n",
        size as f64 / 1048576.0,
        stripped.map(|s| format!("{:.2} MiB", s as f64 / 1048576.0)).unwrap_or_else(|| "? (objcopy missing)".into())
    ));
    report.push_str(&format!("agent boot phases (as a service): {}\n", phases.join(", ")));
    print!("{report}");
    let json = format!(
        "{{\"rss_kib\":{rss},\"hwm_kib\":{hwm},\"threads\":{threads},\"rss_anon_kib\":{anon},\"rss_file_kib\":{file},\"baseline_sleep_rss_kib\":{base_rss},\"binary_bytes\":{size},\"stripped_bytes\":{},\"services\":{running},\"ready_ms\":{},\"phases\":[{}]}}\n",
        stripped.map(|s| s.to_string()).unwrap_or_else(|| "null".into()),
        to_ready.as_millis(),
        phases.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(",")
    );
    let path = dir.join("agent.json");
    std::fs::write(&path, json).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    println!("written: {}", path.display());
    if running < 5 {
        return Err(fail(format!("only {running} of 5 services were running at ready")));
    }
    Ok(())
}
