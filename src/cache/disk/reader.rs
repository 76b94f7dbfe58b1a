//! Reading the disk tier: finding an object ([`DiskStore::lookup`]) and streaming it
//! ([`DiskReader`]), every 64 KiB block checked against its checksum before a byte of it is
//! sent. A block that does not match ends the response as incomplete (an `Err` to Pingora,
//! which closes the connection: never a clean end), and the object is deleted.

use super::format::{self, MetaFile, BLOCK, FOOTER};
use super::io::{fs, pools};
use super::DiskStore;
use crate::cache::index::ObjectId;
use crate::metrics::CacheMetrics;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::HashBinary;
use pingora::cache::storage::HandleHit;
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub(crate) const DISK_READ: ErrorType = ErrorType::Custom("CacheDiskRead");
/// Checksums read at a time (a window covering 64 MiB of body).
const TABLE_WINDOW: usize = 1024;

fn damaged(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads `len` bytes at `offset` and checks them against `crc`, on the read pool. The buffer
/// is allocated here, by the caller's thread, and not zeroed (the read fills it).
pub(crate) async fn read_block(
    file: &Arc<File>,
    path: &Arc<Path>,
    offset: u64,
    len: usize,
    crc: u32,
) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    let (f, p) = (file.clone(), path.clone());
    let buf = pools()
        .read
        .run(move || {
            fs::read_at_uninit(&f, &p, &mut buf, len, offset)?;
            if format::crc(&buf) != crc {
                return Err(damaged("a block does not match its checksum"));
            }
            Ok(buf)
        })
        .await?;
    Ok(buf.freeze())
}

/// What a lookup found on disk.
enum Found {
    Missing,
    /// A meta file that does not parse, or a body that does not match it.
    Damaged(&'static str, Option<u64>),
    Object {
        meta: MetaFile,
        file: File,
        /// Both files.
        size: u64,
    },
}

impl DiskStore {
    /// Opens the key's object, on the read pool. A meta replaced between reading it and
    /// opening its body (the old body is deleted right after) is read again once.
    fn open_object(&self, key: &HashBinary) -> io::Result<Found> {
        for _ in 0..2 {
            let meta_path = self.dir.join(format::meta_name(key));
            let bytes = match fs::read_small(&meta_path, format::MAX_META) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
                r => r?,
            };
            let meta = match format::decode_meta(&bytes) {
                Ok(m) => m,
                Err(what) => return Ok(Found::Damaged(what, None)),
            };
            let body_path = self.dir.join(format::body_name(key, meta.id));
            let file = match fs::open(&body_path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                r => r?,
            };
            let len = fs::len(&file, &body_path)?;
            if len < FOOTER as u64 {
                return Ok(Found::Damaged("body shorter than its footer", Some(meta.id)));
            }
            let mut footer = [0u8; FOOTER];
            fs::read_at(&file, &body_path, &mut footer, len - FOOTER as u64)?;
            match format::check_footer(&footer, len, meta.id) {
                Ok(body_len) if body_len == meta.body_len => {}
                Ok(_) => return Ok(Found::Damaged("body length", Some(meta.id))),
                Err(what) => return Ok(Found::Damaged(what, Some(meta.id))),
            }
            let size = len + bytes.len() as u64;
            return Ok(Found::Object { meta, file, size });
        }
        Ok(Found::Damaged("the meta names a missing body", None))
    }

    /// A disk hit: the meta (tagged with its object id) and a reader, or `None`. A key this
    /// process has not indexed is looked for too: another process (the old one during an
    /// upgrade) may have stored it.
    pub(crate) async fn lookup(&'static self, key: &HashBinary) -> Result<Option<(CacheMeta, DiskReader)>> {
        let (removals, known) = {
            let i = self.index();
            (i.removals, i.get(key).map(|e| e.id))
        };
        let k = *key;
        let found = pools().read.run(move || self.open_object(&k)).await;
        let (meta, file, size) = match found {
            Ok(Found::Object { meta, file, size }) => (meta, file, size),
            Ok(Found::Missing) => {
                if let Some(id) = known {
                    let mut i = self.index();
                    if i.get(key).map(|e| e.id) == Some(id) {
                        i.forget(key);
                        self.metrics.disk_bytes.set(i.bytes as i64);
                    }
                }
                return Ok(None);
            }
            Ok(Found::Damaged(what, id)) => {
                self.damaged(key, id, what);
                return Ok(None);
            }
            Err(e) => {
                log::warn!("cache: reading disk object {}: {e}", format::hex(key));
                return Ok(None);
            }
        };
        let id = meta.id;
        // Deserialized here, on a runtime thread (Pingora keeps a decompression context per
        // thread that touches a meta).
        let Ok(mut cache_meta) = CacheMeta::deserialize(&meta.meta.0, &meta.meta.1) else {
            self.damaged(key, Some(id), "meta");
            return Ok(None);
        };
        {
            let mut i = self.index();
            if i.is_doomed(&(*key, id)) || i.write_doomed(key, id) {
                return Ok(None);
            }
            match i.get(key).map(|e| e.id) {
                Some(known) if known == id => i.touch(key),
                // Purged or evicted while this lookup ran: its files are going.
                None if i.removals != removals => return Ok(None),
                // Stored by another process sharing the directory: taken into the index.
                _ => {
                    i.insert(*key, id, size, meta.asset.clone());
                    let victims = i.evict(self.limit, 0);
                    self.metrics.disk_bytes.set(i.bytes as i64);
                    drop(i);
                    self.evicted(victims);
                }
            }
        }
        cache_meta.extensions_mut().insert(ObjectId(id));
        self.metrics.disk_hits.inc();
        let body_len = meta.body_len as usize;
        let path: Arc<Path> = Arc::from(self.dir.join(format::body_name(key, id)).as_path());
        Ok(Some((
            cache_meta,
            DiskReader {
                store: self,
                key: *key,
                id,
                file: Arc::new(file),
                path,
                len: body_len,
                pos: 0,
                end: body_len,
                table_start: 0,
                table: Vec::new(),
                metrics: self.metrics,
            },
        )))
    }

    /// An object that fails a check: counted, deleted, named in one warning (a second reader
    /// of the same object finds it doomed already).
    pub(crate) fn damaged(&'static self, key: &HashBinary, id: Option<u64>, what: &str) {
        let mut i = self.index();
        let Some(id) = id else {
            // Not even its meta file parses: delete that (its body, unnamed, is left to the
            // next start's scan).
            drop(i);
            self.metrics.disk_damaged.inc();
            log::warn!(
                "cache: disk object {} is damaged ({what}): deleted",
                format::hex(key)
            );
            let (k, path) = (*key, self.dir.join(format::meta_name(key)));
            pools().write.spawn(move || {
                let _stripe = self.stripe(&k);
                // Unless a new object replaced it meanwhile.
                if fs::read_small(&path, format::MAX_META).is_ok_and(|b| format::decode_meta(&b).is_err()) {
                    drop(fs::remove(&path));
                }
            });
            return;
        };
        if i.is_doomed(&(*key, id)) {
            return;
        }
        let asset = match i.get(key) {
            Some(e) if e.id == id => {
                let a = e.asset.replace('\0', " ");
                i.remove(key);
                a
            }
            _ => {
                i.doom(*key, id);
                "?".to_string()
            }
        };
        self.metrics.disk_bytes.set(i.bytes as i64);
        drop(i);
        self.metrics.disk_damaged.inc();
        log::warn!(
            "cache: disk object {} (asset {asset}) is damaged ({what}): deleted; the next request fetches it again",
            format::hex(key)
        );
        self.delete(vec![(*key, id)]);
    }
}

/// Streams a disk object in checked blocks; seekable. The file stays readable after the
/// object is evicted, purged or replaced (Unix semantics), so a response in flight goes on.
pub(crate) struct DiskReader {
    store: &'static DiskStore,
    key: HashBinary,
    id: u64,
    file: Arc<File>,
    path: Arc<Path>,
    len: usize,
    pos: usize,
    end: usize,
    /// Checksums of blocks `table_start..table_start + table.len()`.
    table_start: usize,
    table: Vec<u32>,
    metrics: &'static CacheMetrics,
}

impl DiskReader {
    /// The checksum of block `b`, reading a window of the table when needed.
    async fn crc(&mut self, b: usize) -> io::Result<u32> {
        if b < self.table_start || b >= self.table_start + self.table.len() {
            let blocks = format::blocks(self.len as u64) as usize;
            let n = TABLE_WINDOW.min(blocks - b);
            let mut buf = vec![0u8; 4 * n];
            let offset = format::table_offset(self.len as u64) + 4 * b as u64;
            let (f, p) = (self.file.clone(), self.path.clone());
            let buf = pools()
                .read
                .run(move || fs::read_at(&f, &p, &mut buf, offset).map(|()| buf))
                .await?;
            self.table = buf
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            self.table_start = b;
        }
        Ok(self.table[b - self.table_start])
    }

    async fn next(&mut self) -> io::Result<Bytes> {
        let b = self.pos / BLOCK;
        let start = b * BLOCK;
        let block_len = BLOCK.min(self.len - start);
        let crc = self.crc(b).await?;
        let data = read_block(&self.file, &self.path, start as u64, block_len, crc).await?;
        Ok(data.slice(self.pos - start..self.end.min(start + block_len) - start))
    }
}

#[async_trait::async_trait]
impl HandleHit for DiskReader {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        match self.next().await {
            Ok(b) => {
                self.pos += b.len();
                self.metrics.hit_bytes.inc_by(b.len() as u64);
                self.metrics.disk_hit_bytes.inc_by(b.len() as u64);
                Ok(Some(b))
            }
            Err(e) => {
                let what = if e.kind() == io::ErrorKind::InvalidData {
                    "a block does not match its checksum"
                } else {
                    "unreadable"
                };
                self.store.damaged(&self.key, Some(self.id), what);
                Error::e_because(DISK_READ, "cache: reading a disk object", e)
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
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
