//! TCP states and socket constants as the kernel numbers them (`include/net/tcp_states.h`),
//! plus the small pure functions both sides share.

/// `TCP_ESTABLISHED`
pub const ESTABLISHED: i32 = 1;
/// `TCP_SYN_SENT`
pub const SYN_SENT: i32 = 2;
/// `TCP_SYN_RECV`
pub const SYN_RECV: i32 = 3;
/// `TCP_FIN_WAIT1`
pub const FIN_WAIT1: i32 = 4;
/// `TCP_FIN_WAIT2`
pub const FIN_WAIT2: i32 = 5;
/// `TCP_TIME_WAIT`
pub const TIME_WAIT: i32 = 6;
/// `TCP_CLOSE`
pub const CLOSE: i32 = 7;
/// `TCP_CLOSE_WAIT`
pub const CLOSE_WAIT: i32 = 8;
/// `TCP_LAST_ACK`
pub const LAST_ACK: i32 = 9;
/// `TCP_LISTEN`
pub const LISTEN: i32 = 10;
/// `TCP_CLOSING`
pub const CLOSING: i32 = 11;

/// The name of a TCP state as `ss` prints it, lower-case with underscores (`close_wait`).
pub const fn state_name(state: i32) -> &'static str {
    match state {
        ESTABLISHED => "established",
        SYN_SENT => "syn_sent",
        SYN_RECV => "syn_recv",
        FIN_WAIT1 => "fin_wait1",
        FIN_WAIT2 => "fin_wait2",
        TIME_WAIT => "time_wait",
        CLOSE => "close",
        CLOSE_WAIT => "close_wait",
        LAST_ACK => "last_ack",
        LISTEN => "listen",
        CLOSING => "closing",
        _ => "unknown",
    }
}

/// `AF_INET`
pub const AF_INET: u16 = 2;
/// `AF_INET6`
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`
pub const IPPROTO_TCP: u16 = 6;
/// `SHUTDOWN_MASK` (`RCV_SHUTDOWN | SEND_SHUTDOWN`): `__tcp_close` sets it before anything else.
pub const SHUTDOWN_MASK: u8 = 3;
/// `MSG_PEEK`: a read that leaves the data in the queue.
pub const MSG_PEEK: i32 = 2;

/// Whether a socket leaving `old` for `CLOSE` can be its owner's `close()` aborting.
///
/// `__tcp_close` aborts from ESTABLISHED, from CLOSE_WAIT (the peer's FIN plus unread data) and
/// from FIN_WAIT1/FIN_WAIT2 (`shutdown(SHUT_WR)` then `close()`, as hyper and reqwest do when a
/// body is dropped). A FIN_WAIT socket that has the peer's FIN (`SOCK_DONE`) is instead
/// `tcp_time_wait()` handing over to TIME_WAIT in softirq: no RST is sent, nothing is aborted.
pub const fn abortable(old: i32, sock_done: bool) -> bool {
    match old {
        ESTABLISHED | CLOSE_WAIT => true,
        FIN_WAIT1 | FIN_WAIT2 => !sock_done,
        _ => false,
    }
}

/// Bytes the owner never read: `rcv_nxt - copied_seq`, less the one sequence number of a FIN that
/// was received but not consumed.
pub const fn unread_bytes(rcv_nxt: u32, copied_seq: u32, fin_received: bool) -> u32 {
    let pending = rcv_nxt.wrapping_sub(copied_seq);
    if fin_received {
        pending.saturating_sub(1)
    } else {
        pending
    }
}

/// Whether a FIN was received and is still counted in `rcv_nxt`: the socket was in a state that
/// only a received FIN leads to, or the kernel set `SOCK_DONE`.
pub const fn fin_received(old: i32, sock_done: bool) -> bool {
    sock_done || matches!(old, CLOSE_WAIT | CLOSING | LAST_ACK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_excludes_the_fin() {
        assert_eq!(unread_bytes(1000, 0, false), 1000);
        assert_eq!(unread_bytes(4097, 0, true), 4096);
        assert_eq!(unread_bytes(1, 0, true), 0);
        assert_eq!(
            unread_bytes(5, 5, true),
            0,
            "no underflow when the FIN was consumed"
        );
        assert_eq!(
            unread_bytes(10, u32::MAX - 9, false),
            20,
            "sequence numbers wrap"
        );
    }

    #[test]
    fn fin_is_known_from_state_or_flag() {
        assert!(fin_received(CLOSE_WAIT, false));
        assert!(fin_received(ESTABLISHED, true));
        assert!(!fin_received(ESTABLISHED, false));
        assert!(!fin_received(FIN_WAIT1, false));
    }

    #[test]
    fn abortable_states() {
        for s in [ESTABLISHED, CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2] {
            assert!(abortable(s, false));
        }
        assert!(abortable(CLOSE_WAIT, true), "CLOSE_WAIT always has the FIN");
        assert!(
            !abortable(FIN_WAIT2, true),
            "FIN_WAIT2 + FIN is the move to TIME_WAIT"
        );
        assert!(!abortable(FIN_WAIT1, true));
        for s in [
            SYN_SENT, SYN_RECV, TIME_WAIT, CLOSE, LAST_ACK, LISTEN, CLOSING,
        ] {
            assert!(!abortable(s, false));
        }
    }
}
