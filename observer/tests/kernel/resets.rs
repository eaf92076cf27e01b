//! `reset_received`, the victim's side of a reset, linked on the node to the abort that caused
//! it: a real HTTP server whose client closes a response unread, and a client whose server
//! closes a request half read; refused connects are counted, never stored.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    real_clients::{HttpServer, PYTHON, requests_closing_early},
    support::{Agent, in_netns, of_kind, own_comm, patience_secs, require_bpf, sample, scrape},
};

/// Aborts each scenario makes.
const CLOSES: usize = 3;

/// The aborts and the resets received in `ns`, once there are `n` of each.
fn both_ends(agent: &Agent, ns: u64, n: usize) -> Vec<Value> {
    let (wait, settle) = (Duration::from_secs(10), Duration::from_millis(500));
    let mut evs = agent.events(ns, n, wait, Duration::ZERO);
    evs.extend(agent.resets(ns, n, wait, settle));
    evs
}

/// Each closer's `rst_on_close` and its victim's `reset_received`, linked both ways.
fn assert_linked(evs: &[Value], closer_pid: u32, victim_pid: u32, n: usize) {
    let aborts: Vec<_> = of_kind(evs, "rst_on_close")
        .into_iter()
        .filter(|e| e["pid"] == closer_pid)
        .collect();
    let resets: Vec<_> = of_kind(evs, "reset_received")
        .into_iter()
        .filter(|e| e["pid"] == victim_pid)
        .collect();
    assert_eq!(aborts.len(), n, "aborts of {closer_pid}: {evs:#?}");
    assert_eq!(resets.len(), n, "resets received by {victim_pid}: {evs:#?}");
    for a in &aborts {
        assert_eq!(a["peer_pid"], victim_pid, "{a}");
        assert!(
            a["hint"]
                .as_str()
                .unwrap()
                .contains(&format!("the reset reached pid {victim_pid}")),
            "{a}"
        );
        // Its victim: the mirrored endpoints.
        let mate = resets
            .iter()
            .find(|r| r["local_port"] == a["peer_port"] && r["peer_port"] == a["local_port"]);
        assert!(mate.is_some(), "no reset_received for {a}");
    }
    for r in &resets {
        assert_eq!(r["peer_pid"], closer_pid, "{r}");
        assert_eq!(r["state"], "established", "{r}");
        let hint = r["hint"].as_str().unwrap();
        assert!(hint.contains("ECONNRESET"), "{r}");
        assert!(
            hint.contains(&format!("pid {closer_pid} (")) && hint.contains("unread bytes"),
            "{r}"
        );
    }
}

#[test]
fn a_client_closing_a_response_unread_resets_the_http_server_it_names() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, server_pid, py_pid) = in_netns(|ns| {
        let server = HttpServer::start();
        let py = requests_closing_early(server.port, CLOSES);
        (ns, server.child.id(), py)
    });
    let evs = both_ends(&agent, ns, CLOSES);
    assert_linked(&evs, py_pid, server_pid, CLOSES);
    for r in of_kind(&evs, "reset_received") {
        assert_eq!(r["role"], "server", "{r}");
        assert!(
            r["unsent_bytes"].as_u64().unwrap() > 0,
            "8 MiB were on the way: {r}"
        );
    }
}

/// A Python server that accepts `n` connections, reads 4 bytes of each once 100 are queued,
/// and closes it; prints its port first.
const HALF_READER: &str = "
import array, fcntl, socket, sys, termios, time
l = socket.socket()
l.bind(('127.0.0.1', 0))
l.listen()
print(l.getsockname()[1], flush=True)
for _ in range(int(sys.argv[1])):
    s, _ = l.accept()
    s.recv(4)
    queued = array.array('i', [0])
    while True:
        fcntl.ioctl(s, termios.FIONREAD, queued)
        if queued[0] >= 96:
            break
        time.sleep(0.01)
    s.close()
";

#[test]
fn a_server_closing_a_request_half_read_resets_the_client_that_names_it() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, server_pid, port, reset_seen) = in_netns(|ns| {
        let mut server = Command::new(PYTHON)
            .args(["-c", HALF_READER, &CLOSES.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 server");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let mut reset_seen = 0;
        for _ in 0..CLOSES {
            let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
            c.write_all(&[7u8; 100]).unwrap();
            let mut buf = [0u8; 16];
            match c.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::ConnectionReset => reset_seen += 1,
                other => panic!("expected ECONNRESET, got {other:?}"),
            }
        }
        assert!(server.wait().unwrap().success());
        // Nothing listens there any more: each connect is refused.
        for _ in 0..CLOSES {
            let e = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        }
        (ns, server.id(), port, reset_seen)
    });
    assert_eq!(reset_seen, CLOSES);
    let evs = both_ends(&agent, ns, CLOSES);
    let me = std::process::id();
    assert_linked(&evs, server_pid, me, CLOSES);
    for r in of_kind(&evs, "reset_received") {
        assert_eq!(r["role"], "client", "{r}");
        assert_eq!(r["unsent_bytes"], 0, "the 100 bytes were acknowledged: {r}");
    }
    assert!(
        evs.iter().all(|e| e["kind"] != "connect_refused"),
        "refused connects are counted, not events"
    );
    // Counters: one reset received per ECONNRESET, one refusal per refused connect.
    let peer = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + patience_secs(10);
    let (received, refused) = loop {
        let text = scrape(&agent.url);
        let labels = [("comm", own_comm()), ("peer", peer.clone())];
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let received = sample(&text, "observer_resets_received_total", &labels);
        let refused = sample(&text, "observer_connects_refused_total", &labels);
        if refused == Some(CLOSES as f64) || Instant::now() > deadline {
            break (received, refused);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(received, Some(reset_seen as f64), "one per ECONNRESET seen");
    assert_eq!(refused, Some(CLOSES as f64), "refused connects to {peer}");
    let body = ureq::get(&format!("{}/api/v1/events?kind=connect_refused", agent.url)).call();
    assert!(body.is_err(), "connect_refused is not a stored kind");
}
