//! The listeners' budgets, against real sockets and a real Python client that never reads:
//! the metrics-only listener, the connection cap, the head timeout and size cap, and the
//! in-flight cap held by an answer its client stopped reading.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use observer::events::Kind;

use super::support::{event, get, serve_with};

/// `observer_http_shed_total{reason}` in `url`'s `/metrics`.
fn shed(url: &str, reason: &str) -> u64 {
    let (_, text) = get(&format!("{url}/metrics"));
    let line = format!("observer_http_shed_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
        .parse()
        .unwrap()
}

/// Polls `f` every 50 ms until it holds; panics with `what` after `limit`.
fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn addr(url: &str) -> &str {
    url.strip_prefix("http://").unwrap()
}

#[test]
fn the_metrics_listener_serves_metrics_and_probes_only() {
    let s = serve_with(
        &["--metrics-listen", "127.0.0.1:0"],
        vec![event(Kind::RstOnClose, 1, "curl", "10.0.0.1", 80, 1)],
    );
    let m = s.metrics_url.clone().unwrap();
    let (code, text) = get(&format!("{m}/metrics"));
    assert_eq!(code, 200);
    assert!(text.contains("observer_http_shed_total"), "{text}");
    assert_eq!(get(&format!("{m}/healthz")).0, 200);
    assert_eq!(get(&format!("{m}/readyz")).0, 503);
    for route in ["/api/v1/events", "/api/v1/sockets", "/api/v1/status"] {
        assert_eq!(get(&format!("{m}{route}")).0, 404, "{route} stays off it");
        assert_eq!(
            get(&format!("{}{route}", s.url)).0,
            200,
            "{route} on --listen"
        );
    }
}

#[test]
fn a_connection_over_the_cap_gets_503_and_is_counted() {
    let s = serve_with(&["--http-max-connections", "2"], vec![]);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr(&s.url)).unwrap())
        .collect();
    // Accepted in order: the third connection is over the cap once both are served.
    thread::sleep(Duration::from_millis(200));
    // It sends its request at once, as clients do: the 503 still arrives whole.
    let mut third = TcpStream::connect(addr(&s.url)).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    third.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(
        answer.ends_with(r#"{"error":"too many connections (--http-max-connections)"}"#),
        "{answer}"
    );
    drop(held);
    // The held connections' slots come back when the server sees them close.
    until(Duration::from_secs(10), "slots freed", || {
        get(&format!("{}/healthz", s.url)).0 == 200
    });
    assert_eq!(shed(&s.url, "connections"), 1);
}

#[test]
fn a_head_that_never_ends_is_cut_and_a_huge_one_refused() {
    let s = serve_with(&["--http-header-timeout", "1s"], vec![]);
    // One header byte every 100 ms, for up to 20 s: the server closes it first.
    let mut slow = TcpStream::connect(addr(&s.url)).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ")
        .unwrap();
    let started = Instant::now();
    let cut = loop {
        thread::sleep(Duration::from_millis(100));
        if slow.write_all(b"a").is_err() {
            break true;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break false;
        }
    };
    assert!(cut, "a head dripping for 20 s was not cut");
    assert_eq!(shed(&s.url, "header_timeout"), 1);
    // A head larger than 16 KiB, sent at once: 431.
    let mut huge = TcpStream::connect(addr(&s.url)).unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = huge.write_all(head.as_bytes());
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}

#[test]
fn a_client_that_stops_reading_holds_its_slot_until_cut() {
    // An answer of several MB: more than the sockets between server and client can hold.
    let events = (0..10_000)
        .map(|i| event(Kind::RstOnClose, i, "curl", "10.0.0.1", 80, u64::from(i)))
        .collect();
    let s = serve_with(
        &["--http-max-requests", "1", "--http-header-timeout", "1s"],
        events,
    );
    let port = addr(&s.url).rsplit(':').next().unwrap().to_owned();
    let mut client = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket, time\n\
                 s = socket.socket()\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n\
                 s.connect(('127.0.0.1', {port}))\n\
                 s.sendall(b'GET /api/v1/events?limit=10000 HTTP/1.1\\r\\nhost: x\\r\\n\\r\\n')\n\
                 print('sent', flush=True)\n\
                 time.sleep(60)\n"
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "sent\n");
    // While its answer waits to be read, the one slot is taken: 429, with a JSON reason.
    let mut busy = None;
    until(
        Duration::from_secs(10),
        "a request shed while the slot is held",
        || {
            let (code, body) = get(&format!("{}/healthz", s.url));
            busy = (code == 429).then_some(body);
            busy.is_some()
        },
    );
    let body: serde_json::Value = serde_json::from_str(&busy.unwrap()).unwrap();
    assert_eq!(
        body["error"],
        "too many requests in flight (--http-max-requests)"
    );
    // Cut off after a second without reading: the slot comes back.
    until(
        Duration::from_secs(10),
        "the stalled answer cut off",
        || get(&format!("{}/healthz", s.url)).0 == 200,
    );
    let _ = client.kill();
    let _ = client.wait();
    assert_eq!(shed(&s.url, "stalled_reader"), 1);
    assert!(shed(&s.url, "requests") >= 1);
}

#[test]
fn a_query_past_its_time_limit_is_cut_with_503_and_counted() {
    // 10,000 of 50,000 events cannot be read in a millisecond; a count can.
    let events = (0..50_000)
        .map(|i| event(Kind::RstOnClose, 7, "svc", "10.0.0.9", 80, 1_000 + i))
        .collect();
    let s = serve_with(&["--query-time-limit", "1ms"], events);
    let (status, body) = get(&format!("{}/api/v1/events?limit=10000", s.url));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--query-time-limit"), "{body}");
    let (_, text) = get(&format!("{}/metrics", s.url));
    assert!(
        text.lines()
            .any(|l| l == "observer_http_queries_cut_total 1"),
        "{text}"
    );
    // The server goes on answering.
    assert_eq!(get(&format!("{}/healthz", s.url)).0, 200);
}
