//! Hit-for-pass: a key whose answer could not be stored (status, `no-store`, `private`,
//! `Set-Cookie`, `Vary: *`, no length, too large) is remembered for `uncacheable_ttl`, and
//! requests for it skip the cache, lock included, and go upstream in parallel, instead of
//! queueing on the lock behind one request whose answer they cannot use anyway.
//!
//! What is remembered is a primary key and the variance of the refused request under the
//! refused answer's own `Vary`: a request for the same URL with other values of those headers
//! (another `Accept` class) is not bypassed, so one client's unstorable variant never turns
//! off the lookup, and the hits, of another's. A refusal is remembered only when the lookup
//! found nothing usable for the URL: a `Vary` miss (an object of the URL was found, for other
//! values) says nothing about the key, and a bypassed request does not extend its own pass.
//! `Cache::cacheable` decides and calls [`HitForPass::mark`]; failures (5xx, upstream
//! errors), a full memory tier and lock outcomes are never remembered: they say nothing
//! lasting about the key, and passing a failing origin's traffic through in parallel is the
//! stampede the cache exists to prevent.
//!
//! Pingora asks its predictor hook (`CacheablePredictor`) before each lookup, with only the
//! cache key; the variance needs the request. So `cache_key_callback` asks
//! [`HitForPass::check`] and puts the verdict in the key's extensions ([`Passing`]), and the
//! predictor reads it there. Pingora's own `mark_uncacheable` calls are ignored (marks come
//! from `Cache::cacheable`, which sees the response and the lookup); `mark_cacheable` (a
//! bypassed answer that became cacheable, which Pingora stores) ends that pass at once.
//!
//! Concurrency and bounds: 16 shards by primary key, each a map under a read-write lock
//! (lookups take a read lock), and each with a queue in marking order: the time limit is the
//! same for every mark, so the queue is also in expiry order, and expired or evicted marks
//! leave from its front, without scanning the map. At most 4,096 URLs per shard (65,536 in
//! all) and 8 variants per URL; beyond, the oldest mark goes first. While nothing is
//! remembered a request costs one atomic load.

use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::predictor::CacheablePredictor;
use pingora::cache::{CacheKey, NoCacheReason};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// URLs remembered per shard.
const PER_SHARD: usize = 4096;
/// Variants remembered per URL (an unstorable answer per `Accept` class, say).
const VARIANTS: usize = 8;

/// The verdict for one request, in its cache key's extensions (see the module doc).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Passing {
    pub(crate) reason: NoCacheReason,
    variance: Option<HashBinary>,
}

pub(crate) struct HitForPass {
    ttl: Duration,
    shards: [RwLock<Shard>; SHARDS],
    /// URLs remembered, read without a lock: the common case (nothing remembered) costs one
    /// atomic load per request.
    len: AtomicUsize,
}

#[derive(Default)]
struct Shard {
    urls: HashMap<u128, Url>,
    /// (until, primary, variance) in marking order, so in expiry order. An item whose mark was
    /// renewed or cleared since is skipped when it reaches the front.
    queue: VecDeque<(Instant, u128, Option<HashBinary>)>,
}

/// The marks of one primary key.
struct Url {
    /// The header names the refused answer's `Vary` listed (lower case): the variance of a
    /// request is computed on these.
    vary: Arc<[String]>,
    marks: Vec<Mark>,
}

struct Mark {
    variance: Option<HashBinary>,
    until: Instant,
    reason: NoCacheReason,
}

/// The reasons that make a key pass: the answer itself cannot be stored.
fn remembered(reason: NoCacheReason) -> bool {
    use NoCacheReason::*;
    match reason {
        OriginNotCache | ResponseTooLarge => true,
        Custom(why) => super::policy::is_lasting(why),
        _ => false,
    }
}

fn primary(key: &CacheKey) -> u128 {
    u128::from_be_bytes(key.primary_bin())
}

impl HitForPass {
    pub(crate) fn new(ttl: Duration) -> HitForPass {
        HitForPass {
            ttl,
            shards: std::array::from_fn(|_| RwLock::new(Shard::default())),
            len: AtomicUsize::new(0),
        }
    }

    fn shard(&self, id: u128) -> &RwLock<Shard> {
        &self.shards[(id as usize) % SHARDS]
    }

    fn read(&self, id: u128) -> RwLockReadGuard<'_, Shard> {
        self.shard(id).read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, id: u128) -> RwLockWriteGuard<'_, Shard> {
        self.shard(id).write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request for `key` passes: `variance` computes the request's variance under
    /// the `Vary` names of the answer that was refused. Before the lookup
    /// (`cache_key_callback`); the verdict goes into the key (see [`Passing`]).
    pub(crate) fn check(
        &self,
        key: &CacheKey,
        variance: impl FnOnce(&[String]) -> Option<HashBinary>,
    ) -> Option<Passing> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let id = primary(key);
        let now = Instant::now();
        let shard = self.read(id);
        let url = shard.urls.get(&id)?;
        let v = variance(&url.vary);
        let mark = url.marks.iter().find(|m| m.variance == v)?;
        if mark.until > now {
            return Some(Passing {
                reason: mark.reason,
                variance: v,
            });
        }
        drop(shard);
        // Expired: tidy up if nobody else holds the shard (otherwise the next mark will).
        if let Ok(mut shard) = self.shard(id).try_write() {
            self.expire(&mut shard, now);
        }
        None
    }

    /// Remembers that the answer to a request for `key` (its primary part) could not be
    /// stored, for this request's `variance` under the answer's `Vary` names `vary`. `None`:
    /// not a reason that lasts.
    pub(crate) fn mark(
        &self,
        key: &CacheKey,
        vary: Vec<String>,
        variance: Option<HashBinary>,
        reason: NoCacheReason,
    ) -> Option<()> {
        if !remembered(reason) {
            return None;
        }
        let id = primary(key);
        let now = Instant::now();
        let until = now + self.ttl;
        let mut shard = self.write(id);
        self.expire(&mut shard, now);
        if !shard.urls.contains_key(&id) {
            // Full: the oldest marks go first.
            while shard.urls.len() >= PER_SHARD && !shard.queue.is_empty() {
                self.pop_front(&mut shard, None);
            }
            shard.urls.insert(
                id,
                Url {
                    vary: vary.clone().into(),
                    marks: Vec::new(),
                },
            );
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        let url = shard.urls.get_mut(&id)?;
        if *url.vary != *vary {
            // The origin's `Vary` changed: the old variances were computed on other names.
            url.vary = vary.into();
            url.marks.clear();
        }
        url.marks.retain(|m| m.variance != variance);
        if url.marks.len() >= VARIANTS {
            url.marks.remove(0);
        }
        url.marks.push(Mark {
            variance,
            until,
            reason,
        });
        shard.queue.push_back((until, id, variance));
        // Renewed and cleared marks leave stale items behind: keep the queue within twice
        // the marks a shard can hold.
        while shard.queue.len() > 2 * PER_SHARD * VARIANTS {
            self.pop_front(&mut shard, None);
        }
        Some(())
    }

    /// Forgets the mark a bypassed request matched (its answer was cacheable again).
    fn clear(&self, key: &CacheKey, variance: Option<HashBinary>) -> bool {
        let id = primary(key);
        let mut shard = self.write(id);
        let Some(url) = shard.urls.get_mut(&id) else {
            return false;
        };
        let before = url.marks.len();
        url.marks.retain(|m| m.variance != variance);
        let cleared = url.marks.len() != before;
        if url.marks.is_empty() {
            shard.urls.remove(&id);
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        cleared
    }

    /// Drops the expired marks from the front of the queue.
    fn expire(&self, shard: &mut Shard, now: Instant) {
        while shard.queue.front().is_some_and(|(until, _, _)| *until <= now) {
            self.pop_front(shard, Some(now));
        }
    }

    /// Removes the queue's front item and its mark, if the mark is still the one the item
    /// was queued for (same expiry) or, with `now` `None`, whatever its expiry (eviction).
    fn pop_front(&self, shard: &mut Shard, now: Option<Instant>) {
        let Some((until, id, variance)) = shard.queue.pop_front() else {
            return;
        };
        let Some(url) = shard.urls.get_mut(&id) else {
            return;
        };
        url.marks
            .retain(|m| m.variance != variance || (m.until != until && now.is_some_and(|now| m.until > now)));
        if url.marks.is_empty() {
            shard.urls.remove(&id);
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    fn urls(&self) -> usize {
        self.shards.iter().map(|s| s.read().unwrap().urls.len()).sum()
    }
}

/// The predictor Pingora calls: it reads the verdict [`HitForPass::check`] put in the key.
impl CacheablePredictor for HitForPass {
    fn cacheable_prediction(&self, key: &CacheKey) -> bool {
        key.extensions.get::<Passing>().is_none()
    }

    fn predicted_uncacheable_reason(&self, key: &CacheKey) -> Option<NoCacheReason> {
        key.extensions.get::<Passing>().map(|p| p.reason)
    }

    fn mark_cacheable(&self, key: &CacheKey) -> bool {
        match key.extensions.get::<Passing>() {
            Some(p) => self.clear(key, p.variance),
            None => false,
        }
    }

    /// Marks are made by `Cache::cacheable` (see the module doc).
    fn mark_uncacheable(&self, _key: &CacheKey, _reason: NoCacheReason) -> Option<bool> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(primary: &str, pass: Option<Passing>) -> CacheKey {
        let mut k = CacheKey::new(primary, "t");
        if let Some(p) = pass {
            k.extensions.insert(p);
        }
        k
    }

    /// A variance that is the value of the first name, as `Keying` would compute it.
    fn variance_of(value: &'static str) -> impl FnOnce(&[String]) -> Option<HashBinary> {
        move |names: &[String]| {
            let mut b = pingora::cache::VarianceBuilder::new();
            for n in names {
                b.add_owned_name_value(n.clone(), value.as_bytes().to_vec());
            }
            b.finalize()
        }
    }

    #[test]
    fn a_key_passes_for_its_ttl_and_only_for_lasting_reasons() {
        let p = HitForPass::new(Duration::from_millis(200));
        let a = key("a", None);
        let no_vary = |_: &[String]| None;
        assert!(p.check(&a, no_vary).is_none());
        for transient in [
            NoCacheReason::Custom("memory-full"),
            NoCacheReason::Custom("upstream-5xx"),
            NoCacheReason::UpstreamError,
            NoCacheReason::CacheLockTimeout,
        ] {
            assert_eq!(p.mark(&a, vec![], None, transient), None, "{transient:?}");
            assert!(p.check(&a, no_vary).is_none());
        }
        assert!(p.mark(&a, vec![], None, NoCacheReason::OriginNotCache).is_some());
        let passing = p.check(&a, no_vary).unwrap();
        assert_eq!(passing.reason, NoCacheReason::OriginNotCache);
        assert!(p.check(&key("b", None), no_vary).is_none());
        // Pingora reads the verdict from the key.
        let bypassed = key("a", Some(passing));
        assert!(!p.cacheable_prediction(&bypassed));
        assert!(p.cacheable_prediction(&a));
        assert_eq!(
            p.predicted_uncacheable_reason(&bypassed),
            Some(NoCacheReason::OriginNotCache)
        );
        // A cacheable answer ends it at once.
        assert!(p.mark_cacheable(&bypassed));
        assert!(p.check(&a, no_vary).is_none());
        // Otherwise it ends after the ttl.
        p.mark(&a, vec![], None, NoCacheReason::Custom("status"));
        assert!(p.check(&a, no_vary).is_some());
        std::thread::sleep(Duration::from_millis(250));
        assert!(p.check(&a, no_vary).is_none());
        assert_eq!(p.len.load(Ordering::Relaxed), 0);
    }

    /// An unstorable answer with `Vary: Accept` makes that `Accept` class pass, not the
    /// URL: a request with another class still looks up (and finds its stored variant).
    #[test]
    fn a_pass_holds_for_the_refused_variant_only() {
        let p = HitForPass::new(Duration::from_secs(60));
        let a = key("a", None);
        let vary = vec!["accept".to_string()];
        p.mark(
            &a,
            vary.clone(),
            variance_of("jxl")(&vary),
            NoCacheReason::Custom("status"),
        );
        assert!(p.check(&a, variance_of("jxl")).is_some());
        assert!(p.check(&a, variance_of("webp")).is_none());
        // A second variant, then the first one cleared: the second stays.
        p.mark(
            &a,
            vary.clone(),
            variance_of("png")(&vary),
            NoCacheReason::OriginNotCache,
        );
        let jxl = p.check(&a, variance_of("jxl")).unwrap();
        assert!(p.mark_cacheable(&key("a", Some(jxl))));
        assert!(p.check(&a, variance_of("jxl")).is_none());
        assert!(p.check(&a, variance_of("png")).is_some());
        // At most VARIANTS per URL: the oldest goes.
        const NAMES: [&str; 9] = ["v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"];
        for v in NAMES {
            p.mark(
                &a,
                vary.clone(),
                variance_of(v)(&vary),
                NoCacheReason::OriginNotCache,
            );
        }
        assert!(p.check(&a, variance_of("v0")).is_none());
        assert!(p.check(&a, variance_of("v8")).is_some());
        // The origin's Vary changed: the marks made under the old names go; without Vary the
        // mark holds for every request of the URL.
        p.mark(&a, vec![], None, NoCacheReason::OriginNotCache);
        let marks = |p: &HitForPass| p.read(primary(&a)).urls[&primary(&a)].marks.len();
        assert_eq!(marks(&p), 1);
        assert!(p.check(&a, variance_of("v8")).is_some());
    }

    /// Bounded: when full, the oldest marks make room (a client cannot fill the map and
    /// keep a new key from passing), and expired marks leave from the queue's front.
    #[test]
    fn the_map_is_bounded_and_drops_its_oldest() {
        let p = HitForPass::new(Duration::from_secs(60));
        let total = PER_SHARD * SHARDS;
        // Twice what it holds: every shard overflows.
        for i in 0..2 * total {
            p.mark(
                &key(&i.to_string(), None),
                vec![],
                None,
                NoCacheReason::OriginNotCache,
            );
        }
        assert!(p.urls() <= total, "{}", p.urls());
        assert_eq!(p.len.load(Ordering::Relaxed), p.urls());
        let newest = key(&(2 * total - 1).to_string(), None);
        assert!(
            p.check(&newest, |_| None).is_some(),
            "the newest mark was not kept"
        );
        assert!(
            p.check(&key("0", None), |_| None).is_none(),
            "the oldest mark stayed"
        );

        let short = HitForPass::new(Duration::from_millis(50));
        for i in 0..100 {
            short.mark(
                &key(&i.to_string(), None),
                vec![],
                None,
                NoCacheReason::OriginNotCache,
            );
        }
        std::thread::sleep(Duration::from_millis(80));
        // One new mark per shard expires the others of that shard from the queue's front.
        for i in 1000..1200 {
            short.mark(
                &key(&i.to_string(), None),
                vec![],
                None,
                NoCacheReason::OriginNotCache,
            );
        }
        assert_eq!(short.urls(), 200);
        let queued: usize = short.shards.iter().map(|s| s.read().unwrap().queue.len()).sum();
        assert_eq!(queued, 200);
    }
}
