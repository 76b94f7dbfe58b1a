//! CORS for one route: preflight answers (`OPTIONS` with `Access-Control-Request-Method`) and
//! `Access-Control-Allow-Origin` on responses, with `Vary: Origin` so that a cache in front
//! (or the browser's) never hands one origin's answer to another.
//!
//! `<img>` and `<video>` never need this (they cannot read the bytes, and cannot send a token:
//! signed URLs are their way in); a page's `fetch()` does, and one that sends
//! `Authorization` makes the browser ask with a preflight first.

use crate::config::CorsSettings;
use http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, ORIGIN, VARY};
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// The request headers a page may send (the browser enforces this list).
const ALLOW_HEADERS: HeaderValue = HeaderValue::from_static(
    "Authorization, Range, If-None-Match, If-Modified-Since, If-Range, X-Request-Id",
);
/// Response headers a page may read besides the safelisted ones (`WWW-Authenticate` and
/// `Retry-After`: a page that was refused learns why, and when to try again).
pub(crate) const EXPOSE_HEADERS: HeaderValue = HeaderValue::from_static(
    "Content-Range, Accept-Ranges, ETag, Cache-Status, X-Request-Id, WWW-Authenticate, Retry-After",
);
const ANY: HeaderValue = HeaderValue::from_static("*");

pub(crate) struct Cors {
    any: bool,
    origins: Vec<String>,
    max_age: HeaderValue,
}

impl Cors {
    pub(crate) fn new(s: &CorsSettings) -> Cors {
        Cors {
            any: s.any,
            origins: s.origins.clone(),
            max_age: HeaderValue::from(s.max_age.as_secs()),
        }
    }

    /// The `Access-Control-Allow-Origin` value for this request: `*`, or its `Origin` when
    /// listed; `None` without an allowed `Origin`.
    pub(crate) fn allow_origin(&self, req: &RequestHeader) -> Option<HeaderValue> {
        let origin = req.headers.get(ORIGIN)?;
        if self.any {
            return Some(ANY);
        }
        let o = origin.as_bytes();
        self.origins
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(o))
            .then(|| origin.clone())
    }

    /// The header of a preflight answer (204), or `None` when the origin or the method asked
    /// for is not allowed.
    pub(crate) fn preflight(&self, req: &RequestHeader) -> Option<ResponseHeader> {
        let method = req.headers.get("access-control-request-method")?;
        if !method.to_str().is_ok_and(crate::routing::is_allowed_method) {
            return None;
        }
        let origin = self.allow_origin(req)?;
        let mut h = ResponseHeader::build(204, Some(6)).ok()?;
        h.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, origin).ok()?;
        h.insert_header("access-control-allow-methods", "GET, HEAD")
            .ok()?;
        h.insert_header("access-control-allow-headers", ALLOW_HEADERS)
            .ok()?;
        h.insert_header("access-control-max-age", self.max_age.clone())
            .ok()?;
        h.insert_header(
            VARY,
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        )
        .ok()?;
        Some(h)
    }

    /// Adds the CORS headers to a response (relayed, from the cache, or the gateway's own),
    /// given what [`Cors::allow_origin`] said for its request.
    pub(crate) fn stamp(&self, resp: &mut ResponseHeader, allowed: Option<&HeaderValue>) {
        if let Some(origin) = allowed {
            let _ = resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            let _ = resp.insert_header("access-control-expose-headers", EXPOSE_HEADERS);
        }
        if !self.any {
            add_vary_origin(resp);
        }
    }
}

/// The CORS headers of a refusal or an error the gateway answers itself, for an allowed
/// `origin` (never stored, so `Vary` is only for the browser's own cache).
pub(crate) fn error_headers(origin: &HeaderValue) -> [(HeaderName, HeaderValue); 3] {
    [
        (ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
        (http::header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS),
        (VARY, HeaderValue::from_static("Origin")),
    ]
}

/// Adds `Origin` to `Vary` unless it is there already (or `Vary: *`).
fn add_vary_origin(resp: &mut ResponseHeader) {
    let names: Vec<&[u8]> = resp
        .headers
        .get_all(VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|n| n.trim_ascii())
        .collect();
    if names
        .iter()
        .any(|n| *n == b"*" || n.eq_ignore_ascii_case(b"origin"))
    {
        return;
    }
    if names.is_empty() {
        let _ = resp.insert_header(VARY, "Origin");
    } else {
        let _ = resp.append_header(VARY, "Origin");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cors(origins: &[&str]) -> Cors {
        Cors::new(&CorsSettings {
            any: origins == ["*"],
            origins: origins.iter().map(|o| o.to_string()).collect(),
            max_age: Duration::from_secs(600),
        })
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("OPTIONS", b"/", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn preflights_are_answered_for_listed_origins_and_methods() {
        let c = cors(&["https://app.example.com"]);
        let ok = request(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ]);
        let h = c.preflight(&ok).unwrap();
        assert_eq!(h.status, 204);
        assert_eq!(
            h.headers["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert_eq!(h.headers["access-control-max-age"], "600");
        let other = request(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(c.preflight(&other).is_none());
        let put = request(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PUT"),
        ]);
        assert!(c.preflight(&put).is_none());
    }

    #[test]
    fn vary_origin_is_added_once() {
        let c = cors(&["https://app.example.com"]);
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("vary", "Accept").unwrap();
        c.stamp(&mut resp, None);
        c.stamp(&mut resp, None);
        let vary: Vec<_> = resp.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept", "Origin"]);
        assert!(resp.headers.get("access-control-allow-origin").is_none());
    }
}
