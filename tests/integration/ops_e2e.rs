//! The operator surface end to end, with real clients, a real Dovecot and a real HAProxy:
//! audit records of real sessions, exactly one `session_end` over every end path, rotation of
//! the audit file by rename + SIGUSR1 under the real binary, PROXY v2 from HAProxy (the real
//! client address in the audit record, untrusted or missing headers refused), the real client
//! address in Dovecot's log (IMAP `ID` and PROXY v2 towards the upstream), and `/metrics` and
//! `/readyz` scraped during a run.
//!
//! Every wait is bounded; readiness is a condition polled with a deadline (a record in the audit
//! file, a line in a log, a flag over HTTP), never a bare sleep.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mailgate::audit::Audit;
use mailgate::server::Services;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};

use crate::dovecot::Dovecot;
use crate::mailgate::{Mailgate, UpstreamSpec};
use crate::reload::{KillOnDrop, wait_for};
use crate::util::{LineClient, TcpLineClient, free_port, tls_connector};

/// Bound for every condition polled here.
const WAIT: Duration = Duration::from_secs(10);
/// Between two polls of a condition.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Default services whose audit records go to `path`; the writer runs as a task.
pub(crate) fn audit_to(path: &Path) -> Services {
    let (audit, writer) = Audit::to_file(path, 4096).expect("audit file");
    tokio::spawn(writer.run());
    Services {
        audit,
        ..Services::default()
    }
}

/// Every line of an audit file, parsed (a line that is not JSON fails the test).
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Flushes the sink and re-reads `path` until `done` holds (bounded by [`WAIT`]).
pub(crate) async fn await_records(
    audit: &Audit,
    path: &Path,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        timeout(WAIT, audit.flush())
            .await
            .expect("audit flush within 10 s");
        let all = records(path);
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "audit records not as expected within {WAIT:?}:\n{}",
            pretty(&all)
        );
        tokio::time::sleep(POLL).await;
    }
}

pub(crate) fn pretty(records: &[Value]) -> String {
    records
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The session id of the `connect` record whose client is `client`, if any.
pub(crate) fn session_of(records: &[Value], client: SocketAddr) -> Option<String> {
    records
        .iter()
        .find(|r| r["event"] == "connect" && r["client"] == client.to_string())
        .map(|r| r["session"].as_str().expect("session id").to_owned())
}

/// True once the session of `client` has its `session_end`.
pub(crate) fn ended(records: &[Value], client: SocketAddr) -> bool {
    session_of(records, client).is_some_and(|id| {
        records
            .iter()
            .any(|r| r["session"] == id.as_str() && r["event"] == "session_end")
    })
}

/// The records of one session, in file order.
pub(crate) fn of_session<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["session"] == id).collect()
}

/// The one record of `event` in `session` (fails unless there is exactly one).
pub(crate) fn one<'a>(records: &'a [Value], id: &str, event: &str) -> &'a Value {
    let found: Vec<_> = of_session(records, id)
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "session {id}: expected one {event}:\n{}",
        pretty(records)
    );
    found[0]
}

/// Every session in `records` has exactly one `connect`, first, and exactly one `session_end`,
/// last; every record's `ts` is RFC 3339 UTC with milliseconds. Returns the session ids.
pub(crate) fn assert_well_formed(records: &[Value]) -> BTreeSet<String> {
    let mut sessions: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in records {
        assert_ts(r);
        match r["session"].as_str() {
            Some(id) => sessions.entry(id.to_owned()).or_default().push(r),
            None => assert_eq!(r["event"], "reload", "only reload has no session: {r}"),
        }
    }
    for (id, rs) in &sessions {
        let events: Vec<&str> = rs.iter().map(|r| r["event"].as_str().unwrap()).collect();
        assert_eq!(
            events.iter().filter(|e| **e == "connect").count(),
            1,
            "{id}: {events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| **e == "session_end").count(),
            1,
            "{id}: {events:?}"
        );
        assert_eq!(events.first(), Some(&"connect"), "{id}: {events:?}");
        assert_eq!(events.last(), Some(&"session_end"), "{id}: {events:?}");
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "session id {id:?}"
        );
    }
    sessions.into_keys().collect()
}

/// `ts` is RFC 3339, UTC, with exactly three fractional digits: `2026-01-02T03:04:05.678Z`.
fn assert_ts(record: &Value) {
    let ts = record["ts"]
        .as_str()
        .unwrap_or_else(|| panic!("no ts: {record}"));
    let parsed = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("ts {ts:?} is not RFC 3339: {e}"));
    assert_eq!(parsed.offset(), time::UtcOffset::UTC, "{ts}");
    assert!(
        ts.len() == 24 && ts.as_bytes()[19] == b'.' && ts.ends_with('Z'),
        "ts {ts:?} is not UTC with milliseconds"
    );
    let age = time::OffsetDateTime::now_utc() - parsed;
    assert!(
        age >= time::Duration::ZERO && age < time::Duration::minutes(5),
        "ts {ts} is not now"
    );
}

/// The keys of a record, sorted.
fn keys(record: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = record
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

/// A TCP connection to `to` from `from` (any loopback address: 127.0.0.0/8 is all local).
pub(crate) async fn tcp_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .unwrap_or_else(|e| panic!("bind {from:?}: {e}"));
    timeout(WAIT, socket.connect(to))
        .await
        .unwrap_or_else(|_| panic!("connect {to}: timed out"))
        .unwrap_or_else(|e| panic!("connect {to}: {e}"))
}

/// A line client to `to` from `from`, and its own address (what the audit record must name).
pub(crate) async fn client_from(from: [u8; 4], to: SocketAddr) -> (TcpLineClient, SocketAddr) {
    let tcp = tcp_from(from, to).await;
    let me = tcp.local_addr().expect("local addr");
    (LineClient::new(tcp), me)
}

/// Greeting, `LOGIN`, `LOGOUT`, then the server's close: one whole IMAP session.
async fn imap_login_logout(imap: &mut TcpLineClient, user: &str, password: &str) {
    let greeting = imap.read_line().await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let login = imap
        .imap("a", &format!("LOGIN {user} {password}"))
        .await
        .tagged;
    assert!(login.starts_with("a OK"), "{login}");
    let logout = imap.imap("b", "LOGOUT").await;
    assert!(logout.tagged.starts_with("b OK"), "{logout:?}");
    imap.expect_eof().await;
}

/// The connection is closed without a byte from the server (EOF or reset), within `within`.
async fn assert_closed_silently(tcp: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 256];
    match timeout(within, tcp.read(&mut buf)).await {
        Err(_) => panic!("not closed within {within:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "expected a close without a greeting, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

/// The first line of Dovecot's log containing every needle (bounded: Dovecot's log process
/// writes asynchronously).
pub(crate) async fn dovecot_line(dovecot: &Dovecot, needles: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = dovecot.log();
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needles:?} in Dovecot's log:\n{log}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// One HTTP/1.1 `GET` over a fresh connection: status and body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let work = async {
        let mut s = TcpStream::connect(addr).await.expect("connect admin");
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        out
    };
    let out = timeout(WAIT, work)
        .await
        .expect("admin answers within 10 s");
    let text = String::from_utf8(out).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    // axum answers these with Content-Length, so the body is plain.
    (status, body.to_owned())
}

/// Polls `path` until it answers `status` (bounded).
async fn await_status(addr: SocketAddr, path: &str, status: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, _) = http_get(addr, path).await;
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} answered {got}, not {status}, for {WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The sum of every sample of `name` whose labels include all of `labels`, from OpenMetrics
/// text (0 when there is none: a family without a sample yet).
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels.iter().all(|(k, v)| {
                    series_labels
                        .split(',')
                        .any(|pair| pair == format!("{k}=\"{v}\""))
                });
            matches.then(|| value.parse::<f64>().expect("sample value"))
        })
        .sum()
}

/// A real HAProxy (`haproxy -db`) from `tests/haproxy/send-proxy.cfg.in`: `front` relays to
/// `backend` with a PROXY v2 header. Killed when dropped.
pub(crate) struct HaProxy {
    child: Child,
    front: u16,
    dir: tempfile::TempDir,
}

impl HaProxy {
    async fn start(backend: SocketAddr) -> HaProxy {
        let front = free_port();
        HaProxy::from_template(
            "send-proxy.cfg.in",
            front,
            &[
                ("@FRONTEND_V1_PORT@", free_port().to_string()),
                ("@BACKEND_PORT@", backend.port().to_string()),
            ],
        )
        .await
    }

    /// `tests/haproxy/<template>` with `@FRONTEND_PORT@` = `front` and `vars` filled in, run
    /// until it listens on `front`.
    pub(crate) async fn from_template(
        template: &str,
        front: u16,
        vars: &[(&str, String)],
    ) -> HaProxy {
        let binary = [
            "/usr/sbin/haproxy",
            "/usr/local/sbin/haproxy",
            "/usr/bin/haproxy",
        ]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("haproxy not found; run scripts/install-test-deps");
        let template = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/haproxy")
            .join(template);
        let mut text = std::fs::read_to_string(template)
            .expect("template")
            .replace("@FRONTEND_PORT@", &front.to_string());
        for (name, value) in vars {
            text = text.replace(name, value);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, text).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log");
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let mut haproxy = HaProxy { child, front, dir };
        // Ready when the frontend accepts; each probe is relayed to mailgate as a session of
        // its own (from 127.0.0.1), which the tests tell apart by client address.
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", front)).await.is_err() {
            if let Some(status) = haproxy.child.try_wait().expect("try_wait") {
                panic!("haproxy exited: {status}\n{}", haproxy.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy not listening on {front}\n{}",
                haproxy.log()
            );
            tokio::time::sleep(POLL).await;
        }
        haproxy
    }

    pub(crate) fn front(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.front))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Audit records of real sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn audit_records_of_real_sessions() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let services = audit_to(&path);
    let audit = services.audit.clone();
    let mailgate = Mailgate::builder(&dovecot).start_with(services).await;
    let wrong = "Wr0ng-Passw0rd-7731";

    // IMAPS: login, SELECT, LOGOUT (Dovecot closes after its BYE).
    let tcp = TcpStream::connect(mailgate.addr("imaps"))
        .await
        .expect("connect");
    let imaps_client = tcp.local_addr().expect("local addr");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = timeout(WAIT, tls_connector(&Mailgate::ca_pem()).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let mut imap = LineClient::new(tls);
    assert!(imap.read_line().await.starts_with("* OK"));
    let login = imap.imap("a", "LOGIN alice@example.com alice-secret").await;
    assert!(login.tagged.starts_with("a OK"), "{login:?}");
    let select = imap.imap("b", "SELECT INBOX").await;
    assert!(select.tagged.starts_with("b OK"), "{select:?}");
    assert!(imap.imap("c", "LOGOUT").await.tagged.starts_with("c OK"));
    imap.expect_eof().await;
    drop(imap);

    // POP3: a wrong password, refused by Dovecot, then QUIT.
    let (mut pop3, pop3_client) = client_from([127, 0, 0, 1], mailgate.addr("pop3-plain")).await;
    assert!(pop3.read_line().await.starts_with("+OK"));
    assert!(
        pop3.command("USER alice@example.com")
            .await
            .starts_with("+OK")
    );
    let refused = pop3.command(&format!("PASS {wrong}")).await;
    assert!(refused.starts_with("-ERR"), "{refused}");
    assert!(pop3.command("QUIT").await.starts_with("+OK"));
    pop3.expect_eof().await;
    drop(pop3);

    // IMAP: greeting read, then the client goes away before any login.
    let (mut gone, gone_client) = client_from([127, 0, 0, 1], mailgate.addr("imap-plain")).await;
    assert!(gone.read_line().await.starts_with("* OK"));
    drop(gone);

    let all = await_records(&audit, &path, |r| {
        [imaps_client, pop3_client, gone_client]
            .iter()
            .all(|c| ended(r, *c))
    })
    .await;
    let sessions = assert_well_formed(&all);
    assert_eq!(sessions.len(), 3, "{}", pretty(&all));

    // The spliced IMAPS session.
    let id = session_of(&all, imaps_client).expect("imaps session");
    let connect = one(&all, &id, "connect");
    assert_eq!(
        keys(connect),
        [
            "client", "event", "listener", "protocol", "session", "sni", "tls", "ts"
        ]
    );
    assert_eq!(connect["listener"], "imaps");
    assert_eq!(connect["protocol"], "imap");
    assert_eq!(connect["client"], imaps_client.to_string());
    assert_eq!(connect["tls"], "TLSv1.3");
    assert_eq!(connect["sni"], "localhost");
    let auth = one(&all, &id, "auth");
    assert_eq!(
        keys(auth),
        [
            "client_id",
            "client_name",
            "decision",
            "event",
            "issuer",
            "mechanism",
            "ou",
            "policy_source",
            "reason",
            "session",
            "ts",
            "upstream",
            "user"
        ]
    );
    assert_eq!(auth["user"], "alice@example.com");
    assert_eq!(auth["mechanism"], "login");
    assert_eq!(auth["decision"], "allow");
    assert_eq!(auth["reason"], "ok");
    assert_eq!(auth["upstream"], "up-imap");
    assert_eq!(auth["client_id"], Value::Null);
    let end = one(&all, &id, "session_end");
    assert_eq!(
        keys(end),
        [
            "bytes_down",
            "bytes_up",
            "duration_ms",
            "end",
            "event",
            "session",
            "ts"
        ]
    );
    // LOGOUT: Dovecot closed first, in answer to the client's LOGOUT: the client's doing.
    assert_eq!(end["end"], "client_closed", "{end}");
    // SELECT and LOGOUT went up, their answers came down.
    assert!(end["bytes_up"].as_u64().unwrap() > 0, "{end}");
    assert!(end["bytes_down"].as_u64().unwrap() > 0, "{end}");
    assert!(end["duration_ms"].as_u64().is_some(), "{end}");

    // The refused POP3 login.
    let id = session_of(&all, pop3_client).expect("pop3 session");
    let connect = one(&all, &id, "connect");
    assert_eq!(connect["listener"], "pop3-plain");
    assert_eq!(connect["protocol"], "pop3");
    assert_eq!(connect["tls"], Value::Null);
    let auth = one(&all, &id, "auth");
    assert_eq!(auth["user"], "alice@example.com");
    assert_eq!(auth["mechanism"], "user");
    assert_eq!(auth["decision"], "deny");
    assert_eq!(auth["reason"], "upstream_rejected");
    assert_eq!(auth["upstream"], "up-pop3");
    let end = one(&all, &id, "session_end");
    assert_eq!(end["end"], "client_closed", "QUIT before login: {end}");
    assert_eq!(
        (end["bytes_up"].as_u64(), end["bytes_down"].as_u64()),
        (Some(0), Some(0))
    );

    // The pre-auth disconnect: connect and session_end, no auth.
    let id = session_of(&all, gone_client).expect("pre-auth session");
    assert_eq!(of_session(&all, &id).len(), 2, "{}", pretty(&all));
    assert_eq!(one(&all, &id, "session_end")["end"], "client_closed");

    // Neither password, right or wrong, is anywhere in the file.
    let text = std::fs::read_to_string(&path).expect("audit file");
    assert!(!text.contains("alice-secret"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    // Nor in mailgate's own log (this test's wrong password is unique to it).
    assert!(!crate::mailgate::captured_logs().contains(wrong));
}

// ---------------------------------------------------------------------------------------------
// 2. Exactly one session_end over every end path
// ---------------------------------------------------------------------------------------------

/// alice and bob in the root OU: IMAP and POP, passwords allowed.
const DIRECTORY: &str = r#"
internal_domains = ["example.com"]
[[ou]]
path = "/"
pop = true
imap = true
imap_clients = "all"
password_logins = true
[[user]]
email = "alice@example.com"
ou = "/"
[[user]]
email = "bob@example.com"
ou = "/"
"#;

#[tokio::test]
async fn every_end_path_writes_exactly_one_session_end() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let services = audit_to(&path);
    let audit = services.audit.clone();
    // Three mailgates sharing one audit sink: short limits; a policy to revoke; one to drain.
    let limited = Mailgate::builder(&dovecot)
        .limits("idle_timeout = \"1s\"\nauth_timeout = \"2s\"\nmax_auth_attempts = 1")
        .start_with(services.clone())
        .await;
    let revoking = Mailgate::builder(&dovecot)
        .policy(DIRECTORY, "revoke_on_reload = true")
        .start_with(services.clone())
        .await;
    let mut draining = Mailgate::builder(&dovecot)
        .limits("drain_timeout = \"1s\"")
        .start_with(services.clone())
        .await;
    let mut expected: Vec<(SocketAddr, &str, &str)> = Vec::new();

    // Client closes after login.
    let (mut c, me) = client_from([127, 0, 0, 1], draining.addr("imap-plain")).await;
    c.read_line().await;
    assert!(
        c.imap("a", "LOGIN alice@example.com alice-secret")
            .await
            .tagged
            .starts_with("a OK")
    );
    assert!(c.imap("b", "NOOP").await.tagged.starts_with("b OK"));
    drop(c);
    expected.push((me, "client_closed", "logged in, client closed"));

    // LOGOUT after login: Dovecot closes in answer, the client ended the session.
    let (mut c, me) = client_from([127, 0, 0, 1], draining.addr("imap-plain")).await;
    imap_login_logout(&mut c, "alice@example.com", "alice-secret").await;
    drop(c);
    expected.push((me, "client_closed", "LOGOUT after login"));

    // Upstream closes on its own: Dovecot's limit of 20 invalid commands in a row.
    let (mut c, me) = client_from([127, 0, 0, 1], draining.addr("imap-plain")).await;
    c.read_line().await;
    assert!(
        c.imap("a", "LOGIN alice@example.com alice-secret")
            .await
            .tagged
            .starts_with("a OK")
    );
    let mut bye = String::new();
    for _ in 0..30 {
        c.send_line("x BOGUS").await;
        bye = c.read_line().await;
        if bye.starts_with("* BYE") {
            break;
        }
    }
    assert!(bye.starts_with("* BYE"), "{bye}");
    c.expect_eof().await;
    drop(c);
    expected.push((me, "upstream_closed", "the upstream's own BYE"));

    // Pre-auth: POP3 QUIT, and a client that just goes away.
    let (mut c, me) = client_from([127, 0, 0, 1], draining.addr("pop3-plain")).await;
    c.read_line().await;
    assert!(c.command("QUIT").await.starts_with("+OK"));
    c.expect_eof().await;
    expected.push((me, "client_closed", "QUIT before login"));
    let (mut c, me) = client_from([127, 0, 0, 1], draining.addr("imap-plain")).await;
    c.read_line().await;
    drop(c);
    expected.push((me, "client_closed", "gone before login"));

    // Idle after login: autologout after 1 s of silence.
    let (mut c, me) = client_from([127, 0, 0, 1], limited.addr("imap-plain")).await;
    c.read_line().await;
    assert!(
        c.imap("a", "LOGIN alice@example.com alice-secret")
            .await
            .tagged
            .starts_with("a OK")
    );
    let bye = c.read_line().await;
    assert!(bye.starts_with("* BYE"), "{bye}");
    c.expect_eof().await;
    expected.push((me, "idle_timeout", "idle after login"));

    // No login within auth_timeout.
    let (mut c, me) = client_from([127, 0, 0, 1], limited.addr("imap-plain")).await;
    c.read_line().await;
    let bye = c.read_line().await;
    assert!(bye.starts_with("* BYE"), "{bye}");
    c.expect_eof().await;
    expected.push((me, "idle_timeout", "auth timeout"));

    // Too many failed attempts (max 1).
    let (mut c, me) = client_from([127, 0, 0, 1], limited.addr("imap-plain")).await;
    c.read_line().await;
    let no = c.imap("a", "LOGIN alice@example.com wrong").await;
    assert!(no.tagged.starts_with("a NO"), "{no:?}");
    // The BYE comes with or right after the NO.
    let rest = c.read_line_bytes().await;
    let all_text = format!("{:?}{}", no.untagged, String::from_utf8_lossy(&rest));
    assert!(all_text.contains("BYE") || rest.is_empty(), "{all_text}");
    c.expect_eof().await;
    expected.push((me, "error", "too many attempts"));

    // Revoked by a reload while logged in.
    let (mut c, me) = client_from([127, 0, 0, 1], revoking.addr("imap-plain")).await;
    c.read_line().await;
    assert!(
        c.imap("a", "LOGIN alice@example.com alice-secret")
            .await
            .tagged
            .starts_with("a OK")
    );
    let mut config = revoking.reloader.shared().current().config.as_ref().clone();
    config.directory = std::sync::Arc::new(
        mailgate::directory::Directory::from_toml(
            &DIRECTORY.replace("imap = true", "imap = false"),
        )
        .expect("directory"),
    );
    revoking.reloader.reload(config).expect("reload");
    let bye = c.read_line().await;
    assert!(bye.starts_with("* BYE [AUTHORIZATIONFAILED]"), "{bye}");
    c.expect_eof().await;
    expected.push((me, "revoked", "revoked by reload"));

    // Shutdown: one logged in (ended at the drain deadline), one not (ended at once).
    let (mut logged, logged_me) = client_from([127, 0, 0, 1], draining.addr("imap-plain")).await;
    logged.read_line().await;
    assert!(
        logged
            .imap("a", "LOGIN bob@example.com bob-secret")
            .await
            .tagged
            .starts_with("a OK")
    );
    let (mut waiting, waiting_me) = client_from([127, 0, 0, 1], draining.addr("pop3-plain")).await;
    waiting.read_line().await;
    let drained = draining.shutdown();
    assert_eq!(
        waiting.read_line().await,
        "-ERR [SYS/TEMP] Server shutting down"
    );
    assert_eq!(
        logged.read_line().await,
        "* BYE [UNAVAILABLE] Server shutting down"
    );
    drained.await.expect("drained");
    expected.push((logged_me, "shutdown", "logged in at shutdown"));
    expected.push((waiting_me, "shutdown", "not logged in at shutdown"));

    let all = await_records(&audit, &path, |r| {
        expected.iter().all(|(client, ..)| ended(r, *client))
    })
    .await;
    // Nothing else may arrive: every session of the three mailgates has ended.
    drop((limited, revoking, draining));
    let all = {
        timeout(WAIT, audit.flush()).await.expect("flush");
        let again = records(&path);
        assert_eq!(again.len(), all.len(), "late records:\n{}", pretty(&again));
        again
    };
    let sessions = assert_well_formed(&all);
    assert_eq!(sessions.len(), expected.len(), "{}", pretty(&all));
    for (client, end, what) in &expected {
        let id = session_of(&all, *client).expect("session");
        let record = one(&all, &id, "session_end");
        assert_eq!(record["end"], *end, "{what}: {record}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Rotation under the real binary: rename + SIGUSR1, nothing lost; /metrics of the binary
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rename_and_sigusr1_rotate_the_audit_file_without_losing_a_record() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let audit_path = dir.path().join("log/audit.log");
    let rotated = dir.path().join("log/audit.log.1");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("mailgate.toml");
    let toml = Mailgate::builder(&dovecot)
        .extra(&format!(
            "[audit]\nfile = \"{}\"\n\n[admin]\nbind = \"{admin}\"\n",
            audit_path.display()
        ))
        .toml();
    std::fs::write(&config, toml).expect("write config");
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
    let addr: SocketAddr = listening
        .rsplit("addr=")
        .next()
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening:?}"));
    // The admin listener is bound before the listeners log "listening".
    await_status(admin, "/readyz", 200).await;

    async fn batch(addr: SocketAddr, n: usize) -> Vec<SocketAddr> {
        let mut clients = Vec::new();
        for _ in 0..n {
            let (mut c, me) = client_from([127, 0, 0, 1], addr).await;
            imap_login_logout(&mut c, "alice@example.com", "alice-secret").await;
            clients.push(me);
        }
        clients
    }
    /// Polls the file until every client's session has ended in it (bounded).
    async fn await_file(path: &Path, clients: &[SocketAddr]) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let all = records(path);
            if clients.iter().all(|c| ended(&all, *c)) {
                return all;
            }
            assert!(Instant::now() < deadline, "{}", pretty(&all));
            tokio::time::sleep(POLL).await;
        }
    }

    let before = batch(addr, 3).await;
    await_file(&audit_path, &before).await;

    // logrotate's way: rename, then SIGUSR1.
    std::fs::rename(&audit_path, &rotated).expect("rename");
    // SAFETY: plain FFI call sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    wait_for(&mut lines, "SIGUSR1: reopening the audit log").await;
    // mailgate creates the new file on the signal (packaging/logrotate uses `nocreate`).
    let deadline = Instant::now() + WAIT;
    while !audit_path.exists() {
        assert!(
            Instant::now() < deadline,
            "no new {} within {WAIT:?} of SIGUSR1",
            audit_path.display()
        );
        tokio::time::sleep(POLL).await;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&audit_path)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "new audit file mode {mode:o}");

    let after = batch(addr, 3).await;
    await_file(&audit_path, &after).await;

    // The binary's /metrics, during the run.
    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &text,
            "mailgate_logins_total",
            &[
                ("protocol", "imap"),
                ("decision", "allow"),
                ("reason", "ok")
            ]
        ),
        6.0,
        "{text}"
    );

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    crate::reload::exits_cleanly(child).await;

    let old = records(&rotated);
    let new = records(&audit_path);
    assert_well_formed(&old);
    assert_well_formed(&new);
    for client in &before {
        let id = session_of(&old, *client).expect("before-rotation session in the rotated file");
        for event in ["connect", "auth", "session_end"] {
            one(&old, &id, event);
        }
        assert!(of_session(&new, &id).is_empty(), "{id} in both files");
    }
    for client in &after {
        let id = session_of(&new, *client).expect("after-rotation session in the new file");
        for event in ["connect", "auth", "session_end"] {
            one(&new, &id, event);
        }
        assert!(of_session(&old, &id).is_empty(), "{id} in both files");
    }
    // Only our sessions: nothing lost, nothing extra.
    assert_eq!(old.len(), 3 * before.len(), "{}", pretty(&old));
    assert_eq!(new.len(), 3 * after.len(), "{}", pretty(&new));
}

// ---------------------------------------------------------------------------------------------
// 4. A real HAProxy in front sending PROXY v2
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_proxy_v2_names_the_real_client_and_others_are_refused() {
    let dovecot = Dovecot::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let services = audit_to(&path);
    let audit = services.audit.clone();
    let metrics = services.metrics.clone();
    let mailgate = Mailgate::builder(&dovecot)
        .listener(
            "imap-proxied",
            "imap",
            "none",
            "proxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]",
        )
        .imap_upstream_options("send_id = true")
        .start_with(services)
        .await;
    let listener = mailgate.addr("imap-proxied");

    // Trusted (127.0.0.1) but silent: no header ever comes, closed at the 10 s header timeout
    // without a greeting. Started first, checked last.
    let silent = tokio::spawn(async move {
        let mut tcp = tcp_from([127, 0, 0, 1], listener).await;
        let me = tcp.local_addr().expect("local addr");
        assert_closed_silently(&mut tcp, Duration::from_secs(20)).await;
        me
    });

    let haproxy = HaProxy::start(listener).await;
    // A client on 127.0.0.2 logs in through HAProxy.
    let (mut c, me) = client_from([127, 0, 0, 2], haproxy.front()).await;
    imap_login_logout(&mut c, "alice@example.com", "alice-secret").await;
    drop(c);

    // Straight to the listener from an untrusted address, with a header naming someone else.
    let mut untrusted = tcp_from([127, 0, 0, 3], listener).await;
    let untrusted_me = untrusted.local_addr().expect("local addr");
    let spoofed: SocketAddr = "198.51.100.7:40000".parse().expect("addr");
    let mut hello = mailgate::proto::proxy_header::encode_v2(spoofed, listener);
    hello.extend_from_slice(b"a LOGIN alice@example.com alice-secret\r\n");
    // mailgate may close before or while this arrives: a failed write is the same answer.
    let _ = untrusted.write_all(&hello).await;
    assert_closed_silently(&mut untrusted, WAIT).await;

    // From the trusted address but without a header: an IMAP command instead.
    let mut headerless = tcp_from([127, 0, 0, 1], listener).await;
    let headerless_me = headerless.local_addr().expect("local addr");
    let _ = headerless
        .write_all(b"a LOGIN alice@example.com alice-secret\r\nb NOOP\r\n")
        .await;
    assert_closed_silently(&mut headerless, WAIT).await;

    let silent_me = timeout(Duration::from_secs(25), silent)
        .await
        .expect("silent client done")
        .expect("silent client");

    let all = await_records(&audit, &path, |r| {
        [me, untrusted_me, headerless_me, silent_me]
            .iter()
            .all(|c| ended(r, *c))
    })
    .await;
    assert_well_formed(&all);

    // Through HAProxy: the client's own address, not HAProxy's 127.0.0.1.
    let id = session_of(&all, me).expect("the proxied session is recorded by its real client");
    let connect = one(&all, &id, "connect");
    assert_eq!(connect["client"], me.to_string());
    assert_eq!(connect["listener"], "imap-proxied");
    assert_eq!(one(&all, &id, "auth")["decision"], "allow");
    assert_eq!(one(&all, &id, "session_end")["end"], "client_closed");
    // Every non-probe session on the proxied listener from HAProxy: none names 127.0.0.2
    // except ours, and the spoofed address appears nowhere.
    let text = std::fs::read_to_string(&path).expect("audit");
    assert!(!text.contains("198.51.100.7"), "{text}");
    // And Dovecot, told by ID, logged the same real address.
    dovecot_line(&dovecot, &["user=<alice@example.com>", "rip=127.0.0.2"]).await;

    // The refused ones: recorded under their real peer, ended as errors, no auth.
    for refused in [untrusted_me, headerless_me, silent_me] {
        let id = session_of(&all, refused).expect("refused connection recorded");
        assert_eq!(of_session(&all, &id).len(), 2, "{}", pretty(&all));
        assert_eq!(one(&all, &id, "session_end")["end"], "error");
    }
    let text = metrics.encode();
    let refused = |reason| {
        metric(
            &text,
            "mailgate_connections_refused_total",
            &[("listener", "imap-proxied"), ("reason", reason)],
        )
    };
    assert_eq!(refused("proxy_untrusted"), 1.0, "{text}");
    assert_eq!(refused("proxy_header"), 2.0, "{text}");
    drop(haproxy);
}

// ---------------------------------------------------------------------------------------------
// 5. Dovecot sees the real client address
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn dovecot_logs_the_real_client_address_sent_by_id() {
    // login_trusted_networks = 127.0.0.1/32 (the harness default): Dovecot believes our ID.
    let dovecot = Dovecot::start();
    let with_id = Mailgate::builder(&dovecot)
        .imap_upstream_options("send_id = true")
        .start()
        .await;
    let (mut c, _) = client_from([127, 0, 0, 2], with_id.addr("imap-plain")).await;
    imap_login_logout(&mut c, "alice@example.com", "alice-secret").await;
    let line = dovecot_line(&dovecot, &["Login: user=<alice@example.com>"]).await;
    assert!(line.contains("rip=127.0.0.2"), "{line}");

    // Without send_id Dovecot sees only mailgate's address: the check above is not vacuous.
    let without = Mailgate::builder(&dovecot)
        .upstream_options("send_id = false")
        .start()
        .await;
    let (mut c, _) = client_from([127, 0, 0, 2], without.addr("imap-plain")).await;
    imap_login_logout(&mut c, "bob@example.com", "bob-secret").await;
    let line = dovecot_line(&dovecot, &["Login: user=<bob@example.com>"]).await;
    assert!(line.contains("rip=127.0.0.1"), "{line}");
}

#[tokio::test]
async fn dovecot_logs_the_real_client_address_sent_by_proxy_v2() {
    // An extra implicit-TLS listener on Dovecot that expects a PROXY header from 127.0.0.1
    // (the harness' readiness probe connects without one, so the header goes on its own port).
    let port = free_port();
    let dovecot = Dovecot::builder()
        .extra_config(&format!(
            "haproxy_trusted_networks = 127.0.0.1/32\n\
             service imap-login {{\n  inet_listener imaps-haproxy {{\n    address = 127.0.0.1\n    \
             port = {port}\n    ssl = yes\n    haproxy = yes\n  }}\n}}\n"
        ))
        .start();
    let mailgate = Mailgate::builder(&dovecot)
        .imap_upstream(UpstreamSpec {
            addresses: vec![format!("127.0.0.1:{port}")],
            tls: "implicit",
            ca_file: dovecot.ca_pem.clone(),
        })
        .imap_upstream_options("send_proxy_protocol = true")
        .start()
        .await;
    let (mut c, me) = client_from([127, 0, 0, 2], mailgate.addr("imap-plain")).await;
    imap_login_logout(&mut c, "alice@example.com", "alice-secret").await;
    let line = dovecot_line(&dovecot, &["Login: user=<alice@example.com>"]).await;
    assert!(line.contains("rip=127.0.0.2"), "{line}");
    // The header's destination is the address the client connected to: mailgate's listener.
    let lip = format!("lip={}", mailgate.addr("imap-plain").ip());
    assert!(line.contains(&lip), "{line}");
    let _ = me;
}

// ---------------------------------------------------------------------------------------------
// 6. /metrics and /readyz during a run
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_move_with_logins_and_readyz_follows_the_drain() {
    let dovecot = Dovecot::start();
    let services = Services::default();
    let mut mailgate = Mailgate::builder(&dovecot)
        .limits("drain_timeout = \"3s\"")
        .start_with(services.clone())
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let admin = listener.local_addr().expect("admin addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mailgate::admin::serve(
        listener,
        services.metrics.clone(),
        services.readiness.clone(),
        mailgate::config::Admin::default(),
        async {
            let _ = stopped.await;
        },
    ));
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    // Ready once the server runs (it sets the flag when its accept loops start).
    await_status(admin, "/readyz", 200).await;
    let (_, before) = http_get(admin, "/metrics").await;

    let plain = mailgate.addr("imap-plain");
    let (mut c, _) = client_from([127, 0, 0, 1], plain).await;
    imap_login_logout(&mut c, "alice@example.com", "alice-secret").await;
    drop(c);
    let (mut c, _) = client_from([127, 0, 0, 1], plain).await;
    c.read_line().await;
    let no = c.imap("a", "LOGIN alice@example.com nope").await;
    assert!(no.tagged.starts_with("a NO"), "{no:?}");
    assert!(c.imap("b", "LOGOUT").await.tagged.starts_with("b OK"));
    c.expect_eof().await;
    drop(c);

    // Both sessions over: the gauge back to 0 and both counted as ended.
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let (status, text) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        let ended = metric(
            &text,
            "mailgate_sessions_ended_total",
            &[("protocol", "imap")],
        ) - metric(
            &before,
            "mailgate_sessions_ended_total",
            &[("protocol", "imap")],
        );
        if metric(&text, "mailgate_connections_active", &[]) == 0.0 && ended == 2.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(POLL).await;
    };
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(
        delta(
            "mailgate_logins_total",
            &[
                ("protocol", "imap"),
                ("decision", "allow"),
                ("reason", "ok")
            ]
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta(
            "mailgate_logins_total",
            &[
                ("protocol", "imap"),
                ("decision", "deny"),
                ("reason", "upstream_rejected")
            ]
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta("mailgate_connections_total", &[("listener", "imap-plain")]),
        2.0
    );
    assert_eq!(
        delta(
            "mailgate_sessions_ended_total",
            &[("protocol", "imap"), ("end", "client_closed")]
        ),
        2.0,
        "LOGOUT after login and LOGOUT before it: {after}"
    );
    assert!(
        metric(
            &after,
            "mailgate_bytes_total",
            &[("protocol", "imap"), ("side", "upstream")]
        ) > 0.0,
        "{after}"
    );
    assert!(
        metric(
            &after,
            "mailgate_bytes_total",
            &[("protocol", "imap"), ("side", "downstream")]
        ) > 0.0,
        "{after}"
    );
    assert_eq!(
        delta(
            "mailgate_upstream_connect_seconds_count",
            &[("protocol", "imap")]
        ),
        1.0,
        "{after}"
    );
    assert!(
        metric(
            &after,
            "mailgate_upstream_login_seconds_count",
            &[("protocol", "imap")]
        ) >= 1.0,
        "{after}"
    );
    assert!(after.ends_with("# EOF\n"));

    // A live session shows in the gauge; during the drain /readyz is 503 while it is served.
    let (mut live, _) = client_from([127, 0, 0, 1], plain).await;
    live.read_line().await;
    assert!(
        live.imap("a", "LOGIN bob@example.com bob-secret")
            .await
            .tagged
            .starts_with("a OK")
    );
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "mailgate_connections_active",
            &[("listener", "imap-plain")]
        ),
        1.0,
        "{text}"
    );
    let drained = mailgate.shutdown();
    await_status(admin, "/readyz", 503).await;
    assert!(live.imap("b", "NOOP").await.tagged.starts_with("b OK"));
    assert_eq!(
        live.read_line().await,
        "* BYE [UNAVAILABLE] Server shutting down"
    );
    drained.await.expect("drained");
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(&text, "mailgate_connections_active", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "mailgate_sessions_ended_total",
            &[("protocol", "imap"), ("end", "shutdown")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(http_get(admin, "/readyz").await.0, 503);
    stop.send(()).expect("admin running");
    timeout(WAIT, server)
        .await
        .expect("admin stops")
        .expect("join")
        .expect("serve");
}
