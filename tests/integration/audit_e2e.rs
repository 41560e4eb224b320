//! The audit records of real sessions where the first version got them wrong (issue 9): the
//! TLS version of a session that upgraded with STARTTLS/STLS, the end of a session whose
//! client closed TLS without close_notify (as imaplib, poplib, mbsync, offlineimap and getmail
//! do), and user names carrying bidi controls and line separators, which must reach neither
//! the JSONL file nor the operator's terminal raw.
//!
//! Real Dovecot, real Python clients (imaplib, poplib) and a raw rustls client that drops the
//! TCP connection without close_notify. Every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;
use tokio::net::TcpSocket;
use tokio::time::timeout;

use crate::dovecot::Dovecot;
use crate::mailgate::Mailgate;
use crate::ops_e2e::{assert_well_formed, audit_to, await_records, ended, one, session_of};
use crate::util::{
    LineClient, TlsLineClient, assert_success, json_output, run_python, tls_connector,
};

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A TLS line client to `to` from the loopback address `from`, and its own address (what the
/// audit `connect` record names). Dropping it closes TCP without a TLS close_notify.
async fn tls_from(from: [u8; 4], to: SocketAddr) -> (TlsLineClient, SocketAddr) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((from, 0))).expect("bind");
    let tcp = timeout(WAIT, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect");
    let me = tcp.local_addr().expect("local addr");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = timeout(WAIT, tls_connector(&Mailgate::ca_pem()).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    (LineClient::new(tls), me)
}

/// Runs `tests/clients/<script>` against `port` as alice, verifying the test CA.
async fn python_client(script: &str, port: u16, tls: &str, extra: &[&str]) -> Value {
    let ca = Mailgate::ca_pem().display().to_string();
    let port = port.to_string();
    let mut args = vec![
        "--port",
        &port,
        "--tls",
        tls,
        "--cafile",
        &ca,
        "--servername",
        "localhost",
        "--user",
        "alice@example.com",
        "--password",
        "alice-secret",
    ];
    args.extend_from_slice(extra);
    let out = run_python(script, &args).await;
    assert_success(&out);
    json_output(&out)
}

/// The records of the only session on `listener`.
fn session_on<'a>(records: &'a [Value], listener: &str) -> (String, &'a Value) {
    let connects: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "connect" && r["listener"] == listener)
        .collect();
    assert_eq!(connects.len(), 1, "one session on {listener}: {connects:?}");
    let id = connects[0]["session"].as_str().expect("session").to_owned();
    (id, connects[0])
}

/// imaplib and poplib, over STARTTLS/STLS and implicit TLS: each session has one `connect`
/// record, and after an upgrade it names the TLS version and SNI; each logged out (LOGOUT /
/// QUIT after login, then closed TCP without close_notify), which is a client close.
#[tokio::test]
async fn real_clients_over_starttls_and_tls_are_recorded_with_tls_and_client_closed() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let services = audit_to(&path);
    let audit = services.audit.clone();
    let mailgate = Mailgate::builder(&dovecot).start_with(services).await;

    let port = |name: &str| mailgate.addr(name).port();
    let imap = python_client(
        "imap_client.py",
        port("imap"),
        "starttls",
        &["--mode", "login"],
    );
    let pop3 = python_client("pop3_client.py", port("pop3"), "stls", &["--mode", "login"]);
    let imaps = python_client("imap_client.py", port("imaps"), "implicit", &[]);
    let pop3s = python_client("pop3_client.py", port("pop3s"), "implicit", &[]);
    let (imap, pop3, imaps, pop3s) = tokio::join!(imap, pop3, imaps, pop3s);
    for out in [&imap, &pop3, &imaps, &pop3s] {
        assert_eq!(out["ok"], true, "{out}");
    }

    let listeners = ["imap", "pop3", "imaps", "pop3s"];
    let all = await_records(&audit, &path, |r| {
        r.iter().filter(|r| r["event"] == "session_end").count() == listeners.len()
    })
    .await;
    assert_well_formed(&all);
    for listener in listeners {
        let (id, connect) = session_on(&all, listener);
        assert_eq!(connect["tls"], "TLSv1.3", "{listener}: {connect}");
        assert_eq!(connect["sni"], "localhost", "{listener}: {connect}");
        assert_eq!(one(&all, &id, "auth")["reason"], "ok", "{listener}");
        let end = one(&all, &id, "session_end");
        assert_eq!(end["end"], "client_closed", "{listener}: {end}");
    }
}

/// A STARTTLS listener whose client never upgrades: still exactly one `connect`, `tls: null`.
#[tokio::test]
async fn a_starttls_session_that_never_upgrades_has_one_plaintext_connect() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let services = audit_to(&path);
    let audit = services.audit.clone();
    let mailgate = Mailgate::builder(&dovecot).start_with(services).await;

    let socket = TcpSocket::new_v4().expect("socket");
    let tcp = timeout(WAIT, socket.connect(mailgate.addr("imap")))
        .await
        .expect("connect in time")
        .expect("connect");
    let me = tcp.local_addr().expect("local addr");
    let mut c = LineClient::new(tcp);
    assert!(c.read_line().await.starts_with("* OK"));
    assert!(c.imap("a", "CAPABILITY").await.tagged.starts_with("a OK"));
    assert!(c.imap("b", "LOGOUT").await.tagged.starts_with("b OK"));
    c.expect_eof().await;

    let all = await_records(&audit, &path, |r| ended(r, me)).await;
    assert_well_formed(&all);
    let id = session_of(&all, me).expect("session");
    let connect = one(&all, &id, "connect");
    assert_eq!(connect["tls"], Value::Null, "{connect}");
    assert_eq!(connect["sni"], Value::Null, "{connect}");
    assert_eq!(one(&all, &id, "session_end")["end"], "client_closed");
}

/// A raw TLS client that drops TCP without close_notify, before login, after a pre-auth
/// LOGOUT, after login and some commands, and after LOGOUT / QUIT: every one is a client
/// close, never `error`.
#[tokio::test]
async fn closing_tls_without_close_notify_is_a_client_close() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let services = audit_to(&path);
    let audit = services.audit.clone();
    let mailgate = Mailgate::builder(&dovecot).start_with(services).await;
    let imaps = mailgate.addr("imaps");
    let pop3s = mailgate.addr("pop3s");
    let mut cases: Vec<(SocketAddr, &str)> = Vec::new();

    // Before login, after a command.
    let (mut c, me) = tls_from([127, 0, 0, 1], imaps).await;
    assert!(c.read_line().await.starts_with("* OK"));
    assert!(c.imap("a", "CAPABILITY").await.tagged.starts_with("a OK"));
    drop(c);
    cases.push((me, "IMAP, before login"));

    // LOGOUT before login; the client does not wait for mailgate's close.
    let (mut c, me) = tls_from([127, 0, 0, 1], imaps).await;
    assert!(c.read_line().await.starts_with("* OK"));
    assert!(c.imap("a", "LOGOUT").await.tagged.starts_with("a OK"));
    drop(c);
    cases.push((me, "IMAP, LOGOUT before login"));

    // Logged in, some commands, gone.
    let (mut c, me) = tls_from([127, 0, 0, 1], imaps).await;
    assert!(c.read_line().await.starts_with("* OK"));
    let login = c.imap("a", "LOGIN alice@example.com alice-secret").await;
    assert!(login.tagged.starts_with("a OK"), "{login:?}");
    assert!(c.imap("b", "SELECT INBOX").await.tagged.starts_with("b OK"));
    assert!(c.imap("c", "NOOP").await.tagged.starts_with("c OK"));
    drop(c);
    cases.push((me, "IMAP, logged in, commands"));

    // Logged in, LOGOUT, gone as soon as the tagged OK is read (imaplib, mbsync).
    let (mut c, me) = tls_from([127, 0, 0, 1], imaps).await;
    assert!(c.read_line().await.starts_with("* OK"));
    let login = c.imap("a", "LOGIN alice@example.com alice-secret").await;
    assert!(login.tagged.starts_with("a OK"), "{login:?}");
    assert!(c.imap("b", "SELECT INBOX").await.tagged.starts_with("b OK"));
    assert!(c.imap("c", "LOGOUT").await.tagged.starts_with("c OK"));
    drop(c);
    cases.push((me, "IMAP, LOGOUT after login"));

    // POP3: before login, after CAPA.
    let (mut c, me) = tls_from([127, 0, 0, 1], pop3s).await;
    assert!(c.read_line().await.starts_with("+OK"));
    assert!(c.command("CAPA").await.starts_with("+OK"));
    c.read_multiline().await;
    drop(c);
    cases.push((me, "POP3, before login"));

    // POP3: login, STAT, QUIT, gone at the +OK (getmail).
    let (mut c, me) = tls_from([127, 0, 0, 1], pop3s).await;
    assert!(c.read_line().await.starts_with("+OK"));
    assert!(c.command("USER alice@example.com").await.starts_with("+OK"));
    let pass = c.command("PASS alice-secret").await;
    assert!(pass.starts_with("+OK"), "{pass}");
    assert!(c.command("STAT").await.starts_with("+OK"));
    assert!(c.command("QUIT").await.starts_with("+OK"));
    drop(c);
    cases.push((me, "POP3, QUIT after login"));

    let all = await_records(&audit, &path, |r| cases.iter().all(|(c, _)| ended(r, *c))).await;
    assert_well_formed(&all);
    for (client, case) in &cases {
        let id = session_of(&all, *client).expect("session");
        let end = one(&all, &id, "session_end");
        assert_eq!(end["end"], "client_closed", "{case}: {end}");
    }
}

/// The characters an audit reader must never get raw: RIGHT-TO-LEFT OVERRIDE (turns the rest
/// of a terminal line around), LINE and PARAGRAPH SEPARATOR (end a line for some JSONL
/// readers), ZERO WIDTH SPACE and BYTE ORDER MARK (invisible).
const SPOOFING: [char; 5] = ['\u{202e}', '\u{2028}', '\u{2029}', '\u{200b}', '\u{feff}'];

/// A LOGIN whose user name carries [`SPOOFING`], through mailgate to Dovecot: the audit file,
/// `audit tail --json` and the `audit tail` table hold escapes, not the characters, and the
/// JSON still reads back as the name the client sent.
#[tokio::test]
async fn spoofing_characters_in_a_user_name_are_escaped_in_the_audit() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let services = audit_to(&path);
    let audit = services.audit.clone();
    let mailgate = Mailgate::builder(&dovecot).start_with(services).await;

    let user = format!("mallory{}@example.com", SPOOFING.iter().collect::<String>());
    let socket = TcpSocket::new_v4().expect("socket");
    let tcp = timeout(WAIT, socket.connect(mailgate.addr("imap-plain")))
        .await
        .expect("connect in time")
        .expect("connect");
    let me = tcp.local_addr().expect("local addr");
    let mut c = LineClient::new(tcp);
    assert!(c.read_line().await.starts_with("* OK"));
    let login = c.imap("a", &format!("LOGIN \"{user}\" \"wrong\"")).await;
    assert!(!login.tagged.starts_with("a OK"), "{login:?}");
    assert!(c.imap("b", "LOGOUT").await.tagged.starts_with("b OK"));
    drop(c);

    let all = await_records(&audit, &path, |r| ended(r, me)).await;
    let id = session_of(&all, me).expect("session");
    assert_eq!(
        one(&all, &id, "auth")["user"],
        user.as_str(),
        "read back intact"
    );
    let bytes = std::fs::read_to_string(&path).expect("audit file");
    assert_no_raw_spoofing("the audit file", &bytes);
    assert!(
        bytes.contains(r"\u202e") && bytes.contains(r"\u2028"),
        "{bytes}"
    );

    let json = tail(&path, mailgate::audit::tail::Format::Json);
    assert_no_raw_spoofing("audit tail --json", &json);
    assert!(json.contains(r"\u202e"), "{json}");
    let table = tail(&path, mailgate::audit::tail::Format::Table);
    assert_no_raw_spoofing("audit tail", &table);
    let shown = table
        .lines()
        .find(|l| l.contains(" auth "))
        .unwrap_or_else(|| panic!("no auth row:\n{table}"));
    assert!(
        shown.contains(r"mallory\u{202e}\u{2028}\u{2029}\u{200b}\u{feff}@example.com"),
        "{shown}"
    );
}

fn assert_no_raw_spoofing(what: &str, text: &str) {
    for c in SPOOFING {
        assert!(
            !text.contains(c),
            "{what} holds a raw U+{:04X}: {text:?}",
            u32::from(c)
        );
    }
}

/// `mailgate audit tail --file path` (as the CLI runs it) in the given format.
fn tail(path: &Path, format: mailgate::audit::tail::Format) -> String {
    use mailgate::audit::tail;
    let options = tail::Options {
        file: path.to_owned(),
        follow: false,
        filter: tail::Filter::default(),
        format,
        poll: tail::POLL,
    };
    let mut out = Vec::new();
    tail::run(&options, &mut out).expect("tail");
    String::from_utf8(out).expect("UTF-8")
}
