//! The JWKS cache of one provider, and its discovery document.
//!
//! - First use fetches discovery (`{issuer}/.well-known/openid-configuration`, unless
//!   `jwks_uri` is configured) and the JWKS.
//! - A `kid` not in the cached set refetches the JWKS, at most once per
//!   `jwks_refresh_min_interval` (so a key rotation is picked up without a restart, and a
//!   stream of made-up `kid`s cannot hammer the IdP); within that interval it is `UnknownKey`.
//! - The set is refetched anyway after `jwks_max_age`; if that refetch fails the old keys keep
//!   working (the IdP being briefly down does not turn into refusals).
//! - Concurrent fetches are serialised: one request, the others reuse its result.
//! - A JWKS that is not JSON, has no usable key, or is too big is `Unavailable`.

use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::http::Http;
use super::{AuthError, InvalidReason};
use crate::config::oauth::Provider;

/// The parts of an OpenID Provider Metadata document (OpenID Connect Discovery 1.0 section 3,
/// RFC 8414 section 2) that mailgate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub jwks_uri: Option<String>,
    pub introspection_endpoint: Option<String>,
}

/// One usable verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it names one; a token must then use exactly that algorithm.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

#[derive(Default)]
struct State {
    keys: Arc<Vec<Key>>,
    /// When the current `keys` were fetched.
    fetched: Option<Instant>,
    /// When a fetch was last started (successful or not).
    attempted: Option<Instant>,
}

pub(crate) struct Keys {
    provider: Arc<Provider>,
    http: Http,
    discovery: OnceCell<Discovered>,
    state: Mutex<State>,
    fetching: tokio::sync::Mutex<()>,
}

impl Keys {
    pub(crate) fn new(provider: Arc<Provider>, http: Http) -> Keys {
        Keys {
            provider,
            http,
            discovery: OnceCell::new(),
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain field assignments under this lock: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The discovery document, fetched once (a failed fetch is retried on next use).
    pub(crate) async fn discovered(&self) -> Result<&Discovered, AuthError> {
        self.discovery
            .get_or_try_init(|| async {
                let issuer = self.provider.issuer.trim_end_matches('/');
                let url = format!("{issuer}/.well-known/openid-configuration");
                let doc = self.http.get_json(&url, "discovery").await?;
                // OpenID Connect Discovery 1.0 section 4.3: the document's issuer MUST be
                // identical to the issuer it was fetched for, or it is not to be used.
                if doc.get("issuer").and_then(Value::as_str) != Some(self.provider.issuer.as_str())
                {
                    return Err(AuthError::Unavailable(
                        "discovery: issuer in the document does not match the configured issuer"
                            .into(),
                    ));
                }
                let s = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
                Ok(Discovered {
                    jwks_uri: s("jwks_uri"),
                    introspection_endpoint: s("introspection_endpoint"),
                })
            })
            .await
    }

    /// Candidate keys for a token with `kid` signed with `alg`.
    pub(crate) async fn find(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<DecodingKey>, AuthError> {
        let started = Instant::now();
        {
            let st = self.state();
            if let Some(fetched) = st.fetched {
                let found = select(&st.keys, kid, alg);
                let fresh = started.duration_since(fetched) < self.provider.jwks_max_age;
                if !found.is_empty() && fresh {
                    return Ok(found);
                }
                if found.is_empty()
                    && fresh
                    && st.attempted.is_some_and(|a| {
                        started.duration_since(a) < self.provider.jwks_refresh_min_interval
                    })
                {
                    return Err(unknown(kid));
                }
            }
        }
        let _one_at_a_time = self.fetching.lock().await;
        // Someone else may have fetched while we waited for the lock.
        {
            let st = self.state();
            if st.attempted.is_some_and(|a| a >= started) && st.fetched.is_some() {
                let found = select(&st.keys, kid, alg);
                return if found.is_empty() {
                    Err(unknown(kid))
                } else {
                    Ok(found)
                };
            }
        }
        self.state().attempted = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                let found = select(&keys, kid, alg);
                let mut st = self.state();
                st.keys = Arc::new(keys);
                st.fetched = Some(Instant::now());
                if found.is_empty() {
                    Err(unknown(kid))
                } else {
                    Ok(found)
                }
            }
            Err(e) => {
                // Stale keys beat no keys when a periodic refresh fails.
                let st = self.state();
                let found = select(&st.keys, kid, alg);
                if found.is_empty() { Err(e) } else { Ok(found) }
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, AuthError> {
        let url = match &self.provider.jwks_uri {
            Some(url) => url.clone(),
            None => self.discovered().await?.jwks_uri.clone().ok_or_else(|| {
                AuthError::Unavailable("discovery document names no jwks_uri".into())
            })?,
        };
        let doc = self.http.get_json(&url, "jwks").await?;
        parse_jwks(&doc)
    }
}

fn unknown(kid: Option<&str>) -> AuthError {
    AuthError::Invalid(InvalidReason::UnknownKey(super::jwt::shorten(
        kid.unwrap_or(""),
    )))
}

/// Keys usable for `alg` with `kid` (any kid when the token has none).
fn select(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
    keys.iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .filter(|k| k.alg.is_none_or(|a| a == alg))
        .filter(|k| k.key.family() == alg.family())
        .map(|k| k.key.clone())
        .collect()
}

/// Parses a JWK Set (RFC 7517 section 5), skipping keys that are not for signatures or that
/// jsonwebtoken cannot use (unknown `kty`, symmetric `oct` keys: an IdP never publishes
/// those, and accepting one would allow HMAC forgeries). No usable key at all is
/// `Unavailable`: the IdP answered garbage.
pub fn parse_jwks(doc: &serde_json::Map<String, Value>) -> Result<Vec<Key>, AuthError> {
    let Some(Value::Array(list)) = doc.get("keys") else {
        return Err(AuthError::Unavailable("jwks: no \"keys\" array".into()));
    };
    let mut out = Vec::new();
    for item in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            continue;
        }
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        out.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if out.is_empty() {
        return Err(AuthError::Unavailable("jwks: no usable signing key".into()));
    }
    Ok(out)
}
