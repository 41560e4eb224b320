//! OAuth against the real IdP (oidc-provider, see `idp.rs`): mailgate's `Verifier` with real
//! JWT and opaque access tokens, and Dovecot's oauth2 passdb validating the same tokens with
//! no proxy in between (the upstream half of an XOAUTH2/OAUTHBEARER login).

use std::time::Duration;

use mailgate::auth::{AuthError, InvalidReason, VerificationMode, Verifier};
use mailgate::config::oauth::{OAuth, Provider, ProviderMode};
use mailgate::secret::Secret;

use crate::dovecot::Dovecot;
use crate::idp::{Idp, JWT_AUDIENCE, OPAQUE_AUDIENCE, TokenKind};
use crate::util::{assert_success, json_output, run_curl, run_python};

/// One provider for the whole IdP: JWTs against its JWKS (found by discovery), opaque tokens
/// by introspection as client `mailgate`.
fn provider(idp: &Idp) -> Provider {
    let mut p = Provider::new("test-idp", &idp.issuer, ProviderMode::Jwt);
    p.audiences = vec![JWT_AUDIENCE.to_owned(), OPAQUE_AUDIENCE.to_owned()];
    p.client_id = Some("mailgate".into());
    p.client_secret = Some(Secret::new("mailgate-secret".into()));
    p.request_timeout = Duration::from_secs(5);
    p
}

fn verifier(p: Provider) -> Verifier {
    Verifier::new(&OAuth {
        providers: vec![p],
        ..OAuth::default()
    })
    .expect("verifier")
}

async fn verify(v: &Verifier, token: &str) -> Result<mailgate::auth::VerifiedToken, AuthError> {
    tokio::time::timeout(
        Duration::from_secs(20),
        v.verify(&Secret::new(token.to_owned())),
    )
    .await
    .expect("verify is bounded")
}

#[tokio::test]
async fn real_jwt_and_opaque_tokens_verify() {
    let idp = Idp::start().await;
    let v = verifier(provider(&idp));

    let jwt = idp
        .token("alice@example.com", "mail-app", TokenKind::Jwt)
        .await;
    let t = verify(&v, &jwt).await.expect("jwt");
    assert_eq!(t.user, "alice@example.com");
    assert_eq!(t.client_id.as_deref(), Some("mail-app"));
    assert_eq!(t.mode, VerificationMode::Jwt);
    assert_eq!(t.issuer, idp.issuer);
    assert!(!t.delegated);
    assert!(t.expires_at.is_some());

    let other = idp
        .token("bob@example.com", "other-client", TokenKind::Jwt)
        .await;
    let t = verify(&v, &other).await.expect("other client jwt");
    assert_eq!(
        (t.user.as_str(), t.client_id.as_deref()),
        ("bob@example.com", Some("other-client"))
    );

    let opaque = idp
        .token("bob@example.com", "other-client", TokenKind::Opaque)
        .await;
    assert!(!opaque.contains('.'), "opaque tokens are not JWTs");
    let t = verify(&v, &opaque).await.expect("opaque");
    assert_eq!(t.user, "bob@example.com");
    assert_eq!(t.client_id.as_deref(), Some("other-client"));
    assert_eq!(t.mode, VerificationMode::Introspection);

    // An opaque token the IdP never issued: introspection says inactive.
    let r = verify(&v, "bm90LWEtcmVhbC10b2tlbi1hdC1hbGwtMTIzNDU2Nzg5").await;
    assert_eq!(r, Err(AuthError::Invalid(InvalidReason::Inactive)));
}

#[tokio::test]
async fn real_tokens_for_another_audience_or_issuer_are_invalid() {
    let idp = Idp::start().await;
    let mut p = provider(&idp);
    p.audiences = vec!["https://not-mail.example.com/".into()];
    let v = verifier(p);
    let jwt = idp
        .token("alice@example.com", "mail-app", TokenKind::Jwt)
        .await;
    assert_eq!(
        verify(&v, &jwt).await,
        Err(AuthError::Invalid(InvalidReason::WrongAudience))
    );
    let opaque = idp
        .token("alice@example.com", "mail-app", TokenKind::Opaque)
        .await;
    assert_eq!(
        verify(&v, &opaque).await,
        Err(AuthError::Invalid(InvalidReason::WrongAudience))
    );

    // A second, unrelated IdP's token: its issuer is not configured here.
    let stranger = Idp::start().await;
    let v = verifier(provider(&idp));
    let jwt = stranger
        .token("alice@example.com", "mail-app", TokenKind::Jwt)
        .await;
    assert!(
        matches!(
            verify(&v, &jwt).await,
            Err(AuthError::Invalid(InvalidReason::UnknownIssuer(_)))
        ),
        "foreign issuer"
    );
}

#[tokio::test]
async fn key_rotation_is_picked_up_without_restart() {
    let idp = Idp::start().await;
    let mut p = provider(&idp);
    // A real deployment keeps the 30 s default; the test must not wait for it.
    p.jwks_refresh_min_interval = Duration::ZERO;
    let v = verifier(p);
    let before = idp
        .token("alice@example.com", "mail-app", TokenKind::Jwt)
        .await;
    verify(&v, &before).await.expect("before rotation");

    let kid = idp.rotate_keys().await;
    let after = idp
        .token("alice@example.com", "mail-app", TokenKind::Jwt)
        .await;
    let header = mailgate::auth::jwt::peek(&after).expect("jwt");
    assert_eq!(
        header.kid.as_deref(),
        Some(kid.as_str()),
        "signed with the new key"
    );
    // Unknown kid → JWKS refetched → found.
    verify(&v, &after).await.expect("after rotation");
    // The old key is still published, so older tokens keep working.
    verify(&v, &before).await.expect("old token after rotation");
}

#[tokio::test]
async fn idp_down_is_unavailable() {
    let idp = Idp::start().await;
    let p = provider(&idp);
    let jwt = idp
        .token("alice@example.com", "mail-app", TokenKind::Jwt)
        .await;
    let opaque = idp
        .token("alice@example.com", "mail-app", TokenKind::Opaque)
        .await;
    drop(idp);
    let v = verifier(p);
    for token in [&jwt, &opaque] {
        let r = verify(&v, token).await;
        assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
        let shown = format!("{r:?} {}", r.as_ref().unwrap_err());
        assert!(!shown.contains(token.as_str()), "{shown}");
    }
}

/// Dovecot 2.3's oauth2 passdb validating the IdP's opaque tokens by RFC 7662 introspection
/// (POST, client `dovecot` with HTTP Basic in the URL). JWTs cannot go this way: oidc-provider
/// refuses to introspect structured tokens ("Structured JWT Tokens cannot be introspected").
fn dovecot_with_introspection(idp: &Idp) -> Dovecot {
    let url = idp
        .introspection_endpoint
        .replacen("http://", "http://dovecot:dovecot-secret@", 1);
    Dovecot::builder()
        .oauth2(&format!(
            "introspection_mode = post\n\
             introspection_url = {url}\n\
             username_attribute = sub\n\
             active_attribute = active\n\
             active_value = true\n\
             timeout_msecs = 5000\n"
        ))
        .start()
}

#[tokio::test]
async fn dovecot_oauth2_passdb_accepts_idp_tokens_curl() {
    let idp = Idp::start().await;
    let dovecot = dovecot_with_introspection(&idp);
    let alice = dovecot.alice().clone();
    let expected = dovecot.messages(&alice.name);
    let ca = dovecot.ca_pem.display().to_string();
    let port = dovecot.imaps_addr.port();
    let resolve = format!("localhost:{port}:127.0.0.1");
    for mech in ["XOAUTH2", "OAUTHBEARER"] {
        let token = idp.token(&alice.name, "mail-app", TokenKind::Opaque).await;
        let url = format!("imaps://localhost:{port}/INBOX;MAILINDEX=1");
        let out = run_curl(&[
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "--user",
            &alice.name,
            "--oauth2-bearer",
            &token,
            "--login-options",
            &format!("AUTH={mech}"),
            &url,
        ])
        .await;
        assert_success(&out);
        assert_eq!(out.stdout, expected[0], "{mech}: first message");
    }
    // A token the IdP does not know.
    let out = run_curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--user",
        &alice.name,
        "--oauth2-bearer",
        "bm90LWEtcmVhbC10b2tlbi1hdC1hbGwtMTIzNDU2Nzg5",
        "--login-options",
        "AUTH=XOAUTH2",
        &format!("imaps://localhost:{port}/INBOX;MAILINDEX=1"),
    ])
    .await;
    assert!(!out.status.success(), "bad token must fail");
}

#[tokio::test]
async fn dovecot_oauth2_passdb_python_imap_and_pop3() {
    let idp = Idp::start().await;
    let dovecot = dovecot_with_introspection(&idp);
    let alice = dovecot.alice().clone();
    let ca = dovecot.ca_pem.display().to_string();
    let imaps = dovecot.imaps_addr.port().to_string();
    let pop3s = dovecot.pop3s_addr.port().to_string();
    for (script, port, mech) in [
        ("imap_client.py", &imaps, "xoauth2"),
        ("imap_client.py", &imaps, "oauthbearer"),
        ("pop3_client.py", &pop3s, "xoauth2"),
        ("pop3_client.py", &pop3s, "oauthbearer"),
    ] {
        let token = idp.token(&alice.name, "mail-app", TokenKind::Opaque).await;
        // `--token=…` in one argument: an opaque token may start with '-', which argparse
        // would take for an option after a separate `--token`.
        let token_arg = format!("--token={token}");
        let args = [
            "--port",
            port.as_str(),
            "--cafile",
            &ca,
            "--servername",
            "localhost",
            "--user",
            &alice.name,
            "--auth",
            mech,
            &token_arg,
        ];
        let out = run_python(script, &args).await;
        assert_success(&out);
        let json = json_output(&out);
        assert_eq!(json["ok"], true, "{script} {mech}: {json}");
        crate::util::assert_same_messages(&dovecot.messages(&alice.name), &json);

        // Bob's token presented as alice: Dovecot's user check refuses it.
        let bobs = idp
            .token("bob@example.com", "mail-app", TokenKind::Opaque)
            .await;
        let bobs_arg = format!("--token={bobs}");
        let mut bad = args.to_vec();
        bad[10] = &bobs_arg;
        bad.push("--expect-fail");
        let out = run_python(script, &bad).await;
        assert_success(&out);
        assert_eq!(json_output(&out)["refused"], true, "{script} {mech}");
    }
}
