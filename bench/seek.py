#!/usr/bin/env python3
"""A cold seek near the end of a 100 MiB asset behind a rate-limited origin (issue 22).

The origin is nginx with `limit_rate` (12.8 MB/s by default, a busy asset service). Each row
starts its proxy with an empty cache, then times one `curl -r <from>-` (time to first byte,
time to last byte) and sums the body bytes the origin sent (its access log):
- direct: curl to the origin;
- gateway slice <n>: asset-gateway with `gateway.cache.slice`;
- gateway slice off: whole-object caching (what a seek cost before slices);
- nginx slice 1m: nginx's slice module with proxy_cache.
Then a whole cold download through each proxy (throughput, so the cost of slicing shows).

Usage: bench/seek.py [--size-mib 100] [--rate 12800k] [--from 104000000] [--whole]
Needs target/release/asset-gateway (cargo build --release --bin asset-gateway) and nginx.
"""
import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ID = "0d15c2a7-9b4d-4e8a-8c21-5d6f7a8b9c01"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def nginx(tmp, name, body):
    d = tmp / name
    (d / "logs").mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(f"""daemon off;
{user}worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    log_format bytes '$body_bytes_sent';
{body}
}}
""")
    p = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(d)], stderr=subprocess.DEVNULL)
    return p


def origin_bytes(log):
    try:
        return sum(int(x) for x in Path(log).read_text().split())
    except FileNotFoundError:
        return 0


def curl(url, rng):
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_starttransfer} %{time_total} %{size_download}"]
    if rng:
        args += ["-r", rng]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1]), float(out[2]), int(out[3])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--rate", default="12800k")
    ap.add_argument("--from", dest="start", type=int, default=104000000)
    ap.add_argument("--whole", action="store_true", help="also a whole cold download")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="agw-seek-"))
    procs = []
    try:
        assets = tmp / "assets"
        assets.mkdir()
        with open(assets / ID, "wb") as f:
            f.write(os.urandom(a.size_mib << 20))
        oport = free_port()
        olog = tmp / "origin.log"
        procs.append(nginx(tmp, "origin", f"""
    server {{
        listen 127.0.0.1:{oport};
        access_log {olog} bytes;
        location /v1/assets/ {{ alias {assets}/; limit_rate {a.rate}; }}
    }}"""))
        wait_port(oport)
        rng = f"{a.start}-"
        rows = []

        def measure(name, url):
            before = origin_bytes(olog)
            r = curl(url, rng)
            time.sleep(0.5)
            rows.append((name, "seek", r, origin_bytes(olog) - before))

        measure("direct", f"http://127.0.0.1:{oport}/v1/assets/{ID}")

        for slice_ in ["4MiB", "1MiB", "off"]:
            def start_gateway(slice_=slice_):
                port = free_port()
                gdir = Path(tempfile.mkdtemp(dir=tmp))
                conf = gdir / "gw.yaml"
                conf.write_text(f"""pid_file: {gdir}/pid
upgrade_sock: {gdir}/sock
threads: 2
gateway:
  listen: ["127.0.0.1:{port}"]
  access_log: {{enabled: false}}
  cache:
    memory: 512MiB
    slice: {slice_}
  upstreams:
    assets:
      peers: ["127.0.0.1:{oport}"]
  routes:
    - path: /content/v1/assets/{{id}}
      upstream: assets
      rewrite: /v1/assets/{{id}}
""")
                p = subprocess.Popen([str(ROOT / "target/release/asset-gateway"), "-c", str(conf)],
                                     stderr=subprocess.DEVNULL)
                p.port = port
                wait_port(port)
                return p

            p = start_gateway()
            procs.append(p)
            url = f"http://127.0.0.1:{p.port}/content/v1/assets/{ID}"
            before = origin_bytes(olog)
            r = curl(url, rng)
            # With slice off the fill goes on after the client has its bytes: wait for it,
            # so its bytes count for this row.
            time.sleep(a.size_mib * (1 << 20) / 12.8e6 + 1 if slice_ == "off" else 0.5)
            rows.append((f"gateway slice {slice_}", "seek", r, origin_bytes(olog) - before))
            p.terminate()
            p.wait()
            procs.remove(p)
            if a.whole:
                p = start_gateway()
                procs.append(p)
                before = origin_bytes(olog)
                w = curl(f"http://127.0.0.1:{p.port}/content/v1/assets/{ID}", None)
                time.sleep(0.5)
                rows.append((f"gateway slice {slice_}", "whole", w, origin_bytes(olog) - before))
                p.terminate()
                p.wait()
                procs.remove(p)

        for name, slice_conf in [("nginx slice 1m", "slice 1m;"), ("nginx proxy_cache", None)]:
            nport = free_port()
            d = name.replace(" ", "-")

            def start_nginx(d=d, nport=nport, slice_conf=slice_conf):
                shutil.rmtree(tmp / d, ignore_errors=True)
                key = "$uri$slice_range" if slice_conf else "$uri"
                rng_hdr = "proxy_set_header Range $slice_range;" if slice_conf else ""
                return nginx(tmp, d, f"""
    proxy_cache_path {tmp}/{d}-cache levels=1:2 keys_zone={d.replace('-', '_')}:16m max_size=4g use_temp_path=off;
    server {{
        listen 127.0.0.1:{nport};
        location /content/v1/assets/ {{
            {slice_conf or ''}
            proxy_cache {d.replace('-', '_')};
            proxy_cache_key {key};
            {rng_hdr}
            proxy_cache_valid 200 206 1h;
            proxy_cache_lock on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://127.0.0.1:{oport}/v1/assets/;
        }}
    }}""")

            p = start_nginx()
            wait_port(nport)
            url = f"http://127.0.0.1:{nport}/content/v1/assets/{ID}"
            if slice_conf:
                measure(name, url)
            p.terminate()
            p.wait()
            if a.whole:
                p = start_nginx()
                wait_port(nport)
                before = origin_bytes(olog)
                w = curl(url, None)
                time.sleep(0.5)
                rows.append((name, "whole", w, origin_bytes(olog) - before))
                p.terminate()
                p.wait()

        print(f"{a.size_mib} MiB asset, origin limit_rate {a.rate}, seek = curl -r {rng}")
        print(f"{'target':<22} {'request':<6} {'status':>6} {'ttfb s':>8} {'last byte s':>12} {'bytes':>11} {'origin bytes':>13}")
        for name, kind, (code, ttfb, total, size), ob in rows:
            print(f"{name:<22} {kind:<6} {code:>6} {ttfb:>8.3f} {total:>12.3f} {size:>11} {ob:>13}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
