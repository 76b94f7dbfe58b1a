//! The memory tier's index and its admission: committed objects in least-recently-used
//! order, the fills in progress (what new lookups join), assets -> keys (for purges), and the
//! byte bound they all share.
//!
//! The bound: objects (charged body + header + overheads) and the fills in progress held in
//! memory (charged their declared length from admission) stay within `memory` at every
//! moment. A fill is admitted by [`Tier::reserve`], which checks and charges in one step under
//! the index mutex and evicts objects to make room, so a burst of cold fills cannot all pass
//! a check and overshoot later. The index is plain data: nothing here waits or does I/O.

use super::disk::io::{self as dio, Locked};
use super::fill::Body;
use crate::metrics::CacheMetrics;
use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Bytes counted per object on top of its body and meta: index entries, `Arc`s, channel.
pub(crate) const OBJECT_OVERHEAD: usize = 256;
/// Bytes counted per stored chunk: its list entry and the `Bytes` handle (Pingora copies each
/// upstream read into an allocation of its own size, so the body itself is counted exactly).
const CHUNK_OVERHEAD: usize = 48;

/// Bytes counted for a parsed meta: the header's names and values plus a header map entry each,
/// and the structs around them.
const META_OVERHEAD: usize = 256;
const HEADER_ENTRY_OVERHEAD: usize = 96;

pub(crate) fn meta_weight(meta: &CacheMeta) -> usize {
    let h = meta.headers();
    META_OVERHEAD
        + h.iter()
            .map(|(n, v)| n.as_str().len() + v.len() + HEADER_ENTRY_OVERHEAD)
            .sum::<usize>()
}

/// The stored object a lookup found, carried in the `CacheMeta` it returns. Pingora keeps a
/// hit's meta extensions across a revalidation, so `update_meta` learns which object a 304
/// refreshes, and refreshes nothing else (a newer object stored meanwhile keeps its header).
/// Ids are unique across processes (a random start), so they also name disk objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ObjectId(pub u64);

/// A committed object. Its meta is kept parsed (a lookup copies it, outside the index lock): kept
/// serialized, every hit decompressed and parsed it again (`CacheMeta::deserialize`, about a
/// third of a small hit's instructions).
struct Object {
    id: u64,
    meta: Arc<CacheMeta>,
    body: Arc<Body>,
    /// Bytes charged against the bound.
    weight: usize,
    tick: u64,
    asset: String,
}

/// A fill in progress.
pub(crate) struct Fill {
    pub(crate) id: u64,
    /// Without extensions.
    pub(crate) meta: Arc<CacheMeta>,
    pub(crate) body: Arc<Body>,
}

#[derive(Default)]
struct Index {
    objects: HashMap<HashBinary, Object>,
    /// tick -> key, oldest first.
    lru: BTreeMap<u64, HashBinary>,
    next_tick: u64,
    fills: HashMap<HashBinary, Fill>,
    /// asset -> keys (objects and fills) stored for it.
    assets: HashMap<String, HashSet<HashBinary>>,
    /// Bytes of the objects.
    bytes: usize,
    /// Declared lengths of the admitted fills held in memory.
    reserved: usize,
}

impl Index {
    fn remove_object(&mut self, key: &HashBinary) -> Option<Object> {
        let o = self.objects.remove(key)?;
        self.lru.remove(&o.tick);
        self.bytes -= o.weight;
        self.forget_asset_key(&o.asset, key);
        Some(o)
    }

    fn forget_asset_key(&mut self, asset: &str, key: &HashBinary) {
        if self.objects.contains_key(key) || self.fills.contains_key(key) {
            return;
        }
        if let Some(keys) = self.assets.get_mut(asset) {
            keys.remove(key);
            if keys.is_empty() {
                self.assets.remove(asset);
            }
        }
    }

    /// Evicts least recently used objects until objects and fills fit `limit`.
    fn evict(&mut self, limit: usize, metrics: &CacheMetrics) {
        while self.bytes + self.reserved > limit {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            if let Some(o) = self.objects.remove(&victim) {
                self.bytes -= o.weight;
                self.forget_asset_key(&o.asset, &victim);
                metrics.evictions.inc();
            }
        }
    }
}

/// What `commit` did with a finished fill.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Committed {
    /// Stored in memory.
    Stored,
    /// Still the key's current fill, but larger than the tier (its disk copy may be published).
    TooLarge,
    /// Purged, or replaced by a newer fill: not stored anywhere.
    Detached,
}

/// Sizes for the admin listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TierStats {
    pub bytes: usize,
    pub limit: usize,
    pub objects: usize,
    pub fills: usize,
}

/// The memory tier's index, bound and admission.
pub(crate) struct Tier {
    index: Mutex<Index>,
    pub(crate) limit: usize,
    metrics: &'static CacheMetrics,
}

/// Memory set aside for an admitted fill, given back when dropped (or turned into the
/// object's charge at commit).
pub(crate) struct Charge {
    tier: &'static Tier,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.tier.index().reserved -= self.bytes;
        }
    }
}

impl Tier {
    pub(crate) fn new(limit: usize, metrics: &'static CacheMetrics) -> Tier {
        Tier {
            index: Mutex::new(Index::default()),
            limit,
            metrics,
        }
    }

    fn index(&self) -> Locked<'_, Index> {
        dio::lock(&self.index)
    }

    /// Whether a body of `len` bytes can never be an object of this tier.
    pub(crate) fn too_large(&self, len: usize) -> bool {
        len + OBJECT_OVERHEAD > self.limit
    }

    /// Admits a fill of `len` body bytes if the fills in memory fit the bound together with
    /// it, evicting objects to make room; checked and charged in one step.
    pub(crate) fn reserve(&'static self, len: usize) -> Option<Charge> {
        let mut i = self.index();
        if i.reserved + len > self.limit {
            return None;
        }
        i.reserved += len;
        i.evict(self.limit, self.metrics);
        self.metrics.memory_bytes.set(i.bytes as i64);
        Some(Charge {
            tier: self,
            bytes: len,
        })
    }

    pub(crate) fn stats(&self) -> TierStats {
        let i = self.index();
        TierStats {
            bytes: i.bytes,
            limit: self.limit,
            objects: i.objects.len(),
            fills: i.fills.len(),
        }
    }

    pub(crate) fn has_fill(&self, key: &HashBinary) -> bool {
        self.index().fills.contains_key(key)
    }

    /// Registers a fill: new lookups join it. A previous fill of the key (after a lock
    /// timeout) keeps its readers, but it is no longer the one that commits.
    pub(crate) fn register(&self, key: HashBinary, asset: &str, fill: Fill) {
        let mut i = self.index();
        i.fills.insert(key, fill);
        i.assets.entry(asset.to_string()).or_default().insert(key);
    }

    /// What a lookup finds: a fill first (behind a stale object's refresh, new requests follow
    /// the new body), then an object. `(id, meta, body, is a fill)`.
    pub(crate) fn find(
        &self,
        key: &HashBinary,
        usable: impl Fn(&Body) -> bool,
    ) -> Option<(u64, Arc<CacheMeta>, Arc<Body>, bool)> {
        let mut i = self.index();
        if let Some(f) = i.fills.get(key).filter(|f| usable(&f.body)) {
            return Some((f.id, f.meta.clone(), f.body.clone(), true));
        }
        let tick = i.next_tick;
        let o = i.objects.get_mut(key)?;
        let found = (o.id, o.meta.clone(), o.body.clone(), false);
        let old = std::mem::replace(&mut o.tick, tick);
        i.lru.remove(&old);
        i.lru.insert(tick, *key);
        i.next_tick += 1;
        Some(found)
    }

    /// The writer's own fill, by id.
    pub(crate) fn fill(&self, key: &HashBinary, id: u64) -> Option<(Arc<CacheMeta>, Arc<Body>)> {
        let i = self.index();
        let f = i.fills.get(key).filter(|f| f.id == id)?;
        Some((f.meta.clone(), f.body.clone()))
    }

    /// A finished fill becomes an object if it is still the key's current fill, evicting
    /// least recently used objects to stay within the bound; its charge becomes the object's.
    /// A fill too large for memory stays registered (`keep_fill`) until its disk copy is
    /// published, so lookups keep joining it meanwhile.
    pub(crate) fn commit(
        &self,
        key: &HashBinary,
        asset: &str,
        id: u64,
        charge: Option<Charge>,
        keep_fill: bool,
    ) -> Committed {
        let mut i = self.index();
        if let Some(mut c) = charge {
            i.reserved -= c.bytes;
            c.bytes = 0;
        }
        if i.fills.get(key).map(|f| f.id) != Some(id) {
            return Committed::Detached;
        }
        // The previous version goes whether or not this one fits: lookups try memory first, so
        // a stale object left here would hide the new one on disk.
        i.remove_object(key);
        if keep_fill {
            self.metrics.memory_bytes.set(i.bytes as i64);
            return Committed::TooLarge;
        }
        let Some(fill) = i.fills.remove(key) else {
            return Committed::Detached;
        };
        let (chunks, body_len) = (fill.body.chunk_count(), fill.body.len);
        let weight = body_len + meta_weight(&fill.meta) + OBJECT_OVERHEAD + chunks * CHUNK_OVERHEAD;
        if weight > self.limit {
            i.forget_asset_key(asset, key);
            self.metrics.memory_bytes.set(i.bytes as i64);
            return Committed::TooLarge;
        }
        i.bytes += weight;
        i.evict(self.limit, self.metrics);
        let tick = i.next_tick;
        i.next_tick += 1;
        i.lru.insert(tick, *key);
        i.objects.insert(
            *key,
            Object {
                id,
                meta: fill.meta,
                body: fill.body,
                weight,
                tick,
                asset: asset.to_string(),
            },
        );
        i.assets.entry(asset.to_string()).or_default().insert(*key);
        self.metrics.stored_bytes.inc_by(body_len as u64);
        self.metrics.memory_bytes.set(i.bytes as i64);
        Committed::Stored
    }

    /// Unregisters a fill (failed, or its disk copy is published), if it is still the key's.
    pub(crate) fn end_fill(&self, key: &HashBinary, asset: &str, id: u64) {
        let mut i = self.index();
        if i.fills.get(key).map(|f| f.id) == Some(id) {
            i.fills.remove(key);
            i.forget_asset_key(asset, key);
        }
    }

    /// Refreshes object `id`'s meta (a 304); `false` if the key holds another object now.
    /// The object's weight follows its new header.
    pub(crate) fn update_meta(&self, key: &HashBinary, id: u64, meta: Arc<CacheMeta>) -> bool {
        let mut i = self.index();
        let Some(o) = i.objects.get_mut(key).filter(|o| o.id == id) else {
            return false;
        };
        let old = meta_weight(&o.meta);
        let new = meta_weight(&meta);
        o.meta = meta;
        o.weight = o.weight - old + new;
        i.bytes = i.bytes - old + new;
        i.evict(self.limit, self.metrics);
        self.metrics.memory_bytes.set(i.bytes as i64);
        true
    }

    pub(crate) fn remove_key(&self, key: &HashBinary) -> bool {
        let mut i = self.index();
        let removed = i.remove_object(key).is_some();
        self.metrics.memory_bytes.set(i.bytes as i64);
        removed
    }

    /// The asset tags starting with `prefix` with an object or a fill here.
    pub(crate) fn assets_with_prefix(&self, prefix: &str) -> Vec<String> {
        let i = self.index();
        i.assets
            .keys()
            .filter(|a| a.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Removes every object of `asset` and detaches its fills: their readers finish, but they
    /// are not committed and new requests miss.
    pub(crate) fn purge_asset(&self, asset: &str) -> bool {
        let mut i = self.index();
        let Some(keys) = i.assets.remove(asset) else {
            return false;
        };
        let mut removed = false;
        for key in keys {
            removed |= i.fills.remove(&key).is_some();
            if let Some(o) = i.objects.remove(&key) {
                i.lru.remove(&o.tick);
                i.bytes -= o.weight;
                removed = true;
            }
        }
        self.metrics.memory_bytes.set(i.bytes as i64);
        removed
    }
}
