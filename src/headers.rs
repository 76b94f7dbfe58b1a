//! The headers the gateway adds itself, in one place: on every response it relays
//! (`X-Content-Type-Options: nosniff`, `X-Request-Id`) and on the answers it makes itself
//! (the same, plus `Cache-Control: no-store`, a content type and length, `Allow` on 405);
//! upstream, `X-Forwarded-For`, and the request headers the gateway owns on a cached route.

use crate::request_id::RequestId;
use crate::routing::ALLOWED_METHODS;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

// The names the gateway sets, as `HeaderName`s: inserted without being parsed (and, for these
// non-standard names, copied) again on every request (patched Pingora, pingora-http).
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");
pub(crate) const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Adds what every response to a client carries. Inserting these valid values cannot fail,
/// and a relayed response must never fail here (that would cost its pooled connection).
pub(crate) fn stamp(resp: &mut ResponseHeader, request_id: &RequestId) {
    let _ = resp.insert_header(X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    let _ = resp.insert_header(X_REQUEST_ID, request_id.header());
}

/// The header of an answer the gateway makes itself (an error, an admin page).
pub(crate) fn own_answer(
    status: u16,
    content_type: &'static str,
    body_len: usize,
    request_id: Option<&RequestId>,
) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(6))?;
    h.insert_header(CONTENT_TYPE, content_type)?;
    h.insert_header(CONTENT_LENGTH, body_len)?;
    h.insert_header(CACHE_CONTROL, NO_STORE)?;
    let _ = h.insert_header(X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    if let Some(id) = request_id {
        h.insert_header(X_REQUEST_ID, id.header())?;
    }
    if status == 405 {
        h.insert_header(ALLOW, ALLOWED_METHODS.join(", "))?;
    }
    Ok(h)
}

/// The request headers the gateway owns on a cached route, which reach the upstream whatever
/// the route's `forward_headers` say: those it sets itself (`Host`, `X-Forwarded-For` (the
/// chain trusted proxies vouch for), `X-Forwarded-Proto`, `X-Request-Id`), and the conditional and
/// `Range` headers, which Pingora's cache removes on a miss (so the whole object is fetched)
/// and sets itself to revalidate; they only reach the upstream as the client sent them when
/// the cache is bypassed, and then the answer is not stored for another client.
pub(crate) static GATEWAY_OWNED: [HeaderName; 10] = [
    HOST,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-request-id"),
    RANGE,
    IF_RANGE,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_MATCH,
    IF_UNMODIFIED_SINCE,
];

/// `Range` and the conditional request headers: Pingora's cache removes them on a miss and
/// sets its own to revalidate; a slice request is sent with its own `Range` and none of them.
pub(crate) const RANGE_AND_CONDITIONALS: [HeaderName; 6] = [
    RANGE,
    IF_RANGE,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_MATCH,
    IF_UNMODIFIED_SINCE,
];

/// `X-Forwarded-For` for the upstream request of a route without cache: every value the client
/// sent, joined, then the client's address (a cached route sends only what trusted proxies
/// vouch for: `access::Access::forwarded_chain`).
pub(crate) fn forwarded_for(req: &RequestHeader, client: IpAddr) -> String {
    let mut xff = String::new();
    for v in req
        .headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        xff.push_str(v);
        xff.push_str(", ");
    }
    crate::fmt::push_ip(&mut xff, &client);
    xff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_client_to_every_value_sent() {
        let client: IpAddr = "10.0.0.9".parse().unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(forwarded_for(&req, client), "10.0.0.9");
        req.append_header("x-forwarded-for", "1.1.1.1, 2.2.2.2").unwrap();
        req.append_header("X-Forwarded-For", "3.3.3.3").unwrap();
        assert_eq!(forwarded_for(&req, client), "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
        assert_eq!(
            forwarded_for(&req, "::1".parse().unwrap()),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, ::1"
        );
    }

    #[test]
    fn own_answers_carry_the_gateway_headers() {
        let id = RequestId::from_client(Some(&HeaderValue::from_static("r-1")));
        let h = own_answer(405, "application/json", 10, Some(&id)).unwrap();
        let get = |n: &str| h.headers.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(get("allow"), Some("GET, HEAD"));
        assert_eq!(get("cache-control"), Some("no-store"));
        assert_eq!(get("x-content-type-options"), Some("nosniff"));
        assert_eq!(get("x-request-id"), Some("r-1"));
        assert_eq!(get("content-length"), Some("10"));
        let h = own_answer(200, "text/plain", 3, None).unwrap();
        assert!(h.headers.get("allow").is_none() && h.headers.get("x-request-id").is_none());
    }
}
