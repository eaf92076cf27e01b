//! Start-up failures of the probes.

/// Start-up failures of the probes, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object could not be loaded (maps created, globals set).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The BTF file aya needs for BTF tracepoints could not be read.
    #[error("reading BTF from {path} for tp_btf programs: {source}")]
    Btf {
        /// The file.
        path: String,
        /// aya's error.
        #[source]
        source: aya::BtfError,
    },
    /// A required hook was refused by every candidate.
    #[error("required hook {purpose} could not be attached: {refusals}")]
    Required {
        /// The purpose.
        purpose: super::Purpose,
        /// Every refusal, joined.
        refusals: String,
    },
    /// A map the programs define is missing or of another type.
    #[error("map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The on-demand read hook could not be attached or detached.
    #[error("attaching or detaching {program}: {source}")]
    Detach {
        /// The program.
        program: &'static str,
        /// aya's error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map the programs define is missing.
    #[error("map {0} not found in the eBPF object")]
    MissingMap(&'static str),
    /// bpffs or the pin directory is not usable.
    #[error(transparent)]
    PinDir(#[from] crate::host::PinDirError),
}
