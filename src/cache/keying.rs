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

/// The most bytes (names, values, 4 bytes of framing each) of the client header fields a
/// cached route passes on as the client sent them (`forward_headers`, `Range`, the
/// conditionals); beyond, 431. It keeps the upstream request head well below what origins
/// accept (nginx refuses a header line of over 8 KiB, Node.js a head of over 16 KiB), so one
/// client cannot make the origin fail for a key with the answer then shared. A refusal rather
/// than dropping the header: dropping would change what the request asks for (another
/// variant) without a word.
pub(crate) const MAX_FORWARDED_BYTES: usize = 8 * 1024;

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Gateway-owned headers an origin's `Vary` may name that are not keyed (see
/// [`Keying::variance`]).
static NOT_KEYED: [HeaderName; 9] = [
    http::header::HOST,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-request-id"),
    http::header::RANGE,
    http::header::IF_RANGE,
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::IF_MATCH,
    http::header::IF_UNMODIFIED_SINCE,
];

/// The client headers of a cached route that Pingora's cache strips on a miss and sets itself
/// to revalidate; they reach the upstream as sent only when the cache is bypassed.
const CLIENT_OWNED: [HeaderName; 6] = crate::headers::RANGE_AND_CONDITIONALS;

/// One cached route's forwarding and keying rules.
pub(crate) struct Keying {
    /// Headers forwarded besides [`GATEWAY_OWNED`]: the listed client headers and the JWT
    /// subject header.
    forward: Vec<HeaderName>,
    /// The client headers that reach the upstream as the client sent them (bounded by
    /// [`MAX_FORWARDED_BYTES`]).
    from_client: Vec<HeaderName>,
    /// The media types `Vary: Accept` keys on, in order of preference; empty: the raw value.
    vary_accept: Vec<(String, HeaderValue)>,
}

impl Keying {
    /// `listed`: `forward_headers`; `subject`: the JWT subject header (set by the gateway).
    pub(crate) fn new(listed: &[HeaderName], subject: Option<&HeaderName>, vary_accept: &[String]) -> Keying {
        Keying {
            forward: listed.iter().chain(subject).cloned().collect(),
            from_client: listed.iter().chain(&CLIENT_OWNED).cloned().collect(),
            vary_accept: vary_accept
                .iter()
                .filter_map(|t| Some((t.clone(), HeaderValue::from_str(t).ok()?)))
                .collect(),
        }
    }

    /// Whether the client header fields this route passes on exceed [`MAX_FORWARDED_BYTES`].
    pub(crate) fn forwards_too_much(&self, req: &RequestHeader) -> bool {
        let mut total = 0;
        for (name, value) in &req.headers {
            if self.from_client.contains(name) {
                total += name.as_str().len() + value.len() + 4;
            }
        }
        total > MAX_FORWARDED_BYTES
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
    ///
    /// The headers the gateway sets itself are keyed on what the upstream gets, not on what
    /// the client sent: `X-Forwarded-Proto` on `proto` (the value the gateway sends); `Host`,
    /// `Range` and the conditionals not at all (the upstream gets the configured `Host`, and a
    /// stored answer was fetched without the client's `Range` and conditionals, which
    /// Pingora's cache strips on a miss). An answer that varies on `X-Forwarded-For` or
    /// `X-Request-Id` (per client, per request) is not stored (`policy::cacheable`), and they
    /// are not keyed either (a hit-for-pass on such an answer holds for the whole URL).
    pub(crate) fn variance(
        &self,
        resp: &ResponseHeader,
        req: &RequestHeader,
        proto: &str,
    ) -> Option<HashBinary> {
        self.variance_of(super::policy::vary_names(resp), req, proto)
    }

    /// [`Keying::variance`] for the `Vary` names of an answer that is not at hand (hit-for-pass
    /// keeps the names of the answer it refused).
    pub(crate) fn variance_names(
        &self,
        names: &[String],
        req: &RequestHeader,
        proto: &str,
    ) -> Option<HashBinary> {
        self.variance_of(names.iter().cloned(), req, proto)
    }

    fn variance_of(
        &self,
        names: impl Iterator<Item = String>,
        req: &RequestHeader,
        proto: &str,
    ) -> Option<HashBinary> {
        let mut b = VarianceBuilder::new();
        for name in names {
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            if header == X_FORWARDED_PROTO {
                b.add_owned_name_value(name, proto.as_bytes().to_vec());
                continue;
            }
            if !self.forwards(&header) || NOT_KEYED.contains(&header) {
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
        let k = Keying::new(&[ACCEPT], None, &[]);
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
    fn what_a_client_passes_on_is_bounded() {
        let k = Keying::new(&[ACCEPT], Some(&HeaderName::from_static("x-auth-subject")), &[]);
        let big = "a".repeat(MAX_FORWARDED_BYTES);
        assert!(!k.forwards_too_much(&req(&[("accept", "image/webp"), ("range", "bytes=0-1")])));
        assert!(k.forwards_too_much(&req(&[("accept", &big)])));
        assert!(k.forwards_too_much(&req(&[("if-none-match", &big)])));
        let half = "a".repeat(MAX_FORWARDED_BYTES / 2);
        assert!(k.forwards_too_much(&req(&[("accept", &half), ("range", &half)])));
        // Headers that are not passed on (removed, or set by the gateway) do not count.
        for name in ["cookie", "x-forwarded-for", "x-auth-subject", "user-agent"] {
            assert!(!k.forwards_too_much(&req(&[(name, &big)])), "{name}");
        }
    }

    #[test]
    fn accept_collapses_to_the_configured_types() {
        let k = Keying::new(&[ACCEPT], None, &["image/avif".into(), "image/webp".into()]);
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
            let v = k.variance(&vary, &r, "http");
            k.upstream_request(&mut r);
            assert_eq!(
                r.headers.get("accept").map(|v| v.to_str().unwrap()),
                want,
                "{accept}"
            );
            let same = req(&[("accept", want.unwrap_or("text/html"))]);
            assert_eq!(v, k.variance(&vary, &same, "http"), "{accept}");
        }
        assert_ne!(
            k.variance(&vary, &req(&[("accept", "image/avif")]), "http"),
            k.variance(&vary, &req(&[("accept", "image/webp")]), "http")
        );
    }

    #[test]
    fn vary_on_a_header_that_is_not_forwarded_does_not_split_the_key() {
        let k = Keying::new(&[ACCEPT], None, &[]);
        let vary = resp("Cookie, Origin, Accept");
        let a = k.variance(
            &vary,
            &req(&[("cookie", "a"), ("origin", "x"), ("accept", "image/png")]),
            "http",
        );
        let b = k.variance(&vary, &req(&[("cookie", "b"), ("accept", "image/png")]), "http");
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(a, k.variance(&vary, &req(&[("accept", "image/webp")]), "http"));
        assert_eq!(
            k.variance(&resp("Cookie"), &req(&[("cookie", "a")]), "http"),
            None
        );
        // Listed: keyed.
        let k = Keying::new(&[ACCEPT, http::header::COOKIE], None, &[]);
        assert_ne!(
            k.variance(&vary, &req(&[("cookie", "a")]), "http"),
            k.variance(&vary, &req(&[("cookie", "b")]), "http")
        );
    }

    /// `Vary` on a header the gateway sets keys on what the upstream gets, never on the
    /// client's value.
    #[test]
    fn vary_on_the_gateways_own_headers_keys_on_what_it_sends() {
        let k = Keying::new(&[ACCEPT], None, &[]);
        let v =
            |vary: &str, headers: &[(&str, &str)], proto: &str| k.variance(&resp(vary), &req(headers), proto);
        let proto = "X-Forwarded-Proto";
        assert_eq!(
            v(proto, &[("x-forwarded-proto", "https")], "http"),
            v(proto, &[("x-forwarded-proto", "gopher")], "http")
        );
        assert_ne!(v(proto, &[], "http"), v(proto, &[], "https"));
        for name in [
            "Host",
            "X-Forwarded-For",
            "X-Request-Id",
            "Range",
            "If-None-Match",
        ] {
            assert_eq!(v(name, &[(name, "a")], "http"), None, "{name}");
            assert_eq!(
                v(
                    &format!("{name}, Accept"),
                    &[(name, "a"), ("accept", "x")],
                    "http"
                ),
                v(
                    &format!("{name}, Accept"),
                    &[(name, "b"), ("accept", "x")],
                    "http"
                ),
                "{name}"
            );
        }
    }
}
