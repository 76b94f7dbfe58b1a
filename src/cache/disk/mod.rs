//! The disk tier: objects under `gateway.cache.disk.path`, bounded in bytes with
//! least-recently-used eviction, written while a fill streams, checked on every read and
//! found again after a restart.
//!
//! - `format`: the files (a body file with a checksum per 64 KiB block, a meta file);
//! - `index`: what is on disk, the writes in progress, the objects being deleted;
//! - `writer`: a fill's disk copy; `commit`: publishing it (the fsync policy is there);
//! - `progress`: a fill too large for memory reading its own file;
//! - `reader`: lookups and checked reads;
//! - `scan`: what start-up indexes and deletes;
//! - `health`: storing, or stopped by a full or failing disk;
//! - `io`: the threads every file-system call runs on.
//!
//! Each object has an id (unique across processes): its body file is named by it and its meta
//! names it, so deletions and meta rewrites are precise (they never touch a newer object of
//! the same key, stored by a later fill or by the other process during an upgrade), and a
//! revalidation refreshes only the object it started from.

mod commit;
pub(crate) mod format;
mod health;
mod index;
pub(crate) mod io;
mod progress;
mod reader;
mod scan;
mod writer;

pub(crate) use progress::Progress;
pub(crate) use writer::{DiskWrite, Prepared};

use crate::metrics::CacheMetrics;
use format::MetaFile;
use index::{Index, Victim};
use io::{fs, pools, Locked};
use pingora::cache::key::HashBinary;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

/// Stripes of per-key locks, held (on a pool thread) while a key's files are renamed,
/// rewritten or deleted, so those steps never interleave for one key. Lookups take none.
const STRIPES: usize = 64;

/// Sizes for the admin listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskStats {
    pub bytes: u64,
    pub limit: u64,
    pub objects: usize,
    pub writes_in_flight: usize,
    pub state: &'static str,
}

pub(crate) struct DiskStore {
    dir: PathBuf,
    limit: u64,
    index: Mutex<Index>,
    stripes: Vec<Mutex<()>>,
    metrics: &'static CacheMetrics,
    health: health::Health,
    next_tmp: AtomicU64,
}

/// What `-t` checks of the disk tier's directory, without creating anything: it exists and is
/// writable (a probe file), or its nearest existing parent is a writable directory (it is
/// created at start). Returns the size of the file system it is on.
pub(crate) fn check_path(path: &Path) -> Result<u64, String> {
    let mut existing = path;
    while !existing.exists() {
        existing = match existing.parent() {
            // A relative path's last parent is the working directory.
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => return Err("no existing parent directory".to_string()),
        };
    }
    if !existing.is_dir() {
        return Err(format!("{} is not a directory", existing.display()));
    }
    if existing == path {
        let probe = path.join(format!(".asset-gateway-probe-{}", std::process::id()));
        std::fs::write(&probe, b"probe").map_err(|e| format!("not writable: {e}"))?;
        std::fs::remove_file(&probe).map_err(|e| format!("cannot delete a probe file: {e}"))?;
    } else {
        let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
            .map_err(|_| "a NUL in the path".to_string())?;
        // SAFETY: `c` is a valid C string for the duration of the call.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("cannot be created in {}: {e}", existing.display()));
        }
    }
    filesystem_size(existing).map_err(|e| format!("statvfs: {e}"))
}

fn filesystem_size(path: &Path) -> std::io::Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: zeroed is a valid `statvfs`; `c` outlives the call.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_blocks as u64 * s.f_frsize as u64)
}

impl DiskStore {
    /// Opens (creating it if needed) and scans the directory. Runs at start-up, before any
    /// runtime.
    pub(crate) fn open(dir: &Path, limit: u64, metrics: &'static CacheMetrics) -> Result<DiskStore, String> {
        let err = |e: std::io::Error| format!("gateway.cache.disk.path: {}: {e}", dir.display());
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(err)?;
            log::info!("cache: created the disk tier directory {}", dir.display());
        }
        let found = scan::scan(dir).map_err(err)?;
        let store = DiskStore {
            dir: dir.to_path_buf(),
            limit,
            index: Mutex::new(Index::default()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            metrics,
            health: health::Health::new(),
            next_tmp: AtomicU64::new(0),
        };
        metrics.disk_storing.set(1);
        let victims = {
            let mut i = store.index();
            for (_, key, id, size, asset) in found.objects {
                i.insert(key, id, size, asset);
            }
            i.evict(limit, 0)
        };
        for (key, id) in victims {
            let _ = fs::remove(&dir.join(format::meta_name(&key)));
            let _ = fs::remove(&dir.join(format::body_name(&key, id)));
            metrics.disk_evictions.inc();
        }
        let s = store.stats();
        metrics.disk_bytes.set(s.bytes as i64);
        metrics.disk_damaged.inc_by(found.damaged as u64);
        if found.legacy > 0 {
            log::info!(
                "cache: deleted {} disk objects of the previous format (no checksums)",
                found.legacy
            );
        }
        log::info!(
            "cache: disk tier at {}: {} objects, {} of {} bytes ({} damaged and {} orphaned files deleted)",
            dir.display(),
            s.objects,
            s.bytes,
            s.limit,
            found.damaged,
            found.orphans
        );
        Ok(store)
    }

    fn index(&self) -> Locked<'_, Index> {
        io::lock(&self.index)
    }

    fn stripe(&self, key: &HashBinary) -> MutexGuard<'_, ()> {
        let i = key[0] as usize % STRIPES;
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> DiskStats {
        let i = self.index();
        DiskStats {
            bytes: i.bytes,
            limit: self.limit,
            objects: i.len(),
            writes_in_flight: i.writes(),
            state: self.health.state().word(),
        }
    }

    /// Removes every disk object of `asset` and stops its writes in progress from being
    /// published; returns once their files are deleted (a purge survives a crash right after
    /// it answered).
    pub(crate) async fn purge_asset(&'static self, asset: &str) -> bool {
        let (victims, any) = {
            let mut i = self.index();
            let r = i.purge_asset(asset);
            self.metrics.disk_bytes.set(i.bytes as i64);
            r
        };
        for v in victims {
            if let Err(e) = pools().write.run(move || self.delete_files(&v)).await {
                log::warn!("cache: deleting disk object {}: {e}", format::hex(&v.0));
            }
            self.index().buried(&v);
        }
        any
    }

    /// The asset tags starting with `prefix` with an object or a write in progress here.
    pub(crate) fn assets_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.index().assets_with_prefix(prefix)
    }

    /// Removes the key's object (a revalidation answered 404 or 410).
    pub(crate) fn remove_key(&'static self, key: &HashBinary) -> bool {
        let victim = {
            let mut i = self.index();
            let v = i.remove(key);
            self.metrics.disk_bytes.set(i.bytes as i64);
            v
        };
        let removed = victim.is_some();
        self.delete(victim.into_iter().collect());
        removed
    }

    /// Rewrites the meta of object `id` (a 304 refreshed it), atomically (a new meta file
    /// renamed over the old one); `false` if the key's object on disk is another one now.
    pub(crate) async fn update_meta(
        &'static self,
        key: &HashBinary,
        id: u64,
        meta: (Vec<u8>, Vec<u8>),
    ) -> bool {
        let k = *key;
        let rewritten = pools()
            .write
            .run(move || {
                let _stripe = self.stripe(&k);
                let path = self.dir.join(format::meta_name(&k));
                let Ok(bytes) = fs::read_small(&path, format::MAX_META) else {
                    return Ok(None);
                };
                let old = match format::decode_meta(&bytes) {
                    Ok(m) if m.id == id => m,
                    _ => return Ok(None),
                };
                let new = format::encode_meta(&MetaFile { meta, ..old });
                let tmp = self.dir.join(format::tmp_name(&k, id, u64::MAX));
                let f = fs::create(&tmp)?;
                let written = fs::write_at(&f, &tmp, &new, 0)
                    .and_then(|()| fs::sync_data(&f, &tmp))
                    .and_then(|()| fs::rename(&tmp, &path));
                if let Err(e) = written {
                    let _ = fs::remove(&tmp);
                    return Err(e);
                }
                Ok(Some(new.len() as i64 - bytes.len() as i64))
            })
            .await;
        match rewritten {
            Ok(Some(grown)) => {
                let mut i = self.index();
                if let Some(e) = i.get(key).filter(|e| e.id == id) {
                    let (size, asset) = ((e.size as i64 + grown) as u64, e.asset.clone());
                    i.insert(*key, id, size, asset);
                    self.metrics.disk_bytes.set(i.bytes as i64);
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                self.health
                    .error(&self.dir, "rewriting a meta file", &e, self.metrics);
                false
            }
        }
    }
}

impl DiskStore {
    /// A write ended without being published: its room is given back.
    fn write_ended(&self, key: &HashBinary, id: u64) {
        let mut i = self.index();
        if !i.unreserve(key, id) {
            i.buried(&(*key, id));
        }
    }

    /// Deletes objects evicted to stay within the bound.
    pub(crate) fn evicted(&'static self, victims: Vec<Victim>) {
        self.metrics.disk_evictions.inc_by(victims.len() as u64);
        self.delete(victims);
    }

    /// Deletes the files of these objects (precisely: another object of the same key stays),
    /// on the write pool.
    pub(crate) fn delete(&'static self, victims: Vec<Victim>) {
        for v in victims {
            pools().write.spawn(move || {
                if let Err(e) = self.delete_files(&v) {
                    log::warn!("cache: deleting disk object {}: {e}", format::hex(&v.0));
                }
                self.index().buried(&v);
            });
        }
    }

    fn delete_files(&self, (key, id): &Victim) -> std::io::Result<()> {
        let _stripe = self.stripe(key);
        if self.current_id(key) == Some(*id) {
            fs::remove(&self.dir.join(format::meta_name(key)))?;
        }
        fs::remove(&self.dir.join(format::body_name(key, *id)))
    }
}

#[cfg(test)]
mod tests;
