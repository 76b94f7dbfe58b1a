#!/usr/bin/env python3
"""The gateway against nginx (as the reverse proxy it would replace) and against going direct
to the origin, measured in one run with the targets interleaved and repeated (medians).

    bench/run [--quick]

Layout (2 cores): the gateway and the nginx proxy each get one worker thread pinned to core
0; the origin (nginx serving files) and the load generators (curl, wrk) are pinned to core 1.
Writes bench/results/latest.json and prints a markdown table.
"""
import json
import os
import re
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
ORIGIN_FAST, ORIGIN_SLOW, GATEWAY, NGINX, MINIMAL = 18001, 18002, 18080, 18081, 18082
SMALL, IMAGE, LARGE = ("00000000-0000-4000-8000-000000000008", "00000000-0000-4000-8000-000000000005",
                       "00000000-0000-4000-8000-000000000100")
SIZES = {SMALL: 8 * 1024, IMAGE: 5 * 1024 * 1024, LARGE: 100 * 1024 * 1024}
CLK_TCK = os.sysconf("SC_CLK_TCK")
TMP = Path(tempfile.mkdtemp(prefix="asset-gateway-bench-"))


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def pinned(core, cmd):
    return ["taskset", "-c", core] + cmd


# ---- processes ----------------------------------------------------------------------------

def write_files():
    www = TMP / "www/v1/assets"
    www.mkdir(parents=True)
    for name, size in SIZES.items():
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
    upstream fast {{ server 127.0.0.1:{fast}; keepalive 64; }}
    upstream slow {{ server 127.0.0.1:{slow}; keepalive 64; }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    server {{
        listen 127.0.0.1:{port};
        location /content/v1/assets/ {{ proxy_pass http://fast/v1/assets/; }}
        location /slow/v1/assets/ {{ proxy_pass http://slow/v1/assets/; }}
    }}
"""

GATEWAY_CONF = """threads: 1
pid_file: {tmp}/gateway.pid
upgrade_sock: {tmp}/gateway-upgrade.sock
gateway:
  listen: ["127.0.0.1:{port}"]
  upstreams:
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


def measure_small(targets, reps, seconds):
    res = {t.name: [] for t in targets}
    for _ in range(reps):
        for t in targets:
            before_log = len(origin_log_lines())
            cpu0 = t.cpu()
            out = sh(pinned(LOAD_CORE, ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", t.url(SMALL)]))
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
                "requests": reqs, "errors": errors, "upstream_connections": conns, "client_connections": 32,
            })
    summary = {}
    for name, runs in res.items():
        med = lambda k: statistics.median([r[k] for r in runs]) if runs[0][k] is not None else None
        summary[name] = {k: med(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
        summary[name]["errors"] = sum(r["errors"] for r in runs)
        summary[name]["requests"] = sum(r["requests"] for r in runs)
        summary[name]["upstream_connections"] = max(r["upstream_connections"] for r in runs)
        summary[name]["runs"] = runs
    return summary


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
    return {"rss_start_mib": rss0 / 2**20, "rss_peak_mib": peak / 2**20, "rss_growth_mib": (peak - rss0) / 2**20,
            "disk_write_bytes": t.disk_writes() - disk0, "origin_sent_mib": sent / 2**20,
            "clients_received_mib": received / 2**20}


# ---- main ---------------------------------------------------------------------------------

def main():
    subprocess.run([str(ROOT / "scripts/install-deps"), "nginx", "wrk", "curl"], check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "asset-gateway", "--example", "minimal_proxy"],
                   cwd=ROOT, check=True)
    write_files()
    procs = []
    try:
        origin = start_nginx("origin", ORIGIN_BODY.format(tmp=TMP, fast=ORIGIN_FAST, slow=ORIGIN_SLOW), LOAD_CORE)
        procs.append(origin)
        nginx = start_nginx("proxy", PROXY_BODY.format(fast=ORIGIN_FAST, slow=ORIGIN_SLOW, port=NGINX), PROXY_CORE)
        procs.append(nginx)
        conf = TMP / "gateway.yaml"
        conf.write_text(GATEWAY_CONF.format(tmp=TMP, port=GATEWAY, fast=ORIGIN_FAST, slow=ORIGIN_SLOW))
        # The access log stays on, read through a pipe (as journald would), not a file: a file
        # would show up as disk writes.
        gw = subprocess.Popen(pinned(PROXY_CORE, [str(ROOT / "target/release/asset-gateway"), "-c", str(conf)]),
                              stderr=subprocess.PIPE, env={**os.environ, "RUST_LOG": "info"})
        log_lines = [0]
        threading.Thread(target=lambda: [log_lines.__setitem__(0, log_lines[0] + 1) for _ in gw.stderr],
                         daemon=True).start()
        procs.append(gw)
        # A minimal Pingora proxy (examples/minimal_proxy.rs): Pingora's own floor.
        minimal = subprocess.Popen(pinned(PROXY_CORE, [str(ROOT / "target/release/examples/minimal_proxy"),
                                                       f"127.0.0.1:{MINIMAL}", f"127.0.0.1:{ORIGIN_FAST}"]),
                                   stderr=subprocess.DEVNULL)
        procs.append(minimal)
        for port in (ORIGIN_FAST, ORIGIN_SLOW, NGINX, GATEWAY, MINIMAL):
            wait_port(port)
        targets = [
            Target("direct", None, lambda: []),
            Target("gateway", GATEWAY, lambda: [gw.pid]),
            Target("nginx", NGINX, lambda: nginx_pids(nginx)),
        ]
        floor = Target("pingora-minimal", MINIMAL, lambda: [minimal.pid])
        # Warm up connections and page cache.
        for t in targets:
            for a in SIZES:
                curl(t.url(a))
        results = {"machine": {"cores": os.cpu_count(), "proxy_core": PROXY_CORE, "load_core": LOAD_CORE},
                   "gateway_access_log": "on (text, to a file)"}
        results["ttfb_5mib_rate_limited"] = measure_ttfb(targets, 5 if QUICK else 15)
        results["small_8kib_32_conns"] = measure_small(targets + [floor], 1 if QUICK else 3, 4 if QUICK else 8)
        results["large_100mib"] = measure_large(targets + [floor], 2 if QUICK else 5)
        results["slow_clients_64"] = {t.name: measure_slow_clients(t, 64, 8) for t in targets[1:] + [floor]}
        results["gateway_alive"] = gw.poll() is None
        results["gateway_log_lines"] = log_lines[0]
    finally:
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
    t, s, l, sc = r["ttfb_5mib_rate_limited"], r["small_8kib_32_conns"], r["large_100mib"], r["slow_clients_64"]
    g, n, d, m = "gateway", "nginx", "direct", "pingora-minimal"
    rows = [
        ("5 MiB, new client connection: TTFB (ms)", f"{t[g]['ttfb_ms']:.2f}", f"{t[n]['ttfb_ms']:.2f}", f"{t[d]['ttfb_ms']:.2f}",
         f"+{t[g]['ttfb_ms'] - t[d]['ttfb_ms']:.2f} ms over direct (nginx +{t[n]['ttfb_ms'] - t[d]['ttfb_ms']:.2f})", "<= +0.3 ms"),
        ("5 MiB, kept-alive client: TTFB (ms)", f"{t[g]['kept_alive_ttfb_ms']:.2f}", f"{t[n]['kept_alive_ttfb_ms']:.2f}",
         f"{t[d]['kept_alive_ttfb_ms']:.2f}",
         f"+{t[g]['kept_alive_ttfb_ms'] - t[d]['kept_alive_ttfb_ms']:.2f} ms over direct (nginx {t[n]['kept_alive_ttfb_ms'] - t[d]['kept_alive_ttfb_ms']:+.2f})",
         "<= +0.3 ms"),
        ("5 MiB, rate-limited origin: total (ms)", f"{t[g]['total_ms']:.1f}", f"{t[n]['total_ms']:.1f}", f"{t[d]['total_ms']:.1f}",
         f"{t[g]['total_ms'] / t[d]['total_ms']:.3f} x direct", ""),
        ("8 KiB, 32 conns: requests/s", f"{s[g]['rps']:.0f}", f"{s[n]['rps']:.0f}", f"{s[d]['rps']:.0f}",
         f"{s[g]['rps'] / s[n]['rps']:.2f} x nginx", "", f"{s[m]['rps']:.0f}"),
        ("8 KiB: p50 / p99 latency (ms)", f"{s[g]['p50_ms']:.2f} / {s[g]['p99_ms']:.2f}", f"{s[n]['p50_ms']:.2f} / {s[n]['p99_ms']:.2f}",
         f"{s[d]['p50_ms']:.2f} / {s[d]['p99_ms']:.2f}", "", ""),
        ("8 KiB: proxy CPU per request (us)", f"{s[g]['cpu_us_per_req']:.1f}", f"{s[n]['cpu_us_per_req']:.1f}", "-",
         f"{s[g]['cpu_us_per_req'] / s[n]['cpu_us_per_req']:.2f} x nginx", "<= 1.25 x",
         f"{s[m]['cpu_us_per_req']:.1f} ({s[m]['cpu_us_per_req'] / s[n]['cpu_us_per_req']:.2f} x nginx)"),
        ("100 MiB: throughput (MB/s)", f"{l[g]['mb_per_s']:.0f}", f"{l[n]['mb_per_s']:.0f}", f"{l[d]['mb_per_s']:.0f}",
         f"{l[g]['mb_per_s'] / l[n]['mb_per_s']:.2f} x nginx", ">= 0.95 x", f"{l[m]['mb_per_s']:.0f}"),
        ("100 MiB: proxy CPU (ms per 100 MiB)", f"{l[g]['cpu_ms_per_100mib']:.0f}", f"{l[n]['cpu_ms_per_100mib']:.0f}", "-",
         f"{l[g]['cpu_ms_per_100mib'] / l[n]['cpu_ms_per_100mib']:.2f} x nginx", "", f"{l[m]['cpu_ms_per_100mib']:.0f}"),
        ("64 slow clients: RSS growth (MiB)", f"{sc[g]['rss_growth_mib']:.1f}", f"{sc[n]['rss_growth_mib']:.1f}", "-", "", "<= 16 MiB",
         f"{sc[m]['rss_growth_mib']:.1f}"),
        ("64 slow clients: disk writes (bytes)", f"{sc[g]['disk_write_bytes']}", f"{sc[n]['disk_write_bytes']}", "-", "", "0",
         f"{sc[m]['disk_write_bytes']}"),
        ("64 slow clients: origin sent / clients got (MiB)", f"{sc[g]['origin_sent_mib']:.0f} / {sc[g]['clients_received_mib']:.0f}",
         f"{sc[n]['origin_sent_mib']:.0f} / {sc[n]['clients_received_mib']:.0f}", "-", "", "",
         f"{sc[m]['origin_sent_mib']:.0f} / {sc[m]['clients_received_mib']:.0f}"),
        ("upstream connections opened / client connections (8 KiB)", f"{s[g]['upstream_connections']} / 32",
         f"{s[n]['upstream_connections']} / 32", f"{s[d]['upstream_connections']} / 32", "", "<= 32",
         f"{s[m]['upstream_connections']} / 32"),
        ("errors (all phases)", str(t[g]["errors"] + s[g]["errors"] + l[g]["errors"]),
         str(t[n]["errors"] + s[n]["errors"] + l[n]["errors"]), str(t[d]["errors"] + s[d]["errors"] + l[d]["errors"]), "", "0"),
    ]
    head = ("| figure | gateway | nginx | direct | ratio | target | minimal Pingora |\n"
            "|---|---|---|---|---|---|---|\n")
    return head + "\n".join("| " + " | ".join(row + ("",) * (7 - len(row))) + " |" for row in rows)


if __name__ == "__main__":
    main()
