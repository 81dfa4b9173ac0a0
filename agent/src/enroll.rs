//! The agent's certificate: enrollment, renewal, re-enrollment.
//!
//! An agent without a token (`PACT_AGENT_TOKEN`, `[agent.journal] token_path`) identifies
//! itself to the journals by certificate. Its files are `[agent.journal] tls_cert`/`tls_key`
//! (default `<run_dir>/agent.crt` and `agent.key`), verified against `tls_ca`, the cluster CA
//! in the image (`/etc/pact/ca.crt`).
//!
//! - **Enroll** (no usable certificate): read the hardware identity (`identity`), make a key
//!   and a CSR, and send both to a journal over server-authenticated TLS, without credentials.
//!   The journal answers with the certificate and its enrollment CA (the chain to present).
//!   The key is written 0600 before the certificate, so a crash between the two leaves a pair
//!   that does not match, which counts as no certificate.
//! - **Renew** at 2/3 of the certificate's lifetime, over mutual TLS with the current
//!   certificate and a new key (`RenewCert`); a failure is retried every 5 minutes (the last
//!   third of a 3-day certificate leaves a day of retries).
//! - **Re-enroll** when a journal refuses the certificate (its enrollment CA was retired by a
//!   journal restart, the node was re-registered) or it expired.
//!
//! Every connection reads the files afresh (`tls`), so renewal needs no restart; the API
//! server's certificate (9445) is reloaded the same way (`ReloadingCert`).

use crate::apply::files::write_atomic;
use crate::boot::unix_now;
use crate::identity;
use pact_proto::client::{CallError, Client};
use pact_proto::enrollment::{EnrollRequest, EnrollResponse, RenewCertRequest, RenewCertResponse};
use pact_proto::{ErrorCode, Method};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What a journal's refusal of a client certificate starts with (journal `rpc::authenticate`).
pub const REFUSED_PREFIX: &str = "client certificate refused";
/// Retry interval for a failed renewal (FM F19).
pub const RENEW_RETRY: Duration = Duration::from_secs(300);
/// Pause between rounds of enrollment attempts over all journals (capped backoff).
pub const ENROLL_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Where the agent's certificate comes from, as the rest of the agent sees it. Enrollment
/// with the journals' CA ([`Enroller`]) is the source today; SPIRE (an X.509 SVID from the
/// workload API, `[agent.identity] provider = "spire"`) is to be another implementation.
pub trait IdentitySource: Send + Sync {
    /// Client TLS presenting the current certificate, obtaining one first when there is none.
    fn client_tls(&self) -> Result<Arc<rustls::ClientConfig>, String>;
    /// A journal refused the certificate (`why`): obtain a new one (blocking).
    fn refused(&self, why: &str) -> Result<(), String>;
    /// Blocks until a current certificate is on hand.
    fn ready(&self) -> Result<(), String>;
    /// The certificate chain and key files the API server presents (reread when they change).
    fn cert_files(&self) -> (PathBuf, PathBuf);
}

impl IdentitySource for Enroller {
    fn client_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls()
    }
    fn refused(&self, why: &str) -> Result<(), String> {
        (self.log)(&format!("PACT: {why}; enrolling again"));
        self.ensure(true)
    }
    fn ready(&self) -> Result<(), String> {
        self.ensure(false)
    }
    fn cert_files(&self) -> (PathBuf, PathBuf) {
        (self.cert.clone(), self.key.clone())
    }
}

/// Whether a journal's answer refuses the client certificate the request came with.
pub fn refuses_certificate(r: &pact_proto::RemoteError) -> bool {
    r.code == ErrorCode::Unauthenticated && r.message.starts_with(REFUSED_PREFIX)
}

pub struct Enroller {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    endpoints: Vec<String>,
    node_id: String,
    /// Where the hardware is read from (`/`; a synthetic tree in tests).
    hw_root: PathBuf,
    timeout: Duration,
    /// One enrollment or renewal at a time (the journal thread, the API, the renewal timer).
    busy: Mutex<()>,
    log: Arc<dyn Fn(&str) + Send + Sync>,
}

impl Enroller {
    pub fn new(
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        endpoints: Vec<String>,
        node_id: &str,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Enroller {
        Enroller {
            cert,
            key,
            ca,
            endpoints,
            node_id: node_id.to_string(),
            hw_root: PathBuf::from("/"),
            timeout: Duration::from_secs(10),
            busy: Mutex::new(()),
            log,
        }
    }

    /// Reads the hardware from under `root` instead of `/` (tests).
    pub fn with_hardware_root(mut self, root: &Path) -> Enroller {
        self.hw_root = root.to_path_buf();
        self
    }

    /// The certificate's (not_before, not_after), if the files hold a usable pair.
    pub fn validity(&self) -> Option<(i64, i64)> {
        let pem = std::fs::read_to_string(&self.cert).ok()?;
        pact_proto::tls::mtls_client_config(&self.cert, &self.key, &self.ca).ok()?;
        identity::cert_validity(&pem).ok()
    }

    /// The client TLS configuration with the current certificate, after one round of
    /// enrollment attempts when there is none or it expired.
    pub fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.enroll_round(false)?;
        pact_proto::tls::mtls_client_config(&self.cert, &self.key, &self.ca).map_err(|e| e.to_string())
    }

    /// Makes sure a current certificate is on disk: enrolls when there is none, it expired,
    /// or `force` (a journal refused it). Blocks, retrying every journal with capped backoff,
    /// until one signs.
    pub fn ensure(&self, force: bool) -> Result<(), String> {
        let mut pause = Duration::from_secs(1);
        let mut force = force;
        loop {
            match self.enroll_round(force) {
                Ok(()) => return Ok(()),
                Err(e) if self.endpoints.is_empty() => return Err(e),
                Err(_) => {}
            }
            // A certificate another thread got meanwhile counts.
            force = false;
            std::thread::sleep(pause);
            pause = (pause * 2).min(ENROLL_BACKOFF_MAX);
        }
    }

    /// One round over the journals (none when a current certificate is on disk and not
    /// `force`). The journal client calls this before each connection, so its own retries,
    /// backoff and cached-config fallback apply.
    pub fn enroll_round(&self, force: bool) -> Result<(), String> {
        let _g = self.busy.lock().map_err(|_| "enrollment lock poisoned".to_string())?;
        // Usable while more than a minute (a tenth of a short lifetime) is left.
        if !force && self.validity().is_some_and(|(before, after)| after > unix_now() + ((after - before) / 10).min(60))
        {
            return Ok(());
        }
        if self.endpoints.is_empty() {
            return Err("no journal endpoints to enroll with ([agent.journal] endpoints)".into());
        }
        let mut last = String::new();
        for ep in &self.endpoints {
            match self.enroll_with(ep) {
                Ok(r) => {
                    (self.log)(&format!(
                        "PACT: enrolled as {} with {ep}: certificate {} (expires {}){}",
                        r.node_id,
                        r.cert_serial,
                        r.cert_expires_at.map(|t| t.seconds).unwrap_or_default(),
                        if r.vcluster_id.is_empty() {
                            ", no vCluster yet".to_string()
                        } else {
                            format!(", vCluster {}", r.vcluster_id)
                        }
                    ));
                    return Ok(());
                }
                Err((e, retry_after)) => {
                    (self.log)(&format!("PACT: enrollment with {ep}: {e}"));
                    if let Some(ms) = retry_after {
                        std::thread::sleep(Duration::from_millis(u64::from(ms)));
                    }
                    last = format!("{ep}: {e}");
                }
            }
        }
        Err(format!("no journal signed a certificate (last: {last})"))
    }

    /// One enrollment attempt: Err carries the message and, when the journal asked, how long
    /// to wait.
    fn enroll_with(&self, endpoint: &str) -> Result<EnrollResponse, (String, Option<u32>)> {
        let hw = identity::read_hardware_identity(&self.hw_root);
        let k = identity::new_key_and_csr(&self.node_id).map_err(|e| (e, None))?;
        let tls = pact_proto::tls::client_config(&self.ca).map_err(|e| (e.to_string(), None))?;
        let call = || -> Result<EnrollResponse, CallError> {
            let mut c = Client::connect(endpoint, tls.clone(), "", self.timeout)?;
            c.call(
                Method::Enroll,
                &EnrollRequest {
                    hardware_identity: Some(hw.clone()),
                    csr: k.csr_der.clone(),
                    node_id: self.node_id.clone(),
                },
            )
        };
        let r = call().map_err(|e| {
            let wait = match &e {
                CallError::Remote(r) if r.code == ErrorCode::Busy => Some(r.retry_after_ms.max(100)),
                _ => None,
            };
            (e.to_string(), wait)
        })?;
        self.store(&k.key_pem, &r.signed_cert_pem).map_err(|e| (e, None))?;
        Ok(r)
    }

    fn store(&self, key_pem: &str, chain_pem: &str) -> Result<(), String> {
        write_atomic(&self.key, key_pem.as_bytes(), 0o600, None, None)?;
        write_atomic(&self.cert, chain_pem.as_bytes(), 0o644, None, None)
    }

    /// One renewal over mutual TLS with the current certificate.
    pub fn renew(&self) -> Result<RenewCertResponse, CallError> {
        let _g = self.busy.lock().map_err(|_| CallError::Protocol("enrollment lock poisoned".into()))?;
        let k = identity::new_key_and_csr(&self.node_id).map_err(CallError::Protocol)?;
        let tls = pact_proto::tls::mtls_client_config(&self.cert, &self.key, &self.ca)
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        let serial = String::new();
        let mut last = CallError::Unreachable("no journal endpoints".into());
        for ep in &self.endpoints {
            let attempt = Client::connect(ep, tls.clone(), "", self.timeout).and_then(|mut c| {
                c.call::<_, RenewCertResponse>(
                    Method::RenewCert,
                    &RenewCertRequest { current_cert_serial: serial.clone(), csr: k.csr_der.clone() },
                )
            });
            match attempt {
                Ok(r) => {
                    self.store(&k.key_pem, &r.signed_cert_pem).map_err(CallError::Protocol)?;
                    return Ok(r);
                }
                Err(e @ CallError::Remote(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether an error is a journal refusing this node's certificate.
    pub fn is_refusal(e: &CallError) -> bool {
        matches!(e, CallError::Remote(r) if refuses_certificate(r))
    }

    /// The renewal timer, for ever: renew at 2/3 of the lifetime, retry every 5 minutes,
    /// re-enroll when the certificate is refused or gone.
    pub fn renewal_loop(self: Arc<Self>) {
        loop {
            let due = match self.validity() {
                Some((before, after)) => identity::renew_at(before, after),
                None => 0,
            };
            let wait = due - unix_now();
            if wait > 0 {
                // In slices, so a certificate replaced meanwhile (re-enrollment) is noticed.
                std::thread::sleep(Duration::from_secs(wait.min(60) as u64));
                continue;
            }
            if self.validity().is_none() {
                if let Err(e) = self.ensure(false) {
                    (self.log)(&format!("PACT: enrollment: {e}"));
                    std::thread::sleep(RENEW_RETRY);
                }
                continue;
            }
            match self.renew() {
                Ok(r) => (self.log)(&format!(
                    "PACT: certificate renewed: {} (expires {})",
                    r.cert_serial,
                    r.cert_expires_at.map(|t| t.seconds).unwrap_or_default()
                )),
                Err(e) if Self::is_refusal(&e) => {
                    if let Err(e) = IdentitySource::refused(&*self, &format!("renewal: {e}")) {
                        (self.log)(&format!("PACT: enrollment: {e}"));
                    }
                }
                Err(e) => {
                    (self.log)(&format!("PACT: renewal failed ({e}); retrying in {} s", RENEW_RETRY.as_secs()));
                    std::thread::sleep(RENEW_RETRY);
                }
            }
        }
    }
}

/// The API server's certificate, read again whenever the certificate file changes (renewal,
/// re-enrollment), so the server never presents an expired one.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Option<(SystemTime, Arc<rustls::sign::CertifiedKey>)>>,
}

impl ReloadingCert {
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<ReloadingCert, String> {
        let r = ReloadingCert { cert, key, current: Mutex::new(None) };
        r.load().ok_or_else(|| format!("{}: no usable certificate and key", r.cert.display()))?;
        Ok(r)
    }

    fn load(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mtime = std::fs::metadata(&self.cert).and_then(|m| m.modified()).ok()?;
        let mut cur = self.current.lock().ok()?;
        if let Some((t, k)) = cur.as_ref() {
            if *t == mtime {
                return Some(k.clone());
            }
        }
        let certs = pact_proto::tls::load_certs(&self.cert).ok()?;
        let key = pact_proto::tls::load_key(&self.key).ok()?;
        let signer = pact_proto::tls::provider().key_provider.load_private_key(key).ok()?;
        let ck = Arc::new(rustls::sign::CertifiedKey::new(certs, signer));
        // A key that does not match the certificate (mid-rewrite) keeps the previous pair.
        if ck.keys_match().is_err() {
            return cur.as_ref().map(|(_, k)| k.clone());
        }
        *cur = Some((mtime, ck.clone()));
        Some(ck)
    }

    /// A server configuration presenting the current certificate.
    pub fn server_config(self: Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(pact_proto::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self);
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.load()
    }
}
