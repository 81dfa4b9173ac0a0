//! The CLI's side of OAuth 2.0 / OpenID Connect: the issuer's discovery document, the token
//! endpoint (authorization code + PKCE, device code, client credentials, refresh), the device
//! authorization endpoint and revocation. Every exchange is one bounded request
//! (`pact_proto::httpget`); a bad answer from the IdP is an error, never a panic.
//!
//! Exit codes: the IdP unreachable or silent → 5; the IdP refusing (an OAuth `error`:
//! invalid_grant, access_denied, expired_token, ...) → 2; anything else (a malformed answer,
//! an HTTP 5xx, configuration) → 1.

use crate::settings::{Oidc, Settings};
use crate::tokens::{now_secs, Entry};
use crate::{Failure, EXIT_AUTH, EXIT_ERROR};
use nanoserde::DeJson as _;
use pact_proto::httpget::{self, ErrorKind, HttpError, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const EXIT_UNREACHABLE: u8 = 5;
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8628 §3.5: without an `interval`, poll every 5 s; `slow_down` adds 5 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The IdP's JSON documents. nanoserde's `DeJson` derive expands `Option` fields into code that
/// clippy's `question_mark` lint flags; the allow is kept to this module.
mod json {
    #![allow(clippy::question_mark)]
    use nanoserde::DeJson;

    #[derive(DeJson, Debug, Clone, Default)]
    pub struct Discovery {
        pub issuer: String,
        pub authorization_endpoint: Option<String>,
        pub token_endpoint: Option<String>,
        pub device_authorization_endpoint: Option<String>,
        pub revocation_endpoint: Option<String>,
        pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    }

    #[derive(DeJson, Debug, Clone, Default)]
    pub struct TokenResponse {
        pub access_token: String,
        pub token_type: Option<String>,
        pub expires_in: Option<u64>,
        pub refresh_token: Option<String>,
        pub scope: Option<String>,
    }

    #[derive(DeJson, Debug, Clone, Default)]
    pub struct OAuthError {
        pub error: String,
        pub error_description: Option<String>,
    }

    #[derive(DeJson, Debug, Clone, Default)]
    pub struct DeviceAuthorization {
        pub device_code: String,
        pub user_code: String,
        pub verification_uri: String,
        pub verification_uri_complete: Option<String>,
        pub expires_in: u64,
        pub interval: Option<u64>,
    }

    /// The claims pact shows after a login, read (not verified: the journal does that) from a
    /// JWT access token; None for an opaque one.
    #[derive(DeJson, Debug, Clone, Default, PartialEq, Eq)]
    pub struct Claims {
        pub sub: Option<String>,
        pub pact_role: Option<String>,
        pub exp: Option<u64>,
    }
}

use json::OAuthError;
pub use json::{Claims, DeviceAuthorization, Discovery, TokenResponse};

/// What a token endpoint said: tokens, or an OAuth error.
#[derive(Debug, Clone)]
pub enum TokenAnswer {
    Tokens(TokenResponse),
    Refused { error: String, description: Option<String> },
}

impl TokenAnswer {
    fn refused_text(error: &str, description: &Option<String>) -> String {
        match description.as_deref().filter(|d| !d.is_empty()) {
            Some(d) => format!("{error}: {d}"),
            None => error.to_string(),
        }
    }
}

/// How the client authenticates at the token and revocation endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth<'a> {
    /// A public client: `client_id` in the form.
    Public(&'a str),
    /// HTTP Basic (client_secret_basic).
    Basic(&'a str, &'a str),
    /// `client_id` and `client_secret` in the form (client_secret_post).
    Post(&'a str, &'a str),
}

fn http_failure(what: &str, e: HttpError) -> Failure {
    let code = match e.kind {
        ErrorKind::Unreachable | ErrorKind::TimedOut => EXIT_UNREACHABLE,
        ErrorKind::Other => EXIT_ERROR,
    };
    let why = match e.kind {
        ErrorKind::Unreachable => "the OpenID provider is unreachable: ",
        ErrorKind::TimedOut => "the OpenID provider did not answer in time: ",
        ErrorKind::Other => "",
    };
    Failure::new(code, format!("{what}: {why}{}", e.message))
}

fn snippet(r: &Response) -> String {
    let t = r.text();
    let t = t.trim();
    let mut s: String = t.chars().take(200).collect();
    if s.len() < t.len() {
        s.push('…');
    }
    s
}

/// An issuer's endpoints, found through its discovery document.
pub struct Provider {
    pub issuer: String,
    pub doc: Discovery,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
}

impl Provider {
    /// GETs `<issuer>/.well-known/openid-configuration` and checks that it names `issuer`.
    pub fn discover(issuer: &str, oidc: &Oidc, timeout: Duration) -> Result<Provider, Failure> {
        let issuer = issuer.trim().trim_end_matches('/').to_string();
        httpget::Url::parse(&issuer).map_err(|e| Failure::usage(format!("OpenID provider issuer: {e}")))?;
        let tls = if issuer.starts_with("https://") { Some(tls_config(oidc)?) } else { None };
        let url = format!("{issuer}/.well-known/openid-configuration");
        let r =
            httpget::fetch(&url, tls.as_ref(), timeout).map_err(|e| http_failure("OpenID provider discovery", e))?;
        let what = format!("OpenID provider discovery ({url})");
        if r.status != 200 {
            return Err(Failure::new(EXIT_ERROR, format!("{what}: HTTP {}: {}", r.status, snippet(&r))));
        }
        let text = String::from_utf8(r.body).map_err(|_| Failure::new(EXIT_ERROR, format!("{what}: not UTF-8")))?;
        let doc = Discovery::deserialize_json(&text)
            .map_err(|e| Failure::new(EXIT_ERROR, format!("{what}: not a discovery document: {e}")))?;
        // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
        if doc.issuer.trim_end_matches('/') != issuer {
            return Err(Failure::new(
                EXIT_ERROR,
                format!("{what}: the document is for issuer {:?}, not {issuer:?}", doc.issuer),
            ));
        }
        // An https endpoint under an http issuer still needs a CA.
        let any_https = [&doc.token_endpoint, &doc.authorization_endpoint, &doc.device_authorization_endpoint]
            .iter()
            .any(|e| e.as_deref().is_some_and(|u| u.starts_with("https://")));
        let tls = match tls {
            None if any_https => Some(tls_config(oidc)?),
            t => t,
        };
        Ok(Provider { issuer, doc, tls, timeout })
    }

    /// An endpoint the document must list.
    pub fn endpoint(&self, name: &str) -> Result<String, Failure> {
        let v = match name {
            "authorization_endpoint" => &self.doc.authorization_endpoint,
            "token_endpoint" => &self.doc.token_endpoint,
            "device_authorization_endpoint" => &self.doc.device_authorization_endpoint,
            _ => &self.doc.revocation_endpoint,
        };
        v.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
            Failure::new(
                EXIT_ERROR,
                format!("the OpenID provider {} lists no {name} in its discovery document", self.issuer),
            )
        })
    }

    fn post(&self, what: &str, url: &str, form: &[(&str, &str)], auth: ClientAuth<'_>) -> Result<Response, Failure> {
        let mut form = form.to_vec();
        let basic = match auth {
            ClientAuth::Public(id) => {
                form.push(("client_id", id));
                None
            }
            ClientAuth::Post(id, secret) => {
                form.push(("client_id", id));
                form.push(("client_secret", secret));
                None
            }
            ClientAuth::Basic(id, secret) => Some((id, secret)),
        };
        httpget::post_form(url, self.tls.as_ref(), &form, basic, self.timeout).map_err(|e| http_failure(what, e))
    }

    /// A token request: tokens, an OAuth refusal, or a failure.
    pub fn token(&self, what: &str, form: &[(&str, &str)], auth: ClientAuth<'_>) -> Result<TokenAnswer, Failure> {
        let url = self.endpoint("token_endpoint")?;
        let r = self.post(what, &url, form, auth)?;
        token_answer(what, &url, &r)
    }

    /// RFC 8628 §3.1: a device code and the user code to enter.
    pub fn device_authorization(
        &self,
        client_id: &str,
        scope: &str,
        resource: Option<&str>,
    ) -> Result<DeviceAuthorization, Failure> {
        let url = self.endpoint("device_authorization_endpoint")?;
        let what = "device authorization";
        let mut form = vec![("scope", scope)];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let r = self.post(what, &url, &form, ClientAuth::Public(client_id))?;
        if r.status != 200 {
            return Err(match oauth_error(&r) {
                Some(e) => Failure::new(
                    EXIT_AUTH,
                    format!(
                        "{what} ({url}): the OpenID provider refused: {}",
                        TokenAnswer::refused_text(&e.error, &e.error_description)
                    ),
                ),
                None => Failure::new(EXIT_ERROR, format!("{what} ({url}): HTTP {}: {}", r.status, snippet(&r))),
            });
        }
        let d = DeviceAuthorization::deserialize_json(&r.text())
            .map_err(|e| Failure::new(EXIT_ERROR, format!("{what} ({url}): unexpected answer: {e}")))?;
        if d.device_code.is_empty() || d.user_code.is_empty() || d.verification_uri.is_empty() {
            return Err(Failure::new(EXIT_ERROR, format!("{what} ({url}): the answer lacks a device or user code")));
        }
        Ok(d)
    }

    /// RFC 7009: best effort; the error says why it did not happen.
    pub fn revoke(&self, token: &str, hint: &str, auth: ClientAuth<'_>) -> Result<(), String> {
        let url = self.endpoint("revocation_endpoint").map_err(|f| f.message)?;
        let r = self
            .post("token revocation", &url, &[("token", token), ("token_type_hint", hint)], auth)
            .map_err(|f| f.message)?;
        match r.status {
            200..=299 => Ok(()),
            s => Err(format!("token revocation ({url}): HTTP {s}: {}", snippet(&r))),
        }
    }

    /// How a confidential client authenticates here: HTTP Basic unless the provider lists
    /// only client_secret_post.
    pub fn secret_auth<'a>(&self, id: &'a str, secret: &'a str) -> ClientAuth<'a> {
        match &self.doc.token_endpoint_auth_methods_supported {
            Some(m) if !m.iter().any(|x| x == "client_secret_basic") && m.iter().any(|x| x == "client_secret_post") => {
                ClientAuth::Post(id, secret)
            }
            _ => ClientAuth::Basic(id, secret),
        }
    }
}

fn tls_config(oidc: &Oidc) -> Result<Arc<rustls::ClientConfig>, Failure> {
    let bundle = oidc.ca_bundle.clone().unwrap_or_else(|| httpget::SYSTEM_CA_BUNDLE.into());
    httpget::tls_for_bundle(&bundle).map_err(|e| {
        Failure::usage(format!("CA bundle for the OpenID provider: {e} (set PACT_OIDC_CA_BUNDLE or oidc_ca_bundle)"))
    })
}

fn oauth_error(r: &Response) -> Option<OAuthError> {
    OAuthError::deserialize_json(&r.text()).ok().filter(|e| !e.error.is_empty())
}

/// RFC 6749 §5.1/§5.2: 200 with tokens, or 400/401 with an `error`.
pub fn token_answer(what: &str, url: &str, r: &Response) -> Result<TokenAnswer, Failure> {
    if r.status == 200 {
        let t = TokenResponse::deserialize_json(&r.text()).map_err(|e| {
            Failure::new(
                EXIT_ERROR,
                format!("{what} ({url}): the token endpoint's answer is not a token response: {e}"),
            )
        })?;
        if t.access_token.trim().is_empty() {
            return Err(Failure::new(
                EXIT_ERROR,
                format!("{what} ({url}): the token endpoint sent an empty access token"),
            ));
        }
        if let Some(tt) = t.token_type.as_deref().filter(|tt| !tt.eq_ignore_ascii_case("bearer")) {
            return Err(Failure::new(
                EXIT_ERROR,
                format!("{what} ({url}): token type {tt:?}, pact needs a Bearer token"),
            ));
        }
        return Ok(TokenAnswer::Tokens(t));
    }
    match oauth_error(r) {
        Some(e) if (400..500).contains(&r.status) => {
            Ok(TokenAnswer::Refused { error: e.error, description: e.error_description })
        }
        _ => Err(Failure::new(EXIT_ERROR, format!("{what} ({url}): HTTP {}: {}", r.status, snippet(r)))),
    }
}

/// Tokens, or the exit-2 failure an OAuth refusal is.
pub fn tokens_or_refusal(what: &str, a: TokenAnswer) -> Result<TokenResponse, Failure> {
    match a {
        TokenAnswer::Tokens(t) => Ok(t),
        TokenAnswer::Refused { error, description } => Err(Failure::new(
            EXIT_AUTH,
            format!("{what}: the OpenID provider refused: {}", TokenAnswer::refused_text(&error, &description)),
        )),
    }
}

/// RFC 8628 §3.4-3.5: polls until the user has approved (or denied) the device, the code
/// expired, or `deadline` passed; `ask` makes one token request, `sleep` waits.
pub fn poll_device(
    interval: Duration,
    deadline: Instant,
    mut sleep: impl FnMut(Duration),
    mut ask: impl FnMut() -> Result<TokenAnswer, Failure>,
) -> Result<TokenResponse, Failure> {
    let mut interval = interval.max(Duration::from_secs(1));
    loop {
        if Instant::now() + interval > deadline {
            return Err(Failure::new(
                EXIT_AUTH,
                "timed out waiting for the device login to be approved; run `pact login --device-code` again",
            ));
        }
        sleep(interval);
        match ask()? {
            TokenAnswer::Tokens(t) => return Ok(t),
            TokenAnswer::Refused { error, description } => match error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += Duration::from_secs(5),
                "expired_token" => {
                    return Err(Failure::new(
                        EXIT_AUTH,
                        "the device code expired before the login was approved (expired_token); run `pact login --device-code` again",
                    ))
                }
                "access_denied" => {
                    return Err(Failure::new(
                        EXIT_AUTH,
                        "the login was denied at the OpenID provider (access_denied)",
                    ))
                }
                _ => {
                    return Err(Failure::new(
                        EXIT_AUTH,
                        format!(
                            "device login: the OpenID provider refused: {}",
                            TokenAnswer::refused_text(&error, &description)
                        ),
                    ))
                }
            },
        }
    }
}

/// The cache entry for a token response.
pub fn entry_for(t: &TokenResponse, issuer: &str, client_id: &str, previous_refresh: Option<&str>) -> Entry {
    let expires_at = match t.expires_in {
        Some(s) => now_secs().saturating_add(s),
        None => claims(&t.access_token).and_then(|c| c.exp).unwrap_or(0),
    };
    Entry {
        access_token: t.access_token.clone(),
        // RFC 6749 §6: a refresh answer without a refresh token leaves the old one in force.
        refresh_token: t.refresh_token.clone().filter(|r| !r.is_empty()).or(previous_refresh.map(str::to_string)),
        expires_at,
        scopes: t.scope.as_deref().unwrap_or("").split_whitespace().map(str::to_string).collect(),
        idp_issuer: issuer.to_string(),
        client_id: client_id.to_string(),
    }
}

pub fn claims(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = httpget::base64url_decode(payload)?;
    Claims::deserialize_json(std::str::from_utf8(&bytes).ok()?).ok()
}

/// Refreshes a cache entry with its refresh token (the silent refresh before a command).
pub fn refresh(s: &Settings, e: &Entry) -> Result<Entry, String> {
    let rt = e.refresh_token.as_deref().filter(|r| !r.is_empty()).ok_or_else(|| {
        "there is no refresh token (a service account logs in again with `pact login --service-account`)".to_string()
    })?;
    let idp = Provider::discover(&e.idp_issuer, &s.oidc, s.timeout).map_err(|f| f.message)?;
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
    if let Some(r) = s.oidc.resource.as_deref() {
        form.push(("resource", r));
    }
    let answer = idp.token("token refresh", &form, ClientAuth::Public(&e.client_id)).map_err(|f| f.message)?;
    let t = tokens_or_refusal("token refresh", answer).map_err(|f| f.message)?;
    Ok(entry_for(&t, &idp.issuer, &e.client_id, Some(rt)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Response {
        Response { status, location: None, body: body.as_bytes().to_vec() }
    }

    #[test]
    fn token_answers() {
        let ok = answer(
            200,
            r#"{"access_token":"a.b.c","token_type":"Bearer","expires_in":600,"refresh_token":"r","scope":"openid pact","id_token":"x","extra":{"n":[1,2]}}"#,
        );
        let TokenAnswer::Tokens(t) = token_answer("t", "u", &ok).unwrap() else { panic!() };
        assert_eq!(
            (t.access_token.as_str(), t.expires_in, t.refresh_token.as_deref()),
            ("a.b.c", Some(600), Some("r"))
        );
        let e = entry_for(&t, "http://idp", "pact", Some("old"));
        assert_eq!((e.refresh_token.as_deref(), e.scopes.len()), (Some("r"), 2));
        assert!(e.expires_at >= now_secs() + 599);
        let no_rt = TokenResponse { access_token: "x".into(), ..Default::default() };
        assert_eq!(entry_for(&no_rt, "i", "c", Some("old")).refresh_token.as_deref(), Some("old"));
        assert_eq!(entry_for(&no_rt, "i", "c", None).expires_at, 0);

        let refused = answer(400, r#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#);
        match token_answer("t", "u", &refused).unwrap() {
            TokenAnswer::Refused { error, .. } => assert_eq!(error, "invalid_grant"),
            other => panic!("{other:?}"),
        }
        let f = tokens_or_refusal("token refresh", token_answer("t", "u", &refused).unwrap()).unwrap_err();
        assert_eq!(f.code, EXIT_AUTH);
        assert!(f.message.contains("invalid_grant: grant request is invalid"), "{}", f.message);

        // Bad answers are failures with a message, never panics.
        for (status, body) in [
            (200, "<html>"),
            (200, r#"{"token_type":"Bearer"}"#),
            (200, r#"{"access_token":""}"#),
            (200, r#"{"access_token":"a","token_type":"mac"}"#),
            (200, r#"{"access_token":"a","expires_in":-1}"#),
            (500, "oops"),
            (400, "not json"),
            (302, ""),
        ] {
            let f = token_answer("t", "u", &answer(status, body)).unwrap_err();
            assert_eq!(f.code, EXIT_ERROR, "{status} {body}: {}", f.message);
        }
    }

    #[test]
    fn claims_are_read_best_effort() {
        let payload = httpget::base64url(br#"{"sub":"alice","pact_role":"pact-platform-admin","exp":99,"aud":["a"]}"#);
        let c = claims(&format!("e30.{payload}.sig")).unwrap();
        assert_eq!(
            (c.sub.as_deref(), c.pact_role.as_deref(), c.exp),
            (Some("alice"), Some("pact-platform-admin"), Some(99))
        );
        assert_eq!(claims("opaque-token"), None);
        assert_eq!(claims("a.!!!.c"), None);
    }

    fn refused(e: &str) -> Result<TokenAnswer, Failure> {
        Ok(TokenAnswer::Refused { error: e.into(), description: None })
    }

    #[test]
    fn device_polling_follows_rfc_8628() {
        let far = Instant::now() + Duration::from_secs(3600);
        // pending, slow_down (+5 s), pending, then tokens.
        let mut script = vec![
            refused("authorization_pending"),
            refused("slow_down"),
            refused("authorization_pending"),
            Ok(TokenAnswer::Tokens(TokenResponse { access_token: "t".into(), ..Default::default() })),
        ]
        .into_iter();
        let mut waits = vec![];
        let t =
            poll_device(Duration::from_secs(2), far, |d| waits.push(d.as_secs()), || script.next().unwrap()).unwrap();
        assert_eq!(t.access_token, "t");
        assert_eq!(waits, [2, 2, 7, 7]);

        for (error, says) in
            [("expired_token", "expired_token"), ("access_denied", "denied"), ("invalid_client", "invalid_client")]
        {
            let mut script = vec![refused("authorization_pending"), refused(error)].into_iter();
            let f = poll_device(Duration::from_secs(1), far, |_| {}, || script.next().unwrap()).unwrap_err();
            assert_eq!(f.code, EXIT_AUTH, "{error}");
            assert!(f.message.contains(says), "{error}: {}", f.message);
        }
        // A transport failure ends the polling with its own code.
        let f = poll_device(Duration::from_secs(1), far, |_| {}, || Err(Failure::new(EXIT_UNREACHABLE, "down")))
            .unwrap_err();
        assert_eq!(f.code, EXIT_UNREACHABLE);
        // Past the deadline: no request at all.
        let f = poll_device(
            Duration::from_secs(5),
            Instant::now() + Duration::from_secs(1),
            |_| {},
            || panic!("asked after the deadline"),
        )
        .unwrap_err();
        assert!(f.message.contains("timed out"), "{}", f.message);
    }
}
