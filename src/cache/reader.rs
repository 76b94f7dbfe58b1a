//! Reading a memory body, committed or still filling; seekable either way.

use super::fill::{Body, FillState, FILL_ABORTED};
use crate::metrics::CacheMetrics;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::storage::HandleHit;
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, Storage};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::sync::Arc;
use tokio::sync::watch;

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
    pub(crate) fn new(body: Arc<Body>, filling: bool, metrics: Option<&'static CacheMetrics>) -> Reader {
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

    fn served(&mut self, b: Bytes) -> Result<Option<Bytes>> {
        self.pos += b.len();
        if let Some(m) = self.metrics {
            m.hit_bytes.inc_by(b.len() as u64);
        }
        Ok(Some(b))
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
                return self.served(b);
            } else if let Some(b) = self.body.read_spilled(self.pos, self.end).await? {
                return self.served(b);
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
