//! The agent's system calls outside bpf(2) (which [`crate::map_read`] holds): each a safe
//! wrapper with its `unsafe` and the reason it is sound, so no other module needs `unsafe`.

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use tokio::io::{Interest, unix::AsyncFd};

/// `-1` into the last OS error, anything else into `Ok`.
fn check(rc: libc::c_long) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// The clocks the agent reads.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// `CLOCK_MONOTONIC`, the clock `bpf_ktime_get_ns` reads.
    Monotonic,
    /// `CLOCK_REALTIME`.
    Realtime,
    /// `CLOCK_THREAD_CPUTIME_ID`: CPU time of the calling thread.
    ThreadCpu,
}

/// `clock`'s time in nanoseconds.
pub fn clock_ns(clock: Clock) -> i128 {
    let id = match clock {
        Clock::Monotonic => libc::CLOCK_MONOTONIC,
        Clock::Realtime => libc::CLOCK_REALTIME,
        Clock::ThreadCpu => libc::CLOCK_THREAD_CPUTIME_ID,
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(id, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Moves the calling thread into the network namespace `ns` refers to.
pub fn enter_netns(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns(2) on the calling thread only, with a descriptor the caller keeps open.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }.into()).map(drop)
}

/// A netlink datagram socket of `protocol` (`NETLINK_SOCK_DIAG`, ...), close-on-exec.
pub fn netlink_socket(protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2), no memory passed.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    check(fd.into())?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// send(2) of all of `buf` on a connected or kernel-addressed socket; the bytes sent.
pub fn send(sock: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: an initialized buffer of its own length.
    check(unsafe { libc::send(sock.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) } as _)
}

/// recv(2) into `buf`; the bytes received.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: a writable buffer of the given length.
    check(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } as _)
}

/// An exclusive flock(2) without waiting: `EWOULDBLOCK` when another process holds one.
pub fn lock_exclusive(file: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: flock(2) on a borrowed descriptor; no memory is passed.
    check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }.into()).map(drop)
}

/// mount(2) of a pseudo file system `fstype` (`tracefs`, `bpf`) on `target`.
pub fn mount(fstype: &CStr, target: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    check(rc.into()).map(drop)
}

/// The magic number of the file system `path` is on (statfs(2) `f_type`).
pub fn fs_magic(path: &CStr) -> io::Result<u64> {
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    check(unsafe { libc::statfs(path.as_ptr(), &raw mut st) }.into())?;
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is i64 with glibc, u64 with musl"
    )]
    u64::try_from(st.f_type).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Keeps the agent's heap in one glibc malloc arena (no-op with other C libraries). By default
/// each thread that allocates gets an arena of its own, and freed memory stays in the arena it
/// came from: a burst (tens of thousands of CLOSE_WAIT sockets listed and reported at once, on
/// the CLOSE_WAIT and pool threads) then leaves its peak resident in several arenas. The
/// agent's threads allocate little at the same time, so one arena costs no contention (the
/// peak it saves is in `docs/performance.md`). Call before any thread is started.
pub fn single_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt has no preconditions; M_ARENA_MAX only bounds future arenas.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// What owns its descriptor for as long as it lives, and so may be polled by tokio.
pub trait OwnsFd: std::os::fd::AsRawFd + sealed::Sealed {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for aya::maps::RingBuf<aya::maps::MapData> {}
    impl Sealed for aya_log::EbpfLogger<&'static dyn log::Log> {}
}

impl OwnsFd for aya::maps::RingBuf<aya::maps::MapData> {}
impl OwnsFd for aya_log::EbpfLogger<&'static dyn log::Log> {}

/// `inner` registered with the tokio reactor for readability.
pub fn readable<T: OwnsFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: an `OwnsFd` keeps its descriptor open, and returns the same one, until dropped
    // (a ring buffer its map's, the logger its ring buffer's).
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
