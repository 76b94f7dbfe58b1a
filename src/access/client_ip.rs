//! Who the client is: the connection's peer (which a PROXY protocol v2 header from a trusted
//! load balancer has already replaced, see `downstream::proxy_protocol`), or, when that peer
//! is one of `trusted_proxies`, the right-most `X-Forwarded-For` entry that is not a trusted
//! proxy itself. Entries to the left of it were written by whoever the untrusted hop was and
//! prove nothing. An entry may carry a port; one that is not an address stops the walk (the
//! last trusted hop is then the client) and is counted in
//! `asset_gateway_forwarded_for_unparsable_total`.

use crate::config::ClientIpSettings;
use ipnet::IpNet;
use pingora::http::RequestHeader;
use pingora_prometheus::prometheus::IntCounter;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) struct ClientIp {
    trusted: Vec<IpNet>,
    /// `asset_gateway_forwarded_for_unparsable_total`.
    unparsable: Option<IntCounter>,
}

impl ClientIp {
    pub(crate) fn new(s: &ClientIpSettings) -> Result<ClientIp, String> {
        Ok(ClientIp {
            trusted: s.trusted_proxies.clone(),
            unparsable: match s.trusted_proxies.is_empty() {
                true => None,
                false => Some(crate::metrics::forwarded_for_unparsable()?),
            },
        })
    }

    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request arriving from `peer`.
    pub(crate) fn resolve(&self, peer: IpAddr, req: &RequestHeader) -> IpAddr {
        let mut client = peer.to_canonical();
        self.walk(peer, req, |ip| client = ip);
        client
    }

    /// `X-Forwarded-For` for the upstream of a cached route: the client as [`resolve`] finds
    /// it, then the trusted proxies between it and the gateway, then the peer. What the
    /// client wrote itself (anything left of the first untrusted entry) is not passed on: a
    /// cached answer must not depend on it. At most [`MAX_CHAIN`] addresses.
    ///
    /// [`resolve`]: ClientIp::resolve
    pub(crate) fn forwarded_chain(&self, peer: IpAddr, req: &RequestHeader) -> String {
        let mut hops: Vec<IpAddr> = Vec::new();
        self.walk(peer, req, |ip| hops.push(ip));
        let mut out = String::with_capacity(16 * (hops.len() + 1));
        for ip in hops.iter().rev() {
            crate::fmt::push_ip(&mut out, ip);
            out.push_str(", ");
        }
        crate::fmt::push_ip(&mut out, &peer.to_canonical());
        out
    }

    /// Walks `X-Forwarded-For` from the right behind a trusted `peer`, handing `hop` each
    /// address believed: trusted proxies, then the client (the first untrusted entry), where
    /// it stops; an entry that is not an address also stops it (nothing further left can be
    /// trusted either). Nothing for an untrusted peer.
    fn walk(&self, peer: IpAddr, req: &RequestHeader, mut hop: impl FnMut(IpAddr)) {
        let peer = peer.to_canonical();
        if self.trusted.is_empty() || !self.trusts(peer) {
            return;
        }
        let lines = req.headers.get_all("x-forwarded-for");
        let entries = lines
            .iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|b| *b == b','));
        for (n, entry) in entries.enumerate() {
            let Some(ip) = parse_entry(entry.trim_ascii()) else {
                if let Some(c) = &self.unparsable {
                    c.inc();
                }
                break;
            };
            let ip = ip.to_canonical();
            hop(ip);
            if !self.trusts(ip) || n + 1 >= MAX_CHAIN {
                break;
            }
        }
    }
}

/// The most `X-Forwarded-For` entries believed (the hops of a real proxy chain are few).
const MAX_CHAIN: usize = 16;

/// One `X-Forwarded-For` entry: an address, or an address with a port as some load balancers
/// write it (Azure Application Gateway: `1.2.3.4:5678`, `[2001:db8::1]:443`), or a bracketed
/// IPv6 address. `None`: anything else (`unknown`, a name, an obfuscated identifier).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok.then(|| inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6))?;
    }
    let (host, port) = text.split_once(':')?;
    is_port(port).then(|| host.parse::<Ipv4Addr>().ok().map(IpAddr::V4))?
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule for `trusted` proxies and a request carrying the `xff` headers.
    fn setup(trusted: &[&str], xff: &[&str]) -> (ClientIp, RequestHeader) {
        let c = ClientIp::new(&ClientIpSettings {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            proxy_protocol: false,
        })
        .unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for v in xff {
            req.append_header("x-forwarded-for", *v).unwrap();
        }
        (c, req)
    }

    fn resolve(trusted: &[&str], peer: &str, xff: &[&str]) -> String {
        let (c, req) = setup(trusted, xff);
        c.resolve(peer.parse().unwrap(), &req).to_string()
    }

    fn chain(trusted: &[&str], peer: &str, xff: &[&str]) -> String {
        let (c, req) = setup(trusted, xff);
        c.forwarded_chain(peer.parse().unwrap(), &req)
    }

    /// Upstream of a cached route: the resolved client and the trusted hops, never what the
    /// client wrote to the left of them.
    #[test]
    fn the_forwarded_chain_holds_only_what_trusted_proxies_vouch_for() {
        assert_eq!(chain(&[], "203.0.113.9", &["1.2.3.4, 5.6.7.8"]), "203.0.113.9");
        assert_eq!(chain(&["10.0.0.0/8"], "203.0.113.9", &["1.2.3.4"]), "203.0.113.9");
        assert_eq!(
            chain(&["10.0.0.0/8"], "10.0.0.5", &["6.6.6.6, 1.2.3.4", "10.0.0.7"]),
            "1.2.3.4, 10.0.0.7, 10.0.0.5"
        );
        assert_eq!(
            chain(&["10.0.0.0/8"], "10.0.0.5", &["1.2.3.4, junk, 10.0.0.9"]),
            "10.0.0.9, 10.0.0.5"
        );
        assert_eq!(chain(&["10.0.0.0/8"], "::ffff:10.0.0.5", &[]), "10.0.0.5");
        let many = vec!["10.1.1.1"; 40].join(", ");
        assert_eq!(
            chain(&["10.0.0.0/8"], "10.0.0.5", &[&many]).matches(", ").count(),
            MAX_CHAIN
        );
    }

    /// Ports (Azure's `1.2.3.4:5678`, `[v6]:port`) and brackets are read; a bad entry counts.
    #[test]
    fn entries_with_ports_are_addresses() {
        for (entry, want) in [
            ("1.2.3.4:5678", Some("1.2.3.4")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("1.2.3.4", Some("1.2.3.4")),
            ("1.2.3.4:", None),
            ("1.2.3.4:99999", None),
            ("1.2.3.4:80:80", None),
            ("[2001:db8::1]443", None),
            ("[1.2.3.4]:80", None),
            ("unknown", None),
            ("_hidden", None),
            ("", None),
        ] {
            assert_eq!(
                parse_entry(entry.as_bytes()).map(|ip| ip.to_string()).as_deref(),
                want,
                "{entry}"
            );
        }
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.5", &["1.2.3.4:5678, 10.0.0.7:443"]),
            "1.2.3.4"
        );
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.5", &["[2001:db8::9]:1234"]),
            "2001:db8::9"
        );
        let before = crate::metrics::forwarded_for_unparsable().unwrap().get();
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.5", &["unknown, 10.0.0.7"]),
            "10.0.0.7"
        );
        assert!(crate::metrics::forwarded_for_unparsable().unwrap().get() > before);
    }

    #[test]
    fn forwarded_for_counts_only_behind_trusted_proxies() {
        // No trusted proxies, or an untrusted peer: the peer, whatever it claims.
        assert_eq!(resolve(&[], "203.0.113.9", &["1.2.3.4"]), "203.0.113.9");
        assert_eq!(
            resolve(&["10.0.0.0/8"], "203.0.113.9", &["1.2.3.4"]),
            "203.0.113.9"
        );
        // Behind a trusted proxy: the right-most untrusted entry.
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.5", &["6.6.6.6, 1.2.3.4"]),
            "1.2.3.4"
        );
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.5", &["6.6.6.6, 1.2.3.4", "10.0.0.7"]),
            "1.2.3.4"
        );
        // Every entry trusted: the left-most. None at all: the peer.
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.5", &["10.1.1.1, 10.2.2.2"]),
            "10.1.1.1"
        );
        assert_eq!(resolve(&["10.0.0.0/8"], "10.0.0.5", &[]), "10.0.0.5");
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            resolve(&["10.0.0.0/8"], "10.0.0.5", &["1.2.3.4, junk, 10.0.0.9"]),
            "10.0.0.9"
        );
        assert_eq!(resolve(&["::1/128"], "::1", &["2001:db8::7"]), "2001:db8::7");
        assert_eq!(
            resolve(&["10.0.0.0/8"], "::ffff:10.0.0.5", &["1.2.3.4"]),
            "1.2.3.4"
        );
    }
}
