//! The `ProxyHttp` implementation. Each hook is thin and hands its work to the module that
//! owns the concern: routing, upstreams, errors, metrics, logging.
//!
//! No body filter is implemented on purpose: the body goes from the upstream socket to the
//! client socket through Pingora's bounded task channel, so it is never collected and a slow
//! client holds back upstream reads.

use crate::config::{AccessLogConf, GatewayConf, QueryPolicy};
use crate::downstream::{self, Limits};
use crate::errors::{self, Reject};
use crate::logging::{self, AccessRecord, RequestId};
use crate::metrics::{InFlight, RouteMetrics};
use crate::response;
use crate::routing::{AssetId, Resolution, Route, Router};
use crate::upstreams::{Selected, Upstream, Upstreams};
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway: routes, upstreams and per-route metrics, built once at start-up.
pub struct Gateway {
    pub router: Router,
    pub upstreams: Arc<Upstreams>,
    /// Indexed like the routes; the last one is for requests no route took.
    route_metrics: Vec<RouteMetrics>,
    /// Idle keep-alive timeout for client connections, in whole seconds (Pingora's unit).
    keepalive_secs: u64,
    limits: Limits,
    server_timing: bool,
    access_log: AccessLogConf,
}

impl Gateway {
    /// Compiles the validated config into runtime structures. Also resolves peer names and
    /// loads TLS files, so it can still fail; `-t` runs it too.
    pub fn build(conf: &GatewayConf) -> std::result::Result<Gateway, Vec<String>> {
        let upstreams = Upstreams::build(conf)?;
        let routes: Vec<Route> = conf
            .routes
            .iter()
            .map(|r| {
                let upstream = upstreams.index_of(&r.upstream).unwrap_or_default();
                Route::new(&r.path, &r.rewrite, upstream, r.query == QueryPolicy::Forward)
            })
            .collect();
        let route_metrics = routes
            .iter()
            .map(|r| r.template.as_str())
            .chain(["unmatched"])
            .map(RouteMetrics::new)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| vec![e])?;
        Ok(Gateway {
            router: Router::new(routes),
            upstreams: Arc::new(upstreams),
            route_metrics,
            keepalive_secs: conf.downstream.keepalive_secs(),
            limits: Limits::new(&conf.downstream),
            server_timing: conf.server_timing,
            access_log: conf.access_log,
        })
    }
}

/// Per-request state shared by the hooks.
pub struct Ctx {
    start: Instant,
    request_id: RequestId,
    /// Set when a route matched: the route index and the rewritten upstream target.
    route: Option<usize>,
    upstream_uri: Option<http::Uri>,
    /// The asset id: the key of consistent hashing.
    asset: Option<AssetId>,
    /// Peers already attempted for this request, in order.
    tried: Vec<SocketAddr>,
    /// Peers that failed to connect for this request: never selected again for it. (A stale
    /// pooled connection says nothing about its peer, so a retry after one may go back.)
    unreachable: Vec<SocketAddr>,
    /// The peer chosen when the request was admitted, used by the first attempt.
    first_pick: Option<Selected>,
    /// Why each failed attempt failed (for the access line).
    failures: Vec<String>,
    reused: bool,
    /// When the first upstream attempt started (connect or pool checkout).
    upstream_start: Option<Instant>,
    /// Upstream time to first byte: from `upstream_start` to the response header.
    upstream_ttfb: Option<Duration>,
    /// Status written by `fail_to_proxy` (0: nothing could be written).
    error_status: u16,
    _in_flight: InFlight,
}

impl Ctx {
    fn upstream_peer(&self) -> Option<&SocketAddr> {
        self.tried.last()
    }

    fn hash_key(&self) -> &[u8] {
        self.asset.as_ref().map_or(&[], |a| a.as_str().as_bytes())
    }
}

const HTTP: http::HeaderValue = http::HeaderValue::from_static("http");
const NOSNIFF: http::HeaderValue = http::HeaderValue::from_static("nosniff");

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: RequestId::default(),
            route: None,
            upstream_uri: None,
            asset: None,
            tried: Vec::new(),
            unreachable: Vec::new(),
            first_pick: None,
            failures: Vec::new(),
            reused: false,
            upstream_start: None,
            upstream_ttfb: None,
            error_status: 0,
            _in_flight: InFlight::start(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = RequestId::from_client(session.get_header("x-request-id"));
        // Requests a client pipelines are answered in order (Pingora's default drops every
        // request after the first and closes). It carries over to the connection's next
        // requests.
        session.set_pipelining_enabled(true);
        if session.req_header().version == http::Version::HTTP_10 {
            // RFC 9110 15.2: no 1xx to an HTTP/1.0 client.
            session.set_ignore_info_resp(true);
        }
        // Pingora keeps an idle HTTP/1.1 client forever by default; this sets our idle limit.
        // A connection the client did not ask to keep (HTTP/1.0, `Connection: close`) stays
        // unkept.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.keepalive_secs));
        }
        let checked = self
            .limits
            .check(session.req_header())
            .and_then(|()| downstream::sanitize(session.req_header_mut()));
        if let Err(reject) = checked {
            // An oversized head is a broken or hostile client: answer, then close.
            session.set_keepalive(None);
            errors::respond(session, reject, ctx.request_id.as_str()).await?;
            return Ok(true);
        }
        match self.admit(session, ctx) {
            Ok(()) => Ok(false),
            Err(reject) => {
                if !session.is_body_empty() {
                    // Never leave unread request bytes on a connection we keep using.
                    session.set_keepalive(None);
                }
                errors::respond(session, reject, ctx.request_id.as_str()).await?;
                Ok(true)
            }
        }
    }

    /// Picks the first peer before proxying starts, so that when every peer is known to be
    /// down the answer is an immediate 502 on a connection that stays open.
    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(upstream) = self.upstream_of(ctx) else {
            return Ok(true);
        };
        ctx.first_pick = upstream.select(ctx.hash_key(), &[]);
        if ctx.first_pick.is_some() {
            return Ok(true);
        }
        ctx.failures.push(upstream.down_reasons());
        errors::respond(session, errors::NO_HEALTHY_PEER, ctx.request_id.as_str()).await?;
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let upstream = self
            .upstream_of(ctx)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        ctx.upstream_start.get_or_insert_with(Instant::now);
        let pick = ctx.first_pick.take();
        match pick.or_else(|| upstream.select(ctx.hash_key(), &ctx.unreachable)) {
            Some(selected) => {
                ctx.tried.push(selected.addr);
                Ok(selected.peer)
            }
            None => {
                ctx.failures.push(upstream.down_reasons());
                Err(Error::explain(
                    errors::NO_PEER_ERROR,
                    format!("upstream {}", upstream.name),
                ))
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(upstream) = self.upstream_of(ctx) else {
            return e;
        };
        if let Some(&addr) = ctx.upstream_peer() {
            upstream.record_connect_failure(&addr, &e);
            ctx.failures.push(format!("{}: {}", upstream.label_for(&addr), e));
            ctx.unreachable.push(addr);
        }
        // Pingora retries only errors marked retryable. A connect failure sent nothing
        // upstream, so another peer (never the same one) may take the request, up to
        // `retries` more peers.
        let failed = ctx.unreachable.len();
        let retry = failed <= upstream.retries && failed < upstream.peer_count();
        if retry {
            upstream.metrics.failovers.inc();
        }
        e.set_retry(retry);
        e
    }

    /// After a connection was made, only a failure on a reused (stale pooled) connection
    /// before any response byte reached the client may be retried, and only for GET/HEAD
    /// (which are all we forward). Once the client has part of a response, never.
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
        if session.response_written().is_some() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if let (true, Some(upstream)) = (e.retry(), self.upstream_of(ctx)) {
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
        ctx.reused = reused;
        if let (Some(upstream), Some(addr)) = (self.upstream_of(ctx), ctx.upstream_peer()) {
            upstream.record_connect_success(addr);
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
        if let Some(uri) = &ctx.upstream_uri {
            req.set_uri(uri.clone());
        }
        if let (Some(upstream), Some(peer)) = (self.upstream_of(ctx), ctx.upstream_peer()) {
            if let Some(host) = upstream.host_for(peer) {
                req.insert_header("host", host)?;
            }
            for (name, value) in &upstream.headers {
                req.insert_header(name, value.clone())?;
            }
        }
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            let mut xff = forwarded_for(req).unwrap_or_default();
            if !xff.is_empty() {
                xff.push_str(", ");
            }
            logging::push_ip(&mut xff, &ip);
            req.insert_header("x-forwarded-for", xff)?;
        }
        req.insert_header("x-forwarded-proto", HTTP)?;
        req.insert_header("x-request-id", ctx.request_id.header())?;
        // Hop-by-hop request headers (and any the client nominated in `Connection`) are
        // removed by Pingora's default upstream request policy before this hook runs.
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (None, Some(start)) = (ctx.upstream_ttfb, ctx.upstream_start) {
            let ttfb = start.elapsed();
            ctx.upstream_ttfb = Some(ttfb);
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
        if let (Some(route), Some(upstream)) = (ctx.route, self.upstream_of(ctx)) {
            response::rewrite_locations(
                resp,
                |authority| upstream.is_peer_authority(authority),
                |path| self.router.client_path(route, path),
            );
        }
        Ok(())
    }

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
        // Never return Err here: it would cost the pooled upstream connection. These values
        // are valid header values, so inserting them cannot fail.
        let _ = resp.insert_header("x-content-type-options", NOSNIFF);
        let _ = resp.insert_header("x-request-id", ctx.request_id.header());
        if let (true, Some(upstream)) = (self.server_timing, ctx.upstream_ttfb) {
            let gateway = ctx.start.elapsed().saturating_sub(upstream);
            let mut value = String::with_capacity(96);
            value.push_str("upstream;desc=\"upstream time to first byte\";dur=");
            logging::push_ms(&mut value, upstream);
            value.push_str(", gateway;desc=\"gateway\";dur=");
            logging::push_ms(&mut value, gateway);
            let _ = resp.insert_header("server-timing", value);
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let status = match errors::for_error(e) {
            // Headers already went out: the only honest signal left is closing the connection
            // before the body is complete, which Pingora does when we do not reuse it.
            Some(reject) if session.response_written().is_some() => reject.status,
            Some(reject) => {
                // Pingora does not reuse the client connection after a proxy failure, so say so.
                session.set_keepalive(None);
                match errors::respond(session, reject, ctx.request_id.as_str()).await {
                    Ok(()) => reject.status,
                    Err(_) => 0,
                }
            }
            None => 0,
        };
        ctx.error_status = status;
        FailToProxy {
            error_code: status,
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
        let status = session
            .response_written()
            .map_or(ctx.error_status, |r| r.status.as_u16());
        let total = ctx.start.elapsed();
        let route = ctx.route.unwrap_or(self.route_metrics.len() - 1);
        self.route_metrics[route].record(status, total, session.body_bytes_sent());
        if !self.access_log.enabled {
            return;
        }
        let upstream = self.upstream_of(ctx);
        let record = AccessRecord {
            session,
            status,
            upstream_peer: ctx.upstream_peer().and_then(|p| upstream.map(|u| u.label_for(p))),
            reused: ctx.reused,
            attempts: ctx.tried.len(),
            upstream_ttfb: ctx.upstream_ttfb,
            total,
            request_id: ctx.request_id.as_str(),
            error: e,
            failures: &ctx.failures,
        };
        logging::access(&record, self.access_log.format);
    }
}

impl Gateway {
    fn upstream_of(&self, ctx: &Ctx) -> Option<&Upstream> {
        ctx.route
            .map(|r| self.upstreams.get(self.router.route(r).upstream))
    }

    /// Decides whether a request may go upstream, and prepares its upstream target.
    fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> std::result::Result<(), Reject> {
        let req = session.req_header();
        if !req.raw_path_is_utf8() {
            return Err(errors::BAD_PATH);
        }
        let resolution = self.router.resolve(req.uri.path());
        if resolution == Resolution::NoRoute {
            return Err(errors::NO_ROUTE);
        }
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return Err(errors::METHOD_NOT_ALLOWED);
        }
        let query = req.uri.query();
        let (route, id) = match resolution {
            Resolution::Asset { route, id } => (route, id),
            _ => return Err(errors::BAD_ASSET_ID),
        };
        let target = self.router.route(route).upstream_path(&id, query);
        let uri = http::Uri::try_from(target).map_err(|_| errors::BAD_PATH)?;
        if !session.is_body_empty() {
            return Err(errors::BODY_NOT_ALLOWED);
        }
        ctx.route = Some(route);
        ctx.upstream_uri = Some(uri);
        ctx.asset = Some(id);
        Ok(())
    }
}

/// All `X-Forwarded-For` values the client sent, joined.
fn forwarded_for(req: &RequestHeader) -> Option<String> {
    let values: Vec<&str> = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}
