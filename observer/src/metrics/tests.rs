use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;

use super::*;

fn limits(peers: usize, workloads: usize) -> Limits {
    Limits {
        peers,
        workloads,
        idle: LABEL_IDLE,
    }
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port)
}

#[test]
fn clients_name_services_servers_name_hosts() {
    let mut r = registry();
    let peers = Labeller::register(&mut r, limits(10, 10));
    assert_eq!(peers.peer(Role::Client, peer(6379)), "10.0.0.1:6379");
    assert_eq!(
        peers.peer(Role::Server, peer(51234)),
        "10.0.0.1",
        "ephemeral ports never become labels"
    );
    assert_eq!(peers.peer(Role::Unknown, peer(51235)), "10.0.0.1");
    // What callers group sockets by before labelling: one group per label.
    assert_eq!(labelled_peer(Role::Client, peer(6379)), peer(6379));
    assert_eq!(labelled_peer(Role::Server, peer(51234)), peer(0));
    assert_eq!(
        labelled_peer(Role::Unknown, peer(51235)),
        labelled_peer(Role::Server, peer(40000))
    );
}

#[test]
fn peers_beyond_the_limit_fold_into_other_and_are_counted() {
    let mut r = registry();
    let peers = Labeller::register(&mut r, limits(2, 10));
    assert_eq!(peers.peer(Role::Client, peer(1)), "10.0.0.1:1");
    assert_eq!(peers.peer(Role::Client, peer(2)), "10.0.0.1:2");
    assert_eq!(peers.peer(Role::Client, peer(3)), "other");
    assert_eq!(
        peers.peer(Role::Client, peer(1)),
        "10.0.0.1:1",
        "named peers stay named"
    );
    assert_eq!(peers.peer(Role::Client, peer(4)), "other");
    let text = encode_prometheus(&r);
    assert!(
        text.lines()
            .any(|l| l == "observer_peer_labels_folded_total 2"),
        "{text}"
    );
}

#[test]
fn an_idle_peer_gives_its_name_and_its_series_to_a_new_one() {
    let mut r = registry();
    let peers = Labeller::register(&mut r, limits(2, 10));
    let series: PeerSeries<WorkloadPeer, Counter> = PeerSeries::new(&peers);
    r.register("hits", "x", series.family());
    let t0 = Instant::now();
    let hit = |port: u16, at: Instant| {
        let labels = WorkloadPeer {
            workload: Workload {
                comm: "c".into(),
                ..Workload::default()
            },
            peer: peers.peer_at(Role::Client, peer(port), at),
        };
        series.with(&labels, |c| {
            c.inc();
        });
        labels.peer
    };
    assert_eq!(hit(1, t0), "10.0.0.1:1");
    assert_eq!(hit(2, t0 + Duration::from_mins(5)), "10.0.0.1:2");
    // Both named peers were used within LABEL_IDLE: the new one folds.
    assert_eq!(hit(3, t0 + Duration::from_mins(6)), "other");
    // Peer 1 has been idle for LABEL_IDLE: its name goes to peer 3, its series go away.
    assert_eq!(hit(3, t0 + LABEL_IDLE), "10.0.0.1:3");
    let text = encode_prometheus(&r);
    assert!(!text.contains("10.0.0.1:1\""), "{text}");
    assert!(
        text.contains(
            r#"hits_total{namespace="",pod="",container="",comm="c",peer="10.0.0.1:3"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"peer="other"} 1"#), "{text}");
    // Peer 2 was used more recently than peer 1 was: still named.
    assert_eq!(hit(2, t0 + LABEL_IDLE), "10.0.0.1:2");
}

#[test]
fn workloads_beyond_the_limit_fold_and_idle_ones_take_their_series_away() {
    let mut r = registry();
    let labeller = Labeller::register(&mut r, limits(10, 2));
    let series: PeerSeries<WorkloadPeer, Counter> = PeerSeries::new(&labeller);
    r.register("hits", "x", series.family());
    let t0 = Instant::now();
    let hit = |comm: &str, at: Instant| {
        let w = labeller.workload_at(
            Workload {
                comm: comm.into(),
                ..Workload::default()
            },
            at,
        );
        let labels = WorkloadPeer {
            workload: w,
            peer: labeller.peer_at(Role::Client, peer(1), at),
        };
        series.with(&labels, |c| {
            c.inc();
        });
        labels.workload.comm
    };
    assert_eq!(hit("a", t0), "a");
    assert_eq!(hit("b", t0 + Duration::from_mins(5)), "b");
    assert_eq!(hit("c", t0 + Duration::from_mins(6)), "other");
    let text = encode_prometheus(&r);
    assert!(
        text.contains(r#"hits_total{namespace="other",pod="other",container="other",comm="other",peer="10.0.0.1:1"} 1"#),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "observer_workload_labels_folded_total 1"),
        "{text}"
    );
    // "a" idle for LABEL_IDLE: gone with its series, without any new workload asking.
    assert_eq!(hit("b", t0 + LABEL_IDLE), "b");
    let text = encode_prometheus(&r);
    assert!(!text.contains(r#"comm="a""#), "{text}");
    assert!(text.contains(r#"comm="b",peer="10.0.0.1:1"} 2"#), "{text}");
    // Its slot is free again.
    assert_eq!(hit("c", t0 + LABEL_IDLE), "c");
}

#[test]
fn prometheus_text_names_counters_and_info_by_their_samples() {
    let mut r = registry();
    let m = SelfMetrics::register(&mut r);
    m.lost("decode_error", 3);
    let text = encode_prometheus(&r);
    assert!(
        text.lines()
            .any(|l| l == "# TYPE observer_events_lost_total counter"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == r#"observer_events_lost_total{source="decode_error"} 3"#),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == r#"observer_events_lost_total{source="store_error"} 0"#),
        "every source from the start"
    );
    assert!(
        text.lines()
            .any(|l| l == "# TYPE observer_build_info gauge"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("observer_build_info{version=")),
        "{text}"
    );
    assert!(!text.contains("# EOF"));
    let open = encode_openmetrics(&r);
    assert!(open.ends_with("# EOF\n"));
    assert!(
        open.lines()
            .any(|l| l == "# TYPE observer_events_lost counter")
    );
}

#[test]
fn deltas_turn_totals_into_increments() {
    let d = Deltas::default();
    assert_eq!(d.since_last(&[5, 0]), vec![5, 0]);
    assert_eq!(d.since_last(&[7, 1]), vec![2, 1]);
    assert_eq!(d.since_last(&[7, 1]), vec![0, 0]);
}
