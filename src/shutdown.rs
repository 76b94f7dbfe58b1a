//! Graceful shutdown that ends when the work does, and the in-flight counter it waits on.
//!
//! After SIGTERM (or SIGQUIT, once the listening sockets are handed to the new process)
//! Pingora stops accepting, then sleeps the whole `grace_period_seconds` even when nothing is
//! left to do. [`ExitWhenDrained`] waits for the same signal, then for the requests in flight
//! to finish, and ends the process at once. The grace period stays the upper bound.

use async_trait::async_trait;
use log::info;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

/// Requests being processed right now.
static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

/// Counts one request as in flight for as long as it lives (kept in the request's context).
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn start() -> InFlight {
        IN_FLIGHT.fetch_add(1, Relaxed);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Relaxed);
    }
}

pub(crate) fn in_flight() -> i64 {
    IN_FLIGHT.load(Relaxed)
}

/// Client connections of the proxy service that are open.
static OPEN_CONNECTIONS: AtomicI64 = AtomicI64::new(0);

/// Counts one client connection as open for as long as it lives. The exit waits for these
/// too, so that an HTTP/2 connection gets its GOAWAY and close, not a cut.
pub(crate) struct Connection(());

impl Connection {
    pub(crate) fn open() -> Connection {
        OPEN_CONNECTIONS.fetch_add(1, Relaxed);
        Connection(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Relaxed);
    }
}

pub(crate) struct ExitWhenDrained;

#[async_trait]
impl BackgroundService for ExitWhenDrained {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Tokio's timer, not Pingora's: Pingora's fast timer can miss a timer registered just
        // after the `-d` fork, before its clock thread is restarted in the child.
        if shutdown.wait_for(|stopping| *stopping).await.is_err() {
            return;
        }
        info!(
            "graceful shutdown: listeners closed, {} request(s) in flight",
            in_flight()
        );
        // The wait and the exit run on a thread of their own: `exit` runs the `atexit` flush
        // of the access log (a blocking write), which must not sit on a runtime thread.
        let spawned = std::thread::Builder::new()
            .name("exit-when-drained".into())
            .spawn(|| {
                // Quiet for a moment in a row, so a connection accepted just before the
                // listeners closed has had its chance to start a request.
                let mut quiet = 0;
                while quiet < 5 {
                    std::thread::sleep(Duration::from_millis(20));
                    let idle = in_flight() == 0 && OPEN_CONNECTIONS.load(Relaxed) == 0;
                    quiet = if idle { quiet + 1 } else { 0 };
                }
                info!("graceful shutdown: no request in flight and no connection open, exiting");
                std::process::exit(0);
            });
        if let Err(e) = spawned {
            info!("graceful shutdown: cannot watch the requests in flight ({e}); Pingora's grace period applies");
        }
    }
}
