//! The policy on the wire, through mailgate and a real Dovecot with real clients: per-OU
//! protocol switches, the IMAP client allowlist refusing password logins, no account
//! enumeration by default, instant reload, revocation of live sessions.

use std::time::Duration;

use mailgate::config::reload::Outcome;

use crate::dovecot::{Dovecot, User};
use crate::mailgate::Mailgate;
use crate::util::{TcpLineClient, assert_success, json_output, run_python, spawn_python};

/// alice (root OU: IMAP with passwords, no POP), bob (/Sales: POP with passwords, IMAP only for
/// the `mail-app` OAuth client), carol (/Sales/Interns: IMAP off), erin (suspended).
const DIRECTORY: &str = r#"
internal_domains = ["example.com"]
[[ou]]
path = "/"
pop = false
imap = true
imap_clients = "all"
password_logins = true
[[ou]]
path = "/Sales"
pop = true
imap_clients = "allowlist"
imap_allowed_client_ids = ["mail-app"]
[[ou]]
path = "/Sales/Interns"
imap = false
[[user]]
email = "alice@example.com"
ou = "/"
[[user]]
email = "bob@example.com"
ou = "/Sales"
[[user]]
email = "carol@example.com"
ou = "/Sales/Interns"
[[user]]
email = "erin@example.com"
ou = "/"
suspended = true
"#;

fn dovecot() -> Dovecot {
    Dovecot::builder()
        .users(
            ["alice", "bob", "carol", "erin"]
                .iter()
                .map(|u| User::new(&format!("{u}@example.com"), &format!("{u}-secret")))
                .collect(),
        )
        .start()
}

async fn imap_login(mailgate: &Mailgate, user: &str, password: &str) -> String {
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    imap.command(&format!("a LOGIN {user} {password}")).await
}

async fn pop3_login(mailgate: &Mailgate, user: &str, password: &str) -> String {
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    pop3.command(&format!("USER {user}")).await;
    pop3.command(&format!("PASS {password}")).await
}

/// The reply text without its `(ref …)`, which differs per session.
fn without_ref(reply: &str) -> &str {
    reply.split(" (ref ").next().unwrap_or(reply)
}

#[tokio::test]
async fn sales_user_pop_allowed_imap_password_refused_intern_refused() {
    let dovecot = dovecot();
    let mailgate = Mailgate::builder(&dovecot)
        .policy(
            DIRECTORY,
            "contact = \"it-help@example.com\"\ndisclose_reasons = \"always\"",
        )
        .start()
        .await;
    // bob: POP with a password through real poplib, mail read.
    let out = run_python(
        "pop3_client.py",
        &[
            "--port",
            &mailgate.addr("pop3-plain").port().to_string(),
            "--tls",
            "none",
            "--user",
            "bob@example.com",
            "--password",
            "bob-secret",
        ],
    )
    .await;
    assert_success(&out);
    assert_eq!(json_output(&out)["count"], 5);
    // bob: IMAP with a password is refused: Sales allows only an OAuth client.
    let reply = imap_login(&mailgate, "bob@example.com", "bob-secret").await;
    assert!(reply.starts_with("a NO [AUTHORIZATIONFAILED]"), "{reply}");
    assert!(
        reply.contains("it-help@example.com") && reply.contains("(ref "),
        "{reply}"
    );
    // carol: IMAP is off for interns.
    let reply = imap_login(&mailgate, "carol@example.com", "carol-secret").await;
    assert!(reply.starts_with("a NO [AUTHORIZATIONFAILED]"), "{reply}");
    assert!(reply.contains("IMAP"), "{reply}");
    // alice: POP is off at the root OU.
    let reply = pop3_login(&mailgate, "alice@example.com", "alice-secret").await;
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    // alice: IMAP with a password works.
    assert!(
        imap_login(&mailgate, "alice@example.com", "alice-secret")
            .await
            .starts_with("a OK")
    );
    // Refused logins never reached Dovecot.
    let log = dovecot.log();
    assert!(
        !log.contains("user=<carol") && !log.contains("imap(bob"),
        "{log}"
    );
}

#[tokio::test]
async fn unknown_suspended_disabled_and_wrong_password_look_the_same_by_default() {
    let dovecot = dovecot();
    let mailgate = Mailgate::builder(&dovecot)
        .policy(DIRECTORY, "")
        .start()
        .await;
    let replies = [
        imap_login(&mailgate, "nobody@example.com", "x").await,
        imap_login(&mailgate, "erin@example.com", "erin-secret").await,
        imap_login(&mailgate, "carol@example.com", "carol-secret").await,
        imap_login(&mailgate, "bob@example.com", "bob-secret").await,
        imap_login(&mailgate, "alice@example.com", "wrong").await,
    ];
    for reply in &replies {
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
    let first = without_ref(&replies[0]);
    for reply in &replies {
        assert_eq!(
            without_ref(reply),
            first,
            "a stranger can tell these apart: {replies:#?}"
        );
    }
    let pops = [
        pop3_login(&mailgate, "nobody@example.com", "x").await,
        pop3_login(&mailgate, "alice@example.com", "alice-secret").await,
        pop3_login(&mailgate, "bob@example.com", "wrong").await,
    ];
    for reply in &pops {
        assert_eq!(without_ref(reply), without_ref(&pops[0]), "{pops:#?}");
    }
}

#[tokio::test]
async fn reload_flips_a_decision_and_an_invalid_reload_keeps_the_old_policy() {
    let dovecot = dovecot();
    let mut builder = Mailgate::builder(&dovecot);
    let dir = builder.files();
    let directory = dir.join("dir.toml");
    std::fs::write(&directory, DIRECTORY).expect("write");
    let config = dir.join("mailgate.toml");
    let builder = builder.extra(&format!(
        "[policy]\ndirectory = \"{}\"\n",
        directory.display()
    ));
    let (mailgate, mut outcomes) = builder.start_watching(&config).await;
    assert!(
        pop3_login(&mailgate, "alice@example.com", "alice-secret")
            .await
            .starts_with("-ERR")
    );

    // POP is switched on at the root OU: only the directory file changes, and it is watched.
    let aside = dir.join("dir.tmp");
    let pop_on = DIRECTORY.replacen("pop = false", "pop = true", 1);
    std::fs::write(&aside, pop_on).expect("write");
    std::fs::rename(&aside, &directory).expect("rename");
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcomes.recv()).await;
    assert!(
        matches!(outcome, Ok(Some(Outcome::Applied { .. }))),
        "{outcome:?}"
    );
    let reply = pop3_login(&mailgate, "alice@example.com", "alice-secret").await;
    assert!(reply.starts_with("+OK"), "{reply}");

    // A broken directory is rejected; alice keeps POP.
    std::fs::write(&aside, "[[ou]]\npath = \"/\"\n").expect("write");
    std::fs::rename(&aside, &directory).expect("rename");
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcomes.recv()).await;
    assert!(
        matches!(outcome, Ok(Some(Outcome::Rejected { .. }))),
        "{outcome:?}"
    );
    let reply = pop3_login(&mailgate, "alice@example.com", "alice-secret").await;
    assert!(reply.starts_with("+OK"), "{reply}");
}

#[tokio::test]
async fn revoke_on_reload_cuts_a_live_idle_session() {
    let dovecot = dovecot();
    let mailgate = Mailgate::builder(&dovecot)
        .policy(DIRECTORY, "revoke_on_reload = true")
        .start()
        .await;
    // alice idles through real imaplib.
    let args: Vec<String> = [
        "--port",
        &mailgate.addr("imap-plain").port().to_string(),
        "--tls",
        "none",
        "--user",
        "alice@example.com",
        "--password",
        "alice-secret",
        "--mode",
        "idle",
        "--idle-timeout",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut client = spawn_python("imap_client.py", &args);
    assert_eq!(
        client.next_line(Duration::from_secs(30)).await.as_deref(),
        Some("IDLING")
    );
    // bob stays logged in over POP, which the new policy still allows.
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    pop3.command("USER bob@example.com").await;
    assert!(pop3.command("PASS bob-secret").await.starts_with("+OK"));

    // The root OU turns IMAP off.
    let mut config = mailgate.reloader.shared().current().config.as_ref().clone();
    let changed = DIRECTORY.replace("pop = false\nimap = true", "pop = false\nimap = false");
    config.directory = std::sync::Arc::new(
        mailgate::directory::Directory::from_toml(&changed).expect("directory"),
    );
    mailgate.reloader.reload(config).expect("reload");

    // The IDLE session ends with a BYE the client sees; the POP session goes on.
    let out = client.finish(Duration::from_secs(30)).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("BYE") || text.contains("revoked"), "{text}");
    let stat = pop3.command("STAT").await;
    assert!(stat.starts_with("+OK"), "{stat}");
}
