//! `gateway.upstreams`: each upstream's name, peers (resolved here) or DNS discovery (only
//! checked: nothing is resolved at start), health check, passive ejection, TLS (files read
//! here) and extra headers (`${VAR}` expanded).

use super::env::expand_env;
use super::file::{DiscoveryFile, PeerFile, TlsFile, UpstreamFile};
use super::runtime::{ClientCert, Discovery, Ejection, HealthCheck, Peer, Timeouts, Tls, Upstream};
use super::tls;
use http::{HeaderName, HeaderValue};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// One upstream, or `None` with its problems added to `p`.
pub(super) fn upstream(
    name: &str,
    u: &UpstreamFile,
    body_read_size: usize,
    resolver: Option<SocketAddr>,
    p: &mut Vec<String>,
) -> Option<Upstream> {
    let key = format!("gateway.upstreams.{name}");
    let before = p.len();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        p.push(format!(
            "{key}: upstream names use only letters, digits, '-', '_' and '.'"
        ));
    }
    let host = u
        .host
        .as_ref()
        .and_then(|host| match HeaderValue::from_str(host) {
            Ok(v) if !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic()) => Some(v),
            _ => {
                p.push(format!("{key}.host: {host:?} is not a valid Host header value"));
                None
            }
        });
    let (peers, discovery) = match (&u.peers, &u.discovery) {
        (Some(_), Some(_)) => {
            p.push(format!(
                "{key}: peers and discovery exclude each other (fixed peers, or peers from DNS)"
            ));
            (Vec::new(), None)
        }
        (None, Some(d)) => (Vec::new(), discovery(&key, d, host, resolver, p)),
        (list, None) => (peers(&key, list.as_deref().unwrap_or_default(), host, p), None),
    };
    let health_check = u.health_check.as_ref().map(|hc| {
        let key = format!("{key}.health_check");
        if !hc.path.starts_with('/') || !hc.path.bytes().all(|b| b.is_ascii_graphic()) {
            p.push(format!(
                "{key}.path: {:?} must be a path starting with '/'",
                hc.path
            ));
        }
        for (field, n) in [
            ("healthy_after", hc.healthy_after),
            ("unhealthy_after", hc.unhealthy_after),
        ] {
            if n == 0 {
                p.push(format!("{key}.{field}: must be at least 1"));
            }
        }
        if hc.expect_status.is_empty() {
            p.push(format!("{key}.expect_status: at least one status is required"));
        }
        for (i, s) in hc.expect_status.iter().enumerate() {
            if !(100..=599).contains(s) {
                p.push(format!("{key}.expect_status[{i}]: {s} is not an HTTP status"));
            }
        }
        HealthCheck {
            path: hc.path.clone(),
            interval: hc.interval.0,
            timeout: hc.timeout.0,
            healthy_after: hc.healthy_after,
            unhealthy_after: hc.unhealthy_after,
            expect_status: hc.expect_status.clone(),
        }
    });
    let tls = u
        .tls
        .as_ref()
        .and_then(|t| tls_settings(&format!("{key}.tls"), t, p));
    let mut headers = Vec::new();
    for (h, template) in &u.headers {
        let key = format!("{key}.headers.{h}");
        let name = HeaderName::from_bytes(h.as_bytes());
        if name.is_err() {
            p.push(format!("{key}: not a valid header name"));
        }
        match (name, expand_env(template)) {
            (Ok(n), Ok(mut v)) => {
                v.set_sensitive(true);
                headers.push((n, v));
            }
            (_, Err(e)) => p.push(format!("{key}: {e}")),
            _ => {}
        }
    }
    (p.len() == before).then(|| Upstream {
        name: name.to_string(),
        peers,
        discovery,
        timeouts: Timeouts {
            connect: u.connect_timeout.0,
            read: u.read_timeout.0,
            write: u.write_timeout.0,
            idle: u.idle_timeout.0,
        },
        body_read_size,
        retries: u.retries,
        selection: u.selection,
        health_check,
        ejection: (u.passive_ejection.failures > 0).then_some(Ejection {
            failures: u.passive_ejection.failures,
            cooldown: u.passive_ejection.cooldown.0,
        }),
        tls,
        headers,
    })
}

/// Checks each `host:port` and resolves it (a name may give several addresses).
fn peers(key: &str, list: &[PeerFile], host: Option<HeaderValue>, p: &mut Vec<String>) -> Vec<Peer> {
    if list.is_empty() {
        p.push(format!(
            "{key}.peers: at least one peer is required (or discovery: {{dns: \"name:port\"}})"
        ));
    }
    let mut labels = BTreeSet::new();
    let mut peers: Vec<Peer> = Vec::new();
    for (i, pc) in list.iter().enumerate() {
        let key = format!("{key}.peers[{i}]");
        if pc.weight == 0 {
            p.push(format!("{key}.weight: must be at least 1"));
        }
        if let Err(e) = check_host_port(&pc.addr) {
            p.push(format!("{key}: {e}"));
            continue;
        }
        if !labels.insert(&pc.addr) {
            p.push(format!("{key}: {:?} is listed twice", pc.addr));
            continue;
        }
        let addrs = match pc.addr.to_socket_addrs() {
            Ok(a) => a,
            Err(e) => {
                p.push(format!("{key}: cannot resolve {:?}: {e}", pc.addr));
                continue;
            }
        };
        for addr in addrs {
            if let Some(other) = peers.iter().find(|q| q.addr == addr) {
                p.push(format!(
                    "{key}: {:?} resolves to {addr}, as {:?} does",
                    pc.addr, other.label
                ));
                continue;
            }
            // Validated above: a host:port is a valid header value.
            let own = HeaderValue::from_str(&pc.addr).unwrap_or(HeaderValue::from_static("-"));
            peers.push(Peer {
                addr,
                label: pc.addr.clone(),
                weight: pc.weight,
                host: host.clone().unwrap_or(own),
            });
        }
    }
    peers
}

/// The shortest `discovery.interval`: each poll is a DNS query per address family.
const MIN_DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// Checks `discovery` (syntax only: nothing is resolved here, so `-t` and start-up never wait
/// on DNS).
fn discovery(
    key: &str,
    d: &DiscoveryFile,
    host: Option<HeaderValue>,
    resolver: Option<SocketAddr>,
    p: &mut Vec<String>,
) -> Option<Discovery> {
    let key = format!("{key}.discovery");
    let before = p.len();
    if d.interval.0 < MIN_DISCOVERY_INTERVAL {
        p.push(format!(
            "{key}.interval: must be at least 1s (each poll queries the nameserver)"
        ));
    }
    let parsed = check_dns_name_port(&d.dns).map_err(|e| p.push(format!("{key}.dns: {e}")));
    let (name, port) = parsed.ok()?;
    let own = format!("{}:{port}", name.trim_end_matches('.'));
    let host = host.or_else(|| HeaderValue::from_str(&own).ok())?;
    (p.len() == before).then(|| Discovery {
        name: name.to_string(),
        port,
        interval: d.interval.0,
        host,
        resolver,
    })
}

/// `name:port` where `name` is a DNS name (an IP literal is refused: that is a fixed peer)
/// and the port is 1 to 65535. A trailing dot (fully qualified) is kept.
fn check_dns_name_port(s: &str) -> Result<(&str, u16), String> {
    let (name, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not name:port (the port is required)"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{s:?}: the port must be 1 to 65535"))?;
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() || name.contains(':') {
        return Err(format!(
            "{s:?}: {name:?} is an IP address, not a DNS name (use peers for fixed addresses)"
        ));
    }
    let labels = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if labels.is_empty() || labels.len() > 253 || !labels.split('.').all(label_ok) {
        return Err(format!("{s:?}: {name:?} is not a valid DNS name"));
    }
    Ok((name, port))
}

fn tls_settings(key: &str, t: &TlsFile, p: &mut Vec<String>) -> Option<Tls> {
    let before = p.len();
    if t.sni.is_empty() {
        p.push(format!(
            "{key}.sni: must not be empty (an empty SNI turns certificate verification off)"
        ));
    }
    let ca = t.ca_file.as_ref().and_then(|f| {
        tls::read_certs(f)
            .map_err(|e| p.push(format!("{key}.ca_file: {e}")))
            .ok()
    });
    let client = match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(keyfile)) => {
            let chain = tls::read_certs(cert).map_err(|e| p.push(format!("{key}.client_cert: {e}")));
            let private = tls::read_key(keyfile).map_err(|e| p.push(format!("{key}.client_key: {e}")));
            match (chain, private) {
                (Ok(chain), Ok(key)) => Some(ClientCert { chain, key }),
                _ => None,
            }
        }
        (None, None) => None,
        _ => {
            p.push(format!("{key}: client_cert and client_key go together"));
            None
        }
    };
    (p.len() == before).then(|| Tls {
        sni: t.sni.clone(),
        ca,
        client,
    })
}

/// `host:port` with a non-empty host and a port from 1 to 65535 (IPv6 in brackets).
fn check_host_port(addr: &str) -> Result<(), String> {
    let bad = || format!("{addr:?} is not host:port");
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}
