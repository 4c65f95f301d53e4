//! What keeps an exposed server from being exhausted by its clients, below the HTTP layer:
//! a cap on open connections, and a deadline for a client that sends a request but never
//! finishes it (a partial header a byte at a time). poem sets the idle timeout and the HTTP/2
//! limits itself (see [`super::serve`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The HTTP server's limits (`JOBSTATS_HTTP_*`, CONTRACT §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most open client connections; more wait in the listen backlog until one closes.
    pub max_connections: u32,
    /// A connection with no bytes read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Once a client has sent bytes, the answer must start within this long.
    pub request_timeout: Duration,
    pub http2_max_streams: u32,
    pub http2_max_header_bytes: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            http2_max_streams: 64,
            http2_max_header_bytes: 16_384,
        }
    }
}

/// Accepts at most `permits` connections at once: the next waits in the kernel's backlog
/// until one closes, so memory never grows with the number of clients.
pub struct LimitedAcceptor<A> {
    inner: A,
    permits: Arc<Semaphore>,
    request_timeout: Duration,
}

impl<A> LimitedAcceptor<A> {
    pub fn new(inner: A, max_connections: usize, request_timeout: Duration) -> Self {
        LimitedAcceptor {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            request_timeout,
        }
    }
}

impl<A: Acceptor> Acceptor for LimitedAcceptor<A> {
    type Io = LimitedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("connection limiter closed"))?;
        let (io, local, remote, scheme) = self.inner.accept().await?;
        Ok((
            LimitedIo {
                io,
                _permit: permit,
                request_timeout: self.request_timeout,
                deadline: None,
            },
            local,
            remote,
            scheme,
        ))
    }
}

/// A connection holding its permit. Once the client has sent bytes, the server must have
/// answered within `request_timeout`, or the connection is closed: a request that never
/// completes its headers cannot hold a connection for ever. Answering (any write) clears it.
pub struct LimitedIo<Io> {
    io: Io,
    _permit: OwnedSemaphorePermit,
    request_timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<Io: AsyncRead + Unpin> AsyncRead for LimitedIo<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if this.deadline.is_none() {
                this.deadline = Some(Box::pin(tokio::time::sleep(this.request_timeout)));
            }
            return read;
        }
        if let (Poll::Pending, Some(deadline)) = (&read, this.deadline.as_mut()) {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request not completed in time",
                )));
            }
        }
        read
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for LimitedIo<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.deadline = None;
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.deadline = None;
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
