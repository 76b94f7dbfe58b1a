//! Who may fetch: signed URLs, bearer JWTs, CORS, and who may use the admin API. Real gateway
//! process with a cache, real origin, real client. Signatures and tokens are made here with
//! ring directly (not with the gateway's code), following the README's definitions.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::origin::{Behavior, Origin};
use common::{client, free_addrs, wait_listening, Gateway, EVENTUALLY};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const A: &str = "1a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c01";
const B: &str = "1a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c02";
const C: &str = "1a1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c03";
const K1: &str = "k1-secret-0123456789abcdef0123456789";
const K0: &str = "k0-secret-0123456789abcdef0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn path(id: &str) -> String {
    format!("/content/v1/assets/{id}")
}

/// The signature as the README defines it: base64url (no padding) of HMAC-SHA256(secret,
/// "<path>\n<exp>" [+ "\n" + the upstream parameters sorted, joined by &]).
fn sig(secret: &str, path: &str, exp: u64, params: &[&str]) -> String {
    let mut msg = format!("{path}\n{exp}");
    let mut params = params.to_vec();
    params.sort();
    if !params.is_empty() {
        msg.push('\n');
        msg.push_str(&params.join("&"));
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    B64.encode(ring::hmac::sign(&key, msg.as_bytes()).as_ref())
}

fn signed(id: &str, kid: &str, secret: &str, exp: u64) -> String {
    format!(
        "{}?exp={exp}&kid={kid}&sig={}",
        path(id),
        sig(secret, &path(id), exp, &[])
    )
}

struct Setup {
    origin: Origin,
    gw: Gateway,
    admin: SocketAddr,
}

/// A gateway with a cache and an admin listener; `gateway_extra` goes under `gateway:` and
/// `route_extra` under the asset route.
async fn setup(gateway_extra: &str, route_extra: &str) -> Setup {
    let origin = Origin::start().await;
    for id in [A, B, C] {
        origin.set_body(id, format!("asset {id}"));
    }
    let [listen, admin] = free_addrs();
    let yaml = format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}"]
  admin: "{admin}"
  cache: {{memory: 64MiB}}
{gateway_extra}
  upstreams:
    assets:
      peers: ["{}"]
      host: assets.internal
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
{route_extra}
"#,
        origin.addr
    );
    let gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(admin);
    Setup { origin, gw, admin }
}

/// Requests the origin saw for `id` (any query).
fn origin_requests(origin: &Origin, id: &str) -> Vec<common::origin::Seen> {
    origin
        .requests()
        .into_iter()
        .filter(|r| r.target.contains(id))
        .collect()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn get(gw: &Gateway, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = client().get(gw.url(target));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let r = req.send().await.unwrap();
    Answer {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    }
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn assert_refused(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert!(self.body.starts_with("{\"error\":\""), "{what}: {}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"), "{what}");
    }
}

const SIGNED_ROUTE: &str = "      auth: [signed_url]\n";
/// A signed-URL route that lets `w` and `h` through to the upstream (and the cache key).
const SIGNED_ROUTE_WH: &str = "      auth: [signed_url]\n      query: {allow: [w, h]}\n";

fn signed_config(max_ttl: &str) -> String {
    format!(
        "  auth:\n    signed_url:\n      keys: {{k1: \"{K1}\", k0: \"{K0}\"}}\n      max_ttl: {max_ttl}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_admit_exactly_what_they_sign() {
    let s = setup(&signed_config("1h"), SIGNED_ROUTE_WH).await;
    let gw = &s.gw;
    let exp = now() + 600;

    // Unsigned: 401, nothing upstream.
    get(gw, &path(A), &[]).await.assert_refused(401, "unsigned");
    assert!(origin_requests(&s.origin, A).is_empty());

    // Valid: served; exp, kid and sig never reach the upstream.
    let r = get(gw, &signed(A, "k1", K1, exp), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, format!("asset {A}"));
    let seen = origin_requests(&s.origin, A);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, format!("/v1/assets/{A}"));

    // Another signature of the same asset is a hit: one cached object whatever the signature.
    let r = get(gw, &signed(A, "k1", K1, exp + 1), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        r.headers
    );
    // The second key (rotation) is accepted too, also from the cache.
    let r = get(gw, &signed(A, "k0", K0, exp + 2), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin_requests(&s.origin, A).len(), 1);

    // A parameter the route does not let through (`query.allow`) is neither signed nor
    // forwarded nor keyed: the same object.
    let r = get(gw, &format!("{}&x=1", signed(A, "k1", K1, exp)), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin_requests(&s.origin, A).len(), 1);

    // An unsigned request is refused even though the asset is cached.
    get(gw, &path(A), &[])
        .await
        .assert_refused(401, "unsigned, cached");

    // Each refusal, and none reaches the origin.
    let cases: Vec<(String, u16, &str)> = vec![
        (signed(A, "k1", K1, now() - 10), 403, "expired"),
        (
            format!("{}?exp={exp}&kid=k1&sig={}", path(A), sig(K1, &path(B), exp, &[])),
            403,
            "another asset's signature",
        ),
        (signed(A, "k9", K1, exp), 403, "unknown kid"),
        (
            signed(A, "k1", "wrong-secret-0123456789abcdef012345", exp),
            403,
            "wrong secret",
        ),
        (signed(A, "k1", K1, now() + 7200), 403, "beyond max_ttl"),
        (
            signed(A, "k1", K1, exp).replace(&format!("exp={exp}"), &format!("exp={}", exp + 60)),
            403,
            "tampered exp",
        ),
        (
            format!("{}&w=1280", signed(A, "k1", K1, exp)),
            403,
            "replayed with another parameter",
        ),
        (format!("{}?exp={exp}&kid=k1", path(A)), 401, "no sig"),
    ];
    for (target, status, what) in &cases {
        get(gw, target, &[]).await.assert_refused(*status, what);
    }
    assert_eq!(origin_requests(&s.origin, A).len(), 1);

    // A signature covering a parameter: that URL only, and the parameter goes upstream.
    let with_w = format!(
        "{}?w=640&exp={exp}&kid=k1&sig={}",
        path(B),
        sig(K1, &path(B), exp, &["w=640"])
    );
    let r = get(gw, &with_w, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = origin_requests(&s.origin, B);
    assert_eq!(seen.last().unwrap().target, format!("/v1/assets/{B}?w=640"));
    get(gw, &with_w.replace("w=640", "w=1280"), &[])
        .await
        .assert_refused(403, "another rendition");
    // The signed string holds the parameters sorted, as the upstream and the key get them:
    // written in another order, the same URL, the same object.
    let sig_wh = sig(K1, &path(B), exp, &["w=640", "h=480"]);
    let wh = format!("{}?w=640&h=480&exp={exp}&kid=k1&sig={sig_wh}", path(B));
    let hw = format!("{}?exp={exp}&h=480&kid=k1&w=640&sig={sig_wh}", path(B));
    let r = get(gw, &wh, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        origin_requests(&s.origin, B).last().unwrap().target,
        format!("/v1/assets/{B}?h=480&w=640")
    );
    let r = get(gw, &hw, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin_requests(&s.origin, B).len(), 2);

    // A repeated parameter cannot be reordered into another upstream request or another
    // object under one signature: both orders are one canonical query (name, then value).
    let sig_ww = sig(K1, &path(C), exp, &["w=1280", "w=640"]);
    for (i, ww) in ["w=640&w=1280", "w=1280&w=640"].iter().enumerate() {
        let r = get(
            gw,
            &format!("{}?{ww}&exp={exp}&kid=k1&sig={sig_ww}", path(C)),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("cache-status").unwrap().contains("hit"), i == 1, "{ww}");
    }
    let seen: Vec<String> = origin_requests(&s.origin, C)
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(seen, [format!("/v1/assets/{C}?w=1280&w=640")]);

    // Metrics and the access log name the reason.
    let scrape = common::scrape(s.admin).await;
    let route = "route=\"/content/v1/assets/{id}\"";
    for (reason, n) in [
        ("missing-credentials", 3.0),
        ("url-expired", 1.0),
        ("url-unknown-kid", 1.0),
        ("url-bad-signature", 5.0),
        ("url-beyond-max-ttl", 1.0),
    ] {
        let series = format!("asset_gateway_refusals_total{{reason=\"{reason}\",{route}}}");
        assert_eq!(common::metric(&scrape, &series), n, "{series}\n{scrape}");
    }
    gw.wait_for_log(|l| {
        l.contains(" access] ") && l.contains("status=403") && l.contains("refused=url-expired")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_prints_a_url_the_gateway_accepts() {
    let s = setup(&signed_config("7d"), SIGNED_ROUTE).await;
    let sign = |target: &str| {
        let out = std::process::Command::new(common::BIN)
            .args(["sign", "-c"])
            .arg(&s.gw.conf_path)
            .args(["--kid", "k1", "--ttl", "1h", target])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (
            String::from_utf8(out.stdout).unwrap().trim().to_string(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (url, _) = sign(&path(C));
    assert!(url.starts_with(&format!("{}?exp=", path(C))), "{url}");
    assert_eq!(get(&s.gw, &url, &[]).await.status, 200);
    // A cached route drops the query by default: `w` reaches neither the upstream nor the
    // signed string, and `sign` says so.
    let (url, note) = sign(&format!("{}?w=320", path(C)));
    assert!(url.starts_with(&format!("{}?w=320&exp=", path(C))), "{url}");
    assert!(note.contains("w=320 do(es) not reach the upstream"), "{note}");
    assert_eq!(get(&s.gw, &url, &[]).await.status, 200);
    assert!(origin_requests(&s.origin, C)
        .iter()
        .all(|r| r.target == format!("/v1/assets/{C}")));
    // So a signature that covers it does not match what the gateway checks.
    let exp = now() + 600;
    let covering = format!(
        "{}?w=320&exp={exp}&kid=k1&sig={}",
        path(C),
        sig(K1, &path(C), exp, &["w=320"])
    );
    get(&s.gw, &covering, &[])
        .await
        .assert_refused(403, "a dropped parameter signed");
    // Beyond max_ttl: refused by the command itself.
    let out = std::process::Command::new(common::BIN)
        .args(["sign", "-c"])
        .arg(&s.gw.conf_path)
        .args(["--kid", "k1", "--ttl", "8d", &path(C)])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

// --- JWT ----------------------------------------------------------------------------------

/// A fixed 2048-bit RSA test key (PKCS#8): ring verifies RSA but cannot generate keys.
const RSA_KEY: &str = "MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDonJdqPKlD8/2b
d/4Himi95YWQWHuYHqJ0XbwKQmjET3RH8BK/Fjhutn49eF46/m0no7sJOYo5kfVY
NEi4yFjiuThmzY1fONMGUGTMgm7zAP42jUcQ4jFw+iFwigea6ZR7QaY816Q42a/2
hWcUIgEMYmha/zEBDKg/R7XGRZ0mZD7r3YmS8ag9JCGQJoPpjBMCo71eu1PUeFLL
5hJRywMzI3BKBOTpgyVIZ54e/eUtKkz8FSdZs3f8vnnI+DwFqm9ARQWeZGhyRvGk
Gycj3bOvfOpyUrEvwWP3R3XHz5j8+pokENMzbmVOnSqcSQbaI1MecASMWjTtucL/
7TPFqvWrAgMBAAECggEALP6lV1p2j3tx0hHq5ICEdD8ij+JdvfYnDIVZK07fPyHz
ZzrsFWRx9BB+6NsQty6h5KoKMuWbdDlkkPREIOI4N1sGqvQV5ZZzU2RXqyuL1Jub
kOfRGFX4pFbuAvvgLroCC7mOM3SvAoQxQmlZoA5Xz5J1hyyXyREutlbjtX+fv14E
VwdtoNGGTwfIOp63LZDHc9eU1jO5GHf364mMrNca0+Q+ui42KOe8NiPSlgZF1cd8
QLPWq0+BsNRzDj6ujaJj9iMz4Br3eBh7MjeCkATwVBAYjinwPKWFkEso45M6k/V9
HLIyxuJWD1Ek9qBdIkDxti6Z7TApnUt2VExHrnZa0QKBgQD3s/e6BqpcQ67LYPFA
MmEpsqK0n17JG7QiqrsTjwnUuNS0Is1GjhA6fYKVG4YseB4eUUi9jrg9P0C0fr9J
svJ6LE7GjI4AjzMRZYqrxZTlE1p230VhAGjjq/x/FunCHXxpty9dk2TRatM5H0jA
W2Tf92Jy1MShwkkVZPOZtpp5EwKBgQDwZzeQLI48ZMSIUXAnigO8C4unEsBqaEqx
V1GkbMXVOFoxVKe1eiAzMNVj7iVFo/T6iuPZ3et6YpMoke/T9w8VJ9mHuL6bCYxe
M2crWUlODfW6tnuLYdDFzkbrz9ABqRGQXQ//SU06mUTHL7Y6hxpLBkBlO9+rvJLA
y2iCCHr8CQKBgQCly6Xys+dvnjXvF1IjYBU87b6OG2Y8QfjOg2x4aPNxmM12TR0N
LqWaIMw4tZWXSkcOj+WaS17yT9YlefjbgZVfRSztJMMfiLnr2QV6d+NzeQLCMiuk
A7wxN7rn7hREw6u0rtJbVf7TVSdQQqpVZlccud8BcXyzsPFuCoYqytiWVQKBgCP6
ToZ1JJRFQGRmS7KfJQ/vamcGl2VVVlhUCRPic3kFhfn8AV1XeZovpL/f1BQoBXG5
d4AThjo6pmtb69h9EPTJkfSN4XiyZR9z8ey64A2eaTgYN0UUznnL9TE1WJvnAYnp
Y4uBHN24MmLc8RixP24a8Wg1HbRF9HCGAI31VvKBAoGBAJEH88qXH/kbaPrvSBl8
ZDi0UQxgC36lZZl06vsM3FLGRO7cldT2RE09sSjrCXCWPrCm8BOL5iDpGBZ7UluU
9SdZhyv615y7MbDoTJ3034BYPlyVkVaNmR6a90RfYqTuig3KsT40DICrCnWj8pG8
ZMQxfbT1KeW10XAeQNe8osil";

enum Signer {
    Es(EcdsaKeyPair),
    Rs(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Signer {
    fn es256() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Signer::Es(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap())
    }

    fn rs256() -> Signer {
        use base64::engine::general_purpose::STANDARD;
        let der = STANDARD.decode(RSA_KEY.replace('\n', "")).unwrap();
        Signer::Rs(RsaKeyPair::from_pkcs8(&der).unwrap())
    }

    fn ed25519() -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Es(_) => "ES256",
            Signer::Rs(_) => "RS256",
            Signer::Ed(_) => "EdDSA",
        }
    }

    fn jwk(&self, kid: &str) -> String {
        match self {
            Signer::Es(k) => {
                let p = k.public_key().as_ref();
                format!(
                    r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","use":"sig","x":"{}","y":"{}"}}"#,
                    B64.encode(&p[1..33]),
                    B64.encode(&p[33..])
                )
            }
            Signer::Rs(k) => {
                let c: ring::rsa::PublicKeyComponents<Vec<u8>> = k.public().into();
                format!(
                    r#"{{"kty":"RSA","kid":"{kid}","alg":"RS256","n":"{}","e":"{}"}}"#,
                    B64.encode(&c.n),
                    B64.encode(&c.e)
                )
            }
            Signer::Ed(k) => format!(
                r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"{}"}}"#,
                B64.encode(k.public_key().as_ref())
            ),
        }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Es(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Signer::Rs(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig).unwrap();
                sig
            }
            Signer::Ed(k) => k.sign(msg).as_ref().to_vec(),
        }
    }

    fn token(&self, kid: &str, claims: &str) -> String {
        let header = format!(r#"{{"alg":"{}","typ":"JWT","kid":"{kid}"}}"#, self.alg());
        raw_token(&header, claims, |m| self.sign(m))
    }
}

fn raw_token(header: &str, claims: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = sign(msg.as_bytes());
    format!("{msg}.{}", B64.encode(sig))
}

fn claims(sub: &str, exp_in: i64, iss: &str, aud: &str) -> String {
    format!(
        r#"{{"sub":"{sub}","iss":"{iss}","aud":"{aud}","exp":{},"iat":{}}}"#,
        now() as i64 + exp_in,
        now()
    )
}

fn good(sub: &str) -> String {
    claims(sub, 300, "https://auth.example.com", "assets")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const JWKS_ID: &str = "jwks.json";

fn jwt_config(origin: SocketAddr) -> String {
    format!(
        "  auth:\n    jwt:\n      jwks_url: \"http://{origin}/keys/{JWKS_ID}\"\n      jwks_refresh: 1s\n      issuer: \"https://auth.example.com\"\n      audience: assets\n      leeway: 5s\n      subject_header: X-Auth-Subject\n"
    )
}

fn jwks(keys: &[String]) -> String {
    format!("{{\"keys\":[{}]}}", keys.join(","))
}

/// Waits until `pred` holds for the answer to a request with `token` (the JWKS is fetched in
/// the background).
async fn eventually_status(gw: &Gateway, id: &str, token: &str, status: u16) {
    let start = Instant::now();
    loop {
        let r = get(gw, &path(id), &[("authorization", &bearer(token))]).await;
        if r.status == status {
            return;
        }
        assert!(
            start.elapsed() < EVENTUALLY,
            "still {} ({}), want {status}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_checked_before_the_cache() {
    // The JWKS lives on its own origin (the asset origin's request log stays the assets').
    let keys_origin = Origin::start().await;
    let es = Signer::es256();
    let rs = Signer::rs256();
    keys_origin.set(
        JWKS_ID,
        Behavior::Body {
            body: jwks(&[es.jwk("es-1"), rs.jwk("rs-1")]).into(),
            content_type: "application/json",
        },
    );
    let s = setup(&jwt_config(keys_origin.addr), "      auth: [jwt]\n").await;
    let gw = &s.gw;
    let es_token = es.token("es-1", &good("user-es"));
    eventually_status(gw, A, &es_token, 200).await;

    // Served, and the upstream saw no Authorization, only the subject.
    let seen = origin_requests(&s.origin, A);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(seen[0].header("x-auth-subject"), Some("user-es"));

    // Another user's token (RS256) gets the cached object: Authorization did not keep the
    // response out of the cache.
    let r = get(
        gw,
        &path(A),
        &[("authorization", &bearer(&rs.token("rs-1", &good("user-rs"))))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        r.headers
    );
    assert_eq!(origin_requests(&s.origin, A).len(), 1);

    // No token: 401 with a Bearer challenge, even for a cached asset.
    let r = get(gw, &path(A), &[]).await;
    r.assert_refused(401, "no token");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"asset-gateway\"")
    );

    // What is refused.
    let public_jwk = es.jwk("es-1");
    let hs256_with_public_key = raw_token(r#"{"alg":"HS256","typ":"JWT","kid":"es-1"}"#, &good("x"), |m| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public_jwk.as_bytes());
        ring::hmac::sign(&key, m).as_ref().to_vec()
    });
    let point = match &es {
        Signer::Es(k) => k.public_key().as_ref().to_vec(),
        _ => unreachable!(),
    };
    let hs256_with_point = raw_token(r#"{"alg":"HS256","kid":"es-1"}"#, &good("x"), |m| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &point);
        ring::hmac::sign(&key, m).as_ref().to_vec()
    });
    let refused = [
        (
            es.token("es-1", &claims("x", -60, "https://auth.example.com", "assets")),
            "expired",
            "jwt-expired",
        ),
        (
            es.token("es-1", &claims("x", 300, "https://auth.example.com", "billing")),
            "wrong aud",
            "jwt-claims",
        ),
        (
            es.token("es-1", &claims("x", 300, "https://evil.example", "assets")),
            "wrong iss",
            "jwt-claims",
        ),
        (
            es.token(
                "es-1",
                &format!(
                    r#"{{"sub":"x","iss":"https://auth.example.com","exp":{}}}"#,
                    now() + 300
                ),
            ),
            "no aud",
            "jwt-claims",
        ),
        (
            es.token(
                "es-1",
                &format!(r#"{{"sub":"x","aud":"assets","exp":{}}}"#, now() + 300),
            ),
            "no iss",
            "jwt-claims",
        ),
        (
            es.token(
                "es-1",
                &format!(
                    r#"{{"sub":"x","iss":"https://auth.example.com","aud":"assets","exp":{},"nbf":{}}}"#,
                    now() + 600,
                    now() + 300
                ),
            ),
            "nbf beyond the leeway",
            "jwt-claims",
        ),
        (
            raw_token(r#"{"alg":"none","kid":"es-1"}"#, &good("x"), |_| Vec::new()),
            "alg none",
            "jwt-invalid",
        ),
        (hs256_with_public_key, "HS256 keyed with the JWK", "jwt-invalid"),
        (
            hs256_with_point,
            "HS256 keyed with the public point",
            "jwt-invalid",
        ),
        (es.token("es-9", &good("x")), "unknown kid", "jwt-unknown-kid"),
        (
            rs.token("es-1", &good("x")),
            "the kid of another key",
            "jwt-invalid",
        ),
        (
            Signer::es256().token("es-1", &good("x")),
            "signed by another key",
            "jwt-invalid",
        ),
    ];
    for (token, what, reason) in &refused {
        let r = get(gw, &path(A), &[("authorization", &bearer(token))]).await;
        r.assert_refused(401, what);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"asset-gateway\", error=\"invalid_token\""),
            "{what}"
        );
        let id = format!("jwt-{}", what.replace(' ', "-"));
        let r = client()
            .get(gw.url(&path(A)))
            .header("authorization", bearer(token))
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let line = gw.access_line(&id).await;
        assert!(line.contains(&format!("refused={reason}")), "{what}: {line}");
    }
    // None of them reached the origin, nor did a miss for another asset.
    assert!(origin_requests(&s.origin, B).is_empty());
    let r = get(gw, &path(B), &[("authorization", &bearer(&refused[0].0))]).await;
    assert_eq!(r.status, 401);
    assert!(origin_requests(&s.origin, B).is_empty());
    assert_eq!(origin_requests(&s.origin, A).len(), 1);

    // A key added to the JWKS is picked up by the background refresh.
    let es2 = Signer::es256();
    let new_token = es2.token("es-2", &good("user-2"));
    let r = get(gw, &path(C), &[("authorization", &bearer(&new_token))]).await;
    r.assert_refused(401, "a key not yet published");
    keys_origin.set(
        JWKS_ID,
        Behavior::Body {
            body: jwks(&[es.jwk("es-1"), rs.jwk("rs-1"), es2.jwk("es-2")]).into(),
            content_type: "application/json",
        },
    );
    eventually_status(gw, C, &new_token, 200).await;

    // A failed refresh keeps the last good keys.
    keys_origin.set(
        JWKS_ID,
        Behavior::Status {
            status: 500,
            body: "down",
        },
    );
    gw.wait_for_log(|l| l.contains("JWKS refresh failed, keeping the last good keys, loaded"))
        .await;
    let r = get(gw, &path(C), &[("authorization", &bearer(&new_token))]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The age of the keys in use shows it (what to alert on): it grows while refreshes fail,
    // and falls back once one succeeds.
    let age = async || common::metric(&common::scrape(s.admin).await, "asset_gateway_jwks_age_seconds");
    common::eventually_async("the keys' age grows while refreshes fail", async || {
        age().await >= 3.0
    })
    .await;
    keys_origin.set(
        JWKS_ID,
        Behavior::Body {
            body: jwks(&[es.jwk("es-1"), rs.jwk("rs-1"), es2.jwk("es-2")]).into(),
            content_type: "application/json",
        },
    );
    common::eventually_async("a good refresh resets the age", async || age().await < 2.0).await;
}

/// A JWK set from a file (read at start, reread every `jwks_refresh`), an EdDSA token end to
/// end, and the subject header: the verified `sub` replaces whatever the client sent, and an
/// origin's `Vary` on it keys the cache on the verified subject (one user's object is never
/// another's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_jwks_file_eddsa_and_the_subject_header() {
    let ed = Signer::ed25519();
    let es = Signer::es256();
    let dir = common::temp_dir();
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[ed.jwk("ed-1"), es.jwk("es-1")])).unwrap();
    let s = setup(
        &format!(
            "  auth:\n    jwt:\n      jwks: \"{}\"\n      jwks_refresh: 1s\n      issuer: \"https://auth.example.com\"\n      audience: assets\n      subject_header: X-Auth-Subject\n",
            jwks_path.display()
        ),
        "      auth: [jwt]\n",
    )
    .await;
    let gw = &s.gw;
    let ed_token = ed.token("ed-1", &good("user-ed"));
    let es_token = es.token("es-1", &good("user-es"));

    // EdDSA, admitted at once (the file was read at start); the client's own subject header
    // never reaches the upstream, the verified one does.
    let r = get(
        gw,
        &path(A),
        &[("authorization", &bearer(&ed_token)), ("x-auth-subject", "admin")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = origin_requests(&s.origin, A);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-auth-subject"), Some("user-ed"));
    assert_eq!(seen[0].header("authorization"), None);

    // An origin whose answer depends on the subject says so with Vary: each user gets their
    // own object, and their repeats are hits.
    s.origin.set(
        B,
        Behavior::Scripted(std::sync::Arc::new(|req: &common::origin::Seen| {
            let sub = req.header("x-auth-subject").unwrap_or("nobody").to_string();
            Box::pin(async move {
                (
                    "200 OK".to_string(),
                    "cache-control: max-age=60\r\nvary: X-Auth-Subject\r\n".to_string(),
                    format!("for {sub}").into_bytes(),
                )
            })
        })),
    );
    for (token, who, cache) in [
        (&ed_token, "user-ed", "stored"),
        (&es_token, "user-es", "stored"),
        (&ed_token, "user-ed", "hit"),
        (&es_token, "user-es", "hit"),
    ] {
        let r = get(
            gw,
            &path(B),
            &[("authorization", &bearer(token)), ("x-auth-subject", "user-ed")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, format!("for {who}"));
        let cs = r.header("cache-status").unwrap();
        assert!(cs.contains(cache), "{who}: {cs}");
    }
    assert_eq!(origin_requests(&s.origin, B).len(), 2);

    // A verified token is remembered (one signature check per token, not per request), but
    // never beyond a refresh that removed its key: once the set without `ed-1` is in place
    // (the key gauge says 1), the EdDSA token is refused at once, the ES256 one still admitted.
    let keys = |scrape: &str| common::metric(scrape, "asset_gateway_jwks_keys");
    assert_eq!(keys(&common::scrape(s.admin).await), 2.0);
    for _ in 0..3 {
        assert_eq!(
            get(gw, &path(A), &[("authorization", &bearer(&ed_token))])
                .await
                .status,
            200
        );
    }
    let next = dir.join("jwks.json.next");
    std::fs::write(&next, jwks(&[es.jwk("es-1")])).unwrap();
    std::fs::rename(&next, &jwks_path).unwrap();
    common::eventually_async("the JWK set reread without ed-1", async || {
        keys(&common::scrape(s.admin).await) == 1.0
    })
    .await;
    let r = get(gw, &path(A), &[("authorization", &bearer(&ed_token))]).await;
    r.assert_refused(401, "a token whose key left the set");
    assert_eq!(
        get(gw, &path(A), &[("authorization", &bearer(&es_token))])
            .await
            .status,
        200
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// --- CORS ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_headers() {
    let s = setup(
        &signed_config("1h"),
        "      auth: [signed_url]\n      cors: {origins: [\"https://app.example.com\"], max_age: 5m}\n",
    )
    .await;
    let gw = &s.gw;
    let preflight = |origin: &str, method: &str| {
        client()
            .request(reqwest::Method::OPTIONS, gw.url(&path(A)))
            .header("origin", origin.to_string())
            .header("access-control-request-method", method.to_string())
            .header("access-control-request-headers", "authorization, range")
            .send()
    };
    // A preflight from the listed origin: 204 with what the browser needs, no credentials
    // asked, nothing upstream.
    let r = preflight("https://app.example.com", "GET").await.unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, HEAD");
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Authorization"));
    assert_eq!(h["access-control-max-age"], "300");
    assert!(h["vary"].to_str().unwrap().starts_with("Origin"));
    // Another origin, or a method not served: refused.
    let r = preflight("https://evil.example", "GET").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(
        preflight("https://app.example.com", "DELETE")
            .await
            .unwrap()
            .status(),
        403
    );
    // OPTIONS that is not a preflight: 405 as before.
    let r = client()
        .request(reqwest::Method::OPTIONS, gw.url(&path(A)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(origin_requests(&s.origin, A).is_empty());

    // Responses carry the origin and `Vary: Origin`, from the origin and from the cache.
    let url = signed(A, "k1", K1, now() + 600);
    for expect in ["stored", "hit"] {
        let r = get(gw, &url, &[("origin", "https://app.example.com")]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.header("cache-status").unwrap().contains(expect));
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(r.header("vary"), Some("Origin"));
    }
    // Another origin, or none: no Allow-Origin, still `Vary: Origin`.
    for origin in [Some("https://evil.example"), None] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let r = get(gw, &url, &headers).await;
        assert_eq!(r.status, 200);
        assert!(r.header("access-control-allow-origin").is_none());
        assert_eq!(r.header("vary"), Some("Origin"));
    }
    // A refusal a page can read (its origin is listed).
    let r = get(gw, &path(A), &[("origin", "https://app.example.com")]).await;
    r.assert_refused(401, "unsigned, cross-origin");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // ... including why (a browser hides headers not listed).
    let exposed = r.header("access-control-expose-headers").unwrap_or_default();
    assert!(exposed.contains("WWW-Authenticate"), "{exposed}");
    // The gateway's own 400 and 405 on the route too (a page read a bare TypeError: failed
    // to fetch for a bad id); none for another origin.
    let bad_id = "/content/v1/assets/not-a-uuid";
    let r = get(gw, bad_id, &[("origin", "https://app.example.com")]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let r = client()
        .post(gw.url(&path(A)))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let r = get(gw, bad_id, &[("origin", "https://evil.example")]).await;
    assert_eq!(r.status, 400);
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(origin_requests(&s.origin, A).len(), 1);
}

// --- Admin ----------------------------------------------------------------------------------

const TOKEN: &str = "admin-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_everything_but_the_probes() {
    let s = setup(&format!("  admin_token: \"{TOKEN}\"\n"), "").await;
    let admin = |method: reqwest::Method, p: &str, token: Option<&str>| {
        let mut r = client().request(method, format!("http://{}{p}", s.admin));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.send()
    };
    use reqwest::Method;
    assert_eq!(get(&s.gw, &path(A), &[]).await.status, 200);
    for p in ["/healthz", "/readyz"] {
        assert_eq!(admin(Method::GET, p, None).await.unwrap().status(), 200, "{p}");
    }
    let purge = format!("/cache{}", path(A));
    for (method, p) in [
        (Method::GET, "/metrics"),
        (Method::GET, "/cache"),
        (Method::DELETE, purge.as_str()),
    ] {
        for token in [None, Some("admin-token-0123456789abcdeX"), Some("")] {
            let r = admin(method.clone(), p, token).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {p} with {token:?}");
            assert!(r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
        }
    }
    // The purge did not happen: still a hit.
    let r = get(&s.gw, &path(A), &[]).await;
    assert!(r.header("cache-status").unwrap().contains("hit"));
    for (method, p) in [
        (Method::GET, "/metrics"),
        (Method::GET, "/cache"),
        (Method::DELETE, purge.as_str()),
    ] {
        assert_eq!(
            admin(method.clone(), p, Some(TOKEN)).await.unwrap().status(),
            200,
            "{method} {p}"
        );
    }
    let r = get(&s.gw, &path(A), &[]).await;
    assert!(!r.header("cache-status").unwrap().contains("hit"), "purged");

    // `asset-gateway purge` (a fleet purge) sends ADMIN_TOKEN: refused without it, done with
    // it. (The request just above stored A again.)
    let fleet_purge = |token: Option<&str>, target: &str| {
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.args(["purge", "--admin", &s.admin.to_string(), target])
            .env_remove("ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.env("ADMIN_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, out) = fleet_purge(None, &path(A));
    assert!(!ok && out.contains(&format!("{}: 401", s.admin)), "{out}");
    let (ok, out) = fleet_purge(Some("admin-token-0123456789abcdeX"), "/content/v1/assets/*");
    assert!(!ok && out.contains(&format!("{}: 401", s.admin)), "{out}");
    assert!(get(&s.gw, &path(A), &[])
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    let (ok, out) = fleet_purge(Some(TOKEN), &path(A));
    assert!(
        ok && out.contains(&format!("{}: 200 {{\"purged\":true}}", s.admin)),
        "{out}"
    );
    assert!(!get(&s.gw, &path(A), &[])
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    let (ok, out) = fleet_purge(Some(TOKEN), "/content/v1/assets/*");
    assert!(ok && out.contains("200 {\"purged\":true,\"assets\":1}"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_purges_come_from_loopback_and_check_warns() {
    // Loopback may purge without a token (every test client is on loopback; the refusal of
    // other peers is covered by access::admin's unit test).
    let s = setup("", "").await;
    assert_eq!(get(&s.gw, &path(A), &[]).await.status, 200);
    let r = client()
        .delete(format!("http://{}/cache{}", s.admin, path(A)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"purged\":true}\n");

    // `-t` warns about an admin listener other hosts reach without a token.
    let yaml = |admin: &str, token: &str| {
        format!(
            "gateway:\n  listen: [\"127.0.0.1:1\"]\n  admin: \"{admin}\"\n{token}  upstreams: {{a: {{peers: [\"127.0.0.1:2\"]}}}}\n  routes: [{{path: \"/a/{{id}}\", upstream: a, rewrite: \"/{{id}}\"}}]\n"
        )
    };
    let (ok, out) = common::check_config(&yaml("0.0.0.0:9090", ""));
    assert!(ok, "{out}");
    assert!(out.contains("warning: gateway.admin: 0.0.0.0:9090"), "{out}");
    for quiet in [
        yaml("127.0.0.1:9090", ""),
        yaml("0.0.0.0:9090", &format!("  admin_token: \"{TOKEN}\"\n")),
    ] {
        let (ok, out) = common::check_config(&quiet);
        assert!(ok && !out.contains("warning"), "{out}");
    }
    let (ok, out) = common::check_config(&yaml("0.0.0.0:9090", "  admin_token: short\n"));
    assert!(
        !ok && out.contains("gateway.admin_token: must be at least 16 bytes"),
        "{out}"
    );

    // `-t` warns about a JWK set fetched over plain HTTP from another host (anyone on the
    // path could hand the gateway keys of their own).
    let jwks_url = |url: &str| {
        yaml(
            "127.0.0.1:9090",
            &format!("  auth:\n    jwt:\n      jwks_url: \"{url}\"\n"),
        )
    };
    let (ok, out) = common::check_config(&jwks_url("http://auth.internal/jwks.json"));
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: gateway.auth.jwt.jwks_url: http://auth.internal/jwks.json is plain HTTP to another host"),
        "{out}"
    );
    for quiet in [
        "https://auth.internal/jwks.json",
        "http://127.0.0.1:8081/jwks.json",
        "http://[::1]/jwks.json",
        "http://localhost:8081/jwks.json",
    ] {
        let (ok, out) = common::check_config(&jwks_url(quiet));
        assert!(ok && !out.contains("warning"), "{quiet}: {out}");
    }
}

/// A stale object is served at once while one background request revalidates it
/// (stale-while-revalidate). That request is the gateway's own, made on behalf of a client
/// that was already admitted and charged: it must not be charged again or refused. Pingora's
/// background request has no client address, so charged it would count against one bucket
/// shared by every revalidation (here: the second object's revalidation was refused, 429,
/// and never reached the origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_revalidations_are_not_rate_limited() {
    let s = setup(
        "  client_ip: {trusted_proxies: [\"127.0.0.1/32\"]}\n",
        "      rate_limit: {per_client: 1/m, burst: 1}\n",
    )
    .await;
    for id in [A, B] {
        s.origin.set(
            id,
            Behavior::Validated {
                size: 1000,
                etag: "\"v1\"",
                max_age: 1,
            },
        );
    }
    // Each request from a client of its own (one token each).
    let from = |n: u8| format!("10.0.0.{n}");
    assert_eq!(
        get(&s.gw, &path(A), &[("x-forwarded-for", &from(1))])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&s.gw, &path(B), &[("x-forwarded-for", &from(2))])
            .await
            .status,
        200
    );
    // Let freshness (one second) pass: a wait, not a timing assertion.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for (id, n) in [(A, 3), (B, 4)] {
        let stale = get(&s.gw, &path(id), &[("x-forwarded-for", &from(n))]).await;
        assert_eq!(stale.status, 200, "{}", stale.body);
        let cs = stale.header("cache-status").unwrap_or_default().to_string();
        assert!(cs.ends_with("detail=stale-while-revalidate"), "{cs}");
    }
    // Both background revalidations reach the origin, with the object's validator.
    for id in [A, B] {
        let start = Instant::now();
        loop {
            let seen = origin_requests(&s.origin, id);
            if seen.len() == 2 {
                assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
                break;
            }
            assert!(
                start.elapsed() < EVENTUALLY,
                "no background revalidation of {id}: {} origin requests",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
