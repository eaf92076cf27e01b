# observer's image: `docker build -t ghcr.io/observer-rs/observer:0.1.0 .`
#
# Where no registry is reachable, `cargo xtask image` builds the same runtime stage with buildah:
# it builds the static binary on the host and hands it over as the `build` stage
# (`--build-context build=DIR`), so only the stage below `FROM scratch` runs there.
#
# The build stage follows `cargo xtask setup`: stable Rust 1.95 for the agent, a nightly with
# rust-src for the eBPF programs, bpf-linker 0.10.4 (it uses the nightly's LLVM 22, so the
# nightly is pinned to one that ships LLVM 22), and musl for a static binary. Development uses
# the nightly that reports `rustc 1.97.0-nightly (e50aa6fba 2026-05-19)`; rustup names
# nightlies by their release date, the day after that commit.
FROM docker.io/library/rust:1.95-bookworm AS build
ARG NIGHTLY=nightly-2026-05-20
ENV OBSERVER_EBPF_TOOLCHAIN=${NIGHTLY}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools \
    && rustup target add x86_64-unknown-linux-musl \
    && rustup toolchain install ${NIGHTLY} --profile minimal --component rust-src \
    && cargo +${NIGHTLY} install bpf-linker --version 0.10.4 --locked
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package observer --target x86_64-unknown-linux-musl \
    && install -m 0755 target/x86_64-unknown-linux-musl/release/observer /observer

# One static binary (musl, SQLite linked in, the eBPF object embedded) and nothing else: no
# shell, no libc, no package manager for an intruder to use.
FROM scratch AS runtime
COPY --from=build /observer /usr/bin/observer
ENTRYPOINT ["/usr/bin/observer"]
CMD ["agent", "--listen=0.0.0.0:9464"]
