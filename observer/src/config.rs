//! Command-line flags, each also settable as an `OBSERVER_*` environment variable, and their
//! validation. An invalid value exits with code 64 (`EX_USAGE`) before anything is loaded.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod client;
mod pool;

pub use client::{ClientArgs, EventsArgs, Output, SocketsArgs};
pub use pool::{LabelArgs, PoolArgs};

use crate::{
    output::LogEvents,
    probes::{self, HookType, Purpose, ReadHook},
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
        value_enum
    )]
    pub skip_probes: Vec<Purpose>,

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

#[cfg(test)]
mod tests;
