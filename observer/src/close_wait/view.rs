//! One socket in CLOSE_WAIT as the API and the gauges see it, and the shared live list.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::events::{Endpoints, Owner, Role};

/// The sockets in CLOSE_WAIT as of the last scan, oldest first; read by the API.
pub type Live = Arc<Mutex<Vec<SocketView>>>;

/// One socket in CLOSE_WAIT, as `/api/v1/sockets` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SocketView {
    /// TCP state (`close_wait`).
    pub state: &'static str,
    /// The connection's ends.
    #[serde(flatten)]
    pub ends: Endpoints,
    /// The owner (pid 0 while unknown).
    #[serde(flatten)]
    pub owner: Owner,
    /// Who connected.
    pub role: Role,
    /// Bytes the owner has not read.
    pub unread_bytes: u32,
    /// Time in CLOSE_WAIT.
    pub close_wait_ms: u64,
    /// True when counted from start-up discovery (the real time is longer).
    pub close_wait_lower_bound: bool,
    /// Time since the owner last read, null if it never did.
    pub last_read_ms_ago: Option<u64>,
    /// Whether a `close_wait_leak` was reported for it.
    pub reported: bool,
}

impl SocketView {
    /// The view of socket `t` with nothing known about it yet.
    pub(super) fn of(t: super::Tuple) -> Self {
        Self {
            state: "close_wait",
            ends: Endpoints {
                netns: t.netns,
                local_addr: t.local.ip(),
                local_port: t.local.port(),
                peer_addr: t.peer.ip(),
                peer_port: t.peer.port(),
            },
            owner: Owner::default(),
            role: Role::Unknown,
            unread_bytes: 0,
            close_wait_ms: 0,
            close_wait_lower_bound: false,
            last_read_ms_ago: None,
            reported: false,
        }
    }
}
