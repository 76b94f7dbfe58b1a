//! The config file's checks, each named by its key path.

use super::routes::check_template;
use super::*;
use std::time::Duration;

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
    let up = &c.gateway.upstreams[0];
    assert_eq!(up.name, "assets");
    let peer = &up.peers[1];
    assert_eq!((peer.label.as_str(), peer.weight), ("127.0.0.1:9002", 2));
    assert_eq!(peer.addr, "127.0.0.1:9002".parse().unwrap());
    assert_eq!(peer.host, "assets.internal");
    assert_eq!(up.timeouts.connect, Duration::from_secs(1));
    assert_eq!(
        up.ejection,
        Some(Ejection {
            failures: 3,
            cooldown: Duration::from_secs(10)
        })
    );
    assert_eq!(c.gateway.downstream.keepalive_timeout, Duration::from_secs(60));
    assert_eq!(c.gateway.routes[0].upstream, 0);
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
    assert!(
        p.contains(
            "gateway.routes[1].path: \"/content/v1/assets/{id}\" is already the path of gateway.routes[0]"
        ),
        "{p}"
    );
}

#[test]
fn durations_are_typed() {
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
    assert_eq!(c.gateway.admin, Some("127.0.0.1:9090".parse().unwrap()));
    assert!(!c.gateway.server_timing);
    assert_eq!(c.gateway.access_log, Some(AccessLogFormat::Json));
    let off = VALID.replace("  listen:", "  access_log: {enabled: false}\n  listen:");
    assert_eq!(Config::from_yaml(&off).unwrap().gateway.access_log, None);
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
    let yaml = VALID.replace(
        "  upstreams:",
        "  downstream: {max_uri_bytes: 4KiB, max_header_bytes: 16384, max_headers: 50, header_timeout: 5s}\n  upstreams:",
    );
    let d = Config::from_yaml(&yaml).unwrap().gateway.downstream;
    let l = d.limits;
    assert_eq!(
        (l.max_uri_bytes, l.max_header_bytes, l.max_headers),
        (4096, 16384, 50)
    );
    assert_eq!(d.header_timeout, Duration::from_secs(5));
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
    let up = &c.gateway.upstreams[0];
    assert_eq!(up.selection, Selection::Consistent);
    assert_eq!(up.retries, 1);
    let hc = up.health_check.as_ref().unwrap();
    assert_eq!((hc.healthy_after, hc.unhealthy_after), (2, 3));
    assert_eq!(hc.expect_status, vec![200, 204]);
    assert_eq!(hc.interval, Duration::from_secs(2));
    assert_eq!(up.ejection.map(|e| e.failures), Some(5));
    let (name, value) = &up.headers[0];
    assert_eq!(
        (name.as_str(), value.to_str().unwrap()),
        ("authorization", "Bearer s3cret")
    );
    assert!(value.is_sensitive());
    let off = with_upstream_keys("      passive_ejection: {failures: 0}\n");
    assert_eq!(
        Config::from_yaml(&off).unwrap().gateway.upstreams[0].ejection,
        None
    );
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

#[test]
fn streaming_keys() {
    let c = Config::from_yaml(VALID).unwrap();
    assert_eq!(
        c.gateway.streaming,
        Streaming {
            read_size: 16 * 1024,
            queue_depth: 2
        }
    );
    assert_eq!(c.gateway.upstreams[0].body_read_size, 16 * 1024);
    let yaml = VALID.replace(
        "  upstreams:",
        "  streaming: {read_size: 64KiB, queue_depth: 4}\n  upstreams:",
    );
    let c = Config::from_yaml(&yaml).unwrap();
    assert_eq!(
        (c.gateway.streaming.read_size, c.gateway.streaming.queue_depth),
        (65536, 4)
    );
    assert_eq!(c.gateway.upstreams[0].body_read_size, 65536);
    let p = problems(&VALID.replace(
        "  upstreams:",
        "  streaming: {read_size: 4KiB, queue_depth: 0}\n  upstreams:",
    ));
    assert!(
        p.contains("gateway.streaming.read_size: 4096 bytes is outside 16KiB..=1MiB"),
        "{p}"
    );
    assert!(
        p.contains("gateway.streaming.queue_depth: 0 is outside 1..=64"),
        "{p}"
    );
}

const PEERS: &str = r#"peers: ["127.0.0.1:9001", {addr: "127.0.0.1:9002", weight: 2}]
      host: assets.internal"#;

#[test]
fn dns_discovery_loads_without_resolving() {
    let yaml = VALID
        .replace(
            PEERS,
            "discovery: {dns: \"assets.media.svc.cluster.local.:8080\"}",
        )
        .replace("  upstreams:", "  resolver: \"127.0.0.1:5353\"\n  upstreams:");
    let c = Config::from_yaml(&yaml).unwrap();
    let up = &c.gateway.upstreams[0];
    assert!(up.peers.is_empty());
    let d = up.discovery.as_ref().unwrap();
    assert_eq!(d.name, "assets.media.svc.cluster.local.");
    assert_eq!(d.port, 8080);
    assert_eq!(d.interval, Duration::from_secs(5));
    // The Host defaults to the name (without the root dot), never an address.
    assert_eq!(d.host, "assets.media.svc.cluster.local:8080");
    assert_eq!(d.resolver, Some("127.0.0.1:5353".parse().unwrap()));

    let yaml = VALID.replace(
        PEERS,
        "discovery: {dns: \"assets:8080\", interval: 2s}\n      host: assets.internal",
    );
    let c = Config::from_yaml(&yaml).unwrap();
    let d = c.gateway.upstreams[0].discovery.as_ref().unwrap();
    assert_eq!(
        (d.interval, d.host.to_str().unwrap()),
        (Duration::from_secs(2), "assets.internal")
    );
    assert_eq!(d.resolver, None);
}

#[test]
fn dns_discovery_checks_are_named_by_key() {
    let p = problems(&VALID.replace(
        "      host: assets.internal",
        "      discovery: {dns: \"assets:8080\"}",
    ));
    assert!(
        p.contains("gateway.upstreams.assets: peers and discovery exclude each other"),
        "{p}"
    );
    for (dns, expected) in [
        ("10.0.0.1:8080", "is an IP address, not a DNS name"),
        ("[::1]:8080", "is an IP address, not a DNS name"),
        ("assets", "is not name:port"),
        ("assets:0", "the port must be 1 to 65535"),
        ("assets:http", "the port must be 1 to 65535"),
        ("-assets.test:80", "is not a valid DNS name"),
        ("a..b:80", "is not a valid DNS name"),
        (":80", "is not a valid DNS name"),
    ] {
        let p = problems(&VALID.replace(PEERS, &format!("discovery: {{dns: \"{dns}\"}}")));
        assert!(
            p.contains(&format!("gateway.upstreams.assets.discovery.dns: \"{dns}\"")) && p.contains(expected),
            "{dns}: {p}"
        );
    }
    let p = problems(&VALID.replace(PEERS, "discovery: {dns: \"assets:80\", interval: 999ms}"));
    assert!(
        p.contains("gateway.upstreams.assets.discovery.interval: must be at least 1s"),
        "{p}"
    );
    let p = problems(&VALID.replace("  upstreams:", "  resolver: \"localhost:53\"\n  upstreams:"));
    assert!(
        p.contains("gateway.resolver: \"localhost:53\" is not an IP:port address"),
        "{p}"
    );
    let p = problems(&VALID.replace(PEERS, "host: assets.internal"));
    assert!(
        p.contains("gateway.upstreams.assets.peers: at least one peer is required"),
        "{p}"
    );
}

/// `VALID` with a `gateway.cache` section made of `lines` (each already indented).
fn with_cache(lines: &str) -> String {
    VALID.replace("  routes:\n", &format!("  cache:\n{lines}\n  routes:\n"))
}

#[test]
fn cache_settings_and_defaults() {
    let c = Config::from_yaml(&with_cache("    memory: 512MiB")).unwrap();
    let cache = c.gateway.cache.unwrap();
    assert_eq!(
        cache,
        CacheSettings {
            memory: 512 << 20,
            max_object_size: 1 << 30,
            default_ttl: Duration::from_secs(3600),
            lock_timeout: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(10),
            uncacheable_ttl: Duration::from_secs(30),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(3600),
            disk: None,
            slice: Some(4 << 20),
        }
    );
    assert!(c.gateway.routes[0].cache, "routes use the cache by default");
    let slice = |v: &str| Config::from_yaml(&with_cache(&format!("    memory: 64MiB\n    slice: {v}")));
    assert_eq!(slice("off").unwrap().gateway.cache.unwrap().slice, None);
    assert_eq!(slice("1MiB").unwrap().gateway.cache.unwrap().slice, Some(1 << 20));
    let p = problems(&with_cache("    memory: 64MiB\n    slice: 4KiB"));
    assert!(
        p.contains("gateway.cache.slice: 4096 bytes is below the minimum"),
        "{p}"
    );
    let p = problems(&with_cache("    memory: 64MiB\n    slice: on"));
    assert!(p.contains("gateway.cache.slice") && p.contains("\"off\""), "{p}");
    let c = Config::from_yaml(&with_cache(
        "    memory: 64MiB\n    max_object_size: 8MiB\n    default_ttl: 5m\n    lock_timeout: 2s\n    negative_ttl: 1m\n    uncacheable_ttl: 5s\n    stale_while_revalidate: 0s\n    stale_if_error: 1m",
    ))
    .unwrap();
    let cache = c.gateway.cache.unwrap();
    assert_eq!(cache.negative_ttl, Duration::from_secs(60));
    assert_eq!(cache.uncacheable_ttl, Duration::from_secs(5));
    assert_eq!(cache.stale_while_revalidate, Duration::ZERO, "0s turns it off");
    assert_eq!(cache.stale_if_error, Duration::from_secs(60));
    assert_eq!(cache.max_object_size, 8 << 20);
    assert_eq!(cache.default_ttl, Duration::from_secs(300));
    assert_eq!(cache.lock_timeout, Duration::from_secs(2));
    let off = with_cache("    memory: 64MiB").replace(
        "rewrite: /v1/assets/{id}",
        "rewrite: /v1/assets/{id}\n      cache: false",
    );
    assert!(!Config::from_yaml(&off).unwrap().gateway.routes[0].cache);
    // Without gateway.cache, nothing is cached.
    assert!(!Config::from_yaml(VALID).unwrap().gateway.routes[0].cache);
}

#[test]
fn cache_problems_name_their_keys() {
    // A disk path under a regular file cannot be created.
    let file = std::env::temp_dir().join(format!("agw-config-disk-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    let p = problems(&with_cache(&format!(
        "    memory: 64MiB\n    disk: {{path: {}/cache, size: 1GiB}}",
        file.display()
    )));
    let _ = std::fs::remove_file(&file);
    assert!(p.contains("gateway.cache.disk.path: "), "{p}");
    assert!(p.contains("is not a directory"), "{p}");
    let ok = std::env::temp_dir().join(format!("agw-config-disk-ok-{}", std::process::id()));
    let p = problems(&with_cache(&format!(
        "    memory: 64MiB\n    disk: {{path: {}, size: 1KiB}}",
        ok.display()
    )));
    assert!(
        p.contains("gateway.cache.disk.size: 1024 bytes is below the minimum of 1MiB"),
        "{p}"
    );
    let p = problems(&with_cache("    memory: 64MiB\n    disk: {path: /nonexistent}"));
    assert!(p.contains("missing field `size`"), "{p}");
    // Larger than the file system it would be on.
    let p = problems(&with_cache(&format!(
        "    memory: 64MiB\n    disk: {{path: {}, size: 1000000GiB}}",
        ok.display()
    )));
    assert!(
        p.contains("gateway.cache.disk.size: ") && p.contains("is larger than the file system of"),
        "{p}"
    );
    // A valid one: checked, not created (the gateway creates it at start).
    let c = Config::from_yaml(&with_cache(&format!(
        "    memory: 64MiB\n    disk: {{path: {}, size: 20GiB}}",
        ok.display()
    )))
    .unwrap();
    let disk = c.gateway.cache.unwrap().disk.unwrap();
    assert_eq!((disk.path.as_path(), disk.size), (ok.as_path(), 20 << 30));
    assert!(!ok.exists());
    // An existing one is probed, and left as it was.
    std::fs::create_dir_all(&ok).unwrap();
    assert!(Config::from_yaml(&with_cache(&format!(
        "    memory: 64MiB\n    disk: {{path: {}, size: 20GiB}}",
        ok.display()
    )))
    .is_ok());
    assert_eq!(std::fs::read_dir(&ok).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&ok);
    let p = problems(&with_cache("    memory: 64MiB\n    memroy_size: 1"));
    assert!(
        p.contains("gateway.cache") && p.contains("unknown field `memroy_size`"),
        "{p}"
    );
    let p = problems(&with_cache("    max_object_size: 1MiB"));
    assert!(
        p.contains("gateway.cache") && p.contains("missing field `memory`"),
        "{p}"
    );
    let p = problems(&with_cache("    memory: 64k"));
    assert!(p.contains("gateway.cache.memory: invalid size"), "{p}");
    let p = problems(&with_cache("    memory: 1KiB"));
    assert!(
        p.contains("gateway.cache.memory: 1024 bytes is below the minimum of 1MiB"),
        "{p}"
    );
    let p = problems(&with_cache("    memory: 64MiB\n    lock_timeout: 0s"));
    assert!(p.contains("gateway.cache.lock_timeout: invalid duration"), "{p}");
    let p = problems(&VALID.replace(
        "rewrite: /v1/assets/{id}",
        "rewrite: /v1/assets/{id}\n      cache: true",
    ));
    assert!(p.contains("gateway.routes[0].cache: needs gateway.cache"), "{p}");
}

#[test]
fn access_keys_are_checked_with_their_paths() {
    let with = |gateway: &str, route: &str| {
        VALID
            .replace("  upstreams:", &format!("{gateway}  upstreams:"))
            .replace(
                "      rewrite: /v1/assets/{id}\n",
                &format!("      rewrite: /v1/assets/{{id}}\n{route}"),
            )
    };
    let p = problems(&with(
        "  admin_token: short\n  auth:\n    signed_url:\n      keys: {k1: \"too-short-secret\", \"bad id\": \"0123456789abcdef0123456789abcdef\"}\n    jwt: {jwks_url: \"ftp://x/keys\"}\n  client_ip: {trusted_proxies: [\"10.0.0.0/33\"], proxy_protocol: true}\n",
        "      auth: [jwt, jwt]\n      rate_limit: {per_client: 100/d, burst: 0}\n      cors: {origins: [\"https://a.example/\"]}\n",
    ));
    for expected in [
        "gateway.admin_token: must be at least 16 bytes",
        "gateway.auth.signed_url.keys.k1: the secret must be at least 32 bytes",
        "gateway.auth.signed_url.keys.bad id: key ids use only",
        "gateway.auth.jwt.jwks_url: \"ftp://x/keys\" is not an http:// or https:// URL",
        "gateway.client_ip.trusted_proxies[0]: \"10.0.0.0/33\" is not a CIDR range",
        "gateway.routes[0].auth[1]: jwt is listed twice",
        "gateway.routes[0].rate_limit.per_client: \"100/d\" is not a rate",
        "gateway.routes[0].cors.origins[0]: \"https://a.example/\" is not an origin",
    ] {
        assert!(p.contains(expected), "missing {expected:?} in:\n{p}");
    }
    // The secrets never appear in an error.
    assert!(!p.contains("too-short-secret"), "{p}");
    let p = problems(&with("", "      auth: [signed_url]\n"));
    assert!(
        p.contains("gateway.routes[0].auth[0]: signed_url needs gateway.auth.signed_url"),
        "{p}"
    );
    let p = problems(&with("  client_ip: {proxy_protocol: true}\n", ""));
    assert!(
        p.contains("gateway.client_ip.proxy_protocol: needs trusted_proxies"),
        "{p}"
    );
    let p = problems(&with("  auth: {jwt: {jwks: /nonexistent/jwks.json}}\n", ""));
    assert!(
        p.contains("gateway.auth.jwt.jwks: cannot read \"/nonexistent/jwks.json\""),
        "{p}"
    );

    let c = Config::from_yaml(&with(
        "  auth: {signed_url: {keys: {k1: \"0123456789abcdef0123456789abcdef\"}, max_ttl: 1h}}\n",
        "      auth: [signed_url]\n      rate_limit: {per_client: 100/s}\n",
    ))
    .unwrap();
    let route = &c.gateway.routes[0].access;
    assert_eq!(route.auth, [AuthMethod::SignedUrl]);
    let limit = route.rate_limit.unwrap();
    assert_eq!(
        (limit.interval, limit.burst, limit.counts),
        (Duration::from_millis(10), 100, Counts::All)
    );
    let keys = c.gateway.access.auth.signed_url.as_ref().unwrap();
    assert_eq!(keys.max_ttl, Duration::from_secs(3600));
}

/// What a route forwards and what access control removes agree: the credentials are neither
/// listed in `forward_headers` nor let through `query.allow`, the subject header is the
/// gateway's own; `-t` says what each route's access control does.
#[test]
fn forwarding_and_access_control_agree() {
    let auth = "  auth:\n    signed_url: {keys: {k1: \"0123456789abcdef0123456789abcdef\"}}\n    jwt: {jwks_url: \"http://127.0.0.1:1/keys\", subject_header: X-Auth-Subject}\n";
    let with = |route: &str| {
        with_cache("    memory: 8MiB")
            .replace("  routes:", &format!("{auth}  routes:"))
            .replace(
                "      rewrite: /v1/assets/{id}\n",
                &format!("      rewrite: /v1/assets/{{id}}\n{route}"),
            )
    };
    let p = problems(&with(
        "      auth: [signed_url, jwt]\n      forward_headers: [accept, Authorization, x-auth-subject]\n      query: {allow: [w, sig, exp]}\n",
    ));
    for expected in [
        "gateway.routes[0].forward_headers[1]: \"Authorization\": on a route with auth the gateway verifies the credential and removes the header",
        "gateway.routes[0].forward_headers[2]: \"x-auth-subject\" is gateway.auth.jwt.subject_header",
        "gateway.routes[0].query.allow[1]: \"sig\" is a parameter of the URL signature",
        "gateway.routes[0].query.allow[2]: \"exp\" is a parameter of the URL signature",
    ] {
        assert!(p.contains(expected), "missing {expected:?} in:\n{p}");
    }
    assert!(!p.contains("allow[0]"), "{p}");
    // Without auth on the route, forwarding Authorization is the operator's choice (RFC 9111
    // then keeps such answers out of the cache), and `exp` is just a parameter.
    let c = Config::from_yaml(&with(
        "      forward_headers: [accept, authorization]\n      query: {allow: [exp]}\n",
    ))
    .unwrap();
    assert!(c
        .explain()
        .contains("client headers forwarded: accept, authorization"));
    // The subject header may not be one the gateway already uses.
    let p = problems(&with("").replace("subject_header: X-Auth-Subject", "subject_header: X-Request-Id"));
    assert!(
        p.contains("gateway.auth.jwt.subject_header: \"X-Request-Id\" is a header the gateway already uses"),
        "{p}"
    );

    let c = Config::from_yaml(&with(
        "      auth: [signed_url, jwt]\n      rate_limit: {per_client: 10/s, burst: 40, counts: upstream}\n      cors: {origins: [\"https://app.example.com\"]}\n",
    ))
    .unwrap();
    let explained = c.explain();
    for expected in [
        "  auth: a signed URL or a bearer JWT admits, checked before the cache (a hit needs it too); Authorization is removed once verified; exp, kid and sig are checked, then removed (never forwarded, never keyed); the upstream gets the token's sub in x-auth-subject",
        "  rate limit per client: 10/s, burst 40; counts only requests that reach the upstream",
        "  cors: https://app.example.com; Access-Control-Allow-Origin and Vary: Origin are added to each response",
    ] {
        assert!(explained.contains(expected), "missing {expected:?} in:\n{explained}");
    }
}
