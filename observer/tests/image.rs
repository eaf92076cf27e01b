//! The container image, run the way `deploy/daemonset.yaml` says. The manifest's container
//! (capabilities, read-only root, hostPID, every hostPath mount, env, args, limits) is turned
//! into podman flags here, so the manifest and this test cannot drift: a field this file does
//! not translate fails the test. The containerised agent must detect aborts made by host
//! processes with their host pids, answer `observer events` through `podman exec` (as
//! `kubectl exec` does), and, with each added capability removed in turn, refuse to start or
//! degrade with a log line naming the capability.
//!
//! The image is `cargo xtask image`'s (`OBSERVER_IMAGE`, default `localhost/observer:<version>`).
//! Without root, podman or the image this skips, except under `OBSERVER_REQUIRE_BPF=1` (CI).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, with the failing call in the backtrace"
)]

#[allow(
    dead_code,
    reason = "shared with the kernel tests; this file uses a few helpers"
)]
#[path = "kernel/support.rs"]
mod support;

#[path = "image/container.rs"]
mod container;
#[path = "image/manifest.rs"]
mod manifest;

use std::{
    io::{BufRead as _, BufReader},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use container::{Container, Outcome, Variant};
use serde_json::Value;

/// Whether this machine can run the test; panics instead under `OBSERVER_REQUIRE_BPF=1`.
fn runnable() -> Option<String> {
    let image = std::env::var("OBSERVER_IMAGE")
        .unwrap_or_else(|_| format!("localhost/observer:{}", env!("CARGO_PKG_VERSION")));
    let why = if !support::require_bpf() {
        return None;
    } else if Command::new("podman").arg("--version").output().is_err() {
        "podman is not installed (cargo xtask image installs it)".to_owned()
    } else if !Command::new("podman")
        .args(["image", "exists", &image])
        .status()
        .unwrap()
        .success()
    {
        format!("image {image} does not exist: build it with `cargo xtask image`")
    } else {
        return Some(image);
    };
    assert!(
        std::env::var_os("OBSERVER_REQUIRE_BPF").is_none(),
        "OBSERVER_REQUIRE_BPF=1 but {why}"
    );
    eprintln!("skipping: {why}");
    None
}

/// `f`'s first `Some` within `limit`, polling.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_image_run_as_the_manifest_says_attributes_host_aborts() {
    let Some(image) = runnable() else { return };
    let ds = manifest::DaemonSet::read();
    let pod = support::FakePod::new();
    let agent = Container::start(
        &image,
        &ds,
        &Variant {
            kubelet_logs: Some(pod.logs.path()),
            ..Variant::default()
        },
    );
    assert!(
        matches!(agent.wait_outcome(), Outcome::Ready),
        "the agent did not become ready:\n{}",
        agent.logs()
    );
    // The kubelet's probes, from the node into the pod's network namespace.
    for path in ds.probe_paths() {
        let answer = agent.curl_in_pod(ds.metrics_port(), &path);
        assert!(answer.starts_with("200"), "GET {path}: {answer}");
    }

    // Two host processes, one in the pod's cgroup, each closing with 4,990 bytes unread.
    let scope = pod.scope.clone();
    let pids = support::in_netns(move |_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        [Some(&scope), None].map(|cgroup| {
            let mut child = support::client(port, cgroup);
            let (mut s, _) = l.accept().unwrap();
            std::io::Write::write_all(&mut s, &[1u8; 5000]).unwrap();
            assert!(child.wait().unwrap().success());
            child.id()
        })
    });
    let event_of = |pid: u32| {
        wait_for(Duration::from_secs(20), || {
            // As an operator would: `kubectl exec POD -- observer events ...`.
            let out = agent.exec(&[
                "observer",
                "events",
                "--kind",
                "rst_on_close",
                "--pid",
                &pid.to_string(),
                "--output",
                "json",
            ]);
            let v: Value = serde_json::from_str(&out).unwrap();
            v["events"].as_array().unwrap().first().cloned()
        })
        .unwrap_or_else(|| panic!("no event for host pid {pid}:\n{}", agent.logs()))
    };
    let in_pod = event_of(pids[0]);
    assert_eq!(in_pod["comm"], "python3", "{in_pod}");
    assert_eq!(in_pod["unread_bytes"], 4990, "{in_pod}");
    assert_eq!(
        (&in_pod["namespace"], &in_pod["pod"], &in_pod["container"]),
        (
            &Value::from("shop"),
            &Value::from("web-0"),
            &Value::from("app")
        ),
        "{in_pod}"
    );
    assert_eq!(in_pod["container_id"], pod.id.as_str());
    let on_host = event_of(pids[1]);
    assert_eq!(on_host["pod"], Value::Null, "{on_host}");

    let metrics = agent.curl_in_pod(ds.metrics_port(), "/metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "observer_rst_on_close_total{namespace=\"shop\",pod=\"web-0\",container=\"app\",comm=\"python3\""
        )),
        "/metrics on the pod's metrics port lacks the pod's series:\n{metrics}"
    );
}

/// A process of user `nobody` holding a socket in CLOSE_WAIT, opened before any agent runs:
/// only the /proc scan can name its owner, and that needs `CAP_SYS_PTRACE` and
/// `CAP_DAC_READ_SEARCH`.
struct NobodysCloseWait {
    child: std::process::Child,
    port: u16,
}

impl NobodysCloseWait {
    fn start() -> Self {
        let script = "import socket, sys, time\n\
                      l = socket.create_server(('127.0.0.1', 0))\n\
                      print(l.getsockname()[1], flush=True)\n\
                      c, _ = l.accept()\n\
                      time.sleep(3600)\n";
        let mut child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
        Self { child, port }
    }

    /// Whether the agent lists the socket with its owner's pid.
    fn attributed(&self, agent: &Container) -> bool {
        let out = agent.exec(&["observer", "sockets", "--output", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["local_port"] == self.port && s["pid"] == self.child.id())
    }
}

impl Drop for NobodysCloseWait {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log line that ends the start-up listing of CLOSE_WAIT sockets.
const LISTED: &str = "close_wait sockets listed";
/// Owners of sockets the programs did not see are looked up once a socket is due for a
/// report: a short threshold makes that seconds, not the default 30.
const SOONER: &[&str] = &["--close-wait-threshold=1s"];

#[test]
fn each_granted_capability_is_needed_and_named_when_missing() {
    let Some(image) = runnable() else { return };
    let ds = manifest::DaemonSet::read();
    let held = NobodysCloseWait::start();

    let full = Container::start(
        &image,
        &ds,
        &Variant {
            args: SOONER,
            ..Variant::default()
        },
    );
    assert!(
        matches!(full.wait_outcome(), Outcome::Ready),
        "{}",
        full.logs()
    );
    full.wait_log(LISTED);
    let t = std::time::Instant::now();
    assert!(
        wait_for(Duration::from_secs(20), || held
            .attributed(&full)
            .then_some(()))
        .is_some(),
        "with every grant, the CLOSE_WAIT socket of pid {} is not listed with its owner:\n{}",
        held.child.id(),
        full.exec(&["observer", "sockets"])
    );
    let took = t.elapsed();
    eprintln!("with every grant the owner was named {took:?} after the listing");
    drop(full);

    for cap in ds.added_capabilities() {
        let name = format!("CAP_{cap}");
        let agent = Container::start(
            &image,
            &ds,
            &Variant {
                without: Some(&cap),
                args: SOONER,
                ..Variant::default()
            },
        );
        let outcome = agent.wait_outcome();
        let logs = agent.logs();
        let named = logs.lines().find(|l| l.contains(&name)).unwrap_or_else(|| {
            panic!("without {name} ({outcome:?}) no log line names it:\n{logs}")
        });
        eprintln!("without {name}: {outcome:?}: {named}");
        if let Outcome::Exited(code) = outcome {
            assert_ne!(
                code, 0,
                "without {name} the agent exits, and must say it failed"
            );
        } else {
            // Degraded, not refused: what it costs must show once start-up discovery is done.
            agent.wait_log(LISTED);
            std::thread::sleep(took * 3 + Duration::from_secs(2));
            assert!(
                !held.attributed(&agent),
                "without {name} the agent still names the owner: the grant is not needed"
            );
        }
    }
}

/// An operator who swaps `SYS_ADMIN` for `BPF` and `PERFMON` learns in one line that the
/// runtime's seccomp profile is what refuses bpf(2), and which grant to add.
#[test]
fn bpf_and_perfmon_instead_of_sys_admin_name_the_seccomp_profile() {
    let Some(image) = runnable() else { return };
    let ds = manifest::DaemonSet::read();
    let agent = Container::start(
        &image,
        &ds,
        &Variant {
            without: Some("SYS_ADMIN"),
            add: &["BPF", "PERFMON"],
            ..Variant::default()
        },
    );
    let outcome = agent.wait_outcome();
    let logs = agent.logs();
    assert!(
        matches!(outcome, Outcome::Exited(1)),
        "{outcome:?}:\n{logs}"
    );
    let line = logs
        .lines()
        .find(|l| l.starts_with("observer: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{logs}"));
    assert!(
        line.contains("seccomp") && line.contains("add capability SYS_ADMIN"),
        "{line}"
    );
    // What it lacks is logged before, each with its cost.
    assert!(logs.contains("capability CAP_SYS_ADMIN missing"), "{logs}");
}
