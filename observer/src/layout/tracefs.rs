//! Classic tracepoint record layouts, read from `events/<category>/<name>/format` under tracefs.
//! A missing file or field leaves the offset `ABSENT`, which makes that fallback unavailable.

use std::path::Path;

use observer_common::layout::{ABSENT, Offsets};

/// Offset of `field` in a tracepoint `format` file's text, if it is there.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let off = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.parse().ok()
    })
}

fn read_format(root: &Path, event: &str) -> String {
    std::fs::read_to_string(root.join("events").join(event).join("format")).unwrap_or_default()
}

/// Fills the `tp_*` members of `offsets` from the formats under `root` (all `ABSENT` without it).
pub fn fill(offsets: &mut Offsets, root: Option<&Path>) {
    let read = |event: &str| root.map(|r| read_format(r, event)).unwrap_or_default();
    let state = read("sock/inet_sock_set_state");
    let reset = read("tcp/tcp_send_reset");
    let recv = read("sock/sock_recv_length");
    let rcv_reset = read("tcp/tcp_receive_reset");
    let at = |fmt: &str, field: &str| field_offset(fmt, field).unwrap_or(ABSENT);
    offsets.tp_state_skaddr = at(&state, "skaddr");
    offsets.tp_state_oldstate = at(&state, "oldstate");
    offsets.tp_state_newstate = at(&state, "newstate");
    offsets.tp_reset_skbaddr = at(&reset, "skbaddr");
    offsets.tp_reset_skaddr = at(&reset, "skaddr");
    offsets.tp_reset_reason = at(&reset, "reason");
    offsets.tp_recv_sk = at(&recv, "sk");
    offsets.tp_recv_ret = at(&recv, "ret");
    offsets.tp_recv_flags = at(&recv, "flags");
    offsets.tp_rcv_reset_skaddr = at(&rcv_reset, "skaddr");
}

/// Whether the classic tracepoint for `purpose_event` has every field its program reads.
pub fn complete(offsets: &Offsets, event: &str) -> bool {
    let needed: &[u32] = match event {
        "sock/inet_sock_set_state" => &[
            offsets.tp_state_skaddr,
            offsets.tp_state_oldstate,
            offsets.tp_state_newstate,
        ],
        "tcp/tcp_send_reset" => &[offsets.tp_reset_skbaddr, offsets.tp_reset_skaddr],
        "tcp/tcp_receive_reset" => &[offsets.tp_rcv_reset_skaddr],
        "sock/sock_recv_length" => &[
            offsets.tp_recv_sk,
            offsets.tp_recv_ret,
            offsets.tp_recv_flags,
        ],
        _ => &[ABSENT],
    };
    needed.iter().all(|&o| o != ABSENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESET: &str = "name: tcp_send_reset\nID: 1466\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n\
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n";

    #[test]
    fn parses_the_kernel_format_text() {
        assert_eq!(field_offset(RESET, "skbaddr"), Some(8));
        assert_eq!(field_offset(RESET, "skaddr"), Some(16));
        assert_eq!(field_offset(RESET, "reason"), Some(28));
        assert_eq!(field_offset(RESET, "saddr"), Some(32));
        assert_eq!(field_offset(RESET, "daddr"), None);
        assert_eq!(field_offset("", "skaddr"), None);
    }

    #[test]
    fn missing_tracefs_leaves_fallbacks_unavailable() {
        let mut o = Offsets::default();
        fill(&mut o, None);
        assert_eq!(o.tp_state_skaddr, ABSENT);
        assert!(!complete(&o, "sock/inet_sock_set_state"));
    }
}
