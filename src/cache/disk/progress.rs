//! A fill too large for memory reads its own bytes back from its disk file: blocks are
//! published to readers once whole and checksummed, and leave memory only then.

use super::format::BLOCK;
use bytes::Bytes;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A fill's view of its own file, for a fill too large for memory: which bytes are in the
/// file, checked, and may leave memory.
pub(crate) struct Progress {
    pub(crate) file: Arc<File>,
    pub(crate) path: Arc<Path>,
    len: usize,
    /// Bytes of whole blocks written (or the whole body once it is all written).
    persisted: AtomicUsize,
    crcs: Mutex<Vec<u32>>,
    /// The copy stopped (a disk error): `persisted` moves no more.
    pub(crate) failed: AtomicBool,
}

impl Progress {
    pub(crate) fn new(file: File, path: &Path, len: usize) -> Progress {
        Progress {
            file: Arc::new(file),
            path: Arc::from(path),
            len,
            persisted: AtomicUsize::new(0),
            crcs: Mutex::new(Vec::new()),
            failed: AtomicBool::new(false),
        }
    }

    pub(crate) fn persisted(&self) -> usize {
        self.persisted.load(Ordering::Acquire)
    }

    /// The writer has the blocks of `written` checksummed and in the file (`all`: the
    /// whole body, its last block partial).
    pub(super) fn advance(&self, written: &[u32], all: bool) {
        let mut crcs = self.crcs.lock().unwrap_or_else(|e| e.into_inner());
        let have = crcs.len();
        crcs.extend_from_slice(&written[have..]);
        let to = if all { self.len } else { crcs.len() * BLOCK };
        self.persisted.store(to.min(self.len), Ordering::Release);
    }

    /// From `pos` to the end of its block (never past `end`), read from the file and
    /// checked; `None` if those bytes are not in the file yet.
    pub(crate) async fn read(&self, pos: usize, end: usize) -> io::Result<Option<Bytes>> {
        if pos >= self.persisted().min(end) {
            return Ok(None);
        }
        let b = pos / BLOCK;
        let start = b * BLOCK;
        let block_len = BLOCK.min(self.len - start);
        let crc = self
            .crcs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(b)
            .copied();
        let Some(crc) = crc else { return Ok(None) };
        let data = super::reader::read_block(&self.file, &self.path, start as u64, block_len, crc).await?;
        Ok(Some(data.slice(pos - start..end.min(start + block_len) - start)))
    }
}
