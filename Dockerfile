# observer's image: `docker build -t ghcr.io/observer-rs/observer:0.1.0 .`
#
# The same toolchain recipe as `cargo xtask setup`: stable Rust 1.95 for the agent, a nightly
# with rust-src for the eBPF programs, bpf-linker 0.10.4 (it uses the nightly's LLVM 22, so the
# nightly is pinned to one that ships LLVM 22). Development uses the nightly that reports
# `rustc 1.97.0-nightly (e50aa6fba 2026-05-19)`; rustup names nightlies by their release date,
# the day after that commit. This recipe cannot be built on the development machines (no Docker
# engine): the pin and the steps mirror `cargo xtask setup`, which the tests run.
FROM docker.io/library/rust:1.95-bookworm AS build
ARG NIGHTLY=nightly-2026-05-20
ENV OBSERVER_EBPF_TOOLCHAIN=${NIGHTLY}
RUN rustup toolchain install ${NIGHTLY} --profile minimal --component rust-src \
    && cargo +${NIGHTLY} install bpf-linker --version 0.10.4 --locked
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package observer \
    && install -m 0755 target/release/observer /observer

# glibc and nothing else: the binary links SQLite statically and embeds its eBPF object.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /observer /usr/bin/observer
ENTRYPOINT ["/usr/bin/observer"]
CMD ["agent", "--listen=0.0.0.0:9464"]
