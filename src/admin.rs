//! The admin listener: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz` (every
//! upstream has a usable peer; a DNS upstream has resolved at least once), and with a cache
//! `GET /cache` (sizes), `DELETE /cache/<client path of an asset>` (purge) and
//! `DELETE /cache/<route path with * for the id>` (purge every asset of a route). Anything else
//! is 404. The main listener never serves these.
//! With `admin_token` every endpoint but the probes needs it; without, purges come only from
//! loopback (`access::admin`).
//! Its clients get the main listener's protections: `app` wraps it in the same head deadline,
//! and each request gets the same head checks and keep-alive rules.

use crate::access::admin::AdminGate;
use crate::cache::{policy, Cache};
use crate::config::Downstream;
use crate::routing::{self, Resolution, Router};
use crate::upstreams::{PeerState, Upstreams};
use crate::{downstream, headers, metrics};
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub(crate) struct Admin {
    pub upstreams: Arc<Upstreams>,
    pub limits: downstream::Limits,
    pub keepalive_secs: u64,
    pub cache: Option<&'static Cache>,
    /// To resolve a purge path exactly as the proxy resolves a request path.
    pub router: Router,
    /// `admin_token`, or loopback-only purges.
    gate: AdminGate,
}

impl Admin {
    pub(crate) fn new(
        upstreams: Arc<Upstreams>,
        d: &Downstream,
        cache: Option<&'static Cache>,
        router: Router,
        admin_token: Option<&[u8]>,
    ) -> Admin {
        Admin {
            upstreams,
            limits: d.limits,
            keepalive_secs: d.keepalive_secs(),
            cache,
            router,
            gate: AdminGate::new(admin_token),
        }
    }

    /// `GET /cache` and `DELETE /cache/<path>`; `None` when the request is not for the cache.
    async fn cache_request(&self, method: &http::Method, path: &str) -> Option<Response<Vec<u8>>> {
        let asset_path = match path.strip_prefix("/cache") {
            Some("") => None,
            Some(rest) if rest.starts_with('/') => Some(rest),
            _ => return None,
        };
        let Some(cache) = self.cache else {
            return Some(reply(404, "text/plain", "no cache configured\n"));
        };
        match (method, asset_path) {
            (&http::Method::GET | &http::Method::HEAD, None) => {
                let s = cache.storage.stats();
                // `objects` is the memory tier's count (kept for existing readers);
                // `disk` is null without a disk tier.
                let disk = match s.disk {
                    Some(d) => format!(
                        "{{\"bytes\":{},\"limit\":{},\"objects\":{},\"writes_in_flight\":{},\"state\":\"{}\"}}",
                        d.bytes, d.limit, d.objects, d.writes_in_flight, d.state
                    ),
                    None => "null".to_string(),
                };
                let m = s.memory;
                let body = format!(
                    "{{\"memory_bytes\":{},\"memory_limit\":{},\"objects\":{},\"fills_in_flight\":{},\"memory\":{{\"bytes\":{},\"limit\":{},\"objects\":{}}},\"disk\":{disk}}}\n",
                    m.bytes, m.limit, m.objects, m.fills, m.bytes, m.limit, m.objects
                );
                Some(reply(200, "application/json", body))
            }
            (&http::Method::DELETE, Some(pattern)) if pattern.contains('*') => {
                Some(match self.router.route_of_pattern(pattern) {
                    Some(route) => {
                        let assets = cache.purge_route(&self.router.route(route).template).await;
                        let body = format!("{{\"purged\":{},\"assets\":{assets}}}\n", assets > 0);
                        reply(200, "application/json", body)
                    }
                    None => reply(
                        404,
                        "text/plain",
                        "no route has this path (a route purge puts * in place of {id})\n",
                    ),
                })
            }
            (&http::Method::DELETE, Some(asset_path)) => Some(match self.router.resolve(asset_path) {
                Resolution::Asset { route, id } => {
                    let tag = policy::asset_tag(&self.router.route(route).template, id.as_str());
                    let purged = cache.storage.purge_asset(&tag).await;
                    reply(200, "application/json", format!("{{\"purged\":{purged}}}\n"))
                }
                Resolution::BadId { .. } => reply(400, "text/plain", "not a valid asset id\n"),
                Resolution::NoRoute => reply(404, "text/plain", "no route has this path\n"),
            }),
            _ => Some(reply(405, "text/plain", "method not allowed\n")),
        }
    }
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
            return reply(reject.status, "text/plain", format!("{}\n", reject.message));
        }
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if let Some(answer) = self.gate.check(session.req_header(), peer) {
            return answer;
        }
        let req = session.req_header();
        if let Some(answer) = self.cache_request(&req.method, req.uri.path()).await {
            return answer;
        }
        if !routing::is_allowed_method(req.method.as_str()) {
            return reply(405, "text/plain", "method not allowed\n");
        }
        match req.uri.path() {
            "/metrics" => {
                let states: Vec<(&str, Vec<_>)> = self
                    .upstreams
                    .iter()
                    .map(|u| (u.name.as_str(), u.peer_states()))
                    .collect();
                let peers = states.iter().flat_map(|(upstream, peers)| {
                    peers
                        .iter()
                        .map(|(peer, state)| (*upstream, peer.label.as_str(), *state == PeerState::Usable))
                });
                let counts = self.upstreams.iter().map(|u| (u.name.as_str(), u.peer_count()));
                reply(200, "text/plain; version=0.0.4", metrics::scrape(peers, counts))
            }
            "/healthz" => reply(200, "text/plain", "ok\n"),
            "/readyz" => {
                let names = |pick: &dyn Fn(&crate::upstreams::Upstream) -> bool| -> Vec<String> {
                    self.upstreams
                        .iter()
                        .filter(|u| pick(u))
                        .map(|u| format!("{:?}", u.name))
                        .collect()
                };
                let unresolved = names(&|u| u.never_resolved());
                let not_ready = names(&|u| !u.never_resolved() && !u.has_usable_peer());
                if not_ready.is_empty() && unresolved.is_empty() {
                    reply(200, "application/json", "{\"ready\":true}\n")
                } else {
                    // The DNS field only when it applies (the body stays as before without DNS).
                    let unresolved = match unresolved.is_empty() {
                        true => String::new(),
                        false => format!(",\"upstreams_never_resolved\":[{}]", unresolved.join(",")),
                    };
                    let body = format!(
                        "{{\"ready\":false,\"upstreams_without_healthy_peer\":[{}]{unresolved}}}\n",
                        not_ready.join(",")
                    );
                    reply(503, "application/json", body)
                }
            }
            _ => reply(404, "text/plain", "not found\n"),
        }
    }
}

fn reply(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    match headers::own_answer(status, content_type, body.len(), None) {
        Ok(h) => Response::from_parts(h.as_owned_parts(), body),
        // Not reached: the values above are all valid header values.
        Err(_) => Response::new(body),
    }
}
