//! Abuse limits across connections: the per-IP connection cap, the growing delay before a
//! failed login is answered, and the temporary block after repeated failures.

use std::time::{Duration, Instant};

use crate::dovecot::Dovecot;
use crate::mailgate::{Mailgate, captured_logs};
use crate::util::TcpLineClient;

#[tokio::test]
async fn connections_per_ip_are_capped_with_a_protocol_answer() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::builder(&dovecot)
        .limits("max_connections_per_ip = 2")
        .start()
        .await;
    let mut first = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    assert!(first.read_line().await.starts_with("* OK"));
    let mut second = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    assert!(second.read_line().await.starts_with("+OK"));
    let mut third = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    assert_eq!(
        third.read_line().await,
        "* BYE [UNAVAILABLE] Too many connections from your address"
    );
    assert!(third.read_line_bytes().await.is_empty());
    // A slot frees when its session ends.
    first.command("a LOGOUT").await;
    assert!(first.read_line().await.starts_with("a OK"));
    assert!(first.read_line_bytes().await.is_empty());
    let mut fourth = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    assert!(fourth.read_line().await.starts_with("* OK"));
}

#[tokio::test]
async fn repeated_failures_block_the_user_even_with_the_right_password() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::builder(&dovecot)
        .limits("login_failures_per_user = 2\nlogin_block = \"10m\"")
        .start()
        .await;
    for n in 0..2 {
        let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
        imap.read_line().await;
        let reply = imap
            .command(&format!("a{n} LOGIN bob@example.com wrong{n}"))
            .await;
        assert!(reply.contains("[AUTHENTICATIONFAILED]"), "{reply}");
    }
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let reply = imap.command("b LOGIN bob@example.com bob-secret").await;
    assert!(
        reply.starts_with("b NO [UNAVAILABLE] Too many failed logins"),
        "{reply}"
    );
    // Over POP3 too, and without asking Dovecot.
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    pop3.command("USER bob@example.com").await;
    let reply = pop3.command("PASS bob-secret").await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    // Another user from the same address is not blocked.
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    assert!(
        imap.command("c LOGIN alice@example.com alice-secret")
            .await
            .starts_with("c OK")
    );
    let logs = captured_logs();
    assert!(logs.contains("login refused: rate limited"));
    // The line packaging/fail2ban/filter.d/mailgate.conf matches: `login failed client=<HOST> user=`.
    assert!(
        logs.contains("login failed client=127.0.0.1 user="),
        "no fail2ban line"
    );
}

#[tokio::test]
async fn failed_logins_are_answered_after_a_growing_delay() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::builder(&dovecot)
        .limits("login_failure_delay = \"300ms\"\nlogin_failures_per_user = 0\nlogin_failures_per_ip = 0")
        .start()
        .await;
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let mut took = Vec::new();
    for n in 0..2 {
        let started = Instant::now();
        let reply = imap
            .command(&format!("a{n} LOGIN alice@example.com wrong{n}"))
            .await;
        took.push(started.elapsed());
        assert!(reply.contains("[AUTHENTICATIONFAILED]"), "{reply}");
    }
    // 300 ms, then 600 ms: lower bounds only (a slow machine only adds).
    assert!(took[0] >= Duration::from_millis(300), "{took:?}");
    assert!(took[1] >= Duration::from_millis(600), "{took:?}");
}

/// A client that answers every BAD with more junk is closed after `max_bad_commands` (10, as
/// Dovecot's login processes) instead of looping until `auth_timeout`; over POP3 likewise. A
/// client below the limit still logs in.
#[tokio::test]
async fn junk_before_login_is_closed_after_ten_invalid_commands() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;

    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    assert!(imap.read_line().await.starts_with("* OK"));
    for n in 0..10 {
        imap.send_line(&format!("j{n} \x01\x7f%junk")).await;
        assert_eq!(
            imap.read_line().await,
            format!("j{n} BAD Invalid command syntax")
        );
    }
    assert_eq!(imap.read_line().await, "* BYE Too many invalid commands");
    assert!(
        imap.read_line_bytes().await.is_empty(),
        "closed after the BYE"
    );

    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    assert!(pop3.read_line().await.starts_with("+OK"));
    for _ in 0..10 {
        assert_eq!(pop3.command("XJUNK \x01").await, "-ERR Unknown command.");
    }
    assert_eq!(
        pop3.read_line().await,
        "-ERR Too many invalid commands; disconnecting."
    );
    assert!(
        pop3.read_line_bytes().await.is_empty(),
        "closed after the -ERR"
    );

    // Nine mistakes, then a real login: served.
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    for n in 0..9 {
        imap.send_line(&format!("j{n} FROB")).await;
        imap.read_line().await;
    }
    let reply = imap.command("a LOGIN alice@example.com alice-secret").await;
    assert!(reply.starts_with("a OK"), "{reply}");
    assert!(
        captured_logs().contains("too_many_errors"),
        "the session's end names its cause in the log"
    );
}
