//! `sock_diag` netlink replies: any datagram parses to sockets, the end, or an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut n = 0usize;
    let _ = observer::sock_diag::parse(data, 7, &mut |_| n += 1);
    // Each socket takes a 16-byte header and a 72-byte message at least.
    assert!(n <= data.len() / 88);
});
