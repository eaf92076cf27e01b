//! The `FLOWS` folding core: each read of the map becomes, per entry, its growth since the
//! last read (counter and histogram increments) and the connections it holds open. Entries
//! with nothing open that did not move for a whole interval are deleted through the `take`
//! the caller passes (lookup-and-delete): a count that lands meanwhile comes back with the
//! entry and is folded, and a connection opened in that race is carried until it closes.
//! Pure apart from `take`: plain entries in, folded entries out.

use std::collections::HashMap;

use observer_common::flow::{FlowEntry, FlowKey, FlowStats, LIFETIME_BUCKETS};
use tracing::warn;

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

/// Connections an entry counts as established (opened and not yet left ESTABLISHED).
pub(super) fn open_count(s: &FlowStats) -> i64 {
    i64::try_from(s.opened).unwrap_or(i64::MAX) - i64::try_from(s.left).unwrap_or(i64::MAX)
}

/// One entry of a read, folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Folded {
    /// The entry's key.
    pub key: FlowKey,
    /// Its growth since the previous read.
    pub delta: Delta,
    /// Connections it holds open, carried ones included.
    pub open: i64,
    /// The last owner that opened one.
    pub pid: u32,
}

/// What the folding keeps between reads.
#[derive(Debug, Default)]
pub(super) struct Flows {
    /// Each entry as last read.
    last: HashMap<FlowKey, FlowStats>,
    /// Connections still open whose entry was deleted in a race with their open.
    carry: HashMap<FlowKey, i64>,
}

impl Flows {
    /// Folds one read of the map's `entries`; `take` deletes an entry by id and returns what it
    /// held last (`Ok(None)`: gone already).
    pub(super) fn fold<E: std::fmt::Display>(
        &mut self,
        entries: Vec<(u64, FlowEntry)>,
        mut take: impl FnMut(u64) -> Result<Option<FlowEntry>, E>,
    ) -> Vec<Folded> {
        let mut next = HashMap::with_capacity(entries.len());
        let mut out = Vec::with_capacity(entries.len());
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
                match take(id) {
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
            let carried = self.carry.get(&key).copied().unwrap_or(0);
            out.push(Folded {
                key,
                delta: Delta::between(&before, &now),
                open: if deleted {
                    carried
                } else {
                    carried + open_count(&now)
                },
                pid: now.pid,
            });
        }
        self.carry.retain(|_, n| *n != 0);
        self.last = next;
        out
    }

    /// Entries the map holds after the last read (those not deleted).
    pub(super) fn kept(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            peer_port: port,
            role: 0,
            family: 2,
            ..FlowKey::OTHER
        }
    }

    fn stats(opened: u64, left: u64, closed: u64) -> FlowStats {
        FlowStats {
            opened,
            left,
            closed,
            pid: 7,
            ..FlowStats::ZERO
        }
    }

    fn entry(k: FlowKey, s: FlowStats) -> (u64, FlowEntry) {
        (k.id(), FlowEntry { stats: s, key: k })
    }

    /// A `take` that must not be called.
    fn no_take(_: u64) -> Result<Option<FlowEntry>, String> {
        panic!("an entry that moved or holds connections was deleted")
    }

    #[test]
    fn growth_since_the_last_read_is_folded_once() {
        let mut f = Flows::default();
        let out = f.fold(vec![entry(key(80), stats(5, 2, 2))], no_take);
        assert_eq!(out[0].delta.opened, 5);
        assert_eq!(out[0].delta.closed, 2);
        assert_eq!(out[0].open, 3);
        assert_eq!(out[0].pid, 7);
        let out = f.fold(vec![entry(key(80), stats(6, 3, 3))], no_take);
        assert_eq!((out[0].delta.opened, out[0].delta.closed), (1, 1));
        assert_eq!(out[0].open, 3);
        assert_eq!(f.kept(), 1);
    }

    #[test]
    fn an_idle_entry_is_deleted_and_counts_landing_meanwhile_are_kept() {
        let mut f = Flows::default();
        f.fold(vec![entry(key(80), stats(4, 4, 4))], no_take);
        // Unchanged and nothing open: deleted. The delete returns one more connection, opened
        // and closed since the read: it is folded, not lost.
        let mut taken = Vec::new();
        let out = f.fold(vec![entry(key(80), stats(4, 4, 4))], |id| {
            taken.push(id);
            Ok::<_, String>(Some(FlowEntry {
                stats: stats(5, 5, 5),
                key: key(80),
            }))
        });
        assert_eq!(taken, [key(80).id()]);
        assert_eq!(out[0].delta.opened, 1);
        assert_eq!(out[0].open, 0);
        assert_eq!(f.kept(), 0);
    }

    #[test]
    fn a_connection_opened_in_the_race_with_the_delete_is_carried_until_it_closes() {
        let mut f = Flows::default();
        f.fold(vec![entry(key(80), stats(1, 1, 1))], no_take);
        let out = f.fold(vec![entry(key(80), stats(1, 1, 1))], |_| {
            Ok::<_, String>(Some(FlowEntry {
                stats: stats(2, 1, 1),
                key: key(80),
            }))
        });
        assert_eq!(out[0].open, 1, "the connection opened meanwhile is open");
        // The programs create the entry again; the carried connection still counts.
        let out = f.fold(vec![entry(key(80), stats(1, 0, 0))], no_take);
        assert_eq!(out[0].open, 2);
        // The carried one leaves ESTABLISHED: the new entry counts it as left.
        let out = f.fold(vec![entry(key(80), stats(1, 1, 0))], no_take);
        assert_eq!(out[0].open, 1);
    }

    #[test]
    fn an_entry_gone_before_its_delete_is_skipped() {
        let mut f = Flows::default();
        f.fold(vec![entry(key(80), stats(1, 1, 1))], no_take);
        let out = f.fold(vec![entry(key(80), stats(1, 1, 1))], |_| {
            Ok::<_, String>(None)
        });
        assert!(out.is_empty());
        assert_eq!(f.kept(), 0);
    }

    #[test]
    fn a_failed_delete_keeps_the_entry() {
        let mut f = Flows::default();
        f.fold(vec![entry(key(80), stats(1, 1, 1))], no_take);
        let out = f.fold(vec![entry(key(80), stats(1, 1, 1))], |_| {
            Err::<Option<FlowEntry>, _>("EPERM".to_owned())
        });
        assert_eq!(out.len(), 1);
        assert_eq!(f.kept(), 1);
    }

    #[test]
    fn other_is_never_deleted() {
        let mut f = Flows::default();
        let other = (
            FlowKey::OTHER_ID,
            FlowEntry {
                stats: FlowStats::ZERO,
                key: FlowKey::OTHER,
            },
        );
        f.fold(vec![other], no_take);
        f.fold(vec![other], no_take);
        assert_eq!(f.kept(), 1);
    }

    #[test]
    fn a_counter_that_went_backwards_grows_by_nothing() {
        let d = Delta::between(&stats(5, 5, 5), &stats(3, 3, 3));
        assert_eq!((d.opened, d.closed), (0, 0));
    }
}
