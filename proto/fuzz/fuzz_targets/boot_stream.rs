//! Whatever a journal (or something posing as one) streams to a booting node: the agent's
//! client decodes each item and assembles the boot configuration. It must refuse bad input
//! with an error (never panic, never decompress past its limit), and whatever it accepts must
//! match its checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pact_agent::journal_client::{assemble, sha256_hex};
use pact_proto::frame::{self, MAX_FRAME_BODY};
use pact_proto::stream::ConfigChunk;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // Items as the wire carries them: frames whose bodies are ConfigChunks.
    let mut items = Vec::new();
    let mut rest = data;
    while let Ok(Some((f, used))) = frame::decode(rest, MAX_FRAME_BODY) {
        match ConfigChunk::decode(&f.body[..]) {
            Ok(c) => items.push(c),
            Err(_) => return,
        }
        rest = &rest[used..];
    }
    if let Ok(b) = assemble(&items, None, "fuzz") {
        assert_eq!(sha256_hex(&b.overlay_compressed), b.overlay_checksum);
    }
});
