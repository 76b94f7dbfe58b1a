//! HTTP conformance, second round: what outside testing (third-party clients, a misbehaving
//! origin) found. Raw sockets where the bytes matter; each case also checks that what the
//! gateway refuses never reaches the origin.

mod common;

use common::origin::{After, Behavior, Origin};
use common::{raw_exchange, read_to_end_blocking, wait_listening, End, Gateway, RawConn, EVENTUALLY, ID};
use std::io::Write;
use std::time::{Duration, Instant};

const OTHER: &str = "0b3e8b1c-2f4d-4c6e-9a1b-7d2e5f8a9c30";

async fn setup(extra_gateway: &str, upstream_extra: &str) -> (Origin, Gateway) {
    common::origin_and_gateway(&[(ID, "first"), (OTHER, "second")], extra_gateway, upstream_extra).await
}

fn raw(bytes: &str, after: After) -> Behavior {
    Behavior::Raw {
        bytes: bytes.to_string().into(),
        after,
    }
}

fn get(id: &str, extra_headers: &str) -> String {
    format!("GET /content/v1/assets/{id} HTTP/1.1\r\nHost: gw\r\n{extra_headers}\r\n")
}

/// Sends one request on a new connection; returns the response and the connection.
async fn exchange(gw: &Gateway, request: &str) -> (common::RawResponse, RawConn) {
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(request.as_bytes()).await;
    let r = conn
        .response(request.starts_with("HEAD "))
        .await
        .expect("no response");
    (r, conn)
}

async fn normal_request_succeeds(gw: &Gateway) {
    common::assert_serves(gw, ID, "first").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_with_underscores_never_reach_the_origin() {
    let (origin, gw) = setup("", "").await;
    let (r, _) = exchange(
        &gw,
        &get(
            ID,
            "X_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX-Request_Id: spoof\r\nX-Kept: yes\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = &origin.asset_requests()[0];
    let names: Vec<&str> = seen.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().all(|n| !n.contains('_')), "{names:?}");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let (origin, gw) = setup("", "").await;
    let mut conn = RawConn::connect(gw.addr).await;
    // Four requests in one write: an asset, an unmatched path (the gateway's own answer), a
    // HEAD and another asset.
    let batch = [
        get(ID, ""),
        "GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n".to_string(),
        format!("HEAD /content/v1/assets/{OTHER} HTTP/1.1\r\nHost: gw\r\n\r\n"),
        get(OTHER, ""),
    ]
    .concat();
    conn.send(batch.as_bytes()).await;
    let expected = [
        (200, false, "first"),
        (404, false, ""),
        (200, true, ""),
        (200, false, "second"),
    ];
    for (i, (status, head, body)) in expected.into_iter().enumerate() {
        let r = conn
            .response(head)
            .await
            .unwrap_or_else(|e| panic!("response {i} missing: {e:?}"));
        assert_eq!(r.status, status, "response {i}: {}", r.head);
        assert_eq!(
            r.header("connection").as_deref(),
            Some("keep-alive"),
            "response {i}"
        );
        if status == 200 {
            assert_eq!(String::from_utf8_lossy(&r.body), body, "response {i}");
        }
    }
    // A request split across writes, right behind a complete one.
    let next = get(ID, "");
    let (a, b) = next.split_at(20);
    conn.send(format!("{}{a}", get(OTHER, "")).as_bytes()).await;
    assert_eq!(conn.response(false).await.unwrap().body, b"second");
    conn.send(b.as_bytes()).await;
    assert_eq!(conn.response(false).await.unwrap().body, b"first");
    assert_eq!(origin.asset_requests().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_no_chunked_body_and_no_1xx() {
    let (origin, gw) = setup("", "").await;
    let chunked = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    origin.set(ID, raw(chunked, After::Serve));
    let early = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    origin.set(OTHER, raw(early, After::Serve));

    let one_zero =
        |id: &str| format!("GET /content/v1/assets/{id} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(one_zero(ID).as_bytes()).await;
    let (out, end) = conn.read_to_close().await;
    assert_eq!(
        end,
        End::Closed,
        "a close-delimited body must end with the connection"
    );
    let out = String::from_utf8(out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(
        body, "hello world",
        "the body must be the bare bytes, closed by the server"
    );

    // The first response an HTTP/1.0 client reads is the final one, not the 103.
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(one_zero(OTHER).as_bytes()).await;
    let r = conn.response(false).await.unwrap();
    assert_eq!(r.status, 200, "an HTTP/1.0 client got: {}", r.head);
    assert!(r.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", r.head);
    assert_eq!(r.body, b"hello");

    // HTTP/1.1 clients still get the chunked body and the early hints.
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(get(OTHER, "").as_bytes()).await;
    let hints = conn.response(false).await.unwrap();
    assert_eq!(hints.status, 103);
    assert_eq!(conn.response(false).await.unwrap().body, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_named_in_connection_are_removed_before_any_upstream_work() {
    let (origin, gw) = setup("", "").await;
    let mut conn = RawConn::connect(gw.addr).await;
    for i in 0..50 {
        let extra = if i % 2 == 0 {
            "Connection: Host, X-Custom\r\nX-Custom: 1\r\n"
        } else {
            "Connection: keep-alive, X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\n"
        };
        conn.send(get(ID, extra).as_bytes()).await;
        let r = conn.response(false).await.expect("response");
        assert_eq!(r.status, 200, "request {i}: {}", r.head);
        assert_eq!(r.body, b"first");
    }
    assert_eq!(origin.connections(), 1, "requests cost upstream connections");
    for seen in origin.asset_requests() {
        assert_eq!(seen.header("x-custom"), None);
        assert_eq!(seen.header("connection"), None);
        assert_eq!(seen.header("host"), Some("assets.internal"));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    }
    // A body stays framed even when the client names the framing header.
    let (r, mut conn) = exchange(
        &gw,
        &format!(
            "{}hello",
            get(ID, "Connection: content-length\r\nContent-Length: 5\r\n")
        ),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(conn.closed_by_server().await);
    assert_eq!(origin.asset_requests().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_mapped_back_and_never_show_a_peer() {
    let (origin, gw) = setup("", "").await;
    let peer = origin.addr.to_string();
    let cases = [
        (
            format!("http://{peer}/v1/assets/{OTHER}"),
            format!("/content/v1/assets/{OTHER}"),
        ),
        (
            format!("http://assets.internal/v1/thumbs/{OTHER}"),
            format!("/content/v1/thumbs/{OTHER}"),
        ),
        (
            format!("/v1/assets/{OTHER}?v=2"),
            format!("/content/v1/assets/{OTHER}?v=2"),
        ),
        (format!("http://{peer}/login?next=1"), "/login?next=1".to_string()),
        (
            "https://cdn.example.com/a.jpg".to_string(),
            "https://cdn.example.com/a.jpg".to_string(),
        ),
    ];
    for (i, (location, expected)) in cases.iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-00000000000{i}");
        origin.set(
            &id,
            raw(
                &format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Location: {location}\r\nContent-Length: 0\r\n\r\n"),
                After::Serve,
            ),
        );
        let (r, _) = exchange(&gw, &get(&id, "")).await;
        assert_eq!(r.status, 302);
        assert_eq!(
            r.header("location").as_deref(),
            Some(expected.as_str()),
            "{location}"
        );
        assert_eq!(r.header("content-location").as_deref(), Some(expected.as_str()));
        assert!(
            !r.head.contains(&peer),
            "a peer address reached the client:\n{}",
            r.head
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsolicited_101_is_a_502_and_nothing_of_it_is_relayed() {
    let (origin, gw) = setup("", "").await;
    origin.set(
        OTHER,
        raw(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW-ORIGIN-BYTES",
            After::Hold,
        ),
    );
    let (out, end) = raw_exchange(gw.addr, get(OTHER, "").as_bytes(), EVENTUALLY).await;
    let out = String::from_utf8_lossy(&out);
    // Everything the connection carried was read: the gateway closed it after its 502.
    assert_eq!(end, End::Closed, "{out}");
    assert!(out.starts_with("HTTP/1.1 502 "), "{out}");
    assert!(out.contains("application/json"), "{out}");
    assert!(
        !out.contains("RAW-ORIGIN-BYTES") && !out.contains(" 101 "),
        "{out}"
    );
    normal_request_succeeds(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_content_length_from_the_origin_is_sent_once() {
    let (origin, gw) = setup("", "").await;
    origin.set(
        OTHER,
        raw(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            After::Serve,
        ),
    );
    let (r, mut conn) = exchange(&gw, &get(OTHER, "")).await;
    assert_eq!(r.status, 200);
    let lengths = r
        .head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
        .count();
    assert_eq!(lengths, 1, "{}", r.head);
    assert_eq!(r.body, b"hello");
    // The connection goes on.
    conn.send(get(ID, "").as_bytes()).await;
    assert_eq!(conn.response(false).await.unwrap().body, b"first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_requests_need_a_valid_host() {
    let (origin, gw) = setup("", "").await;
    let path = format!("/content/v1/assets/{ID}");
    for (name, request) in [
        ("no Host", format!("GET {path} HTTP/1.1\r\n\r\n")),
        ("empty Host", format!("GET {path} HTTP/1.1\r\nHost:\r\n\r\n")),
        (
            "Host with a space",
            format!("GET {path} HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ),
        (
            "Host with a bad port",
            format!("GET {path} HTTP/1.1\r\nHost: a:http\r\n\r\n"),
        ),
        (
            "Host with a path",
            format!("GET {path} HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        ),
    ] {
        let (r, mut conn) = exchange(&gw, &request).await;
        assert_eq!(r.status, 400, "{name}: {}", r.head);
        assert!(String::from_utf8_lossy(&r.body).contains("Host"), "{name}");
        assert!(conn.closed_by_server().await, "{name}");
    }
    assert!(origin.asset_requests().is_empty());
    // HTTP/1.0 may leave Host out (and without keep-alive, the answer ends with the close).
    let (out, end) = raw_exchange(
        gw.addr,
        format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes(),
        EVENTUALLY,
    )
    .await;
    assert!(
        out.starts_with(b"HTTP/1.1 200 OK") && out.ends_with(b"first"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(end, End::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_the_main_listeners_protections() {
    let origin = Origin::start().await;
    let [listen, admin] = common::free_addrs();
    let yaml = common::simple_config(&[origin.addr], "").replace(
        "  upstreams:",
        &format!("  admin: \"{admin}\"\n  downstream: {{header_timeout: 1s, keepalive_timeout: 1s, max_headers: 20}}\n  upstreams:"),
    );
    let _gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(admin);

    // A head sent a byte at a time is cut off.
    let request = b"GET /metrics HTTP/1.1\r\nHost: admin\r\nX-Slow: yes\r\n\r\n";
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    let start = Instant::now();
    let mut sent = 0;
    for b in request {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(&[*b]).is_err() {
            break;
        }
        sent += 1;
        assert!(start.elapsed() < EVENTUALLY);
    }
    assert_eq!(
        read_to_end_blocking(&mut s),
        (Vec::new(), End::Closed),
        "the slow client was not cut off"
    );
    assert!(sent < request.len(), "the whole slow head got through");

    // Header limits.
    let many: String = (0..30).map(|i| format!("X-{i}: v\r\n")).collect();
    let mut conn = RawConn::connect(admin).await;
    conn.send(format!("GET /metrics HTTP/1.1\r\nHost: admin\r\n{many}\r\n").as_bytes())
        .await;
    assert_eq!(conn.response(false).await.unwrap().status, 431);
    assert!(conn.closed_by_server().await);

    // The client's `Connection: close` is honoured, and an idle connection is closed.
    let mut conn = RawConn::connect(admin).await;
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await;
    let r = conn.response(false).await.unwrap();
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(conn.closed_by_server().await);
    let mut conn = RawConn::connect(admin).await;
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await;
    assert_eq!(conn.response(false).await.unwrap().status, 200);
    assert!(
        conn.closed_by_server().await,
        "an idle admin connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_behave_as_documented() {
    let (origin, gw) = setup("", "").await;
    // 64 KiB and more cannot be parsed by Pingora (it would answer a plain 400): the
    // connection wrapper answers 414 with the JSON body however long the target is, then
    // closes. 70 KB here.
    let huge = format!(
        "GET /content/v1/assets/{ID}?{} HTTP/1.1\r\nHost: gw\r\n\r\n",
        "q".repeat(70_000)
    );
    let (out, end) = raw_exchange(gw.addr, huge.as_bytes(), EVENTUALLY).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 414 "),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        text.contains("\r\n\r\n{\"error\":\"the request target is too long\",\"request_id\":\""),
        "{text}"
    );
    assert_eq!(end, End::Closed);
    // `"`, `<`, `>` in the target: 400 from Pingora's parser.
    for q in ["a=\"x\"", "a=<x>"] {
        let (out, end) = raw_exchange(gw.addr, get(&format!("{ID}?{q}"), "").as_bytes(), EVENTUALLY).await;
        assert!(out.starts_with(b"HTTP/1.1 400 "), "{q}");
        assert_eq!(end, End::Closed, "{q}");
    }
    // Absolute form whose authority differs from Host: 400 (Pingora refuses the ambiguity).
    let mismatch = format!("GET http://other.example/content/v1/assets/{ID} HTTP/1.1\r\nHost: gw\r\n\r\n");
    let (out, end) = raw_exchange(gw.addr, mismatch.as_bytes(), EVENTUALLY).await;
    assert!(out.starts_with(b"HTTP/1.1 400 "));
    assert_eq!(end, End::Closed);
    assert!(origin.asset_requests().is_empty());

    // A space is percent-encoded and forwarded in the query.
    let (r, _) = exchange(&gw, &get(&format!("{ID}?a=b c"), "")).await;
    assert_eq!(r.status, 200);
    // Absolute form that agrees with Host is served like origin form.
    let (r, _) = exchange(
        &gw,
        &format!("GET http://gw/content/v1/assets/{ID}?x=1 HTTP/1.1\r\nHost: gw\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 200);
    let targets: Vec<String> = origin.asset_requests().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        [format!("/v1/assets/{ID}?a=b%20c"), format!("/v1/assets/{ID}?x=1")]
    );
    // Pipelined behind a short request, in the same write: the short one is answered, then
    // the long one gets the wrapper's 414 (not Pingora's plain 400), then the close.
    let short = format!("GET /content/v1/assets/{ID} HTTP/1.1\r\nHost: gw\r\n\r\n");
    let both = format!("{short}{huge}");
    let (out, end) = raw_exchange(gw.addr, both.as_bytes(), EVENTUALLY).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200 "),
        "{}",
        &text[..text.len().min(300)]
    );
    let second = text
        .find("HTTP/1.1 414 ")
        .unwrap_or_else(|| panic!("no 414: {text}"));
    assert!(second > 0 && !text.contains("HTTP/1.1 400 "), "{text}");
    assert!(
        text[second..].contains("{\"error\":\"the request target is too long\""),
        "{text}"
    );
    assert_eq!(end, End::Closed);
    // The same when the long one arrives while the first response is under way (the origin
    // holds its answer): the 414 waits for it, it is not written into it.
    const SLOW: &str = "0b3e8b1c-2f4d-4c6e-9a1b-7d2e5f8a9c31";
    origin.set(
        SLOW,
        Behavior::Scripted(std::sync::Arc::new(|_| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                ("200 OK".to_string(), String::new(), b"slow".to_vec())
            })
        })),
    );
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(get(SLOW, "").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.send(huge.as_bytes()).await;
    let (out, end) = conn.read_to_close().await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200 "),
        "{}",
        &text[..text.len().min(300)]
    );
    let (first, rest) = text
        .split_once("HTTP/1.1 414 ")
        .unwrap_or_else(|| panic!("no 414: {text}"));
    assert!(
        first.ends_with("slow"),
        "the 414 cut into the first answer: {first}"
    );
    assert!(rest.contains("the request target is too long"), "{rest}");
    assert_eq!(end, End::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_logged_as_the_client() {
    let (origin, gw) = setup("", "").await;
    let big = "00000000-0000-4000-8000-0000000000b1";
    origin.set(
        big,
        Behavior::Generated {
            size: 256 * 1024 * 1024,
        },
    );
    {
        let mut conn = RawConn::connect(gw.addr).await;
        conn.send(get(big, "X-Request-Id: leaver\r\n").as_bytes()).await;
        let mut got = 0;
        while got < 1024 * 1024 {
            got += conn.read_chunk().await.expect("body").len();
        }
    }
    let line = gw.access_line("leaver").await;
    assert!(
        line.contains("error=\"client closed the connection: Downstream"),
        "{line}"
    );
    assert!(
        !line.contains("peer:"),
        "the client's failure names the peer: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_lines_end_the_response_at_once() {
    // The read timeout is an hour: only spotting the bad framing can end these responses.
    let (origin, gw) = setup("", "      read_timeout: 1h\n").await;
    let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (i, body) in [
        "5\nhello\n0\n\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("00000000-0000-4000-8000-0000000000c{i}");
        origin.set(&id, raw(&format!("{head}{body}"), After::Hold));
        let mut conn = RawConn::connect(gw.addr).await;
        conn.send(get(&id, "").as_bytes()).await;
        let (out, end) = conn.read_to_close().await;
        let out = String::from_utf8_lossy(&out);
        assert_eq!(end, End::Closed, "{body:?}: the response never ended: {out}");
        assert!(out.starts_with("HTTP/1.1 200 "), "{body:?}: {out}");
        assert!(
            !out.ends_with("0\r\n\r\n"),
            "{body:?}: the response looks complete: {out}"
        );
    }
    normal_request_succeeds(&gw).await;
}
