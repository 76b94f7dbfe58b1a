//! The client's request (the parent), answered from one subrequest per slice: its header,
//! the slices' bytes in order trimmed to its range, the next slice started before the current
//! one is sent, and the check that every slice is of the first one's version.

use super::{piece, validator, Piece, Slice, SliceRequest, MARKER};
use crate::cache::{policy, Cache};
use crate::gateway::{Ctx, Gateway, Matched};
use crate::headers;
use bytes::Bytes;
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, IF_RANGE, RANGE};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::subrequest::server::SubrequestHandle;
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::Digest;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// What the client asked for of the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    All,
    /// `bytes=a-` or `bytes=a-b`.
    From(u64, Option<u64>),
    /// `bytes=-n`.
    Suffix(u64),
}

/// One `bytes=` range; anything else (several ranges, another unit, bad syntax) is served
/// whole, which RFC 9110 14.2 allows.
fn want(req: &RequestHeader) -> Want {
    let Some(v) = req.headers.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return Want::All;
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Want::All;
    };
    if spec.contains(',') {
        return Want::All;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Want::All;
    };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => num(b).map_or(Want::All, Want::Suffix),
        (false, true) => num(a).map_or(Want::All, |a| Want::From(a, None)),
        (false, false) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a <= b => Want::From(a, Some(b)),
            _ => Want::All,
        },
        (true, true) => Want::All,
    }
}

/// One slice subrequest, running.
struct Fetch {
    slice: Slice,
    handle: SubrequestHandle,
    header: Option<Box<ResponseHeader>>,
    /// The header said the response has no body.
    ended: bool,
}

impl Fetch {
    async fn start(session: &Session, slice: Slice, route: &Matched, ctx: &Ctx) -> Result<Fetch> {
        let spawner = session
            .subrequest_spawner
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no subrequest spawner"))?;
        let user = pingora::proxy::subrequest::Ctx::builder()
            .user_ctx(Box::new(SliceRequest {
                slice,
                route: route.clone(),
                request_id: ctx.request_id.clone(),
                report: ctx.cache.sliced.clone().unwrap_or_default(),
                client_ip: ctx.access.client_ip,
            }))
            .build();
        // Pingora parses a subrequest's head from its parent's raw head: on HTTP/1.1 the bytes
        // the client sent (with its `Authorization` and a subject header it may have forged,
        // which `request_filter` replaced), on HTTP/2 a head that reads `HTTP/2` without
        // `Host` (refused). The head as `request_filter` left it is written again instead.
        let parent = h1_copy(session.req_header(), session.digest()).await?;
        let (prepared, handle) = spawner.create_subrequest(&parent, user);
        tokio::spawn(prepared.run());
        Ok(Fetch {
            slice,
            handle,
            header: None,
            ended: false,
        })
    }

    async fn header(&mut self) -> Result<&ResponseHeader> {
        while self.header.is_none() {
            match self.handle.rx.recv().await {
                Some(HttpTask::Header(h, end)) if !h.status.is_informational() => {
                    self.ended = end;
                    self.header = Some(h);
                }
                Some(HttpTask::Failed(e)) => return Err(e),
                Some(_) => {}
                None => return Err(ended_early("slice subrequest ended without a header")),
            }
        }
        self.header
            .as_deref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no header"))
    }

    /// The header of a slice after the first: its span when it is of the same version and
    /// size as the first, at its place.
    async fn checked(&mut self, first: &ResponseHeader, total: u64) -> Result<Option<(u64, u64)>> {
        let slice = self.slice;
        Ok(check(self.header().await?, first, total, slice))
    }

    /// The next body piece; `None` at the end of the body.
    async fn body(&mut self) -> Result<Option<Bytes>> {
        if self.ended {
            return Ok(None);
        }
        loop {
            match self.handle.rx.recv().await {
                Some(HttpTask::Body(b, end)) => {
                    self.ended = end;
                    match b {
                        Some(b) if !b.is_empty() => return Ok(Some(b)),
                        _ if end => return Ok(None),
                        _ => {}
                    }
                }
                Some(HttpTask::Done) | Some(HttpTask::Trailer(_)) => {
                    self.ended = true;
                    return Ok(None);
                }
                Some(HttpTask::Failed(e)) => return Err(e),
                Some(_) => {}
                None => return Err(ended_early("slice subrequest ended before its body")),
            }
        }
    }

    /// Lets the subrequest run to its end (a fill this request started is completed and
    /// stored) without reading more of it here.
    fn drain(self) {
        self.handle.drain_tasks();
    }
}

/// An HTTP/1.1 session whose head is `req` (its `Host` from the URI's authority), on the
/// parent's connection digest (the client's address, TLS).
async fn h1_copy(req: &RequestHeader, digest: Option<&Digest>) -> Result<ServerSession> {
    let mut req = req.clone();
    req.set_version(http::Version::HTTP_11);
    if !req.headers.contains_key(http::header::HOST) {
        let host = req.uri.authority().map_or("localhost", |a| a.as_str()).to_owned();
        req.insert_header(http::header::HOST, host)?;
    }
    let wire = http_req_header_to_wire(&req)
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "request head not writable"))?;
    let (mut tx, rx) = tokio::io::duplex(wire.len() + 1);
    tx.write_all(&wire)
        .await
        .map_err(|e| Error::because(ErrorType::InternalError, "slice request head", e))?;
    let mut s = ServerSession::new_http1(Box::new(rx));
    s.read_request().await?;
    if let (Some(d), Some(parent)) = (s.digest_mut(), digest) {
        *d = parent.clone();
    }
    Ok(s)
}

fn ended_early(what: &'static str) -> Box<Error> {
    let mut e = Error::explain(ErrorType::HTTPStatus(502), what);
    e.as_up();
    e
}

/// How one attempt ended.
enum Attempt {
    /// Answered (true), or left to the ordinary path (false).
    Done(bool),
    /// The object changed between two slices before anything was sent.
    Changed,
}

impl Gateway {
    /// `request_filter`, once a cached `GET`/`HEAD` is admitted: answers it from slices
    /// (`Ok(true)`), or leaves it to the ordinary cache path (`Ok(false)`).
    pub(crate) async fn serve_slices(
        &self,
        cache: &'static Cache,
        size: u64,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let Some(route) = ctx.route.clone() else {
            return Ok(false);
        };
        let template = &self.router.route(route.index).template;
        let key = policy::key(template, route.asset.as_str(), route.upstream_uri.query()).combined_bin();
        if cache.whole.contains(&key) || session.subrequest_spawner.is_none() {
            return Ok(false);
        }
        let tag = policy::asset_tag(template, route.asset.as_str());
        ctx.cache.sliced = Some(Arc::default());
        for _ in 0..2 {
            match self
                .slice_attempt(cache, size, session, ctx, &route, &key, &tag)
                .await?
            {
                Attempt::Done(answered) => return Ok(answered),
                Attempt::Changed => {
                    cache.storage.purge_asset(&tag).await;
                }
            }
        }
        Err(ended_early(
            "the object changed at the origin while its slices were fetched",
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn slice_attempt(
        &self,
        cache: &'static Cache,
        size: u64,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Matched,
        key: &HashBinary,
        tag: &str,
    ) -> Result<Attempt> {
        let head = session.req_header().method == http::Method::HEAD;
        let mut want = if head {
            Want::All
        } else {
            want(session.req_header())
        };
        let first = match want {
            Want::From(a, _) => a / size,
            _ => 0,
        };
        let mut cur = Fetch::start(session, Slice { index: first, size }, route, ctx).await?;
        let h = cur.header().await?.clone();
        let (start, end, total) = match piece(&h) {
            Piece::Slice { start, end, total } => (start, end, total),
            Piece::Whole { total } => {
                // The origin ignored the Range (stored whole when this was slice 0, not stored
                // under another slice's key), or the object fits one slice: the ordinary path
                // from now on.
                cache.whole.insert(*key);
                (0, total.saturating_sub(1), total)
            }
            Piece::Unsliceable => {
                cache.whole.insert(*key);
                ctx.cache.sliced = None;
                return Ok(Attempt::Done(false));
            }
            Piece::Other => {
                self.relay(session, ctx, cur, h, head).await?;
                return Ok(Attempt::Done(true));
            }
        };
        let sliced = h.headers.contains_key(MARKER);
        if sliced && !fits(start, end, total, cur.slice) {
            return Ok(Attempt::Changed);
        }
        // If-Range that does not match: the whole object (RFC 9110 13.1.5).
        if let Some(v) = session.req_header().headers.get(IF_RANGE) {
            let (etag, modified) = validator(&h);
            let strong = etag.is_some_and(|e| !e.starts_with(b"W/"));
            if !((strong && etag == Some(v.as_bytes())) || (etag.is_none() && modified == Some(v.as_bytes())))
            {
                want = Want::All;
            }
        }
        let req = session.req_header();
        if pingora::protocols::http::conditional_filter::not_modified_filter(req, &h) {
            let mut r = h.clone();
            let _ = r.set_status(http::StatusCode::NOT_MODIFIED);
            for name in [CONTENT_LENGTH, CONTENT_RANGE, MARKER] {
                r.remove_header(&name);
            }
            self.finish_header(&mut r, ctx);
            session.write_response_header(Box::new(r), true).await?;
            cur.drain();
            return Ok(Attempt::Done(true));
        }
        // The bytes the client gets: [a, b], 206 unless the whole object.
        let window = match want {
            Want::All => Some((0, total.checked_sub(1), false)),
            Want::From(a, _) if a >= total => None,
            Want::From(a, e) => Some((a, Some(e.unwrap_or(total - 1).min(total - 1)), true)),
            Want::Suffix(0) => None,
            Want::Suffix(n) => Some((total - n.min(total), Some(total - 1), true)),
        };
        let Some((a, b, partial)) = window else {
            let mut r = h.clone();
            let _ = r.set_status(http::StatusCode::RANGE_NOT_SATISFIABLE);
            r.remove_header(&MARKER);
            let _ = r.insert_header(CONTENT_RANGE, format!("bytes */{total}"));
            let _ = r.insert_header(CONTENT_LENGTH, "0");
            self.finish_header(&mut r, ctx);
            session.write_response_header(Box::new(r), true).await?;
            cur.drain();
            return Ok(Attempt::Done(true));
        };
        let mut r = h.clone();
        r.remove_header(&MARKER);
        let _ = r.insert_header(ACCEPT_RANGES, "bytes");
        match b {
            Some(b) if partial => {
                let _ = r.set_status(http::StatusCode::PARTIAL_CONTENT);
                let _ = r.insert_header(CONTENT_RANGE, format!("bytes {a}-{b}/{total}"));
                let _ = r.insert_header(CONTENT_LENGTH, (b - a + 1).to_string());
            }
            _ => {
                let _ = r.set_status(http::StatusCode::OK);
                r.remove_header(&CONTENT_RANGE);
                let _ = r.insert_header(CONTENT_LENGTH, total.to_string());
            }
        }
        self.finish_header(&mut r, ctx);
        let Some(b) = b else {
            // An empty object.
            session.write_response_header(Box::new(r), true).await?;
            cur.drain();
            return Ok(Attempt::Done(true));
        };
        // The first slice needed (a suffix range learns the size from slice 0 first).
        let mut cur_span = (start, end);
        if sliced && !(start..=end).contains(&a) {
            cur.drain();
            cur = Fetch::start(
                session,
                Slice {
                    index: a / size,
                    size,
                },
                route,
                ctx,
            )
            .await?;
            match cur.checked(&h, total).await? {
                Some(span) => cur_span = span,
                None => return Ok(Attempt::Changed),
            }
        }
        let last = if sliced { b / size } else { cur.slice.index };
        // The next slice is requested now, and its header checked before the client's goes
        // out: a change seen here costs nothing sent.
        let mut next = None;
        if !head && cur.slice.index < last {
            let mut n = Fetch::start(
                session,
                Slice {
                    index: cur.slice.index + 1,
                    size,
                },
                route,
                ctx,
            )
            .await?;
            if n.checked(&h, total).await?.is_none() {
                return Ok(Attempt::Changed);
            }
            next = Some(n);
        }
        if head {
            session.write_response_header(Box::new(r), true).await?;
            cur.drain();
            if let Some(n) = next {
                n.drain();
            }
            return Ok(Attempt::Done(true));
        }
        session.write_response_header(Box::new(r), false).await?;
        loop {
            let done = copy(session, &mut cur, cur_span, (a, b)).await?;
            if !done {
                cur.drain();
            }
            let Some(mut n) = next.take() else {
                break;
            };
            if n.slice.index < last {
                let after = Fetch::start(
                    session,
                    Slice {
                        index: n.slice.index + 1,
                        size,
                    },
                    route,
                    ctx,
                )
                .await?;
                next = Some(after);
            }
            let Some(span) = n.checked(&h, total).await? else {
                // The origin changed after the client's header: end it incomplete, and let
                // the next request start over.
                cache.storage.purge_asset(tag).await;
                return Err(ended_early("the object changed at the origin between slices"));
            };
            cur = n;
            cur_span = span;
        }
        session.write_response_body(None, true).await?;
        Ok(Attempt::Done(true))
    }

    /// A response that is neither a slice nor a whole object (an error, a 404, a 416 from the
    /// origin): passed on as the subrequest got it.
    async fn relay(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        mut fetch: Fetch,
        mut h: ResponseHeader,
        head: bool,
    ) -> Result<()> {
        self.finish_header(&mut h, ctx);
        let empty = head || fetch.ended;
        session.write_response_header(Box::new(h), empty).await?;
        if empty {
            fetch.drain();
            return Ok(());
        }
        while let Some(b) = fetch.body().await? {
            session.write_response_body(Some(b), false).await?;
        }
        session.write_response_body(None, true).await
    }

    /// What `response_filter` adds to the gateway's answers (it does not run for a response
    /// written in `request_filter`).
    fn finish_header(&self, r: &mut ResponseHeader, ctx: &Ctx) {
        headers::stamp(r, &ctx.request_id);
        self.access
            .on_response(r, ctx.route.as_ref().map(|m| m.index), &ctx.access);
    }
}

/// Whether a slice's place is the one asked for: it starts at the slice's start and ends at
/// the slice's end or the object's.
fn fits(start: u64, end: u64, total: u64, slice: Slice) -> bool {
    start == slice.start() && end == slice.last().min(total.saturating_sub(1))
}

/// A later slice's header: the same version and size as the first, at its place. Its span.
fn check(h: &ResponseHeader, first: &ResponseHeader, total: u64, slice: Slice) -> Option<(u64, u64)> {
    match piece(h) {
        Piece::Slice { start, end, total: t }
            if t == total && fits(start, end, total, slice) && validator(h) == validator(first) =>
        {
            Some((start, end))
        }
        _ => None,
    }
}

/// Sends the bytes of one slice (`span`, the object's bytes it holds) that fall in `want`.
/// Returns whether the slice was read to its end (else the caller drains it).
async fn copy(session: &mut Session, fetch: &mut Fetch, span: (u64, u64), want: (u64, u64)) -> Result<bool> {
    let (mut pos, end) = span;
    let (a, b) = want;
    while pos <= end {
        if pos > b {
            return Ok(false);
        }
        let Some(chunk) = fetch.body().await? else {
            return Err(ended_early("a slice ended before its length"));
        };
        let len = chunk.len() as u64;
        let from = a.max(pos);
        let to = b.min(pos + len - 1);
        if from <= to {
            let part = chunk.slice((from - pos) as usize..=(to - pos) as usize);
            session.write_response_body(Some(part), false).await?;
        }
        pos += len;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ranges() {
        let req = |v: &str| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.insert_header("range", v).unwrap();
            want(&r)
        };
        assert_eq!(req("bytes=10-"), Want::From(10, None));
        assert_eq!(req("bytes=10-20"), Want::From(10, Some(20)));
        assert_eq!(req("bytes=-5"), Want::Suffix(5));
        assert_eq!(req("bytes=20-10"), Want::All);
        assert_eq!(req("bytes=1-2,5-6"), Want::All);
        assert_eq!(req("items=1-2"), Want::All);
    }
}
