//! Bearer tokens already verified, so that the requests of one page (a gallery's ~200
//! thumbnails carry the same token) pay for one signature check, not 200: ring's RSA-2048
//! verification is ~400 K instructions and P-256 ~750 K, against ~108 K for a whole request.
//!
//! - **Key**: SHA-256 of the whole token, so the credential itself is not kept and a token
//!   that differs in any byte (another signature, other claims) is another entry. SHA-256,
//!   not a faster hash: an entry admits whoever presents a token with its key, so finding a
//!   second token with the same key must be out of reach.
//! - **Lifetime**: an entry admits until the token's `exp` (not `exp` + `leeway`: past `exp`
//!   the token is verified again, and refused once beyond the leeway), and never after a
//!   JWKS refresh that removed or changed a key: such a refresh starts a new epoch, and an
//!   entry of an earlier epoch is a miss. Only tokens that passed every check are stored, and
//!   the checks (`iss`, `aud`, `nbf`) do not change while the gateway runs (`nbf` is in the
//!   past once a token passed).
//! - **Bounds**: [`MAX_ENTRIES`] entries and [`MAX_BYTES`] bytes of entries (a subject longer
//!   than [`MAX_SUBJECT`] is not cached: such tokens are verified each time), in
//!   [`SHARDS`] shards, each evicting its oldest entries first (FIFO: tokens are short-lived,
//!   and a token that stays in use is stored again after its eviction).
//! - **Locks**: a lookup takes one shard's read lock, so concurrent lookups never wait for each
//!   other, even of the same token; only a miss that verified takes a write lock.

use http::HeaderValue;
use ring::digest;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Entries at most, all shards together.
pub(crate) const MAX_ENTRIES: usize = 16 * 1024;
/// Bytes at most, all shards together, counted as [`ENTRY_BYTES`] per entry plus its subject.
pub(crate) const MAX_BYTES: usize = 8 * 1024 * 1024;
/// A token whose subject is longer is not cached.
const MAX_SUBJECT: usize = 256;
/// What one entry costs besides its subject, counted generously: key and entry in the map
/// (88 bytes and a control byte, up to twice that with the map's spare capacity), the key in
/// the FIFO (32, up to 64), the subject's allocation header.
const ENTRY_BYTES: usize = 256;
const SHARDS: usize = 16;

/// SHA-256 of a token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey([u8; 32]);

impl TokenKey {
    pub(crate) fn of(token: &str) -> TokenKey {
        let mut key = [0; 32];
        key.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        TokenKey(key)
    }

    fn shard(&self) -> usize {
        usize::from(self.0[0]) % SHARDS
    }
}

/// The key is a SHA-256 output: its first bytes are as good a hash as any, and nobody can
/// choose them (no flooding of one bucket).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().skip(1).take(8).enumerate() {
            self.0 |= u64::from(*b) << (8 * i);
        }
    }
}

struct Entry {
    /// The token's `exp` (Unix seconds): a miss from then on.
    until: u64,
    epoch: u64,
    /// The token's `sub`, as the upstream gets it.
    subject: Option<HeaderValue>,
}

impl Entry {
    fn bytes(&self) -> usize {
        ENTRY_BYTES + self.subject.as_ref().map_or(0, |s| s.len())
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<TokenKey, Entry, BuildHasherDefault<KeyHasher>>,
    /// The map's keys, oldest first.
    order: VecDeque<TokenKey>,
    bytes: usize,
}

pub(crate) struct VerifiedTokens {
    shards: Vec<RwLock<Shard>>,
    epoch: AtomicU64,
}

impl VerifiedTokens {
    pub(crate) fn new() -> VerifiedTokens {
        VerifiedTokens {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The current epoch: read it before reading the keys a token is verified with, and store
    /// the result under it ([`VerifiedTokens::insert`]), so that a verification that raced with
    /// a refresh removing its key is stored as already stale.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A refresh removed or changed a key: every entry stored so far is a miss from now on.
    /// Call it after the new keys are in place.
    pub(crate) fn new_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The subject of a token verified in this epoch whose `exp` has not come (`now`, Unix
    /// seconds); `None`: not known, verify it.
    pub(crate) fn get(&self, key: &TokenKey, now: u64) -> Option<Option<HeaderValue>> {
        let epoch = self.epoch();
        let shard = self.shards[key.shard()].read().ok()?;
        let e = shard.map.get(key)?;
        (e.epoch == epoch && now < e.until).then(|| e.subject.clone())
    }

    /// Remembers a verified token until `exp`, as verified in `epoch`.
    pub(crate) fn insert(&self, key: TokenKey, epoch: u64, exp: u64, subject: Option<HeaderValue>, now: u64) {
        if exp <= now || subject.as_ref().is_some_and(|s| s.len() > MAX_SUBJECT) {
            return;
        }
        let entry = Entry {
            until: exp,
            epoch,
            subject,
        };
        let Ok(mut shard) = self.shards[key.shard()].write() else {
            return;
        };
        let shard = &mut *shard;
        shard.bytes += entry.bytes();
        match shard.map.insert(key, entry) {
            // Stored again (expired, or of an older epoch): it keeps its place.
            Some(old) => shard.bytes -= old.bytes(),
            None => shard.order.push_back(key),
        }
        while shard.map.len() > MAX_ENTRIES / SHARDS || shard.bytes > MAX_BYTES / SHARDS {
            let Some(oldest) = shard.order.pop_front() else {
                break;
            };
            if let Some(old) = shard.map.remove(&oldest) {
                shard.bytes -= old.bytes();
            }
        }
    }

    /// Entries and bytes held, all shards together.
    #[cfg(test)]
    fn size(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(n, b), s| {
            let s = s.read().unwrap();
            (n + s.map.len(), b + s.bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn sub(s: &str) -> Option<HeaderValue> {
        Some(HeaderValue::from_str(s).unwrap())
    }

    #[test]
    fn a_verified_token_is_known_until_its_exp_in_its_epoch() {
        let c = VerifiedTokens::new();
        let k = TokenKey::of("header.claims.sig");
        assert_eq!(c.get(&k, NOW), None);
        let epoch = c.epoch();
        c.insert(k, epoch, NOW + 60, sub("alice"), NOW);
        assert_eq!(c.get(&k, NOW), Some(sub("alice")));
        assert_eq!(c.get(&k, NOW + 59), Some(sub("alice")));
        assert_eq!(c.get(&k, NOW + 60), None, "at exp");
        // Any other byte is another token.
        assert_eq!(c.get(&TokenKey::of("header.claims.sih"), NOW), None);
        // A refresh that removed a key: forgotten.
        c.new_epoch();
        assert_eq!(c.get(&k, NOW), None);
        // A verification that read the epoch before the refresh is stored stale.
        c.insert(k, epoch, NOW + 60, sub("alice"), NOW);
        assert_eq!(c.get(&k, NOW), None);
        c.insert(k, c.epoch(), NOW + 60, None, NOW);
        assert_eq!(c.get(&k, NOW), Some(None));
        // Nothing already expired, nothing with a long subject.
        let k2 = TokenKey::of("other");
        c.insert(k2, c.epoch(), NOW, sub("bob"), NOW);
        c.insert(k2, c.epoch(), NOW + 60, sub(&"b".repeat(MAX_SUBJECT + 1)), NOW);
        assert_eq!(c.get(&k2, NOW), None);
        assert_eq!(c.size().0, 1);
    }

    #[test]
    fn entries_and_bytes_stay_bounded_oldest_out_first() {
        let c = VerifiedTokens::new();
        for i in 0..MAX_ENTRIES * 3 {
            c.insert(TokenKey::of(&format!("t{i}")), 0, NOW + 60, sub("s"), NOW);
        }
        let (n, bytes) = c.size();
        assert!(n <= MAX_ENTRIES && n > MAX_ENTRIES * 9 / 10, "{n}");
        assert!(bytes <= MAX_BYTES, "{bytes}");
        // The newest are there, the oldest gone.
        assert!(c
            .get(&TokenKey::of(&format!("t{}", MAX_ENTRIES * 3 - 1)), NOW)
            .is_some());
        assert!(c.get(&TokenKey::of("t0"), NOW).is_none());
        // Long subjects: bounded by bytes before entries.
        let c = VerifiedTokens::new();
        let long = "s".repeat(MAX_SUBJECT);
        for i in 0..MAX_ENTRIES * 2 {
            c.insert(TokenKey::of(&format!("t{i}")), 0, NOW + 60, sub(&long), NOW);
        }
        let (n, bytes) = c.size();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert!(n <= MAX_BYTES / (ENTRY_BYTES + MAX_SUBJECT), "{n}");
    }
}
