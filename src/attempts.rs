//! One request's upstream attempts: the peer each used, the peers that could not be reached,
//! why attempts failed, and the two retry decisions. The decisions are pure functions, tested
//! here; the proxy hooks call them.

use crate::upstreams::Peer;
use pingora::RetryType;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Default)]
pub(crate) struct Attempts {
    /// The peer chosen when the request was admitted, used by the first attempt.
    pub first_pick: Option<Arc<Peer>>,
    /// The peer of the attempt under way (or of the last one).
    pub current: Option<Arc<Peer>>,
    pub count: usize,
    /// Peers this request could not connect to: never selected again for it. (A failure on
    /// a stale pooled connection says nothing about its peer, so a retry may go back.)
    pub unreachable: Vec<SocketAddr>,
    /// Why attempts failed, or why no peer was usable (for the access line).
    pub failures: Vec<String>,
    /// Whether the last attempt used a pooled connection.
    pub reused: bool,
}

impl Attempts {
    pub(crate) fn start(&mut self, peer: Arc<Peer>) {
        self.count += 1;
        self.current = Some(peer);
    }

    /// Records a connect failure of the current attempt; returns whether another peer may
    /// take the request.
    pub(crate) fn connect_failed(&mut self, reason: String, retries: usize, peers: usize) -> bool {
        if let Some(p) = &self.current {
            self.unreachable.push(p.addr);
        }
        self.failures.push(reason);
        may_fail_over(self.unreachable.len(), retries, peers)
    }

    /// The failures for the access line; left out when they would only repeat the error (a
    /// single attempt that failed to connect).
    pub(crate) fn failures_for_log(&self, has_error: bool) -> Option<String> {
        let repeats_error = self.failures.len() == 1 && self.count == 1 && has_error;
        (!self.failures.is_empty() && !repeats_error).then(|| self.failures.join("; "))
    }
}

/// After a connect failure: nothing was sent upstream, so another peer (never the same one)
/// may take the request, up to `retries` more peers. `failed` counts the peers that failed.
pub(crate) fn may_fail_over(failed: usize, retries: usize, peers: usize) -> bool {
    failed <= retries && failed < peers
}

/// After a connection was made: only a failure that Pingora marks as worth retrying on a
/// reused (stale pooled) connection, before any response byte reached the client. Once the
/// client has part of a response, never.
pub(crate) fn may_retry_established(
    mut retry: RetryType,
    response_started: bool,
    connection_reused: bool,
) -> bool {
    if response_started {
        return false;
    }
    retry.decide_reuse(connection_reused);
    retry.retry()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_never_repeats_a_peer_and_stops_at_retries() {
        // (peers that failed, retries, peers) -> another attempt?
        let table = [
            ((1, 2, 3), true),
            ((2, 2, 3), true),
            ((3, 2, 3), false), // every peer failed
            ((1, 0, 3), false), // retries: 0
            ((2, 1, 3), false), // one retry used
            ((1, 2, 1), false), // a single peer is never tried twice
            ((1, 5, 2), true),
            ((2, 5, 2), false),
        ];
        for ((failed, retries, peers), expected) in table {
            assert_eq!(
                may_fail_over(failed, retries, peers),
                expected,
                "{failed}, {retries}, {peers}"
            );
        }
    }

    #[test]
    fn established_connections_retry_only_when_stale_and_nothing_was_sent() {
        use RetryType::{Decided, ReusedOnly};
        // (retry type, response started, connection reused) -> retry?
        let table = [
            ((ReusedOnly, false, true), true),
            ((ReusedOnly, false, false), false),
            ((ReusedOnly, true, true), false),
            ((Decided(true), false, false), true),
            ((Decided(true), true, true), false),
            ((Decided(false), false, true), false),
        ];
        for ((retry, started, reused), expected) in table {
            let label = format!("{retry:?}, {started}, {reused}");
            assert_eq!(may_retry_established(retry, started, reused), expected, "{label}");
        }
    }

    #[test]
    fn a_single_failed_connect_is_not_repeated_in_the_log() {
        let mut a = Attempts {
            count: 1,
            ..Default::default()
        };
        a.failures.push("10.0.0.1:80: refused".into());
        assert_eq!(a.failures_for_log(true), None);
        assert_eq!(a.failures_for_log(false).as_deref(), Some("10.0.0.1:80: refused"));
        a.count = 2;
        a.failures.push("10.0.0.2:80: refused".into());
        assert_eq!(
            a.failures_for_log(true).as_deref(),
            Some("10.0.0.1:80: refused; 10.0.0.2:80: refused")
        );
    }
}
