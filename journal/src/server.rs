//! The client port (9443): each shard binds its own SO_REUSEPORT listener and serves the
//! connections the kernel hands it, start to finish. A connection is TLS, then the pact
//! handshake, then request frames answered in order.
//!
//! Protocol violations (bytes that are not a frame, an oversized frame, a frame that is not
//! a request, an unknown method, a body that is not a `Request`) get one Error frame and the
//! connection is closed; the shard keeps serving everyone else. Application errors (bad
//! token, validation) get an Error frame and the connection stays open.

use crate::rpc::{self, Reply};
use crate::shard::ShardRef;
use crate::shared::Shared;
use crate::{debug, info, warn};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsAcceptor;
use glommio::net::{TcpListener, TcpStream};
use glommio::GlommioError;
use pact_proto::frame::{
    self, decode_header, Frame, FrameKind, HelloOutcome, HANDSHAKE_LEN, HEADER_LEN, MAX_FRAME_BODY,
};
use pact_proto::{ErrorCode, Method, RemoteError};
use prost::Message as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Connections one shard serves at once; past this, new ones are closed at accept.
pub const MAX_CONNECTIONS_PER_SHARD: u64 = 32_768;
/// TLS plus pact handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no complete request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the accept loop looks at the shutdown flag.
const ACCEPT_POLL: Duration = Duration::from_millis(200);

/// A listener for this shard: SO_REUSEPORT so every shard binds the same port and the kernel
/// spreads connections over them, and SO_REUSEADDR so a journal restarted right after a crash
/// can bind over the TIME_WAIT connections its previous run left behind.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_address(true)?;
    sk.set_reuse_port(true)?;
    sk.bind(&addr.into())?;
    sk.listen(1024)?;
    let std_listener: std::net::TcpListener = sk.into();
    crate::sys::into_glommio_listener(std_listener)
}

/// Accepts connections until shutdown, each handled on its own task, at most `max_open` at
/// once (more are closed at accept and counted). Shared by the client and metrics ports.
pub async fn accept_loop<F, Fut>(shared: &Shared, listener: &TcpListener, max_open: u64, mut handle: F)
where
    F: FnMut(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let open = Rc::new(std::cell::Cell::new(0u64));
    loop {
        if shared.is_shutting_down() {
            break;
        }
        let stream = match glommio::timer::timeout(ACCEPT_POLL, listener.accept()).await {
            Ok(s) => s,
            Err(GlommioError::TimedOut(_)) => continue,
            Err(e) => {
                warn!("accept: {e}");
                glommio::timer::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if open.get() >= max_open {
            Shared::inc(&shared.connections_refused_total);
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let fut = handle(stream);
        let open2 = open.clone();
        glommio::spawn_local(async move {
            fut.await;
            open2.set(open2.get() - 1);
        })
        .detach();
    }
}

pub async fn serve(shard: ShardRef, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    accept_loop(&shard.shared.clone(), &listener, MAX_CONNECTIONS_PER_SHARD, |stream| {
        let (shard, acceptor) = (shard.clone(), acceptor.clone());
        Shared::inc(&shard.shared.connections_total);
        shard.shared.connections_open.fetch_add(1, Ordering::Relaxed);
        async move {
            let peer = stream.peer_addr().ok();
            if let Err(e) = connection(&shard, &acceptor, stream).await {
                debug!("connection {peer:?}: {e}");
            }
            shard.shared.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    })
    .await;
    info!("shard {} stopped accepting", shard.id);
}

async fn connection(shard: &ShardRef, acceptor: &TlsAcceptor, stream: TcpStream) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(IDLE_TIMEOUT)).map_err(|e| e.to_string())?;
    // TLS and the pact hello together must finish within HANDSHAKE_TIMEOUT, so a client that
    // connects and goes quiet holds a slot for seconds, not for the idle timeout.
    let opened = glommio::timer::timeout(HANDSHAKE_TIMEOUT, async {
        let mut tls = acceptor
            .accept(crate::net::Gather(stream))
            .await
            .map_err(|e| GlommioError::from(std::io::Error::other(format!("TLS: {e}"))))?;
        let mut hello = [0u8; HANDSHAKE_LEN];
        tls.read_exact(&mut hello).await?;
        Ok((tls, hello))
    })
    .await;
    let (mut tls, hello) = opened.map_err(|e| format!("handshake: {e}"))?;
    let conn = rpc::Conn {
        peer: tls.get_ref().0 .0.peer_addr().ok(),
        chain: tls.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default(),
        memo: Default::default(),
    };
    let (outcome, answer) = match frame::server_answer(&hello) {
        Ok(x) => x,
        Err(e) => {
            Shared::inc(&shard.shared.protocol_errors_total);
            return Err(format!("handshake: {e}"));
        }
    };
    tls.write_all(&answer).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    if let HelloOutcome::NoCommonVersion { client_max, client_min } = outcome {
        return Err(format!("client speaks versions {client_min}..={client_max}; closed"));
    }
    serve_frames(shard, &conn, &mut tls).await
}

async fn serve_frames<S: AsyncRead + AsyncWrite + Unpin>(
    shard: &ShardRef,
    conn: &rpc::Conn,
    io: &mut S,
) -> Result<(), String> {
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        let mut hb = [0u8; HEADER_LEN];
        match read_full(io, &mut hb).await {
            Ok(0) => return Ok(()),
            Ok(n) if n < HEADER_LEN => return Err("truncated frame header".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        let header = match decode_header(&hb, MAX_FRAME_BODY) {
            Ok(h) => h,
            Err(e) => {
                return fatal(shard, io, 0, 0, RemoteError::new(e.error_code(), e.to_string())).await;
            }
        };
        let mut body = vec![0u8; header.body_len as usize];
        io.read_exact(&mut body).await.map_err(|e| format!("truncated frame body: {e}"))?;
        let (method, request) = match frame::parse_request(&header, &body) {
            Ok(x) => x,
            Err(e) => return fatal(shard, io, header.method, header.request_id, e).await,
        };
        Shared::inc(&shard.shared.requests_total);
        out.clear();
        let (m, id) = (header.method, header.request_id);
        // Boot streams and subscriptions write their frames as they go.
        match method {
            Method::StreamBootConfig => {
                crate::boot::stream_boot(shard, conn, io, id, &request).await?;
                continue;
            }
            Method::SubscribeConfigUpdates => {
                crate::boot::subscribe(shard, conn, io, id, &request).await?;
                continue;
            }
            _ => {}
        }
        match rpc::handle(shard, conn, method, &request).await {
            Ok(Reply::One(bytes)) => push(&mut out, Frame::new(FrameKind::Response, m, id, bytes))?,
            Ok(Reply::Stream(items)) => {
                for item in items {
                    push(&mut out, Frame::new(FrameKind::StreamItem, m, id, item))?;
                    if out.len() >= 64 * 1024 {
                        io.write_all(&out).await.map_err(|e| e.to_string())?;
                        out.clear();
                    }
                }
                push(&mut out, Frame::new(FrameKind::EndOfStream, m, id, Vec::new()))?;
            }
            Err(e) => {
                Shared::inc(&shard.shared.request_errors_total);
                if e.code == ErrorCode::Unauthenticated || e.code == ErrorCode::PermissionDenied {
                    Shared::inc(&shard.shared.auth_failures_total);
                }
                push(&mut out, Frame::new(FrameKind::Error, m, id, e.to_body().encode_to_vec()))?;
            }
        }
        io.write_all(&out).await.map_err(|e| e.to_string())?;
        io.flush().await.map_err(|e| e.to_string())?;
    }
}

fn push(out: &mut Vec<u8>, f: Frame) -> Result<(), String> {
    f.encode_into(out).map_err(|e| format!("response frame: {e}"))
}

/// Sends one Error frame and ends the connection.
async fn fatal<S: AsyncWrite + Unpin>(
    shard: &ShardRef,
    io: &mut S,
    method: u16,
    id: u32,
    e: RemoteError,
) -> Result<(), String> {
    Shared::inc(&shard.shared.protocol_errors_total);
    let f = Frame::new(FrameKind::Error, method, id, e.to_body().encode_to_vec());
    if let Ok(bytes) = f.encode() {
        let _ = io.write_all(&bytes).await;
        let _ = io.flush().await;
    }
    let _ = io.close().await;
    Err(e.to_string())
}

/// Reads until `buf` is full or EOF; returns the bytes read (0 = clean EOF before a frame).
async fn read_full<S: AsyncRead + Unpin>(io: &mut S, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = io.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}
