//! Listeners, TLS and the byte stream a session runs over.

pub mod tls;

use crate::stanza::StreamError;
use crate::xml::reader::{StreamReader, XmlError};
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// How long a TLS handshake may take, on any listener and in either role.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// The most one socket read takes in.
const READ_CHUNK: usize = 4096;

/// Why an XML stream (client or server) stops.
#[derive(Debug, thiserror::Error)]
pub enum StreamEnd {
    /// Send this stream error, then close.
    #[error("stream error: {0}")]
    Stream(StreamError),
    /// The peer closed the stream (or the connection) cleanly.
    #[error("closed")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<XmlError> for StreamEnd {
    fn from(e: XmlError) -> Self {
        StreamEnd::Stream(StreamError::new(e.condition()).with_text(e.to_string()))
    }
}

impl StreamEnd {
    pub fn timed_out() -> StreamEnd {
        StreamEnd::Io(std::io::ErrorKind::TimedOut.into())
    }
}

/// The TCP stream under server-side TLS. rustls hands its encrypted records over as a
/// vectored write even when there is one record, which is nearly always: a lone buffer
/// goes out with `send` here, sparing the kernel `writev`'s copy-in of the iovec array
/// on every stanza. Several buffers still go out in one `writev`.
pub struct Tcp(pub TcpStream);

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let tcp = &mut self.get_mut().0;
        match bufs {
            [one] => Pin::new(tcp).poll_write(cx, one),
            _ => Pin::new(tcp).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// One session type over TCP and TLS: STARTTLS swaps the variant in place. Streams we
/// accepted use the server side of TLS; outgoing server-to-server streams the client side.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<Tcp>>),
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl MaybeTls {
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_) | MaybeTls::TlsClient(_))
    }

    /// Reads once from the socket into the parser; end of file is `Closed`.
    ///
    /// The read buffer lives on the stack of a single poll, never across an await: a
    /// connection waiting for input (nearly all of them, nearly all the time) holds no
    /// read buffer of its own. Whatever a poll reads goes to the parser in that same
    /// poll, so the future is cancel-safe (session loops race it against their queues).
    pub async fn read_into(&mut self, reader: &mut StreamReader) -> Result<(), StreamEnd> {
        std::future::poll_fn(|cx| {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *self).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(StreamEnd::Io(e))),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    Poll::Ready(Err(StreamEnd::Closed))
                }
                Poll::Ready(Ok(())) => {
                    reader.feed(buf.filled());
                    Poll::Ready(Ok(()))
                }
            }
        })
        .await
    }

    /// Writes `out` whole and flushes it. A peer that does not take it within `limit`
    /// has stopped reading: that is a timeout error.
    pub async fn write_batch(&mut self, out: &[u8], limit: Duration) -> Result<(), StreamEnd> {
        let write = async {
            self.write_all(out).await?;
            self.flush().await
        };
        tokio::pin!(write);
        // A socket with room (nearly always) takes the whole batch in the first poll: the
        // deadline, which costs a clock read and a timer, is only set up when it does not.
        let result = match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => tokio::time::timeout(limit, write).await,
        };
        match result {
            Ok(r) => Ok(r?),
            Err(_) => Err(StreamEnd::timed_out()),
        }
    }

    /// After our closing tag went out: ends our direction and waits up to `wait` for the
    /// peer to end its own (RFC 6120 §4.4), discarding whatever it still sends.
    pub async fn linger(&mut self, wait: Duration) {
        let mut scratch = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + wait;
        let _ = self.shutdown().await;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, self.read(&mut scratch)).await {
            if n == 0 {
                break;
            }
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
