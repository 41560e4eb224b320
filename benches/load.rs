//! End-to-end load program: logins/s with latency percentiles, FETCH/RETR throughput, per-message
//! fetch latency and idle-session capacity, against any IMAP/POP3 address (mailgate or the
//! upstream directly), over TLS or plaintext. `scripts/bench` drives it; it can be run by hand:
//!
//! ```text
//! cargo bench --bench load -- --addr 127.0.0.1:1993 --protocol imap --tls implicit \
//!     --insecure --user alice@example.com --pass alice-secret --mode login \
//!     --concurrency 16 --seconds 10
//! ```
//!
//! Modes (each op on a fresh connection unless noted):
//! - `login`: IMAP LOGIN→SELECT INBOX→LOGOUT, POP3 USER/PASS→STAT→QUIT.
//! - `xoauth2`: as `login` with SASL XOAUTH2 (IMAP `AUTHENTICATE XOAUTH2` with SASL-IR, POP3
//!   `AUTH XOAUTH2`); the token comes from `--token`, or is fetched once per run from
//!   `--token-url` (the test IdP's `GET /test/token?...`).
//! - `fetch`: login, `FETCH 1:* BODY.PEEK[]` (POP3: `RETR` of every message), logout; MB/s.
//! - `fetch-each`: one connection per worker, logged in once, then `FETCH n BODY.PEEK[]` (POP3
//!   `RETR n`) for every message in turn, repeated; the latency reported is per fetch, so a
//!   Nagle/delayed-ACK stall (~40 ms on Linux) shows up in p99/max. Messages of 64 KiB or more
//!   count towards MB/s but not towards the latency figures.
//! - `idle`: open `--sessions` IMAP sessions (`--concurrency` at a time: connect, login,
//!   SELECT INBOX, IDLE), hold them all for `--hold` seconds while watching each for a drop,
//!   then end IDLE (`DONE` must be answered `OK`) and count the sessions still alive. With
//!   `--watch-pid PID[,PID...]` it samples the summed VmRSS of those processes (mailgate)
//!   before the ramp, once all sessions are up, every 5 s during the hold and at its end.
//!
//! - `preauth`: as `idle` without logging in: TLS handshake (or plaintext connect) and greeting,
//!   held; at the end a `NOOP` must be answered. `idle` and `preauth` also report the growth of
//!   the kernel's TCP memory (`/proc/net/sockstat`) per session and the watched descriptors.
//! - `attack-halfopen|preauth|pipeline|slowloris|bigname|junk`: the soak's attackers (see
//!   [`run_attack`]); `--sessions` connections until `--seconds` or SIGTERM.
//! - `spray`: an open-loop password spray (`--rate` wrong passwords per minute from
//!   `--sources` addresses over `--users` users, `{i}` in `--source` / `--user`), counting how
//!   each guess was answered; run next to a `login` run (`--source 127.0.1.{i}`, `--user
//!   user{i}@…`: each worker one user at its own familiar address) by `scripts/bench --spray`.
//!
//! `--source A,B,...` connects from those local addresses, round-robin; a `--source` with
//! `{i}` in it is a template filled per worker instead.
//!
//! `--addr` may list several addresses, comma-separated: connections go to them round-robin
//! (used when one process cannot hold all sessions under the file-descriptor limit).
//! The program raises its own RLIMIT_NOFILE to the hard limit. Every loop is bounded by
//! `--seconds` (ramp, for `idle`) and `--hold`; every network wait has a timeout. It talks
//! only to the addresses it is given.

// A measuring tool, not the proxy: a broken setup should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Bound on any single operation (connect, login, one fetch, one response).
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// RSS sampling interval during an idle hold.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// `fetch-each`: responses from this size on are left out of the latency figures.
const LARGE: u64 = 64 * 1024;

#[derive(Clone)]
struct Args {
    addrs: Vec<String>,
    protocol: String,
    tls: String,
    insecure: bool,
    ca: Option<String>,
    user: String,
    pass: String,
    mode: String,
    concurrency: usize,
    seconds: u64,
    token: Option<String>,
    token_url: Option<String>,
    sessions: usize,
    hold: u64,
    watch_pids: Vec<u32>,
    /// Local addresses to connect from, round-robin (`--source 127.0.0.2,127.0.0.3`): one
    /// loopback source address and destination port allow ~28,000 connections (the ephemeral
    /// port range), and the soak's attackers must not share the legitimate clients' address.
    sources: Vec<std::net::IpAddr>,
    /// `--source` with `{i}`: a per-worker source address template (`127.0.1.{i}`: a
    /// familiar address per legitimate user); filled into `sources` by `for_worker`.
    source: Option<String>,
    /// `spray`: guesses per minute, distinct source addresses, distinct users.
    rate: u64,
    spray_sources: usize,
    users: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        addrs: vec!["127.0.0.1:1993".into()],
        protocol: "imap".into(),
        tls: "implicit".into(),
        insecure: false,
        ca: None,
        user: "alice@example.com".into(),
        pass: "alice-secret".into(),
        mode: "login".into(),
        concurrency: 16,
        seconds: 10,
        token: None,
        token_url: None,
        sessions: 1000,
        hold: 60,
        watch_pids: Vec::new(),
        sources: Vec::new(),
        source: None,
        rate: 1000,
        spray_sources: 50,
        users: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--addr" => a.addrs = v().split(',').map(str::to_owned).collect(),
            "--protocol" => a.protocol = v(),
            "--tls" => a.tls = v(),
            "--insecure" => a.insecure = true,
            "--ca" => a.ca = Some(v()),
            "--user" => a.user = v(),
            "--pass" => a.pass = v(),
            "--mode" => a.mode = v(),
            "--concurrency" => a.concurrency = v().parse().unwrap_or(16),
            "--seconds" => a.seconds = v().parse().unwrap_or(10),
            "--token" => a.token = Some(v()),
            "--token-url" => a.token_url = Some(v()),
            "--sessions" => a.sessions = v().parse().unwrap_or(1000),
            "--hold" => a.hold = v().parse().unwrap_or(60),
            "--watch-pid" => {
                a.watch_pids = v().split(',').filter_map(|p| p.parse().ok()).collect();
            }
            "--source" => {
                let v = v();
                if v.contains("{i}") {
                    a.source = Some(v);
                } else {
                    a.sources = v.split(',').filter_map(|p| p.parse().ok()).collect();
                }
            }
            "--rate" => a.rate = v().parse().unwrap_or(1000),
            "--sources" => a.spray_sources = v().parse().unwrap_or(50),
            "--users" => a.users = v().parse().unwrap_or(100),
            "--bench" => {}
            other => eprintln!("ignoring argument {other}"),
        }
    }
    a
}

impl Args {
    /// This worker's user, password and source address (`{i}` → `n`).
    fn for_worker(&self, n: usize) -> Args {
        let fill = |s: &str| s.replace("{i}", &n.to_string());
        Args {
            user: fill(&self.user),
            pass: fill(&self.pass),
            sources: match &self.source {
                Some(template) => fill(template).parse().into_iter().collect(),
                None => self.sources.clone(),
            },
            ..self.clone()
        }
    }
}

/// `spray`: an open-loop password spray. `--rate` guesses per minute for `--seconds`, each on
/// a fresh connection from source `k % --sources + 1` (filling `{i}` in `--source`) for user
/// `k % --users + 1` (filling `{i}` in `--user`), each with a new wrong password. Reports how
/// the guesses were answered: `rejected` (AUTHENTICATIONFAILED: the upstream said no),
/// `limited` (UNAVAILABLE: mailgate refused without asking), `accepted`, `errors`.
async fn run_spray(args: Arc<Args>, tls: tokio_rustls::TlsConnector) {
    let every = Duration::from_secs_f64(60.0 / args.rate.max(1) as f64);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let counts = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(every);
    let mut k = 0usize;
    while Instant::now() < deadline {
        tick.tick().await;
        let mut a = args.for_worker(k % args.spray_sources.max(1) + 1);
        a.user = args
            .user
            .replace("{i}", &(k % args.users.max(1) + 1).to_string());
        a.pass = format!("spray-guess-{k}");
        let addr = args.addrs[k % args.addrs.len()].clone();
        let (tls, counts) = (tls.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let guess = async {
                let mut conn = connect(&addr, &a, &tls).await?;
                send(
                    &mut conn,
                    &format!("a LOGIN \"{}\" \"{}\"\r\n", a.user, a.pass),
                )
                .await?;
                let mut last = Vec::new();
                read_until(&mut conn, |l| {
                    last = l.to_vec();
                    l.starts_with(b"a ")
                })
                .await?;
                Ok::<_, std::io::Error>(last)
            };
            let slot = match tokio::time::timeout(OP_TIMEOUT, guess).await {
                Ok(Ok(l)) if l.starts_with(b"a OK") => 2,
                Ok(Ok(l)) if l.windows(13).any(|w| w == b"[UNAVAILABLE]") => 1,
                Ok(Ok(l)) if l.starts_with(b"a NO") => 0,
                _ => 3,
            };
            counts[slot].fetch_add(1, Ordering::Relaxed);
        }));
        k += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    let get = |i: usize| counts[i].load(Ordering::Relaxed);
    println!(
        "addr={} mode=spray guesses={k} rejected={} limited={} accepted={} errors={}",
        args.addrs.join(","),
        get(0),
        get(1),
        get(2),
        get(3)
    );
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn connector(args: &Args) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3");
    // Plaintext runs never use the connector: any verifier will do.
    let mut config = if args.insecure || args.tls == "none" {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let ca = args.ca.as_deref().expect("--ca FILE or --insecure");
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("read --ca") {
            roots.add(cert.expect("ca pem")).expect("ca cert");
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // Every login is a full handshake, as a fleet of distinct mail clients would do.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Conn = BufReader<Box<dyn Io>>;

fn eof() -> std::io::Error {
    std::io::ErrorKind::UnexpectedEof.into()
}

async fn read_line(conn: &mut Conn, line: &mut Vec<u8>) -> std::io::Result<usize> {
    line.clear();
    let n = conn.read_until(b'\n', line).await?;
    if n == 0 {
        return Err(eof());
    }
    Ok(n)
}

/// Reads lines until `done` says stop; returns the bytes read.
async fn read_until(conn: &mut Conn, mut done: impl FnMut(&[u8]) -> bool) -> std::io::Result<u64> {
    let mut line = Vec::new();
    let mut bytes = 0u64;
    loop {
        bytes += read_line(conn, &mut line).await? as u64;
        if done(&line) {
            return Ok(bytes);
        }
    }
}

/// Reads an IMAP response up to the tagged line, skipping over `{n}` literals. Returns the
/// bytes read and whether the tagged status was OK.
async fn read_tagged(conn: &mut Conn, tag: &str) -> std::io::Result<(u64, bool)> {
    let prefix = format!("{tag} ");
    let mut line = Vec::new();
    let mut bytes = 0u64;
    let mut body = Vec::new();
    loop {
        bytes += read_line(conn, &mut line).await? as u64;
        if line.starts_with(prefix.as_bytes()) {
            let ok = line[prefix.len()..].starts_with(b"OK");
            return Ok((bytes, ok));
        }
        if let Some(n) = literal_len(&line) {
            body.resize(n, 0);
            conn.read_exact(&mut body).await?;
            bytes += n as u64;
        }
    }
}

fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"}\r\n")?;
    let open = line.iter().rposition(|b| *b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

async fn send(conn: &mut Conn, line: &str) -> std::io::Result<()> {
    conn.get_mut().write_all(line.as_bytes()).await?;
    conn.get_mut().flush().await
}

/// Round-robin position over `--source`.
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// A TCP connection to `addr`, from the next `--source` address when some are given.
async fn tcp_connect(addr: &str, args: &Args) -> std::io::Result<TcpStream> {
    if args.sources.is_empty() {
        return TcpStream::connect(addr).await;
    }
    let to: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let from = args.sources[NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % args.sources.len()];
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

async fn connect(
    addr: &str,
    args: &Args,
    tls: &tokio_rustls::TlsConnector,
) -> std::io::Result<Conn> {
    let tcp = tcp_connect(addr, args).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("name");
    let io: Box<dyn Io> = match args.tls.as_str() {
        "implicit" => Box::new(tls.connect(name, tcp).await?),
        "none" => Box::new(tcp),
        other => panic!("--tls {other}: use implicit or none"),
    };
    // Small read buffer: `idle` holds thousands of these.
    let mut conn = BufReader::with_capacity(4096, io);
    read_until(&mut conn, |_| true).await?; // greeting
    Ok(conn)
}

fn xoauth2_ir(user: &str, token: &str) -> String {
    let raw = format!("user={user}\x01auth=Bearer {token}\x01\x01");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

async fn login(args: &Args, conn: &mut Conn) -> std::io::Result<()> {
    let refused = |what: &str| std::io::Error::other(format!("login refused: {what}"));
    if args.protocol == "imap" {
        let cmd = match args.token.as_deref() {
            Some(token) if args.mode == "xoauth2" => {
                format!(
                    "a AUTHENTICATE XOAUTH2 {}\r\n",
                    xoauth2_ir(&args.user, token)
                )
            }
            _ => format!("a LOGIN \"{}\" \"{}\"\r\n", args.user, args.pass),
        };
        send(conn, &cmd).await?;
        let mut last = Vec::new();
        read_until(conn, |l| {
            last = l.to_vec();
            // A `+` continuation here is an XOAUTH2 error challenge: the refusal follows.
            l.starts_with(b"a ") || l.starts_with(b"+")
        })
        .await?;
        if last.starts_with(b"a OK") {
            Ok(())
        } else {
            Err(refused(&String::from_utf8_lossy(&last)))
        }
    } else {
        match args.token.as_deref() {
            Some(token) if args.mode == "xoauth2" => {
                send(
                    conn,
                    &format!("AUTH XOAUTH2 {}\r\n", xoauth2_ir(&args.user, token)),
                )
                .await?;
            }
            _ => {
                send(conn, &format!("USER {}\r\n", args.user)).await?;
                read_until(conn, |_| true).await?;
                send(conn, &format!("PASS {}\r\n", args.pass)).await?;
            }
        }
        let mut line = Vec::new();
        read_line(conn, &mut line).await?;
        if line.starts_with(b"+OK") {
            Ok(())
        } else {
            Err(refused(&String::from_utf8_lossy(&line)))
        }
    }
}

/// IMAP SELECT INBOX, POP3 STAT; returns the message count.
async fn open_mailbox(args: &Args, conn: &mut Conn) -> std::io::Result<usize> {
    let mut count = 0;
    if args.protocol == "imap" {
        send(conn, "s SELECT INBOX\r\n").await?;
        read_until(conn, |l| {
            if let Some(n) = l
                .strip_prefix(b"* ")
                .and_then(|r| r.strip_suffix(b" EXISTS\r\n"))
                .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
            {
                count = n;
            }
            l.starts_with(b"s ")
        })
        .await?;
    } else {
        send(conn, "STAT\r\n").await?;
        let mut stat = Vec::new();
        read_line(conn, &mut stat).await?;
        count = String::from_utf8_lossy(&stat)
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
    }
    Ok(count)
}

async fn logout(args: &Args, conn: &mut Conn) -> std::io::Result<()> {
    if args.protocol == "imap" {
        send(conn, "z LOGOUT\r\n").await?;
        read_until(conn, |l| l.starts_with(b"z ")).await?;
    } else {
        send(conn, "QUIT\r\n").await?;
        read_until(conn, |_| true).await?;
    }
    Ok(())
}

/// Fetches message `n` (IMAP `FETCH n BODY.PEEK[]`, POP3 `RETR n`); returns the bytes read.
async fn fetch_one(args: &Args, conn: &mut Conn, n: usize) -> std::io::Result<u64> {
    if args.protocol == "imap" {
        send(conn, &format!("f FETCH {n} BODY.PEEK[]\r\n")).await?;
        let (bytes, ok) = read_tagged(conn, "f").await?;
        if !ok {
            return Err(std::io::Error::other("FETCH failed"));
        }
        Ok(bytes)
    } else {
        send(conn, &format!("RETR {n}\r\n")).await?;
        read_until(conn, |l| l == b".\r\n").await
    }
}

/// One unit of work for `login`, `xoauth2` and `fetch`; returns the payload bytes read.
async fn one(addr: &str, args: &Args, tls: &tokio_rustls::TlsConnector) -> std::io::Result<u64> {
    let mut conn = connect(addr, args, tls).await?;
    login(args, &mut conn).await?;
    let count = open_mailbox(args, &mut conn).await?;
    let mut bytes = 0;
    if args.mode == "fetch" {
        if args.protocol == "imap" {
            send(&mut conn, "f FETCH 1:* BODY.PEEK[]\r\n").await?;
            bytes += read_tagged(&mut conn, "f").await?.0;
        } else {
            for i in 1..=count {
                bytes += fetch_one(args, &mut conn, i).await?;
            }
        }
    }
    logout(args, &mut conn).await?;
    Ok(bytes)
}

#[derive(Default)]
struct Tally {
    lat: Vec<Duration>,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    fn merge(&mut self, other: Tally) {
        self.lat.extend(other.lat);
        self.bytes += other.bytes;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// A worker for `login`, `xoauth2`, `fetch`: fresh connection per op until the deadline.
async fn worker(
    addr: String,
    args: Arc<Args>,
    tls: tokio_rustls::TlsConnector,
    deadline: Instant,
) -> Tally {
    let mut t = Tally::default();
    while Instant::now() < deadline {
        let start = Instant::now();
        match tokio::time::timeout(OP_TIMEOUT, one(&addr, &args, &tls)).await {
            Ok(Ok(b)) => {
                t.lat.push(start.elapsed());
                t.bytes += b;
            }
            Ok(Err(e)) => t.error(e),
            Err(_) => t.error("timed out"),
        }
    }
    t
}

/// A worker for `fetch-each`: one logged-in connection, every message fetched in turn.
async fn fetch_each_worker(
    addr: String,
    args: Arc<Args>,
    tls: tokio_rustls::TlsConnector,
    deadline: Instant,
) -> Tally {
    let mut t = Tally::default();
    let setup = async {
        let mut conn = connect(&addr, &args, &tls).await?;
        login(&args, &mut conn).await?;
        let count = open_mailbox(&args, &mut conn).await?;
        Ok::<_, std::io::Error>((conn, count))
    };
    let (mut conn, count) = match tokio::time::timeout(OP_TIMEOUT, setup).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            t.error(e);
            return t;
        }
        Err(_) => {
            t.error("setup timed out");
            return t;
        }
    };
    'run: while Instant::now() < deadline {
        for n in 1..=count {
            if Instant::now() >= deadline {
                break 'run;
            }
            let start = Instant::now();
            match tokio::time::timeout(OP_TIMEOUT, fetch_one(&args, &mut conn, n)).await {
                // Latency counts for ordinary messages only: a multi-megabyte one measures
                // throughput, and would be the p99 of a small mailbox by itself.
                Ok(Ok(b)) if b < LARGE => {
                    t.lat.push(start.elapsed());
                    t.bytes += b;
                }
                Ok(Ok(b)) => t.bytes += b,
                Ok(Err(e)) => {
                    t.error(e);
                    break 'run;
                }
                Err(_) => {
                    t.error("fetch timed out");
                    break 'run;
                }
            }
        }
    }
    let _ = tokio::time::timeout(OP_TIMEOUT, logout(&args, &mut conn)).await;
    t
}

fn report(args: &Args, mut t: Tally, secs: f64) {
    t.lat.sort();
    let lat = &t.lat;
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN);
    if let Some(e) = &t.first_error {
        eprintln!("first error: {e}");
    }
    println!(
        "addr={} protocol={} mode={} concurrency={} ops={} errors={} ops/s={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} MB/s={:.1}",
        args.addrs.join(","),
        args.protocol,
        args.mode,
        args.concurrency,
        lat.len(),
        t.errors,
        lat.len() as f64 / secs,
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(lat.last()),
        t.bytes as f64 / secs / 1e6,
    );
}

/// Summed resident set (KiB) of `pids`, from `/proc/PID/status` `VmRSS`.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// How one idle session ended.
enum Held {
    /// Still there at the end of the hold and `DONE` was answered `OK`.
    Alive,
    /// Never got to IDLE.
    SetupFailed(String),
    /// Dropped (EOF, BYE, error) during the hold, or `DONE` was not answered.
    Lost(String),
}

async fn idle_session(
    addr: String,
    args: Arc<Args>,
    tls: tokio_rustls::TlsConnector,
    ramp: Arc<tokio::sync::Semaphore>,
    up: Arc<AtomicUsize>,
    all_up: Arc<tokio::sync::Notify>,
    mut hold_end: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
) -> Held {
    let setup = async {
        let _permit = ramp.acquire().await.expect("semaphore");
        let mut conn = connect(&addr, &args, &tls).await?;
        if args.mode == "idle" {
            login(&args, &mut conn).await?;
            open_mailbox(&args, &mut conn).await?;
            send(&mut conn, "i IDLE\r\n").await?;
            read_until(&mut conn, |l| l.starts_with(b"+")).await?;
        }
        Ok::<_, std::io::Error>(conn)
    };
    let result = tokio::time::timeout(OP_TIMEOUT, setup).await;
    // Counted whether or not it worked, so the ramp always finishes.
    let counted = up.fetch_add(1, Ordering::SeqCst) + 1;
    if counted == args.sessions {
        all_up.notify_one();
    }
    let mut conn = match result {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Held::SetupFailed(e.to_string()),
        Err(_) => return Held::SetupFailed("setup timed out".into()),
    };
    // Hold: any line other than an untagged keep-alive ("* OK Still here"), EOF or an error is
    // a lost session. `hold_end` is set once every session is up (or the ramp gave up).
    let mut line = Vec::new();
    loop {
        let end = *hold_end.borrow();
        let wake = async {
            match end {
                Some(end) => tokio::time::sleep_until(end).await,
                None => {
                    let _ = hold_end.changed().await;
                }
            }
        };
        tokio::select! {
            r = read_line(&mut conn, &mut line) => match r {
                Ok(_) if line.starts_with(b"* OK") => {}
                Ok(_) => return Held::Lost(String::from_utf8_lossy(&line).trim().to_owned()),
                Err(e) => return Held::Lost(e.to_string()),
            },
            () = wake => if end.is_some() { break },
        }
    }
    let done = async {
        // `preauth`: the connection still answers a NOOP (IMAP) or NOOP (POP3: -ERR before
        // login, still an answer).
        let (end, tag) = match (args.mode.as_str(), args.protocol.as_str()) {
            ("idle", _) => ("DONE\r\n", "i"),
            (_, "imap") => ("n NOOP\r\n", "n"),
            _ => ("NOOP\r\n", ""),
        };
        send(&mut conn, end).await?;
        if tag.is_empty() {
            read_until(&mut conn, |_| true).await?;
            return Ok(());
        }
        let (_, ok) = read_tagged(&mut conn, tag).await?;
        if !ok {
            return Err(std::io::Error::other(
                "not answered OK at the end of the hold",
            ));
        }
        let _ = logout(&args, &mut conn).await;
        Ok(())
    };
    match tokio::time::timeout(OP_TIMEOUT, done).await {
        Ok(Ok(())) => Held::Alive,
        Ok(Err(e)) => Held::Lost(e.to_string()),
        Err(_) => Held::Lost("DONE timed out".into()),
    }
}

/// Kernel memory of all TCP sockets (KiB), `/proc/net/sockstat` `TCP: ... mem N` (pages): the
/// socket buffers, outside any process's RSS. System-wide: on loopback it counts both ends of
/// every connection (client, mailgate, upstream).
fn tcp_mem_kib() -> u64 {
    let page = 4; // KiB; sockstat counts pages of the kernel's PAGE_SIZE, 4 KiB on x86-64.
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let tcp = s.lines().find(|l| l.starts_with("TCP:"))?.to_owned();
            let mut it = tcp.split_whitespace();
            it.find(|w| *w == "mem")?;
            it.next()?.parse::<u64>().ok()
        })
        .map_or(0, |pages| pages * page)
}

/// Open descriptors of `pids`, summed.
fn fds(pids: &[u32]) -> usize {
    pids.iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map(Iterator::count)
        .sum()
}

async fn run_idle(args: Arc<Args>, tls: tokio_rustls::TlsConnector) {
    let rss_before = rss_kib(&args.watch_pids);
    let sock_before = tcp_mem_kib();
    let ramp = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let up = Arc::new(AtomicUsize::new(0));
    let all_up = Arc::new(tokio::sync::Notify::new());
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(None);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let addr = args.addrs[i % args.addrs.len()].clone();
        tasks.push(tokio::spawn(idle_session(
            addr,
            args.clone(),
            tls.clone(),
            ramp.clone(),
            up.clone(),
            all_up.clone(),
            hold_rx.clone(),
        )));
    }
    // Ramp: bounded by --seconds; progress on stderr so a slow ramp is visible.
    let ramp_deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    loop {
        tokio::select! {
            () = all_up.notified() => break,
            () = tokio::time::sleep_until(ramp_deadline) => {
                eprintln!("ramp: gave up waiting after {} s", args.seconds);
                break;
            }
            () = tokio::time::sleep(Duration::from_secs(10)) => {
                eprintln!("ramp: {} of {} sessions set up", up.load(Ordering::SeqCst), args.sessions);
            }
        }
    }
    let ramp_secs = started.elapsed().as_secs_f64();
    let rss_up = rss_kib(&args.watch_pids);
    let hold_end = tokio::time::Instant::now() + Duration::from_secs(args.hold);
    hold_tx.send(Some(hold_end)).expect("sessions listen");
    eprintln!(
        "holding {} sessions for {} s (ramp took {ramp_secs:.1} s)",
        up.load(Ordering::SeqCst),
        args.hold
    );
    let mut rss_max = rss_up;
    // Sample every few seconds, then once more just before the hold ends (before DONE).
    let (rss_end, sock_end, fds_end) = loop {
        let now = tokio::time::Instant::now();
        let next = now + SAMPLE_EVERY;
        if next + Duration::from_millis(500) >= hold_end {
            let last = hold_end
                .checked_sub(Duration::from_millis(200))
                .unwrap_or(now);
            tokio::time::sleep_until(last.max(now)).await;
            let rss = rss_kib(&args.watch_pids);
            rss_max = rss_max.max(rss);
            break (rss, tcp_mem_kib(), fds(&args.watch_pids));
        }
        tokio::time::sleep_until(next).await;
        rss_max = rss_max.max(rss_kib(&args.watch_pids));
    };
    let (mut alive, mut setup_failed, mut lost) = (0usize, 0usize, 0usize);
    let (mut first_setup, mut first_lost) = (None, None);
    for t in tasks {
        match t.await.expect("session task") {
            Held::Alive => alive += 1,
            Held::SetupFailed(e) => {
                setup_failed += 1;
                first_setup.get_or_insert(e);
            }
            Held::Lost(e) => {
                lost += 1;
                first_lost.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_setup {
        eprintln!("first setup failure: {e}");
    }
    if let Some(e) = first_lost {
        eprintln!("first lost session: {e}");
    }
    let established = args.sessions - setup_failed;
    let per = |after: u64, before: u64| {
        if established > 0 {
            after.saturating_sub(before) as f64 / established as f64
        } else {
            f64::NAN
        }
    };
    println!(
        "addr={} mode={} sessions={} established={} alive={} lost={} setup_failed={} ramp_s={:.1} hold_s={} rss_before_kib={} rss_up_kib={} rss_end_kib={} rss_max_kib={} kib_per_session={:.2} tcp_mem_kib_per_session={:.2} fds_end={}",
        args.addrs.join(","),
        args.mode,
        args.sessions,
        established,
        alive,
        lost,
        setup_failed,
        ramp_secs,
        args.hold,
        rss_before,
        rss_up,
        rss_end,
        rss_max,
        per(rss_end, rss_before),
        per(sock_end, sock_before),
        fds_end,
    );
}

/// How long a closed attacker connection waits before it comes back (± half, uniformly).
const BACKOFF: Duration = Duration::from_secs(1);

/// Counters of one attacker run.
#[derive(Default)]
struct AttackStats {
    /// Connections opened (TCP connected; for TLS modes, handshake done and greeting read).
    opened: AtomicUsize,
    /// Connections mailgate closed (EOF, reset, a failed write).
    closed: AtomicUsize,
    /// Connection attempts that failed (refused, timed out, handshake failed).
    failed: AtomicUsize,
    /// Attackers whose first connection was opened or failed: the ramp.
    ramped: AtomicUsize,
}

/// Attacker modes for the soak (`scripts/bench --soak`): `--sessions` connections from the
/// `--source` addresses, each repeating its abuse until `--seconds` have passed and coming back
/// when mailgate closes it, after [`BACKOFF`] with jitter (as a client across the internet
/// would: a round trip, a resolver, a retry timer; a 100 ms loop made the half-open attacker a
/// connection-churn flood of ~16,000 connections/s instead of the hold the issue describes). Prints `ready` on stderr once every attacker has opened its first
/// connection (or failed to), and one summary line at the end.
///
/// - `halfopen`: TCP connect, never a byte (no ClientHello); held.
/// - `preauth`: TLS handshake and greeting, then silence; held.
/// - `pipeline`: commands written without ever reading an answer (the send buffers fill).
/// - `slowloris`: a LOGIN line trickled one byte every 2 s.
/// - `bigname`: LOGIN with a 10,000-byte username, again and again.
/// - `junk`: 1 KiB lines of random bytes, each answer read before the next.
async fn run_attack(kind: &str, args: Arc<Args>, tls: tokio_rustls::TlsConnector) {
    assert!(
        [
            "halfopen",
            "preauth",
            "pipeline",
            "slowloris",
            "bigname",
            "junk"
        ]
        .contains(&kind),
        "--mode attack-{kind}: use attack-halfopen|preauth|pipeline|slowloris|bigname|junk"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let stats = Arc::new(AttackStats::default());
    let ramp = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let addr = args.addrs[i % args.addrs.len()].clone();
        let (args, tls, stats, ramp) = (args.clone(), tls.clone(), stats.clone(), ramp.clone());
        let kind = kind.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut first = true;
            // Per-attacker xorshift for the jitter: attackers closed together come back spread.
            let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            while tokio::time::Instant::now() < deadline {
                let once = attack_once(&kind, &addr, &args, &tls, &stats, &ramp, &mut first);
                match tokio::time::timeout_at(deadline, once).await {
                    Err(_) => break,
                    Ok(Ok(())) => {
                        stats.closed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        if std::mem::take(&mut first) {
                            stats.ramped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // Back after BACKOFF ± half of it: a closed connection must not become a busy
                // loop.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let half = BACKOFF.as_millis() as u64 / 2;
                let pause = Duration::from_millis(half + x % (2 * half + 1));
                tokio::time::sleep(pause).await;
            }
        }));
    }
    let ready = async {
        while stats.ramped.load(Ordering::Relaxed) < args.sessions {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout_at(deadline, ready).await.is_ok() {
        eprintln!("ready");
    }
    // SIGTERM (scripts/bench, once the attacked run is over) ends the attack early; the
    // summary is still printed.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let all = async {
        for t in tasks.iter_mut() {
            let _ = t.await;
        }
    };
    tokio::select! {
        () = all => {}
        _ = term.recv() => {
            for t in &tasks {
                t.abort();
            }
        }
    }
    println!(
        "mode=attack-{kind} sessions={} opened={} server_closed={} failed={}",
        args.sessions,
        stats.opened.load(Ordering::Relaxed),
        stats.closed.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
}

/// One attacker connection, from connect to mailgate closing it (`Ok`) or a failed connect
/// (`Err`). The caller bounds it by the run's deadline.
async fn attack_once(
    kind: &str,
    addr: &str,
    args: &Args,
    tls: &tokio_rustls::TlsConnector,
    stats: &AttackStats,
    ramp: &tokio::sync::Semaphore,
    first: &mut bool,
) -> std::io::Result<()> {
    let permit = ramp.acquire().await.expect("semaphore");
    let opened = |first: &mut bool| {
        stats.opened.fetch_add(1, Ordering::Relaxed);
        if std::mem::take(first) {
            stats.ramped.fetch_add(1, Ordering::Relaxed);
        }
    };
    if kind == "halfopen" {
        let mut tcp = tokio::time::timeout(OP_TIMEOUT, tcp_connect(addr, args))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        drop(permit);
        opened(first);
        let mut byte = [0u8; 1];
        // Whatever mailgate sends (a refusal) is read and dropped until it closes.
        while matches!(tcp.read(&mut byte).await, Ok(n) if n > 0) {}
        return Ok(());
    }
    let mut conn = tokio::time::timeout(OP_TIMEOUT, connect(addr, args, tls))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    drop(permit);
    opened(first);
    let mut line = Vec::new();
    match kind {
        "preauth" => while read_line(&mut conn, &mut line).await.is_ok() {},
        "pipeline" => {
            let batch = "p NOOP\r\n".repeat(128);
            while send(&mut conn, &batch).await.is_ok() {}
        }
        "slowloris" => {
            for byte in b"a LOGIN alice@example.com secret\r\n".iter().cycle() {
                if conn.get_mut().write_all(&[*byte]).await.is_err() {
                    break;
                }
                let _ = conn.get_mut().flush().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        "bigname" => {
            let cmd = format!("b LOGIN \"{}\" \"secret\"\r\n", "x".repeat(10_000));
            while send(&mut conn, &cmd).await.is_ok()
                && read_until(&mut conn, |l| l.starts_with(b"b "))
                    .await
                    .is_ok()
            {}
        }
        _ => {
            // junk: printable and control bytes from a fixed xorshift, no CR/LF inside a line.
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ NEXT_SOURCE.load(Ordering::Relaxed) as u64;
            loop {
                let mut junk: Vec<u8> = (0..1024)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        match (x & 0xff) as u8 {
                            b'\r' | b'\n' => b'?',
                            b => b,
                        }
                    })
                    .collect();
                junk.extend_from_slice(b"\r\n");
                if conn.get_mut().write_all(&junk).await.is_err()
                    || read_line(&mut conn, &mut line).await.is_err()
                {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Raise RLIMIT_NOFILE to the hard limit: `idle` holds one descriptor per session.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

async fn fetch_token(url: &str) -> String {
    let resp = reqwest::Client::builder()
        .timeout(OP_TIMEOUT)
        .build()
        .expect("http client")
        .get(url)
        .send()
        .await
        .expect("--token-url answers");
    assert!(resp.status().is_success(), "--token-url: {}", resp.status());
    resp.text().await.expect("token body").trim().to_owned()
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
    // It is a load program against a live server, not a test: there it only proves it builds.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load: a load program; run it with `cargo bench --bench load -- --addr ...`");
        return;
    }
    let mut args = parse_args();
    let nofile = raise_nofile();
    if (args.mode == "idle" || args.mode.starts_with("attack-") || args.mode == "preauth")
        && (args.sessions as u64) + 64 > nofile
    {
        eprintln!(
            "warning: RLIMIT_NOFILE is {nofile}, below --sessions {}",
            args.sessions
        );
    }
    if args.mode == "xoauth2" && args.token.is_none() {
        let url = args
            .token_url
            .clone()
            .expect("--mode xoauth2 needs --token or --token-url");
        args.token = Some(fetch_token(&url).await);
    }
    let args = Arc::new(args);
    let tls = connector(&args);
    if args.mode == "idle" || args.mode == "preauth" {
        run_idle(args, tls).await;
        return;
    }
    if let Some(attack) = args.mode.strip_prefix("attack-").map(str::to_owned) {
        run_attack(&attack, args, tls).await;
        return;
    }
    assert!(
        ["login", "xoauth2", "fetch", "fetch-each", "spray"].contains(&args.mode.as_str()),
        "--mode {}: use login, xoauth2, fetch, fetch-each, spray or idle",
        args.mode
    );
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    if args.mode == "spray" {
        run_spray(args, tls).await;
        return;
    }
    for i in 0..args.concurrency {
        let addr = args.addrs[i % args.addrs.len()].clone();
        let (args, tls) = (Arc::new(args.for_worker(i + 1)), tls.clone());
        tasks.push(tokio::spawn(async move {
            if args.mode == "fetch-each" {
                fetch_each_worker(addr, args, tls, deadline).await
            } else {
                worker(addr, args, tls, deadline).await
            }
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        total.merge(t.await.expect("worker"));
    }
    report(&args, total, started.elapsed().as_secs_f64());
}
