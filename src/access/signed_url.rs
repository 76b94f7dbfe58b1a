//! Signed URLs: the query parameters `exp` (expiry, Unix seconds), `kid` (key id) and `sig`,
//! the unpadded base64url HMAC-SHA256 under the key's secret of
//!
//! ```text
//! <path>\n<exp>                      no other parameter reaches the upstream
//! <path>\n<exp>\n<a=1&b=2>           the parameters that reach it, sorted by name (then value)
//! ```
//!
//! where `<path>` is the request path exactly as the client sent it (no query) and each
//! parameter is written as it appears in the URL (not decoded). One signed URL thus cannot be
//! replayed with other parameters (another rendition). The three parameters never go upstream
//! and are not part of the cache key. ring does the HMAC and compares in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::hmac;
use std::collections::HashMap;
use std::time::Duration;

/// The parameters of a signature (named by the config, which refuses them in `query.allow`).
const OWN: [&str; 3] = crate::config::SIGNATURE_PARAMS;

/// Why a signed URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlError {
    /// Not all of `exp`, `kid` and `sig`.
    Missing,
    Expired,
    UnknownKey,
    /// A wrong signature, or one of the three malformed or given twice.
    BadSignature,
    /// `exp` further out than `max_ttl`.
    BeyondMaxTtl,
}

pub(crate) struct SignedUrls {
    keys: HashMap<String, hmac::Key>,
    max_ttl: Duration,
}

impl SignedUrls {
    pub(crate) fn new(keys: &[(String, Vec<u8>)], max_ttl: Duration) -> SignedUrls {
        SignedUrls {
            keys: keys
                .iter()
                .map(|(kid, secret)| (kid.clone(), hmac::Key::new(hmac::HMAC_SHA256, secret)))
                .collect(),
            max_ttl,
        }
    }

    /// Checks a request: `path` and `query` as the client sent them, `upstream_query` the
    /// query that goes upstream (the route's query policy applied), `now` in Unix seconds.
    pub(crate) fn check(
        &self,
        path: &str,
        query: Option<&str>,
        upstream_query: Option<&str>,
        now: u64,
    ) -> Result<(), UrlError> {
        let mut own: [Option<&str>; 3] = [None; 3];
        for (name, value) in params(query.unwrap_or_default()).filter_map(|p| Some((p.split('=').next()?, p)))
        {
            if let Some(i) = OWN.iter().position(|o| *o == name) {
                if own[i].is_some() {
                    return Err(UrlError::BadSignature);
                }
                own[i] = Some(value.get(name.len() + 1..).unwrap_or_default());
            }
        }
        let [Some(exp_text), Some(kid), Some(sig)] = own else {
            return Err(UrlError::Missing);
        };
        let key = self.keys.get(kid).ok_or(UrlError::UnknownKey)?;
        let exp = parse_exp(exp_text).ok_or(UrlError::BadSignature)?;
        let tag = B64.decode(sig).map_err(|_| UrlError::BadSignature)?;
        let msg = message(path, exp_text, upstream_query);
        hmac::verify(key, msg.as_bytes(), &tag).map_err(|_| UrlError::BadSignature)?;
        // Only a genuine signature gets told it expired.
        if exp < now {
            return Err(UrlError::Expired);
        }
        if exp - now > self.max_ttl.as_secs() {
            return Err(UrlError::BeyondMaxTtl);
        }
        Ok(())
    }

    /// The `sig` of `path` (as clients will send it), with expiry `exp`, for the query that
    /// reaches the upstream. `None`: no such key id.
    pub(crate) fn sign(
        &self,
        kid: &str,
        path: &str,
        exp: u64,
        upstream_query: Option<&str>,
    ) -> Option<String> {
        let key = self.keys.get(kid)?;
        let msg = message(path, &exp.to_string(), upstream_query);
        Some(B64.encode(hmac::sign(key, msg.as_bytes()).as_ref()))
    }

    pub(crate) fn max_ttl(&self) -> Duration {
        self.max_ttl
    }
}

/// `exp`: decimal digits only (no sign, no spaces), as a `u64`.
fn parse_exp(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// The non-empty `&`-separated parameters of a query, as written.
fn params(query: &str) -> impl Iterator<Item = &str> {
    query.split('&').filter(|p| !p.is_empty())
}

pub(crate) fn is_own(param: &str) -> bool {
    let name = param.split('=').next().unwrap_or_default();
    OWN.contains(&name)
}

/// The signed message: `<path>\n<exp>`, then `\n` and the parameters that reach the upstream
/// (the signature's own three left out), sorted by name then value, joined by `&`.
pub(crate) fn message(path: &str, exp: &str, upstream_query: Option<&str>) -> String {
    let mut rest: Vec<&str> = params(upstream_query.unwrap_or_default())
        .filter(|p| !is_own(p))
        .collect();
    crate::routing::sort_params(&mut rest);
    let mut msg = String::with_capacity(path.len() + 24 + upstream_query.map_or(0, str::len));
    msg.push_str(path);
    msg.push('\n');
    msg.push_str(exp);
    for (i, p) in rest.iter().enumerate() {
        msg.push(if i == 0 { '\n' } else { '&' });
        msg.push_str(p);
    }
    msg
}

/// `query` without `exp`, `kid` and `sig`, the other parameters in the canonical order
/// (`routing::sort_params`, as the signed message has them: whatever order a client writes a
/// signed URL's parameters in, the upstream and the cache key get one); `None` when nothing
/// is left. Borrowed when there was nothing to change.
pub(crate) fn strip(query: &str) -> Option<std::borrow::Cow<'_, str>> {
    let mut kept: Vec<&str> = params(query).filter(|p| !is_own(p)).collect();
    let sorted =
        kept.is_sorted_by(|a, b| (crate::routing::param_name(a), *a) <= (crate::routing::param_name(b), *b));
    if sorted && !params(query).any(is_own) && !query.split('&').any(str::is_empty) {
        return (!query.is_empty()).then_some(std::borrow::Cow::Borrowed(query));
    }
    crate::routing::sort_params(&mut kept);
    (!kept.is_empty()).then(|| std::borrow::Cow::Owned(kept.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/content/v1/assets/3f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0d";
    const SECRET: &[u8] = b"k1-secret-k1-secret-k1-secret-k1";

    fn urls() -> SignedUrls {
        SignedUrls::new(&[("k1".into(), SECRET.to_vec())], Duration::from_secs(7 * 86400))
    }

    /// The README's worked example, computed independently of `sign`.
    #[test]
    fn the_signed_string_is_exactly_as_documented() {
        assert_eq!(message(PATH, "1767225600", None), format!("{PATH}\n1767225600"));
        assert_eq!(
            message(
                PATH,
                "1767225600",
                Some("w=640&exp=1&fmt=webp&a=%2F&kid=x&sig=y&fmt=avif")
            ),
            format!("{PATH}\n1767225600\na=%2F&fmt=avif&fmt=webp&w=640")
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
        let tag = hmac::sign(&key, format!("{PATH}\n1767225600\nw=640").as_bytes());
        assert_eq!(
            urls().sign("k1", PATH, 1767225600, Some("w=640")),
            Some(B64.encode(tag.as_ref()))
        );
        // The value the README prints (also computed there with Python and openssl).
        assert_eq!(
            B64.encode(tag.as_ref()),
            "FX_Skm8DHQ2OKmTrLiZR4M0iisv-GlYr2KmHTPH0yVU"
        );
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let u = urls();
        let now = 1_700_000_000;
        let exp = now + 3600;
        let sig = u.sign("k1", PATH, exp, None).unwrap();
        let q = format!("exp={exp}&kid=k1&sig={sig}");
        assert_eq!(u.check(PATH, Some(&q), None, now), Ok(()));
        assert_eq!(u.check(PATH, None, None, now), Err(UrlError::Missing));
        assert_eq!(
            u.check(PATH, Some(&format!("exp={exp}&kid=k1")), None, now),
            Err(UrlError::Missing)
        );
        assert_eq!(u.check(PATH, Some(&q), None, exp + 1), Err(UrlError::Expired));
        assert_eq!(
            u.check(PATH, Some(&q.replace("kid=k1", "kid=k9")), None, now),
            Err(UrlError::UnknownKey)
        );
        let tampered = q.replace(&format!("exp={exp}"), &format!("exp={}", exp + 1));
        assert_eq!(
            u.check(PATH, Some(&tampered), None, now),
            Err(UrlError::BadSignature)
        );
        assert_eq!(
            u.check(&PATH.replace("3f1c", "4f1c"), Some(&q), None, now),
            Err(UrlError::BadSignature)
        );
        // Another parameter reaching the upstream is not covered by this signature.
        assert_eq!(
            u.check(PATH, Some(&q), Some("w=640"), now),
            Err(UrlError::BadSignature)
        );
        assert_eq!(
            u.check(PATH, Some(&format!("{q}&sig={sig}")), None, now),
            Err(UrlError::BadSignature)
        );
        let far = now + 8 * 86400;
        let q = format!("exp={far}&kid=k1&sig={}", u.sign("k1", PATH, far, None).unwrap());
        assert_eq!(u.check(PATH, Some(&q), None, now), Err(UrlError::BeyondMaxTtl));
    }

    #[test]
    fn strip_leaves_the_other_parameters_in_canonical_order() {
        assert_eq!(strip("exp=1&kid=k&sig=s").as_deref(), None);
        assert_eq!(strip("w=1&exp=1&kid=k&sig=s&h=2").as_deref(), Some("h=2&w=1"));
        assert_eq!(
            strip("w=640&w=1280&exp=1").as_deref(),
            strip("w=1280&exp=1&w=640").as_deref()
        );
        assert!(matches!(
            strip("h=2&w=1"),
            Some(std::borrow::Cow::Borrowed("h=2&w=1"))
        ));
        assert_eq!(strip("w=1&&h=2").as_deref(), Some("h=2&w=1"));
        assert_eq!(strip("w=1").as_deref(), Some("w=1"));
        assert_eq!(strip("").as_deref(), None);
        assert_eq!(strip("expire=1").as_deref(), Some("expire=1"));
    }
}
