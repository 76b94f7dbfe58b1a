#!/usr/bin/env python3
"""The gateway against nginx (as the reverse proxy it would replace, configured as a media team
would run it) and against going direct to the origin, measured in one run with the targets
interleaved and repeated (medians).

    bench/run [--quick]

Targets: the gateway; nginx with its usual proxy buffers but no temp-file spooling
(`proxy_max_temp_file_size 0`, `sendfile`, `tcp_nopush`), and the same nginx with
`proxy_buffering off`: ratios are taken against the faster (or smaller) of the two; a minimal
Pingora proxy (examples/minimal_proxy.rs) on the patched Pingora in vendor/ and on pristine
Pingora 0.9.1 (bench/pristine/); and direct to the origin.

Layout (2 cores): the proxies each get one worker thread pinned to core 0; the origin (nginx
serving files) and the load generators (curl, wrk) are pinned to core 1. Writes
bench/results/latest.json and prints a markdown table.
"""
import json
import os
import re
import resource
import socket
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from procs import status_bytes, wait_port

ROOT = Path(__file__).resolve().parent.parent
QUICK = "--quick" in sys.argv
PROXY_CORE, LOAD_CORE = "0", "1"
# BENCH_PORT_OFFSET moves every port (two benchmarks on one machine must not share them).
_P = int(os.environ.get("BENCH_PORT_OFFSET", "0"))
ORIGIN_FAST, ORIGIN_SLOW, GATEWAY, NGINX, MINIMAL = 18001 + _P, 18002 + _P, 18080 + _P, 18081 + _P, 18082 + _P
NGINX_UNBUFFERED, MINIMAL_PRISTINE = 18083 + _P, 18084 + _P
GATEWAY_H2, NGINX_H2 = 18443 + _P, 18444 + _P
GATEWAY_CACHE, NGINX_CACHE = 18085 + _P, 18086 + _P
# Cold 5 MiB assets for the herd phase, one per repetition and target.
HERD = [f"00000000-0000-4000-8000-0000000002{i:02d}" for i in range(8)]
HERD_CLIENTS = 50
SMALL, IMAGE, LARGE = ("00000000-0000-4000-8000-000000000008", "00000000-0000-4000-8000-000000000005",
                       "00000000-0000-4000-8000-000000000100")
# A typical photo: 200 KiB (0xc8 = 200).
PHOTO = "00000000-0000-4000-8000-0000000000c8"
SIZES = {SMALL: 8 * 1024, PHOTO: 200 * 1024, IMAGE: 5 * 1024 * 1024, LARGE: 100 * 1024 * 1024}
CLK_TCK = os.sysconf("SC_CLK_TCK")
TMP = Path(tempfile.mkdtemp(prefix="asset-gateway-bench-"))


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def pinned(core, cmd):
    return ["taskset", "-c", core] + cmd


# ---- processes ----------------------------------------------------------------------------

def write_files():
    (TMP / "tls").mkdir()
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(TMP / "tls/key.pem"), "-out", str(TMP / "tls/cert.pem"), "-days", "2",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    www = TMP / "www/v1/assets"
    www.mkdir(parents=True)
    for name, size in list(SIZES.items()) + [(h, SIZES[IMAGE]) for h in HERD]:
        with open(www / name, "wb") as f:
            block = bytes(range(256)) * 4096  # 1 MiB
            left = size
            while left:
                f.write(block[: min(left, len(block))])
                left -= min(left, len(block))


NGINX_COMMON = """
worker_processes 1;
daemon off;
user root;
error_log {tmp}/{name}-error.log warn;
pid {tmp}/{name}.pid;
events {{ worker_connections 8192; }}
http {{
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{body}
}}
"""

ORIGIN_BODY = """
    log_format origin '$connection $connection_requests $request_uri $status $bytes_sent';
    access_log {tmp}/origin-access.log origin;
    sendfile on;
    tcp_nopush on;
    server {{ listen 127.0.0.1:{fast}; root {tmp}/www; }}
    # The real-world case: a 5 MiB image takes about 320 ms.
    server {{ listen 127.0.0.1:{slow}; root {tmp}/www; limit_rate 12800k; }}
"""

PROXY_BODY = """
    access_log off;
    sendfile on;
    tcp_nopush on;
    upstream fast {{ server 127.0.0.1:{fast}; keepalive 64; }}
    upstream slow {{ server 127.0.0.1:{slow}; keepalive 64; }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    # A large response is relayed through the memory buffers, never spooled to disk.
    proxy_max_temp_file_size 0;
    {buffering}
    server {{
        listen 127.0.0.1:{port};
        {tls}
        location /content/v1/assets/ {{ proxy_pass http://fast/v1/assets/; }}
        location /slow/v1/assets/ {{ proxy_pass http://slow/v1/assets/; }}
    }}
"""

# The h2 phase: TLS 1.3 + ALPN h2 on both sides, the same certificate and key (ECDSA P-256).
NGINX_TLS = """listen 127.0.0.1:{h2} ssl http2;
        ssl_certificate {tmp}/tls/cert.pem;
        ssl_certificate_key {tmp}/tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;"""

# nginx as a caching proxy, as its users set it up for assets: a disk cache (served from the
# page cache once warm) with a lock so concurrent misses make one upstream request.
NGINX_CACHE_BODY = """
    access_log off;
    sendfile on;
    tcp_nopush on;
    upstream fast {{ server 127.0.0.1:{fast}; keepalive 64; }}
    upstream slow {{ server 127.0.0.1:{slow}; keepalive 64; }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=assets:16m max_size=2g inactive=1h use_temp_path=off;
    proxy_cache assets;
    proxy_cache_valid 200 1h;
    proxy_cache_lock on;
    proxy_cache_lock_timeout 30s;
    server {{
        listen 127.0.0.1:{port};
        location /content/v1/assets/ {{ proxy_pass http://fast/v1/assets/; }}
        location /slow/v1/assets/ {{ proxy_pass http://slow/v1/assets/; }}
    }}
"""

# The gateway's upstreams and routes, shared by its two benchmark configs.
UPSTREAMS_AND_ROUTES = """  upstreams:
    fast:
      peers: ["127.0.0.1:{fast}"]
    slow:
      peers: ["127.0.0.1:{slow}"]
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: fast
      rewrite: /v1/assets/{{id}}
    - path: /slow/v1/assets/{{id}}
      upstream: slow
      rewrite: /v1/assets/{{id}}
"""

# The caching gateway: small objects in memory, the 100 MiB asset (larger than `memory`) on the
# disk tier only.
GATEWAY_CACHE_CONF = """threads: 1
pid_file: {tmp}/gateway-cache.pid
upgrade_sock: {tmp}/gateway-cache-upgrade.sock
gateway:
  listen: ["127.0.0.1:{port}"]
  cache:
    memory: 64MiB
    disk: {{path: "{tmp}/gateway-disk-cache", size: 2GiB}}
""" + UPSTREAMS_AND_ROUTES

GATEWAY_CONF = """threads: 1
pid_file: {tmp}/gateway.pid
upgrade_sock: {tmp}/gateway-upgrade.sock
gateway:
  listen:
    - "127.0.0.1:{port}"
    - addr: "127.0.0.1:{h2}"
      tls: {{cert: "{tmp}/tls/cert.pem", key: "{tmp}/tls/key.pem"}}
""" + UPSTREAMS_AND_ROUTES


def start_nginx(name, body, core):
    conf = TMP / f"{name}.conf"
    conf.write_text(NGINX_COMMON.format(tmp=TMP, name=name, body=body))
    for d in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        (TMP / f"{name}-{d}").mkdir(exist_ok=True)
    p = subprocess.Popen(pinned(core, ["nginx", "-c", str(conf), "-p", str(TMP)]), stderr=subprocess.DEVNULL)
    return p


def nginx_pids(master):
    kids = sh(["pgrep", "-P", str(master.pid)]).split()
    return [master.pid] + [int(k) for k in kids]


class Target:
    def __init__(self, name, port, pids, prefix="/content"):
        self.name, self.port, self.pids, self.prefix = name, port, pids, prefix

    def url(self, asset, slow=False):
        if self.name == "direct":
            return f"http://127.0.0.1:{ORIGIN_SLOW if slow else ORIGIN_FAST}/v1/assets/{asset}"
        return f"http://127.0.0.1:{self.port}{'/slow' if slow else '/content'}/v1/assets/{asset}"

    def cpu(self):
        """utime + stime of the proxy's processes, in seconds."""
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def rss(self):
        return sum(status_bytes(pid, "VmRSS") for pid in self.pids())

    def disk_writes(self):
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
        return total


def origin_log_lines():
    p = TMP / "origin-access.log"
    return p.read_text().splitlines() if p.exists() else []


# ---- measurements -------------------------------------------------------------------------

def curl(url, extra=()):
    out = subprocess.run(pinned(LOAD_CORE, ["curl", "-s", "-o", "/dev/null", "-w",
                                            "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
                                            *extra, url]), capture_output=True, text=True)
    code, ttfb, total, size = out.stdout.split()
    return int(code), float(ttfb), float(total), int(size)


def measure_ttfb(targets, reps):
    """TTFB and total time of the 5 MiB image on the rate-limited origin: on a new client
    connection each time, and on a kept-alive one (curl fetching it twice; the second counts)."""
    res = {t.name: {"ttfb": [], "total": [], "kept_ttfb": [], "errors": 0} for t in targets}
    for _ in range(reps):
        for t in targets:
            code, ttfb, total, size = curl(t.url(IMAGE, slow=True))
            if code != 200 or size != SIZES[IMAGE]:
                res[t.name]["errors"] += 1
                continue
            res[t.name]["ttfb"].append(ttfb)
            res[t.name]["total"].append(total)
            out = subprocess.run(pinned(LOAD_CORE, ["curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-w",
                                                    "%{http_code} %{time_starttransfer} %{num_connects}\n",
                                                    t.url(IMAGE, slow=True), t.url(IMAGE, slow=True)]),
                                 capture_output=True, text=True).stdout.splitlines()
            code2, ttfb2, connects = out[1].split()
            if code2 != "200" or connects != "0":
                res[t.name]["errors"] += 1
                continue
            res[t.name]["kept_ttfb"].append(float(ttfb2))
    return {n: {"ttfb_ms": statistics.median(r["ttfb"]) * 1000, "total_ms": statistics.median(r["total"]) * 1000,
                "kept_alive_ttfb_ms": statistics.median(r["kept_ttfb"]) * 1000, "errors": r["errors"]}
            for n, r in res.items()}


def parse_latency(text, pct):
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v if unit == "ms" else v * 1000


def measure_small(targets, reps, seconds, asset=SMALL):
    """`asset` with 32 kept-alive connections (wrk): requests/s, latency, proxy CPU per request,
    and how busy the proxy's core was (its CPU time over the wall time: near 100% means the
    load saturated the proxy, which the CPU per request figures assume)."""
    res = {t.name: [] for t in targets}
    for _ in range(reps):
        for t in targets:
            before_log = len(origin_log_lines())
            cpu0 = t.cpu()
            out = sh(pinned(LOAD_CORE, ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", t.url(asset)]))
            cpu = t.cpu() - cpu0
            reqs = int(re.search(r"(\d+) requests in", out).group(1))
            errors = 0
            for pat in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
                m = re.search(pat, out)
                if m:
                    errors += sum(int(g) for g in m.groups())
            lines = origin_log_lines()[before_log:]
            conns = len({l.split()[0] for l in lines})
            res[t.name].append({
                "rps": reqs / seconds, "p50_ms": parse_latency(out, 50), "p99_ms": parse_latency(out, 99),
                "cpu_us_per_req": cpu / reqs * 1e6 if t.name != "direct" else None,
                "busy": cpu / seconds if t.name != "direct" else None,
                "requests": reqs, "errors": errors, "upstream_connections": conns, "client_connections": 32,
            })
    summary = {}
    for name, runs in res.items():
        med = lambda k: statistics.median([r[k] for r in runs]) if runs[0][k] is not None else None
        summary[name] = {k: med(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "busy")}
        summary[name]["errors"] = sum(r["errors"] for r in runs)
        summary[name]["requests"] = sum(r["requests"] for r in runs)
        summary[name]["upstream_connections"] = max(r["upstream_connections"] for r in runs)
        summary[name]["runs"] = runs
    return summary


def measure_h2(targets, reps, seconds):
    """8 KiB over TLS h2: 8 connections with 16 streams each (a browser page per connection)."""
    res = {t.name: [] for t in targets}
    for _ in range(reps):
        for t in targets:
            cpu0 = t.cpu()
            out = sh(pinned(LOAD_CORE, ["h2load", "-c8", "-m16", "-t1", f"-D{seconds}", "--warm-up-time=1",
                                        f"https://127.0.0.1:{t.h2_port}/content/v1/assets/{SMALL}"]))
            cpu = t.cpu() - cpu0
            done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out).group(2))
            failed = int(re.search(r"(\d+) failed, (\d+) errored", out).group(1))
            proto = re.search(r"Application protocol: (\S+)", out).group(1)
            # --warm-up-time: the CPU counter also spans the warm-up second, so CPU per request
            # is taken over warm-up + measured requests at the measured rate.
            rps = done / seconds
            res[t.name].append({"rps": rps, "cpu_us_per_req": cpu / (rps * (seconds + 1)) * 1e6,
                                "errors": failed, "proto": proto})
    summary = {}
    for name, runs in res.items():
        summary[name] = {k: statistics.median([r[k] for r in runs]) for k in ("rps", "cpu_us_per_req")}
        summary[name]["errors"] = sum(r["errors"] for r in runs)
        summary[name]["proto"] = runs[0]["proto"]
        summary[name]["runs"] = runs
    return summary


def measure_cache_hits(targets, reps, seconds):
    """The 8 KiB asset served from the cache (filled first): TTFB on a new connection (median
    of 31 per repetition), then requests/s and proxy CPU per request with 32 connections."""
    for t in targets:
        curl(t.url(SMALL))
        time.sleep(0.3)  # the fill commits after the response
    ttfb = {t.name: [] for t in targets}
    for _ in range(reps * 31):
        for t in targets:
            code, first, _, size = curl(t.url(SMALL))
            if code == 200 and size == SIZES[SMALL]:
                ttfb[t.name].append(first * 1000)
    before = len(origin_log_lines())
    load = measure_small(targets, reps, seconds)
    origin = sum(1 for l in origin_log_lines()[before:] if SMALL in l)
    return {t.name: {"hit_ttfb_ms": statistics.median(ttfb[t.name]), "rps": load[t.name]["rps"],
                     "cpu_us_per_req": load[t.name]["cpu_us_per_req"], "busy": load[t.name]["busy"],
                     "errors": load[t.name]["errors"],
                     "origin_requests_during_load": origin if t.name != "direct" else None}
            for t in targets}


def measure_herd(targets, reps):
    """HERD_CLIENTS clients at once on a cold 5 MiB asset behind the rate-limited origin
    (~400 ms per copy): how many requests reach the origin, and when the clients get their
    first byte (a cache that streams the fill to every waiter gives all of them the first
    byte early; one that makes waiters wait for the whole object does not)."""
    res = {t.name: [] for t in targets}
    assets = iter(HERD)
    for _ in range(reps):
        for t in targets:
            asset = next(assets)
            before = len(origin_log_lines())
            procs = [subprocess.Popen(pinned(LOAD_CORE, ["curl", "-s", "-o", "/dev/null", "-w",
                                                         "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
                                                         t.url(asset, slow=True)]), stdout=subprocess.PIPE, text=True)
                     for _ in range(HERD_CLIENTS)]
            outs = [p.communicate()[0].split() for p in procs]
            ok = [o for o in outs if o[0] == "200" and int(o[3]) == SIZES[IMAGE]]
            time.sleep(0.5)
            origin = sum(1 for l in origin_log_lines()[before:] if asset in l)
            firsts = sorted(float(o[1]) * 1000 for o in ok)
            res[t.name].append({"origin_requests": origin, "ok": len(ok),
                                "ttfb_median_ms": statistics.median(firsts) if firsts else None,
                                "ttfb_max_ms": firsts[-1] if firsts else None,
                                "total_max_ms": max(float(o[2]) for o in ok) * 1000 if ok else None})
    return {name: {"origin_requests": max(r["origin_requests"] for r in runs),
                   "errors": sum(HERD_CLIENTS - r["ok"] for r in runs),
                   "ttfb_median_ms": statistics.median(r["ttfb_median_ms"] for r in runs),
                   "ttfb_max_ms": statistics.median(r["ttfb_max_ms"] for r in runs),
                   "total_max_ms": statistics.median(r["total_max_ms"] for r in runs), "runs": runs}
            for name, runs in res.items()}


def measure_cached(targets, reps, seconds):
    """From the cache, each target filled first: the 200 KiB photo with 32 connections (as
    `measure_small`), then the 100 MiB asset one download at a time (as `measure_large`; the
    gateway serves it from its disk tier: it does not fit its `memory`)."""
    for t in targets:
        for asset in (PHOTO, LARGE):
            curl(t.url(asset))
    time.sleep(2)  # fills commit after their response (the 100 MiB file is renamed into place)
    before = len(origin_log_lines())
    photo = measure_small(targets, reps, seconds, asset=PHOTO)
    large = measure_large(targets, reps)
    origin = [l for l in origin_log_lines()[before:] if PHOTO in l or LARGE in l]
    return {"photo": photo, "large": large, "origin_requests_during_load": len(origin)}


def measure_large(targets, reps):
    res = {t.name: {"mbps": [], "cpu": [], "errors": 0} for t in targets}
    for _ in range(reps):
        for t in targets:
            cpu0 = t.cpu()
            code, _, total, size = curl(t.url(LARGE))
            cpu = t.cpu() - cpu0
            if code != 200 or size != SIZES[LARGE]:
                res[t.name]["errors"] += 1
                continue
            res[t.name]["mbps"].append(size / total / 1e6)
            res[t.name]["cpu"].append(cpu)
    return {n: {"mb_per_s": statistics.median(r["mbps"]),
                "cpu_ms_per_100mib": statistics.median(r["cpu"]) * 1000 if n != "direct" else None,
                "errors": r["errors"]} for n, r in res.items()}


def measure_idle_clients(t, clients):
    """RSS growth with `clients` idle keep-alive connections, every second one after one
    request (made one at a time), and the RSS 10 s after they all closed."""
    rss0 = t.rss()
    socks = []
    req = f"GET {t.url(SMALL).split(str(t.port), 1)[1]} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    try:
        for i in range(clients):
            s = socket.create_connection(("127.0.0.1", t.port))
            socks.append(s)
            if i % 2 == 0:
                s.sendall(req)
                got = b""
                while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < SIZES[SMALL]:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError(f"{t.name} closed an idle-test connection")
                    got += chunk
        time.sleep(1)
        held = t.rss()
    finally:
        for s in socks:
            s.close()
    time.sleep(10)
    after = t.rss()
    return {"rss_start_mib": rss0 / 2**20, "rss_growth_mib": (held - rss0) / 2**20,
            "kib_per_client": (held - rss0) / 1024 / clients, "rss_10s_after_close_mib": (after - rss0) / 2**20}


def measure_slow_clients(t, clients, seconds):
    before_log = len(origin_log_lines())
    rss0, disk0, peak = t.rss(), t.disk_writes(), 0
    procs = [subprocess.Popen(pinned(LOAD_CORE, ["curl", "-s", "-o", "/dev/null", "--limit-rate", "2M", "--max-time",
                                                 str(seconds), "-w", "%{size_download}", t.url(LARGE)]),
                              stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    while any(p.poll() is None for p in procs):
        peak = max(peak, t.rss())
        time.sleep(0.1)
    received = sum(int(p.stdout.read() or 0) for p in procs)
    time.sleep(1.5)  # the proxy closes its upstream connections; the origin logs them
    sent = sum(int(l.split()[4]) for l in origin_log_lines()[before_log:] if LARGE in l)
    time.sleep(8.5)
    after = t.rss()
    return {"rss_start_mib": rss0 / 2**20, "rss_peak_mib": peak / 2**20, "rss_growth_mib": (peak - rss0) / 2**20,
            "rss_10s_after_mib": (after - rss0) / 2**20,
            "disk_write_bytes": t.disk_writes() - disk0, "origin_sent_mib": sent / 2**20,
            "clients_received_mib": received / 2**20}


# ---- main ---------------------------------------------------------------------------------

def main():
    # 2,000 idle clients need descriptors, here and in the proxies (which inherit the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # cmake: pristine Pingora (the comparison column) still builds zlib-ng.
    subprocess.run([str(ROOT / "scripts/install-deps"), "nginx", "wrk", "curl", "cmake", "openssl", "nghttp2-client"], check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "asset-gateway", "--example", "minimal_proxy"],
                   cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", "bench/pristine/Cargo.toml",
                    "--target-dir", "target/pristine"], cwd=ROOT, check=True,
                   env={**os.environ, "RUSTFLAGS": "--cfg pristine_pingora"})
    write_files()
    procs, running = [], {}
    try:
        origin = start_nginx("origin", ORIGIN_BODY.format(tmp=TMP, fast=ORIGIN_FAST, slow=ORIGIN_SLOW), LOAD_CORE)
        procs.append(origin)
        nginx = start_nginx("proxy", PROXY_BODY.format(fast=ORIGIN_FAST, slow=ORIGIN_SLOW, port=NGINX, buffering="",
                                             tls=NGINX_TLS.format(h2=NGINX_H2, tmp=TMP)),
                            PROXY_CORE)
        procs.append(nginx)
        nginx_unbuf = start_nginx("proxy-unbuffered", PROXY_BODY.format(fast=ORIGIN_FAST, slow=ORIGIN_SLOW,
                                                                         port=NGINX_UNBUFFERED,
                                                                         buffering="proxy_buffering off;", tls=""),
                                  PROXY_CORE)
        procs.append(nginx_unbuf)
        nginx_cache = start_nginx("proxy-cache", NGINX_CACHE_BODY.format(fast=ORIGIN_FAST, slow=ORIGIN_SLOW,
                                                                         port=NGINX_CACHE, tmp=TMP), PROXY_CORE)
        procs.append(nginx_cache)
        cache_conf = TMP / "gateway-cache.yaml"
        cache_conf.write_text(GATEWAY_CACHE_CONF.format(tmp=TMP, port=GATEWAY_CACHE, fast=ORIGIN_FAST,
                                                        slow=ORIGIN_SLOW))
        gateway_cache = subprocess.Popen(pinned(PROXY_CORE, [str(ROOT / "target/release/asset-gateway"), "-c",
                                                             str(cache_conf)]), stderr=subprocess.DEVNULL)
        procs.append(gateway_cache)
        conf = TMP / "gateway.yaml"
        conf.write_text(GATEWAY_CONF.format(tmp=TMP, port=GATEWAY, h2=GATEWAY_H2, fast=ORIGIN_FAST, slow=ORIGIN_SLOW))
        log_lines = [0]

        def start_gateway():
            # The access log stays on, read through a pipe (as journald would), not a file: a
            # file would show up as disk writes.
            p = subprocess.Popen(pinned(PROXY_CORE, [str(ROOT / "target/release/asset-gateway"), "-c", str(conf)]),
                                 stderr=subprocess.PIPE, env={**os.environ, "RUST_LOG": "info"})
            threading.Thread(target=lambda: [log_lines.__setitem__(0, log_lines[0] + 1) for _ in p.stderr],
                             daemon=True).start()
            return p

        def start_minimal(binary, port):
            return subprocess.Popen(pinned(PROXY_CORE, [str(ROOT / binary), f"127.0.0.1:{port}",
                                                        f"127.0.0.1:{ORIGIN_FAST}"]), stderr=subprocess.DEVNULL)

        # The Pingora-based proxies (the gateway, a minimal Pingora proxy on the patched and on
        # the pristine Pingora) are restarted before each memory phase: RSS a process keeps
        # from an earlier phase would be reused and hide what the phase costs.
        starters = {
            "gateway": (GATEWAY, start_gateway),
            "pingora-minimal": (MINIMAL, lambda: start_minimal("target/release/examples/minimal_proxy", MINIMAL)),
            "pingora-minimal-pristine": (MINIMAL_PRISTINE, lambda: start_minimal(
                "target/pristine/release/minimal_proxy_pristine", MINIMAL_PRISTINE)),
        }

        def restart(name):
            port, start = starters[name]
            old = running.get(name)
            if old is not None:
                old.send_signal(signal.SIGINT)
                old.wait(timeout=30)
            running[name] = start()
            wait_port(port, running[name])
            for a in SIZES:
                curl(f"http://127.0.0.1:{port}/content/v1/assets/{a}")

        for name in starters:
            restart(name)
        for port in (ORIGIN_FAST, ORIGIN_SLOW, NGINX, NGINX_UNBUFFERED, NGINX_H2, GATEWAY_H2, NGINX_CACHE,
                     GATEWAY_CACHE):
            wait_port(port)
        targets = [
            Target("direct", None, lambda: []),
            Target("gateway", GATEWAY, lambda: [running["gateway"].pid]),
            Target("nginx", NGINX, lambda: nginx_pids(nginx)),
            Target("nginx-unbuffered", NGINX_UNBUFFERED, lambda: nginx_pids(nginx_unbuf)),
        ]
        floors = [Target("pingora-minimal", MINIMAL, lambda: [running["pingora-minimal"].pid]),
                  Target("pingora-minimal-pristine", MINIMAL_PRISTINE,
                         lambda: [running["pingora-minimal-pristine"].pid])]

        def fresh(t):
            if t.name in starters:
                restart(t.name)
            return t

        # Warm up connections and page cache.
        for t in targets + floors:
            for a in SIZES:
                curl(t.url(a))
        results = {"machine": {"cores": os.cpu_count(), "proxy_core": PROXY_CORE, "load_core": LOAD_CORE},
                   "gateway_access_log": "on (text, through a pipe)"}
        results["ttfb_5mib_rate_limited"] = measure_ttfb(targets, 5 if QUICK else 15)
        results["small_8kib_32_conns"] = measure_small(targets + floors, 1 if QUICK else 3, 4 if QUICK else 6)
        results["photo_200kib_32_conns"] = measure_small(targets + floors, 1 if QUICK else 3, 4 if QUICK else 6,
                                                         asset=PHOTO)
        h2_targets = [targets[1], targets[2]]
        targets[1].h2_port, targets[2].h2_port = GATEWAY_H2, NGINX_H2
        results["h2_tls_8kib"] = measure_h2(h2_targets, 1 if QUICK else 3, 4 if QUICK else 6)
        cached = [targets[0], Target("gateway-cache", GATEWAY_CACHE, lambda: [gateway_cache.pid]),
                  Target("nginx-cache", NGINX_CACHE, lambda: nginx_pids(nginx_cache))]
        results["cache_hits_8kib"] = measure_cache_hits(cached, 1 if QUICK else 3, 4 if QUICK else 6)
        results["cache_herd_5mib"] = measure_herd(cached[1:], 1 if QUICK else 3)
        results["cache_photo_and_disk"] = measure_cached(cached[1:], 1 if QUICK else 3, 4 if QUICK else 6)
        results["large_100mib"] = measure_large(targets + floors, 2 if QUICK else 5)
        results["slow_clients_64"] = {t.name: measure_slow_clients(fresh(t), 64, 8) for t in targets[1:] + floors}
        results["idle_clients_2000"] = {t.name: measure_idle_clients(fresh(t), 2000) for t in targets[1:] + floors}
        results["gateway_alive"] = running["gateway"].poll() is None
        results["gateway_log_lines"] = log_lines[0]
    finally:
        procs += list(running.values())
        for p in procs:
            p.send_signal(signal.SIGQUIT if "nginx" in p.args else signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    shutil.rmtree(TMP, ignore_errors=True)


def table(r):
    t, s, l, sc, ic = (r["ttfb_5mib_rate_limited"], r["small_8kib_32_conns"], r["large_100mib"], r["slow_clients_64"],
                       r["idle_clients_2000"])
    h = r["h2_tls_8kib"]
    ch, hd = r["cache_hits_8kib"], r["cache_herd_5mib"]
    ph, cp, cl = r["photo_200kib_32_conns"], r["cache_photo_and_disk"]["photo"], r["cache_photo_and_disk"]["large"]
    gc, nc = "gateway-cache", "nginx-cache"

    def busy(figures, name):
        """Requests/s with how busy the proxy's core was (the load must saturate it)."""
        b = figures[name].get("busy")
        return f"{figures[name]['rps']:.0f}" + (f" ({b:.0%} busy)" if b is not None else "")
    g, n, u, d, m, p = "gateway", "nginx", "nginx-unbuffered", "direct", "pingora-minimal", "pingora-minimal-pristine"

    def best(figures, key, higher=True):
        """The better nginx of the two for this figure: (value, name)."""
        pick = max if higher else min
        return pick(((figures[x][key], x) for x in (n, u)), key=lambda v: v[0])

    def nginx_cell(figures, key, fmt):
        return f"{fmt.format(figures[n][key])} / {fmt.format(figures[u][key])}"

    ttfb_n, _ = best(t, "ttfb_ms", higher=False)
    kept_n, _ = best(t, "kept_alive_ttfb_ms", higher=False)
    rps_n, _ = best(s, "rps")
    cpu_n, _ = best(s, "cpu_us_per_req", higher=False)
    prps_n, _ = best(ph, "rps")
    pcpu_n, _ = best(ph, "cpu_us_per_req", higher=False)
    mbps_n, _ = best(l, "mb_per_s")
    lcpu_n, _ = best(l, "cpu_ms_per_100mib", higher=False)
    rows = [
        ("5 MiB, new client connection: TTFB (ms)", f"{t[g]['ttfb_ms']:.2f}", nginx_cell(t, "ttfb_ms", "{:.2f}"),
         f"{t[d]['ttfb_ms']:.2f}",
         f"+{t[g]['ttfb_ms'] - t[d]['ttfb_ms']:.2f} ms over direct (nginx +{ttfb_n - t[d]['ttfb_ms']:.2f})",
         "<= nginx + 0.05 ms"),
        ("5 MiB, kept-alive client: TTFB (ms)", f"{t[g]['kept_alive_ttfb_ms']:.2f}",
         nginx_cell(t, "kept_alive_ttfb_ms", "{:.2f}"), f"{t[d]['kept_alive_ttfb_ms']:.2f}",
         f"+{t[g]['kept_alive_ttfb_ms'] - t[d]['kept_alive_ttfb_ms']:.2f} ms over direct "
         f"(nginx {kept_n - t[d]['kept_alive_ttfb_ms']:+.2f})", ""),
        ("5 MiB, rate-limited origin: total (ms)", f"{t[g]['total_ms']:.1f}", nginx_cell(t, "total_ms", "{:.1f}"),
         f"{t[d]['total_ms']:.1f}", f"{t[g]['total_ms'] / t[d]['total_ms']:.3f} x direct", ""),
        ("8 KiB, 32 conns: requests/s", busy(s, g), f"{busy(s, n)} / {busy(s, u)}", f"{s[d]['rps']:.0f}",
         f"{s[g]['rps'] / rps_n:.2f} x nginx", "", busy(s, m), busy(s, p)),
        ("8 KiB: p50 / p99 latency (ms)", f"{s[g]['p50_ms']:.2f} / {s[g]['p99_ms']:.2f}",
         f"{s[n]['p50_ms']:.2f} / {s[n]['p99_ms']:.2f}", f"{s[d]['p50_ms']:.2f} / {s[d]['p99_ms']:.2f}", "", ""),
        ("8 KiB: proxy CPU per request (us)", f"{s[g]['cpu_us_per_req']:.1f}", nginx_cell(s, "cpu_us_per_req", "{:.1f}"),
         "-", f"{s[g]['cpu_us_per_req'] / cpu_n:.2f} x nginx", "<= 1.8 x",
         f"{s[m]['cpu_us_per_req']:.1f} ({s[m]['cpu_us_per_req'] / cpu_n:.2f} x)",
         f"{s[p]['cpu_us_per_req']:.1f} ({s[p]['cpu_us_per_req'] / cpu_n:.2f} x)"),
        ("200 KiB photo, 32 conns: requests/s", busy(ph, g), f"{busy(ph, n)} / {busy(ph, u)}",
         f"{ph[d]['rps']:.0f}", f"{ph[g]['rps'] / prps_n:.2f} x nginx", ">= 1.0 x", busy(ph, m), busy(ph, p)),
        ("200 KiB photo: proxy CPU per request (us)", f"{ph[g]['cpu_us_per_req']:.1f}",
         nginx_cell(ph, "cpu_us_per_req", "{:.1f}"), "-", f"{ph[g]['cpu_us_per_req'] / pcpu_n:.2f} x nginx", "<= 1.2 x",
         f"{ph[m]['cpu_us_per_req']:.1f} ({ph[m]['cpu_us_per_req'] / pcpu_n:.2f} x)",
         f"{ph[p]['cpu_us_per_req']:.1f} ({ph[p]['cpu_us_per_req'] / pcpu_n:.2f} x)"),
        ("8 KiB, TLS h2, 8 conns x 16 streams: requests/s", f"{h[g]['rps']:.0f}", f"{h[n]['rps']:.0f} / -", "-",
         f"{h[g]['rps'] / h[n]['rps']:.2f} x nginx", ""),
        ("8 KiB, TLS h2: proxy CPU per request (us)", f"{h[g]['cpu_us_per_req']:.1f}",
         f"{h[n]['cpu_us_per_req']:.1f} / -", "-", f"{h[g]['cpu_us_per_req'] / h[n]['cpu_us_per_req']:.2f} x nginx", ""),
        ("8 KiB cache hit, new connection: TTFB (ms)", f"{ch['gateway-cache']['hit_ttfb_ms']:.2f}",
         f"{ch['nginx-cache']['hit_ttfb_ms']:.2f} (proxy_cache)", f"{ch['direct']['hit_ttfb_ms']:.2f}",
         f"{ch['gateway-cache']['hit_ttfb_ms'] - ch['nginx-cache']['hit_ttfb_ms']:+.2f} ms vs nginx", ""),
        ("8 KiB cache hit, 32 conns: requests/s", busy(ch, gc),
         f"{busy(ch, nc)} (proxy_cache)", f"{ch['direct']['rps']:.0f}",
         f"{ch['gateway-cache']['rps'] / ch['nginx-cache']['rps']:.2f} x nginx", ">= 1.0 x"),
        ("8 KiB cache hit: proxy CPU per request (us)", f"{ch['gateway-cache']['cpu_us_per_req']:.1f}",
         f"{ch['nginx-cache']['cpu_us_per_req']:.1f} (proxy_cache)", "-",
         f"{ch['gateway-cache']['cpu_us_per_req'] / ch['nginx-cache']['cpu_us_per_req']:.2f} x nginx", ""),
        ("200 KiB photo cache hit, 32 conns: requests/s", busy(cp, gc), f"{busy(cp, nc)} (proxy_cache)", "",
         f"{cp[gc]['rps'] / cp[nc]['rps']:.2f} x nginx", ">= 1.2 x"),
        ("200 KiB photo cache hit: proxy CPU per request (us)", f"{cp[gc]['cpu_us_per_req']:.1f}",
         f"{cp[nc]['cpu_us_per_req']:.1f} (proxy_cache)", "-",
         f"{cp[gc]['cpu_us_per_req'] / cp[nc]['cpu_us_per_req']:.2f} x nginx", ""),
        ("100 MiB hit from the disk tier: throughput (MB/s)", f"{cl[gc]['mb_per_s']:.0f}",
         f"{cl[nc]['mb_per_s']:.0f} (proxy_cache)", "", f"{cl[gc]['mb_per_s'] / cl[nc]['mb_per_s']:.2f} x nginx",
         ">= 0.8 x"),
        ("100 MiB hit from the disk tier: proxy CPU (ms per 100 MiB)", f"{cl[gc]['cpu_ms_per_100mib']:.0f}",
         f"{cl[nc]['cpu_ms_per_100mib']:.0f} (proxy_cache)", "-",
         f"{cl[gc]['cpu_ms_per_100mib'] / cl[nc]['cpu_ms_per_100mib']:.2f} x nginx", ""),
        (f"herd: {HERD_CLIENTS} clients on a cold 5 MiB asset: origin requests",
         str(hd['gateway-cache']['origin_requests']), f"{hd['nginx-cache']['origin_requests']} (proxy_cache_lock)",
         f"{HERD_CLIENTS}", "", "1"),
        ("herd: clients' TTFB median / max (ms)",
         f"{hd['gateway-cache']['ttfb_median_ms']:.0f} / {hd['gateway-cache']['ttfb_max_ms']:.0f}",
         f"{hd['nginx-cache']['ttfb_median_ms']:.0f} / {hd['nginx-cache']['ttfb_max_ms']:.0f}", "-", "", ""),
        ("100 MiB: throughput (MB/s)", f"{l[g]['mb_per_s']:.0f}", nginx_cell(l, "mb_per_s", "{:.0f}"),
         f"{l[d]['mb_per_s']:.0f}", f"{l[g]['mb_per_s'] / mbps_n:.2f} x nginx", ">= 1.1 x", f"{l[m]['mb_per_s']:.0f}",
         f"{l[p]['mb_per_s']:.0f}"),
        ("100 MiB: proxy CPU (ms per 100 MiB)", f"{l[g]['cpu_ms_per_100mib']:.0f}",
         nginx_cell(l, "cpu_ms_per_100mib", "{:.0f}"), "-", f"{l[g]['cpu_ms_per_100mib'] / lcpu_n:.2f} x nginx", "<= 1.1 x",
         f"{l[m]['cpu_ms_per_100mib']:.0f}", f"{l[p]['cpu_ms_per_100mib']:.0f}"),
        ("64 slow clients: RSS growth (MiB)", f"{sc[g]['rss_growth_mib']:.1f}", nginx_cell(sc, "rss_growth_mib", "{:.1f}"),
         "-", "", "<= 8 MiB", f"{sc[m]['rss_growth_mib']:.1f}", f"{sc[p]['rss_growth_mib']:.1f}"),
        ("64 slow clients: RSS 10 s after they left, over start (MiB)", f"{sc[g]['rss_10s_after_mib']:+.1f}",
         nginx_cell(sc, "rss_10s_after_mib", "{:+.1f}"), "-", "", "near 0", f"{sc[m]['rss_10s_after_mib']:+.1f}",
         f"{sc[p]['rss_10s_after_mib']:+.1f}"),
        ("64 slow clients: disk writes (bytes)", f"{sc[g]['disk_write_bytes']}", nginx_cell(sc, "disk_write_bytes", "{}"),
         "-", "", "0", f"{sc[m]['disk_write_bytes']}", f"{sc[p]['disk_write_bytes']}"),
        ("64 slow clients: origin sent / clients got (MiB)",
         f"{sc[g]['origin_sent_mib']:.0f} / {sc[g]['clients_received_mib']:.0f}",
         f"{sc[n]['origin_sent_mib']:.0f} / {sc[n]['clients_received_mib']:.0f}", "-", "", "",
         f"{sc[m]['origin_sent_mib']:.0f} / {sc[m]['clients_received_mib']:.0f}",
         f"{sc[p]['origin_sent_mib']:.0f} / {sc[p]['clients_received_mib']:.0f}"),
        ("2,000 idle keep-alive clients: RSS growth (MiB)", f"{ic[g]['rss_growth_mib']:.1f} ({ic[g]['kib_per_client']:.1f} KiB each)",
         nginx_cell(ic, "rss_growth_mib", "{:.1f}"), "-", "", "<= 16 MiB",
         f"{ic[m]['rss_growth_mib']:.1f}", f"{ic[p]['rss_growth_mib']:.1f}"),
        ("2,000 idle clients: RSS 10 s after they closed, over start (MiB)", f"{ic[g]['rss_10s_after_close_mib']:+.1f}",
         nginx_cell(ic, "rss_10s_after_close_mib", "{:+.1f}"), "-", "", "<= 8 MiB",
         f"{ic[m]['rss_10s_after_close_mib']:+.1f}", f"{ic[p]['rss_10s_after_close_mib']:+.1f}"),
        ("upstream connections opened / client connections (8 KiB)", f"{s[g]['upstream_connections']} / 32",
         f"{s[n]['upstream_connections']} / {s[u]['upstream_connections']}", f"{s[d]['upstream_connections']} / 32", "",
         "<= 32", f"{s[m]['upstream_connections']} / 32", f"{s[p]['upstream_connections']} / 32"),
        ("errors (all phases)", str(t[g]["errors"] + s[g]["errors"] + ph[g]["errors"] + l[g]["errors"] + h[g]["errors"]
             + ch[gc]["errors"] + hd[gc]["errors"] + cp[gc]["errors"] + cl[gc]["errors"]),
         str(sum(x[k]["errors"] for x in (t, s, ph, l) for k in (n, u)) + h[n]["errors"] + ch[nc]["errors"]
             + hd[nc]["errors"] + cp[nc]["errors"] + cl[nc]["errors"]),
         str(t[d]["errors"] + s[d]["errors"] + ph[d]["errors"] + l[d]["errors"]), "", "0"),
    ]
    head = ("| figure | gateway | nginx (buffered / unbuffered) | direct | ratio (against the better nginx) | target "
            "| minimal Pingora, patched | minimal Pingora, pristine |\n"
            "|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join("| " + " | ".join(row + ("",) * (8 - len(row))) + " |" for row in rows)


if __name__ == "__main__":
    main()
