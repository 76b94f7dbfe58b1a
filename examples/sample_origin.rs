//! A sample asset service for trying the gateway: `cargo run --example sample_origin`.
//!
//! Listens on 127.0.0.1:9001 and 127.0.0.1:9002 (the peers in conf/asset-gateway.yaml) and
//! serves `/v1/assets/<uuid>` with ETag, Range and HEAD support.

#[path = "../tests/common/origin.rs"]
mod origin;

use origin::{Behavior, Origin};

const IMAGE_SVG: &str = "6f9619ff-8b86-4011-b42d-00c04fc964ff";
const IMAGE_BMP: &str = "0b3e8b1c-2f4d-4c6e-9a1b-7d2e5f8a9c30";
const LARGE: &str = "c56a4180-65aa-42ec-a945-5fd21dec0538";

#[tokio::main]
async fn main() {
    let ports: Vec<String> = std::env::args().skip(1).collect();
    let ports = if ports.is_empty() {
        vec!["9001".into(), "9002".into()]
    } else {
        ports
    };
    let mut origins = Vec::new();
    for port in &ports {
        let o = Origin::start_on(&format!("127.0.0.1:{port}")).await;
        o.set(
            IMAGE_SVG,
            Behavior::Body {
                body: svg(port).into(),
                content_type: "image/svg+xml",
            },
        );
        o.set(
            IMAGE_BMP,
            Behavior::Body {
                body: bmp(256, 256).into(),
                content_type: "image/bmp",
            },
        );
        o.set(
            LARGE,
            Behavior::Ranged {
                size: 100 * 1024 * 1024,
            },
        );
        eprintln!("sample origin listening on {}", o.addr);
        origins.push(o);
    }
    eprintln!("assets (through the gateway on 127.0.0.1:8080):");
    eprintln!("  curl -v http://127.0.0.1:8080/content/v1/assets/{IMAGE_SVG}           # an SVG image");
    eprintln!("  curl -o image.bmp http://127.0.0.1:8080/content/v1/assets/{IMAGE_BMP}  # a 256x256 BMP");
    eprintln!("  curl -o /dev/null http://127.0.0.1:8080/content/v1/assets/{LARGE}  # 100 MiB, streamed");
    eprintln!("  curl -o /dev/null -H 'Range: bytes=104000000-' http://127.0.0.1:8080/content/v1/assets/{LARGE}  # a seek into it");
    tokio::signal::ctrl_c().await.ok();
}

/// An SVG that names the instance that served it, to watch load balancing.
fn svg(port: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"320\" height=\"120\">\
         <rect width=\"320\" height=\"120\" fill=\"#1d4ed8\"/>\
         <text x=\"20\" y=\"70\" font-size=\"28\" fill=\"white\">served by :{port}</text></svg>\n"
    )
}

/// A 24-bit BMP with a colour gradient.
fn bmp(w: u32, h: u32) -> Vec<u8> {
    let row = (w * 3).div_ceil(4) * 4;
    let size = 54 + row * h;
    let mut b = Vec::with_capacity(size as usize);
    b.extend_from_slice(b"BM");
    for v in [size, 0, 54, 40, w, h] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    for v in [0u32, row * h, 2835, 2835, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for y in 0..h {
        for x in 0..w {
            b.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 160]);
        }
        b.resize(b.len() + (row - w * 3) as usize, 0);
    }
    b
}
