//! Reloads: an edited config file applies to the next login without a restart, an invalid one
//! is rejected while the old one keeps serving, and SIGHUP re-reads certificates.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use mailgate::config::reload::Outcome;

use crate::dovecot::Dovecot;
use crate::mailgate::{Mailgate, UpstreamSpec};
use crate::util::{TcpLineClient, free_port};

async fn imap_login(mailgate_addr: std::net::SocketAddr) -> String {
    let mut imap = TcpLineClient::connect(mailgate_addr).await;
    imap.read_line().await;
    imap.command("a LOGIN alice@example.com alice-secret").await
}

async fn next_outcome(rx: &mut tokio::sync::mpsc::Receiver<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a reload within 10 s of the edit")
        .expect("watcher running")
}

/// Replace the file the way editors and ConfigMaps do: write aside, rename over.
fn replace_file(path: &std::path::Path, text: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text).expect("write");
    std::fs::rename(&aside, path).expect("rename");
}

#[tokio::test]
async fn edited_config_applies_to_the_next_login_and_invalid_one_is_rejected() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mailgate.toml");
    let dead = UpstreamSpec {
        addresses: vec![format!("127.0.0.1:{}", free_port())],
        tls: "implicit",
        ca_file: dovecot.ca_pem.clone(),
    };
    let (mailgate, mut outcomes) = Mailgate::builder(&dovecot)
        .imap_upstream(dead)
        .start_watching(&path)
        .await;
    let addr = mailgate.addr("imap-plain");
    assert!(imap_login(addr).await.starts_with("a NO [UNAVAILABLE]"));

    // A connection opened before the reload logs in under the new config.
    let mut early = TcpLineClient::connect(addr).await;
    early.read_line().await;

    replace_file(&path, &Mailgate::builder(&dovecot).toml());
    assert!(matches!(
        next_outcome(&mut outcomes).await,
        Outcome::Applied { generation: 2 }
    ));
    assert!(imap_login(addr).await.starts_with("a OK"));
    assert!(
        early
            .command("b LOGIN alice@example.com alice-secret")
            .await
            .starts_with("b OK")
    );

    replace_file(&path, "[[listener]]\nname = \"broken\"\nnot toml at all");
    match next_outcome(&mut outcomes).await {
        Outcome::Rejected { error } => assert!(!error.is_empty()),
        other => panic!("an invalid config must be rejected: {other:?}"),
    }
    assert!(
        imap_login(addr).await.starts_with("a OK"),
        "the old config keeps serving"
    );
}

#[tokio::test]
async fn sighup_rereads_certificates() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // The upstream CA file first holds the wrong CA (mailgate's), so Dovecot is not trusted.
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::copy(Mailgate::ca_pem(), &ca).expect("copy ca");
    let spec = UpstreamSpec {
        addresses: vec![dovecot.imaps_addr.to_string()],
        tls: "implicit",
        ca_file: ca.clone(),
    };
    let config = dir.path().join("mailgate.toml");
    std::fs::write(
        &config,
        Mailgate::builder(&dovecot).imap_upstream(spec).toml(),
    )
    .expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mailgate");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let _guard = KillOnDrop(child.id());
    let listening = wait_for(&mut lines, "listener=imap-plain").await;
    let addr: std::net::SocketAddr = listening
        .rsplit("addr=")
        .next()
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening:?}"));
    assert!(imap_login(addr).await.starts_with("a NO [UNAVAILABLE]"));

    std::fs::copy(&dovecot.ca_pem, &ca).expect("swap ca");
    // SAFETY: plain FFI call sending a signal to our own child process.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    assert_eq!(rc, 0);
    wait_for(&mut lines, "configuration reloaded").await;
    let reply = imap_login(addr).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(reply.starts_with("a OK"), "{reply}");
}

/// Kills the mailgate child if the test fails before it does.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain FFI call; at worst the pid has exited and this is a no-op.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Waits (bounded: 15 s) for a `mailgate run` child that was sent SIGTERM, and asserts it
/// exited 0. On timeout the test fails and its KillOnDrop ends the child (and so this wait).
pub async fn exits_cleanly(mut child: std::process::Child) {
    let status = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("mailgate exits within 15 s of SIGTERM")
    .expect("join")
    .expect("wait");
    assert!(status.success(), "{status:?}");
}

/// The first log line containing `needle` (bounded: 15 s).
pub async fn wait_for(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    needle: &str,
) -> String {
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = lines.recv().await {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("mailgate exited before logging {needle:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in mailgate's log within 15 s"))
}

#[tokio::test]
async fn a_reload_that_drops_a_listeners_upstream_fails_its_logins_temporarily() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let addr = mailgate.addr("imap-plain");
    assert!(imap_login(addr).await.starts_with("a OK"));
    // The new config keeps only the POP3 side; the bound IMAP listener stays (listener changes
    // need a restart) but its upstream is gone: a temporary failure, never a login elsewhere.
    let pop3_only = format!(
        "[[listener]]\nname = \"pop3-plain\"\nprotocol = \"pop3\"\nbind = \"127.0.0.1:0\"\n\
         tls = \"none\"\nupstream = \"up-pop3\"\n\n[[upstream]]\nname = \"up-pop3\"\n\
         protocol = \"pop3\"\naddresses = [\"{}\"]\ntls = \"none\"\n",
        dovecot.pop3_addr
    );
    let config = mailgate::config::Config::from_toml(&pop3_only, std::path::Path::new("/"))
        .expect("valid config");
    mailgate.reloader.reload(config).expect("reload");
    let reply = imap_login(addr).await;
    assert!(reply.starts_with("a NO [UNAVAILABLE]"), "{reply}");
}
