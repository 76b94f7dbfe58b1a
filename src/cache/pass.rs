//! Hit-for-pass: a key whose answer could not be stored (status, `no-store`, `private`,
//! `Set-Cookie`, `Vary: *`, no length, too large) is remembered for `uncacheable_ttl`, and
//! requests for it skip the cache, lock included, and go upstream in parallel, instead of
//! queueing on the lock behind one request whose answer they cannot use anyway.
//!
//! It is Pingora's predictor hook (`CacheablePredictor`): Pingora asks it before each lookup
//! and marks keys through it when a response turns out (un)cacheable; a bypassed request whose
//! answer became cacheable again is stored and clears the mark. Pingora's own `Predictor`
//! remembers keys until they fall out of an LRU, with no time limit, hence this one.
//! Failures (5xx, upstream errors), a full memory tier and lock outcomes are never
//! remembered: they say nothing lasting about the key, and passing a failing origin's
//! traffic through in parallel is the stampede the cache exists to prevent.

use pingora::cache::key::CacheHashKey;
use pingora::cache::predictor::CacheablePredictor;
use pingora::cache::{CacheKey, NoCacheReason};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most keys remembered; beyond, new ones are not (a key not remembered only queues on
/// the lock, as without hit-for-pass), so a client cannot grow this without bound.
const MAX_KEYS: usize = 64 * 1024;

pub(crate) struct HitForPass {
    ttl: Duration,
    keys: Mutex<HashMap<u128, (Instant, NoCacheReason)>>,
    /// `keys.len()`, read without the lock: the common case (nothing remembered) costs one
    /// atomic load per request.
    len: AtomicUsize,
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

impl HitForPass {
    pub(crate) fn new(ttl: Duration) -> HitForPass {
        HitForPass {
            ttl,
            keys: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
        }
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<u128, (Instant, NoCacheReason)>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn id(key: &CacheKey) -> u128 {
        // The primary key: variance is not known before the lookup.
        u128::from_be_bytes(key.primary_bin())
    }
}

impl CacheablePredictor for HitForPass {
    fn cacheable_prediction(&self, key: &CacheKey) -> bool {
        self.predicted_uncacheable_reason(key).is_none()
    }

    fn predicted_uncacheable_reason(&self, key: &CacheKey) -> Option<NoCacheReason> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let id = Self::id(key);
        let mut keys = self.keys();
        match keys.get(&id) {
            Some((until, reason)) if *until > Instant::now() => Some(*reason),
            Some(_) => {
                keys.remove(&id);
                self.len.store(keys.len(), Ordering::Relaxed);
                None
            }
            None => None,
        }
    }

    fn mark_cacheable(&self, key: &CacheKey) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let mut keys = self.keys();
        let was = keys.remove(&Self::id(key)).is_some();
        self.len.store(keys.len(), Ordering::Relaxed);
        !was
    }

    fn mark_uncacheable(&self, key: &CacheKey, reason: NoCacheReason) -> Option<bool> {
        if !remembered(reason) {
            return None;
        }
        let now = Instant::now();
        let mut keys = self.keys();
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, (until, _)| *until > now);
        }
        let id = Self::id(key);
        if keys.len() >= MAX_KEYS && !keys.contains_key(&id) {
            return None;
        }
        let was = keys.insert(id, (now + self.ttl, reason)).is_some();
        self.len.store(keys.len(), Ordering::Relaxed);
        Some(!was)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_passes_for_its_ttl_and_only_for_lasting_reasons() {
        let p = HitForPass::new(Duration::from_millis(200));
        let key = CacheKey::new("a", "t");
        let other = CacheKey::new("b", "t");
        assert!(p.cacheable_prediction(&key));
        for transient in [
            NoCacheReason::Custom("memory-full"),
            NoCacheReason::Custom("upstream-5xx"),
            NoCacheReason::UpstreamError,
            NoCacheReason::CacheLockTimeout,
        ] {
            assert_eq!(p.mark_uncacheable(&key, transient), None, "{transient:?}");
            assert!(p.cacheable_prediction(&key));
        }
        assert_eq!(
            p.mark_uncacheable(&key, NoCacheReason::OriginNotCache),
            Some(true)
        );
        assert_eq!(
            p.predicted_uncacheable_reason(&key),
            Some(NoCacheReason::OriginNotCache)
        );
        assert!(p.cacheable_prediction(&other));
        // A cacheable answer ends it at once.
        assert!(!p.mark_cacheable(&key));
        assert!(p.cacheable_prediction(&key));
        // Otherwise it ends after the ttl.
        assert_eq!(
            p.mark_uncacheable(&key, NoCacheReason::Custom("status")),
            Some(true)
        );
        assert!(!p.cacheable_prediction(&key));
        std::thread::sleep(Duration::from_millis(250));
        assert!(p.cacheable_prediction(&key));
        assert_eq!(p.len.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_map_is_bounded() {
        let p = HitForPass::new(Duration::from_secs(60));
        for i in 0..MAX_KEYS + 10 {
            p.mark_uncacheable(&CacheKey::new(i.to_string(), "t"), NoCacheReason::OriginNotCache);
        }
        assert_eq!(p.keys().len(), MAX_KEYS);
    }
}
