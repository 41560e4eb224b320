//! A known password and a known token go through every login path of mailgate (accepted and
//! refused, IMAP and POP3, every mechanism); neither may appear in anything mailgate logs, even
//! at TRACE level.

use base64::Engine as _;

use crate::dovecot::{Dovecot, User};
use crate::mailgate::{Mailgate, captured_logs};
use crate::util::TcpLineClient;

const USER: &str = "redact@example.com";
/// Unique to this test: the shared log buffer holds every test's output.
const PASSWORD: &str = "Pw-7f3c9e1a-never-logged";
const TOKEN: &str = "tok-5b2d8c4e-never-logged";

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[tokio::test]
async fn passwords_and_tokens_never_reach_the_log() {
    let dovecot = Dovecot::builder()
        .users(vec![User::new(USER, PASSWORD)])
        .start();
    let mailgate = Mailgate::start(&dovecot).await;
    let wrong = format!("{PASSWORD}-wrong");
    let plain = |pw: &str| b64(format!("\0{USER}\0{pw}").as_bytes());
    let xoauth2 = b64(format!("user={USER}\x01auth=Bearer {TOKEN}\x01\x01").as_bytes());
    let bearer = b64(format!("n,a={USER},\x01auth=Bearer {TOKEN}\x01\x01").as_bytes());

    for pw in [PASSWORD, wrong.as_str()] {
        // IMAP: LOGIN quoted, LOGIN literal, AUTHENTICATE PLAIN (IR), SASL LOGIN (continuation).
        let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
        imap.read_line().await;
        imap.command(&format!("a LOGIN \"{USER}\" \"{pw}\"")).await;
        let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
        imap.read_line().await;
        imap.send(format!("b LOGIN {USER} {{{}+}}\r\n{pw}\r\n", pw.len()).as_bytes())
            .await;
        imap.read_line().await;
        let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
        imap.read_line().await;
        imap.command(&format!("c AUTHENTICATE PLAIN {}", plain(pw)))
            .await;
        let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
        imap.read_line().await;
        assert!(imap.command("d AUTHENTICATE LOGIN").await.starts_with('+'));
        assert!(imap.command(&b64(USER.as_bytes())).await.starts_with('+'));
        imap.command(&b64(pw.as_bytes())).await;

        // POP3: USER/PASS, AUTH PLAIN with initial response.
        let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
        pop3.read_line().await;
        pop3.command(&format!("USER {USER}")).await;
        pop3.command(&format!("PASS {pw}")).await;
        let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
        pop3.read_line().await;
        pop3.command(&format!("AUTH PLAIN {}", plain(pw))).await;
    }
    // Bearer tokens: this Dovecot has no oauth2 passdb, so it refuses them after the replay,
    // which still carries the token through mailgate both ways.
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let first = imap
        .command(&format!("e AUTHENTICATE XOAUTH2 {xoauth2}"))
        .await;
    if first.starts_with('+') {
        imap.command("").await;
    }
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let first = imap
        .command(&format!("f AUTHENTICATE OAUTHBEARER {bearer}"))
        .await;
    if first.starts_with('+') {
        imap.command("AQ==").await;
    }
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    let first = pop3.command(&format!("AUTH XOAUTH2 {xoauth2}")).await;
    if first.starts_with('+') {
        pop3.command("").await;
    }
    drop(mailgate);

    let logs = captured_logs();
    // The log did record these sessions (so an empty log cannot pass this test)...
    assert!(logs.contains(USER), "no session of this test was logged");
    // ...and none of the secrets, in clear or base64.
    for secret in [
        PASSWORD.to_string(),
        TOKEN.to_string(),
        plain(PASSWORD),
        xoauth2,
        bearer,
    ] {
        assert!(!logs.contains(&secret), "secret in the log: {secret}");
    }
    assert!(
        !logs.contains("never-logged"),
        "a secret fragment reached the log"
    );
}
