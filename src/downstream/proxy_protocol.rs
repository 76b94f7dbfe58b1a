//! PROXY protocol v2 (HAProxy's binary header) from trusted load balancers, with
//! `client_ip.proxy_protocol: true`. A connection whose peer is in `trusted_proxies` must start
//! with the header; its source address then replaces the peer in the connection's socket
//! digest, so everything after (the client address of the session, `X-Forwarded-For`, the
//! access log, the rate limit) sees the real client. Other peers are served as direct clients,
//! and never get a header read. A `LOCAL` header (the balancer's own health check) keeps the
//! peer. A trusted peer without a valid header within `header_timeout` is disconnected.
//!
//! Exactly the header's bytes are read (16, then its stated length), so nothing of the request
//! after it is consumed. On TLS listeners this runs before the handshake (Pingora's pre-TLS
//! callback); on plain ones from the connection wrapper.

use async_trait::async_trait;
use ipnet::IpNet;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use ppp::v2::{Addresses, Command, Header};
use std::io;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The 12 bytes every v2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

pub(crate) struct ProxyProtocol {
    /// `client_ip.trusted_proxies`.
    pub(crate) trusted: Vec<IpNet>,
    pub(crate) timeout: Duration,
}

impl ProxyProtocol {
    fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// A plain connection, as Pingora accepted it: the header read when the peer is trusted.
    /// `None`: the connection is to be dropped.
    pub(crate) async fn accept_plain(&self, stream: Stream) -> Option<Stream> {
        if !stream.as_any().is::<L4Stream>() {
            return Some(stream);
        }
        let mut l4: Box<L4Stream> = stream.into_any().downcast().ok()?;
        self.accept(&mut l4).await.map_err(|e| warn_once(&e)).ok()?;
        Some(l4)
    }

    /// Reads the header of a trusted peer and records its source as the peer address.
    pub(crate) async fn accept(&self, stream: &mut L4Stream) -> io::Result<()> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied()));
        let Some(peer) = peer.filter(|p| self.trusts(p.ip())) else {
            return Ok(());
        };
        let header = tokio::time::timeout(self.timeout, read_header(stream))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "no PROXY header within header_timeout")
            })??;
        let source = source(&header)?;
        if let Some(source) = source {
            let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
            let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(source)));
            stream.set_socket_digest(digest);
        }
        log::debug!("PROXY header from {peer}: client {source:?}");
        Ok(())
    }
}

async fn read_header(stream: &mut L4Stream) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; 16];
    stream.read_exact(&mut bytes).await?;
    if bytes[..12] != SIGNATURE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a trusted proxy's connection does not start with a PROXY protocol v2 header",
        ));
    }
    let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    bytes.resize(16 + len, 0);
    stream.read_exact(&mut bytes[16..]).await?;
    Ok(bytes)
}

/// The client's address from a header; `None` to keep the peer (`LOCAL`, or no IP addresses).
fn source(bytes: &[u8]) -> io::Result<Option<SocketAddr>> {
    let header = Header::try_from(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad PROXY v2 header: {e}")))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

/// A misconfigured balancer makes every connection fail the same way: say so once at warn,
/// then at debug.
fn warn_once(e: &io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Relaxed) {
        log::warn!("PROXY protocol: {e}; connection dropped (further ones are logged at debug)");
    } else {
        log::debug!("PROXY protocol: {e}; connection dropped");
    }
}

/// The same on TLS listeners, before the handshake.
pub(crate) struct PreTls(pub std::sync::Arc<ProxyProtocol>);

#[async_trait]
impl PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        self.0.accept(stream).await.map_err(|e| {
            warn_once(&e);
            pingora::Error::because(pingora::ErrorType::AcceptError, "PROXY protocol", e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[test]
    fn sources_are_read_from_proxy_headers_only() {
        // PROXY, TCP over IPv4: 203.0.113.7:5555 -> 10.0.0.1:443.
        let v4 = v2(1, 0x11, &[203, 0, 113, 7, 10, 0, 0, 1, 0x15, 0xb3, 0x01, 0xbb]);
        assert_eq!(source(&v4).unwrap(), Some("203.0.113.7:5555".parse().unwrap()));
        let mut v6_addrs = Vec::new();
        v6_addrs.extend_from_slice(&"2001:db8::9".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6_addrs.extend_from_slice(&[0; 16]);
        v6_addrs.extend_from_slice(&[0x00, 0x50, 0x01, 0xbb]);
        assert_eq!(
            source(&v2(1, 0x21, &v6_addrs)).unwrap(),
            Some("[2001:db8::9]:80".parse().unwrap())
        );
        // LOCAL (a health check of the balancer's own): keep the peer.
        assert_eq!(source(&v2(0, 0x00, &[])).unwrap(), None);
        // Too short for its family.
        assert!(source(&v2(1, 0x11, &[1, 2, 3])).is_err());
    }
}
