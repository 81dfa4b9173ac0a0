//! Node enrollment: hardware identity, the journals' enrollment CAs, agent certificates.
//!
//! **Trust.** The root is the cluster CA (`setup-ca.sh`, `/etc/pact/ca/`), which every journal
//! holds and every node image carries as `/etc/pact/ca.crt`. At each start a journal makes an
//! *enrollment CA* of its own: a fresh key that lives only in this process's memory, certified
//! by the cluster CA for one level of issuing (path length 0). The journal publishes that CA's
//! certificate through raft (`Command.publish_ca`, no log entry, no sequence), replacing the
//! one its previous run published. So the quorum holds the CA without any private key crossing
//! the wire or reaching a disk, any journal can sign, and a restarted journal's old CA is
//! retired: agents holding certificates it signed are refused and enroll again (the guide's
//! "the ephemeral CA is regenerated when the journal quorum restarts; agents automatically
//! re-enroll"). A journal signs nothing until its own CA is published.
//!
//! **Records.** Registration (NODE_ENROLLED), each signed certificate (CERT_SIGNED) and
//! decommissioning (NODE_DECOMMISSIONED) are journal entries carrying a
//! `pact.enrollment.EnrollmentEvent`, applied into the `enroll` table (`store`). A node's record
//! lists the certificate serials the journal accepts for it (the current one and the one it
//! renewed) and the hashes of every key ever certified for it. A client certificate is
//! accepted on the client port only if it chains to the cluster CA through a *published*
//! enrollment CA, names an enrolled, not decommissioned node, and carries one of its serials:
//! an allow-list, so a decommissioned or re-registered node's old certificates are refused
//! at once, on open connections too (each request is checked).
//!
//! **Apply is unconditional but guarded**: the RPC layer checks a request against the state
//! (clear errors), the state machine re-checks what a race could break (a certificate signed
//! for a node decommissioned meanwhile, a key certified twice) and then records nothing, so the
//! certificate is never accepted. The signing journal reads its own applied state before it
//! answers and reports such a race instead of returning a useless certificate.

use crate::state::StateTxn;
use crate::store::Result as StoreResult;
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Identity, Timestamp};
use pact_proto::enrollment::{
    enrollment_event::Event, CaPublished, CertIssued, EnrollmentEvent, EnrollmentState, HardwareIdentity,
    NodeEnrollment,
};
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An agent certificate's lifetime (ADR-008: 3 days; agents renew at 2/3 of it).
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(259_200);
/// Serials accepted per node: the current certificate and the one it renewed.
pub const MAX_SERIALS: usize = 2;
/// Certified key hashes remembered per node (replayed CSRs are refused against these).
pub const MAX_KEY_HASHES: usize = 32;
/// Largest CSR accepted (a P-256 CSR is about 300 bytes; RSA-4096 about 1.7 KiB).
pub const MAX_CSR_LEN: usize = 8 * 1024;
/// Most nodes in one BatchRegisterNodes.
pub const MAX_BATCH: usize = 10_000;
/// Enrollment records one ListNodes returns at most.
pub const MAX_LIST: usize = 100_000;
/// The common-name prefix of an agent certificate: `pact-service-agent/<node>`.
pub const AGENT_CN_PREFIX: &str = "pact-service-agent/";

pub fn is_enrollment_type(t: i32) -> bool {
    matches!(
        EntryType::try_from(t),
        Ok(EntryType::NodeEnrolled | EntryType::CertSigned | EntryType::NodeDecommissioned)
    )
}

/// The event an enrollment entry carries, checked against its type and scope.
pub fn event_of(e: &ConfigEntry) -> std::result::Result<EnrollmentEvent, String> {
    let ev = EnrollmentEvent::decode(&e.enrollment[..]).map_err(|err| format!("enrollment record: {err}"))?;
    let node = match e.scope.as_ref().and_then(|s| s.target.as_ref()) {
        Some(Target::NodeId(n)) => n.as_str(),
        _ => return Err("an enrollment entry's scope must be the node (node:ID)".into()),
    };
    let (want, named) = match &ev.event {
        Some(Event::Register(r)) => (EntryType::NodeEnrolled, r.node_id.as_str()),
        Some(Event::Issued(c)) => (EntryType::CertSigned, c.node_id.as_str()),
        Some(Event::Decommission(d)) => (EntryType::NodeDecommissioned, d.node_id.as_str()),
        None => return Err("enrollment record is empty".into()),
    };
    if e.entry_type != want as i32 {
        return Err(format!("a {} record needs entry type {}", want.as_str_name(), want.as_str_name()));
    }
    if named != node {
        return Err(format!("the enrollment record names node {named:?} but the scope is node:{node}"));
    }
    if let Some(Event::Register(r)) = &ev.event {
        validate_hardware(r.hardware_identity.as_ref().ok_or("hardware_identity is missing")?)?;
    }
    Ok(ev)
}

/// `NODE_ENROLLED` / `CERT_SIGNED` / `NODE_DECOMMISSIONED` need their record; see `event_of`.
pub fn validate(e: &ConfigEntry) -> std::result::Result<(), String> {
    if is_enrollment_type(e.entry_type) {
        event_of(e).map(|_| ())
    } else {
        Ok(())
    }
}

/// A lowercase `aa:bb:cc:dd:ee:ff`, from that or `aa-bb-...`; None if it is not a MAC.
pub fn normalize_mac(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase().replace('-', ":");
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    (ok && s != "00:00:00:00:00:00").then_some(s)
}

fn validate_hardware(hw: &HardwareIdentity) -> std::result::Result<(), String> {
    for m in std::iter::once(&hw.mac_address).filter(|m| !m.is_empty()).chain(&hw.mac_addresses) {
        normalize_mac(m).ok_or_else(|| format!("{m:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    let fields = [&hw.bmc_serial, &hw.smbios_uuid, &hw.board_serial, &hw.tpm_ek_hash];
    for v in fields.into_iter().flatten() {
        if v.trim().is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
            return Err(format!("hardware identity field {v:?} is empty, too long or holds control characters"));
        }
    }
    if let Some(t) = &hw.tpm_ek_hash {
        if t.len() != 64 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("tpm_ek_hash {t:?} is not a SHA-256 in hex (64 characters)"));
        }
    }
    if hardware_keys(hw).is_empty() {
        return Err(
            "the hardware identity names nothing (give a MAC, an SMBIOS UUID, a serial or a TPM EK hash)".into()
        );
    }
    Ok(())
}

/// The keys under which a registration claims its hardware: no two live nodes may share one.
pub fn hardware_keys(hw: &HardwareIdentity) -> Vec<String> {
    let mut keys: Vec<String> = std::iter::once(&hw.mac_address)
        .chain(&hw.mac_addresses)
        .filter_map(|m| normalize_mac(m))
        .map(|m| format!("mac:{m}"))
        .collect();
    let low = |v: &Option<String>| v.as_ref().map(|s| s.trim().to_ascii_lowercase());
    keys.extend(low(&hw.smbios_uuid).map(|v| format!("uuid:{v}")));
    keys.extend(low(&hw.board_serial).map(|v| format!("serial:{v}")));
    keys.extend(low(&hw.bmc_serial).map(|v| format!("bmc:{v}")));
    keys.extend(low(&hw.tpm_ek_hash).map(|v| format!("tpm:{v}")));
    keys.sort();
    keys.dedup();
    keys
}

/// Whether a booting node's presented identity is the registered one: every field the
/// registration names must be presented, equal (MACs: each registered MAC among the node's).
/// The error names the first field that differs, not its value.
pub fn hardware_matches(
    registered: &HardwareIdentity,
    presented: &HardwareIdentity,
) -> std::result::Result<(), String> {
    let macs: Vec<String> = std::iter::once(&presented.mac_address)
        .chain(&presented.mac_addresses)
        .filter_map(|m| normalize_mac(m))
        .collect();
    for m in std::iter::once(&registered.mac_address).chain(&registered.mac_addresses).filter(|m| !m.is_empty()) {
        let m = normalize_mac(m).unwrap_or_default();
        if !macs.contains(&m) {
            return Err(format!("the registered MAC {m} is not among the node's interfaces"));
        }
    }
    let same = |a: &Option<String>, b: &Option<String>| {
        a.as_ref().is_none_or(|a| b.as_ref().is_some_and(|b| a.trim().eq_ignore_ascii_case(b.trim())))
    };
    for (name, r, p) in [
        ("SMBIOS UUID", &registered.smbios_uuid, &presented.smbios_uuid),
        ("board serial", &registered.board_serial, &presented.board_serial),
        ("BMC serial", &registered.bmc_serial, &presented.bmc_serial),
        ("TPM EK hash", &registered.tpm_ek_hash, &presented.tpm_ek_hash),
    ] {
        if !same(r, p) {
            return Err(format!("the {name} differs from the registered one"));
        }
    }
    Ok(())
}

/// Applies an enrollment entry to the enrollment records (declared state only).
pub fn on_entry<T: StateTxn>(t: &mut T, e: &ConfigEntry) -> StoreResult<()> {
    let Ok(ev) = event_of(e) else { return Ok(()) };
    let ts = e.timestamp;
    match ev.event {
        Some(Event::Register(r)) => {
            let hw = r.hardware_identity.unwrap_or_default();
            let old = t.get_enrollment(&r.node_id)?;
            if let Some(o) = &old {
                for k in hardware_keys(o.hardware_identity.as_ref().unwrap_or(&HardwareIdentity::default())) {
                    if t.hardware_owner(&k)?.as_deref() == Some(r.node_id.as_str()) {
                        t.put_hardware_owner(&k, None)?;
                    }
                }
            }
            for k in hardware_keys(&hw) {
                t.put_hardware_owner(&k, Some(&r.node_id))?;
            }
            let rec = NodeEnrollment {
                node_id: r.node_id.clone(),
                enrollment_state: EnrollmentState::Registered as i32,
                hardware_identity: Some(hw),
                enrolled_at: ts,
                enrolled_by: e.author.clone(),
                // Keys certified before stay refused: a re-registration is not a way to replay.
                key_hashes: old.map(|o| o.key_hashes).unwrap_or_default(),
                ..Default::default()
            };
            t.put_enrollment(&rec)
        }
        Some(Event::Issued(c)) => {
            let Some(mut rec) = t.get_enrollment(&c.node_id)? else { return Ok(()) };
            if rec.enrollment_state == EnrollmentState::Revoked as i32 || rec.key_hashes.contains(&c.key_hash) {
                return Ok(());
            }
            rec.cert_serials.insert(0, c.serial.clone());
            rec.cert_serials.truncate(MAX_SERIALS);
            rec.key_hashes.insert(0, c.key_hash.clone());
            rec.key_hashes.truncate(MAX_KEY_HASHES);
            rec.cert_serial = c.serial;
            rec.cert_expires_at = c.expires_at;
            rec.last_seen = ts;
            rec.enrollment_state = EnrollmentState::Active as i32;
            t.put_enrollment(&rec)
        }
        Some(Event::Decommission(d)) => {
            let Some(mut rec) = t.get_enrollment(&d.node_id)? else { return Ok(()) };
            for k in hardware_keys(rec.hardware_identity.as_ref().unwrap_or(&HardwareIdentity::default())) {
                if t.hardware_owner(&k)?.as_deref() == Some(d.node_id.as_str()) {
                    t.put_hardware_owner(&k, None)?;
                }
            }
            rec.enrollment_state = EnrollmentState::Revoked as i32;
            rec.cert_serials.clear();
            rec.decommissioned_at = ts;
            rec.decommissioned_by = e.author.clone();
            t.put_enrollment(&rec)
        }
        None => Ok(()),
    }
}

/// The entry that records `event` on `node`'s scope, authored by `author`.
pub fn entry(kind: EntryType, node: &str, author: Identity, event: Event, why: String) -> ConfigEntry {
    ConfigEntry {
        entry_type: kind as i32,
        scope: Some(pact_proto::config::Scope { target: Some(Target::NodeId(node.to_string())) }),
        author: Some(author),
        policy_ref: why,
        enrollment: EnrollmentEvent { event: Some(event) }.encode_to_vec(),
        ..Default::default()
    }
}

pub fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
}

/// This journal's enrollment CA: a key in memory only, certified by the cluster CA.
pub struct Authority {
    pub journal_id: u64,
    /// The cluster CA certificate (PEM): the trust anchor sent to enrolling nodes.
    pub root_pem: String,
    pub ca_pem: String,
    pub published: CaPublished,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    pub lifetime: Duration,
    limiter: Mutex<RateLimiter>,
}

/// A signed agent certificate.
#[derive(Debug)]
pub struct Signed {
    /// The certificate followed by the enrollment CA's (the chain an agent presents).
    pub chain_pem: String,
    pub issued: CertIssued,
}

fn rcgen_err(e: rcgen::Error) -> String {
    format!("certificate: {e}")
}

fn unix(t: time::OffsetDateTime) -> Timestamp {
    Timestamp { seconds: t.unix_timestamp(), nanos: 0 }
}

impl Authority {
    /// A new enrollment CA for journal `journal_id`, certified by the cluster CA.
    pub fn new(
        journal_id: u64,
        root_pem: &str,
        root_key_pem: &str,
        lifetime: Duration,
        limits: RateLimits,
    ) -> std::result::Result<Authority, String> {
        let root_key = KeyPair::from_pem(root_key_pem).map_err(|e| format!("cluster CA key: {e}"))?;
        let root = CertificateParams::from_ca_cert_pem(root_pem)
            .map_err(|e| format!("cluster CA certificate: {e}"))?
            .self_signed(&root_key)
            .map_err(rcgen_err)?;
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
        let now = time::OffsetDateTime::now_utc();
        p.distinguished_name.push(DnType::CommonName, format!("pact enrollment CA, journal {journal_id}"));
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = now - time::Duration::minutes(5);
        // Outlives any certificate it signs; retired at this journal's next start anyway.
        p.not_after = now + time::Duration::days(3650);
        p.serial_number = Some(SerialNumber::from(random_serial()));
        p.use_authority_key_identifier_extension = true;
        let ca = p.signed_by(&key, &root, &root_key).map_err(rcgen_err)?;
        let der = ca.der().to_vec();
        Ok(Authority {
            journal_id,
            root_pem: root_pem.to_string(),
            ca_pem: ca.pem(),
            published: CaPublished { journal_id, fingerprint: sha256(&der), cert_der: der },
            ca,
            ca_key: key,
            lifetime,
            limiter: Mutex::new(RateLimiter::new(limits)),
        })
    }

    /// Signs `csr_der` (its signature is the node's proof that it holds the key) for `node`.
    /// The journal decides the names: `node` (DNS) and the address the request came from;
    /// whatever the CSR asks for is ignored.
    pub fn sign(
        &self,
        node: &str,
        csr_der: &[u8],
        source: Option<IpAddr>,
        renewal: bool,
    ) -> std::result::Result<Signed, String> {
        if csr_der.is_empty() {
            return Err("the CSR is empty: the node must generate its own key (the journal never does)".into());
        }
        if csr_der.len() > MAX_CSR_LEN {
            return Err(format!("the CSR is {} bytes; at most {MAX_CSR_LEN}", csr_der.len()));
        }
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der);
        let mut csr = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| format!("the CSR does not parse or its signature does not verify ({e})"))?;
        let key_hash = sha256(csr.public_key.der_bytes());
        let mut names = vec![SanType::DnsName(node.try_into().map_err(|e| format!("node id {node:?}: {e}"))?)];
        names.extend(source.map(SanType::IpAddress));
        let mut p = CertificateParams::default();
        p.subject_alt_names = names;
        p.distinguished_name.push(DnType::CommonName, format!("{AGENT_CN_PREFIX}{node}"));
        let now = time::OffsetDateTime::now_utc();
        // Back-dated for clocks a little behind the journal's: 5 minutes, or a tenth of a short
        // lifetime (so the 2/3 renewal point stays ahead of the moment of signing).
        let life = self.lifetime.as_secs().min(i64::MAX as u64) as i64;
        p.not_before = now - time::Duration::seconds((life / 10).clamp(0, 300));
        p.not_after = now + time::Duration::seconds(life);
        let serial = random_serial();
        p.serial_number = Some(SerialNumber::from(serial.clone()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let expires = unix(p.not_after);
        csr.params = p;
        let cert = csr.signed_by(&self.ca, &self.ca_key).map_err(rcgen_err)?;
        Ok(Signed {
            chain_pem: format!("{}{}", cert.pem(), self.ca_pem),
            issued: CertIssued {
                node_id: node.to_string(),
                serial: pact_proto::hex(&serial),
                expires_at: Some(expires),
                key_hash,
                issuer_fingerprint: self.published.fingerprint.clone(),
                renewal,
                source: source.map(|s| s.to_string()).unwrap_or_default(),
            },
        })
    }

    /// Takes one enrollment from the global and the per-source budgets.
    pub fn admit(&self, source: Option<IpAddr>) -> std::result::Result<(), String> {
        self.limiter.lock().map_err(|_| "rate limiter poisoned".to_string())?.admit(source, Instant::now())
    }
}

/// 16 random bytes with the top bit clear (a positive serial, as RFC 5280 asks).
fn random_serial() -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; 16];
    // The system RNG failing is not recoverable; a zero serial would still be unique enough
    // with the key hash check, but say it loudly.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        crate::warn!("system RNG failed; certificate serial from the clock");
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        b[..16].copy_from_slice(&t.to_be_bytes());
    }
    b[0] &= 0x7f;
    b[0] |= 0x01;
    b
}

/// Enrollment rate limits (`[journal.enrollment] rate_limit_per_minute`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// All sources together, per minute; at most a second's worth at once.
    pub per_minute: u32,
    /// One source address, per minute: `max(per_minute / 10, 5)` (upstream's rule); at most
    /// that many at once.
    pub per_source_per_minute: u32,
}

impl RateLimits {
    pub fn from_per_minute(n: u64) -> RateLimits {
        let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
        RateLimits { per_minute: n, per_source_per_minute: (n / 10).max(5) }
    }
}

/// Source addresses tracked at once; past this, idle ones are dropped first.
pub const MAX_TRACKED_SOURCES: usize = 65_536;

/// Token buckets: one global, one per source address. A request takes a token from both or
/// from neither.
pub struct RateLimiter {
    limits: RateLimits,
    global: (f64, Instant),
    sources: HashMap<IpAddr, (f64, Instant)>,
}

fn refill(bucket: &mut (f64, Instant), cap: f64, per_sec: f64, now: Instant) {
    bucket.0 = (bucket.0 + now.saturating_duration_since(bucket.1).as_secs_f64() * per_sec).min(cap);
    bucket.1 = now;
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter { limits, global: (Self::global_cap(limits), Instant::now()), sources: HashMap::new() }
    }

    fn global_cap(l: RateLimits) -> f64 {
        (f64::from(l.per_minute) / 60.0).max(1.0)
    }

    pub fn admit(&mut self, source: Option<IpAddr>, now: Instant) -> std::result::Result<(), String> {
        let (l, gcap) = (self.limits, Self::global_cap(self.limits));
        refill(&mut self.global, gcap, f64::from(l.per_minute) / 60.0, now);
        let per_src = f64::from(l.per_source_per_minute.max(1));
        if let Some(ip) = source {
            if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_TRACKED_SOURCES {
                // A bucket refills within a minute: anything idle that long is at its cap anyway.
                self.sources.retain(|_, b| now.saturating_duration_since(b.1) < Duration::from_secs(60));
                if self.sources.len() >= MAX_TRACKED_SOURCES {
                    return Err(format!(
                        "enrollment refused: {MAX_TRACKED_SOURCES} source addresses are enrolling at once"
                    ));
                }
            }
            let b = self.sources.entry(ip).or_insert((per_src, now));
            refill(b, per_src, per_src / 60.0, now);
            if b.0 < 1.0 {
                return Err(format!(
                    "enrollment rate limit: at most {} per minute from {ip}; retry later",
                    l.per_source_per_minute
                ));
            }
        }
        if self.global.0 < 1.0 {
            return Err(format!("enrollment rate limit: at most {} per minute in all; retry later", l.per_minute));
        }
        self.global.0 -= 1.0;
        if let Some(b) = source.and_then(|ip| self.sources.get_mut(&ip)) {
            b.0 -= 1.0;
        }
        Ok(())
    }
}

/// Why a client certificate is not accepted.
#[derive(Debug, PartialEq)]
pub enum CertRefusal {
    /// Not an agent certificate (a journal's or an admin's): it identifies nobody here.
    NotAgent,
    /// An agent certificate that is not (or no longer) good: the reason.
    Refused(String),
}

/// What `check_client_chain` learned of a connection's certificate, so that later requests
/// on the same connection skip parsing it and checking its signature; the checks against the
/// journal's state (the CA still published, the node, its serials, the expiry) run every time.
#[derive(Clone, Debug, Default)]
pub struct CertMemo(std::cell::RefCell<Option<Checked>>);

#[derive(Clone, Debug)]
struct Checked {
    node: String,
    serial: String,
    /// Fingerprint of the enrollment CA that signed it.
    ca: Vec<u8>,
    not_after: i64,
}

/// The node a client certificate chain identifies, if the journal accepts it: the leaf is
/// `pact-service-agent/<node>`, a published enrollment CA signed it, and its serial is one of
/// the node's current ones. (TLS has already checked the chain up to the cluster CA, and the
/// dates.)
pub fn check_client_chain(
    store: &crate::store::Store,
    chain: &[rustls::pki_types::CertificateDer<'_>],
    memo: &CertMemo,
) -> std::result::Result<String, CertRefusal> {
    let refused = |m: String| CertRefusal::Refused(m);
    let r = store.read_txn().map_err(|e| refused(format!("store: {e}")))?;
    let cas = store.enrollment_cas(&r).map_err(|e| refused(format!("store: {e}")))?;
    let known = memo.0.borrow().clone();
    let c = match known {
        Some(c) => c,
        None => {
            let leaf = chain.first().ok_or(CertRefusal::NotAgent)?;
            let params = CertificateParams::from_ca_cert_der(leaf).map_err(|_| CertRefusal::NotAgent)?;
            let cn = match params.distinguished_name.get(&DnType::CommonName) {
                Some(rcgen::DnValue::Utf8String(s)) => Some(s.clone()),
                Some(rcgen::DnValue::PrintableString(s)) => Some(s.as_str().to_string()),
                _ => None,
            };
            let node =
                cn.as_deref().and_then(|c| c.strip_prefix(AGENT_CN_PREFIX)).ok_or(CertRefusal::NotAgent)?.to_string();
            let serial = pact_proto::hex(params.serial_number.as_ref().map(|s| s.as_ref()).unwrap_or_default());
            // Which CA signed the leaf is checked here, not read off the chain the client sent:
            // the subject names of a journal's successive enrollment CAs are the same, so a
            // client could put the current CA second and let TLS build its path through a
            // retired one.
            let Some(ca) = cas.iter().find(|c| issued_by(leaf, &c.cert_der)) else {
                return Err(refused(format!(
                    "node {node}: certificate {serial} was signed by an enrollment CA no journal uses any more (a journal restarted); enroll again"
                )));
            };
            let c = Checked { node, serial, ca: ca.fingerprint.clone(), not_after: params.not_after.unix_timestamp() };
            *memo.0.borrow_mut() = Some(c.clone());
            c
        }
    };
    let (node, serial) = (&c.node, &c.serial);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if now >= c.not_after {
        return Err(refused(format!("node {node}: certificate {serial} expired at {}; enroll again", c.not_after)));
    }
    if !cas.iter().any(|x| x.fingerprint == c.ca) {
        return Err(refused(format!(
            "node {node}: certificate {serial} was signed by an enrollment CA no journal uses any more (a journal restarted); enroll again"
        )));
    }
    let rec = store.get_enrollment(&r, node).map_err(|e| refused(format!("store: {e}")))?;
    match rec {
        None => Err(refused(format!("node {node} is not enrolled"))),
        Some(rec) if rec.enrollment_state == EnrollmentState::Revoked as i32 => {
            Err(refused(format!("node {node} was decommissioned; its certificates are revoked")))
        }
        Some(rec) if !rec.cert_serials.contains(serial) => Err(refused(format!(
            "node {node}: certificate {serial} is not one the journal accepts (renewed, re-registered or never recorded); enroll again"
        ))),
        Some(_) => Ok(node.clone()),
    }
}

/// Whether `ca_der` signed `leaf` directly, and the leaf is valid now for client use.
fn issued_by(leaf: &rustls::pki_types::CertificateDer<'_>, ca_der: &[u8]) -> bool {
    let ca = rustls::pki_types::CertificateDer::from(ca_der);
    let (Ok(anchor), Ok(ee)) = (webpki::anchor_from_trusted_cert(&ca), webpki::EndEntityCert::try_from(leaf)) else {
        return false;
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        rustls::pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hw(mac: &str) -> HardwareIdentity {
        HardwareIdentity { mac_address: mac.into(), ..Default::default() }
    }

    #[test]
    fn macs_normalise_and_identities_match_field_by_field() {
        assert_eq!(normalize_mac("AA-BB-cc-dd-ee-01").as_deref(), Some("aa:bb:cc:dd:ee:01"));
        assert_eq!(normalize_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(normalize_mac("00:00:00:00:00:00"), None);
        let mut reg = hw("aa:bb:cc:dd:ee:01");
        reg.smbios_uuid = Some("1234".into());
        let mut p = hw("");
        p.mac_addresses = vec!["AA:BB:CC:DD:EE:01".into(), "aa:bb:cc:dd:ee:02".into()];
        p.smbios_uuid = Some("1234".into());
        assert_eq!(hardware_matches(&reg, &p), Ok(()));
        p.smbios_uuid = Some("9999".into());
        assert!(hardware_matches(&reg, &p).unwrap_err().contains("SMBIOS UUID"));
        p.smbios_uuid = None;
        assert!(hardware_matches(&reg, &p).unwrap_err().contains("SMBIOS UUID"));
        assert!(hardware_matches(&reg, &hw("aa:bb:cc:dd:ee:09")).unwrap_err().contains("MAC"));
        assert_eq!(hardware_keys(&reg), vec!["mac:aa:bb:cc:dd:ee:01".to_string(), "uuid:1234".into()]);
        assert!(validate_hardware(&hw("")).unwrap_err().contains("names nothing"));
        assert!(validate_hardware(&hw("zz")).unwrap_err().contains("not a MAC"));
    }

    #[test]
    fn rate_limits_per_source_and_global() {
        let mut l = RateLimiter::new(RateLimits { per_minute: 180, per_source_per_minute: 2 });
        assert_eq!(RateLimits::from_per_minute(100).per_source_per_minute, 10);
        assert_eq!(RateLimits::from_per_minute(20).per_source_per_minute, 5);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.admit(Some(a), t).is_ok());
        assert!(l.admit(Some(a), t).is_ok());
        assert!(l.admit(Some(a), t).unwrap_err().contains("per minute from 10.0.0.1"));
        assert!(l.admit(Some(b), t).is_ok());
        assert!(l.admit(Some(b), t).unwrap_err().contains("per minute in all"));
        // A refusal takes nothing: a second later b still has its second token.
        assert!(l.admit(Some(b), t + Duration::from_secs(1)).is_ok());
        assert!(l.admit(Some(b), t + Duration::from_secs(2)).unwrap_err().contains("from 10.0.0.2"));
        // a's own bucket gives one more every 30 s.
        assert!(l.admit(Some(a), t + Duration::from_secs(31)).is_ok());
    }

    #[test]
    fn signs_a_csr_with_the_journals_names_and_refuses_junk() {
        let dir = std::env::temp_dir().join(format!("pact-enroll-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = crate::pki::ensure_tls(&dir, 1, &[], None).unwrap();
        let root = std::fs::read_to_string(&files.ca_cert).unwrap();
        let root_key = std::fs::read_to_string(&files.ca_key).unwrap();
        let a = Authority::new(1, &root, &root_key, DEFAULT_CERT_LIFETIME, RateLimits::from_per_minute(100)).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "pact-platform-admin");
        let csr = p.serialize_request(&key).unwrap();
        let s = a.sign("n1", csr.der(), Some("10.1.2.3".parse().unwrap()), false).unwrap();
        assert_eq!(s.issued.key_hash, sha256(key.public_key_raw()));
        use rustls::pki_types::pem::PemObject;
        let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(s.chain_pem.as_bytes()).next().unwrap().unwrap();
        let got = CertificateParams::from_ca_cert_der(&leaf).unwrap();
        assert_eq!(got.subject_alt_names.len(), 2, "{:?}", got.subject_alt_names);
        assert!(!format!("{:?}", got.subject_alt_names).contains("evil"));
        assert!(a.sign("n1", &[], None, false).unwrap_err().contains("empty"));
        assert!(a.sign("n1", b"not a csr", None, false).unwrap_err().contains("does not parse"));
        let mut bad = csr.der().to_vec();
        let n = bad.len();
        bad[n - 3] ^= 0x55;
        assert!(a.sign("n1", &bad, None, false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
