//! Refused requests go on the record: an `ADMIN_OPERATION` entry whose message starts with
//! `denied:`, carrying the verified identity when there is one.
//!
//! Recording costs a Raft write, so it is bounded: each shard has two token buckets, one for
//! requests refused before a caller was known (no or bad token: anyone can send those) and one
//! for authenticated callers refused by their role. A bucket holds [`BURST`] records and
//! refills one every [`REFILL`]. A refusal that finds its bucket empty is counted, and the
//! count is carried by the next record of that bucket ("... and N more refused since"), so the
//! log never loses that refusals happened, only their individual details under a flood.

use pact_proto::auth::Caller;
use pact_proto::config::{scope::Target as ScopeTarget, ConfigEntry, EntryType, Identity, PrincipalType, Scope};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Records a bucket may make in a burst.
pub const BURST: u32 = 30;
/// One more record allowed per this much time.
pub const REFILL: Duration = Duration::from_secs(2);
/// Longest detail kept in a record.
const MAX_DETAIL: usize = 300;

struct Bucket {
    tokens: u32,
    last: Instant,
    suppressed: u64,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket { tokens: BURST, last: Instant::now(), suppressed: 0 }
    }

    /// Some(n): record now, carrying n earlier suppressed refusals; None: suppressed.
    fn take(&mut self, now: Instant) -> Option<u64> {
        let earned = (now.saturating_duration_since(self.last).as_millis() / REFILL.as_millis()) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(BURST);
            self.last += REFILL * earned;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

pub struct Limiter {
    unauthenticated: RefCell<Bucket>,
    unauthorised: RefCell<Bucket>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { unauthenticated: RefCell::new(Bucket::new()), unauthorised: RefCell::new(Bucket::new()) }
    }
}

/// What a record says of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Refused (by its token, its role or the policy): `denied: ...`.
    Denied,
    /// Allowed on the built-in roles alone while the policy engine did not answer:
    /// `degraded: ...`.
    Degraded,
}

/// The verified caller as an entry's author.
pub fn identity_of(c: &Caller) -> Identity {
    let principal_type = match c.principal_type.to_ascii_lowercase().as_str() {
        "agent" => PrincipalType::Agent,
        "service" => PrincipalType::Service,
        _ => PrincipalType::Human,
    };
    Identity { principal: c.principal.clone(), principal_type: principal_type as i32, role: c.role.clone() }
}

/// The journal itself as an entry's author (records of unauthenticated requests, expiries).
pub fn journal_identity(journal_id: u64) -> Identity {
    Identity {
        principal: format!("journal-{journal_id}"),
        principal_type: PrincipalType::Service as i32,
        role: "pact-journal".into(),
    }
}

/// The entry recording one decision, or None when the bucket is empty. `caller` None: the
/// request was refused before a caller was known; the journal itself is then the author.
pub fn record(
    limits: &Limiter,
    journal_id: u64,
    caller: Option<&Caller>,
    method: &str,
    kind: Kind,
    why: &str,
) -> Option<ConfigEntry> {
    let now = Instant::now();
    let bucket = if caller.is_some() { &limits.unauthorised } else { &limits.unauthenticated };
    let earlier = bucket.borrow_mut().take(now)?;
    let author = caller.map_or_else(|| journal_identity(journal_id), identity_of);
    let mut detail: String = why.chars().filter(|c| !c.is_control()).take(MAX_DETAIL).collect();
    if caller.is_none() {
        detail = format!("unauthenticated: {detail}");
    }
    if earlier > 0 {
        detail.push_str(&format!(" (and {earlier} more refused since the last record)"));
    }
    let prefix = match kind {
        Kind::Denied => "denied",
        Kind::Degraded => "degraded",
    };
    Some(ConfigEntry {
        entry_type: EntryType::AdminOperation as i32,
        scope: Some(Scope { target: Some(ScopeTarget::Global(true)) }),
        author: Some(author),
        policy_ref: format!("{prefix}: {method}: {detail}"),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_bounds_records_and_counts_the_rest() {
        let mut b = Bucket::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(b.take(t0), Some(0));
        }
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), None);
        // One refill later the next record carries the two suppressed ones.
        assert_eq!(b.take(t0 + REFILL), Some(2));
        assert_eq!(b.take(t0 + REFILL), None);
        assert_eq!(b.take(t0 + REFILL * 100), Some(1));
    }

    #[test]
    fn records_name_the_caller_or_the_journal() {
        let l = Limiter::default();
        let c = Caller { principal: "bob".into(), role: "pact-viewer-ml".into(), principal_type: "human".into() };
        let e = record(&l, 1, Some(&c), "AppendEntry", Kind::Denied, "pact-viewer-ml may not write vc:ml").unwrap();
        assert_eq!(e.author.as_ref().unwrap().principal, "bob");
        assert_eq!(e.policy_ref, "denied: AppendEntry: pact-viewer-ml may not write vc:ml");
        crate::state::validate_entry(&e).unwrap();
        let e = record(&l, 3, None, "ListEntries", Kind::Denied, "token rejected:\nexpired").unwrap();
        assert_eq!(e.author.as_ref().unwrap().principal, "journal-3");
        assert_eq!(e.policy_ref, "denied: ListEntries: unauthenticated: token rejected:expired");
        crate::state::validate_entry(&e).unwrap();
    }
}
