//! The cache's admin view, for the cache tests: `GET /cache`, and waiting until every fill
//! and every disk write has ended (a disk copy is committed after its fill's last byte).
#![allow(dead_code)]

use super::{client, EVENTUALLY};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `GET /cache` on the admin listener.
pub async fn cache_json(admin: SocketAddr) -> serde_json::Value {
    let r = client()
        .get(format!("http://{admin}/cache"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// Waits until no fill and no disk write is in flight.
pub async fn settled(admin: SocketAddr) {
    let start = Instant::now();
    loop {
        let j = cache_json(admin).await;
        let disk_writes = j["disk"]["writes_in_flight"].as_u64().unwrap_or(0);
        if j["fills_in_flight"] == 0 && disk_writes == 0 {
            return;
        }
        assert!(start.elapsed() < EVENTUALLY, "a fill never ended: {j}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
