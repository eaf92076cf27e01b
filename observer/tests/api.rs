//! The HTTP API and the client CLI, without a kernel: the real router over a real SQLite
//! history fed with events (the "fake event source"), reached over loopback HTTP and through
//! the real `observer` binary.
#![expect(clippy::unwrap_used, reason = "tests panic on failure")]

use std::{fmt::Write as _, process::Command};

use observer::events::{Event, Kind};
use serde_json::Value;

#[path = "api/limits.rs"]
mod limits;
#[path = "api/serving.rs"]
mod serving;
#[path = "api/support.rs"]
mod support;

use support::{OBSERVER, event, get, ids, serve};

fn sample() -> Vec<Event> {
    vec![
        event(Kind::RstOnClose, 10, "curl", "10.0.0.1", 80, 1_000),
        event(Kind::RstOnClose, 11, "python3", "10.0.0.2", 6379, 2_000),
        event(Kind::CloseWaitLeak, 11, "python3", "10.0.0.2", 6379, 3_000),
        event(Kind::LingerAbort, 12, "envoy", "fd00::1", 443, 4_000),
    ]
}

#[test]
fn readyz_is_503_until_ready_and_healthz_always_200() {
    let s = serve(vec![]);
    assert_eq!(get(&format!("{}/healthz", s.url)).0, 200);
    assert_eq!(get(&format!("{}/readyz", s.url)).0, 503);
    s.state.set_ready();
    assert_eq!(get(&format!("{}/readyz", s.url)).0, 200);
}

#[test]
fn events_are_filtered_newest_first() {
    let s = serve(sample());
    let q = |query: &str| {
        let (code, body) = get(&format!("{}/api/v1/events{query}", s.url));
        assert_eq!(code, 200, "{query}: {body}");
        ids(&body)
    };
    assert_eq!(q(""), vec![4, 3, 2, 1]);
    assert_eq!(q("?kind=rst_on_close"), vec![2, 1]);
    assert_eq!(q("?pid=11"), vec![3, 2]);
    assert_eq!(q("?comm=curl"), vec![1]);
    assert_eq!(q("?peer=10.0.0.2:6379&kind=close_wait_leak"), vec![3]);
    assert_eq!(q("?peer=%5Bfd00::1%5D:443"), vec![4], "IPv6 peer with port");
    assert_eq!(q("?pod=web-0&namespace=shop&limit=2"), vec![4, 3]);
    assert_eq!(
        q("?since=1970-01-01T00:00:00.000002Z&until=1970-01-01T00:00:00.000003Z"),
        vec![3, 2]
    );
    assert_eq!(q("?since=10m"), Vec::<u64>::new(), "1970 is long ago");
    let (_, body) = get(&format!("{}/api/v1/events?limit=1", s.url));
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        e["events"][0]["hint"], "closed with 42 unread bytes",
        "the stored object, whole"
    );
}

#[test]
fn every_bad_parameter_is_a_400_naming_it() {
    let s = serve(sample());
    for (query, param) in [
        ("?limit=0", "limit"),
        ("?limit=-1", "limit"),
        ("?limit=10001", "limit"),
        ("?limit=99999999999999999999", "limit"),
        ("?kind=rst", "kind"),
        ("?since=yesterday", "since"),
        ("?until=12:00", "until"),
        ("?pid=-4", "pid"),
        ("?peer=300.1.1.1", "peer"),
        ("?peer=10.0.0.1:99999", "peer"),
        ("?comm=", "comm"),
        ("?limits=3", "limits"),
        ("?pid=1&pid=2", "pid"),
    ] {
        let (code, body) = get(&format!("{}/api/v1/events{query}", s.url));
        assert_eq!(code, 400, "{query}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!("invalid parameter {param}:")),
            "{query}: {msg}"
        );
    }
    for query in ["?state=established", "?min_age=soon", "?limit=0", "?what=1"] {
        let (code, body) = get(&format!("{}/api/v1/sockets{query}", s.url));
        assert_eq!(code, 400, "{query}: {body}");
    }
    let (code, body) = get(&format!("{}/nope", s.url));
    assert_eq!(code, 404);
    assert!(body.contains("no such route"));
}

#[test]
fn random_query_strings_never_break_the_agent() {
    let s = serve(sample());
    // xorshift64*: reproducible, no dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    // Every real parameter, an unknown one and an empty name.
    let keys: Vec<&str> = observer::store::query::PARAMS
        .iter()
        .copied()
        .chain(["x", ""])
        .collect();
    let alphabet: Vec<char> = "abc019:.-_[]%&=?/ +Z\u{e9}\u{0}zT".chars().collect();
    for _ in 0..3000 {
        let mut q = String::from("?");
        for i in 0..(next() % 4) {
            if i > 0 {
                q.push('&');
            }
            q.push_str(keys[(next() % keys.len() as u64) as usize]);
            q.push('=');
            for _ in 0..(next() % 12) {
                let c = alphabet[(next() % alphabet.len() as u64) as usize];
                if c.is_ascii_alphanumeric() || ":.-_".contains(c) {
                    q.push(c);
                } else {
                    let _ = write!(q, "%{:02X}", c as u32 & 0xff);
                }
            }
        }
        let (code, body) = get(&format!("{}/api/v1/events{q}", s.url));
        assert!(code == 200 || code == 400, "{q}: {code} {body}");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: not JSON ({e}): {body}"));
        assert!(
            v.get(if code == 200 { "events" } else { "error" })
                .is_some(),
            "{q}: {body}"
        );
    }
    assert_eq!(get(&format!("{}/healthz", s.url)).0, 200, "still serving");
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(OBSERVER).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_cli_prints_tables_and_json_and_names_refusals() {
    let s = serve(sample());
    let (code, out, err) = cli(&[
        "events",
        "--agent",
        &s.url,
        "--kind",
        "rst_on_close",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(out.trim()), vec![2, 1]);
    assert!(
        out.starts_with("{\"events\":[{\"id\":2,\"ts\":"),
        "the API's JSON as sent: {out}"
    );
    let (code, out, _) = cli(&["events", "--agent", &s.url, "--comm", "python3"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID  TIME"), "{out}");
    assert!(
        lines[1].starts_with("3   ") && lines[1].contains("close_wait_leak"),
        "{out}"
    );
    let (code, _, err) = cli(&["events", "--agent", &s.url, "--since", "yesterday"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "observer: error: the agent refused the request (400 Bad Request): invalid parameter since: \"yesterday\" is neither RFC 3339 nor a duration like 10m"
    );
    let (code, out, _) = cli(&["sockets", "--agent", &s.url, "--output", "json"]);
    assert_eq!((code, out.trim()), (0, "{\"sockets\":[]}"));
}

#[test]
fn an_unreachable_agent_is_one_line_and_non_zero() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for cmd in ["events", "sockets", "status"] {
        let (code, out, err) = cli(&[cmd, "--agent", &format!("http://127.0.0.1:{port}")]);
        assert_eq!(code, 1, "{cmd}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "observer: error: cannot reach the agent at http://127.0.0.1:{port}"
            )),
            "{err}"
        );
    }
}

#[test]
fn events_follow_streams_what_arrives() {
    use std::io::BufRead as _;
    let s = serve(sample());
    let mut child = Command::new(OBSERVER)
        .args([
            "events",
            "--follow",
            "--output",
            "json",
            "--agent",
            &s.url,
            "--kind",
            "rst_on_close",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_id = || {
        let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        v["id"].as_u64().unwrap()
    };
    assert_eq!(
        (next_id(), next_id()),
        (1, 2),
        "what is there, oldest first"
    );
    let mut more = vec![
        event(Kind::LingerAbort, 20, "envoy", "10.0.0.3", 80, 5_000),
        event(Kind::RstOnClose, 21, "curl", "10.0.0.3", 80, 6_000),
    ];
    s.store.lock().unwrap().append(&mut more).unwrap();
    assert_eq!(next_id(), 6, "then new events of the kind, as they come");
    // A burst larger than a page (10,000) between two polls: read forward, none skipped.
    let burst = observer::store::MAX_LIMIT as usize + 50;
    let mut many: Vec<_> = (0..burst)
        .map(|i| {
            event(
                Kind::RstOnClose,
                22,
                "curl",
                "10.0.0.4",
                80,
                7_000 + i as u64,
            )
        })
        .collect();
    s.store.lock().unwrap().append(&mut many).unwrap();
    let followed: Vec<u64> = (0..burst).map(|_| next_id()).collect();
    assert_eq!(followed, (7..7 + burst as u64).collect::<Vec<_>>());
    let _ = child.kill();
    let _ = child.wait();
}
