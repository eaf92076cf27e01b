//! TIME_WAIT sockets named after their own first closer: the pure part. The programs record
//! one `CLOSERS` entry per socket as it is handed over to TIME_WAIT; at each listing the
//! monitor looks every listed TIME_WAIT socket up by its full tuple and deletes the entries
//! whose socket has gone.
//!
//! An entry goes only on evidence: its namespace was listed, twice in a row, without its
//! socket, in TIME_WAIT or still in FIN_WAIT2 (handed over, the peer's FIN to come). A
//! namespace the listing could not enter says nothing about its sockets, and one dump may
//! miss a socket (`sock_diag` resumes a dump by position in a hash chain, so a socket
//! removed before the position under churn shifts the next one past it); a socket that
//! had gone is gone at the next listing too.

use std::collections::HashSet;

use observer_common::flow::{Closer, TupleKey};

/// What one listing decides about the `CLOSERS` entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Entries to delete.
    pub gone: Vec<TupleKey>,
    /// Entries absent from this listing for the first time: deleted if the next one agrees.
    pub missed: HashSet<TupleKey>,
}

/// Judges `entries` against a listing that began at `listing_started_ns` (the programs'
/// clock), showed the TIME_WAIT sockets `listed` and entered the namespaces `netns_listed`;
/// `missed` is the previous listing's [`Verdict::missed`]. An entry recorded while the listing
/// ran is kept: its socket may have been listed before it existed.
pub(super) fn judge<S: std::hash::BuildHasher>(
    entries: &[(TupleKey, Closer)],
    listed: &HashSet<TupleKey, S>,
    netns_listed: &HashSet<u32, S>,
    listing_started_ns: u64,
    missed: &HashSet<TupleKey>,
) -> Verdict {
    let mut verdict = Verdict::default();
    for (k, c) in entries {
        if c.closed_ns >= listing_started_ns
            || !netns_listed.contains(&k.netns)
            || listed.contains(k)
        {
            continue;
        }
        if missed.contains(k) {
            verdict.gone.push(*k);
        } else {
            verdict.missed.insert(*k);
        }
    }
    verdict
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
    fn an_entry_goes_after_two_listings_of_its_namespace_without_it() {
        let entries = [
            (tuple(1), closer(1, 10)), // listed: kept
            (tuple(2), closer(1, 10)), // absent: missed once, then gone
            (tuple(3), closer(2, 50)), // recorded during the listing: kept
        ];
        let listed: HashSet<TupleKey> = [tuple(1)].into_iter().collect();
        let netns: HashSet<u32> = [7].into_iter().collect();
        let first = judge(&entries, &listed, &netns, 20, &HashSet::new());
        assert_eq!(first.gone, vec![]);
        assert_eq!(first.missed, [tuple(2)].into_iter().collect());
        let second = judge(&entries, &listed, &netns, 60, &first.missed);
        assert_eq!(second.gone, vec![tuple(2)]);
        // tuple(3) was absent once by now.
        assert_eq!(second.missed, [tuple(3)].into_iter().collect());
    }

    #[test]
    fn a_socket_listed_again_after_one_miss_keeps_its_entry() {
        let entries = [(tuple(2), closer(1, 10))];
        let netns: HashSet<u32> = [7].into_iter().collect();
        let first = judge(&entries, &HashSet::new(), &netns, 20, &HashSet::new());
        let listed: HashSet<TupleKey> = [tuple(2)].into_iter().collect();
        let second = judge(&entries, &listed, &netns, 30, &first.missed);
        assert_eq!(second, Verdict::default());
        let third = judge(&entries, &HashSet::new(), &netns, 40, &second.missed);
        assert_eq!(third.gone, vec![], "one miss again, not two in a row");
    }

    #[test]
    fn a_namespace_the_listing_did_not_enter_keeps_its_entries() {
        let entries = [(tuple(2), closer(1, 10))];
        let other: HashSet<u32> = [8].into_iter().collect();
        let mut missed = HashSet::new();
        for started in [20, 30, 40] {
            let v = judge(&entries, &HashSet::new(), &other, started, &missed);
            assert_eq!(v, Verdict::default());
            missed = v.missed;
        }
    }
}
