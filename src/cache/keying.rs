//! What a cached route sends upstream and keys on besides route, asset id and canonical
//! query: the client headers it forwards (`forward_headers`; every other one is removed, so
//! nothing the key does not hold can shape a stored answer), and `Accept` reduced to one of
//! the media types of `vary_accept` for an origin's `Vary: Accept`. Pure: header maps in,
//! header maps out.

use crate::headers::GATEWAY_OWNED;
use http::header::ACCEPT;
use http::{HeaderName, HeaderValue};
use pingora::cache::key::HashBinary;
use pingora::cache::VarianceBuilder;
use pingora::http::{RequestHeader, ResponseHeader};

/// The class of the clients whose `Accept` names none of `vary_accept`.
const OTHER: &str = "other";

/// One cached route's forwarding and keying rules.
pub(crate) struct Keying {
    /// Client headers forwarded besides [`GATEWAY_OWNED`].
    forward: Vec<HeaderName>,
    /// The media types `Vary: Accept` keys on, in order of preference; empty: the raw value.
    vary_accept: Vec<(String, HeaderValue)>,
}

impl Keying {
    pub(crate) fn new(forward: &[HeaderName], vary_accept: &[String]) -> Keying {
        Keying {
            forward: forward.to_vec(),
            vary_accept: vary_accept
                .iter()
                .filter_map(|t| Some((t.clone(), HeaderValue::from_str(t).ok()?)))
                .collect(),
        }
    }

    /// Whether the client's `name` reaches the upstream.
    pub(crate) fn forwards(&self, name: &HeaderName) -> bool {
        self.forward.contains(name) || GATEWAY_OWNED.contains(name)
    }

    /// The upstream request of a cached route: every client header that is neither the
    /// gateway's own nor listed is removed, and with `vary_accept`, `Accept` becomes the
    /// media type the key holds (none for "other"), so the origin answers exactly what the
    /// key says. Runs before the gateway sets its own headers.
    pub(crate) fn upstream_request(&self, req: &mut RequestHeader) {
        let removed: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|n| !self.forwards(n))
            .cloned()
            .collect();
        for name in removed {
            req.remove_header(&name);
        }
        if self.vary_accept.is_empty() {
            return;
        }
        match self.accept_class(req) {
            Some(i) => {
                let _ = req.insert_header(ACCEPT, self.vary_accept[i].1.clone());
            }
            None => {
                req.remove_header(&ACCEPT);
            }
        }
    }

    /// The index in `vary_accept` of the first media type the request's `Accept` names with
    /// a non-zero `q`; `None`: "other". Wildcards (`image/*`, `*/*`) do not count: every
    /// browser sends them, whatever it can decode.
    fn accept_class(&self, req: &RequestHeader) -> Option<usize> {
        let accepted = |wanted: &str| {
            req.headers
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|entry| {
                    let mut parts = entry.split(';');
                    let kind = parts.next().unwrap_or_default().trim();
                    kind.eq_ignore_ascii_case(wanted) && parts.all(|param| !is_q_zero(param))
                })
        };
        self.vary_accept.iter().position(|(t, _)| accepted(t))
    }

    /// The variance of a request against a stored (or storing) response: the request's
    /// values of the headers its `Vary` names, skipping those the route does not forward (the
    /// origin never saw them, so its answer cannot depend on them), with `Accept` reduced to
    /// its class when `vary_accept` is set. `None` without (a forwarded) `Vary`.
    pub(crate) fn variance(&self, resp: &ResponseHeader, req: &RequestHeader) -> Option<HashBinary> {
        let mut b = VarianceBuilder::new();
        for name in super::policy::vary_names(resp) {
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            if !self.forwards(&header) {
                continue;
            }
            if header == ACCEPT && !self.vary_accept.is_empty() {
                let class = match self.accept_class(req) {
                    Some(i) => self.vary_accept[i].0.as_str(),
                    None => OTHER,
                };
                b.add_owned_name_value(name, class.as_bytes().to_vec());
                continue;
            }
            let mut value = Vec::new();
            for (i, v) in req.headers.get_all(&header).iter().enumerate() {
                if i > 0 {
                    value.extend_from_slice(b", ");
                }
                value.extend_from_slice(v.as_bytes());
            }
            b.add_owned_name_value(name, value);
        }
        b.finalize()
    }
}

/// `q=0` (also `q=0.0`, `q=0.000`): "not acceptable" (RFC 9110 12.4.2).
fn is_q_zero(param: &str) -> bool {
    let Some((name, value)) = param.split_once('=') else {
        return false;
    };
    name.trim().eq_ignore_ascii_case("q") && value.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn resp(vary: &str) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("vary", vary).unwrap();
        r
    }

    fn names(r: &RequestHeader) -> Vec<String> {
        let mut n: Vec<String> = r.headers.keys().map(|k| k.as_str().to_string()).collect();
        n.sort();
        n
    }

    #[test]
    fn only_listed_and_owned_headers_go_upstream() {
        let k = Keying::new(&[ACCEPT], &[]);
        let mut r = req(&[
            ("accept", "image/webp"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "host=evil.example"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("cookie", "session=1"),
            ("authorization", "Bearer x"),
            ("origin", "https://evil.example"),
            ("range", "bytes=0-1"),
            ("if-none-match", "\"e\""),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "r1"),
            ("host", "gw"),
        ]);
        k.upstream_request(&mut r);
        assert_eq!(
            names(&r),
            [
                "accept",
                "host",
                "if-none-match",
                "range",
                "x-forwarded-for",
                "x-request-id"
            ]
        );
    }

    #[test]
    fn accept_collapses_to_the_configured_types() {
        let k = Keying::new(&[ACCEPT], &["image/avif".into(), "image/webp".into()]);
        let cases = [
            (
                "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
                Some("image/avif"),
            ),
            ("image/webp,*/*", Some("image/webp")),
            ("IMAGE/WEBP;q=0.9, image/png", Some("image/webp")),
            ("image/avif;q=0, image/webp", Some("image/webp")),
            ("image/avif;q=0.0", None),
            ("image/png,image/*;q=0.8,*/*;q=0.5", None),
            ("image/jxl, */*", None),
            ("", None),
        ];
        let vary = resp("Accept");
        for (accept, want) in cases {
            let mut r = req(&[("accept", accept)]);
            let v = k.variance(&vary, &r);
            k.upstream_request(&mut r);
            assert_eq!(
                r.headers.get("accept").map(|v| v.to_str().unwrap()),
                want,
                "{accept}"
            );
            let same = req(&[("accept", want.unwrap_or("text/html"))]);
            assert_eq!(v, k.variance(&vary, &same), "{accept}");
        }
        assert_ne!(
            k.variance(&vary, &req(&[("accept", "image/avif")])),
            k.variance(&vary, &req(&[("accept", "image/webp")]))
        );
    }

    #[test]
    fn vary_on_a_header_that_is_not_forwarded_does_not_split_the_key() {
        let k = Keying::new(&[ACCEPT], &[]);
        let vary = resp("Cookie, Origin, Accept");
        let a = k.variance(
            &vary,
            &req(&[("cookie", "a"), ("origin", "x"), ("accept", "image/png")]),
        );
        let b = k.variance(&vary, &req(&[("cookie", "b"), ("accept", "image/png")]));
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(a, k.variance(&vary, &req(&[("accept", "image/webp")])));
        assert_eq!(k.variance(&resp("Cookie"), &req(&[("cookie", "a")])), None);
        // Listed: keyed.
        let k = Keying::new(&[ACCEPT, http::header::COOKIE], &[]);
        assert_ne!(
            k.variance(&vary, &req(&[("cookie", "a")])),
            k.variance(&vary, &req(&[("cookie", "b")]))
        );
    }
}
