//! A full disk: the event history stops growing and every failed write is counted, while
//! detection, the JSON-lines log, the metrics and the API go on.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use super::support::{Agent, in_netns, of_kind, require_bpf, scrape, wait_queued};

const ABORTS: usize = 600;

/// A counter's value: counters are whole numbers.
fn metric(agent: &Agent, line_start: &str) -> u64 {
    let text = scrape(&agent.url);
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

#[test]
fn a_full_data_dir_is_counted_and_nothing_else_stops() {
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(mount.success(), "mounting a small tmpfs");
    let agent = Agent::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let (ns, port) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.88:0").unwrap();
        for _ in 0..ABORTS {
            let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.write_all(&[1u8; 200]).unwrap();
            wait_queued(&c, 200);
            let mut one = [0u8; 1];
            c.read_exact(&mut one).unwrap();
            drop(c);
        }
        (ns, l.local_addr().unwrap().port())
    });
    let logged = agent.events_of(
        ns,
        "rst_on_close",
        ABORTS,
        Duration::from_secs(10),
        Duration::from_millis(500),
    );
    // 600 short connections are also churn, which the pool monitor may report.
    assert_eq!(
        of_kind(&logged, "rst_on_close").len(),
        ABORTS,
        "the JSON-lines log has every event"
    );
    assert!(
        logged
            .iter()
            .all(|e| e["kind"] == "rst_on_close" || e["kind"] == "connection_churn"),
        "nothing else was reported: {logged:#?}"
    );
    let peer = format!("127.0.0.88:{port}");
    let counted = metric(
        &agent,
        &format!(
            "observer_rst_on_close_total{{namespace=\"\",pod=\"\",container=\"\",comm=\"{}\",peer=\"{peer}\"}}",
            super::support::own_comm()
        ),
    );
    assert_eq!(counted, ABORTS as u64, "the metrics count every event");
    let failed = metric(&agent, "observer_events_lost_total{source=\"store_error\"}");
    assert!(failed > 0, "failed writes are counted");
    let stored = ureq::Agent::new_with_config(ureq::Agent::config_builder().build())
        .get(&format!(
            "{}/api/v1/events?peer={peer}&limit=10000",
            agent.url
        ))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let stored = serde_json::from_str::<serde_json::Value>(&stored).unwrap()["events"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        stored < ABORTS,
        "the full disk stopped the history at {stored}"
    );
    // The agent sees every namespace: other tests' failed writes count too, hence >=.
    assert!(
        stored as u64 + failed >= ABORTS as u64,
        "every event was stored or counted as lost"
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    let _ = Command::new("umount").arg(dir.path()).status();
}
