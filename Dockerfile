# asset-gateway container image (deploy/README.md).
#
#   docker build -t asset-gateway .
#   docker run --rm -p 8080:8080 -p 9090:9090 --read-only --tmpfs /tmp \
#     -v "$PWD/my-config.yaml:/etc/asset-gateway/asset-gateway.yaml:ro" asset-gateway
#
# Config:  /etc/asset-gateway/asset-gateway.yaml (none is baked in: mount one, e.g. the
#          Kubernetes ConfigMap). Inside a container `gateway.listen` and `gateway.admin` must
#          be 0.0.0.0:<port>; 127.0.0.1 would be unreachable from outside the container.
# Ports:   8080 clients (gateway.listen), 9090 admin: /metrics, /healthz, /readyz (gateway.admin).
# Writes:  only `pid_file` and `upgrade_sock`, which the config puts under /tmp, so the root
#          filesystem can be read-only with a writable /tmp (an emptyDir in Kubernetes).

# --- Build ---------------------------------------------------------------------------------
# A Rust toolchain and a C compiler (mimalloc and ring compile C; the slim image has gcc) are
# all the build needs: no cmake (Pingora's zlib is zlib-rs, vendor/patches), no OpenSSL
# (TLS is rustls). Same Debian release as the runtime stage, so the binary never
# asks for a newer glibc than the runtime has. 1.95 is the toolchain CI tests with.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Cargo.toml declares only src/lib.rs and src/main.rs; examples/, tests/ and benches are
# discovered only when present, so nothing else is needed. vendor/ holds the patched Pingora
# crates that [patch.crates-io] points at. .dockerignore lets nothing else in.
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
COPY vendor/ vendor/
# --locked: exactly the Cargo.lock CI tested. Debug info is stripped (15 MB instead of 109 MB:
# the release profile keeps line tables for local profiling); symbols stay, so a backtrace
# still names functions.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN cargo build --release --locked --bin asset-gateway \
 && install -D -m 0755 target/release/asset-gateway /out/asset-gateway

# --- Runtime -------------------------------------------------------------------------------
# distroless "cc": glibc, libgcc_s and CA certificates, nothing else (no shell, no package
# manager, so little to patch or exploit). The binary links only libc, libm and libgcc_s
# (ldd), and the CA roots serve upstream TLS without `ca_file`. debian-slim was the
# alternative: its only gain here would be a shell for an `exec` preStop `sleep`, and
# Kubernetes >= 1.30 has `lifecycle.preStop.sleep`, which needs no binary in the image.
# The :nonroot variant's user is uid/gid 65532. Pin a digest (@sha256:...) for production.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/asset-gateway /usr/local/bin/asset-gateway
# Numeric, so Kubernetes' runAsNonRoot can verify it without an /etc/passwd lookup.
USER 65532:65532
EXPOSE 8080 9090
# SIGTERM: stop accepting, let in-flight downloads finish (at most grace_period_seconds), exit.
# As PID 1 the gateway needs no init: Pingora installs its own SIGTERM/SIGINT/SIGQUIT handlers
# and the gateway starts no child processes (no -d in a container), so there is nothing to reap.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/asset-gateway"]
CMD ["-c", "/etc/asset-gateway/asset-gateway.yaml"]
