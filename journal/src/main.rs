//! pact-journal: the Raft-replicated configuration and audit journal.
//!
//! Exit codes (one table for this binary):
//!
//! | code | meaning                                                         |
//! |------|-----------------------------------------------------------------|
//! | 0    | clean shutdown, `--check` passed, `--help`, `--version`         |
//! | 1    | runtime failure after start (store or raft error)               |
//! | 2    | bad command line                                                |
//! | 3    | bad configuration (file, environment or flags)                  |
//! | 4    | data dir problem: locked, `--bootstrap` refused, store unreadable |
//! | 5    | cannot bind a listening port                                    |

use pact_journal::{
    boot, cluster, config, debug, dev, error, http, info, log, peer, pki, raft_driver, server, shard, sys, warn,
};

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use pact_journal::policy::PolicyEngine;
use pact_journal::shard::{Outcome, Proposal, ProposalTx, Shard};
use pact_journal::shared::Shared;
use pact_journal::store::Store;
use pact_proto::auth::{HmacVerifier, KeySources, TokenVerifier, DEFAULT_AUDIENCE};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 3;
const EXIT_DATA_DIR: u8 = 4;
const EXIT_BIND: u8 = 5;

/// Prints to stdout; a reader that went away (`| head`) is not an error.
fn out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    // A panic anywhere (a shard, the raft driver) ends the process: a journal with a dead raft
    // thread must not keep answering as if it were fine. The supervisor restarts it, and it
    // recovers from its store.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("pact-journal: fatal: a thread panicked; aborting so the journal restarts from its store");
        std::process::abort();
    }));
    let inv = match config::parse_args(std::env::args_os().skip(1)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pact-journal: {e}\n\n{}", config::USAGE);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let flags = match inv {
        config::Invocation::Help => {
            out(&format!("{}\n", config::USAGE));
            return ExitCode::SUCCESS;
        }
        config::Invocation::Version => {
            out(&format!("pact-journal {}\n", pact_proto::VERSION));
            return ExitCode::SUCCESS;
        }
        config::Invocation::Run(f) => f,
    };
    let env = |k: &str| std::env::var(k).ok();
    let cfg = match config::load(&flags, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pact-journal: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let level = std::env::var("PACT_LOG")
        .ok()
        .and_then(|l| log::Level::parse(&l))
        .or_else(|| log::Level::parse(cfg.telemetry.log_level.as_str()))
        .unwrap_or(log::Level::Info);
    log::init(level, cfg.telemetry.log_format == config::LogFormat::Json);
    if let Some(subject) = &flags.mint_token {
        let (Some(secret), Some(issuer)) = (&cfg.policy.iam.hmac_secret, &cfg.policy.iam.oidc_issuer) else {
            eprintln!("pact-journal: --mint-token needs an HMAC secret and an issuer (PACT_OIDC_HMAC_SECRET, PACT_OIDC_ISSUER)");
            return ExitCode::from(EXIT_CONFIG);
        };
        let audience = cfg.policy.iam.oidc_audience.clone().unwrap_or_else(|| DEFAULT_AUDIENCE.into());
        match HmacVerifier::new(secret.as_bytes(), issuer, &audience).mint(subject, "pact-platform-admin", 3600) {
            Ok(t) => {
                out(&format!("{t}\n"));
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("pact-journal: --mint-token: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    // Policies are loaded (and their syntax checked) now, for --check as for a start.
    let policy = match pact_journal::policy::PolicyEngine::from_config(&cfg.policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pact-journal: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if flags.check {
        use std::fmt::Write as _;
        let mut text = String::new();
        let file = cfg.config_file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(no file)".into());
        let metrics = cfg.metrics_listen.map(|a| a.to_string()).unwrap_or_else(|| "(disabled)".into());
        // A shared file with no id: it must hold for every journal it lists.
        for &id in &cfg.check_as_each {
            let as_id = config::Flags { node_id: Some(id), ..(*flags).clone() };
            let checked = config::load(&as_id, &env).map_err(|e| e.to_string()).and_then(|c| cluster::resolve(&c));
            if let Err(e) = checked {
                eprintln!("pact-journal: as journal {id}: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
        let _ = writeln!(text, "{file}: configuration OK");
        let node_id = if cfg.check_as_each.is_empty() {
            cfg.node_id.to_string()
        } else {
            let ids: Vec<String> = cfg.check_as_each.iter().map(u64::to_string).collect();
            format!("not set (each journal sets PACT_JOURNAL_NODE_ID or --node-id; checked as {})", ids.join(", "))
        };
        let _ = writeln!(
            text,
            "  node id {node_id}, listen {}, data dir {}, metrics {metrics}",
            cfg.listen_addr,
            cfg.data_dir.display()
        );
        match cluster::resolve(&cfg) {
            Ok(c) => {
                let _ = writeln!(text, "  raft port listens on {}", c.raft_listen);
                let timing = cfg.raft.timing();
                let tick_ms = raft_driver::TICK.as_millis() as usize;
                let _ = writeln!(
                    text,
                    "  raft timing: election after {}-{} ms without a leader, heartbeats every {} ms, snapshot every {} entries",
                    timing.min_election_tick() * tick_ms,
                    timing.max_election_tick() * tick_ms,
                    timing.heartbeat_tick * tick_ms,
                    cfg.raft.snapshot_interval
                );
                for m in &c.all {
                    let _ = writeln!(
                        text,
                        "  journal {} ({}): raft {}, client {}",
                        m.id, m.role, m.raft_addr, m.client_addr
                    );
                }
            }
            Err(e) => {
                eprintln!("pact-journal: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
        let engine = policy.as_ref().map(|p| p.describe()).unwrap_or_else(|| "off (built-in role rules only)".into());
        let _ = writeln!(text, "  policy engine: {engine}");
        for note in &cfg.not_yet_active {
            let _ = writeln!(text, "  configured, not yet active: {note}");
        }
        out(&text);
        return ExitCode::SUCCESS;
    }
    match run(cfg, policy) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            error!("{msg}");
            eprintln!("pact-journal: {msg}");
            ExitCode::from(code)
        }
    }
}

/// How long a port must keep accepting connections before we conclude someone else owns it.
const PORT_PROBE_FOR: Duration = Duration::from_secs(3);

fn someone_listens(addr: std::net::SocketAddr) -> bool {
    let until = std::time::Instant::now() + PORT_PROBE_FOR;
    while accepts(addr) {
        if std::time::Instant::now() > until {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn accepts(addr: std::net::SocketAddr) -> bool {
    let mut target = addr;
    if addr.ip().is_unspecified() {
        target.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_ok()
}

fn run(cfg: config::JournalConfig, policy: Option<PolicyEngine>) -> Result<(), (u8, String)> {
    for note in &cfg.not_yet_active {
        warn!("configured, not yet active: {note}");
    }
    match &policy {
        Some(PolicyEngine::Rego(r)) if r.files.is_empty() => {
            warn!(
                "policy engine: rego, but {} holds no .rego file: nothing is refused beyond the built-in roles",
                r.dir.display()
            )
        }
        Some(p) => info!("policy engine: {}", p.describe()),
        None => info!("policy engine: off (built-in role rules only)"),
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| (EXIT_DATA_DIR, format!("{}: {e}", cfg.data_dir.display())))?;
    let _lock = sys::lock_data_dir(&cfg.data_dir).map_err(|e| (EXIT_DATA_DIR, e))?;

    let cluster = cluster::resolve(&cfg).map_err(|e| (EXIT_CONFIG, e))?;
    // TLS: the cluster CA (or one of our own for a lone journal) and this start's node certificate.
    let cluster_ca = cluster::cluster_ca(&cfg);
    if cluster_ca.is_none() && cluster.all.len() > 1 {
        return Err((
            EXIT_CONFIG,
            "several journals need one CA to trust each other: set [journal.enrollment] ca_cert and ca_key, \
             or PACT_CA_CERT and PACT_CA_KEY, or lay out /etc/pact/ca/ca.crt and ca.key (images/deploy/setup-ca.sh)"
                .into(),
        ));
    }
    let mut names = vec![pki::hostname(), cfg.listen_addr.ip().to_string()];
    names.extend(cluster.me.iter().map(|m| pact_journal::cluster::host_of(&m.raft_addr)));
    let tls_files = pki::ensure_tls(
        &cfg.data_dir,
        cfg.node_id,
        &names,
        cluster_ca.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .map_err(|e| (EXIT_DATA_DIR, e))?;
    // The client port takes a client certificate when one is offered (an enrolled agent's);
    // people and tools authenticate with tokens.
    let tls =
        pact_proto::tls::optional_mtls_server_config(&tls_files.server_cert, &tls_files.server_key, &tls_files.ca_cert)
            .map_err(|e| (EXIT_CONFIG, e.to_string()))?;
    let authority = match (std::fs::read_to_string(&tls_files.ca_cert), std::fs::read_to_string(&tls_files.ca_key)) {
        (Ok(root), Ok(key)) => pact_journal::enroll::Authority::new(
            cfg.node_id,
            &root,
            &key,
            Duration::from_secs(cfg.enrollment.cert_lifetime_seconds),
            pact_journal::enroll::RateLimits::from_per_minute(cfg.enrollment.rate_limit_per_minute),
        )
        .map(std::sync::Arc::new)
        .map_err(|e| warn!("enrollment unavailable: {e}"))
        .ok(),
        (Err(e), _) | (_, Err(e)) => {
            warn!("enrollment unavailable: the cluster CA cannot be read ({e})");
            None
        }
    };
    let peer_server_tls =
        pact_proto::tls::mtls_server_config(&tls_files.server_cert, &tls_files.server_key, &tls_files.ca_cert)
            .map_err(|e| (EXIT_CONFIG, e.to_string()))?;
    let peer_client_tls =
        pact_proto::tls::mtls_client_config(&tls_files.server_cert, &tls_files.server_key, &tls_files.ca_cert)
            .map_err(|e| (EXIT_CONFIG, e.to_string()))?;
    let issuer = cfg.policy.iam.oidc_issuer.clone();
    let audience = cfg.policy.iam.oidc_audience.clone();
    let mut secret = cfg.policy.iam.hmac_secret.clone().map(String::into_bytes);
    if cfg.dev {
        let endpoint = match cfg.listen_addr.ip().is_unspecified() {
            true => format!("127.0.0.1:{}", cfg.listen_addr.port()),
            false => cfg.listen_addr.to_string(),
        };
        let dev = dev::ensure_dev(
            &cfg.data_dir,
            &tls_files,
            &endpoint,
            issuer.as_deref(),
            audience.as_deref(),
            secret.as_deref(),
        )
        .map_err(|e| (EXIT_DATA_DIR, e))?;
        if secret.is_none() {
            secret = Some(dev.secret.clone());
        }
        eprintln!("======================================================================");
        eprintln!(" pact-journal --dev: DEVELOPMENT MODE. NOT FOR PRODUCTION.");
        eprintln!(" Made (or reused) in {}:", dev.dir.display());
        if cfg.policy.iam.hmac_secret.is_none() {
            eprintln!("   hmac.secret  token signing secret (anyone who reads it can mint admin tokens)");
        }
        eprintln!("   admin.token  a pact-platform-admin token for `{}`, valid 30 days", dev::DEV_ADMIN);
        eprintln!("   ca.crt       the journal's CA certificate");
        eprintln!("   cli.toml     endpoint/token/CA for the `pact` CLI (found from this directory)");
        eprintln!(
            "   agent.toml   a local agent as node `{}`, API on {} (with agent.crt/.key/.token)",
            dev::DEV_NODE,
            dev::DEV_AGENT_LISTEN
        );
        eprintln!(" TLS: {} (CA {})", tls_files.server_cert.display(), tls_files.ca_cert.display());
        eprintln!("======================================================================");
    }
    let issuer = issuer.unwrap_or_else(|| if cfg.dev { pact_proto::auth::DEV_ISSUER.into() } else { String::new() });
    let audience = audience.unwrap_or_else(|| DEFAULT_AUDIENCE.into());
    // Key sources: a JWKS from jwks_url, else from the issuer's discovery document when the
    // issuer is a URL; HS256 when a secret is configured (or --dev made one).
    let jwks = match &cfg.policy.iam.jwks_url {
        Some(u) => Some(Some(u.clone())),
        None if issuer.starts_with("https://") || issuer.starts_with("http://") => Some(None),
        None => None,
    };
    let verifier = match (&secret, &jwks) {
        (Some(_), _) | (_, Some(_)) if issuer.is_empty() => {
            return Err((
                EXIT_CONFIG,
                "a token key source is configured but no issuer: set [policy.iam] oidc_issuer or PACT_OIDC_ISSUER"
                    .into(),
            ));
        }
        (None, None) => {
            warn!("no token key source configured ([policy.iam] oidc_issuer / jwks_url, PACT_OIDC_HMAC_SECRET / hmac_secret, or --dev): every request will be refused");
            None
        }
        _ => {
            let v = TokenVerifier::new(KeySources {
                issuer: issuer.clone(),
                audience: audience.clone(),
                hmac_secret: secret.clone(),
                jwks: jwks.clone(),
                ca_bundle: std::env::var_os("PACT_OIDC_CA_BUNDLE").map(std::path::PathBuf::from),
            })
            .map_err(|e| (EXIT_CONFIG, e))?;
            info!("tokens: {}", v.describe());
            let v = Arc::new(v);
            if jwks.is_some() {
                // Fetch the keys once now, off the start-up path; a failure only means the
                // first token triggers the fetch.
                let first = v.clone();
                let _ = std::thread::Builder::new().name("jwks".into()).spawn(move || match first.refresh() {
                    Ok(n) => info!("token keys: {n} key(s) from the issuer's JWKS"),
                    Err(e) => warn!("token keys: {e}; fetching again when a token needs them"),
                });
            }
            Some(v)
        }
    };

    let store = Store::open(&cfg.data_dir, cfg.cores as u32).map_err(|e| (EXIT_DATA_DIR, e.to_string()))?;
    let bootstrapped = store.is_bootstrapped().map_err(|e| (EXIT_DATA_DIR, e.to_string()))?;
    let mut me = cluster.me.clone().unwrap_or_else(|| cluster::lone_member(&cfg, cluster.raft_listen));
    if cfg.learner {
        // Told to the peers in the link hello: the leader adds a journal that asks this.
        me.role = "learner".into();
    }
    let mut invite = store.invites().map_err(|e| (EXIT_DATA_DIR, e.to_string()))?;
    if bootstrapped {
        if cfg.bootstrap {
            return Err((
                EXIT_DATA_DIR,
                format!(
                    "--bootstrap refused: {} already holds a journal; restart without --bootstrap (it never creates a second cluster)",
                    cfg.data_dir.display()
                ),
            ));
        }
    } else if cfg.bootstrap || cfg.dev || (cluster.all.len() == 1 && cluster.me.is_some()) {
        // The founding journal: a membership of itself, then it invites the configured others
        // as voters (and learners) through replicated conf changes once it leads. A journal
        // whose configuration names only itself needs no --bootstrap: nobody else could found it.
        store.bootstrap(&me).map_err(|e| (EXIT_DATA_DIR, e.to_string()))?;
        invite = cluster.all.iter().filter(|m| m.id != cfg.node_id).cloned().collect();
        store.set_invites(&invite).map_err(|e| (EXIT_DATA_DIR, e.to_string()))?;
        info!("bootstrapped a new journal: founding member {} ({} more to invite)", me.id, invite.len());
    } else {
        info!(
            "data dir is empty and --bootstrap was not given: waiting to be added to a quorum \
             (`pact journal add-voter|add-learner {}` on it), or start with --bootstrap to found a new one",
            cfg.node_id
        );
    }

    // The raft log file, replayed and reconciled with the applied state (a founding journal's
    // log starts after its founding snapshot here).
    let (wal, log) = pact_journal::raft_log::open(&cfg.data_dir, &store).map_err(|e| (EXIT_DATA_DIR, e.to_string()))?;
    let log_files = raft_driver::LogFiles { wal, log };

    // glommio sets SO_REUSEPORT on every listener, so a second journal on the same port would
    // bind happily and take a share of the connections. Refuse to start if something keeps
    // accepting connections there. (A probe bind would trip over our own TIME_WAIT sockets from
    // a previous run, so the probe is a connect; and a listener whose process just exited can
    // linger for a moment while the kernel tears down its io_uring, so one accepted probe is
    // not enough: the port must keep accepting for `PORT_PROBE_FOR`.)
    for addr in [cfg.listen_addr, cluster.raft_listen].into_iter().chain(cfg.metrics_listen) {
        if someone_listens(addr) {
            return Err((
                EXIT_BIND,
                format!("cannot listen on {addr}: another process already listens there (another pact-journal?)"),
            ));
        }
    }
    sys::block_shutdown_signals();
    let shared = Arc::new(Shared::new(cfg.node_id));
    shared.max_boot_streams.store(cfg.streaming.max_concurrent_boot_streams, std::sync::atomic::Ordering::Relaxed);
    shared.subscriber_buffer.store(cfg.streaming.subscriber_buffer, std::sync::atomic::Ordering::Relaxed);
    {
        let shared = shared.clone();
        let (policy_cfg, has_policy) = (cfg.policy.clone(), policy.is_some());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let sig = sys::wait_for_signal();
                if sig == libc::SIGHUP {
                    // Reload the policies (the files, or the OPA settings); a bad file keeps the
                    // policies in force. Turning the engine on or off takes a restart.
                    if !has_policy {
                        info!("SIGHUP: no policy engine is configured: nothing to reload");
                        continue;
                    }
                    match PolicyEngine::from_config(&policy_cfg) {
                        Ok(Some(p)) => {
                            info!("SIGHUP: policies reloaded: {}", p.describe());
                            if let Ok(mut slot) = shared.policy_reload.lock() {
                                *slot = Some(p);
                            }
                            shared.policy_generation.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(None) => {
                            warn!("SIGHUP: the configuration turns the policy engine off; that takes a restart")
                        }
                        Err(e) => error!("SIGHUP: policies not reloaded, the ones in force stay: {e}"),
                    }
                    continue;
                }
                info!("signal {sig}: shutting down");
                shared.shutdown.store(true, Ordering::Relaxed);
            })
            .map_err(|e| (EXIT_RUNTIME, e.to_string()))?;
    }

    let cores = cfg.cores.max(1);
    let allowed = sys::allowed_cpus();
    let mut prop_tx = Vec::new();
    let mut prop_rx = Vec::new();
    let mut res_tx = Vec::new();
    let mut res_rx = Vec::new();
    for _ in 1..cores {
        let (t, r) = shared_channel::new_bounded::<Proposal>(shard::PROPOSAL_QUEUE);
        prop_tx.push(Some(t));
        prop_rx.push(r);
        let (t, r) = shared_channel::new_bounded::<(u64, Outcome)>(shard::RESULT_QUEUE);
        res_tx.push(t);
        res_rx.push(Some(r));
    }
    let (ready_tx, ready_rx) = mpsc::channel::<Result<u32, (u8, String)>>();
    let mut handles = Vec::new();
    let driver_cfg = raft_driver::DriverConfig {
        snapshot_interval: cfg.raft.snapshot_interval,
        configured_peers: cluster.all.iter().map(|m| (m.id, m.raft_addr.clone())).collect(),
        invite,
        timing: cfg.raft.timing(),
    };
    let mut raft_side = Some((prop_rx, res_tx, peer_server_tls, peer_client_tls, driver_cfg, log_files));
    let raft_listen = cluster.raft_listen;
    let me_for_shards = me.clone();
    for id in 0..cores as u32 {
        // One shard per allowed CPU; more shards than CPUs run unpinned.
        let placement = match allowed.get(id as usize) {
            Some(cpu) => Placement::Fixed(*cpu),
            None => Placement::Unbound,
        };
        let (store, shared, verifier, tls, ready) =
            (store.clone(), shared.clone(), verifier.clone(), tls.clone(), ready_tx.clone());
        let authority = authority.clone();
        let policy = policy.clone();
        let listen = cfg.listen_addr;
        let metrics_listen = if id == 0 { cfg.metrics_listen } else { None };
        let raft_parts = if id == 0 { raft_side.take() } else { None };
        let me_member = me_for_shards.clone();
        let to_raft = if id == 0 { None } else { prop_tx[id as usize - 1].take() };
        let from_raft = if id == 0 { None } else { res_rx[id as usize - 1].take() };
        let h = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            // The raft shard's log writes and LMDB commits run here, off the reactor and
            // unpinned: two threads, so the applier's LMDB commit runs beside a log write.
            .blocking_thread_pool_placement(PoolPlacement::Unbound(if id == 0 { 2 } else { 1 }))
            .spawn(move || async move {
                let listener = match server::bind(listen) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready.send(Err((EXIT_BIND, format!("cannot listen on {listen}: {e}"))));
                        return;
                    }
                };
                if let Some((prop_rx, res_tx, peer_server_tls, peer_client_tls, driver_cfg, log_files)) = raft_parts {
                    let (local_tx, inbox) = glommio::channels::local_channel::new_bounded(raft_driver::INBOX);
                    let local_tx = Rc::new(local_tx);
                    let raft_listener = match server::bind(raft_listen) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready.send(Err((EXIT_BIND, format!("cannot listen on {raft_listen} (raft): {e}"))));
                            return;
                        }
                    };
                    glommio::spawn_local(peer::serve(raft_listener, peer_server_tls, local_tx.clone(), shared.clone()))
                        .detach();
                    let peers = peer::Peers::new(&me_member, peer_client_tls, local_tx.clone(), shared.clone());
                    let mut me =
                        Shard::new(0, store.clone(), shared.clone(), verifier, ProposalTx::Local(local_tx.clone()));
                    me.policy = policy.map(std::cell::RefCell::new);
                    me.authority = authority;
                    let me = Rc::new(me);
                    // Forward every other shard's proposals into the driver's inbox.
                    for rx in prop_rx {
                        let fwd = local_tx.clone();
                        glommio::spawn_local(async move {
                            let rx = rx.connect().await;
                            while let Some(p) = rx.recv().await {
                                if fwd.send(raft_driver::Input::Proposal(p)).await.is_err() {
                                    break;
                                }
                            }
                        })
                        .detach();
                    }
                    let mut results = Vec::new();
                    for tx in res_tx {
                        results.push(tx.connect().await);
                    }
                    let links = raft_driver::Links {
                        local: me.clone(),
                        remote_results: results,
                        peers,
                        inbox_tx: local_tx.clone(),
                    };
                    let driver = match raft_driver::Driver::new(store, log_files, shared.clone(), links, driver_cfg) {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = ready.send(Err((EXIT_DATA_DIR, e)));
                            return;
                        }
                    };
                    if let Some(addr) = metrics_listen {
                        match server::bind(addr) {
                            Ok(l) => {
                                glommio::spawn_local(http::serve(me.clone(), l)).detach();
                            }
                            Err(e) => {
                                let _ = ready.send(Err((EXIT_BIND, format!("cannot listen on {addr} (metrics): {e}"))));
                                return;
                            }
                        }
                    }
                    glommio::spawn_local(boot::feed(me.clone())).detach();
                    // This start's enrollment CA replaces the previous one (retiring it) as soon
                    // as raft can take it; enrollment waits for it too.
                    if me.authority.is_some() {
                        let me2 = me.clone();
                        glommio::spawn_local(async move {
                            while !me2.shared.is_shutting_down() {
                                match pact_journal::enroll_rpc::ensure_published(&me2).await {
                                    Ok(()) => {
                                        info!("enrollment CA published");
                                        break;
                                    }
                                    Err(e) => debug!("enrollment CA not published yet: {}", e.message),
                                }
                                glommio::timer::sleep(Duration::from_millis(500)).await;
                            }
                        })
                        .detach();
                    }
                    let serving = glommio::spawn_local(server::serve(me.clone(), listener, tls));
                    let _ = ready.send(Ok(0));
                    driver.run(inbox).await;
                    serving.await;
                } else {
                    let to_raft = to_raft.expect("shard has a proposal channel").connect().await;
                    let mut me = Shard::new(id, store, shared, verifier, ProposalTx::Remote(to_raft));
                    me.policy = policy.map(std::cell::RefCell::new);
                    me.authority = authority;
                    let me = Rc::new(me);
                    let from_raft = from_raft.expect("shard has a result channel").connect().await;
                    let me2 = me.clone();
                    glommio::spawn_local(async move {
                        while let Some((pid, outcome)) = from_raft.recv().await {
                            me2.deliver(pid, outcome);
                        }
                    })
                    .detach();
                    glommio::spawn_local(boot::feed(me.clone())).detach();
                    let _ = ready.send(Ok(id));
                    server::serve(me, listener, tls).await;
                }
            })
            .map_err(|e| (EXIT_RUNTIME, format!("starting shard {id}: {e}")))?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..cores {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                shared.shutdown.store(true, Ordering::Relaxed);
                return Err(e);
            }
            Err(_) => {
                shared.shutdown.store(true, Ordering::Relaxed);
                return Err((EXIT_RUNTIME, "shards did not start within 30s".into()));
            }
        }
    }
    info!(
        "pact-journal {} node {} serving on {} ({} shard(s)), metrics on {}, data in {}",
        pact_proto::VERSION,
        cfg.node_id,
        cfg.listen_addr,
        cores,
        cfg.metrics_listen.map(|a| a.to_string()).unwrap_or_else(|| "(disabled)".into()),
        cfg.data_dir.display()
    );
    for h in handles {
        let _ = h.join();
    }
    if shared.failed.load(Ordering::Relaxed) {
        return Err((EXIT_RUNTIME, "stopped after a raft or store failure (see the log above)".into()));
    }
    info!("stopped cleanly");
    Ok(())
}
