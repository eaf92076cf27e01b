//! Empty programs on the hooks observer's programs run on for every connection and every read
//! (`sock:inet_sock_set_state`, `sock:sock_recv_length`): the bench
//! attaches them to measure what hooking those tracepoints costs before any work is done
//! (`observer/benches/overhead.rs`, the "hooks alone" rows). Never loaded by the agent.
#![no_std]
#![no_main]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

mod runtime;

/// Returns at once.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub(crate) fn floor_state(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Returns at once.
#[btf_tracepoint(function = "sock_recv_length")]
pub(crate) fn floor_recv(_ctx: BtfTracePointContext) -> i32 {
    0
}
