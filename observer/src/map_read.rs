//! The bpf(2) commands aya 0.14 lacks, and the agent's one bpf(2) wrapper: reads of whole
//! hash maps in batches (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6), lookup-and-delete
//! (`BPF_MAP_LOOKUP_AND_DELETE_ELEM` on hash maps, Linux 5.14) and a program's
//! `recursion_misses`. aya iterates a map with two syscalls per entry and offers
//! lookup-and-delete for queues and stacks only: with 50,000 entries that is the difference
//! between 100,000 syscalls a scan and 13. Every map read checks the kernel's key and value
//! sizes first.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per batch.
const BATCH: usize = 4096;

/// The `bpf_attr` members of the map element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `bpf_attr` members of the batch commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn fd(map: &MapData) -> u32 {
    u32::try_from(map.fd().as_fd().as_raw_fd()).unwrap_or(u32::MAX)
}

/// `bpf(2)` with `attr`.
fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix of its own size; the kernel writes only
    // within it and the buffers it points to, sized by the caller.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Checks that the kernel's map has keys of `K`'s size and values of `V`'s: the kernel copies
/// its own sizes into the buffers, so a map of another layout (a stale pin) would be written
/// past them or misread. aya checks the object's definition, not the map the kernel holds.
fn check_sizes<K, V>(map: &MapData) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    let (key, value) = (info.key_size() as usize, info.value_size() as usize);
    if key == size_of::<K>() && value == size_of::<V>() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "map {} holds {key}-byte keys and {value}-byte values, observer reads {} and {}",
            info.name_as_str().unwrap_or("?"),
            size_of::<K>(),
            size_of::<V>()
        ),
    ))
}

/// Every entry of a hash or LRU hash map whose keys are `K` and values `V`. Entries added or
/// deleted meanwhile may or may not be seen (as with any iteration of a live map).
///
/// # Errors
/// The kernel's answer, `EINVAL` on kernels without batch lookups (before 5.6), or
/// `InvalidData` when the map's key or value size is not `K`'s or `V`'s.
pub fn dump<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    check_sizes::<K, V>(map)?;
    let mut out = Vec::new();
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(BATCH);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(BATCH);
    // The hash map's batch token is a bucket index.
    let mut token = [0u64; 1];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd(map),
            elem_flags: 0,
            flags: 0,
        };
        first = false;
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(BATCH);
        for i in 0..n {
            // SAFETY: the kernel filled the first `count` keys and values.
            out.push(unsafe {
                (
                    keys.as_ptr().add(i).read().assume_init(),
                    values.as_ptr().add(i).read().assume_init(),
                )
            });
        }
        match res {
            Ok(()) => {}
            // The end of the map (the last batch may carry entries).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// Every entry, by [`dump`], or by `slow` (aya's per-entry iteration) where the kernel has no
/// batch lookups (before 5.6); none, with a warning, from a map whose sizes are not `K`'s and
/// `V`'s (the per-entry path would overrun its buffers the same way).
pub fn all<K: Pod, V: Pod>(map: &MapData, slow: impl FnOnce() -> Vec<(K, V)>) -> Vec<(K, V)> {
    match dump(map) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!(error = %e, "map not read");
            Vec::new()
        }
        Err(_) => slow(),
    }
}

/// Deletes `key` and returns its value as it was deleted, so nothing added between an earlier
/// read and the deletion is lost; `None` when it is absent.
///
/// # Errors
/// The kernel's answer (`EINVAL` on hash maps before 5.14), or `InvalidData` as for [`dump`].
pub fn take<K: Pod, V: Pod>(map: &MapData, key: &K) -> io::Result<Option<V>> {
    check_sizes::<K, V>(map)?;
    let mut value = MaybeUninit::<V>::uninit();
    let mut attr = ElemAttr {
        map_fd: fd(map),
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        // SAFETY: the kernel filled it.
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `recursion_misses` of a program (`BPF_OBJ_GET_INFO_BY_FD`; aya 0.14 does not expose it).
pub fn prog_recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<u64> {
    /// The `bpf_attr` members of `BPF_OBJ_GET_INFO_BY_FD`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// `struct bpf_prog_info` up to `recursion_misses` (offset 208) and its neighbours.
    const INFO_LEN: usize = 232;
    const RECURSION_MISSES: usize = 208;
    let mut info = [0u8; INFO_LEN];
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
        info_len: INFO_LEN as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if (attr.info_len as usize) < RECURSION_MISSES + 8 {
        // An older kernel without the field.
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&info[RECURSION_MISSES..RECURSION_MISSES + 8]);
    Ok(u64::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    #[test]
    fn attrs_have_the_kernel_layout() {
        // include/uapi/linux/bpf.h: the element and batch members of union bpf_attr.
        assert_eq!(size_of::<ElemAttr>(), 32);
        assert_eq!(offset_of!(ElemAttr, key), 8);
        assert_eq!(offset_of!(ElemAttr, flags), 24);
        assert_eq!(size_of::<BatchAttr>(), 56);
        assert_eq!(offset_of!(BatchAttr, count), 32);
        assert_eq!(offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(offset_of!(BatchAttr, flags), 48);
    }
}
