//! The JWK set the bearer tokens are checked against, and the background service that keeps it
//! fresh: the file is read again, or the URL fetched (Pingora's HTTP connector, plain or TLS
//! with the system roots), every `jwks_refresh`. A failed refresh keeps the last good keys
//! (warned about with their age, again at most once a minute while it lasts, counted in
//! `asset_gateway_jwks_refreshes_total`; `asset_gateway_jwks_age_seconds` shows how old the
//! keys in use are). With
//! a URL, the first fetch runs as the gateway starts; until it succeeds, tokens are refused.
//! A token verified once is remembered (`verified`) until its `exp`; a reload that removes or
//! changes a key makes every remembered token unknown again.

use super::verified::VerifiedTokens;
use crate::config::{JwksSource, JwtSettings};
use crate::jwt::{KeySet, Rules, TokenError};
use crate::metrics::JwksMetrics;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The largest JWK set accepted (a set of a few keys is a few KiB).
const MAX_JWKS_BYTES: usize = 1 << 20;
/// The longest one fetch of a `jwks_url` may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A refresh that keeps failing is warned about again after this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct Jwt {
    keys: RwLock<Option<Arc<KeySet>>>,
    rules: Rules,
    source: JwksSource,
    refresh: Duration,
    pub(crate) subject_header: Option<HeaderName>,
    metrics: JwksMetrics,
    /// Tokens already verified (see `verified`).
    verified: VerifiedTokens,
}

impl Jwt {
    pub(crate) fn new(s: &JwtSettings) -> Result<Arc<Jwt>, String> {
        let metrics = JwksMetrics::get()?;
        let initial = s.initial.clone();
        metrics.keys(initial.as_ref().map_or(0, |k| k.len()));
        if initial.is_some() {
            metrics.loaded();
        }
        Ok(Arc::new(Jwt {
            keys: RwLock::new(initial),
            rules: s.rules.clone(),
            source: s.source.clone(),
            refresh: s.refresh,
            subject_header: s.subject_header.clone(),
            metrics,
            verified: VerifiedTokens::new(),
        }))
    }

    /// Checks a token (`now`: Unix seconds); its subject, as the upstream gets it. A token
    /// verified before, in this key epoch and before its `exp`, is not verified again.
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<Option<HeaderValue>, TokenError> {
        if let Some(subject) = self.verified.get(token, now) {
            return Ok(subject);
        }
        // Before the keys: a refresh that removes this token's key after this point makes
        // the entry stored below stale.
        let epoch = self.verified.epoch();
        let keys = self.keys.read().map(|k| k.clone()).unwrap_or(None);
        let claims = keys.ok_or(TokenError::UnknownKey)?.verify(token)?;
        let subject = claims.sub.and_then(|s| HeaderValue::from_str(&s).ok());
        if let Some(exp) = claims.exp.filter(|e| e.is_finite() && *e >= 0.0) {
            self.verified
                .insert(token, epoch, exp as u64, subject.clone(), now);
        }
        Ok(subject)
    }

    /// Reads or fetches the set once; on success it replaces the keys.
    async fn reload(&self) -> Result<usize, String> {
        let text = match &self.source {
            JwksSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read {path:?}: {e}"))?,
            JwksSource::Url(url) => tokio::time::timeout(FETCH_TIMEOUT, fetch(url))
                .await
                .map_err(|_| format!("{url}: no complete answer within {FETCH_TIMEOUT:?}"))??,
        };
        let (set, notes) = KeySet::parse(&text, &self.rules)?;
        for n in notes {
            log::debug!("JWKS: {n}");
        }
        let n = set.len();
        let Ok(mut keys) = self.keys.write() else {
            return Err("the key set's lock is poisoned".to_string());
        };
        let dropped = keys.as_ref().is_some_and(|old| set.drops_any_of(old));
        *keys = Some(Arc::new(set));
        drop(keys);
        if dropped {
            // A removed or changed key: tokens verified with it must be verified again.
            self.verified.new_epoch();
        }
        Ok(n)
    }
}

/// Keeps a [`Jwt`]'s keys fresh (a Pingora background service).
pub(crate) struct JwksRefresh(pub Arc<Jwt>);

#[async_trait]
impl BackgroundService for JwksRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let jwt = &self.0;
        // With a file the keys were read at start; with a URL nothing is known yet.
        let mut wait = match jwt.source {
            JwksSource::File(_) => jwt.refresh,
            JwksSource::Url(_) => Duration::ZERO,
        };
        let mut last_ok: Option<bool> = None;
        let mut last_warning: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = jwt.refresh;
            let result = jwt.reload().await;
            jwt.metrics.refreshed(result.is_ok());
            match result {
                Ok(n) => {
                    jwt.metrics.keys(n);
                    jwt.metrics.loaded();
                    if last_ok != Some(true) {
                        log::info!("JWKS loaded: {n} usable key(s)");
                    }
                    last_ok = Some(true);
                    last_warning = None;
                }
                Err(e) => {
                    // Repeated while it lasts (at most once a minute): keys kept for hours
                    // after a key rotation at the issuer would refuse every new token.
                    if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        let kept = match JwksMetrics::age() {
                            Some(age) => {
                                format!("keeping the last good keys, loaded {} s ago", age.as_secs())
                            }
                            None => "no keys loaded yet: every token is refused".to_string(),
                        };
                        log::warn!("JWKS refresh failed, {kept}: {e}");
                        last_warning = Some(Instant::now());
                    }
                    last_ok = Some(false);
                }
            }
        }
    }
}

/// GET of a JWK set, at most [`MAX_JWKS_BYTES`].
async fn fetch(url: &http::Uri) -> Result<String, String> {
    let err = |e: &dyn std::fmt::Display| format!("{url}: {e}");
    let tls = url.scheme_str() == Some("https");
    let host = url.host().ok_or_else(|| err(&"no host"))?;
    let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| err(&e))?
        .next()
        .ok_or_else(|| err(&"the name has no address"))?;
    let mut peer = HttpPeer::new(addr, tls, host.to_string());
    peer.options.connection_timeout = Some(FETCH_TIMEOUT);
    peer.options.read_timeout = Some(FETCH_TIMEOUT);
    peer.options.write_timeout = Some(FETCH_TIMEOUT);
    let connector = Connector::new(None);
    let (mut session, _) = connector.get_http_session(&peer).await.map_err(|e| err(&e))?;
    let target = url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build("GET", target.as_bytes(), None).map_err(|e| err(&e))?;
    let authority = url.authority().map_or(host, |a| a.as_str());
    req.insert_header("host", authority).map_err(|e| err(&e))?;
    req.insert_header("accept", "application/json")
        .map_err(|e| err(&e))?;
    req.insert_header("connection", "close").map_err(|e| err(&e))?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| err(&e))?;
    session.finish_request_body().await.map_err(|e| err(&e))?;
    session.read_response_header().await.map_err(|e| err(&e))?;
    let status = session.response_header().map_or(0, |r| r.status.as_u16());
    if status != 200 {
        return Err(err(&format!("status {status}")));
    }
    // A JWK set is a small document parsed whole; this is not a proxied body.
    let mut body = Vec::new();
    while let Some(chunk) = session.read_response_body().await.map_err(|e| err(&e))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(err(&"larger than 1 MiB"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| err(&"not UTF-8"))
}
