//! The one place that turns a failure into a status code and a small JSON body.

use crate::headers;
use crate::request_id::RequestId;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};

/// An answer the gateway gives itself: a status and a fixed, human-readable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reject {
    pub(crate) status: u16,
    pub(crate) message: &'static str,
}

impl Reject {
    const fn new(status: u16, message: &'static str) -> Reject {
        Reject { status, message }
    }
}

pub(crate) const NO_ROUTE: Reject = Reject::new(404, "no route for this path");
pub(crate) const BAD_ASSET_ID: Reject = Reject::new(400, "the asset id is not a UUID");
pub(crate) const BAD_PATH: Reject = Reject::new(400, "the request path is not valid UTF-8");
pub(crate) const METHOD_NOT_ALLOWED: Reject = Reject::new(405, "method not allowed; use GET or HEAD");
pub(crate) const BODY_NOT_ALLOWED: Reject = Reject::new(400, "GET and HEAD requests must not carry a body");
pub(crate) const URI_TOO_LONG: Reject = Reject::new(414, "the request target is too long");
pub(crate) const HEADERS_TOO_LARGE: Reject = Reject::new(431, "the request headers are too large");
pub(crate) const TOO_MANY_HEADERS: Reject = Reject::new(431, "the request has too many header fields");
pub(crate) const FORWARDED_TOO_LARGE: Reject = Reject::new(
    431,
    "the request headers this route passes to the origin are too large",
);
pub(crate) const NO_HEALTHY_PEER: Reject = Reject::new(502, "no healthy upstream peer");
pub(crate) const MISSING_HOST: Reject = Reject::new(400, "an HTTP/1.1 request needs a Host header");
pub(crate) const BAD_HOST: Reject = Reject::new(400, "the Host header is not a valid host[:port]");
// Access control (`access`).
pub(crate) const AUTH_REQUIRED: Reject =
    Reject::new(401, "authentication required: a signed URL or a bearer token");
pub(crate) const URL_EXPIRED: Reject = Reject::new(403, "the signed URL has expired");
pub(crate) const URL_UNKNOWN_KEY: Reject = Reject::new(403, "the signed URL names an unknown key id");
pub(crate) const URL_BAD_SIGNATURE: Reject = Reject::new(403, "the URL signature does not match");
pub(crate) const URL_BEYOND_MAX_TTL: Reject =
    Reject::new(403, "the signed URL expires later than the gateway allows");
pub(crate) const TOKEN_INVALID: Reject = Reject::new(401, "the bearer token is not valid");
pub(crate) const TOKEN_UNKNOWN_KEY: Reject = Reject::new(401, "the bearer token names an unknown key");
pub(crate) const TOKEN_EXPIRED: Reject = Reject::new(401, "the bearer token has expired");
pub(crate) const TOKEN_CLAIMS: Reject = Reject::new(401, "the bearer token claims are not accepted");
pub(crate) const TOO_MANY_REQUESTS: Reject = Reject::new(429, "too many requests from this client");
pub(crate) const CORS_REFUSED: Reject = Reject::new(403, "cross-origin request not allowed");

/// The error type `upstream_peer` returns when selection finds no usable peer.
pub(crate) const NO_PEER_ERROR: ErrorType = ErrorType::Custom("NoHealthyPeer");

/// The error `upstream_response_filter` returns for a `101 Switching Protocols` the gateway
/// never asked for (it forwards no upgrade).
pub(crate) const UNSOLICITED_UPGRADE: ErrorType = ErrorType::Custom("UnsolicitedUpgrade");

/// The failure as the access log says it: plainly who went away or failed, then Pingora's
/// own description.
pub(crate) fn describe(e: &Error) -> String {
    use ErrorType::*;
    let who = match (e.esource(), e.etype()) {
        (ErrorSource::Downstream, WriteError | ReadError | ConnectionClosed) => {
            "client closed the connection"
        }
        (ErrorSource::Downstream, ReadTimedout | WriteTimedout) => "client too slow",
        (ErrorSource::Downstream, _) => "bad request from the client",
        (ErrorSource::Upstream, t) if *t == UNSOLICITED_UPGRADE => {
            "upstream answered 101 Switching Protocols to a request without an upgrade"
        }
        (ErrorSource::Upstream, _) => "upstream failed",
        (ErrorSource::Internal | ErrorSource::Unset, _) => "gateway error",
    };
    format!("{who}: {e}")
}

/// Maps a proxying failure to what the client is told. `None` means the client is gone (or
/// already has part of a response) and nothing can be written.
pub(crate) fn for_error(e: &Error) -> Option<Reject> {
    use ErrorType::*;
    let r = |status, message| Some(Reject::new(status, message));
    match e.etype() {
        HTTPStatus(code) => r(*code, "request failed"),
        t if *t == NO_PEER_ERROR => Some(NO_HEALTHY_PEER),
        ConnectTimedout | TLSHandshakeTimedout => r(504, "upstream connect timed out"),
        _ => match e.esource() {
            ErrorSource::Upstream => match e.etype() {
                ReadTimedout | WriteTimedout => r(504, "upstream timed out"),
                ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError
                | TLSHandshakeFailure | InvalidCert | HandshakeError | ConnectProxyFailure => {
                    r(502, "upstream unreachable")
                }
                _ => r(502, "upstream failed"),
            },
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => None,
                ReadTimedout => r(408, "request timed out"),
                _ => r(400, "bad request"),
            },
            ErrorSource::Internal | ErrorSource::Unset => r(500, "internal error"),
        },
    }
}

/// `{"error": "...", "request_id": "..."}`. The message is one of the fixed texts above and
/// the request id is charset-limited, so neither needs escaping.
pub(crate) fn json_body(reject: Reject, request_id: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"error\":\"{}\",\"request_id\":\"{}\"}}\n",
        reject.message, request_id
    ))
}

/// Answers the request from the gateway, keeping the client connection open for the next
/// request (Pingora's `respond_error` would close it).
pub(crate) async fn respond(session: &mut Session, reject: Reject, request_id: &RequestId) -> Result<()> {
    respond_with(session, reject, request_id, &[]).await
}

/// [`respond`] with more headers (`WWW-Authenticate`, `Retry-After`, CORS).
pub(crate) async fn respond_with(
    session: &mut Session,
    reject: Reject,
    request_id: &RequestId,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<()> {
    let body = json_body(reject, request_id.as_str());
    let head = session.req_header().method == http::Method::HEAD;
    let mut h = headers::own_answer(reject.status, "application/json", body.len(), Some(request_id))?;
    for (name, value) in extra {
        h.append_header(name.clone(), value.clone())?;
    }
    session.write_response_header(Box::new(h), head).await?;
    if !head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        let up = |t| {
            let mut e = Error::new(t);
            e.as_up();
            for_error(&e).map(|r| r.status)
        };
        assert_eq!(up(ErrorType::ConnectRefused), Some(502));
        assert_eq!(up(ErrorType::ConnectTimedout), Some(504));
        assert_eq!(up(ErrorType::ReadTimedout), Some(504));
        assert_eq!(up(ErrorType::InvalidHTTPHeader), Some(502));
        assert_eq!(up(NO_PEER_ERROR), Some(502));
        let mut e = Error::new(ErrorType::WriteError);
        e.as_down();
        assert_eq!(for_error(&e), None);
        assert_eq!(up(UNSOLICITED_UPGRADE), Some(502));
    }

    #[test]
    fn log_text_says_who_failed() {
        let mut e = Error::explain(ErrorType::WriteError, "writing body");
        e.as_down();
        assert!(describe(&e).starts_with("client closed the connection: Downstream WriteError"));
        let mut e = Error::new(ErrorType::ConnectRefused);
        e.as_up();
        assert!(describe(&e).starts_with("upstream failed: Upstream ConnectRefused"));
    }

    #[test]
    fn body_is_json() {
        let b = json_body(NO_ROUTE, "abc-1");
        assert_eq!(
            &b[..],
            b"{\"error\":\"no route for this path\",\"request_id\":\"abc-1\"}\n"
        );
    }
}
