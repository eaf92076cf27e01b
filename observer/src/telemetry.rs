//! The agent's own log: `tracing` to stderr, filtered by `OBSERVER_LOG` (default
//! `warn,observer=info`), formatted by `OBSERVER_LOG_FORMAT` (`plain` or `json`). aya's and
//! aya-log's `log` records (the programs' rare diagnostics) are bridged in.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the subscriber. Call once, first thing in `main`.
pub fn init() -> Result<(), String> {
    let filter = EnvFilter::try_from_env("OBSERVER_LOG")
        .or_else(|_| EnvFilter::try_new("warn,observer=info,observer_ebpf=info"))
        .map_err(|e| format!("invalid OBSERVER_LOG: {e}"))?;
    let json = match std::env::var("OBSERVER_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("plain") | Err(_) => false,
        Ok(other) => {
            return Err(format!(
                "invalid OBSERVER_LOG_FORMAT {other:?}: expected plain or json"
            ));
        }
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let res = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    res.map_err(|e| format!("installing the log subscriber: {e}"))?;
    tracing_log::LogTracer::init().map_err(|e| format!("bridging log records: {e}"))
}
