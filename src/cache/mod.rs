//! The response cache: a streaming, coalescing memory tier and an optional disk tier behind
//! Pingora's cache hooks.
//!
//! - `storage`: [`MemStorage`], the pingora-cache `Storage` the hooks see, over
//! - `index`: the memory tier's index, its byte bound and the admission of fills;
//! - `fill`: the fill protocol (a body readers follow while it arrives, its writer, the #932
//!   guard) and `reader`, its reader;
//! - `disk`: the disk tier (files with checksums, written while streaming, re-indexed at
//!   start-up);
//! - `policy`: pure decisions (key, cacheability, stale windows, `Cache-Status`);
//! - `keying`: what a cached route forwards upstream and keys on (headers, `Accept`);
//! - `pass`: hit-for-pass, the keys whose answer could not be stored, which skip the lock;
//! - `lock`: Pingora's cache lock, made to notice a fill registered between a request's
//!   lookup and its lock, and to release the waiters of a failed fill one at a time.
//!
//! [`Cache`] is built once at start-up and leaked (Pingora wants `'static` handles); the
//! `ProxyHttp` hooks in `proxy` call the methods here and keep [`RequestCache`] in the
//! request context.

pub(crate) mod disk;
mod fill;
mod index;
pub(crate) mod keying;
mod lock;
mod pass;
pub(crate) mod policy;
mod reader;
pub(crate) mod slice;
pub(crate) mod storage;

use crate::config::CacheSettings;
use crate::metrics::CacheMetrics;
pub(crate) use keying::Keying;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{
    CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HitHandler, HttpCache, NoCacheReason,
    RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use policy::Outcome;
use std::time::{Duration, SystemTime};
pub(crate) use storage::MemStorage;
use storage::{Admission, Admitted};

/// How many times a waiter may look up again after waiting on the lock (see `enable`).
const LOCK_RETRIES: usize = 256;

pub(crate) struct Cache {
    pub(crate) storage: &'static MemStorage,
    lock: &'static CacheKeyLockImpl,
    /// Hit-for-pass: keys whose last answer could not be stored skip the lock.
    pass: &'static pass::HitForPass,
    lock_timeout: Duration,
    /// The largest body stored: `max_object_size`, and never more than the larger tier holds
    /// (a fill too large for memory goes to disk only).
    store_limit: usize,
    pub(crate) metrics: &'static CacheMetrics,
    /// `slice`: the size of the pieces large objects are fetched and stored in.
    pub(crate) slice: Option<u64>,
    /// The keys whose objects are not sliceable (see `slice`).
    pub(crate) whole: slice::Whole,
}

/// A cached route: what it forwards and keys on, and its lookup counters.
pub(crate) struct CachedRoute {
    pub(crate) keying: Keying,
    pub(crate) lookups: crate::metrics::RouteLookups,
}

impl CachedRoute {
    /// `subject`: the header in which a verified token's `sub` goes upstream on this route
    /// (`auth.jwt.subject_header`), forwarded and keyed like a listed header.
    pub(crate) fn new(
        cache: &Cache,
        r: &crate::config::Route,
        subject: Option<&http::HeaderName>,
    ) -> CachedRoute {
        CachedRoute {
            keying: Keying::new(&r.forward_headers, subject, &r.vary_accept),
            lookups: cache.metrics.route_lookups(&r.template),
        }
    }
}

/// What the cache did for one request (in the request context).
#[derive(Default)]
pub(crate) struct RequestCache {
    /// `request_cache_filter` turned the cache on for this request.
    pub(crate) enabled: bool,
    /// The hit handler follows another request's fill in progress.
    pub(crate) joined_fill: bool,
    /// Seconds of freshness left of the object found (negative: stale).
    pub(crate) ttl: Option<i64>,
    /// `response_cache_filter` accepted the upstream response: from here on the request must
    /// not be retried (a second response head would meet the miss handler already set, which
    /// Pingora answers with a panic).
    pub(crate) storing: bool,
    /// The lookup found the URL's object, but for other values of the headers its `Vary`
    /// names (RFC 9211 `fwd=vary-miss`).
    pub(crate) vary_miss: bool,
    /// The status of the upstream response header (a 304 is a revalidation).
    upstream_status: Option<u16>,
    /// The disk file of a response too large for memory, created before it is admitted.
    prepared: Option<disk::Prepared>,
    /// A stale object is served (`should_serve_stale` said yes).
    stale: Option<Stale>,
    /// The `X-Forwarded-Proto` the upstream gets (what an origin's `Vary` on it keys on).
    pub(crate) proto: &'static str,
    /// This request is the subrequest of one slice (see `slice`), and where it tells its
    /// parent what the cache did.
    pub(crate) slice: Option<slice::Slice>,
    pub(crate) slice_report: Option<std::sync::Arc<slice::Report>>,
    /// This request was answered from slices: what the cache did for them.
    pub(crate) sliced: Option<std::sync::Arc<slice::Report>>,
}

#[derive(Debug, Clone, Copy)]
enum Stale {
    WhileRevalidate,
    IfError(Option<u16>),
}

impl Cache {
    /// Builds the cache from its settings; the handles live for the whole process.
    pub(crate) fn build(s: &CacheSettings) -> Result<&'static Cache, String> {
        let metrics = CacheMetrics::get()?;
        policy::set_ttls(s.default_ttl, s.negative_ttl);
        policy::set_stale(s.stale_while_revalidate, s.stale_if_error);
        let disk = match &s.disk {
            Some(d) => Some(&*Box::leak(Box::new(disk::DiskStore::open(
                &d.path, d.size, metrics,
            )?))),
            None => None,
        };
        let storage: &'static MemStorage = Box::leak(Box::new(MemStorage::new(s.memory, metrics, disk)));
        // The lock's age timeout: how long a writer may hold it before waiters compete again.
        // With a streaming storage the writer releases it as soon as the response header is
        // stored, so it covers the time to the origin's header only.
        let lock: &'static CacheKeyLockImpl =
            Box::leak(Box::new(lock::FillAwareLock::new(s.lock_timeout, storage)));
        Ok(Box::leak(Box::new(Cache {
            storage,
            lock,
            pass: Box::leak(Box::new(pass::HitForPass::new(s.uncacheable_ttl))),
            lock_timeout: s.lock_timeout,
            store_limit: s.max_object_size.min(
                s.disk
                    .as_ref()
                    .map_or(s.memory, |d| s.memory.max(d.size as usize)),
            ),
            metrics,
            slice: s.slice.map(|n| n as u64),
            whole: slice::Whole::default(),
        })))
    }

    /// `request_cache_filter`: turns the cache on, with the lock, for a request already
    /// admitted (routing, method and head checks answered before any cache work).
    pub(crate) fn enable(&'static self, session: &mut Session, rc: &mut RequestCache) {
        let mut overrides = CacheOptionOverrides::default();
        // Waiters give up after `lock_timeout` in all and go upstream uncached (Pingora's
        // default: no budget of their own, only the writer's age timeout ends a wait).
        overrides.wait_timeout = Some(self.lock_timeout);
        // Pingora lets a waiter look up again twice, then sends it upstream uncached. The
        // waiters of a 5xx that cannot be stored take turns on the lock (one origin request
        // at a time, see `lock`), which costs each waiter a retry per turn before it: with 2,
        // all but the first three of a herd would then stampede the failing origin together.
        // `wait_timeout` (cumulative) still bounds the whole wait.
        overrides.max_lock_retries = Some(LOCK_RETRIES);
        // The predictor is hit-for-pass: Pingora asks it before each lookup and bypasses the
        // cache (lock included) for a key it remembers as uncacheable.
        session.cache.enable(
            self.storage,
            None,
            Some(self.pass),
            Some(self.lock),
            Some(overrides),
        );
        // The fill runs in the task of the request that started it. Without Pingora's
        // proxy-task API (off by default), that task waits on each write to its client, so a
        // client that reads slowly holds back the fill for every request following it. With
        // it, HTTP/1.1 writes are queued and the upstream keeps being read. HTTP/2 sessions
        // lack the API (a no-op here); there the client write timeout bounds the stall.
        session.set_proxy_tasks_enabled(true);
        rc.enabled = true;
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        rc.proto = if tls { "https" } else { "http" };
    }

    /// `cache_key_callback`, once the key is made: hit-for-pass's verdict for this request
    /// goes into the key, where Pingora's predictor call reads it (see `pass`).
    pub(crate) fn predict(
        &self,
        key: &mut pingora::cache::CacheKey,
        req: &RequestHeader,
        keying: &Keying,
        rc: &RequestCache,
    ) {
        if let Some(passing) = self
            .pass
            .check(key, |names| keying.variance_names(names, req, rc.proto))
        {
            key.extensions.insert(passing);
        }
    }

    /// `cache_hit_filter`: notes whether the hit follows a fill, and the freshness left.
    ///
    /// A stored error (a cold key's 5xx, kept [`policy::ERROR_TTL`]) is for the requests that
    /// were waiting on the lock for it: they share the answer they waited for. A request that
    /// arrives later never gets it (it may have come from another client's request); it waits
    /// until the error expires, then treats it as a miss: one such request goes upstream, the
    /// others wait on its lock and share that answer. So while the origin keeps failing it
    /// sees about one request per key per second, and every client gets an answer to a
    /// request made after it arrived.
    pub(crate) async fn on_hit(
        session: &Session,
        meta: &CacheMeta,
        handler: &HitHandler,
        is_fresh: bool,
        rc: &mut RequestCache,
    ) -> Option<ForcedFreshness> {
        // A slice stored under the asset's own key (slice 0) is not the object: a request
        // that does not go by slices fetches the object whole again.
        if rc.slice.is_none() && meta.response_header().headers.contains_key(slice::MARKER) {
            return Some(ForcedFreshness::ForceMiss);
        }
        let now = SystemTime::now();
        let until = meta.fresh_until();
        if is_fresh
            && meta.response_header().status.is_server_error()
            && session.cache.lock_duration().is_none()
        {
            if let Ok(left) = until.duration_since(now) {
                tokio::time::sleep(left.min(policy::ERROR_TTL)).await;
            }
            return Some(ForcedFreshness::ForceMiss);
        }
        rc.joined_fill = handler
            .as_any()
            .downcast_ref::<reader::Reader>()
            .is_some_and(|r| r.joined_fill);
        rc.ttl = Some(match until.duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        });
        None
    }

    /// `cache_vary_filter`: called on a lookup of the primary slot and again when a response
    /// is about to be stored (Pingora keys each variant by it).
    pub(crate) fn variance(
        meta: &CacheMeta,
        req: &RequestHeader,
        keying: &Keying,
        rc: &mut RequestCache,
    ) -> Option<HashBinary> {
        let v = keying.variance(meta.response_header(), req, rc.proto);
        if !rc.storing && v != meta.variance() {
            rc.vary_miss = true;
        }
        v
    }

    /// `upstream_response_filter`: a response too large for memory is only admitted with its
    /// disk file ready, so that file is created here (this hook may wait; the next may not). A
    /// full or failing disk then makes it stream through uncached, never held in memory.
    pub(crate) async fn prepare(&self, session: &Session, resp: &ResponseHeader, rc: &mut RequestCache) {
        rc.upstream_status = Some(resp.status.as_u16());
        let (Some(disk), true) = (self.storage.disk, rc.enabled && session.cache.enabled()) else {
            return;
        };
        let Some(len) = policy::content_length(resp) else {
            return;
        };
        if !self
            .storage
            .tier
            .too_large(slice::object_len(resp).unwrap_or(len))
        {
            return;
        }
        let Some(key) = session.cache.maybe_cache_key() else {
            return;
        };
        // A file created for a response that `cacheable` then refuses is deleted unused; this
        // only avoids the obvious cases.
        if !policy::may_store_large(resp, self.store_limit) {
            return;
        }
        let id = self.storage.next_id();
        rc.prepared = disk.prepare(key.combined_bin(), id, &key.user_tag, len).await;
    }

    /// `response_cache_filter`: whether the response is stored, and with what (memory
    /// reserved now, or the disk file prepared), or why not.
    pub(crate) fn cacheable(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        keying: &Keying,
        rc: &mut RequestCache,
    ) -> RespCacheable {
        let revalidating = session.cache.phase() == CachePhase::Stale;
        if revalidating && matches!(resp.status.as_u16(), 404 | 410) {
            // The asset is gone at the origin: it must not come back as stale later (stored,
            // the 404 replaces it anyway; with `no-store` it would not).
            if let Some(key) = session.cache.maybe_cache_key() {
                self.storage.remove_key(&key.combined_bin());
            }
        }
        // RFC 9111 3.5 applies when the origin saw the client's credentials: only when the
        // route forwards them.
        let authorization = keying.forwards(&http::header::AUTHORIZATION)
            && session
                .req_header()
                .headers
                .contains_key(http::header::AUTHORIZATION);
        // The status of the (stale) object the lookup found: a 5xx never replaces a good one.
        let found = session
            .cache
            .maybe_cache_meta()
            .map(|m| m.response_header().status);
        let mut r = policy::cacheable(resp, authorization, self.store_limit, found);
        // The origin answered a later slice's Range with the whole object: not stored under
        // that slice's key (the parent sends the asset the ordinary way from now on).
        if rc.slice.is_some_and(|s| s.index > 0) && !resp.headers.contains_key(slice::MARKER) {
            r = RespCacheable::Uncacheable(NoCacheReason::Custom("slice-whole"));
        }
        // A 304 refreshes a stored object: nothing new is held.
        let refresh = revalidating && rc.upstream_status == Some(304);
        if let (RespCacheable::Cacheable(meta), false) = (&mut r, refresh) {
            let len = policy::content_length(resp).unwrap_or(0);
            let admitted = if self
                .storage
                .tier
                .too_large(slice::object_len(resp).unwrap_or(len))
            {
                rc.prepared.take().map(Admitted::Disk).ok_or("disk-unavailable")
            } else {
                // Fills in progress count against `memory`: beyond it, a response streams
                // through uncached rather than letting a herd of distinct cold assets grow
                // memory unbounded.
                self.storage
                    .tier
                    .reserve(len)
                    .map(Admitted::Memory)
                    .ok_or("memory-full")
            };
            match admitted {
                Ok(a) => {
                    meta.extensions_mut().insert(Admission::new(a));
                }
                Err(why) => r = RespCacheable::Uncacheable(NoCacheReason::Custom(why)),
            }
        }
        rc.storing |= r.is_cacheable();
        // Hit-for-pass remembers a lasting refusal, for this request's variant, when the
        // lookup found nothing of the URL: not after a `Vary` miss (another variant is stored,
        // and one client's unstorable variant must not turn off the others' hits), and not
        // for a bypassed request (the pass it followed runs its course).
        if let RespCacheable::Uncacheable(reason) = &r {
            if !rc.vary_miss && !session.cache.bypassing() {
                let req = session.req_header();
                self.pass.mark(
                    session.cache.cache_key(),
                    policy::vary_names(resp).collect(),
                    keying.variance(resp, req, rc.proto),
                    *reason,
                );
            }
        }
        r
    }

    /// `should_serve_stale`: Pingora asks only for a stale object within the window the
    /// object allows (the origin's directives, else `stale_while_revalidate` or
    /// `stale_if_error`); `error` is `None` for stale-while-revalidate.
    pub(crate) fn should_serve_stale(rc: &mut RequestCache, error: Option<&pingora::Error>) -> bool {
        let stale = match error {
            // A slice is revalidated by its own request: Pingora's background revalidation
            // would run without the slice (its key, its Range).
            None if rc.slice.is_some() => return false,
            None => Stale::WhileRevalidate,
            Some(e) if policy::is_origin_failure(e) => Stale::IfError(match e.etype() {
                pingora::ErrorType::HTTPStatus(s) => Some(*s),
                _ => None,
            }),
            Some(_) => return false,
        };
        rc.stale = Some(stale);
        true
    }

    /// Purges every asset of the route `template` (memory, disk, fills); returns how many
    /// assets had something stored. Works on asset tags, whatever keys each asset has.
    pub(crate) async fn purge_route(&self, template: &str) -> usize {
        let prefix = policy::asset_tag(template, "");
        let mut purged = 0;
        for tag in self.storage.assets_with_prefix(&prefix) {
            purged += usize::from(self.storage.purge_asset(&tag).await);
        }
        purged
    }

    /// The outcome so far (`None`: the cache was not used for this request).
    /// The `Cache-Status` of a response the gateway makes itself because no usable answer
    /// came (its 502 or 504): nothing was stored, whatever phase the cache was in.
    pub(crate) fn status_without_answer(cache: &HttpCache, rc: &RequestCache) -> Option<http::HeaderValue> {
        let value = match Cache::outcome(cache, rc)? {
            // A stale object was found but could not be served (past its stale-if-error).
            Outcome::StaleStored => policy::stale_without_answer(),
            Outcome::MissStored => {
                Outcome::Miss(pingora::cache::NoCacheReason::UpstreamError).header(rc.ttl, rc.vary_miss)
            }
            other => other.header(rc.ttl, rc.vary_miss),
        };
        http::HeaderValue::try_from(value).ok()
    }

    pub(crate) fn outcome(cache: &HttpCache, rc: &RequestCache) -> Option<Outcome> {
        if let Some(r) = &rc.sliced {
            return r.get();
        }
        if !rc.enabled {
            return None;
        }
        // The predictor bypassed the lookup: hit-for-pass (what the response then did decides
        // the rest: stored again, or not stored for the reason given).
        let passed = cache.predicted_uncacheable_reason().is_some();
        Some(match cache.phase() {
            CachePhase::Disabled(reason) if passed => Outcome::Pass(reason),
            CachePhase::Bypass if passed => Outcome::Pass(pingora::cache::NoCacheReason::Deferred),
            CachePhase::Hit if rc.joined_fill => Outcome::Collapsed,
            CachePhase::Hit => Outcome::Hit,
            CachePhase::StaleUpdating => Outcome::StaleWhileRevalidate,
            CachePhase::Stale => match rc.stale {
                Some(Stale::IfError(status)) => Outcome::StaleIfError(status),
                _ => Outcome::StaleStored,
            },
            CachePhase::Miss => Outcome::MissStored,
            CachePhase::Expired => Outcome::StaleStored,
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated,
            CachePhase::Disabled(reason) => Outcome::Miss(reason),
            CachePhase::Uninit | CachePhase::CacheKey | CachePhase::Bypass => {
                Outcome::Miss(pingora::cache::NoCacheReason::Deferred)
            }
        })
    }
}
