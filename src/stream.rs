//! A TCP stream that is plaintext now and may become TLS later (STARTTLS / STLS), on either side.
//!
//! One enum instead of boxing a trait object: the splice hot path stays monomorphic.
//!
//! Also [`read_with`]: a read that holds no buffer of its own while it waits. Most connections
//! are idle most of the time (a client in IDLE, one that has not logged in yet); a read buffer
//! per connection and direction would be most of their memory. They borrow the running
//! thread's buffer for the moment data is there instead.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Plaintext or TLS over TCP. `S` is `tokio_rustls::server::TlsStream` downstream and
/// `tokio_rustls::client::TlsStream` upstream.
pub enum MaybeTls<S> {
    Plain(TcpStream),
    Tls(Box<S>),
    /// Moved out during a STARTTLS handshake; every I/O on it fails.
    Detached,
}

/// The mail client's side.
pub type Downstream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;
/// The real mail server's side.
pub type UpstreamStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

impl<S> MaybeTls<S> {
    /// The plain TCP stream, for a STARTTLS upgrade; `None` when TLS is already on.
    pub fn into_plain(self) -> Option<TcpStream> {
        match self {
            MaybeTls::Plain(tcp) => Some(tcp),
            MaybeTls::Tls(_) | MaybeTls::Detached => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl Downstream {
    /// TLS protocol version, for the audit record.
    pub fn tls_version(&self) -> Option<&'static str> {
        match self {
            MaybeTls::Plain(_) | MaybeTls::Detached => None,
            MaybeTls::Tls(tls) => tls.get_ref().1.protocol_version().and_then(|v| v.as_str()),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Detached => Poll::Ready(Err(detached())),
        }
    }
}

/// Size of the per-thread read buffer: 16 KiB, the TLS maximum record size, so a full record
/// moves at once.
pub const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// One read buffer per runtime thread, lent to whichever connection is readable. Nothing
    /// is left in it between two polls: the bytes are handed on before the poll returns.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// Polls `rd` for a read of at most `max` bytes (and at most [`SCRATCH`]) into the thread's
/// buffer; when bytes (or EOF: an empty slice) are there, hands them to `take` and returns its
/// result. While the read is pending nothing is held: the waiting connection costs no buffer.
pub fn poll_read_with<R, T>(
    rd: &mut R,
    max: usize,
    cx: &mut Context<'_>,
    take: impl FnOnce(&[u8]) -> T,
) -> Poll<io::Result<T>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    SCRATCH_BUF.with(|cell| {
        // Borrowed only inside this call; a reader that itself came back here (none does)
        // gets a buffer of its own instead of a panic.
        let mut own;
        let mut borrowed = cell.try_borrow_mut();
        let buf: &mut [u8] = match borrowed.as_deref_mut() {
            Ok(buf) => buf,
            Err(_) => {
                own = vec![0u8; SCRATCH];
                &mut own
            }
        };
        let len = buf.len().min(max);
        let mut rb = ReadBuf::new(buf.get_mut(..len).unwrap_or_default());
        match Pin::new(rd).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(take(rb.filled()))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Waits until `rd` has bytes (or reaches EOF: an empty slice) and hands at most `max` of them
/// to `take`, as [`poll_read_with`].
pub async fn read_with<R, T>(rd: &mut R, max: usize, take: impl FnOnce(&[u8]) -> T) -> io::Result<T>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut take = Some(take);
    std::future::poll_fn(|cx| {
        poll_read_with(rd, max, cx, |bytes| {
            // `take` is only used on the Ready poll, which is the last one.
            take.take().map(|take| take(bytes))
        })
    })
    .await
    .and_then(|t| t.ok_or_else(|| io::Error::other("read_with polled after completion")))
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream detached for a tls upgrade",
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncWriteExt, duplex};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// What `read_with` hands on is at most `max` bytes per call, nothing is lost between calls,
    /// and EOF is an empty slice.
    #[tokio::test]
    async fn read_with_hands_on_everything_in_bounded_pieces_then_eof() {
        let (mut client, mut server) = duplex(64 * 1024);
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        loop {
            let n = tokio::time::timeout(
                WAIT,
                read_with(&mut server, 4096, |bytes| {
                    assert!(bytes.len() <= 4096, "{} bytes at once", bytes.len());
                    got.extend_from_slice(bytes);
                    bytes.len()
                }),
            )
            .await
            .unwrap()
            .unwrap();
            if n == 0 {
                break;
            }
        }
        assert_eq!(got, sent);
    }

    /// A `max` above the thread's buffer is capped at it.
    #[tokio::test]
    async fn read_with_caps_at_the_scratch_size() {
        let (mut client, mut server) = duplex(4 * SCRATCH);
        client.write_all(&vec![7u8; 3 * SCRATCH]).await.unwrap();
        let n = tokio::time::timeout(WAIT, read_with(&mut server, usize::MAX, <[u8]>::len))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0 && n <= SCRATCH, "{n}");
    }
}
