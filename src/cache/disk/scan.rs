//! The start-up scan of the disk directory: what is indexed, what is deleted.
//!
//! - an object is indexed when its meta file parses (checksum included), its body file has
//!   the id, length and footer the meta names, and its meta deserializes; bodies are not read
//!   here (each block is checked when it is read);
//! - a meta file that fails is deleted, with the body it names;
//! - a body no meta names is left over from a crash between the two renames of a commit, or
//!   is a replaced object's: deleted once a minute old (younger, it may be another process's
//!   commit in progress);
//! - a temporary file is deleted if the process that wrote it is gone (its pid is in its
//!   name): the old process of an upgrade keeps writing its fills while the new one starts;
//! - files of the previous format (`<key>.obj`, no checksums) are deleted;
//! - anything else is left alone.

use super::format::{self, Name};
use super::io::fs;
use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// An object found: (last modified, key, id, size of both files, asset).
pub(super) type Object = (SystemTime, HashBinary, u64, u64, String);

#[derive(Default)]
pub(super) struct Scanned {
    pub objects: Vec<Object>,
    pub damaged: usize,
    pub legacy: usize,
    pub orphans: usize,
}

/// Whether process `pid` is running (or exists under another user).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Checks one object; its size on disk, id and asset.
fn check(
    dir: &Path,
    key: &HashBinary,
    bodies: &HashMap<(HashBinary, u64), u64>,
) -> Result<(u64, u64, String), String> {
    let meta_path = dir.join(format::meta_name(key));
    let bytes = fs::read_small(&meta_path, format::MAX_META).map_err(|e| e.to_string())?;
    let m = format::decode_meta(&bytes).map_err(str::to_string)?;
    let len = *bodies
        .get(&(*key, m.id))
        .ok_or_else(|| "its body file is missing".to_string())?;
    let body_path = dir.join(format::body_name(key, m.id));
    let f = fs::open(&body_path).map_err(|e| e.to_string())?;
    let mut footer = [0u8; format::FOOTER];
    if len < footer.len() as u64 {
        return Err("body shorter than its footer".into());
    }
    fs::read_at(&f, &body_path, &mut footer, len - format::FOOTER as u64).map_err(|e| e.to_string())?;
    let body_len = format::check_footer(&footer, len, m.id)?;
    if body_len != m.body_len {
        return Err("body length".into());
    }
    CacheMeta::deserialize(&m.meta.0, &m.meta.1).map_err(|e| format!("meta: {e}"))?;
    Ok((len + bytes.len() as u64, m.id, m.asset))
}

pub(super) fn scan(dir: &Path) -> io::Result<Scanned> {
    let mut s = Scanned::default();
    let mut metas = Vec::new();
    let mut bodies = HashMap::new();
    let mut body_times = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let modified = || {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        match format::parse_name(&name) {
            Name::Meta(k) => metas.push((k, modified())),
            Name::Body(k, id) => {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                bodies.insert((k, id), len);
                body_times.insert((k, id), modified());
            }
            Name::Tmp { pid } if !alive(pid) => drop(fs::remove(&path)),
            Name::Tmp { .. } | Name::Other => {}
            Name::Legacy => {
                s.legacy += 1;
                drop(fs::remove(&path));
            }
        }
    }
    for (key, modified) in metas {
        match check(dir, &key, &bodies) {
            Ok((size, id, asset)) => {
                body_times.remove(&(key, id));
                s.objects.push((modified, key, id, size, asset));
            }
            Err(why) => {
                s.damaged += 1;
                log::warn!(
                    "cache: disk object {} is damaged ({why}): deleted",
                    format::hex(&key)
                );
                let meta_path = dir.join(format::meta_name(&key));
                if let Some(m) = fs::read_small(&meta_path, format::MAX_META)
                    .ok()
                    .and_then(|b| format::decode_meta(&b).ok())
                {
                    body_times.remove(&(key, m.id));
                    let _ = fs::remove(&dir.join(format::body_name(&key, m.id)));
                }
                let _ = fs::remove(&meta_path);
            }
        }
    }
    let minute_ago = SystemTime::now() - Duration::from_secs(60);
    for ((key, id), modified) in body_times {
        if modified < minute_ago {
            s.orphans += 1;
            let _ = fs::remove(&dir.join(format::body_name(&key, id)));
        }
    }
    // Oldest first: the least recently used end of the index.
    s.objects.sort_by_key(|o| o.0);
    Ok(s)
}
