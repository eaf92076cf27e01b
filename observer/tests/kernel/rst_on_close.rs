//! RST-on-close on plain loopback sockets: who is blamed, how many bytes, which ports, and what
//! is not reported.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    time::Duration,
};

use super::support::{
    Agent, active_rst_reason, events, in_netns, of_kind, own_comm, require_bpf, set_linger,
    tcp_ext, wait_queued,
};

/// The response the client in `client_reading_part_of_a_response_is_blamed_as_client` reads 100 bytes of.
const RESPONSE: usize = 64 * 1024;

/// Server accepts, receives `n` bytes, closes without reading; returns (server port, client port).
fn server_closes_unread(addr: &str, n: usize) -> (u16, u16) {
    let l = TcpListener::bind(addr).unwrap();
    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.write_all(&vec![7u8; n]).unwrap();
    wait_queued(&s, n);
    let ports = (
        l.local_addr().unwrap().port(),
        c.local_addr().unwrap().port(),
    );
    drop(s);
    let mut buf = [0u8; 16];
    let err = c.read(&mut buf).expect_err("the client must see the reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    ports
}

#[test]
fn server_closing_unread_request_is_blamed_with_its_bytes() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, (sport, cport), aborts) = in_netns(|ns| {
        let before = tcp_ext("TCPAbortOnClose");
        let ports = server_closes_unread("127.0.0.1:0", 1000);
        (ns, ports, tcp_ext("TCPAbortOnClose") - before)
    });
    assert_eq!(aborts, 1, "the kernel counted one abort");
    let evs = events(&agent, ns, 1);
    assert_eq!(evs.len(), 1, "{evs:#?}");
    let e = &evs[0];
    assert_eq!(e["kind"], "rst_on_close");
    assert_eq!(e["unread_bytes"], 1000);
    assert_eq!(e["pid"], std::process::id());
    assert_eq!(e["comm"], own_comm());
    assert_eq!(e["role"], "server");
    assert_eq!(
        (e["local_port"].as_u64(), e["peer_port"].as_u64()),
        (Some(sport.into()), Some(cport.into()))
    );
    assert_eq!(
        (e["local_addr"].as_str(), e["peer_addr"].as_str()),
        (Some("127.0.0.1"), Some("127.0.0.1"))
    );
    assert_eq!(e["bytes_received"], 1000);
    assert_eq!(e["rst_reason"], active_rst_reason("TCP_ABORT_ON_CLOSE"));
    assert!(
        e["conn_age_ms"].as_u64().is_some(),
        "the connection was seen established"
    );
    assert!(
        e["hint"]
            .as_str()
            .unwrap()
            .starts_with("closed with 1000 unread bytes: the request")
    );
    assert!(e["cgroup_id"].as_u64().unwrap() > 0);
}

#[test]
fn client_reading_part_of_a_response_is_blamed_as_client() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, cport, sport, pid) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let sport = l.local_addr().unwrap().port();
        // The server is another thread of this process; the client is a child thread too, but
        // the response arrives in softirq context: blame must come from the close.
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 4];
            s.read_exact(&mut req).unwrap();
            s.write_all(&vec![1u8; RESPONSE]).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        let mut c = TcpStream::connect(("127.0.0.1", sport)).unwrap();
        let cport = c.local_addr().unwrap().port();
        c.write_all(b"GET\n").unwrap();
        let mut head = [0u8; 100];
        c.read_exact(&mut head).unwrap();
        wait_queued(&c, RESPONSE - 100);
        drop(c);
        server.join().unwrap();
        (ns, cport, sport, std::process::id())
    });
    let evs = events(&agent, ns, 1);
    assert_eq!(evs.len(), 1, "{evs:#?}");
    let e = &evs[0];
    assert_eq!(e["kind"], "rst_on_close");
    assert_eq!(e["role"], "client");
    assert_eq!(e["pid"], pid);
    assert_eq!(e["unread_bytes"], RESPONSE - 100);
    assert_eq!(e["local_port"], cport);
    assert_eq!(e["peer_port"], sport);
    assert!(
        e["hint"]
            .as_str()
            .unwrap()
            .contains("the response was not fully read")
    );
}

#[test]
fn graceful_closes_report_nothing() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, aborts) = in_netns(|ns| {
        let before = tcp_ext("TCPAbortOnClose");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        for server_first in [false, true] {
            let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"pong").unwrap();
            c.read_exact(&mut buf).unwrap();
            let (mut first, mut second) = if server_first { (s, c) } else { (c, s) };
            first.shutdown(Shutdown::Write).unwrap();
            // The other side reads the FIN (CLOSE_WAIT, FIN consumed), then closes.
            assert_eq!(second.read(&mut buf).unwrap(), 0);
            drop(second);
            assert_eq!(first.read(&mut buf).unwrap(), 0);
            drop(first);
        }
        // Unread data, but the peer already finished: FIN_WAIT2 -> TIME_WAIT hands the socket
        // over in softirq, and the later close sends no RST (the kernel counts no abort).
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        s.write_all(&[5u8; 700]).unwrap();
        drop(s);
        wait_queued(&c, 700);
        std::thread::sleep(Duration::from_millis(50));
        drop(c);
        (ns, tcp_ext("TCPAbortOnClose") - before)
    });
    assert_eq!(aborts, 0);
    let evs = agent.events(ns, 1, Duration::from_secs(1), Duration::ZERO);
    assert!(
        evs.is_empty(),
        "graceful closes must not be reported: {evs:#?}"
    );
}

#[test]
fn linger_zero_is_a_linger_abort_but_unread_data_wins() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, ports) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        // Nothing unread, SO_LINGER 0: a deliberate abort.
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        set_linger(&c, 0);
        let linger_port = c.local_addr().unwrap().port();
        drop(c);
        drop(s);
        // Unread bytes and SO_LINGER 0: the kernel counts AbortOnClose, so do we.
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.write_all(&[1u8; 300]).unwrap();
        wait_queued(&s, 300);
        set_linger(&s, 0);
        let unread_port = s.local_addr().unwrap().port();
        let unread_peer = c.local_addr().unwrap().port();
        drop(s);
        (ns, (linger_port, unread_port, unread_peer))
    });
    let evs = events(&agent, ns, 2);
    assert_eq!(evs.len(), 2, "{evs:#?}");
    let linger = of_kind(&evs, "linger_abort");
    assert_eq!(linger.len(), 1, "{evs:#?}");
    assert_eq!(linger[0]["local_port"], ports.0);
    assert_eq!(linger[0]["unread_bytes"], 0);
    assert_eq!(linger[0]["role"], "client");
    assert!(linger[0]["hint"].as_str().unwrap().contains("SO_LINGER"));
    let rst = of_kind(&evs, "rst_on_close");
    assert_eq!(rst.len(), 1, "{evs:#?}");
    assert_eq!(
        (rst[0]["local_port"].clone(), rst[0]["peer_port"].clone()),
        (ports.1.into(), ports.2.into())
    );
    assert_eq!(rst[0]["unread_bytes"], 300);
}

#[test]
fn shutdown_then_close_with_unread_body_is_blamed() {
    // What hyper and reqwest do when a response body is dropped: FIN_WAIT -> CLOSE with data.
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, cport, aborts) = in_netns(|ns| {
        let before = tcp_ext("TCPAbortOnClose");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        s.write_all(&[9u8; 500]).unwrap();
        wait_queued(&c, 500);
        let cport = c.local_addr().unwrap().port();
        drop(c);
        drop(s);
        (ns, cport, tcp_ext("TCPAbortOnClose") - before)
    });
    assert_eq!(aborts, 1);
    let evs = events(&agent, ns, 1);
    assert_eq!(evs.len(), 1, "{evs:#?}");
    assert_eq!(evs[0]["kind"], "rst_on_close");
    assert_eq!(evs[0]["unread_bytes"], 500);
    assert_eq!(evs[0]["local_port"], cport);
    assert_eq!(evs[0]["role"], "client");
}

#[test]
fn ipv6_works_like_ipv4() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&[]);
    let (ns, (sport, cport)) = in_netns(|ns| (ns, server_closes_unread("[::1]:0", 4096)));
    let evs = events(&agent, ns, 1);
    assert_eq!(evs.len(), 1, "{evs:#?}");
    let e = &evs[0];
    assert_eq!(
        (e["local_addr"].as_str(), e["peer_addr"].as_str()),
        (Some("::1"), Some("::1"))
    );
    assert_eq!(
        (e["local_port"].clone(), e["peer_port"].clone()),
        (sport.into(), cport.into())
    );
    assert_eq!(e["unread_bytes"], 4096);
    assert_eq!(e["role"], "server");
}
