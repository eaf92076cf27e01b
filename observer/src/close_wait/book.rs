//! The CLOSE_WAIT core: what the agent knows beside the kernel's map (sockets found at
//! start-up, owners found in `/proc`) and every decision made on plain data. Which map
//! entries a start-up listing proves stale; which sockets are due for a leak report (at most
//! [`LEAKS_PER_SCAN`] a scan, the map's oldest first, then those found at start-up); the
//! views and leak events of sockets; the completion of a `close_wait_resolved`. No map and no
//! clock: the shell ([`super::Tracker`]) passes the entries it read and the time.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddr,
};

use observer_common::event::{CW_REPORTED, CloseWaitEntry};

use super::{LEAKS_PER_SCAN, SocketView, Startup, Tuple};
use crate::{
    enrich::Attribution,
    events::{
        self, Event, Kind, Role, close_wait_hint, close_wait_resolved_hint,
        decode::{Decoder, addr, comm},
    },
    owners::Owner,
    sock_diag::DiagSocket,
};

#[cfg(test)]
mod tests;

/// The tuple of a map entry.
pub(super) fn tuple_of_entry(e: &CloseWaitEntry) -> Tuple {
    Tuple {
        netns: e.netns,
        local: SocketAddr::new(addr(e.family, e.saddr), e.sport),
        peer: SocketAddr::new(addr(e.family, e.daddr), e.dport),
    }
}

fn tuple_of_event(e: &Event) -> Tuple {
    Tuple {
        netns: e.ends.netns,
        local: SocketAddr::new(e.ends.local_addr, e.ends.local_port),
        peer: e.ends.peer(),
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

/// The sockets due for a leak report in one scan.
#[derive(Debug, Default)]
pub(super) struct Due {
    /// Map entries, by map key.
    entries: Vec<(u64, CloseWaitEntry)>,
    /// Sockets found at start-up.
    found: Vec<Tuple>,
}

/// The agent's CLOSE_WAIT knowledge beside the map.
#[derive(Debug, Default)]
pub(super) struct Book {
    found: BTreeMap<Tuple, Found>,
    /// Owners found in `/proc`, by socket inode (pruned as sockets go).
    owners: HashMap<u64, Owner>,
    /// Owners found in `/proc` for reported leaks, for their `close_wait_resolved`.
    attributed: HashMap<Tuple, Owner>,
}

impl Book {
    /// Judges a start-up listing: `before` and `after` are the map as read before and after
    /// the namespaces `dumped` were listed with `sockets` in CLOSE_WAIT. Sockets the map does
    /// not know are tracked from `now`. Returns the map keys proven stale and the counts.
    ///
    /// Stale entries are judged against the map before the dump (an entry added after it is
    /// not in the dump, yet live); duplicates against the map after it (a socket that entered
    /// CLOSE_WAIT meanwhile is in both). Only a namespace that was listed proves a socket gone.
    pub(super) fn startup(
        &mut self,
        before: &[(u64, CloseWaitEntry)],
        after: &[(u64, CloseWaitEntry)],
        dumped: &BTreeSet<u32>,
        sockets: Vec<DiagSocket>,
        now: u64,
    ) -> (Vec<u64>, Startup) {
        let live: HashSet<Tuple> = sockets.iter().map(|s| s.tuple).collect();
        let known: HashSet<Tuple> = after.iter().map(|(_, e)| tuple_of_entry(e)).collect();
        let mut report = Startup {
            namespaces: dumped.len(),
            ..Startup::default()
        };
        let mut stale = Vec::new();
        for (sk, e) in before {
            let t = tuple_of_entry(e);
            if dumped.contains(&t.netns) && !live.contains(&t) {
                stale.push(*sk);
            } else {
                report.kept += 1;
            }
        }
        report.stale = stale.len();
        for s in sockets.into_iter().filter(|s| !known.contains(&s.tuple)) {
            let found = Found {
                at_ns: now,
                inode: s.inode,
                unread: s.rqueue.saturating_sub(1),
                reported: false,
            };
            self.found.insert(s.tuple, found);
            report.discovered += 1;
        }
        (stale, report)
    }

    /// The sockets past `threshold_ns` at `now` that were not reported yet; forgets the
    /// owners of sockets no longer in `entries` or found.
    pub(super) fn due(
        &mut self,
        entries: &[(u64, CloseWaitEntry)],
        now: u64,
        threshold_ns: u64,
    ) -> Due {
        let live: HashSet<u64> = entries
            .iter()
            .map(|(_, e)| e.inode)
            .chain(self.found.values().map(|f| f.inode))
            .collect();
        self.owners.retain(|ino, _| live.contains(ino));
        let mut due: Vec<(u64, CloseWaitEntry)> = entries
            .iter()
            .filter(|(_, e)| {
                e.flags & CW_REPORTED == 0 && now.saturating_sub(e.entered_ns) >= threshold_ns
            })
            .copied()
            .collect();
        if due.len() > LEAKS_PER_SCAN {
            due.select_nth_unstable_by_key(LEAKS_PER_SCAN, |(_, e)| e.entered_ns);
            due.truncate(LEAKS_PER_SCAN);
        }
        let mut found: Vec<Tuple> = self
            .found
            .iter()
            .filter(|(_, f)| !f.reported && now.saturating_sub(f.at_ns) >= threshold_ns)
            .map(|(t, _)| *t)
            .collect();
        found.truncate(LEAKS_PER_SCAN - due.len());
        Due {
            entries: due,
            found,
        }
    }

    /// Inodes of `due` sockets whose owner is unknown and not looked up yet.
    pub(super) fn owners_wanted(&self, due: &Due) -> HashSet<u64> {
        due.entries
            .iter()
            .filter(|(_, e)| e.pid == 0)
            .map(|(_, e)| e.inode)
            .chain(
                due.found
                    .iter()
                    .filter_map(|t| self.found.get(t).map(|f| f.inode)),
            )
            .filter(|i| *i != 0 && !self.owners.contains_key(i))
            .collect()
    }

    /// Owners found in `/proc`, by inode.
    pub(super) fn add_owners(&mut self, owners: HashMap<u64, Owner>) {
        self.owners.extend(owners);
    }

    /// The `close_wait_leak` events of `due`, and the map entries to mark reported.
    pub(super) fn report(
        &mut self,
        due: Due,
        now: u64,
        decoder: &Decoder,
    ) -> (Vec<Event>, Vec<(u64, CloseWaitEntry)>) {
        let mut out = Vec::with_capacity(due.entries.len() + due.found.len());
        let mut mark = Vec::with_capacity(due.entries.len());
        for (sk, mut e) in due.entries {
            if let Some(o) = self.owners.get(&e.inode).filter(|_| e.pid == 0) {
                self.attributed.insert(tuple_of_entry(&e), o.clone());
            }
            let mut ev = leak(&self.view_of_entry(&e, now), now, decoder);
            // What only the map entry knows: the connection's age, the bytes it received.
            ev.conn_age_ms =
                (e.established_ns != 0).then(|| now.saturating_sub(e.established_ns) / 1_000_000);
            ev.bytes_received = e.bytes_received;
            out.push(ev);
            e.flags |= CW_REPORTED;
            mark.push((sk, e));
        }
        for t in due.found {
            if let Some(f) = self.found.get_mut(&t) {
                f.reported = true;
                let f = f.clone();
                out.push(leak(&self.view_of_found(t, &f, now), now, decoder));
            }
        }
        (out, mark)
    }

    /// Every socket's view at `now`, the map's then the found ones, oldest first (workload
    /// fields left for the shell to fill).
    pub(super) fn views(&self, entries: &[(u64, CloseWaitEntry)], now: u64) -> Vec<SocketView> {
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
        views
    }

    fn view_of_entry(&self, e: &CloseWaitEntry, now: u64) -> SocketView {
        let t = tuple_of_entry(e);
        let owner = match self.owners.get(&e.inode) {
            Some(o) if e.pid == 0 => events::Owner::held_by(o),
            _ => events::Owner {
                pid: e.pid,
                comm: comm(&e.comm),
                cgroup_id: e.cgroup_id,
                ..events::Owner::default()
            },
        };
        SocketView {
            owner,
            role: Role::from_wire(e.role),
            unread_bytes: e.unread(),
            close_wait_ms: now.saturating_sub(e.entered_ns) / 1_000_000,
            close_wait_lower_bound: false,
            last_read_ms_ago: (e.last_read_ns != 0)
                .then(|| now.saturating_sub(e.last_read_ns) / 1_000_000),
            reported: e.flags & CW_REPORTED != 0,
            ..SocketView::of(t)
        }
    }

    fn view_of_found(&self, t: Tuple, f: &Found, now: u64) -> SocketView {
        SocketView {
            owner: self
                .owners
                .get(&f.inode)
                .map(events::Owner::held_by)
                .unwrap_or_default(),
            unread_bytes: f.unread,
            close_wait_ms: now.saturating_sub(f.at_ns) / 1_000_000,
            close_wait_lower_bound: true,
            reported: f.reported,
            ..SocketView::of(t)
        }
    }

    /// Completes a `close_wait_resolved` from the kernel at `now`; `None` drops one that
    /// reports nothing (a socket observer never reported).
    pub(super) fn resolve(&mut self, mut ev: Event, now: u64) -> Option<Event> {
        if ev.kind != Kind::CloseWaitResolved {
            return Some(ev);
        }
        let attributed = self.attributed.remove(&tuple_of_event(&ev));
        if ev.close_wait_ms.is_some() {
            // Known to the programs, reported by us: fill an owner the programs lacked.
            if ev.owner.pid == 0
                && let Some(o) = attributed
            {
                ev.owner = events::Owner::held_by(&o);
            }
            return Some(ev);
        }
        // The entry was unknown to the programs: a socket found at start-up.
        let found = self.found.remove(&tuple_of_event(&ev))?;
        if !found.reported {
            return None;
        }
        let ms = now.saturating_sub(found.at_ns) / 1_000_000;
        ev.close_wait_ms = Some(ms);
        ev.close_wait_lower_bound = Some(true);
        ev.hint = close_wait_resolved_hint(ms, true);
        if ev.owner.pid == 0
            && let Some(o) = self.owners.get(&found.inode)
        {
            ev.owner = events::Owner::held_by(o);
        }
        Some(ev)
    }
}

/// A `close_wait_leak` event from a socket's view (attribution is added by the sink).
fn leak(v: &SocketView, now: u64, decoder: &Decoder) -> Event {
    let hint = close_wait_hint(v.close_wait_ms, v.last_read_ms_ago, v.unread_bytes);
    Event {
        ts: decoder.wall_clock(now),
        wall_ns: decoder.wall_ns(now),
        owner: events::Owner {
            workload: Attribution::default(),
            ..v.owner.clone()
        },
        ends: v.ends,
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
