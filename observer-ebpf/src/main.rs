//! observer's eBPF programs: kernel hooks that record socket owners in process context and emit
//! only the anomalies detectors need (aborts on close), counting every drop.
//!
//! # Layout
//! * `maps` — every map and the `OFFSETS` global, each with its lifecycle.
//! * `sock` — reads kernel socket fields at offsets resolved from BTF by userspace.
//! * `socks` — per-socket state: a slot table indexed by the socket's address, with an overflow.
//! * `emit` — ring-buffer output and the per-CPU drop counters.
//! * `close_wait` — CLOSE_WAIT entries, reads while in it, and the end of a reported leak;
//!   `iter/tcp` promotion of the sockets still in CLOSE_WAIT when the agent scans.
//! * `sock_state` — `sock:inet_sock_set_state`: owners, roles, abort detection.
//! * `flows` — connection counts per owner and peer, listeners' and first closers' owners.
//! * `tcp_reset` — `tcp:tcp_send_reset`: adds the kernel's RST reason to a pending abort, emits it.
//! * `reset_received` — `tcp:tcp_receive_reset`: the victim's side of a reset, refused connects.
//! * `sock_recv` — `sock:sock_recv_length` (or `tcp_recvmsg`): owner and last read.
//! * `runtime` — the panic handler and license (shared with the `floor` object).
//!
//! Each hook has one entry point per program type (BTF tracepoint, raw tracepoint, classic
//! tracepoint, kprobe where it applies); userspace attaches the first one the kernel accepts.
#![no_std]
#![no_main]
// `atomic_xadd`: the eBPF target has no `AtomicU64::fetch_add` (no compare-and-swap).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_xadd for map counters"
)]
#![expect(
    clippy::inline_always,
    reason = "helpers are inlined into each entry point: the verifier checks one straight program"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand each entry point its context by value"
)]

mod close_wait;
mod emit;
mod flows;
mod maps;
mod reset_received;
mod runtime;
mod sock;
mod sock_recv;
mod sock_state;
mod socks;
mod tcp_reset;
