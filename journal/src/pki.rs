//! The journal's TLS material, under `<data_dir>/tls/`.
//!
//! - The CA: the cluster's, when one is configured (`[journal.enrollment] ca_cert`/`ca_key`,
//!   `PACT_CA_CERT`/`PACT_CA_KEY`, or `/etc/pact/ca/ca.crt` + `ca.key` as `setup-ca.sh` lays them
//!   out); otherwise one this journal makes on first start and keeps (enough for one node).
//! - The node certificate: made at every start, signed by that CA, for server and client use.
//!   Its names: localhost, 127.0.0.1, ::1, the hostname, the listen address, and
//!   `journal-<id>.raft.pact`, the name the Raft port checks (a peer must present the
//!   certificate of the journal id it claims to be; no agent certificate carries that name).

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The CA's private key (this journal's own, or the configured cluster CA's).
    pub ca_key: PathBuf,
    /// Whether the CA is the cluster's (configured) rather than one this journal made.
    pub shared_ca: bool,
}

/// The name a journal's certificate carries for its Raft identity.
pub fn raft_name(node_id: u64) -> String {
    format!("journal-{node_id}.raft.pact")
}

/// Writes a file readable only by its owner (keys, secrets, tokens).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

fn read(p: &Path) -> Result<String, String> {
    fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Makes or reuses the CA and makes this start's node certificate.
pub fn ensure_tls(
    data_dir: &Path,
    node_id: u64,
    hostnames: &[String],
    cluster_ca: Option<(&Path, &Path)>,
) -> Result<TlsFiles, String> {
    let dir = data_dir.join("tls");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| format!("generating TLS material: {e}");
    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        ca_key: cluster_ca.map_or_else(|| dir.join("ca.key"), |(_, k)| k.to_path_buf()),
        shared_ca: cluster_ca.is_some(),
    };
    let (ca_pem, ca_key_pem) = match cluster_ca {
        Some((cert, key)) => (read(cert)?, read(key)?),
        None => {
            let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
            if !(cert.exists() && key.exists()) {
                let ca_key = KeyPair::generate().map_err(err)?;
                let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
                ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                ca.distinguished_name.push(DnType::CommonName, "pact journal CA");
                ca.key_usages =
                    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
                let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
                write_private(&key, ca_key.serialize_pem().as_bytes())
                    .map_err(|e| format!("{}: {e}", key.display()))?;
                fs::write(&cert, ca_cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
            }
            (read(&cert)?, read(&key)?)
        }
    };
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into(), raft_name(node_id)];
    for h in hostnames {
        if !h.is_empty() && !names.contains(h) && h != "0.0.0.0" && h != "::" {
            names.push(h.clone());
        }
    }
    let (cert_pem, key_pem) = issue(&ca_pem, &ca_key_pem, &format!("pact-journal-{node_id}"), names)?;
    write_private(&files.server_key, key_pem.as_bytes()).map_err(|e| format!("{}: {e}", files.server_key.display()))?;
    fs::write(&files.server_cert, cert_pem).map_err(|e| format!("{}: {e}", files.server_cert.display()))?;
    if cluster_ca.is_some() {
        fs::write(&files.ca_cert, &ca_pem).map_err(|e| format!("{}: {e}", files.ca_cert.display()))?;
    }
    Ok(files)
}

/// A new key and a certificate for it, signed by the CA, for server and client use:
/// (certificate PEM, key PEM).
pub fn issue(
    ca_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
    names: Vec<String>,
) -> Result<(String, String), String> {
    let err = |e: rcgen::Error| format!("generating TLS material: {e}");
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| format!("CA key: {e}"))?;
    let ca_params = CertificateParams::from_ca_cert_pem(ca_pem).map_err(|e| format!("CA certificate: {e}"))?;
    // Re-signing the CA's own parameters gives an issuer with the CA's name and key; leaf
    // certificates signed with it verify against the original CA certificate.
    let issuer = ca_params.self_signed(&ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut sp = CertificateParams::new(names).map_err(err)?;
    sp.distinguished_name.push(DnType::CommonName, common_name);
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = sp.signed_by(&key, &issuer, &ca_key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// This machine's hostname (for the node certificate's names).
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}
