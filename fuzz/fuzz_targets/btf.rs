//! Kernel BTF: any blob parses or is refused, and lookups in what parsed never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = observer::btf::Btf::parse(data) {
        let _ = btf.field("sock_common", "skc_family");
        let _ = btf.field("tcp_sock", "inet_conn.icsk_inet.sk.__sk_common.skc_state");
        let _ = btf.field_of_size("tcp_sock", "rcv_nxt", 4);
        let _ = btf.enum_values("tcp_states");
        let _ = btf.typedef_params("btf_trace_inet_sock_set_state");
        let _ = btf.func_params("tcp_recvmsg");
    }
});
