//! The agent's privileges as `/proc/self/status` states them (effective capabilities, seccomp
//! mode), and what each missing grant costs. Pure: parsed from the file's text.

/// Capability bit numbers (`include/uapi/linux/capability.h`).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The process may not load tracing programs.
#[derive(Debug, thiserror::Error)]
#[error(
    "loading eBPF programs needs CAP_SYS_ADMIN, or CAP_BPF and CAP_PERFMON where the seccomp profile allows bpf(2) without CAP_SYS_ADMIN (container runtimes' defaults do not): this process has {have}; run it as root or add capability SYS_ADMIN"
)]
pub struct NotPrivileged {
    have: String,
}

/// A grant the agent runs without: the capability and what an operator loses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// `CAP_SYS_PTRACE`, ...
    pub capability: &'static str,
    /// What is not seen, or seen without an owner, because of it.
    pub cost: &'static str,
}

/// Effective capabilities and whether a seccomp filter is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    effective: u64,
    seccomp_filter: bool,
}

/// Grants that are not required but cost data when missing, in the order they are reported.
const OPTIONAL: &[(u32, &str, &str)] = &[
    (
        CAP_SYS_ADMIN,
        "CAP_SYS_ADMIN",
        "setns(2) into other network namespaces is refused: CLOSE_WAIT sockets open at \
         start-up, listeners, TIME_WAIT sockets and ephemeral ports are listed in the agent's \
         own network namespace only",
    ),
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "/proc/<pid>/fd and /proc/<pid>/ns/net of processes of other users, or with \
         capabilities the agent lacks, are unreadable: their sockets open before the agent \
         started have no owner and their network namespaces are not listed",
    ),
    (
        CAP_DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "/proc/<pid>/fd of processes of other users is unreadable (mode 0500): their sockets \
         open before the agent started have no owner",
    ),
];

impl Privileges {
    /// Reads `/proc/self/status`; no capabilities when it cannot be read.
    pub fn of_self() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
    }

    /// Parses the text of `/proc/<pid>/status`.
    pub fn parse(status: &str) -> Self {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        Self {
            effective: field("CapEff:")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or(0),
            seccomp_filter: field("Seccomp:") == Some("2"),
        }
    }

    fn has(self, bit: u32) -> bool {
        self.effective & (1 << bit) != 0
    }

    /// Whether the programs can be loaded and attached at all.
    pub fn require(self) -> Result<(), NotPrivileged> {
        if self.has(CAP_SYS_ADMIN) || (self.has(CAP_BPF) && self.has(CAP_PERFMON)) {
            return Ok(());
        }
        let have: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
            .into_iter()
            .filter(|&(bit, _)| self.has(bit))
            .map(|(_, name)| name)
            .collect();
        Err(NotPrivileged {
            have: if have.is_empty() {
                "none of them".to_owned()
            } else {
                format!("only {}", have.join(" and "))
            },
        })
    }

    /// The optional grants this process lacks, each with its cost.
    pub fn missing(self) -> Vec<Missing> {
        OPTIONAL
            .iter()
            .filter(|&&(bit, ..)| !self.has(bit))
            .map(|&(_, capability, cost)| Missing { capability, cost })
            .collect()
    }

    /// Why bpf(2) is refused although the capabilities allow it, when that is the likely
    /// cause: a seccomp filter and no `CAP_SYS_ADMIN`. Container runtimes' default profiles
    /// (podman's among them) admit bpf(2) and perf_event_open(2) only with `CAP_SYS_ADMIN`.
    pub fn refusal_hint(self) -> Option<&'static str> {
        (self.seccomp_filter && !self.has(CAP_SYS_ADMIN)).then_some(
            "bpf(2) was refused and this process runs under a seccomp filter without \
             CAP_SYS_ADMIN: container runtimes' default seccomp profiles allow bpf(2) and \
             perf_event_open(2) only with CAP_SYS_ADMIN; add capability SYS_ADMIN",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(caps: u64, seccomp: u8) -> String {
        format!("Name:\tobserver\nCapEff:\t{caps:016x}\nSeccomp:\t{seccomp}\n")
    }

    #[test]
    fn root_has_everything_and_misses_nothing() {
        let p = Privileges::parse(&status(0x0000_01ff_ffff_ffff, 0));
        assert!(p.require().is_ok());
        assert!(p.missing().is_empty());
        assert_eq!(p.refusal_hint(), None);
    }

    #[test]
    fn bpf_and_perfmon_load_but_other_namespaces_are_lost() {
        let p = Privileges::parse(&status((1 << CAP_BPF) | (1 << CAP_PERFMON), 2));
        assert!(p.require().is_ok());
        let names: Vec<_> = p.missing().iter().map(|m| m.capability).collect();
        assert_eq!(
            names,
            ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"]
        );
        assert!(p.refusal_hint().unwrap().contains("seccomp"));
        // Without a filter, nothing blocks bpf(2) for CAP_BPF.
        let p = Privileges::parse(&status((1 << CAP_BPF) | (1 << CAP_PERFMON), 0));
        assert_eq!(p.refusal_hint(), None);
    }

    #[test]
    fn each_missing_grant_is_named() {
        let all = (1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH);
        for (bit, name) in [
            (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
            (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
        ] {
            let p = Privileges::parse(&status(all & !(1 << bit), 2));
            let missing = p.missing();
            assert_eq!(missing.len(), 1, "{name}");
            assert_eq!(missing[0].capability, name);
        }
    }

    #[test]
    fn without_any_grant_the_error_says_what_is_had() {
        let e = Privileges::parse(&status(1 << CAP_BPF, 0))
            .require()
            .unwrap_err();
        assert!(e.to_string().contains("only CAP_BPF"), "{e}");
        let e = Privileges::parse("garbage").require().unwrap_err();
        assert!(e.to_string().contains("none of them"), "{e}");
        assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
    }
}
