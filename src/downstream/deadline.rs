//! A total deadline for receiving a request head. Pingora reads a request head of up to about
//! 1 MB and bounds each read separately (60 s on a new connection, the keep-alive timeout
//! afterwards), so a client that sends a byte a second could hold a connection forever.
//! [`Guarded`] wraps every accepted connection in [`HeaderDeadline`], which fails the read
//! once a request head has been arriving for longer than `header_timeout`.
//!
//! On HTTP/2 (negotiated by TLS ALPN, or a cleartext prior-knowledge preface on an `h2c`
//! listener, which `Guarded` detects per listener) the deadline covers the 24-byte connection
//! preface only: after it, frames are binary and the HTTP/2 settings (idle timeout, flow
//! control, write timeout) govern the connection.
//!
//! On HTTP/1 the wrapper also measures each head's request target as it arrives
//! (`request_line`): one longer than `max_uri_bytes` is answered 414 here, and Pingora never
//! sees that head (it could not parse a target of 64 KiB or more). A request line split across
//! reads is held back until it is complete, so Pingora never holds half of one. A head that a
//! client pipelines behind another (in the same read, or while the first is served) is kept
//! back and handed over, and measured, when Pingora asks for it, so it gets the 414 too, after
//! the answer to the one before it. On listeners
//! with `proxy_protocol`, a trusted peer's PROXY v2 header is read first (`proxy_protocol`).

use super::proxy_protocol::ProxyProtocol;
use super::request_line::{LogRefused, TargetScan, Verdict};
use crate::shutdown;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{GetSocketDigest, Peek, Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::head_end::{declares_body, HeadEnd};

/// The proxy app, with every client connection wrapped in a [`HeaderDeadline`].
pub(crate) struct Guarded<A> {
    pub inner: Arc<A>,
    pub header_timeout: Duration,
    /// Listeners that take cleartext HTTP/2 with prior knowledge. (Pingora's own `h2c` option
    /// would apply to every plain listener of the service.)
    pub h2c: Vec<SocketAddr>,
    /// Count this service's connections, for graceful shutdown.
    pub count_connections: bool,
    /// Longer request targets are answered 414 by the wrapper.
    pub max_uri_bytes: usize,
    /// Writes the access line of the wrapper's own 414s (`None`: not logged).
    pub log_refused: Option<LogRefused>,
    /// PROXY protocol v2 on the plain listeners (TLS ones read it before the handshake).
    pub proxy_protocol: Option<Arc<ProxyProtocol>>,
}

/// What an HTTP/2 connection starts with (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let _open = self.count_connections.then(shutdown::Connection::open);
        let stream: Stream = if stream.as_any().is::<HeaderDeadline>() {
            stream
        } else {
            // Boxed and freed once done: this future lives as long as the connection, and the
            // wrapping's awaits (the PROXY header, the h2c preface) held inline sized it at
            // ~1.7 KiB per idle client (heaptrack, 2,000 idle clients).
            Box::pin(self.wrap(stream)).await?
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        // Lets the proxy wake its idle keep-alive connections on shutdown.
        self.inner.cleanup().await
    }
}

impl<A> Guarded<A> {
    /// The client connection in its [`HeaderDeadline`] (after the PROXY header, if any).
    async fn wrap(&self, stream: Stream) -> Option<Stream> {
        let stream = match &self.proxy_protocol {
            Some(pp) => pp.accept_plain(stream).await?,
            None => stream,
        };
        let h2 = stream.selected_alpn_proto() == Some(ALPN::H2);
        let mut guarded = HeaderDeadline::new(stream, self.header_timeout, h2);
        guarded.max_target = self.max_uri_bytes;
        guarded.log = self.log_refused.clone();
        if !h2 && self.on_h2c_listener(&guarded) {
            guarded.detect_h2c().await;
        }
        Some(Box::new(guarded))
    }

    fn on_h2c_listener(&self, stream: &HeaderDeadline) -> bool {
        if self.h2c.is_empty() {
            return false;
        }
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet().copied()));
        local.is_some_and(|local| {
            self.h2c
                .iter()
                .any(|l| *l == local || (l.ip().is_unspecified() && l.port() == local.port()))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// HTTP/1: waiting for (the rest of) a request head: the deadline runs.
    Head,
    /// HTTP/1: the head is complete and the response has not started.
    Request,
    /// HTTP/1: the response started; the next bytes read begin the next request head.
    Response,
    /// HTTP/2: waiting for the rest of the connection preface: the deadline runs.
    H2Preface { left: u8 },
    /// HTTP/2 after its preface.
    H2,
}

impl Phase {
    fn deadline_runs(self) -> bool {
        matches!(self, Phase::Head | Phase::H2Preface { .. })
    }
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
    /// Cleartext HTTP/2 detected on an `h2c` listener: reported to Pingora as ALPN `h2`.
    h2c: bool,
    /// HTTP/1: the request target of the current head, and its limit.
    scan: TargetScan,
    max_target: usize,
    /// Bytes read but not yet handed to Pingora: an incomplete request line.
    held: Vec<u8>,
    /// Bytes read after the end of the head Pingora is serving: the next pipelined request(s),
    /// handed over (and measured) when Pingora asks for the next head.
    next: Vec<u8>,
    /// A 414 being answered by the wrapper.
    refusal: Option<Refusal>,
    log: Option<LogRefused>,
}

/// The wrapper's own 414: written, then the rest of the head read and dropped (so the close
/// is not a reset that could destroy the answer), then end of stream for Pingora.
#[derive(Debug)]
struct Refusal {
    answer: Vec<u8>,
    written: usize,
    drained: usize,
    done: bool,
    /// The refused head's blank line was already read: nothing to drain.
    head_read: bool,
}

/// The most of a refused head that is read and dropped before the connection is closed.
const MAX_DRAIN: usize = 1 << 20;

impl HeaderDeadline {
    pub(crate) fn new(inner: Stream, timeout: Duration, h2: bool) -> HeaderDeadline {
        HeaderDeadline {
            inner,
            timeout,
            phase: if h2 {
                Phase::H2Preface { left: 24 }
            } else {
                Phase::Head
            },
            deadline: Box::pin(tokio::time::sleep(timeout)),
            head_end: HeadEnd::default(),
            h2c: false,
            scan: TargetScan::default(),
            max_target: usize::MAX,
            held: Vec::new(),
            next: Vec::new(),
            refusal: None,
            log: None,
        }
    }

    /// On an `h2c` listener: whether the client starts with the HTTP/2 preface (looked at
    /// without consuming it, within the deadline). Otherwise it is served as HTTP/1.1.
    async fn detect_h2c(&mut self) {
        let mut first = [0u8; 24];
        let peeked = tokio::time::timeout_at(self.deadline.deadline(), self.inner.try_peek(&mut first)).await;
        if matches!(peeked, Ok(Ok(true))) && first == *H2_PREFACE {
            self.phase = Phase::H2Preface { left: 24 };
            self.h2c = true;
        }
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::H2 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.refusal.is_some() {
            return this.poll_refusal(cx);
        }
        if !this.held.is_empty() && this.scan.verdict() != Verdict::Incomplete {
            this.hand_over_held(buf);
            return Poll::Ready(Ok(()));
        }
        if matches!(this.phase, Phase::Request | Phase::Response) && buf.remaining() == 1 {
            // Pingora's one-byte idle read while it serves a request (it notices a client that
            // leaves). What arrives now begins the next pipelined request: it is kept, and
            // measured when Pingora asks for that head, so a 414 is never written into the
            // response in progress.
            return this.poll_idle(cx);
        }
        loop {
            if this.phase.deadline_runs() && this.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(deadline_passed()));
            }
            let before = buf.filled().len();
            let result = this.read_next_or_inner(cx, buf);
            if !matches!(result, Poll::Ready(Ok(()))) {
                return result;
            }
            let new = &buf.filled()[before..];
            let mut head_end = None;
            let http1_head = match this.phase {
                Phase::H2Preface { left } => {
                    let left = left.saturating_sub(new.len().min(24) as u8);
                    this.phase = if left == 0 {
                        Phase::H2
                    } else {
                        Phase::H2Preface { left }
                    };
                    false
                }
                Phase::Response if !new.is_empty() => {
                    this.phase = Phase::Head;
                    this.head_end = HeadEnd::default();
                    this.scan = TargetScan::default();
                    this.deadline.as_mut().reset(Instant::now() + this.timeout);
                    head_end = this.head_end.feed_at(new);
                    true
                }
                Phase::Head => {
                    head_end = this.head_end.feed_at(new);
                    true
                }
                _ => false,
            };
            if let Some(end) = head_end {
                this.phase = Phase::Request;
                // Bytes behind this head belong to the next request (a pipelined head in the
                // same read): held back until Pingora asks for it, unless this head announces
                // a body, which they then are.
                let head = &buf.filled()[before..before + end];
                if before + end < buf.filled().len() && !declares_body(head) {
                    let rest = buf.filled()[before + end..].to_vec();
                    this.next.splice(..0, rest);
                    buf.set_filled(before + end);
                }
            }
            let new = &buf.filled()[before..];
            if !http1_head || this.scan.verdict() != Verdict::Incomplete {
                return Poll::Ready(Ok(()));
            }
            match this.scan.feed(new, this.max_target) {
                Verdict::Fine if this.held.is_empty() => return Poll::Ready(Ok(())),
                Verdict::Fine => {
                    this.held.extend_from_slice(new);
                    buf.set_filled(before);
                    this.hand_over_held(buf);
                    return Poll::Ready(Ok(()));
                }
                Verdict::TooLong => {
                    buf.set_filled(before);
                    this.held = Vec::new();
                    // The connection ends with the 414: what followed is dropped, and the
                    // refused head was already read to its end if it ended in this read.
                    let head_read = head_end.is_some() || {
                        let next = std::mem::take(&mut this.next);
                        this.head_end.feed(&next)
                    };
                    this.next = Vec::new();
                    let client = this
                        .inner
                        .get_socket_digest()
                        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied()));
                    let elapsed = this
                        .timeout
                        .saturating_sub(this.deadline.deadline().saturating_duration_since(Instant::now()));
                    this.refusal = Some(Refusal {
                        answer: this.scan.refuse(client, this.log.as_ref(), elapsed),
                        written: 0,
                        drained: 0,
                        done: false,
                        head_read,
                    });
                    return this.poll_refusal(cx);
                }
                // End of stream with a partial line: Pingora gets what there is.
                Verdict::Incomplete if new.is_empty() => {
                    this.hand_over_held(buf);
                    return Poll::Ready(Ok(()));
                }
                // The line goes on in the next read: hold these bytes back and read again.
                Verdict::Incomplete => {
                    this.held.extend_from_slice(new);
                    buf.set_filled(before);
                }
            }
        }
    }
}

impl HeaderDeadline {
    /// Pingora's idle read during a request: end of stream and errors go through (Pingora
    /// notices a client that left); bytes of a next request are kept in `next` and this read
    /// stays pending (Pingora reads that request once this one is answered).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.next.is_empty() {
            return Poll::Pending;
        }
        // Small: this runs several times per request, nearly always to find nothing, and
        // a larger buffer costs its zeroing each time. The rest of a next request waits in
        // the socket until Pingora asks for it.
        let mut scratch = [0u8; 64];
        let mut rb = ReadBuf::new(&mut scratch);
        match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                self.next.extend_from_slice(rb.filled());
                Poll::Pending
            }
            other => other,
        }
    }

    /// The next bytes: kept ones of a following request first (at most one read's worth: an
    /// idle read keeps at most 64 bytes, and bytes behind a head are what was left of its
    /// read), then the socket's.
    fn read_next_or_inner(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.next.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.next.len().min(buf.remaining());
        buf.put_slice(&self.next[..n]);
        self.next.drain(..n);
        Poll::Ready(Ok(()))
    }

    /// Gives Pingora as many held bytes as its buffer takes.
    fn hand_over_held(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.held.len().min(buf.remaining());
        buf.put_slice(&self.held[..n]);
        self.held.drain(..n);
    }

    /// Writes the 414, reads and drops the rest of the head (within the deadline, at most
    /// `MAX_DRAIN`), then reports the end of the stream: Pingora, which saw nothing of this
    /// head, closes the connection without a word.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(r) = self.refusal.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !r.done && r.written < r.answer.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &r.answer[r.written..]) {
                Poll::Ready(Ok(n)) if n > 0 => r.written += n,
                Poll::Ready(_) => r.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        if !r.done && Pin::new(&mut self.inner).poll_flush(cx).is_pending() {
            return Poll::Pending;
        }
        let mut scratch = [0u8; 8192];
        while !r.done && !r.head_read {
            if self.deadline.as_mut().poll(cx).is_ready() {
                break;
            }
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    r.drained += rb.filled().len();
                    r.done = self.head_end.feed(rb.filled()) || r.drained > MAX_DRAIN;
                }
                Poll::Ready(_) => r.done = true,
            }
        }
        r.done = true;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.response_started();
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
        self.response_started();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl HeaderDeadline {
    /// HTTP/1: a response being written means its request head was complete, even when the
    /// blank line was not seen here (a pipelined head split right inside it).
    fn response_started(&mut self) {
        if matches!(self.phase, Phase::Head | Phase::Request) {
            self.phase = Phase::Response;
        }
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    /// The deadline applies to a peek as it does to a read.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if !self.phase.deadline_runs() {
            return self.inner.try_peek(buf).await;
        }
        match tokio::time::timeout_at(self.deadline.deadline(), self.inner.try_peek(buf)).await {
            Ok(peeked) => peeked,
            Err(_) => Err(deadline_passed()),
        }
    }

    /// Pingora waits here (with `h1_lazy_header_buf`) before it reads a request head: the
    /// deadline applies as it does to the read.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What the wrapper has to hand over or answer comes before the socket's readiness.
        let held_ready = !self.held.is_empty() && self.scan.verdict() != Verdict::Incomplete;
        if held_ready || self.refusal.is_some() || !self.next.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if self.phase.deadline_runs() && self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(deadline_passed()));
        }
        self.inner.poll_read_ready(cx)
    }
}

fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request head timeout")
}

mod passthrough;
