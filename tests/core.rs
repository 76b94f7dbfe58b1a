//! The core gateway: streaming, backpressure, connection reuse, byte-exactness, request and
//! response rewriting, and every bad-input case. Real gateway process, real origin, real
//! client.

mod common;

use common::origin::{pattern, Behavior, Origin};
use common::{client, raw_exchange, simple_config, End, Gateway, RawConn, EVENTUALLY, ID};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

async fn setup() -> (Origin, Gateway) {
    let origin = Origin::start().await;
    let gw = Gateway::start(&simple_config(&[origin.addr], ""));
    (origin, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_arrive_while_the_origin_is_still_held() {
    let (origin, gw) = setup().await;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    let first = 64 * 1024;
    let total = 1024 * 1024;
    origin.set(
        ID,
        Behavior::HoldAfter {
            first,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );

    let mut resp = client().get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    while got.len() < first {
        let chunk = tokio::time::timeout(EVENTUALLY, resp.chunk())
            .await
            .expect("first bytes never arrived");
        got.extend_from_slice(&chunk.unwrap().expect("body ended early"));
    }
    // The client holds the first 64 KiB while the origin has not sent another byte.
    assert!(
        held.load(Ordering::SeqCst),
        "origin was released before the client saw the first bytes"
    );
    assert_eq!(got.len(), first);
    assert_eq!(got, pattern(0..first as u64));

    release.notify_one();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, pattern(0..total as u64));
}

/// Even a tiny first piece of body goes out at once: nothing waits to fill a buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_first_piece_is_not_held_back() {
    let (origin, gw) = setup().await;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    origin.set(
        ID,
        Behavior::HoldAfter {
            first: 100,
            total: 1000,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(format!("GET /content/v1/assets/{ID} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let mut got = Vec::new();
    while !got.ends_with(&pattern(0..100)) {
        let chunk = conn.read_chunk().await.expect("the first 100 bytes never came");
        got.extend_from_slice(&chunk);
    }
    assert!(
        held.load(Ordering::SeqCst),
        "origin was released before the client saw the first bytes"
    );
    // And they came because they were sent, not because something gave up and flushed: the
    // rest of the body follows on the same response.
    release.notify_one();
    while got.len() < 1000 + got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4 {
        got.extend_from_slice(&conn.read_chunk().await.expect("the response was cut"));
    }
    assert!(got.ends_with(&pattern(0..1000)));
}

/// A client that stops reading stops the gateway reading the origin: the gateway holds at most
/// about `(2 * queue_depth + 3) * read_size` of the response (112 KiB with the defaults;
/// README, `streaming.queue_depth`), counted in bytes the origin wrote less what the kernel's
/// socket buffers hold. Other `streaming` values change that bound (Pingora's own 64 KiB reads
/// and 4 queued reads: about 704 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_back_the_origin() {
    let held = held_for_a_stalled_client("").await;
    assert!(
        held <= 112 * 1024,
        "the gateway holds {held} bytes of a response its client does not read (112 KiB expected)"
    );
    // 64 KiB reads, 32 queued: more is held than Pingora's queue of 4 can hold at most with
    // the same reads, (2 * 4 + 3) * 64 KiB = 704 KiB, and no more than the formula's bound for
    // 32, (2 * 32 + 3) * 64 KiB. Measured (debug build): 1.6-2.7 MB held with 32 queued,
    // 272-553 KB with the queue capped at 4: the formula is a ceiling, well above what is
    // held (with 16 queued, 825 KB-1.2 MB: too close to what 4 holds to tell them apart).
    let held = held_for_a_stalled_client("  streaming: {read_size: 64KiB, queue_depth: 32}\n").await;
    assert!(
        held > (2 * 4 + 3) * 64 * 1024,
        "with 64 KiB reads and 32 queued the gateway holds only {held} bytes, no more than a queue of 4 can: the settings are not applied"
    );
    assert!(
        held <= (2 * 32 + 3) * 64 * 1024,
        "with 64 KiB reads and 32 queued the gateway holds {held} bytes, over (2 * 32 + 3) * 64 KiB"
    );
}

/// What the gateway holds of a 256 MiB download whose client stops reading after the first
/// read, `gateway_extra` going under `gateway:`. Reading again then resumes the flow.
async fn held_for_a_stalled_client(gateway_extra: &str) -> u64 {
    let origin = Origin::start().await;
    let yaml =
        simple_config(&[origin.addr], "").replace("  upstreams:", &format!("{gateway_extra}  upstreams:"));
    let gw = Gateway::start(&yaml);
    let size: u64 = 256 * 1024 * 1024;
    origin.set(ID, Behavior::Generated { size });

    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let mut conn = sock.connect(gw.addr).await.unwrap();
    conn.write_all(format!("GET /content/v1/assets/{ID} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = conn.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let head = buf[..n].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;

    // Stop reading.
    let held = common::held_by_gateway(&origin, gw.addr.port(), (n - head) as u64).await;
    let written = origin.body_bytes_written();
    assert!(written < size, "the whole body was written");

    // Reading again resumes the flow: the stream is alive, only held back.
    let mut more = 0u64;
    while more < 8 * 1024 * 1024 {
        let n = tokio::time::timeout(EVENTUALLY, conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        more += n as u64;
    }
    assert!(origin.body_bytes_written() > written);
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_pooled_upstream_connections() {
    let (origin, gw) = setup().await;
    origin.set_body(ID, vec![7u8; 8192]);
    let c = client();
    for _ in 0..100 {
        let r = c.get(gw.asset_url(ID)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 8192);
    }
    let opened = origin.connections();
    eprintln!("100 sequential requests opened {opened} upstream connection(s)");
    assert!(opened <= 2, "opened {opened} upstream connections");
    let reused = gw
        .wait_access_lines(100)
        .await
        .iter()
        .filter(|l| l.contains("reused=true"))
        .count();
    assert!(reused >= 98, "access log shows {reused} reused connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_arrive_byte_for_byte() {
    let (origin, gw) = setup().await;
    let c = client();
    for (i, size) in [0usize, 1, 8 * 1024, 5 * 1024 * 1024].into_iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-00000000000{i}");
        let body: Vec<u8> = pattern(0..size as u64).into_iter().map(|b| b ^ i as u8).collect();
        origin.set_body(&id, body.clone());
        let r = c.get(gw.asset_url(&id)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-length"], size.to_string().as_str());
        let got = r.bytes().await.unwrap();
        assert!(got == body, "body of {size} bytes differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_conditional_and_head_pass_through() {
    let (origin, gw) = setup().await;
    let body = pattern(0..100_000);
    origin.set_body(ID, body.clone());
    let c = client();

    let r = c
        .get(gw.asset_url(ID))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/100000");
    assert_eq!(&r.bytes().await.unwrap()[..], &body[1000..2000]);

    let full = c.get(gw.asset_url(ID)).send().await.unwrap();
    let etag = full.headers()["etag"].clone();
    let r = c
        .get(gw.asset_url(ID))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());

    let r = c.head(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert!(r.bytes().await.unwrap().is_empty());

    let seen = origin.asset_requests();
    assert_eq!(seen[0].header("range"), Some("bytes=1000-1999"));
    assert!(seen[2].header("if-none-match").is_some());
    assert_eq!(seen[3].method, "HEAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_request_is_rewritten_and_annotated() {
    let (origin, gw) = setup().await;
    origin.set_body(ID, "x");
    let c = client();
    let upper = ID.to_uppercase();
    let r = c
        .get(gw.url(&format!("/content/v1/assets/{upper}?w=200&fmt=webp")))
        .header("x-request-id", "client-id-1")
        .header("x-forwarded-for", "203.0.113.9")
        .header("accept", "image/avif,image/webp")
        .header("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("upgrade", "websocket")
        .header("proxy-connection", "keep-alive")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-id-1");

    let seen = &origin.asset_requests()[0];
    assert_eq!(seen.target, format!("/v1/assets/{ID}?w=200&fmt=webp"));
    assert_eq!(seen.header("host"), Some("assets.internal"));
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-request-id"), Some("client-id-1"));
    assert_eq!(seen.header("accept"), Some("image/avif,image/webp"));
    assert_eq!(
        seen.header("if-modified-since"),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
    for hop in ["x-private", "keep-alive", "te", "upgrade", "proxy-connection"] {
        assert_eq!(seen.header(hop), None, "{hop} reached the upstream");
    }
    assert_ne!(
        seen.header("connection").map(str::to_ascii_lowercase).as_deref(),
        Some("keep-alive, x-private")
    );

    // An insane request id is replaced by a fresh UUID, the same one upstream and back.
    let r = c
        .get(gw.asset_url(ID))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let echoed = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
    assert_eq!(
        origin.asset_requests()[1].header("x-request-id"),
        Some(echoed.as_str())
    );

    // The thumbs route drops the query string.
    c.get(gw.url(&format!("/content/v1/thumbs/{ID}?evil=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(origin.asset_requests()[2].target, format!("/v1/thumbs/{ID}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_passes_through_except_hop_by_hop() {
    let (origin, gw) = setup().await;
    origin.set_body(ID, "img");
    origin.set(
        "11111111-1111-1111-1111-111111111111",
        Behavior::Status {
            status: 404,
            body: "gone",
        },
    );
    let c = client();
    let r = c.get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["cache-control"], "public, max-age=3600");
    assert_eq!(r.headers()["x-origin"], "test");
    assert!(r.headers().contains_key("etag"));
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.text().await.unwrap(), "img");

    let r = c
        .get(gw.asset_url("11111111-1111-1111-1111-111111111111"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the origin's 404 must stay a 404");
    assert_eq!(r.text().await.unwrap(), "gone");
}

/// Each case: the gateway answers itself, with the expected status and JSON, and the origin
/// sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_answered_by_the_gateway_and_never_reach_the_origin() {
    let (origin, gw) = setup().await;
    origin.set_body(ID, "x");
    let c = client();
    let cases: Vec<(reqwest::Method, String, u16)> = vec![
        (reqwest::Method::GET, "/content/v1/assets/not-a-uuid".into(), 400),
        (
            reqwest::Method::GET,
            "/content/v1/assets/3f1c2a7e9b4d4e8a8c215d6f7a8b9c0d".into(),
            400,
        ),
        (
            reqwest::Method::GET,
            format!("/content/v1/assets/{ID}%2F..%2Fsecret"),
            400,
        ),
        (reqwest::Method::GET, format!("/content/v1/assets/{ID}/"), 404),
        (reqwest::Method::GET, format!("/content/v1/assets//{ID}"), 404),
        (reqwest::Method::GET, format!("/content/v1/assets%2F{ID}"), 404),
        (reqwest::Method::GET, "/".into(), 404),
        (reqwest::Method::GET, "/metrics".into(), 404),
        (reqwest::Method::GET, "/healthz".into(), 404),
        (reqwest::Method::GET, "/readyz".into(), 404),
        (reqwest::Method::POST, format!("/content/v1/assets/{ID}"), 405),
        (reqwest::Method::DELETE, format!("/content/v1/assets/{ID}"), 405),
        (reqwest::Method::OPTIONS, format!("/content/v1/assets/{ID}"), 405),
    ];
    for (method, path, status) in cases {
        let r = c.request(method.clone(), gw.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        if status == 405 {
            assert_eq!(r.headers()["allow"], "GET, HEAD");
        }
        assert_eq!(r.headers()["content-type"], "application/json");
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let body = r.text().await.unwrap();
        assert!(body.starts_with("{\"error\":\""), "{body}");
        assert!(body.contains(&format!("\"request_id\":\"{rid}\"")), "{body}");
    }

    // Dot segments and encoded slashes sent raw (a client library would normalise them).
    for target in [
        format!("/content/v1/assets/../../v1/assets/{ID}"),
        format!("/content/v1/assets/./{ID}"),
        format!("/content/v1/assets/x/../{ID}"),
        format!("/content/v1/assets/%2e%2e/{ID}"),
        "/content/v1/assets/..%2f..%2fetc%2fpasswd".to_string(),
    ] {
        let (resp, end) = raw_exchange(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            EVENTUALLY,
        )
        .await;
        let text = String::from_utf8_lossy(&resp);
        assert!(
            text.starts_with("HTTP/1.1 404") || text.starts_with("HTTP/1.1 400"),
            "{target}: {text}"
        );
        assert_eq!(end, End::Closed, "{target}: Connection: close was not honoured");
    }

    // A GET with a body is refused, and the connection is closed rather than reused.
    let (resp, end) = raw_exchange(
        gw.addr,
        format!("GET /content/v1/assets/{ID} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .as_bytes(),
        EVENTUALLY,
    )
    .await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    assert_eq!(end, End::Closed, "the connection was kept: {text}");

    assert!(
        origin.asset_requests().is_empty(),
        "origin saw: {:?}",
        origin.asset_requests()
    );
    assert_eq!(origin.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_keep_the_client_connection_usable() {
    let (origin, gw) = setup().await;
    origin.set_body(ID, "ok");
    let mut conn = RawConn::connect(gw.addr).await;
    for (request, status) in [
        ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 404),
        (
            "GET /content/v1/assets/bad HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            400,
        ),
        (
            format!("DELETE /content/v1/assets/{ID} HTTP/1.1\r\nHost: x\r\n\r\n"),
            405,
        ),
        (
            "HEAD /content/v1/assets/bad HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            400,
        ),
        (
            format!("GET /content/v1/assets/{ID} HTTP/1.1\r\nHost: x\r\n\r\n"),
            200,
        ),
    ] {
        conn.send(request.as_bytes()).await;
        let r = conn
            .response(request.starts_with("HEAD"))
            .await
            .expect("connection closed");
        assert_eq!(r.status, status, "{request}");
        assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_gives_502_json() {
    let dead = common::dead_peer();
    let gw = Gateway::start(&simple_config(&[dead.addr], ""));
    let r = client().get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = r.text().await.unwrap();
    assert!(body.contains("\"error\":\"upstream unreachable\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_line_per_request_with_its_fields() {
    let (origin, gw) = setup().await;
    origin.set_body(ID, vec![1u8; 1234]);
    gw.fetch(ID, "trace-77").await;
    let line = gw.wait_for_log(|l| l.contains("request_id=trace-77")).await;
    for field in [
        "INFO",
        "client=127.0.0.1:",
        "method=GET",
        &format!("path=\"/content/v1/assets/{ID}\""),
        "status=200",
        "bytes=1234",
        &format!("upstream={}", origin.addr),
        "reused=false",
        "ttfb_ms=",
        "total_ms=",
    ] {
        assert!(line.contains(field), "missing {field} in {line}");
    }
    assert_eq!(gw.access_lines().len(), 1);
}

/// A kept-alive connection serves the next request, and once idle for `keepalive_timeout` the
/// gateway closes it (Pingora alone keeps it forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed_after_the_keepalive_timeout() {
    let origin = Origin::start().await;
    origin.set_body(ID, "x");
    let yaml = simple_config(&[origin.addr], "").replace(
        "  upstreams:",
        "  downstream:\n    keepalive_timeout: 2s\n  upstreams:",
    );
    let gw = Gateway::start(&yaml);
    let mut conn = RawConn::connect(gw.addr).await;
    let request = format!("GET /content/v1/assets/{ID} HTTP/1.1\r\nHost: x\r\n\r\n");
    for _ in 0..3 {
        conn.send(request.as_bytes()).await;
        let r = conn.response(false).await.expect("the connection was not kept");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"x"[..]));
        assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    }
    assert_eq!(origin.asset_requests().len(), 3);
    // Idle now: the gateway must close the connection on its own.
    assert!(
        conn.closed_by_server().await,
        "the idle connection was never closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_headers_are_added_from_the_environment_and_never_logged() {
    std::env::set_var("AG_CORE_TEST_TOKEN", "tok-5ecret-value");
    let origin = Origin::start().await;
    origin.set_body(ID, "x");
    let gw = Gateway::start(&simple_config(
        &[origin.addr],
        "      headers:\n        Authorization: \"Bearer ${AG_CORE_TEST_TOKEN}\"\n",
    ));
    let r = client()
        .get(gw.asset_url(ID))
        .header("authorization", "client-supplied")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let seen = &origin.asset_requests()[0];
    assert_eq!(seen.header("authorization"), Some("Bearer tok-5ecret-value"));
    gw.wait_for_log(|l| l.contains(" access] ")).await;
    assert!(
        gw.logs().iter().all(|l| !l.contains("5ecret")),
        "a secret reached the log"
    );
}
