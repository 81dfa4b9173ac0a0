//! The token cache `pact login` writes and every journal-backed command reads:
//! `~/.config/pact/tokens.json`, keyed by the journal endpoint the tokens are for.
//!
//! ```json
//! {"version":1,"default_server":"journal.example:9443",
//!  "servers":{"journal.example:9443":{"access_token":"eyJ...","refresh_token":"...",
//!    "expires_at":1767225600,"scopes":["openid","offline_access"],
//!    "idp_issuer":"https://idp.example/realms/hpc","client_id":"pact"}}}
//! ```
//!
//! - `expires_at`: Unix seconds, 0 when the IdP said nothing about it. `refresh_token` is left
//!   out when there is none (client credentials); `default_server` when no login is current.
//!   The key is the endpoint as given (`--endpoint`, ...) without `https://` or a final `/`.
//! - Written atomically (a temp file in the same directory, fsync, rename) with mode 0600; the
//!   directory is created with mode 0700.
//! - Fail closed: a cache that cannot be read, does not parse, has another version, or that
//!   group or others may read or write is refused (exit 2, naming the file and `pact login`),
//!   never silently skipped: `pact login` rewrites it, `pact logout` removes the entry.
//! - Silent refresh: an access token that expires within [`REFRESH_MARGIN_SECS`] is refreshed
//!   with its refresh token before the command runs, and the cache is updated; when that is not
//!   possible, the command fails (exit 2) and says to run `pact login`.

use crate::settings::Settings;
use crate::{Failure, EXIT_AUTH, EXIT_ERROR};
use nanoserde::{DeJson as _, SerJson as _};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

pub const FILE_NAME: &str = "tokens.json";
pub const VERSION: u32 = 1;
/// A cached access token that expires within this many seconds is refreshed first.
pub const REFRESH_MARGIN_SECS: u64 = 60;

/// nanoserde's `DeJson` derive expands `Option` fields into code that clippy's `question_mark`
/// lint flags; the allow is kept to this module.
mod json {
    #![allow(clippy::question_mark)]
    use nanoserde::{DeJson, SerJson};
    use std::collections::BTreeMap;

    #[derive(DeJson, SerJson, Clone, Debug, Default, PartialEq, Eq)]
    pub struct Entry {
        pub access_token: String,
        pub refresh_token: Option<String>,
        pub expires_at: u64,
        pub scopes: Vec<String>,
        pub idp_issuer: String,
        pub client_id: String,
    }

    #[derive(DeJson, SerJson, Clone, Debug, Default, PartialEq, Eq)]
    pub struct Cache {
        pub version: u32,
        pub default_server: Option<String>,
        pub servers: BTreeMap<String, Entry>,
    }
}

pub use json::{Cache, Entry};

impl Cache {
    pub fn new() -> Cache {
        Cache { version: VERSION, default_server: None, servers: Default::default() }
    }
}

/// The cache key for a journal endpoint.
pub fn server_key(endpoint: &str) -> String {
    let e = endpoint.trim();
    let e = e.strip_prefix("https://").unwrap_or(e);
    e.trim_end_matches('/').to_string()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Why a cache cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// Group or others may read or write it (the mode).
    Exposed(u32),
    NotAFile,
    Unreadable(String),
    Corrupt(String),
}

impl Unusable {
    pub fn describe(&self, path: &Path) -> String {
        let p = path.display();
        match self {
            Unusable::Exposed(mode) => format!(
                "the token cache {p} has mode {mode:04o}: group or others may read it, so its tokens are not trusted"
            ),
            Unusable::NotAFile => format!("the token cache {p} is not a regular file"),
            Unusable::Unreadable(e) => format!("cannot read the token cache {p}: {e}"),
            Unusable::Corrupt(e) => format!("the token cache {p} is corrupt ({e})"),
        }
    }

    /// The exit-2 failure every journal-backed command gives for it.
    pub fn failure(&self, path: &Path) -> Failure {
        Failure::new(
            EXIT_AUTH,
            format!(
                "{}; refusing to use it: run `pact login` again (it rewrites the file with mode 0600), or pass --token",
                self.describe(path)
            ),
        )
    }
}

/// Reads the cache. `Ok(None)`: there is none. With `check_mode`, a file group or others may
/// read or write is [`Unusable::Exposed`].
pub fn load(path: &Path, check_mode: bool) -> Result<Option<Cache>, Unusable> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Unusable::Unreadable(e.to_string())),
    };
    // The mode of what was opened, not of what the path names a moment later.
    let meta = f.metadata().map_err(|e| Unusable::Unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(Unusable::NotAFile);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if check_mode && mode & 0o077 != 0 {
        return Err(Unusable::Exposed(mode));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).map_err(|e| Unusable::Unreadable(e.to_string()))?;
    parse(&text).map(Some)
}

pub fn parse(text: &str) -> Result<Cache, Unusable> {
    let c = Cache::deserialize_json(text).map_err(|e| Unusable::Corrupt(e.to_string()))?;
    if c.version != VERSION {
        return Err(Unusable::Corrupt(format!("version {}, this pact reads version {VERSION}", c.version)));
    }
    if let Some((k, _)) = c.servers.iter().find(|(_, e)| e.access_token.trim().is_empty()) {
        return Err(Unusable::Corrupt(format!("the entry for {k} has no access token")));
    }
    Ok(c)
}

/// The endpoint of the last `pact login`, when the cache is there and usable (the endpoint
/// default after flag, environment, cli.toml and the dev profile).
pub fn default_server(path: &Path) -> Option<String> {
    load(path, true).ok().flatten().and_then(|c| c.default_server).filter(|s| !s.is_empty())
}

/// Writes the cache atomically with mode 0600, creating its directory (mode 0700) if needed.
pub fn save(path: &Path, cache: &Cache) -> Result<(), Failure> {
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        Failure::new(EXIT_ERROR, format!("cannot write the token cache: {what} {}: {e}", p.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| fail("create", dir, e))?;
    }
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let open = || std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp);
    let mut f = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Left over by a pact of the same pid that was killed mid-write.
            std::fs::remove_file(&tmp).map_err(|e| fail("remove", &tmp, e))?;
            open().map_err(|e| fail("create", &tmp, e))?
        }
        Err(e) => return Err(fail("create", &tmp, e)),
    };
    let text = format!("{}\n", cache.serialize_json());
    let written = f
        .write_all(text.as_bytes())
        .and_then(|_| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
        .and_then(|_| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("write", path, e));
    }
    // The rename itself is durable once the directory is synced (best effort).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Puts the cache entry for the endpoint in `s.token`, unless a token was given explicitly
/// (`--token`, `PACT_TOKEN`, cli.toml). An entry that expires within a minute is refreshed
/// first. A cache that is there but unusable fails the command (exit 2).
pub fn resolve_token(s: &mut Settings) -> Result<(), Failure> {
    if s.token_explicit {
        return Ok(());
    }
    let Some(path) = s.token_cache.clone() else { return Ok(()) };
    let mut cache = match load(&path, true) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(()),
        Err(u) => return Err(u.failure(&path)),
    };
    let key = server_key(&s.endpoint);
    let Some(entry) = cache.servers.get(&key).cloned() else { return Ok(()) };
    let now = now_secs();
    if entry.expires_at == 0 || entry.expires_at > now + REFRESH_MARGIN_SECS {
        s.token = Some(entry.access_token);
        return Ok(());
    }
    let fresh = crate::oidc::refresh(s, &entry).map_err(|why| {
        let when = if entry.expires_at <= now {
            "has expired".to_string()
        } else {
            format!("expires in {} s", entry.expires_at - now)
        };
        Failure::new(
            EXIT_AUTH,
            format!("the cached token for {key} {when} and could not be refreshed: {why}; run `pact login` again"),
        )
    })?;
    cache.servers.insert(key.clone(), fresh.clone());
    if let Err(f) = save(&path, &cache) {
        // The fresh token works for this command; the next one may have to log in again.
        eprintln!("pact: warning: refreshed the token for {key} but could not cache it: {}", f.message);
    }
    s.token = Some(fresh.access_token);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pact-cli-tokens-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn entry(token: &str) -> Entry {
        Entry {
            access_token: token.into(),
            refresh_token: Some("r".into()),
            expires_at: 123,
            scopes: vec!["openid".into()],
            idp_issuer: "http://idp".into(),
            client_id: "pact".into(),
        }
    }

    #[test]
    fn keys() {
        assert_eq!(server_key("https://j.example:9443/"), "j.example:9443");
        assert_eq!(server_key(" 127.0.0.1:9443 "), "127.0.0.1:9443");
    }

    #[test]
    fn saved_atomically_private_and_read_back() {
        let d = temp("save");
        let p = d.join("pact").join(FILE_NAME);
        assert_eq!(load(&p, true), Ok(None));
        let mut c = Cache::new();
        c.default_server = Some("j:1".into());
        c.servers.insert("j:1".into(), entry("a\"b"));
        save(&p, &c).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&p), mode(p.parent().unwrap())), (0o600, 0o700));
        assert_eq!(load(&p, true), Ok(Some(c.clone())));
        assert_eq!(default_server(&p).as_deref(), Some("j:1"));
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("{\"version\":1,\"default_server\":\"j:1\",\"servers\":{\"j:1\":{"), "{text}");
        // Overwriting keeps the mode and leaves no temp file behind.
        c.servers.clear();
        save(&p, &c).unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);

        // Fail closed: exposed, corrupt, other versions, empty tokens, not a file.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load(&p, true), Err(Unusable::Exposed(0o644)));
        assert!(load(&p, false).is_ok());
        assert_eq!(default_server(&p), None);
        let f = Unusable::Exposed(0o644).failure(&p);
        assert_eq!(f.code, EXIT_AUTH);
        assert!(f.message.contains(&p.display().to_string()) && f.message.contains("pact login"), "{}", f.message);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        for bad in [
            "{",
            "",
            "[]",
            "{\"version\":2,\"servers\":{}}",
            "{\"version\":1,\"servers\":{\"a\":{\"access_token\":\"\",\"expires_at\":0,\"scopes\":[],\"idp_issuer\":\"\",\"client_id\":\"\"}}}",
        ] {
            std::fs::write(&p, bad).unwrap();
            assert!(matches!(load(&p, true), Err(Unusable::Corrupt(_))), "{bad:?}");
        }
        assert_eq!(load(p.parent().unwrap(), true), Err(Unusable::NotAFile));
        let _ = std::fs::remove_dir_all(&d);
    }

    fn settings(home: &Path, env_token: Option<&str>) -> Settings {
        let h = home.display().to_string();
        let t = env_token.map(str::to_string);
        let env = move |k: &str| match k {
            "HOME" => Some(h.clone()),
            "PACT_TOKEN" => t.clone(),
            "PACT_CLI_CONFIG" => Some("/nonexistent/cli.toml".into()),
            "PACT_DEV_DIR" => Some("/nonexistent".into()),
            _ => None,
        };
        crate::settings::resolve(&crate::settings::GlobalFlags::default(), &env).unwrap()
    }

    #[test]
    fn the_cache_is_after_explicit_tokens() {
        let home = temp("resolve");
        let p = home.join(".config/pact").join(FILE_NAME);
        let mut c = Cache::new();
        c.default_server = Some("j.example:9443".into());
        let mut e = entry("cached");
        e.expires_at = now_secs() + 3600;
        c.servers.insert("j.example:9443".into(), e);
        save(&p, &c).unwrap();

        // The endpoint defaults to the last login's; its entry gives the token.
        let mut s = settings(&home, None);
        assert_eq!((s.endpoint.as_str(), s.token_explicit), ("j.example:9443", false));
        resolve_token(&mut s).unwrap();
        assert_eq!(s.token.as_deref(), Some("cached"));
        // PACT_TOKEN wins, and the cache is not even read.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut s = settings(&home, Some("from-env"));
        resolve_token(&mut s).unwrap();
        assert_eq!(s.token.as_deref(), Some("from-env"));
        // Without it, the exposed cache fails the command.
        let mut s = settings(&home, None);
        assert_eq!(s.endpoint, "localhost:9443", "an exposed cache names no default server");
        let f = resolve_token(&mut s).unwrap_err();
        assert_eq!(f.code, EXIT_AUTH);
        // No entry for the endpoint: the fallback stands (none here).
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut s = settings(&home, None);
        s.endpoint = "other:1".into();
        resolve_token(&mut s).unwrap();
        assert_eq!(s.token, None);
        // An expired entry without a refresh token cannot be refreshed: exit 2, run pact login.
        let mut c = load(&p, true).unwrap().unwrap();
        let e = c.servers.get_mut("j.example:9443").unwrap();
        e.expires_at = now_secs() - 5;
        e.refresh_token = None;
        save(&p, &c).unwrap();
        let mut s = settings(&home, None);
        let f = resolve_token(&mut s).unwrap_err();
        assert_eq!(f.code, EXIT_AUTH);
        assert!(f.message.contains("has expired") && f.message.contains("run `pact login`"), "{}", f.message);
        let _ = std::fs::remove_dir_all(&home);
    }
}
