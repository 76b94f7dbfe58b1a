//! Slices: a large object fetched and stored in pieces of `gateway.cache.slice` bytes, like
//! nginx's slice module, on Pingora's subrequests.
//!
//! A cached `GET`/`HEAD` is answered by its own request (the *parent*, from `request_filter`):
//! it runs one subrequest per slice it needs. Each subrequest goes through the ordinary cache
//! path (lookup, lock, fill that followers stream, disk tier, purge by asset tag), keyed by
//! route + asset + slice size + slice index (slice 0 keeps the asset's own key, so an object
//! that turns out not to be sliceable is stored there whole, as without slicing). Upstream it
//! asks `Range: bytes=<slice start>-<slice end>`; the `206` is stored as a `200` of the
//! slice's length with [`MARKER`] giving the slice's place and the object's total size.
//!
//! The parent sends its own header (200 with the whole length, 206 with the client's range,
//! 304, 416, or the header only for `HEAD`), then the slices' bytes in order, trimmed to the
//! client's range. The subrequest of the next slice starts before the current one is sent.
//! Every slice must carry the first one's validator and total: a change seen before the header
//! went out purges the asset and starts again (once); after it, the response ends incomplete.
//! A client never gets bytes of two versions.
//!
//! Not sliced (the parent lets the ordinary path answer, remembered per key in [`Whole`]): an
//! origin that answers the slice's `Range` with the whole `200` (stored whole under the
//! asset's key), or with a `206` without a strong validator (RFC 9110 14.3: no ranges combined
//! under a weak one).

//!
//! This module: what a slice subrequest does and what its header says; `parent`: the
//! client's request, answered from its slices.

use crate::cache::policy::{self, Outcome};
use crate::gateway::Matched;
use crate::request_id::RequestId;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, LAST_MODIFIED};
use http::HeaderName;
use pingora::cache::key::HashBinary;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

mod parent;

/// On a stored slice: `<first byte>-<last byte>/<object size>`. Internal: the parent removes
/// it before anything reaches a client.
pub(crate) const MARKER: HeaderName = HeaderName::from_static("x-asset-gateway-slice");

/// One slice of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slice {
    pub(crate) index: u64,
    pub(crate) size: u64,
}

impl Slice {
    pub(crate) fn start(self) -> u64 {
        self.index * self.size
    }

    fn last(self) -> u64 {
        self.start() + self.size - 1
    }

    /// The `Range` the origin is asked for.
    pub(crate) fn range(self) -> String {
        format!("bytes={}-{}", self.start(), self.last())
    }
}

/// What a parent hands its slice subrequest (the subrequest's user context: only the gateway
/// sets it, so no client header can make a request a slice request).
pub(crate) struct SliceRequest {
    pub(crate) slice: Slice,
    pub(crate) route: Matched,
    pub(crate) request_id: RequestId,
    pub(crate) report: Arc<Report>,
    /// The client's address as the parent found it (behind trusted proxies: not the peer).
    pub(crate) client_ip: Option<std::net::IpAddr>,
}

/// What the cache did for the slices of one response, for its access line: a hit only when
/// every slice was (else the first slice's outcome that was not).
#[derive(Default)]
pub(crate) struct Report {
    outcome: Mutex<Option<Outcome>>,
    /// A slice went upstream: the client's `counts: upstream` rate limit was charged.
    charged: AtomicBool,
}

impl Report {
    /// Whether this slice's trip upstream is the parent's first (the one a `counts: upstream`
    /// rate limit charges: one token per client request, however many slices it misses).
    pub(crate) fn charge(&self) -> bool {
        !self.charged.swap(true, Ordering::Relaxed)
    }

    pub(crate) fn merge(&self, o: Outcome) {
        if let Ok(mut r) = self.outcome.lock() {
            let hit = |o: &Outcome| matches!(o, Outcome::Hit | Outcome::Collapsed);
            if r.as_ref().is_none_or(|was| hit(was) && !hit(&o)) {
                *r = Some(o);
            }
        }
    }

    pub(crate) fn get(&self) -> Option<Outcome> {
        self.outcome.lock().ok().and_then(|r| *r)
    }
}

/// `request_filter` of a subrequest: the slice its parent asked for, the parent's route match
/// and request id. The client's `Range` and conditionals are removed: the parent applies them
/// to the whole object; a slice request always gets the whole slice.
pub(crate) fn requested(session: &mut Session) -> Option<SliceRequest> {
    let req = session
        .subrequest_ctx
        .as_ref()?
        .user_ctx()?
        .downcast_ref::<SliceRequest>()?;
    let found = SliceRequest {
        slice: req.slice,
        route: req.route.clone(),
        request_id: req.request_id.clone(),
        report: req.report.clone(),
        client_ip: req.client_ip,
    };
    let h = session.req_header_mut();
    for name in &crate::headers::RANGE_AND_CONDITIONALS {
        h.remove_header(name);
    }
    Some(found)
}

/// `upstream_response_filter` of a slice subrequest: the origin's `206` for the slice becomes
/// what is stored. A `206` that covers the whole object is a plain `200` (stored like any
/// whole object); one with a strong validator a `200` of the slice's length with [`MARKER`];
/// anything else is left alone (a `206` is not stored; a `200` is the whole object).
pub(crate) fn upstream_response(resp: &mut ResponseHeader, slice: Slice) {
    if resp.status != http::StatusCode::PARTIAL_CONTENT {
        return;
    }
    let Some((start, end, total)) = resp
        .headers
        .get(CONTENT_RANGE)
        .and_then(|v| content_range(v.as_bytes()))
    else {
        return;
    };
    if start != slice.start() || end < start || end >= total {
        return;
    }
    let len = end - start + 1;
    let marker = if start == 0 && len == total {
        None
    } else if strong_validator(resp) {
        Some(format!("{start}-{end}/{total}"))
    } else {
        return;
    };
    let _ = resp.set_status(http::StatusCode::OK);
    resp.remove_header(&CONTENT_RANGE);
    let _ = resp.insert_header(CONTENT_LENGTH, len.to_string());
    if let Some(m) = marker {
        let _ = resp.insert_header(MARKER, m);
    }
}

/// `Content-Range: bytes <first>-<last>/<total>` (a known total only).
fn content_range(v: &[u8]) -> Option<(u64, u64, u64)> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

/// A strong `ETag`, or without an `ETag` a `Last-Modified` (the size is known from
/// `Content-Range`).
fn strong_validator(resp: &ResponseHeader) -> bool {
    match resp.headers.get(ETAG) {
        Some(e) => !e.as_bytes().starts_with(b"W/"),
        None => resp.headers.contains_key(LAST_MODIFIED),
    }
}

/// The keys (asset's own) found not sliceable: their requests take the ordinary path.
/// Bounded: past [`WHOLE_MAX`] entries it starts over (a forgotten key costs one slice request
/// that finds the whole object again).
#[derive(Default)]
pub(crate) struct Whole(Mutex<HashSet<HashBinary>>);

const WHOLE_MAX: usize = 1 << 16;

impl Whole {
    pub(super) fn contains(&self, key: &HashBinary) -> bool {
        self.0.lock().is_ok_and(|s| s.contains(key))
    }

    pub(super) fn insert(&self, key: HashBinary) {
        if let Ok(mut s) = self.0.lock() {
            if s.len() >= WHOLE_MAX {
                s.clear();
            }
            s.insert(key);
        }
    }
}

/// What a slice subrequest's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Piece {
    /// A stored slice: its first and last byte, the object's size.
    Slice { start: u64, end: u64, total: u64 },
    /// The whole object (the origin ignored the `Range`, or it fits in one slice).
    Whole { total: u64 },
    /// A `206` that could not be stored: no strong validator.
    Unsliceable,
    /// Anything else (404, 5xx, 416...): passed on as it is.
    Other,
}

pub(super) fn piece(h: &ResponseHeader) -> Piece {
    match h.status.as_u16() {
        200 => match h.headers.get(MARKER) {
            Some(m) => {
                let mut s = Vec::with_capacity(m.len() + 6);
                s.extend_from_slice(b"bytes ");
                s.extend_from_slice(m.as_bytes());
                match content_range(&s) {
                    Some((start, end, total)) => Piece::Slice { start, end, total },
                    None => Piece::Other,
                }
            }
            None => match policy::content_length(h) {
                Some(total) => Piece::Whole { total: total as u64 },
                None => Piece::Other,
            },
        },
        206 => Piece::Unsliceable,
        _ => Piece::Other,
    }
}

/// The size of the object a stored response is part of: a slice's total, else its own
/// length. It decides the tier, as for a whole object: the slices of an object larger than
/// `memory` go to the disk tier only, so one video does not push the small hot objects out of
/// memory.
pub(crate) fn object_len(h: &ResponseHeader) -> Option<usize> {
    match piece(h) {
        Piece::Slice { total, .. } => usize::try_from(total).ok(),
        _ => policy::content_length(h),
    }
}

/// The version a piece belongs to.
pub(super) fn validator(h: &ResponseHeader) -> (Option<&[u8]>, Option<&[u8]>) {
    (
        h.headers.get(ETAG).map(|v| v.as_bytes()),
        h.headers.get(LAST_MODIFIED).map(|v| v.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            r.insert_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn a_slice_answer_becomes_a_stored_slice() {
        let s = Slice { index: 1, size: 100 };
        let mut r = resp(206, &[("content-range", "bytes 100-199/250"), ("etag", "\"v1\"")]);
        upstream_response(&mut r, s);
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-length"], "100");
        assert_eq!(r.headers[MARKER], "100-199/250");
        assert!(r.headers.get("content-range").is_none());
        assert_eq!(
            piece(&r),
            Piece::Slice {
                start: 100,
                end: 199,
                total: 250
            }
        );
        // A weak validator is not sliced.
        let mut r = resp(
            206,
            &[("content-range", "bytes 100-199/250"), ("etag", "W/\"v1\"")],
        );
        upstream_response(&mut r, s);
        assert_eq!(piece(&r), Piece::Unsliceable);
        // The whole object in one answer is a whole object, whatever its validator.
        let s0 = Slice { index: 0, size: 100 };
        let mut r = resp(206, &[("content-range", "bytes 0-49/50")]);
        upstream_response(&mut r, s0);
        assert_eq!(piece(&r), Piece::Whole { total: 50 });
        // Another place than asked: left alone (not stored).
        let mut r = resp(206, &[("content-range", "bytes 0-99/250"), ("etag", "\"v1\"")]);
        upstream_response(&mut r, s);
        assert_eq!(r.status, 206);
    }
}
