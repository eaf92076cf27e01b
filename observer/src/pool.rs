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
    collections::{BTreeMap, HashSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData};
use observer_common::{
    flow::{Closer, FlowEntry, FlowKey, ListenKey, Owner, TupleKey},
    tcp::LISTEN,
};
use tokio::sync::mpsc;
use tracing::info;

use crate::{
    enrich::{Attribution, Enricher},
    events::{
        self, Endpoints, Event, Figures, Kind, Role,
        decode::{Decoder, addr, comm, monotonic_ns},
    },
    map_read,
    metrics::{Labeller, Workload},
    owners,
    sock_diag::{self, DiagSocket},
};

/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;

pub mod detect;
mod flows;
pub mod lifetimes;
mod listing;
mod metrics;
pub mod ports;
mod time_wait;

use detect::{Cooldown, Thresholds, Window};
pub use flows::Delta;
pub use metrics::{FlowLabels, Metrics, PortLabels};

/// Reads `FLOWS` and the socket lists, exports the series and runs the detectors.
pub struct Monitor {
    flows: BpfHashMap<MapData, u64, FlowEntry>,
    closers: BpfHashMap<MapData, TupleKey, Closer>,
    /// `CLOSERS` entries the last listing did not show (see [`time_wait`]).
    missed: HashSet<TupleKey>,
    listeners: BpfHashMap<MapData, ListenKey, Owner>,
    /// The folding of `FLOWS` reads.
    folding: flows::Flows,
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
        maps: crate::probes::PoolMaps,
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
            folding: flows::Flows::default(),
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
            events.extend(self.list(&seen, now));
        }
        events
    }

    /// Reads every `FLOWS` entry: counters, histogram and established gauges; deletes idle
    /// entries ([`flows`]). Returns each entry's window.
    fn read_flows(&mut self, length: Duration) -> Vec<Seen> {
        let entries = map_read::all::<u64, FlowEntry>(self.flows.map(), || {
            self.flows.iter().filter_map(Result::ok).collect()
        });
        let map = self.flows.map();
        let folded = self
            .folding
            .fold(entries, |id| map_read::take::<u64, FlowEntry>(map, &id));
        let mut established: BTreeMap<FlowLabels, i64> = BTreeMap::new();
        let mut seen = Vec::with_capacity(folded.len());
        for f in folded {
            let labels = self.labels(&f.key);
            self.metrics.flow(&labels, &f.delta);
            *established.entry(labels).or_default() += f.open;
            seen.push(Seen {
                key: f.key,
                window: Window {
                    length,
                    opened: f.delta.opened,
                    lifetimes: f.delta.lifetimes,
                    established: u64::try_from(f.open).unwrap_or(0),
                },
                pid: f.pid,
            });
        }
        self.metrics
            .set_established(&established, self.folding.kept());
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
        let role = Role::from_wire(key.role);
        FlowLabels {
            workload: self.workload(key.cgroup_id, &key.comm),
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
            owner: events::Owner {
                pid,
                comm: comm(&key.comm),
                cgroup_id: key.cgroup_id,
                workload: Attribution::default(),
            },
            ends: Endpoints {
                netns: key.netns,
                local_addr,
                local_port: 0,
                peer_addr,
                peer_port: key.peer_port,
            },
            role,
            hint: detect::hint(kind, &figures, role == Role::Server),
            figures: Some(figures),
            ..Event::blank(kind)
        }
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
