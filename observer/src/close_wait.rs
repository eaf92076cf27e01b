//! CLOSE_WAIT leak tracking (incident 2): the peer closed, the owner never does.
//!
//! The kernel keeps the set of sockets in CLOSE_WAIT in the pinned `CLOSE_WAIT` map, with their
//! true entry times (an agent restart loses nothing). This module owns everything else, in one
//! task ([`run`]) that every event passes through on its way to the writers:
//!
//! * every [`SCAN_EVERY`] (less often when a scan would take more than 1/[`SCAN_SHARE`] of the
//!   time: tens of thousands of sockets in CLOSE_WAIT), it reads the map and reports each
//!   socket past the threshold once (`close_wait_leak`; at most [`LEAKS_PER_SCAN`] per scan,
//!   the oldest first), marking the entry so the kernel reports its end
//!   (`close_wait_resolved`) and a restarted agent does not report it again;
//! * at start-up, it finds sockets already in CLOSE_WAIT through `sock_diag` ([`crate::sock_diag`]) in every
//!   network namespace, reports them the same way with `close_wait_lower_bound: true`, and
//!   deletes map entries whose socket left CLOSE_WAIT while no agent was running;
//! * it names owners the programs could not (an accepted socket never read, a socket found at
//!   start-up) from `/proc/*/fd` ([`crate::owners`]), cached per socket.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData};
use observer_common::event::{CW_REPORTED, CloseWaitEntry};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use crate::sock_diag::Tuple;
use crate::{
    enrich::Enricher,
    events::{
        Event, Kind, Role, close_wait_hint, close_wait_resolved_hint,
        decode::{Decoder, addr, comm, monotonic_ns},
    },
    metrics::{Labeller, SelfMetrics, Workload, WorkloadPeer, labelled_peer},
    owners,
    probes::Promoter,
    sock_diag as diag,
};

/// How often the map is read for leaks.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);
/// A scan runs at most 1/`SCAN_SHARE` of the time: one that took 50 ms (about 50,000 sockets
/// in CLOSE_WAIT on the development VM) is followed by the next 2 s later, not 1 s. It also
/// runs on the thread that reads the ring buffer and serves the API.
pub const SCAN_SHARE: u32 = 40;
/// Leaks reported per scan at most, oldest first; the others wait for the next scans. Tens of
/// thousands of sockets crossing the threshold at once (a mass leak) are then reported over
/// some seconds instead of as one batch held in memory whole: with 50,000 sockets, the agent's
/// peak RSS 84 -> 72 MiB, resident afterwards 51 MiB instead of 80.
pub const LEAKS_PER_SCAN: usize = 4096;
/// `BPF_EXIST`: update only an entry that is still there (the kernel may have removed it).
const BPF_EXIST: u64 = 2;

fn tuple_of_entry(e: &CloseWaitEntry) -> Tuple {
    Tuple {
        netns: e.netns,
        local: SocketAddr::new(addr(e.family, e.saddr), e.sport),
        peer: SocketAddr::new(addr(e.family, e.daddr), e.dport),
    }
}

fn tuple_of_event(e: &Event) -> Tuple {
    Tuple {
        netns: e.netns,
        local: SocketAddr::new(e.local_addr, e.local_port),
        peer: SocketAddr::new(e.peer_addr, e.peer_port),
    }
}

/// A socket found in CLOSE_WAIT at start-up, before the programs could see it enter.
#[derive(Debug, Clone)]
struct Found {
    /// CLOCK_MONOTONIC time it was found: its CLOSE_WAIT time counts from here.
    at_ns: u64,
    inode: u64,
    unread: u32,
    reported: bool,
}

/// What start-up found and mended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Startup {
    /// Namespaces whose sockets were listed.
    pub namespaces: usize,
    /// Sockets in CLOSE_WAIT the map did not know.
    pub discovered: usize,
    /// Map entries kept from a previous agent.
    pub kept: usize,
    /// Map entries dropped because their socket had left CLOSE_WAIT.
    pub stale: usize,
}

/// The CLOSE_WAIT state of the agent: the pinned map, the sockets found at start-up, the
/// owners found in `/proc`.
pub struct Tracker {
    map: BpfHashMap<MapData, u64, CloseWaitEntry>,
    threshold: Duration,
    decoder: Decoder,
    found: BTreeMap<Tuple, Found>,
    /// Owners found in `/proc`, by socket inode (pruned as sockets go).
    owners: HashMap<u64, owners::Owner>,
    /// Owners found in `/proc` for reported leaks, for their `close_wait_resolved`.
    attributed: HashMap<Tuple, owners::Owner>,
    metrics: Metrics,
    labeller: Arc<Labeller>,
    live: Live,
    enricher: Arc<Mutex<Enricher>>,
    /// The `iter/tcp` promotion, where the kernel has it.
    promoter: Option<Promoter>,
}

/// The sockets in CLOSE_WAIT as of the last scan, oldest first; read by the API.
pub type Live = Arc<Mutex<Vec<SocketView>>>;

/// One socket in CLOSE_WAIT, as `/api/v1/sockets` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SocketView {
    /// TCP state (`close_wait`).
    pub state: &'static str,
    /// Network namespace inode.
    pub netns: u32,
    /// Local address.
    pub local_addr: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Peer address.
    pub peer_addr: IpAddr,
    /// Peer port.
    pub peer_port: u16,
    /// Owner (0 while unknown).
    pub pid: u32,
    /// Owner's process name.
    pub comm: String,
    /// Owner's cgroup v2 id.
    pub cgroup_id: u64,
    /// Container id, null outside containers.
    pub container_id: Option<String>,
    /// Container name.
    pub container: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Who connected.
    pub role: Role,
    /// Bytes the owner has not read.
    pub unread_bytes: u32,
    /// Time in CLOSE_WAIT.
    pub close_wait_ms: u64,
    /// True when counted from start-up discovery (the real time is longer).
    pub close_wait_lower_bound: bool,
    /// Time since the owner last read, null if it never did.
    pub last_read_ms_ago: Option<u64>,
    /// Whether a `close_wait_leak` was reported for it.
    pub reported: bool,
}

/// Sockets with the same labels: namespace, pod, container, comm, role and peer.
type Group<'a> = (&'a str, &'a str, &'a str, &'a str, Role, SocketAddr);

/// `observer_close_wait_*` series, owned by the tracker.
#[derive(Clone)]
pub struct Metrics {
    sockets: Family<WorkloadPeer, Gauge>,
    oldest: Family<WorkloadPeer, Gauge<f64, AtomicU64>>,
    map_entries: Gauge,
    promotion_failures: Counter,
}

impl Metrics {
    /// Registers the CLOSE_WAIT gauges; the map's fill level goes into the self-metrics.
    pub fn register(registry: &mut Registry, self_metrics: &SelfMetrics) -> Self {
        let m = Self {
            sockets: Family::default(),
            oldest: Family::default(),
            map_entries: self_metrics.map(
                observer_common::maps::CLOSE_WAIT,
                observer_common::maps::CLOSE_WAIT_MAX_ENTRIES,
            ),
            promotion_failures: Counter::default(),
        };
        registry.register(
            "close_wait_promotion_failures",
            "Namespaces where reading the CLOSE_WAIT promotion iterator failed at a scan: their \
             sockets get no leak entry until a later scan succeeds",
            m.promotion_failures.clone(),
        );
        registry.register(
            "close_wait_sockets",
            "Sockets in CLOSE_WAIT (the peer closed, the owner has not), by workload and peer",
            m.sockets.clone(),
        );
        registry.register_with_unit(
            "close_wait_oldest",
            "Time the oldest socket of each workload and peer has spent in CLOSE_WAIT",
            Unit::Seconds,
            m.oldest.clone(),
        );
        m
    }

    /// Replaces every series with the counts and oldest ages of `views`, and the map's fill
    /// level with `entries`.
    pub fn set(&self, views: &[SocketView], labeller: &Labeller, entries: usize) {
        self.map_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        // Grouped by borrowed fields first: tens of thousands of sockets share a few label
        // sets, and building each label set (five strings, a peer lookup) once per group
        // instead of once per socket is most of this scan's cost.
        let mut groups: HashMap<Group<'_>, (i64, u64)> = HashMap::new();
        for v in views {
            let key = (
                v.namespace.as_deref().unwrap_or_default(),
                v.pod.as_deref().unwrap_or_default(),
                v.container.as_deref().unwrap_or_default(),
                v.comm.as_str(),
                v.role,
                labelled_peer(v.role, SocketAddr::new(v.peer_addr, v.peer_port)),
            );
            let slot = groups.entry(key).or_default();
            slot.0 += 1;
            slot.1 = slot.1.max(v.close_wait_ms);
        }
        let mut by: BTreeMap<WorkloadPeer, (i64, u64)> = BTreeMap::new();
        for ((namespace, pod, container, comm, role, peer), (n, oldest)) in groups {
            let workload = Workload {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                container: container.to_owned(),
                comm: comm.to_owned(),
            };
            let labels = labeller.workload_peer(workload, role, peer);
            let slot = by.entry(labels).or_default();
            slot.0 += n;
            slot.1 = slot.1.max(oldest);
        }
        self.sockets.clear();
        self.oldest.clear();
        for (labels, (n, oldest_ms)) in by {
            self.sockets.get_or_create(&labels).set(n);
            self.oldest
                .get_or_create(&labels)
                .set(oldest_ms as f64 / 1000.0);
        }
    }
}

impl Tracker {
    /// A tracker over the programs' `CLOSE_WAIT` map.
    pub fn new(
        map: BpfHashMap<MapData, u64, CloseWaitEntry>,
        threshold: Duration,
        decoder: Decoder,
        metrics: Metrics,
        labeller: Arc<Labeller>,
        live: Live,
        enricher: Arc<Mutex<Enricher>>,
    ) -> Self {
        Self {
            map,
            threshold,
            decoder,
            found: BTreeMap::new(),
            owners: HashMap::new(),
            attributed: HashMap::new(),
            metrics,
            labeller,
            live,
            enricher,
            promoter: None,
        }
    }

    /// Promotes sockets with `promoter` before each scan: the programs then record only the
    /// entry time as a socket enters CLOSE_WAIT (`Config::PROMOTE_CLOSE_WAIT`).
    #[must_use]
    pub fn with_promoter(mut self, promoter: Option<Promoter>) -> Self {
        self.promoter = promoter;
        self
    }

    /// Gives each socket still in CLOSE_WAIT in the namespaces `namespaces` lists its map
    /// entry, if one has waited a scan interval or `all` (see [`Promoter`]); nothing to do
    /// where the programs insert entries on entry.
    fn promote(&mut self, namespaces: impl FnOnce() -> crate::sock_diag::Namespaces, all: bool) {
        if let Some(p) = &mut self.promoter {
            let failed = p.run(namespaces, all);
            if failed > 0 {
                self.metrics.promotion_failures.inc_by(failed);
            }
        }
    }

    /// The live view the API reads.
    pub fn live(&self) -> Live {
        self.live.clone()
    }

    fn entries(&self) -> Vec<(u64, CloseWaitEntry)> {
        // In batches: one syscall per 4,096 entries (two per entry through aya's iterator,
        // which remains the fallback before Linux 5.6).
        crate::map_read::all(self.map.map(), || {
            self.map.iter().filter_map(Result::ok).collect()
        })
    }

    /// Lists the CLOSE_WAIT sockets of every namespace: those the map lacks are tracked from
    /// now, map entries whose socket is gone are deleted. Call after the programs are attached.
    pub fn startup(&mut self) -> Startup {
        // Stale entries are judged against the map as it was before the dump (an entry added
        // after it is not in the dump, yet live); duplicates against the map after the dump (a
        // socket that entered CLOSE_WAIT meanwhile is in both).
        let before = self.entries();
        let namespaces = diag::namespaces();
        let (dumped, sockets) = diag::close_wait_everywhere(&namespaces);
        // A socket that entered CLOSE_WAIT since the programs were attached is in the dump and
        // has its time in `SOCKS`: promoted, it is known, not discovered.
        self.promote(|| namespaces.clone(), true);
        let live: HashSet<Tuple> = sockets.iter().map(|s| s.tuple).collect();
        let dumped: BTreeSet<u32> = dumped.into_iter().collect();
        let known: HashSet<Tuple> = self
            .entries()
            .iter()
            .map(|(_, e)| tuple_of_entry(e))
            .collect();
        let mut report = Startup {
            namespaces: dumped.len(),
            ..Startup::default()
        };
        for (sk, e) in &before {
            let t = tuple_of_entry(e);
            // Only a namespace that was listed can prove a socket gone.
            if dumped.contains(&t.netns) && !live.contains(&t) {
                let _ = self.map.remove(sk);
                report.stale += 1;
            } else {
                report.kept += 1;
            }
        }
        let now = monotonic_ns();
        for s in sockets.into_iter().filter(|s| !known.contains(&s.tuple)) {
            self.found.insert(
                s.tuple,
                Found {
                    at_ns: now,
                    inode: s.inode,
                    unread: s.rqueue.saturating_sub(1),
                    reported: false,
                },
            );
            report.discovered += 1;
        }
        report
    }

    /// Reads the map, refreshes the live view and the gauges, and reports every socket past
    /// the threshold that was not reported yet.
    pub fn scan(&mut self) -> Vec<Event> {
        let now = monotonic_ns();
        let threshold = u64::try_from(self.threshold.as_nanos()).unwrap_or(u64::MAX);
        self.promote(diag::namespaces, false);
        let entries = self.entries();
        let live: HashSet<u64> = entries
            .iter()
            .map(|(_, e)| e.inode)
            .chain(self.found.values().map(|f| f.inode))
            .collect();
        self.owners.retain(|ino, _| live.contains(ino));
        let mut due: Vec<(u64, CloseWaitEntry)> = entries
            .iter()
            .filter(|(_, e)| {
                e.flags & CW_REPORTED == 0 && now.saturating_sub(e.entered_ns) >= threshold
            })
            .copied()
            .collect();
        if due.len() > LEAKS_PER_SCAN {
            due.select_nth_unstable_by_key(LEAKS_PER_SCAN, |(_, e)| e.entered_ns);
            due.truncate(LEAKS_PER_SCAN);
        }
        let mut found_due: Vec<Tuple> = self
            .found
            .iter()
            .filter(|(_, f)| !f.reported && now.saturating_sub(f.at_ns) >= threshold)
            .map(|(t, _)| *t)
            .collect();
        found_due.truncate(LEAKS_PER_SCAN - due.len());
        let wanted: HashSet<u64> = due
            .iter()
            .filter(|(_, e)| e.pid == 0)
            .map(|(_, e)| e.inode)
            .chain(
                found_due
                    .iter()
                    .filter_map(|t| self.found.get(t).map(|f| f.inode)),
            )
            .filter(|i| *i != 0 && !self.owners.contains_key(i))
            .collect();
        self.owners
            .extend(owners::find(Path::new("/proc"), &wanted));

        let mut out = Vec::with_capacity(due.len() + found_due.len());
        for (sk, mut e) in due {
            if let Some(o) = self.owners.get(&e.inode).filter(|_| e.pid == 0) {
                self.attributed.insert(tuple_of_entry(&e), o.clone());
            }
            out.push(self.leak_from_entry(&e, now));
            e.flags |= CW_REPORTED;
            // Gone meanwhile is fine: the kernel removed it as the socket left CLOSE_WAIT.
            let _ = self.map.insert(sk, e, BPF_EXIST);
        }
        for t in found_due {
            if let Some(f) = self.found.get_mut(&t) {
                f.reported = true;
                let f = f.clone();
                out.push(self.leak_from_found(t, &f, now));
            }
        }
        let mut views: Vec<SocketView> = entries
            .iter()
            .map(|(_, e)| self.view_of_entry(e, now))
            .collect();
        views.extend(
            self.found
                .iter()
                .map(|(t, f)| self.view_of_found(*t, f, now)),
        );
        views.sort_by_key(|v| std::cmp::Reverse(v.close_wait_ms));
        {
            let mut enricher = self
                .enricher
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for v in &mut views {
                let a = enricher.lookup(v.cgroup_id);
                (v.container_id, v.container, v.pod, v.namespace) =
                    (a.container_id, a.container, a.pod, a.namespace);
            }
        }
        self.metrics.set(&views, &self.labeller, entries.len());
        *self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = views;
        out
    }

    fn owner_of(&self, e: &CloseWaitEntry) -> (u32, String, u64) {
        match self.owners.get(&e.inode) {
            Some(o) if e.pid == 0 => (o.pid, o.comm.clone(), o.cgroup_id),
            _ => (e.pid, comm(&e.comm), e.cgroup_id),
        }
    }

    fn view_of_entry(&self, e: &CloseWaitEntry, now: u64) -> SocketView {
        let t = tuple_of_entry(e);
        let (pid, comm, cgroup_id) = self.owner_of(e);
        SocketView {
            state: "close_wait",
            cgroup_id,
            container_id: None,
            container: None,
            pod: None,
            namespace: None,
            netns: t.netns,
            local_addr: t.local.ip(),
            local_port: t.local.port(),
            peer_addr: t.peer.ip(),
            peer_port: t.peer.port(),
            pid,
            comm,
            role: Role::from_wire(e.role),
            unread_bytes: e.unread(),
            close_wait_ms: now.saturating_sub(e.entered_ns) / 1_000_000,
            close_wait_lower_bound: false,
            last_read_ms_ago: (e.last_read_ns != 0)
                .then(|| now.saturating_sub(e.last_read_ns) / 1_000_000),
            reported: e.flags & CW_REPORTED != 0,
        }
    }

    fn view_of_found(&self, t: Tuple, f: &Found, now: u64) -> SocketView {
        let owner = self.owners.get(&f.inode);
        SocketView {
            state: "close_wait",
            cgroup_id: owner.map_or(0, |o| o.cgroup_id),
            container_id: None,
            container: None,
            pod: None,
            namespace: None,
            netns: t.netns,
            local_addr: t.local.ip(),
            local_port: t.local.port(),
            peer_addr: t.peer.ip(),
            peer_port: t.peer.port(),
            pid: owner.map_or(0, |o| o.pid),
            comm: owner.map(|o| o.comm.clone()).unwrap_or_default(),
            role: Role::Unknown,
            unread_bytes: f.unread,
            close_wait_ms: now.saturating_sub(f.at_ns) / 1_000_000,
            close_wait_lower_bound: true,
            last_read_ms_ago: None,
            reported: f.reported,
        }
    }

    /// The `close_wait_leak` of a socket in the map: its view, plus what only the map entry
    /// knows (the connection's age, the bytes it received).
    fn leak_from_entry(&self, e: &CloseWaitEntry, now: u64) -> Event {
        let mut ev = self.leak(&self.view_of_entry(e, now), now);
        ev.conn_age_ms =
            (e.established_ns != 0).then(|| now.saturating_sub(e.established_ns) / 1_000_000);
        ev.bytes_received = e.bytes_received;
        ev
    }

    /// The `close_wait_leak` of a socket found at start-up.
    fn leak_from_found(&self, t: Tuple, f: &Found, now: u64) -> Event {
        self.leak(&self.view_of_found(t, f, now), now)
    }

    /// A `close_wait_leak` event from a socket's view (attribution is added by the sink).
    fn leak(&self, v: &SocketView, now: u64) -> Event {
        let hint = close_wait_hint(v.close_wait_ms, v.last_read_ms_ago, v.unread_bytes);
        Event {
            ts: self.decoder.wall_clock(now),
            wall_ns: self.decoder.wall_ns(now),
            pid: v.pid,
            comm: v.comm.clone(),
            cgroup_id: v.cgroup_id,
            netns: v.netns,
            local_addr: v.local_addr,
            local_port: v.local_port,
            peer_addr: v.peer_addr,
            peer_port: v.peer_port,
            role: v.role,
            unread_bytes: v.unread_bytes,
            close_wait_ms: Some(v.close_wait_ms),
            last_read_ms_ago: v.last_read_ms_ago,
            close_wait_lower_bound: Some(v.close_wait_lower_bound),
            hint: if v.close_wait_lower_bound {
                format!(
                    "{hint} (found already in CLOSE_WAIT when observer started: at least this long)"
                )
            } else {
                hint
            },
            ..Event::blank(Kind::CloseWaitLeak)
        }
    }

    /// Completes a `close_wait_resolved` from the kernel; `None` drops one that reports nothing
    /// (a socket observer never reported).
    pub fn resolve(&mut self, mut ev: Event) -> Option<Event> {
        if ev.kind != Kind::CloseWaitResolved {
            return Some(ev);
        }
        let attributed = self.attributed.remove(&tuple_of_event(&ev));
        if ev.close_wait_ms.is_some() {
            // Known to the programs, reported by us: fill an owner the programs lacked.
            if ev.pid == 0
                && let Some(o) = attributed
            {
                (ev.pid, ev.comm, ev.cgroup_id) = (o.pid, o.comm, o.cgroup_id);
            }
            return Some(ev);
        }
        // The entry was unknown to the programs: a socket found at start-up.
        let found = self.found.remove(&tuple_of_event(&ev))?;
        if !found.reported {
            return None;
        }
        let ms = monotonic_ns().saturating_sub(found.at_ns) / 1_000_000;
        ev.close_wait_ms = Some(ms);
        ev.close_wait_lower_bound = Some(true);
        ev.hint = close_wait_resolved_hint(ms, true);
        if ev.pid == 0
            && let Some(o) = self.owners.get(&found.inode)
        {
            (ev.pid, ev.comm, ev.cgroup_id) = (o.pid, o.comm.clone(), o.cgroup_id);
        }
        Some(ev)
    }
}

/// The tracker's task: passes events from `rx` to `tx`, completing CLOSE_WAIT ones, and adds
/// leak events every [`SCAN_EVERY`] (see [`SCAN_SHARE`]). Ends when `rx` closes.
pub async fn run(mut tracker: Tracker, mut rx: mpsc::Receiver<Event>, tx: mpsc::Sender<Event>) {
    let report = tracker.startup();
    info!(
        namespaces = report.namespaces,
        discovered = report.discovered,
        kept = report.kept,
        stale = report.stale,
        "close_wait sockets listed"
    );
    let mut next = tokio::time::Instant::now();
    loop {
        let batch = tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else {
                    // The sockets not promoted yet keep their true entry time in the pinned
                    // map for the next agent.
                    tracker.promote(diag::namespaces, true);
                    return;
                };
                tracker.resolve(ev).into_iter().collect()
            },
            () = tokio::time::sleep_until(next) => {
                let started = tokio::time::Instant::now();
                let leaks = tracker.scan();
                next = started + SCAN_EVERY.max(started.elapsed() * SCAN_SHARE);
                leaks
            }
        };
        for ev in batch {
            if tx.send(ev).await.is_err() {
                warn!("event writer stopped");
                return;
            }
        }
    }
}
