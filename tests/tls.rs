//! Upstream TLS: a CA generated in the test signs the origin's certificate; the gateway
//! verifies it with the configured SNI and CA, and presents a client certificate for mTLS.

mod common;

use common::ca::{provider, Ca};
use common::origin::{Origin, TlsAcceptor};
use common::{check_config, client, simple_config, temp_dir, Gateway, ID};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::Arc;

/// A TLS origin for `assets.test`, optionally requiring a client certificate from `client_ca`.
async fn tls_origin(server_ca: &Ca, client_ca: Option<&Ca>) -> Origin {
    let (cert, key) = server_ca.issue("assets.test");
    let chain = vec![cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = match client_ca {
        None => builder
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(ca.cert.der().to_vec())).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .unwrap();
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap()
        }
    };
    let o = Origin::start_tls("127.0.0.1:0", TlsAcceptor::from(Arc::new(config))).await;
    o.set_body(ID, "secure asset");
    o
}

fn write(dir: &Path, name: &str, text: String) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn tls_yaml(origin: &Origin, tls: &str) -> String {
    simple_config(&[origin.addr], &format!("      tls: {{{tls}}}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tls_with_the_right_sni_works() {
    let ca = Ca::new("test ca");
    let o = tls_origin(&ca, None).await;
    let dir = temp_dir();
    let ca_file = write(&dir, "ca.pem", ca.cert.pem());
    let gw = Gateway::start(&tls_yaml(&o, &format!("sni: assets.test, ca_file: {ca_file}")));
    let r = client().get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "secure asset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sni_is_refused_with_502_and_a_clear_log_line() {
    let ca = Ca::new("test ca");
    let o = tls_origin(&ca, None).await;
    let dir = temp_dir();
    let ca_file = write(&dir, "ca.pem", ca.cert.pem());
    let gw = Gateway::start(&tls_yaml(&o, &format!("sni: other.test, ca_file: {ca_file}")));
    let (status, _) = gw.fetch(ID, "wrong-sni").await;
    assert_eq!(status, 502);
    let line = gw.access_line("wrong-sni").await;
    assert!(
        line.contains("certificate not valid for name \\\"other.test\\\""),
        "{line}"
    );
    assert!(o.asset_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_is_refused_with_502_and_a_clear_log_line() {
    let ca = Ca::new("test ca");
    let other = Ca::new("another ca");
    let o = tls_origin(&ca, None).await;
    let dir = temp_dir();
    let ca_file = write(&dir, "other-ca.pem", other.cert.pem());
    let gw = Gateway::start(&tls_yaml(&o, &format!("sni: assets.test, ca_file: {ca_file}")));
    let (status, _) = gw.fetch(ID, "unknown-ca").await;
    assert_eq!(status, 502);
    let line = gw.access_line("unknown-ca").await;
    assert!(line.contains("UnknownIssuer"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let ca = Ca::new("test ca");
    let client_ca = Ca::new("client ca");
    let o = tls_origin(&ca, Some(&client_ca)).await;
    let dir = temp_dir();
    let ca_file = write(&dir, "ca.pem", ca.cert.pem());
    let (cert, key) = client_ca.issue("gateway.test");
    let cert_file = write(&dir, "client.pem", cert.pem());
    let key_file = write(&dir, "client.key", key.serialize_pem());

    let gw = Gateway::start(&tls_yaml(
        &o,
        &format!("sni: assets.test, ca_file: {ca_file}, client_cert: {cert_file}, client_key: {key_file}"),
    ));
    let r = client().get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "secure asset");

    // The same origin refuses a gateway without the client certificate.
    let gw = Gateway::start(&tls_yaml(&o, &format!("sni: assets.test, ca_file: {ca_file}")));
    let r = client().get(gw.asset_url(ID)).send().await.unwrap();
    assert_eq!(r.status(), 502);
}

#[test]
fn unusable_tls_files_are_config_errors_naming_the_key() {
    let dir = temp_dir();
    let not_pem = write(&dir, "not.pem", "hello\n".to_string());
    let yaml = simple_config(
        &["127.0.0.1:9".parse().unwrap()],
        &format!(
            "      tls: {{sni: a.test, ca_file: {not_pem}, client_cert: {not_pem}, client_key: {not_pem}}}\n"
        ),
    )
    .replace("{listen}", "127.0.0.1:1");
    let (ok, text) = check_config(&yaml);
    assert!(!ok, "{text}");
    assert!(
        text.contains("gateway.upstreams.assets.tls.ca_file:") && text.contains("holds no PEM certificate"),
        "{text}"
    );
    assert!(
        text.contains("gateway.upstreams.assets.tls.client_key:") && text.contains("holds no private key"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}
