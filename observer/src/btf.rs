//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to turn
//! `(struct, field path)` into a byte offset and size, read enum values, and count a BTF
//! tracepoint's arguments.
//!
//! aya has no CO-RE field relocations for Rust programs and `aya_obj::btf::Btf` does not expose
//! member offsets, so observer reads the format itself. It is documented in
//! <https://docs.kernel.org/bpf/btf.html>: a header, an array of variable-length type records
//! (type ids start at 1; 0 is `void`) and a string section.

use std::{fmt, path::Path};

mod records;
#[cfg(test)]
mod tests;

use records::{MAGIC, Type, parse_types, u16_at, u32_at};

/// What went wrong reading BTF or resolving a name in it. Every variant names what is missing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The BTF file could not be read.
    #[error(
        "reading BTF from {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y, or pass --btf PATH)"
    )]
    Read {
        /// The file that was read.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not BTF, or are cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// No struct or union of that name.
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    /// The struct has no member at that path.
    #[error("BTF struct {strukt} has no field {field}")]
    NoField {
        /// Struct searched.
        strukt: String,
        /// Field path searched.
        field: String,
    },
    /// The member is a bitfield where a whole field was expected.
    #[error(
        "BTF field {strukt}.{field} is a bitfield; observer needs a whole {expected}-byte field"
    )]
    Bitfield {
        /// Struct searched.
        strukt: String,
        /// Field path.
        field: String,
        /// Size the programs read.
        expected: u32,
    },
    /// The member has another size than the programs read.
    #[error("BTF field {strukt}.{field} is {found} bytes; observer reads {expected}")]
    Size {
        /// Struct searched.
        strukt: String,
        /// Field path.
        field: String,
        /// Size the programs read.
        expected: u32,
        /// Size in this BTF.
        found: u32,
    },
    /// No enum of that name, or no such value in it.
    #[error("BTF has no enum value {enumeration}::{value}")]
    NoEnumValue {
        /// Enum searched.
        enumeration: String,
        /// Value searched.
        value: String,
    },
}

/// A resolved field: where it starts and how big it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Offset in bytes from the start of the outer struct.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Whether the field is a bitfield (its offset and size are then approximate).
    pub bitfield: bool,
}

/// Parsed BTF: type records and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len())
            .finish_non_exhaustive()
    }
}

impl Btf {
    /// Reads and parses a BTF file such as `/sys/kernel/btf/vmlinux`.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parses raw little-endian BTF.
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        if u16_at(b, 0)? != MAGIC {
            return Err(Error::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(Error::Malformed("type section out of bounds"))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(Error::Malformed("string section out of bounds"))?
            .to_vec();
        Ok(Self {
            types: parse_types(types)?,
            strings,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn get(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Some(Type::Alias { ty, .. }) => id = *ty,
                _ => break,
            }
        }
        id
    }

    fn size_of(&self, id: u32) -> u32 {
        match self.get(self.strip(id)) {
            Some(
                Type::Int { size, .. }
                | Type::Composite { size, .. }
                | Type::Enum { size, .. }
                | Type::Sized { size },
            ) => *size,
            Some(Type::Ptr { .. }) => 8,
            Some(Type::Array { elem, nelems }) => self.size_of(*elem) * nelems,
            _ => 0,
        }
    }

    fn find_composite(&self, name: &str) -> Option<u32> {
        // Prefer a definition with members over an empty duplicate.
        let mut found = None;
        for (i, t) in self.types.iter().enumerate() {
            if let Type::Composite {
                name: n, members, ..
            } = t
                && self.name(*n) == name.as_bytes()
            {
                found = Some(i as u32 + 1);
                if !members.is_empty() {
                    break;
                }
            }
        }
        found
    }

    /// Resolves `path` (members separated by `.`, anonymous unions and structs searched through)
    /// inside `strukt` to a byte offset and size.
    pub fn field(&self, strukt: &str, path: &str) -> Result<Field, Error> {
        let no_field = || Error::NoField {
            strukt: strukt.to_owned(),
            field: path.to_owned(),
        };
        let mut id = self
            .find_composite(strukt)
            .ok_or_else(|| Error::NoStruct(strukt.to_owned()))?;
        let mut bits = 0u32;
        let mut found = None;
        for part in path.split('.') {
            let (member_bits, member_ty, bitfield) =
                self.member(id, part.as_bytes()).ok_or_else(no_field)?;
            bits += member_bits;
            id = self.strip(member_ty);
            found = Some((member_ty, bitfield));
        }
        let (ty, mut bitfield) = found.ok_or_else(no_field)?;
        if let Some(Type::Int {
            size,
            bits: nr,
            bit_offset,
        }) = self.get(self.strip(ty))
        {
            bitfield |= *nr != size * 8 || *bit_offset != 0;
        }
        bitfield |= !bits.is_multiple_of(8);
        Ok(Field {
            offset: bits / 8,
            size: self.size_of(ty),
            bitfield,
        })
    }

    /// Finds member `name` in composite `id`, searching anonymous members; returns its bit
    /// offset, its type and whether it is declared as a bitfield.
    fn member(&self, id: u32, name: &[u8]) -> Option<(u32, u32, bool)> {
        let Some(Type::Composite {
            kind_flag, members, ..
        }) = self.get(id)
        else {
            return None;
        };
        for m in members {
            let (bit_offset, bitfield_size) = if *kind_flag {
                (m.offset & 0x00ff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            if m.name == 0 {
                if let Some((inner, ty, bf)) = self.member(self.strip(m.ty), name) {
                    return Some((bit_offset + inner, ty, bf));
                }
            } else if self.name(m.name) == name {
                return Some((bit_offset, m.ty, bitfield_size != 0));
            }
        }
        None
    }

    /// Resolves `path` and checks that it is a whole field of `size` bytes.
    pub fn field_of_size(&self, strukt: &str, path: &str, size: u32) -> Result<u32, Error> {
        let f = self.field(strukt, path)?;
        if f.bitfield {
            return Err(Error::Bitfield {
                strukt: strukt.to_owned(),
                field: path.to_owned(),
                expected: size,
            });
        }
        if f.size != size {
            return Err(Error::Size {
                strukt: strukt.to_owned(),
                field: path.to_owned(),
                expected: size,
                found: f.size,
            });
        }
        Ok(f.offset)
    }

    /// Every `(name, value)` of the enum called `name`, or `None` when there is no such enum.
    pub fn enum_values(&self, name: &str) -> Option<Vec<(String, i64)>> {
        self.types.iter().find_map(|t| match t {
            Type::Enum {
                name: n, values, ..
            } if self.name(*n) == name.as_bytes() => Some(
                values
                    .iter()
                    .map(|(v, val)| (String::from_utf8_lossy(self.name(*v)).into_owned(), *val))
                    .collect(),
            ),
            _ => None,
        })
    }

    /// The value of `enumeration::value`.
    pub fn enum_value(&self, enumeration: &str, value: &str) -> Result<i64, Error> {
        self.enum_values(enumeration)
            .and_then(|vs| vs.into_iter().find(|(n, _)| n == value).map(|(_, v)| v))
            .ok_or_else(|| Error::NoEnumValue {
                enumeration: enumeration.to_owned(),
                value: value.to_owned(),
            })
    }

    /// Number of parameters of the function-pointer typedef `name` (for a BTF tracepoint
    /// `btf_trace_<event>`, that is the event's arguments plus the leading `void *`).
    pub fn typedef_params(&self, name: &str) -> Option<u32> {
        let id = self.types.iter().position(|t| {
            matches!(t, Type::Alias { name: n, typedef: true, .. } if self.name(*n) == name.as_bytes())
        })? as u32
            + 1;
        let mut target = self.strip(id);
        if let Some(Type::Ptr { ty }) = self.get(target) {
            target = self.strip(*ty);
        }
        match self.get(target) {
            Some(Type::FuncProto { params }) => u32::try_from(params.len()).ok(),
            _ => None,
        }
    }

    /// Parameter names of the kernel function `name` (a `FUNC` record), in order; `None` when
    /// BTF has no such function.
    pub fn func_params(&self, name: &str) -> Option<Vec<String>> {
        let proto = self.types.iter().find_map(|t| match t {
            Type::Func { name: n, proto } if self.name(*n) == name.as_bytes() => Some(*proto),
            _ => None,
        })?;
        match self.get(proto) {
            Some(Type::FuncProto { params }) => Some(
                params
                    .iter()
                    .map(|p| String::from_utf8_lossy(self.name(*p)).into_owned())
                    .collect(),
            ),
            _ => None,
        }
    }
}
