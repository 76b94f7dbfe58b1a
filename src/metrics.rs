//! Prometheus metrics. Every metric is registered through `pingora_prometheus::prometheus`,
//! the same crate (and so the same default registry) the admin listener gathers from: a
//! different `prometheus` version would register into another registry and the metrics would
//! silently never appear.
//!
//! Label values are resolved once at start-up into plain counters and histograms, so the
//! request path only touches atomics. Gauges of live state (requests in flight, peer health)
//! are read off that state when scraped.

use pingora_prometheus::prometheus::{
    self, exponential_buckets, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The metric families, registered once per process.
struct Families {
    requests: IntCounterVec,
    duration: HistogramVec,
    body_bytes: IntCounterVec,
    ttfb: HistogramVec,
    connections: IntCounterVec,
    failovers: IntCounterVec,
    retries: IntCounterVec,
    connect_failures: IntCounterVec,
    active: IntGauge,
    peer_healthy: IntGaugeVec,
    upstream_peers: IntGaugeVec,
    dns_resolutions: IntCounterVec,
    refusals: IntCounterVec,
}

static FAMILIES: OnceLock<Families> = OnceLock::new();

/// The metric families, created and registered once per process (at start-up, when the
/// gateway is built).
fn families() -> Result<&'static Families, String> {
    if let Some(f) = FAMILIES.get() {
        return Ok(f);
    }
    let f = Families::new().map_err(|e| format!("metrics: {e}"))?;
    Ok(FAMILIES.get_or_init(|| f))
}

impl Families {
    fn new() -> prometheus::Result<Families> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            register(Box::new(c.clone()));
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            register(Box::new(h.clone()));
            Ok::<_, prometheus::Error>(h)
        };
        let seconds = exponential_buckets(0.0005, 2.5, 14)?; // 0.5 ms .. ~74 s
        let active = IntGauge::new("asset_gateway_active_requests", "Requests being processed now.")?;
        register(Box::new(active.clone()));
        let peer_healthy = IntGaugeVec::new(
            Opts::new(
                "asset_gateway_peer_healthy",
                "1 if the peer can take requests (healthy and not ejected), else 0.",
            ),
            &["upstream", "peer"],
        )?;
        register(Box::new(peer_healthy.clone()));
        let upstream_peers = IntGaugeVec::new(
            Opts::new(
                "asset_gateway_upstream_peers",
                "Peers currently known for the upstream (configured, or last resolved from DNS).",
            ),
            &["upstream"],
        )?;
        register(Box::new(upstream_peers.clone()));
        Ok(Families {
            requests: counter(
                "asset_gateway_requests_total",
                "Requests by route and response status class (none: no response could be sent).",
                &["route", "status_class"],
            )?,
            duration: histogram(
                "asset_gateway_request_duration_seconds",
                "Time from the request head to the end of the response.",
                &["route"],
                seconds.clone(),
            )?,
            body_bytes: counter(
                "asset_gateway_response_body_bytes_total",
                "Response body bytes sent to clients.",
                &["route"],
            )?,
            ttfb: histogram(
                "asset_gateway_upstream_ttfb_seconds",
                "Time from starting the upstream attempt (connect or pooled connection) to the response header.",
                &["upstream"],
                seconds,
            )?,
            connections: counter(
                "asset_gateway_upstream_connections_total",
                "Upstream connections used, by whether they came from the pool.",
                &["upstream", "reused"],
            )?,
            failovers: counter(
                "asset_gateway_upstream_failovers_total",
                "Attempts moved to another peer after a connect failure.",
                &["upstream"],
            )?,
            retries: counter(
                "asset_gateway_upstream_retries_total",
                "Attempts retried after a failure on an established (stale pooled) connection.",
                &["upstream"],
            )?,
            connect_failures: counter(
                "asset_gateway_upstream_connect_failures_total",
                "Failed connection attempts to upstream peers.",
                &["upstream", "peer"],
            )?,
            dns_resolutions: counter(
                "asset_gateway_dns_resolutions_total",
                "DNS discovery polls by outcome: ok (peers found), empty (no A/AAAA record; the last peers are kept), error (lookup failed; the last peers are kept).",
                &["upstream", "result"],
            )?,
            refusals: counter(
                "asset_gateway_refusals_total",
                "Requests refused by access control, by route and reason (missing-credentials, url-*, jwt-*, rate-limit, cors-refused).",
                &["route", "reason"],
            )?,
            active,
            peer_healthy,
            upstream_peers,
        })
    }
}

fn register(c: Box<dyn prometheus::core::Collector>) {
    if let Err(e) = prometheus::register(c) {
        log::warn!("metric registration failed: {e}");
    }
}

const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// One route's metrics ("unmatched" for requests no route took).
pub(crate) struct RouteMetrics {
    requests: [IntCounter; 6],
    duration: Histogram,
    body_bytes: IntCounter,
    /// Indexed like `access::Reason::ALL`.
    refusals: Vec<IntCounter>,
}

impl RouteMetrics {
    /// `refusal_reasons`: the `reason` labels of access-control refusals, in the order
    /// [`RouteMetrics::refused`] indexes them.
    pub(crate) fn new(route: &str, refusal_reasons: &[&str]) -> Result<RouteMetrics, String> {
        let f = families()?;
        Ok(RouteMetrics {
            requests: STATUS_CLASSES.map(|c| f.requests.with_label_values(&[route, c])),
            duration: f.duration.with_label_values(&[route]),
            body_bytes: f.body_bytes.with_label_values(&[route]),
            refusals: refusal_reasons
                .iter()
                .map(|r| f.refusals.with_label_values(&[route, r]))
                .collect(),
        })
    }

    /// Counts a request that access control refused, by the index of its reason.
    pub(crate) fn refused(&self, reason: usize) {
        if let Some(c) = self.refusals.get(reason) {
            c.inc();
        }
    }

    /// Records a finished request; `status` is `None` when no response was sent.
    pub(crate) fn record(&self, status: Option<u16>, duration: Duration, body_bytes: usize) {
        let class = match status {
            Some(s @ 100..=599) => (s / 100) as usize,
            _ => 0,
        };
        self.requests[class].inc();
        self.duration.observe(duration.as_secs_f64());
        self.body_bytes.inc_by(body_bytes as u64);
    }
}

/// One upstream's metrics.
pub(crate) struct UpstreamMetrics {
    name: String,
    ttfb: Histogram,
    new_connections: IntCounter,
    reused_connections: IntCounter,
    pub(crate) failovers: IntCounter,
    pub(crate) retries: IntCounter,
}

impl UpstreamMetrics {
    pub(crate) fn new(upstream: &str) -> Result<UpstreamMetrics, String> {
        let f = families()?;
        Ok(UpstreamMetrics {
            name: upstream.to_string(),
            ttfb: f.ttfb.with_label_values(&[upstream]),
            new_connections: f.connections.with_label_values(&[upstream, "false"]),
            reused_connections: f.connections.with_label_values(&[upstream, "true"]),
            failovers: f.failovers.with_label_values(&[upstream]),
            retries: f.retries.with_label_values(&[upstream]),
        })
    }

    pub(crate) fn connection(&self, reused: bool) {
        if reused {
            self.reused_connections.inc()
        } else {
            self.new_connections.inc()
        }
    }

    pub(crate) fn ttfb(&self, d: Duration) {
        self.ttfb.observe(d.as_secs_f64());
    }

    /// Connect failures are rare: the label lookup per failure is fine.
    pub(crate) fn connect_failure(&self, peer: &str) {
        if let Some(f) = FAMILIES.get() {
            f.connect_failures.with_label_values(&[&self.name, peer]).inc();
        }
    }
}

/// One DNS-discovered upstream's poll counters.
pub(crate) struct DnsMetrics {
    pub(crate) ok: IntCounter,
    pub(crate) empty: IntCounter,
    pub(crate) error: IntCounter,
}

impl DnsMetrics {
    pub(crate) fn new(upstream: &str) -> Result<DnsMetrics, String> {
        let f = families()?;
        let c = |result| f.dns_resolutions.with_label_values(&[upstream, result]);
        Ok(DnsMetrics {
            ok: c("ok"),
            empty: c("empty"),
            error: c("error"),
        })
    }
}

/// Drops a peer's per-peer series once DNS no longer lists it (pod addresses come and go;
/// keeping each one forever would grow the scrape without bound).
pub(crate) fn forget_peer(upstream: &str, peer: &str) {
    if let Some(f) = FAMILIES.get() {
        let _ = f.connect_failures.remove_label_values(&[upstream, peer]);
    }
}

/// Refreshes the gauges that are read off live state, then encodes every metric in the
/// Prometheus text format. `peer_health` is every current peer, `peer_counts` every upstream.
pub(crate) fn scrape<'a>(
    peer_health: impl Iterator<Item = (&'a str, &'a str, bool)>,
    peer_counts: impl Iterator<Item = (&'a str, usize)>,
) -> Vec<u8> {
    // Two scrapes at once must not see each other's reset gauges.
    static SCRAPING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SCRAPING.lock();
    if let Some((_, _, age)) = JWKS.get() {
        age.set(JwksMetrics::age().map_or(f64::INFINITY, |a| a.as_secs_f64()));
    }
    if let Some(f) = FAMILIES.get() {
        f.active.set(crate::shutdown::in_flight());
        for (upstream, count) in peer_counts {
            f.upstream_peers.with_label_values(&[upstream]).set(count as i64);
        }
        // Peers that DNS removed disappear from the scrape.
        f.peer_healthy.reset();
        for (upstream, peer, healthy) in peer_health {
            f.peer_healthy
                .with_label_values(&[upstream, peer])
                .set(healthy as i64);
        }
    }
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = prometheus::Encoder::encode(&encoder, &prometheus::gather(), &mut out) {
        log::warn!("metrics encoding failed: {e}");
    }
    out
}

/// The cache's metrics, registered once when a cache is configured.
pub(crate) struct CacheMetrics {
    /// `asset_gateway_cache_lookups_total{route, result}`: see [`LOOKUP_RESULTS`].
    lookups: IntCounterVec,
    pub(crate) hit_bytes: IntCounter,
    pub(crate) stored_bytes: IntCounter,
    pub(crate) evictions: IntCounter,
    pub(crate) memory_bytes: IntGauge,
    /// The disk tier (all at 0 without one).
    pub(crate) disk_bytes: IntGauge,
    pub(crate) disk_hits: IntCounter,
    pub(crate) disk_hit_bytes: IntCounter,
    pub(crate) disk_evictions: IntCounter,
    /// 1 while the disk tier stores objects, 0 while a full or failing disk stops it.
    pub(crate) disk_storing: IntGauge,
    pub(crate) disk_write_errors: IntCounterVec,
    pub(crate) disk_damaged: IntCounter,
}

static CACHE: OnceLock<CacheMetrics> = OnceLock::new();

impl CacheMetrics {
    pub(crate) fn get() -> Result<&'static CacheMetrics, String> {
        if let Some(m) = CACHE.get() {
            return Ok(m);
        }
        let m = Self::new().map_err(|e| format!("metrics: {e}"))?;
        Ok(CACHE.get_or_init(|| m))
    }

    fn new() -> prometheus::Result<CacheMetrics> {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)?;
            register(Box::new(c.clone()));
            Ok::<_, prometheus::Error>(c)
        };
        let lookups = IntCounterVec::new(
            Opts::new(
                "asset_gateway_cache_lookups_total",
                "Cache lookups of cacheable requests by route: hit (stored object), coalesced (joined another request's fill), miss, stale (a stale object revalidated or replaced), stale_while_revalidate and stale_if_error (a stale object served), pass (skipped the cache: the key's last answer could not be stored).",
            ),
            &["route", "result"],
        )?;
        register(Box::new(lookups.clone()));
        let memory_bytes = IntGauge::new(
            "asset_gateway_cache_memory_bytes",
            "Bytes charged against gateway.cache.memory by stored objects (body, header and index overhead).",
        )?;
        register(Box::new(memory_bytes.clone()));
        let disk_bytes = IntGauge::new(
            "asset_gateway_cache_disk_bytes",
            "Bytes of object files in gateway.cache.disk.path, charged against gateway.cache.disk.size.",
        )?;
        register(Box::new(disk_bytes.clone()));
        let disk_storing = IntGauge::new(
            "asset_gateway_cache_disk_storing",
            "1 while the disk tier stores objects; 0 while a full or failing disk stops it (responses are not affected).",
        )?;
        register(Box::new(disk_storing.clone()));
        let disk_write_errors = IntCounterVec::new(
            Opts::new(
                "asset_gateway_cache_disk_write_errors_total",
                "Disk tier writes that failed (kind: full for ENOSPC/EDQUOT, failing for the rest); each loses one object's disk copy.",
            ),
            &["kind"],
        )?;
        register(Box::new(disk_write_errors.clone()));
        Ok(CacheMetrics {
            lookups,
            hit_bytes: counter(
                "asset_gateway_cache_hit_bytes_total",
                "Body bytes served from the cache (stored objects and other requests' fills).",
            )?,
            stored_bytes: counter(
                "asset_gateway_cache_stored_bytes_total",
                "Body bytes of objects committed to the memory tier.",
            )?,
            evictions: counter(
                "asset_gateway_cache_evictions_total",
                "Objects evicted from the memory tier to stay within gateway.cache.memory.",
            )?,
            memory_bytes,
            disk_bytes,
            disk_hits: counter(
                "asset_gateway_cache_disk_hits_total",
                "Lookups answered from the disk tier (also counted as hit in asset_gateway_cache_lookups_total).",
            )?,
            disk_hit_bytes: counter(
                "asset_gateway_cache_disk_hit_bytes_total",
                "Body bytes read from the disk tier (also counted in asset_gateway_cache_hit_bytes_total).",
            )?,
            disk_evictions: counter(
                "asset_gateway_cache_disk_evictions_total",
                "Object files deleted to stay within gateway.cache.disk.size.",
            )?,
            disk_storing,
            disk_write_errors,
            disk_damaged: counter(
                "asset_gateway_cache_disk_damaged_total",
                "Disk objects found damaged (a block or a meta failing its checksum, a truncated file) and deleted.",
            )?,
        })
    }

    /// A cached route's lookup counters, each exported from the start (at 0), so rates work
    /// before the first one.
    pub(crate) fn route_lookups(&self, route: &str) -> RouteLookups {
        RouteLookups(LOOKUP_RESULTS.map(|result| self.lookups.with_label_values(&[route, result])))
    }
}

/// The `result` values of `asset_gateway_cache_lookups_total`.
const LOOKUP_RESULTS: [&str; 7] = [
    "hit",
    "coalesced",
    "miss",
    "stale",
    "stale_while_revalidate",
    "stale_if_error",
    "pass",
];

/// One cached route's `asset_gateway_cache_lookups_total` series, by result.
pub(crate) struct RouteLookups([IntCounter; 7]);

impl RouteLookups {
    /// `result` is one of [`LOOKUP_RESULTS`].
    pub(crate) fn record(&self, result: &str) {
        if let Some(i) = LOOKUP_RESULTS.iter().position(|r| *r == result) {
            self.0[i].inc();
        }
    }
}

static FORWARDED_FOR_UNPARSABLE: OnceLock<IntCounter> = OnceLock::new();

/// `asset_gateway_forwarded_for_unparsable_total` (with `client_ip.trusted_proxies`).
pub(crate) fn forwarded_for_unparsable() -> Result<IntCounter, String> {
    if let Some(c) = FORWARDED_FOR_UNPARSABLE.get() {
        return Ok(c.clone());
    }
    let c = IntCounter::new(
        "asset_gateway_forwarded_for_unparsable_total",
        "X-Forwarded-For entries behind trusted proxies that are not an address (with or without a port): the walk stops there and the last trusted hop is the client. Counted each time the header is read (for a rate limit, for a cached route's upstream X-Forwarded-For).",
    )
    .map_err(|e| format!("metrics: {e}"))?;
    let c = FORWARDED_FOR_UNPARSABLE.get_or_init(|| {
        register(Box::new(c.clone()));
        c
    });
    Ok(c.clone())
}

/// The JWK set's refreshes and size (with `gateway.auth.jwt`).
pub(crate) struct JwksMetrics {
    ok: IntCounter,
    error: IntCounter,
    keys: IntGauge,
}

static JWKS: OnceLock<(IntCounterVec, IntGauge, Gauge)> = OnceLock::new();
/// When the keys in use were loaded (Unix milliseconds; 0: never): `asset_gateway_jwks_age_seconds`
/// is computed from it at each scrape.
static JWKS_LOADED_MS: AtomicU64 = AtomicU64::new(0);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl JwksMetrics {
    pub(crate) fn get() -> Result<JwksMetrics, String> {
        let (refreshes, keys, _) = match JWKS.get() {
            Some(m) => m,
            None => {
                let made = Self::families().map_err(|e| format!("metrics: {e}"))?;
                JWKS.get_or_init(|| made)
            }
        };
        Ok(JwksMetrics {
            ok: refreshes.with_label_values(&["ok"]),
            error: refreshes.with_label_values(&["error"]),
            keys: keys.clone(),
        })
    }

    /// The keys in use were (re)loaded just now.
    pub(crate) fn loaded(&self) {
        JWKS_LOADED_MS.store(unix_ms(), Ordering::Relaxed);
    }

    /// How old the keys in use are (`None`: none was ever loaded).
    pub(crate) fn age() -> Option<Duration> {
        match JWKS_LOADED_MS.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(unix_ms().saturating_sub(at))),
        }
    }

    fn families() -> prometheus::Result<(IntCounterVec, IntGauge, Gauge)> {
        let refreshes = IntCounterVec::new(
            Opts::new(
                "asset_gateway_jwks_refreshes_total",
                "JWK set reloads (file) or fetches (jwks_url) by result; on error the last good keys are kept.",
            ),
            &["result"],
        )?;
        register(Box::new(refreshes.clone()));
        let keys = IntGauge::new(
            "asset_gateway_jwks_keys",
            "Usable keys in the JWK set bearer tokens are checked against.",
        )?;
        register(Box::new(keys.clone()));
        let age = Gauge::new(
            "asset_gateway_jwks_age_seconds",
            "Seconds since the JWK set in use was loaded (+Inf before the first load). It grows while refreshes fail (the last good keys are kept): alert when it exceeds a few jwks_refresh periods.",
        )?;
        register(Box::new(age.clone()));
        Ok((refreshes, keys, age))
    }

    pub(crate) fn refreshed(&self, ok: bool) {
        if ok {
            self.ok.inc()
        } else {
            self.error.inc()
        }
    }

    pub(crate) fn keys(&self, n: usize) {
        self.keys.set(n as i64);
    }
}
