use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::events::{Endpoints, Kind, Owner, Role};

pub(crate) fn event(kind: Kind, pid: u32, comm: &str, peer: (&str, u16), wall_ns: u64) -> Event {
    Event {
        ts: String::from("2026-11-21T00:00:00Z"),
        wall_ns,
        owner: Owner {
            pid,
            comm: comm.to_owned(),
            cgroup_id: 1,
            ..Owner::default()
        },
        ends: Endpoints {
            netns: 1,
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 40000,
            peer_addr: peer.0.parse().unwrap(),
            peer_port: peer.1,
        },
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
    let mut r = Reader::open(store.file()).unwrap();
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
        vec![2],
        "after an id: the oldest first, to page forward"
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
    let mut r = Reader::open(s.file()).unwrap();
    assert_eq!(
        ids(&r.query(&filter(&[])).unwrap()),
        vec![100, 99, 98, 97, 96]
    );
}

#[test]
fn a_corrupt_file_is_moved_aside_and_an_unwritable_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = b"this is not a database, just some bytes that are long enough".repeat(100);
    std::fs::write(dir.path().join("events.db"), &garbage).unwrap();
    let mut store = open(dir.path()).unwrap();
    let aside = store.moved_aside().unwrap().to_owned();
    assert!(
        aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("events.db.corrupt-"),
        "{}",
        aside.display()
    );
    assert_eq!(std::fs::read(&aside).unwrap(), garbage, "kept as it was");
    let mut batch = [event(Kind::RstOnClose, 1, "a", ("10.0.0.1", 1), 1)];
    store.append(&mut batch).unwrap();
    assert_eq!(Reader::open(store.file()).unwrap().count().unwrap(), 1);
    drop(store);
    assert!(
        open(dir.path()).unwrap().moved_aside().is_none(),
        "a sound file stays"
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
fn ids_are_never_reused_after_pruning_empties_the_history() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path()).unwrap();
        let mut batch: Vec<Event> = (0..3)
            .map(|i| event(Kind::RstOnClose, 1, "a", ("10.0.0.1", 1), i))
            .collect();
        s.append(&mut batch).unwrap();
        assert_eq!(s.prune(1_000, 1, 1_000).unwrap(), 3, "all too old");
    }
    let mut s = open(dir.path()).unwrap();
    assert_eq!(Reader::open(s.file()).unwrap().count().unwrap(), 0);
    let mut more = [event(Kind::RstOnClose, 2, "b", ("10.0.0.1", 1), 5_000)];
    s.append(&mut more).unwrap();
    assert_eq!(
        more[0].id, 4,
        "a follower that saw id 3 still sees this one"
    );
}

#[test]
fn out_of_range_ids_and_times_are_refused_not_wrapped() {
    let err = |q: &[(&str, &str)]| Filter::from_pairs(q.iter().copied(), 0).unwrap_err();
    assert_eq!(
        err(&[("after_id", "18446744073709551615")]).to_string(),
        "invalid parameter after_id: must be at most 9223372036854775807"
    );
    assert_eq!(
        err(&[("since", "2300-01-01T00:00:00Z")]).to_string(),
        "invalid parameter since: after 2262-04-11, the latest time stored"
    );
    assert!(Filter::from_pairs([("after_id", "9223372036854775807")], 0).is_ok());
}

/// Every filter but the time window, which SQLite serves by walking ids newest first (ids are
/// handed out in time order, so `LIMIT` stops the walk at the window's newest rows).
#[test]
fn every_filter_is_served_by_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let conn = Connection::open(store.file()).unwrap();
    for q in [
        &[("kind", "rst_on_close")][..],
        &[("pid", "7")],
        &[("comm", "curl")],
        &[("pod", "web-1")],
        &[("namespace", "shop")],
        &[("peer", "10.0.0.1:80")],
        &[("after_id", "5")],
    ] {
        let (sql, args) = Filter::from_pairs(q.iter().copied(), 1 << 40)
            .unwrap()
            .sql();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(params_from_iter(args.iter()), |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter().any(|p| p.contains("USING INDEX")
                || p.contains("USING COVERING INDEX")
                || p.contains("USING INTEGER PRIMARY KEY")),
            "{q:?}: {plan:?}"
        );
    }
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

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the numbers, a filter either is refused with a named parameter or runs:
        /// nothing wraps into a negative SQLite integer.
        #[test]
        fn numeric_parameters_are_refused_or_run(
            after_id in any::<u64>(),
            pid in any::<u64>(),
            limit in any::<u64>(),
            since_s in any::<i64>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path()).unwrap();
            let mut r = Reader::open(store.file()).unwrap();
            let since = time::OffsetDateTime::from_unix_timestamp(since_s % 20_000_000_000)
                .map(|t| t.format(&time::format_description::well_known::Rfc3339).unwrap())
                .unwrap_or_default();
            let (a, p, l) = (after_id.to_string(), pid.to_string(), limit.to_string());
            let pairs = [("after_id", a.as_str()), ("pid", &p), ("limit", &l), ("since", &since)];
            match Filter::from_pairs(pairs, 1 << 60) {
                Ok(f) => {
                    prop_assert!(after_id <= query::MAX_STORED);
                    let (_, args) = f.sql();
                    for v in &args {
                        if let rusqlite::types::Value::Integer(i) = v {
                            prop_assert!(*i >= 0, "{args:?}");
                        }
                    }
                    prop_assert!(r.query(&f).is_ok());
                }
                Err(e) => prop_assert!(PARAM_NAMES.contains(&e.param.as_str()), "{e}"),
            }
        }

        /// Following: pages of `page` events after the last id seen return every event once,
        /// in order, however many arrived since the last poll.
        #[test]
        fn following_page_by_page_skips_nothing(total in 0usize..300, page in 1u32..50) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path()).unwrap();
            let mut batch: Vec<Event> = (0..total)
                .map(|i| event(Kind::RstOnClose, 1, "a", ("10.0.0.1", 1), i as u64))
                .collect();
            store.append(&mut batch).unwrap();
            let mut r = Reader::open(store.file()).unwrap();
            let (mut seen, mut last) = (Vec::new(), 0u64);
            loop {
                let f = Filter { after_id: Some(last), limit: page, ..Filter::default() };
                let got = ids(&r.query(&f).unwrap());
                let Some(&max) = got.last() else { break };
                seen.extend(got);
                last = max;
            }
            prop_assert_eq!(seen, (1..=total as u64).collect::<Vec<_>>());
        }
    }

    const PARAM_NAMES: [&str; 4] = ["after_id", "pid", "limit", "since"];
}

#[test]
fn the_history_is_readable_by_the_agent_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let mut store = open(&dir).unwrap();
    store
        .append(&mut [event(Kind::RstOnClose, 1, "a", ("10.0.0.1", 1), 1)])
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for f in ["events.db", "events.db-wal", "events.db-shm"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
}
