//! The type section's records, reduced to what observer needs, and their parsing.

use super::Error;

/// `btf_header.magic`.
pub(super) const MAGIC: u16 = 0xeb9f;

/// One BTF type record, reduced to what observer needs.
#[derive(Debug, Clone)]
pub(super) enum Type {
    Int {
        size: u32,
        bits: u32,
        bit_offset: u32,
    },
    Ptr {
        ty: u32,
    },
    Array {
        elem: u32,
        nelems: u32,
    },
    Composite {
        name: u32,
        size: u32,
        kind_flag: bool,
        members: Vec<Member>,
    },
    Enum {
        name: u32,
        size: u32,
        values: Vec<(u32, i64)>,
    },
    /// Typedef, volatile, const, restrict, type tag: refer to `ty`.
    Alias {
        name: u32,
        ty: u32,
        typedef: bool,
    },
    FuncProto {
        /// Name (string offset) of each parameter, in order.
        params: Vec<u32>,
    },
    Func {
        name: u32,
        proto: u32,
    },
    Sized {
        size: u32,
    },
    Other,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Member {
    pub(super) name: u32,
    pub(super) ty: u32,
    pub(super) offset: u32,
}

pub(super) fn u16_at(b: &[u8], at: usize) -> Result<u16, Error> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(Error::Malformed("truncated"))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Result<u32, Error> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(Error::Malformed("truncated"))
}

/// Parses the type section into records indexed by type id - 1.
pub(super) fn parse_types(b: &[u8]) -> Result<Vec<Type>, Error> {
    let mut types = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let name = u32_at(b, at)?;
        let info = u32_at(b, at + 4)?;
        let size_or_type = u32_at(b, at + 8)?;
        at += 12;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let t = match kind {
            1 => {
                let enc = u32_at(b, at)?;
                at += 4;
                Type::Int {
                    size: size_or_type,
                    bits: enc & 0xff,
                    bit_offset: (enc >> 16) & 0xff,
                }
            }
            2 => Type::Ptr { ty: size_or_type },
            3 => {
                let elem = u32_at(b, at)?;
                let nelems = u32_at(b, at + 8)?;
                at += 12;
                Type::Array { elem, nelems }
            }
            4 | 5 => {
                let mut members = Vec::with_capacity(vlen);
                for _ in 0..vlen {
                    members.push(Member {
                        name: u32_at(b, at)?,
                        ty: u32_at(b, at + 4)?,
                        offset: u32_at(b, at + 8)?,
                    });
                    at += 12;
                }
                Type::Composite {
                    name,
                    size: size_or_type,
                    kind_flag,
                    members,
                }
            }
            6 | 19 => {
                let wide = kind == 19;
                let mut values = Vec::with_capacity(vlen);
                for _ in 0..vlen {
                    let n = u32_at(b, at)?;
                    let lo = u32_at(b, at + 4)?;
                    let v = if wide {
                        let hi = u32_at(b, at + 8)?;
                        ((u64::from(hi) << 32) | u64::from(lo)) as i64
                    } else if kind_flag {
                        i64::from(lo as i32)
                    } else {
                        i64::from(lo)
                    };
                    values.push((n, v));
                    at += if wide { 12 } else { 8 };
                }
                Type::Enum {
                    name,
                    size: size_or_type,
                    values,
                }
            }
            8 | 9 | 10 | 11 | 18 => Type::Alias {
                name,
                ty: size_or_type,
                typedef: kind == 8,
            },
            13 => {
                let mut params = Vec::with_capacity(vlen);
                for _ in 0..vlen {
                    params.push(u32_at(b, at)?);
                    at += 8;
                }
                Type::FuncProto { params }
            }
            12 => Type::Func {
                name,
                proto: size_or_type,
            },
            14 | 17 => {
                at += 4;
                Type::Other
            }
            15 => {
                at += 12 * vlen;
                Type::Other
            }
            16 => Type::Sized { size: size_or_type },
            7 => Type::Other,
            _ => return Err(Error::Malformed("unknown BTF kind")),
        };
        types.push(t);
    }
    Ok(types)
}
