//! The fallback hook types really work: forced to raw or classic tracepoints, the agent
//! detects the same abort with the same fields.

use std::{
    io::Write as _,
    net::{TcpListener, TcpStream},
};

use super::support::{Agent, events, in_netns, require_bpf, wait_queued};

fn detects_with(hook_type: &str) {
    let agent = Agent::start(&["--hook-types", hook_type]);
    let (ns, sport) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.write_all(&[3u8; 2500]).unwrap();
        wait_queued(&s, 2500);
        drop(s);
        (ns, l.local_addr().unwrap().port())
    });
    let evs = events(&agent, ns, 1);
    assert_eq!(evs.len(), 1, "{hook_type}: {evs:#?}");
    let e = &evs[0];
    assert_eq!(e["kind"], "rst_on_close");
    assert_eq!(e["unread_bytes"], 2500);
    assert_eq!(e["local_port"], sport);
    assert_eq!(e["role"], "server");
    assert_eq!(e["pid"], std::process::id());
    assert_eq!(
        e["rst_reason"], "TCP_ABORT_ON_CLOSE",
        "{hook_type}: reset reason"
    );
    let (status, log) = agent.stop();
    assert!(status.success());
    let attached = log
        .lines()
        .filter(|l| l.contains("probe attached"))
        .collect::<Vec<_>>();
    assert_eq!(attached.len(), 4, "{log}");
    assert!(
        attached
            .iter()
            .all(|l| l.contains(&format!("type={hook_type}"))),
        "every purpose on {hook_type}: {log}"
    );
}

#[test]
fn raw_tracepoints() {
    if require_bpf() {
        detects_with("raw_tracepoint");
    }
}

#[test]
fn classic_tracepoints() {
    if require_bpf() {
        detects_with("tracepoint");
    }
}
