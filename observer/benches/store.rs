//! The event history at 100,000 events: filtered queries through the store and through the
//! HTTP API (median and p99 of repeated runs), and the file size as pruning makes room for
//! another 100,000. Run with `cargo xtask bench`; prints a table and writes
//! `target/bench/store.json`. Not a test: under `cargo test` it exits at once.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark harness"
)]

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use observer::{
    api,
    enrich::Attribution,
    events::{Endpoints, Event, Kind, Owner, Role},
    store::{self, Filter},
};

#[path = "../tests/api/serving.rs"]
mod serving;

const EVENTS: u64 = 100_000;
const RUNS: usize = 50;
const DAY_NS: u64 = 86_400_000_000_000;

fn event(i: u64, now: u64) -> Event {
    let kind = Kind::ALL[(i % 7 % 4) as usize];
    let host = (i % 50) as u8;
    Event {
        wall_ns: now - DAY_NS + i * (DAY_NS / EVENTS),
        owner: Owner {
            pid: 1000 + (i % 200) as u32,
            comm: format!("svc-{}", i % 40),
            cgroup_id: i % 300,
            workload: Attribution {
                pod: Some(format!("pod-{}", i % 120)),
                namespace: Some(format!("ns-{}", i % 8)),
                ..Attribution::default()
            },
        },
        ends: Endpoints {
            netns: 1,
            local_addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
            local_port: 40_000 + (i % 20_000) as u16,
            peer_addr: IpAddr::V4(Ipv4Addr::new(10, 2, 0, host)),
            peer_port: 8080,
        },
        role: Role::Client,
        unread_bytes: (i % 70_000) as u32,
        conn_age_ms: Some(i % 5000),
        bytes_received: i,
        bytes_sent: Some(i / 2),
        rst_reason: Some("TCP_ABORT_ON_CLOSE".to_owned()),
        hint: "closed with unread bytes: the response was not fully read".to_owned(),
        ..Event::blank(kind)
    }
}

fn fill(s: &mut store::Store, from: u64, n: u64, now: u64) {
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(1000) {
        let mut batch: Vec<Event> = chunk.iter().map(|i| event(*i, now)).collect();
        s.append(&mut batch).unwrap();
    }
}

/// The API over the store at `file`, on loopback, as `observer events` reaches it.
fn serve(file: &std::path::Path) -> String {
    let mut registry = observer::metrics::registry();
    let m = observer::agent::register_metrics(&mut registry, observer::metrics::Limits::default());
    let state = api::State::new(registry, store::Reader::open(file).unwrap());
    let (listen, _) = serving::serve_on_thread(state, m.serve, &[]);
    format!("http://{listen}/api/v1/events")
}

/// File sizes after each of three refills of `EVENTS`, pruned to `EVENTS` rows as they come.
fn refills(s: &mut store::Store, now: u64) -> Vec<u64> {
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut sizes = vec![size(s.file())];
    for refill in 1..=3 {
        for quarter in 0..4 {
            fill(s, EVENTS * refill + quarter * EVENTS / 4, EVENTS / 4, now);
            s.prune(now, DAY_NS * 2, EVENTS).unwrap();
        }
        sizes.push(size(s.file()));
    }
    sizes
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 99 / 100).min(v.len() - 1)]),
    )
}

const QUERIES: [(&str, &str); 6] = [
    ("newest 100", ""),
    ("kind + since 1h", "kind=rst_on_close&since=1h"),
    ("pid", "pid=1042"),
    ("comm + kind", "comm=svc-7&kind=close_wait_leak"),
    ("peer ip:port", "peer=10.2.0.9:8080&limit=1000"),
    (
        "pod + namespace + since 6h",
        "namespace=ns-3&pod=pod-11&since=6h",
    ),
];

/// Runs every query `RUNS` times through the store and through HTTP; the table rows and JSON.
fn measure(reader: &mut store::Reader, url: &str, now: u64) -> (String, Vec<serde_json::Value>) {
    let http = ureq::Agent::new_with_config(ureq::Agent::config_builder().build());
    let mut table = String::new();
    let mut json = Vec::new();
    for (name, q) in QUERIES {
        let pairs: Vec<(&str, &str)> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap())
            .collect();
        let f = Filter::from_pairs(pairs, now).unwrap();
        let mut direct = Vec::with_capacity(RUNS);
        let mut rows = 0;
        for _ in 0..RUNS {
            let t = Instant::now();
            rows = reader.query(&f).unwrap().len();
            direct.push(t.elapsed());
        }
        let mut over_http = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let t = Instant::now();
            let body = http
                .get(&format!("{url}?{q}"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap();
            over_http.push(t.elapsed());
            assert!(body.starts_with("{\"events\":["));
        }
        let (d50, d99) = stats(direct);
        let (h50, h99) = stats(over_http);
        let _ = writeln!(
            table,
            "{name:<28} {rows:>7} {d50:>12.2} {d99:>12.2} {h50:>13.2} {h99:>13.2}"
        );
        json.push(serde_json::json!({"query": name, "params": q, "rows": rows, "store_p50_ms": d50, "store_p99_ms": d99, "http_p50_ms": h50, "http_p99_ms": h99}));
    }
    (table, json)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = store::open(dir.path()).unwrap();
    let t = Instant::now();
    fill(&mut s, 0, EVENTS, now);
    let fill_s = t.elapsed().as_secs_f64();
    let mut reader = store::Reader::open(s.file()).unwrap();
    let url = serve(s.file());
    let (rows, json) = measure(&mut reader, &url, now);
    // Pruning: a row cap of 100,000 while more arrive keeps the file bounded (SQLite reuses
    // the freed pages).
    let sizes = refills(&mut s, now);
    let mib: Vec<String> = sizes
        .iter()
        .map(|b| format!("{:.1}", *b as f64 / 1_048_576.0))
        .collect();
    println!(
        "{:<28} {:>7} {:>12} {:>12} {:>13} {:>13}\n{rows}\nfill: {EVENTS} events in {fill_s:.2}s; with --max-events 100000, the file after 0..3 refills of 100,000: {} MiB (rows kept: {})",
        "query (100,000 events)",
        "rows",
        "store p50 ms",
        "store p99 ms",
        "http p50 ms",
        "http p99 ms",
        mib.join(" -> "),
        reader.count().unwrap()
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let report = serde_json::json!({"events": EVENTS, "runs": RUNS, "queries": json, "fill_seconds": fill_s, "file_bytes_after_each_refill": sizes});
    std::fs::write(
        out.join("store.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}
