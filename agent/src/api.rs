//! The agent's API server on 9445 (`[agent.shell] listen`): service control and power
//! requests from `pact service ...` and `pact reboot|poweroff`. Exec and interactive shells
//! arrive with the exec/shell issue; their method ids are answered `Unimplemented` until then.
//!
//! **Wire.** The journal client port's protocol (proto/src/frame.rs): TLS (rustls, the node's
//! certificate `[agent.journal] tls_cert`/`tls_key`), the 8-byte pact handshake, then Request
//! frames whose body is a `pact.wire.Request` (bearer token + the method's message), each
//! answered in order by a Response frame, or an Error frame (`pact.wire.ErrorBody`) with the same
//! request id. Methods: `ServiceControl` (85, `ServiceControlRequest` → `ServiceControlResponse`;
//! action start|stop|restart|status, name "" with status = every service) and `Power` (86,
//! `PowerRequest` → `ExecOutput{exit_code: 0}` once the action is scheduled). Any other known
//! method id: `Unimplemented`; an unknown id, a frame that is not a request, an oversized frame
//! or a body that is not a `Request`: one Error frame, then the connection is closed.
//!
//! **Bounds** ([`Limits`]): at most 64 connections (past that a new one is closed at accept),
//! one thread per connection (1 MiB of stack address space), 64 KiB per request body, TLS +
//! pact handshake within 10 s, a frame once begun complete within 10 s, 120 s idle between
//! requests, 10 s per write, 5 s to queue a request for the main loop and 30 s for its answer.
//!
//! **Authentication** (fails closed, as the deployment guide says): without
//! `[agent.shell.auth]` every request is refused `Unauthenticated` ("no [agent.shell.auth]: the
//! agent accepts no token"). With `hmac_secret`, tokens are verified HS256 for signature,
//! issuer, audience and expiry (`pact_proto::auth::HmacVerifier`). With only `jwks_url`, every
//! request is refused `Unauthenticated`: JWKS verification arrives with the security-plane
//! issue, and an unverified token is never accepted.
//!
//! **Authorisation** (the role comes from the verified token: `pact_role`, else the first
//! `pact-*` entry of `roles`/`groups`):
//! - `pact-platform-admin`: everything;
//! - `pact-ops-<vc>`, where `<vc>` is the vCluster this node booted into (the one the journal
//!   served, which follows its assignment): everything;
//! - `pact-viewer-<vc>`: `ServiceControl` with action `status` only;
//! - anyone else, and ops/viewer roles of another vCluster (or any vCluster while the node has
//!   not booted into one yet): `PermissionDenied`. The regulated, service-agent and AI roles
//!   get their rules (two-person approval, exec policy) with the security-plane issue.
//!
//! **Threads.** One accept thread, one thread per connection. They never touch the supervisor:
//! a request becomes a [`Msg::Control`] or [`Msg::Power`] to the main loop (through the same
//! bounded channel and eventfd wake-up as the journal thread's messages), which runs it
//! ([`Controls`]) and answers on a reply channel. A stop or restart on the pact backend is
//! answered once it has settled (the old process reaped, the new one started), at most the stop
//! grace + 5 s later; on the systemd backend at once (the systemctl job is queued). A power
//! request is answered once queued; the main loop then stops the services (reverse order) and
//! powers off or reboots; as an ordinary service (not PID 1) it stops the services and exits 0
//! instead, whichever of the two was asked.
//!
//! **Audit.** Every request prints `PACT: api: <principal> <role> <method> <args> -> <outcome>`
//! on the console (`-` for the principal and role of an unauthenticated caller). Audit records
//! in the journal come with the security-plane issue.

use crate::boot::{Link, Msg, Wake};
use crate::config::{AgentConfig, ShellAuth};
use crate::init::PowerAction;
use crate::supervisor::{self, BackendKind, ServiceState, ServiceStatus, Supervisor};
use pact_proto::auth::{Caller, KeySources, TokenVerifier};
use pact_proto::frame::{self, decode_header, write_frame, Frame, FrameKind, HelloOutcome, HANDSHAKE_LEN, HEADER_LEN};
use pact_proto::shell::{
    exec_output, ExecOutput, PowerRequest, ServiceControlRequest, ServiceControlResponse, ServiceStatusEntry,
};
use pact_proto::{ErrorCode, Method, RemoteError};
use prost::Message as _;
use rustls::{ServerConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest request body (a `pact.wire.Request`: a token and a small message).
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Longest service name or power reason accepted (they are printed on the console).
const MAX_ARG_LEN: usize = 256;
const MAX_REASON_LEN: usize = 1024;
/// A connection thread's stack (address space; only the pages it touches are resident). A
/// stack overflow would end the agent, so this leaves a wide margin over what a handshake uses.
const CONNECTION_STACK: usize = 1024 * 1024;
/// Connection-level failures (TLS, handshake, protocol) are printed at most this often.
const CONNECTION_LOG_EVERY: Duration = Duration::from_secs(1);

/// The server's bounds. [`Limits::default`] is what the agent runs with.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once; past it a new connection is closed at accept.
    pub max_connections: usize,
    /// TLS handshake plus the pact hello.
    pub handshake_timeout: Duration,
    /// Between requests.
    pub idle_timeout: Duration,
    /// A frame, once its first byte arrived.
    pub frame_timeout: Duration,
    /// Each write to the client.
    pub write_timeout: Duration,
    /// To queue a request for the main loop (its channel is bounded).
    pub queue_timeout: Duration,
    /// For the main loop's answer.
    pub reply_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            frame_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            queue_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(30),
        }
    }
}

/// What stands behind a certificate that is not there yet.
const ENROLLMENT_NOTE: &str =
    "an agent with a token serves 9445 with the configured certificate; without a token it enrolls for one";

/// The server's TLS configuration from the node's certificate (`[agent.journal] tls_cert` and
/// `tls_key`). The error is the console line's reason when the server cannot start.
pub fn tls_config(cfg: &AgentConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let (Some(cert), Some(key)) = (&cfg.journal.tls_cert, &cfg.journal.tls_key) else {
        return Err(format!(
            "no node certificate: [agent.journal] tls_cert and tls_key are not configured ({ENROLLMENT_NOTE})"
        ));
    };
    for p in [cert, key] {
        if !p.exists() {
            return Err(format!("no node certificate: {} does not exist ({ENROLLMENT_NOTE})", p.display()));
        }
    }
    pact_proto::tls::server_config(cert, key).map_err(|e| format!("node certificate: {e}"))
}

/// How tokens are verified (`[agent.shell.auth]`), independently of the journal.
#[derive(Clone)]
pub enum Auth {
    /// No `[agent.shell.auth]`: every request is refused.
    Closed,
    /// RS256/ES256 against the JWKS (`jwks_url`, else the issuer's discovery document when
    /// the issuer is a URL) and/or HS256 with `hmac_secret`; issuer, audience, expiry and
    /// not-before checked.
    Tokens(Arc<TokenVerifier>),
    /// A section that gives no usable key source (refused, with the reason).
    Invalid(String),
}

impl Auth {
    pub fn from_config(auth: Option<&ShellAuth>) -> Auth {
        let Some(a) = auth else { return Auth::Closed };
        let jwks = match &a.jwks_url {
            Some(u) => Some(Some(u.clone())),
            None if a.issuer.starts_with("https://") || a.issuer.starts_with("http://") => Some(None),
            None => None,
        };
        match TokenVerifier::new(KeySources {
            issuer: a.issuer.clone(),
            audience: a.audience.clone(),
            hmac_secret: a.hmac_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            jwks,
            ca_bundle: std::env::var_os("PACT_OIDC_CA_BUNDLE").map(std::path::PathBuf::from),
        }) {
            Ok(v) => Auth::Tokens(Arc::new(v)),
            Err(e) => Auth::Invalid(e),
        }
    }

    /// For the start-up line.
    pub fn describe(&self) -> String {
        match self {
            Auth::Closed => "no [agent.shell.auth]: every request is refused".into(),
            Auth::Tokens(v) => v.describe(),
            Auth::Invalid(e) => format!("[agent.shell.auth]: {e}: every request is refused"),
        }
    }

    /// Verifies a bearer token; an unknown key makes one (rate-limited) JWKS refresh on this
    /// connection's thread.
    pub fn verify(&self, token: &str) -> Result<Caller, RemoteError> {
        match self {
            Auth::Closed => {
                Err(RemoteError::new(ErrorCode::Unauthenticated, "no [agent.shell.auth]: the agent accepts no token"))
            }
            Auth::Invalid(e) => Err(RemoteError::new(ErrorCode::Unauthenticated, format!("[agent.shell.auth]: {e}"))),
            Auth::Tokens(v) => {
                v.verify_blocking(token).map_err(|e| RemoteError::new(ErrorCode::Unauthenticated, e.to_string()))
            }
        }
    }

    /// Fetches the JWKS once, ahead of the first token (start-up; a failure is only logged).
    pub fn prefetch(&self) -> Option<Result<usize, String>> {
        match self {
            Auth::Tokens(v) if v.has_jwks() => Some(v.refresh()),
            _ => None,
        }
    }
}

/// What a request needs of the caller's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Service status.
    Read,
    /// start, stop, restart, reboot, power-off.
    Operate,
}

pub const ADMIN_ROLE: &str = "pact-platform-admin";

/// The role rule (module docs): platform admin, or ops of the node's vCluster, may do
/// anything; a viewer of the node's vCluster may read status; nobody else may do anything.
pub fn authorize(role: &str, node_vcluster: Option<&str>, access: Access) -> Result<(), RemoteError> {
    if role == ADMIN_ROLE {
        return Ok(());
    }
    let vc = node_vcluster.filter(|v| !v.is_empty());
    if let Some(vc) = vc {
        if role.strip_prefix("pact-ops-") == Some(vc) {
            return Ok(());
        }
        if access == Access::Read && role.strip_prefix("pact-viewer-") == Some(vc) {
            return Ok(());
        }
    }
    let what = match access {
        Access::Read => "read service status",
        Access::Operate => "control services or power",
    };
    let needs = match (vc, access) {
        (Some(vc), Access::Read) => format!("{ADMIN_ROLE}, pact-ops-{vc} or pact-viewer-{vc}"),
        (Some(vc), Access::Operate) => format!("{ADMIN_ROLE} or pact-ops-{vc}"),
        (None, _) => format!("{ADMIN_ROLE} (this node has not booted into a vCluster yet)"),
    };
    Err(RemoteError::new(
        ErrorCode::PermissionDenied,
        format!("role {} may not {what} on this node: that needs {needs}", shown(role)),
    ))
}

/// State the server shares with the main loop.
#[derive(Default)]
pub struct Shared {
    vcluster: Mutex<Option<String>>,
    shutting_down: AtomicBool,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared::default())
    }

    /// The vCluster this node booted into (set by the main loop from every applied config).
    pub fn set_vcluster(&self, vc: &str) {
        let v = (!vc.is_empty()).then(|| vc.to_string());
        *self.vcluster.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    pub fn vcluster(&self) -> Option<String> {
        self.vcluster.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// From now on requests are refused `Unavailable`.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// A service action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Status,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "start" => Action::Start,
            "stop" => Action::Stop,
            "restart" => Action::Restart,
            "status" => Action::Status,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Status => "status",
        }
    }
}

/// The main loop's answer to a [`Msg::Control`].
pub type ControlReply = Result<Vec<ServiceStatusEntry>, RemoteError>;

/// A console line (the agent prints it; tests collect it).
pub type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

/// The server: build it, then [`Server::spawn`].
pub struct Server<W: Wake + Sync + 'static> {
    pub tls: Arc<rustls::ServerConfig>,
    pub auth: Auth,
    pub shared: Arc<Shared>,
    /// To the main loop.
    pub link: Link<W>,
    pub limits: Limits,
    pub log: LogFn,
    /// Where decisions go on the journal's record (None: the console line only).
    pub record: Option<Arc<crate::audit::Recorder>>,
}

impl<W: Wake + Sync + 'static> Server<W> {
    /// Binds `listen` and serves it on a thread of its own ("api"). Returns the bound address.
    pub fn spawn(self, listen: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(Ctx { server: self, open: AtomicUsize::new(0), last_conn_log: Mutex::new(None) });
        std::thread::Builder::new().name("api".into()).spawn(move || accept_loop(&ctx, &listener))?;
        Ok(addr)
    }
}

struct Ctx<W: Wake + Sync + 'static> {
    server: Server<W>,
    open: AtomicUsize,
    /// When a connection-level line was last printed, and how many were held back since.
    last_conn_log: Mutex<Option<(Instant, u64)>>,
}

/// Decrements the open-connection count when the connection's thread ends (or never starts).
struct OpenSlot<W: Wake + Sync + 'static>(Arc<Ctx<W>>);

impl<W: Wake + Sync + 'static> Drop for OpenSlot<W> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop<W: Wake + Sync + 'static>(ctx: &Arc<Ctx<W>>, listener: &TcpListener) {
    for conn in listener.incoming() {
        let tcp = match conn {
            Ok(t) => t,
            Err(e) => {
                // EMFILE and the like: wait a little instead of spinning.
                ctx.conn_log(&format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if ctx.open.load(Ordering::SeqCst) >= ctx.server.limits.max_connections {
            let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            ctx.conn_log(&format!(
                "connection from {peer} closed at accept: {} connections open (the limit)",
                ctx.server.limits.max_connections
            ));
            drop(tcp);
            continue;
        }
        ctx.open.fetch_add(1, Ordering::SeqCst);
        let slot = OpenSlot(ctx.clone());
        let spawned =
            std::thread::Builder::new().name("api-conn".into()).stack_size(CONNECTION_STACK).spawn(move || {
                let ctx = slot.0.clone();
                ctx.connection(tcp);
                drop(slot);
            });
        if let Err(e) = spawned {
            ctx.conn_log(&format!("cannot start a connection thread: {e}"));
        }
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// Why a connection ended, when not cleanly.
enum End {
    /// Nothing more arrived within the idle timeout: not worth a console line.
    Idle,
    Failed(String),
}

impl From<String> for End {
    fn from(s: String) -> End {
        End::Failed(s)
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Reads until `buf` is full, the peer closes, or `deadline`; returns the bytes read.
fn read_until(tls: &mut Tls, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        tls.sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match tls.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A peer that closes without close_notify.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A request's body, decoded for the method.
enum Body {
    Control { name: String, action: Result<Action, String> },
    Power { action: Result<PowerAction, String>, reason: String },
    Other,
}

/// What a request came to: the answer, its console summary, and (power) what to drop once
/// the answer is written.
struct Handled {
    answer: Result<Vec<u8>, RemoteError>,
    summary: String,
    after_write: Option<SyncSender<()>>,
}

impl<W: Wake + Sync + 'static> Ctx<W> {
    fn log(&self, line: &str) {
        (self.server.log)(line);
    }

    /// A connection-level line, at most one per second (with a count of those held back).
    fn conn_log(&self, what: &str) {
        let mut last = self.last_conn_log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *last {
            Some((t, held)) if now < t + CONNECTION_LOG_EVERY => *last = Some((t, held + 1)),
            Some((_, held)) => {
                let more = if held > 0 { format!(" ({held} more such lines held back)") } else { String::new() };
                self.log(&format!("PACT: api: {what}{more}"));
                *last = Some((now, 0));
            }
            None => {
                self.log(&format!("PACT: api: {what}"));
                *last = Some((now, 0));
            }
        }
    }

    fn connection(&self, tcp: TcpStream) {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        match self.serve(tcp) {
            Ok(()) | Err(End::Idle) => {}
            Err(End::Failed(why)) => self.conn_log(&format!("connection from {peer}: {why}")),
        }
    }

    fn serve(&self, tcp: TcpStream) -> Result<(), End> {
        let limits = &self.server.limits;
        let _ = tcp.set_nodelay(true);
        tcp.set_write_timeout(Some(limits.write_timeout)).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + limits.handshake_timeout;
        let conn = ServerConnection::new(self.server.tls.clone()).map_err(|e| format!("TLS: {e}"))?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("TLS handshake timed out".to_string().into());
            }
            tls.sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).map_err(|e| e.to_string())?;
            match tls.conn.complete_io(&mut tls.sock) {
                Ok((0, 0)) => return Err("closed during the TLS handshake".to_string().into()),
                Ok(_) => {}
                Err(e) if timed_out(&e) => return Err("TLS handshake timed out".to_string().into()),
                Err(e) => return Err(format!("TLS: {e}").into()),
            }
        }
        let mut hello = [0u8; HANDSHAKE_LEN];
        match read_until(&mut tls, &mut hello, deadline) {
            Ok(HANDSHAKE_LEN) => {}
            Ok(0) => return Ok(()),
            Ok(_) => return Err("closed during the pact handshake".to_string().into()),
            Err(e) if timed_out(&e) => return Err("pact handshake timed out".to_string().into()),
            Err(e) => return Err(format!("pact handshake: {e}").into()),
        }
        let (outcome, answer) = frame::server_answer(&hello).map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(&answer).and_then(|_| tls.flush()).map_err(|e| e.to_string())?;
        if let HelloOutcome::NoCommonVersion { client_max, client_min } = outcome {
            return Err(format!("client speaks protocol versions {client_min}..={client_max}; closed").into());
        }
        loop {
            let mut hb = [0u8; HEADER_LEN];
            match read_until(&mut tls, &mut hb[..1], Instant::now() + limits.idle_timeout) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if timed_out(&e) => return Err(End::Idle),
                Err(e) => return Err(e.to_string().into()),
            }
            let frame_deadline = Instant::now() + limits.frame_timeout;
            let rest = read_until(&mut tls, &mut hb[1..], frame_deadline).map_err(|e| format!("frame header: {e}"))?;
            if rest < HEADER_LEN - 1 {
                return Err("truncated frame header".to_string().into());
            }
            let header = match decode_header(&hb, MAX_REQUEST_BODY) {
                Ok(h) => h,
                Err(e) => {
                    return Err(fatal(&mut tls, 0, 0, RemoteError::new(e.error_code(), e.to_string())));
                }
            };
            let mut body = vec![0u8; header.body_len as usize];
            let got = read_until(&mut tls, &mut body, frame_deadline).map_err(|e| format!("frame body: {e}"))?;
            if got < body.len() {
                return Err("truncated frame body".to_string().into());
            }
            let (method, request) = match frame::parse_request(&header, &body) {
                Ok(x) => x,
                Err(e) => return Err(fatal(&mut tls, header.method, header.request_id, e)),
            };
            let handled = self.handle(method, &request);
            let (m, id) = (header.method, header.request_id);
            let f = match handled.answer {
                Ok(bytes) => Frame::new(FrameKind::Response, m, id, bytes),
                Err(e) => Frame::new(FrameKind::Error, m, id, e.to_body().encode_to_vec()),
            };
            let written = write_frame(&mut tls, &f)
                .map_err(|e| e.to_string())
                .and_then(|_| tls.flush().map_err(|e| e.to_string()));
            // A power request's answer is out (or failed): the main loop may go on with the
            // shutdown now.
            drop(handled.after_write);
            written?;
        }
    }

    /// One request: authenticate, decode, authorise, run. Prints the audit line.
    fn handle(&self, method: Method, req: &pact_proto::wire::Request) -> Handled {
        let body = match method {
            Method::ServiceControl => match ServiceControlRequest::decode(&req.body[..]) {
                Ok(r) => Ok(Body::Control { action: Action::parse(&r.action).ok_or(r.action), name: r.name }),
                Err(e) => Err(format!("body is not a pact.shell.ServiceControlRequest: {e}")),
            },
            Method::Power => match PowerRequest::decode(&req.body[..]) {
                Ok(r) => Ok(Body::Power {
                    action: match r.action.as_str() {
                        "reboot" => Ok(PowerAction::Reboot),
                        "poweroff" => Ok(PowerAction::PowerOff),
                        _ => Err(r.action),
                    },
                    reason: r.reason,
                }),
                Err(e) => Err(format!("body is not a pact.shell.PowerRequest: {e}")),
            },
            _ => Ok(Body::Other),
        };
        let read_only = matches!(&body, Ok(Body::Control { action: Ok(Action::Status), .. }));
        let args = match &body {
            Ok(Body::Control { name, action }) => {
                let a = match action {
                    Ok(a) => a.as_str().to_string(),
                    Err(bad) => shown(bad),
                };
                format!("{a} {}", if name.is_empty() { "*".to_string() } else { shown(name) })
            }
            Ok(Body::Power { action, reason }) => {
                let a = match action {
                    Ok(PowerAction::Reboot) => "reboot".to_string(),
                    Ok(PowerAction::PowerOff) => "poweroff".to_string(),
                    Err(bad) => shown(bad),
                };
                format!("{a} reason={:?}", truncate(reason, MAX_REASON_LEN))
            }
            _ => "-".into(),
        };
        let caller = self.server.auth.verify(&req.bearer_token);
        let (who, role) = match &caller {
            Ok(c) => (shown(&c.principal), shown(&c.role)),
            Err(_) => ("-".to_string(), "-".to_string()),
        };
        let handled = match caller {
            Err(e) => Handled { answer: Err(e), summary: String::new(), after_write: None },
            Ok(c) => self.run(method, body, &c),
        };
        let outcome = match &handled.answer {
            Ok(_) => format!("ok{}", handled.summary),
            Err(e) => format!("{}: {}", e.code, e.message),
        };
        let line = format!("api: {who} {role} {} {args} -> {outcome}", method.name());
        self.log(&format!("PACT: {line}"));
        // Every action, allowed or refused, and every refused read, on the journal's record.
        if let Some(r) = &self.server.record {
            if !(read_only && handled.answer.is_ok()) {
                r.record(line);
            }
        }
        handled
    }

    fn run(&self, method: Method, body: Result<Body, String>, caller: &Caller) -> Handled {
        let refuse = |e: RemoteError| Handled { answer: Err(e), summary: String::new(), after_write: None };
        let body = match body {
            Ok(b) => b,
            Err(e) => return refuse(RemoteError::new(ErrorCode::InvalidArgument, e)),
        };
        let vcluster = self.server.shared.vcluster();
        match body {
            Body::Other => {
                let what = if (80..=84).contains(&(method as u16)) {
                    "arrives with the exec/shell issue"
                } else {
                    "is not served by the agent (port 9445)"
                };
                refuse(RemoteError::new(ErrorCode::Unimplemented, format!("{} {what}", method.name())))
            }
            Body::Control { name, action } => {
                let action = match action {
                    Ok(a) => a,
                    Err(bad) => {
                        return refuse(RemoteError::new(
                            ErrorCode::InvalidArgument,
                            format!("unknown action {}: start, stop, restart or status", shown(&bad)),
                        ))
                    }
                };
                if name.is_empty() && action != Action::Status {
                    return refuse(RemoteError::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "{} needs a service name (an empty name means every service, for status only)",
                            action.as_str()
                        ),
                    ));
                }
                if name.len() > MAX_ARG_LEN {
                    return refuse(RemoteError::new(
                        ErrorCode::InvalidArgument,
                        format!("service name longer than {MAX_ARG_LEN} bytes"),
                    ));
                }
                let access = if action == Action::Status { Access::Read } else { Access::Operate };
                if let Err(e) = authorize(&caller.role, vcluster.as_deref(), access) {
                    return refuse(e);
                }
                match self.control(name, action) {
                    Ok(services) => {
                        let summary = if services.len() == 1 {
                            let s = &services[0];
                            format!(": {} {} pid={}", shown(&s.name), s.state, s.pid)
                        } else {
                            format!(": {} services", services.len())
                        };
                        let answer = ServiceControlResponse { services }.encode_to_vec();
                        Handled { answer: Ok(answer), summary, after_write: None }
                    }
                    Err(e) => refuse(e),
                }
            }
            Body::Power { action, reason } => {
                let action = match action {
                    Ok(a) => a,
                    Err(bad) => {
                        return refuse(RemoteError::new(
                            ErrorCode::InvalidArgument,
                            format!("unknown power action {}: reboot or poweroff", shown(&bad)),
                        ))
                    }
                };
                if reason.len() > MAX_REASON_LEN {
                    return refuse(RemoteError::new(
                        ErrorCode::InvalidArgument,
                        format!("reason longer than {MAX_REASON_LEN} bytes"),
                    ));
                }
                if let Err(e) = authorize(&caller.role, vcluster.as_deref(), Access::Operate) {
                    return refuse(e);
                }
                let (answered_tx, answered) = sync_channel::<()>(1);
                match self.queue(Msg::Power { action, reason, answered }) {
                    Ok(()) => {
                        let out = ExecOutput { output: Some(exec_output::Output::ExitCode(0)) };
                        Handled {
                            answer: Ok(out.encode_to_vec()),
                            summary: ": scheduled".into(),
                            after_write: Some(answered_tx),
                        }
                    }
                    Err(e) => refuse(e),
                }
            }
        }
    }

    /// Hands a message to the main loop, waiting up to `queue_timeout` for room.
    fn queue(&self, mut m: Msg) -> Result<(), RemoteError> {
        let deadline = Instant::now() + self.server.limits.queue_timeout;
        loop {
            if self.server.shared.is_shutting_down() {
                return Err(RemoteError::new(ErrorCode::Unavailable, "the node is shutting down"));
            }
            match self.server.link.try_send(m) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(_)) => {
                    return Err(RemoteError::new(ErrorCode::Unavailable, "the agent's main loop has stopped"))
                }
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    m = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Full(_)) => {
                    return Err(RemoteError {
                        code: ErrorCode::Busy,
                        message: "the agent's main loop is busy; retry".into(),
                        retry_after_ms: 500,
                    })
                }
            }
        }
    }

    fn control(&self, name: String, action: Action) -> ControlReply {
        let (reply, answer) = sync_channel::<ControlReply>(1);
        self.queue(Msg::Control { name, action, reply })?;
        let wait = self.server.limits.reply_timeout;
        match answer.recv_timeout(wait) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(RemoteError::new(
                ErrorCode::Timeout,
                format!("the agent's main loop did not answer within {} s", wait.as_secs()),
            )),
            Err(RecvTimeoutError::Disconnected) => {
                Err(RemoteError::new(ErrorCode::Unavailable, "the node is shutting down; the request was dropped"))
            }
        }
    }
}

/// Sends one Error frame and ends the connection.
fn fatal(tls: &mut Tls, method: u16, id: u32, e: RemoteError) -> End {
    let f = Frame::new(FrameKind::Error, method, id, e.to_body().encode_to_vec());
    let _ = write_frame(tls, &f);
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    End::Failed(format!("protocol violation: {e}"))
}

/// A client-supplied string as printed on the console: as is when plain, else quoted and
/// escaped; at most MAX_ARG_LEN characters.
fn shown(s: &str) -> String {
    let plain = !s.is_empty()
        && s.len() <= MAX_ARG_LEN
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':' | '/'));
    if plain {
        s.to_string()
    } else {
        format!("{:?}", truncate(s, MAX_ARG_LEN))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A service's status as the API reports it.
pub fn entry(st: &ServiceStatus, now: Instant) -> ServiceStatusEntry {
    ServiceStatusEntry {
        name: st.name.clone(),
        state: st.state.as_str().to_string(),
        pid: st.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        uptime_seconds: st.since.map(|t| now.saturating_duration_since(t).as_secs()).unwrap_or(0),
        restart_count: st.restarts,
    }
}

fn control_error(e: &supervisor::Error) -> RemoteError {
    let code = match e {
        supervisor::Error::UnknownService(_) => ErrorCode::NotFound,
        supervisor::Error::Start(_) => ErrorCode::FailedPrecondition,
        supervisor::Error::Setup(_) | supervisor::Error::Systemctl(_) => ErrorCode::Internal,
    };
    RemoteError::new(code, e.to_string())
}

/// The main loop's half: runs [`Msg::Control`] requests on the supervisor and answers them.
/// On the pact backend a start, stop or restart is answered once it has settled (see
/// [`Controls::poll`]), or at the settle timeout with the state it has then.
pub struct Controls {
    pending: Vec<Pending>,
    settle: bool,
    settle_timeout: Duration,
}

struct Pending {
    name: String,
    action: Action,
    old_pid: Option<i32>,
    reply: SyncSender<ControlReply>,
    deadline: Instant,
}

impl Controls {
    /// `stop_grace`: the supervisor's; a stop settles within it plus the reaping.
    pub fn new(backend: BackendKind, stop_grace: Duration) -> Controls {
        Controls {
            pending: Vec::new(),
            settle: backend == BackendKind::Pact,
            settle_timeout: stop_grace + Duration::from_secs(5),
        }
    }

    /// Runs one request (main loop only). The answer goes to `reply` now, or from `poll`.
    pub fn request(
        &mut self,
        sup: &mut Supervisor,
        name: String,
        action: Action,
        reply: SyncSender<ControlReply>,
        now: Instant,
    ) {
        let unknown = |name: &str| control_error(&supervisor::Error::UnknownService(name.to_string()));
        let answer = |r: ControlReply| {
            // The caller may have given up (timeout): nothing to do then.
            let _ = reply.try_send(r);
        };
        let old_pid = sup.status(&name).and_then(|s| s.pid);
        let done = match action {
            Action::Status if name.is_empty() => Ok(sup.status_all()),
            Action::Status => sup.status(&name).map(|s| vec![s]).ok_or_else(|| unknown(&name)),
            Action::Start => sup.start(&name).map(|_| Vec::new()).map_err(|e| control_error(&e)),
            Action::Stop => sup.stop(&name).map(|_| Vec::new()).map_err(|e| control_error(&e)),
            Action::Restart => sup.restart(&name).map(|_| Vec::new()).map_err(|e| control_error(&e)),
        };
        match done {
            Err(e) => answer(Err(e)),
            Ok(list) if action == Action::Status => answer(Ok(list.iter().map(|s| entry(s, now)).collect())),
            Ok(_) if self.settle => {
                self.pending.push(Pending { name, action, old_pid, reply, deadline: now + self.settle_timeout });
                self.poll(sup, now);
            }
            Ok(_) => answer(sup.status(&name).map(|s| vec![entry(&s, now)]).ok_or_else(|| unknown(&name))),
        }
    }

    /// Answers the requests that have settled (stop: no longer stopping; start: no longer
    /// waiting; restart: running again with a new pid, or ended) or whose time is up.
    pub fn poll(&mut self, sup: &Supervisor, now: Instant) {
        self.pending.retain(|p| {
            let st = sup.status(&p.name);
            let settled = match &st {
                None => true,
                Some(s) => match p.action {
                    Action::Stop => s.state != ServiceState::Stopping,
                    Action::Start => s.state != ServiceState::Waiting,
                    Action::Restart => match s.state {
                        ServiceState::Running => s.pid != p.old_pid,
                        ServiceState::Stopping | ServiceState::Waiting => false,
                        _ => true,
                    },
                    Action::Status => true,
                },
            };
            if !settled && now < p.deadline {
                return true;
            }
            let r = st
                .map(|s| vec![entry(&s, now)])
                .ok_or_else(|| control_error(&supervisor::Error::UnknownService(p.name.clone())));
            let _ = p.reply.try_send(r);
            false
        });
    }

    /// When `poll` must run at the latest (a settle timeout).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    /// Requests still waiting to settle.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_proto::auth::HmacVerifier;
    use pact_proto::client::{CallError, Client};

    #[test]
    fn the_role_rule() {
        let vc = Some("ml");
        for access in [Access::Read, Access::Operate] {
            assert!(authorize("pact-platform-admin", vc, access).is_ok());
            assert!(authorize("pact-platform-admin", None, access).is_ok());
            assert!(authorize("pact-ops-ml", vc, access).is_ok());
            // Ops of another vCluster, or of any vCluster before the node booted into one.
            assert_eq!(authorize("pact-ops-other", vc, access).unwrap_err().code, ErrorCode::PermissionDenied);
            assert_eq!(authorize("pact-ops-ml", None, access).unwrap_err().code, ErrorCode::PermissionDenied);
            assert_eq!(authorize("pact-ops-ml", Some(""), access).unwrap_err().code, ErrorCode::PermissionDenied);
            // Prefixes are whole: pact-ops-m is not pact-ops-ml.
            assert!(authorize("pact-ops-m", vc, access).is_err());
            assert!(authorize("pact-ops-ml2", vc, access).is_err());
            for other in ["pact-service-ai", "pact-service-agent", "pact-regulated-ml", "", "admin"] {
                assert_eq!(authorize(other, vc, access).unwrap_err().code, ErrorCode::PermissionDenied, "{other}");
            }
        }
        assert!(authorize("pact-viewer-ml", vc, Access::Read).is_ok());
        let e = authorize("pact-viewer-ml", vc, Access::Operate).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(e.message.contains("pact-ops-ml"), "{e}");
        assert!(authorize("pact-viewer-other", vc, Access::Read).is_err());
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn shell_auth(hmac: bool, jwks: bool) -> ShellAuth {
        ShellAuth {
            issuer: "iss".into(),
            audience: "aud".into(),
            jwks_url: jwks.then(|| "https://idp/certs".to_string()),
            hmac_secret: hmac.then(|| SECRET.to_string()),
        }
    }

    #[test]
    fn authentication_fails_closed() {
        let good = HmacVerifier::new(SECRET.as_bytes(), "iss", "aud").mint("alice", ADMIN_ROLE, 60).unwrap();
        let e = Auth::from_config(None).verify(&good).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::Unauthenticated, "no [agent.shell.auth]: the agent accepts no token")
        );
        // Only a JWKS (unreachable here): an HS256 token is refused without any fetch, since no
        // secret is configured.
        let e = Auth::from_config(Some(&shell_auth(false, true))).verify(&good).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated);
        assert!(e.message.contains("HS256"), "{e}");
        // Neither a secret nor a JWKS (the issuer is not a URL): refused, saying why.
        let e = Auth::from_config(Some(&shell_auth(false, false))).verify(&good).unwrap_err();
        assert!(e.message.contains("key source"), "{e}");
        // hmac_secret (with or without jwks_url): verified for real.
        for jwks in [false, true] {
            let auth = Auth::from_config(Some(&shell_auth(true, jwks)));
            let c = auth.verify(&good).unwrap();
            assert_eq!((c.principal.as_str(), c.role.as_str()), ("alice", ADMIN_ROLE));
            let forged = HmacVerifier::new(b"another-secret-another-secret-xx", "iss", "aud")
                .mint("mallory", ADMIN_ROLE, 60)
                .unwrap();
            assert_eq!(auth.verify(&forged).unwrap_err().code, ErrorCode::Unauthenticated);
            let other_aud = HmacVerifier::new(SECRET.as_bytes(), "iss", "nope").mint("bob", ADMIN_ROLE, 60).unwrap();
            assert_eq!(auth.verify(&other_aud).unwrap_err().code, ErrorCode::Unauthenticated);
            assert_eq!(auth.verify("").unwrap_err().code, ErrorCode::Unauthenticated);
        }
    }

    #[test]
    fn no_certificate_no_server() {
        let mut cfg = AgentConfig::default();
        let e = tls_config(&cfg).unwrap_err();
        assert!(e.contains("tls_cert and tls_key are not configured") && e.contains("enrolls"), "{e}");
        cfg.journal.tls_cert = Some("/nonexistent/agent.crt".into());
        cfg.journal.tls_key = Some("/nonexistent/agent.key".into());
        let e = tls_config(&cfg).unwrap_err();
        assert!(e.contains("/nonexistent/agent.crt does not exist"), "{e}");
    }

    #[test]
    fn client_strings_are_escaped_on_the_console() {
        assert_eq!(shown("nginx"), "nginx");
        assert_eq!(shown("a b"), "\"a b\"");
        assert_eq!(shown("x\nPACT-READY node=evil"), "\"x\\nPACT-READY node=evil\"");
        assert_eq!(shown(""), "\"\"");
        assert!(shown(&"é".repeat(300)).len() < 2 * MAX_ARG_LEN + 3);
    }

    // ---- the server over real TLS, without a main loop behind it ----

    struct Fixture {
        dir: std::path::PathBuf,
        addr: SocketAddr,
        rx: std::sync::mpsc::Receiver<Msg>,
        shared: Arc<Shared>,
        lines: Arc<Mutex<Vec<String>>>,
    }

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }

    fn fixture(name: &str, auth: Auth, limits: Limits) -> Fixture {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(format!("pact-api-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "api test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("node.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
        let tls = pact_proto::tls::server_config(&dir.join("node.crt"), &dir.join("node.key")).unwrap();
        let (tx, rx) = sync_channel::<Msg>(4);
        let shared = Shared::new();
        shared.set_vcluster("ml");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let server = Server {
            tls,
            auth,
            shared: shared.clone(),
            link: Link { tx, waker: NoWake },
            limits,
            log: Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_string())),
            record: None,
        };
        let addr = server.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
        Fixture { dir, addr, rx, shared, lines }
    }

    fn hmac() -> Auth {
        Auth::from_config(Some(&shell_auth(true, false)))
    }

    fn token(role: &str) -> String {
        HmacVerifier::new(SECRET.as_bytes(), "iss", "aud").mint("carol", role, 60).unwrap()
    }

    impl Fixture {
        fn client(&self, token: &str) -> Client {
            let tls = pact_proto::tls::client_config(&self.dir.join("ca.crt")).unwrap();
            Client::connect(&self.addr.to_string(), tls, token, Duration::from_secs(10)).unwrap()
        }

        fn raw_tls(&self) -> pact_proto::client::TlsStream {
            let tls = pact_proto::tls::client_config(&self.dir.join("ca.crt")).unwrap();
            let mut s = pact_proto::client::connect_tls(&self.addr.to_string(), tls, Duration::from_secs(10)).unwrap();
            s.write_all(&frame::client_hello()).unwrap();
            let mut answer = [0u8; HANDSHAKE_LEN];
            s.read_exact(&mut answer).unwrap();
            frame::check_server_answer(&answer).unwrap();
            s
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn remote(r: Result<ServiceControlResponse, CallError>) -> RemoteError {
        match r {
            Err(CallError::Remote(e)) => e,
            other => panic!("expected a remote error, got {other:?}"),
        }
    }

    fn status_all() -> ServiceControlRequest {
        ServiceControlRequest { name: String::new(), action: "status".into() }
    }

    #[test]
    fn refusals_never_reach_the_main_loop_and_every_request_is_logged() {
        let f = fixture("refusals", hmac(), Limits::default());
        let mut c = f.client(&token("pact-viewer-ml"));
        let stop = ServiceControlRequest { name: "b".into(), action: "stop".into() };
        let e = remote(c.call(Method::ServiceControl, &stop));
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
        let e =
            remote(c.call(Method::ServiceControl, &ServiceControlRequest { name: "b".into(), action: "kill".into() }));
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
        let e = remote(
            c.call(Method::ServiceControl, &ServiceControlRequest { name: String::new(), action: "stop".into() }),
        );
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
        let power = PowerRequest { action: "poweroff".into(), reason: "test".into() };
        let r: Result<ExecOutput, _> = c.call(Method::Power, &power);
        assert!(matches!(r, Err(CallError::Remote(ref e)) if e.code == ErrorCode::PermissionDenied), "{r:?}");
        // Exec and friends: Unimplemented, and the connection stays usable.
        let r: Result<ExecOutput, _> =
            c.call(Method::Exec, &pact_proto::shell::ExecRequest { command: "ls".into(), ..Default::default() });
        match r {
            Err(CallError::Remote(e)) => {
                assert_eq!(e.code, ErrorCode::Unimplemented);
                assert!(e.message.contains("exec/shell issue"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let mut bad = f.client(&token("pact-platform-admin").replace('a', "b"));
        assert_eq!(remote(bad.call(Method::ServiceControl, &status_all())).code, ErrorCode::Unauthenticated);
        assert!(f.rx.try_recv().is_err(), "a refused request reached the main loop");
        drop(c);
        let lines = f.lines.lock().unwrap().clone();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("PACT: api: carol pact-viewer-ml ServiceControl stop b -> PermissionDenied")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("PACT: api: - - ServiceControl status * -> Unauthenticated")),
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l.contains("Power poweroff reason=\"test\" -> PermissionDenied")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("Exec - -> Unimplemented")), "{lines:#?}");
    }

    #[test]
    fn an_allowed_request_goes_to_the_main_loop_and_its_answer_comes_back() {
        let f = fixture("relay", hmac(), Limits { reply_timeout: Duration::from_millis(500), ..Limits::default() });
        let mut c = f.client(&token("pact-viewer-ml"));
        // The "main loop" here is this thread: it answers what arrives, in order.
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Ok(m) = f.rx.recv_timeout(Duration::from_secs(10)) {
                if let Msg::Control { name, action, reply } = m {
                    seen.push((name.clone(), action));
                    if seen.len() == 1 {
                        let e = ServiceStatusEntry {
                            name: "a".into(),
                            state: "running".into(),
                            pid: 7,
                            uptime_seconds: 3,
                            restart_count: 1,
                        };
                        reply.send(Ok(vec![e])).unwrap();
                    } else {
                        // Not answered: the client sees Timeout once reply_timeout passes.
                        std::thread::sleep(Duration::from_millis(800));
                        drop(reply);
                        break;
                    }
                }
            }
            (seen, f)
        });
        let r: ServiceControlResponse = c.call(Method::ServiceControl, &status_all()).unwrap();
        assert_eq!(r.services.len(), 1);
        assert_eq!((r.services[0].name.as_str(), r.services[0].pid), ("a", 7));
        let e = remote(
            c.call(Method::ServiceControl, &ServiceControlRequest { name: "a".into(), action: "status".into() }),
        );
        assert_eq!(e.code, ErrorCode::Timeout, "{e}");
        let (seen, f) = h.join().unwrap();
        assert_eq!(seen, vec![(String::new(), Action::Status), ("a".to_string(), Action::Status)]);
        // Once shutting down, requests are refused without reaching the main loop.
        f.shared.set_shutting_down();
        assert_eq!(remote(c.call(Method::ServiceControl, &status_all())).code, ErrorCode::Unavailable);
        assert!(f.rx.try_recv().is_err());
    }

    #[test]
    fn protocol_violations_close_the_connection_with_an_error_frame() {
        let f = fixture("protocol", hmac(), Limits::default());
        let read_error = |s: &mut pact_proto::client::TlsStream| -> RemoteError {
            let fr = frame::read_frame(s, 1 << 20).unwrap();
            assert_eq!(fr.kind, FrameKind::Error);
            let e = RemoteError::from_body(pact_proto::wire::ErrorBody::decode(&fr.body[..]).unwrap());
            // Then the server closes.
            assert!(matches!(frame::read_frame(s, 1 << 20), Err(frame::FrameIoError::Closed)));
            e
        };
        // A header announcing more than MAX_REQUEST_BODY: refused from the header.
        let mut s = f.raw_tls();
        let h = frame::encode_header(&frame::FrameHeader {
            kind: FrameKind::Request,
            method: Method::ServiceControl as u16,
            request_id: 1,
            body_len: MAX_REQUEST_BODY as u32 + 1,
        });
        s.write_all(&h).unwrap();
        assert_eq!(read_error(&mut s).code, ErrorCode::FrameTooLarge);
        // An unknown method id.
        let mut s = f.raw_tls();
        write_frame(&mut s, &Frame::new(FrameKind::Request, 999, 2, Vec::new())).unwrap();
        assert_eq!(read_error(&mut s).code, ErrorCode::UnknownMethod);
        // A frame that is not a request.
        let mut s = f.raw_tls();
        write_frame(&mut s, &Frame::new(FrameKind::Response, Method::Power as u16, 3, Vec::new())).unwrap();
        assert_eq!(read_error(&mut s).code, ErrorCode::MalformedFrame);
        // A body that is not a Request.
        let mut s = f.raw_tls();
        write_frame(&mut s, &Frame::new(FrameKind::Request, Method::Power as u16, 4, vec![0xff; 9])).unwrap();
        assert_eq!(read_error(&mut s).code, ErrorCode::MalformedFrame);
        // Not the pact handshake after TLS: closed without an answer.
        let tls = pact_proto::tls::client_config(&f.dir.join("ca.crt")).unwrap();
        let mut s = pact_proto::client::connect_tls(&f.addr.to_string(), tls, Duration::from_secs(10)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 8];
        assert!(!matches!(s.read(&mut buf), Ok(n) if n > 0), "answered a non-pact client");
    }

    #[test]
    fn silent_clients_are_dropped_and_connections_are_capped() {
        let closed_within = |s: &mut TcpStream, t: Duration| -> bool {
            s.set_read_timeout(Some(t)).unwrap();
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Ok(0) => true,
                Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        };
        // A client that connects and sends nothing is closed after the handshake timeout.
        let limits = Limits { handshake_timeout: Duration::from_millis(300), ..Limits::default() };
        let f = fixture("silent", hmac(), limits);
        let mut quiet = TcpStream::connect(f.addr).unwrap();
        assert!(closed_within(&mut quiet, Duration::from_secs(10)), "a silent client was kept");
        drop(f);

        // Two connections in their TLS handshake hold both slots (the accept thread counts
        // them in order, before it accepts the third), so the third is closed at accept, long
        // before the 120 s handshake timeout.
        let limits = Limits { max_connections: 2, handshake_timeout: Duration::from_secs(120), ..Limits::default() };
        let f = fixture("cap", hmac(), limits);
        let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(f.addr).unwrap()).collect();
        let mut third = TcpStream::connect(f.addr).unwrap();
        assert!(closed_within(&mut third, Duration::from_secs(10)), "the third connection was served");
        assert!(f.lines.lock().unwrap().iter().any(|l| l.contains("closed at accept: 2 connections open")));
        // The slots are free again once the held connections end.
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = loop {
            let tls = pact_proto::tls::client_config(&f.dir.join("ca.crt")).unwrap();
            match Client::connect(&f.addr.to_string(), tls, &token("pact-viewer-ml"), Duration::from_secs(10)) {
                Ok(c) => break c,
                Err(e) => assert!(Instant::now() < deadline, "no slot came free: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let bogus = ServiceControlRequest { name: "x".into(), action: "bogus".into() };
        assert_eq!(remote(c.call(Method::ServiceControl, &bogus)).code, ErrorCode::InvalidArgument);
    }
}
