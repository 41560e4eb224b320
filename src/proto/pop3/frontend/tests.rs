//! Transcript tests for the POP3 front-end. Every transcript runs with each write delivered
//! whole, one byte at a time and in seeded random chunkings, and must give the same bytes and
//! events every time.

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::proto::ReplyClass;
use crate::proto::pop3::testing::{chunkings, split, t0};

/// One step of a transcript.
enum Step {
    /// The downstream writes these bytes.
    C(Vec<u8>),
    /// The machine must have sent exactly these bytes next.
    S(Vec<u8>),
    /// The machine must have reported this event next.
    E(FrontendEvent),
    /// The driver answers a login.
    Outcome(LoginOutcome),
    /// The driver finished the STLS handshake.
    Tls,
    /// `handle_timeout` at this many seconds after connect.
    At(u64),
    /// `poll_timeout` must say this (seconds after connect).
    Deadline(Option<u64>),
    /// The residual at hand-off (checked by consuming the machine; must be last).
    Residual(Vec<u8>),
}
use Step::*;

fn c(bytes: impl AsRef<[u8]>) -> Step {
    C(bytes.as_ref().to_vec())
}

fn s(bytes: impl AsRef<[u8]>) -> Step {
    S(bytes.as_ref().to_vec())
}

fn residual(bytes: impl AsRef<[u8]>) -> Step {
    Residual(bytes.as_ref().to_vec())
}

fn run(security: Security, limits: PreauthLimits, steps: &[Step]) {
    for chunking in chunkings() {
        run_once(security, limits, steps, chunking);
    }
}

fn run_once(security: Security, limits: PreauthLimits, steps: &[Step], chunking: Option<u64>) {
    let t0 = t0();
    let mut fe = Pop3Frontend::new(security, limits, t0);
    let mut out: Vec<u8> = Vec::new();
    let mut events: VecDeque<FrontendEvent> = VecDeque::new();
    let drain = |fe: &mut Pop3Frontend, out: &mut Vec<u8>, events: &mut VecDeque<_>| {
        while let Some(b) = fe.poll_transmit() {
            out.extend_from_slice(&b);
        }
        while let Some(e) = fe.poll_event() {
            events.push_back(e);
        }
    };
    drain(&mut fe, &mut out, &mut events);
    assert_eq!(out.drain(..GREETING.len()).as_slice(), GREETING);
    let mut fe = Some(fe);
    for (i, step) in steps.iter().enumerate() {
        let ctx = format!("step {i}, chunking {chunking:?}");
        let Some(m) = fe.as_mut() else {
            panic!("steps after Residual ({ctx})");
        };
        match step {
            C(bytes) => split(bytes, chunking, &mut |chunk| {
                m.handle_input(chunk);
                drain(m, &mut out, &mut events);
            }),
            S(want) => {
                let n = want.len().min(out.len());
                assert_eq!(
                    String::from_utf8_lossy(&out[..n]),
                    String::from_utf8_lossy(want),
                    "{ctx}"
                );
                assert!(out.len() >= want.len(), "{ctx}: output too short");
                out.drain(..want.len());
            }
            E(want) => assert_eq!(events.pop_front().as_ref(), Some(want), "{ctx}"),
            Outcome(outcome) => {
                m.handle_outcome(outcome.clone());
                drain(m, &mut out, &mut events);
            }
            Tls => {
                m.tls_established();
                drain(m, &mut out, &mut events);
            }
            At(secs) => {
                m.handle_timeout(t0 + Duration::from_secs(*secs));
                drain(m, &mut out, &mut events);
            }
            Deadline(want) => assert_eq!(
                m.poll_timeout(),
                want.map(|secs| t0 + Duration::from_secs(secs)),
                "{ctx}"
            ),
            Residual(want) => {
                let Some(m) = fe.take() else { unreachable!() };
                assert_eq!(m.into_residual(), Bytes::from(want.clone()), "{ctx}");
            }
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&out),
        "",
        "unexpected output ({chunking:?})"
    );
    assert!(
        events.is_empty(),
        "unexpected events {events:?} ({chunking:?})"
    );
}

fn limits() -> PreauthLimits {
    PreauthLimits::default()
}

fn password(user: &str, pw: &[u8]) -> Credentials {
    Credentials::Password {
        authzid: None,
        user: user.into(),
        password: Secret::new(pw.to_vec()),
    }
}

fn login(mechanism: Mechanism, credentials: Credentials) -> Step {
    E(FrontendEvent::LoginRequested(LoginRequest {
        mechanism,
        credentials,
    }))
}

fn bearer(user: Option<&str>, token: &str) -> Credentials {
    Credentials::Bearer {
        user: user.map(Into::into),
        token: Secret::new(token.into()),
        host: None,
        port: None,
    }
}

fn closed(reason: CloseReason) -> Step {
    E(FrontendEvent::Closed(reason))
}

fn accepted(reply: &'static [u8]) -> Step {
    Outcome(LoginOutcome::Accepted {
        untagged: Bytes::new(),
        reply: Bytes::from_static(reply),
    })
}

fn refused(class: ReplyClass, text: &str) -> Step {
    Outcome(LoginOutcome::Refused(Refusal {
        class,
        text: text.into(),
        challenge: None,
    }))
}

fn refused_with(challenge: &'static [u8]) -> Step {
    Outcome(LoginOutcome::Refused(Refusal {
        class: ReplyClass::Authentication,
        text: "Invalid token.".into(),
        challenge: Some(Bytes::from_static(challenge)),
    }))
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    sasl::encode_base64(bytes.as_ref())
}

const CAPA_TLS: &str = "+OK Capability list follows\r\nCAPA\r\nUSER\r\n\
    SASL PLAIN LOGIN XOAUTH2 OAUTHBEARER\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n\
    IMPLEMENTATION mailgate\r\n.\r\n";
const CAPA_STLS: &str = "+OK Capability list follows\r\nCAPA\r\nSTLS\r\n\
    RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION mailgate\r\n.\r\n";
const PLAINTEXT: &str = "-ERR [AUTH] Plaintext authentication disallowed on non-secure \
    (SSL/TLS) connections.\r\n";

/// A 2 KB XOAUTH2 payload, past the 255-octet line of RFC 2449 in either form.
fn long_xoauth2() -> (String, Vec<u8>) {
    let token = "ya29.".to_owned() + &"a1B2-c3_D4".repeat(200);
    let raw = format!("user=alice@example.com\x01auth=Bearer {token}\x01\x01").into_bytes();
    (token, raw)
}

#[test]
fn capa_per_security() {
    run(Security::Tls, limits(), &[c("CAPA\r\n"), s(CAPA_TLS)]);
    run(Security::Plaintext, limits(), &[c("capa\r\n"), s(CAPA_TLS)]);
    run(
        Security::StartTlsOffered,
        limits(),
        &[c("CAPA\r\n"), s(CAPA_STLS)],
    );
}

#[test]
fn stls_discards_injected_bytes() {
    run(
        Security::StartTlsOffered,
        limits(),
        &[
            // CVE-2011-0411: USER arrives in the same packet as STLS and must never be read.
            c("STLS\r\nUSER x\r\n"),
            s("+OK Begin TLS negotiation now.\r\n"),
            E(FrontendEvent::TlsRequested),
            // Anything before the handshake ends is dropped as well.
            c("PASS y\r\n"),
            Tls,
            c("CAPA\r\n"),
            s(CAPA_TLS),
            c("PASS y\r\n"),
            s("-ERR No user name given.\r\n"),
            c("STLS\r\n"),
            s("-ERR TLS is already active.\r\n"),
        ],
    );
}

#[test]
fn stls_not_offered() {
    run(
        Security::Plaintext,
        limits(),
        &[c("STLS\r\n"), s("-ERR STLS is not available.\r\n")],
    );
    run(
        Security::Tls,
        limits(),
        &[c("stls\r\n"), s("-ERR TLS is already active.\r\n")],
    );
}

#[test]
fn logins_before_stls_refused() {
    let plain = b64("\0alice\0pw");
    run(
        Security::StartTlsOffered,
        limits(),
        &[
            c("USER alice\r\n"),
            s(PLAINTEXT),
            c("PASS pw\r\n"),
            s(PLAINTEXT),
            c(format!("AUTH PLAIN {plain}\r\n")),
            s(PLAINTEXT),
            c("AUTH XOAUTH2\r\n"),
            s(PLAINTEXT),
            c("AUTH\r\n"),
            s(PLAINTEXT),
            c("NOOP\r\n"),
            s("+OK\r\n"),
            Deadline(Some(60)),
        ],
    );
}

#[test]
fn user_pass_accepted() {
    run(
        Security::Tls,
        limits(),
        &[
            c("USER alice@example.com\r\n"),
            s("+OK\r\n"),
            // RFC 1939 7: the password is the rest of the line, spaces included.
            c("PASS  correct horse \r\n"),
            login(
                Mechanism::UserPass,
                password("alice@example.com", b" correct horse "),
            ),
            accepted(b"+OK Logged in.\r\n"),
            s("+OK Logged in.\r\n"),
            Deadline(None),
            residual(""),
        ],
    );
}

#[test]
fn user_pass_bare_lf_and_noop_between() {
    run(
        Security::Plaintext,
        limits(),
        &[
            c("user bob\n"),
            s("+OK\r\n"),
            c("NOOP\r\nCAPA\r\n"),
            s("+OK\r\n"),
            s(CAPA_TLS),
            c("USER carol\r\npass pw\n"),
            s("+OK\r\n"),
            login(Mechanism::UserPass, password("carol", b"pw")),
        ],
    );
}

#[test]
fn pass_needs_user() {
    run(
        Security::Tls,
        limits(),
        &[
            c("PASS pw\r\n"),
            s("-ERR No user name given.\r\n"),
            // Any other command in between forgets the user name.
            c("USER alice\r\nSTAT\r\nPASS pw\r\n"),
            s("+OK\r\n-ERR Command not valid before login.\r\n-ERR No user name given.\r\n"),
            c("USER\r\nUSER a\x07b\r\nUSER alice\r\nPASS\r\n"),
            s("-ERR Invalid user name.\r\n-ERR Invalid user name.\r\n+OK\r\n"),
            s("-ERR No password given.\r\n"),
        ],
    );
}

#[test]
fn pipelined_bytes_after_pass_become_residual() {
    run(
        Security::Tls,
        limits(),
        &[
            c("USER alice\r\nPASS pw\r\nSTAT\r\nLIST\r\nRETR 1\r\nUID"),
            s("+OK\r\n"),
            login(Mechanism::UserPass, password("alice", b"pw")),
            c("L\r\n"),
            accepted(b"+OK Logged in.\r\n"),
            s("+OK Logged in.\r\n"),
            c("QUIT\r\n"),
            residual("STAT\r\nLIST\r\nRETR 1\r\nUIDL\r\nQUIT\r\n"),
        ],
    );
}

#[test]
fn pipelined_bytes_after_refused_pass_are_answered() {
    run(
        Security::Tls,
        limits(),
        &[
            c("USER alice\r\nPASS pw\r\nSTAT\r\nQUIT\r\n"),
            s("+OK\r\n"),
            login(Mechanism::UserPass, password("alice", b"pw")),
            refused(ReplyClass::Authentication, "Authentication failed."),
            s("-ERR [AUTH] Authentication failed.\r\n"),
            s("-ERR Command not valid before login.\r\n+OK Logging out.\r\n"),
            closed(CloseReason::Logout),
        ],
    );
}

#[test]
fn auth_plain_initial_response_and_continuation() {
    let plain = b64("\0alice\0pw");
    run(
        Security::Tls,
        limits(),
        &[
            c(format!("AUTH PLAIN {plain}\r\n")),
            login(Mechanism::Plain, password("alice", b"pw")),
            refused(ReplyClass::Authentication, "Authentication failed."),
            s("-ERR [AUTH] Authentication failed.\r\n"),
            c("auth plain\r\n"),
            s("+ \r\n"),
            c(format!("{plain}\r\n")),
            login(Mechanism::Plain, password("alice", b"pw")),
            accepted(b"+OK Logged in.\r\n"),
            s("+OK Logged in.\r\n"),
            residual(""),
        ],
    );
}

#[test]
fn auth_plain_with_authzid() {
    run(
        Security::Tls,
        limits(),
        &[
            c(format!("AUTH PLAIN {}\r\n", b64("admin\0alice\0pw"))),
            login(
                Mechanism::Plain,
                Credentials::Password {
                    authzid: Some("admin".into()),
                    user: "alice".into(),
                    password: Secret::new(b"pw".to_vec()),
                },
            ),
        ],
    );
}

#[test]
fn auth_plain_empty_initial_response_is_malformed() {
    run(
        Security::Tls,
        limits(),
        &[
            c("AUTH PLAIN =\r\n"),
            s("-ERR Invalid SASL response.\r\n"),
            c(format!("AUTH PLAIN {}\r\n", b64("alice\0pw"))),
            s("-ERR Invalid SASL response.\r\n"),
        ],
    );
}

#[test]
fn auth_login_continuation_and_initial_response() {
    run(
        Security::Tls,
        limits(),
        &[
            c("AUTH LOGIN\r\n"),
            s("+ VXNlcm5hbWU6\r\n"),
            c(format!("{}\r\n", b64("alice"))),
            s("+ UGFzc3dvcmQ6\r\n"),
            c(format!("{}\r\n", b64("p w"))),
            login(Mechanism::Login, password("alice", b"p w")),
            refused(ReplyClass::Authentication, "Authentication failed."),
            s("-ERR [AUTH] Authentication failed.\r\n"),
            c(format!("AUTH LOGIN {}\r\n", b64("alice"))),
            s("+ UGFzc3dvcmQ6\r\n"),
            c(format!("{}\r\n", b64("pw"))),
            login(Mechanism::Login, password("alice", b"pw")),
        ],
    );
}

#[test]
fn auth_login_empty_user_refused() {
    run(
        Security::Tls,
        limits(),
        &[
            c("AUTH LOGIN\r\n\r\n"),
            s("+ VXNlcm5hbWU6\r\n-ERR Invalid SASL response.\r\n"),
        ],
    );
}

#[test]
fn auth_xoauth2_initial_response_and_continuation() {
    let raw = "user=alice@example.com\x01auth=Bearer ya29.tok\x01\x01";
    let creds = bearer(Some("alice@example.com"), "ya29.tok");
    run(
        Security::Tls,
        limits(),
        &[
            c(format!("AUTH XOAUTH2 {}\r\n", b64(raw))),
            login(Mechanism::XOAuth2, creds.clone()),
            refused(ReplyClass::Unavailable, "Try again later."),
            s("-ERR [SYS/TEMP] Try again later.\r\n"),
            c("AUTH XOAUTH2\r\n"),
            s("+ \r\n"),
            c(format!("{}\r\n", b64(raw))),
            login(Mechanism::XOAuth2, creds),
            accepted(b"+OK Logged in.\r\n"),
            s("+OK Logged in.\r\n"),
        ],
    );
}

#[test]
fn auth_oauthbearer_initial_response_and_continuation() {
    let raw = "n,a=alice@example.com,\x01host=mail.example.com\x01port=995\x01\
               auth=Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig\x01\x01";
    let creds = Credentials::Bearer {
        user: Some("alice@example.com".into()),
        token: Secret::new("eyJhbGciOiJSUzI1NiJ9.e30.sig".into()),
        host: Some("mail.example.com".into()),
        port: Some(995),
    };
    run(
        Security::Tls,
        limits(),
        &[
            c(format!("AUTH OAUTHBEARER {}\r\n", b64(raw))),
            login(Mechanism::OAuthBearer, creds.clone()),
            refused(
                ReplyClass::Authorization,
                "POP is off for you; ask IT. ref 0192",
            ),
            s("-ERR [AUTH] POP is off for you; ask IT. ref 0192\r\n"),
            c("AUTH OAUTHBEARER\r\n"),
            s("+ \r\n"),
            c(format!("{}\r\n", b64(raw))),
            login(Mechanism::OAuthBearer, creds),
        ],
    );
}

#[test]
fn long_xoauth2_token_both_ways() {
    let (token, raw) = long_xoauth2();
    let encoded = b64(&raw);
    assert!(encoded.len() > 2000);
    let creds = bearer(Some("alice@example.com"), &token);
    run(
        Security::Tls,
        limits(),
        &[
            c(format!("AUTH XOAUTH2 {encoded}\r\n")),
            login(Mechanism::XOAuth2, creds.clone()),
            refused(ReplyClass::Authentication, "no"),
            s("-ERR [AUTH] no\r\n"),
            c(format!("AUTH XOAUTH2\r\n{encoded}\r\n")),
            s("+ \r\n"),
            login(Mechanism::XOAuth2, creds),
        ],
    );
}

#[test]
fn cancel_bad_base64_unknown_mechanism() {
    run(
        Security::Tls,
        limits(),
        &[
            c("AUTH PLAIN\r\n*\r\n"),
            s("+ \r\n-ERR Authentication cancelled.\r\n"),
            c("AUTH LOGIN\r\n*\r\n"),
            s("+ VXNlcm5hbWU6\r\n-ERR Authentication cancelled.\r\n"),
            c(format!("AUTH LOGIN\r\n{}\r\n*\r\n", b64("alice"))),
            s("+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n-ERR Authentication cancelled.\r\n"),
            c("AUTH PLAIN\r\n!!notbase64\r\n"),
            s("+ \r\n-ERR Invalid base64 data in continued response.\r\n"),
            c("AUTH PLAIN AGFsaWNlAHB3=\r\n"),
            s("-ERR Invalid base64 data in initial response.\r\n"),
            c("AUTH CRAM-MD5\r\n"),
            s("-ERR Unsupported authentication mechanism.\r\n"),
            c("AUTH PLAIN a b\r\n"),
            s("-ERR Too many arguments to AUTH.\r\n"),
            c("AUTH\r\n"),
            s("+OK\r\nPLAIN\r\nLOGIN\r\nXOAUTH2\r\nOAUTHBEARER\r\n.\r\n"),
            // None of these counted as a failed login.
            c("NOOP\r\n"),
            s("+OK\r\n"),
        ],
    );
}

#[test]
fn xoauth2_refusal_sends_challenge_first() {
    let raw = "user=alice@example.com\x01auth=Bearer expired\x01\x01";
    let json = br#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
    run(
        Security::Tls,
        limits(),
        &[
            c(format!("AUTH XOAUTH2 {}\r\nNOOP\r\n", b64(raw))),
            login(
                Mechanism::XOAuth2,
                bearer(Some("alice@example.com"), "expired"),
            ),
            refused_with(json),
            s(format!("+ {}\r\n", b64(json))),
            // The NOOP pipelined after AUTH is read as the dummy response (as a server would).
            s("-ERR [AUTH] Invalid token.\r\n"),
            c("AUTH XOAUTH2\r\n"),
            s("+ \r\n"),
            c(format!("{}\r\n", b64(raw))),
            login(
                Mechanism::XOAuth2,
                bearer(Some("alice@example.com"), "expired"),
            ),
            refused_with(json),
            s(format!("+ {}\r\n", b64(json))),
            c("\r\n"),
            s("-ERR [AUTH] Invalid token.\r\n"),
        ],
    );
}

#[test]
fn oauthbearer_refusal_challenge_acknowledged_with_aq_or_cancel() {
    let raw = "n,,\x01auth=Bearer expired\x01\x01";
    let json = br#"{"status":"invalid_token"}"#;
    run(
        Security::Tls,
        limits(),
        &[
            c(format!("AUTH OAUTHBEARER {}\r\n", b64(raw))),
            login(Mechanism::OAuthBearer, bearer(None, "expired")),
            refused_with(json),
            s(format!("+ {}\r\n", b64(json))),
            c("AQ==\r\n"),
            s("-ERR [AUTH] Invalid token.\r\n"),
            c(format!("AUTH OAUTHBEARER {}\r\n", b64(raw))),
            login(Mechanism::OAuthBearer, bearer(None, "expired")),
            refused_with(json),
            s(format!("+ {}\r\n", b64(json))),
            c("*\r\n"),
            s("-ERR [AUTH] Invalid token.\r\n"),
            Deadline(Some(60)),
        ],
    );
}

#[test]
fn password_refusal_ignores_challenge() {
    run(
        Security::Tls,
        limits(),
        &[
            c("USER a\r\nPASS b\r\n"),
            s("+OK\r\n"),
            login(Mechanism::UserPass, password("a", b"b")),
            refused_with(b"{}"),
            s("-ERR [AUTH] Invalid token.\r\n"),
        ],
    );
}

#[test]
fn reply_class_wording_and_line_breaks_stripped() {
    let one = |class, text: &str, want: &str| {
        run(
            Security::Tls,
            limits(),
            &[
                c("USER a\r\nPASS b\r\n"),
                s("+OK\r\n"),
                login(Mechanism::UserPass, password("a", b"b")),
                refused(class, text),
                s(want),
            ],
        )
    };
    one(
        ReplyClass::Authorization,
        "POP is off. ref 1",
        "-ERR [AUTH] POP is off. ref 1\r\n",
    );
    one(
        ReplyClass::Authentication,
        "Bad credentials.",
        "-ERR [AUTH] Bad credentials.\r\n",
    );
    one(
        ReplyClass::Unavailable,
        "Later.",
        "-ERR [SYS/TEMP] Later.\r\n",
    );
    one(
        ReplyClass::Authentication,
        "a\r\n+OK pwned\r\n",
        "-ERR [AUTH] a  +OK pwned\r\n",
    );
    one(
        ReplyClass::Authentication,
        "\r\n",
        "-ERR [AUTH] Authentication failed.\r\n",
    );
}

#[test]
fn attempts_limit_closes_with_answer() {
    let fail = |n: usize| {
        let mut steps = vec![];
        for _ in 0..n {
            steps.push(c("USER a\r\nPASS b\r\n"));
            steps.push(s("+OK\r\n"));
            steps.push(login(Mechanism::UserPass, password("a", b"b")));
            steps.push(refused(
                ReplyClass::Authentication,
                "Authentication failed.",
            ));
            steps.push(s("-ERR [AUTH] Authentication failed.\r\n"));
        }
        steps
    };
    let mut steps = fail(3);
    steps.push(s("-ERR Too many failed logins; disconnecting.\r\n"));
    steps.push(closed(CloseReason::TooManyAttempts));
    // Closed: nothing more is read or answered, no timeout is pending.
    steps.push(c("USER a\r\n"));
    steps.push(Deadline(None));
    steps.push(At(600));
    run(Security::Tls, limits(), &steps);

    // The attempt that ends in a challenge counts when its -ERR is sent.
    let json = br#"{"status":"401"}"#;
    let raw = b64("user=a\x01auth=Bearer t\x01\x01");
    let one = PreauthLimits {
        max_attempts: 1,
        ..limits()
    };
    run(
        Security::Tls,
        one,
        &[
            c(format!("AUTH XOAUTH2 {raw}\r\n")),
            login(Mechanism::XOAuth2, bearer(Some("a"), "t")),
            refused_with(json),
            s(format!("+ {}\r\n", b64(json))),
            c("\r\n"),
            s("-ERR [AUTH] Invalid token.\r\n"),
            s("-ERR Too many failed logins; disconnecting.\r\n"),
            closed(CloseReason::TooManyAttempts),
        ],
    );
}

#[test]
fn line_limit() {
    let small = PreauthLimits {
        max_line: 16,
        ..limits()
    };
    // 16 octets with CRLF is fine; 17 is not.
    run(
        Security::Tls,
        small,
        &[
            c("USER 012345678\r\n"),
            s("+OK\r\n"),
            c("USER 0123456789\r\nNOOP\r\n"),
            s("-ERR Line too long.\r\n"),
            closed(CloseReason::ProtocolViolation),
        ],
    );
    // A line that never ends is cut as soon as it is too long.
    run(
        Security::Tls,
        small,
        &[
            c("x".repeat(16)),
            s("-ERR Line too long.\r\n"),
            closed(CloseReason::ProtocolViolation),
        ],
    );
    // The same limit holds for SASL continuation lines.
    run(
        Security::Tls,
        small,
        &[
            c("AUTH PLAIN\r\n"),
            s("+ \r\n"),
            c("A".repeat(20)),
            s("-ERR Line too long.\r\n"),
            closed(CloseReason::ProtocolViolation),
        ],
    );
}

#[test]
fn buffer_while_deciding_is_bounded() {
    let small = PreauthLimits {
        max_line: 32,
        ..limits()
    };
    run(
        Security::Tls,
        small,
        &[
            c("USER a\r\nPASS b\r\n"),
            s("+OK\r\n"),
            login(Mechanism::UserPass, password("a", b"b")),
            c("STAT\r\n".repeat(6)),
            s("-ERR Line too long.\r\n"),
            closed(CloseReason::ProtocolViolation),
            // The late outcome is ignored.
            accepted(b"+OK Logged in.\r\n"),
        ],
    );
}

#[test]
fn auth_timeout() {
    run(
        Security::StartTlsOffered,
        limits(),
        &[
            Deadline(Some(60)),
            At(59),
            c("CAPA\r\n"),
            s(CAPA_STLS),
            At(60),
            s("-ERR [SYS/TEMP] Autologout; authentication took too long.\r\n"),
            closed(CloseReason::AuthTimeout),
            Deadline(None),
            At(61),
            c("NOOP\r\n"),
        ],
    );
    // The clock also runs while the driver decides; once logged in it stops.
    run(
        Security::Tls,
        limits(),
        &[
            c("USER a\r\nPASS b\r\n"),
            s("+OK\r\n"),
            login(Mechanism::UserPass, password("a", b"b")),
            Deadline(Some(60)),
            accepted(b"+OK Logged in.\r\n"),
            s("+OK Logged in.\r\n"),
            Deadline(None),
            At(3600),
        ],
    );
}

#[test]
fn commands_not_allowed_before_login() {
    // Eleven refusals: over the default max_bad_commands, which is not the point here.
    let lenient = PreauthLimits {
        max_bad_commands: 100,
        ..limits()
    };
    run(
        Security::Tls,
        lenient,
        &[
            c("STAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nTOP 1 10\r\nUIDL\r\nRSET\r\n"),
            s("-ERR Command not valid before login.\r\n".repeat(7)),
            c("APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n"),
            s("-ERR Command not valid before login.\r\n"),
            c("XYZZY\r\n\r\nCAPABILITY\r\n"),
            s("-ERR Unknown command.\r\n".repeat(3)),
        ],
    );
}

#[test]
fn quit_and_noop() {
    run(
        Security::Tls,
        limits(),
        &[
            c("NOOP\r\nquit\r\nNOOP\r\n"),
            s("+OK\r\n+OK Logging out.\r\n"),
            closed(CloseReason::Logout),
            c("CAPA\r\n"),
        ],
    );
}

#[test]
fn outcome_without_login_is_ignored() {
    run(
        Security::Tls,
        limits(),
        &[
            accepted(b"+OK Logged in.\r\n"),
            refused(ReplyClass::Authentication, "x"),
            c("NOOP\r\n"),
            s("+OK\r\n"),
            Tls,
            c("PASS x\r\n"),
            s("-ERR No user name given.\r\n"),
        ],
    );
}

#[test]
fn bytes_after_login_are_residual() {
    run(
        Security::Tls,
        limits(),
        &[
            c("USER a\r\nPASS b\r\n"),
            s("+OK\r\n"),
            login(Mechanism::UserPass, password("a", b"b")),
            accepted(b"+OK Logged in.\r\n"),
            s("+OK Logged in.\r\n"),
            c("STAT\r\nRETR"),
            residual("STAT\r\nRETR"),
        ],
    );
}

// ---- properties ----

/// Drive a front-end with `input` cut at `cuts`, answering logins in a fixed order (challenge
/// refusal, temporary refusal, acceptance). Returns everything observable.
/// TLS is never established: whether bytes after STLS are dropped depends on what had arrived,
/// which is the point of CVE-2011-0411, so only "everything after is dropped" is chunk-free.
fn drive(
    security: Security,
    limits: PreauthLimits,
    input: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, Vec<String>, Bytes) {
    let t0 = t0();
    let mut fe = Pop3Frontend::new(security, limits, t0);
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut logins = 0;
    let mut pump = |fe: &mut Pop3Frontend, out: &mut Vec<u8>, events: &mut Vec<String>| loop {
        while let Some(b) = fe.poll_transmit() {
            out.extend_from_slice(&b);
        }
        let Some(event) = fe.poll_event() else { break };
        events.push(format!("{event:?}"));
        match event {
            FrontendEvent::TlsRequested => {}
            FrontendEvent::LoginRequested(_) => {
                logins += 1;
                fe.handle_outcome(match logins % 3 {
                    1 => LoginOutcome::Refused(Refusal {
                        class: ReplyClass::Authentication,
                        text: "no".into(),
                        challenge: Some(Bytes::from_static(b"{}")),
                    }),
                    2 => LoginOutcome::Refused(Refusal {
                        class: ReplyClass::Unavailable,
                        text: "later".into(),
                        challenge: None,
                    }),
                    _ => LoginOutcome::Accepted {
                        untagged: Bytes::new(),
                        reply: Bytes::from_static(b"+OK in\r\n"),
                    },
                })
            }
            FrontendEvent::Closed(_) => {}
        }
    };
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(start, input.len());
        fe.handle_input(&input[start..cut]);
        pump(&mut fe, &mut out, &mut events);
        start = cut;
    }
    fe.handle_timeout(t0 + Duration::from_secs(1));
    pump(&mut fe, &mut out, &mut events);
    (out, events, fe.into_residual())
}

/// Input made mostly of protocol fragments, so the search reaches every state.
fn pop3_input() -> impl Strategy<Value = Vec<u8>> {
    let plain = format!("{}\r\n", b64("\0alice\0pw"));
    let xo = format!("{}\r\n", b64("user=a\x01auth=Bearer t\x01\x01"));
    let fragments: Vec<Vec<u8>> = [
        "CAPA\r\n",
        "STLS\r\n",
        "USER alice\r\n",
        "PASS pw\r\n",
        "AUTH PLAIN\r\n",
        "AUTH\r\n",
        "AUTH LOGIN\r\n",
        "AUTH XOAUTH2 ",
        "AUTH PLAIN ",
        "*\r\n",
        "\r\n",
        "AQ==\r\n",
        "NOOP\r\n",
        "QUIT\r\n",
        "STAT\r\n",
        "YWxpY2U=\r\n",
        "=\r\n",
        "\n",
        "\r",
        " ",
        plain.as_str(),
        xo.as_str(),
    ]
    .iter()
    .map(|f| f.as_bytes().to_vec())
    .collect();
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(fragments),
            1 => prop::collection::vec(any::<u8>(), 0..8),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_output(
        input in pop3_input(),
        cuts in prop::collection::vec(0usize..600, 0..12),
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let bytewise: Vec<usize> = (1..input.len()).collect();
        for security in [Security::Tls, Security::StartTlsOffered] {
            let whole = drive(security, limits(), &input, &[]);
            prop_assert_eq!(&drive(security, limits(), &input, &cuts), &whole);
            prop_assert_eq!(&drive(security, limits(), &input, &bytewise), &whole);
        }
    }

    #[test]
    fn random_bytes_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..512),
        max_line in 0usize..40,
        max_attempts in 0u32..3,
        cuts in prop::collection::vec(0usize..512, 0..8),
    ) {
        let small = PreauthLimits { max_line, max_attempts, ..limits() };
        let mut cuts = cuts;
        cuts.sort_unstable();
        let (out, events, _) = drive(Security::Plaintext, small, &input, &cuts);
        // Every close was answered first.
        if events.iter().any(|e| e.starts_with("Closed")) {
            prop_assert!(out.ends_with(b"\r\n"));
        }
    }

    #[test]
    fn debug_never_shows_the_password(pw in "[a-zA-Z0-9]{12,24}") {
        let t0 = t0();
        let feeds = [
            format!("USER alice\r\nPASS {pw}\r\nPASS {pw}\r\n"),
            format!("AUTH PLAIN {}\r\nPASS {pw}\r\n", b64(format!("\0alice\0{pw}"))),
            format!("AUTH LOGIN\r\n{}\r\n{}\r\n", b64("alice"), b64(&pw)),
            format!("AUTH XOAUTH2 {}\r\n", b64(format!("user=a\x01auth=Bearer {pw}\x01\x01"))),
            format!("USER alice\r\nPASS {}", &pw[..pw.len() - 2]),
        ];
        for feed in feeds {
            let mut fe = Pop3Frontend::new(Security::Tls, limits(), t0);
            fe.handle_input(feed.as_bytes());
            let mut seen = format!("{fe:?}");
            while let Some(event) = fe.poll_event() {
                seen.push_str(&format!("{event:?} {event:#?}"));
                if let FrontendEvent::LoginRequested(request) = &event {
                    let replay = crate::proto::pop3::replay::Pop3Replay::new(request, false);
                    seen.push_str(&format!("{replay:?}"));
                }
            }
            prop_assert!(!seen.contains(&pw), "{}", seen);
            prop_assert!(!seen.contains(&pw[..pw.len() - 2]));
        }
    }
}

/// Issue 9 item 4: a name over `max_username` (USER, AUTH PLAIN authcid and authzid, AUTH
/// LOGIN, XOAUTH2 `user=`, OAUTHBEARER `a=`) gets `-ERR [AUTH]` from the front-end, counts as
/// an attempt, and is never reported to the driver (so never replayed, logged or audited).
#[test]
fn oversized_user_names_are_refused_in_the_front_end() {
    let b64 = |raw: &[u8]| sasl::encode_base64(raw);
    let long = "u".repeat(321);
    let fits = "u".repeat(320);
    const REFUSED: &str = "-ERR [AUTH] Authentication failed\r\n";
    let table: Vec<Vec<Step>> = vec![
        vec![
            c(format!("USER {long}\r\nPASS pw\r\n")),
            s("+OK\r\n"),
            s(REFUSED),
        ],
        vec![
            c(format!(
                "AUTH PLAIN {}\r\n",
                b64(format!("\0{long}\0pw").as_bytes())
            )),
            s(REFUSED),
        ],
        vec![
            c(format!(
                "AUTH PLAIN {}\r\n",
                b64(format!("{long}\0alice\0pw").as_bytes())
            )),
            s(REFUSED),
        ],
        vec![
            c(format!(
                "AUTH LOGIN {}\r\n{}\r\n",
                b64(long.as_bytes()),
                b64(b"pw")
            )),
            s("+ UGFzc3dvcmQ6\r\n"),
            s(REFUSED),
        ],
        vec![
            c(format!(
                "AUTH XOAUTH2 {}\r\n",
                b64(format!("user={long}\x01auth=Bearer t\x01\x01").as_bytes())
            )),
            s(REFUSED),
        ],
        vec![
            c(format!(
                "AUTH OAUTHBEARER {}\r\n",
                b64(format!("n,a={long},\x01auth=Bearer t\x01\x01").as_bytes())
            )),
            s(REFUSED),
        ],
        vec![
            c(format!("USER {fits}\r\nPASS pw\r\n")),
            s("+OK\r\n"),
            E(FrontendEvent::LoginRequested(LoginRequest {
                mechanism: Mechanism::UserPass,
                credentials: password(&fits, b"pw"),
            })),
        ],
    ];
    for steps in table {
        run(Security::Tls, limits(), &steps);
    }
    // Counted as attempts: the last one closes.
    let two = PreauthLimits {
        max_attempts: 2,
        ..limits()
    };
    run(
        Security::Tls,
        two,
        &[
            c(format!(
                "USER {long}\r\nPASS a\r\nUSER {long}\r\nPASS b\r\nNOOP\r\n"
            )),
            s(format!("+OK\r\n{REFUSED}+OK\r\n{REFUSED}")),
            s(TOO_MANY_ATTEMPTS),
            E(FrontendEvent::Closed(CloseReason::TooManyAttempts)),
        ],
    );
}

/// Issue 9 item 10 (POP3): `CAPA` before login adds the upstream's own capabilities (TOP, UIDL,
/// EXPIRE, ...) to mailgate's, without those mailgate answers itself.
#[test]
fn capa_lists_what_the_upstream_offers_minus_what_mailgate_handles() {
    let upstream: Vec<String> = [
        "CAPA",
        "TOP",
        "UIDL",
        "RESP-CODES",
        "PIPELINING",
        "AUTH-RESP-CODE",
        "STLS",
        "USER",
        "SASL PLAIN LOGIN",
        "IMPLEMENTATION Dovecot",
        "EXPIRE NEVER",
        "UTF8",
        "top",
        "X\u{e9}",
    ]
    .iter()
    .map(|l| (*l).to_owned())
    .collect();
    let mut fe = Pop3Frontend::with_upstream(Security::Tls, limits(), t0(), &upstream);
    let _greeting = fe.poll_transmit();
    fe.handle_input(b"CAPA\r\n");
    assert_eq!(
        String::from_utf8(fe.poll_transmit().unwrap().to_vec()).unwrap(),
        "+OK Capability list follows\r\nCAPA\r\nUSER\r\nSASL PLAIN LOGIN XOAUTH2 OAUTHBEARER\r\n\
         TOP\r\nUIDL\r\nEXPIRE NEVER\r\n\
         RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION mailgate\r\n.\r\n"
    );
}

/// Issue 9: a client that pipelines `CAPA`s and `NOOP`s and never reads. One read queues at
/// most [`MAX_PENDING_OUTPUT`] (plus one answer) of answers; the rest is answered, in order, as
/// `poll_transmit` hands the answers out.
#[test]
fn answers_queued_per_read_are_capped_and_none_is_lost() {
    let mut m = Pop3Frontend::new(Security::Tls, PreauthLimits::default(), t0());
    let _greeting = m.poll_transmit();
    let commands = b"CAPA\r\nNOOP\r\n".repeat(PREAUTH_READ / 12);
    m.handle_input(&commands);
    assert!(
        m.output.len() < MAX_PENDING_OUTPUT + 200,
        "{} bytes of answers queued for one read",
        m.output.len()
    );
    let mut answers = Vec::new();
    while let Some(out) = m.poll_transmit() {
        answers.extend_from_slice(&out);
    }
    let answers = String::from_utf8(answers).unwrap();
    let capas = answers.matches("+OK Capability list follows\r\n").count();
    let noops = answers.matches("\r\n.\r\n+OK\r\n").count();
    assert_eq!((capas, noops), (PREAUTH_READ / 12, PREAUTH_READ / 12));
    assert!(m.input.is_empty());
    assert!(m.poll_event().is_none());
}

/// A driver that keeps feeding input without sending the answers: what is held back is bounded
/// (a line and a read), then the machine closes.
#[test]
fn input_held_back_behind_unsent_answers_is_bounded() {
    let limits = PreauthLimits::default();
    let mut m = Pop3Frontend::new(Security::Tls, limits, t0());
    let chunk = b"CAPA\r\n".repeat(PREAUTH_READ / 6);
    let mut fed = 0;
    while m.poll_event().is_none() {
        m.handle_input(&chunk);
        fed += chunk.len();
        assert!(m.input.len() <= limits.max_line + PREAUTH_READ);
        assert!(fed < 100 * PREAUTH_READ, "never closed");
    }
    let mut answers = Vec::new();
    while let Some(out) = m.poll_transmit() {
        answers.extend_from_slice(&out);
    }
    assert!(answers.ends_with(LINE_TOO_LONG));
}

#[test]
fn invalid_commands_up_to_the_limit_close() {
    let three = PreauthLimits {
        max_bad_commands: 3,
        ..limits()
    };
    // An unknown command, one not valid before login, PASS without USER: three, then the
    // close; the NOOP after it is never answered.
    run(
        Security::Tls,
        three,
        &[
            c("FROB\r\nRETR 1\r\nPASS x\r\nNOOP\r\n"),
            s("-ERR Unknown command.\r\n"),
            s("-ERR Command not valid before login.\r\n"),
            s("-ERR No user name given.\r\n"),
            s("-ERR Too many invalid commands; disconnecting.\r\n"),
            closed(CloseReason::TooManyErrors),
        ],
    );
    // A cancelled AUTH is the client's right, not an invalid command; below the limit a login
    // goes through.
    run(
        Security::Tls,
        three,
        &[
            c("FROB\r\nFROB\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n*\r\nUSER alice\r\nPASS pw\r\n"),
            s("-ERR Unknown command.\r\n-ERR Unknown command.\r\n"),
            s("+ \r\n-ERR Authentication cancelled.\r\n".repeat(2)),
            s("+OK\r\n"),
            login(Mechanism::UserPass, password("alice", b"pw")),
        ],
    );
}
