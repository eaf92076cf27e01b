//! TCP sockets as the kernel lists them through netlink `sock_diag` (what `ss` uses,
//! <https://man7.org/linux/man-pages/man7/sock_diag.7.html>), in every network namespace a
//! task on this host is in: CLOSE_WAIT sockets at start-up (`close_wait`), TIME_WAIT sockets
//! and ephemeral ports every scan (`pool`).
//!
//! `sock_diag` answers for the caller's network namespace only, so each namespace is entered
//! with `setns(2)` on a short-lived thread of its own; the agent's threads stay where they are.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::Path,
    sync::Arc,
    time::Duration,
};

use observer_common::tcp::{AF_INET, AF_INET6, CLOSE_WAIT, IPPROTO_TCP};

use crate::events::decode::thread_cpu_ns;

/// A connection as `sock_diag` and events both name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    /// Network namespace inode.
    pub netns: u32,
    /// Local end.
    pub local: SocketAddr,
    /// Peer end.
    pub peer: SocketAddr,
}

/// One socket `sock_diag` reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// Namespace and both ends.
    pub tuple: Tuple,
    /// TCP state (`observer_common::tcp`); a TIME_WAIT socket reports its sub-state.
    pub state: u8,
    /// `AF_INET` or `AF_INET6` (an IPv4-mapped IPv6 socket shows IPv4 addresses).
    pub family: u16,
    /// Inode of the socket's file (0 when not yet accepted).
    pub inode: u64,
    /// Bytes queued for reading, the FIN counted (`ss`'s Recv-Q).
    pub rqueue: u32,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid (48), expires, rqueue,
/// wqueue, uid, inode.
const DIAG_MSG: usize = 72;

/// Network namespaces by inode, each held open so it can be entered however long the listing
/// takes.
pub type Namespaces = BTreeMap<u32, Arc<File>>;

/// Every network namespace some task is in, and those `ip netns` keeps under `/run/netns`,
/// opened as they are found: a namespace is entered through the first task still there when
/// the walk reaches it, and stays enterable after that task exits (a short-lived process
/// listed before a namespace's long-lived one, as after the pid counter wraps, would
/// otherwise make the namespace vanish from a listing). A namespace only its sockets hold
/// (its last task gone, the sockets' owners elsewhere) cannot be entered.
pub fn namespaces() -> Namespaces {
    let mut found = BTreeMap::new();
    let mut add = |path: &Path| {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if let std::collections::btree_map::Entry::Vacant(v) = found.entry(meta.ino() as u32)
            && let Ok(ns) = File::open(path)
            // The task may have moved or gone between the two calls.
            && ns.metadata().is_ok_and(|m| m.ino() == meta.ino())
        {
            v.insert(Arc::new(ns));
        }
    };
    if let Ok(named) = std::fs::read_dir("/run/netns") {
        for n in named.flatten() {
            add(&n.path());
        }
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            add(&t.path().join("ns/net"));
        }
    }
    found
}

/// Runs `f` in each namespace of `namespaces` (its inode as argument), one thread at a time.
/// Returns the answers of the namespaces it could enter and list.
pub fn in_each<T: Send>(
    namespaces: &Namespaces,
    f: impl Fn(u32) -> io::Result<T> + Sync,
) -> Vec<(u32, T)> {
    visit_each(namespaces, f).answers
}

/// What [`visit_each`] found.
pub struct Visits<T> {
    /// The answers of the namespaces it could enter and list, by inode.
    pub answers: Vec<(u32, T)>,
    /// Namespaces it could not enter or list.
    pub failed: u64,
    /// CPU time its threads used (for `sock_diag`, mostly the kernel walking socket tables).
    pub cpu: Duration,
}

/// [`in_each`], also counting the namespaces that failed and the CPU time spent in them.
pub fn visit_each<T: Send>(
    namespaces: &Namespaces,
    f: impl Fn(u32) -> io::Result<T> + Sync,
) -> Visits<T> {
    let mut out = Visits {
        answers: Vec::new(),
        failed: 0,
        cpu: Duration::ZERO,
    };
    for (&ino, ns) in namespaces {
        let res = std::thread::scope(|s| {
            s.spawn(|| {
                let res = crate::sys::enter_netns(ns.as_fd()).and_then(|()| f(ino));
                (res, Duration::from_nanos(thread_cpu_ns()))
            })
            .join()
        });
        let Ok((res, cpu)) = res else {
            out.failed += 1;
            tracing::warn!(netns = ino, "namespace thread panicked");
            continue;
        };
        out.cpu += cpu;
        if let Err(e) = res.map(|found| out.answers.push((ino, found))) {
            out.failed += 1;
            tracing::debug!(netns = ino, error = %e, "namespace visit failed");
        }
    }
    out
}

/// CLOSE_WAIT sockets of every namespace in `namespaces`. Returns the namespaces that were
/// dumped and the sockets.
pub fn close_wait_everywhere(namespaces: &Namespaces) -> (Vec<u32>, Vec<DiagSocket>) {
    let mut dumped = Vec::new();
    let mut sockets = Vec::new();
    for (ino, found) in in_each(namespaces, close_wait_here) {
        dumped.push(ino);
        sockets.extend(found);
    }
    (dumped, sockets)
}

/// CLOSE_WAIT sockets of the calling thread's namespace (`netns` is its inode).
pub fn close_wait_here(netns: u32) -> io::Result<Vec<DiagSocket>> {
    here(netns, 1 << CLOSE_WAIT)
}

/// TCP sockets of both families in the states of the bit mask `states` (`1 << state`), in the
/// calling thread's namespace (`netns` is its inode).
pub fn here(netns: u32, states: u32) -> io::Result<Vec<DiagSocket>> {
    let mut all = Vec::new();
    visit(netns, states, &mut |s| all.push(s))?;
    Ok(all)
}

/// Hands each TCP socket of both families in `states` to `f`, as the kernel answers, without
/// keeping them: a namespace with 100,000 sockets costs one netlink buffer, not a list.
pub fn visit(netns: u32, states: u32, f: &mut impl FnMut(DiagSocket)) -> io::Result<()> {
    dump(AF_INET, states, netns, f)?;
    dump(AF_INET6, states, netns, f)
}

fn dump(family: u16, states: u32, netns: u32, f: &mut impl FnMut(DiagSocket)) -> io::Result<()> {
    let sock = crate::sys::netlink_socket(NETLINK_SOCK_DIAG)?;
    crate::sys::send(sock.as_fd(), &request(family, states))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = crate::sys::recv(sock.as_fd(), &mut buf)?;
        if parse(&buf[..n], netns, f)? {
            return Ok(());
        }
    }
}

/// `nlmsghdr` + `inet_diag_req_v2` asking for every TCP socket of `family` in `states`.
fn request(family: u16, states: u32) -> Vec<u8> {
    let len = NLMSG_HDR + 56;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // seq
    b.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    b.push(family as u8);
    b.push(IPPROTO_TCP as u8);
    b.push(0); // idiag_ext: no extensions
    b.push(0); // pad
    b.extend_from_slice(&states.to_ne_bytes());
    b.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: any
    b
}

/// Parses one datagram of `sock_diag` replies, handing each socket to `f` (as found in the
/// namespace `netns`); true once the dump is complete. Malformed input is an error, never a
/// panic.
pub fn parse(mut b: &[u8], netns: u32, f: &mut impl FnMut(DiagSocket)) -> io::Result<bool> {
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDR || len > b.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = if len >= NLMSG_HDR + 4 {
                    u32_at(b, NLMSG_HDR) as i32
                } else {
                    0
                };
                // The kernel sends -errno; a forged i32::MIN must not overflow the negation.
                return Err(io::Error::from_raw_os_error(errno.saturating_neg()));
            }
            SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDR + DIAG_MSG => {
                f(diag_msg(&b[NLMSG_HDR..NLMSG_HDR + DIAG_MSG], netns));
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or_default();
    }
    Ok(false)
}

fn diag_msg(m: &[u8], netns: u32) -> DiagSocket {
    let u32_at = |at: usize| u32::from_ne_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]]);
    let family = u16::from(m[0]);
    // inet_diag_sockid at 4: sport, dport (big-endian), src[4], dst[4] (network order), if, cookie.
    let sport = u16::from_be_bytes([m[4], m[5]]);
    let dport = u16::from_be_bytes([m[6], m[7]]);
    let ip = |at: usize| -> IpAddr {
        if family == AF_INET6 {
            let mut o = [0u8; 16];
            o.copy_from_slice(&m[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(o)).to_canonical()
        } else {
            IpAddr::V4(Ipv4Addr::new(m[at], m[at + 1], m[at + 2], m[at + 3]))
        }
    };
    DiagSocket {
        state: m[1],
        family,
        tuple: Tuple {
            netns,
            local: SocketAddr::new(ip(8), sport),
            peer: SocketAddr::new(ip(24), dport),
        },
        rqueue: u32_at(56),
        inode: u64::from(u32_at(68)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_the_kernel_layout() {
        let r = request(AF_INET, 1 << CLOSE_WAIT);
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes([r[0], r[1], r[2], r[3]]), 72);
        assert_eq!((r[16], r[17]), (2, 6), "AF_INET, IPPROTO_TCP");
        assert_eq!(u32::from_ne_bytes([r[20], r[21], r[22], r[23]]), 1 << 8);
    }

    #[test]
    fn parses_a_reply_and_the_end() {
        let mut msg = vec![0u8; NLMSG_HDR + DIAG_MSG];
        msg[..4].copy_from_slice(&((NLMSG_HDR + DIAG_MSG) as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let m = &mut msg[NLMSG_HDR..];
        m[0] = 2;
        m[1] = 8;
        m[4..6].copy_from_slice(&6379u16.to_be_bytes());
        m[6..8].copy_from_slice(&40000u16.to_be_bytes());
        m[8..12].copy_from_slice(&[127, 0, 0, 1]);
        m[24..28].copy_from_slice(&[10, 0, 0, 2]);
        m[56..60].copy_from_slice(&4097u32.to_ne_bytes());
        m[68..72].copy_from_slice(&12345u32.to_ne_bytes());
        let mut done = vec![0u8; NLMSG_HDR];
        done[..4].copy_from_slice(&(NLMSG_HDR as u32).to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend_from_slice(&done);
        let mut out = Vec::new();
        assert!(parse(&msg, 7, &mut |s| out.push(s)).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].tuple.local, "127.0.0.1:6379".parse().unwrap());
        assert_eq!(out[0].tuple.peer, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(
            (out[0].tuple.netns, out[0].rqueue, out[0].inode),
            (7, 4097, 12345)
        );
    }

    #[test]
    fn errors_and_garbage_are_errors() {
        let mut err = vec![0u8; NLMSG_HDR + 4];
        err[..4].copy_from_slice(&((NLMSG_HDR + 4) as u32).to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        let e = parse(&err, 0, &mut |_| {}).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        // Found by the fuzz target: a negation that overflowed.
        let mut min = err.clone();
        min[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert!(parse(&min, 0, &mut |_| {}).is_err());
        let mut bad = vec![0u8; NLMSG_HDR];
        bad[..4].copy_from_slice(&999u32.to_ne_bytes());
        assert!(parse(&bad, 0, &mut |_| {}).is_err());
    }
}
