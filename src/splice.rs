//! Stage: splice. After the login, copy bytes both ways until one side ends.
//!
//! Inputs: the downstream and the logged-in upstream stream, the idle timeout, and the goodbye
//! line to send downstream when the session idles out. Output: how the session ended and the
//! byte counts. Each direction runs on its own (split halves, joined in one task), so a peer that
//! stops reading never blocks the other direction (the deadlock imap-next's `stream.rs`
//! describes). Bytes are forwarded as they arrive: nothing is parsed, nothing is buffered
//! beyond one read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// One read per wakeup: 16 KiB, the TLS maximum record size, so a full record moves at once.
const BUFFER: usize = 16 * 1024;

/// Which peer a failure came from (pingora `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

/// How a spliced session ended. Maps onto the audit `end` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    DownstreamClosed,
    UpstreamClosed,
    IdleTimeout,
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

/// Copy both ways until both directions have ended, a side fails, or nothing moved for `idle`.
/// On idle, `goodbye` is sent downstream (IMAP `* BYE`, POP3 `-ERR`) before both sides close.
pub async fn splice<D, U>(down: D, up: U, idle: Duration, goodbye: &[u8]) -> (End, Totals)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
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

    let end = {
        let to_up = pump(
            &mut down_rd,
            &mut up_wr,
            &activity,
            &bytes_up,
            Side::Downstream,
        );
        let to_down = pump(
            &mut up_rd,
            &mut down_wr,
            &activity,
            &bytes_down,
            Side::Upstream,
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
        }
    };

    if end == End::IdleTimeout {
        // Bounded: a downstream that stopped reading must not hold the task.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            down_wr.write_all(goodbye).await?;
            down_wr.flush().await
        })
        .await;
    }
    let close = async {
        let _ = down_wr.shutdown().await;
        let _ = up_wr.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
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
async fn pump<R, W>(
    rd: &mut R,
    wr: &mut W,
    activity: &Activity,
    count: &AtomicU64,
    from: Side,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let to = match from {
        Side::Downstream => Side::Upstream,
        Side::Upstream => Side::Downstream,
    };
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = rd.read(&mut buf).await.map_err(|_| from)?;
        if n == 0 {
            let _ = wr.shutdown().await;
            return Ok(());
        }
        // Unwrap-free slice: `read` never returns more than the buffer's length.
        let chunk = buf.get(..n).ok_or(from)?;
        wr.write_all(chunk).await.map_err(|_| to)?;
        wr.flush().await.map_err(|_| to)?;
        activity.touch();
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn copies_both_ways_and_counts() {
        let (down, mut client) = duplex(64 * 1024);
        let (up, mut server) = duplex(64 * 1024);
        let task = tokio::spawn(async move {
            splice(down, up, Duration::from_secs(30), b"* BYE idle\r\n").await
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

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_sends_goodbye() {
        let (down, mut client) = duplex(1024);
        let (up, _server) = duplex(1024);
        let task = tokio::spawn(async move {
            splice(down, up, Duration::from_secs(60), b"* BYE Autologout\r\n").await
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"* BYE Autologout\r\n");
        assert_eq!(task.await.unwrap().0, End::IdleTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_defers_idle_timeout() {
        let (down, mut client) = duplex(1024);
        let (up, mut server) = duplex(1024);
        let task =
            tokio::spawn(
                async move { splice(down, up, Duration::from_secs(60), b"BYE\r\n").await },
            );
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
        assert_eq!(got, b"BYE\r\n");
        assert_eq!(task.await.unwrap().0, End::IdleTimeout);
    }
}
