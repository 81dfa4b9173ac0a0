//! The frame codec: how every message travels on every pact port.
//!
//! A connection starts with a version handshake, then carries frames.
//!
//! Handshake (8 bytes each way, client first):
//!
//! ```text
//! client: "PACT" | max_version u16 BE | min_version u16 BE
//! server: "PACT" | chosen_version u16 BE | status u8 | 0u8      status 0 = ok, 1 = no common version
//! ```
//!
//! Frame (12-byte header, big-endian, then the body):
//!
//! ```text
//! 0..4   body length (u32), at most MAX_FRAME_BODY
//! 4      kind (FrameKind as u8)
//! 5      flags (u8, must be 0 in version 1)
//! 6..8   method id (u16, see method.rs)
//! 8..12  request id (u32, chosen by the client, echoed by the server)
//! 12..   body: prost bytes (Request / method response / ErrorBody)
//! ```
//!
//! The length is checked against the maximum before any body buffer is allocated, so a
//! peer cannot make us reserve more than MAX_FRAME_BODY bytes per connection.

use std::fmt;
use std::io::{self, Read, Write};

pub const MAGIC: [u8; 4] = *b"PACT";
/// Wire version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;
/// Oldest wire version this build still accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
pub const HANDSHAKE_LEN: usize = 8;
pub const HEADER_LEN: usize = 12;
/// Hard cap on a frame body. Large payloads (boot overlays, listings) are streamed as
/// several frames; nothing legitimate comes near this.
pub const MAX_FRAME_BODY: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Request = 1,
    Response = 2,
    StreamItem = 3,
    EndOfStream = 4,
    Error = 5,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            3 => FrameKind::StreamItem,
            4 => FrameKind::EndOfStream,
            5 => FrameKind::Error,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub method: u16,
    pub request_id: u32,
    pub body_len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub method: u16,
    pub request_id: u32,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The header announces a body larger than the limit.
    TooLarge {
        len: usize,
        max: usize,
    },
    UnknownKind(u8),
    BadFlags(u8),
    /// The input ended inside a frame (only from whole-buffer decoding and readers).
    Truncated {
        needed: usize,
        have: usize,
    },
    BadMagic,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len, max } => {
                write!(f, "frame body of {len} bytes exceeds the maximum of {max}")
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            DecodeError::BadFlags(v) => write!(f, "unsupported frame flags {v:#04x}"),
            DecodeError::Truncated { needed, have } => {
                write!(f, "truncated frame: needed {needed} bytes, have {have}")
            }
            DecodeError::BadMagic => write!(f, "not a pact connection (bad handshake magic)"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    /// The error code a server answers a frame it cannot decode with.
    pub fn error_code(&self) -> crate::ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => crate::ErrorCode::FrameTooLarge,
            _ => crate::ErrorCode::MalformedFrame,
        }
    }
}

/// What a server accepts on its port: a Request frame, for a known method, whose body is a
/// `pact.wire.Request`. Shared by the journal's client port and the agent's API.
pub fn parse_request(
    header: &FrameHeader,
    body: &[u8],
) -> Result<(crate::Method, crate::wire::Request), crate::RemoteError> {
    use crate::{ErrorCode, RemoteError};
    use prost::Message as _;
    if header.kind != FrameKind::Request {
        let msg = format!("expected a request frame, got {:?}", header.kind);
        return Err(RemoteError::new(ErrorCode::MalformedFrame, msg));
    }
    let method = crate::Method::from_u16(header.method)
        .ok_or_else(|| RemoteError::new(ErrorCode::UnknownMethod, format!("unknown method id {}", header.method)))?;
    let request = crate::wire::Request::decode(body).map_err(|e| {
        RemoteError::new(ErrorCode::MalformedFrame, format!("request body is not a pact.wire.Request: {e}"))
    })?;
    Ok((method, request))
}

impl Frame {
    pub fn new(kind: FrameKind, method: u16, request_id: u32, body: Vec<u8>) -> Frame {
        Frame { kind, method, request_id, body }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        self.encode_into_max(out, MAX_FRAME_BODY)
    }

    /// Like `encode_into`, for a link with its own (larger) limit, such as the Raft port.
    pub fn encode_into_max(&self, out: &mut Vec<u8>, max_body: usize) -> Result<(), DecodeError> {
        if self.body.len() > max_body || self.body.len() > u32::MAX as usize {
            return Err(DecodeError::TooLarge { len: self.body.len(), max: max_body });
        }
        out.reserve(HEADER_LEN + self.body.len());
        out.extend_from_slice(&encode_header(&FrameHeader {
            kind: self.kind,
            method: self.method,
            request_id: self.request_id,
            body_len: self.body.len() as u32,
        }));
        out.extend_from_slice(&self.body);
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

pub fn encode_header(h: &FrameHeader) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..4].copy_from_slice(&h.body_len.to_be_bytes());
    b[4] = h.kind as u8;
    b[5] = 0;
    b[6..8].copy_from_slice(&h.method.to_be_bytes());
    b[8..12].copy_from_slice(&h.request_id.to_be_bytes());
    b
}

/// Validates a header. Called before the body is read, so oversized frames are refused
/// without allocating.
pub fn decode_header(b: &[u8; HEADER_LEN], max_body: usize) -> Result<FrameHeader, DecodeError> {
    let body_len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if body_len as usize > max_body {
        return Err(DecodeError::TooLarge { len: body_len as usize, max: max_body });
    }
    let kind = FrameKind::from_u8(b[4]).ok_or(DecodeError::UnknownKind(b[4]))?;
    if b[5] != 0 {
        return Err(DecodeError::BadFlags(b[5]));
    }
    Ok(FrameHeader {
        kind,
        method: u16::from_be_bytes([b[6], b[7]]),
        request_id: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        body_len,
    })
}

/// Decodes one frame from the front of `buf`. `Ok(None)` means more bytes are needed;
/// on success returns the frame and how many bytes it used.
pub fn decode(buf: &[u8], max_body: usize) -> Result<Option<(Frame, usize)>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(&buf[..HEADER_LEN]);
    let h = decode_header(&hb, max_body)?;
    let total = HEADER_LEN + h.body_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let frame =
        Frame { kind: h.kind, method: h.method, request_id: h.request_id, body: buf[HEADER_LEN..total].to_vec() };
    Ok(Some((frame, total)))
}

/// Decodes a buffer that must hold exactly whole frames (used by tests and the fuzzer).
pub fn decode_all(mut buf: &[u8], max_body: usize) -> Result<Vec<Frame>, DecodeError> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        match decode(buf, max_body)? {
            Some((f, used)) => {
                frames.push(f);
                buf = &buf[used..];
            }
            None => {
                let needed = if buf.len() < HEADER_LEN {
                    HEADER_LEN
                } else {
                    HEADER_LEN + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
                };
                return Err(DecodeError::Truncated { needed, have: buf.len() });
            }
        }
    }
    Ok(frames)
}

// ---- handshake ----

pub fn client_hello() -> [u8; HANDSHAKE_LEN] {
    let mut b = [0u8; HANDSHAKE_LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    b[6..8].copy_from_slice(&MIN_PROTOCOL_VERSION.to_be_bytes());
    b
}

/// What the server answers to a client hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloOutcome {
    Accepted(u16),
    NoCommonVersion { client_max: u16, client_min: u16 },
}

/// Server side: checks the client hello and returns the outcome plus the 8 bytes to send back.
pub fn server_answer(hello: &[u8; HANDSHAKE_LEN]) -> Result<(HelloOutcome, [u8; HANDSHAKE_LEN]), DecodeError> {
    if hello[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let client_max = u16::from_be_bytes([hello[4], hello[5]]);
    let client_min = u16::from_be_bytes([hello[6], hello[7]]);
    let chosen = client_max.min(PROTOCOL_VERSION);
    let mut b = [0u8; HANDSHAKE_LEN];
    b[0..4].copy_from_slice(&MAGIC);
    let outcome = if chosen >= client_min && chosen >= MIN_PROTOCOL_VERSION {
        b[4..6].copy_from_slice(&chosen.to_be_bytes());
        HelloOutcome::Accepted(chosen)
    } else {
        b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        b[6] = 1;
        HelloOutcome::NoCommonVersion { client_max, client_min }
    };
    Ok((outcome, b))
}

/// Client side: checks the server's answer.
pub fn check_server_answer(answer: &[u8; HANDSHAKE_LEN]) -> Result<u16, String> {
    if answer[0..4] != MAGIC {
        return Err("the server is not speaking the pact protocol (bad handshake magic)".into());
    }
    let v = u16::from_be_bytes([answer[4], answer[5]]);
    if answer[6] != 0 {
        return Err(format!(
            "the server speaks protocol version {v}, this client speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
        ));
    }
    Ok(v)
}

// ---- blocking I/O (CLI, agent, tests); the journal has its own async reader ----

#[derive(Debug)]
pub enum FrameIoError {
    Io(io::Error),
    Decode(DecodeError),
    /// The peer closed the connection cleanly between frames.
    Closed,
}

impl fmt::Display for FrameIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameIoError::Io(e) => write!(f, "{e}"),
            FrameIoError::Decode(e) => write!(f, "{e}"),
            FrameIoError::Closed => write!(f, "connection closed by peer"),
        }
    }
}

impl std::error::Error for FrameIoError {}

impl From<io::Error> for FrameIoError {
    fn from(e: io::Error) -> Self {
        FrameIoError::Io(e)
    }
}

pub fn read_frame<R: Read>(r: &mut R, max_body: usize) -> Result<Frame, FrameIoError> {
    let mut hb = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut hb[got..]) {
            Ok(0) if got == 0 => return Err(FrameIoError::Closed),
            Ok(0) => return Err(FrameIoError::Decode(DecodeError::Truncated { needed: HEADER_LEN, have: got })),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && got == 0 => return Err(FrameIoError::Closed),
            Err(e) => return Err(FrameIoError::Io(e)),
        }
    }
    let h = decode_header(&hb, max_body).map_err(FrameIoError::Decode)?;
    let mut body = vec![0u8; h.body_len as usize];
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameIoError::Decode(DecodeError::Truncated { needed: HEADER_LEN + body.len(), have: HEADER_LEN })
        } else {
            FrameIoError::Io(e)
        }
    })?;
    Ok(Frame { kind: h.kind, method: h.method, request_id: h.request_id, body })
}

pub fn write_frame<W: Write>(w: &mut W, frame: &Frame) -> Result<(), FrameIoError> {
    let bytes = frame.encode().map_err(FrameIoError::Decode)?;
    w.write_all(&bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: FrameKind, body: Vec<u8>) -> Frame {
        Frame::new(kind, 7, 0xdead_beef, body)
    }

    #[test]
    fn round_trip_every_kind() {
        for kind in
            [FrameKind::Request, FrameKind::Response, FrameKind::StreamItem, FrameKind::EndOfStream, FrameKind::Error]
        {
            let f = sample(kind, vec![1, 2, 3]);
            let bytes = f.encode().unwrap();
            let (back, used) = decode(&bytes, MAX_FRAME_BODY).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, f);
        }
    }

    #[test]
    fn several_frames_back_to_back() {
        let mut buf = Vec::new();
        let frames: Vec<Frame> =
            (0..5).map(|i| Frame::new(FrameKind::StreamItem, 3, i, vec![i as u8; i as usize * 10])).collect();
        for f in &frames {
            f.encode_into(&mut buf).unwrap();
        }
        assert_eq!(decode_all(&buf, MAX_FRAME_BODY).unwrap(), frames);
    }

    #[test]
    fn truncated_at_every_position_asks_for_more() {
        let bytes = sample(FrameKind::Request, vec![9; 40]).encode().unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], MAX_FRAME_BODY).unwrap(), None, "cut at {cut}");
            assert!(matches!(decode_all(&bytes[..cut], MAX_FRAME_BODY), Err(DecodeError::Truncated { .. }) | Ok(_)));
            if cut > 0 {
                assert!(matches!(decode_all(&bytes[..cut], MAX_FRAME_BODY), Err(DecodeError::Truncated { .. })));
            }
        }
    }

    #[test]
    fn oversized_is_refused_from_the_header() {
        let mut h = encode_header(&FrameHeader { kind: FrameKind::Request, method: 1, request_id: 1, body_len: 0 });
        h[0..4].copy_from_slice(&((MAX_FRAME_BODY as u32) + 1).to_be_bytes());
        assert_eq!(
            decode(&h, MAX_FRAME_BODY),
            Err(DecodeError::TooLarge { len: MAX_FRAME_BODY + 1, max: MAX_FRAME_BODY })
        );
        let big = Frame::new(FrameKind::Request, 1, 1, vec![0; MAX_FRAME_BODY + 1]);
        assert!(matches!(big.encode(), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn garbage_kind_and_flags_are_refused() {
        let mut h = encode_header(&FrameHeader { kind: FrameKind::Request, method: 1, request_id: 1, body_len: 0 });
        h[4] = 99;
        assert_eq!(decode(&h, MAX_FRAME_BODY), Err(DecodeError::UnknownKind(99)));
        h[4] = 1;
        h[5] = 0x80;
        assert_eq!(decode(&h, MAX_FRAME_BODY), Err(DecodeError::BadFlags(0x80)));
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        // xorshift so the test is deterministic without a rand dependency.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let len = (s % 64) as usize;
            let buf: Vec<u8> = (0..len).map(|i| (s >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            let _ = decode_all(&buf, 1024);
        }
    }

    #[test]
    fn handshake_agrees_and_rejects() {
        let (out, ans) = server_answer(&client_hello()).unwrap();
        assert_eq!(out, HelloOutcome::Accepted(PROTOCOL_VERSION));
        assert_eq!(check_server_answer(&ans).unwrap(), PROTOCOL_VERSION);

        let mut future = client_hello();
        future[4..6].copy_from_slice(&9u16.to_be_bytes());
        future[6..8].copy_from_slice(&9u16.to_be_bytes());
        let (out, ans) = server_answer(&future).unwrap();
        assert!(matches!(out, HelloOutcome::NoCommonVersion { .. }));
        assert!(check_server_answer(&ans).is_err());

        assert_eq!(server_answer(b"GET / HT"), Err(DecodeError::BadMagic));
    }

    #[test]
    fn blocking_reader_reports_clean_close_and_truncation() {
        let bytes = sample(FrameKind::Response, vec![5; 8]).encode().unwrap();
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r, MAX_FRAME_BODY).unwrap().body, vec![5; 8]);
        assert!(matches!(read_frame(&mut r, MAX_FRAME_BODY), Err(FrameIoError::Closed)));
        let mut short = &bytes[..bytes.len() - 1];
        assert!(matches!(
            read_frame(&mut short, MAX_FRAME_BODY),
            Err(FrameIoError::Decode(DecodeError::Truncated { .. }))
        ));
    }
}
