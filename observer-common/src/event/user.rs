//! Userspace-only impls for the wire types: `Pod` for aya, `TryFrom` for the raw enums.

use super::{CloseWaitEntry, Kind, RawEvent, Role, SockState};

// SAFETY: plain `repr(C)` data with explicit padding; every bit pattern is valid.
unsafe impl aya::Pod for RawEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for SockState {}
// SAFETY: as above.
unsafe impl aya::Pod for CloseWaitEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::flow::FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::flow::FlowStats {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::flow::FlowEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::flow::ListenKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::flow::TupleKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::flow::Owner {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::flow::Closer {}

impl TryFrom<u8> for Kind {
    type Error = u8;

    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Self::RstOnClose),
            2 => Ok(Self::LingerAbort),
            3 => Ok(Self::CloseWaitResolved),
            4 => Ok(Self::ResetReceived),
            5 => Ok(Self::ConnectRefused),
            other => Err(other),
        }
    }
}

impl From<u8> for Role {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Client,
            2 => Self::Server,
            _ => Self::Unknown,
        }
    }
}
