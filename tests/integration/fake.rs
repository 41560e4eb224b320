//! Small hand-written fake servers for the fault tests (docs/development.md section 7): what a real
//! Dovecot or IdP will not do on demand. An upstream that resets mid-greeting, mid-login or
//! mid-splice, stalls, sends garbage or an endless line; an IdP that answers slowly, with a 500, a
//! huge body or broken JSON. They prove mailgate survives a fault, never that an exchange works
//! (the real Dovecot and IdP of the other areas do that).
//!
//! ```ignore
//! let up = fake::upstream().greet(b"* OK [CAPABILITY IMAP4rev1] hi\r\n").read_line().then_reset().run().await;
//! let idp = fake::idp().status(500).run().await;
//! ```
//!
//! A POP3 `CAPA` line (mailgate's capability probe) is answered `-ERR` and the connection
//! closed, whatever the script says: the fakes are CAPA-less servers.
//!
//! Loopback only, and bounded: each connection's script is cut off after [`CONN_LIMIT`], a
//! stalled connection ends as soon as its peer closes, and a fake stops (listener and every
//! connection) when dropped; [`Fake::stop`] does the same and waits until it has.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// Longest any one fake connection lives, whatever its script says.
pub const CONN_LIMIT: Duration = Duration::from_secs(60);
/// Longer than mailgate's upstream line limit (64 KiB).
pub const ENDLESS_LINE: usize = 100 * 1024;
/// Longest line or HTTP head a fake reads before giving up on its peer.
const MAX_READ: usize = 1024 * 1024;

/// A running fake: its address, what it saw, and the switch that stops it.
pub struct Fake {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Fake {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections being served now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Every line (upstream) or request line (IdP) read so far, lossy UTF-8, CRLF removed.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting, ends every connection, and waits (bounded) until all are gone.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            timeout(Duration::from_secs(10), task)
                .await
                .expect("fake stops within 10 s")
                .expect("fake task");
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

type Handler = Arc<dyn Fn(TcpStream, Arc<Mutex<Vec<String>>>) -> BoxFuture + Send + Sync + 'static>;
type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Counts a connection in `live` for as long as it is held (aborts included).
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn spawn(handler: Handler) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake on 127.0.0.1:0");
    let addr = listener.local_addr().expect("fake addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = {
        let (accepted, live, seen) = (accepted.clone(), live.clone(), seen.clone());
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    r = listener.accept() => {
                        let Ok((tcp, _)) = r else { break };
                        accepted.fetch_add(1, Ordering::SeqCst);
                        live.fetch_add(1, Ordering::SeqCst);
                        let guard = LiveGuard(live.clone());
                        let work = handler(tcp, seen.clone());
                        conns.spawn(async move {
                            let _guard = guard;
                            let _ = timeout(CONN_LIMIT, work).await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            drop(listener);
            conns.shutdown().await;
        })
    };
    Fake {
        addr,
        accepted,
        live,
        seen,
        stop: Some(stop),
        task: Some(task),
    }
}

fn note(seen: &Mutex<Vec<String>>, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']).to_string();
    seen.lock().expect("seen lock").push(text);
}

/// Reads one line (up to LF) into `pending` order; `None` when the peer closed or sent more
/// than [`MAX_READ`] without one.
async fn read_line(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = pending.iter().position(|&b| b == b'\n') {
            return Some(pending.drain(..=i).collect());
        }
        if pending.len() > MAX_READ {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Says nothing more and reads (discarding) until the peer closes.
async fn hold(tcp: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = tcp.read(&mut chunk).await {
        if n == 0 {
            break;
        }
    }
}

/// Closes with a TCP RST instead of a FIN.
fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

// ---------------------------------------------------------------------------------------------
// Upstream (IMAP or POP3, plaintext)

#[derive(Clone)]
enum Step {
    Send(Vec<u8>),
    ReadLine,
    Answer(Vec<u8>),
    AnswerTagged(String),
    /// Answer with `prefix` and the line just read (IMAP: after the line's tag).
    Echo {
        prefix: String,
        tagged: bool,
    },
    Reset,
    Stall,
    Pause(Duration),
}

/// A scripted mail server: the same script for every connection, run step by step.
#[must_use = "call run() to start the fake"]
pub struct UpstreamBuilder {
    steps: Vec<Step>,
}

/// A fake upstream with an empty script (accepts, then closes).
pub fn upstream() -> UpstreamBuilder {
    UpstreamBuilder { steps: Vec::new() }
}

impl UpstreamBuilder {
    fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Sends `bytes` (a greeting, or part of one).
    pub fn greet(self, bytes: &[u8]) -> Self {
        self.step(Step::Send(bytes.to_vec()))
    }

    /// Sends `bytes` as they are.
    pub fn send(self, bytes: &[u8]) -> Self {
        self.step(Step::Send(bytes.to_vec()))
    }

    /// Sends `bytes` where a protocol answer belongs.
    pub fn garbage(self, bytes: &[u8]) -> Self {
        self.step(Step::Send(bytes.to_vec()))
    }

    /// Sends [`ENDLESS_LINE`] bytes without a line end, then stalls.
    pub fn endless_line(self) -> Self {
        self.step(Step::Send(vec![b'x'; ENDLESS_LINE]))
            .step(Step::Stall)
    }

    /// Waits for one line from mailgate (noted in [`Fake::seen`]).
    pub fn read_line(self) -> Self {
        self.step(Step::ReadLine)
    }

    /// Waits for one line, then sends `bytes`.
    pub fn answer(self, bytes: &[u8]) -> Self {
        self.step(Step::Answer(bytes.to_vec()))
    }

    /// Waits for one IMAP command, then completes it: `<its tag> <text>`.
    pub fn answer_tagged(self, text: &str) -> Self {
        self.step(Step::AnswerTagged(text.to_string()))
    }

    /// Waits for one IMAP command and answers `<its tag> <prefix><the whole line>`, as some
    /// servers do for a command they cannot parse (`BAD Error in command: ...`).
    pub fn echo_tagged(self, prefix: &str) -> Self {
        self.step(Step::Echo {
            prefix: prefix.to_string(),
            tagged: true,
        })
    }

    /// Waits for one line and answers `<prefix><the whole line>` (POP3).
    pub fn echo(self, prefix: &str) -> Self {
        self.step(Step::Echo {
            prefix: prefix.to_string(),
            tagged: false,
        })
    }

    /// IMAP: a greeting with capabilities, then `OK` to the LOGIN.
    pub fn imap_logged_in(self) -> Self {
        self.greet(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake ready\r\n")
            .answer_tagged("OK [CAPABILITY IMAP4rev1] Logged in")
    }

    /// POP3: a greeting, then `+OK` to USER and to PASS.
    pub fn pop3_logged_in(self) -> Self {
        self.greet(b"+OK fake ready\r\n")
            .answer(b"+OK\r\n")
            .answer(b"+OK Logged in\r\n")
    }

    /// Closes with a TCP reset here.
    pub fn then_reset(self) -> Self {
        self.step(Step::Reset)
    }

    /// Says nothing more (until mailgate closes).
    pub fn stall(self) -> Self {
        self.step(Step::Stall)
    }

    /// Waits `delay` before the next step: a slow upstream (e.g. a password check that takes
    /// a second), not a synchronisation.
    pub fn pause(self, delay: Duration) -> Self {
        self.step(Step::Pause(delay))
    }

    pub async fn run(self) -> Fake {
        let steps: Arc<[Step]> = self.steps.into();
        spawn(Arc::new(move |tcp, seen| {
            Box::pin(script(tcp, steps.clone(), seen)) as BoxFuture
        }))
        .await
    }
}

async fn script(mut tcp: TcpStream, steps: Arc<[Step]>, seen: Arc<Mutex<Vec<String>>>) {
    let _ = tcp.set_nodelay(true);
    let mut pending = Vec::new();
    for step in steps.iter() {
        match step {
            Step::Send(bytes) => {
                if tcp.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Step::ReadLine | Step::Answer(_) | Step::AnswerTagged(_) | Step::Echo { .. } => {
                let Some(line) = read_line(&mut tcp, &mut pending).await else {
                    return;
                };
                note(&seen, &line);
                if line.trim_ascii_end().eq_ignore_ascii_case(b"CAPA") {
                    // Only mailgate's capability probe sends CAPA (a login never does): answer
                    // as a server without CAPA would, so every script stays a login script.
                    let _ = tcp.write_all(b"-ERR no CAPA here\r\n").await;
                    let _ = tcp.shutdown().await;
                    return;
                }
                let reply = match step {
                    Step::Answer(bytes) => bytes.clone(),
                    Step::AnswerTagged(text) => {
                        let tag = line.split(|&b| b == b' ').next().unwrap_or_default();
                        let mut reply = tag.to_vec();
                        reply.push(b' ');
                        reply.extend_from_slice(text.as_bytes());
                        reply.extend_from_slice(b"\r\n");
                        reply
                    }
                    Step::Echo { prefix, tagged } => {
                        let got = line.strip_suffix(b"\n").unwrap_or(&line);
                        let got = got.strip_suffix(b"\r").unwrap_or(got);
                        let mut reply = Vec::new();
                        if *tagged {
                            reply.extend_from_slice(
                                got.split(|&b| b == b' ').next().unwrap_or_default(),
                            );
                            reply.push(b' ');
                        }
                        reply.extend_from_slice(prefix.as_bytes());
                        reply.extend_from_slice(got);
                        reply.extend_from_slice(b"\r\n");
                        reply
                    }
                    _ => continue,
                };
                if tcp.write_all(&reply).await.is_err() {
                    return;
                }
            }
            Step::Pause(delay) => tokio::time::sleep(*delay).await,
            Step::Reset => return reset(tcp),
            Step::Stall => return hold(&mut tcp).await,
        }
    }
    let _ = tcp.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Identity provider (HTTP/1.1, any path)

#[derive(Clone)]
enum Answer {
    /// Reads the request and never answers (until the client gives up and closes).
    Slow,
    /// A complete response with a Content-Length.
    Complete { status: u16, body: Vec<u8> },
    /// 200, a Content-Length of `len`, and that many bytes.
    HugeDeclared(usize),
    /// 200, no Content-Length (`Connection: close`), `len` bytes.
    HugeStreamed(usize),
}

/// A scripted IdP: every request gets the same answer.
#[must_use = "call run() to start the fake"]
pub struct IdpBuilder {
    answer: Answer,
}

/// A fake IdP answering `{"active": false}` until told otherwise.
pub fn idp() -> IdpBuilder {
    IdpBuilder {
        answer: Answer::Complete {
            status: 200,
            body: br#"{"active":false}"#.to_vec(),
        },
    }
}

impl IdpBuilder {
    /// Never answers (past any request timeout).
    pub fn slow(mut self) -> Self {
        self.answer = Answer::Slow;
        self
    }

    /// Answers `status` with an empty JSON object.
    pub fn status(mut self, status: u16) -> Self {
        self.answer = Answer::Complete {
            status,
            body: b"{}".to_vec(),
        };
        self
    }

    /// Answers 200 with `body` (e.g. broken JSON).
    pub fn body(mut self, body: &[u8]) -> Self {
        self.answer = Answer::Complete {
            status: 200,
            body: body.to_vec(),
        };
        self
    }

    /// Answers 200 with a `len`-byte body, announced in Content-Length.
    pub fn huge_declared(mut self, len: usize) -> Self {
        self.answer = Answer::HugeDeclared(len);
        self
    }

    /// Answers 200 with a `len`-byte body and no Content-Length: only reading shows its size.
    pub fn huge_streamed(mut self, len: usize) -> Self {
        self.answer = Answer::HugeStreamed(len);
        self
    }

    pub async fn run(self) -> Fake {
        let answer = self.answer;
        spawn(Arc::new(move |tcp, seen| {
            Box::pin(http(tcp, answer.clone(), seen)) as BoxFuture
        }))
        .await
    }
}

async fn http(mut tcp: TcpStream, answer: Answer, seen: Arc<Mutex<Vec<String>>>) {
    // The head, then the body its Content-Length announces.
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_READ {
            return;
        }
        let mut chunk = [0u8; 4096];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    note(&seen, head.lines().next().unwrap_or_default().as_bytes());
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body_read = buf.len() - head_end;
    while body_read < length.min(MAX_READ) {
        let mut chunk = [0u8; 4096];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body_read += n,
        }
    }
    let (head, body_len, body): (String, usize, Vec<u8>) = match answer {
        Answer::Slow => return hold(&mut tcp).await,
        Answer::Complete { status, body } => (
            format!(
                "HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body.len(),
            body,
        ),
        Answer::HugeDeclared(len) => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\
                 Connection: close\r\n\r\n"
            ),
            len,
            Vec::new(),
        ),
        Answer::HugeStreamed(len) => (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                .to_string(),
            len,
            Vec::new(),
        ),
    };
    if tcp.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if !body.is_empty() {
        let _ = tcp.write_all(&body).await;
    } else {
        // A JSON string that never ends, 16 KiB at a time, until `body_len` or the client
        // hangs up.
        let mut left = body_len;
        let mut chunk = vec![b'a'; 16 * 1024];
        if let Some(first) = chunk.first_mut() {
            *first = b'"';
        }
        while left > 0 {
            let n = left.min(chunk.len());
            if tcp.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            chunk[0] = b'a';
            left -= n;
        }
    }
    let _ = tcp.shutdown().await;
}
