//! Error types.

/// Errors creating or attaching to a region.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// A syscall failed (memfd_create, ftruncate, fcntl, fstat, mmap).
    #[error("shm i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer was built against a different contract: `field` names the header field or
    /// size-table entry that differs, `ours` is this build's value, `theirs` the region's.
    #[error("shm ABI mismatch in {field}: ours {ours}, theirs {theirs}")]
    AbiMismatch {
        /// Header field or size-table entry name (e.g. `"magic"`, `"abi_version"`, `"slot_size"`).
        field: &'static str,
        /// Value this build expects.
        ours: u64,
        /// Value found in the region.
        theirs: u64,
    },
    /// The region's geometry is invalid (parameters out of range, file too small, not sealed).
    #[error("shm bad layout: {0}")]
    BadLayout(&'static str),
}

/// Errors decoding (or encoding) a [`crate::Command`] / [`crate::Event`] slot.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Buffer shorter than the 8-byte message header (decode), or output buffer too small (encode).
    #[error("message too short")]
    TooShort,
    /// The kind number is not a message of this direction.
    #[error("unknown message kind {0:#06x}")]
    UnknownKind(u16),
    /// `body_len` exceeds the buffer or the kind's bounds, or disagrees with the body's own
    /// length prefixes (body too short for them, or bytes left over).
    #[error("bad body length")]
    BadLength,
    /// A field holds a value outside its domain (including a length prefix above its limit, e.g.
    /// `ufrag_len > 32` or a `ShortStr` len > 16); the string names the field.
    #[error("bad value in field {0}")]
    BadValue(&'static str),
}
