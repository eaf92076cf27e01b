//! TIME_WAIT sockets and ephemeral-port use, per network namespace, from `sock_diag` and the
//! namespace's `net.ipv4.ip_local_port_range`.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
};

use observer_common::tcp::{FIN_WAIT2, LISTEN, TIME_WAIT};

use super::PortLabels;
use crate::sock_diag::{self, DiagSocket};

/// Every TCP state bit but LISTEN (`1 << state` for states 1 to 11).
const NOT_LISTENING: u32 = 0xffe & !(1 << LISTEN);

/// What one namespace's sockets (listeners excepted) say about TIME_WAIT and ephemeral ports.
#[derive(Debug, Clone)]
pub struct Netns {
    /// Inode of the namespace.
    pub netns: u32,
    /// `ip_local_port_range`, inclusive; `None` if it could not be read.
    pub range: Option<(u16, u16)>,
    /// Its TIME_WAIT sockets (sub-state TIME_WAIT, as `ss state time-wait` shows them).
    pub time_wait: Vec<DiagSocket>,
    /// Its sockets in FIN_WAIT2, TIME_WAIT sockets still waiting for the peer's FIN among
    /// them: their first closer is recorded already, and they become TIME_WAIT when the FIN
    /// comes (a peer slow to close keeps them here for up to `tcp_fin_timeout`).
    pub fin_wait2: Vec<DiagSocket>,
    /// Local ports of the range in use per (source address, destination).
    pub in_use: foldhash::HashMap<(IpAddr, SocketAddr), u64>,
}

/// Lists the calling thread's namespace (`netns` is its inode), keeping only TIME_WAIT
/// sockets and per-destination counts.
pub fn here(netns: u32) -> io::Result<Netns> {
    // Network sysctls answer for the namespace of the task that opens them: this thread's.
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_range(&s));
    let mut ns = Netns {
        netns,
        range,
        time_wait: Vec::new(),
        fin_wait2: Vec::new(),
        in_use: foldhash::HashMap::default(),
    };
    sock_diag::visit(netns, NOT_LISTENING, &mut |s| ns.add(s))?;
    Ok(ns)
}

/// `"32768\t60999\n"` -> `(32768, 60999)`.
pub fn parse_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi).then_some((lo, hi))
}

impl Netns {
    /// Counts one socket.
    pub fn add(&mut self, s: DiagSocket) {
        if let Some((lo, hi)) = self.range
            && (lo..=hi).contains(&s.tuple.local.port())
        {
            *self
                .in_use
                .entry((s.tuple.local.ip(), s.tuple.peer))
                .or_default() += 1;
        }
        match i32::from(s.state) {
            TIME_WAIT => self.time_wait.push(s),
            FIN_WAIT2 => self.fin_wait2.push(s),
            _ => {}
        }
    }

    /// Local ports of the ephemeral range in use, per (source address, destination), and the
    /// range's size, ordered by source and destination. Ports are unique per destination, so
    /// each destination has the whole range to itself.
    pub fn port_use(&self) -> Vec<PortUse> {
        let Some((lo, hi)) = self.range else {
            return Vec::new();
        };
        let mut uses: Vec<PortUse> = self
            .in_use
            .iter()
            .map(|(&(source, peer), &in_use)| PortUse {
                netns: self.netns,
                source,
                peer,
                in_use,
                range: u32::from(hi - lo) + 1,
            })
            .collect();
        uses.sort_unstable_by_key(|u| (u.source, u.peer));
        uses
    }
}

/// Ephemeral ports from one source address to one destination in one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct PortUse {
    /// Namespace inode.
    pub netns: u32,
    /// Local address.
    pub source: IpAddr,
    /// Destination.
    pub peer: SocketAddr,
    /// Local ports of the range in use towards it.
    pub in_use: u64,
    /// Size of the namespace's range.
    pub range: u32,
}

impl PortUse {
    /// `in_use / range`.
    pub fn ratio(&self) -> f64 {
        self.in_use as f64 / f64::from(self.range.max(1))
    }
}

/// The ephemeral-port gauge rows of `uses` (sorted busiest first): the first `limit` pairs by
/// name, the rest in `other`; a pair in two namespaces (loopback) counts its fuller one.
/// Returns the rows (ports in use, ratio) and how many pairs were folded into `other`.
pub(super) fn gauge_rows(uses: &[PortUse], limit: usize) -> (Vec<(PortLabels, u64, f64)>, u64) {
    let mut rows: BTreeMap<PortLabels, (u64, f64)> = BTreeMap::new();
    let mut folded = 0;
    for (i, u) in uses.iter().enumerate() {
        let labels = if i < limit {
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
        let row = rows.entry(labels).or_default();
        row.0 = row.0.max(u.in_use);
        row.1 = row.1.max(u.ratio());
    }
    let rows = rows.into_iter().map(|(l, (n, r))| (l, n, r)).collect();
    (rows, folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_use(netns: u32, peer_port: u16, in_use: u64) -> PortUse {
        PortUse {
            netns,
            source: "10.0.0.1".parse().unwrap(),
            peer: SocketAddr::new("10.0.0.2".parse().unwrap(), peer_port),
            in_use,
            range: 100,
        }
    }

    #[test]
    fn the_busiest_pairs_are_named_and_the_rest_folded() {
        let uses = [
            port_use(1, 80, 90),
            port_use(1, 81, 50),
            port_use(1, 82, 10),
        ];
        let (rows, folded) = gauge_rows(&uses, 2);
        assert_eq!(folded, 1);
        let named: Vec<_> = rows.iter().map(|(l, n, _)| (l.peer.as_str(), *n)).collect();
        assert_eq!(
            named,
            [("10.0.0.2:80", 90), ("10.0.0.2:81", 50), ("other", 10)]
        );
        assert!((rows[0].2 - 0.9).abs() < 1e-9);
    }

    #[test]
    fn a_pair_seen_from_two_namespaces_counts_its_fuller_one() {
        let (rows, folded) = gauge_rows(&[port_use(1, 80, 30), port_use(2, 80, 70)], 10);
        assert_eq!(folded, 0);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, 70);
    }
    use crate::sock_diag::Tuple;

    #[test]
    fn ranges_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("40000 40099"), Some((40000, 40099)));
        assert_eq!(parse_range("5 4"), None);
        assert_eq!(parse_range("x"), None);
    }

    #[test]
    fn ports_are_counted_per_source_and_destination_within_the_range() {
        let sock = |local: &str, peer: &str, state: i32| DiagSocket {
            tuple: Tuple {
                netns: 9,
                local: local.parse().unwrap(),
                peer: peer.parse().unwrap(),
            },
            state: state as u8,
            family: observer_common::tcp::AF_INET,
            inode: 0,
            rqueue: 0,
        };
        let mut ns = Netns {
            netns: 9,
            range: Some((40000, 40099)),
            time_wait: Vec::new(),
            fin_wait2: Vec::new(),
            in_use: foldhash::HashMap::default(),
        };
        for s in [
            sock("10.0.0.1:40000", "10.0.0.9:80", 1),
            sock("10.0.0.1:40001", "10.0.0.9:80", TIME_WAIT),
            sock("10.0.0.1:40001", "10.0.0.9:443", 1),
            sock("10.0.0.1:40002", "10.0.0.9:443", FIN_WAIT2),
            // A server's accepted socket: its port is the listener's, not ephemeral.
            sock("10.0.0.1:8080", "10.0.0.7:40005", 1),
        ] {
            ns.add(s);
        }
        let uses = ns.port_use();
        assert_eq!(uses.len(), 2);
        assert_eq!(uses[0].peer, "10.0.0.9:80".parse().unwrap());
        assert_eq!((uses[0].in_use, uses[0].range), (2, 100));
        assert_eq!((uses[1].in_use, ns.fin_wait2.len()), (2, 1));
        assert!((uses[0].ratio() - 0.02).abs() < 1e-9);
        assert_eq!(ns.time_wait.len(), 1);
    }
}
