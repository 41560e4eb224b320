//! Issue 13 on the wire: a report-only policy (`enforce = false`) lets a login it would refuse
//! through to a real Dovecot and says `would_deny` in the audit and the metrics; routing sends
//! each OU's users to their own Dovecot, following that upstream's TLS settings, as each
//! Dovecot's log shows. Real Dovecots, real imaplib / poplib, every wait bounded.

use serde_json::Value;

use crate::dovecot::{Dovecot, User};
use crate::mailgate::Mailgate;
use crate::ops_e2e::{audit_to, await_records};
use crate::util::{assert_success, json_output, run_python};

/// `/Pilot` turns IMAP off in report-only mode; `/Strict` turns it off for real.
const ROLLOUT: &str = r#"
internal_domains = ["example.com"]
[[ou]]
path = "/"
pop = true
imap = true
imap_clients = "all"
password_logins = true
[[ou]]
path = "/Pilot"
imap = false
enforce = false
[[ou]]
path = "/Pilot/Team"
[[ou]]
path = "/Strict"
imap = false
[[user]]
email = "carol@example.com"
ou = "/Pilot/Team"
[[user]]
email = "dave@example.com"
ou = "/Strict"
"#;

fn users(names: &[&str]) -> Vec<User> {
    names
        .iter()
        .map(|u| User::new(&format!("{u}@example.com"), &format!("{u}-secret")))
        .collect()
}

/// imaplib over plaintext loopback to `port` as `user`; `fetch` reads every message.
async fn imap(port: u16, user: &str, expect_fail: bool) -> Value {
    let password = format!("{}-secret", user.split('@').next().unwrap_or(""));
    let port = port.to_string();
    let mut args = vec![
        "--port",
        &port,
        "--tls",
        "none",
        "--user",
        user,
        "--password",
        &password,
    ];
    if expect_fail {
        args.push("--expect-fail");
    }
    let out = run_python("imap_client.py", &args).await;
    assert_success(&out);
    json_output(&out)
}

fn auth_of<'a>(records: &'a [Value], user: &str) -> Option<&'a Value> {
    records
        .iter()
        .find(|r| r["event"] == "auth" && r["user"] == user)
}

#[tokio::test]
async fn report_only_login_reads_mail_and_the_audit_says_would_deny() {
    let dovecot = Dovecot::builder().users(users(&["carol", "dave"])).start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let services = audit_to(&path);
    let audit = services.audit.clone();
    let metrics = services.metrics.clone();
    let mailgate = Mailgate::builder(&dovecot)
        .policy(ROLLOUT, "")
        .start_with(services)
        .await;
    let port = mailgate.addr("imap-plain").port();

    // carol: IMAP is off for /Pilot, report only: the login goes through and reads her mail.
    let carol = imap(port, "carol@example.com", false).await;
    assert_eq!(carol["count"], 5, "{carol}");
    // dave: the same setting, enforced: refused, and Dovecot never sees him.
    let dave = imap(port, "dave@example.com", true).await;
    assert_eq!(dave["refused"], true, "{dave}");

    let all = await_records(&audit, &path, |r| {
        auth_of(r, "carol@example.com").is_some() && auth_of(r, "dave@example.com").is_some()
    })
    .await;
    let carol = auth_of(&all, "carol@example.com").expect("carol's auth");
    assert_eq!(carol["decision"], "would_deny", "{carol}");
    assert_eq!(carol["reason"], "imap_disabled", "{carol}");
    assert_eq!(carol["policy_source"], "ou:/Pilot", "{carol}");
    assert_eq!(carol["upstream"], "up-imap", "{carol}");
    let dave = auth_of(&all, "dave@example.com").expect("dave's auth");
    assert_eq!(dave["decision"], "deny", "{dave}");
    assert_eq!(dave["reason"], "imap_disabled", "{dave}");

    let text = metrics.encode();
    assert!(
        text.contains(
            "mailgate_logins_total{protocol=\"imap\",decision=\"would_deny\",reason=\"imap_disabled\"} 1"
        ),
        "{text}"
    );
    let log = dovecot.log();
    assert!(log.contains("user=<carol@example.com>"), "{log}");
    assert!(!log.contains("user=<dave@example.com>"), "{log}");
}

/// Users of `/Old` stay on the listener's Dovecot; users of `/New` land on the other one,
/// reached over STARTTLS (its `[[upstream]]`'s setting) while the listener's goes over
/// implicit TLS; for POP3 too.
#[tokio::test]
async fn routing_sends_each_ou_to_its_own_dovecot() {
    // Each user exists on one Dovecot only, so a login on the wrong one would fail.
    let old = Dovecot::builder().users(users(&["olga"])).start();
    let new = Dovecot::builder().users(users(&["nina"])).start();
    let directory = r#"
internal_domains = ["example.com"]
[[ou]]
path = "/"
pop = true
imap = true
imap_clients = "all"
password_logins = true
[[ou]]
path = "/Old"
[[ou]]
path = "/New"
upstream = { imap = "new-imap", pop3 = "new-pop3" }
[[user]]
email = "olga@example.com"
ou = "/Old"
[[user]]
email = "nina@example.com"
ou = "/New"
"#;
    let upstreams = format!(
        "[[upstream]]\nname = \"new-imap\"\nprotocol = \"imap\"\naddresses = [\"{}\"]\n\
         tls = \"starttls\"\nserver_name = \"localhost\"\nca_file = \"{}\"\n\n\
         [[upstream]]\nname = \"new-pop3\"\nprotocol = \"pop3\"\naddresses = [\"{}\"]\n\
         tls = \"implicit\"\nserver_name = \"localhost\"\nca_file = \"{}\"\n",
        new.imap_addr,
        new.ca_pem.display(),
        new.pop3s_addr,
        new.ca_pem.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let services = audit_to(&path);
    let audit = services.audit.clone();
    let mailgate = Mailgate::builder(&old)
        .extra(&upstreams)
        .policy(directory, "")
        .start_with(services)
        .await;
    let imap_port = mailgate.addr("imap-plain").port();
    for user in ["olga@example.com", "nina@example.com"] {
        let out = imap(imap_port, user, false).await;
        assert_eq!(out["count"], 5, "{user}: {out}");
        let out = run_python(
            "pop3_client.py",
            &[
                "--port",
                &mailgate.addr("pop3-plain").port().to_string(),
                "--tls",
                "none",
                "--user",
                user,
                "--password",
                &format!("{}-secret", user.split('@').next().unwrap_or("")),
            ],
        )
        .await;
        assert_success(&out);
        assert_eq!(json_output(&out)["count"], 5, "{user}");
    }
    let (old_log, new_log) = (old.log(), new.log());
    assert!(old_log.contains("user=<olga@example.com>"), "{old_log}");
    assert!(!old_log.contains("nina@example.com"), "{old_log}");
    assert!(new_log.contains("user=<nina@example.com>"), "{new_log}");
    assert!(!new_log.contains("olga@example.com"), "{new_log}");
    // The new Dovecot saw the IMAP login on its plain port protected by TLS: mailgate said
    // STARTTLS, as new-imap's `tls = "starttls"` asks (up-imap is implicit TLS).
    assert!(
        new_log.lines().any(
            |l| l.contains("imap-login: Info: Login: user=<nina@example.com>")
                && l.contains(", TLS,")
        ),
        "{new_log}"
    );

    let all = await_records(&audit, &path, |r| {
        r.iter().filter(|r| r["event"] == "auth").count() >= 4
    })
    .await;
    let upstreams: Vec<(String, String)> = all
        .iter()
        .filter(|r| r["event"] == "auth")
        .map(|r| {
            (
                r["user"].as_str().unwrap_or("").to_owned(),
                r["upstream"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for (user, upstream) in &upstreams {
        let want = match (user.as_str(), upstream.ends_with("pop3")) {
            ("olga@example.com", false) => "up-imap",
            ("olga@example.com", true) => "up-pop3",
            ("nina@example.com", false) => "new-imap",
            _ => "new-pop3",
        };
        assert_eq!(upstream, want, "{upstreams:?}");
    }
}

/// A reload judges "added" against the directory in force: a member that breaks a group's
/// restriction and was not in it is refused with its key path, and the old policy keeps
/// serving; once a member is in, adding the restriction later only reports it.
#[tokio::test]
async fn a_reload_refuses_an_added_offender_and_reports_one_already_there() {
    let dovecot = Dovecot::builder().users(users(&["alice"])).start();
    let directory = |members: &str, restricted: bool| {
        format!(
            "internal_domains = [\"example.com\"]\n[[ou]]\npath = \"/\"\npop = true\nimap = true\n\
             imap_clients = \"all\"\npassword_logins = true\n\
             [[user]]\nemail = \"alice@example.com\"\nou = \"/\"\n\
             [[user]]\nemail = \"pat@contractor.example\"\nou = \"/\"\n\
             [[group]]\nemail = \"staff@example.com\"\nmembers = [{members}]\n{}",
            if restricted {
                "internal_only = true\n"
            } else {
                ""
            }
        )
    };
    let mailgate = Mailgate::builder(&dovecot)
        .policy(&directory("\"alice@example.com\"", true), "")
        .start()
        .await;
    let reload = |text: String| {
        let mut config = mailgate.reloader.shared().current().config.as_ref().clone();
        config.directory = std::sync::Arc::new(
            mailgate::directory::Directory::from_toml(&text).expect("directory loads"),
        );
        mailgate.reloader.reload(config)
    };
    let both = "\"alice@example.com\", \"pat@contractor.example\"";
    // Added to a restricted group: refused, at its key path.
    let refused = reload(directory(both, true)).expect_err("added offender refused");
    let text = refused.to_string();
    assert!(text.contains("group[0].members[1]"), "{text}");
    assert!(text.contains("pat@contractor.example"), "{text}");
    let current = mailgate.reloader.shared().current();
    assert_eq!(
        current
            .config
            .directory
            .group_by_email("staff@example.com")
            .map(|g| g.members.len()),
        Some(1),
        "the old directory keeps serving"
    );
    // Added while the group was open, then the restriction comes: reported, not refused.
    reload(directory(both, false)).expect("open group takes anyone");
    reload(directory(both, true)).expect("already there: reported");
    let current = mailgate.reloader.shared().current();
    let staff = current
        .config
        .directory
        .group_by_email("staff@example.com")
        .expect("group");
    assert_eq!(staff.compliance.state.as_str(), "non-compliant");
    assert_eq!(
        &*staff.compliance.offenders[0].email,
        "pat@contractor.example"
    );
}
