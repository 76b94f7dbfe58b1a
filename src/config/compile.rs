//! Turns the file's `gateway:` section into [`Settings`]: every check and cross-reference,
//! peer names resolved, TLS files read, `${VAR}` expanded. Every problem is collected with
//! its key path and all are reported together; nothing is returned half-built.

use super::file::{
    AccessLogField, CacheFile, DiscoveryFile, DiskFile, GatewayFile, PeerFile, TlsFile, UpstreamFile,
};
use super::runtime::*;
use super::tls;
use crate::downstream::Limits;
use http::{HeaderName, HeaderValue};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// `streaming.read_size` and `streaming.queue_depth` by default (chosen by measurement, see
/// the README's performance section), and their bounds.
pub(super) const DEFAULT_READ_SIZE: u64 = 16 * 1024;
pub(super) const DEFAULT_QUEUE_DEPTH: usize = 2;
const READ_SIZES: std::ops::RangeInclusive<u64> = 16 * 1024..=1024 * 1024;
const QUEUE_DEPTHS: std::ops::RangeInclusive<usize> = 1..=64;
const MIN_CACHE_MEMORY: u64 = 1 << 20;

/// The longest request target the `http` crate (and so Pingora) can parse.
pub(crate) const MAX_PARSABLE_URI: usize = u16::MAX as usize - 1;

pub(super) fn compile(g: GatewayFile) -> Result<Settings, Vec<String>> {
    let mut p = Vec::new();
    let listen = listeners(&g, &mut p);
    let admin = g
        .admin
        .as_ref()
        .and_then(|admin| match admin.parse::<SocketAddr>() {
            Err(_) => {
                p.push(format!("gateway.admin: {admin:?} is not an IP:port address"));
                None
            }
            Ok(a) if listen.iter().any(|l| l.addr == a) => {
                p.push(format!("gateway.admin: {admin:?} is also in gateway.listen"));
                None
            }
            Ok(a) => Some(a),
        });
    let resolver = g.resolver.as_ref().and_then(|r| match r.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(format!(
                "gateway.resolver: {r:?} is not an IP:port address (one nameserver, e.g. \"10.96.0.10:53\")"
            ));
            None
        }
    });

    let d = &g.downstream;
    if d.max_headers == 0 {
        p.push("gateway.downstream.max_headers: must be at least 1".to_string());
    }
    if d.max_uri_bytes.0 < 64 {
        p.push("gateway.downstream.max_uri_bytes: must be at least 64 bytes".to_string());
    }
    if d.max_uri_bytes.0 > MAX_PARSABLE_URI as u64 {
        p.push(format!(
            "gateway.downstream.max_uri_bytes: must be at most {MAX_PARSABLE_URI} bytes (a longer request target cannot be parsed at all: Pingora answers it with a plain 400)"
        ));
    }
    if d.max_header_bytes.0 < 512 {
        p.push("gateway.downstream.max_header_bytes: must be at least 512 bytes".to_string());
    }
    let h2 = &d.h2;
    if h2.max_concurrent_streams == 0 {
        p.push("gateway.downstream.h2.max_concurrent_streams: must be at least 1".to_string());
    }
    for (key, size) in [
        ("max_header_list_size", h2.max_header_list_size.0),
        ("max_send_buffer", h2.max_send_buffer.0),
    ] {
        if !(1024..=16 * 1024 * 1024).contains(&size) {
            p.push(format!(
                "gateway.downstream.h2.{key}: {size} bytes is outside 1KiB..=16MiB"
            ));
        }
    }
    let downstream = Downstream {
        keepalive_timeout: d.keepalive_timeout.0,
        header_timeout: d.header_timeout.0,
        write_timeout: d.write_timeout.0,
        limits: Limits {
            max_uri_bytes: d.max_uri_bytes.0 as usize,
            max_header_bytes: d.max_header_bytes.0 as usize,
            max_headers: d.max_headers,
        },
        h2: H2 {
            max_concurrent_streams: h2.max_concurrent_streams,
            max_header_list_size: h2.max_header_list_size.0.min(u32::MAX as u64) as u32,
            max_send_buffer: h2.max_send_buffer.0 as usize,
            idle_timeout: h2.idle_timeout.0,
            max_pending_reset_streams: h2.max_pending_reset_streams,
        },
    };

    let st = &g.streaming;
    if !READ_SIZES.contains(&st.read_size.0) {
        p.push(format!(
            "gateway.streaming.read_size: {} bytes is outside 16KiB..=1MiB",
            st.read_size.0
        ));
    }
    if !QUEUE_DEPTHS.contains(&st.queue_depth) {
        p.push(format!(
            "gateway.streaming.queue_depth: {} is outside 1..=64",
            st.queue_depth
        ));
    }
    let streaming = Streaming {
        read_size: st.read_size.0 as usize,
        queue_depth: st.queue_depth,
    };

    if g.upstreams.is_empty() {
        p.push("gateway.upstreams: at least one upstream is required".to_string());
    }
    let upstreams: Vec<Upstream> = g
        .upstreams
        .iter()
        .filter_map(|(name, u)| upstream(name, u, streaming.read_size, resolver, &mut p))
        .collect();
    let routes = super::routes::routes(&g, &mut p);
    let cache = g.cache.as_ref().and_then(|c| cache(c, &mut p));

    if !p.is_empty() {
        return Err(p);
    }
    Ok(Settings {
        listen,
        admin,
        server_timing: g.server_timing,
        access_log: g.access_log.enabled.then_some(g.access_log.format),
        access_log_fields: AccessLogFields {
            range: g.access_log.fields.contains(&AccessLogField::Range),
            user_agent: g.access_log.fields.contains(&AccessLogField::UserAgent),
            referer: g.access_log.fields.contains(&AccessLogField::Referer),
        },
        downstream,
        streaming,
        upstreams,
        routes,
        cache,
    })
}

/// The memory tier needs room for at least a few objects; the disk directory must exist or be
/// creatable, and be writable (checked with a probe file, also by `-t`).
fn cache(c: &CacheFile, p: &mut Vec<String>) -> Option<CacheSettings> {
    let before = p.len();
    let disk = c.disk.as_ref().and_then(|d| disk(d, p));
    if c.memory.0 < MIN_CACHE_MEMORY {
        p.push(format!(
            "gateway.cache.memory: {} bytes is below the minimum of 1MiB",
            c.memory.0
        ));
    }
    if c.max_object_size.0 == 0 {
        p.push("gateway.cache.max_object_size: must be at least 1 byte".to_string());
    }
    let usize_of = |key: &str, n: u64, p: &mut Vec<String>| {
        usize::try_from(n).unwrap_or_else(|_| {
            p.push(format!(
                "gateway.cache.{key}: {n} bytes does not fit this machine"
            ));
            0
        })
    };
    let memory = usize_of("memory", c.memory.0, p);
    let max_object_size = usize_of("max_object_size", c.max_object_size.0, p);
    (p.len() == before).then_some(CacheSettings {
        memory,
        max_object_size,
        default_ttl: c.default_ttl.0,
        lock_timeout: c.lock_timeout.0,
        negative_ttl: c.negative_ttl.0,
        uncacheable_ttl: c.uncacheable_ttl.0,
        disk,
    })
}

fn disk(d: &DiskFile, p: &mut Vec<String>) -> Option<DiskSettings> {
    let before = p.len();
    if d.size.0 < MIN_CACHE_MEMORY {
        p.push(format!(
            "gateway.cache.disk.size: {} bytes is below the minimum of 1MiB",
            d.size.0
        ));
    }
    if d.path.is_empty() {
        p.push("gateway.cache.disk.path: must not be empty".to_string());
        return None;
    }
    let path = std::path::PathBuf::from(&d.path);
    let probe = path.join(format!(".asset-gateway-probe-{}", std::process::id()));
    let checked = std::fs::create_dir_all(&path)
        .map_err(|e| format!("cannot create the directory: {e}"))
        .and_then(|()| {
            std::fs::write(&probe, b"probe").map_err(|e| format!("not writable: {e}"))?;
            std::fs::remove_file(&probe).map_err(|e| format!("cannot delete a probe file: {e}"))
        });
    if let Err(e) = checked {
        p.push(format!("gateway.cache.disk.path: {}: {e}", d.path));
    }
    (p.len() == before).then_some(DiskSettings { path, size: d.size.0 })
}

fn listeners(g: &GatewayFile, p: &mut Vec<String>) -> Vec<Listener> {
    if g.listen.is_empty() {
        p.push("gateway.listen: at least one address is required".to_string());
    }
    let mut listen: Vec<Listener> = Vec::new();
    for (i, l) in g.listen.iter().enumerate() {
        let key = format!("gateway.listen[{i}]");
        let addr = match l.addr.parse::<SocketAddr>() {
            Err(_) => {
                p.push(format!("{key}: {:?} is not an IP:port address", l.addr));
                continue;
            }
            Ok(a) if listen.iter().any(|o| o.addr == a) => {
                p.push(format!("{key}: {:?} is listed twice", l.addr));
                continue;
            }
            Ok(a) => a,
        };
        let kind = match (&l.tls, l.h2c, l.http2) {
            (Some(_), true, _) => {
                p.push(format!("{key}: tls and h2c exclude each other (h2c is cleartext HTTP/2; with tls, http2 is on by default)"));
                continue;
            }
            (None, _, Some(true)) => {
                p.push(format!(
                    "{key}.http2: needs tls (for cleartext HTTP/2 use h2c: true)"
                ));
                continue;
            }
            (None, true, _) => ListenerKind::H2c,
            (None, false, _) => ListenerKind::Http1,
            (Some(t), false, http2) => match tls::server_cert(&t.cert, &t.key) {
                Ok(cert) => ListenerKind::Tls {
                    cert,
                    cert_path: t.cert.clone(),
                    key_path: t.key.clone(),
                    http2: http2.unwrap_or(true),
                },
                Err((which, e)) => {
                    let field = match which {
                        tls::Which::Cert => "cert",
                        tls::Which::Key => "key",
                    };
                    p.push(format!("{key}.tls.{field}: {e}"));
                    continue;
                }
            },
        };
        listen.push(Listener { addr, kind });
    }
    listen
}

/// One upstream, or `None` with its problems added to `p`.
fn upstream(
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

/// Expands `${VAR}` from the environment. An unset variable is an error; the expanded value
/// is a secret and never appears in an error message.
pub(super) fn expand_env(template: &str) -> Result<HeaderValue, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or("unterminated ${...}")?;
        let var = &after[..end];
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("${{{var}}} is not a valid variable name"));
        }
        let value = std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    HeaderValue::from_str(&out)
        .map_err(|_| "the value (after expansion) is not a valid header value".to_string())
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

/// A path template: starts with `/`, holds only plain path characters, uses `{id}` (exactly
/// once in a route path, at least once in a rewrite), and has no empty or dot segments, so
/// nothing but a clean rewritten path can ever be produced from it.
pub(super) fn check_template(t: &str, exactly_once: bool) -> Result<(), String> {
    let uses = t.matches("{id}").count();
    if uses == 0 {
        return Err(format!("{t:?} does not use {{id}}"));
    }
    if exactly_once && uses > 1 {
        return Err(format!("{t:?} uses {{id}} more than once"));
    }
    if !t.starts_with('/') {
        return Err(format!("{t:?} must start with '/'"));
    }
    let literal = t.replace("{id}", "x");
    if let Some(c) = literal
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/-._~".contains(*c)))
    {
        return Err(format!("{t:?} has the character {c:?}; only letters, digits, '/', '-', '.', '_', '~' and {{id}} are allowed"));
    }
    if literal.contains("//") || literal.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{t:?} has an empty, '.' or '..' segment"));
    }
    Ok(())
}
