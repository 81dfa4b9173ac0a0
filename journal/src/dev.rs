//! `--dev`: throw-away credentials so a new user can run everything locally with one command.
//! Writes into `<data_dir>/dev/`: `hmac.secret` (the token signing secret), `admin.token`
//! (a pact-platform-admin token for the CLI, valid 30 days), `ca.crt` (a copy of the CA) and
//! `cli.toml` (endpoint, token path and CA for the CLI, which looks for `./.pact-dev/dev/`),
//! and what a local agent needs to run beside it as node [`DEV_NODE`]: `agent.toml`,
//! `agent.crt`/`agent.key` (its API's certificate, signed by the journal's CA, for localhost)
//! and `agent.token` (a pact-service-agent token for the boot stream).
//! Not for production: anyone who can read the data dir can mint admin tokens.

use crate::pki::{self, write_private, TlsFiles};
use pact_proto::auth::{HmacVerifier, DEFAULT_AUDIENCE, DEV_ISSUER};
use std::fs;
use std::path::{Path, PathBuf};

pub const DEV_TOKEN_VALIDITY_SECS: u64 = 30 * 24 * 3600;
pub const DEV_ADMIN: &str = "dev-admin";
/// The node id of the agent that `images/dev/start.sh` runs beside a `--dev` journal.
pub const DEV_NODE: &str = "dev-node";
/// Where that agent's API listens (the agent port, on loopback only).
pub const DEV_AGENT_LISTEN: &str = "127.0.0.1:9445";

pub struct DevCredentials {
    pub dir: PathBuf,
    pub secret: Vec<u8>,
}

/// `configured_secret`: the HMAC secret the journal was given (`PACT_OIDC_HMAC_SECRET` or
/// `[policy.iam] hmac_secret`). When there is one, the admin token is signed with it, so the
/// token `--dev` hands out is one this journal accepts; otherwise a secret is made and kept.
pub fn ensure_dev(
    data_dir: &Path,
    tls: &TlsFiles,
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
    fs::copy(&tls.ca_cert, &dev_ca).map_err(|e| format!("{}: {e}", dev_ca.display()))?;
    let abs = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let cli = format!(
        "# Written by `pact-journal --dev`. Not for production.\nendpoint = \"{endpoint}\"\ntoken_path = \"{}\"\nca_cert = \"{}\"\n",
        abs(&token_path).display(),
        abs(&dev_ca).display()
    );
    fs::write(dir.join("cli.toml"), cli).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_agent_files(&dir, tls, endpoint, &issuer, &audience, &secret)?;
    Ok(DevCredentials { dir, secret })
}

/// The local agent's certificate, token and agent.toml (rewritten at every start, so they
/// follow the journal's CA, secret and endpoint).
fn write_agent_files(
    dir: &Path,
    tls: &TlsFiles,
    endpoint: &str,
    issuer: &str,
    audience: &str,
    secret: &[u8],
) -> Result<(), String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let read = |p: &Path| fs::read_to_string(p).map_err(|e| io(p, e));
    let names = ["localhost", "127.0.0.1", "::1", DEV_NODE].map(String::from).to_vec();
    let (cert, key) = pki::issue(&read(&tls.ca_cert)?, &read(&tls.ca_key)?, &format!("pact-agent-{DEV_NODE}"), names)?;
    let (cert_path, key_path, token_path) = (dir.join("agent.crt"), dir.join("agent.key"), dir.join("agent.token"));
    fs::write(&cert_path, cert).map_err(|e| io(&cert_path, e))?;
    write_private(&key_path, key.as_bytes()).map_err(|e| io(&key_path, e))?;
    let token =
        HmacVerifier::new(secret, issuer, audience).mint(DEV_NODE, "pact-service-agent", DEV_TOKEN_VALIDITY_SECS)?;
    write_private(&token_path, token.as_bytes()).map_err(|e| io(&token_path, e))?;
    let abs = |p: &Path| toml_string(&fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string());
    let agent_dir = dir.join("agent");
    fs::create_dir_all(&agent_dir).map_err(|e| io(&agent_dir, e))?;
    let agent_abs = fs::canonicalize(&agent_dir).map_err(|e| io(&agent_dir, e))?;
    let text = format!(
        "# Written by `pact-journal --dev` for the local agent of images/dev/start.sh. Not for production.\n\
         # Node {DEV_NODE}: what `pact node assign {DEV_NODE} --vcluster V` and `pact apply` declare for it is\n\
         # applied to THIS machine (as root for real; as another user, what needs root is reported failed).\n\
         [agent]\n\
         node_id = \"{DEV_NODE}\"\n\
         # Until an assignment says otherwise: an empty overlay, so the agent is ready at once.\n\
         vcluster = \"dev\"\n\
         enforcement_mode = \"observe\"\n\
         cache_dir = {cache}\n\
         run_dir = {run}\n\n\
         [agent.supervisor]\n\
         backend = \"pact\"\n\n\
         [agent.journal]\n\
         endpoints = [{endpoint}]\n\
         tls_cert = {cert}\n\
         tls_key = {key}\n\
         tls_ca = {ca}\n\
         token_path = {token}\n\n\
         [agent.shell]\n\
         listen = \"{DEV_AGENT_LISTEN}\"\n\n\
         [agent.shell.auth]\n\
         issuer = {issuer}\n\
         audience = {audience}\n\
         hmac_secret = {secret}\n",
        cache = toml_string(&agent_abs.join("cache").display().to_string()),
        run = toml_string(&agent_abs.join("run").display().to_string()),
        endpoint = toml_string(endpoint),
        cert = abs(&cert_path),
        key = abs(&key_path),
        ca = abs(&dir.join("ca.crt")),
        token = abs(&token_path),
        issuer = toml_string(issuer),
        audience = toml_string(audience),
        secret = toml_string(&String::from_utf8_lossy(secret)),
    );
    let path = dir.join("agent.toml");
    write_private(&path, text.as_bytes()).map_err(|e| io(&path, e))
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
