//! The command line: `-t` validation, bad configs refused with the key's path, a listener
//! that cannot bind.

mod common;

use common::{check_config, check_config_file, free_addr, simple_config, temp_dir, BIN};
use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn write_conf(yaml: &str) -> String {
    let path = temp_dir().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

#[test]
fn the_bundled_example_config_is_valid() {
    let (ok, out) = check_config_file(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/asset-gateway.yaml"
    )));
    assert!(ok, "{out}");
    assert!(out.contains("configuration OK"), "{out}");
}

#[test]
fn dash_t_reports_every_problem_with_file_and_key_and_exits_non_zero() {
    let yaml = simple_config(&["127.0.0.1:9".parse().unwrap()], "      pears: []")
        .replace("{listen}", "127.0.0.1:1")
        .replace("threads: 2", "thread: 4");
    let path = write_conf(&yaml);
    let (ok, out) = check_config_file(Path::new(&path));
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("{path}: thread: unknown key")), "{out}");
    assert!(
        out.contains("gateway.upstreams.assets.pears: unknown field `pears`"),
        "{out}"
    );
}

#[test]
fn cross_references_are_checked_by_dash_t() {
    let yaml = simple_config(&["127.0.0.1:9".parse().unwrap()], "")
        .replace("{listen}", "127.0.0.1:1")
        .replace(
            "upstream: assets\n      rewrite: /v1/assets/{id}",
            "upstream: asets\n      rewrite: /v1/assets/",
        );
    let (ok, out) = check_config(&yaml);
    assert!(!ok, "{out}");
    assert!(
        out.contains("gateway.routes[0].upstream: unknown upstream \"asets\""),
        "{out}"
    );
    assert!(
        out.contains("gateway.routes[0].rewrite: \"/v1/assets/\" does not use {id}"),
        "{out}"
    );
}

#[test]
fn a_missing_file_or_flag_is_a_clear_error() {
    let (ok, out) = check_config_file(Path::new("/nonexistent/gw.yaml"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("/nonexistent/gw.yaml: cannot read the file"),
        "{out}"
    );
    let (code, out) = run(&["-t"]);
    assert_ne!(code, 0);
    assert!(out.contains("pass -c <file>"), "{out}");
}

#[test]
fn a_listener_that_cannot_bind_ends_the_process() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dead = common::dead_peer();
    let yaml = simple_config(&[dead.addr], "").replace("{listen}", &addr.to_string());
    let path = write_conf(&yaml);
    let (code, out) = run(&["-c", &path]);
    assert_ne!(code, 0);
    assert!(out.contains(&format!("cannot listen on {addr}")), "{out}");
}

#[test]
fn dash_d_detaches_writes_its_pid_and_serves() {
    use std::io::{Read, Write};
    let dir = temp_dir();
    let dead = common::dead_peer();
    let addr = free_addr();
    let yaml = format!(
        "pid_file: {pid}\nupgrade_sock: {sock}\nerror_log: {log}\ndaemon_wait_for_ready: true\n{rest}",
        pid = dir.join("gw.pid").display(),
        sock = dir.join("up.sock").display(),
        log = dir.join("gw.log").display(),
        rest = simple_config(&[dead.addr], "").replace("{listen}", &addr.to_string()),
    );
    let path = write_conf(&yaml);
    // The parent returns once the daemon is up (daemon_wait_for_ready).
    let (code, out) = run(&["-d", "-c", &path]);
    assert_eq!(code, 0, "{out}");
    let pid: u32 = std::fs::read_to_string(dir.join("gw.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Pingora signals readiness before the listeners start (for -u ordering): wait for them.
    let start = std::time::Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) => assert!(
                start.elapsed() < common::EVENTUALLY,
                "the daemon does not listen: {e}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    common::signal(pid, "TERM");
    let start = std::time::Instant::now();
    // Gone, or a zombie nobody reaps (the daemon's parent is init, which may not reap here).
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(")").next().unwrap_or("").trim_start().starts_with("Z"))
            .unwrap_or(false)
    };
    while running() {
        assert!(start.elapsed() < common::EVENTUALLY, "the daemon did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.join("gw.log")).unwrap();
    assert!(log.contains("path=\"/nope\" status=404"), "{log}");
}
