//! Cardinality: 10,000 distinct peers and 2,000 short-lived workloads keep the exposition
//! bounded, what was folded into `other` is counted, and idle workloads leave no series. Its own test binary: the agent sees every connection on the
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

use support::{Agent, in_netns, require_bpf, sample, wait_metrics};

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
            sample(t, "observer_flows_map_full_total", &[])
                .is_some_and(|full| full >= 1_000.0 && (other(t) - full).abs() < 0.5)
        },
    );
    eprintln!(
        "{} connections overflowed FLOWS",
        sample(&text, "observer_flows_map_full_total", &[]).unwrap()
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
        sample(t, "observer_peer_labels_folded_total", &[]).is_some_and(|n| n >= 9_000.0)
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
    let folded = sample(&text, "observer_peer_labels_folded_total", &[]).unwrap();
    assert!(folded >= 9_000.0, "folded {folded}");
}

/// The distinct `comm` values of `family`'s samples that start with `prefix` or are `other`.
fn comms<'a>(text: &'a str, family: &str, prefix: &str) -> std::collections::BTreeSet<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| l.split("comm=\"").nth(1)?.split('"').next())
        .filter(|c| c.starts_with(prefix) || *c == "other")
        .collect()
}

#[test]
fn short_lived_workloads_fold_beyond_the_limit_and_leave_once_idle() {
    if !require_bpf() {
        return;
    }
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let agent = Agent::start(&[
        "--pool-interval",
        "1s",
        "--workload-label-limit",
        "50",
        "--label-idle",
        "15s",
    ]);
    // 2,000 processes with names of their own, one connection each, one after the other,
    // in a namespace of their own.
    let port = 24_011;
    in_netns(move |_| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
        let script = format!(
            "import ctypes, os, socket\n\
             libc = ctypes.CDLL(None)\n\
             for i in range(2000):\n\
             \x20   pid = os.fork()\n\
             \x20   if pid == 0:\n\
             \x20       libc.prctl(15, b'wl%04d' % i, 0, 0, 0)\n\
             \x20       s = socket.create_connection(('127.0.0.1', {port}))\n\
             \x20       s.recv(1); s.close(); os._exit(0)\n\
             \x20   os.waitpid(pid, 0)\n"
        );
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    });
    let opened = "observer_connections_opened_total{";
    let text = wait_metrics(
        &agent.url,
        Duration::from_secs(20),
        "2,000 workloads counted, half of them folded at least",
        |t| {
            sample(t, "observer_workload_labels_folded_total", &[]).is_some_and(|n| n >= 1_000.0)
                && comms(t, opened, "wl").contains("other")
        },
    );
    let named = comms(&text, opened, "wl");
    eprintln!("{} workload values while 2,000 were active", named.len());
    // docs/metrics.md: with --workload-label-limit 50, at most 51 workload values.
    assert!(
        named.len() <= 51,
        "{} workload values: {named:?}",
        named.len()
    );
    // Idle for --label-idle: every named workload's series are gone, `other` stays.
    let text = wait_metrics(
        &agent.url,
        Duration::from_secs(30),
        "idle workloads removed",
        |t| comms(t, opened, "wl").into_iter().all(|c| c == "other"),
    );
    assert!(
        comms(&text, opened, "wl").contains("other"),
        "the folded count stays"
    );
}
