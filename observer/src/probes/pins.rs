//! Pinned maps an earlier agent left: reused only when their layout is this build's. aya
//! reuses a pin by name whatever it holds, and a map of another layout then either makes the
//! verifier refuse the programs (a dump, no reason) or is misread.
//!
//! The pins carry a layout version: the `LAYOUT` map pinned beside them holds
//! `LAYOUT_VERSION`, written after every load. Before loading, the pinned `CLOSE_WAIT` table
//! is judged by that version and by its type, key and value sizes, capacity and flags as the
//! kernel reports them (`BPF_OBJ_GET_INFO_BY_FD`):
//!
//! * this version, or version 1 (a pin without `LAYOUT`, left by a build before versioning,
//!   whose entries have this layout), with the sizes this build reads: reused as it is, every
//!   entry time kept (a rolling update keeps each socket's true CLOSE_WAIT age);
//! * anything else (another version, other sizes): removed with one warning naming the pin and
//!   what differs; the sockets in CLOSE_WAIT are found again through `sock_diag` at start-up,
//!   their ages marked as lower bounds.

use std::path::Path;

use aya::maps::{Array, MapData, MapInfo, MapType};
use observer_common::{
    event::CloseWaitEntry,
    maps::{CLOSE_WAIT, CLOSE_WAIT_MAX_ENTRIES, LAYOUT, LAYOUT_VERSION},
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

/// Removes the pinned `CLOSE_WAIT` table under `pin_dir` (and its `LAYOUT`) unless this build
/// can reuse it (see the module doc); returns what differed when it was removed. A pin that
/// cannot be read is left to the loader, which names it in its error.
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
    let layout_pin = pin_dir.join(LAYOUT);
    let version = if layout_pin.exists() {
        read_version(&layout_pin)
    } else {
        Some(1)
    };
    let mut differs = differences(&found, &EXPECTED);
    if !matches!(version, Some(v) if v == LAYOUT_VERSION || v == 1) {
        let v = version.map_or_else(|| "unreadable".to_owned(), |v| v.to_string());
        let what = format!("layout version {v}, this build's {LAYOUT_VERSION}");
        differs = Some(differs.map_or(what.clone(), |d| format!("{what}, {d}")));
    }
    let Some(differs) = differs else {
        if version == Some(1) {
            tracing::info!(pin = %path.display(), "pinned CLOSE_WAIT table of a build before layout versions: reused, entry times kept");
        }
        return None;
    };
    let removed =
        std::fs::remove_file(&path).and_then(|()| match std::fs::remove_file(&layout_pin) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        });
    match removed {
        Ok(()) => {
            tracing::warn!(pin = %path.display(), differs = %differs, "pinned map of another layout removed: sockets already in CLOSE_WAIT are found again through sock_diag, their ages lower bounds");
        }
        Err(e) => {
            tracing::warn!(pin = %path.display(), differs = %differs, error = %e, "pinned map of another layout could not be removed");
        }
    }
    Some(differs)
}

/// The version the pinned `LAYOUT` map at `path` holds.
fn read_version(path: &Path) -> Option<u32> {
    let map = MapData::from_pin(path).ok()?;
    let array: Array<MapData, u32> = Array::try_from(aya::maps::Map::Array(map)).ok()?;
    array.get(&0, 0).ok()
}

/// Writes this build's version into the `LAYOUT` map the loader pinned, after a load: the
/// next agent then knows what the pins beside it hold.
pub(super) fn stamp(ebpf: &mut aya::Ebpf) -> Result<(), super::Error> {
    let mut layout: Array<MapData, u32> = super::take(ebpf, LAYOUT)?;
    layout
        .set(0, LAYOUT_VERSION, 0)
        .map_err(|source| super::Error::Map {
            name: LAYOUT,
            source,
        })
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
