//! The test clients against the harness Dovecot directly, with no proxy in between.
//!
//! These prove the harness and the clients: if one fails, the proxy tests built on them
//! cannot be trusted either.

use std::time::Duration;

use crate::dovecot::{Dovecot, User};
use crate::fixtures;
use crate::pki::TestPki;
use crate::util::{
    LineClient, MessageDigest, TcpLineClient, TlsLineClient, assert_same_messages, assert_success,
    json_output, run_curl, run_python, spawn_python,
};

/// Common arguments for the Python clients.
fn client_args(port: u16, tls: &str, dovecot: &Dovecot, user: &str, password: &str) -> Vec<String> {
    vec![
        "--port".into(),
        port.to_string(),
        "--tls".into(),
        tls.into(),
        "--cafile".into(),
        dovecot.ca_pem.display().to_string(),
        "--servername".into(),
        "localhost".into(),
        "--user".into(),
        user.into(),
        "--password".into(),
        password.into(),
    ]
}

async fn python_json(script: &str, args: &[String]) -> serde_json::Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_python(script, &args).await;
    assert_success(&out);
    json_output(&out)
}

#[tokio::test]
async fn every_listener_greets() {
    let dovecot = Dovecot::start();
    eprintln!("dovecot started in {:?}", dovecot.startup);
    let mut imap = TcpLineClient::connect(dovecot.imap_addr).await;
    assert!(imap.read_line().await.starts_with("* OK"));
    let mut pop3 = TcpLineClient::connect(dovecot.pop3_addr).await;
    assert!(pop3.read_line().await.starts_with("+OK"));
    let mut imaps =
        TlsLineClient::connect_tls(dovecot.imaps_addr, &dovecot.ca_pem, "localhost").await;
    assert!(imaps.read_line().await.starts_with("* OK"));
    let mut pop3s =
        TlsLineClient::connect_tls(dovecot.pop3s_addr, &dovecot.ca_pem, "127.0.0.1").await;
    assert!(pop3s.read_line().await.starts_with("+OK"));
}

#[tokio::test]
async fn raw_imap_starttls_login_fetch() {
    let dovecot = Dovecot::start();
    let alice = dovecot.alice().clone();
    let mut c = TcpLineClient::connect(dovecot.imap_addr).await;
    let greeting = c.read_line().await;
    assert!(greeting.contains("STARTTLS"), "{greeting}");
    let r = c.imap("a1", "STARTTLS").await;
    assert_eq!(r.status(), "OK", "{r:?}");
    let mut c = c.starttls(&dovecot.ca_pem, "localhost").await;
    let r = c.imap("a2", "CAPABILITY").await;
    assert!(r.untagged[0].contains("AUTH=PLAIN"), "{r:?}");
    // A synchronising literal for the password, as some clients send it.
    c.send_line(&format!(
        "a3 LOGIN {} {{{}}}",
        alice.name,
        alice.password.len()
    ))
    .await;
    assert!(c.read_line().await.starts_with('+'));
    c.send_line(&alice.password).await;
    let r = c.read_until_tagged("a3").await;
    assert_eq!(r.status(), "OK", "{r:?}");
    let r = c.imap("a4", "EXAMINE INBOX").await;
    assert!(r.untagged.iter().any(|l| l == "* 5 EXISTS"), "{r:?}");
    // FETCH 1 BODY[] arrives as `* 1 FETCH (BODY[] {n}` + n bytes + `)`.
    c.send_line("a5 FETCH 1 BODY.PEEK[]").await;
    let head = c.read_line().await;
    let n: usize = head
        .rsplit_once('{')
        .and_then(|(_, n)| n.strip_suffix('}'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no literal in {head}"));
    let body = c.read_exact(n).await;
    assert_eq!(body, dovecot.messages(&alice.name)[0]);
    let r = c.read_until_tagged("a5").await;
    assert_eq!(r.status(), "OK", "{r:?}");
    let r = c.imap("a6", "LOGOUT").await;
    assert!(r.untagged[0].starts_with("* BYE"), "{r:?}");
    c.expect_eof().await;
}

#[tokio::test]
async fn raw_pop3_stls_retr_dot_stuffed() {
    let dovecot = Dovecot::start();
    let bob = dovecot.user("bob@example.com").clone();
    let mut c = TcpLineClient::connect(dovecot.pop3_addr).await;
    assert!(c.read_line().await.starts_with("+OK"));
    assert!(c.command("STLS").await.starts_with("+OK"));
    let mut c = c.starttls(&dovecot.ca_pem, "localhost").await;
    assert!(
        c.command(&format!("USER {}", bob.name))
            .await
            .starts_with("+OK")
    );
    assert!(
        c.command(&format!("PASS {}", bob.password))
            .await
            .starts_with("+OK")
    );
    let stat = c.command("STAT").await;
    let expected = dovecot.messages(&bob.name);
    let total: usize = expected.iter().map(Vec::len).sum();
    assert_eq!(stat, format!("+OK {} {total}", expected.len()));
    // Message 2 has a lone "." line: the server stuffs it, read_multiline unstuffs it.
    assert!(c.command("RETR 2").await.starts_with("+OK"));
    let lines = c.read_multiline().await;
    let body: Vec<u8> = lines
        .iter()
        .flat_map(|l| format!("{l}\r\n").into_bytes())
        .collect();
    assert_eq!(body, expected[1]);
    assert!(c.command("QUIT").await.starts_with("+OK"));
    c.expect_eof().await;
}

#[tokio::test]
async fn curl_imaps_fetches_messages() {
    let dovecot = Dovecot::start();
    let alice = dovecot.alice().clone();
    let expected = dovecot.messages(&alice.name);
    let user = format!("{}:{}", alice.name, alice.password);
    let ca = dovecot.ca_pem.display().to_string();
    for (index, msg) in [(1, &expected[0]), (3, &expected[2]), (5, &expected[4])] {
        let url = format!(
            "imaps://localhost:{}/INBOX;MAILINDEX={index}",
            dovecot.imaps_addr.port()
        );
        let out = run_curl(&[
            "--cacert",
            &ca,
            "--resolve",
            &format!("localhost:{}:127.0.0.1", dovecot.imaps_addr.port()),
            "--user",
            &user,
            &url,
        ])
        .await;
        assert_success(&out);
        assert_eq!(
            MessageDigest::of(&out.stdout),
            MessageDigest::of(msg),
            "message {index}"
        );
    }
}

#[tokio::test]
async fn curl_pop3s_retrieves_messages() {
    let dovecot = Dovecot::start();
    let bob = dovecot.user("bob@example.com").clone();
    let expected = dovecot.messages(&bob.name);
    let user = format!("{}:{}", bob.name, bob.password);
    let ca = dovecot.ca_pem.display().to_string();
    for index in [2usize, 3] {
        let url = format!("pop3s://127.0.0.1:{}/{index}", dovecot.pop3s_addr.port());
        let out = run_curl(&["--cacert", &ca, "--user", &user, &url]).await;
        assert_success(&out);
        assert_eq!(
            MessageDigest::of(&out.stdout),
            MessageDigest::of(&expected[index - 1]),
            "message {index}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[tokio::test]
async fn curl_wrong_password_fails() {
    let dovecot = Dovecot::start();
    let url = format!(
        "imaps://127.0.0.1:{}/INBOX;MAILINDEX=1",
        dovecot.imaps_addr.port()
    );
    let out = run_curl(&[
        "--cacert",
        &dovecot.ca_pem.display().to_string(),
        "--user",
        "alice@example.com:wrong",
        &url,
    ])
    .await;
    assert!(!out.status.success());
    // curl: (67) Login denied
    assert_eq!(out.status.code(), Some(67), "{out:?}");
}

#[tokio::test]
async fn python_imap_all_tls_modes_and_mechanisms() {
    let dovecot = Dovecot::start();
    let alice = dovecot.alice().clone();
    let expected = dovecot.messages(&alice.name);
    let cases = [
        (dovecot.imaps_addr.port(), "implicit", "login", "body-peek"),
        (dovecot.imap_addr.port(), "starttls", "plain", "rfc822"),
        (
            dovecot.imap_addr.port(),
            "starttls",
            "plain-ir",
            "body-peek",
        ),
        (dovecot.imap_addr.port(), "none", "login", "rfc822"),
    ];
    for (port, tls, auth, fetch) in cases {
        let mut args = client_args(port, tls, &dovecot, &alice.name, &alice.password);
        args.extend(["--auth".into(), auth.into(), "--fetch".into(), fetch.into()]);
        let json = python_json("imap_client.py", &args).await;
        assert_eq!(json["ok"], true, "{tls}/{auth}: {json}");
        assert_eq!(json["count"], 5, "{json}");
        assert_same_messages(&expected, &json);
    }
}

#[tokio::test]
async fn python_pop3_all_tls_modes_and_mechanisms() {
    let dovecot = Dovecot::start();
    let bob = dovecot.user("bob@example.com").clone();
    let expected = dovecot.messages(&bob.name);
    let cases = [
        (dovecot.pop3s_addr.port(), "implicit", "user"),
        (dovecot.pop3_addr.port(), "stls", "plain"),
        (dovecot.pop3s_addr.port(), "implicit", "plain-ir"),
        (dovecot.pop3_addr.port(), "none", "user"),
    ];
    for (port, tls, auth) in cases {
        let mut args = client_args(port, tls, &dovecot, &bob.name, &bob.password);
        args.extend(["--auth".into(), auth.into()]);
        let json = python_json("pop3_client.py", &args).await;
        assert_eq!(json["ok"], true, "{tls}/{auth}: {json}");
        assert_eq!(json["count"], 5, "{json}");
        let total: usize = expected.iter().map(Vec::len).sum();
        assert_eq!(json["size"], total, "{json}");
        assert_same_messages(&expected, &json);
    }
}

#[tokio::test]
async fn python_wrong_password_is_refused() {
    let dovecot = Dovecot::start();
    let mut imap = client_args(
        dovecot.imaps_addr.port(),
        "implicit",
        &dovecot,
        "alice@example.com",
        "wrong",
    );
    imap.push("--expect-fail".into());
    let json = python_json("imap_client.py", &imap).await;
    assert_eq!(json["refused"], true, "{json}");
    let error = json["error"].as_str().expect("error text");
    assert!(error.contains("[AUTHENTICATIONFAILED]"), "{json}");

    let mut pop3 = client_args(
        dovecot.pop3_addr.port(),
        "stls",
        &dovecot,
        "bob@example.com",
        "wrong",
    );
    pop3.extend(["--auth".into(), "plain".into(), "--expect-fail".into()]);
    let json = python_json("pop3_client.py", &pop3).await;
    assert_eq!(json["refused"], true, "{json}");
    let error = json["error"].as_str().expect("error text");
    assert!(error.starts_with("-ERR [AUTH]"), "{json}");

    // An unknown user fails the same way, and --expect-fail fails on a good login.
    let mut unknown = client_args(
        dovecot.imap_addr.port(),
        "starttls",
        &dovecot,
        "nobody@example.com",
        "x",
    );
    unknown.push("--expect-fail".into());
    assert_eq!(
        python_json("imap_client.py", &unknown).await["refused"],
        true
    );
    let mut good = client_args(
        dovecot.imaps_addr.port(),
        "implicit",
        &dovecot,
        "alice@example.com",
        "alice-secret",
    );
    good.push("--expect-fail".into());
    let args: Vec<&str> = good.iter().map(String::as_str).collect();
    let out = run_python("imap_client.py", &args).await;
    assert!(
        !out.status.success(),
        "a good login must fail --expect-fail"
    );
    assert!(dovecot.log().contains("auth failed"), "{}", dovecot.log());
}

#[tokio::test]
async fn python_imap_idle_sees_delivery() {
    let dovecot = Dovecot::start();
    let alice = dovecot.alice().clone();
    let mut args = client_args(
        dovecot.imaps_addr.port(),
        "implicit",
        &dovecot,
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
    // Readiness signal: the client prints IDLING once the server accepted IDLE.
    let first = client.next_line(Duration::from_secs(30)).await;
    assert_eq!(first.as_deref(), Some("IDLING"), "{first:?}");

    dovecot.deliver(&alice.name, &fixtures::delivered(&alice.name, 1));

    let out = client.finish(Duration::from_secs(30)).await;
    assert_success(&out);
    let json = json_output(&out);
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["before"], 5, "{json}");
    assert_eq!(json["exists"], 6, "{json}");
}

#[tokio::test]
async fn delivered_message_is_fetched_byte_exact() {
    let dovecot = Dovecot::start();
    let bob = dovecot.user("bob@example.com").clone();
    let extra = fixtures::delivered(&bob.name, 7);
    dovecot.deliver(&bob.name, &extra);
    let mut expected = dovecot.messages(&bob.name);
    expected.push(extra);
    let args = client_args(
        dovecot.imaps_addr.port(),
        "implicit",
        &dovecot,
        &bob.name,
        &bob.password,
    );
    let json = python_json("imap_client.py", &args).await;
    assert_same_messages(&expected, &json);
}

#[test]
fn dovecots_run_side_by_side() {
    let threads: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| {
                let d = Dovecot::start();
                // Prove each answers on its own ports before the others stop.
                let addr = d.pop3_addr;
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut buf = [0u8; 3];
                std::io::Read::read_exact(&mut s, &mut buf).expect("greeting");
                assert_eq!(&buf, b"+OK");
                (
                    d.imap_addr,
                    d.imaps_addr,
                    d.pop3_addr,
                    d.pop3s_addr,
                    d.startup,
                )
            })
        })
        .collect();
    let mut ports = std::collections::HashSet::new();
    for t in threads {
        let (a, b, c, d, startup) = t.join().expect("dovecot thread");
        eprintln!("dovecot started in {startup:?}");
        for addr in [a, b, c, d] {
            assert!(ports.insert(addr.port()), "port {} reused", addr.port());
        }
    }
}

#[tokio::test]
async fn builder_users_config_and_untrusted_loopback() {
    let dovecot = Dovecot::builder()
        .users(vec![User::new("carol@example.org", "carol-secret")])
        .trusted_loopback(false)
        .extra_config("login_greeting = upstream under test")
        .start();
    assert!(dovecot.dir().join("dovecot.conf").exists());
    let mut pop3 = TcpLineClient::connect(dovecot.pop3_addr).await;
    let greeting = pop3.read_line().await;
    // Untrusted: no XCLIENT offered to us.
    assert_eq!(greeting, "+OK upstream under test");
    let carol = dovecot.user("carol@example.org").clone();
    assert!(dovecot.maildir(&carol.name).join("cur").is_dir());
    let args = client_args(
        dovecot.imaps_addr.port(),
        "implicit",
        &dovecot,
        &carol.name,
        &carol.password,
    );
    let json = python_json("imap_client.py", &args).await;
    assert_same_messages(&dovecot.messages(&carol.name), &json);
    // The proxy's own listener certificate can come from the same CA.
    let leaf = dovecot.pki().issue("proxy", &["localhost"]);
    assert!(leaf.cert_pem.starts_with(dovecot.dir()));
}

/// The harness CA can also stand behind a proxy's own listener certificate.
#[tokio::test]
async fn pki_leaf_serves_tls_to_line_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path(), "proxy test CA");
    let leaf = pki.issue("proxy", &["mail.example.test", "127.0.0.1"]);
    assert!(leaf.cert_pem.exists() && leaf.key_pem.exists());
    assert_eq!(&leaf.chain[1], pki.ca_der());
    let acceptor = tokio_rustls::TlsAcceptor::from(leaf.server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("tls accept");
        let mut c = LineClient::new(tls);
        c.send_line("* OK fake upstream").await;
        let line = c.read_line().await;
        c.send_line(&format!("echo {line}")).await;
    });
    let mut c = TlsLineClient::connect_tls(addr, pki.ca_pem(), "mail.example.test").await;
    assert_eq!(c.read_line().await, "* OK fake upstream");
    assert_eq!(c.command("hello").await, "echo hello");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server task timed out")
        .expect("server task");
}
