//! A blocking client (used by the CLI, the perf suite and tests) for the journal's client port: TCP, TLS (rustls), the pact handshake,
//! then request/response frames. One request at a time per connection.

use crate::frame::{self, read_frame, write_frame, Frame, FrameIoError, FrameKind, HANDSHAKE_LEN, MAX_FRAME_BODY};
use crate::wire::{ErrorBody, Request};
use crate::{ErrorCode, Method, RemoteError};
use prost::Message;
use rustls::{ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub struct Client {
    stream: TlsStream,
    token: String,
    next_id: u32,
    linearizable: bool,
}

/// A client-side failure: a remote error, or the journal could not be reached.
#[derive(Debug)]
pub enum CallError {
    Remote(RemoteError),
    /// Could not connect, TLS failed, timed out, or the connection broke.
    Unreachable(String),
    /// The server sent something this client cannot make sense of.
    Protocol(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Remote(e) => write!(f, "{}", e.message),
            CallError::Unreachable(m) => write!(f, "journal unreachable: {m}"),
            CallError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl CallError {
    /// The CLI exit code (DESIGN.md §8). Unreachable and timed out map to 5.
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::Remote(e) => e.code.cli_exit_code(),
            CallError::Unreachable(_) => ErrorCode::Unavailable.cli_exit_code(),
            CallError::Protocol(_) => 1,
        }
    }
}

fn io_err(e: FrameIoError) -> CallError {
    match e {
        FrameIoError::Decode(d) => CallError::Protocol(d.to_string()),
        FrameIoError::Closed => CallError::Unreachable("the journal closed the connection".into()),
        FrameIoError::Io(e)
            if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            CallError::Unreachable("timed out waiting for the journal".into())
        }
        FrameIoError::Io(e) => CallError::Unreachable(e.to_string()),
    }
}

/// "https://host:port/..." or "host:port" or "host" → "host:port" (default port 9443).
pub fn socket_target(endpoint: &str) -> String {
    let s = endpoint.split("://").nth(1).unwrap_or(endpoint);
    let s = s.split('/').next().unwrap_or(s);
    let has_port = if s.starts_with('[') { s.contains("]:") } else { s.matches(':').count() == 1 };
    if has_port {
        s.to_string()
    } else {
        format!("{s}:{}", crate::ports::JOURNAL_CLIENT)
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// TCP connect (trying every resolved address) and the TLS handshake, with timeouts;
/// no pact handshake yet.
pub fn connect_tls(endpoint: &str, tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Result<TlsStream, CallError> {
    let tcp = connect_tcp(endpoint, timeout)?;
    tls_over(tcp, endpoint, tls, timeout)
}

/// TCP connect, trying every resolved address, with a timeout.
pub fn connect_tcp(endpoint: &str, timeout: Duration) -> Result<TcpStream, CallError> {
    let target = socket_target(endpoint);
    let addrs: Vec<_> =
        target.to_socket_addrs().map_err(|e| CallError::Unreachable(format!("{target}: {e}")))?.collect();
    let mut last = None;
    let mut tcp = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let tcp = tcp.ok_or_else(|| {
        CallError::Unreachable(format!(
            "{target}: {}",
            last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())
        ))
    })?;
    Ok(tcp)
}

/// The TLS handshake over an already connected socket (one whose options the caller set,
/// e.g. a small receive buffer), verifying the server as `endpoint`'s host.
pub fn tls_over(
    tcp: TcpStream,
    endpoint: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream, CallError> {
    let target = socket_target(endpoint);
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(timeout)).map_err(|e| CallError::Unreachable(e.to_string()))?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| CallError::Unreachable(e.to_string()))?;
    let name = crate::tls::server_name_for(&target).map_err(|e| CallError::Unreachable(e.to_string()))?;
    let conn = ClientConnection::new(tls, name).map_err(|e| CallError::Unreachable(format!("TLS: {e}")))?;
    let mut stream = StreamOwned::new(conn, tcp);
    // Drive the TLS handshake now so certificate problems are reported as such.
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| CallError::Unreachable(format!("{target}: TLS handshake: {e}")))?;
    }
    Ok(stream)
}

impl Client {
    pub fn connect(
        endpoint: &str,
        tls: Arc<rustls::ClientConfig>,
        token: &str,
        timeout: Duration,
    ) -> Result<Client, CallError> {
        let stream = connect_tls(endpoint, tls, timeout)?;
        Client::over(stream, endpoint, token)
    }

    /// The pact handshake over an established TLS stream.
    pub fn over(mut stream: TlsStream, endpoint: &str, token: &str) -> Result<Client, CallError> {
        stream
            .write_all(&frame::client_hello())
            .and_then(|_| stream.flush())
            .map_err(|e| CallError::Unreachable(format!("{endpoint}: {e}")))?;
        let mut answer = [0u8; HANDSHAKE_LEN];
        stream.read_exact(&mut answer).map_err(|e| CallError::Unreachable(format!("{endpoint}: {e}")))?;
        frame::check_server_answer(&answer).map_err(CallError::Protocol)?;
        Ok(Client { stream, token: token.to_string(), next_id: 1, linearizable: false })
    }

    /// Reads from now on wait for the Raft read index (as current as the leader).
    pub fn set_linearizable(&mut self, on: bool) {
        self.linearizable = on;
    }

    fn send(&mut self, method: Method, body: Vec<u8>) -> Result<u32, CallError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let req = Request { bearer_token: self.token.clone(), body, linearizable: self.linearizable };
        write_frame(&mut self.stream, &Frame::new(FrameKind::Request, method as u16, id, req.encode_to_vec()))
            .map_err(io_err)?;
        self.stream.flush().map_err(|e| CallError::Unreachable(e.to_string()))?;
        Ok(id)
    }

    fn read(&mut self, id: u32) -> Result<Frame, CallError> {
        let f = read_frame(&mut self.stream, MAX_FRAME_BODY).map_err(io_err)?;
        if f.kind == FrameKind::Error {
            let body = ErrorBody::decode(&f.body[..]).map_err(|e| CallError::Protocol(format!("error frame: {e}")))?;
            return Err(CallError::Remote(RemoteError::from_body(body)));
        }
        if f.request_id != id {
            return Err(CallError::Protocol(format!("answer for request {} while waiting for {id}", f.request_id)));
        }
        Ok(f)
    }

    /// A unary call.
    pub fn call<Req: Message, Resp: Message + Default>(
        &mut self,
        method: Method,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let body = self.call_raw(method, req.encode_to_vec())?;
        Resp::decode(&body[..]).map_err(|e| CallError::Protocol(format!("{} response: {e}", method.name())))
    }

    /// A unary call with a body given as bytes (tests of bad input); the answer's body.
    pub fn call_raw(&mut self, method: Method, body: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let id = self.send(method, body)?;
        let f = self.read(id)?;
        if f.kind != FrameKind::Response {
            return Err(CallError::Protocol(format!("expected a response, got {:?}", f.kind)));
        }
        Ok(f.body)
    }

    /// Starts a server-streaming call. Read its items with `next_item` until it returns None;
    /// a long-lived stream (a subscription) is read the same way, item by item.
    pub fn start_stream<Req: Message>(&mut self, method: Method, req: &Req) -> Result<u32, CallError> {
        self.send(method, req.encode_to_vec())
    }

    /// The next item of stream `id`, or None at its end.
    pub fn next_item<Item: Message + Default>(&mut self, id: u32) -> Result<Option<Item>, CallError> {
        let f = self.read(id)?;
        match f.kind {
            FrameKind::StreamItem => Item::decode(&f.body[..])
                .map(Some)
                .map_err(|e| CallError::Protocol(format!("stream item (method {}): {e}", f.method))),
            FrameKind::EndOfStream => Ok(None),
            other => Err(CallError::Protocol(format!("unexpected {other:?} in a stream"))),
        }
    }

    /// How long a read may wait (None = forever). A subscription that expects keepalives
    /// sets this a little above the keepalive interval to notice a dead journal.
    pub fn set_read_timeout(&mut self, t: Option<Duration>) -> Result<(), CallError> {
        self.stream.sock.set_read_timeout(t).map_err(|e| CallError::Unreachable(e.to_string()))
    }

    /// A server-streaming call: collects every item until the end of the stream.
    pub fn call_stream<Req: Message, Item: Message + Default>(
        &mut self,
        method: Method,
        req: &Req,
    ) -> Result<Vec<Item>, CallError> {
        let id = self.send(method, req.encode_to_vec())?;
        let mut items = Vec::new();
        loop {
            let f = self.read(id)?;
            match f.kind {
                FrameKind::StreamItem => items.push(
                    Item::decode(&f.body[..])
                        .map_err(|e| CallError::Protocol(format!("{} item: {e}", method.name())))?,
                ),
                FrameKind::EndOfStream => return Ok(items),
                other => return Err(CallError::Protocol(format!("unexpected {other:?} in a stream"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_default_port() {
        assert_eq!(socket_target("localhost"), "localhost:9443");
        assert_eq!(socket_target("https://mgmt-1:9443/"), "mgmt-1:9443");
        assert_eq!(socket_target("127.0.0.1:1234"), "127.0.0.1:1234");
        assert_eq!(socket_target("[::1]:9443"), "[::1]:9443");
    }
}
