//! What keeps an exposed server from being exhausted by its clients, below the HTTP layer:
//! a cap on open connections and on those of any one client address, a deadline for a
//! connection's first byte (an idle socket that never speaks), and one for a client that sends
//! a request but never finishes it (a partial header a byte at a time). poem sets the idle
//! timeout and the HTTP/2 limits itself (see [`super::serve`]).

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
    /// Most open connections from one client IP address; more are closed at once.
    pub max_connections_per_client: u32,
    /// A new connection that sends nothing for this long is closed.
    pub first_byte_timeout: Duration,
    /// A connection with no bytes read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Once a client has sent bytes, the answer must start within this long.
    pub request_timeout: Duration,
    pub http2_max_streams: u32,
    pub http2_max_header_bytes: u32,
    /// Most read-your-writes requests (`minSequence` + `waitMs`) waiting at once; more are
    /// answered 503 `PROJECTION_BEHIND` at once.
    pub max_waiters: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            max_connections_per_client: 128,
            first_byte_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            http2_max_streams: 64,
            http2_max_header_bytes: 16_384,
            max_waiters: 1024,
        }
    }
}

/// Accepts at most `permits` connections at once: the next waits in the kernel's backlog
/// until one closes, so memory never grows with the number of clients. One client address
/// holds at most `per_client` of them: its next connection is closed at once, so a flood from
/// one host cannot fill the pool that every other client (and the probes) need.
pub struct LimitedAcceptor<A> {
    inner: A,
    permits: Arc<Semaphore>,
    per_client: Arc<PerClient>,
    first_byte_timeout: Duration,
    request_timeout: Duration,
}

/// Open connections per client IP address.
struct PerClient {
    limit: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl PerClient {
    fn admit(self: &Arc<Self>, address: Option<std::net::IpAddr>) -> Option<ClientSlot> {
        let Some(address) = address else {
            return Some(ClientSlot { owner: None });
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            owner: Some((self.clone(), address)),
        })
    }
}

/// A connection's place in its address's count, given back on drop.
struct ClientSlot {
    owner: Option<(Arc<PerClient>, std::net::IpAddr)>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((per_client, address)) = self.owner.take() {
            let mut open = per_client.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = open.get_mut(&address) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&address);
                }
            }
        }
    }
}

impl<A> LimitedAcceptor<A> {
    pub fn new(inner: A, limits: &HttpLimits) -> Self {
        LimitedAcceptor {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections as usize)),
            per_client: Arc::new(PerClient {
                limit: limits.max_connections_per_client as usize,
                open: Default::default(),
            }),
            first_byte_timeout: limits.first_byte_timeout,
            request_timeout: limits.request_timeout,
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
        loop {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| io::Error::other("connection limiter closed"))?;
            let (io, local, remote, scheme) = self.inner.accept().await?;
            let address = match &remote.0 {
                poem::Addr::SocketAddr(address) => Some(address.ip()),
                _ => None,
            };
            // Over its address's share: dropped here, which closes the socket.
            let Some(slot) = self.per_client.admit(address) else {
                continue;
            };
            return Ok((
                LimitedIo {
                    io,
                    _permit: permit,
                    _slot: slot,
                    request_timeout: self.request_timeout,
                    spoken: false,
                    deadline: Some(Box::pin(tokio::time::sleep(self.first_byte_timeout))),
                },
                local,
                remote,
                scheme,
            ));
        }
    }
}

/// A connection holding its permit. Its first byte must come within `first_byte_timeout`;
/// once the client has sent bytes, the server must have answered within `request_timeout`,
/// or the connection is closed: a request that never completes its headers cannot hold a
/// connection for ever. Answering (any write) clears the deadline.
pub struct LimitedIo<Io> {
    io: Io,
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot,
    request_timeout: Duration,
    /// Whether the client has sent anything yet.
    spoken: bool,
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
            if !this.spoken || this.deadline.is_none() {
                this.spoken = true;
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
