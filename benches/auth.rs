//! Token verification cost (divan): `cargo bench --bench auth`.
//!
//! - `cached_jwt`: `Verifier::verify` of a token already in the verdict cache (SHA-256 of the
//!   token, one map lookup, a clone). What every login after the first with the same token
//!   costs.
//! - `uncached_jwt_*`: the work of a first-seen JWT with the JWKS already fetched: peek,
//!   algorithm allow-list, signature check, claim checks (`auth::jwt`, the same functions
//!   `verify` runs). ES256 and RS256 (2048-bit) keys.
//!
//! No network: the cached case uses an `unverified` provider, whose verdicts are cached on the
//! same path as any other mode's.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::SystemTime;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use mailgate::auth::{VerificationMode, Verifier, jwt};
use mailgate::config::oauth::{OAuth, Provider, ProviderMode};
use mailgate::secret::Secret;
use serde_json::json;

const ISS: &str = "https://idp.example.com";

fn main() {
    divan::main();
}

fn claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"iss": ISS, "aud": "https://mail.example.com/", "sub": "alice@example.com",
           "azp": "mail-app", "iat": now, "exp": now + 3600})
}

fn token_and_key(alg: &'static rcgen::SignatureAlgorithm, jws: Algorithm) -> (String, DecodingKey) {
    let pair = rcgen::KeyPair::generate_for(alg).unwrap();
    let enc = match jws {
        Algorithm::ES256 => EncodingKey::from_ec_der(&pair.serialize_der()),
        _ => EncodingKey::from_rsa_der(pkcs1(&pair.serialize_der())),
    };
    let jwk = Jwk::from_encoding_key(&enc, jws).unwrap();
    let mut header = Header::new(jws);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &claims(), &enc).unwrap();
    (token, DecodingKey::from_jwk(&jwk).unwrap())
}

/// The RSAPrivateKey (PKCS#1) inside rcgen's PKCS#8 PrivateKeyInfo (RFC 5208 section 5):
/// `SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey }`.
fn pkcs1(pkcs8: &[u8]) -> &[u8] {
    fn header(der: &[u8]) -> (usize, usize) {
        // (header length, content length) of the TLV at the start of `der`.
        match der[1] {
            n if n < 0x80 => (2, n as usize),
            n => {
                let k = (n & 0x7f) as usize;
                let len = der[2..2 + k].iter().fold(0, |a, b| (a << 8) | *b as usize);
                (2 + k, len)
            }
        }
    }
    let (h, _) = header(pkcs8);
    let mut rest = &pkcs8[h..];
    for _ in 0..2 {
        let (h, len) = header(rest);
        rest = &rest[h + len..];
    }
    let (h, len) = header(rest);
    &rest[h..h + len]
}

fn provider() -> Provider {
    let mut p = Provider::new("bench", ISS, ProviderMode::Jwt);
    p.audiences = vec!["https://mail.example.com/".into()];
    p
}

fn uncached(bencher: divan::Bencher, alg: &'static rcgen::SignatureAlgorithm, jws: Algorithm) {
    let (token, key) = token_and_key(alg, jws);
    let p = provider();
    let keys = [key];
    bencher.bench(|| {
        let peeked = jwt::peek(divan::black_box(&token)).unwrap();
        let alg = jwt::allowed_algorithm(&peeked.alg, &p.algorithms).unwrap();
        jwt::verify_signature(&token, alg, &keys).unwrap();
        jwt::check_and_identify(&peeked.claims, &p, SystemTime::now(), VerificationMode::Jwt)
            .unwrap()
    });
}

#[divan::bench]
fn uncached_jwt_es256(bencher: divan::Bencher) {
    uncached(bencher, &rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256);
}

#[divan::bench]
fn uncached_jwt_rs256(bencher: divan::Bencher) {
    uncached(bencher, &rcgen::PKCS_RSA_SHA256, Algorithm::RS256);
}

#[divan::bench]
fn cached_jwt(bencher: divan::Bencher) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut p = provider();
    p.mode = ProviderMode::Unverified;
    let v = Verifier::new(&OAuth {
        providers: vec![p],
        ..OAuth::default()
    })
    .unwrap();
    let (token, _) = token_and_key(&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256);
    let token = Secret::new(token);
    rt.block_on(v.verify(&token)).unwrap();
    assert_eq!(v.cached(), 1);
    bencher.bench(|| rt.block_on(v.verify(divan::black_box(&token))).unwrap());
}
