//! A total deadline for receiving a request head. Pingora reads a request head of up to about
//! 1 MB and bounds each read separately (60 s on a new connection, the keep-alive timeout
//! afterwards), so a client that sends a byte a second could hold a connection forever.
//! [`Guarded`] wraps every accepted connection in [`HeaderDeadline`], which fails the read
//! once a request head has been arriving for longer than `header_timeout`.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The proxy app, with every client connection wrapped in a [`HeaderDeadline`].
pub(crate) struct Guarded<A> {
    pub inner: Arc<A>,
    pub header_timeout: Duration,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let stream: Stream = if stream.as_any().is::<HeaderDeadline>() {
            stream
        } else {
            Box::new(HeaderDeadline::new(stream, self.header_timeout))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        // Lets the proxy wake its idle keep-alive connections on shutdown.
        self.inner.cleanup().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head: the deadline runs.
    Head,
    /// The head is complete and the response has not started.
    Request,
    /// The response started; the next bytes read begin the next request head.
    Response,
}

/// A client stream that errors a read once a request head has taken longer than the
/// deadline. The deadline starts at accept for the first request, and at the first byte of
/// each following one (the wait before that byte is the keep-alive idle timeout's job).
#[derive(Debug)]
pub(crate) struct HeaderDeadline {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    head_end: HeadEnd,
}

impl HeaderDeadline {
    pub(crate) fn new(inner: Stream, timeout: Duration) -> HeaderDeadline {
        HeaderDeadline {
            inner,
            timeout,
            phase: Phase::Head,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            head_end: HeadEnd::default(),
        }
    }
}

/// Finds the blank line that ends a request head, across reads.
#[derive(Debug, Default, Clone, Copy)]
struct HeadEnd {
    /// The last three bytes seen.
    tail: [u8; 3],
}

impl HeadEnd {
    /// Feeds the next bytes of a head; true once `\r\n\r\n` has been seen.
    fn feed(&mut self, data: &[u8]) -> bool {
        if data.is_empty() {
            return false;
        }
        // Usually a whole head arrives in one read and ends it: check that first.
        let mut joint = [0u8; 6];
        let n = data.len().min(3);
        joint[..3].copy_from_slice(&self.tail);
        joint[3..3 + n].copy_from_slice(&data[..n]);
        if data.ends_with(b"\r\n\r\n")
            || joint[..3 + n].windows(4).any(|w| w == b"\r\n\r\n")
            || memchr::memmem::find(data, b"\r\n\r\n").is_some()
        {
            *self = HeadEnd::default();
            return true;
        }
        let mut last = [0u8; 6];
        last[..3].copy_from_slice(&self.tail);
        last[3..3 + n].copy_from_slice(&data[data.len() - n..]);
        self.tail.copy_from_slice(&last[n..n + 3]);
        false
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Head && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(deadline_passed()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let new = &buf.filled()[before..];
            if this.phase == Phase::Response && !new.is_empty() {
                this.phase = Phase::Head;
                this.head_end = HeadEnd::default();
                this.deadline.as_mut().reset(Instant::now() + this.timeout);
            }
            if this.phase == Phase::Head && this.head_end.feed(new) {
                this.phase = Phase::Request;
            }
        }
        result
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        // A response being written means its request head was complete, even when the blank
        // line was not seen here (a pipelined head split right inside it).
        self.phase = Phase::Response;
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.phase = Phase::Response;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// Everything else is the wrapped stream's.

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }

    /// Pingora waits here (with `h1_lazy_header_buf`) before it reads a request head: the
    /// deadline applies as it does to the read.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.phase == Phase::Head && self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(deadline_passed()));
        }
        self.inner.poll_read_ready(cx)
    }
}

fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request head timeout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blank_line_is_found_however_the_head_is_split() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for a in 0..head.len() {
            for b in a..head.len() {
                let mut h = HeadEnd::default();
                let found = [&head[..a], &head[a..b], &head[b..]]
                    .iter()
                    .any(|part| h.feed(part));
                assert!(found, "split at {a}, {b}");
            }
        }
        let mut h = HeadEnd::default();
        assert!(!h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!h.feed(b"X: y\r\n"));
        assert!(!h.feed(b"\r"));
        assert!(h.feed(b"\n"));
        assert!(!HeadEnd::default().feed(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    }
}
