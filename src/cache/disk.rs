//! The disk tier: one file per object under `gateway.cache.disk.path`, bounded in bytes with
//! least-recently-used eviction, written while a fill streams and found again after a restart.
//!
//! A file is `<32 hex digits of the key>.obj`:
//!
//! ```text
//! [body][meta internal part][meta header part][asset tag][footer]
//! footer (28 bytes, little endian): body_len u64, internal_len u32, header_len u32,
//!                                   asset_len u32, magic "AGWDISK1"
//! ```
//!
//! The body comes first so it can be appended while it arrives; the meta follows at commit
//! (and is rewritten in place by `update_meta`: truncate to the body, append a new trailer).
//! A fill writes `<hex>.<id>.tmp` from a blocking thread fed by a bounded channel (the fill
//! waits for the disk, never the other way round; the temp file is created and written off
//! the runtime threads; deletions after a purge or a 304 run where they are asked for), and
//! renames it to `<hex>.obj` only after the memory tier's `finish` checked the length. A fill
//! that fails, is purged or loses to a newer writer deletes its temp file. At start-up the
//! directory is scanned: temp files and files whose footer does not add up are deleted, the
//! rest are indexed (key -> size, asset), oldest modification first in the LRU order.
//!
//! Reads stream from the file in pieces of at most 64 KiB; nothing loads a whole object.

use crate::metrics::CacheMetrics;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::HashBinary;
use pingora::cache::storage::HandleHit;
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};

const MAGIC: &[u8; 8] = b"AGWDISK1";
const FOOTER: usize = 8 + 4 + 4 + 4 + 8;
const MAX_READ: usize = 64 * 1024;
/// Chunks queued between a fill and its disk writer.
const QUEUE: usize = 16;

pub(crate) const DISK_READ: ErrorType = ErrorType::Custom("CacheDiskRead");

struct Entry {
    /// The whole file, charged against the bound.
    size: u64,
    tick: u64,
    asset: String,
}

#[derive(Default)]
struct Index {
    entries: HashMap<HashBinary, Entry>,
    lru: BTreeMap<u64, HashBinary>,
    next_tick: u64,
    assets: HashMap<String, HashSet<HashBinary>>,
    /// Writes in progress: key -> (fill id, asset). Only the current one may commit.
    pending: HashMap<HashBinary, (u64, String)>,
    bytes: u64,
}

impl Index {
    fn remove(&mut self, key: &HashBinary) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.lru.remove(&e.tick);
        self.bytes -= e.size;
        if let Some(keys) = self.assets.get_mut(&e.asset) {
            keys.remove(key);
            if keys.is_empty() {
                self.assets.remove(&e.asset);
            }
        }
        Some(e)
    }

    fn insert(&mut self, key: HashBinary, size: u64, asset: String) {
        self.remove(&key);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.lru.insert(tick, key);
        self.bytes += size;
        self.assets.entry(asset.clone()).or_default().insert(key);
        self.entries.insert(key, Entry { size, tick, asset });
    }

    fn touch(&mut self, key: &HashBinary) {
        let tick = self.next_tick;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, *key);
            self.next_tick += 1;
        }
    }
}

/// Sizes for the admin listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskStats {
    pub bytes: u64,
    pub limit: u64,
    pub objects: usize,
}

pub(crate) struct DiskStore {
    dir: PathBuf,
    limit: u64,
    index: Mutex<Index>,
    metrics: &'static CacheMetrics,
}

fn hex(key: &HashBinary) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<HashBinary> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The trailer written after the body: meta, asset tag, footer.
fn trailer(body_len: u64, meta: &(Vec<u8>, Vec<u8>), asset: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(meta.0.len() + meta.1.len() + asset.len() + FOOTER);
    t.extend_from_slice(&meta.0);
    t.extend_from_slice(&meta.1);
    t.extend_from_slice(asset.as_bytes());
    t.extend_from_slice(&body_len.to_le_bytes());
    t.extend_from_slice(&(meta.0.len() as u32).to_le_bytes());
    t.extend_from_slice(&(meta.1.len() as u32).to_le_bytes());
    t.extend_from_slice(&(asset.len() as u32).to_le_bytes());
    t.extend_from_slice(MAGIC);
    t
}

/// What a file's trailer says.
struct Parsed {
    body_len: u64,
    meta: (Vec<u8>, Vec<u8>),
    asset: String,
}

/// Reads and checks the trailer of an open object file.
fn parse(f: &mut File) -> std::io::Result<Parsed> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let file_len = f.metadata()?.len();
    if file_len < FOOTER as u64 {
        return Err(bad("shorter than its footer"));
    }
    let mut footer = [0u8; FOOTER];
    f.seek(SeekFrom::Start(file_len - FOOTER as u64))?;
    f.read_exact(&mut footer)?;
    if &footer[20..] != MAGIC {
        return Err(bad("no footer"));
    }
    let u32_at = |i: usize| u32::from_le_bytes(footer[i..i + 4].try_into().unwrap_or_default()) as u64;
    let body_len = u64::from_le_bytes(footer[0..8].try_into().unwrap_or_default());
    let (l0, l1, la) = (u32_at(8), u32_at(12), u32_at(16));
    if body_len.checked_add(l0 + l1 + la + FOOTER as u64) != Some(file_len) {
        return Err(bad("lengths do not add up"));
    }
    let mut rest = vec![0u8; (l0 + l1 + la) as usize];
    f.seek(SeekFrom::Start(body_len))?;
    f.read_exact(&mut rest)?;
    let asset = String::from_utf8(rest.split_off((l0 + l1) as usize)).map_err(|_| bad("asset tag"))?;
    let internal = rest[..l0 as usize].to_vec();
    let header = rest[l0 as usize..].to_vec();
    CacheMeta::deserialize(&internal, &header).map_err(|_| bad("meta"))?;
    Ok(Parsed {
        body_len,
        meta: (internal, header),
        asset,
    })
}

/// Messages from a fill to its disk writer.
pub(crate) enum Msg {
    Chunk(Bytes),
    /// The fill succeeded: write the trailer and publish the file; the reply says when.
    Commit(oneshot::Sender<()>),
}

/// The fill's side of a disk write; dropping it without a commit discards the temp file.
pub(crate) struct DiskWrite {
    tx: mpsc::Sender<Msg>,
    /// Body bytes already written to the temp file (a fill too large for memory drops them
    /// from memory; its readers read them from `file`).
    pub(crate) persisted: Arc<AtomicUsize>,
    /// A read handle on the temp file (it stays valid after the rename or a deletion).
    pub(crate) file: Arc<File>,
}

impl DiskWrite {
    /// Queues a chunk; `false` if the writer is gone (a disk error: the fill goes on without
    /// its disk copy).
    pub(crate) async fn write(&self, data: Bytes) -> bool {
        self.tx.send(Msg::Chunk(data)).await.is_ok()
    }

    /// Asks for the commit and waits until the file is in place (or was given up).
    pub(crate) async fn commit(self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Commit(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl DiskStore {
    /// Opens (creating it if needed) and scans the directory.
    pub(crate) fn open(dir: &Path, limit: u64, metrics: &'static CacheMetrics) -> Result<DiskStore, String> {
        let err = |e: std::io::Error| format!("gateway.cache.disk.path: {}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(err)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(key) = name.strip_suffix(".obj").and_then(unhex) else {
                continue;
            };
            let parsed = File::open(&path).and_then(|mut f| {
                let p = parse(&mut f)?;
                let m = f.metadata()?;
                Ok((p, m.len(), m.modified().ok()))
            });
            match parsed {
                Ok((p, size, mtime)) => found.push((mtime, key, size, p.asset)),
                Err(e) => {
                    log::warn!("cache: deleting unreadable disk object {}: {e}", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|f| f.0);
        let store = DiskStore {
            dir: dir.to_path_buf(),
            limit,
            index: Mutex::new(Index::default()),
            metrics,
        };
        let victims = {
            let mut i = store.index();
            for (_, key, size, asset) in found {
                i.insert(key, size, asset);
            }
            store.evict(&mut i, 0)
        };
        store.delete(victims);
        let s = store.stats();
        log::info!(
            "cache: disk tier at {}: {} objects, {} of {} bytes",
            dir.display(),
            s.objects,
            s.bytes,
            s.limit
        );
        Ok(store)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> DiskStats {
        let i = self.index();
        DiskStats {
            bytes: i.bytes,
            limit: self.limit,
            objects: i.entries.len(),
        }
    }

    fn path(&self, key: &HashBinary) -> PathBuf {
        self.dir.join(format!("{}.obj", hex(key)))
    }

    /// Pops least recently used entries until `extra` more bytes fit; returns their files.
    fn evict(&self, i: &mut Index, extra: u64) -> Vec<PathBuf> {
        let mut victims = Vec::new();
        while i.bytes + extra > self.limit {
            let Some((_, key)) = i.lru.first_key_value().map(|(t, k)| (*t, *k)) else {
                break;
            };
            i.remove(&key);
            victims.push(self.path(&key));
            self.metrics.disk_evictions.inc();
        }
        self.metrics.disk_bytes.set(i.bytes as i64);
        victims
    }

    fn delete(&self, files: Vec<PathBuf>) {
        for f in files {
            if let Err(e) = std::fs::remove_file(&f) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cache: cannot delete {}: {e}", f.display());
                }
            }
        }
    }

    /// Whether an object of `body_len` body bytes can fit the tier (its trailer aside, which
    /// is small: `start_write` checks exactly).
    pub(crate) fn can_hold(&self, body_len: usize) -> bool {
        (body_len as u64) < self.limit
    }

    /// Starts the disk copy of a fill of `body_len` bytes; `None` if it can never fit.
    pub(crate) fn start_write(
        &'static self,
        key: HashBinary,
        id: u64,
        asset: &str,
        body_len: usize,
        meta: (Vec<u8>, Vec<u8>),
    ) -> Option<DiskWrite> {
        let trailer = trailer(body_len as u64, &meta, asset);
        if body_len as u64 + trailer.len() as u64 > self.limit {
            return None;
        }
        // The process id keeps an old and a new process (during an upgrade) apart.
        let tmp = self
            .dir
            .join(format!("{}.{}.{id}.tmp", hex(&key), std::process::id()));
        // Created here (two short syscalls), so readers of a fill can hold it from the start.
        let opened = File::create(&tmp).and_then(|w| Ok((w, File::open(&tmp)?)));
        let (writer, reader) = match opened {
            Ok(f) => f,
            Err(e) => {
                log::warn!("cache: {}: {e}", tmp.display());
                let _ = std::fs::remove_file(&tmp);
                return None;
            }
        };
        self.index().pending.insert(key, (id, asset.to_string()));
        let (tx, rx) = mpsc::channel(QUEUE);
        let asset = asset.to_string();
        let persisted = Arc::new(AtomicUsize::new(0));
        let p = persisted.clone();
        tokio::task::spawn_blocking(move || self.run_write(key, id, asset, trailer, tmp, writer, p, rx));
        Some(DiskWrite {
            tx,
            persisted,
            file: Arc::new(reader),
        })
    }

    /// The blocking writer of one fill.
    #[allow(clippy::too_many_arguments)]
    fn run_write(
        &self,
        key: HashBinary,
        id: u64,
        asset: String,
        trailer: Vec<u8>,
        tmp: PathBuf,
        mut f: File,
        persisted: Arc<AtomicUsize>,
        mut rx: mpsc::Receiver<Msg>,
    ) {
        let committed = (|| {
            let mut written = 0u64;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Chunk(b) => {
                        if let Err(e) = f.write_all(&b) {
                            log::warn!("cache: writing {}: {e}", tmp.display());
                            return None;
                        }
                        written += b.len() as u64;
                        persisted.store(written as usize, Ordering::Release);
                    }
                    Msg::Commit(reply) => {
                        if let Err(e) = f.write_all(&trailer) {
                            log::warn!("cache: writing {}: {e}", tmp.display());
                            return None;
                        }
                        drop(f);
                        let size = written + trailer.len() as u64;
                        self.publish(key, id, &asset, &tmp, size);
                        drop(reply);
                        return Some(());
                    }
                }
            }
            None
        })();
        if committed.is_none() {
            let mut i = self.index();
            if i.pending.get(&key).map(|p| p.0) == Some(id) {
                i.pending.remove(&key);
            }
            drop(i);
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Renames a finished temp file into place, if its fill is still the key's current one.
    fn publish(&self, key: HashBinary, id: u64, asset: &str, tmp: &Path, size: u64) {
        let victims = {
            let mut i = self.index();
            if i.pending.get(&key).map(|p| p.0) != Some(id) {
                drop(i);
                let _ = std::fs::remove_file(tmp);
                return;
            }
            i.pending.remove(&key);
            i.remove(&key);
            let victims = self.evict(&mut i, size);
            // Under the lock, so a purge or a newer commit cannot interleave.
            match std::fs::rename(tmp, self.path(&key)) {
                Ok(()) => i.insert(key, size, asset.to_string()),
                Err(e) => {
                    log::warn!("cache: renaming {}: {e}", tmp.display());
                    let _ = std::fs::remove_file(tmp);
                    // The previous version is out of the index: its file goes too.
                    let _ = std::fs::remove_file(self.path(&key));
                }
            }
            self.metrics.disk_bytes.set(i.bytes as i64);
            // Evicted either way: their files go.
            victims
        };
        self.delete(victims);
    }

    /// A disk hit: the meta and a reader of the file, or `None`.
    pub(crate) async fn lookup(&'static self, key: &HashBinary) -> Result<Option<(CacheMeta, DiskReader)>> {
        if !self.index().entries.contains_key(key) {
            return Ok(None);
        }
        let path = self.path(key);
        let opened = tokio::task::spawn_blocking(move || {
            let mut f = File::open(&path)?;
            let p = parse(&mut f)?;
            Ok::<_, std::io::Error>((f, p))
        })
        .await
        .map_err(|e| Error::because(ErrorType::InternalError, "cache: disk lookup", e))?;
        match opened {
            Ok((f, p)) => {
                self.index().touch(key);
                let meta = CacheMeta::deserialize(&p.meta.0, &p.meta.1)?;
                self.metrics.disk_hits.inc();
                Ok(Some((
                    meta,
                    DiskReader {
                        file: tokio::fs::File::from_std(f),
                        len: p.body_len as usize,
                        pos: 0,
                        end: p.body_len as usize,
                        seek_pending: true,
                        metrics: self.metrics,
                    },
                )))
            }
            // Evicted or purged meanwhile: a miss, and the index forgets it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.remove_keys(&[*key]);
                Ok(None)
            }
            // Anything else is a miss but not a reason to delete: it may be passing (out of
            // descriptors, a meta rewrite in progress); the next fill replaces a damaged file,
            // and the start-up scan deletes one that does not parse.
            Err(e) => {
                log::warn!("cache: reading disk object {}: {e}", hex(key));
                Ok(None)
            }
        }
    }

    fn remove_keys(&self, keys: &[HashBinary]) -> bool {
        let mut files = Vec::new();
        {
            let mut i = self.index();
            for k in keys {
                if i.remove(k).is_some() {
                    files.push(self.path(k));
                }
            }
            self.metrics.disk_bytes.set(i.bytes as i64);
        }
        let removed = !files.is_empty();
        self.delete(files);
        removed
    }

    /// Removes one stored key (Pingora's purge path; like the memory tier's, it leaves a
    /// write in progress alone).
    pub(crate) fn purge_key(&self, key: &HashBinary) -> bool {
        self.remove_keys(&[*key])
    }

    /// Removes every disk object of `asset` and cancels its writes in progress.
    pub(crate) fn purge_asset(&self, asset: &str) -> bool {
        let keys: Vec<HashBinary> = {
            let mut i = self.index();
            i.pending.retain(|_, (_, a)| a != asset);
            i.assets
                .get(asset)
                .map(|k| k.iter().copied().collect())
                .unwrap_or_default()
        };
        self.remove_keys(&keys)
    }

    /// The asset tags starting with `prefix` with a file or a copy in progress (issue 19:
    /// purge of a whole route).
    pub(crate) fn assets_with_prefix(&self, prefix: &str) -> Vec<String> {
        let i = self.index();
        let files = i.assets.keys();
        let pending = i.pending.values().map(|(_, asset)| asset);
        files
            .chain(pending)
            .filter(|a| a.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Rewrites the meta of a disk object (a 304 refreshed it); `false` if it is not there.
    pub(crate) async fn update_meta(&'static self, key: &HashBinary, meta: (Vec<u8>, Vec<u8>)) -> bool {
        if !self.index().entries.contains_key(key) {
            return false;
        }
        let path = self.path(key);
        let key = *key;
        let done = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
            let p = parse(&mut f)?;
            let t = trailer(p.body_len, &meta, &p.asset);
            f.set_len(p.body_len)?;
            f.seek(SeekFrom::Start(p.body_len))?;
            f.write_all(&t)?;
            Ok::<_, std::io::Error>((p.body_len + t.len() as u64, p.asset))
        })
        .await;
        match done {
            Ok(Ok((size, asset))) => {
                let mut i = self.index();
                if i.entries.contains_key(&key) {
                    i.insert(key, size, asset);
                    let victims = self.evict(&mut i, 0);
                    drop(i);
                    self.delete(victims);
                }
                true
            }
            _ => {
                self.remove_keys(&[key]);
                false
            }
        }
    }
}

/// Streams a disk object in pieces; seekable.
pub(crate) struct DiskReader {
    file: tokio::fs::File,
    len: usize,
    pos: usize,
    end: usize,
    seek_pending: bool,
    metrics: &'static CacheMetrics,
}

#[async_trait::async_trait]
impl HandleHit for DiskReader {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let io = |e| Error::because(DISK_READ, "cache: reading a disk object", e);
        if self.seek_pending {
            self.file
                .seek(SeekFrom::Start(self.pos as u64))
                .await
                .map_err(io)?;
            self.seek_pending = false;
        }
        let want = (self.end - self.pos).min(MAX_READ);
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            let n = (&mut self.file)
                .take((want - buf.len()) as u64)
                .read_buf(&mut buf)
                .await
                .map_err(io)?;
            if n == 0 {
                return Error::e_explain(DISK_READ, "cache: disk object shorter than its length");
            }
        }
        self.pos += buf.len();
        self.metrics.hit_bytes.inc_by(buf.len() as u64);
        self.metrics.disk_hit_bytes.inc_by(buf.len() as u64);
        Ok(Some(buf.freeze()))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("cache: seek {start} past the end ({})", self.len),
            );
        }
        self.pos = start;
        self.end = end.map_or(self.len, |e| e.min(self.len));
        self.seek_pending = true;
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
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("agw-disk-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn meta(len: usize) -> (Vec<u8>, Vec<u8>) {
        crate::cache::storage::tests::meta(len).serialize().unwrap()
    }

    async fn read_all(r: &mut DiskReader) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = r.read_body().await.unwrap() {
            assert!(b.len() <= MAX_READ);
            out.extend_from_slice(&b);
        }
        out
    }

    /// A committed object is found again by a new store on the same directory; temp files and
    /// damaged objects are deleted by the scan; an uncommitted write leaves nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_survive_a_reopen_and_junk_is_deleted() {
        let metrics = CacheMetrics::get().unwrap();
        let d = dir("reopen");
        let store: &'static DiskStore = Box::leak(Box::new(DiskStore::open(&d, 1 << 20, metrics).unwrap()));
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let w = store
            .start_write([1; 16], 1, "asset-1", body.len(), meta(body.len()))
            .unwrap();
        for c in body.chunks(10_000) {
            assert!(w.write(Bytes::copy_from_slice(c)).await);
        }
        w.commit().await;
        // Dropped without a commit: its temp file goes.
        let w = store.start_write([2; 16], 2, "asset-2", 10, meta(10)).unwrap();
        assert!(w.write(Bytes::from_static(b"01234")).await);
        drop(w);
        let mut tries = 0;
        while std::fs::read_dir(&d).unwrap().count() != 1 {
            tries += 1;
            assert!(tries < 3000, "the temp file was never deleted");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        std::fs::write(d.join(format!("{}.obj", hex(&[3; 16]))), b"not an object").unwrap();
        std::fs::write(d.join("whatever.1.2.tmp"), b"partial").unwrap();

        let again: &'static DiskStore = Box::leak(Box::new(DiskStore::open(&d, 1 << 20, metrics).unwrap()));
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![format!("{}.obj", hex(&[1; 16]))]);
        assert_eq!(again.stats().objects, 1);
        let (_, mut r) = again.lookup(&[1; 16]).await.unwrap().unwrap();
        assert_eq!(read_all(&mut r).await, body);
        r.seek(150_000, Some(150_010)).unwrap();
        assert_eq!(read_all(&mut r).await, &body[150_000..150_010]);
        assert!(r.seek(200_000, None).is_err());
        assert!(again.lookup(&[2; 16]).await.unwrap().is_none());
        assert!(again.purge_asset("asset-1"));
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
