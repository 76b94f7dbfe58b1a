//! Test harness: the real `asset-gateway` binary as a child process on 127.0.0.1, its
//! config written to a temporary file, its log lines captured.
#![allow(dead_code)]

pub mod ca;
pub mod cache;
pub mod dns;
pub mod origin;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_asset-gateway");

/// Generous limit for things that must happen eventually (a process starting, a log line
/// appearing). It only stops a broken test from hanging; no test asserts on time.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

pub const ID: &str = "3f1c2a7e-9b4d-4e8a-8c21-5d6f7a8b9c0d";

/// A free port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
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
        let logs = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_GATEWAY_ECHO").is_some() {
                    eprintln!("[gateway] {line}");
                }
                logs.lock().unwrap().push(line);
            }
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

/// Sends raw bytes on a new connection and reads until the server closes or `idle` passes
/// without data. Returns everything read.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], idle: Duration) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout(idle, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// One HTTP/1.1 client connection driven by hand, to see exactly what the server does with it.
pub struct RawConn {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

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
        RawConn {
            s: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, data: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.s.write_all(data).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout(EVENTUALLY, self.s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// Reads one response framed by Content-Length (no body for HEAD, 1xx, 204 and 304).
    pub async fn response(&mut self, head_request: bool) -> Option<RawResponse> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end);
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        let mut r = RawResponse {
            status,
            head,
            body: Vec::new(),
        };
        let len: usize = if head_request || status == 204 || status == 304 || status < 200 {
            0
        } else {
            r.header("content-length")?.parse().ok()?
        };
        while self.buf.len() < len {
            if !self.fill().await {
                return None;
            }
        }
        r.body = self.buf.drain(..len).collect();
        Some(r)
    }

    /// The next bytes from the server (buffered ones first); `None` once it closed.
    pub async fn read_chunk(&mut self) -> Option<Vec<u8>> {
        if self.buf.is_empty() && !self.fill().await {
            return None;
        }
        Some(std::mem::take(&mut self.buf))
    }

    /// Everything the server sends until it closes; `false` if it went silent for
    /// `EVENTUALLY` instead of closing.
    pub async fn read_to_close(&mut self) -> (Vec<u8>, bool) {
        let mut all = std::mem::take(&mut self.buf);
        loop {
            if self.closed_by_server().await {
                all.append(&mut self.buf);
                return (all, true);
            }
            if self.buf.is_empty() {
                return (all, false);
            }
            all.append(&mut self.buf);
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
        };
        g.spawn(&["-u"]);
        g
    }

    /// Waits for the process to exit; returns its exit status and how long that took.
    pub fn wait_exit(&mut self) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                return (status, start.elapsed());
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

/// The value of one series (`name{labels}` exactly as exported) in a scrape.
pub fn metric(text: &str, series: &str) -> Option<f64> {
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
    let out = Command::new(BIN).args(["-t", "-c"]).arg(&path).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
