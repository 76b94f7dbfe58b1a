//! The cache lock, closing a gap Pingora leaves with streaming storages.
//!
//! Pingora looks a key up, and on a miss takes the lock, in two steps. With a streaming
//! storage the writer registers its fill and releases the lock as soon as the response header
//! is stored. A request whose lookup ran just before that registration, and whose lock call
//! comes just after the release, therefore gets a fresh write lock and goes to the origin a
//! second time, although the fill it should follow is already there (seen in the HTTP/2 herd
//! test, about one run in forty under load). [`FillAwareLock`] checks the storage after
//! granting a write lock: if the key now has a fill, the lock is given back and the request
//! gets a read lock that is already released, so Pingora looks up again and finds the fill.
//! Stored objects are not checked: one can be present yet unusable (a `Vary` variant older
//! than its primary), and refusing the lock for it would keep it from ever being replaced.

use super::storage::MemStorage;
use pingora::cache::key::CacheHashKey;
use pingora::cache::lock::{
    CacheKeyLock, CacheLock, LockCore, LockStatus, LockStub, Locked, ReadLock, WritePermit,
};
use pingora::cache::trace::Span;
use pingora::cache::CacheKey;
use std::time::Duration;

pub(crate) struct FillAwareLock {
    inner: CacheLock,
    storage: &'static MemStorage,
    age_timeout: Duration,
}

impl FillAwareLock {
    pub(crate) fn new(age_timeout: Duration, storage: &'static MemStorage) -> FillAwareLock {
        FillAwareLock {
            inner: CacheLock::new(age_timeout),
            storage,
            age_timeout,
        }
    }
}

impl CacheKeyLock for FillAwareLock {
    fn lock(&self, key: &CacheKey, stale_writer: bool) -> Locked {
        let locked = self.inner.lock(key, stale_writer);
        // A stale writer revalidates an object it found: that object is expected.
        if stale_writer || !self.storage.has_fill(&key.combined_bin()) {
            return locked;
        }
        if let Locked::Write(permit) = locked {
            // Done: anyone already queued behind this permit looks up again too.
            self.inner.release(key, permit, LockStatus::Done);
            let released = LockCore::new_arc(self.age_timeout, false, http::Extensions::new());
            released.unlock(LockStatus::Done);
            return Locked::Read(LockStub(released).read_lock());
        }
        locked
    }

    fn release(&self, key: &CacheKey, permit: WritePermit, reason: LockStatus) {
        self.inner.release(key, permit, reason)
    }

    fn trace_lock_wait(&self, span: &mut Span, read_lock: &ReadLock, lock_status: LockStatus) {
        self.inner.trace_lock_wait(span, read_lock, lock_status)
    }

    /// A writer's answer that cannot be stored releases its waiters: an error (a 5xx that
    /// could not be stored, e.g. `no-store`) lets them take turns on the lock, one request
    /// upstream at a time, instead of all at once against a failing origin; any other reason
    /// (`GiveUp`, Pingora's default) sends them all upstream at once, which is what a key that
    /// is merely uncacheable needs (and hit-for-pass takes over for the next requests).
    fn custom_lock_status(&self, custom_no_cache: &'static str) -> LockStatus {
        match custom_no_cache {
            super::policy::UPSTREAM_5XX => LockStatus::TransientError,
            other => self.inner.custom_lock_status(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::storage::tests::{meta, span, storage};
    use super::*;
    use pingora::cache::Storage;

    /// A request that locks after another one registered its fill is sent back to look up.
    #[tokio::test]
    async fn a_write_lock_on_a_key_being_filled_is_given_back() {
        let s = storage(1 << 20);
        let lock = FillAwareLock::new(Duration::from_secs(30), s);
        let key = super::super::policy::key("/a/{id}", "l", None);
        let Locked::Write(permit) = lock.lock(&key, false) else {
            panic!("the first request must write");
        };
        let writer = s.get_miss_handler(&key, &meta(1), &span()).await.unwrap();
        lock.release(&key, permit, LockStatus::Done);
        // Looked up before the fill existed, locks after the release.
        match lock.lock(&key, false) {
            Locked::Read(r) => {
                r.wait().await;
                assert_eq!(r.lock_status(), LockStatus::Done);
            }
            Locked::Write(_) => panic!("a second writer for a key being filled"),
        }
        // A revalidation (stale writer), and another key, are not affected.
        let other = super::super::policy::key("/a/{id}", "m", None);
        for (k, stale) in [(&key, true), (&other, false)] {
            match lock.lock(k, stale) {
                // Permits must be released (a dropped one is a bug Pingora asserts on).
                Locked::Write(p) => lock.release(k, p, LockStatus::Done),
                Locked::Read(_) => panic!("stale={stale}: no write lock"),
            }
        }
        drop(writer);
    }
}
