//! One agent container, started with the manifest's flags and removed on drop, with the
//! state directories (bpffs pins, history, kubelet logs) of its own.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use super::manifest::DaemonSet;

/// How a run departs from the manifest.
#[derive(Default)]
pub(crate) struct Variant<'a> {
    /// A capability the manifest adds that this run does not.
    pub(crate) without: Option<&'a str>,
    /// Capabilities added beyond the manifest's.
    pub(crate) add: &'a [&'a str],
    /// Arguments after the manifest's.
    pub(crate) args: &'a [&'a str],
    /// The host's kubelet log root (`pods/`, `containers/`); an empty one of its own if none.
    pub(crate) kubelet_logs: Option<&'a std::path::Path>,
}

/// How a start ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The agent logged that it is ready.
    Ready,
    /// The container exited with this code.
    Exited(i32),
}

pub(crate) struct Container {
    name: String,
    _state: Vec<tempfile::TempDir>,
    pins: PathBuf,
}

/// podman, with runc: crun refuses hybrid cgroup layouts, runc runs on every layout.
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc"]);
    cmd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// This process's hard limit of `resource`: podman's defaults can exceed the machine's.
fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(resource, &raw mut r) }, 0);
    r.rlim_max
}

impl Container {
    /// Starts `image` as the manifest says, changed as `variant` says.
    pub(crate) fn start(image: &str, ds: &DaemonSet, variant: &Variant<'_>) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("observer-test-{}-{n}", std::process::id());
        let state: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        // A bpffs instance of its own: the container's pins stay apart from any agent's.
        let pins = state[1].path().to_owned();
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&pins));
        let logs = variant
            .kubelet_logs
            .map_or_else(|| state[0].path().to_owned(), PathBuf::from);
        for dir in ["pods", "containers"] {
            std::fs::create_dir_all(logs.join(dir)).unwrap();
        }
        let own = |path: &str| -> Option<PathBuf> {
            Some(match path {
                "/sys/fs/bpf" => pins.clone(),
                "/var/lib/observer" => state[0].path().join("data"),
                "/var/log/pods" => logs.join("pods"),
                "/var/log/containers" => logs.join("containers"),
                _ => return None,
            })
        };
        let mut flags = ds.podman_flags(variant.without, &|v| {
            let path = &v.host_path.as_ref().unwrap().path;
            own(path).unwrap_or_else(|| PathBuf::from(path))
        });
        for cap in variant.add {
            flags.extend(["--cap-add".to_owned(), (*cap).to_owned()]);
        }
        let nofile = hard_limit(libc::RLIMIT_NOFILE).min(1 << 20);
        let nproc = hard_limit(libc::RLIMIT_NPROC).min(4096);
        // Made before the container, so that a failed start is removed as well.
        let container = Self {
            name,
            _state: state,
            pins,
        };
        run(podman()
            .args(["run", "--detach", "--name", &container.name])
            .args(["--ulimit", &format!("nofile={nofile}:{nofile}")])
            .args(["--ulimit", &format!("nproc={nproc}:{nproc}")])
            .args(&flags)
            .arg(image)
            .args(ds.args())
            .args(variant.args));
        container
    }

    /// Waits until the agent is ready or the container has exited.
    pub(crate) fn wait_outcome(&self) -> Outcome {
        let deadline = Instant::now() + Duration::from_mins(1);
        while Instant::now() < deadline {
            if self.logs().contains("agent ready") {
                return Outcome::Ready;
            }
            let state = run(podman().args([
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                &self.name,
            ]));
            if let Some(code) = state.trim().strip_prefix("exited ") {
                return Outcome::Exited(code.parse().unwrap());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{} neither ready nor exited in 60 s:\n{}",
            self.name,
            self.logs()
        );
    }

    /// Waits for a log line containing `text`.
    pub(crate) fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.logs().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The container's log, stdout and stderr.
    pub(crate) fn logs(&self) -> String {
        let out = podman().args(["logs", &self.name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Runs `args` in the container (as `kubectl exec` would) and returns its stdout.
    pub(crate) fn exec(&self, args: &[&str]) -> String {
        run(podman().arg("exec").arg(&self.name).args(args))
    }

    /// `GET path` on `port` inside the pod's network namespace, as the kubelet probes it:
    /// `"<status> <body>"`.
    pub(crate) fn curl_in_pod(&self, port: u16, path: &str) -> String {
        let pid = run(podman().args(["inspect", "--format", "{{.State.Pid}}", &self.name]));
        let out = run(Command::new("nsenter")
            .args(["--target", pid.trim(), "--net", "--"])
            .args([
                "curl",
                "--silent",
                "--max-time",
                "10",
                "--write-out",
                "\n%{http_code}",
            ])
            .arg(format!("http://127.0.0.1:{port}{path}")));
        let (body, code) = out.rsplit_once('\n').unwrap();
        format!("{code} {body}")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "5", &self.name])
            .output();
        let _ = Command::new("umount").arg(&self.pins).status();
    }
}
