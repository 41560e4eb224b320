//! Stage: auth. A bearer token in, a [`VerifiedToken`] (who, which client, which issuer) or an
//! [`AuthError`] out.
//!
//! ```text
//! token ──► looks like a JWT? ──yes──► peek `iss` (unverified) ──► provider with that issuer
//!   │                                        mode jwt:           alg allowed? → JWKS key → signature → claims
//!   │                                        mode unverified:    claims only (can only refuse)
//!   │                                        mode introspection: RFC 7662
//!   └──no (opaque)──► each introspection / tokeninfo provider (and `jwt` provider with
//!                     introspection credentials) in file order
//! ```
//!
//! Verdicts are cached by SHA-256 of the token (never the token itself): positive until the
//! token expires (at most `cache_max_ttl`), negative for `negative_cache_ttl`. "Could not
//! decide" ([`AuthError::Unavailable`]) is never cached. Concurrent verifications of one token
//! share one lookup (single flight).
//!
//! Failure classes: [`AuthError::Invalid`] is the token's fault (`invalid_token`, decision
//! step 0 in docs/policy.md); [`AuthError::Unavailable`] is the IdP's (unreachable, slow past its
//! timeout, 5xx, garbage or oversized answers: `idp_unavailable`), which the caller must turn into
//! a temporary refusal, never an allow.
//!
//! Must not: log, put the token in any error, `Debug` output or cache key, or follow redirects.
//! The pure parts ([`jwt`]) take the time as an argument.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::config::oauth::{OAuth, Provider, ProviderMode};
use crate::secret::Secret;

mod cache;
mod http;
pub mod introspect;
pub mod jwks;
pub mod jwt;

use cache::Cache;

/// How the token was checked; the audit record says which one decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationMode {
    /// Signature against the issuer's JWKS, then `iss`/`aud`/`exp`/`nbf`.
    Jwt,
    /// RFC 7662 introspection said `active: true`.
    Introspection,
    /// A Google-style tokeninfo endpoint knew the token.
    Tokeninfo,
    /// Claims read without a signature check: good only for refusing. The upstream decides
    /// whether the token is genuine.
    UnverifiedClaims,
}

impl VerificationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationMode::Jwt => "jwt",
            VerificationMode::Introspection => "introspection",
            VerificationMode::Tokeninfo => "tokeninfo",
            VerificationMode::UnverifiedClaims => "unverified_claims",
        }
    }
}

/// What a good token says. Holds no part of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// From the first present `user_claims` claim (default `email`, `upn`,
    /// `preferred_username`, `sub`).
    pub user: String,
    /// From the first present `client_id_claims` claim (default `azp`, `client_id`, `cid`,
    /// `appid`).
    pub client_id: Option<String>,
    /// The provider's configured issuer.
    pub issuer: String,
    /// The provider's name in the config.
    pub provider: String,
    /// Issued to a service account by delegation (see `config::oauth::Delegation`).
    pub delegated: bool,
    pub mode: VerificationMode,
    /// `exp`, when the token or the IdP said.
    pub expires_at: Option<SystemTime>,
}

/// Why a token is not good. Carries no token bytes; attacker-chosen strings are cut short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("not a token this proxy understands")]
    Malformed,
    #[error("no provider configured for issuer {0:?}")]
    UnknownIssuer(String),
    #[error("no provider accepts opaque tokens")]
    NoOpaqueProvider,
    #[error("signing algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("no JWKS key with kid {0:?} for this algorithm")]
    UnknownKey(String),
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("not valid yet (nbf)")]
    NotYetValid,
    #[error("missing exp claim")]
    MissingExpiry,
    #[error("issuer {0:?} does not match the provider")]
    WrongIssuer(String),
    #[error("audience not accepted")]
    WrongAudience,
    #[error("the identity provider says the token is not active")]
    Inactive,
    #[error("no user claim (looked for {0})")]
    NoUser(String),
}

/// The outcome of a verification that did not produce a [`VerifiedToken`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is bad: `invalid_token`.
    #[error("invalid token: {0}")]
    Invalid(InvalidReason),
    /// The IdP could not be asked or gave no usable answer: `idp_unavailable`. Fail closed.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
}

/// Longest token considered at all: 16 KiB, the pre-auth line limit.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Verifies bearer tokens against the configured providers. Cheap to share behind an `Arc`.
pub struct Verifier {
    providers: Vec<Arc<ProviderState>>,
    cache: Mutex<Cache>,
    inflight: Mutex<HashMap<[u8; 32], Arc<OnceCell<Verdict>>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "providers",
                &self
                    .providers
                    .iter()
                    .map(|p| p.config.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

type Verdict = Result<VerifiedToken, AuthError>;

/// One provider with its HTTP client and JWKS cache.
pub(crate) struct ProviderState {
    config: Arc<Provider>,
    http: http::Http,
    keys: jwks::Keys,
}

impl Verifier {
    /// Builds the HTTP clients (no request is made yet: discovery and JWKS are fetched on
    /// first use, so mailgate starts while the IdP is down).
    pub fn new(config: &OAuth) -> Result<Verifier, AuthError> {
        let mut providers = Vec::new();
        for p in &config.providers {
            let p = Arc::new(p.clone());
            let http = http::Http::new(&p)?;
            providers.push(Arc::new(ProviderState {
                keys: jwks::Keys::new(p.clone(), http.clone()),
                http,
                config: p,
            }));
        }
        let size = config
            .providers
            .iter()
            .map(|p| p.cache_size)
            .max()
            .unwrap_or(1);
        Ok(Verifier {
            providers,
            cache: Mutex::new(Cache::new(size)),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Whether any provider is configured (no provider: every token is invalid).
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Verifies `token`. Cached; concurrent calls for the same token share one lookup.
    pub async fn verify(&self, token: &Secret<String>) -> Result<VerifiedToken, AuthError> {
        let token = token.expose().as_str();
        if token.is_empty() || token.len() > MAX_TOKEN_LEN || !is_token68ish(token) {
            return Err(AuthError::Invalid(InvalidReason::Malformed));
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache_lock().get(&key, Instant::now()) {
            return hit;
        }
        let cell = {
            let mut inflight = self.inflight_lock();
            inflight.entry(key).or_default().clone()
        };
        // Only one caller runs the lookup; the others wait for its verdict. If the running
        // caller is cancelled, the next waiter runs it (OnceCell semantics).
        let verdict = cell
            .get_or_init(|| async {
                let (verdict, ttl) = self.lookup(token).await;
                if let Some(ttl) = ttl {
                    self.cache_lock()
                        .insert(key, verdict.clone(), Instant::now() + ttl);
                }
                verdict
            })
            .await
            .clone();
        {
            let mut inflight = self.inflight_lock();
            if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&key);
            }
        }
        verdict
    }

    /// Entries in the verdict cache (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache_lock().len()
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding this lock cannot leave the map inconsistent (each operation is
        // one HashMap call), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inflight_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<OnceCell<Verdict>>>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The uncached verification, and how long its verdict may be cached (`None`: not at all).
    async fn lookup(&self, token: &str) -> (Verdict, Option<Duration>) {
        let now = SystemTime::now();
        match jwt::peek(token) {
            Ok(peeked) => {
                let iss = peeked.issuer().unwrap_or_default();
                let Some(p) = self.providers.iter().find(|p| p.config.issuer == iss) else {
                    let shown = jwt::shorten(&iss);
                    return (
                        Err(AuthError::Invalid(InvalidReason::UnknownIssuer(shown))),
                        None,
                    );
                };
                let verdict = match p.config.mode {
                    ProviderMode::Jwt => p.verify_jwt(token, &peeked, now).await,
                    ProviderMode::Unverified => {
                        jwt::check_and_identify(&peeked.claims, &p.config, now, unverified())
                    }
                    ProviderMode::Introspection | ProviderMode::Tokeninfo => {
                        p.verify_remote(token, now).await
                    }
                };
                let ttl = p.ttl(&verdict, now);
                (verdict, ttl)
            }
            Err(_) => {
                // Opaque: every provider that can look it up, in file order. The first one that
                // knows it decides; "unavailable" wins over "invalid", so a down IdP never turns
                // into a definite refusal that gets cached.
                let mut outcome: Option<(Verdict, Option<Duration>)> = None;
                for p in self.providers.iter().filter(|p| p.introspects_opaque()) {
                    let verdict = p.verify_remote(token, now).await;
                    let ttl = p.ttl(&verdict, now);
                    match verdict {
                        Ok(_) => return (verdict, ttl),
                        Err(AuthError::Unavailable(_)) => outcome = Some((verdict, None)),
                        Err(AuthError::Invalid(_)) => {
                            if !matches!(outcome, Some((Err(AuthError::Unavailable(_)), _))) {
                                outcome = Some((verdict, ttl));
                            }
                        }
                    }
                }
                outcome.unwrap_or((
                    Err(AuthError::Invalid(InvalidReason::NoOpaqueProvider)),
                    None,
                ))
            }
        }
    }
}

fn unverified() -> VerificationMode {
    VerificationMode::UnverifiedClaims
}

/// RFC 6750 section 2.1 `b64token` characters (plus `.` already in it): anything else cannot be
/// a bearer token, and refusing it early keeps odd bytes away from URLs and logs.
fn is_token68ish(token: &str) -> bool {
    token.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
    })
}

impl ProviderState {
    /// Opaque tokens go to introspection and tokeninfo providers, and to a `jwt` provider that
    /// has introspection credentials (one IdP issuing both kinds, as oidc-provider or Keycloak
    /// can).
    fn introspects_opaque(&self) -> bool {
        match self.config.mode {
            ProviderMode::Introspection | ProviderMode::Tokeninfo => true,
            ProviderMode::Jwt => self.config.client_id.is_some(),
            ProviderMode::Unverified => false,
        }
    }

    async fn verify_jwt(&self, token: &str, peeked: &jwt::Peeked, now: SystemTime) -> Verdict {
        // The algorithm is checked against the allow-list BEFORE any key is looked up: a token
        // saying `none` or `HS256` (an HMAC keyed with our public RSA key) never reaches a key.
        let alg = jwt::allowed_algorithm(&peeked.alg, &self.config.algorithms)
            .map_err(AuthError::Invalid)?;
        let candidates = self.keys.find(peeked.kid.as_deref(), alg).await?;
        jwt::verify_signature(token, alg, &candidates).map_err(AuthError::Invalid)?;
        jwt::check_and_identify(&peeked.claims, &self.config, now, VerificationMode::Jwt)
    }

    async fn verify_remote(&self, token: &str, now: SystemTime) -> Verdict {
        match self.config.mode {
            ProviderMode::Tokeninfo => {
                let claims = introspect::tokeninfo(&self.http, &self.config, token).await?;
                jwt::check_and_identify(&claims, &self.config, now, VerificationMode::Tokeninfo)
            }
            _ => {
                let endpoint = match &self.config.introspection_endpoint {
                    Some(url) => url.clone(),
                    None => self
                        .keys
                        .discovered()
                        .await?
                        .introspection_endpoint
                        .clone()
                        .ok_or_else(|| {
                            AuthError::Unavailable(
                                "discovery document names no introspection_endpoint".into(),
                            )
                        })?,
                };
                let claims =
                    introspect::introspect(&self.http, &self.config, &endpoint, token).await?;
                jwt::check_and_identify(&claims, &self.config, now, VerificationMode::Introspection)
            }
        }
    }

    /// How long a verdict may be cached: good ones until `exp` but at most `cache_max_ttl`,
    /// bad ones `negative_cache_ttl`, "unavailable" not at all.
    fn ttl(&self, verdict: &Verdict, now: SystemTime) -> Option<Duration> {
        match verdict {
            Ok(v) => {
                let left = v
                    .expires_at
                    .and_then(|e| e.duration_since(now).ok())
                    .unwrap_or(self.config.cache_max_ttl);
                Some(left.min(self.config.cache_max_ttl)).filter(|d| !d.is_zero())
            }
            Err(AuthError::Invalid(_)) => {
                Some(self.config.negative_cache_ttl).filter(|d| !d.is_zero())
            }
            Err(AuthError::Unavailable(_)) => None,
        }
    }
}

/// Seconds since the Unix epoch (0 before it).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
