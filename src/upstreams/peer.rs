//! One peer of an upstream: its connection options, prepared once at start, and its state
//! (passive ejection, active health check and its last failure). A peer lives in the
//! `Backend.ext` of Pingora's load balancer (as River keeps its peers), so the backend that
//! selection or a health check hands us carries it: no table keyed by address beside it.

use super::ejection::Ejection;
use crate::config;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::Backend;
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora::{Error, ErrorType};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The address as configured (for logs and metrics).
    pub label: String,
    /// `Host` sent to this peer.
    pub host: http::HeaderValue,
    /// Cloned for each attempt.
    http: HttpPeer,
    pub ejection: Ejection,
    check: Option<Check>,
    /// `Some` for a peer found in DNS on a checked upstream: it takes no request before its
    /// first passing check (Pingora counts a new backend as healthy from the start).
    passed_first_check: Option<AtomicBool>,
}

/// An active health check of one peer (with the peer's `Host` and TLS), and why it last
/// failed.
struct Check {
    http: HttpHealthCheck,
    last_error: Mutex<Option<String>>,
}

impl Peer {
    pub(crate) fn new(spec: &config::Peer, up: &config::Upstream) -> Peer {
        let check = up.health_check.as_ref().map(|hc| {
            let timeouts = config::Timeouts {
                connect: hc.timeout,
                read: hc.timeout,
                write: hc.timeout,
                idle: up.timeouts.idle,
            };
            // The host given here only goes into the request replaced below.
            let mut http = HttpHealthCheck::new("", false);
            http.peer_template = http_peer(spec.addr, up, timeouts);
            if let Ok(mut req) = pingora::http::RequestHeader::build("GET", hc.path.as_bytes(), None) {
                let _ = req.insert_header("host", spec.host.clone());
                let _ = req.insert_header("user-agent", "asset-gateway-health-check");
                http.req = req;
            }
            let expect = hc.expect_status.clone();
            http.validator = Some(Box::new(move |resp| {
                let status = resp.status.as_u16();
                if expect.contains(&status) {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unexpected status", status),
                        format!("status {status}"),
                    )
                }
            }));
            Check {
                http,
                last_error: Mutex::new(None),
            }
        });
        Peer {
            addr: spec.addr,
            label: spec.label.clone(),
            host: spec.host.clone(),
            http: http_peer(spec.addr, up, up.timeouts),
            ejection: Ejection::new(up.ejection),
            passed_first_check: (up.discovery.is_some() && check.is_some()).then(|| AtomicBool::new(false)),
            check,
        }
    }

    /// The Pingora backend for this peer, carrying the peer.
    pub(crate) fn backend(self: Arc<Self>, weight: usize) -> Backend {
        let mut b = Backend {
            addr: pingora::protocols::l4::socket::SocketAddr::Inet(self.addr),
            weight,
            ext: Default::default(),
        };
        b.ext.insert(self);
        b
    }

    /// The peer a backend of ours carries.
    pub(crate) fn of(backend: &Backend) -> Option<&Arc<Peer>> {
        backend.ext.get::<Arc<Peer>>()
    }

    /// The options for one attempt.
    pub(crate) fn http(&self) -> Box<HttpPeer> {
        Box::new(self.http.clone())
    }

    /// Runs this peer's active health check and remembers why it failed.
    pub(crate) async fn check(&self, target: &Backend) -> pingora::Result<()> {
        use pingora::lb::health_check::HealthCheck;
        let Some(check) = &self.check else {
            return Ok(());
        };
        let result = check.http.check(target).await;
        if let (Ok(()), Some(passed)) = (&result, &self.passed_first_check) {
            passed.store(true, Ordering::Relaxed);
        }
        if let Ok(mut last) = check.last_error.lock() {
            *last = result.as_ref().err().map(|e| e.to_string());
        }
        result
    }

    /// False while a peer found in DNS waits for its first passing health check.
    pub(crate) fn warm(&self) -> bool {
        self.passed_first_check
            .as_ref()
            .is_none_or(|p| p.load(Ordering::Relaxed))
    }

    pub(crate) fn last_check_error(&self) -> Option<String> {
        self.check.as_ref()?.last_error.lock().ok()?.clone()
    }
}

/// The one place a peer's connection options are set: the data path passes the upstream's
/// timeouts, health checks their own `timeout` for all but the pool's idle time.
fn http_peer(addr: SocketAddr, up: &config::Upstream, t: config::Timeouts) -> HttpPeer {
    let mut peer = match &up.tls {
        None => HttpPeer::new(addr, false, String::new()),
        Some(tls) => {
            let mut p = HttpPeer::new(addr, true, tls.sni.clone());
            apply_tls(&mut p, tls);
            p
        }
    };
    let o = &mut peer.options;
    o.connection_timeout = Some(t.connect);
    // TCP connect and TLS handshake together stay within connect_timeout.
    o.total_connection_timeout = Some(t.connect);
    o.read_timeout = Some(t.read);
    o.write_timeout = Some(t.write);
    o.idle_timeout = Some(t.idle);
    // Pingora reads 64 KiB per body read; with a slow client each read waits in memory.
    o.h1_body_read_size = Some(up.body_read_size);
    // One header map per response instead of two (see `app`: the same for requests).
    o.h1_discard_header_case = true;
    // Each body read goes on as the buffer it was read into, not a copy (patched Pingora:
    // one user-space copy of each body byte less).
    o.h1_owned_body_reads = true;
    // An asset gateway never tunnels: no protocol upgrade is forwarded.
    o.http_upstream_request_policy = HttpUpstreamRequestPolicy::deny_upgrades();
    peer
}

/// The CA and client certificate, parsed at start by `config` (Pingora's rustls path panics
/// on bytes it cannot parse).
fn apply_tls(peer: &mut HttpPeer, tls: &config::Tls) {
    use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
    if let Some(ca) = &tls.ca {
        let list: Vec<WrappedX509> = ca
            .iter()
            .map(|der| WrappedX509::new(der.clone(), parse_x509))
            .collect();
        peer.options.ca = Some(Arc::from(list.into_boxed_slice()));
    }
    if let Some(client) = &tls.client {
        peer.client_cert_key = Some(Arc::new(CertKey::new(client.chain.clone(), client.key.clone())));
    }
}
