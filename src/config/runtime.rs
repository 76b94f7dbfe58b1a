//! The gateway's settings as the running gateway uses them: checked, cross-referenced and
//! loaded (peer names resolved, TLS files read, `${VAR}` expanded). Only `compile` builds
//! them, so holding one means the file was valid; nothing here is serde.

use super::file::{AccessLogFormat, Selection};
use crate::downstream::Limits;
use crate::routing::QueryRule;
use http::{HeaderName, HeaderValue};
use pingora::tls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct Settings {
    pub listen: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    pub server_timing: bool,
    /// `None`: no access log.
    pub access_log: Option<AccessLogFormat>,
    /// The optional access-log fields configured.
    pub access_log_fields: AccessLogFields,
    pub downstream: Downstream,
    pub streaming: Streaming,
    /// Routes refer to these by index.
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    /// `None`: no cache.
    pub cache: Option<CacheSettings>,
    /// `admin_token`, `auth`, `client_ip`.
    pub access: super::AccessSettings,
}

/// `gateway.cache`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheSettings {
    /// The memory tier's bound, in bytes.
    pub memory: usize,
    /// Larger responses (by Content-Length) stream through uncached.
    pub max_object_size: usize,
    /// Freshness of a 200 without explicit freshness.
    pub default_ttl: Duration,
    /// How long a writer may hold the cache lock (until its response header) before waiters
    /// compete to replace it, and the most a waiter waits in all.
    pub lock_timeout: Duration,
    /// Freshness of a 404 or 410 without explicit freshness.
    pub negative_ttl: Duration,
    /// How long a key whose answer could not be stored skips the cache lock.
    pub uncacheable_ttl: Duration,
    /// How long past its freshness a stored object is served at once while one background
    /// request revalidates it (zero: never), unless the origin says otherwise.
    pub stale_while_revalidate: Duration,
    /// How long past its freshness a stored object is served when the origin fails (5xx,
    /// refused, timed out), unless the origin says otherwise.
    pub stale_if_error: Duration,
    /// `None`: memory only.
    pub disk: Option<DiskSettings>,
    /// The size of the pieces large objects are fetched and stored in; `None`: whole objects.
    pub slice: Option<usize>,
}

/// `gateway.cache.disk`, checked: the directory exists and is writable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskSettings {
    pub path: std::path::PathBuf,
    /// The bound on the object files, in bytes.
    pub size: u64,
}

pub(crate) struct Listener {
    pub addr: SocketAddr,
    pub kind: ListenerKind,
}

pub(crate) enum ListenerKind {
    /// Plain HTTP/1.1.
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (and HTTP/1.1 from clients that do not start
    /// with the HTTP/2 preface).
    H2c,
    /// TLS, with ALPN `h2` and `http/1.1` (`http2`) or `http/1.1` only.
    Tls {
        /// Loaded and checked at start: parses, the key matches, not expired.
        cert: Arc<CertifiedKey>,
        /// The files as configured (for logs).
        cert_path: String,
        key_path: String,
        http2: bool,
    },
}

/// How the gateway treats its clients.
pub(crate) struct Downstream {
    /// An idle keep-alive client connection is closed after this (Pingora keeps it forever).
    pub keepalive_timeout: Duration,
    /// The longest a request head (on HTTP/2: the connection preface) may take to arrive.
    pub header_timeout: Duration,
    /// The longest one write to a client may wait (a client that stops reading, or never
    /// opens its HTTP/2 flow-control window, is cut after this).
    pub write_timeout: Duration,
    pub limits: Limits,
    pub h2: H2,
}

/// HTTP/2 server settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct H2 {
    pub max_concurrent_streams: u32,
    /// Larger header lists get the HTTP/2 layer's own 431 (no JSON body).
    pub max_header_list_size: u32,
    /// Response bytes buffered per stream beyond what the client's window allows.
    pub max_send_buffer: usize,
    /// A connection without a request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Streams a client may reset before the gateway accepts them, before the connection is
    /// closed (ENHANCE_YOUR_CALM): the rapid-reset defence.
    pub max_pending_reset_streams: usize,
}

impl Downstream {
    /// The idle keep-alive limit in whole seconds (Pingora's unit), rounded up.
    pub fn keepalive_secs(&self) -> u64 {
        self.keepalive_timeout.as_secs_f64().ceil() as u64
    }
}

/// How a response body moves from an upstream to a client. With a client slower than its
/// upstream, a response holds about `(2 * queue_depth + 3) * read_size` bytes at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Streaming {
    /// The most bytes one read of an upstream body takes.
    pub read_size: usize,
    /// How many reads may wait for the client before the upstream is not read further.
    pub queue_depth: usize,
}

#[derive(Clone)]
pub(crate) struct Upstream {
    pub name: String,
    /// One per resolved address (a name may resolve to several). Empty with `discovery`.
    pub peers: Vec<Peer>,
    /// Peers found in DNS instead of `peers`.
    pub discovery: Option<Discovery>,
    pub timeouts: Timeouts,
    /// [`Streaming::read_size`], which Pingora sets per peer.
    pub body_read_size: usize,
    /// Extra peers tried, one after another, after a connect failure.
    pub retries: usize,
    pub selection: Selection,
    pub health_check: Option<HealthCheck>,
    /// `None`: passive ejection is off.
    pub ejection: Option<Ejection>,
    pub tls: Option<Tls>,
    /// Added to every upstream request; values are marked sensitive (never logged).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// DNS discovery: every A and AAAA record of `name` is a peer on `port`. Checked for syntax
/// only; nothing is resolved before the gateway runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Discovery {
    /// As configured (a trailing dot makes it fully qualified: no search domains).
    pub name: String,
    pub port: u16,
    pub interval: Duration,
    /// `Host` sent to every peer: the upstream's `host`, or `name:port` (without the dot).
    pub host: HeaderValue,
    /// `None`: the system's resolver configuration.
    pub resolver: Option<SocketAddr>,
}

#[derive(Clone)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The address as configured (for logs and metrics).
    pub label: String,
    pub weight: usize,
    /// `Host` sent to this peer: the upstream's `host`, or the peer's address as configured.
    pub host: HeaderValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    /// Time to the first response byte, and between body reads.
    pub read: Duration,
    pub write: Duration,
    /// How long a pooled (idle) upstream connection is kept.
    pub idle: Duration,
}

#[derive(Clone)]
pub(crate) struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    /// Connect and response limit of one check.
    pub timeout: Duration,
    pub healthy_after: usize,
    pub unhealthy_after: usize,
    pub expect_status: Vec<u16>,
}

/// Circuit breaker: `failures` connect failures in a row take a peer out for `cooldown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ejection {
    pub failures: u32,
    pub cooldown: Duration,
}

/// Upstream TLS, with the files already read and parsed (DER).
#[derive(Clone)]
pub(crate) struct Tls {
    pub sni: String,
    /// `None`: the system roots.
    pub ca: Option<Vec<Vec<u8>>>,
    pub client: Option<ClientCert>,
}

#[derive(Clone)]
pub(crate) struct ClientCert {
    pub chain: Vec<Vec<u8>>,
    pub key: Vec<u8>,
}

pub(crate) struct Route {
    /// As configured, e.g. `/content/v1/assets/{id}` (also the metrics label).
    pub template: String,
    pub rewrite: String,
    /// Index into [`Settings::upstreams`].
    pub upstream: usize,
    pub query: QueryRule,
    /// Responses go through the cache (only when `Settings::cache` is set).
    pub cache: bool,
    /// `auth`, `rate_limit`, `cors`.
    pub access: super::RouteAccess,
    /// On a cached route: the client headers forwarded besides the gateway's own (lower
    /// case, in the configured order). Empty on a route without cache (everything goes).
    pub forward_headers: Vec<HeaderName>,
    /// On a cached route: the media types `Vary: Accept` keys on (lower case); empty: the
    /// raw `Accept` value.
    pub vary_accept: Vec<String>,
}

/// The optional access-log fields (client request headers), each off unless configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AccessLogFields {
    pub range: bool,
    pub user_agent: bool,
    pub referer: bool,
}
