//! The `gateway:` section exactly as the file writes it. Serde types only: every struct
//! refuses unknown keys, and nothing outside `config` sees them (`compile` turns them into
//! the runtime types).

use super::auth::{AuthFile, AuthMethod};
use super::client_ip::ClientIpFile;
use super::cors::CorsFile;
use super::rate_limit::RateLimitFile;
use super::units::{Dur, Size, SliceSize, Window};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GatewayFile {
    pub listen: Vec<ListenFile>,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`); absent = none.
    #[serde(default)]
    pub admin: Option<String>,
    /// The one nameserver (`IP:port`) for `discovery.dns`; absent = `/etc/resolv.conf`.
    #[serde(default)]
    pub resolver: Option<String>,
    /// Adds `Server-Timing` (upstream time to first byte, the gateway's own share).
    #[serde(default = "yes")]
    pub server_timing: bool,
    #[serde(default)]
    pub access_log: AccessLogFile,
    #[serde(default)]
    pub downstream: DownstreamFile,
    #[serde(default)]
    pub streaming: StreamingFile,
    pub upstreams: BTreeMap<String, UpstreamFile>,
    pub routes: Vec<RouteFile>,
    /// The response cache; absent = no cache.
    #[serde(default)]
    pub cache: Option<CacheFile>,
    /// Needed by every admin endpoint but `/healthz` and `/readyz` (see `access`).
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub client_ip: ClientIpFile,
}

/// `gateway.cache`: `memory` is required (it is what turns the cache on).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheFile {
    pub memory: Size,
    #[serde(default = "one_gib")]
    pub max_object_size: Size,
    #[serde(default = "one_hour")]
    pub default_ttl: Dur,
    #[serde(default = "thirty_seconds")]
    pub lock_timeout: Dur,
    /// Freshness of a 404 or 410 without explicit freshness.
    #[serde(default = "ten_seconds")]
    pub negative_ttl: Dur,
    /// How long a key whose answer could not be stored skips the cache lock (hit-for-pass).
    #[serde(default = "thirty_seconds")]
    pub uncacheable_ttl: Dur,
    #[serde(default = "ten_second_window")]
    pub stale_while_revalidate: Window,
    #[serde(default = "one_hour_window")]
    pub stale_if_error: Window,
    /// The optional disk tier.
    #[serde(default)]
    pub disk: Option<DiskFile>,
    /// Objects are fetched and stored in pieces of this size (`"off"`: whole).
    #[serde(default = "four_mib_slice")]
    pub slice: SliceSize,
}

/// `gateway.cache.disk`: both keys are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DiskFile {
    pub path: String,
    pub size: Size,
}

fn one_gib() -> Size {
    Size(1 << 30)
}
fn four_mib_slice() -> SliceSize {
    SliceSize(Some(4 << 20))
}
fn one_hour() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn thirty_seconds() -> Dur {
    Dur(Duration::from_secs(30))
}
fn ten_second_window() -> Window {
    Window(Duration::from_secs(10))
}
fn one_hour_window() -> Window {
    Window(Duration::from_secs(3600))
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AccessLogFile {
    pub enabled: bool,
    pub format: AccessLogFormat,
    /// Optional fields (request headers) added to every line.
    pub fields: Vec<AccessLogField>,
}

impl Default for AccessLogFile {
    fn default() -> Self {
        AccessLogFile {
            enabled: true,
            format: AccessLogFormat::Text,
            fields: Vec::new(),
        }
    }
}

/// An optional access-log field: the client's request header of that name.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum AccessLogField {
    Range,
    UserAgent,
    Referer,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AccessLogFormat {
    /// `key=value` fields after the usual log prefix.
    #[default]
    Text,
    /// One JSON object per line, nothing else on it.
    Json,
}

/// A listener: `"127.0.0.1:8080"` (plain HTTP/1.1) or
/// `{addr, tls: {cert, key}, http2: true}` / `{addr, h2c: true}`.
#[derive(Debug)]
pub(super) struct ListenFile {
    pub addr: String,
    pub tls: Option<ListenTlsFile>,
    pub http2: Option<bool>,
    pub h2c: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenTlsFile {
    pub cert: String,
    pub key: String,
}

impl<'de> Deserialize<'de> for ListenFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            addr: String,
            #[serde(default)]
            tls: Option<ListenTlsFile>,
            #[serde(default)]
            http2: Option<bool>,
            #[serde(default)]
            h2c: bool,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ListenFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"IP:port\" or {addr: \"IP:port\", tls: {cert, key}, http2, h2c}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ListenFile, E> {
                Ok(ListenFile {
                    addr: s.to_string(),
                    tls: None,
                    http2: None,
                    h2c: false,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ListenFile, A::Error> {
                let f = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ListenFile {
                    addr: f.addr,
                    tls: f.tls,
                    http2: f.http2,
                    h2c: f.h2c,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct DownstreamFile {
    pub keepalive_timeout: Dur,
    pub header_timeout: Dur,
    pub write_timeout: Dur,
    pub max_uri_bytes: Size,
    pub max_header_bytes: Size,
    pub max_headers: usize,
    pub h2: H2File,
}

impl Default for DownstreamFile {
    fn default() -> Self {
        DownstreamFile {
            keepalive_timeout: Dur(Duration::from_secs(60)),
            header_timeout: Dur(Duration::from_secs(10)),
            write_timeout: Dur(Duration::from_secs(60)),
            max_uri_bytes: Size(8 * 1024),
            max_header_bytes: Size(32 * 1024),
            max_headers: 100,
            h2: H2File::default(),
        }
    }
}

/// HTTP/2 server settings (listeners with `http2` or `h2c`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct H2File {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: Size,
    pub max_send_buffer: Size,
    pub idle_timeout: Dur,
    pub max_pending_reset_streams: usize,
}

impl Default for H2File {
    fn default() -> Self {
        H2File {
            max_concurrent_streams: 100,
            max_header_list_size: Size(64 * 1024),
            max_send_buffer: Size(64 * 1024),
            idle_timeout: Dur(Duration::from_secs(60)),
            max_pending_reset_streams: 20,
        }
    }
}

/// `streaming.read_size` and `streaming.queue_depth` by default (chosen by measurement, see
/// the README's performance section; their bounds are checked in `streaming`).
const DEFAULT_READ_SIZE: u64 = 16 * 1024;
const DEFAULT_QUEUE_DEPTH: usize = 2;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct StreamingFile {
    pub read_size: Size,
    pub queue_depth: usize,
}

impl Default for StreamingFile {
    fn default() -> Self {
        StreamingFile {
            read_size: Size(DEFAULT_READ_SIZE),
            queue_depth: DEFAULT_QUEUE_DEPTH,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    /// Fixed peers; excludes `discovery`.
    #[serde(default)]
    pub peers: Option<Vec<PeerFile>>,
    /// Peers from DNS; excludes `peers`.
    #[serde(default)]
    pub discovery: Option<DiscoveryFile>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "one_second")]
    pub connect_timeout: Dur,
    #[serde(default = "ten_seconds")]
    pub read_timeout: Dur,
    #[serde(default = "ten_seconds")]
    pub write_timeout: Dur,
    #[serde(default = "one_minute")]
    pub idle_timeout: Dur,
    #[serde(default = "two")]
    pub retries: usize,
    #[serde(default)]
    pub selection: Selection,
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    #[serde(default)]
    pub passive_ejection: EjectionFile,
    #[serde(default)]
    pub tls: Option<TlsFile>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `discovery: {dns: "name:port", interval: 5s}`: every A/AAAA record of the name is a peer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DiscoveryFile {
    pub dns: String,
    #[serde(default = "five_seconds")]
    pub interval: Dur,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Selection {
    /// Spread requests by weight.
    #[default]
    RoundRobin,
    /// Ketama hashing of the asset id: one asset keeps hitting the same peer.
    Consistent,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthCheckFile {
    pub path: String,
    #[serde(default = "five_seconds")]
    pub interval: Dur,
    #[serde(default = "one_second")]
    pub timeout: Dur,
    #[serde(default = "two")]
    pub healthy_after: usize,
    #[serde(default = "two")]
    pub unhealthy_after: usize,
    #[serde(default = "ok_status")]
    pub expect_status: Vec<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct EjectionFile {
    pub failures: u32,
    pub cooldown: Dur,
}

impl Default for EjectionFile {
    fn default() -> Self {
        EjectionFile {
            failures: 3,
            cooldown: Dur(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    pub sni: String,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
}

fn one_second() -> Dur {
    Dur(Duration::from_secs(1))
}
fn five_seconds() -> Dur {
    Dur(Duration::from_secs(5))
}
fn ten_seconds() -> Dur {
    Dur(Duration::from_secs(10))
}
fn one_minute() -> Dur {
    Dur(Duration::from_secs(60))
}
fn two() -> usize {
    2
}
fn ok_status() -> Vec<u16> {
    vec![200]
}

/// A peer: `"10.0.3.7:8080"` or `{addr: "10.0.3.7:8080", weight: 2}`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PeerFile {
    pub addr: String,
    pub weight: usize,
}

impl<'de> Deserialize<'de> for PeerFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            addr: String,
            #[serde(default = "one")]
            weight: usize,
        }
        fn one() -> usize {
            1
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PeerFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or {addr: \"host:port\", weight: N}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PeerFile, E> {
                Ok(PeerFile {
                    addr: s.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PeerFile, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(PeerFile {
                    addr: full.addr,
                    weight: full.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    pub path: String,
    pub upstream: String,
    pub rewrite: String,
    /// Default: `drop` on a cached route, `forward` on any other.
    #[serde(default)]
    pub query: Option<QueryFile>,
    /// Whether responses of this route go through the cache; default: yes when
    /// `gateway.cache` is set.
    #[serde(default)]
    pub cache: Option<bool>,
    /// Any one admits; absent or empty: public (see `access`).
    #[serde(default)]
    pub auth: Vec<AuthMethod>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitFile>,
    #[serde(default)]
    pub cors: Option<CorsFile>,
    /// On a cached route, the client headers that reach the upstream besides the ones the
    /// gateway owns; default `[accept]`.
    #[serde(default)]
    pub forward_headers: Option<Vec<String>>,
    /// On a cached route, the media types an origin's `Vary: Accept` keys on.
    #[serde(default)]
    pub vary_accept: Option<Vec<String>>,
}

/// `query: forward`, `query: drop` or `query: {allow: [w, fmt]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum QueryFile {
    /// Send the client's query string upstream unchanged.
    Forward,
    Drop,
    /// Only these parameters, sorted by name, then value.
    Allow(Vec<String>),
}

impl<'de> Deserialize<'de> for QueryFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Allow {
            allow: Vec<String>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = QueryFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("forward, drop or {allow: [names]}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<QueryFile, E> {
                match s {
                    "forward" => Ok(QueryFile::Forward),
                    "drop" => Ok(QueryFile::Drop),
                    other => Err(E::unknown_variant(other, &["forward", "drop", "{allow: [...]}"])),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<QueryFile, A::Error> {
                let a = Allow::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(QueryFile::Allow(a.allow))
            }
        }
        d.deserialize_any(V)
    }
}
