//! Boot streaming and subscriptions against a real `pact-journal --dev`, through the agent's
//! own journal client (`pact_agent::journal_client`): overlays built from what `pact apply`
//! and later commits and rollbacks recorded, node deltas, assignments, version checks, the
//! concurrency cap, malformed requests, and a subscription that resumes across a restart.

mod common;

use common::Journal;
use pact_agent::journal_client::{self, Config, Event, JournalClient};
use pact_proto::client::{CallError, Client};
use pact_proto::config::{
    scope::Target, ConfigEntry, DeltaAction, EntryType, FileDelta, FileSpec, KernelDelta, MountSpec, PolicySpec, Scope,
    ServiceSpec, StateDelta, VClusterSpec,
};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse, GetEntryRequest, GetOverlayRequest, OverlayRecord};
use pact_proto::stream::{config_update, BootConfigRequest, ConfigChunk};
use pact_proto::{ErrorCode, Method};
use std::time::{Duration, Instant};

fn append(c: &mut Client, e: ConfigEntry) -> u64 {
    let r: AppendEntryResponse = c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(e) }).unwrap();
    r.sequence
}

fn entry(kind: EntryType, target: Target) -> ConfigEntry {
    ConfigEntry {
        entry_type: kind as i32,
        scope: Some(Scope { target: Some(target) }),
        policy_ref: "test".into(),
        ..Default::default()
    }
}

fn apply_vc(c: &mut Client, vc: &str, spec: &VClusterSpec) -> u64 {
    let mut e = entry(EntryType::Commit, Target::VclusterId(vc.into()));
    e.declared = Some(spec.clone());
    append(c, e)
}

fn vc_delta(c: &mut Client, vc: &str, d: StateDelta) -> u64 {
    let mut e = entry(EntryType::Commit, Target::VclusterId(vc.into()));
    e.state_delta = Some(d);
    append(c, e)
}

fn assign(c: &mut Client, node: &str, vc: &str) -> u64 {
    let mut e = entry(EntryType::NodeAssigned, Target::NodeId(node.into()));
    e.target_vcluster = vc.into();
    append(c, e)
}

fn sysctl(key: &str, value: &str) -> StateDelta {
    StateDelta {
        kernel: vec![KernelDelta {
            key: key.into(),
            action: DeltaAction::Modify as i32,
            declared_value: Some(value.into()),
            actual_value: None,
        }],
        ..Default::default()
    }
}

fn ml_spec() -> VClusterSpec {
    let mut s = VClusterSpec { vcluster_id: "ml".into(), supervisor_backend: "pact".into(), ..Default::default() };
    s.sysctl.insert("vm.swappiness".into(), "10".into());
    s.modules = vec!["nvidia".into(), "lustre".into()];
    s.mounts.insert(
        "/scratch".into(),
        MountSpec {
            fs_type: "nfs".into(),
            source: "storage:/scratch".into(),
            options: "rw,hard".into(),
            read_only: false,
        },
    );
    s.files.push(FileSpec {
        path: "/etc/motd".into(),
        content: Some("ml nodes\n".into()),
        mode: Some(0o644),
        ..Default::default()
    });
    s.services.push(ServiceSpec {
        name: "chronyd".into(),
        binary: "/usr/sbin/chronyd".into(),
        args: vec!["-d".into()],
        order: 1,
        ..Default::default()
    });
    s.policy = Some(PolicySpec {
        base_commit_window_seconds: Some(900),
        enforcement_mode: Some("enforce".into()),
        blacklist_patterns: vec!["rm -rf /*".into()],
        ..Default::default()
    });
    s
}

fn agent(j: &Journal, node: &str, vc: &str) -> JournalClient {
    let mut cfg = Config::new(vec![j.endpoint()], j.tls(), &j.token(), node, vc);
    cfg.max_rounds = Some(3);
    cfg.backoff_min = Duration::from_millis(50);
    JournalClient::new(cfg)
}

fn remote_code<T: std::fmt::Debug>(r: Result<T, CallError>) -> ErrorCode {
    match r {
        Err(CallError::Remote(e)) => e.code,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[test]
fn overlays_and_node_deltas_follow_commits_rollbacks_and_assignments() {
    let j = Journal::start("boot-stream");
    let mut c = j.client();

    // Nothing declared yet: an empty overlay at version 0 and an empty node delta, not an error.
    let first = agent(&j, "n1", "ml").boot(None).unwrap();
    assert_eq!((first.overlay_version, first.node_version, first.vcluster.as_str()), (0, 0, "ml"));
    assert_eq!(first.overlay, VClusterSpec { vcluster_id: "ml".into(), ..Default::default() });

    let applied = apply_vc(&mut c, "ml", &ml_spec());
    let mut node_spec = VClusterSpec::default();
    node_spec.sysctl.insert("kernel.hostname".into(), "n1".into());
    let mut e = entry(EntryType::Commit, Target::NodeId("n1".into()));
    e.declared = Some(node_spec.clone());
    append(&mut c, e);
    let assigned = assign(&mut c, "n1", "ml");

    // The node asks for "other"; the journal's assignment wins.
    let mut n1 = agent(&j, "n1", "other");
    let b = n1.boot(None).unwrap();
    assert_eq!(b.vcluster, "ml");
    assert_eq!(b.overlay, ml_spec());
    assert_eq!(b.overlay_version, applied);
    assert_eq!(b.node_version, assigned);
    assert_eq!(b.node.node_spec.as_ref(), Some(&node_spec));
    assert_eq!(b.node.assigned_vcluster, "ml");
    assert!(!b.unchanged);
    let record: OverlayRecord = c.call(Method::GetOverlay, &GetOverlayRequest { vcluster_id: "ml".into() }).unwrap();
    assert_eq!((record.version, &record.checksum), (applied, &b.overlay_checksum));

    // Current versions named in the request: only the completion comes back.
    let same = n1.boot(Some(&b)).unwrap();
    assert!(same.unchanged);
    assert_eq!(same.overlay, b.overlay);

    // A commit that touches ml: the shard's cached overlay is stale and is rebuilt.
    let changed = vc_delta(&mut c, "ml", sysctl("vm.swappiness", "60"));
    let b2 = n1.boot(Some(&b)).unwrap();
    assert_eq!(b2.overlay_version, changed);
    assert_eq!(b2.overlay.sysctl["vm.swappiness"], "60");
    assert_eq!(b2.node_version, assigned, "the node delta did not change and was reused");
    assert!(!b2.unchanged);
    // A bare commit (a message, no change) does not move the overlay's version.
    append(&mut c, entry(EntryType::Commit, Target::VclusterId("ml".into())));
    assert!(n1.boot(Some(&b2)).unwrap().unchanged);

    // A rollback really restores the declared state at its target, byte for byte.
    let mut rb = entry(EntryType::Rollback, Target::VclusterId("ml".into()));
    rb.parent = Some(applied);
    let rolled = append(&mut c, rb);
    let b3 = n1.boot(Some(&b2)).unwrap();
    assert_eq!(b3.overlay_version, rolled);
    assert_eq!(b3.overlay, ml_spec());
    assert_eq!(b3.overlay_checksum, b.overlay_checksum, "same state, same bytes, same checksum");
    assert_eq!(b3.overlay_compressed, b.overlay_compressed);

    // A change committed on the node itself survives a reboot: it is in the node delta.
    let mut manual = entry(EntryType::Commit, Target::NodeId("n1".into()));
    manual.state_delta = Some(StateDelta {
        files: vec![FileDelta {
            path: "/etc/hosts.allow".into(),
            action: DeltaAction::Add as i32,
            content: Some("sshd: 10.0.0.0/8\n".into()),
            mode: Some(0o644),
            ..Default::default()
        }],
        ..sysctl("net.core.somaxconn", "4096")
    });
    let manual_seq = append(&mut c, manual);
    let b4 = n1.boot(Some(&b3)).unwrap();
    assert_eq!(b4.node_version, manual_seq);
    let ns = b4.node.node_spec.unwrap();
    assert_eq!(ns.sysctl["net.core.somaxconn"], "4096");
    assert_eq!(ns.sysctl["kernel.hostname"], "n1");
    assert_eq!(ns.files[0].content.as_deref(), Some("sshd: 10.0.0.0/8\n"));
    assert!(b4.node_checksum.len() == 64 && b4.node.assigned_vcluster == "ml");

    // Moves and unassignments are recorded and checked against the current assignment.
    let mut again = entry(EntryType::NodeAssigned, Target::NodeId("n1".into()));
    again.target_vcluster = "other".into();
    let refused: Result<AppendEntryResponse, _> =
        c.call(Method::AppendEntry, &AppendEntryRequest { entry: Some(again) });
    assert_eq!(remote_code(refused), ErrorCode::FailedPrecondition);
    let mut mv = entry(EntryType::NodeMoved, Target::NodeId("n1".into()));
    mv.target_vcluster = "other".into();
    append(&mut c, mv);
    assert_eq!(n1.boot(None).unwrap().vcluster, "other");
    append(&mut c, entry(EntryType::NodeUnassigned, Target::NodeId("n1".into())));
    let unassigned = agent(&j, "n1", "ml").boot(None).unwrap();
    assert_eq!((unassigned.vcluster.as_str(), unassigned.node.assigned_vcluster.as_str()), ("ml", ""));
    let not_assigned: Result<AppendEntryResponse, _> = c.call(
        Method::AppendEntry,
        &AppendEntryRequest { entry: Some(entry(EntryType::NodeUnassigned, Target::NodeId("n1".into()))) },
    );
    assert_eq!(remote_code(not_assigned), ErrorCode::FailedPrecondition);
}

#[test]
fn malformed_boot_requests_get_errors_while_others_proceed() {
    let j = Journal::start("boot-bad");
    let mut c = j.client();
    apply_vc(&mut c, "ml", &ml_spec());

    // Good boots keep completing on other connections while bad requests arrive.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (endpoint, tls, token) = (j.endpoint(), j.tls(), j.token());
    let stop2 = stop.clone();
    let good = std::thread::spawn(move || {
        let mut n = 0;
        let cfg = Config::new(vec![endpoint], tls, &token, "good-node", "ml");
        let mut a = JournalClient::new(cfg);
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) || n < 5 {
            let b = a.boot(None).expect("a good boot fails while bad requests arrive");
            assert_eq!(b.overlay, ml_spec());
            n += 1;
        }
        n
    });

    let mut raw = j.client();
    let try_boot = |raw: &mut Client,
                    req: &dyn Fn(&mut Client) -> Result<u32, CallError>|
     -> Result<Vec<ConfigChunk>, CallError> {
        let id = req(raw)?;
        let mut items = Vec::new();
        while let Some(i) = raw.next_item::<ConfigChunk>(id)? {
            items.push(i);
        }
        Ok(items)
    };
    // A body that is not a BootConfigRequest (field 1 is a varint here, a string there).
    let garbage = try_boot(&mut raw, &|r| r.start_stream(Method::StreamBootConfig, &GetEntryRequest { sequence: 7 }));
    assert_eq!(remote_code(garbage), ErrorCode::InvalidArgument);
    for (req, why) in [
        (BootConfigRequest { node_id: "".into(), vcluster_id: "ml".into(), ..Default::default() }, "empty node id"),
        (
            BootConfigRequest { node_id: "bad node".into(), vcluster_id: "ml".into(), ..Default::default() },
            "whitespace",
        ),
        (
            BootConfigRequest { node_id: "n9".into(), vcluster_id: "".into(), ..Default::default() },
            "no vCluster at all",
        ),
    ] {
        let r = try_boot(&mut raw, &|r| r.start_stream(Method::StreamBootConfig, &req));
        assert_eq!(remote_code(r), ErrorCode::InvalidArgument, "{why}");
    }
    // The same connection still serves a good request afterwards.
    let ok = BootConfigRequest { node_id: "n9".into(), vcluster_id: "ml".into(), ..Default::default() };
    let items = try_boot(&mut raw, &|r| r.start_stream(Method::StreamBootConfig, &ok)).unwrap();
    let b = journal_client::assemble(&items, None, "raw").unwrap();
    assert_eq!(b.overlay, ml_spec());
    // And a bad token is refused, never served.
    let tls = j.tls();
    let mut anon = Client::connect(&j.endpoint(), tls, "not-a-token", Duration::from_secs(5)).unwrap();
    let denied = try_boot(&mut anon, &|r| r.start_stream(Method::StreamBootConfig, &ok));
    assert_eq!(remote_code(denied), ErrorCode::Unauthenticated);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = good.join().unwrap();
    assert!(n >= 5, "{n} good boots");
    // Every completed stream is in the duration histogram; refused ones are counted apart.
    assert_eq!(metric(&j, "pact_journal_boot_stream_duration_seconds_count"), n + 1);
    assert_eq!(metric(&j, "pact_journal_boot_streams_total"), n + 1);
    assert_eq!(metric(&j, "pact_journal_boot_stream_errors_total"), 5);
}

fn metric(j: &Journal, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", j.metrics_port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

/// Printable pseudo-random text: compresses poorly, like real binaries and keys do.
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 94) as u8)
        })
        .collect()
}

#[test]
fn a_small_concurrency_cap_is_honoured_with_busy_and_retry_after() {
    let dir = common::temp_dir("boot-cap-cfg");
    let cfg = dir.join("journal.toml");
    std::fs::write(&cfg, "[journal.streaming]\nmax_concurrent_boot_streams = 1\n").unwrap();
    let j = Journal::start_with("boot-cap", &["--config", cfg.to_str().unwrap()]);
    let mut c = j.client();
    // An overlay far larger than the socket buffers, so a node that does not read holds
    // its stream (and the only slot) open.
    for part in 0..3u64 {
        let files = (0..45u64)
            .map(|i| FileDelta {
                path: format!("/opt/blob/{part}-{i}"),
                action: DeltaAction::Add as i32,
                content: Some(noise(part * 100 + i + 1, 60 * 1024)),
                ..Default::default()
            })
            .collect();
        vc_delta(&mut c, "big", StateDelta { files, ..Default::default() });
    }

    // A node that stops reading: a tiny receive buffer (which also turns off the kernel's
    // buffer autotuning), so the journal's writes stall once its own send buffer is full.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = j.endpoint().parse().unwrap();
    sock.connect(&addr.into()).unwrap();
    let tls = pact_proto::client::tls_over(sock.into(), &j.endpoint(), j.tls(), Duration::from_secs(10)).unwrap();
    let mut stuck = Client::over(tls, &j.endpoint(), &j.token()).unwrap();
    let req = BootConfigRequest { node_id: "slow".into(), vcluster_id: "big".into(), ..Default::default() };
    stuck.start_stream(Method::StreamBootConfig, &req).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&j, "pact_journal_boot_streams_active") != 1 {
        assert!(
            Instant::now() < deadline,
            "the stuck stream never started: streams {} busy {} errors {}\n{}",
            metric(&j, "pact_journal_boot_streams_total"),
            metric(&j, "pact_journal_boot_streams_busy_total"),
            metric(&j, "pact_journal_boot_stream_errors_total"),
            j.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric(&j, "pact_journal_boot_streams_active"), 1, "the stuck stream holds its slot");

    let a = agent(&j, "n1", "big");
    match a.boot_from(&j.endpoint(), None) {
        Err(journal_client::Error::Remote(e)) => {
            assert_eq!(e.code, ErrorCode::Busy, "{e:?}");
            assert!((250..500).contains(&e.retry_after_ms), "retry after {} ms", e.retry_after_ms);
            assert!(e.message.contains("busy"), "{}", e.message);
        }
        other => panic!("expected BUSY past the cap, got {other:?}"),
    }
    assert!(metric(&j, "pact_journal_boot_streams_busy_total") >= 1);

    // The client library retries BUSY by itself: it completes once the slot frees up.
    let waiter = std::thread::spawn(move || {
        let mut a = a;
        let b = a.boot(None).map(|b| b.overlay.files.len());
        (b, a.busy_retries)
    });
    std::thread::sleep(Duration::from_millis(800));
    drop(stuck);
    let (files, retries) = waiter.join().unwrap();
    assert_eq!(files.unwrap(), 135);
    assert!(retries >= 1, "the boot was refused at least once while the slot was held");
    // The slot is released as the stream's task ends, a moment after the client read its end.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&j, "pact_journal_boot_streams_active") != 0 {
        assert!(Instant::now() < deadline, "the boot stream slot was never released");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_subscription_sees_every_change_once_and_resumes_across_a_restart() {
    let mut j = Journal::start("boot-sub");
    let mut c = j.client();
    let base = apply_vc(&mut c, "ml", &ml_spec());
    assign(&mut c, "n1", "ml");

    let (tx, rx) = std::sync::mpsc::channel::<(u64, String)>();
    let mut cfg = Config::new(vec![j.endpoint()], j.tls(), &j.token(), "n1", "ml");
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(500);
    let follower = std::thread::spawn(move || {
        let mut a = JournalClient::new(cfg);
        let mut sub = a.subscribe(base);
        loop {
            let what = match sub.next_event() {
                Ok(Event::Update(u)) => match u.update {
                    Some(config_update::Update::OverlayChange(o)) => (u.sequence, format!("overlay {}", o.vcluster_id)),
                    Some(config_update::Update::NodeChange(n)) => (u.sequence, format!("node {}", n.node_id)),
                    Some(config_update::Update::PolicyChange(p)) => {
                        (u.sequence, format!("policy {}", p.policy.map(|p| p.vcluster_id).unwrap_or_default()))
                    }
                    Some(config_update::Update::BlacklistChange(b)) => {
                        (u.sequence, format!("blacklist {}", b.patterns.join(",")))
                    }
                    other => (u.sequence, format!("{other:?}")),
                },
                Ok(Event::Resync { reason, .. }) => (0, format!("resync {reason}")),
                Err(e) => (0, format!("error {e}")),
            };
            let done = what.0 == 0;
            if tx.send(what).is_err() || done {
                return sub.resumes;
            }
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(40)).expect("an update within 40 s");

    // Catch-up from `base`: the assignment (a node change plus the overlay it now follows).
    let assigned = next();
    assert_eq!(assigned.1, "node n1");
    assert_eq!(next(), (assigned.0, "overlay ml".to_string()));

    // Live: a change to ml, one to another vCluster (filtered out), a node change for
    // someone else (filtered out), a policy change with a new blacklist.
    let s1 = vc_delta(&mut c, "ml", sysctl("vm.swappiness", "1"));
    vc_delta(&mut c, "other", sysctl("vm.swappiness", "2"));
    assign(&mut c, "n2", "ml");
    let mut pol = entry(EntryType::PolicyUpdate, Target::VclusterId("ml".into()));
    let mut policy = ml_spec().policy.unwrap();
    policy.blacklist_patterns.push("mkfs*".into());
    pol.declared = Some(VClusterSpec { policy: Some(policy), ..Default::default() });
    let s2 = append(&mut c, pol);
    assert_eq!(next(), (s1, "overlay ml".to_string()));
    assert_eq!(next(), (s2, "overlay ml".to_string()));
    assert_eq!(next(), (s2, "policy ml".to_string()));
    assert_eq!(next(), (s2, "blacklist rm -rf /*,mkfs*".to_string()));

    // The journal restarts; changes made while it is down are impossible (it is the only
    // one), but those right after its return must arrive, once.
    j.terminate();
    j.spawn();
    let mut c = j.client();
    let s3 = vc_delta(&mut c, "ml", sysctl("vm.swappiness", "3"));
    let mut own = entry(EntryType::Commit, Target::NodeId("n1".into()));
    own.state_delta = Some(sysctl("net.core.somaxconn", "1024"));
    let s4 = append(&mut c, own);
    assert_eq!(next(), (s3, "overlay ml".to_string()));
    assert_eq!(next(), (s4, "node n1".to_string()));
    // Nothing else, no duplicate.
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    j.kill9();
    drop(rx);
    let _ = follower;
}

#[test]
fn a_subscriber_that_falls_behind_is_told_to_resync() {
    let dir = common::temp_dir("boot-resync-cfg");
    let cfg = dir.join("journal.toml");
    std::fs::write(&cfg, "[journal.streaming]\nsubscriber_buffer = 1\n").unwrap();
    let j = Journal::start_with("boot-resync", &["--config", cfg.to_str().unwrap()]);
    let mut c = j.client();
    let base = apply_vc(&mut c, "ml", &ml_spec());

    let mut a = agent(&j, "n1", "ml");
    // One entry that means three updates (overlay, policy, blacklist) arrives in one pass of
    // the feed: a buffer of one cannot hold them.
    let mut pol = entry(EntryType::PolicyUpdate, Target::VclusterId("ml".into()));
    let mut policy = ml_spec().policy.unwrap();
    policy.blacklist_patterns = vec!["shutdown*".into()];
    policy.enforcement_mode = Some("observe".into());
    pol.declared = Some(VClusterSpec { policy: Some(policy), ..Default::default() });
    // Subscribe first (the feed must know the subscriber), then change.
    let opened = std::thread::spawn(move || {
        let mut sub = a.subscribe(base);
        let first = sub.next_event();
        let second = match &first {
            Ok(Event::Update(_)) => Some(sub.next_event()),
            _ => None,
        };
        (first, second, sub.last_sequence())
    });
    std::thread::sleep(Duration::from_millis(500));
    let seq = append(&mut c, pol);
    let (first, second, last) = opened.join().unwrap();
    let resync = match (first, second) {
        (Ok(Event::Resync { reason, resume_from }), None) => (reason, resume_from),
        (Ok(Event::Update(u)), Some(Ok(Event::Resync { reason, resume_from }))) => {
            assert_eq!(u.sequence, seq, "what was queued before the overflow comes first");
            (reason, resume_from)
        }
        other => panic!("expected a resync, got {other:?}"),
    };
    assert!(resync.0.contains("subscriber_buffer"), "{}", resync.0);
    assert!(resync.1 <= seq, "resume_from {} must not skip past the entry whose updates were dropped", resync.1);
    assert_eq!(last, resync.1);
    assert!(metric(&j, "pact_journal_subscription_resyncs_total") >= 1);
    // The node re-runs its boot stream and sees the new policy.
    let b = agent(&j, "n1", "ml").boot(None).unwrap();
    assert_eq!(b.overlay.policy.unwrap().enforcement_mode.as_deref(), Some("observe"));
}
