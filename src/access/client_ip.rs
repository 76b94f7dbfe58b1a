//! Who the client is: the connection's peer (which a PROXY protocol v2 header from a trusted
//! load balancer has already replaced, see `downstream::proxy_protocol`), or, when that peer
//! is one of `trusted_proxies`, the right-most `X-Forwarded-For` entry that is not a trusted
//! proxy itself. Entries to the left of it were written by whoever the untrusted hop was and
//! prove nothing.

use crate::config::ClientIpSettings;
use ipnet::IpNet;
use pingora::http::RequestHeader;
use std::net::IpAddr;

pub(crate) struct ClientIp {
    trusted: Vec<IpNet>,
}

impl ClientIp {
    pub(crate) fn new(s: &ClientIpSettings) -> ClientIp {
        ClientIp {
            trusted: s.trusted_proxies.clone(),
        }
    }

    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request arriving from `peer`.
    pub(crate) fn resolve(&self, peer: IpAddr, req: &RequestHeader) -> IpAddr {
        let peer = peer.to_canonical();
        if self.trusted.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let lines = req.headers.get_all("x-forwarded-for");
        let entries = lines
            .iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|b| *b == b','));
        for entry in entries {
            let text = std::str::from_utf8(entry.trim_ascii()).unwrap_or_default();
            let Ok(ip) = text.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
                // Not an address: nothing further left can be trusted either.
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(trusted: &[&str], peer: &str, xff: &[&str]) -> String {
        let c = ClientIp::new(&ClientIpSettings {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            proxy_protocol: false,
        });
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for v in xff {
            req.append_header("x-forwarded-for", *v).unwrap();
        }
        c.resolve(peer.parse().unwrap(), &req).to_string()
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
