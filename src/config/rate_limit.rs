//! `routes[].rate_limit`: a token bucket per client address, checked.

use serde::Deserialize;
use std::time::Duration;

/// `routes[].rate_limit: {per_client: 100/s, burst: 200, counts: upstream}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitFile {
    /// `N/s`, `N/m` or `N/h`: the bucket's refill rate.
    pub per_client: String,
    /// The bucket's size: requests a client may make at once. Default: one second's worth
    /// (at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub counts: Counts,
}

/// Which requests take a token.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Counts {
    /// Every request the route admits (checked before the cache).
    #[default]
    All,
    /// Only requests that go to the upstream (cache hits and joined fills are free).
    Upstream,
}

/// A route's rate limit, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimit {
    /// Time between two tokens (the inverse of the rate).
    pub interval: Duration,
    pub burst: u32,
    pub counts: Counts,
}

pub(super) fn compile(key: &str, r: &RateLimitFile, p: &mut Vec<String>) -> Option<RateLimit> {
    let key = format!("{key}.rate_limit");
    let interval = match parse_rate(&r.per_client) {
        Ok(i) => i,
        Err(e) => {
            p.push(format!("{key}.per_client: {e}"));
            return None;
        }
    };
    let per_second = (1.0 / interval.as_secs_f64()).ceil().max(1.0) as u32;
    let burst = r.burst.unwrap_or(per_second);
    if burst == 0 {
        p.push(format!("{key}.burst: must be at least 1"));
        return None;
    }
    Some(RateLimit {
        interval,
        burst,
        counts: r.counts,
    })
}

/// `"100/s"` -> 10 ms between tokens.
fn parse_rate(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a rate such as \"100/s\", \"600/m\" or \"3600/h\"");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let unit = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    if n == 0 || n > 1_000_000 {
        return Err(format!("{s:?}: the count must be 1 to 1000000"));
    }
    Ok(unit / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("100/s"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_rate("60/m"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_rate(" 1 / h "), Ok(Duration::from_secs(3600)));
        for bad in ["100", "100/d", "0/s", "x/s", "-1/s", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
