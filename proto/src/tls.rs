//! TLS configuration shared by every binary: rustls on the ring provider, TLS 1.3 and 1.2,
//! certificates and keys from PEM files.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// ring, with TLS 1.3's AES-128-GCM/SHA-256 preferred over AES-256-GCM/SHA-384 (rustls's
/// default first choice): both are standard TLS 1.3 suites, and on CPUs with SHA extensions
/// the SHA-256 key schedule and AES-128 cost a boot storm's handshakes noticeably less.
/// Every pact client and server uses this provider, so this is the suite they agree on.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    let first = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    p.cipher_suites.sort_by_key(|s| s.suite() != first);
    Arc::new(p)
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("{}: cannot read certificates: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| TlsError(format!("{}: bad certificate PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{}: no certificate found", path.display())));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError(format!("{}: cannot read private key: {e}", path.display())))
}

pub fn root_store(ca_pem: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca_pem)? {
        roots.add(c).map_err(|e| TlsError(format!("{}: unusable CA certificate: {e}", ca_pem.display())))?;
    }
    Ok(roots)
}

/// Who must show a certificate to a server.
enum ClientCerts<'a> {
    None,
    /// A certificate chaining to this CA bundle, when one is presented.
    Optional(&'a Path),
    /// A certificate chaining to this CA bundle, always.
    Required(&'a Path),
}

fn server(cert: &Path, key: &Path, clients: ClientCerts<'_>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match clients {
        ClientCerts::None => builder.with_no_client_auth(),
        ClientCerts::Optional(ca) | ClientCerts::Required(ca) => {
            let roots = Arc::new(root_store(ca)?);
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider());
            let v = if matches!(clients, ClientCerts::Optional(_)) { v.allow_unauthenticated() } else { v };
            builder.with_client_cert_verifier(
                v.build().map_err(|e| TlsError(format!("{}: client verifier: {e}", ca.display())))?,
            )
        }
    };
    let mut cfg = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError(format!("{}: certificate and key do not form a usable pair: {e}", cert.display())))?;
    // No TLS 1.3 session tickets: pact's clients do not resume (a CLI process connects once; a
    // booting node opens one connection), so each ticket would only cost randomness, a cache
    // insert, an encrypted record and a send per connection, times 10,000 in a boot storm.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Server side, a client certificate optional: when one is presented it must chain to
/// `ca_pem` (the journal's client port: agents present their enrolled certificates, people
/// and tools authenticate with bearer tokens).
pub fn optional_mtls_server_config(
    cert: &Path,
    key: &Path,
    ca_pem: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server(cert, key, ClientCerts::Optional(ca_pem))
}

/// Server side, no client certificate (the agent's API on 9445: callers authenticate with
/// bearer tokens).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server(cert, key, ClientCerts::None)
}

/// Client side, trusting only the given CA bundle.
pub fn client_config(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = root_store(ca_pem)?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Mutual TLS, server side: clients must present a certificate from the CA bundle.
pub fn mtls_server_config(cert: &Path, key: &Path, ca_pem: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server(cert, key, ClientCerts::Required(ca_pem))
}

/// Mutual TLS, client side: trusts the CA bundle and presents our certificate.
pub fn mtls_client_config(cert: &Path, key: &Path, ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(root_store(ca_pem)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError(format!("{}: certificate and key do not form a usable pair: {e}", cert.display())))?;
    Ok(Arc::new(cfg))
}

/// The name to check the server certificate against, from "host:port" or "https://host:port".
pub fn server_name_for(endpoint: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host_of(endpoint);
    ServerName::try_from(host.to_string()).map_err(|e| TlsError(format!("{endpoint}: not a valid server name: {e}")))
}

/// "https://host:9443/x" → "host"; "[::1]:9443" → "::1".
pub fn host_of(endpoint: &str) -> &str {
    let s = endpoint.split("://").nth(1).unwrap_or(endpoint);
    let s = s.split('/').next().unwrap_or(s);
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_extracted() {
        assert_eq!(host_of("localhost:9443"), "localhost");
        assert_eq!(host_of("https://mgmt-1:9443/"), "mgmt-1");
        assert_eq!(host_of("[::1]:9443"), "::1");
        assert_eq!(host_of("journal-1.mgmt"), "journal-1.mgmt");
    }

    #[test]
    fn missing_files_name_the_path() {
        let e = load_certs(Path::new("/nonexistent/ca.crt")).unwrap_err();
        assert!(e.0.contains("/nonexistent/ca.crt"), "{e}");
    }
}
