//! Test harness: the real `asset-gateway` binary as a child process on 127.0.0.1, its
//! config written to a temporary file, its log lines captured.
#![allow(dead_code)]

pub mod ca;
pub mod dns;
pub mod h2raw;
pub mod origin;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_asset-gateway");

/// Generous limit for things that must happen eventually (a process starting, a log line
/// appearing). It only stops a broken test from hanging; no test asserts on time.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

pub const ID: &str = "3f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0d";

/// Waits until `cond` holds; fails the test after `EVENTUALLY` (nothing is timed).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    eventually_async(what, async || cond()).await
}

/// [`eventually`] for a condition that must await (a scrape, a request).
pub async fn eventually_async(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < EVENTUALLY, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the cache behind `admin` has no fill and no disk write in flight: a client can
/// have every byte of its response a moment before the fill that sent them is committed, and
/// a disk copy is committed after its fill ended.
pub async fn settled(admin: SocketAddr) {
    eventually_async("every fill and disk write ended", async || {
        let json = cache_json(admin).await;
        json["fills_in_flight"] == 0 && json["disk"]["writes_in_flight"].as_u64().unwrap_or(0) == 0
    })
    .await
}

/// `DELETE /cache/content/v1/assets/<id>` on the admin listener (it answers once the asset's
/// files are deleted): its JSON answer.
pub async fn purge_asset(admin: SocketAddr, id: &str) -> serde_json::Value {
    let r = client()
        .delete(format!("http://{admin}/cache/content/v1/assets/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// `GET /cache` on the admin listener.
pub async fn cache_json(admin: SocketAddr) -> serde_json::Value {
    let r = client()
        .get(format!("http://{admin}/cache"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// A free port on 127.0.0.1 (bound, then released for the child to take). Two calls can
/// return the same port: for several addresses of one config use [`free_addrs`].
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// An address on 127.0.0.1 where nothing listens, and nothing can start listening while this
/// lives: the port is bound without `listen`, so connecting is refused. The "dead" peer of a
/// test (a port merely released could be handed to the gateway's own listener).
pub struct DeadPeer {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

pub fn dead_peer() -> DeadPeer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    DeadPeer {
        addr: socket.local_addr().unwrap(),
        _socket: socket,
    }
}

/// `N` distinct free ports on 127.0.0.1 (all bound at once, then released): separate calls
/// of [`free_addr`] can return the same port.
pub fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap())
}

/// A fresh directory for one test's files.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "asset-gateway-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// YAML for one upstream named `assets` over `peers`, and the standard route.
pub fn simple_config(peers: &[SocketAddr], upstream_extra: &str) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        r#"threads: 2
gateway:
  listen: ["{{listen}}"]
  upstreams:
    assets:
      peers: [{}]
      host: assets.internal
{upstream_extra}
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
    - path: /content/v1/thumbs/{{id}}
      upstream: assets
      rewrite: /v1/thumbs/{{id}}
      query: drop
"#,
        peers.join(", ")
    )
}

pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub conf_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// Set once the process's stderr reached its end (every line is in `logs`).
    logs_done: Arc<AtomicBool>,
}

impl Gateway {
    /// Starts the gateway with `yaml`, where `{listen}` is replaced by a free address, and
    /// waits until it accepts connections.
    pub fn start(yaml: &str) -> Gateway {
        Self::start_with_args(yaml, &[])
    }

    pub fn start_with_args(yaml: &str, args: &[&str]) -> Gateway {
        Self::start_at(yaml, args, free_addr())
    }

    /// `start_with_args` on a listen address the caller picked (e.g. with [`free_addrs`], so
    /// that it differs from the other addresses in `yaml`).
    pub fn start_at(yaml: &str, args: &[&str], addr: SocketAddr) -> Gateway {
        let dir = temp_dir();
        let conf_path = dir.join("gateway.yaml");
        let yaml = yaml.replace("{listen}", &addr.to_string());
        let yaml = format!(
            "pid_file: {}\nupgrade_sock: {}\n{yaml}",
            dir.join("gateway.pid").display(),
            dir.join("upgrade.sock").display()
        );
        std::fs::write(&conf_path, yaml).unwrap();
        let mut g = Gateway {
            child: None,
            addr,
            dir,
            conf_path,
            logs: Default::default(),
            logs_done: Default::default(),
        };
        g.spawn(args);
        g.wait_ready();
        g
    }

    /// Starts another process on the same config file (e.g. with `-u`).
    pub fn spawn(&mut self, args: &[&str]) -> &mut Child {
        let mut child = Command::new(BIN)
            .arg("-c")
            .arg(&self.conf_path)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TEST_GATEWAY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn asset-gateway");
        let stderr = child.stderr.take().unwrap();
        let (logs, done) = (self.logs.clone(), self.logs_done.clone());
        done.store(false, Ordering::SeqCst);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_GATEWAY_ECHO").is_some() {
                    eprintln!("[gateway] {line}");
                }
                logs.lock().unwrap().push(line);
            }
            done.store(true, Ordering::SeqCst);
        });
        self.child = Some(child);
        self.child.as_mut().unwrap()
    }

    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        while std::net::TcpStream::connect(self.addr).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "gateway exited early ({status}); log:\n{}",
                    self.logs().join("\n")
                );
            }
            assert!(
                start.elapsed() < EVENTUALLY,
                "gateway did not start; log:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn asset_url(&self, id: &str) -> String {
        self.url(&format!("/content/v1/assets/{id}"))
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn access_lines(&self) -> Vec<String> {
        self.logs()
            .into_iter()
            .filter(|l| l.contains(" access] "))
            .collect()
    }

    /// Waits until a log line satisfies `pred`; returns it.
    pub async fn wait_for_log(&self, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.logs().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                start.elapsed() < EVENTUALLY,
                "log line never appeared; log:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client that never pools across tests and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// How a read from the server ended when it did not bring what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection (end of stream, or a reset).
    Closed,
    /// Nothing arrived for the whole wait (`EVENTUALLY`, or the idle time given).
    TimedOut,
}

/// What [`RawConn::response`] read instead of a whole response: how the connection ended and
/// the bytes of the incomplete response.
#[derive(Debug)]
pub struct Ended {
    pub end: End,
    pub partial: Vec<u8>,
}

/// Sends raw bytes on a new connection and reads until the server closes or `idle` passes
/// without data. Returns everything read and which of the two ended it.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], idle: Duration) -> (Vec<u8>, End) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout(idle, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, End::Closed),
            Err(_) => return (out, End::TimedOut),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads a blocking socket until the server closes it or it stays silent for `EVENTUALLY`
/// (a read timeout is not a close). Returns what was read and which of the two happened.
pub fn read_to_end_blocking(s: &mut std::net::TcpStream) -> (Vec<u8>, End) {
    use std::io::{ErrorKind, Read};
    s.set_read_timeout(Some(EVENTUALLY)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, End::Closed),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, End::TimedOut)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (out, End::Closed),
        }
    }
}

/// One HTTP/1.1 client connection driven by hand, to see exactly what the server does with it.
pub struct RawConn {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        Self::from_stream(tokio::net::TcpStream::connect(addr).await.unwrap())
    }

    pub fn from_stream(s: tokio::net::TcpStream) -> RawConn {
        RawConn { s, buf: Vec::new() }
    }

    pub async fn send(&mut self, data: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.s.write_all(data).await.unwrap();
    }

    async fn fill(&mut self) -> Result<(), End> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout(EVENTUALLY, self.s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(_) => Err(End::Closed),
            Err(_) => Err(End::TimedOut),
        }
    }

    /// Reads one response framed by Content-Length (no body for HEAD, 1xx, 204 and 304).
    /// `Err` when the server closed the connection, or went silent for `EVENTUALLY`, before
    /// the whole response came. A head without a status or a Content-Length fails the test.
    pub async fn response(&mut self, head_request: bool) -> Result<RawResponse, Ended> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if let Err(end) = self.fill().await {
                return Err(Ended {
                    end,
                    partial: std::mem::take(&mut self.buf),
                });
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let mut r = RawResponse {
            status,
            head,
            body: Vec::new(),
        };
        let len: usize = if head_request || status == 204 || status == 304 || status < 200 {
            0
        } else {
            r.header("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("no Content-Length in {:?}", r.head))
        };
        while self.buf.len() < end + len {
            if let Err(end) = self.fill().await {
                return Err(Ended {
                    end,
                    partial: std::mem::take(&mut self.buf),
                });
            }
        }
        self.buf.drain(..end);
        r.body = self.buf.drain(..len).collect();
        Ok(r)
    }

    /// The next bytes from the server (buffered ones first); `Err` once it closed or went
    /// silent for `EVENTUALLY`.
    pub async fn read_chunk(&mut self) -> Result<Vec<u8>, End> {
        if self.buf.is_empty() {
            self.fill().await?;
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Everything the server sends until it closes (`End::Closed`) or goes silent for
    /// `EVENTUALLY` (`End::TimedOut`).
    pub async fn read_to_close(&mut self) -> (Vec<u8>, End) {
        let mut all = std::mem::take(&mut self.buf);
        loop {
            match self.fill().await {
                Ok(()) => all.append(&mut self.buf),
                Err(end) => return (all, end),
            }
        }
    }

    /// True when the server closes the connection (read returns 0 or fails); false when it
    /// sends more data or stays silent for `EVENTUALLY`.
    pub async fn closed_by_server(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(EVENTUALLY, self.s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(_) => false,
        }
    }
}

impl Gateway {
    /// The access line of the request with this `X-Request-Id` (waits for it).
    pub async fn access_line(&self, request_id: &str) -> String {
        let field = format!("request_id={request_id}");
        self.wait_for_log(|l| l.contains(" access] ") && l.split(' ').any(|word| word == field))
            .await
    }
}

/// Sends a signal to a process (`TERM`, `INT`, `QUIT`).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

impl Gateway {
    /// Starts a second process on the same config with `-u`, to take over the listening
    /// sockets when the running one gets SIGQUIT. Its logs are its own.
    pub fn takeover(&self) -> Gateway {
        let mut g = Gateway {
            child: None,
            addr: self.addr,
            dir: self.dir.clone(),
            conf_path: self.conf_path.clone(),
            logs: Default::default(),
            logs_done: Default::default(),
        };
        g.spawn(&["-u"]);
        g
    }

    /// Waits for the process to exit and for its last log line to be read; returns its exit
    /// status and how long the exit took.
    pub fn wait_exit(&mut self) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                let took = start.elapsed();
                while !self.logs_done.load(Ordering::SeqCst) {
                    assert!(
                        start.elapsed() < EVENTUALLY * 2,
                        "stderr stayed open after the exit"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                return (status, took);
            }
            assert!(
                start.elapsed() < EVENTUALLY * 2,
                "process did not exit; log:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child().try_wait().unwrap().is_none()
    }

    /// After a graceful shutdown began: waits until the gateway's drain (the thread that ends
    /// the process once nothing is in flight, `src/shutdown.rs`) has looked `n` more times at
    /// what is in flight, counted by its voluntary context switches (it sleeps between looks).
    /// It exits after 5 quiet looks in a row, so a process still running after more than 5
    /// looks is waiting for something in flight. `false` if the process exited first.
    pub async fn drain_looks(&mut self, n: u64) -> bool {
        let switches = |pid: u32| -> Option<u64> {
            for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
                let dir = task.ok()?.path();
                let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                if comm.trim() == "exit-when-drain" {
                    let status = std::fs::read_to_string(dir.join("status")).ok()?;
                    return status
                        .lines()
                        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                        .and_then(|v| v.trim().parse().ok());
                }
            }
            None
        };
        let pid = self.pid();
        let start = Instant::now();
        let mut first = None;
        loop {
            if !self.is_running() {
                return false;
            }
            match (first, switches(pid)) {
                (None, Some(now)) => first = Some(now),
                (Some(f), Some(now)) if now >= f + n => return true,
                _ => {}
            }
            assert!(
                start.elapsed() < EVENTUALLY,
                "the drain thread never looked {n} times"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Waits until something accepts connections on `addr` (e.g. the admin listener, which
/// starts on its own runtime next to the main one).
pub fn wait_listening(addr: SocketAddr) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < EVENTUALLY, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The timestamp a log line starts with (`[2026-11-26T10:40:29.513Z ...`). Access lines are
/// written in batches, so their order in the stream is not their order in time: compare
/// these instead (same format, so they sort as strings).
pub fn ts(line: &str) -> &str {
    line.trim_start_matches('[').split(' ').next().unwrap_or_default()
}

impl Gateway {
    /// Waits until at least `n` access lines have been written; returns them.
    pub async fn wait_access_lines(&self, n: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let lines = self.access_lines();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                start.elapsed() < EVENTUALLY,
                "{} of {n} access lines; log:\n{}",
                lines.len(),
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Gateway {
    /// GETs an asset with an `X-Request-Id` (to find its access line) and reads the whole
    /// body; returns the status and the body.
    pub async fn fetch(&self, id: &str, request_id: &str) -> (u16, String) {
        let r = client()
            .get(self.asset_url(id))
            .header("x-request-id", request_id)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }
}

/// The admin listener's `/metrics` text.
pub async fn scrape(admin: SocketAddr) -> String {
    let r = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    r.text().await.unwrap()
}

/// The value of one series (`name{labels}` exactly as exported) in a scrape. A series that
/// is not there fails the test: a renamed or unregistered metric must not read as 0.
pub fn metric(text: &str, series: &str) -> f64 {
    find_metric(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// [`metric`] for a series that may rightly be absent (`None`).
pub fn find_metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs `asset-gateway -t` on `yaml`: whether it passed, and what it printed.
pub fn check_config(yaml: &str) -> (bool, String) {
    let dir = temp_dir();
    let path = dir.join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let result = check_config_file(&path);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs `asset-gateway -t -c <path>`: whether it passed (exit status 0; any other status,
/// or none, is a failure), and what it printed on stdout and stderr.
pub fn check_config_file(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN).args(["-t", "-c"]).arg(path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "-t panicked:\n{text}");
    (out.status.success(), text)
}

/// Bytes the kernel holds in the established TCP connections that have one end on one of
/// `ports` (each socket's send queue plus its receive queue, from `/proc/net/tcp` and `tcp6`).
/// The slow-client tests subtract them from what the origin wrote to find what the gateway
/// holds.
pub fn kernel_queued(ports: &[u16]) -> u64 {
    let mut total = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or(""), 16).ok();
            let (Some(local), Some(remote)) = (port(f[1]), port(f[2])) else {
                continue;
            };
            // State 01: established (a listening socket's queues count its backlog).
            if f[3] != "01" || !(ports.contains(&local) || ports.contains(&remote)) {
                continue;
            }
            let (tx, rx) = f[4].split_once(':').unwrap();
            total += u64::from_str_radix(tx, 16).unwrap() + u64::from_str_radix(rx, 16).unwrap();
        }
    }
    total
}

/// An origin serving `assets` (id, body) and a gateway in front of it (`simple_config`), with
/// `gateway_extra` lines under `gateway:` and `upstream_extra` lines under the upstream: the
/// setup of the raw-socket tests (hostile.rs, conformance.rs).
pub async fn origin_and_gateway(
    assets: &[(&str, &str)],
    gateway_extra: &str,
    upstream_extra: &str,
) -> (origin::Origin, Gateway) {
    let origin = origin::Origin::start().await;
    for (id, body) in assets {
        origin.set_body(id, body.to_string());
    }
    let yaml = simple_config(&[origin.addr], upstream_extra)
        .replace("  upstreams:", &format!("{gateway_extra}  upstreams:"));
    (origin, Gateway::start(&yaml))
}

/// A plain GET of asset `id` through the gateway gets 200 and `body`: after a fault, the
/// gateway still serves.
pub async fn assert_serves(gw: &Gateway, id: &str, body: &str) {
    let r = client().get(gw.asset_url(id)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), body);
}

/// What the gateway holds of a response whose client stopped reading: the body bytes the
/// origin wrote, less those in the kernel's socket buffers between origin, gateway and client
/// and those the client read (`client_read`), once the origin has stopped writing (no
/// progress over 20 looks 50 ms apart: a wait for a condition, nothing is timed).
pub async fn held_by_gateway(origin: &origin::Origin, gateway_port: u16, client_read: u64) -> u64 {
    let start = Instant::now();
    let (mut last, mut still) = (origin.body_bytes_written(), 0);
    while still < 20 {
        assert!(
            start.elapsed() < EVENTUALLY * 2,
            "the origin never stopped writing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = origin.body_bytes_written();
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    let kernel = kernel_queued(&[origin.addr.port(), gateway_port]);
    let held = last.saturating_sub(kernel + client_read);
    eprintln!(
        "the origin wrote {last} body bytes; the kernel holds {kernel}, the client read {client_read}: the gateway holds {held}"
    );
    held
}
