//! Fault tests: mailgate in front of the hand-written fakes of [`crate::fake`] (a real Dovecot or
//! IdP will not fail on demand). Every upstream fault before the login completes is a temporary
//! failure (IMAP `NO [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`), except a close once the login
//! command is out: that is the upstream's answer to the login, a failed login (issue 9,
//! `upstream_rejected`, `NO [AUTHENTICATIONFAILED]` / `-ERR [AUTH]`); after the login the splice ends and
//! the client sees the connection close; every IdP fault is a temporary failure too, never an
//! allow and never the XOAUTH2 challenge. Each attempt leaves exactly one `auth` audit record,
//! each connection one `connect` and one `session_end`; nothing panics; and the whole suite,
//! repeated, leaves the process's file descriptor and task counts where they were
//! ([`fault_suite_leaks_no_fd_or_task`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use mailgate::admin::Readiness;
use mailgate::audit::Audit;
use mailgate::metrics::Metrics;
use mailgate::server::Services;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fake::{self, Fake};
use crate::mailgate::{Mailgate, MailgateBuilder, UpstreamSpec, captured_logs};
use crate::util::TcpLineClient;

const USER: &str = "alice@example.com";
const PASSWORD: &str = "alice-secret";
/// Opaque (not a JWT), so mailgate asks the introspection endpoint; never cached when the IdP
/// fails, so every attempt asks again.
const TOKEN: &str = "opaque-fault-token-0123456789";
/// Bigger than the 1 MiB `max_response_bytes` default.
const HUGE: usize = 2 * 1024 * 1024;
/// The short limit a stalling fake runs into (upstream `login_timeout`, IdP `request_timeout`).
const SHORT: Duration = Duration::from_secs(1);
/// The limit for every other fault: they must be detected, not timed out, so they answer well
/// before it.
const LONG: Duration = Duration::from_secs(8);
/// Every fault answers within this (a stall after [`SHORT`]).
const PROMPT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    UpstreamResetMidGreeting,
    UpstreamResetMidLogin,
    UpstreamResetMidSplice,
    UpstreamSilent,
    UpstreamSilentAfterLogin,
    UpstreamGarbage,
    UpstreamEndlessLine,
    IdpSlow,
    IdpDown,
    Idp500,
    IdpHugeDeclared,
    IdpHugeStreamed,
    IdpGarbageJson,
}

const ALL: [Fault; 13] = [
    Fault::UpstreamResetMidGreeting,
    Fault::UpstreamResetMidLogin,
    Fault::UpstreamResetMidSplice,
    Fault::UpstreamSilent,
    Fault::UpstreamSilentAfterLogin,
    Fault::UpstreamGarbage,
    Fault::UpstreamEndlessLine,
    Fault::IdpSlow,
    Fault::IdpDown,
    Fault::Idp500,
    Fault::IdpHugeDeclared,
    Fault::IdpHugeStreamed,
    Fault::IdpGarbageJson,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Imap,
    Pop3,
}

impl Fault {
    fn is_idp(self) -> bool {
        matches!(
            self,
            Fault::IdpSlow
                | Fault::IdpDown
                | Fault::Idp500
                | Fault::IdpHugeDeclared
                | Fault::IdpHugeStreamed
                | Fault::IdpGarbageJson
        )
    }

    fn stalls(self) -> bool {
        matches!(
            self,
            Fault::UpstreamSilent | Fault::UpstreamSilentAfterLogin | Fault::IdpSlow
        )
    }

    /// The audit `reason` of the attempt.
    fn reason(self) -> &'static str {
        match self {
            Fault::UpstreamResetMidSplice => "ok",
            Fault::UpstreamResetMidLogin => "upstream_rejected",
            f if f.is_idp() => "idp_unavailable",
            _ => "upstream_unavailable",
        }
    }

    /// What mailgate logs about it, in the session's span.
    fn logged(self, proto: Proto) -> &'static str {
        match self {
            Fault::UpstreamGarbage if proto == Proto::Pop3 => "unexpected upstream answer",
            Fault::UpstreamResetMidGreeting => "upstream unavailable",
            Fault::UpstreamResetMidLogin => "upstream rejected the login",
            Fault::UpstreamResetMidSplice => "login allowed",
            Fault::UpstreamSilent | Fault::UpstreamSilentAfterLogin => {
                "did not complete the login within 1s"
            }
            Fault::UpstreamGarbage => "upstream greeting was not OK",
            Fault::UpstreamEndlessLine => "upstream line longer than 65536 bytes",
            Fault::IdpSlow => "introspection: timed out",
            Fault::IdpDown => "introspection: connection failed",
            Fault::Idp500 => "introspection: HTTP 500",
            Fault::IdpHugeDeclared | Fault::IdpHugeStreamed => "response larger than 1048576 bytes",
            Fault::IdpGarbageJson => "introspection: not JSON",
        }
    }

    /// The fake upstream for `proto`.
    fn upstream(self, proto: Proto) -> fake::UpstreamBuilder {
        let up = fake::upstream();
        let imap = proto == Proto::Imap;
        match self {
            Fault::UpstreamResetMidGreeting if imap => {
                up.send(b"* OK [CAPABILITY IMAP4").then_reset()
            }
            Fault::UpstreamResetMidGreeting => up.send(b"+OK POP3 rea").then_reset(),
            Fault::UpstreamResetMidLogin if imap => up
                .greet(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n")
                .read_line()
                .then_reset(),
            Fault::UpstreamResetMidLogin => up
                .greet(b"+OK fake\r\n")
                .answer(b"+OK\r\n")
                .read_line()
                .then_reset(),
            // A FETCH answered halfway: the literal announces 100000 bytes, 2000 come.
            Fault::UpstreamResetMidSplice if imap => up
                .imap_logged_in()
                .answer(b"* 1 FETCH (BODY[] {100000}\r\n")
                .send(&[b'm'; 2000])
                .then_reset(),
            Fault::UpstreamResetMidSplice => up
                .pop3_logged_in()
                .answer(b"+OK 100000 octets\r\n")
                .send(&[b'm'; 2000])
                .then_reset(),
            Fault::UpstreamSilent => up.stall(),
            Fault::UpstreamSilentAfterLogin if imap => up
                .greet(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n")
                .read_line()
                .stall(),
            Fault::UpstreamSilentAfterLogin => up
                .greet(b"+OK fake\r\n")
                .answer(b"+OK\r\n")
                .read_line()
                .stall(),
            Fault::UpstreamGarbage => up
                .garbage(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1garbage\xff\xfe\r\n")
                .stall(),
            Fault::UpstreamEndlessLine => up.endless_line(),
            // IdP faults refuse before any upstream; it would log in.
            _ if imap => up.imap_logged_in().stall(),
            _ => up.pop3_logged_in().stall(),
        }
    }

    /// The fake IdP, `None` for one that is down.
    fn idp(self) -> Option<fake::IdpBuilder> {
        Some(match self {
            Fault::IdpSlow => fake::idp().slow(),
            Fault::Idp500 => fake::idp().status(500),
            Fault::IdpHugeDeclared => fake::idp().huge_declared(HUGE),
            Fault::IdpHugeStreamed => fake::idp().huge_streamed(HUGE),
            Fault::IdpGarbageJson => fake::idp().body(b"{\"active\": tru\x00e,,"),
            _ => return None,
        })
    }
}

/// mailgate with an in-process audit file and its own metrics, in front of the fakes for one
/// fault.
struct Rig {
    fault: Fault,
    mailgate: Mailgate,
    imap_up: Fake,
    pop3_up: Fake,
    idp: Option<Fake>,
    audit_file: PathBuf,
    writer: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn plain(addr: SocketAddr) -> UpstreamSpec {
    UpstreamSpec {
        addresses: vec![addr.to_string()],
        tls: "none",
        ca_file: Mailgate::ca_pem(),
    }
}

impl Rig {
    async fn start(fault: Fault) -> Rig {
        let imap_up = fault.upstream(Proto::Imap).run().await;
        let pop3_up = fault.upstream(Proto::Pop3).run().await;
        let idp = match fault.idp() {
            Some(idp) => Some(idp.run().await),
            None => None,
        };
        let mut builder: MailgateBuilder =
            Mailgate::builder_for(plain(imap_up.addr), plain(pop3_up.addr))
                .login_timeout(if fault.stalls() { "1s" } else { "8s" })
                // The fd suite's rounds of failed logins from 127.0.0.1 must not be blocked.
                .limits("login_failures_per_ip = 0\nlogin_failures_per_user = 0");
        let secret = builder.files().join("client-secret");
        std::fs::write(&secret, "mailgate-secret").expect("write secret");
        if fault.is_idp() {
            let base = match &idp {
                Some(idp) => idp.url(""),
                None => format!("http://127.0.0.1:{}", crate::util::free_port()),
            };
            let timeout = if fault.stalls() { SHORT } else { LONG };
            builder = builder.extra(&format!(
                "[[oauth.provider]]\nname = \"fake-idp\"\nissuer = \"{base}\"\n\
                 mode = \"introspection\"\nintrospection_endpoint = \"{base}/introspect\"\n\
                 client_id = \"mailgate\"\nclient_secret_file = \"{}\"\naudiences = [\"mail\"]\n\
                 connect_timeout = \"{}s\"\nrequest_timeout = \"{}s\"\n",
                secret.display(),
                timeout.as_secs(),
                timeout.as_secs(),
            ));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let audit_file = dir.path().join("audit.jsonl");
        let (audit, writer) = Audit::to_file(&audit_file, 4096).expect("audit sink");
        let writer = tokio::spawn(writer.run());
        let services = Services {
            audit,
            metrics: Arc::new(Metrics::new()),
            readiness: Readiness::new(),
        };
        let mailgate = builder.start_with(services).await;
        Rig {
            fault,
            mailgate,
            imap_up,
            pop3_up,
            idp,
            audit_file,
            writer,
            _dir: dir,
        }
    }

    fn addr(&self, proto: Proto) -> SocketAddr {
        match proto {
            Proto::Imap => self.mailgate.addr("imap-plain"),
            Proto::Pop3 => self.mailgate.addr("pop3-plain"),
        }
    }

    /// Sessions mailgate is serving now, from its `mailgate_connections_active` gauge.
    fn active(&self) -> i64 {
        gauge_sum(
            &self.mailgate.services.metrics.encode(),
            "mailgate_connections_active",
        )
    }

    /// Waits (bounded) until every session has ended and every fake connection is gone.
    async fn settle(&self) {
        let fakes =
            || self.imap_up.live() + self.pop3_up.live() + self.idp.as_ref().map_or(0, Fake::live);
        wait_until(
            Duration::from_secs(15),
            "sessions and fake connections end",
            || self.active() == 0 && fakes() == 0,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: active sessions {}, fake connections {}",
                self.active(),
                fakes()
            )
        });
    }

    /// Every audit record so far (after a flush).
    async fn records(&self) -> Vec<serde_json::Value> {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.mailgate.services.audit.flush(),
        )
        .await
        .expect("audit flush within 10 s");
        std::fs::read_to_string(&self.audit_file)
            .expect("read audit file")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// Asserts the audit trail of `sessions` connections with one login attempt each.
    async fn assert_audit(&self, sessions: usize) {
        let records = self.records().await;
        let of = |event: &str| {
            records
                .iter()
                .filter(|r| r["event"] == event)
                .collect::<Vec<_>>()
        };
        let shown = || {
            records
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(of("connect").len(), sessions, "{}", shown());
        assert_eq!(of("session_end").len(), sessions, "{}", shown());
        let auths = of("auth");
        assert_eq!(
            auths.len(),
            sessions,
            "one auth record per attempt:\n{}",
            shown()
        );
        let mut ids: Vec<&str> = auths
            .iter()
            .map(|r| r["session"].as_str().expect("session id"))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            sessions,
            "one auth record per session:\n{}",
            shown()
        );
        for auth in &auths {
            assert_eq!(auth["reason"], self.fault.reason(), "{auth}");
            assert_eq!(auth["user"], USER, "{auth}");
        }
        let end = if self.fault == Fault::UpstreamResetMidSplice {
            "error"
        } else {
            "client_closed"
        };
        for record in of("session_end") {
            assert_eq!(record["end"], end, "{record}");
        }
    }

    /// Shuts mailgate down, closes the audit sink and stops the fakes, waiting for each.
    async fn finish(self) {
        let Rig {
            mut mailgate,
            imap_up,
            pop3_up,
            idp,
            writer,
            ..
        } = self;
        mailgate.shutdown().await.expect("mailgate drained");
        let audit = mailgate.services.audit.clone();
        drop(mailgate);
        tokio::time::timeout(Duration::from_secs(10), audit.close())
            .await
            .expect("audit closes within 10 s");
        drop(audit);
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("audit writer ends within 10 s")
            .expect("audit writer task");
        imap_up.stop().await;
        pop3_up.stop().await;
        if let Some(idp) = idp {
            idp.stop().await;
        }
    }
}

/// Sum of every series of the gauge `name` in a Prometheus text scrape.
fn gauge_sum(text: &str, name: &str) -> i64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
        .sum()
}

/// Polls `done` every 10 ms until it holds or `limit` passes (for states with no signal to
/// wait on: another task's sockets being closed).
async fn wait_until(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return Err(format!("not within {limit:?}: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn xoauth2() -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={USER}\x01auth=Bearer {TOKEN}\x01\x01"))
}

/// One login attempt through mailgate that runs into `fault`; asserts the protocol answer and
/// returns the session reference from the refusal (`None` after a successful login).
async fn attempt(addr: SocketAddr, fault: Fault, proto: Proto) -> Option<String> {
    let mut c = TcpLineClient::connect(addr).await;
    let greeting = c.read_line().await;
    let started = Instant::now();
    let reply = match (proto, fault.is_idp()) {
        (Proto::Imap, false) => c.command(&format!("a LOGIN {USER} {PASSWORD}")).await,
        (Proto::Imap, true) => {
            c.command(&format!("a AUTHENTICATE XOAUTH2 {}", xoauth2()))
                .await
        }
        (Proto::Pop3, false) => {
            let user = c.command(&format!("USER {USER}")).await;
            assert!(user.starts_with("+OK"), "{user}");
            c.command(&format!("PASS {PASSWORD}")).await
        }
        (Proto::Pop3, true) => c.command(&format!("AUTH XOAUTH2 {}", xoauth2())).await,
    };
    let took = started.elapsed();
    assert!(
        took < PROMPT,
        "{fault:?}/{proto:?}: answered after {took:?}"
    );
    if fault.stalls() {
        assert!(
            took >= SHORT,
            "{fault:?}/{proto:?}: answered after {took:?}, before the timeout"
        );
    }
    if fault == Fault::UpstreamResetMidSplice {
        let ok = match proto {
            Proto::Imap => "a OK",
            Proto::Pop3 => "+OK",
        };
        assert!(reply.starts_with(ok), "{greeting} / {reply}");
        // The FETCH / RETR the upstream answers halfway and then resets.
        let command = match proto {
            Proto::Imap => "b FETCH 1 BODY[]",
            Proto::Pop3 => "RETR 1",
        };
        let first = c.command(command).await;
        assert!(
            first.starts_with("* 1 FETCH") || first.starts_with("+OK 100000"),
            "{first}"
        );
        // What came of the 2000 message bytes, then the close: nothing mailgate made up (a
        // reset may cut what was still in flight).
        let mut rest = Vec::new();
        loop {
            let bytes = c.read_line_bytes().await;
            if bytes.is_empty() {
                break;
            }
            rest.extend_from_slice(&bytes);
            assert!(rest.len() <= 2000, "more than the upstream sent");
        }
        assert!(
            rest.iter().all(|&b| b == b'm'),
            "{fault:?}/{proto:?}: {:?}",
            String::from_utf8_lossy(&rest)
        );
        return None;
    }
    let expected = match (proto, fault) {
        (Proto::Imap, Fault::UpstreamResetMidLogin) => "a NO [AUTHENTICATIONFAILED] ",
        (Proto::Pop3, Fault::UpstreamResetMidLogin) => "-ERR [AUTH] ",
        (Proto::Imap, _) => "a NO [UNAVAILABLE] ",
        (Proto::Pop3, _) => "-ERR [SYS/TEMP] ",
    };
    assert!(
        reply.starts_with(expected),
        "{fault:?}/{proto:?}: {reply} (greeting {greeting})"
    );
    let reference = reply
        .rsplit_once("(ref ")
        .and_then(|(_, r)| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no reference in {reply}"))
        .to_string();
    // Still a usable connection: a temporary failure is not a reason to hang up.
    let alive = match proto {
        Proto::Imap => c.command("z NOOP").await,
        Proto::Pop3 => c.command("NOOP").await,
    };
    assert!(
        alive.starts_with("z OK") || alive.starts_with("-ERR") || alive.starts_with("+OK"),
        "{alive}"
    );
    Some(reference)
}

/// Panics seen anywhere in this process, outside test code (the tests' own failed asserts).
fn panics_outside_tests() -> Vec<String> {
    static PANICS: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    let panics = PANICS.get_or_init(|| {
        let panics = Arc::new(Mutex::new(Vec::new()));
        let seen = panics.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().starts_with("tests/"));
            if !in_tests {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(info.to_string());
            }
            previous(info);
        }));
        panics
    });
    panics.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Runs `fault` once per protocol and checks answer, audit, logs, no panic, and that every
/// session and fake connection ends once the clients are gone.
async fn check(fault: Fault) {
    panics_outside_tests();
    let rig = Rig::start(fault).await;
    let mut references = Vec::new();
    for proto in [Proto::Imap, Proto::Pop3] {
        if let Some(reference) = attempt(rig.addr(proto), fault, proto).await {
            references.push((proto, reference));
        }
    }
    rig.settle().await;
    rig.assert_audit(2).await;
    let logs = captured_logs();
    for (proto, reference) in &references {
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(reference.as_str()))
            .collect();
        assert!(
            lines.iter().any(|l| l.contains(fault.logged(*proto))),
            "{fault:?}/{proto:?}: no {:?} in the session's log lines:\n{}",
            fault.logged(*proto),
            lines.join("\n")
        );
    }
    match fault {
        Fault::UpstreamResetMidLogin | Fault::UpstreamSilentAfterLogin => {
            // It was mid-login: the credentials had been sent.
            assert!(
                rig.imap_up.seen().iter().any(|l| l.contains(" LOGIN ")),
                "{:?}",
                rig.imap_up.seen()
            );
            assert!(
                rig.pop3_up.seen().iter().any(|l| l.starts_with("PASS ")),
                "{:?}",
                rig.pop3_up.seen()
            );
        }
        f if f.is_idp() => {
            // Refused before any upstream; the IdP was asked (when up).
            // (The upstreams do see mailgate's capability probes, which log nothing in.)
            assert!(
                !rig.imap_up
                    .seen()
                    .iter()
                    .any(|l| l.contains(" LOGIN ") || l.contains(" AUTHENTICATE ")),
                "{:?}",
                rig.imap_up.seen()
            );
            assert!(
                !rig.pop3_up.seen().iter().any(|l| {
                    l.starts_with("USER ") || l.starts_with("PASS ") || l.starts_with("AUTH ")
                }),
                "{:?}",
                rig.pop3_up.seen()
            );
            if let Some(idp) = &rig.idp {
                assert_eq!(idp.accepted(), 2, "{:?}", idp.seen());
            }
        }
        _ => {}
    }
    assert!(!logs.contains("panicked"), "a panic was logged");
    assert_eq!(panics_outside_tests(), Vec::<String>::new());
    rig.finish().await;
}

#[tokio::test]
async fn upstream_reset_mid_greeting_is_a_temporary_failure() {
    check(Fault::UpstreamResetMidGreeting).await;
}

#[tokio::test]
async fn upstream_reset_after_the_login_command_is_a_failed_login() {
    check(Fault::UpstreamResetMidLogin).await;
}

#[tokio::test]
async fn upstream_reset_mid_splice_closes_the_client_connection() {
    check(Fault::UpstreamResetMidSplice).await;
}

#[tokio::test]
async fn upstream_without_greeting_times_out_as_a_temporary_failure() {
    check(Fault::UpstreamSilent).await;
}

#[tokio::test]
async fn upstream_silent_after_login_times_out_as_a_temporary_failure() {
    check(Fault::UpstreamSilentAfterLogin).await;
}

#[tokio::test]
async fn upstream_garbage_greeting_is_a_temporary_failure() {
    check(Fault::UpstreamGarbage).await;
}

#[tokio::test]
async fn upstream_endless_line_is_cut_off_as_a_temporary_failure() {
    check(Fault::UpstreamEndlessLine).await;
}

#[tokio::test]
async fn idp_slower_than_request_timeout_is_a_temporary_failure() {
    check(Fault::IdpSlow).await;
}

#[tokio::test]
async fn idp_down_is_a_temporary_failure() {
    check(Fault::IdpDown).await;
}

#[tokio::test]
async fn idp_answering_500_is_a_temporary_failure() {
    check(Fault::Idp500).await;
}

#[tokio::test]
async fn idp_huge_declared_body_is_a_temporary_failure() {
    check(Fault::IdpHugeDeclared).await;
}

#[tokio::test]
async fn idp_huge_streamed_body_is_a_temporary_failure() {
    check(Fault::IdpHugeStreamed).await;
}

#[tokio::test]
async fn idp_garbage_json_is_a_temporary_failure() {
    check(Fault::IdpGarbageJson).await;
}

/// Set in the child process that runs [`fault_suite_leaks_no_fd_or_task`] alone.
const FD_CHILD: &str = "MAILGATE_FAULTS_FD_CHILD";
/// Attempts per fault and protocol, all at once.
const ROUNDS: usize = 20;

/// Open file descriptors of this process (the directory handle counted the same each time).
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// What the descriptors are, for a failure message.
fn fd_targets() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    out.sort();
    out
}

fn tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) until the fd and task counts are back at `base`; fails with what is open.
async fn assert_back_to(base: (usize, usize), when: &str, baseline_fds: &[String]) {
    if wait_until(Duration::from_secs(10), when, || (fds(), tasks()) == base)
        .await
        .is_err()
    {
        let now = fd_targets();
        let new: Vec<&String> = now.iter().filter(|t| !baseline_fds.contains(t)).collect();
        panic!(
            "{when}: fds {} (baseline {}), tasks {} (baseline {}); fds not in the baseline: {new:#?}",
            fds(),
            base.0,
            tasks(),
            base.1
        );
    }
}

/// Runs `ROUNDS` attempts per protocol of `fault` at once and checks each answer.
async fn batch(rig: &Rig, rounds: usize) {
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..rounds {
        for proto in [Proto::Imap, Proto::Pop3] {
            attempts.spawn(attempt(rig.addr(proto), rig.fault, proto));
        }
    }
    while let Some(done) = attempts.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Zero fd growth across the fault suite (issue 6). Runs in a child process of this test binary,
/// alone (`--exact --test-threads=1`), so no other test's sockets or tasks are counted. After a
/// warm-up run of every fault (whatever is created once per process, e.g. certificate stores,
/// exists then), the baseline is taken; then each fault runs `ROUNDS` times per protocol against
/// one mailgate, and the counts must come back (a) to the in-run baseline while that mailgate
/// is still up, all sessions and fake connections ended, and (b) to the process baseline after
/// it is shut down. Exact counts, no tolerance: the fake IdP answers `Connection: close`, so
/// the HTTP client pools nothing.
#[tokio::test]
async fn fault_suite_leaks_no_fd_or_task() {
    if std::env::var_os(FD_CHILD).is_none() {
        let name = "faults::fault_suite_leaks_no_fd_or_task";
        let mut cmd = tokio::process::Command::new(std::env::current_exe().expect("test binary"));
        cmd.args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(FD_CHILD, "1");
        let out = crate::util::run_client(cmd, Duration::from_secs(240)).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        crate::util::assert_success(&out);
        assert!(
            stdout.contains("test result: ok. 1 passed"),
            "the child did not run the test:\n{stdout}"
        );
        for line in stdout.lines().filter_map(|l| l.split_once("fd-accounting")) {
            println!("fd-accounting{}", line.1);
        }
        return;
    }

    panics_outside_tests();
    for fault in ALL {
        let rig = Rig::start(fault).await;
        batch(&rig, 1).await;
        rig.settle().await;
        rig.finish().await;
    }
    let base = (fds(), tasks());
    // Every mailgate, audit writer and fake of the warm-up has been shut down and awaited.
    assert_eq!(base.1, 0, "tasks left after the warm-up");
    let base_targets = fd_targets();
    println!(
        "fd-accounting process baseline: {} fds, {} tasks",
        base.0, base.1
    );
    for fault in ALL {
        let rig = Rig::start(fault).await;
        batch(&rig, 1).await;
        rig.settle().await;
        let running = (fds(), tasks());
        let running_targets = fd_targets();
        let started = Instant::now();
        batch(&rig, ROUNDS).await;
        rig.settle().await;
        let took = started.elapsed();
        assert_back_to(
            running,
            &format!("{fault:?}: after {ROUNDS}x2 attempts"),
            &running_targets,
        )
        .await;
        rig.assert_audit(2 * (ROUNDS + 1)).await;
        let after = (fds(), tasks());
        rig.finish().await;
        assert_back_to(base, &format!("{fault:?}: after shutdown"), &base_targets).await;
        println!(
            "fd-accounting {fault:?}: running {} fds / {} tasks, after {} attempts {} fds / {} tasks \
             ({took:?}), after shutdown {} fds / {} tasks",
            running.0,
            running.1,
            2 * ROUNDS,
            after.0,
            after.1,
            fds(),
            tasks()
        );
    }
    assert!(!captured_logs().contains("panicked"), "a panic was logged");
    assert_eq!(panics_outside_tests(), Vec::<String>::new());
}
