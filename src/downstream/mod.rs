//! The client side: what a request head must be before anything else looks at it (limits,
//! `Host`, the headers that never go further), the keep-alive rule, and
//! (in `deadline`) a total deadline for receiving a request head, which Pingora lacks.

mod deadline;
mod head_end;
pub(crate) mod proxy_protocol;
mod request_line;

pub(crate) use deadline::Guarded;
pub(crate) use request_line::{LogRefused, RefusedHead};

use crate::errors::{self, Reject};
use http::HeaderName;
use pingora::http::RequestHeader;

/// Limits on a request head, checked before anything else looks at the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl Limits {
    /// 414 for a long request target, 431 for too many or too large header fields.
    pub(crate) fn check(&self, req: &RequestHeader) -> Result<(), Reject> {
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
pub(crate) fn sanitize(req: &mut RequestHeader) -> Result<(), Reject> {
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

/// An HTTP/2 stream the client has already reset (the rapid-reset pattern: open a stream,
/// cancel it at once, repeat). Checked before any work for the request: the HTTP/2 layer still
/// hands such streams over, and each would otherwise cost an upstream request. The HTTP/2
/// layer itself closes a connection with too many such streams (`max_pending_reset_streams`).
pub(crate) async fn h2_stream_reset(session: &mut pingora::proxy::Session) -> bool {
    let Some(closed) = session.as_downstream_mut().watch_h2_stream_close() else {
        return false;
    };
    // Ready (with the reset's reason, or an error) only when the stream is gone; never waits.
    futures::FutureExt::now_or_never(closed).is_some()
}

/// Whether the client asked to keep its connection: HTTP/1.1 unless `Connection: close`,
/// HTTP/1.0 only with `Connection: keep-alive` (Pingora's rule for the proxy; its `ServeHttp`
/// apps ignore it).
pub(crate) fn client_wants_keepalive(req: &RequestHeader) -> bool {
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
}
