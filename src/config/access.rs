//! Who may fetch and who may purge, as configured: the gateway-wide part (`admin_token`,
//! `auth`, `client_ip`) and each route's (`auth`, `rate_limit`, `cors`). The keys themselves
//! are checked in `auth`, `client_ip`, `rate_limit` and `cors`; this module joins them and
//! gives `compile` one call for the gateway and one per route.

use super::auth::{self, AuthFile, AuthMethod, AuthSettings};
use super::client_ip::{self, ClientIpFile, ClientIpSettings};
use super::cors::{self, CorsFile, CorsSettings};
use super::rate_limit::{self, RateLimit, RateLimitFile};
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
    w
}
