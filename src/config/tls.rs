//! Reading TLS files at start-up: PEM in, checked DER or keys out. Pingora's rustls paths
//! panic on a certificate or key they cannot use (while connecting upstream, or in the service
//! task that builds a TLS listener), so nothing unchecked may reach them; and `-t` must find
//! every problem.

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, CryptoProvider, PrivateKeyDer};
use std::sync::Arc;

/// Every certificate in a PEM file, in order.
pub(super) fn read_certs(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut pem.as_slice())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path:?} is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path:?} holds no PEM certificate"));
    }
    for der in &certs {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("{path:?} holds a certificate that cannot be parsed: {e}"))?;
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub(super) fn read_key(path: &str) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{path:?} is not a PEM key file: {e}"))?
        .ok_or_else(|| format!("{path:?} holds no private key"))?;
    let der = key.secret_der().to_vec();
    // Pingora turns these bytes back into a key on every TLS connect and panics if it cannot.
    PrivateKeyDer::try_from(der.clone()).map_err(|e| format!("{path:?}: unusable private key: {e}"))?;
    Ok(der)
}

/// Which file of a listener's pair a problem is about.
pub(super) enum Which {
    Cert,
    Key,
}

/// A listener's certificate chain (leaf first) and key, checked: both parse, the key is the
/// certificate's, and the leaf is valid now.
pub(super) fn server_cert(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, (Which, String)> {
    let chain: Vec<CertificateDer<'static>> = read_certs(cert)
        .map_err(|e| (Which::Cert, e))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key_der = PrivateKeyDer::try_from(read_key(key).map_err(|e| (Which::Key, e))?)
        .map_err(|e| (Which::Key, format!("{key:?}: unusable private key: {e}")))?;
    pingora::tls::install_default_crypto_provider();
    let provider =
        CryptoProvider::get_default().ok_or_else(|| (Which::Key, "no TLS crypto provider".to_string()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| (Which::Key, format!("{key:?}: unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    // Not `CertifiedKey::from_der`: it lets a match it cannot decide pass. The keys rustls
    // loads always know their public key, so here the comparison always decides.
    certified.keys_match().map_err(|_| {
        (
            Which::Key,
            format!("{key:?} does not match the certificate in {cert:?}"),
        )
    })?;
    let leaf = certified
        .end_entity_cert()
        .map_err(|e| (Which::Cert, format!("{cert:?}: {e}")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| (Which::Cert, format!("{cert:?}: {e}")))?;
    let validity = parsed.validity();
    if !validity.is_valid() {
        let now = x509_parser::time::ASN1Time::now();
        let why = if now < validity.not_before {
            format!("is not valid before {}", validity.not_before)
        } else {
            format!("expired on {}", validity.not_after)
        };
        return Err((Which::Cert, format!("the certificate in {cert:?} {why}")));
    }
    Ok(Arc::new(certified))
}
