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
//! - `lock`: Pingora's cache lock, made to notice a fill registered between a request's
//!   lookup and its lock.
//!
//! [`Cache`] is built once at start-up and leaked (Pingora wants `'static` handles); the
//! `ProxyHttp` hooks in `proxy` call the methods here and keep [`RequestCache`] in the
//! request context.

pub(crate) mod disk;
mod fill;
mod index;
mod lock;
pub(crate) mod policy;
mod reader;
pub(crate) mod storage;

use crate::config::CacheSettings;
use crate::metrics::CacheMetrics;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{CacheMeta, CacheOptionOverrides, CachePhase, HitHandler, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use policy::Outcome;
use std::time::{Duration, SystemTime};
pub(crate) use storage::MemStorage;
use storage::{Admission, Admitted};

pub(crate) struct Cache {
    pub(crate) storage: &'static MemStorage,
    lock: &'static CacheKeyLockImpl,
    lock_timeout: Duration,
    /// The largest body stored: `max_object_size`, and never more than the larger tier holds
    /// (a fill too large for memory goes to disk only).
    store_limit: usize,
    pub(crate) metrics: &'static CacheMetrics,
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
        policy::set_default_ttl(s.default_ttl);
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
        session
            .cache
            .enable(self.storage, None, None, Some(self.lock), Some(overrides));
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
            .downcast_ref::<reader::Reader>()
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
        rc: &mut RequestCache,
    ) -> Option<HashBinary> {
        let v = policy::variance(meta.response_header(), req);
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
        let Some(len) = policy::content_length(resp).filter(|l| self.storage.tier.too_large(*l)) else {
            return;
        };
        let Some(key) = session.cache.maybe_cache_key() else {
            return;
        };
        if !policy::cacheable(resp, authorization(session), self.store_limit).is_cacheable() {
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
        rc: &mut RequestCache,
    ) -> RespCacheable {
        let revalidating = session.cache.phase() == CachePhase::Stale;
        if revalidating && matches!(resp.status.as_u16(), 404 | 410) {
            // The asset is gone at the origin: it must not come back as stale later.
            if let Some(key) = session.cache.maybe_cache_key() {
                self.storage.remove_key(&key.combined_bin());
            }
        }
        let mut r = policy::cacheable(resp, authorization(session), self.store_limit);
        // A 304 refreshes a stored object: nothing new is held.
        let refresh = revalidating && rc.upstream_status == Some(304);
        if let (RespCacheable::Cacheable(meta), false) = (&mut r, refresh) {
            let len = policy::content_length(resp).unwrap_or(0);
            let admitted = if self.storage.tier.too_large(len) {
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
        r
    }

    /// `should_serve_stale`: Pingora asks only for a stale object within the window the
    /// object allows (the origin's directives, else `stale_while_revalidate` or
    /// `stale_if_error`); `error` is `None` for stale-while-revalidate.
    pub(crate) fn should_serve_stale(rc: &mut RequestCache, error: Option<&pingora::Error>) -> bool {
        let stale = match error {
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

    /// The outcome so far (`None`: the cache was not used for this request).
    pub(crate) fn outcome(phase: CachePhase, rc: &RequestCache) -> Option<Outcome> {
        if !rc.enabled {
            return None;
        }
        Some(match phase {
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

fn authorization(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .contains_key(http::header::AUTHORIZATION)
}
