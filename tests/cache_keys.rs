//! Cache keys a CDN engineer would sign off: unkeyed headers never reach the origin of a
//! cached route (no poisoning), the query is canonical (no cache-busting), 404s are stored,
//! answers that cannot be stored do not stampede (hit-for-pass, shared 5xx), `Accept` variants
//! collapse, purges cover a route and a whole tier. Real gateway processes, a real origin, a
//! real client; no test asserts on time (the herd tests look at what the origin saw).

mod common;

use common::origin::{Behavior, Origin, Script, Seen};
use common::{client, free_addrs, settled, wait_listening, Gateway};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const A: &str = "0b1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c01";
const B: &str = "0b1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c02";
const C: &str = "0b1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c03";

/// The cached route with keying options.
const SIZED: &str = "/content/v1/sized/{id}";

struct Setup {
    origin: Origin,
    gw: Gateway,
    admin: SocketAddr,
}

/// A gateway with a cache and three routes: `/content/v1/assets/{id}` (cached, defaults),
/// `/content/v1/sized/{id}` (cached, `query: {allow: [w, fmt]}`, `vary_accept`) and
/// `/content/v1/nocache/{id}` (not cached). `cache_extra` lines go under `gateway.cache`,
/// `gateway_extra` under `gateway`.
async fn setup(cache_extra: &str, gateway_extra: &str) -> Setup {
    let origin = Origin::start().await;
    let [listen, admin] = free_addrs();
    let yaml = format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}"]
  admin: "{admin}"
{gateway_extra}
  cache:
    memory: 64MiB
{cache_extra}
  upstreams:
    assets:
      peers: ["{}"]
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
    - path: {SIZED}
      upstream: assets
      rewrite: /v1/sized/{{id}}
      query: {{allow: [w, fmt]}}
      forward_headers: [accept]
      vary_accept: [image/avif, image/webp]
    - path: /content/v1/nocache/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
      cache: false
"#,
        origin.addr
    );
    let gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(admin);
    Setup { origin, gw, admin }
}

/// A [`Script`] from an async function of the request.
fn script<F, Fut>(f: F) -> Behavior
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (String, String, Vec<u8>)> + Send + 'static,
{
    let s: Script = Arc::new(move |seen: &Seen| Box::pin(f(seen.clone())));
    Behavior::Scripted(s)
}

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// GETs `url` with `headers`: status, Cache-Status, body.
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = client().get(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let cs = cache_status(&r);
    (status, cs, r.text().await.unwrap())
}

async fn admin_json(admin: SocketAddr, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
    let r = client()
        .request(method, format!("http://{admin}{path}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Runs `n` GETs of `url` at once; returns (status, Cache-Status, body) of each.
async fn herd(url: &str, n: usize) -> Vec<(u16, String, String)> {
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    let mut out = Vec::new();
    for c in clients {
        out.push(c.await.unwrap());
    }
    out
}

/// An origin that reflects `X-Forwarded-Host` and `Origin` (and what else a client could
/// smuggle in) into a cacheable answer, without `Vary`: the classic poisoning setup.
fn reflecting() -> Behavior {
    script(|seen: Seen| async move {
        let h = |n: &str| seen.header(n).unwrap_or("-").to_string();
        let body = format!(
            "base=https://{}/ origin={} forwarded={} original-url={} override={} cookie={}",
            h("x-forwarded-host"),
            h("origin"),
            h("forwarded"),
            h("x-original-url"),
            h("x-http-method-override"),
            h("cookie")
        );
        let headers = format!(
            "content-type: text/plain\r\ncache-control: public, max-age=3600\r\naccess-control-allow-origin: {}\r\n",
            h("origin")
        );
        ("200 OK".to_string(), headers, body.into_bytes())
    })
}

const POISON: [(&str, &str); 7] = [
    ("x-forwarded-host", "evil.example"),
    ("origin", "https://evil.example"),
    ("forwarded", "host=evil.example"),
    ("x-original-url", "/evil.example"),
    ("x-http-method-override", "evil.example"),
    ("cookie", "evil.example=1"),
    ("authorization", "Bearer evil.example"),
];

/// A poisoning request, then a clean one: neither sees the reflected value, and the origin of
/// a cached route never receives those headers. A route without cache still forwards them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_headers_never_reach_the_origin_of_a_cached_route() {
    let s = setup("", "").await;
    s.origin.set(A, reflecting());
    let url = s.gw.asset_url(A);
    let r = client()
        .get(&url)
        .headers(
            POISON
                .iter()
                .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
                .collect(),
        )
        .send()
        .await
        .unwrap();
    let acao = r.headers().get("access-control-allow-origin").cloned();
    let poisoned = r.text().await.unwrap();
    settled(s.admin).await;
    let r = client().get(&url).send().await.unwrap();
    let (cs, clean_acao) = (
        cache_status(&r),
        r.headers()["access-control-allow-origin"].clone(),
    );
    let clean = r.text().await.unwrap();
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    assert!(
        !clean.contains("evil"),
        "a clean client got the poisoned answer: {clean}"
    );
    assert_eq!(clean_acao, "-");
    assert!(!poisoned.contains("evil"), "the origin reflected: {poisoned}");
    assert_eq!(acao.unwrap(), "-");
    assert_eq!(s.origin.requests_for(A), 1);
    let seen = &s.origin.asset_requests()[0];
    for (name, _) in POISON {
        assert_eq!(seen.header(name), None, "{name} reached the origin");
    }
    // Without cache, behaviour is as before: every client header goes.
    s.origin.set(B, reflecting());
    let (_, _, body) = get(&s.gw.url(&format!("/content/v1/nocache/{B}")), &POISON).await;
    assert!(body.contains("base=https://evil.example/"), "{body}");
}

/// 200 requests with a random `?r=` on a cached route (query dropped by default) reach the
/// origin once, without the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_query_strings_do_not_bust_the_cache() {
    let s = setup("", "").await;
    s.origin.set_body(A, "an image");
    let base = s.gw.asset_url(A);
    let mut ok = 0;
    for batch in 0..10 {
        let clients: Vec<_> = (0..20)
            .map(|i| {
                let url = format!("{base}?r={}", batch * 1000 + i * 7919 + 13);
                tokio::spawn(async move { get(&url, &[]).await })
            })
            .collect();
        for c in clients {
            let (status, _, body) = c.await.unwrap();
            assert_eq!((status, body.as_str()), (200, "an image"));
            ok += 1;
        }
    }
    assert_eq!(ok, 200);
    // `requests_for` matches targets ending in the id: with a query they would not.
    let seen = s.origin.asset_requests();
    assert_eq!(seen.len(), 1, "200 requests made {} origin requests", seen.len());
    assert_eq!(seen[0].target, format!("/v1/assets/{A}"));
    // The lookup metric is counted in the logging hook, after the client has its response;
    // the access line comes after it.
    s.gw.wait_access_lines(200).await;
    let m = common::scrape(s.admin).await;
    let route = "route=\"/content/v1/assets/{id}\"";
    let count = |result: &str| {
        common::metric(
            &m,
            &format!("asset_gateway_cache_lookups_total{{result=\"{result}\",{route}}}"),
        )
    };
    assert_eq!(count("miss"), 1.0, "{m}");
    assert_eq!(count("hit") + count("coalesced"), 199.0);
}

/// `query: {allow: [w, fmt]}`: two orders of the allowed parameters (with others mixed in)
/// are one object, and the origin sees the allowed ones only, sorted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_query_parameters_are_one_object_in_either_order() {
    let s = setup("", "").await;
    s.origin.set_body(A, "w200");
    let url = |q: &str| s.gw.url(&format!("/content/v1/sized/{A}?{q}"));
    let (_, cs, _) = get(&url("w=200&fmt=webp&r=1"), &[]).await;
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
    settled(s.admin).await;
    let (_, cs, body) = get(&url("utm=x&fmt=webp&w=200"), &[]).await;
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    assert_eq!(body, "w200");
    let (_, cs, _) = get(&url("w=300&fmt=webp"), &[]).await;
    assert_eq!(
        cs, "asset-gateway; fwd=uri-miss; stored",
        "another width is another object"
    );
    let targets: Vec<String> = s.origin.asset_requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            format!("/v1/sized/{A}?fmt=webp&w=200"),
            format!("/v1/sized/{A}?fmt=webp&w=300")
        ]
    );
}

/// A 404 asked for 20 times at once reaches the origin once, and is served from the cache
/// for `negative_ttl` (here 2s), then asked again; an origin's own freshness wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_reaches_the_origin_once() {
    let s = setup("    negative_ttl: 2s", "").await;
    // The origin answers 404 for an id it does not know (A).
    let url = s.gw.asset_url(A);
    for (status, _, body) in herd(&url, 20).await {
        assert_eq!((status, body.as_str()), (404, "not found"));
    }
    assert_eq!(s.origin.requests_for(A), 1, "the 404 was not shared");
    settled(s.admin).await;
    let (status, cs, _) = get(&url, &[]).await;
    assert_eq!(status, 404);
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    s.origin.set(
        B,
        script(|_| async {
            let h = "cache-control: max-age=600\r\n".to_string();
            ("404 Not Found".to_string(), h, b"gone for long".to_vec())
        }),
    );
    get(&s.gw.asset_url(B), &[]).await;
    settled(s.admin).await;
    // Past negative_ttl (waiting, not timing: the assertion is on what the origin saw).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, cs, _) = get(&url, &[]).await;
    assert_eq!(status, 404);
    assert!(cs.contains("fwd=stale"), "{cs}");
    assert_eq!(s.origin.requests_for(A), 2);
    let (_, cs, _) = get(&s.gw.asset_url(B), &[]).await;
    assert!(cs.starts_with("asset-gateway; hit"), "max-age=600 must win: {cs}");
    assert_eq!(s.origin.requests_for(B), 1);
}

/// Counts the origin requests in flight for one asset, and the most at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicUsize,
}

impl InFlight {
    fn enter(&self) -> usize {
        self.total.fetch_add(1, Ordering::SeqCst);
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        n
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn reset(&self) {
        self.peak.store(0, Ordering::SeqCst);
        self.total.store(0, Ordering::SeqCst);
    }
}

/// Hit-for-pass. A herd of 30 on a `no-store` asset whose origin takes 1 s: the first waits on
/// the lock for the first answer, then all go upstream (2 round trips). The second herd skips
/// the lock: all 30 are at the origin at once, so it takes one round trip. That is checked by
/// what the origin saw, not by a clock: for the second herd the origin holds every request
/// until 30 have arrived (or 8 s pass); behind a lock only one would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_no_store_herd_goes_upstream_at_once() {
    let s = setup("", "").await;
    let flight = Arc::new(InFlight::default());
    let barrier = Arc::new(AtomicUsize::new(0));
    let (f, b) = (flight.clone(), barrier.clone());
    s.origin.set(
        A,
        script(move |_| {
            let (f, b) = (f.clone(), b.clone());
            async move {
                f.enter();
                let wait_for = b.load(Ordering::SeqCst);
                let start = Instant::now();
                if wait_for == 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    // Arrivals since the reset, not those in flight now: once the 30th
                    // came, every one may answer. The cap stays below `read_timeout`.
                    while f.total.load(Ordering::SeqCst) < wait_for
                        && start.elapsed() < Duration::from_secs(8)
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                f.leave();
                let h = "cache-control: no-store\r\n".to_string();
                ("200 OK".to_string(), h, b"fresh each time".to_vec())
            }
        }),
    );
    let url = s.gw.asset_url(A);
    let first = herd(&url, 30).await;
    assert!(first
        .iter()
        .all(|(status, _, body)| *status == 200 && body == "fresh each time"));
    assert_eq!(
        flight.total.load(Ordering::SeqCst),
        30,
        "waiters not released to go upstream"
    );
    flight.reset();
    barrier.store(30, Ordering::SeqCst);
    let second = herd(&url, 30).await;
    assert_eq!(
        flight.peak.load(Ordering::SeqCst),
        30,
        "the second herd queued on the lock instead of going upstream at once"
    );
    for (status, cs, _) in &second {
        assert_eq!(*status, 200);
        assert_eq!(cs, "asset-gateway; fwd=bypass; detail=no-store");
    }
    // Counted in the logging hook, before each request's access line.
    s.gw.wait_access_lines(60).await;
    let m = common::scrape(s.admin).await;
    let pass = common::metric(
        &m,
        "asset_gateway_cache_lookups_total{result=\"pass\",route=\"/content/v1/assets/{id}\"}",
    );
    assert_eq!(pass, 30.0, "{m}");
}

/// Hit-for-pass and `Vary`: an origin that answers 406 (unstorable) for a client whose
/// `Accept` is none of `vary_accept`, and a cacheable WebP otherwise. One such client must not
/// turn off the lookup for the others: not on a cold key (its pass holds for its own `Accept`
/// class only), and not once the WebP is stored (a refusal after a `Vary` miss is not
/// remembered, even an AVIF `no-store` without `Vary`). The refused class itself still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_unstorable_variant_does_not_turn_off_hits() {
    let s = setup("", "").await;
    s.origin.set(
        A,
        script(|seen: Seen| async move {
            match seen.header("accept") {
                Some("image/webp") => (
                    "200 OK".to_string(),
                    "vary: Accept\r\ncache-control: max-age=600\r\n".to_string(),
                    b"webp".to_vec(),
                ),
                // Unstorable, and without Vary: as far as it says, for the whole URL.
                Some("image/avif") => (
                    "200 OK".to_string(),
                    "cache-control: no-store\r\n".to_string(),
                    b"avif".to_vec(),
                ),
                _ => (
                    "406 Not Acceptable".to_string(),
                    "vary: Accept\r\n".to_string(),
                    b"no".to_vec(),
                ),
            }
        }),
    );
    let url = s.gw.url(&format!("/content/v1/sized/{A}"));
    let webp = [("accept", "image/webp,*/*")];
    let jxl = [("accept", "image/jxl,*/*")];
    let webp_requests = |o: &Origin| {
        o.asset_requests()
            .iter()
            .filter(|r| r.header("accept") == Some("image/webp"))
            .count()
    };
    // Cold key: the odd client comes first.
    assert_eq!(get(&url, &jxl).await.0, 406);
    let herd: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &webp).await })
        })
        .collect();
    for h in herd {
        let (status, _, body) = h.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "webp"));
    }
    assert_eq!(
        webp_requests(&s.origin),
        1,
        "the WebP herd bypassed the cache after another client's 406"
    );
    settled(s.admin).await;
    // Warm: the odd client keeps coming, every other request is a hit.
    for i in 0..20 {
        if i % 2 == 0 {
            let (status, cs, _) = get(&url, &jxl).await;
            assert_eq!(status, 406, "{cs}");
            let (status, cs, _) = get(&url, &[("accept", "image/avif")]).await;
            assert_eq!(status, 200, "{cs}");
        }
        let (status, cs, body) = get(&url, &webp).await;
        assert_eq!((status, body.as_str()), (200, "webp"));
        assert!(cs.starts_with("asset-gateway; hit"), "request {i}: {cs}");
    }
    assert_eq!(webp_requests(&s.origin), 1);
    // The refused class passes (its mark came from the cold key's miss).
    let (_, cs, _) = get(&url, &jxl).await;
    assert_eq!(cs, "asset-gateway; fwd=bypass; detail=status");
}

/// An origin's `Vary` on a header the gateway sets itself keys on what the upstream gets, not
/// on what the client sent: `X-Forwarded-Proto` (here always http) and `Host` (the
/// configured one) make one object whatever the client claims; an answer that varies per
/// client or per request (`X-Forwarded-For`, `X-Request-Id`) is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_on_what_the_gateway_sets_keys_on_what_it_sends() {
    let s = setup("", "").await;
    let varying = |vary: &'static str| {
        script(move |_| async move {
            let h = format!("vary: {vary}\r\ncache-control: max-age=600\r\n");
            ("200 OK".to_string(), h, b"x".to_vec())
        })
    };
    s.origin.set(A, varying("X-Forwarded-Proto"));
    s.origin.set(B, varying("Host"));
    s.origin.set(C, varying("X-Request-Id"));
    let claims: [&[(&str, &str)]; 3] = [
        &[],
        &[("x-forwarded-proto", "https")],
        &[("x-forwarded-proto", "gopher"), ("host", "other.example")],
    ];
    for id in [A, B] {
        for (i, headers) in claims.iter().enumerate() {
            let (status, cs, _) = get(&s.gw.asset_url(id), headers).await;
            assert_eq!(status, 200);
            assert_eq!(
                cs.starts_with("asset-gateway; hit"),
                i > 0,
                "{id} {headers:?}: {cs}"
            );
            settled(s.admin).await;
        }
        assert_eq!(
            s.origin.requests_for(id),
            1,
            "{id}: split by what the client claimed"
        );
    }
    for i in 0..3 {
        let (_, cs, _) = get(&s.gw.asset_url(C), &[("x-request-id", &format!("vary-{i}"))]).await;
        assert!(cs.contains("detail=vary"), "{cs}");
    }
    assert_eq!(s.origin.requests_for(C), 3);
}

/// A herd of 30 on a cold key whose origin answers 503 (slowly): the waiters share the one
/// answer, and while the origin keeps failing it sees about one request per key per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cold_key_does_not_stampede() {
    let s = setup("", "").await;
    s.origin.set(
        A,
        script(|_| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            (
                "503 Service Unavailable".to_string(),
                String::new(),
                b"down".to_vec(),
            )
        }),
    );
    let url = s.gw.asset_url(A);
    for (status, _, body) in herd(&url, 30).await {
        assert_eq!((status, body.as_str()), (503, "down"));
    }
    let herd_requests = s.origin.requests_for(A);
    assert!(
        herd_requests <= 2,
        "a herd of 30 made {herd_requests} origin requests"
    );
    // Keep asking for 3 s: at most one origin request per second gets through (plus the one
    // in flight when the window opened).
    let start = Instant::now();
    let mut asked = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let (status, _, _) = get(&url, &[]).await;
        assert_eq!(status, 503);
        asked += 1;
    }
    let seconds = start.elapsed().as_secs_f64().ceil() as usize;
    let during = s.origin.requests_for(A) - herd_requests;
    assert!(
        during <= seconds + 1,
        "{asked} requests over {seconds} s made {during} origin requests"
    );
}

/// What a client sends cannot become an error stored for others: behind a trusted proxy the
/// origin of a cached route gets `X-Forwarded-For` as far as trusted proxies vouch for it
/// (the client and the proxies, not the client's own entries), header values a cached route
/// passes on are bounded (431 beyond 8 KiB), and an error the origin gives one client's request
/// is shared only with the requests that waited for it: a client arriving afterwards gets an
/// answer to a request made after it arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_headers_never_make_the_error_others_get() {
    let s = setup("", "  client_ip:\n    trusted_proxies: [\"127.0.0.1/32\"]").await;
    // An origin that fails on a long X-Forwarded-For, or on an Accept it chokes on.
    let fragile = || {
        script(|seen: Seen| async move {
            let xff = seen.header("x-forwarded-for").unwrap_or_default().len();
            if xff > 100 || seen.header("accept") == Some("image/evil") {
                return (
                    "503 Service Unavailable".to_string(),
                    String::new(),
                    b"down".to_vec(),
                );
            }
            let h = "cache-control: max-age=600\r\n".to_string();
            ("200 OK".to_string(), h, b"fine".to_vec())
        })
    };
    for id in [A, B, C] {
        s.origin.set(id, fragile());
    }
    let chain = (1..=40)
        .map(|i| format!("198.51.100.{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (status, _, body) = get(&s.gw.asset_url(A), &[("x-forwarded-for", &chain)]).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "fine"),
        "the client's chain reached the origin"
    );
    let seen = s.origin.asset_requests();
    assert_eq!(
        seen[0].header("x-forwarded-for"),
        Some("198.51.100.40, 127.0.0.1"),
        "the client, then the trusted peer"
    );
    // An error caused by one client's header, then a clean client at once.
    let (status, _, _) = get(&s.gw.asset_url(B), &[("accept", "image/evil")]).await;
    assert_eq!(status, 503);
    let (status, cs, body) = get(&s.gw.asset_url(B), &[]).await;
    assert_eq!((status, body.as_str()), (200, "fine"), "{cs}");
    assert_eq!(s.origin.requests_for(B), 2);
    // Oversized forwarded values never reach the origin.
    let huge = "x".repeat(9 * 1024);
    for (name, value) in [("accept", huge.as_str()), ("if-none-match", huge.as_str())] {
        let r = client()
            .get(s.gw.asset_url(C))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 431, "{name}");
        assert!(r.text().await.unwrap().starts_with("{\"error\":"));
    }
    assert_eq!(s.origin.requests_for(C), 0);
    // A route without cache forwards the whole chain, as before.
    let (_, _, _) = get(
        &s.gw.url(&format!("/content/v1/nocache/{C}")),
        &[("x-forwarded-for", "6.6.6.6")],
    )
    .await;
    let last = s.origin.asset_requests().pop().unwrap();
    assert_eq!(last.header("x-forwarded-for"), Some("6.6.6.6, 127.0.0.1"));
}

/// A 5xx that cannot be stored (`no-store`): the waiters take turns on the lock, never all at
/// the origin at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstorable_error_is_fetched_one_at_a_time() {
    let s = setup("", "").await;
    let flight = Arc::new(InFlight::default());
    let f = flight.clone();
    s.origin.set(
        A,
        script(move |_| {
            let f = f.clone();
            async move {
                f.enter();
                tokio::time::sleep(Duration::from_millis(100)).await;
                f.leave();
                let h = "cache-control: no-store\r\n".to_string();
                ("500 Internal Server Error".to_string(), h, b"err".to_vec())
            }
        }),
    );
    let answers = herd(&s.gw.asset_url(A), 10).await;
    assert_eq!(
        (
            flight.peak.load(Ordering::SeqCst),
            flight.total.load(Ordering::SeqCst)
        ),
        (1, 10),
        "(most at once, in all): an error stampeded"
    );
    for (status, cs, _) in answers {
        assert_eq!(status, 500);
        assert!(cs.contains("detail=upstream-5xx"), "{cs}");
    }
}

/// An error never replaces a stored object: after a 503 on a stale one, the next request
/// still finds that object (and revalidates it), not the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_does_not_replace_a_stored_object() {
    // Without the stale windows (issue 18), so the 503 reaches the client and the recovery
    // revalidates in the request itself.
    let s = setup("    stale_while_revalidate: 0s\n    stale_if_error: 0s", "").await;
    let failing = Arc::new(AtomicUsize::new(0));
    let f = failing.clone();
    s.origin.set(
        A,
        script(move |_| {
            let down = f.load(Ordering::SeqCst) == 1;
            async move {
                match down {
                    true => (
                        "503 Service Unavailable".to_string(),
                        String::new(),
                        b"down".to_vec(),
                    ),
                    false => (
                        "200 OK".to_string(),
                        "cache-control: max-age=1\r\n".to_string(),
                        b"good".to_vec(),
                    ),
                }
            }
        }),
    );
    let url = s.gw.asset_url(A);
    assert_eq!(get(&url, &[]).await.2, "good");
    settled(s.admin).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    failing.store(1, Ordering::SeqCst);
    assert_eq!(get(&url, &[]).await.0, 503);
    failing.store(0, Ordering::SeqCst);
    let (status, cs, body) = get(&url, &[]).await;
    assert_eq!((status, body.as_str()), (200, "good"), "{cs}");
    assert!(cs.contains("fwd=stale"), "{cs}");
}

/// `vary_accept: [image/avif, image/webp]`: an origin's `Vary: Accept` keys on the first of
/// those the client accepts, else "other"; browsers' many spellings make three objects, and
/// the origin gets that one type (or no Accept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_variants_collapse_to_the_configured_formats() {
    let s = setup("", "").await;
    s.origin.set(
        A,
        script(|seen: Seen| async move {
            let accept = seen.header("accept").unwrap_or("none").to_string();
            let h = "vary: Accept\r\ncache-control: max-age=600\r\n".to_string();
            ("200 OK".to_string(), h, format!("made for {accept}").into_bytes())
        }),
    );
    let url = s.gw.url(&format!("/content/v1/sized/{A}"));
    let browsers = [
        (
            "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
            "image/avif",
        ),
        ("image/avif,image/webp,*/*", "image/avif"),
        (
            "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5",
            "image/webp",
        ),
        ("image/webp,*/*", "image/webp"),
        ("image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5", "none"),
        ("image/jxl,*/*", "none"),
        ("*/*", "none"),
        ("image/avif;q=0,image/webp", "image/webp"),
    ];
    for (accept, made_for) in browsers {
        let (status, _, body) = get(&url, &[("accept", accept)]).await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("made for {made_for}"), "{accept}");
        settled(s.admin).await;
    }
    let seen: Vec<Option<String>> = s
        .origin
        .asset_requests()
        .iter()
        .map(|r| r.header("accept").map(str::to_string))
        .collect();
    assert_eq!(
        seen,
        [
            Some("image/avif".to_string()),
            Some("image/webp".to_string()),
            None
        ]
    );
}

/// `DELETE /cache/<route path with * for the id>` purges every asset of that route, and
/// nothing of another route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_purge_removes_every_asset_of_the_route() {
    let s = setup("", "").await;
    for id in [A, B, C] {
        s.origin.set_body(id, "x");
    }
    get(&s.gw.asset_url(A), &[]).await;
    get(&s.gw.asset_url(B), &[]).await;
    get(&s.gw.asset_url(B), &[("accept", "other")]).await;
    get(&s.gw.url(&format!("/content/v1/sized/{C}")), &[]).await;
    settled(s.admin).await;
    let (status, json) = admin_json(s.admin, reqwest::Method::DELETE, "/cache/content/v1/assets/*").await;
    assert_eq!(status, 200);
    assert_eq!(json, serde_json::json!({"purged": true, "assets": 2}));
    for id in [A, B] {
        let (_, cs, _) = get(&s.gw.asset_url(id), &[]).await;
        assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored", "{id} survived");
    }
    let (_, cs, _) = get(&s.gw.url(&format!("/content/v1/sized/{C}")), &[]).await;
    assert!(
        cs.starts_with("asset-gateway; hit"),
        "another route was purged: {cs}"
    );
    let (status, _) = admin_json(s.admin, reqwest::Method::DELETE, "/cache/content/v1/nope/*").await;
    assert_eq!(status, 404);
}

/// The optional access-log fields, and what `-t` says of a cached route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_user_agent_and_referer_in_the_access_log() {
    let s = setup("", "  access_log: {fields: [range, user_agent, referer]}").await;
    s.origin.set_body(A, "0123456789abcdef");
    let headers = [
        ("range", "bytes=0-9"),
        ("user-agent", "VLC/3.0.20 LibVLC/3.0.20"),
        ("referer", "https://player.example/watch?v=1"),
        ("x-request-id", "log-1"),
    ];
    let (status, _, body) = get(&s.gw.asset_url(A), &headers).await;
    assert_eq!((status, body.as_str()), (206, "0123456789"));
    let line = s.gw.access_line("log-1").await;
    assert!(
        line.contains(" range=\"bytes=0-9\" user_agent=\"VLC/3.0.20 LibVLC/3.0.20\" referer=\"https://player.example/watch?v=1\""),
        "{line}"
    );
    let (status, _, _) = get(&s.gw.asset_url(A), &[("x-request-id", "log-2")]).await;
    assert_eq!(status, 200);
    let line = s.gw.access_line("log-2").await;
    assert!(line.contains(" range=- user_agent=- referer=-"), "{line}");

    let (ok, out) = common::check_config(&std::fs::read_to_string(&s.gw.conf_path).unwrap());
    assert!(ok, "{out}");
    for want in [
        "route /content/v1/assets/{id} (cached):",
        "client headers forwarded: accept; plus the gateway's own: host, x-forwarded-for",
        "query forwarded and keyed: none (the client's query string is dropped)",
        "query forwarded and keyed: only w, fmt, sorted by name",
        "Vary: Accept keys on the first of image/avif, image/webp the client accepts",
        "route /content/v1/nocache/{id} (not cached): every client header",
        "warning: gateway.routes[0] (/content/v1/assets/{id}): a cached route forwards Accept without vary_accept",
    ] {
        assert!(out.contains(want), "-t does not say {want:?}:\n{out}");
    }
    assert_eq!(
        out.matches("forwards Accept without vary_accept").count(),
        1,
        "{out}"
    );
}

/// A gateway process with an admin listener and a disk tier, for the fleet purge.
async fn replica(origin: &Origin) -> (Gateway, SocketAddr, std::path::PathBuf) {
    let [listen, admin] = free_addrs();
    let disk = common::temp_dir();
    let yaml = format!(
        r#"threads: 1
gateway:
  listen: ["{{listen}}"]
  admin: "{admin}"
  cache:
    memory: 16MiB
    disk: {{path: "{}", size: 16MiB}}
  upstreams:
    assets:
      peers: ["{}"]
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
"#,
        disk.display(),
        origin.addr
    );
    let gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(admin);
    (gw, admin, disk)
}

fn objects_on_disk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "obj"))
        .count()
}

/// Runs `asset-gateway purge` with `args`; its exit success and stdout.
fn purge(args: &[&str], token: Option<&str>) -> (bool, String) {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("purge").args(args).env_remove("ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("ADMIN_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (
        out.status.success(),
        format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// `asset-gateway purge --admin <list> <path>` against three gateway processes leaves no copy
/// in any of them (memory and disk); each replica's answer is printed. A replica that does
/// not answer makes it exit non-zero; `ADMIN_TOKEN` is sent as a bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_purge_leaves_no_copy_on_any_replica() {
    let origin = Origin::start().await;
    origin.set_body(A, "takedown");
    origin.set_body(B, "keep");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&origin).await);
    }
    for (gw, admin, dir) in &replicas {
        for id in [A, B] {
            assert_eq!(get(&gw.asset_url(id), &[]).await.0, 200);
        }
        settled(*admin).await;
        assert_eq!(objects_on_disk(dir), 2);
    }
    assert_eq!(origin.requests_for(A), 3);
    let list = replicas
        .iter()
        .map(|(_, admin, _)| admin.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let (ok, out) = purge(&["--admin", &list, &format!("/content/v1/assets/{A}")], None);
    for (gw, admin, dir) in &replicas {
        let (_, json) = admin_json(*admin, reqwest::Method::GET, "/cache").await;
        assert_eq!(json["memory"]["objects"], 1, "{json}");
        assert_eq!(json["disk"]["objects"], 1, "{json}");
        assert_eq!(objects_on_disk(dir), 1);
        let (_, cs, _) = get(&gw.asset_url(A), &[]).await;
        assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored", "a copy survived");
        let (_, cs, _) = get(&gw.asset_url(B), &[]).await;
        assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    }
    assert_eq!(origin.requests_for(A), 6);
    assert!(ok, "{out}");
    for (_, admin, _) in &replicas {
        assert!(
            out.contains(&format!("{admin}: 200 {{\"purged\":true}}")),
            "{out}"
        );
    }

    // A replica that is gone: reported, and the exit status says so.
    // Bound and not listening: a port merely released could be taken by another test's gateway.
    let dead = common::dead_peer();
    let gone = dead.addr;
    let with_gone = format!("{list},{gone}");
    let (ok, out) = purge(&["--admin", &with_gone, "/content/v1/assets/*"], None);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("{gone}: failed:")), "{out}");
    assert_eq!(
        out.matches("200 {\"purged\":true,\"assets\":").count(),
        3,
        "{out}"
    );

    // The token, sent to whatever answers (here an origin standing in for an admin listener,
    // which answers 404: a failure too).
    let fake = Origin::start().await;
    let (ok, out) = purge(
        &[
            "--admin",
            &fake.addr.to_string(),
            &format!("/content/v1/assets/{A}"),
        ],
        Some("s3cret"),
    );
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("{}: 404 not found", fake.addr)), "{out}");
    let seen = &fake.requests()[0];
    assert_eq!(seen.method, "DELETE");
    assert_eq!(seen.target, format!("/cache/content/v1/assets/{A}"));
    assert_eq!(seen.header("authorization"), Some("Bearer s3cret"));
    for (_, _, dir) in &replicas {
        let _ = std::fs::remove_dir_all(dir);
    }
}
