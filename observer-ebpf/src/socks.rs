//! Per-socket state (`SockState`), kept from a socket's first transition to its `-> CLOSE`.
//!
//! Each socket has two candidate slots in `SOCK_SLOTS`, an array indexed by a hash of its
//! address, and takes the first free one; when both are taken it goes into `SOCKS`, an LRU hash
//! (the overflow). A slot costs an array index and a compare where the hash map cost a hash, a
//! bucket lock and, for an insert or delete, the LRU's free lists shared by every CPU: in a
//! storm of short connections the state program's time per call fell by a quarter.
//!
//! Claiming a free slot: an atomic add to its `claims` count, then a read of it. Two sockets
//! racing for one slot on two CPUs both add, and at most one reads 1: the other (or both) takes
//! the back-off path and uses its other slot or the overflow, so a slot is never shared. Only
//! plain atomic adds: no compare-and-swap, which eBPF gained in 5.12.
//!
//! The address is hashed through a per-CPU word (see [`address`]), one per [`Hook`]: the state
//! program runs in softirq and may interrupt the read program or the iterator between the
//! word's write and its read, but never itself (the kernel skips a program already running on
//! the CPU), so no program's word is written under it.
//!
//! A state found is a [`State`]: the one way the other modules reach it, its methods holding
//! the `unsafe` of the map value's pointer.

use observer_common::event::SockState;

pub(crate) use crate::maps::Hook;
use crate::{
    maps::{SLOT_BITS, SOCK_SLOTS, SOCKS, SOCKS_HELD, SockSlot, WORD, add, load},
    sock::Sock,
};

/// A socket's `SockState` in its slot or its overflow entry, found by [`get`]: a map value,
/// valid for the program run that found it. `Copy`, as the pointer it wraps: a program run is
/// one thread of control and each borrow below ends before the next begins; what another CPU
/// writes meanwhile is what any map value may see.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct State(*mut SockState);

impl State {
    /// The state, to read.
    #[inline(always)]
    pub(crate) fn get(&self) -> &SockState {
        // SAFETY: a slot or overflow entry, valid for this program run (see the type's doc).
        unsafe { &*self.0 }
    }

    /// The state, to change.
    #[inline(always)]
    pub(crate) fn get_mut(&mut self) -> &mut SockState {
        // SAFETY: as in `get`.
        unsafe { &mut *self.0 }
    }
}

/// `SockState` of `sk`: its slot's, else its overflow entry's, if it has either.
#[inline(always)]
pub(crate) fn get<const B: bool>(hook: Hook, sk: Sock<B>) -> Option<State> {
    let key = sk.key();
    let (a, b) = slots(hook, sk);
    if let Some(s) = held(a, key).or_else(|| held(b, key)) {
        // SAFETY: an array element, valid for this program run.
        return Some(State(unsafe { &raw mut (*s).state }));
    }
    if overflow_empty() {
        return None;
    }
    SOCKS.get_ptr_mut(key).map(State)
}

/// Stores `st` as `sk`'s state, replacing any it had. `Err` if neither a slot nor the overflow
/// took it.
#[inline(always)]
pub(crate) fn insert<const B: bool>(hook: Hook, sk: Sock<B>, st: &SockState) -> Result<(), ()> {
    let key = sk.key();
    let (a, b) = slots(hook, sk);
    let slot = held(a, key)
        .or_else(|| held(b, key))
        .or_else(|| claim(a, key))
        .or_else(|| claim(b, key));
    if let Some(s) = slot {
        // SAFETY: an array element this socket holds.
        unsafe { (*s).state = *st };
        return Ok(());
    }
    // `BPF_NOEXIST` first: only a new entry is counted in `SOCKS_HELD`.
    if SOCKS.insert(key, st, BPF_NOEXIST).is_ok() {
        held_count(1);
        return Ok(());
    }
    SOCKS.insert(key, st, 0).map_err(|_| ())
}

/// Forgets `sk`'s state: frees its slot, or deletes its overflow entry.
#[inline(always)]
pub(crate) fn remove<const B: bool>(hook: Hook, sk: Sock<B>) {
    let key = sk.key();
    let (a, b) = slots(hook, sk);
    if let Some(s) = held(a, key).or_else(|| held(b, key)) {
        // SAFETY: an array element this socket holds: the key first, so no lookup finds the
        // slot once it can be claimed again.
        unsafe {
            core::ptr::write_volatile(&raw mut (*s).sk, 0);
            add(&raw mut (*s).claims, u64::MAX);
        }
        return;
    }
    if !overflow_empty() && SOCKS.remove(key).is_ok() {
        held_count(u64::MAX);
    }
}

/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;

/// Slot `i` if `sk` holds it.
#[inline(always)]
fn held(i: u32, key: u64) -> Option<*mut SockSlot> {
    let s = SOCK_SLOTS.get_ptr_mut(i)?;
    // SAFETY: an array element, valid for this program run; another CPU may write the key.
    (unsafe { core::ptr::read_volatile(&raw const (*s).sk) } == key).then_some(s)
}

/// Slot `i`, if it was free and this socket won it.
#[inline(always)]
fn claim(i: u32, key: u64) -> Option<*mut SockSlot> {
    let s = SOCK_SLOTS.get_ptr_mut(i)?;
    // SAFETY: an array element, valid for this program run; its words are aligned, the count
    // is changed with atomic adds only.
    unsafe {
        if core::ptr::read_volatile(&raw const (*s).sk) != 0 {
            return None;
        }
        add(&raw mut (*s).claims, 1);
        if core::ptr::read_volatile(&raw const (*s).claims) != 1 {
            // Another socket holds it, or is claiming it too: back off.
            add(&raw mut (*s).claims, u64::MAX);
            return None;
        }
        core::ptr::write_volatile(&raw mut (*s).sk, key);
    }
    Some(s)
}

/// The two candidate slots of `sk`: two parts of a multiplicative hash of its address (the top
/// bits, and bits from 16 up: apart for tables of up to 2^24 slots).
#[inline(always)]
fn slots<const B: bool>(hook: Hook, sk: Sock<B>) -> (u32, u32) {
    // 1 to 24, from the agent.
    let bits = load(&raw const SLOT_BITS);
    let h = address(hook, sk).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mask = (1_u64 << bits) - 1;
    ((h >> (64 - bits)) as u32, ((h >> 16) & mask) as u32)
}

/// `sk`'s address as a number: the verifier allows no arithmetic on a BTF-typed pointer, nor
/// reading part of one spilled to the stack, but a word stored in a map reads back as a number.
/// The word is `hook`'s own on this CPU: see the module's doc.
#[inline(always)]
fn address<const B: bool>(hook: Hook, sk: Sock<B>) -> u64 {
    let Some(word) = WORD.get_ptr_mut(hook as u32) else {
        return 0;
    };
    // SAFETY: this CPU's word of this hook, which no other program writes.
    unsafe {
        core::ptr::write_volatile(word, sk.key());
        core::ptr::read_volatile(word)
    }
}

/// Whether `SOCKS` is empty, as `SOCKS_HELD` counts: then nothing is looked up there.
#[inline(always)]
fn overflow_empty() -> bool {
    // SAFETY: an array element, valid for this program run.
    SOCKS_HELD
        .get_ptr(0)
        .is_none_or(|n| unsafe { core::ptr::read_volatile(n) } == 0)
}

/// Adds `n` (`u64::MAX` to take one) to `SOCKS_HELD`.
#[inline(always)]
fn held_count(n: u64) {
    if let Some(p) = SOCKS_HELD.get_ptr_mut(0) {
        // SAFETY: an array element; other CPUs add too.
        unsafe { add(p, n) };
    }
}
