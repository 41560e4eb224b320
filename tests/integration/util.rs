//! Helpers shared by every integration area: free ports, external clients (Python, curl)
//! run with a timeout, message digests, and raw line clients (plain TCP and TLS) for
//! speaking IMAP/POP3 byte by byte. Every wait in here is bounded.

// Shared test API: not every helper is used by every area (or by any area yet).
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::pki;

/// Default bound for one read or write on a raw client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound for one external client run (fetching the 5 MiB message included).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A loopback port that was free a moment ago and that this process has not handed out
/// before (parallel tests never get the same port from here).
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if given.lock().expect("ports lock").insert(port) {
            return port;
        }
    }
    panic!("no fresh free port after 100 tries");
}

/// Path of a client script in `tests/clients/`.
pub fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// Runs `cmd` to completion with stdout/stderr captured. On timeout the child is killed
/// and the test fails, showing what it printed so far.
pub async fn run_client(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = format!("{cmd:?}");
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("wait {shown}: {e}")),
        // Dropping the future drops the child, and kill_on_drop kills it.
        Err(_) => panic!("{shown} did not finish within {timeout:?}; killed"),
    }
}

/// The Python interpreter for the clients: `$MAILGATE_TEST_PYTHON`, else Debian's
/// `/usr/bin/python3` (starts faster than a pyenv shim), else `python3` from `PATH`.
pub fn python() -> String {
    if let Ok(python) = std::env::var("MAILGATE_TEST_PYTHON") {
        return python;
    }
    if Path::new("/usr/bin/python3").exists() {
        return "/usr/bin/python3".into();
    }
    "python3".into()
}

/// Runs `tests/clients/<script>` with [`python`] and [`CLIENT_TIMEOUT`].
pub async fn run_python(script: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(python());
    cmd.arg("-u").arg(client_script(script)).args(args);
    run_client(cmd, CLIENT_TIMEOUT).await
}

/// Starts `tests/clients/<script>` for an interactive run: the test reads its stdout line by
/// line (e.g. waits for a readiness line such as `IDLING`), acts, then collects the rest.
pub fn spawn_python(script: &str, args: &[String]) -> ClientProcess {
    let mut cmd = Command::new(python());
    cmd.arg("-u")
        .arg(client_script(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    ClientProcess {
        child,
        stdout,
        seen: Vec::new(),
        shown,
    }
}

/// A running client started by [`spawn_python`]; killed if dropped.
pub struct ClientProcess {
    child: tokio::process::Child,
    stdout: BufReader<tokio::process::ChildStdout>,
    seen: Vec<u8>,
    shown: String,
}

impl ClientProcess {
    /// The next stdout line without its newline, `None` at EOF; fails the test on timeout.
    pub async fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let mut line = Vec::new();
        let n = tokio::time::timeout(timeout, self.stdout.read_until(b'\n', &mut line))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: no stdout line within {timeout:?}; so far: {:?}",
                    self.shown,
                    String::from_utf8_lossy(&self.seen)
                )
            })
            .expect("read client stdout");
        self.seen.extend_from_slice(&line);
        (n > 0).then(|| trim_crlf(&String::from_utf8_lossy(&line)).to_string())
    }

    /// Waits (bounded) for exit; the `Output` holds all stdout (lines already read too).
    pub async fn finish(mut self, timeout: Duration) -> Output {
        let shown = self.shown.clone();
        let work = async {
            let mut rest = Vec::new();
            self.stdout
                .read_to_end(&mut rest)
                .await
                .expect("read stdout");
            let mut stderr = Vec::new();
            if let Some(mut err) = self.child.stderr.take() {
                err.read_to_end(&mut stderr).await.expect("read stderr");
            }
            let status = self.child.wait().await.expect("wait client");
            let mut stdout = std::mem::take(&mut self.seen);
            stdout.extend_from_slice(&rest);
            Output {
                status,
                stdout,
                stderr,
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| panic!("{shown} did not finish within {timeout:?}; killed"))
    }
}

/// Runs `curl` (silent, errors shown, 30 s cap of its own) with [`CLIENT_TIMEOUT`].
pub async fn run_curl(args: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "30"])
        .args(args);
    run_client(cmd, CLIENT_TIMEOUT).await
}

/// Panics with both streams unless the process exited 0.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "client failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The last stdout line of a client, parsed as JSON (the clients print one JSON object
/// as their final line).
pub fn json_output(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}):\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Size and SHA-256 of one message, as the clients report them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MessageDigest {
    pub size: usize,
    pub sha256: String,
}

impl MessageDigest {
    pub fn of(data: &[u8]) -> MessageDigest {
        MessageDigest {
            size: data.len(),
            sha256: sha256_hex(data),
        }
    }
}

/// Digests of `messages`, in order.
pub fn digests(messages: &[Vec<u8>]) -> Vec<MessageDigest> {
    messages.iter().map(|m| MessageDigest::of(m)).collect()
}

/// The `messages` array of a client's JSON output, in order.
pub fn reported_digests(json: &serde_json::Value) -> Vec<MessageDigest> {
    json["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages array in {json}"))
        .iter()
        .map(|m| MessageDigest {
            size: m["size"].as_u64().expect("size") as usize,
            sha256: m["sha256"].as_str().expect("sha256").to_string(),
        })
        .collect()
}

/// Asserts that a client saw exactly `expected`, byte for byte, in order.
pub fn assert_same_messages(expected: &[Vec<u8>], json: &serde_json::Value) {
    assert_eq!(
        reported_digests(json),
        digests(expected),
        "messages differ from the fixtures"
    );
}

/// A TLS connector trusting only the CA at `ca_pem`.
pub fn tls_connector(ca_pem: &Path) -> TlsConnector {
    TlsConnector::from(pki::client_config(ca_pem))
}

/// A raw line-oriented client over any byte stream, for wire-level tests. Every read and
/// write is bounded by [`LineClient::timeout`]; a timeout fails the test with context.
pub struct LineClient<S> {
    stream: BufReader<S>,
    pub timeout: Duration,
}

/// The line client over plain TCP.
pub type TcpLineClient = LineClient<TcpStream>;
/// The line client over TLS.
pub type TlsLineClient = LineClient<TlsStream<TcpStream>>;

/// An IMAP response up to and including the tagged completion.
#[derive(Debug)]
pub struct Tagged {
    /// Untagged and continuation lines, CRLF removed (literal bytes inlined, lossy UTF-8).
    pub untagged: Vec<String>,
    /// The tagged line, CRLF removed, e.g. `a1 OK Logged in`.
    pub tagged: String,
}

impl Tagged {
    /// `OK`, `NO` or `BAD`.
    pub fn status(&self) -> &str {
        self.tagged.split(' ').nth(1).unwrap_or("")
    }
}

impl TcpLineClient {
    /// Connects to `addr` over plain TCP.
    pub async fn connect(addr: SocketAddr) -> TcpLineClient {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect {addr}: timed out"))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        LineClient::new(tcp)
    }

    /// Upgrades to TLS after STARTTLS/STLS was accepted. Fails the test if the server sent
    /// bytes after its OK that were not yet read (they would be plaintext injected before
    /// the handshake).
    pub async fn starttls(self, ca_pem: &Path, server_name: &str) -> TlsLineClient {
        assert!(
            self.stream.buffer().is_empty(),
            "plaintext after the STARTTLS answer: {:?}",
            String::from_utf8_lossy(self.stream.buffer())
        );
        let timeout = self.timeout;
        let tcp = self.stream.into_inner();
        let tls = handshake(tcp, ca_pem, server_name, timeout).await;
        LineClient {
            stream: BufReader::new(tls),
            timeout,
        }
    }

    /// The underlying socket (e.g. to half-close it).
    pub fn tcp(&self) -> &TcpStream {
        self.stream.get_ref()
    }
}

impl TlsLineClient {
    /// Connects to `addr` and does a TLS handshake verifying `server_name` against the CA.
    pub async fn connect_tls(addr: SocketAddr, ca_pem: &Path, server_name: &str) -> TlsLineClient {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect {addr}: timed out"))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let tls = handshake(tcp, ca_pem, server_name, IO_TIMEOUT).await;
        LineClient::new(tls)
    }
}

async fn handshake(
    tcp: TcpStream,
    ca_pem: &Path,
    server_name: &str,
    timeout: Duration,
) -> TlsStream<TcpStream> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .unwrap_or_else(|e| panic!("server name {server_name}: {e}"));
    tokio::time::timeout(timeout, tls_connector(ca_pem).connect(name, tcp))
        .await
        .unwrap_or_else(|_| panic!("TLS handshake with {server_name}: timed out"))
        .unwrap_or_else(|e| panic!("TLS handshake with {server_name}: {e}"))
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineClient<S> {
    pub fn new(stream: S) -> LineClient<S> {
        LineClient {
            stream: BufReader::new(stream),
            timeout: IO_TIMEOUT,
        }
    }

    /// Sets the per-operation timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Writes raw bytes and flushes.
    pub async fn send(&mut self, bytes: &[u8]) {
        let write = async {
            self.stream.get_mut().write_all(bytes).await?;
            self.stream.get_mut().flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .unwrap_or_else(|_| panic!("write timed out: {:?}", String::from_utf8_lossy(bytes)))
            .unwrap_or_else(|e| panic!("write failed ({e}): {:?}", String::from_utf8_lossy(bytes)));
    }

    /// Writes `line` followed by CRLF.
    pub async fn send_line(&mut self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes).await;
    }

    /// Reads one line including its CRLF (or LF); empty at EOF.
    pub async fn read_line_bytes(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        tokio::time::timeout(self.timeout, self.stream.read_until(b'\n', &mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no complete line within {:?}; got so far: {:?}",
                    self.timeout,
                    String::from_utf8_lossy(&buf)
                )
            })
            .unwrap_or_else(|e| panic!("read failed: {e}"));
        buf
    }

    /// Reads one line, CRLF removed (lossy UTF-8). Fails the test at EOF.
    pub async fn read_line(&mut self) -> String {
        let bytes = self.read_line_bytes().await;
        assert!(
            !bytes.is_empty(),
            "connection closed while a line was expected"
        );
        trim_crlf(&String::from_utf8_lossy(&bytes)).to_string()
    }

    /// Sends `line` and returns the next line.
    pub async fn command(&mut self, line: &str) -> String {
        self.send_line(line).await;
        self.read_line().await
    }

    /// Reads exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(self.timeout, self.stream.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{n} bytes not read within {:?}", self.timeout))
            .unwrap_or_else(|e| panic!("read_exact({n}) failed: {e}"));
        buf
    }

    /// Reads IMAP response lines until the one tagged `tag`. Literals (`{n}` at the end of
    /// a line) are read as `n` raw bytes and inlined, so FETCH responses work too.
    pub async fn read_until_tagged(&mut self, tag: &str) -> Tagged {
        let prefix = format!("{tag} ");
        let mut untagged = Vec::new();
        loop {
            let line = self.read_imap_line().await;
            if line.starts_with(&prefix) {
                return Tagged {
                    untagged,
                    tagged: line,
                };
            }
            untagged.push(line);
        }
    }

    /// Sends `<tag> <command>` and reads up to the tagged completion.
    pub async fn imap(&mut self, tag: &str, command: &str) -> Tagged {
        self.send_line(&format!("{tag} {command}")).await;
        self.read_until_tagged(tag).await
    }

    /// One logical IMAP response line with any literals inlined.
    async fn read_imap_line(&mut self) -> String {
        let mut out = String::new();
        loop {
            let line = self.read_line().await;
            let literal = literal_len(&line);
            out.push_str(&line);
            match literal {
                Some(n) => {
                    let bytes = self.read_exact(n).await;
                    out.push_str("\r\n");
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
                None => return out,
            }
        }
    }

    /// Reads a POP3 multi-line body after a `+OK` line: lines up to the lone ".", with
    /// dot-stuffing removed, each without its CRLF.
    pub async fn read_multiline(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await;
            if line == "." {
                return lines;
            }
            lines.push(line.strip_prefix('.').map(str::to_string).unwrap_or(line));
        }
    }

    /// Waits (bounded) for the peer to close; fails the test if it sends more data.
    pub async fn expect_eof(&mut self) {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(self.timeout, self.stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("connection not closed within {:?}", self.timeout));
        match n {
            Ok(0) => {}
            Ok(n) => panic!("expected EOF, got {:?}", String::from_utf8_lossy(&buf[..n])),
            // A reset also means closed.
            Err(_) => {}
        }
    }

    /// The inner stream.
    pub fn into_inner(self) -> S {
        self.stream.into_inner()
    }
}

/// `n` if `line` ends with an IMAP literal announcement `{n}` or `{n+}`.
fn literal_len(line: &str) -> Option<usize> {
    let open = line.rfind('{')?;
    let inner = line[open + 1..].strip_suffix('}')?;
    inner.strip_suffix('+').unwrap_or(inner).parse().ok()
}

fn trim_crlf(s: &str) -> &str {
    s.strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(s)
}

/// Convenience: `Arc` of the rustls client config for `ca_pem`.
pub fn client_config(ca_pem: &Path) -> Arc<rustls::ClientConfig> {
    pki::client_config(ca_pem)
}
