//! SIGINT and SIGTERM (the kubelet's stop signal). The handlers are installed before the
//! agent says it is ready, so a signal can never find the default action (death) in place.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Installed handlers for SIGINT and SIGTERM.
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    /// Installs the handlers now (inside a tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM, with its name.
    pub async fn received(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
