//! Everything kernel-specific the programs need, discovered at start-up and never hard-coded:
//! struct field offsets and enum values from BTF, classic tracepoint record layouts from tracefs,
//! the arity of the `tcp_send_reset` BTF tracepoint and the names of `enum sk_rst_reason`.

use std::{collections::BTreeMap, path::Path};

use observer_common::layout::{ABSENT, Offsets};

use crate::btf::{self, Btf};

pub mod tracefs;

/// The resolved kernel layout: the `OFFSETS` global plus what userspace decodes with.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Passed to the programs through `override_global`.
    pub offsets: Offsets,
    /// `enum sk_rst_reason` value -> name without the `SK_RST_REASON_` prefix (empty before 6.10).
    pub rst_reasons: BTreeMap<u32, String>,
    /// Whether the classic tracepoint layouts were read (tracefs is available).
    pub tracefs: bool,
}

/// Resolution failed: the message names what is missing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required struct field, enum value or nesting is missing or has another shape.
    #[error(transparent)]
    Btf(#[from] btf::Error),
    /// A struct that the programs read through a cast does not start with its base.
    #[error("BTF struct {0} does not start with {1}: observer reads it at the same address")]
    NotFirst(&'static str, &'static str),
    /// An enum value does not fit a bit number.
    #[error("BTF enum sock_flags::{0} = {1} is not a bit number")]
    BadFlag(&'static str, i64),
}

impl Layout {
    /// Resolves the layout from `btf` and, when `tracefs` is given, the classic tracepoint
    /// formats under it. Missing tracepoint formats only make those fallbacks unavailable.
    pub fn resolve(btf: &Btf, tracefs: Option<&Path>) -> Result<Self, Error> {
        for (outer, first, inner) in [
            ("sock", "__sk_common", "sock_common"),
            ("inet_sock", "sk", "sock"),
            ("inet_connection_sock", "icsk_inet", "inet_sock"),
            ("tcp_sock", "inet_conn", "inet_connection_sock"),
            ("socket_alloc", "socket", "socket"),
        ] {
            if btf.field(outer, first)?.offset != 0 {
                return Err(Error::NotFirst(outer, inner));
            }
        }
        let f = |s: &str, p: &str, n: u32| btf.field_of_size(s, p, n);
        let flag = |name: &'static str| -> Result<u32, Error> {
            let v = btf.enum_value("sock_flags", name)?;
            u32::try_from(v)
                .ok()
                .filter(|b| *b < 64)
                .ok_or(Error::BadFlag(name, v))
        };
        let mut offsets = Offsets {
            skc_family: f("sock_common", "skc_family", 2)?,
            skc_dport: f("sock_common", "skc_dport", 2)?,
            skc_daddr: f("sock_common", "skc_daddr", 4)?,
            skc_rcv_saddr: f("sock_common", "skc_rcv_saddr", 4)?,
            skc_v6_daddr: f("sock_common", "skc_v6_daddr", 16)?,
            skc_v6_rcv_saddr: f("sock_common", "skc_v6_rcv_saddr", 16)?,
            skc_net: f("sock_common", "skc_net", 8)?,
            sk_protocol: f("sock", "sk_protocol", 2)?,
            sk_shutdown: f("sock", "sk_shutdown", 1)?,
            sk_err: f("sock", "sk_err", 4)?,
            sk_flags: f("sock_common", "skc_flags", 8)?,
            sk_lingertime: f("sock", "sk_lingertime", 8)?,
            inet_sport: f("inet_sock", "inet_sport", 2)?,
            tcp_rcv_nxt: f("tcp_sock", "rcv_nxt", 4)?,
            tcp_copied_seq: f("tcp_sock", "copied_seq", 4)?,
            tcp_write_seq: f("tcp_sock", "write_seq", 4)?,
            tcp_snd_una: f("tcp_sock", "snd_una", 4)?,
            tcp_bytes_received: f("tcp_sock", "bytes_received", 8)?,
            // Added in 5.5: optional, reported as null where absent.
            tcp_bytes_sent: f("tcp_sock", "bytes_sent", 8).unwrap_or(ABSENT),
            // Added in 4.13: optional, the programs read the clock instead where absent.
            tcp_mstamp: f("tcp_sock", "tcp_mstamp", 8).unwrap_or(ABSENT),
            net_inum: f("net", "ns.inum", 4)?,
            // Added in 5.7: optional, the programs read the inode every time where absent.
            net_cookie: f("net", "net_cookie", 8).unwrap_or(ABSENT),
            skc_state: f("sock_common", "skc_state", 1)?,
            sk_socket: f("sock", "sk_socket", 8)?,
            socket_inode: btf.field("socket_alloc", "vfs_inode")?.offset,
            inode_ino: f("inode", "i_ino", 8)?,
            task_group_leader: f("task_struct", "group_leader", 8)?,
            task_comm: f("task_struct", "comm", 16)?,
            flag_dead: flag("SOCK_DEAD")?,
            flag_done: flag("SOCK_DONE")?,
            flag_linger: flag("SOCK_LINGER")?,
            // `void *__data` plus (sk, skb, reason) since 6.10; (sk, skb) before.
            btf_reset_has_reason: u32::from(
                btf.typedef_params("btf_trace_tcp_send_reset") == Some(4),
            ),
            fexit_recv_args: recvmsg_args(btf),
            ..Offsets::default()
        };
        let has_tracefs = tracefs.is_some();
        tracefs::fill(&mut offsets, tracefs);
        let rst_reasons = btf
            .enum_values("sk_rst_reason")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, v)| {
                let v = u32::try_from(v).ok()?;
                Some((v, name.trim_start_matches("SK_RST_REASON_").to_owned()))
            })
            .collect();
        Ok(Self {
            offsets,
            rst_reasons,
            tracefs: has_tracefs,
        })
    }

    /// The kernel's name for a raw RST reason; `None` for "not specified" and unknown values.
    pub fn rst_reason(&self, raw: u32) -> Option<&str> {
        self.rst_reasons
            .get(&raw)
            .map(String::as_str)
            .filter(|n| *n != "NOT_SPECIFIED")
    }

    /// `(name, offset)` of every resolved offset, for `observer check`.
    pub fn describe(&self) -> Vec<(&'static str, u32)> {
        let o = &self.offsets;
        vec![
            ("sock_common.skc_family", o.skc_family),
            ("sock_common.skc_dport", o.skc_dport),
            ("sock_common.skc_daddr", o.skc_daddr),
            ("sock_common.skc_rcv_saddr", o.skc_rcv_saddr),
            ("sock_common.skc_v6_daddr", o.skc_v6_daddr),
            ("sock_common.skc_v6_rcv_saddr", o.skc_v6_rcv_saddr),
            ("sock_common.skc_net", o.skc_net),
            ("sock.sk_protocol", o.sk_protocol),
            ("sock.sk_shutdown", o.sk_shutdown),
            ("sock.sk_err", o.sk_err),
            ("sock_common.skc_flags", o.sk_flags),
            ("sock.sk_lingertime", o.sk_lingertime),
            ("inet_sock.inet_sport", o.inet_sport),
            ("sock_common.skc_state", o.skc_state),
            ("sock.sk_socket", o.sk_socket),
            ("socket_alloc.vfs_inode", o.socket_inode),
            ("inode.i_ino", o.inode_ino),
            ("tcp_sock.rcv_nxt", o.tcp_rcv_nxt),
            ("tcp_sock.copied_seq", o.tcp_copied_seq),
            ("tcp_sock.write_seq", o.tcp_write_seq),
            ("tcp_sock.snd_una", o.tcp_snd_una),
            ("tcp_sock.bytes_received", o.tcp_bytes_received),
            ("tcp_sock.bytes_sent", o.tcp_bytes_sent),
            ("tcp_sock.tcp_mstamp", o.tcp_mstamp),
            ("net.ns.inum", o.net_inum),
            ("net.net_cookie", o.net_cookie),
            ("task_struct.group_leader", o.task_group_leader),
            ("task_struct.comm", o.task_comm),
            ("sock_flags::SOCK_DEAD (bit)", o.flag_dead),
            ("sock_flags::SOCK_DONE (bit)", o.flag_done),
            ("sock_flags::SOCK_LINGER (bit)", o.flag_linger),
            ("tcp_recvmsg parameters", o.fexit_recv_args),
        ]
    }
}

/// The parameter count of `tcp_recvmsg` if its parameters are the two shapes the fexit read
/// program knows (`sk, msg, len, flags, addr_len` since 5.19; `nonblock` before `flags`
/// earlier), else [`ABSENT`], which makes that fallback unavailable.
fn recvmsg_args(btf: &Btf) -> u32 {
    let Some(params) = btf.func_params("tcp_recvmsg") else {
        return ABSENT;
    };
    let shape: Vec<&str> = params.iter().map(String::as_str).collect();
    match shape.as_slice() {
        ["sk", "msg", "len", "flags", "addr_len"]
        | ["sk", "msg", "len", "nonblock", "flags", "addr_len"] => {
            u32::try_from(params.len()).unwrap_or(ABSENT)
        }
        _ => ABSENT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_layout_resolves() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            assert!(std::env::var_os("OBSERVER_REQUIRE_BPF").is_none(), "no BTF");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let layout = Layout::resolve(&btf, None).unwrap();
        let o = layout.offsets;
        assert!(o.tcp_rcv_nxt > o.sk_flags && o.tcp_copied_seq > o.sk_flags);
        assert_ne!(o.flag_linger, o.flag_done);
        assert_eq!(o.tp_state_skaddr, ABSENT, "no tracefs given");
        if btf.enum_values("sk_rst_reason").is_some() {
            assert_eq!(o.btf_reset_has_reason, 1);
            assert!(
                layout
                    .rst_reasons
                    .values()
                    .any(|n| n == "TCP_ABORT_ON_CLOSE")
            );
            let (&not_specified, _) = layout
                .rst_reasons
                .iter()
                .find(|(_, n)| *n == "NOT_SPECIFIED")
                .unwrap();
            assert_eq!(layout.rst_reason(not_specified), None);
        }
    }
}
