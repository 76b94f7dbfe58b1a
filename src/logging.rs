//! Process logging (`env_logger`, `RUST_LOG`), the access log and request ids.

use crate::config::AccessLogFormat;
use pingora::proxy::Session;
use pingora::Error;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

/// The log target of access lines, so they can be filtered on their own
/// (`RUST_LOG=info,access=off`).
pub const ACCESS_TARGET: &str = "access";
/// JSON access lines: written bare, without env_logger's prefix (`access=off` covers it too).
const ACCESS_JSON_TARGET: &str = "access::json";

/// Longest client-supplied `X-Request-Id` we keep; anything longer is replaced.
const MAX_REQUEST_ID_LEN: usize = 64;

/// Starts `env_logger`: `info` unless `RUST_LOG` says otherwise. Lines look like
/// `[2026-11-26T10:40:29.513Z INFO  target] message`, except JSON access lines, which are
/// the bare JSON object so that the stream is JSON-lines for them.
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            let msg = record.args();
            if record.target() == ACCESS_JSON_TARGET {
                return writeln!(buf, "{msg}");
            }
            let mut level = record.level();
            // Pingora logs a client that fails before its request is read (a slow head cut
            // off, a reset) at error level, once per connection. That is the client's fault
            // and per connection: it goes out at info like the access lines.
            if level == log::Level::Error
                && record.target() == "pingora_proxy"
                && msg.to_string().starts_with("Fail to proxy: Downstream")
            {
                level = log::Level::Info;
            }
            writeln!(buf, "[{} {:<5} {}] {msg}", buf.timestamp_millis(), level, record.target())
        })
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

impl AccessRecord<'_> {
    /// One failed attempt is already the error itself; attempts are listed when they add to it.
    fn failures(&self) -> Option<String> {
        (self.failures.len() > 1 || (self.error.is_none() && !self.failures.is_empty()))
            .then(|| self.failures.join("; "))
    }
}

/// Writes one access line at info.
pub fn access(r: &AccessRecord, format: AccessLogFormat) {
    if !log::log_enabled!(target: ACCESS_TARGET, log::Level::Info) {
        return;
    }
    match format {
        AccessLogFormat::Text => log::info!(target: ACCESS_TARGET, "{}", text_line(r)),
        AccessLogFormat::Json => log::info!(target: ACCESS_JSON_TARGET, "{}", json_line(r)),
    }
}

fn text_line(r: &AccessRecord) -> String {
    let req = r.session.req_header();
    let mut line = String::with_capacity(256);
    let _ = write!(line, "client=");
    match r.session.client_addr() {
        Some(a) => {
            let _ = write!(line, "{a}");
        }
        None => line.push('-'),
    }
    let _ = write!(
        line,
        " method={} path={:?} status={} bytes={} upstream={} reused={} attempts={} ttfb_ms=",
        req.method,
        req.uri.path(),
        r.status,
        r.session.body_bytes_sent(),
        r.upstream_peer.unwrap_or("-"),
        r.reused,
        r.attempts,
    );
    match r.upstream_ttfb {
        Some(d) => {
            let _ = write!(line, "{:.3}", ms(d));
        }
        None => line.push('-'),
    }
    let _ = write!(line, " total_ms={:.3} request_id={}", ms(r.total), r.request_id);
    if let Some(e) = r.error {
        let _ = write!(line, " error={:?}", e.to_string());
    }
    if let Some(f) = r.failures() {
        let _ = write!(line, " upstream_failures={f:?}");
    }
    line
}

fn json_line(r: &AccessRecord) -> String {
    let req = r.session.req_header();
    let mut line = String::with_capacity(320);
    line.push_str("{\"time\":");
    json_str(&mut line, &humantime_now());
    line.push_str(",\"client\":");
    match r.session.client_addr() {
        Some(a) => json_str(&mut line, &a.to_string()),
        None => line.push_str("null"),
    }
    line.push_str(",\"method\":");
    json_str(&mut line, req.method.as_str());
    line.push_str(",\"path\":");
    json_str(&mut line, req.uri.path());
    let _ = write!(
        line,
        ",\"status\":{},\"bytes\":{},\"upstream\":",
        r.status,
        r.session.body_bytes_sent()
    );
    match r.upstream_peer {
        Some(p) => json_str(&mut line, p),
        None => line.push_str("null"),
    }
    let _ = write!(
        line,
        ",\"reused\":{},\"attempts\":{},\"ttfb_ms\":",
        r.reused, r.attempts
    );
    match r.upstream_ttfb {
        Some(d) => {
            let _ = write!(line, "{:.3}", ms(d));
        }
        None => line.push_str("null"),
    }
    let _ = write!(line, ",\"total_ms\":{:.3},\"request_id\":", ms(r.total));
    json_str(&mut line, r.request_id);
    if let Some(e) = r.error {
        line.push_str(",\"error\":");
        json_str(&mut line, &e.to_string());
    }
    if let Some(f) = r.failures() {
        line.push_str(",\"upstream_failures\":");
        json_str(&mut line, &f);
    }
    line.push('}');
    line
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The current UTC time in RFC 3339 with milliseconds.
fn humantime_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, millis) = (now.as_secs(), now.subsec_millis());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn ms(d: Duration) -> f64 {
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

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, "\"a\\\"b\\\\c\\u000ad\\u0001\"");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
