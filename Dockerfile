# syntax=docker/dockerfile:1
#
# The agent image: a build stage with both pinned Rust toolchains (rust-toolchain.toml
# for the agent, agent-ebpf/rust-toolchain.toml for the eBPF programs) and bpf-linker
# against LLVM 22, then the binary alone on a distroless base.
#
#   docker build -t registry.example/mtls-auditor:0.1.0 .
#
# The agent needs root with the capabilities listed in deploy/helm/mtls-auditor
# (BPF, PERFMON, NET_ADMIN, SYS_RESOURCE, DAC_READ_SEARCH), a kernel with BTF
# (/sys/kernel/btf/vmlinux) and the host's cgroup v2 hierarchy; see docs/kubernetes.md.

FROM debian:bookworm AS build
ARG BPF_LINKER_VERSION=0.13.0
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates curl build-essential pkg-config \
        llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo PATH=/opt/cargo/bin:/usr/lib/llvm-22/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --default-toolchain none
WORKDIR /src
COPY rust-toolchain.toml ./
COPY agent-ebpf/rust-toolchain.toml agent-ebpf/
RUN rustup toolchain install "$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)" --profile minimal \
    && rustup toolchain install "$(sed -n 's/^channel *= *"\(.*\)"/\1/p' agent-ebpf/rust-toolchain.toml)" \
        --profile minimal --component rust-src \
    && cargo install bpf-linker --version "$BPF_LINKER_VERSION" \
        --no-default-features --features llvm-22 --locked
COPY . .
RUN cargo build --release --locked -p mtls-auditor \
    && install -D target/release/mtls-auditor /out/mtls-auditor

# glibc and libgcc, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/mtls-auditor /usr/local/bin/mtls-auditor
# Root, with the capabilities the DaemonSet adds; not privileged.
USER 0:0
EXPOSE 9477
ENTRYPOINT ["/usr/local/bin/mtls-auditor"]
CMD ["run", "--listen=0.0.0.0:9477"]
