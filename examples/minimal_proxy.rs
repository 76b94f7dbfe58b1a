//! A minimal Pingora proxy, for the benchmark only: what Pingora itself costs per request,
//! without anything asset-gateway adds. Routes `/content/v1/assets/<x>` to
//! `127.0.0.1:<port>/v1/assets/<x>`.
//!
//! Built in this crate it runs on the patched Pingora (`vendor/`) with the same Pingora
//! settings as the gateway (body read size, task queue depth, lazy head buffer, header case);
//! `bench/pristine/` builds the same file against pristine Pingora 0.9.1, with
//! `--cfg pristine_pingora`, where those settings do not exist. Both use the gateway's
//! listener settings (no read or write buffer on client connections), so the two columns
//! differ by the patches alone.
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
        #[allow(unused_mut)]
        let mut peer = HttpPeer::new(self.upstream.as_str(), false, String::new());
        #[cfg(not(pristine_pingora))]
        {
            peer.options.h1_body_read_size = Some(16 * 1024);
            peer.options.h1_discard_header_case = true;
            peer.options.h1_owned_body_reads = true;
        }
        Ok(Box::new(peer))
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
    #[allow(unused_mut)]
    let mut proxy = http_proxy_service(
        &server.configuration,
        Minimal {
            upstream: args[2].clone(),
        },
    );
    #[cfg(not(pristine_pingora))]
    {
        let app = proxy.app_logic_mut().expect("the proxy app");
        app.set_task_buffer_size(2);
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h1_lazy_header_buf = true;
        options.h1_discard_header_case = true;
        app.server_options = Some(options);
    }
    let buffers = pingora::listeners::L4BufferSettings::unbuffered();
    proxy.add_listener(pingora::listeners::ListenerConfig::tcp(args[1].as_str()).l4_buffer(buffers));
    server.add_service(proxy);
    server.run_forever();
}
