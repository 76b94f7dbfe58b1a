//! The origin of the cache soak (`bench/soak --cache`): many assets whose bytes change over
//! time, each response naming the version it carries, so a client can check every body it
//! gets against the bytes its own ETag names.
//!
//! `soak_origin PORT ASSETS PERIOD_S MAX_AGE_S` serves `/v1/assets/<id>` for the ids listed by
//! `GET /index` (one per line, with its size). Asset `i` has a size between 4 KiB and 6 MiB and
//! is at version `(seconds since start + i) / PERIOD_S` (0 keeps version 0); its body is
//! [`body`] of (id, version), its ETag `"v<version>"`, its `Cache-Control: max-age=MAX_AGE_S`.
//! A request whose `If-None-Match` names the current version gets 304.

#[path = "../tests/common/origin.rs"]
mod origin;

use bytes::Bytes;
use futures::FutureExt;
use origin::{Behavior, Origin, Seen};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The bytes of version `version` of asset `id`, `size` long: 4 KiB blocks, each starting with
/// `<id>/<version>/<block>/` and filled with a pattern that depends on the block, so a block
/// from another asset, version or offset never matches (`bench/cache_soak.py` builds the same).
fn body(id: &str, version: u64, size: usize) -> Vec<u8> {
    let base: Vec<u8> = (0..4096 + 251).map(|j| (j % 251) as u8).collect();
    let mut out = Vec::with_capacity(size);
    let mut block = 0usize;
    while out.len() < size {
        let mut b = format!("{id}/{version}/{block}/").into_bytes();
        let from = (block * 7) % 251;
        b.extend_from_slice(&base[from..from + 4096 - b.len()]);
        let n = b.len().min(size - out.len());
        out.extend_from_slice(&b[..n]);
        block += 1;
    }
    out
}

/// Sizes spread over 4 KiB .. 6 MiB, more small than large (log-uniform).
fn size(i: u64) -> usize {
    let x = (i.wrapping_mul(2_654_435_761) % 1_000_003) as f64 / 1_000_003.0;
    (4096.0 * 1536f64.powf(x)) as usize
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let port = arg(1, 19501);
    let assets = arg(2, 120);
    let period = arg(3, 0);
    let max_age = arg(4, 3600);
    let o = Origin::start_on(&format!("127.0.0.1:{port}")).await;
    let start = Instant::now();
    let cache: Arc<Mutex<HashMap<(u64, u64), Bytes>>> = Default::default();
    let mut index = String::new();
    for i in 0..assets {
        let id = format!("{:08x}-0000-4000-8000-{:012x}", 0x50a4_0000u64 + i, i);
        let len = size(i);
        index.push_str(&format!("{id} {len}\n"));
        let (cache, name) = (cache.clone(), id.clone());
        let respond = move |req: &Seen| {
            let version = match period {
                0 => 0,
                p => (start.elapsed().as_secs() + i) / p,
            };
            let etag = format!("\"v{version}\"");
            let headers =
                format!("content-type: video/mp4\r\netag: {etag}\r\ncache-control: max-age={max_age}\r\n");
            let reply = if req.header("if-none-match") == Some(etag.as_str()) {
                (format!("{} Status", 304), headers, Vec::new())
            } else {
                let mut c = cache.lock().unwrap();
                c.retain(|(a, v), _| *a != i || *v + 1 >= version);
                let b = c
                    .entry((i, version))
                    .or_insert_with(|| Bytes::from(body(&name, version, len)))
                    .clone();
                (
                    format!("{} Status", 200),
                    headers,
                    Some(b).map(|b| b.to_vec()).unwrap_or_default(),
                )
            };
            async move { reply }.boxed()
        };
        o.set(&id, Behavior::Scripted(Arc::new(respond)));
    }
    o.set(
        "index",
        Behavior::Body {
            body: index.into(),
            content_type: "text/plain",
        },
    );
    eprintln!("soak origin on {} with {assets} assets", o.addr);
    tokio::signal::ctrl_c().await.ok();
}
