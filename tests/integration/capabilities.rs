//! What the downstream is told the upstream can do (issue 9 items 9 and 10): the pre-login list
//! carries the upstream's own capabilities (learnt by a probe at startup and by every login),
//! never one the upstream lacks (`LITERAL+` before all), and the login's `OK` carries the
//! upstream's post-login list even when the upstream's own `OK` did not.

use std::time::Duration;

use crate::dovecot::Dovecot;
use crate::fake;
use crate::mailgate::{Mailgate, UpstreamSpec};
use crate::util::{TcpLineClient, assert_success, json_output, run_python};

/// POP3 `CAPA` before login carries the upstream's own capabilities too (Dovecot: TOP, UIDL),
/// learnt by the probe over STLS, with mailgate's SASL list and none of Dovecot's.
#[tokio::test]
async fn pop3_capa_lists_the_upstreams_capabilities() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let learnt = learnt(&mailgate, "up-pop3").await;
    assert!(learnt.iter().any(|c| c == "UIDL"), "{learnt:?}");
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    pop3.send_line("CAPA").await;
    let ok = pop3.read_line().await;
    assert!(ok.starts_with("+OK"), "{ok}");
    let lines = pop3.read_multiline().await;
    for capability in [
        "TOP",
        "UIDL",
        "USER",
        "SASL PLAIN LOGIN XOAUTH2 OAUTHBEARER",
    ] {
        assert!(
            lines.iter().any(|l| l == capability),
            "{capability}: {lines:?}"
        );
    }
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("SASL")).count(),
        1,
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("Dovecot")), "{lines:?}");
}

/// How long the startup probe may take to learn an upstream's list.
const LEARN: Duration = Duration::from_secs(10);

/// Readiness: waits (bounded) until mailgate's connector for `upstream` has learnt a list.
async fn learnt(mailgate: &Mailgate, upstream: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + LEARN;
    loop {
        let generation = mailgate.reloader.shared().current();
        let caps = generation
            .connectors
            .get(upstream)
            .map(|c| c.capabilities().to_vec())
            .unwrap_or_default();
        if !caps.is_empty() {
            return caps;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{upstream}: no capabilities learnt within {LEARN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// imaplib keeps the capabilities it read before login; its `enable()` refuses unless `ENABLE`
/// was among them. Through mailgate in front of Dovecot the greeting now lists what Dovecot
/// offers (IDLE, ENABLE, LOGIN-REFERRALS, LITERAL+), so `enable('UTF8=ACCEPT')` works.
#[tokio::test]
async fn imaplib_enable_works_and_the_greeting_lists_the_upstreams_capabilities() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let learnt = learnt(&mailgate, "up-imap").await;
    assert!(learnt.iter().any(|c| c == "IDLE"), "{learnt:?}");

    let mut raw = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    let greeting = raw.read_line().await;
    for capability in [
        "IDLE",
        "ENABLE",
        "LOGIN-REFERRALS",
        "LITERAL+",
        "AUTH=PLAIN",
    ] {
        assert!(
            greeting.split([' ', ']']).any(|c| c == capability),
            "{capability} missing: {greeting}"
        );
    }
    // Mailgate's own pre-login business is listed once, as mailgate's.
    assert_eq!(greeting.matches(" ID ").count(), 1, "{greeting}");
    assert_eq!(greeting.matches("SASL-IR").count(), 1, "{greeting}");

    let alice = dovecot.alice().clone();
    let port = mailgate.addr("imaps").port().to_string();
    let ca = Mailgate::ca_pem().display().to_string();
    let out = run_python(
        "imap_client.py",
        &[
            "--port",
            &port,
            "--tls",
            "implicit",
            "--cafile",
            &ca,
            "--servername",
            "localhost",
            "--user",
            &alice.name,
            "--password",
            &alice.password,
            "--mode",
            "enable",
            "--enable",
            "UTF8=ACCEPT",
        ],
    )
    .await;
    assert_success(&out);
    let json = json_output(&out);
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["enable"], "OK", "{json}");
    let caps: Vec<&str> = json["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(caps.contains(&"IDLE") && caps.contains(&"ENABLE"), "{json}");
}

/// Courier-IMAP answers LOGIN with a bare `OK LOGIN Ok.` and has no LITERAL+. A client that
/// believes mailgate's pre-login list sends `{n+}` literals after login that Courier runs line
/// by line as commands. mailgate must not list LITERAL+ before login, and must put Courier's
/// post-login list into the login's OK (asking with CAPABILITY, as Dovecot's proxy does).
///
/// Hand-written fake (fake.rs) behaving as Courier does: Courier's and Dovecot's Debian
/// packages conflict, so a real Courier cannot run beside the harness Dovecot.
#[tokio::test]
async fn courier_like_upstream_gets_its_post_login_capabilities_to_the_client() {
    const PRE: &str = "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT \
                       THREAD=REFERENCES SORT QUOTA IDLE AUTH=PLAIN";
    const POST: &str = "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT \
                        THREAD=REFERENCES SORT QUOTA IDLE ACL ACL2=UNION";
    // Every connection (the startup probe's included) runs this script. The probe reads the
    // greeting and sends `mg1 LOGOUT`; a login sends `mg1 LOGIN ...` then `mg2 CAPABILITY`.
    let courier = fake::upstream()
        .greet(format!("* OK [CAPABILITY {PRE}] Courier-IMAP ready.\r\n").as_bytes())
        .answer_tagged("OK LOGIN Ok.")
        .answer(format!("* CAPABILITY {POST}\r\nmg2 OK CAPABILITY completed\r\n").as_bytes())
        .answer_tagged("OK LOGOUT completed")
        .run()
        .await;
    let plain = |addr: std::net::SocketAddr| UpstreamSpec {
        addresses: vec![addr.to_string()],
        tls: "none",
        ca_file: Mailgate::ca_pem(),
    };
    let unused = fake::upstream().run().await;
    let mailgate = Mailgate::builder_for(plain(courier.addr), plain(unused.addr))
        .start()
        .await;
    learnt(&mailgate, "up-imap").await;

    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    let greeting = imap.read_line().await;
    assert!(!greeting.contains("LITERAL"), "{greeting}");
    assert!(
        greeting.contains(" UIDPLUS ") && greeting.contains(" IDLE "),
        "{greeting}"
    );
    let capability = imap.command("a CAPABILITY").await;
    assert!(!capability.contains("LITERAL"), "{capability}");
    imap.read_line().await; // a OK

    let ok = imap.command("b LOGIN alice@example.com secret").await;
    assert_eq!(
        ok.trim_end(),
        format!("b OK [CAPABILITY {POST}] LOGIN Ok."),
        "the login OK must carry the upstream's post-login list"
    );
    assert!(
        courier.seen().iter().any(|l| l == "mg2 CAPABILITY"),
        "{:?}",
        courier.seen()
    );
    // The session is spliced: the client's next command reaches Courier.
    let bye = imap.command("c LOGOUT").await;
    assert_eq!(bye.trim_end(), "c OK LOGOUT completed");
}

/// A reload probes again: after the IMAP upstream changes to another server, the greeting
/// lists the new server's capabilities, not the old one's.
///
/// Hand-written fakes (fake.rs): two upstreams with different capability lists on demand.
#[tokio::test]
async fn a_reload_learns_the_new_upstreams_capabilities() {
    let greeting = |extra: &str| {
        format!("* OK [CAPABILITY IMAP4rev1 {extra} AUTH=PLAIN] fake ready\r\n").into_bytes()
    };
    let first = fake::upstream().greet(&greeting("X-FIRST")).run().await;
    let second = fake::upstream().greet(&greeting("X-SECOND")).run().await;
    let pop3 = fake::upstream().run().await;
    let plain = |addr: std::net::SocketAddr| UpstreamSpec {
        addresses: vec![addr.to_string()],
        tls: "none",
        ca_file: Mailgate::ca_pem(),
    };
    let mailgate = Mailgate::builder_for(plain(first.addr), plain(pop3.addr))
        .start()
        .await;
    assert!(
        learnt(&mailgate, "up-imap")
            .await
            .contains(&"X-FIRST".to_owned())
    );

    let toml = Mailgate::builder_for(plain(second.addr), plain(pop3.addr)).toml();
    let config = mailgate::config::Config::from_toml(
        &toml,
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
    )
    .expect("config");
    mailgate.reloader.reload(config).expect("reload");
    let deadline = tokio::time::Instant::now() + LEARN;
    while !learnt(&mailgate, "up-imap")
        .await
        .contains(&"X-SECOND".to_owned())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reload's probe learnt nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    let line = imap.read_line().await;
    assert!(line.contains(" X-SECOND "), "{line}");
    assert!(!line.contains("X-FIRST"), "{line}");
}
