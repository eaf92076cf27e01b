//! `observer_connection_lifetime_seconds`: a Prometheus histogram whose buckets are filled
//! from the kernel's counts (`FlowStats::lifetime`), not from single observations.

use std::sync::{Arc, Mutex};

use observer_common::flow::{LIFETIME_BUCKETS, lifetime_bucket_le_ms};
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// Closed connections by lifetime: bucket `i` as in [`observer_common::flow`], and the sum.
#[derive(Clone, Debug, Default)]
pub struct Lifetimes(Arc<Mutex<Counts>>);

#[derive(Debug, Default)]
struct Counts {
    sum_ms: u64,
    buckets: [u64; LIFETIME_BUCKETS],
}

impl Lifetimes {
    /// Adds closed connections: `buckets[i]` more in bucket `i`, `sum_ms` more in the sum.
    pub fn add(&self, sum_ms: u64, buckets: &[u64; LIFETIME_BUCKETS]) {
        let mut c = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.sum_ms = c.sum_ms.saturating_add(sum_ms);
        for (have, more) in c.buckets.iter_mut().zip(buckets) {
            *have = have.saturating_add(*more);
        }
    }
}

impl TypedMetric for Lifetimes {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Lifetimes {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum_ms, counts) = {
            let c = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (c.sum_ms, c.buckets)
        };
        // Per-bucket counts; the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let le = lifetime_bucket_le_ms(i).map_or(f64::INFINITY, |ms| ms as f64 / 1000.0);
                (le, *n)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            sum_ms as f64 / 1000.0,
            counts.iter().sum(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The median's bucket bound in milliseconds among `counts` (`None` when empty, or when the
/// median is in the unbounded last bucket).
pub fn median_le_ms(counts: &[u64; LIFETIME_BUCKETS]) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let half = total.div_ceil(2);
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= half {
            return lifetime_bucket_le_ms(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_cumulative_buckets_in_seconds() {
        let mut registry = prometheus_client::registry::Registry::default();
        let h = Lifetimes::default();
        let mut b = [0; LIFETIME_BUCKETS];
        b[0] = 3; // < 1 ms
        b[11] = 1; // [1.024 s, 2.048 s)
        b[23] = 2; // over ~70 min
        h.add(10_000_000, &b);
        registry.register("lifetime_seconds", "x", h);
        let text = crate::metrics::encode_prometheus(&registry);
        assert!(
            text.contains("lifetime_seconds_bucket{le=\"0.001\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("lifetime_seconds_bucket{le=\"2.048\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("lifetime_seconds_bucket{le=\"4194.304\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("lifetime_seconds_bucket{le=\"+Inf\"} 6\n"),
            "{text}"
        );
        assert!(text.contains("lifetime_seconds_count 6\n"), "{text}");
        assert!(text.contains("lifetime_seconds_sum 10000.0\n"), "{text}");
    }

    #[test]
    fn median_is_the_bucket_of_the_middle_connection() {
        let mut b = [0; LIFETIME_BUCKETS];
        assert_eq!(median_le_ms(&b), None);
        b[2] = 5; // [2, 4) ms
        b[12] = 4;
        assert_eq!(median_le_ms(&b), Some(4));
        b[12] = 6;
        assert_eq!(median_le_ms(&b), Some(4096));
    }
}
