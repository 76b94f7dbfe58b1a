//! Peers from DNS (`discovery.dns`): a real DNS server on 127.0.0.1 (tests/common/dns.rs)
//! answers the gateway's resolver; the peers are real origins on 127.0.0.2, .3, ... (Linux
//! routes all of 127/8 to loopback), all on one port, as the records of a headless Service.

mod common;

use common::dns::{records, Answer, Family, TestDns};
use common::origin::{pattern, Behavior, Origin};
use common::{check_config, client, eventually, eventually_async, free_addrs, metric, scrape, Gateway, ID};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

const NAME: &str = "assets.test.";
/// An asset id for the slow download.
const SLOW: &str = "5f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0d";
const HEALTH: &str = "      health_check: {path: /healthz, interval: 200ms, timeout: 500ms, healthy_after: 1, unhealthy_after: 1}\n";

/// One origin on each of `ips` (`"::1"` for IPv6), all on the same port (DNS gives
/// addresses, not ports).
async fn origins_on_one_port(ips: &[&str]) -> (u16, Vec<Origin>) {
    let at = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port).to_string();
    for _ in 0..50 {
        let port = std::net::TcpListener::bind(at(ips[0], 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let free = ips
            .iter()
            .all(|ip| std::net::TcpListener::bind(at(ip, port)).is_ok());
        if !free {
            continue;
        }
        let mut v = Vec::new();
        for ip in ips {
            let o = Origin::start_on(&at(ip, port)).await;
            o.set_body(ID, "asset");
            v.push(o);
        }
        return (port, v);
    }
    panic!("no port free on all of {ips:?}");
}

/// A gateway whose `assets` upstream is discovered from `dns`; returns it and its admin
/// address.
fn gateway(dns: SocketAddr, port: u16, extra: &str) -> (Gateway, SocketAddr) {
    let [listen, admin] = free_addrs();
    let yaml = format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}"]
  admin: "{admin}"
  resolver: "{dns}"
  upstreams:
    assets:
      discovery: {{dns: "{NAME}:{port}", interval: 1s}}
{extra}
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
"#
    );
    let gw = Gateway::start_at(&yaml, &[], listen);
    common::wait_listening(admin);
    (gw, admin)
}

async fn peers_metric(admin: SocketAddr) -> f64 {
    metric(
        &scrape(admin).await,
        "asset_gateway_upstream_peers{upstream=\"assets\"}",
    )
}

async fn resolutions(admin: SocketAddr, result: &str) -> f64 {
    metric(
        &scrape(admin).await,
        &format!("asset_gateway_dns_resolutions_total{{result=\"{result}\",upstream=\"assets\"}}"),
    )
}

async fn readyz(admin: SocketAddr) -> (u16, String) {
    let r = client()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// GETs the asset; returns the status and the origin that served it.
async fn get(gw: &Gateway) -> (u16, String) {
    let r = client().get(gw.asset_url(ID)).send().await.unwrap();
    let status = r.status().as_u16();
    let by = r
        .headers()
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let _ = r.bytes().await;
    (status, by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_follow_dns_new_ones_after_a_passing_check_removed_ones_finish_in_flight() {
    let (port, os) = origins_on_one_port(&["127.0.0.2", "127.0.0.3"]).await;
    let (two, three) = (&os[0], &os[1]);
    let dns = TestDns::start(Answer::A(vec![])).await;
    dns.set_a(&["127.0.0.2"]);
    // The slow download below waits while the test changes DNS several times.
    let (gw, admin) = gateway(dns.addr, port, &format!("{HEALTH}      read_timeout: 60s\n"));

    eventually_async("ready once resolved and checked", async || {
        readyz(admin).await.0 == 200
    })
    .await;
    assert_eq!(get(&gw).await, (200, two.addr.to_string()));
    // The Host is the DNS name, never an address.
    let host = two.asset_requests()[0].header("host").unwrap().to_string();
    assert_eq!(host, format!("assets.test:{port}"));
    assert_eq!(peers_metric(admin).await, 1.0);

    // A slow download from .2, in flight through everything below.
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicBool::new(false));
    let total = 200_000;
    two.set(
        SLOW,
        Behavior::HoldAfter {
            first: 1000,
            total,
            release: release.clone(),
            held: held.clone(),
        },
    );
    let slow_url = gw.asset_url(SLOW);
    let download = tokio::spawn(async move {
        let r = client().get(slow_url).send().await.unwrap();
        (r.status().as_u16(), r.bytes().await.map(|b| b.to_vec()))
    });
    eventually("the slow download is under way", || held.load(Ordering::SeqCst)).await;

    // .3 appears in DNS while failing its health check: it gets nothing.
    three.state.healthy.store(false, Ordering::SeqCst);
    dns.set_a(&["127.0.0.2", "127.0.0.3"]);
    eventually_async("two peers known", async || peers_metric(admin).await == 2.0).await;
    let checks = three.state.health_checks.load(Ordering::SeqCst);
    eventually(".3 has been checked since", || {
        three.state.health_checks.load(Ordering::SeqCst) >= checks + 2
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(&gw).await, (200, two.addr.to_string()));
    }
    assert!(
        three.asset_requests().is_empty(),
        "a peer that never passed a check got traffic"
    );

    // Its first passing check brings it in.
    three.state.healthy.store(true, Ordering::SeqCst);
    eventually_async(".3 serves after passing its check", async || {
        get(&gw).await;
        !three.asset_requests().is_empty()
    })
    .await;

    // .2 leaves DNS: no new requests reach it, and its download in flight finishes.
    dns.set_a(&["127.0.0.3"]);
    eventually_async("one peer known", async || peers_metric(admin).await == 1.0).await;
    let before = two.asset_requests().len();
    for _ in 0..20 {
        assert_eq!(get(&gw).await, (200, three.addr.to_string()));
    }
    assert_eq!(
        two.asset_requests().len(),
        before,
        "a removed peer got new requests"
    );
    release.notify_one();
    let (status, body) = download.await.unwrap();
    assert_eq!(status, 200);
    let body = body.expect("the in-flight download on the removed peer completes");
    assert_eq!(body.len(), total);
    assert_eq!(body, pattern(0..total as u64));

    let m = scrape(admin).await;
    assert!(
        metric(
            &m,
            "asset_gateway_dns_resolutions_total{result=\"ok\",upstream=\"assets\"}"
        ) >= 3.0,
        "{m}"
    );
    // The removed peer's health series is gone.
    assert!(
        !m.contains(&format!("asset_gateway_peer_healthy{{peer=\"{}\"", two.addr)),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "asset_gateway_peer_healthy{{peer=\"{}\",upstream=\"assets\"}}",
                three.addr
            )
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_or_empty_resolution_keeps_the_last_peers() {
    let (port, os) = origins_on_one_port(&["127.0.0.2"]).await;
    let dns = TestDns::start(Answer::A(vec![])).await;
    dns.set_a(&["127.0.0.2"]);
    let (gw, admin) = gateway(dns.addr, port, "");
    eventually_async("ready", async || readyz(admin).await.0 == 200).await;
    assert_eq!(get(&gw).await, (200, os[0].addr.to_string()));

    for (answer, result) in [
        (Answer::A(vec![]), "empty"),
        (Answer::ServFail, "error"),
        (Answer::Silent, "error"),
    ] {
        let before = resolutions(admin, result).await;
        dns.set(answer.clone());
        eventually_async(&format!("three {result} polls after {answer:?}"), async || {
            resolutions(admin, result).await >= before + 3.0
        })
        .await;
        assert_eq!(get(&gw).await, (200, os[0].addr.to_string()), "{answer:?}");
        assert_eq!(peers_metric(admin).await, 1.0);
        assert_eq!(readyz(admin).await.0, 200);
        // Back to a good answer, so the next outcome is a change again.
        dns.set_a(&["127.0.0.2"]);
        let ok = resolutions(admin, "ok").await;
        eventually_async("a good answer again", async || {
            resolutions(admin, "ok").await > ok
        })
        .await;
    }

    // One warning per change of outcome, not one per poll: empty once, failed twice (once
    // after each good spell).
    let logs = gw.logs();
    let count = |s: &str| logs.iter().filter(|l| l.contains(s)).count();
    assert_eq!(
        count("has no A or AAAA record; keeping the last 1 known peers"),
        1,
        "{logs:#?}"
    );
    assert_eq!(count(&format!("resolving {NAME} failed")), 2, "{logs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_resolved_is_not_ready() {
    let (port, os) = origins_on_one_port(&["127.0.0.2"]).await;
    let dns = TestDns::start(Answer::ServFail).await;
    let (gw, admin) = gateway(dns.addr, port, HEALTH);
    eventually_async("a failed poll", async || resolutions(admin, "error").await >= 1.0).await;
    let (status, body) = readyz(admin).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("\"upstreams_never_resolved\":[\"assets\"]"),
        "{body}"
    );
    let r = client().get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(peers_metric(admin).await, 0.0);

    // The name appears: the upstream becomes ready.
    dns.set_a(&["127.0.0.2"]);
    eventually_async("ready", async || readyz(admin).await.0 == 200).await;
    assert_eq!(get(&gw).await, (200, os[0].addr.to_string()));
}

#[test]
fn dash_t_checks_discovery_without_resolving() {
    let yaml = |upstreams: &str, resolver: &str| {
        format!(
            r#"gateway:
  listen: ["127.0.0.1:8080"]
{resolver}
  upstreams:
{upstreams}
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: a
      rewrite: /v1/assets/{{id}}
"#
        )
    };
    // A name that does not resolve anywhere is fine: nothing is resolved by -t.
    let (ok, out) = check_config(&yaml(
        "    a:\n      discovery: {dns: \"does-not-exist.invalid.:8080\"}\n",
        "  resolver: \"127.0.0.1:5353\"",
    ));
    assert!(ok, "{out}");

    let (ok, out) = check_config(&yaml(
        r#"    a:
      peers: ["127.0.0.1:9000"]
      discovery: {dns: "assets.test:8080"}
    b:
      discovery: {dns: "10.0.0.1:8080"}
    c:
      discovery: {dns: "assets.test", interval: 500ms}
    d:
      discovery: {dns: "bad_name!.test:8080"}
"#,
        "  resolver: \"dns.local:53\"",
    ));
    assert!(!ok, "{out}");
    for expected in [
        "gateway.resolver: \"dns.local:53\" is not an IP:port address",
        "gateway.upstreams.a: peers and discovery exclude each other",
        "gateway.upstreams.b.discovery.dns: \"10.0.0.1:8080\": \"10.0.0.1\" is an IP address",
        "gateway.upstreams.c.discovery.interval: must be at least 1s",
        "gateway.upstreams.c.discovery.dns: \"assets.test\" is not name:port",
        "gateway.upstreams.d.discovery.dns: \"bad_name!.test:8080\": \"bad_name!.test\" is not a valid DNS name",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_selection_moves_only_the_removed_peers_ids() {
    let (port, os) = origins_on_one_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    let ids: Vec<String> = (0..90u32)
        .map(|i| format!("{i:08x}-9b4d-4e8a-8c21-5d6f7a8b9c0d"))
        .collect();
    for o in &os {
        for id in &ids {
            o.set_body(id, "asset");
        }
    }
    let dns = TestDns::start(Answer::A(vec![])).await;
    dns.set_a(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let (gw, admin) = gateway(dns.addr, port, "      selection: consistent\n");
    eventually_async("three peers known", async || peers_metric(admin).await == 3.0).await;
    let served_by = |id: String| {
        let url = gw.asset_url(&id);
        async move {
            let r = client().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["x-served-by"].to_str().unwrap().to_string()
        }
    };
    let mut before = Vec::new();
    for id in &ids {
        before.push(served_by(id.clone()).await);
    }
    let removed = os[2].addr.to_string();
    assert!(before.contains(&removed), "the peer to remove had a share");

    dns.set_a(&["127.0.0.2", "127.0.0.3"]);
    eventually_async("two peers known", async || peers_metric(admin).await == 2.0).await;
    for (id, was) in ids.iter().zip(&before) {
        let now = served_by(id.clone()).await;
        if *was == removed {
            assert_ne!(now, removed, "{id} still on the removed peer");
        } else {
            assert_eq!(&now, was, "{id} moved from a surviving peer");
        }
    }
}

/// Which origins served `n` requests in a row.
async fn served_by(gw: &Gateway, n: usize) -> std::collections::BTreeSet<String> {
    let mut by = std::collections::BTreeSet::new();
    for _ in 0..n {
        let (status, origin) = get(gw).await;
        assert_eq!(status, 200);
        by.insert(origin);
    }
    by
}

/// AAAA records are peers like A records; when one family's lookup fails, that family keeps
/// its last peers while the other family's answer still updates its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_records_are_peers_and_one_failing_family_keeps_its_own() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        panic!("this test needs IPv6 on the loopback interface (::1)");
    }
    let (port, os) = origins_on_one_port(&["127.0.0.2", "127.0.0.3", "::1"]).await;
    let (two, three, v6) = (
        os[0].addr.to_string(),
        os[1].addr.to_string(),
        os[2].addr.to_string(),
    );
    let dns = TestDns::start(Answer::A(vec![])).await;
    dns.set_v4(records(&["127.0.0.2"]));
    dns.set_v6(records(&["::1"]));
    let (gw, admin) = gateway(dns.addr, port, "");
    eventually_async("both families resolved", async || {
        peers_metric(admin).await == 2.0
    })
    .await;
    let want = [two.clone(), v6.clone()].into_iter().collect();
    assert_eq!(served_by(&gw, 10).await, want);

    // AAAA fails, A moves to .3: the IPv6 peer stays, the IPv4 peers follow.
    dns.set_v6(Family::ServFail);
    dns.set_v4(records(&["127.0.0.3"]));
    eventually_async("the A answer applied", async || {
        served_by(&gw, 2).await.contains(&three)
    })
    .await;
    let want = [three.clone(), v6.clone()].into_iter().collect();
    assert_eq!(served_by(&gw, 10).await, want);
    assert_eq!(peers_metric(admin).await, 2.0);
    gw.wait_for_log(|l| l.contains("AAAA lookup failed") && l.contains("keeps its last known peers"))
        .await;

    // A fails, AAAA answers with no record: the IPv6 peer goes, .3 stays.
    dns.set_v4(Family::ServFail);
    dns.set_v6(records(&[]));
    eventually_async("the empty AAAA answer applied", async || {
        peers_metric(admin).await == 1.0
    })
    .await;
    assert_eq!(served_by(&gw, 10).await, [three.clone()].into_iter().collect());
    gw.wait_for_log(|l| l.contains(": A lookup failed") && l.contains("keeps its last known peers"))
        .await;
    assert_eq!(readyz(admin).await.0, 200);
}

/// Each poll asks the nameserver again, although the records' TTL (300 s) would let a
/// resolver answer from its cache: a change is seen at the next poll, not when the TTL ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_poll_asks_the_nameserver() {
    let (port, os) = origins_on_one_port(&["127.0.0.2", "127.0.0.3"]).await;
    let dns = TestDns::start(Answer::A(vec![])).await;
    dns.set_a(&["127.0.0.2"]);
    let (gw, admin) = gateway(dns.addr, port, "");
    eventually_async("resolved", async || peers_metric(admin).await == 1.0).await;

    let queries = dns.queries();
    let polls = resolutions(admin, "ok").await;
    eventually_async("three more polls", async || {
        resolutions(admin, "ok").await >= polls + 3.0
    })
    .await;
    let polls = resolutions(admin, "ok").await - polls;
    let asked = dns.queries() - queries;
    eprintln!("{polls} polls asked the nameserver {asked} times");
    // One A and one AAAA query per poll (a poll that began before the first count is not
    // counted in `asked`).
    assert!(
        asked as f64 >= 2.0 * (polls - 1.0),
        "{polls} polls, {asked} queries"
    );

    dns.set_a(&["127.0.0.3"]);
    eventually_async("the new address serves", async || {
        get(&gw).await.1 == os[1].addr.to_string()
    })
    .await;
}
