//! Where a request head ends, across reads, and whether a body follows it: what the
//! connection wrapper (`deadline`) needs to tell one pipelined request from the next.

/// Finds the blank line that ends a request head, across reads.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct HeadEnd {
    /// The last three bytes seen.
    tail: [u8; 3],
}

impl HeadEnd {
    /// Feeds the next bytes of a head; once `\r\n\r\n` has been seen, where in `data` the
    /// head ends (the offset just past its blank line: what follows belongs to the next
    /// request).
    pub(super) fn feed_at(&mut self, data: &[u8]) -> Option<usize> {
        if data.is_empty() {
            return None;
        }
        let mut joint = [0u8; 6];
        let n = data.len().min(3);
        joint[..3].copy_from_slice(&self.tail);
        joint[3..3 + n].copy_from_slice(&data[..n]);
        // A window starting in the tail ends `i + 1` bytes into `data`; then the first one
        // wholly in `data`.
        let end = joint[..3 + n]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 1)
            .or_else(|| blank_line().find(data).map(|i| i + 4));
        if end.is_some() {
            *self = HeadEnd::default();
            return end;
        }
        let mut last = [0u8; 6];
        last[..3].copy_from_slice(&self.tail);
        last[3..3 + n].copy_from_slice(&data[data.len() - n..]);
        self.tail.copy_from_slice(&last[n..n + 3]);
        None
    }

    /// Feeds the next bytes of a head; true once `\r\n\r\n` has been seen.
    pub(super) fn feed(&mut self, data: &[u8]) -> bool {
        if data.is_empty() {
            return false;
        }
        // Usually a whole head arrives in one read and ends it: check that first.
        let mut joint = [0u8; 6];
        let n = data.len().min(3);
        joint[..3].copy_from_slice(&self.tail);
        joint[3..3 + n].copy_from_slice(&data[..n]);
        if data.ends_with(b"\r\n\r\n")
            || joint[..3 + n].windows(4).any(|w| w == b"\r\n\r\n")
            || blank_line().find(data).is_some()
        {
            *self = HeadEnd::default();
            return true;
        }
        let mut last = [0u8; 6];
        last[..3].copy_from_slice(&self.tail);
        last[3..3 + n].copy_from_slice(&data[data.len() - n..]);
        self.tail.copy_from_slice(&last[n..n + 3]);
        false
    }
}

/// The searcher for a head's blank line, built once (building it costs more than searching a
/// head).
fn blank_line() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    FINDER.get_or_init(|| memchr::memmem::Finder::new(b"\r\n\r\n"))
}

/// Whether a request head announces a body (`Content-Length` other than 0, or
/// `Transfer-Encoding`): then the bytes behind it are that body, not a next request.
pub(super) fn declares_body(head: &[u8]) -> bool {
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return false;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        name.eq_ignore_ascii_case(b"transfer-encoding")
            || (name.eq_ignore_ascii_case(b"content-length") && value != b"0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blank_line_is_found_however_the_head_is_split() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for a in 0..head.len() {
            for b in a..head.len() {
                let mut h = HeadEnd::default();
                let found = [&head[..a], &head[a..b], &head[b..]]
                    .iter()
                    .any(|part| h.feed(part));
                assert!(found, "split at {a}, {b}");
            }
        }
        let mut h = HeadEnd::default();
        assert!(!h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!h.feed(b"X: y\r\n"));
        assert!(!h.feed(b"\r"));
        assert!(h.feed(b"\n"));
        assert!(!HeadEnd::default().feed(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    }

    /// Where the first head ends, however it is split, with a pipelined one behind it.
    #[test]
    fn the_first_head_ends_where_its_blank_line_does() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let two = [&head[..], b"GET /2 HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(HeadEnd::default().feed_at(&two), Some(head.len()));
        for a in 1..head.len() {
            let mut h = HeadEnd::default();
            assert_eq!(h.feed_at(&two[..a]), None, "split at {a}");
            assert_eq!(h.feed_at(&two[a..]), Some(head.len() - a), "split at {a}");
        }
        assert!(!declares_body(head));
        assert!(!declares_body(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
        assert!(declares_body(b"OPTIONS / HTTP/1.1\r\ncontent-length: 5\r\n\r\n"));
        assert!(declares_body(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!declares_body(b"GET /content-length:5 HTTP/1.1\r\n\r\n"));
    }
}
