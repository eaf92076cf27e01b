//! Pool health (incidents 3 and 4): connection churn, connection explosion, TIME_WAIT build-up
//! and ephemeral-port pressure, per workload and peer.
//!
//! The programs count opens and closes, with lifetime buckets, per (owner, peer, role) in the
//! `FLOWS` map (no event per connection). Every `--pool-interval` the [`Monitor`], on a thread
//! of its own:
//!
//! * reads `FLOWS`, turns the growth of each entry into counter and histogram increments and
//!   the open connections into the established gauge, and deletes entries with nothing open
//!   that did not move for a whole interval (lookup-and-delete: a count that lands meanwhile
//!   is returned with the entry, never lost);
//! * lists every namespace's sockets with `sock_diag`: TIME_WAIT sockets, named by the owner
//!   the programs recorded when that socket closed first (`CLOSERS`, one entry per socket,
//!   deleted once two listings in a row no longer show it: [`time_wait`]), and local ports in
//!   use per (source address, destination) against the namespace's `ip_local_port_range` — at most
//!   once per scan and using at most 5% of a core (the kernel walks every socket per namespace);
//! * runs the detectors ([`detect`]) and sends their events to the writers.
//!
//! At start-up it records the owners of listening sockets that predate the programs, so the
//! connections they accept are attributed like those of listeners opened later.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData};
use observer_common::{
    flow::{Closer, FlowEntry, FlowKey, FlowStats, LIFETIME_BUCKETS, ListenKey, Owner, TupleKey},
    tcp::{AF_INET6, LISTEN},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    enrich::{Attribution, Enricher},
    events::{
        Event, Figures, Kind, Role,
        decode::{Decoder, addr, comm, monotonic_ns, thread_cpu_ns},
    },
    map_read,
    metrics::{HasPeer, Labeller, PeerSeries, SelfMetrics, Workload, WorkloadPeer, labelled_peer},
    owners,
    sock_diag::{self, DiagSocket},
};

/// Sockets are listed at most once per scan, and at most 1/`LISTING_SHARE` of the time.
const LISTING_SHARE: u32 = 20;

/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;

pub mod detect;
pub mod lifetimes;
pub mod ports;

use detect::{Cooldown, Thresholds, Window};
use lifetimes::Lifetimes;

mod time_wait;

/// Workload, peer and role: the labels of the connection series.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct FlowLabels {
    /// Kubernetes namespace, empty when unknown.
    pub namespace: String,
    /// Pod name, empty when unknown.
    pub pod: String,
    /// Container name, empty when unknown.
    pub container: String,
    /// Process name when the connection was established.
    pub comm: String,
    /// `ip:port` for a client's peer, `ip` for a server's clients, or `other`.
    pub peer: String,
    /// `client`, `server` or `unknown`.
    pub role: String,
}

impl HasPeer for FlowLabels {
    fn peer(&self) -> &str {
        &self.peer
    }

    fn workload(&self) -> Workload {
        Workload {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            container: self.container.clone(),
            comm: self.comm.clone(),
        }
    }
}

/// Source address and destination: the labels of the ephemeral-port series.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PortLabels {
    /// Local address, or `other`.
    pub source: String,
    /// Destination `ip:port`, or `other`.
    pub peer: String,
}

/// The growth of one `FLOWS` entry between two reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Connections established.
    pub opened: u64,
    /// Connections closed.
    pub closed: u64,
    /// Sum of the closed ones' lifetimes, in milliseconds.
    pub lifetime_ms: u64,
    /// Closed ones by lifetime bucket.
    pub lifetimes: [u64; LIFETIME_BUCKETS],
}

impl Delta {
    /// `now - before`, field by field.
    pub fn between(before: &FlowStats, now: &FlowStats) -> Self {
        let mut lifetimes = [0; LIFETIME_BUCKETS];
        for (d, (b, n)) in lifetimes
            .iter_mut()
            .zip(before.lifetime.iter().zip(&now.lifetime))
        {
            *d = n.saturating_sub(*b);
        }
        Self {
            opened: now.opened.saturating_sub(before.opened),
            closed: now.closed.saturating_sub(before.closed),
            lifetime_ms: now.lifetime_ms_sum.saturating_sub(before.lifetime_ms_sum),
            lifetimes,
        }
    }
}

/// The pool-health series.
#[derive(Clone)]
pub struct Metrics {
    opened: PeerSeries<FlowLabels, Counter>,
    closed: PeerSeries<FlowLabels, Counter>,
    lifetime: PeerSeries<FlowLabels, Lifetimes>,
    established: Family<FlowLabels, Gauge>,
    time_wait: Family<WorkloadPeer, Gauge>,
    ports_in_use: Family<PortLabels, Gauge>,
    ports_ratio: Family<PortLabels, Gauge<f64, AtomicU64>>,
    flows_entries: Gauge,
    /// How long the last listing of every namespace's sockets took, and the CPU time it used.
    pub listing_seconds: Gauge<f64, AtomicU64>,
    listing_cpu_seconds: Gauge<f64, AtomicU64>,
    listing_failures: Counter,
}

impl Metrics {
    /// Registers the connection, TIME_WAIT and ephemeral-port series; the `FLOWS` fill level
    /// goes into the self-metrics.
    pub fn register(
        registry: &mut Registry,
        self_metrics: &SelfMetrics,
        labeller: &Labeller,
    ) -> Self {
        let m = Self {
            opened: PeerSeries::new(labeller),
            closed: PeerSeries::new(labeller),
            lifetime: PeerSeries::new(labeller),
            established: Family::default(),
            time_wait: Family::default(),
            ports_in_use: Family::default(),
            ports_ratio: Family::default(),
            flows_entries: self_metrics.map(
                observer_common::maps::FLOWS,
                observer_common::maps::FLOWS_MAX_ENTRIES,
            ),
            listing_seconds: Gauge::default(),
            listing_cpu_seconds: Gauge::default(),
            listing_failures: Counter::default(),
        };
        registry.register(
            "connections_opened",
            "TCP connections established, by workload, peer and role (counted in the kernel)",
            m.opened.family(),
        );
        registry.register(
            "connections_closed",
            "TCP connections closed after observer saw them established, by workload, peer and role",
            m.closed.family(),
        );
        registry.register_with_unit(
            "connection_lifetime",
            "Lifetime of closed TCP connections, from ESTABLISHED to CLOSE (buckets double from 1 ms to about 70 minutes)",
            Unit::Seconds,
            m.lifetime.family(),
        );
        registry.register(
            "connections_established",
            "TCP connections in ESTABLISHED (as ss counts them), established since observer started, by workload, peer and role",
            m.established.clone(),
        );
        registry.register(
            "time_wait_sockets",
            "Sockets in TIME_WAIT, by the workload that closed first and its peer (comm empty when observer did not see the close)",
            m.time_wait.clone(),
        );
        registry.register(
            "ephemeral_ports_in_use",
            "Local ports of ip_local_port_range in use from one source address to one destination (the busiest pairs; the rest in source=\"other\")",
            m.ports_in_use.clone(),
        );
        registry.register_with_unit(
            "socket_listing_duration",
            "How long the last sock_diag listing of every namespace's sockets took",
            Unit::Seconds,
            m.listing_seconds.clone(),
        );
        registry.register_with_unit(
            "socket_listing_cpu",
            "CPU time the last listing of every namespace's sockets used (TIME_WAIT and ephemeral ports are refreshed at most every 20 times this)",
            Unit::Seconds,
            m.listing_cpu_seconds.clone(),
        );
        registry.register(
            "socket_listing_failures",
            "Namespaces a listing could not enter or list: their sockets are missing from that listing's TIME_WAIT and ephemeral-port gauges",
            m.listing_failures.clone(),
        );
        registry.register(
            "ephemeral_ports_ratio",
            "observer_ephemeral_ports_in_use divided by the size of that namespace's ip_local_port_range (connect fails with EADDRNOTAVAIL at 1)",
            m.ports_ratio.clone(),
        );
        m
    }

    /// Adds one entry's growth to the counters and the histogram.
    pub fn flow(&self, labels: &FlowLabels, d: &Delta) {
        if d.opened > 0 {
            self.opened.with(labels, |c| {
                c.inc_by(d.opened);
            });
        }
        if d.closed > 0 {
            self.closed.with(labels, |c| {
                c.inc_by(d.closed);
            });
            self.lifetime
                .with(labels, |h| h.add(d.lifetime_ms, &d.lifetimes));
        }
    }

    /// Replaces the established gauges, and the `FLOWS` fill level with `entries`.
    pub fn set_established(&self, by: &BTreeMap<FlowLabels, i64>, entries: usize) {
        self.flows_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.established.clear();
        for (labels, n) in by {
            self.established.get_or_create(labels).set((*n).max(0));
        }
    }

    /// Replaces the TIME_WAIT gauges.
    pub fn set_time_wait(&self, by: &BTreeMap<WorkloadPeer, i64>) {
        self.time_wait.clear();
        for (labels, n) in by {
            self.time_wait.get_or_create(labels).set(*n);
        }
    }

    /// Replaces the ephemeral-port gauges: ports in use and ratio per pair.
    pub fn set_ports(&self, rows: &[(PortLabels, u64, f64)]) {
        self.ports_in_use.clear();
        self.ports_ratio.clear();
        for (labels, n, ratio) in rows {
            self.ports_in_use
                .get_or_create(labels)
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
            self.ports_ratio.get_or_create(labels).set(*ratio);
        }
    }
}

/// The programs' maps the monitor reads and fills.
pub struct Maps {
    /// Connection counts, by key id.
    pub flows: BpfHashMap<MapData, u64, FlowEntry>,
    /// First closers of sockets in TIME_WAIT, by tuple.
    pub closers: BpfHashMap<MapData, TupleKey, Closer>,
    /// Owners of listening sockets.
    pub listeners: BpfHashMap<MapData, ListenKey, Owner>,
}

/// Reads `FLOWS` and the socket lists, exports the series and runs the detectors.
pub struct Monitor {
    flows: BpfHashMap<MapData, u64, FlowEntry>,
    closers: BpfHashMap<MapData, TupleKey, Closer>,
    /// `CLOSERS` entries the last listing did not show (see [`time_wait`]).
    missed: HashSet<TupleKey>,
    listeners: BpfHashMap<MapData, ListenKey, Owner>,
    /// Each entry as last read.
    last: HashMap<FlowKey, FlowStats>,
    /// Connections still open whose entry was deleted in a race (see [`Monitor::read_flows`]).
    carry: HashMap<FlowKey, i64>,
    last_scan: Instant,
    /// When sockets were last listed, and when they may be listed again.
    last_listing: Instant,
    next_listing: Instant,
    thresholds: Thresholds,
    flow_cooldown: Cooldown<FlowKey>,
    port_cooldown: Cooldown<(u32, IpAddr, SocketAddr)>,
    metrics: Metrics,
    labeller: Arc<Labeller>,
    enricher: Arc<Mutex<Enricher>>,
    decoder: Decoder,
}

/// One entry's window, for the detectors.
struct Seen {
    key: FlowKey,
    window: Window,
    pid: u32,
}

impl Monitor {
    /// A monitor over the programs' `FLOWS` and `CLOSERS` maps.
    pub fn new(
        maps: Maps,
        thresholds: Thresholds,
        metrics: Metrics,
        labeller: Arc<Labeller>,
        enricher: Arc<Mutex<Enricher>>,
        decoder: Decoder,
    ) -> Self {
        let cooldown = thresholds.cooldown;
        Self {
            flows: maps.flows,
            closers: maps.closers,
            missed: HashSet::new(),
            listeners: maps.listeners,
            last: HashMap::new(),
            carry: HashMap::new(),
            last_scan: Instant::now(),
            last_listing: Instant::now(),
            next_listing: Instant::now(),
            thresholds,
            flow_cooldown: Cooldown::new(cooldown),
            port_cooldown: Cooldown::new(cooldown),
            metrics,
            labeller,
            enricher,
            decoder,
        }
    }

    /// Records the owners of the listening sockets that existed before the programs were
    /// attached (found with `sock_diag` and `/proc/*/fd`), so the connections they accept are
    /// attributed too. A listener the programs recorded meanwhile is kept. Returns how many
    /// were added.
    pub fn startup(&mut self) -> usize {
        let namespaces = sock_diag::namespaces();
        let listening: Vec<DiagSocket> =
            sock_diag::in_each(&namespaces, |netns| sock_diag::here(netns, 1 << LISTEN))
                .into_iter()
                .flat_map(|(_, found)| found)
                .collect();
        let inodes: HashSet<u64> = listening.iter().map(|s| s.inode).collect();
        let owners = owners::find(Path::new("/proc"), &inodes);
        let mut added = 0;
        for s in &listening {
            let Some(o) = owners.get(&s.inode) else {
                continue;
            };
            let key = ListenKey {
                netns: s.tuple.netns,
                port: s.tuple.local.port(),
                _pad: 0,
            };
            let mut comm = [0u8; 16];
            for (d, b) in comm.iter_mut().zip(o.comm.bytes().take(15)) {
                *d = b;
            }
            let owner = Owner {
                cgroup_id: o.cgroup_id,
                comm,
                pid: o.pid,
                role: observer_common::event::Role::Server as u8,
                _pad: [0; 3],
            };
            if self.listeners.insert(key, owner, BPF_NOEXIST).is_ok() {
                added += 1;
            }
        }
        added
    }

    /// One scan: series updated, detector events returned.
    pub fn scan(&mut self) -> Vec<Event> {
        let now = Instant::now();
        let length = now.duration_since(self.last_scan);
        self.last_scan = now;
        let seen = self.read_flows(length);
        let mut events = Vec::new();
        for s in &seen {
            if s.key == FlowKey::OTHER {
                continue;
            }
            let churn = detect::churn(&self.thresholds, &s.window);
            let explosion = (s.key.role == observer_common::event::Role::Client as u8)
                .then(|| detect::explosion(&self.thresholds, &s.window))
                .flatten();
            for (kind, figures) in [
                (Kind::ConnectionChurn, churn),
                (Kind::ConnectionExplosion, explosion),
            ] {
                if let Some(f) = figures
                    && self.flow_cooldown.allow(kind, s.key, now)
                {
                    self.flow_cooldown.reported(kind, s.key, now);
                    events.push(self.flow_event(kind, &s.key, s.pid, f));
                }
            }
        }
        if now >= self.next_listing {
            let started = Instant::now();
            let started_ns = monotonic_ns();
            let cpu_before = thread_cpu_ns();
            let namespaces = sock_diag::namespaces();
            let visits = sock_diag::visit_each(&namespaces, ports::here);
            self.metrics.listing_failures.inc_by(visits.failed);
            let listing: Vec<ports::Netns> = visits.answers.into_iter().map(|(_, ns)| ns).collect();
            self.time_wait(&listing, started_ns);
            let since = now.duration_since(self.last_listing);
            events.extend(self.ports(&listing, &seen, since, now));
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
        }
        events
    }

    /// Reads every `FLOWS` entry: counters, histogram and established gauges; deletes idle
    /// entries. Returns each entry's window.
    fn read_flows(&mut self, length: Duration) -> Vec<Seen> {
        let entries = map_read::all::<u64, FlowEntry>(self.flows.map(), || {
            self.flows.iter().filter_map(Result::ok).collect()
        });
        let mut next = HashMap::with_capacity(entries.len());
        let mut seen = Vec::with_capacity(entries.len());
        let mut established: BTreeMap<FlowLabels, i64> = BTreeMap::new();
        for (
            id,
            FlowEntry {
                stats: mut now,
                key,
            },
        ) in entries
        {
            let before = self.last.get(&key).copied().unwrap_or(FlowStats::ZERO);
            let idle = key != FlowKey::OTHER && now == before && now.opened == now.closed;
            let mut deleted = false;
            if idle {
                match map_read::take::<u64, FlowEntry>(self.flows.map(), &id) {
                    // What the entry held when deleted, counts that landed since the read
                    // included. A connection opened in between and still open is carried.
                    Ok(Some(FlowEntry { stats: last, .. })) => {
                        let open = open_count(&last);
                        if open != 0 {
                            *self.carry.entry(key).or_default() += open;
                        }
                        now = last;
                        deleted = true;
                    }
                    Ok(None) => continue,
                    Err(e) => warn!(error = %e, "deleting an idle FLOWS entry failed"),
                }
            }
            if !deleted {
                next.insert(key, now);
            }
            let d = Delta::between(&before, &now);
            let labels = self.labels(&key);
            self.metrics.flow(&labels, &d);
            let carried = self.carry.get(&key).copied().unwrap_or(0);
            let open = if deleted {
                carried
            } else {
                carried + open_count(&now)
            };
            *established.entry(labels).or_default() += open;
            seen.push(Seen {
                key,
                window: Window {
                    length,
                    opened: d.opened,
                    lifetimes: d.lifetimes,
                    established: u64::try_from(open).unwrap_or(0),
                },
                pid: now.pid,
            });
        }
        self.carry.retain(|_, n| *n != 0);
        self.metrics.set_established(&established, next.len());
        self.last = next;
        seen
    }

    /// The labels of a `FLOWS` entry.
    fn labels(&self, key: &FlowKey) -> FlowLabels {
        if *key == FlowKey::OTHER {
            return FlowLabels {
                peer: "other".to_owned(),
                role: Role::Unknown.as_str().to_owned(),
                ..FlowLabels::default()
            };
        }
        let w = self.workload(key.cgroup_id, &key.comm);
        let role = Role::from_wire(key.role);
        FlowLabels {
            namespace: w.namespace,
            pod: w.pod,
            container: w.container,
            comm: w.comm,
            peer: self.labeller.peer(
                role,
                SocketAddr::new(addr(u16::from(key.family), key.peer), key.peer_port),
            ),
            role: role.as_str().to_owned(),
        }
    }

    /// The workload labels of an owner (its cgroup and `comm`), bounded by the labeller.
    fn workload(&self, cgroup_id: u64, raw_comm: &[u8; 16]) -> Workload {
        let a = self.attribution(cgroup_id);
        self.labeller.workload(Workload {
            namespace: a.namespace.unwrap_or_default(),
            pod: a.pod.unwrap_or_default(),
            container: a.container.unwrap_or_default(),
            comm: comm(raw_comm),
        })
    }

    /// The pod, namespace and container of a cgroup.
    fn attribution(&self, cgroup_id: u64) -> Attribution {
        self.enricher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lookup(cgroup_id)
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
                Some(o) => {
                    let w = self.workload(o.cgroup_id, &o.comm);
                    WorkloadPeer {
                        namespace: w.namespace,
                        pod: w.pod,
                        container: w.container,
                        comm: w.comm,
                        peer: self.labeller.peer(Role::from_wire(o.role), peer),
                    }
                }
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
        let mut rows: BTreeMap<PortLabels, (u64, f64)> = BTreeMap::new();
        let mut folded = 0;
        for (i, u) in uses.iter().enumerate() {
            let labels = if i < self.labeller.peer_limit() {
                PortLabels {
                    source: u.source.to_string(),
                    peer: u.peer.to_string(),
                }
            } else {
                folded += 1;
                PortLabels {
                    source: "other".to_owned(),
                    peer: "other".to_owned(),
                }
            };
            // The same pair in two namespaces (loopback): the fuller one counts.
            let row = rows.entry(labels).or_default();
            row.0 = row.0.max(u.in_use);
            row.1 = row.1.max(u.ratio());
        }
        self.labeller.folded_peers(folded);
        let rows: Vec<(PortLabels, u64, f64)> =
            rows.into_iter().map(|(l, (n, r))| (l, n, r)).collect();
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
            ev.local_addr = u.source;
            ev.peer_addr = u.peer.ip();
            ev.peer_port = u.peer.port();
            events.push(ev);
        }
        events
    }

    /// A pool-health event about the connections of `key` (attribution is added by the sink).
    fn flow_event(&self, kind: Kind, key: &FlowKey, pid: u32, figures: Figures) -> Event {
        let role = Role::from_wire(key.role);
        let peer_addr = addr(u16::from(key.family), key.peer);
        let local_addr = if peer_addr.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let at = monotonic_ns();
        Event {
            ts: self.decoder.wall_clock(at),
            wall_ns: self.decoder.wall_ns(at),
            pid,
            comm: comm(&key.comm),
            cgroup_id: key.cgroup_id,
            netns: key.netns,
            local_addr,
            peer_addr,
            peer_port: key.peer_port,
            role,
            hint: detect::hint(kind, &figures, role == Role::Server),
            figures: Some(figures),
            ..Event::blank(kind)
        }
    }
}

/// Connections an entry counts as established (opened and not yet left ESTABLISHED).
fn open_count(s: &FlowStats) -> i64 {
    i64::try_from(s.opened).unwrap_or(i64::MAX) - i64::try_from(s.left).unwrap_or(i64::MAX)
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

/// The monitor's thread: a scan every `every` until `stop` is dropped or signalled; events go
/// to `tx`.
pub fn spawn(
    mut monitor: Monitor,
    every: Duration,
    tx: mpsc::Sender<Event>,
    stop: std::sync::mpsc::Receiver<()>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("observer-pool".to_owned())
        .spawn(move || {
            let listeners = monitor.startup();
            info!(listeners, "listening sockets found at start-up");
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
                for ev in monitor.scan() {
                    if tx.blocking_send(ev).is_err() {
                        return;
                    }
                }
            }
        })
}
