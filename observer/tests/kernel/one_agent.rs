//! One agent per node: a second agent, or `observer check`, started beside a running agent
//! leaves it working. The second agent refuses to start with one line naming the first;
//! `check` pins into a directory of its own, so the agent keeps its promotion iterator and
//! reports every CLOSE_WAIT leak made afterwards. A table pinned by a build of another layout
//! is replaced, not misread.

use std::{
    net::{TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use observer_common::event::CloseWaitEntry as Entry;

use super::support::{Agent, OBSERVER, PinDir, in_netns, of_kind, patience_secs, require_bpf};

/// Runs `bpftool` with `args`, which must succeed (the maps the tests pin by hand).
fn bpftool(args: &[&str]) {
    let ok = Command::new("bpftool").args(args).status().unwrap();
    assert!(ok.success(), "bpftool {args:?}");
}

/// CLOSE_WAIT leaks made after the second agent and the check.
const LEAKS: usize = 5;

#[test]
fn a_second_agent_and_check_beside_an_agent_leave_it_working() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--close-wait-threshold", "1s"]);
    let pins = agent.pin_dir().unwrap().to_owned();
    let holder = format!("another observer agent (pid {})", agent.pid());

    // The same pin directory, a data dir of its own.
    let data = tempfile::tempdir().unwrap();
    let second = Command::new(OBSERVER)
        .args(["agent", "--pin-dir", &pins, "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].contains(&holder) && lines[0].contains(&pins),
        "{err}"
    );

    let check = Command::new(OBSERVER)
        .args(["check", "--pin-dir", &pins])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        std::fs::read_dir("/sys/fs/bpf")
            .unwrap()
            .filter_map(Result::ok)
            .all(|e| !e.file_name().to_string_lossy().contains("-check-")),
        "check removed its own pins"
    );

    // Leaks made after both: every one reported by the agent.
    let (ns, held) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let held: Vec<TcpStream> = (0..LEAKS)
            .map(|_| {
                let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                // The server leaves at once: the client's end waits in CLOSE_WAIT.
                drop(l.accept().unwrap());
                c
            })
            .collect();
        (ns, held)
    });
    let deadline = Instant::now() + patience_secs(20);
    let leaks = loop {
        let evs = agent.events(ns, LEAKS, Duration::from_secs(1), Duration::ZERO);
        let leaks = of_kind(&evs, "close_wait_leak").len();
        if leaks >= LEAKS || Instant::now() > deadline {
            break leaks;
        }
    };
    assert_eq!(leaks, LEAKS, "every leak made after the check is reported");
    drop(held);
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}

/// A CLOSE_WAIT table pinned by a build of another layout (made here with bpftool, value
/// 128 bytes): the agent removes it with one warning naming what differs, never a verifier
/// dump, and tracks leaks in a table of its own layout.
#[test]
fn a_pinned_table_of_another_layout_is_replaced_not_misread() {
    if !require_bpf() {
        return;
    }
    let pins = PinDir::new();
    std::fs::create_dir_all(pins.path()).unwrap();
    let stale = format!("{}/CLOSE_WAIT", pins.path());
    bpftool(&[
        "map",
        "create",
        &stale,
        "type",
        "hash",
        "key",
        "8",
        "value",
        "128",
        "entries",
        "1024",
        "name",
        "CLOSE_WAIT",
        "flags",
        "1",
    ]);
    let agent = Agent::start_pinned(&pins, &["--close-wait-threshold", "1s"]);
    let (ns, held) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        drop(l.accept().unwrap());
        (ns, c)
    });
    let deadline = Instant::now() + patience_secs(20);
    while of_kind(
        &agent.events(ns, 1, Duration::from_secs(1), Duration::ZERO),
        "close_wait_leak",
    )
    .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no leak tracked in the new table"
        );
    }
    drop(held);
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pinned map of another layout removed"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains(&stale) && warned[0].contains("value size 128, this build's 120"),
        "{log}"
    );
}

/// Every batch read and lookup-and-delete checks the kernel's key and value sizes first: the
/// kernel copies its own sizes, so a map of another layout would be written past the buffer.
#[test]
fn map_reads_check_the_kernels_value_size() {
    if !require_bpf() {
        return;
    }
    let pins = PinDir::new();
    std::fs::create_dir_all(pins.path()).unwrap();
    let path = format!("{}/CLOSE_WAIT", pins.path());
    bpftool(&[
        "map",
        "create",
        &path,
        "type",
        "hash",
        "key",
        "8",
        "value",
        "128",
        "entries",
        "16",
        "name",
        "CLOSE_WAIT",
    ]);
    let map = aya::maps::MapData::from_pin(&path).unwrap();
    let e = observer::map_read::dump::<u64, Entry>(&map).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "map CLOSE_WAIT holds 8-byte keys and 128-byte values, observer reads 8 and {}",
            size_of::<Entry>()
        )
    );
    let e = observer::map_read::take::<u64, Entry>(&map, &1).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    // The right sizes read (an empty map: nothing).
    let fits = observer::map_read::dump::<u64, [u8; 128]>(&map).unwrap();
    assert!(fits.is_empty());
}

/// Pins whose `LAYOUT` says another version (a newer build's, after a rollback): replaced
/// with one warning naming both versions, and the new pins carry this build's version.
#[test]
fn pins_of_another_layout_version_are_replaced() {
    if !require_bpf() {
        return;
    }
    let pins = PinDir::new();
    std::fs::create_dir_all(pins.path()).unwrap();
    let table = format!("{}/CLOSE_WAIT", pins.path());
    let layout = format!("{}/LAYOUT", pins.path());
    let value = size_of::<Entry>().to_string();
    let entries = observer_common::maps::CLOSE_WAIT_MAX_ENTRIES.to_string();
    bpftool(&[
        "map",
        "create",
        &table,
        "type",
        "hash",
        "key",
        "8",
        "value",
        &value,
        "entries",
        &entries,
        "name",
        "CLOSE_WAIT",
        "flags",
        "1",
    ]);
    bpftool(&[
        "map", "create", &layout, "type", "array", "key", "4", "value", "4", "entries", "1",
        "name", "LAYOUT",
    ]);
    bpftool(&[
        "map", "update", "pinned", &layout, "key", "0", "0", "0", "0", "value", "99", "0", "0", "0",
    ]);
    let agent = Agent::start_pinned(&pins, &[]);
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pinned map of another layout removed"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("layout version 99, this build's 2"),
        "{log}"
    );
    let map = aya::maps::MapData::from_pin(&layout).unwrap();
    let stamped: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).unwrap();
    assert_eq!(
        stamped.get(&0, 0).unwrap(),
        observer_common::maps::LAYOUT_VERSION
    );
}
