//! One socket in CLOSE_WAIT as the API and the gauges see it, and the shared live list.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use serde::Serialize;

use crate::events::Role;

/// The sockets in CLOSE_WAIT as of the last scan, oldest first; read by the API.
pub type Live = Arc<Mutex<Vec<SocketView>>>;

/// One socket in CLOSE_WAIT, as `/api/v1/sockets` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SocketView {
    /// TCP state (`close_wait`).
    pub state: &'static str,
    /// Network namespace inode.
    pub netns: u32,
    /// Local address.
    pub local_addr: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Peer address.
    pub peer_addr: IpAddr,
    /// Peer port.
    pub peer_port: u16,
    /// Owner (0 while unknown).
    pub pid: u32,
    /// Owner's process name.
    pub comm: String,
    /// Owner's cgroup v2 id.
    pub cgroup_id: u64,
    /// Container id, null outside containers.
    pub container_id: Option<String>,
    /// Container name.
    pub container: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Pod namespace.
    pub namespace: Option<String>,
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
            netns: t.netns,
            local_addr: t.local.ip(),
            local_port: t.local.port(),
            peer_addr: t.peer.ip(),
            peer_port: t.peer.port(),
            pid: 0,
            comm: String::new(),
            cgroup_id: 0,
            container_id: None,
            container: None,
            pod: None,
            namespace: None,
            role: Role::Unknown,
            unread_bytes: 0,
            close_wait_ms: 0,
            close_wait_lower_bound: false,
            last_read_ms_ago: None,
            reported: false,
        }
    }
}
