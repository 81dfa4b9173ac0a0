//! Bearer tokens: the claims pact reads and the verifier every server uses.
//!
//! A token is an OIDC JWT. The journal and every agent verify it themselves (signature,
//! issuer, audience, expiry, not-before); nothing is trusted from the request body.
//! The role is read from the `pact_role` claim (a string); when absent, the first entry of
//! a `roles` or `groups` array claim that starts with `pact-` is used. A token with no
//! pact role is refused.
//!
//! Key sources ([`TokenVerifier`]):
//! - **JWKS** (production): RS256 and ES256 tokens, verified against the issuer's keys, from
//!   `jwks_url` or, without one, from the `jwks_uri` of the issuer's discovery document
//!   (`<issuer>/.well-known/openid-configuration`). Keys are cached by `kid`; a token with a
//!   `kid` not in the cache triggers one refresh (at most one per [`MIN_REFRESH`], so a flood
//!   of made-up `kid`s cannot turn into a flood of fetches), which is how a key rotation at
//!   the IdP is picked up.
//! - **HS256** only when an HMAC secret is configured (`hmac_secret`, `PACT_OIDC_HMAC_SECRET`,
//!   or the one `--dev` writes).
//!
//! Any other `alg` (`none` included) is refused; an HS256 token is never checked against an
//! RSA or EC key (the classic algorithm confusion): the header's `alg` picks the key type,
//! and jwt-simple checks the header against the key it is given.

use jwt_simple::prelude::*;
use std::fmt;

/// Default audience when none is configured (the deployment guide's journal audience).
pub const DEFAULT_AUDIENCE: &str = "pact";
/// Issuer that `--dev` tokens carry.
pub const DEV_ISSUER: &str = "pact-dev";
/// Clock skew tolerated on exp/nbf.
pub const CLOCK_SKEW_SECS: u64 = 30;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub principal: String,
    pub role: String,
    /// "human", "agent" or "service" (claim `principal_type`, default human).
    pub principal_type: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed(String),
    Rejected(String),
    NoRole,
    NoSubject,
    /// The token names a key (`kid`, or none) that the cached JWKS does not hold: refresh
    /// the keys ([`TokenVerifier::refresh`]) and verify again.
    UnknownKey(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => write!(f, "no bearer token (run `pact login`, or pass --token / PACT_TOKEN)"),
            AuthError::Malformed(e) => write!(f, "malformed token: {e}"),
            AuthError::Rejected(e) => write!(f, "token rejected: {e}"),
            AuthError::NoRole => write!(f, "token carries no pact role (claim pact_role, roles or groups)"),
            AuthError::NoSubject => write!(f, "token has no subject (sub)"),
            AuthError::UnknownKey(k) => {
                write!(f, "token rejected: signed with key {k:?}, which the issuer's JWKS does not list")
            }
        }
    }
}

impl std::error::Error for AuthError {}

/// Verifies HS256 tokens for one issuer and audience.
#[derive(Clone)]
pub struct HmacVerifier {
    key: HS256Key,
    issuer: String,
    audience: String,
}

impl HmacVerifier {
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> HmacVerifier {
        HmacVerifier { key: HS256Key::from_bytes(secret), issuer: issuer.to_string(), audience: audience.to_string() }
    }

    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let token = well_formed(token)?;
        let opts = options(&self.issuer, &self.audience);
        let claims = self
            .key
            .verify_token::<serde_json::Map<String, serde_json::Value>>(token, Some(opts))
            .map_err(|e| classify(&e.to_string()))?;
        caller_from(claims)
    }

    /// Mints a token (used by `--dev` and tests).
    pub fn mint(&self, subject: &str, role: &str, valid_for_secs: u64) -> Result<String, String> {
        let mut custom = serde_json::Map::new();
        custom.insert("pact_role".into(), serde_json::Value::String(role.into()));
        let claims = Claims::with_custom_claims(custom, Duration::from_secs(valid_for_secs))
            .with_issuer(&self.issuer)
            .with_audience(&self.audience)
            .with_subject(subject);
        self.key.authenticate(claims).map_err(|e| e.to_string())
    }
}

/// Trimmed, non-empty, three parts.
fn well_formed(token: &str) -> Result<&str, AuthError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.split('.').count() != 3 {
        return Err(AuthError::Malformed("expected three dot-separated parts".into()));
    }
    Ok(token)
}

fn options(issuer: &str, audience: &str) -> VerificationOptions {
    VerificationOptions {
        allowed_issuers: Some(HashSet::from([issuer.to_string()])),
        allowed_audiences: Some(HashSet::from([audience.to_string()])),
        time_tolerance: Some(Duration::from_secs(CLOCK_SKEW_SECS)),
        ..Default::default()
    }
}

type CustomClaims = serde_json::Map<String, serde_json::Value>;

/// What every verified token must also carry: an expiry, a subject and a pact role.
fn caller_from(claims: JWTClaims<CustomClaims>) -> Result<Caller, AuthError> {
    if claims.expires_at.is_none() {
        return Err(AuthError::Rejected("token has no expiry (exp)".into()));
    }
    let principal = claims.subject.clone().filter(|s| !s.is_empty()).ok_or(AuthError::NoSubject)?;
    let role = role_from_claims(&claims.custom).ok_or(AuthError::NoRole)?;
    let principal_type = claims.custom.get("principal_type").and_then(|v| v.as_str()).unwrap_or("human").to_string();
    Ok(Caller { principal, role, principal_type })
}

/// Shortest time between two JWKS fetches triggered by unknown keys.
pub const MIN_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);
/// Time allowed for one discovery or JWKS fetch.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a [`TokenVerifier`] takes its keys from.
#[derive(Clone, Debug, Default)]
pub struct KeySources {
    pub issuer: String,
    pub audience: String,
    /// HS256 with this secret (development, tests, small sites).
    pub hmac_secret: Option<Vec<u8>>,
    /// RS256/ES256 against a JWKS: `Some(None)` discovers the JWKS from the issuer,
    /// `Some(Some(url))` fetches it from `url`; None accepts no asymmetric tokens.
    pub jwks: Option<Option<String>>,
    /// CA bundle for https fetches (None: the system bundle).
    pub ca_bundle: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct KeyCache {
    rsa: Vec<(Option<String>, RS256PublicKey)>,
    ec: Vec<(Option<String>, ES256PublicKey)>,
    fetched: Option<std::time::Instant>,
}

/// Verifies bearer tokens for one issuer and audience, from an HMAC secret, a JWKS, or both.
/// Shared between threads (`Arc`); the key cache is behind a lock held only to look up or
/// replace keys, never during a fetch.
pub struct TokenVerifier {
    issuer: String,
    audience: String,
    hmac: Option<HS256Key>,
    jwks: Option<Option<String>>,
    ca_bundle: Option<std::path::PathBuf>,
    keys: std::sync::RwLock<KeyCache>,
    /// Held during a fetch, so concurrent unknown keys make one fetch.
    fetching: std::sync::Mutex<()>,
}

impl TokenVerifier {
    pub fn new(src: KeySources) -> Result<TokenVerifier, String> {
        if src.issuer.is_empty() {
            return Err("token verification needs an issuer".into());
        }
        if src.hmac_secret.is_none() && src.jwks.is_none() {
            return Err(
                "token verification needs a key source: a JWKS (jwks_url or the issuer's discovery) or an HMAC secret"
                    .into(),
            );
        }
        Ok(TokenVerifier {
            issuer: src.issuer,
            audience: src.audience,
            hmac: src.hmac_secret.map(|s| HS256Key::from_bytes(&s)),
            jwks: src.jwks,
            ca_bundle: src.ca_bundle,
            keys: std::sync::RwLock::new(KeyCache::default()),
            fetching: std::sync::Mutex::new(()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Whether RS256/ES256 tokens are verified (against a JWKS).
    pub fn has_jwks(&self) -> bool {
        self.jwks.is_some()
    }

    /// What this verifier accepts, for start-up messages.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        match &self.jwks {
            Some(Some(url)) => v.push(format!("RS256/ES256 from {url}")),
            Some(None) => v.push(format!("RS256/ES256 from {}'s discovery document", self.issuer)),
            None => {}
        }
        if self.hmac.is_some() {
            v.push("HS256 (configured secret)".into());
        }
        format!("{}; issuer {}, audience {}", v.join(" and "), self.issuer, self.audience)
    }

    /// Verifies against the cached keys; [`AuthError::UnknownKey`] asks for [`Self::refresh`].
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let token = well_formed(token)?;
        let meta = Token::decode_metadata(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let opts = options(&self.issuer, &self.audience);
        let kid = meta.key_id().map(str::to_string);
        let claims = match meta.algorithm() {
            "HS256" => {
                let Some(k) = &self.hmac else {
                    return Err(AuthError::Rejected(
                        "HS256 tokens are not accepted here (no HMAC secret is configured)".into(),
                    ));
                };
                k.verify_token::<CustomClaims>(token, Some(opts))
            }
            alg @ ("RS256" | "ES256") => {
                if self.jwks.is_none() {
                    return Err(AuthError::Rejected(format!(
                        "{alg} tokens are not accepted here (no JWKS is configured)"
                    )));
                }
                let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
                let unknown = || AuthError::UnknownKey(kid.clone().unwrap_or_default());
                if alg == "RS256" {
                    let k = pick(&keys.rsa, kid.as_deref()).ok_or_else(unknown)?;
                    k.verify_token::<CustomClaims>(token, Some(opts))
                } else {
                    let k = pick(&keys.ec, kid.as_deref()).ok_or_else(unknown)?;
                    k.verify_token::<CustomClaims>(token, Some(opts))
                }
            }
            other => {
                return Err(AuthError::Rejected(format!(
                    "algorithm {other:?} is not accepted (RS256, ES256, or HS256 with a configured secret)"
                )))
            }
        }
        .map_err(|e| classify(&e.to_string()))?;
        caller_from(claims)
    }

    /// [`Self::verify`], refreshing the keys once (blocking) on an unknown key. For threads
    /// that may block; an async executor runs [`Self::refresh`] on its blocking pool instead.
    pub fn verify_blocking(&self, token: &str) -> Result<Caller, AuthError> {
        match self.verify(token) {
            Err(AuthError::UnknownKey(_)) => {
                let _ = self.refresh();
                self.verify(token).map_err(|e| match e {
                    AuthError::UnknownKey(k) => {
                        AuthError::Rejected(format!("signed with key {k:?}, which the issuer's JWKS does not list"))
                    }
                    e => e,
                })
            }
            r => r,
        }
    }

    /// Fetches the JWKS again (discovery first when no URL is configured), unless a fetch
    /// happened less than [`MIN_REFRESH`] ago. Blocking: network I/O with [`FETCH_TIMEOUT`].
    pub fn refresh(&self) -> Result<usize, String> {
        let Some(jwks) = &self.jwks else { return Ok(0) };
        let _one = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.keys.read().unwrap_or_else(|e| e.into_inner()).fetched {
            if t.elapsed() < MIN_REFRESH {
                return Err(format!(
                    "keys were fetched {} ms ago; not again before {} s",
                    t.elapsed().as_millis(),
                    MIN_REFRESH.as_secs()
                ));
            }
        }
        let started = std::time::Instant::now();
        let result = self.fetch(jwks.as_deref());
        let mut cache = self.keys.write().unwrap_or_else(|e| e.into_inner());
        cache.fetched = Some(started);
        let (rsa, ec) = result?;
        let n = rsa.len() + ec.len();
        cache.rsa = rsa;
        cache.ec = ec;
        Ok(n)
    }

    #[allow(clippy::type_complexity)]
    fn fetch(
        &self,
        url: Option<&str>,
    ) -> Result<(Vec<(Option<String>, RS256PublicKey)>, Vec<(Option<String>, ES256PublicKey)>), String> {
        let needs_tls = url.map_or(self.issuer.starts_with("https://"), |u| u.starts_with("https://"));
        let tls = if needs_tls || url.is_none() {
            let bundle = self.ca_bundle.clone().unwrap_or_else(|| crate::httpget::SYSTEM_CA_BUNDLE.into());
            crate::httpget::tls_for_bundle(&bundle).ok()
        } else {
            None
        };
        let jwks_url = match url {
            Some(u) => u.to_string(),
            None => {
                let d = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
                let body = crate::httpget::get(&d, tls.as_ref(), FETCH_TIMEOUT)?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| format!("{d}: not a JSON document: {e}"))?;
                let uri = doc.get("jwks_uri").and_then(|v| v.as_str()).ok_or_else(|| format!("{d}: no jwks_uri"))?;
                uri.to_string()
            }
        };
        let tls = if jwks_url.starts_with("https://") && tls.is_none() {
            let bundle = self.ca_bundle.clone().unwrap_or_else(|| crate::httpget::SYSTEM_CA_BUNDLE.into());
            Some(crate::httpget::tls_for_bundle(&bundle)?)
        } else {
            tls
        };
        let body = crate::httpget::get(&jwks_url, tls.as_ref(), FETCH_TIMEOUT)?;
        parse_jwks(&body).map_err(|e| format!("{jwks_url}: {e}"))
    }
}

/// The key named `kid`; a token without `kid` may use the only key there is.
fn pick<'a, K>(keys: &'a [(Option<String>, K)], kid: Option<&str>) -> Option<&'a K> {
    match kid {
        Some(kid) => keys.iter().find(|(k, _)| k.as_deref() == Some(kid)).map(|(_, key)| key),
        None if keys.len() == 1 => keys.first().map(|(_, key)| key),
        None => None,
    }
}

/// The RS256 and ES256 signing keys of a JWKS document (`{"keys": [...]}`). Keys of other
/// types, or marked for encryption, are skipped; a document with none usable is an error.
#[allow(clippy::type_complexity)]
pub fn parse_jwks(
    body: &[u8],
) -> Result<(Vec<(Option<String>, RS256PublicKey)>, Vec<(Option<String>, ES256PublicKey)>), String> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not a JSON document: {e}"))?;
    let keys = doc.get("keys").and_then(|k| k.as_array()).ok_or("no \"keys\" array")?;
    let (mut rsa, mut ec) = (Vec::new(), Vec::new());
    let mut skipped = Vec::new();
    for k in keys {
        let kid = k.get("kid").and_then(|v| v.as_str()).map(str::to_string);
        if k.get("use").and_then(|v| v.as_str()).is_some_and(|u| u != "sig") {
            continue;
        }
        let text = k.to_string();
        let kty = k.get("kty").and_then(|v| v.as_str()).unwrap_or("");
        let alg = k.get("alg").and_then(|v| v.as_str());
        match (kty, alg) {
            ("RSA", None | Some("RS256")) => match RS256PublicKey::from_jwk(&text) {
                Ok(key) => rsa.push((kid, key)),
                Err(e) => skipped.push(format!("{kid:?}: {e}")),
            },
            ("EC", None | Some("ES256")) if k.get("crv").and_then(|v| v.as_str()) == Some("P-256") => {
                match ES256PublicKey::from_jwk(&text) {
                    Ok(key) => ec.push((kid, key)),
                    Err(e) => skipped.push(format!("{kid:?}: {e}")),
                }
            }
            _ => {}
        }
    }
    if rsa.is_empty() && ec.is_empty() {
        let why = if skipped.is_empty() { String::new() } else { format!(" (unusable: {})", skipped.join("; ")) };
        return Err(format!("no RS256 or ES256 signing key{why}"));
    }
    Ok((rsa, ec))
}

fn classify(msg: &str) -> AuthError {
    let lower = msg.to_ascii_lowercase();
    let malformed = ["base64", "json", "decod", "header", "encoding", "invalid input"];
    if malformed.iter().any(|m| lower.contains(m)) {
        AuthError::Malformed(msg.to_string())
    } else {
        AuthError::Rejected(msg.to_string())
    }
}

fn role_from_claims(custom: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    if let Some(r) = custom.get("pact_role").and_then(|v| v.as_str()) {
        if !r.is_empty() {
            return Some(r.to_string());
        }
    }
    for claim in ["roles", "groups"] {
        if let Some(list) = custom.get(claim).and_then(|v| v.as_array()) {
            if let Some(r) = list.iter().filter_map(|v| v.as_str()).find(|s| s.starts_with("pact-")) {
                return Some(r.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> HmacVerifier {
        HmacVerifier::new(b"0123456789abcdef0123456789abcdef", "iss", "aud")
    }

    #[test]
    fn minted_token_verifies() {
        let v = verifier();
        let t = v.mint("alice", "pact-platform-admin", 60).unwrap();
        let c = v.verify(&t).unwrap();
        assert_eq!(c.principal, "alice");
        assert_eq!(c.role, "pact-platform-admin");
        assert_eq!(c.principal_type, "human");
    }

    #[test]
    fn wrong_key_issuer_audience_and_garbage_are_refused() {
        let t = verifier().mint("alice", "pact-platform-admin", 60).unwrap();
        let other_key = HmacVerifier::new(b"another-secret-another-secret-xx", "iss", "aud");
        assert!(matches!(other_key.verify(&t), Err(AuthError::Rejected(_))));
        let other_iss = HmacVerifier::new(b"0123456789abcdef0123456789abcdef", "nope", "aud");
        assert!(other_iss.verify(&t).is_err());
        let other_aud = HmacVerifier::new(b"0123456789abcdef0123456789abcdef", "iss", "nope");
        assert!(other_aud.verify(&t).is_err());
        assert_eq!(verifier().verify(""), Err(AuthError::Missing));
        assert!(matches!(verifier().verify("garbage"), Err(AuthError::Malformed(_))));
        assert!(verifier().verify("a.b.c").is_err());
    }

    #[test]
    fn expired_token_is_refused() {
        let v = verifier();
        let mut custom = serde_json::Map::new();
        custom.insert("pact_role".into(), "pact-platform-admin".into());
        let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(1))
            .with_issuer("iss")
            .with_audience("aud")
            .with_subject("bob");
        let past = Clock::now_since_epoch() - Duration::from_secs(3600);
        claims.issued_at = Some(past);
        claims.invalid_before = Some(past);
        claims.expires_at = Some(past + Duration::from_secs(60));
        let t = v.key.authenticate(claims).unwrap();
        assert!(matches!(v.verify(&t), Err(AuthError::Rejected(_))));
    }

    #[test]
    fn role_falls_back_to_roles_and_groups() {
        let mut m = serde_json::Map::new();
        m.insert("groups".into(), serde_json::json!(["staff", "pact-ops-ml"]));
        assert_eq!(role_from_claims(&m).as_deref(), Some("pact-ops-ml"));
        m.insert("pact_role".into(), "pact-viewer-ml".into());
        assert_eq!(role_from_claims(&m).as_deref(), Some("pact-viewer-ml"));
        assert_eq!(role_from_claims(&serde_json::Map::new()), None);
    }

    /// Serves `bodies` in turn (one per connection) on loopback: a stand-in JWKS endpoint
    /// over real HTTP. Returns the URL and how many requests were served.
    fn jwks_server(bodies: Vec<String>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", l.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for (i, stream) in l.incoming().enumerate() {
                let Ok(mut s) = stream else { return };
                let mut req = [0u8; 2048];
                let _ = s.read(&mut req);
                let body = &bodies[i.min(bodies.len() - 1)];
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        (url, served)
    }

    fn jwks_of(keys: &[String]) -> String {
        format!("{{\"keys\":[{}]}}", keys.join(","))
    }

    fn claims(role: &str) -> JWTClaims<CustomClaims> {
        let mut custom = serde_json::Map::new();
        custom.insert("pact_role".into(), role.into());
        Claims::with_custom_claims(custom, Duration::from_secs(300))
            .with_issuer("iss")
            .with_audience("aud")
            .with_subject("alice")
    }

    fn jwks_verifier(url: &str, hmac: Option<&[u8]>) -> TokenVerifier {
        TokenVerifier::new(KeySources {
            issuer: "iss".into(),
            audience: "aud".into(),
            hmac_secret: hmac.map(<[u8]>::to_vec),
            jwks: Some(Some(url.to_string())),
            ca_bundle: None,
        })
        .unwrap()
    }

    #[test]
    fn jwks_tokens_verify_and_rotation_is_picked_up_on_an_unknown_kid() {
        let k1 = ES256KeyPair::generate().with_key_id("k1");
        let k2 = ES256KeyPair::generate().with_key_id("k2");
        let rsa = RS256KeyPair::generate(2048).unwrap().with_key_id("r1");
        let first = jwks_of(&[k1.public_key().to_jwk(), rsa.public_key().to_jwk()]);
        let rotated = jwks_of(&[k2.public_key().to_jwk()]);
        let (url, served) = jwks_server(vec![first, rotated]);
        let v = jwks_verifier(&url, None);

        let t1 = k1.sign(claims("pact-platform-admin")).unwrap();
        // Nothing cached yet: the verifier asks for a refresh, and then accepts.
        assert_eq!(v.verify(&t1), Err(AuthError::UnknownKey("k1".into())));
        assert_eq!(v.verify_blocking(&t1).unwrap().role, "pact-platform-admin");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
        let tr = rsa.sign(claims("pact-ops-ml")).unwrap();
        assert_eq!(v.verify(&tr).unwrap().role, "pact-ops-ml");

        // The IdP rotates to k2. A k2 token is unknown; a refresh inside MIN_REFRESH is
        // refused (no fetch storm), so it stays refused until the interval has passed.
        let t2 = k2.sign(claims("pact-viewer-ml")).unwrap();
        assert!(matches!(v.verify_blocking(&t2), Err(AuthError::Rejected(_))));
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
        v.keys.write().unwrap().fetched = Some(std::time::Instant::now() - MIN_REFRESH);
        assert_eq!(v.verify_blocking(&t2).unwrap().role, "pact-viewer-ml");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
        // The retired key is gone with the old document.
        assert!(v.verify(&t1).is_err());
    }

    #[test]
    fn algorithm_attacks_are_refused() {
        let k = ES256KeyPair::generate().with_key_id("k1");
        let rsa = RS256KeyPair::generate(2048).unwrap().with_key_id("r1");
        let (url, _) = jwks_server(vec![jwks_of(&[k.public_key().to_jwk(), rsa.public_key().to_jwk()])]);
        let v = jwks_verifier(&url, None);
        v.refresh().unwrap();
        let b64 = |b: &[u8]| Base64UrlSafeNoPadding::encode_to_string(b).unwrap();
        let payload = b64(serde_json::to_string(&claims("pact-platform-admin")).unwrap().as_bytes());

        // alg none, with and without a signature.
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        assert!(matches!(v.verify(&none), Err(AuthError::Rejected(m)) if m.contains("none")));
        // HS256 "signed" with the RSA public key's bytes: no HMAC secret here, so refused
        // before any key is tried.
        let pem = rsa.public_key().to_pem().unwrap();
        let confused =
            HS256Key::from_bytes(pem.as_bytes()).with_key_id("r1").authenticate(claims("pact-platform-admin")).unwrap();
        assert!(matches!(v.verify(&confused), Err(AuthError::Rejected(m)) if m.contains("HS256")));
        // Even where HS256 is allowed, the secret is the configured one, never a public key.
        let with_hmac = jwks_verifier(&url, Some(b"0123456789abcdef0123456789abcdef"));
        assert!(matches!(with_hmac.verify(&confused), Err(AuthError::Rejected(_))));
        // A token whose header claims ES256 but carries an RS256 signature.
        let rs = rsa.sign(claims("pact-platform-admin")).unwrap();
        let mut parts: Vec<&str> = rs.split('.').collect();
        let es_header = b64(br#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#);
        parts[0] = &es_header;
        assert!(v.verify(&parts.join(".")).is_err());
        // A forged role: the payload changed after signing.
        let good = k.sign(claims("pact-viewer-ml")).unwrap();
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        parts[1] = b64(serde_json::to_string(&claims("pact-platform-admin")).unwrap().as_bytes());
        assert!(matches!(v.verify(&parts.join(".")), Err(AuthError::Rejected(_))));
        // Wrong issuer, wrong audience, not yet valid.
        let wrong_iss = k.sign(claims("pact-ops-ml").with_issuer("other")).unwrap();
        assert!(v.verify(&wrong_iss).is_err());
        let wrong_aud = k.sign(claims("pact-ops-ml").with_audience("other")).unwrap();
        assert!(v.verify(&wrong_aud).is_err());
        let mut later = claims("pact-ops-ml");
        later.invalid_before = Some(Clock::now_since_epoch() + Duration::from_secs(3600));
        assert!(v.verify(&k.sign(later).unwrap()).is_err());
    }

    #[test]
    fn jwks_documents_are_checked() {
        assert!(parse_jwks(b"not json").is_err());
        assert!(parse_jwks(br#"{"keys":[]}"#).unwrap_err().contains("no RS256 or ES256"));
        let enc = r#"{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}"#;
        assert!(parse_jwks(enc.as_bytes()).is_err());
        let bad = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA","kid":"x"}]}"#;
        assert!(parse_jwks(bad.as_bytes()).unwrap_err().contains("unusable"));
        assert!(TokenVerifier::new(KeySources { issuer: "i".into(), ..Default::default() }).is_err());
    }
}
