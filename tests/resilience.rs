//! Upstream resilience: balancing, failover, active health checks, passive ejection,
//! consistent hashing, timeouts and all-peers-down. Real origins on 127.0.0.1, real gateway.

mod common;

use common::origin::{Behavior, Origin};
use common::{client, eventually, simple_config, End, Ended, Gateway, RawConn, ID};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const HEALTH: &str = "      health_check: {path: /healthz, interval: 200ms, timeout: 500ms, healthy_after: 2, unhealthy_after: 2}\n      passive_ejection: {failures: 3, cooldown: 1s}\n";

async fn origins(n: usize) -> Vec<Origin> {
    let mut v = Vec::new();
    for _ in 0..n {
        let o = Origin::start().await;
        o.set_body(ID, "asset");
        v.push(o);
    }
    v
}

fn addrs(origins: &[Origin]) -> Vec<SocketAddr> {
    origins.iter().map(|o| o.addr).collect()
}

/// Sends requests one after another until `stop`, counting them in `done`; returns (status,
/// served_by) per request.
fn load(
    gw_url: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<(u16, String)>> {
    tokio::spawn(async move {
        let c = client();
        let mut out = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            done.fetch_add(1, Ordering::SeqCst);
            match c.get(&gw_url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let by = r
                        .headers()
                        .get("x-served-by")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let ok = r.text().await.map(|b| b == "asset").unwrap_or(false);
                    out.push((if ok { status } else { 599 }, by));
                }
                Err(_) => out.push((0, String::new())),
            }
        }
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_fails_over_and_follows_health_checks() {
    let mut os = origins(3).await;
    // Passive ejection off: only the health checks can keep the stopped peer out (with it on,
    // the load's connect failures ejected the peer too, and the test passed with the health
    // results ignored). Ejection has its own test, connect_failures_eject_a_peer_without_active_checks.
    let health_only = HEALTH.replace(
        "passive_ejection: {failures: 3, cooldown: 1s}",
        "passive_ejection: {failures: 0}",
    );
    assert_ne!(health_only, HEALTH);
    let gw = Gateway::start(&simple_config(&addrs(&os), &health_only));
    let url = gw.asset_url(ID);
    let c = client();

    // Each peer gets its share.
    for _ in 0..300 {
        assert_eq!(c.get(&url).send().await.unwrap().text().await.unwrap(), "asset");
    }
    let shares: Vec<usize> = os.iter().map(|o| o.asset_requests().len()).collect();
    eprintln!("round robin over 300 requests: {shares:?}");
    for s in &shares {
        assert!((90..=110).contains(s), "uneven shares {shares:?}");
    }

    // Stop one peer under load: no client request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let running = load(url.clone(), stop.clone(), done.clone());
    eventually("the load is under way", || done.load(Ordering::SeqCst) >= 20).await;
    let dead = os[1].addr;
    os[1].stop();
    gw.wait_for_log(|l| l.contains(&format!("peer {dead} becomes unhealthy")))
        .await;
    // Requests sent from now on, while the peer is marked down, never try it.
    for i in 0..30 {
        let (status, body) = gw.fetch(ID, &format!("down-{i}")).await;
        assert_eq!((status, body.as_str()), (200, "asset"));
        let line = gw.access_line(&format!("down-{i}")).await;
        assert!(
            line.contains("attempts=1") && !line.contains(&dead.to_string()),
            "the down peer was attempted: {line}"
        );
    }

    // Start it again on the same address: it gets traffic again.
    os[1] = Origin::start_on(&dead.to_string()).await;
    os[1].set_body(ID, "asset");
    gw.wait_for_log(|l| l.contains(&format!("peer {dead} becomes healthy")))
        .await;
    eventually("the restarted peer serves again", || {
        os[1].asset_requests().len() >= 5
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let results = running.await.unwrap();

    let failed = results.iter().filter(|(s, _)| *s != 200).count();
    let mut per_origin: HashMap<&str, usize> = HashMap::new();
    for (_, by) in &results {
        *per_origin.entry(by.as_str()).or_default() += 1;
    }
    eprintln!(
        "under load: {} requests, {failed} failed, per origin {per_origin:?}",
        results.len(),
    );
    assert_eq!(
        failed,
        0,
        "client requests failed: {:?}",
        results.iter().filter(|(s, _)| *s != 200).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic() {
    let os = origins(2).await;
    let yaml = simple_config(&[], "").replace(
        "peers: []",
        &format!(
            "peers: [\"{}\", {{addr: \"{}\", weight: 3}}]",
            os[0].addr, os[1].addr
        ),
    );
    let gw = Gateway::start(&yaml);
    let c = client();
    for _ in 0..400 {
        c.get(gw.asset_url(ID))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    let (a, b) = (os[0].asset_requests().len(), os[1].asset_requests().len());
    eprintln!("weights 1:3 over 400 requests: {a}:{b}");
    assert!((80..=120).contains(&a) && (280..=320).contains(&b), "{a}:{b}");
}

fn id_for(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i * 2654435761 % (1 << 32), i)
}

async fn map_ids(c: &reqwest::Client, gw: &Gateway, n: usize) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for i in 0..n {
        let id = id_for(i);
        let r = c.get(gw.asset_url(&id)).send().await.unwrap();
        let by = r.headers()["x-served-by"].to_str().unwrap().to_string();
        assert_eq!(r.status(), 404); // these ids are unknown to the origins: their own 404
        r.bytes().await.unwrap();
        m.insert(id, by);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_ids_and_moves_only_the_removed_peers_share() {
    let os = origins(3).await;
    let gw = Gateway::start(&simple_config(
        &addrs(&os),
        &format!("      selection: consistent\n{HEALTH}"),
    ));
    let c = client();
    let first = map_ids(&c, &gw, 1000).await;
    let second = map_ids(&c, &gw, 1000).await;
    assert_eq!(first, second, "the same ids must map to the same peers");

    let removed = os[2].addr.to_string();
    let lived_there = first.values().filter(|by| **by == removed).count();
    eprintln!("consistent: {lived_there} of 1000 ids lived on {removed}");
    assert!(lived_there > 100, "{lived_there}");
    os[2].stop();
    gw.wait_for_log(|l| l.contains(&format!("peer {removed} becomes unhealthy")))
        .await;
    let third = map_ids(&c, &gw, 1000).await;
    let moved: Vec<&String> = first.keys().filter(|id| first[*id] != third[*id]).collect();
    assert_eq!(moved.len(), lived_there, "only the removed peer's ids may move");
    assert!(moved.iter().all(|id| first[*id] == removed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_gives_504() {
    let o = Origin::start().await;
    o.set(ID, Behavior::NeverAnswer);
    let gw = Gateway::start(&simple_config(&[o.addr], "      read_timeout: 1s\n"));
    let r = client().get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("\"error\":\"upstream timed out\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_cut_and_the_client_sees_it_incomplete() {
    let o = Origin::start().await;
    o.set(
        ID,
        Behavior::StallAfter {
            first: 100_000,
            total: 1_000_000,
        },
    );
    let gw = Gateway::start(&simple_config(&[o.addr], "      read_timeout: 1s\n"));
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(format!("GET /content/v1/assets/{ID} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    // The head says 1,000,000 bytes; the connection closes before they all come.
    match conn.response(false).await {
        Err(Ended {
            end: End::Closed,
            partial,
        }) => assert!(partial.starts_with(b"HTTP/1.1 200")),
        other => panic!("expected the connection closed mid-response, got {other:?}"),
    }
    let line = gw
        .wait_for_log(|l| l.contains(" access] ") && l.contains("status=200"))
        .await;
    assert!(line.contains("error="), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_peers_down_is_an_immediate_502_naming_each_peer() {
    let os = origins(3).await;
    let gw = Gateway::start(&simple_config(&addrs(&os), HEALTH));
    for o in &os {
        o.stop();
    }
    for o in &os {
        gw.wait_for_log(|l| l.contains(&format!("peer {} becomes unhealthy", o.addr)))
            .await;
    }
    let (status, body) = gw.fetch(ID, "all-down").await;
    assert_eq!(status, 502);
    assert_eq!(
        body,
        "{\"error\":\"no healthy upstream peer\",\"request_id\":\"all-down\"}\n"
    );
    let line = gw.access_line("all-down").await;
    // No connection was attempted: nothing waited on a peer known to be down.
    assert!(line.contains("attempts=0"), "{line}");
    for o in &os {
        assert!(
            line.contains(&format!("{}: failed health check (", o.addr)),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_eject_a_peer_without_active_checks() {
    let os = origins(2).await;
    let dead_peer = common::dead_peer();
    let dead = dead_peer.addr;
    let mut peers = addrs(&os);
    peers.push(dead);
    let gw = Gateway::start(&simple_config(
        &peers,
        "      passive_ejection: {failures: 2, cooldown: 1h}\n",
    ));
    for i in 0..60 {
        let (status, body) = gw.fetch(ID, &format!("e{i}")).await;
        assert_eq!(status, 200);
        assert_eq!(body, "asset");
    }
    gw.wait_for_log(|l| l.contains(&format!("peer {dead} ejected")))
        .await;
    // In request order: the second failure on the dead peer ejects it; no request after that
    // one may try it again.
    let mut failures_seen = 0;
    let mut tried_after_ejection = Vec::new();
    for i in 0..60 {
        let line = gw.access_line(&format!("e{i}")).await;
        if line.contains(&format!("{dead}: ")) {
            if failures_seen >= 2 {
                tried_after_ejection.push(i);
            }
            failures_seen += 1;
        }
    }
    assert_eq!(
        failures_seen.min(2),
        2,
        "the dead peer was never tried twice; log:\n{}",
        gw.logs().join("\n")
    );
    let attempts_on_dead = tried_after_ejection.len();
    assert_eq!(attempts_on_dead, 0, "an ejected peer was tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_configured_count() {
    let o = Origin::start().await;
    o.set_body(ID, "asset");
    let dead = common::dead_peer();
    let peers = [dead.addr, o.addr];
    let no_ejection = "      passive_ejection: {failures: 0}\n";

    // retries: 0: a request that lands on the dead peer is not retried.
    let gw = Gateway::start(&simple_config(
        &peers,
        &format!("      retries: 0\n{no_ejection}"),
    ));
    let mut statuses = Vec::new();
    for i in 0..20 {
        let (status, _) = gw.fetch(ID, &format!("a{i}")).await;
        statuses.push(status);
        let line = gw.access_line(&format!("a{i}")).await;
        assert!(line.contains("attempts=1"), "{line}");
    }
    assert!(statuses.contains(&502) && statuses.contains(&200), "{statuses:?}");
    drop(gw);

    // retries: 1: every request succeeds; the ones that met the dead peer took two attempts.
    let gw = Gateway::start(&simple_config(
        &peers,
        &format!("      retries: 1\n{no_ejection}"),
    ));
    let mut failed_over = 0;
    for i in 0..20 {
        let (status, body) = gw.fetch(ID, &format!("b{i}")).await;
        assert_eq!(status, 200);
        assert_eq!(body, "asset");
        let line = gw.access_line(&format!("b{i}")).await;
        if line.contains("attempts=2") {
            failed_over += 1;
            assert!(line.contains(&format!("upstream={}", o.addr)), "{line}");
        } else {
            assert!(line.contains("attempts=1"), "{line}");
        }
    }
    assert!(failed_over > 0, "no request met the dead peer");
}
