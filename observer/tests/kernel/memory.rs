//! The agent under the DaemonSet's memory limit, its eBPF maps charged with the rest, while
//! its API is abused: a history of thousands of real aborts, 60 clients asking for 10,000
//! events and never reading, 400 connections with a header that never ends and well-behaved
//! queries on top. It must stay within the limit with margin, answer `/healthz` throughout,
//! record every abort made meanwhile and close the slow connections within the header timeout.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::support::{Agent, aborts, patience, require_bpf, scrape};

/// The DaemonSet's `resources.limits.memory`.
const LIMIT: u64 = 256 << 20;
/// The peak may use this much of the limit: the rest is the margin.
const MARGIN_PEAK: u64 = LIMIT / 8 * 7;
const SEEDED: usize = 3_000;
const DURING: usize = 200;
const HEADER_TIMEOUT_SECS: u64 = 2;

/// A memory cgroup of its own (v2 where the unified hierarchy has the controller, v1 otherwise),
/// removed on drop.
struct MemCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemCgroup {
    fn new(limit: u64) -> Self {
        let name = format!("observer-test-{}", std::process::id());
        let unified = PathBuf::from("/sys/fs/cgroup");
        let v2 = std::fs::read_to_string(unified.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let dir = if v2 {
            // Children get the controller only where their parent hands it down.
            std::fs::write(unified.join("cgroup.subtree_control"), "+memory").unwrap();
            unified.join(name)
        } else {
            let v1 = unified.join("memory");
            assert!(
                v1.join("memory.limit_in_bytes").exists(),
                "no memory cgroup controller: neither cgroup v2 with memory nor {}",
                v1.display()
            );
            v1.join(name)
        };
        std::fs::create_dir_all(&dir).unwrap();
        let max = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(dir.join(max), limit.to_string()).unwrap();
        Self { dir, v2 }
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap()
    }

    /// Most memory the cgroup held, in bytes.
    fn peak(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.read(file).trim().parse().unwrap()
    }

    /// Processes the kernel killed for the limit.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The `rst_on_close` events of `ns` once it has `n` events. Short of `n`, it says what
/// came instead (each kind's count) and what the agent counted lost.
fn rst_on_close(agent: &Agent, ns: u64, n: usize) -> usize {
    let events = agent.events_of(
        ns,
        "rst_on_close",
        n,
        patience(Duration::from_secs(30)),
        Duration::ZERO,
    );
    let aborts = events
        .iter()
        .filter(|e| e["kind"] == "rst_on_close")
        .count();
    if aborts < n {
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for e in &events {
            *kinds.entry(e["kind"].to_string()).or_default() += 1;
        }
        let lost: Vec<String> = scrape(&agent.url)
            .lines()
            .filter(|l| l.starts_with("observer_events_lost_total{") && !l.ends_with(" 0"))
            .map(str::to_owned)
            .collect();
        eprintln!("{aborts} of {n} rst_on_close; events by kind {kinds:?}; lost {lost:?}");
    }
    aborts
}

/// Twenty well-behaved queries for 1,000 events beside the abuse: each answered, or refused
/// with a JSON error. Returns how many were answered.
fn queries(api: &str) -> thread::JoinHandle<u32> {
    let url = format!("{api}/api/v1/events?limit=1000");
    thread::spawn(move || {
        let http = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        let mut answered = 0;
        for _ in 0..20 {
            let mut r = http.get(&url).call().unwrap();
            let status = r.status().as_u16();
            let body = r.body_mut().with_config().limit(64 << 20).read_to_string();
            assert!(
                matches!(status, 200 | 429 | 503) && body.is_ok_and(|b| b.starts_with('{')),
                "status {status}"
            );
            answered += u32::from(status == 200);
        }
        answered
    })
}

#[test]
fn abuse_under_the_daemonsets_memory_limit_loses_nothing() {
    if !require_bpf() {
        return;
    }
    let cgroup = MemCgroup::new(LIMIT);
    let timeout = format!("{HEADER_TIMEOUT_SECS}s");
    let agent = Agent::start_in_cgroup(
        &cgroup.procs(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-header-timeout",
            &timeout,
        ],
    );
    let seeded = aborts(SEEDED).0;
    assert_eq!(rst_on_close(&agent, seeded, SEEDED), SEEDED);
    let port = agent.url.rsplit(':').next().unwrap().to_owned();
    let report_after = HEADER_TIMEOUT_SECS + 3;
    let mut abusers = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/abusers.py"))
        .args([&port, "60", "400", &report_after.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(abusers.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let started = Instant::now();
    let during = thread::spawn(|| aborts(DURING).0);
    let queries: Vec<_> = (0..4).map(|_| queries(&agent.url)).collect();
    let healthz = format!("{}/healthz", agent.metrics_url.clone().unwrap());
    let probe = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(patience(Duration::from_secs(1))))
            .build(),
    );
    let mut slowest = Duration::ZERO;
    while started.elapsed() < patience(Duration::from_secs(15)) {
        let t = Instant::now();
        let r = probe.get(&healthz).call();
        assert!(
            r.is_ok_and(|r| r.status() == 200),
            "/healthz did not answer within {:?} after {:?} of abuse",
            patience(Duration::from_secs(1)),
            started.elapsed()
        );
        slowest = slowest.max(t.elapsed());
        thread::sleep(Duration::from_millis(100));
    }
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "open 0",
        "endless headers still open {report_after} s in (--http-header-timeout {timeout})"
    );
    let answered: u32 = queries.into_iter().map(|q| q.join().unwrap()).sum();
    let during = during.join().unwrap();
    assert_eq!(
        rst_on_close(&agent, during, DURING),
        DURING,
        "every abort made during the abuse is recorded"
    );
    let _ = abusers.kill();
    let _ = abusers.wait();
    let peak = cgroup.peak();
    eprintln!(
        "peak {:.1} MiB of {} MiB (eBPF maps included); slowest /healthz {:.0} ms; \
         {answered} of 80 queries answered beside the abuse",
        peak as f64 / f64::from(1 << 20),
        LIMIT >> 20,
        slowest.as_secs_f64() * 1000.0
    );
    assert_eq!(cgroup.oom_kills(), 0, "the kernel killed for the limit");
    assert!(
        peak <= MARGIN_PEAK,
        "peak {peak} bytes, over 7/8 of the {LIMIT}-byte limit"
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{status}: {log}");
}
