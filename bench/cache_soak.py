#!/usr/bin/env python3
"""Cache soak: the gateway with its memory and disk tiers under mixed load, every response
checked against the bytes its own ETag names.

    bench/soak --cache [seconds] [--steady] [--binary PATH]

Load: 12 client threads over 120 assets of 4 KiB to 6 MiB (examples/soak_origin.rs), a quarter
of the requests Ranges, `memory: 24MiB` and a 256 MiB disk tier. The assets change version
every 40 s and are fresh for 5 s, so objects are revalidated (304) and replaced.

Faults (unless --steady): the origin is SIGKILLed and restarted (twice), assets are purged
through the admin listener (every 2 s), the gateway is upgraded once (`-u` and SIGQUIT) and
SIGKILLed once (then started again on the same disk directory). During an origin outage
stale objects are served (stale-if-error); a response is wrong only if its bytes are not the
bytes its ETag names (or its length is not its Content-Length).

Reports requests by outcome, the gateway's RSS, threads and open descriptors over time
(sampled every second; the process changes at the upgrade and at the restart after the kill)
and the RSS bound: `memory` + 64 MiB (the gateway's own RSS without the cache, per-connection
buffers of 12 clients and the allocator's slack).

--steady is the load of issue 18 item 9 without faults: RSS must stay within the bound under
load and come back near the start once the load stops.
"""
import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from procs import open_fds, status_bytes, wait_port

ROOT = Path(__file__).resolve().parent.parent
ORIGIN_PORT, GATEWAY_PORT, ADMIN_PORT = 19501, 19580, 19590
MEMORY_MIB, DISK_MIB, CLIENTS, ASSETS, PERIOD, MAX_AGE = 24, 256, 12, 120, 40, 5
RSS_BOUND = (MEMORY_MIB + 64) << 20

BASE = bytes(j % 251 for j in range(4096 + 251))


def body(asset, version, size):
    """examples/soak_origin.rs `body`: 4 KiB blocks naming asset, version and block."""
    out = bytearray()
    block = 0
    while len(out) < size:
        head = f"{asset}/{version}/{block}/".encode()
        f = (block * 7) % 251
        b = head + BASE[f:f + 4096 - len(head)]
        out += b[:size - len(out)]
        block += 1
    return bytes(out)


expected_cache = {}
expected_lock = threading.Lock()


def expected(asset, version, size):
    key = (asset, version)
    with expected_lock:
        b = expected_cache.get(key)
    if b is None:
        b = body(asset, version, size)
        with expected_lock:
            if len(expected_cache) > 256:
                expected_cache.clear()
            expected_cache[key] = b
    return b


results = Counter()
wrong = []
# (start, end) monotonic times when the origin or the gateway is down (plus a second).
outages = []


def in_outage(t0):
    return any(s <= time.monotonic() and t0 <= e for s, e in outages)
lock = threading.Lock()
stop = threading.Event()


T0 = time.monotonic()
unexpected = []


def record(outcome, detail=None):
    with lock:
        results[outcome] += 1
        if outcome == "wrong" and detail and len(wrong) < 20:
            wrong.append(detail)
        if outcome.startswith("unexpected") or "outside" in outcome:
            if len(unexpected) < 20:
                unexpected.append((round(time.monotonic() - T0, 1), outcome, detail))


def client_worker(assets, seed):
    rnd = random.Random(seed)
    conn = None
    while not stop.is_set():
        asset, size = rnd.choice(assets)
        headers = {}
        rng = None
        if rnd.random() < 0.25:
            a = rnd.randrange(size)
            b = min(size - 1, a + rnd.randrange(1, 512 * 1024))
            rng = (a, b)
            headers["Range"] = f"bytes={a}-{b}"
        t0 = time.monotonic()
        try:
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=30)
            try:
                conn.request("GET", f"/content/v1/assets/{asset}", headers=headers)
                r = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The server closed the idle kept-alive connection as the request went out
                # (an upgrade's old process closes its idle connections): retry once on a new
                # connection, as HTTP clients do.
                record("retried after a kept-alive connection closed")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=30)
                conn.request("GET", f"/content/v1/assets/{asset}", headers=headers)
                r = conn.getresponse()
            data = r.read()
            etag = r.getheader("etag", "")
            cs = r.getheader("cache-status", "")
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
            if r.status in (200, 206):
                if not etag.startswith('"v'):
                    record("wrong", f"{asset}: no etag")
                    continue
                want = expected(asset, int(etag.strip('"')[1:]), size)
                if r.status == 206:
                    want = want[rng[0]:rng[1] + 1]
                if data == want:
                    stale = "stale" in cs
                    record("ok stale" if stale else "ok")
                else:
                    record("wrong", f"{asset} {r.status} {etag} {cs}: {len(data)} bytes, want {len(want)}")
            elif r.status in (502, 503, 504):
                # Only an asset with no stored object (never stored, or purged) can fail while
                # the origin is down; any other 5xx is unexpected.
                record(f"{r.status} during an outage" if in_outage(t0) else f"unexpected {r.status}", f"{asset} {cs}")
            else:
                record(f"unexpected {r.status}")
        except Exception as e:
            # A connection cut by the gateway's kill or upgrade, or an incomplete (never wrong)
            # body.
            where = "during an outage" if in_outage(t0) else "outside outages"
            record(f"error {type(e).__name__} {where}", f"{asset}: {e}")
            if conn is not None:
                conn.close()
            conn = None


def purge_worker(assets):
    rnd = random.Random(7)
    while not stop.wait(2.0):
        asset, _ = rnd.choice(assets)
        try:
            c = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=10)
            c.request("DELETE", f"/cache/content/v1/assets/{asset}")
            c.getresponse().read()
            c.close()
            record("purge")
        except Exception:
            record("purge failed")


def config(tmp, disk=True):
    disk_line = f"\n    disk: {{path: {tmp}/disk, size: {DISK_MIB}MiB}}" if disk else ""
    return f"""threads: 2
pid_file: {tmp}/gw.pid
upgrade_sock: {tmp}/upgrade.sock
grace_period_seconds: 3
graceful_shutdown_timeout_seconds: 1
gateway:
  listen: ["127.0.0.1:{GATEWAY_PORT}"]
  admin: "127.0.0.1:{ADMIN_PORT}"
  downstream: {{keepalive_timeout: 5s}}
  cache:
    memory: {MEMORY_MIB}MiB{disk_line}
  upstreams:
    assets:
      peers: ["127.0.0.1:{ORIGIN_PORT}"]
      connect_timeout: 500ms
      read_timeout: 5s
      idle_timeout: 2s
      passive_ejection: {{failures: 3, cooldown: 1s}}
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
"""


class Gateway:
    def __init__(self, binary, conf, log):
        self.binary, self.conf, self.log = binary, conf, log
        self.proc = None

    def start(self, upgrade=False):
        args = [self.binary, "-c", str(self.conf)] + (["-u"] if upgrade else [])
        env = {**os.environ, "RUST_LOG": "info,access=off"}
        p = subprocess.Popen(args, stderr=self.log, env=env)
        if not upgrade:
            wait_port(GATEWAY_PORT, p)
            wait_port(ADMIN_PORT, p)
        return p


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("Threads:"))


def sample(pid):
    try:
        return status_bytes(pid, "VmRSS"), open_fds(pid), threads(pid)
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("seconds", nargs="?", type=float, default=120.0)
    ap.add_argument("--steady", action="store_true", help="no faults: the memory measurement of issue 18")
    ap.add_argument("--binary", default=str(ROOT / "target/release/asset-gateway"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-disk", action="store_true", help="the memory tier alone (for comparison)")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "--bin", "asset-gateway", "--example", "soak_origin"],
                       cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="asset-gateway-cache-soak-"))
    conf = tmp / "gw.yaml"
    conf.write_text(config(tmp, disk=not a.no_disk))
    period = 0 if a.steady else PERIOD
    origin_cmd = [str(ROOT / "target/release/examples/soak_origin"), str(ORIGIN_PORT), str(ASSETS), str(period),
                  str(3600 if a.steady else MAX_AGE)]
    origin = subprocess.Popen(origin_cmd, stderr=subprocess.DEVNULL)
    wait_port(ORIGIN_PORT, origin)
    c = http.client.HTTPConnection("127.0.0.1", ORIGIN_PORT)
    c.request("GET", "/v1/index")
    assets = [(l.split()[0], int(l.split()[1])) for l in c.getresponse().read().decode().splitlines()]
    c.close()
    log = open(tmp / "gateway.log", "w")
    gw = Gateway(a.binary, conf, log)
    proc = gw.start()
    time.sleep(0.5)
    start = sample(proc.pid)
    series = [(0.0, start)]

    workers = [threading.Thread(target=client_worker, args=(assets, i)) for i in range(CLIENTS)]
    if not a.steady:
        workers.append(threading.Thread(target=purge_worker, args=(assets,)))
    t0 = time.monotonic()
    for w in workers:
        w.start()
    events = [] if a.steady else [
        (0.2, "origin kill"), (0.35, "upgrade"), (0.5, "origin kill"), (0.7, "gateway kill")]
    log_events = []
    while time.monotonic() - t0 < a.seconds:
        now = time.monotonic() - t0
        if events and now >= events[0][0] * a.seconds:
            _, what = events.pop(0)
            log_events.append((round(now, 1), what))
            # An upgrade is not an outage: nothing may fail during it.
            if what != "upgrade":
                outages.append((time.monotonic(), float("inf")))
            if what == "origin kill":
                origin.send_signal(signal.SIGKILL)
                origin.wait()
                time.sleep(3)
                origin = subprocess.Popen(origin_cmd, stderr=subprocess.DEVNULL)
                wait_port(ORIGIN_PORT, origin)
            elif what == "upgrade":
                new = gw.start(upgrade=True)
                sock = tmp / "upgrade.sock"
                for _ in range(200):
                    if sock.exists():
                        break
                    time.sleep(0.05)
                proc.send_signal(signal.SIGQUIT)
                proc.wait(timeout=30)
                proc = new
            elif what == "gateway kill":
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc = gw.start()
            if what != "upgrade":
                # Plus the ejection cool-down (1 s) that lets the restarted origin back in.
                outages[-1] = (outages[-1][0], time.monotonic() + 2.0)
        s = sample(proc.pid)
        if s:
            series.append((round(now, 1), s))
        time.sleep(1.0)
    stop.set()
    for w in workers:
        w.join()
    at_load_end = sample(proc.pid)
    time.sleep(12)  # idle: keep-alive clients (5 s) and pooled upstream connections (2 s) time out
    end = sample(proc.pid)
    alive = proc.poll() is None
    admin = None
    try:
        c = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=5)
        c.request("GET", "/cache")
        admin = json.loads(c.getresponse().read())
    except Exception:
        pass
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    origin.kill()

    rss = [s[0] for _, s in series]
    fds = [s[1] for _, s in series]
    report = {
        "seconds": a.seconds,
        "mode": "steady" if a.steady else "faults",
        "binary": a.binary,
        "events": log_events,
        "outcomes": dict(sorted(results.items())),
        "wrong_examples": wrong,
        "unexpected_examples": unexpected,
        "gateway_alive_at_end": alive,
        "rss_mib": {"start": start[0] >> 20, "peak": max(rss) >> 20, "at_load_end": at_load_end[0] >> 20,
                    "after_12s_idle": end[0] >> 20, "bound": RSS_BOUND >> 20,
                    "every_10s": [(t, s[0] >> 20) for t, s in series if int(t) % 10 == 0]},
        "threads": {"start": start[2], "peak": max(s[2] for _, s in series), "end": end[2]},
        "open_fds": {"start": start[1], "peak": max(fds), "at_load_end": at_load_end[1], "end": end[1]},
        "cache_at_end": admin,
    }
    print(json.dumps(report, indent=2))
    (ROOT / "bench/results").mkdir(parents=True, exist_ok=True)
    name = "cache-soak-steady.json" if a.steady else "cache-soak.json"
    if a.no_disk:
        name = name.replace(".json", "-no-disk.json")
    (ROOT / "bench/results" / name).write_text(json.dumps(report, indent=2))
    total = sum(n for k, n in results.items() if not k.startswith("purge"))
    print(f"\n{total} requests, {results['wrong']} wrong bodies; RSS {start[0] >> 20} -> peak {max(rss) >> 20} -> "
          f"{end[0] >> 20} MiB after 12 s idle (bound {RSS_BOUND >> 20} MiB); threads peak "
          f"{report['threads']['peak']}; fds {start[1]} -> peak {max(fds)} -> {end[1]}")
    sys.exit(1 if results["wrong"] else 0)


if __name__ == "__main__":
    main()
