//! A burst of aborts: the agent reports exactly as many as the kernel counted, each blamed on
//! the process that closed.

use std::{
    io::Write as _,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use super::support::{Agent, in_netns, require_bpf, tcp_ext, wait_queued};

const ABORTS: usize = 2000;

#[test]
fn every_abort_the_kernel_counts_is_reported_once() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, kernel_count) = in_netns(|ns| {
        let before = tcp_ext("TCPAbortOnClose");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        for _ in 0..ABORTS {
            let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            c.write_all(b"unread request").unwrap();
            wait_queued(&s, 14);
            drop(s);
            drop(c);
        }
        (ns, tcp_ext("TCPAbortOnClose") - before)
    });
    assert_eq!(
        kernel_count, ABORTS as u64,
        "the scenario itself must abort every connection"
    );
    let evs = agent.events(
        ns,
        ABORTS,
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    let rst: Vec<_> = evs.iter().filter(|e| e["kind"] == "rst_on_close").collect();
    assert_eq!(
        rst.len() as u64,
        kernel_count,
        "events == TcpExtTCPAbortOnClose delta"
    );
    // 2,000 short connections in about a second are also churn, which the pool monitor may
    // report; nothing else may appear.
    assert!(
        evs.iter()
            .all(|e| e["kind"] == "rst_on_close" || e["kind"] == "connection_churn"),
        "nothing else was reported: {evs:#?}"
    );
    // The closer is this process; or, rarely, a child another test thread has just forked
    // and not yet exec'd: its close-on-exec drops the last reference, so it is the closer.
    let pid = std::process::id();
    let odd: Vec<_> = rst
        .iter()
        .filter(|e| !(e["unread_bytes"] == 14 && e["role"] == "server"))
        .collect();
    assert!(odd.is_empty(), "{odd:#?}");
    let forked = rst.iter().filter(|e| e["pid"] != pid).count();
    assert!(
        forked <= ABORTS / 100,
        "{forked} events blame another process"
    );
    // Ports are reused at once after an abort (no TIME_WAIT), so connections are told apart
    // by the events' ids: each is reported once.
    let mut ids: Vec<u64> = rst.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), ABORTS, "one event per connection");
}
