use std::net::{IpAddr, Ipv4Addr};

use observer_common::{layout::Offsets, tcp::AF_INET};

use super::*;
use crate::layout::Layout;

const SEC: u64 = 1_000_000_000;

fn decoder() -> Decoder {
    Decoder::new(&Layout {
        offsets: Offsets::default(),
        rst_reasons: BTreeMap::new(),
        tracefs: false,
    })
}

/// A map entry of namespace 1 for local port `port`, entered at `entered_s`.
fn entry(port: u16, entered_s: u64, pid: u32, inode: u64) -> (u64, CloseWaitEntry) {
    let mut saddr = [0; 16];
    saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let e = CloseWaitEntry {
        entered_ns: entered_s * SEC,
        established_ns: 0,
        last_read_ns: 0,
        cgroup_id: 0,
        bytes_received: 0,
        inode,
        saddr,
        daddr: saddr,
        comm: [0; 16],
        rcv_nxt: 11,
        copied_seq: 0,
        netns: 1,
        pid,
        sport: port,
        dport: 9000,
        family: AF_INET,
        role: 0,
        flags: 0,
    };
    (u64::from(port), e)
}

fn tuple(netns: u32, port: u16) -> Tuple {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    Tuple {
        netns,
        local: SocketAddr::new(lo, port),
        peer: SocketAddr::new(lo, 9000),
    }
}

fn diag(netns: u32, port: u16, inode: u64) -> DiagSocket {
    DiagSocket {
        tuple: tuple(netns, port),
        state: u8::try_from(observer_common::tcp::CLOSE_WAIT).unwrap(),
        family: AF_INET,
        inode,
        rqueue: 6,
    }
}

fn owner(pid: u32) -> Owner {
    Owner {
        pid,
        comm: "pool".to_owned(),
        cgroup_id: 5,
    }
}

#[test]
fn at_most_the_cap_is_due_oldest_first_then_found_sockets() {
    let mut book = Book::default();
    let (_, r) = book.startup(&[], &[], &BTreeSet::from([1]), vec![diag(1, 1, 0)], 0);
    assert_eq!(r.discovered, 1);
    let n = u16::try_from(LEAKS_PER_SCAN).unwrap() + 10;
    // Entered at 10,000 s and each a second earlier: the cap keeps the oldest.
    let entries: Vec<_> = (0..n)
        .map(|i| entry(i, 10_000 - u64::from(i), 7, 0))
        .collect();
    let due = book.due(&entries, 20_000 * SEC, 30 * SEC);
    assert_eq!(due.entries.len(), LEAKS_PER_SCAN);
    assert!(due.found.is_empty(), "the cap is full: found sockets wait");
    let newest_kept = due.entries.iter().map(|(_, e)| e.entered_ns).max().unwrap();
    assert_eq!(newest_kept, (10_000 - 10) * SEC, "the 10 newest wait");
    // With room, found sockets come after the map's.
    let due = book.due(&entries[..3], 20_000 * SEC, 30 * SEC);
    assert_eq!((due.entries.len(), due.found.len()), (3, 1));
}

#[test]
fn reported_or_young_entries_are_not_due_and_reporting_marks_them() {
    let mut book = Book::default();
    let (_, mut reported) = entry(1, 0, 7, 0);
    reported.flags |= CW_REPORTED;
    let entries = [entry(2, 0, 7, 0), (1, reported), entry(3, 190, 7, 0)];
    let due = book.due(&entries, 200 * SEC, 30 * SEC);
    let (events, mark) = book.report(due, 200 * SEC, &decoder());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].ends.local_port, 2);
    assert_eq!(events[0].close_wait_ms, Some(200_000));
    assert_eq!(events[0].unread_bytes, 10, "rcv_nxt counts the FIN");
    assert_eq!(mark.len(), 1);
    assert_ne!(mark[0].1.flags & CW_REPORTED, 0);
}

#[test]
fn startup_proves_stale_only_in_listed_namespaces_and_skips_known_sockets() {
    let mut book = Book::default();
    let gone = entry(1, 0, 7, 0);
    let mut elsewhere = entry(2, 0, 7, 0);
    elsewhere.1.netns = 2;
    let still = entry(3, 0, 7, 0);
    // Port 3 is known to the map after the dump; port 4 is not.
    let (stale, r) = book.startup(
        &[gone, elsewhere, still],
        &[still],
        &BTreeSet::from([1]),
        vec![diag(1, 3, 30), diag(1, 4, 40)],
        50 * SEC,
    );
    assert_eq!(stale, [1]);
    assert_eq!((r.stale, r.kept, r.discovered, r.namespaces), (1, 2, 1, 1));
    let views = book.views(&[], 80 * SEC);
    assert_eq!(views.len(), 1);
    let v = &views[0];
    assert_eq!(v.ends.local_port, 4);
    assert!(v.close_wait_lower_bound);
    assert_eq!(v.close_wait_ms, 30_000, "counted from when it was found");
    assert_eq!(v.unread_bytes, 5, "the queue less the FIN");
}

#[test]
fn owners_are_looked_up_once_for_unattributed_sockets_and_forgotten_when_gone() {
    let mut book = Book::default();
    book.startup(&[], &[], &BTreeSet::from([1]), vec![diag(1, 9, 90)], 0);
    let entries = [entry(1, 0, 0, 10), entry(2, 0, 7, 20), entry(3, 0, 0, 0)];
    let due = book.due(&entries, 100 * SEC, 30 * SEC);
    let mut wanted: Vec<_> = book.owners_wanted(&due).into_iter().collect();
    wanted.sort_unstable();
    assert_eq!(
        wanted,
        [10, 90],
        "known pids and unknown inodes are not looked up"
    );
    book.add_owners(HashMap::from([(10, owner(41)), (90, owner(42))]));
    assert!(book.owners_wanted(&due).is_empty());
    let (events, _) = book.report(due, 100 * SEC, &decoder());
    let pids: Vec<_> = events.iter().map(|e| e.owner.pid).collect();
    assert_eq!(pids, [41, 7, 0, 42]);
    assert_eq!(events[3].owner.comm, "pool");
    // Socket 10 left: its owner is forgotten at the next scan.
    book.due(&entries[1..], 101 * SEC, 30 * SEC);
    assert!(!book.owners.contains_key(&10));
    assert!(book.owners.contains_key(&90), "found sockets keep theirs");
}

fn resolved(t: Tuple, close_wait_ms: Option<u64>) -> Event {
    Event {
        ends: crate::events::Endpoints {
            netns: t.netns,
            local_addr: t.local.ip(),
            local_port: t.local.port(),
            peer_addr: t.peer.ip(),
            peer_port: t.peer.port(),
        },
        close_wait_ms,
        ..Event::blank(Kind::CloseWaitResolved)
    }
}

#[test]
fn a_resolved_entry_gets_the_owner_found_for_its_leak() {
    let mut book = Book::default();
    let entries = [entry(1, 0, 0, 10)];
    let due = book.due(&entries, 100 * SEC, 30 * SEC);
    book.add_owners(HashMap::from([(10, owner(41))]));
    book.report(due, 100 * SEC, &decoder());
    let ev = book
        .resolve(resolved(tuple(1, 1), Some(120_000)), 0)
        .unwrap();
    assert_eq!(
        (ev.owner.pid, ev.owner.comm.as_str(), ev.close_wait_ms),
        (41, "pool", Some(120_000))
    );
    // Once only.
    let ev = book.resolve(resolved(tuple(1, 1), Some(1)), 0).unwrap();
    assert_eq!(ev.owner.pid, 0);
}

#[test]
fn a_found_socket_resolves_as_a_lower_bound_only_once_reported() {
    let mut book = Book::default();
    book.startup(
        &[],
        &[],
        &BTreeSet::from([1]),
        vec![diag(1, 1, 10), diag(1, 2, 20)],
        10 * SEC,
    );
    let due = book.due(&[], 50 * SEC, 30 * SEC);
    assert_eq!(due.found.len(), 2);
    let (events, _) = book.report(due, 50 * SEC, &decoder());
    assert!(
        events[0].hint.contains("at least this long"),
        "{}",
        events[0].hint
    );
    let ev = book.resolve(resolved(tuple(1, 1), None), 70 * SEC).unwrap();
    assert_eq!(ev.close_wait_ms, Some(60_000));
    assert_eq!(ev.close_wait_lower_bound, Some(true));
    // Found but resolved before its report: nothing to say. Unknown: nothing either.
    let mut book = Book::default();
    book.startup(&[], &[], &BTreeSet::from([1]), vec![diag(1, 1, 10)], 0);
    assert!(book.resolve(resolved(tuple(1, 1), None), SEC).is_none());
    assert!(book.resolve(resolved(tuple(1, 5), None), SEC).is_none());
    // Other events pass untouched.
    let rst = Event::blank(Kind::RstOnClose);
    assert_eq!(book.resolve(rst.clone(), 0), Some(rst));
}
