//! Peers from DNS (`discovery.dns`): Pingora's `ServiceDiscovery` for one upstream. The
//! load balancer's background service calls `discover` every `interval`; every A and AAAA
//! record of the name is a peer on the configured port.
//!
//! What Pingora does with the answer, and why the rules below:
//! - `Err` keeps the current peers (the background loop ignores it), an empty set removes
//!   them all: a failed or empty lookup returns the last known peers (or `Err` before the
//!   first answer), never an empty set;
//! - a backend's identity is address and weight, and its `ext` comes from the new set: an
//!   address that stays keeps its `Arc<Peer>` (ejection state, health check) across updates;
//! - a peer removed here is no longer selected; a request that already holds it finishes.

use super::peer::Peer;
use crate::config;
use crate::metrics::{self, DnsMetrics};
use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::lookup_ip::LookupIp;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use log::{info, warn};
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::{Error, ErrorType};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest one DNS query waits for its answer (shorter with a short `interval`): the
/// load balancer runs discovery and health checks in one loop, so a slow lookup delays checks.
const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin listener reads: whether the name has ever resolved to a peer.
#[derive(Default)]
pub(crate) struct DnsStatus {
    resolved: AtomicBool,
}

impl DnsStatus {
    pub(crate) fn resolved(&self) -> bool {
        self.resolved.load(Ordering::Relaxed)
    }
}

pub(super) struct DnsDiscovery {
    /// Each new peer is built from it, like a configured one.
    upstream: Arc<config::Upstream>,
    discovery: config::Discovery,
    /// Built at the first poll, on the background service's runtime (where the resolver
    /// spawns its tasks); `None` again if building failed, to retry at the next poll.
    resolver: Mutex<Option<TokioResolver>>,
    state: Mutex<State>,
    status: Arc<DnsStatus>,
    metrics: DnsMetrics,
}

#[derive(Default)]
struct State {
    /// The last peers DNS gave.
    known: BTreeMap<SocketAddr, Arc<Peer>>,
    /// The last poll's outcome: a warning is logged when it changes, not at every poll.
    last: Option<Outcome>,
    /// One address family's lookup failing while the other answered (logged on change).
    family_failed: Option<String>,
}

/// One poll's answer per address family.
struct Families {
    v4: Result<Vec<IpAddr>, String>,
    v6: Result<Vec<IpAddr>, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Empty,
    Failed,
}

impl DnsDiscovery {
    pub(super) fn new(
        upstream: &config::Upstream,
        discovery: &config::Discovery,
    ) -> Result<DnsDiscovery, String> {
        Ok(DnsDiscovery {
            upstream: Arc::new(upstream.clone()),
            discovery: discovery.clone(),
            resolver: Mutex::new(None),
            state: Mutex::new(State::default()),
            status: Arc::new(DnsStatus::default()),
            metrics: DnsMetrics::new(&upstream.name)?,
        })
    }

    pub(super) fn status(&self) -> Arc<DnsStatus> {
        self.status.clone()
    }

    fn resolver(&self) -> Result<TokioResolver, String> {
        let mut slot = self
            .resolver
            .lock()
            .map_err(|_| "resolver lock poisoned".to_string())?;
        if let Some(r) = &*slot {
            return Ok(r.clone());
        }
        let r = build_resolver(self.discovery.resolver, self.discovery.interval)?;
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Every address of the name, A and AAAA asked separately: a family without records is
    /// empty, any other failure of a family (timeout, SERVFAIL, refused) is that family's
    /// `Err`, so a blip on one family never drops the peers of the other.
    async fn resolve(&self) -> Result<Families, String> {
        let resolver = self.resolver()?;
        // Every poll asks the nameserver: the poll interval is the refresh rate.
        resolver.clear_cache();
        let name = self.discovery.name.as_str();
        let (v4, v6) = futures::join!(resolver.ipv4_lookup(name), resolver.ipv6_lookup(name));
        let family = |r: Result<_, hickory_resolver::net::NetError>| match r {
            Ok(lookup) => Ok(LookupIp::from(lookup).iter().collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        };
        Ok(Families {
            v4: family(v4),
            v6: family(v6),
        })
    }

    /// One poll's addresses: each family as answered, or, when its lookup failed, as last
    /// known (a local resolver such as dnsmasq refuses AAAA for a name it only has A records
    /// for; that must not stop discovery). `Err` when both failed. The failed family, if any,
    /// is returned for the log.
    fn merge(st: &State, answer: Families) -> (Result<Vec<IpAddr>, String>, Option<String>) {
        match (answer.v4, answer.v6) {
            (Err(e), Err(_)) => (Err(e), None),
            (v4, v6) => {
                let mut failed = None;
                let mut ips = Vec::new();
                for (result, v6_family, record) in [(v4, false, "A"), (v6, true, "AAAA")] {
                    match result {
                        Ok(found) => ips.extend(found),
                        Err(e) => {
                            failed = Some(format!("{record} lookup failed ({e})"));
                            ips.extend(
                                st.known
                                    .keys()
                                    .map(|a| a.ip())
                                    .filter(|ip| ip.is_ipv6() == v6_family),
                            );
                        }
                    }
                }
                (Ok(ips), failed)
            }
        }
    }

    fn new_peer(&self, addr: SocketAddr) -> Arc<Peer> {
        let spec = config::Peer {
            addr,
            label: addr.to_string(),
            weight: 1,
            host: self.discovery.host.clone(),
        };
        Arc::new(Peer::new(&spec, &self.upstream))
    }

    /// Applies one poll's result to the known peers, logging and counting it.
    fn apply(&self, st: &mut State, answer: Result<Families, String>) {
        let (up, name) = (&self.upstream.name, &self.discovery.name);
        let (result, family_failed) = match answer {
            Ok(families) => Self::merge(st, families),
            Err(e) => (Err(e), None),
        };
        if family_failed != st.family_failed {
            if let Some(why) = &family_failed {
                warn!("upstream {up}: {name}: {why}; that family keeps its last known peers");
            }
            st.family_failed = family_failed;
        }
        let outcome = match result {
            Ok(ips) if !ips.is_empty() => {
                self.metrics.ok.inc();
                let port = self.discovery.port;
                let addrs: BTreeSet<SocketAddr> =
                    ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
                let old = std::mem::take(&mut st.known);
                let added: Vec<String> = addrs
                    .iter()
                    .filter(|a| !old.contains_key(a))
                    .map(|a| a.to_string())
                    .collect();
                let removed: Vec<String> = old
                    .keys()
                    .filter(|a| !addrs.contains(a))
                    .map(|a| a.to_string())
                    .collect();
                for label in &removed {
                    metrics::forget_peer(up, label);
                }
                if !added.is_empty() || !removed.is_empty() {
                    info!(
                        "upstream {up}: {name} resolves to {} peers (added: [{}], removed: [{}])",
                        addrs.len(),
                        added.join(", "),
                        removed.join(", ")
                    );
                } else if st.last != Some(Outcome::Ok) {
                    info!(
                        "upstream {up}: {name} resolves again, to the same {} peers",
                        addrs.len()
                    );
                }
                st.known = addrs
                    .into_iter()
                    .map(|a| (a, old.get(&a).cloned().unwrap_or_else(|| self.new_peer(a))))
                    .collect();
                self.status.resolved.store(true, Ordering::Relaxed);
                Outcome::Ok
            }
            Ok(_) => {
                self.metrics.empty.inc();
                if st.last != Some(Outcome::Empty) {
                    warn!(
                        "upstream {up}: {name} has no A or AAAA record; keeping the last {} known peers",
                        st.known.len()
                    );
                }
                Outcome::Empty
            }
            Err(e) => {
                self.metrics.error.inc();
                if st.last != Some(Outcome::Failed) {
                    warn!(
                        "upstream {up}: resolving {name} failed ({e}); keeping the last {} known peers",
                        st.known.len()
                    );
                }
                Outcome::Failed
            }
        };
        st.last = Some(outcome);
    }
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        // A hard bound besides the resolver's own timeouts (search domains multiply queries).
        let result = tokio::time::timeout(self.discovery.interval, self.resolve())
            .await
            .unwrap_or_else(|_| Err("no answer in time".to_string()));
        let Ok(mut st) = self.state.lock() else {
            return Error::e_explain(ErrorType::InternalError, "DNS discovery state lock poisoned");
        };
        self.apply(&mut st, result);
        if st.known.is_empty() {
            // Never resolved: Pingora keeps its (empty) set on an error.
            return Error::e_explain(
                ErrorType::Custom("DNS discovery"),
                format!("{} has not resolved yet", self.discovery.name),
            );
        }
        let backends = st.known.values().map(|p| p.clone().backend(1)).collect();
        Ok((backends, HashMap::new()))
    }
}

/// One resolver per upstream: the configured nameserver, or the system's configuration
/// (`/etc/resolv.conf`, with its search domains and `ndots`).
fn build_resolver(nameserver: Option<SocketAddr>, interval: Duration) -> Result<TokioResolver, String> {
    let mut builder = match nameserver {
        Some(ns) => {
            let mut server = NameServerConfig::udp_and_tcp(ns.ip());
            for c in &mut server.connections {
                c.port = ns.port();
            }
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| format!("system resolver configuration: {e}"))?,
    };
    let o = builder.options_mut();
    // Hickory's defaults (5 s, 2 attempts) would stall the load balancer's loop for longer
    // than a poll; the next poll is the retry.
    o.timeout = (interval / 2).min(MAX_QUERY_TIMEOUT);
    o.attempts = 1;
    builder.build().map_err(|e| format!("building the resolver: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery() -> DnsDiscovery {
        let yaml = r#"
gateway:
  listen: ["127.0.0.1:8080"]
  upstreams:
    dns-unit:
      discovery: {dns: "assets.test.:8080", interval: 1s}
      host: assets.internal
  routes:
    - path: /content/v1/assets/{id}
      upstream: dns-unit
      rewrite: /v1/assets/{id}
"#;
        let c = crate::config::Config::from_yaml(yaml).unwrap_or_else(|p| panic!("{p:?}"));
        let up = &c.gateway.upstreams[0];
        DnsDiscovery::new(up, up.discovery.as_ref().unwrap()).unwrap()
    }

    /// An answer where both families were looked up successfully.
    fn ips(list: &[&str]) -> Result<Families, String> {
        let all: Vec<IpAddr> = list.iter().map(|ip| ip.parse().unwrap()).collect();
        Ok(Families {
            v4: Ok(all.iter().copied().filter(IpAddr::is_ipv4).collect()),
            v6: Ok(all.iter().copied().filter(IpAddr::is_ipv6).collect()),
        })
    }

    /// An address that stays keeps its peer (ejection and health state) across updates;
    /// an empty or failed answer changes nothing.
    #[test]
    fn peers_that_stay_are_kept_and_bad_answers_change_nothing() {
        let d = discovery();
        let mut st = State::default();
        d.apply(&mut st, ips(&["10.0.0.1", "10.0.0.2"]));
        assert!(d.status.resolved());
        let first = st.known[&"10.0.0.2:8080".parse().unwrap()].clone();
        assert_eq!(first.host, "assets.internal");
        assert_eq!(first.label, "10.0.0.2:8080");

        d.apply(&mut st, ips(&["10.0.0.2", "10.0.0.3", "fd00::1"]));
        let keys: Vec<String> = st.known.keys().map(|a| a.to_string()).collect();
        assert_eq!(keys, ["10.0.0.2:8080", "10.0.0.3:8080", "[fd00::1]:8080"]);
        assert!(Arc::ptr_eq(&first, &st.known[&"10.0.0.2:8080".parse().unwrap()]));

        d.apply(&mut st, ips(&[]));
        assert_eq!(st.last, Some(Outcome::Empty));
        d.apply(&mut st, Err("timeout".into()));
        assert_eq!(st.last, Some(Outcome::Failed));
        assert_eq!(st.known.len(), 3, "the last peers are kept");
        assert!(Arc::ptr_eq(&first, &st.known[&"10.0.0.2:8080".parse().unwrap()]));
    }

    /// One family failing keeps that family's last peers and takes the other's answer.
    #[test]
    fn a_failed_family_keeps_its_peers_and_the_other_family_is_current() {
        let d = discovery();
        let mut st = State::default();
        d.apply(&mut st, ips(&["10.0.0.1", "fd00::1"]));
        let refused = || Err("refused".to_string());
        let v4 = |list: &[&str]| Ok(list.iter().map(|ip| ip.parse().unwrap()).collect());
        d.apply(
            &mut st,
            Ok(Families {
                v4: v4(&["10.0.0.2"]),
                v6: refused(),
            }),
        );
        let keys: Vec<String> = st.known.keys().map(|a| a.to_string()).collect();
        assert_eq!(keys, ["10.0.0.2:8080", "[fd00::1]:8080"]);
        assert_eq!(st.last, Some(Outcome::Ok));
        assert!(st
            .family_failed
            .as_deref()
            .unwrap()
            .starts_with("AAAA lookup failed"));
        // A first poll where only A answers (dnsmasq refusing AAAA): the A peers are used.
        let mut fresh = State::default();
        d.apply(
            &mut fresh,
            Ok(Families {
                v4: v4(&["10.0.0.9"]),
                v6: refused(),
            }),
        );
        assert_eq!(fresh.known.len(), 1);
        // Both failing is a failed poll: everything is kept.
        d.apply(
            &mut st,
            Ok(Families {
                v4: refused(),
                v6: refused(),
            }),
        );
        assert_eq!((st.last, st.known.len()), (Some(Outcome::Failed), 2));
    }

    #[test]
    fn never_resolved_until_a_peer_is_found() {
        let d = discovery();
        let mut st = State::default();
        d.apply(&mut st, Err("refused".into()));
        d.apply(&mut st, ips(&[]));
        assert!(!d.status.resolved());
        assert!(st.known.is_empty());
    }
}
