//! Publishing a finished disk copy, and the fsync policy.
//!
//! The body file and the meta file are `fdatasync`ed before they are renamed into place, and
//! the directory is synced after both renames, so an object whose name survives a power loss
//! has its bytes; a crash before the renames leaves temporary files, deleted at the next start.
//! The body is renamed first, so a meta never names a body that is not in place. The fill's
//! clients never wait for any of it: the commit runs after the fill's last byte went to its
//! readers (a meta rewrite after a 304 is `fdatasync`ed too, but the directory is not synced:
//! losing it to a power cut only brings back the previous, valid meta).

use super::format::{self, body_file_len, MetaFile};
use super::io::{fs, pools};
use super::writer::{FileWriter, Job};
use super::DiskStore;
use pingora::cache::key::HashBinary;
use std::io;

impl DiskStore {
    /// Publishes a whole copy if it is still the key's current write (a purge, or a newer
    /// write after a lock timeout, wins over it).
    pub(super) async fn commit(&'static self, job: Job, mut w: FileWriter) -> bool {
        let (key, id) = (job.key, job.id);
        if self.index().write_doomed(&key, id) {
            let path = w.path.clone();
            pools().write.spawn(move || drop(fs::remove(&path)));
            self.write_ended(&key, id);
            return false;
        }
        let meta = format::encode_meta(&MetaFile {
            id,
            body_len: job.len as u64,
            meta: job.meta,
            asset: job.asset.clone(),
        });
        let published = pools()
            .write
            .run(move || {
                let r = self.publish(&key, id, &mut w, &meta);
                if r.is_err() {
                    let _ = fs::remove(&w.path);
                }
                r
            })
            .await;
        let size = match published {
            Ok(size) => size,
            Err(e) => {
                self.health.error(&self.dir, "committing", &e, self.metrics);
                self.write_ended(&key, id);
                return false;
            }
        };
        self.health.ok(&self.dir, self.metrics);
        let mut i = self.index();
        if i.unreserve(&key, id) {
            i.insert(key, id, size, job.asset);
            let victims = i.evict(self.limit, 0);
            self.metrics.disk_bytes.set(i.bytes as i64);
            drop(i);
            self.evicted(victims);
            true
        } else {
            // Purged or superseded while it was published: take it back.
            drop(i);
            self.delete(vec![(key, id)]);
            false
        }
    }

    /// Runs on the write pool: trailer, `fdatasync`, renames (body first: a meta never names a
    /// body that is not in place), directory sync, the replaced object's body deleted.
    /// Returns the object's size on disk.
    fn publish(&self, key: &HashBinary, id: u64, w: &mut FileWriter, meta: &[u8]) -> io::Result<u64> {
        let trailer = format::body_trailer(id, w.written, &w.crcs);
        fs::write_at(&w.file, &w.path, &trailer, w.written)?;
        fs::sync_data(&w.file, &w.path)?;
        let meta_tmp = self.tmp_path(key, id);
        let m = fs::create(&meta_tmp)?;
        let written = fs::write_at(&m, &meta_tmp, meta, 0).and_then(|()| fs::sync_data(&m, &meta_tmp));
        if let Err(e) = written {
            let _ = fs::remove(&meta_tmp);
            return Err(e);
        }
        let _stripe = self.stripe(key);
        let body = self.dir.join(format::body_name(key, id));
        let meta_path = self.dir.join(format::meta_name(key));
        let old = self.current_id(key);
        let renamed = fs::rename(&w.path, &body).and_then(|()| fs::rename(&meta_tmp, &meta_path));
        if let Err(e) = renamed {
            let _ = fs::remove(&meta_tmp);
            let _ = fs::remove(&body);
            return Err(e);
        }
        fs::sync_dir(&self.dir)?;
        if let Some(old) = old.filter(|o| *o != id) {
            fs::remove(&self.dir.join(format::body_name(key, old)))?;
        }
        Ok(body_file_len(w.written) + meta.len() as u64)
    }

    /// The id the key's meta file names now (on a pool thread, under the key's stripe).
    pub(super) fn current_id(&self, key: &HashBinary) -> Option<u64> {
        let bytes = fs::read_small(&self.dir.join(format::meta_name(key)), format::MAX_META).ok()?;
        format::decode_meta(&bytes).ok().map(|m| m.id)
    }
}
