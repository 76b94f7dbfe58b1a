//! Pure cache decisions: the key of a request, whether a response may be stored and for how
//! long, and the `Cache-Status` value (RFC 9211) of an outcome. No I/O, no state.

use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::resp_cacheable;
use pingora::cache::{CacheKey, CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// The `Cache-Status` cache name.
const NAME: &str = "asset-gateway";

/// `gateway.cache.default_ttl` and `negative_ttl`. `CacheMetaDefaults` takes a plain `fn`
/// pointer, so the configured values reach it through this static, set once at start-up.
static TTLS: OnceLock<(Duration, Duration)> = OnceLock::new();

/// How long a 5xx of a cold key is stored: the requests waiting on the lock share it, and the
/// origin sees about one request per key per second while it keeps failing.
pub(crate) const ERROR_TTL: Duration = Duration::from_secs(1);

/// `default_ttl` (200) and `negative_ttl` (404, 410).
pub(crate) fn set_ttls(default: Duration, negative: Duration) {
    // A second gateway in one process (tests) keeps the first values.
    let _ = TTLS.set((default, negative));
}

/// Freshness of a response without explicit freshness (`max-age`, `s-maxage`, `Expires`):
/// `default_ttl` for a 200, `negative_ttl` for a 404 or 410; other statuses are never stored
/// by default (and `cacheable` refuses them anyway).
fn default_fresh(status: http::StatusCode) -> Option<Duration> {
    let (default, negative) = TTLS.get().copied()?;
    match status {
        http::StatusCode::OK => Some(default),
        http::StatusCode::NOT_FOUND | http::StatusCode::GONE => Some(negative),
        _ => None,
    }
}

/// `gateway.cache.stale_while_revalidate` and `stale_if_error`, in seconds (the origin's own
/// directives take precedence), set once at start-up like `TTLS`.
static STALE: OnceLock<(u32, u32)> = OnceLock::new();

pub(crate) fn set_stale(while_revalidate: Duration, if_error: Duration) {
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let _ = STALE.set((secs(while_revalidate), secs(if_error)));
}

/// The configured stale windows apply to a 200; a 404 or 410 (kept `negative_ttl`) is
/// served stale only if the origin says so.
fn defaults(status: http::StatusCode) -> CacheMetaDefaults {
    let (swr, sie) = match status {
        http::StatusCode::OK => STALE.get().copied().unwrap_or((0, 0)),
        _ => (0, 0),
    };
    CacheMetaDefaults::new(default_fresh, swr, sie)
}

/// The key of an asset: route template and asset id, framed unambiguously (a NUL cannot occur
/// in either), plus the query string when the route forwards it (it may select a different
/// rendition). The user tag names the asset itself, so a purge finds every key of it.
pub(crate) fn key(route: &str, id: &str, forwarded_query: Option<&str>) -> CacheKey {
    let mut primary = String::with_capacity(route.len() + id.len() + 2);
    primary.push_str(route);
    primary.push('\0');
    primary.push_str(id);
    if let Some(q) = forwarded_query {
        primary.push('\0');
        primary.push_str(q);
    }
    CacheKey::new(primary, asset_tag(route, id))
}

/// The key of one slice of an asset (`cache::slice`): slice 0 has the asset's own key (an
/// object found not sliceable is stored there whole); the others add the slice size and index.
pub(crate) fn slice_key(
    route: &str,
    id: &str,
    forwarded_query: Option<&str>,
    s: super::slice::Slice,
) -> CacheKey {
    let key = key(route, id, forwarded_query);
    if s.index == 0 {
        return key;
    }
    let mut primary = key.primary_key_str().unwrap_or_default().to_owned();
    primary.push_str(&format!("\0slice\0{}\0{}", s.size, s.index));
    CacheKey::new(primary, asset_tag(route, id))
}

/// What names one asset across keys (see [`key`]).
pub(crate) fn asset_tag(route: &str, id: &str) -> String {
    let mut tag = String::with_capacity(route.len() + id.len() + 1);
    tag.push_str(route);
    tag.push('\0');
    tag.push_str(id);
    tag
}

pub(crate) fn content_length(resp: &ResponseHeader) -> Option<usize> {
    resp.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Whether a response may be stored, and its freshness (RFC 9111 through Pingora's
/// `resp_cacheable`: `no-store` and `private` refuse, `Authorization` (when forwarded) needs
/// `public` or `s-maxage`, then `s-maxage`, `max-age`, `Expires`, else `default_ttl`, or
/// `negative_ttl` for 404 and 410). On top of it:
/// - only 200, 404 and 410 (and 5xx, below), with a Content-Length of at most `limit`: a body
///   without a length could only be told complete from truncated by how the connection
///   ended, and Range on a hit needs it;
/// - no `Set-Cookie` (one client's cookie must not reach another);
/// - no `Vary: *` (every request may differ), nor `Vary` on `X-Forwarded-For` or
///   `X-Request-Id` (one object per client or per request); other `Vary` headers are honoured
///   by the route's keying;
/// - a 5xx is stored for [`ERROR_TTL`] whatever its freshness says (still not with
///   `no-store` or `private`), so the requests waiting for a cold key share it, and only
///   when the lookup found no object or an error (`found`: the status of the object found,
///   stale): an error never replaces a good object.
pub(crate) fn cacheable(
    resp: &ResponseHeader,
    authorization: bool,
    limit: usize,
    found: Option<http::StatusCode>,
) -> RespCacheable {
    use RespCacheable::Uncacheable;
    let error = resp.status.is_server_error();
    let refused = |why| match error {
        // Whatever made the error unstorable, it says nothing lasting about the key.
        true => Uncacheable(NoCacheReason::Custom(UPSTREAM_5XX)),
        false => Uncacheable(why),
    };
    if error && found.is_some_and(|s| !s.is_server_error()) {
        return refused(NoCacheReason::Custom("status"));
    }
    if !error && !matches!(resp.status.as_u16(), 200 | 404 | 410) {
        return Uncacheable(NoCacheReason::Custom("status"));
    }
    match content_length(resp) {
        None => return refused(NoCacheReason::Custom("no-content-length")),
        Some(n) if n > limit => return refused(NoCacheReason::ResponseTooLarge),
        Some(_) => {}
    }
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return refused(NoCacheReason::Custom("set-cookie"));
    }
    // `Vary: *`, or a header that is per client or per request (the gateway's
    // `X-Forwarded-For` and `X-Request-Id`): keying on it would store one object per client.
    if vary_names(resp).any(|n| matches!(n.as_str(), "*" | "x-forwarded-for" | "x-request-id")) {
        return refused(NoCacheReason::Custom("vary"));
    }
    let cc = CacheControl::from_resp_headers(resp);
    if !error {
        let mut r = resp_cacheable(cc.as_ref(), resp.clone(), authorization, &defaults(resp.status));
        // Pingora already refuses stale for `must-revalidate`, `proxy-revalidate` and
        // `s-maxage`; `no-cache` means every use is validated first, so never stale either.
        if let (RespCacheable::Cacheable(meta), Some(cc)) = (&mut r, &cc) {
            if cc.no_cache() {
                meta.disable_serve_stale();
            }
        }
        return r;
    }
    let forbidden = cc.as_ref().is_some_and(|cc| cc.is_cacheable() == Cacheable::No)
        || (authorization && !cc.as_ref().is_some_and(|cc| cc.allow_caching_authorized_req()));
    if forbidden {
        return refused(NoCacheReason::OriginNotCache);
    }
    let now = SystemTime::now();
    // Never served stale: it is an error, kept a second only for the requests waiting on it.
    RespCacheable::Cacheable(CacheMeta::new(now + ERROR_TTL, now, 0, 0, resp.clone()))
}

/// Why a 5xx was not stored (its waiters then take turns on the lock, and the key is not
/// remembered as uncacheable).
pub(crate) const UPSTREAM_5XX: &str = "upstream-5xx";

/// Whether a `NoCacheReason::Custom` reason of [`cacheable`] lasts (the same answer would
/// come again: the key passes for `uncacheable_ttl`) rather than being about this moment.
pub(crate) fn is_lasting(why: &str) -> bool {
    matches!(why, "status" | "no-content-length" | "set-cookie" | "vary")
}

/// Whether a 200 too large for memory may be stored at all (before its disk file is created
/// for it: `cacheable` decides, this only skips the obvious refusals).
pub(crate) fn may_store_large(resp: &ResponseHeader, limit: usize) -> bool {
    resp.status == http::StatusCode::OK
        && content_length(resp).is_some_and(|n| n <= limit)
        && !CacheControl::from_resp_headers(resp).is_some_and(|cc| cc.is_cacheable() == Cacheable::No)
}

/// Whether an upstream failure lets a stale object be served (`stale-if-error`): a 5xx, a
/// connection refused or failing before a response, a timeout, or no usable peer. A 404 or a
/// 410 is an answer, not a failure; nor is anything the client did.
pub(crate) fn is_origin_failure(e: &pingora::Error) -> bool {
    use pingora::ErrorType::*;
    if *e.esource() == pingora::ErrorSource::Downstream {
        return false;
    }
    match e.etype() {
        HTTPStatus(code) => (500..600).contains(code),
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
        | TLSHandshakeFailure | TLSHandshakeTimedout | HandshakeError | ReadTimedout | WriteTimedout
        | ReadError | WriteError | ConnectionClosed => true,
        t => *t == crate::errors::NO_PEER_ERROR,
    }
}

/// The header names a response's `Vary` lists, lower-cased.
pub(crate) fn vary_names(resp: &ResponseHeader) -> impl Iterator<Item = String> + '_ {
    resp.headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
}

/// What the cache did for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Served from a stored object.
    Hit,
    /// Served from another request's fill in progress (it waited on the cache lock, or came
    /// after the header): the origin was asked once for all of them.
    Collapsed,
    /// Went to the origin; the response is being stored.
    MissStored,
    /// Went to the origin; not stored, for this reason.
    Miss(NoCacheReason),
    /// Skipped the cache, lock included (hit-for-pass: the key's last answer could not be
    /// stored); went to the origin, not stored for this reason.
    Pass(NoCacheReason),
    /// A stale object was found; went to the origin; the new response is being stored.
    StaleStored,
    /// A stale object was revalidated by a 304 and served.
    Revalidated,
    /// A stale object within its stale-while-revalidate window, served at once while one
    /// background request revalidates it.
    StaleWhileRevalidate,
    /// A stale object within its stale-if-error window, served because the origin failed
    /// (with this status, when it answered).
    StaleIfError(Option<u16>),
}

impl Outcome {
    /// The `Cache-Status` value. `vary_miss`: an object for the URL was found, but for other
    /// values of the headers its `Vary` names.
    pub(crate) fn header(self, ttl: Option<i64>, vary_miss: bool) -> String {
        let miss = if vary_miss { "vary-miss" } else { "uri-miss" };
        match self {
            // The common answer, built without `format!` (a hit's largest own cost after it).
            Outcome::Hit => {
                let mut v = String::with_capacity(40);
                v.push_str(NAME);
                v.push_str("; hit");
                if let Some(t) = ttl {
                    v.push_str("; ttl=");
                    v.push_str(itoa::Buffer::new().format(t));
                }
                v
            }
            Outcome::Collapsed => format!("{NAME}; fwd={miss}; collapsed"),
            Outcome::MissStored => format!("{NAME}; fwd={miss}; stored"),
            Outcome::Miss(reason) => format!("{NAME}; fwd={miss}; detail={}", detail(reason)),
            Outcome::Pass(reason) => format!("{NAME}; fwd=bypass; detail={}", detail(reason)),
            Outcome::StaleStored => format!("{NAME}; fwd=stale; stored"),
            Outcome::Revalidated => format!("{NAME}; fwd=stale; fwd-status=304"),
            Outcome::StaleWhileRevalidate => {
                format!(
                    "{NAME}; hit; ttl={}; detail=stale-while-revalidate",
                    ttl.unwrap_or(0)
                )
            }
            Outcome::StaleIfError(status) => {
                let fwd_status = status.map(|s| format!("; fwd-status={s}")).unwrap_or_default();
                format!(
                    "{NAME}; fwd=stale{fwd_status}; ttl={}; detail=stale-if-error",
                    ttl.unwrap_or(0)
                )
            }
        }
    }

    /// The access log's `cache` field.
    pub(crate) fn log_word(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Collapsed => "collapsed",
            Outcome::MissStored => "miss-stored",
            Outcome::Miss(_) => "miss",
            Outcome::Pass(_) => "pass",
            Outcome::StaleStored => "stale-stored",
            Outcome::Revalidated => "revalidated",
            Outcome::StaleWhileRevalidate => "stale-while-revalidate",
            Outcome::StaleIfError(_) => "stale-if-error",
        }
    }

    /// The `result` label of `asset_gateway_cache_lookups_total`.
    pub(crate) fn lookup_result(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Collapsed => "coalesced",
            Outcome::MissStored | Outcome::Miss(_) => "miss",
            Outcome::StaleStored | Outcome::Revalidated => "stale",
            Outcome::StaleWhileRevalidate => "stale_while_revalidate",
            Outcome::StaleIfError(_) => "stale_if_error",
            Outcome::Pass(_) => "pass",
        }
    }
}

/// The `Cache-Status` of the gateway's own error when a stale object was found but could not
/// be served (past its stale-if-error window).
pub(crate) fn stale_without_answer() -> String {
    format!("{NAME}; fwd=stale; detail=upstream-error")
}

/// A token for `detail=` (RFC 9211 allows a token or a string).
fn detail(reason: NoCacheReason) -> &'static str {
    match reason {
        NoCacheReason::OriginNotCache => "no-store",
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => "too-large",
        NoCacheReason::CacheLockTimeout => "lock-timeout",
        NoCacheReason::CacheLockGiveUp => "lock-give-up",
        NoCacheReason::CacheLockRetryLimit => "lock-retry-limit",
        NoCacheReason::UpstreamError => "upstream-error",
        NoCacheReason::StorageError | NoCacheReason::InternalError => "cache-error",
        NoCacheReason::Custom(s) => s,
        _ => "not-stored",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn reason(r: RespCacheable) -> Option<NoCacheReason> {
        match r {
            RespCacheable::Cacheable(_) => None,
            RespCacheable::Uncacheable(r) => Some(r),
        }
    }

    #[test]
    fn only_plain_200s_with_a_length_are_stored() {
        set_ttls(Duration::from_secs(3600), Duration::from_secs(10));
        let ok = resp(200, &[("content-length", "10")]);
        match cacheable(&ok, false, 100, None) {
            RespCacheable::Cacheable(meta) => assert!(meta.fresh_sec() > 3000),
            other => panic!("{other:?}"),
        }
        let cases: [(ResponseHeader, NoCacheReason); 9] = [
            (resp(200, &[]), NoCacheReason::Custom("no-content-length")),
            (
                resp(200, &[("content-length", "101")]),
                NoCacheReason::ResponseTooLarge,
            ),
            (
                resp(403, &[("content-length", "1")]),
                NoCacheReason::Custom("status"),
            ),
            (
                resp(200, &[("content-length", "1"), ("cache-control", "no-store")]),
                NoCacheReason::OriginNotCache,
            ),
            (
                resp(
                    200,
                    &[("content-length", "1"), ("cache-control", "private, max-age=60")],
                ),
                NoCacheReason::OriginNotCache,
            ),
            (
                resp(200, &[("content-length", "1"), ("set-cookie", "a=b")]),
                NoCacheReason::Custom("set-cookie"),
            ),
            (
                resp(200, &[("content-length", "1"), ("vary", "accept, *")]),
                NoCacheReason::Custom("vary"),
            ),
            (
                resp(200, &[("content-length", "1"), ("vary", "X-Forwarded-For")]),
                NoCacheReason::Custom("vary"),
            ),
            (
                resp(
                    200,
                    &[
                        ("content-length", "1"),
                        ("vary", "accept"),
                        ("vary", "x-request-id"),
                    ],
                ),
                NoCacheReason::Custom("vary"),
            ),
        ];
        for (r, want) in cases {
            assert_eq!(reason(cacheable(&r, false, 100, None)), Some(want), "{r:?}");
        }
        // Authorization needs an explicit permission.
        assert_eq!(
            reason(cacheable(&ok, true, 100, None)),
            Some(NoCacheReason::OriginNotCache)
        );
        let public = resp(
            200,
            &[("content-length", "1"), ("cache-control", "public, max-age=5")],
        );
        assert_eq!(reason(cacheable(&public, true, 100, None)), None);
    }

    #[test]
    fn explicit_freshness_wins_over_the_default() {
        set_ttls(Duration::from_secs(3600), Duration::from_secs(10));
        let r = resp(200, &[("content-length", "1"), ("cache-control", "max-age=5")]);
        match cacheable(&r, false, 100, None) {
            RespCacheable::Cacheable(meta) => assert!(meta.fresh_sec() <= 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_frame_their_parts() {
        use pingora::cache::key::CacheHashKey;
        let a = key("/a/{id}", "x", None);
        let b = key("/a/{id}", "x", Some(""));
        assert_ne!(a.primary_bin(), b.primary_bin());
        assert_eq!(a.user_tag, b.user_tag);
        assert_ne!(
            key("/a/{id}", "x", None).primary_bin(),
            key("/a/{id}x", "", None).primary_bin()
        );
    }

    #[test]
    fn cache_status_values() {
        assert_eq!(Outcome::Hit.header(Some(42), false), "asset-gateway; hit; ttl=42");
        assert_eq!(Outcome::Hit.header(Some(-3), false), "asset-gateway; hit; ttl=-3");
        assert_eq!(Outcome::Hit.header(None, false), "asset-gateway; hit");
        assert_eq!(
            Outcome::MissStored.header(None, false),
            "asset-gateway; fwd=uri-miss; stored"
        );
        assert_eq!(
            Outcome::MissStored.header(None, true),
            "asset-gateway; fwd=vary-miss; stored"
        );
        assert_eq!(
            Outcome::Miss(NoCacheReason::OriginNotCache).header(None, false),
            "asset-gateway; fwd=uri-miss; detail=no-store"
        );
        assert_eq!(
            Outcome::Collapsed.header(None, false),
            "asset-gateway; fwd=uri-miss; collapsed"
        );
        assert_eq!(
            Outcome::StaleWhileRevalidate.header(Some(-3), false),
            "asset-gateway; hit; ttl=-3; detail=stale-while-revalidate"
        );
        assert_eq!(
            Outcome::StaleIfError(Some(503)).header(Some(-40), false),
            "asset-gateway; fwd=stale; fwd-status=503; ttl=-40; detail=stale-if-error"
        );
        assert_eq!(
            Outcome::StaleIfError(None).header(Some(-40), false),
            "asset-gateway; fwd=stale; ttl=-40; detail=stale-if-error"
        );
    }

    #[test]
    fn stale_windows_follow_config_then_origin_and_never_for_no_cache() {
        set_ttls(Duration::from_secs(3600), Duration::from_secs(10));
        set_stale(Duration::from_secs(10), Duration::from_secs(3600));
        let windows = |cc: &str| match cacheable(
            &resp(200, &[("content-length", "1"), ("cache-control", cc)]),
            false,
            100,
            None,
        ) {
            RespCacheable::Cacheable(m) => (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            other => panic!("{other:?}"),
        };
        assert_eq!(windows("max-age=60"), (10, 3600));
        assert_eq!(
            windows("max-age=60, stale-while-revalidate=5, stale-if-error=30"),
            (5, 30)
        );
        assert_eq!(windows("max-age=60, must-revalidate"), (0, 0));
        assert_eq!(windows("no-cache"), (0, 0));
        // A 404 is kept `negative_ttl`, and served stale only if the origin says so.
        let not_found = |cc: &str| match cacheable(
            &resp(404, &[("content-length", "1"), ("cache-control", cc)]),
            false,
            100,
            None,
        ) {
            RespCacheable::Cacheable(m) => (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            other => panic!("{other:?}"),
        };
        assert_eq!(not_found("max-age=5"), (0, 0));
        assert_eq!(not_found("max-age=5, stale-if-error=30"), (0, 30));
    }

    #[test]
    fn only_origin_failures_serve_stale() {
        use pingora::{Error, ErrorSource, ErrorType};
        let up = |t: ErrorType| Error::create(t, ErrorSource::Upstream, None, None);
        assert!(is_origin_failure(&up(ErrorType::HTTPStatus(503))));
        assert!(is_origin_failure(&up(ErrorType::ConnectRefused)));
        assert!(is_origin_failure(&up(ErrorType::ReadTimedout)));
        assert!(is_origin_failure(&Error::new(crate::errors::NO_PEER_ERROR)));
        assert!(!is_origin_failure(&up(ErrorType::HTTPStatus(404))));
        assert!(!is_origin_failure(&up(ErrorType::InvalidHTTPHeader)));
        let down = Error::create(ErrorType::WriteError, ErrorSource::Downstream, None, None);
        assert!(!is_origin_failure(&down));
    }

    #[test]
    fn not_found_and_gone_are_stored_for_negative_ttl_unless_the_origin_says() {
        set_ttls(Duration::from_secs(3600), Duration::from_secs(10));
        for status in [404, 410] {
            match cacheable(&resp(status, &[("content-length", "9")]), false, 100, None) {
                RespCacheable::Cacheable(meta) => assert!((9..=10).contains(&meta.fresh_sec())),
                other => panic!("{status}: {other:?}"),
            }
            let explicit = resp(
                status,
                &[("content-length", "9"), ("cache-control", "max-age=300")],
            );
            match cacheable(&explicit, false, 100, None) {
                RespCacheable::Cacheable(meta) => assert!(meta.fresh_sec() > 200),
                other => panic!("{status}: {other:?}"),
            }
            let no_store = resp(status, &[("content-length", "9"), ("cache-control", "no-store")]);
            assert_eq!(
                reason(cacheable(&no_store, false, 100, None)),
                Some(NoCacheReason::OriginNotCache)
            );
        }
    }

    #[test]
    fn errors_are_stored_a_second_and_never_over_a_good_object() {
        use http::StatusCode;
        let err = resp(503, &[("content-length", "4"), ("cache-control", "max-age=600")]);
        match cacheable(&err, false, 100, None) {
            RespCacheable::Cacheable(meta) => assert!(meta.fresh_sec() <= 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cacheable(&err, false, 100, Some(StatusCode::SERVICE_UNAVAILABLE)),
            RespCacheable::Cacheable(_)
        ));
        let not_stored = Some(NoCacheReason::Custom(UPSTREAM_5XX));
        assert_eq!(
            reason(cacheable(&err, false, 100, Some(StatusCode::OK))),
            not_stored
        );
        for headers in [
            &[("cache-control", "no-store"), ("content-length", "4")][..],
            &[("content-length", "4"), ("set-cookie", "a=b")],
            &[("transfer-encoding", "chunked")],
        ] {
            assert_eq!(
                reason(cacheable(&resp(500, headers), false, 100, None)),
                not_stored
            );
        }
        assert!(!is_lasting(UPSTREAM_5XX) && !is_lasting("memory-full"));
        assert!(is_lasting("status") && is_lasting("set-cookie"));
    }
}
