//! TIME_WAIT sockets named after their own first closer: the pure part. The programs record
//! one `CLOSERS` entry per socket as it is handed over to TIME_WAIT; at each listing the
//! monitor looks every listed TIME_WAIT socket up by its full tuple and deletes the entries
//! whose socket has gone.

use std::collections::HashSet;

use observer_common::flow::{Closer, TupleKey};

/// The entries to delete: recorded before the listing began (`listing_started_ns`, the
/// programs' clock) and whose socket the listing did not show in TIME_WAIT, so it has
/// expired (or was reused). An entry recorded while the listing ran is kept: its socket may
/// have been listed before it existed.
pub(super) fn stale<S: std::hash::BuildHasher>(
    entries: &[(TupleKey, Closer)],
    listed: &HashSet<TupleKey, S>,
    listing_started_ns: u64,
) -> Vec<TupleKey> {
    entries
        .iter()
        .filter(|(k, c)| c.closed_ns < listing_started_ns && !listed.contains(k))
        .map(|(k, _)| *k)
        .collect()
}

#[cfg(test)]
mod tests {
    use observer_common::flow::Owner;

    use super::*;

    fn tuple(sport: u16) -> TupleKey {
        TupleKey {
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            netns: 7,
            sport,
            dport: 443,
        }
    }

    fn closer(pid: u32, closed_ns: u64) -> Closer {
        Closer {
            owner: Owner {
                cgroup_id: 1,
                comm: [0; 16],
                pid,
                role: 1,
                _pad: [0; 3],
            },
            closed_ns,
        }
    }

    #[test]
    fn only_entries_older_than_the_listing_and_not_in_it_go() {
        let entries = [
            (tuple(1), closer(1, 10)), // listed: kept
            (tuple(2), closer(1, 10)), // expired: deleted
            (tuple(3), closer(2, 50)), // recorded during the listing: kept
        ];
        let listed: HashSet<TupleKey> = [tuple(1)].into_iter().collect();
        assert_eq!(stale(&entries, &listed, 20), vec![tuple(2)]);
    }
}
