//! The disk copy of a fill: written while the fill streams, published when it is whole.
//!
//! A fill hands its chunks (the same `Bytes` the memory tier holds: no copy) to a bounded
//! queue; a task of its own appends them to a temporary file in batches on the write pool,
//! checksumming each 64 KiB block, so no thread is held for the whole fill. A slow disk slows
//! the fill (the queue is full), never its readers. When the fill finishes, the task writes
//! the checksum table and publishes the object (`commit`); when it is dropped, the temporary
//! file goes.
//!
//! A fill too large for memory reads its own bytes back from the file ([`Progress`]): blocks
//! are published to readers once whole and checksummed, and leave memory only then.
//!
//! The commit (`commit`) publishes the object, with the fsync policy.

use super::format::{self, body_file_len, BLOCK};
use super::io::{fs, pools};
use super::progress::Progress;
use super::DiskStore;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Chunks queued between a fill and its disk copy.
const QUEUE: usize = 16;
/// The most one append job writes.
const BATCH: usize = 256 * 1024;

/// What is known of an object being written.
pub(super) struct Job {
    pub(super) key: HashBinary,
    pub(super) id: u64,
    pub(super) asset: String,
    pub(super) len: usize,
    pub(super) meta: (Vec<u8>, Vec<u8>),
}

/// A temporary file being appended to, and the checksums of its whole blocks so far.
pub(crate) struct FileWriter {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) written: u64,
    hasher: crc32fast::Hasher,
    in_block: usize,
    pub(super) crcs: Vec<u32>,
}

impl FileWriter {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        fs::write_at(&self.file, &self.path, data, self.written)?;
        self.written += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let n = (BLOCK - self.in_block).min(rest.len());
            self.hasher.update(&rest[..n]);
            self.in_block += n;
            rest = &rest[n..];
            if self.in_block == BLOCK {
                let h = std::mem::take(&mut self.hasher);
                self.crcs.push(h.finalize());
                self.in_block = 0;
            }
        }
        Ok(())
    }

    /// The last, partial block.
    fn close_blocks(&mut self) {
        if self.in_block > 0 {
            let h = std::mem::take(&mut self.hasher);
            self.crcs.push(h.finalize());
            self.in_block = 0;
        }
    }
}

/// Creates a temporary file with room for `file_len` bytes. Runs on the write pool.
fn create(path: PathBuf, file_len: u64) -> io::Result<FileWriter> {
    let file = fs::create(&path)?;
    if let Err(e) = fs::allocate(&file, &path, file_len) {
        let _ = fs::remove(&path);
        return Err(e);
    }
    Ok(FileWriter {
        file,
        path,
        written: 0,
        hasher: crc32fast::Hasher::new(),
        in_block: 0,
        crcs: Vec::new(),
    })
}

/// What `finish` tells the copy.
struct Finish {
    /// Answered once every byte is in the file.
    written: oneshot::Sender<bool>,
    /// Answered once the object is published (or given up).
    published: oneshot::Sender<bool>,
}

/// A finished fill's view of its disk copy's last steps.
pub(crate) struct Finishing {
    written: oneshot::Receiver<bool>,
    pub(crate) published: oneshot::Receiver<bool>,
}

impl Finishing {
    /// Every byte is in the file (`false`: the copy failed first).
    pub(crate) async fn written(&mut self) -> bool {
        (&mut self.written).await.unwrap_or(false)
    }
}

/// The fill's side of its disk copy. Dropping it without [`DiskWrite::finish`] discards the
/// copy.
pub(crate) struct DiskWrite {
    chunks: mpsc::Sender<Bytes>,
    finish: oneshot::Sender<Finish>,
    /// Set for a fill too large for memory (its readers read the file).
    pub(crate) progress: Option<Arc<Progress>>,
}

impl DiskWrite {
    /// Queues a chunk; `false` if the copy stopped (a disk error: the fill goes on without it).
    pub(crate) async fn write(&self, data: Bytes) -> bool {
        self.chunks.send(data).await.is_ok()
    }

    /// The fill is whole: the copy writes its last chunks and is committed in the background.
    pub(crate) fn finish(self) -> Finishing {
        let (written, wr) = oneshot::channel();
        let (published, pr) = oneshot::channel();
        let _ = self.finish.send(Finish { written, published });
        drop(self.chunks);
        Finishing {
            written: wr,
            published: pr,
        }
    }
}

/// A temporary file created ahead of a fill too large for memory (by `upstream_response_filter`):
/// such a fill is only admitted once its file exists, so a full or failing disk makes it stream
/// through uncached rather than hold its body in memory.
pub(crate) struct Prepared {
    store: &'static DiskStore,
    key: HashBinary,
    pub(crate) id: u64,
    files: Option<(FileWriter, File)>,
}

impl Drop for Prepared {
    /// Not admitted after all (the response turned out uncacheable, or the request ended).
    fn drop(&mut self) {
        if let Some((w, _)) = self.files.take() {
            pools().write.spawn(move || drop(fs::remove(&w.path)));
            self.store.write_ended(&self.key, self.id);
        }
    }
}

impl DiskStore {
    pub(super) fn tmp_path(&self, key: &HashBinary, id: u64) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format::tmp_name(key, id, n))
    }

    /// Whether an object of `body_len` body bytes can ever fit the tier.
    pub(crate) fn can_hold(&self, body_len: usize) -> bool {
        body_file_len(body_len as u64) + format::MAX_META as u64 / 16 <= self.limit
    }

    /// Sets room aside for the object (evicting others), or `false` if it can never fit.
    fn reserve(&'static self, key: HashBinary, id: u64, asset: &str, len: usize) -> bool {
        if !self.can_hold(len) {
            return false;
        }
        let bytes = body_file_len(len as u64) + format::MAX_META as u64 / 16;
        let victims = self.index().reserve(key, id, asset, bytes, self.limit);
        self.evicted(victims);
        true
    }

    /// Creates the temporary file of a fill too large for memory, before it is admitted.
    pub(crate) async fn prepare(
        &'static self,
        key: HashBinary,
        id: u64,
        asset: &str,
        len: usize,
    ) -> Option<Prepared> {
        if !self.reserve(key, id, asset, len) {
            return None;
        }
        let path = self.tmp_path(&key, id);
        let created = pools()
            .write
            .run(move || {
                let w = create(path, body_file_len(len as u64))?;
                let r = fs::open(&w.path)?;
                Ok((w, r))
            })
            .await;
        match created {
            Ok(files) => Some(Prepared {
                store: self,
                key,
                id,
                files: Some(files),
            }),
            Err(e) => {
                self.health.error(&self.dir, "creating a file", &e, self.metrics);
                self.write_ended(&key, id);
                None
            }
        }
    }

    /// Starts the disk copy of a fill (`prepared`: its file, created ahead). `None` if the
    /// object can never fit the tier.
    pub(crate) fn start_write(
        &'static self,
        key: HashBinary,
        id: u64,
        asset: &str,
        len: usize,
        meta: (Vec<u8>, Vec<u8>),
        prepared: Option<Prepared>,
    ) -> Option<DiskWrite> {
        let files = prepared.and_then(|mut p| {
            if p.key != key {
                // The key gained its variance (`Vary`) since: the room moves with it.
                self.index().unreserve(&p.key, p.id);
                p.key = key;
                if !self.reserve(key, id, asset, len) {
                    return None;
                }
            }
            p.files.take()
        });
        if files.is_none() && !self.reserve(key, id, asset, len) {
            return None;
        }
        let (chunks, rx) = mpsc::channel(QUEUE);
        let (finish, fin) = oneshot::channel();
        let (writer, progress) = match files {
            Some((writer, reader)) => {
                let progress = Arc::new(Progress::new(reader, &writer.path, len));
                (Some(writer), Some(progress))
            }
            None => (None, None),
        };
        let job = Job {
            key,
            id,
            asset: asset.to_string(),
            len,
            meta,
        };
        tokio::spawn(self.run(job, writer, rx, fin, progress.clone()));
        Some(DiskWrite {
            chunks,
            finish,
            progress,
        })
    }

    /// The copy's task: create (unless prepared), append, then commit or discard.
    async fn run(
        &'static self,
        job: Job,
        writer: Option<FileWriter>,
        mut chunks: mpsc::Receiver<Bytes>,
        finish: oneshot::Receiver<Finish>,
        progress: Option<Arc<Progress>>,
    ) {
        let fail = |what: &str, e: &io::Error| {
            self.health.error(&self.dir, what, e, self.metrics);
            if let Some(p) = &progress {
                p.failed.store(true, Ordering::Release);
            }
            self.write_ended(&job.key, job.id);
        };
        let mut w = match writer {
            Some(w) => w,
            None => {
                let path = self.tmp_path(&job.key, job.id);
                let len = body_file_len(job.len as u64);
                match pools().write.run(move || create(path, len)).await {
                    Ok(w) => w,
                    Err(e) => return fail("creating a file", &e),
                }
            }
        };
        while let Some(first) = chunks.recv().await {
            let mut n = first.len();
            let mut batch = vec![first];
            while n < BATCH {
                match chunks.try_recv() {
                    Ok(b) => {
                        n += b.len();
                        batch.push(b);
                    }
                    Err(_) => break,
                }
            }
            let appended = pools()
                .write
                .run(move || {
                    for b in &batch {
                        if let Err(e) = w.append(b) {
                            let _ = fs::remove(&w.path);
                            return Err(e);
                        }
                    }
                    Ok(w)
                })
                .await;
            match appended {
                Ok(back) => w = back,
                Err(e) => return fail("writing", &e),
            }
            if let Some(p) = &progress {
                p.advance(&w.crcs, false);
            }
        }
        let finished = finish.await.ok();
        let Some(f) = finished.filter(|_| w.written == job.len as u64) else {
            // Dropped without `finish` (the fill failed or was cancelled).
            let path = w.path.clone();
            pools().write.spawn(move || drop(fs::remove(&path)));
            return self.write_ended(&job.key, job.id);
        };
        w.close_blocks();
        if let Some(p) = &progress {
            p.advance(&w.crcs, true);
        }
        let _ = f.written.send(true);
        let published = self.commit(job, w).await;
        let _ = f.published.send(published);
    }
}
