//! Helpers for the kernel tests: the privilege gate, a network namespace per scenario, the
//! agent as a child process whose JSON-lines events are collected per namespace, and the
//! kernel's own counters. The overhead benchmark runs its agents and namespaces with these too
//! (`benches/overhead.rs` includes this file).

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The agent binary built by cargo for these tests.
pub(crate) const OBSERVER: &str = env!("CARGO_BIN_EXE_observer");

/// `d` times `OBSERVER_TEST_TIME_SCALE` (1 when unset): how long a test waits for something
/// the agent or a client does. A QEMU guest without KVM runs CPU-heavy steps many times slower
/// than the host (`cargo xtask test --kernel 6.1` sets the scale); what a test asserts is
/// unchanged, only its patience.
pub(crate) fn patience(d: Duration) -> Duration {
    let scale = std::env::var("OBSERVER_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * scale
}

/// [`patience`] of `secs` seconds.
pub(crate) fn patience_secs(secs: u64) -> Duration {
    patience(Duration::from_secs(secs))
}

/// The running kernel's (major, minor) version.
pub(crate) fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// What an active reset's `rst_reason` is on this kernel: `name` where `tcp_send_reset`
/// carries the reason of an active reset (6.12+: 6.10 and 6.11 trace "not specified"), null
/// before.
pub(crate) fn active_rst_reason(name: &str) -> Value {
    if kernel_version() >= (6, 12) {
        Value::from(name)
    } else {
        Value::Null
    }
}

/// Whether the kernel tests can run. Prints why not; panics instead under `OBSERVER_REQUIRE_BPF=1`.
pub(crate) fn require_bpf() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    if root && btf {
        return true;
    }
    let why = if root {
        "no /sys/kernel/btf/vmlinux"
    } else {
        "not root"
    };
    assert!(
        std::env::var_os("OBSERVER_REQUIRE_BPF").is_none(),
        "OBSERVER_REQUIRE_BPF=1 but the kernel tests cannot run: {why}"
    );
    eprintln!("skipped: {why}");
    false
}

/// Runs `f` on a new thread inside a new network namespace with `lo` up, passing the
/// namespace's inode number. The thread then stays in the namespace, parked, until the test
/// process exits, as a pod's pause process holds its namespace: the agent finds namespaces
/// through the tasks in them, and a freed namespace's inode number would be reused by the next
/// one (an agent still collecting for this test would see another test's events under it).
pub(crate) fn in_netns<T: Send + 'static>(f: impl FnOnce(u64) -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let ino = enter_netns();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ino)));
        let _ = tx.send(out);
        loop {
            thread::park();
        }
    });
    match rx.recv().expect("namespace thread") {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// Moves the calling thread into a new network namespace with `lo` up; returns the
/// namespace's inode number. The namespace lives as long as a thread or socket is in it.
pub(crate) fn enter_netns() -> u64 {
    // SAFETY: unshare only affects this thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET)");
    loopback_up();
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

fn loopback_up() {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    assert!(fd >= 0);
    // SAFETY: zeroed ifreq is valid; the name fits.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS with a valid ifreq.
    unsafe {
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &req), 0);
        libc::close(fd);
    }
}

/// A `TcpExt` counter of the calling thread's network namespace.
pub(crate) fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
    let mut lines = text.lines();
    while let (Some(head), Some(vals)) = (lines.next(), lines.next()) {
        if head.starts_with("TcpExt:") {
            let i = head.split_whitespace().position(|h| h == name).unwrap();
            return vals.split_whitespace().nth(i).unwrap().parse().unwrap();
        }
    }
    panic!("no TcpExt line");
}

/// Bytes queued for reading on a socket (`FIONREAD`).
pub(crate) fn queued(s: &impl std::os::fd::AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0);
    n as usize
}

/// Waits until `s` has at least `n` bytes queued.
pub(crate) fn wait_queued(s: &impl std::os::fd::AsRawFd, n: usize) {
    let deadline = Instant::now() + patience(Duration::from_secs(5));
    while queued(s) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} bytes arrived",
            queued(s)
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Sets `SO_LINGER` to on with the given timeout.
pub(crate) fn set_linger(s: &impl std::os::fd::AsRawFd, secs: i32) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: secs,
    };
    // SAFETY: valid option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// The agent's `/metrics` text.
pub(crate) fn scrape(url: &str) -> String {
    ureq::get(&format!("{url}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The value of the sample `name{...}` (or plain `name`) whose labels include every pair of
/// `labels`.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (set, value) = match rest.strip_prefix('{') {
            Some(labelled) => labelled.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// Scrapes until `f` accepts the text (returning it) or `timeout` passes (panicking with it).
pub(crate) fn wait_metrics(
    url: &str,
    timeout: Duration,
    what: &str,
    f: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + patience(timeout);
    loop {
        let text = scrape(url);
        if f(&text) {
            return text;
        }
        if Instant::now() >= deadline {
            // The samples alone: a CI log keeps a failure's first and last lines only.
            let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            panic!("{what}; /metrics samples:\n{}", samples.join("\n"));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `n` connections, each closed by its server with the client's request unread (one
/// RST-on-close each). Returns the namespace and the kernel's count of the aborts.
pub(crate) fn aborts(n: usize) -> (u64, u64) {
    in_netns(move |ns| {
        let before = tcp_ext("TCPAbortOnClose");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        for _ in 0..n {
            let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            std::io::Write::write_all(&mut c, b"unread request").unwrap();
            wait_queued(&s, 14);
            drop(s);
            drop(c);
        }
        (ns, tcp_ext("TCPAbortOnClose") - before)
    })
}

/// This process's `comm`, as the agent should report it.
pub(crate) fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_owned()
}

#[derive(Default)]
struct Shared {
    by_netns: HashMap<u64, Vec<Value>>,
    resets_by_netns: HashMap<u64, Vec<Value>>,
    /// Events per namespace and kind.
    counts: HashMap<(u64, String), usize>,
    stderr: Vec<String>,
    ready: bool,
    exited: bool,
}

/// A pin directory of the test's own on bpffs (agents running in parallel must not share the
/// pinned CLOSE_WAIT table), removed on drop.
pub(crate) struct PinDir(std::path::PathBuf);

impl PinDir {
    pub(crate) fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::path::PathBuf::from(format!(
            "/sys/fs/bpf/observer-test-{}-{n}",
            std::process::id()
        )))
    }

    pub(crate) fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parses the agent's JSON-lines stdout into `shared`, per namespace, on a thread of its own.
fn collect_events(out: std::process::ChildStdout, s: Arc<(Mutex<Shared>, Condvar)>) {
    thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut line = String::new();
        while matches!(out.read_line(&mut line), Ok(n) if n > 0) {
            // A last line without its newline was cut short by a SIGKILL: not an event.
            if !line.ends_with('\n') {
                break;
            }
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            line.clear();
            let ns = v["netns"].as_u64().unwrap();
            let (m, cv) = &*s;
            let mut g = m.lock().unwrap();
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            *g.counts.entry((ns, kind)).or_default() += 1;
            // The victims' side of the tests' own aborts, kept apart so that the tests
            // counting aborts see only those (`Agent::resets`).
            let list = if v["kind"] == "reset_received" {
                &mut g.resets_by_netns
            } else {
                &mut g.by_netns
            };
            list.entry(ns).or_default().push(v);
            drop(g);
            cv.notify_all();
        }
    });
}

/// Makes `cmd`'s process join the cgroup whose `cgroup.procs` is `procs` before it execs.
fn enter_cgroup_on_exec(cmd: &mut Command, procs: &std::path::Path) {
    let path = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: between fork and exec only open, write and close, which are async-signal-safe;
    // "0" moves the writing process, the agent-to-be.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n == 1 { Ok(()) } else { Err(err) }
        });
    }
}

/// The agent as a child process, with an API port and a data dir of its own. Events are parsed
/// from its stdout and kept per netns.
pub(crate) struct Agent {
    child: Child,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    /// `http://127.0.0.1:PORT` of its API.
    pub(crate) url: String,
    /// `--metrics-listen`'s URL, when the test set it.
    pub(crate) metrics_url: Option<String>,
    /// Its data dir, unless the test gave one.
    _data: Option<tempfile::TempDir>,
    /// Dropped after the child is stopped (fields drop after `Drop::drop`).
    pins: Option<PinDir>,
}

impl Agent {
    /// Starts `observer agent` with `args` and a pin directory of its own, and waits until it
    /// logs that it is ready.
    pub(crate) fn start(args: &[&str]) -> Self {
        let pins = PinDir::new();
        let mut agent = Self::start_pinned(&pins, args);
        agent.pins = Some(pins);
        agent
    }

    /// Starts `observer agent` pinning its maps in `pins` (shared with a later agent), with a
    /// data dir of its own unless `args` has `--data-dir`.
    pub(crate) fn start_pinned(pins: &PinDir, args: &[&str]) -> Self {
        Self::start_binary(OBSERVER, pins, args)
    }

    /// As [`Agent::start`], the agent placed in the cgroup whose `cgroup.procs` is `procs`
    /// before it runs, so everything it allocates (its eBPF maps included) is charged there.
    pub(crate) fn start_in_cgroup(procs: &std::path::Path, args: &[&str]) -> Self {
        let pins = PinDir::new();
        let mut agent = Self::start_with(OBSERVER, &pins, args, Some(procs));
        agent.pins = Some(pins);
        agent
    }

    /// As [`Agent::start_pinned`], running the agent binary `bin` (another build's).
    pub(crate) fn start_binary(bin: &str, pins: &PinDir, args: &[&str]) -> Self {
        Self::start_with(bin, pins, args, None)
    }

    /// As [`Agent::start`], its events written to /dev/null: nothing in this process parses
    /// them (the overhead benchmark, whose CPU figures would count that work as the agent's).
    #[allow(
        dead_code,
        reason = "the overhead benchmark's, which includes this file"
    )]
    pub(crate) fn start_discarding(args: &[&str]) -> Self {
        let pins = PinDir::new();
        let mut agent = Self::launch(OBSERVER, &pins, args, None, false);
        agent.pins = Some(pins);
        agent
    }

    fn start_with(
        bin: &str,
        pins: &PinDir,
        args: &[&str],
        cgroup_procs: Option<&std::path::Path>,
    ) -> Self {
        Self::launch(bin, pins, args, cgroup_procs, true)
    }

    /// Starts the agent, its events collected per namespace if `collect`, and waits until it
    /// is ready.
    fn launch(
        bin: &str,
        pins: &PinDir,
        args: &[&str],
        cgroup_procs: Option<&std::path::Path>,
        collect: bool,
    ) -> Self {
        let data = (!args.contains(&"--data-dir")).then(|| tempfile::tempdir().unwrap());
        let mut cmd = Command::new(bin);
        if let Some(procs) = cgroup_procs {
            enter_cgroup_on_exec(&mut cmd, procs);
        }
        cmd.arg("agent")
            .args(["--pin-dir", pins.path(), "--listen", "127.0.0.1:0"])
            .args(args);
        if let Some(d) = &data {
            cmd.arg("--data-dir").arg(d.path());
        }
        let mut child = cmd
            .env("OBSERVER_LOG", "info")
            .stdout(if collect {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn observer agent");
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let err = child.stderr.take().unwrap();
        if let Some(out) = child.stdout.take() {
            collect_events(out, shared.clone());
        }
        let s = shared.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*s;
                let mut g = m.lock().unwrap();
                g.ready |= line.contains("agent ready");
                g.stderr.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*s;
            m.lock().unwrap().exited = true;
            cv.notify_all();
        });
        let mut agent = Self {
            child,
            shared,
            url: String::new(),
            metrics_url: None,
            _data: data,
            pins: None,
        };
        {
            let (m, cv) = &*agent.shared;
            let g = cv
                .wait_timeout_while(m.lock().unwrap(), patience(Duration::from_secs(30)), |g| {
                    !g.ready && !g.exited
                })
                .unwrap()
                .0;
            assert!(
                g.ready,
                "agent did not become ready:\n{}",
                g.stderr.join("\n")
            );
            let ready = g.stderr.iter().find(|l| l.contains("agent ready")).unwrap();
            let field = |name: &str| {
                ready
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            };
            agent.url = format!("http://{}", field("listen").unwrap());
            // Absent from the previous release's line (the upgrade test runs it).
            agent.metrics_url = field("metrics_listen")
                .filter(|m| *m != "off")
                .map(|m| format!("http://{m}"));
        }
        agent
    }

    /// Waits until `netns` has `n` events (or `timeout` passes), then a further `settle` to catch
    /// extras, and returns them all, `reset_received` excepted (see [`Agent::resets`]).
    pub(crate) fn events(
        &self,
        netns: u64,
        n: usize,
        timeout: Duration,
        settle: Duration,
    ) -> Vec<Value> {
        self.collected(|g| &g.by_netns, netns, n, (timeout, settle))
    }

    /// As [`Agent::events`], but waits for `n` events of `kind`: the pool monitor may report
    /// churn among a test's own events, and those must not count towards `n`.
    pub(crate) fn events_of(
        &self,
        netns: u64,
        kind: &str,
        n: usize,
        timeout: Duration,
        settle: Duration,
    ) -> Vec<Value> {
        let (m, cv) = &*self.shared;
        let g = cv
            .wait_timeout_while(m.lock().unwrap(), patience(timeout), |g| {
                g.counts
                    .get(&(netns, kind.to_owned()))
                    .copied()
                    .unwrap_or(0)
                    < n
            })
            .unwrap()
            .0;
        drop(g);
        thread::sleep(settle);
        self.events(netns, 0, Duration::ZERO, Duration::ZERO)
    }

    /// As [`Agent::events`], for the `reset_received` events of `netns`, which
    /// [`Agent::events`] leaves out.
    pub(crate) fn resets(
        &self,
        netns: u64,
        n: usize,
        timeout: Duration,
        settle: Duration,
    ) -> Vec<Value> {
        self.collected(|g| &g.resets_by_netns, netns, n, (timeout, settle))
    }

    /// The events of `netns` in the list `pick` chooses, once it has `n` (or `timeout` passed)
    /// and a further `settle`.
    fn collected(
        &self,
        pick: fn(&Shared) -> &HashMap<u64, Vec<Value>>,
        netns: u64,
        n: usize,
        (timeout, settle): (Duration, Duration),
    ) -> Vec<Value> {
        let (m, cv) = &*self.shared;
        let g = cv
            .wait_timeout_while(m.lock().unwrap(), patience(timeout), |g| {
                pick(g).get(&netns).map_or(0, Vec::len) < n
            })
            .unwrap()
            .0;
        drop(g);
        thread::sleep(settle);
        pick(&m.lock().unwrap())
            .get(&netns)
            .cloned()
            .unwrap_or_default()
    }

    /// The agent's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its pin directory, when [`Agent::start`] made one for it.
    pub(crate) fn pin_dir(&self) -> Option<&str> {
        self.pins.as_ref().map(PinDir::path)
    }

    /// Stops the agent's process (SIGSTOP): the programs keep running in the kernel, nothing
    /// reads what they write.
    pub(crate) fn pause(&self) {
        // SAFETY: signalling our own child.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
        assert_eq!(rc, 0);
    }

    /// Lets a paused agent go on (SIGCONT).
    pub(crate) fn resume(&self) {
        // SAFETY: signalling our own child.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        assert_eq!(rc, 0);
    }

    /// Sends SIGTERM and waits; returns the exit status and everything it logged.
    pub(crate) fn stop(mut self) -> (ExitStatus, String) {
        let status = self.terminate();
        (status, self.log())
    }

    /// Kills the agent with SIGKILL (no clean-up of any kind) and waits for it; returns the exit
    /// status and everything it logged.
    pub(crate) fn kill(mut self) -> (ExitStatus, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let status = self.child.wait().unwrap();
        (status, self.log())
    }

    /// Everything the agent logged so far, or until it exited.
    fn log(&self) -> String {
        let (m, cv) = &*self.shared;
        let g = cv
            .wait_timeout_while(m.lock().unwrap(), patience(Duration::from_secs(10)), |g| {
                !g.exited
            })
            .unwrap()
            .0;
        g.stderr.join("\n")
    }

    fn terminate(&mut self) -> ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// Standard `wait` for events: up to 10 s for the expected count, then 500 ms for extras.
pub(crate) fn events(agent: &Agent, netns: u64, n: usize) -> Vec<Value> {
    agent.events(
        netns,
        n,
        Duration::from_secs(10),
        Duration::from_millis(500),
    )
}

/// Only the events of `kind`.
pub(crate) fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// A pod's cgroup and log layout, removed on drop.
pub(crate) struct FakePod {
    /// The container's cgroup.
    pub(crate) scope: PathBuf,
    dirs: Vec<PathBuf>,
    /// The kubelet's log root: `pods/` and `containers/`.
    pub(crate) logs: tempfile::TempDir,
    /// The container id.
    pub(crate) id: String,
}

impl FakePod {
    pub(crate) fn new() -> Self {
        let root = observer::enrich::cgroup2_mount().expect("a cgroup2 mount");
        let n = std::process::id();
        let uid = format!("0b5e4a3c-2d1f-4e6a-9b8c-{n:012x}");
        let id = format!("{n:064x}");
        let uid_ = uid.replace('-', "_");
        let slice = root.join("kubepods.slice");
        let qos = slice.join("kubepods-burstable.slice");
        let pod = qos.join(format!("kubepods-burstable-pod{uid_}.slice"));
        let scope = pod.join(format!("cri-containerd-{id}.scope"));
        std::fs::create_dir_all(&scope).unwrap();
        let logs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(logs.path().join(format!("pods/shop_web-0_{uid}/app"))).unwrap();
        std::fs::create_dir_all(logs.path().join("containers")).unwrap();
        std::fs::write(
            logs.path()
                .join(format!("containers/web-0_shop_app-{id}.log")),
            b"",
        )
        .unwrap();
        Self {
            dirs: vec![scope.clone(), pod, qos, slice],
            scope,
            logs,
            id,
        }
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A client that reads 10 bytes of the response and closes; inside `cgroup` when given.
pub(crate) fn client(port: u16, cgroup: Option<&PathBuf>) -> std::process::Child {
    let script = format!(
        "import socket, time\nc = socket.create_connection(('127.0.0.1', {port}))\ntime.sleep(0.3)\nc.recv(10)\nc.close()\n"
    );
    let enter = cgroup.map_or(String::new(), |cg| {
        format!("echo $$ > {}/cgroup.procs && ", cg.display())
    });
    Command::new("sh")
        .arg("-c")
        .arg(format!("{enter}exec /usr/bin/python3 -c \"$0\""))
        .arg(script)
        .spawn()
        .unwrap()
}
