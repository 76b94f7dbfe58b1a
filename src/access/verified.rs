//! Bearer tokens already verified, so that the requests of one page (a gallery's ~200
//! thumbnails carry the same token) pay for one signature check, not 200: ring's RSA-2048
//! verification is ~400 K instructions and P-256 ~750 K, against ~108 K for a whole request.
//!
//! - **Key**: the whole token, in a map keyed by its SipHash (std's, under a random key per
//!   process); a hit compares the token byte for byte, so no other token, however chosen,
//!   can ever use an entry (an entry admits whoever presents its token). A SHA-256 digest as
//!   the key (the token not kept) was measured first: hashing a ~480-byte RS256 token cost
//!   16.8 K instructions per request under callgrind, where this map costs ~2 K.
//! - **Lifetime**: an entry admits until the token's `exp` (not `exp` + `leeway`: past `exp`
//!   the token is verified again, and refused once beyond the leeway), and never after a
//!   JWKS refresh that removed or changed a key: such a refresh starts a new epoch, and an
//!   entry of an earlier epoch is a miss. Only tokens that passed every check are stored, and
//!   the checks (`iss`, `aud`, `nbf`) do not change while the gateway runs (`nbf` is in the
//!   past once a token passed).
//! - **Bounds**: [`MAX_ENTRIES`] entries and [`MAX_BYTES`] bytes, tokens and subjects counted
//!   (a token longer than [`MAX_TOKEN`] or a subject longer than [`MAX_SUBJECT`] is not
//!   cached: such tokens are verified each time), in [`SHARDS`] shards, each evicting its
//!   oldest entries first (FIFO: tokens are short-lived, and a token still in use is stored
//!   again at its next request).
//! - **Locks**: a lookup takes one shard's read lock, so concurrent lookups never wait for each
//!   other, even of the same token; only a miss that verified takes a write lock.

use http::HeaderValue;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Entries at most, all shards together.
const MAX_ENTRIES: usize = 16 * 1024;
/// Bytes at most, all shards together, counted as [`ENTRY_BYTES`] per entry plus its token and
/// subject.
const MAX_BYTES: usize = 8 * 1024 * 1024;
/// A longer token is not cached (an RS256 token with a few claims is ~500 bytes).
const MAX_TOKEN: usize = 4096;
/// A token whose subject is longer is not cached.
const MAX_SUBJECT: usize = 256;
/// What one entry costs besides its token and subject, counted generously: the map's slot
/// (key 16 bytes, entry 56, a control byte; up to twice that with the map's spare capacity),
/// the key in the FIFO (16, up to 32), the token's and the subject's allocation headers.
const ENTRY_BYTES: usize = 256;
const SHARDS: usize = 16;

/// The shard of a token: from its last bytes, the end of its signature (base64 of bytes only
/// the issuer chooses; only verified tokens are stored).
fn shard(token: &str) -> usize {
    token
        .bytes()
        .rev()
        .take(4)
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)))
        % SHARDS
}

struct Entry {
    /// The token's `exp` (Unix seconds): a miss from then on.
    until: u64,
    epoch: u64,
    /// The token's `sub`, as the upstream gets it.
    subject: Option<HeaderValue>,
}

impl Entry {
    fn bytes(&self, token: &str) -> usize {
        ENTRY_BYTES + token.len() + self.subject.as_ref().map_or(0, |s| s.len())
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<Arc<str>, Entry>,
    /// The map's keys, oldest first.
    order: VecDeque<Arc<str>>,
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

    /// The subject of `token` when it was verified in this epoch and its `exp` has not come
    /// (`now`, Unix seconds); `None`: not known, verify it.
    pub(crate) fn get(&self, token: &str, now: u64) -> Option<Option<HeaderValue>> {
        let epoch = self.epoch();
        let shard = self.shards[shard(token)].read().ok()?;
        let e = shard.map.get(token)?;
        (e.epoch == epoch && now < e.until).then(|| e.subject.clone())
    }

    /// Remembers a verified token until `exp`, as verified in `epoch`.
    pub(crate) fn insert(&self, token: &str, epoch: u64, exp: u64, subject: Option<HeaderValue>, now: u64) {
        let too_long = token.len() > MAX_TOKEN || subject.as_ref().is_some_and(|s| s.len() > MAX_SUBJECT);
        if exp <= now || too_long {
            return;
        }
        let entry = Entry {
            until: exp,
            epoch,
            subject,
        };
        let Ok(mut shard) = self.shards[shard(token)].write() else {
            return;
        };
        let shard = &mut *shard;
        shard.bytes += entry.bytes(token);
        match shard.map.get_mut(token) {
            // Stored again (expired, or of an older epoch): it keeps its place.
            Some(old) => {
                shard.bytes -= old.bytes(token);
                *old = entry;
            }
            None => {
                let key: Arc<str> = Arc::from(token);
                shard.order.push_back(key.clone());
                shard.map.insert(key, entry);
            }
        }
        while shard.map.len() > MAX_ENTRIES / SHARDS || shard.bytes > MAX_BYTES / SHARDS {
            let Some(oldest) = shard.order.pop_front() else {
                break;
            };
            if let Some(old) = shard.map.remove(&oldest) {
                shard.bytes -= old.bytes(&oldest);
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
        let t = "header.claims.sig";
        assert_eq!(c.get(t, NOW), None);
        let epoch = c.epoch();
        c.insert(t, epoch, NOW + 60, sub("alice"), NOW);
        assert_eq!(c.get(t, NOW), Some(sub("alice")));
        assert_eq!(c.get(t, NOW + 59), Some(sub("alice")));
        assert_eq!(c.get(t, NOW + 60), None, "at exp");
        // Any other byte is another token.
        assert_eq!(c.get("header.claims.sih", NOW), None);
        assert_eq!(c.get("header.claims.si", NOW), None);
        // A refresh that removed a key: forgotten.
        c.new_epoch();
        assert_eq!(c.get(t, NOW), None);
        // A verification that read the epoch before the refresh is stored stale.
        c.insert(t, epoch, NOW + 60, sub("alice"), NOW);
        assert_eq!(c.get(t, NOW), None);
        c.insert(t, c.epoch(), NOW + 60, None, NOW);
        assert_eq!(c.get(t, NOW), Some(None));
        assert_eq!(c.size().0, 1);
        // Nothing already expired, nothing too long.
        c.insert("other", c.epoch(), NOW, sub("bob"), NOW);
        c.insert(
            "other",
            c.epoch(),
            NOW + 60,
            sub(&"b".repeat(MAX_SUBJECT + 1)),
            NOW,
        );
        let long = "t".repeat(MAX_TOKEN + 1);
        c.insert(&long, c.epoch(), NOW + 60, sub("bob"), NOW);
        assert_eq!(c.get("other", NOW), None);
        assert_eq!(c.get(&long, NOW), None);
        assert_eq!(c.size().0, 1);
    }

    #[test]
    fn entries_and_bytes_stay_bounded_oldest_out_first() {
        let c = VerifiedTokens::new();
        for i in 0..MAX_ENTRIES * 3 {
            c.insert(&format!("t{i}"), 0, NOW + 60, sub("s"), NOW);
        }
        let (n, bytes) = c.size();
        assert!(n <= MAX_ENTRIES && n > MAX_ENTRIES * 9 / 10, "{n}");
        assert!(bytes <= MAX_BYTES, "{bytes}");
        // The newest are there, the oldest gone.
        assert!(c.get(&format!("t{}", MAX_ENTRIES * 3 - 1), NOW).is_some());
        assert!(c.get("t0", NOW).is_none());
        // Long tokens: bounded by bytes before entries.
        let c = VerifiedTokens::new();
        let long = "s".repeat(MAX_TOKEN - 10);
        for i in 0..MAX_ENTRIES {
            c.insert(&format!("{long}{i}"), 0, NOW + 60, sub("s"), NOW);
        }
        let (n, bytes) = c.size();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert!(n <= MAX_BYTES / MAX_TOKEN, "{n}");
    }
}
