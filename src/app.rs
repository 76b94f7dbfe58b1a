//! Wiring: the Pingora server, its services and start-up checks.

use crate::access_log;
use crate::admin::Admin;
use crate::config::{Config, Listener, ListenerKind, H2};
use crate::downstream::proxy_protocol::{PreTls, ProxyProtocol};
use crate::downstream::{Guarded, LogRefused, RefusedHead};
use crate::gateway::Gateway;
use crate::memory::Collector;
use crate::shutdown::ExitWhenDrained;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::protocols::ALPN;
use pingora::proxy::http_proxy;
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora::tls::sign::SingleCertAndKey;
use std::process::exit;
use std::sync::Arc;

/// Starts the server and serves until a signal ends it.
pub fn run(opt: Opt, config: Config) -> ! {
    let Config {
        server: server_conf,
        gateway: settings,
        ..
    } = config;
    let gateway = Gateway::build(&settings).unwrap_or_else(|e| {
        eprintln!("asset-gateway: {e}");
        exit(1);
    });
    // Pingora panics inside a service task when a listener cannot bind, after retrying an
    // address in use for 30 s, and the process keeps running without it. Fail fast instead;
    // with -u the sockets come from the running instance, so there is nothing to check.
    if !opt.upgrade {
        let listen = settings.listen.iter().map(|l| &l.addr);
        for addr in listen.chain(&settings.admin) {
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
    if let Some(service) = gateway.access.jwks_service() {
        server.add_boxed_service(service);
    }
    let header_timeout = settings.downstream.header_timeout;
    if let Some(addr) = &settings.admin {
        let admin = Admin::new(
            gateway.upstreams.clone(),
            &settings.downstream,
            gateway.cache,
            gateway.router.clone(),
            settings.access.admin_token.as_deref(),
        );
        let mut admin = Service::new(
            "admin".to_string(),
            Guarded {
                inner: Arc::new(admin),
                header_timeout,
                h2c: Vec::new(),
                count_connections: false,
                max_uri_bytes: settings.downstream.limits.max_uri_bytes,
                log_refused: None,
                proxy_protocol: None,
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
    let mut options = HttpServerOptions::default();
    // Pingora allocates a request's 4 KiB head buffer before it waits for the request: every
    // idle keep-alive connection would hold one.
    options.h1_lazy_header_buf = true;
    // One header map per request instead of two (Pingora also keeps each name's original
    // case); header names are case-insensitive, and HTTP/2 has only lower case anyway.
    options.h1_discard_header_case = true;
    // Pingora keeps an idle HTTP/2 connection forever by default.
    options.h2_idle_timeout = Some(settings.downstream.h2.idle_timeout);
    // `h2c` stays off: Pingora would apply it to every plain listener; `Guarded` detects the
    // preface on the listeners configured with `h2c: true`.
    app.server_options = Some(options);
    app.h2_options = Some(h2_options(&settings.downstream.h2));
    let h2c = settings
        .listen
        .iter()
        .filter(|l| matches!(l.kind, ListenerKind::H2c))
        .map(|l| l.addr)
        .collect();
    let client_ip = &settings.access.client_ip;
    let proxy_protocol = client_ip.proxy_protocol.then(|| {
        Arc::new(ProxyProtocol {
            trusted: client_ip.trusted_proxies.clone(),
            timeout: header_timeout,
        })
    });
    let guarded = Guarded {
        inner: Arc::new(app),
        header_timeout,
        h2c,
        count_connections: true,
        max_uri_bytes: settings.downstream.limits.max_uri_bytes,
        log_refused: settings.access_log.map(|format| {
            LogRefused(Arc::new(move |h: &RefusedHead<'_>| {
                access_log::write_refused_head(h, format)
            }))
        }),
        proxy_protocol: proxy_protocol.clone(),
    };
    let mut proxy = Service::new("asset-gateway".to_string(), guarded);
    if let Some(pp) = proxy_protocol {
        // TLS listeners: the header comes before the handshake.
        proxy.endpoints().set_pre_tls_callback(Arc::new(PreTls(pp)));
    }
    for listener in &settings.listen {
        proxy.add_listener(listener_config(listener));
    }
    server.add_service(proxy).add_dependency(&bootstrap);
    server.run_forever()
}

/// A listening endpoint. No buffers on client connections, unlike Pingora's defaults:
/// - write: Pingora does not flush a Content-Length body between chunks, so with its 1460-byte
///   write buffer a small piece of body waits there until more arrives (or the upstream times
///   out); unbuffered, every piece leaves as soon as it is read (under TLS, as one record);
/// - read: clients only send a request head, which Pingora reads into its own buffer; the
///   default 64 KiB per connection is memory held by every idle or slow client.
fn listener_config(listener: &Listener) -> ListenerConfig {
    let config = ListenerConfig::tcp(listener.addr.to_string()).l4_buffer(L4BufferSettings::unbuffered());
    let ListenerKind::Tls {
        cert,
        cert_path,
        key_path,
        http2,
    } = &listener.kind
    else {
        return config;
    };
    // The paths only name the listener: the certificate was loaded and checked at start and
    // is served from memory, so Pingora never reads (or panics on) the files.
    let mut tls = match TlsSettings::intermediate(cert_path, key_path) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("asset-gateway: TLS listener {}: {e}", listener.addr);
            exit(1);
        }
    };
    tls.set_cert_resolver(Arc::new(SingleCertAndKey::from(cert.clone())));
    tls.set_alpn(if *http2 { ALPN::H2H1 } else { ALPN::H1 });
    config.tls(tls)
}

/// Pingora's HTTP/2 defaults (100 streams, 64 KiB header lists) with the configured limits.
fn h2_options(c: &H2) -> H2Options {
    let mut o = default_h2_options();
    o.max_concurrent_streams(c.max_concurrent_streams)
        .max_header_list_size(c.max_header_list_size)
        .max_send_buffer_size(c.max_send_buffer)
        .max_pending_accept_reset_streams(c.max_pending_reset_streams);
    o
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
