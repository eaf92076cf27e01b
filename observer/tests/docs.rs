//! The operator docs cannot drift from the code: every metric the agent registers is in
//! `docs/metrics.md` and every metric there exists; every route and parameter of the API is
//! in `docs/api.md`.
#![expect(clippy::unwrap_used, reason = "tests panic on failure")]

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use observer::{
    close_wait::SocketView,
    events::{Endpoints, Event, Kind, Owner, Role},
    output::{LogEvents, Sink},
    probes::{HookType, PlanEntry},
};

fn event(kind: Kind) -> Event {
    Event {
        wall_ns: 1,
        owner: Owner {
            pid: 1,
            comm: "x".into(),
            ..Owner::default()
        },
        ends: ends(),
        role: Role::Client,
        unread_bytes: 1,
        ..Event::blank(kind)
    }
}

fn ends() -> Endpoints {
    Endpoints {
        netns: 1,
        local_addr: Ipv4Addr::LOCALHOST.into(),
        local_port: 1,
        peer_addr: Ipv4Addr::LOCALHOST.into(),
        peer_port: 2,
    }
}

fn doc(name: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/").to_owned() + name)
        .unwrap()
}

/// `(name, type)` of every family, as Prometheus (text 0.0.4) names them. A family without a
/// series prints nothing, so each is given one through the path the agent updates it by.
fn exported() -> BTreeSet<(String, String)> {
    let mut registry = observer::metrics::registry();
    let m = observer::agent::register_metrics(&mut registry, observer::metrics::Limits::default());
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink {
        store: observer::store::open(dir.path()).unwrap(),
        mode: LogEvents::None,
        metrics: m.events.clone(),
        labeller: m.labeller.clone(),
        self_metrics: m.self_metrics.clone(),
        totals: std::sync::Arc::default(),
        retention: Duration::from_mins(1),
        max_events: 10,
        enricher: std::sync::Arc::new(std::sync::Mutex::new(observer::enrich::Enricher::new(
            observer::enrich::Sources {
                cgroup_root: None,
                pod_logs: dir.path().into(),
                container_logs: dir.path().into(),
            },
        ))),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for kind in Kind::ALL.into_iter().chain([Kind::ConnectRefused]) {
        tx.try_send(event(kind)).unwrap();
    }
    drop(tx);
    sink.run(rx, std::io::sink());
    m.self_metrics.plan(&[PlanEntry {
        purpose: observer::probes::Purpose::State,
        required: true,
        chosen: Some((HookType::TpBtf, "inet_sock_set_state", "state_btf")),
        refused: vec![],
    }]);
    let view = SocketView {
        state: "close_wait",
        ends: ends(),
        owner: Owner {
            pid: 1,
            comm: "x".into(),
            cgroup_id: 0,
            workload: observer::enrich::Attribution {
                pod: Some("web-0".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
        },
        role: Role::Client,
        unread_bytes: 0,
        close_wait_ms: 1,
        close_wait_lower_bound: false,
        last_read_ms_ago: None,
        reported: false,
    };
    m.close_wait.set(&[view], &m.labeller, 1);
    let flow = observer::pool::FlowLabels {
        workload: observer::metrics::Workload {
            comm: "x".into(),
            ..Default::default()
        },
        peer: "127.0.0.1:80".into(),
        role: "client".into(),
    };
    let mut delta = observer::pool::Delta {
        opened: 2,
        closed: 1,
        lifetime_ms: 3,
        ..Default::default()
    };
    delta.lifetimes[2] = 1;
    m.pool.flow(&flow, &delta);
    m.pool
        .set_established(&[(flow, 1)].into_iter().collect(), 1);
    m.pool.set_time_wait(
        &[(observer::metrics::WorkloadPeer::default(), 1)]
            .into_iter()
            .collect(),
    );
    m.pool
        .set_ports(&[(observer::pool::PortLabels::default(), 1, 0.5)]);
    m.self_metrics.flows_full.inc();
    observer::metrics::encode_prometheus(&registry)
        .lines()
        .filter_map(|l| {
            let (name, ty) = l.strip_prefix("# TYPE ")?.split_once(' ')?;
            Some((name.to_owned(), ty.to_owned()))
        })
        .collect()
}

/// `(name, type)` of every row of the reference table: `| \\`name\\` | type | ...`.
fn documented() -> BTreeSet<(String, String)> {
    doc("metrics.md")
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            name.starts_with("observer_")
                .then(|| (name.to_owned(), cells[2].to_owned()))
        })
        .collect()
}

#[test]
fn metrics_reference_matches_the_registry() {
    let (code, docs) = (exported(), documented());
    let missing: Vec<_> = code.difference(&docs).collect();
    let stale: Vec<_> = docs.difference(&code).collect();
    assert!(
        missing.is_empty(),
        "exported but not in docs/metrics.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in docs/metrics.md but not exported: {stale:?}"
    );
}

#[test]
fn api_reference_names_every_route_and_parameter() {
    let api = doc("api.md");
    for route in observer::api::ROUTES {
        assert!(
            api.contains(&format!("`GET {route}")),
            "docs/api.md lacks the route {route}"
        );
    }
    for p in observer::store::query::PARAMS
        .iter()
        .chain(&observer::api::SOCKETS_PARAMS)
    {
        assert!(
            api.contains(&format!("`{p}`")),
            "docs/api.md lacks the parameter {p}"
        );
    }
}
