//! The fill protocol: a response body that readers follow while it arrives
//! (`support_streaming_partial_write`), and its writer.
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

use super::disk::{DiskWrite, Progress};
use super::index::{Charge, Committed};
use super::storage::MemStorage;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::storage::streaming_write::U64WriteId;
use pingora::cache::storage::{HandleMiss, MissFinishType};
use pingora::{Error, ErrorType, Result};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// The most one read returns, so a hit on a large chunk list still streams in pieces.
pub(crate) const MAX_READ: usize = 64 * 1024;

/// A finished memory body up to this size is packed into one buffer at `finish` (one copy per
/// object): its hits then send it in `MAX_READ` pieces, not one write per upstream read (16
/// KiB), which cost ~0.9 K instructions and a `write` each (a 200 KiB photo: 13 -> 4).
const PACK_MAX: usize = 256 * 1024;

pub(crate) const FILL_ABORTED: ErrorType = ErrorType::Custom("CacheFillAborted");

/// The only completion signal of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FillState {
    /// `written` bytes are readable; more may come.
    Filling { written: usize },
    /// Published by `finish` alone, after checking the length.
    Complete,
    /// The writer failed or went away: readers must not see a clean end.
    Failed,
}

/// A response body: upstream chunks in order, each with its starting offset.
pub(crate) struct Body {
    /// The declared Content-Length (only responses with one are stored).
    pub(crate) len: usize,
    chunks: RwLock<Vec<(usize, Bytes)>>,
    pub(crate) state: watch::Sender<FillState>,
    /// A fill too large for memory: chunks already in its disk file are dropped from `chunks`,
    /// and readers read those bytes from the file.
    pub(crate) spill: Option<Arc<Progress>>,
}

impl Body {
    pub(crate) fn new(len: usize, spill: Option<Arc<Progress>>) -> Body {
        Body {
            len,
            chunks: RwLock::new(Vec::new()),
            state: watch::channel(FillState::Filling { written: 0 }).0,
            spill,
        }
    }

    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn push(&self, start: usize, data: Bytes) {
        self.chunks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((start, data));
    }

    /// Replaces several chunks of a whole body by one copy of them; readers index by offset, so
    /// those in flight read on unchanged.
    fn pack(&self) {
        if self.len > PACK_MAX || self.spill.is_some() {
            return;
        }
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        if chunks.len() < 2 {
            return;
        }
        let mut whole = bytes::BytesMut::with_capacity(self.len);
        for (_, c) in chunks.iter() {
            whole.extend_from_slice(c);
        }
        *chunks = vec![(0, whole.freeze())];
    }

    /// Drops the chunks a spilling fill has in its file (all its readers read them there). A
    /// copy that failed keeps the rest in memory until the fill ends: its readers need them.
    fn trim(&self) {
        if let Some(sp) = &self.spill {
            let persisted = sp.persisted();
            let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
            let n = chunks.partition_point(|(start, c)| start + c.len() <= persisted);
            chunks.drain(..n);
        }
    }

    /// Up to `MAX_READ` bytes from `pos`, if in memory (never past `end`).
    pub(crate) fn slice(&self, pos: usize, end: usize) -> Option<Bytes> {
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

    /// For a spilling fill: bytes from `pos` read back from its file (checked), if there.
    pub(crate) async fn read_spilled(&self, pos: usize, end: usize) -> Result<Option<Bytes>> {
        let Some(sp) = &self.spill else { return Ok(None) };
        sp.read(pos, end)
            .await
            .map_err(|e| Error::because(FILL_ABORTED, "cache: reading a spilled fill", e))
    }
}

/// Appends a fill; publishes `Failed` unless `finish` succeeded.
pub(crate) struct Writer {
    pub(crate) storage: &'static MemStorage,
    pub(crate) key: HashBinary,
    pub(crate) asset: String,
    pub(crate) id: u64,
    pub(crate) tag: U64WriteId,
    pub(crate) body: Arc<Body>,
    pub(crate) written: usize,
    pub(crate) done: bool,
    /// The disk copy being written alongside; dropping it discards the temporary file.
    pub(crate) disk: Option<DiskWrite>,
    /// Memory set aside for this fill at admission (none for a fill too large for memory).
    pub(crate) charge: Option<Charge>,
    /// `finish` found every byte: the body is whole, whatever becomes of its storage.
    pub(crate) body_whole: bool,
}

impl Writer {
    fn fail(&mut self) {
        self.disk = None;
        if !self.done {
            self.done = true;
            if self.body_whole {
                // `finish` was dropped while it waited for the disk: the body is whole (in
                // memory, or in its file); only the disk copy is lost.
                self.body.state.send_replace(FillState::Complete);
                self.storage.tier.end_fill(&self.key, &self.asset, self.id);
                return;
            }
            self.body.state.send_replace(FillState::Failed);
            self.storage.tier.end_fill(&self.key, &self.asset, self.id);
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
        self.body.push(start, data.clone());
        self.body.state.send_replace(FillState::Filling {
            written: self.written,
        });
        // After publishing to memory readers: the fill waits for the disk (a bounded queue),
        // its readers do not. A copy that stops (a disk error) only loses the disk copy: a
        // spilling fill then keeps its remaining bytes in memory for its readers.
        if let Some(d) = &self.disk {
            if !d.write(data).await {
                self.disk = None;
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
        self.body_whole = true;
        self.body.pack();
        let spilling = self.body.spill.is_some();
        let charge = self.charge.take();
        // A spilling fill stays joinable until its file is published (its readers read it).
        let committed = self.storage.tier.commit(
            &self.key,
            &self.asset,
            self.id,
            charge,
            spilling && self.disk.is_some(),
        );
        match (self.disk.take(), committed) {
            // In memory: the disk copy is committed in the background.
            (Some(d), Committed::Stored) => drop(d.finish()),
            (Some(d), Committed::TooLarge) => {
                let mut f = d.finish();
                if spilling {
                    // Its readers need every byte in the file before the end; new lookups
                    // join the fill until the file is published.
                    let written = f.written().await;
                    let failed = self
                        .body
                        .spill
                        .as_ref()
                        .is_some_and(|p| p.failed.load(Ordering::Acquire));
                    let (tier, key, asset, id) = (&self.storage.tier, self.key, self.asset.clone(), self.id);
                    if written && !failed {
                        tokio::spawn(async move {
                            let _ = f.published.await;
                            tier.end_fill(&key, &asset, id);
                        });
                    } else {
                        tier.end_fill(&key, &asset, id);
                    }
                }
            }
            (Some(d), Committed::Detached) => drop(d),
            (None, _) => {
                if spilling {
                    self.storage.tier.end_fill(&self.key, &self.asset, self.id);
                }
            }
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
    }
}
