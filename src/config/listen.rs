//! `gateway.listen`: each client-facing listener's address, and its TLS certificate and key
//! (read and parsed here, so a bad file is refused at start and by `-t`).

use super::file::GatewayFile;
use super::runtime::{Listener, ListenerKind};
use super::tls;
use std::net::SocketAddr;

pub(super) fn listeners(g: &GatewayFile, p: &mut Vec<String>) -> Vec<Listener> {
    if g.listen.is_empty() {
        p.push("gateway.listen: at least one address is required".to_string());
    }
    let mut listen: Vec<Listener> = Vec::new();
    for (i, l) in g.listen.iter().enumerate() {
        let key = format!("gateway.listen[{i}]");
        let addr = match l.addr.parse::<SocketAddr>() {
            Err(_) => {
                p.push(format!("{key}: {:?} is not an IP:port address", l.addr));
                continue;
            }
            Ok(a) if listen.iter().any(|o| o.addr == a) => {
                p.push(format!("{key}: {:?} is listed twice", l.addr));
                continue;
            }
            Ok(a) => a,
        };
        let kind = match (&l.tls, l.h2c, l.http2) {
            (Some(_), true, _) => {
                p.push(format!("{key}: tls and h2c exclude each other (h2c is cleartext HTTP/2; with tls, http2 is on by default)"));
                continue;
            }
            (None, _, Some(true)) => {
                p.push(format!(
                    "{key}.http2: needs tls (for cleartext HTTP/2 use h2c: true)"
                ));
                continue;
            }
            (None, true, _) => ListenerKind::H2c,
            (None, false, _) => ListenerKind::Http1,
            (Some(t), false, http2) => match tls::server_cert(&t.cert, &t.key) {
                Ok(cert) => ListenerKind::Tls {
                    cert,
                    cert_path: t.cert.clone(),
                    key_path: t.key.clone(),
                    http2: http2.unwrap_or(true),
                },
                Err((which, e)) => {
                    let field = match which {
                        tls::Which::Cert => "cert",
                        tls::Which::Key => "key",
                    };
                    p.push(format!("{key}.tls.{field}: {e}"));
                    continue;
                }
            },
        };
        listen.push(Listener { addr, kind });
    }
    listen
}
