//! Where the disk tier's file-system calls run, and the only place they are made.
//!
//! Two small pools of threads of their own: `read` (lookups, body reads) and `write` (file
//! creation, appends, commits with their `fdatasync`s and renames, meta rewrites, deletions).
//! A runtime thread never makes a file-system call, and a slow `fdatasync` never delays a
//! lookup. Each pool has a bounded queue: a caller waits for room (a fill waits for its disk
//! copy, its readers do not), except deletions, which are queued at once (their number is
//! bounded by the objects indexed).
//!
//! Few, long-lived threads are also what keeps memory bounded (issue 18, item 9): tokio's
//! blocking pool grew to ~170 threads under disk-tier load, each with its own allocator heap
//! holding memory that other threads had freed, and RSS reached 1.3 GiB for a 24 MiB cache.
//! Buffers are therefore allocated by the caller (a runtime thread) and only filled here.
//!
//! [`fs`] wraps each call so tests can check where it runs and make it fail (`seam`, compiled
//! in tests only).

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::{oneshot, Semaphore};

type Job = Box<dyn FnOnce() + Send>;

/// Threads and queue depth of each pool: enough to overlap a few `fdatasync`s and reads.
const READ_THREADS: usize = 4;
const WRITE_THREADS: usize = 4;
const QUEUE: usize = 64;

pub(crate) struct Pool {
    tx: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
}

pub(crate) struct Pools {
    pub(crate) read: Pool,
    pub(crate) write: Pool,
}

static POOLS: OnceLock<Pools> = OnceLock::new();

/// The process's pools, started on first use (threads do not survive the `-d` fork, and the
/// disk tier is opened after it).
pub(crate) fn pools() -> &'static Pools {
    POOLS.get_or_init(|| Pools {
        read: Pool::start("agw-disk-read", READ_THREADS),
        write: Pool::start("agw-disk-write", WRITE_THREADS),
    })
}

fn gone() -> io::Error {
    io::Error::other("the disk I/O pool is gone")
}

impl Pool {
    fn start(name: &str, threads: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    #[cfg(test)]
                    seam::ON_POOL.with(|p| p.set(true));
                    loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            // A panicking job loses its answer (the caller sees an error),
                            // not the thread.
                            Ok(job) => drop(std::panic::catch_unwind(AssertUnwindSafe(job))),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                log::warn!("cache: cannot start a disk I/O thread: {e}");
            }
        }
        Pool {
            tx,
            permits: Arc::new(Semaphore::new(QUEUE)),
        }
    }

    /// Runs `f` on a pool thread and returns its result; waits for room in the queue first.
    pub(crate) async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| gone())?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let r = f();
            drop(permit);
            let _ = tx.send(r);
        });
        self.tx.send(job).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Queues `f` without waiting for it or for room.
    pub(crate) fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let _ = self.tx.send(Box::new(f));
    }
}

/// A guard on an index mutex (a poisoned lock only means another request panicked
/// mid-update; the index stays usable). Tests check that no file-system call is made while
/// one is held.
pub(crate) struct Locked<'a, T> {
    guard: MutexGuard<'a, T>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> Locked<'_, T> {
    let guard = m.lock().unwrap_or_else(|e| e.into_inner());
    #[cfg(test)]
    seam::INDEX_LOCKS.with(|n| n.set(n.get() + 1));
    Locked { guard }
}

impl<T> Drop for Locked<'_, T> {
    fn drop(&mut self) {
        #[cfg(test)]
        seam::INDEX_LOCKS.with(|n| n.set(n.get() - 1));
    }
}

impl<T> std::ops::Deref for Locked<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// The file-system calls of the disk tier. Each names the path it works on (for errors, and
/// for the test seam).
pub(crate) mod fs {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    #[cfg(test)]
    use super::seam::check;
    #[cfg(not(test))]
    #[inline(always)]
    fn check(_op: Op, _path: &Path) -> io::Result<()> {
        Ok(())
    }

    /// What a call does (a test can make one kind fail).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Op {
        Create,
        Write,
        Sync,
        Rename,
        Read,
        Remove,
    }

    /// A new file for writing and reading (a temporary file).
    pub(crate) fn create(path: &Path) -> io::Result<File> {
        check(Op::Create, path)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
    }

    /// Reserves `len` bytes for `f`, so a full file system shows now rather than mid-fill.
    /// A file system that cannot preallocate is not an error.
    pub(crate) fn allocate(f: &File, path: &Path, len: u64) -> io::Result<()> {
        check(Op::Write, path)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: a plain syscall on a descriptor we own.
        let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
        match r {
            0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    pub(crate) fn open(path: &Path) -> io::Result<File> {
        check(Op::Read, path)?;
        File::open(path)
    }

    pub(crate) fn write_at(f: &File, path: &Path, data: &[u8], offset: u64) -> io::Result<()> {
        check(Op::Write, path)?;
        f.write_all_at(data, offset)
    }

    pub(crate) fn read_at(f: &File, path: &Path, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check(Op::Read, path)?;
        f.read_exact_at(buf, offset)
    }

    /// Reads exactly `len` bytes at `offset` into `buf`'s spare capacity, which is not zeroed
    /// first: zeroing a 64 KiB block cost more than the rest of serving it (a `memset` of every
    /// byte, 1,049 K of 1,646 K instructions per MiB of a disk hit).
    pub(crate) fn read_at_uninit(
        f: &File,
        path: &Path,
        buf: &mut bytes::BytesMut,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        check(Op::Read, path)?;
        buf.reserve(len);
        let start = buf.len();
        let dst = buf.spare_capacity_mut().as_mut_ptr().cast::<libc::c_void>();
        let mut done = 0;
        while done < len {
            let at = libc::off_t::try_from(offset + done as u64)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
            // SAFETY: `dst` points to at least `len` bytes of `buf`'s spare capacity (reserved
            // above); the kernel writes into it, and no reference to those bytes exists yet.
            let n = unsafe { libc::pread(f.as_raw_fd(), dst.add(done), len - done, at) };
            match n {
                n if n > 0 => done += n as usize,
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ))
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        // SAFETY: the `len` bytes after `start` were all written by `pread` above.
        unsafe { buf.set_len(start + len) };
        Ok(())
    }

    pub(crate) fn len(f: &File, path: &Path) -> io::Result<u64> {
        check(Op::Read, path)?;
        Ok(f.metadata()?.len())
    }

    /// A whole small file (a meta file).
    pub(crate) fn read_small(path: &Path, max: usize) -> io::Result<Vec<u8>> {
        let f = open(path)?;
        let n = len(&f, path)? as usize;
        if n > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "file too large"));
        }
        let mut buf = vec![0u8; n];
        read_at(&f, path, &mut buf, 0)?;
        Ok(buf)
    }

    pub(crate) fn sync_data(f: &File, path: &Path) -> io::Result<()> {
        check(Op::Sync, path)?;
        f.sync_data()
    }

    /// Makes the directory's entries (renames) durable.
    pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
        check(Op::Sync, dir)?;
        File::open(dir)?.sync_all()
    }

    pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
        check(Op::Rename, to)?;
        std::fs::rename(from, to)
    }

    /// Deletes a file; one already gone is not an error.
    pub(crate) fn remove(path: &Path) -> io::Result<()> {
        check(Op::Remove, path)?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Test-only: where each file-system call runs, and failures on demand, per directory (tests
/// run in parallel, each on a directory of its own).
#[cfg(test)]
pub(crate) mod seam {
    use super::fs::Op;
    use std::cell::Cell;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    thread_local! {
        pub(super) static ON_POOL: Cell<bool> = const { Cell::new(false) };
        pub(super) static INDEX_LOCKS: Cell<u32> = const { Cell::new(0) };
    }

    struct Rule {
        dir: PathBuf,
        op: Op,
        errno: i32,
    }

    static RULES: Mutex<Vec<Rule>> = Mutex::new(Vec::new());
    static WATCHED: Mutex<Vec<(PathBuf, Vec<String>)>> = Mutex::new(Vec::new());

    /// Every `op` under `dir` fails with `errno` until [`heal`].
    pub(crate) fn fail(dir: &Path, op: Op, errno: i32) {
        RULES.lock().unwrap().push(Rule {
            dir: dir.to_path_buf(),
            op,
            errno,
        });
    }

    pub(crate) fn heal(dir: &Path) {
        RULES.lock().unwrap().retain(|r| r.dir != dir);
    }

    static HELD: Mutex<Vec<(PathBuf, Op)>> = Mutex::new(Vec::new());

    /// Every `op` under `dir` waits (on its pool thread) until [`release`]: a disk that lags.
    pub(crate) fn hold(dir: &Path, op: Op) {
        HELD.lock().unwrap().push((dir.to_path_buf(), op));
    }

    pub(crate) fn release(dir: &Path) {
        HELD.lock().unwrap().retain(|(d, _)| d != dir);
    }

    /// Records, for calls under `dir`, each one made off the pools or under an index lock.
    pub(crate) fn watch(dir: &Path) {
        WATCHED.lock().unwrap().push((dir.to_path_buf(), Vec::new()));
    }

    pub(crate) fn violations(dir: &Path) -> Vec<String> {
        let w = WATCHED.lock().unwrap();
        w.iter()
            .find(|(d, _)| d == dir)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    pub(super) fn check(op: Op, path: &Path) -> io::Result<()> {
        if let Some((_, v)) = WATCHED
            .lock()
            .unwrap()
            .iter_mut()
            .find(|(d, _)| path.starts_with(d))
        {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("?");
            if !ON_POOL.with(|p| p.get()) {
                v.push(format!("{op:?} {} on thread {name}", path.display()));
            }
            if INDEX_LOCKS.with(|n| n.get()) > 0 {
                v.push(format!("{op:?} {} under an index lock", path.display()));
            }
        }
        while HELD
            .lock()
            .unwrap()
            .iter()
            .any(|(d, o)| *o == op && path.starts_with(d))
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let rules = RULES.lock().unwrap();
        match rules.iter().find(|r| r.op == op && path.starts_with(&r.dir)) {
            Some(r) => Err(io::Error::from_raw_os_error(r.errno)),
            None => Ok(()),
        }
    }
}
