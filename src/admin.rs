//! The admin listener: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz` (every
//! upstream has a usable peer; a DNS upstream has resolved at least once). Anything else is 404. The main listener never serves these.
//! Its clients get the main listener's protections: `app` wraps it in the same head deadline,
//! and each request gets the same head checks and keep-alive rules.

use crate::config::Downstream;
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
}

impl Admin {
    pub(crate) fn new(upstreams: Arc<Upstreams>, d: &Downstream) -> Admin {
        Admin {
            upstreams,
            limits: d.limits,
            keepalive_secs: d.keepalive_secs(),
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
        let req = session.req_header();
        if !downstream::is_allowed_method(&req.method) {
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
