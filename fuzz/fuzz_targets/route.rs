//! Fuzzes the route parser (`src/routing.rs`, compiled in directly: it is pure and has no
//! dependencies). Run: `cargo fuzz run route fuzz/corpus/route` (see README).
#![no_main]

#[path = "../../src/routing.rs"]
#[allow(dead_code)]
mod routing;

use libfuzzer_sys::fuzz_target;
use routing::{QueryRule, Resolution, Route, Router};
use std::sync::OnceLock;

fn router() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(|| {
        Router::new(vec![
            Route::new("/content/v1/assets/{id}", "/v1/assets/{id}", 0, QueryRule::Forward),
            Route::new("/content/v1/thumbs/{id}/small", "/v1/thumbs/{id}?size=s", 0, QueryRule::Drop),
        ])
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let (path, query) = match input.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (input, None),
    };
    let r = router();
    match r.resolve(path) {
        Resolution::Asset { route, id } => {
            let id = id.as_str();
            // The id is canonical, lower-case hex with hyphens at 8, 13, 18, 23.
            assert_eq!(id.len(), 36);
            for (i, b) in id.bytes().enumerate() {
                match i {
                    8 | 13 | 18 | 23 => assert_eq!(b, b'-'),
                    _ => assert!(b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                }
            }
            // The path was exactly the template around that id, in some case.
            let expected = if route == 0 {
                format!("/content/v1/assets/{id}")
            } else {
                format!("/content/v1/thumbs/{id}/small")
            };
            assert_eq!(path.to_ascii_lowercase(), expected);
            let up = r.route(route).upstream_path(&routing::AssetId::parse(id).unwrap(), query);
            let (up_path, up_query) = up.split_once('?').map_or((up.as_str(), None), |(p, q)| (p, Some(q)));
            assert!(up_path == format!("/v1/assets/{id}") || up_path == format!("/v1/thumbs/{id}"));
            assert!(!up_path.contains("..") && !up_path.contains("//") && !up_path.contains('%'));
            if route == 0 {
                assert_eq!(up_query, query);
            } else {
                assert_eq!(up_query, Some("size=s"));
            }
        }
        Resolution::BadId { .. } | Resolution::NoRoute => {}
    }
});
