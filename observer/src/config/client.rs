//! Flags of the client commands (`observer events | sockets | status`).

use clap::Args;

/// How client commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON (one object per line with `events --follow`).
    Json,
}

/// Flags every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The agent's API.
    #[arg(
        long,
        env = "OBSERVER_AGENT",
        value_name = "URL",
        default_value = "http://127.0.0.1:9464"
    )]
    pub agent: String,

    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

/// Flags of `observer events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    /// Agent and output.
    pub client: ClientArgs,
    /// Only this kind (rst_on_close, linger_abort, close_wait_leak, close_wait_resolved,
    /// connection_churn, connection_explosion, port_pressure).
    #[arg(long)]
    pub kind: Option<String>,
    /// Not before: RFC 3339, or a duration ago (`10m`).
    #[arg(long)]
    pub since: Option<String>,
    /// Not after: RFC 3339, or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// Only this owner process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only this process name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only this pod.
    #[arg(long)]
    pub pod: Option<String>,
    /// Only this Kubernetes namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only this peer: `IP` or `IP:PORT`.
    #[arg(long, value_name = "IP[:PORT]")]
    pub peer: Option<String>,
    /// At most this many (1 to 10000; the agent's default is 100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Keep printing new events as they happen (oldest first).
    #[arg(long)]
    pub follow: bool,
}

/// Flags of `observer sockets`.
#[derive(Debug, Clone, Args)]
pub struct SocketsArgs {
    #[command(flatten)]
    /// Agent and output.
    pub client: ClientArgs,
    /// TCP state (only close-wait is tracked).
    #[arg(long, default_value = "close-wait")]
    pub state: String,
    /// Only sockets in that state for at least this long (`30s`).
    #[arg(long, value_name = "DURATION")]
    pub min_age: Option<String>,
    /// Only this owner process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only this process name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only this peer: `IP` or `IP:PORT`.
    #[arg(long, value_name = "IP[:PORT]")]
    pub peer: Option<String>,
    /// At most this many.
    #[arg(long)]
    pub limit: Option<u32>,
}
