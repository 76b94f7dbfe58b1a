//! Assets keep flowing when the origin is down or slow: stale-while-revalidate (served at
//! once, one background revalidation per object) and stale-if-error (5xx, refused, timed out,
//! no usable peer), within the windows the config and the origin allow; never for
//! `must-revalidate` or `no-cache`, and never after the origin said 404 or 410. Real gateway
//! process, real origin, real client; no test asserts on time (the waits let freshness pass).

mod common;

use bytes::Bytes;
use common::origin::{Behavior, Origin, Seen};
use common::{client, eventually, eventually_async, free_addrs, wait_listening, Gateway};
use futures::FutureExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("0d1c2a7e-9b4d-4e8a-8c21-5d6f7a8b{i:04}"))
        .collect()
}

struct Setup {
    origin: Origin,
    gw: Gateway,
    admin: SocketAddr,
}

async fn setup(cache_extra: &str, upstream_extra: &str) -> Setup {
    let origin = Origin::start().await;
    let [listen, admin] = free_addrs();
    let yaml = format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}"]
  admin: "{admin}"
  cache:
    memory: 64MiB
{cache_extra}
  upstreams:
    assets:
      peers: ["{}"]
{upstream_extra}
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
"#,
        origin.addr
    );
    let gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(admin);
    Setup { origin, gw, admin }
}

/// What the scripted origin does with the next requests for an asset.
const OK: u8 = 0;
const UNAVAILABLE: u8 = 1;
const GONE: u8 = 2;
const SILENT: u8 = 3;

/// An asset whose answers a test switches: 200 with `body` (a request naming the ETag gets
/// 304, fresh for three seconds, held while `hold` is set), 503, 404 or no answer at all.
struct Scripted {
    mode: AtomicU8,
    hold: AtomicBool,
    release: Notify,
    revalidations: AtomicUsize,
}

fn scripted(origin: &Origin, id: &str, body: &'static [u8], cache_control: &'static str) -> Arc<Scripted> {
    let st = Arc::new(Scripted {
        mode: AtomicU8::new(OK),
        hold: AtomicBool::new(false),
        release: Notify::new(),
        revalidations: AtomicUsize::new(0),
    });
    let s = st.clone();
    origin.set(
        id,
        Behavior::Scripted(Arc::new(move |req: &Seen| {
            let req = req.clone();
            let s = s.clone();
            async move {
                let headers = format!("etag: \"e\"\r\ncache-control: {cache_control}\r\n");
                match s.mode.load(Ordering::SeqCst) {
                    UNAVAILABLE => {
                        return (
                            format!("{} Status", 503),
                            String::new(),
                            Some(Bytes::from_static(b"unavailable"))
                                .map(|b| b.to_vec())
                                .unwrap_or_default(),
                        )
                    }
                    GONE => {
                        return (
                            format!("{} Status", 404),
                            String::new(),
                            Some(Bytes::from_static(b"gone"))
                                .map(|b| b.to_vec())
                                .unwrap_or_default(),
                        )
                    }
                    SILENT => std::future::pending::<()>().await,
                    _ => {}
                }
                if req.header("if-none-match") == Some("\"e\"") {
                    s.revalidations.fetch_add(1, Ordering::SeqCst);
                    if s.hold.load(Ordering::SeqCst) {
                        s.release.notified().await;
                    }
                    return (
                        format!("{} Status", 304),
                        "etag: \"e\"\r\ncache-control: max-age=3\r\n".into(),
                        Vec::new(),
                    );
                }
                (
                    format!("{} Status", 200),
                    headers,
                    Some(Bytes::from_static(body))
                        .map(|b| b.to_vec())
                        .unwrap_or_default(),
                )
            }
            .boxed()
        })),
    );
    st
}

async fn get(url: &str) -> (u16, String, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let cs = r
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cs, r.bytes().await.unwrap().to_vec())
}

/// Lets freshness of one second pass (a wait, not a timing assertion).
async fn let_it_go_stale() {
    tokio::time::sleep(Duration::from_millis(2100)).await;
}

/// Waits until `asset_gateway_cache_lookups_total{result}` satisfies `ok` (the metric is
/// counted when a request's logging runs, a moment after its client has the response).
async fn wait_for_lookups(admin: SocketAddr, result: &str, ok: impl Fn(f64) -> bool) {
    let series = format!(
        "asset_gateway_cache_lookups_total{{result=\"{result}\",route=\"/content/v1/assets/{{id}}\"}}"
    );
    // common::metric panics on a missing series: a renamed metric fails here, never reads 0.
    eventually_async(&series, async || {
        ok(common::metric(&common::scrape(admin).await, &series))
    })
    .await
}

const BODY: &[u8] = b"the stored asset, 42 bytes long, abcdefghi";

/// Within `stale_while_revalidate` (10 s by default), a stale object is served at once to
/// every client while one background request revalidates it, however many clients arrive;
/// the 304 then refreshes it. The background request obeys the upstream's timeouts: one that
/// gets no answer ends at `read_timeout`, and a later client starts another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_at_once_and_revalidates_once() {
    let s = setup("", "      read_timeout: 1s").await;
    let [a] = ids(1).try_into().unwrap();
    let o = scripted(&s.origin, &a, BODY, "max-age=1");
    let url = s.gw.asset_url(&a);
    assert_eq!(get(&url).await.1, "asset-gateway; fwd=uri-miss; stored");
    let_it_go_stale().await;

    // The origin holds the revalidation: every client is answered before it ends.
    o.hold.store(true, Ordering::SeqCst);
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for c in clients {
        let (status, cs, body) = c.await.unwrap();
        assert_eq!(status, 200);
        assert!(cs.starts_with("asset-gateway; hit; ttl=-"), "{cs}");
        assert!(cs.ends_with("; detail=stale-while-revalidate"), "{cs}");
        assert_eq!(body, BODY);
    }
    eventually("the background revalidation", || {
        o.revalidations.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        s.origin.requests_for(&a),
        2,
        "one revalidation for twenty clients"
    );
    o.hold.store(false, Ordering::SeqCst);
    o.release.notify_one();
    // Refreshed by the 304: fresh again, the origin not asked.
    eventually_async("refreshed by the 304", async || {
        let (_, cs, body) = get(&url).await;
        assert_eq!(body, BODY);
        ttl(&cs) >= 0
    })
    .await;
    assert_eq!(s.origin.requests_for(&a), 2);
    wait_for_lookups(s.admin, "stale_while_revalidate", |n| n >= 20.0).await;
    let lines = s.gw.wait_access_lines(22).await;
    assert!(
        lines
            .iter()
            .filter(|l| l.contains(" cache=stale-while-revalidate"))
            .count()
            >= 20
    );

    // Stale again; a revalidation that gets no answer ends at the upstream's read timeout.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    o.mode.store(SILENT, Ordering::SeqCst);
    let (_, cs, body) = get(&url).await;
    assert!(cs.ends_with("detail=stale-while-revalidate"), "{cs}");
    assert_eq!(body, BODY);
    let before = s.origin.requests_for(&a);
    // After the timeout (1 s), the next client starts another revalidation.
    eventually_async("the stuck revalidation ended", async || {
        let (_, _, body) = get(&url).await;
        assert_eq!(body, BODY);
        s.origin.requests_for(&a) != before
    })
    .await;
}

/// The `ttl` parameter of a Cache-Status value.
fn ttl(cs: &str) -> i64 {
    cs.split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(i64::MIN)
}

/// Within `stale_if_error` (1 h by default), a stale object is served when the origin
/// answers 5xx, refuses the connection or times out, and says so (RFC 9211 `fwd=stale`,
/// `fwd-status`, a negative `ttl`, `detail=stale-if-error`; the access log and the lookup
/// metric). Never for `must-revalidate` or `no-cache`; the origin's own `stale-if-error`
/// wins over the default; a revalidation answered 404 removes the object, which then never
/// comes back as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_stored_object_when_the_origin_fails() {
    // Revalidations wait for their answer here (no stale-while-revalidate).
    let s = setup("    stale_while_revalidate: 0s", "      read_timeout: 1s").await;
    let [a, must, no_cache, own, gone] = ids(5).try_into().unwrap();
    let oa = scripted(&s.origin, &a, BODY, "max-age=1");
    let om = scripted(&s.origin, &must, BODY, "max-age=1, must-revalidate");
    let on = scripted(&s.origin, &no_cache, BODY, "no-cache");
    let oo = scripted(&s.origin, &own, BODY, "max-age=1, stale-if-error=1");
    let og = scripted(&s.origin, &gone, BODY, "max-age=1");
    for id in [&a, &must, &no_cache, &own, &gone] {
        assert_eq!(
            get(&s.gw.asset_url(id)).await.1,
            "asset-gateway; fwd=uri-miss; stored"
        );
    }
    let_it_go_stale().await;
    let url = s.gw.asset_url(&a);

    // A 5xx.
    oa.mode.store(UNAVAILABLE, Ordering::SeqCst);
    let (status, cs, body) = get(&url).await;
    assert_eq!((status, body.as_slice()), (200, BODY));
    assert!(
        cs.starts_with("asset-gateway; fwd=stale; fwd-status=503; ttl=-"),
        "{cs}"
    );
    assert!(cs.ends_with("; detail=stale-if-error"), "{cs}");
    // No answer within `read_timeout`.
    oa.mode.store(SILENT, Ordering::SeqCst);
    let (status, cs, body) = get(&url).await;
    assert_eq!((status, body.as_slice()), (200, BODY));
    assert!(cs.starts_with("asset-gateway; fwd=stale; ttl=-"), "{cs}");
    assert!(cs.ends_with("; detail=stale-if-error"), "{cs}");

    // The origin's stale-if-error=1 is shorter than the default: past it, the 503 goes on.
    oo.mode.store(UNAVAILABLE, Ordering::SeqCst);
    assert_eq!(get(&s.gw.asset_url(&own)).await.0, 503);
    // Never stale: must-revalidate, no-cache.
    om.mode.store(UNAVAILABLE, Ordering::SeqCst);
    on.mode.store(UNAVAILABLE, Ordering::SeqCst);
    for id in [&must, &no_cache] {
        let (status, _, body) = get(&s.gw.asset_url(id)).await;
        assert_eq!((status, body.as_slice()), (503, &b"unavailable"[..]), "{id}");
    }
    // A 404 is an answer, not an error: passed on (and kept `negative_ttl`), and the stored
    // 200 is removed: it never comes back as stale.
    og.mode.store(GONE, Ordering::SeqCst);
    assert_eq!(get(&s.gw.asset_url(&gone)).await.0, 404);
    og.mode.store(UNAVAILABLE, Ordering::SeqCst);
    let (status, _, body) = get(&s.gw.asset_url(&gone)).await;
    assert_ne!(
        (status, body.as_slice()),
        (200, BODY),
        "the removed object came back as stale"
    );

    // The origin is down: connections refused.
    oa.mode.store(OK, Ordering::SeqCst);
    s.origin.stop();
    let (status, cs, body) = get(&url).await;
    assert_eq!((status, body.as_slice()), (200, BODY));
    assert!(cs.ends_with("; detail=stale-if-error"), "{cs}");

    wait_for_lookups(s.admin, "stale_if_error", |n| n == 3.0).await;
    let lines = s.gw.wait_access_lines(13).await;
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(" cache=stale-if-error"))
            .count(),
        3
    );
    let _ = (om, on);
}

/// With every peer known to be down (health checks), a stale object is served instead of the
/// gateway's 502; past `stale_if_error` (here 2 s), the 502 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_object_is_served_while_no_peer_is_usable() {
    let s = setup(
        "    stale_while_revalidate: 0s\n    stale_if_error: 2s",
        "      health_check: {path: /healthz, interval: 100ms, timeout: 1s, unhealthy_after: 1}",
    )
    .await;
    let [a] = ids(1).try_into().unwrap();
    scripted(&s.origin, &a, BODY, "max-age=1");
    let url = s.gw.asset_url(&a);
    assert_eq!(get(&url).await.1, "asset-gateway; fwd=uri-miss; stored");
    s.origin.state.healthy.store(false, Ordering::SeqCst);
    let_it_go_stale().await;
    let (status, cs, body) = get(&url).await;
    assert_eq!((status, body.as_slice()), (200, BODY), "{cs}");
    assert!(cs.starts_with("asset-gateway; fwd=stale; ttl=-"), "{cs}");
    assert!(cs.ends_with("; detail=stale-if-error"), "{cs}");
    // Past the window: the gateway's own answer, which says the stale object was found but
    // no answer came.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, cs, _) = get(&url).await;
    assert_eq!(status, 502);
    assert_eq!(cs, "asset-gateway; fwd=stale; detail=upstream-error");
    // A cold asset: nothing found, nothing stored.
    let [cold] = ids(2)[1..].to_vec().try_into().unwrap();
    let (status, cs, _) = get(&s.gw.asset_url(&cold)).await;
    assert_eq!(status, 502);
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; detail=upstream-error");
}
