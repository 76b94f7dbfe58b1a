//! Protections on the client side that Pingora does not have: request head limits (URI
//! length, header bytes, header count) and a total deadline for receiving a request head.
//!
//! Pingora reads a request head of up to about 1 MB and bounds each read separately (60 s on a
//! new connection, the keep-alive timeout afterwards), so a client that sends a byte a second
//! can hold a connection forever. [`Guarded`] wraps every accepted connection in
//! [`HeaderDeadline`], which fails the read once a request head has been arriving for longer
//! than `header_timeout`.

use crate::config::DownstreamConf;
use crate::errors::{self, Reject};
use async_trait::async_trait;
use http::HeaderName;
use pingora::apps::ServerApp;
use pingora::http::RequestHeader;
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

/// Limits on a request head, checked before anything else looks at the request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    max_uri_bytes: usize,
    max_header_bytes: usize,
    max_headers: usize,
}

impl Limits {
    pub fn new(conf: &DownstreamConf) -> Limits {
        Limits {
            max_uri_bytes: conf.max_uri_bytes.0 as usize,
            max_header_bytes: conf.max_header_bytes.0 as usize,
            max_headers: conf.max_headers,
        }
    }

    /// 414 for a long request target, 431 for too many or too large header fields.
    pub fn check(&self, req: &RequestHeader) -> Result<(), Reject> {
        let uri = req.raw_path().len();
        if uri > self.max_uri_bytes {
            return Err(errors::URI_TOO_LONG);
        }
        if req.headers.len() > self.max_headers {
            return Err(errors::TOO_MANY_HEADERS);
        }
        let mut bytes = req.method.as_str().len() + uri + 12; // "GET <uri> HTTP/1.1\r\n"
        for (name, value) in req.headers.iter() {
            bytes += name.as_str().len() + value.len() + 4; // ": " and CRLF
            if bytes > self.max_header_bytes {
                return Err(errors::HEADERS_TOO_LARGE);
            }
        }
        Ok(())
    }
}

/// Checks and cleans a request head before anything else looks at it, so that what the
/// gateway refuses is refused before any upstream work, and what it accepts is forwarded
/// clean:
/// - an HTTP/1.1 request without `Host`, or any request with an invalid one, is a 400
///   (RFC 9112 3.2; RFC 9110 4.2.1: an `http` URI has a non-empty host);
/// - the options the client names in `Connection` are this hop's: those headers are removed
///   here and `Connection` with them (Pingora would refuse some of them, such as `Host`, only
///   after taking an upstream connection). The framing headers stay: the body was framed by
///   them and removing them would let body bytes pass for a next request;
/// - header names with `_` are dropped, as nginx does by default: CGI, WSGI, Rack and PHP
///   backends read `X_Forwarded_For` and `X-Forwarded-For` as the same variable, so a client
///   could otherwise spoof what the gateway sets;
/// - an HTTP/1.0 request's `Expect` is ignored (RFC 9110 10.1.1).
pub fn sanitize(req: &mut RequestHeader) -> Result<(), Reject> {
    match req.headers.get(http::header::HOST) {
        None if req.version == http::Version::HTTP_11 => return Err(errors::MISSING_HOST),
        Some(host) if !is_valid_host(host.as_bytes()) => return Err(errors::BAD_HOST),
        _ => {}
    }
    if req.headers.contains_key(http::header::CONNECTION) {
        let nominated: Vec<HeaderName> = req
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .filter(|n| *n != http::header::CONTENT_LENGTH && *n != http::header::TRANSFER_ENCODING)
            .collect();
        for name in nominated.iter().chain([&http::header::CONNECTION]) {
            req.remove_header(name);
        }
    }
    if req.headers.keys().any(|n| n.as_str().contains('_')) {
        let underscored: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|n| n.as_str().contains('_'))
            .cloned()
            .collect();
        for name in &underscored {
            req.remove_header(name);
        }
    }
    if req.version == http::Version::HTTP_10 {
        req.remove_header(&http::header::EXPECT);
    }
    Ok(())
}

/// Whether the client asked to keep its connection: HTTP/1.1 unless `Connection: close`,
/// HTTP/1.0 only with `Connection: keep-alive` (Pingora's rule for the proxy; its `ServeHttp`
/// apps ignore it).
pub fn client_wants_keepalive(req: &RequestHeader) -> bool {
    let has = |token: &str| {
        req.headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    match req.version {
        http::Version::HTTP_11 => !has("close"),
        http::Version::HTTP_10 => has("keep-alive") && !has("close"),
        _ => false,
    }
}

/// `host[:port]` as RFC 3986 allows it: a non-empty reg-name or IPv4 address, or an IPv6
/// literal in brackets, and a port of digits. (Checked by hand: this runs on every request,
/// and `http::uri::Authority` would copy the value first.)
fn is_valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        match v.iter().position(|&b| b == b']') {
            Some(end) => (&v[..=end], &v[end + 1..]),
            None => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &[][..]),
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let host_ok = match host {
        [b'[', inner @ .., b']'] => {
            !inner.is_empty() && inner.iter().all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        }
        _ => {
            !host.is_empty()
                && host
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b))
        }
    };
    port_ok && host_ok
}

/// The proxy app, with every client connection wrapped in a [`HeaderDeadline`].
pub struct Guarded<A> {
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
pub struct HeaderDeadline {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    head_end: HeadEnd,
}

impl HeaderDeadline {
    pub fn new(inner: Stream, timeout: Duration) -> HeaderDeadline {
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
            || data.windows(4).any(|w| w == b"\r\n\r\n")
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
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head timeout",
            )));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: http::Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.set_version(version);
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    /// Header names, sorted (removal reorders a header map).
    fn names(r: &RequestHeader) -> Vec<&str> {
        let mut names: Vec<&str> = r.headers.keys().map(|n| n.as_str()).collect();
        names.sort();
        names
    }

    #[test]
    fn host_is_required_on_http11_and_must_be_valid() {
        let v11 = http::Version::HTTP_11;
        assert_eq!(sanitize(&mut request(v11, &[])), Err(errors::MISSING_HOST));
        assert_eq!(sanitize(&mut request(http::Version::HTTP_10, &[])), Ok(()));
        for good in [
            "a",
            "assets.example.com",
            "a:8080",
            "10.0.3.7:80",
            "[::1]:8080",
            "[::1]",
            "a:",
        ] {
            assert_eq!(sanitize(&mut request(v11, &[("host", good)])), Ok(()), "{good}");
        }
        for bad in [
            "", ":80", "a b", "a:port", "a:123456", "[::1", "[zz]", "a/b", "a@b", "a?b",
        ] {
            assert_eq!(
                sanitize(&mut request(v11, &[("host", bad)])),
                Err(errors::BAD_HOST),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn connection_options_and_underscored_names_are_removed() {
        let mut r = request(
            http::Version::HTTP_11,
            &[
                ("host", "a"),
                ("connection", "Host, X-Custom, close, content-length"),
                ("connection", "transfer-encoding"),
                ("x-custom", "1"),
                ("x_forwarded_for", "6.6.6.6"),
                ("content-length", "0"),
                ("accept", "*/*"),
            ],
        );
        assert_eq!(sanitize(&mut r), Ok(()));
        assert_eq!(names(&r), ["accept", "content-length"]);
    }

    #[test]
    fn keepalive_follows_the_client() {
        const HTTP_10: http::Version = http::Version::HTTP_10;
        const HTTP_11: http::Version = http::Version::HTTP_11;
        let wants = |v, c: &[(&str, &str)]| client_wants_keepalive(&request(v, c));
        assert!(wants(HTTP_11, &[]));
        assert!(!wants(HTTP_11, &[("connection", "Close")]));
        assert!(!wants(HTTP_11, &[("connection", "x, close")]));
        assert!(!wants(HTTP_10, &[]));
        assert!(wants(HTTP_10, &[("connection", "keep-alive")]));
    }

    #[test]
    fn http10_expect_is_ignored() {
        let mut r = request(http::Version::HTTP_10, &[("expect", "100-continue")]);
        assert_eq!(sanitize(&mut r), Ok(()));
        assert!(names(&r).is_empty());
        let mut r = request(
            http::Version::HTTP_11,
            &[("host", "a"), ("expect", "100-continue")],
        );
        assert_eq!(sanitize(&mut r), Ok(()));
        assert_eq!(names(&r), ["expect", "host"]);
    }

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
