//! The disk tier under the memory tier, as Pingora drives them: restarts, damaged files, meta
//! rewrites racing lookups, where file-system calls run, failing disks, two stores on one
//! directory.

use super::io::fs::Op;
use super::io::seam;
use super::*;
use crate::cache::index::ObjectId;
use crate::cache::storage::tests::{admitted, meta, read_all, span};
use crate::cache::storage::{Admission, Admitted, MemStorage};
use bytes::Bytes;
use pingora::cache::key::CacheHashKey;
use pingora::cache::{CacheKey, Storage};
use std::time::{Duration, Instant};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agw-disk-unit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn open(d: &Path, size: u64) -> &'static DiskStore {
    let metrics = CacheMetrics::get().unwrap();
    Box::leak(Box::new(DiskStore::open(d, size, metrics).unwrap()))
}

fn tiers(d: &Path, memory: usize) -> (&'static MemStorage, &'static DiskStore) {
    let disk = open(d, 64 << 20);
    let metrics = CacheMetrics::get().unwrap();
    (
        Box::leak(Box::new(MemStorage::new(memory, metrics, Some(disk)))),
        disk,
    )
}

fn key(id: &str) -> CacheKey {
    crate::cache::policy::key("/a/{id}", id, None)
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// Waits until no disk write is in flight.
async fn settle(d: &DiskStore) {
    let start = Instant::now();
    while d.stats().writes_in_flight > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a disk write never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Stores `data` as a memory fill with its disk copy, in chunks.
async fn store(s: &'static MemStorage, k: &CacheKey, data: &[u8]) {
    let mut w = s
        .get_miss_handler(k, &admitted(s, data.len()), &span())
        .await
        .unwrap();
    for c in data.chunks(20_000) {
        w.write_body(Bytes::copy_from_slice(c), false).await.unwrap();
    }
    w.finish().await.unwrap();
}

fn files(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A committed object is found again by a new store on the same directory, whole and by
/// range; temporary files of dead processes, damaged and orphaned files and files of the
/// previous format are deleted by the scan; an uncommitted write leaves nothing.
#[tokio::test]
async fn objects_survive_a_reopen_and_junk_is_deleted() {
    let d = dir("reopen");
    let (s, disk) = tiers(&d, 1 << 20);
    let data = body(200_000, 1);
    store(s, &key("one"), &data).await;
    // Dropped without `finish`: its temporary file goes.
    let mut w = s
        .get_miss_handler(&key("two"), &admitted(s, 10), &span())
        .await
        .unwrap();
    w.write_body(Bytes::from_static(b"01234"), false).await.unwrap();
    drop(w);
    settle(disk).await;
    let k1 = key("one").combined_bin();
    assert_eq!(
        files(&d),
        vec![
            format::body_name(&k1, disk.index().get(&k1).unwrap().id),
            format::meta_name(&k1)
        ]
    );
    std::fs::write(d.join(format::meta_name(&[3; 16])), b"not a meta").unwrap();
    std::fs::write(d.join(format!("{}.obj", format::hex(&[4; 16]))), b"old format").unwrap();
    std::fs::write(d.join("x.0000000000000001.999999999.1.tmp"), b"dead process").unwrap();
    let orphan = d.join(format::body_name(&[5; 16], 9));
    std::fs::write(&orphan, b"orphan").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&orphan)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let young = d.join(format::body_name(&[6; 16], 9));
    std::fs::write(&young, b"another process may be publishing it").unwrap();

    let again = open(&d, 64 << 20);
    assert_eq!(again.stats().objects, 1);
    assert_eq!(files(&d).len(), 3, "{:?}", files(&d));
    assert!(young.exists());
    let (m, r) = again.lookup(&k1).await.unwrap().unwrap();
    assert!(m.extensions().get::<ObjectId>().is_some());
    let mut r: pingora::cache::HitHandler = Box::new(r);
    assert_eq!(read_all(&mut r).await.unwrap(), data);
    r.seek(150_000, Some(150_010)).unwrap();
    assert_eq!(read_all(&mut r).await.unwrap(), &data[150_000..150_010]);
    assert!(r.seek(200_000, None).is_err());
    assert!(
        again
            .purge_asset(&crate::cache::policy::asset_tag("/a/{id}", "one"))
            .await
    );
    settle(again).await;
    let start = Instant::now();
    while files(&d).len() != 1 {
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", files(&d));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Item 2: a block that does not match its checksum ends the read with an error (never a
/// clean end), the object is deleted and counted; a truncated body file is found at lookup.
#[tokio::test]
async fn damaged_objects_are_never_served() {
    let d = dir("damaged");
    let (s, disk) = tiers(&d, 1 << 20);
    let (a, b) = (key("a").combined_bin(), key("b").combined_bin());
    store(s, &key("a"), &body(300_000, 2)).await;
    store(s, &key("b"), &body(100_000, 3)).await;
    settle(disk).await;
    let id_a = disk.index().get(&a).unwrap().id;
    let id_b = disk.index().get(&b).unwrap().id;
    let path_a = d.join(format::body_name(&a, id_a));
    let mut bytes = std::fs::read(&path_a).unwrap();
    bytes[200_000] ^= 0x10;
    std::fs::write(&path_a, bytes).unwrap();
    let path_b = d.join(format::body_name(&b, id_b));
    let len_b = std::fs::metadata(&path_b).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&path_b)
        .unwrap()
        .set_len(len_b - 100)
        .unwrap();

    let damaged = || CacheMetrics::get().unwrap().disk_damaged.get();
    let before = damaged();
    let (_, r) = disk.lookup(&a).await.unwrap().unwrap();
    let mut r: pingora::cache::HitHandler = Box::new(r);
    let mut got = 0;
    let end = loop {
        match r.read_body().await {
            Ok(Some(b)) => got += b.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(end.is_err(), "a damaged block must not end the body cleanly");
    assert_eq!(got, 3 * format::BLOCK, "the blocks before the damaged one");
    assert!(disk.lookup(&b).await.unwrap().is_none(), "a truncated body");
    assert!(damaged() >= before + 2);
    settle(disk).await;
    let start = Instant::now();
    while !files(&d).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", files(&d));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(disk.lookup(&a).await.unwrap().is_none());
    let _ = std::fs::remove_dir_all(&d);
}

/// Item 6: a meta rewrite is atomic: lookups racing a stream of rewrites always find the
/// object, never a torn or missing meta (the previous format truncated, then appended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_rewrites_are_atomic() {
    let d = dir("rewrite");
    let (s, disk) = tiers(&d, 1 << 20);
    let k = key("r");
    store(s, &k, &body(50_000, 4)).await;
    settle(disk).await;
    let kb = k.combined_bin();
    let id = disk.index().get(&kb).unwrap().id;
    let rewrites = tokio::spawn(async move {
        for i in 0..300 {
            let mut m = meta(50_000);
            m.response_header_mut()
                .insert_header("etag", format!("\"{i}\""))
                .unwrap();
            assert!(disk.update_meta(&kb, id, m.serialize().unwrap()).await);
        }
    });
    let mut lookups = 0;
    while !rewrites.is_finished() {
        assert!(
            disk.lookup(&kb).await.unwrap().is_some(),
            "a lookup missed during a rewrite"
        );
        lookups += 1;
    }
    rewrites.await.unwrap();
    assert!(lookups > 10);
    let _ = std::fs::remove_dir_all(&d);
}

/// Item 5: every file-system call of fills, commits, lookups, reads, meta rewrites, purges,
/// evictions and deletions of damaged objects runs on the disk pools, never on the caller's
/// (runtime) thread and never under an index lock.
#[tokio::test]
async fn file_system_calls_run_on_the_pools_and_never_under_an_index_lock() {
    let d = dir("threads");
    let metrics = CacheMetrics::get().unwrap();
    let disk: &'static DiskStore = Box::leak(Box::new(DiskStore::open(&d, 1 << 20, metrics).unwrap()));
    let s: &'static MemStorage = Box::leak(Box::new(MemStorage::new(4 << 20, metrics, Some(disk))));
    seam::watch(&d);
    for i in 0..6 {
        store(s, &key(&format!("k{i}")), &body(300_000, i as u8)).await;
    }
    settle(disk).await;
    // The objects still on disk (which ones depends on the order the commits ran in).
    let on_disk: Vec<String> = (0..6)
        .map(|i| format!("k{i}"))
        .filter(|id| disk.index().get(&key(id).combined_bin()).is_some())
        .collect();
    assert!(on_disk.len() >= 2, "{on_disk:?}");
    let k = key(&on_disk[0]);
    let kb = k.combined_bin();
    let (mut m, _) = s.lookup(&k, &span()).await.unwrap().unwrap();
    m.response_header_mut().insert_header("etag", "\"x\"").unwrap();
    assert!(s.update_meta(&k, &m, &span()).await.unwrap());
    let (_, r) = disk.lookup(&kb).await.unwrap().unwrap();
    let mut r: pingora::cache::HitHandler = Box::new(r);
    read_all(&mut r).await.unwrap();
    assert!(
        s.purge_asset(&crate::cache::policy::asset_tag("/a/{id}", "k1"))
            .await
    );
    s.remove_key(&kb);
    let other = key(&on_disk[1]).combined_bin();
    let id = disk.index().get(&other).map(|e| e.id);
    disk.damaged(&other, id, "test");
    settle(disk).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v = seam::violations(&d);
    assert!(v.is_empty(), "{v:#?}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Item 8: with failing writes (EIO) or a full disk (ENOSPC), fills held in memory complete
/// and are stored in memory; a fill too large for memory whose copy fails mid-way still
/// gives its readers every byte; the tier says it stopped, and stores again by itself once
/// the disk works.
#[tokio::test]
async fn a_failing_disk_changes_nothing_for_readers() {
    let d = dir("failing");
    let (s, disk) = tiers(&d, 1 << 20);
    for (errno, state) in [(libc::EIO, "failing"), (libc::ENOSPC, "full")] {
        seam::fail(&d, Op::Write, errno);
        let k = key(&format!("m{errno}"));
        let data = body(200_000, 5);
        store(s, &k, &data).await;
        settle(disk).await;
        assert_eq!(disk.stats().state, state);
        assert_eq!(disk.stats().objects, 0);
        let (_, mut r) = s.lookup(&k, &span()).await.unwrap().unwrap();
        assert_eq!(read_all(&mut r).await.unwrap(), data, "from memory");
        seam::heal(&d);
    }
    // A spilling fill: its disk copy fails after the first 200 KB.
    let k = key("spill");
    let kb = k.combined_bin();
    let len = 3 << 20;
    let data = body(len, 6);
    let prepared = disk.prepare(kb, s.next_id(), &k.user_tag, len).await.unwrap();
    let mut m = meta(len);
    m.extensions_mut()
        .insert(Admission::new(Admitted::Disk(prepared)));
    let mut w = s.get_miss_handler(&k, &m, &span()).await.unwrap();
    let (_, mut follower) = s.lookup(&k, &span()).await.unwrap().unwrap();
    let reading = tokio::spawn(async move { read_all(&mut follower).await });
    for (i, c) in data.chunks(16_384).enumerate() {
        if i == 13 {
            seam::fail(&d, Op::Write, libc::EIO);
        }
        w.write_body(Bytes::copy_from_slice(c), false).await.unwrap();
    }
    w.finish().await.unwrap();
    assert_eq!(
        reading.await.unwrap().unwrap(),
        data,
        "the follower got every byte"
    );
    settle(disk).await;
    assert_eq!(disk.stats().state, "failing");
    assert!(s.lookup(&k, &span()).await.unwrap().is_none(), "not stored");
    seam::heal(&d);
    store(s, &key("after"), &body(100_000, 7)).await;
    settle(disk).await;
    assert_eq!(disk.stats().state, "storing");
    assert_eq!(disk.stats().objects, 1);
    let _ = std::fs::remove_dir_all(&d);
}

/// Item 7: two stores on one directory (an old and a new process during an upgrade): each
/// finds what the other stored after it opened, and a store replacing the other's object
/// deletes only that object's files, never the newer one.
#[tokio::test]
async fn two_stores_share_a_directory() {
    let d = dir("shared");
    let (old, old_disk) = tiers(&d, 1 << 20);
    let (new, new_disk) = tiers(&d, 1 << 20);
    let k = key("shared");
    let kb = k.combined_bin();
    store(old, &k, &body(100_000, 8)).await;
    settle(old_disk).await;
    let (_, r) = new_disk.lookup(&kb).await.unwrap().expect("the old one's object");
    let mut r: pingora::cache::HitHandler = Box::new(r);
    assert_eq!(read_all(&mut r).await.unwrap(), body(100_000, 8));
    store(new, &k, &body(120_000, 9)).await;
    settle(new_disk).await;
    // The old store's index still names its own object: it finds the new one, whole.
    let (_, r) = old_disk.lookup(&kb).await.unwrap().expect("the new one's object");
    let mut r: pingora::cache::HitHandler = Box::new(r);
    assert_eq!(read_all(&mut r).await.unwrap(), body(120_000, 9));
    assert_eq!(files(&d).len(), 2, "{:?}", files(&d));
    let _ = std::fs::remove_dir_all(&d);
}

/// A fill's `finish` does not wait for its disk copy, which commits after the fill's last byte
/// reached its readers; a spilling fill's `finish` waits only for its bytes to be in the file,
/// and one dropped during that wait (its task cancelled) still completes its readers, every
/// byte, cleanly (the previous design's regression test for 32a3999, where `finish` waited for
/// the rename).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_dropped_while_it_waits_for_the_file_completes_the_fill() {
    let d = dir("finish");
    let (s, disk) = tiers(&d, 4 << 20);
    let k = key("in-memory");
    let mut w = s
        .get_miss_handler(&k, &admitted(s, 1 << 20), &span())
        .await
        .unwrap();
    w.write_body(Bytes::from(vec![1u8; 1 << 20]), false)
        .await
        .unwrap();
    let mut finish = w.finish();
    assert!(
        futures::poll!(&mut finish).is_ready(),
        "finish waited for the disk"
    );
    assert!(s.lookup(&k, &span()).await.unwrap().is_some());

    let k = key("spilling");
    let (chunk, chunks) = (1 << 20, 16);
    let len = chunk * chunks;
    let prepared = disk
        .prepare(k.combined_bin(), s.next_id(), &k.user_tag, len)
        .await
        .unwrap();
    let mut m = meta(len);
    m.extensions_mut()
        .insert(Admission::new(Admitted::Disk(prepared)));
    let mut w = s.get_miss_handler(&k, &m, &span()).await.unwrap();
    let (_, mut r) = s.lookup(&k, &span()).await.unwrap().unwrap();
    let reader = tokio::spawn(async move { read_all(&mut r).await });
    // A disk that lags: the file cannot have every byte when `finish` is first polled, so the
    // drop below always lands while it waits.
    seam::hold(&d, Op::Write);
    for i in 0..chunks {
        w.write_body(Bytes::from(vec![i as u8; chunk]), false)
            .await
            .unwrap();
    }
    let mut finish = w.finish();
    assert!(
        futures::poll!(&mut finish).is_pending(),
        "finish must wait for the file's bytes"
    );
    drop(finish);
    seam::release(&d);
    let body = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the reader must end, not wait")
        .unwrap()
        .expect("the fill's reader must end cleanly");
    assert_eq!(body.len(), len);
    assert!(body
        .chunks(chunk)
        .enumerate()
        .all(|(i, c)| c.iter().all(|b| *b == i as u8)));
    settle(disk).await;
    let _ = std::fs::remove_dir_all(&d);
}

/// A block read fills a buffer that was not zeroed, exactly, at its offset; a file shorter than
/// the block is an error, never a short block.
#[test]
fn blocks_are_read_into_unzeroed_buffers() {
    let d = dir("uninit");
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("f");
    let data = body(200_000, 7);
    std::fs::write(&path, &data).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let mut buf = bytes::BytesMut::with_capacity(4);
    buf.extend_from_slice(b"head");
    super::io::fs::read_at_uninit(&f, &path, &mut buf, 100_000, 70_000).unwrap();
    assert_eq!(&buf[..4], b"head");
    assert!(buf[4..] == data[70_000..170_000]);
    let mut short = bytes::BytesMut::new();
    let e = super::io::fs::read_at_uninit(&f, &path, &mut short, 100_000, 150_000).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    let _ = std::fs::remove_dir_all(&d);
}
