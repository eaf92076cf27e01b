//! Command-line flags, each also settable as an `OBSERVER_*` environment variable, and their
//! validation. An invalid value exits with code 64 (`EX_USAGE`) before anything is loaded.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{output::LogEvents, probes::HookType};

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
    /// Run the agent: load and attach the probes, write each event as a JSON line.
    Agent(AgentArgs),
    /// Load and attach every probe, print the attach plan, kernel release and BTF offsets,
    /// detach; exit 0 when the required hooks work, 1 otherwise.
    Check(ProbeArgs),
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
        default_value = "tp_btf,raw_tracepoint,tracepoint,kprobe"
    )]
    pub hook_types: Vec<HookType>,

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
}

impl AgentArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        self.probes.validate()?;
        if self.close_wait_threshold.is_zero() {
            return Err(Error::ZeroThreshold);
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("observer").chain(args.iter().copied()))
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
        assert!(a.validate().is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse(&["agent", "--hook-types", "tp_btf,fentry"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown hook type \"fentry\""), "{e}");
        let e = parse(&["agent", "--log-events", "file"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid value 'file'"), "{e}");
        let e = parse(&["agent", "--close-wait-threshold", "soon"])
            .unwrap_err()
            .to_string();
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
    }
}
