#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind (repeatable on a shared machine,
unlike CPU time): the proxy runs under valgrind with instrumentation off, serves a warm-up,
then instrumentation is switched on for exactly N requests on 4 kept-alive client connections
(h2load --h1), and the user-space instructions, and the calls to the Rust allocator, are divided
by N.

    bench/callgrind [N] [--binary PATH] [--minimal | --nginx] [--keep FILE] [--extra YAML]
                    [--photo | --large] [--cache] [--h2] [--auth signed_url|jwt-es256|jwt-rs256]
    bench/callgrind --table

--nginx measures nginx 1.22 instead, configured as in bench/run (upstream keepalive, sendfile,
no temp files), one process (`master_process off`), with a buffered access log of the gateway's
fields (the gateway writes its access line): the same requests, so each row is a ratio measured
in one harness. --minimal measures examples/minimal_proxy (Pingora's own floor).
--photo fetches the 200 KiB photo (N defaults to 1000); --large the 100 MiB asset (N times,
default 2) and reports instructions per MiB; --cache serves from the cache, filled by one request
and the warm-up (the gateway with `cache: {memory: 256MiB}`, with --large `memory: 64MiB` and a
disk tier, which alone can hold it; nginx with `proxy_cache`); --h2 sends the requests over
TLS h2 (4 connections x 16 streams; the TLS work included); --extra adds lines under the
gateway's `gateway:` (e.g. "  access_log: {enabled: false}"), to see what a feature costs;
--keep copies the callgrind profile of the N requests to FILE (for callgrind_annotate);
--auth puts the gateway's asset route behind a signed URL (HMAC-SHA256) or a bearer JWT (ES256 or
RS256, keys made with openssl), and every request carries a valid one.
BENCH_PORT_OFFSET moves the ports (as for bench/run).
--table measures every row for the gateway, nginx and (where it applies) the minimal proxy and
prints the ratio table (README, Performance).
Needs valgrind, nginx and h2load (nghttp2-client); installs them when missing.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from bench import (GATEWAY, GATEWAY_CONF, GATEWAY_H2, LARGE, LOAD_CORE, NGINX, NGINX_CACHE_BODY, NGINX_COMMON,
                   NGINX_H2, NGINX_TLS, ORIGIN_BODY, ORIGIN_FAST, ORIGIN_SLOW, PHOTO, PROXY_BODY, ROOT, SIZES, SMALL,
                   TMP, start_nginx, wait_port, write_files)

# The gateway's access line, as nginx variables, written the way the gateway writes it: in
# batches (32 KiB or 200 ms). Without `$request_id`: nginx draws it from OpenSSL's RAND_bytes,
# 6.6 K instructions a request, which nginx users do not pay unless they ask for it.
NGINX_ACCESS_LOG = """log_format gateway 'client=$remote_addr:$remote_port proto=$server_protocol method=$request_method '
                       'path="$uri" status=$status bytes=$body_bytes_sent upstream=$upstream_addr '
                       'reused=$connection_requests attempts=1 ttfb_ms=$upstream_header_time '
                       'total_ms=$request_time';
    access_log {tmp}/callgrind-nginx-access.log gateway buffer=32k flush=200ms;"""


def opt(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


def b64url(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def auth_setup(kind, path):
    """Config lines under `gateway:`, the line for the route, the request path and headers for
    `--auth`: every request carries a valid signed URL or token."""
    import hashlib
    import hmac
    import json
    if kind == "signed_url":
        secret = "bench-secret-0123456789abcdef0123456789"
        exp = int(time.time()) + 3600
        sig = b64url(hmac.new(secret.encode(), f"{path}\n{exp}".encode(), hashlib.sha256).digest())
        extra = f'  auth: {{signed_url: {{keys: {{k1: "{secret}"}}}}}}\n'
        return extra, "      auth: [signed_url]\n", f"{path}?exp={exp}&kid=k1&sig={sig}", []
    key = TMP / "jwt-key.pem"
    if kind == "jwt-rs256":
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
                       check=True, capture_output=True)
        modulus = subprocess.run(["openssl", "rsa", "-in", str(key), "-noout", "-modulus"], check=True,
                                 capture_output=True, text=True).stdout.strip().split("=", 1)[1]
        jwk = {"kty": "RSA", "kid": "bench", "n": b64url(bytes.fromhex(modulus)), "e": "AQAB"}
        alg = "RS256"
    elif kind == "jwt-es256":
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "ec", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                             capture_output=True).stdout
        point = der[-65:]
        jwk = {"kty": "EC", "crv": "P-256", "kid": "bench", "x": b64url(point[1:33]), "y": b64url(point[33:])}
        alg = "ES256"
    else:
        sys.exit(f"--auth {kind}: signed_url, jwt-es256 or jwt-rs256")
    (TMP / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    header = b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": "bench"}).encode())
    claims = b64url(json.dumps({"sub": "bench", "exp": int(time.time()) + 3600}).encode())
    msg = f"{header}.{claims}".encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=msg, check=True,
                         capture_output=True).stdout
    if alg == "ES256":
        # DER SEQUENCE { INTEGER r, INTEGER s } -> r || s, 32 bytes each.
        def integer(b, i):
            n = b[i + 1]
            return b[i + 2:i + 2 + n], i + 2 + n
        r, i = integer(sig, 2)
        s_, _ = integer(sig, i)
        sig = r[-32:].rjust(32, b"\0") + s_[-32:].rjust(32, b"\0")
    token = f"{header}.{claims}.{b64url(sig)}"
    extra = f"  auth: {{jwt: {{jwks: {TMP}/jwks.json}}}}\n"
    return extra, "      auth: [jwt]\n", path, ["-H", f"authorization: Bearer {token}"]


def nginx_conf(cache):
    log = NGINX_ACCESS_LOG.format(tmp=TMP)
    if cache:
        body = NGINX_CACHE_BODY.format(tmp=TMP, fast=ORIGIN_FAST, slow=ORIGIN_SLOW, port=NGINX)
    else:
        body = PROXY_BODY.format(fast=ORIGIN_FAST, slow=ORIGIN_SLOW, port=NGINX, buffering="",
                                 tls=NGINX_TLS.format(h2=NGINX_H2, tmp=TMP))
    name = "callgrind-nginx"
    for d in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        (TMP / f"{name}-{d}").mkdir(exist_ok=True)
    conf = TMP / f"{name}.conf"
    # One process, so callgrind sees all of nginx's work; `user` only applies with a master.
    conf.write_text("master_process off;\n" + NGINX_COMMON.format(tmp=TMP, name=name, body=body.replace(
        "access_log off;", log)).replace("user root;\n", ""))
    return ["nginx", "-c", str(conf), "-p", str(TMP)]


def gateway_conf(cache, large, extra, route_auth=""):
    conf = TMP / "gateway.yaml"
    lines = extra
    if cache:
        if large:
            # 100 MiB does not fit `memory`: it is stored on (and served from) the disk tier.
            lines += f"  cache:\n    memory: 64MiB\n    disk: {{path: {TMP}/gateway-disk-cache, size: 1GiB}}\n"
        else:
            lines += "  cache:\n    memory: 256MiB\n"
    conf.write_text(GATEWAY_CONF.format(tmp=TMP, port=GATEWAY, h2=GATEWAY_H2, fast=ORIGIN_FAST, slow=ORIGIN_SLOW)
                    .replace("gateway:\n", "gateway:\n" + lines)
                    .replace("      rewrite: /v1/assets/{id}\n", "      rewrite: /v1/assets/{id}\n" + route_auth, 1))
    return conf


def measure(who="gateway", n=None, asset=SMALL, cache=False, h2=False, extra="", binary=None, keep=None,
            auth=None):
    """Instructions and allocations (Rust allocator calls; none counted for nginx) per request
    (per MiB for the 100 MiB asset) of `who` (gateway, minimal, nginx) under callgrind."""
    large = asset == LARGE
    n = n or (2 if large else 1000 if asset == PHOTO else 2000)
    out = TMP / f"callgrind-{who}.out"
    for old in TMP.glob(f"callgrind-{who}.out*"):
        old.unlink()
    path, headers, route_auth = f"/content/v1/assets/{asset}", [], ""
    if auth and who == "gateway":
        auth_extra, route_auth, path, headers = auth_setup(auth, path)
        extra += auth_extra
    if who == "nginx":
        target = nginx_conf(cache)
        port, h2_port = NGINX, NGINX_H2
    elif who == "minimal":
        target = [binary or str(ROOT / "target/release/examples/minimal_proxy"), f"127.0.0.1:{GATEWAY}",
                  f"127.0.0.1:{ORIGIN_FAST}"]
        port, h2_port = GATEWAY, None
    else:
        target = [binary or str(ROOT / "target/release/asset-gateway"), "-c",
                  str(gateway_conf(cache, large, extra, route_auth))]
        port, h2_port = GATEWAY, GATEWAY_H2
    shutil.rmtree(TMP / "nginx-cache", ignore_errors=True)
    shutil.rmtree(TMP / "gateway-disk-cache", ignore_errors=True)
    proxy = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                              *target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "RUST_LOG": "info"})
    try:
        wait_port(port, proxy)
        url = f"http://127.0.0.1:{port}{path}"
        h2load = ["h2load", "--h1", "-c", "1" if large else "4", "-m", "1", *headers]
        if h2:
            wait_port(h2_port, proxy)
            url = f"https://127.0.0.1:{h2_port}{path}"
            h2load = ["h2load", "-c", "1" if large else "4", "-m", "1" if large else "16", *headers]
        if cache:
            # The first request fills the cache; the object is committed after its response.
            subprocess.run(["curl", "-s", "-o", "/dev/null", *headers, url], check=True)
            time.sleep(2 if large else 0.5)
        subprocess.run(h2load + ["-n", "4" if large else "400", url], check=True, capture_output=True)  # warm-up
        subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        res = subprocess.run(h2load + ["-n", str(n), url], check=True, capture_output=True, text=True).stdout
        ok = re.search(r"status codes: (\d+) 2xx", res)
        assert ok and int(ok.group(1)) == n, res
        got = re.search(r"traffic: .*?\((\d+)\) total", res)
        assert got and int(got.group(1)) >= n * SIZES[asset], res
        subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
        time.sleep(1)
    finally:
        proxy.send_signal(signal.SIGQUIT if who == "nginx" else signal.SIGINT)
        try:
            proxy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proxy.kill()
    # The dump asked for above (`.1`) holds exactly the N requests.
    dump = TMP / f"callgrind-{who}.out.1"
    if keep:
        shutil.copy(dump, keep)
    total = 0
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            total = int(line.split()[1])
    per = n * SIZES[LARGE] / 2**20 if large else n
    return total / per, allocations(dump) / per


def allocations(dump):
    """Calls to the Rust allocator (`__rust_alloc`, `_alloc_zeroed`, `_realloc`) in a callgrind
    dump: callgrind counts every call, so this is the exact number of allocations made."""
    names, total, counting = {}, 0, False
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("fn=", "cfn=")):
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
            counting = line.startswith("cfn=") and m is not None and re.search(
                r"__rust_(alloc|alloc_zeroed|realloc)$", names.get(m.group(1), "")) is not None
        elif line.startswith("calls=") and counting:
            total += int(line.split("=")[1].split()[0])
            counting = False
    return total


ROWS = [
    # (label, asset, cache, h2, minimal proxy applies)
    ("8 KiB proxied (HTTP/1.1)", SMALL, False, False, True),
    ("8 KiB cache hit (memory tier; nginx `proxy_cache`)", SMALL, True, False, False),
    ("8 KiB over TLS h2 (4 connections x 16 streams)", SMALL, False, True, False),
    ("200 KiB photo proxied", PHOTO, False, False, True),
    ("200 KiB photo, cache hit", PHOTO, True, False, False),
    ("100 MiB proxied, per MiB", LARGE, False, False, True),
    ("100 MiB hit from the disk tier, per MiB", LARGE, True, False, False),
]


def table():
    print("| work | nginx | gateway | ratio | gateway allocations | minimal Pingora |\n|---|---|---|---|---|---|")
    for label, asset, cache, h2, minimal in ROWS:
        n, _ = measure("nginx", asset=asset, cache=cache, h2=h2)
        g, allocs = measure("gateway", asset=asset, cache=cache, h2=h2)
        m, _ = measure("minimal", asset=asset) if minimal else (None, None)
        mcell = f"{m / 1000:,.1f} K ({m / n:.2f} x)" if m else ""
        print(f"| {label} | {n / 1000:,.1f} K | {g / 1000:,.1f} K | {g / n:.2f} x | {allocs:.1f} | {mcell} |",
              flush=True)


def main():
    subprocess.run([str(ROOT / "scripts/install-deps"), "valgrind", "nginx", "nghttp2-client", "curl"], check=True)
    if "--binary" not in sys.argv:
        subprocess.run(["cargo", "build", "--release", "-q", "--bin", "asset-gateway", "--example", "minimal_proxy"],
                       cwd=ROOT, check=True)
    write_files()
    origin = start_nginx("origin", ORIGIN_BODY.format(tmp=TMP, fast=ORIGIN_FAST, slow=ORIGIN_SLOW), LOAD_CORE)
    try:
        wait_port(ORIGIN_FAST)
        if "--table" in sys.argv:
            table()
            return
        args = [a for i, a in enumerate(sys.argv[1:], 1)
                if not a.startswith("--") and sys.argv[i - 1] not in ("--binary", "--keep", "--extra", "--auth")]
        who = "nginx" if "--nginx" in sys.argv else "minimal" if "--minimal" in sys.argv else "gateway"
        asset = LARGE if "--large" in sys.argv else PHOTO if "--photo" in sys.argv else SMALL
        h2 = "--h2" in sys.argv
        extra = opt("--extra") + "\n" if opt("--extra") else ""
        n = int(args[0]) if args else None
        per, allocs = measure(who, n, asset, "--cache" in sys.argv, h2, extra, opt("--binary"), opt("--keep"),
                              opt("--auth"))
        label = {"nginx": "nginx", "minimal": "minimal Pingora", "gateway": "gateway"}[who]
        label += (" (TLS h2)" if h2 else "") + (" (cache hit)" if "--cache" in sys.argv else "")
        label += f" (--auth {opt('--auth')})" if opt("--auth") else ""
        if asset == LARGE:
            print(f"{label}: {per / 1000:,.0f} K instructions, {allocs:.1f} allocations per MiB (100 MiB asset)")
        else:
            print(f"{label}: {per / 1000:.1f} K instructions, {allocs:.1f} allocations per request "
                  f"({SIZES[asset] // 1024} KiB asset)")
    finally:
        origin.send_signal(signal.SIGQUIT)
        origin.wait(timeout=10)
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
