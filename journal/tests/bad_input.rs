//! Bad input on the client port: every kind of garbage gets an error (where the protocol
//! allows one) and a closed connection, and the journal keeps serving everyone else.

mod common;

use common::Journal;
use pact_proto::client::{connect_tls, TlsStream};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};
use pact_proto::frame::{self, decode_header, Frame, FrameKind, HEADER_LEN, MAX_FRAME_BODY};
use pact_proto::journal::{AppendEntryRequest, AppendEntryResponse};
use pact_proto::wire::{ErrorBody, Request};
use pact_proto::{ErrorCode, Method};
use prost::Message;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn handshaken(j: &Journal) -> TlsStream {
    let mut s = connect_tls(&j.endpoint(), j.tls(), Duration::from_secs(10)).unwrap();
    s.write_all(&frame::client_hello()).unwrap();
    s.flush().unwrap();
    let mut answer = [0u8; 8];
    s.read_exact(&mut answer).unwrap();
    frame::check_server_answer(&answer).unwrap();
    s
}

/// Reads what the server sends until it closes; returns the error code of the first frame.
fn error_then_close(s: &mut TlsStream) -> ErrorCode {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::UnexpectedEof || e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                break
            }
            Err(e) => panic!("waiting for the server to close: {e}"),
        }
    }
    assert!(buf.len() >= HEADER_LEN, "no error frame before close ({} bytes)", buf.len());
    let h = decode_header(buf[..HEADER_LEN].try_into().unwrap(), MAX_FRAME_BODY).unwrap();
    assert_eq!(h.kind, FrameKind::Error);
    let body = ErrorBody::decode(&buf[HEADER_LEN..HEADER_LEN + h.body_len as usize]).unwrap();
    ErrorCode::from_u32(body.code)
}

fn append_works(j: &Journal, label: &str) -> u64 {
    let entry = ConfigEntry {
        entry_type: EntryType::Commit as i32,
        scope: Some(Scope { target: Some(Target::VclusterId("vc".into())) }),
        policy_ref: label.into(),
        ..Default::default()
    };
    let r: AppendEntryResponse =
        j.client().call(Method::AppendEntry, &AppendEntryRequest { entry: Some(entry) }).unwrap();
    r.sequence
}

#[test]
fn garbage_oversized_truncated_and_unknown_method_close_only_that_connection() {
    let j = Journal::start("bad-input");
    // A well-behaved client stays connected across all of it.
    let mut good = j.client();
    let first = append_works(&j, "before");

    // 1. Random bytes instead of a frame header.
    let mut s = handshaken(&j);
    s.write_all(&[0xde, 0xad, 0xbe, 0xef, 0x42, 0x99, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]).unwrap();
    s.flush().unwrap();
    let code = error_then_close(&mut s);
    assert!(code == ErrorCode::FrameTooLarge || code == ErrorCode::MalformedFrame, "{code:?}");

    // 2. A header announcing a body over the maximum.
    let mut s = handshaken(&j);
    let mut h =
        frame::encode_header(&frame::FrameHeader { kind: FrameKind::Request, method: 1, request_id: 1, body_len: 0 });
    h[0..4].copy_from_slice(&((MAX_FRAME_BODY as u32) + 1).to_be_bytes());
    s.write_all(&h).unwrap();
    s.flush().unwrap();
    assert_eq!(error_then_close(&mut s), ErrorCode::FrameTooLarge);

    // 3. An unknown method id.
    let mut s = handshaken(&j);
    let req = Request { bearer_token: j.token(), body: vec![], linearizable: false };
    s.write_all(&Frame::new(FrameKind::Request, 9999, 7, req.encode_to_vec()).encode().unwrap()).unwrap();
    s.flush().unwrap();
    assert_eq!(error_then_close(&mut s), ErrorCode::UnknownMethod);

    // 4. A frame that is not a request.
    let mut s = handshaken(&j);
    s.write_all(&Frame::new(FrameKind::Response, Method::GetEntry as u16, 1, vec![]).encode().unwrap()).unwrap();
    s.flush().unwrap();
    assert_eq!(error_then_close(&mut s), ErrorCode::MalformedFrame);

    // 5. A request whose body is not a pact.wire.Request.
    let mut s = handshaken(&j);
    s.write_all(&Frame::new(FrameKind::Request, Method::GetEntry as u16, 1, vec![0xff; 16]).encode().unwrap()).unwrap();
    s.flush().unwrap();
    assert_eq!(error_then_close(&mut s), ErrorCode::MalformedFrame);

    // 6. A truncated frame, then the client goes away.
    let mut s = handshaken(&j);
    let full = Frame::new(FrameKind::Request, 1, 1, vec![1; 100]).encode().unwrap();
    s.write_all(&full[..40]).unwrap();
    s.flush().unwrap();
    drop(s);

    // 7. Not TLS at all, and a TLS client that never speaks the pact handshake correctly.
    let mut raw = TcpStream::connect(j.endpoint()).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    let mut s = connect_tls(&j.endpoint(), j.tls(), Duration::from_secs(10)).unwrap();
    s.write_all(b"HELLO!!!").unwrap();
    s.flush().unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    assert!(sink.is_empty(), "bad handshake must be answered by closing");

    // Everyone else is still served, including the connection opened first.
    let st: pact_proto::journal::JournalStatus =
        good.call(Method::JournalStatus, &pact_proto::journal::JournalStatusRequest {}).unwrap();
    assert_eq!(st.role, "leader");
    let second = append_works(&j, "after");
    assert_eq!(second, first + 1);
}

#[test]
fn well_formed_but_wrong_requests_get_typed_errors_and_keep_the_connection() {
    let j = Journal::start("bad-requests");
    let mut c = j.client();
    let bad = |e: ConfigEntry| AppendEntryRequest { entry: Some(e) };
    let base = ConfigEntry {
        entry_type: EntryType::Commit as i32,
        scope: Some(Scope { target: Some(Target::VclusterId("vc".into())) }),
        ..Default::default()
    };
    let code = |r: Result<AppendEntryResponse, pact_proto::client::CallError>| match r {
        Err(pact_proto::client::CallError::Remote(e)) => e.code,
        other => panic!("expected a remote error, got {other:?}"),
    };
    let mut e = base.clone();
    e.ttl_seconds = Some(10);
    assert_eq!(code(c.call(Method::AppendEntry, &bad(e))), ErrorCode::InvalidArgument);
    let mut e = base.clone();
    e.parent = Some(42);
    assert_eq!(code(c.call(Method::AppendEntry, &bad(e))), ErrorCode::FailedPrecondition);
    let mut e = base.clone();
    e.entry_type = 0;
    assert_eq!(code(c.call(Method::AppendEntry, &bad(e))), ErrorCode::InvalidArgument);
    let mut e = base.clone();
    e.scope = None;
    assert_eq!(code(c.call(Method::AppendEntry, &bad(e))), ErrorCode::InvalidArgument);
    // Same connection still works.
    let ok: AppendEntryResponse = c.call(Method::AppendEntry, &bad(base)).unwrap();
    assert_eq!(ok.sequence, 1);
    let missing: Result<ConfigEntry, _> =
        c.call(Method::GetEntry, &pact_proto::journal::GetEntryRequest { sequence: 99 });
    assert!(matches!(missing, Err(pact_proto::client::CallError::Remote(e)) if e.code == ErrorCode::NotFound));
}

#[test]
fn a_client_that_goes_quiet_after_connecting_is_dropped() {
    let j = Journal::start("quiet");
    // TLS done, no pact hello: the journal closes it after its handshake timeout (10 s)
    // instead of holding the slot for the idle timeout.
    let mut s = connect_tls(&j.endpoint(), j.tls(), Duration::from_secs(60)).unwrap();
    let mut sink = Vec::new();
    let r = s.read_to_end(&mut sink);
    assert!(r.is_ok() || matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::UnexpectedEof), "{r:?}");
    assert!(sink.is_empty());
    // Still serving.
    append_works(&j, "after-quiet");
}
