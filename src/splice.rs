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
//!
//! Every write is bounded by the send timeout (nginx `send_timeout`): a peer that accepts no
//! byte for that long (a client that stopped reading in the middle of a large FETCH, an
//! upstream that stopped reading an APPEND) ends the session as an error on its side, so it
//! cannot pin its kernel send buffer and both sockets until the idle timeout.

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
    /// Closed before login to make room for a new connection at `max_connections`
    /// (`crate::conn_limit::ConnLimits::make_room`).
    Displaced,
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
            End::Displaced => "displaced",
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
        // The words of the refusal at accept at the same cap (`session::refuse_at_once`).
        (Protocol::Imap, End::Displaced) => {
            b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
        }
        (Protocol::Pop3, End::Displaced) => {
            b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
        }
        // Dovecot's wording; RFC 1939 3 lets the server close an inactive session.
        (Protocol::Pop3, End::IdleTimeout) => b"-ERR [SYS/TEMP] Disconnected for inactivity\r\n",
        (Protocol::Pop3, End::Revoked) => {
            b"-ERR [AUTH] Access was revoked by your organisation's policy\r\n"
        }
        (Protocol::Pop3, End::Shutdown) => b"-ERR [SYS/TEMP] Server shutting down\r\n",
        _ => return None,
    })
}

/// True when `e` only says that the peer went away: it closed TCP without a TLS close_notify
/// (rustls reports `UnexpectedEof`; imaplib, poplib, mbsync, offlineimap and getmail all do
/// this after LOGOUT / QUIT), or it reset the connection (a socket closed with unread data,
/// e.g. our close_notify arriving after the client closed), or a write found it gone. IMAP and
/// POP3 delimit their own messages, so a missing close_notify truncates nothing a command
/// depends on: that is a close by the peer, not a failure.
pub fn peer_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// Copy both ways until both directions have ended, a side fails (or accepts nothing for
/// `send`), nothing moved for `idle`, or `interrupt` resolves. When mailgate ends the session,
/// a goodbye line goes downstream first
/// (when the downstream stream is between two responses) and then both sides are closed.
///
/// The side that closes first names the end, with one exception: when the downstream's last
/// command was IMAP `LOGOUT` or POP3 `QUIT`, the upstream closing in answer is the client's
/// doing (`client_closed`).
pub async fn splice<D, U, I>(
    down: D,
    up: U,
    protocol: Protocol,
    idle: Duration,
    send: Duration,
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
    let farewell = AtomicBool::new(false);

    let end = {
        let to_up = pump(
            &mut down_rd,
            &mut up_wr,
            &activity,
            &bytes_up,
            Side::Downstream,
            send,
            Watch::Commands(Boundary::new(protocol), &farewell),
        );
        let to_down = pump(
            &mut up_rd,
            &mut down_wr,
            &activity,
            &bytes_down,
            Side::Upstream,
            send,
            Watch::Responses(Boundary::new(protocol), &between_responses),
        );
        let both = async {
            tokio::pin!(to_up, to_down);
            // The first direction to finish names the end; the other then drains until its own
            // peer closes (it saw our shutdown), bounded by the idle watch below. How that
            // drain ends is part of the same close (a peer that already got our shutdown may
            // reset), so it does not change the end.
            let (first, rest) = tokio::select! {
                r = &mut to_up => (r, Rest::Down),
                r = &mut to_down => (r, Rest::Up),
            };
            let closed = match first {
                Ok(side) => side,
                Err(side) => return End::Error(side),
            };
            let _ = match rest {
                Rest::Down => to_down.await,
                Rest::Up => to_up.await,
            };
            match closed {
                Side::Downstream => End::DownstreamClosed,
                Side::Upstream if farewell.load(Ordering::Relaxed) => End::DownstreamClosed,
                Side::Upstream => End::UpstreamClosed,
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
        // A side that failed (or stopped reading) gets no TLS close_notify: it would wait for
        // the same full buffer, and hold the other side's close behind it.
        if end != End::Error(Side::Downstream) {
            let _ = down_wr.shutdown().await;
        }
        if end != End::Error(Side::Upstream) {
            let _ = up_wr.shutdown().await;
        }
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

/// What a direction watches in the bytes it copies.
enum Watch<'a> {
    /// Upstream → downstream: the flag says after each write whether the bytes sent so far end
    /// exactly between two responses.
    Responses(Boundary, &'a AtomicBool),
    /// Downstream → upstream: the flag says whether the last complete command ends the session
    /// (IMAP `LOGOUT`, POP3 `QUIT`).
    Commands(Boundary, &'a AtomicBool),
}

/// True when `e` on `side`'s stream means that side closed rather than failed. A mail client
/// leaving without close_notify or with a reset is how clients leave ([`peer_gone`]); an
/// upstream that resets truncates what it was sending, a fault of the mail server, so there
/// only a missing close_notify counts as a close.
fn closed_by(side: Side, e: &std::io::Error) -> bool {
    match side {
        Side::Downstream => peer_gone(e),
        Side::Upstream => e.kind() == std::io::ErrorKind::UnexpectedEof,
    }
}

/// Copy one direction until its reader's peer closes (then shut the writer down so the other
/// peer sees it), its writer's peer is gone, or a failure. `Ok` names the side that closed
/// (see [`closed_by`]), `Err` the side that failed.
async fn pump<R, W>(
    rd: &mut R,
    wr: &mut W,
    activity: &Activity,
    count: &AtomicU64,
    from: Side,
    send: Duration,
    mut watch: Watch<'_>,
) -> Result<Side, Side>
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
            stream::poll_read_with(rd, BUFFER, cx, |bytes| {
                buf.clear();
                buf.extend_from_slice(bytes);
                bytes.len()
            })
        })
        .await;
        let n = match read {
            Ok(n) => n,
            Err(e) if closed_by(from, &e) => 0,
            Err(_) => return Err(from),
        };
        if n == 0 {
            // A TLS close_notify is a write too: bounded like one.
            let _ = tokio::time::timeout(send, wr.shutdown()).await;
            return Ok(from);
        }
        // `read` never returns more than the buffer's length.
        let chunk = buf.get(..n).ok_or(from)?;
        match &mut watch {
            Watch::Responses(tracker, between) => {
                // Not between responses while this chunk is on its way.
                between.store(false, Ordering::Relaxed);
                tracker.feed(chunk);
            }
            Watch::Commands(tracker, farewell) => {
                tracker.feed(chunk);
                farewell.store(tracker.farewell(), Ordering::Relaxed);
            }
        }
        match send_all(wr, chunk, send).await {
            Ok(()) => {}
            // A peer that takes nothing for `send` has stopped reading: a failure on its side.
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                tracing::info!(side = ?to, timeout = ?send, "peer accepted no data; ending the session");
                return Err(to);
            }
            Err(e) if closed_by(to, &e) => return Ok(to),
            Err(_) => return Err(to),
        }
        if let Watch::Responses(tracker, between) = &watch {
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

/// Write all of `bytes` and flush, failing with `TimedOut` when the peer accepts no byte for
/// `send`. As nginx's `send_timeout`, the limit is between two successive writes that make
/// progress, not for the whole chunk: a slow but live reader is not cut off.
pub async fn send_all<W>(wr: &mut W, mut bytes: &[u8], send: Duration) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let stalled = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    while !bytes.is_empty() {
        let n = tokio::time::timeout(send, wr.write(bytes))
            .await
            .map_err(|_| stalled())??;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = bytes.get(n..).unwrap_or_default();
    }
    // A TLS stream holds whole records until they are on the wire.
    tokio::time::timeout(send, wr.flush())
        .await
        .map_err(|_| stalled())?
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
    /// The current line continues a line that announced a literal.
    continued: bool,
    /// The last complete line was a command that ends the session: IMAP `tag LOGOUT`, POP3
    /// `QUIT` (RFC 9051 6.1.3, RFC 1939 6).
    farewell: bool,
}

/// Bytes kept from the end of each line: `{` + up to 20 digits + `}` + CR announce a literal,
/// and a `LOGOUT` line with a tag of up to 23 characters fits whole.
const TAIL: usize = 32;

impl Boundary {
    fn new(protocol: Protocol) -> Boundary {
        Boundary {
            imap: protocol == Protocol::Imap,
            line_len: 0,
            tail: Vec::with_capacity(TAIL),
            literal: 0,
            continued: false,
            farewell: false,
        }
    }

    /// True when the last complete line ends the session (on the downstream's side).
    fn farewell(&self) -> bool {
        self.farewell
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
                    let whole = !self.continued && self.line_len + line.len() <= TAIL;
                    self.line_len = 0;
                    self.continued = false;
                    self.farewell = false;
                    if self.imap
                        && let Some(n) = literal_announced(&self.tail)
                    {
                        // The response goes on after the literal, in the same line.
                        self.literal = n;
                        self.line_len = 1;
                        self.continued = true;
                    } else if whole {
                        self.farewell = is_farewell(&self.tail, self.imap);
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

/// True for a whole command line `tag LOGOUT` (IMAP) or `QUIT` (POP3), any case, CRLF or LF.
fn is_farewell(line: &[u8], imap: bool) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !imap {
        return line.eq_ignore_ascii_case(b"QUIT");
    }
    let mut words = line.split(|b| *b == b' ');
    matches!(
        (words.next(), words.next(), words.next()),
        (Some(tag), Some(command), None) if !tag.is_empty() && command.eq_ignore_ascii_case(b"LOGOUT")
    )
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

    const SEND: Duration = Duration::from_secs(60);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The splice under test, in its own task; the upstream is always an in-memory pipe.
    fn spawn(
        down: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
        up: tokio::io::DuplexStream,
        protocol: Protocol,
        (idle, send): (Duration, Duration),
        interrupt: impl Future<Output = Interrupt> + Send + 'static,
    ) -> tokio::task::JoinHandle<(End, Totals)> {
        tokio::spawn(splice(down, up, protocol, idle, send, interrupt))
    }

    fn never() -> impl Future<Output = Interrupt> {
        std::future::pending()
    }

    #[tokio::test]
    async fn copies_both_ways_and_counts() {
        let (down, mut client) = duplex(64 * 1024);
        let (up, mut server) = duplex(64 * 1024);
        let task = spawn(down, up, Protocol::Imap, (secs(30), SEND), never());
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

    /// A stream whose peer leaving shows as an error, as on a real socket: an EOF read as
    /// `eof` (rustls reports a TLS peer that closed without close_notify as `UnexpectedEof`, a
    /// socket whose peer is gone a read as `ConnectionReset`), and with `write` set, a failed
    /// write as that kind (`BrokenPipe`).
    struct Gone {
        inner: tokio::io::DuplexStream,
        eof: std::io::ErrorKind,
        write: Option<std::io::ErrorKind>,
    }

    /// A TLS peer that closes without close_notify.
    fn no_close_notify(inner: tokio::io::DuplexStream) -> Gone {
        Gone {
            inner,
            eof: std::io::ErrorKind::UnexpectedEof,
            write: None,
        }
    }

    /// A socket whose peer is gone: reads fail with `ConnectionReset`, writes with
    /// `BrokenPipe`.
    fn broken_pipe(inner: tokio::io::DuplexStream) -> Gone {
        Gone {
            inner,
            eof: std::io::ErrorKind::ConnectionReset,
            write: Some(std::io::ErrorKind::BrokenPipe),
        }
    }

    impl AsyncRead for Gone {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let eof = self.eof;
            match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
                std::task::Poll::Ready(Ok(())) if buf.filled().len() == before => {
                    std::task::Poll::Ready(Err(eof.into()))
                }
                other => other,
            }
        }
    }

    impl AsyncWrite for Gone {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let write = self.write;
            match (
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf),
                write,
            ) {
                (std::task::Poll::Ready(Err(_)), Some(kind)) => {
                    std::task::Poll::Ready(Err(kind.into()))
                }
                (other, _) => other,
            }
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// IMAPS LOGOUT: the upstream closes, then the client drops TLS without close_notify. That
    /// is an ordinary end (`upstream_closed`), not an error.
    #[tokio::test]
    async fn a_close_without_close_notify_is_not_an_error() {
        let (down, mut client) = duplex(1024);
        let (up, mut server) = duplex(1024);
        let task = spawn(
            no_close_notify(down),
            up,
            Protocol::Imap,
            (secs(30), SEND),
            never(),
        );
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

    /// The same close after the client's own LOGOUT: the client ended the session.
    #[tokio::test]
    async fn an_upstream_close_after_logout_is_a_client_close() {
        for (protocol, command, answer) in [
            (
                Protocol::Imap,
                &b"c LOGOUT\r\n"[..],
                &b"* BYE Logging out\r\nc OK Logout completed.\r\n"[..],
            ),
            (Protocol::Pop3, b"QUIT\r\n", b"+OK Logging out.\r\n"),
        ] {
            let (down, mut client) = duplex(1024);
            let (up, mut server) = duplex(1024);
            let task = spawn(
                no_close_notify(down),
                up,
                protocol,
                (secs(30), SEND),
                never(),
            );
            client.write_all(command).await.unwrap();
            let mut got = vec![0u8; command.len()];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(answer).await.unwrap();
            drop(server);
            let mut seen = Vec::new();
            client.read_to_end(&mut seen).await.unwrap();
            assert_eq!(seen, answer);
            drop(client);
            assert_eq!(task.await.unwrap().0, End::DownstreamClosed, "{protocol:?}");
        }
    }

    /// A client that vanishes while the upstream still sends (its socket is gone, writes to it
    /// fail) closed the session; it did not fail.
    #[tokio::test]
    async fn a_client_gone_while_data_flows_down_is_a_client_close() {
        let (down, client) = duplex(16);
        let (up, mut server) = duplex(1024);
        let task = spawn(
            broken_pipe(down),
            up,
            Protocol::Imap,
            (secs(30), SEND),
            never(),
        );
        drop(client);
        let _ = server.write_all(b"* 1 FETCH (FLAGS (\\Seen))\r\n").await;
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        drop(server);
        assert_eq!(task.await.unwrap().0, End::DownstreamClosed);
    }

    #[test]
    fn farewell_is_a_whole_logout_or_quit_line_outside_literals() {
        let imap = |stream: &[u8]| {
            (0..=stream.len()).all(|split| {
                let (a, b) = stream.split_at(split);
                let mut t = Boundary::new(Protocol::Imap);
                t.feed(a);
                t.feed(b);
                t.farewell()
            })
        };
        assert!(imap(b"a1 NOOP\r\nA0002 logout\r\n"));
        assert!(imap(b"x LOGOUT\n"));
        assert!(imap(b"a APPEND INBOX {10}\r\nb LOGOUT\r\n\r\nc LOGOUT\r\n"));
        let none = |stream: &[u8]| {
            let mut t = Boundary::new(Protocol::Imap);
            t.feed(stream);
            !t.farewell()
        };
        assert!(none(b"a LOGOUT\r\nb NOOP\r\n"), "a later command");
        assert!(none(b"a SELECT LOGOUT\r\n"), "a mailbox named LOGOUT");
        assert!(none(b"LOGOUT\r\n"), "no tag");
        assert!(
            none(b"a APPEND INBOX {10}\r\nb LOGOUT\r\n"),
            "inside a literal"
        );
        assert!(
            none(b"a APPEND INBOX {10}\r\n0123456789 LOGOUT\r\n"),
            "after a literal"
        );
        assert!(none(b"a LOGOUT"), "not complete");
        let mut t = Boundary::new(Protocol::Pop3);
        t.feed(b"STAT\r\nqu");
        assert!(!t.farewell());
        t.feed(b"it\r\n");
        assert!(t.farewell());
        t.feed(b"a LOGOUT\r\n");
        assert!(!t.farewell(), "POP3 has no LOGOUT");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_sends_goodbye() {
        let (down, mut client) = duplex(1024);
        let (up, _server) = duplex(1024);
        let task = spawn(down, up, Protocol::Imap, (secs(60), SEND), never());
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"* BYE Autologout; idle for too long\r\n");
        assert_eq!(task.await.unwrap().0, End::IdleTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_defers_idle_timeout() {
        let (down, mut client) = duplex(1024);
        let (up, mut server) = duplex(1024);
        let task = spawn(down, up, Protocol::Pop3, (secs(60), SEND), never());
        for _ in 0..3 {
            tokio::time::sleep(secs(40)).await;
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

    /// A client that stops reading while a large FETCH streams down: after `send` with no byte
    /// accepted the session ends as a downstream error, long before the idle timeout, and the
    /// upstream side is closed too.
    #[tokio::test(start_paused = true)]
    async fn a_downstream_that_stops_reading_hits_the_send_timeout() {
        let (down, _client) = duplex(1024);
        let (up, mut server) = duplex(64 * 1024);
        let task = spawn(down, up, Protocol::Imap, (secs(1800), secs(5)), never());
        server.write_all(&[b'm'; 32 * 1024]).await.unwrap();
        let started = Instant::now();
        let (end, totals) = task.await.unwrap();
        assert_eq!(end, End::Error(Side::Downstream));
        assert!(started.elapsed() < secs(30), "{:?}", started.elapsed());
        assert!(totals.bytes_down < 32 * 1024, "{totals:?}");
        // The upstream is closed, not left half-open.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
    }

    /// A reader that takes a byte at a time, slower than the whole chunk would need, but never
    /// silent for `send`: it is not cut off (the limit is between writes, as nginx's).
    #[tokio::test(start_paused = true)]
    async fn a_slow_but_live_reader_is_not_cut_off() {
        let (down, mut client) = duplex(16);
        let (up, mut server) = duplex(64 * 1024);
        let task = spawn(down, up, Protocol::Pop3, (secs(1800), secs(5)), never());
        server.write_all(&[b'm'; 200]).await.unwrap();
        let mut got = 0;
        while got < 200 {
            tokio::time::sleep(secs(2)).await;
            let mut b = [0u8; 16];
            got += client.read(&mut b).await.unwrap();
        }
        assert!(!task.is_finished(), "a live reader was cut off");
        drop(server);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        drop(client);
        assert_eq!(task.await.unwrap().0, End::UpstreamClosed);
    }

    #[tokio::test]
    async fn interrupt_between_responses_sends_goodbye() {
        let (down, mut client) = duplex(1024);
        let (up, mut server) = duplex(1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = spawn(down, up, Protocol::Imap, (secs(60), SEND), async {
            rx.await.unwrap_or(Interrupt::Shutdown)
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
        let task = spawn(down, up, Protocol::Imap, (secs(60), SEND), async {
            rx.await.unwrap_or(Interrupt::Shutdown)
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
