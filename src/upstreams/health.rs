//! Active health checks of one upstream, as the Pingora `HealthCheck` its load balancer runs
//! (only when the balancer is a background service with a frequency: see `Upstreams::services`).
//! Each check is the peer's own (`Peer::check`): the backend Pingora passes carries the peer.

use super::peer::Peer;
use async_trait::async_trait;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::{Error, ErrorType};

pub(super) struct Checks {
    pub upstream: String,
    pub healthy_after: usize,
    pub unhealthy_after: usize,
}

#[async_trait]
impl HealthCheck for Checks {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        match Peer::of(target) {
            Some(peer) => peer.check(target).await,
            None => Error::e_explain(ErrorType::InternalError, "a backend without its peer"),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_after
        } else {
            self.unhealthy_after
        }
    }

    /// Pingora logs each health change once with this summary.
    fn backend_summary(&self, target: &Backend) -> String {
        let label = Peer::of(target).map_or("?", |p| p.label.as_str());
        format!("upstream {} peer {label}", self.upstream)
    }
}
