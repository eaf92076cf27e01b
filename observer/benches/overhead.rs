//! What observer costs the node (root only; `cargo xtask bench`). Each workload runs
//! `ROUNDS` times without the agent and `ROUNDS` times with it, in adjacent pairs whose order
//! alternates (without first, then with first: the second run of a pair is the slower on the
//! development VM, agent or not, and neither side may always take it). Two figures per run:
//! the throughput, and the node's busy CPU time per operation (`/proc/stat`: user, system, irq
//! and softirq of every CPU, the agent's own included; steal and idle are not). The overheads
//! are medians of the ratios within each adjacent pair: the machines are noisy, so absolute
//! figures mean little and pairs taken a few seconds apart mean more. CPU per operation is the
//! steadier of the two on a shared VM: it does not move when the hypervisor takes the CPU
//! away, throughput does. Also: the agent's CPU and peak RSS, the abort rate it reports with
//! no event lost, and its memory with 50,000 sockets in CLOSE_WAIT and 100,000 established
//! connections; every workload once more with `--read-hook always` (by default the read hook
//! runs only while a socket waits in CLOSE_WAIT); and, in three more runs of each synthetic
//! workload with `kernel.bpf_stats_enabled` and every program attached, the kernel time in
//! each program (the median run). Writes `target/bench/overhead.json`. Not a test: under
//! `cargo test` it exits at once.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark harness"
)]

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

const ROUNDS: usize = 10;
const RUN: Duration = Duration::from_secs(2);
const THREADS: usize = 2;

#[path = "overhead/harness.rs"]
mod harness;
#[path = "overhead/report.rs"]
mod report;
#[path = "overhead/scale.rs"]
mod scale;
#[path = "../tests/kernel/support.rs"]
#[allow(
    dead_code,
    reason = "the kernel tests' helpers, of which the benchmark uses a few"
)]
mod support;
#[path = "overhead/workloads.rs"]
mod workloads;

use harness::{Hooks, KernelTime, Sample, Usage, busy_seconds, in_netns, threads};
use report::{Beside, Row, compare, cpu_gain, rate_loss};
use scale::{close_wait_scale, established_scale};
use support::Agent;
use workloads::{Nginx, aborts, connection_storm, request_response, stalled_reader};

/// What a synthetic workload's overhead is read against: the noise floor, the hooks alone, and
/// the kernel time in observer's programs.
struct References {
    workload: &'static str,
    floor: Row,
    hooks: Row,
    kernel: KernelTime,
}

/// The throughput table: every workload whose name holds one of the words in `only` (all
/// when empty), with and without the agent, and for the synthetic ones their noise floor, the
/// cost of the hooks alone (empty programs) and the kernel time in observer's programs.
fn throughput(only: &[String]) -> (Vec<Row>, Vec<References>) {
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>7}  unit",
        format!("workload ({ROUNDS} pairs, medians)"),
        "without",
        "with",
        "overhead",
        "µs/op",
        "µs/op",
        "CPU/op +",
        "agent %",
        "agt MiB"
    );
    let nginx = Nginx::start();
    // (name, unit, workload, whether to measure its noise floor too)
    let work: [(&'static str, &'static str, &dyn Fn() -> Sample, bool); 4] = [
        (
            "request/response, keep-alive",
            "round trips/s",
            &request_response,
            true,
        ),
        ("connection storm", "connections/s", &connection_storm, true),
        (
            "wrk -> nginx, keep-alive",
            "requests/s",
            &|| nginx.wrk(true),
            false,
        ),
        (
            "wrk -> nginx, Connection: close",
            "requests/s",
            &|| nginx.wrk(false),
            false,
        ),
    ];
    let mut noise = Vec::new();
    let mut variants = Vec::new();
    let mut rows: Vec<Row> = work
        .into_iter()
        .filter(|(name, _, _, _)| only.is_empty() || only.iter().any(|w| name.contains(w.as_str())))
        .map(|(name, unit, f, floor)| {
            let r = compare(name, unit, f, Beside::Agent(&[]));
            println!("{}", r.line());
            // By default the read hook runs only while a socket waits in CLOSE_WAIT, never here:
            // what the workloads cost while it runs.
            let always = compare(
                "  agent with --read-hook always",
                unit,
                f,
                Beside::Agent(&["--read-hook", "always"]),
            );
            println!("{}", always.line());
            variants.push(always);
            if floor {
                let floor = compare("  noise floor (no agent)", unit, f, Beside::Nothing);
                println!("{}", floor.line());
                let hooks = compare(
                    "  hooks alone (empty programs)",
                    unit,
                    f,
                    Beside::EmptyPrograms,
                );
                println!("{}", hooks.line());
                let kernel = KernelTime::measure(f);
                println!(
                    "  {}",
                    kernel.line("in observer's programs (--read-hook always)")
                );
                noise.push(References {
                    workload: name,
                    floor,
                    hooks,
                    kernel,
                });
            }
            if !only.is_empty() {
                let pct = |v: Vec<f64>| v.iter().map(|p| format!("{p:.1}")).collect::<Vec<_>>();
                println!(
                    "  pairs: throughput {:?}, CPU/op {:?}",
                    pct(r.pairs(rate_loss)),
                    pct(r.pairs(cpu_gain))
                );
            }
            r
        })
        .collect();
    rows.extend(variants);
    (rows, noise)
}

/// Aborts at full speed, `ROUNDS` times: the agent must report every one. Then the same with
/// the agent stopped ([`stalled_reader`]), until the loss counter moves. Report lines and
/// JSON of both.
fn rst_on_close() -> (String, serde_json::Value, serde_json::Value) {
    let mut t = String::new();
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let agent = Agent::start_discarding(&[]);
        let sample = aborts();
        let (made, rate) = (sample.ops as u64, sample.rate);
        let (reported, lost) = agent.aborts_settled();
        agent.stop();
        let _ = writeln!(
            t,
            "RST-on-close at {rate:.0}/s for {}s: {made} aborts, {reported} reported, {lost} lost, {} unaccounted",
            RUN.as_secs(),
            i128::from(made) - i128::from(reported) - i128::from(lost)
        );
        rounds.push(serde_json::json!({"per_second": rate, "aborts": made, "reported": reported, "lost": lost}));
    }
    let (aborts, reported, lost) = stalled_reader();
    let _ = writeln!(
        t,
        "RST-on-close with the agent stopped (SIGSTOP) for {}s: {aborts} aborts, {reported} reported once it resumed (what the ring buffer held), {lost} counted lost (observer_events_lost_total{{source=\"ringbuf_full_rst_on_close\"}}), {} unaccounted",
        RUN.as_secs(),
        i128::from(aborts) - i128::from(reported) - i128::from(lost)
    );
    (
        t,
        serde_json::Value::Array(rounds),
        serde_json::json!({"aborts": aborts, "reported": reported, "lost": lost}),
    )
}

/// The two scale scenarios: their report lines and their JSON (50,000 in CLOSE_WAIT, 100,000
/// established).
fn scale() -> (String, serde_json::Value, serde_json::Value) {
    let (rss, peak, maps, idle) = close_wait_scale(50_000);
    let (e_rss, e_peak, e_maps, e_idle, e_counted, e_ends) = established_scale(100_000);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "50,000 sockets in CLOSE_WAIT: agent RSS {:.1} MiB (peak {:.1} MiB), kernel map memory {:.1} MiB, idle agent CPU {idle:.1}% of one core",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        maps as f64 / 1_048_576.0
    );
    let _ = writeln!(
        t,
        "100,000 established connections ({e_counted} ends counted of {e_ends}): agent RSS {:.1} MiB (peak {:.1} MiB), kernel map memory {:.1} MiB, idle agent CPU {e_idle:.1}% of one core",
        e_rss as f64 / 1024.0,
        e_peak as f64 / 1024.0,
        e_maps as f64 / 1_048_576.0
    );
    (
        t,
        serde_json::json!({"rss_kib": rss, "peak_rss_kib": peak, "map_bytes": maps, "idle_cpu_percent": idle}),
        serde_json::json!({"rss_kib": e_rss, "peak_rss_kib": e_peak, "map_bytes": e_maps, "idle_cpu_percent": e_idle, "ends_counted": e_counted}),
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("overhead: skipped, needs root");
        return;
    }
    // `cargo bench -p observer --bench overhead -- storm`: only the workloads whose name holds
    // one of the words given, with each pair's figures, and nothing else.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // `-- scale`: only the 50,000 CLOSE_WAIT and 100,000 established scenarios; `-- rst`:
    // only the abort rates and the stopped reader.
    if only.iter().any(|w| w == "scale") {
        print!("{}", scale().0);
        return;
    }
    if only.iter().any(|w| w == "rst") {
        print!("{}", rst_on_close().0);
        return;
    }
    let (rows, noise) = throughput(&only);
    if !only.is_empty() {
        return;
    }

    let (rst_text, rst_json, stalled_json) = rst_on_close();
    let (scale_text, close_wait_json, established_json) = scale();

    let mut t = String::new();
    let mut json: Vec<serde_json::Value> = rows.iter().map(Row::json).collect();
    json.extend(noise.iter().flat_map(
        |References {
             workload: name,
             floor,
             hooks,
             ..
         }| {
            let mut f = floor.json();
            f["workload"] =
                serde_json::json!(format!("{name}: noise floor, no agent in either run"));
            let mut h = hooks.json();
            h["workload"] = serde_json::json!(format!(
                "{name}: hooks alone, empty programs instead of the agent"
            ));
            [f, h]
        },
    ));
    let storm = rows.iter().find(|r| r.name == "connection storm").unwrap();
    let cpu_at_10k = storm.agent_cpu * 10_000.0 / Row::median_of(&storm.with, |s| s.rate);
    let _ = writeln!(
        t,
        "\nagent CPU at 10,000 new connections/s (scaled from the storm): {cpu_at_10k:.1}% of one core"
    );
    t.push_str(&rst_text);
    t.push_str(&scale_text);
    print!("{t}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let report = serde_json::json!({
        "rounds": ROUNDS, "run_seconds": RUN.as_secs(), "workloads": json,
        "agent_cpu_percent_at_10k_connections_per_second": cpu_at_10k,
        "rst_on_close": rst_json,
        "kernel_time_in_programs": noise.iter().map(|r| serde_json::json!({"workload": r.workload, "time": r.kernel.json()})).collect::<Vec<_>>(),
        "rst_on_close_reader_stopped": stalled_json,
        "close_wait_50k": close_wait_json,
        "established_100k": established_json,
    });
    std::fs::write(
        out.join("overhead.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}
