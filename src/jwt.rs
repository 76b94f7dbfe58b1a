//! Bearer tokens (`Authorization: Bearer <JWT>`), checked against the keys of a JWK set. Pure:
//! a token and a key set in, claims or a refusal out (used by `access` on requests and by
//! `config` to check a JWK set file).
//!
//! - Algorithms: ES256, RS256 and EdDSA (Ed25519), each key with the one algorithm its type
//!   gives (or its `alg`), and a token must name that algorithm: no algorithm confusion.
//! - `alg: none` cannot be parsed by `jsonwebtoken` at all, and the HMAC algorithms are refused
//!   twice: no key of the set is ever an HMAC key (symmetric `oct` keys are skipped), and the
//!   ring provider below builds no HMAC verifier, so a public key is never used as a secret.
//! - `exp` is required, and so are `iss` and `aud` when `issuer` and `audience` are configured;
//!   `nbf`, `iss` and `aud` are checked, the times with `leeway` (by `jsonwebtoken`).
//!
//! `jsonwebtoken` 12 parses and checks; its crypto is pluggable and both built-in backends
//! (aws-lc-rs, RustCrypto) are left off: [`PROVIDER`] verifies with ring, the crypto library
//! rustls already brings in.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, Validation};
use ring::signature as ring_sig;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// What a token is checked against besides its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a JWT, an algorithm other than ES256/RS256/EdDSA (or not the key's), a bad
    /// signature.
    Invalid,
    /// No key of the set has the token's `kid` (or the token has none and the set has several
    /// keys).
    UnknownKey,
    Expired,
    /// `nbf` in the future, `iss` or `aud` not the configured ones or missing, no `exp`.
    Claims,
}

/// One key of the set, with the checks of its algorithm built once.
struct Key {
    key: DecodingKey,
    validation: Validation,
}

/// The keys of a JWK set that the gateway accepts, by `kid`.
pub(crate) struct KeySet {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`: used for tokens without one when they are the set's only key.
    anonymous: Vec<Key>,
    /// Each key in use as `kid`, algorithm and key material: what a refresh compares.
    ids: BTreeSet<String>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "KeySet({} keys)", self.len())
    }
}

/// The claims the gateway reads itself (the rest are checked by `jsonwebtoken`).
#[derive(serde::Deserialize)]
pub(crate) struct Claims {
    pub sub: Option<String>,
    /// Required and checked by `jsonwebtoken`; read here to know how long a verified token may
    /// be remembered. A number of seconds, possibly with a fraction.
    pub exp: Option<f64>,
}

impl KeySet {
    /// Parses a JWK set (`{"keys": [...]}`). Keys the gateway cannot use (symmetric, for
    /// encryption, other curves or algorithms) are skipped and named in the returned notes; a
    /// set with no usable key is an error.
    pub(crate) fn parse(json: &str, rules: &Rules) -> Result<(KeySet, Vec<String>), String> {
        install_provider();
        #[derive(serde::Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let raw: RawSet = serde_json::from_str(json).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut set = KeySet {
            by_kid: HashMap::new(),
            anonymous: Vec::new(),
            ids: BTreeSet::new(),
        };
        let mut notes = Vec::new();
        for (i, value) in raw.keys.into_iter().enumerate() {
            let parsed = serde_json::from_value::<Jwk>(value)
                .map_err(|e| format!("not a JWK: {e}"))
                .and_then(|jwk| {
                    let id = format!(
                        "{:?} {}",
                        jwk.common.key_id,
                        serde_json::to_string(&jwk.algorithm).unwrap_or_default()
                    );
                    usable(&jwk).map(|(alg, key)| (jwk.common.key_id, alg, key, format!("{alg:?} {id}")))
                });
            match parsed {
                Ok((kid, alg, key, id)) => {
                    let key = Key {
                        key,
                        validation: validation(alg, rules),
                    };
                    match kid {
                        Some(kid) if set.by_kid.contains_key(&kid) => {
                            notes.push(format!("keys[{i}]: kid {kid:?} appears twice; the first is used"));
                            continue;
                        }
                        Some(kid) => {
                            set.by_kid.insert(kid, key);
                        }
                        None => set.anonymous.push(key),
                    }
                    set.ids.insert(id);
                }
                Err(e) => notes.push(format!("keys[{i}] skipped: {e}")),
            }
        }
        if set.len() == 0 {
            return Err(format!(
                "no usable key (ES256 on P-256, RS256, or EdDSA on Ed25519){}",
                notes.iter().map(|n| format!("; {n}")).collect::<String>()
            ));
        }
        Ok((set, notes))
    }

    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    /// Whether a key of `old` is missing from this set or changed in it (same `kid`, other
    /// material or algorithm): tokens verified with `old` may then no longer be good.
    pub(crate) fn drops_any_of(&self, old: &KeySet) -> bool {
        !old.ids.is_subset(&self.ids)
    }

    /// Checks a token's signature and claims.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let key = match &header.kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.len() == 1 => self.anonymous.first().or_else(|| self.by_kid.values().next()),
            None => None,
        }
        .ok_or(TokenError::UnknownKey)?;
        match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature
                | ErrorKind::InvalidIssuer
                | ErrorKind::InvalidAudience
                | ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_) => TokenError::Claims,
                _ => TokenError::Invalid,
            }),
        }
    }
}

/// The algorithm and key of a JWK the gateway accepts.
fn usable(jwk: &Jwk) -> Result<(Algorithm, DecodingKey), String> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("a key for encryption (use: enc)".to_string());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key: HMAC tokens are refused".to_string())
        }
        _ => return Err("a key type or curve other than EC P-256, RSA, OKP Ed25519".to_string()),
    };
    let declared = jwk.common.key_algorithm;
    let matches = match declared {
        None => true,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(_) => false,
    };
    if !matches {
        return Err(format!("alg {declared:?} is not accepted for this key type"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key material: {e}"))?;
    // Built once here so a malformed key is reported now, not on a request.
    verifier(&alg, &key).map_err(|e| format!("bad key material: {e}"))?;
    Ok((alg, key))
}

fn validation(alg: Algorithm, rules: &Rules) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = rules.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    // `jsonwebtoken` checks `iss` and `aud` only when the token has them: a token without
    // them would pass. Whatever is configured is required.
    let mut required = vec!["exp"];
    required.extend(rules.issuer.as_ref().map(|_| "iss"));
    required.extend(rules.audience.as_ref().map(|_| "aud"));
    v.set_required_spec_claims(&required);
    match &rules.issuer {
        Some(iss) => v.set_issuer(&[iss]),
        None => v.iss = None,
    }
    match &rules.audience {
        Some(aud) => v.set_audience(&[aud]),
        // `jsonwebtoken` refuses any token with `aud` unless told which to accept.
        None => v.validate_aud = false,
    }
    v
}

/// The crypto behind `jsonwebtoken`: ring, for the three algorithms accepted. Nothing signs.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(unsupported()),
        rsa_pub_components_from_public_key: |_| Err(unsupported()),
        ec_pub_components_from_private_key: |_, _| Err(unsupported()),
        ed_pub_components_from_private_key: |_, _| Err(unsupported()),
        compute_digest: |_, _| Err(unsupported()),
    },
};

/// `jsonwebtoken` panics on its first decode unless a provider is installed; every path to a
/// decode goes through [`KeySet::parse`], which calls this first.
fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = PROVIDER.install_default();
    });
}

fn unsupported() -> JwtError {
    ErrorKind::Provider("not supported by the gateway's verifier".to_string()).into()
}

fn no_signer(
    _: &Algorithm,
    _: &jsonwebtoken::EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    Err(unsupported())
}

enum RingVerifier {
    Es256(Vec<u8>),
    Rs256 { n: Vec<u8>, e: Vec<u8> },
    EdDsa(Vec<u8>),
}

/// The only verifiers that exist: ES256, RS256, EdDSA, each for a key of its own family.
fn verifier(alg: &Algorithm, key: &DecodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    let v = match (alg, key.family(), key.kind()) {
        (Algorithm::ES256, AlgorithmFamily::Ec, DecodingKeyKind::SecretOrDer(point)) if point.len() == 65 => {
            RingVerifier::Es256(point.clone())
        }
        (Algorithm::RS256, AlgorithmFamily::Rsa, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            // ring wants both without leading zeros.
            let strip = |b: &[u8]| b[b.iter().take_while(|x| **x == 0).count()..].to_vec();
            RingVerifier::Rs256 {
                n: strip(n),
                e: strip(e),
            }
        }
        (Algorithm::EdDSA, AlgorithmFamily::Ed, DecodingKeyKind::SecretOrDer(x)) if x.len() == 32 => {
            RingVerifier::EdDsa(x.clone())
        }
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(v))
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), jsonwebtoken::signature::Error> {
        let ok = match self {
            RingVerifier::Es256(point) => {
                ring_sig::UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, signature)
            }
            RingVerifier::Rs256 { n, e } => ring_sig::RsaPublicKeyComponents { n, e }.verify(
                &ring_sig::RSA_PKCS1_2048_8192_SHA256,
                msg,
                signature,
            ),
            RingVerifier::EdDsa(x) => {
                ring_sig::UnparsedPublicKey::new(&ring_sig::ED25519, x).verify(msg, signature)
            }
        };
        ok.map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        match self {
            RingVerifier::Es256(_) => Algorithm::ES256,
            RingVerifier::Rs256 { .. } => Algorithm::RS256,
            RingVerifier::EdDsa(_) => Algorithm::EdDSA,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn rules() -> Rules {
        Rules {
            issuer: Some("https://auth.example.com".into()),
            audience: Some("assets".into()),
            leeway: Duration::from_secs(30),
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(header: &str, claims: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig = sign(msg.as_bytes());
        format!("{msg}.{}", B64.encode(sig))
    }

    struct Es {
        pair: EcdsaKeyPair,
    }

    impl Es {
        fn new() -> Es {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Es {
                pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap(),
            }
        }
        fn jwk(&self, kid: &str) -> String {
            let p = self.pair.public_key().as_ref();
            format!(
                r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","x":"{}","y":"{}"}}"#,
                B64.encode(&p[1..33]),
                B64.encode(&p[33..])
            )
        }
        fn sign(&self, kid: &str, claims: &str) -> String {
            token(&format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#), claims, |m| {
                self.pair.sign(&SystemRandom::new(), m).unwrap().as_ref().to_vec()
            })
        }
    }

    fn claims(exp_from_now: i64) -> String {
        let exp = now() as i64 + exp_from_now;
        format!(r#"{{"sub":"user-1","iss":"https://auth.example.com","aud":"assets","exp":{exp}}}"#)
    }

    #[test]
    fn es256_and_eddsa_tokens_verify_and_claims_are_checked() {
        let es = Es::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let ed_jwk = format!(
            r#"{{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"{}"}}"#,
            B64.encode(ed.public_key().as_ref())
        );
        let json = format!(r#"{{"keys":[{},{ed_jwk}]}}"#, es.jwk("es"));
        let (set, notes) = KeySet::parse(&json, &rules()).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            set.verify(&es.sign("es", &claims(60))).unwrap().sub.as_deref(),
            Some("user-1")
        );
        let ed_token = token(r#"{"alg":"EdDSA","kid":"ed"}"#, &claims(60), |m| {
            ed.sign(m).as_ref().to_vec()
        });
        assert!(set.verify(&ed_token).is_ok());
        assert_eq!(
            set.verify(&es.sign("es", &claims(-120))).err(),
            Some(TokenError::Expired)
        );
        // Within the leeway.
        assert!(set.verify(&es.sign("es", &claims(-10))).is_ok());
        let wrong_aud = claims(60).replace(r#""aud":"assets""#, r#""aud":"billing""#);
        assert_eq!(
            set.verify(&es.sign("es", &wrong_aud)).err(),
            Some(TokenError::Claims)
        );
        let no_exp = r#"{"iss":"https://auth.example.com","aud":"assets"}"#;
        assert_eq!(set.verify(&es.sign("es", no_exp)).err(), Some(TokenError::Claims));
        // A configured issuer or audience is required, not only checked when present.
        let exp = now() + 60;
        for (what, c) in [
            (
                "no aud",
                format!(r#"{{"sub":"u","iss":"https://auth.example.com","exp":{exp}}}"#),
            ),
            ("no iss", format!(r#"{{"sub":"u","aud":"assets","exp":{exp}}}"#)),
            ("neither", format!(r#"{{"sub":"u","exp":{exp}}}"#)),
        ] {
            assert_eq!(
                set.verify(&es.sign("es", &c)).err(),
                Some(TokenError::Claims),
                "{what}"
            );
        }
        // Without them configured, a token needs neither.
        let open = Rules {
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
        };
        let (open_set, _) = KeySet::parse(&json, &open).unwrap();
        let bare = format!(r#"{{"sub":"u","exp":{exp}}}"#);
        assert!(open_set.verify(&es.sign("es", &bare)).is_ok());
        assert_eq!(
            set.verify(&es.sign("other", &claims(60))).err(),
            Some(TokenError::UnknownKey)
        );
        // The EdDSA key's kid with an ES256 token: the key's algorithm decides.
        assert_eq!(
            set.verify(&es.sign("ed", &claims(60))).err(),
            Some(TokenError::Invalid)
        );
        assert_eq!(set.verify("not.a.jwt").err(), Some(TokenError::Invalid));
    }

    #[test]
    fn none_and_hmac_are_refused() {
        let es = Es::new();
        let jwk = es.jwk("es");
        let (set, _) = KeySet::parse(&format!(r#"{{"keys":[{jwk}]}}"#), &rules()).unwrap();
        let none = token(r#"{"alg":"none","kid":"es"}"#, &claims(60), |_| Vec::new());
        assert_eq!(set.verify(&none).err(), Some(TokenError::Invalid));
        // HS256 keyed with the public key's own JWK text: the classic algorithm confusion.
        let hs = token(r#"{"alg":"HS256","kid":"es"}"#, &claims(60), |m| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, jwk.as_bytes());
            ring::hmac::sign(&key, m).as_ref().to_vec()
        });
        assert_eq!(set.verify(&hs).err(), Some(TokenError::Invalid));
        // A symmetric key in the set is never used.
        let oct = r#"{"kty":"oct","kid":"s","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}"#;
        let err = KeySet::parse(&format!(r#"{{"keys":[{oct}]}}"#), &rules()).unwrap_err();
        assert!(err.contains("symmetric"), "{err}");
    }

    #[test]
    fn a_refresh_drops_a_key_when_one_is_removed_or_changed() {
        let (a, b) = (Es::new(), Es::new());
        let set = |jwks: &[String]| {
            KeySet::parse(&format!(r#"{{"keys":[{}]}}"#, jwks.join(",")), &rules())
                .unwrap()
                .0
        };
        let old = set(&[a.jwk("a"), b.jwk("b")]);
        assert!(
            !set(&[b.jwk("b"), a.jwk("a")]).drops_any_of(&old),
            "the same keys"
        );
        assert!(
            !set(&[a.jwk("a"), b.jwk("b"), Es::new().jwk("c")]).drops_any_of(&old),
            "one added"
        );
        assert!(set(&[a.jwk("a")]).drops_any_of(&old), "b removed");
        assert!(
            set(&[a.jwk("a"), Es::new().jwk("b")]).drops_any_of(&old),
            "b's material changed"
        );
        assert!(
            set(&[a.jwk("a"), b.jwk("b2")]).drops_any_of(&old),
            "b under another kid"
        );
        // The exp the gateway remembers a token by.
        let claims = old.verify(&a.sign("a", &claims(60))).unwrap();
        assert_eq!(claims.exp, Some((now() + 60) as f64));
    }
}
