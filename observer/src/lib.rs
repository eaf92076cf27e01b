//! observer: an eBPF agent that watches every TCP connection on a Linux node and names the
//! connection-handling bugs that take services down.
//!
//! # Layout
//! * [`config`] — command-line flags (also `OBSERVER_*` variables) into a validated config.
//! * [`telemetry`] — the agent's own `tracing` log, with aya's `log` records bridged in.
//! * [`btf`] — a small BTF reader: struct field offsets, enum values, tracepoint arity.
//! * [`layout`] — everything kernel-specific the programs need, resolved at start-up.
//! * [`host`] — privileges, kernel release, tracefs.
//! * [`sys`] — the system calls (setns, netlink, flock, mount, clocks), the `unsafe` they need.
//! * [`lock`] — one agent per node: exclusive locks on the data dir and the pin directory.
//! * [`probes`] — loads the eBPF object, chooses a hook per purpose and owns the links.
//! * [`map_read`] — the bpf(2) commands aya lacks: whole hash maps in batches,
//!   lookup-and-delete, program info.
//! * [`events`] — the domain [`events::Event`]: decoded from the ring buffer, with a hint.
//! * [`close_wait`] — CLOSE_WAIT leaks: scans the pinned map, discovers sockets at start-up.
//! * [`sock_diag`] — TCP sockets per network namespace, as `ss` lists them.
//! * [`pool`] — pool health: connection counts, lifetimes, TIME_WAIT, ephemeral ports.
//! * [`owners`] — who holds a socket, from `/proc/*/fd` (for sockets the programs missed).
//! * [`enrich`] — workload attribution: cgroup id -> container, pod, namespace.
//! * [`metrics`] — the Prometheus registry, shared label sets, bounded peers, self-metrics.
//! * [`output`] — the JSON-lines event log.
//! * [`store`] — the embedded event history (SQLite): batched appends, filters, retention.
//! * [`api`] — the read-only HTTP API: metrics, health, events, sockets, status.
//! * [`agent`] / [`check`] — the `observer agent` and `observer check` commands.
//! * [`cli`] — `observer events | sockets | status`, clients of an agent's API.
//! * [`shutdown`] — SIGINT and SIGTERM.
//!
//! # Data flow
//!
//! ```text
//!  kernel programs (observer-ebpf)
//!   |  ring buffer: aborts, resets, resolved CLOSE_WAITs      maps: CLOSE_WAIT, FLOWS, CLOSERS
//!   v                                                           |            |
//!  events::reader (task) -> events::link (task) -> close_wait (thread) pool (thread)
//!                                                  | book: the pure core  | flows, time_wait,
//!                                                  v leak events          v detect: pure cores
//!                                     bounded mpsc: every event ------> output::Sink (thread)
//!                                                                       | store (SQLite), JSON
//!                                                                       | lines, metrics
//!  api (tasks): /metrics, /api/v1/{events,sockets,status} <- store::Reader, close_wait::Live
//! ```
//!
//! Dependencies run one way: commands (`agent`, `check`, `cli`) and `config` at the top, the
//! areas (`close_wait`, `pool`, `events`, `output`, `api`) below, then `probes`, `metrics`,
//! `enrich`, `sock_diag`, and `sys` and `map_read` at the bottom
//! (`tests/architecture.rs` checks there is no cycle).

// `unsafe` lives only in `sys`, `map_read` and the ring-buffer decode boundary.
#![deny(unsafe_code)]

pub mod agent;
pub mod api;
pub mod btf;
pub mod check;
pub mod cli;
pub mod close_wait;
pub mod config;
pub mod enrich;
pub mod events;
pub mod host;
pub mod layout;
pub mod lock;
#[allow(
    unsafe_code,
    reason = "bpf(2) commands and typed views of what the kernel wrote"
)]
pub mod map_read;
pub mod metrics;
pub mod output;
pub mod owners;
pub mod pool;
pub mod probes;
pub mod shutdown;
pub mod sock_diag;
pub mod store;
#[allow(unsafe_code, reason = "the one home of system calls")]
pub mod sys;
pub mod telemetry;
