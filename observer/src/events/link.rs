//! Linking a reset to its cause on this node: an abort (`rst_on_close`, `linger_abort`) and the
//! `reset_received` it causes on the other end, when both ends are sockets this agent sees (an
//! app and its sidecar on loopback, two pods on one node).
//!
//! The two records reach the ring buffer within one `close()`: on loopback the RST is
//! processed before `tcp_send_active_reset` returns, so `reset_received` may come first (on
//! kernels where the abort waits for its RST reason) or second. [`Linker`] holds each of them
//! for up to [`WINDOW`] for the other end; a pair found is released at once with each naming
//! the other ([`Linked`]), one left alone goes out unlinked when its time is up. The ends match
//! when one's local endpoint is the other's peer and back; on loopback, or when both ends have
//! one address, they must also share a network namespace (every namespace has its own
//! 127.0.0.1). Behind NAT (a Service's virtual IP) the ends do not match.
//!
//! The sink attributes the linked end (its pod) and completes the `peer_*` fields and the hint
//! ([`describe`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::sync::mpsc;

use super::{Event, Kind};
use crate::enrich::Attribution;

/// How long an abort or a received reset waits for the other end.
pub const WINDOW: Duration = Duration::from_millis(250);

/// Most events held at once; beyond it the oldest goes out unlinked (counted).
pub const HELD_MAX: usize = 16_384;

/// The other end of a linked reset, as its own event had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    /// Its kind: an abort for a `reset_received`, `reset_received` for an abort.
    pub kind: Kind,
    /// Its owner's thread-group id (0 when unknown).
    pub pid: u32,
    /// Its owner's command name.
    pub comm: String,
    /// Its owner's cgroup v2 id, for the sink to attribute.
    pub cgroup_id: u64,
    /// The bytes it left unread.
    pub unread_bytes: u32,
    /// Its socket's inode when its owner is unknown (`pid` 0), for the sink to find; else 0.
    pub inode: u64,
}

/// Which end of a reset an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum End {
    Closer,
    Victim,
}

/// (end, local address, local port, peer address, peer port).
type Key = (End, IpAddr, u16, IpAddr, u16);

fn end(kind: Kind) -> Option<End> {
    match kind {
        Kind::RstOnClose | Kind::LingerAbort => Some(End::Closer),
        Kind::ResetReceived => Some(End::Victim),
        _ => None,
    }
}

struct Held {
    ev: Event,
    key: Key,
    deadline_ns: u64,
}

/// The pure core: events in, events out, times in nanoseconds of any monotonic clock.
pub struct Linker {
    window_ns: u64,
    max: usize,
    seq: u64,
    /// By arrival, so the oldest is first to expire.
    held: BTreeMap<u64, Held>,
    index: HashMap<Key, Vec<u64>>,
}

impl Linker {
    /// A linker holding up to `max` events for `window` each.
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            max: max.max(1),
            seq: 0,
            held: BTreeMap::new(),
            index: HashMap::new(),
        }
    }

    /// Takes `ev` at `now`; returns what goes out now: `ev` itself when it is not an end of a
    /// reset, both ends when it completes a pair, and the oldest held event when the table
    /// is full (the bool says so).
    pub fn push(&mut self, mut ev: Event, now: u64) -> (Vec<Event>, bool) {
        let Some(end) = end(ev.kind) else {
            return (vec![ev], false);
        };
        let other = match end {
            End::Closer => End::Victim,
            End::Victim => End::Closer,
        };
        let wanted = (
            other,
            ev.ends.peer_addr,
            ev.ends.peer_port,
            ev.ends.local_addr,
            ev.ends.local_port,
        );
        let found = self.index.get(&wanted).and_then(|seqs| {
            seqs.iter()
                .copied()
                .find(|s| self.held.get(s).is_some_and(|h| same_place(&h.ev, &ev)))
        });
        if let Some(seq) = found {
            let mut mate = self.remove(seq).expect("indexed events are held");
            mate.linked = Some(linked(&ev));
            ev.linked = Some(linked(&mate));
            // The cause first, then its effect.
            let pair = if end == End::Closer {
                vec![ev, mate]
            } else {
                vec![mate, ev]
            };
            return (pair, false);
        }
        let key = (
            end,
            ev.ends.local_addr,
            ev.ends.local_port,
            ev.ends.peer_addr,
            ev.ends.peer_port,
        );
        self.seq += 1;
        self.index.entry(key).or_default().push(self.seq);
        self.held.insert(
            self.seq,
            Held {
                ev,
                key,
                deadline_ns: now.saturating_add(self.window_ns),
            },
        );
        if self.held.len() > self.max {
            let oldest = *self.held.keys().next().expect("not empty");
            return (self.remove(oldest).into_iter().collect(), true);
        }
        (Vec::new(), false)
    }

    /// The events whose time is up at `now`, oldest first.
    pub fn expire(&mut self, now: u64) -> Vec<Event> {
        let due: Vec<u64> = self
            .held
            .iter()
            .take_while(|(_, h)| h.deadline_ns <= now)
            .map(|(s, _)| *s)
            .collect();
        due.into_iter().filter_map(|s| self.remove(s)).collect()
    }

    /// When the oldest held event's time is up.
    pub fn next_deadline(&self) -> Option<u64> {
        self.held.values().next().map(|h| h.deadline_ns)
    }

    /// Everything held, oldest first (at shutdown).
    pub fn drain(&mut self) -> Vec<Event> {
        self.expire(u64::MAX)
    }

    fn remove(&mut self, seq: u64) -> Option<Event> {
        let h = self.held.remove(&seq)?;
        if let Some(seqs) = self.index.get_mut(&h.key) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.index.remove(&h.key);
            }
        }
        Some(h.ev)
    }
}

/// Whether two events with mirrored endpoints are the two ends of one connection: loopback
/// and single-address connections exist once per network namespace.
fn same_place(a: &Event, b: &Event) -> bool {
    let local_only = a.ends.local_addr.is_loopback() || a.ends.local_addr == a.ends.peer_addr;
    !local_only || a.ends.netns == b.ends.netns
}

fn linked(e: &Event) -> Linked {
    Linked {
        kind: e.kind,
        pid: e.owner.pid,
        comm: e.owner.comm.clone(),
        cgroup_id: e.owner.cgroup_id,
        unread_bytes: e.unread_bytes,
        inode: e.inode,
    }
}

/// The hint of a `reset_received` on its own.
pub fn reset_received_hint(state: &str, unread: u32, unsent: u32) -> String {
    format!(
        "the peer reset this connection (in {state}, {unread} bytes unread and {unsent} unsent \
         here): the owner's next read or write fails with ECONNRESET"
    )
}

/// Fills `e`'s `peer_*` fields from its linked end, attributed as `peer`, and says in the
/// hint who did what. Events without a linked end are left as they are.
pub fn describe(e: &mut Event, peer: Attribution) {
    let Some(l) = e.linked.take() else {
        return;
    };
    let who = who(&l, &peer);
    e.peer_pid = (l.pid != 0).then_some(l.pid);
    e.peer_comm = (!l.comm.is_empty()).then(|| l.comm.clone());
    e.peer_container = peer.container;
    e.peer_pod = peer.pod;
    e.peer_namespace = peer.namespace;
    let cause = match l.kind {
        Kind::RstOnClose => format!("{who} closed with {} unread bytes", l.unread_bytes),
        Kind::LingerAbort => format!("{who} closed with SO_LINGER timeout 0"),
        _ => format!("the reset reached {who}, whose next read or write fails with ECONNRESET"),
    };
    e.hint = if e.hint.is_empty() {
        cause
    } else {
        format!("{}; {cause}", e.hint)
    };
}

/// "pid 412 (checkout) in pod shop/checkout-7f", as far as it is known.
fn who(l: &Linked, peer: &Attribution) -> String {
    let who = if l.pid == 0 {
        "the peer (owner unknown)".to_owned()
    } else {
        format!("pid {} ({})", l.pid, l.comm)
    };
    match (&peer.namespace, &peer.pod) {
        (Some(ns), Some(pod)) => format!("{who} in pod {ns}/{pod}"),
        _ => who,
    }
}

/// The linker's counters.
#[derive(Clone, Default)]
pub struct Metrics {
    linked: Counter,
    overflow: Counter,
}

impl Metrics {
    /// Registers `observer_resets_linked_total` and `observer_reset_link_overflow_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "resets_linked",
            "Aborts linked to the reset_received they caused on this node (pairs)",
            m.linked.clone(),
        );
        registry.register(
            "reset_link_overflow",
            "Events released unlinked because the linker held its maximum",
            m.overflow.clone(),
        );
        m
    }
}

/// The linking stage: events from `rx` to `tx`, each end of a reset held up to [`WINDOW`].
/// When `rx` closes, everything held goes out.
pub async fn run(mut rx: mpsc::Receiver<Event>, tx: mpsc::Sender<Event>, metrics: Metrics) {
    let mut linker = Linker::new(WINDOW, HELD_MAX);
    let now = super::decode::monotonic_ns;
    loop {
        let out = match linker.next_deadline() {
            Some(at) => {
                let wait = Duration::from_nanos(at.saturating_sub(now()));
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => push(&mut linker, ev, &metrics),
                        None => break,
                    },
                    () = tokio::time::sleep(wait) => linker.expire(now()),
                }
            }
            None => match rx.recv().await {
                Some(ev) => push(&mut linker, ev, &metrics),
                None => break,
            },
        };
        for ev in out {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
    for ev in linker.drain() {
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

fn push(linker: &mut Linker, ev: Event, m: &Metrics) -> Vec<Event> {
    let (out, overflow) = linker.push(ev, super::decode::monotonic_ns());
    if overflow {
        m.overflow.inc();
    } else if out.len() == 2 {
        m.linked.inc();
    }
    out
}

#[cfg(test)]
mod tests;
