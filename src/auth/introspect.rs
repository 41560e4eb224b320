//! Asking the IdP about an opaque token: RFC 7662 introspection and Google-style tokeninfo.
//!
//! Plain reqwest rather than the `oauth2` crate: its adapter reads response bodies unbounded,
//! and mailgate needs the size cap (see `http.rs`). The request is the same one oauth2 sends:
//! `POST token=…&token_type_hint=access_token` with HTTP Basic client authentication
//! (RFC 7662 section 2.1, RFC 6749 section 2.3.1).

use reqwest::StatusCode;
use serde_json::{Map, Value};

use super::http::{Http, json_object};
use super::{AuthError, InvalidReason};
use crate::config::oauth::Provider;

/// RFC 7662 introspection. `active: true` gives the response as claims; anything else is
/// `Invalid(Inactive)`. HTTP errors (a 401 for bad client credentials included: mailgate is
/// misconfigured, the token may be fine) are `Unavailable`.
pub(crate) async fn introspect(
    http: &Http,
    p: &Provider,
    endpoint: &str,
    token: &str,
) -> Result<Map<String, Value>, AuthError> {
    let mut request = http
        .client()
        .post(endpoint)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&[("token", token), ("token_type_hint", "access_token")]);
    if let Some(id) = &p.client_id {
        request = request.basic_auth(
            form_urlencode(id),
            p.client_secret.as_ref().map(|s| form_urlencode(s.expose())),
        );
    }
    let (status, body) = http.send(request, "introspection").await?;
    if status != StatusCode::OK {
        return Err(AuthError::Unavailable(format!(
            "introspection: HTTP {status}"
        )));
    }
    let claims = json_object(&body, "introspection")?;
    match claims.get("active") {
        Some(Value::Bool(true)) => Ok(claims),
        Some(Value::Bool(false)) => Err(AuthError::Invalid(InvalidReason::Inactive)),
        _ => Err(AuthError::Unavailable(
            "introspection: answer has no boolean \"active\"".into(),
        )),
    }
}

/// Google-style tokeninfo: `GET endpoint?access_token=…`. 200 gives the claims; 400/401 (what
/// Google answers for a bad or expired token) is `Invalid(Inactive)`; anything else is
/// `Unavailable`. The URL holds the token, so no error shows it (`http.rs` strips URLs).
pub(crate) async fn tokeninfo(
    http: &Http,
    p: &Provider,
    token: &str,
) -> Result<Map<String, Value>, AuthError> {
    let Some(endpoint) = &p.tokeninfo_endpoint else {
        return Err(AuthError::Unavailable(
            "tokeninfo: no endpoint configured".into(),
        ));
    };
    let request = http
        .client()
        .get(endpoint)
        .query(&[("access_token", token)]);
    let (status, body) = http.send(request, "tokeninfo").await?;
    match status {
        StatusCode::OK => json_object(&body, "tokeninfo"),
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED => {
            Err(AuthError::Invalid(InvalidReason::Inactive))
        }
        other => Err(AuthError::Unavailable(format!("tokeninfo: HTTP {other}"))),
    }
}

/// RFC 6749 section 2.3.1: client id and secret are form-urlencoded before HTTP Basic.
fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
