//! Flags of the pool-health detectors and of the labels of the detector series, and their
//! conversion into the pool's thresholds and the labeller's limits.

use clap::Args;

use super::Error;
use crate::pool::detect::Thresholds;

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

impl From<&LabelArgs> for crate::metrics::Limits {
    fn from(a: &LabelArgs) -> Self {
        Self {
            peers: a.peer_label_limit,
            workloads: a.workload_label_limit,
            idle: a.label_idle,
        }
    }
}
