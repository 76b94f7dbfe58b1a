#!/usr/bin/env python3
"""Soak: mixed load on 127.0.0.1 for a bounded time while the origin is killed and restarted
twice. Reports requests by kind and outcome, and the gateway's RSS and open file descriptors
at start, peak and end (after the load stops and idle connections time out).

    bench/soak [seconds]        (default 60; builds the release binaries first)

Load (8 client threads): small fetches on keep-alive connections, Range requests, downloads
of a 100 MiB asset aborted after 1 MiB, whole 100 MiB downloads, and bad requests (bad id,
no route, POST, a smuggling shape, an oversized header, a slow head). The origin is the
bundled sample origin, SIGKILLed at 1/3 and 2/3 of the run and restarted 3 s later.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from procs import open_fds, status_bytes, wait_port

ROOT = Path(__file__).resolve().parent.parent
DURATION = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
ORIGIN_PORT, GATEWAY_PORT, ADMIN_PORT = 19301, 19380, 19390
SVG = "6f9619ff-8b86-4011-b42d-00c04fc964ff"
BMP = "0b3e8b1c-2f4d-4c6e-9a1b-7d2e5f8a9c30"
LARGE = "c56a4180-65aa-42ec-a945-5fd21dec0538"
LARGE_SIZE = 100 * 1024 * 1024

results = Counter()
lock = threading.Lock()
stop = threading.Event()
outages = []  # (start, end) monotonic times when the origin is down (plus the health-check lag)


def record(kind, outcome):
    with lock:
        results[(kind, outcome)] += 1


def in_outage(t0, t1):
    return any(s <= t1 and t0 <= e for s, e in outages)


def classify(kind, status, ok_statuses, t0):
    if status in ok_statuses:
        return "ok"
    if status in (502, 503, 504) and in_outage(t0, time.monotonic()):
        return "5xx during origin outage"
    return f"unexpected {status}"


def fetch_worker():
    conn = None
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=10)
            conn.request("GET", f"/content/v1/assets/{SVG}")
            r = conn.getresponse()
            body = r.read()
            out = classify("fetch", r.status, (200,), t0)
            if out == "ok" and not body.startswith(b"<svg"):
                out = "bad body"
            record("fetch", out)
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:
            record("fetch", "error during outage" if in_outage(t0, time.monotonic()) else f"error {type(e).__name__}")
            conn = None


def range_worker():
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            c = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=10)
            c.request("GET", f"/content/v1/assets/{BMP}", headers={"Range": "bytes=100-50099"})
            r = c.getresponse()
            body = r.read()
            out = classify("range", r.status, (206,), t0)
            if out == "ok" and len(body) != 50000:
                out = "short body"
            record("range", out)
            c.close()
        except Exception as e:
            record("range", "error during outage" if in_outage(t0, time.monotonic()) else f"error {type(e).__name__}")


def download_worker(abort):
    kind = "aborted download" if abort else "full download"
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            c = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=10)
            c.request("GET", f"/content/v1/assets/{LARGE}")
            r = c.getresponse()
            if r.status != 200:
                r.read()
                record(kind, classify(kind, r.status, (200,), t0))
                c.close()
                continue
            want = 1024 * 1024 if abort else LARGE_SIZE
            got = 0
            while got < want:
                chunk = r.read(min(256 * 1024, want - got))
                if not chunk:
                    break
                got += len(chunk)
            c.close()
            if got == want:
                record(kind, "ok")
            else:
                record(kind, "cut during outage" if in_outage(t0, time.monotonic()) else "cut short")
        except Exception as e:
            record(kind, "error during outage" if in_outage(t0, time.monotonic()) else f"error {type(e).__name__}")


BAD = [
    ("bad id", b"GET /content/v1/assets/not-a-uuid HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("no route", b"GET /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("POST", f"POST /content/v1/assets/{SVG} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi".encode(), 405),
    ("CL+TE", f"GET /content/v1/assets/{SVG} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(), 400),
    ("big header", f"GET /content/v1/assets/{SVG} HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 40000}\r\n\r\n".encode(), 431),
]


def bad_worker():
    i = 0
    while not stop.is_set():
        name, req, expect = BAD[i % len(BAD)]
        i += 1
        try:
            s = socket.create_connection(("127.0.0.1", GATEWAY_PORT), timeout=10)
            s.sendall(req)
            data = s.recv(4096)
            status = int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else 0
            record(f"bad: {name}", "answered as expected" if status == expect else f"unexpected {status}")
            s.close()
        except Exception as e:
            record(f"bad: {name}", f"error {type(e).__name__}")
        if i % 25 == 0:  # now and then, a slow head that must be cut off
            try:
                s = socket.create_connection(("127.0.0.1", GATEWAY_PORT), timeout=10)
                s.sendall(b"GET /content/v1/as")
                cut = s.recv(16) == b""
                record("bad: slow head", "cut off" if cut else "not cut")
                s.close()
            except Exception:
                record("bad: slow head", "cut off")


def proc_stats(pid):
    return status_bytes(pid, "VmRSS"), open_fds(pid)


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "asset-gateway", "--example", "sample_origin"],
                   cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="asset-gateway-soak-"))
    conf = tmp / "soak.yaml"
    conf.write_text(f"""threads: 2
pid_file: {tmp}/gw.pid
upgrade_sock: {tmp}/upgrade.sock
gateway:
  listen: ["127.0.0.1:{GATEWAY_PORT}"]
  admin: "127.0.0.1:{ADMIN_PORT}"
  downstream: {{keepalive_timeout: 5s, header_timeout: 2s}}
  upstreams:
    assets:
      peers: ["127.0.0.1:{ORIGIN_PORT}"]
      read_timeout: 5s
      idle_timeout: 2s
      health_check: {{path: /healthz, interval: 500ms, timeout: 500ms, healthy_after: 1, unhealthy_after: 1}}
      passive_ejection: {{failures: 3, cooldown: 1s}}
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
""")
    origin_cmd = [str(ROOT / "target/release/examples/sample_origin"), str(ORIGIN_PORT)]
    devnull = subprocess.DEVNULL
    origin = subprocess.Popen(origin_cmd, stderr=devnull)
    wait_port(ORIGIN_PORT, origin)
    log = open(tmp / "gateway.log", "w")
    gw = subprocess.Popen([str(ROOT / "target/release/asset-gateway"), "-c", str(conf)], stderr=log,
                          env={**os.environ, "RUST_LOG": "info,access=off"})
    wait_port(GATEWAY_PORT, gw)
    time.sleep(0.5)
    start_rss, start_fds = proc_stats(gw.pid)
    peak_rss, peak_fds = start_rss, start_fds

    workers = [threading.Thread(target=fetch_worker) for _ in range(3)]
    workers += [threading.Thread(target=range_worker), threading.Thread(target=bad_worker)]
    workers += [threading.Thread(target=download_worker, args=(True,)), threading.Thread(target=download_worker, args=(True,))]
    workers += [threading.Thread(target=download_worker, args=(False,))]
    t_start = time.monotonic()
    for w in workers:
        w.start()
    kills = [DURATION / 3, 2 * DURATION / 3]
    while time.monotonic() - t_start < DURATION:
        now = time.monotonic() - t_start
        if kills and now >= kills[0]:
            kills.pop(0)
            outages.append((time.monotonic(), float("inf")))
            origin.send_signal(signal.SIGKILL)
            origin.wait()
            time.sleep(3)
            origin = subprocess.Popen(origin_cmd, stderr=devnull)
            wait_port(ORIGIN_PORT, origin)
            # The outage lasts until the health check (0.5 s) and ejection cool-down (1 s)
            # have let the restarted origin back in.
            outages[-1] = (outages[-1][0], time.monotonic() + 1.5)
        rss, fds = proc_stats(gw.pid)
        peak_rss, peak_fds = max(peak_rss, rss), max(peak_fds, fds)
        time.sleep(0.25)
    stop.set()
    for w in workers:
        w.join()
    load_end = proc_stats(gw.pid)
    time.sleep(6)  # idle client (5 s) and pooled upstream (2 s) connections time out
    end_rss, end_fds = proc_stats(gw.pid)
    alive = gw.poll() is None
    gw.send_signal(signal.SIGTERM)
    gw.wait(timeout=30)
    origin.kill()

    total = sum(results.values())
    report = {
        "duration_s": DURATION,
        "requests": total,
        "by_kind_and_outcome": {f"{k} / {o}": n for (k, o), n in sorted(results.items())},
        "gateway_alive_at_end": alive,
        "rss_bytes": {"start": start_rss, "peak": peak_rss, "at_load_end": load_end[0], "end": end_rss},
        "open_fds": {"start": start_fds, "peak": peak_fds, "at_load_end": load_end[1], "end": end_fds},
    }
    print(json.dumps(report, indent=2))
    (ROOT / "bench/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench/results/soak.json").write_text(json.dumps(report, indent=2))
    unexpected = sum(n for (k, o), n in results.items()
                     if o not in ("ok", "answered as expected", "cut off") and "outage" not in o)
    print(f"\n{total} requests, {unexpected} with an unexpected outcome; "
          f"RSS {start_rss >> 20} -> peak {peak_rss >> 20} -> end {end_rss >> 20} MiB; "
          f"fds {start_fds} -> peak {peak_fds} -> end {end_fds}")


if __name__ == "__main__":
    main()
