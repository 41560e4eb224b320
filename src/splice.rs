//! Stage: splice. After the login, copy bytes both ways until one side ends, the session idles
//! out, or the driver interrupts it (revoked by a reload, or server shutdown).
//!
//! Inputs: the downstream and the logged-in upstream stream, the protocol (for the goodbye
//! lines), the idle timeout and an interrupt future. Output: how the session ended and the byte
//! counts. Each direction runs on its own (split halves, joined in one task), so a peer that
//! stops reading never blocks the other direction (the deadlock imap-next's `stream.rs`
//! describes). Bytes are forwarded as they arrive and nothing is parsed, except that the
//! upstream→downstream direction keeps track of where responses end, so that a goodbye line
//! (`* BYE`, `-ERR`) is only ever inserted between two responses, never inside a line or an
//! IMAP literal, where it would corrupt what the client is reading.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::proto::Protocol;
use crate::stream;

/// Largest read per wakeup: 16 KiB, the TLS maximum record size, so a full record moves at once.
/// Most sessions idle (IDLE, a mail client's NOOP every few minutes) and move lines, not
/// megabytes, so a direction holds no buffer while it waits: it reads into the thread's buffer
/// ([`stream::poll_read_with`]) and keeps a copy of exactly what came until it is written. Only
/// while a bulk transfer fills whole reads does a direction keep a [`BUFFER`] of its own and
/// read straight into it, until the transfer pauses.
const BUFFER: usize = stream::SCRATCH;

/// How long a goodbye line and the closing of both sides may take: a peer that stopped
/// reading must not hold the task.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which peer a failure came from (pingora `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

/// Why the driver stops a spliced session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// A reload took this user's access away (`revoke_on_reload`).
    Revoked,
    /// The server is shutting down and the drain deadline passed.
    Shutdown,
}

/// How a spliced session ended. Maps onto the audit `end` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    DownstreamClosed,
    UpstreamClosed,
    IdleTimeout,
    Revoked,
    Shutdown,
    /// A read or write failed on that side.
    Error(Side),
}

impl End {
    /// The audit record's `end` value.
    pub fn as_str(self) -> &'static str {
        match self {
            End::DownstreamClosed => "client_closed",
            End::UpstreamClosed => "upstream_closed",
            End::IdleTimeout => "idle_timeout",
            End::Revoked => "revoked",
            End::Shutdown => "shutdown",
            End::Error(_) => "error",
        }
    }
}

/// Byte counts of a spliced session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Downstream → upstream.
    pub bytes_up: u64,
    /// Upstream → downstream.
    pub bytes_down: u64,
}

/// The line sent downstream when mailgate, not a peer, ends a session.
pub fn goodbye(protocol: Protocol, end: End) -> Option<&'static [u8]> {
    Some(match (protocol, end) {
        // RFC 9051 5.4: an idle session may be closed after at least 30 minutes, with BYE.
        (Protocol::Imap, End::IdleTimeout) => b"* BYE Autologout; idle for too long\r\n",
        (Protocol::Imap, End::Revoked) => {
            b"* BYE [AUTHORIZATIONFAILED] Access was revoked by your organisation's policy\r\n"
        }
        (Protocol::Imap, End::Shutdown) => b"* BYE [UNAVAILABLE] Server shutting down\r\n",
        // Dovecot's wording; RFC 1939 3 lets the server close an inactive session.
        (Protocol::Pop3, End::IdleTimeout) => b"-ERR [SYS/TEMP] Disconnected for inactivity\r\n",
        (Protocol::Pop3, End::Revoked) => {
            b"-ERR [AUTH] Access was revoked by your organisation's policy\r\n"
        }
        (Protocol::Pop3, End::Shutdown) => b"-ERR [SYS/TEMP] Server shutting down\r\n",
        _ => return None,
    })
}

/// Copy both ways until both directions have ended, a side fails, nothing moved for `idle`, or
/// `interrupt` resolves. When mailgate ends the session, a goodbye line goes downstream first
/// (when the downstream stream is between two responses) and then both sides are closed.
pub async fn splice<D, U, I>(
    down: D,
    up: U,
    protocol: Protocol,
    idle: Duration,
    interrupt: I,
) -> (End, Totals)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    I: Future<Output = Interrupt>,
{
    let (mut down_rd, mut down_wr) = tokio::io::split(down);
    let (mut up_rd, mut up_wr) = tokio::io::split(up);
    let start = Instant::now();
    let activity = Activity {
        start,
        last_ms: AtomicU64::new(0),
    };
    let bytes_up = AtomicU64::new(0);
    let bytes_down = AtomicU64::new(0);
    let between_responses = AtomicBool::new(true);

    let end = {
        let to_up = pump(
            &mut down_rd,
            &mut up_wr,
            &activity,
            &bytes_up,
            Side::Downstream,
            None,
        );
        let to_down = pump(
            &mut up_rd,
            &mut down_wr,
            &activity,
            &bytes_down,
            Side::Upstream,
            Some((Boundary::new(protocol), &between_responses)),
        );
        let both = async {
            tokio::pin!(to_up, to_down);
            // The first direction to finish names the end; the other then drains until its own
            // peer closes (it saw our shutdown), bounded by the idle watch below.
            let (first, rest, first_end) = tokio::select! {
                r = &mut to_up => (r, Rest::Down, End::DownstreamClosed),
                r = &mut to_down => (r, Rest::Up, End::UpstreamClosed),
            };
            if let Err(side) = first {
                return End::Error(side);
            }
            let second = match rest {
                Rest::Down => to_down.await,
                Rest::Up => to_up.await,
            };
            match second {
                Ok(()) => first_end,
                Err(side) => End::Error(side),
            }
        };
        tokio::select! {
            end = both => end,
            () = activity.idle(idle) => End::IdleTimeout,
            interrupt = interrupt => match interrupt {
                Interrupt::Revoked => End::Revoked,
                Interrupt::Shutdown => End::Shutdown,
            },
        }
    };

    // Inserting a line in the middle of an upstream response would corrupt it; then the
    // session closes without one, which the client sees as a dropped connection.
    let line = goodbye(protocol, end).filter(|_| between_responses.load(Ordering::Relaxed));
    let close = async {
        if let Some(line) = line {
            let _ = down_wr.write_all(line).await;
            let _ = down_wr.flush().await;
        }
        let _ = down_wr.shutdown().await;
        let _ = up_wr.shutdown().await;
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    let totals = Totals {
        bytes_up: bytes_up.load(Ordering::Relaxed),
        bytes_down: bytes_down.load(Ordering::Relaxed),
    };
    (end, totals)
}

enum Rest {
    Up,
    Down,
}

/// Last time any byte moved, as milliseconds since the splice started.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Copy one direction until EOF (then shut the writer down so the peer sees it) or failure.
/// With a boundary tracker, `between` says after each write whether the bytes sent so far end
/// exactly between two responses.
async fn pump<R, W>(
    rd: &mut R,
    wr: &mut W,
    activity: &Activity,
    count: &AtomicU64,
    from: Side,
    mut boundary: Option<(Boundary, &AtomicBool)>,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let to = match from {
        Side::Downstream => Side::Upstream,
        Side::Upstream => Side::Downstream,
    };
    // Empty while waiting; the bytes of one read until they are written; a whole BUFFER
    // while a bulk transfer keeps filling it.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let read = std::future::poll_fn(|cx| {
            if buf.len() == BUFFER {
                let mut rb = tokio::io::ReadBuf::new(&mut buf);
                match std::pin::Pin::new(&mut *rd).poll_read(cx, &mut rb) {
                    std::task::Poll::Ready(r) => {
                        return std::task::Poll::Ready(r.map(|()| rb.filled().len()));
                    }
                    // The transfer paused: wait without the buffer.
                    std::task::Poll::Pending => buf = Vec::new(),
                }
                return std::task::Poll::Pending;
            }
            stream::poll_read_with(rd, cx, |bytes| {
                buf.clear();
                buf.extend_from_slice(bytes);
                bytes.len()
            })
        })
        .await;
        let n = match read {
            Ok(n) => n,
            // A TLS peer that closed the TCP connection without close_notify, as most mail
            // clients do after LOGOUT / QUIT (rustls reports it as UnexpectedEof). IMAP and POP3
            // delimit their own messages, so this is an ordinary close, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(_) => return Err(from),
        };
        if n == 0 {
            let _ = wr.shutdown().await;
            return Ok(());
        }
        // `read` never returns more than the buffer's length.
        let chunk = buf.get(..n).ok_or(from)?;
        if let Some((tracker, between)) = boundary.as_mut() {
            // Not between responses while this chunk is on its way.
            between.store(false, Ordering::Relaxed);
            tracker.feed(chunk);
        }
        wr.write_all(chunk).await.map_err(|_| to)?;
        wr.flush().await.map_err(|_| to)?;
        if let Some((tracker, between)) = boundary.as_ref() {
            between.store(tracker.between_responses(), Ordering::Relaxed);
        }
        if n < BUFFER {
            // Not a bulk transfer (or its end): nothing is kept while waiting for more.
            buf = Vec::new();
        }
        activity.touch();
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Tracks whether a server→client byte stream stands between two responses: at the start of a
/// line and, for IMAP, not inside a literal (`{n}\r\n` followed by n bytes, RFC 9051 4.3).
#[derive(Debug)]
struct Boundary {
    imap: bool,
    /// Bytes of the current line seen so far (0 = at a line start).
    line_len: usize,
    /// The last bytes of the current line, enough to spot a `{digits}` at its end.
    tail: Vec<u8>,
    /// Literal bytes still to come.
    literal: u64,
}

/// `{` + up to 20 digits + `}` + CR: longer tails cannot announce a literal we care about.
const TAIL: usize = 24;

impl Boundary {
    fn new(protocol: Protocol) -> Boundary {
        Boundary {
            imap: protocol == Protocol::Imap,
            line_len: 0,
            tail: Vec::with_capacity(TAIL),
            literal: 0,
        }
    }

    fn between_responses(&self) -> bool {
        self.line_len == 0 && self.literal == 0
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.literal > 0 {
                let n = usize::try_from(self.literal)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.literal -= n as u64;
                bytes = bytes.get(n..).unwrap_or_default();
                continue;
            }
            match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let (line, rest) = bytes.split_at(i + 1);
                    self.push_tail(line);
                    self.line_len = 0;
                    if self.imap
                        && let Some(n) = literal_announced(&self.tail)
                    {
                        // The response goes on after the literal, in the same line.
                        self.literal = n;
                        self.line_len = 1;
                    }
                    self.tail.clear();
                    bytes = rest;
                }
                None => {
                    self.push_tail(bytes);
                    self.line_len += bytes.len();
                    bytes = &[];
                }
            }
        }
    }

    fn push_tail(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(TAIL);
        let bytes = bytes.get(bytes.len() - keep..).unwrap_or_default();
        let excess = (self.tail.len() + bytes.len()).saturating_sub(TAIL);
        self.tail.drain(..excess.min(self.tail.len()));
        self.tail.extend_from_slice(bytes);
    }
}

/// The literal length a line ending in `{n}\r\n` (or `{n}\n`) announces.
fn literal_announced(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_suffix(b"}")?;
    let open = line.iter().rposition(|b| *b == b'{')?;
    let digits = line.get(open + 1..)?;
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    fn never() -> impl Future<Output = Interrupt> {
        std::future::pending()
    }

    #[tokio::test]
    async fn copies_both_ways_and_counts() {
        let (down, mut client) = duplex(64 * 1024);
        let (up, mut server) = duplex(64 * 1024);
        let task = tokio::spawn(async move {
            splice(down, up, Protocol::Imap, Duration::from_secs(30), never()).await
        });
        client.write_all(b"a1 NOOP\r\n").await.unwrap();
        let mut buf = [0u8; 9];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"a1 NOOP\r\n");
        server.write_all(b"a1 OK done\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"a1 OK done\r\n");
        drop(client);
        // The upstream sees EOF and closes in turn.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        drop(server);
        let (end, totals) = task.await.unwrap();
        assert_eq!(end, End::DownstreamClosed);
        assert_eq!(
            totals,
            Totals {
                bytes_up: 9,
                bytes_down: 12
            }
        );
    }

    /// A stream whose EOF is reported as `UnexpectedEof`, as rustls reports a TLS peer that
    /// closed without close_notify.
    struct NoCloseNotify(tokio::io::DuplexStream);

    impl AsyncRead for NoCloseNotify {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
                std::task::Poll::Ready(Ok(())) if buf.filled().len() == before => {
                    std::task::Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()))
                }
                other => other,
            }
        }
    }

    impl AsyncWrite for NoCloseNotify {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// IMAPS LOGOUT: the upstream closes, then the client drops TLS without close_notify. That
    /// is an ordinary end (`upstream_closed`), not an error.
    #[tokio::test]
    async fn a_close_without_close_notify_is_not_an_error() {
        let (down, mut client) = duplex(1024);
        let (up, mut server) = duplex(1024);
        let task = tokio::spawn(async move {
            splice(
                NoCloseNotify(down),
                up,
                Protocol::Imap,
                Duration::from_secs(30),
                never(),
            )
            .await
        });
        server
            .write_all(b"* BYE Logging out\r\nb OK Logout completed.\r\n")
            .await
            .unwrap();
        drop(server);
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        assert!(seen.ends_with(b"b OK Logout completed.\r\n"));
        drop(client);
        let (end, _) = task.await.unwrap();
        assert_eq!(end, End::UpstreamClosed);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_sends_goodbye() {
        let (down, mut client) = duplex(1024);
        let (up, _server) = duplex(1024);
        let task = tokio::spawn(async move {
            splice(down, up, Protocol::Imap, Duration::from_secs(60), never()).await
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"* BYE Autologout; idle for too long\r\n");
        assert_eq!(task.await.unwrap().0, End::IdleTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_defers_idle_timeout() {
        let (down, mut client) = duplex(1024);
        let (up, mut server) = duplex(1024);
        let task = tokio::spawn(async move {
            splice(down, up, Protocol::Pop3, Duration::from_secs(60), never()).await
        });
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
        }
        assert!(
            !task.is_finished(),
            "120 s of activity must not idle out a 60 s timeout"
        );
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"-ERR [SYS/TEMP] Disconnected for inactivity\r\n");
        assert_eq!(task.await.unwrap().0, End::IdleTimeout);
    }

    #[tokio::test]
    async fn interrupt_between_responses_sends_goodbye() {
        let (down, mut client) = duplex(1024);
        let (up, mut server) = duplex(1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let interrupt = async { rx.await.unwrap_or(Interrupt::Shutdown) };
            splice(down, up, Protocol::Imap, Duration::from_secs(60), interrupt).await
        });
        server.write_all(b"* 3 EXISTS\r\n").await.unwrap();
        let mut line = [0u8; 12];
        client.read_exact(&mut line).await.unwrap();
        tx.send(Interrupt::Revoked).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.starts_with(b"* BYE [AUTHORIZATIONFAILED]"), "{got:?}");
        assert_eq!(task.await.unwrap().0, End::Revoked);
    }

    #[tokio::test]
    async fn interrupt_inside_a_literal_sends_no_line() {
        let (down, mut client) = duplex(1024);
        let (up, mut server) = duplex(1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let interrupt = async { rx.await.unwrap_or(Interrupt::Shutdown) };
            splice(down, up, Protocol::Imap, Duration::from_secs(60), interrupt).await
        });
        // A FETCH response whose literal has 10 bytes announced and 4 sent.
        let partial = b"* 1 FETCH (BODY[] {10}\r\nabcd";
        server.write_all(partial).await.unwrap();
        let mut seen = vec![0u8; partial.len()];
        client.read_exact(&mut seen).await.unwrap();
        tx.send(Interrupt::Shutdown).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(
            got.is_empty(),
            "a BYE inside a literal would corrupt the message: {got:?}"
        );
        assert_eq!(task.await.unwrap().0, End::Shutdown);
    }

    #[test]
    fn boundary_tracks_lines_and_literals_across_chunks() {
        let stream = b"* 1 FETCH (BODY[] {5}\r\nab\r\nc)\r\na OK done\r\n";
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            let mut t = Boundary::new(Protocol::Imap);
            t.feed(a);
            t.feed(b);
            assert!(t.between_responses(), "split at {split}");
        }
        let mut t = Boundary::new(Protocol::Imap);
        t.feed(b"* 1 FETCH (BODY[] {5}\r\nab\r\n");
        assert!(!t.between_responses(), "inside the literal");
        t.feed(b"c");
        assert!(!t.between_responses(), "literal done, line not");
        t.feed(b")\r\n");
        assert!(t.between_responses());
        // POP3 has no literals: a line ending in {5} is just a line.
        let mut t = Boundary::new(Protocol::Pop3);
        t.feed(b"Subject: {5}\r\n");
        assert!(t.between_responses());
        assert_eq!(literal_announced(b"x {12345678901234567890123}\r\n"), None);
        assert_eq!(literal_announced(b"x {0}\r\n"), Some(0));
    }
}
