//! `pact login` and `pact logout`.
//!
//! - `pact login`: Authorization Code + PKCE (S256) with a loopback redirect
//!   `http://localhost:<port>/callback` (RFC 8252 §7.3; port 8400 unless `--callback-port`),
//!   served on 127.0.0.1 for a bounded time; the `state` of the callback must match.
//! - `pact login --device-code`: the Device Authorization Grant (RFC 8628).
//! - `pact login --service-account`: client credentials (`PACT_CLIENT_ID`,
//!   `PACT_CLIENT_SECRET`).
//!
//! The tokens go to the cache (`tokens.rs`) under the journal endpoint. `pact logout` removes
//! the endpoint's entry first, then revokes its refresh token at the IdP (best effort).

use crate::oidc::{self, ClientAuth, Provider, TokenResponse, EXIT_UNREACHABLE};
use crate::output::Format;
use crate::settings::Settings;
use crate::tokens::{self, server_key, Cache, Entry};
use crate::{Failure, EXIT_AUTH, EXIT_ERROR};
use nanoserde::SerJson;
use pact_proto::httpget::{base64url, form_encode};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const LOGIN_HELP: &str = "\
USAGE: pact login [--device-code | --service-account] [--issuer URL] [--client-id ID]
                  [--callback-port N] [--timeout SECONDS] [--no-browser]

Gets a token for the journal (--endpoint) from the OpenID provider and caches it in
~/.config/pact/tokens.json (mode 0600), where every command finds it.

  (default)           Authorization Code + PKCE in a browser: pact prints the authorization
                      URL (and opens it with xdg-open when there is a display), then waits
                      for the browser to come back to http://localhost:8400/callback.
  --device-code       for a machine without a browser: pact prints a URL and a code to enter
                      on any device, and polls the IdP until the login is approved.
  --service-account   client credentials from PACT_CLIENT_ID and PACT_CLIENT_SECRET.

  --issuer URL        the OpenID provider    [PACT_OIDC_ISSUER]  cli.toml: oidc_issuer
  --client-id ID      the OAuth client       [PACT_CLIENT_ID]    cli.toml: client_id (default pact)
  --callback-port N   the loopback redirect's port (default 8400; 0 picks a free one)
  --timeout SECONDS   how long to wait for the browser or the device approval (default 300)
  --no-browser        print the URL only, never run xdg-open

Also read: PACT_OIDC_RESOURCE / oidc_resource (sent as resource=, e.g. urn:pact),
PACT_OIDC_SCOPE / oidc_scope (default \"openid offline_access\"), PACT_OIDC_CA_BUNDLE /
oidc_ca_bundle (CA for an https IdP; default the system bundle).
Exit codes: 0 logged in; 1 error (configuration, a bad answer from the IdP); 2 the login was
refused, denied, timed out or its state did not match; 5 the IdP is unreachable.";

pub const LOGOUT_HELP: &str = "\
USAGE: pact logout [--all]

Removes the cached token for the journal (--endpoint) from ~/.config/pact/tokens.json, then
revokes its refresh token at the OpenID provider (best effort: the entry is gone even when
the IdP is down). --all: every server's. Exit codes: 0 done; 1 the cache could not be written.";

/// The CLI's default loopback redirect port (the deployment guide's).
pub const DEFAULT_CALLBACK_PORT: u16 = 8400;
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Browser,
    DeviceCode,
    ServiceAccount,
}

#[derive(Debug, Clone)]
pub struct LoginOpts {
    pub flow: Flow,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub callback_port: u16,
    pub timeout: Duration,
    pub no_browser: bool,
}

#[derive(SerJson)]
struct LoggedIn {
    server: String,
    subject: String,
    role: String,
    issuer: String,
    client_id: String,
    expires_at: u64,
    refreshable: bool,
    cache: String,
}

fn cache_path(s: &Settings) -> Result<PathBuf, Failure> {
    s.token_cache.clone().ok_or_else(|| Failure::usage("HOME is not set: there is nowhere to keep the token cache"))
}

pub fn login(o: &LoginOpts, s: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Failure> {
    let issuer = o.issuer.clone().or_else(|| s.oidc.issuer.clone()).ok_or_else(|| {
        Failure::usage(
            "`pact login` needs the OpenID provider: pass --issuer URL, set PACT_OIDC_ISSUER, or put oidc_issuer in ~/.config/pact/cli.toml",
        )
    })?;
    let client_id = o.client_id.clone().unwrap_or_else(|| s.oidc.client_id.clone());
    let path = cache_path(s)?;
    let idp = Provider::discover(&issuer, &s.oidc, s.timeout)?;
    let resource = s.oidc.resource.as_deref();
    let tokens = match o.flow {
        Flow::ServiceAccount => {
            let secret = env("PACT_CLIENT_SECRET").filter(|v| !v.is_empty()).ok_or_else(|| {
                Failure::usage(
                    "`pact login --service-account` needs PACT_CLIENT_SECRET (and PACT_CLIENT_ID) in the environment",
                )
            })?;
            let mut form = vec![("grant_type", "client_credentials")];
            if let Some(r) = resource {
                form.push(("resource", r));
            }
            let what = "service-account login (client credentials)";
            oidc::tokens_or_refusal(what, idp.token(what, &form, idp.secret_auth(&client_id, &secret))?)?
        }
        Flow::DeviceCode => device_login(&idp, &client_id, &s.oidc.scope, resource, o.timeout)?,
        Flow::Browser => browser_login(&idp, &client_id, &s.oidc.scope, resource, o, env)?,
    };
    let entry = oidc::entry_for(&tokens, &idp.issuer, &client_id, None);
    let key = server_key(&s.endpoint);
    let mut cache = match tokens::load(&path, false) {
        Ok(Some(c)) => c,
        Ok(None) => Cache::new(),
        Err(u) => {
            eprintln!("pact: {}; replacing it", u.describe(&path));
            Cache::new()
        }
    };
    cache.servers.insert(key.clone(), entry.clone());
    cache.default_server = Some(key.clone());
    tokens::save(&path, &cache)?;
    Ok(logged_in(s, &key, &entry, &path))
}

fn logged_in(s: &Settings, key: &str, e: &Entry, path: &Path) -> String {
    let c = oidc::claims(&e.access_token).unwrap_or_default();
    let j = LoggedIn {
        server: key.to_string(),
        subject: c.sub.unwrap_or_default(),
        role: c.pact_role.unwrap_or_default(),
        issuer: e.idp_issuer.clone(),
        client_id: e.client_id.clone(),
        expires_at: e.expires_at,
        refreshable: e.refresh_token.is_some(),
        cache: path.display().to_string(),
    };
    match s.output {
        Format::Json => j.serialize_json(),
        Format::Text => {
            let who = match (j.subject.as_str(), j.role.as_str()) {
                ("", _) => String::new(),
                (sub, "") => format!(" as {sub}"),
                (sub, role) => format!(" as {sub} ({role})"),
            };
            let life = match (j.expires_at.checked_sub(tokens::now_secs()), j.refreshable) {
                (_, _) if j.expires_at == 0 => String::new(),
                (Some(left), true) => format!("; the token expires in {} min and is refreshed as needed", left / 60),
                (Some(left), false) => format!("; the token expires in {} min", left / 60),
                (None, _) => "; the token has already expired".into(),
            };
            format!("logged in to {}{who} via {}{life} (cached in {})\n", j.server, j.issuer, j.cache)
        }
    }
}

fn random_b64(n: usize) -> Result<String, Failure> {
    use ring::rand::SecureRandom as _;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Failure::new(EXIT_ERROR, "the system's random number generator failed"))?;
    Ok(base64url(&b))
}

/// RFC 7636 §4.2: BASE64URL(SHA256(ASCII(code_verifier))).
pub fn pkce_challenge(verifier: &str) -> String {
    base64url(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref())
}

fn device_login(
    idp: &Provider,
    client_id: &str,
    scope: &str,
    resource: Option<&str>,
    timeout: Duration,
) -> Result<TokenResponse, Failure> {
    let started = Instant::now();
    let d = idp.device_authorization(client_id, scope, resource)?;
    eprintln!("To log in, open this URL in a browser on any device and enter the code below:");
    eprintln!("  URL:  {}", d.verification_uri);
    eprintln!("  code: {}", d.user_code);
    if let Some(c) = d.verification_uri_complete.as_deref().filter(|c| !c.is_empty()) {
        eprintln!("  (or open {c}, which carries the code)");
    }
    let expires = Duration::from_secs(d.expires_in.max(1));
    let wait = expires.min(timeout);
    eprintln!("Waiting for the login to be approved (up to {} s)...", wait.as_secs());
    let interval = d.interval.map(Duration::from_secs).unwrap_or(oidc::DEFAULT_INTERVAL);
    let form = [("grant_type", oidc::DEVICE_GRANT), ("device_code", d.device_code.as_str())];
    oidc::poll_device(interval, started + wait, std::thread::sleep, || {
        idp.token("device login", &form, ClientAuth::Public(client_id))
    })
}

fn browser_login(
    idp: &Provider,
    client_id: &str,
    scope: &str,
    resource: Option<&str>,
    o: &LoginOpts,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TokenResponse, Failure> {
    let auth_endpoint = idp.endpoint("authorization_endpoint")?;
    idp.endpoint("token_endpoint")?;
    let listener = TcpListener::bind(("127.0.0.1", o.callback_port)).map_err(|e| {
        Failure::usage(format!(
            "cannot listen on 127.0.0.1:{} for the login callback: {e} (pass --callback-port N for another port)",
            o.callback_port
        ))
    })?;
    let port = listener.local_addr().map_err(|e| Failure::usage(e.to_string()))?.port();
    let redirect_uri = format!("http://localhost:{port}/callback");
    let verifier = random_b64(32)?;
    let state = random_b64(24)?;
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri.as_str()),
        ("scope", scope),
        ("state", state.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let challenge = pkce_challenge(&verifier);
    params.push(("code_challenge", challenge.as_str()));
    if let Some(r) = resource {
        params.push(("resource", r));
    }
    let sep = if auth_endpoint.contains('?') { '&' } else { '?' };
    let url = format!("{auth_endpoint}{sep}{}", form_encode(&params));
    eprintln!("To log in, open this URL in a browser:");
    eprintln!();
    eprintln!("  {url}");
    eprintln!();
    if !o.no_browser && open_browser(&url, env) {
        eprintln!("(opened it with xdg-open)");
    }
    eprintln!(
        "Waiting up to {} s for the browser to come back to {redirect_uri} (Ctrl-C to give up)...",
        o.timeout.as_secs()
    );
    let expected = Callback { state: &state, issuer: &idp.issuer, redirect_uri: &redirect_uri };
    let deadline = Instant::now() + o.timeout;
    serve_callback(&listener, &expected, deadline, |code| {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", verifier.as_str()),
        ];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let what = "login (authorization code exchange)";
        oidc::tokens_or_refusal(what, idp.token(what, &form, ClientAuth::Public(client_id))?)
    })
}

/// `xdg-open URL` when there is a display and xdg-open is on PATH; whether it was started.
fn open_browser(url: &str, env: &dyn Fn(&str) -> Option<String>) -> bool {
    let display = ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| env(v).is_some_and(|d| !d.is_empty()));
    if !display {
        return false;
    }
    let Some(path) = env("PATH") else { return false };
    let Some(bin) = path.split(':').map(|d| Path::new(d).join("xdg-open")).find(|p| p.is_file()) else {
        return false;
    };
    std::process::Command::new(bin)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// What the callback must carry.
pub struct Callback<'a> {
    pub state: &'a str,
    /// The issuer: an `iss` parameter (RFC 9207) must name it.
    pub issuer: &'a str,
    pub redirect_uri: &'a str,
}

/// Largest request head the callback server reads.
const MAX_CALLBACK_REQUEST: usize = 16 << 10;

/// Serves `GET /callback?...` on `listener` until a callback with the right `state` comes, or
/// `deadline`. Other paths get a 404 and a callback with another state a 400, and the wait
/// goes on; the right one is answered once `exchange` (the code → tokens) is done, with its
/// outcome, so the browser shows whether the login worked.
pub fn serve_callback<T>(
    listener: &TcpListener,
    expected: &Callback<'_>,
    deadline: Instant,
    mut exchange: impl FnMut(&str) -> Result<T, Failure>,
) -> Result<T, Failure> {
    listener.set_nonblocking(true).map_err(|e| Failure::usage(format!("callback listener: {e}")))?;
    let mut mismatches = 0u32;
    loop {
        let (mut conn, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {
                if Instant::now() >= deadline {
                    let also = if mismatches > 0 {
                        format!(" ({mismatches} callback(s) with the wrong state were refused: state mismatch)")
                    } else {
                        String::new()
                    };
                    return Err(Failure::new(
                        EXIT_AUTH,
                        format!(
                            "timed out waiting for the browser to come back to {}{also}; run `pact login` again (--timeout SECONDS waits longer)",
                            expected.redirect_uri
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(Failure::new(EXIT_ERROR, format!("callback listener: {e}"))),
        };
        let Some(target) = read_request_target(&mut conn) else {
            respond(&mut conn, 400, "Bad Request", "pact: not an HTTP GET request\n");
            continue;
        };
        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        if path != "/callback" {
            respond(&mut conn, 404, "Not Found", "pact: not found\n");
            continue;
        }
        let q = parse_query(query);
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("state") != Some(expected.state) {
            mismatches += 1;
            eprintln!(
                "pact login: refused a callback whose state does not match this login (state mismatch); still waiting"
            );
            respond(
                &mut conn,
                400,
                "Bad Request",
                "pact login: state mismatch: this callback does not belong to the login pact is waiting for; refused.\n",
            );
            continue;
        }
        if let Some(iss) = get("iss") {
            if iss.trim_end_matches('/') != expected.issuer {
                let msg = format!(
                    "the callback names issuer {iss:?}, not {:?} (RFC 9207 mix-up defence): refused",
                    expected.issuer
                );
                respond(&mut conn, 400, "Bad Request", &format!("pact login failed: {msg}\n"));
                return Err(Failure::new(EXIT_AUTH, format!("login: {msg}")));
            }
        }
        if let Some(error) = get("error") {
            let desc = get("error_description").map(|d| format!(": {d}")).unwrap_or_default();
            let msg = format!("the OpenID provider refused the login: {error}{desc}");
            respond(&mut conn, 400, "Bad Request", &format!("pact login failed: {msg}\n"));
            return Err(Failure::new(EXIT_AUTH, msg));
        }
        let Some(code) = get("code").filter(|c| !c.is_empty()) else {
            let msg = "the callback carries neither a code nor an error";
            respond(&mut conn, 400, "Bad Request", &format!("pact login failed: {msg}\n"));
            return Err(Failure::new(EXIT_AUTH, format!("login: {msg}")));
        };
        return match exchange(code) {
            Ok(t) => {
                respond(
                    &mut conn,
                    200,
                    "OK",
                    "pact: logged in. You can close this window and go back to the terminal.\n",
                );
                Ok(t)
            }
            Err(f) => {
                respond(&mut conn, 400, "Bad Request", &format!("pact login failed: {}\n", f.message));
                Err(f)
            }
        };
    }
}

/// The target of a `GET` request (its head read within a few seconds), or None.
fn read_request_target(conn: &mut TcpStream) -> Option<String> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_CALLBACK_REQUEST {
            return None;
        }
    }
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("GET"), Some(target), Some(v)) if v.starts_with("HTTP/1.") && target.starts_with('/') => {
            Some(target.to_string())
        }
        _ => None,
    }
}

fn respond(conn: &mut TcpStream, status: u16, reason: &str, body: &str) {
    let r = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(r.as_bytes()).and_then(|_| conn.flush());
}

/// `a=1&b=x%20y` → [(a, 1), (b, x y)]; `+` is a space.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn logout(all: bool, s: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Failure> {
    let path = cache_path(s)?;
    let key = server_key(&s.endpoint);
    let mut cache = match tokens::load(&path, false) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(format!("not logged in (no token cache at {})\n", path.display())),
        Err(u) => {
            // Nothing in it can be trusted or used: removing it is the logout.
            std::fs::remove_file(&path)
                .map_err(|e| Failure::new(EXIT_ERROR, format!("cannot remove {}: {e}", path.display())))?;
            return Ok(format!("{}; removed it (nothing could be revoked)\n", u.describe(&path)));
        }
    };
    // First the cache, always; then, best effort, the IdP.
    let removed: Vec<(String, Entry)> = if all {
        std::mem::take(&mut cache.servers).into_iter().collect()
    } else {
        match cache.servers.remove(&key) {
            Some(e) => vec![(key.clone(), e)],
            None => return Ok(format!("not logged in to {key} (no entry in {})\n", path.display())),
        }
    };
    if cache.default_server.as_ref().is_some_and(|d| !cache.servers.contains_key(d)) {
        cache.default_server = None;
    }
    if cache.servers.is_empty() {
        std::fs::remove_file(&path)
            .map_err(|e| Failure::new(EXIT_ERROR, format!("cannot remove {}: {e}", path.display())))?;
    } else {
        tokens::save(&path, &cache)?;
    }
    let mut out = String::new();
    for (server, e) in &removed {
        let revoked = revoke(s, e, env);
        let note = match revoked {
            Ok(what) => format!("{what} revoked at {}", e.idp_issuer),
            Err(why) => {
                eprintln!("pact: warning: could not revoke the token for {server} at {}: {why}", e.idp_issuer);
                "not revoked at the IdP".into()
            }
        };
        out.push_str(&format!("logged out of {server} (token removed from {}; {note})\n", path.display()));
    }
    Ok(out)
}

/// Revokes the entry's refresh token (its access token when it has none).
fn revoke(s: &Settings, e: &Entry, env: &dyn Fn(&str) -> Option<String>) -> Result<&'static str, String> {
    let (token, hint, what) = match e.refresh_token.as_deref() {
        Some(r) => (r, "refresh_token", "refresh token"),
        None => (e.access_token.as_str(), "access_token", "access token"),
    };
    // Short: logging out must not hang on an IdP that is down.
    let timeout = s.timeout.min(Duration::from_secs(10));
    let idp = Provider::discover(&e.idp_issuer, &s.oidc, timeout).map_err(|f| {
        if f.code == EXIT_UNREACHABLE {
            f.message
        } else {
            format!("{} (exit {})", f.message, f.code)
        }
    })?;
    let secret = env("PACT_CLIENT_SECRET").filter(|v| !v.is_empty());
    let same_client = env("PACT_CLIENT_ID").as_deref() == Some(e.client_id.as_str());
    let auth = match &secret {
        Some(sec) if same_client => idp.secret_auth(&e.client_id, sec),
        _ => ClientAuth::Public(&e.client_id),
    };
    idp.revoke(token, hint, auth)?;
    Ok(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let v = random_b64(32).unwrap();
        assert_eq!(v.len(), 43, "{v}");
        assert_ne!(v, random_b64(32).unwrap());
    }

    /// An environment with only HOME (and no cli.toml, no dev profile).
    fn env_at(home: &std::path::Path) -> impl Fn(&str) -> Option<String> {
        let h = home.display().to_string();
        move |k: &str| match k {
            "HOME" => Some(h.clone()),
            "PACT_CLI_CONFIG" => Some("/nonexistent/cli.toml".into()),
            "PACT_DEV_DIR" => Some("/nonexistent".into()),
            _ => None,
        }
    }

    fn args(a: &[&str]) -> Vec<std::ffi::OsString> {
        a.iter().map(std::ffi::OsString::from).collect()
    }

    #[test]
    fn login_and_logout_command_lines() {
        let home = std::env::temp_dir().join(format!("pact-cli-login-args-{}", std::process::id()));
        let env = env_at(&home);
        let run = |a: &[&str]| crate::commands::run(args(a), &env);
        assert_eq!(run(&["login", "--help"]).unwrap(), LOGIN_HELP);
        assert_eq!(run(&["logout", "-h"]).unwrap(), LOGOUT_HELP);
        let usage = run(&["--help"]).unwrap();
        for line in ["login [--device-code | --service-account]", "logout [--all]", "AUTHENTICATION:", "tokens.json"] {
            assert!(usage.contains(line), "{line:?} missing from USAGE");
        }
        let refused = |a: &[&str]| {
            let f = run(a).expect_err("should be refused");
            assert_eq!(f.code, EXIT_ERROR, "{a:?}: {}", f.message);
            f.message
        };
        assert!(refused(&["login", "--device-code", "--service-account"]).contains("exclude each other"));
        assert!(refused(&["login", "--callback-port", "70000"]).contains("0..=65535"));
        assert!(refused(&["login", "--timeout", "0"]).contains("--timeout"));
        assert!(refused(&["login", "extra"]).contains("unexpected argument"));
        assert!(refused(&["login", "--all"]).contains("takes no option --all"));
        assert!(refused(&["logout", "--issuer", "x"]).contains("takes no option --issuer"));
        assert!(refused(&["log", "--device-code"]).contains("takes no option --device-code"));
        // No IdP configured: says where one comes from, before any network.
        let m = refused(&["login"]);
        assert!(m.contains("--issuer") && m.contains("PACT_OIDC_ISSUER") && m.contains("oidc_issuer"), "{m}");
        // The IdP comes first (its discovery document): nothing listens on port 1, exit 5.
        let f = crate::commands::run(args(&["login", "--service-account", "--issuer", "http://127.0.0.1:1"]), &env)
            .unwrap_err();
        assert_eq!(f.code, EXIT_UNREACHABLE, "discovery comes first, and nothing listens on port 1: {}", f.message);
        // Logging out with nothing cached is not an error.
        assert!(run(&["logout"]).unwrap().contains("not logged in"));
        assert!(run(&["logout", "--all"]).unwrap().contains("not logged in"));
        let _ = std::fs::remove_dir_all(&home);
    }

    #[test]
    fn logout_removes_first_and_keeps_other_servers() {
        let home = std::env::temp_dir().join(format!("pact-cli-logout-{}", std::process::id()));
        let path = home.join(".config/pact").join(tokens::FILE_NAME);
        let entry = |t: &str| Entry {
            access_token: t.into(),
            refresh_token: Some(format!("r-{t}")),
            expires_at: tokens::now_secs() + 600,
            scopes: vec![],
            // Nothing listens there: revocation fails, the logout does not.
            idp_issuer: "http://127.0.0.1:1".into(),
            client_id: "pact".into(),
        };
        let mut c = Cache::new();
        c.default_server = Some("a:1".into());
        c.servers.insert("a:1".into(), entry("ta"));
        c.servers.insert("b:2".into(), entry("tb"));
        tokens::save(&path, &c).unwrap();
        let env = env_at(&home);
        let run = |a: &[&str]| crate::commands::run(args(a), &env);
        // The endpoint defaults to the default server, a:1.
        let out = run(&["logout"]).unwrap();
        assert!(out.contains("logged out of a:1") && out.contains("not revoked"), "{out}");
        let left = tokens::load(&path, true).unwrap().unwrap();
        assert_eq!((left.default_server, left.servers.keys().collect::<Vec<_>>()), (None, vec![&"b:2".to_string()]));
        assert!(run(&["--endpoint", "a:1", "logout"]).unwrap().contains("not logged in to a:1"));
        // An unusable cache is removed outright.
        std::fs::write(&path, "garbage").unwrap();
        let out = run(&["logout"]).unwrap();
        assert!(out.contains("corrupt") && out.contains("removed"), "{out}");
        assert!(!path.exists());
        // --all: every server.
        tokens::save(&path, &c).unwrap();
        let out = run(&["logout", "--all"]).unwrap();
        assert!(out.contains("a:1") && out.contains("b:2"), "{out}");
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&home);
    }

    #[test]
    fn queries() {
        assert_eq!(
            parse_query("code=a%2Fb+c&state=x&&iss=http%3A%2F%2Fidp&bad=%zz&end=%4"),
            [
                ("code".to_string(), "a/b c".to_string()),
                ("state".into(), "x".into()),
                ("iss".into(), "http://idp".into()),
                ("bad".into(), "%zz".into()),
                ("end".into(), "%4".into()),
            ]
        );
        assert_eq!(
            pact_proto::httpget::url_encode("http://localhost:8400/callback"),
            "http%3A%2F%2Flocalhost%3A8400%2Fcallback"
        );
    }

    fn get(port: u16, target: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(format!("GET {target} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out.split(' ').nth(1).unwrap().parse().unwrap();
        (code, out.split_once("\r\n\r\n").unwrap().1.to_string())
    }

    #[test]
    fn the_callback_server_checks_state_and_answers_the_browser() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let browser = std::thread::spawn(move || {
            let mut seen = vec![get(port, "/favicon.ico"), get(port, "/callback?code=c1&state=WRONG")];
            seen.push(get(port, "/callback?code=c%2B2&state=s1&iss=http%3A%2F%2Fidp"));
            seen
        });
        let cb = Callback { state: "s1", issuer: "http://idp", redirect_uri: "http://localhost/callback" };
        let mut codes = vec![];
        let r = serve_callback(&l, &cb, Instant::now() + Duration::from_secs(20), |c| {
            codes.push(c.to_string());
            Ok(7)
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(codes, ["c+2"], "only the callback with the right state is exchanged");
        let seen = browser.join().unwrap();
        assert_eq!(seen[0].0, 404);
        assert_eq!(seen[1].0, 400);
        assert!(seen[1].1.contains("state mismatch"), "{}", seen[1].1);
        assert_eq!(seen[2].0, 200);

        // An error from the IdP ends the wait (exit 2), as does a wrong iss.
        for (target, says) in [
            ("/callback?error=access_denied&error_description=no&state=s1", "access_denied: no"),
            ("/callback?code=x&state=s1&iss=http%3A%2F%2Fevil", "mix-up"),
            ("/callback?state=s1", "neither a code"),
        ] {
            let t = target.to_string();
            let browser = std::thread::spawn(move || get(port, &t));
            let f = serve_callback(&l, &cb, Instant::now() + Duration::from_secs(20), |_| Ok(())).unwrap_err();
            assert_eq!(f.code, EXIT_AUTH);
            assert!(f.message.contains(says), "{}", f.message);
            assert_eq!(browser.join().unwrap().0, 400);
        }
        // A failed exchange is reported to the browser too.
        let browser = std::thread::spawn(move || get(port, "/callback?code=x&state=s1"));
        let f = serve_callback(&l, &cb, Instant::now() + Duration::from_secs(20), |_| -> Result<(), Failure> {
            Err(Failure::new(EXIT_AUTH, "invalid_grant"))
        })
        .unwrap_err();
        assert_eq!(f.message, "invalid_grant");
        let (code, body) = browser.join().unwrap();
        assert_eq!(code, 400);
        assert!(body.contains("invalid_grant"), "{body}");
        // Nobody comes: a bounded wait, exit 2.
        let f = serve_callback(&l, &cb, Instant::now() + Duration::from_millis(200), |_| Ok(())).unwrap_err();
        assert_eq!(f.code, EXIT_AUTH);
        assert!(f.message.contains("timed out"), "{}", f.message);
    }
}
