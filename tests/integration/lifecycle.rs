//! Shutdown: SIGTERM stops accepting, ends sessions that have not logged in at once, lets
//! logged-in ones go on until the drain deadline, then ends them with a goodbye, and the
//! process exits 0.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::dovecot::Dovecot;
use crate::mailgate::Mailgate;
use crate::reload::{KillOnDrop, wait_for};
use crate::util::TcpLineClient;

#[tokio::test]
async fn drain_ends_preauth_at_once_and_logged_in_sessions_at_the_deadline() {
    let dovecot = Dovecot::start();
    let mut mailgate = Mailgate::builder(&dovecot)
        .limits("drain_timeout = \"2s\"")
        .start()
        .await;
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    assert!(
        imap.command("a LOGIN alice@example.com alice-secret")
            .await
            .starts_with("a OK")
    );
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    assert!(
        pop3.command("USER bob@example.com")
            .await
            .starts_with("+OK")
    );
    let mut waiting = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    waiting.read_line().await;

    let drained = mailgate.shutdown();
    // Not logged in: told at once, and closed.
    let bye = waiting.read_line().await;
    assert_eq!(bye, "* BYE [UNAVAILABLE] Server shutting down");
    assert!(waiting.read_line_bytes().await.is_empty());
    let bye = pop3.read_line().await;
    assert_eq!(bye, "-ERR [SYS/TEMP] Server shutting down");
    // No new connections.
    assert!(
        tokio::net::TcpStream::connect(mailgate.addr("imap-plain"))
            .await
            .is_err()
    );
    // Logged in: still served during the drain...
    let noop = imap.imap("b", "NOOP").await;
    assert!(noop.tagged.starts_with("b OK"), "{noop:?}");
    // ...then ended with a goodbye at the deadline (the client reads up to 10 s).
    let bye = imap.read_line().await;
    assert_eq!(bye, "* BYE [UNAVAILABLE] Server shutting down");
    assert!(imap.read_line_bytes().await.is_empty());
    drained.await.expect("drained");
}

#[tokio::test]
async fn sigterm_with_live_sessions_exits_zero() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mailgate.toml");
    let toml = Mailgate::builder(&dovecot)
        .limits("drain_timeout = \"1s\"")
        .toml();
    std::fs::write(&config, toml).expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mailgate");
    let _guard = KillOnDrop(child.id());
    let stderr = child.stderr.take().expect("stderr");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = wait_for(&mut lines, "listener=imap-plain").await;
    let addr: std::net::SocketAddr = listening
        .rsplit("addr=")
        .next()
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening:?}"));
    let mut imap = TcpLineClient::connect(addr).await;
    imap.read_line().await;
    assert!(
        imap.command("a LOGIN alice@example.com alice-secret")
            .await
            .starts_with("a OK")
    );

    // SAFETY: plain FFI call sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let bye = imap.read_line().await;
    assert_eq!(bye, "* BYE [UNAVAILABLE] Server shutting down");
    crate::reload::exits_cleanly(child).await;
}
