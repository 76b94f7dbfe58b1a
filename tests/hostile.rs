//! Hostile input and upstream faults. Requests are raw bytes on a socket; each case checks the
//! status, that the connection is closed where it must be, and that the origin saw nothing.
//! Every fault is followed by a normal request that must succeed.

mod common;

use common::origin::{Behavior, Origin};
use common::{client, read_to_end_blocking, simple_config, End, Ended, Gateway, RawConn, EVENTUALLY, ID};
use proptest::prelude::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

async fn setup(extra_gateway: &str, upstream_extra: &str) -> (Origin, Gateway) {
    common::origin_and_gateway(&[(ID, "asset")], extra_gateway, upstream_extra).await
}

/// Sends `request`, reads the whole answer; returns (status line, whether the server closed).
async fn exchange(gw: &Gateway, request: &[u8]) -> (String, bool) {
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(request).await;
    let status = match conn.response(request.starts_with(b"HEAD ")).await {
        Ok(r) => r.head.lines().next().unwrap_or_default().to_string(),
        Err(e) => format!("no response: {e:?}"),
    };
    (status, conn.closed_by_server().await)
}

async fn normal_request_succeeds(gw: &Gateway) {
    common::assert_serves(gw, ID, "asset").await;
}

/// The response ended with the connection closed before all its bytes came: the client can
/// tell it is incomplete (not a complete-looking response, not a hang).
fn assert_cut<T: std::fmt::Debug>(r: Result<T, Ended>) {
    match r {
        Err(Ended {
            end: End::Closed,
            partial,
        }) => assert!(
            String::from_utf8_lossy(&partial).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&partial)
        ),
        other => panic!("expected the connection closed mid-response, got {other:?}"),
    }
}

fn get(extra_headers: &str) -> Vec<u8> {
    format!("GET /content/v1/assets/{ID} HTTP/1.1\r\nHost: x\r\n{extra_headers}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_get_400_and_a_closed_connection() {
    let (origin, gw) = setup("", "").await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Content-Length with Transfer-Encoding",
            get("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
        ),
        (
            "two different Content-Lengths",
            get("Content-Length: 0\r\nContent-Length: 5\r\n"),
        ),
        (
            "a Content-Length list that disagrees",
            get("Content-Length: 0, 5\r\n"),
        ),
        (
            "Transfer-Encoding not ending in chunked",
            get("Transfer-Encoding: chunked, gzip\r\n"),
        ),
        ("Transfer-Encoding gzip", get("Transfer-Encoding: gzip\r\n")),
        (
            "chunked GET",
            [get("Transfer-Encoding: chunked\r\n"), b"0\r\n\r\n".to_vec()].concat(),
        ),
        ("obs-fold", get("X-A: a\r\n folded\r\n")),
        ("NUL in a header", get("X-A: a\0b\r\n")),
        ("bare CR in a header", get("X-A: a\rb\r\n")),
        ("space before the colon", get("X-A : a\r\n")),
        (
            "a GET with a body",
            [get("Content-Length: 5\r\n"), b"hello".to_vec()].concat(),
        ),
        (
            "a HEAD with a body",
            format!("HEAD /content/v1/assets/{ID} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
                .into_bytes(),
        ),
    ];
    for (name, request) in cases {
        let (status, closed) = exchange(&gw, &request).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{name}: {status:?}");
        assert!(closed, "{name}: the connection was kept open");
    }
    assert!(
        origin.asset_requests().is_empty(),
        "the origin saw {:?}",
        origin.asset_requests()
    );
    normal_request_succeeds(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_limits_are_enforced_before_anything_goes_upstream() {
    let (origin, gw) = setup("", "").await;
    let long_uri = format!(
        "GET /content/v1/assets/{ID}?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "q".repeat(9000)
    );
    let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    let big: String = (0..10)
        .map(|i| format!("X-{i}: {}\r\n", "v".repeat(4000)))
        .collect();
    let huge: String = (0..100)
        .map(|i| format!("X-{i}: {}\r\n", "v".repeat(9000)))
        .collect();
    for (name, request, expect) in [
        ("URI over 8 KiB", long_uri.into_bytes(), "HTTP/1.1 414"),
        ("150 header fields", get(&many), "HTTP/1.1 431"),
        ("40 KB of headers", get(&big), "HTTP/1.1 431"),
        ("900 KB of headers", get(&huge), "HTTP/1.1 431"),
    ] {
        let (status, closed) = exchange(&gw, &request).await;
        assert!(status.starts_with(expect), "{name}: {status:?}");
        assert!(closed, "{name}: the connection was kept open");
    }
    assert!(origin.asset_requests().is_empty());

    // The limits are configurable.
    let (origin, gw) = setup(
        "  downstream: {max_uri_bytes: 128, max_headers: 5, max_header_bytes: 1KiB}\n",
        "",
    )
    .await;
    let (status, _) = exchange(
        &gw,
        format!(
            "GET /content/v1/assets/{ID}?{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "q".repeat(100)
        )
        .as_bytes(),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 414"), "{status}");
    let (status, _) = exchange(&gw, &get("A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n")).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    let (status, _) = exchange(&gw, &get(&format!("A: {}\r\n", "a".repeat(1000)))).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    assert!(origin.asset_requests().is_empty());
    normal_request_succeeds(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_its_head_a_byte_at_a_time_is_cut_off() {
    let (origin, gw) = setup("  downstream: {header_timeout: 1s}\n", "").await;
    let request = get("X-Slow: yes\r\n");
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    let start = Instant::now();
    let mut sent = 0;
    let mut cut = false;
    for b in &request {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        sent += 1;
        assert!(start.elapsed() < EVENTUALLY);
    }
    if !cut {
        // Every byte went into the socket buffer; the server closes (a silent socket is not
        // a close).
        let (answer, end) = read_to_end_blocking(&mut s);
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
        cut = end == End::Closed;
    }
    eprintln!("slow head: cut after {sent} of {} bytes", request.len());
    assert!(cut, "the slow client was never cut off");
    assert!(sent < request.len(), "the whole head got through ({sent} bytes)");
    assert!(origin.asset_requests().is_empty());

    // A client that connects and says nothing is cut too.
    let mut idle = std::net::TcpStream::connect(gw.addr).unwrap();
    assert_eq!(read_to_end_blocking(&mut idle), (Vec::new(), End::Closed));
    normal_request_succeeds(&gw).await;
}

/// The routing invariant over random and adversarial paths, through the real gateway: either
/// the origin receives exactly `/v1/assets/<lower-case uuid>` (and the query), or the gateway
/// answers by itself and the origin sees nothing.
#[test]
fn random_and_adversarial_paths_never_reach_the_origin_as_anything_else() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(Origin::start());
    let gw = Gateway::start(&simple_config(&[origin.addr], ""));
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("/content/v1/assets/".to_string()),
        Just("/content/v1/assets".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("%2e%2e".to_string()),
        Just("%2F".to_string()),
        Just("%00".to_string()),
        Just("%3F".to_string()),
        Just("?".to_string()),
        Just("#".to_string()),
        Just("//".to_string()),
        Just("%C3%A9".to_string()),
        Just("é".to_string()),
        Just(ID.to_string()),
        Just(ID.to_uppercase()),
        Just("3f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0".to_string()),
        "[0-9a-fA-F-]{30,40}",
        "[ -~]{0,40}",
        "\\PC{0,8}",
    ];
    let adversarial = prop::collection::vec(piece, 1..6).prop_map(|parts| parts.concat());
    // Valid asset paths in random case, with random queries, so both outcomes are exercised.
    let valid = (any::<u64>(), "[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,30}").prop_map(|(case, query)| {
        let id: String = ID
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if case >> i & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        format!("/content/v1/assets/{id}?{query}")
    });
    let path = prop_oneof![1 => valid, 1 => adversarial];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let seen_before = std::cell::Cell::new(0);
    let (forwarded, answered) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&path, |p| {
            let target = if p.starts_with('/') {
                p.clone()
            } else {
                format!("/{p}")
            };
            let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
            s.set_read_timeout(Some(EVENTUALLY)).unwrap();
            let mut req = b"GET ".to_vec();
            req.extend_from_slice(target.as_bytes());
            req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(&req).unwrap();
            let mut resp = Vec::new();
            let _ = s.read_to_end(&mut resp);
            let status: u16 = String::from_utf8_lossy(&resp)
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let seen = origin.asset_requests();
            let new: Vec<_> = seen[seen_before.get()..].to_vec();
            seen_before.set(seen.len());
            match status {
                // Forwarded: the origin has no such asset and says 404; it saw one clean path.
                404 if !new.is_empty() => {
                    forwarded.set(forwarded.get() + 1);
                    prop_assert_eq!(new.len(), 1);
                    let (path, query) = new[0].target.split_once('?').unwrap_or((&new[0].target, ""));
                    prop_assert_eq!(path, format!("/v1/assets/{ID}"), "from {:?}", target);
                    // A valid query goes upstream exactly as the client sent it. (Pingora
                    // percent-encodes characters that are not allowed in a request target,
                    // such as spaces, before the gateway sees them.)
                    let sent = target.split_once('?').map(|(_, q)| q);
                    if sent.is_none_or(|q| {
                        q.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b))
                    }) {
                        prop_assert_eq!(Some(query).filter(|_| new[0].target.contains('?')), sent);
                    }
                }
                400 | 404 | 405 | 414 | 431 => {
                    answered.set(answered.get() + 1);
                    prop_assert!(new.is_empty(), "{:?} reached the origin as {:?}", target, new)
                }
                other => prop_assert!(
                    false,
                    "{:?} gave status {} ({:?})",
                    target,
                    other,
                    String::from_utf8_lossy(&resp)
                ),
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "paths: {} forwarded cleanly, {} answered by the gateway",
        forwarded.get(),
        answered.get()
    );
    assert!(forwarded.get() > 0 && answered.get() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_closes_mid_body_gives_an_incomplete_response_and_is_not_reused() {
    let (origin, gw) = setup("", "").await;
    for (i, chunked) in [false, true].into_iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-00000000000{i}");
        origin.set(
            &id,
            Behavior::CloseAfter {
                first: 30_000,
                total: 100_000,
                chunked,
            },
        );
        let mut conn = RawConn::connect(gw.addr).await;
        conn.send(format!("GET /content/v1/assets/{id} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        if chunked {
            // Read to the close; the terminating zero-size chunk must never arrive.
            let (all, end) = conn.read_to_close().await;
            let text = String::from_utf8_lossy(&all);
            assert_eq!(end, End::Closed, "the response was left hanging: {text}");
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(!all.ends_with(b"0\r\n\r\n"), "a complete-looking chunked body");
        } else {
            assert_cut(conn.response(false).await);
        }
        let before = origin.connections();
        normal_request_succeeds(&gw).await;
        assert_eq!(
            origin.connections(),
            before + 1,
            "the broken upstream connection was reused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_oversized_upstream_heads_give_502() {
    let (origin, gw) = setup("", "").await;
    origin.set("00000000-0000-4000-8000-000000000001", Behavior::Garbage);
    origin.set(
        "00000000-0000-4000-8000-000000000002",
        Behavior::HugeHead {
            bytes: 2 * 1024 * 1024,
        },
    );
    for id in [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
    ] {
        let r = client().get(gw.asset_url(id)).send().await.unwrap();
        assert_eq!(r.status(), 502, "{id}");
        assert!(r.text().await.unwrap().contains("\"error\":\"upstream failed\""));
        normal_request_succeeds(&gw).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_stalls_after_the_head_is_cut_then_the_next_request_works() {
    let (origin, gw) = setup("", "      read_timeout: 1s\n").await;
    origin.set(
        "00000000-0000-4000-8000-000000000001",
        Behavior::StallAfter {
            first: 1000,
            total: 50_000,
        },
    );
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(b"GET /content/v1/assets/00000000-0000-4000-8000-000000000001 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_cut(conn.response(false).await);
    normal_request_succeeds(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_download_closes_the_upstream_connection() {
    let (origin, gw) = setup("", "").await;
    let big = "00000000-0000-4000-8000-0000000000b1";
    let size = 256 * 1024 * 1024;
    origin.set(big, Behavior::Generated { size });
    {
        let mut conn = RawConn::connect(gw.addr).await;
        conn.send(format!("GET /content/v1/assets/{big} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let mut got = 0;
        while got < 1024 * 1024 {
            got += conn.read_chunk().await.expect("body").len();
        }
    } // the client goes away
    common::eventually("the upstream connection closed", || {
        origin
            .state
            .aborted_writes
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    })
    .await;
    let written = origin.body_bytes_written();
    assert!(written < size, "the origin sent everything");
    eprintln!("client left after 1 MiB; the origin stopped after writing {written} bytes");
    let before = origin.connections();
    normal_request_succeeds(&gw).await;
    assert_eq!(
        origin.connections(),
        before + 1,
        "a half-read upstream connection was pooled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_reset_by_the_origin_do_not_fail_the_next_request() {
    let (origin, gw) = setup("", "").await;
    origin
        .state
        .reset_on_close
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        normal_request_succeeds(&gw).await;
        origin.close_idle_connections();
        // The reset is on the wire before the next request.
        common::eventually("the origin closed its idle connection", || {
            origin.open_connections() == 0
        })
        .await;
    }
    // And when the reset races the next request.
    for i in 0..20 {
        origin.close_idle_connections();
        let (status, body) = gw.fetch(ID, &format!("race{i}")).await;
        if status != 200 || body != "asset" {
            let line = gw.access_line(&format!("race{i}")).await;
            panic!("request {i} failed: {status} {body:?}\n{line}");
        }
    }
}

/// A request sent on a pooled connection that the origin drops without answering is retried
/// on a new connection, to the same peer when it is the only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_dead_pooled_connection_is_retried_on_a_new_one() {
    let (origin, gw) = setup("", "").await;
    normal_request_succeeds(&gw).await;
    assert_eq!(origin.connections(), 1);
    origin
        .state
        .drop_reused_requests
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = gw.fetch(ID, "stale").await;
    assert_eq!(status, 200);
    assert_eq!(body, "asset");
    assert_eq!(
        origin.connections(),
        2,
        "the retry should have opened a new connection"
    );
    let line = gw.access_line("stale").await;
    assert!(
        line.contains("attempts=2") && line.contains("reused=false"),
        "{line}"
    );
}

/// After every kind of fault above the gateway holds no extra file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_leave_no_file_descriptors_behind() {
    let (origin, gw) = setup("  downstream: {header_timeout: 1s}\n", "      read_timeout: 1s\n").await;
    normal_request_succeeds(&gw).await;
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", gw.pid()))
            .unwrap()
            .count()
    };
    let baseline = fds();
    origin.set(
        "00000000-0000-4000-8000-000000000001",
        Behavior::StallAfter {
            first: 10,
            total: 100,
        },
    );
    origin.set(
        "00000000-0000-4000-8000-000000000002",
        Behavior::CloseAfter {
            first: 10,
            total: 100,
            chunked: false,
        },
    );
    origin.set("00000000-0000-4000-8000-000000000003", Behavior::Garbage);
    origin.set(
        "00000000-0000-4000-8000-000000000004",
        Behavior::Generated {
            size: 64 * 1024 * 1024,
        },
    );
    for round in 0..3 {
        for id in ["0001", "0002", "0003"] {
            let _ = client()
                .get(gw.asset_url(&format!("00000000-0000-4000-8000-00000000{id}")))
                .send()
                .await;
        }
        let (status, _) = exchange(&gw, &get("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n")).await;
        assert!(status.starts_with("HTTP/1.1 400"));
        let mut leaving = RawConn::connect(gw.addr).await;
        leaving
            .send(b"GET /content/v1/assets/00000000-0000-4000-8000-000000000004 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        leaving.read_chunk().await.expect("the response began");
        drop(leaving);
        let _silent = std::net::TcpStream::connect(gw.addr).unwrap();
        normal_request_succeeds(&gw).await;
        eprintln!("round {round}: {} fds (baseline {baseline})", fds());
    }
    common::eventually(&format!("fds back to the baseline {baseline}"), || {
        fds() <= baseline + 1
    })
    .await;
}
