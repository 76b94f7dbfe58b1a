//! `gateway.cache`: the memory tier's bound, the object size limit, the freshness, lock and
//! stale times, and the optional disk tier (its directory checked, not created: the gateway
//! creates it at start).

use super::file::{CacheFile, DiskFile};
use super::runtime::{CacheSettings, DiskSettings};

/// The smallest memory tier (and disk tier): room for at least a few objects.
const MIN_CACHE_MEMORY: u64 = 1 << 20;

/// The smallest slice: each slice is an object of its own (a key, a lock, a file).
const MIN_SLICE: u64 = 64 << 10;

/// The memory tier needs room for at least a few objects; the disk directory must exist or be
/// creatable, and be writable (checked with a probe file, also by `-t`, which creates nothing),
/// and `disk.size` must fit the file system it is on.
pub(super) fn cache(c: &CacheFile, p: &mut Vec<String>) -> Option<CacheSettings> {
    let before = p.len();
    let disk = c.disk.as_ref().and_then(|d| disk(d, p));
    if c.memory.0 < MIN_CACHE_MEMORY {
        p.push(format!(
            "gateway.cache.memory: {} bytes is below the minimum of 1MiB",
            c.memory.0
        ));
    }
    if c.max_object_size.0 == 0 {
        p.push("gateway.cache.max_object_size: must be at least 1 byte".to_string());
    }
    let usize_of = |key: &str, n: u64, p: &mut Vec<String>| {
        usize::try_from(n).unwrap_or_else(|_| {
            p.push(format!(
                "gateway.cache.{key}: {n} bytes does not fit this machine"
            ));
            0
        })
    };
    let slice = match c.slice.0 {
        Some(n) if n < MIN_SLICE => {
            p.push(format!(
                "gateway.cache.slice: {n} bytes is below the minimum of 64KiB (or \"off\")"
            ));
            None
        }
        Some(n) => Some(usize_of("slice", n, p)),
        None => None,
    };
    let memory = usize_of("memory", c.memory.0, p);
    let max_object_size = usize_of("max_object_size", c.max_object_size.0, p);
    (p.len() == before).then_some(CacheSettings {
        memory,
        max_object_size,
        default_ttl: c.default_ttl.0,
        lock_timeout: c.lock_timeout.0,
        negative_ttl: c.negative_ttl.0,
        uncacheable_ttl: c.uncacheable_ttl.0,
        stale_while_revalidate: c.stale_while_revalidate.0,
        stale_if_error: c.stale_if_error.0,
        disk,
        slice,
    })
}

fn disk(d: &DiskFile, p: &mut Vec<String>) -> Option<DiskSettings> {
    let before = p.len();
    if d.size.0 < MIN_CACHE_MEMORY {
        p.push(format!(
            "gateway.cache.disk.size: {} bytes is below the minimum of 1MiB",
            d.size.0
        ));
    }
    if d.path.is_empty() {
        p.push("gateway.cache.disk.path: must not be empty".to_string());
        return None;
    }
    let path = std::path::PathBuf::from(&d.path);
    // Checked, not created (`-t` changes nothing): the gateway creates it at start.
    match crate::cache::disk::check_path(&path) {
        Err(e) => p.push(format!("gateway.cache.disk.path: {}: {e}", d.path)),
        Ok(total) if d.size.0 > total => p.push(format!(
            "gateway.cache.disk.size: {} bytes is larger than the file system of {} ({total} bytes)",
            d.size.0, d.path
        )),
        Ok(_) => {}
    }
    (p.len() == before).then_some(DiskSettings { path, size: d.size.0 })
}
