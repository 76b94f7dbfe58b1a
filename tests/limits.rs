//! Rate limits per client and who the client is: a burst then 429 with `Retry-After`, other
//! clients unaffected, `X-Forwarded-For` believed only behind `trusted_proxies`, PROXY protocol
//! v2 from a trusted load balancer (plain and TLS listeners), `counts: upstream` letting cache
//! hits through, and memory that stays flat with 100,000 distinct clients. Real gateway
//! process, real origin, real sockets.

mod common;

use common::ca::{provider, Ca};
use common::origin::Origin;
use common::{client, free_addrs, temp_dir, wait_listening, Gateway, RawConn, EVENTUALLY};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const A: &str = "2a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c01";
const B: &str = "2a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c02";
const C: &str = "2a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c03";

/// A gateway in front of a fresh origin serving A, B and C; `gateway_extra` under `gateway:`,
/// `route_extra` under the route.
async fn setup(gateway_extra: &str, route_extra: &str) -> (Origin, Gateway) {
    let origin = start_origin().await;
    let gw = Gateway::start(&yaml(&origin, "\"{listen}\"", gateway_extra, route_extra));
    (origin, gw)
}

/// The config of these tests: `listen` is the list's content.
fn yaml(origin: &Origin, listen: &str, gateway_extra: &str, route_extra: &str) -> String {
    format!(
        r#"threads: 2
gateway:
  listen: [{listen}]
{gateway_extra}
  upstreams:
    assets:
      peers: ["{}"]
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
{route_extra}
"#,
        origin.addr
    )
}

async fn start_origin() -> Origin {
    let origin = Origin::start().await;
    for id in [A, B, C] {
        origin.set_body(id, format!("asset {id}"));
    }
    origin
}

fn url(gw: &Gateway, id: &str) -> String {
    gw.url(&format!("/content/v1/assets/{id}"))
}

/// GET with an optional `X-Forwarded-For`; status and `Retry-After`.
async fn fetch(gw: &Gateway, id: &str, xff: Option<&str>) -> (u16, Option<String>) {
    let mut r = client().get(url(gw, id));
    if let Some(x) = xff {
        r = r.header("x-forwarded-for", x);
    }
    let r = r.send().await.unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    if status == 429 {
        assert_eq!(
            body.split("\"request_id\"").next(),
            Some("{\"error\":\"too many requests from this client\",")
        );
    }
    (status, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_then_429_with_retry_after_and_other_clients_are_unaffected() {
    let (origin, gw) = setup(
        "  client_ip: {trusted_proxies: [\"127.0.0.1/32\"]}\n",
        "      rate_limit: {per_client: 1/m, burst: 3}\n",
    )
    .await;
    let alice = Some("198.51.100.1");
    for i in 0..3 {
        assert_eq!(fetch(&gw, A, alice).await.0, 200, "request {i}");
    }
    let (status, retry) = fetch(&gw, A, alice).await;
    assert_eq!(status, 429);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    assert_eq!(
        origin.requests().len(),
        3,
        "the refused request reached the origin"
    );
    // Another client has its own bucket.
    assert_eq!(fetch(&gw, A, Some("198.51.100.2")).await.0, 200);
    // The access line names the reason and the client.
    gw.wait_for_log(|l| {
        l.contains(" access] ")
            && l.contains("status=429")
            && l.contains("refused=rate-limit")
            && l.contains("client_ip=198.51.100.1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_behind_trusted_proxies() {
    // No trusted proxies: every request is the peer's (127.0.0.1), whatever it claims.
    let (_origin, gw) = setup("", "      rate_limit: {per_client: 1/m, burst: 2}\n").await;
    assert_eq!(fetch(&gw, A, Some("198.51.100.1")).await.0, 200);
    assert_eq!(fetch(&gw, A, Some("198.51.100.2")).await.0, 200);
    assert_eq!(fetch(&gw, A, Some("198.51.100.3")).await.0, 429);

    // Behind 127.0.0.1: the right-most entry that is not a trusted proxy. What an untrusted
    // client writes to the left of it changes nothing.
    let (_origin, gw) = setup(
        "  client_ip: {trusted_proxies: [\"127.0.0.1/32\", \"10.0.0.0/8\"]}\n",
        "      rate_limit: {per_client: 1/m, burst: 2}\n",
    )
    .await;
    assert_eq!(fetch(&gw, A, Some("1.1.1.1, 198.51.100.7")).await.0, 200);
    assert_eq!(
        fetch(&gw, A, Some("2.2.2.2, 198.51.100.7, 10.1.2.3")).await.0,
        200
    );
    assert_eq!(fetch(&gw, A, Some("3.3.3.3, 198.51.100.7")).await.0, 429);
    assert_eq!(fetch(&gw, A, Some("198.51.100.8")).await.0, 200);
}

/// Load balancers that write a port into `X-Forwarded-For` (Azure: `1.2.3.4:5678`,
/// `[2001:db8::1]:443`): each client still has its own bucket. An entry that is not an
/// address is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_entries_with_ports_are_clients() {
    // Both addresses at once: a separate free_addr() for the listener could be the admin's.
    let [listen, admin] = free_addrs();
    let origin = start_origin().await;
    let config = yaml(
        &origin,
        "\"{listen}\"",
        &format!("  admin: \"{admin}\"\n  client_ip: {{trusted_proxies: [\"127.0.0.1/32\"]}}\n"),
        "      rate_limit: {per_client: 1/m, burst: 1}\n",
    );
    let gw = Gateway::start_at(&config, &[], listen);
    wait_listening(admin);
    for client in [
        "198.51.100.1:5678",
        "198.51.100.2:5678",
        "[2001:db8::1]:443",
        "[2001:db8:0:1::1]:443",
    ] {
        assert_eq!(fetch(&gw, A, Some(client)).await.0, 200, "{client}");
    }
    assert_eq!(fetch(&gw, A, Some("198.51.100.1:9999")).await.0, 429);
    assert_eq!(fetch(&gw, A, Some("unknown")).await.0, 200);
    let m = common::scrape(admin).await;
    assert_eq!(
        common::metric(&m, "asset_gateway_forwarded_for_unparsable_total"),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_upstream_lets_cache_hits_through() {
    let (origin, gw) = setup(
        "  cache: {memory: 16MiB}\n",
        "      rate_limit: {per_client: 1/m, burst: 2, counts: upstream}\n",
    )
    .await;
    // A miss takes a token; hits of it are free however many.
    assert_eq!(fetch(&gw, A, None).await.0, 200);
    for _ in 0..10 {
        assert_eq!(fetch(&gw, A, None).await.0, 200);
    }
    assert_eq!(fetch(&gw, B, None).await.0, 200);
    // A third miss finds the bucket empty: 429, and the origin never sees it.
    assert_eq!(fetch(&gw, C, None).await.0, 429);
    let seen: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, [format!("/v1/assets/{A}"), format!("/v1/assets/{B}")]);
    // ...and hits still pass.
    assert_eq!(fetch(&gw, B, None).await.0, 200);
}

/// Under `counts: upstream` a refused request (no or bad credentials) still costs its client
/// a token: trying credentials is limited too. Another client keeps its bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_upstream_charges_refusals() {
    let (origin, gw) = setup(
        "  cache: {memory: 16MiB}\n  client_ip: {trusted_proxies: [\"127.0.0.1/32\"]}\n  auth:\n    signed_url:\n      keys: {k1: \"k1-secret-k1-secret-k1-secret-k1\"}\n",
        "      auth: [signed_url]\n      rate_limit: {per_client: 1/m, burst: 3, counts: upstream}\n",
    )
    .await;
    let mallory = Some("198.51.100.66");
    let bad = format!("?exp={}&kid=k1&sig=AAAA", u32::MAX);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let q = if i % 2 == 0 { bad.as_str() } else { "" };
        let mut r = client().get(format!("{}{q}", url(&gw, A)));
        if let Some(x) = mallory {
            r = r.header("x-forwarded-for", x);
        }
        let r = r.send().await.unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [403, 401, 403, 429, 429, 429]);
    assert_eq!(fetch(&gw, A, Some("198.51.100.67")).await.0, 401);
    assert!(origin.requests().is_empty());
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends one request per client address over `conns` pipelined connections, and counts the
/// answers with `expect` as their status line.
async fn pipeline(addr: SocketAddr, clients: std::ops::Range<u32>, conns: u32, expect: &'static str) {
    let per = (clients.end - clients.start).div_ceil(conns);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let range = clients.start + c * per..(clients.start + (c + 1) * per).min(clients.end);
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut rd, mut wr) = stream.into_split();
            let n = range.len();
            let writer = tokio::spawn(async move {
                let mut batch = Vec::new();
                for i in range {
                    let ip = std::net::Ipv4Addr::from(0x6440_0000 + i);
                    batch.extend_from_slice(
                        format!("GET /content/v1/assets/{A} HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: {ip}\r\n\r\n").as_bytes(),
                    );
                    if batch.len() > 32 * 1024 {
                        wr.write_all(&batch).await.unwrap();
                        batch.clear();
                    }
                }
                wr.write_all(&batch).await.unwrap();
                wr
            });
            let mut seen = 0;
            let mut tail = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while seen < n {
                let got = tokio::time::timeout(EVENTUALLY, rd.read(&mut buf)).await.unwrap().unwrap();
                assert!(got > 0, "closed after {seen} of {n} answers");
                tail.extend_from_slice(&buf[..got]);
                let mut at = 0;
                while let Some(i) = tail[at..].windows(9).position(|w| w == b"HTTP/1.1 ") {
                    let line = &tail[at + i..];
                    if line.len() < 12 {
                        break;
                    }
                    assert!(line.starts_with(expect.as_bytes()), "{}", String::from_utf8_lossy(&line[..40.min(line.len())]));
                    seen += 1;
                    at += i + 12;
                }
                tail.drain(..at);
            }
            drop(writer.await.unwrap());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_with_100_000_distinct_clients() {
    // Every request is counted by the limit, then refused for its missing signature: no
    // origin work, only the limiter's.
    let (origin, gw) = setup(
        "  access_log: {enabled: false}\n  client_ip: {trusted_proxies: [\"127.0.0.1/32\"]}\n  auth: {signed_url: {keys: {k1: \"k1-secret-0123456789abcdef0123456789\"}}}\n",
        "      auth: [signed_url]\n      rate_limit: {per_client: 10/s, burst: 5}\n",
    )
    .await;
    // Warm up (allocator, connections) with 20,000 requests from the same 1,000 clients.
    for _ in 0..20 {
        pipeline(gw.addr, 0..1_000, 4, "HTTP/1.1 4").await;
    }
    let before = rss_kib(gw.pid());
    pipeline(gw.addr, 1_000..101_000, 4, "HTTP/1.1 401").await;
    let after = rss_kib(gw.pid());
    eprintln!("RSS before {before} KiB, after 100,000 distinct clients {after} KiB");
    // A map of one small entry per client would hold several MiB here.
    assert!(
        after < before + 2048,
        "RSS grew from {before} KiB to {after} KiB with 100,000 distinct clients"
    );
    // The limit still works: one client's burst, then 429.
    for _ in 0..5 {
        assert_eq!(fetch(&gw, A, Some("203.0.113.1")).await.0, 401);
    }
    assert_eq!(fetch(&gw, A, Some("203.0.113.1")).await.0, 429);
    assert!(origin.requests().is_empty());
}

// --- PROXY protocol v2 -------------------------------------------------------------------

/// A v2 header: PROXY (or LOCAL), TCP over IPv4, `src` -> `dst`.
fn proxy_v2(local: bool, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(if local { 0x20 } else { 0x21 });
    h.push(0x11);
    h.extend_from_slice(&12u16.to_be_bytes());
    for a in [src, dst] {
        let SocketAddr::V4(a) = a else { panic!("IPv4 only") };
        h.extend_from_slice(&a.ip().octets());
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

fn request(id: &str, request_id: &str) -> Vec<u8> {
    format!("GET /content/v1/assets/{id} HTTP/1.1\r\nHost: gw\r\nX-Request-Id: {request_id}\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_from_a_trusted_balancer_gives_the_client() {
    let dir = temp_dir();
    let ca = Ca::new("test ca");
    let (cert, key) = ca.issue("gw.test");
    let (cert_path, key_path) = (dir.join("gw.pem"), dir.join("gw.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let [listen, tls_addr] = free_addrs();
    let origin = start_origin().await;
    let gw = Gateway::start_at(&proxy_yaml(&origin, &cert_path, &key_path, tls_addr), &[], listen);
    wait_listening(tls_addr);
    let src: SocketAddr = "203.0.113.7:5555".parse().unwrap();

    // The header's source is the client: upstream, in the log, for the rate limit.
    let mut conn = RawConn::connect(gw.addr).await;
    let mut first = proxy_v2(false, src, gw.addr);
    first.extend_from_slice(&request(A, "pp-1"));
    conn.send(&first).await;
    assert_eq!(conn.response(false).await.unwrap().status, 200);
    let seen = origin.requests();
    assert_eq!(
        seen.last().unwrap().header("x-forwarded-for"),
        Some("203.0.113.7")
    );
    assert!(gw.access_line("pp-1").await.contains("client=203.0.113.7:5555"));
    // The same client on the same connection: its bucket (burst 1) is empty.
    conn.send(&request(A, "pp-2")).await;
    assert_eq!(conn.response(false).await.unwrap().status, 429);

    // Another source through the same balancer has its own bucket.
    let mut conn = RawConn::connect(gw.addr).await;
    let mut other = proxy_v2(false, "203.0.113.8:6666".parse().unwrap(), gw.addr);
    other.extend_from_slice(&request(A, "pp-3"));
    conn.send(&other).await;
    assert_eq!(conn.response(false).await.unwrap().status, 200);

    // LOCAL (the balancer's own check): the peer is the client.
    let mut conn = RawConn::connect(gw.addr).await;
    let mut local = proxy_v2(true, src, gw.addr);
    local.extend_from_slice(&request(B, "pp-4"));
    conn.send(&local).await;
    assert_eq!(conn.response(false).await.unwrap().status, 200);
    assert!(gw.access_line("pp-4").await.contains("client=127.0.0.1:"));

    // A trusted peer without a header is cut off, unanswered; nothing goes upstream.
    let before = origin.requests().len();
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(&request(C, "pp-5")).await;
    let (answer, end) = conn.read_to_close().await;
    assert!(
        end == common::End::Closed && answer.is_empty(),
        "{end:?}: {}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(origin.requests().len(), before);

    // An untrusted peer (127.0.0.3) sends no header and is its own client; a header from it
    // would be taken for a (bad) request, never believed.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(gw.addr).await.unwrap();
    s.write_all(&request(C, "pp-6")).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(gw.access_line("pp-6").await.contains("client=127.0.0.3:"));

    // On the TLS listener the header comes before the handshake.
    let mut tcp = TcpStream::connect(tls_addr).await.unwrap();
    tcp.write_all(&proxy_v2(false, "203.0.113.9:7777".parse().unwrap(), tls_addr))
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der(&ca)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("gw.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(&request(B, "pp-7")).await.unwrap();
    let n = tokio::time::timeout(EVENTUALLY, tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(gw.access_line("pp-7").await.contains("client=203.0.113.9:7777"));
    let _ = std::fs::remove_dir_all(dir);
}

fn cert_der(ca: &Ca) -> rustls::pki_types::CertificateDer<'static> {
    ca.cert.der().clone()
}

/// The PROXY test's config: a TLS listener besides the plain one.
fn proxy_yaml(origin: &Origin, cert: &std::path::Path, key: &std::path::Path, tls: SocketAddr) -> String {
    let listen = format!(
        "\"{{listen}}\", {{addr: \"{tls}\", tls: {{cert: {}, key: {}}}}}",
        cert.display(),
        key.display()
    );
    yaml(
        origin,
        &listen,
        "  client_ip: {trusted_proxies: [\"127.0.0.1/32\"], proxy_protocol: true}\n",
        "      rate_limit: {per_client: 1/m, burst: 1}\n",
    )
}
