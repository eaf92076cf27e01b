//! The agent's listeners on a runtime thread of their own, for the API tests and the
//! benchmarks: their flags parsed as `observer agent` parses them, so the defaults are the
//! agent's own, never copies.

use std::net::SocketAddr;

use clap::Parser;
use observer::api::{self, serve::ServeArgs};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
}

/// Serves `state` with `--listen 127.0.0.1:0` and `flags` until the process ends; returns
/// the addresses `--listen` and `--metrics-listen` bound.
pub(crate) fn serve_on_thread(
    state: api::State,
    shed: api::serve::Metrics,
    flags: &[&str],
) -> (SocketAddr, Option<SocketAddr>) {
    let first = ["observer", "--listen", "127.0.0.1:0"].into_iter();
    let args = Flags::parse_from(first.chain(flags.iter().copied())).serve;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (_stop, stop) = tokio::sync::watch::channel(false);
            let servers = api::serve::start(&args, &state, &shed, &stop)
                .await
                .unwrap();
            tx.send((servers.listen, servers.metrics_listen)).unwrap();
            servers.join().await
        })
    });
    rx.recv().unwrap()
}
