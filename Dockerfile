# The mesh image: one `mesh` binary on a small glibc runtime, run as a
# non-root user. `mesh` is the entrypoint, so a container runs
# `mesh serve <service>`, `mesh gateway` or `mesh health` (its own probe).
# `mesh` handles SIGTERM and SIGINT itself (it drains and exits), so it runs
# as PID 1 without an init.
#
# Normal route (registry access), the default target:
#   docker build -t mesh:latest .
# Offline route (no registry, a binary built on the host, a base image
# imported from a local rootfs): `deploy/image/build` does
#   docker build --target prebuilt --build-arg BASE_IMAGE=mesh-base:local -t mesh:latest <context>
# See docs/deploy.md.

# Any glibc runtime with CA certificates and a non-root user 65532 will do.
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG RUST_IMAGE=docker.io/library/rust:1.88-bookworm

# === The runtime, shared by both routes ===
FROM ${BASE_IMAGE} AS runtime-base
# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
WORKDIR /home/nonroot
ENV MESH_LOG_FORMAT=json
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/mesh"]
CMD ["--help"]

# === Offline route: the binary built on the host ===
# First in the file, so the classic builder stops here without touching the
# Rust stage when this is the target.
FROM runtime-base AS prebuilt
COPY target/release/mesh /usr/local/bin/mesh

# === Normal route: build in a Rust image ===
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mesh \
    && install -m 0755 target/release/mesh /usr/local/bin/mesh

FROM runtime-base AS runtime
COPY --from=builder /usr/local/bin/mesh /usr/local/bin/mesh
