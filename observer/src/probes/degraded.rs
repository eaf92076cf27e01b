//! What the running kernel's plan costs in data: each feature that is missing or partial, and
//! why, derived from the attach plan and the resolved layout (never from a version number).
//! `observer check` prints the list, `/api/v1/status` serves it, the agent logs it at start.

use serde::Serialize;

use super::{HookType, PlanEntry, Purpose};
use crate::{host::Missing, layout::Layout};

/// One feature this kernel (or the flags) leaves missing or partial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Degraded {
    /// The field or behaviour affected (`last_read`, `rst_reason`, ...).
    pub feature: &'static str,
    /// What an operator sees instead, and why.
    pub effect: String,
}

/// A grant the agent runs without, as the degradation it causes.
impl From<Missing> for Degraded {
    fn from(m: Missing) -> Self {
        Self {
            feature: m.capability,
            effect: m.cost.to_owned(),
        }
    }
}

/// The degradations of `plan` on `layout`; `promoted` says whether the CLOSE_WAIT promotion
/// iterator is in use.
pub(super) fn of(plan: &[PlanEntry], layout: &Layout, promoted: bool) -> Vec<Degraded> {
    let mut out = Vec::new();
    let mut add = |feature, effect: &str| {
        out.push(Degraded {
            feature,
            effect: effect.to_owned(),
        });
    };
    let chosen = |purpose: Purpose| {
        plan.iter()
            .find(|p| p.purpose == purpose)
            .map(|p| (p.chosen.map(|(ty, ..)| ty), p.is_skipped()))
    };
    match chosen(Purpose::Reads) {
        Some((Some(HookType::Kprobe), _)) => add(
            "last_read",
            "null: the kprobe on tcp_recvmsg runs before the read and cannot tell what it \
             consumes (sock:sock_recv_length needs 6.3, fexit needs a kernel that allows it)",
        ),
        Some((None, true)) => add(
            "last_read",
            "null, left out with --skip-probes reads: owners come from connect, listen and \
             close, or the socket's file",
        ),
        Some((None, false)) => add(
            "last_read",
            "null, no read hook attached (see the plan's refusals): owners come from connect, \
             listen and close, or the socket's file",
        ),
        _ => {}
    }
    match chosen(Purpose::ResetReason) {
        Some((None, _)) => add("rst_reason", "null: no reset hook attached"),
        Some((Some(ty), _)) if !super::reset_has_reason(ty, layout) => add(
            "rst_reason",
            "null: tcp:tcp_send_reset carries no reason on this kernel (6.10+)",
        ),
        Some((Some(_), _))
            if !layout
                .rst_reasons
                .values()
                .any(|n| n == "TCP_ABORT_ON_CLOSE") =>
        {
            add(
                "rst_reason",
                "null for aborts: this kernel's enum sk_rst_reason names no active reset \
                 (TCP_ABORT_ON_CLOSE, 6.12+)",
            );
        }
        _ => {}
    }
    match chosen(Purpose::ResetsReceived) {
        Some((None, true)) => add(
            "reset_received",
            "no events, left out with --skip-probes resets_received: the victims of resets \
             are not named and refused connects are not counted",
        ),
        Some((None, false)) => add(
            "reset_received",
            "no events, no hook on tcp:tcp_receive_reset attached (see the plan's refusals): \
             the victims of resets are not named and refused connects are not counted",
        ),
        _ => {}
    }
    if !promoted {
        add(
            "close_wait_promotion",
            "CLOSE_WAIT entries are inserted as sockets enter CLOSE_WAIT: iter/tcp (5.9) or \
             tp_btf is unavailable, so each connection the peer closes first costs a map \
             insert and delete",
        );
    }
    if layout.offsets.tcp_bytes_sent == observer_common::layout::ABSENT {
        add("bytes_sent", "null: tcp_sock.bytes_sent arrived in 5.5");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use observer_common::layout::{ABSENT, Offsets};

    use super::*;

    fn entry(purpose: Purpose, ty: Option<HookType>) -> PlanEntry {
        PlanEntry {
            purpose,
            required: false,
            chosen: ty.map(|t| (t, "hook", "program")),
            refused: Vec::new(),
        }
    }

    fn layout(reset_reason: bool, abort_name: bool) -> Layout {
        let mut rst_reasons = BTreeMap::new();
        rst_reasons.insert(0, "NOT_SPECIFIED".to_owned());
        if abort_name {
            rst_reasons.insert(9, "TCP_ABORT_ON_CLOSE".to_owned());
        }
        Layout {
            offsets: Offsets {
                btf_reset_has_reason: u32::from(reset_reason),
                tcp_bytes_sent: 1544,
                tp_reset_reason: ABSENT,
                ..Offsets::default()
            },
            rst_reasons,
            tracefs: true,
        }
    }

    fn features(d: &[Degraded]) -> Vec<&'static str> {
        d.iter().map(|d| d.feature).collect()
    }

    #[test]
    fn a_full_plan_on_a_recent_kernel_degrades_nothing() {
        let plan = [
            entry(Purpose::ResetReason, Some(HookType::TpBtf)),
            entry(Purpose::Reads, Some(HookType::TpBtf)),
        ];
        assert_eq!(of(&plan, &layout(true, true), true), []);
        // fexit reads see what the tracepoint sees.
        let plan = [
            entry(Purpose::ResetReason, Some(HookType::TpBtf)),
            entry(Purpose::Reads, Some(HookType::Fexit)),
        ];
        assert_eq!(of(&plan, &layout(true, true), true), []);
    }

    #[test]
    fn debian_12s_plan_names_the_reset_reason() {
        // 6.1: reads through fexit, a reset hook without a reason.
        let plan = [
            entry(Purpose::ResetReason, Some(HookType::TpBtf)),
            entry(Purpose::Reads, Some(HookType::Fexit)),
        ];
        let d = of(&plan, &layout(false, false), true);
        assert_eq!(features(&d), ["rst_reason"]);
        assert!(d[0].effect.contains("6.10+"), "{d:?}");
        // 6.10 and 6.11: a reason, but none for an active reset.
        let d = of(&plan, &layout(true, false), true);
        assert!(d[0].effect.contains("TCP_ABORT_ON_CLOSE"), "{d:?}");
    }

    #[test]
    fn kprobe_reads_and_missing_hooks_are_named() {
        let plan = [
            entry(Purpose::ResetReason, None),
            entry(Purpose::Reads, Some(HookType::Kprobe)),
        ];
        let mut l = layout(true, true);
        l.offsets.tcp_bytes_sent = ABSENT;
        let d = of(&plan, &l, false);
        assert_eq!(
            features(&d),
            [
                "last_read",
                "rst_reason",
                "close_wait_promotion",
                "bytes_sent"
            ]
        );
        assert!(d[0].effect.contains("kprobe"), "{d:?}");
        let mut skipped = entry(Purpose::Reads, None);
        skipped.refused = vec![("any".to_owned(), crate::probes::attach::SKIPPED.to_owned())];
        let d = of(&[skipped], &layout(true, true), true);
        assert!(d[0].effect.contains("--skip-probes"), "{d:?}");
    }
}
