//! The one YAML file: Pingora's own server keys at the top level, the gateway's keys under
//! `gateway:`. Loading parses, type-checks and cross-checks everything; every problem is
//! reported with the key's path and the file, and nothing here panics.

use pingora::server::configuration::ServerConf;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The whole file, parsed and validated.
#[derive(Debug)]
pub struct Config {
    /// Pingora's server settings (threads, pid_file, upgrade_sock, grace periods, ...).
    pub server: ServerConf,
    pub gateway: GatewayConf,
}

/// Everything under `gateway:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConf {
    pub listen: Vec<String>,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`); absent = none.
    #[serde(default)]
    pub admin: Option<String>,
    /// Adds `Server-Timing` (upstream time to first byte, the gateway's own share).
    #[serde(default = "yes")]
    pub server_timing: bool,
    #[serde(default)]
    pub access_log: AccessLogConf,
    #[serde(default)]
    pub downstream: DownstreamConf,
    pub upstreams: BTreeMap<String, UpstreamConf>,
    pub routes: Vec<RouteConf>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConf {
    pub enabled: bool,
    pub format: AccessLogFormat,
}

impl Default for AccessLogConf {
    fn default() -> Self {
        AccessLogConf {
            enabled: true,
            format: AccessLogFormat::Text,
        }
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// `key=value` fields after env_logger's usual prefix.
    #[default]
    Text,
    /// One JSON object per line, nothing else on it.
    Json,
}

/// The longest request target the `http` crate (and so Pingora) can parse.
pub const MAX_PARSABLE_URI: usize = u16::MAX as usize - 1;

/// How the gateway treats its clients.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamConf {
    /// How long an idle keep-alive client connection is kept open. Pingora's default keeps it
    /// open forever; a public gateway must not.
    pub keepalive_timeout: Dur,
    /// The longest a request head may take to arrive, from the connection (or the first byte
    /// of a following request) to its blank line.
    pub header_timeout: Dur,
    /// Longest request target (path and query): 414 beyond.
    pub max_uri_bytes: Size,
    /// Largest request head (request line and all header fields): 431 beyond.
    pub max_header_bytes: Size,
    /// Most header fields in a request: 431 beyond.
    pub max_headers: usize,
}

impl DownstreamConf {
    /// The idle keep-alive limit in whole seconds (Pingora's unit), rounded up.
    pub fn keepalive_secs(&self) -> u64 {
        self.keepalive_timeout.0.as_secs_f64().ceil() as u64
    }
}

impl Default for DownstreamConf {
    fn default() -> Self {
        DownstreamConf {
            keepalive_timeout: Dur(Duration::from_secs(60)),
            header_timeout: Dur(Duration::from_secs(10)),
            max_uri_bytes: Size(8 * 1024),
            max_header_bytes: Size(32 * 1024),
            max_headers: 100,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConf {
    pub peers: Vec<PeerConf>,
    /// `Host` header sent upstream; default: the peer's address.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Time to the first response byte, and between body reads.
    #[serde(default = "default_io_timeout")]
    pub read_timeout: Dur,
    #[serde(default = "default_io_timeout")]
    pub write_timeout: Dur,
    /// How long a pooled (idle) upstream connection is kept for reuse.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Extra peers tried, one after another, after a connect failure.
    #[serde(default = "default_retries")]
    pub retries: usize,
    #[serde(default)]
    pub selection: Selection,
    /// Active health checks; absent = none.
    #[serde(default)]
    pub health_check: Option<HealthCheckConf>,
    #[serde(default)]
    pub passive_ejection: EjectionConf,
    /// Upstream TLS; absent = plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConf>,
    /// Added to every upstream request; `${VAR}` is expanded from the environment at start.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_retries() -> usize {
    2
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Spread requests by weight.
    #[default]
    RoundRobin,
    /// Ketama hashing of the asset id: one asset keeps hitting the same peer.
    Consistent,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConf {
    /// Path requested with GET on each peer.
    pub path: String,
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    /// Connect and response timeout of one check.
    #[serde(default = "default_connect_timeout")]
    pub timeout: Dur,
    /// Consecutive successes for an unhealthy peer to come back.
    #[serde(default = "two")]
    pub healthy_after: usize,
    /// Consecutive failures for a healthy peer to go out.
    #[serde(default = "two")]
    pub unhealthy_after: usize,
    #[serde(default = "default_expect_status")]
    pub expect_status: Vec<u16>,
}

fn default_hc_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
fn two() -> usize {
    2
}
fn default_expect_status() -> Vec<u16> {
    vec![200]
}

/// Circuit breaker: a peer whose connections fail `failures` times in a row is left out of
/// selection for `cooldown`, then tried again. `failures: 0` turns it off.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
pub struct EjectionConf {
    pub failures: u32,
    pub cooldown: Dur,
}

impl Default for EjectionConf {
    fn default() -> Self {
        EjectionConf {
            failures: 3,
            cooldown: Dur(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConf {
    /// Server name sent and verified. Required: an empty SNI turns verification off in Pingora.
    pub sni: String,
    /// PEM file of the CA(s) that sign the peers' certificates; default: the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM certificate chain and key for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_io_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

/// A peer: `"10.0.3.7:8080"` or `{addr: "10.0.3.7:8080", weight: 2}`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConf {
    pub addr: String,
    pub weight: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    /// Template such as `/content/v1/assets/{id}`; `{id}` must be a UUID.
    pub path: String,
    pub upstream: String,
    /// Upstream path template such as `/v1/assets/{id}`.
    pub rewrite: String,
    /// `forward` (default) sends the client's query string upstream unchanged; `drop` removes it.
    #[serde(default)]
    pub query: QueryPolicy,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueryPolicy {
    #[default]
    Forward,
    Drop,
}

/// A duration written with its unit: `"500ms"`, `"2s"`, `"1m"`, `"1h"`. Always above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor {
            expecting: "a duration with a unit, such as \"500ms\" or \"2s\"",
            parse: |s| parse_duration(s).map(Dur),
            from_int: None,
        })
    }
}

/// A value written as text (`"2s"`, `"64KiB"`), parsed by `parse`; `from_int` also takes a
/// bare integer.
struct TextVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
    from_int: Option<fn(u64) -> T>,
}

impl<T> Visitor<'_> for TextVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        (self.parse)(s).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        match self.from_int {
            Some(f) => Ok(f(n)),
            None => Err(E::invalid_type(de::Unexpected::Unsigned(n), &self)),
        }
    }
}

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let bad = || {
        format!("invalid duration {s:?}: expected an integer and a unit (ms, s, m, h), such as \"500ms\" or \"2s\"")
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(d)
}

/// A size in bytes, written `"512"`, `"64KiB"`, `"1MiB"` (also `B`, `KB`, `MB`, `GiB`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor {
            expecting: "a size such as \"64KiB\" or \"1MiB\"",
            parse: |s| parse_size(s).map(Size),
            from_int: Some(Size),
        })
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let bad = || {
        format!("invalid size {s:?}: expected an integer and a unit (B, KiB, MiB, GiB, KB, MB, GB), such as \"64KiB\"")
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

impl<'de> Deserialize<'de> for PeerConf {
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
            type Value = PeerConf;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or {addr: \"host:port\", weight: N}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PeerConf, E> {
                Ok(PeerConf {
                    addr: s.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PeerConf, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(PeerConf {
                    addr: full.addr,
                    weight: full.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Every problem found in a config file. Displayed one per line, each naming its key.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.file)?;
        for p in &self.problems {
            write!(f, "\n  {}: {p}", self.file)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates `path`. `-t` runs exactly this.
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_string(),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        Self::from_yaml(&text).map_err(|problems| ConfigError {
            file: path.to_string(),
            problems,
        })
    }

    /// Parses and validates a whole file's text; the errors name each key's path.
    pub fn from_yaml(text: &str) -> Result<Config, Vec<String>> {
        let root: Value = serde_yaml::from_str(text).map_err(|e| vec![format!("not valid YAML: {e}")])?;
        let mut top = match root {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => return Err(vec!["the file must be a YAML mapping of keys".to_string()]),
        };
        let gateway = top.remove("gateway");

        let mut problems = check_server_keys(&top);
        let server = match serde_path_to_error::deserialize::<_, ServerConf>(Value::Mapping(top)) {
            Ok(conf) => match conf.validate() {
                Ok(conf) => Some(conf),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
            Err(e) => {
                problems.push(format!("{}: {}", e.path(), e.inner()));
                None
            }
        };
        if let Some(server) = &server {
            if server.threads == 0 {
                problems.push("threads: must be at least 1".to_string());
            }
        }

        let gateway = match gateway {
            None => {
                problems.push(
                    "gateway: missing section (listen, upstreams and routes live under `gateway:`)"
                        .to_string(),
                );
                None
            }
            Some(value) => match serde_path_to_error::deserialize::<_, GatewayConf>(value) {
                Ok(g) => Some(g),
                Err(e) => {
                    problems.push(format!("gateway.{}: {}", e.path(), e.inner()));
                    None
                }
            },
        };
        if let Some(g) = &gateway {
            problems.extend(g.validate());
        }
        match (server, gateway) {
            (Some(server), Some(gateway)) if problems.is_empty() => Ok(Config { server, gateway }),
            _ => Err(problems),
        }
    }
}

/// Pingora ignores unknown top-level keys (`thread: 4` would silently do nothing); we refuse
/// them. The known keys are read off `ServerConf` itself so they follow Pingora's version.
fn check_server_keys(top: &Mapping) -> Vec<String> {
    let known: BTreeSet<String> = match serde_yaml::to_value(ServerConf::default()) {
        Ok(Value::Mapping(m)) => m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect(),
        _ => BTreeSet::new(),
    };
    top.keys()
        .filter_map(|k| {
            let name = k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}"));
            (!known.contains(&name)).then(|| {
                format!("{name}: unknown key (top-level keys are Pingora's server settings; the gateway's own keys go under `gateway:`)")
            })
        })
        .collect()
}

impl GatewayConf {
    /// Cross-checks what serde cannot: addresses, references, templates, duplicates.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.listen.is_empty() {
            problems.push("gateway.listen: at least one address is required".to_string());
        }
        let mut seen = BTreeSet::new();
        for (i, addr) in self.listen.iter().enumerate() {
            if addr.parse::<SocketAddr>().is_err() {
                problems.push(format!("gateway.listen[{i}]: {addr:?} is not an IP:port address"));
            } else if !seen.insert(addr) {
                problems.push(format!("gateway.listen[{i}]: {addr:?} is listed twice"));
            }
        }
        if let Some(admin) = &self.admin {
            if admin.parse::<SocketAddr>().is_err() {
                problems.push(format!("gateway.admin: {admin:?} is not an IP:port address"));
            } else if seen.contains(admin) {
                problems.push(format!("gateway.admin: {admin:?} is also in gateway.listen"));
            }
        }
        let d = &self.downstream;
        if d.max_headers == 0 {
            problems.push("gateway.downstream.max_headers: must be at least 1".to_string());
        }
        if d.max_uri_bytes.0 < 64 {
            problems.push("gateway.downstream.max_uri_bytes: must be at least 64 bytes".to_string());
        }
        if d.max_uri_bytes.0 > MAX_PARSABLE_URI as u64 {
            problems.push(format!(
                "gateway.downstream.max_uri_bytes: must be at most {MAX_PARSABLE_URI} bytes (a longer request target cannot be parsed at all: Pingora answers it with a plain 400)"
            ));
        }
        if d.max_header_bytes.0 < 512 {
            problems.push("gateway.downstream.max_header_bytes: must be at least 512 bytes".to_string());
        }
        if self.upstreams.is_empty() {
            problems.push("gateway.upstreams: at least one upstream is required".to_string());
        }
        for (name, up) in &self.upstreams {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                problems.push(format!(
                    "gateway.upstreams.{name}: upstream names use only letters, digits, '-', '_' and '.'"
                ));
            }
            problems.extend(up.validate(&format!("gateway.upstreams.{name}")));
        }
        if self.routes.is_empty() {
            problems.push("gateway.routes: at least one route is required".to_string());
        }
        let mut paths: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("gateway.routes[{i}]");
            if let Err(e) = check_template(&route.path, true) {
                problems.push(format!("{key}.path: {e}"));
            }
            if let Err(e) = check_template(&route.rewrite, false) {
                problems.push(format!("{key}.rewrite: {e}"));
            }
            if !self.upstreams.contains_key(&route.upstream) {
                let defined: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                problems.push(format!(
                    "{key}.upstream: unknown upstream {:?} (defined: {})",
                    route.upstream,
                    defined.join(", ")
                ));
            }
            if let Some(first) = paths.insert(&route.path, i) {
                problems.push(format!(
                    "{key}.path: {:?} is already the path of gateway.routes[{first}]",
                    route.path
                ));
            }
        }
        problems
    }
}

impl UpstreamConf {
    fn validate(&self, key: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.peers.is_empty() {
            problems.push(format!("{key}.peers: at least one peer is required"));
        }
        let mut seen = BTreeSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            if let Err(e) = check_host_port(&peer.addr) {
                problems.push(format!("{key}.peers[{i}]: {e}"));
            } else if !seen.insert(&peer.addr) {
                problems.push(format!("{key}.peers[{i}]: {:?} is listed twice", peer.addr));
            }
            if peer.weight == 0 {
                problems.push(format!("{key}.peers[{i}].weight: must be at least 1"));
            }
        }
        if let Some(host) = &self.host {
            if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
                problems.push(format!("{key}.host: {host:?} is not a valid Host header value"));
            }
        }
        if let Some(hc) = &self.health_check {
            let key = format!("{key}.health_check");
            if !hc.path.starts_with('/') || !hc.path.bytes().all(|b| b.is_ascii_graphic()) {
                problems.push(format!(
                    "{key}.path: {:?} must be a path starting with '/'",
                    hc.path
                ));
            }
            for (name, n) in [
                ("healthy_after", hc.healthy_after),
                ("unhealthy_after", hc.unhealthy_after),
            ] {
                if n == 0 {
                    problems.push(format!("{key}.{name}: must be at least 1"));
                }
            }
            if hc.expect_status.is_empty() {
                problems.push(format!("{key}.expect_status: at least one status is required"));
            }
            for (i, s) in hc.expect_status.iter().enumerate() {
                if !(100..=599).contains(s) {
                    problems.push(format!("{key}.expect_status[{i}]: {s} is not an HTTP status"));
                }
            }
        }
        if let Some(tls) = &self.tls {
            let key = format!("{key}.tls");
            if tls.sni.is_empty() {
                problems.push(format!(
                    "{key}.sni: must not be empty (an empty SNI turns certificate verification off)"
                ));
            }
            for (name, file) in [
                ("ca_file", &tls.ca_file),
                ("client_cert", &tls.client_cert),
                ("client_key", &tls.client_key),
            ] {
                if let Some(f) = file {
                    if let Err(e) = std::fs::metadata(f) {
                        problems.push(format!("{key}.{name}: cannot read {f:?}: {e}"));
                    }
                }
            }
            if tls.client_cert.is_some() != tls.client_key.is_some() {
                problems.push(format!("{key}: client_cert and client_key go together"));
            }
        }
        for (name, value) in &self.headers {
            let key = format!("{key}.headers.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(format!("{key}: not a valid header name"));
            }
            if let Err(e) = expand_env(value) {
                problems.push(format!("{key}: {e}"));
            }
        }
        problems
    }
}

/// Expands `${VAR}` from the environment. An unset variable is an error; the expanded value
/// is a secret and never appears in an error message.
pub fn expand_env(template: &str) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or("unterminated ${...}")?;
        let var = &after[..end];
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("${{{var}}} is not a valid variable name"));
        }
        let value = std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if http::HeaderValue::from_str(&out).is_err() {
        return Err("the value (after expansion) is not a valid header value".to_string());
    }
    Ok(out)
}

/// `host:port` with a non-empty host and a port from 1 to 65535 (IPv6 in brackets).
fn check_host_port(addr: &str) -> Result<(), String> {
    let bad = || format!("{addr:?} is not host:port");
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// A path template: starts with `/`, holds only plain path characters, uses `{id}` (exactly
/// once in a route path, at least once in a rewrite), and has no empty or dot segments, so
/// nothing but a clean rewritten path can ever be produced from it.
fn check_template(t: &str, exactly_once: bool) -> Result<(), String> {
    let uses = t.matches("{id}").count();
    if uses == 0 {
        return Err(format!("{t:?} does not use {{id}}"));
    }
    if exactly_once && uses > 1 {
        return Err(format!("{t:?} uses {{id}} more than once"));
    }
    if !t.starts_with('/') {
        return Err(format!("{t:?} must start with '/'"));
    }
    let literal = t.replace("{id}", "x");
    if let Some(c) = literal
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/-._~".contains(*c)))
    {
        return Err(format!("{t:?} has the character {c:?}; only letters, digits, '/', '-', '.', '_', '~' and {{id}} are allowed"));
    }
    if literal.contains("//") || literal.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{t:?} has an empty, '.' or '..' segment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
threads: 2
gateway:
  listen: ["127.0.0.1:8080"]
  upstreams:
    assets:
      peers: ["127.0.0.1:9001", {addr: "127.0.0.1:9002", weight: 2}]
      host: assets.internal
  routes:
    - path: /content/v1/assets/{id}
      upstream: assets
      rewrite: /v1/assets/{id}
"#;

    fn problems(yaml: &str) -> String {
        match Config::from_yaml(yaml) {
            Ok(_) => panic!("expected the config to be refused"),
            Err(p) => p.join("\n"),
        }
    }

    #[test]
    fn valid_config_loads() {
        let c = Config::from_yaml(VALID).unwrap();
        assert_eq!(c.server.threads, 2);
        let up = &c.gateway.upstreams["assets"];
        assert_eq!(
            up.peers[1],
            PeerConf {
                addr: "127.0.0.1:9002".into(),
                weight: 2
            }
        );
        assert_eq!(up.connect_timeout, Dur(Duration::from_secs(1)));
        assert_eq!(
            c.gateway.downstream.keepalive_timeout,
            Dur(Duration::from_secs(60))
        );
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let p = problems(&VALID.replace("threads: 2", "thread: 4"));
        assert!(p.contains("thread: unknown key"), "{p}");
    }

    #[test]
    fn unknown_nested_key_is_named_with_its_path() {
        let p = problems(&VALID.replace("host: assets.internal", "hots: assets.internal"));
        assert!(p.contains("gateway.upstreams.assets"), "{p}");
        assert!(p.contains("unknown field `hots`"), "{p}");
    }

    #[test]
    fn pingora_key_type_errors_name_the_key() {
        let p = problems(&VALID.replace("threads: 2", "threads: two"));
        assert!(p.starts_with("threads: invalid type"), "{p}");
    }

    #[test]
    fn unknown_upstream_reference() {
        let p = problems(&VALID.replace("upstream: assets", "upstream: asets"));
        assert!(
            p.contains("gateway.routes[0].upstream: unknown upstream \"asets\" (defined: assets)"),
            "{p}"
        );
    }

    #[test]
    fn empty_peer_list() {
        let p = problems(&VALID.replace(r#"["127.0.0.1:9001", {addr: "127.0.0.1:9002", weight: 2}]"#, "[]"));
        assert!(
            p.contains("gateway.upstreams.assets.peers: at least one peer is required"),
            "{p}"
        );
    }

    #[test]
    fn peer_not_host_port() {
        let p = problems(&VALID.replace("127.0.0.1:9001", "127.0.0.1"));
        assert!(
            p.contains("gateway.upstreams.assets.peers[0]: \"127.0.0.1\" is not host:port"),
            "{p}"
        );
        let p = problems(&VALID.replace("127.0.0.1:9001", "assets:http"));
        assert!(p.contains("peers[0]: \"assets:http\" is not host:port"), "{p}");
    }

    #[test]
    fn rewrite_without_id() {
        let p = problems(&VALID.replace("rewrite: /v1/assets/{id}", "rewrite: /v1/assets/"));
        assert!(
            p.contains("gateway.routes[0].rewrite: \"/v1/assets/\" does not use {id}"),
            "{p}"
        );
    }

    #[test]
    fn duplicate_route_paths() {
        let yaml = format!(
            "{VALID}    - path: /content/v1/assets/{{id}}\n      upstream: assets\n      rewrite: /x/{{id}}\n"
        );
        let p = problems(&yaml);
        assert!(p.contains("gateway.routes[1].path: \"/content/v1/assets/{id}\" is already the path of gateway.routes[0]"), "{p}");
    }

    #[test]
    fn durations_are_typed() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").unwrap_err().contains("greater than zero"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("10").is_err());
        let p = problems(&VALID.replace("host: assets.internal", "connect_timeout: 10"));
        assert!(p.contains("gateway.upstreams.assets.connect_timeout"), "{p}");
    }

    #[test]
    fn operations_keys() {
        let yaml = VALID.replace(
            "  listen: [\"127.0.0.1:8080\"]\n",
            "  listen: [\"127.0.0.1:8080\"]\n  admin: 127.0.0.1:9090\n  server_timing: false\n  access_log: {format: json}\n",
        );
        let c = Config::from_yaml(&yaml).unwrap();
        assert_eq!(c.gateway.admin.as_deref(), Some("127.0.0.1:9090"));
        assert!(!c.gateway.server_timing);
        assert!(c.gateway.access_log.enabled);
        assert_eq!(c.gateway.access_log.format, AccessLogFormat::Json);
        let p = problems(&VALID.replace("  listen:", "  admin: localhost\n  listen:"));
        assert!(
            p.contains("gateway.admin: \"localhost\" is not an IP:port address"),
            "{p}"
        );
        let p = problems(&VALID.replace("  listen:", "  access_log: {format: xml}\n  listen:"));
        assert!(
            p.contains("gateway.access_log.format: unknown variant `xml`"),
            "{p}"
        );
        let p = problems(
            &VALID
                .replace("    assets:", "    \"as sets\":")
                .replace("upstream: assets", "upstream: as sets"),
        );
        assert!(
            p.contains("gateway.upstreams.as sets: upstream names use only"),
            "{p}"
        );
    }

    #[test]
    fn sizes_are_typed() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2 KB"), Ok(2000));
        assert!(parse_size("64k").is_err());
        assert!(parse_size("-1KiB").is_err());
        let yaml = VALID.replace(
            "  upstreams:",
            "  downstream: {max_uri_bytes: 4KiB, max_header_bytes: 16384, max_headers: 50, header_timeout: 5s}\n  upstreams:",
        );
        let d = Config::from_yaml(&yaml).unwrap().gateway.downstream;
        assert_eq!(
            (d.max_uri_bytes.0, d.max_header_bytes.0, d.max_headers),
            (4096, 16384, 50)
        );
        let p = problems(&VALID.replace(
            "  upstreams:",
            "  downstream: {max_uri_bytes: 64KiB}\n  upstreams:",
        ));
        assert!(
            p.contains("gateway.downstream.max_uri_bytes: must be at most 65534 bytes"),
            "{p}"
        );
        let p = problems(&VALID.replace("  upstreams:", "  downstream: {max_uri_bytes: 4Kb}\n  upstreams:"));
        assert!(
            p.contains("gateway.downstream.max_uri_bytes: invalid size \"4Kb\""),
            "{p}"
        );
    }

    #[test]
    fn missing_gateway_section() {
        let p = problems("threads: 1\n");
        assert!(p.contains("gateway: missing section"), "{p}");
    }

    #[test]
    fn several_problems_are_all_reported() {
        let p = problems(
            &VALID
                .replace("upstream: assets", "upstream: nope")
                .replace("127.0.0.1:8080", "localhost"),
        );
        assert!(p.contains("gateway.listen[0]"), "{p}");
        assert!(p.contains("gateway.routes[0].upstream"), "{p}");
    }

    fn with_upstream_keys(extra: &str) -> String {
        VALID.replace(
            "      host: assets.internal\n",
            &format!("      host: assets.internal\n{extra}"),
        )
    }

    #[test]
    fn resilience_keys_load() {
        std::env::set_var("AG_TEST_TOKEN", "s3cret");
        let yaml = with_upstream_keys(
            "      selection: consistent\n      retries: 1\n      health_check: {path: /healthz, interval: 2s, timeout: 1s, healthy_after: 2, unhealthy_after: 3, expect_status: [200, 204]}\n      passive_ejection: {failures: 5, cooldown: 30s}\n      headers:\n        Authorization: \"Bearer ${AG_TEST_TOKEN}\"\n",
        );
        let c = Config::from_yaml(&yaml).unwrap();
        let up = &c.gateway.upstreams["assets"];
        assert_eq!(up.selection, Selection::Consistent);
        let hc = up.health_check.as_ref().unwrap();
        assert_eq!((hc.healthy_after, hc.unhealthy_after), (2, 3));
        assert_eq!(hc.expect_status, vec![200, 204]);
        assert_eq!(up.passive_ejection.failures, 5);
        assert_eq!(expand_env(&up.headers["Authorization"]).unwrap(), "Bearer s3cret");
    }

    #[test]
    fn resilience_keys_are_validated() {
        let cases = [
            ("      selection: random\n", "gateway.upstreams.assets.selection: unknown variant `random`"),
            ("      connect_timeout: 0s\n", "gateway.upstreams.assets.connect_timeout: invalid duration \"0s\": must be greater than zero"),
            ("      read_timeout: -5s\n", "gateway.upstreams.assets.read_timeout: invalid duration"),
            ("      health_check: {path: /healthz, intervl: 2s}\n", "gateway.upstreams.assets.health_check.intervl: unknown field"),
            ("      health_check: {path: healthz, healthy_after: 0}\n", "gateway.upstreams.assets.health_check.healthy_after: must be at least 1"),
            ("      health_check: {path: healthz}\n", "gateway.upstreams.assets.health_check.path: \"healthz\" must be a path"),
            ("      tls: {ca_file: /etc/ssl/x.pem}\n", "gateway.upstreams.assets.tls: missing field `sni`"),
            ("      tls: {sni: \"\"}\n", "gateway.upstreams.assets.tls.sni: must not be empty"),
            ("      tls: {sni: a.test, ca_file: /nonexistent/ca.pem}\n", "gateway.upstreams.assets.tls.ca_file: cannot read \"/nonexistent/ca.pem\""),
            ("      tls: {sni: a.test, client_cert: /etc/hostname}\n", "gateway.upstreams.assets.tls: client_cert and client_key go together"),
            ("      headers: {Authorization: \"Bearer ${AG_UNSET_VARIABLE}\"}\n", "gateway.upstreams.assets.headers.Authorization: environment variable AG_UNSET_VARIABLE is not set"),
            ("      headers: {\"bad header\": x}\n", "gateway.upstreams.assets.headers.bad header: not a valid header name"),
        ];
        for (extra, expected) in cases {
            let p = problems(&with_upstream_keys(extra));
            assert!(
                p.contains(expected),
                "for {extra:?} expected {expected:?} in:\n{p}"
            );
        }
        let p = problems(&VALID.replace("weight: 2", "weight: 0"));
        assert!(
            p.contains("gateway.upstreams.assets.peers[1].weight: must be at least 1"),
            "{p}"
        );
        let p = problems(&VALID.replace("weight: 2", "weight: -1"));
        assert!(p.contains("gateway.upstreams.assets.peers[1].weight"), "{p}");
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        std::env::set_var("AG_TEST_BAD_SECRET", "line\nbreak-secret");
        let p = problems(&with_upstream_keys(
            "      headers: {X-Token: \"${AG_TEST_BAD_SECRET}\"}\n",
        ));
        assert!(p.contains("gateway.upstreams.assets.headers.X-Token: the value (after expansion) is not a valid header value"), "{p}");
        assert!(!p.contains("break-secret"), "{p}");
    }

    #[test]
    fn bad_templates() {
        assert!(check_template("/a/{id}/{id}", true).is_err());
        assert!(check_template("a/{id}", true).is_err());
        assert!(check_template("/a/%2F/{id}", true).is_err());
        assert!(check_template("/a/../{id}", true).is_err());
        assert!(check_template("/a//{id}", true).is_err());
        assert!(check_template("/a/{id}?x=1", false).is_err());
        assert!(check_template("/content/v1/assets/{id}", true).is_ok());
        assert!(check_template("/v1/{id}/raw/{id}", false).is_ok());
    }
}
