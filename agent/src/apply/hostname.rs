//! The hostname: `sethostname(2)` in the agent's UTS namespace, compared first with
//! `uname(2)`'s nodename so an equal name is [`Outcome::Unchanged`] and nothing is written.
//! `/etc/hostname` is not written: on a diskless node the root is an image, and the kernel's
//! name is what every process sees.

use super::{errno_text, Outcome};

/// The kernel's limit (`__NEW_UTS_LEN`).
const MAX_LEN: usize = 64;

pub fn apply(name: &str) -> Outcome {
    if name.is_empty() || name.len() > MAX_LEN || name.bytes().any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace()) {
        return Outcome::Failed(format!("invalid hostname {name:?} (1 to {MAX_LEN} bytes, no whitespace or '/')"));
    }
    let current = rustix::system::uname();
    if current.nodename().to_bytes() == name.as_bytes() {
        return Outcome::Unchanged;
    }
    match rustix::system::sethostname(name.as_bytes()) {
        Ok(()) => Outcome::Applied,
        Err(e) => Outcome::Failed(format!("sethostname: {}", errno_text(e))),
    }
}
