use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::events::{Kind, Role};

pub(crate) fn event(kind: Kind, pid: u32, comm: &str, peer: (&str, u16), wall_ns: u64) -> Event {
    Event {
        ts: String::from("2026-11-21T00:00:00Z"),
        wall_ns,
        pid,
        comm: comm.to_owned(),
        cgroup_id: 1,
        netns: 1,
        local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        local_port: 40000,
        peer_addr: peer.0.parse().unwrap(),
        peer_port: peer.1,
        role: Role::Client,
        unread_bytes: 10,
        bytes_received: 10,
        ..Event::blank(kind)
    }
}

fn ids(rows: &[String]) -> Vec<u64> {
    rows.iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn filter(q: &[(&str, &str)]) -> Filter {
    Filter::from_pairs(q.iter().copied(), 10_000).unwrap()
}

#[test]
fn appends_numbers_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path()).unwrap();
    let mut batch = vec![
        event(Kind::RstOnClose, 10, "curl", ("10.0.0.1", 80), 1_000),
        event(Kind::RstOnClose, 11, "python3", ("10.0.0.2", 6379), 2_000),
        event(
            Kind::CloseWaitLeak,
            11,
            "python3",
            ("10.0.0.2", 6379),
            3_000,
        ),
    ];
    store.append(&mut batch).unwrap();
    assert_eq!(
        batch.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let r = Reader::open(store.file()).unwrap();
    assert_eq!(
        ids(&r.query(&filter(&[])).unwrap()),
        vec![3, 2, 1],
        "newest first"
    );
    assert_eq!(
        ids(&r.query(&filter(&[("kind", "rst_on_close")])).unwrap()),
        vec![2, 1]
    );
    assert_eq!(
        ids(&r.query(&filter(&[("pid", "11")])).unwrap()),
        vec![3, 2]
    );
    assert_eq!(
        ids(&r.query(&filter(&[("comm", "curl")])).unwrap()),
        vec![1]
    );
    assert_eq!(
        ids(&r.query(&filter(&[("peer", "10.0.0.2")])).unwrap()),
        vec![3, 2]
    );
    assert_eq!(
        ids(&r.query(&filter(&[("peer", "10.0.0.2:80")])).unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        ids(&r
            .query(&filter(&[("since", "1970-01-01T00:00:00.000002Z")]))
            .unwrap()),
        vec![3, 2]
    );
    assert_eq!(
        ids(&r
            .query(&filter(&[("after_id", "1"), ("limit", "1")]))
            .unwrap()),
        vec![3]
    );
}

#[test]
fn a_reopened_store_keeps_history_and_continues_ids() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path()).unwrap();
        s.append(&mut [event(Kind::RstOnClose, 1, "a", ("10.0.0.1", 1), 1)])
            .unwrap();
    }
    let mut s = open(dir.path()).unwrap();
    let mut more = [event(Kind::RstOnClose, 2, "b", ("10.0.0.1", 1), 2)];
    s.append(&mut more).unwrap();
    assert_eq!(more[0].id, 2);
    assert_eq!(Reader::open(s.file()).unwrap().count().unwrap(), 2);
}

#[test]
fn pruning_keeps_the_file_bounded_by_age_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path()).unwrap();
    let mut batch: Vec<Event> = (0..100)
        .map(|i| event(Kind::RstOnClose, 1, "a", ("10.0.0.1", 1), i * 10))
        .collect();
    s.append(&mut batch).unwrap();
    // Older than 200 ns before 1000: ts < 800 goes (80 rows).
    assert_eq!(s.prune(1000, 200, 1_000_000).unwrap(), 80);
    // Then the row cap: keep the newest 5.
    assert_eq!(s.prune(1000, 1000, 5).unwrap(), 15);
    let r = Reader::open(s.file()).unwrap();
    assert_eq!(
        ids(&r.query(&filter(&[])).unwrap()),
        vec![100, 99, 98, 97, 96]
    );
}

#[test]
fn a_corrupt_file_or_unwritable_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("events.db"),
        b"this is not a database, just some bytes that are long enough",
    )
    .unwrap();
    let e = open(dir.path()).err().unwrap().to_string();
    assert!(
        e.starts_with(&format!("event store {}/events.db: ", dir.path().display())),
        "{e}"
    );
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let e = open(&file.join("sub")).err().unwrap().to_string();
    assert!(
        e.starts_with("data dir ") && e.contains("--data-dir"),
        "{e}"
    );
}

#[test]
fn bad_parameters_are_named() {
    let now = 1_000_000_000_000;
    let err = |q: &[(&str, &str)]| {
        Filter::from_pairs(q.iter().copied(), now)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(&[("limit", "0")]),
        "invalid parameter limit: must be between 1 and 10000"
    );
    assert_eq!(
        err(&[("limit", "-3")]),
        "invalid parameter limit: \"-3\" is not a valid number"
    );
    assert_eq!(
        err(&[("limit", "99999999999")]),
        "invalid parameter limit: \"99999999999\" is not a valid number"
    );
    assert!(err(&[("kind", "rst")]).starts_with("invalid parameter kind: unknown kind \"rst\""));
    assert!(err(&[("since", "yesterday")]).starts_with("invalid parameter since:"));
    assert!(err(&[("peer", "10.0.0.300")]).starts_with("invalid parameter peer:"));
    assert_eq!(
        err(&[("pid", "1"), ("pid", "2")]),
        "invalid parameter pid: given more than once"
    );
    assert_eq!(
        err(&[("pids", "1")]),
        "invalid parameter pids: unknown parameter"
    );
    assert_eq!(
        err(&[("since", "1m"), ("until", "2m")]),
        "invalid parameter since: is after until"
    );
    let ok = Filter::from_pairs([("since", "10m"), ("peer", "[::1]:6379")], now).unwrap();
    assert_eq!(ok.since_ns, Some(now - 600_000_000_000));
    assert_eq!(ok.peer, Some(("::1".parse().unwrap(), Some(6379))));
}
