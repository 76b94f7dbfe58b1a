//! Slices (`gateway.cache.slice`): large objects fetched and stored in pieces requested with
//! upstream `Range`. A cold seek costs the origin the slice(s) it touches; the same seek again
//! and a whole download afterwards are byte-identical and reuse what is stored; a herd on one
//! cold slice is one origin request; an origin that changes between slices never yields mixed
//! bytes; slices survive a restart (disk tier); a route without cache forwards the client's
//! Range; an origin that ignores Range is stored whole. Real gateway process, real origin, real
//! client; no test asserts on time.

mod common;

use bytes::Bytes;
use common::origin::{pattern, Behavior, Origin, Seen};
use common::{client, free_addrs, settled, temp_dir, wait_listening, Gateway};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

const ID: &str = "5a1ce000-9b4d-4e8a-8c21-5d6f7a8b9c01";
/// The slice size the tests configure (the smallest allowed).
const SLICE: u64 = 64 * 1024;
/// 16 slices and a part.
const SIZE: u64 = 16 * SLICE + 4321;

fn yaml(
    origin: SocketAddr,
    admin: SocketAddr,
    h2c: SocketAddr,
    memory: &str,
    extra_cache: &str,
    route_extra: &str,
) -> String {
    format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}", {{addr: "{h2c}", h2c: true}}]
  admin: "{admin}"
  cache:
    memory: {memory}
    slice: 64KiB
    stale_while_revalidate: 0s
{extra_cache}
  upstreams:
    assets:
      peers: ["{origin}"]
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
{route_extra}
"#
    )
}

fn start(origin: &Origin, extra_cache: &str, route_extra: &str) -> (Gateway, SocketAddr) {
    let (gw, admin, _) = start_h2c(origin, extra_cache, route_extra);
    (gw, admin)
}

/// Also returns the address of a cleartext HTTP/2 listener.
fn start_h2c(origin: &Origin, extra_cache: &str, route_extra: &str) -> (Gateway, SocketAddr, SocketAddr) {
    let [listen, admin, h2c] = free_addrs();
    let gw = Gateway::start_at(
        &yaml(origin.addr, admin, h2c, "64MiB", extra_cache, route_extra),
        &[],
        listen,
    );
    wait_listening(admin);
    wait_listening(h2c);
    (gw, admin, h2c)
}

/// What the scripted origin serves: a body and its strong ETag, which a test may change.
struct Asset {
    version: Mutex<(Bytes, String)>,
    /// When set, each answer waits for a permit (a test holds the origin).
    hold: Option<Semaphore>,
    /// Whether the origin honours `Range`.
    ranges: bool,
}

impl Asset {
    fn new(body: Vec<u8>, etag: &str, ranges: bool, held: bool) -> Arc<Asset> {
        Arc::new(Asset {
            version: Mutex::new((Bytes::from(body), etag.to_string())),
            hold: held.then(|| Semaphore::new(0)),
            ranges,
        })
    }

    fn set(&self, body: Vec<u8>, etag: &str) {
        *self.version.lock().unwrap() = (Bytes::from(body), etag.to_string());
    }

    fn behavior(self: &Arc<Asset>) -> Behavior {
        let asset = self.clone();
        Behavior::Scripted(Arc::new(move |req: &Seen| {
            let asset = asset.clone();
            let range = req.header("range").map(str::to_owned);
            Box::pin(async move {
                if let Some(h) = &asset.hold {
                    let _ = h.acquire().await;
                }
                let (body, etag) = asset.version.lock().unwrap().clone();
                let len = body.len() as u64;
                let common =
                    format!("content-type: video/mp4\r\netag: {etag}\r\ncache-control: max-age=3600\r\n");
                match range.and_then(|r| parse_range(&r, len)).filter(|_| asset.ranges) {
                    Some((a, b)) => (
                        "206 Partial Content".to_string(),
                        format!("{common}content-range: bytes {a}-{b}/{len}\r\n"),
                        body[a as usize..=b as usize].to_vec(),
                    ),
                    None => ("200 OK".to_string(), common, body.to_vec()),
                }
            })
        }))
    }
}

fn parse_range(v: &str, len: u64) -> Option<(u64, u64)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let a: u64 = a.parse().ok()?;
    let b: u64 = if b.is_empty() {
        len - 1
    } else {
        b.parse::<u64>().ok()?.min(len - 1)
    };
    (a <= b).then_some((a, b))
}

/// A second version of the object: every byte differs from `pattern`'s.
fn other(range: std::ops::Range<u64>) -> Vec<u8> {
    pattern(range).into_iter().map(|b| !b).collect()
}

async fn get(gw: &Gateway, range: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = client().get(gw.asset_url(ID));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// The `Range` headers the origin was sent for the asset, in order.
fn origin_ranges(origin: &Origin) -> Vec<String> {
    origin
        .asset_requests()
        .iter()
        .map(|s| s.header("range").unwrap_or("none").to_string())
        .collect()
}

fn slice_range(i: u64) -> String {
    format!("bytes={}-{}", i * SLICE, (i + 1) * SLICE - 1)
}

/// A cold seek near the end costs the origin the last slice only (its bytes counted); the
/// same seek again is served without the origin; a purge removes every slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_seek_fetches_only_the_slice_it_touches() {
    let origin = Origin::start().await;
    let asset = Asset::new(pattern(0..SIZE), "\"v1\"", true, false);
    origin.set(ID, asset.behavior());
    let (gw, admin) = start(&origin, "", "");
    let from = SIZE - 3000;
    let (status, h, body) = get(&gw, Some(&format!("bytes={from}-"))).await;
    assert_eq!(status, 206);
    assert_eq!(h["content-range"], format!("bytes {from}-{}/{SIZE}", SIZE - 1));
    assert_eq!(body, pattern(from..SIZE));
    assert!(
        h.get("x-asset-gateway-slice").is_none(),
        "the slice marker is internal"
    );
    assert_eq!(origin_ranges(&origin), vec![slice_range(16)]);
    settled(admin).await;
    assert_eq!(
        origin.body_bytes_written(),
        SIZE - 16 * SLICE,
        "only the last slice's bytes"
    );

    let (status, _, again) = get(&gw, Some(&format!("bytes={from}-"))).await;
    assert_eq!((status, again == body), (206, true));
    // A seek into the middle of the same slice, and a bounded range within it.
    let (status, _, inner) = get(&gw, Some(&format!("bytes={}-{}", from + 10, from + 20))).await;
    assert_eq!((status, inner), (206, pattern(from + 10..from + 21)));
    assert_eq!(
        origin.requests_for(ID),
        1,
        "the slice was stored: no second origin request"
    );

    // A purge of the asset removes its slices: the next seek goes to the origin again.
    common::purge_asset(admin, ID).await;
    let (_, _, after) = get(&gw, Some(&format!("bytes={from}-"))).await;
    assert_eq!(after, body);
    assert_eq!(origin.requests_for(ID), 2);
}

/// HTTP/2 clients are served from slices too (a slice request's head is written again as
/// HTTP/1.1: Pingora cannot parse an HTTP/2 parent's), with the client's address upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_from_slices() {
    let origin = Origin::start().await;
    let asset = Asset::new(pattern(0..SIZE), "\"v1\"", true, false);
    origin.set(ID, asset.behavior());
    let (_gw, _admin, h2c) = start_h2c(&origin, "", "");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("http://{h2c}/content/v1/assets/{ID}");
    let from = SIZE - 2 * SLICE;
    let r = h2
        .get(&url)
        .header("range", format!("bytes={from}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 206)
    );
    assert!(r.bytes().await.unwrap() == pattern(from..SIZE));
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == pattern(0..SIZE));
    assert_eq!(origin.requests_for(ID), 17, "each slice once");
    let seen = origin.asset_requests();
    assert!(
        seen.iter()
            .all(|s| s.header("x-forwarded-for") == Some("127.0.0.1")),
        "{:?}",
        seen[0].headers
    );
}

/// A whole download of an object with some slices stored is the object, byte for byte, with
/// its full length; only the missing slices are fetched. HEAD, If-None-Match, a suffix range
/// and a range past the end answer as for a whole object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_download_of_a_partly_cached_object_is_byte_identical() {
    let origin = Origin::start().await;
    let asset = Asset::new(pattern(0..SIZE), "\"v1\"", true, false);
    origin.set(ID, asset.behavior());
    let (gw, admin) = start(&origin, "", "");
    let (_, _, part) = get(&gw, Some(&format!("bytes={}-{}", 5 * SLICE + 7, 6 * SLICE + 9))).await;
    assert_eq!(part, pattern(5 * SLICE + 7..6 * SLICE + 10));
    assert_eq!(origin_ranges(&origin), vec![slice_range(5), slice_range(6)]);
    settled(admin).await;

    let (status, h, body) = get(&gw, None).await;
    assert_eq!(status, 200);
    assert_eq!(h["content-length"], SIZE.to_string());
    assert!(body == pattern(0..SIZE), "the whole object, byte for byte");
    let mut ranges = origin_ranges(&origin);
    ranges.sort();
    let mut expected: Vec<String> = (0..=16).map(slice_range).collect();
    expected.sort();
    assert_eq!(
        ranges, expected,
        "each missing slice once, the stored ones not again"
    );
    settled(admin).await;
    let n = origin.requests_for(ID);

    let r = client().head(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], SIZE.to_string());
    let (status, h, body) = get(&gw, Some("bytes=-100")).await;
    assert_eq!((status, body), (206, pattern(SIZE - 100..SIZE)));
    assert_eq!(
        h["content-range"],
        format!("bytes {}-{}/{SIZE}", SIZE - 100, SIZE - 1)
    );
    let (status, h, _) = get(&gw, Some(&format!("bytes={}-", SIZE + 5))).await;
    assert_eq!(status, 416);
    assert_eq!(h["content-range"], format!("bytes */{SIZE}"));
    let r = client()
        .get(gw.asset_url(ID))
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(origin.requests_for(ID), n, "all from stored slices");
}

/// Twenty clients seek into the same cold slice while the origin holds its answer: one
/// upstream request, and every client gets its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_seeking_into_one_cold_slice_makes_one_upstream_request() {
    let origin = Origin::start().await;
    let asset = Asset::new(pattern(0..SIZE), "\"v1\"", true, true);
    origin.set(ID, asset.behavior());
    let (gw, _admin) = start(&origin, "", "");
    let gw = Arc::new(gw);
    let mut clients = Vec::new();
    for i in 0..20u64 {
        let gw = gw.clone();
        let from = 7 * SLICE + 100 * i;
        clients.push(tokio::spawn(async move {
            let (status, _, body) = get(&gw, Some(&format!("bytes={from}-{}", 8 * SLICE - 1))).await;
            (status, body == pattern(from..8 * SLICE))
        }));
    }
    common::eventually("the first slice request reached the origin", || {
        origin.requests_for(ID) >= 1
    })
    .await;
    // Give the others time to arrive and wait on the lock (not an assertion on time: more
    // waiting only makes the test stricter).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    if let Some(h) = &asset.hold {
        h.add_permits(1000);
    }
    for c in clients {
        assert_eq!(c.await.unwrap(), (206, true));
    }
    assert_eq!(origin_ranges(&origin), vec![slice_range(7)]);
}

/// The origin changes between slices: before the client's header went out the gateway starts
/// over on the new version; after it, the response ends incomplete. Never mixed bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_changing_between_slices_never_yields_mixed_bytes() {
    let origin = Origin::start().await;
    let asset = Asset::new(pattern(0..SIZE), "\"v1\"", true, false);
    origin.set(ID, asset.behavior());
    let (gw, admin) = start(&origin, "", "");
    // Slices 3 and 10 of version 1 are stored.
    get(&gw, Some(&format!("bytes={}-{}", 3 * SLICE, 3 * SLICE + 10))).await;
    get(&gw, Some(&format!("bytes={}-{}", 10 * SLICE, 10 * SLICE + 10))).await;
    settled(admin).await;
    asset.set(other(0..SIZE), "\"v2\"");

    // From slice 2: slice 2 is version 2, slice 3 (checked before the header) version 1: the
    // asset's slices are purged and the answer is version 2 throughout.
    let from = 2 * SLICE + 5;
    let (status, _, body) = get(&gw, Some(&format!("bytes={from}-{}", 4 * SLICE))).await;
    assert_eq!(status, 206);
    assert!(body == other(from..4 * SLICE + 1), "version 2 only");

    // Slice 10 of version 1 again, then a whole download: slices 0.. are version 2, slice 10
    // is version 1, found after the header went out: the body ends early.
    asset.set(pattern(0..SIZE), "\"v1\"");
    get(&gw, Some(&format!("bytes={}-{}", 10 * SLICE, 10 * SLICE + 10))).await;
    settled(admin).await;
    asset.set(other(0..SIZE), "\"v2\"");
    let r = client().get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await;
    assert!(body.is_err(), "the response ends incomplete");

    // The next request finds the asset purged and gets version 2 whole.
    settled(admin).await;
    let (status, _, body) = get(&gw, None).await;
    assert_eq!(status, 200);
    assert!(body == other(0..SIZE), "version 2, whole");
}

/// Slices are on disk: after a restart the same seek does not reach the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_slices() {
    let origin = Origin::start().await;
    let asset = Asset::new(pattern(0..SIZE), "\"v1\"", true, false);
    origin.set(ID, asset.behavior());
    let dir = temp_dir();
    let disk = format!(
        "    disk: {{path: \"{}\", size: 64MiB}}",
        dir.join("cache").display()
    );
    let from = 12 * SLICE + 77;
    let range = format!("bytes={from}-{}", 13 * SLICE + 99);
    {
        let (gw, admin) = start(&origin, &disk, "");
        let (_, _, body) = get(&gw, Some(&range)).await;
        assert!(body == pattern(from..13 * SLICE + 100));
        settled(admin).await;
    }
    assert_eq!(origin.requests_for(ID), 2);
    let (gw, _admin) = start(&origin, &disk, "");
    let (status, _, body) = get(&gw, Some(&range)).await;
    assert_eq!(status, 206);
    assert!(body == pattern(from..13 * SLICE + 100));
    assert_eq!(origin.requests_for(ID), 2, "both slices came from the disk tier");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A route without cache sends the client's Range upstream: the origin sends the range only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_cache_forwards_the_range() {
    let origin = Origin::start().await;
    let asset = Asset::new(pattern(0..SIZE), "\"v1\"", true, false);
    origin.set(ID, asset.behavior());
    let (gw, _admin) = start(&origin, "", "      cache: false");
    let from = SIZE - 1000;
    let (status, _, body) = get(&gw, Some(&format!("bytes={from}-"))).await;
    assert_eq!((status, body == pattern(from..SIZE)), (206, true));
    assert_eq!(origin_ranges(&origin), vec![format!("bytes={from}-")]);
    assert_eq!(origin.body_bytes_written(), 1000);
}

/// An origin that answers a slice's Range with the whole object: the client still gets its
/// range, the object is stored whole, and later requests do not reach the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_ignores_range_is_stored_whole() {
    let origin = Origin::start().await;
    let asset = Asset::new(pattern(0..SIZE), "\"v1\"", false, false);
    origin.set(ID, asset.behavior());
    let (gw, admin) = start(&origin, "", "");
    // A whole download first: one origin request, stored whole.
    let (status, _, body) = get(&gw, None).await;
    assert_eq!((status, body == pattern(0..SIZE)), (200, true));
    settled(admin).await;
    let from = SIZE - 5000;
    for _ in 0..3 {
        let (status, _, body) = get(&gw, Some(&format!("bytes={from}-"))).await;
        assert_eq!((status, body == pattern(from..SIZE)), (206, true));
    }
    assert_eq!(origin.requests_for(ID), 1, "stored whole: never asked again");

    // Another asset, seeked first: its slice request gets the whole object, which the gateway
    // stores whole under the asset's key (one more request); from then on, no origin request.
    const ID2: &str = "5a1ce000-9b4d-4e8a-8c21-5d6f7a8b9c02";
    origin.set(ID2, asset.behavior());
    for _ in 0..3 {
        let r = client()
            .get(gw.asset_url(ID2))
            .header("range", format!("bytes={from}-"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert!(r.bytes().await.unwrap() == pattern(from..SIZE));
        settled(admin).await;
    }
    assert!(origin.requests_for(ID2) <= 2, "{}", origin.requests_for(ID2));
}

/// The slices of an object larger than `memory` go to the disk tier only, as the object would
/// whole: one large download must not push the small hot objects out of memory (before, its
/// 64 KiB slices each fitted `memory` and evicted a small asset stored there first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slices_of_an_object_larger_than_memory_go_to_disk_only() {
    const SMALL: &str = "5a1ce000-9b4d-4e8a-8c21-5d6f7a8b9c09";
    let origin = Origin::start().await;
    let asset = Asset::new(pattern(0..SIZE), "\"v1\"", true, false);
    origin.set(ID, asset.behavior());
    origin.set(
        SMALL,
        Asset::new(pattern(0..20_000), "\"s1\"", true, false).behavior(),
    );
    let dir = temp_dir();
    let disk = format!(
        "    disk: {{path: \"{}\", size: 64MiB}}",
        dir.join("cache").display()
    );
    let [listen, admin, h2c] = free_addrs();
    // `memory` is smaller than the large object (16 slices and a part) but holds many slices.
    let gw = Gateway::start_at(&yaml(origin.addr, admin, h2c, "1MiB", &disk, ""), &[], listen);
    wait_listening(admin);
    let small = client().get(gw.asset_url(SMALL)).send().await.unwrap();
    assert_eq!(small.bytes().await.unwrap(), pattern(0..20_000));
    let large = client().get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(large.bytes().await.unwrap(), pattern(0..SIZE));
    settled(admin).await;
    let cache = common::cache_json(admin).await;
    assert_eq!(cache["memory"]["objects"], 1, "{cache}");
    assert_eq!(cache["disk"]["objects"], 18, "{cache}");
    // The small asset is still a hit from memory; the large one from disk, whole.
    let small = client().get(gw.asset_url(SMALL)).send().await.unwrap();
    let cs = small.headers()["cache-status"].to_str().unwrap().to_string();
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    let large = client().get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(large.bytes().await.unwrap(), pattern(0..SIZE));
    let requests = origin.requests_for(SMALL) + origin.requests_for(ID);
    assert_eq!(requests, 18, "one per slice and one for the small asset");
}

/// If-Range, conditionals, an unsatisfiable range and HEAD on a sliced object behave as on a
/// whole one: the validator that matches gives the range, another gives the whole object, and
/// none of them mixes slices of two versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_range_and_conditionals_on_a_sliced_object() {
    let origin = Origin::start().await;
    let asset = Asset::new(pattern(0..SIZE), "\"v1\"", true, false);
    origin.set(ID, asset.behavior());
    let (gw, admin) = start(&origin, "", "");
    let send = |headers: &'static [(&'static str, &'static str)], head: bool| {
        let url = gw.asset_url(ID);
        async move {
            let mut req = if head {
                client().head(url)
            } else {
                client().get(url)
            };
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let h = r.headers().clone();
            (status, h, r.bytes().await.unwrap().to_vec())
        }
    };
    // Cold: a range across a slice boundary with the current validator.
    let (status, h, body) = send(&[("range", "bytes=65000-70000"), ("if-range", "\"v1\"")], false).await;
    assert_eq!(status, 206);
    assert_eq!(h["content-range"], format!("bytes 65000-70000/{SIZE}"));
    assert_eq!(body, pattern(65000..70001));
    assert_eq!(
        origin_ranges(&origin),
        vec![slice_range(0), slice_range(1)],
        "served from the two slices it touches"
    );
    // Another validator in If-Range: the whole object, 200.
    let (status, h, body) = send(&[("range", "bytes=65000-70000"), ("if-range", "\"v0\"")], false).await;
    assert_eq!(status, 200);
    assert_eq!(h["content-length"], SIZE.to_string());
    assert_eq!(body, pattern(0..SIZE));
    // A matching If-None-Match: 304, no body.
    let (status, h, body) = send(&[("if-none-match", "\"v1\"")], false).await;
    assert_eq!((status, body.len()), (304, 0));
    assert_eq!(h["etag"], "\"v1\"");
    // A range past the end: 416 with the object's size.
    let (status, h, _) = send(&[("range", "bytes=99999999-")], false).await;
    assert_eq!(status, 416);
    assert_eq!(h["content-range"], format!("bytes */{SIZE}"));
    // HEAD: the whole object's length, no body.
    let (status, h, body) = send(&[], true).await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(h["content-length"], SIZE.to_string());
    settled(admin).await;
    let (_, _, whole) = get(&gw, None).await;
    assert_eq!(whole, pattern(0..SIZE));
}
