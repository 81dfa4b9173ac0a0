//! Bearer tokens: the claims pact reads and the verifier every server uses.
//!
//! A token is an OIDC JWT. The journal and every agent verify it themselves (signature,
//! issuer, audience, expiry, not-before); nothing is trusted from the request body.
//! The role is read from the `pact_role` claim (a string); when absent, the first entry of
//! a `roles` or `groups` array claim that starts with `pact-` is used. A token with no
//! pact role is refused.
//!
//! Key sources: this build verifies HS256 against a configured secret (development and
//! tests: `PACT_OIDC_HMAC_SECRET`, or the secret `--dev` writes). JWKS (RS256/ES256) is
//! the production source and arrives with the security-plane issue.

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
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => write!(f, "no bearer token (run `pact login`, or pass --token / PACT_TOKEN)"),
            AuthError::Malformed(e) => write!(f, "malformed token: {e}"),
            AuthError::Rejected(e) => write!(f, "token rejected: {e}"),
            AuthError::NoRole => write!(f, "token carries no pact role (claim pact_role, roles or groups)"),
            AuthError::NoSubject => write!(f, "token has no subject (sub)"),
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
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.split('.').count() != 3 {
            return Err(AuthError::Malformed("expected three dot-separated parts".into()));
        }
        let opts = VerificationOptions {
            allowed_issuers: Some(HashSet::from([self.issuer.clone()])),
            allowed_audiences: Some(HashSet::from([self.audience.clone()])),
            time_tolerance: Some(Duration::from_secs(CLOCK_SKEW_SECS)),
            ..Default::default()
        };
        let claims = self
            .key
            .verify_token::<serde_json::Map<String, serde_json::Value>>(token, Some(opts))
            .map_err(|e| classify(&e.to_string()))?;
        if claims.expires_at.is_none() {
            return Err(AuthError::Rejected("token has no expiry (exp)".into()));
        }
        let principal = claims.subject.clone().filter(|s| !s.is_empty()).ok_or(AuthError::NoSubject)?;
        let role = role_from_claims(&claims.custom).ok_or(AuthError::NoRole)?;
        let principal_type =
            claims.custom.get("principal_type").and_then(|v| v.as_str()).unwrap_or("human").to_string();
        Ok(Caller { principal, role, principal_type })
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
}
