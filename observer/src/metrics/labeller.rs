//! The bounded label values: peers and workloads. At most a limit of each is named at a time.
//! A new value takes a free name, or the name of the value unused longest once that one has
//! been idle for the idle time; otherwise it folds into `other`, counted. A value idle that
//! long loses its name anyway, and the counter series that carried it are removed
//! ([`super::PeerSeries`]), so the exposition follows the active peers and workloads: pods that
//! are gone and processes that exited leave no series behind.

use std::{
    collections::HashMap,
    hash::Hash,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus_client::{encoding::EncodeLabelSet, metrics::counter::Counter, registry::Registry};

use super::{WorkloadPeer, labelled_peer};
use crate::events::{Event, Role};

/// How long a named peer or workload must go unused before it loses its name (the default of
/// `--label-idle`).
pub const LABEL_IDLE: Duration = Duration::from_mins(10);

/// How many peers and workloads may be named, and for how long each stays named unused.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Peers named at a time (`--peer-label-limit`).
    pub peers: usize,
    /// Workloads named at a time (`--workload-label-limit`).
    pub workloads: usize,
    /// How long a name outlives its last use (`--label-idle`).
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            peers: 100,
            workloads: 250,
            idle: LABEL_IDLE,
        }
    }
}

/// The label value of whatever was folded.
const OTHER: &str = "other";

/// A workload as its labels name it: the workload part of every detector label set.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct Workload {
    /// Kubernetes namespace, empty when unknown.
    pub namespace: String,
    /// Pod name, empty when unknown.
    pub pod: String,
    /// Container name, empty when unknown.
    pub container: String,
    /// Process name.
    pub comm: String,
}

impl Workload {
    /// What workloads beyond the limit are counted as.
    pub fn other() -> Self {
        Self {
            namespace: OTHER.to_owned(),
            pod: OTHER.to_owned(),
            container: OTHER.to_owned(),
            comm: OTHER.to_owned(),
        }
    }
}

/// A label value that stopped being named.
#[derive(Clone, Copy)]
pub enum Forgotten<'a> {
    /// A peer label.
    Peer(&'a str),
    /// A workload's labels.
    Workload(&'a Workload),
}

/// A callback told each value that stops being named.
type Forget = Box<dyn Fn(Forgotten<'_>) + Send + Sync>;

/// Peer and workload labels, bounded.
pub struct Labeller {
    peers: Names<String>,
    workloads: Names<Workload>,
    forget: Mutex<Vec<Forget>>,
}

impl Labeller {
    /// A labeller naming at most `limits.peers` peers and `limits.workloads` workloads, each
    /// for as long as it is used at least every `limits.idle`.
    pub fn register(registry: &mut Registry, limits: Limits) -> Self {
        let peers_folded = Counter::default();
        registry.register(
            "peer_labels_folded",
            "Series updates whose peer was folded into peer=\"other\" (more active peers than --peer-label-limit)",
            peers_folded.clone(),
        );
        let workloads_folded = Counter::default();
        registry.register(
            "workload_labels_folded",
            "Series updates whose workload was folded into namespace, pod, container and comm \"other\" (more active workloads than --workload-label-limit)",
            workloads_folded.clone(),
        );
        Self {
            peers: Names::new(limits.peers, limits.idle, peers_folded),
            workloads: Names::new(limits.workloads, limits.idle, workloads_folded),
            forget: Mutex::default(),
        }
    }

    /// How many peers may be named.
    pub fn peer_limit(&self) -> usize {
        self.peers.limit
    }

    /// Counts `n` series updates whose peer was folded elsewhere (ephemeral-port pairs).
    pub fn folded_peers(&self, n: u64) {
        self.peers.folded.inc_by(n);
    }

    /// Calls `f` with each peer and workload that stops being named.
    pub fn on_forget(&self, f: impl Fn(Forgotten<'_>) + Send + Sync + 'static) {
        lock(&self.forget).push(Box::new(f));
    }

    /// The peer label for a connection to `peer` in `role`.
    pub fn peer(&self, role: Role, peer: SocketAddr) -> String {
        self.peer_at(role, peer, Instant::now())
    }

    /// [`Self::peer`] at `now`.
    pub fn peer_at(&self, role: Role, peer: SocketAddr, now: Instant) -> String {
        let labelled = labelled_peer(role, peer);
        let name = if labelled.port() == 0 {
            labelled.ip().to_string()
        } else {
            labelled.to_string()
        };
        let forget = |gone: &String| self.tell(Forgotten::Peer(gone));
        if self.peers.name(&name, now, forget) {
            name
        } else {
            OTHER.to_owned()
        }
    }

    /// The labels of `workload`: itself, or [`Workload::other`] beyond the limit.
    pub fn workload(&self, workload: Workload) -> Workload {
        self.workload_at(workload, Instant::now())
    }

    /// [`Self::workload`] at `now`.
    pub fn workload_at(&self, workload: Workload, now: Instant) -> Workload {
        let forget = |gone: &Workload| self.tell(Forgotten::Workload(gone));
        if self.workloads.name(&workload, now, forget) {
            workload
        } else {
            Workload::other()
        }
    }

    /// The labels of `workload` talking to `peer` in `role`.
    pub fn workload_peer(&self, workload: Workload, role: Role, peer: SocketAddr) -> WorkloadPeer {
        WorkloadPeer {
            workload: self.workload(workload),
            peer: self.peer(role, peer),
        }
    }

    /// The labels of an event's owner and peer.
    pub fn of_event(&self, e: &Event) -> WorkloadPeer {
        let w = &e.owner.workload;
        let workload = Workload {
            namespace: w.namespace.clone().unwrap_or_default(),
            pod: w.pod.clone().unwrap_or_default(),
            container: w.container.clone().unwrap_or_default(),
            comm: e.owner.comm.clone(),
        };
        self.workload_peer(workload, e.role, e.ends.peer())
    }

    fn tell(&self, gone: Forgotten<'_>) {
        for f in lock(&self.forget).iter() {
            f(gone);
        }
    }
}

/// At most `limit` values of one label named at a time.
struct Names<K> {
    limit: usize,
    idle: Duration,
    state: Mutex<State<K>>,
    folded: Counter,
}

struct State<K> {
    /// Named values and when each was last used.
    named: HashMap<K, Instant>,
    /// When idle values were last dropped.
    swept: Option<Instant>,
}

impl<K: Clone + Eq + Hash> Names<K> {
    fn new(limit: usize, idle: Duration, folded: Counter) -> Self {
        Self {
            limit,
            idle,
            state: Mutex::new(State {
                named: HashMap::new(),
                swept: None,
            }),
            folded,
        }
    }

    /// Whether `key` is named at `now` (folded and counted otherwise); `forget` is called with
    /// each value that loses its name meanwhile. The lock is held briefly, never across an
    /// await.
    fn name(&self, key: &K, now: Instant, forget: impl Fn(&K)) -> bool {
        let mut state = lock(&self.state);
        let idle_since = |t: Instant| now.saturating_duration_since(t) >= self.idle;
        // Idle values go at most every tenth of the idle time: a sweep walks every name.
        if state
            .swept
            .is_none_or(|t| now.saturating_duration_since(t) >= self.idle / 10)
        {
            state.swept = Some(now);
            let gone: Vec<K> = state
                .named
                .iter()
                .filter(|(_, t)| idle_since(**t))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                state.named.remove(&k);
                forget(&k);
            }
        }
        if let Some(last) = state.named.get_mut(key) {
            *last = now.max(*last);
            return true;
        }
        if state.named.len() >= self.limit {
            let oldest = state
                .named
                .iter()
                .min_by_key(|(_, t)| **t)
                .filter(|(_, t)| idle_since(**t))
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else {
                self.folded.inc();
                return false;
            };
            state.named.remove(&oldest);
            forget(&oldest);
        }
        state.named.insert(key.clone(), now);
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
