//! End-to-end load program: logins/s with latency percentiles, and FETCH/RETR throughput,
//! against any IMAP/POP3 address (mailgate or the upstream directly), over TLS or plaintext.
//!
//! ```text
//! cargo bench --bench load -- --addr 127.0.0.1:1993 --protocol imap --tls implicit \
//!     --insecure --user alice@example.com --pass alice-secret --mode login \
//!     --concurrency 16 --seconds 10
//! ```
//! Modes: `login` (IMAP LOGIN→LOGOUT, POP3 USER/PASS→QUIT, each on a fresh TLS connection),
//! `fetch` (IMAP `FETCH 1:* BODY.PEEK[]` / POP3 `RETR` of every message, repeated). Every loop is
//! bounded by `--seconds`; it talks only to the address it is given.

// A measuring tool, not the proxy: a broken setup should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Clone)]
struct Args {
    addr: String,
    protocol: String,
    tls: String,
    insecure: bool,
    ca: Option<String>,
    user: String,
    pass: String,
    mode: String,
    concurrency: usize,
    seconds: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:1993".into(),
        protocol: "imap".into(),
        tls: "implicit".into(),
        insecure: false,
        ca: None,
        user: "alice@example.com".into(),
        pass: "alice-secret".into(),
        mode: "login".into(),
        concurrency: 16,
        seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--addr" => a.addr = v(),
            "--protocol" => a.protocol = v(),
            "--tls" => a.tls = v(),
            "--insecure" => a.insecure = true,
            "--ca" => a.ca = Some(v()),
            "--user" => a.user = v(),
            "--pass" => a.pass = v(),
            "--mode" => a.mode = v(),
            "--concurrency" => a.concurrency = v().parse().unwrap_or(16),
            "--seconds" => a.seconds = v().parse().unwrap_or(10),
            "--bench" => {}
            other => eprintln!("ignoring argument {other}"),
        }
    }
    a
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
    let config = if args.insecure {
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
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Conn = BufReader<Box<dyn Io>>;

async fn read_until(conn: &mut Conn, mut done: impl FnMut(&str) -> bool) -> std::io::Result<u64> {
    let mut line = String::new();
    let mut bytes = 0u64;
    loop {
        line.clear();
        let n = conn.read_line(&mut line).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        bytes += n as u64;
        if done(&line) {
            return Ok(bytes);
        }
    }
}

async fn send(conn: &mut Conn, line: &str) -> std::io::Result<()> {
    conn.get_mut().write_all(line.as_bytes()).await?;
    conn.get_mut().flush().await
}

async fn connect(args: &Args, tls: &tokio_rustls::TlsConnector) -> std::io::Result<Conn> {
    let tcp = TcpStream::connect(&args.addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("name");
    let io: Box<dyn Io> = match args.tls.as_str() {
        "implicit" => Box::new(tls.connect(name, tcp).await?),
        "none" => Box::new(tcp),
        other => panic!("--tls {other}: use implicit or none"),
    };
    let mut conn = BufReader::new(io);
    read_until(&mut conn, |_| true).await?; // greeting
    Ok(conn)
}

async fn login(args: &Args, conn: &mut Conn) -> std::io::Result<()> {
    if args.protocol == "imap" {
        send(
            conn,
            &format!("a LOGIN \"{}\" \"{}\"\r\n", args.user, args.pass),
        )
        .await?;
        let mut ok = false;
        read_until(conn, |l| {
            ok = l.starts_with("a OK");
            l.starts_with("a ")
        })
        .await?;
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::other("login refused"))
        }
    } else {
        send(conn, &format!("USER {}\r\n", args.user)).await?;
        read_until(conn, |_| true).await?;
        send(conn, &format!("PASS {}\r\n", args.pass)).await?;
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        if line.starts_with("+OK") {
            Ok(())
        } else {
            Err(std::io::Error::other(line))
        }
    }
}

async fn logout(args: &Args, conn: &mut Conn) -> std::io::Result<()> {
    if args.protocol == "imap" {
        send(conn, "z LOGOUT\r\n").await?;
        read_until(conn, |l| l.starts_with("z ")).await?;
    } else {
        send(conn, "QUIT\r\n").await?;
        read_until(conn, |_| true).await?;
    }
    Ok(())
}

/// One unit of work; returns the payload bytes read.
async fn one(args: &Args, tls: &tokio_rustls::TlsConnector) -> std::io::Result<u64> {
    let mut conn = connect(args, tls).await?;
    login(args, &mut conn).await?;
    let mut bytes = 0;
    if args.mode == "fetch" {
        if args.protocol == "imap" {
            send(&mut conn, "s SELECT INBOX\r\n").await?;
            read_until(&mut conn, |l| l.starts_with("s ")).await?;
            send(&mut conn, "f FETCH 1:* BODY.PEEK[]\r\n").await?;
            // Literal-aware read: FETCH bodies are `{n}` literals.
            loop {
                let mut line = Vec::new();
                conn.read_until(b'\n', &mut line).await?;
                if line.is_empty() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                bytes += line.len() as u64;
                if line.starts_with(b"f ") {
                    break;
                }
                if let Some(n) = literal_len(&line) {
                    let mut body = vec![0u8; n];
                    conn.read_exact(&mut body).await?;
                    bytes += n as u64;
                }
            }
        } else {
            send(&mut conn, "STAT\r\n").await?;
            let mut stat = String::new();
            conn.read_line(&mut stat).await?;
            let count: usize = stat
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            for i in 1..=count {
                send(&mut conn, &format!("RETR {i}\r\n")).await?;
                bytes += read_until(&mut conn, |l| l == ".\r\n").await?;
            }
        }
    }
    logout(args, &mut conn).await?;
    Ok(bytes)
}

fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"}\r\n")?;
    let open = line.iter().rposition(|b| *b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
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
    let args = parse_args();
    let tls = connector(&args);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (args, tls) = (args.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut bytes, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(30), one(&args, &tls)).await {
                    Ok(Ok(b)) => {
                        lat.push(t.elapsed());
                        bytes += b;
                    }
                    _ => errors += 1,
                }
            }
            (lat, bytes, errors)
        }));
    }
    let (mut lat, mut bytes, mut errors) = (Vec::new(), 0u64, 0u64);
    for t in tasks {
        let (l, b, e) = t.await.expect("worker");
        lat.extend(l);
        bytes += b;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN);
    println!(
        "addr={} protocol={} mode={} concurrency={} ops={} errors={} ops/s={:.1} p50_ms={:.2} p99_ms={:.2} MB/s={:.1}",
        args.addr,
        args.protocol,
        args.mode,
        args.concurrency,
        lat.len(),
        errors,
        lat.len() as f64 / secs,
        ms(pct(0.50)),
        ms(pct(0.99)),
        bytes as f64 / secs / 1e6,
    );
}
