//! The gateway as built at start-up (routes, upstreams, per-route metrics, client rules) and
//! the per-request context its hooks share, with the two decisions made before any upstream
//! work: whether a request is admitted, and which upstream serves it.

use crate::access::{self, Access, RequestAccess, RequestRef};
use crate::attempts::Attempts;
use crate::cache::{Cache, CachedRoute, RequestCache};
use crate::config::{self, AccessLogFields, AccessLogFormat, Settings};
use crate::downstream::Limits;
use crate::errors::{self, Reject};
use crate::metrics::RouteMetrics;
use crate::request_id::RequestId;
use crate::routing::{self, AssetId, Resolution, Route, Router};
use crate::shutdown::InFlight;
use crate::upstreams::{Upstream, Upstreams};
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway: routes, upstreams and per-route metrics, built once at start-up.
pub(crate) struct Gateway {
    pub(crate) router: Router,
    pub upstreams: Arc<Upstreams>,
    /// Indexed like the routes; the last one is for requests no route took.
    pub(crate) route_metrics: Vec<RouteMetrics>,
    /// Idle keep-alive timeout for client connections, in whole seconds (Pingora's unit).
    pub(crate) keepalive_secs: u64,
    /// The longest one write to a client may wait.
    pub(crate) write_timeout: std::time::Duration,
    pub(crate) limits: Limits,
    pub(crate) server_timing: bool,
    pub(crate) access_log: Option<AccessLogFormat>,
    pub(crate) access_log_fields: AccessLogFields,
    /// The response cache, if configured.
    pub(crate) cache: Option<&'static Cache>,
    /// Indexed like the routes: `Some` for a route whose responses go through the cache.
    pub(crate) cache_routes: Vec<Option<CachedRoute>>,
    /// Who may fetch: CORS, rate limits, signed URLs and tokens.
    pub(crate) access: Access,
}

/// The router of the configured routes (the proxy's, the admin's, `sign`'s).
pub(crate) fn router(s: &Settings) -> Router {
    let routes: Vec<Route> = s
        .routes
        .iter()
        .map(|r| Route::new(&r.template, &r.rewrite, r.upstream, r.query.clone()))
        .collect();
    Router::new(routes)
}

impl Gateway {
    /// Builds the runtime structures from settings `config` has already checked; only the
    /// metric families can still fail to register.
    pub(crate) fn build(s: &Settings) -> std::result::Result<Gateway, String> {
        let route_metrics = s
            .routes
            .iter()
            .map(|r| r.template.as_str())
            .chain(["unmatched"])
            .map(|route| RouteMetrics::new(route, &access::Reason::ALL.map(access::Reason::as_str)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let cache = s.cache.as_ref().map(Cache::build).transpose()?;
        let cache_routes = s
            .routes
            .iter()
            .map(|r| {
                let subject = config::subject_header(&r.access, &s.access);
                cache.filter(|_| r.cache).map(|c| CachedRoute::new(c, r, subject))
            })
            .collect();
        Ok(Gateway {
            router: router(s),
            upstreams: Arc::new(Upstreams::build(&s.upstreams)?),
            route_metrics,
            keepalive_secs: s.downstream.keepalive_secs(),
            write_timeout: s.downstream.write_timeout,
            limits: s.downstream.limits,
            server_timing: s.server_timing,
            access_log: s.access_log,
            access_log_fields: s.access_log_fields,
            cache,
            cache_routes,
            access: Access::build(s)?,
        })
    }
}

/// Per-request state shared by the hooks.
pub(crate) struct Ctx {
    pub(crate) request_id: RequestId,
    /// Set when a route took the request.
    pub(crate) route: Option<Matched>,
    pub(crate) attempts: Attempts,
    pub(crate) timing: Timing,
    /// The status `fail_to_proxy` wrote, if it could write one.
    pub(crate) error_status: Option<u16>,
    pub(crate) cache: RequestCache,
    pub(crate) access: RequestAccess,
    /// `None` for a slice's subrequest: its parent is the request in flight.
    pub(crate) in_flight: Option<InFlight>,
}

/// What routing decided for a request.
#[derive(Clone)]
pub(crate) struct Matched {
    pub(crate) index: usize,
    /// The rewritten upstream target.
    pub(crate) upstream_uri: http::Uri,
    /// The key of consistent hashing.
    pub(crate) asset: AssetId,
}

pub(crate) struct Timing {
    pub(crate) start: Instant,
    /// When the first upstream attempt started (connect or pool checkout).
    pub(crate) upstream_start: Option<Instant>,
    /// From `upstream_start` to the response header.
    pub(crate) upstream_ttfb: Option<Duration>,
}

impl Ctx {
    /// A slice subrequest takes its parent's route, request id and client, and reports its
    /// cache outcome to it; it is not a request in flight of its own.
    pub(crate) fn adopt_slice(&mut self, r: crate::cache::slice::SliceRequest) {
        self.route = Some(r.route);
        self.request_id = r.request_id;
        self.cache.slice = Some(r.slice);
        self.cache.slice_report = Some(r.report);
        self.access.client_ip = r.client_ip;
        self.in_flight = None;
    }

    pub(crate) fn new() -> Ctx {
        Ctx {
            request_id: RequestId::default(),
            route: None,
            attempts: Attempts::default(),
            timing: Timing {
                start: Instant::now(),
                upstream_start: None,
                upstream_ttfb: None,
            },
            error_status: None,
            cache: RequestCache::default(),
            access: RequestAccess::default(),
            in_flight: Some(InFlight::start()),
        }
    }

    /// What access control needs of this context, once a route matched.
    pub(crate) fn access(&mut self) -> Option<RequestRef<'_>> {
        let m = self.route.as_mut()?;
        Some(RequestRef {
            route: m.index,
            upstream_uri: &mut m.upstream_uri,
            request_id: &self.request_id,
            state: &mut self.access,
        })
    }

    pub(crate) fn hash_key(&self) -> &[u8] {
        self.route.as_ref().map_or(&[], |m| m.asset.as_str().as_bytes())
    }
}

impl Gateway {
    /// What the gateway changes in Pingora's handling of a client connection, per request.
    pub(crate) fn set_connection_policy(&self, session: &mut Session) {
        // Pingora sets no write timeout towards clients: a client that stops reading (or never
        // opens its HTTP/2 window) would hold its request, and its upstream, forever.
        session.set_write_timeout(Some(self.write_timeout));
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
    }

    /// An admitted `GET`/`HEAD` on a cached route with slicing on is answered from its slices
    /// (`Ok(true)`, `cache::slice`); anything else goes on to the ordinary path (`Ok(false)`).
    pub(crate) async fn serve_sliced(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let (Some(cache), Some(_)) = (self.cache, self.cached_route(ctx.route.as_ref())) else {
            return Ok(false);
        };
        let Some(size) = cache.slice else {
            return Ok(false);
        };
        if !matches!(
            session.req_header().method,
            http::Method::GET | http::Method::HEAD
        ) {
            return Ok(false);
        }
        self.serve_slices(cache, size, session, ctx).await
    }

    /// The request's route (`ctx.route`), when it is cached.
    pub(crate) fn cached_route(&self, route: Option<&Matched>) -> Option<&CachedRoute> {
        self.cache_routes.get(route?.index)?.as_ref()
    }

    pub(crate) fn upstream_of(&self, ctx: &Ctx) -> Option<&Upstream> {
        let m = ctx.route.as_ref()?;
        Some(self.upstreams.get(self.router.route(m.index).upstream))
    }

    /// Decides whether a request may go upstream, and prepares its upstream target. A refusal
    /// names the route the path belongs to, if any (its CORS headers go on the answer).
    pub(crate) fn admit(
        &self,
        session: &mut Session,
    ) -> std::result::Result<Matched, (Reject, Option<usize>)> {
        let req = session.req_header();
        if !req.raw_path_is_utf8() {
            return Err((errors::BAD_PATH, None));
        }
        let (route, id) = match self.router.resolve(req.uri.path()) {
            Resolution::NoRoute => return Err((errors::NO_ROUTE, None)),
            Resolution::BadId { route } => (route, None),
            Resolution::Asset { route, id } => (route, Some(id)),
        };
        let refuse = |reject| Err((reject, Some(route)));
        // `OPTIONS` only for CORS preflights, which `access` answers.
        let preflight = req.method == http::Method::OPTIONS && id.is_some() && self.access.has_cors(route);
        if !routing::is_allowed_method(req.method.as_str()) && !preflight {
            return refuse(errors::METHOD_NOT_ALLOWED);
        }
        let Some(id) = id else {
            return refuse(errors::BAD_ASSET_ID);
        };
        let target = self.router.route(route).upstream_path(&id, req.uri.query());
        let Ok(upstream_uri) = http::Uri::try_from(target) else {
            return refuse(errors::BAD_PATH);
        };
        if !session.is_body_empty() {
            return refuse(errors::BODY_NOT_ALLOWED);
        }
        let matched = Matched {
            index: route,
            upstream_uri,
            asset: id,
        };
        if self
            .cached_route(Some(&matched))
            .is_some_and(|c| c.keying.forwards_too_much(session.req_header()))
        {
            return refuse(errors::FORWARDED_TOO_LARGE);
        }
        Ok(matched)
    }
}
