//! Upstreams: their peers, how a peer is selected (weights, consistent hashing, active health,
//! passive ejection), and the connection options prepared for each peer (timeouts, pool idle
//! time, TLS, extra headers).

use crate::config::{EjectionConf, GatewayConf, HealthCheckConf, Selection, UpstreamConf};
use crate::metrics::UpstreamMetrics;
use async_trait::async_trait;
use log::{info, warn};
use pingora::lb::discovery::Static;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::services::background::GenBackgroundService;
use pingora::services::ServiceWithDependents;
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora::{Error, ErrorType};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bounds the walk over a selection ring when looking for a usable peer (Pingora's examples
/// use the same figure).
const MAX_SELECT_ITERATIONS: usize = 256;

/// One peer, with everything needed to connect to it prepared at start-up.
struct Peer {
    /// The peer with its timeouts, TLS and pool options; cloned per attempt.
    http: HttpPeer,
    /// `Host` sent upstream (`None` if the configured text is not a valid header value).
    host: Option<http::HeaderValue>,
    /// The address as configured (for logs).
    label: String,
    /// Consecutive connect failures (passive ejection).
    failures: AtomicU32,
    /// While in the future (ms on [`now_ms`]'s clock), the peer is left out; 0 = never ejected.
    ejected_until: AtomicU64,
}

pub struct Upstream {
    pub name: String,
    balancer: Balancer,
    peers: PeerTable,
    /// Extra peers tried after a connect failure.
    pub retries: usize,
    /// Added to every upstream request. Marked sensitive: `Debug` never shows them.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    ejection: EjectionConf,
    /// Every `host[:port]` that names a peer (configured labels, resolved addresses, the
    /// `Host` sent), lower-case: a redirect to one of them must not reach a client as is.
    authorities: Vec<String>,
    /// Last active health-check failure per peer, for "why is it down" answers.
    health: Option<Arc<PeerChecks>>,
    pub metrics: UpstreamMetrics,
}

/// A peer chosen for one attempt.
pub struct Selected {
    pub addr: SocketAddr,
    pub peer: Box<HttpPeer>,
}

/// Pingora's load balancer for either selection algorithm.
enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Consistent(Arc<LoadBalancer<Consistent>>),
}

impl Balancer {
    fn new(
        selection: Selection,
        peers: BTreeSet<Backend>,
        health: Option<(Box<dyn HealthCheck + Send + Sync>, Duration)>,
    ) -> Balancer {
        fn build<S>(
            peers: BTreeSet<Backend>,
            health: Option<(Box<dyn HealthCheck + Send + Sync>, Duration)>,
        ) -> Arc<LoadBalancer<S>>
        where
            S: BackendSelection + Send + Sync + 'static,
            S::Iter: BackendIter,
        {
            let mut lb = LoadBalancer::<S>::from_backends(Backends::new(Static::new(peers)));
            if let Some((check, every)) = health {
                lb.set_health_check(check);
                // Health checks only run when the balancer is a background service with a
                // frequency (see `services`).
                lb.health_check_frequency = Some(every);
                lb.parallel_health_check = true;
            }
            // Static discovery completes at once; this publishes the peer set.
            let _ = poll_now(lb.update());
            Arc::new(lb)
        }
        match selection {
            Selection::RoundRobin => Balancer::RoundRobin(build(peers, health)),
            Selection::Consistent => Balancer::Consistent(build(peers, health)),
        }
    }

    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Consistent(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
        }
    }

    fn healthy(&self, addr: SocketAddr) -> bool {
        let b = backend(addr, 1);
        match self {
            Balancer::RoundRobin(lb) => lb.backends().ready(&b),
            Balancer::Consistent(lb) => lb.backends().ready(&b),
        }
    }

    fn service(&self, name: String) -> Box<dyn ServiceWithDependents> {
        match self {
            Balancer::RoundRobin(lb) => Box::new(GenBackgroundService::new(name, lb.clone())),
            Balancer::Consistent(lb) => Box::new(GenBackgroundService::new(name, lb.clone())),
        }
    }
}

fn backend(addr: SocketAddr, weight: usize) -> Backend {
    Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
        weight,
        ext: Default::default(),
    }
}

impl Upstream {
    fn build(name: &str, conf: &UpstreamConf) -> Result<Upstream, Vec<String>> {
        let key = format!("gateway.upstreams.{name}");
        let mut problems = Vec::new();
        let template = peer_template(&key, conf)?;
        let mut backends = BTreeSet::new();
        let mut peers = PeerTable::default();
        for (i, pc) in conf.peers.iter().enumerate() {
            let addrs = match pc.addr.to_socket_addrs() {
                Ok(a) => a,
                Err(e) => {
                    problems.push(format!("{key}.peers[{i}]: cannot resolve {:?}: {e}", pc.addr));
                    continue;
                }
            };
            for addr in addrs {
                let mut http = template.clone();
                http._address = pingora::protocols::l4::socket::SocketAddr::Inet(addr);
                backends.insert(backend(addr, pc.weight));
                let peer = Peer {
                    http,
                    host: http::HeaderValue::from_str(conf.host.as_deref().unwrap_or(&pc.addr)).ok(),
                    label: pc.addr.clone(),
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                };
                peers.0.push((addr, peer));
            }
        }
        // Names and values were checked by config validation; the environment is read here.
        let mut headers = Vec::new();
        for (h, template) in &conf.headers {
            let name = http::HeaderName::from_bytes(h.as_bytes()).map_err(|e| e.to_string());
            let value = crate::config::expand_env(template)
                .and_then(|v| http::HeaderValue::from_str(&v).map_err(|e| e.to_string()));
            match (name, value) {
                (Ok(n), Ok(mut v)) => {
                    v.set_sensitive(true);
                    headers.push((n, v));
                }
                (Err(e), _) | (_, Err(e)) => problems.push(format!("{key}.headers.{h}: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let health = conf
            .health_check
            .as_ref()
            .map(|hc| Arc::new(PeerChecks::new(name, hc, peers.iter().map(|(a, p)| (*a, p)))));
        let balancer = Balancer::new(
            conf.selection,
            backends,
            health
                .as_ref()
                .zip(conf.health_check.as_ref())
                .map(|(checks, hc)| {
                    (
                        Box::new(SharedChecks(checks.clone())) as Box<dyn HealthCheck + Send + Sync>,
                        hc.interval.0,
                    )
                }),
        );
        let mut authorities: Vec<String> = peers
            .iter()
            .flat_map(|(addr, p)| {
                let host = p.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or_default();
                [addr.to_string(), p.label.clone(), host.to_string()]
            })
            .filter(|a| !a.is_empty())
            .map(|a| a.to_ascii_lowercase())
            .collect();
        authorities.sort();
        authorities.dedup();
        Ok(Upstream {
            name: name.to_string(),
            balancer,
            peers,
            authorities,
            retries: conf.retries,
            headers,
            ejection: conf.passive_ejection,
            health,
            metrics: UpstreamMetrics::new(name).map_err(|e| vec![e])?,
        })
    }

    /// Picks a peer that is healthy, not ejected and not in `exclude` (the peers this request
    /// could not connect to).
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<Selected> {
        let backend = self.balancer.select_with(key, |b, healthy| {
            healthy
                && b.as_inet()
                    .is_some_and(|a| !exclude.contains(a) && !self.is_ejected(a))
        })?;
        let addr = *backend.as_inet()?;
        let peer = self.peers.get(&addr)?;
        Some(Selected {
            addr,
            peer: Box::new(peer.http.clone()),
        })
    }

    /// Healthy (or not checked) and not ejected.
    fn usable(&self, addr: &SocketAddr) -> bool {
        self.balancer.healthy(*addr) && !self.is_ejected(addr)
    }

    fn is_ejected(&self, addr: &SocketAddr) -> bool {
        self.peers.get(addr).is_some_and(|p| {
            let until = p.ejected_until.load(Relaxed);
            until != 0 && now_ms() < until
        })
    }

    /// Passive health: counts a connect failure; enough in a row eject the peer for the
    /// cool-down. After it, one more failure ejects it again (half-open).
    pub fn record_connect_failure(&self, addr: &SocketAddr, error: &Error) {
        let Some(p) = self.peers.get(addr) else { return };
        self.metrics.connect_failure(&p.label);
        let threshold = self.ejection.failures;
        let n = p.failures.fetch_add(1, Relaxed) + 1;
        if threshold == 0 || n < threshold {
            return;
        }
        let now = now_ms();
        let until = now + self.ejection.cooldown.0.as_millis() as u64;
        let previous = p.ejected_until.swap(until, Relaxed);
        p.failures.store(threshold - 1, Relaxed);
        if previous == 0 || previous <= now {
            warn!(
                "upstream {} peer {} ejected for {:?} after {n} consecutive connect failures (last: {})",
                self.name, p.label, self.ejection.cooldown.0, error
            );
        }
    }

    /// A connection was made: the peer's failure streak ends, and an ejected peer is back.
    pub fn record_connect_success(&self, addr: &SocketAddr) {
        let Some(p) = self.peers.get(addr) else { return };
        if p.failures.load(Relaxed) != 0 {
            p.failures.store(0, Relaxed);
        }
        if p.ejected_until.load(Relaxed) != 0 && p.ejected_until.swap(0, Relaxed) != 0 {
            info!(
                "upstream {} peer {} is back in rotation after a successful connect",
                self.name, p.label
            );
        }
    }

    /// Why each peer is unusable right now, as one line (for the all-peers-down answer).
    pub fn down_reasons(&self) -> String {
        let mut reasons: Vec<String> = self
            .peers
            .iter()
            .map(|(addr, p)| {
                let reason = if !self.balancer.healthy(*addr) {
                    let last = self.health.as_ref().and_then(|h| h.last_error(addr));
                    format!(
                        "failed health check ({})",
                        last.unwrap_or_else(|| "no detail".into())
                    )
                } else if self.is_ejected(addr) {
                    "ejected after repeated connect failures".to_string()
                } else {
                    "available".to_string()
                };
                format!("{}: {reason}", p.label)
            })
            .collect();
        reasons.sort();
        reasons.join("; ")
    }

    /// Each peer (as configured) and whether it can take a request now.
    pub fn peer_states(&self) -> impl Iterator<Item = (String, bool)> + '_ {
        self.peers.iter().map(|(a, p)| (p.label.clone(), self.usable(a)))
    }

    /// Whether at least one peer can take a request now.
    pub fn has_usable_peer(&self) -> bool {
        self.peers.keys().any(|a| self.usable(a))
    }

    /// Whether `authority` (from a URL the upstream sent) names one of this upstream's peers.
    pub fn is_peer_authority(&self, authority: &str) -> bool {
        crate::response::authority_matches(authority, &self.authorities)
    }

    /// The `Host` header value for a peer.
    pub fn host_for(&self, addr: &SocketAddr) -> Option<http::HeaderValue> {
        self.peers.get(addr).and_then(|p| p.host.clone())
    }

    /// The peer's address as written in the config.
    pub fn label_for(&self, addr: &SocketAddr) -> &str {
        self.peers.get(addr).map_or("", |p| p.label.as_str())
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
}

/// An upstream's peers by address. A handful of entries: a linear scan is cheaper than hashing
/// (this is looked up several times per request).
#[derive(Default)]
struct PeerTable(Vec<(SocketAddr, Peer)>);

impl PeerTable {
    fn get(&self, addr: &SocketAddr) -> Option<&Peer> {
        self.0.iter().find(|(a, _)| a == addr).map(|(_, p)| p)
    }

    fn iter(&self) -> impl Iterator<Item = (&SocketAddr, &Peer)> {
        self.0.iter().map(|(a, p)| (a, p))
    }

    fn keys(&self) -> impl Iterator<Item = &SocketAddr> {
        self.0.iter().map(|(a, _)| a)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The `HttpPeer` every peer of an upstream starts from: timeouts, pool idle time, TLS.
fn peer_template(key: &str, conf: &UpstreamConf) -> Result<HttpPeer, Vec<String>> {
    let placeholder: SocketAddr = ([0, 0, 0, 0], 1).into();
    let mut peer = match &conf.tls {
        None => HttpPeer::new(placeholder, false, String::new()),
        Some(tls) => {
            let mut p = HttpPeer::new(placeholder, true, tls.sni.clone());
            tls::apply(&format!("{key}.tls"), tls, &mut p)?;
            p
        }
    };
    let o = &mut peer.options;
    o.connection_timeout = Some(conf.connect_timeout.0);
    // TCP connect and TLS handshake together stay within connect_timeout.
    o.total_connection_timeout = Some(conf.connect_timeout.0);
    o.read_timeout = Some(conf.read_timeout.0);
    o.write_timeout = Some(conf.write_timeout.0);
    o.idle_timeout = Some(conf.idle_timeout.0);
    // An asset gateway never tunnels: no protocol upgrade is forwarded.
    o.http_upstream_request_policy = HttpUpstreamRequestPolicy::deny_upgrades();
    Ok(peer)
}

#[cfg(feature = "rustls")]
mod tls {
    use crate::config::TlsConf;
    use pingora::upstreams::peer::HttpPeer;
    use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
    use std::sync::Arc;

    /// Loads the CA and client certificate into the peer. Every certificate is parsed here,
    /// at start-up, because Pingora's rustls path panics on one it cannot parse.
    pub fn apply(key: &str, tls: &TlsConf, peer: &mut HttpPeer) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Some(ca) = &tls.ca_file {
            match read_certs(ca) {
                Ok(certs) => {
                    let list: Vec<WrappedX509> = certs
                        .into_iter()
                        .map(|der| WrappedX509::new(der, parse_x509))
                        .collect();
                    peer.options.ca = Some(Arc::from(list.into_boxed_slice()));
                }
                Err(e) => problems.push(format!("{key}.ca_file: {e}")),
            }
        }
        if let (Some(cert), Some(keyfile)) = (&tls.client_cert, &tls.client_key) {
            let certs = read_certs(cert).map_err(|e| format!("{key}.client_cert: {e}"));
            let private = read_key(keyfile).map_err(|e| format!("{key}.client_key: {e}"));
            match (certs, private) {
                (Ok(certs), Ok(private)) => {
                    peer.client_cert_key = Some(Arc::new(CertKey::new(certs, private)))
                }
                (c, k) => problems.extend(c.err().into_iter().chain(k.err())),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn read_certs(path: &str) -> Result<Vec<Vec<u8>>, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut pem.as_slice())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{path:?} is not a PEM certificate file: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{path:?} holds no PEM certificate"));
        }
        for der in &certs {
            x509_parser::parse_x509_certificate(der)
                .map_err(|e| format!("{path:?} holds a certificate that cannot be parsed: {e}"))?;
        }
        Ok(certs)
    }

    fn read_key(path: &str) -> Result<Vec<u8>, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        let key = rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| format!("{path:?} is not a PEM key file: {e}"))?
            .ok_or_else(|| format!("{path:?} holds no private key"))?;
        let der = key.secret_der().to_vec();
        // Pingora converts these bytes back into a key on every TLS connect and panics if it
        // cannot; check once here.
        pingora::tls::PrivateKeyDer::try_from(der.clone())
            .map_err(|e| format!("{path:?}: unusable private key: {e}"))?;
        Ok(der)
    }
}

#[cfg(not(feature = "rustls"))]
mod tls {
    use crate::config::TlsConf;
    use pingora::upstreams::peer::HttpPeer;

    pub fn apply(key: &str, _tls: &TlsConf, _peer: &mut HttpPeer) -> Result<(), Vec<String>> {
        Err(vec![format!(
            "{key}: this build has no TLS support (cargo feature `rustls`)"
        )])
    }
}

/// Active HTTP health checks of one upstream: one Pingora `HttpHealthCheck` per peer (each
/// with the `Host` and TLS of its peer), remembering the last failure of each.
struct PeerChecks {
    upstream: String,
    checks: HashMap<SocketAddr, HttpHealthCheck>,
    labels: HashMap<SocketAddr, String>,
    last_error: Mutex<HashMap<SocketAddr, String>>,
    healthy_after: usize,
    unhealthy_after: usize,
}

impl PeerChecks {
    fn new<'a>(
        upstream: &str,
        hc: &HealthCheckConf,
        peers: impl Iterator<Item = (SocketAddr, &'a Peer)>,
    ) -> PeerChecks {
        let mut checks = HashMap::new();
        let mut labels = HashMap::new();
        for (addr, peer) in peers {
            // The host given here only goes into the request replaced below.
            let mut check = HttpHealthCheck::new("", false);
            let mut template = peer.http.clone();
            template.options.connection_timeout = Some(hc.timeout.0);
            template.options.total_connection_timeout = Some(hc.timeout.0);
            template.options.read_timeout = Some(hc.timeout.0);
            template.options.write_timeout = Some(hc.timeout.0);
            check.peer_template = template;
            if let Ok(req) = pingora::http::RequestHeader::build("GET", hc.path.as_bytes(), None) {
                check.req = req;
                if let Some(host) = &peer.host {
                    let _ = check.req.insert_header("host", host.clone());
                }
                let _ = check
                    .req
                    .insert_header("user-agent", "asset-gateway-health-check");
            }
            let expect = hc.expect_status.clone();
            check.validator = Some(Box::new(move |resp| {
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
            checks.insert(addr, check);
            labels.insert(addr, peer.label.clone());
        }
        PeerChecks {
            upstream: upstream.to_string(),
            checks,
            labels,
            last_error: Mutex::new(HashMap::new()),
            healthy_after: hc.healthy_after,
            unhealthy_after: hc.unhealthy_after,
        }
    }

    fn last_error(&self, addr: &SocketAddr) -> Option<String> {
        self.last_error.lock().ok()?.get(addr).cloned()
    }
}

/// The `HealthCheck` given to Pingora; shares [`PeerChecks`] with the upstream.
struct SharedChecks(Arc<PeerChecks>);

#[async_trait]
impl HealthCheck for SharedChecks {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let addr = target.as_inet().copied();
        let Some(check) = addr.and_then(|a| self.0.checks.get(&a)) else {
            return Error::e_explain(ErrorType::InternalError, "unknown peer");
        };
        let result = check.check(target).await;
        if let (Some(addr), Ok(mut last)) = (addr, self.0.last_error.lock()) {
            match &result {
                Ok(()) => last.remove(&addr),
                Err(e) => last.insert(addr, e.to_string()),
            };
        }
        result
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.0.healthy_after
        } else {
            self.0.unhealthy_after
        }
    }

    /// Pingora logs each health change once with this summary.
    fn backend_summary(&self, target: &Backend) -> String {
        let label = target.as_inet().and_then(|a| self.0.labels.get(a));
        format!(
            "upstream {} peer {}",
            self.0.upstream,
            label.map_or("?", |l| l.as_str())
        )
    }
}

/// Milliseconds since the first call, on the monotonic clock (never 0 after the first ms).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Polls a future that is known to complete without waiting.
fn poll_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// All upstreams, indexed in the order of their names (routes refer to them by index).
pub struct Upstreams {
    list: Vec<Upstream>,
}

impl Upstreams {
    pub fn build(conf: &GatewayConf) -> Result<Upstreams, Vec<String>> {
        let mut list = Vec::new();
        let mut problems = Vec::new();
        for (name, up) in &conf.upstreams {
            match Upstream::build(name, up) {
                Ok(u) => list.push(u),
                Err(p) => problems.extend(p),
            }
        }
        if problems.is_empty() {
            Ok(Upstreams { list })
        } else {
            Err(problems)
        }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|u| u.name == name)
    }

    pub fn get(&self, index: usize) -> &Upstream {
        &self.list[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Upstream> {
        self.list.iter()
    }

    /// Background services that run active health checks, one per upstream that has them.
    /// (A Pingora `LoadBalancer` only checks health when it runs as a background service.)
    pub fn services(&self) -> Vec<Box<dyn ServiceWithDependents>> {
        self.list
            .iter()
            .filter(|u| u.health.is_some())
            .map(|u| u.balancer.service(format!("health check {}", u.name)))
            .collect()
    }
}
