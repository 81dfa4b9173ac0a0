//! The journal's TLS material. Until enrollment and mutual TLS arrive (security-plane
//! issue), the journal keeps a CA and a server certificate under `<data_dir>/tls/`, made on
//! first start and reused afterwards, so clients can pin `ca.crt`. `--dev` also writes a
//! development HMAC secret and an admin token (see `dev`).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Writes a file readable only by its owner (keys, secrets, tokens).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Makes (once) or reuses the CA and server certificate for this journal.
pub fn ensure_tls(data_dir: &Path, hostnames: &[String]) -> Result<TlsFiles, String> {
    let dir = data_dir.join("tls");
    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    if files.ca_cert.exists() && files.server_cert.exists() && files.server_key.exists() {
        return Ok(files);
    }
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| format!("generating TLS material: {e}");

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "pact journal CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hostnames {
        if !h.is_empty() && !names.contains(h) && h != "0.0.0.0" && h != "::" {
            names.push(h.clone());
        }
    }
    let server_key = KeyPair::generate().map_err(err)?;
    let mut sp = CertificateParams::new(names).map_err(err)?;
    sp.distinguished_name.push(DnType::CommonName, "pact-journal");
    let server_cert = sp.signed_by(&server_key, &ca_cert, &ca_key).map_err(err)?;

    let w = |p: &Path, d: &[u8]| write_private(p, d).map_err(|e| format!("{}: {e}", p.display()));
    w(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    w(&files.server_key, server_key.serialize_pem().as_bytes())?;
    fs::write(&files.server_cert, server_cert.pem()).map_err(|e| format!("{}: {e}", files.server_cert.display()))?;
    fs::write(&files.ca_cert, ca_cert.pem()).map_err(|e| format!("{}: {e}", files.ca_cert.display()))?;
    Ok(files)
}

/// This machine's hostname (for the server certificate's names).
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}
