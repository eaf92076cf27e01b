//! Kernel tests: the real agent binary, real eBPF programs, real sockets. Each scenario runs in
//! a network namespace of its own (created by the test thread), and reads only the events of
//! that namespace. They need root; without it they print why and pass, except under
//! `OBSERVER_REQUIRE_BPF=1` (CI), where they fail.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, with the failing call in the backtrace"
)]

mod kernel {
    pub(crate) mod support;

    mod agent_cli;
    mod burst;
    mod close_wait;
    mod crash;
    mod fallbacks;
    mod kubernetes;
    mod memory;
    mod one_agent;
    mod pool;
    mod prometheus;
    mod real_clients;
    mod resets;
    mod rst_on_close;
    mod store_full;
    mod upgrade;
}
