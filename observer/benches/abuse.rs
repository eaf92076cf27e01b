//! The API's listeners under the abuse of issue 20, over a history of 12,000 events: 60
//! clients asking for `limit=10000` and never reading (4 KiB receive buffers), and 400
//! connections dripping an endless header, all on `--listen`, while `/healthz` is asked on
//! `--metrics-listen` every 100 ms. Reports the process's peak RSS (`VmHWM`, the store and
//! server included) before and during, the slowest `/healthz`, and what was shed. Run with
//! `cargo xtask bench`; writes `target/bench/abuse.json`. Not a test: under `cargo test` it
//! exits at once.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark harness"
)]

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use observer::{
    api,
    enrich::Attribution,
    events::{Endpoints, Event, Kind, Owner, Role},
    store,
};

#[path = "../tests/api/serving.rs"]
mod serving;

const EVENTS: u64 = 12_000;
const NON_READERS: usize = 60;
const DRIPPERS: usize = 400;
const ABUSE: Duration = Duration::from_secs(30);

fn event(i: u64) -> Event {
    Event {
        wall_ns: 1_700_000_000_000_000_000 + i,
        owner: Owner {
            pid: 1000 + (i % 200) as u32,
            comm: format!("svc-{}", i % 40),
            cgroup_id: 0,
            workload: Attribution {
                pod: Some(format!("pod-{}", i % 120)),
                namespace: Some(format!("ns-{}", i % 8)),
                ..Attribution::default()
            },
        },
        ends: Endpoints {
            local_addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
            peer_addr: IpAddr::V4(Ipv4Addr::new(10, 2, 0, (i % 50) as u8)),
            peer_port: 8080,
            ..Endpoints::unspecified()
        },
        role: Role::Client,
        unread_bytes: (i % 70_000) as u32,
        hint: "closed with unread bytes: the response was not fully read".to_owned(),
        ..Event::blank(Kind::RstOnClose)
    }
}

/// Peak and current resident set of this process, in MiB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    (kib("VmHWM:") / 1024.0, kib("VmRSS:") / 1024.0)
}

/// Both listeners over `file`, with the default budgets.
fn serve(file: &std::path::Path) -> (SocketAddr, SocketAddr) {
    let mut registry = observer::metrics::registry();
    let m = observer::agent::register_metrics(&mut registry, observer::metrics::Limits::default());
    let state = api::State::new(registry, store::Reader::open(file).unwrap());
    state.set_ready();
    let (listen, metrics) =
        serving::serve_on_thread(state, m.serve, &["--metrics-listen", "127.0.0.1:0"]);
    (listen, metrics.unwrap())
}

/// The abusers, one Python process (`tests/abusers.py`): it prints `ready` once every socket
/// is open.
fn abusers(port: u16) -> std::process::Child {
    Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/abusers.py"))
        .args(
            [
                port,
                NON_READERS as u16,
                DRIPPERS as u16,
                ABUSE.as_secs() as u16,
            ]
            .map(|n| n.to_string()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = store::open(dir.path()).unwrap();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(1000) {
        let mut batch: Vec<Event> = chunk.iter().map(|i| event(*i)).collect();
        s.append(&mut batch).unwrap();
    }
    let (api, metrics) = serve(s.file());
    let http = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    // One whole answer first, as a well-behaved client gets it.
    let full = http
        .get(&format!("http://{api}/api/v1/events?limit=10000"))
        .call()
        .unwrap()
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap()
        .len();
    let (before, _) = rss();
    let mut child = abusers(api.port());
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut failed = 0;
    while started.elapsed() < ABUSE {
        let t = Instant::now();
        let ok = http
            .get(&format!("http://{metrics}/healthz"))
            .call()
            .is_ok_and(|r| r.status() == 200);
        slowest = slowest.max(t.elapsed());
        failed += u32::from(!ok);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (peak, now) = rss();
    let text = http
        .get(&format!("http://{metrics}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let shed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("observer_http_shed_total"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{EVENTS} events stored; one limit=10000 answer: {:.1} MB\n\
         peak RSS before the abuse: {before:.1} MiB; after {}s of {NON_READERS} non-readers and {DRIPPERS} endless heads: peak {peak:.1} MiB, now {now:.1} MiB\n\
         /healthz on --metrics-listen meanwhile: slowest {:.1} ms, {failed} not 200\n{}",
        full as f64 / 1e6,
        ABUSE.as_secs(),
        slowest.as_secs_f64() * 1000.0,
        shed.join("\n")
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let report = serde_json::json!({
        "events": EVENTS, "answer_bytes": full, "non_readers": NON_READERS, "drippers": DRIPPERS,
        "abuse_seconds": ABUSE.as_secs(), "peak_rss_mib_before": before, "peak_rss_mib_during": peak,
        "rss_mib_after": now, "healthz_slowest_ms": slowest.as_secs_f64() * 1000.0,
        "healthz_failed": failed, "shed": shed,
    });
    std::fs::write(
        out.join("abuse.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}
