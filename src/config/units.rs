//! Durations and sizes as the file writes them: `"500ms"`, `"2s"`, `"64KiB"`.
//!
//! Durations are parsed by `humantime`; sizes by a strict parser of our own, because the size
//! crates accept ambiguous spellings silently (`bytesize` reads `64k` as 64,000 bytes and
//! `4Kb` as 4,000) and word their errors poorly ("cannot parse float from empty string").

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A duration written with its unit. Always above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor {
            expecting: "a duration with a unit, such as \"500ms\" or \"2s\"",
            parse: |s| parse_duration(s).map(Dur),
            from_int: None,
        })
    }
}

/// A duration written with its unit that may be zero (`"0s"`: off), for windows such as
/// `stale_while_revalidate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window(pub Duration);

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor {
            expecting: "a duration with a unit, such as \"10s\" or \"1h\" (\"0s\" turns it off)",
            parse: |s| match parse_duration(s) {
                Err(_) if s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" => {
                    Ok(Window(Duration::ZERO))
                }
                r => r.map(Window),
            },
            from_int: None,
        })
    }
}

/// A size in bytes: `"512"`, `"64KiB"`, `"1MiB"` (also `B`, `KB`, `MB`, `GiB`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor {
            expecting: "a size such as \"64KiB\" or \"1MiB\"",
            parse: |s| parse_size(s).map(Size),
            from_int: Some(Size),
        })
    }
}

/// `gateway.cache.slice`: a size, or `"off"` (`None`: objects are fetched and stored whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SliceSize(pub Option<u64>);

impl<'de> Deserialize<'de> for SliceSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor {
            expecting: "a size such as \"4MiB\", or \"off\"",
            parse: |s| match s.trim() {
                "off" => Ok(SliceSize(None)),
                s => parse_size(s)
                    .map(|n| SliceSize(Some(n)))
                    .map_err(|e| format!("{e}, or \"off\"")),
            },
            from_int: Some(|n| SliceSize(Some(n))),
        })
    }
}

/// A value written as text, parsed by `parse`; `from_int` also takes a bare integer.
struct TextVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
    from_int: Option<fn(u64) -> T>,
}

impl<T> Visitor<'_> for TextVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        (self.parse)(s).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        match self.from_int {
            Some(f) => Ok(f(n)),
            None => Err(E::invalid_type(de::Unexpected::Unsigned(n), &self)),
        }
    }
}

/// `"500ms"`, `"2s"`, `"1m"`, `"1h"` (and what else `humantime` reads, such as `"1h30m"`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?}: {e}; write an integer and a unit (ms, s, m, h), such as \"500ms\" or \"2s\"")
    })?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(d)
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let bad = || {
        format!("invalid size {s:?}: expected an integer and a unit (B, KiB, MiB, GiB, KB, MB, GB), such as \"64KiB\"")
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_and_are_above_zero() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").unwrap_err().contains("greater than zero"));
        for bad in ["-1s", "10", "", "5S"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.starts_with(&format!("invalid duration {bad:?}: ")), "{e}");
            assert!(e.ends_with("such as \"500ms\" or \"2s\""), "{e}");
        }
    }

    #[test]
    fn sizes_are_strict() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2 KB"), Ok(2000));
        for bad in ["64k", "4Kb", "-1KiB", "1.5MiB", "x", ""] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
