//! The admin listener: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz` (every
//! upstream has a usable peer). Anything else is 404. The main listener never serves these.

use crate::downstream::{self, Limits};
use crate::metrics;
use crate::upstreams::Upstreams;
use async_trait::async_trait;
use http::{header, HeaderValue, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct Admin {
    pub upstreams: Arc<Upstreams>,
    /// The main listener's head limits and idle keep-alive limit apply here too (its
    /// `header_timeout` too: `app` wraps this service like the proxy).
    pub limits: Limits,
    pub keepalive_secs: u64,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Pingora's `ServeHttp` keeps every connection alive for 60 s, even one the client
        // asked to close; apply the client's wish and our idle limit instead.
        let keep = downstream::client_wants_keepalive(session.req_header());
        session.set_keepalive(keep.then_some(self.keepalive_secs));
        let checked = self
            .limits
            .check(session.req_header())
            .and_then(|()| downstream::sanitize(session.req_header_mut()));
        if let Err(reject) = checked {
            session.set_keepalive(None);
            let status = StatusCode::from_u16(reject.status).unwrap_or(StatusCode::BAD_REQUEST);
            return reply(status, "text/plain", format!("{}\n", reject.message).into_bytes());
        }
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
