//! `routes[].cors`: the origins whose pages may read the route's responses, checked.

use super::units::Dur;
use serde::Deserialize;
use std::time::Duration;

/// `routes[].cors: {origins: ["https://app.example.com"], max_age: 10m}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CorsFile {
    /// `scheme://host[:port]` each, or `["*"]` for any origin.
    pub origins: Vec<String>,
    /// How long a browser may keep a preflight answer (`Access-Control-Max-Age`).
    #[serde(default = "ten_minutes")]
    pub max_age: Dur,
}

fn ten_minutes() -> Dur {
    Dur(Duration::from_secs(600))
}

/// A route's CORS settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CorsSettings {
    /// `*`: any origin.
    pub any: bool,
    /// Lower-cased, as browsers send them.
    pub origins: Vec<String>,
    pub max_age: Duration,
}

pub(super) fn compile(key: &str, c: &CorsFile, p: &mut Vec<String>) -> Option<CorsSettings> {
    let key = format!("{key}.cors");
    let before = p.len();
    if c.origins.is_empty() {
        p.push(format!("{key}.origins: at least one origin (or \"*\")"));
    }
    let any = c.origins.iter().any(|o| o == "*");
    if any && c.origins.len() > 1 {
        p.push(format!("{key}.origins: \"*\" (any origin) stands alone"));
    }
    for (i, o) in c.origins.iter().enumerate().filter(|(_, o)| *o != "*") {
        if let Err(e) = check_origin(o) {
            p.push(format!("{key}.origins[{i}]: {e}"));
        }
    }
    (p.len() == before).then(|| CorsSettings {
        any,
        origins: c.origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
        max_age: c.max_age.0,
    })
}

/// An origin as browsers serialise it: `http` or `https`, a host, an optional port; no path,
/// no trailing slash.
fn check_origin(o: &str) -> Result<(), String> {
    let bad = || {
        format!("{o:?} is not an origin such as \"https://app.example.com\" (scheme://host[:port], no path)")
    };
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    ok.then_some(()).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        for good in [
            "https://app.example.com",
            "http://localhost:3000",
            "https://[::1]:8443",
        ] {
            assert!(check_origin(good).is_ok(), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://a/b",
            "ftp://a",
            "https://",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }
}
