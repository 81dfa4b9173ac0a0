//! Where the CLI's endpoint, token, CA, default vCluster and output format come from.
//! Precedence: command-line flag > environment variable > `~/.config/pact/cli.toml` >
//! the `--dev` profile (`$PACT_DEV_DIR/cli.toml`, else `./.pact-dev/dev/cli.toml`) > default.
//!
//! | setting   | flag         | environment      | cli.toml                    | default              |
//! |-----------|--------------|------------------|-----------------------------|----------------------|
//! | endpoint  | `--endpoint` | `PACT_ENDPOINT`  | `endpoint`                  | `localhost:9443`     |
//! | token     | `--token`    | `PACT_TOKEN`     | `token`, then `token_path`  | `~/.config/pact/token` if present |
//! | CA        | `--ca-cert`  | `PACT_TLS_CA`    | `ca_cert`                   | `/etc/pact/ca.crt`   |
//! | vCluster  | `--vcluster` | `PACT_VCLUSTER`  | `default_vcluster`          | `default`            |
//! | output    | `--output`   | `PACT_OUTPUT`    | `output_format`             | `text`               |
//! | timeout   |              |                  | `timeout_seconds`           | 30                   |

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
}

#[derive(Default, Debug, Clone)]
struct FileLayer {
    endpoint: Option<String>,
    token: Option<String>,
    token_path: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
    vcluster: Option<String>,
    output: Option<String>,
    timeout: Option<u64>,
}

const CLI_KEYS: &[&str] =
    &["endpoint", "token", "token_path", "ca_cert", "default_vcluster", "output_format", "timeout_seconds"];

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
    })
}

fn home_config() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/pact"))
}

fn read_token_file(p: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(t.trim().to_string())
}

pub fn resolve(flags: &GlobalFlags, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, String> {
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
        .unwrap_or_else(|| format!("localhost:{}", pact_proto::ports::JOURNAL_CLIENT));
    if endpoint.starts_with("http://") {
        return Err(format!("endpoint {endpoint}: pact speaks TLS only; use host:port or https://host:port"));
    }
    let token = match (&flags.token, env("PACT_TOKEN"), &user.token, &user.token_path) {
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
    Ok(Settings { endpoint, token: token.filter(|t| !t.is_empty()), ca_cert, vcluster, output, timeout })
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
        std::fs::write(&f, "endpont = \"x\"\n").unwrap();
        let e = resolve(&GlobalFlags::default(), &env).unwrap_err();
        assert!(e.contains("endpoint"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
