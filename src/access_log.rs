//! The access log: one line per request, text (`key=value` after the usual log prefix) or
//! JSON, with one list of fields for both.
//!
//! Lines do not go through `env_logger`'s writer: they are appended to one buffer that a
//! thread of its own writes to stderr when 32 KiB have gathered, every 200 ms, and at exit
//! (like nginx's `access_log ... buffer= flush=`), so no request and no runtime thread waits
//! on stderr. One `write` per request was a measurable share of the CPU per small request.
//! `RUST_LOG` still decides whether lines are written (target `access`).

use crate::config::AccessLogFormat;
use crate::fmt::{push_addr, push_ip, push_json_str, push_ms, push_now, push_u64};
use std::borrow::Cow;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, Once};
use std::time::Duration;

/// The log target of access lines, so they can be filtered on their own
/// (`RUST_LOG=info,access=off`).
const TARGET: &str = "access";
/// The writer wakes as soon as this much has gathered.
const BATCH: usize = 32 * 1024;
/// How often the writer writes out when traffic is light.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Beyond this much unwritten (stderr blocked), lines are dropped and counted, rather than
/// memory growing without bound.
const MAX_PENDING: usize = 16 * 1024 * 1024;

static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static WAKE: Condvar = Condvar::new();
/// Held while writing to stderr, so the exit flush never interleaves with the writer.
static WRITING: Mutex<()> = Mutex::new(());
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// What one access line says about a request.
pub(crate) struct AccessRecord<'a> {
    pub client: Option<SocketAddr>,
    /// `http/1.1`, `h2` or `http/1.0`.
    pub proto: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// 0: no response was sent.
    pub status: u16,
    pub body_bytes: usize,
    pub upstream_peer: Option<&'a str>,
    pub reused: bool,
    pub attempts: usize,
    pub upstream_ttfb: Option<Duration>,
    pub total: Duration,
    pub request_id: &'a str,
    /// The failure, as `errors::describe` says it.
    pub error: Option<String>,
    /// Why attempts failed, or why no peer was usable; left out when it would only repeat
    /// `error`.
    pub failures: Option<String>,
    /// What the cache did (`hit`, `collapsed`, `miss-stored`, `miss`, ...); `None` when the
    /// request did not use the cache (the field is then left out).
    pub cache: Option<&'a str>,
    /// Why access control refused the request (`missing-credentials`, `rate-limit`, ...).
    pub refused: Option<&'a str>,
    /// The client's address when it is not the connection's peer (from `X-Forwarded-For`
    /// behind trusted proxies).
    pub client_ip: Option<std::net::IpAddr>,
    /// The optional fields (`access_log.fields`): the client's `Range`, `User-Agent` and
    /// `Referer`. `None`: not configured (left out); `Some(None)`: configured, not sent.
    pub range: Option<Option<Cow<'a, str>>>,
    pub user_agent: Option<Option<Cow<'a, str>>>,
    pub referer: Option<Option<Cow<'a, str>>>,
}

/// A field's value, written the way each format writes it.
enum Value<'a> {
    /// Text: bare. JSON: a string.
    Word(&'a str),
    /// A quoted string in both formats.
    Quoted(&'a str),
    Addr(SocketAddr),
    Ip(std::net::IpAddr),
    Int(u64),
    Ms(Duration),
    Bool(bool),
    /// Text: `-`. JSON: `null`.
    Missing,
}

impl AccessRecord<'_> {
    /// Every field, in order. `None` leaves the field out of the line.
    fn fields(&self) -> [(&'static str, Option<Value<'_>>); 20] {
        fn or_missing(v: Option<Value<'_>>) -> Option<Value<'_>> {
            Some(v.unwrap_or(Value::Missing))
        }
        fn optional<'a>(v: &'a Option<Option<Cow<'_, str>>>) -> Option<Value<'a>> {
            v.as_ref()
                .map(|v| v.as_deref().map_or(Value::Missing, Value::Quoted))
        }
        [
            ("client", or_missing(self.client.map(Value::Addr))),
            ("client_ip", self.client_ip.map(Value::Ip)),
            ("proto", Some(Value::Word(self.proto))),
            ("method", Some(Value::Word(self.method))),
            ("path", Some(Value::Quoted(self.path))),
            ("status", Some(Value::Int(self.status as u64))),
            ("bytes", Some(Value::Int(self.body_bytes as u64))),
            ("upstream", or_missing(self.upstream_peer.map(Value::Word))),
            ("reused", Some(Value::Bool(self.reused))),
            ("attempts", Some(Value::Int(self.attempts as u64))),
            ("ttfb_ms", or_missing(self.upstream_ttfb.map(Value::Ms))),
            ("total_ms", Some(Value::Ms(self.total))),
            ("request_id", Some(Value::Word(self.request_id))),
            ("cache", self.cache.map(Value::Word)),
            ("refused", self.refused.map(Value::Word)),
            ("error", self.error.as_deref().map(Value::Quoted)),
            ("upstream_failures", self.failures.as_deref().map(Value::Quoted)),
            ("range", optional(&self.range)),
            ("user_agent", optional(&self.user_agent)),
            ("referer", optional(&self.referer)),
        ]
    }

    /// `[<time> INFO  access] client=... method=...`: the prefix of every other log line.
    fn text_line(&self) -> String {
        let mut line = String::with_capacity(320);
        line.push('[');
        push_now(&mut line);
        line.push_str(" INFO  access]");
        for (name, value) in self.fields() {
            let Some(value) = value else { continue };
            line.push(' ');
            line.push_str(name);
            line.push('=');
            match value {
                Value::Word(s) => line.push_str(s),
                Value::Quoted(s) => push_json_str(&mut line, s),
                Value::Addr(a) => push_addr(&mut line, &a),
                Value::Ip(ip) => push_ip(&mut line, &ip),
                Value::Int(n) => push_u64(&mut line, n),
                Value::Ms(d) => push_ms(&mut line, d),
                Value::Bool(b) => line.push_str(if b { "true" } else { "false" }),
                Value::Missing => line.push('-'),
            }
        }
        line.push('\n');
        line
    }

    /// A bare JSON object, `time` first.
    fn json_line(&self) -> String {
        let mut line = String::with_capacity(320);
        line.push_str("{\"time\":\"");
        push_now(&mut line);
        line.push('"');
        for (name, value) in self.fields() {
            let Some(value) = value else { continue };
            line.push_str(",\"");
            line.push_str(name);
            line.push_str("\":");
            match value {
                Value::Word(s) | Value::Quoted(s) => push_json_str(&mut line, s),
                Value::Addr(a) => {
                    line.push('"');
                    push_addr(&mut line, &a);
                    line.push('"');
                }
                Value::Ip(ip) => {
                    line.push('"');
                    push_ip(&mut line, &ip);
                    line.push('"');
                }
                Value::Int(n) => push_u64(&mut line, n),
                Value::Ms(d) => push_ms(&mut line, d),
                Value::Bool(b) => line.push_str(if b { "true" } else { "false" }),
                Value::Missing => line.push_str("null"),
            }
        }
        line.push_str("}\n");
        line
    }
}

/// Adds one access line (at info: `RUST_LOG` decides) to the batch.
pub(crate) fn write(record: &AccessRecord, format: AccessLogFormat) {
    if !log::log_enabled!(target: TARGET, log::Level::Info) {
        return;
    }
    let line = match format {
        AccessLogFormat::Text => record.text_line(),
        AccessLogFormat::Json => record.json_line(),
    };
    // The writer thread starts with the first line: after `-d` has forked, since no request
    // is served before.
    static WRITER: Once = Once::new();
    WRITER.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(writer_loop);
        if let Err(e) = spawned {
            log::error!("cannot start the access log writer: {e}; lines are written at exit only");
        }
    });
    let Ok(mut pending) = PENDING.lock() else { return };
    if pending.len() + line.len() > MAX_PENDING {
        DROPPED.fetch_add(1, Relaxed);
        return;
    }
    pending.extend_from_slice(line.as_bytes());
    if pending.len() >= BATCH {
        WAKE.notify_one();
    }
}

/// The access line of a head the connection wrapper answered 414 (Pingora never saw it).
pub(crate) fn write_refused_head(h: &crate::downstream::RefusedHead<'_>, format: AccessLogFormat) {
    let record = AccessRecord {
        client: h.client,
        proto: "http/1.1",
        method: h.method,
        path: h.target,
        status: 414,
        body_bytes: h.body_bytes,
        upstream_peer: None,
        reused: false,
        attempts: 0,
        upstream_ttfb: None,
        total: h.elapsed,
        request_id: h.request_id,
        error: Some("bad request from the client: request target longer than max_uri_bytes".to_string()),
        failures: None,
        cache: None,
        refused: None,
        client_ip: None,
        // The head was never parsed: its headers are unknown.
        range: None,
        user_agent: None,
        referer: None,
    };
    write(&record, format);
}

fn writer_loop() {
    loop {
        let batch = {
            let Ok(mut pending) = PENDING.lock() else { return };
            if pending.len() < BATCH {
                pending = match WAKE.wait_timeout(pending, FLUSH_INTERVAL) {
                    Ok((p, _)) => p,
                    Err(_) => return,
                };
            }
            std::mem::take(&mut *pending)
        };
        write_out(&batch);
    }
}

/// Writes out what has gathered; also called at exit (`logging` registers it).
pub(crate) fn flush() {
    let batch = match PENDING.lock() {
        Ok(mut p) => std::mem::take(&mut *p),
        Err(_) => return,
    };
    write_out(&batch);
}

fn write_out(batch: &[u8]) {
    let dropped = DROPPED.swap(0, Relaxed);
    if batch.is_empty() && dropped == 0 {
        return;
    }
    let _writing = WRITING.lock();
    let mut stderr = std::io::stderr().lock();
    // Nothing sensible to do when stderr is gone.
    let _ = stderr.write_all(batch);
    if dropped > 0 {
        let mut note = String::from("[");
        push_now(&mut note);
        let _ = writeln!(
            stderr,
            "{note} WARN  access] {dropped} access lines dropped: stderr did not keep up"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(error: Option<&str>) -> AccessRecord<'static> {
        AccessRecord {
            client: Some("10.0.0.1:4242".parse().unwrap()),
            proto: "h2",
            method: "GET",
            path: "/content/v1/assets/x\"y",
            status: 200,
            body_bytes: 189,
            upstream_peer: None,
            reused: true,
            attempts: 1,
            upstream_ttfb: Some(Duration::from_micros(138)),
            total: Duration::from_micros(452),
            request_id: "req-1",
            error: error.map(str::to_string),
            failures: None,
            cache: None,
            refused: None,
            client_ip: None,
            range: None,
            user_agent: None,
            referer: None,
        }
    }

    #[test]
    fn text_lines_have_every_field_in_order() {
        let line = record(Some("client closed the connection: x")).text_line();
        let (prefix, fields) = line.split_once("] ").unwrap();
        assert!(prefix.ends_with(" INFO  access"), "{prefix}");
        assert_eq!(
            fields,
            "client=10.0.0.1:4242 proto=h2 method=GET path=\"/content/v1/assets/x\\\"y\" status=200 bytes=189 upstream=- reused=true attempts=1 ttfb_ms=0.138 total_ms=0.452 request_id=req-1 error=\"client closed the connection: x\"\n"
        );
    }

    #[test]
    fn json_lines_carry_the_same_fields() {
        let line = record(None).json_line();
        assert!(
            line.starts_with("{\"time\":\"") && line.ends_with("}\n"),
            "{line}"
        );
        let (_, rest) = line.split_once("\",").unwrap();
        assert_eq!(
            rest,
            "\"client\":\"10.0.0.1:4242\",\"proto\":\"h2\",\"method\":\"GET\",\"path\":\"/content/v1/assets/x\\\"y\",\"status\":200,\"bytes\":189,\"upstream\":null,\"reused\":true,\"attempts\":1,\"ttfb_ms\":0.138,\"total_ms\":0.452,\"request_id\":\"req-1\"}\n"
        );
    }

    #[test]
    fn the_cache_field_follows_request_id_in_both_formats() {
        let mut r = record(None);
        r.cache = Some("hit");
        assert!(r.text_line().contains(" request_id=req-1 cache=hit\n"));
        assert!(r
            .json_line()
            .contains(",\"request_id\":\"req-1\",\"cache\":\"hit\"}"));
    }

    #[test]
    fn optional_fields_are_quoted_and_dashed_when_absent() {
        let mut r = record(None);
        r.range = Some(Some("bytes=0-99".into()));
        r.user_agent = Some(Some("VLC/3.0 \"x\"".into()));
        r.referer = Some(None);
        assert!(
            r.text_line()
                .ends_with(" range=\"bytes=0-99\" user_agent=\"VLC/3.0 \\\"x\\\"\" referer=-\n"),
            "{}",
            r.text_line()
        );
        assert!(r
            .json_line()
            .ends_with(",\"range\":\"bytes=0-99\",\"user_agent\":\"VLC/3.0 \\\"x\\\"\",\"referer\":null}\n"));
        r.user_agent = None;
        assert!(!r.text_line().contains("user_agent"));
    }
}
