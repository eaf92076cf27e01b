//! A burst of aborts: the agent reports exactly as many as the kernel counted, each blamed on
//! the process that closed; and a burst while the agent is stopped is kept by the ring buffer.

use std::time::Duration;

use super::support::{Agent, aborts, require_bpf, sample, scrape};

const ABORTS: usize = 2000;

/// More aborts than the agent's channel to its writers holds (16,384), fewer than its 8 MiB
/// ring buffer does with the `reset_received` each causes here (about 49,000 events, with
/// room for what the tests running alongside emit).
const HELD: usize = 18_000;

#[test]
fn every_abort_the_kernel_counts_is_reported_once() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, kernel_count) = aborts(ABORTS);
    assert_eq!(
        kernel_count, ABORTS as u64,
        "the scenario itself must abort every connection"
    );
    let evs = agent.events_of(
        ns,
        "rst_on_close",
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

/// The agent held up (stopped here; on a node, starved of CPU or waiting on a slow disk) while
/// the aborts keep coming: the ring buffer holds them, and once the agent runs again every one
/// is reported, none counted lost. (The reader used to drain the ring into its channel and drop
/// what did not fit there.)
#[test]
fn a_burst_while_the_agent_is_stopped_is_kept_in_the_ring_buffer() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    agent.pause();
    let (ns, kernel_count) = aborts(HELD);
    agent.resume();
    assert_eq!(
        kernel_count, HELD as u64,
        "the scenario itself must abort every connection"
    );
    let evs = agent.events_of(
        ns,
        "rst_on_close",
        HELD,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    let rst = evs.iter().filter(|e| e["kind"] == "rst_on_close").count();
    assert_eq!(rst as u64, kernel_count, "every abort is reported");
    let text = scrape(&agent.url);
    let lost: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("observer_events_lost_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(
        sample(&text, "observer_events_lost_total", &[]).is_some() && lost.is_empty(),
        "nothing lost: {lost:?}\n{text}"
    );
}
