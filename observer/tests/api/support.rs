//! The API tests' server: the agent's real listeners ([`crate::serving`]) over a real SQLite
//! history fed with events, on 127.0.0.1:0.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Mutex,
};

use observer::{
    api,
    enrich::Attribution,
    events::{Endpoints, Event, Kind, Owner, Role},
    metrics, store,
};
use serde_json::Value;

use crate::serving::serve_on_thread;

pub(crate) const OBSERVER: &str = env!("CARGO_BIN_EXE_observer");

pub(crate) fn event(
    kind: Kind,
    pid: u32,
    comm: &str,
    peer: &str,
    port: u16,
    wall_ns: u64,
) -> Event {
    Event {
        ts: "2026-11-21T12:00:00Z".to_owned(),
        wall_ns,
        owner: Owner {
            pid,
            comm: comm.to_owned(),
            cgroup_id: 1,
            workload: Attribution {
                pod: Some("web-0".to_owned()),
                namespace: Some("shop".to_owned()),
                ..Attribution::default()
            },
        },
        ends: Endpoints {
            netns: 1,
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 40000,
            peer_addr: peer.parse().unwrap(),
            peer_port: port,
        },
        role: Role::Client,
        unread_bytes: 42,
        conn_age_ms: Some(5),
        bytes_received: 42,
        bytes_sent: Some(7),
        rst_reason: Some("TCP_ABORT_ON_CLOSE".to_owned()),
        hint: "closed with 42 unread bytes".to_owned(),
        ..Event::blank(kind)
    }
}

pub(crate) struct Server {
    pub(crate) url: String,
    /// `--metrics-listen`'s URL, when the test asked for one.
    pub(crate) metrics_url: Option<String>,
    pub(crate) state: api::State,
    /// The writer, to add events while a client follows.
    pub(crate) store: Mutex<store::Store>,
    _dir: tempfile::TempDir,
}

/// An API on 127.0.0.1:0 over a history holding `events` (ids 1..), not yet ready.
pub(crate) fn serve(events: Vec<Event>) -> Server {
    serve_with(&[], events)
}

/// [`serve`] with the listener flags `flags` (as `observer agent` takes them).
pub(crate) fn serve_with(flags: &[&str], mut events: Vec<Event>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut st = store::open(dir.path()).unwrap();
    st.append(&mut events).unwrap();
    let mut registry = metrics::registry();
    let _ = metrics::SelfMetrics::register(&mut registry);
    let shed = api::serve::Metrics::register(&mut registry);
    let state = api::State::new(registry, store::Reader::open(st.file()).unwrap());
    let (listen, metrics_listen) = serve_on_thread(state.clone(), shed, flags);
    Server {
        url: format!("http://{listen}"),
        metrics_url: metrics_listen.map(|a| format!("http://{a}")),
        state,
        store: Mutex::new(st),
        _dir: dir,
    }
}

pub(crate) fn get(url: &str) -> (u16, String) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let mut r = agent.get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

pub(crate) fn ids(body: &str) -> Vec<u64> {
    let v: Value = serde_json::from_str(body).unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}
