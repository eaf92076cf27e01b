//! A rolling update: the previous build's agent (built by `cargo xtask test` from the commit
//! `xtask/src/previous.rs` names, found through `OBSERVER_PREVIOUS_RELEASE`) tracks sockets in
//! CLOSE_WAIT, stops, and this build's agent takes over its pins: every socket keeps its true
//! CLOSE_WAIT age, none is a lower bound, and the pins get this build's layout version.

use std::{
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use super::support::{Agent, PinDir, in_netns, of_kind, patience, patience_secs, require_bpf};

/// Sockets left in CLOSE_WAIT under the previous release.
const HELD: usize = 3;

/// The previous release's agent binary; required where the kernel tests are.
fn previous_release() -> String {
    std::env::var("OBSERVER_PREVIOUS_RELEASE").unwrap_or_else(|_| {
        panic!(
            "OBSERVER_PREVIOUS_RELEASE is not set: run the kernel tests through `cargo xtask test`, \
             which builds the previous release's agent"
        )
    })
}

#[test]
fn an_upgrade_keeps_every_sockets_close_wait_age() {
    if !require_bpf() {
        return;
    }
    let previous = previous_release();
    let pins = PinDir::new();
    let old = Agent::start_binary(&previous, &pins, &["--close-wait-threshold", "1h"]);
    let (ns, held, entered) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let held: Vec<TcpStream> = (0..HELD)
            .map(|_| {
                let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                drop(l.accept().unwrap());
                c
            })
            .collect();
        (ns, held, Instant::now())
    });
    // Several of the old agent's scans: the sockets are promoted into the pinned table.
    std::thread::sleep(patience(Duration::from_millis(2500)));
    let (status, log) = old.stop();
    assert!(status.success(), "{log}");
    let stopped_after = entered.elapsed().as_millis() as u64;

    let new = Agent::start_pinned(&pins, &["--close-wait-threshold", "2s"]);
    let deadline = Instant::now() + patience_secs(20);
    let leaks = loop {
        let evs = new.events(ns, HELD, Duration::from_secs(1), Duration::ZERO);
        let leaks: Vec<_> = of_kind(&evs, "close_wait_leak")
            .into_iter()
            .cloned()
            .collect();
        if leaks.len() >= HELD || Instant::now() > deadline {
            break leaks;
        }
    };
    assert_eq!(leaks.len(), HELD, "{leaks:#?}");
    let ports: std::collections::BTreeSet<u64> = held
        .iter()
        .map(|c| u64::from(c.local_addr().unwrap().port()))
        .collect();
    for leak in &leaks {
        assert!(
            ports.contains(&leak["local_port"].as_u64().unwrap()),
            "{leak}"
        );
        assert_eq!(leak["close_wait_lower_bound"], false, "{leak}");
        assert!(
            leak["close_wait_ms"].as_u64().unwrap() >= stopped_after,
            "aged from the true entry, not from the new agent's start: {leak}"
        );
        assert_eq!(leak["pid"], std::process::id(), "{leak}");
    }
    drop(held);
    let (status, log) = new.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("pinned CLOSE_WAIT table of a build before layout versions: reused"),
        "{log}"
    );
}
