//! Whatever bytes a peer sends: the handshake check, the frame decoder (whole-buffer and
//! incremental), and the prost decoding of every body the journal accepts must return an
//! error or a value, never panic, and never allocate past the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pact_proto::frame::{self, Frame, HANDSHAKE_LEN, MAX_FRAME_BODY};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if data.len() >= HANDSHAKE_LEN {
        let _ = frame::server_answer(data[..HANDSHAKE_LEN].try_into().unwrap());
        let _ = frame::check_server_answer(data[..HANDSHAKE_LEN].try_into().unwrap());
    }
    // A small limit too, so the oversized path is reached with small inputs.
    for max in [64usize, MAX_FRAME_BODY] {
        let _ = frame::decode_all(data, max);
        let mut rest = data;
        while let Ok(Some((f, used))) = frame::decode(rest, max) {
            assert!(used <= rest.len());
            assert!(f.body.len() <= max);
            bodies(&f);
            rest = &rest[used..];
        }
    }
    let mut reader = data;
    while let Ok(f) = frame::read_frame(&mut reader, MAX_FRAME_BODY) {
        bodies(&f);
    }
});

fn bodies(f: &Frame) {
    if let Ok(req) = pact_proto::wire::Request::decode(&f.body[..]) {
        let b = &req.body[..];
        let _ = pact_proto::journal::AppendEntryRequest::decode(b);
        let _ = pact_proto::journal::ListEntriesRequest::decode(b);
        let _ = pact_proto::journal::Command::decode(b);
        let _ = pact_proto::stream::BootConfigRequest::decode(b);
        let _ = pact_proto::stream::SubscribeRequest::decode(b);
        let _ = pact_proto::shell::ShellInput::decode(b);
    }
    let _ = pact_proto::wire::ErrorBody::decode(&f.body[..]);
    if let Ok(e) = f.encode() {
        assert_eq!(frame::decode_all(&e, MAX_FRAME_BODY).map(|v| v.len()), Ok(1));
    }
}
