//! The one-sentence hints events carry: what an event means for the owner.

use super::{Kind, Role};

/// The hint for an event: what it means for the owner, in one sentence.
pub fn hint(kind: Kind, role: Role, unread: u32) -> String {
    match kind {
        Kind::RstOnClose => {
            let what = match role {
                Role::Client => "the response",
                Role::Server => "the request",
                Role::Unknown => "the response or message",
            };
            format!(
                "closed with {unread} unread bytes: {what} was not fully read, so the kernel sent RST instead of FIN and the connection could not be reused"
            )
        }
        Kind::LingerAbort => {
            "closed with SO_LINGER timeout 0: a deliberate abort (RST), not unread data".to_owned()
        }
        _ => String::new(),
    }
}

/// The hint for a CLOSE_WAIT leak: how long, whether the owner reads, what it holds.
pub fn close_wait_hint(close_wait_ms: u64, last_read_ms_ago: Option<u64>, unread: u32) -> String {
    let since = human(close_wait_ms);
    let reads = match last_read_ms_ago {
        Some(ms) => format!("the owner has not read for {}", human(ms)),
        // Never read, or read only before the agent or its read hook ran.
        None => "no read by the owner was seen".to_owned(),
    };
    if unread > 0 {
        format!(
            "peer closed {since} ago; {reads} and holds {unread} unread bytes: the reader may be blocked (a pool or handler deadlock)"
        )
    } else {
        format!(
            "peer closed {since} ago and the owner has not closed its end; {reads}: a connection pool or handler is holding a dead connection"
        )
    }
}

/// The hint for the end of a CLOSE_WAIT leak.
pub fn close_wait_resolved_hint(close_wait_ms: u64, lower_bound: bool) -> String {
    let at_least = if lower_bound { "at least " } else { "" };
    format!(
        "closed by its owner after {at_least}{} in CLOSE_WAIT",
        human(close_wait_ms)
    )
}

/// A duration as people say it: `850ms`, `42s`, `2m 5s`, `3h 20m`.
pub fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_unread_bytes_and_side() {
        assert_eq!(
            hint(Kind::RstOnClose, Role::Client, 72480),
            "closed with 72480 unread bytes: the response was not fully read, so the kernel sent RST instead of FIN and the connection could not be reused"
        );
        assert!(hint(Kind::RstOnClose, Role::Server, 5).contains("the request was not fully read"));
        assert!(hint(Kind::LingerAbort, Role::Unknown, 0).contains("SO_LINGER"));
    }

    #[test]
    fn close_wait_hints_say_how_long_and_what_is_held() {
        assert_eq!(
            close_wait_hint(120_000, Some(125_000), 4096),
            "peer closed 2m 0s ago; the owner has not read for 2m 5s and holds 4096 unread bytes: the reader may be blocked (a pool or handler deadlock)"
        );
        assert_eq!(
            close_wait_hint(31_000, None, 0),
            "peer closed 31s ago and the owner has not closed its end; no read by the owner was seen: a connection pool or handler is holding a dead connection"
        );
        assert_eq!(
            close_wait_resolved_hint(7_200_000, true),
            "closed by its owner after at least 2h 0m in CLOSE_WAIT"
        );
        assert_eq!(human(850), "850ms");
    }
}
