//! Transcript tests for [`ImapFrontend`]: every script is run with its client input fed whole,
//! one byte at a time and in several other chunkings, and must give the same transcript.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::proto::ReplyClass;
use crate::secret::Secret;

const PLAIN_IR: &str = "AGFsaWNlAHMzY3JldA=="; // \0alice\0s3cret
const XOAUTH2_IR: &str = "dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnRvawEB";
const OAUTHBEARER_IR: &str = "bixhPWFsaWNlQGV4YW1wbGUuY29tLAFhdXRoPUJlYXJlciB5YTI5LnRvawEB";
const CHALLENGE: &str = r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
const CHALLENGE_B64: &str = "eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==";

const CAPS_TLS: &str = "IMAP4rev1 SASL-IR ID AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2 AUTH=OAUTHBEARER";
const CAPS_STARTTLS: &str = "IMAP4rev1 SASL-IR ID STARTTLS LOGINDISABLED";

/// The one clock read of these tests: an arbitrary base point every other time is relative to.
/// (The machine itself never reads the clock.)
fn t0() -> Instant {
    Instant::now()
}

#[derive(Clone, Debug)]
enum Step {
    /// Client bytes.
    C(Vec<u8>),
    /// The driver's verdict.
    Outcome(LoginOutcome),
    /// The driver finished the TLS handshake.
    Tls,
    /// `handle_timeout(t0 + d)`.
    Timeout(Duration),
}

use Step::{Outcome, Timeout, Tls};

fn c(bytes: impl AsRef<[u8]>) -> Step {
    Step::C(bytes.as_ref().to_vec())
}

#[derive(Debug, PartialEq)]
enum Item {
    S(String),
    E(FrontendEvent),
}

use Item::E;

fn s(text: impl Into<String>) -> Item {
    Item::S(text.into())
}

fn drain(m: &mut ImapFrontend, items: &mut Vec<Item>) {
    while let Some(bytes) = m.poll_transmit() {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match items.last_mut() {
            Some(Item::S(last)) => last.push_str(&text),
            _ => items.push(Item::S(text)),
        }
    }
    while let Some(event) = m.poll_event() {
        items.push(Item::E(event));
    }
}

/// Run `steps` after the greeting, feeding client bytes in chunks of `chunk`.
fn run(
    security: Security,
    limits: PreauthLimits,
    steps: &[Step],
    chunk: usize,
) -> (Vec<Item>, Bytes) {
    let start = t0();
    let mut m = ImapFrontend::new(security, limits, start);
    let _greeting = m.poll_transmit();
    let mut items = Vec::new();
    for step in steps {
        match step.clone() {
            Step::C(bytes) => {
                for part in bytes.chunks(chunk.max(1)) {
                    m.handle_input(part);
                    drain(&mut m, &mut items);
                }
            }
            Outcome(outcome) => m.handle_outcome(outcome),
            Tls => m.tls_established(),
            Timeout(d) => m.handle_timeout(start + d),
        }
        drain(&mut m, &mut items);
    }
    (items, m.into_residual())
}

/// Assert the transcript for every chunking; returns the residual.
fn check_with(
    security: Security,
    limits: PreauthLimits,
    steps: &[Step],
    expected: &[Item],
) -> Bytes {
    let (whole, residual) = run(security, limits, steps, usize::MAX);
    assert_eq!(whole, expected, "fed whole");
    for chunk in [1, 2, 3, 5, 8, 13] {
        let (items, rest) = run(security, limits, steps, chunk);
        assert_eq!(items, expected, "fed in chunks of {chunk}");
        assert_eq!(rest, residual, "residual, chunks of {chunk}");
    }
    residual
}

fn check(steps: &[Step], expected: &[Item]) -> Bytes {
    check_with(Security::Tls, PreauthLimits::default(), steps, expected)
}

fn password(user: &str, pass: &[u8], mechanism: Mechanism) -> FrontendEvent {
    FrontendEvent::LoginRequested(LoginRequest {
        mechanism,
        credentials: Credentials::Password {
            authzid: None,
            user: user.into(),
            password: Secret::new(pass.to_vec()),
        },
    })
}

fn bearer(mechanism: Mechanism) -> FrontendEvent {
    FrontendEvent::LoginRequested(LoginRequest {
        mechanism,
        credentials: Credentials::Bearer {
            user: Some("alice@example.com".into()),
            token: Secret::new("ya29.tok".into()),
            host: None,
            port: None,
        },
    })
}

fn refused(class: ReplyClass, text: &str, challenge: Option<&str>) -> Step {
    Outcome(LoginOutcome::Refused(Refusal {
        class,
        text: text.into(),
        challenge: challenge.map(|c| Bytes::copy_from_slice(c.as_bytes())),
    }))
}

fn accepted() -> Step {
    Outcome(LoginOutcome::Accepted {
        untagged: Bytes::from_static(b"* CAPABILITY IMAP4rev1 IDLE\r\n"),
        reply: Bytes::from_static(b"OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
    })
}

// ----- greeting, CAPABILITY, NOOP, LOGOUT, ID ---------------------------------------------------

#[test]
fn greeting_per_security() {
    for (security, caps) in [
        (Security::Tls, CAPS_TLS),
        (Security::Plaintext, CAPS_TLS),
        (Security::StartTlsOffered, CAPS_STARTTLS),
    ] {
        let mut m = ImapFrontend::new(security, PreauthLimits::default(), t0());
        let greeting = m.poll_transmit().unwrap();
        assert_eq!(
            greeting,
            format!("* OK [CAPABILITY {caps}] mailgate ready\r\n").as_bytes()
        );
        assert_eq!(m.poll_transmit(), None);
        assert_eq!(m.poll_event(), None);
    }
}

#[test]
fn capability_per_security() {
    for (security, caps) in [
        (Security::Tls, CAPS_TLS),
        (Security::Plaintext, CAPS_TLS),
        (Security::StartTlsOffered, CAPS_STARTTLS),
    ] {
        check_with(
            security,
            PreauthLimits::default(),
            &[c("a1 capability\r\n")],
            &[s(format!(
                "* CAPABILITY {caps}\r\na1 OK CAPABILITY completed\r\n"
            ))],
        );
    }
}

#[test]
fn noop_and_pipelining() {
    check(
        &[c("a NOOP\r\nb noop\nc CAPABILITY\r\n")],
        &[s(format!(
            "a OK NOOP completed\r\nb OK NOOP completed\r\n\
             * CAPABILITY {CAPS_TLS}\r\nc OK CAPABILITY completed\r\n"
        ))],
    );
}

#[test]
fn logout_closes_and_ignores_the_rest() {
    check(
        &[c("z LOGOUT\r\ny NOOP\r\n"), c("x NOOP\r\n")],
        &[
            s("* BYE mailgate logging out\r\nz OK LOGOUT completed\r\n"),
            E(FrontendEvent::Closed(CloseReason::Logout)),
        ],
    );
}

#[test]
fn id_answers_and_keeps_the_client_params() {
    let steps = [
        c("i ID (\"name\" \"Thunderbird\" \"version\" NIL {6+}\r\nvendor {3}\r\n"),
        c("Moz)\r\n"),
    ];
    check(
        &steps,
        &[s(
            "+ Ready for literal data\r\n* ID (\"name\" \"mailgate\")\r\ni OK ID completed\r\n",
        )],
    );
    let mut m = ImapFrontend::new(Security::Tls, PreauthLimits::default(), t0());
    m.handle_input(b"i ID (\"name\" \"Thunderbird\" \"version\" NIL)\r\n");
    assert_eq!(
        m.id_params(),
        Some(
            &[
                ("name".to_owned(), Some("Thunderbird".to_owned())),
                ("version".to_owned(), None)
            ][..]
        )
    );
    check(
        &[c("i ID NIL\r\n")],
        &[s("* ID (\"name\" \"mailgate\")\r\ni OK ID completed\r\n")],
    );
}

// ----- STARTTLS -----------------------------------------------------------------------------

#[test]
fn starttls_discards_injected_plaintext() {
    check_with(
        Security::StartTlsOffered,
        PreauthLimits::default(),
        &[
            c("a STARTTLS\r\nb LOGIN x y\r\n"),
            c("c LOGIN injected too\r\n"),
            Tls,
            c("d CAPABILITY\r\n"),
            c("e LOGIN alice s3cret\r\n"),
        ],
        &[
            s("a OK Begin TLS negotiation now\r\n"),
            E(FrontendEvent::TlsRequested),
            s(format!(
                "* CAPABILITY {CAPS_TLS}\r\nd OK CAPABILITY completed\r\n"
            )),
            E(password("alice", b"s3cret", Mechanism::ImapLogin)),
        ],
    );
}

#[test]
fn starttls_only_when_offered() {
    for security in [Security::Tls, Security::Plaintext] {
        check_with(
            security,
            PreauthLimits::default(),
            &[c("a STARTTLS\r\n"), Tls, c("b NOOP\r\n")],
            &[s("a BAD STARTTLS not available\r\nb OK NOOP completed\r\n")],
        );
    }
}

#[test]
fn login_before_starttls_is_refused_without_reading_credentials() {
    check_with(
        Security::StartTlsOffered,
        PreauthLimits::default(),
        &[
            c("a LOGIN alice s3cret\r\n"),
            c(format!("b AUTHENTICATE PLAIN {PLAIN_IR}\r\n")),
            c("c AUTHENTICATE PLAIN\r\n"),
            c("d LOGIN {5}\r\n"),
            c("e NOOP\r\n"),
        ],
        &[s(
            "a NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n\
             b NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n\
             c NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n\
             d NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n\
             e OK NOOP completed\r\n",
        )],
    );
}

// ----- LOGIN --------------------------------------------------------------------------------

#[test]
fn login_atoms() {
    check(
        &[c("a LOGIN alice s3cret\r\n")],
        &[E(password("alice", b"s3cret", Mechanism::ImapLogin))],
    );
}

#[test]
fn login_quoted_with_escapes() {
    check(
        &[c("a login \"alice@example.com\" \"p a\\\"ss\\\\w\"\r\n")],
        &[E(password(
            "alice@example.com",
            b"p a\"ss\\w",
            Mechanism::ImapLogin,
        ))],
    );
}

#[test]
fn login_synchronising_literals() {
    check(
        &[
            c("a LOGIN {5}\r\n"),
            c("alice {8}\r\n"),
            c("p\r\nss\"w\\\r\n"),
        ],
        &[
            s("+ Ready for literal data\r\n+ Ready for literal data\r\n"),
            E(password("alice", b"p\r\nss\"w\\", Mechanism::ImapLogin)),
        ],
    );
}

#[test]
fn login_non_synchronising_literals() {
    check(
        &[c("a LOGIN {5+}\r\nalice {6-}\r\ns3cret\r\n")],
        &[E(password("alice", b"s3cret", Mechanism::ImapLogin))],
    );
}

#[test]
fn oversize_sync_literal_is_refused_and_the_connection_stays_usable() {
    let limits = PreauthLimits {
        max_literal: 8,
        ..PreauthLimits::default()
    };
    check_with(
        Security::Tls,
        limits,
        &[c("a LOGIN alice {9}\r\n"), c("b NOOP\r\n")],
        &[s(
            "a BAD [TOOBIG] Literal too large\r\nb OK NOOP completed\r\n",
        )],
    );
}

#[test]
fn oversize_non_sync_literal_closes() {
    let limits = PreauthLimits {
        max_literal: 8,
        ..PreauthLimits::default()
    };
    check_with(
        Security::Tls,
        limits,
        &[c("a LOGIN alice {9+}\r\n123456789\r\n")],
        &[
            s("a BAD [TOOBIG] Literal too large\r\n* BYE Literal too large\r\n"),
            E(FrontendEvent::Closed(CloseReason::ProtocolViolation)),
        ],
    );
}

#[test]
fn login_rejects_nul_and_bad_user_names() {
    check(
        &[
            c("a LOGIN alice \"s3\0cret\"\r\n"),
            c("b LOGIN alice {3+}\r\ns\0c\r\n"),
            c("c LOGIN \"\" s3cret\r\n"),
            c("d LOGIN {3+}\r\na\nb s3cret\r\n"),
            c("e LOGIN alice\r\n"),
        ],
        &[s("a BAD Invalid command syntax\r\n\
             b BAD Invalid command syntax\r\n\
             c BAD Invalid user name\r\n\
             d BAD Invalid user name\r\n\
             e BAD Invalid command syntax\r\n")],
    );
}

/// Issue 9 item 4: a name over `max_username`, in any place a mechanism carries one, is
/// refused here with the generic credentials failure and counted as an attempt; the driver
/// never hears of it (no `LoginRequested`), so it reaches neither upstream nor log nor audit.
#[test]
fn oversized_user_names_are_refused_in_the_front_end() {
    let b64 = |raw: &[u8]| sasl::encode_base64(raw);
    let long = "u".repeat(321);
    let fits = "u".repeat(320);
    let refused = |tag: &str| {
        s(format!(
            "{tag} NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        ))
    };
    let table: Vec<(String, Vec<Item>)> = vec![
        // IMAP LOGIN: atom, quoted, literal.
        (format!("a LOGIN {long} pw\r\n"), vec![refused("a")]),
        (format!("a LOGIN \"{long}\" pw\r\n"), vec![refused("a")]),
        (
            format!("a LOGIN {{{}+}}\r\n{long} pw\r\n", long.len()),
            vec![refused("a")],
        ),
        // AUTHENTICATE PLAIN: authcid, and authzid.
        (
            format!(
                "a AUTHENTICATE PLAIN {}\r\n",
                b64(format!("\0{long}\0pw").as_bytes())
            ),
            vec![refused("a")],
        ),
        (
            format!(
                "a AUTHENTICATE PLAIN {}\r\n",
                b64(format!("{long}\0alice\0pw").as_bytes())
            ),
            vec![refused("a")],
        ),
        // SASL LOGIN: refused after the password step, like any failed login.
        (
            format!(
                "a AUTHENTICATE LOGIN {}\r\n{}\r\n",
                b64(long.as_bytes()),
                b64(b"pw")
            ),
            vec![s("+ UGFzc3dvcmQ6\r\n"), refused("a")],
        ),
        // XOAUTH2 `user=` and OAUTHBEARER `a=`.
        (
            format!(
                "a AUTHENTICATE XOAUTH2 {}\r\n",
                b64(format!("user={long}\x01auth=Bearer t\x01\x01").as_bytes())
            ),
            vec![refused("a")],
        ),
        (
            format!(
                "a AUTHENTICATE OAUTHBEARER {}\r\n",
                b64(format!("n,a={long},\x01auth=Bearer t\x01\x01").as_bytes())
            ),
            vec![refused("a")],
        ),
        // At the limit: reported as usual.
        (
            format!("a LOGIN {fits} pw\r\n"),
            vec![E(password(&fits, b"pw", Mechanism::ImapLogin))],
        ),
    ];
    for (input, expected) in table {
        // Transcripts merge consecutive server text: join a prompt with the refusal.
        let expected = match expected.as_slice() {
            [Item::S(a), Item::S(b)] => vec![s(format!("{a}{b}"))],
            _ => expected,
        };
        check(&[c(&input)], &expected);
    }
}

#[test]
fn oversized_user_names_count_as_attempts() {
    let long = "u".repeat(400);
    let limits = PreauthLimits {
        max_attempts: 2,
        max_username: 320,
        ..PreauthLimits::default()
    };
    check_with(
        Security::Tls,
        limits,
        &[c(format!(
            "a LOGIN {long} pw\r\nb LOGIN {long} pw\r\nc NOOP\r\n"
        ))],
        &[
            s("a NO [AUTHENTICATIONFAILED] Authentication failed\r\n\
               b NO [AUTHENTICATIONFAILED] Authentication failed\r\n\
               * BYE Too many invalid authentication attempts\r\n"),
            E(FrontendEvent::Closed(CloseReason::TooManyAttempts)),
        ],
    );
    // A configured limit applies.
    let limits = PreauthLimits {
        max_username: 64,
        ..PreauthLimits::default()
    };
    check_with(
        Security::Tls,
        limits,
        &[c(format!("a LOGIN {} pw\r\n", "u".repeat(65)))],
        &[s("a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")],
    );
}

// ----- upstream capabilities (issue 9 items 9, 10) --------------------------------------------

fn greeting_with(security: Security, upstream: &[&str]) -> String {
    let upstream: Vec<String> = upstream.iter().map(|c| (*c).to_owned()).collect();
    let mut m = ImapFrontend::with_upstream(security, PreauthLimits::default(), t0(), &upstream);
    String::from_utf8(m.poll_transmit().unwrap().to_vec()).unwrap()
}

#[test]
fn greeting_lists_what_the_upstream_offers_minus_what_mailgate_handles() {
    // Dovecot 2.3's pre-login list, as the replay learns it (upper-cased).
    let dovecot = [
        "IMAP4REV1",
        "SASL-IR",
        "LOGIN-REFERRALS",
        "ID",
        "ENABLE",
        "IDLE",
        "LITERAL+",
        "STARTTLS",
        "AUTH=PLAIN",
        "AUTH=CRAM-MD5",
        "LOGINDISABLED",
    ];
    assert_eq!(
        greeting_with(Security::Tls, &dovecot),
        "* OK [CAPABILITY IMAP4rev1 SASL-IR ID LOGIN-REFERRALS ENABLE IDLE LITERAL+ \
         AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2 AUTH=OAUTHBEARER] mailgate ready\r\n"
    );
    assert_eq!(
        greeting_with(Security::StartTlsOffered, &dovecot),
        "* OK [CAPABILITY IMAP4rev1 SASL-IR ID LOGIN-REFERRALS ENABLE IDLE LITERAL+ \
         STARTTLS LOGINDISABLED] mailgate ready\r\n"
    );
    // Courier: no LITERAL+, so none is advertised; duplicates and non-atoms are dropped.
    assert_eq!(
        greeting_with(
            Security::Plaintext,
            &["IMAP4rev1", "UIDPLUS", "IDLE", "idle", "X]Y", "CHILDREN"]
        ),
        "* OK [CAPABILITY IMAP4rev1 SASL-IR ID UIDPLUS IDLE CHILDREN \
         AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2 AUTH=OAUTHBEARER] mailgate ready\r\n"
    );
    // Not learnt yet: the safe base set, without LITERAL+.
    assert_eq!(
        greeting_with(Security::Tls, &[]),
        format!("* OK [CAPABILITY {CAPS_TLS}] mailgate ready\r\n")
    );
    assert!(!CAPS_TLS.contains("LITERAL"));
}

#[test]
fn capability_command_lists_the_same_as_the_greeting() {
    let upstream = vec!["ENABLE".to_owned(), "LITERAL-".to_owned()];
    let mut m =
        ImapFrontend::with_upstream(Security::Tls, PreauthLimits::default(), t0(), &upstream);
    let _ = m.poll_transmit();
    m.handle_input(b"a CAPABILITY\r\n");
    assert_eq!(
        String::from_utf8(m.poll_transmit().unwrap().to_vec()).unwrap(),
        "* CAPABILITY IMAP4rev1 SASL-IR ID ENABLE LITERAL- AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2 \
         AUTH=OAUTHBEARER\r\na OK CAPABILITY completed\r\n"
    );
}

// ----- AUTHENTICATE -------------------------------------------------------------------------

#[test]
fn authenticate_plain_with_and_without_initial_response() {
    check(
        &[c(format!("a AUTHENTICATE PLAIN {PLAIN_IR}\r\n"))],
        &[E(password("alice", b"s3cret", Mechanism::Plain))],
    );
    check(
        &[c("a authenticate plain\r\n"), c(format!("{PLAIN_IR}\r\n"))],
        &[
            s("+ \r\n"),
            E(password("alice", b"s3cret", Mechanism::Plain)),
        ],
    );
}

#[test]
fn authenticate_login_prompts() {
    check(
        &[
            c("a AUTHENTICATE LOGIN\r\n"),
            c("YWxpY2U=\r\n"),
            c("czNjcmV0\r\n"),
        ],
        &[
            s("+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n"),
            E(password("alice", b"s3cret", Mechanism::Login)),
        ],
    );
    check(
        &[c("a AUTHENTICATE LOGIN YWxpY2U=\r\n"), c("czNjcmV0\r\n")],
        &[
            s("+ UGFzc3dvcmQ6\r\n"),
            E(password("alice", b"s3cret", Mechanism::Login)),
        ],
    );
}

#[test]
fn authenticate_oauth_mechanisms() {
    check(
        &[c(format!("a AUTHENTICATE XOAUTH2 {XOAUTH2_IR}\r\n"))],
        &[E(bearer(Mechanism::XOAuth2))],
    );
    check(
        &[
            c("a AUTHENTICATE XOAUTH2\r\n"),
            c(format!("{XOAUTH2_IR}\r\n")),
        ],
        &[s("+ \r\n"), E(bearer(Mechanism::XOAuth2))],
    );
    check(
        &[c(format!(
            "a AUTHENTICATE OAUTHBEARER {OAUTHBEARER_IR}\r\n"
        ))],
        &[E(bearer(Mechanism::OAuthBearer))],
    );
    check(
        &[
            c("a AUTHENTICATE OAUTHBEARER\r\n"),
            c(format!("{OAUTHBEARER_IR}\r\n")),
        ],
        &[s("+ \r\n"), E(bearer(Mechanism::OAuthBearer))],
    );
}

#[test]
fn authenticate_cancel_bad_base64_and_malformed() {
    check(
        &[
            c("a AUTHENTICATE PLAIN\r\n*\r\n"),
            c("b AUTHENTICATE LOGIN\r\nYWxpY2U=\r\n*\r\n"),
            c("c AUTHENTICATE PLAIN\r\nnot base64!\r\n"),
            c("d AUTHENTICATE PLAIN AGFsaWNl=AHMz\r\n"),
            c("e AUTHENTICATE PLAIN =\r\n"),
            c("f AUTHENTICATE PLAIN\r\n\r\n"),
            c("g AUTHENTICATE PLAIN YWxpY2U=\r\n"),
            c("h NOOP\r\n"),
        ],
        &[s("+ \r\na BAD Authentication cancelled\r\n\
             + VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\nb BAD Authentication cancelled\r\n\
             + \r\nc BAD Invalid base64 in SASL response\r\n\
             d BAD Invalid base64 in SASL response\r\n\
             e BAD Malformed SASL response\r\n\
             + \r\nf BAD Malformed SASL response\r\n\
             g BAD Malformed SASL response\r\n\
             h OK NOOP completed\r\n")],
    );
}

#[test]
fn authenticate_unknown_mechanism() {
    check(
        &[c("a AUTHENTICATE CRAM-MD5\r\nb AUTHENTICATE\r\n")],
        &[s("a NO [CANNOT] Unsupported authentication mechanism\r\n\
             b BAD Invalid command syntax\r\n")],
    );
}

// ----- outcomes -----------------------------------------------------------------------------

#[test]
fn accepted_login_hands_off_pipelined_bytes_exactly() {
    let residual = check(
        &[
            c("a LOGIN alice s3cret\r\nb SELECT INBOX\r\n"),
            c("c FETCH 1 (FLAGS)\r\n{5}\r\n"),
            accepted(),
            c("d IDLE\r\n"),
        ],
        &[
            E(password("alice", b"s3cret", Mechanism::ImapLogin)),
            s("* CAPABILITY IMAP4rev1 IDLE\r\n\
               a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
        ],
    );
    assert_eq!(
        residual,
        &b"b SELECT INBOX\r\nc FETCH 1 (FLAGS)\r\n{5}\r\nd IDLE\r\n"[..]
    );
}

#[test]
fn refusal_wording_per_class() {
    for (class, code) in [
        (ReplyClass::Authorization, "AUTHORIZATIONFAILED"),
        (ReplyClass::Authentication, "AUTHENTICATIONFAILED"),
        (ReplyClass::Unavailable, "UNAVAILABLE"),
    ] {
        check(
            &[
                c("a LOGIN alice s3cret\r\n"),
                refused(class, "IMAP is off\r\nfor you (ref 42)", None),
                c("b NOOP\r\n"),
            ],
            &[
                E(password("alice", b"s3cret", Mechanism::ImapLogin)),
                s(format!(
                    "a NO [{code}] IMAP is offfor you (ref 42)\r\nb OK NOOP completed\r\n"
                )),
            ],
        );
    }
}

#[test]
fn refusal_reads_pipelined_commands_afterwards() {
    let residual = check(
        &[
            c("a LOGIN alice wrong\r\nb LOGIN alice s3cret\r\n"),
            refused(ReplyClass::Authentication, "Invalid credentials", None),
            accepted(),
        ],
        &[
            E(password("alice", b"wrong", Mechanism::ImapLogin)),
            s("a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"),
            E(password("alice", b"s3cret", Mechanism::ImapLogin)),
            s("* CAPABILITY IMAP4rev1 IDLE\r\n\
               b OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
        ],
    );
    assert!(residual.is_empty());
}

#[test]
fn xoauth2_refusal_sends_the_challenge_first() {
    check(
        &[
            c(format!("a AUTHENTICATE XOAUTH2 {XOAUTH2_IR}\r\n")),
            refused(ReplyClass::Authentication, "Invalid token", Some(CHALLENGE)),
            c("\r\n"),
            c("b NOOP\r\n"),
        ],
        &[
            E(bearer(Mechanism::XOAuth2)),
            s(format!(
                "+ {CHALLENGE_B64}\r\na NO [AUTHENTICATIONFAILED] Invalid token\r\n\
                 b OK NOOP completed\r\n"
            )),
        ],
    );
}

#[test]
fn oauthbearer_refusal_accepts_aq_and_cancel() {
    for ack in ["AQ==\r\n", "*\r\n"] {
        check(
            &[
                c(format!("a AUTHENTICATE OAUTHBEARER {OAUTHBEARER_IR}\r\n")),
                refused(
                    ReplyClass::Authorization,
                    "Client not allowed",
                    Some(CHALLENGE),
                ),
                c(ack),
            ],
            &[
                E(bearer(Mechanism::OAuthBearer)),
                s(format!(
                    "+ {CHALLENGE_B64}\r\na NO [AUTHORIZATIONFAILED] Client not allowed\r\n"
                )),
            ],
        );
    }
}

#[test]
fn challenge_is_ignored_for_password_mechanisms() {
    check(
        &[
            c(format!("a AUTHENTICATE PLAIN {PLAIN_IR}\r\n")),
            refused(ReplyClass::Authentication, "No", Some(CHALLENGE)),
        ],
        &[
            E(password("alice", b"s3cret", Mechanism::Plain)),
            s("a NO [AUTHENTICATIONFAILED] No\r\n"),
        ],
    );
}

#[test]
fn attempts_limit_closes_after_the_last_refusal() {
    let mut steps = Vec::new();
    let mut expected = Vec::new();
    for tag in ["a", "b", "c"] {
        steps.push(c(format!("{tag} LOGIN alice wrong\r\n")));
        steps.push(refused(
            ReplyClass::Authentication,
            "Invalid credentials",
            None,
        ));
        expected.push(E(password("alice", b"wrong", Mechanism::ImapLogin)));
        expected.push(s(format!(
            "{tag} NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
        )));
    }
    steps.push(c("d NOOP\r\n"));
    if let Some(Item::S(last)) = expected.last_mut() {
        last.push_str("* BYE Too many invalid authentication attempts\r\n");
    }
    expected.push(E(FrontendEvent::Closed(CloseReason::TooManyAttempts)));
    check(&steps, &expected);
}

#[test]
fn outcome_outside_expect_outcome_is_ignored() {
    check(
        &[accepted(), c("a NOOP\r\n")],
        &[s("a OK NOOP completed\r\n")],
    );
}

#[test]
fn pipelined_input_behind_a_login_is_bounded() {
    let limits = PreauthLimits {
        max_line: 32,
        max_literal: 8,
        ..PreauthLimits::default()
    };
    let mut m = ImapFrontend::new(Security::Tls, limits, t0());
    let _greeting = m.poll_transmit();
    m.handle_input(b"a LOGIN alice s3cret\r\n");
    assert!(matches!(
        m.poll_event(),
        Some(FrontendEvent::LoginRequested(_))
    ));
    m.handle_input(&[b'x'; 48]);
    assert_eq!(m.poll_event(), None);
    m.handle_input(b"x");
    assert_eq!(
        m.poll_transmit().unwrap(),
        &b"* BYE Too much input before the login completed\r\n"[..]
    );
    assert_eq!(
        m.poll_event(),
        Some(FrontendEvent::Closed(CloseReason::ProtocolViolation))
    );
}

// ----- limits -------------------------------------------------------------------------------

#[test]
fn line_too_long() {
    let limits = PreauthLimits {
        max_line: 32,
        ..PreauthLimits::default()
    };
    check_with(
        Security::Tls,
        limits,
        &[c("a LOGIN alice aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")],
        &[
            s("a BAD Line too long\r\n* BYE Line too long\r\n"),
            E(FrontendEvent::Closed(CloseReason::ProtocolViolation)),
        ],
    );
    check_with(
        Security::Tls,
        limits,
        &[c([b'x'; 40])],
        &[
            s("* BYE Line too long\r\n"),
            E(FrontendEvent::Closed(CloseReason::ProtocolViolation)),
        ],
    );
    check_with(
        Security::Tls,
        limits,
        &[c("a AUTHENTICATE PLAIN\r\n"), c([b'A'; 40])],
        &[
            s("+ \r\na BAD Line too long\r\n* BYE Line too long\r\n"),
            E(FrontendEvent::Closed(CloseReason::ProtocolViolation)),
        ],
    );
}

#[test]
fn auth_timeout() {
    let limits = PreauthLimits::default();
    let start = t0();
    let mut m = ImapFrontend::new(Security::Tls, limits, start);
    assert_eq!(m.poll_timeout(), Some(start + limits.auth_timeout));
    m.handle_timeout(start + limits.auth_timeout - Duration::from_millis(1));
    let _greeting = m.poll_transmit();
    assert_eq!(m.poll_transmit(), None);
    check(
        &[
            c("a NOOP\r\n"),
            Timeout(limits.auth_timeout),
            c("b NOOP\r\n"),
        ],
        &[
            s("a OK NOOP completed\r\n* BYE Autologout; authentication time limit\r\n"),
            E(FrontendEvent::Closed(CloseReason::AuthTimeout)),
        ],
    );
    let mut m = ImapFrontend::new(Security::Tls, limits, start);
    m.handle_input(b"a LOGIN alice s3cret\r\n");
    assert!(m.poll_timeout().is_some());
    if let Outcome(outcome) = accepted() {
        m.handle_outcome(outcome);
    }
    assert_eq!(m.poll_timeout(), None);
    m.handle_timeout(start + limits.auth_timeout * 2);
    while let Some(event) = m.poll_event() {
        assert!(!matches!(event, FrontendEvent::Closed(_)));
    }
}

#[test]
fn commands_not_allowed_before_login() {
    check(
        &[c(
            "a SELECT INBOX\r\nb fetch 1 FLAGS\r\nc XYZZY\r\n\r\n+ NOOP\r\nd LIST \"\" *\r\n",
        )],
        &[s("a BAD Command not valid in this state\r\n\
             b BAD Command not valid in this state\r\n\
             c BAD Unknown command\r\n\
             * BAD Missing or invalid tag\r\n\
             * BAD Missing or invalid tag\r\n\
             d BAD Command not valid in this state\r\n")],
    );
    // A synchronising literal in a command that takes none is refused before its data.
    check(
        &[c("a APPEND INBOX {10}\r\n"), c("b NOOP\r\n"), c("{3}\r\n")],
        &[s("a BAD Command not valid in this state\r\n\
             b OK NOOP completed\r\n\
             * BAD Missing tag\r\n")],
    );
}

// ----- secrets ------------------------------------------------------------------------------

#[test]
fn debug_output_never_shows_the_password() {
    let mut m = ImapFrontend::new(Security::Tls, PreauthLimits::default(), t0());
    m.handle_input(b"a LOGIN alice hunter2\r\nb LOGIN bob hunter2\r\n");
    let debug = format!("{m:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    let event = m.poll_event().unwrap();
    assert!(!format!("{event:?}").contains("hunter2"));
    let mut m = ImapFrontend::new(Security::Tls, PreauthLimits::default(), t0());
    m.handle_input(b"a AUTHENTICATE LOGIN\r\nYWxpY2U=\r\n");
    let debug = format!("{m:?}");
    assert!(
        !debug.contains("czNjcmV0") && !debug.contains("s3cret"),
        "{debug}"
    );
}

// ----- properties ---------------------------------------------------------------------------

fn split(items: Vec<Item>) -> (String, Vec<FrontendEvent>) {
    let mut text = String::new();
    let mut events = Vec::new();
    for item in items {
        match item {
            Item::S(s) => text.push_str(&s),
            Item::E(e) => events.push(e),
        }
    }
    (text, events)
}

fn interesting_input() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop_oneof![
        Just(b"a LOGIN alice s3cret\r\n".to_vec()),
        Just(b"a LOGIN {5}\r\nalice {3+}\r\npw\r\n".to_vec()),
        Just(b"b AUTHENTICATE PLAIN\r\n".to_vec()),
        Just(format!("{PLAIN_IR}\r\n").into_bytes()),
        Just(b"*\r\n".to_vec()),
        Just(b"c STARTTLS\r\n".to_vec()),
        Just(b"d ID (\"a\" NIL)\r\n".to_vec()),
        Just(b"{99999999999999999999}\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(pieces, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn random_input_never_panics_and_chunking_does_not_matter(
        input in interesting_input(),
        cuts in proptest::collection::vec(1usize..20, 1..10),
        security in prop_oneof![
            Just(Security::Tls),
            Just(Security::StartTlsOffered),
            Just(Security::Plaintext),
        ],
        refuse in any::<bool>(),
    ) {
        let limits = PreauthLimits { max_line: 64, max_literal: 16, ..PreauthLimits::default() };
        let outcome = if refuse {
            refused(ReplyClass::Authentication, "no", Some("{}"))
        } else {
            accepted()
        };
        let steps = [Step::C(input.clone()), outcome.clone(), Tls, Step::C(input.clone())];
        let (whole, residual) = run(security, limits, &steps, usize::MAX);
        // Irregular chunking: cut sizes cycle through `cuts`.
        let start = t0();
        let mut m = ImapFrontend::new(security, limits, start);
        let _greeting = m.poll_transmit();
        let mut items = Vec::new();
        for step in &steps {
            match step.clone() {
                Step::C(bytes) => {
                    let mut rest = &bytes[..];
                    let mut i = 0;
                    while !rest.is_empty() {
                        let n = cuts[i % cuts.len()].min(rest.len());
                        m.handle_input(&rest[..n]);
                        drain(&mut m, &mut items);
                        rest = &rest[n..];
                        i += 1;
                    }
                }
                Outcome(o) => m.handle_outcome(o),
                Tls => m.tls_established(),
                Timeout(d) => m.handle_timeout(start + d),
            }
            drain(&mut m, &mut items);
        }
        // Bytes and events separately: one `handle_input` may queue bytes after an event (a
        // login followed by too much pipelined input), which a drain cannot order.
        prop_assert_eq!(split(items), split(whole));
        prop_assert_eq!(m.into_residual(), residual);
    }
}

/// Issue 9: a client that pipelines commands and never reads. One read of `NOOP`s and
/// `CAPABILITY`s queues at most [`MAX_PENDING_OUTPUT`] (plus one answer) of answers; the rest
/// waits unparsed and is answered, in order, as `poll_transmit` hands the answers out.
#[test]
fn answers_queued_per_read_are_capped_and_none_is_lost() {
    let mut m = ImapFrontend::new(Security::Tls, PreauthLimits::default(), t0());
    let _greeting = m.poll_transmit();
    let mut input = Vec::new();
    let mut n = 0;
    while input.len() < PREAUTH_READ - 40 {
        input.extend_from_slice(format!("a{n} CAPABILITY\r\nb{n} NOOP\r\n").as_bytes());
        n += 1;
    }
    m.handle_input(&input);
    assert!(
        m.out.len() < MAX_PENDING_OUTPUT + 200,
        "{} bytes of answers queued for one read",
        m.out.len()
    );
    assert!(!m.input.is_empty(), "the rest waits unparsed");
    let mut answers = Vec::new();
    while let Some(out) = m.poll_transmit() {
        assert!(out.len() < MAX_PENDING_OUTPUT + 200, "{}", out.len());
        answers.extend_from_slice(&out);
    }
    let answers = String::from_utf8(answers).unwrap();
    let tagged: Vec<&str> = answers
        .lines()
        .filter(|l| !l.starts_with('*'))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let expected: Vec<String> = (0..n)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .collect();
    assert_eq!(tagged, expected);
    assert!(m.input.is_empty());
    assert_eq!(m.poll_event(), None);
}

/// A driver that keeps feeding input without sending the answers: what is held back is bounded
/// (one message and one read), then the machine closes with a BYE.
#[test]
fn input_held_back_behind_unsent_answers_is_bounded() {
    let mut m = ImapFrontend::new(Security::Tls, PreauthLimits::default(), t0());
    let limit = m.max_message() + PREAUTH_READ;
    let chunk = b"a CAPABILITY\r\n".repeat(PREAUTH_READ / 14);
    let mut fed = 0;
    while m.poll_event().is_none() {
        m.handle_input(&chunk);
        fed += chunk.len();
        assert!(m.input.len() <= limit, "{} bytes held", m.input.len());
        assert!(fed < 10 * limit, "never closed");
    }
    let mut answers = Vec::new();
    while let Some(out) = m.poll_transmit() {
        answers.extend_from_slice(&out);
    }
    assert!(answers.ends_with(b"* BYE Too much input before the login completed\r\n"));
}

// ----- max_bad_commands -------------------------------------------------------------------------

#[test]
fn invalid_commands_up_to_the_limit_close_with_bye() {
    let three = PreauthLimits {
        max_bad_commands: 3,
        ..PreauthLimits::default()
    };
    // Junk (no tag), an unknown command and one not valid before login: three BADs, then BYE;
    // what follows is never read.
    check_with(
        Security::Tls,
        three,
        &[c("\x01\x02junk\r\na FROB\r\nb SELECT INBOX\r\nc NOOP\r\n")],
        &[
            s("* BAD Missing or invalid tag\r\n\
               a BAD Unknown command\r\n\
               b BAD Command not valid in this state\r\n\
               * BYE Too many invalid commands\r\n"),
            E(FrontendEvent::Closed(CloseReason::TooManyErrors)),
        ],
    );
    // One short of the limit, a login still goes through.
    check_with(
        Security::Tls,
        three,
        &[c("a FROB\r\nb FROB\r\nc LOGIN alice s3cret\r\n")],
        &[
            s("a BAD Unknown command\r\nb BAD Unknown command\r\n"),
            E(password("alice", b"s3cret", Mechanism::ImapLogin)),
        ],
    );
}

#[test]
fn cancelled_authenticate_is_not_an_invalid_command() {
    let two = PreauthLimits {
        max_bad_commands: 2,
        ..PreauthLimits::default()
    };
    let cancel = "a AUTHENTICATE PLAIN\r\n*\r\n".repeat(3);
    check_with(
        Security::Tls,
        two,
        &[c(&cancel)],
        &[s("+ \r\na BAD Authentication cancelled\r\n".repeat(3))],
    );
}

#[test]
fn the_default_limit_is_ten_as_dovecot() {
    let junk = "x FROB\r\n".repeat(12);
    check(
        &[c(&junk)],
        &[
            s(format!(
                "{}* BYE Too many invalid commands\r\n",
                "x BAD Unknown command\r\n".repeat(10)
            )),
            E(FrontendEvent::Closed(CloseReason::TooManyErrors)),
        ],
    );
}
