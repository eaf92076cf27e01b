//! The domain [`Event`]: what the API, the JSON-lines log and (later) the store share, as
//! CONTRACT.md names its fields. Decoded from the programs' [`RawEvent`] by [`decode`], read
//! from the ring buffer by [`reader`].
//!
//! [`RawEvent`]: observer_common::event::RawEvent

use std::net::IpAddr;

use serde::Serialize;

pub mod decode;
pub mod reader;

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The owner closed with unread bytes: the kernel sent RST instead of FIN.
    RstOnClose,
    /// The owner closed with `SO_LINGER` 0: a deliberate abort.
    LingerAbort,
}

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It connected.
    Client,
    /// It was accepted.
    Server,
    /// observer did not see the connection being established.
    Unknown,
}

/// One event, as every output shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Increasing per agent run.
    pub id: u64,
    /// RFC 3339, UTC, nanoseconds.
    pub ts: String,
    /// What happened.
    pub kind: Kind,
    /// Owner's thread-group id (never the softirq context).
    pub pid: u32,
    /// Owner's command name.
    pub comm: String,
    /// Owner's cgroup v2 id.
    pub cgroup_id: u64,
    /// Container id, once attribution exists (null until then).
    pub container_id: Option<String>,
    /// Pod name (null until attribution exists).
    pub pod: Option<String>,
    /// Pod namespace (null until attribution exists).
    pub namespace: Option<String>,
    /// Network namespace inode number.
    pub netns: u32,
    /// Local address.
    pub local_addr: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Peer address.
    pub peer_addr: IpAddr,
    /// Peer port.
    pub peer_port: u16,
    /// Who connected.
    pub role: Role,
    /// Bytes the owner never read (FIN not counted).
    pub unread_bytes: u32,
    /// Milliseconds since the connection was established, if observer saw that.
    pub conn_age_ms: Option<u64>,
    /// `tcp_sock.bytes_received`.
    pub bytes_received: u64,
    /// `tcp_sock.bytes_sent`, where the kernel has it.
    pub bytes_sent: Option<u64>,
    /// Time in CLOSE_WAIT (CLOSE_WAIT events only).
    pub close_wait_ms: Option<u64>,
    /// Time since the owner last read (CLOSE_WAIT events only).
    pub last_read_ms_ago: Option<u64>,
    /// The kernel's RST reason, where it reports one.
    pub rst_reason: Option<String>,
    /// One plain-language sentence on the likely cause.
    pub hint: String,
}

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
}
