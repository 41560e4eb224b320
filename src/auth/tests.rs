//! Unit tests for `auth` with self-made keys and a hand-written HTTP server.
//!
//! The server below is a FAKE IdP: it exists because a real IdP will not, on demand, hang,
//! answer garbage, answer a huge body, or count its requests for us. The real IdP
//! (oidc-provider) is exercised in `tests/integration/oauth.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::config::oauth::{OAuth, Provider, ProviderMode};

const AUD: &str = "https://mail.example.com/";

/// An ES256 key pair with its public JWK.
struct TestKey {
    kid: String,
    enc: EncodingKey,
    jwk: Jwk,
}

fn key(kid: &str) -> TestKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let enc = EncodingKey::from_ec_der(&pair.serialize_der());
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    TestKey {
        kid: kid.to_owned(),
        enc,
        jwk,
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
    .unwrap()
}

fn now_s() -> u64 {
    unix(SystemTime::now())
}

fn claims(iss: &str) -> Value {
    json!({
        "iss": iss, "aud": AUD, "sub": "alice@example.com", "azp": "mail-app",
        "iat": now_s(), "exp": now_s() + 600,
    })
}

fn sign(k: &TestKey, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, claims, &k.enc).unwrap()
}

/// A token with a hand-made header and signature (for `none` and HMAC forgeries).
fn forge(header: Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{h}.{c}");
    let sig = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
    format!("{input}.{sig}")
}

/// What the fake answers on a path.
#[derive(Clone)]
enum Reply {
    Json(u16, String),
    /// Accept, read the request, never answer.
    Hang,
    /// Announce and send a body bigger than any limit.
    Huge,
    /// Wait, then answer (to make concurrent callers overlap).
    Slow(Duration, String),
}

/// FAKE IdP (see the module docs). Routes by path prefix; counts requests per route.
struct Fake {
    base: String,
    routes: Arc<std::sync::Mutex<Vec<(String, Reply)>>>,
    hits: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Fake {
    async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<std::sync::Mutex<Vec<(String, Reply)>>> = Arc::default();
        let hits: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let (r, h) = (routes.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (r, h) = (r.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read the head and a form body (Content-Length) if any.
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                    h.lock().unwrap().push(path.clone());
                    let reply = r
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|(p, _)| path.starts_with(p.as_str()))
                        .map(|(_, r)| r.clone())
                        .unwrap_or(Reply::Json(404, "{}".into()));
                    let (status, body) = match reply {
                        Reply::Json(s, b) => (s, b),
                        Reply::Slow(d, b) => {
                            tokio::time::sleep(d).await;
                            (200, b)
                        }
                        Reply::Hang => {
                            // Bounded by the test's own timeout; the socket just stays open.
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        Reply::Huge => {
                            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                        connection: close\r\n\r\n";
                            let _ = sock.write_all(head.as_bytes()).await;
                            let block = vec![b' '; 64 * 1024];
                            for _ in 0..64 {
                                if sock.write_all(&block).await.is_err() {
                                    return;
                                }
                            }
                            return;
                        }
                    };
                    let out = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(out.as_bytes()).await;
                });
            }
        });
        Fake { base, routes, hits }
    }

    fn route(&self, path: &str, reply: Reply) {
        let mut r = self.routes.lock().unwrap();
        r.retain(|(p, _)| p != path);
        r.push((path.to_owned(), reply));
    }

    fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.starts_with(path))
            .count()
    }

    /// A JWT provider whose issuer is this fake (discovery used).
    fn jwt_provider(&self) -> Provider {
        let mut p = Provider::new("fake", &self.base, ProviderMode::Jwt);
        p.audiences = vec![AUD.to_owned()];
        p.request_timeout = Duration::from_millis(500);
        p.connect_timeout = Duration::from_millis(500);
        p
    }

    fn discovery(&self) {
        self.route(
            "/.well-known/openid-configuration",
            Reply::Json(
                200,
                json!({"issuer": self.base, "jwks_uri": format!("{}/jwks", self.base),
                       "introspection_endpoint": format!("{}/introspect", self.base)})
                .to_string(),
            ),
        );
    }
}

fn verifier(providers: Vec<Provider>) -> Verifier {
    Verifier::new(&OAuth {
        providers,
        ..OAuth::default()
    })
    .unwrap()
}

fn secret(s: &str) -> Secret<String> {
    Secret::new(s.to_owned())
}

#[track_caller]
fn assert_invalid(r: &Result<VerifiedToken, AuthError>, want: fn(&InvalidReason) -> bool) {
    match r {
        Err(AuthError::Invalid(reason)) if want(reason) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn good_jwt_is_verified_and_cached() {
    let fake = Fake::start().await;
    let k = key("k1");
    fake.discovery();
    fake.route("/jwks", Reply::Json(200, jwks(&[&k])));
    let v = verifier(vec![fake.jwt_provider()]);
    let token = sign(&k, &claims(&fake.base));
    let t = v.verify(&secret(&token)).await.unwrap();
    assert_eq!(t.user, "alice@example.com");
    assert_eq!(t.client_id.as_deref(), Some("mail-app"));
    assert_eq!(t.mode, VerificationMode::Jwt);
    assert!(!t.delegated);
    assert_eq!(t.issuer, fake.base);
    // Second time: from the cache, no request at all.
    let again = v.verify(&secret(&token)).await.unwrap();
    assert_eq!(again, t);
    assert_eq!(fake.hits("/jwks"), 1);
    assert_eq!(fake.hits("/.well-known"), 1);
    assert_eq!(v.cached(), 1);
}

#[tokio::test]
async fn bad_jwts_are_invalid() {
    let fake = Fake::start().await;
    let k = key("k1");
    let other = key("k1"); // same kid, different key: a forged signature
    fake.discovery();
    fake.route("/jwks", Reply::Json(200, jwks(&[&k])));
    let v = verifier(vec![fake.jwt_provider()]);
    let iss = fake.base.clone();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(&iss);
        f(&mut c);
        c
    };

    let expired = sign(&k, &with(&|c| c["exp"] = json!(now_s() - 120)));
    assert_invalid(&v.verify(&secret(&expired)).await, |r| {
        *r == InvalidReason::Expired
    });

    let early = sign(&k, &with(&|c| c["nbf"] = json!(now_s() + 3600)));
    assert_invalid(&v.verify(&secret(&early)).await, |r| {
        *r == InvalidReason::NotYetValid
    });

    let wrong_aud = sign(
        &k,
        &with(&|c| c["aud"] = json!("https://elsewhere.example/")),
    );
    assert_invalid(&v.verify(&secret(&wrong_aud)).await, |r| {
        *r == InvalidReason::WrongAudience
    });

    let no_exp = sign(
        &k,
        &with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
    );
    assert_invalid(&v.verify(&secret(&no_exp)).await, |r| {
        *r == InvalidReason::MissingExpiry
    });

    let wrong_iss = sign(&k, &with(&|c| c["iss"] = json!("https://evil.example")));
    assert_invalid(
        &v.verify(&secret(&wrong_iss)).await,
        |r| matches!(r, InvalidReason::UnknownIssuer(i) if i == "https://evil.example"),
    );

    let forged = sign(&other, &claims(&iss));
    assert_invalid(&v.verify(&secret(&forged)).await, |r| {
        *r == InvalidReason::BadSignature
    });

    // Tampered payload, original signature.
    let good = sign(&k, &claims(&iss));
    let parts: Vec<&str> = good.split('.').collect();
    let evil = with(&|c| c["sub"] = json!("mallory@example.com"));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(evil.to_string()),
        parts[2]
    );
    assert_invalid(&v.verify(&secret(&tampered)).await, |r| {
        *r == InvalidReason::BadSignature
    });

    // `alg: none`, no signature.
    let none = forge(json!({"alg": "none", "kid": "k1"}), &claims(&iss), |_| {
        Vec::new()
    });
    assert_invalid(
        &v.verify(&secret(&none)).await,
        |r| matches!(r, InvalidReason::AlgorithmNotAllowed(a) if a == "none"),
    );

    // HS256 "signed" with the public key as HMAC secret: the classic key-confusion forgery.
    // Refused on the algorithm, before any key lookup.
    let public = serde_json::to_vec(&k.jwk).unwrap();
    let hs = forge(
        json!({"alg": "HS256", "kid": "k1"}),
        &claims(&iss),
        |input| {
            let key = EncodingKey::from_secret(&public);
            let sig = jsonwebtoken::crypto::sign(input, &key, Algorithm::HS256).unwrap();
            URL_SAFE_NO_PAD.decode(sig).unwrap()
        },
    );
    assert_invalid(
        &v.verify(&secret(&hs)).await,
        |r| matches!(r, InvalidReason::AlgorithmNotAllowed(a) if a == "HS256"),
    );

    // Garbage that is neither a JWT nor an acceptable opaque token.
    assert_invalid(&v.verify(&secret("a b")).await, |r| {
        *r == InvalidReason::Malformed
    });
    assert_invalid(&v.verify(&secret("")).await, |r| {
        *r == InvalidReason::Malformed
    });
    assert_invalid(
        &v.verify(&secret("opaque-but-no-introspection")).await,
        |r| *r == InvalidReason::NoOpaqueProvider,
    );
    assert_eq!(
        fake.hits("/jwks"),
        1,
        "the JWKS was fetched once for all of these"
    );
}

#[tokio::test]
async fn unknown_kid_refreshes_the_jwks_once_then_rate_limits() {
    let fake = Fake::start().await;
    let old = key("old");
    let new = key("new");
    fake.discovery();
    fake.route("/jwks", Reply::Json(200, jwks(&[&old])));
    let mut p = fake.jwt_provider();
    p.jwks_refresh_min_interval = Duration::ZERO;
    let v = verifier(vec![p]);
    v.verify(&secret(&sign(&old, &claims(&fake.base))))
        .await
        .unwrap();
    // The IdP rotates: a token with the new kid makes mailgate refetch and accept it.
    fake.route("/jwks", Reply::Json(200, jwks(&[&new, &old])));
    let t = v
        .verify(&secret(&sign(&new, &claims(&fake.base))))
        .await
        .unwrap();
    assert_eq!(t.user, "alice@example.com");
    assert_eq!(fake.hits("/jwks"), 2);

    // Rate limit: with a 1 h interval, made-up kids cost one refetch, not one each.
    let fake = Fake::start().await;
    fake.discovery();
    fake.route("/jwks", Reply::Json(200, jwks(&[&old])));
    let mut p = fake.jwt_provider();
    p.jwks_refresh_min_interval = Duration::from_secs(3600);
    let v = verifier(vec![p]);
    v.verify(&secret(&sign(&old, &claims(&fake.base))))
        .await
        .unwrap();
    for i in 0..5 {
        let k = key(&format!("made-up-{i}"));
        let r = v.verify(&secret(&sign(&k, &claims(&fake.base)))).await;
        assert_invalid(&r, |r| matches!(r, InvalidReason::UnknownKey(_)));
    }
    assert_eq!(fake.hits("/jwks"), 1, "no refetch within the interval");
}

#[tokio::test]
async fn idp_trouble_is_unavailable_never_invalid() {
    let k = key("k1");

    // Garbage JWKS.
    let fake = Fake::start().await;
    fake.discovery();
    fake.route("/jwks", Reply::Json(200, "<html>oops</html>".into()));
    let v = verifier(vec![fake.jwt_provider()]);
    let r = v.verify(&secret(&sign(&k, &claims(&fake.base)))).await;
    assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
    // JSON, but no usable key.
    fake.route(
        "/jwks",
        Reply::Json(200, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into()),
    );
    let r = v.verify(&secret(&sign(&k, &claims(&fake.base)))).await;
    assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
    // 5xx.
    fake.route("/jwks", Reply::Json(503, "{}".into()));
    let r = v.verify(&secret(&sign(&k, &claims(&fake.base)))).await;
    assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
    assert_eq!(v.cached(), 0, "unavailable is never cached");

    // Huge body: cut at max_response_bytes.
    let fake = Fake::start().await;
    fake.discovery();
    fake.route("/jwks", Reply::Huge);
    let mut p = fake.jwt_provider();
    p.request_timeout = Duration::from_secs(5);
    let v = verifier(vec![p]);
    let r = v.verify(&secret(&sign(&k, &claims(&fake.base)))).await;
    match r {
        Err(AuthError::Unavailable(d)) => assert!(d.contains("larger than"), "{d}"),
        other => panic!("{other:?}"),
    }

    // Hanging IdP: unavailable once request_timeout passes.
    let fake = Fake::start().await;
    fake.discovery();
    fake.route("/jwks", Reply::Hang);
    let mut p = fake.jwt_provider();
    p.request_timeout = Duration::from_millis(300);
    let v = verifier(vec![p]);
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        v.verify(&secret(&sign(&k, &claims(&fake.base)))),
    )
    .await
    .expect("bounded by request_timeout");
    match r {
        Err(AuthError::Unavailable(d)) => assert!(d.contains("timed out"), "{d}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));

    // IdP down: nothing listens on the port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut p = Provider::new("down", &format!("http://{closed}"), ProviderMode::Jwt);
    p.audiences = vec![AUD.into()];
    let v = verifier(vec![p]);
    let r = v
        .verify(&secret(&sign(&k, &claims(&format!("http://{closed}")))))
        .await;
    assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
}

fn introspection_provider(fake: &Fake) -> Provider {
    let mut p = Provider::new("opaque", &fake.base, ProviderMode::Introspection);
    p.introspection_endpoint = Some(format!("{}/introspect", fake.base));
    p.client_id = Some("mailgate".into());
    p.client_secret = Some(Secret::new("mailgate-secret".into()));
    p.audiences = vec![AUD.into()];
    p
}

#[tokio::test]
async fn introspection_active_inactive_and_cache() {
    let fake = Fake::start().await;
    let active = json!({"active": true, "sub": "bob@example.com", "client_id": "other-client",
                        "iss": fake.base, "aud": AUD, "exp": now_s() + 600});
    fake.route("/introspect", Reply::Json(200, active.to_string()));
    let v = verifier(vec![introspection_provider(&fake)]);
    let t = v.verify(&secret("opaque-token-1")).await.unwrap();
    assert_eq!(t.user, "bob@example.com");
    assert_eq!(t.client_id.as_deref(), Some("other-client"));
    assert_eq!(t.mode, VerificationMode::Introspection);
    v.verify(&secret("opaque-token-1")).await.unwrap();
    assert_eq!(fake.hits("/introspect"), 1, "cache hit");

    fake.route(
        "/introspect",
        Reply::Json(200, r#"{"active":false}"#.into()),
    );
    for _ in 0..3 {
        assert_invalid(&v.verify(&secret("opaque-token-2")).await, |r| {
            *r == InvalidReason::Inactive
        });
    }
    assert_eq!(fake.hits("/introspect"), 2, "negative verdict cached too");

    // Active, but for another audience or issuer.
    let other_aud = json!({"active": true, "sub": "bob@example.com", "aud": "https://x/"});
    fake.route("/introspect", Reply::Json(200, other_aud.to_string()));
    assert_invalid(&v.verify(&secret("opaque-token-3")).await, |r| {
        *r == InvalidReason::WrongAudience
    });
    let other_iss = json!({"active": true, "sub": "bob@example.com", "iss": "https://x"});
    fake.route("/introspect", Reply::Json(200, other_iss.to_string()));
    assert_invalid(&v.verify(&secret("opaque-token-4")).await, |r| {
        matches!(r, InvalidReason::WrongIssuer(_))
    });
    // Bad client credentials at the IdP: mailgate's problem, not the token's.
    fake.route(
        "/introspect",
        Reply::Json(401, r#"{"error":"invalid_client"}"#.into()),
    );
    let r = v.verify(&secret("opaque-token-5")).await;
    assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
}

#[tokio::test]
async fn concurrent_verifications_share_one_lookup() {
    let fake = Fake::start().await;
    let active = json!({"active": true, "sub": "bob@example.com", "exp": now_s() + 600});
    fake.route(
        "/introspect",
        Reply::Slow(Duration::from_millis(300), active.to_string()),
    );
    let v = Arc::new(verifier(vec![introspection_provider(&fake)]));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (v, done) = (v.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            v.verify(&secret("same-opaque-token")).await.unwrap();
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 20);
    assert_eq!(fake.hits("/introspect"), 1);
}

#[tokio::test]
async fn tokeninfo_mode() {
    let fake = Fake::start().await;
    // Google's answer: exp as a string, no iss, aud = the client.
    let info = json!({"azp": "123.apps", "aud": "123.apps", "sub": "1", "email": "carol@example.com",
                      "exp": (now_s() + 600).to_string(), "scope": "https://mail.google.com/"});
    fake.route("/tokeninfo", Reply::Json(200, info.to_string()));
    let mut p = Provider::new(
        "google",
        "https://accounts.google.com",
        ProviderMode::Tokeninfo,
    );
    p.tokeninfo_endpoint = Some(format!("{}/tokeninfo", fake.base));
    p.delegation.client_ids = vec!["123.apps".into()];
    let v = verifier(vec![p]);
    let t = v.verify(&secret("ya29.opaque-google-token")).await.unwrap();
    assert_eq!(t.user, "carol@example.com");
    assert_eq!(t.client_id.as_deref(), Some("123.apps"));
    assert!(t.delegated, "client id listed in delegated_client_ids");
    assert_eq!(t.mode, VerificationMode::Tokeninfo);
    fake.route(
        "/tokeninfo",
        Reply::Json(400, r#"{"error":"invalid_token"}"#.into()),
    );
    assert_invalid(&v.verify(&secret("ya29.other")).await, |r| {
        *r == InvalidReason::Inactive
    });
}

#[tokio::test]
async fn unverified_mode_reads_claims_without_keys() {
    // Entra style: nobody fetches anything; the signature is not checked.
    let mut p = Provider::new(
        "entra",
        "https://sts.windows.net/tenant/",
        ProviderMode::Unverified,
    );
    p.jwks_uri = Some("http://127.0.0.1:9/never".into());
    let v = verifier(vec![p]);
    let c = json!({"iss": "https://sts.windows.net/tenant/", "upn": "dave@example.com",
                   "appid": "outlook", "exp": now_s() + 600, "act": {"sub": "svc"}});
    let token = forge(json!({"alg": "RS256", "nonce": "x"}), &c, |_| {
        b"unverifiable".to_vec()
    });
    let t = v.verify(&secret(&token)).await.unwrap();
    assert_eq!(t.mode, VerificationMode::UnverifiedClaims);
    assert_eq!(t.user, "dave@example.com");
    assert_eq!(t.client_id.as_deref(), Some("outlook"));
    assert!(t.delegated, "act claim marks delegation");
    let mut c2 = c.clone();
    c2["exp"] = json!(now_s() - 3600);
    let expired = forge(json!({"alg": "RS256"}), &c2, |_| b"x".to_vec());
    assert_invalid(&v.verify(&secret(&expired)).await, |r| {
        *r == InvalidReason::Expired
    });
}

#[test]
fn claim_checks_take_now_as_an_argument() {
    let mut p = Provider::new("p", "https://idp", ProviderMode::Jwt);
    p.leeway = Duration::from_secs(30);
    let c = json!({"iss": "https://idp", "sub": "u", "exp": 1000, "nbf": 500});
    let c = c.as_object().unwrap();
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    let mode = VerificationMode::Jwt;
    assert!(
        jwt::check_and_identify(c, &p, at(1029), mode).is_ok(),
        "inside leeway"
    );
    assert!(
        jwt::check_and_identify(c, &p, at(1030), mode).is_err(),
        "expired"
    );
    assert!(
        jwt::check_and_identify(c, &p, at(470), mode).is_ok(),
        "nbf with leeway"
    );
    assert!(
        jwt::check_and_identify(c, &p, at(469), mode).is_err(),
        "too early"
    );
    let wrong = json!({"iss": "https://other", "sub": "u", "exp": 1000});
    assert_eq!(
        jwt::check_and_identify(wrong.as_object().unwrap(), &p, at(10), mode),
        Err(AuthError::Invalid(InvalidReason::WrongIssuer(
            "https://other".into()
        )))
    );
    let no_user = json!({"iss": "https://idp", "exp": 1000});
    assert!(matches!(
        jwt::check_and_identify(no_user.as_object().unwrap(), &p, at(10), mode),
        Err(AuthError::Invalid(InvalidReason::NoUser(_)))
    ));
}

/// Found by the `jwt_claims` fuzz target: an `exp` past what `SystemTime` can hold (`1e300`
/// saturates to `u64::MAX` seconds) panicked in `UNIX_EPOCH + Duration` while building
/// `expires_at`. With `unverified` providers any client can send such a token.
#[test]
fn fuzz_jwt_claims_exp_beyond_system_time() {
    let p = Provider::new("p", "https://idp", ProviderMode::Unverified);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for exp in [
        json!(1e300),
        json!(u64::MAX),
        json!(i64::MAX as u64 + 1),
        json!("18446744073709551615"),
    ] {
        let c = json!({"iss": "https://idp", "sub": "u", "exp": exp});
        for mode in [
            VerificationMode::Jwt,
            VerificationMode::UnverifiedClaims,
            VerificationMode::Introspection,
            VerificationMode::Tokeninfo,
        ] {
            let t = jwt::check_and_identify(c.as_object().unwrap(), &p, now, mode)
                .unwrap_or_else(|e| panic!("exp {exp} ({mode:?}): {e}"));
            // Not representable: treated as "no known expiry", so the cache caps the verdict.
            assert_eq!(t.expires_at, None, "exp {exp}");
        }
    }
}

#[tokio::test]
async fn the_token_never_appears_in_errors_or_debug() {
    let fake = Fake::start().await;
    let k = key("k1");
    fake.discovery();
    fake.route("/jwks", Reply::Hang);
    let mut p = fake.jwt_provider();
    p.request_timeout = Duration::from_millis(200);
    let mut info = Provider::new("info", "https://info.example", ProviderMode::Tokeninfo);
    info.tokeninfo_endpoint = Some(format!("{}/tokeninfo", fake.base));
    info.request_timeout = Duration::from_millis(200);
    fake.route("/tokeninfo", Reply::Hang);
    let v = verifier(vec![p, info]);
    let jwt = sign(&k, &claims(&fake.base));
    let opaque = "KNOWN-opaque-token-Zq9";
    let mut shown = Vec::new();
    for t in [jwt.as_str(), opaque] {
        let s = secret(t);
        let r = v.verify(&s).await;
        assert!(r.is_err());
        shown.push(format!("{r:?}"));
        shown.push(format!("{}", r.unwrap_err()));
        shown.push(format!("{s:?}"));
    }
    shown.push(format!("{v:?}"));
    let sig = jwt.rsplit('.').next().unwrap();
    for line in &shown {
        assert!(!line.contains(opaque), "{line}");
        assert!(!line.contains(sig), "{line}");
        assert!(!line.contains(&jwt), "{line}");
    }
}
