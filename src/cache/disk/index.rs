//! The disk tier's index: what this process knows is on disk (key -> object id, size, asset),
//! in least-recently-used order, the writes in progress, and the objects being deleted.
//! Pure data under the store's mutex: no file-system call is made while it is held.

use pingora::cache::key::HashBinary;
use std::collections::{BTreeMap, HashMap, HashSet};

/// An object whose files are to be deleted: (key, object id). Deletions are precise: they
/// remove these files only, never a newer object of the same key (another process's, or a
/// later fill's).
pub(crate) type Victim = (HashBinary, u64);

pub(crate) struct Entry {
    pub id: u64,
    /// Both files, charged against the bound.
    pub size: u64,
    tick: u64,
    pub asset: String,
}

/// A disk copy being written.
struct Pending {
    id: u64,
    asset: String,
    /// Bytes set aside for it (evicting others) until it is published or given up.
    reserved: u64,
}

#[derive(Default)]
pub(crate) struct Index {
    entries: HashMap<HashBinary, Entry>,
    lru: BTreeMap<u64, HashBinary>,
    next_tick: u64,
    assets: HashMap<String, HashSet<HashBinary>>,
    pending: HashMap<HashBinary, Pending>,
    /// Objects being deleted, and writes purged or superseded before they were published:
    /// a lookup that finds their files does not take them back.
    doomed: HashSet<Victim>,
    /// Counts removals: a lookup that raced one does not adopt what it found.
    pub removals: u64,
    pub bytes: u64,
    pub reserved: u64,
}

impl Index {
    pub fn get(&self, key: &HashBinary) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn writes(&self) -> usize {
        self.pending.len()
    }

    pub fn touch(&mut self, key: &HashBinary) {
        let tick = self.next_tick;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, *key);
            self.next_tick += 1;
        }
    }

    /// Indexes an object (the most recently used), replacing what the key had.
    pub fn insert(&mut self, key: HashBinary, id: u64, size: u64, asset: String) {
        self.forget(&key);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.lru.insert(tick, key);
        self.bytes += size;
        self.assets.entry(asset.clone()).or_default().insert(key);
        self.entries.insert(
            key,
            Entry {
                id,
                size,
                tick,
                asset,
            },
        );
    }

    /// Drops the key's entry from the index (its files stay: see [`Index::remove`]).
    pub fn forget(&mut self, key: &HashBinary) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.lru.remove(&e.tick);
        self.bytes -= e.size;
        if let Some(keys) = self.assets.get_mut(&e.asset) {
            keys.remove(key);
            if keys.is_empty() {
                self.assets.remove(&e.asset);
            }
        }
        Some(e)
    }

    /// Removes the key's object; returns what to delete (marked doomed until it is gone).
    pub fn remove(&mut self, key: &HashBinary) -> Option<Victim> {
        let e = self.forget(key)?;
        self.removals += 1;
        self.doomed.insert((*key, e.id));
        Some((*key, e.id))
    }

    /// Marks an object not in the index (found damaged) as being deleted.
    pub fn doom(&mut self, key: HashBinary, id: u64) {
        self.doomed.insert((key, id));
    }

    pub fn is_doomed(&self, v: &Victim) -> bool {
        self.doomed.contains(v)
    }

    /// The files of `v` are gone.
    pub fn buried(&mut self, v: &Victim) {
        self.doomed.remove(v);
    }

    /// Pops least recently used objects until `extra` more bytes fit within `limit`.
    pub fn evict(&mut self, limit: u64, extra: u64) -> Vec<Victim> {
        let mut victims = Vec::new();
        while self.bytes + self.reserved + extra > limit {
            let Some((_, key)) = self.lru.first_key_value().map(|(t, k)| (*t, *k)) else {
                break;
            };
            victims.extend(self.remove(&key));
        }
        victims
    }

    /// Sets `bytes` aside for a new write of `key` (superseding an older write of it);
    /// returns the objects evicted to make room.
    pub fn reserve(&mut self, key: HashBinary, id: u64, asset: &str, bytes: u64, limit: u64) -> Vec<Victim> {
        if let Some(old) = self.unreserve_any(&key) {
            self.doomed.insert((key, old.id));
        }
        self.pending.insert(
            key,
            Pending {
                id,
                asset: asset.to_string(),
                reserved: bytes,
            },
        );
        self.reserved += bytes;
        self.evict(limit, 0)
    }

    fn unreserve_any(&mut self, key: &HashBinary) -> Option<Pending> {
        let p = self.pending.remove(key)?;
        self.reserved -= p.reserved;
        Some(p)
    }

    /// Ends the write `id` of `key`; returns whether it was still the key's current one (not
    /// superseded, not purged).
    pub fn unreserve(&mut self, key: &HashBinary, id: u64) -> bool {
        if self.pending.get(key).map(|p| p.id) != Some(id) {
            return false;
        }
        self.unreserve_any(key);
        true
    }

    /// Removes every object of `asset` and dooms its writes in progress; returns what to
    /// delete, and whether there was anything.
    pub fn purge_asset(&mut self, asset: &str) -> (Vec<Victim>, bool) {
        let writes: Vec<HashBinary> = self
            .pending
            .iter()
            .filter(|(_, p)| p.asset == asset)
            .map(|(k, _)| *k)
            .collect();
        let mut any = !writes.is_empty();
        for k in writes {
            if let Some(p) = self.unreserve_any(&k) {
                self.doomed.insert((k, p.id));
            }
        }
        let keys: Vec<HashBinary> = self
            .assets
            .get(asset)
            .map(|k| k.iter().copied().collect())
            .unwrap_or_default();
        let victims: Vec<Victim> = keys.iter().filter_map(|k| self.remove(k)).collect();
        any |= !victims.is_empty();
        (victims, any)
    }

    /// The asset tags starting with `prefix` with an object or a write in progress.
    pub fn assets_with_prefix(&self, prefix: &str) -> Vec<String> {
        let files = self.assets.keys();
        let writes = self.pending.values().map(|p| &p.asset);
        files
            .chain(writes)
            .filter(|a| a.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// A write superseded or purged while it was written: is it doomed? (It then deletes
    /// its own files and calls [`Index::buried`].)
    pub fn write_doomed(&self, key: &HashBinary, id: u64) -> bool {
        self.doomed.contains(&(*key, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_evict_and_purges_doom_writes() {
        let mut i = Index::default();
        i.insert([1; 16], 10, 400, "a".into());
        i.insert([2; 16], 20, 400, "b".into());
        i.touch(&[1; 16]);
        // A 300-byte write in a 1000-byte tier evicts the least recently used object.
        assert_eq!(i.reserve([3; 16], 30, "c", 300, 1000), vec![([2; 16], 20)]);
        assert!(i.is_doomed(&([2; 16], 20)));
        assert_eq!((i.bytes, i.reserved), (400, 300));
        // A purge of the asset being written dooms the write: it is no longer current.
        assert_eq!(i.purge_asset("c"), (vec![], true));
        assert!(!i.unreserve(&[3; 16], 30));
        assert!(i.write_doomed(&[3; 16], 30));
        assert_eq!(i.reserved, 0);
        // A newer write of a key supersedes the older.
        i.reserve([4; 16], 40, "d", 10, 1000);
        i.reserve([4; 16], 41, "d", 10, 1000);
        assert!(!i.unreserve(&[4; 16], 40));
        assert!(i.write_doomed(&[4; 16], 40));
        assert!(i.unreserve(&[4; 16], 41));
        let removals = i.removals;
        assert_eq!(i.purge_asset("a"), (vec![([1; 16], 10)], true));
        assert!(i.removals > removals);
        assert_eq!((i.len(), i.bytes), (0, 0));
    }
}
