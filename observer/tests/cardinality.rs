//! Cardinality: 10,000 distinct peers keep the exposition bounded, and what was folded into
//! `peer="other"` is counted. Its own test binary: the agent sees every connection on the
//! host, so this flood of peers would fill the peer labels of the agents other kernel tests
//! start in parallel.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, with the failing call in the backtrace"
)]

#[path = "kernel/support.rs"]
#[allow(
    dead_code,
    reason = "shared with the kernel tests; this test uses part of it"
)]
mod support;

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use support::{Agent, in_netns, require_bpf, wait_metrics};

/// The value of an unlabelled sample `name`.
fn plain(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// One scenario at a time: each floods the maps and labels of every agent on the host.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Connects to `n` distinct addresses of 127.0.0.0/8 (all local) on `port`, one after the
/// other, in a namespace of its own; the server closes each at once.
fn distinct_peers(n: u32, port: u16) {
    in_netns(move |_| {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
        for i in 0..n {
            let ip = Ipv4Addr::from(0x7f01_0000 + i);
            let mut c = TcpStream::connect(SocketAddr::from((ip, port))).unwrap();
            let _ = c.read(&mut [0; 1]);
        }
    });
}

#[test]
fn a_full_flows_map_counts_into_other_and_says_so() {
    if !require_bpf() {
        return;
    }
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A long interval: no entry is idle long enough to be deleted while the map fills.
    let agent = Agent::start(&["--pool-interval", "10s"]);
    let n = observer_common::maps::FLOWS_MAX_ENTRIES + 1_000;
    distinct_peers(n, 24_010);
    // Every connection the map had no room for is counted in the catch-all series: none is
    // lost, and the overflow itself is exported.
    let other = |t: &str| -> f64 {
        t.lines()
            .filter(|l| {
                l.starts_with("observer_connections_opened_total{")
                    && l.contains("comm=\"\",peer=\"other\",role=\"unknown\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let text = wait_metrics(
        &agent.url,
        Duration::from_secs(30),
        "the overflow counted",
        |t| {
            plain(t, "observer_flows_map_full_total")
                .is_some_and(|full| full >= 1_000.0 && (other(t) - full).abs() < 0.5)
        },
    );
    eprintln!(
        "{} connections overflowed FLOWS",
        plain(&text, "observer_flows_map_full_total").unwrap()
    );
}

#[test]
fn ten_thousand_peers_keep_the_exposition_bounded() {
    if !require_bpf() {
        return;
    }
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let agent = Agent::start(&["--pool-interval", "1s", "--peer-label-limit", "100"]);
    let url = agent.url.clone();
    distinct_peers(10_000, 24_009);
    let text = wait_metrics(&url, Duration::from_secs(20), "10,000 peers folded", |t| {
        plain(t, "observer_peer_labels_folded_total").is_some_and(|n| n >= 9_000.0)
    });
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    eprintln!("{series} series in the exposition");
    // docs/metrics.md: with --peer-label-limit 100, at most 101 peer values per family.
    assert!(series < 6_000, "{series} series");
    let peers: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("observer_connections_opened_total{"))
        .filter_map(|l| l.split("peer=\"").nth(1)?.split('"').next())
        .collect();
    assert!(peers.len() <= 101, "{} peer values", peers.len());
    assert!(peers.contains("other"));
    let folded = plain(&text, "observer_peer_labels_folded_total").unwrap();
    assert!(folded >= 9_000.0, "folded {folded}");
}
