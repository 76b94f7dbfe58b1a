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

/// `-d` exits 0 however the daemon's readiness signal and the parent's wait are ordered: ten
/// starts pinned to one CPU beside a busy loop, where the daemon is often ready first (Pingora
/// 0.9.1 registered the parent's SIGUSR1 listener after the fork: about half of such starts
/// died by SIGUSR1, exit status 138, before patch pingora-core/10).
#[test]
fn dash_d_survives_a_daemon_ready_before_its_parent_waits() {
    let dir = temp_dir();
    let dead = common::dead_peer();
    let mut busy = Command::new("taskset")
        .args(["-c", "0", "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("taskset (util-linux)");
    for i in 0..10 {
        let pid_file = dir.join(format!("gw{i}.pid"));
        let yaml = format!(
            "pid_file: {pid}\nupgrade_sock: {sock}\nerror_log: {log}\ndaemon_wait_for_ready: true\n{rest}",
            pid = pid_file.display(),
            sock = dir.join(format!("up{i}.sock")).display(),
            log = dir.join(format!("gw{i}.log")).display(),
            rest = simple_config(&[dead.addr], "").replace("{listen}", &free_addr().to_string()),
        );
        let path = write_conf(&yaml);
        let status = Command::new("taskset")
            .args(["-c", "0", BIN, "-d", "-c", &path])
            .status()
            .unwrap();
        let pid = std::fs::read_to_string(&pid_file).ok();
        if let Some(pid) = pid.as_deref().and_then(|p| p.trim().parse::<u32>().ok()) {
            common::signal(pid, "KILL");
        }
        if !status.success() {
            let _ = busy.kill();
        }
        assert!(status.success(), "start {i}: the parent exited with {status}");
    }
    let _ = busy.kill();
    let _ = busy.wait();
}

/// A stand-in for a replica's admin listener: answers every connection with `answer` (after
/// reading the request head), then closes; with `drip`, sends one byte of it every 300 ms.
fn fake_admin(answer: &'static [u8], drip: bool) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                if !drip {
                    let _ = c.write_all(answer);
                    return;
                }
                for byte in answer.iter().cycle() {
                    if c.write_all(&[*byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
            });
        }
    });
    addr
}

/// Runs `asset-gateway purge` with ADMIN_TOKEN set; (exit code, stdout, stderr), or a panic if
/// it runs longer than 20 s (it must end on its own).
fn purge(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("purge")
        .args(args)
        .env("ADMIN_TOKEN", "s3cret")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("asset-gateway purge did not end by itself");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `asset-gateway purge` believes only an admin listener's purge answer (200 and a JSON
/// object with `purged`), prints what a replica sent with control bytes escaped, gives each
/// replica one deadline (a server dripping bytes cannot hold it), and warns when the token
/// would cross the network in clear text.
#[test]
fn a_fleet_purge_trusts_only_purge_answers() {
    let good = fake_admin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"purged\":true}",
        false,
    );
    let no_content = fake_admin(b"HTTP/1.1 204 No Content\r\n\r\n", false);
    let not_json = fake_admin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\n\x1b]0;pwned\x07\x1b[2Jok",
        false,
    );
    let list = format!("{good},{no_content},{not_json}");
    let (code, out, err) = purge(&["--admin", &list, "/content/v1/assets/x"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&format!("{good}: 200 {{\"purged\":true}}")), "{out}");
    assert!(
        out.contains(&format!(
            "{no_content}: 204 (empty body) (failed: not an admin listener's purge answer)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{not_json}: 200 \\x1b]0;pwned\\x07\\x1b[2Jok (failed")),
        "{out}"
    );
    assert!(
        !out.contains('\x1b') && !out.contains('\x07'),
        "raw control bytes printed: {out:?}"
    );
    assert!(!err.contains("clear text"), "loopback needs no warning: {err}");

    let drip = fake_admin(b"HTTP/1.1 200 OK\r\nX-Slow: 1\r\n", true);
    let (code, out, _) = purge(&[
        "--timeout",
        "2",
        "--admin",
        &drip.to_string(),
        "/content/v1/assets/x",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{drip}: failed: no complete answer within the deadline")),
        "{out}"
    );

    // TEST-NET-1: never a loopback address (nothing answers there; the warning comes first).
    let (code, _, err) = purge(&[
        "--timeout",
        "1",
        "--admin",
        "192.0.2.1:9090",
        "/content/v1/assets/x",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("ADMIN_TOKEN goes in clear text (plain HTTP) to 192.0.2.1:9090"),
        "{err}"
    );
}
