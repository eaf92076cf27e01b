//! Command-line flags, each also settable as an `OBSERVER_*` environment variable, and their
//! validation. An invalid value exits with code 64 (`EX_USAGE`) before anything is loaded.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    output::LogEvents,
    pool::detect::Thresholds,
    probes::{self, HookType, ReadHook},
};

/// observer: names the TCP connection-handling bugs that take services down (RST-on-close,
/// CLOSE_WAIT leaks, pool churn) from inside the kernel, with no change to the applications.
#[derive(Debug, Parser)]
#[command(name = "observer", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach the probes, serve the HTTP API and /metrics, store and log events.
    Agent(Box<AgentArgs>),
    /// Load and attach every probe, print the attach plan, kernel release and BTF offsets,
    /// detach; exit 0 when the required hooks work, 1 otherwise.
    Check(ProbeArgs),
    /// Query recent events from an agent (newest first; `--follow` streams new ones).
    Events(EventsArgs),
    /// List live tracked sockets (sockets in CLOSE_WAIT) of an agent.
    Sockets(SocketsArgs),
    /// Show an agent's probes, hook types, counters and drops.
    Status(ClientArgs),
}

/// How client commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON (one object per line with `events --follow`).
    Json,
}

/// Flags every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The agent's API.
    #[arg(
        long,
        env = "OBSERVER_AGENT",
        value_name = "URL",
        default_value = "http://127.0.0.1:9464"
    )]
    pub agent: String,

    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

/// Flags of `observer events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    /// Agent and output.
    pub client: ClientArgs,
    /// Only this kind (rst_on_close, linger_abort, close_wait_leak, close_wait_resolved,
    /// connection_churn, connection_explosion, port_pressure).
    #[arg(long)]
    pub kind: Option<String>,
    /// Not before: RFC 3339, or a duration ago (`10m`).
    #[arg(long)]
    pub since: Option<String>,
    /// Not after: RFC 3339, or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// Only this owner process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only this process name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only this pod.
    #[arg(long)]
    pub pod: Option<String>,
    /// Only this Kubernetes namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only this peer: `IP` or `IP:PORT`.
    #[arg(long, value_name = "IP[:PORT]")]
    pub peer: Option<String>,
    /// At most this many (1 to 10000; the agent's default is 100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Keep printing new events as they happen (oldest first).
    #[arg(long)]
    pub follow: bool,
}

/// Flags of `observer sockets`.
#[derive(Debug, Clone, Args)]
pub struct SocketsArgs {
    #[command(flatten)]
    /// Agent and output.
    pub client: ClientArgs,
    /// TCP state (only close-wait is tracked).
    #[arg(long, default_value = "close-wait")]
    pub state: String,
    /// Only sockets in that state for at least this long (`30s`).
    #[arg(long, value_name = "DURATION")]
    pub min_age: Option<String>,
    /// Only this owner process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only this process name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only this peer: `IP` or `IP:PORT`.
    #[arg(long, value_name = "IP[:PORT]")]
    pub peer: Option<String>,
    /// At most this many.
    #[arg(long)]
    pub limit: Option<u32>,
}

/// Flags that choose how the probes are loaded.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// BTF of the running kernel, for kernels that ship it as a separate file.
    #[arg(
        long,
        env = "OBSERVER_BTF",
        value_name = "PATH",
        default_value = "/sys/kernel/btf/vmlinux"
    )]
    pub btf: PathBuf,

    /// Hook types to try for each probe, in order of preference (comma-separated). Leave one
    /// out to skip it, for example on a kernel where it misbehaves.
    #[arg(
        long,
        env = "OBSERVER_HOOK_TYPES",
        value_name = "TYPES",
        value_delimiter = ',',
        default_value = "tp_btf,raw_tracepoint,tracepoint,fexit,kprobe"
    )]
    pub hook_types: Vec<HookType>,

    /// Optional probes not to attach (comma-separated: reads, reset_reason, resets_received;
    /// without `resets_received` there are no `reset_received` events). Without `reads`
    /// no program ever runs on recvmsg, not even while a socket waits in CLOSE_WAIT (see
    /// `--read-hook`): owners come from connect, listen and close only, events carry no
    /// last-read time, and a CLOSE_WAIT leak's unread bytes are those when it was found.
    #[arg(
        long,
        env = "OBSERVER_SKIP_PROBES",
        value_name = "PROBES",
        value_delimiter = ',',
        value_parser = ["reads", "reset_reason", "resets_received"]
    )]
    pub skip_probes: Vec<String>,

    /// When the read hook runs: `on-demand` attaches it only while a socket has waited in
    /// CLOSE_WAIT a second or more (what it adds, the owner's reads, is reported for those
    /// sockets only), so a healthy node runs no program on its reads; a leak's last read
    /// before it was attached is then unknown (null). `always` runs it from start to stop.
    #[arg(
        long,
        env = "OBSERVER_READ_HOOK",
        value_name = "WHEN",
        value_enum,
        default_value = "on-demand"
    )]
    pub read_hook: ReadHook,

    /// Slots in the kernel's per-socket table (a power of two from 2 to 16777216; 128 bytes
    /// each, allocated at start). Each socket takes one of two slots its address hashes to;
    /// where both are taken it goes into an overflow map of 65,536 (slower; counted in
    /// `observer_map_entries{map="SOCKS"}`). The default holds about 260,000 live TCP
    /// sockets: raise it on nodes with more.
    #[arg(
        long,
        env = "OBSERVER_SOCKET_SLOTS",
        value_name = "N",
        default_value_t = observer_common::maps::SOCK_SLOTS_DEFAULT
    )]
    pub socket_slots: u32,

    /// Directory on bpffs where maps that must outlive the agent are pinned (the CLOSE_WAIT
    /// table): a restarted agent finds them there with every socket's true entry time.
    #[arg(
        long,
        env = "OBSERVER_PIN_DIR",
        value_name = "DIR",
        default_value = "/sys/fs/bpf/observer"
    )]
    pub pin_dir: PathBuf,
}

/// Flags of `observer agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    /// How the probes are loaded.
    pub probes: ProbeArgs,

    /// Where events go: `stdout` writes one JSON object per line.
    #[arg(
        long,
        env = "OBSERVER_LOG_EVENTS",
        value_enum,
        default_value = "stdout"
    )]
    pub log_events: LogEvents,

    /// A socket in CLOSE_WAIT longer than this is reported as a leak (`500ms`, `30s`, `5m`).
    #[arg(
        long,
        env = "OBSERVER_CLOSE_WAIT_THRESHOLD",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub close_wait_threshold: std::time::Duration,

    #[command(flatten)]
    /// The HTTP listeners and their budgets.
    pub serve: crate::api::serve::ServeArgs,

    /// Directory of the event history (`events.db`, SQLite).
    #[arg(
        long,
        env = "OBSERVER_DATA_DIR",
        value_name = "DIR",
        default_value = "/var/lib/observer"
    )]
    pub data_dir: PathBuf,

    /// How long events are kept in the history.
    #[arg(
        long,
        env = "OBSERVER_RETENTION",
        value_name = "DURATION",
        default_value = "24h",
        value_parser = humantime::parse_duration
    )]
    pub retention: std::time::Duration,

    /// Most events kept in the history; the oldest go first.
    #[arg(
        long,
        env = "OBSERVER_MAX_EVENTS",
        value_name = "N",
        default_value_t = 1_000_000
    )]
    pub max_events: u64,

    /// The cgroup v2 mount, to turn cgroup ids into container and pod paths (default: found
    /// in /proc/self/mountinfo).
    #[arg(long, env = "OBSERVER_CGROUP_ROOT", value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,

    /// The kubelet's pod log directory (`<namespace>_<pod>_<uid>/`), to name pods.
    #[arg(
        long,
        env = "OBSERVER_POD_LOGS",
        value_name = "DIR",
        default_value = "/var/log/pods"
    )]
    pub pod_logs: PathBuf,

    /// The kubelet's container log links (`<pod>_<namespace>_<container>-<id>.log`), to name
    /// containers.
    #[arg(
        long,
        env = "OBSERVER_CONTAINER_LOGS",
        value_name = "DIR",
        default_value = "/var/log/containers"
    )]
    pub container_logs: PathBuf,

    #[command(flatten)]
    /// Bounds on peer and workload labels.
    pub labels: LabelArgs,
    #[command(flatten)]
    /// Pool-health scan and detector thresholds.
    pub pool: PoolArgs,
}

/// Pool health: how often connection counts, TIME_WAIT sockets and ephemeral ports are read,
/// and when the detectors report.
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// How often connection counts are read from the kernel and sockets are listed for
    /// TIME_WAIT and ephemeral ports (listings are spaced further apart when they would take
    /// over 5% of a core); rates are measured over this window.
    #[arg(
        long,
        env = "OBSERVER_POOL_INTERVAL",
        value_name = "DURATION",
        default_value = "5s",
        value_parser = humantime::parse_duration
    )]
    pub pool_interval: std::time::Duration,
    /// `connection_churn`: new connections per second from one workload to one peer at or
    /// above this rate, while their median lifetime is at most --churn-lifetime.
    #[arg(
        long,
        env = "OBSERVER_CHURN_RATE",
        value_name = "PER_SECOND",
        default_value_t = 50.0
    )]
    pub churn_rate: f64,
    /// `connection_churn`: the median lifetime under which connections count as short.
    #[arg(
        long,
        env = "OBSERVER_CHURN_LIFETIME",
        value_name = "DURATION",
        default_value = "1s",
        value_parser = humantime::parse_duration
    )]
    pub churn_lifetime: std::time::Duration,
    /// `connection_explosion`: established connections from one workload to one peer at or
    /// above this count.
    #[arg(
        long,
        env = "OBSERVER_EXPLOSION_THRESHOLD",
        value_name = "N",
        default_value_t = 500
    )]
    pub explosion_threshold: u64,
    /// `port_pressure`: share of the namespace's ip_local_port_range in use from one source
    /// address to one destination at or above this ratio (0 to 1).
    #[arg(
        long,
        env = "OBSERVER_PORT_PRESSURE_RATIO",
        value_name = "RATIO",
        default_value_t = 0.8
    )]
    pub port_pressure_ratio: f64,
    /// A condition that persists is reported again only after this long (per detector,
    /// workload and peer).
    #[arg(
        long,
        env = "OBSERVER_DETECTOR_COOLDOWN",
        value_name = "DURATION",
        default_value = "5m",
        value_parser = humantime::parse_duration
    )]
    pub detector_cooldown: std::time::Duration,
}

impl PoolArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.pool_interval < std::time::Duration::from_millis(100) {
            return Err(Error::Invalid(
                "--pool-interval",
                "it must be at least 100ms",
            ));
        }
        if !(self.churn_rate.is_finite() && self.churn_rate > 0.0) {
            return Err(Error::Invalid(
                "--churn-rate",
                "it must be a number above 0",
            ));
        }
        if self.churn_lifetime.is_zero() {
            return Err(Error::Invalid(
                "--churn-lifetime",
                "it must be longer than 0s",
            ));
        }
        if self.explosion_threshold == 0 {
            return Err(Error::Invalid(
                "--explosion-threshold",
                "it must be at least 1",
            ));
        }
        if !(self.port_pressure_ratio > 0.0 && self.port_pressure_ratio <= 1.0) {
            return Err(Error::Invalid(
                "--port-pressure-ratio",
                "it must be above 0 and at most 1",
            ));
        }
        Ok(())
    }
}

/// A flag value that parsed but makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--hook-types` names one type twice.
    #[error("invalid --hook-types: {0} is listed twice")]
    DuplicateHookType(HookType),
    /// `--hook-types` is empty.
    #[error("invalid --hook-types: list at least one hook type")]
    NoHookType,
    /// `--close-wait-threshold` is zero.
    #[error("invalid --close-wait-threshold: it must be longer than 0s")]
    ZeroThreshold,
    /// `--retention` is zero.
    #[error("invalid --retention: it must be longer than 0s")]
    ZeroRetention,
    /// `--max-events` is zero.
    #[error("invalid --max-events: keep at least one event")]
    ZeroMaxEvents,
    /// A flag out of its range: the flag and what it must be.
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, &'static str),
}

impl AgentArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        self.probes.validate()?;
        self.pool.validate()?;
        if self.close_wait_threshold.is_zero() {
            return Err(Error::ZeroThreshold);
        }
        if self.retention.is_zero() {
            return Err(Error::ZeroRetention);
        }
        if self.max_events == 0 {
            return Err(Error::ZeroMaxEvents);
        }
        Ok(())
    }
}

impl ProbeArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.hook_types.is_empty() {
            return Err(Error::NoHookType);
        }
        for (i, t) in self.hook_types.iter().enumerate() {
            if self.hook_types[..i].contains(t) {
                return Err(Error::DuplicateHookType(*t));
            }
        }
        if !self.socket_slots.is_power_of_two() || !(2..=1 << 24).contains(&self.socket_slots) {
            return Err(Error::Invalid(
                "--socket-slots",
                "it must be a power of two from 2 to 16777216",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("observer").chain(args.iter().copied()))
    }

    /// The message clap refuses `args` with.
    fn refusal(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let Command::Agent(a) = parse(&["agent"]).unwrap().command else {
            panic!("not agent")
        };
        assert_eq!(a.probes.hook_types, HookType::ALL);
        assert_eq!(a.log_events, LogEvents::Stdout);
        assert_eq!(a.close_wait_threshold, std::time::Duration::from_secs(30));
        assert_eq!(a.probes.pin_dir, PathBuf::from("/sys/fs/bpf/observer"));
        assert!(a.probes.skip_probes.is_empty());
        assert_eq!(a.probes.read_hook, ReadHook::OnDemand);
        assert!(a.validate().is_ok());
    }

    #[test]
    fn read_hook_takes_always_and_refuses_others() {
        let Command::Agent(a) = parse(&["agent", "--read-hook", "always"]).unwrap().command else {
            panic!("not agent")
        };
        assert_eq!(a.probes.read_hook, ReadHook::Always);
        let e = refusal(&["agent", "--read-hook", "sometimes"]);
        assert!(
            e.contains("invalid value 'sometimes' for '--read-hook") && e.contains("on-demand"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = refusal(&["agent", "--hook-types", "tp_btf,fentry"]);
        assert!(e.contains("tracepoint, fexit or kprobe"), "{e}");
        assert!(e.contains("unknown hook type \"fentry\""), "{e}");
        let e = refusal(&["agent", "--skip-probes", "reads,state"]);
        assert!(
            e.contains("invalid value 'state' for '--skip-probes"),
            "{e}"
        );
        let e = refusal(&["agent", "--log-events", "file"]);
        assert!(e.contains("invalid value 'file'"), "{e}");
        let e = refusal(&["agent", "--close-wait-threshold", "soon"]);
        assert!(
            e.contains("invalid value 'soon' for '--close-wait-threshold"),
            "{e}"
        );
        let Command::Agent(a) = parse(&["agent", "--close-wait-threshold", "0s"])
            .unwrap()
            .command
        else {
            panic!("not agent")
        };
        assert_eq!(
            a.validate().unwrap_err().to_string(),
            "invalid --close-wait-threshold: it must be longer than 0s"
        );
        let Command::Check(p) = parse(&["check", "--hook-types", "tracepoint,tracepoint"])
            .unwrap()
            .command
        else {
            panic!("not check")
        };
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "invalid --hook-types: tracepoint is listed twice"
        );
        for (flag, value, why) in [
            (
                "--port-pressure-ratio",
                "1.5",
                "it must be above 0 and at most 1",
            ),
            ("--churn-rate", "0", "it must be a number above 0"),
            ("--explosion-threshold", "0", "it must be at least 1"),
            ("--pool-interval", "10ms", "it must be at least 100ms"),
            (
                "--socket-slots",
                "100000",
                "it must be a power of two from 2 to 16777216",
            ),
            (
                "--socket-slots",
                "1",
                "it must be a power of two from 2 to 16777216",
            ),
        ] {
            let Command::Agent(a) = parse(&["agent", flag, value]).unwrap().command else {
                panic!("not agent")
            };
            assert_eq!(
                a.validate().unwrap_err().to_string(),
                format!("invalid {flag}: {why}")
            );
        }
    }
}

/// Bounds on the peer and workload labels of the detector series.
#[derive(Args, Debug, Clone)]
pub struct LabelArgs {
    /// Distinct peers named in metric labels; more fold into `peer="other"`.
    #[arg(
        long,
        env = "OBSERVER_PEER_LABEL_LIMIT",
        value_name = "N",
        default_value_t = 100
    )]
    pub peer_label_limit: usize,

    /// Distinct workloads (namespace, pod, container, comm) named in metric labels; more fold
    /// into "other".
    #[arg(
        long,
        env = "OBSERVER_WORKLOAD_LABEL_LIMIT",
        value_name = "N",
        default_value_t = 250
    )]
    pub workload_label_limit: usize,

    /// How long a peer or workload goes unused before its name is freed and its counter
    /// series are removed.
    #[arg(
        long,
        env = "OBSERVER_LABEL_IDLE",
        value_name = "DURATION",
        default_value = "10m",
        value_parser = humantime::parse_duration
    )]
    pub label_idle: std::time::Duration,
}

impl From<&ProbeArgs> for probes::Options {
    fn from(a: &ProbeArgs) -> Self {
        Self {
            btf: a.btf.clone(),
            hook_types: a.hook_types.clone(),
            skip_probes: a.skip_probes.clone(),
            read_hook: a.read_hook,
            socket_slots: a.socket_slots,
            pin_dir: a.pin_dir.clone(),
        }
    }
}

impl From<&PoolArgs> for Thresholds {
    fn from(a: &PoolArgs) -> Self {
        Self {
            churn_rate: a.churn_rate,
            churn_lifetime: a.churn_lifetime,
            explosion: a.explosion_threshold,
            port_ratio: a.port_pressure_ratio,
            cooldown: a.detector_cooldown,
        }
    }
}

impl From<&LabelArgs> for crate::metrics::Limits {
    fn from(a: &LabelArgs) -> Self {
        Self {
            peers: a.peer_label_limit,
            workloads: a.workload_label_limit,
            idle: a.label_idle,
        }
    }
}
