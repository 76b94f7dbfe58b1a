//! The memory tier through the `Storage` interface Pingora uses.

use super::*;
use crate::cache::fill::MAX_READ;
use bytes::Bytes;
use pingora::cache::storage::MissFinishType;
use pingora::cache::trace::Span;
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime};

pub(crate) fn storage(limit: usize) -> &'static MemStorage {
    let metrics = CacheMetrics::get().unwrap();
    Box::leak(Box::new(MemStorage::new(limit, metrics, None)))
}

/// The meta of a 200 of `len` bytes, fresh for a minute.
pub(crate) fn meta(len: usize) -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    h.insert_header("content-length", len.to_string()).unwrap();
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
}

/// `meta(len)` admitted to memory, as `response_cache_filter` hands it on.
pub(crate) fn admitted(s: &'static MemStorage, len: usize) -> CacheMeta {
    let mut m = meta(len);
    let charge = s.tier.reserve(len).expect("admitted to memory");
    m.extensions_mut()
        .insert(Admission::new(Admitted::Memory(charge)));
    m
}

fn key(id: &str) -> CacheKey {
    crate::cache::policy::key("/a/{id}", id, None)
}

pub(crate) fn span() -> SpanHandle {
    Span::inactive().handle()
}

pub(crate) async fn read_all(h: &mut HitHandler) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(b) = h.read_body().await? {
        assert!(b.len() <= MAX_READ);
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// Stores `body` under `k`.
async fn store(s: &'static MemStorage, k: &CacheKey, body: &[u8]) {
    let mut w = s
        .get_miss_handler(k, &admitted(s, body.len()), &span())
        .await
        .unwrap();
    w.write_body(Bytes::copy_from_slice(body), true).await.unwrap();
    w.finish().await.unwrap();
}

/// #932: a writer dropped mid-body fails its readers, never ends them cleanly, and the
/// next lookup misses.
#[tokio::test]
async fn a_dropped_writer_fails_its_readers() {
    let s = storage(1 << 20);
    let k = key("x");
    let mut w = s.get_miss_handler(&k, &admitted(s, 10), &span()).await.unwrap();
    w.write_body(Bytes::from_static(b"hello"), false).await.unwrap();
    let (_, mut r) = s.lookup(&k, &span()).await.unwrap().unwrap();
    assert_eq!(r.read_body().await.unwrap().unwrap(), "hello");
    let waiting = tokio::spawn(async move { r.read_body().await });
    drop(w);
    // Bounded: with the guard broken the reader would wait for bytes forever.
    let e = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the reader must end with an error, not wait")
        .unwrap()
        .unwrap_err();
    assert_eq!(e.etype(), &FILL_ABORTED);
    assert!(s.lookup(&k, &span()).await.unwrap().is_none());
}

/// Item 4: admission checks and charges in one step. A burst of fills admitted before any of
/// them writes a byte stays within the bound together (before, each read the counter, all
/// passed, and the charges came later); objects make room for them; charges end with their
/// writers.
#[tokio::test]
async fn a_burst_of_admissions_stays_within_the_bound() {
    let s = storage(1 << 20);
    store(s, &key("old"), &[7u8; 300 << 10]).await;
    assert_eq!(s.stats().memory.objects, 1);
    let charges: Vec<_> = (0..8).filter_map(|_| s.tier.reserve(300 << 10)).collect();
    assert_eq!(charges.len(), 3, "three 300 KiB fills fit 1 MiB, not more");
    assert_eq!(s.stats().memory.objects, 0, "the object made room for them");
    assert!(s.tier.reserve(300 << 10).is_none());
    drop(charges);
    assert!(s.tier.reserve(900 << 10).is_some());
}

/// Fills in progress count against the bound: objects committed while a fill runs evict to
/// leave it room, and a writer's charge ends with it.
#[tokio::test]
async fn fills_in_progress_count_against_the_bound() {
    let s = storage(1 << 20);
    let (big, small) = (600 << 10, 300 << 10);
    let mut w = s
        .get_miss_handler(&key("a"), &admitted(s, big), &span())
        .await
        .unwrap();
    assert!(s.tier.reserve(big).is_none(), "two 600 KiB fills in 1 MiB");
    store(s, &key("b"), &vec![1u8; small]).await;
    assert_eq!(s.stats().memory.objects, 1);
    store(s, &key("c"), &vec![2u8; small]).await;
    assert_eq!(
        s.stats().memory.objects,
        1,
        "b was evicted: b + c + the fill exceed 1 MiB"
    );
    assert!(s.stats().memory.bytes + big <= 1 << 20);
    // The fill fails: its charge goes with it.
    w.write_body(Bytes::from(vec![3u8; 10]), false).await.unwrap();
    drop(w);
    assert!(s.tier.reserve(big).is_some());
}

/// Item 3: a fill too large for memory whose disk copy does not start is refused by
/// `get_miss_handler` (Pingora then streams the response through uncached): nothing is
/// registered or charged, and its disk file and room go. Admitted to disk (its file prepared
/// under the key without variance), the key gains its variance (`Vary`) and the room moved to
/// the new key cannot be had (here: the length `get_miss_handler` sees does not fit the tier),
/// so `start_write` returns `None`: the guard after it is what refuses the fill. (A meta that
/// was never admitted is refused earlier and would not reach the guard.)
#[tokio::test]
async fn a_large_fill_without_a_disk_copy_is_not_buffered() {
    let d = std::env::temp_dir().join(format!("agw-storage-unit-large-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let metrics = CacheMetrics::get().unwrap();
    let disk: &'static DiskStore = Box::leak(Box::new(DiskStore::open(&d, 4 << 20, metrics).unwrap()));
    let s: &'static MemStorage = Box::leak(Box::new(MemStorage::new(1 << 20, metrics, Some(disk))));
    let plain = key("large");
    let mut varied = key("large");
    varied.set_variance_key(pingora::cache::key::hash_key("accept-encoding: gzip"));
    assert_ne!(plain.combined_bin(), varied.combined_bin());
    let prepared = disk
        .prepare(plain.combined_bin(), s.next_id(), &plain.user_tag, 2 << 20)
        .await
        .expect("the file is prepared");
    assert_eq!(disk.stats().writes_in_flight, 1);
    let mut m = meta(8 << 20);
    m.extensions_mut()
        .insert(Admission::new(Admitted::Disk(prepared)));
    assert!(s.get_miss_handler(&varied, &m, &span()).await.is_err());
    for k in [&plain, &varied] {
        assert!(s.lookup(k, &span()).await.unwrap().is_none());
    }
    assert_eq!(s.stats().memory.fills, 0, "nothing registered");
    assert!(s.tier.reserve(1 << 20).is_some(), "nothing was charged");
    assert_eq!(disk.stats().writes_in_flight, 0, "the disk room was given back");
    let _ = std::fs::remove_dir_all(&d);
}

/// A new version that does not fit memory still replaces the old one there: lookups try
/// memory first, and a stale old version would hide the new one (on disk, in production).
#[tokio::test]
async fn a_new_version_too_large_for_memory_removes_the_old_one() {
    let s = storage(1 << 20);
    let k = key("v");
    store(s, &k, b"small").await;
    assert!(s.lookup(&k, &span()).await.unwrap().is_some());
    // Admitted (as if to disk), its body ends up larger than the tier with its overheads.
    let len = (1 << 20) - 300;
    store(s, &k, &vec![0u8; len]).await;
    assert!(s.lookup(&k, &span()).await.unwrap().is_none());
    assert_eq!(s.stats().memory.objects, 0);
}

/// A body shorter than its Content-Length is a failure at `finish`, not an object.
#[tokio::test]
async fn a_short_body_is_not_committed() {
    let s = storage(1 << 20);
    let k = key("short");
    let mut w = s.get_miss_handler(&k, &admitted(s, 10), &span()).await.unwrap();
    w.write_body(Bytes::from_static(b"hello"), true).await.unwrap();
    let (_, mut r) = s.lookup(&k, &span()).await.unwrap().unwrap();
    assert!(w.finish().await.is_err());
    let read = tokio::time::timeout(Duration::from_secs(10), read_all(&mut r)).await;
    assert!(read
        .expect("the reader must end with an error, not wait")
        .is_err());
    assert!(s.lookup(&k, &span()).await.unwrap().is_none());
    assert_eq!(s.stats().memory.objects, 0);
}

/// Readers follow the fill, a range of it waits for its bytes, and `finish` commits.
#[tokio::test]
async fn readers_follow_the_fill_and_seek() {
    let s = storage(1 << 20);
    let k = key("fill");
    let mut w = s.get_miss_handler(&k, &admitted(s, 10), &span()).await.unwrap();
    let (_, mut whole) = s.lookup(&k, &span()).await.unwrap().unwrap();
    let (_, mut range) = s.lookup(&k, &span()).await.unwrap().unwrap();
    range.seek(6, Some(8)).unwrap();
    assert!(range.seek(10, None).is_err(), "past the declared length");
    range.seek(6, Some(8)).unwrap();
    let whole = tokio::spawn(async move { read_all(&mut whole).await });
    let range = tokio::spawn(async move { read_all(&mut range).await });
    w.write_body(Bytes::from_static(b"01234"), false).await.unwrap();
    w.write_body(Bytes::from_static(b"56789"), false).await.unwrap();
    assert_eq!(range.await.unwrap().unwrap(), b"67");
    assert!(matches!(w.finish().await.unwrap(), MissFinishType::Created(10)));
    assert_eq!(whole.await.unwrap().unwrap(), b"0123456789");
    let (_, mut hit) = s.lookup(&k, &span()).await.unwrap().unwrap();
    assert!(!hit.as_any().downcast_ref::<Reader>().unwrap().joined_fill);
    assert_eq!(read_all(&mut hit).await.unwrap(), b"0123456789");
    assert_eq!(s.stats().memory.objects, 1);
}

/// The bound holds: the least recently used object goes.
#[tokio::test]
async fn eviction_is_lru_and_bounded() {
    // Room for three objects of 1000 bytes with their header and overheads, not four.
    let probe = storage(1 << 20);
    store(probe, &key("probe"), &[0u8; 1000]).await;
    let limit = probe.stats().memory.bytes * 7 / 2;
    let s = storage(limit);
    for id in ["a", "b", "c", "d"] {
        if id == "d" {
            // "a" becomes the most recently used: "b" is evicted next.
            assert!(s.lookup(&key("a"), &span()).await.unwrap().is_some());
        }
        store(s, &key(id), &[0u8; 1000]).await;
        assert!(s.stats().memory.bytes <= limit);
    }
    let present = |id: &'static str| async move { s.lookup(&key(id), &span()).await.unwrap().is_some() };
    assert!(present("a").await && present("c").await && present("d").await);
    assert!(!present("b").await, "b was the least recently used");
    assert!(
        s.purge_asset(&crate::cache::policy::asset_tag("/a/{id}", "a"))
            .await
    );
    assert!(!present("a").await);
    assert_eq!(s.stats().memory.objects, 2);
}

/// Item 1: a 304 refreshes only the object its revalidation started from. One that arrives
/// after a newer object was stored for the key (its meta built from the old object's header)
/// changes nothing.
#[tokio::test]
async fn a_late_304_refreshes_nothing_newer() {
    let s = storage(1 << 20);
    let k = key("late");
    store(s, &k, b"old").await;
    let (mut stale, _) = s.lookup(&k, &span()).await.unwrap().unwrap();
    store(s, &k, b"newer body").await;
    // What Pingora writes after the 304: the old object's meta (its id kept), refreshed.
    stale
        .response_header_mut()
        .insert_header("etag", "\"old\"")
        .unwrap();
    assert!(!s.update_meta(&k, &stale, &span()).await.unwrap());
    let (m, mut r) = s.lookup(&k, &span()).await.unwrap().unwrap();
    assert_eq!(m.headers().get("content-length").unwrap(), "10");
    assert!(m.headers().get("etag").is_none());
    // Memory keeps the meta parsed, without what the fill's request attached to it.
    assert!(m.extensions().get::<Admission>().is_none());
    assert_eq!(read_all(&mut r).await.unwrap(), b"newer body");
    // The current object's own revalidation does refresh it.
    let (mut current, _) = s.lookup(&k, &span()).await.unwrap().unwrap();
    current
        .response_header_mut()
        .insert_header("etag", "\"new\"")
        .unwrap();
    let before = s.stats().memory.bytes;
    assert!(s.update_meta(&k, &current, &span()).await.unwrap());
    let (m, _) = s.lookup(&k, &span()).await.unwrap().unwrap();
    assert_eq!(m.headers().get("etag").unwrap(), "\"new\"");
    // The object's charge follows its header.
    assert!(s.stats().memory.bytes > before);
}

/// A whole body of several upstream reads is packed at `finish`: hits read it in `MAX_READ`
/// pieces, not one per upstream read, and a reader that followed the fill reads on unchanged.
#[tokio::test]
async fn a_finished_body_is_served_in_large_pieces() {
    let s = storage(1 << 20);
    let k = key("packed");
    let body: Vec<u8> = (0..160 * 1024).map(|i| (i % 251) as u8).collect();
    let mut w = s
        .get_miss_handler(&k, &admitted(s, body.len()), &span())
        .await
        .unwrap();
    let (_, mut follower) = s.lookup(&k, &span()).await.unwrap().unwrap();
    let mut followed = Vec::new();
    for (i, piece) in body.chunks(16 * 1024).enumerate() {
        w.write_body(Bytes::copy_from_slice(piece), false).await.unwrap();
        if i < 3 {
            followed.extend_from_slice(&follower.read_body().await.unwrap().unwrap());
        }
    }
    assert!(matches!(w.finish().await.unwrap(), MissFinishType::Created(_)));
    followed.extend_from_slice(&read_all(&mut follower).await.unwrap());
    assert!(followed == body);
    let (_, mut hit) = s.lookup(&k, &span()).await.unwrap().unwrap();
    let mut reads = Vec::new();
    while let Some(b) = hit.read_body().await.unwrap() {
        reads.push(b);
    }
    assert_eq!(
        reads.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [MAX_READ, MAX_READ, 32 * 1024]
    );
    assert!(reads.concat() == body);
}
