//! A real HAProxy (the distribution's, installed by `scripts/install-test-deps`) sends its PROXY
//! headers to a tiny tokio listener, and `mailgate::proto::proxy_header::parse` must read the
//! client's address from them: v2 (`send-proxy-v2`), v1 (`send-proxy`) and the v2 LOCAL of a
//! health check (`check-send-proxy`). Only loopback traffic; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use mailgate::proto::proxy_header::{Parsed, ProxyHeader, parse};

const WAIT: Duration = Duration::from_secs(10);

/// A running `haproxy -db`, killed when dropped.
struct HaProxy {
    child: Child,
    dir: tempfile::TempDir,
}

impl HaProxy {
    /// Fills in `template` (a file in `tests/haproxy/`) and starts HAProxy on it.
    fn start(template: &str, vars: &[(&str, u16)]) -> HaProxy {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/haproxy")
            .join(template);
        let mut text = std::fs::read_to_string(&path).unwrap();
        for (key, port) in vars {
            text = text.replace(&format!("@{key}@"), &port.to_string());
        }
        assert!(!text.contains('@'), "unfilled placeholder in {template}");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(haproxy_binary())
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        HaProxy { child, dir }
    }

    /// HAProxy's own output so far, for failure messages.
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

fn haproxy_binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/haproxy",
        "/usr/local/sbin/haproxy",
        "/usr/bin/haproxy",
    ] {
        if Path::new(candidate).is_file() {
            return candidate.into();
        }
    }
    panic!("haproxy not found; run scripts/install-test-deps (apt-get install haproxy)");
}

/// A loopback port nobody listens on right now (bind, read, release).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until `port` accepts a connection (bounded). Each probe is a real connection that
/// HAProxy relays, with a header, to the backend; the backend tells them apart by source.
async fn wait_listening(port: u16, haproxy: &mut HaProxy) {
    let deadline = Instant::now() + WAIT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Some(status) = haproxy.child.try_wait().unwrap() {
            panic!("haproxy exited: {status}\n{}", haproxy.log());
        }
        assert!(
            Instant::now() < deadline,
            "haproxy did not listen on {port}\n{}",
            haproxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the backend saw on one connection: the header and the bytes after it.
#[derive(Debug)]
struct Seen {
    header: ProxyHeader,
    /// The header was the binary v2 form (it starts with CR; v1 starts with `P`).
    v2: bool,
    rest: Vec<u8>,
}

/// Accepts every connection, reads its PROXY header and up to `want_rest` bytes after it (or
/// until the peer closes), and reports each on the channel.
/// A header the parser rejects is reported as `Err`, so the test fails with the bytes in hand.
fn backend(
    listener: TcpListener,
    want_rest: usize,
) -> mpsc::UnboundedReceiver<Result<Seen, String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                let (header, consumed) = loop {
                    match parse(&buf) {
                        Ok(Parsed::Complete { header, consumed }) => break (header, consumed),
                        Ok(Parsed::Incomplete) => {}
                        Err(e) => {
                            let _ = tx.send(Err(format!("{e}: {buf:?}")));
                            return;
                        }
                    }
                    let n = timeout(WAIT, s.read(&mut chunk)).await.unwrap().unwrap();
                    if n == 0 {
                        return; // closed before a full header (a probe torn down early)
                    }
                    buf.extend_from_slice(&chunk[..n]);
                };
                while buf.len() - consumed < want_rest {
                    match timeout(WAIT, s.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                let _ = tx.send(Ok(Seen {
                    header,
                    v2: buf.first() == Some(&b'\r'),
                    rest: buf[consumed..].to_vec(),
                }));
            });
        }
    });
    rx
}

/// Connects through HAProxy on `front`, sends a line, and returns what the backend saw for this
/// very connection (matched by the client's own address).
async fn through(
    front: u16,
    rx: &mut mpsc::UnboundedReceiver<Result<Seen, String>>,
) -> (SocketAddr, Seen) {
    let mut client = TcpStream::connect(("127.0.0.1", front)).await.unwrap();
    let me = client.local_addr().unwrap();
    client.write_all(b"a1 NOOP\r\n").await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = timeout(left, rx.recv())
            .await
            .expect("no header with the client's address")
            .unwrap()
            .unwrap_or_else(|e| panic!("haproxy sent a header we reject: {e}"));
        if matches!(seen.header, ProxyHeader::Proxied { source, .. } if source == me) {
            return (me, seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v1_and_v2_carry_the_client_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let back = listener.local_addr().unwrap().port();
    let mut rx = backend(listener, b"a1 NOOP\r\n".len());
    let (v2, v1) = (free_port(), free_port());
    let mut haproxy = HaProxy::start(
        "send-proxy.cfg.in",
        &[
            ("FRONTEND_PORT", v2),
            ("FRONTEND_V1_PORT", v1),
            ("BACKEND_PORT", back),
        ],
    );
    wait_listening(v2, &mut haproxy).await;
    wait_listening(v1, &mut haproxy).await;

    for (front, is_v2) in [(v2, true), (v1, false)] {
        let (me, seen) = through(front, &mut rx).await;
        assert_eq!(seen.v2, is_v2, "port {front}");
        assert_eq!(
            seen.header,
            ProxyHeader::Proxied {
                source: me,
                destination: SocketAddr::from(([127, 0, 0, 1], front)),
            },
            "port {front}"
        );
        // Nothing lost or doubled across the header boundary.
        assert_eq!(seen.rest, b"a1 NOOP\r\n", "port {front}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_health_check_sends_v2_local() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let back = listener.local_addr().unwrap().port();
    let mut rx = backend(listener, 0);
    let front = free_port();
    let _haproxy = HaProxy::start(
        "health-check.cfg.in",
        &[("FRONTEND_PORT", front), ("BACKEND_PORT", back)],
    );
    // Checks run every 100 ms; the first arrives without any client connecting.
    let seen = timeout(WAIT, rx.recv())
        .await
        .expect("no health check within the wait")
        .unwrap()
        .unwrap_or_else(|e| panic!("haproxy sent a header we reject: {e}"));
    assert_eq!(seen.header, ProxyHeader::Local);
    assert!(seen.v2);
}
