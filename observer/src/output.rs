//! The JSON-lines event log: one JSON object per line on stdout, the same object the API will
//! return. Writes are batched: everything queued is written, then flushed once.

use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use crate::events::Event;

/// Where events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogEvents {
    /// One JSON object per line on standard output.
    Stdout,
    /// Not written (events still count).
    None,
}

/// Numbers and writes every event from `rx` to `out` until the channel closes.
pub async fn run<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Event>,
    mode: LogEvents,
    mut out: W,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut next_id = 1u64;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(mut ev) = next {
            ev.id = next_id;
            next_id += 1;
            if mode == LogEvents::Stdout {
                serde_json::to_writer(&mut buf, &ev).map_err(std::io::Error::other)?;
                buf.push(b'\n');
            }
            next = rx.try_recv().ok();
        }
        if !buf.is_empty() {
            out.write_all(&buf).await?;
            out.flush().await?;
            buf.clear();
        }
    }
    Ok(())
}
