//! A small, bounded HTTP/1.1 GET for the few documents pact fetches itself: an OpenID
//! provider's discovery document and its JWKS (token verification on the journal and on
//! every agent). Blocking, one request per connection (`Connection: close`), no redirects, no
//! cookies, no proxies: enough for a key endpoint, small enough for the agent's image, and no
//! async runtime.
//!
//! Limits: [`MAX_BODY`] bytes of body, [`MAX_HEAD`] bytes of status line and headers, and a
//! deadline for the whole exchange. `https://` verifies the server against the CA bundle
//! given (the IdP's CA, or the system bundle [`SYSTEM_CA_BUNDLE`]); `http://` is accepted for
//! a provider on loopback or inside a trusted management network, as the deployment guide's
//! Dex example is.

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
    let u = Url::parse(url)?;
    let deadline = Instant::now() + timeout;
    let addrs: Vec<_> = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {}: {e}", u.host))?
        .collect();
    let mut last = format!("{url}: {} has no address", u.host);
    let mut tcp = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("{url}: connect {a}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    tcp.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    // The port too when it is not the scheme's default (RFC 9110 §7.2): an IdP builds the
    // URLs in its discovery document from this header.
    let name = if u.host.contains(':') { format!("[{}]", u.host) } else { u.host.clone() };
    let host_header = if u.port == if u.https { 443 } else { 80 } { name } else { format!("{name}:{}", u.port) };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json\r\nUser-Agent: pact/{}\r\nConnection: close\r\n\r\n",
        u.path,
        crate::VERSION
    );
    let raw = if u.https {
        let tls = tls.ok_or_else(|| format!("{url}: https needs a CA bundle"))?;
        let name = rustls_pki_types::ServerName::try_from(u.host.clone())
            .map_err(|e| format!("{url}: {} is not a valid TLS server name: {e}", u.host))?;
        let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(|e| format!("{url}: TLS: {e}"))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        exchange(&mut s, &request, deadline).map_err(|e| format!("{url}: {e}"))?
    } else {
        let mut s = tcp;
        exchange(&mut s, &request, deadline).map_err(|e| format!("{url}: {e}"))?
    };
    parse_response(&raw).map_err(|e| format!("{url}: {e}"))
}

fn exchange<S: Read + Write>(s: &mut S, request: &str, deadline: Instant) -> Result<Vec<u8>, String> {
    s.write_all(request.as_bytes()).map_err(|e| format!("send: {e}"))?;
    s.flush().map_err(|e| format!("send: {e}"))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_HEAD + MAX_BODY + 64 * 1024 {
                    return Err(format!("answer larger than {} bytes", MAX_HEAD + MAX_BODY));
                }
            }
            // A TLS peer that closes without close_notify: what came is what there is.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    Ok(out)
}

/// Status line, headers, then the body (Content-Length, chunked, or up to the close).
pub fn parse_response(raw: &[u8]) -> Result<Vec<u8>, String> {
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
    if code != 200 {
        let to = location.map(|l| format!(" (to {l}; redirects are not followed)")).unwrap_or_default();
        return Err(format!("HTTP {code}{to}"));
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
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
    Ok(body)
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
}
