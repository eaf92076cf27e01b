//! Pinned maps an earlier agent left: reused only when their layout is this build's. aya
//! reuses a pin by name whatever it holds, and a map of another layout then either makes the
//! verifier refuse the programs (a dump, no reason) or is misread. Before loading, the pinned
//! `CLOSE_WAIT` table's type, key and value sizes, capacity and flags
//! (`BPF_OBJ_GET_INFO_BY_FD`) are compared with this build's; a pin that differs is removed
//! with one warning naming it and what differs, and the sockets in CLOSE_WAIT are found again
//! through `sock_diag` at start-up, their ages marked as lower bounds.

use std::path::Path;

use aya::maps::{MapInfo, MapType};
use observer_common::{
    event::CloseWaitEntry,
    maps::{CLOSE_WAIT, CLOSE_WAIT_MAX_ENTRIES},
};

/// `BPF_F_NO_PREALLOC`, the table's only flag.
const NO_PREALLOC: u32 = 1;

/// What this build's `CLOSE_WAIT` table is.
const EXPECTED: Layout = Layout {
    hash: true,
    key_size: 8,
    value_size: size_of::<CloseWaitEntry>() as u32,
    max_entries: CLOSE_WAIT_MAX_ENTRIES,
    flags: NO_PREALLOC,
};

/// The shape of a map, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    hash: bool,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

/// Removes the pinned `CLOSE_WAIT` table under `pin_dir` if its layout is not this build's;
/// returns what differed when it did. A pin that cannot be read is left to the loader, which
/// names it in its error.
pub(super) fn drop_stale(pin_dir: &Path) -> Option<String> {
    let path = pin_dir.join(CLOSE_WAIT);
    let info = MapInfo::from_pin(&path).ok()?;
    let found = Layout {
        hash: matches!(info.map_type(), Ok(MapType::Hash)),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    };
    let differs = differences(&found, &EXPECTED)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::warn!(pin = %path.display(), differs = %differs, "pinned map of another layout removed: sockets already in CLOSE_WAIT are found again through sock_diag, their ages lower bounds");
            Some(differs)
        }
        Err(e) => {
            tracing::warn!(pin = %path.display(), differs = %differs, error = %e, "pinned map of another layout could not be removed");
            Some(differs)
        }
    }
}

/// What differs between `found` and `want`, or `None` when nothing does.
fn differences(found: &Layout, want: &Layout) -> Option<String> {
    let mut out = Vec::new();
    if found.hash != want.hash {
        out.push("type is not a hash map".to_owned());
    }
    for (what, f, w) in [
        ("key size", found.key_size, want.key_size),
        ("value size", found.value_size, want.value_size),
        ("max entries", found.max_entries, want.max_entries),
        ("flags", found.flags, want.flags),
    ] {
        if f != w {
            out.push(format!("{what} {f}, this build's {w}"));
        }
    }
    (!out.is_empty()).then(|| out.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_difference_is_named() {
        assert_eq!(differences(&EXPECTED, &EXPECTED), None);
        let older = Layout {
            value_size: 128,
            max_entries: 65_536,
            ..EXPECTED
        };
        assert_eq!(
            differences(&older, &EXPECTED).unwrap(),
            format!(
                "value size 128, this build's {}, max entries 65536, this build's {CLOSE_WAIT_MAX_ENTRIES}",
                size_of::<CloseWaitEntry>()
            )
        );
        let lru = Layout {
            hash: false,
            ..EXPECTED
        };
        assert_eq!(
            differences(&lru, &EXPECTED).unwrap(),
            "type is not a hash map"
        );
    }
}
