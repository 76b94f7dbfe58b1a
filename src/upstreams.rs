//! Upstreams: their peers, how a peer is selected, and the connection options used for it.

use crate::config::{GatewayConf, UpstreamConf};
use pingora::lb::discovery::Static;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// Bounds the walk over a selection ring when looking for a usable peer (Pingora's examples
/// use the same figure).
const MAX_SELECT_ITERATIONS: usize = 256;

/// One peer, with everything needed to connect to it prepared at start-up.
struct Peer {
    /// The peer with its connect/read/write/idle options; cloned per request attempt.
    http: HttpPeer,
    /// `Host` sent upstream.
    host: String,
    /// The address as configured (for logs).
    label: String,
}

pub struct Upstream {
    pub name: String,
    lb: Arc<LoadBalancer<RoundRobin>>,
    peers: HashMap<SocketAddr, Peer>,
}

/// A peer chosen for one attempt.
pub struct Selected {
    pub addr: SocketAddr,
    pub peer: Box<HttpPeer>,
}

impl Upstream {
    fn build(name: &str, conf: &UpstreamConf) -> Result<Upstream, Vec<String>> {
        let mut problems = Vec::new();
        let mut backends = BTreeSet::new();
        let mut peers = HashMap::new();
        for (i, pc) in conf.peers.iter().enumerate() {
            let addrs: Vec<SocketAddr> = match pc.addr.to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    problems.push(format!(
                        "gateway.upstreams.{name}.peers[{i}]: cannot resolve {:?}: {e}",
                        pc.addr
                    ));
                    continue;
                }
            };
            for addr in addrs {
                let mut http = HttpPeer::new(addr, false, String::new());
                let o = &mut http.options;
                o.connection_timeout = Some(conf.connect_timeout.0);
                o.read_timeout = Some(conf.read_timeout.0);
                o.write_timeout = Some(conf.write_timeout.0);
                o.idle_timeout = Some(conf.idle_timeout.0);
                // An asset gateway never tunnels: no protocol upgrade is forwarded.
                o.http_upstream_request_policy = HttpUpstreamRequestPolicy::deny_upgrades();
                let host = conf.host.clone().unwrap_or_else(|| pc.addr.clone());
                backends.insert(Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                    weight: pc.weight,
                    ext: Default::default(),
                });
                peers.insert(
                    addr,
                    Peer {
                        http,
                        host,
                        label: pc.addr.clone(),
                    },
                );
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let lb = LoadBalancer::from_backends(Backends::new(Static::new(backends)));
        // Static discovery never blocks or fails; this only publishes the peer set.
        if let Some(Err(e)) = futures_now(lb.update()) {
            return Err(vec![format!("gateway.upstreams.{name}: {e}")]);
        }
        Ok(Upstream {
            name: name.to_string(),
            lb: Arc::new(lb),
            peers,
        })
    }

    /// Picks a ready peer that this request has not tried yet.
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<Selected> {
        let backend = self.lb.select_with(key, MAX_SELECT_ITERATIONS, |b, ready| {
            ready && b.as_inet().is_some_and(|a| !tried.contains(a))
        })?;
        let addr = *backend.as_inet()?;
        let peer = self.peers.get(&addr)?;
        Some(Selected {
            addr,
            peer: Box::new(peer.http.clone()),
        })
    }

    /// The `Host` header value for a peer.
    pub fn host_for(&self, addr: &SocketAddr) -> &str {
        self.peers.get(addr).map_or("", |p| p.host.as_str())
    }

    /// The peer's address as written in the config.
    pub fn label_for(&self, addr: &SocketAddr) -> &str {
        self.peers.get(addr).map_or("", |p| p.label.as_str())
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
}

/// Polls a future that is known to complete without waiting.
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
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
}
