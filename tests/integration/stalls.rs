//! Peers that stop reading or leave at the wrong moment (issue 9): a client that pipelines
//! commands before login and never reads the answers is closed at `auth_timeout`; a logged-in
//! client that stops reading mid-FETCH is closed at `send_timeout`; a client that closes right
//! after its LOGIN ends the upstream login at once, while bytes it pipelines during the login
//! still reach the upstream; and an upstream that answers the login with `* BYE` refused a
//! login, it is not down. Real Dovecot wherever it can behave so on demand; the fake upstream
//! only for a login that stalls or is slow (a real Dovecot answers at once).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mailgate::audit::Audit;
use mailgate::server::Services;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::{Instant, timeout};

use crate::dovecot::Dovecot;
use crate::fake;
use crate::mailgate::{Mailgate, MailgateBuilder, UpstreamSpec};
use crate::util::{LineClient, TcpLineClient, TlsLineClient};

/// The `auth_timeout` of the pipelining tests.
const AUTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The `send_timeout` of the stalled FETCH test.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest any wait here may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

/// mailgate with an audit file, its records readable with [`Rig::records`].
struct Rig {
    mailgate: Mailgate,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(builder: MailgateBuilder) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = dir.path().join("audit.jsonl");
        let (sink, writer) = Audit::to_file(&audit, 4096).expect("audit file");
        tokio::spawn(writer.run());
        let mailgate = builder
            .start_with(Services {
                audit: sink,
                ..Services::default()
            })
            .await;
        Rig {
            mailgate,
            audit,
            _dir: dir,
        }
    }

    /// Flushes the sink and re-reads the audit file until `done` holds (bounded by [`WAIT`]).
    async fn records_when(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            timeout(WAIT, self.mailgate.services.audit.flush())
                .await
                .expect("audit flush");
            let all = read_records(&self.audit);
            if done(&all) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "audit records not as expected within {WAIT:?}:\n{}",
                all.iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sessions mailgate is serving now (`mailgate_connections_active`).
    fn active(&self) -> i64 {
        self.mailgate
            .services
            .metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("mailgate_connections_active{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as i64)
            .sum()
    }
}

fn read_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn of<'a>(records: &'a [Value], event: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

/// Polls `done` every 10 ms until it holds; fails the test after `limit`.
async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `commands` over and over and never reads, until the write fails (mailgate closed the
/// connection: its reset, or EPIPE after its FIN) or [`WAIT`] passes. Returns when the write
/// failed, `None` if it never did.
async fn pipeline_without_reading<S: AsyncWrite + Unpin>(
    stream: &mut S,
    commands: &[u8],
) -> Option<Instant> {
    let batch = commands.repeat(64 * 1024 / commands.len());
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, stream.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Some(Instant::now()),
            Err(_) => return None,
        }
    }
}

/// The pipelining client of issue 9 against `listener`: pipelined commands, never a read.
/// mailgate must close it at `auth_timeout` (not later, not earlier) and record the end.
async fn pipeliner_is_closed_at_the_deadline<S>(rig: &Rig, mut stream: S, commands: &[u8])
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let closed = pipeline_without_reading(&mut stream, commands)
        .await
        .unwrap_or_else(|| panic!("still open after {WAIT:?} of pipelining without reading"));
    let after = closed - started;
    println!(
        "pipeliner {:?}: closed by mailgate after {after:?}",
        String::from_utf8_lossy(commands)
    );
    assert!(
        after >= AUTH_TIMEOUT - Duration::from_millis(200),
        "closed after {after:?}, before the {AUTH_TIMEOUT:?} auth_timeout"
    );
    assert!(
        after < AUTH_TIMEOUT + Duration::from_secs(3),
        "closed after {after:?}, {AUTH_TIMEOUT:?} auth_timeout"
    );
    // Closed for good: whatever answers were still in flight, then EOF or a reset.
    let mut sink = vec![0u8; 64 * 1024];
    let drained = timeout(WAIT, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection was not closed");
    let records = rig.records_when(|r| !of(r, "session_end").is_empty()).await;
    let ends = of(&records, "session_end");
    assert_eq!(ends.len(), 1, "{records:?}");
    assert_eq!(ends[0]["end"], "idle_timeout", "{}", ends[0]);
    let ms = ends[0]["duration_ms"].as_u64().expect("duration_ms");
    assert!(ms < 5_000, "{}", ends[0]);
    wait_until(WAIT, "the session is gone", || rig.active() == 0).await;
}

/// IMAP over implicit TLS: thousands of `NOOP` / `CAPABILITY` lines, no read. Before the fix
/// mailgate's write of the answers blocked forever, past `auth_timeout` (170 s in issue 9).
#[tokio::test]
async fn imap_pipeliner_that_never_reads_is_closed_at_auth_timeout() {
    let dovecot = Dovecot::start();
    let rig = Rig::start(
        Mailgate::builder(&dovecot)
            .limits(&format!("auth_timeout = \"{}s\"", AUTH_TIMEOUT.as_secs())),
    )
    .await;
    let client =
        TlsLineClient::connect_tls(rig.mailgate.addr("imaps"), &Mailgate::ca_pem(), "localhost")
            .await;
    let stream = client.into_inner();
    pipeliner_is_closed_at_the_deadline(&rig, stream, b"a NOOP\r\nb CAPABILITY\r\n").await;
}

/// POP3 over plain TCP: `CAPA` / `NOOP`, no read (>95 s before the fix).
#[tokio::test]
async fn pop3_pipeliner_that_never_reads_is_closed_at_auth_timeout() {
    let dovecot = Dovecot::start();
    let rig = Rig::start(
        Mailgate::builder(&dovecot)
            .limits(&format!("auth_timeout = \"{}s\"", AUTH_TIMEOUT.as_secs())),
    )
    .await;
    let client = TcpLineClient::connect(rig.mailgate.addr("pop3-plain")).await;
    let stream = client.into_inner();
    pipeliner_is_closed_at_the_deadline(&rig, stream, b"CAPA\r\nNOOP\r\n").await;
}

/// A logged-in client that stops reading while a 16 MB FETCH streams down: after
/// `send_timeout` without a byte accepted, mailgate ends the session (`end = "error"`) and
/// closes both sides; Dovecot sees its connection go. Without it, the session held both
/// sockets and the buffered megabytes until `idle_timeout` (30 min).
#[tokio::test]
async fn logged_in_client_that_stops_reading_is_closed_at_send_timeout() {
    let dovecot = Dovecot::start();
    let mut big = b"From: a@example.com\r\nTo: alice@example.com\r\nSubject: big\r\n\r\n".to_vec();
    while big.len() < 16 * 1024 * 1024 {
        big.extend_from_slice(&[b'x'; 998]);
        big.extend_from_slice(b"\r\n");
    }
    dovecot.deliver("alice@example.com", &big);
    let rig = Rig::start(
        Mailgate::builder(&dovecot)
            .limits(&format!("send_timeout = \"{}s\"", SEND_TIMEOUT.as_secs())),
    )
    .await;
    // A small receive window, so mailgate's send buffer fills quickly.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = timeout(WAIT, socket.connect(rig.mailgate.addr("imap-plain")))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut c = LineClient::new(tcp);
    assert!(c.read_line().await.starts_with("* OK"));
    let login = c.imap("a", "LOGIN alice@example.com alice-secret").await;
    assert_eq!(login.status(), "OK", "{login:?}");
    let select = c.imap("b", "SELECT INBOX").await;
    assert_eq!(select.status(), "OK", "{select:?}");
    c.send_line("c FETCH * BODY[]").await;
    let stopped = Instant::now();
    // From here on the client reads nothing.
    let records = rig.records_when(|r| !of(r, "session_end").is_empty()).await;
    let took = stopped.elapsed();
    println!("stalled FETCH: session ended {took:?} after the client stopped reading");
    let end = of(&records, "session_end")[0].clone();
    assert_eq!(end["end"], "error", "{end}");
    assert!(
        end["bytes_down"].as_u64().expect("bytes_down") < big.len() as u64,
        "{end}"
    );
    assert!(
        took >= SEND_TIMEOUT && took < SEND_TIMEOUT + Duration::from_secs(5),
        "ended {took:?} after the client stopped reading (send_timeout {SEND_TIMEOUT:?})"
    );
    wait_until(WAIT, "the session is gone", || rig.active() == 0).await;
    wait_until(WAIT, "Dovecot sees the upstream connection closed", || {
        dovecot
            .log()
            .lines()
            .any(|l| l.contains("imap(alice@example.com)") && l.contains("Disconnected"))
    })
    .await;
    // The client's side is closed too: what was in flight, then EOF or a reset.
    let mut stream = c.into_inner();
    let mut sink = vec![0u8; 64 * 1024];
    let closed = timeout(WAIT, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the client connection was not closed");
}

fn plain(addr: SocketAddr) -> UpstreamSpec {
    UpstreamSpec {
        addresses: vec![addr.to_string()],
        tls: "none",
        ca_file: Mailgate::ca_pem(),
    }
}

/// An IMAP upstream that reads the login and then says nothing (a real Dovecot will not stall
/// on demand).
async fn imap_stalling_on_login() -> fake::Fake {
    fake::upstream()
        .greet(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n")
        .read_line()
        .stall()
        .run()
        .await
}

/// A client that closes right after its LOGIN / PASS, while the upstream login is in flight,
/// ends it at once: the upstream connection is closed within a second (not at the 30 s
/// `login_timeout`), with one `auth` record (`client_closed`) and one `session_end`. The fake
/// upstream reads the login and then stalls: a real Dovecot will not stall on demand.
#[tokio::test]
async fn client_closing_during_the_upstream_login_ends_it_at_once() {
    let imap_up = imap_stalling_on_login().await;
    let pop3_up = fake::upstream()
        .greet(b"+OK fake\r\n")
        .answer(b"+OK\r\n")
        .read_line()
        .stall()
        .run()
        .await;
    let rig = Rig::start(
        Mailgate::builder_for(plain(imap_up.addr), plain(pop3_up.addr)).login_timeout("30s"),
    )
    .await;
    for (n, (listener, up)) in [("imap-plain", &imap_up), ("pop3-plain", &pop3_up)]
        .into_iter()
        .enumerate()
    {
        let mut c = TcpLineClient::connect(rig.mailgate.addr(listener)).await;
        c.read_line().await;
        let credential = if listener == "imap-plain" {
            c.send_line("a LOGIN alice@example.com alice-secret").await;
            " LOGIN "
        } else {
            assert!(c.command("USER alice@example.com").await.starts_with("+OK"));
            c.send_line("PASS alice-secret").await;
            "PASS "
        };
        // Readiness: the upstream has the login, and is sitting on it.
        wait_until(WAIT, "the upstream reads the login", || {
            up.seen().iter().any(|l| l.contains(credential))
        })
        .await;
        drop(c);
        let closed = Instant::now();
        wait_until(
            Duration::from_secs(1),
            "the upstream connection is closed",
            || up.live() == 0,
        )
        .await;
        let records = rig.records_when(|r| of(r, "session_end").len() > n).await;
        println!(
            "{listener}: upstream login ended {:?} after the client closed",
            closed.elapsed()
        );
        assert!(
            closed.elapsed() < Duration::from_secs(1),
            "{:?}",
            closed.elapsed()
        );
        let auths = of(&records, "auth");
        assert_eq!(auths.len(), n + 1, "{records:?}");
        assert_eq!(auths[n]["reason"], "client_closed", "{}", auths[n]);
        assert_eq!(auths[n]["decision"], "deny", "{}", auths[n]);
        let end = of(&records, "session_end")[n];
        assert_eq!(end["end"], "client_closed", "{end}");
    }
    wait_until(WAIT, "the sessions are gone", || rig.active() == 0).await;
}

/// A client that floods while its login is in flight (more than a login may have pipelined
/// behind it) gets `* BYE` and is closed at once; the upstream login is abandoned too.
#[tokio::test]
async fn client_flooding_during_the_upstream_login_is_closed_and_the_login_abandoned() {
    let imap_up = imap_stalling_on_login().await;
    let pop3_up = fake::upstream().stall().run().await;
    let rig = Rig::start(
        Mailgate::builder_for(plain(imap_up.addr), plain(pop3_up.addr)).login_timeout("30s"),
    )
    .await;
    let mut c = TcpLineClient::connect(rig.mailgate.addr("imap-plain")).await;
    c.read_line().await;
    c.send_line("a LOGIN alice@example.com alice-secret").await;
    wait_until(WAIT, "the upstream reads the login", || {
        imap_up.seen().iter().any(|l| l.contains(" LOGIN "))
    })
    .await;
    // More than one line and two literals (the limits' largest message), without a line end.
    c.send(&[b'x'; 40 * 1024]).await;
    assert_eq!(
        c.read_line().await,
        "* BYE Too much input before the login completed"
    );
    c.expect_eof().await;
    wait_until(
        Duration::from_secs(1),
        "the upstream connection is closed",
        || imap_up.live() == 0,
    )
    .await;
    let records = rig.records_when(|r| !of(r, "session_end").is_empty()).await;
    assert_eq!(of(&records, "auth")[0]["reason"], "client_closed");
    assert_eq!(of(&records, "session_end")[0]["end"], "error");
}

/// Bytes a client pipelines while its login is in flight are not lost by the race: they reach
/// the upstream after the login, exactly once. The fake upstream answers the login after a
/// second (a slow password check), so the bytes arrive while mailgate waits for it.
#[tokio::test]
async fn bytes_sent_during_the_upstream_login_reach_the_upstream() {
    let imap_up = fake::upstream()
        .greet(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n")
        .read_line()
        .pause(Duration::from_secs(1))
        .send(b"mg1 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
        .answer_tagged("OK NOOP completed")
        .stall()
        .run()
        .await;
    let pop3_up = fake::upstream()
        .greet(b"+OK fake\r\n")
        .answer(b"+OK\r\n")
        .read_line()
        .pause(Duration::from_secs(1))
        .send(b"+OK Logged in\r\n")
        .answer(b"+OK noop\r\n")
        .stall()
        .run()
        .await;
    let rig = Rig::start(Mailgate::builder_for(
        plain(imap_up.addr),
        plain(pop3_up.addr),
    ))
    .await;

    let mut imap = TcpLineClient::connect(rig.mailgate.addr("imap-plain")).await;
    imap.read_line().await;
    imap.send_line("a LOGIN alice@example.com alice-secret")
        .await;
    wait_until(WAIT, "the upstream reads the login", || {
        imap_up.seen().iter().any(|l| l.contains(" LOGIN "))
    })
    .await;
    imap.send_line("b NOOP").await;
    assert!(imap.read_line().await.starts_with("a OK"));
    assert_eq!(imap.read_line().await, "b OK NOOP completed");
    assert_eq!(
        imap_up.seen().iter().filter(|l| *l == "b NOOP").count(),
        1,
        "{:?}",
        imap_up.seen()
    );

    let mut pop3 = TcpLineClient::connect(rig.mailgate.addr("pop3-plain")).await;
    pop3.read_line().await;
    assert!(
        pop3.command("USER alice@example.com")
            .await
            .starts_with("+OK")
    );
    pop3.send_line("PASS alice-secret").await;
    wait_until(WAIT, "the upstream reads the password", || {
        pop3_up.seen().iter().any(|l| l.starts_with("PASS "))
    })
    .await;
    pop3.send_line("NOOP").await;
    assert_eq!(pop3.read_line().await, "+OK Logged in");
    assert_eq!(pop3.read_line().await, "+OK noop");
    assert_eq!(
        pop3_up.seen().iter().filter(|l| *l == "NOOP").count(),
        1,
        "{:?}",
        pop3_up.seen()
    );
}

/// Dovecot answers a LOGIN too long for its input buffer (here a 5000-byte password) with
/// `* BYE Input buffer full, aborting` and closes. That is a failed login: the client gets the
/// generic credentials failure (never the upstream's text), the audit says
/// `upstream_rejected`, and the connection stays usable. Before the fix it was a temporary
/// failure, `upstream_unavailable`.
#[tokio::test]
async fn upstream_bye_after_the_login_command_is_a_failed_login() {
    let dovecot = Dovecot::start();
    let rig = Rig::start(Mailgate::builder(&dovecot)).await;
    let mut c = TcpLineClient::connect(rig.mailgate.addr("imap-plain")).await;
    c.read_line().await;
    let long = "p".repeat(5000);
    let reply = c
        .command(&format!("a LOGIN alice@example.com {long}"))
        .await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED] "), "{reply}");
    assert!(
        !reply.contains("Input buffer"),
        "upstream text relayed: {reply}"
    );
    let records = rig.records_when(|r| !of(r, "auth").is_empty()).await;
    assert_eq!(of(&records, "auth")[0]["reason"], "upstream_rejected");
    // One attempt used, the session goes on.
    let ok = c.imap("b", "LOGIN alice@example.com alice-secret").await;
    assert_eq!(ok.status(), "OK", "{ok:?}");
}

/// At `max_connections`, connections that never log in make room for new ones, oldest first,
/// as Dovecot's login processes do; logged-in sessions are never touched. Before: the cap full
/// of idle pre-login connections from many addresses (each under its allowance) refused every
/// new client with `* BYE Too many connections` until their `auth_timeout`.
#[tokio::test]
async fn at_max_connections_the_oldest_idle_prelogin_connection_makes_room() {
    let dovecot = Dovecot::start();
    let rig = Rig::start(Mailgate::builder(&dovecot).limits("max_connections = 6")).await;
    let plain = rig.mailgate.addr("imap-plain");
    // Six idle connections, greeted, never logging in: the cap is full.
    let mut idle = Vec::new();
    for _ in 0..6 {
        let mut c = TcpLineClient::connect(plain).await;
        assert!(c.read_line().await.starts_with("* OK"));
        idle.push(c);
    }
    // A new client gets in and logs in; the oldest idle one was told why and closed.
    let mut alice = TcpLineClient::connect(plain).await;
    assert!(alice.read_line().await.starts_with("* OK"));
    let done = alice
        .imap("a1", "LOGIN alice@example.com alice-secret")
        .await;
    assert!(done.tagged.starts_with("a1 OK"), "{}", done.tagged);
    let mut oldest = idle.remove(0);
    assert_eq!(
        oldest.read_line().await,
        "* BYE [UNAVAILABLE] Too many connections, try again later"
    );
    oldest.expect_eof().await;
    // Five more logins displace the other five idle ones; then the cap holds six logged-in
    // sessions and a seventh connection is refused at once, the sessions untouched.
    let mut sessions = vec![alice];
    for i in 0..5 {
        let mut c = TcpLineClient::connect(plain).await;
        assert!(c.read_line().await.starts_with("* OK"));
        let done = c.imap("b1", "LOGIN bob@example.com bob-secret").await;
        assert!(
            done.tagged.starts_with("b1 OK"),
            "login {i}: {}",
            done.tagged
        );
        sessions.push(c);
    }
    for mut c in idle {
        assert!(c.read_line().await.starts_with("* BYE [UNAVAILABLE]"));
    }
    let mut refused = TcpLineClient::connect(plain).await;
    assert_eq!(
        refused.read_line().await,
        "* BYE [UNAVAILABLE] Too many connections, try again later"
    );
    for c in &mut sessions {
        let done = c.imap("n1", "NOOP").await;
        assert!(done.tagged.starts_with("n1 OK"), "{}", done.tagged);
    }
    // The displaced ones are in the audit log as such.
    let records = rig
        .records_when(|all| {
            all.iter()
                .filter(|r| r["event"] == "session_end" && r["end"] == "displaced")
                .count()
                == 6
        })
        .await;
    assert!(!records.is_empty());
}
