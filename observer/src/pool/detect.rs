//! The pool-health detectors: pure decisions over one scan's figures, and the cooldown that
//! keeps a condition that persists from flooding the history.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

use observer_common::flow::LIFETIME_BUCKETS;

use super::lifetimes::median_le_ms;
use crate::events::{Figures, Kind, human};

/// When each detector reports (from the flags).
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// New connections per second.
    pub churn_rate: f64,
    /// Median lifetime at or under which connections are short.
    pub churn_lifetime: Duration,
    /// Established connections.
    pub explosion: u64,
    /// Share of the ephemeral range.
    pub port_ratio: f64,
    /// Quiet time after a report.
    pub cooldown: Duration,
}

/// One workload's connections to one peer over one scan window.
#[derive(Debug, Clone)]
pub struct Window {
    /// The window's length.
    pub length: Duration,
    /// Connections established during it.
    pub opened: u64,
    /// Connections closed during it, by lifetime bucket.
    pub lifetimes: [u64; LIFETIME_BUCKETS],
    /// Connections established at its end.
    pub established: u64,
}

fn window_ms(w: &Window) -> u64 {
    u64::try_from(w.length.as_millis()).unwrap_or(u64::MAX)
}

/// `connection_churn`: many new connections, short-lived. `None` when the window is calm.
pub fn churn(t: &Thresholds, w: &Window) -> Option<Figures> {
    let secs = w.length.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let rate = w.opened as f64 / secs;
    let median = median_le_ms(&w.lifetimes)?;
    let short = u128::from(median) <= t.churn_lifetime.as_millis();
    (rate >= t.churn_rate && short).then(|| Figures {
        window_ms: window_ms(w),
        opened_per_second: Some((rate * 10.0).round() / 10.0),
        closed: Some(w.lifetimes.iter().sum()),
        median_lifetime_ms: Some(median),
        established: Some(w.established),
        threshold: t.churn_rate,
        ..Figures::default()
    })
}

/// `connection_explosion`: too many established connections at once.
pub fn explosion(t: &Thresholds, w: &Window) -> Option<Figures> {
    let secs = w.length.as_secs_f64();
    (w.established >= t.explosion).then(|| Figures {
        window_ms: window_ms(w),
        opened_per_second: (secs > 0.0).then(|| (w.opened as f64 / secs * 10.0).round() / 10.0),
        established: Some(w.established),
        threshold: t.explosion as f64,
        ..Figures::default()
    })
}

/// `port_pressure`: `in_use` local ports of a `range`-port ephemeral range.
pub fn port_pressure(t: &Thresholds, in_use: u64, range: u32, length: Duration) -> Option<Figures> {
    if range == 0 {
        return None;
    }
    let ratio = in_use as f64 / f64::from(range);
    (ratio >= t.port_ratio).then(|| Figures {
        window_ms: u64::try_from(length.as_millis()).unwrap_or(u64::MAX),
        ports_in_use: Some(in_use),
        port_range: Some(range),
        ratio: Some((ratio * 1000.0).round() / 1000.0),
        threshold: t.port_ratio,
        ..Figures::default()
    })
}

/// The hint of a pool-health event, from its figures; `server` when the workload is the
/// accepting side.
pub fn hint(kind: Kind, f: &Figures, server: bool) -> String {
    match kind {
        Kind::ConnectionChurn => {
            let rate = f.opened_per_second.unwrap_or_default();
            let median = human(f.median_lifetime_ms.unwrap_or_default());
            if server {
                format!(
                    "clients open {rate:.0} new connections per second to this server and half of them close within {median}: the callers are not reusing connections (keep-alive off, or a pool too small for their concurrency)"
                )
            } else {
                format!(
                    "{rate:.0} new connections per second to this peer and half of them close within {median}: the pool is not reusing connections (too few idle connections kept for the concurrency, or keep-alive off), so each request pays a handshake and leaves a TIME_WAIT socket"
                )
            }
        }
        Kind::ConnectionExplosion => format!(
            "{} established connections from this workload to one peer: a pool per task or thread, or a pool without a limit; each one holds an ephemeral port and a slot on the server",
            f.established.unwrap_or_default()
        ),
        Kind::PortPressure => format!(
            "{} of {} ephemeral ports to this destination are in use ({:.0}%): new connections will fail with EADDRNOTAVAIL; reuse connections, or widen ip_local_port_range",
            f.ports_in_use.unwrap_or_default(),
            f.port_range.unwrap_or_default(),
            f.ratio.unwrap_or_default() * 100.0
        ),
        _ => String::new(),
    }
}

/// At most one report per detector and key every `every`.
#[derive(Debug)]
pub struct Cooldown<K> {
    every: Duration,
    last: HashMap<(Kind, K), Instant>,
}

impl<K: Hash + Eq> Cooldown<K> {
    /// Quiet for `every` after each report.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether `kind` may report `key` at `now`.
    pub fn allow(&self, kind: Kind, key: K, now: Instant) -> bool {
        self.last
            .get(&(kind, key))
            .is_none_or(|t| now.duration_since(*t) >= self.every)
    }

    /// Records a report of `kind` for `key` at `now`, and forgets reports whose quiet time
    /// is over.
    pub fn reported(&mut self, kind: Kind, key: K, now: Instant) {
        let every = self.every;
        self.last.retain(|_, t| now.duration_since(*t) < every);
        self.last.insert((kind, key), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> Thresholds {
        Thresholds {
            churn_rate: 50.0,
            churn_lifetime: Duration::from_secs(1),
            explosion: 500,
            port_ratio: 0.8,
            cooldown: Duration::from_mins(5),
        }
    }

    fn window(opened: u64, bucket: usize, closed: u64, established: u64) -> Window {
        let mut lifetimes = [0; LIFETIME_BUCKETS];
        lifetimes[bucket] = closed;
        Window {
            length: Duration::from_secs(2),
            opened,
            lifetimes,
            established,
        }
    }

    #[test]
    fn churn_needs_both_a_high_rate_and_short_lives() {
        let t = thresholds();
        let f = churn(&t, &window(1000, 1, 1000, 0)).unwrap();
        assert_eq!(f.opened_per_second, Some(500.0));
        assert_eq!(f.median_lifetime_ms, Some(2));
        assert_eq!(f.closed, Some(1000));
        // Slow: under the rate.
        assert!(churn(&t, &window(60, 1, 60, 0)).is_none());
        // Long-lived (median in [2.048 s, 4.096 s)).
        assert!(churn(&t, &window(1000, 12, 1000, 0)).is_none());
        // Nothing closed yet: lifetimes unknown, no verdict.
        assert!(churn(&t, &window(1000, 0, 0, 1000)).is_none());
    }

    #[test]
    fn explosion_and_pressure_compare_with_their_thresholds() {
        let t = thresholds();
        assert!(explosion(&t, &window(0, 0, 0, 499)).is_none());
        assert_eq!(
            explosion(&t, &window(0, 0, 0, 500)).unwrap().established,
            Some(500)
        );
        assert!(port_pressure(&t, 79, 100, Duration::from_secs(1)).is_none());
        let f = port_pressure(&t, 80, 100, Duration::from_secs(1)).unwrap();
        assert_eq!(
            (f.ports_in_use, f.port_range, f.ratio),
            (Some(80), Some(100), Some(0.8))
        );
        assert!(port_pressure(&t, 5, 0, Duration::from_secs(1)).is_none());
        assert_eq!(
            hint(Kind::PortPressure, &f, false),
            "80 of 100 ephemeral ports to this destination are in use (80%): new connections will fail with EADDRNOTAVAIL; reuse connections, or widen ip_local_port_range"
        );
    }

    #[test]
    fn a_persistent_condition_is_reported_once_per_cooldown() {
        let mut c = Cooldown::new(Duration::from_mins(1));
        let t0 = Instant::now();
        assert!(c.allow(Kind::ConnectionExplosion, 1, t0));
        c.reported(Kind::ConnectionExplosion, 1, t0);
        assert!(!c.allow(Kind::ConnectionExplosion, 1, t0 + Duration::from_secs(59)));
        assert!(c.allow(Kind::ConnectionChurn, 1, t0), "another detector");
        assert!(c.allow(Kind::ConnectionExplosion, 2, t0), "another key");
        assert!(c.allow(Kind::ConnectionExplosion, 1, t0 + Duration::from_mins(1)));
    }
}
