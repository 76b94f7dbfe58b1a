#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind (repeatable on a shared machine,
unlike CPU time): the proxy runs under valgrind with instrumentation off, serves a warm-up,
then instrumentation is switched on for exactly N requests of the 8 KiB asset on 4 kept-alive client
connections (h2load --h1), and the user-space instructions are divided by N.

    bench/callgrind [N] [--binary PATH] [--minimal] [--keep FILE] [--extra YAML] [--large] [--h2]
                    [--auth signed_url|jwt-es256|jwt-rs256]

--minimal measures examples/minimal_proxy (Pingora's own floor) instead of the gateway;
--keep copies the callgrind profile of the N requests to FILE (for callgrind_annotate);
--large fetches the 100 MiB asset instead (N times, default 2) and reports instructions per
MiB; --h2 sends the requests over TLS h2 (4 connections x 16 streams; the TLS work included); --extra adds lines under `gateway:` (e.g. "  access_log: {enabled: false}"), to see what a
feature costs; --auth puts the asset route behind a signed URL (HMAC-SHA256) or a bearer JWT
(ES256 or RS256, keys made with openssl), and every request carries a valid one.
Needs valgrind, nginx and h2load (nghttp2-client); installs them when missing.
"""
import os
import re
import signal
import subprocess
import sys
import time

from bench import (GATEWAY, GATEWAY_CONF, GATEWAY_H2, LARGE, LOAD_CORE, ORIGIN_BODY, ORIGIN_FAST, ORIGIN_SLOW, ROOT, SIZES,
                   SMALL, TMP, start_nginx, wait_port, write_files)

args = [a for i, a in enumerate(sys.argv[1:], 1)
        if not a.startswith("--") and sys.argv[i - 1] not in ("--binary", "--keep", "--extra", "--auth")]
large = "--large" in sys.argv
N = int(args[0]) if args else (2 if large else 2000)
ASSET = LARGE if large else SMALL
minimal = "--minimal" in sys.argv
h2 = "--h2" in sys.argv
binary = sys.argv[sys.argv.index("--binary") + 1] if "--binary" in sys.argv else str(
    ROOT / ("target/release/examples/minimal_proxy" if minimal else "target/release/asset-gateway"))


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


def main():
    subprocess.run([str(ROOT / "scripts/install-deps"), "valgrind", "nginx", "nghttp2-client"], check=True)
    if "--binary" not in sys.argv:
        subprocess.run(["cargo", "build", "--release", "-q", "--bin", "asset-gateway", "--example", "minimal_proxy"],
                       cwd=ROOT, check=True)
    write_files()
    origin = start_nginx("origin", ORIGIN_BODY.format(tmp=TMP, fast=ORIGIN_FAST, slow=ORIGIN_SLOW), LOAD_CORE)
    conf = TMP / "gateway.yaml"
    extra = sys.argv[sys.argv.index("--extra") + 1] + "\n" if "--extra" in sys.argv else ""
    path, headers, route_auth = f"/content/v1/assets/{ASSET}", [], ""
    if "--auth" in sys.argv:
        auth_extra, route_auth, path, headers = auth_setup(sys.argv[sys.argv.index("--auth") + 1], path)
        extra += auth_extra
    conf.write_text(GATEWAY_CONF.format(tmp=TMP, port=GATEWAY, h2=GATEWAY_H2, fast=ORIGIN_FAST, slow=ORIGIN_SLOW)
                    .replace("gateway:\n", "gateway:\n" + extra)
                    .replace("      rewrite: /v1/assets/{id}\n", "      rewrite: /v1/assets/{id}\n" + route_auth, 1))
    target = [binary, f"127.0.0.1:{GATEWAY}", f"127.0.0.1:{ORIGIN_FAST}"] if minimal else [binary, "-c", str(conf)]
    out = TMP / "callgrind.out"
    proxy = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                              *target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "RUST_LOG": "info"})
    try:
        wait_port(ORIGIN_FAST)
        wait_port(GATEWAY, proxy)
        url = f"http://127.0.0.1:{GATEWAY}{path}"
        h2load = ["h2load", "--h1", "-c", "1" if large else "4", "-m", "1", *headers]
        if h2:
            wait_port(GATEWAY_H2, proxy)
            url = f"https://127.0.0.1:{GATEWAY_H2}{path}"
            h2load = ["h2load", "-c", "1" if large else "4", "-m", "1" if large else "16", *headers]
        subprocess.run(h2load + ["-n", "4" if large else "400", url], check=True, capture_output=True)  # warm-up
        subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        res = subprocess.run(h2load + ["-n", str(N), url], check=True, capture_output=True, text=True).stdout
        ok = re.search(r"status codes: (\d+) 2xx", res)
        assert ok and int(ok.group(1)) == N, res
        subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
        time.sleep(1)
    finally:
        proxy.send_signal(signal.SIGINT)
        try:
            proxy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proxy.kill()
        origin.send_signal(signal.SIGQUIT)
        origin.wait(timeout=10)
    if "--keep" in sys.argv:
        import shutil
        shutil.copy(TMP / "callgrind.out.1", sys.argv[sys.argv.index("--keep") + 1])
    # The dump asked for above (`callgrind.out.1`) holds exactly the N requests.
    total = 0
    for line in (TMP / "callgrind.out.1").read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            total = int(line.split()[1])
    who = ("minimal Pingora" if minimal else "gateway") + (" (TLS h2)" if h2 else "")
    if large:
        mib = N * SIZES[LARGE] / 2**20
        print(f"{who}: {total / mib / 1000:.0f} K instructions per MiB ({N} x 100 MiB, {total} instructions)")
    else:
        print(f"{who}: {total / N / 1000:.1f} K instructions per request ({N} requests, {total} instructions)")


if __name__ == "__main__":
    main()
