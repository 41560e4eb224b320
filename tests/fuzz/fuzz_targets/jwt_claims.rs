//! The pure JWT handling of `mailgate::auth::jwt`: peek, the algorithm allow-list and the claim
//! checks with `now` passed in.
//!
//! Input: `ctrl "\n" token "\n" claims-json` (a readable seed is a token and a claim set). Checks:
//! nothing panics on any token, claim set, provider settings or time; a header and claim set
//! encoded as a compact JWS peek back to the same `alg`, `kid` and claims; an accepted claim set
//! names a user and the provider's issuer, and is not expired at `now`; `shorten` output is
//! short and printable.
#![no_main]

use std::time::{Duration, SystemTime};

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use mailgate::auth::VerificationMode;
use mailgate::auth::jwt;
use mailgate::config::oauth::{
    DEFAULT_CLIENT_ID_CLAIMS, DEFAULT_USER_CLAIMS, Delegation, JwtAlgorithm, Provider, ProviderMode,
};
use serde_json::{Map, Value};

const ISSUER: &str = "https://idp.example.org";

#[derive(Arbitrary, Debug)]
struct Settings {
    mode: u8,
    audiences: u8,
    algorithms: u16,
    leeway_s: u16,
    custom_user_claim: bool,
    delegation: u8,
    /// Seconds since the epoch; wide enough to pass every `exp` a token may hold.
    now_s: u64,
    alg: u8,
    kid: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let ctrl = parts.next().unwrap_or_default();
    let token = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let claims_json = parts.next().unwrap_or_default();
    let mut u = Unstructured::new(ctrl);
    let Ok(s) = Settings::arbitrary(&mut u) else {
        return;
    };
    let provider = provider(&s);
    let now = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(s.now_s))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mode = [
        VerificationMode::Jwt,
        VerificationMode::Introspection,
        VerificationMode::Tokeninfo,
        VerificationMode::UnverifiedClaims,
    ][usize::from(s.mode % 4)];

    // The token as the downstream sent it.
    if let Ok(peeked) = jwt::peek(&token) {
        let _ = peeked.issuer();
        let _ = jwt::allowed_algorithm(&peeked.alg, &provider.algorithms);
        identify(&peeked.claims, &provider, now, mode);
    }
    check_shorten(&token);

    // The claim set as an IdP or a token would carry it.
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(claims_json) else {
        return;
    };
    identify(&claims, &provider, now, mode);

    // Encoded as a compact JWS, it peeks back as the JSON it was encoded to (serde_json's float
    // printing is not exact, so compare with that, not with the first parse).
    let alg = JwtAlgorithm::ALL[usize::from(s.alg) % JwtAlgorithm::ALL.len()].as_str();
    let mut header = Map::new();
    header.insert("alg".into(), alg.into());
    if let Some(kid) = &s.kid {
        header.insert("kid".into(), kid.clone().into());
    }
    let part = |v: &Map<String, Value>| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let compact = format!("{}.{}.c2ln", part(&header), part(&claims));
    let peeked = jwt::peek(&compact).expect("an encoded JWS peeks");
    assert_eq!(peeked.alg, alg);
    assert_eq!(peeked.kid, s.kid);
    let encoded: Map<String, Value> = serde_json::from_slice(&serde_json::to_vec(&claims).unwrap())
        .expect("serde_json reads what it wrote");
    assert_eq!(peeked.claims, encoded);
    assert!(jwt::allowed_algorithm(alg, &JwtAlgorithm::ALL).is_ok());
    identify(&peeked.claims, &provider, now, mode);
});

fn identify(claims: &Map<String, Value>, p: &Provider, now: SystemTime, mode: VerificationMode) {
    let Ok(verified) = jwt::check_and_identify(claims, p, now, mode) else {
        return;
    };
    assert!(!verified.user.is_empty());
    assert_eq!(verified.issuer, p.issuer);
    assert_eq!(verified.mode, mode);
    if matches!(
        mode,
        VerificationMode::Jwt | VerificationMode::UnverifiedClaims
    ) {
        assert!(claims.contains_key("exp"), "a JWT without exp was accepted");
    }
    if let Some(exp) = verified.expires_at {
        let until = exp.checked_add(p.leeway);
        assert!(
            until.is_none_or(|t| t > now),
            "an expired token was accepted"
        );
    }
}

fn check_shorten(s: &str) {
    let short = jwt::shorten(s);
    assert!(short.chars().count() <= 64);
    assert!(short.chars().all(|c| c.is_ascii_graphic() || c == ' '));
}

fn provider(s: &Settings) -> Provider {
    let audiences = match s.audiences % 3 {
        0 => vec![],
        1 => vec!["imap".to_owned()],
        _ => vec!["imap".to_owned(), "https://mail.example.org".to_owned()],
    };
    let algorithms: Vec<JwtAlgorithm> = JwtAlgorithm::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| s.algorithms & (1 << i) != 0)
        .map(|(_, a)| a)
        .collect();
    let mut user_claims: Vec<String> = DEFAULT_USER_CLAIMS.map(str::to_owned).to_vec();
    if s.custom_user_claim {
        user_claims.insert(0, "upn".into());
        user_claims.push("unique_name".into());
    }
    let delegation = match s.delegation % 3 {
        0 => Delegation::default(),
        1 => Delegation {
            client_ids: vec!["1234567890".into()],
            claim: Some("act".into()),
            value: None,
        },
        _ => Delegation {
            client_ids: vec![],
            claim: Some("scp".into()),
            value: Some("full_access_as_app".into()),
        },
    };
    let secs = Duration::from_secs;
    Provider {
        name: "fuzz".into(),
        issuer: ISSUER.into(),
        mode: ProviderMode::Jwt,
        jwks_uri: None,
        introspection_endpoint: None,
        tokeninfo_endpoint: None,
        client_id: None,
        client_secret: None,
        audiences,
        algorithms,
        leeway: secs(u64::from(s.leeway_s)),
        client_id_claims: DEFAULT_CLIENT_ID_CLAIMS.map(str::to_owned).to_vec(),
        user_claims,
        delegation,
        connect_timeout: secs(3),
        request_timeout: secs(3),
        jwks_refresh_min_interval: secs(30),
        jwks_max_age: secs(3600),
        cache_max_ttl: secs(300),
        negative_cache_ttl: secs(30),
        cache_size: 10_000,
        max_response_bytes: 1 << 20,
    }
}
