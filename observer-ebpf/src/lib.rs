//! observer's eBPF programs live in the `observer` binary target of this crate (`src/main.rs`),
//! built for `bpfel-unknown-none` by `observer/build.rs`, with the bench's empty programs in
//! the `floor` target (`src/floor.rs`). This empty library exists so the
//! userspace crate can name the package as a build dependency (cargo reruns its build script
//! when the programs change).
#![no_std]
