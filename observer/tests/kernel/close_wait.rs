//! CLOSE_WAIT leaks on real sockets: a pooled client and a stuck server, reported once past the
//! threshold and resolved when closed; entry times that survive an agent restart; sockets found
//! at start-up; the tracked set against `ss`, more sockets than one scan reports;
//! a slot table too small for the sockets, whose state then lives in the overflow map;
//! redis-server's idle timeout against a real client pool; the read hook attached on demand.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::support::{
    Agent, PinDir, in_netns, of_kind, own_comm, patience, patience_secs, require_bpf, sample,
    scrape, wait_metrics, wait_queued,
};

/// Events of `kind` once `n` of them arrived (or the wait ran out).
fn wait_kind(agent: &Agent, ns: u64, kind: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + patience_secs(15);
    loop {
        let evs = agent.events(ns, 0, Duration::ZERO, Duration::ZERO);
        let got: Vec<Value> = of_kind(&evs, kind).into_iter().cloned().collect();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ms(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn pooled_client_is_reported_once_then_resolved() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--close-wait-threshold", "1s"]);
    let (ns, cport, held_ms) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        // The server closes an idle pooled connection; the client pool never notices.
        drop(s);
        let entered = Instant::now();
        std::thread::sleep(patience(Duration::from_millis(2800)));
        let cport = c.local_addr().unwrap().port();
        drop(c);
        (ns, cport, entered.elapsed().as_millis() as u64)
    });
    let leaks = wait_kind(&agent, ns, "close_wait_leak", 1);
    let resolved = wait_kind(&agent, ns, "close_wait_resolved", 1);
    let all = agent.events(ns, 0, Duration::ZERO, Duration::from_millis(500));
    assert_eq!(
        all.len(),
        2,
        "one leak and one resolved, nothing else: {all:#?}"
    );
    let (leak, done) = (&leaks[0], &resolved[0]);
    assert_eq!(leak["pid"], std::process::id());
    assert_eq!(leak["role"], "client");
    assert_eq!(leak["local_port"], cport);
    assert_eq!(leak["unread_bytes"], 0);
    assert_eq!(leak["close_wait_lower_bound"], false);
    assert!(
        (1000..held_ms).contains(&ms(&leak["close_wait_ms"])),
        "{leak}"
    );
    assert_eq!(done["pid"], std::process::id());
    assert_eq!(done["local_port"], cport);
    let total = ms(&done["close_wait_ms"]);
    assert!(
        u128::from(total.abs_diff(held_ms)) < patience(Duration::from_millis(250)).as_millis(),
        "resolved after {total} ms, held {held_ms} ms"
    );
    assert!(
        done["hint"]
            .as_str()
            .unwrap()
            .starts_with(&format!("closed by its owner after {}s", total / 1000)),
        "{done}"
    );
}

#[test]
fn stuck_server_holds_unread_bytes_and_last_read_predates_the_fin() {
    if !require_bpf() {
        return;
    }
    // The read before the FIN is seen only with the read hook on from the start.
    let agent = Agent::start(&["--close-wait-threshold", "1s", "--read-hook", "always"]);
    let (ns, sport) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[1u8; 100]).unwrap();
        let mut first = [0u8; 100];
        s.read_exact(&mut first).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // The handler then hangs; the client sends more and gives up.
        c.write_all(&[2u8; 4000]).unwrap();
        wait_queued(&s, 4000);
        drop(c);
        std::thread::sleep(patience(Duration::from_millis(2500)));
        let sport = s.local_addr().unwrap().port();
        drop(s);
        (ns, sport)
    });
    let leaks = wait_kind(&agent, ns, "close_wait_leak", 1);
    assert_eq!(leaks.len(), 1, "{leaks:#?}");
    let leak = &leaks[0];
    assert_eq!(leak["role"], "server");
    assert_eq!(leak["local_port"], sport);
    assert_eq!(leak["pid"], std::process::id());
    assert_eq!(leak["unread_bytes"], 4000);
    let (age, last_read) = (ms(&leak["close_wait_ms"]), ms(&leak["last_read_ms_ago"]));
    assert!(
        last_read >= age + 250,
        "the last read came before the FIN: {leak}"
    );
    assert!(
        leak["hint"]
            .as_str()
            .unwrap()
            .contains("holds 4000 unread bytes"),
        "{leak}"
    );
    let done = wait_kind(&agent, ns, "close_wait_resolved", 1);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["unread_bytes"], 4000);
    let rst = wait_kind(&agent, ns, "rst_on_close", 1);
    assert_eq!(rst.len(), 1, "closing with the unread bytes aborts too");
}

/// Reads of one socket by one thread in quick succession update its entry once (the read hook
/// remembers the last reads on each CPU for 10 ms), and a read after a pause updates it again:
/// the leak's last read is the last read, to within that window.
#[test]
fn last_read_is_the_last_read_through_bursts_of_reads() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--close-wait-threshold", "1s", "--read-hook", "always"]);
    let (ns, gap_ms) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut one = [0u8; 1];
        // A burst of 200 one-byte reads, then one more read after a pause.
        c.write_all(&[1u8; 200]).unwrap();
        wait_queued(&s, 200);
        for _ in 0..200 {
            s.read_exact(&mut one).unwrap();
        }
        std::thread::sleep(Duration::from_millis(600));
        c.write_all(&[2u8; 1]).unwrap();
        wait_queued(&s, 1);
        s.read_exact(&mut one).unwrap();
        let last = Instant::now();
        std::thread::sleep(Duration::from_millis(400));
        let gap = last.elapsed().as_millis() as u64;
        drop(c);
        std::thread::sleep(patience(Duration::from_millis(2500)));
        drop(s);
        (ns, gap)
    });
    let leaks = wait_kind(&agent, ns, "close_wait_leak", 1);
    assert_eq!(leaks.len(), 1, "{leaks:#?}");
    let leak = &leaks[0];
    // The FIN came `gap` after the last read (600 ms more had the pause's read been skipped).
    let before_fin = ms(&leak["last_read_ms_ago"]) - ms(&leak["close_wait_ms"]);
    assert!(
        before_fin.abs_diff(gap_ms) <= 30,
        "last read {before_fin} ms before the FIN, {gap_ms} ms by the test's clock: {leak}"
    );
}

/// The entry time survives a restart: the pinned map keeps it, and an agent that stops gives
/// the sockets it has not promoted yet their entries first.
#[test]
fn a_restarted_agent_keeps_the_true_entry_time() {
    if !require_bpf() {
        return;
    }
    let pins = PinDir::new();
    let first = Agent::start_pinned(&pins, &["--close-wait-threshold", "1h"]);
    // After the first scan (at start-up), well before the next (a second later).
    std::thread::sleep(Duration::from_millis(300));
    let (ns, held, entered) = in_netns(|ns| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        drop(l.accept().unwrap());
        (ns, c, Instant::now())
    });
    // Stopped well within a scan interval: the socket has its time in `SOCKS` only, and the
    // stopping agent's last promotion gives it its pinned entry.
    std::thread::sleep(Duration::from_millis(200));
    let (status, log) = first.stop();
    assert!(status.success());
    assert!(log.contains("promoted by iter/tcp"), "{log}");
    let stopped_after = entered.elapsed().as_millis() as u64;
    let second = Agent::start_pinned(&pins, &["--close-wait-threshold", "2s"]);
    let leaks = wait_kind(&second, ns, "close_wait_leak", 1);
    assert_eq!(leaks.len(), 1);
    let leak = &leaks[0];
    assert_eq!(
        leak["close_wait_lower_bound"], false,
        "known from the pinned map: {leak}"
    );
    assert_eq!(leak["local_port"], held.local_addr().unwrap().port());
    assert!(
        ms(&leak["close_wait_ms"]) >= stopped_after,
        "age counts from the original entry ({stopped_after} ms before the restart): {leak}"
    );
}

#[test]
fn sockets_in_close_wait_before_any_agent_are_discovered() {
    if !require_bpf() {
        return;
    }
    // The namespace must stay entered by a live thread for start-up discovery to list it.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let scenario = std::thread::spawn(move || {
        in_netns(move |ns| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.write_all(&[7u8; 300]).unwrap();
            drop(s);
            wait_queued(&c, 300);
            ready_tx.send((ns, c.local_addr().unwrap().port())).unwrap();
            close_rx.recv().unwrap();
            drop(c);
        });
    });
    let (ns, cport) = ready_rx.recv().unwrap();
    let agent = Agent::start(&["--close-wait-threshold", "1s"]);
    let leaks = wait_kind(&agent, ns, "close_wait_leak", 1);
    assert_eq!(leaks.len(), 1, "found at start-up and reported once");
    let leak = &leaks[0];
    assert_eq!(leak["close_wait_lower_bound"], true, "{leak}");
    assert_eq!(leak["local_port"], cport);
    assert_eq!(leak["unread_bytes"], 300);
    assert_eq!(
        leak["pid"],
        std::process::id(),
        "owner found through /proc: {leak}"
    );
    close_tx.send(()).unwrap();
    scenario.join().unwrap();
    let done = wait_kind(&agent, ns, "close_wait_resolved", 1);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["close_wait_lower_bound"], true);
    assert_eq!(done[0]["pid"], std::process::id());
}

/// Raises this process's open-file limit to at least `n` (up to the hard limit).
fn raise_file_limit(n: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim), 0);
        lim.rlim_cur = lim.rlim_cur.max((n as libc::rlim_t).min(lim.rlim_max));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim), 0);
    }
}

/// `ss -Htan state close-wait` in the calling thread's namespace: (local port, peer port).
fn ss_close_wait() -> BTreeSet<(u16, u16)> {
    let out = Command::new("ss")
        .args(["-Htan", "state", "close-wait"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let port = |s: &str| s.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (port(f[2]), port(f[3]))
        })
        .collect()
}

/// `n` client sockets of a listener on `addr` in CLOSE_WAIT, in the calling thread's namespace
/// (each accepted end closed at once): the listener's port, the clients, and what `ss` lists.
fn clients_in_close_wait(addr: &str, n: usize) -> (u16, Vec<TcpStream>, BTreeSet<(u16, u16)>) {
    let l = TcpListener::bind((addr, 0)).unwrap();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let c = connect_from(addr, l.local_addr().unwrap());
        drop(l.accept().unwrap());
        held.push(c);
    }
    std::thread::sleep(Duration::from_millis(100));
    (l.local_addr().unwrap().port(), held, ss_close_wait())
}

/// A connection to `to` from `from` (port chosen by the kernel): loopback connections to any
/// address come from 127.0.0.1 otherwise.
fn connect_from(from: &str, to: std::net::SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd as _;
    let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let std::net::SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let local = sockaddr(std::net::SocketAddrV4::new(from.parse().unwrap(), 0));
    let remote = sockaddr(to);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, bound and connected with addresses that outlive the calls; the fd
    // is owned by the returned stream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        assert_eq!(libc::bind(fd, (&raw const local).cast(), len), 0);
        assert_eq!(libc::connect(fd, (&raw const remote).cast(), len), 0);
        TcpStream::from_raw_fd(fd)
    }
}

/// (local port, peer port) of each event.
fn ports(events: &[Value]) -> BTreeSet<(u16, u16)> {
    events
        .iter()
        .map(|e| (ms(&e["local_port"]) as u16, ms(&e["peer_port"]) as u16))
        .collect()
}

/// More sockets than one scan reports (`LEAKS_PER_SCAN`, 4,096) cross the threshold at once:
/// the rest come with the next scans, every socket once, the set equal to what `ss` lists.
#[test]
fn the_tracked_set_equals_ss_with_5000_sockets_over_several_scans() {
    const N: usize = 5000;
    if !require_bpf() {
        return;
    }
    raise_file_limit(N + 100);
    let agent = Agent::start(&["--close-wait-threshold", "1s"]);
    let (ns, (_, held, ss)) = in_netns(|ns| (ns, clients_in_close_wait("127.0.0.1", N)));
    assert_eq!(ss.len(), N, "the scenario put {N} sockets in CLOSE_WAIT");
    let leaks = wait_kind(&agent, ns, "close_wait_leak", N);
    let tracked = ports(&leaks);
    assert_eq!(leaks.len(), N, "one leak per socket");
    assert_eq!(tracked, ss, "socket for socket, what ss lists");
    drop(held);
    assert_eq!(wait_kind(&agent, ns, "close_wait_resolved", N).len(), N);
}

/// A table of 16 slots (`--socket-slots 16`) sends nearly every socket's state to the overflow
/// map: owners, roles and connection counts come out as they do from slots, nothing is counted
/// as untracked, and the overflow's occupancy is exported.
#[test]
fn a_small_slot_table_spills_into_the_overflow_and_loses_nothing() {
    const N: usize = 400;
    if !require_bpf() {
        return;
    }
    raise_file_limit(2 * N + 100);
    let agent = Agent::start(&[
        "--close-wait-threshold",
        "1s",
        "--pool-interval",
        "1s",
        "--socket-slots",
        "16",
    ]);
    // 127.0.0.16 at both ends: peer labels no other test uses (their agents and this one see
    // every socket).
    let (ns, (port, held, ss)) = in_netns(|ns| (ns, clients_in_close_wait("127.0.0.16", N)));
    assert_eq!(ss.len(), N, "the scenario put {N} sockets in CLOSE_WAIT");
    let leaks = wait_kind(&agent, ns, "close_wait_leak", N);
    assert_eq!(leaks.len(), N, "one leak per socket");
    for leak in &leaks {
        // Both come from the socket's recorded state, not from the task at hand.
        assert_eq!(leak["pid"], std::process::id(), "{leak}");
        assert_eq!(leak["role"], "client", "{leak}");
    }
    let tracked = ports(&leaks);
    assert_eq!(tracked, ss, "socket for socket, what ss lists");
    // 16 slots hold 16 sockets at most: the rest are in the overflow, and the metric says so
    // (at least: the sockets of tests running beside this one spill there too).
    let overflow = |t: &str| sample(t, "observer_map_entries", &[("map", "SOCKS")]);
    let text = scrape(&agent.url);
    assert!(
        overflow(&text).is_some_and(|n| n >= (N - 16) as f64),
        "{text}"
    );
    drop(held);
    assert_eq!(wait_kind(&agent, ns, "close_wait_resolved", N).len(), N);
    let comm = own_comm();
    let peer = format!("127.0.0.16:{port}");
    let client = [
        ("comm", comm.as_str()),
        ("peer", peer.as_str()),
        ("role", "client"),
    ];
    let server = [
        ("comm", comm.as_str()),
        ("peer", "127.0.0.16"),
        ("role", "server"),
    ];
    // Each close is counted in the entry its socket's state names, except a state change the
    // kernel did not run the program for: it was already running on that CPU (a softirq
    // interrupting it in task context, which 6.1 skips), and says so in
    // `recursion_misses`, which this agent also counts for the tests running beside it.
    let closed = |t: &str, who: &[(&str, &str)]| {
        sample(t, "observer_connections_closed_total", who).unwrap_or(0.0)
    };
    let text = wait_metrics(
        &agent.url,
        Duration::from_secs(15),
        "every connection counted closed on both ends",
        |t| {
            let missed = sample(
                t,
                "observer_program_recursion_misses_total",
                &[("program", "state_btf")],
            )
            .unwrap_or(0.0);
            [&client, &server]
                .iter()
                .all(|who| closed(t, *who) <= N as f64 && closed(t, *who) + missed >= N as f64)
        },
    );
    assert_eq!(
        sample(
            &text,
            "observer_events_lost_total",
            &[("source", "socks_map_full")]
        ),
        Some(0.0),
        "{text}"
    );
}

#[test]
fn redis_idle_timeout_leaves_a_python_pool_in_close_wait() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--close-wait-threshold", "1s"]);
    let (ns, py_pid) = in_netns(|ns| {
        let port = "16379";
        let mut redis = Command::new("redis-server")
            .args([
                "--port",
                port,
                "--bind",
                "127.0.0.1",
                "--timeout",
                "1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + patience_secs(10);
        while TcpStream::connect(("127.0.0.1", 16379)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // A pool that pings once, then sits idle past redis's timeout and never notices.
        let script = format!(
            "import redis, time\nr = redis.Redis(host='127.0.0.1', port=16379)\nr.ping()\ntime.sleep({})\n",
            patience_secs(5).as_secs()
        );
        let mut py = Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .spawn()
            .expect("python3 redis");
        let pid = py.id();
        assert!(py.wait().unwrap().success());
        let _ = redis.kill();
        let _ = redis.wait();
        (ns, pid)
    });
    let leaks = wait_kind(&agent, ns, "close_wait_leak", 1);
    let leak = leaks
        .iter()
        .find(|e| e["pid"] == py_pid)
        .unwrap_or_else(|| panic!("no leak for the python pool ({py_pid}): {leaks:#?}"));
    assert_eq!(leak["comm"], "python3");
    assert_eq!(leak["peer_port"], 16379);
    assert_eq!(leak["role"], "client");
    assert!(ms(&leak["close_wait_ms"]) >= 1000);
    let done = wait_kind(&agent, ns, "close_wait_resolved", 1);
    assert!(
        done.iter().any(|e| e["pid"] == py_pid),
        "python exiting closes it: {done:#?}"
    );
}

/// By default the read hook runs only once a socket has waited in CLOSE_WAIT: a read before
/// that is not seen (the leak's last read is unknown), a read after it is.
#[test]
fn the_read_hook_is_attached_while_a_socket_waits() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--close-wait-threshold", "6s"]);
    let reads = |text: &str| sample(text, "observer_probe_attached", &[("purpose", "reads")]);
    assert_eq!(reads(&scrape(&agent.url)), Some(0.0), "detached at start");
    let (waiting_tx, waiting_rx) = mpsc::channel();
    let (attached_tx, attached_rx) = mpsc::channel::<()>();
    let (read_tx, read_rx) = mpsc::channel();
    let (reported_tx, reported_rx) = mpsc::channel::<()>();
    let scenario = std::thread::spawn(move || {
        in_netns(move |ns| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let servers: Vec<TcpStream> = (0..2)
                .map(|_| {
                    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                    let (mut s, _) = l.accept().unwrap();
                    c.write_all(&[1u8; 100]).unwrap();
                    let mut got = [0u8; 100];
                    s.read_exact(&mut got).unwrap();
                    c.write_all(&[2u8; 50]).unwrap();
                    wait_queued(&s, 50);
                    // The peer leaves: CLOSE_WAIT, the read so far unseen.
                    drop(c);
                    s
                })
                .collect();
            waiting_tx.send(()).unwrap();
            attached_rx.recv().unwrap();
            // Only the second socket is read once the hook runs.
            let mut rest = [0u8; 50];
            (&servers[1]).read_exact(&mut rest).unwrap();
            // Told apart by the peer's port: the local one is the listener's.
            let ports: Vec<u16> = servers
                .iter()
                .map(|s| s.peer_addr().unwrap().port())
                .collect();
            read_tx.send((ns, ports)).unwrap();
            // Held in CLOSE_WAIT until both are reported, however slow the scans.
            reported_rx.recv().unwrap();
            drop(servers);
        });
    });
    waiting_rx.recv().unwrap();
    wait_metrics(
        &agent.url,
        Duration::from_secs(10),
        "read hook attached",
        |t| reads(t) == Some(1.0),
    );
    attached_tx.send(()).unwrap();
    let (ns, ports) = read_rx.recv().unwrap();
    let leaks = wait_kind(&agent, ns, "close_wait_leak", 2);
    reported_tx.send(()).unwrap();
    scenario.join().unwrap();
    assert_eq!(leaks.len(), 2, "{leaks:#?}");
    let leak = |port: u16| {
        leaks
            .iter()
            .find(|l| l["peer_port"] == port)
            .unwrap()
            .clone()
    };
    let (unseen, seen) = (&leak(ports[0]), &leak(ports[1]));
    assert_eq!(unseen["unread_bytes"], 50, "{unseen}");
    assert_eq!(
        unseen["last_read_ms_ago"],
        Value::Null,
        "read before the hook: {unseen}"
    );
    assert_eq!(seen["unread_bytes"], 0, "{seen}");
    assert!(
        ms(&seen["last_read_ms_ago"]) < ms(&seen["close_wait_ms"]),
        "read in CLOSE_WAIT, with the hook attached: {seen}"
    );
    let (status, log) = agent.stop();
    assert!(status.success());
    assert!(
        log.contains("read hook attached: a socket has waited in CLOSE_WAIT"),
        "{log}"
    );
}
