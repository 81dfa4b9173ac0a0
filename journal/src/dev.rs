//! `--dev`: throw-away credentials so a new user can run everything locally with one command.
//! Writes into `<data_dir>/dev/`: `hmac.secret` (the token signing secret), `admin.token`
//! (a pact-platform-admin token for the CLI, valid 30 days), `ca.crt` (a copy of the CA) and
//! `cli.toml` (endpoint, token path and CA for the CLI, which looks for `./.pact-dev/dev/`).
//! Not for production: anyone who can read the data dir can mint admin tokens.

use crate::pki::write_private;
use pact_proto::auth::{HmacVerifier, DEFAULT_AUDIENCE, DEV_ISSUER};
use std::fs;
use std::path::{Path, PathBuf};

pub const DEV_TOKEN_VALIDITY_SECS: u64 = 30 * 24 * 3600;
pub const DEV_ADMIN: &str = "dev-admin";

pub struct DevCredentials {
    pub dir: PathBuf,
    pub secret: Vec<u8>,
}

/// `configured_secret`: the HMAC secret the journal was given (`PACT_OIDC_HMAC_SECRET` or
/// `[policy.iam] hmac_secret`). When there is one, the admin token is signed with it, so the
/// token `--dev` hands out is one this journal accepts; otherwise a secret is made and kept.
pub fn ensure_dev(
    data_dir: &Path,
    ca_cert: &Path,
    endpoint: &str,
    issuer: Option<&str>,
    audience: Option<&str>,
    configured_secret: Option<&[u8]>,
) -> Result<DevCredentials, String> {
    let dir = data_dir.join("dev");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let secret_path = dir.join("hmac.secret");
    let secret = match (configured_secret, fs::read(&secret_path)) {
        (Some(s), _) => s.to_vec(),
        (None, Ok(s)) if s.len() >= 32 => s,
        _ => {
            let mut s = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s)
                .map_err(|_| "no system randomness".to_string())?;
            let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&secret_path, hex.as_bytes()).map_err(|e| format!("{}: {e}", secret_path.display()))?;
            hex.into_bytes()
        }
    };
    let issuer = issuer.unwrap_or(DEV_ISSUER).to_string();
    let audience = audience.unwrap_or(DEFAULT_AUDIENCE).to_string();
    let token = HmacVerifier::new(&secret, &issuer, &audience).mint(
        DEV_ADMIN,
        "pact-platform-admin",
        DEV_TOKEN_VALIDITY_SECS,
    )?;
    let token_path = dir.join("admin.token");
    write_private(&token_path, token.as_bytes()).map_err(|e| format!("{}: {e}", token_path.display()))?;
    let dev_ca = dir.join("ca.crt");
    fs::copy(ca_cert, &dev_ca).map_err(|e| format!("{}: {e}", dev_ca.display()))?;
    let abs = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let cli = format!(
        "# Written by `pact-journal --dev`. Not for production.\nendpoint = \"{endpoint}\"\ntoken_path = \"{}\"\nca_cert = \"{}\"\n",
        abs(&token_path).display(),
        abs(&dev_ca).display()
    );
    fs::write(dir.join("cli.toml"), cli).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(DevCredentials { dir, secret })
}
