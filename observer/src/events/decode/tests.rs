use std::collections::BTreeMap;

use observer_common::{layout::Offsets, tcp::AF_INET};

use super::*;

fn decoder() -> Decoder {
    let layout = Layout {
        offsets: Offsets::default(),
        rst_reasons: BTreeMap::from([
            (0, "NOT_SPECIFIED".to_owned()),
            (11, "TCP_ABORT_ON_CLOSE".to_owned()),
        ]),
        tracefs: false,
    };
    Decoder::new(&layout)
}

fn raw() -> RawEvent {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"curl");
    let mut saddr = [0u8; 16];
    saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
    RawEvent {
        ts_ns: 5_000_000_000,
        sk: 0xffff_0000,
        cgroup_id: 42,
        established_ns: 2_000_000_000,
        bytes_received: 73_000,
        bytes_sent: 120,
        saddr,
        daddr,
        comm,
        unread_bytes: 72_480,
        netns: 4_026_531_840,
        pid: 1234,
        rst_reason: 11,
        sport: 40_000,
        dport: 8080,
        family: AF_INET,
        kind: wire::Kind::RstOnClose as u8,
        role: wire::Role::Client as u8,
        old_state: 1,
        _pad: [0; 7],
        close_wait_ns: 0,
        last_read_ns: 0,
        unsent_bytes: 0,
        _pad2: 0,
        inode: 0,
    }
}

fn bytes(r: &RawEvent) -> Vec<u8> {
    // SAFETY: `RawEvent` is `repr(C)` plain data without padding holes.
    unsafe { std::slice::from_raw_parts((&raw const *r).cast::<u8>(), size_of::<RawEvent>()) }
        .to_vec()
}

#[test]
fn decodes_every_field() {
    let d = decoder();
    let e = d.decode(&bytes(&raw())).unwrap();
    assert_eq!(e.kind, Kind::RstOnClose);
    assert_eq!(
        (e.owner.pid, e.owner.comm.as_str(), e.owner.cgroup_id),
        (1234, "curl", 42)
    );
    assert_eq!(e.ends.local_addr.to_string(), "127.0.0.1");
    assert_eq!(
        (
            e.ends.peer_addr.to_string().as_str(),
            e.ends.peer_port,
            e.ends.local_port
        ),
        ("10.1.2.3", 8080, 40_000)
    );
    assert_eq!(e.role, Role::Client);
    assert_eq!(e.unread_bytes, 72_480);
    assert_eq!(e.conn_age_ms, Some(3000));
    assert_eq!((e.bytes_received, e.bytes_sent), (73_000, Some(120)));
    assert_eq!(e.rst_reason.as_deref(), Some("TCP_ABORT_ON_CLOSE"));
    assert!(e.hint.starts_with("closed with 72480 unread bytes"));
    assert!(e.ts.ends_with('Z') && e.ts.contains('T'), "{}", e.ts);
    assert_eq!(e.id, 0, "the writer numbers events");
    assert_eq!(
        (
            e.close_wait_ms,
            e.last_read_ms_ago,
            e.close_wait_lower_bound
        ),
        (None, None, None)
    );
}

#[test]
fn unknowns_become_null() {
    let mut r = raw();
    r.established_ns = 0;
    r.bytes_sent = UNKNOWN_BYTES;
    r.rst_reason = NO_RST_REASON;
    r.role = 0;
    let e = decoder().event(&r).unwrap();
    assert_eq!(
        (e.conn_age_ms, e.bytes_sent, e.rst_reason),
        (None, None, None)
    );
    assert_eq!(e.role, Role::Unknown);
    r.rst_reason = 0;
    assert_eq!(
        decoder().event(&r).unwrap().rst_reason,
        None,
        "NOT_SPECIFIED is no reason"
    );
}

#[test]
fn ipv6_and_mapped_addresses() {
    let mut r = raw();
    r.family = AF_INET6;
    r.saddr = "::1".parse::<Ipv6Addr>().unwrap().octets();
    r.daddr = "::ffff:10.0.0.9".parse::<Ipv6Addr>().unwrap().octets();
    let e = decoder().event(&r).unwrap();
    assert_eq!(e.ends.local_addr.to_string(), "::1");
    assert_eq!(e.ends.peer_addr.to_string(), "10.0.0.9");
}

#[test]
fn bad_records_are_errors() {
    let d = decoder();
    assert_eq!(d.decode(&[0u8; 10]), Err(DecodeError::Truncated(10)));
    let mut r = raw();
    r.kind = 99;
    assert_eq!(d.decode(&bytes(&r)), Err(DecodeError::Kind(99)));
}

/// Every field CONTRACT.md names, flat (the owner and the endpoints are flattened structs) and
/// in its order.
#[test]
fn json_has_the_contract_fields() {
    let e = decoder().event(&raw()).unwrap();
    let v = serde_json::to_value(&e).unwrap();
    let json = serde_json::to_string(&e).unwrap();
    let mut last = 0;
    for field in [
        "id",
        "ts",
        "kind",
        "pid",
        "comm",
        "cgroup_id",
        "container_id",
        "container",
        "pod",
        "namespace",
        "netns",
        "local_addr",
        "local_port",
        "peer_addr",
        "peer_port",
        "role",
        "unread_bytes",
        "conn_age_ms",
        "bytes_received",
        "bytes_sent",
        "close_wait_ms",
        "last_read_ms_ago",
        "rst_reason",
        "hint",
    ] {
        assert!(v.get(field).is_some(), "missing {field}");
        let at = json.find(&format!("\"{field}\":")).unwrap();
        assert!(at > last, "{field} out of order: {json}");
        last = at;
    }
    for nested in ["owner", "ends", "workload"] {
        assert!(v.get(nested).is_none(), "{nested} is not flattened: {json}");
    }
    assert_eq!(v["kind"], "rst_on_close");
    assert_eq!(v["role"], "client");
    assert_eq!(v["local_addr"], "127.0.0.1");
}

#[test]
fn close_wait_resolved_carries_its_times() {
    let mut r = raw();
    r.kind = wire::Kind::CloseWaitResolved as u8;
    r.rst_reason = NO_RST_REASON;
    r.close_wait_ns = 125_000_000_000;
    r.last_read_ns = 1_000_000_000;
    let e = decoder().event(&r).unwrap();
    assert_eq!(e.kind, Kind::CloseWaitResolved);
    assert_eq!(e.close_wait_ms, Some(125_000));
    assert_eq!(e.last_read_ms_ago, Some(4000), "ts 5s, last read at 1s");
    assert_eq!(e.close_wait_lower_bound, Some(false));
    assert_eq!(e.hint, "closed by its owner after 2m 5s in CLOSE_WAIT");
    r.close_wait_ns = 0;
    r.last_read_ns = 0;
    let unknown = decoder().event(&r).unwrap();
    assert_eq!(
        (unknown.close_wait_ms, unknown.last_read_ms_ago),
        (None, None),
        "left to the tracker"
    );
}

#[test]
fn a_received_reset_has_its_state_and_lost_bytes() {
    let d = decoder();
    let mut r = raw();
    r.kind = wire::Kind::ResetReceived as u8;
    r.old_state = 8;
    r.unread_bytes = 3;
    r.unsent_bytes = 4096;
    r.inode = 77;
    let e = d.decode(&bytes(&r)).unwrap();
    assert_eq!(e.kind, Kind::ResetReceived);
    assert_eq!(e.state, Some("close_wait"));
    assert_eq!(e.unsent_bytes, Some(4096));
    assert_eq!(e.inode, 77);
    assert!(
        e.hint
            .contains("in close_wait, 3 bytes unread and 4096 unsent"),
        "{}",
        e.hint
    );
    r.kind = wire::Kind::ConnectRefused as u8;
    assert_eq!(d.decode(&bytes(&r)).unwrap().kind, Kind::ConnectRefused);
    r.kind = wire::Kind::RstOnClose as u8;
    let e = d.decode(&bytes(&r)).unwrap();
    assert_eq!(
        (e.state, e.unsent_bytes),
        (None, None),
        "only for reset_received"
    );
}
