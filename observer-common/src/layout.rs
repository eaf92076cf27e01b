//! [`Offsets`]: where each kernel field the programs read lives on the running kernel.
//!
//! aya has no CO-RE field relocations for Rust programs, so userspace resolves every field from
//! BTF (and every classic tracepoint field from tracefs) at start-up and passes the result in the
//! `OFFSETS` global. The programs then read `base + offset` with `bpf_probe_read_kernel`.

#[cfg(feature = "user")]
mod user;

/// Marks a field the running kernel does not have.
pub const ABSENT: u32 = u32::MAX;

/// Byte offsets of kernel fields and tracepoint record fields, plus a few resolved constants.
///
/// Every member is a `u32` so the layout has no padding; sizes are checked by userspace when it
/// resolves them (a `u8` field must be one byte and not a bitfield, and so on).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `sock_common.skc_family` (u16).
    pub skc_family: u32,
    /// `sock_common.skc_dport` (__be16).
    pub skc_dport: u32,
    /// `sock_common.skc_daddr` (__be32).
    pub skc_daddr: u32,
    /// `sock_common.skc_rcv_saddr` (__be32).
    pub skc_rcv_saddr: u32,
    /// `sock_common.skc_v6_daddr` (16 bytes).
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr` (16 bytes).
    pub skc_v6_rcv_saddr: u32,
    /// `sock_common.skc_net` (a pointer to `struct net`).
    pub skc_net: u32,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `sock.sk_shutdown` (u8).
    pub sk_shutdown: u32,
    /// `sock.sk_err` (int).
    pub sk_err: u32,
    /// `sock_common.skc_flags` (unsigned long; `sk_flags` is a macro for it).
    pub sk_flags: u32,
    /// `sock.sk_lingertime` (unsigned long).
    pub sk_lingertime: u32,
    /// `inet_sock.inet_sport` (__be16).
    pub inet_sport: u32,
    /// `tcp_sock.rcv_nxt` (u32).
    pub tcp_rcv_nxt: u32,
    /// `tcp_sock.copied_seq` (u32).
    pub tcp_copied_seq: u32,
    /// `tcp_sock.bytes_received` (u64).
    pub tcp_bytes_received: u32,
    /// `tcp_sock.bytes_sent` (u64), or [`ABSENT`].
    pub tcp_bytes_sent: u32,
    /// `tcp_sock.tcp_mstamp` (u64, microseconds of `ktime_get_ns`), or [`ABSENT`].
    pub tcp_mstamp: u32,
    /// `net.ns.inum` (unsigned int).
    pub net_inum: u32,
    /// `net.net_cookie` (u64, 5.7+), or [`ABSENT`].
    pub net_cookie: u32,
    /// Bit number of `SOCK_DEAD` in `enum sock_flags`.
    pub flag_dead: u32,
    /// Bit number of `SOCK_DONE`.
    pub flag_done: u32,
    /// Bit number of `SOCK_LINGER`.
    pub flag_linger: u32,
    /// Whether the BTF tracepoint `tcp_send_reset` has a third argument, the reason (1) or not (0).
    pub btf_reset_has_reason: u32,
    /// `sock_common.skc_state` (u8).
    pub skc_state: u32,
    /// `sock.sk_socket` (a pointer to `struct socket`).
    pub sk_socket: u32,
    /// `socket_alloc.vfs_inode` minus `socket_alloc.socket`: from a `struct socket *` to its inode.
    pub socket_inode: u32,
    /// `inode.i_ino` (unsigned long).
    pub inode_ino: u32,
    /// `task_struct.group_leader` (a pointer).
    pub task_group_leader: u32,
    /// `task_struct.comm` (16 bytes).
    pub task_comm: u32,
    /// Classic tracepoint `sock/inet_sock_set_state`: `skaddr`.
    pub tp_state_skaddr: u32,
    /// `sock/inet_sock_set_state`: `oldstate`.
    pub tp_state_oldstate: u32,
    /// `sock/inet_sock_set_state`: `newstate`.
    pub tp_state_newstate: u32,
    /// `tcp/tcp_send_reset`: `skbaddr`.
    pub tp_reset_skbaddr: u32,
    /// `tcp/tcp_send_reset`: `skaddr`.
    pub tp_reset_skaddr: u32,
    /// `tcp/tcp_send_reset`: `reason`, or [`ABSENT`] before 6.10.
    pub tp_reset_reason: u32,
    /// `sock/sock_recv_length`: `sk`.
    pub tp_recv_sk: u32,
    /// `sock/sock_recv_length`: `ret`.
    pub tp_recv_ret: u32,
    /// `sock/sock_recv_length`: `flags`.
    pub tp_recv_flags: u32,
    /// Parameters of the kernel function `tcp_recvmsg` when they are `(sk, ..., flags,
    /// addr_len)`, 5 (5.19+) or 6 (before, with `nonblock`): the fexit program reads `flags`
    /// at 2 below this and the return value at this index. [`ABSENT`] otherwise.
    pub fexit_recv_args: u32,
    /// `tcp_sock.write_seq` (u32).
    pub tcp_write_seq: u32,
    /// `tcp_sock.snd_una` (u32).
    pub tcp_snd_una: u32,
    /// Classic tracepoint `tcp/tcp_receive_reset`: `skaddr`.
    pub tp_rcv_reset_skaddr: u32,
}
const _: () = assert!(core::mem::size_of::<Offsets>() == 43 * 4);
