//! Pure JWT handling: peek at header and claims, the algorithm allow-list, signature check
//! with given keys, and claim checks with the time passed in. No I/O, no clock.
//!
//! JWS compact form (RFC 7515 section 7.1): `BASE64URL(header) "." BASE64URL(payload) "."
//! BASE64URL(signature)`. Peeking decodes the first two parts without checking anything; only
//! [`verify_signature`] makes the claims trustworthy.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{AuthError, InvalidReason, VerificationMode, VerifiedToken, unix};
use crate::config::oauth::{JwtAlgorithm, Provider};

/// Header fields and claims of a JWT, NOT verified.
#[derive(Debug, Clone)]
pub struct Peeked {
    /// The header's `alg`, as written.
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
}

impl Peeked {
    /// The unverified `iss`, used only to pick the provider.
    pub fn issuer(&self) -> Option<String> {
        self.claims.get("iss")?.as_str().map(str::to_owned)
    }
}

/// Decodes header and payload of a compact JWS. `Err` means "not a JWT" (an opaque token).
pub fn peek(token: &str) -> Result<Peeked, InvalidReason> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(InvalidReason::Malformed);
    };
    let header = decode_object(header)?;
    let claims = decode_object(payload)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(InvalidReason::Malformed)?
        .to_owned();
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    Ok(Peeked { alg, kid, claims })
}

fn decode_object(part: &str) -> Result<Map<String, Value>, InvalidReason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| InvalidReason::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(InvalidReason::Malformed),
    }
}

/// The header's `alg` if the provider allows it. `none` and every `HS*` are never in the list
/// (the config refuses them), so an unsigned token or an HMAC "signed" with the public key
/// stops here, before any key is looked up.
pub fn allowed_algorithm(alg: &str, allowed: &[JwtAlgorithm]) -> Result<Algorithm, InvalidReason> {
    let not_allowed = || InvalidReason::AlgorithmNotAllowed(shorten(alg));
    let ours = JwtAlgorithm::from_name(alg).ok_or_else(not_allowed)?;
    if !allowed.contains(&ours) {
        return Err(not_allowed());
    }
    Ok(match ours {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    })
}

/// Checks the signature with `alg` against each candidate key; one must match. Claims are not
/// looked at here ([`check_and_identify`] does that with an explicit `now`).
pub fn verify_signature(
    token: &str,
    alg: Algorithm,
    keys: &[DecodingKey],
) -> Result<(), InvalidReason> {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    for key in keys {
        if jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).is_ok() {
            return Ok(());
        }
    }
    Err(InvalidReason::BadSignature)
}

/// Checks `iss`, `aud`, `exp`, `nbf` of a claim set (from a verified JWT, an unverified one, or
/// an introspection/tokeninfo answer) at time `now`, then reads user, client and delegation.
///
/// `exp` is required for JWTs (RFC 9068 section 2.2) and optional for IdP answers (RFC 7662
/// section 2.2 makes it optional). `iss` must match when present, and is required for JWTs.
pub fn check_and_identify(
    claims: &Map<String, Value>,
    p: &Provider,
    now: SystemTime,
    mode: VerificationMode,
) -> Result<VerifiedToken, AuthError> {
    identify(claims, p, now, mode).map_err(AuthError::Invalid)
}

fn identify(
    claims: &Map<String, Value>,
    p: &Provider,
    now: SystemTime,
    mode: VerificationMode,
) -> Result<VerifiedToken, InvalidReason> {
    let is_jwt = matches!(
        mode,
        VerificationMode::Jwt | VerificationMode::UnverifiedClaims
    );
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if iss == p.issuer => {}
        Some(iss) => return Err(InvalidReason::WrongIssuer(shorten(iss))),
        None if is_jwt => return Err(InvalidReason::WrongIssuer(String::new())),
        None => {}
    }
    if !p.audiences.is_empty() && mode != VerificationMode::Tokeninfo {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => p.audiences.contains(a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| p.audiences.iter().any(|w| w == a)),
            // RFC 7662 answers may leave `aud` out; a JWT access token must carry it.
            None => !is_jwt,
            Some(_) => false,
        };
        if !ok {
            return Err(InvalidReason::WrongAudience);
        }
    }
    let now_s = unix(now);
    let leeway = p.leeway.as_secs();
    let exp = numeric(claims.get("exp"));
    match exp {
        Some(exp) if now_s >= exp.saturating_add(leeway) => return Err(InvalidReason::Expired),
        Some(_) => {}
        None if is_jwt => return Err(InvalidReason::MissingExpiry),
        None => {}
    }
    if let Some(nbf) = numeric(claims.get("nbf"))
        && nbf > now_s.saturating_add(leeway)
    {
        return Err(InvalidReason::NotYetValid);
    }
    let user = first_string(claims, &p.user_claims)
        .ok_or_else(|| InvalidReason::NoUser(p.user_claims.join(", ")))?;
    let client_id = first_string(claims, &p.client_id_claims);
    let delegated = client_id
        .as_ref()
        .is_some_and(|c| p.delegation.client_ids.contains(c))
        || p.delegation.claim.as_ref().is_some_and(|name| {
            match (claims.get(name), &p.delegation.value) {
                (None | Some(Value::Null) | Some(Value::Bool(false)), _) => false,
                (Some(_), None) => true,
                (Some(Value::String(s)), Some(want)) => s == want,
                (Some(Value::Array(list)), Some(want)) => {
                    list.iter().any(|v| v.as_str() == Some(want.as_str()))
                }
                (Some(_), Some(_)) => false,
            }
        });
    Ok(VerifiedToken {
        user,
        client_id,
        issuer: p.issuer.clone(),
        provider: p.name.clone(),
        delegated,
        mode,
        // `checked_add`: an `exp` past what `SystemTime` holds (1e300) is "no known expiry",
        // not a panic (fuzz_jwt_claims_exp_beyond_system_time).
        expires_at: exp.and_then(|e| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(e))),
    })
}

/// A NumericDate (RFC 7519 section 2): a number, or (Google tokeninfo) a decimal string.
fn numeric(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn first_string(claims: &Map<String, Value>, names: &[String]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| claims.get(n)?.as_str())
        .find(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An attacker-chosen string fit for an error message: at most 64 printable ASCII characters.
pub fn shorten(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}
