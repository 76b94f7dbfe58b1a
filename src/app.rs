//! Wiring: the Pingora server, its services and start-up checks.

use crate::config::Config;
use crate::proxy::Gateway;
use pingora::apps::HttpServerOptions;
use pingora::proxy::ProxyServiceBuilder;
use pingora::server::configuration::Opt;
use pingora::server::Server;
use std::process::exit;

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
        for addr in &gateway_conf.listen {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                eprintln!("asset-gateway: cannot listen on {addr}: {e}");
                exit(1);
            }
        }
    }
    exit_on_listener_panic();

    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let mut options = HttpServerOptions::default();
    options.h2c = false;
    for service in gateway.upstreams.services() {
        server.add_boxed_service(service);
    }
    let mut proxy = ProxyServiceBuilder::new(&server.configuration, gateway)
        .name("asset-gateway")
        .server_options(options)
        .build();
    for addr in &gateway_conf.listen {
        proxy.add_tcp(addr);
    }
    server.add_service(proxy);
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
