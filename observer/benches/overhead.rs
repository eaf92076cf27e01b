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
    io::{BufRead as _, BufReader, Read as _, Write as _},
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

/// observer-ebpf's `floor` object: empty programs on the state and read tracepoints.
static FLOOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));

/// The empty programs of [`FLOOR`], attached as BTF tracepoints until dropped: what hooking
/// the agent's hot tracepoints costs before its programs do any work.
struct Hooks(#[expect(dead_code, reason = "held: dropping it detaches the programs")] aya::Ebpf);

impl Hooks {
    fn attach() -> Self {
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

/// The release agent, with its own data and pin dirs, stdout to /dev/null.
struct Agent {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
    pins: String,
}

impl Agent {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// The agent with `extra` flags.
    fn start_with(extra: &[&str]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let pins = format!("/sys/fs/bpf/observer-bench-{}", std::process::id());
        let mut child = Command::new(env!("CARGO_BIN_EXE_observer"))
            .args([
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--pin-dir",
                &pins,
                "--data-dir",
            ])
            .arg(data.path())
            .args(extra)
            .env("OBSERVER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("agent exited").unwrap();
            if let Some(rest) = line.split("listen=").nth(1) {
                break format!("http://{}", rest.split_whitespace().next().unwrap());
            }
        };
        thread::spawn(move || for _ in lines {});
        Self {
            child,
            url,
            _data: data,
            pins,
        }
    }

    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
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
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
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

    /// Bytes the kernel charges for the agent's maps (`memlock` of each map fd).
    fn map_bytes(&self) -> u64 {
        let dir = format!("/proc/{}/fdinfo", self.child.id());
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

    /// `rst_on_close` events reported, and events counted lost.
    fn aborts_reported_and_lost(&self) -> (u64, u64) {
        (
            self.metric_sum("observer_rst_on_close_total"),
            self.metric_sum("observer_events_lost_total"),
        )
    }

    fn metric_sum(&self, prefix: &str) -> u64 {
        let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().build());
        let text = agent
            .get(&format!("{}/metrics", self.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
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

    fn stop(self) {
        drop(self);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// Runs `f` on a thread in a fresh network namespace with `lo` up.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        // SAFETY: affects this thread only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let ok = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535").unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Busy CPU seconds of the whole node since boot: user, nice, system, irq and softirq of the
/// `cpu` line of `/proc/stat` (idle, iowait and the time the hypervisor stole are left out).
fn busy_seconds() -> f64 {
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
struct Sample {
    ops: f64,
    rate: f64,
    cpu_us_per_op: f64,
}

impl Sample {
    /// `ops` operations in `secs` seconds, `busy` busy CPU seconds meanwhile.
    fn of(ops: f64, secs: f64, busy: f64) -> Self {
        Self {
            ops,
            rate: ops / secs,
            cpu_us_per_op: busy * 1e6 / ops.max(1.0),
        }
    }
}

/// Time the kernel spent in each of observer's programs during one run of a workload.
struct KernelTime {
    /// The node's busy CPU per operation in that run.
    cpu_us_per_op: f64,
    /// (program, calls per operation, ns per call).
    programs: Vec<(String, f64, f64)>,
}

impl KernelTime {
    /// Three more runs of `work`, each with a fresh agent and `kernel.bpf_stats_enabled`
    /// (restored after): the one with the median time in the programs per operation (a run
    /// that meets a slow moment of the machine is left out, as in the pairs' medians).
    fn measure(work: &dyn Fn() -> Sample) -> Self {
        let mut runs: Vec<Self> = (0..3).map(|_| Self::measure_once(work)).collect();
        runs.sort_by(|a, b| a.us_per_op().total_cmp(&b.us_per_op()));
        runs.swap_remove(1)
    }

    /// One run of `work` with a fresh agent and `kernel.bpf_stats_enabled`: each program's run
    /// count and run time, per operation. The counters add two clock reads to every call (an
    /// empty program reads about 60 ns on the development VM), which the figures include; the
    /// overhead pairs run without them.
    fn measure_once(work: &dyn Fn() -> Sample) -> Self {
        const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let before = std::fs::read_to_string(STATS).unwrap();
        std::fs::write(STATS, "1").unwrap();
        // Every program attached, the read hook included: what each costs per call.
        let agent = Agent::start_with(&["--read-hook", "always"]);
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
    fn us_per_op(&self) -> f64 {
        self.programs.iter().map(|(_, c, ns)| c * ns).sum::<f64>() / 1000.0
    }

    fn line(&self, name: &str) -> String {
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

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "us_per_op": self.us_per_op(),
            "node_cpu_us_per_op": self.cpu_us_per_op,
            "programs": self.programs.iter().map(|(p, calls, ns)| serde_json::json!({"program": p, "calls_per_op": calls, "ns_per_call": ns})).collect::<Vec<_>>(),
        })
    }
}

/// `THREADS` loops of `op` for `RUN`.
fn threads(op: impl Fn(&AtomicBool) -> u64 + Send + Sync + 'static) -> Sample {
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

/// 64-byte request/response round trips over one keep-alive connection per thread.
fn request_response() -> Sample {
    in_netns(|| {
        threads(|stop| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let server = thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 64];
                while s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {}
            });
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_nodelay(true).unwrap();
            let mut buf = [1u8; 64];
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                c.write_all(&buf).unwrap();
                c.read_exact(&mut buf).unwrap();
                n += 1;
            }
            drop(c);
            server.join().unwrap();
            n
        })
    })
}

/// connect, 1-byte request, 1-byte response, close (the server closes first).
fn connection_storm() -> Sample {
    in_netns(|| {
        threads(|stop| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let quit = done.clone();
            let server = thread::spawn(move || {
                listener.set_nonblocking(false).unwrap();
                while let Ok((mut served, _)) = listener.accept() {
                    if quit.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut byte = [0u8; 1];
                    if served.read_exact(&mut byte).is_ok() {
                        let _ = served.write_all(&byte);
                    }
                }
            });
            let mut count = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut client = TcpStream::connect(addr).unwrap();
                client.write_all(b"x").unwrap();
                let mut byte = [0u8; 2];
                let _ = client.read(&mut byte);
                let _ = client.read(&mut byte);
                count += 1;
            }
            done.store(true, Ordering::Relaxed);
            drop(TcpStream::connect(addr));
            server.join().unwrap();
            count
        })
    })
}

/// Connections closed by their server with 10 unread bytes: one RST-on-close each.
fn aborts() -> Sample {
    in_netns(|| {
        threads(|stop| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut count = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut client = TcpStream::connect(addr).unwrap();
                let (served, _) = listener.accept().unwrap();
                client.write_all(&[0u8; 10]).unwrap();
                let mut queued: libc::c_int = 0;
                // SAFETY: FIONREAD writes one int.
                while unsafe { libc::ioctl(served.as_raw_fd(), libc::FIONREAD, &mut queued) } == 0
                    && queued < 10
                {}
                drop(served);
                count += 1;
            }
            count
        })
    })
}

/// Drives the loss counter: aborts at full speed for `RUN` with the agent stopped (SIGSTOP),
/// so nothing drains the ring buffer. Returns the aborts, the events reported once the agent
/// resumed, and the events it counted lost: every abort must be one or the other.
fn stalled_reader() -> (u64, u64, u64) {
    let agent = Agent::start();
    let pid = agent.child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let aborts = aborts().ops as u64;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // The ring is drained at once; the drop counters are exported every second.
    thread::sleep(Duration::from_millis(2500));
    let (reported, lost) = agent.aborts_reported_and_lost();
    agent.stop();
    (aborts, reported, lost)
}

/// nginx on loopback serving a 1 KiB file (one worker, no access log); stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(dir.path().join("index.html"), vec![b'x'; 1024]).unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             keepalive_requests 1000000;\n\
             server {{ listen 127.0.0.1:{port}; root {d}; }} }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-c"])
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian package)");
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// `wrk` requests/s, keep-alive or one connection per request.
    fn wrk(&self, keep_alive: bool) -> Sample {
        let mut cmd = Command::new("wrk");
        cmd.args(["-t2", "-c32", &format!("-d{}s", RUN.as_secs())]);
        if !keep_alive {
            cmd.args(["-H", "Connection: close"]);
        }
        let (t, busy) = (Instant::now(), busy_seconds());
        let out = cmd
            .arg(format!("http://127.0.0.1:{}/index.html", self.port))
            .output()
            .expect("wrk (Debian package)");
        let (secs, busy) = (t.elapsed().as_secs_f64(), busy_seconds() - busy);
        let text = String::from_utf8_lossy(&out.stdout);
        let rate: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:")?.trim().parse().ok())
            .unwrap_or(0.0);
        Sample::of(rate * RUN.as_secs_f64(), secs, busy)
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    } else {
        v[n / 2]
    }
}

struct Row {
    name: &'static str,
    unit: &'static str,
    base: Vec<Sample>,
    with: Vec<Sample>,
    agent_cpu: f64,
    /// The agent's highest peak RSS over its runs, in MiB (0 without the agent).
    agent_peak_mib: f64,
}

/// Throughput lost in the run `w` against the run `b` before it, in %.
fn rate_loss(b: &Sample, w: &Sample) -> f64 {
    (b.rate - w.rate) / b.rate * 100.0
}

/// Extra busy CPU per operation in the run `w` against the run `b` before it, in %.
fn cpu_gain(b: &Sample, w: &Sample) -> f64 {
    (w.cpu_us_per_op / b.cpu_us_per_op - 1.0) * 100.0
}

impl Row {
    /// Median over the pairs of the throughput lost with the agent, in %.
    fn overhead(&self) -> f64 {
        median(self.pairs(rate_loss))
    }

    /// Median over the pairs of the extra busy CPU per operation with the agent, in %.
    fn cpu_overhead(&self) -> f64 {
        median(self.pairs(cpu_gain))
    }

    fn pairs(&self, f: impl Fn(&Sample, &Sample) -> f64) -> Vec<f64> {
        self.base
            .iter()
            .zip(&self.with)
            .map(|(b, w)| f(b, w))
            .collect()
    }

    fn median_of(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
        median(v.iter().map(f).collect())
    }

    fn line(&self) -> String {
        let rate = |v: &[Sample]| Self::median_of(v, |s| s.rate);
        let cpu = |v: &[Sample]| Self::median_of(v, |s| s.cpu_us_per_op);
        format!(
            "{:<32} {:>9.0} {:>9.0} {:>8.1}% {:>8.2} {:>8.2} {:>8.1}% {:>7.1} {:>7.1}  {}",
            self.name,
            rate(&self.base),
            rate(&self.with),
            self.overhead(),
            cpu(&self.base),
            cpu(&self.with),
            self.cpu_overhead(),
            self.agent_cpu,
            self.agent_peak_mib,
            self.unit
        )
    }

    fn json(&self) -> serde_json::Value {
        let runs = |v: &[Sample]| {
            v.iter()
                .map(|s| serde_json::json!({"rate": s.rate, "cpu_us_per_op": s.cpu_us_per_op}))
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "workload": self.name, "unit": self.unit,
            "without": Self::median_of(&self.base, |s| s.rate),
            "with": Self::median_of(&self.with, |s| s.rate),
            "overhead_percent": self.overhead(),
            "cpu_us_per_op_without": Self::median_of(&self.base, |s| s.cpu_us_per_op),
            "cpu_us_per_op_with": Self::median_of(&self.with, |s| s.cpu_us_per_op),
            "cpu_per_op_overhead_percent": self.cpu_overhead(),
            "agent_cpu_percent": self.agent_cpu,
            "agent_peak_rss_mib": self.agent_peak_mib,
            "runs_without": runs(&self.base), "runs_with": runs(&self.with),
        })
    }
}

/// What runs beside the workload in the second run of each pair.
#[derive(Clone, Copy)]
enum Beside {
    /// A freshly started release agent, with these flags.
    Agent(&'static [&'static str]),
    /// Empty programs on the hooks the agent's programs run on ([`Hooks`]).
    EmptyPrograms,
    /// Nothing: both runs are baselines (the noise floor).
    Nothing,
}

/// Pairs of a baseline run of `work` and one with `beside`, in alternating order; the agent's
/// CPU is taken over its runs. With [`Beside::Nothing`] the pairing measures what it does when
/// nothing differs: the noise floor.
fn compare(
    name: &'static str,
    unit: &'static str,
    work: &dyn Fn() -> Sample,
    beside: Beside,
) -> Row {
    let (mut base, mut with, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut peak_kib = 0;
    for round in 0..ROUNDS {
        // Odd rounds run the other side first.
        let swap = round % 2 == 1;
        if !swap {
            base.push(work());
        }
        match beside {
            Beside::Nothing => {
                with.push(work());
                cpu.push(0.0);
            }
            Beside::EmptyPrograms => {
                let hooks = Hooks::attach();
                with.push(work());
                cpu.push(0.0);
                drop(hooks);
            }
            Beside::Agent(flags) => {
                let agent = Agent::start_with(flags);
                let (c0, t0) = (agent.cpu_seconds(), Instant::now());
                with.push(work());
                cpu.push((agent.cpu_seconds() - c0) / t0.elapsed().as_secs_f64() * 100.0);
                peak_kib = peak_kib.max(agent.status_kib("VmHWM:"));
                agent.stop();
            }
        }
        if swap {
            base.push(work());
        }
    }
    Row {
        name,
        unit,
        base,
        with,
        agent_cpu: median(cpu),
        agent_peak_mib: peak_kib as f64 / 1024.0,
    }
}

/// `n` established loopback connections (both ends open, `2n` tracked sockets): the agent's
/// RSS and map memory, its CPU while idle, and the connections it counts as established.
/// Both ends are held by Python processes, `per` connections each (the file limit here is
/// 20,000 per process), one listening port per pair (ports are unique per destination).
fn established_scale(n: usize) -> (u64, u64, u64, f64, u64, usize) {
    const PER: usize = 16_667;
    let agent = Agent::start();
    let groups = n.div_ceil(PER);
    let procs = in_netns(move || {
        let mut procs = Vec::new();
        for g in 0..groups {
            // Below the namespace's ephemeral range (1024-65535), so no client's local port
            // can take a listening port first.
            let port = 900 + g;
            let server = format!(
                "import resource, socket, sys\nresource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))\nl = socket.socket(); l.bind(('127.0.0.1', {port})); l.listen(4096)\nprint('listening', flush=True)\nheld = [l.accept()[0] for _ in range({PER})]\nprint('ok', flush=True)\nsys.stdin.read()\n"
            );
            let client = format!(
                "import resource, socket, sys\nresource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))\nheld = [socket.create_connection(('127.0.0.1', {port})) for _ in range({PER})]\nprint('ok', flush=True)\nsys.stdin.read()\n"
            );
            let mut s = python(&server);
            let mut line = [0u8; 10];
            s.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
            procs.push(s);
            procs.push(python(&client));
        }
        procs
    });
    let mut procs = procs;
    wait_ok(&mut procs);
    // Two pool scans to count them.
    let (rss, peak, maps, idle_cpu) = agent.settled(Duration::from_secs(11));
    let established = agent.metric_sum("observer_connections_established");
    for mut p in procs {
        drop(p.stdin.take());
        let _ = p.wait();
    }
    agent.stop();
    (rss, peak, maps, idle_cpu, established, 2 * groups * PER)
}

/// Waits for each process to print `ok`.
fn wait_ok(procs: &mut [Child]) {
    for p in procs {
        let mut ok = [0u8; 3];
        p.stdout.as_mut().unwrap().read_exact(&mut ok).unwrap();
    }
}

/// `python3 -c script` with piped stdin and stdout.
fn python(script: &str) -> Child {
    Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `n` sockets in CLOSE_WAIT: the agent's RSS and map memory, and its CPU while idle. The
/// client ends are held by three Python processes (one process may hold only so many files),
/// the server ends are accepted and closed here.
fn close_wait_scale(n: usize) -> (u64, u64, u64, f64) {
    const HOLDERS: usize = 3;
    let agent = Agent::start();
    let holders = in_netns(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let per = n / HOLDERS;
        let script = format!(
            "import socket, sys\nheld = [socket.create_connection(('127.0.0.1', {port})) for _ in range({per})]\nsys.stdout.write('ok\\n'); sys.stdout.flush()\nsys.stdin.read()\n"
        );
        let holders: Vec<Child> = (0..HOLDERS)
            .map(|_| {
                Command::new("/usr/bin/python3")
                    .args(["-c", &script])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for _ in 0..per * HOLDERS {
            drop(l.accept().unwrap());
        }
        holders
    });
    let mut holders = holders;
    wait_ok(&mut holders);
    // Two scans to settle.
    let (rss, peak, maps, idle_cpu) = agent.settled(Duration::from_secs(3));
    let tracked = agent.metric_sum("observer_close_wait_sockets");
    println!(
        "close_wait: {tracked} of {} sockets tracked",
        n / HOLDERS * HOLDERS
    );
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    agent.stop();
    (rss, peak, maps, idle_cpu)
}

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
        let agent = Agent::start();
        let rate = aborts().rate;
        thread::sleep(Duration::from_millis(1500));
        let (reported, lost) = agent.aborts_reported_and_lost();
        agent.stop();
        let _ = writeln!(
            t,
            "RST-on-close at {rate:.0}/s for {}s: {reported} reported, {lost} lost",
            RUN.as_secs()
        );
        rounds.push(serde_json::json!({"per_second": rate, "reported": reported, "lost": lost}));
    }
    let (aborts, reported, lost) = stalled_reader();
    let _ = writeln!(
        t,
        "RST-on-close with the agent stopped (SIGSTOP) for {}s: {aborts} aborts, {reported} reported once it resumed (what the ring buffer held), {lost} counted in observer_events_lost_total, {} unaccounted",
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
