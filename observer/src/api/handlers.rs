//! One function per route. Locks are taken for short copies and never held across an await.

use std::{sync::atomic::Ordering, time::Duration};

use axum::{
    Json,
    extract::{Query, State as Extract},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::State;
use crate::{
    metrics,
    store::{
        Filter, MAX_LIMIT,
        query::{BadParam, parse_peer},
    },
};

type Pairs = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// `{"error": msg}` with `status`: every refusal of the API, its listeners' included.
pub(super) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": msg.to_string() }))).into_response()
}

/// The query's pairs, or why the query string does not parse.
fn pairs(q: Pairs) -> Result<Vec<(String, String)>, String> {
    q.map(|Query(p)| p)
        .map_err(|e| format!("invalid query string: {}", e.body_text()))
}

fn now_ns() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    )
    .unwrap_or(u64::MAX)
}

pub(super) async fn metrics(Extract(s): Extract<State>, headers: HeaderMap) -> Response {
    let open = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if open {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            metrics::encode_openmetrics(&s.registry),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics::encode_prometheus(&s.registry),
        )
            .into_response()
    }
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(Extract(s): Extract<State>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: probes are being attached\n",
        )
            .into_response()
    }
}

pub(super) async fn events(Extract(s): Extract<State>, q: Pairs) -> Response {
    let pairs = match pairs(q) {
        Ok(p) => p,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let filter = match Filter::from_pairs(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        now_ns(),
    ) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let reader = s.reader.clone();
    let cut = s.queries_cut.clone();
    let rows = tokio::task::spawn_blocking(move || {
        // A blocking thread of its own: the lock is not held across an await.
        reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .query(&filter)
    })
    .await;
    match rows {
        Ok(Ok(rows)) => {
            // One copy of the rows, not two (a joined string): 10,000 events are about 6 MB.
            let mut body =
                String::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 16);
            body.push_str("{\"events\":[");
            for (i, row) in rows.into_iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&row);
            }
            body.push_str("]}");
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Ok(Err(e)) if crate::store::is_cut(&e) => {
            cut.inc();
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the query ran past --query-time-limit: narrow it (kind, since, until, peer, limit)",
            )
        }
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("event store: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn bad(param: &str, why: impl Into<String>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        BadParam {
            param: param.to_owned(),
            why: why.into(),
        },
    )
}

pub(super) async fn sockets(Extract(s): Extract<State>, q: Pairs) -> Response {
    let pairs = match pairs(q) {
        Ok(p) => p,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let (mut min_age, mut pid, mut comm, mut peer, mut limit) =
        (Duration::ZERO, None, None, None, 1000usize);
    let mut seen = std::collections::HashSet::new();
    for (k, v) in &pairs {
        if !seen.insert(k.as_str()) {
            return bad(k, "given more than once");
        }
        match k.as_str() {
            "state" if v == "close_wait" || v == "close-wait" => {}
            "state" => return bad(k, format!("{v:?}: only close_wait sockets are tracked")),
            "min_age" => match humantime::parse_duration(v) {
                Ok(d) => min_age = d,
                Err(_) => return bad(k, format!("{v:?} is not a duration like 30s")),
            },
            "pid" => match v.parse::<u32>() {
                Ok(p) => pid = Some(p),
                Err(_) => return bad(k, format!("{v:?} is not a valid number")),
            },
            "comm" if !v.is_empty() && v.len() <= 256 => comm = Some(v.clone()),
            "comm" => return bad(k, "must be 1 to 256 characters"),
            "peer" => match parse_peer(v) {
                Ok(p) => peer = Some(p),
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT as usize).contains(&n) => limit = n,
                _ => return bad(k, format!("must be between 1 and {MAX_LIMIT}")),
            },
            other => return bad(other, "unknown parameter"),
        }
    }
    let min_ms = u64::try_from(min_age.as_millis()).unwrap_or(u64::MAX);
    let live = s
        .live
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let sockets: Vec<_> = live
        .into_iter()
        .filter(|v| v.close_wait_ms >= min_ms)
        .filter(|v| pid.is_none_or(|p| v.owner.pid == p))
        .filter(|v| comm.as_ref().is_none_or(|c| &v.owner.comm == c))
        .filter(|v| {
            peer.is_none_or(|(ip, port)| {
                v.ends.peer_addr == ip && port.is_none_or(|p| v.ends.peer_port == p)
            })
        })
        .take(limit)
        .collect();
    Json(json!({ "sockets": sockets })).into_response()
}

pub(super) async fn status(Extract(s): Extract<State>) -> Response {
    let status = s
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let tracked = s
        .live
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": status.kernel,
        "ready": s.ready.load(Ordering::Acquire),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "probes": status.probes,
        "degraded": status.degraded,
        "events_total": s.totals.events(),
        "drops": status.drops,
        "close_wait": { "tracked": tracked, "threshold_ms": status.close_wait_threshold_ms },
    }))
    .into_response()
}

pub(super) async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such route: see /api/v1/status, /api/v1/events, /api/v1/sockets, /metrics",
    )
}
