//! The request line as it arrives, before Pingora parses it: a request target longer than
//! `max_uri_bytes` is answered 414 by the connection wrapper (`deadline::HeaderDeadline`)
//! however long it is. Pingora cannot parse a target of 64 KiB or more at all (the `http`
//! crate's limit) and would answer those with a plain 400; here Pingora never sees such a
//! head, and the wrapper answers as soon as the limit is passed, without reading the rest.

use crate::errors;
use crate::request_id::RequestId;
use std::net::SocketAddr;
use std::time::Duration;

/// Longest method looked at; a longer one is left to Pingora (400).
const MAX_METHOD: usize = 32;
/// How much of a refused target the access log shows.
const LOGGED_TARGET: usize = 128;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the method (empty lines before a request line are allowed).
    #[default]
    Start,
    Method,
    Target,
    /// The target ended within the limit, or the line is not one this scan judges.
    Done,
    TooLong,
}

/// The request line of one head, scanned across reads.
#[derive(Debug, Default)]
pub(crate) struct TargetScan {
    state: State,
    method: Vec<u8>,
    target_len: usize,
    /// The start of the target, for the access log.
    target_start: Vec<u8>,
}

/// A head the wrapper answered 414, for the access log (`app` gives the wrapper a function
/// that writes it, so the client side does not depend on the log's format).
pub(crate) struct RefusedHead<'a> {
    pub client: Option<SocketAddr>,
    pub method: &'a str,
    /// The start of the target, then `...`.
    pub target: &'a str,
    pub request_id: &'a str,
    pub body_bytes: usize,
    pub elapsed: Duration,
}

/// Writes a [`RefusedHead`] to the access log.
#[derive(Clone)]
pub(crate) struct LogRefused(pub std::sync::Arc<dyn Fn(&RefusedHead<'_>) + Send + Sync>);

impl std::fmt::Debug for LogRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("LogRefused")
    }
}

/// What the scan knows after some bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The request line is not complete yet.
    Incomplete,
    /// The target is within the limit (or the line is malformed: Pingora answers it).
    Fine,
    TooLong,
}

impl TargetScan {
    pub(crate) fn verdict(&self) -> Verdict {
        match self.state {
            State::Done => Verdict::Fine,
            State::TooLong => Verdict::TooLong,
            _ => Verdict::Incomplete,
        }
    }

    /// Feeds the next bytes of a head.
    pub(crate) fn feed(&mut self, data: &[u8], max_target: usize) -> Verdict {
        let mut rest = data;
        while !rest.is_empty() {
            match self.state {
                State::Start => {
                    let skip = rest.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
                    rest = &rest[skip..];
                    if !rest.is_empty() {
                        self.state = State::Method;
                    }
                }
                State::Method => match memchr::memchr3(b' ', b'\r', b'\n', rest) {
                    Some(i) if rest[i] == b' ' && self.method.len() + i <= MAX_METHOD => {
                        self.method.extend_from_slice(&rest[..i]);
                        self.state = State::Target;
                        rest = &rest[i + 1..];
                    }
                    Some(_) => self.state = State::Done,
                    None if self.method.len() + rest.len() > MAX_METHOD => self.state = State::Done,
                    None => {
                        self.method.extend_from_slice(rest);
                        rest = &[];
                    }
                },
                State::Target => {
                    let end = memchr::memchr3(b' ', b'\r', b'\n', rest);
                    let part = &rest[..end.unwrap_or(rest.len())];
                    let room = LOGGED_TARGET.saturating_sub(self.target_start.len());
                    self.target_start.extend_from_slice(&part[..part.len().min(room)]);
                    self.target_len += part.len();
                    if self.target_len > max_target {
                        self.state = State::TooLong;
                    } else if end.is_some() {
                        self.state = State::Done;
                    }
                    rest = &[];
                }
                State::Done | State::TooLong => break,
            }
        }
        self.verdict()
    }

    /// The complete 414 answer (the connection is closed after it); `log` writes its access
    /// line.
    pub(crate) fn refuse(
        &self,
        client: Option<SocketAddr>,
        log: Option<&LogRefused>,
        elapsed: Duration,
    ) -> Vec<u8> {
        let id = RequestId::from_client(None);
        let body = errors::json_body(errors::URI_TOO_LONG, id.as_str());
        let mut answer = format!(
            "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
            body.len(),
            id.as_str()
        )
        .into_bytes();
        answer.extend_from_slice(&body);
        if let Some(log) = log {
            let mut target = String::from_utf8_lossy(&self.target_start).into_owned();
            target.push_str("...");
            (log.0)(&RefusedHead {
                client,
                method: std::str::from_utf8(&self.method).unwrap_or("-"),
                target: &target,
                request_id: id.as_str(),
                body_bytes: body.len(),
                elapsed,
            });
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]], max: usize) -> Verdict {
        let mut s = TargetScan::default();
        let mut v = Verdict::Incomplete;
        for p in parts {
            v = s.feed(p, max);
        }
        v
    }

    #[test]
    fn the_target_is_measured_however_the_line_is_split() {
        let line = b"GET /content/v1/assets/abc?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let target = "/content/v1/assets/abc?x=1".len();
        for cut in 0..line.len() {
            let (a, b) = line.split_at(cut);
            assert_eq!(scan(&[a, b], target), Verdict::Fine, "cut {cut}");
            assert_eq!(scan(&[a, b], target - 1), Verdict::TooLong, "cut {cut}");
        }
        assert_eq!(scan(&[b"GET /abc"], 10), Verdict::Incomplete);
        assert_eq!(scan(&[b"\r\nGET /abc HTTP/1.1\r\n"], 4), Verdict::Fine);
        assert_eq!(scan(&[b"\r\nGET /abcd HTTP/1.1\r\n"], 4), Verdict::TooLong);
        // Not a request line this scan judges: Pingora answers it.
        assert_eq!(scan(&[b"GARBAGE\r\n\r\n"], 3), Verdict::Fine);
        assert_eq!(scan(&[&[b'A'; 40]], 3), Verdict::Fine);
    }

    #[test]
    fn the_answer_is_a_complete_414() {
        let mut s = TargetScan::default();
        s.feed(b"GET /aaaaaaaaaa", 4);
        let answer = String::from_utf8(s.refuse(None, None, Duration::ZERO)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 "), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(
            body.starts_with("{\"error\":\"the request target is too long\""),
            "{body}"
        );
    }
}
