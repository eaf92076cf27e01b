//! `kill -9` in the middle of a burst of aborts: the history passes SQLite's integrity check,
//! and a new agent on the same data dir returns every event the killed one had logged (each is
//! logged only after its batch was committed).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;

use super::support::{Agent, in_netns, patience, require_bpf, wait_queued};

/// Aborts the scenario makes; the agent is killed after the first [`KILL_AFTER`] are logged.
const ABORTS: usize = 3000;
const KILL_AFTER: usize = 300;

#[test]
fn a_killed_agent_loses_at_most_the_batch_in_flight() {
    if !require_bpf() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let agent = Agent::start(&["--data-dir", &dir]);
    let (ns_tx, ns_rx) = std::sync::mpsc::channel();
    let burst = std::thread::spawn(move || {
        in_netns(move |ns| {
            ns_tx.send(ns).unwrap();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            for _ in 0..ABORTS {
                let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let (mut s, _) = l.accept().unwrap();
                s.write_all(&[1u8; 200]).unwrap();
                wait_queued(&c, 200);
                let mut one = [0u8; 1];
                c.read_exact(&mut one).unwrap();
                // 199 bytes unread: RST-on-close.
                drop(c);
            }
        });
    });
    let ns = ns_rx.recv().unwrap();
    let logged = agent.events(
        ns,
        KILL_AFTER,
        patience(Duration::from_secs(30)),
        Duration::ZERO,
    );
    assert!(logged.len() >= KILL_AFTER, "only {} logged", logged.len());
    let status = agent.kill();
    assert!(!status.success(), "killed");
    burst.join().unwrap();

    let db = rusqlite::Connection::open(data.path().join("events.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(db);

    let again = Agent::start(&["--data-dir", &dir]);
    let url = format!("{}/api/v1/events?kind=rst_on_close&limit=10000", again.url);
    let body: Value = serde_json::from_str(
        &ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    let stored: std::collections::BTreeSet<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["netns"].as_u64() == Some(ns))
        .filter_map(|e| e["id"].as_u64())
        .collect();
    let lost: Vec<u64> = logged
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "logged before the kill, gone after: {lost:?}"
    );
    let (status, log) = again.stop();
    assert!(status.success(), "{log}");
}
