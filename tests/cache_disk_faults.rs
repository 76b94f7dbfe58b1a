//! The disk tier against faults, with the real binary: SIGKILL during concurrent fills (many
//! rounds), damaged files, a full file system (a real tmpfs), meta rewrites racing lookups,
//! and two processes on one directory during an upgrade. After each, every asset is checked
//! byte for byte against the origin. No test asserts on time.

mod common;

use bytes::Bytes;
use common::origin::{pattern, Behavior, Origin, Seen};
use common::{
    cache_json, client, eventually, free_addrs, settled, signal, temp_dir, wait_listening, Gateway,
    EVENTUALLY,
};
use futures::FutureExt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

fn yaml(origin: SocketAddr, admin: SocketAddr, disk: &Path, memory: &str, size: &str) -> String {
    format!(
        r#"threads: 2
grace_period_seconds: 60
graceful_shutdown_timeout_seconds: 1
gateway:
  listen: ["{{listen}}"]
  admin: "{admin}"
  cache:
    memory: {memory}
    disk: {{path: "{}", size: {size}}}
  upstreams:
    assets:
      peers: ["{origin}"]
      read_timeout: 60s
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
"#,
        disk.display()
    )
}

struct Setup {
    gw: Gateway,
    admin: SocketAddr,
    yaml: String,
}

fn start(origin: &Origin, disk: &Path, memory: &str, size: &str) -> Setup {
    let [listen, admin] = free_addrs();
    let yaml = yaml(origin.addr, admin, disk, memory, size);
    let gw = Gateway::start_at(&yaml, &[], listen);
    wait_listening(admin);
    Setup { gw, admin, yaml }
}

impl Setup {
    /// SIGKILLs the gateway (dropping it does) and starts it again on the same directory.
    fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// SIGKILLs the gateway and waits until it is gone.
    fn kill(&mut self) {
        let _ = self.gw.child().kill();
        let _ = self.gw.child().wait();
    }

    /// Starts the gateway again after [`Setup::kill`], on the same addresses and directory.
    fn restart(&mut self) {
        self.gw = Gateway::start_at(&self.yaml, &[], self.gw.addr);
        wait_listening(self.admin);
    }
}

fn id(i: usize) -> String {
    format!("0c1c2a7e-9b4d-4e8a-8c21-5d6f7a8b{i:04}")
}

/// A body of `len` bytes no other asset shares (a seeded xorshift).
fn random_body(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Serves `body` with `ETag: "<etag>"` and `max-age`, and 304 to a request that names the
/// ETag.
fn versioned(body: Bytes, etag: String, max_age: u32) -> Behavior {
    Behavior::Scripted(Arc::new(move |req: &Seen| {
        let req = req.clone();
        let (body, etag) = (body.clone(), etag.clone());
        async move {
            let headers =
                format!("content-type: video/mp4\r\netag: {etag}\r\ncache-control: max-age={max_age}\r\n");
            if req.header("if-none-match") == Some(etag.as_str()) {
                return (format!("{} Status", 304), headers, Vec::new());
            }
            (
                format!("{} Status", 200),
                headers,
                Some(body).map(|b| b.to_vec()).unwrap_or_default(),
            )
        }
        .boxed()
    }))
}

/// GETs `url` (with `range`); `Err` if the response did not arrive whole.
async fn fetch(url: &str, range: Option<(usize, usize)>) -> Result<(u16, String, Vec<u8>), String> {
    let mut req = client().get(url);
    if let Some((a, b)) = range {
        req = req.header("range", format!("bytes={a}-{b}"));
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let cs = r
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, cs, body.to_vec()))
}

/// The temporary files process `pid` left in `disk`: (bodies, metas). A body's temporary file
/// (a fill's disk copy, until its commit renames it) is allocated its whole length when it is
/// created; a meta's (a commit's, or a rewrite's after a 304) is a few hundred bytes.
fn temp_files(disk: &Path, pid: u32) -> (usize, usize) {
    let mut found = (0, 0);
    for e in std::fs::read_dir(disk).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") && name.contains(&format!(".{pid}.")) {
            match e.metadata().map(|m| m.len()).unwrap_or(0) > 64 << 10 {
                true => found.0 += 1,
                false => found.1 += 1,
            }
        }
    }
    found
}

/// The names of the object bodies in `disk` (each names its object's id).
fn body_files(disk: &Path) -> std::collections::HashSet<String> {
    std::fs::read_dir(disk)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".obj"))
        .collect()
}

/// SIGKILLs `pid` `delay` after one of its commits is seen in `disk` (a meta's temporary file
/// beside its body's: the commit syncs the meta, then renames both), or with `renamed`,
/// `delay` after that commit's renames (its temporary files gone: the directory sync and the
/// replaced body's deletion follow). If none is seen within `EVENTUALLY`, SIGKILLs it anyway.
/// Whether the kill followed a commit.
fn kill_at_commit(disk: &Path, pid: u32, delay: Duration, renamed: bool) -> bool {
    let start = Instant::now();
    // The (key, id) of each of `pid`'s temporary files, <key>.<id>.<pid>.<n>.tmp.
    let temps = || -> Vec<(String, String)> {
        std::fs::read_dir(disk)
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                let parts: Vec<&str> = name.split('.').collect();
                (parts.len() == 5 && parts[4] == "tmp" && parts[2] == pid.to_string())
                    .then(|| (parts[0].to_string(), parts[1].to_string()))
            })
            .collect()
    };
    let mut commit = None;
    while commit.is_none() && start.elapsed() < EVENTUALLY {
        let mut seen = std::collections::HashSet::new();
        commit = temps().into_iter().find(|t| !seen.insert(t.clone()));
        std::thread::sleep(Duration::from_micros(50));
    }
    if let (Some(c), true) = (&commit, renamed) {
        while temps().contains(c) && start.elapsed() < EVENTUALLY {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    std::thread::sleep(delay);
    // SAFETY: a signal to the test's own child process.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    commit.is_some()
}

/// SIGKILL while fills are being copied to the disk tier and committed, ten rounds, each with
/// new fills (a seeded choice of assets purged before it, and whatever the previous kill cut).
/// The origin paces its bodies so that fills are in progress for a while; the kill comes at a
/// commit seen in the directory (a meta's temporary file beside its body's), during its syncs
/// and renames or right after the renames, while other fills' disk copies run. After each
/// restart every asset is fetched whole and as a range, and compared byte for byte with the
/// origin's: a hit must be exact, a miss must refill exactly. What every process's start-up
/// scan found damaged (and its lookups while checking) is summed and must be 0: a commit that
/// can be cut so as to leave a meta naming an unfinished body shows there. The test fails if no
/// kill left a disk write in progress (the killed process's temporary files, seen between the
/// kill and the restart), if no kill followed a commit, or if no process after the first
/// committed anything: it cannot silently stop killing fills and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_disk_fills_never_serves_a_wrong_byte() {
    let origin = Origin::start().await;
    let dir = temp_dir();
    let disk = dir.join("disk");
    let sent = Arc::new(tokio::sync::watch::Sender::new(0));
    let assets: Vec<(String, Bytes)> = (0..16)
        .map(|i| {
            // 100 KB to 2.8 MB: the largest do not fit `memory` and fill to disk only.
            let len = 100_000 + i * i * 12_000;
            (id(i), random_body(i as u64 + 1, len))
        })
        .collect();
    for (i, (id, body)) in assets.iter().enumerate() {
        origin.set(
            id,
            Behavior::Paced {
                body: body.clone(),
                etag: format!("\"{i}\""),
                // Half of them go stale within a second: their revalidations rewrite metas.
                max_age: if i % 2 == 0 { 1 } else { 3600 },
                chunk: 32 << 10,
                pause: Duration::from_millis(2),
                sent: sent.clone(),
            },
        );
    }
    let mut s = start(&origin, &disk, "2MiB", "64MiB");
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut hits, mut refills, mut damaged) = (0, 0, Vec::new());
    let (mut killed_writing, mut killed_committing, mut commits_after_first) = (0, 0, 0);
    let mut killed_at_commit = 0;
    for round in 0..10 {
        // New fills: a seeded half of the assets (always the two largest, the slowest fills)
        // is purged, so the load fills them again.
        if round > 0 {
            for (i, (id, _)) in assets.iter().enumerate() {
                if i >= 14 || i == round % 14 || next() % 2 == 0 {
                    common::purge_asset(s.admin, id).await;
                }
            }
        }
        let bodies_before = body_files(&disk);
        let stop = Arc::new(AtomicBool::new(false));
        let wrong = Arc::new(AtomicUsize::new(0));
        let load: Vec<_> = (0..6)
            .map(|c| {
                let (assets, stop, wrong) = (assets.clone(), stop.clone(), wrong.clone());
                let base = s.gw.asset_url("");
                tokio::spawn(async move {
                    let mut n = round * 7 + c;
                    while !stop.load(Ordering::SeqCst) {
                        n = (n * 31 + 17) % assets.len();
                        let (id, body) = &assets[n];
                        // A response that arrives whole must be right; one cut by the kill is
                        // not a wrong body.
                        if let Ok((200, _, got)) = fetch(&format!("{base}{id}"), None).await {
                            if got != body[..] {
                                wrong.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        // The kill: once 1 to 3 bodies were sent whole in this round, when the next commit is
        // seen in the directory (its meta's temporary file beside its body's), a seeded 0 to
        // 4 ms later (even rounds: the commit's syncs and renames are cut), or a seeded 0 to
        // 0.8 ms after its renames (odd rounds: its directory sync); other fills' disk copies
        // are cut too.
        let mut bodies_sent = sent.subscribe();
        let target = *bodies_sent.borrow_and_update() + 1 + (next() % 3) as usize;
        tokio::time::timeout(EVENTUALLY, bodies_sent.wait_for(|n| *n >= target))
            .await
            .expect("never happened: a body sent whole")
            .unwrap();
        let pid = s.gw.pid();
        // Odd rounds: right after the commit's renames.
        let renamed = round % 2 == 1;
        let delay = Duration::from_micros(next() % if renamed { 800 } else { 4_000 });
        let d = disk.clone();
        let at_commit = tokio::task::spawn_blocking(move || kill_at_commit(&d, pid, delay, renamed))
            .await
            .unwrap();
        killed_at_commit += usize::from(at_commit);
        stop.store(true, Ordering::SeqCst);
        s.kill();
        for l in load {
            l.await.unwrap();
        }
        assert_eq!(
            wrong.load(Ordering::SeqCst),
            0,
            "round {round}: a wrong body under load"
        );
        // What the kill cut: the dead process's temporary files (its next start deletes them).
        let (bodies, metas) = temp_files(&disk, pid);
        killed_writing += usize::from(bodies + metas > 0);
        killed_committing += usize::from(metas > 0);
        let committed = body_files(&disk).difference(&bodies_before).count();
        if round > 0 {
            commits_after_first += committed;
        }
        s.restart();
        let scanned = common::metric(
            &common::scrape(s.admin).await,
            "asset_gateway_cache_disk_damaged_total",
        );
        let (mut round_hits, mut missed) = (0, Vec::new());
        for (id, body) in &assets {
            let url = s.gw.asset_url(id);
            let (status, cs, got) = fetch(&url, None)
                .await
                .unwrap_or_else(|e| panic!("round {round}, {id}: {e}"));
            assert_eq!(status, 200, "round {round}, {id}");
            assert!(
                got == body[..],
                "round {round}, {id} ({cs}): {} bytes, not the origin's",
                got.len()
            );
            match cs.contains("; hit") {
                true => round_hits += 1,
                false => missed.push((id, body)),
            }
            let (a, b) = (body.len() / 3, body.len() / 3 + 5000);
            let (status, _, got) = fetch(&url, Some((a, b))).await.unwrap();
            assert_eq!(status, 206);
            assert!(
                got == body[a..=b],
                "round {round}, {id}: a range, not the origin's bytes"
            );
        }
        // A miss refills: once its fill is committed it is served again, exactly.
        settled(s.admin).await;
        for (id, body) in &missed {
            let (status, cs, got) = fetch(&s.gw.asset_url(id), None).await.unwrap();
            assert_eq!(status, 200, "round {round}, {id}: the refill");
            assert!(got == body[..], "round {round}, {id} ({cs}): the refill's bytes");
            refills += usize::from(cs.contains("; hit"));
        }
        hits += round_hits;
        let checked = common::metric(
            &common::scrape(s.admin).await,
            "asset_gateway_cache_disk_damaged_total",
        );
        damaged.push((round, scanned, checked));
        eprintln!(
            "round {round}: killed with {bodies} body and {metas} meta temporary files left, \
             {} objects committed in the process; {round_hits} of {} assets were disk hits after \
             the restart, {} missed and refilled; damaged: {scanned} at the start-up scan, {checked} after the checks",
            committed,
            assets.len(),
            missed.len()
        );
    }
    assert!(
        hits > 0,
        "no round found anything on disk: the test checked nothing"
    );
    assert!(refills > 0, "no miss refilled to a hit");
    assert!(
        killed_writing > 0,
        "no kill landed while a disk write was in progress: the test killed nothing in flight"
    );
    assert!(
        killed_at_commit > 0,
        "no kill followed a commit seen in the directory"
    );
    assert!(
        commits_after_first > 0,
        "no process after the first committed anything: later rounds tested no commit"
    );
    eprintln!(
        "{killed_writing} of 10 kills left disk writes in progress, {killed_committing} of them \
         a commit's (or a rewrite's) meta; {killed_at_commit} kills at a commit seen in the \
         directory; {commits_after_first} commits after the first process"
    );
    let total: f64 = damaged.iter().map(|d| d.2).sum();
    assert_eq!(
        total, 0.0,
        "damaged objects found after the kills (round, at the start-up scan, after the checks): {damaged:?}"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The object files in `disk`: for each asset, (body file, meta file if apart), found by
/// the body they start with.
fn object_files(disk: &Path, assets: &[(String, Bytes)]) -> Vec<(PathBuf, Option<PathBuf>)> {
    let names: Vec<PathBuf> = std::fs::read_dir(disk)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "obj"))
        .collect();
    assets
        .iter()
        .map(|(_, body)| {
            let obj = names
                .iter()
                .find(|p| std::fs::read(p).unwrap().starts_with(&body[..1000]))
                .expect("every asset is on disk")
                .clone();
            let key = obj
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .split('.')
                .next()
                .unwrap()
                .to_string();
            let meta = disk.join(format!("{key}.meta"));
            (obj, meta.exists().then_some(meta))
        })
        .collect()
}

/// Item 2: bytes flipped inside stored objects (in their first block, in a later block, in
/// their header) and a truncated object: a damaged block is never sent as if whole (the
/// response ends incomplete), a damaged object is deleted, counted and named in one warning,
/// and the next request gets the origin's bytes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_objects_are_never_served() {
    let origin = Origin::start().await;
    let dir = temp_dir();
    let disk = dir.join("disk");
    let assets: Vec<(String, Bytes)> = (0..4)
        .map(|i| (id(100 + i), random_body(100 + i as u64, 300_000)))
        .collect();
    for (id, body) in &assets {
        origin.set_body(id, body.clone());
    }
    let mut s = start(&origin, &disk, "64MiB", "64MiB");
    for (id, _) in &assets {
        fetch(&s.gw.asset_url(id), None).await.unwrap();
    }
    settled(s.admin).await;
    let files = object_files(&disk, &assets);
    let flip = |path: &Path, at: usize| {
        let mut b = std::fs::read(path).unwrap();
        b[at] ^= 0x20;
        std::fs::write(path, b).unwrap();
    };
    flip(&files[0].0, 100);
    flip(&files[1].0, 200_000);
    match &files[2].1 {
        Some(meta) => flip(meta, 40),
        None => flip(&files[2].0, 300_000 + 5),
    }
    let f = std::fs::File::options().write(true).open(&files[3].0).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 1000).unwrap();
    s.kill_and_restart();

    for (i, (id, body)) in assets.iter().enumerate() {
        let url = s.gw.asset_url(id);
        let first = fetch(&url, None).await;
        match i {
            // A damaged block: the response ends incomplete, never as a clean wrong body.
            0 | 1 => assert!(
                first.is_err(),
                "asset {i}: {:?}",
                first.map(|r| (r.0, r.1, r.2.len()))
            ),
            // A damaged header or a truncated file: found before a byte is sent: a miss.
            _ => {
                let (status, cs, got) = first.unwrap();
                assert_eq!(
                    (status, cs.as_str()),
                    (200, "asset-gateway; fwd=uri-miss; stored"),
                    "asset {i}"
                );
                assert!(got == body[..], "asset {i}");
            }
        }
        settled(s.admin).await;
        // Then the origin's bytes, stored again.
        let (status, _, got) = fetch(&url, None).await.unwrap();
        assert_eq!(status, 200);
        assert!(got == body[..], "asset {i} after the damage");
    }
    let m = common::scrape(s.admin).await;
    assert_eq!(common::metric(&m, "asset_gateway_cache_disk_damaged_total"), 4.0);
    let warnings: Vec<String> =
        s.gw.logs()
            .into_iter()
            .filter(|l| l.contains("is damaged"))
            .collect();
    assert_eq!(warnings.len(), 4, "one warning per damaged object: {warnings:#?}");
    for (obj, _) in &files {
        let key = obj
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap();
        assert!(warnings.iter().any(|w| w.contains(key)), "no warning names {key}");
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 6: a meta rewrite never shows a lookup a missing or torn object. An object on disk
/// only (larger than `memory`) is always stale (`max-age=0`), so requests revalidate it over
/// and over, each 304 rewriting its meta while other requests look it up: the origin only
/// ever sees revalidations, never a refill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_rewrites_never_turn_a_hit_into_a_miss() {
    let origin = Origin::start().await;
    let dir = temp_dir();
    let disk = dir.join("disk");
    let a = id(200);
    let body = random_body(200, 1_500_000);
    origin.set(&a, versioned(body.clone(), "\"r\"".into(), 0));
    let s = start(&origin, &disk, "1MiB", "64MiB");
    let url = s.gw.asset_url(&a);
    assert_eq!(fetch(&url, None).await.unwrap().2, body[..]);
    settled(s.admin).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop, body) = (url.clone(), stop.clone(), body.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let (status, _, got) = fetch(&url, Some((1000, 1999))).await.unwrap();
                    assert_eq!(status, 206);
                    assert!(got == body[1000..2000]);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let start = Instant::now();
    while origin.requests_for(&a) < 200 && start.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut served = 0;
    for c in clients {
        served += c.await.unwrap();
    }
    let requests = origin.requests();
    let refills = requests
        .iter()
        .skip(1)
        .filter(|r| r.target.ends_with(&a) && r.header("if-none-match").is_none())
        .count();
    eprintln!(
        "{served} responses, {} origin requests, {refills} refills",
        requests.len()
    );
    assert!(requests.len() > 20, "too few revalidations to race anything");
    assert_eq!(
        refills, 0,
        "a lookup missed the object while its meta was rewritten"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tmpfs mounted for one test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs failed (the test runs as root: CI does)");
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Item 8: a full file system (a real tmpfs, filled up) changes nothing for clients: every
/// response is whole and right, objects that fit memory are stored there, a fill too large
/// for memory streams through uncached; one warning says the disk tier stopped, not one per
/// fill; once space is back, storing resumes by itself (and says so once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_changes_nothing_for_clients() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs the tests as root)");
        return;
    }
    let origin = Origin::start().await;
    let dir = temp_dir();
    let disk = dir.join("disk");
    let fs = Tmpfs::mount(&disk, "8m");
    let small: Vec<(String, Bytes)> = (0..5)
        .map(|i| (id(300 + i), random_body(300 + i as u64, 200_000)))
        .collect();
    let large = (id(310), random_body(310, 3 << 20));
    for (id, body) in small.iter().chain([&large]) {
        origin.set_body(id, body.clone());
    }
    let s = start(&origin, &disk, "2MiB", "8MiB");
    let filler = disk.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![7u8; 1 << 20];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);

    for (id, body) in &small {
        let (status, cs, got) = fetch(&s.gw.asset_url(id), None).await.unwrap();
        assert_eq!(
            (status, cs.as_str()),
            (200, "asset-gateway; fwd=uri-miss; stored")
        );
        assert!(got == body[..]);
    }
    let (status, cs, got) = fetch(&s.gw.asset_url(&large.0), None).await.unwrap();
    assert_eq!(
        (status, cs.as_str()),
        (200, "asset-gateway; fwd=uri-miss; detail=disk-unavailable")
    );
    assert!(got == large.1[..]);
    settled(s.admin).await;
    for (id, body) in &small {
        let (_, cs, got) = fetch(&s.gw.asset_url(id), None).await.unwrap();
        assert!(cs.starts_with("asset-gateway; hit"), "{cs}: stored in memory");
        assert!(got == body[..]);
    }
    let j = cache_json(s.admin).await;
    assert_eq!(j["disk"]["state"], "full", "{j}");
    let stops = |s: &Setup| s.gw.logs().iter().filter(|l| l.contains("stops storing")).count();
    assert_eq!(
        stops(&s),
        1,
        "one warning for the change of state, not one per fill"
    );

    // Space is back: the next object is stored on disk, and the tier says so once.
    std::fs::remove_file(&filler).unwrap();
    let (_, cs, got) = fetch(&s.gw.asset_url(&large.0), None).await.unwrap();
    assert_eq!(cs, "asset-gateway; fwd=uri-miss; stored");
    assert!(got == large.1[..]);
    settled(s.admin).await;
    let (_, cs, got) = fetch(&s.gw.asset_url(&large.0), None).await.unwrap();
    assert!(cs.starts_with("asset-gateway; hit"), "{cs}");
    assert!(got == large.1[..]);
    let j = cache_json(s.admin).await;
    assert_eq!(j["disk"]["state"], "storing", "{j}");
    assert_eq!(j["disk"]["objects"], 1, "{j}");
    assert_eq!(
        s.gw.logs()
            .iter()
            .filter(|l| l.contains("stores objects again"))
            .count(),
        1
    );
    assert_eq!(stops(&s), 1);
    drop(s);
    drop(fs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 7: during an upgrade the old and the new process share the disk directory. The new
/// one's start-up leaves the old one's fills in progress alone; the old one's commits after
/// that (one of a key the new one stored meanwhile) delete nothing of the new one's; after
/// the old one exited, every object either stored is a hit in the new one, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_disk_during_an_upgrade() {
    let origin = Origin::start().await;
    let dir = temp_dir();
    let disk = dir.join("disk");
    let [x, y, z, w] = [id(400), id(401), id(402), id(403)];
    let len = 600_000;
    origin.set_body(&x, random_body(400, len));
    origin.set_body(&z, random_body(402, len));
    let (release, held_y, held_w) = (
        Arc::new(Notify::new()),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    for (id, held) in [(&y, &held_y), (&w, &held_w)] {
        origin.set(
            id,
            Behavior::HoldAfter {
                first: 100_000,
                total: len,
                release: release.clone(),
                held: held.clone(),
            },
        );
    }
    let old = start(&origin, &disk, "64MiB", "64MiB");
    let url = |id: &str| old.gw.asset_url(id);
    fetch(&url(&x), None).await.unwrap();
    settled(old.admin).await;
    // Two fills on the old process, held by the origin mid-body.
    let slow: Vec<_> = [y.clone(), w.clone()]
        .into_iter()
        .map(|id| {
            let u = url(&id);
            tokio::spawn(async move { fetch(&u, None).await })
        })
        .collect();
    eventually("the origin holds both fills", || {
        held_y.load(Ordering::SeqCst) && held_w.load(Ordering::SeqCst)
    })
    .await;

    let new = old.gw.takeover();
    let sock = old.gw.dir.join("upgrade.sock");
    eventually("the new process waits for the sockets", || sock.exists()).await;
    signal(old.gw.pid(), "QUIT");
    // From here on, new connections reach the new process only.
    old.gw.wait_for_log(|l| l.contains("listeners closed")).await;
    // The new process stores z, and y as well (it does not know the old one's fill of y).
    origin.set(&y, Behavior::Generated { size: len as u64 });
    let (_, cs, _) = fetch(&url(&z), None).await.unwrap();
    assert!(cs.ends_with("; stored"), "{cs}");
    let (_, cs, got) = fetch(&url(&y), None).await.unwrap();
    assert!(cs.ends_with("; stored"), "{cs}");
    assert!(got == pattern(0..len as u64));
    settled(old.admin).await;
    // The old process finishes its fills (y and w) and commits them, then exits.
    release.notify_waiters();
    for f in slow {
        let (status, _, got) = f.await.unwrap().unwrap();
        assert_eq!(status, 200);
        assert!(got == pattern(0..len as u64));
    }
    // w's origin answers at once from now on (its release is spent): a new process that
    // misses w (stored by the old one only) fails the hit assertion below at once, instead of
    // stalling on the held response until a timeout.
    origin.set(&w, Behavior::Generated { size: len as u64 });
    let mut old_gw = old.gw;
    old_gw.wait_exit();
    let warnings: Vec<String> = old_gw
        .logs()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("asset_gateway::cache"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");

    // Everything either stored is there: hits in the new process, the origin not asked.
    let before = origin.asset_requests().len();
    for (id, want) in [
        (&x, random_body(400, len).to_vec()),
        (&y, pattern(0..len as u64)),
        (&z, random_body(402, len).to_vec()),
        (&w, pattern(0..len as u64)),
    ] {
        let (status, cs, got) = fetch(&new.asset_url(id), None).await.unwrap();
        assert_eq!(status, 200);
        assert!(cs.starts_with("asset-gateway; hit"), "{id}: {cs}");
        assert!(got == want, "{id}");
    }
    assert_eq!(origin.asset_requests().len(), before);
    drop(new);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The gateway's threads, from `/proc`.
fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Item 9's mechanism: disk reads and writes run on a fixed set of threads, however many
/// requests use the disk tier at once (tokio's blocking pool grew to ~170 threads under
/// this kind of load, each keeping the memory the allocator had given it; README, "Memory
/// with the disk tier", has the RSS figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_io_runs_on_a_fixed_set_of_threads() {
    let origin = Origin::start().await;
    let dir = temp_dir();
    let disk = dir.join("disk");
    let assets: Vec<(String, Bytes)> = (0..40)
        .map(|i| (id(500 + i), random_body(500 + i as u64, 200_000 + i * 20_000)))
        .collect();
    for (id, body) in &assets {
        origin.set_body(id, body.clone());
    }
    // 1 MiB of memory: most hits come from the disk tier.
    let s = start(&origin, &disk, "1MiB", "64MiB");
    // One request first: the threads started on first use (the disk pools, the access log's,
    // Pingora's timer) are there before the load.
    let (id0, body0) = &assets[0];
    assert!(fetch(&s.gw.asset_url(id0), None).await.unwrap().2 == body0[..]);
    settled(s.admin).await;
    let idle = threads(s.gw.pid());
    let peak = Arc::new(AtomicUsize::new(idle));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), s.gw.pid());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(threads(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let clients: Vec<_> = (0..24)
        .map(|c| {
            let (assets, base) = (assets.clone(), s.gw.asset_url(""));
            tokio::spawn(async move {
                for n in 0..60 {
                    let (id, body) = &assets[(c * 7 + n * 13) % assets.len()];
                    let (status, _, got) = fetch(&format!("{base}{id}"), None).await.unwrap();
                    assert_eq!(status, 200);
                    assert!(got == body[..]);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let m = common::scrape(s.admin).await;
    let disk_hits = common::metric(&m, "asset_gateway_cache_disk_hits_total");
    let peak = peak.load(Ordering::SeqCst);
    eprintln!("threads: {idle} idle, {peak} at the peak; {disk_hits} disk hits");
    assert!(
        disk_hits > 500.0,
        "the load did not reach the disk tier: {disk_hits}"
    );
    // Nothing that grows with the load.
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", s.gw.pid()))
        .unwrap()
        .map(|t| {
            std::fs::read_to_string(t.unwrap().path().join("comm"))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert!(
        peak <= idle,
        "{peak} threads under load, {idle} before; now: {names:?}"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
