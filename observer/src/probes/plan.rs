//! The attach plan's vocabulary: the program types a hook can use, and how each purpose was
//! served (what was chosen, what the kernel refused).

use std::{fmt, str::FromStr};

use observer_common::layout::ABSENT;

use super::attach;
use crate::layout::Layout;

/// A program type a hook can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookType {
    /// BTF-enabled tracepoint (`tp_btf`), 5.5+.
    TpBtf,
    /// Raw tracepoint, 4.17+.
    RawTracepoint,
    /// Classic tracepoint with a tracefs record layout.
    Tracepoint,
    /// fexit on a kernel function (BTF-typed arguments and return value), 5.5+.
    Fexit,
    /// kprobe on a kernel function.
    Kprobe,
}

impl HookType {
    /// Every type, in default order of preference.
    pub const ALL: [Self; 5] = [
        Self::TpBtf,
        Self::RawTracepoint,
        Self::Tracepoint,
        Self::Fexit,
        Self::Kprobe,
    ];

    /// The name used in flags, logs and the plan.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TpBtf => "tp_btf",
            Self::RawTracepoint => "raw_tracepoint",
            Self::Tracepoint => "tracepoint",
            Self::Fexit => "fexit",
            Self::Kprobe => "kprobe",
        }
    }
}

impl fmt::Display for HookType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HookType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown hook type {s:?} (expected tp_btf, raw_tracepoint, tracepoint, fexit \
                     or kprobe)"
                )
            })
    }
}

/// What a hook is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    /// State changes: owners, roles, abort detection. Required.
    State,
    /// The kernel's RST reason of the resets the node sends.
    ResetReason,
    /// Resets the node receives (`reset_received` events).
    ResetsReceived,
    /// The owners' reads (last-read times, unread bytes of sockets in CLOSE_WAIT).
    Reads,
}

impl Purpose {
    /// The optional purposes, which `--skip-probes` may leave out.
    pub const OPTIONAL: [Self; 3] = [Self::ResetReason, Self::ResetsReceived, Self::Reads];

    /// The name used in flags, logs, metrics and the plan.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::State => "state",
            Self::ResetReason => "reset_reason",
            Self::ResetsReceived => "resets_received",
            Self::Reads => "reads",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// `--skip-probes` takes the optional purposes only.
impl clap::ValueEnum for Purpose {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::OPTIONAL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Self::OPTIONAL
            .contains(self)
            .then(|| clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// How one purpose was served.
#[derive(Debug, Clone)]
pub struct PlanEntry {
    /// What the hook is for.
    pub purpose: Purpose,
    /// Whether the agent cannot run without it.
    pub required: bool,
    /// The hook that was attached: (type, kernel target, program name).
    pub chosen: Option<(HookType, &'static str, &'static str)>,
    /// What was tried and refused (`type target`), with the kernel's answer.
    pub refused: Vec<(String, String)>,
}

impl PlanEntry {
    /// Whether the operator left this purpose out (`--skip-probes`).
    pub fn is_skipped(&self) -> bool {
        self.chosen.is_none() && self.refused.iter().any(|(_, why)| why == attach::SKIPPED)
    }

    /// Every refusal as one line.
    pub fn refusals(&self) -> String {
        self.refused
            .iter()
            .map(|(what, why)| format!("{what}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Whether the reset hook, attached as `ty`, gets the kernel's RST reason (6.10+): only then is
/// an abort worth holding until the reset, which the kernel traces at the end of
/// `tcp_send_active_reset` on those kernels.
pub(super) fn reset_has_reason(ty: HookType, layout: &Layout) -> bool {
    match ty {
        HookType::Tracepoint => layout.offsets.tp_reset_reason != ABSENT,
        _ => layout.offsets.btf_reset_has_reason == 1,
    }
}
