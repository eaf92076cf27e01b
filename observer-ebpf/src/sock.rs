//! Reads of kernel socket fields at the offsets userspace resolved from BTF.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_task, bpf_probe_read_kernel,
};
use observer_common::{
    event::{RawEvent, SockState},
    layout::ABSENT,
    tcp::{AF_INET, AF_INET6, IPPROTO_TCP},
};

use crate::off;

/// A kernel object address, usually a `struct sock *` (also a `sock_common`, `inet_sock` and `tcp_sock` for TCP sockets).
#[derive(Clone, Copy)]
pub(crate) struct Sock(pub(crate) *const u8);

impl Sock {
    /// The kernel address, used as the map key.
    #[inline(always)]
    pub(crate) fn key(self) -> u64 {
        self.0 as u64
    }

    /// Reads a `T` at `offset` bytes into the socket.
    #[inline(always)]
    #[allow(
        clippy::cast_ptr_alignment,
        reason = "bpf_probe_read_kernel copies unaligned"
    )]
    pub(crate) fn read<T>(self, offset: u32) -> Result<T, i32> {
        // SAFETY: `bpf_probe_read_kernel` checks the address; a bad one is an error, not a fault.
        unsafe { bpf_probe_read_kernel(self.0.add(offset as usize).cast::<T>()) }
    }

    /// [`Self::is_tcp`] with direct loads instead of `bpf_probe_read_kernel` (~100 ns each):
    /// only for BTF tracepoints, whose `sk` argument is a BTF-typed pointer the verifier lets a
    /// program load `struct sock` fields from (the offsets are constants from `OFFSETS`, and a
    /// faulting load reads 0 instead of faulting).
    #[inline(always)]
    #[allow(
        clippy::cast_ptr_alignment,
        reason = "kernel fields are aligned; the offsets come from BTF"
    )]
    pub(crate) fn is_tcp_btf(self) -> bool {
        if self.0.is_null() {
            return false;
        }
        // SAFETY: BTF-typed pointer; the verifier checks each load against `struct sock`.
        let (family, protocol) = unsafe {
            (
                core::ptr::read_volatile(self.0.add(off!(skc_family) as usize).cast::<u16>()),
                core::ptr::read_volatile(self.0.add(off!(sk_protocol) as usize).cast::<u16>()),
            )
        };
        (family == AF_INET || family == AF_INET6) && protocol == IPPROTO_TCP
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

    /// Addresses, ports, family and network namespace.
    #[inline(always)]
    pub(crate) fn endpoints(self) -> Result<Endpoints, i32> {
        let family: u16 = self.read(off!(skc_family))?;
        let mut e = Endpoints {
            saddr: [0; 16],
            daddr: [0; 16],
            netns: self.netns()?,
            // At `-> CLOSE` the socket is already unhashed and `skc_num` reads 0: take the
            // local port from `inet_sport`.
            sport: u16::from_be(self.read(off!(inet_sport))?),
            dport: u16::from_be(self.read(off!(skc_dport))?),
            family,
        };
        if family == AF_INET6 {
            e.saddr = self.read(off!(skc_v6_rcv_saddr))?;
            e.daddr = self.read(off!(skc_v6_daddr))?;
        } else {
            let s: [u8; 4] = self.read(off!(skc_rcv_saddr))?;
            let d: [u8; 4] = self.read(off!(skc_daddr))?;
            e.saddr[..4].copy_from_slice(&s);
            e.daddr[..4].copy_from_slice(&d);
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
        Sock(socket).read(off!(socket_inode) + off!(inode_ino))
    }

    /// Inode number of the socket's network namespace.
    #[inline(always)]
    pub(crate) fn netns(self) -> Result<u32, i32> {
        let net: *const u8 = self.read(off!(skc_net))?;
        Sock(net).read(off!(net_inum))
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
/// `java`) and the cgroup v2 id. Call only in process context.
#[inline(always)]
pub(crate) fn current_owner(pid: u32) -> (u32, [u8; 16], u64) {
    // SAFETY: no preconditions; returns the current `task_struct *`.
    let task = Sock(unsafe { bpf_get_current_task() } as *const u8);
    let comm = task
        .read::<*const u8>(off!(task_group_leader))
        .and_then(|leader| Sock(leader).read(off!(task_comm)))
        .or_else(|_| bpf_get_current_comm())
        .unwrap_or([0; 16]);
    // SAFETY: no preconditions; returns the cgroup v2 id of the current task.
    (pid, comm, unsafe { bpf_get_current_cgroup_id() })
}

/// Records the current task as the owner of `st` ([`current_owner`]).
#[inline(always)]
pub(crate) fn set_owner(st: &mut SockState, pid: u32) {
    (st.pid, st.comm, st.cgroup_id) = current_owner(pid);
}
