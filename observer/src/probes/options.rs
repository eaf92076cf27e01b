//! What the probes are loaded with: the plain options `observer agent` and `observer check`
//! build from their flags.

use std::path::PathBuf;

use super::{HookType, Purpose};

/// How the probes are loaded and which are attached.
#[derive(Debug, Clone)]
pub struct Options {
    /// BTF of the running kernel.
    pub btf: PathBuf,
    /// Hook types to try for each probe, in order of preference.
    pub hook_types: Vec<HookType>,
    /// Optional purposes not to attach.
    pub skip_probes: Vec<Purpose>,
    /// When the read hook runs.
    pub read_hook: ReadHook,
    /// Slots in the kernel's per-socket table (a power of two).
    pub socket_slots: u32,
    /// bpffs directory of the pinned maps.
    pub pin_dir: PathBuf,
}

/// When the read hook (`sock:sock_recv_length`) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadHook {
    /// Only while a socket has waited in CLOSE_WAIT a second or more (and a minute after the
    /// last one left): a healthy node runs no program on its reads.
    OnDemand,
    /// From start to stop.
    Always,
}
