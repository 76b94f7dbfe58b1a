//! The response cache: coalescing of a cold herd, hits without the origin, a client leaving
//! mid-fill, an origin failing mid-fill (#932), purge, what is not stored, Range/304/HEAD from
//! the cache, eviction, Cache-Status, metrics and the access log. Real gateway process, real
//! origin, real client; no test asserts on time.

mod common;

use common::origin::{pattern, Behavior, Origin};
use common::{client, free_addrs, wait_listening, Gateway, RawConn, EVENTUALLY};

use common::{eventually, metric, settled};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Distinct asset ids (each test uses its own, so none sees another's objects).
const A: &str = "0a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c01";
const B: &str = "0a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c02";
const C: &str = "0a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c03";
const D: &str = "0a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c04";
const E: &str = "0a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c05";

struct Setup {
    origin: Origin,
    gw: Gateway,
    admin: SocketAddr,
    /// A cleartext HTTP/2 (prior knowledge) listener of the same gateway.
    h2c: SocketAddr,
}

/// A gateway with a cache (`cache_extra` lines go under `gateway.cache`) and an admin
/// listener, in front of a fresh origin.
async fn setup(memory: &str, cache_extra: &str) -> Setup {
    setup_with(memory, cache_extra, "", "").await
}

/// `setup`, with `gateway_extra` lines under `gateway` and `upstream_extra` lines under the
/// upstream.
async fn setup_with(memory: &str, cache_extra: &str, gateway_extra: &str, upstream_extra: &str) -> Setup {
    let origin = Origin::start().await;
    let [listen, admin, h2c] = free_addrs();
    let yaml = format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}", {{addr: "{h2c}", h2c: true}}]
  admin: "{admin}"
{gateway_extra}
  cache:
    memory: {memory}
{cache_extra}
  upstreams:
    assets:
      peers: ["{}"]
{upstream_extra}
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
    - path: /content/v1/nocache/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
      cache: false
"#,
        origin.addr
    );
    let gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(admin);
    wait_listening(h2c);
    Setup {
        origin,
        gw,
        admin,
        h2c,
    }
}

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// GETs `url`; returns status, Cache-Status and the whole body.
async fn get(url: &str) -> (u16, String, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let cs = cache_status(&r);
    (status, cs, r.bytes().await.unwrap().to_vec())
}

async fn admin_json(admin: SocketAddr, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
    let r = client()
        .request(method, format!("http://{admin}{path}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap())
}

/// 50 clients ask for a cold 4 MiB asset at once while the origin holds it after its first
/// 64 KiB: the origin sees one request, every client gets every byte, and the next request is
/// a hit the origin never sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_herd_makes_one_origin_request() {
    let s = setup("64MiB", "").await;
    let total = 4 * 1024 * 1024;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    s.origin.set(
        A,
        Behavior::HoldAfter {
            first: 64 * 1024,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let headers = Arc::new(AtomicUsize::new(0));
    let url = s.gw.asset_url(A);
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let (url, headers) = (url.clone(), headers.clone());
            tokio::spawn(async move {
                let r = client().get(url).send().await.unwrap();
                headers.fetch_add(1, Ordering::SeqCst);
                let status = r.status().as_u16();
                let cs = cache_status(&r);
                (status, cs, r.bytes().await.unwrap().to_vec())
            })
        })
        .collect();
    // Every client has its response head (from the one fill) before the origin sends more.
    eventually("all 50 response heads", || headers.load(Ordering::SeqCst) == 50).await;
    assert!(held.load(Ordering::SeqCst));
    release.notify_one();
    let want = pattern(0..total as u64);
    let mut statuses = Vec::new();
    for c in clients {
        let (status, cs, body) = c.await.unwrap();
        assert_eq!(status, 200);
        assert!(body == want, "a client got {} bytes, not the asset", body.len());
        statuses.push(cs);
    }
    assert_eq!(s.origin.requests_for(A), 1, "the herd was not coalesced");
    settled(s.admin).await;
    let stored = statuses
        .iter()
        .filter(|c| *c == "asset-gateway; fwd=uri-miss; stored")
        .count();
    let collapsed = statuses
        .iter()
        .filter(|c| *c == "asset-gateway; fwd=uri-miss; collapsed")
        .count();
    assert_eq!((stored, collapsed), (1, 49), "{statuses:?}");

    let (status, cs, body) = get(&url).await;
    assert_eq!(status, 200);
    assert!(cs.starts_with("asset-gateway; hit; ttl="), "{cs}");
    assert!(body == want);
    assert_eq!(s.origin.requests_for(A), 1, "a hit went to the origin");

    let m = common::scrape(s.admin).await;
    assert_eq!(
        metric(
            &m,
            "asset_gateway_cache_lookups_total{result=\"coalesced\",route=\"/content/v1/assets/{id}\"}"
        ),
        49.0
    );
    assert_eq!(
        metric(
            &m,
            "asset_gateway_cache_lookups_total{result=\"miss\",route=\"/content/v1/assets/{id}\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "asset_gateway_cache_lookups_total{result=\"hit\",route=\"/content/v1/assets/{id}\"}"
        ),
        1.0
    );
    assert_eq!(metric(&m, "asset_gateway_cache_stored_bytes_total"), total as f64);
    assert_eq!(
        metric(&m, "asset_gateway_cache_hit_bytes_total"),
        (50 * total) as f64
    );
    assert!(metric(&m, "asset_gateway_cache_memory_bytes") >= total as f64);
}

/// The client whose request fills the cache leaves mid-body: the fill goes on, the others get
/// every byte, and the object is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fill_survives_its_client_leaving() {
    let s = setup("64MiB", "").await;
    let total = 2 * 1024 * 1024;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    s.origin.set(
        A,
        Behavior::HoldAfter {
            first: 64 * 1024,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let mut first = RawConn::connect(s.gw.addr).await;
    first
        .send(format!("GET /content/v1/assets/{A} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await;
    let head = first.read_chunk().await.expect("the first client got nothing");
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    eventually("the origin holding", || held.load(Ordering::SeqCst)).await;

    let url = s.gw.asset_url(A);
    let others: Vec<_> = (0..5).map(|_| tokio::spawn(get_owned(url.clone()))).collect();
    // The first client goes away before the origin sends the rest.
    drop(first);
    release.notify_one();
    for o in others {
        let (status, _, body) = o.await.unwrap();
        assert_eq!(status, 200);
        assert!(body == pattern(0..total as u64), "got {} bytes", body.len());
    }
    assert_eq!(s.origin.requests_for(A), 1);
    settled(s.admin).await;
    let (_, cs, body) = get(&url).await;
    assert!(cs.contains("; hit"), "not stored: {cs}");
    assert_eq!(body.len(), total);
    assert_eq!(s.origin.requests_for(A), 1);
}

async fn get_owned(url: String) -> (u16, String, Vec<u8>) {
    get(&url).await
}

/// The origin fails mid-body: the client of the fill and every client following it see an
/// incomplete response (an error, never a clean short body), nothing is stored, and the next
/// request refills from the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_failing_mid_fill_fails_every_reader() {
    let s = setup("64MiB", "").await;
    let total = 1024 * 1024;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    s.origin.set(
        A,
        Behavior::FailAfterHold {
            first: 64 * 1024,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let url = s.gw.asset_url(A);
    let headers = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let (url, headers) = (url.clone(), headers.clone());
            tokio::spawn(async move {
                let r = client().get(url).send().await.unwrap();
                headers.fetch_add(1, Ordering::SeqCst);
                assert_eq!(r.status(), 200);
                r.bytes().await
            })
        })
        .collect();
    eventually("all 10 response heads", || headers.load(Ordering::SeqCst) == 10).await;
    release.notify_one();
    for c in clients {
        match c.await.unwrap() {
            Err(_) => {}
            Ok(b) => panic!("a client saw a clean end after {} of {total} bytes", b.len()),
        }
    }
    assert_eq!(s.origin.requests_for(A), 1);

    // Nothing was stored: the next request goes to the origin and fills the cache.
    s.origin.set(A, Behavior::Generated { size: total as u64 });
    let (status, cs, body) = get(&url).await;
    assert_eq!(
        (status, cs.as_str()),
        (200, "asset-gateway; fwd=uri-miss; stored")
    );
    assert!(body == pattern(0..total as u64));
    assert_eq!(s.origin.requests_for(A), 2);
    settled(s.admin).await;
    let (_, cs, _) = get(&url).await;
    assert!(cs.contains("; hit"), "{cs}");
    assert_eq!(s.origin.requests_for(A), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_one_asset() {
    let s = setup("64MiB", "").await;
    s.origin.set(A, Behavior::Generated { size: 1000 });
    s.origin.set(B, Behavior::Generated { size: 1000 });
    let (a, b) = (s.gw.asset_url(A), s.gw.asset_url(B));
    get(&a).await;
    get(&b).await;
    settled(s.admin).await;
    assert!(get(&a).await.1.contains("; hit"));

    let del = reqwest::Method::DELETE;
    let path = format!("/cache/content/v1/assets/{A}");
    let (status, json) = admin_json(s.admin, del.clone(), &path).await;
    assert_eq!((status, json), (200, serde_json::json!({"purged": true})));
    let (status, json) = admin_json(s.admin, del.clone(), &path).await;
    assert_eq!((status, json), (200, serde_json::json!({"purged": false})));

    let (_, cs, body) = get(&a).await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
    assert!(body == pattern(0..1000));
    assert_eq!(s.origin.requests_for(A), 2);
    settled(s.admin).await;
    // The other asset is untouched.
    assert!(get(&b).await.1.contains("; hit"));
    assert_eq!(s.origin.requests_for(B), 1);

    let (status, json) = admin_json(s.admin, reqwest::Method::GET, "/cache").await;
    assert_eq!(status, 200);
    assert_eq!(json["objects"], 2);
    assert!(json["memory_bytes"].as_u64().unwrap() >= 2000);
    assert_eq!(json["memory_limit"], 64 * 1024 * 1024);
    let r = client()
        .delete(format!("http://{}/cache/content/v1/assets/not-a-uuid", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// `no-store`, `private`, `Set-Cookie`, `Vary`, oversized bodies and routes with `cache: false`
/// all go to the origin every time, streamed as usual (the second time without the cache lock:
/// hit-for-pass, `fwd=bypass`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_not_be_stored_is_not() {
    let s = setup("64MiB", "    max_object_size: 100KiB").await;
    s.origin.set(
        A,
        Behavior::WithHeaders {
            size: 1000,
            headers: "cache-control: no-store\r\n",
        },
    );
    s.origin.set(
        B,
        Behavior::WithHeaders {
            size: 1000,
            headers: "set-cookie: session=1\r\n",
        },
    );
    s.origin.set(C, Behavior::Generated { size: 200 * 1024 });
    s.origin.set(D, Behavior::Generated { size: 1000 });
    s.origin.set(
        E,
        Behavior::WithHeaders {
            size: 1000,
            headers: "cache-control: private, max-age=3600\r\n",
        },
    );
    let cases = [
        (
            s.gw.asset_url(A),
            A,
            1000,
            "asset-gateway; fwd=uri-miss; detail=no-store",
        ),
        (
            s.gw.asset_url(B),
            B,
            1000,
            "asset-gateway; fwd=uri-miss; detail=set-cookie",
        ),
        (
            s.gw.asset_url(C),
            C,
            200 * 1024,
            "asset-gateway; fwd=uri-miss; detail=too-large",
        ),
        (s.gw.url(&format!("/content/v1/nocache/{D}")), D, 1000, ""),
        (
            s.gw.asset_url(E),
            E,
            1000,
            "asset-gateway; fwd=uri-miss; detail=no-store",
        ),
    ];
    for (url, id, size, want) in cases {
        for n in 1..=2 {
            let (status, cs, body) = get(&url).await;
            assert_eq!(status, 200);
            let want = match n {
                1 => want.to_string(),
                _ => want.replace("fwd=uri-miss", "fwd=bypass"),
            };
            assert_eq!(cs, want, "{url}");
            assert!(body == pattern(0..size), "{url}");
            assert_eq!(s.origin.requests_for(id), n, "{url} was served from the cache");
        }
    }
}

/// Range, conditional requests and HEAD are answered from the stored object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_304_and_head_from_the_cache() {
    let s = setup("64MiB", "").await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    s.origin.set_body(A, body.clone());
    let url = s.gw.asset_url(A);
    let (_, cs, got) = get(&url).await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
    assert!(got == body);
    settled(s.admin).await;

    let r = client()
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(cache_status(&r).contains("; hit"));
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes 1000-1999/{}", body.len())
    );
    assert!(r.bytes().await.unwrap() == body[1000..2000]);

    let r = client()
        .get(&url)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap() == body[body.len() - 10..]);

    let r = client()
        .get(&url)
        .header("range", "bytes=0-9,20-29")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("multipart/byteranges"), "{ctype}");
    let parts = r.bytes().await.unwrap();
    let find = |needle: &[u8]| parts.windows(needle.len()).any(|w| w == needle);
    assert!(find(&body[0..10]) && find(&body[20..30]));

    let r = client()
        .get(&url)
        .header("range", "bytes=200000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);

    let etag = client().head(&url).send().await.unwrap().headers()["etag"].clone();
    let r = client()
        .get(&url)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert!(cache_status(&r).contains("; hit"));

    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], body.len().to_string().as_str());
    assert!(cache_status(&r).contains("; hit"));
    assert!(r.bytes().await.unwrap().is_empty());

    assert_eq!(s.origin.requests_for(A), 1, "served by the origin, not the cache");
}

/// A Range request that starts a fill gets its range; the fill stores the whole object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_miss_fills_the_whole_object() {
    let s = setup("64MiB", "").await;
    s.origin.set(A, Behavior::Generated { size: 300_000 });
    let url = s.gw.asset_url(A);
    let r = client()
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap() == pattern(100..200));
    // With slicing on (the default), the upstream request asks for the first slice; this
    // origin ignores Range, so its whole answer is stored (tests/cache_slices.rs has the rest).
    let seen = s.origin.asset_requests();
    assert_eq!(
        seen[0].header("range"),
        Some("bytes=0-4194303"),
        "the client's range went upstream"
    );
    // The range's response may end before the fill does; the fill goes on to the end.
    settled(s.admin).await;
    let (_, cs, body) = get(&url).await;
    assert!(cs.contains("; hit"), "{cs}");
    assert!(body == pattern(0..300_000));
    assert_eq!(s.origin.requests_for(A), 1);
}

/// With a 1 MiB memory tier, storing a fourth 300 KiB object evicts the least recently used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_memory_bound() {
    let s = setup("1MiB", "").await;
    for id in [A, B, C, D] {
        s.origin.set(id, Behavior::Generated { size: 300 * 1024 });
    }
    for id in [A, B, C] {
        assert_eq!(
            get(&s.gw.asset_url(id)).await.1,
            "asset-gateway; fwd=uri-miss; stored"
        );
        settled(s.admin).await;
    }
    // A is used again, so B is now the least recently used.
    assert!(get(&s.gw.asset_url(A)).await.1.contains("; hit"));
    assert_eq!(
        get(&s.gw.asset_url(D)).await.1,
        "asset-gateway; fwd=uri-miss; stored"
    );
    settled(s.admin).await;

    let (_, json) = admin_json(s.admin, reqwest::Method::GET, "/cache").await;
    assert!(json["memory_bytes"].as_u64().unwrap() <= 1024 * 1024, "{json}");
    assert_eq!(json["objects"], 3, "{json}");
    assert!(get(&s.gw.asset_url(A)).await.1.contains("; hit"));
    let (_, cs, body) = get(&s.gw.asset_url(B)).await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored", "B was not evicted");
    assert!(body == pattern(0..300 * 1024));
    assert_eq!(s.origin.requests_for(B), 2);
    let m = common::scrape(s.admin).await;
    assert!(metric(&m, "asset_gateway_cache_evictions_total") >= 1.0);
    assert!(metric(&m, "asset_gateway_cache_memory_bytes") <= (1024 * 1024) as f64);
}

/// Routing answers (404, 400, 405) come before any cache work, and the access log says what
/// the cache did (text format here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_and_access_log() {
    let s = setup("64MiB", "").await;
    s.origin.set(A, Behavior::Generated { size: 1000 });
    let c = client();
    assert_eq!(c.get(s.gw.url("/nope")).send().await.unwrap().status(), 404);
    assert_eq!(
        c.get(s.gw.asset_url("not-a-uuid")).send().await.unwrap().status(),
        400
    );
    let r = c.post(s.gw.asset_url(A)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().get("cache-status").is_none());
    assert_eq!(s.origin.asset_requests().len(), 0);

    for rid in ["cache-log-1", "cache-log-2"] {
        let r = c
            .get(s.gw.asset_url(A))
            .header("x-request-id", rid)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"], rid);
        r.bytes().await.unwrap();
        settled(s.admin).await;
    }
    let first = s.gw.access_line("cache-log-1").await;
    let second = s.gw.access_line("cache-log-2").await;
    assert!(first.contains(" cache=miss-stored"), "{first}");
    assert!(second.contains(" cache=hit"), "{second}");
    assert!(second.contains(" status=200 bytes=1000 "), "{second}");
}

/// The client whose request fills the cache stops reading (and is not cut, the write timeout
/// being long): the fill still runs at the origin's pace, and another client gets every byte
/// while the first one still has not read its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_hold_back_the_fill() {
    let s = setup_with("128MiB", "", "  downstream:\n    write_timeout: 10m", "").await;
    let total: u64 = 32 * 1024 * 1024;
    s.origin.set(A, Behavior::Generated { size: total });
    let mut first = RawConn::connect(s.gw.addr).await;
    first
        .send(format!("GET /content/v1/assets/{A} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await;
    eventually("the origin request", || s.origin.requests_for(A) == 1).await;
    let (status, _, body) = tokio::time::timeout(EVENTUALLY, get(&s.gw.asset_url(A)))
        .await
        .expect("the second client was held back by the first one");
    assert_eq!(status, 200);
    assert!(body == pattern(0..total), "got {} bytes", body.len());
    assert_eq!(s.origin.requests_for(A), 1);
    // The stalled client still gets its whole response once it reads.
    let r = first
        .response(false)
        .await
        .expect("the stalled client's response");
    assert_eq!(r.status, 200);
    assert!(r.body == pattern(0..total));
}

/// A stale object is revalidated with its validator: a 304 from the origin refreshes it and
/// the stored body is served; the next request is a hit again. (Without a
/// stale-while-revalidate window, so the request itself waits for the 304.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_object_is_revalidated() {
    let s = setup("64MiB", "    stale_while_revalidate: 0s").await;
    let etag = "\"v1\"";
    s.origin.set(
        A,
        Behavior::Validated {
            size: 5000,
            etag,
            max_age: 2,
        },
    );
    let url = s.gw.asset_url(A);
    assert_eq!(get(&url).await.1, "asset-gateway; fwd=uri-miss; stored");
    settled(s.admin).await;
    // Let the two seconds of freshness pass (a wait, not a timing assertion).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, cs, body) = get(&url).await;
    assert_eq!(
        (status, cs.as_str()),
        (200, "asset-gateway; fwd=stale; fwd-status=304")
    );
    assert!(body == pattern(0..5000));
    let seen = s.origin.asset_requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("if-none-match"), Some(etag));
    let (_, cs, body) = get(&url).await;
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    assert!(body == pattern(0..5000));
    assert_eq!(s.origin.asset_requests().len(), 2);
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// Over HTTP/2 (many streams of one connection): a cold herd is coalesced, then an origin
/// failing mid-fill fails every stream following it, and a refill works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_coalesce_and_see_a_failed_fill() {
    let s = setup("64MiB", "").await;
    let h2 = h2c_client();
    for (id, fail) in [(A, false), (B, true)] {
        let total = 1024 * 1024;
        let release = Arc::new(Notify::new());
        let held = Arc::new(AtomicBool::new(false));
        let (first, release_, held_) = (64 * 1024, release.clone(), held.clone());
        s.origin.set(
            id,
            if fail {
                Behavior::FailAfterHold {
                    first,
                    total,
                    release: release_,
                    held: held_,
                }
            } else {
                Behavior::HoldAfter {
                    first,
                    total,
                    release: release_,
                    held: held_,
                }
            },
        );
        let url = format!("http://{}/content/v1/assets/{id}", s.h2c);
        let headers = Arc::new(AtomicUsize::new(0));
        let streams: Vec<_> = (0..20)
            .map(|_| {
                let (h2, url, headers) = (h2.clone(), url.clone(), headers.clone());
                tokio::spawn(async move {
                    let r = h2.get(url).send().await.unwrap();
                    assert_eq!(r.version(), reqwest::Version::HTTP_2);
                    headers.fetch_add(1, Ordering::SeqCst);
                    r.bytes().await
                })
            })
            .collect();
        eventually("all 20 response heads", || headers.load(Ordering::SeqCst) == 20).await;
        release.notify_one();
        for st in streams {
            match (fail, st.await.unwrap()) {
                (false, Ok(body)) => assert!(body == pattern(0..total as u64)),
                (true, Err(_)) => {}
                (false, Err(e)) => panic!("a stream failed: {e}"),
                (true, Ok(b)) => panic!("a stream saw a clean end after {} bytes", b.len()),
            }
        }
        assert_eq!(
            s.origin.requests_for(id),
            1,
            "{id} fail={fail}; origin saw {:?}; gateway log:\n{}",
            s.origin.asset_requests(),
            s.gw.logs().join("\n")
        );
    }
    // B was not stored: it refills.
    s.origin.set(B, Behavior::Generated { size: 1000 });
    settled(s.admin).await;
    let r = h2
        .get(format!("http://{}/content/v1/assets/{B}", s.h2c))
        .send()
        .await
        .unwrap();
    assert_eq!(cache_status(&r), "asset-gateway; fwd=uri-miss; stored");
    assert!(r.bytes().await.unwrap() == pattern(0..1000));
}

async fn get_accept(url: &str, accept: &str) -> (String, Vec<u8>) {
    let r = client().get(url).header("accept", accept).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cs = cache_status(&r);
    (cs, r.bytes().await.unwrap().to_vec())
}

/// `Vary`: each variant is stored under its own key, a request for a variant not stored yet is
/// a `vary-miss`, and a purge removes every variant. `Vary: *` is never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_variants_are_stored_apart() {
    let s = setup("64MiB", "").await;
    s.origin.set(
        A,
        Behavior::WithHeaders {
            size: 2000,
            headers: "vary: Accept\r\n",
        },
    );
    let url = s.gw.asset_url(A);
    let want = pattern(0..2000);
    let steps = [
        ("image/webp", "asset-gateway; fwd=uri-miss; stored", 1),
        ("image/webp", "asset-gateway; hit", 1),
        ("image/avif", "asset-gateway; fwd=vary-miss; stored", 2),
        ("image/avif", "asset-gateway; hit", 2),
        ("image/webp", "asset-gateway; hit", 2),
        ("image/jpeg", "asset-gateway; fwd=vary-miss; stored", 3),
        ("image/avif", "asset-gateway; hit", 3),
    ];
    for (accept, status, origin_requests) in steps {
        let (cs, body) = get_accept(&url, accept).await;
        assert!(cs.starts_with(status), "{accept}: {cs}");
        assert!(body == want);
        assert_eq!(s.origin.requests_for(A), origin_requests, "{accept}");
        settled(s.admin).await;
    }
    let seen = s.origin.asset_requests();
    assert_eq!(seen[1].header("accept"), Some("image/avif"));

    let path = format!("/cache/content/v1/assets/{A}");
    let (_, json) = admin_json(s.admin, reqwest::Method::DELETE, &path).await;
    assert_eq!(json, serde_json::json!({"purged": true}));
    let (_, json) = admin_json(s.admin, reqwest::Method::GET, "/cache").await;
    assert_eq!(json["objects"], 0, "a variant survived the purge");
    let (cs, _) = get_accept(&url, "image/avif").await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");

    s.origin.set(
        B,
        Behavior::WithHeaders {
            size: 10,
            headers: "vary: *\r\n",
        },
    );
    for n in 1..=2 {
        let (cs, _) = get_accept(&s.gw.asset_url(B), "image/webp").await;
        let fwd = if n == 1 { "uri-miss" } else { "bypass" };
        assert_eq!(cs, format!("asset-gateway; fwd={fwd}; detail=vary"));
        assert_eq!(s.origin.requests_for(B), n);
    }
}

/// The cache lock: while the first request for a cold asset waits for its origin's response
/// head, a second request waits on the lock (it does not go to the origin) and then follows
/// the first one's fill. A waiter gives up after `lock_timeout` (here the first request's
/// origin never answers) and goes upstream itself. The stalled request's lock has expired by
/// then (the lock's age timeout is the same `lock_timeout`, and it started first), so the
/// waiter takes it over and its response is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gives_up_after_lock_timeout() {
    // A lock that does not time out during the test: the second request waits for the first.
    let s = setup("64MiB", "    lock_timeout: 1h").await;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    s.origin.set(
        A,
        Behavior::HoldHead {
            size: 1000,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let url = s.gw.asset_url(A);
    let first = tokio::spawn(get_owned(url.clone()));
    eventually("the origin holds the first request", || {
        held.load(Ordering::SeqCst)
    })
    .await;
    let second = tokio::spawn(get_owned(url.clone()));
    common::eventually_async("the second request in the gateway", async || {
        metric(&common::scrape(s.admin).await, "asset_gateway_active_requests") == 2.0
    })
    .await;
    release.notify_one();
    let (status, cs, body) = tokio::time::timeout(EVENTUALLY, first).await.unwrap().unwrap();
    assert_eq!(
        (status, cs.as_str()),
        (200, "asset-gateway; fwd=uri-miss; stored")
    );
    assert!(body == pattern(0..1000));
    let (status, cs, body) = tokio::time::timeout(EVENTUALLY, second)
        .await
        .expect("the second request went to the origin, which holds it")
        .unwrap();
    // It followed the fill, or found it committed already.
    assert_eq!(status, 200);
    assert!(
        cs == "asset-gateway; fwd=uri-miss; collapsed" || cs.starts_with("asset-gateway; hit"),
        "{cs}"
    );
    assert!(body == pattern(0..1000));
    assert_eq!(
        s.origin.requests_for(A),
        1,
        "the second request did not wait on the lock"
    );

    // The first request's origin never answers (and the read timeout is long): only
    // `lock_timeout` can let the second one go.
    let s = setup_with("64MiB", "    lock_timeout: 1s", "", "      read_timeout: 1h").await;
    s.origin.set(A, Behavior::NeverAnswer);
    let url = s.gw.asset_url(A);
    let first = tokio::spawn(get_owned(url.clone()));
    eventually("the first origin request", || s.origin.requests_for(A) == 1).await;
    s.origin.set(A, Behavior::Generated { size: 1000 });
    let (status, cs, body) = tokio::time::timeout(EVENTUALLY, get(&url))
        .await
        .expect("the waiter never gave up");
    assert_eq!(status, 200);
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
    assert!(body == pattern(0..1000));
    assert_eq!(s.origin.requests_for(A), 2);
    settled(s.admin).await;
    assert!(get(&url).await.1.starts_with("asset-gateway; hit"));
    assert_eq!(s.origin.requests_for(A), 2);
    first.abort();
}

/// A gateway with a cache in front of a fresh origin, whose cached route forwards the client's
/// `Authorization` (by default a cached route removes it).
async fn setup_forwarding_authorization() -> Setup {
    let origin = Origin::start().await;
    let [listen, admin, h2c] = free_addrs();
    let yaml = format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}", {{addr: "{h2c}", h2c: true}}]
  admin: "{admin}"
  cache: {{memory: 64MiB}}
  upstreams:
    assets:
      peers: ["{}"]
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
      forward_headers: [accept, authorization]
"#,
        origin.addr
    );
    let gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(admin);
    Setup {
        origin,
        gw,
        admin,
        h2c,
    }
}

/// A response to a request with `Authorization` (on a route that forwards it) is stored only
/// when the origin allows it (`public`); a body without a `Content-Length` (chunked) and a
/// status the cache does not keep (403) are never stored. Each goes to the origin every time,
/// with its `detail=` reason (the second time as `fwd=bypass`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_chunked_bodies_and_other_statuses_are_not_stored() {
    let s = setup_forwarding_authorization().await;
    s.origin.set(
        A,
        Behavior::WithHeaders {
            size: 1000,
            headers: "cache-control: max-age=3600\r\n",
        },
    );
    s.origin.set(
        B,
        Behavior::WithHeaders {
            size: 1000,
            headers: "cache-control: public, max-age=3600\r\n",
        },
    );
    s.origin.set(
        C,
        Behavior::Raw {
            bytes: "HTTP/1.1 200 OK\r\ncontent-type: image/jpeg\r\ncache-control: max-age=3600\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(),
            after: common::origin::After::Serve,
        },
    );
    s.origin.set(
        D,
        Behavior::Status {
            status: 403,
            body: "not yours",
        },
    );
    let with_authorization = |url: String| async move {
        let r = client()
            .get(url)
            .header("authorization", "Bearer t0ken")
            .send()
            .await
            .unwrap();
        let cs = cache_status(&r);
        (r.status().as_u16(), cs, r.bytes().await.unwrap().to_vec())
    };
    for n in 1..=2 {
        let want = |detail: &str| {
            let fwd = if n == 1 { "uri-miss" } else { "bypass" };
            format!("asset-gateway; fwd={fwd}; detail={detail}")
        };
        let (status, cs, body) = with_authorization(s.gw.asset_url(A)).await;
        assert_eq!(status, 200);
        assert_eq!(cs, want("no-store"));
        assert!(body == pattern(0..1000));
        assert_eq!(s.origin.requests_for(A), n);
        assert_eq!(
            s.origin.requests()[s.origin.requests().len() - 1].header("authorization"),
            Some("Bearer t0ken")
        );

        let (status, cs, body) = get(&s.gw.asset_url(C)).await;
        assert_eq!(status, 200);
        assert_eq!(cs, want("no-content-length"));
        assert_eq!(body, b"hello");
        assert_eq!(s.origin.requests_for(C), n);

        let (status, cs, body) = get(&s.gw.asset_url(D)).await;
        assert_eq!(status, 403);
        assert_eq!(cs, want("status"));
        assert_eq!(body, b"not yours");
        assert_eq!(s.origin.requests_for(D), n);
        settled(s.admin).await;
    }
    // `public` allows it.
    let (_, cs, _) = with_authorization(s.gw.asset_url(B)).await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
    settled(s.admin).await;
    let (_, cs, body) = with_authorization(s.gw.asset_url(B)).await;
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    assert!(body == pattern(0..1000));
    assert_eq!(s.origin.requests_for(B), 1);
}

/// The IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) `secs` seconds from now.
fn http_date_in(secs: u64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let (days, rest) = ((t / 86400) as i64, t % 86400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][month as usize - 1];
    format!(
        "{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} GMT",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The `ttl=` of a hit.
fn ttl(cache_status: &str) -> u64 {
    cache_status
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {cache_status:?}"))
}

/// Freshness end to end, read from a hit's `ttl=`: `s-maxage` wins over `max-age`, `max-age`
/// over `Expires`, `Expires` counts, and without any of them `default_ttl` applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_comes_from_s_maxage_max_age_expires_or_default_ttl() {
    let s = setup("64MiB", "    default_ttl: 50m").await;
    let in_secs = |secs: u64| {
        let expires = format!("expires: {}\r\n", http_date_in(secs));
        &*Box::leak(expires.into_boxed_str())
    };
    let with_max_age: &'static str =
        Box::leak(format!("cache-control: max-age=500\r\n{}", in_secs(5000)).into_boxed_str());
    for (id, headers, fresh_for) in [
        (A, "cache-control: max-age=100000, s-maxage=1000\r\n", 1000),
        (B, in_secs(2000), 2000),
        (C, "x-no-freshness: here\r\n", 3000),
        (D, with_max_age, 500),
    ] {
        s.origin.set(id, Behavior::WithHeaders { size: 10, headers });
        let (_, cs, _) = get(&s.gw.asset_url(id)).await;
        assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored", "{headers}");
        settled(s.admin).await;
        let (_, cs, _) = get(&s.gw.asset_url(id)).await;
        let ttl = ttl(&cs);
        // Whole seconds counted down since the fill: within a minute of the lifetime.
        assert!(
            ttl <= fresh_for && ttl + 60 > fresh_for,
            "{headers}: ttl {ttl}, expected {fresh_for}"
        );
        assert_eq!(s.origin.requests_for(id), 1);
    }
}

/// A stale object whose origin answers its conditional request with a new 200 (the ETag
/// changed) is replaced: `fwd=stale; stored`, the new body, and a hit afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_object_replaced_by_the_origin_is_stale_stored() {
    // Without stale-while-revalidate: the request itself gets the new version.
    let s = setup("64MiB", "    stale_while_revalidate: 0s").await;
    s.origin.set(
        A,
        Behavior::Validated {
            size: 5000,
            etag: "\"v1\"",
            max_age: 0,
        },
    );
    let url = s.gw.asset_url(A);
    assert_eq!(get(&url).await.1, "asset-gateway; fwd=uri-miss; stored");
    settled(s.admin).await;
    // Stale at once (max-age=0); the origin now has a new version.
    s.origin.set(
        A,
        Behavior::Validated {
            size: 7000,
            etag: "\"v2\"",
            max_age: 3600,
        },
    );
    let r = client()
        .get(&url)
        .header("x-request-id", "stale-1")
        .send()
        .await
        .unwrap();
    let cs = cache_status(&r);
    let body = r.bytes().await.unwrap();
    assert_eq!(cs, "asset-gateway; fwd=stale; stored");
    assert!(body == pattern(0..7000));
    let seen = s.origin.asset_requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
    assert!(s.gw.access_line("stale-1").await.contains(" cache=stale-stored"));
    settled(s.admin).await;
    let (_, cs, body) = get(&url).await;
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    assert!(body == pattern(0..7000));
    assert_eq!(s.origin.asset_requests().len(), 2);
}

/// A purge while the asset's fill is in progress: the fill's clients (the first one and a
/// follower) still get every byte, but the fill is not stored; the next request refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fill_lets_its_clients_finish_and_stores_nothing() {
    let s = setup("64MiB", "").await;
    let total = 1024 * 1024;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    s.origin.set(
        A,
        Behavior::HoldAfter {
            first: 64 * 1024,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let url = s.gw.asset_url(A);
    // Both response heads are in before the purge: the first request's fill is registered,
    // and the follower reads it (a follower still looking up after the purge would miss and
    // wait at the holding origin for a release that is given once).
    let first = client().get(&url).send().await.unwrap();
    eventually("the origin holds the fill", || held.load(Ordering::SeqCst)).await;
    let follower = client().get(&url).send().await.unwrap();
    assert_eq!(
        follower.headers()["cache-status"],
        "asset-gateway; fwd=uri-miss; collapsed"
    );
    let path = format!("/cache/content/v1/assets/{A}");
    let (status, json) = admin_json(s.admin, reqwest::Method::DELETE, &path).await;
    assert_eq!((status, json), (200, serde_json::json!({"purged": true})));
    release.notify_one();
    for r in [first, follower] {
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        assert!(body == pattern(0..total as u64), "got {} bytes", body.len());
    }
    assert_eq!(s.origin.requests_for(A), 1);
    settled(s.admin).await;
    s.origin.set(A, Behavior::Generated { size: total as u64 });
    let (_, cs, body) = get(&url).await;
    assert_eq!(
        cs, "asset-gateway; fwd=uri-miss; stored",
        "the purged fill was stored"
    );
    assert!(body == pattern(0..total as u64));
    assert_eq!(s.origin.requests_for(A), 2);
}

/// A HEAD on a cold asset fills the cache (Pingora asks the origin with GET), and the client
/// gets the head only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_miss_fills_the_cache() {
    let s = setup("64MiB", "").await;
    s.origin.set(A, Behavior::Generated { size: 100_000 });
    let url = s.gw.asset_url(A);
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(cache_status(&r), "asset-gateway; fwd=uri-miss; stored");
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(s.origin.asset_requests()[0].method, "GET");
    settled(s.admin).await;
    let (_, cs, body) = get(&url).await;
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    assert!(body == pattern(0..100_000));
    assert_eq!(s.origin.requests_for(A), 1);
}

/// A fill that stalls mid-body fails its followers once the upstream `read_timeout` fails its
/// writer; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_origin_fails_the_followers_at_read_timeout() {
    let s = setup_with("64MiB", "", "", "      read_timeout: 3s").await;
    s.origin.set(
        A,
        Behavior::StallAfter {
            first: 64 * 1024,
            total: 1024 * 1024,
        },
    );
    let url = s.gw.asset_url(A);
    let headers = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let (url, headers) = (url.clone(), headers.clone());
            tokio::spawn(async move {
                let r = client().get(url).send().await.unwrap();
                headers.fetch_add(1, Ordering::SeqCst);
                r.bytes().await
            })
        })
        .collect();
    // All five follow the one fill before it times out (a client arriving after the failure
    // would rightly start a fill of its own).
    eventually("all 5 response heads", || headers.load(Ordering::SeqCst) == 5).await;
    for c in clients {
        assert!(c.await.unwrap().is_err(), "a client saw a clean end");
    }
    assert_eq!(s.origin.requests_for(A), 1);
    let (_, json) = admin_json(s.admin, reqwest::Method::GET, "/cache").await;
    assert_eq!(
        (json["objects"].as_u64(), json["fills_in_flight"].as_u64()),
        (Some(0), Some(0))
    );
}

/// Pipelined and keep-alive requests through the cache: a miss, then hits, on one connection,
/// answered in order with exact bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_through_the_cache() {
    let s = setup("64MiB", "").await;
    s.origin.set(A, Behavior::Generated { size: 300_000 });
    s.origin.set(B, Behavior::Generated { size: 1000 });
    let mut conn = RawConn::connect(s.gw.addr).await;
    let req = |id: &str| format!("GET /content/v1/assets/{id} HTTP/1.1\r\nhost: x\r\n\r\n");
    conn.send(format!("{}{}{}", req(A), req(B), req(A)).as_bytes())
        .await;
    for (id, size) in [(A, 300_000), (B, 1000), (A, 300_000)] {
        let r = conn.response(false).await.expect("a response");
        assert_eq!(r.status, 200, "{id}");
        assert!(r.body == pattern(0..size), "{id}");
        assert!(r.header("cache-status").is_some(), "{id}");
    }
    settled(s.admin).await;
    conn.send(req(B).as_bytes()).await;
    let r = conn
        .response(false)
        .await
        .expect("a response on the kept connection");
    assert!(r
        .header("cache-status")
        .unwrap()
        .starts_with("asset-gateway; hit"));
    assert!(r.body == pattern(0..1000));
    assert_eq!(s.origin.requests_for(A), 1);
    assert_eq!(s.origin.requests_for(B), 1);
}

/// Fills in progress count against `memory`: with 2 MiB of cache, three held 900 KiB fills
/// of distinct assets cannot all be in memory at once; the one that does not fit streams
/// through uncached (`detail=memory-full`) and every client still gets its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_in_progress_stay_within_memory() {
    let s = setup("2MiB", "").await;
    let total = 900 * 1024;
    let ids = [
        "00000000-0000-4000-8000-00000000f001",
        "00000000-0000-4000-8000-00000000f002",
        "00000000-0000-4000-8000-00000000f003",
    ];
    let (mut helds, mut releases) = (Vec::new(), Vec::new());
    for id in ids {
        let held = Arc::new(AtomicBool::new(false));
        // One per fill, released with `notify_one`, which a fill not yet waiting still gets.
        let release = Arc::new(Notify::new());
        s.origin.set(
            id,
            Behavior::HoldAfter {
                first: 64 * 1024,
                total,
                release: release.clone(),
                held: held.clone(),
            },
        );
        helds.push(held);
        releases.push(release);
    }
    let mut clients = Vec::new();
    for id in ids {
        let url = s.gw.asset_url(id);
        clients.push(tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            let cs = cache_status(&r);
            (cs, r.bytes().await.unwrap().to_vec())
        }));
        // One at a time, so which one is refused is known: the third.
        let held = helds[clients.len() - 1].clone();
        eventually("the origin holding the fill", move || held.load(Ordering::SeqCst)).await;
    }
    for release in &releases {
        release.notify_one();
    }
    let want = pattern(0..total as u64);
    let mut statuses = Vec::new();
    for c in clients {
        let (cs, body) = c.await.unwrap();
        assert!(body == want, "a client got {} bytes", body.len());
        statuses.push(cs);
    }
    assert_eq!(
        statuses,
        [
            "asset-gateway; fwd=uri-miss; stored",
            "asset-gateway; fwd=uri-miss; stored",
            "asset-gateway; fwd=uri-miss; detail=memory-full",
        ]
    );
    let (_, stats) = admin_json(s.admin, reqwest::Method::GET, "/cache").await;
    assert!(stats["memory_bytes"].as_u64().unwrap() <= 2 << 20, "{stats}");
}

/// The gateway's own error on a cached route says what the cache did too: an origin that
/// does not answer within `read_timeout` gets a 504 with `fwd=uri-miss; detail=upstream-error`
/// (nothing stored, nothing served from the cache), and the access line says `cache=miss`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_says_upstream_error() {
    let s = setup_with("64MiB", "", "", "      read_timeout: 1s").await;
    s.origin.set(A, Behavior::NeverAnswer);
    let r = client().get(s.gw.asset_url(A)).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(
        cache_status(&r),
        "asset-gateway; fwd=uri-miss; detail=upstream-error"
    );
    let lines = s.gw.wait_access_lines(1).await;
    assert!(
        lines[0].contains(" status=504 ") && lines[0].contains(" cache=miss"),
        "{}",
        lines[0]
    );
}
