//! Two gateway tiers chained on 127.0.0.1, as deploy/README.md lays them out for many
//! replicas: an edge gateway whose upstream is a tier of gateways, chosen with
//! `selection: consistent`, so each asset always goes through the same tier replica (where a
//! cache keeps it once).

mod common;

use common::origin::Origin;
use common::{client, simple_config, Gateway};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// The edge's config: the tier replicas as peers, hashed on the asset id; the public path is
/// passed through unchanged.
fn edge_config(tier: &[SocketAddr]) -> String {
    let peers: Vec<String> = tier.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}"]
  upstreams:
    tier:
      peers: [{}]
      selection: consistent
      retries: 1
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: tier
      rewrite: /content/v1/assets/{{id}}
"#,
        peers.join(", ")
    )
}

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{i:08x}-0000-4000-8000-{:012x}", i * 7919))
        .collect()
}

/// Waits until the gateways have written `n` access lines between them (the access log is
/// written in batches).
async fn wait_access_lines(gws: &[&Gateway], n: usize) {
    common::eventually(&format!("{n} access lines"), || {
        gws.iter().map(|g| g.access_lines().len()).sum::<usize>() >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_tier_sends_each_asset_to_one_replica_of_the_next_tier() {
    let origin = Origin::start().await;
    let assets = ids(24);
    for (i, id) in assets.iter().enumerate() {
        origin.set_body(id, format!("asset number {i}"));
    }
    let tier_a = Gateway::start(&simple_config(&[origin.addr], ""));
    let tier_b = Gateway::start(&simple_config(&[origin.addr], ""));
    let edge = Gateway::start(&edge_config(&[tier_a.addr, tier_b.addr]));

    let c = client();
    for round in 0..3 {
        for (i, id) in assets.iter().enumerate() {
            let r = c
                .get(edge.asset_url(id))
                .header("x-request-id", format!("two-tier-{round}-{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(
                r.headers()["x-request-id"],
                format!("two-tier-{round}-{i}").as_str()
            );
            assert_eq!(r.text().await.unwrap(), format!("asset number {i}"));
        }
    }
    let total = 3 * assets.len();
    wait_access_lines(&[&tier_a, &tier_b], total).await;
    let (a, b) = (tier_a.access_lines(), tier_b.access_lines());
    assert_eq!(a.len() + b.len(), total, "a: {a:?}\nb: {b:?}");

    // Every asset went through exactly one tier replica, all three times.
    let mut seen: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (replica, lines) in [("a", &a), ("b", &b)] {
        for l in lines.iter() {
            let id = assets
                .iter()
                .find(|id| l.contains(id.as_str()))
                .unwrap_or_else(|| panic!("no known asset in {l}"));
            seen.entry(id.as_str()).or_default().insert(replica);
        }
    }
    for id in &assets {
        assert_eq!(
            seen[id.as_str()].len(),
            1,
            "{id} went through {:?}",
            seen[id.as_str()]
        );
    }
    // Both replicas have a share (24 ids on a ketama ring of two peers).
    assert!(!a.is_empty() && !b.is_empty(), "a: {}, b: {}", a.len(), b.len());

    // The request id the client chose reaches the origin through both tiers, and each tier
    // appended its client's address to X-Forwarded-For.
    let seen = origin.asset_requests();
    assert_eq!(seen.len(), total);
    let last = seen.last().unwrap();
    assert!(last.header("x-request-id").unwrap().starts_with("two-tier-2-"));
    assert_eq!(
        last.header("x-forwarded-for"),
        Some("127.0.0.1, 127.0.0.1"),
        "{last:?}"
    );
}

/// Which tier replica served each asset, from the replicas' access lines after `skip`.
fn placement(tier: &[&Gateway], assets: &[String], skip: &[usize]) -> HashMap<String, usize> {
    let mut at = HashMap::new();
    for (r, gw) in tier.iter().enumerate() {
        for l in gw.access_lines().iter().skip(skip[r]) {
            let id = assets.iter().find(|id| l.contains(id.as_str())).unwrap();
            assert_eq!(at.insert(id.clone(), r).unwrap_or(r), r, "{id} on two replicas");
        }
    }
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_replica_going_away_moves_only_its_own_assets() {
    let origin = Origin::start().await;
    let assets = ids(30);
    for (i, id) in assets.iter().enumerate() {
        origin.set_body(id, format!("asset number {i}"));
    }
    let a = Gateway::start(&simple_config(&[origin.addr], ""));
    let b = Gateway::start(&simple_config(&[origin.addr], ""));
    let mut gone = Gateway::start(&simple_config(&[origin.addr], ""));
    let edge = Gateway::start(&edge_config(&[a.addr, b.addr, gone.addr]));
    let c = client();
    let fetch_all = || async {
        for (i, id) in assets.iter().enumerate() {
            let r = c.get(edge.asset_url(id)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{id}");
            assert_eq!(r.text().await.unwrap(), format!("asset number {i}"));
        }
    };
    fetch_all().await;
    wait_access_lines(&[&a, &b, &gone], assets.len()).await;
    let first = placement(&[&a, &b, &gone], &assets, &[0, 0, 0]);
    assert_eq!(first.len(), assets.len());
    assert!((0..3).all(|r| first.values().any(|&v| v == r)), "{first:?}");

    // One replica stops: its assets fail over (connect refused, retried on the next peer of
    // the ring); every other asset stays where it was.
    gone.child().kill().unwrap();
    gone.child().wait().unwrap();
    let skip = [a.access_lines().len(), b.access_lines().len(), 0];
    fetch_all().await;
    wait_access_lines(&[&a, &b], skip[0] + skip[1] + assets.len()).await;
    let second = placement(&[&a, &b], &assets, &skip);
    assert_eq!(second.len(), assets.len());
    for id in &assets {
        if first[id] != 2 {
            assert_eq!(second[id], first[id], "{id} moved although its replica stayed");
        }
    }
}

/// The layout of deploy/two-tier: the edge caches nothing and hashes each asset onto one
/// cache-tier replica, which caches it. Each asset reaches the origin once, whatever the
/// number of replicas and requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cache_tier_each_asset_reaches_the_origin_once() {
    let origin = Origin::start().await;
    let assets = ids(16);
    for (i, id) in assets.iter().enumerate() {
        origin.set_body(id, format!("asset number {i}"));
    }
    let cache_tier =
        simple_config(&[origin.addr], "").replace("  upstreams:", "  cache: {memory: 16MiB}\n  upstreams:");
    let tier: Vec<Gateway> = (0..3).map(|_| Gateway::start(&cache_tier)).collect();
    let edge = Gateway::start(&edge_config(&tier.iter().map(|g| g.addr).collect::<Vec<_>>()));
    let c = client();
    for round in 0..4 {
        for (i, id) in assets.iter().enumerate() {
            let r = c.get(edge.asset_url(id)).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let status = r.headers()["cache-status"].to_str().unwrap().to_string();
            if round > 0 {
                assert!(status.starts_with("asset-gateway; hit"), "{id}: {status}");
            }
            assert_eq!(r.text().await.unwrap(), format!("asset number {i}"));
        }
        // A fill commits once its response is complete; wait for every replica to have
        // logged this round before the next one expects hits.
        let tiers: Vec<&Gateway> = tier.iter().collect();
        wait_access_lines(&tiers, (round + 1) * assets.len()).await;
    }
    let per_asset: HashMap<String, usize> =
        origin
            .asset_requests()
            .iter()
            .fold(HashMap::new(), |mut m, seen| {
                *m.entry(seen.target.clone()).or_default() += 1;
                m
            });
    assert_eq!(per_asset.len(), assets.len(), "{per_asset:?}");
    assert!(per_asset.values().all(|&n| n == 1), "{per_asset:?}");
}
