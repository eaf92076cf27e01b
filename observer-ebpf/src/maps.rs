//! Every map and global the programs use, each documented with where it is written, deleted
//! and read.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use observer_common::{
    event::{CloseWaitEntry, Config, RawEvent, SockState, Stat},
    flow::{Closer, FlowEntry, ListenKey, Owner, TupleKey},
    layout::Offsets,
    maps::{CLOSERS_MAX_ENTRIES, FLOWS_MAX_ENTRIES},
};

/// Field offsets for this kernel, written by userspace through `override_global` before load.
/// Read: everywhere, through [`off!`](crate::off).
#[unsafe(no_mangle)]
// SAFETY: `Offsets` is plain `u32`s; all-zero is a valid value, replaced at load time.
pub(crate) static OFFSETS: Offsets = unsafe { core::mem::zeroed() };

/// Reads one member of [`OFFSETS`] with a volatile load, so the compiler cannot fold the
/// load-time value away.
#[macro_export]
macro_rules! off {
    ($field:ident) => {
        $crate::maps::load(&raw const $crate::maps::OFFSETS.$field)
    };
}

/// Volatile load of a global userspace sets at load time (an `OFFSETS` member, see
/// [`off!`](crate::off), or `SLOT_BITS`).
#[inline(always)]
pub(crate) fn load(field: *const u32) -> u32 {
    // SAFETY: `field` points into a static, which lives for the whole program.
    unsafe { core::ptr::read_volatile(field) }
}

/// Anomalies for userspace. Written: `emit::event`. Read: the agent's ring-buffer reader.
/// Sized by `observer_common::maps::EVENTS_BYTES`.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(observer_common::maps::EVENTS_BYTES, 0);

/// Most bytes seen waiting in `EVENTS` right after an output, per CPU. Raised: `emit::event`.
/// Read and reset to 0: the agent, every second (the ring's fill level).
#[map]
pub(crate) static EVENTS_FILL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Drop and error counters, indexed by `Stat`. Written: `emit::count`. Read: the agent.
#[map]
pub(crate) static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// Runtime settings (`Config` indexes). Written: the agent, after attaching the optional hooks
/// and before the required one. Read: `sock_state`, `close_wait`.
#[map]
pub(crate) static CONFIG: Array<u32> = Array::with_max_entries(Config::LEN, 0);

/// Whether the agent set `bit` (a `Config` flag) in `CONFIG`.
#[inline(always)]
pub(crate) fn config_flag(bit: u32) -> bool {
    CONFIG.get(Config::FLAGS).is_some_and(|f| f & bit != 0)
}

/// sk -> socket in CLOSE_WAIT. Inserted: `close_wait::promote` (the agent's iterator, for
/// sockets still in CLOSE_WAIT at a scan), or `close_wait::enter` (`-> CLOSE_WAIT`, softirq)
/// where the agent does not promote.
/// Updated: `close_wait::on_read` (owner reads), the agent (sets `CW_REPORTED`). Deleted:
/// `close_wait::leave` (`CLOSE_WAIT -> LAST_ACK | CLOSE`), the agent (reconciling entries whose
/// socket left while no agent ran). Read: the agent, every scan. Pinned by name under the
/// agent's pin directory, so a restarted agent keeps every entry time. Not LRU: a full map is
/// counted (`CloseWaitFull`), never a silent eviction; entries are allocated as needed.
#[map]
pub(crate) static CLOSE_WAIT: HashMap<u64, CloseWaitEntry> = HashMap::pinned(
    observer_common::maps::CLOSE_WAIT_MAX_ENTRIES,
    BPF_F_NO_PREALLOC,
);

/// The layout version of the pins beside it (`LAYOUT_VERSION`), pinned with them. Written:
/// the agent, after load. Read: the next agent, before it reuses any pin. No program reads it.
#[map]
pub(crate) static LAYOUT: Array<u32> = Array::pinned(1, 0);

/// Sockets in CLOSE_WAIT waiting for promotion, per entry epoch (`CW_EPOCH`). Added to:
/// `close_wait::enter`; taken from: `close_wait::leave` (left unpromoted), `close_wait::promote`.
/// Read: the agent, which runs the iterator only when a socket has waited a whole scan
/// interval. Atomic adds: a program interrupted on its CPU by another must not lose a count.
#[map]
pub(crate) static CW_PENDING: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(observer_common::maps::CW_EPOCHS, 0);

/// The program calling: each has its own per-CPU word to hash addresses with.
#[derive(Clone, Copy)]
pub(crate) enum Hook {
    /// `sock_state`, and `close_wait`'s entry and exit it calls.
    State = 0,
    /// `sock_recv`.
    Read = 1,
    /// `close_wait::promote`, the TCP iterator.
    Promote = 2,
    /// `reset_received`, which runs in softirq or in the owner's `release_sock()` and may
    /// interrupt (or be interrupted by) the others.
    Reset = 3,
}

impl Hook {
    /// Entries of `WORD`.
    pub(crate) const COUNT: u32 = 4;
}

/// One event per CPU and `Hook`, built here instead of on the stack: the verifier limits a
/// program and the functions it calls to 512 bytes of stack together, and 5.x and 6.1
/// kernels count every frame in full. Written: `emit::scratch` (zeroed), then `sock_state`
/// and `close_wait` fill it and emit or hold it within the same run. Never read by the agent.
#[map]
pub(crate) static EVENT_SCRATCH: PerCpuArray<RawEvent> =
    PerCpuArray::with_max_entries(Hook::COUNT, 0);

/// One `CLOSE_WAIT` entry per CPU and `Hook`, for the same reason: `close_wait::entry` fills
/// it and the insert copies it, within one run of `sock_state` or `close_wait::promote`.
#[map]
pub(crate) static ENTRY_SCRATCH: PerCpuArray<CloseWaitEntry> =
    PerCpuArray::with_max_entries(Hook::COUNT, 0);

/// The current epoch's `CW_PENDING` slot. Written: the agent, each scan. Read:
/// `close_wait::enter`.
#[map]
pub(crate) static CW_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// The last sockets read on each CPU, with their reader and the time then, one per slot (a
/// hash of the reading thread and the peer port): on loopback a CPU runs both ends' readers
/// in turn, and an event loop reads many sockets.
/// Written and read: `sock_recv` (BTF program), which skips the `SOCKS` lookup for the same
/// reader reading the same socket again soon after.
#[map]
pub(crate) static LAST_READ: PerCpuArray<LastRead> =
    PerCpuArray::with_max_entries(LAST_READ_SLOTS, 0);

/// Since when the read hook has been attached without a break (`bpf_ktime_get_ns`), 0 when
/// always, `u64::MAX` while detached. Written: the agent, as it attaches and detaches the hook
/// (`--read-hook on-demand`). Read: `close_wait::entry`, which takes a socket's last read only
/// if it is not older: reads while the hook was detached were not seen.
#[map]
pub(crate) static READS_SINCE: Array<u64> = Array::with_max_entries(1, 0);

/// The network namespace each CPU last read: its cookie's low 32 bits above its inode number,
/// one word (so a program interrupting another on the CPU cannot leave half an update), 0
/// before the first. Written and read: `Sock::netns`.
#[map]
pub(crate) static NETNS_SEEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Slots of [`LAST_READ`] per CPU.
pub(crate) const LAST_READ_SLOTS: u32 = 64;

/// One CPU's last read ([`LAST_READ`]).
#[repr(C)]
pub(crate) struct LastRead {
    /// Socket address (the `SOCKS` key).
    pub(crate) sk: u64,
    /// When the read consumed data (`bpf_ktime_get_ns` clock, from the socket's `tcp_mstamp`),
    /// 0 if it consumed nothing.
    pub(crate) at_ns: u64,
    /// Reader's thread-group id.
    pub(crate) pid: u32,
    /// Explicit padding.
    pub(crate) _pad: u32,
}

/// `BPF_F_NO_PREALLOC`: allocate hash entries on insert instead of all at load.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Per-socket state, one slot per socket (`socks`): a socket takes the first free one of two
/// slots its address hashes to. Claimed: `socks::insert`, from `sock_state` (SYN_SENT,
/// SYN_RECV -> ESTABLISHED) and `sock_recv` (first read of a socket seen no other way).
/// Updated: `sock_state` (ESTABLISHED, CLOSE_WAIT, FIN_WAIT1 in the owner's context),
/// `sock_recv`, `close_wait::promote`. Freed: `sock_state` at CLOSE, which every full TCP
/// socket passes before it is destroyed, whatever else fails there (`sock_recv` claims none
/// for a closed socket), so no slot outlives its socket to mislead a new one at its address.
/// The agent sets the size (`--socket-slots`, 2^18 by default: 128 bytes a slot, 32 MiB; two
/// choices keep about 85% of 200,000 sockets in a slot) and [`SLOT_BITS`] to match.
#[map]
pub(crate) static SOCK_SLOTS: Array<SockSlot> =
    Array::with_max_entries(observer_common::maps::SOCK_SLOTS_DEFAULT, 0);

/// log2 of the [`SOCK_SLOTS`] slot count, written by userspace through `override_global`
/// before load (read-only: the verifier knows its value).
#[unsafe(no_mangle)]
pub(crate) static SLOT_BITS: u32 = observer_common::maps::SOCK_SLOTS_DEFAULT.trailing_zeros();

/// One [`SOCK_SLOTS`] slot.
#[repr(C)]
pub(crate) struct SockSlot {
    /// Address of the socket holding it (its `SOCKS` key), 0 when free.
    pub(crate) sk: u64,
    /// Sockets holding or claiming it (atomic adds): 1 is the holder alone.
    pub(crate) claims: u64,
    /// The holder's state.
    pub(crate) state: SockState,
}

/// sk -> state of a socket whose two slots were both taken (the overflow). Inserted, updated
/// and deleted as [`SOCK_SLOTS`]. LRU, so a missed CLOSE cannot leak an entry; 65,536 entries
/// hold the overflow of about 260,000 sockets.
#[map]
pub(crate) static SOCKS: LruHashMap<u64, SockState> =
    LruHashMap::with_max_entries(observer_common::maps::SOCKS_MAX_ENTRIES, 0);

/// Entries inserted into [`SOCKS`] less those deleted (an eviction is not subtracted): while 0,
/// a socket without a slot is not looked up there. Added to atomically: `socks`. Read: the
/// agent, every second (`observer_map_entries{map="SOCKS"}`).
#[map]
pub(crate) static SOCKS_HELD: Array<u64> = Array::with_max_entries(1, 0);

/// Words per CPU, one per `socks::Hook`: `socks` stores a socket's address in the calling
/// program's and reads it back as a number to hash it. Written and read: `socks`, within one
/// call.
#[map]
pub(crate) static WORD: PerCpuArray<u64> = PerCpuArray::with_max_entries(Hook::COUNT, 0);

/// sk -> abort seen at `-> CLOSE`, waiting for the RST reason (only when the agent sets
/// `Config::EMIT_AT_RESET`). Inserted: `sock_state`. Emitted with the reason and deleted:
/// `tcp_reset`, a few instructions later in the same `close()`. Emitted without one and deleted:
/// the agent, for an entry whose reset never came (over a second old). LRU, so entries can never
/// pin the map.
#[map]
pub(crate) static PENDING: LruHashMap<u64, RawEvent> = LruHashMap::with_max_entries(4096, 0);

/// Id of (owner, peer, role) (`FlowKey::id`) -> connection counts and the key. Inserted:
/// `flows::open` (`-> ESTABLISHED`), or `flows::leave_established` and `flows::close` for an
/// entry the agent deleted while a connection counted there was still open. Added to
/// atomically: all three. Read every scan and deleted once nothing is open and nothing moved
/// (lookup-and-delete, so no count is lost): the agent. Not LRU: a full map counts into
/// `FlowKey::OTHER` (inserted by the agent) and `FlowsFull`.
#[map]
pub(crate) static FLOWS: HashMap<u64, FlowEntry> = HashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

/// A new `FLOWS` value, per CPU: `flows::entry` writes the key into it and inserts it, so its
/// 280 bytes never go on the stack. Nothing writes its counts: they stay zero.
#[map]
pub(crate) static FLOW_NEW: PerCpuArray<FlowEntry> = PerCpuArray::with_max_entries(1, 0);

/// (netns, port) -> owner of the listening socket. Inserted: `flows::listen` (`CLOSE ->
/// LISTEN` in `listen()`), the agent (listeners found at start-up). Read: `flows::open` for
/// accepted connections. LRU: listeners are few, and a stale one is overwritten by the next.
#[map]
pub(crate) static LISTENERS: LruHashMap<ListenKey, Owner> = LruHashMap::with_max_entries(4096, 0);

/// Tuple of a socket handed over to TIME_WAIT -> its first closer and when. Inserted:
/// `flows::close`, one entry per socket, so several processes closing first between one local
/// address and one peer each keep their own. Deleted: the agent, for entries whose socket a
/// listing begun after the hand-over no longer shows in TIME_WAIT. Read: the agent, for each
/// TIME_WAIT socket `sock_diag` lists. Not LRU: a full map is counted (`ClosersFull`), never
/// an eviction that would rename a socket; entries are allocated as needed.
#[map]
pub(crate) static CLOSERS: HashMap<TupleKey, Closer> =
    HashMap::with_max_entries(CLOSERS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Atomic add (`BPF_ATOMIC | BPF_ADD`) to a map value: other CPUs update the same entry, or
/// another program interrupting this one on the CPU the same per-CPU slot.
///
/// # Safety
/// `at` points to a live, aligned `u64` in a map value.
#[inline(always)]
pub(crate) unsafe fn add(at: *mut u64, n: u64) {
    // SAFETY: as the caller guarantees; the result is unused, so LLVM emits the plain atomic
    // add every kernel with eBPF atomics accepts.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            at, n,
        );
    }
}
