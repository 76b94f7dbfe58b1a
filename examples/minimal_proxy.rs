//! A minimal Pingora proxy, for the benchmark only: what Pingora itself costs per request,
//! without anything asset-gateway adds. Routes `/content/v1/assets/<x>` to
//! `127.0.0.1:<port>/v1/assets/<x>` with Pingora's defaults (allocator, runtime, buffers).
//!
//!     cargo run --release --example minimal_proxy -- <listen> <upstream>

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};

struct Minimal {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Minimal {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        req: &mut pingora::http::RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let path = req.uri.path().replacen("/content", "", 1);
        req.set_uri(path.parse().map_err(|_| Error::new(ErrorType::InternalError))?);
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut server = Server::new(None).expect("server");
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Minimal {
            upstream: args[2].clone(),
        },
    );
    proxy.add_tcp(&args[1]);
    server.add_service(proxy);
    server.run_forever();
}
