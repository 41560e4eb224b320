//! Transcript tests for [`ImapReplay`] against Dovecot-like answers; each runs with the upstream
//! bytes fed whole, one byte at a time and in other chunkings.

use bytes::Bytes;

use super::*;
use crate::secret::Secret;

const PLAIN_IR: &str = "AGFsaWNlAHMzY3JldA=="; // \0alice\0s3cret
const XOAUTH2_IR: &str = "dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnRvawEB";
const OAUTHBEARER_IR: &str = "bixhPWFsaWNlQGV4YW1wbGUuY29tLAFhdXRoPUJlYXJlciB5YTI5LnRvawEB";
const CHALLENGE: &str = r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
const CHALLENGE_B64: &str = "eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==";

const GREETING_FULL: &str = "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE \
                             LITERAL+ AUTH=PLAIN AUTH=XOAUTH2 AUTH=OAUTHBEARER] Dovecot ready.\r\n";
const GREETING_MINIMAL: &str = "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Dovecot ready.\r\n";
const GREETING_BARE: &str = "* OK Dovecot ready.\r\n";
const LOGGED_IN: &str = "OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n";

#[derive(Clone, Debug)]
enum Step {
    /// Upstream bytes.
    U(Vec<u8>),
    Tls,
    /// The upstream closed the connection.
    Eof,
}

use Step::{Eof, Tls};

fn u(bytes: impl AsRef<[u8]>) -> Step {
    Step::U(bytes.as_ref().to_vec())
}

#[derive(Debug, PartialEq)]
enum Item {
    /// Bytes we sent upstream.
    C(String),
    E(ReplayEvent),
}

use Item::E;

fn c(text: impl Into<String>) -> Item {
    Item::C(text.into())
}

fn drain(m: &mut ImapReplay, items: &mut Vec<Item>) {
    while let Some(bytes) = m.poll_transmit() {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match items.last_mut() {
            Some(Item::C(last)) => last.push_str(&text),
            _ => items.push(Item::C(text)),
        }
    }
    while let Some(event) = m.poll_event() {
        items.push(Item::E(event));
    }
}

fn run(request: &LoginRequest, starttls: bool, steps: &[Step], chunk: usize) -> (Vec<Item>, Bytes) {
    let mut m = ImapReplay::new(request, starttls).unwrap();
    let mut items = Vec::new();
    drain(&mut m, &mut items);
    for step in steps {
        match step {
            Step::U(bytes) => {
                for part in bytes.chunks(chunk.max(1)) {
                    m.handle_input(part);
                    drain(&mut m, &mut items);
                }
            }
            Tls => m.tls_established(),
            Eof => m.handle_eof(),
        }
        drain(&mut m, &mut items);
    }
    (items, m.into_residual())
}

fn check_tls(request: &LoginRequest, starttls: bool, steps: &[Step], expected: &[Item]) -> Bytes {
    let (whole, residual) = run(request, starttls, steps, usize::MAX);
    assert_eq!(whole, expected, "fed whole");
    for chunk in [1, 2, 3, 7, 11] {
        let (items, rest) = run(request, starttls, steps, chunk);
        assert_eq!(items, expected, "fed in chunks of {chunk}");
        assert_eq!(rest, residual, "residual, chunks of {chunk}");
    }
    residual
}

fn check(request: &LoginRequest, steps: &[Step], expected: &[Item]) -> Bytes {
    check_tls(request, false, steps, expected)
}

fn password(mechanism: Mechanism, user: &str, pass: &[u8]) -> LoginRequest {
    LoginRequest {
        mechanism,
        credentials: Credentials::Password {
            authzid: None,
            user: user.into(),
            password: Secret::new(pass.to_vec()),
        },
    }
}

fn bearer(mechanism: Mechanism, token: &str) -> LoginRequest {
    LoginRequest {
        mechanism,
        credentials: Credentials::Bearer {
            user: Some("alice@example.com".into()),
            token: Secret::new(token.into()),
            host: None,
            port: None,
        },
    }
}

fn logged_in(untagged: &'static str) -> Item {
    E(ReplayEvent::LoggedIn {
        untagged: Bytes::from_static(untagged.as_bytes()),
        reply: Bytes::from_static(LOGGED_IN.as_bytes()),
    })
}

fn failed(error: ReplayError) -> Item {
    E(ReplayEvent::Failed(error))
}

// ----- LOGIN --------------------------------------------------------------------------------

#[test]
fn login_quoted_with_capabilities_in_the_greeting() {
    let residual = check(
        &password(Mechanism::ImapLogin, "alice", b"s3cret"),
        &[
            u(GREETING_FULL),
            u(format!("mg1 {LOGGED_IN}* 1 EXISTS\r\n")),
            u("* 2 EXISTS\r\n"),
        ],
        &[c("mg1 LOGIN \"alice\" \"s3cret\"\r\n"), logged_in("")],
    );
    assert_eq!(residual, &b"* 1 EXISTS\r\n* 2 EXISTS\r\n"[..]);
}

#[test]
fn login_escapes_quotes_and_backslashes() {
    check(
        &password(Mechanism::ImapLogin, "al\"ice", b"p\\a ss"),
        &[u(GREETING_MINIMAL), u(format!("mg1 {LOGGED_IN}"))],
        &[
            c("mg1 LOGIN \"al\\\"ice\" \"p\\\\a ss\"\r\n"),
            logged_in(""),
        ],
    );
}

#[test]
fn login_literal_plus_when_advertised() {
    check(
        &password(Mechanism::ImapLogin, "alice", b"p\r\n\xc3\xa4ss"),
        &[u(GREETING_FULL), u(format!("mg1 {LOGGED_IN}"))],
        &[
            c("mg1 LOGIN \"alice\" {7+}\r\np\r\n\u{e4}ss\r\n"),
            logged_in(""),
        ],
    );
}

#[test]
fn login_synchronising_literals_wait_for_continuations() {
    check(
        &password(Mechanism::ImapLogin, "\u{e4}lice", b"p\r\nw"),
        &[
            u(GREETING_MINIMAL),
            u("+ OK\r\n"),
            u("+\r\n"),
            u(format!("* CAPABILITY IMAP4rev1 IDLE\r\nmg1 {LOGGED_IN}")),
        ],
        &[
            c("mg1 LOGIN {6}\r\n\u{e4}lice {4}\r\np\r\nw\r\n"),
            logged_in("* CAPABILITY IMAP4rev1 IDLE\r\n"),
        ],
    );
    // Transmit boundaries: nothing after `{n}` goes out before the `+`.
    let mut m =
        ImapReplay::new(&password(Mechanism::ImapLogin, "alice", b"p\r\nw"), false).unwrap();
    m.handle_input(GREETING_MINIMAL.as_bytes());
    assert_eq!(
        m.poll_transmit().unwrap(),
        &b"mg1 LOGIN \"alice\" {4}\r\n"[..]
    );
    m.handle_input(b"mg1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
    assert_eq!(m.poll_transmit(), None);
    assert_eq!(
        m.poll_event(),
        Some(ReplayEvent::Rejected {
            text: "Authentication failed.".into(),
            challenge: None
        })
    );
}

#[test]
fn login_without_capabilities_asks_for_them() {
    check(
        &password(Mechanism::ImapLogin, "alice", b"s3cret"),
        &[
            u(GREETING_BARE),
            u("* CAPABILITY IMAP4rev1 LITERAL+\r\nmg1 OK Capability completed.\r\n"),
            u(format!("mg2 {LOGGED_IN}")),
        ],
        &[
            c("mg1 CAPABILITY\r\nmg2 LOGIN \"alice\" \"s3cret\"\r\n"),
            logged_in(""),
        ],
    );
}

#[test]
fn login_rejected() {
    check(
        &password(Mechanism::ImapLogin, "alice", b"wrong"),
        &[
            u(GREETING_FULL),
            u("mg1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n* late\r\n"),
        ],
        &[
            c("mg1 LOGIN \"alice\" \"wrong\"\r\n"),
            E(ReplayEvent::Rejected {
                text: "Authentication failed.".into(),
                challenge: None,
            }),
        ],
    );
}

// ----- AUTHENTICATE -------------------------------------------------------------------------

#[test]
fn plain_with_sasl_ir() {
    check(
        &password(Mechanism::Plain, "alice", b"s3cret"),
        &[u(GREETING_FULL), u(format!("mg1 {LOGGED_IN}"))],
        &[
            c(format!("mg1 AUTHENTICATE PLAIN {PLAIN_IR}\r\n")),
            logged_in(""),
        ],
    );
}

#[test]
fn plain_without_sasl_ir_accepts_plus_with_or_without_space() {
    for plus in ["+\r\n", "+ \r\n", "+ go ahead\r\n"] {
        check(
            &password(Mechanism::Plain, "alice", b"s3cret"),
            &[u(GREETING_MINIMAL), u(plus), u(format!("mg1 {LOGGED_IN}"))],
            &[
                c(format!("mg1 AUTHENTICATE PLAIN\r\n{PLAIN_IR}\r\n")),
                logged_in(""),
            ],
        );
    }
}

#[test]
fn sasl_login_answers_both_prompts() {
    check(
        &password(Mechanism::Login, "alice", b"s3cret"),
        &[
            u(GREETING_FULL),
            u("+ VXNlcm5hbWU6\r\n"),
            u("+ UGFzc3dvcmQ6\r\n"),
            u(format!("mg1 {LOGGED_IN}")),
        ],
        &[
            c("mg1 AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nczNjcmV0\r\n"),
            logged_in(""),
        ],
    );
}

#[test]
fn xoauth2_and_oauthbearer_success() {
    check(
        &bearer(Mechanism::XOAuth2, "ya29.tok"),
        &[u(GREETING_FULL), u(format!("mg1 {LOGGED_IN}"))],
        &[
            c(format!("mg1 AUTHENTICATE XOAUTH2 {XOAUTH2_IR}\r\n")),
            logged_in(""),
        ],
    );
    check(
        &bearer(Mechanism::OAuthBearer, "ya29.tok"),
        &[
            u(GREETING_MINIMAL),
            u("+\r\n"),
            u(format!("mg1 {LOGGED_IN}")),
        ],
        &[
            c(format!(
                "mg1 AUTHENTICATE OAUTHBEARER\r\n{OAUTHBEARER_IR}\r\n"
            )),
            logged_in(""),
        ],
    );
}

#[test]
fn oauth_failure_records_the_challenge() {
    for (request, ir, ack) in [
        (bearer(Mechanism::XOAuth2, "ya29.tok"), XOAUTH2_IR, "\r\n"),
        (
            bearer(Mechanism::OAuthBearer, "ya29.tok"),
            OAUTHBEARER_IR,
            "AQ==\r\n",
        ),
    ] {
        let name = request.mechanism.sasl_name().unwrap();
        check(
            &request,
            &[
                u(GREETING_FULL),
                u(format!("+ {CHALLENGE_B64}\r\n")),
                u("mg1 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n"),
            ],
            &[
                c(format!("mg1 AUTHENTICATE {name} {ir}\r\n{ack}")),
                E(ReplayEvent::Rejected {
                    text: "Invalid credentials (Failure)".into(),
                    challenge: Some(Bytes::from_static(CHALLENGE.as_bytes())),
                }),
            ],
        );
    }
}

#[test]
fn unexpected_continuation_for_plain_fails() {
    check(
        &password(Mechanism::Plain, "alice", b"s3cret"),
        &[u(GREETING_FULL), u("+ \r\n")],
        &[
            c(format!("mg1 AUTHENTICATE PLAIN {PLAIN_IR}\r\n")),
            failed(ReplayError::Unexpected(
                "continuation (text withheld)".into(),
            )),
        ],
    );
}

// ----- STARTTLS -----------------------------------------------------------------------------

#[test]
fn starttls_then_fresh_capabilities() {
    check_tls(
        &password(Mechanism::Plain, "alice", b"s3cret"),
        true,
        &[
            u("* OK [CAPABILITY IMAP4rev1 SASL-IR STARTTLS LOGINDISABLED] Dovecot ready.\r\n"),
            u("mg1 OK Begin TLS negotiation now.\r\nmg2 OK injected\r\n"),
            u("mg9 plaintext after OK\r\n"),
            Tls,
            u("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nmg2 OK Pre-login capabilities listed.\r\n"),
            u("+ \r\n"),
            u(format!("mg3 {LOGGED_IN}")),
        ],
        &[
            c("mg1 STARTTLS\r\n"),
            E(ReplayEvent::TlsRequested),
            c(format!(
                "mg2 CAPABILITY\r\nmg3 AUTHENTICATE PLAIN\r\n{PLAIN_IR}\r\n"
            )),
            logged_in(""),
        ],
    );
}

#[test]
fn starttls_refused() {
    check_tls(
        &password(Mechanism::Plain, "alice", b"s3cret"),
        true,
        &[
            u(GREETING_BARE),
            u("mg1 BAD TLS support isn't enabled.\r\n"),
        ],
        &[
            c("mg1 STARTTLS\r\n"),
            failed(ReplayError::StartTlsRefused(
                "TLS support isn't enabled.".into(),
            )),
        ],
    );
}

// ----- failures -----------------------------------------------------------------------------

#[test]
fn bad_greetings() {
    let request = password(Mechanism::ImapLogin, "alice", b"s3cret");
    check(
        &request,
        &[u("* BYE Too many connections\r\n")],
        &[failed(ReplayError::Bye("Too many connections".into()))],
    );
    check(
        &request,
        &[u("* PREAUTH [CAPABILITY IMAP4rev1] Logged in as bob\r\n")],
        &[failed(ReplayError::Greeting("Logged in as bob".into()))],
    );
    check(
        &request,
        &[u("HTTP/1.1 400 Bad Request\r\n")],
        &[failed(ReplayError::Greeting(
            "HTTP/1.1 400 Bad Request".into(),
        ))],
    );
}

/// Issue 9: Dovecot answers some bad logins (an oversized user name) with `* BYE` or by
/// closing. Once the login command is out that is a failed login, not an outage; the BYE text
/// is not relayed (an upstream may echo the command, password included).
#[test]
fn bye_or_close_after_the_login_command_is_a_rejection() {
    let request = password(Mechanism::ImapLogin, "alice", b"s3cret");
    let rejected = || {
        E(ReplayEvent::Rejected {
            text: String::new(),
            challenge: None,
        })
    };
    check(
        &request,
        &[
            u(GREETING_FULL),
            u("* BYE Error in IMAP command: \"alice\" \"s3cret\"\r\n"),
        ],
        &[c("mg1 LOGIN \"alice\" \"s3cret\"\r\n"), rejected()],
    );
    check(
        &request,
        &[u(GREETING_FULL), Eof],
        &[c("mg1 LOGIN \"alice\" \"s3cret\"\r\n"), rejected()],
    );
    // SASL LOGIN: the close comes after the first piece, still the login command.
    check(
        &password(Mechanism::Login, "alice", b"s3cret"),
        &[u(GREETING_FULL), u("+ VXNlcm5hbWU6\r\n"), Eof],
        &[c("mg1 AUTHENTICATE LOGIN\r\nYWxpY2U=\r\n"), rejected()],
    );
    // An OAuth error challenge seen before the BYE is kept for the downstream.
    check(
        &bearer(Mechanism::XOAuth2, "ya29.tok"),
        &[
            u(GREETING_FULL),
            u(format!("+ {CHALLENGE_B64}\r\n")),
            u("* BYE Disconnected\r\n"),
        ],
        &[
            c(format!("mg1 AUTHENTICATE XOAUTH2 {XOAUTH2_IR}\r\n\r\n")),
            E(ReplayEvent::Rejected {
                text: String::new(),
                challenge: Some(Bytes::from_static(CHALLENGE.as_bytes())),
            }),
        ],
    );
}

/// Before the login command, a BYE or close is the upstream being unavailable.
#[test]
fn bye_or_close_before_the_login_command_is_a_failure() {
    let request = password(Mechanism::ImapLogin, "alice", b"s3cret");
    check(&request, &[Eof], &[failed(ReplayError::Closed)]);
    check(
        &request,
        &[u(GREETING_BARE), Eof],
        &[c("mg1 CAPABILITY\r\n"), failed(ReplayError::Closed)],
    );
    check(
        &request,
        &[u(GREETING_BARE), u("* BYE Server shutting down.\r\n")],
        &[
            c("mg1 CAPABILITY\r\n"),
            failed(ReplayError::Bye("Server shutting down.".into())),
        ],
    );
    // With ID sent first (send_id), a close answering the ID is still before the login.
    let mut m = ImapReplay::new(&request, false)
        .unwrap()
        .with_client_address("192.0.2.7:4321".parse().unwrap());
    m.handle_input(GREETING_FULL.as_bytes());
    assert!(m.poll_transmit().unwrap().starts_with(b"mg1 ID "));
    m.handle_eof();
    assert_eq!(
        m.poll_event(),
        Some(ReplayEvent::Failed(ReplayError::Closed))
    );
    // After the login completed, a close is the splice's business, not the replay's.
    let mut m = ImapReplay::new(&request, false).unwrap();
    m.handle_input(GREETING_FULL.as_bytes());
    m.handle_input(format!("mg1 {LOGGED_IN}").as_bytes());
    assert!(matches!(m.poll_event(), Some(ReplayEvent::LoggedIn { .. })));
    m.handle_eof();
    assert_eq!(m.poll_event(), None);
}

#[test]
fn bad_and_garbage_during_login() {
    let request = password(Mechanism::ImapLogin, "alice", b"s3cret");
    check(
        &request,
        &[u(GREETING_FULL), u("mg1 BAD Error in IMAP command\r\n")],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\n"),
            failed(ReplayError::Unexpected("tagged BAD (text withheld)".into())),
        ],
    );
    check(
        &request,
        &[u(GREETING_FULL), u("\x00\x01garbage\r\n")],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\n"),
            failed(ReplayError::Unexpected("garbage (text withheld)".into())),
        ],
    );
    check(
        &request,
        &[u(GREETING_FULL), u("mg7 OK wrong tag\r\n")],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\n"),
            failed(ReplayError::Unexpected("tagged OK (text withheld)".into())),
        ],
    );
}

/// Issue 9 item 6: an upstream that echoes the command line it got puts the password into
/// its answer; once the login went out, no upstream text reaches an error (which is logged).
#[test]
fn errors_after_the_login_carry_no_upstream_text() {
    let request = password(Mechanism::ImapLogin, "alice", b"s3cret");
    let table: &[(&str, ReplayError)] = &[
        (
            "mg1 BAD Error in IMAP command: mg1 LOGIN \"alice\" \"s3cret\"\r\n",
            ReplayError::Unexpected("tagged BAD (text withheld)".into()),
        ),
        (
            "mg1 BAD [PARSE] s3cret\r\n",
            ReplayError::Unexpected("tagged BAD [PARSE] (text withheld)".into()),
        ),
        (
            "+ s3cret\r\n",
            ReplayError::Unexpected("continuation (text withheld)".into()),
        ),
        (
            "s3cret\r\n",
            ReplayError::Unexpected("garbage (text withheld)".into()),
        ),
        (
            "mg9 NO s3cret\r\n",
            ReplayError::Unexpected("tagged NO (text withheld)".into()),
        ),
    ];
    for (answer, error) in table {
        check(
            &request,
            &[u(GREETING_FULL), u(answer)],
            &[
                c("mg1 LOGIN \"alice\" \"s3cret\"\r\n"),
                failed(error.clone()),
            ],
        );
    }
    // A BYE answering the login is a failed login whose text is not relayed either (see
    // `bye_or_close_after_the_login_command_is_a_rejection`); one after the login's OK, while
    // the post-login list is asked for, is a failure named by its code only.
    check(
        &request,
        &[
            u(GREETING_FULL),
            u("* BYE [UNAVAILABLE] \"alice\" \"s3cret\"\r\n"),
        ],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\n"),
            E(ReplayEvent::Rejected {
                text: String::new(),
                challenge: None,
            }),
        ],
    );
    check(
        &request,
        &[
            u(GREETING_FULL),
            u("mg1 OK Logged in\r\n* BYE [UNAVAILABLE] s3cret\r\n"),
        ],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\nmg2 CAPABILITY\r\n"),
            failed(ReplayError::Bye(
                "untagged BYE [UNAVAILABLE] (text withheld)".into(),
            )),
        ],
    );
    // Before the login went out the upstream saw no credential: its text may be named.
    check(
        &request,
        &[u("* BYE Too many connections\r\n")],
        &[failed(ReplayError::Bye("Too many connections".into()))],
    );
}

/// A code that names the secret itself is still only a code: the summary keeps the code's
/// first word only when it is a short atom.
#[test]
fn summary_drops_long_or_odd_codes() {
    let request = password(Mechanism::ImapLogin, "alice", b"s3cret");
    check(
        &request,
        &[
            u(GREETING_FULL),
            u("mg1 BAD [BADCHARSET s3cret] s3cret\r\n"),
        ],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\n"),
            failed(ReplayError::Unexpected(
                "tagged BAD [BADCHARSET] (text withheld)".into(),
            )),
        ],
    );
}

// ----- post-login capabilities (issue 9 item 10) ----------------------------------------------

const COURIER_GREETING: &str = "* OK [CAPABILITY IMAP4rev1 UIDPLUS CHILDREN NAMESPACE \
                                THREAD=ORDEREDSUBJECT SORT QUOTA IDLE AUTH=PLAIN] Courier-IMAP \
                                ready.\r\n";

/// Courier answers LOGIN with a bare `OK LOGIN Ok.`; the replay asks for the post-login list
/// and puts it into the OK the downstream gets.
#[test]
fn ok_without_capabilities_asks_and_codes_the_reply() {
    let residual = check(
        &password(Mechanism::ImapLogin, "alice", b"s3cret"),
        &[
            u(COURIER_GREETING),
            u("mg1 OK LOGIN Ok.\r\n"),
            u("* CAPABILITY IMAP4rev1 UIDPLUS CHILDREN IDLE ACL ACL2=UNION\r\n"),
            u("mg2 OK CAPABILITY completed\r\n* 1 EXISTS\r\n"),
        ],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\nmg2 CAPABILITY\r\n"),
            E(ReplayEvent::LoggedIn {
                untagged: Bytes::new(),
                reply: Bytes::from_static(
                    b"OK [CAPABILITY IMAP4rev1 UIDPLUS CHILDREN IDLE ACL ACL2=UNION] LOGIN Ok.\r\n",
                ),
            }),
        ],
    );
    assert_eq!(residual, Bytes::from_static(b"* 1 EXISTS\r\n"));
}

#[test]
fn post_login_capability_variants() {
    let request = password(Mechanism::ImapLogin, "alice", b"s3cret");
    // The OK holds another code: the list comes as an untagged line before it.
    check(
        &request,
        &[
            u(COURIER_GREETING),
            u("* OK [ALERT] Mailbox almost full\r\nmg1 OK [ALERT] Logged in\r\n"),
            u("* CAPABILITY IMAP4rev1 IDLE\r\nmg2 OK done\r\n"),
        ],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\nmg2 CAPABILITY\r\n"),
            E(ReplayEvent::LoggedIn {
                untagged: Bytes::from_static(
                    b"* OK [ALERT] Mailbox almost full\r\n* CAPABILITY IMAP4rev1 IDLE\r\n",
                ),
                reply: Bytes::from_static(b"OK [ALERT] Logged in\r\n"),
            }),
        ],
    );
    // An untagged CAPABILITY during the login already told the downstream: nothing to ask.
    check(
        &request,
        &[
            u(COURIER_GREETING),
            u("* CAPABILITY IMAP4rev1 IDLE\r\nmg1 OK Logged in\r\n"),
        ],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\n"),
            E(ReplayEvent::LoggedIn {
                untagged: Bytes::from_static(b"* CAPABILITY IMAP4rev1 IDLE\r\n"),
                reply: Bytes::from_static(b"OK Logged in\r\n"),
            }),
        ],
    );
    // A refused CAPABILITY does not undo the login; the OK goes down as it came. An `OK` with
    // no text at all gets the code and nothing after it.
    check(
        &request,
        &[u(COURIER_GREETING), u("mg1 OK\r\nmg2 BAD no\r\n")],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\nmg2 CAPABILITY\r\n"),
            E(ReplayEvent::LoggedIn {
                untagged: Bytes::new(),
                reply: Bytes::from_static(b"OK\r\n"),
            }),
        ],
    );
    check(
        &request,
        &[
            u(COURIER_GREETING),
            u("mg1 OK\r\n* CAPABILITY IMAP4rev1 X]Y IDLE\r\nmg2 OK\r\n"),
        ],
        &[
            c("mg1 LOGIN \"alice\" \"s3cret\"\r\nmg2 CAPABILITY\r\n"),
            E(ReplayEvent::LoggedIn {
                untagged: Bytes::new(),
                // `X]Y` is no atom: it would end the code early.
                reply: Bytes::from_static(b"OK [CAPABILITY IMAP4rev1 IDLE] \r\n"),
            }),
        ],
    );
}

// ----- capability probe ---------------------------------------------------------------------

fn probe(starttls: bool, steps: &[Step]) -> (Vec<Item>, Option<Vec<String>>) {
    let mut m = ImapReplay::probe(starttls);
    let mut items = Vec::new();
    for step in steps {
        match step {
            Step::U(bytes) => m.handle_input(bytes),
            Tls => m.tls_established(),
            Step::Eof => m.handle_eof(),
        }
        drain(&mut m, &mut items);
    }
    (items, m.capabilities().map(<[String]>::to_vec))
}

#[test]
fn probe_learns_capabilities_and_logs_out() {
    let (items, caps) = probe(false, &[u(GREETING_FULL)]);
    assert_eq!(items, [c("mg1 LOGOUT\r\n"), E(ReplayEvent::Probed)]);
    assert!(caps.unwrap().contains(&"IDLE".to_owned()));

    let (items, caps) = probe(
        false,
        &[
            u(GREETING_BARE),
            u("* CAPABILITY IMAP4rev1 IDLE\r\nmg1 OK done\r\n"),
        ],
    );
    assert_eq!(
        items,
        [
            c("mg1 CAPABILITY\r\nmg2 LOGOUT\r\n"),
            E(ReplayEvent::Probed)
        ]
    );
    assert_eq!(caps.unwrap(), ["IMAP4REV1", "IDLE"]);

    // STARTTLS: what the greeting said before TLS is void (RFC 9051 6.2.1).
    let (items, caps) = probe(
        true,
        &[
            u("* OK [CAPABILITY IMAP4rev1 STARTTLS LITERAL+] hi\r\n"),
            u("mg1 OK go\r\n"),
            Tls,
            u("* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN\r\nmg2 OK done\r\n"),
        ],
    );
    assert_eq!(
        items,
        [
            c("mg1 STARTTLS\r\n"),
            E(ReplayEvent::TlsRequested),
            c("mg2 CAPABILITY\r\nmg3 LOGOUT\r\n"),
            E(ReplayEvent::Probed),
        ]
    );
    assert_eq!(caps.unwrap(), ["IMAP4REV1", "IDLE", "AUTH=PLAIN"]);
}

/// A capability line longer than the 200 characters an error may quote is learnt whole.
#[test]
fn long_capability_lines_are_learnt_whole() {
    let many: Vec<String> = (0..60).map(|i| format!("X-CAP{i}")).collect();
    let line = format!(
        "* CAPABILITY IMAP4rev1 {} IDLE\r\nmg1 OK\r\n",
        many.join(" ")
    );
    let (_, caps) = probe(false, &[u(GREETING_BARE), u(line)]);
    let caps = caps.unwrap();
    assert_eq!(caps.len(), 62);
    assert_eq!(caps.last().map(String::as_str), Some("IDLE"));
}

#[test]
fn upstream_line_too_long() {
    let mut long = b"* OK ".to_vec();
    long.resize(MAX_UPSTREAM_LINE + 1, b'x');
    let request = password(Mechanism::ImapLogin, "alice", b"s3cret");
    let mut m = ImapReplay::new(&request, false).unwrap();
    for chunk in long.chunks(4096) {
        m.handle_input(chunk);
    }
    assert_eq!(
        m.poll_event(),
        Some(ReplayEvent::Failed(ReplayError::LineTooLong(
            MAX_UPSTREAM_LINE
        )))
    );
    assert_eq!(m.poll_transmit(), None);
}

// ----- credential safety --------------------------------------------------------------------

#[test]
fn separators_in_credentials_are_refused() {
    let unsafe_requests = [
        password(Mechanism::ImapLogin, "alice", b"s3\0cret"),
        password(Mechanism::ImapLogin, "al\0ice", b"s3cret"),
        password(Mechanism::Plain, "alice", b"s3\0cret"),
        password(Mechanism::Login, "alice", b"s3\0cret"),
        password(Mechanism::Login, "al\r\nice", b"s3cret"),
        bearer(Mechanism::XOAuth2, "tok\r\nmg2 LOGOUT"),
        bearer(Mechanism::OAuthBearer, "tok\x01"),
        LoginRequest {
            mechanism: Mechanism::ImapLogin,
            credentials: Credentials::Bearer {
                user: None,
                token: Secret::new("t".into()),
                host: None,
                port: None,
            },
        },
    ];
    for request in &unsafe_requests {
        let error = ImapReplay::new(request, false).unwrap_err();
        assert!(!error.to_string().contains("s3"), "{error}");
    }
    // CR/LF in a LOGIN password travel safely inside a literal.
    assert!(ImapReplay::new(&password(Mechanism::ImapLogin, "alice", b"a\r\nb"), false).is_ok());
}

#[test]
fn debug_output_never_shows_credentials() {
    let request = password(Mechanism::ImapLogin, "alice", b"hunter2");
    let mut m = ImapReplay::new(&request, false).unwrap();
    m.handle_input(GREETING_MINIMAL.as_bytes());
    let debug = format!("{m:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    let mut m = ImapReplay::new(&request, false).unwrap();
    m.handle_input(b"* OK [CAPABILITY IMAP4rev1] hi\r\n");
    // Pending literal pieces are held, not printed.
    let request = password(Mechanism::ImapLogin, "alice", b"hunter2\xff");
    let mut m = ImapReplay::new(&request, false).unwrap();
    m.handle_input(b"* OK [CAPABILITY IMAP4rev1] hi\r\n");
    let debug = format!("{m:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
}

// ----- properties ---------------------------------------------------------------------------

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn upstream_bytes() -> impl Strategy<Value = Vec<u8>> {
        let pieces = prop_oneof![
            Just(GREETING_FULL.as_bytes().to_vec()),
            Just(GREETING_BARE.as_bytes().to_vec()),
            Just(b"+ \r\n".to_vec()),
            Just(b"+\r\n".to_vec()),
            Just(format!("+ {CHALLENGE_B64}\r\n").into_bytes()),
            Just(b"mg1 OK done\r\n".to_vec()),
            Just(b"mg2 NO [AUTHENTICATIONFAILED] no\r\n".to_vec()),
            Just(b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR\r\n".to_vec()),
            Just(b"* X {3}\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..30),
        ];
        proptest::collection::vec(pieces, 0..8).prop_map(|v| v.concat())
    }

    fn any_request() -> impl Strategy<Value = LoginRequest> {
        prop_oneof![
            Just(password(Mechanism::ImapLogin, "alice", b"s3cret")),
            Just(password(Mechanism::ImapLogin, "\u{e4}lice", b"p\r\nw")),
            Just(password(Mechanism::Plain, "alice", b"s3cret")),
            Just(password(Mechanism::Login, "alice", b"s3cret")),
            Just(bearer(Mechanism::XOAuth2, "ya29.tok")),
            Just(bearer(Mechanism::OAuthBearer, "ya29.tok")),
        ]
    }

    proptest! {
        #[test]
        fn random_upstream_never_panics_and_chunking_does_not_matter(
            input in upstream_bytes(),
            request in any_request(),
            starttls in any::<bool>(),
            chunk in 1usize..17,
        ) {
            let steps = [Step::U(input.clone()), Tls, Step::U(input)];
            let (whole, residual) = run(&request, starttls, &steps, usize::MAX);
            let (items, rest) = run(&request, starttls, &steps, chunk);
            prop_assert_eq!(items, whole);
            prop_assert_eq!(rest, residual);
        }
    }
}

#[test]
fn client_address_goes_in_an_id_before_the_login() {
    let request = password(Mechanism::ImapLogin, "alice", b"s3cret");
    let client: core::net::SocketAddr = "[2001:db8::7]:40123".parse().unwrap();
    let mut m = ImapReplay::new(&request, false)
        .unwrap()
        .with_client_address(client);
    let mut items = Vec::new();
    for input in [
        GREETING_FULL.to_owned(),
        "* ID (\"name\" \"Dovecot\")\r\nmg1 OK ID completed.\r\n".to_owned(),
        format!("mg2 {LOGGED_IN}"),
    ] {
        m.handle_input(input.as_bytes());
        drain(&mut m, &mut items);
    }
    assert_eq!(
        items,
        [
            c(
                "mg1 ID (\"x-originating-ip\" \"2001:db8::7\" \"x-originating-port\" \"40123\")\r\n\
               mg2 LOGIN \"alice\" \"s3cret\"\r\n"
            ),
            logged_in(""),
        ]
    );
    // An upstream that refuses ID (NO / BAD) still gets the login.
    let mut m = ImapReplay::new(&request, false)
        .unwrap()
        .with_client_address(client);
    let mut items = Vec::new();
    m.handle_input(GREETING_FULL.as_bytes());
    m.handle_input(b"mg1 BAD Unknown command\r\n");
    drain(&mut m, &mut items);
    assert!(
        matches!(&items[..], [Item::C(sent)] if sent.ends_with("mg2 LOGIN \"alice\" \"s3cret\"\r\n"))
    );
}

/// RFC 2971 3.1: an upstream that does not list ID (Courier) gets no ID command, or it would
/// take the ID's answer for the login's; the login goes out at once.
#[test]
fn no_id_to_an_upstream_that_does_not_list_it() {
    let request = password(Mechanism::ImapLogin, "alice", b"s3cret");
    let mut m = ImapReplay::new(&request, false)
        .unwrap()
        .with_client_address("192.0.2.7:4321".parse().unwrap());
    m.handle_input(GREETING_MINIMAL.as_bytes());
    let sent = m.poll_transmit().unwrap();
    assert_eq!(&sent[..], b"mg1 LOGIN \"alice\" \"s3cret\"\r\n");
}
