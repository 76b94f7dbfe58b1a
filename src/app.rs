//! Wiring: the Pingora server, its services and start-up checks.

use crate::admin::Admin;
use crate::config::Config;
use crate::downstream::Guarded;
use crate::gateway::Gateway;
use crate::memory::Collector;
use crate::shutdown::ExitWhenDrained;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::http_proxy;
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::process::exit;
use std::sync::Arc;

/// Starts the server and serves until a signal ends it.
pub fn run(opt: Opt, config: Config) -> ! {
    let Config {
        server: server_conf,
        gateway: settings,
    } = config;
    let gateway = Gateway::build(&settings).unwrap_or_else(|e| {
        eprintln!("asset-gateway: {e}");
        exit(1);
    });
    // Pingora panics inside a service task when a listener cannot bind, after retrying an
    // address in use for 30 s, and the process keeps running without it. Fail fast instead;
    // with -u the sockets come from the running instance, so there is nothing to check.
    if !opt.upgrade {
        for addr in settings.listen.iter().chain(&settings.admin) {
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
    let header_timeout = settings.downstream.header_timeout;
    if let Some(addr) = &settings.admin {
        let admin = Admin::new(gateway.upstreams.clone(), &settings.downstream);
        let mut admin = Service::new(
            "admin".to_string(),
            Guarded {
                inner: Arc::new(admin),
                header_timeout,
            },
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin).add_dependency(&bootstrap);
    }
    server.add_service(background_service("exit when drained", ExitWhenDrained));
    server.add_service(background_service("memory collector", Collector));

    let mut app = http_proxy(&server.configuration, gateway);
    // Pingora lets 4 body reads wait for the client per request; see `streaming`.
    app.set_task_buffer_size(settings.streaming.queue_depth);
    // Pingora allocates a request's 4 KiB head buffer before it waits for the request: every
    // idle keep-alive connection would hold one. (HTTP/1.1 only: no h2c, no CONNECT.)
    let mut options = HttpServerOptions::default();
    options.h1_lazy_header_buf = true;
    // One header map per request instead of two (Pingora also keeps each name's original
    // case); header names are case-insensitive, and HTTP/2 has only lower case anyway.
    options.h1_discard_header_case = true;
    app.server_options = Some(options);
    let guarded = Guarded {
        inner: Arc::new(app),
        header_timeout,
    };
    let mut proxy = Service::new("asset-gateway".to_string(), guarded);
    for addr in &settings.listen {
        // No buffers on client connections, unlike Pingora's defaults:
        // - write: Pingora does not flush a Content-Length body between chunks, so with its
        //   1460-byte write buffer a small piece of body waits there until more arrives (or
        //   the upstream times out); unbuffered, every piece leaves as soon as it is read.
        // - read: clients only send a request head, which Pingora reads into its own buffer;
        //   the default 64 KiB per connection is memory held by every idle or slow client.
        let buffers = L4BufferSettings::unbuffered();
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
    }
    server.add_service(proxy).add_dependency(&bootstrap);
    server.run_forever()
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
