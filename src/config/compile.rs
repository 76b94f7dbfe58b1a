//! Turns the file's `gateway:` section into [`Settings`]: each section is checked and
//! converted by the module named for it (`listen`, `downstream`, `streaming`, `upstreams`,
//! `routes`, `cache`, `access`), cross-references included; this module joins them and checks
//! the few top-level keys. Every problem is collected with its key path and all are reported
//! together; nothing is returned half-built.

use super::file::{AccessLogField, GatewayFile};
use super::runtime::{AccessLogFields, Settings, Upstream};
use std::net::SocketAddr;

pub(super) fn compile(g: GatewayFile) -> Result<Settings, Vec<String>> {
    let mut p = Vec::new();
    let listen = super::listen::listeners(&g, &mut p);
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

    let downstream = super::downstream::downstream(&g.downstream, &mut p);
    let streaming = super::streaming::streaming(&g.streaming, &mut p);

    if g.upstreams.is_empty() {
        p.push("gateway.upstreams: at least one upstream is required".to_string());
    }
    let upstreams: Vec<Upstream> = g
        .upstreams
        .iter()
        .filter_map(|(name, u)| super::upstreams::upstream(name, u, streaming.read_size, resolver, &mut p))
        .collect();
    let routes = super::routes::routes(&g, &mut p);
    let cache = g.cache.as_ref().and_then(|c| super::cache::cache(c, &mut p));
    let access = super::access::compile(g.admin_token.as_ref(), &g.auth, &g.client_ip, &mut p);

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
        access,
    })
}
