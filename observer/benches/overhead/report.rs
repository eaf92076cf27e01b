//! The comparison of runs with and without the agent, and the table rows.

use super::{Agent, Hooks, Instant, ROUNDS, Sample, Usage as _};

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    } else {
        v[n / 2]
    }
}

pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) base: Vec<Sample>,
    pub(crate) with: Vec<Sample>,
    pub(crate) agent_cpu: f64,
    /// The agent's highest peak RSS over its runs, in MiB (0 without the agent).
    pub(crate) agent_peak_mib: f64,
}

/// Throughput lost in the run `w` against the run `b` before it, in %.
pub(crate) fn rate_loss(b: &Sample, w: &Sample) -> f64 {
    (b.rate - w.rate) / b.rate * 100.0
}

/// Extra busy CPU per operation in the run `w` against the run `b` before it, in %.
pub(crate) fn cpu_gain(b: &Sample, w: &Sample) -> f64 {
    (w.cpu_us_per_op / b.cpu_us_per_op - 1.0) * 100.0
}

impl Row {
    /// Median over the pairs of the throughput lost with the agent, in %.
    pub(crate) fn overhead(&self) -> f64 {
        median(self.pairs(rate_loss))
    }

    /// Median over the pairs of the extra busy CPU per operation with the agent, in %.
    pub(crate) fn cpu_overhead(&self) -> f64 {
        median(self.pairs(cpu_gain))
    }

    pub(crate) fn pairs(&self, f: impl Fn(&Sample, &Sample) -> f64) -> Vec<f64> {
        self.base
            .iter()
            .zip(&self.with)
            .map(|(b, w)| f(b, w))
            .collect()
    }

    pub(crate) fn median_of(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
        median(v.iter().map(f).collect())
    }

    pub(crate) fn line(&self) -> String {
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

    pub(crate) fn json(&self) -> serde_json::Value {
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
pub(crate) enum Beside {
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
pub(crate) fn compare(
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
                let agent = Agent::start_discarding(flags);
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
