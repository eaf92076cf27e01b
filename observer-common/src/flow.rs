//! Connection counts aggregated in the kernel: one [`FlowStats`] per [`FlowKey`] (owner, peer,
//! role) in the `FLOWS` map, so a storm of short connections costs a few map updates per
//! connection and no event. Userspace reads and folds the map periodically. The map is keyed
//! by the key's 64-bit [`FlowKey::id`], the key itself kept in the value ([`FlowEntry`]): the
//! kernel hashes and compares 8 bytes instead of 48 on each of the six lookups a connection
//! makes.
//!
//! Also the owners the programs remember for later attribution: listening sockets
//! ([`ListenKey`] -> [`Owner`]) for the connections they accept, and sockets that closed
//! first ([`TupleKey`] -> [`Owner`]) for the TIME_WAIT sockets userspace lists.
//!
//! ABI as in [`crate::event`]: explicit padding, sizes asserted.

/// Buckets of [`FlowStats::lifetime`]: bucket 0 holds lifetimes under 1 ms, bucket `i` in
/// `1..LIFETIME_BUCKETS - 1` those in `[2^(i-1), 2^i)` ms, the last one everything from
/// `2^(LIFETIME_BUCKETS - 2)` ms (about 70 minutes) up.
pub const LIFETIME_BUCKETS: usize = 24;

/// Which connections one [`FlowStats`] counts (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// cgroup v2 id of the owner when the connection was established (0 when unknown).
    pub cgroup_id: u64,
    /// Owner's `comm` then, NUL-padded (empty when unknown).
    pub comm: [u8; 16],
    /// Peer address, network byte order (IPv4 in the first 4 bytes).
    pub peer: [u8; 16],
    /// Network namespace inode.
    pub netns: u32,
    /// Peer port for a client; 0 for a server, whose peers' ports are ephemeral.
    pub peer_port: u16,
    /// `AF_INET` or `AF_INET6` (as `u8`); 0 in [`FlowKey::OTHER`].
    pub family: u8,
    /// [`crate::event::Role`] as `u8`.
    pub role: u8,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);

impl FlowKey {
    /// Where the programs count connections when `FLOWS` is full (or, vanishingly rarely,
    /// when two keys share an id): inserted by userspace before the programs are attached,
    /// never deleted.
    pub const OTHER: Self = Self {
        cgroup_id: 0,
        comm: [0; 16],
        peer: [0; 16],
        netns: 0,
        peer_port: 0,
        family: 0,
        role: u8::MAX,
    };

    /// The id of [`Self::OTHER`].
    pub const OTHER_ID: u64 = Self::OTHER.id();

    /// The key as six words, for hashing and comparing without a byte loop (no padding: every
    /// byte is a field's).
    #[inline]
    #[must_use]
    pub const fn words(&self) -> [u64; 6] {
        // SAFETY: 48 bytes of plain integers, no padding, into 48 bytes of plain integers.
        unsafe { core::mem::transmute::<Self, [u64; 6]>(*self) }
    }

    /// The `FLOWS` key of this key: a 64-bit multiply-xorshift hash of its words. Two keys
    /// sharing an id is a 1-in-2^64 chance per pair; the programs check the key kept in the
    /// entry when they create or first find it, and count a clash under [`Self::OTHER`].
    #[inline]
    #[must_use]
    pub const fn id(&self) -> u64 {
        let w = self.words();
        let mut h: u64 = 0x243f_6a88_85a3_08d3;
        let mut i = 0;
        while i < w.len() {
            h = (h ^ w[i]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 32;
            i += 1;
        }
        h
    }

    /// Whether `self` and `other` are the same key, word by word.
    #[inline]
    #[must_use]
    pub const fn same(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// A `FLOWS` value: the counts and the key they are for (280 bytes). The map's key is
/// [`FlowKey::id`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// The counts.
    pub stats: FlowStats,
    /// The key whose id the entry is stored under: written once, before the entry is
    /// inserted, and read at each open; after the counts, so the lines the programs write
    /// leave it alone.
    pub key: FlowKey,
}
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 280);

impl FlowEntry {
    /// A new entry for `key`, all counts zero.
    #[must_use]
    pub const fn new(key: FlowKey) -> Self {
        Self {
            stats: FlowStats::ZERO,
            key,
        }
    }
}

/// Counts for one [`FlowKey`] since its entry was created (232 bytes). The programs add with
/// atomic instructions; userspace reads deltas and deletes entries with nothing open.
///
/// Every CPU writes these counts, so the cache lines under them move between CPUs: the five
/// each connection touches come first, to share a line, and the lifetime buckets (one per
/// close) after them, away from the [`FlowEntry::key`] the programs read at each open.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowStats {
    /// Connections that reached ESTABLISHED.
    pub opened: u64,
    /// Of the opened connections, those that left ESTABLISHED (a FIN sent or received, or an
    /// abort): `opened - left` is what `ss state established` counts.
    pub left: u64,
    /// Of the opened connections, those that reached CLOSE.
    pub closed: u64,
    /// Sum of the closed connections' lifetimes, in milliseconds.
    pub lifetime_ms_sum: u64,
    /// Thread-group id of the last owner that opened one (0 when unknown).
    pub pid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Closed connections by lifetime ([`lifetime_bucket`]).
    pub lifetime: [u64; LIFETIME_BUCKETS],
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 232);

impl FlowStats {
    /// All zero.
    pub const ZERO: Self = Self {
        opened: 0,
        left: 0,
        closed: 0,
        lifetime_ms_sum: 0,
        pid: 0,
        _pad: 0,
        lifetime: [0; LIFETIME_BUCKETS],
    };
}

/// Upper bound of bucket `i` of [`FlowStats::lifetime`] in milliseconds (`None` for the last,
/// unbounded one).
pub const fn lifetime_bucket_le_ms(i: usize) -> Option<u64> {
    if i + 1 >= LIFETIME_BUCKETS {
        None
    } else {
        Some(1 << i)
    }
}

/// The bucket of a lifetime of `ms` milliseconds: the number of significant bits of `ms`,
/// capped at the last bucket. Branches only (eBPF has no count-leading-zeros instruction).
#[inline]
pub const fn lifetime_bucket(ms: u64) -> usize {
    if ms >= 1 << (LIFETIME_BUCKETS - 2) {
        return LIFETIME_BUCKETS - 1;
    }
    let mut v = ms;
    let mut bits = 0;
    if v >= 1 << 16 {
        v >>= 16;
        bits += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        bits += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        bits += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        bits += 2;
    }
    if v >= 1 << 1 {
        v >>= 1;
        bits += 1;
    }
    bits + v as usize
}

/// A listening socket: network namespace and local port (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenKey {
    /// Network namespace inode.
    pub netns: u32,
    /// Local port, host byte order.
    pub port: u16,
    /// Explicit padding.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ListenKey>() == 8);

/// Both ends of a connection in one namespace (40 bytes): the key userspace rebuilds from a
/// `sock_diag` answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TupleKey {
    /// Local address, network byte order (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    /// Peer address, network byte order.
    pub daddr: [u8; 16],
    /// Network namespace inode.
    pub netns: u32,
    /// Local port, host byte order.
    pub sport: u16,
    /// Peer port, host byte order.
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<TupleKey>() == 40);

/// A process that owned a socket, recorded in its own context (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// `comm` of the thread-group leader, NUL-padded.
    pub comm: [u8; 16],
    /// Thread-group id.
    pub pid: u32,
    /// [`crate::event::Role`] of the socket as `u8` (`Unknown` for a listener).
    pub role: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Owner>() == 32);

/// The first closer of one socket, recorded as it is handed over to TIME_WAIT (40 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Closer {
    /// Who closed first.
    pub owner: Owner,
    /// CLOCK_MONOTONIC time of the hand-over: userspace deletes an entry whose socket a
    /// listing begun after it no longer shows in TIME_WAIT.
    pub closed_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Closer>() == 40);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Role;

    #[test]
    fn every_field_moves_the_id() {
        let key = FlowKey {
            cgroup_id: 4242,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            peer: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            netns: 4_026_531_840,
            peer_port: 8080,
            family: 2,
            role: Role::Client as u8,
        };
        let mut comm = key;
        comm.comm[15] = b'x';
        let mut peer = key;
        peer.peer[3] = 2;
        let others = [
            FlowKey {
                cgroup_id: 4243,
                ..key
            },
            comm,
            peer,
            FlowKey { netns: 1, ..key },
            FlowKey {
                peer_port: 8081,
                ..key
            },
            FlowKey { family: 10, ..key },
            FlowKey {
                role: Role::Server as u8,
                ..key
            },
            FlowKey::OTHER,
        ];
        assert_eq!(key.id(), { key }.id());
        assert!(key.same(&{ key }));
        for other in others {
            assert_ne!(key.id(), other.id(), "{other:?}");
            assert!(!key.same(&other) && other.same(&other));
        }
        assert_eq!(FlowKey::OTHER_ID, FlowKey::OTHER.id());
        assert_eq!(FlowEntry::new(key).key, key);
    }

    #[test]
    fn buckets_double_from_one_millisecond() {
        assert_eq!(lifetime_bucket(0), 0);
        assert_eq!(lifetime_bucket(1), 1);
        assert_eq!(lifetime_bucket(2), 2);
        assert_eq!(lifetime_bucket(3), 2);
        assert_eq!(lifetime_bucket(4), 3);
        assert_eq!(lifetime_bucket(1023), 10);
        assert_eq!(lifetime_bucket(1024), 11);
        assert_eq!(lifetime_bucket((1 << 22) - 1), 22);
        assert_eq!(lifetime_bucket(1 << 22), 23);
        assert_eq!(lifetime_bucket(u64::MAX), 23);
        // Every lifetime is at most its bucket's bound and above the previous one's.
        for ms in [0u64, 1, 5, 999, 1000, 60_000, 3_600_000] {
            let i = lifetime_bucket(ms);
            assert!(lifetime_bucket_le_ms(i).is_none_or(|le| ms < le), "{ms}");
            assert!(i == 0 || lifetime_bucket_le_ms(i - 1).is_some_and(|le| ms >= le));
        }
        assert_eq!(lifetime_bucket_le_ms(22), Some(1 << 22));
        assert_eq!(lifetime_bucket_le_ms(23), None);
    }
}
