#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind (repeatable on a shared machine,
unlike CPU time): the proxy runs under valgrind with instrumentation off, serves a warm-up,
then instrumentation is switched on for exactly N requests of the 8 KiB asset on 4 kept-alive client
connections (h2load --h1), and the user-space instructions are divided by N.

    bench/callgrind [N] [--binary PATH] [--minimal] [--keep FILE] [--extra YAML] [--large] [--h2]

--minimal measures examples/minimal_proxy (Pingora's own floor) instead of the gateway;
--keep copies the callgrind profile of the N requests to FILE (for callgrind_annotate);
--large fetches the 100 MiB asset instead (N times, default 2) and reports instructions per
MiB; --h2 sends the requests over TLS h2 (4 connections x 16 streams; the TLS work included); --extra adds lines under `gateway:` (e.g. "  access_log: {enabled: false}"), to see what a
feature costs.
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
        if not a.startswith("--") and sys.argv[i - 1] not in ("--binary", "--keep", "--extra")]
large = "--large" in sys.argv
N = int(args[0]) if args else (2 if large else 2000)
ASSET = LARGE if large else SMALL
minimal = "--minimal" in sys.argv
h2 = "--h2" in sys.argv
binary = sys.argv[sys.argv.index("--binary") + 1] if "--binary" in sys.argv else str(
    ROOT / ("target/release/examples/minimal_proxy" if minimal else "target/release/asset-gateway"))


def main():
    subprocess.run([str(ROOT / "scripts/install-deps"), "valgrind", "nginx", "nghttp2-client"], check=True)
    if "--binary" not in sys.argv:
        subprocess.run(["cargo", "build", "--release", "-q", "--bin", "asset-gateway", "--example", "minimal_proxy"],
                       cwd=ROOT, check=True)
    write_files()
    origin = start_nginx("origin", ORIGIN_BODY.format(tmp=TMP, fast=ORIGIN_FAST, slow=ORIGIN_SLOW), LOAD_CORE)
    conf = TMP / "gateway.yaml"
    extra = sys.argv[sys.argv.index("--extra") + 1] + "\n" if "--extra" in sys.argv else ""
    conf.write_text(GATEWAY_CONF.format(tmp=TMP, port=GATEWAY, h2=GATEWAY_H2, fast=ORIGIN_FAST, slow=ORIGIN_SLOW)
                    .replace("gateway:\n", "gateway:\n" + extra))
    target = [binary, f"127.0.0.1:{GATEWAY}", f"127.0.0.1:{ORIGIN_FAST}"] if minimal else [binary, "-c", str(conf)]
    out = TMP / "callgrind.out"
    proxy = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                              *target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "RUST_LOG": "info"})
    try:
        wait_port(ORIGIN_FAST)
        wait_port(GATEWAY, proxy)
        url = f"http://127.0.0.1:{GATEWAY}/content/v1/assets/{ASSET}"
        h2load = ["h2load", "--h1", "-c", "1" if large else "4", "-m", "1"]
        if h2:
            wait_port(GATEWAY_H2, proxy)
            url = f"https://127.0.0.1:{GATEWAY_H2}/content/v1/assets/{ASSET}"
            h2load = ["h2load", "-c", "1" if large else "4", "-m", "1" if large else "16"]
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
