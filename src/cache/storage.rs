//! The memory tier: a pingora-cache [`Storage`] whose readers follow a fill while it arrives
//! (`support_streaming_partial_write`), bounded in bytes with least-recently-used eviction.
//!
//! One [`Body`] type serves both states: a fill in progress and a committed object are the same
//! list of upstream chunks (the `Bytes` Pingora read, never copied) plus a [`FillState`]. A reader
//! holds an `Arc<Body>`, so eviction or a purge never disturbs a response being served.
//!
//! The #932 guard (cloudflare/pingora issue 932: Pingora's `MemCache` reads a writer dropped
//! mid-body as a clean end): completion is only ever published by a successful
//! [`HandleMiss::finish`], never inferred. A writer dropped without `finish`, a write past the
//! declared length or a short body publishes [`FillState::Failed`], and every reader then gets
//! an `Err` (the client connection is closed with the body incomplete), never `Ok(None)`. The
//! failed fill is removed, so the next request misses and refills.

use super::disk::{DiskStats, DiskStore, DiskWrite};
use crate::metrics::CacheMetrics;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora::cache::storage::streaming_write::U64WriteId;
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
    Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::CacheMeta;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Serialized [`CacheMeta`] (Pingora's own format: internal part, response header).
type BinaryMeta = (Vec<u8>, Vec<u8>);

/// Bytes counted per object on top of its body and meta: index entries, `Arc`s, channel.
const OBJECT_OVERHEAD: usize = 256;
/// Bytes counted per stored chunk: its list entry and the `Bytes` handle (Pingora copies each
/// upstream read into an allocation of its own size, so the body itself is counted exactly; a
/// slow origin sending small reads makes many chunks).
const CHUNK_OVERHEAD: usize = 48;
/// The most one `read_body` returns, so a hit on a large chunk list still streams in pieces.
const MAX_READ: usize = 64 * 1024;

pub(crate) const FILL_ABORTED: ErrorType = ErrorType::Custom("CacheFillAborted");

/// The only completion signal of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FillState {
    /// `written` bytes are readable; more may come.
    Filling { written: usize },
    /// Published by `finish` alone, after checking the length.
    Complete,
    /// The writer failed or went away: readers must not see a clean end.
    Failed,
}

/// A response body: upstream chunks in order, each with its starting offset.
struct Body {
    /// The declared Content-Length (only responses with one are stored).
    len: usize,
    chunks: std::sync::RwLock<Vec<(usize, Bytes)>>,
    state: watch::Sender<FillState>,
    /// A fill too large for the memory tier: chunks already in its disk file are dropped from
    /// `chunks`, and readers read those bytes from the file.
    spill: Option<Spill>,
}

struct Spill {
    file: Arc<std::fs::File>,
    persisted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Body {
    fn new(len: usize, state: FillState) -> Body {
        Body {
            len,
            chunks: std::sync::RwLock::new(Vec::new()),
            state: watch::channel(state).0,
            spill: None,
        }
    }

    /// Drops the chunks a spilling fill has written to its file.
    fn trim(&self) {
        if let Some(sp) = &self.spill {
            let persisted = sp.persisted.load(Ordering::Acquire);
            let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
            let n = chunks.partition_point(|(start, c)| start + c.len() <= persisted);
            chunks.drain(..n);
        }
    }

    /// For a spilling fill: up to `MAX_READ` bytes from `pos` that are in the file (never
    /// past `end`), read on the blocking pool; `None` if `pos` is not in the file yet.
    async fn read_spilled(&self, pos: usize, end: usize) -> Result<Option<Bytes>> {
        let Some(sp) = &self.spill else { return Ok(None) };
        let persisted = sp.persisted.load(Ordering::Acquire).min(end);
        if pos >= persisted {
            return Ok(None);
        }
        let n = (persisted - pos).min(MAX_READ);
        let file = sp.file.clone();
        let read = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, pos as u64).map(|()| buf)
        })
        .await
        .map_err(|e| Error::because(ErrorType::InternalError, "cache: reading a spilled fill", e))?
        .map_err(|e| Error::because(FILL_ABORTED, "cache: reading a spilled fill", e))?;
        Ok(Some(Bytes::from(read)))
    }

    /// Up to `max` bytes from `pos`, if written (never past `end`).
    fn slice(&self, pos: usize, end: usize) -> Option<Bytes> {
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        // The last chunk starting at or before `pos`.
        let i = chunks
            .partition_point(|(start, _)| *start <= pos)
            .checked_sub(1)?;
        let (start, chunk) = &chunks[i];
        let from = pos - start;
        if from >= chunk.len() {
            return None;
        }
        let to = chunk.len().min(from + MAX_READ).min(end - start);
        Some(chunk.slice(from..to))
    }
}

/// A committed object in the memory tier.
struct Object {
    meta: BinaryMeta,
    body: Arc<Body>,
    /// Bytes charged against the memory bound.
    weight: usize,
    /// Position in the LRU order.
    tick: u64,
    /// The asset (route + id) it belongs to, for purges.
    asset: String,
}

/// A fill in progress.
struct Fill {
    id: u64,
    meta: BinaryMeta,
    body: Arc<Body>,
}

#[derive(Default)]
struct Index {
    objects: HashMap<HashBinary, Object>,
    /// tick -> key, oldest first.
    lru: BTreeMap<u64, HashBinary>,
    next_tick: u64,
    /// In-flight fills by key: what new lookups join.
    fills: HashMap<HashBinary, Fill>,
    /// asset -> keys (objects and fills) stored for it.
    assets: HashMap<String, HashSet<HashBinary>>,
    bytes: usize,
}

impl Index {
    fn touch(&mut self, key: &HashBinary) {
        let tick = self.next_tick;
        if let Some(o) = self.objects.get_mut(key) {
            self.lru.remove(&o.tick);
            o.tick = tick;
            self.lru.insert(tick, *key);
            self.next_tick += 1;
        }
    }

    fn remove_object(&mut self, key: &HashBinary) -> Option<Object> {
        let o = self.objects.remove(key)?;
        self.lru.remove(&o.tick);
        self.bytes -= o.weight;
        self.forget_asset_key(&o.asset.clone(), key);
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
}

/// Sizes for the admin listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub memory_bytes: usize,
    pub memory_limit: usize,
    pub objects: usize,
    pub fills: usize,
    /// `None`: no disk tier.
    pub disk: Option<DiskStats>,
}

pub(crate) struct MemStorage {
    index: Mutex<Index>,
    limit: usize,
    next_id: AtomicU64,
    metrics: &'static CacheMetrics,
    /// The disk tier, if configured: lookups fall through to it, fills are copied to it.
    disk: Option<&'static DiskStore>,
    /// Body bytes of the fills in progress that are held in memory whole (declared lengths):
    /// with the committed objects, what `limit` bounds.
    fill_bytes: AtomicUsize,
}

impl MemStorage {
    pub(crate) fn new(
        limit: usize,
        metrics: &'static CacheMetrics,
        disk: Option<&'static DiskStore>,
    ) -> MemStorage {
        MemStorage {
            index: Mutex::new(Index::default()),
            limit,
            next_id: AtomicU64::new(0),
            metrics,
            disk,
            fill_bytes: AtomicUsize::new(0),
        }
    }

    /// Whether a new fill of `len` body bytes may start: the fills in progress held in memory
    /// stay within the memory bound together (committed objects are evicted to make room for
    /// them). A fill too large for memory that goes to the disk tier holds only what waits for
    /// its file, so it is always admitted.
    pub(crate) fn admits_fill(&self, len: usize) -> bool {
        if self.too_large(len) {
            return self.disk.is_some_and(|d| d.can_hold(len));
        }
        self.fill_bytes.load(Ordering::Relaxed) + len <= self.limit
    }

    fn too_large(&self, len: usize) -> bool {
        len + OBJECT_OVERHEAD > self.limit
    }

    /// A poisoned lock only means another request panicked mid-update; the index stays usable.
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> Stats {
        let i = self.index();
        Stats {
            memory_bytes: i.bytes,
            memory_limit: self.limit,
            objects: i.objects.len(),
            fills: i.fills.len(),
            disk: self.disk.map(|d| d.stats()),
        }
    }

    /// Whether `key` has a fill in progress.
    pub(crate) fn has_fill(&self, key: &HashBinary) -> bool {
        self.index().fills.contains_key(key)
    }

    /// Removes every stored object of `asset` (the `user_tag` of its keys) and detaches its
    /// fills: their readers finish, but the fills are not committed and new requests miss.
    /// Returns whether anything was removed.
    pub(crate) fn purge_asset(&self, asset: &str) -> bool {
        let mut removed = self.disk.is_some_and(|d| d.purge_asset(asset));
        let mut i = self.index();
        let Some(keys) = i.assets.remove(asset) else {
            return removed;
        };
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

    /// The asset tags starting with `prefix` that have something in either tier (objects,
    /// fills, disk files): what a purge of a whole route goes through (issue 19).
    pub(crate) fn assets_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut tags: Vec<String> = self
            .index()
            .assets
            .keys()
            .filter(|a| a.starts_with(prefix))
            .cloned()
            .collect();
        if let Some(d) = self.disk {
            tags.extend(d.assets_with_prefix(prefix));
        }
        tags.sort();
        tags.dedup();
        tags
    }

    /// Called by a writer's `finish`: commits the fill if it is still the key's current one
    /// (a purge, or a newer writer after a lock timeout, detaches it), evicting the least
    /// recently used objects to stay within the bound. Returns whether the fill was still
    /// current (whether its disk copy may be published), even if it is too large for memory.
    fn commit(&self, key: &HashBinary, asset: &str, id: u64, charged: usize) -> bool {
        let mut i = self.index();
        if i.fills.get(key).map(|f| f.id) != Some(id) {
            return false;
        }
        let Some(fill) = i.fills.remove(key) else {
            return false;
        };
        let chunks = fill.body.chunks.read().unwrap_or_else(|e| e.into_inner()).len();
        let weight =
            fill.body.len + fill.meta.0.len() + fill.meta.1.len() + OBJECT_OVERHEAD + chunks * CHUNK_OVERHEAD;
        // The previous version goes whether or not this one fits: lookups try memory first, so
        // a stale object left here would hide the new one on disk.
        i.remove_object(key);
        if weight > self.limit {
            // Never admitted: it would evict everything, itself included.
            i.forget_asset_key(asset, key);
            return true;
        }
        // The other fills in progress hold memory too: objects make room for them.
        let filling = self.fill_bytes.load(Ordering::Relaxed).saturating_sub(charged);
        while i.bytes + weight + filling > self.limit {
            let Some((_, victim)) = i.lru.pop_first() else {
                break;
            };
            if let Some(o) = i.objects.remove(&victim) {
                i.bytes -= o.weight;
                let asset = o.asset.clone();
                i.forget_asset_key(&asset, &victim);
                self.metrics.evictions.inc();
            }
        }
        let tick = i.next_tick;
        i.next_tick += 1;
        i.lru.insert(tick, *key);
        i.bytes += weight;
        i.objects.insert(
            *key,
            Object {
                meta: fill.meta,
                body: fill.body.clone(),
                weight,
                tick,
                asset: asset.to_string(),
            },
        );
        i.assets.entry(asset.to_string()).or_default().insert(*key);
        self.metrics.stored_bytes.inc_by(fill.body.len as u64);
        self.metrics.memory_bytes.set(i.bytes as i64);
        true
    }

    /// Called when a fill fails: new lookups must not find it.
    fn abandon(&self, key: &HashBinary, asset: &str, id: u64) {
        let mut i = self.index();
        if i.fills.get(key).map(|f| f.id) == Some(id) {
            i.fills.remove(key);
            i.forget_asset_key(asset, key);
        }
    }
}

fn meta_of(m: &BinaryMeta) -> Result<CacheMeta> {
    CacheMeta::deserialize(&m.0, &m.1)
}

#[async_trait]
impl Storage for MemStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let k = key.combined_bin();
        {
            let mut i = self.index();
            // A fill first: behind a stale object's refresh, new requests follow the new body.
            if let Some(f) = i.fills.get(&k) {
                if *f.state_now() != FillState::Failed {
                    let meta = meta_of(&f.meta)?;
                    let reader = Reader::new(f.body.clone(), true, Some(self.metrics));
                    return Ok(Some((meta, Box::new(reader))));
                }
            }
            if let Some(o) = i.objects.get(&k) {
                let meta = meta_of(&o.meta)?;
                let reader = Reader::new(o.body.clone(), false, Some(self.metrics));
                i.touch(&k);
                return Ok(Some((meta, Box::new(reader))));
            }
        }
        // Then the disk, streamed from its file (not promoted to memory).
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
        let k = key.combined_bin();
        let i = self.index();
        match i.fills.get(&k).filter(|f| f.id == id) {
            // Not counted in the hit metrics: these bytes come from the origin.
            Some(f) => Ok(Some((
                meta_of(&f.meta)?,
                Box::new(Reader::new(f.body.clone(), true, None)),
            ))),
            // Returning None would make Pingora panic; the fill was purged or failed already.
            None => Error::e_explain(FILL_ABORTED, "cache: the fill is gone"),
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let len = super::policy::content_length(meta.response_header())
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache: no Content-Length"))?;
        let k = key.combined_bin();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let asset = key.user_tag.clone();
        let serialized = meta.serialize()?;
        // Creating the temp file is file-system work: not on the runtime thread.
        let disk = match self.disk {
            Some(d) => {
                let (a, m) = (asset.clone(), serialized.clone());
                tokio::task::spawn_blocking(move || d.start_write(k, id, &a, len, m))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        let mut body = Body::new(len, FillState::Filling { written: 0 });
        // Too large for memory: to disk only, held in memory only until written there.
        // (Without a disk copy such a fill is never admitted at `finish`; `Cache` does not
        // store objects larger than every tier, so it does not happen outside unit tests.)
        let too_large = self.too_large(len + serialized.0.len() + serialized.1.len());
        if let (true, Some(d)) = (too_large, &disk) {
            body.spill = Some(Spill {
                file: d.file.clone(),
                persisted: d.persisted.clone(),
            });
        }
        // Charged until the writer goes (committed, the object is charged in the index).
        let charged = if body.spill.is_some() { 0 } else { len };
        self.fill_bytes.fetch_add(charged, Ordering::Relaxed);
        let body = Arc::new(body);
        let mut i = self.index();
        // Registered before returning: Pingora releases the cache lock right after this, and
        // the waiters' next lookup must find the fill. A previous writer (after a lock
        // timeout) keeps its readers, but it is no longer the one that commits.
        i.fills.insert(
            k,
            Fill {
                id,
                meta: serialized,
                body: body.clone(),
            },
        );
        i.assets.entry(asset.clone()).or_default().insert(k);
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
            charged,
            committed: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let k = target.key().combined_bin();
        let on_disk = self.disk.is_some_and(|d| d.purge_key(&k));
        let mut i = self.index();
        let removed = i.remove_object(&k).is_some() | on_disk;
        self.metrics.memory_bytes.set(i.bytes as i64);
        Ok(if removed {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let k = key.combined_bin();
        let serialized = meta.serialize()?;
        let in_memory = match self.index().objects.get_mut(&k) {
            Some(o) => {
                o.meta = serialized.clone();
                true
            }
            // Pingora's MemCache panics here; the object may have been evicted meanwhile.
            None => false,
        };
        let on_disk = match self.disk {
            Some(d) => d.update_meta(&k, serialized).await,
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

impl Fill {
    fn state_now(&self) -> watch::Ref<'_, FillState> {
        self.body.state.borrow()
    }
}

/// Appends a fill; publishes `Failed` unless `finish` succeeded.
struct Writer {
    storage: &'static MemStorage,
    key: HashBinary,
    asset: String,
    id: u64,
    tag: U64WriteId,
    body: Arc<Body>,
    written: usize,
    done: bool,
    /// The disk copy being written alongside; dropping it discards the temp file.
    disk: Option<DiskWrite>,
    /// Bytes counted in `MemStorage::fill_bytes` for this fill, released on drop.
    charged: usize,
    /// `finish` checked the length and committed to memory.
    committed: bool,
}

impl Writer {
    fn fail(&mut self) {
        self.disk = None;
        if !self.done {
            self.done = true;
            if self.committed {
                // `finish` was dropped while it waited for the disk: the body is whole and
                // already an object in memory; only the disk copy is lost.
                self.body.state.send_replace(FillState::Complete);
                return;
            }
            self.body.state.send_replace(FillState::Failed);
            self.storage.abandon(&self.key, &self.asset, self.id);
        }
    }
}

#[async_trait]
impl HandleMiss for Writer {
    /// `eof` is not relied on: Pingora may call `finish` without any write carrying it.
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.written + data.len() > self.body.len {
            self.fail();
            return Error::e_explain(FILL_ABORTED, "cache: body longer than its Content-Length");
        }
        let start = self.written;
        self.written += data.len();
        self.body
            .chunks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((start, data.clone()));
        self.body.state.send_replace(FillState::Filling {
            written: self.written,
        });
        // After publishing to memory readers: the fill waits for the disk (a bounded queue),
        // its readers do not.
        if let Some(d) = &self.disk {
            if !d.write(data).await {
                self.disk = None;
                if self.body.spill.is_some() {
                    // A fill too large for memory cannot go on without its file.
                    self.fail();
                    return Error::e_explain(FILL_ABORTED, "cache: the disk write of a large fill failed");
                }
            }
        }
        self.body.trim();
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        if self.written != self.body.len {
            self.fail();
            return Error::e_explain(FILL_ABORTED, "cache: body shorter than its Content-Length");
        }
        let current = self.storage.commit(&self.key, &self.asset, self.id, self.charged);
        self.committed = true;
        // The disk copy is in place before the fill's readers see the end.
        match self.disk.take() {
            Some(d) if current => d.commit().await,
            _ => {}
        }
        self.done = true;
        self.body.state.send_replace(FillState::Complete);
        Ok(MissFinishType::Created(self.written))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }
}

impl Drop for Writer {
    /// Dropped without `finish`: an upstream error, a cache write error, a cancelled task.
    fn drop(&mut self) {
        self.fail();
        self.storage.fill_bytes.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

/// Reads a body, committed or still filling; seekable either way.
pub(crate) struct Reader {
    body: Arc<Body>,
    state: watch::Receiver<FillState>,
    pos: usize,
    end: usize,
    /// The body was still filling at lookup: this request joined another one's fill.
    pub(crate) joined_fill: bool,
    /// `None` for the writer's own reader (its bytes come from the origin).
    metrics: Option<&'static CacheMetrics>,
}

impl Reader {
    fn new(body: Arc<Body>, filling: bool, metrics: Option<&'static CacheMetrics>) -> Reader {
        let joined_fill = filling && *body.state.borrow() != FillState::Complete;
        Reader {
            state: body.state.subscribe(),
            pos: 0,
            end: body.len,
            body,
            joined_fill,
            metrics,
        }
    }
}

#[async_trait]
impl HandleHit for Reader {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            let state = *self.state.borrow_and_update();
            if state == FillState::Failed {
                return Error::e_explain(FILL_ABORTED, "cache: the fill this response follows failed");
            }
            if self.pos >= self.end {
                // A range may end before the fill does; a whole body ends with `Complete`
                // alone, so a writer failing at `finish` still fails its readers.
                if self.end < self.body.len || state == FillState::Complete {
                    return Ok(None);
                }
            } else if let Some(b) = self.body.slice(self.pos, self.end) {
                self.pos += b.len();
                if let Some(m) = self.metrics {
                    m.hit_bytes.inc_by(b.len() as u64);
                }
                return Ok(Some(b));
            } else if let Some(b) = self.body.read_spilled(self.pos, self.end).await? {
                self.pos += b.len();
                if let Some(m) = self.metrics {
                    m.hit_bytes.inc_by(b.len() as u64);
                }
                return Ok(Some(b));
            }
            // Readers hold the sender (in `body`), so this cannot end by the channel closing;
            // if it ever did, it is a failure, never a clean end.
            if self.state.changed().await.is_err() {
                return Error::e_explain(FILL_ABORTED, "cache: the fill went away");
            }
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    /// Pingora answers Range on a hit only if the handler can seek.
    fn can_seek(&self) -> bool {
        true
    }

    /// `end` is exclusive. Checked against the declared length, not what has arrived: a
    /// range of a fill waits for its bytes.
    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("cache: seek {start} past the end ({})", self.body.len),
            );
        }
        self.pos = start;
        self.end = end.map_or(self.body.len, |e| e.min(self.body.len));
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pingora::cache::trace::Span;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    pub(crate) fn storage(limit: usize) -> &'static MemStorage {
        let metrics = CacheMetrics::get().unwrap();
        Box::leak(Box::new(MemStorage::new(limit, metrics, None)))
    }

    pub(crate) fn meta(len: usize) -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-length", len.to_string()).unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
    }

    fn key(id: &str) -> CacheKey {
        super::super::policy::key("/a/{id}", id, None)
    }

    pub(crate) fn span() -> SpanHandle {
        Span::inactive().handle()
    }

    async fn read_all(h: &mut HitHandler) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = h.read_body().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    /// #932: a writer dropped mid-body fails its readers, never ends them cleanly, and the
    /// next lookup misses.
    #[tokio::test]
    async fn a_dropped_writer_fails_its_readers() {
        let s = storage(1 << 20);
        let k = key("x");
        let mut w = s.get_miss_handler(&k, &meta(10), &span()).await.unwrap();
        w.write_body(Bytes::from_static(b"hello"), false).await.unwrap();
        let (_, mut r) = s.lookup(&k, &span()).await.unwrap().unwrap();
        assert_eq!(r.read_body().await.unwrap().unwrap(), "hello");
        let waiting = tokio::spawn(async move { r.read_body().await });
        drop(w);
        // Bounded: with the guard broken the reader would wait for bytes forever.
        let e = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the reader must end with an error, not wait")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.etype(), &FILL_ABORTED);
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
    }

    /// Fills in progress count against the bound: a new fill is admitted only while they fit
    /// together, committed objects make room for them, and a writer's charge ends with it.
    #[tokio::test]
    async fn fills_in_progress_count_against_the_bound() {
        let s = storage(1 << 20);
        let (big, small) = (600 << 10, 300 << 10);
        let mut w = s.get_miss_handler(&key("a"), &meta(big), &span()).await.unwrap();
        assert!(!s.admits_fill(big), "two 600 KiB fills in 1 MiB");
        assert!(s.admits_fill(small));
        // An object stored while the big fill runs evicts to leave it room.
        let mut o = s
            .get_miss_handler(&key("b"), &meta(small), &span())
            .await
            .unwrap();
        o.write_body(Bytes::from(vec![1u8; small]), true).await.unwrap();
        o.finish().await.unwrap();
        assert_eq!(s.stats().objects, 1);
        let mut o = s
            .get_miss_handler(&key("c"), &meta(small), &span())
            .await
            .unwrap();
        o.write_body(Bytes::from(vec![2u8; small]), true).await.unwrap();
        o.finish().await.unwrap();
        assert_eq!(
            s.stats().objects,
            1,
            "b was evicted: b + c + the fill exceed 1 MiB"
        );
        assert!(s.stats().memory_bytes + big <= 1 << 20);
        // The fill fails: its charge goes with it.
        w.write_body(Bytes::from(vec![3u8; 10]), false).await.unwrap();
        drop(w);
        assert!(s.admits_fill(big));
    }

    /// A new version that does not fit memory still replaces the old one there: lookups try
    /// memory first, and a stale old version would hide the new one (on disk, in production).
    #[tokio::test]
    async fn a_new_version_too_large_for_memory_removes_the_old_one() {
        let s = storage(1 << 20);
        let k = key("v");
        let mut w = s.get_miss_handler(&k, &meta(5), &span()).await.unwrap();
        w.write_body(Bytes::from_static(b"small"), true).await.unwrap();
        w.finish().await.unwrap();
        assert!(s.lookup(&k, &span()).await.unwrap().is_some());
        let big = 2 << 20;
        let mut w = s.get_miss_handler(&k, &meta(big), &span()).await.unwrap();
        w.write_body(Bytes::from(vec![0u8; big]), true).await.unwrap();
        w.finish().await.unwrap();
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
        assert_eq!(s.stats().objects, 0);
    }

    /// A body shorter than its Content-Length is a failure at `finish`, not an object.
    #[tokio::test]
    async fn a_short_body_is_not_committed() {
        let s = storage(1 << 20);
        let k = key("short");
        let mut w = s.get_miss_handler(&k, &meta(10), &span()).await.unwrap();
        w.write_body(Bytes::from_static(b"hello"), true).await.unwrap();
        let (_, mut r) = s.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(w.finish().await.is_err());
        let read = tokio::time::timeout(Duration::from_secs(10), read_all(&mut r)).await;
        assert!(read
            .expect("the reader must end with an error, not wait")
            .is_err());
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
        assert_eq!(s.stats().objects, 0);
    }

    /// A `finish` dropped while it waits for the disk rename (its task cancelled): the body is
    /// whole and already committed to memory, so its readers end cleanly and it is a hit;
    /// only the disk copy may be lost (regression test for 32a3999).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finish_dropped_during_the_rename_completes_the_fill() {
        let metrics = CacheMetrics::get().unwrap();
        let dir = std::env::temp_dir().join(format!("agw-storage-unit-finish-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let disk: &'static DiskStore = Box::leak(Box::new(DiskStore::open(&dir, 64 << 20, metrics).unwrap()));
        let s: &'static MemStorage = Box::leak(Box::new(MemStorage::new(64 << 20, metrics, Some(disk))));
        let k = key("dropped-finish");
        let (chunk, chunks) = (1 << 20, 16);
        let mut w = s
            .get_miss_handler(&k, &meta(chunk * chunks), &span())
            .await
            .unwrap();
        let (_, mut r) = s.lookup(&k, &span()).await.unwrap().unwrap();
        let reader = tokio::spawn(async move { read_all(&mut r).await });
        for i in 0..chunks {
            w.write_body(Bytes::from(vec![i as u8; chunk]), false)
                .await
                .unwrap();
        }
        // The disk writer still has megabytes to write, then the rename: `finish` waits.
        let mut finish = w.finish();
        assert!(
            futures::poll!(&mut finish).is_pending(),
            "finish did not wait for the disk"
        );
        drop(finish);
        let body = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the reader must end, not wait")
            .unwrap()
            .expect("the fill's reader must end cleanly");
        assert_eq!(body.len(), chunk * chunks);
        assert!(s.lookup(&k, &span()).await.unwrap().is_some(), "not a hit");
        assert_eq!(s.stats().objects, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Readers follow the fill, a range of it waits for its bytes, and `finish` commits.
    #[tokio::test]
    async fn readers_follow_the_fill_and_seek() {
        let s = storage(1 << 20);
        let k = key("fill");
        let mut w = s.get_miss_handler(&k, &meta(10), &span()).await.unwrap();
        let (_, mut whole) = s.lookup(&k, &span()).await.unwrap().unwrap();
        let (_, mut range) = s.lookup(&k, &span()).await.unwrap().unwrap();
        range.seek(6, Some(8)).unwrap();
        assert!(range.seek(10, None).is_err(), "past the declared length");
        range.seek(6, Some(8)).unwrap();
        let whole = tokio::spawn(async move { read_all(&mut whole).await });
        let range = tokio::spawn(async move { read_all(&mut range).await });
        w.write_body(Bytes::from_static(b"01234"), false).await.unwrap();
        w.write_body(Bytes::from_static(b"56789"), false).await.unwrap();
        assert_eq!(range.await.unwrap().unwrap(), b"67");
        assert!(matches!(w.finish().await.unwrap(), MissFinishType::Created(10)));
        assert_eq!(whole.await.unwrap().unwrap(), b"0123456789");
        let (_, mut hit) = s.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(!hit.as_any().downcast_ref::<Reader>().unwrap().joined_fill);
        assert_eq!(read_all(&mut hit).await.unwrap(), b"0123456789");
        assert_eq!(s.stats().objects, 1);
    }

    /// The bound holds: the least recently used object goes, a too-large one is never stored.
    #[tokio::test]
    async fn eviction_is_lru_and_bounded() {
        let limit = 3 * (1000 + 600);
        let s = storage(limit);
        for id in ["a", "b", "c", "d", "big"] {
            if id == "d" {
                // "a" becomes the most recently used: "b" is evicted next.
                assert!(s.lookup(&key("a"), &span()).await.unwrap().is_some());
            }
            let len = if id == "big" { limit } else { 1000 };
            let mut w = s.get_miss_handler(&key(id), &meta(len), &span()).await.unwrap();
            w.write_body(Bytes::from(vec![0u8; len]), true).await.unwrap();
            w.finish().await.unwrap();
            assert!(s.stats().memory_bytes <= limit);
        }
        let present = |id: &'static str| async move { s.lookup(&key(id), &span()).await.unwrap().is_some() };
        assert!(present("a").await && present("c").await && present("d").await);
        assert!(!present("b").await, "b was the least recently used");
        assert!(!present("big").await, "larger than the bound");
        assert!(s.purge_asset(&super::super::policy::asset_tag("/a/{id}", "a")));
        assert!(!present("a").await);
        assert_eq!(s.stats().objects, 2);
    }
}
