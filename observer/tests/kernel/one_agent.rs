//! One agent per node: a second agent, or `observer check`, started beside a running agent
//! leaves it working. The second agent refuses to start with one line naming the first;
//! `check` pins into a directory of its own, so the agent keeps its promotion iterator and
//! reports every CLOSE_WAIT leak made afterwards.

use std::{
    net::{TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use super::support::{Agent, OBSERVER, in_netns, of_kind, patience_secs, require_bpf};

/// CLOSE_WAIT leaks made after the second agent and the check.
const LEAKS: usize = 5;

#[test]
fn a_second_agent_and_check_beside_an_agent_leave_it_working() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--close-wait-threshold", "1s"]);
    let pins = agent.pin_dir().unwrap().to_owned();
    let holder = format!("another observer agent (pid {})", agent.pid());

    // The same pin directory, a data dir of its own.
    let data = tempfile::tempdir().unwrap();
    let second = Command::new(OBSERVER)
        .args(["agent", "--pin-dir", &pins, "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].contains(&holder) && lines[0].contains(&pins),
        "{err}"
    );

    let check = Command::new(OBSERVER)
        .args(["check", "--pin-dir", &pins])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        std::fs::read_dir("/sys/fs/bpf")
            .unwrap()
            .filter_map(Result::ok)
            .all(|e| !e.file_name().to_string_lossy().contains("-check-")),
        "check removed its own pins"
    );

    // Leaks made after both: every one reported by the agent.
    let (ns, held) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let held: Vec<TcpStream> = (0..LEAKS)
            .map(|_| {
                let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                // The server leaves at once: the client's end waits in CLOSE_WAIT.
                drop(l.accept().unwrap());
                c
            })
            .collect();
        (ns, held)
    });
    let deadline = Instant::now() + patience_secs(20);
    let leaks = loop {
        let evs = agent.events(ns, LEAKS, Duration::from_secs(1), Duration::ZERO);
        let leaks = of_kind(&evs, "close_wait_leak").len();
        if leaks >= LEAKS || Instant::now() > deadline {
            break leaks;
        }
    };
    assert_eq!(leaks, LEAKS, "every leak made after the check is reported");
    drop(held);
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}
