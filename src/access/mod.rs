//! Who may fetch: per route, CORS preflights, a rate limit per client, and authentication
//! (signed URLs, bearer JWTs), all decided in `request_filter` before the cache, so a hit is
//! served only to a request that passes and a refused request never reaches the upstream nor
//! fills the cache. A rate limit that `counts: upstream` is checked in `proxy_upstream_filter`
//! instead, where only requests that go upstream arrive (hits and joined fills are free), and
//! charged for every refusal (bad credentials, refused preflights) as well.
//!
//! Once admitted, `Authorization` is removed (the upstream and the storage decision never see
//! it: RFC 9111 would keep such responses out of a shared cache) and the signature's `exp`,
//! `kid` and `sig` leave the upstream target, and so the cache key. With
//! `jwt.subject_header`, the client's own value of that header is removed on every route and
//! a verified token's `sub` put in its place, in the request itself: the upstream request is
//! made from it, and on a cached route the header counts as forwarded, so an origin's `Vary`
//! on it keys on the verified subject (`config::subject_header`).
//!
//! - `signed_url`, `jwks` (with `crate::jwt`): the two credentials, `verified`: tokens already
//!   verified; `rate_limit`: buckets in fixed memory;
//! - `cors`: preflights and response headers; `client_ip`: who the client is;
//! - `admin`: who may use the admin API. (`asset-gateway sign` is the top-level `sign`.)

pub(crate) mod admin;
mod client_ip;
mod cors;
mod jwks;
mod rate_limit;
pub(crate) mod signed_url;
mod verified;

use crate::config::{AuthMethod, Counts, Settings};
use crate::errors::{self, Reject};
use crate::jwt::TokenError;
use crate::request_id::RequestId;
use client_ip::ClientIp;
use cors::Cors;
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue};
use jwks::{JwksRefresh, Jwt};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::services::ServiceWithDependents;
use rate_limit::RateLimiter;
use signed_url::{SignedUrls, UrlError};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// Why the gateway refused a request: the metric label and the access log's `refused` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    MissingCredentials,
    UrlExpired,
    UrlUnknownKey,
    UrlBadSignature,
    UrlBeyondMaxTtl,
    JwtInvalid,
    JwtUnknownKey,
    JwtExpired,
    JwtClaims,
    RateLimited,
    CorsRefused,
}

impl Reason {
    pub(crate) const ALL: [Reason; 11] = [
        Reason::MissingCredentials,
        Reason::UrlExpired,
        Reason::UrlUnknownKey,
        Reason::UrlBadSignature,
        Reason::UrlBeyondMaxTtl,
        Reason::JwtInvalid,
        Reason::JwtUnknownKey,
        Reason::JwtExpired,
        Reason::JwtClaims,
        Reason::RateLimited,
        Reason::CorsRefused,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::MissingCredentials => "missing-credentials",
            Reason::UrlExpired => "url-expired",
            Reason::UrlUnknownKey => "url-unknown-kid",
            Reason::UrlBadSignature => "url-bad-signature",
            Reason::UrlBeyondMaxTtl => "url-beyond-max-ttl",
            Reason::JwtInvalid => "jwt-invalid",
            Reason::JwtUnknownKey => "jwt-unknown-kid",
            Reason::JwtExpired => "jwt-expired",
            Reason::JwtClaims => "jwt-claims",
            Reason::RateLimited => "rate-limit",
            Reason::CorsRefused => "cors-refused",
        }
    }

    /// The position in [`Reason::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    fn reject(self) -> Reject {
        match self {
            Reason::MissingCredentials => errors::AUTH_REQUIRED,
            Reason::UrlExpired => errors::URL_EXPIRED,
            Reason::UrlUnknownKey => errors::URL_UNKNOWN_KEY,
            Reason::UrlBadSignature => errors::URL_BAD_SIGNATURE,
            Reason::UrlBeyondMaxTtl => errors::URL_BEYOND_MAX_TTL,
            Reason::JwtInvalid => errors::TOKEN_INVALID,
            Reason::JwtUnknownKey => errors::TOKEN_UNKNOWN_KEY,
            Reason::JwtExpired => errors::TOKEN_EXPIRED,
            Reason::JwtClaims => errors::TOKEN_CLAIMS,
            Reason::RateLimited => errors::TOO_MANY_REQUESTS,
            Reason::CorsRefused => errors::CORS_REFUSED,
        }
    }

    fn of_url(e: UrlError) -> Option<Reason> {
        match e {
            UrlError::Missing => None,
            UrlError::Expired => Some(Reason::UrlExpired),
            UrlError::UnknownKey => Some(Reason::UrlUnknownKey),
            UrlError::BadSignature => Some(Reason::UrlBadSignature),
            UrlError::BeyondMaxTtl => Some(Reason::UrlBeyondMaxTtl),
        }
    }

    fn of_token(e: TokenError) -> Reason {
        match e {
            TokenError::Invalid => Reason::JwtInvalid,
            TokenError::UnknownKey => Reason::JwtUnknownKey,
            TokenError::Expired => Reason::JwtExpired,
            TokenError::Claims => Reason::JwtClaims,
        }
    }
}

/// What access control decided for one request (in the request context).
#[derive(Default)]
pub(crate) struct RequestAccess {
    pub(crate) refused: Option<Reason>,
    /// The client's address when it is not the connection's peer (behind trusted proxies).
    pub(crate) client_ip: Option<IpAddr>,
    /// `Access-Control-Allow-Origin` for the response, when the route has CORS.
    cors_origin: Option<HeaderValue>,
}

/// What access control reads and changes of one request's context (see `gateway::Ctx`).
pub(crate) struct RequestRef<'a> {
    pub(crate) route: usize,
    /// The upstream target (and so the cache key): the signature's parameters leave it.
    pub(crate) upstream_uri: &'a mut http::Uri,
    pub(crate) request_id: &'a RequestId,
    pub(crate) state: &'a mut RequestAccess,
}

/// One route's rules.
#[derive(Default)]
struct RouteRules {
    auth: Vec<AuthMethod>,
    limit: Option<(RateLimiter, Counts)>,
    cors: Option<Cors>,
}

/// Access control, built once at start.
pub(crate) struct Access {
    /// Indexed like the routes.
    routes: Vec<RouteRules>,
    signed: Option<SignedUrls>,
    jwt: Option<Arc<Jwt>>,
    client_ip: ClientIp,
}

impl Access {
    pub(crate) fn build(s: &Settings) -> Result<Access, String> {
        let routes = s
            .routes
            .iter()
            .map(|r| RouteRules {
                auth: r.access.auth.clone(),
                limit: r
                    .access
                    .rate_limit
                    .map(|l| (RateLimiter::new(l.interval, l.burst), l.counts)),
                cors: r.access.cors.as_ref().map(Cors::new),
            })
            .collect();
        let auth = &s.access.auth;
        Ok(Access {
            routes,
            signed: auth
                .signed_url
                .as_ref()
                .map(|u| SignedUrls::new(&u.keys, u.max_ttl)),
            jwt: auth.jwt.as_ref().map(Jwt::new).transpose()?,
            client_ip: ClientIp::new(&s.access.client_ip)?,
        })
    }

    /// The background service that refreshes the JWK set, with `jwt` configured.
    pub(crate) fn jwks_service(&self) -> Option<Box<dyn ServiceWithDependents>> {
        let jwt = self.jwt.clone()?;
        Some(Box::new(pingora::services::background::background_service(
            "jwks refresh",
            JwksRefresh(jwt),
        )))
    }

    /// Whether `OPTIONS` is served on this route (CORS preflights).
    pub(crate) fn has_cors(&self, route: usize) -> bool {
        self.routes.get(route).is_some_and(|r| r.cors.is_some())
    }

    /// `request_filter`, once the route matched: preflight, rate limit (`counts: all`),
    /// authentication. `Ok(true)`: the request was answered here.
    pub(crate) async fn on_request(
        &self,
        session: &mut Session,
        r: Option<RequestRef<'_>>,
    ) -> pingora::Result<bool> {
        let Some(mut r) = r else { return Ok(false) };
        let Some(rules) = self.routes.get(r.route) else {
            return Ok(false);
        };
        let subject_header = self.jwt.as_ref().and_then(|j| j.subject_header.as_ref());
        if let Some(name) = subject_header {
            // Only ever the gateway's value.
            session.req_header_mut().remove_header(name);
        }
        if let Some(cors) = &rules.cors {
            if session.req_header().method == http::Method::OPTIONS {
                return self.preflight(session, &mut r, cors).await;
            }
            r.state.cors_origin = cors.allow_origin(session.req_header());
        }
        if let Some((limiter, Counts::All)) = &rules.limit {
            if let Err(wait) = limiter.check(self.client(session, r.state)) {
                return self
                    .refuse(session, &mut r, Reason::RateLimited, Some(wait))
                    .await;
            }
        }
        if rules.auth.is_empty() {
            return Ok(false);
        }
        let subject = match self.authenticate(&rules.auth, session.req_header(), r.upstream_uri.query()) {
            Ok(subject) => subject,
            Err(reason) => return self.refuse(session, &mut r, reason, None).await,
        };
        // Verified: neither the storage decision nor the upstream sees the credentials.
        let req = session.req_header_mut();
        req.remove_header(&AUTHORIZATION);
        if let (Some(name), Some(sub)) = (subject_header, subject) {
            req.insert_header(name.clone(), sub)?;
        }
        if rules.auth.contains(&AuthMethod::SignedUrl) {
            strip_signature(r.upstream_uri);
        }
        Ok(false)
    }

    /// `proxy_upstream_filter`: the rate limit that counts only requests going upstream.
    /// `Ok(false)`: refused (answered here).
    pub(crate) async fn on_upstream(
        &self,
        session: &mut Session,
        r: Option<RequestRef<'_>>,
    ) -> pingora::Result<bool> {
        let Some(mut r) = r else { return Ok(true) };
        if let Some((limiter, Counts::Upstream)) =
            self.routes.get(r.route).and_then(|rules| rules.limit.as_ref())
        {
            if let Err(wait) = limiter.check(self.client(session, r.state)) {
                self.refuse(session, &mut r, Reason::RateLimited, Some(wait))
                    .await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The CORS headers of the gateway's own answer (400, 405, ...) to `req` on `route`.
    pub(crate) fn cors_headers(&self, route: usize, req: &RequestHeader) -> Vec<(HeaderName, HeaderValue)> {
        let cors = self.routes.get(route).and_then(|r| r.cors.as_ref());
        match cors.and_then(|c| c.allow_origin(req)) {
            Some(origin) => cors::error_headers(&origin).to_vec(),
            None => Vec::new(),
        }
    }

    /// `response_filter`: CORS headers (on hits too; never stored).
    pub(crate) fn on_response(&self, resp: &mut ResponseHeader, route: Option<usize>, state: &RequestAccess) {
        let cors = route.and_then(|i| self.routes.get(i)?.cors.as_ref());
        if let Some(cors) = cors {
            cors.stamp(resp, state.cors_origin.as_ref());
        }
    }

    /// `X-Forwarded-For` for the upstream of a cached route, the connection's peer being
    /// `peer`: the client and the trusted proxies after it, nothing the client wrote itself.
    pub(crate) fn forwarded_chain(&self, peer: IpAddr, req: &RequestHeader) -> String {
        self.client_ip.forwarded_chain(peer, req)
    }

    /// The client's address (for the rate limit and the access log).
    fn client(&self, session: &Session, state: &mut RequestAccess) -> IpAddr {
        if let Some(ip) = state.client_ip {
            return ip;
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let client = self.client_ip.resolve(peer, session.req_header());
        if client != peer.to_canonical() {
            state.client_ip = Some(client);
        }
        client
    }

    /// Any one method the request carries credentials for admits it. The refusal is the
    /// first presented credential's, or 401 when none was presented.
    fn authenticate(
        &self,
        methods: &[AuthMethod],
        req: &RequestHeader,
        upstream_query: Option<&str>,
    ) -> Result<Option<HeaderValue>, Reason> {
        let mut failed = None;
        for method in methods {
            match method {
                AuthMethod::SignedUrl => {
                    let Some(urls) = &self.signed else { continue };
                    match urls.check(req.uri.path(), req.uri.query(), upstream_query, unix_now()) {
                        Ok(()) => return Ok(None),
                        Err(e) => failed = failed.or(Reason::of_url(e)),
                    }
                }
                AuthMethod::Jwt => {
                    let (Some(jwt), Some(token)) = (&self.jwt, admin::bearer(req)) else {
                        continue;
                    };
                    let verified = std::str::from_utf8(token)
                        .map_err(|_| TokenError::Invalid)
                        .and_then(|t| jwt.verify(t, unix_now()));
                    match verified {
                        Ok(subject) => return Ok(subject),
                        Err(e) => failed = failed.or(Some(Reason::of_token(e))),
                    }
                }
            }
        }
        Err(failed.unwrap_or(Reason::MissingCredentials))
    }

    async fn preflight(
        &self,
        session: &mut Session,
        r: &mut RequestRef<'_>,
        cors: &Cors,
    ) -> pingora::Result<bool> {
        let req = session.req_header();
        let is_preflight = req.headers.contains_key(http::header::ORIGIN)
            && req.headers.contains_key("access-control-request-method");
        if !is_preflight {
            errors::respond(session, errors::METHOD_NOT_ALLOWED, r.request_id).await?;
            return Ok(true);
        }
        match cors.preflight(req) {
            Some(mut h) => {
                crate::headers::stamp(&mut h, r.request_id);
                session.write_response_header(Box::new(h), true).await?;
                Ok(true)
            }
            None => self.refuse(session, r, Reason::CorsRefused, None).await,
        }
    }

    /// Answers a refusal: the JSON body, `WWW-Authenticate` on 401 where tokens are
    /// accepted, `Retry-After` on 429, the CORS headers for an allowed origin.
    async fn refuse(
        &self,
        session: &mut Session,
        r: &mut RequestRef<'_>,
        reason: Reason,
        mut retry_after: Option<std::time::Duration>,
    ) -> pingora::Result<bool> {
        let rules = self.routes.get(r.route);
        // A refusal costs a token under `counts: upstream` too (under `all` the request was
        // charged before its credentials were looked at): otherwise a client could try
        // credentials, or make the gateway verify signatures, without limit. Once the bucket
        // is empty the answer is 429.
        let mut reason = reason;
        if let (false, Some((limiter, Counts::Upstream))) = (
            reason == Reason::RateLimited,
            rules.and_then(|rules| rules.limit.as_ref()),
        ) {
            if let Err(wait) = limiter.check(self.client(session, r.state)) {
                reason = Reason::RateLimited;
                retry_after = Some(wait);
            }
        }
        r.state.refused = Some(reason);
        let reject = reason.reject();
        let mut extra: Vec<(HeaderName, HeaderValue)> = Vec::new();
        if reject.status == 401 && rules.is_some_and(|rules| rules.auth.contains(&AuthMethod::Jwt)) {
            let challenge = match reason {
                Reason::MissingCredentials => "Bearer realm=\"asset-gateway\"",
                _ => "Bearer realm=\"asset-gateway\", error=\"invalid_token\"",
            };
            extra.push((WWW_AUTHENTICATE, HeaderValue::from_static(challenge)));
        }
        if let Some(wait) = retry_after {
            // Whole seconds, rounded up: a client retrying then finds a token.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            extra.push((RETRY_AFTER, HeaderValue::from(secs.max(1))));
        }
        if let Some(origin) = &r.state.cors_origin {
            extra.extend(cors::error_headers(origin));
        }
        errors::respond_with(session, reject, r.request_id, &extra).await?;
        Ok(true)
    }
}

/// The upstream target without the signature's parameters (so neither the upstream nor the
/// cache key sees them: one cached object however many signatures).
fn strip_signature(uri: &mut http::Uri) {
    let Some(query) = uri.query() else { return };
    let stripped = match signed_url::strip(query) {
        Some(std::borrow::Cow::Borrowed(_)) => return,
        Some(q) => format!("{}?{q}", uri.path()),
        None => uri.path().to_string(),
    };
    if let Ok(new) = http::Uri::try_from(stripped) {
        *uri = new;
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
