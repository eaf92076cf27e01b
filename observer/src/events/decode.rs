//! Ring-buffer bytes -> [`Event`]: the one decode boundary, and the only `unsafe` read of
//! kernel-written bytes in the agent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use observer_common::{
    event::{self as wire, NO_RST_REASON, RawEvent, UNKNOWN_BYTES},
    tcp::AF_INET6,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{Endpoints, Event, Kind, Owner, Role, hint};
use crate::{enrich::Attribution, layout::Layout};

/// A record the agent cannot turn into an event (counted, never fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than a [`RawEvent`].
    #[error("record of {0} bytes is shorter than an event")]
    Truncated(usize),
    /// A kind this agent does not know (a newer eBPF object?).
    #[error("unknown event kind {0}")]
    Kind(u8),
}

/// Turns raw records into events: converts kernel clock times to wall-clock and RST reasons
/// to names.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC`, in nanoseconds.
    wall_offset_ns: i128,
    layout: Layout,
}

use crate::sys::{Clock, clock_ns};

/// CPU time the calling thread has used, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_ns() -> u64 {
    u64::try_from(clock_ns(Clock::ThreadCpu)).unwrap_or(0)
}

/// `CLOCK_MONOTONIC` now, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(Clock::Monotonic)).unwrap_or(0)
}

impl Decoder {
    /// A decoder for events from programs loaded with `layout`.
    pub fn new(layout: &Layout) -> Self {
        Self {
            wall_offset_ns: clock_ns(Clock::Realtime) - clock_ns(Clock::Monotonic),
            layout: layout.clone(),
        }
    }

    /// Decodes one ring-buffer record.
    pub fn decode(&self, buf: &[u8]) -> Result<Event, DecodeError> {
        if buf.len() < size_of::<RawEvent>() {
            return Err(DecodeError::Truncated(buf.len()));
        }
        // SAFETY: the length is checked above; `RawEvent` is plain data valid for any bytes;
        // ring-buffer records are not aligned for it, hence `read_unaligned`.
        let raw = unsafe { buf.as_ptr().cast::<RawEvent>().read_unaligned() };
        self.event(&raw)
    }

    /// Builds the event for `raw`.
    pub fn event(&self, raw: &RawEvent) -> Result<Event, DecodeError> {
        let kind = match wire::Kind::try_from(raw.kind).map_err(DecodeError::Kind)? {
            wire::Kind::RstOnClose => Kind::RstOnClose,
            wire::Kind::LingerAbort => Kind::LingerAbort,
            wire::Kind::CloseWaitResolved => Kind::CloseWaitResolved,
            wire::Kind::ResetReceived => Kind::ResetReceived,
            wire::Kind::ConnectRefused => Kind::ConnectRefused,
        };
        let reset = kind == Kind::ResetReceived;
        let state = reset.then(|| observer_common::tcp::state_name(i32::from(raw.old_state)));
        let role = Role::from_wire(raw.role);
        let close_wait_ms = (raw.close_wait_ns != 0).then_some(raw.close_wait_ns / 1_000_000);
        let hint = match kind {
            Kind::CloseWaitResolved => close_wait_ms
                .map(|ms| super::close_wait_resolved_hint(ms, false))
                .unwrap_or_default(),
            Kind::ResetReceived => super::link::reset_received_hint(
                state.unwrap_or_default(),
                raw.unread_bytes,
                raw.unsent_bytes,
            ),
            _ => hint(kind, role, raw.unread_bytes),
        };
        let is_close_wait = kind == Kind::CloseWaitResolved;
        Ok(Event {
            id: 0,
            ts: self.wall_clock(raw.ts_ns),
            wall_ns: self.wall_ns(raw.ts_ns),
            kind,
            owner: Owner {
                pid: raw.pid,
                comm: comm(&raw.comm),
                cgroup_id: raw.cgroup_id,
                workload: Attribution::default(),
            },
            ends: Endpoints {
                netns: raw.netns,
                local_addr: addr(raw.family, raw.saddr),
                local_port: raw.sport,
                peer_addr: addr(raw.family, raw.daddr),
                peer_port: raw.dport,
            },
            role,
            unread_bytes: raw.unread_bytes,
            conn_age_ms: (raw.established_ns != 0)
                .then(|| raw.ts_ns.saturating_sub(raw.established_ns) / 1_000_000),
            bytes_received: raw.bytes_received,
            bytes_sent: (raw.bytes_sent != UNKNOWN_BYTES).then_some(raw.bytes_sent),
            close_wait_ms,
            last_read_ms_ago: (is_close_wait && raw.last_read_ns != 0)
                .then(|| raw.ts_ns.saturating_sub(raw.last_read_ns) / 1_000_000),
            close_wait_lower_bound: is_close_wait.then_some(false),
            rst_reason: self.rst_reason(raw.rst_reason),
            state,
            unsent_bytes: reset.then_some(raw.unsent_bytes),
            inode: raw.inode,
            hint,
            ..Event::blank(kind)
        })
    }

    fn rst_reason(&self, raw: u32) -> Option<String> {
        if raw == NO_RST_REASON {
            return None;
        }
        self.layout.rst_reason(raw).map(str::to_owned)
    }

    /// Nanoseconds since the Unix epoch of a CLOCK_MONOTONIC nanosecond time.
    pub fn wall_ns(&self, ts_ns: u64) -> u64 {
        u64::try_from(i128::from(ts_ns) + self.wall_offset_ns).unwrap_or(0)
    }

    /// RFC 3339 wall-clock time of a CLOCK_MONOTONIC nanosecond time.
    pub fn wall_clock(&self, ts_ns: u64) -> String {
        let ns = i128::from(ts_ns) + self.wall_offset_ns;
        OffsetDateTime::from_unix_timestamp_nanos(ns)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    }
}

/// A NUL-padded kernel `comm` as text.
pub fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// IPv4 in the first four bytes, or IPv6; IPv4-mapped IPv6 shown as IPv4.
pub fn addr(family: u16, raw: [u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(raw)).to_canonical()
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

#[cfg(test)]
mod tests;
