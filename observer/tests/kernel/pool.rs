//! Pool health against real sockets in a namespace of the test's own: churn versus keep-alive,
//! an explosion of established connections (checked against `ss`), ephemeral-port pressure
//! before `EADDRNOTAVAIL`, TIME_WAIT attributed to the first closer (checked against `ss`),
//! `wrk` against `nginx` with keep-alive on and off. (10,000 distinct peers: `tests/cardinality.rs`.)
//!
//! Every scenario uses ports of its own: the agent sees the whole host, and its series are
//! told apart by their peer label.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::support::{
    Agent, in_netns, own_comm, patience, patience_secs, require_bpf, sample, scrape, wait_metrics,
};

const PYTHON: &str = "/usr/bin/python3";

/// Stored events of `kind` in `netns` (from the API), waiting up to `timeout` for `done` to
/// accept them.
fn events_of(
    url: &str,
    netns: u64,
    kind: &str,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + patience(timeout);
    loop {
        let body: Value = ureq::get(&format!("{url}/api/v1/events?kind={kind}&limit=1000"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap();
        let found: Vec<Value> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["netns"] == netns)
            .cloned()
            .collect();
        if done(&found) || Instant::now() >= deadline {
            return found;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A thread kept in a network namespace of its own, running closures sent to it: the test's
/// own thread stays outside, where the agent's API is.
struct Worker {
    jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
    netns: u64,
}

impl Worker {
    fn new() -> Self {
        let (jobs, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let (ino_tx, ino_rx) = mpsc::channel();
        thread::spawn(move || {
            in_netns(move |ino| {
                ino_tx.send(ino).unwrap();
                for job in rx {
                    job();
                }
            });
        });
        Self {
            jobs,
            netns: ino_rx.recv().unwrap(),
        }
    }

    /// Runs `f` in the namespace and returns its result (panics if `f` did).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .unwrap();
        rx.recv().expect("the job panicked in the namespace")
    }
}

/// Lines `ss -Htn state <state> <filter>` prints in the calling thread's namespace.
fn ss_count(state: &str, filter: &str) -> usize {
    let out = Command::new("ss")
        .args(["-Htn", "state", state, filter])
        .output()
        .expect("ss (iproute2)");
    assert!(out.status.success(), "ss: {out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A server on `port` that answers each line with `ok\n` until the client closes, then
/// closes (so the client is the first to close).
fn echo_server(port: u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    if line.is_err() || w.write_all(b"ok\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A server on `port` that accepts and holds every connection.
fn holding_server(port: u16) {
    holding_server_on(Ipv4Addr::LOCALHOST.into(), port);
}

/// A server on `ip`:`port` that accepts and holds every connection.
fn holding_server_on(ip: std::net::IpAddr, port: u16) {
    let listener = TcpListener::bind((ip, port)).unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            held.push(conn);
        }
    });
}

fn request(conn: &mut BufReader<TcpStream>) {
    conn.get_mut().write_all(b"ping\n").unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    assert_eq!(line, "ok\n");
}

/// Raises this process's open-file limit to the hard limit (the tests hold many sockets).
fn more_files() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const l), 0);
    }
}

#[test]
fn short_connections_churn_and_keep_alive_does_not() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--pool-interval", "1s", "--churn-rate", "100"]);
    let url = agent.url.clone();
    let (netns, churned, kept_conn) = in_netns(move |netns| {
        let (churned, kept) = (24_001, 24_002);
        echo_server(churned);
        echo_server(kept);
        for _ in 0..1000 {
            let mut c = BufReader::new(TcpStream::connect((Ipv4Addr::LOCALHOST, churned)).unwrap());
            request(&mut c);
        }
        let mut c = BufReader::new(TcpStream::connect((Ipv4Addr::LOCALHOST, kept)).unwrap());
        for _ in 0..1000 {
            request(&mut c);
        }
        (netns, churned, c)
    });
    let kept = kept_conn.get_ref().peer_addr().unwrap().port();
    let comm = own_comm();
    let peer = |port: u16| format!("127.0.0.1:{port}");
    let (churned_peer, kept_peer) = (peer(churned), peer(kept));
    let client = |p: &'static str| [("comm", comm.as_str()), ("peer", p), ("role", "client")];
    let churned_labels = client(churned_peer.clone().leak());
    let kept_labels = client(kept_peer.clone().leak());
    let text = wait_metrics(&url, Duration::from_secs(15), "1000 closes counted", |t| {
        sample(
            t,
            "observer_connection_lifetime_seconds_count",
            &churned_labels,
        ) == Some(1000.0)
            && sample(t, "observer_connections_opened_total", &kept_labels) == Some(1.0)
    });
    // Short connections: the lifetimes sit in the lowest buckets (milliseconds on loopback;
    // a loaded test machine stretches some).
    let bucket = |le: &'static str| {
        let mut l = churned_labels.to_vec();
        l.push(("le", le));
        sample(&text, "observer_connection_lifetime_seconds_bucket", &l).unwrap()
    };
    assert!(
        bucket("0.064") >= 500.0,
        "median: {} under 64 ms",
        bucket("0.064")
    );
    assert!(bucket("1.024") >= 990.0, "{} under 1 s", bucket("1.024"));
    assert!((bucket("+Inf") - 1000.0).abs() < 0.5);
    assert_eq!(
        sample(&text, "observer_connections_opened_total", &churned_labels),
        Some(1000.0)
    );
    // The keep-alive connection is still open: nothing closed, one established.
    assert_eq!(
        sample(
            &text,
            "observer_connection_lifetime_seconds_count",
            &kept_labels
        ),
        None
    );
    assert_eq!(
        sample(&text, "observer_connections_established", &kept_labels),
        Some(1.0)
    );

    let churn = events_of(
        &url,
        netns,
        "connection_churn",
        Duration::from_secs(10),
        |found| found.iter().any(|e| e["role"] == "client"),
    );
    let client_churn: Vec<&Value> = churn.iter().filter(|e| e["role"] == "client").collect();
    assert_eq!(client_churn.len(), 1, "{churn:#?}");
    let e = client_churn[0];
    assert_eq!(e["peer_port"], churned);
    assert_eq!(e["pid"], std::process::id());
    assert_eq!(e["comm"], comm);
    assert!(
        e["figures"]["opened_per_second"].as_f64().unwrap() >= 100.0,
        "{e:#}"
    );
    assert!(
        e["figures"]["median_lifetime_ms"].as_u64().unwrap() <= 64,
        "{e:#}"
    );
    assert!(
        e["hint"]
            .as_str()
            .unwrap()
            .contains("not reusing connections")
    );
    // The server side of the same churn is named too; the keep-alive peer never is.
    assert!(
        churn
            .iter()
            .any(|e| e["role"] == "server" && e["peer_addr"] == "127.0.0.1")
    );
    assert!(churn.iter().all(|e| e["peer_port"] != kept), "{churn:#?}");
}

#[test]
fn an_explosion_of_connections_is_named_and_matches_ss() {
    if !require_bpf() {
        return;
    }
    more_files();
    let agent = Agent::start(&["--pool-interval", "1s", "--explosion-threshold", "500"]);
    let port = 24_003;
    let ns = Worker::new();
    let mut client = ns.run(move || {
        holding_server(port);
        // A real process holding 500 connections to one peer (a pool per coroutine).
        Command::new(PYTHON)
            .args([
                "-c",
                &format!(
                    "import socket, sys\n\
                     held = [socket.create_connection(('127.0.0.1', {port})) for _ in range(500)]\n\
                     print('ready', flush=True)\n\
                     sys.stdin.read()\n"
                ),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3")
    });
    let mut ready = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let from_ss = ns.run(move || ss_count("established", &format!("dport = :{port}")));
    assert_eq!(from_ss, 500, "ss counts the 500 connections");
    let labels = [
        ("comm", "python3"),
        ("peer", "127.0.0.1:24003"),
        ("role", "client"),
    ];
    let text = wait_metrics(
        &agent.url,
        Duration::from_secs(15),
        "500 established",
        |t| sample(t, "observer_connections_established", &labels) == Some(500.0),
    );
    assert_eq!(
        sample(
            &text,
            "observer_connections_established",
            &[("peer", "127.0.0.1:24003"), ("role", "client")]
        ),
        Some(from_ss as f64),
        "the gauge equals ss"
    );
    // Held for several more scans: still one event.
    thread::sleep(Duration::from_secs(3));
    let events = events_of(
        &agent.url,
        ns.netns,
        "connection_explosion",
        Duration::from_secs(5),
        |found| !found.is_empty(),
    );
    drop(client.stdin.take());
    let _ = client.wait();
    assert_eq!(events.len(), 1, "one event while it persists: {events:#?}");
    let e = &events[0];
    assert_eq!(e["pid"], client.id());
    assert_eq!(e["comm"], "python3");
    assert_eq!(e["peer_addr"], "127.0.0.1");
    assert_eq!(e["peer_port"], port);
    assert_eq!(e["figures"]["established"], 500);
    assert_eq!(e["figures"]["threshold"], 500.0);
}

#[test]
fn port_pressure_is_reported_before_connect_fails() {
    if !require_bpf() {
        return;
    }
    more_files();
    let agent = Agent::start(&["--pool-interval", "1s", "--port-pressure-ratio", "0.8"]);
    let port = 24_005;
    let ns = Worker::new();
    let held = ns.run(move || {
        // Sysctls under /proc/sys/net answer for the opener's namespace: this thread's.
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40099").unwrap();
        holding_server(port);
        (0..85)
            .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap())
            .collect::<Vec<_>>()
    });
    let events = events_of(
        &agent.url,
        ns.netns,
        "port_pressure",
        Duration::from_secs(15),
        |found| !found.is_empty(),
    );
    assert!(!events.is_empty(), "no port_pressure at 85 of 100 ports");
    let text = scrape(&agent.url);
    // Now run out: connect fails once the 100 ports are taken.
    let (failed_at, held) = ns.run(move || {
        let mut held = held;
        loop {
            match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                Ok(c) => held.push(c),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{e}");
                    break (held.len(), held);
                }
            }
            assert!(held.len() <= 100, "more connections than ports");
        }
    });
    drop(held);
    assert_eq!(failed_at, 100, "connect fails with all 100 ports in use");
    let e = &events[0];
    assert_eq!(e["kind"], "port_pressure");
    assert_eq!(e["pid"], std::process::id());
    assert_eq!(e["local_addr"], "127.0.0.1");
    assert_eq!(e["peer_port"], port);
    assert_eq!(e["figures"]["ports_in_use"], 85);
    assert_eq!(e["figures"]["port_range"], 100);
    assert_eq!(e["figures"]["ratio"], 0.85);
    assert!(e["hint"].as_str().unwrap().contains("EADDRNOTAVAIL"));
    let pair = [("source", "127.0.0.1"), ("peer", "127.0.0.1:24005")];
    assert_eq!(
        sample(&text, "observer_ephemeral_ports_in_use", &pair),
        Some(85.0)
    );
    assert_eq!(
        sample(&text, "observer_ephemeral_ports_ratio", &pair),
        Some(0.85)
    );
}

#[test]
fn time_wait_is_attributed_to_the_first_closer_and_matches_ss() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--pool-interval", "1s"]);
    let port = 24_006;
    let ns = Worker::new();
    let from_ss = ns.run(move || {
        echo_server(port);
        // python3 closes first: its sockets go to TIME_WAIT, the server's do not.
        let out = Command::new(PYTHON)
            .args([
                "-c",
                &format!(
                    "import socket\n\
                     for _ in range(50):\n\
                     \x20   s = socket.create_connection(('127.0.0.1', {port}))\n\
                     \x20   s.sendall(b'ping\\n'); s.recv(3); s.close()\n"
                ),
            ])
            .output()
            .expect("python3");
        assert!(out.status.success(), "{out:?}");
        // The scenario itself: the client side holds every TIME_WAIT, the server none.
        assert_eq!(ss_count("time-wait", &format!("sport = :{port}")), 0);
        ss_count("time-wait", &format!("dport = :{port}"))
    });
    assert_eq!(from_ss, 50);
    let labels = [("comm", "python3"), ("peer", "127.0.0.1:24006")];
    // The gauge names the first closer (python3) and equals ss.
    wait_metrics(&agent.url, Duration::from_secs(15), "50 TIME_WAIT", |t| {
        sample(t, "observer_time_wait_sockets", &labels) == Some(from_ss as f64)
    });
}

/// Local ports of the TIME_WAIT sockets towards `port`, as `ss` lists them.
fn time_wait_ports(port: u16) -> Vec<u16> {
    let out = Command::new("ss")
        .args(["-Htn", "state", "time-wait", &format!("dport = :{port}")])
        .output()
        .expect("ss (iproute2)");
    assert!(out.status.success(), "ss: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let local = l.split_whitespace().nth(2)?;
            local.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

/// `n` connections to the echo server on `port`, each closed first by this process after one
/// ping; returns their local ports. They are made from a thread with a descriptor table of its
/// own: a child another test thread forks copies the process's table, and a socket closed here
/// while the child still holds it is closed by the child (at its exec), under its name.
fn pings_closed_first(port: u16, n: usize) -> Vec<u16> {
    thread::spawn(move || {
        // SAFETY: unshare only affects this thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_FILES) }, 0);
        (0..n)
            .map(|_| {
                let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
                c.write_all(b"ping\n").unwrap();
                let mut ok = [0u8; 3];
                c.read_exact(&mut ok).unwrap();
                c.local_addr().unwrap().port()
            })
            .collect()
    })
    .join()
    .unwrap()
}

#[test]
fn two_first_closers_towards_one_peer_each_keep_their_time_wait() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--pool-interval", "1s"]);
    let port = 24_009;
    let ns = Worker::new();
    let (mine, theirs, distinct) = ns.run(move || {
        echo_server(port);
        // python3 closes 300 connections first, this process 200, from one address to one
        // peer endpoint.
        let out = Command::new(PYTHON)
            .args([
                "-c",
                &format!(
                    "import socket\n\
                     for _ in range(300):\n\
                     \x20   s = socket.create_connection(('127.0.0.1', {port}))\n\
                     \x20   s.sendall(b'ping\\n'); s.recv(3); print(s.getsockname()[1]); s.close()\n"
                ),
            ])
            .output()
            .expect("python3");
        assert!(out.status.success(), "{out:?}");
        let python: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let own = pings_closed_first(port, 200);
        // Each process's TIME_WAIT sockets, as ss lists them. A port of python3's that this
        // process took over (loopback reuses a TIME_WAIT tuple a second old) is this
        // process's now: it closed that tuple last, and first; a tuple this process reused
        // from itself is one socket. The last sockets reach TIME_WAIT once the echo server
        // has closed its end: listed until they have.
        let distinct: std::collections::BTreeSet<u16> = own.iter().copied().collect();
        let deadline = Instant::now() + patience(Duration::from_secs(5));
        loop {
            let listed = time_wait_ports(port);
            let mine = listed.iter().filter(|p| own.contains(p)).count();
            let theirs = listed
                .iter()
                .filter(|p| python.contains(p) && !own.contains(p))
                .count();
            if mine == distinct.len() || Instant::now() > deadline {
                break (mine, theirs, distinct.len());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(
        mine == distinct && mine > 150 && theirs > 250,
        "ss lists every TIME_WAIT socket: {mine} of this process's {distinct} tuples, \
         {theirs} of python3's"
    );
    let peer = format!("127.0.0.1:{port}");
    let own = own_comm();
    // What every scrape showed, for the failure message (CI keeps its first and last lines).
    let mut seen = Vec::new();
    let deadline = Instant::now() + patience(Duration::from_secs(15));
    loop {
        let t = scrape(&agent.url);
        let now = [
            sample(
                &t,
                "observer_time_wait_sockets",
                &[("comm", "python3"), ("peer", &peer)],
            ),
            sample(
                &t,
                "observer_time_wait_sockets",
                &[("comm", &own), ("peer", &peer)],
            ),
            // Sockets whose first closer the agent does not know.
            sample(
                &t,
                "observer_time_wait_sockets",
                &[("comm", ""), ("peer", "127.0.0.1")],
            ),
            sample(
                &t,
                "observer_program_recursion_misses_total",
                &[("program", "state_btf")],
            ),
            sample(&t, "observer_socket_listing_cpu_seconds", &[]),
            sample(&t, "observer_socket_listing_duration_seconds", &[]),
            sample(&t, "observer_socket_listing_failures_total", &[]),
        ];
        if now[..2] == [Some(theirs as f64), Some(mine as f64)] {
            break;
        }
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        if Instant::now() >= deadline {
            let series: Vec<&str> = t
                .lines()
                .filter(|l| l.starts_with("observer_time_wait_sockets{") && l.contains(&peer))
                .collect();
            panic!(
                "{theirs} python3 and {mine} own TIME_WAIT never shown; each change of \
                 [python3, own, unknown closer, state misses, listing cpu s, listing s, \
                 listing failures]:\n{seen:?}\nthe peer's series at the end:\n{}",
                series.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// nginx from Debian's package on `ports` (keep-alive allowed), in the calling thread's
/// namespace; stopped on drop.
struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(ports: &[u16]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), vec![b'x'; 1024]).unwrap();
        let d = dir.path().display();
        let listen = ports.iter().fold(String::new(), |mut out, p| {
            use std::fmt::Write as _;
            let _ = write!(out, "listen 127.0.0.1:{p}; ");
            out
        });
        let conf = format!(
            "daemon off; user root; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             keepalive_requests 1000000;\n\
             server {{ {listen} root {d}; }} }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian package)");
        for p in ports {
            let deadline = Instant::now() + patience_secs(10);
            while TcpStream::connect((Ipv4Addr::LOCALHOST, *p)).is_err() {
                assert!(Instant::now() < deadline, "nginx did not start");
                thread::sleep(Duration::from_millis(20));
            }
        }
        Self { child, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its worker, which a killed master
        // leaves running (and holding its network namespace) after the run.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The requests a `wrk` report says it completed (`12345 requests in 2.00s, ...`).
fn requests(report: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"))
}

/// `wrk` for 2 s with 8 connections; `Connection: close` when not `keep_alive`. Returns its
/// report (requests, socket errors).
fn wrk(port: u16, keep_alive: bool) -> String {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c8", "-d2s"]);
    if !keep_alive {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .expect("wrk (Debian package)");
    assert!(out.status.success(), "wrk: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn wrk_against_nginx_shows_keep_alive_in_the_series() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--pool-interval", "1s", "--churn-rate", "100"]);
    let (kept, closed) = (24_007, 24_008);
    let ns = Worker::new();
    let (nginx, report) = ns.run(move || {
        let nginx = Nginx::start(&[kept, closed]);
        let report = wrk(kept, true);
        let closing = wrk(closed, false);
        (nginx, (report, closing))
    });
    let (report, closing) = report;
    assert!(
        requests(&report) > 100,
        "keep-alive made requests: {report}"
    );
    let with_close = requests(&closing) as f64;
    let opened = |t: &str, port: &str| {
        sample(
            t,
            "observer_connections_opened_total",
            &[("comm", "wrk"), ("peer", port), ("role", "client")],
        )
    };
    // State changes the kernel skipped (a program is not run again on a CPU where it is
    // running), each counted: at most that many connections are missing.
    let skipped = |t: &str| -> f64 {
        t.lines()
            .filter(|l| l.starts_with("observer_program_recursion_misses_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Connection: close is a connection per request (however many the machine managed in
    // 2 s; a QEMU guest without KVM manages a few hundred), all counted once the monitor has
    // read them; the 8 keep-alive connections close when wrk exits.
    let text = wait_metrics(
        &agent.url,
        Duration::from_secs(15),
        &format!("a connection per request with Connection: close ({with_close}); wrk:\n{closing}"),
        |t| {
            opened(t, "127.0.0.1:24008").unwrap_or(0.0) + skipped(t) >= with_close
                && sample(
                    t,
                    "observer_connections_closed_total",
                    &[
                        ("comm", "wrk"),
                        ("peer", "127.0.0.1:24007"),
                        ("role", "client"),
                    ],
                )
                .is_some()
        },
    );
    drop(nginx);
    // Keep-alive: wrk's 8 connections (plus at most a few reconnects) for all its requests.
    let kept_opened = opened(&text, "127.0.0.1:24007").unwrap();
    assert!(
        kept_opened <= 16.0,
        "{kept_opened} connections for wrk's 8 kept alive; wrk:\n{report}"
    );
    // nginx is named as the server of both (its listener's owner).
    assert!(
        sample(
            &text,
            "observer_connections_opened_total",
            &[("comm", "nginx"), ("role", "server")]
        )
        .is_some(),
        "{text}"
    );
    let churn = events_of(
        &agent.url,
        ns.netns,
        "connection_churn",
        Duration::from_secs(10),
        |found| {
            found
                .iter()
                .any(|e| e["comm"] == "wrk" && e["peer_port"] == closed)
        },
    );
    assert!(
        churn
            .iter()
            .any(|e| e["comm"] == "wrk" && e["peer_port"] == closed),
        "{churn:#?}"
    );
    assert!(churn.iter().all(|e| e["peer_port"] != kept), "{churn:#?}");
}

#[test]
fn a_listener_older_than_the_agent_names_its_connections() {
    if !require_bpf() {
        return;
    }
    let port = 24_011;
    let ns = Worker::new();
    // Listening before the agent starts: the programs never see this listen().
    let listener = ns.run(move || TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap());
    let agent = Agent::start(&["--pool-interval", "1s"]);
    // The monitor lists listeners as it starts, right after the agent is ready.
    thread::sleep(Duration::from_secs(1));
    ns.run(move || {
        // From 127.0.0.2, a client address no other scenario uses.
        let out = Command::new(PYTHON)
            .args([
                "-c",
                &format!(
                    "import socket\n\
                     for _ in range(3):\n\
                     \x20   socket.create_connection(('127.0.0.1', {port}), source_address=('127.0.0.2', 0)).close()\n"
                ),
            ])
            .output()
            .expect("python3");
        assert!(out.status.success(), "{out:?}");
    });
    let comm = own_comm();
    let labels = [
        ("comm", comm.as_str()),
        ("peer", "127.0.0.2"),
        ("role", "server"),
    ];
    let text = wait_metrics(
        &agent.url,
        Duration::from_secs(15),
        "3 accepted connections named",
        |t| sample(t, "observer_connections_opened_total", &labels) == Some(3.0),
    );
    // What the kernel skipped is exported per program (read from bpf_prog_info).
    assert!(
        sample(
            &text,
            "observer_program_recursion_misses_total",
            &[("program", "state_btf")]
        )
        .is_some(),
        "{text}"
    );
    drop(listener);
}

#[test]
fn ipv6_connections_are_counted_like_ipv4() {
    if !require_bpf() {
        return;
    }
    let agent = Agent::start(&["--pool-interval", "1s"]);
    let port = 24_012;
    let ns = Worker::new();
    let held = ns.run(move || {
        holding_server_on(std::net::Ipv6Addr::LOCALHOST.into(), port);
        (0..20)
            .map(|_| TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, port)).unwrap())
            .collect::<Vec<_>>()
    });
    let comm = own_comm();
    let client = [
        ("comm", comm.as_str()),
        ("peer", "[::1]:24012"),
        ("role", "client"),
    ];
    let server = [("comm", comm.as_str()), ("peer", "::1"), ("role", "server")];
    wait_metrics(
        &agent.url,
        Duration::from_secs(15),
        "20 IPv6 connections",
        |t| {
            sample(t, "observer_connections_established", &client) == Some(20.0)
                && sample(t, "observer_connections_established", &server) == Some(20.0)
        },
    );
    drop(held);
    wait_metrics(&agent.url, Duration::from_secs(15), "20 IPv6 closes", |t| {
        sample(t, "observer_connections_closed_total", &client) == Some(20.0)
            // 0, or gone once the idle entry is deleted.
            && sample(t, "observer_connections_established", &client).unwrap_or(0.0) == 0.0
    });
}
