//! Who may fetch and who may purge, as configured: the gateway-wide part (`admin_token`,
//! `auth`, `client_ip`) and each route's (`auth`, `rate_limit`, `cors`). The keys themselves
//! are checked in `auth`, `client_ip`, `rate_limit` and `cors`; this module joins them and
//! gives `compile` one call for the gateway and one per route.

use super::auth::{self, AuthFile, AuthMethod, AuthSettings};
use super::client_ip::{self, ClientIpFile, ClientIpSettings};
use super::cors::{self, CorsFile, CorsSettings};
use super::rate_limit::{self, RateLimit, RateLimitFile};
use crate::routing::QueryRule;
use http::HeaderName;
use std::net::SocketAddr;

/// The gateway-wide settings.
#[derive(Debug, Default)]
pub(crate) struct AccessSettings {
    /// `None`: the admin API is open, except `DELETE` from other than loopback.
    pub admin_token: Option<Vec<u8>>,
    pub auth: AuthSettings,
    pub client_ip: ClientIpSettings,
}

/// One route's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RouteAccess {
    /// Empty: public.
    pub auth: Vec<AuthMethod>,
    pub rate_limit: Option<RateLimit>,
    pub cors: Option<CorsSettings>,
}

pub(super) fn compile(
    admin_token: Option<&String>,
    auth: &AuthFile,
    client_ip: &ClientIpFile,
    p: &mut Vec<String>,
) -> AccessSettings {
    AccessSettings {
        admin_token: auth::admin_token(admin_token, p),
        auth: auth::compile(auth, p),
        client_ip: client_ip::compile(client_ip, p),
    }
}

/// `routes[i]`'s keys of this concern; `key` is `gateway.routes[i]`.
pub(super) fn compile_route(
    key: &str,
    (methods, limit, cors): (&[AuthMethod], Option<&RateLimitFile>, Option<&CorsFile>),
    auth: &AuthFile,
    p: &mut Vec<String>,
) -> RouteAccess {
    auth::route_auth(key, methods, auth, p);
    RouteAccess {
        auth: methods.to_vec(),
        rate_limit: limit.and_then(|l| rate_limit::compile(key, l, p)),
        cors: cors.and_then(|c| cors::compile(key, c, p)),
    }
}

/// A route's forwarding rules against its access control: the credentials the gateway checks
/// and removes itself can be neither forwarded (`forward_headers: [authorization]` on a route
/// with `auth`, the JWT subject header anywhere) nor let through the query (`exp`, `kid`, `sig`
/// in `query.allow` on a signed-URL route). Listing them would read as if the upstream got
/// them; it never does.
pub(super) fn check_forwarding(
    key: &str,
    access: &RouteAccess,
    forward_headers: Option<&[String]>,
    query: &QueryRule,
    subject_header: Option<&str>,
    p: &mut Vec<String>,
) {
    for (j, name) in forward_headers.unwrap_or_default().iter().enumerate() {
        if !access.auth.is_empty() && name.eq_ignore_ascii_case("authorization") {
            p.push(format!(
                "{key}.forward_headers[{j}]: {name:?}: on a route with auth the gateway verifies the credential and removes the header before the cache and the upstream (auth.jwt.subject_header can pass the token's sub on)"
            ));
        }
        if subject_header.is_some_and(|h| name.eq_ignore_ascii_case(h)) {
            p.push(format!(
                "{key}.forward_headers[{j}]: {name:?} is gateway.auth.jwt.subject_header: set by the gateway from a verified token (the client's own value never reaches the upstream)"
            ));
        }
    }
    if let (true, QueryRule::Allow(names)) = (access.auth.contains(&AuthMethod::SignedUrl), query) {
        for (j, name) in names.iter().enumerate() {
            if auth::SIGNATURE_PARAMS.contains(&name.as_str()) {
                p.push(format!(
                    "{key}.query.allow[{j}]: {name:?} is a parameter of the URL signature: checked, then removed (never forwarded, never in the cache key)"
                ));
            }
        }
    }
}

/// The subject header the upstream of this route gets, set from a verified token: only on a
/// route that admits tokens.
pub(crate) fn subject_header<'a>(
    access: &RouteAccess,
    settings: &'a AccessSettings,
) -> Option<&'a HeaderName> {
    let jwt = settings.auth.jwt.as_ref()?;
    access
        .auth
        .contains(&AuthMethod::Jwt)
        .then_some(jwt.subject_header.as_ref())
        .flatten()
}

/// What `-t` says about a route's access control: one indented line per rule; empty for a
/// public route without limit or CORS.
pub(super) fn explain_route(access: &RouteAccess, settings: &AccessSettings) -> String {
    let mut out = String::new();
    if !access.auth.is_empty() {
        let names: Vec<&str> = access
            .auth
            .iter()
            .map(|m| match m {
                AuthMethod::SignedUrl => "a signed URL",
                AuthMethod::Jwt => "a bearer JWT",
            })
            .collect();
        out.push_str(&format!(
            "  auth: {} admits, checked before the cache (a hit needs it too); Authorization is removed once verified",
            names.join(" or ")
        ));
        if access.auth.contains(&AuthMethod::SignedUrl) {
            out.push_str("; exp, kid and sig are checked, then removed (never forwarded, never keyed)");
        }
        if let Some(h) = subject_header(access, settings) {
            out.push_str(&format!(
                "; the upstream gets the token's sub in {h} (forwarded and keyed like a listed header)"
            ));
        }
        out.push('\n');
    }
    if let Some(l) = &access.rate_limit {
        let counts = match l.counts {
            rate_limit::Counts::All => "every request",
            rate_limit::Counts::Upstream => "only requests that reach the upstream",
        };
        out.push_str(&format!(
            "  rate limit per client: {}, burst {}; counts {counts}\n",
            rate(l.interval),
            l.burst
        ));
    }
    if let Some(c) = &access.cors {
        out.push_str(&match c.any {
            true => "  cors: any origin; Access-Control-Allow-Origin: * is added to each response (never stored)\n".to_string(),
            false => format!(
                "  cors: {}; Access-Control-Allow-Origin and Vary: Origin are added to each response (never stored: one cached object for every origin)\n",
                c.origins.join(", ")
            ),
        });
    }
    out
}

/// A bucket's refill interval as the file writes a rate (`100/s`, `30/m`, `5/h`).
fn rate(interval: std::time::Duration) -> String {
    // `Duration / n` rounds down, so the count is the one whose interval that is.
    for (unit, per) in [("s", 1u64), ("m", 60), ("h", 3600)] {
        let per = std::time::Duration::from_secs(per);
        let n = (per.as_secs_f64() / interval.as_secs_f64()).round() as u32;
        if n >= 1 && per / n == interval {
            return format!("{n}/{unit}");
        }
    }
    format!("one request every {interval:?}")
}

/// What `-t` warns about (the file is valid, but probably not what was meant).
pub(super) fn warnings(admin: Option<SocketAddr>, a: &AccessSettings) -> Vec<String> {
    let mut w = Vec::new();
    if let (Some(addr), None) = (admin, &a.admin_token) {
        if !addr.ip().is_loopback() {
            w.push(format!(
                "gateway.admin: {addr} is reachable from other hosts and gateway.admin_token is not set: anyone who reaches it can read /metrics and the cache stats (purges are refused from other than loopback)"
            ));
        }
    }
    if let Some(super::auth::JwksSource::Url(url)) = a.auth.jwt.as_ref().map(|j| &j.source) {
        if url.scheme_str() == Some("http") && !url.host().is_some_and(is_loopback_host) {
            w.push(format!(
                "gateway.auth.jwt.jwks_url: {url} is plain HTTP to another host: whoever can alter that traffic can hand the gateway their own keys and sign any token; use https:// (or a jwks file)"
            ));
        }
    }
    w
}

/// `localhost` (and names under it, RFC 6761) or a loopback address.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST.",
            "a.localhost",
            "127.0.0.1",
            "127.9.9.9",
            "[::1]",
            "::1",
        ] {
            assert!(super::is_loopback_host(host), "{host}");
        }
        for host in [
            "auth.internal",
            "10.0.0.1",
            "[2001:db8::1]",
            "localhost.example",
            "notlocalhost",
        ] {
            assert!(!super::is_loopback_host(host), "{host}");
        }
    }
}
