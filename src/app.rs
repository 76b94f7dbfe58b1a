//! Wiring: the Pingora server, its services and start-up checks.

use crate::admin::Admin;
use crate::config::Config;
use crate::downstream::{Guarded, Limits};
use crate::proxy::Gateway;
use crate::{logging, metrics};
use async_trait::async_trait;
use log::info;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::http_proxy;
use pingora::server::configuration::Opt;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::process::exit;
use std::sync::Arc;
use std::time::Duration;

/// Starts the server and serves until a signal ends it.
pub fn run(opt: Opt, config: Config, gateway: Gateway) -> ! {
    let Config {
        server: server_conf,
        gateway: gateway_conf,
    } = config;
    // Pingora panics inside a service task when a listener cannot bind, after retrying an
    // address in use for 30 s, and the process keeps running without it. Fail fast instead;
    // with -u the sockets come from the running instance, so there is nothing to check.
    if !opt.upgrade {
        for addr in gateway_conf.listen.iter().chain(&gateway_conf.admin) {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                eprintln!("asset-gateway: cannot listen on {addr}: {e}");
                exit(1);
            }
        }
    }
    exit_on_listener_panic();

    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    // Bootstrap (taking the sockets over with -u) runs as a service, after the fork of -d, so
    // that `daemon_wait_for_ready` works: the daemon tells its parent it is up from there.
    // Every listening service waits for it.
    let bootstrap = server.bootstrap_as_a_service();

    for service in gateway.upstreams.services() {
        server.add_boxed_service(service);
    }
    if let Some(addr) = &gateway_conf.admin {
        let admin = Admin {
            upstreams: gateway.upstreams.clone(),
            limits: Limits::new(&gateway_conf.downstream),
            keepalive_secs: gateway_conf.downstream.keepalive_secs(),
        };
        let guarded = Guarded {
            inner: Arc::new(admin),
            header_timeout: gateway_conf.downstream.header_timeout.0,
        };
        let mut admin = Service::new("admin".to_string(), guarded);
        admin.add_tcp(addr);
        server.add_service(admin).add_dependency(&bootstrap);
    }
    server.add_service(background_service("exit when drained", ExitWhenDrained));
    server.add_service(background_service("access log writer", AccessLogWriter));

    // HTTP/1.1 only (Pingora's default options: no h2c, no CONNECT).
    let app = http_proxy(&server.configuration, gateway);
    let guarded = Guarded {
        inner: Arc::new(app),
        header_timeout: gateway_conf.downstream.header_timeout.0,
    };
    let mut proxy = Service::new("asset-gateway".to_string(), guarded);
    for addr in &gateway_conf.listen {
        // No buffers on client connections, unlike Pingora's defaults:
        // - write: Pingora does not flush a Content-Length body between chunks, so with its
        //   1460-byte write buffer a small piece of body waits there until more arrives (or
        //   the upstream times out); unbuffered, every piece leaves as soon as it is read.
        // - read: clients only send a request head, which Pingora reads into its own buffer;
        //   the default 64 KiB per connection is memory held by every idle or slow client.
        let buffers = L4BufferSettings::unbuffered();
        proxy.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(buffers));
    }
    server.add_service(proxy).add_dependency(&bootstrap);
    server.run_forever()
}

/// Graceful shutdown that ends when the work does. After SIGTERM (or SIGQUIT, once the
/// listening sockets are handed to the new process) Pingora stops accepting, then sleeps the
/// whole `grace_period_seconds` even when nothing is left to do. This service waits for the
/// same signal, then for the in-flight requests to finish, and exits the process at once.
/// The grace period stays the upper bound.
///
/// Its timers (and the access log writer's) are tokio's: Pingora's fast timer can miss a timer
/// registered just after the `-d` fork, before its clock thread is restarted in the child.
struct ExitWhenDrained;

#[async_trait]
impl BackgroundService for ExitWhenDrained {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|stopping| *stopping).await.is_err() {
            return;
        }
        info!(
            "graceful shutdown: listeners closed, {} request(s) in flight",
            metrics::in_flight()
        );
        // Quiet for a moment in a row, so a connection accepted just before the listeners
        // closed has had its chance to start a request.
        let mut quiet = 0;
        while quiet < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            quiet = if metrics::in_flight() == 0 { quiet + 1 } else { 0 };
        }
        info!("graceful shutdown: no request in flight, exiting");
        exit(0);
    }
}

/// Writes the batched access lines out when traffic is too light to fill the batch.
struct AccessLogWriter;

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Keeps going during a graceful shutdown; exit writes out what is left.
        loop {
            tokio::time::sleep(logging::ACCESS_FLUSH_INTERVAL).await;
            logging::flush_access_log();
        }
    }
}

/// Backstop for the pre-bind check above (e.g. a race, or `-u` without the old process):
/// a listener that cannot be built ends the process with an error instead of leaving it up
/// without a socket.
fn exit_on_listener_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.contains("Failed to build listeners") {
            eprintln!("asset-gateway: a listener could not be started; exiting");
            exit(1);
        }
    }));
}
