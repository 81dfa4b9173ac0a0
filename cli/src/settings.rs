//! Where the CLI's endpoint, token, CA, default vCluster, output format and OpenID provider
//! come from. Precedence: command-line flag > environment variable > `~/.config/pact/cli.toml`
//! (or `$PACT_CLI_CONFIG`) > the `--dev` profile (`$PACT_DEV_DIR/cli.toml`, else
//! `./.pact-dev/dev/cli.toml`) > default.
//!
//! | setting     | flag            | environment           | cli.toml                   | default              |
//! |-------------|-----------------|-----------------------|----------------------------|----------------------|
//! | endpoint    | `--endpoint`    | `PACT_ENDPOINT`       | `endpoint`                 | the token cache's `default_server` (last `pact login`), else `localhost:9443` |
//! | token       | `--token`       | `PACT_TOKEN`          | `token`, then `token_path` | see below            |
//! | CA          | `--ca-cert`     | `PACT_TLS_CA`         | `ca_cert`                  | `/etc/pact/ca.crt`   |
//! | vCluster    | `--vcluster`    | `PACT_VCLUSTER`       | `default_vcluster`         | `default`            |
//! | output      | `--output`      | `PACT_OUTPUT`         | `output_format`            | `text`               |
//! | timeout     |                 |                       | `timeout_seconds`          | 30                   |
//! | IdP issuer  | `--issuer` (login) | `PACT_OIDC_ISSUER` | `oidc_issuer`              | none: `pact login` needs one |
//! | client id   | `--client-id` (login) | `PACT_CLIENT_ID` | `client_id`               | `pact`               |
//! | resource    |                 | `PACT_OIDC_RESOURCE`  | `oidc_resource`            | none (no `resource=` sent) |
//! | scope       |                 | `PACT_OIDC_SCOPE`     | `oidc_scope`               | `openid offline_access` |
//! | IdP CA      |                 | `PACT_OIDC_CA_BUNDLE` | `oidc_ca_bundle`           | the system bundle    |
//!
//! The token, in order: `--token`, `PACT_TOKEN`, cli.toml's `token` then `token_path`, the
//! token cache entry for the endpoint (`~/.config/pact/tokens.json`, written by `pact login`,
//! refreshed silently when it expires within a minute: see `tokens.rs`),
//! `~/.config/pact/token` if present, then the dev profile's `token`/`token_path`. The
//! service account's secret is read from `PACT_CLIENT_SECRET` only, never from a file.

use crate::output::Format;
use pact_proto::tomlcfg::{ConfigError, TomlFile};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Default, Debug, Clone)]
pub struct GlobalFlags {
    pub endpoint: Option<String>,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub vcluster: Option<String>,
    pub output: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: String,
    pub token: Option<String>,
    pub ca_cert: PathBuf,
    pub vcluster: String,
    pub output: Format,
    pub timeout: Duration,
    /// Whether `token` came from `--token`, `PACT_TOKEN` or cli.toml: then the token cache is
    /// not consulted. Otherwise `token` holds the fallback (`~/.config/pact/token` or the dev
    /// profile's), which a cache entry for the endpoint replaces.
    pub token_explicit: bool,
    /// `~/.config/pact/tokens.json` (None without HOME).
    pub token_cache: Option<PathBuf>,
    pub oidc: Oidc,
}

/// The OpenID provider `pact login` talks to, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Oidc {
    pub issuer: Option<String>,
    pub client_id: String,
    /// Sent as `resource=` (RFC 8707) when set.
    pub resource: Option<String>,
    pub scope: String,
    /// CA bundle for an https IdP (None: the system bundle).
    pub ca_bundle: Option<PathBuf>,
}

pub const DEFAULT_CLIENT_ID: &str = "pact";
pub const DEFAULT_SCOPE: &str = "openid offline_access";

#[derive(Default, Debug, Clone)]
struct FileLayer {
    endpoint: Option<String>,
    token: Option<String>,
    token_path: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
    vcluster: Option<String>,
    output: Option<String>,
    timeout: Option<u64>,
    oidc_issuer: Option<String>,
    client_id: Option<String>,
    oidc_resource: Option<String>,
    oidc_scope: Option<String>,
    oidc_ca_bundle: Option<PathBuf>,
}

const CLI_KEYS: &[&str] = &[
    "endpoint",
    "token",
    "token_path",
    "ca_cert",
    "default_vcluster",
    "output_format",
    "timeout_seconds",
    "oidc_issuer",
    "client_id",
    "oidc_resource",
    "oidc_scope",
    "oidc_ca_bundle",
];

fn read_layer(path: &Path) -> Result<FileLayer, ConfigError> {
    let f = TomlFile::load(path)?;
    let root = f.root();
    root.check_keys(CLI_KEYS)?;
    Ok(FileLayer {
        endpoint: root.string("endpoint")?,
        token: root.string("token")?,
        token_path: root.string("token_path")?.map(PathBuf::from),
        ca_cert: root.string("ca_cert")?.map(PathBuf::from),
        vcluster: root.string("default_vcluster")?,
        output: root.one_of("output_format", &["text", "json"])?.map(str::to_string),
        timeout: root.u64("timeout_seconds", 1..=3600)?,
        oidc_issuer: root.string("oidc_issuer")?,
        client_id: root.string("client_id")?,
        oidc_resource: root.string("oidc_resource")?,
        oidc_scope: root.string("oidc_scope")?,
        oidc_ca_bundle: root.string("oidc_ca_bundle")?.map(PathBuf::from),
    })
}

fn read_token_file(p: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(t.trim().to_string())
}

pub fn resolve(flags: &GlobalFlags, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, String> {
    let home_config = || env("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".config/pact"));
    let token_cache = home_config().map(|d| d.join(crate::tokens::FILE_NAME));
    let user_file = env("PACT_CLI_CONFIG").map(PathBuf::from).or_else(|| home_config().map(|d| d.join("cli.toml")));
    let user = match user_file {
        Some(p) if p.exists() => read_layer(&p).map_err(|e| e.to_string())?,
        _ => FileLayer::default(),
    };
    let dev_file = env("PACT_DEV_DIR")
        .map(|d| PathBuf::from(d).join("cli.toml"))
        .unwrap_or_else(|| PathBuf::from(".pact-dev/dev/cli.toml"));
    let dev = if dev_file.exists() { read_layer(&dev_file).map_err(|e| e.to_string())? } else { FileLayer::default() };

    let endpoint = flags
        .endpoint
        .clone()
        .or_else(|| env("PACT_ENDPOINT"))
        .or(user.endpoint.clone())
        .or(dev.endpoint.clone())
        .or_else(|| token_cache.as_deref().and_then(crate::tokens::default_server))
        .unwrap_or_else(|| format!("localhost:{}", pact_proto::ports::JOURNAL_CLIENT));
    if endpoint.starts_with("http://") {
        return Err(format!("endpoint {endpoint}: pact speaks TLS only; use host:port or https://host:port"));
    }
    // An empty PACT_TOKEN is an unset one.
    let env_token = env("PACT_TOKEN").filter(|t| !t.is_empty());
    let token_explicit =
        flags.token.is_some() || env_token.is_some() || user.token.is_some() || user.token_path.is_some();
    let token = match (&flags.token, env_token, &user.token, &user.token_path) {
        (Some(t), _, _, _) => Some(t.clone()),
        (None, Some(t), _, _) => Some(t),
        (None, None, Some(t), _) => Some(t.clone()),
        (None, None, None, Some(p)) => Some(read_token_file(p)?),
        _ => {
            let default = home_config().map(|d| d.join("token")).filter(|p| p.exists());
            match (default, &dev.token, &dev.token_path) {
                (Some(p), _, _) => Some(read_token_file(&p)?),
                (None, Some(t), _) => Some(t.clone()),
                (None, None, Some(p)) => Some(read_token_file(p)?),
                _ => None,
            }
        }
    };
    let ca_cert = flags
        .ca_cert
        .clone()
        .or_else(|| env("PACT_TLS_CA").map(PathBuf::from))
        .or(user.ca_cert.clone())
        .or(dev.ca_cert.clone())
        .unwrap_or_else(|| PathBuf::from("/etc/pact/ca.crt"));
    let vcluster = flags
        .vcluster
        .clone()
        .or_else(|| env("PACT_VCLUSTER"))
        .or(user.vcluster.clone())
        .or(dev.vcluster.clone())
        .unwrap_or_else(|| "default".into());
    let out = flags
        .output
        .clone()
        .or_else(|| env("PACT_OUTPUT"))
        .or(user.output.clone())
        .or(dev.output.clone())
        .unwrap_or_else(|| "text".into());
    let output = Format::parse(&out).ok_or_else(|| format!("output format {out:?}: expected text or json"))?;
    let timeout = Duration::from_secs(user.timeout.or(dev.timeout).unwrap_or(30));
    let nonempty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let oidc = Oidc {
        issuer: nonempty(env("PACT_OIDC_ISSUER").or(user.oidc_issuer.clone()).or(dev.oidc_issuer.clone())),
        client_id: nonempty(env("PACT_CLIENT_ID").or(user.client_id.clone()).or(dev.client_id.clone()))
            .unwrap_or_else(|| DEFAULT_CLIENT_ID.into()),
        resource: nonempty(env("PACT_OIDC_RESOURCE").or(user.oidc_resource.clone()).or(dev.oidc_resource.clone())),
        scope: nonempty(env("PACT_OIDC_SCOPE").or(user.oidc_scope.clone()).or(dev.oidc_scope.clone()))
            .unwrap_or_else(|| DEFAULT_SCOPE.into()),
        ca_bundle: nonempty(env("PACT_OIDC_CA_BUNDLE"))
            .map(PathBuf::from)
            .or(user.oidc_ca_bundle.clone())
            .or(dev.oidc_ca_bundle.clone()),
    };
    Ok(Settings {
        endpoint,
        token: token.filter(|t| !t.is_empty()),
        ca_cert,
        vcluster,
        output,
        timeout,
        token_explicit,
        token_cache,
        oidc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_env_beat_defaults() {
        let env = |k: &str| match k {
            "PACT_ENDPOINT" => Some("env-host:1".to_string()),
            "PACT_VCLUSTER" => Some("env-vc".to_string()),
            "PACT_CLI_CONFIG" => Some("/nonexistent/cli.toml".to_string()),
            "PACT_DEV_DIR" => Some("/nonexistent".to_string()),
            _ => None,
        };
        let s = resolve(&GlobalFlags { endpoint: Some("flag-host:2".into()), ..Default::default() }, &env).unwrap();
        assert_eq!(s.endpoint, "flag-host:2");
        assert_eq!(s.vcluster, "env-vc");
        assert_eq!(s.output, Format::Text);
        assert!(resolve(&GlobalFlags { output: Some("yaml".into()), ..Default::default() }, &env).is_err());
    }

    #[test]
    fn file_layer_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("pact-cli-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("cli.toml");
        std::fs::write(&f, "endpoint = \"file-host:3\"\ntoken = \"tok\"\ndefault_vcluster = \"ml\"\n").unwrap();
        let fp = f.display().to_string();
        let env = move |k: &str| match k {
            "PACT_CLI_CONFIG" => Some(fp.clone()),
            "PACT_DEV_DIR" => Some("/nonexistent".to_string()),
            _ => None,
        };
        let s = resolve(&GlobalFlags::default(), &env).unwrap();
        assert_eq!((s.endpoint.as_str(), s.token.as_deref(), s.vcluster.as_str()), ("file-host:3", Some("tok"), "ml"));
        assert_eq!(s.oidc, Oidc { client_id: "pact".into(), scope: DEFAULT_SCOPE.into(), ..Default::default() });
        std::fs::write(
            &f,
            "oidc_issuer = \"https://idp.example/realms/hpc\"\nclient_id = \"pact-cli\"\noidc_resource = \"urn:pact\"\noidc_scope = \"openid\"\noidc_ca_bundle = \"/etc/pact/idp-ca.pem\"\n",
        )
        .unwrap();
        let s = resolve(&GlobalFlags::default(), &env).unwrap();
        assert_eq!(
            s.oidc,
            Oidc {
                issuer: Some("https://idp.example/realms/hpc".into()),
                client_id: "pact-cli".into(),
                resource: Some("urn:pact".into()),
                scope: "openid".into(),
                ca_bundle: Some("/etc/pact/idp-ca.pem".into()),
            }
        );
        // The environment beats the file.
        let fp = f.display().to_string();
        let env2 = move |k: &str| match k {
            "PACT_CLI_CONFIG" => Some(fp.clone()),
            "PACT_DEV_DIR" => Some("/nonexistent".to_string()),
            "PACT_OIDC_ISSUER" => Some("http://127.0.0.1:8600".to_string()),
            "PACT_CLIENT_ID" => Some("env-client".to_string()),
            _ => None,
        };
        let s = resolve(&GlobalFlags::default(), &env2).unwrap();
        assert_eq!(
            (s.oidc.issuer.as_deref(), s.oidc.client_id.as_str()),
            (Some("http://127.0.0.1:8600"), "env-client")
        );
        assert_eq!(s.oidc.resource.as_deref(), Some("urn:pact"));
        std::fs::write(&f, "endpont = \"x\"\n").unwrap();
        let e = resolve(&GlobalFlags::default(), &env).unwrap_err();
        assert!(e.contains("endpoint"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
