//! Pure routing: request path -> asset id -> upstream path, and the methods served. No I/O, no
//! Pingora types.
//!
//! Matching is done on the path exactly as the client sent it, with no decoding: a route's
//! literal parts must match byte for byte and the `{id}` segment must be a canonical UUID
//! (hex digits and four hyphens). Percent-encodings, dot segments, doubled or trailing slashes
//! therefore can never match, and the only path that goes upstream is the route's rewrite
//! template with a validated, lower-cased UUID in it.

/// The only methods an asset gateway serves (the proxy and the admin listener alike). As
/// text, so this module needs no crate (the fuzz target compiles it alone).
pub(crate) const ALLOWED_METHODS: [&str; 2] = ["GET", "HEAD"];

/// `method` as `http::Method::as_str` writes it.
pub(crate) fn is_allowed_method(method: &str) -> bool {
    ALLOWED_METHODS.contains(&method)
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The template as configured, e.g. `/content/v1/assets/{id}` (used in logs and metrics).
    pub template: String,
    prefix: String,
    suffix: String,
    /// The rewrite template split around each `{id}`.
    rewrite: Vec<String>,
    /// Index of the upstream this route sends to.
    pub upstream: usize,
    /// What of the client's query string goes upstream.
    pub query: QueryRule,
}

/// What of a client's query string goes upstream (and, on a cached route, into the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryRule {
    /// The query string unchanged.
    Forward,
    /// Nothing.
    Drop,
    /// Only the parameters with these names (matched byte for byte, before any decoding), in
    /// [`sort_params`] order, so that two spellings of one request are one upstream request
    /// and one cache key.
    Allow(Vec<String>),
}

/// A query parameter's name: what comes before its first `=` (all of it without one).
pub fn param_name(param: &str) -> &str {
    param.split_once('=').map_or(param, |(name, _)| name)
}

/// The one canonical order of query parameters (as written, not decoded): by name, then by
/// the parameter itself (for one name: by value, a bare name first). The upstream query of
/// `query: {allow}`, the cache key and the signed message of a signed URL all use it, so a
/// repeated parameter cannot be reordered (`w=1&w=2` against `w=2&w=1`, which an origin may
/// read differently) under one signature or into two objects.
pub fn sort_params(params: &mut [&str]) {
    params.sort_unstable_by(|a, b| (param_name(a), *a).cmp(&(param_name(b), *b)));
}

impl QueryRule {
    /// The query string that goes upstream for a client's `query`; `None`: no query.
    pub fn apply<'a>(&self, query: Option<&'a str>) -> Option<std::borrow::Cow<'a, str>> {
        let query = query?;
        match self {
            QueryRule::Forward => Some(std::borrow::Cow::Borrowed(query)),
            QueryRule::Drop => None,
            QueryRule::Allow(names) => {
                let mut kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .filter(|p| names.iter().any(|n| n == param_name(p)))
                    .collect();
                if kept.is_empty() {
                    return None;
                }
                sort_params(&mut kept);
                let mut out = String::with_capacity(query.len());
                for (i, param) in kept.iter().enumerate() {
                    if i > 0 {
                        out.push('&');
                    }
                    out.push_str(param);
                }
                Some(std::borrow::Cow::Owned(out))
            }
        }
    }
}

impl Route {
    /// `path` must hold `{id}` exactly once and `rewrite` at least once (config validation
    /// guarantees both).
    pub fn new(path: &str, rewrite: &str, upstream: usize, query: QueryRule) -> Route {
        let (prefix, suffix) = path.split_once("{id}").unwrap_or((path, ""));
        Route {
            template: path.to_string(),
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
            rewrite: rewrite.split("{id}").map(str::to_string).collect(),
            upstream,
            query,
        }
    }

    /// The upstream path and query for an asset id (already validated and lower-cased), the
    /// client's query passed through [`Route::query`].
    pub fn upstream_path(&self, id: &AssetId, query: Option<&str>) -> String {
        let id = id.as_str();
        let query = self.query.apply(query);
        let query = query.as_deref();
        let mut out = String::with_capacity(
            self.rewrite.iter().map(String::len).sum::<usize>()
                + id.len() * 2
                + query.map_or(0, |q| q.len() + 1),
        );
        for (i, part) in self.rewrite.iter().enumerate() {
            if i > 0 {
                out.push_str(id);
            }
            out.push_str(part);
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    /// The reverse of [`Route::upstream_path`]: when `upstream` (a path with an optional
    /// query or fragment) is this route's rewrite around one canonical UUID, the client path
    /// for that asset, with the rest appended unchanged. Used to map an upstream's redirect
    /// back into the gateway's URL space.
    pub fn client_path(&self, upstream: &str) -> Option<String> {
        let end = upstream.find(['?', '#']).unwrap_or(upstream.len());
        let (path, rest) = upstream.split_at(end);
        let mut id: Option<AssetId> = None;
        let mut remaining = path.strip_prefix(self.rewrite[0].as_str())?;
        for part in &self.rewrite[1..] {
            let candidate = AssetId::parse(remaining.get(..36)?)?;
            if id.is_some_and(|seen| seen != candidate) {
                return None;
            }
            id = Some(candidate);
            remaining = remaining[36..].strip_prefix(part.as_str())?;
        }
        let id = id?;
        remaining
            .is_empty()
            .then(|| format!("{}{}{}{rest}", self.prefix, id.as_str(), self.suffix))
    }

    /// The text where `{id}` sits, when the literal parts match and it is one non-empty
    /// segment.
    fn id_segment<'a>(&self, path: &'a str) -> Option<&'a str> {
        let middle = path
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        (!middle.is_empty() && !middle.contains('/')).then_some(middle)
    }
}

/// A canonical hyphenated UUID in lower case (36 ASCII bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AssetId([u8; 36]);

impl AssetId {
    /// Accepts exactly `8-4-4-4-12` hex digits, any version, either case.
    pub fn parse(s: &str) -> Option<AssetId> {
        let b = s.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut out = [0u8; 36];
        for (i, &c) in b.iter().enumerate() {
            out[i] = match i {
                8 | 13 | 18 | 23 if c == b'-' => b'-',
                8 | 13 | 18 | 23 => return None,
                _ if c.is_ascii_hexdigit() => c.to_ascii_lowercase(),
                _ => return None,
            };
        }
        Some(AssetId(out))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and hyphens are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for AssetId {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request path resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A route matched and the id is a valid UUID.
    Asset { route: usize, id: AssetId },
    /// A route's shape matched but the id segment is not a UUID: 400 (`route`: the first such
    /// route, whose CORS headers the answer carries).
    BadId { route: usize },
    /// No route has this shape: 404.
    NoRoute,
}

#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Router {
        Router { routes }
    }

    pub fn route(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    /// Maps an upstream path (and query) of route `from`'s upstream back to a client path:
    /// through `from` first, then through any other route to the same upstream.
    pub fn client_path(&self, from: usize, upstream: &str) -> Option<String> {
        let first = self.routes.get(from)?;
        std::iter::once(first)
            .chain(self.routes.iter().filter(|r| r.upstream == first.upstream))
            .find_map(|r| r.client_path(upstream))
    }

    /// The route whose template, with `*` in place of `{id}`, is `pattern` (e.g.
    /// `/content/v1/assets/*`): what a purge of a whole route names.
    pub fn route_of_pattern(&self, pattern: &str) -> Option<usize> {
        self.routes.iter().position(|r| {
            pattern
                .strip_prefix(r.prefix.as_str())
                .and_then(|rest| rest.strip_suffix(r.suffix.as_str()))
                == Some("*")
        })
    }

    /// Resolves a raw request path (without its query). The first route whose shape and id
    /// both match wins; failing that, a route whose shape matches gives `BadId`.
    pub fn resolve(&self, path: &str) -> Resolution {
        let mut bad_id = None;
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(segment) = route.id_segment(path) {
                match AssetId::parse(segment) {
                    Some(id) => return Resolution::Asset { route: i, id },
                    None => bad_id = bad_id.or(Some(i)),
                }
            }
        }
        match bad_id {
            Some(route) => Resolution::BadId { route },
            None => Resolution::NoRoute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0d";

    fn router() -> Router {
        Router::new(vec![
            Route::new(
                "/content/v1/assets/{id}",
                "/v1/assets/{id}",
                0,
                QueryRule::Forward,
            ),
            Route::new(
                "/content/v1/thumbs/{id}/small",
                "/v1/thumbs/{id}?size=s",
                1,
                QueryRule::Drop,
            ),
        ])
    }

    #[test]
    fn canonical_uuid_of_any_case_matches_and_is_lowercased() {
        let r = router();
        let upper = ID.to_uppercase();
        let Resolution::Asset { route, id } = r.resolve(&format!("/content/v1/assets/{upper}")) else {
            panic!("no match")
        };
        assert_eq!(route, 0);
        assert_eq!(id.as_str(), ID);
        assert_eq!(
            r.route(0).upstream_path(&id, Some("w=200")),
            format!("/v1/assets/{ID}?w=200")
        );
        assert_eq!(r.route(0).upstream_path(&id, None), format!("/v1/assets/{ID}"));
    }

    #[test]
    fn suffix_routes_and_query_drop() {
        let r = router();
        let Resolution::Asset { route, id } = r.resolve(&format!("/content/v1/thumbs/{ID}/small")) else {
            panic!("no match")
        };
        assert_eq!(route, 1);
        assert_eq!(
            r.route(1).upstream_path(&id, Some("evil=1")),
            format!("/v1/thumbs/{ID}?size=s")
        );
    }

    #[test]
    fn allowed_query_parameters_are_kept_and_sorted() {
        let allow = QueryRule::Allow(vec!["w".into(), "fmt".into()]);
        let cases = [
            (Some("w=200&fmt=webp"), Some("fmt=webp&w=200")),
            (Some("fmt=webp&r=123&w=200"), Some("fmt=webp&w=200")),
            (Some("r=1&x"), None),
            (Some(""), None),
            (None, None),
            // Repeated names are ordered by value, whatever order they came in; empty parts
            // go; names match exactly.
            (Some("w=2&&fmt&w=1&W=3&w%3D=4&wx=5"), Some("fmt&w=1&w=2")),
            (Some("w=640&w=1280"), Some("w=1280&w=640")),
            (Some("w=1280&w=640"), Some("w=1280&w=640")),
            (Some("w=&w"), Some("w&w=")),
        ];
        for (query, want) in cases {
            assert_eq!(allow.apply(query).as_deref(), want, "{query:?}");
        }
        assert_eq!(
            QueryRule::Forward.apply(Some("b=2&a=1")).as_deref(),
            Some("b=2&a=1")
        );
        assert_eq!(QueryRule::Drop.apply(Some("a=1")), None);
        let route = Route::new("/a/{id}", "/b/{id}", 0, allow);
        let id = AssetId::parse(ID).unwrap();
        assert_eq!(route.upstream_path(&id, Some("x=1")), format!("/b/{ID}"));
        assert_eq!(
            route.upstream_path(&id, Some("w=1&fmt=png")),
            format!("/b/{ID}?fmt=png&w=1")
        );
    }

    #[test]
    fn route_patterns_name_whole_routes() {
        let r = router();
        assert_eq!(r.route_of_pattern("/content/v1/assets/*"), Some(0));
        assert_eq!(r.route_of_pattern("/content/v1/thumbs/*/small"), Some(1));
        for other in [
            "/content/v1/assets/",
            "/content/v1/assets/**",
            "/content/v1/thumbs/*",
            "*",
        ] {
            assert_eq!(r.route_of_pattern(other), None, "{other}");
        }
    }

    #[test]
    fn non_uuid_ids_are_bad_ids() {
        let r = router();
        for bad in [
            "not-a-uuid",
            "3f1c2a7e9b4d4e8a8c215d6f7a8b9c0d",       // simple form
            "{3f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0d}", // braced
            "3f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0g",
            "3f1c2a7e-9b4d-4e8a-8c21_5d6f7a8b9c0d",
            "3f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0d0",
            "%2e%2e",
            "..",
            "3f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0%64",
        ] {
            assert_eq!(
                r.resolve(&format!("/content/v1/assets/{bad}")),
                Resolution::BadId { route: 0 },
                "{bad}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 5000, failure_persistence: None, ..Default::default() })]

        /// Whatever the path, a match means the path was exactly a route template around a
        /// canonical UUID, and the upstream path is the rewrite around its lower-case form.
        #[test]
        fn a_match_only_ever_yields_a_clean_upstream_path(path in "(/|/content/v1/assets/|[%./a-fA-F0-9-]|\\PC){0,60}") {
            let r = router();
            if let Resolution::Asset { route, id } = r.resolve(&path) {
                let lower = path.to_ascii_lowercase();
                let expected = match route {
                    0 => format!("/content/v1/assets/{}", id.as_str()),
                    _ => format!("/content/v1/thumbs/{}/small", id.as_str()),
                };
                proptest::prop_assert_eq!(lower, expected);
                let up = r.route(route).upstream_path(&id, None);
                proptest::prop_assert!(up.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/-?=".contains(&b)), "{}", up);
            }
        }

        /// Every canonical UUID, in any mix of case, matches and goes upstream in lower case.
        #[test]
        fn every_canonical_uuid_matches(bytes in proptest::prelude::any::<[u8; 16]>(), upper in proptest::prelude::any::<u64>()) {
            let id: String = uuid::Uuid::from_bytes(bytes)
                .to_string()
                .chars()
                .enumerate()
                .map(|(i, c)| if upper >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
                .collect();
            let r = router();
            let Resolution::Asset { route: 0, id: parsed } = r.resolve(&format!("/content/v1/assets/{id}")) else {
                return Err(proptest::test_runner::TestCaseError::fail(format!("{id} did not match")));
            };
            proptest::prop_assert_eq!(parsed.as_str(), id.to_ascii_lowercase());
        }
    }

    #[test]
    fn upstream_paths_map_back_to_client_paths() {
        let r = Router::new(vec![
            Route::new(
                "/content/v1/assets/{id}",
                "/v1/assets/{id}",
                0,
                QueryRule::Forward,
            ),
            Route::new(
                "/content/v1/raw/{id}/file",
                "/v1/{id}/raw/{id}",
                0,
                QueryRule::Forward,
            ),
            Route::new("/other/{id}", "/v1/other/{id}", 1, QueryRule::Forward),
        ]);
        let upper = ID.to_uppercase();
        assert_eq!(
            r.client_path(0, &format!("/v1/assets/{upper}?v=2")),
            Some(format!("/content/v1/assets/{ID}?v=2"))
        );
        assert_eq!(
            r.client_path(0, &format!("/v1/{ID}/raw/{ID}")),
            Some(format!("/content/v1/raw/{ID}/file"))
        );
        // Another route of the same upstream, but never one of another upstream.
        assert_eq!(
            r.client_path(1, &format!("/v1/assets/{ID}")),
            Some(format!("/content/v1/assets/{ID}"))
        );
        assert_eq!(r.client_path(0, &format!("/v1/other/{ID}")), None);
        let other = "00000000-0000-0000-0000-000000000000";
        for bad in [
            format!("/v1/{ID}/raw/{other}"),
            format!("/v1/assets/{ID}/x"),
            "/v1/assets/not-a-uuid".to_string(),
            "/login".to_string(),
        ] {
            assert_eq!(r.client_path(0, &bad), None, "{bad}");
        }
    }

    #[test]
    fn other_shapes_match_no_route() {
        let r = router();
        for path in [
            "/",
            "/content/v1/assets/",
            &format!("/content/v1/assets/{ID}/"),
            &format!("/content/v1/assets//{ID}"),
            &format!("/content/v1/assets/../assets/{ID}"),
            &format!("/content/v1/assets/x/../{ID}"),
            &format!("/content/v1/assets%2F{ID}"),
            &format!("/content/v1/Assets/{ID}"),
            &format!("/content/v1/assets/{ID}/small"),
            &format!("//content/v1/assets/{ID}"),
        ] {
            assert_eq!(r.resolve(path), Resolution::NoRoute, "{path}");
        }
    }
}
