//! `gateway.routes`: each route checked and cross-referenced (its upstream, the cache), with
//! what a cached route keys on and forwards (`query`, `forward_headers`, `vary_accept`), and
//! the explanation `-t` prints of it.

use super::file::{GatewayFile, QueryFile, RouteFile};
use super::runtime::Route;
use crate::headers::GATEWAY_OWNED;
use crate::routing::QueryRule;
use http::HeaderName;
use std::collections::BTreeMap;

/// Request headers that never reach an upstream: hop-by-hop (RFC 9110 7.6.1, and the
/// `Proxy-*` ones), and the framing of a body the gateway never accepts.
const NEVER_FORWARDED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
];

/// What a cached route forwards when `forward_headers` is not set.
const DEFAULT_FORWARD: &str = "accept";

pub(super) fn routes(g: &GatewayFile, p: &mut Vec<String>) -> Vec<Route> {
    if g.routes.is_empty() {
        p.push("gateway.routes: at least one route is required".to_string());
    }
    let mut paths: BTreeMap<&str, usize> = BTreeMap::new();
    let mut routes = Vec::new();
    for (i, route) in g.routes.iter().enumerate() {
        let key = format!("gateway.routes[{i}]");
        if let Err(e) = check_template(&route.path, true) {
            p.push(format!("{key}.path: {e}"));
        }
        if let Err(e) = check_template(&route.rewrite, false) {
            p.push(format!("{key}.rewrite: {e}"));
        }
        if route.cache == Some(true) && g.cache.is_none() {
            p.push(format!("{key}.cache: needs gateway.cache (the cache is off)"));
        }
        if let Some(first) = paths.insert(&route.path, i) {
            p.push(format!(
                "{key}.path: {:?} is already the path of gateway.routes[{first}]",
                route.path
            ));
        }
        let cache = g.cache.is_some() && route.cache != Some(false);
        let query = query(&key, route, cache, p);
        let forward_headers = forward_headers(&key, route, cache, p);
        let vary_accept = vary_accept(&key, route, cache, &forward_headers, p);
        let access = super::access::compile_route(
            &key,
            (&route.auth, route.rate_limit.as_ref(), route.cors.as_ref()),
            &g.auth,
            p,
        );
        let subject = g.auth.jwt.as_ref().and_then(|j| j.subject_header.as_deref());
        super::access::check_forwarding(
            &key,
            &access,
            route.forward_headers.as_deref(),
            &query,
            subject,
            p,
        );
        // Upstreams are kept in the order of their names, like `g.upstreams`.
        match g.upstreams.keys().position(|n| *n == route.upstream) {
            Some(upstream) => routes.push(Route {
                template: route.path.clone(),
                rewrite: route.rewrite.clone(),
                upstream,
                query,
                cache,
                forward_headers,
                vary_accept,
                access,
            }),
            None => {
                let defined: Vec<&str> = g.upstreams.keys().map(String::as_str).collect();
                p.push(format!(
                    "{key}.upstream: unknown upstream {:?} (defined: {})",
                    route.upstream,
                    defined.join(", ")
                ));
            }
        }
    }
    routes
}

/// `drop` by default on a cached route (a random `?r=` must not skip the cache), `forward` on
/// any other (as before the cache existed).
fn query(key: &str, route: &RouteFile, cache: bool, p: &mut Vec<String>) -> QueryRule {
    match &route.query {
        None if cache => QueryRule::Drop,
        None | Some(QueryFile::Forward) => QueryRule::Forward,
        Some(QueryFile::Drop) => QueryRule::Drop,
        Some(QueryFile::Allow(names)) => {
            if names.is_empty() {
                p.push(format!(
                    "{key}.query.allow: at least one parameter name (or query: drop)"
                ));
            }
            for (j, name) in names.iter().enumerate() {
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"&=#?%+".contains(&b));
                if !ok {
                    p.push(format!(
                        "{key}.query.allow[{j}]: {name:?} is not a plain parameter name (visible ASCII without & = # ? % +)"
                    ));
                }
                if names[..j].contains(name) {
                    p.push(format!("{key}.query.allow[{j}]: {name:?} is listed twice"));
                }
            }
            QueryRule::Allow(names.clone())
        }
    }
}

/// The client headers a cached route forwards besides the gateway's own (`[accept]` by
/// default); empty on a route without cache, where the key does not apply.
fn forward_headers(key: &str, route: &RouteFile, cache: bool, p: &mut Vec<String>) -> Vec<HeaderName> {
    let Some(list) = &route.forward_headers else {
        return match cache {
            true => vec![HeaderName::from_static(DEFAULT_FORWARD)],
            false => Vec::new(),
        };
    };
    if !cache {
        p.push(format!(
            "{key}.forward_headers: only applies to a cached route (a route without cache forwards every client header but the hop-by-hop ones)"
        ));
        return Vec::new();
    }
    let mut out: Vec<HeaderName> = Vec::new();
    for (j, name) in list.iter().enumerate() {
        let key = format!("{key}.forward_headers[{j}]");
        let Ok(h) = HeaderName::from_bytes(name.as_bytes()) else {
            p.push(format!("{key}: {name:?} is not a header name"));
            continue;
        };
        if name.contains('_') {
            p.push(format!(
                "{key}: {name:?}: client headers with '_' in their name are dropped (see README, request head checks)"
            ));
        } else if NEVER_FORWARDED.contains(&h.as_str()) {
            p.push(format!("{key}: {name:?} is hop-by-hop: never forwarded"));
        } else if GATEWAY_OWNED.contains(&h) {
            p.push(format!(
                "{key}: {name:?} is the gateway's own: always forwarded (or set by the gateway), no need to list it"
            ));
        } else if out.contains(&h) {
            p.push(format!("{key}: {name:?} is listed twice"));
        } else {
            out.push(h);
        }
    }
    out
}

/// `image/avif`-like media types (no parameters, no wildcards), lower-cased.
fn vary_accept(
    key: &str,
    route: &RouteFile,
    cache: bool,
    forwarded: &[HeaderName],
    p: &mut Vec<String>,
) -> Vec<String> {
    let Some(list) = &route.vary_accept else {
        return Vec::new();
    };
    let key = format!("{key}.vary_accept");
    if !cache {
        p.push(format!("{key}: only applies to a cached route"));
        return Vec::new();
    }
    if list.is_empty() {
        p.push(format!("{key}: at least one media type (or leave it out)"));
    }
    if !forwarded.contains(&http::header::ACCEPT) {
        p.push(format!(
            "{key}: needs accept in forward_headers (the origin would never see the client's Accept)"
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (j, t) in list.iter().enumerate() {
        let lower = t.to_ascii_lowercase();
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        match lower.split_once('/') {
            Some((kind, sub)) if token(kind) && token(sub) => {
                if out.contains(&lower) {
                    p.push(format!("{key}[{j}]: {t:?} is listed twice"));
                }
                out.push(lower);
            }
            _ => p.push(format!(
                "{key}[{j}]: {t:?} is not a media type such as image/avif (no wildcards, no parameters)"
            )),
        }
    }
    out
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

/// What `-t` warns about routes (valid, but probably not what was meant).
pub(crate) fn warnings(routes: &[Route]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate().filter(|(_, r)| r.cache) {
        if r.vary_accept.is_empty() && r.forward_headers.contains(&http::header::ACCEPT) {
            out.push(format!(
                "gateway.routes[{i}] ({}): a cached route forwards Accept without vary_accept: an origin's Vary: Accept then keys on the raw value, so each spelling is an object of its own and a client that varies its Accept reaches the origin every time and fills the cache; set vary_accept (e.g. [image/avif, image/webp]), or forward_headers: [] if the origin ignores Accept",
                r.template
            ));
        }
        // Valid (an origin may serve renditions by any parameter), but the raw query is then
        // in the key: `?r=<random>` skips the cache on every request and fills it.
        if r.query == QueryRule::Forward {
            out.push(format!(
                "gateway.routes[{i}] ({}): a cached route with query: forward keys on the raw query string: ?r=<random> reaches the origin every time and fills the cache, and ?a=1&b=2 and ?b=2&a=1 are two objects; list what the origin reads with query: {{allow: [...]}}, or leave query out (drop)",
                r.template
            ));
        }
    }
    out
}

/// What `-t` says about each route: for a cached route, what reaches the upstream and what
/// the cache key holds.
pub(crate) fn explain(routes: &[Route], access: &super::AccessSettings) -> String {
    let owned: Vec<&str> = GATEWAY_OWNED.iter().map(HeaderName::as_str).collect();
    let mut out = String::new();
    for r in routes {
        let query = match &r.query {
            QueryRule::Forward => "the client's query string, unchanged".to_string(),
            QueryRule::Drop => "none (the client's query string is dropped)".to_string(),
            QueryRule::Allow(names) => {
                format!("only {}, sorted by name, then value", names.join(", "))
            }
        };
        if !r.cache {
            out.push_str(&format!(
                "route {} (not cached): every client header but the hop-by-hop ones reaches the upstream; query: {query}\n",
                r.template
            ));
            out.push_str(&super::access::explain_route(&r.access, access));
            continue;
        }
        let listed: Vec<&str> = r.forward_headers.iter().map(HeaderName::as_str).collect();
        let listed = match listed.is_empty() {
            true => "none".to_string(),
            false => listed.join(", "),
        };
        let accept = match r.vary_accept.is_empty() {
            true => String::new(),
            false => format!(
                "; Vary: Accept keys on the first of {} the client accepts, else \"other\" (the upstream gets that Accept, or none for other)",
                r.vary_accept.join(", ")
            ),
        };
        out.push_str(&format!(
            "route {} (cached):\n  client headers forwarded: {listed}; plus the gateway's own: {} (every other client header is removed)\n  query forwarded and keyed: {query}\n  cache key: route + asset id + that query + the values of the forwarded headers the response's Vary names{accept}\n",
            r.template,
            owned.join(", ")
        ));
        out.push_str(&super::access::explain_route(&r.access, access));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use crate::routing::QueryRule;

    fn config(route_extra: &str, cache: bool) -> Result<Config, String> {
        let cache = if cache { "  cache: {memory: 8MiB}\n" } else { "" };
        Config::from_yaml(&format!(
            "gateway:\n  listen: [\"127.0.0.1:8080\"]\n{cache}  upstreams:\n    assets:\n      peers: [\"127.0.0.1:9001\"]\n  routes:\n    - path: /a/{{id}}\n      upstream: assets\n      rewrite: /b/{{id}}\n{route_extra}"
        ))
        .map_err(|p| p.join("\n"))
    }

    #[test]
    fn accept_without_vary_accept_is_warned_about() {
        let warned = |extra: &str, cache: bool| config(extra, cache).unwrap().warnings;
        let w = warned("", true);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("forwards Accept without vary_accept"), "{w:?}");
        assert!(warned("      vary_accept: [image/webp]\n", true).is_empty());
        assert!(warned("      forward_headers: [accept-language]\n", true).is_empty());
        assert!(warned("", false).is_empty());
        let w = warned("      query: forward\n      forward_headers: []\n", true);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("query: forward keys on the raw query string"),
            "{w:?}"
        );
        assert!(warned("      query: forward\n", false).is_empty());
        assert!(warned("      query: {allow: [w]}\n      forward_headers: []\n", true).is_empty());
    }

    #[test]
    fn cached_routes_drop_the_query_and_forward_accept_by_default() {
        let c = config("", true).unwrap();
        let r = &c.gateway.routes[0];
        assert_eq!(r.query, QueryRule::Drop);
        assert_eq!(r.forward_headers, ["accept"]);
        assert!(r.vary_accept.is_empty());
        // Without cache: as before.
        let c = config("", false).unwrap();
        let r = &c.gateway.routes[0];
        assert_eq!(r.query, QueryRule::Forward);
        assert!(r.forward_headers.is_empty());
    }

    #[test]
    fn the_keys_of_a_cached_route_load() {
        let c = config(
            "      query: {allow: [w, fmt]}\n      forward_headers: [Accept, accept-language, cookie]\n      vary_accept: [image/AVIF, image/webp]\n",
            true,
        )
        .unwrap();
        let r = &c.gateway.routes[0];
        assert_eq!(r.query, QueryRule::Allow(vec!["w".into(), "fmt".into()]));
        assert_eq!(r.forward_headers, ["accept", "accept-language", "cookie"]);
        assert_eq!(r.vary_accept, ["image/avif", "image/webp"]);
        for (q, want) in [("forward", QueryRule::Forward), ("drop", QueryRule::Drop)] {
            let c = config(&format!("      query: {q}\n"), true).unwrap();
            assert_eq!(c.gateway.routes[0].query, want);
        }
        let explained = super::explain(&c.gateway.routes, &c.gateway.access);
        assert!(
            explained.contains("client headers forwarded: accept, accept-language, cookie"),
            "{explained}"
        );
        assert!(explained.contains("only w, fmt, sorted by name"), "{explained}");
    }

    #[test]
    fn bad_keys_are_named() {
        let cases = [
            (
                "      query: {allow: []}\n",
                true,
                "gateway.routes[0].query.allow: at least one",
            ),
            (
                "      query: {allow: [\"a=b\"]}\n",
                true,
                "gateway.routes[0].query.allow[0]",
            ),
            (
                "      query: {allow: [w, w]}\n",
                true,
                "gateway.routes[0].query.allow[1]: \"w\" is listed twice",
            ),
            ("      query: {deny: [w]}\n", true, "unknown field `deny`"),
            ("      query: keep\n", true, "unknown variant `keep`"),
            (
                "      forward_headers: [accept]\n",
                false,
                "gateway.routes[0].forward_headers: only applies to a cached route",
            ),
            (
                "      forward_headers: [host]\n",
                true,
                "gateway.routes[0].forward_headers[0]: \"host\" is the gateway's own",
            ),
            (
                "      forward_headers: [range]\n",
                true,
                "forward_headers[0]: \"range\" is the gateway's own",
            ),
            (
                "      forward_headers: [connection]\n",
                true,
                "forward_headers[0]: \"connection\" is hop-by-hop",
            ),
            (
                "      forward_headers: [x_user]\n",
                true,
                "forward_headers[0]: \"x_user\": client headers with '_'",
            ),
            (
                "      forward_headers: [\"a b\"]\n",
                true,
                "forward_headers[0]: \"a b\" is not a header name",
            ),
            (
                "      forward_headers: [accept, Accept]\n",
                true,
                "forward_headers[1]: \"Accept\" is listed twice",
            ),
            (
                "      vary_accept: [image/webp]\n",
                false,
                "gateway.routes[0].vary_accept: only applies to a cached route",
            ),
            (
                "      vary_accept: [\"image/*\"]\n",
                true,
                "gateway.routes[0].vary_accept[0]: \"image/*\" is not a media type",
            ),
            (
                "      vary_accept: [\"image/webp;q=1\"]\n",
                true,
                "vary_accept[0]: \"image/webp;q=1\" is not a media type",
            ),
            (
                "      vary_accept: []\n",
                true,
                "vary_accept: at least one media type",
            ),
            (
                "      forward_headers: []\n      vary_accept: [image/webp]\n",
                true,
                "vary_accept: needs accept in forward_headers",
            ),
        ];
        for (extra, cache, want) in cases {
            match config(extra, cache) {
                Ok(_) => panic!("{extra:?} was accepted"),
                Err(p) => assert!(p.contains(want), "{extra:?}: {p}"),
            }
        }
    }
}
