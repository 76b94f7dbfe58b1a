//! The admin listener: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz` (every
//! upstream has a usable peer). Anything else is 404. The main listener never serves these.

use crate::metrics;
use crate::upstreams::Upstreams;
use async_trait::async_trait;
use http::{header, HeaderValue, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct Admin {
    pub upstreams: Arc<Upstreams>,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"method not allowed\n".to_vec(),
            );
        }
        match req.uri.path() {
            "/metrics" => {
                let peers = self
                    .upstreams
                    .iter()
                    .flat_map(|u| u.peer_states().map(move |(peer, ok)| (u.name.clone(), peer, ok)));
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    metrics::scrape(peers),
                )
            }
            "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let not_ready: Vec<String> = self
                    .upstreams
                    .iter()
                    .filter(|u| !u.has_usable_peer())
                    .map(|u| format!("{:?}", u.name))
                    .collect();
                if not_ready.is_empty() {
                    reply(StatusCode::OK, "application/json", b"{\"ready\":true}\n".to_vec())
                } else {
                    let body = format!(
                        "{{\"ready\":false,\"upstreams_without_healthy_peer\":[{}]}}\n",
                        not_ready.join(",")
                    );
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "application/json",
                        body.into_bytes(),
                    )
                }
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
