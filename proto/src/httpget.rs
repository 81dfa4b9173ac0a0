//! A small, bounded HTTP/1.1 client for the few exchanges pact makes itself: GETs of an OpenID
//! provider's discovery document and its JWKS (token verification on the journal and on every
//! agent), and form POSTs to its token, device-authorization and revocation endpoints (`pact
//! login`, `pact logout`, the CLI's silent token refresh), and JSON POSTs to an OPA policy
//! endpoint (the journal's policy engine, [`post_json`]). Blocking, one request per connection
//! (`Connection: close`), no redirects, no cookies, no proxies: enough for a key endpoint, small
//! enough for the agent's image, and no async runtime.
//!
//! Limits: [`MAX_BODY`] bytes of body, [`MAX_HEAD`] bytes of status line and headers, and a
//! deadline for the whole exchange. `https://` verifies the server against the CA bundle
//! given (the IdP's CA, or the system bundle [`SYSTEM_CA_BUNDLE`]); `http://` is accepted for
//! a provider on loopback or inside a trusted management network, as the deployment guide's
//! Dex example is.
//!
//! [`get`] wants a 200 and returns its body; [`fetch`] and [`post_form`] return any answer
//! ([`Response`]: status and body, since an OAuth error comes as a 400 with a JSON body) and
//! say how they failed ([`HttpError`]: unreachable, timed out, or something else).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest body accepted (a JWKS with a handful of RSA keys is a few KiB).
pub const MAX_BODY: usize = 1 << 20;
/// Largest status line plus headers accepted.
pub const MAX_HEAD: usize = 16 << 10;
/// Debian's bundle of the system's trusted CAs (package ca-certificates).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A parsed `http://` or `https://` URL: what a GET needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{url:?}: expected an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path };
        if authority.contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("{url:?}: unexpected {after:?} after the host")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!("{url:?}: the path contains spaces or control characters"));
        }
        Ok(Url { https, host, port, path })
    }
}

/// A TLS client configuration trusting the certificates in `bundle` (PEM; certificates that
/// cannot be used are skipped, as system bundles may carry some).
pub fn tls_for_bundle(bundle: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let certs = crate::tls::load_certs(bundle).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _skipped) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{}: no usable CA certificate", bundle.display()));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// GETs `url` and returns the body of a 200 answer. `tls` is required for `https://`.
pub fn get(url: &str, tls: Option<&Arc<rustls::ClientConfig>>, timeout: Duration) -> Result<Vec<u8>, String> {
    let r = fetch(url, tls, timeout).map_err(|e| e.message)?;
    match r.status {
        200 => Ok(r.body),
        code => Err(format!("{url}: {}", status_error(code, r.location.as_deref()))),
    }
}

/// How an exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection: the name did not resolve, or no address accepted one.
    Unreachable,
    /// Connected, but the exchange did not finish before the deadline.
    TimedOut,
    /// Anything else: a bad URL, TLS, an answer that is not HTTP or breaks a limit.
    Other,
}

/// A failed exchange: what kind of failure, and a message naming the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub kind: ErrorKind,
    pub message: String,
}

impl HttpError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> HttpError {
        HttpError { kind, message: message.into() }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {}

/// An answer of any status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The `Location` header, if any (redirects are not followed).
    pub location: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy), for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GETs `url` and returns the answer, whatever its status. `tls` is required for `https://`.
pub fn fetch(url: &str, tls: Option<&Arc<rustls::ClientConfig>>, timeout: Duration) -> Result<Response, HttpError> {
    request(url, tls, "GET", &[], b"", timeout)
}

/// POSTs `form` as `application/x-www-form-urlencoded` to `url` (an OAuth token, device
/// authorization or revocation endpoint) and returns the answer, whatever its status.
/// `basic_auth` (a client id and secret) is sent as HTTP Basic, each part form-encoded first
/// as RFC 6749 §2.3.1 asks. `tls` is required for `https://`.
pub fn post_form(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    form: &[(&str, &str)],
    basic_auth: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let body = form_encode(form);
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded".to_string())];
    if let Some((id, secret)) = basic_auth {
        let pair = format!("{}:{}", url_encode(id), url_encode(secret));
        headers.push(("Authorization", format!("Basic {}", base64(pair.as_bytes()))));
    }
    request(url, tls, "POST", &headers, body.as_bytes(), timeout)
}

/// POSTs `json` (already encoded) as `application/json` to `url` (the journal's OPA policy
/// query) and returns the answer, whatever its status. The request body is bounded by
/// [`MAX_BODY`] like the answer's. `tls` is required for `https://`.
pub fn post_json(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    json: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    if json.len() > MAX_BODY {
        return Err(HttpError::new(
            ErrorKind::Other,
            format!("{url}: request body of {} bytes is over the {MAX_BODY}-byte limit", json.len()),
        ));
    }
    request(url, tls, "POST", &[("Content-Type", "application/json".to_string())], json, timeout)
}

/// One request on a fresh connection, bounded by `timeout` as a whole.
fn request(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    use ErrorKind::*;
    let u = Url::parse(url).map_err(|e| HttpError::new(Other, e))?;
    let deadline = Instant::now() + timeout;
    let addrs: Vec<_> = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| HttpError::new(Unreachable, format!("{url}: cannot resolve {}: {e}", u.host)))?
        .collect();
    let mut last = HttpError::new(Unreachable, format!("{url}: {} has no address", u.host));
    let mut tcp = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = HttpError::new(TimedOut, format!("{url}: connect {a}: timed out"));
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = HttpError::new(Unreachable, format!("{url}: connect {a}: {e}")),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let io = |e: std::io::Error| HttpError::new(Other, format!("{url}: {e}"));
    tcp.set_read_timeout(Some(left)).map_err(io)?;
    tcp.set_write_timeout(Some(left)).map_err(io)?;
    // The port too when it is not the scheme's default (RFC 9110 §7.2): an IdP builds the
    // URLs in its discovery document from this header.
    let name = if u.host.contains(':') { format!("[{}]", u.host) } else { u.host.clone() };
    let host_header = if u.port == if u.https { 443 } else { 80 } { name } else { format!("{name}:{}", u.port) };
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json\r\nUser-Agent: pact/{}\r\nConnection: close\r\n",
        u.path,
        crate::VERSION
    );
    for (k, v) in headers {
        if v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(HttpError::new(Other, format!("{url}: header {k} contains a line break")));
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" || !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    let at = |e: HttpError| HttpError { message: format!("{url}: {}", e.message), ..e };
    let raw = if u.https {
        let tls = tls.ok_or_else(|| HttpError::new(Other, format!("{url}: https needs a CA bundle")))?;
        let name = rustls_pki_types::ServerName::try_from(u.host.clone())
            .map_err(|e| HttpError::new(Other, format!("{url}: {} is not a valid TLS server name: {e}", u.host)))?;
        let conn = rustls::ClientConnection::new(tls.clone(), name)
            .map_err(|e| HttpError::new(Other, format!("{url}: TLS: {e}")))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        exchange(&mut s, &req, deadline).map_err(at)?
    } else {
        let mut s = tcp;
        exchange(&mut s, &req, deadline).map_err(at)?
    };
    parse_answer(&raw).map_err(|e| HttpError::new(Other, format!("{url}: {e}")))
}

fn exchange<S: Read + Write>(s: &mut S, request: &[u8], deadline: Instant) -> Result<Vec<u8>, HttpError> {
    let failed = |what: &str, e: std::io::Error| {
        let kind = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ErrorKind::TimedOut,
            _ => ErrorKind::Other,
        };
        HttpError::new(kind, format!("{what}: {e}"))
    };
    s.write_all(request).map_err(|e| failed("send", e))?;
    s.flush().map_err(|e| failed("send", e))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if Instant::now() > deadline {
            return Err(HttpError::new(ErrorKind::TimedOut, "timed out"));
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_HEAD + MAX_BODY + 64 * 1024 {
                    return Err(HttpError::new(
                        ErrorKind::Other,
                        format!("answer larger than {} bytes", MAX_HEAD + MAX_BODY),
                    ));
                }
            }
            // A TLS peer that closes without close_notify: what came is what there is.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed("receive", e)),
        }
    }
    Ok(out)
}

/// The body of a 200 answer (Content-Length, chunked, or up to the close); any other status
/// is an error.
pub fn parse_response(raw: &[u8]) -> Result<Vec<u8>, String> {
    let r = parse_answer(raw)?;
    match r.status {
        200 => Ok(r.body),
        code => Err(status_error(code, r.location.as_deref())),
    }
}

fn status_error(code: u16, location: Option<&str>) -> String {
    let to = location.map(|l| format!(" (to {l}; redirects are not followed)")).unwrap_or_default();
    format!("HTTP {code}{to}")
}

/// Status line, headers, then the body (Content-Length, chunked, or up to the close), of an
/// answer of any status.
pub fn parse_answer(raw: &[u8]) -> Result<Response, String> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        if raw.len() > MAX_HEAD {
            "headers too long".to_string()
        } else {
            "incomplete answer".to_string()
        }
    })?;
    if head_end > MAX_HEAD {
        return Err("headers too long".into());
    }
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code: u16 = status
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.x answer: {:?}", status.chars().take(60).collect::<String>()))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut location = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { return Err(format!("bad header line {l:?}")) };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "content-length" => length = Some(v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "location" => location = Some(v.to_string()),
            _ => {}
        }
    }
    let rest = &raw[head_end + 4..];
    // No body, whatever the headers say (RFC 9110 §6.4.1).
    let bodiless = code == 204 || code == 304 || (100..200).contains(&code);
    let body = if bodiless {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(format!("body of {n} bytes is over the {MAX_BODY}-byte limit"));
        }
        if rest.len() < n {
            return Err(format!("body cut short: {} of {n} bytes", rest.len()));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > MAX_BODY {
        return Err(format!("body over the {MAX_BODY}-byte limit"));
    }
    Ok(Response { status: code, location, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or("chunked body cut short")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if out.len() + size > MAX_BODY {
            return Err(format!("body over the {MAX_BODY}-byte limit"));
        }
        if rest.len() < size + 2 {
            return Err("chunked body cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `application/x-www-form-urlencoded` (RFC 6749 appendix B): each name and value
/// percent-encoded, pairs joined with `&`.
pub fn form_encode(form: &[(&str, &str)]) -> String {
    form.iter().map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v))).collect::<Vec<_>>().join("&")
}

/// Percent-encodes everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`):
/// safe in a query string, a form body and a path segment alike.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

use jwt_simple::reexports::ct_codecs::{Base64, Base64UrlSafeNoPadding, Decoder, Encoder};

/// Standard base64 with padding (HTTP Basic authentication).
fn base64(data: &[u8]) -> String {
    Base64::encode_to_string(data).unwrap_or_default()
}

/// Base64url without padding (RFC 4648 §5): PKCE verifiers and challenges, JWT parts.
pub fn base64url(data: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(data).unwrap_or_default()
}

/// Decodes base64url, with or without padding (a JWT's parts); None for anything else.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    Base64UrlSafeNoPadding::decode_to_vec(text.trim_end_matches('='), None).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://idp.example:8443/realms/hpc/.well-known/openid-configuration").unwrap();
        assert_eq!((u.https, u.host.as_str(), u.port), (true, "idp.example", 8443));
        assert_eq!(u.path, "/realms/hpc/.well-known/openid-configuration");
        let u = Url::parse("http://127.0.0.1").unwrap();
        assert_eq!((u.https, u.port, u.path.as_str()), (false, 80, "/"));
        let u = Url::parse("https://[::1]/jwks?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 443, "/jwks?x=1"));
        for bad in ["ftp://x/", "https://", "http://a:b/", "http://u:p@h/", "http://h/a b"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(ok).unwrap(), b"{}");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), b"{\"a\":1}");
        let to_close = b"HTTP/1.0 200 OK\r\n\r\nabc";
        assert_eq!(parse_response(to_close).unwrap(), b"abc");
        let e = parse_response(b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere/\r\n\r\n").unwrap_err();
        assert!(e.contains("302") && e.contains("elsewhere"), "{e}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").unwrap_err().contains("cut short"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn get_over_loopback() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).unwrap();
            let req = String::from_utf8_lossy(&req[..n]).to_string();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"keys\":[]}").unwrap();
            req
        });
        let body = get(&format!("http://127.0.0.1:{port}/jwks"), None, Duration::from_secs(5)).unwrap();
        assert_eq!(body, b"{\"keys\":[]}");
        let req = t.join().unwrap();
        assert!(req.starts_with(&format!("GET /jwks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n")), "{req}");
        // Nothing listening: a clear error, not a hang.
        let e = get(&format!("http://127.0.0.1:{port}/jwks"), None, Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }
    #[test]
    fn answers_of_any_status() {
        let r = parse_answer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 26\r\n\r\n{\"error\":\"invalid_grant\"}\n")
            .unwrap();
        assert_eq!((r.status, r.text().trim()), (400, "{\"error\":\"invalid_grant\"}"));
        let r = parse_answer(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.location.as_deref()), (302, Some("/x")));
        // 204 has no body even when the server adds bytes; limits apply to every status.
        assert!(parse_answer(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().body.is_empty());
        assert!(parse_answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 99999999\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 400 x\r\nContent-Length: 9\r\n\r\nabc").unwrap_err().contains("cut short"));
    }

    #[test]
    fn encoders() {
        assert_eq!(url_encode("a b&c=d/é~-._"), "a%20b%26c%3Dd%2F%C3%A9~-._");
        assert_eq!(form_encode(&[("grant_type", "refresh_token"), ("x", "1+2")]), "grant_type=refresh_token&x=1%2B2");
        assert_eq!(form_encode(&[]), "");
        // RFC 4648 §10.
        for (raw, padded, url) in [
            ("", "", ""),
            ("f", "Zg==", "Zg"),
            ("fo", "Zm8=", "Zm8"),
            ("foo", "Zm9v", "Zm9v"),
            ("foob", "Zm9vYg==", "Zm9vYg"),
            ("fooba", "Zm9vYmE=", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), padded);
            assert_eq!(base64url(raw.as_bytes()), url);
            assert_eq!(base64url_decode(url).unwrap(), raw.as_bytes());
            assert_eq!(base64url_decode(padded).unwrap(), raw.as_bytes());
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        for bad in ["a", "ab+c", "ab/c", "a b", "Zm9vY"] {
            assert!(base64url_decode(bad).is_none(), "{bad}");
        }
    }

    /// Serves one connection: reads a whole request (head and Content-Length body), answers
    /// `answer`, and returns the request.
    fn serve_once(answer: &'static [u8]) -> (u16, std::thread::JoinHandle<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map(|v| v.parse::<usize>().unwrap())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(answer).unwrap();
            String::from_utf8_lossy(&req).to_string()
        });
        (port, t)
    }

    #[test]
    fn post_form_over_loopback() {
        let (port, t) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
        );
        let url = format!("http://127.0.0.1:{port}/token");
        let form = [("grant_type", "client_credentials"), ("resource", "urn:pact")];
        let r = post_form(&url, None, &form, Some(("svc:1", "s3cr&t")), Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{\"a\":1}"[..]));
        let req = t.join().unwrap();
        let body = "grant_type=client_credentials&resource=urn%3Apact";
        assert!(req.starts_with(&format!("POST /token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n")), "{req}");
        assert!(req.contains("\r\nContent-Type: application/x-www-form-urlencoded\r\n"), "{req}");
        assert!(req.contains(&format!("\r\nContent-Length: {}\r\n", body.len())), "{req}");
        // "svc%3A1:s3cr%26t" (each part form-encoded, RFC 6749 §2.3.1), base64.
        assert!(req.contains("\r\nAuthorization: Basic c3ZjJTNBMTpzM2NyJTI2dA==\r\n"), "{req}");
        assert!(req.ends_with(&format!("\r\n\r\n{body}")), "{req}");

        // An OAuth error is an answer, not a failure: its status and body come back.
        let (port, t) =
            serve_once(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 27\r\n\r\n{\"error\":\"invalid_client\"}\n");
        let url = format!("http://127.0.0.1:{port}/token");
        let r = post_form(&url, None, &[("a", "b")], None, Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 400);
        assert!(r.text().contains("invalid_client"));
        assert!(!t.join().unwrap().contains("Authorization"));

        // Nothing listening: unreachable, promptly.
        let e = post_form(&url, None, &[], None, Duration::from_secs(2)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
        assert!(e.message.contains("connect") && e.message.contains(&url), "{e}");
    }

    #[test]
    fn post_json_over_loopback() {
        let (port, t) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{\"result\":true}\n");
        let url = format!("http://127.0.0.1:{port}/v1/data/pact");
        let body = br#"{"input":{"a":1}}"#;
        let r = post_json(&url, None, body, Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.text().trim()), (200, "{\"result\":true}"));
        let req = t.join().unwrap();
        assert!(req.starts_with(&format!("POST /v1/data/pact HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n")), "{req}");
        assert!(req.contains("\r\nContent-Type: application/json\r\n"), "{req}");
        assert!(req.contains(&format!("\r\nContent-Length: {}\r\n", body.len())), "{req}");
        assert!(req.ends_with("\r\n\r\n{\"input\":{\"a\":1}}"), "{req}");
        // Too large a request is refused before connecting; nothing listening: unreachable.
        let e = post_json(&url, None, &vec![b' '; MAX_BODY + 1], Duration::from_secs(2)).unwrap_err();
        assert!(e.kind == ErrorKind::Other && e.message.contains("over the"), "{e}");
        let e = post_json(&url, None, b"{}", Duration::from_secs(2)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            drop(s);
        });
        let started = Instant::now();
        let e =
            post_form(&format!("http://127.0.0.1:{port}/t"), None, &[], None, Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_millis(1400), "took {:?}", started.elapsed());
        let e = fetch("ftp://x/", None, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Other);
        t.join().unwrap();
    }
}
