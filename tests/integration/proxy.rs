//! Through mailgate, against a real Dovecot, with real clients (curl, Python imaplib/poplib) and
//! raw line clients: every wire exchange of the login, the relay of the upstream's answer, and
//! the splice after it.

use std::time::Duration;

use crate::dovecot::Dovecot;
use crate::fixtures;
use crate::mailgate::Mailgate;
use crate::util::{
    MessageDigest, TcpLineClient, TlsLineClient, assert_same_messages, assert_success, json_output,
    run_curl, run_python, spawn_python,
};

/// Arguments for the Python clients, talking to mailgate (verified against the repo test CA).
fn client_args(port: u16, tls: &str, user: &str, password: &str) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--tls",
        tls,
        "--cafile",
        &Mailgate::ca_pem().display().to_string(),
        "--servername",
        "localhost",
        "--user",
        user,
        "--password",
        password,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn python_json(script: &str, args: &[String]) -> serde_json::Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_python(script, &args).await;
    assert_success(&out);
    json_output(&out)
}

fn ca() -> String {
    Mailgate::ca_pem().display().to_string()
}

#[tokio::test]
async fn curl_imap_login_and_authenticate_plain_fetch_messages() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let alice = dovecot.alice().clone();
    let expected = dovecot.messages(&alice.name);
    let user = format!("{}:{}", alice.name, alice.password);
    let port = mailgate.addr("imaps").port();
    // AUTH=LOGIN makes curl use SASL LOGIN (with the user name as initial response); the
    // default picks AUTHENTICATE PLAIN with SASL-IR. (The LOGIN command: Python tests below.)
    for (index, options) in [(1usize, Some("AUTH=LOGIN")), (5, None)] {
        let url = format!("imaps://localhost:{port}/INBOX;MAILINDEX={index}");
        let mut args = vec![
            "--cacert".to_string(),
            ca(),
            "--user".into(),
            user.clone(),
            url,
        ];
        if let Some(o) = options {
            args.extend(["--login-options".into(), o.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_curl(&args).await;
        assert_success(&out);
        assert_eq!(
            MessageDigest::of(&out.stdout),
            MessageDigest::of(&expected[index - 1])
        );
    }
    let log = dovecot.log();
    assert!(
        log.contains("method=PLAIN") && log.contains("method=LOGIN"),
        "{log}"
    );
}

#[tokio::test]
async fn curl_imap_starttls_and_pop3_stls() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let bob = dovecot.user("bob@example.com").clone();
    let expected = dovecot.messages(&bob.name);
    let user = format!("{}:{}", bob.name, bob.password);
    let imap = format!(
        "imap://localhost:{}/INBOX;MAILINDEX=2",
        mailgate.addr("imap").port()
    );
    let out = run_curl(&["--ssl-reqd", "--cacert", &ca(), "--user", &user, &imap]).await;
    assert_success(&out);
    assert_eq!(
        MessageDigest::of(&out.stdout),
        MessageDigest::of(&expected[1])
    );
    let pop3 = format!("pop3://localhost:{}/3", mailgate.addr("pop3").port());
    let out = run_curl(&["--ssl-reqd", "--cacert", &ca(), "--user", &user, &pop3]).await;
    assert_success(&out);
    assert_eq!(
        MessageDigest::of(&out.stdout),
        MessageDigest::of(&expected[2])
    );
}

#[tokio::test]
async fn curl_pop3s_retr_and_wrong_password() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let alice = dovecot.alice().clone();
    let expected = dovecot.messages(&alice.name);
    let user = format!("{}:{}", alice.name, alice.password);
    let port = mailgate.addr("pop3s").port();
    for index in [1usize, 4] {
        let url = format!("pop3s://localhost:{port}/{index}");
        let out = run_curl(&["--cacert", &ca(), "--user", &user, &url]).await;
        assert_success(&out);
        assert_eq!(
            MessageDigest::of(&out.stdout),
            MessageDigest::of(&expected[index - 1])
        );
    }
    let url = format!("pop3s://localhost:{port}/1");
    let out = run_curl(&["--cacert", &ca(), "--user", "alice@example.com:wrong", &url]).await;
    // curl: (67) Login denied
    assert_eq!(out.status.code(), Some(67), "{out:?}");
}

#[tokio::test]
async fn python_imap_every_tls_mode_and_mechanism_matches_direct() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let alice = dovecot.alice().clone();
    let expected = dovecot.messages(&alice.name);
    let cases = [
        ("imaps", "implicit", "login", "body-peek"),
        ("imaps", "implicit", "plain-ir", "rfc822"),
        ("imap", "starttls", "plain", "rfc822"),
        ("imap", "starttls", "login", "body-peek"),
        ("imap-plain", "none", "plain-ir", "body-peek"),
    ];
    for (listener, tls, auth, fetch) in cases {
        let port = mailgate.addr(listener).port();
        let mut args = client_args(port, tls, &alice.name, &alice.password);
        args.extend(["--auth".into(), auth.into(), "--fetch".into(), fetch.into()]);
        let json = python_json("imap_client.py", &args).await;
        assert_eq!(json["ok"], true, "{listener}/{auth}: {json}");
        assert_same_messages(&expected, &json);
    }
}

#[tokio::test]
async fn python_pop3_every_tls_mode_and_mechanism_matches_direct() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let bob = dovecot.user("bob@example.com").clone();
    let expected = dovecot.messages(&bob.name);
    let cases = [
        ("pop3s", "implicit", "user"),
        ("pop3s", "implicit", "plain-ir"),
        ("pop3", "stls", "plain"),
        ("pop3", "stls", "user"),
        ("pop3-plain", "none", "plain"),
    ];
    for (listener, tls, auth) in cases {
        let port = mailgate.addr(listener).port();
        let mut args = client_args(port, tls, &bob.name, &bob.password);
        args.extend(["--auth".into(), auth.into()]);
        let json = python_json("pop3_client.py", &args).await;
        assert_eq!(json["ok"], true, "{listener}/{auth}: {json}");
        assert_same_messages(&expected, &json);
    }
}

#[tokio::test]
async fn python_wrong_password_is_relayed_as_failure() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let mut args = client_args(
        mailgate.addr("imaps").port(),
        "implicit",
        "alice@example.com",
        "wrong",
    );
    args.push("--expect-fail".into());
    let json = python_json("imap_client.py", &args).await;
    assert_eq!(json["refused"], true, "{json}");
    let error = json["error"].as_str().expect("error text");
    assert!(error.contains("[AUTHENTICATIONFAILED]"), "{json}");
    assert!(
        error.contains("(ref "),
        "refusals end with the session reference: {json}"
    );

    let mut args = client_args(
        mailgate.addr("pop3").port(),
        "stls",
        "bob@example.com",
        "wrong",
    );
    args.extend(["--auth".into(), "plain".into(), "--expect-fail".into()]);
    let json = python_json("pop3_client.py", &args).await;
    assert_eq!(json["refused"], true, "{json}");
    assert!(
        json["error"]
            .as_str()
            .expect("error")
            .starts_with("-ERR [AUTH]"),
        "{json}"
    );
}

#[tokio::test]
async fn python_imap_idle_sees_delivery_through_the_splice() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let alice = dovecot.alice().clone();
    let mut args = client_args(
        mailgate.addr("imaps").port(),
        "implicit",
        &alice.name,
        &alice.password,
    );
    args.extend([
        "--mode".into(),
        "idle".into(),
        "--idle-timeout".into(),
        "20".into(),
    ]);
    let mut client = spawn_python("imap_client.py", &args);
    let first = client.next_line(Duration::from_secs(30)).await;
    assert_eq!(first.as_deref(), Some("IDLING"), "{first:?}");
    dovecot.deliver(&alice.name, &fixtures::delivered(&alice.name, 1));
    let out = client.finish(Duration::from_secs(30)).await;
    assert_success(&out);
    let json = json_output(&out);
    assert_eq!(json["exists"], 6, "{json}");
}

#[tokio::test]
async fn imap_login_reply_carries_upstream_capabilities_and_pipelined_commands_follow() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let mut c =
        TlsLineClient::connect_tls(mailgate.addr("imaps"), &Mailgate::ca_pem(), "localhost").await;
    let greeting = c.read_line().await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    // LOGIN, SELECT and FETCH in one write: the last two must reach Dovecot after the login.
    c.send(b"a LOGIN alice@example.com alice-secret\r\nb SELECT INBOX\r\nc FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\nd LOGOUT\r\n").await;
    let login = c.read_until_tagged("a").await;
    assert!(login.tagged.starts_with("a OK"), "{login:?}");
    // Dovecot's post-login capabilities (IDLE is not in mailgate's pre-auth list).
    let caps =
        std::iter::once(login.tagged.as_str()).chain(login.untagged.iter().map(String::as_str));
    assert!(caps.clone().any(|l| l.contains("IDLE")), "{login:?}");
    let select = c.read_until_tagged("b").await;
    assert!(select.tagged.starts_with("b OK"), "{select:?}");
    assert!(
        select.untagged.iter().any(|l| l == "* 5 EXISTS"),
        "{select:?}"
    );
    let fetch = c.read_until_tagged("c").await;
    assert!(fetch.tagged.starts_with("c OK"), "{fetch:?}");
    let logout = c.read_until_tagged("d").await;
    assert!(
        logout.untagged.iter().any(|l| l.starts_with("* BYE")),
        "{logout:?}"
    );
}

#[tokio::test]
async fn pop3_pipelined_commands_after_pass_reach_the_upstream() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let mut c =
        TlsLineClient::connect_tls(mailgate.addr("pop3s"), &Mailgate::ca_pem(), "localhost").await;
    assert!(c.read_line().await.starts_with("+OK"));
    c.send(b"USER bob@example.com\r\nPASS bob-secret\r\nSTAT\r\nQUIT\r\n")
        .await;
    assert!(c.read_line().await.starts_with("+OK"), "USER");
    assert!(c.read_line().await.starts_with("+OK"), "PASS");
    let stat = c.read_line().await;
    assert!(stat.starts_with("+OK 5 "), "{stat}");
    assert!(c.read_line().await.starts_with("+OK"), "QUIT");
}

#[tokio::test]
async fn login_before_starttls_is_refused_and_never_reaches_upstream() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let mut imap = TcpLineClient::connect(mailgate.addr("imap")).await;
    let greeting = imap.read_line().await;
    assert!(
        greeting.contains("LOGINDISABLED") && greeting.contains("STARTTLS"),
        "{greeting}"
    );
    assert!(!greeting.contains("AUTH="), "{greeting}");
    let reply = imap.command("a LOGIN alice@example.com alice-secret").await;
    assert!(reply.starts_with("a NO [PRIVACYREQUIRED]"), "{reply}");
    let reply = imap
        .command("b AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGFsaWNlLXNlY3JldA==")
        .await;
    assert!(reply.starts_with("b NO"), "{reply}");

    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3")).await;
    assert!(pop3.read_line().await.starts_with("+OK"));
    let reply = pop3.command("USER alice@example.com").await;
    assert!(reply.starts_with("-ERR"), "{reply}");
    let reply = pop3
        .command("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGFsaWNlLXNlY3JldA==")
        .await;
    assert!(reply.starts_with("-ERR"), "{reply}");
    assert!(
        !dovecot.log().contains("Login: user=<alice"),
        "{}",
        dovecot.log()
    );
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    // IMAP: a command injected behind STARTTLS in the same packet must never run.
    let mut imap = TcpLineClient::connect(mailgate.addr("imap")).await;
    imap.read_line().await;
    imap.send(b"a STARTTLS\r\nb CAPABILITY\r\n").await;
    assert!(imap.read_line().await.starts_with("a OK"));
    let mut imap = imap.starttls(&Mailgate::ca_pem(), "localhost").await;
    let caps = imap.imap("c", "CAPABILITY").await;
    assert!(
        caps.untagged.iter().all(|l| !l.contains("LOGINDISABLED")),
        "{caps:?}"
    );
    assert!(
        caps.untagged.iter().any(|l| l.contains("AUTH=PLAIN")),
        "{caps:?}"
    );
    assert!(
        caps.tagged.starts_with("c OK"),
        "b's answer would have come first: {caps:?}"
    );

    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3")).await;
    pop3.read_line().await;
    pop3.send(b"STLS\r\nUSER mallory\r\n").await;
    assert!(pop3.read_line().await.starts_with("+OK"));
    let mut pop3 = pop3.starttls(&Mailgate::ca_pem(), "localhost").await;
    // Were USER mallory run, PASS would now try mallory's login instead of failing.
    let reply = pop3.command("PASS whatever").await;
    assert!(reply.starts_with("-ERR"), "{reply}");
    assert!(!dovecot.log().contains("mallory"), "{}", dovecot.log());
}

#[tokio::test]
async fn oversize_line_and_literal_get_protocol_answers() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::builder(&dovecot)
        .limits("max_line = 1024\nmax_literal = 512")
        .start()
        .await;
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let reply = imap.command("a LOGIN alice@example.com {100000}").await;
    assert!(
        reply.starts_with("a BAD") || reply.starts_with("a NO"),
        "{reply}"
    );
    // The connection stays usable after a refused synchronising literal.
    assert!(imap.command("b NOOP").await.starts_with("b OK"));
    let long = format!("c LOGIN {} x", "a".repeat(4000));
    imap.send_line(&long).await;
    let reply = imap.read_line().await;
    assert!(reply.starts_with("c BAD"), "{reply}");
    let bye = imap.read_line().await;
    assert!(bye.starts_with("* BYE"), "{bye}");
    assert_closed_after_answer(&mut imap).await;

    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    pop3.send_line(&format!("USER {}", "a".repeat(4000))).await;
    assert!(pop3.read_line().await.starts_with("-ERR"));
    assert_closed_after_answer(&mut pop3).await;
}

#[tokio::test]
async fn too_many_failed_attempts_close_the_connection() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::builder(&dovecot)
        .limits("max_auth_attempts = 2")
        .start()
        .await;
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let first = imap.command("a LOGIN alice@example.com wrong1").await;
    assert!(first.starts_with("a NO [AUTHENTICATIONFAILED]"), "{first}");
    let second = imap.command("b LOGIN alice@example.com wrong2").await;
    assert!(second.starts_with("b NO"), "{second}");
    let bye = imap.read_line().await;
    assert!(bye.starts_with("* BYE"), "{bye}");
    assert_closed_after_answer(&mut imap).await;

    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    for _ in 0..2 {
        assert!(
            pop3.command("USER bob@example.com")
                .await
                .starts_with("+OK")
        );
        assert!(pop3.command("PASS wrong").await.starts_with("-ERR [AUTH]"));
    }
    let last = pop3.read_line().await;
    assert!(last.starts_with("-ERR"), "{last}");
    assert_closed_after_answer(&mut pop3).await;
}

#[tokio::test]
async fn preauth_time_limit_ends_with_bye() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::builder(&dovecot)
        .limits("auth_timeout = \"1s\"")
        .start()
        .await;
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    // No sleep: the read below waits (bounded by the client's 10 s) for mailgate's own timer.
    let bye = imap.read_line().await;
    assert!(bye.starts_with("* BYE"), "{bye}");
    assert_closed_after_answer(&mut imap).await;

    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    let bye = pop3.read_line().await;
    assert!(bye.starts_with("-ERR"), "{bye}");
    assert_closed_after_answer(&mut pop3).await;
}

#[tokio::test]
async fn upstream_down_is_a_temporary_failure() {
    let dovecot = Dovecot::start();
    let nothing = format!("127.0.0.1:{}", crate::util::free_port());
    let spec = crate::mailgate::UpstreamSpec {
        addresses: vec![nothing],
        tls: "implicit",
        ca_file: dovecot.ca_pem.clone(),
    };
    let mailgate = Mailgate::builder(&dovecot)
        .imap_upstream(spec.clone())
        .pop3_upstream(spec)
        .start()
        .await;
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let reply = imap.command("a LOGIN alice@example.com alice-secret").await;
    assert!(reply.starts_with("a NO [UNAVAILABLE]"), "{reply}");
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    pop3.command("USER alice@example.com").await;
    let reply = pop3.command("PASS alice-secret").await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
}

#[tokio::test]
async fn second_upstream_address_is_tried_when_the_first_is_down() {
    let dovecot = Dovecot::start();
    let spec = crate::mailgate::UpstreamSpec {
        addresses: vec![
            format!("127.0.0.1:{}", crate::util::free_port()),
            dovecot.imaps_addr.to_string(),
        ],
        tls: "implicit",
        ca_file: dovecot.ca_pem.clone(),
    };
    let mailgate = Mailgate::builder(&dovecot)
        .imap_upstream(spec)
        .start()
        .await;
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let reply = imap.command("a LOGIN alice@example.com alice-secret").await;
    assert!(reply.starts_with("a OK"), "{reply}");
}

#[tokio::test]
async fn upstream_certificate_not_trusted_is_refused() {
    let dovecot = Dovecot::start();
    // Trust the repo's CA, which did not issue Dovecot's certificate.
    let untrusted = |addr: String, tls| crate::mailgate::UpstreamSpec {
        addresses: vec![addr],
        tls,
        ca_file: Mailgate::ca_pem(),
    };
    let mailgate = Mailgate::builder(&dovecot)
        .imap_upstream(untrusted(dovecot.imap_addr.to_string(), "starttls"))
        .pop3_upstream(untrusted(dovecot.pop3s_addr.to_string(), "implicit"))
        .start()
        .await;
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let reply = imap.command("a LOGIN alice@example.com alice-secret").await;
    assert!(reply.starts_with("a NO [UNAVAILABLE]"), "{reply}");
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    pop3.command("USER alice@example.com").await;
    assert!(
        pop3.command("PASS alice-secret")
            .await
            .starts_with("-ERR [SYS/TEMP]")
    );
    // The password never went to the unverified server.
    assert!(
        !dovecot.log().contains("Login: user=<alice"),
        "{}",
        dovecot.log()
    );
}

#[tokio::test]
async fn upstream_starttls_for_imap_and_implicit_for_pop3() {
    let dovecot = Dovecot::start();
    let spec = |addr: String, tls| crate::mailgate::UpstreamSpec {
        addresses: vec![addr],
        tls,
        ca_file: dovecot.ca_pem.clone(),
    };
    let mailgate = Mailgate::builder(&dovecot)
        .imap_upstream(spec(dovecot.imap_addr.to_string(), "starttls"))
        .pop3_upstream(spec(dovecot.pop3s_addr.to_string(), "implicit"))
        .start()
        .await;
    let alice = dovecot.alice().clone();
    let expected = dovecot.messages(&alice.name);
    let json = python_json(
        "imap_client.py",
        &client_args(
            mailgate.addr("imaps").port(),
            "implicit",
            &alice.name,
            &alice.password,
        ),
    )
    .await;
    assert_same_messages(&expected, &json);
    let json = python_json(
        "pop3_client.py",
        &client_args(
            mailgate.addr("pop3s").port(),
            "implicit",
            &alice.name,
            &alice.password,
        ),
    )
    .await;
    assert_same_messages(&expected, &json);
    assert!(dovecot.log().contains("TLS"), "{}", dovecot.log());
}

#[tokio::test]
async fn crlf_smuggled_in_sasl_is_refused_not_relayed() {
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    use base64::Engine as _;
    let b64 = |raw: &[u8]| base64::engine::general_purpose::STANDARD.encode(raw);
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    // A user name that carries a second command.
    let plain = b64(b"\0alice@example.com\r\nx LOGIN bob@example.com bob-secret\0alice-secret");
    let reply = imap.command(&format!("a AUTHENTICATE PLAIN {plain}")).await;
    assert!(
        reply.starts_with("a BAD") || reply.starts_with("a NO"),
        "{reply}"
    );
    // A bearer token that carries one.
    let xoauth = b64(b"user=alice@example.com\x01auth=Bearer abc\r\nx LOGOUT\x01\x01");
    let reply = imap
        .command(&format!("b AUTHENTICATE XOAUTH2 {xoauth}"))
        .await;
    assert!(
        reply.starts_with("b BAD") || reply.starts_with("b NO"),
        "{reply}"
    );

    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    let login = b64(b"\0bob@example.com\nSTAT\0bob-secret");
    let reply = pop3.command(&format!("AUTH PLAIN {login}")).await;
    assert!(reply.starts_with("-ERR"), "{reply}");
    let log = dovecot.log();
    assert!(!log.contains("Login: user=<bob"), "{log}");
}

/// After a closing answer the server must close: EOF within the read timeout.
async fn assert_closed_after_answer<S>(c: &mut crate::util::LineClient<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let rest = c.read_line_bytes().await;
    assert!(
        rest.is_empty(),
        "expected EOF, got {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn plaintext_upstream_on_loopback() {
    let dovecot = Dovecot::start();
    let spec = |addr: String| crate::mailgate::UpstreamSpec {
        addresses: vec![addr],
        tls: "none",
        ca_file: dovecot.ca_pem.clone(),
    };
    let mailgate = Mailgate::builder(&dovecot)
        .imap_upstream(spec(dovecot.imap_addr.to_string()))
        .pop3_upstream(spec(dovecot.pop3_addr.to_string()))
        .start()
        .await;
    let bob = dovecot.user("bob@example.com").clone();
    let expected = dovecot.messages(&bob.name);
    let args = client_args(
        mailgate.addr("imaps").port(),
        "implicit",
        &bob.name,
        &bob.password,
    );
    assert_same_messages(&expected, &python_json("imap_client.py", &args).await);
    let args = client_args(
        mailgate.addr("pop3s").port(),
        "implicit",
        &bob.name,
        &bob.password,
    );
    assert_same_messages(&expected, &python_json("pop3_client.py", &args).await);
}

/// A hand-written stand-in: a real server will not stall its TLS handshake on demand. It
/// accepts and then says nothing.
#[tokio::test]
async fn upstream_that_stalls_the_handshake_is_a_temporary_failure() {
    let dovecot = Dovecot::start();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let spec = crate::mailgate::UpstreamSpec {
        addresses: vec![addr],
        tls: "implicit",
        ca_file: dovecot.ca_pem.clone(),
    };
    let mailgate = Mailgate::builder(&dovecot)
        .imap_upstream(spec)
        .start()
        .await;
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let started = std::time::Instant::now();
    // connect_timeout is 2 s in the harness config; the client waits up to 10 s.
    let reply = imap.command("a LOGIN alice@example.com alice-secret").await;
    assert!(reply.starts_with("a NO [UNAVAILABLE]"), "{reply}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The connection is still usable after a temporary failure.
    assert!(imap.command("b NOOP").await.starts_with("b OK"));
    holder.abort();
}

#[tokio::test]
async fn long_bearer_token_is_replayed_and_the_upstream_refusal_relayed() {
    // This Dovecot has no oauth2 passdb: the point is that a 2 KB token crosses mailgate
    // (continuation on POP3, past the 255-octet AUTH line) and Dovecot's answer comes back as
    // an authentication failure, not as a protocol error.
    use base64::Engine as _;
    let dovecot = Dovecot::start();
    let mailgate = Mailgate::start(&dovecot).await;
    let token = "a".repeat(2048);
    let payload = base64::engine::general_purpose::STANDARD.encode(format!(
        "user=alice@example.com\x01auth=Bearer {token}\x01\x01"
    ));
    let mut pop3 = TcpLineClient::connect(mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    let mut reply = pop3.command(&format!("AUTH XOAUTH2 {payload}")).await;
    if reply.starts_with('+') {
        reply = pop3.command("").await;
    }
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    let mut imap = TcpLineClient::connect(mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    let mut reply = imap
        .command(&format!("a AUTHENTICATE XOAUTH2 {payload}"))
        .await;
    if reply.starts_with('+') {
        reply = imap.command("").await;
    }
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
}
