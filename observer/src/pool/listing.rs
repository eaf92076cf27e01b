//! The listing half of the [`Monitor`]: every namespace's sockets through `sock_diag`, at
//! most once per scan and using at most 1/[`LISTING_SHARE`] of a core, into the TIME_WAIT
//! gauges (each socket named by its first closer, [`time_wait`]) and the ephemeral-port
//! gauges and `port_pressure` events ([`ports`]).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use aya::maps::IterableMap as _;
use observer_common::{
    flow::{Closer, FlowKey, Owner, TupleKey},
    tcp::AF_INET6,
};

use super::{Monitor, Seen, detect, ports, time_wait};
use crate::{
    events::{
        Event, Kind, Role,
        decode::{addr, monotonic_ns, thread_cpu_ns},
    },
    map_read,
    metrics::{WorkloadPeer, labelled_peer},
    sock_diag::{self, DiagSocket},
};

/// Sockets are listed at most once per scan, and at most 1/`LISTING_SHARE` of the time.
const LISTING_SHARE: u32 = 20;

impl Monitor {
    /// Lists every namespace's sockets: TIME_WAIT and ephemeral-port gauges, `port_pressure`
    /// events; schedules the next listing.
    pub(super) fn list(&mut self, seen: &[Seen], now: Instant) -> Vec<Event> {
        let started = Instant::now();
        let started_ns = monotonic_ns();
        let cpu_before = thread_cpu_ns();
        let namespaces = sock_diag::namespaces();
        let visits = sock_diag::visit_each(&namespaces, ports::here);
        self.metrics.listing_failures.inc_by(visits.failed);
        let listing: Vec<ports::Netns> = visits.answers.into_iter().map(|(_, ns)| ns).collect();
        self.time_wait(&listing, started_ns);
        let since = now.duration_since(self.last_listing);
        let events = self.ports(&listing, seen, since, now);
        let cpu = visits.cpu + Duration::from_nanos(thread_cpu_ns().saturating_sub(cpu_before));
        self.metrics
            .listing_seconds
            .set(started.elapsed().as_secs_f64());
        self.metrics.listing_cpu_seconds.set(cpu.as_secs_f64());
        // Listing costs the kernel a walk of every socket per namespace: on a node with
        // many of both, wait long enough that it takes at most 1/LISTING_SHARE of a core.
        // CPU time, not wall time: on a busy node the listing waits for a core, which
        // costs nothing and would space listings out past the sockets they count.
        self.last_listing = now;
        self.next_listing = started + cpu * LISTING_SHARE;
        events
    }

    /// TIME_WAIT sockets by the owner that closed each first; deletes the entries of sockets
    /// gone from TIME_WAIT since before the previous listing (this one began at `started_ns`).
    fn time_wait(&mut self, listing: &[ports::Netns], started_ns: u64) {
        // The whole table in a few syscalls, rather than one lookup per TIME_WAIT socket.
        let entries = map_read::all::<TupleKey, Closer>(self.closers.map(), || {
            self.closers.iter().filter_map(Result::ok).collect()
        });
        // Sockets still there: in TIME_WAIT, or handed over and waiting for the peer's FIN.
        let listed: foldhash::HashSet<TupleKey> = listing
            .iter()
            .flat_map(|ns| ns.time_wait.iter().chain(&ns.fin_wait2))
            .map(tuple_key)
            .collect();
        let netns: foldhash::HashSet<u32> = listing.iter().map(|ns| ns.netns).collect();
        let verdict = time_wait::judge(&entries, &listed, &netns, started_ns, &self.missed);
        for key in verdict.gone {
            // Absent already: the programs replaced nothing, nobody else deletes.
            let _ = self.closers.remove(&key);
        }
        self.missed = verdict.missed;
        let closers: foldhash::HashMap<TupleKey, Owner> =
            entries.into_iter().map(|(k, c)| (k, c.owner)).collect();
        // Grouped first by what the labels depend on (the closer, and the peer as labelled),
        // so a storm's tens of thousands of TIME_WAIT sockets build one label set per group.
        let mut groups: foldhash::HashMap<(Option<Owner>, SocketAddr), i64> =
            foldhash::HashMap::default();
        for s in listing.iter().flat_map(|ns| &ns.time_wait) {
            let owner = closers.get(&tuple_key(s)).copied();
            let role = owner.map_or(Role::Unknown, |o| Role::from_wire(o.role));
            *groups
                .entry((owner, labelled_peer(role, s.tuple.peer)))
                .or_default() += 1;
        }
        let mut by: BTreeMap<WorkloadPeer, i64> = BTreeMap::new();
        for ((owner, peer), n) in groups {
            let labels = match owner {
                Some(o) => WorkloadPeer {
                    workload: self.workload(o.cgroup_id, &o.comm),
                    peer: self.labeller.peer(Role::from_wire(o.role), peer),
                },
                None => WorkloadPeer {
                    peer: self.labeller.peer(Role::Unknown, peer),
                    ..WorkloadPeer::default()
                },
            };
            *by.entry(labels).or_default() += n;
        }
        self.metrics.set_time_wait(&by);
    }

    /// Ephemeral-port gauges (the busiest pairs by name, the rest as `other`) and
    /// `port_pressure` events, named after the workload with the most connections there.
    fn ports(
        &mut self,
        listing: &[ports::Netns],
        seen: &[Seen],
        length: Duration,
        now: Instant,
    ) -> Vec<Event> {
        let mut uses: Vec<ports::PortUse> =
            listing.iter().flat_map(ports::Netns::port_use).collect();
        uses.sort_by_key(|u| std::cmp::Reverse(u.in_use));
        let (rows, folded) = ports::gauge_rows(&uses, self.labeller.peer_limit());
        self.labeller.folded_peers(folded);
        self.metrics.set_ports(&rows);

        let mut events = Vec::new();
        for u in &uses {
            let Some(f) = detect::port_pressure(&self.thresholds, u.in_use, u.range, length) else {
                continue;
            };
            let key = (u.netns, u.source, u.peer);
            if !self.port_cooldown.allow(Kind::PortPressure, key, now) {
                continue;
            }
            self.port_cooldown.reported(Kind::PortPressure, key, now);
            // The client with the most connections open to that destination.
            let owner = seen
                .iter()
                .filter(|s| {
                    s.key.netns == u.netns
                        && s.key.role == observer_common::event::Role::Client as u8
                        && s.key.peer_port == u.peer.port()
                        && addr(u16::from(s.key.family), s.key.peer) == u.peer.ip()
                })
                .max_by_key(|s| s.window.established);
            let mut ev = if let Some(s) = owner {
                self.flow_event(Kind::PortPressure, &s.key, s.pid, f)
            } else {
                let mut key = FlowKey::OTHER;
                key.netns = u.netns;
                key.role = observer_common::event::Role::Client as u8;
                self.flow_event(Kind::PortPressure, &key, 0, f)
            };
            ev.ends.local_addr = u.source;
            ev.ends.peer_addr = u.peer.ip();
            ev.ends.peer_port = u.peer.port();
            events.push(ev);
        }
        events
    }
}

/// The `CLOSERS` key of a socket `sock_diag` listed (addresses as the kernel stores them).
fn tuple_key(s: &DiagSocket) -> TupleKey {
    let raw = |ip: IpAddr| -> [u8; 16] {
        let mut out = [0; 16];
        match ip {
            IpAddr::V4(v4) if s.family == AF_INET6 => out = v4.to_ipv6_mapped().octets(),
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out = v6.octets(),
        }
        out
    };
    TupleKey {
        saddr: raw(s.tuple.local.ip()),
        daddr: raw(s.tuple.peer.ip()),
        netns: s.tuple.netns,
        sport: s.tuple.local.port(),
        dport: s.tuple.peer.port(),
    }
}
