//! Whether the disk tier is storing: a full file system (`ENOSPC`, `EDQUOT`) or failing writes
//! (`EIO`, anything else) stop the writes that meet them, never a response. One warning per
//! change of state, not per fill; every new write tries again, so storing resumes by itself
//! when space is back (and says so once).

use crate::metrics::CacheMetrics;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Storing = 0,
    Full = 1,
    Failing = 2,
}

impl State {
    pub(crate) fn word(self) -> &'static str {
        match self {
            State::Storing => "storing",
            State::Full => "full",
            State::Failing => "failing",
        }
    }
}

pub(crate) struct Health {
    state: AtomicU8,
}

fn classify(e: &io::Error) -> State {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => State::Full,
        _ => State::Failing,
    }
}

impl Health {
    pub(crate) fn new() -> Health {
        Health {
            state: AtomicU8::new(State::Storing as u8),
        }
    }

    pub(crate) fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            0 => State::Storing,
            1 => State::Full,
            _ => State::Failing,
        }
    }

    /// A write (creation, append or commit) succeeded.
    pub(crate) fn ok(&self, dir: &Path, metrics: &CacheMetrics) {
        let was = self.state.swap(State::Storing as u8, Ordering::Relaxed);
        if was != State::Storing as u8 {
            metrics.disk_storing.set(1);
            log::info!("cache: the disk tier at {} stores objects again", dir.display());
        }
    }

    /// A write failed with `e` while doing `what` (it stops; its fill goes on).
    pub(crate) fn error(&self, dir: &Path, what: &str, e: &io::Error, metrics: &CacheMetrics) {
        let now = classify(e);
        metrics.disk_write_errors.with_label_values(&[now.word()]).inc();
        let was = self.state.swap(now as u8, Ordering::Relaxed);
        if was != now as u8 {
            metrics.disk_storing.set(0);
            let why = match now {
                State::Full => "the file system is full",
                _ => "writes fail",
            };
            log::warn!(
                "cache: the disk tier at {} stops storing ({why}: {what}: {e}); responses are not affected, objects stay in memory; it tries again with each new object",
                dir.display()
            );
        }
    }
}
