//! `asset-gateway sign -c FILE --kid k1 --ttl 1h /content/v1/assets/<id>[?query]`: prints the
//! signed path, for applications and operators to produce and check URLs. The signature is
//! computed exactly as the gateway checks it, with the keys and routes of FILE (so the query
//! parameters that reach the upstream are those the route forwards).

use crate::access::signed_url::{self, SignedUrls};
use crate::config::Config;
use crate::routing::Resolution;

const USAGE: &str =
    "usage: asset-gateway sign -c FILE --kid KID (--ttl DURATION | --exp UNIX_SECONDS) PATH[?QUERY]";

/// Runs the subcommand with its arguments (after `sign`); returns the exit code.
pub fn main(args: impl Iterator<Item = String>) -> i32 {
    match run(args) {
        Ok(signed) => {
            println!("{signed}");
            0
        }
        Err(e) => {
            eprintln!("asset-gateway sign: {e}");
            2
        }
    }
}

fn run(mut args: impl Iterator<Item = String>) -> Result<String, String> {
    let (mut conf, mut kid, mut ttl, mut exp, mut target) = (None, None, None, None, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "-c" | "--conf" => conf = Some(value()?),
            "--kid" => kid = Some(value()?),
            "--ttl" => ttl = Some(value()?),
            "--exp" => exp = Some(value()?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ if a.starts_with('-') => return Err(format!("unknown option {a}\n{USAGE}")),
            _ if target.is_none() => target = Some(a),
            _ => return Err(format!("one path only\n{USAGE}")),
        }
    }
    let (Some(conf), Some(kid), Some(target)) = (conf, kid, target) else {
        return Err(USAGE.to_string());
    };
    let config = Config::load(&conf).map_err(|e| e.to_string())?;
    let s = &config.gateway;
    let keys = s
        .access
        .auth
        .signed_url
        .as_ref()
        .ok_or_else(|| format!("{conf}: gateway.auth.signed_url is not configured"))?;
    let urls = SignedUrls::new(&keys.keys, keys.max_ttl);
    let now = crate::access::unix_now();
    let exp = match (ttl, exp) {
        (Some(t), None) => now + crate::config::parse_duration(&t)?.as_secs(),
        (None, Some(e)) => e.parse().map_err(|_| format!("--exp {e:?}: not Unix seconds"))?,
        _ => return Err(format!("one of --ttl and --exp\n{USAGE}")),
    };
    if exp.saturating_sub(now) > urls.max_ttl().as_secs() {
        return Err(format!(
            "the expiry is further out than gateway.auth.signed_url.max_ttl ({}s): the gateway would refuse it",
            urls.max_ttl().as_secs()
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.as_str(), None),
    };
    let router = crate::gateway::router(s);
    let Resolution::Asset { route, id } = router.resolve(path) else {
        return Err(format!(
            "{path}: no route has this path (or the id is not a UUID)"
        ));
    };
    if !s.routes[route]
        .access
        .auth
        .contains(&crate::config::AuthMethod::SignedUrl)
    {
        eprintln!(
            "asset-gateway sign: warning: the route {} does not list signed_url in its auth",
            s.routes[route].template
        );
    }
    let upstream = router.route(route).upstream_path(&id, query);
    let upstream_query = upstream.split_once('?').map(|(_, q)| q);
    // What the route's `query` rule keeps out of the upstream is not signed either (it could
    // not select another rendition): say so, so nobody counts on it.
    let unsigned: Vec<&str> = query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && !signed_url::is_own(p))
        .filter(|p| !upstream_query.unwrap_or_default().split('&').any(|u| u == *p))
        .collect();
    if !unsigned.is_empty() {
        eprintln!(
            "asset-gateway sign: note: {} do(es) not reach the upstream on the route {} (its query rule), so the signature does not cover it",
            unsigned.join(", "),
            s.routes[route].template
        );
    }
    let sig = urls
        .sign(&kid, path, exp, upstream_query)
        .ok_or_else(|| format!("--kid {kid}: no such key in gateway.auth.signed_url.keys"))?;
    let mut out = path.to_string();
    out.push('?');
    if let Some(rest) = query.and_then(signed_url::strip) {
        out.push_str(&rest);
        out.push('&');
    }
    out.push_str(&format!("exp={exp}&kid={kid}&sig={sig}"));
    Ok(out)
}
