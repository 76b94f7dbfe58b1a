//! Who may use the admin API. With `admin_token` set, every endpoint but `/healthz` and
//! `/readyz` (the probes) needs `Authorization: Bearer <token>`; without it, the API is open
//! except `DELETE` (purge), which only loopback clients may send.

use crate::headers;
use http::Response;
use pingora::http::RequestHeader;
use ring::hmac;
use std::net::IpAddr;

pub(crate) struct AdminGate {
    /// The token, kept as its HMAC under a key made at start: `hmac::verify` compares a
    /// presented token with it in constant time.
    token: Option<(hmac::Key, hmac::Tag)>,
}

impl AdminGate {
    pub(crate) fn new(token: Option<&[u8]>) -> AdminGate {
        let token = token.map(|t| {
            let rng = ring::rand::SystemRandom::new();
            // Never open for want of randomness: the comparison stays constant-time under a
            // fixed key too (the random one only keeps the tag unpredictable).
            let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
                .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, b"asset-gateway admin token"));
            let tag = hmac::sign(&key, t);
            (key, tag)
        });
        AdminGate { token }
    }

    /// `None`: the request may go on; otherwise the answer to send.
    pub(crate) fn check(&self, req: &RequestHeader, peer: Option<IpAddr>) -> Option<Response<Vec<u8>>> {
        if matches!(req.uri.path(), "/healthz" | "/readyz") {
            return None;
        }
        match &self.token {
            Some((key, tag)) => {
                let presented = bearer(req).unwrap_or_default();
                let ok = hmac::verify(key, presented, tag.as_ref()).is_ok();
                (!ok).then(|| {
                    answer(
                        401,
                        "an admin token is required: Authorization: Bearer <gateway.admin_token>\n",
                        Some("Bearer realm=\"asset-gateway admin\""),
                    )
                })
            }
            None => {
                let loopback = peer.is_some_and(|ip| ip.to_canonical().is_loopback());
                (req.method == http::Method::DELETE && !loopback).then(|| {
                    answer(
                        403,
                        "purges are accepted from loopback only unless gateway.admin_token is set\n",
                        None,
                    )
                })
            }
        }
    }
}

/// The token of `Authorization: Bearer <token>`, if the request carries one.
pub(crate) fn bearer(req: &RequestHeader) -> Option<&[u8]> {
    let v = req.headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = v.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

fn answer(status: u16, body: &'static str, challenge: Option<&'static str>) -> Response<Vec<u8>> {
    let body = body.as_bytes().to_vec();
    match headers::own_answer(status, "text/plain", body.len(), None) {
        Ok(mut h) => {
            if let Some(c) = challenge {
                let _ = h.insert_header(http::header::WWW_AUTHENTICATE, c);
            }
            Response::from_parts(h.as_owned_parts(), body)
        }
        Err(_) => Response::new(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, auth: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        if let Some(a) = auth {
            r.insert_header("authorization", a).unwrap();
        }
        r
    }

    #[test]
    fn the_token_guards_everything_but_the_probes() {
        let g = AdminGate::new(Some(b"s3cret-s3cret-s3cret"));
        let remote = Some("10.1.2.3".parse().unwrap());
        assert!(g.check(&req("GET", "/healthz", None), remote).is_none());
        assert!(g.check(&req("GET", "/readyz", None), remote).is_none());
        let r = g.check(&req("GET", "/metrics", None), remote).unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert!(g
            .check(
                &req("GET", "/metrics", Some("Bearer s3cret-s3cret-s3cre")),
                remote
            )
            .is_some());
        assert!(g
            .check(
                &req("GET", "/metrics", Some("Basic s3cret-s3cret-s3cret")),
                remote
            )
            .is_some());
        assert!(g
            .check(
                &req("GET", "/metrics", Some("Bearer s3cret-s3cret-s3cret")),
                remote
            )
            .is_none());
        assert!(g
            .check(
                &req("DELETE", "/cache/x", Some("bearer s3cret-s3cret-s3cret")),
                remote
            )
            .is_none());
    }

    #[test]
    fn without_a_token_only_loopback_may_purge() {
        let g = AdminGate::new(None);
        let remote = Some("10.1.2.3".parse().unwrap());
        let local = Some("127.0.0.1".parse().unwrap());
        assert!(g.check(&req("GET", "/metrics", None), remote).is_none());
        assert_eq!(
            g.check(&req("DELETE", "/cache/x", None), remote)
                .unwrap()
                .status(),
            403
        );
        assert!(g.check(&req("DELETE", "/cache/x", None), local).is_none());
        assert!(g
            .check(&req("DELETE", "/cache/x", None), Some("::1".parse().unwrap()))
            .is_none());
    }
}
