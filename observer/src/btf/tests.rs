use super::*;

/// Writes a small BTF blob by hand, the way the kernel lays it out.
pub(crate) struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next: u32,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            next: 1,
        }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let at = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        at
    }

    fn record(
        &mut self,
        name: &str,
        kind: u32,
        vlen: u32,
        kind_flag: bool,
        size_or_type: u32,
    ) -> u32 {
        let name = self.str(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        for v in [name, info, size_or_type] {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        self.next += 1;
        self.next - 1
    }

    pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.record(name, 1, 0, false, size);
        self.types.extend_from_slice(&(size * 8).to_le_bytes());
        id
    }

    /// `members`: (name, type, bit offset, bitfield size in bits or 0).
    pub(crate) fn composite(
        &mut self,
        union: bool,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let kind_flag = members.iter().any(|m| m.3 != 0);
        let id = self.record(
            name,
            if union { 5 } else { 4 },
            members.len() as u32,
            kind_flag,
            size,
        );
        for &(n, ty, bit_off, bits) in members {
            let n = self.str(n);
            let off = if kind_flag {
                (bits << 24) | bit_off
            } else {
                bit_off
            };
            for v in [n, ty, off] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
        }
        id
    }

    pub(crate) fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
        let id = self.record(name, 6, values.len() as u32, false, 4);
        for &(n, v) in values {
            let n = self.str(n);
            self.types.extend_from_slice(&n.to_le_bytes());
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        id
    }

    pub(crate) fn typedef(&mut self, name: &str, ty: u32) -> u32 {
        self.record(name, 8, 0, false, ty)
    }

    pub(crate) fn ptr(&mut self, ty: u32) -> u32 {
        self.record("", 2, 0, false, ty)
    }

    pub(crate) fn func_proto(&mut self, params: &[u32]) -> u32 {
        let named: Vec<(&str, u32)> = params.iter().map(|&p| ("", p)).collect();
        self.func_proto_named(&named)
    }

    /// A `FUNC_PROTO` whose parameters have names, as a kernel function's do.
    pub(crate) fn func_proto_named(&mut self, params: &[(&str, u32)]) -> u32 {
        let id = self.record("", 13, params.len() as u32, false, 0);
        for &(name, ty) in params {
            let name = self.str(name);
            self.types.extend_from_slice(&name.to_le_bytes());
            self.types.extend_from_slice(&ty.to_le_bytes());
        }
        id
    }

    /// A `FUNC` record: a kernel function of prototype `proto`.
    pub(crate) fn func(&mut self, name: &str, proto: u32) -> u32 {
        self.record(name, 12, 0, false, proto)
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        let hdr_len = 24u32;
        let type_len = self.types.len() as u32;
        for v in [hdr_len, 0, type_len, type_len, self.strings.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strings);
        b
    }
}

fn sample() -> Btf {
    let mut b = Builder::new();
    let u8t = b.int("u8", 1);
    let u16t = b.int("u16", 2);
    let u32t = b.int("u32", 4);
    let be32 = b.typedef("__be32", u32t);
    let pair = b.composite(
        false,
        "",
        8,
        &[("skc_daddr", be32, 0, 0), ("skc_rcv_saddr", be32, 32, 0)],
    );
    let addrs = b.composite(
        true,
        "",
        8,
        &[("skc_addrpair", u32t, 0, 0), ("", pair, 0, 0)],
    );
    let common = b.composite(
        false,
        "sock_common",
        16,
        &[("", addrs, 0, 0), ("skc_family", u16t, 64, 0)],
    );
    b.composite(
        false,
        "sock",
        24,
        &[
            ("__sk_common", common, 0, 0),
            ("sk_shutdown", u8t, 128, 2),
            ("sk_protocol", u16t, 144, 0),
        ],
    );
    b.enumeration(
        "sock_flags",
        &[("SOCK_DEAD", 0), ("SOCK_DONE", 1), ("SOCK_LINGER", 5)],
    );
    let void_ptr = b.ptr(0);
    let proto = b.func_proto(&[void_ptr, void_ptr, void_ptr, u32t]);
    let fp = b.ptr(proto);
    b.typedef("btf_trace_tcp_send_reset", fp);
    let recv = b.func_proto_named(&[
        ("sk", void_ptr),
        ("msg", void_ptr),
        ("len", u32t),
        ("flags", u32t),
        ("addr_len", void_ptr),
    ]);
    b.func("tcp_recvmsg", recv);
    Btf::parse(&b.build()).expect("synthetic BTF parses")
}

#[test]
fn synthetic_fields_resolve_through_anonymous_members() {
    let btf = sample();
    assert_eq!(
        btf.field_of_size("sock_common", "skc_rcv_saddr", 4)
            .unwrap(),
        4
    );
    assert_eq!(
        btf.field_of_size("sock_common", "skc_family", 2).unwrap(),
        8
    );
    assert_eq!(
        btf.field_of_size("sock", "__sk_common.skc_daddr", 4)
            .unwrap(),
        0
    );
    assert_eq!(btf.field_of_size("sock", "sk_protocol", 2).unwrap(), 18);
}

#[test]
fn synthetic_bitfield_is_refused_by_name() {
    let err = sample()
        .field_of_size("sock", "sk_shutdown", 1)
        .unwrap_err();
    assert!(matches!(err, Error::Bitfield { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "BTF field sock.sk_shutdown is a bitfield; observer needs a whole 1-byte field"
    );
}

#[test]
fn synthetic_missing_and_mis_sized_fields_are_named() {
    let btf = sample();
    assert_eq!(
        btf.field_of_size("sock", "sk_err", 4)
            .unwrap_err()
            .to_string(),
        "BTF struct sock has no field sk_err"
    );
    assert_eq!(
        btf.field_of_size("tcp_sock", "rcv_nxt", 4)
            .unwrap_err()
            .to_string(),
        "BTF has no struct tcp_sock"
    );
    assert_eq!(
        btf.field_of_size("sock", "sk_protocol", 1)
            .unwrap_err()
            .to_string(),
        "BTF field sock.sk_protocol is 2 bytes; observer reads 1"
    );
}

#[test]
fn synthetic_enums_and_tracepoint_arity() {
    let btf = sample();
    assert_eq!(btf.enum_value("sock_flags", "SOCK_LINGER").unwrap(), 5);
    assert!(btf.enum_value("sock_flags", "SOCK_NOPE").is_err());
    assert_eq!(btf.typedef_params("btf_trace_tcp_send_reset"), Some(4));
    assert_eq!(btf.typedef_params("btf_trace_nothing"), None);
    assert_eq!(
        btf.func_params("tcp_recvmsg").unwrap(),
        ["sk", "msg", "len", "flags", "addr_len"]
    );
    assert_eq!(btf.func_params("tcp_nothing"), None);
}

#[test]
fn malformed_blobs_are_errors_not_panics() {
    assert!(matches!(Btf::parse(&[]), Err(Error::Malformed(_))));
    assert!(matches!(Btf::parse(&[0u8; 24]), Err(Error::Malformed(_))));
    let mut blob = Builder::new();
    blob.int("u32", 4);
    let mut bytes = blob.build();
    bytes.truncate(bytes.len() - 8);
    assert!(matches!(Btf::parse(&bytes), Err(Error::Malformed(_))));
    let err = Btf::from_file(Path::new("/nonexistent/vmlinux")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("reading BTF from /nonexistent/vmlinux: "),
        "{err}"
    );
}

#[test]
fn live_kernel_btf_has_what_the_programs_read() {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    if !path.exists() {
        assert!(
            std::env::var_os("OBSERVER_REQUIRE_BPF").is_none(),
            "OBSERVER_REQUIRE_BPF=1 but {} is missing",
            path.display()
        );
        eprintln!("skipped: {} is missing", path.display());
        return;
    }
    let btf = Btf::from_file(path).unwrap();
    let rcv_nxt = btf.field_of_size("tcp_sock", "rcv_nxt", 4).unwrap();
    let copied_seq = btf.field_of_size("tcp_sock", "copied_seq", 4).unwrap();
    assert_ne!(rcv_nxt, copied_seq);
    let sock_size = btf.field("tcp_sock", "inet_conn").unwrap().size;
    assert!(
        rcv_nxt > sock_size && copied_seq > sock_size,
        "tcp fields follow inet_connection_sock"
    );
    assert_eq!(btf.field("sock", "__sk_common").unwrap().offset, 0);
    assert_eq!(btf.enum_value("sock_flags", "SOCK_DEAD").unwrap(), 0);
}
