//! Process logging (`env_logger`, `RUST_LOG`), the access log and request ids.

use pingora::proxy::Session;
use pingora::Error;
use std::fmt::Write as _;
use std::time::Duration;

/// The log target of access lines, so they can be filtered on their own
/// (`RUST_LOG=info,access=off`).
pub const ACCESS_TARGET: &str = "access";

/// Longest client-supplied `X-Request-Id` we keep; anything longer is replaced.
const MAX_REQUEST_ID_LEN: usize = 64;

/// Starts `env_logger`: `info` unless `RUST_LOG` says otherwise.
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

/// Keeps the client's `X-Request-Id` when it is a sane token (1 to 64 of `A-Z a-z 0-9 - _ . :`),
/// otherwise makes a new UUID v4.
pub fn request_id(client: Option<&http::HeaderValue>) -> String {
    match client.map(|v| v.as_bytes()) {
        Some(b)
            if !b.is_empty()
                && b.len() <= MAX_REQUEST_ID_LEN
                && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c)) =>
        {
            // Checked ASCII above.
            String::from_utf8_lossy(b).into_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// What one access-log line says about a request.
pub struct AccessRecord<'a> {
    pub session: &'a Session,
    pub status: u16,
    pub upstream_peer: Option<&'a str>,
    pub reused: bool,
    pub attempts: usize,
    pub upstream_ttfb: Option<Duration>,
    pub total: Duration,
    pub request_id: &'a str,
    pub error: Option<&'a Error>,
    /// Why attempts failed, or why no peer was usable.
    pub failures: &'a [String],
}

/// Writes one access line at info.
pub fn access(r: &AccessRecord) {
    if !log::log_enabled!(target: ACCESS_TARGET, log::Level::Info) {
        return;
    }
    let req = r.session.req_header();
    let mut line = String::with_capacity(256);
    let client = r.session.client_addr();
    let _ = write!(
        line,
        "client={} method={} path={:?} status={} bytes={} upstream={} reused={} attempts={} ttfb_ms={} total_ms={:.3} request_id={}",
        client.map_or_else(|| "-".to_string(), |a| a.to_string()),
        req.method,
        req.uri.path(),
        r.status,
        r.session.body_bytes_sent(),
        r.upstream_peer.unwrap_or("-"),
        r.reused,
        r.attempts,
        r.upstream_ttfb.map_or_else(|| "-".to_string(), |d| format!("{:.3}", ms(d))),
        ms(r.total),
        r.request_id,
    );
    if let Some(e) = r.error {
        let _ = write!(line, " error={:?}", e.to_string());
    }
    // One failed attempt is already the error itself; list attempts when they add to it.
    if r.failures.len() > 1 || (r.error.is_none() && !r.failures.is_empty()) {
        let _ = write!(line, " upstream_failures={:?}", r.failures.join("; "));
    }
    log::info!(target: ACCESS_TARGET, "{line}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept_others_replaced() {
        let keep = http::HeaderValue::from_static("req-42_a.b:c");
        assert_eq!(request_id(Some(&keep)), "req-42_a.b:c");
        for bad in ["", "has space", "quote\"", &"x".repeat(65), "semi;colon"] {
            let v = http::HeaderValue::from_str(bad).unwrap();
            let id = request_id(Some(&v));
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
        assert!(uuid::Uuid::parse_str(&request_id(None)).is_ok());
    }
}
