//! Cheap formatting for text written on every request (the access line, Server-Timing,
//! X-Forwarded-For): `core::fmt` for numbers, floats and addresses was most of the access
//! log's cost per request.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub(crate) fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Milliseconds with three decimals (microsecond precision).
pub(crate) fn push_ms(out: &mut String, d: Duration) {
    let us = d.as_micros() as u64;
    push_u64(out, us / 1000);
    let frac = us % 1000;
    out.push('.');
    out.push(char::from(b'0' + (frac / 100) as u8));
    out.push(char::from(b'0' + (frac / 10 % 10) as u8));
    out.push(char::from(b'0' + (frac % 10) as u8));
}

pub(crate) fn push_addr(out: &mut String, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            push_ip(out, &IpAddr::V4(*v4.ip()));
            out.push(':');
            push_u64(out, v4.port() as u64);
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// An IP address as text (IPv4 without `core::fmt`).
pub(crate) fn push_ip(out: &mut String, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, *o as u64);
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `s` as a JSON string literal (also how the text access log quotes).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
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

/// The current UTC time in RFC 3339 with milliseconds (`2026-11-26T10:40:29.513Z`), the
/// format of every log line's prefix. The part up to the second is formatted once a second
/// per thread (this runs for every access line).
pub(crate) fn push_now(out: &mut String) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            text.clear();
            let _ = write!(text, "{}", humantime::format_rfc3339_seconds(now));
            text.pop(); // the `Z`
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}");
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
        push_addr(&mut s, &"[::1]:80".parse().unwrap());
        s.push(' ');
        push_now(&mut s);
        let parts: Vec<&str> = s.split(' ').collect();
        assert_eq!(&parts[..4], ["12345.678", "0.007", "10.0.3.7:8080", "[::1]:80"]);
        assert_eq!(parts[4].len(), "2026-11-26T10:40:29.513Z".len());
        assert!(parts[4].ends_with('Z') && parts[4].as_bytes()[10] == b'T');
    }
}
