//! What the gateway changes in an upstream response before a client sees it: the framing and
//! hop-by-hop fields that belong to the upstream hop, an upgrade nobody asked for, and
//! redirects that would name a peer.
//!
//! Every function here is pure (headers in, headers out), so the policy is unit-tested here
//! and the hooks in `proxy` only call it.

use http::header::{CONTENT_LENGTH, CONTENT_LOCATION, LOCATION, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;

/// Hop-by-hop response headers (besides `Transfer-Encoding`, which frames the body).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, PROXY_AUTHENTICATE, TE, TRAILER, UPGRADE};
    matches!(*name, CONNECTION | PROXY_AUTHENTICATE | TE | TRAILER | UPGRADE)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// A `101 Switching Protocols` answers an upgrade request, and the gateway never forwards one
/// (each peer's request policy denies upgrades). Relaying it would hand the client a raw byte
/// stream from the origin.
pub fn is_unsolicited_upgrade(resp: &ResponseHeader) -> bool {
    resp.status == StatusCode::SWITCHING_PROTOCOLS
}

/// Removes the response's hop-by-hop headers and any it nominates in `Connection`.
/// `Transfer-Encoding` stays: Pingora reads it to frame the body towards the client.
/// One pass over the names first: most responses have none of these but `Connection:
/// keep-alive` (or `close`), which nominates no other header; that one is removed alone.
pub fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    let mut others = false;
    let mut connection = false;
    for name in resp.headers.keys() {
        if *name == http::header::CONNECTION {
            connection = true;
        } else if is_hop_by_hop(name) {
            others = true;
        }
    }
    if !others && !connection {
        return;
    }
    let plain = |v: &HeaderValue| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    };
    if !others && resp.headers.get_all(http::header::CONNECTION).iter().all(plain) {
        resp.remove_header(&http::header::CONNECTION);
        return;
    }
    let mut remove: Vec<HeaderName> = resp
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| *n != TRANSFER_ENCODING && *n != CONTENT_LENGTH)
        .collect();
    remove.extend(resp.headers.keys().filter(|n| is_hop_by_hop(n)).cloned());
    for name in &remove {
        resp.remove_header(name);
    }
}

/// Sends one `Content-Length` where the origin sent the same value several times (as
/// separate fields or as a list). Pingora refuses differing values before this runs
/// (RFC 9110 8.6), so any repeat here is identical.
pub fn collapse_content_length(resp: &mut ResponseHeader) {
    let values = resp.headers.get_all(CONTENT_LENGTH);
    let mut iter = values.iter();
    let (Some(first), second) = (iter.next(), iter.next()) else {
        return;
    };
    if second.is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let Some(len) = first
        .to_str()
        .ok()
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return;
    };
    let _ = resp.insert_header(CONTENT_LENGTH, len);
}

/// An HTTP/1.0 client understands neither chunked framing nor any other transfer coding
/// (RFC 9112 6.1). Without `Transfer-Encoding`, Pingora delimits the body by closing the
/// connection, and it closes it (a close-delimited body cannot be kept alive).
/// Returns whether the body became close-delimited.
pub fn frame_for_http10(resp: &mut ResponseHeader) -> bool {
    resp.remove_header(&TRANSFER_ENCODING).is_some()
}

/// Rewrites `Location` and `Content-Location` that point into the upstream's URL space
/// back into the gateway's, like nginx's default `proxy_redirect`:
/// - an absolute URL whose authority is a peer (`is_peer`) or a path-absolute reference
///   (`/v1/assets/<id>`, relative to the upstream) is mapped through the routes by `map_path`
///   (upstream path and query to client path and query);
/// - an absolute URL naming a peer that no route maps keeps only its path: a peer's address
///   is never shown to a client;
/// - anything else (another host, a relative path without `/`) is left as it is.
pub fn rewrite_locations(
    resp: &mut ResponseHeader,
    is_peer: impl Fn(&str) -> bool,
    map_path: impl Fn(&str) -> Option<String>,
) {
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(value) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(new) = rewrite_location(value, &is_peer, &map_path) {
            if let Ok(v) = HeaderValue::from_str(&new) {
                let _ = resp.insert_header(name, v);
            }
        }
    }
}

/// The new value for one location, or `None` to leave it unchanged.
fn rewrite_location(
    value: &str,
    is_peer: &impl Fn(&str) -> bool,
    map_path: &impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let (path, names_peer) = match split_absolute(value) {
        Some((authority, path)) if is_peer(authority) => (path, true),
        Some(_) => return None,
        None if value.starts_with('/') && !value.starts_with("//") => (value, false),
        None => return None,
    };
    let path = if path.is_empty() { "/" } else { path };
    match map_path(path) {
        Some(mapped) => Some(mapped),
        None if names_peer => Some(path.to_string()),
        // Relative already and not mappable: nothing to hide.
        None => None,
    }
}

/// `http://authority/path...`, `https://...` or `//authority/path...`: the authority and the
/// rest (path, query, fragment; possibly empty).
fn split_absolute(value: &str) -> Option<(&str, &str)> {
    let rest = if let Some(r) = value.strip_prefix("//") {
        r
    } else {
        let (scheme, r) = value.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        r
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(rest.split_at(end))
}

/// Whether an authority from a URL (`host[:port]`, any case) is one of `known`
/// (lower-case `host[:port]` forms). A default port (`:80`, `:443`) may be left out on
/// either side.
pub fn authority_matches(authority: &str, known: &[String]) -> bool {
    let a = authority.to_ascii_lowercase();
    let bare = |s: &str| {
        s.strip_suffix(":80")
            .or_else(|| s.strip_suffix(":443"))
            .map(str::to_string)
            .unwrap_or_else(|| s.to_string())
    };
    let a_bare = bare(&a);
    known.iter().any(|k| *k == a || bare(k) == a_bare)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn values(r: &ResponseHeader, name: &str) -> Vec<String> {
        r.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn hop_by_hop_and_nominated_headers_go_framing_stays() {
        let mut r = resp(&[
            ("connection", "x-private, content-length, transfer-encoding"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("content-length", "5"),
            ("etag", "\"a\""),
        ]);
        strip_hop_by_hop(&mut r);
        let names: Vec<&str> = r.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "etag"]);
        let mut plain = resp(&[("etag", "\"a\"")]);
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.headers.len(), 1);
        let mut usual = resp(&[("Connection", "keep-alive"), ("etag", "\"a\"")]);
        strip_hop_by_hop(&mut usual);
        assert_eq!(
            usual.headers.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["etag"]
        );
    }

    #[test]
    fn repeated_content_length_becomes_one() {
        for given in [&["5", "5"][..], &["5, 5"], &["5,5", "5"]] {
            let mut r = resp(&given.iter().map(|v| ("content-length", *v)).collect::<Vec<_>>());
            collapse_content_length(&mut r);
            assert_eq!(values(&r, "content-length"), ["5"], "{given:?}");
        }
        let mut one = resp(&[("content-length", "7")]);
        collapse_content_length(&mut one);
        assert_eq!(values(&one, "content-length"), ["7"]);
    }

    #[test]
    fn http10_clients_get_no_transfer_coding() {
        let mut r = resp(&[("transfer-encoding", "chunked"), ("etag", "x")]);
        assert!(frame_for_http10(&mut r));
        assert!(r.headers.get("transfer-encoding").is_none());
        assert!(!frame_for_http10(&mut r));
        assert_eq!(r.headers.len(), 1);
    }

    const ID: &str = "3f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0d";

    fn rewrite(value: &str) -> Option<String> {
        let known = vec!["10.0.3.7:8080".to_string(), "assets.internal".to_string()];
        rewrite_location(value, &|a: &str| authority_matches(a, &known), &|p: &str| {
            p.strip_prefix("/v1/assets/")
                .map(|rest| format!("/content/v1/assets/{rest}"))
        })
    }

    #[test]
    fn locations_pointing_at_a_peer_are_mapped_back_through_the_route() {
        let mapped = Some(format!("/content/v1/assets/{ID}"));
        assert_eq!(rewrite(&format!("http://10.0.3.7:8080/v1/assets/{ID}")), mapped);
        assert_eq!(rewrite(&format!("HTTP://Assets.Internal/v1/assets/{ID}")), mapped);
        assert_eq!(
            rewrite(&format!("https://assets.internal:443/v1/assets/{ID}")),
            mapped
        );
        assert_eq!(rewrite(&format!("//10.0.3.7:8080/v1/assets/{ID}")), mapped);
        assert_eq!(rewrite(&format!("/v1/assets/{ID}")), mapped);
        assert_eq!(
            rewrite(&format!("http://10.0.3.7:8080/v1/assets/{ID}?v=2")),
            Some(format!("/content/v1/assets/{ID}?v=2"))
        );
    }

    #[test]
    fn a_peer_address_is_never_shown_and_other_locations_are_left_alone() {
        assert_eq!(
            rewrite("http://10.0.3.7:8080/login?next=x").as_deref(),
            Some("/login?next=x")
        );
        assert_eq!(rewrite("http://10.0.3.7:8080").as_deref(), Some("/"));
        assert_eq!(rewrite("/login"), None);
        assert_eq!(rewrite("https://cdn.example.com/v1/assets/x"), None);
        assert_eq!(rewrite("http://10.0.3.77:8080/v1/assets/x"), None);
        assert_eq!(rewrite("other.html"), None);
        assert_eq!(rewrite("mailto:ops@example.com"), None);
    }
}
