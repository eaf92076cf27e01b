//! The operator's view end to end: a real Prometheus (Debian's package) scrapes the agent
//! every second and PromQL counts the aborts the test made; promtool finds nothing wrong with
//! the exposition; `observer events` returns exactly those events, filtered, also after the
//! agent restarted on the same data dir.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::support::{
    Agent, OBSERVER, in_netns, own_comm, patience_secs, require_bpf, sample, scrape, wait_queued,
};

const ABORTS: usize = 7;

fn http_get(url: &str) -> (u16, String) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    match agent.get(url).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `prometheus` scraping `target` every second, with its own storage; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: observer\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`)");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The single value of an instant `query`, once it is `want` (or the last seen).
    fn wait_for(&self, query: &str, want: f64) -> Option<f64> {
        let url = format!("{}/api/v1/query?query={}", self.url, urlencode(query));
        let deadline = Instant::now() + patience_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            let (code, body) = http_get(&url);
            if code == 200 {
                let v: Value = serde_json::from_str(&body).unwrap();
                last = v["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok());
                if last == Some(want) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `ABORTS` clients that read 10 of 1000 response bytes and close, against a server on
/// 127.0.0.77 (a peer label no other test uses). Returns the server's port.
fn aborting_clients() -> u16 {
    let l = TcpListener::bind("127.0.0.77:0").unwrap();
    let port = l.local_addr().unwrap().port();
    for _ in 0..ABORTS {
        let mut c = TcpStream::connect(("127.0.0.77", port)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.write_all(&[0u8; 1000]).unwrap();
        wait_queued(&c, 1000);
        let mut head = [0u8; 10];
        c.read_exact(&mut head).unwrap();
        drop(c);
        drop(s);
    }
    port
}

fn cli_events(agent: &str, filters: &[&str]) -> Vec<Value> {
    let out = Command::new(OBSERVER)
        .args([
            "events",
            "--agent",
            agent,
            "--output",
            "json",
            "--kind",
            "rst_on_close",
            "--since",
            "5m",
        ])
        .args(filters)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["events"].as_array().unwrap().clone()
}

#[test]
fn prometheus_counts_the_aborts_and_the_cli_finds_them_after_a_restart() {
    if !require_bpf() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let agent = Agent::start(&["--data-dir", data_dir]);
    let target = agent.url.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target);
    let port = in_netns(|_| aborting_clients());
    let peer = format!("127.0.0.77:{port}");

    let sum = prometheus.wait_for(
        &format!("sum(observer_rst_on_close_total{{peer=\"{peer}\"}})"),
        ABORTS as f64,
    );
    assert_eq!(
        sum,
        Some(ABORTS as f64),
        "PromQL sees every abort of this test"
    );

    let (code, text) = http_get(&format!("{}/metrics", agent.url));
    assert_eq!(code, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let lint = promtool.wait_with_output().unwrap();
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let mine = ["--peer", peer.as_str()];
    let evs = cli_events(&agent.url, &mine);
    assert_eq!(evs.len(), ABORTS, "{evs:#?}");
    let ids: Vec<u64> = evs.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert!(
        evs.iter().all(|e| e["pid"] == std::process::id()),
        "{evs:#?}"
    );
    // The role comes from the connect's state change: one the kernel skipped (the program was
    // already running on that CPU, see docs/kernels.md) leaves it unknown, and is counted.
    let unknown = evs.iter().filter(|e| e["role"] != "client").count();
    let missed = sample(
        &scrape(&agent.url),
        "observer_program_recursion_misses_total",
        &[("program", "state_btf")],
    )
    .unwrap_or(0.0);
    assert!(
        unknown as f64 <= missed,
        "{unknown} roles not client, {missed} misses: {evs:#?}"
    );
    let pid = std::process::id().to_string();
    assert_eq!(
        cli_events(&agent.url, &[&mine[..], &["--pid", &pid]].concat()).len(),
        ABORTS
    );
    assert_eq!(
        cli_events(&agent.url, &[&mine[..], &["--pid", "1"]].concat()).len(),
        0
    );
    assert_eq!(
        cli_events(&agent.url, &[&mine[..], &["--comm", &own_comm()]].concat()).len(),
        ABORTS
    );
    assert_eq!(
        cli_events(&agent.url, &[&mine[..], &["--comm", "nginx"]].concat()).len(),
        0
    );
    assert_eq!(cli_events(&agent.url, &["--peer", "127.0.0.77:1"]).len(), 0);
    assert_eq!(
        cli_events(&agent.url, &[&mine[..], &["--limit", "3"]].concat()).len(),
        3
    );

    let (status, _) = agent.stop();
    assert!(status.success());
    let again = Agent::start(&["--data-dir", data_dir]);
    let after: Vec<u64> = cli_events(&again.url, &mine)
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(after, ids, "the history survives a restart");
}
