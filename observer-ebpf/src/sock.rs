//! Reads of kernel socket fields at the offsets userspace resolved from BTF.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_task, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel,
    generated::bpf_skc_to_tcp_sock,
};
use observer_common::{
    event::{RawEvent, SockState},
    layout::ABSENT,
    tcp::{AF_INET, AF_INET6, IPPROTO_TCP},
};

use crate::{maps::NETNS_SEEN, off};

/// A `struct sock *` (also a `sock_common`, `inet_sock` and `tcp_sock` for TCP sockets).
///
/// `BTF` says how its fields are read. `true` for BTF tracepoints, whose `sk` argument is a
/// BTF-typed pointer: plain loads, which the verifier checks against the kernel's types (the
/// offsets are constants from the read-only `OFFSETS`) and which read 0 instead of faulting;
/// fields past `struct sock` are loaded from the `tcp_sock` that `bpf_skc_to_tcp_sock` returns.
/// `false` elsewhere: `bpf_probe_read_kernel`, a helper call per field (its cost is in
/// `docs/performance.md`).
#[derive(Clone, Copy)]
pub(crate) struct Sock<const BTF: bool>(pub(crate) *const u8);

/// `bpf_probe_read_kernel` of a `T` at `at`.
#[inline(always)]
#[allow(
    clippy::cast_ptr_alignment,
    reason = "bpf_probe_read_kernel copies unaligned"
)]
fn probe<T>(at: *const u8) -> Result<T, i32> {
    // SAFETY: `bpf_probe_read_kernel` checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel(at.cast::<T>()) }
}

/// A plain load of a `T` at `at`, from a BTF-typed pointer.
#[inline(always)]
#[allow(
    clippy::cast_ptr_alignment,
    reason = "kernel fields are aligned; the offsets come from BTF"
)]
fn load<T>(at: *const u8) -> T {
    // SAFETY: only called on BTF-typed pointers plus a field offset from BTF; the verifier
    // checks the access against the type, and a faulting load reads 0.
    unsafe { core::ptr::read_volatile(at.cast::<T>()) }
}

/// 16 bytes at `at` from a BTF-typed pointer, as two 8-byte loads: an aggregate volatile load
/// would go through the stack.
#[inline(always)]
fn load16(at: *const u8) -> [u8; 16] {
    // SAFETY: pointer arithmetic only; the loads are as in `load`.
    let (lo, hi): (u64, u64) = (load(at), load(unsafe { at.add(8) }));
    let mut out = [0; 16];
    out[..8].copy_from_slice(&lo.to_ne_bytes());
    out[8..].copy_from_slice(&hi.to_ne_bytes());
    out
}

impl<const BTF: bool> Sock<BTF> {
    /// The kernel address, used as the map key.
    #[inline(always)]
    pub(crate) fn key(self) -> u64 {
        self.0 as u64
    }

    /// Reads a `T` at `offset` bytes into `struct sock` (or its `sock_common`).
    #[inline(always)]
    pub(crate) fn read<T>(self, offset: u32) -> Result<T, i32> {
        // SAFETY: pointer arithmetic only; the read is checked.
        let at = unsafe { self.0.add(offset as usize) };
        if BTF { Ok(load(at)) } else { probe(at) }
    }

    /// Reads an IPv6 address (16 bytes) at `offset` bytes into `struct sock`.
    #[inline(always)]
    pub(crate) fn read_addr6(self, offset: u32) -> Result<[u8; 16], i32> {
        if BTF {
            // SAFETY: pointer arithmetic only.
            Ok(load16(unsafe { self.0.add(offset as usize) }))
        } else {
            self.read(offset)
        }
    }

    /// Reads an IPv4 address (4 bytes) at `offset` bytes into `struct sock`, as one load.
    #[inline(always)]
    pub(crate) fn read_addr4(self, offset: u32) -> Result<[u8; 4], i32> {
        let v: u32 = self.read(offset)?;
        Ok(v.to_ne_bytes())
    }

    /// The socket as a `struct tcp_sock`, for the fields past `struct sock` (`inet_sock`'s
    /// included). BTF programs get a BTF-typed pointer from `bpf_skc_to_tcp_sock` (a helper
    /// call: take it once where several fields are read); others read at the same address.
    #[inline(always)]
    pub(crate) fn tcp(self) -> Result<Tcp<BTF>, i32> {
        if BTF {
            btf_tcp_sock(self.0).map(Tcp).ok_or(-1)
        } else {
            Ok(Tcp(self.0))
        }
    }

    /// Reads one `T` at `offset` bytes into `struct tcp_sock` (see [`Self::tcp`]).
    #[inline(always)]
    pub(crate) fn read_tcp<T>(self, offset: u32) -> Result<T, i32> {
        self.tcp()?.read(offset)
    }

    /// [`Tcp::refreshed_now_ns`], or the clock if the socket is not a `tcp_sock`.
    #[inline(always)]
    pub(crate) fn refreshed_now_ns(self) -> u64 {
        match self.tcp() {
            Ok(tcp) => tcp.refreshed_now_ns(),
            // SAFETY: no preconditions.
            Err(_) => unsafe { bpf_ktime_get_ns() },
        }
    }

    /// The TCP state (`sock_common.skc_state`, a `tcp::` constant).
    #[inline(always)]
    pub(crate) fn state(self) -> Result<i32, i32> {
        self.read::<u8>(off!(skc_state)).map(i32::from)
    }

    /// Whether this is an IPv4 or IPv6 TCP socket; every hook filters on it first.
    #[inline(always)]
    pub(crate) fn is_tcp(self) -> Result<bool, i32> {
        if self.0.is_null() {
            return Ok(false);
        }
        let family: u16 = self.read(off!(skc_family))?;
        if family != AF_INET && family != AF_INET6 {
            return Ok(false);
        }
        let protocol: u16 = self.read(off!(sk_protocol))?;
        Ok(protocol == IPPROTO_TCP)
    }

    /// Addresses, ports, family and network namespace; `tcp` is this socket's [`Self::tcp`],
    /// which callers have at hand already.
    #[inline(always)]
    pub(crate) fn endpoints(self, tcp: Tcp<BTF>) -> Result<Endpoints, i32> {
        let family: u16 = self.read(off!(skc_family))?;
        let mut e = Endpoints {
            saddr: [0; 16],
            daddr: [0; 16],
            netns: self.netns()?,
            // At `-> CLOSE` the socket is already unhashed and `skc_num` reads 0: take the
            // local port from `inet_sport`.
            sport: u16::from_be(tcp.read(off!(inet_sport))?),
            dport: u16::from_be(self.read(off!(skc_dport))?),
            family,
        };
        if family == AF_INET6 {
            e.saddr = self.read_addr6(off!(skc_v6_rcv_saddr))?;
            e.daddr = self.read_addr6(off!(skc_v6_daddr))?;
        } else {
            e.saddr[..4].copy_from_slice(&self.read_addr4(off!(skc_rcv_saddr))?);
            e.daddr[..4].copy_from_slice(&self.read_addr4(off!(skc_daddr))?);
        }
        Ok(e)
    }

    /// Inode number of the socket's file, 0 when it has none yet (not accepted).
    #[inline(always)]
    pub(crate) fn inode(self) -> Result<u64, i32> {
        let socket: *const u8 = self.read(off!(sk_socket))?;
        if socket.is_null() {
            return Ok(0);
        }
        // The inode follows `struct socket` in `struct socket_alloc`: past the BTF type, so
        // read with the probe helper whatever the program type.
        // SAFETY: pointer arithmetic only; the read is checked.
        probe(unsafe { socket.add((off!(socket_inode) + off!(inode_ino)) as usize) })
    }

    /// Inode number of the socket's network namespace. The inode number shares a cache line
    /// with the namespace's reference count, which every socket's creation and release
    /// writes: on a busy node the line keeps moving between CPUs, and that one load was a
    /// seventh of the state program's own time in a connection storm. So each CPU remembers
    /// the namespace it last read ([`NETNS_SEEN`]), known by its cookie (read-mostly, far
    /// from the count; unique per namespace, the low 32 bits until 2^32 namespaces have been
    /// created). Without BTF or a cookie, the inode number is read every time.
    #[inline(always)]
    pub(crate) fn netns(self) -> Result<u32, i32> {
        let net: *const u8 = self.read(off!(skc_net))?;
        let cookie_at = off!(net_cookie);
        if BTF
            && cookie_at != ABSENT
            && let Some(seen) = NETNS_SEEN.get_ptr_mut(0)
        {
            // SAFETY: pointer arithmetic only; `net` is a BTF `struct net *`, the loads are
            // checked; `seen` is this CPU's slot, one aligned word.
            unsafe {
                let cookie = u64::from(load::<u64>(net.add(cookie_at as usize)) as u32);
                let known = core::ptr::read_volatile(seen);
                if known != 0 && known >> 32 == cookie {
                    return Ok(known as u32);
                }
                let inum: u32 = load(net.add(off!(net_inum) as usize));
                core::ptr::write_volatile(seen, cookie << 32 | u64::from(inum));
                return Ok(inum);
            }
        }
        // SAFETY: pointer arithmetic only; `net` is a BTF `struct net *` when `BTF`.
        let at = unsafe { net.add(off!(net_inum) as usize) };
        if BTF { Ok(load(at)) } else { probe(at) }
    }
}

impl Sock<true> {
    /// A BTF-typed `struct sock_common *` (an iterator's) as a full TCP socket, typed
    /// `struct tcp_sock` to the end, and its [`Tcp`]; `None` for TIME_WAIT and request sockets.
    #[inline(always)]
    pub(crate) fn full_tcp(skc: *const u8) -> Option<(Self, Tcp<true>)> {
        // The `tcp_sock` begins with its `struct sock`: the same address.
        btf_tcp_sock(skc).map(|tp| (Self(tp), Tcp(tp)))
    }
}

/// `bpf_skc_to_tcp_sock` of a BTF-typed socket pointer: `None` unless a full TCP socket.
#[inline(always)]
fn btf_tcp_sock(sk: *const u8) -> Option<*const u8> {
    // SAFETY: a BTF `sock_common *` (or a type that begins with one), the helper's argument.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast_mut().cast()) }.cast::<u8>();
    (!tp.is_null()).then_some(tp.cast_const())
}

/// A TCP socket as a `struct tcp_sock *` ([`Sock::tcp`]).
#[derive(Clone, Copy)]
pub(crate) struct Tcp<const BTF: bool>(*const u8);

impl<const BTF: bool> Tcp<BTF> {
    /// Reads a `T` at `offset` bytes into `struct tcp_sock`.
    #[inline(always)]
    pub(crate) fn read<T>(self, offset: u32) -> Result<T, i32> {
        // SAFETY: pointer arithmetic only; the read is checked (or, BTF-typed, verified).
        let at = unsafe { self.0.add(offset as usize) };
        if BTF { Ok(load(at)) } else { probe(at) }
    }

    /// Now, in `bpf_ktime_get_ns` nanoseconds, from the socket's own TCP clock where the stack
    /// has just refreshed it: `tcp_sock.tcp_mstamp` holds microseconds of the same clock and is
    /// refreshed before an incoming segment is processed (`tcp_rcv_state_process`,
    /// `tcp_rcv_established`), by the retransmit timer, and after data is copied to the reader
    /// (`tcp_rcv_space_adjust`). Call it only there: elsewhere it may be as old as the last
    /// segment. A load instead of a clock read (`docs/performance.md` has both costs); the
    /// clock where the field is absent or the pointer is not BTF-typed.
    #[inline(always)]
    pub(crate) fn refreshed_now_ns(self) -> u64 {
        let at = off!(tcp_mstamp);
        if BTF
            && at != ABSENT
            && let Ok(us) = self.read::<u64>(at)
            && us != 0
        {
            return us * 1000;
        }
        // SAFETY: no preconditions.
        unsafe { bpf_ktime_get_ns() }
    }

    /// `tcp_sock.bytes_received` and `tcp_sock.bytes_sent` (or `UNKNOWN_BYTES`).
    #[inline(always)]
    pub(crate) fn byte_counts(self) -> Result<(u64, u64), i32> {
        let received: u64 = self.read(off!(tcp_bytes_received))?;
        let sent_off = off!(tcp_bytes_sent);
        let sent = if sent_off == ABSENT {
            observer_common::event::UNKNOWN_BYTES
        } else {
            self.read(sent_off)?
        };
        Ok((received, sent))
    }
}

/// Both ends of a connection, as the events carry them.
pub(crate) struct Endpoints {
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
    pub(crate) netns: u32,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) family: u16,
}

impl Endpoints {
    /// Copies the endpoints into an event.
    #[inline(always)]
    pub(crate) fn fill_event(&self, ev: &mut RawEvent) {
        ev.saddr = self.saddr;
        ev.daddr = self.daddr;
        ev.netns = self.netns;
        ev.sport = self.sport;
        ev.dport = self.dport;
        ev.family = self.family;
    }
}

/// The current task's thread-group id.
#[inline(always)]
pub(crate) fn current_pid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The current task as an owner: thread-group id `pid`, the process's `comm` (the
/// thread-group leader's, not the thread's: a worker thread named `pool-3-thread-7` belongs to
/// `java`) and the cgroup v2 id. Call only in process context. `BTF` programs load the task's
/// fields through `bpf_get_current_task_btf` (5.11); others read them with the probe helper.
#[inline(always)]
pub(crate) fn current_owner<const BTF: bool>(pid: u32) -> (u32, [u8; 16], u64) {
    let comm = if BTF {
        // SAFETY: no preconditions; a BTF-typed `task_struct *`, so plain loads are checked.
        let task = unsafe { bpf_get_current_task_btf() }
            .cast_const()
            .cast::<u8>();
        // SAFETY: pointer arithmetic only; offsets from BTF, loads checked by the verifier.
        unsafe {
            let leader: *const u8 = load(task.add(off!(task_group_leader) as usize));
            load16(leader.add(off!(task_comm) as usize))
        }
    } else {
        // SAFETY: no preconditions; returns the current `task_struct *` (not BTF-typed).
        let task = unsafe { bpf_get_current_task() } as *const u8;
        // SAFETY: pointer arithmetic only; the reads are checked.
        probe::<*const u8>(unsafe { task.add(off!(task_group_leader) as usize) })
            .and_then(|leader| probe(unsafe { leader.add(off!(task_comm) as usize) }))
            .or_else(|_| bpf_get_current_comm())
            .unwrap_or([0; 16])
    };
    // SAFETY: no preconditions; returns the cgroup v2 id of the current task.
    (pid, comm, unsafe { bpf_get_current_cgroup_id() })
}

/// Records the current task as the owner of `st` ([`current_owner`]).
#[inline(always)]
pub(crate) fn set_owner<const BTF: bool>(st: &mut SockState, pid: u32) {
    (st.pid, st.comm, st.cgroup_id) = current_owner::<BTF>(pid);
}
