//! Userspace-only impls for [`super::Offsets`].

// SAFETY: `repr(C)`, only `u32` members, no padding.
unsafe impl aya::Pod for super::Offsets {}
