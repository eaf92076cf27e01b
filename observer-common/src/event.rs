//! Wire types the programs write into the `EVENTS` ring buffer and the `STATS` counters.
//!
//! ABI: append-only; explicit padding, no implicit holes. Ports are in host byte order,
//! addresses are in network byte order (`[u8; 16]`, IPv4 in the first 4 bytes).

#[cfg(feature = "user")]
mod user;

/// What a [`RawEvent`] reports. Crosses as a raw `u8`; userspace decodes it with `TryFrom`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The owner closed a socket with unread bytes: the kernel sent RST instead of FIN.
    RstOnClose = 1,
    /// The owner closed with `SO_LINGER` timeout 0 and nothing unread: a deliberate abort.
    LingerAbort = 2,
    /// A socket reported as a CLOSE_WAIT leak (or found in CLOSE_WAIT at start-up) left it.
    CloseWaitResolved = 3,
    /// An RST arrived on a synchronized connection (`tcp:tcp_receive_reset`): the peer reset it.
    ResetReceived = 4,
    /// An RST answered a `connect()` (`SYN_SENT`): refused. Counted by userspace, not stored.
    ConnectRefused = 5,
}

/// Which side opened the connection, as observer saw it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The connection was not seen being established.
    Unknown = 0,
    /// The owner connected (`SYN_SENT`).
    Client = 1,
    /// The socket was accepted (`SYN_RECV -> ESTABLISHED`).
    Server = 2,
}

/// `rst_reason` when no reset was traced for the socket.
pub const NO_RST_REASON: u32 = u32::MAX;
/// `bytes_sent` when the kernel has no `tcp_sock.bytes_sent`.
pub const UNKNOWN_BYTES: u64 = u64::MAX;

/// One detected anomaly on one socket, written by the programs (160 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the state changed.
    pub ts_ns: u64,
    /// Kernel address of the socket: a join key within one boot, never shown as is.
    pub sk: u64,
    /// cgroup v2 id of the owner.
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC time the connection was established, 0 if observer did not see it.
    pub established_ns: u64,
    /// `tcp_sock.bytes_received`.
    pub bytes_received: u64,
    /// `tcp_sock.bytes_sent`, or [`UNKNOWN_BYTES`].
    pub bytes_sent: u64,
    /// Local address, network byte order.
    pub saddr: [u8; 16],
    /// Peer address, network byte order.
    pub daddr: [u8; 16],
    /// Owner's `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// Bytes in the receive queue the owner never read (FIN excluded).
    pub unread_bytes: u32,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// Owner's thread-group id (what userspace calls the pid).
    pub pid: u32,
    /// Raw `enum sk_rst_reason` from `tcp:tcp_send_reset`, or [`NO_RST_REASON`].
    pub rst_reason: u32,
    /// Local port, host byte order.
    pub sport: u16,
    /// Peer port, host byte order.
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// [`Kind`] as `u8`.
    pub kind: u8,
    /// [`Role`] as `u8`.
    pub role: u8,
    /// TCP state before the close (`tcp::ESTABLISHED`, ...).
    pub old_state: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
    /// `close_wait_resolved`: time spent in CLOSE_WAIT, 0 when the entry was not known (the
    /// socket was in CLOSE_WAIT before the programs were attached).
    pub close_wait_ns: u64,
    /// CLOCK_MONOTONIC time of the owner's last consuming read, 0 if none was seen.
    pub last_read_ns: u64,
    /// `reset_received`: bytes written and not yet acknowledged (`write_seq - snd_una`), which
    /// the reset discards. 0 for other kinds.
    pub unsent_bytes: u32,
    /// Explicit padding.
    pub _pad2: u32,
    /// `reset_received` of a socket whose owner the programs never recorded (accepted, never
    /// read while the read hook ran; `pid` is then its listener's, or 0): the inode of its
    /// file, for userspace to find the process holding it. 0 otherwise.
    pub inode: u64,
}
const _: () = assert!(core::mem::size_of::<RawEvent>() == 160);

/// Per-socket state, recorded when the owner touches the socket in process context (112 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockState {
    /// CLOCK_MONOTONIC time of `-> ESTABLISHED`, 0 if not seen.
    pub established_ns: u64,
    /// CLOCK_MONOTONIC time of the owner's last read that consumed data, 0 if none.
    pub last_read_ns: u64,
    /// Owner's cgroup v2 id.
    pub cgroup_id: u64,
    /// Owner's `comm`.
    pub comm: [u8; 16],
    /// Owner's thread-group id, 0 while unknown (an accepted socket not yet read).
    pub pid: u32,
    /// [`Role`] as `u8`.
    pub role: u8,
    /// [`SOCK_IN_CLOSE_WAIT`], [`SOCK_COUNTED`], [`SOCK_CW_TRACKED`].
    pub flags: u8,
    /// `CW_PENDING` slot the socket was counted in while it waits for promotion.
    pub cw_slot: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Where the connection was counted as opened (valid with [`SOCK_COUNTED`]), so its close
    /// is counted in the same `FLOWS` entry whoever owns the socket by then.
    pub flow: crate::flow::FlowKey,
    /// `flow`'s [`FlowKey::id`](crate::flow::FlowKey::id), the `FLOWS` key the later updates
    /// look up (valid with [`SOCK_COUNTED`]).
    pub flow_id: u64,
    /// CLOCK_MONOTONIC time of `-> CLOSE_WAIT` (valid with [`SOCK_IN_CLOSE_WAIT`]): the entry
    /// time a `CLOSE_WAIT` map entry gets when the socket is promoted there.
    pub close_wait_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SockState>() == 112);

/// `SockState::flags`: the socket is in CLOSE_WAIT (set on entry, cleared on exit), so the
/// read hook knows without reading `skc_state` (a `bpf_probe_read_kernel` per read).
pub const SOCK_IN_CLOSE_WAIT: u8 = 1;
/// `SockState::flags`: the connection was counted as opened in `FLOWS` under `SockState::flow`.
pub const SOCK_COUNTED: u8 = 2;
/// `SockState::flags`: the socket has a `CLOSE_WAIT` map entry (inserted on entry, or by the
/// promotion iterator for a socket still in CLOSE_WAIT), so leaving CLOSE_WAIT deletes it.
/// In CLOSE_WAIT without it, the socket left before any promotion: there is nothing to delete.
pub const SOCK_CW_TRACKED: u8 = 4;

/// Indexes into the per-CPU `STATS` array. Every drop has one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// `rst_on_close` events lost because the ring buffer was full.
    LostRstOnClose = 0,
    /// `linger_abort` events lost because the ring buffer was full.
    LostLingerAbort = 1,
    /// Aborts lost because the `PENDING` map was full.
    PendingFull = 2,
    /// Sockets not tracked: both their `SOCK_SLOTS` slots were taken and the `SOCKS` overflow
    /// map refused the insert.
    SocksFull = 3,
    /// Kernel memory reads that failed (`bpf_probe_read_kernel`).
    ReadFailed = 4,
    /// `close_wait_resolved` events lost because the ring buffer was full.
    LostCloseWaitResolved = 5,
    /// Sockets not tracked in CLOSE_WAIT because the `CLOSE_WAIT` map was full.
    CloseWaitFull = 6,
    /// Connections counted under `FlowKey::OTHER` because `FLOWS` was full (or, vanishingly
    /// rarely, because another key had taken their key's id).
    FlowsFull = 7,
    /// Sockets that left CLOSE_WAIT over a minute after entering it without ever getting a
    /// `CLOSE_WAIT` entry: the promotion never reached them (their network namespace had no
    /// task for the agent to enter), so no leak could be reported.
    CloseWaitUnpromoted = 8,
    /// `reset_received` events lost because the ring buffer was full.
    LostResetReceived = 9,
    /// Refused connects not counted because the ring buffer was full.
    LostConnectRefused = 10,
    /// Sockets handed over to TIME_WAIT whose first closer was not recorded because the
    /// `CLOSERS` map was full: counted in TIME_WAIT under no workload.
    ClosersFull = 11,
}

impl Stat {
    /// The counter's name, as logs, `observer status` and `observer_events_lost_total` show it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::LostRstOnClose => "ringbuf_full_rst_on_close",
            Self::LostLingerAbort => "ringbuf_full_linger_abort",
            Self::PendingFull => "pending_map_full",
            Self::SocksFull => "socks_map_full",
            Self::ReadFailed => "kernel_read_failed",
            Self::LostCloseWaitResolved => "ringbuf_full_close_wait_resolved",
            Self::CloseWaitFull => "close_wait_map_full",
            Self::FlowsFull => "flows_map_full",
            Self::CloseWaitUnpromoted => "close_wait_unpromoted",
            Self::LostResetReceived => "ringbuf_full_reset_received",
            Self::LostConnectRefused => "ringbuf_full_connect_refused",
            Self::ClosersFull => "closers_map_full",
        }
    }

    /// Number of counters in `STATS`.
    pub const COUNT: u32 = 12;
    /// Every counter, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::LostRstOnClose,
        Self::LostLingerAbort,
        Self::PendingFull,
        Self::SocksFull,
        Self::ReadFailed,
        Self::LostCloseWaitResolved,
        Self::CloseWaitFull,
        Self::FlowsFull,
        Self::CloseWaitUnpromoted,
        Self::LostResetReceived,
        Self::LostConnectRefused,
        Self::ClosersFull,
    ];

    /// The ring-buffer drop counter for events of `kind`.
    pub const fn lost(kind: Kind) -> Self {
        match kind {
            Kind::RstOnClose => Self::LostRstOnClose,
            Kind::LingerAbort => Self::LostLingerAbort,
            Kind::CloseWaitResolved => Self::LostCloseWaitResolved,
            Kind::ResetReceived => Self::LostResetReceived,
            Kind::ConnectRefused => Self::LostConnectRefused,
        }
    }
}

/// Indexes and bits of the `CONFIG` array (`u32` values), written by userspace before the
/// required hook is attached.
pub struct Config;

impl Config {
    /// Index of the flag bits.
    pub const FLAGS: u32 = 0;
    /// Number of entries.
    pub const LEN: u32 = 1;
    /// Flag: `tcp:tcp_send_reset` is attached and carries the reason (6.10+): hold aborts in
    /// `PENDING` until the reset the kernel sends right after the state change, which adds the
    /// RST reason and emits them. Without it, emit at the state change.
    pub const EMIT_AT_RESET: u32 = 1;
    /// Flag: the agent runs the `iter/tcp` promotion: `-> CLOSE_WAIT` only records
    /// the entry time in `SOCKS`, and the iterator inserts `CLOSE_WAIT` entries for the sockets
    /// still there. Without it, every socket gets its entry on `-> CLOSE_WAIT`.
    pub const PROMOTE_CLOSE_WAIT: u32 = 2;
}

/// `CloseWaitEntry::flags`: userspace reported the leak; leaving CLOSE_WAIT emits
/// `close_wait_resolved`.
pub const CW_REPORTED: u8 = 1;

/// A socket in CLOSE_WAIT (120 bytes). Inserted by the programs when the peer's FIN moves the
/// socket to CLOSE_WAIT; updated when the owner reads; deleted when it leaves CLOSE_WAIT.
/// The map is pinned: an entry outlives an agent restart, so `entered_ns` stays true.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseWaitEntry {
    /// CLOCK_MONOTONIC time the socket entered CLOSE_WAIT.
    pub entered_ns: u64,
    /// CLOCK_MONOTONIC time of `-> ESTABLISHED`, 0 if not seen.
    pub established_ns: u64,
    /// CLOCK_MONOTONIC time of the owner's last consuming read, 0 if none was seen.
    pub last_read_ns: u64,
    /// Owner's cgroup v2 id (0 while unknown).
    pub cgroup_id: u64,
    /// `tcp_sock.bytes_received` at entry (final: nothing arrives after the FIN).
    pub bytes_received: u64,
    /// Inode number of the socket's file, to find an unknown owner: read only when the owner
    /// is unknown at entry (0 otherwise, and before `accept()`).
    pub inode: u64,
    /// Local address, network byte order.
    pub saddr: [u8; 16],
    /// Peer address, network byte order.
    pub daddr: [u8; 16],
    /// Owner's `comm` (empty while unknown).
    pub comm: [u8; 16],
    /// `tcp_sock.rcv_nxt` at entry (it counts the FIN).
    pub rcv_nxt: u32,
    /// `tcp_sock.copied_seq`, at entry and after each read.
    pub copied_seq: u32,
    /// Network namespace inode.
    pub netns: u32,
    /// Owner's thread-group id, 0 while unknown (an accepted socket never read).
    pub pid: u32,
    /// Local port, host byte order.
    pub sport: u16,
    /// Peer port, host byte order.
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// [`Role`] as `u8`.
    pub role: u8,
    /// [`CW_REPORTED`] and future bits.
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<CloseWaitEntry>() == 120);

impl CloseWaitEntry {
    /// Bytes the owner has not read, the FIN excluded.
    pub const fn unread(&self) -> u32 {
        crate::tcp::unread_bytes(self.rcv_nxt, self.copied_seq, true)
    }
}
