//! Transcript tests for the POP3 login replay against Dovecot-like answers. Every transcript
//! runs with each upstream write delivered whole, one byte at a time and in random chunkings.

use proptest::prelude::*;

use super::*;
use crate::proto::pop3::testing::{chunkings, split};

enum Step {
    /// The upstream writes these bytes.
    U(Vec<u8>),
    /// The replay must have sent exactly these bytes next.
    Sent(Vec<u8>),
    /// The replay must have reported this event next.
    E(ReplayEvent),
    Tls,
    /// The upstream closes the connection.
    Eof,
    Residual(Vec<u8>),
}
use Step::*;

fn u(bytes: impl AsRef<[u8]>) -> Step {
    U(bytes.as_ref().to_vec())
}

fn sent(bytes: impl AsRef<[u8]>) -> Step {
    Sent(bytes.as_ref().to_vec())
}

fn run(request: &LoginRequest, starttls: bool, steps: &[Step]) {
    run_from(
        || Pop3Replay::new(request, starttls).expect("safe request"),
        steps,
    )
}

fn run_from(new: impl Fn() -> Pop3Replay, steps: &[Step]) {
    for chunking in chunkings() {
        let mut replay = Some(new());
        let mut out = Vec::new();
        let mut events = VecDeque::new();
        let drain = |r: &mut Pop3Replay, out: &mut Vec<u8>, events: &mut VecDeque<_>| {
            while let Some(b) = r.poll_transmit() {
                out.extend_from_slice(&b);
            }
            while let Some(e) = r.poll_event() {
                events.push_back(e);
            }
        };
        for (i, step) in steps.iter().enumerate() {
            let ctx = format!("step {i}, chunking {chunking:?}");
            let r = replay.as_mut().expect("no steps after Residual");
            match step {
                U(bytes) => split(bytes, chunking, &mut |chunk| {
                    r.handle_input(chunk);
                    drain(r, &mut out, &mut events);
                }),
                Sent(want) => {
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
                Tls => {
                    r.tls_established();
                    drain(r, &mut out, &mut events);
                }
                Eof => {
                    r.handle_eof();
                    drain(r, &mut out, &mut events);
                }
                Residual(want) => {
                    let r = replay.take().expect("replay");
                    assert_eq!(r.into_residual(), Bytes::from(want.clone()), "{ctx}");
                }
            }
        }
        assert_eq!(
            String::from_utf8_lossy(&out),
            "",
            "unsent output ({chunking:?})"
        );
        assert!(
            events.is_empty(),
            "unexpected events {events:?} ({chunking:?})"
        );
    }
}

fn user_pass(user: &str, pw: &[u8]) -> LoginRequest {
    LoginRequest {
        mechanism: Mechanism::UserPass,
        credentials: Credentials::Password {
            authzid: None,
            user: user.into(),
            password: Secret::new(pw.to_vec()),
        },
    }
}

fn with_mechanism(mechanism: Mechanism, request: LoginRequest) -> LoginRequest {
    LoginRequest {
        mechanism,
        ..request
    }
}

fn xoauth2(user: &str, token: &str) -> LoginRequest {
    LoginRequest {
        mechanism: Mechanism::XOAuth2,
        credentials: Credentials::Bearer {
            user: Some(user.into()),
            token: Secret::new(token.into()),
            host: None,
            port: None,
        },
    }
}

fn logged_in(reply: &str) -> Step {
    E(ReplayEvent::LoggedIn {
        untagged: Bytes::new(),
        reply: Bytes::from(reply.to_owned()),
    })
}

fn rejected(text: &str, challenge: Option<&'static [u8]>) -> Step {
    E(ReplayEvent::Rejected {
        text: text.into(),
        challenge: challenge.map(Bytes::from_static),
    })
}

fn failed(error: ReplayError) -> Step {
    E(ReplayEvent::Failed(error))
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    sasl::encode_base64(bytes.as_ref())
}

const GREETING: &str = "+OK Dovecot ready.\r\n";

#[test]
fn client_address_goes_in_xclient_when_the_greeting_offers_it() {
    let client: core::net::SocketAddr = "[2001:db8::7]:40123".parse().unwrap();
    let request = &user_pass("alice", b"s3cret");
    let new = |starttls| {
        move || {
            Pop3Replay::new(request, starttls)
                .expect("safe")
                .with_client_address(client)
        }
    };
    // Dovecot offers XCLIENT to login_trusted_networks in its greeting (2.3 pop3-login).
    run_from(
        new(false),
        &[
            u("+OK [XCLIENT] Dovecot (Debian) ready.\r\n"),
            sent("XCLIENT ADDR=2001:db8::7 PORT=40123\r\n"),
            u("+OK Updated\r\n"),
            sent("USER alice\r\n"),
            u("+OK\r\n"),
            sent("PASS s3cret\r\n"),
            u("+OK Logged in.\r\n"),
            logged_in("+OK Logged in.\r\n"),
            Residual(vec![]),
        ],
    );
    // After STLS too (the offer came with the greeting), and a refusal only loses the address.
    run_from(
        new(true),
        &[
            u("+OK [XCLIENT] Dovecot ready.\r\n"),
            sent("STLS\r\n"),
            u("+OK Begin TLS negotiation now.\r\n"),
            E(ReplayEvent::TlsRequested),
            Tls,
            sent("XCLIENT ADDR=2001:db8::7 PORT=40123\r\n"),
            u("-ERR You aren't allowed to use XCLIENT\r\n"),
            sent("USER alice\r\n"),
            u("-ERR [AUTH] Authentication failed.\r\n"),
            rejected("Authentication failed.", None),
        ],
    );
    // Not offered (an untrusted proxy, another server): nothing extra is sent.
    run_from(
        new(false),
        &[
            u(GREETING),
            sent("USER alice\r\n"),
            u("+OK\r\n"),
            sent("PASS s3cret\r\n"),
            u("+OK Logged in.\r\n"),
            logged_in("+OK Logged in.\r\n"),
        ],
    );
}

#[test]
fn user_pass_plain_connection() {
    run(
        &user_pass("alice", b" pass with spaces "),
        false,
        &[
            u(GREETING),
            sent("USER alice\r\n"),
            u("+OK\r\n"),
            sent("PASS  pass with spaces \r\n"),
            u("+OK Logged in.\r\n"),
            logged_in("+OK Logged in.\r\n"),
            Residual(vec![]),
        ],
    );
}

#[test]
fn user_pass_after_stls_drops_injected_bytes() {
    run(
        &user_pass("alice", b"pw"),
        true,
        &[
            u(GREETING),
            sent("STLS\r\n"),
            // A forged answer in the same packet as the go-ahead must not be read.
            u("+OK Begin TLS negotiation now.\r\n+OK\r\n+OK Logged in.\r\n"),
            E(ReplayEvent::TlsRequested),
            u("+OK more plaintext\r\n"),
            Tls,
            sent("USER alice\r\n"),
            u("+OK\r\n"),
            sent("PASS pw\r\n"),
            u("+OK Logged in.\n"),
            logged_in("+OK Logged in.\r\n"),
        ],
    );
}

#[test]
fn stls_refused_and_bad_greeting() {
    run(
        &user_pass("alice", b"pw"),
        true,
        &[
            u(GREETING),
            sent("STLS\r\n"),
            u("-ERR TLS support isn't enabled.\r\n"),
            failed(ReplayError::StartTlsRefused(
                "TLS support isn't enabled.".into(),
            )),
        ],
    );
    run(
        &user_pass("alice", b"pw"),
        false,
        &[
            u("-ERR [SYS/TEMP] Too many connections\r\n"),
            failed(ReplayError::Greeting(
                "[SYS/TEMP] Too many connections".into(),
            )),
        ],
    );
}

#[test]
fn user_pass_rejected() {
    run(
        &user_pass("alice", b"wrong"),
        false,
        &[
            u(GREETING),
            sent("USER alice\r\n"),
            u("+OK\r\n"),
            sent("PASS wrong\r\n"),
            u("-ERR [AUTH] Authentication failed.\r\n"),
            rejected("Authentication failed.", None),
            // Nothing is read after a terminal event.
            u("+OK\r\n"),
            Residual(vec![]),
        ],
    );
    run(
        &user_pass("alice", b"pw"),
        false,
        &[
            u(GREETING),
            sent("USER alice\r\n"),
            u("-ERR\r\n"),
            rejected("", None),
        ],
    );
}

/// Issue 9: an upstream that closes once the login is under way (Dovecot does on some bad
/// logins) refused the login: a failed login, not an outage. Before it, the upstream is
/// unavailable.
#[test]
fn close_after_the_login_started_is_a_rejection() {
    for steps in [
        vec![u(GREETING), sent("USER alice\r\n"), Eof, rejected("", None)],
        vec![
            u(GREETING),
            sent("USER alice\r\n"),
            u("+OK\r\n"),
            sent("PASS pw\r\n"),
            Eof,
            rejected("", None),
            // A close is final: nothing after it counts.
            u("+OK\r\n"),
            Eof,
            Residual(vec![]),
        ],
    ] {
        run(&user_pass("alice", b"pw"), false, &steps);
    }
    let json = br#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
    run(
        &xoauth2("alice@example.com", "expired"),
        false,
        &[
            u(GREETING),
            sent(format!(
                "AUTH XOAUTH2 {}\r\n",
                b64("user=alice@example.com\x01auth=Bearer expired\x01\x01")
            )),
            u(format!("+ {}\r\n", b64(json))),
            sent("\r\n"),
            Eof,
            rejected("", Some(json)),
        ],
    );
}

#[test]
fn close_before_the_login_is_a_failure() {
    run(
        &user_pass("alice", b"pw"),
        false,
        &[Eof, failed(ReplayError::Closed)],
    );
    run(
        &user_pass("alice", b"pw"),
        true,
        &[
            u(GREETING),
            sent("STLS\r\n"),
            Eof,
            failed(ReplayError::Closed),
        ],
    );
    // After the login, a close belongs to the splice; the replay reports nothing more.
    run(
        &user_pass("alice", b"pw"),
        false,
        &[
            u(GREETING),
            sent("USER alice\r\n"),
            u("+OK\r\n"),
            sent("PASS pw\r\n"),
            u("+OK Logged in.\r\n"),
            logged_in("+OK Logged in.\r\n"),
            Eof,
            Residual(vec![]),
        ],
    );
}

#[test]
fn plain_short_uses_initial_response() {
    let request = with_mechanism(Mechanism::Plain, user_pass("alice", b"p\r\nw"));
    run(
        &request,
        false,
        &[
            u(GREETING),
            // CR/LF in a PLAIN password are safe: they travel base64-encoded.
            sent(format!("AUTH PLAIN {}\r\n", b64("\0alice\0p\r\nw"))),
            u("+OK Logged in.\r\n"),
            logged_in("+OK Logged in.\r\n"),
        ],
    );
}

#[test]
fn login_mechanism_prompts_with_and_without_space() {
    let request = with_mechanism(Mechanism::Login, user_pass("alice", b"pw"));
    run(
        &request,
        false,
        &[
            u(GREETING),
            sent("AUTH LOGIN\r\n"),
            u("+ VXNlcm5hbWU6\r\n"),
            sent(format!("{}\r\n", b64("alice"))),
            // No space, and a bare `+`, are continuations too.
            u("+UGFzc3dvcmQ6\r\n"),
            sent(format!("{}\r\n", b64("pw"))),
            u("-ERR [AUTH] Authentication failed.\r\n"),
            rejected("Authentication failed.", None),
        ],
    );
    run(
        &request,
        false,
        &[
            u(GREETING),
            sent("AUTH LOGIN\r\n"),
            u("+\r\n"),
            sent(format!("{}\r\n", b64("alice"))),
            u("+ \r\n"),
            sent(format!("{}\r\n", b64("pw"))),
            u("+OK Logged in.\r\n"),
            logged_in("+OK Logged in.\r\n"),
        ],
    );
}

#[test]
fn long_token_waits_for_continuation() {
    let token = "ya29.".to_owned() + &"a1B2-c3_D4".repeat(200);
    let request = xoauth2("alice@example.com", &token);
    let encoded = b64(format!(
        "user=alice@example.com\x01auth=Bearer {token}\x01\x01"
    ));
    for plus in ["+ \r\n", "+\r\n"] {
        run(
            &request,
            false,
            &[
                u(GREETING),
                sent("AUTH XOAUTH2\r\n"),
                u(plus),
                sent(format!("{encoded}\r\n")),
                u("+OK Logged in.\r\n"),
                logged_in("+OK Logged in.\r\n"),
            ],
        );
    }
}

#[test]
fn initial_response_limit_is_255_octets() {
    // RFC 5034 4: "AUTH XOAUTH2 " (13) + base64 + CRLF (2). The raw response is 21 octets
    // plus the token, so a 159-octet token makes a 240-octet base64 and a 255-octet line.
    let first_line = |token_len: usize| {
        let mut r = Pop3Replay::new(&xoauth2("a", &"t".repeat(token_len)), false).expect("safe");
        r.handle_input(GREETING.as_bytes());
        r.poll_transmit().expect("auth line")
    };
    let line = first_line(159);
    assert_eq!(line.len(), 255);
    assert!(line.starts_with(b"AUTH XOAUTH2 dXNlcj1h"));
    assert_eq!(first_line(160), "AUTH XOAUTH2\r\n");
}

#[test]
fn xoauth2_failure_challenge() {
    let json = br#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
    let request = xoauth2("alice@example.com", "expired");
    run(
        &request,
        false,
        &[
            u(GREETING),
            sent(format!(
                "AUTH XOAUTH2 {}\r\n",
                b64("user=alice@example.com\x01auth=Bearer expired\x01\x01")
            )),
            u(format!("+ {}\r\n", b64(json))),
            sent("\r\n"),
            u("-ERR [AUTH] Invalid credentials.\r\n"),
            rejected("Invalid credentials.", Some(json)),
        ],
    );
}

#[test]
fn oauthbearer_failure_challenge_answered_with_aq() {
    let json = br#"{"status":"invalid_token"}"#;
    let request = LoginRequest {
        mechanism: Mechanism::OAuthBearer,
        credentials: Credentials::Bearer {
            user: Some("alice@example.com".into()),
            token: Secret::new("expired".into()),
            host: None,
            port: None,
        },
    };
    run(
        &request,
        false,
        &[
            u(GREETING),
            sent(format!(
                "AUTH OAUTHBEARER {}\r\n",
                b64("n,a=alice@example.com,\x01auth=Bearer expired\x01\x01")
            )),
            u(format!("+{}\r\n", b64(json))),
            sent("AQ==\r\n"),
            u("-ERR [AUTH] Authentication failed.\r\n"),
            rejected("Authentication failed.", Some(json)),
        ],
    );
}

#[test]
fn garbage_and_unexpected_answers_fail() {
    let request = user_pass("alice", b"pw");
    run(
        &request,
        false,
        &[
            u("* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n"),
            failed(ReplayError::Unexpected(
                "greeting: * OK [CAPABILITY IMAP4rev1] Dovecot ready.".into(),
            )),
        ],
    );
    run(
        &request,
        false,
        &[
            u(GREETING),
            sent("USER alice\r\n"),
            u("+OK\r\n"),
            sent("PASS pw\r\n"),
            u("pw is wrong\r\n"),
            failed(ReplayError::Unexpected(
                "PASS answer is not one the protocol allows".into(),
            )),
        ],
    );
    // A continuation where PLAIN expects a result, and a challenge that is not base64.
    run(
        &with_mechanism(Mechanism::Plain, user_pass("alice", b"pw")),
        false,
        &[
            u(GREETING),
            sent(format!("AUTH PLAIN {}\r\n", b64("\0alice\0pw"))),
            u("+ \r\n"),
            failed(ReplayError::Unexpected(
                "AUTH answer is not one the protocol allows".into(),
            )),
        ],
    );
    run(
        &xoauth2("a", "t"),
        false,
        &[
            u(GREETING),
            sent(format!(
                "AUTH XOAUTH2 {}\r\n",
                b64("user=a\x01auth=Bearer t\x01\x01")
            )),
            u("+ not base64!\r\n"),
            failed(ReplayError::Unexpected(
                "AUTH challenge is not base64".into(),
            )),
        ],
    );
    // +OK after an error challenge is not a login.
    run(
        &xoauth2("a", "t"),
        false,
        &[
            u(GREETING),
            sent(format!(
                "AUTH XOAUTH2 {}\r\n",
                b64("user=a\x01auth=Bearer t\x01\x01")
            )),
            u("+ e30=\r\n"),
            sent("\r\n"),
            u("+OK Logged in.\r\n"),
            failed(ReplayError::Unexpected(
                "AUTH challenge answer is not one the protocol allows".into(),
            )),
        ],
    );
}

#[test]
fn upstream_line_too_long() {
    let request = user_pass("alice", b"pw");
    run(
        &request,
        false,
        &[
            u("+OK ".to_owned() + &"x".repeat(MAX_UPSTREAM_LINE)),
            failed(ReplayError::LineTooLong(MAX_UPSTREAM_LINE)),
        ],
    );
}

#[test]
fn bytes_after_login_are_residual() {
    run(
        &user_pass("alice", b"pw"),
        false,
        &[
            u(GREETING),
            sent("USER alice\r\n"),
            u("+OK\r\n"),
            sent("PASS pw\r\n"),
            u("+OK Logged in.\r\n+OK 2 messages\r\n"),
            logged_in("+OK Logged in.\r\n"),
            u("extra"),
            Residual(b"+OK 2 messages\r\nextra".to_vec()),
        ],
    );
}

#[test]
fn smuggling_refused() {
    let field = |request: &LoginRequest| Pop3Replay::new(request, false).err().map(|e| e.field);
    assert_eq!(
        field(&user_pass("alice", b"pw\r\nDELE 1")),
        Some("password")
    );
    assert_eq!(field(&user_pass("alice", b"pw\nQUIT")), Some("password"));
    assert_eq!(field(&user_pass("alice", b"pw\rx")), Some("password"));
    assert_eq!(field(&user_pass("alice", b"p\0w")), Some("password"));
    assert_eq!(field(&user_pass("alice\r\nPASS x", b"pw")), Some("user"));
    assert_eq!(field(&user_pass("al\0ice", b"pw")), Some("user"));
    assert_eq!(field(&user_pass("", b"pw")), Some("user"));
    let login = |user: &str, pw: &[u8]| with_mechanism(Mechanism::Login, user_pass(user, pw));
    assert_eq!(field(&login("a\nb", b"pw")), Some("user"));
    assert_eq!(field(&login("a", b"p\0w")), Some("password"));
    assert_eq!(field(&login("a", b"p\r\nw")), None);
    let plain = |pw: &[u8]| with_mechanism(Mechanism::Plain, user_pass("alice", pw));
    assert_eq!(field(&plain(b"p\0w")), Some("password"));
    assert_eq!(field(&xoauth2("a\x01b", "t")), Some("user"));
    assert_eq!(field(&xoauth2("a", "t\r\nQUIT")), Some("token"));
    // Mechanism and credentials must agree; IMAP LOGIN is not a POP3 mechanism.
    assert_eq!(
        field(&with_mechanism(Mechanism::UserPass, xoauth2("a", "t"))),
        Some("mechanism")
    );
    assert_eq!(
        field(&with_mechanism(Mechanism::ImapLogin, user_pass("a", b"pw"))),
        Some("mechanism")
    );
    let with_authzid = LoginRequest {
        mechanism: Mechanism::UserPass,
        credentials: Credentials::Password {
            authzid: Some("admin".into()),
            user: "alice".into(),
            password: Secret::new(b"pw".to_vec()),
        },
    };
    assert_eq!(field(&with_authzid), Some("authzid"));
}

proptest! {
    #[test]
    fn random_upstream_never_panics_and_chunking_agrees(
        input in prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(vec![
                    b"+OK\r\n".to_vec(), b"-ERR [AUTH] no\r\n".to_vec(), b"+ \r\n".to_vec(),
                    b"+ e30=\r\n".to_vec(), b"+\r\n".to_vec(), b"\n".to_vec(), b"\r".to_vec(),
                ]),
                1 => prop::collection::vec(any::<u8>(), 0..8),
            ],
            0..16,
        ).prop_map(|p| p.concat()),
        mechanism in prop::sample::select(vec![
            Mechanism::UserPass, Mechanism::Plain, Mechanism::Login, Mechanism::XOAuth2,
        ]),
        starttls in any::<bool>(),
    ) {
        let request = match mechanism {
            Mechanism::XOAuth2 => xoauth2("a", "tok"),
            m => with_mechanism(m, user_pass("alice", b"pw")),
        };
        let observe = |cut: usize| {
            let mut r = Pop3Replay::new(&request, starttls).expect("safe");
            let (mut out, mut events) = (Vec::new(), Vec::new());
            for chunk in input.chunks(cut.max(1)) {
                r.handle_input(chunk);
                while let Some(b) = r.poll_transmit() {
                    out.extend_from_slice(&b);
                }
                while let Some(e) = r.poll_event() {
                    events.push(format!("{e:?}"));
                }
            }
            (out, events, r.into_residual())
        };
        let whole = observe(input.len());
        prop_assert_eq!(&observe(1), &whole);
        prop_assert_eq!(&observe(3), &whole);
    }

    #[test]
    fn debug_and_errors_never_show_credentials(pw in "[a-zA-Z0-9]{12,24}") {
        let requests = [
            user_pass("alice", pw.as_bytes()),
            with_mechanism(Mechanism::Plain, user_pass("alice", pw.as_bytes())),
            with_mechanism(Mechanism::Login, user_pass("alice", pw.as_bytes())),
            xoauth2("alice", &pw),
            user_pass("alice", format!("{pw}\r\n").as_bytes()),
        ];
        for request in requests {
            let mut seen = format!("{request:?}");
            match Pop3Replay::new(&request, false) {
                Err(e) => seen.push_str(&format!("{e:?} {e}")),
                Ok(mut r) => {
                    r.handle_input(b"+OK\r\n+OK\r\nsomething odd\r\n");
                    seen.push_str(&format!("{r:?}"));
                    while let Some(e) = r.poll_event() {
                        seen.push_str(&format!("{e:?}"));
                        if let ReplayEvent::Failed(err) = e {
                            seen.push_str(&err.to_string());
                        }
                    }
                }
            }
            prop_assert!(!seen.contains(&pw), "{}", seen);
            prop_assert!(!seen.contains(&b64(&pw)), "{}", seen);
        }
    }
}

/// The startup probe: `CAPA` (after STLS when asked), the lines kept, `QUIT`, `Probed`.
#[test]
fn probe_learns_capa_and_quits() {
    for chunking in chunkings() {
        for starttls in [false, true] {
            let mut replay = Pop3Replay::probe(starttls);
            let mut out = Vec::new();
            let mut events = Vec::new();
            let mut feed = |r: &mut Pop3Replay, bytes: &[u8]| {
                split(bytes, chunking, &mut |chunk| r.handle_input(chunk));
                while let Some(b) = r.poll_transmit() {
                    out.extend_from_slice(&b);
                }
                while let Some(e) = r.poll_event() {
                    events.push(e);
                }
            };
            feed(&mut replay, b"+OK Dovecot ready.\r\n");
            if starttls {
                feed(&mut replay, b"+OK Begin TLS negotiation now.\r\n");
                replay.tls_established();
            }
            feed(
                &mut replay,
                b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nSASL PLAIN\r\n.\r\n",
            );
            let want = if starttls {
                "STLS\r\nCAPA\r\nQUIT\r\n"
            } else {
                "CAPA\r\nQUIT\r\n"
            };
            assert_eq!(String::from_utf8_lossy(&out), want, "{chunking:?}");
            let tls = usize::from(starttls);
            assert_eq!(events.len(), tls + 1, "{events:?}");
            assert_eq!(events.last(), Some(&ReplayEvent::Probed));
            assert_eq!(
                replay.capabilities().unwrap(),
                ["CAPA", "TOP", "UIDL", "RESP-CODES", "SASL PLAIN"]
            );
        }
    }
    // An upstream without CAPA: nothing learnt, still a clean QUIT.
    let mut replay = Pop3Replay::probe(false);
    replay.handle_input(b"+OK hi\r\n-ERR unknown command\r\n");
    assert_eq!(
        replay.poll_transmit().unwrap(),
        "CAPA\r\nQUIT\r\n".as_bytes()
    );
    assert_eq!(replay.poll_event(), Some(ReplayEvent::Probed));
    assert_eq!(replay.capabilities(), None);
}
