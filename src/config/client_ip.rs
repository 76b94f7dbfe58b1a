//! `gateway.client_ip`: which peers may tell the gateway who the client is (`X-Forwarded-For`,
//! PROXY protocol v2), checked.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

/// `gateway.client_ip`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientIpFile {
    /// CIDR ranges (or single addresses) of the load balancers and proxies in front.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The client listeners expect a PROXY protocol v2 header from `trusted_proxies`.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `gateway.client_ip`, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientIpSettings {
    pub trusted_proxies: Vec<IpNet>,
    pub proxy_protocol: bool,
}

pub(super) fn compile(c: &ClientIpFile, p: &mut Vec<String>) -> ClientIpSettings {
    let mut trusted_proxies = Vec::new();
    for (i, t) in c.trusted_proxies.iter().enumerate() {
        // A bare address is a range of one.
        match t.parse::<IpNet>().or_else(|_| t.parse::<IpAddr>().map(IpNet::from)) {
            Ok(net) => trusted_proxies.push(net.trunc()),
            Err(_) => p.push(format!(
                "gateway.client_ip.trusted_proxies[{i}]: {t:?} is not a CIDR range (such as \"10.0.0.0/8\") or an IP address"
            )),
        }
    }
    if c.proxy_protocol && c.trusted_proxies.is_empty() {
        p.push(
            "gateway.client_ip.proxy_protocol: needs trusted_proxies (the load balancers that send the header)"
                .to_string(),
        );
    }
    ClientIpSettings {
        trusted_proxies,
        proxy_protocol: c.proxy_protocol,
    }
}
