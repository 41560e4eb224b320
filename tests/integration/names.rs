//! Over-long user names (issue 9 item 4): refused by mailgate itself with the generic
//! credentials failure, counted as a failed attempt, and never sent upstream, logged or
//! audited. Through mailgate in front of a real Dovecot.

use std::time::Duration;

use base64::Engine as _;

use crate::dovecot::Dovecot;
use crate::mailgate::{Mailgate, captured_logs};
use crate::util::TcpLineClient;

/// 1 KiB, far over the default `max_username` of 320; unique to this test (the log buffer
/// is shared by every test of the binary).
fn long_name() -> String {
    let mut name = "n4m3-7c1e-".repeat(100);
    name.push_str("@example.com");
    name
}

#[tokio::test]
async fn oversized_user_names_never_leave_the_front_end() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let audit_path = dir.path().join("audit.log");
    let (audit, writer) = mailgate::audit::Audit::to_file(&audit_path, 4096).expect("audit");
    tokio::spawn(writer.run());
    let services = mailgate::server::Services {
        audit: audit.clone(),
        ..Default::default()
    };
    let mailgate = Mailgate::builder(&dovecot).start_with(services).await;
    let long = long_name();
    let b64 = |raw: &[u8]| base64::engine::general_purpose::STANDARD.encode(raw);

    // IMAP: LOGIN, then AUTHENTICATE PLAIN with the name as authzid; both refused as a
    // credentials failure. The third attempt on the connection ends it, as any failure would.
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let answer = imap.command(&format!("a LOGIN \"{long}\" secret")).await;
    assert!(
        answer.starts_with("a NO [AUTHENTICATIONFAILED]"),
        "{answer}"
    );
    let ir = b64(format!("{long}\0alice@example.com\0secret").as_bytes());
    let answer = imap.command(&format!("b AUTHENTICATE PLAIN {ir}")).await;
    assert!(
        answer.starts_with("b NO [AUTHENTICATIONFAILED]"),
        "{answer}"
    );
    let answer = imap.command(&format!("c LOGIN {long} secret")).await;
    assert!(
        answer.starts_with("c NO [AUTHENTICATIONFAILED]"),
        "{answer}"
    );
    let bye = imap.read_line().await;
    assert!(bye.starts_with("* BYE"), "{bye}");
    imap.expect_eof().await;

    // POP3: USER/PASS and AUTH PLAIN.
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    pop3.command(&format!("USER {long}")).await;
    let answer = pop3.command("PASS secret").await;
    assert!(answer.starts_with("-ERR [AUTH]"), "{answer}");
    let ir = b64(format!("\0{long}\0secret").as_bytes());
    let answer = pop3.command(&format!("AUTH PLAIN {ir}")).await;
    assert!(answer.starts_with("-ERR [AUTH]"), "{answer}");
    // A real name still logs in on the same connection.
    let alice = dovecot.alice().clone();
    pop3.command(&format!("USER {}", alice.name)).await;
    let answer = pop3.command(&format!("PASS {}", alice.password)).await;
    assert!(answer.starts_with("+OK"), "{answer}");
    pop3.command("QUIT").await;

    tokio::time::timeout(Duration::from_secs(10), audit.flush())
        .await
        .expect("audit flush");
    let audit_text = std::fs::read_to_string(&audit_path).expect("audit file");
    assert!(audit_text.contains(&alice.name), "{audit_text}");
    let fragment = "n4m3-7c1e-n4m3-7c1e";
    assert!(!audit_text.contains(fragment), "the name reached the audit");
    assert!(
        !captured_logs().contains(fragment),
        "the name reached the log"
    );
    assert!(
        !dovecot.log().contains(fragment),
        "the name reached the upstream"
    );
}
