//! A cache you can trust: a late 304 never rewrites a newer object, a burst of cold fills
//! stays within `memory`, a fill too large for memory whose disk copy cannot start streams
//! through uncached. Real gateway process, real origin, real client; no test asserts on time.

mod common;

use bytes::Bytes;
use common::origin::{pattern, Behavior, Origin, Seen};
use common::{cache_json, client, eventually, free_addrs, settled, wait_listening, Gateway};
use futures::FutureExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const A: &str = "0b1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c01";
const B: &str = "0b1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c02";

struct Setup {
    origin: Origin,
    gw: Gateway,
    admin: SocketAddr,
    yaml: String,
}

fn yaml(origin: SocketAddr, admin: SocketAddr, cache: &str) -> String {
    format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}"]
  admin: "{admin}"
  cache:
{cache}
  upstreams:
    assets:
      peers: ["{origin}"]
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
"#
    )
}

/// A gateway whose `gateway.cache` section is `cache` (lines indented by four spaces).
async fn setup(cache: &str) -> Setup {
    let origin = Origin::start().await;
    let [listen, admin] = free_addrs();
    let yaml = yaml(origin.addr, admin, cache);
    let gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(admin);
    Setup {
        origin,
        gw,
        admin,
        yaml,
    }
}

impl Setup {
    /// Kills the gateway and starts a new one on the same config (and disk directory).
    fn restart(&mut self) {
        let listen = self.gw.addr;
        // The old one goes first: the new one binds the same addresses.
        let _ = self.gw.child().kill();
        let _ = self.gw.child().wait();
        self.gw = Gateway::start_at(&self.yaml, &[], listen);
        wait_listening(self.admin);
    }
}

async fn get(url: &str) -> (u16, String, Option<String>, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let cs = header("cache-status").unwrap_or_default();
    let etag = header("etag");
    (status, cs, etag, r.bytes().await.unwrap().to_vec())
}

/// Two versions of one asset: the body of version `v` (1000 bytes for v1, 3000 for v2, not
/// the same bytes), served with `ETag: "v<v>"`.
fn version_body(v: u32) -> Bytes {
    let len = if v == 1 { 1000 } else { 3000 };
    (0..len).map(|i| (i * 7 + v as usize * 31) as u8).collect()
}

/// The origin of the late-304 sequence. A request validating `"v1"` while `hold` is set is
/// held until `release`, then answered 304 (v1 is fresh for a minute): the answer of an origin
/// that was slow, sent before the asset changed. Any other request gets the current version:
/// v1 is fresh for one second, v2 for a minute, both `must-revalidate` (never served stale).
struct LateOrigin {
    version: AtomicU32,
    hold: AtomicBool,
    held: AtomicBool,
    release: Notify,
}

fn late_origin(origin: &Origin, id: &str) -> Arc<LateOrigin> {
    let st = Arc::new(LateOrigin {
        version: AtomicU32::new(1),
        hold: AtomicBool::new(false),
        held: AtomicBool::new(false),
        release: Notify::new(),
    });
    let s = st.clone();
    origin.set(
        id,
        Behavior::Scripted(Arc::new(move |req: &Seen| {
            let req = req.clone();
            let s = s.clone();
            async move {
                if req.header("if-none-match") == Some("\"v1\"") && s.hold.swap(false, Ordering::SeqCst) {
                    s.held.store(true, Ordering::SeqCst);
                    s.release.notified().await;
                    return (format!("{} Status", 304), "etag: \"v1\"\r\ncache-control: max-age=60, must-revalidate\r\n".into(), Vec::new());
                }
                let v = s.version.load(Ordering::SeqCst);
                let max_age = if v == 1 { 1 } else { 60 };
                (format!("{} Status", 200), format!(
                        "content-type: image/jpeg\r\netag: \"v{v}\"\r\ncache-control: max-age={max_age}, must-revalidate\r\n"
                    ), Some(version_body(v)).map(|b| b.to_vec()).unwrap_or_default())
            }
            .boxed()
        })),
    );
    st
}

/// Item 1: an object goes stale; request 1 revalidates it and the origin is slow; the asset
/// changes; request 2 waits `lock_timeout`, goes upstream and stores the new, longer body;
/// then request 1's 304 arrives. It refreshes nothing: every later client gets the new bytes
/// under the new header, from memory and, after a restart, from the disk tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_304_never_dresses_a_newer_body_in_an_older_header() {
    let dir = common::temp_dir();
    let disk = dir.join("disk");
    let mut s = setup(&format!(
        "    memory: 64MiB\n    lock_timeout: 1s\n    disk: {{path: \"{}\", size: 64MiB}}",
        disk.display()
    ))
    .await;
    let o = late_origin(&s.origin, A);
    let url = s.gw.asset_url(A);
    let (status, cs, etag, body) = get(&url).await;
    assert_eq!(
        (status, cs.as_str()),
        (200, "asset-gateway; fwd=uri-miss; stored")
    );
    assert_eq!(etag.as_deref(), Some("\"v1\""));
    assert!(body == version_body(1));
    settled(s.admin).await;
    // Let the second of freshness pass (a wait, not a timing assertion).
    tokio::time::sleep(Duration::from_millis(2100)).await;

    o.hold.store(true, Ordering::SeqCst);
    let first = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    eventually("the origin holds the revalidation", || {
        o.held.load(Ordering::SeqCst)
    })
    .await;
    o.version.store(2, Ordering::SeqCst);
    // Waits for the lock (1 s), then revalidates itself: v1 is no longer current, so the
    // origin answers 200 with v2, which is stored.
    let (status, cs, etag, body) = get(&url).await;
    assert_eq!(status, 200);
    assert_eq!(cs, "asset-gateway; fwd=stale; stored");
    assert_eq!(etag.as_deref(), Some("\"v2\""));
    assert!(body == version_body(2));
    settled(s.admin).await;

    // The late 304 for v1: its client gets v1, which it revalidated.
    o.release.notify_one();
    let (status, _, etag, body) = first.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(etag.as_deref(), Some("\"v1\""));
    assert!(body == version_body(1));
    settled(s.admin).await;

    // Every later client gets v2, whole, under v2's header.
    for _ in 0..2 {
        let (status, cs, etag, body) = get(&url).await;
        assert_eq!(status, 200);
        assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
        assert_eq!(
            etag.as_deref(),
            Some("\"v2\""),
            "the stored object's header was rewritten"
        );
        assert!(body == version_body(2), "{} bytes", body.len());
    }
    // And so does the disk tier, after a restart (memory is empty then).
    s.restart();
    let (status, cs, etag, body) = get(&s.gw.asset_url(A)).await;
    assert_eq!(status, 200);
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    assert_eq!(
        etag.as_deref(),
        Some("\"v2\""),
        "the disk object's header was rewritten"
    );
    assert!(body == version_body(2), "{} bytes", body.len());
    assert_eq!(s.origin.requests_for(A), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 4: a burst of cold fills stays within `memory`. Twelve distinct 700 KiB assets are
/// asked for at once with `memory: 2MiB` (and a disk tier, whose file creation used to sit
/// between the admission check and the charge): two fills fit, the others stream through
/// uncached (`memory-full`), and every client gets its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_cold_fills_stays_within_memory() {
    let dir = common::temp_dir();
    let s = setup(&format!(
        "    memory: 2MiB\n    disk: {{path: \"{}\", size: 64MiB}}",
        dir.join("disk").display()
    ))
    .await;
    let total = 700 * 1024;
    let release = Arc::new(Notify::new());
    let ids: Vec<String> = (0..12)
        .map(|i| format!("0b1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9d{i:02}"))
        .collect();
    let helds: Vec<Arc<AtomicBool>> = ids
        .iter()
        .map(|id| {
            let held = Arc::new(AtomicBool::new(false));
            s.origin.set(
                id,
                Behavior::HoldAfter {
                    first: 64 * 1024,
                    total,
                    release: release.clone(),
                    held: held.clone(),
                },
            );
            held
        })
        .collect();
    let heads = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = ids
        .iter()
        .map(|id| {
            let (url, heads) = (s.gw.asset_url(id), heads.clone());
            tokio::spawn(async move {
                let r = client().get(url).send().await.unwrap();
                heads.fetch_add(1, Ordering::SeqCst);
                let cs = r.headers()["cache-status"].to_str().unwrap().to_string();
                (cs, r.bytes().await.unwrap().to_vec())
            })
        })
        .collect();
    eventually("every response head", || heads.load(Ordering::SeqCst) == 12).await;
    eventually("the origin holding every response", || {
        helds.iter().all(|h| h.load(Ordering::SeqCst))
    })
    .await;
    // Every fill is in progress now: the admitted ones are held in memory together.
    let j = cache_json(s.admin).await;
    assert_eq!(j["fills_in_flight"], 2, "{j}");
    while helds.iter().any(|h| h.load(Ordering::SeqCst)) {
        release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let want = pattern(0..total as u64);
    let mut statuses = Vec::new();
    for c in clients {
        let (cs, body) = c.await.unwrap();
        assert!(body == want, "a client got {} bytes", body.len());
        statuses.push(cs);
    }
    let stored = statuses.iter().filter(|c| c.ends_with("; stored")).count();
    let refused = statuses
        .iter()
        .filter(|c| c.ends_with("detail=memory-full"))
        .count();
    assert_eq!((stored, refused), (2, 10), "{statuses:?}");
    settled(s.admin).await;
    assert!(cache_json(s.admin).await["memory_bytes"].as_u64().unwrap() <= 2 << 20);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 3: a fill too large for memory whose disk file cannot be created (here the directory
/// was replaced by a file) streams through uncached, whole; it holds no memory, so a small
/// asset asked for meanwhile is still stored. Once the directory is back, the large asset is
/// stored on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fill_without_its_disk_file_streams_through_uncached() {
    let dir = common::temp_dir();
    let disk = dir.join("disk");
    let s = setup(&format!(
        "    memory: 1MiB\n    disk: {{path: \"{}\", size: 64MiB}}",
        disk.display()
    ))
    .await;
    let moved = dir.join("moved");
    std::fs::rename(&disk, &moved).unwrap();
    std::fs::write(&disk, b"not a directory").unwrap();
    let total = 3 * 1024 * 1024;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    s.origin.set(
        A,
        Behavior::HoldAfter {
            first: 1024 * 1024,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );
    s.origin.set(B, Behavior::Generated { size: 300_000 });
    let url = s.gw.asset_url(A);
    let large = tokio::spawn(async move { get(&url).await });
    eventually("the origin holds the large asset", || held.load(Ordering::SeqCst)).await;
    // While it streams: a small asset is admitted to memory.
    let (status, cs, _, body) = get(&s.gw.asset_url(B)).await;
    assert_eq!(
        (status, cs.as_str()),
        (200, "asset-gateway; fwd=uri-miss; stored")
    );
    assert!(body == pattern(0..300_000));
    release.notify_one();
    let (status, cs, _, body) = large.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; detail=disk-unavailable");
    assert!(body == pattern(0..total as u64));
    settled(s.admin).await;

    std::fs::remove_file(&disk).unwrap();
    std::fs::rename(&moved, &disk).unwrap();
    s.origin.set(A, Behavior::Generated { size: total as u64 });
    let (_, cs, _, body) = get(&s.gw.asset_url(A)).await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
    assert!(body == pattern(0..total as u64));
    settled(s.admin).await;
    let (_, cs, _, body) = get(&s.gw.asset_url(A)).await;
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    assert!(body == pattern(0..total as u64));
    let _ = std::fs::remove_dir_all(&dir);
}
