//! TLS and HTTP/2 to clients: a test CA signs the gateway's certificate; real clients (reqwest
//! with rustls, and the `h2` crate as a raw HTTP/2 client for what a browser would not do)
//! talk to TLS (h2 and http/1.1 by ALPN) and h2c listeners.

mod common;

use bytes::Bytes;
use common::ca::{provider, Ca};
use common::h2raw::{self, H2Raw};
use common::origin::{pattern, Behavior, Origin};
use common::{check_config, free_addrs, simple_config, temp_dir, wait_listening, Gateway, EVENTUALLY, ID};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Notify;

const BIG: &str = "00000000-0000-4000-8000-0000000000b1";

/// A gateway with a plain listener (`gw.addr`), a TLS listener and an h2c listener.
struct H2Gateway {
    gw: Gateway,
    tls: SocketAddr,
    h2c: SocketAddr,
    ca_pem: String,
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Starts the gateway in front of `origin`; `extra` goes under `gateway:`.
fn start(origin: &Origin, extra: &str) -> H2Gateway {
    let ca = Ca::new("test ca");
    let (cert, key) = ca.issue("gw.test");
    let dir = temp_dir();
    let cert = write(&dir, "gw.pem", &cert.pem());
    let key = write(&dir, "gw.key", &key.serialize_pem());
    let [listen, tls, h2c] = free_addrs();
    let listeners = format!(
        "[\"{{listen}}\", {{addr: \"{tls}\", tls: {{cert: {cert}, key: {key}}}}}, {{addr: \"{h2c}\", h2c: true}}]"
    );
    let yaml = simple_config(&[origin.addr], "")
        .replace("[\"{listen}\"]", &listeners)
        .replace("  upstreams:", &format!("{extra}  upstreams:"));
    let gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(tls);
    wait_listening(h2c);
    H2Gateway {
        gw,
        tls,
        h2c,
        ca_pem: ca.cert.pem(),
    }
}

/// A TLS client trusting the test CA, reaching the TLS listener as `gw.test`.
fn tls_client(g: &H2Gateway, http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(g.ca_pem.as_bytes()).unwrap())
        .resolve("gw.test", g.tls);
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// A raw HTTP/2 connection to the h2c listener.
async fn raw_h2c(
    addr: SocketAddr,
    builder: h2::client::Builder,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = builder.handshake::<_, Bytes>(tcp).await.unwrap();
    (client, tokio::spawn(conn))
}

fn get(addr: SocketAddr, id: &str) -> http::Request<()> {
    http::Request::get(format!("http://{addr}/content/v1/assets/{id}"))
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_h2_tls_http11_and_h2c_serve_like_plain_http11() {
    let origin = Origin::start().await;
    origin.set_body(ID, "first");
    let g = start(&origin, "");
    let url = format!("https://gw.test:{}/content/v1/assets/{ID}", g.tls.port());

    let r = tls_client(&g, false)
        .get(&url)
        .header("x-request-id", "tls-h2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "tls-h2");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.text().await.unwrap(), "first");
    let seen = origin.asset_requests().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("host"), Some("assets.internal"));

    let r = tls_client(&g, true).get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.text().await.unwrap(), "first");

    let h2c_url = format!("http://{}/content/v1/assets/{ID}", g.h2c);
    let r = h2c_client()
        .get(&h2c_url)
        .header("x-request-id", "h2c-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "first");
    assert_eq!(
        origin.asset_requests().pop().unwrap().header("x-forwarded-proto"),
        Some("http")
    );
    // An HTTP/1.1 client on the h2c listener is served too.
    let r = common::client().get(&h2c_url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);

    // The gateway's own answers over HTTP/2: JSON, request id, Allow.
    let c = h2c_client();
    let r = c.get(format!("http://{}/nope", g.h2c)).send().await.unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 404)
    );
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("\"error\":\"no route for this path\""));
    let r = c
        .get(format!("http://{}/content/v1/assets/not-a-uuid", g.h2c))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c.post(&h2c_url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    let r = c.head(&h2c_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "");

    let h2_line = g.gw.access_line("tls-h2").await;
    assert!(h2_line.contains(" proto=h2 "), "{h2_line}");
    let h2c_line = g.gw.access_line("h2c-1").await;
    assert!(h2c_line.contains(" proto=h2 "), "{h2c_line}");
    assert!(g.gw.access_lines().iter().any(|l| l.contains(" proto=http/1.1 ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection_each_get_their_own_bytes() {
    let origin = Origin::start().await;
    let ids: Vec<String> = (0..40)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        origin.set(
            id,
            Behavior::Generated {
                size: 1000 + 7919 * i as u64,
            },
        );
    }
    let g = start(&origin, "");
    let (client, conn) = raw_h2c(g.h2c, h2::client::Builder::new()).await;
    let mut set = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let mut c = client.clone();
        let req = get(g.h2c, id);
        set.spawn(async move {
            c = c.ready().await.unwrap();
            let (resp, _) = c.send_request(req, true).unwrap();
            let mut body = resp.await.unwrap().into_body();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
                got.extend_from_slice(&chunk);
            }
            (i, got)
        });
    }
    let mut done = 0;
    while let Some(r) = set.join_next().await {
        let (i, got) = r.unwrap();
        assert_eq!(got, pattern(0..1000 + 7919 * i as u64), "stream for asset {i}");
        done += 1;
    }
    assert_eq!(done, 40);
    assert!(!conn.is_finished(), "the connection carried all 40 streams");
}

/// What the gateway holds of a large h2 download whose client opened its flow-control windows
/// wide and then stopped reading the socket: the stream's send buffer
/// (`h2.max_send_buffer`) plus what waits in the proxy (as for HTTP/1.1), in bytes the origin
/// wrote less what the kernel holds. `extra` goes under `gateway:`.
async fn held_for_a_client_that_stops_reading(extra: &str) -> u64 {
    let origin = Origin::start().await;
    origin.set(
        BIG,
        Behavior::Generated {
            size: 256 * 1024 * 1024,
        },
    );
    let g = start(&origin, extra);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let tcp = sock.connect(g.h2c).await.unwrap();
    let (mut c, _) = H2Raw::handshake(tcp, &[(h2raw::SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)]).await;
    c.send(
        &[
            h2raw::window_update(0, MAX_WINDOW - 65535),
            h2raw::get(1, &format!("/content/v1/assets/{BIG}"), &[]),
        ]
        .concat(),
    )
    .await;
    // From here on the client reads nothing.
    let held = common::held_by_gateway(&origin, g.h2c.port(), 0).await;
    assert!(origin.body_bytes_written() > 0);
    held
}

const MAX_WINDOW: u32 = (1 << 31) - 1;

/// With the default 64 KiB send buffer a stalled h2 stream holds about what a stalled
/// HTTP/1.1 response does plus that buffer (the h2 crate's own default would be 400 KiB); with
/// a 2 MiB buffer it holds most of 2 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_h2_reader_holds_back_the_origin() {
    let held = held_for_a_client_that_stops_reading("").await;
    assert!(
        held <= (112 + 64) * 1024,
        "a stalled h2 stream holds {held} bytes in the gateway (112 KiB + a 64 KiB send buffer expected)"
    );
    let held = held_for_a_client_that_stops_reading("  downstream: {h2: {max_send_buffer: 2MiB}}\n").await;
    assert!(
        held > 1536 * 1024,
        "with a 2 MiB send buffer a stalled h2 stream holds only {held} bytes: the setting is not applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_opens_its_window_is_cut_after_the_write_timeout() {
    let origin = Origin::start().await;
    origin.set(
        BIG,
        Behavior::Generated {
            size: 64 * 1024 * 1024,
        },
    );
    let g = start(&origin, "  downstream: {write_timeout: 1s}\n");
    let mut b = h2::client::Builder::new();
    b.initial_window_size(0);
    let (mut client, _conn) = raw_h2c(g.h2c, b).await;
    client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get(g.h2c, BIG), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200, "HEADERS are not flow controlled");
    let mut body = resp.into_body();
    let end = tokio::time::timeout(EVENTUALLY, body.data())
        .await
        .expect("the stream was held open");
    match end {
        Some(Err(e)) => assert!(e.is_reset() || e.is_go_away(), "{e:?}"),
        other => panic!("expected a reset, got {other:?}"),
    }
    // The upstream connection is dropped, not drained or pooled.
    common::eventually("the upstream connection closed", || {
        origin.state.aborted_writes.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(origin.body_bytes_written() < 32 * 1024 * 1024);
}

/// `n` streams opened and reset at once (one write: HEADERS then RST_STREAM for each), then
/// a PING. Returns the GOAWAY's error code if the server sent one, `None` if it answered the
/// PING instead (it went on with the connection).
async fn open_and_reset(addr: SocketAddr, n: u32) -> Option<u32> {
    let (mut c, _) = H2Raw::connect(addr, &[]).await;
    let mut burst = Vec::new();
    for i in 0..n {
        let id = 1 + 2 * i;
        burst.extend(h2raw::get(id, &format!("/content/v1/assets/{ID}"), &[]));
        burst.extend(h2raw::rst_stream(id, h2raw::CANCEL));
    }
    burst.extend(h2raw::ping(*b"rr-probe"));
    c.send(&burst).await;
    let (f, _) = c
        .until("a GOAWAY or the PING's answer", |f| {
            f.kind == h2raw::GOAWAY || (f.kind == h2raw::PING && f.flags & h2raw::ACK != 0)
        })
        .await;
    (f.kind == h2raw::GOAWAY).then(|| f.error_code().unwrap())
}

/// Rapid reset (CVE-2023-44487): streams the client resets before the gateway handled them
/// never reach the origin; more than `max_pending_reset_streams` of them at once (20 by
/// default, 5 configured here) get GOAWAY `ENHANCE_YOUR_CALM`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_costs_no_upstream_requests() {
    let origin = Origin::start().await;
    origin.set_body(ID, "first");
    let g = start(&origin, "");
    assert_eq!(
        open_and_reset(g.h2c, 10).await,
        None,
        "10 resets are within the default 20"
    );
    assert_eq!(open_and_reset(g.h2c, 200).await, Some(h2raw::ENHANCE_YOUR_CALM));
    let upstream = origin.asset_requests().len();
    eprintln!("rapid reset: 210 streams opened and reset, {upstream} reached the origin");
    assert_eq!(upstream, 0, "reset streams reached the origin");
    // The gateway still serves.
    let r = h2c_client()
        .get(format!("http://{}/content/v1/assets/{ID}", g.h2c))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "first");
    assert_eq!(origin.asset_requests().len(), 1);

    let g = start(&origin, "  downstream: {h2: {max_pending_reset_streams: 5}}\n");
    assert_eq!(
        open_and_reset(g.h2c, 10).await,
        Some(h2raw::ENHANCE_YOUR_CALM),
        "10 resets are over the configured 5"
    );
    assert_eq!(origin.asset_requests().len(), 1);
}

/// `h2.max_concurrent_streams` (4 here): advertised in SETTINGS, and a fifth stream opened
/// while four are open is refused (RST_STREAM REFUSED_STREAM) and never reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_max_concurrent_streams_is_refused() {
    let origin = Origin::start().await;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    origin.set(
        BIG,
        Behavior::HoldAfter {
            first: 1024,
            total: 4096,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let g = start(&origin, "  downstream: {h2: {max_concurrent_streams: 4}}\n");
    let (mut c, settings) = H2Raw::connect(g.h2c, &[]).await;
    assert!(
        settings
            .settings()
            .contains(&(h2raw::SETTINGS_MAX_CONCURRENT_STREAMS, 4)),
        "{:?}",
        settings.settings()
    );
    let path = format!("/content/v1/assets/{BIG}");
    let burst: Vec<u8> = [1, 3, 5, 7, 9]
        .iter()
        .flat_map(|id| h2raw::get(*id, &path, &[]))
        .collect();
    c.send(&burst).await;
    let (f, before) = c
        .until("stream 9's answer", |f| {
            f.stream == 9 && (f.kind == h2raw::RST_STREAM || f.kind == h2raw::HEADERS)
        })
        .await;
    assert_eq!(
        (f.kind, f.error_code()),
        (h2raw::RST_STREAM, Some(h2raw::REFUSED_STREAM)),
        "the fifth stream was not refused; frames before: {before:?}"
    );
    // The four others are served (their heads come; the origin holds their bodies).
    let mut answered: Vec<u32> = before
        .iter()
        .filter(|f| f.kind == h2raw::HEADERS)
        .map(|f| f.stream)
        .collect();
    while answered.len() < 4 {
        let (f, _) = c
            .until("the four streams' HEADERS", |f| f.kind == h2raw::HEADERS)
            .await;
        answered.push(f.stream);
    }
    answered.sort_unstable();
    assert_eq!(answered, [1, 3, 5, 7]);
    assert_eq!(origin.requests_for(BIG), 4);
    release.notify_waiters();
}

/// `h2.max_header_list_size` (16 KiB here) is enforced by the HTTP/2 layer: a larger header
/// list gets its bare 431, never the gateway's JSON answer nor the origin. Below it, the
/// gateway's own `max_header_bytes` (4 KiB here) still applies, with its JSON 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_lists_over_the_limits_are_refused_on_h2() {
    let origin = Origin::start().await;
    origin.set_body(ID, "first");
    let g = start(
        &origin,
        "  downstream: {max_header_bytes: 4KiB, h2: {max_header_list_size: 16KiB}}\n",
    );
    let (client, _conn) = raw_h2c(g.h2c, h2::client::Builder::new()).await;
    let mut client = client.ready().await.unwrap();
    let request = |header_bytes: usize| {
        http::Request::get(format!("http://{}/content/v1/assets/{ID}", g.h2c))
            .header("x-big", "v".repeat(header_bytes))
            .body(())
            .unwrap()
    };
    // Over max_header_bytes, under the HTTP/2 limit: the gateway's JSON 431.
    let (resp, _) = client.send_request(request(8 * 1024), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 431);
    assert!(resp.headers().contains_key("x-request-id"), "{resp:?}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    // Over the HTTP/2 limit: refused before the gateway sees the request.
    client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(request(24 * 1024), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 431);
    assert!(
        !resp.headers().contains_key("x-request-id"),
        "the gateway answered, not the HTTP/2 layer: {resp:?}"
    );
    assert!(
        origin.asset_requests().is_empty(),
        "an oversized head reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_silent_h2_connections_are_closed() {
    let origin = Origin::start().await;
    let g = start(
        &origin,
        "  downstream: {header_timeout: 1s, h2: {idle_timeout: 1s}}\n",
    );
    // An HTTP/2 connection that never sends a request.
    let (_client, conn) = raw_h2c(g.h2c, h2::client::Builder::new()).await;
    let end = tokio::time::timeout(EVENTUALLY, conn).await;
    assert!(end.is_ok(), "an idle HTTP/2 connection was kept");

    // One whose streams have all finished: idle again, it is closed too.
    origin.set_body(ID, "first");
    let (client, conn) = raw_h2c(g.h2c, h2::client::Builder::new()).await;
    let mut c = client.ready().await.unwrap();
    let (resp, _) = c.send_request(get(g.h2c, ID), true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    assert_eq!(body.data().await.unwrap().unwrap(), "first");
    assert!(body.data().await.is_none());
    let end = tokio::time::timeout(EVENTUALLY, conn).await;
    assert!(
        end.is_ok(),
        "an HTTP/2 connection idle after its streams was kept"
    );

    // A connection that stops inside the HTTP/2 preface (h2c listener)...
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(g.h2c).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(EVENTUALLY, s.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");

    // ... and a TLS connection that negotiates h2 and then says nothing.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut g.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(g.tls).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("gw.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The server speaks first (its SETTINGS frame), then must hang up: read to the end.
    let drained = tokio::time::timeout(EVENTUALLY, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "a silent TLS h2 connection was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_slower_than_the_header_timeout_and_a_second_request_work_on_h2() {
    // The head deadline must not apply to HTTP/2 frames after the preface.
    let origin = Origin::start().await;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    origin.set(
        BIG,
        Behavior::HoldAfter {
            first: 1024,
            total: 4096,
            release: release.clone(),
            held: held.clone(),
        },
    );
    origin.set_body(ID, "first");
    let g = start(&origin, "  downstream: {header_timeout: 1s}\n");
    let (client, _conn) = raw_h2c(g.h2c, h2::client::Builder::new()).await;
    let mut c = client.clone().ready().await.unwrap();
    let (resp, _) = c.send_request(get(g.h2c, BIG), true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    let first = body.data().await.unwrap().unwrap();
    body.flow_control().release_capacity(first.len()).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    release.notify_one();
    let mut got = first.to_vec();
    while let Some(chunk) = body.data().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, pattern(0..4096));
    let mut c = client.ready().await.unwrap();
    let (resp, _) = c.send_request(get(g.h2c, ID), true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    assert_eq!(body.data().await.unwrap().unwrap(), "first");
}

/// SIGTERM with an h2 download in flight: the connection gets GOAWAY (NO_ERROR) at once, the
/// stream in flight finishes, the connection ends and the process exits. The process stays
/// for the stream (held at the origin while the drain looks 10 times, twice what ends an idle
/// process), then for the connection: with the stream done, the connection is open until the
/// client acknowledges the shutdown PING (then the final GOAWAY and the close), and the
/// drain waits for that too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_goaway_and_lets_an_h2_download_finish() {
    let origin = Origin::start().await;
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    let total = 2 * 1024 * 1024;
    origin.set(
        BIG,
        Behavior::HoldAfter {
            first: 64 * 1024,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let mut g = start(&origin, "");
    let (mut c, _) = H2Raw::connect(g.h2c, &[(h2raw::SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)]).await;
    c.send(
        &[
            h2raw::window_update(0, MAX_WINDOW - 65535),
            h2raw::get(1, &format!("/content/v1/assets/{BIG}"), &[]),
        ]
        .concat(),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 64 * 1024 {
        let (f, _) = c.until("the first 64 KiB", |f| f.is(h2raw::DATA, 1)).await;
        got.extend_from_slice(&f.payload);
    }
    common::eventually("the origin holds the rest", || held.load(Ordering::SeqCst)).await;
    // The shutdown PING is kept unanswered until the stream is done.
    c.ack_pings = false;
    common::signal(g.gw.pid(), "TERM");
    let is_ping = |f: &h2raw::Frame| f.kind == h2raw::PING && f.flags & h2raw::ACK == 0;
    let (goaway, before) = c.until("a GOAWAY", |f| f.kind == h2raw::GOAWAY).await;
    assert_eq!(goaway.error_code(), Some(h2raw::NO_ERROR), "{goaway:?}");
    let mut pings: Vec<_> = before.into_iter().filter(is_ping).collect();
    // The drain has seen the stream in flight long enough to have ended an idle process.
    assert!(g.gw.drain_looks(10).await, "exited with an h2 download in flight");
    release.notify_one();
    loop {
        let (f, before) = c
            .until("the rest of the download", |f| f.is(h2raw::DATA, 1))
            .await;
        pings.extend(before.into_iter().filter(is_ping));
        got.extend_from_slice(&f.payload);
        if f.flags & h2raw::END_STREAM != 0 {
            break;
        }
    }
    assert_eq!(got.len(), total, "the download was cut by the shutdown");
    assert!(got == pattern(0..total as u64), "the download arrived damaged");
    // The stream is done (its access line written, nothing in flight); the connection waits
    // for the PING's ACK, and the process for the connection.
    g.gw.wait_access_lines(1).await;
    while pings.is_empty() {
        let f = c.frame().await.expect("the shutdown PING");
        assert!(f.stream == 0, "a frame for a stream after the download: {f:?}");
        if is_ping(&f) {
            pings.push(f);
        }
    }
    assert!(
        g.gw.drain_looks(10).await,
        "exited with an h2 connection open (its stream done, its shutdown PING unanswered)"
    );
    for p in &pings {
        c.send(&h2raw::frame(h2raw::PING, h2raw::ACK, 0, &p.payload))
            .await;
    }
    // Then the connection ends (after the final GOAWAY) and the process exits.
    c.ack_pings = true;
    let mut last_goaway = None;
    loop {
        match c.frame().await {
            Ok(f) => {
                assert!(f.stream == 0, "a frame for a stream after the download: {f:?}");
                if f.kind == h2raw::GOAWAY {
                    last_goaway = Some(f);
                }
            }
            Err(end) => {
                assert_eq!(end, common::End::Closed);
                break;
            }
        }
    }
    let last_goaway = last_goaway.expect("the final GOAWAY before the close");
    assert_eq!(last_goaway.error_code(), Some(h2raw::NO_ERROR), "{last_goaway:?}");
    let last_stream = u32::from_be_bytes(last_goaway.payload[..4].try_into().unwrap()) & 0x7fff_ffff;
    assert_eq!(last_stream, 1, "the final GOAWAY names the last stream processed");
    let (status, _) = g.gw.wait_exit();
    assert!(status.success(), "{status}");
    // The exit came from the drain, not the grace period (300 s by default).
    assert!(
        g.gw.logs()
            .iter()
            .any(|l| l.contains("graceful shutdown: no request in flight and no connection open, exiting")),
        "{:#?}",
        g.gw.logs()
    );
}

#[test]
fn bad_listener_certificates_are_refused_by_dash_t() {
    let ca = Ca::new("test ca");
    let dir = temp_dir();
    let (cert, key) = ca.issue("gw.test");
    let (_, other_key) = ca.issue("other.test");
    let (expired, expired_key) = ca.issue_with("gw.test", |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    let cert = write(&dir, "gw.pem", &cert.pem());
    let key_file = write(&dir, "gw.key", &key.serialize_pem());
    let other = write(&dir, "other.key", &other_key.serialize_pem());
    let expired = write(&dir, "expired.pem", &expired.pem());
    let expired_key = write(&dir, "expired.key", &expired_key.serialize_pem());
    let cases = [
        (
            format!("{{cert: {cert}, key: /nonexistent/key.pem}}"),
            "gateway.listen[1].tls.key: cannot read \"/nonexistent/key.pem\"",
        ),
        (
            format!("{{cert: {cert}, key: {other}}}"),
            "gateway.listen[1].tls.key: ",
        ),
        (
            format!("{{cert: {expired}, key: {expired_key}}}"),
            "gateway.listen[1].tls.cert: the certificate in",
        ),
        (
            format!("{{cert: {key_file}, key: {key_file}}}"),
            "gateway.listen[1].tls.cert: ",
        ),
    ];
    for (tls, expected) in cases {
        let yaml = simple_config(&["127.0.0.1:9".parse().unwrap()], "").replace(
            "[\"{listen}\"]",
            &format!("[\"127.0.0.1:1\", {{addr: \"127.0.0.1:2\", tls: {tls}}}]"),
        );
        let (ok, out) = check_config(&yaml);
        assert!(!ok, "{tls}: {out}");
        assert!(out.contains(expected), "{tls}: expected {expected:?} in {out}");
    }
    let check_tls = |cert: &str, key: &str| {
        let yaml = simple_config(&["127.0.0.1:9".parse().unwrap()], "").replace(
            "[\"{listen}\"]",
            &format!("[\"127.0.0.1:1\", {{addr: \"127.0.0.1:2\", tls: {{cert: {cert}, key: {key}}}}}]"),
        );
        check_config(&yaml).1
    };
    let mismatch = check_tls(&cert, &other);
    assert!(
        mismatch.contains("gateway.listen[1].tls.key: ")
            && mismatch.contains("does not match the certificate"),
        "{mismatch}"
    );
    let expired_msg = check_tls(&expired, &expired_key);
    assert!(expired_msg.contains("expired on"), "{expired_msg}");
}
