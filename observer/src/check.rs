//! `observer check`: loads and attaches every probe exactly as the agent would, prints the plan
//! (purpose -> hook and type, and what was refused), what it degrades on this kernel, the
//! kernel release and the resolved BTF offsets, then detaches. Exit 0 when the required hooks attach, 1 otherwise: a preflight for
//! a new kernel, or a DaemonSet init container.

use std::{fmt::Write as _, process::ExitCode};

use crate::{agent, config::ProbeArgs, host, probes};

/// Runs the check and returns the report and the exit code.
pub fn run(args: &ProbeArgs) -> anyhow::Result<(String, ExitCode)> {
    let mut options = probes::Options::from(args);
    let (layout, privileges) = agent::prepare(&options)?;
    // Its own pins, never an agent's: an agent running beside it keeps its CLOSE_WAIT table
    // and its promotion iterator.
    let private = PrivatePins::beside(&options.pin_dir);
    options.pin_dir.clone_from(&private.0);
    let args = &options;
    let mut out = String::new();
    let _ = writeln!(out, "kernel: {}", host::kernel_release());
    let _ = writeln!(out, "btf: {}", args.btf.display());
    let _ = writeln!(
        out,
        "tracefs: {}",
        if layout.tracefs {
            "available"
        } else {
            "unavailable (classic tracepoint fallbacks disabled)"
        }
    );
    let probes = match agent::load(&layout, args, privileges) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "FAIL: {e:#}");
            return Ok((out, ExitCode::FAILURE));
        }
    };
    let _ = writeln!(out, "\nattach plan:");
    let _ = writeln!(
        out,
        "  {:<16} {:<9} {:<15} {:<22} refused",
        "purpose", "required", "type", "hook"
    );
    for p in probes.plan() {
        let (ty, hook) = p
            .chosen
            .map_or(("-".to_owned(), "unavailable".to_owned()), |(t, h, _)| {
                (t.to_string(), h.to_owned())
            });
        let refused = if p.refused.is_empty() {
            "-".to_owned()
        } else {
            p.refusals()
        };
        let _ = writeln!(
            out,
            "  {:<16} {:<9} {:<15} {:<22} {}",
            p.purpose,
            if p.required { "yes" } else { "no" },
            ty,
            hook,
            refused
        );
    }
    let _ = writeln!(out, "\ndegraded:");
    let degraded: Vec<probes::Degraded> = (privileges.missing().into_iter())
        .map(probes::Degraded::from)
        .chain(probes.degraded().iter().cloned())
        .collect();
    if degraded.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for d in &degraded {
        let _ = writeln!(out, "  {:<21} {}", d.feature, d.effect);
    }
    let _ = writeln!(out, "\nbtf offsets:");
    for (name, off) in layout.describe() {
        let shown = if off == observer_common::layout::ABSENT {
            "absent".to_owned()
        } else {
            off.to_string()
        };
        let _ = writeln!(out, "  {name:<32} {shown}");
    }
    let reasons = if layout.rst_reasons.is_empty() {
        "none (kernel before 6.10)".to_owned()
    } else {
        format!("{} names from enum sk_rst_reason", layout.rst_reasons.len())
    };
    let _ = writeln!(out, "  {:<32} {reasons}", "rst reasons");
    let _ = writeln!(out, "\nOK: required hooks attached");
    drop(probes);
    Ok((out, ExitCode::SUCCESS))
}

/// A pin directory of this check's own beside the agent's (`<pin-dir>-check-<pid>`), removed
/// with what it holds when dropped (after the probes, whose pins it holds).
struct PrivatePins(std::path::PathBuf);

impl PrivatePins {
    fn beside(pin_dir: &std::path::Path) -> Self {
        let mut name = pin_dir.as_os_str().to_owned();
        name.push(format!("-check-{}", std::process::id()));
        Self(name.into())
    }
}

impl Drop for PrivatePins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
