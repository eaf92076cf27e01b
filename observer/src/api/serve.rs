//! The listeners and what they shed. `--listen` serves every route; `--metrics-listen`, when
//! set, serves `/metrics`, `/healthz` and `/readyz` alone, so a deployment can keep the history
//! on the node and still let Prometheus and the kubelet in. Each listener is an HTTP/1 server
//! of its own, with its own budgets, so clients of one cannot starve the other:
//!
//! * a request head must arrive within `--http-header-timeout` (an idle keep-alive connection
//!   is closed after as long) and fit in 16 KiB (`431` beyond);
//! * at most `--http-max-connections` are open: one more is answered `503` and closed;
//! * at most `--http-max-requests` are in flight, from the head until the last byte of the
//!   answer is written: one more is answered `429`;
//! * an answer whose client stops reading for `--http-header-timeout` is cut off, so a reader
//!   that never reads holds its bytes and its slot for that long at most.
//!
//! Every shed connection or request is counted in `observer_http_shed_total{reason}`, and
//! each event query stopped at `--query-time-limit` in `observer_http_queries_cut_total`.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
};
use clap::Args;
use http_body::{Frame, SizeHint};
use hyper::{Request, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
};

mod shed;
mod stall;

pub use shed::Metrics;
use stall::Stall;

/// The largest request head read (hyper's smallest buffer is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Where the API listens, and what its servers afford.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the HTTP API: every route, `/metrics` included.
    #[arg(
        long,
        env = "OBSERVER_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub listen: SocketAddr,

    /// A second address serving only `/metrics`, `/healthz` and `/readyz` (for Prometheus
    /// and the kubelet while `--listen` stays on loopback).
    #[arg(long, env = "OBSERVER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Time a client has to send a request head, and to go on reading an answer; an idle
    /// keep-alive connection is closed after as long.
    #[arg(
        long,
        env = "OBSERVER_HTTP_HEADER_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub http_header_timeout: Duration,

    /// Open connections per listener; one more is answered 503 and closed.
    #[arg(long, env = "OBSERVER_HTTP_MAX_CONNECTIONS", value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,

    /// Requests in flight per listener (until their answer is written); one more is
    /// answered 429.
    #[arg(long, env = "OBSERVER_HTTP_MAX_REQUESTS", value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_requests: u32,

    /// Longest an event query may run; one stopped there is answered 503.
    #[arg(
        long,
        env = "OBSERVER_QUERY_TIME_LIMIT",
        value_name = "DURATION",
        default_value = "5s",
        value_parser = humantime::parse_duration
    )]
    pub query_time_limit: Duration,
}

/// The budgets of one listener.
#[derive(Debug, Clone, Copy)]
struct Limits {
    timeout: Duration,
    connections: usize,
    requests: usize,
}

/// The running listeners.
pub struct Servers {
    tasks: JoinSet<()>,
    /// The address `--listen` bound (port 0 picks one).
    pub listen: SocketAddr,
    /// The address `--metrics-listen` bound, if set.
    pub metrics_listen: Option<SocketAddr>,
}

impl Servers {
    /// `--metrics-listen`'s address, or `off`.
    pub fn metrics_listen_text(&self) -> String {
        self.metrics_listen
            .map_or_else(|| "off".to_owned(), |a| a.to_string())
    }

    /// Waits until every listener has stopped.
    pub async fn join(mut self) -> anyhow::Result<()> {
        while let Some(done) = self.tasks.join_next().await {
            anyhow::Context::context(done, "an API listener task failed")?;
        }
        Ok(())
    }
}

/// Binds `--listen` (every route of `state`) and `--metrics-listen` (metrics and probes
/// only), failing at once with the flag and the address, and serves them until `stop` turns
/// true. Event queries get `--query-time-limit`.
pub async fn start(
    args: &ServeArgs,
    state: &super::State,
    metrics: &Metrics,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Servers> {
    use anyhow::Context as _;
    state
        .reader
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .set_time_limit(args.query_time_limit);
    let state = &super::State {
        queries_cut: metrics.queries_cut.clone(),
        ..state.clone()
    };
    let limits = Limits {
        timeout: args.http_header_timeout,
        connections: args.http_max_connections as usize,
        requests: args.http_max_requests as usize,
    };
    let mut tasks = JoinSet::new();
    let api = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let listen = api.local_addr().unwrap_or(args.listen);
    let mut metrics_listen = None;
    if let Some(addr) = args.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        metrics_listen = Some(l.local_addr().unwrap_or(addr));
        let only = super::metrics_router(state.clone());
        tasks.spawn(accept(l, only, limits, metrics.clone(), stop.clone()));
    }
    let every = super::router(state.clone());
    tasks.spawn(accept(api, every, limits, metrics.clone(), stop.clone()));
    Ok(Servers {
        tasks,
        listen,
        metrics_listen,
    })
}

/// Accepts until `stop`, then lets each connection finish its request in flight.
async fn accept(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let open = Arc::new(Semaphore::new(limits.connections));
    let in_flight = Arc::new(Semaphore::new(limits.requests));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of descriptors or a connection reset before accept: wait, go on.
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = open.clone().try_acquire_owned() else {
                    metrics.inc("connections");
                    conns.spawn(refuse(stream, limits.timeout));
                    continue;
                };
                conns.spawn(connection(
                    stream,
                    slot,
                    router.clone(),
                    limits,
                    in_flight.clone(),
                    metrics.clone(),
                    stop.clone(),
                ));
            }
        }
    }
    while conns.join_next().await.is_some() {}
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Answers a connection over the cap with 503 and closes it. The request is read and
/// dropped (up to 64 KiB, within `timeout`) after the answer's FIN: closed unread, it would
/// turn the close into an RST that can destroy the answer before the client reads it.
async fn refuse(mut stream: TcpStream, timeout: Duration) {
    let body = r#"{"error":"too many connections (--http-max-connections)"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        io::Result::Ok(())
    })
    .await;
}

/// Serves one connection; on `stop`, finishes the request in flight and closes.
async fn connection(
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    router: Router,
    limits: Limits,
    in_flight: Arc<Semaphore>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    // A large answer goes out in `MAX_HEAD_BYTES` pieces (see `Holding`); with Nagle on, a
    // short last piece waits for the client's delayed ACK (40 ms on Linux). Failing to set it
    // costs latency, not correctness.
    let _ = stream.set_nodelay(true);
    let stalled = metrics.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut router = router.clone();
        let permit = in_flight.clone().try_acquire_owned();
        let metrics = metrics.clone();
        async move {
            let Ok(permit) = permit else {
                metrics.inc("requests");
                return Ok::<_, std::convert::Infallible>(super::handlers::error(
                    hyper::StatusCode::TOO_MANY_REQUESTS,
                    "too many requests in flight (--http-max-requests)",
                ));
            };
            let answer = tower_service::Service::call(&mut router, req).await?;
            // The slot is held until the answer's last byte is written (or the body dropped).
            Ok(answer.map(|body| Body::new(Holding::new(body, permit))))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let io = TokioIo::new(Stall::new(stream, limits.timeout));
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    let done = tokio::select! {
        done = conn.as_mut() => done,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = done {
        if e.is_timeout() {
            stalled.inc("header_timeout");
        } else if std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            stalled.inc("stalled_reader");
        }
    }
}

/// An answer's body that keeps its request's in-flight slot until it is written. It hands
/// hyper at most `MAX_HEAD_BYTES` at a time, and hyper buffers no more than that before the
/// socket takes it: the slot goes when the last piece is taken, not when a 6 MB answer is
/// queued whole.
struct Holding {
    body: Body,
    /// What the last frame had beyond one piece.
    rest: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl Holding {
    fn new(body: Body, permit: OwnedSemaphorePermit) -> Self {
        Self {
            body,
            rest: Bytes::new(),
            _permit: permit,
        }
    }

    /// The next piece of `data`, keeping what is beyond it.
    fn piece(&mut self, mut data: Bytes) -> Frame<Bytes> {
        if data.len() > MAX_HEAD_BYTES {
            self.rest = data.split_off(MAX_HEAD_BYTES);
        }
        Frame::data(data)
    }
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.rest.is_empty() {
            let rest = std::mem::take(&mut self.rest);
            return Poll::Ready(Some(Ok(self.piece(rest))));
        }
        match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Poll::Ready(Some(Ok(self.piece(data)))),
                Err(trailers) => Poll::Ready(Some(Ok(trailers))),
            },
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint.set_lower(inner.lower() + rest);
        hint
    }
}
