//! `gateway.admin_token`, `gateway.auth` (signed URLs and JWT) and `routes[].auth`: the keys as
//! the file writes them, their checks, and the settings the running gateway reads. Secrets come
//! from `${VAR}` and never appear in an error message.

use super::units::Dur;
use crate::jwt::{KeySet, Rules};
use http::HeaderName;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `gateway.auth`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthFile {
    #[serde(default)]
    pub signed_url: Option<SignedUrlFile>,
    #[serde(default)]
    pub jwt: Option<JwtFile>,
}

/// `gateway.auth.signed_url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignedUrlFile {
    /// Key id -> secret (`${VAR}`), at least 32 bytes each.
    pub keys: BTreeMap<String, String>,
    #[serde(default = "seven_days")]
    pub max_ttl: Dur,
}

/// `gateway.auth.jwt`: the keys from a file (`jwks`) or a URL (`jwks_url`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtFile {
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "five_minutes")]
    pub jwks_refresh: Dur,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default = "thirty_seconds")]
    pub leeway: Dur,
    /// The upstream gets the token's `sub` in this header (absent: nothing).
    #[serde(default)]
    pub subject_header: Option<String>,
}

fn seven_days() -> Dur {
    Dur(Duration::from_secs(7 * 24 * 3600))
}
fn five_minutes() -> Dur {
    Dur(Duration::from_secs(300))
}
fn thirty_seconds() -> Dur {
    Dur(Duration::from_secs(30))
}

/// `routes[].auth`: any one of the listed methods admits a request.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AuthMethod {
    SignedUrl,
    Jwt,
}

/// The query parameters of a URL signature (`access::signed_url`): checked, then removed, so
/// never forwarded and never part of the cache key.
pub(crate) const SIGNATURE_PARAMS: [&str; 3] = ["exp", "kid", "sig"];

/// A signed URL secret must be at least this long (HMAC-SHA256's block is 64 bytes; 32 is
/// the hash's own strength).
const MIN_SECRET: usize = 32;
/// The admin token must be at least this long.
const MIN_ADMIN_TOKEN: usize = 16;

/// `gateway.auth`, checked.
#[derive(Debug, Default)]
pub(crate) struct AuthSettings {
    pub signed_url: Option<SignedUrlSettings>,
    pub jwt: Option<JwtSettings>,
}

#[derive(Debug, Clone)]
pub(crate) struct SignedUrlSettings {
    /// Key id and secret, in the order of the ids.
    pub keys: Vec<(String, Vec<u8>)>,
    pub max_ttl: Duration,
}

#[derive(Debug)]
pub(crate) struct JwtSettings {
    pub source: JwksSource,
    pub refresh: Duration,
    pub rules: Rules,
    pub subject_header: Option<HeaderName>,
    /// The keys read at start (a `jwks` file); `None` for a URL, fetched once the gateway runs.
    pub initial: Option<std::sync::Arc<KeySet>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JwksSource {
    File(String),
    /// `http://` or `https://` (system roots).
    Url(http::Uri),
}

/// `gateway.admin_token`: expanded, at least 16 bytes.
pub(super) fn admin_token(token: Option<&String>, p: &mut Vec<String>) -> Option<Vec<u8>> {
    let token = token?;
    match super::env::expand_env(token) {
        Ok(v) if v.len() >= MIN_ADMIN_TOKEN => Some(v.as_bytes().to_vec()),
        Ok(_) => {
            p.push(format!(
                "gateway.admin_token: must be at least {MIN_ADMIN_TOKEN} bytes (after ${{VAR}} expansion)"
            ));
            None
        }
        Err(e) => {
            p.push(format!("gateway.admin_token: {e}"));
            None
        }
    }
}

/// `gateway.auth`, checked; problems go to `p`.
pub(super) fn compile(a: &AuthFile, p: &mut Vec<String>) -> AuthSettings {
    AuthSettings {
        signed_url: a.signed_url.as_ref().and_then(|s| signed_url(s, p)),
        jwt: a.jwt.as_ref().and_then(|j| jwt(j, p)),
    }
}

fn signed_url(s: &SignedUrlFile, p: &mut Vec<String>) -> Option<SignedUrlSettings> {
    let before = p.len();
    if s.keys.is_empty() {
        p.push("gateway.auth.signed_url.keys: at least one key id and secret".to_string());
    }
    let mut keys = Vec::new();
    for (kid, template) in &s.keys {
        let key = format!("gateway.auth.signed_url.keys.{kid}");
        if kid.is_empty()
            || !kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            p.push(format!(
                "{key}: key ids use only letters, digits, '-', '_' and '.'"
            ));
            continue;
        }
        match super::env::expand_env(template) {
            Ok(v) if v.len() >= MIN_SECRET => keys.push((kid.clone(), v.as_bytes().to_vec())),
            Ok(_) => p.push(format!(
                "{key}: the secret must be at least {MIN_SECRET} bytes (after ${{VAR}} expansion)"
            )),
            Err(e) => p.push(format!("{key}: {e}")),
        }
    }
    (p.len() == before).then_some(SignedUrlSettings {
        keys,
        max_ttl: s.max_ttl.0,
    })
}

fn jwt(j: &JwtFile, p: &mut Vec<String>) -> Option<JwtSettings> {
    const KEY: &str = "gateway.auth.jwt";
    let before = p.len();
    let rules = Rules {
        issuer: j.issuer.clone(),
        audience: j.audience.clone(),
        leeway: j.leeway.0,
    };
    let subject_header = j.subject_header.as_ref().and_then(|h| {
        let name = HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| p.push(format!("{KEY}.subject_header: {h:?} is not a header name")))
            .ok()?;
        // Not a header the gateway sets for its own purpose, nor the credential itself.
        if crate::headers::GATEWAY_OWNED.contains(&name) || name == http::header::AUTHORIZATION {
            p.push(format!(
                "{KEY}.subject_header: {h:?} is a header the gateway already uses; pick one of its own (e.g. X-Auth-Subject)"
            ));
            return None;
        }
        Some(name)
    });
    if j.jwks_refresh.0 < Duration::from_secs(1) {
        p.push(format!("{KEY}.jwks_refresh: must be at least 1s"));
    }
    let (source, initial) = match (&j.jwks, &j.jwks_url) {
        (Some(_), Some(_)) => {
            p.push(format!("{KEY}: jwks and jwks_url exclude each other"));
            return None;
        }
        (None, None) => {
            p.push(format!("{KEY}: jwks (a file) or jwks_url is required"));
            return None;
        }
        (Some(path), None) => {
            let keys = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {path:?}: {e}"))
                .and_then(|text| KeySet::parse(&text, &rules).map_err(|e| format!("{path:?}: {e}")));
            match keys {
                Ok((set, notes)) => {
                    for n in notes {
                        log::warn!("{KEY}.jwks: {path:?}: {n}");
                    }
                    (JwksSource::File(path.clone()), Some(std::sync::Arc::new(set)))
                }
                Err(e) => {
                    p.push(format!("{KEY}.jwks: {e}"));
                    return None;
                }
            }
        }
        (None, Some(url)) => match url.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some_and(|h| !h.is_empty()) =>
            {
                (JwksSource::Url(u), None)
            }
            _ => {
                p.push(format!(
                    "{KEY}.jwks_url: {url:?} is not an http:// or https:// URL with a host"
                ));
                return None;
            }
        },
    };
    (p.len() == before).then_some(JwtSettings {
        source,
        refresh: j.jwks_refresh.0,
        rules,
        subject_header,
        initial,
    })
}

/// `routes[i].auth`: each method must be configured under `gateway.auth`, none twice.
pub(super) fn route_auth(key: &str, methods: &[AuthMethod], auth: &AuthFile, p: &mut Vec<String>) {
    for (i, m) in methods.iter().enumerate() {
        let (configured, name) = match m {
            AuthMethod::SignedUrl => (auth.signed_url.is_some(), "signed_url"),
            AuthMethod::Jwt => (auth.jwt.is_some(), "jwt"),
        };
        if !configured {
            p.push(format!("{key}.auth[{i}]: {name} needs gateway.auth.{name}"));
        }
        if methods[..i].contains(m) {
            p.push(format!("{key}.auth[{i}]: {name} is listed twice"));
        }
    }
}
