//! `kill -9` in the middle of a burst of aborts: the history passes SQLite's integrity check,
//! a new agent on the same data dir returns every event the killed one had logged (each is
//! logged only after its batch was committed), and on the same pins it shows the sockets that
//! were in CLOSE_WAIT with their true ages (the pinned table outlives the process).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;

use super::support::{Agent, PinDir, in_netns, patience, require_bpf, wait_queued};

/// Aborts the scenario makes; the agent is killed after the first [`KILL_AFTER`] are logged.
const ABORTS: usize = 3000;
const KILL_AFTER: usize = 300;

/// The JSON an agent's API answers at `url`.
fn api_json(url: &str) -> Value {
    let text = ureq::get(url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_killed_agent_loses_at_most_the_batch_in_flight() {
    if !require_bpf() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let pins = PinDir::new();
    let agent = Agent::start_pinned(&pins, &["--data-dir", &dir]);
    // Two sockets in CLOSE_WAIT, promoted into the pinned table before the kill.
    let (cw_ns, held, entered) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let held: Vec<TcpStream> = (0..2)
            .map(|_| {
                let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                drop(l.accept().unwrap());
                c
            })
            .collect();
        (ns, held, std::time::Instant::now())
    });
    std::thread::sleep(patience(Duration::from_millis(2500)));
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
    let (status, log) = agent.kill();
    assert!(!status.success(), "killed");
    burst.join().unwrap();

    let db = rusqlite::Connection::open(data.path().join("events.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(db);

    let killed_after = entered.elapsed().as_millis() as u64;
    let again = Agent::start_pinned(&pins, &["--data-dir", &dir]);
    // Every kind: the burst also makes pool events (churn) in its namespace.
    let url = format!("{}/api/v1/events?limit=10000", again.url);
    let body = api_json(&url);
    let stored: std::collections::BTreeSet<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["netns"].as_u64() == Some(ns))
        .filter_map(|e| e["id"].as_u64())
        .collect();
    let lost: Vec<&Value> = logged
        .iter()
        .filter(|e| e["id"].as_u64().is_none_or(|id| !stored.contains(&id)))
        .collect();
    assert!(
        lost.is_empty(),
        "logged before the kill, gone after: {lost:?}\nthe killed agent's log:\n{log}"
    );

    let url = format!("{}/api/v1/sockets", again.url);
    let sockets = api_json(&url);
    let ports: Vec<u64> = held
        .iter()
        .map(|c| u64::from(c.local_addr().unwrap().port()))
        .collect();
    let mine: Vec<&Value> = sockets["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| ports.contains(&s["local_port"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(mine.len(), 2, "in CLOSE_WAIT in netns {cw_ns}: {sockets:#}");
    for s in mine {
        assert_eq!(s["close_wait_lower_bound"], false, "{s}");
        assert!(
            s["close_wait_ms"].as_u64().unwrap() >= killed_after,
            "aged from the true entry: {s}"
        );
    }
    drop(held);
    let (status, log) = again.stop();
    assert!(status.success(), "{log}");
}
