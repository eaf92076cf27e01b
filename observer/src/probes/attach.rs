//! The candidate hooks of each purpose and the load-and-attach of one candidate.

use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, FExit, KProbe, ProgramError, RawTracePoint, TracePoint, fexit::FExitLinkId,
        kprobe::KProbeLinkId, raw_trace_point::RawTracePointLinkId, tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};

use super::{HookType, PlanEntry, Purpose};
use crate::layout::{Layout, tracefs};

/// One way to serve a purpose: a program in the object and where it attaches.
pub(super) struct Candidate {
    ty: HookType,
    /// Program (function) name in the object.
    program: &'static str,
    /// Tracepoint name, `category/name` for classic tracepoints, or a kernel function.
    target: &'static str,
    /// For an fexit program: the parameter count of `target` it reads (`fexit_recv_args`);
    /// 0 for the others.
    params: u32,
}

/// A purpose and its candidates, in order of preference.
pub(super) struct Hooks {
    pub(super) purpose: Purpose,
    required: bool,
    candidates: &'static [Candidate],
}

const fn c(ty: HookType, program: &'static str, target: &'static str) -> Candidate {
    Candidate {
        ty,
        program,
        target,
        params: 0,
    }
}

/// An fexit candidate for a `target` of `params` parameters.
const fn fexit(program: &'static str, target: &'static str, params: u32) -> Candidate {
    Candidate {
        ty: Fexit,
        program,
        target,
        params,
    }
}

use HookType::{Fexit, Kprobe, RawTracepoint, TpBtf, Tracepoint};

/// State changes: owners, roles, abort detection. The agent cannot run without it.
pub(super) const REQUIRED: Hooks = Hooks {
    purpose: Purpose::State,
    required: true,
    candidates: &[
        c(TpBtf, "state_btf", "inet_sock_set_state"),
        c(RawTracepoint, "state_raw", "inet_sock_set_state"),
        c(Tracepoint, "state_tp", "sock/inet_sock_set_state"),
    ],
};

/// Hooks the agent degrades without, attached before [`REQUIRED`].
pub(super) const OPTIONAL: &[Hooks] = &[
    Hooks {
        purpose: Purpose::ResetReason,
        required: false,
        candidates: &[
            c(TpBtf, "reset_btf", "tcp_send_reset"),
            c(RawTracepoint, "reset_raw", "tcp_send_reset"),
            c(Tracepoint, "reset_tp", "tcp/tcp_send_reset"),
        ],
    },
    Hooks {
        purpose: Purpose::ResetsReceived,
        required: false,
        candidates: &[
            c(TpBtf, "rcv_reset_btf", "tcp_receive_reset"),
            c(RawTracepoint, "rcv_reset_raw", "tcp_receive_reset"),
            c(Tracepoint, "rcv_reset_tp", "tcp/tcp_receive_reset"),
        ],
    },
    Hooks {
        purpose: Purpose::Reads,
        required: false,
        candidates: &[
            c(TpBtf, "recv_btf", "sock_recv_length"),
            c(RawTracepoint, "recv_raw", "sock_recv_length"),
            c(Tracepoint, "recv_tp", "sock/sock_recv_length"),
            fexit("recv_fexit5", "tcp_recvmsg", 5),
            fexit("recv_fexit6", "tcp_recvmsg", 6),
            c(Kprobe, "recv_kprobe", "tcp_recvmsg"),
        ],
    },
];

/// Why a purpose left out with `--skip-probes` has no hook.
pub(super) const SKIPPED: &str = "left out with --skip-probes";

/// The plan entry of an optional purpose left out with `--skip-probes`.
pub(super) fn skipped(hooks: &Hooks) -> PlanEntry {
    PlanEntry {
        purpose: hooks.purpose,
        required: hooks.required,
        chosen: None,
        refused: vec![("any".to_owned(), SKIPPED.to_owned())],
    }
}

/// A program's attachment to its hook, to detach it again.
pub(super) enum Link {
    Btf(BtfTracePointLinkId),
    Raw(RawTracePointLinkId),
    Tracepoint(TracePointLinkId),
    Fexit(FExitLinkId),
    Kprobe(KProbeLinkId),
}

/// Attaches the loaded program `program` of type `ty` to `target` (one more link).
pub(super) fn attach_loaded(
    ebpf: &mut Ebpf,
    (ty, target, program): (HookType, &'static str, &'static str),
) -> Result<Link, ProgramError> {
    let p = ebpf
        .program_mut(program)
        .ok_or_else(|| ProgramError::UnexpectedProgramType)?;
    Ok(match ty {
        TpBtf => Link::Btf(<&mut BtfTracePoint>::try_from(p)?.attach()?),
        RawTracepoint => Link::Raw(<&mut RawTracePoint>::try_from(p)?.attach(target)?),
        Tracepoint => {
            let (category, name) = target.split_once('/').unwrap_or(("", target));
            Link::Tracepoint(<&mut TracePoint>::try_from(p)?.attach(category, name)?)
        }
        Fexit => Link::Fexit(<&mut FExit>::try_from(p)?.attach()?),
        Kprobe => Link::Kprobe(<&mut KProbe>::try_from(p)?.attach(target, 0)?),
    })
}

/// Detaches `link` of `program`; the program stays loaded.
pub(super) fn detach(ebpf: &mut Ebpf, program: &str, link: Link) -> Result<(), ProgramError> {
    let p = ebpf
        .program_mut(program)
        .ok_or_else(|| ProgramError::UnexpectedProgramType)?;
    match link {
        Link::Btf(id) => <&mut BtfTracePoint>::try_from(p)?.detach(id),
        Link::Raw(id) => <&mut RawTracePoint>::try_from(p)?.detach(id),
        Link::Tracepoint(id) => <&mut TracePoint>::try_from(p)?.detach(id),
        Link::Fexit(id) => <&mut FExit>::try_from(p)?.detach(id),
        Link::Kprobe(id) => <&mut KProbe>::try_from(p)?.detach(id),
    }
}

/// Tries the candidates of `hooks` whose type is in `allowed`, in the order of `allowed`,
/// until one loads and attaches; returns its link too.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    hooks: &Hooks,
    btf: &Btf,
    layout: &Layout,
    allowed: &[HookType],
) -> (PlanEntry, Option<Link>) {
    let mut entry = PlanEntry {
        purpose: hooks.purpose,
        required: hooks.required,
        chosen: None,
        refused: Vec::new(),
    };
    for ty in allowed {
        let Some(first) = hooks.candidates.iter().find(|c| c.ty == *ty) else {
            continue;
        };
        // An fexit program reads its target's arguments at fixed indexes: only the one
        // written for the parameters BTF lists can load.
        let fits = |c: &&Candidate| c.ty != Fexit || c.params == layout.offsets.fexit_recv_args;
        let Some(cand) = hooks.candidates.iter().filter(|c| c.ty == *ty).find(fits) else {
            entry.refused.push((
                format!("{ty} {}", first.target),
                "its parameters in BTF are not those any program here reads".to_owned(),
            ));
            continue;
        };
        match try_one(ebpf, cand, btf, layout) {
            Ok(link) => {
                entry.chosen = Some((cand.ty, cand.target, cand.program));
                return (entry, Some(link));
            }
            Err(e) => {
                tracing::debug!(purpose = %hooks.purpose, r#type = %cand.ty, hook = cand.target, error = %e, "hook refused");
                entry
                    .refused
                    .push((format!("{} {}", cand.ty, cand.target), e));
            }
        }
    }
    if entry.chosen.is_none() && entry.refused.is_empty() {
        let offered: Vec<&str> = hooks.candidates.iter().map(|c| c.ty.as_str()).collect();
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
    (entry, None)
}

fn try_one(ebpf: &mut Ebpf, cand: &Candidate, btf: &Btf, layout: &Layout) -> Result<Link, String> {
    let program = ebpf
        .program_mut(cand.program)
        .ok_or_else(|| format!("program {} missing from the object", cand.program))?;
    let loaded: Result<(), ProgramError> = match cand.ty {
        TpBtf => <&mut BtfTracePoint>::try_from(program).and_then(|p| p.load(cand.target, btf)),
        RawTracepoint => <&mut RawTracePoint>::try_from(program).and_then(RawTracePoint::load),
        Tracepoint => {
            if !layout.tracefs {
                return Err("tracefs is not mounted".to_owned());
            }
            if !tracefs::complete(&layout.offsets, cand.target) {
                return Err("its tracefs format lacks a field the program reads".to_owned());
            }
            <&mut TracePoint>::try_from(program).and_then(TracePoint::load)
        }
        Fexit => <&mut FExit>::try_from(program).and_then(|p| p.load(cand.target, btf)),
        Kprobe => <&mut KProbe>::try_from(program).and_then(KProbe::load),
    };
    let res = loaded.and_then(|()| attach_loaded(ebpf, (cand.ty, cand.target, cand.program)));
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

/// The first line of an error, bounded, and for a verifier refusal the line that says why: a
/// verifier log can run to megabytes and begins with the program's first instruction; the
/// reason is its last line before the statistics (the whole error is logged at debug level).
fn summary(full: &str) -> String {
    let first = full.lines().find(|l| !l.trim().is_empty()).unwrap_or(full);
    let mut out = bounded(first);
    if let Some((_, log)) = full.split_once("Verifier output:") {
        let reason = log.lines().map(str::trim).rev().find(|l| {
            !l.is_empty()
                && !l.starts_with(':')
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("processed ")
        });
        if let Some(reason) = reason.filter(|r| !first.ends_with(r)) {
            out.push_str(" ... ");
            out.push_str(&bounded(reason));
        }
    }
    out
}

/// `line`, cut after 200 characters.
fn bounded(line: &str) -> String {
    match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn a_refusal_names_the_verifiers_reason() {
        let full = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). \
                    Verifier output: 0: R1=ctx() R10=fp0\n\
                    1821: (85) call bpf_ktime_get_coarse_ns#160\n\
                    program of this type cannot use helper bpf_ktime_get_coarse_ns#160\n\
                    verification time 544855 usec\n\
                    stack depth 256+32\n\
                    processed 104840 insns (limit 1000000) max_states_per_insn 10\n\
                    : Invalid argument (os error 22)";
        assert_eq!(
            summary(full),
            "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). Verifier output: \
             0: R1=ctx() R10=fp0 ... program of this type cannot use helper \
             bpf_ktime_get_coarse_ns#160"
        );
        // Not a verifier refusal: the first line only.
        assert_eq!(
            summary("tracepoint not found\nmore"),
            "tracepoint not found"
        );
        assert_eq!(summary(&"x".repeat(300)), format!("{}...", "x".repeat(200)));
    }
}
