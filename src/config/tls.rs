//! Reading TLS files at start-up: PEM in, DER out, every certificate and key parsed here.
//! Pingora's rustls path panics on a certificate or key it cannot parse, on the request path,
//! so nothing unparsed may reach it.

/// Every certificate in a PEM file, in order.
#[cfg(feature = "rustls")]
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
#[cfg(feature = "rustls")]
pub(super) fn read_key(path: &str) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{path:?} is not a PEM key file: {e}"))?
        .ok_or_else(|| format!("{path:?} holds no private key"))?;
    let der = key.secret_der().to_vec();
    // Pingora turns these bytes back into a key on every TLS connect and panics if it cannot.
    pingora::tls::PrivateKeyDer::try_from(der.clone())
        .map_err(|e| format!("{path:?}: unusable private key: {e}"))?;
    Ok(der)
}

#[cfg(not(feature = "rustls"))]
pub(super) fn read_certs(_path: &str) -> Result<Vec<Vec<u8>>, String> {
    Err("this build has no TLS support (cargo feature `rustls`)".to_string())
}

#[cfg(not(feature = "rustls"))]
pub(super) fn read_key(_path: &str) -> Result<Vec<u8>, String> {
    Err("this build has no TLS support (cargo feature `rustls`)".to_string())
}
