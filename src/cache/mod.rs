//! The response cache: a streaming, coalescing memory tier and an optional disk tier behind
//! Pingora's cache hooks.
//!
//! - `storage`: [`MemStorage`], the pingora-cache `Storage` (fills readers can follow, the
//!   #932 guard, byte-bounded LRU), which falls through to and copies fills to
//! - `disk`: the disk tier (one file per object, written while streaming, byte-bounded LRU,
//!   re-indexed at start-up);
//! - `policy`: pure decisions (key, cacheability, `Cache-Status`);
//! - `keying`: what a cached route forwards upstream and keys on (headers, `Accept`);
//! - `pass`: hit-for-pass, the keys whose answer could not be stored, which skip the lock;
//! - `lock`: Pingora's cache lock, made to notice a fill registered between a request's
//!   lookup and its lock, and to release the waiters of a failed fill one at a time.
//!
//! [`Cache`] is built once at start-up and leaked (Pingora wants `'static` handles); the
//! `ProxyHttp` hooks in `proxy` call the methods here and keep [`RequestCache`] in the
//! request context.

pub(crate) mod disk;
pub(crate) mod keying;
mod lock;
mod pass;
pub(crate) mod policy;
pub(crate) mod storage;

use crate::config::CacheSettings;
use crate::metrics::CacheMetrics;
pub(crate) use keying::Keying;
use pingora::cache::key::HashBinary;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{CacheMeta, CacheOptionOverrides, CachePhase, HitHandler, HttpCache, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use policy::Outcome;
use std::time::{Duration, SystemTime};
pub(crate) use storage::MemStorage;

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
        let forward: Vec<http::HeaderName> = r.forward_headers.iter().chain(subject).cloned().collect();
        CachedRoute {
            keying: Keying::new(&forward, &r.vary_accept),
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
}

impl Cache {
    /// Builds the cache from its settings; the handles live for the whole process.
    pub(crate) fn build(s: &CacheSettings) -> Result<&'static Cache, String> {
        let metrics = CacheMetrics::get()?;
        policy::set_ttls(s.default_ttl, s.negative_ttl);
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
    }

    /// `cache_hit_filter`: notes whether the hit follows a fill, and the freshness left.
    pub(crate) fn on_hit(meta: &CacheMeta, handler: &HitHandler, rc: &mut RequestCache) {
        rc.joined_fill = handler
            .as_any()
            .downcast_ref::<storage::Reader>()
            .is_some_and(|r| r.joined_fill);
        let now = SystemTime::now();
        let until = meta.fresh_until();
        rc.ttl = Some(match until.duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        });
    }

    /// `cache_vary_filter`: called on a lookup of the primary slot and again when a response
    /// is about to be stored (Pingora keys each variant by it).
    pub(crate) fn variance(
        meta: &CacheMeta,
        req: &RequestHeader,
        keying: &Keying,
        rc: &mut RequestCache,
    ) -> Option<HashBinary> {
        let v = keying.variance(meta.response_header(), req);
        if !rc.storing && v != meta.variance() {
            rc.vary_miss = true;
        }
        v
    }

    /// `response_cache_filter`.
    pub(crate) fn cacheable(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        keying: &Keying,
        rc: &mut RequestCache,
    ) -> RespCacheable {
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
        // Fills in progress count against `memory`: beyond it, a response streams through
        // uncached rather than letting a herd of distinct cold assets grow memory unbounded.
        if r.is_cacheable() && !policy::content_length(resp).is_some_and(|len| self.storage.admits_fill(len))
        {
            r = RespCacheable::Uncacheable(pingora::cache::NoCacheReason::Custom("memory-full"));
        }
        rc.storing |= r.is_cacheable();
        r
    }

    /// Purges every asset of the route `template` (memory, disk, fills); returns how many
    /// assets had something stored. Works on asset tags, whatever keys each asset has.
    pub(crate) fn purge_route(&self, template: &str) -> usize {
        let prefix = policy::asset_tag(template, "");
        self.storage
            .assets_with_prefix(&prefix)
            .iter()
            .filter(|tag| self.storage.purge_asset(tag))
            .count()
    }

    /// The outcome so far (`None`: the cache was not used for this request).
    pub(crate) fn outcome(cache: &HttpCache, rc: &RequestCache) -> Option<Outcome> {
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
            CachePhase::Hit | CachePhase::StaleUpdating => Outcome::Hit,
            CachePhase::Miss => Outcome::MissStored,
            CachePhase::Stale | CachePhase::Expired => Outcome::StaleStored,
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated,
            CachePhase::Disabled(reason) => Outcome::Miss(reason),
            CachePhase::Uninit | CachePhase::CacheKey | CachePhase::Bypass => {
                Outcome::Miss(pingora::cache::NoCacheReason::Deferred)
            }
        })
    }
}
