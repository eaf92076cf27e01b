//! The harness: what the benchmark reads of the agent under test (started by the kernel
//! tests' support, shared with them), the empty programs of the floor, network namespaces,
//! the node's busy CPU time and the kernel time per program.

use super::{
    Arc, AtomicBool, Duration, Instant, Ordering, RUN, THREADS,
    support::{Agent, enter_netns, sample, scrape},
    thread,
};

/// observer-ebpf's `floor` object: empty programs on the state and read tracepoints.
pub(crate) static FLOOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));

/// The empty programs of [`FLOOR`], attached as BTF tracepoints until dropped: what hooking
/// the agent's hot tracepoints costs before its programs do any work.
pub(crate) struct Hooks(
    #[expect(dead_code, reason = "held: dropping it detaches the programs")] aya::Ebpf,
);

impl Hooks {
    pub(crate) fn attach() -> Self {
        let btf = aya::Btf::from_sys_fs().unwrap();
        let mut ebpf = aya::Ebpf::load(FLOOR).unwrap();
        for (program, tracepoint) in [
            ("floor_state", "inet_sock_set_state"),
            ("floor_recv", "sock_recv_length"),
        ] {
            let p: &mut aya::programs::BtfTracePoint =
                ebpf.program_mut(program).unwrap().try_into().unwrap();
            p.load(tracepoint, &btf).unwrap();
            p.attach().unwrap();
        }
        Self(ebpf)
    }
}

/// What the benchmark reads of a running agent (the kernel tests' [`Agent`], started with
/// its events discarded): its CPU, memory and counters.
pub(crate) trait Usage {
    /// User and system CPU seconds the agent has used.
    fn cpu_seconds(&self) -> f64;
    /// A `/proc/PID/status` figure in KiB (`VmRSS:`, `VmHWM:`).
    fn status_kib(&self, field: &str) -> u64;
    /// Bytes the kernel charges for the agent's maps (`memlock` of each map fd).
    fn map_bytes(&self) -> u64;
    /// Its `/metrics` text.
    fn metrics(&self) -> String;

    /// The sum of the `/metrics` samples of `name`, over all their label sets.
    fn metric_sum(&self, name: &str) -> u64 {
        sum(&self.metrics(), name)
    }

    /// `rst_on_close` events reported, and `rst_on_close` events counted lost (each abort
    /// also makes a `reset_received` event at its peer, counted lost under its own source),
    /// from one scrape.
    fn aborts_reported_and_lost(&self) -> (u64, u64) {
        let text = self.metrics();
        let lost = sample(
            &text,
            "observer_events_lost_total",
            &[("source", "ringbuf_full_rst_on_close")],
        );
        (
            sum(&text, "observer_rst_on_close_total"),
            lost.unwrap_or(0.0) as u64,
        )
    }

    /// [`Usage::aborts_reported_and_lost`] once the counts stop moving (the agent has drained
    /// the ring buffer and exported its drop counters), or after 15 s.
    fn aborts_settled(&self) -> (u64, u64) {
        let mut last = self.aborts_reported_and_lost();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            // The drop counters are exported once a second.
            thread::sleep(Duration::from_millis(1500));
            let now = self.aborts_reported_and_lost();
            if now == last {
                break;
            }
            last = now;
        }
        last
    }

    /// After `settle`: RSS and peak RSS (KiB), kernel map memory (bytes), and the agent's CPU
    /// (% of one core) over the next 5 s.
    fn settled(&self, settle: Duration) -> (u64, u64, u64, f64) {
        thread::sleep(settle);
        let (c0, t0) = (self.cpu_seconds(), Instant::now());
        thread::sleep(Duration::from_secs(5));
        let idle_cpu = (self.cpu_seconds() - c0) / t0.elapsed().as_secs_f64() * 100.0;
        (
            self.status_kib("VmRSS:"),
            self.status_kib("VmHWM:"),
            self.map_bytes(),
            idle_cpu,
        )
    }
}

impl Usage for Agent {
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // utime and stime, fields 14 and 15 of stat(5), in clock ticks.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix(" kB")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    fn map_bytes(&self) -> u64 {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter(|t| t.contains("map_type:"))
            .filter_map(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("memlock:")?.trim().parse::<u64>().ok())
            })
            .sum()
    }

    fn metrics(&self) -> String {
        scrape(&self.url)
    }
}

/// The sum of the samples of `name` in the `/metrics` `text`, over all their label sets.
fn sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Runs `f` on a thread in a fresh network namespace with `lo` up and the whole port range
/// ephemeral, freed when `f` returns (the kernel tests' [`support::in_netns`] keeps its
/// namespaces, which the agent would walk on every scan of the runs that follow).
pub(crate) fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        enter_netns();
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535").unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Busy CPU seconds of the whole node since boot: user, nice, system, irq and softirq of the
/// `cpu` line of `/proc/stat` (idle, iowait and the time the hypervisor stole are left out).
pub(crate) fn busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let line = stat.lines().next().unwrap();
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6];
    // SAFETY: sysconf has no preconditions.
    busy as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// One run of a workload: its operations, rate and the node's busy CPU per operation.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) ops: f64,
    pub(crate) rate: f64,
    pub(crate) cpu_us_per_op: f64,
}

impl Sample {
    /// `ops` operations in `secs` seconds, `busy` busy CPU seconds meanwhile.
    pub(crate) fn of(ops: f64, secs: f64, busy: f64) -> Self {
        Self {
            ops,
            rate: ops / secs,
            cpu_us_per_op: busy * 1e6 / ops.max(1.0),
        }
    }
}

/// Time the kernel spent in each of observer's programs during one run of a workload.
pub(crate) struct KernelTime {
    /// The node's busy CPU per operation in that run.
    pub(crate) cpu_us_per_op: f64,
    /// (program, calls per operation, ns per call).
    pub(crate) programs: Vec<(String, f64, f64)>,
}

impl KernelTime {
    /// Three more runs of `work`, each with a fresh agent and `kernel.bpf_stats_enabled`
    /// (restored after): the one with the median time in the programs per operation (a run
    /// that meets a slow moment of the machine is left out, as in the pairs' medians).
    pub(crate) fn measure(work: &dyn Fn() -> Sample) -> Self {
        let mut runs: Vec<Self> = (0..3).map(|_| Self::measure_once(work)).collect();
        runs.sort_by(|a, b| a.us_per_op().total_cmp(&b.us_per_op()));
        runs.swap_remove(1)
    }

    /// One run of `work` with a fresh agent and `kernel.bpf_stats_enabled`: each program's run
    /// count and run time, per operation. The counters add two clock reads to every call (an
    /// empty program reads about 60 ns on the development VM), which the figures include; the
    /// overhead pairs run without them.
    pub(crate) fn measure_once(work: &dyn Fn() -> Sample) -> Self {
        const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let before = std::fs::read_to_string(STATS).unwrap();
        std::fs::write(STATS, "1").unwrap();
        // Every program attached, the read hook included: what each costs per call.
        let agent = Agent::start_discarding(&["--read-hook", "always"]);
        let s = work();
        let mut programs: Vec<(String, f64, f64)> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.run_count() > 0)
            .filter_map(|p| {
                let name = p.name_as_str()?.to_owned();
                ["state_", "recv_", "reset_"]
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
                    .then(|| {
                        let calls = p.run_count() as f64;
                        (
                            name,
                            calls / s.ops.max(1.0),
                            p.run_time().as_nanos() as f64 / calls,
                        )
                    })
            })
            .collect();
        agent.stop();
        std::fs::write(STATS, before.trim()).unwrap();
        programs.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            cpu_us_per_op: s.cpu_us_per_op,
            programs,
        }
    }

    /// Microseconds per operation in all the programs together.
    pub(crate) fn us_per_op(&self) -> f64 {
        self.programs.iter().map(|(_, c, ns)| c * ns).sum::<f64>() / 1000.0
    }

    pub(crate) fn line(&self, name: &str) -> String {
        let each: Vec<String> = self
            .programs
            .iter()
            // Connection set-up and teardown in the keep-alive workload: too rare to show.
            .filter(|(_, calls, _)| *calls >= 0.01)
            .map(|(p, calls, ns)| format!("{p} {calls:.2} x {ns:.0} ns"))
            .collect();
        format!(
            "{name}: {:.2} µs per operation ({:.1}% of the node's {:.1} µs): {}",
            self.us_per_op(),
            self.us_per_op() / self.cpu_us_per_op * 100.0,
            self.cpu_us_per_op,
            each.join(", ")
        )
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "us_per_op": self.us_per_op(),
            "node_cpu_us_per_op": self.cpu_us_per_op,
            "programs": self.programs.iter().map(|(p, calls, ns)| serde_json::json!({"program": p, "calls_per_op": calls, "ns_per_call": ns})).collect::<Vec<_>>(),
        })
    }
}

/// `THREADS` loops of `op` for `RUN`.
pub(crate) fn threads(op: impl Fn(&AtomicBool) -> u64 + Send + Sync + 'static) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let op = Arc::new(op);
    let (t, busy) = (Instant::now(), busy_seconds());
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (stop, op) = (stop.clone(), op.clone());
            thread::spawn(move || op(&stop))
        })
        .collect();
    thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    let n: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    Sample::of(n as f64, t.elapsed().as_secs_f64(), busy_seconds() - busy)
}
