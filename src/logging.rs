//! Process logging (`env_logger`, `RUST_LOG`), the access log and request ids.
//!
//! Access lines do not go through `env_logger`'s writer: they are appended to one buffer and
//! written to stderr in batches (when 32 KiB have gathered, every 200 ms, and at exit), like
//! nginx's `access_log ... buffer= flush=`. One `write` per request was a measurable share of
//! the CPU per small request. `RUST_LOG` still decides whether they are written.

use crate::config::AccessLogFormat;
use pingora::proxy::Session;
use pingora::Error;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// The log target of access lines, so they can be filtered on their own
/// (`RUST_LOG=info,access=off`).
pub const ACCESS_TARGET: &str = "access";

/// Access lines waiting to be written.
static ACCESS_BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Written out as soon as this much has gathered.
const ACCESS_BUFFER_LIMIT: usize = 32 * 1024;
/// How often the access log is written out when traffic is light.
pub const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Longest client-supplied `X-Request-Id` we keep; anything longer is replaced.
const MAX_REQUEST_ID_LEN: usize = 64;

/// Starts `env_logger`: `info` unless `RUST_LOG` says otherwise. Lines look like
/// `[2026-11-26T10:40:29.513Z INFO  target] message`.
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            let msg = record.args();
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
            writeln!(
                buf,
                "[{} {:<5} {}] {msg}",
                buf.timestamp_millis(),
                level,
                record.target()
            )
        })
        .init();
    // `std::process::exit` (Pingora's and ours) runs C `atexit` handlers.
    extern "C" fn flush_at_exit() {
        flush_access_log();
    }
    // SAFETY: registers a plain function; `atexit` has no other requirement.
    unsafe {
        libc::atexit(flush_at_exit);
    }
}

/// Writes out the access lines gathered so far.
pub fn flush_access_log() {
    let pending = match ACCESS_BUFFER.lock() {
        Ok(mut b) if !b.is_empty() => std::mem::take(&mut *b),
        _ => return,
    };
    // Nothing sensible to do when stderr is gone.
    let _ = std::io::stderr().lock().write_all(&pending);
}

/// A request id, kept as the header value it is sent as (cloning it is a reference count).
#[derive(Clone, Debug)]
pub struct RequestId(http::HeaderValue);

impl RequestId {
    /// The client's `X-Request-Id` when it is a sane token (1 to 64 of `A-Z a-z 0-9 - _ . :`),
    /// otherwise a new UUID v4.
    pub fn from_client(client: Option<&http::HeaderValue>) -> RequestId {
        match client {
            Some(v)
                if !v.is_empty()
                    && v.len() <= MAX_REQUEST_ID_LEN
                    && v.as_bytes()
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c)) =>
            {
                RequestId(v.clone())
            }
            _ => {
                let mut buf = [0u8; 36];
                let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
                RequestId(http::HeaderValue::from_str(id).unwrap_or(http::HeaderValue::from_static("-")))
            }
        }
    }

    pub fn as_str(&self) -> &str {
        // Only the ASCII characters above are ever kept.
        self.0.to_str().unwrap_or_default()
    }

    pub fn header(&self) -> http::HeaderValue {
        self.0.clone()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId(http::HeaderValue::from_static(""))
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
    /// Why attempts failed. Left out only when it would repeat the error: a single attempt
    /// that failed to connect.
    fn failures(&self) -> Option<String> {
        let repeats_error = self.failures.len() == 1 && self.attempts == 1 && self.error.is_some();
        (!self.failures.is_empty() && !repeats_error).then(|| self.failures.join("; "))
    }
}

/// Adds one access line (at info: `RUST_LOG` decides) to the batch.
pub fn access(r: &AccessRecord, format: AccessLogFormat) {
    if !log::log_enabled!(target: ACCESS_TARGET, log::Level::Info) {
        return;
    }
    let line = match format {
        AccessLogFormat::Text => text_line(r),
        AccessLogFormat::Json => json_line(r),
    };
    let full = match ACCESS_BUFFER.lock() {
        Ok(mut b) => {
            b.extend_from_slice(line.as_bytes());
            b.len() >= ACCESS_BUFFER_LIMIT
        }
        Err(_) => false,
    };
    if full {
        flush_access_log();
    }
}

/// `[<time> INFO  access] client=...`: the same prefix as every other log line.
fn text_line(r: &AccessRecord) -> String {
    let req = r.session.req_header();
    let mut line = String::with_capacity(320);
    line.push('[');
    now_rfc3339(&mut line);
    line.push_str(" INFO  access] client=");
    match r.session.client_addr().and_then(|a| a.as_inet()) {
        Some(a) => push_addr(&mut line, a),
        None => line.push('-'),
    }
    line.push_str(" method=");
    line.push_str(req.method.as_str());
    line.push_str(" path=");
    push_quoted(&mut line, req.uri.path());
    line.push_str(" status=");
    push_u64(&mut line, r.status as u64);
    line.push_str(" bytes=");
    push_u64(&mut line, r.session.body_bytes_sent() as u64);
    line.push_str(" upstream=");
    line.push_str(r.upstream_peer.unwrap_or("-"));
    line.push_str(if r.reused { " reused=true" } else { " reused=false" });
    line.push_str(" attempts=");
    push_u64(&mut line, r.attempts as u64);
    line.push_str(" ttfb_ms=");
    match r.upstream_ttfb {
        Some(d) => push_ms(&mut line, d),
        None => line.push('-'),
    }
    line.push_str(" total_ms=");
    push_ms(&mut line, r.total);
    line.push_str(" request_id=");
    line.push_str(r.request_id);
    if let Some(e) = r.error {
        line.push_str(" error=");
        push_quoted(&mut line, &crate::errors::describe(e));
    }
    if let Some(f) = r.failures() {
        line.push_str(" upstream_failures=");
        push_quoted(&mut line, &f);
    }
    line.push('\n');
    line
}

fn json_line(r: &AccessRecord) -> String {
    let req = r.session.req_header();
    let mut line = String::with_capacity(320);
    line.push_str("{\"time\":\"");
    now_rfc3339(&mut line);
    line.push_str("\",\"client\":");
    match r.session.client_addr().and_then(|a| a.as_inet()) {
        Some(a) => {
            line.push('"');
            push_addr(&mut line, a);
            line.push('"');
        }
        None => line.push_str("null"),
    }
    line.push_str(",\"method\":");
    json_str(&mut line, req.method.as_str());
    line.push_str(",\"path\":");
    json_str(&mut line, req.uri.path());
    line.push_str(",\"status\":");
    push_u64(&mut line, r.status as u64);
    line.push_str(",\"bytes\":");
    push_u64(&mut line, r.session.body_bytes_sent() as u64);
    line.push_str(",\"upstream\":");
    match r.upstream_peer {
        Some(p) => json_str(&mut line, p),
        None => line.push_str("null"),
    }
    line.push_str(if r.reused {
        ",\"reused\":true"
    } else {
        ",\"reused\":false"
    });
    line.push_str(",\"attempts\":");
    push_u64(&mut line, r.attempts as u64);
    line.push_str(",\"ttfb_ms\":");
    match r.upstream_ttfb {
        Some(d) => push_ms(&mut line, d),
        None => line.push_str("null"),
    }
    line.push_str(",\"total_ms\":");
    push_ms(&mut line, r.total);
    line.push_str(",\"request_id\":");
    json_str(&mut line, r.request_id);
    if let Some(e) = r.error {
        line.push_str(",\"error\":");
        json_str(&mut line, &crate::errors::describe(e));
    }
    if let Some(f) = r.failures() {
        line.push_str(",\"upstream_failures\":");
        json_str(&mut line, &f);
    }
    line.push_str("}\n");
    line
}

// Cheap formatting for the per-request lines: `core::fmt` for floats and addresses was
// most of the access log's cost.

fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Milliseconds with three decimals (microsecond precision).
pub fn push_ms(out: &mut String, d: Duration) {
    let us = d.as_micros() as u64;
    push_u64(out, us / 1000);
    let frac = us % 1000;
    out.push('.');
    out.push(char::from(b'0' + (frac / 100) as u8));
    out.push(char::from(b'0' + (frac / 10 % 10) as u8));
    out.push(char::from(b'0' + (frac % 10) as u8));
}

fn push_addr(out: &mut String, a: &std::net::SocketAddr) {
    match a {
        std::net::SocketAddr::V4(v4) => {
            push_ip(out, &std::net::IpAddr::V4(*v4.ip()));
            out.push(':');
            push_u64(out, v4.port() as u64);
        }
        std::net::SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// An IP address as text (IPv4 without `core::fmt`).
pub fn push_ip(out: &mut String, ip: &std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, *o as u64);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `"text"`, escaping quotes, backslashes and control characters (the same as JSON).
fn push_quoted(out: &mut String, s: &str) {
    json_str(out, s)
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
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

/// Appends the current UTC time in RFC 3339 with milliseconds. The part up to the second is
/// formatted once per second per thread.
fn now_rfc3339(out: &mut String) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, millis) = (now.as_secs(), now.subsec_millis());
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days as i64);
            text.clear();
            let _ = write!(
                text,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            *cached = secs;
        }
        out.push_str(text);
    });
    out.push('.');
    out.push(char::from(b'0' + (millis / 100) as u8));
    out.push(char::from(b'0' + (millis / 10 % 10) as u8));
    out.push(char::from(b'0' + (millis % 10) as u8));
    out.push('Z');
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept_others_replaced() {
        let keep = http::HeaderValue::from_static("req-42_a.b:c");
        assert_eq!(RequestId::from_client(Some(&keep)).as_str(), "req-42_a.b:c");
        for bad in ["", "has space", "quote\"", &"x".repeat(65), "semi;colon"] {
            let v = http::HeaderValue::from_str(bad).unwrap();
            let id = RequestId::from_client(Some(&v));
            assert_ne!(id.as_str(), bad);
            assert!(uuid::Uuid::parse_str(id.as_str()).is_ok(), "{id:?}");
        }
        let fresh = RequestId::from_client(None);
        assert!(uuid::Uuid::parse_str(fresh.as_str()).is_ok());
        assert_eq!(fresh.header().to_str().unwrap(), fresh.as_str());
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, "\"a\\\"b\\\\c\\u000ad\\u0001\"");
    }

    #[test]
    fn cheap_formatting_matches_the_slow_one() {
        let mut s = String::new();
        push_ms(&mut s, Duration::from_micros(12_345_678));
        s.push(' ');
        push_ms(&mut s, Duration::from_micros(7));
        s.push(' ');
        push_addr(&mut s, &"10.0.3.7:8080".parse().unwrap());
        s.push(' ');
        now_rfc3339(&mut s);
        let parts: Vec<&str> = s.split(' ').collect();
        assert_eq!(&parts[..3], ["12345.678", "0.007", "10.0.3.7:8080"]);
        assert_eq!(parts[3].len(), "2026-11-26T10:40:29.513Z".len());
        assert!(parts[3].ends_with('Z') && parts[3].as_bytes()[10] == b'T');
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
