//! [`MemStorage`], the pingora-cache [`Storage`] the cache hooks see: lookups go to the memory
//! tier's fills and objects, then to the disk tier; a miss handler is a [`Writer`] whose fill
//! readers follow, copied to the disk tier while it streams.
//!
//! The disk tier is not a second `Storage`: the fill, the lock, the #932 guard and purges keep
//! one owner here.

use super::disk::{DiskStats, DiskStore, Prepared};
use super::fill::{Body, FillState, Writer, FILL_ABORTED};
use super::index::{Charge, Fill, ObjectId, Tier, TierStats};
use super::reader::Reader;
use crate::metrics::CacheMetrics;
use async_trait::async_trait;
use pingora::cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora::cache::storage::streaming_write::U64WriteId;
use pingora::cache::storage::{HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage};
use pingora::cache::trace::SpanHandle;
use pingora::cache::CacheMeta;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What `response_cache_filter` admitted for one response, carried to `get_miss_handler` in
/// the `CacheMeta` it returns (the only thing Pingora hands from one to the other). Taken by
/// the miss handler; dropped with the meta otherwise (e.g. the meta of a 304), which gives
/// the memory back.
#[derive(Clone)]
pub(crate) struct Admission(Arc<Mutex<Option<Admitted>>>);

pub(crate) enum Admitted {
    /// A fill held in memory, charged its length.
    Memory(Charge),
    /// A fill too large for memory, with its disk file ready.
    Disk(Prepared),
}

impl Admission {
    pub(crate) fn new(a: Admitted) -> Admission {
        Admission(Arc::new(Mutex::new(Some(a))))
    }

    fn take(meta: &CacheMeta) -> Option<Admitted> {
        let a = meta.extensions().get::<Admission>()?;
        let taken = a.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        taken
    }
}

/// Sizes for the admin listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub memory: TierStats,
    /// `None`: no disk tier.
    pub disk: Option<DiskStats>,
}

pub(crate) struct MemStorage {
    pub(crate) tier: Tier,
    next_id: AtomicU64,
    metrics: &'static CacheMetrics,
    /// The disk tier, if configured: lookups fall through to it, fills are copied to it.
    pub(crate) disk: Option<&'static DiskStore>,
}

impl MemStorage {
    pub(crate) fn new(
        limit: usize,
        metrics: &'static CacheMetrics,
        disk: Option<&'static DiskStore>,
    ) -> MemStorage {
        // Object ids start at a random point, so two processes sharing a disk directory
        // (during an upgrade) do not reuse each other's.
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        MemStorage {
            tier: Tier::new(limit, metrics),
            next_id: AtomicU64::new(start >> 1),
            metrics,
            disk,
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            memory: self.tier.stats(),
            disk: self.disk.map(|d| d.stats()),
        }
    }

    /// Removes every stored object of `asset` (the `user_tag` of its keys) from both tiers
    /// and detaches its fills: their readers finish, but they are not stored and new requests
    /// miss. Returns whether anything was removed, once the disk files are deleted.
    pub(crate) async fn purge_asset(&self, asset: &str) -> bool {
        let in_memory = self.tier.purge_asset(asset);
        let on_disk = match self.disk {
            Some(d) => d.purge_asset(asset).await,
            None => false,
        };
        in_memory | on_disk
    }

    /// The asset tags starting with `prefix` that have something in either tier (objects,
    /// fills, disk files, disk writes): what a purge of a whole route goes through.
    pub(crate) fn assets_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut tags = self.tier.assets_with_prefix(prefix);
        if let Some(d) = self.disk {
            tags.extend(d.assets_with_prefix(prefix));
        }
        tags.sort();
        tags.dedup();
        tags
    }

    /// Removes one key's object from both tiers.
    pub(crate) fn remove_key(&self, key: &HashBinary) -> bool {
        let on_disk = self.disk.is_some_and(|d| d.remove_key(key));
        self.tier.remove_key(key) | on_disk
    }
}

/// A copy of a stored meta (kept without extensions), naming its object.
fn meta_of(m: &CacheMeta, id: u64) -> CacheMeta {
    let mut meta = m.clone();
    meta.extensions_mut().insert(ObjectId(id));
    meta
}

/// The meta as stored in memory: without the extensions a request attached to it.
fn stored(meta: &CacheMeta) -> Arc<CacheMeta> {
    let mut m = meta.clone();
    m.extensions_mut().clear();
    Arc::new(m)
}

#[async_trait]
impl Storage for MemStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let k = key.combined_bin();
        let usable = |b: &Body| *b.state.borrow() != FillState::Failed;
        if let Some((id, meta, body, filling)) = self.tier.find(&k, usable) {
            let reader = Reader::new(body, filling, Some(self.metrics));
            return Ok(Some((meta_of(&meta, id), Box::new(reader))));
        }
        // Then the disk, streamed from its files (not promoted to memory).
        match self.disk {
            Some(d) => Ok(d
                .lookup(&k)
                .await?
                .map(|(meta, reader)| (meta, Box::new(reader) as HitHandler))),
            None => Ok(None),
        }
    }

    /// The writer's own reader: the fill it just registered, found by its tag.
    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        tag: Option<&[u8]>,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let id: u64 = tag
            .and_then(|t| U64WriteId::try_from(t).ok())
            .map(u64::from)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache: bad streaming write tag"))?;
        match self.tier.fill(&key.combined_bin(), id) {
            // Not counted in the hit metrics: these bytes come from the origin.
            Some((meta, body)) => Ok(Some((
                meta_of(&meta, id),
                Box::new(Reader::new(body, true, None)),
            ))),
            // Returning None would make Pingora panic; the fill was purged or failed already.
            None => Error::e_explain(FILL_ABORTED, "cache: the fill is gone"),
        }
    }

    /// An `Err` here (no admission) makes Pingora stream the response through uncached.
    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let len = super::policy::content_length(meta.response_header())
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache: no Content-Length"))?;
        let k = key.combined_bin();
        let asset = key.user_tag.clone();
        let (charge, prepared) = match Admission::take(meta) {
            Some(Admitted::Memory(c)) => (Some(c), None),
            Some(Admitted::Disk(p)) => (None, Some(p)),
            None => return Error::e_explain(ErrorType::InternalError, "cache: a fill that was not admitted"),
        };
        let id = prepared.as_ref().map_or_else(|| self.next_id(), |p| p.id);
        // Serialized only for the disk tier; memory keeps it parsed.
        let disk = match self.disk {
            Some(d) => d.start_write(k, id, &asset, len, meta.serialize()?, prepared),
            None => None,
        };
        let spill = disk.as_ref().and_then(|d| d.progress.clone());
        if charge.is_none() && spill.is_none() {
            // A fill too large for memory whose disk copy did not start: never buffered.
            return Error::e_explain(ErrorType::InternalError, "cache: no disk copy for a large fill");
        }
        let body = Arc::new(Body::new(len, spill));
        // Registered before returning: Pingora releases the cache lock right after this, and
        // the waiters' next lookup must find the fill.
        self.tier.register(
            k,
            &asset,
            Fill {
                id,
                meta: stored(meta),
                body: body.clone(),
            },
        );
        Ok(Box::new(Writer {
            storage: self,
            key: k,
            asset,
            id,
            tag: U64WriteId::from(id),
            body,
            written: 0,
            done: false,
            disk,
            charge,
            body_whole: false,
        }))
    }

    /// Pingora calls this only for its own purge requests, which the gateway does not
    /// accept (`is_purge` is never true): purges go through the admin listener.
    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(match self.remove_key(&target.key().combined_bin()) {
            true => PurgeOutcome::Purged(None),
            false => PurgeOutcome::NotFound,
        })
    }

    /// A 304 refreshed the object the revalidation started from: only that object (by its
    /// id) gets the new meta. If the key holds a newer object now (stored by a request that
    /// went upstream meanwhile), the 304's meta, built from the old object's header, is
    /// dropped.
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        // The memory this revalidation's response was admitted with is not needed.
        drop(Admission::take(meta));
        let Some(ObjectId(id)) = meta.extensions().get::<ObjectId>().copied() else {
            return Ok(false);
        };
        let k = key.combined_bin();
        let in_memory = self.tier.update_meta(&k, id, stored(meta));
        let on_disk = match self.disk {
            Some(d) => d.update_meta(&k, id, meta.serialize()?).await,
            None => false,
        };
        Ok(in_memory || on_disk)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
pub(crate) mod tests;
