//! Types shared by observer's eBPF programs (`observer-ebpf`) and its userspace agent.
//!
//! Everything here is `#![no_std]` and `#[repr(C)]`: the same bytes are written by the kernel
//! side and read by userspace, so each layout is fixed by a size assertion and only ever grows
//! at the end. Code for one side only lives behind the `user` feature.
#![no_std]

pub mod event;
pub mod flow;
pub mod layout;
pub mod tcp;

/// Names of the maps, shared so that userspace looks up exactly what the programs define.
pub mod maps {
    /// Ring buffer carrying [`crate::event::RawEvent`]s to userspace.
    pub const EVENTS: &str = "EVENTS";
    /// Size of [`EVENTS`] in bytes: about 49,000 events (168 bytes each with the ring's
    /// header), where an abort whose peer is on the node takes two (its own and the peer's
    /// `reset_received`): a reader held up by a busy machine loses nothing for as long as
    /// that lasts (`docs/performance.md` has what it holds at the abort rates measured).
    pub const EVENTS_BYTES: u32 = 8 << 20;
    /// Per-CPU high-water mark of bytes waiting in [`EVENTS`], reset by userspace as it reads.
    pub const EVENTS_FILL: &str = "EVENTS_FILL";
    /// Per-CPU counters indexed by [`crate::event::Stat`].
    pub const STATS: &str = "STATS";
    /// Runtime settings written by userspace before the required hook is attached
    /// ([`crate::event::Config`] indexes).
    pub const CONFIG: &str = "CONFIG";
    /// Sockets in CLOSE_WAIT (pinned, so a restarted agent keeps their entry times).
    pub const CLOSE_WAIT: &str = "CLOSE_WAIT";
    /// Capacity of [`CLOSE_WAIT`].
    pub const CLOSE_WAIT_MAX_ENTRIES: u32 = 262_144;
    /// The layout version of the pinned maps (one `u32`), pinned beside them.
    pub const LAYOUT: &str = "LAYOUT";
    /// [`LAYOUT`]'s value for this build's `CLOSE_WAIT` entries
    /// ([`crate::event::CloseWaitEntry`]). Raise it whenever that layout changes, and teach
    /// `observer::probes::pins` to migrate the previous one. Version 1 is the unversioned
    /// layout of the builds before the pin existed (a `CLOSE_WAIT` pin without `LAYOUT`).
    pub const LAYOUT_VERSION: u32 = 2;
    /// Per-CPU counts of sockets in CLOSE_WAIT waiting for promotion, by the scan epoch they
    /// entered in ([`CW_EPOCHS`] slots; per-CPU values wrap, their sum is the count).
    pub const CW_PENDING: &str = "CW_PENDING";
    /// Slots of [`CW_PENDING`]: the current epoch, the previous one, and the one before, whose
    /// sockets have waited a whole scan interval at least.
    pub const CW_EPOCHS: u32 = 3;
    /// The current scan epoch's [`CW_PENDING`] slot (one `u32`), advanced by the agent each scan.
    pub const CW_EPOCH: &str = "CW_EPOCH";
    /// Per-socket state recorded in process context (owner, role, times): one slot per
    /// socket, indexed by a hash of its address (the agent sets the slot count at load).
    pub const SOCK_SLOTS: &str = "SOCK_SLOTS";
    /// Default slot count of [`SOCK_SLOTS`] (`--socket-slots`).
    pub const SOCK_SLOTS_DEFAULT: u32 = 262_144;
    /// Per-socket state of the sockets whose slots were both taken (the overflow).
    pub const SOCKS: &str = "SOCKS";
    /// Capacity of [`SOCKS`].
    pub const SOCKS_MAX_ENTRIES: u32 = 65_536;
    /// Entries inserted into [`SOCKS`] less those deleted (one `u64`; evictions still counted).
    pub const SOCKS_HELD: &str = "SOCKS_HELD";
    /// Since when the read hook has been attached without a break (one `u64`, monotonic ns;
    /// `u64::MAX` while detached): older last reads may not be the last.
    pub const READS_SINCE: &str = "READS_SINCE";
    /// Aborts seen at the state change, completed and emitted by the reset that follows.
    pub const PENDING: &str = "PENDING";
    /// Connection counts per owner, peer and role ([`crate::flow`]).
    pub const FLOWS: &str = "FLOWS";
    /// Capacity of [`FLOWS`]; beyond it the programs count into `FlowKey::OTHER`.
    pub const FLOWS_MAX_ENTRIES: u32 = 16_384;
    /// Listening sockets' owners, to attribute the connections they accept.
    pub const LISTENERS: &str = "LISTENERS";
    /// Owners of sockets that closed first (and so hold the TIME_WAIT), one per socket.
    pub const CLOSERS: &str = "CLOSERS";
    /// Capacity of [`CLOSERS`]: sockets in TIME_WAIT, which lasts 60 s, so about 4,300 first
    /// closes a second on a node. Entries are allocated as needed (about 100 bytes each); a
    /// full map is counted (`ClosersFull`).
    pub const CLOSERS_MAX_ENTRIES: u32 = 262_144;
}

/// Name of the global that carries [`layout::Offsets`] into the programs.
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Name of the global that carries log2 of the `SOCK_SLOTS` slot count (a `u32`) into the
/// programs.
pub const SLOT_BITS_GLOBAL: &str = "SLOT_BITS";
