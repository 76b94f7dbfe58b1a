//! The disk tier: found again after a restart (whole body and Range, without the origin), a
//! failed fill leaves nothing on disk, eviction keeps `disk.size`, a purge removes the file,
//! `-t` refuses a path that cannot be created, and `GET /cache` reports both tiers. Real
//! gateway process, real origin, real client; no test asserts on time.

mod common;

use common::origin::{pattern, Behavior, Origin};
use common::{client, free_addrs, temp_dir, wait_listening, Gateway};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const IDS: [&str; 5] = [
    "0d15c2a7-9b4d-4e8a-8c21-5d6f7a8b9c01",
    "0d15c2a7-9b4d-4e8a-8c21-5d6f7a8b9c02",
    "0d15c2a7-9b4d-4e8a-8c21-5d6f7a8b9c03",
    "0d15c2a7-9b4d-4e8a-8c21-5d6f7a8b9c04",
    "0d15c2a7-9b4d-4e8a-8c21-5d6f7a8b9c05",
];

fn yaml(origin: SocketAddr, admin: SocketAddr, disk: &Path, size: &str) -> String {
    yaml_mem(origin, admin, disk, size, "64MiB")
}

fn yaml_mem(origin: SocketAddr, admin: SocketAddr, disk: &Path, size: &str, memory: &str) -> String {
    format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}"]
  admin: "{admin}"
  cache:
    memory: {memory}
    # The revalidation test waits for its own 304.
    stale_while_revalidate: 0s
    disk: {{path: "{}", size: {size}}}
  upstreams:
    assets:
      peers: ["{origin}"]
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
"#,
        disk.display()
    )
}

/// A gateway with a disk tier in `disk`, in front of `origin`; returns it and its admin address.
fn start(origin: &Origin, disk: &Path, size: &str) -> (Gateway, SocketAddr) {
    start_mem(origin, disk, size, "64MiB")
}

fn start_mem(origin: &Origin, disk: &Path, size: &str, memory: &str) -> (Gateway, SocketAddr) {
    let [listen, admin] = free_addrs();
    let gw = Gateway::start_at(&yaml_mem(origin.addr, admin, disk, size, memory), &[], listen);
    wait_listening(admin);
    (gw, admin)
}

async fn get(url: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut req = client().get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let cs = r
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cs, r.bytes().await.unwrap().to_vec())
}

use common::{cache_json, eventually, metric, scrape, settled};

/// The files in the disk directory: (name, size).
fn files(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

/// The objects' body files (`<key>.<id>.obj`; each has a `<key>.meta`).
fn objects(dir: &Path) -> Vec<(String, u64)> {
    files(dir)
        .into_iter()
        .filter(|(n, _)| n.ends_with(".obj"))
        .collect()
}

/// Bytes of all the objects' files (bodies and metas).
fn disk_bytes(dir: &Path) -> u64 {
    files(dir)
        .iter()
        .filter(|(n, _)| n.ends_with(".obj") || n.ends_with(".meta"))
        .map(|(_, len)| len)
        .sum()
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

fn disk_dir() -> Dir {
    // A directory the gateway creates itself.
    Dir(temp_dir().join("disk-cache"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_disk_tier_hits_without_the_origin() {
    let origin = Origin::start().await;
    let dir = disk_dir();
    let size = 300_000u64;
    let id = IDS[0];
    origin.set(id, Behavior::Generated { size });
    let (gw, admin) = start(&origin, &dir.0, "64MiB");
    let url = gw.asset_url(id);
    let (status, cs, body) = get(&url, None).await;
    assert_eq!(
        (status, cs.as_str()),
        (200, "asset-gateway; fwd=uri-miss; stored")
    );
    assert!(body == pattern(0..size));
    settled(admin).await;
    let objs = objects(&dir.0);
    assert_eq!(objs.len(), 1, "{:?}", files(&dir.0));
    assert!(objs[0].1 > size);
    let json = cache_json(admin).await;
    assert_eq!(json["disk"]["objects"], 1, "{json}");
    assert_eq!(json["disk"]["bytes"].as_u64(), Some(disk_bytes(&dir.0)), "{json}");
    assert_eq!(json["memory"]["objects"], 1, "{json}");
    drop(gw);

    // A new process: memory is empty, the disk tier answers.
    let (gw, admin) = start(&origin, &dir.0, "64MiB");
    let json = cache_json(admin).await;
    assert_eq!(json["disk"]["objects"], 1, "{json}");
    assert_eq!(json["disk"]["limit"].as_u64(), Some(64 << 20), "{json}");
    assert_eq!(json["memory"]["objects"], 0, "{json}");
    let url = gw.asset_url(id);
    let (status, cs, body) = get(&url, None).await;
    assert_eq!(status, 200);
    assert!(cs.contains("; hit"), "{cs}");
    assert!(body == pattern(0..size), "byte-identical body from disk");
    let (status, _, body) = get(&url, Some("bytes=100000-200099")).await;
    assert_eq!(status, 206);
    assert!(body == pattern(100_000..200_100), "a range from disk");
    let (status, _, body) = get(&url, Some("bytes=-10")).await;
    assert_eq!(status, 206);
    assert!(body == pattern(size - 10..size));
    assert_eq!(
        origin.requests_for(id),
        1,
        "the origin saw only the first request"
    );
    // Disk hits are served from the file, not copied back into memory.
    let json = cache_json(admin).await;
    assert_eq!(
        json["memory"]["objects"], 0,
        "a disk hit was copied to memory: {json}"
    );
    let m = scrape(admin).await;
    assert!(metric(&m, "asset_gateway_cache_disk_hits_total") >= 3.0, "{m}");
    assert!(
        metric(&m, "asset_gateway_cache_disk_hit_bytes_total") >= size as f64,
        "{m}"
    );
    assert_eq!(
        metric(&m, "asset_gateway_cache_disk_bytes"),
        disk_bytes(&dir.0) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_leaves_nothing_on_disk() {
    let origin = Origin::start().await;
    let dir = disk_dir();
    let id = IDS[1];
    let total = 1024 * 1024;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    origin.set(
        id,
        Behavior::FailAfterHold {
            first: 64 * 1024,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let (gw, admin) = start(&origin, &dir.0, "64MiB");
    let url = gw.asset_url(id);
    let c = tokio::spawn(async move { client().get(url).send().await.unwrap().bytes().await });
    eventually("the origin holds mid-body", || held.load(Ordering::SeqCst)).await;
    // The temp file exists while the fill streams.
    eventually("a temp file", || {
        files(&dir.0).iter().any(|(n, _)| n.ends_with(".tmp"))
    })
    .await;
    release.notify_one();
    assert!(c.await.unwrap().is_err(), "the client must not see a clean end");
    eventually("no file left", || files(&dir.0).is_empty()).await;
    settled(admin).await;
    assert_eq!(cache_json(admin).await["disk"]["objects"], 0);

    origin.set(id, Behavior::Generated { size: total as u64 });
    let url = gw.asset_url(id);
    let (_, cs, body) = get(&url, None).await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
    assert!(body == pattern(0..total as u64));
    settled(admin).await;
    assert_eq!(objects(&dir.0).len(), 1);
    assert_eq!(origin.requests_for(id), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_disk_bound() {
    let origin = Origin::start().await;
    let dir = disk_dir();
    let size = 300_000u64;
    let bound = 1u64 << 20;
    let (gw, admin) = start(&origin, &dir.0, "1MiB");
    for id in IDS {
        origin.set(id, Behavior::Generated { size });
        let (status, _, body) = get(&gw.asset_url(id), None).await;
        assert_eq!(status, 200);
        assert!(body == pattern(0..size));
        settled(admin).await;
        let on_disk = disk_bytes(&dir.0);
        assert!(on_disk <= bound, "{on_disk} bytes on disk");
        assert_eq!(cache_json(admin).await["disk"]["bytes"].as_u64(), Some(on_disk));
    }
    assert_eq!(objects(&dir.0).len(), 3, "{:?}", files(&dir.0));
    let m = scrape(admin).await;
    assert_eq!(metric(&m, "asset_gateway_cache_disk_evictions_total"), 2.0, "{m}");
    drop(gw);

    // After a restart the oldest objects are misses, the newest a hit.
    let (gw, _admin) = start(&origin, &dir.0, "1MiB");
    let (_, cs, _) = get(&gw.asset_url(IDS[4]), None).await;
    assert!(cs.contains("; hit"), "{cs}");
    let (_, cs, _) = get(&gw.asset_url(IDS[0]), None).await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
    assert_eq!(origin.requests_for(IDS[4]), 1);
    assert_eq!(origin.requests_for(IDS[0]), 2);
}

/// A restart with a smaller `size` evicts the oldest objects at start-up until the rest fit;
/// the newest stay hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_smaller_size_evicts_the_oldest() {
    let origin = Origin::start().await;
    let dir = disk_dir();
    let size = 600_000u64;
    let (gw, admin) = start(&origin, &dir.0, "2MiB");
    for id in &IDS[..3] {
        origin.set(id, Behavior::Generated { size });
        let (_, cs, _) = get(&gw.asset_url(id), None).await;
        assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
        settled(admin).await;
    }
    assert_eq!(objects(&dir.0).len(), 3, "{:?}", files(&dir.0));
    drop(gw);

    let (gw, admin) = start(&origin, &dir.0, "1400KiB");
    let on_disk = objects(&dir.0);
    assert_eq!(on_disk.len(), 2, "{:?}", files(&dir.0));
    assert!(on_disk.iter().map(|o| o.1).sum::<u64>() <= 1400 * 1024);
    let json = cache_json(admin).await;
    assert_eq!(json["disk"]["objects"], 2, "{json}");
    for id in &IDS[1..3] {
        let (_, cs, body) = get(&gw.asset_url(id), None).await;
        assert!(cs.contains("; hit"), "{id}: {cs}");
        assert!(body == pattern(0..size));
    }
    let (_, cs, _) = get(&gw.asset_url(IDS[0]), None).await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored", "the oldest was kept");
    assert_eq!(
        [IDS[0], IDS[1], IDS[2]].map(|id| origin.requests_for(id)),
        [2, 1, 1]
    );
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A fill larger than `memory` leaves memory as it is written to its file: with 128 MiB of a
/// 160 MiB object written (the origin holding the rest), the gateway's resident memory has
/// grown by less than half of those 128 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_larger_than_memory_leaves_memory_while_it_fills() {
    let origin = Origin::start().await;
    let dir = disk_dir();
    let id = IDS[2];
    let (first, total) = (128 << 20, 160 << 20);
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    origin.set(
        id,
        Behavior::HoldAfter {
            first,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );
    // The origin holds the fill for as long as the test waits for the memory to go: the
    // upstream read timeout (10 s) must not end the fill (and free its memory) first.
    let [listen, admin] = free_addrs();
    let yaml = yaml_mem(origin.addr, admin, &dir.0, "256MiB", "1MiB")
        .replace("      peers:", "      read_timeout: 1h\n      peers:");
    let gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(admin);
    let before = rss(gw.pid());
    let url = gw.asset_url(id);
    let client = tokio::spawn(async move {
        let mut r = client().get(url).send().await.unwrap();
        let mut got = 0u64;
        while let Some(chunk) = r.chunk().await.unwrap() {
            got += chunk.len() as u64;
        }
        got
    });
    eventually("the origin holds after 128 MiB", || held.load(Ordering::SeqCst)).await;
    // Freed chunks go back to the OS within a second or so (`memory`) once the disk writer
    // has caught up: wait for that (a loaded machine writes late). The allocator keeps some
    // freed memory (about 30 MB here), never the 128 MiB written: with the chunks kept in
    // memory this never happens.
    let pid = gw.pid();
    eventually("the gateway holds less than half of the 128 MiB written", || {
        rss(pid) < before + (64 << 20)
    })
    .await;
    eprintln!(
        "{} MiB of the fill written: the gateway grew by {} bytes",
        first >> 20,
        rss(pid).saturating_sub(before)
    );
    release.notify_one();
    assert_eq!(client.await.unwrap(), total as u64);
    settled(admin).await;
    let json = cache_json(admin).await;
    assert_eq!(json["memory"]["objects"], 0, "{json}");
    assert_eq!(json["disk"]["objects"], 1, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_removes_the_disk_copy() {
    let origin = Origin::start().await;
    let dir = disk_dir();
    let (a, b) = (IDS[2], IDS[3]);
    origin.set(a, Behavior::Generated { size: 5000 });
    origin.set(b, Behavior::Generated { size: 5000 });
    let (gw, admin) = start(&origin, &dir.0, "64MiB");
    get(&gw.asset_url(a), None).await;
    get(&gw.asset_url(b), None).await;
    settled(admin).await;
    assert_eq!(objects(&dir.0).len(), 2);
    // The answer comes once the files are deleted.
    assert_eq!(
        common::purge_asset(admin, a).await,
        serde_json::json!({"purged": true})
    );
    assert_eq!(objects(&dir.0).len(), 1);
    assert_eq!(cache_json(admin).await["disk"]["objects"], 1);
    drop(gw);

    let (gw, _admin) = start(&origin, &dir.0, "64MiB");
    let (_, cs, body) = get(&gw.asset_url(a), None).await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
    assert!(body == pattern(0..5000));
    let (_, cs, _) = get(&gw.asset_url(b), None).await;
    assert!(cs.contains("; hit"), "{cs}");
    assert_eq!((origin.requests_for(a), origin.requests_for(b)), (2, 1));
}

#[test]
fn dash_t_refuses_a_disk_path_that_cannot_be_created() {
    let dir = temp_dir();
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let yaml = yaml(
        "127.0.0.1:9".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        &file.join("cache"),
        "20GiB",
    )
    .replace("{listen}", "127.0.0.1:1");
    let (ok, text) = common::check_config(&yaml);
    assert!(!ok, "{text}");
    assert!(text.contains("gateway.cache.disk.path: "), "{text}");

    // A creatable one passes, and is not created: `-t` changes nothing.
    let ok = dir.join("new").join("cache");
    let yaml = yaml.replace(
        &file.join("cache").display().to_string(),
        &ok.display().to_string(),
    );
    let (passed, text) = common::check_config(&yaml);
    assert!(passed, "{text}");
    assert!(!dir.join("new").exists());
    // A size larger than the file system the directory is on is refused.
    let (passed, text) = common::check_config(&yaml.replace("size: 20GiB", "size: 1000000GiB"));
    assert!(!passed, "{text}");
    assert!(
        text.contains("gateway.cache.disk.size: ") && text.contains("is larger than the file system"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stale disk object (after a restart, so memory is empty) is revalidated with a 304: the
/// body is served from its file, which is untouched, the meta file is replaced, and the next
/// request hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_disk_object_is_revalidated_in_place() {
    let origin = Origin::start().await;
    let dir = disk_dir();
    let id = IDS[4];
    let etag = "\"v1\"";
    origin.set(
        id,
        Behavior::Validated {
            size: 5000,
            etag,
            max_age: 2,
        },
    );
    let (gw, admin) = start(&origin, &dir.0, "64MiB");
    assert_eq!(
        get(&gw.asset_url(id), None).await.1,
        "asset-gateway; fwd=uri-miss; stored"
    );
    settled(admin).await;
    drop(gw);
    let objs = objects(&dir.0);
    assert_eq!(objs.len(), 1);
    let path = dir.0.join(&objs[0].0);
    let before = std::fs::read(&path).unwrap();
    let meta_path = path.with_extension("").with_extension("meta");
    let meta_before = std::fs::read(&meta_path).unwrap();

    let (gw, _admin) = start(&origin, &dir.0, "64MiB");
    // Let the two seconds of freshness pass (a wait, not a timing assertion).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let url = gw.asset_url(id);
    let (status, cs, body) = get(&url, None).await;
    assert_eq!(
        (status, cs.as_str()),
        (200, "asset-gateway; fwd=stale; fwd-status=304")
    );
    assert!(body == pattern(0..5000));
    let seen = origin.asset_requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("if-none-match"), Some(etag));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the body file is untouched"
    );
    assert_ne!(
        std::fs::read(&meta_path).unwrap(),
        meta_before,
        "the meta was rewritten"
    );
    let (_, cs, body) = get(&url, None).await;
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    assert!(body == pattern(0..5000));
    assert_eq!(origin.asset_requests().len(), 2);
}

/// An object larger than the memory tier goes to disk only: while it fills, the bytes already
/// written to the file are dropped from memory and the followers (and a Range) read them from
/// the file; afterwards it is a disk hit, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_larger_than_memory_goes_to_disk_only() {
    let origin = Origin::start().await;
    let dir = disk_dir();
    let id = IDS[3];
    let total = 3 * 1024 * 1024;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    origin.set(
        id,
        Behavior::HoldAfter {
            first: 2 * 1024 * 1024,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let (gw, admin) = start_mem(&origin, &dir.0, "64MiB", "1MiB");
    let url = gw.asset_url(id);
    let heads = Arc::new(AtomicUsize::new(0));
    let spawn = |range: Option<&'static str>| {
        let (url, heads) = (url.clone(), heads.clone());
        tokio::spawn(async move {
            let mut req = client().get(url);
            if let Some(r) = range {
                req = req.header("range", r);
            }
            let r = req.send().await.unwrap();
            heads.fetch_add(1, Ordering::SeqCst);
            let cs = r
                .headers()
                .get("cache-status")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (r.status().as_u16(), cs, r.bytes().await.unwrap().to_vec())
        })
    };
    let first = spawn(None);
    eventually("the origin holds after 2 MiB", || held.load(Ordering::SeqCst)).await;
    // Followers join now, from offset 0: the fill's first bytes are only in its file.
    let followers: Vec<_> = (0..4).map(|_| spawn(None)).collect();
    let range = spawn(Some("bytes=100-199"));
    eventually("every response head", || heads.load(Ordering::SeqCst) == 6).await;
    let (status, _, body) = range.await.unwrap();
    assert_eq!(status, 206);
    assert!(body == pattern(100..200));
    release.notify_one();
    let want = pattern(0..total as u64);
    let (status, cs, body) = first.await.unwrap();
    assert_eq!(
        (status, cs.as_str()),
        (200, "asset-gateway; fwd=uri-miss; stored")
    );
    assert!(body == want);
    for f in followers {
        let (status, cs, body) = f.await.unwrap();
        assert_eq!(
            (status, cs.as_str()),
            (200, "asset-gateway; fwd=uri-miss; collapsed")
        );
        assert!(body == want, "a follower got {} bytes, not the asset", body.len());
    }
    settled(admin).await;
    let json = cache_json(admin).await;
    assert_eq!(json["memory"]["objects"], 0, "{json}");
    assert_eq!(json["disk"]["objects"], 1, "{json}");
    let (_, cs, body) = get(&url, None).await;
    assert!(cs.contains("; hit"), "{cs}");
    assert!(body == want);
    assert_eq!(origin.requests_for(id), 1);
    drop(gw);

    let (gw, _admin) = start_mem(&origin, &dir.0, "64MiB", "1MiB");
    let (_, cs, body) = get(&gw.asset_url(id), None).await;
    assert!(cs.contains("; hit"), "{cs}");
    assert!(body == want);
    assert_eq!(origin.requests_for(id), 1);
}
