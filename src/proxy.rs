//! The `ProxyHttp` implementation. Each hook is thin and hands its work to the module that
//! owns the concern: downstream, routing, upstreams, attempts, response, errors, headers,
//! metrics, access_log.
//!
//! No body filter is implemented on purpose: the body goes from the upstream socket to the
//! client socket through Pingora's bounded task channel, so it is never collected and a slow
//! client holds back upstream reads.

use crate::access_log::{self, AccessRecord};
use crate::attempts;
use crate::cache::{policy, slice, Cache};
use crate::downstream;
use crate::errors;
use crate::gateway::{Ctx, Gateway};
use crate::request_id::RequestId;
use crate::{fmt, headers, response};
use async_trait::async_trait;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::time::Instant;

const HTTP: http::HeaderValue = http::HeaderValue::from_static("http");
const HTTPS: http::HeaderValue = http::HeaderValue::from_static("https");

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    /// No downstream modules: Pingora adds a (disabled) response compression module by
    /// default, which costs a context and a call per body piece; an asset gateway never
    /// compresses images or videos.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Slices are fetched by subrequests of the request a client made (`cache::slice`).
    fn allow_spawning_subrequest(&self, _session: &Session, _ctx: &Ctx) -> bool {
        self.cache.is_some_and(|c| c.slice.is_some())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if downstream::h2_stream_reset(session).await {
            // Rapid reset: the client cancelled this stream before it was looked at. Nothing
            // is answered (the stream is gone) and nothing goes upstream.
            return Ok(true);
        }
        if let Some(r) = slice::requested(session) {
            // A slice subrequest of an admitted request (only the gateway makes one). Its head
            // is a copy of its parent's, already checked (an HTTP/2 parent's has no `Host`).
            ctx.adopt_slice(r);
            return Ok(false);
        }
        ctx.request_id = RequestId::from_client(session.get_header(headers::X_REQUEST_ID));
        self.set_connection_policy(session);
        let checked = self
            .limits
            .check(session.req_header())
            .and_then(|()| downstream::sanitize(session.req_header_mut()));
        if let Err(reject) = checked {
            // An oversized or malformed head is a broken or hostile client: answer, then close.
            session.set_keepalive(None);
            errors::respond(session, reject, &ctx.request_id).await?;
            return Ok(true);
        }
        match self.admit(session) {
            Ok(matched) => {
                ctx.route = Some(matched);
                if session.subrequest_ctx.is_some() {
                    // A background revalidation (stale-while-revalidate) of a request that was
                    // admitted: it carries no credentials of its own (the signed URL's
                    // parameters are gone, the client is not a peer) and must not be charged.
                    return Ok(false);
                }
                // Who may fetch, before the cache: CORS preflight, rate limit, credentials.
                if self.access.on_request(session, ctx.access()).await? {
                    return Ok(true);
                }
                self.serve_sliced(session, ctx).await
            }
            Err((reject, route)) => {
                if !session.is_body_empty() {
                    // Never leave unread request bytes on a connection we keep using.
                    session.set_keepalive(None);
                }
                // On a CORS route a page can read why (a browser hides an answer without them).
                let cors = route.map(|r| self.access.cors_headers(r, session.req_header()));
                errors::respond_with(session, reject, &ctx.request_id, &cors.unwrap_or_default()).await?;
                Ok(true)
            }
        }
    }

    /// Runs after `request_filter` admitted the request (routing, 400/404/405 and head
    /// checks come first): GET and HEAD of a cacheable route use the cache, with the lock.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        if let (Some(cache), Some(_)) = (self.cache, self.cached_route(ctx.route.as_ref())) {
            cache.enable(session, &mut ctx.cache);
        }
        Ok(())
    }

    /// Route and asset id (plus the query the route forwards upstream: canonical with
    /// `query: {allow}`); Pingora's default panics.
    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        let m = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache key without a route"))?;
        let route = self.router.route(m.index);
        let query = m.upstream_uri.query();
        let mut key = match ctx.cache.slice {
            Some(s) => policy::slice_key(&route.template, m.asset.as_str(), query, s),
            None => policy::key(&route.template, m.asset.as_str(), query),
        };
        if let (Some(cache), Some(cached)) = (self.cache, self.cached_route(Some(m))) {
            cache.predict(&mut key, session.req_header(), &cached.keying, &ctx.cache);
        }
        Ok(key)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(Cache::on_hit(session, meta, hit_handler, is_fresh, &mut ctx.cache).await)
    }

    /// Pingora's default ignores `Vary` (one variant would be served to every request).
    fn cache_vary_filter(&self, meta: &CacheMeta, ctx: &mut Ctx, req: &RequestHeader) -> Option<HashBinary> {
        let route = self.cached_route(ctx.route.as_ref())?;
        Cache::variance(meta, req, &route.keying, &mut ctx.cache)
    }

    /// Pingora's default serves stale only on an upstream error, never while revalidating.
    fn should_serve_stale(&self, _session: &mut Session, ctx: &mut Ctx, error: Option<&Error>) -> bool {
        Cache::should_serve_stale(&mut ctx.cache, error)
    }

    /// Pingora's default stores nothing.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        Ok(match (self.cache, self.cached_route(ctx.route.as_ref())) {
            (Some(cache), Some(route)) => cache.cacheable(session, resp, &route.keying, &mut ctx.cache),
            _ => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        })
    }

    /// Picks the first peer before proxying starts, so that when every peer is known to be
    /// down the answer is an immediate 502 on a connection that stays open.
    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // A rate limit that counts only requests going upstream (hits never get here); a
        // client's request answered from slices is charged once, by its first slice that
        // comes here.
        let charged = ctx.cache.slice_report.as_ref().is_none_or(|r| r.charge());
        if charged && !self.access.on_upstream(session, ctx.access()).await? {
            return Ok(false);
        }
        let Some(upstream) = self.upstream_of(ctx) else {
            return Ok(true);
        };
        ctx.attempts.first_pick = upstream.select(ctx.hash_key(), &[]);
        // With a stale object to fall back on, go on: `upstream_peer` fails and Pingora
        // serves the object (stale-if-error) instead of this 502.
        if ctx.attempts.first_pick.is_some() || session.cache.can_serve_stale_error() {
            return Ok(true);
        }
        ctx.attempts.failures.push(upstream.down_reasons());
        let cache_status =
            Cache::status_without_answer(&session.cache, &ctx.cache).map(|v| (headers::CACHE_STATUS, v));
        errors::respond_with(
            session,
            errors::NO_HEALTHY_PEER,
            &ctx.request_id,
            cache_status.as_slice(),
        )
        .await?;
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let upstream = self
            .upstream_of(ctx)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        ctx.timing.upstream_start.get_or_insert_with(Instant::now);
        let pick = ctx.attempts.first_pick.take();
        match pick.or_else(|| upstream.select(ctx.hash_key(), &ctx.attempts.unreachable)) {
            Some(peer) => {
                let http = peer.http();
                ctx.attempts.start(peer);
                Ok(http)
            }
            None => {
                ctx.attempts.failures.push(upstream.down_reasons());
                Err(Error::explain(
                    errors::NO_PEER_ERROR,
                    format!("upstream {}", upstream.name),
                ))
            }
        }
    }

    /// Pingora retries only errors marked retryable: a connect failure is, while another
    /// peer and `retries` remain.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let (Some(upstream), Some(peer)) = (self.upstream_of(ctx), ctx.attempts.current.clone()) else {
            return e;
        };
        upstream.record_connect_failure(&peer, &e);
        let reason = format!("{}: {e}", peer.label);
        let retry = ctx
            .attempts
            .connect_failed(reason, upstream.retries, upstream.peer_count());
        if retry {
            upstream.metrics.failovers.inc();
        }
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        // The peer only explains upstream failures (a client going away is not the peer's).
        let mut e = match e.esource() {
            pingora::ErrorSource::Upstream => e.more_context(format!("peer: {peer}")),
            _ => e,
        };
        // Once a response is being stored, a retry's second response head would meet the
        // miss handler already set (a panic in Pingora).
        let started = session.response_written().is_some() || ctx.cache.storing;
        let retry = attempts::may_retry_established(e.retry, started, client_reused);
        e.set_retry(retry);
        if let (true, Some(upstream)) = (retry, self.upstream_of(ctx)) {
            upstream.metrics.retries.inc();
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.attempts.reused = reused;
        if let (Some(upstream), Some(peer)) = (self.upstream_of(ctx), &ctx.attempts.current) {
            upstream.record_connect_success(peer);
            upstream.metrics.connection(reused);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(m) = &ctx.route {
            req.set_uri(m.upstream_uri.clone());
        }
        // A cached route forwards only what its key accounts for (first: the gateway's own
        // headers are set below).
        if let Some(route) = self.cached_route(ctx.route.as_ref()) {
            route.keying.upstream_request(req);
        }
        if let Some(s) = ctx.cache.slice {
            req.insert_header(http::header::RANGE, s.range())?;
        }
        if let (Some(upstream), Some(peer)) = (self.upstream_of(ctx), &ctx.attempts.current) {
            req.insert_header(http::header::HOST, peer.host.clone())?;
            for (name, value) in &upstream.headers {
                req.insert_header(name, value.clone())?;
            }
        }
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            let xff = match self.cached_route(ctx.route.as_ref()) {
                // A stored answer must not depend on what a client wrote: only the addresses
                // trusted proxies vouch for.
                Some(_) => self.access.forwarded_chain(ip, session.req_header()),
                None => headers::forwarded_for(req, ip),
            };
            req.insert_header(headers::X_FORWARDED_FOR, xff)?;
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        req.insert_header(headers::X_FORWARDED_PROTO, if tls { HTTPS } else { HTTP })?;
        req.insert_header(headers::X_REQUEST_ID, ctx.request_id.header())?;
        // Hop-by-hop request headers are removed by Pingora's default upstream request
        // policy before this hook runs (those the client named in `Connection` already went
        // in `request_filter`).
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let t = &mut ctx.timing;
        if let (None, Some(start)) = (t.upstream_ttfb, t.upstream_start) {
            let ttfb = start.elapsed();
            t.upstream_ttfb = Some(ttfb);
            if let Some(upstream) = self.upstream_of(ctx) {
                upstream.metrics.ttfb(ttfb);
            }
        }
        if response::is_unsolicited_upgrade(resp) {
            // Answered 502 by fail_to_proxy; the connection is not pooled after an error.
            let mut e = Error::explain(errors::UNSOLICITED_UPGRADE, "101 without an upgrade request");
            e.as_up();
            return Err(e);
        }
        response::collapse_content_length(resp);
        response::strip_hop_by_hop(resp);
        if let (Some(m), Some(upstream)) = (&ctx.route, self.upstream_of(ctx)) {
            response::rewrite_locations(
                resp,
                |authority| upstream.is_peer_authority(authority),
                |path| self.router.client_path(m.index, path),
            );
        }
        if let Some(s) = ctx.cache.slice {
            slice::upstream_response(resp, s);
        }
        if let Some(cache) = self.cache {
            cache.prepare(session, resp, &mut ctx.cache).await;
        }
        Ok(())
    }

    /// Never returns Err: that would cost the pooled upstream connection.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.req_header().version == http::Version::HTTP_10 && response::frame_for_http10(resp) {
            // The body now ends with the connection: say so in this response's header
            // (Pingora decides `Connection` before it notices the body is close-delimited).
            session.set_keepalive(None);
        }
        headers::stamp(resp, &ctx.request_id);
        self.access
            .on_response(resp, ctx.route.as_ref().map(|m| m.index), &ctx.access);
        // Per request, so here and not in `upstream_response_filter` (what that leaves in
        // the header is stored with the object).
        if let Some(outcome) = Cache::outcome(&session.cache, &ctx.cache) {
            // A slice tells its parent now, before its header reaches the parent (its
            // `logging` may run after the parent's).
            if let Some(report) = &ctx.cache.slice_report {
                report.merge(outcome);
            }
            let value = outcome.header(ctx.cache.ttl, ctx.cache.vary_miss);
            let _ = resp.insert_header(headers::CACHE_STATUS, value);
        }
        if let (true, Some(upstream)) = (self.server_timing, ctx.timing.upstream_ttfb) {
            let gateway = ctx.timing.start.elapsed().saturating_sub(upstream);
            let mut value = String::with_capacity(96);
            value.push_str("upstream;desc=\"upstream time to first byte\";dur=");
            fmt::push_ms(&mut value, upstream);
            value.push_str(", gateway;desc=\"gateway\";dur=");
            fmt::push_ms(&mut value, gateway);
            let _ = resp.insert_header(headers::SERVER_TIMING, value);
        }
        Ok(())
    }

    /// Pingora's default closes the client connection without a word; the client gets the
    /// JSON answer when nothing was sent yet.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let status = match errors::for_error(e) {
            // Headers already went out: the only honest signal left is closing the connection
            // before the body is complete, which Pingora does when we do not reuse it.
            Some(reject) if session.response_written().is_some() => Some(reject.status),
            Some(reject) => {
                // Pingora does not reuse the client connection after a proxy failure, so say so.
                session.set_keepalive(None);
                // A cached route says what the cache did on every response, its own errors
                // included (`fwd=uri-miss; detail=upstream-error` when nothing was stored).
                let cache_status = Cache::status_without_answer(&session.cache, &ctx.cache)
                    .map(|v| (headers::CACHE_STATUS, v));
                let sent =
                    errors::respond_with(session, reject, &ctx.request_id, cache_status.as_slice()).await;
                sent.ok().map(|()| reject.status)
            }
            None => None,
        };
        ctx.error_status = status;
        FailToProxy {
            error_code: status.unwrap_or(0),
            can_reuse_downstream: false,
        }
    }

    /// Failures are reported once, in the access log line at info, not as per-request errors.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(report) = &ctx.cache.slice_report {
            // A slice: its cache lookup counts; the request, its status and its access line
            // are its parent's, which it tells what the cache did.
            if let Some(outcome) = Cache::outcome(&session.cache, &ctx.cache) {
                report.merge(outcome);
                if let Some(route) = self.cached_route(ctx.route.as_ref()) {
                    route.lookups.record(outcome.lookup_result());
                }
            }
            return;
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.error_status);
        let total = ctx.timing.start.elapsed();
        let route = ctx
            .route
            .as_ref()
            .map_or(self.route_metrics.len() - 1, |m| m.index);
        self.route_metrics[route].record(status, total, session.body_bytes_sent());
        if let Some(reason) = ctx.access.refused {
            self.route_metrics[route].refused(reason.index());
        }
        // From the phase at the end, not the one the header reported: a fill that failed
        // after the header was sent is logged as not stored.
        let cache_outcome = Cache::outcome(&session.cache, &ctx.cache);
        // A request answered from slices: its slices' lookups were counted.
        if let (Some(route), Some(outcome), None) = (
            self.cached_route(ctx.route.as_ref()),
            cache_outcome,
            &ctx.cache.sliced,
        ) {
            route.lookups.record(outcome.lookup_result());
        }
        let Some(format) = self.access_log else {
            return;
        };
        let req = session.req_header();
        let a = &ctx.attempts;
        let fields = self.access_log_fields;
        let header = |name| {
            req.headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
        };
        let record = AccessRecord {
            client: session.client_addr().and_then(|c| c.as_inet()).copied(),
            proto: match req.version {
                http::Version::HTTP_2 => "h2",
                http::Version::HTTP_10 => "http/1.0",
                _ => "http/1.1",
            },
            method: req.method.as_str(),
            path: req.uri.path(),
            status: status.unwrap_or(0),
            body_bytes: session.body_bytes_sent(),
            upstream_peer: a.current.as_ref().map(|p| p.label.as_str()),
            reused: a.reused,
            attempts: a.count,
            upstream_ttfb: ctx.timing.upstream_ttfb,
            total,
            request_id: ctx.request_id.as_str(),
            error: e.map(errors::describe),
            failures: a.failures_for_log(e.is_some()),
            cache: cache_outcome.map(|o| o.log_word()),
            refused: ctx.access.refused.map(|r| r.as_str()),
            client_ip: ctx.access.client_ip,
            range: fields.range.then(|| header(http::header::RANGE)),
            user_agent: fields.user_agent.then(|| header(http::header::USER_AGENT)),
            referer: fields.referer.then(|| header(http::header::REFERER)),
        };
        access_log::write(&record, format);
    }
}
