//! The candidate hooks of each purpose and the load-and-attach of one candidate.

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, KProbe, ProgramError, RawTracePoint, TracePoint},
};

use super::{HookType, PlanEntry};
use crate::layout::{Layout, tracefs};

/// One way to serve a purpose: a program in the object and where it attaches.
pub(super) struct Candidate {
    ty: HookType,
    /// Program (function) name in the object.
    program: &'static str,
    /// Tracepoint name, `category/name` for classic tracepoints, or a kernel function.
    target: &'static str,
}

/// A purpose and its candidates, in order of preference.
pub(super) struct Purpose {
    pub(super) name: &'static str,
    required: bool,
    candidates: &'static [Candidate],
}

const fn c(ty: HookType, program: &'static str, target: &'static str) -> Candidate {
    Candidate {
        ty,
        program,
        target,
    }
}

use HookType::{Kprobe, RawTracepoint, TpBtf, Tracepoint};

/// State changes: owners, roles, abort detection. The agent cannot run without it.
pub(super) const REQUIRED: Purpose = Purpose {
    name: "state",
    required: true,
    candidates: &[
        c(TpBtf, "state_btf", "inet_sock_set_state"),
        c(RawTracepoint, "state_raw", "inet_sock_set_state"),
        c(Tracepoint, "state_tp", "sock/inet_sock_set_state"),
    ],
};

/// Hooks the agent degrades without, attached before [`REQUIRED`].
pub(super) const OPTIONAL: &[Purpose] = &[
    Purpose {
        name: "reset_reason",
        required: false,
        candidates: &[
            c(TpBtf, "reset_btf", "tcp_send_reset"),
            c(RawTracepoint, "reset_raw", "tcp_send_reset"),
            c(Tracepoint, "reset_tp", "tcp/tcp_send_reset"),
        ],
    },
    Purpose {
        name: "reads",
        required: false,
        candidates: &[
            c(TpBtf, "recv_btf", "sock_recv_length"),
            c(RawTracepoint, "recv_raw", "sock_recv_length"),
            c(Tracepoint, "recv_tp", "sock/sock_recv_length"),
            c(Kprobe, "recv_kprobe", "tcp_recvmsg"),
        ],
    },
];

/// Why a purpose left out with `--skip-probes` has no hook.
pub(super) const SKIPPED: &str = "left out with --skip-probes";

/// The plan entry of an optional purpose left out with `--skip-probes`.
pub(super) fn skipped(purpose: &Purpose) -> PlanEntry {
    PlanEntry {
        purpose: purpose.name,
        required: purpose.required,
        chosen: None,
        refused: vec![("any".to_owned(), SKIPPED.to_owned())],
    }
}

/// Tries the candidates of `purpose` whose type is in `allowed`, in the order of `allowed`,
/// until one loads and attaches.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    purpose: &Purpose,
    btf: &Btf,
    layout: &Layout,
    allowed: &[HookType],
) -> PlanEntry {
    let mut entry = PlanEntry {
        purpose: purpose.name,
        required: purpose.required,
        chosen: None,
        refused: Vec::new(),
    };
    for ty in allowed {
        let Some(cand) = purpose.candidates.iter().find(|c| c.ty == *ty) else {
            continue;
        };
        match try_one(ebpf, cand, btf, layout) {
            Ok(()) => {
                entry.chosen = Some((cand.ty, cand.target, cand.program));
                break;
            }
            Err(e) => {
                tracing::debug!(purpose = purpose.name, r#type = %cand.ty, hook = cand.target, error = %e, "hook refused");
                entry
                    .refused
                    .push((format!("{} {}", cand.ty, cand.target), e));
            }
        }
    }
    if entry.chosen.is_none() && entry.refused.is_empty() {
        let offered: Vec<&str> = purpose.candidates.iter().map(|c| c.ty.as_str()).collect();
        let allowed: Vec<&str> = allowed.iter().map(|t| t.as_str()).collect();
        entry.refused.push((
            "any".to_owned(),
            format!(
                "no allowed hook type ({}) has a program for it (it has {})",
                allowed.join(", "),
                offered.join(", ")
            ),
        ));
    }
    entry
}

fn try_one(ebpf: &mut Ebpf, cand: &Candidate, btf: &Btf, layout: &Layout) -> Result<(), String> {
    let program = ebpf
        .program_mut(cand.program)
        .ok_or_else(|| format!("program {} missing from the object", cand.program))?;
    let res: Result<(), ProgramError> = match cand.ty {
        TpBtf => <&mut BtfTracePoint>::try_from(program).and_then(|p| {
            p.load(cand.target, btf)?;
            p.attach().map(drop)
        }),
        RawTracepoint => <&mut RawTracePoint>::try_from(program).and_then(|p| {
            p.load()?;
            p.attach(cand.target).map(drop)
        }),
        Tracepoint => {
            if !layout.tracefs {
                return Err("tracefs is not mounted".to_owned());
            }
            if !tracefs::complete(&layout.offsets, cand.target) {
                return Err("its tracefs format lacks a field the program reads".to_owned());
            }
            let (category, name) = cand.target.split_once('/').unwrap_or(("", cand.target));
            <&mut TracePoint>::try_from(program).and_then(|p| {
                p.load()?;
                p.attach(category, name).map(drop)
            })
        }
        Kprobe => <&mut KProbe>::try_from(program).and_then(|p| {
            p.load()?;
            p.attach(cand.target, 0).map(drop)
        }),
    };
    res.map_err(|e| {
        let full = error_chain(&e);
        tracing::debug!(program = cand.program, error = %full, "load or attach failed");
        summary(&full)
    })
}

/// `e` and its sources (aya's load errors carry the kernel's errno and the verifier log).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The first line of an error, bounded: a verifier log can run to megabytes (the whole error
/// is logged at debug level).
fn summary(full: &str) -> String {
    let line = full.lines().find(|l| !l.trim().is_empty()).unwrap_or(full);
    match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_owned(),
    }
}
