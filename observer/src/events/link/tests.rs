use super::*;
use crate::events::{Endpoints, Owner};

const MS: u64 = 1_000_000;

fn ev(kind: Kind, pid: u32, netns: u32, local: (&str, u16), peer: (&str, u16)) -> Event {
    Event {
        owner: Owner {
            pid,
            comm: format!("p{pid}"),
            cgroup_id: u64::from(pid),
            ..Owner::default()
        },
        ends: Endpoints {
            netns,
            local_addr: local.0.parse().unwrap(),
            local_port: local.1,
            peer_addr: peer.0.parse().unwrap(),
            peer_port: peer.1,
        },
        unread_bytes: if kind == Kind::RstOnClose { 4096 } else { 0 },
        ..Event::blank(kind)
    }
}

fn closer(netns: u32) -> Event {
    ev(
        Kind::RstOnClose,
        412,
        netns,
        ("127.0.0.1", 40_000),
        ("127.0.0.1", 8080),
    )
}

fn victim(netns: u32) -> Event {
    ev(
        Kind::ResetReceived,
        77,
        netns,
        ("127.0.0.1", 8080),
        ("127.0.0.1", 40_000),
    )
}

#[test]
fn an_abort_and_its_reset_name_each_other_in_either_order() {
    for closer_first in [true, false] {
        let mut l = Linker::new(WINDOW, 100);
        let (a, b) = if closer_first {
            (closer(1), victim(1))
        } else {
            (victim(1), closer(1))
        };
        assert_eq!(l.push(a, 0).0, Vec::new(), "held for the other end");
        let (out, overflow) = l.push(b, MS);
        assert!(!overflow);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].kind, Kind::RstOnClose, "the cause first");
        for e in &out {
            let other = e.linked.as_ref().unwrap();
            let want = if e.kind == Kind::RstOnClose { 77 } else { 412 };
            assert_eq!(other.pid, want);
        }
        assert_eq!(l.next_deadline(), None, "nothing left held");
    }
}

#[test]
fn loopback_ends_in_other_namespaces_do_not_match() {
    let mut l = Linker::new(WINDOW, 100);
    assert!(l.push(closer(1), 0).0.is_empty());
    assert!(
        l.push(victim(2), 0).0.is_empty(),
        "another netns' 127.0.0.1"
    );
    let out = l.expire(WINDOW.as_nanos() as u64);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|e| e.linked.is_none()));
}

#[test]
fn pod_addresses_match_across_namespaces() {
    let mut l = Linker::new(WINDOW, 100);
    let c = ev(
        Kind::RstOnClose,
        1,
        10,
        ("10.0.0.5", 40_000),
        ("10.0.0.9", 80),
    );
    let v = ev(
        Kind::ResetReceived,
        2,
        11,
        ("10.0.0.9", 80),
        ("10.0.0.5", 40_000),
    );
    assert!(l.push(c, 0).0.is_empty());
    assert_eq!(l.push(v, 0).0.len(), 2);
}

#[test]
fn a_lone_end_goes_out_when_its_time_is_up() {
    let mut l = Linker::new(WINDOW, 100);
    l.push(closer(1), 0);
    let window = WINDOW.as_nanos() as u64;
    assert_eq!(l.next_deadline(), Some(window));
    assert!(l.expire(window - 1).is_empty());
    let out = l.expire(window);
    assert_eq!(out.len(), 1);
    assert!(out[0].linked.is_none());
}

#[test]
fn other_kinds_pass_at_once_and_a_full_table_lets_the_oldest_go() {
    let mut l = Linker::new(WINDOW, 2);
    let pool = Event::blank(Kind::ConnectionChurn);
    assert_eq!(l.push(pool, 0).0.len(), 1);
    let mut first = closer(1);
    first.ends.local_port = 1;
    l.push(first, 0);
    let mut second = closer(1);
    second.ends.local_port = 2;
    l.push(second, 0);
    let (out, overflow) = l.push(closer(1), 0);
    assert!(overflow);
    assert_eq!(out[0].ends.local_port, 1, "the oldest");
    assert_eq!(l.drain().len(), 2);
}

#[test]
fn two_closers_on_one_tuple_link_one_reset_each() {
    let mut l = Linker::new(WINDOW, 100);
    l.push(closer(1), 0);
    l.push(closer(1), 1);
    assert_eq!(l.push(victim(1), 2).0.len(), 2);
    assert_eq!(l.push(victim(1), 3).0.len(), 2);
    assert!(l.drain().is_empty());
}

#[test]
fn describe_names_the_closer_and_its_pod() {
    let mut v = victim(1);
    v.hint = reset_received_hint("established", 0, 10);
    v.linked = Some(Linked {
        kind: Kind::RstOnClose,
        pid: 412,
        comm: "checkout".to_owned(),
        cgroup_id: 9,
        unread_bytes: 4096,
        inode: 0,
    });
    describe(
        &mut v,
        Attribution {
            pod: Some("checkout-7f".to_owned()),
            namespace: Some("shop".to_owned()),
            ..Attribution::default()
        },
    );
    assert_eq!(v.peer_pid, Some(412));
    assert_eq!(v.peer_pod.as_deref(), Some("checkout-7f"));
    assert!(
        v.hint
            .ends_with("pid 412 (checkout) in pod shop/checkout-7f closed with 4096 unread bytes"),
        "{}",
        v.hint
    );
    let mut c = closer(1);
    c.linked = Some(Linked {
        kind: Kind::ResetReceived,
        pid: 77,
        comm: "nginx".to_owned(),
        cgroup_id: 3,
        unread_bytes: 0,
        inode: 0,
    });
    describe(&mut c, Attribution::default());
    assert!(
        c.hint.contains("the reset reached pid 77 (nginx)"),
        "{}",
        c.hint
    );
    assert_eq!(c.peer_comm.as_deref(), Some("nginx"));
}
