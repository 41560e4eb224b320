//! OAuth through mailgate: a real IdP (oidc-provider) issues the tokens, mailgate verifies them
//! (JWT against the JWKS, opaque ones by introspection) and applies the client allowlist, and a
//! real Dovecot validates the replayed token again with its oauth2 passdb.

use base64::Engine as _;

use crate::dovecot::{Dovecot, User};
use crate::idp::{Idp, JWT_AUDIENCE, OPAQUE_AUDIENCE, TokenKind};
use crate::mailgate::{Mailgate, MailgateBuilder};
use crate::util::{TcpLineClient, assert_success, json_output, run_python};

/// bob is in /Sales: IMAP only for the `mail-app` OAuth client; POP for anyone.
const DIRECTORY: &str = r#"
internal_domains = ["example.com"]
[[ou]]
path = "/"
pop = true
imap = true
imap_clients = "all"
password_logins = true
[[ou]]
path = "/Sales"
imap_clients = "allowlist"
imap_allowed_client_ids = ["mail-app"]
[[user]]
email = "alice@example.com"
ou = "/"
[[user]]
email = "bob@example.com"
ou = "/Sales"
"#;

fn dovecot(idp: &Idp) -> Dovecot {
    let url = idp
        .introspection_endpoint
        .replacen("http://", "http://dovecot:dovecot-secret@", 1);
    Dovecot::builder()
        .users(vec![
            User::new("alice@example.com", "alice-secret"),
            User::new("bob@example.com", "bob-secret"),
        ])
        .oauth2(&format!(
            "introspection_mode = post\nintrospection_url = {url}\nusername_attribute = sub\n\
             active_attribute = active\nactive_value = true\ntimeout_msecs = 5000\n"
        ))
        .start()
}

/// mailgate in front of `dovecot`, trusting `issuer` (whose endpoints may be down).
fn mailgate(dovecot: &Dovecot, issuer: &str, introspection: &str) -> MailgateBuilder {
    let mut builder = Mailgate::builder(dovecot);
    let secret = builder.files().join("client-secret");
    std::fs::write(&secret, "mailgate-secret").expect("write secret");
    builder
        .policy(DIRECTORY, "contact = \"it-help@example.com\"")
        .extra(&format!(
            "[[oauth.provider]]\nname = \"test-idp\"\nissuer = \"{issuer}\"\n\
             introspection_endpoint = \"{introspection}\"\nclient_id = \"mailgate\"\n\
             client_secret_file = \"{}\"\naudiences = [\"{JWT_AUDIENCE}\", \"{OPAQUE_AUDIENCE}\"]\n\
             request_timeout = \"2s\"\n",
            secret.display()
        ))
}

fn xoauth2(user: &str, token: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

/// AUTHENTICATE XOAUTH2 on a plain IMAP listener; answers the error challenge like Gmail's
/// clients do. Returns (challenge JSON if any, final line).
async fn imap_xoauth2(mailgate: &Mailgate, user: &str, token: &str) -> (Option<String>, String) {
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let first = imap
        .command(&format!("a AUTHENTICATE XOAUTH2 {}", xoauth2(user, token)))
        .await;
    match first.strip_prefix("+ ") {
        Some(challenge) => {
            let json = base64::engine::general_purpose::STANDARD
                .decode(challenge.trim())
                .expect("challenge is base64");
            let last = imap.command("").await;
            (Some(String::from_utf8_lossy(&json).into_owned()), last)
        }
        None => (None, first),
    }
}

#[tokio::test]
async fn allowed_client_reads_mail_other_client_and_bad_tokens_are_refused() {
    let idp = Idp::start().await;
    let dovecot = dovecot(&idp);
    let mailgate = mailgate(&dovecot, &idp.issuer, &idp.introspection_endpoint)
        .start()
        .await;
    let bob = "bob@example.com";

    // The allowlisted client, opaque token: mailgate introspects, Dovecot introspects again,
    // and real imaplib reads bob's mail.
    let token = idp.token(bob, "mail-app", TokenKind::Opaque).await;
    let port = mailgate.addr("imap-plain").port().to_string();
    // `--token=…` in one argument: an opaque token may start with '-', which argparse would
    // take for an option.
    let token_arg = format!("--token={token}");
    let out = run_python(
        "imap_client.py",
        &[
            "--port", &port, "--tls", "none", "--user", bob, "--auth", "xoauth2", &token_arg,
        ],
    )
    .await;
    assert_success(&out);
    crate::util::assert_same_messages(&dovecot.messages(bob), &json_output(&out));

    // Another client's valid JWT: refused by the allowlist, with the specific reason (the
    // token proved who bob is).
    let other = idp.token(bob, "other-client", TokenKind::Jwt).await;
    let (challenge, reply) = imap_xoauth2(&mailgate, bob, &other).await;
    assert!(reply.starts_with("a NO [AUTHORIZATIONFAILED]"), "{reply}");
    assert!(reply.contains("it-help@example.com"), "{reply}");
    assert!(challenge.is_some_and(|c| c.contains("\"status\":\"400\"")));

    // bob's token presented as alice: token_user_mismatch, refused before the upstream, with
    // the answer a wrong password (or an unassigned shared mailbox) gets, so a token holder
    // cannot tell which names are shared mailboxes.
    let (_, reply) = imap_xoauth2(&mailgate, "alice@example.com", &other).await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert!(!reply.contains("it-help@example.com"), "{reply}");

    // Tampered signature and garbage: invalid_token. (Expiry, audience, issuer, `alg: none`
    // and HMAC-with-the-public-key are covered with self-made keys in src/auth/tests.rs.)
    let good = idp.token(bob, "mail-app", TokenKind::Jwt).await;
    let mut tampered = good.clone();
    let last = tampered.pop().map(|c| if c == 'A' { 'B' } else { 'A' });
    tampered.extend(last);
    for bad in [tampered.as_str(), "not-a-token"] {
        let (challenge, reply) = imap_xoauth2(&mailgate, bob, bad).await;
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
        assert!(
            challenge.is_some(),
            "XOAUTH2 failures send the JSON challenge first"
        );
    }
    // And the good JWT of the allowlisted client passes mailgate (Dovecot's introspection
    // cannot check JWTs, so Dovecot has the last word and refuses it).
    let (_, reply) = imap_xoauth2(&mailgate, bob, &good).await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert!(
        dovecot.log().contains("bob@example.com"),
        "{}",
        dovecot.log()
    );
    // The mismatched token never reached Dovecot.
    assert!(!dovecot.log().contains("alice"), "{}", dovecot.log());
    // The "token verified" / "token refused" lines name the mode, the provider and the
    // refusal's reason, never the token: no signature (the part that makes a JWT a
    // credential) of any token tried above, refused or accepted, is in mailgate's log.
    let logs = crate::mailgate::captured_logs();
    for token in [&other, &tampered, &good] {
        let signature = token.rsplit('.').next().expect("a JWT has parts");
        assert!(signature.len() > 20, "{token}");
        assert!(!logs.contains(signature), "a token's signature in the log");
    }
}

#[tokio::test]
async fn pop3_xoauth2_and_oauthbearer_are_verified_and_replayed() {
    let idp = Idp::start().await;
    let dovecot = dovecot(&idp);
    let mailgate = mailgate(&dovecot, &idp.issuer, &idp.introspection_endpoint)
        .start()
        .await;
    let port = mailgate.addr("pop3-plain").port().to_string();
    for mech in ["xoauth2", "oauthbearer"] {
        // POP has no client allowlist: any client of the trusted IdP may read mail.
        let token = idp
            .token("alice@example.com", "other-client", TokenKind::Opaque)
            .await;
        let out = run_python(
            "pop3_client.py",
            &[
                "--port",
                &port,
                "--tls",
                "none",
                "--user",
                "alice@example.com",
                "--auth",
                mech,
                &format!("--token={token}"),
            ],
        )
        .await;
        assert_success(&out);
        assert_eq!(json_output(&out)["count"], 5, "{mech}");
    }
}

#[tokio::test]
async fn idp_down_is_a_temporary_failure_never_an_allow() {
    let idp = Idp::start().await;
    let dovecot = dovecot(&idp);
    let dead = format!("http://127.0.0.1:{}", crate::util::free_port());
    let mailgate = mailgate(&dovecot, &dead, &format!("{dead}/token/introspection"))
        .start()
        .await;
    let token = idp
        .token("alice@example.com", "mail-app", TokenKind::Opaque)
        .await;
    let (challenge, reply) = imap_xoauth2(&mailgate, "alice@example.com", &token).await;
    assert!(reply.starts_with("a NO [UNAVAILABLE]"), "{reply}");
    assert!(
        challenge.is_none(),
        "a temporary failure asks for a retry, not a new token"
    );
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    let reply = pop3
        .command(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2("alice@example.com", &token)
        ))
        .await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
}

#[tokio::test]
async fn curl_oauth2_bearer_through_mailgate() {
    let idp = Idp::start().await;
    let dovecot = dovecot(&idp);
    let mailgate = mailgate(&dovecot, &idp.issuer, &idp.introspection_endpoint)
        .start()
        .await;
    let bob = "bob@example.com";
    let expected = dovecot.messages(bob);
    // curl picks OAUTHBEARER when offered (mailgate offers both; XOAUTH2 is covered by the
    // Python clients above). Twice: the second token may hit mailgate's verdict cache.
    for options in [None, Some("AUTH=OAUTHBEARER")] {
        let token = idp.token(bob, "mail-app", TokenKind::Opaque).await;
        let url = format!(
            "imap://127.0.0.1:{}/INBOX;MAILINDEX=2",
            mailgate.addr("imap-plain").port()
        );
        let mut args = vec!["--user", bob, "--oauth2-bearer", &token, &url];
        if let Some(o) = options {
            args.extend(["--login-options", o]);
        }
        let out = crate::util::run_curl(&args).await;
        assert_success(&out);
        assert_eq!(
            crate::util::MessageDigest::of(&out.stdout),
            crate::util::MessageDigest::of(&expected[1]),
            "{options:?}"
        );
    }
}
