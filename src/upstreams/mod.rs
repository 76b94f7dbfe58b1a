//! Upstreams: their peers and how one is selected for an attempt (weights or consistent
//! hashing through Pingora's `LoadBalancer`, active health, passive ejection, the peers this
//! request could not reach), and what the admin listener and the metrics read of them.
//!
//! - `peer`: one peer's prepared connection options and state, kept in `Backend.ext`;
//! - `ejection`: the passive-ejection state machine;
//! - `health`: the active checks Pingora runs;
//! - `dns`: peers from DNS (`discovery.dns`), re-resolved by the balancer's background service.

mod dns;
mod ejection;
mod health;
mod peer;

pub(crate) use peer::Peer;

use crate::config::{self, Selection};
use crate::metrics::UpstreamMetrics;
use dns::{DnsDiscovery, DnsStatus};
use futures::FutureExt;
use log::{info, warn};
use pingora::lb::discovery::{ServiceDiscovery, Static};
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::services::background::GenBackgroundService;
use pingora::services::ServiceWithDependents;
use pingora::Error;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bounds the walk over a selection ring when looking for a usable peer (Pingora's examples
/// use the same figure).
const MAX_SELECT_ITERATIONS: usize = 256;

/// All upstreams, in the order of their names (routes refer to them by index).
pub(crate) struct Upstreams {
    list: Vec<Upstream>,
}

impl Upstreams {
    pub(crate) fn build(specs: &[config::Upstream]) -> Result<Upstreams, String> {
        let list = specs.iter().map(Upstream::build).collect::<Result<_, _>>()?;
        Ok(Upstreams { list })
    }

    pub(crate) fn get(&self, index: usize) -> &Upstream {
        &self.list[index]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Upstream> {
        self.list.iter()
    }

    /// Background services that run active health checks and DNS discovery, one per
    /// upstream that has either. (A Pingora `LoadBalancer` only checks health and re-runs
    /// discovery when it runs as a background service.)
    pub(crate) fn services(&self) -> Vec<Box<dyn ServiceWithDependents>> {
        self.list
            .iter()
            .filter(|u| u.checked || u.dns.is_some())
            .map(|u| u.balancer.service(format!("upstream {}", u.name)))
            .collect()
    }
}

pub(crate) struct Upstream {
    pub name: String,
    balancer: Balancer,
    /// Extra peers tried after a connect failure.
    pub retries: usize,
    /// Added to every upstream request (values marked sensitive).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Every `host[:port]` that names a peer (configured labels, resolved addresses, the
    /// `Host` sent), lower-case: a redirect to one of them must not reach a client as is.
    authorities: Vec<String>,
    /// Whether active health checks run.
    checked: bool,
    /// Peers from DNS: the name as configured, and whether it has resolved yet.
    dns: Option<(String, Arc<DnsStatus>)>,
    pub metrics: UpstreamMetrics,
}

impl Upstream {
    fn build(spec: &config::Upstream) -> Result<Upstream, String> {
        let peers: Vec<Arc<Peer>> = spec.peers.iter().map(|p| Arc::new(Peer::new(p, spec))).collect();
        let backends: BTreeSet<Backend> = peers
            .iter()
            .zip(&spec.peers)
            .map(|(peer, p)| peer.clone().backend(p.weight))
            .collect();
        let (discovery, dns): (Box<dyn ServiceDiscovery + Send + Sync>, _) = match &spec.discovery {
            None => (Static::new(backends), None),
            Some(d) => {
                let discovery = DnsDiscovery::new(spec, d)?;
                let status = discovery.status();
                (Box::new(discovery), Some((d, status)))
            }
        };
        let checks = spec.health_check.as_ref().map(|hc| {
            let checks = health::Checks {
                upstream: spec.name.clone(),
                healthy_after: hc.healthy_after,
                unhealthy_after: hc.unhealthy_after,
            };
            (
                Box::new(checks) as Box<dyn HealthCheck + Send + Sync>,
                hc.interval,
            )
        });
        // A DNS upstream's addresses change: they are matched against the current peers
        // (`is_peer_authority`); its name is fixed.
        let dns_names = dns.iter().flat_map(|(d, _)| {
            let bare = d.name.trim_end_matches('.');
            [
                format!("{}:{}", d.name, d.port),
                format!("{bare}:{}", d.port),
                d.host.to_str().unwrap_or_default().to_string(),
            ]
        });
        let mut authorities: Vec<String> = spec
            .peers
            .iter()
            .flat_map(|p| {
                let host = p.host.to_str().unwrap_or_default();
                [p.addr.to_string(), p.label.clone(), host.to_string()]
            })
            .chain(dns_names)
            .filter(|a| !a.is_empty())
            .map(|a| a.to_ascii_lowercase())
            .collect();
        authorities.sort();
        authorities.dedup();
        Ok(Upstream {
            name: spec.name.clone(),
            checked: checks.is_some(),
            balancer: Balancer::new(
                spec.selection,
                discovery,
                spec.discovery.as_ref().map(|d| d.interval),
                checks,
            ),
            dns: dns.map(|(d, status)| (d.name.clone(), status)),
            retries: spec.retries,
            headers: spec.headers.clone(),
            authorities,
            metrics: UpstreamMetrics::new(&spec.name)?,
        })
    }

    /// Picks a peer that is healthy (a peer from DNS: has passed a check), not ejected and
    /// not in `exclude` (the peers this request could not connect to).
    pub(crate) fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<Arc<Peer>> {
        let now = Instant::now();
        self.balancer.select_map(key, |b, healthy| {
            let peer = Peer::of(b).filter(|_| healthy)?;
            let usable = peer.warm() && !exclude.contains(&peer.addr) && !peer.ejection.is_ejected(now);
            usable.then(|| peer.clone())
        })
    }

    /// Passive health: counts a connect failure; enough in a row eject the peer.
    pub(crate) fn record_connect_failure(&self, peer: &Peer, error: &Error) {
        self.metrics.connect_failure(&peer.label);
        if let Some(streak) = peer.ejection.failure(Instant::now()) {
            warn!(
                "upstream {} peer {} ejected after {streak} consecutive connect failures (last: {error})",
                self.name, peer.label
            );
        }
    }

    /// A connection was made: the peer's failure streak ends, and an ejected peer is back.
    pub(crate) fn record_connect_success(&self, peer: &Peer) {
        if peer.ejection.success() {
            info!(
                "upstream {} peer {} is back in rotation after a successful connect",
                self.name, peer.label
            );
        }
    }

    /// Each peer (as configured) and whether it can take a request now: healthy (or not
    /// checked) and not ejected. Readiness is asked about the backends Pingora holds, with
    /// their real weights (it keys readiness by address and weight).
    pub(crate) fn peer_states(&self) -> Vec<(Arc<Peer>, PeerState)> {
        let now = Instant::now();
        self.balancer
            .backends()
            .iter()
            .filter_map(|b| {
                let peer = Peer::of(b)?.clone();
                let state = if !self.balancer.ready(b) {
                    PeerState::FailedHealthCheck
                } else if !peer.warm() {
                    PeerState::Warming
                } else if peer.ejection.is_ejected(now) {
                    PeerState::Ejected
                } else {
                    PeerState::Usable
                };
                Some((peer, state))
            })
            .collect()
    }

    /// Whether at least one peer can take a request now.
    pub(crate) fn has_usable_peer(&self) -> bool {
        self.peer_states().iter().any(|(_, s)| *s == PeerState::Usable)
    }

    /// A DNS upstream whose name has never resolved to a peer (not ready: it has none).
    pub(crate) fn never_resolved(&self) -> bool {
        self.dns.as_ref().is_some_and(|(_, status)| !status.resolved())
    }

    /// Why each peer is unusable right now, as one line (for the all-peers-down answer).
    pub(crate) fn down_reasons(&self) -> String {
        if let (Some((name, _)), true) = (&self.dns, self.never_resolved()) {
            return format!("{name} has not resolved to any peer yet");
        }
        let mut reasons: Vec<String> = self
            .peer_states()
            .iter()
            .map(|(peer, state)| {
                let reason = match state {
                    PeerState::FailedHealthCheck => format!(
                        "failed health check ({})",
                        peer.last_check_error().unwrap_or_else(|| "no detail".into())
                    ),
                    PeerState::Ejected => "ejected after repeated connect failures".to_string(),
                    PeerState::Warming => {
                        "new from DNS, waiting for its first passing health check".to_string()
                    }
                    PeerState::Usable => "available".to_string(),
                };
                format!("{}: {reason}", peer.label)
            })
            .collect();
        reasons.sort();
        reasons.join("; ")
    }

    /// Whether `authority` (from a URL the upstream sent) names one of this upstream's peers.
    pub(crate) fn is_peer_authority(&self, authority: &str) -> bool {
        if crate::response::authority_matches(authority, &self.authorities) {
            return true;
        }
        // Peers from DNS come and go: their addresses now (only for responses with a
        // `Location`, so building the list here is fine).
        self.dns.is_some() && {
            let current: Vec<String> = self.peer_states().iter().map(|(p, _)| p.label.clone()).collect();
            crate::response::authority_matches(authority, &current)
        }
    }

    pub(crate) fn peer_count(&self) -> usize {
        self.balancer.backends().len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerState {
    Usable,
    FailedHealthCheck,
    Ejected,
    /// From DNS, not yet passed a health check.
    Warming,
}

/// Pingora's load balancer for either selection algorithm.
enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Consistent(Arc<LoadBalancer<Consistent>>),
}

impl Balancer {
    /// `rediscover`: how often discovery runs again (DNS); `None` for fixed peers, which are
    /// published here at once.
    fn new(
        selection: Selection,
        discovery: Box<dyn ServiceDiscovery + Send + Sync>,
        rediscover: Option<Duration>,
        checks: Option<(Box<dyn HealthCheck + Send + Sync>, Duration)>,
    ) -> Balancer {
        fn build<S>(
            discovery: Box<dyn ServiceDiscovery + Send + Sync>,
            rediscover: Option<Duration>,
            checks: Option<(Box<dyn HealthCheck + Send + Sync>, Duration)>,
        ) -> Arc<LoadBalancer<S>>
        where
            S: BackendSelection + Send + Sync + 'static,
            S::Iter: BackendIter,
        {
            let mut lb = LoadBalancer::<S>::from_backends(Backends::new(discovery));
            if let Some((check, every)) = checks {
                lb.set_health_check(check);
                // Health checks only run when the balancer is a background service with a
                // frequency (see `Upstreams::services`).
                lb.health_check_frequency = Some(every);
                lb.parallel_health_check = true;
            }
            match rediscover {
                // DNS: the background service resolves (first at its start, then every
                // `interval`), so neither start-up nor `-t` waits on DNS.
                Some(every) => lb.update_frequency = Some(every),
                // Static discovery completes at once (Pingora's `try_from_iter` does the
                // same); this publishes the peer set.
                None => {
                    let _ = lb.update().now_or_never();
                }
            }
            Arc::new(lb)
        }
        match selection {
            Selection::RoundRobin => Balancer::RoundRobin(build(discovery, rediscover, checks)),
            Selection::Consistent => Balancer::Consistent(build(discovery, rediscover, checks)),
        }
    }

    /// The first candidate `accept` takes, as it maps it (patched Pingora: the chosen
    /// `Backend` is not cloned).
    fn select_map<T>(&self, key: &[u8], accept: impl FnMut(&Backend, bool) -> Option<T>) -> Option<T> {
        match self {
            Balancer::RoundRobin(lb) => lb.select_map(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Consistent(lb) => lb.select_map(key, MAX_SELECT_ITERATIONS, accept),
        }
    }

    fn backends(&self) -> Arc<BTreeSet<Backend>> {
        match self {
            Balancer::RoundRobin(lb) => lb.backends().get_backend(),
            Balancer::Consistent(lb) => lb.backends().get_backend(),
        }
    }

    /// Healthy by the active checks (or not checked).
    fn ready(&self, backend: &Backend) -> bool {
        match self {
            Balancer::RoundRobin(lb) => lb.backends().ready(backend),
            Balancer::Consistent(lb) => lb.backends().ready(backend),
        }
    }

    fn service(&self, name: String) -> Box<dyn ServiceWithDependents> {
        match self {
            Balancer::RoundRobin(lb) => Box::new(GenBackgroundService::new(name, lb.clone())),
            Balancer::Consistent(lb) => Box::new(GenBackgroundService::new(name, lb.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A discovery whose answer the test changes, as DNS would.
    struct Changing(Arc<Mutex<BTreeSet<Backend>>>);

    #[async_trait]
    impl ServiceDiscovery for Changing {
        async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
            Ok((self.0.lock().unwrap().clone(), HashMap::new()))
        }
    }

    fn set(hosts: &[u8]) -> BTreeSet<Backend> {
        hosts
            .iter()
            .map(|h| Backend::new(&format!("127.0.0.{h}:8080")).unwrap())
            .collect()
    }

    /// With `selection: consistent`, a peer that leaves DNS moves only its own keys: Pingora
    /// rebuilds the ketama ring from the new set, and a peer's points depend only on its
    /// address and weight, so the survivors' points stay where they were.
    #[test]
    fn consistent_selection_moves_only_the_removed_peers_keys() {
        let answer = Arc::new(Mutex::new(set(&[2, 3, 4])));
        let lb = LoadBalancer::<Consistent>::from_backends(Backends::new(Box::new(Changing(answer.clone()))));
        lb.update().now_or_never().unwrap().unwrap();
        let picks = |keys: &[String]| -> Vec<String> {
            keys.iter()
                .map(|k| {
                    lb.select(k.as_bytes(), MAX_SELECT_ITERATIONS)
                        .unwrap()
                        .addr
                        .to_string()
                })
                .collect()
        };
        let keys: Vec<String> = (0..3000).map(|i| format!("asset-{i}")).collect();
        let before = picks(&keys);
        let removed = "127.0.0.4:8080";
        assert!(
            before.iter().filter(|p| *p == removed).count() > 500,
            "an even share"
        );

        *answer.lock().unwrap() = set(&[2, 3]);
        lb.update().now_or_never().unwrap().unwrap();
        let after = picks(&keys);
        for ((key, b), a) in keys.iter().zip(&before).zip(&after) {
            if b == removed {
                assert_ne!(a, removed, "{key} still on the removed peer");
            } else {
                assert_eq!(a, b, "{key} moved from a surviving peer");
            }
        }
    }
}
