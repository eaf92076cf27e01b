//! The domain [`Event`]: what the API, the JSON-lines log and the store share, as CONTRACT.md
//! names its fields; its [`Owner`] and [`Endpoints`] are shared with the CLOSE_WAIT view and
//! serialize as flat fields in both. Decoded from the programs' [`RawEvent`] by [`decode`],
//! read from the ring buffer by [`reader`]; the hints in [`hint`].
//!
//! [`RawEvent`]: observer_common::event::RawEvent

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

use crate::enrich::Attribution;

#[allow(
    unsafe_code,
    reason = "the ring-buffer decode boundary: records read as RawEvent"
)]
pub mod decode;
mod hint;
pub mod link;
pub mod reader;

pub use hint::{close_wait_hint, close_wait_resolved_hint, hint, human};

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The owner closed with unread bytes: the kernel sent RST instead of FIN.
    RstOnClose,
    /// The owner closed with `SO_LINGER` 0: a deliberate abort.
    LingerAbort,
    /// A socket has stayed in CLOSE_WAIT longer than the threshold: the peer closed, the owner
    /// has not.
    CloseWaitLeak,
    /// A socket reported as a CLOSE_WAIT leak was finally closed.
    CloseWaitResolved,
    /// A workload opens many short-lived connections to one peer: its pool is not reusing them.
    ConnectionChurn,
    /// A workload holds many established connections to one peer.
    ConnectionExplosion,
    /// Connections from one source address to one destination use most ephemeral ports.
    PortPressure,
    /// An RST arrived on an established (or closing) connection: the peer reset it, and the
    /// owner's next read or write fails with `ECONNRESET`.
    ResetReceived,
    /// An RST answered a `connect()`: refused. Counted per workload and peer
    /// (`observer_connects_refused_total`), never stored: not in [`Kind::ALL`].
    ConnectRefused,
}

impl Kind {
    /// Every kind, in the order they are documented.
    pub const ALL: [Self; 8] = [
        Self::RstOnClose,
        Self::LingerAbort,
        Self::ResetReceived,
        Self::CloseWaitLeak,
        Self::CloseWaitResolved,
        Self::ConnectionChurn,
        Self::ConnectionExplosion,
        Self::PortPressure,
    ];

    /// The name the API, the log and the store use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RstOnClose => "rst_on_close",
            Self::LingerAbort => "linger_abort",
            Self::CloseWaitLeak => "close_wait_leak",
            Self::CloseWaitResolved => "close_wait_resolved",
            Self::ConnectionChurn => "connection_churn",
            Self::ConnectionExplosion => "connection_explosion",
            Self::PortPressure => "port_pressure",
            Self::ResetReceived => "reset_received",
            Self::ConnectRefused => "connect_refused",
        }
    }

    /// The kind called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Every name, comma-separated, for error messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It connected.
    Client,
    /// It was accepted.
    Server,
    /// observer did not see the connection being established.
    Unknown,
}

impl Role {
    /// The name the API, the log and the labels use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Unknown => "unknown",
        }
    }

    /// From the programs' `observer_common::event::Role` byte.
    pub fn from_wire(raw: u8) -> Self {
        match observer_common::event::Role::from(raw) {
            observer_common::event::Role::Client => Self::Client,
            observer_common::event::Role::Server => Self::Server,
            observer_common::event::Role::Unknown => Self::Unknown,
        }
    }
}

/// Who owns a socket: the process, and its workload inside containers. Shared by events and
/// the CLOSE_WAIT view, flattened into both.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Owner {
    /// Thread-group id; 0 while unknown.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// Container and pod (from the kubelet's log layout); null outside them.
    #[serde(flatten)]
    pub workload: Attribution,
}

impl Owner {
    /// The process `o`, found holding the socket's file; its workload not attributed yet.
    pub fn held_by(o: &crate::owners::Owner) -> Self {
        Self {
            pid: o.pid,
            comm: o.comm.clone(),
            cgroup_id: o.cgroup_id,
            workload: Attribution::default(),
        }
    }
}

/// A connection's two ends, in its network namespace. Shared by events and the CLOSE_WAIT
/// view, flattened into both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Endpoints {
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
}

impl Endpoints {
    /// The peer's address and port.
    pub const fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.peer_addr, self.peer_port)
    }

    /// Namespace 0, unspecified addresses, port 0: nothing known yet.
    pub const fn unspecified() -> Self {
        Self {
            netns: 0,
            local_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            local_port: 0,
            peer_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            peer_port: 0,
        }
    }
}

/// One event, as every output shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Increasing per agent run; set by the writer (0 until then).
    pub id: u64,
    /// RFC 3339, UTC, nanoseconds.
    pub ts: String,
    /// The same instant as nanoseconds since the Unix epoch, for filters (not serialized).
    #[serde(skip)]
    pub wall_ns: u64,
    /// What happened.
    pub kind: Kind,
    /// The socket's owner (never the softirq context).
    #[serde(flatten)]
    pub owner: Owner,
    /// The connection's ends.
    #[serde(flatten)]
    pub ends: Endpoints,
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
    /// Time since the owner last read (CLOSE_WAIT events only; null if no read was seen: none,
    /// or none while the read hook ran).
    pub last_read_ms_ago: Option<u64>,
    /// CLOSE_WAIT events: true when the socket was already in CLOSE_WAIT when observer found
    /// it, so `close_wait_ms` counts from then and the real time is at least that.
    pub close_wait_lower_bound: Option<bool>,
    /// The kernel's RST reason, where it reports one.
    pub rst_reason: Option<String>,
    /// `reset_received`: the TCP state the reset found (`established`, `close_wait`, ...).
    pub state: Option<&'static str>,
    /// `reset_received`: bytes written and not yet acknowledged, which the reset discards.
    pub unsent_bytes: Option<u32>,
    /// The other end's owner, when both ends are sockets on this node and the reset was
    /// linked (`rst_on_close` and `linger_abort` name the victim, `reset_received` the closer).
    pub peer_pid: Option<u32>,
    /// The other end's command name, with `peer_pid`.
    pub peer_comm: Option<String>,
    /// The other end's container name, with `peer_pid`, inside pods.
    pub peer_container: Option<String>,
    /// The other end's pod, with `peer_pid`, inside pods.
    pub peer_pod: Option<String>,
    /// The other end's pod namespace, with `peer_pid`, inside pods.
    pub peer_namespace: Option<String>,
    /// One plain-language sentence on the likely cause.
    pub hint: String,
    /// Pool-health events: the figures that triggered them; null for other kinds.
    pub figures: Option<Figures>,
    /// The other end's event, as the linker found it (not serialized): the sink attributes it
    /// and fills the `peer_*` fields and the hint from it.
    #[serde(skip)]
    pub linked: Option<link::Linked>,
    /// Inode of the socket's file when the programs did not know its owner (`pid` 0), for the
    /// sink to find it (not serialized); 0 otherwise.
    #[serde(skip)]
    pub inode: u64,
}

impl Event {
    /// An event of `kind` with nothing else known: zero ids and counts, unspecified addresses,
    /// unknown role, empty strings, null options. Builders fill in what they know with
    /// `Event { .., ..Event::blank(kind) }`.
    pub fn blank(kind: Kind) -> Self {
        Self {
            id: 0,
            ts: String::new(),
            wall_ns: 0,
            kind,
            owner: Owner::default(),
            ends: Endpoints::unspecified(),
            role: Role::Unknown,
            unread_bytes: 0,
            conn_age_ms: None,
            bytes_received: 0,
            bytes_sent: None,
            close_wait_ms: None,
            last_read_ms_ago: None,
            close_wait_lower_bound: None,
            rst_reason: None,
            state: None,
            unsent_bytes: None,
            peer_pid: None,
            peer_comm: None,
            peer_container: None,
            peer_pod: None,
            peer_namespace: None,
            hint: String::new(),
            figures: None,
            linked: None,
            inode: 0,
        }
    }
}

/// What a pool-health detector measured, and the threshold it crossed. Fields that do not
/// apply to the event's kind are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// The period the rates are measured over, in milliseconds.
    pub window_ms: u64,
    /// Connections to the peer established per second over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_per_second: Option<f64>,
    /// Connections closed over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<u64>,
    /// Median lifetime of those connections (upper bound of its histogram bucket), in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_lifetime_ms: Option<u64>,
    /// Established connections from the workload to the peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub established: Option<u64>,
    /// Local ports in use from the source address to the destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports_in_use: Option<u64>,
    /// Size of the namespace's `ip_local_port_range`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_range: Option<u32>,
    /// `ports_in_use / port_range`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The threshold crossed (per second, connections or ratio, as the flag sets it).
    pub threshold: f64,
}
