//! `pact login` and `pact logout` against a real OpenID provider (images/idp: oidc-provider 8 on
//! Node.js) and a real `pact-journal` that verifies the IdP's tokens through its discovery
//! document. Every `pact` run has a temp HOME, so the token cache is the test's own.
//!
//! 1. `--service-account` (client credentials): the cache is written with mode 0600 (its
//!    directory 0700), and `pact log` / `pact commit` work from the cache alone; the commit's
//!    author is the token's `sub`.
//! 2. Authorization Code + PKCE: the test plays the browser (the IdP's login and consent
//!    forms, with cookies) up to the redirect to the CLI's loopback callback; a callback with a
//!    wrong `state` is refused while the CLI keeps waiting; the right one logs in.
//! 3. Device code: the test enters the user code in the IdP's device pages.
//! 4. Silent refresh: an expired cached access token is refreshed before `pact log`.
//! 5. Fail closed: a cache readable by others, or corrupt, is refused (exit 2, naming the file
//!    and `pact login`); `pact logout` revokes at the IdP when it is up, and removes the entry
//!    even when the IdP is down, after which `pact log` says to run `pact login`.
//!
//! Needs `node` (18 or later) and `npm`; `images/idp/node_modules` is installed (`npm ci`)
//! when missing. Without them the test prints `SKIP: <reason>` and passes, unless CI=true,
//! where it fails. It also needs `pact-journal` next to the test's target dir (`cargo build
//! --workspace`), as the other CLI suites do.

#[path = "../../journal/tests/common/mod.rs"]
mod common;
#[path = "../../images/idp/harness.rs"]
mod idp;
mod support;

use common::{free_port, temp_dir};
use idp::{
    http, lines_of, now_secs, poll, Answer, Dir, Idp, OidcJournal, Proc, ADMIN, CLIENT_ID, CLIENT_SECRET, DEADLINE,
    RESOURCE,
};
use pact_proto::httpget;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{parse_json, Cli, Json, Tok};

/// Variables of the caller's environment that would change what `pact login` does.
const LOGIN_ENV: &[&str] = &[
    "PACT_OIDC_ISSUER",
    "PACT_OIDC_RESOURCE",
    "PACT_OIDC_SCOPE",
    "PACT_OIDC_CA_BUNDLE",
    "PACT_CLIENT_ID",
    "PACT_CLIENT_SECRET",
    "DISPLAY",
    "WAYLAND_DISPLAY",
];

// ---------------------------------------------------------------------------------------
// The identity provider (images/idp, run by its harness as journal/tests/oidc.rs runs it).

/// Client-credentials tokens are pact-platform-admin (so a service account may commit);
/// the device endpoint announces a 1 s polling interval.
const IDP_ARGS: &[&str] = &["--service-role", ADMIN, "--user-role", ADMIN, "--device-interval", "1"];

trait TestIdp {
    /// A POST to the token endpoint, as the test (not the CLI) makes it: (status, JSON).
    fn token_request(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Json);
    /// An admin access token for `pact-test` (client credentials).
    fn admin_token(&self) -> String;
}

impl TestIdp for Idp {
    fn token_request(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Json) {
        let (status, body) = self.post_token(form, basic);
        (status, parse_json(&body))
    }

    fn admin_token(&self) -> String {
        let (code, v) = self.token_request(
            &[("grant_type", "client_credentials"), ("resource", RESOURCE)],
            Some((CLIENT_ID, CLIENT_SECRET)),
        );
        assert_eq!(code, 200, "client credentials: {v:?}\n{}", self.stderr_text());
        v.get("access_token").str().to_string()
    }
}

// ---------------------------------------------------------------------------------------
// A browser, as small as the IdP's pages allow: GET and form POST over HTTP/1.0, cookies by
// path, redirects followed, the first form of a page submitted with its hidden fields.
/// What the test sends as a browser would (the IdP's pages and the CLI's callback).
fn html_accept() -> [(&'static str, String); 1] {
    [("Accept", "text/html,*/*".to_string())]
}

/// One GET of `url` as a browser.
fn browse(url: &str) -> Result<Answer, String> {
    http("GET", url, &html_accept(), b"")
}

/// Where a walk through the IdP's pages ended.
#[derive(Debug)]
enum Landing {
    /// A redirect to the URL the walk was told to stop at (the CLI's callback).
    Redirect(String),
    /// A page without a form.
    Page(String),
}

#[derive(Default)]
struct Browser {
    /// (name, path) → value.
    cookies: BTreeMap<(String, String), String>,
    trail: Vec<String>,
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let i = tag.find(&needle)? + needle.len();
    let v = &tag[i..i + tag[i..].find('"')?];
    Some(v.replace("&amp;", "&").replace("&#x3D;", "=").replace("&quot;", "\""))
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let u = httpget::Url::parse(base).unwrap();
    format!("http://{}:{}{location}", u.host, u.port)
}

impl Browser {
    fn cookie_header(&self, path: &str) -> String {
        self.cookies
            .iter()
            .filter(|((_, p), _)| path == p || path.starts_with(&format!("{}/", p.trim_end_matches('/'))))
            .map(|((n, _), v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, a: &Answer) {
        for (k, v) in &a.headers {
            if !k.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            let mut parts = v.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else { continue };
            let mut path = "/".to_string();
            let mut gone = value.is_empty();
            for p in parts {
                let (ak, av) = p.split_once('=').unwrap_or((p, ""));
                match ak.to_ascii_lowercase().as_str() {
                    "path" => path = av.to_string(),
                    "expires" if av.contains("1970") => gone = true,
                    "max-age" if av.trim() == "0" => gone = true,
                    _ => {}
                }
            }
            let key = (name.to_string(), path);
            if gone {
                self.cookies.remove(&key);
            } else {
                self.cookies.insert(key, value.to_string());
            }
        }
    }

    fn send(&mut self, method: &str, url: &str, form: Option<&str>) -> Answer {
        let path = httpget::Url::parse(url).unwrap().path;
        let path = path.split('?').next().unwrap().to_string();
        let mut headers = html_accept().to_vec();
        let cookie = self.cookie_header(&path);
        if !cookie.is_empty() {
            headers.push(("Cookie", cookie));
        }
        if form.is_some() {
            headers.push(("Content-Type", "application/x-www-form-urlencoded".to_string()));
        }
        self.trail.push(format!("{method} {url}"));
        let a = http(method, url, &headers, form.unwrap_or("").as_bytes()).unwrap_or_else(|e| panic!("browser: {e}"));
        self.keep_cookies(&a);
        a
    }

    /// Follows redirects from `url` and submits each page's first POST form (hidden fields,
    /// prefilled values, and `fill` for the rest) until a redirect to `stop_at` or a page
    /// without a form.
    fn walk(&mut self, url: &str, stop_at: &str, fill: &[(&str, &str)]) -> Landing {
        let (mut method, mut url, mut body) = ("GET", url.to_string(), None::<String>);
        for _ in 0..20 {
            let a = self.send(method, &url, body.as_deref());
            match a.status {
                301 | 302 | 303 | 307 => {
                    let loc = absolute(&url, a.header("location").expect("a redirect without Location"));
                    if loc.starts_with(stop_at) {
                        return Landing::Redirect(loc);
                    }
                    (method, url, body) = ("GET", loc, None);
                }
                200 => {
                    let Some(start) = a.body.find("<form") else { return Landing::Page(a.body) };
                    let end = a.body[start..].find("</form>").map(|e| start + e).unwrap_or(a.body.len());
                    let form = &a.body[start..end];
                    let tag = &form[..form.find('>').unwrap()];
                    let action = absolute(&url, &attr(tag, "action").unwrap_or_else(|| url.clone()));
                    let mut fields: Vec<(String, String)> = vec![];
                    for input in form.split("<input").skip(1) {
                        let tag = &input[..input.find('>').unwrap_or(input.len())];
                        let Some(name) = attr(tag, "name") else { continue };
                        let filled = fill.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
                        fields.push((name, filled.or_else(|| attr(tag, "value")).unwrap_or_default()));
                    }
                    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    (method, url, body) = ("POST", action, Some(httpget::form_encode(&pairs)));
                }
                s => panic!("browser: {s} from {url}: {}\ntrail: {:#?}", a.body, self.trail),
            }
        }
        panic!("browser: no end after 20 steps: {:#?}", self.trail);
    }
}

/// `pact` with the test's HOME, endpoint and CA, no token, and exactly `env` of the login
/// settings.
fn pact(cli: &Cli, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut c = cli.command(Tok::None, args);
    for v in LOGIN_ENV {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null());
    c
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(cli: &Cli, env: &[(&str, &str)], args: &[&str]) -> Out {
    let o = pact(cli, env, args).output().expect("run pact");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A `pact login` running in the background, its stderr read line by line.
struct Running {
    proc: Proc,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(cli: &Cli, env: &[(&str, &str)], args: &[&str]) -> Running {
        let mut child = pact(cli, env, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start pact");
        let lines = lines_of(child.stderr.take().unwrap());
        Running { proc: Proc::new(child, "pact login"), lines, seen: vec![] }
    }

    /// The first stderr line (from now on) that `want` accepts.
    fn line(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if want(&l) {
                        return l;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("pact login ended without printing {what}: {:#?}", self.seen)
                }
            }
            assert!(Instant::now() < until, "pact login printed no {what} within {DEADLINE:?}: {:#?}", self.seen);
        }
    }

    fn still_running(&mut self) -> bool {
        self.proc.exited().is_none()
    }

    /// Waits for the exit (bounded): (code, stdout, all of stderr).
    fn finish(mut self) -> Out {
        let st = poll(DEADLINE, Duration::from_millis(50), || self.proc.exited());
        let Some(st) = st else { panic!("pact login still running after {DEADLINE:?}: {:#?}", self.seen) };
        let mut child = self.proc.child.take().unwrap();
        let mut stdout = String::new();
        child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        // Already reaped by try_wait; this only returns the same status.
        let _ = child.wait();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        Out { code: st.code().unwrap_or(-1), stdout, stderr: self.seen.join("\n") }
    }
}

/// The JWT payload of a token (not verified: the journal does that).
fn claims(token: &str) -> Json {
    let part = token.split('.').nth(1).unwrap_or_else(|| panic!("not a JWT: {token:?}"));
    let bytes = httpget::base64url_decode(part).unwrap_or_else(|| panic!("bad base64url in {token:?}"));
    parse_json(std::str::from_utf8(&bytes).unwrap())
}

fn cache_path(cli: &Cli) -> PathBuf {
    cli.home.join(".config/pact/tokens.json")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn read_cache(cli: &Cli) -> Json {
    parse_json(&std::fs::read_to_string(cache_path(cli)).expect("the token cache"))
}

/// The cache entry for `endpoint`.
fn cached(cli: &Cli, endpoint: &str) -> Json {
    read_cache(cli).get("servers").get(endpoint).clone()
}

/// Every entry the journal holds, newest first (`pact log --output json`), read with the
/// cache only.
fn entries(cli: &Cli) -> Vec<Json> {
    let o = run(cli, &[], &["--output", "json", "log", "-n", "10000"]);
    assert_eq!(o.code, 0, "pact log with the cached token failed: {o:?}");
    parse_json(&o.stdout).arr().to_vec()
}

/// `pact commit -m msg` with the cached token, recorded with the token's sub as author.
fn commit_as(cli: &Cli, endpoint: &str, msg: &str) -> String {
    let o = run(cli, &[], &["commit", "-m", msg]);
    assert_eq!(o.code, 0, "pact commit with the cached token failed: {o:?}");
    let token = cached(cli, endpoint).get("access_token").str().to_string();
    let sub = claims(&token).get("sub").str().to_string();
    let all = entries(cli);
    let e = all.iter().find(|e| e.get("message").str() == msg).unwrap_or_else(|| panic!("{msg} not in {all:?}"));
    assert_eq!(e.get("author").str(), sub, "the author of {msg} is the cached token's sub");
    sub
}

#[test]
fn login_and_logout_against_a_real_openid_provider() {
    let dir = Dir(temp_dir("cli-login"));
    let Some(idp_src) = idp::prepare_or_skip(&dir.0) else { return };
    let mut idp = Idp::start(&idp_src, free_port(), &dir.0.join("keys.json"), IDP_ARGS, &dir.0.join("idp.stderr"));
    let issuer = idp.issuer();
    println!("IdP ready at {issuer}");
    let mut journal = OidcJournal::start(&dir.0, &issuer);
    let endpoint = journal.endpoint.clone();

    // The journal is up and verifies the IdP's tokens (a token the test got itself).
    let admin = idp.admin_token();
    let probe = Cli::at(&endpoint, &journal.ca, "login-probe");
    journal.wait_accepts(|| {
        let r = probe.run(Tok::Flag(&admin), &["log", "-n", "1"]);
        (r.code, r.stderr)
    });

    let cli = Cli::at(&endpoint, &journal.ca, "login");
    let base = [("PACT_OIDC_ISSUER", issuer.as_str()), ("PACT_OIDC_RESOURCE", RESOURCE)];

    // Nothing cached yet: told to log in.
    let o = run(&cli, &[], &["log"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("pact login"), "{o:?}");

    // 1. Service account.
    let sa = [base[0], base[1], ("PACT_CLIENT_ID", CLIENT_ID), ("PACT_CLIENT_SECRET", CLIENT_SECRET)];
    let o = run(&cli, &sa, &["login", "--service-account"]);
    assert_eq!(o.code, 0, "pact login --service-account: {o:?}\n{}", idp.stderr_text());
    println!("1. service account: {}", o.stdout.trim());
    let path = cache_path(&cli);
    assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700), "cache and directory modes");
    let c = read_cache(&cli);
    assert_eq!(c.get("version").u64(), 1);
    assert_eq!(c.get("default_server").str(), endpoint);
    let e = cached(&cli, &endpoint);
    assert_eq!((e.get("idp_issuer").str(), e.get("client_id").str()), (issuer.as_str(), CLIENT_ID));
    assert!(e.get("expires_at").u64() > now_secs() + 60, "{e:?}");
    let sub = commit_as(&cli, &endpoint, "by-the-service-account");
    assert_eq!(sub, CLIENT_ID);
    println!("   pact log and pact commit used the cache; the commit's author is {sub}");
    // A bad secret is refused by the IdP: exit 2, and the cache keeps what it had.
    let bad = [base[0], base[1], ("PACT_CLIENT_ID", CLIENT_ID), ("PACT_CLIENT_SECRET", "wrong")];
    let o = run(&cli, &bad, &["login", "--service-account"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("invalid_client"), "{o:?}");
    assert_eq!(cached(&cli, &endpoint), e);

    // 2. Authorization code + PKCE, the test playing the browser. A busy callback port first:
    // a clear error naming --callback-port.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let o = run(&cli, &base, &["login", "--callback-port", &busy_port, "--client-id", "pact-cli"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains(&format!("127.0.0.1:{busy_port}")) && o.stderr.contains("--callback-port"), "{o:?}");
    drop(busy);
    let port = free_port();
    let mut login = Running::start(
        &cli,
        &base,
        &["login", "--callback-port", &port.to_string(), "--client-id", "pact-cli", "--timeout", "60"],
    );
    let url = login.line("the authorization URL", |l| l.trim_start().starts_with(&format!("{issuer}/auth?")));
    let url = url.trim().to_string();
    let q: BTreeMap<String, String> = url
        .split_once('?')
        .unwrap()
        .1
        .split('&')
        .map(|p| p.split_once('=').unwrap())
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace("%2F", "/")))
        .collect();
    assert_eq!(q["redirect_uri"], format!("http://localhost:{port}/callback"), "{url}");
    assert_eq!((q["code_challenge_method"].as_str(), q["client_id"].as_str()), ("S256", "pact-cli"), "{url}");
    assert_eq!(q["code_challenge"].len(), 43, "{url}");
    assert!(q["state"].len() >= 22, "{url}");
    let mut browser = Browser::default();
    let callback = match browser.walk(
        &url,
        &format!("http://localhost:{port}/callback"),
        &[("login", "alice"), ("password", "anything")],
    ) {
        Landing::Redirect(u) => u,
        Landing::Page(p) => panic!("the IdP did not redirect to the callback: {p}\n{:#?}", browser.trail),
    };
    assert!(callback.contains("code=") && callback.contains("state="), "{callback}");
    // A callback with another state (a forged or stale one) is refused; the CLI waits on.
    let state = &q["state"];
    let forged = callback.replace(&format!("state={state}"), "state=forged");
    assert_ne!(forged, callback);
    let a = browse(&forged).unwrap();
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("state mismatch"), "{}", a.body);
    login.line("the state mismatch warning", |l| l.contains("state mismatch"));
    assert!(login.still_running(), "pact login gave up on a forged callback");
    // The real one.
    let a = browse(&callback).unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("logged in"), "{}", a.body);
    let o = login.finish();
    assert_eq!(o.code, 0, "pact login: {o:?}\n{}", idp.stderr_text());
    println!("2. authorization code: {}", o.stdout.trim());
    let e = cached(&cli, &endpoint);
    assert_eq!(claims(e.get("access_token").str()).get("sub").str(), "alice");
    assert_eq!(e.get("client_id").str(), "pact-cli");
    assert!(e.opt("refresh_token").is_some(), "a refresh token is cached: {e:?}");
    assert_eq!(commit_as(&cli, &endpoint, "by-alice"), "alice");

    // 3. Device code, the test entering the user code.
    let mut login =
        Running::start(&cli, &base, &["login", "--device-code", "--client-id", "pact-cli", "--timeout", "60"]);
    let code_line = login.line("the user code", |l| l.trim_start().starts_with("code:"));
    let user_code = code_line.trim().trim_start_matches("code:").trim().to_string();
    let uri_line = login.line("the verification URL", |l| l.trim_start().starts_with("(or open "));
    let complete =
        uri_line.trim().trim_start_matches("(or open ").split_whitespace().next().unwrap().trim_end_matches(',');
    assert!(complete.contains(&user_code), "{complete} carries {user_code}");
    let mut browser = Browser::default();
    match browser.walk(complete, "http://never/", &[("login", "bob"), ("password", "x")]) {
        Landing::Page(p) => assert!(!p.contains("There was an error"), "device pages: {p}"),
        Landing::Redirect(u) => panic!("unexpected redirect to {u}"),
    }
    let o = login.finish();
    assert_eq!(o.code, 0, "pact login --device-code: {o:?}\n{}", idp.stderr_text());
    println!("3. device code ({user_code}): {}", o.stdout.trim());
    let e = cached(&cli, &endpoint);
    assert_eq!(claims(e.get("access_token").str()).get("sub").str(), "bob");
    assert_eq!(commit_as(&cli, &endpoint, "by-bob"), "bob");

    // 4. Silent refresh: the cached access token "expired" a minute ago.
    let before = std::fs::read_to_string(&path).unwrap();
    let old_access = e.get("access_token").str().to_string();
    let old_refresh = e.get("refresh_token").str().to_string();
    let stamp = format!("\"expires_at\":{}", e.get("expires_at").u64());
    assert!(before.contains(&stamp), "{before}");
    std::fs::write(&path, before.replace(&stamp, &format!("\"expires_at\":{}", now_secs() - 60))).unwrap();
    assert_eq!(mode(&path), 0o600);
    let o = run(&cli, &[], &["log", "-n", "1"]);
    assert_eq!(o.code, 0, "pact log with an expired cached token: {o:?}\n{}", idp.stderr_text());
    let e = cached(&cli, &endpoint);
    assert_ne!(e.get("access_token").str(), old_access, "the access token was refreshed");
    assert!(e.get("expires_at").u64() > now_secs() + 60, "{e:?}");
    assert_eq!(mode(&path), 0o600, "the refreshed cache keeps its mode");
    assert_eq!(claims(e.get("access_token").str()).get("sub").str(), "bob");
    println!("4. silent refresh: a new access token for bob, valid until {}", e.get("expires_at").u64());
    // A refresh the IdP refuses: exit 2, run pact login.
    let text = std::fs::read_to_string(&path).unwrap();
    let stamp = format!("\"expires_at\":{}", e.get("expires_at").u64());
    let rt = e.get("refresh_token").str();
    std::fs::write(&path, text.replace(&stamp, "\"expires_at\":1").replace(rt, "not-a-refresh-token")).unwrap();
    let o = run(&cli, &[], &["log", "-n", "1"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("invalid_grant") && o.stderr.contains("run `pact login`"), "{o:?}");
    std::fs::write(&path, &text).unwrap();

    // 5. Fail closed.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&cli, &[], &["log", "-n", "1"]);
    assert_eq!(o.code, 2, "a cache readable by others must be refused: {o:?}");
    assert!(o.stderr.contains(&path.display().to_string()) && o.stderr.contains("pact login"), "{o:?}");
    println!("5. mode 0644: {}", o.stderr.trim());
    // --token does not need the cache.
    let o = run(&cli, &[], &["--token", &admin, "log", "-n", "1"]);
    assert_eq!(o.code, 0, "{o:?}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "{\"version\":1,\"servers\":{").unwrap();
    let o = run(&cli, &[], &["log", "-n", "1"]);
    assert_eq!(o.code, 2, "a corrupt cache must be refused: {o:?}");
    assert!(o.stderr.contains("corrupt") && o.stderr.contains("pact login"), "{o:?}");
    println!("   corrupt: {}", o.stderr.trim());
    std::fs::write(&path, &text).unwrap();
    assert_eq!(run(&cli, &[], &["log", "-n", "1"]).code, 0);

    // Logout with the IdP up: the entry goes, and the refresh token no longer works.
    let refresh = cached(&cli, &endpoint).get("refresh_token").str().to_string();
    assert_ne!(refresh, old_refresh, "the IdP rotated the refresh token on refresh");
    let o = run(&cli, &base, &["logout"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("revoked"), "{o:?}");
    println!("   logout: {}", o.stdout.trim());
    assert!(!path.exists() || read_cache(&cli).get("servers").opt(&endpoint).is_none());
    let (code, v) = idp.token_request(
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh), ("client_id", "pact-cli")],
        None,
    );
    assert_eq!((code, v.get("error").str()), (400, "invalid_grant"), "the revoked refresh token: {v:?}");
    let o = run(&cli, &[], &["log"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("pact login"), "{o:?}");

    // Logout with the IdP down: the entry goes all the same.
    assert_eq!(run(&cli, &sa, &["login", "--service-account"]).code, 0);
    idp.stop();
    let o = run(&cli, &base, &["logout"]);
    assert_eq!(o.code, 0, "logout with the IdP down: {o:?}");
    assert!(o.stderr.contains("could not revoke"), "{o:?}");
    println!("   logout, IdP down: {} / {}", o.stdout.trim(), o.stderr.trim());
    assert!(!path.exists() || read_cache(&cli).get("servers").opt(&endpoint).is_none(), "the entry is gone");
    let o = run(&cli, &[], &["log"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("run `pact login`"), "{o:?}");
    println!("   afterwards pact log: {}", o.stderr.trim());
    // Logging in with the IdP down: exit 5, unreachable.
    let o = run(&cli, &sa, &["login", "--service-account"]);
    assert_eq!(o.code, 5, "{o:?}");
    assert!(o.stderr.contains("unreachable"), "{o:?}");

    journal.proc.kill();
}
