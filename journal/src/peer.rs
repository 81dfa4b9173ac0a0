//! The Raft peer port (9444): raft-rs messages between journals, each one a frame
//! (`Method::RaftMessage`, body = the rust-protobuf encoding of `eraftpb::Message`) over
//! mutual TLS. Runs on the raft shard.
//!
//! Each journal dials every other one and only ever sends on the connection it dialed, so a
//! link is one-way and needs no replies; raft itself retries what is lost. A dialing journal
//! proves its id with its certificate: every message arriving on a connection must come from
//! the journal id whose name (`journal-<id>.raft.pact`) the client certificate carries.
//!
//! Limits: 1024 messages queued per peer (past that, messages are dropped and counted as peer
//! errors; raft resends), frames up to 256 MiB (snapshots travel whole until chunking
//! arrives), reconnect backoff 50 ms doubling to 2 s.

use crate::raft_driver::Input;
use crate::shared::Shared;
use crate::{debug, info};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use pact_proto::frame::{self, decode_header, Frame, FrameKind, HANDSHAKE_LEN, HEADER_LEN};
use pact_proto::Method;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub const PEER_QUEUE: usize = 1024;
pub const MAX_PEER_FRAME: usize = 256 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer that stops reading fails the link after this, instead of stalling it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

struct Link {
    addr: String,
    outbox: LocalSender<Message>,
}

/// Outgoing links to every other journal.
pub struct Peers {
    me: u64,
    /// What this journal tells the peers it dials (its id and Raft address).
    hello: Vec<u8>,
    /// Started with --learner: connect at once so the hello (the join request) goes out.
    joining: bool,
    links: RefCell<HashMap<u64, Link>>,
    tls: Arc<rustls::ClientConfig>,
    inbox: Rc<LocalSender<Input>>,
    shared: Arc<Shared>,
}

impl Peers {
    pub fn new(
        me: &pact_proto::journal::Member,
        tls: Arc<rustls::ClientConfig>,
        inbox: Rc<LocalSender<Input>>,
        shared: Arc<Shared>,
    ) -> Peers {
        use prost::Message as _;
        Peers {
            me: me.id,
            hello: me.encode_to_vec(),
            joining: me.role == "learner",
            links: RefCell::new(HashMap::new()),
            tls,
            inbox,
            shared,
        }
    }

    /// Whether a link to this peer exists (its address is known).
    pub fn knows(&self, id: u64) -> bool {
        self.links.borrow().contains_key(&id)
    }

    /// Makes the links match the address book: new peers get a link, changed addresses a new
    /// one, removed peers lose theirs (its task ends when its queue closes).
    pub fn set_addresses(&self, peers: &[(u64, String)]) {
        let mut links = self.links.borrow_mut();
        links.retain(|id, l| peers.iter().any(|(i, a)| i == id && *a == l.addr));
        for (id, addr) in peers {
            if *id == self.me || links.contains_key(id) || addr.is_empty() {
                continue;
            }
            let (tx, rx) = local_channel::new_bounded(PEER_QUEUE);
            links.insert(*id, Link { addr: addr.clone(), outbox: tx });
            let task = LinkTask {
                me: self.me,
                hello: self.hello.clone(),
                eager: self.joining,
                peer: *id,
                addr: addr.clone(),
                tls: self.tls.clone(),
                inbox: self.inbox.clone(),
                shared: self.shared.clone(),
            };
            glommio::spawn_local(task.run(rx)).detach();
            info!("raft peer {id} at {addr}");
        }
    }

    pub fn send(&self, msgs: Vec<Message>) {
        let links = self.links.borrow();
        for m in msgs {
            match links.get(&m.to) {
                Some(l) => {
                    if l.outbox.try_send(m).is_err() {
                        Shared::inc(&self.shared.peer_errors_total);
                    }
                }
                None => {
                    Shared::inc(&self.shared.peer_errors_total);
                    debug!("no address for raft peer {}", m.to);
                }
            }
        }
    }
}

struct LinkTask {
    me: u64,
    hello: Vec<u8>,
    eager: bool,
    peer: u64,
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    inbox: Rc<LocalSender<Input>>,
    shared: Arc<Shared>,
}

impl LinkTask {
    async fn run(self, rx: LocalReceiver<Message>) {
        let mut backoff = BACKOFF_MIN;
        // A message taken from the queue but not yet written survives a reconnect.
        let mut carry: Option<Message> = None;
        loop {
            // Links connect when raft has something to send; a journal asking to join as a
            // learner has nothing to send yet, so it connects at once to deliver its hello.
            let first = match carry.take() {
                Some(m) => Some(m),
                None if self.eager => None,
                None => match rx.recv().await {
                    Some(m) => Some(m),
                    None => return, // the peer was removed
                },
            };
            match self.connect().await {
                Ok(mut stream) => {
                    debug!("raft link to {} at {}: connected", self.peer, self.addr);
                    backoff = BACKOFF_MIN;
                    match self.pump(&mut stream, first, &rx).await {
                        Ok(()) => return,
                        Err((e, unsent)) => {
                            debug!("raft link to {}: {e}", self.peer);
                            carry = unsent;
                        }
                    }
                }
                Err(e) => {
                    debug!("raft link to {} at {}: {e}", self.peer, self.addr);
                    if let Some(m) = &first {
                        self.failed(m);
                    }
                    // Drop what queued up meanwhile: raft resends from its own state.
                    while let Some(Some(m)) = futures_lite::future::poll_once(rx.recv()).await {
                        self.failed(&m);
                    }
                }
            }
            Shared::inc(&self.shared.peer_errors_total);
            let _ = self.inbox.try_send(Input::Unreachable(self.peer));
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn failed(&self, m: &Message) {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            let _ = self.inbox.try_send(Input::SnapshotDone(self.peer, false));
        }
    }

    /// TCP, TLS and the pact hello, all within CONNECT_TIMEOUT: a peer that accepts but never
    /// answers (a process that just died can leave its listener accepting for a while) must
    /// not hold the link forever.
    async fn connect(&self) -> Result<futures_rustls::client::TlsStream<crate::net::Gather<TcpStream>>, String> {
        let name =
            rustls::pki_types::ServerName::try_from(crate::pki::raft_name(self.peer)).map_err(|e| e.to_string())?;
        let connector = TlsConnector::from(self.tls.clone());
        let addr = self.addr.clone();
        let hello = self.hello.clone();
        glommio::timer::timeout(CONNECT_TIMEOUT, async move {
            let io = |e: String| glommio::GlommioError::from(std::io::Error::other(e));
            let tcp = TcpStream::connect(addr.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
            let mut tls =
                connector.connect(name, crate::net::Gather(tcp)).await.map_err(|e| io(format!("TLS: {e}")))?;
            tls.write_all(&frame::client_hello()).await?;
            tls.flush().await?;
            let mut answer = [0u8; HANDSHAKE_LEN];
            tls.read_exact(&mut answer).await?;
            frame::check_server_answer(&answer).map_err(io)?;
            // Who we are and where to answer us: a journal that just joined knows nobody's
            // address until its first snapshot, but must answer the leader before it gets one.
            let hello = Frame::new(FrameKind::Request, Method::RaftHello as u16, 0, hello);
            tls.write_all(&hello.encode().map_err(|e| io(e.to_string()))?).await?;
            Ok(tls)
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// Writes messages until the queue closes (Ok) or the connection fails (Err, with the
    /// message that was not written).
    async fn pump(
        &self,
        stream: &mut futures_rustls::client::TlsStream<crate::net::Gather<TcpStream>>,
        first: Option<Message>,
        rx: &LocalReceiver<Message>,
    ) -> Result<(), (String, Option<Message>)> {
        let mut next = first;
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut probe = [0u8; 1];
        loop {
            let m = match next.take() {
                Some(m) => m,
                // Waiting, watch the connection too: the peer never writes on it, so it turns
                // readable only when it closes. Without this a follower learns that its link
                // to a restarted peer is dead only by writing into it, and the first message
                // after the restart (a pre-vote answer, say) vanishes into the old socket:
                // measured, that cost a second election timeout in about 1 failover in 15.
                None => match futures_lite::future::or(async { Wake::Queue(rx.recv().await) }, async {
                    Wake::Peer(stream.read(&mut probe).await)
                })
                .await
                {
                    Wake::Queue(Some(m)) => m,
                    Wake::Queue(None) => return Ok(()),
                    Wake::Peer(Ok(0)) => return Err(("the peer closed the connection".to_string(), None)),
                    Wake::Peer(Ok(_)) => return Err(("the peer wrote on a send-only link".to_string(), None)),
                    Wake::Peer(Err(e)) => return Err((e.to_string(), None)),
                },
            };
            // Batch whatever else is queued into one write.
            let mut batch = vec![m];
            while batch.len() < 256 {
                match futures_lite::future::poll_once(rx.recv()).await {
                    Some(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
            buf.clear();
            for m in &batch {
                // A follower passes on a read index, proposal or leader transfer that
                // another journal sent it, keeping that journal's id as `from`.
                debug_assert!(m.from == self.me || forwardable(m.get_msg_type()), "{m:?}");
                let body = m.write_to_bytes().map_err(|e| (e.to_string(), None))?;
                Frame::new(FrameKind::Request, Method::RaftMessage as u16, 0, body)
                    .encode_into_max(&mut buf, MAX_PEER_FRAME)
                    .map_err(|e| (e.to_string(), None))?;
            }
            if let Err(e) = async {
                stream.write_all(&buf).await?;
                stream.flush().await
            }
            .await
            {
                for m in &batch {
                    self.failed(m);
                }
                return Err((e.to_string(), None));
            }
            for m in &batch {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    let _ = self.inbox.try_send(Input::SnapshotDone(self.peer, true));
                }
            }
        }
    }
}

/// What woke an idle link: its queue, or its connection.
enum Wake {
    Queue(Option<Message>),
    Peer(std::io::Result<usize>),
}

/// Accepts peer connections on the Raft port and feeds their messages to the driver.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    inbox: Rc<LocalSender<Input>>,
    shared: Arc<Shared>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let shared2 = shared.clone();
    crate::server::accept_loop(&shared2, &listener, 64, |stream| {
        let (acceptor, inbox, shared) = (acceptor.clone(), inbox.clone(), shared.clone());
        async move {
            if let Err(e) = peer_connection(&acceptor, stream, &inbox).await {
                Shared::inc(&shared.peer_errors_total);
                debug!("raft peer connection: {e}");
            }
        }
    })
    .await;
}

async fn peer_connection(acceptor: &TlsAcceptor, stream: TcpStream, inbox: &LocalSender<Input>) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let mut tls = glommio::timer::timeout(crate::server::HANDSHAKE_TIMEOUT, async {
        let mut tls = acceptor
            .accept(crate::net::Gather(stream))
            .await
            .map_err(|e| glommio::GlommioError::from(std::io::Error::other(format!("TLS: {e}"))))?;
        let mut hello = [0u8; HANDSHAKE_LEN];
        tls.read_exact(&mut hello).await?;
        let (_, answer) = frame::server_answer(&hello).map_err(|e| std::io::Error::other(e.to_string()))?;
        tls.write_all(&answer).await?;
        tls.flush().await?;
        Ok(tls)
    })
    .await
    .map_err(|e| format!("handshake: {e}"))?;
    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned().ok_or("no client certificate")?;
    let mut verified_as: Option<u64> = None;
    loop {
        let mut hb = [0u8; HEADER_LEN];
        if let Err(e) = tls.read_exact(&mut hb).await {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(()) } else { Err(e.to_string()) };
        }
        let h = decode_header(&hb, MAX_PEER_FRAME).map_err(|e| e.to_string())?;
        let mut body = vec![0u8; h.body_len as usize];
        tls.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        if h.kind == FrameKind::Request && h.method == Method::RaftHello as u16 {
            use prost::Message as _;
            let m = pact_proto::journal::Member::decode(&body[..]).map_err(|e| format!("raft hello: {e}"))?;
            check_identity(&cert, m.id)?;
            verified_as = Some(m.id);
            if inbox.send(Input::PeerHello(m)).await.is_err() {
                return Ok(());
            }
            continue;
        }
        if h.kind != FrameKind::Request || h.method != Method::RaftMessage as u16 {
            return Err(format!("unexpected frame {:?}/{} on the raft port", h.kind, h.method));
        }
        let mut m = Message::default();
        m.merge_from_bytes(&body).map_err(|e| format!("raft message: {e}"))?;
        if crate::log::enabled(crate::log::Level::Trace) {
            crate::log_at!(crate::log::Level::Trace, "peer frame {:?} from {} to {}", m.get_msg_type(), m.from, m.to);
        }
        // Messages a follower forwards keep their origin's id; the connection itself must
        // still belong to a verified journal.
        let forwarded = forwardable(m.get_msg_type()) && verified_as.is_some();
        if verified_as != Some(m.from) && !forwarded {
            check_identity(&cert, m.from)?;
            verified_as = Some(m.from);
        }
        if inbox.send(Input::Raft(Box::new(m))).await.is_err() {
            return Ok(());
        }
    }
}

/// Message types that raft-rs forwards from a follower to its leader unchanged, so their
/// `from` names the journal that first sent them rather than the link's own journal.
fn forwardable(t: MessageType) -> bool {
    matches!(t, MessageType::MsgPropose | MessageType::MsgReadIndex | MessageType::MsgTransferLeader)
}

/// The client certificate must name the journal id the messages claim to come from.
fn check_identity(cert: &rustls::pki_types::CertificateDer<'_>, from: u64) -> Result<(), String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("peer certificate: {e:?}"))?;
    let name = rustls::pki_types::ServerName::try_from(crate::pki::raft_name(from)).map_err(|e| e.to_string())?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("a peer sent messages as journal {from} without that journal's certificate"))?;
    Ok(())
}
