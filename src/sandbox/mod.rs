//! Sandbox of the parser child and capability limits of the monitor.
//!
//! The parser child is the only process that reads bytes a client wrote, so it confines
//! itself before it reads any. It calls [`drop_privileges`] to become the unprivileged
//! user, then [`confine_parser_child`], which sets no_new_privs, applies a landlock ruleset
//! that grants no filesystem access and installs the seccomp allowlist built by
//! [`parser_child_filter`]. The monitor calls [`check_support`] at start, so that a kernel
//! without landlock or seccomp stops it early under `sandbox=strict`, and
//! [`restrict_monitor_capabilities`] once it holds everything it opens as root.
//!
//! Trusted input: the sandbox mode, uid, gid and capability sets come from the monitor's
//! parameters and the loaded policy. Nothing in this module reads client data.

mod caps;
mod landlock;
mod privdrop;
mod seccomp;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::str::FromStr;

use nix::errno::Errno;

pub use self::caps::{MONITOR_CAPABILITIES, restrict_monitor_capabilities};
pub use self::landlock::{Enforcement, LandlockStatus, restrict_filesystem};
pub use self::privdrop::{drop_privileges, set_no_new_privs};
pub use self::seccomp::{apply_seccomp, parser_child_filter};

/// Choice between stopping and warning when the kernel lacks a sandbox layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Every layer is required: a missing one stops the monitor at start, and a layer that
    /// fails to apply stops the parser child before it reads client input.
    Strict,
    /// Layers the kernel lacks are skipped with a warning. A layer the kernel supports
    /// that still fails to apply stops the parser child, as in [`SandboxMode::Strict`].
    BestEffort,
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SandboxMode::Strict => f.write_str("strict"),
            SandboxMode::BestEffort => f.write_str("best-effort"),
        }
    }
}

/// Error of parsing a `sandbox=` value that is neither `strict` nor `best-effort`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sandbox mode {value:?}, expected \"strict\" or \"best-effort\"")]
pub struct ParseSandboxModeError {
    /// The rejected value.
    pub value: String,
}

impl FromStr for SandboxMode {
    type Err = ParseSandboxModeError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "strict" => Ok(SandboxMode::Strict),
            "best-effort" => Ok(SandboxMode::BestEffort),
            _ => Err(ParseSandboxModeError {
                value: value.to_string(),
            }),
        }
    }
}

/// Sandbox layers that the running kernel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSupport {
    /// Landlock ABI version of the kernel, or `None` when landlock is not built in or not
    /// enabled at boot.
    pub landlock_abi: Option<i32>,
    /// Whether the kernel accepts seccomp filters whose default action kills the process.
    pub seccomp: bool,
}

/// Probes the running kernel for landlock and seccomp filtering.
///
/// Landlock: `landlock_create_ruleset` with `LANDLOCK_CREATE_RULESET_VERSION` returns the
/// ABI version. Seccomp: `seccomp(SECCOMP_GET_ACTION_AVAIL)` for `SECCOMP_RET_KILL_PROCESS`.
/// That call was chosen over `PR_GET_SECCOMP` and the `Seccomp:` line of
/// `/proc/self/status` because both of those only show that the kernel was built with
/// seccomp. The probe used here also shows that filter mode works, that the kernel
/// supports the default action of the allowlist (Linux 4.14 or later) and that no seccomp
/// filter around the monitor forbids the `seccomp` call itself.
pub fn probe_kernel_support() -> KernelSupport {
    KernelSupport {
        landlock_abi: self::landlock::probe_landlock_abi(),
        seccomp: self::seccomp::probe_seccomp_filter(),
    }
}

/// Checks that the running kernel offers the layers that `mode` requires.
///
/// Under [`SandboxMode::Strict`] a missing layer is an error that names it. Under
/// [`SandboxMode::BestEffort`] the result is one warning sentence per missing layer, for
/// the monitor to log.
pub fn check_support(mode: SandboxMode) -> Result<Vec<String>, SandboxError> {
    evaluate_support(mode, probe_kernel_support())
}

fn evaluate_support(
    mode: SandboxMode,
    support: KernelSupport,
) -> Result<Vec<String>, SandboxError> {
    let mut missing = Vec::new();
    let mut warnings = Vec::new();
    if support.landlock_abi.is_none() {
        missing.push("landlock");
        warnings.push(
            "landlock is not available in the running kernel (not built in or not enabled at \
             boot), so parser children run without filesystem restrictions"
                .to_string(),
        );
    }
    if !support.seccomp {
        missing.push("seccomp filtering");
        warnings.push(
            "seccomp filtering is not available in the running kernel, so parser children run \
             without a system call allowlist"
                .to_string(),
        );
    }

    match mode {
        SandboxMode::BestEffort => Ok(warnings),
        SandboxMode::Strict if missing.is_empty() => Ok(Vec::new()),
        SandboxMode::Strict => Err(SandboxError::MissingKernelSupport {
            missing: missing.join(" and "),
        }),
    }
}

/// Layers that [`confine_parser_child`] applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfinementStatus {
    /// Landlock enforcement and ABI.
    pub landlock: LandlockStatus,
    /// Whether the seccomp allowlist is installed. It is `false` only under
    /// [`SandboxMode::BestEffort`] on a kernel without seccomp filtering.
    pub seccomp: bool,
}

impl fmt::Display for ConfinementStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seccomp = if self.seccomp {
            "seccomp allowlist installed"
        } else {
            "seccomp allowlist not installed"
        };
        write!(f, "{}, {seccomp}", self.landlock)
    }
}

/// Confines the calling parser child with no_new_privs, then landlock, then seccomp.
///
/// Call it after [`drop_privileges`] and before reading any client input, on the only
/// thread of the process, because landlock and seccomp apply to the calling thread and to
/// threads started after it, never to threads that already exist. After it returns, only the
/// system calls of [`parser_child_filter`] work, so the child must already hold every
/// descriptor it needs and must have built any state that needs other calls.
pub fn confine_parser_child(mode: SandboxMode) -> Result<ConfinementStatus, SandboxError> {
    // no_new_privs comes first because the kernel rejects landlock_restrict_self and
    // seccomp(SECCOMP_SET_MODE_FILTER) without it, unless the caller has CAP_SYS_ADMIN,
    // which the child lost with root.
    set_no_new_privs()?;

    // Landlock before seccomp, because the allowlist forbids landlock_create_ruleset and
    // landlock_restrict_self. restrict_filesystem closes the ruleset descriptor before it
    // returns, so the child keeps no landlock descriptor.
    let landlock = restrict_filesystem(mode)?;

    // The filter forbids personality, and READ_IMPLIES_EXEC would let readable mappings
    // become executable behind the filter's PROT_EXEC check, so it is cleared first.
    self::seccomp::clear_read_implies_exec()?;

    // The first RandomState of a thread reads its hash keys with getrandom, which the
    // filter forbids. Creating one here seeds the keys of this thread, so the HashMap and
    // HashSet values the parser creates later need no system call.
    let _ = RandomState::new();

    // The filter is built here, while every call is still allowed, and installed last.
    // From then on the child can only use the descriptors it already holds.
    let program = parser_child_filter()?;
    let seccomp = match mode {
        SandboxMode::Strict => {
            apply_seccomp(&program)?;
            true
        }
        SandboxMode::BestEffort if self::seccomp::probe_seccomp_filter() => {
            apply_seccomp(&program)?;
            true
        }
        SandboxMode::BestEffort => {
            tracing::warn!("seccomp filtering is not available, continuing without it");
            false
        }
    };

    let status = ConfinementStatus { landlock, seccomp };
    tracing::debug!(%status, %mode, "confined the parser child");
    Ok(status)
}

/// Failure of one step of the sandbox or of the capability restriction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    #[error(
        "the running kernel does not support {missing}, which sandbox=strict requires \
         (set sandbox=best-effort to start anyway)"
    )]
    MissingKernelSupport { missing: String },

    #[error(
        "failed to drop privileges to uid {uid} and gid {gid}, because uid 0 and gid 0 keep \
         root's access"
    )]
    RootTarget { uid: u32, gid: u32 },

    #[error("failed to set the supplementary groups to [{gid}]")]
    SetGroups {
        gid: u32,
        #[source]
        source: Errno,
    },

    #[error("failed to set the real, effective and saved gid to {gid}")]
    SetGid {
        gid: u32,
        #[source]
        source: Errno,
    },

    #[error("failed to set the real, effective and saved uid to {uid}")]
    SetUid {
        uid: u32,
        #[source]
        source: Errno,
    },

    #[error("failed to clear the dumpable flag")]
    ClearDumpable {
        #[source]
        source: Errno,
    },

    #[error("failed to read the process credentials")]
    ReadCredentials {
        #[source]
        source: Errno,
    },

    #[error(
        "failed to verify the uid switch: expected {expected} for the real, effective and \
         saved uid, found {real}, {effective} and {saved}"
    )]
    UidNotChanged {
        expected: u32,
        real: u32,
        effective: u32,
        saved: u32,
    },

    #[error(
        "failed to verify the gid switch: expected {expected} for the real, effective and \
         saved gid, found {real}, {effective} and {saved}"
    )]
    GidNotChanged {
        expected: u32,
        real: u32,
        effective: u32,
        saved: u32,
    },

    #[error("failed to verify the supplementary groups: expected [{expected}], found {found:?}")]
    GroupsNotChanged { expected: u32, found: Vec<u32> },

    #[error("failed to verify the privilege drop: permitted capabilities {capabilities} remain")]
    CapabilitiesRetained { capabilities: String },

    #[error("failed to verify the privilege drop: setuid(0) succeeded")]
    RootRegained,

    #[error("failed to verify the privilege drop: setuid(0) failed with an error other than EPERM")]
    UnexpectedSetuidError {
        #[source]
        source: Errno,
    },

    #[error("failed to set no_new_privs")]
    SetNoNewPrivs {
        #[source]
        source: Errno,
    },

    #[error("failed to read no_new_privs")]
    ReadNoNewPrivs {
        #[source]
        source: Errno,
    },

    #[error("no_new_privs is not set on the calling thread")]
    NoNewPrivsNotSet,

    #[error("failed to declare the access rights of the landlock ruleset")]
    HandleLandlockAccess {
        #[source]
        source: ::landlock::RulesetError,
    },

    #[error("failed to create the landlock ruleset")]
    CreateLandlockRuleset {
        #[source]
        source: ::landlock::RulesetError,
    },

    #[error("failed to restrict the process with the landlock ruleset")]
    RestrictLandlock {
        #[source]
        source: ::landlock::RulesetError,
    },

    #[error("failed to enforce landlock as sandbox=strict requires: {status}")]
    LandlockNotEnforced { status: LandlockStatus },

    #[error("no seccomp allowlist exists for the {arch} architecture")]
    UnsupportedArchitecture { arch: String },

    #[error("failed to build the seccomp filter for {arch}")]
    BuildSeccompFilter {
        arch: String,
        #[source]
        source: seccompiler::BackendError,
    },

    #[error("failed to read the process personality")]
    ReadPersonality {
        #[source]
        source: std::io::Error,
    },

    #[error("failed to clear the READ_IMPLIES_EXEC personality flag")]
    ClearReadImpliesExec {
        #[source]
        source: std::io::Error,
    },

    #[error("failed to apply the seccomp filter")]
    ApplySeccomp {
        #[source]
        source: seccompiler::Error,
    },

    #[error("failed to read the {set} capability set")]
    ReadCapabilities {
        set: &'static str,
        #[source]
        source: ::caps::errors::CapsError,
    },

    #[error("failed to read capability {index} of the bounding set")]
    ReadBoundingCapability {
        index: u8,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to drop capability {index} from the bounding set")]
    DropBoundingCapability {
        index: u8,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to clear the {set} capability set")]
    ClearCapabilities {
        set: &'static str,
        #[source]
        source: ::caps::errors::CapsError,
    },

    #[error("failed to set the {set} capability set to {capabilities}")]
    SetCapabilities {
        set: &'static str,
        capabilities: String,
        #[source]
        source: ::caps::errors::CapsError,
    },

    #[error("failed to verify the {set} capability set: expected {expected}, found {found}")]
    CapabilitySetMismatch {
        set: &'static str,
        expected: String,
        found: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL_SUPPORT: KernelSupport = KernelSupport {
        landlock_abi: Some(7),
        seccomp: true,
    };

    #[test]
    fn sandbox_mode_parses_accepted_values() {
        assert_eq!("strict".parse(), Ok(SandboxMode::Strict));
        assert_eq!("best-effort".parse(), Ok(SandboxMode::BestEffort));
    }

    #[test]
    fn sandbox_mode_rejects_other_values() {
        for value in ["", "Strict", "best_effort", "none", "strict "] {
            let error = value.parse::<SandboxMode>().unwrap_err();
            assert_eq!(error.value, value);
            let message = error.to_string();
            assert!(message.contains("\"strict\""), "{message}");
            assert!(message.contains("\"best-effort\""), "{message}");
        }
    }

    #[test]
    fn sandbox_mode_display_round_trips() {
        for mode in [SandboxMode::Strict, SandboxMode::BestEffort] {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
    }

    #[test]
    fn support_complete_gives_no_warning() {
        for mode in [SandboxMode::Strict, SandboxMode::BestEffort] {
            assert_eq!(
                evaluate_support(mode, FULL_SUPPORT).unwrap(),
                Vec::<String>::new()
            );
        }
    }

    #[test]
    fn strict_without_landlock_names_layer() {
        let support = KernelSupport {
            landlock_abi: None,
            ..FULL_SUPPORT
        };
        let message = evaluate_support(SandboxMode::Strict, support)
            .unwrap_err()
            .to_string();
        assert!(message.contains("does not support landlock,"), "{message}");
        assert!(!message.contains("seccomp"), "{message}");
        assert!(message.contains("sandbox=best-effort"), "{message}");
    }

    #[test]
    fn strict_without_seccomp_names_layer() {
        let support = KernelSupport {
            seccomp: false,
            ..FULL_SUPPORT
        };
        let message = evaluate_support(SandboxMode::Strict, support)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("does not support seccomp filtering"),
            "{message}"
        );
        assert!(!message.contains("landlock"), "{message}");
        assert!(message.contains("sandbox=best-effort"), "{message}");
    }

    #[test]
    fn strict_without_both_names_both() {
        let support = KernelSupport {
            landlock_abi: None,
            seccomp: false,
        };
        let message = evaluate_support(SandboxMode::Strict, support)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("landlock and seccomp filtering"),
            "{message}"
        );
    }

    #[test]
    fn best_effort_warns_per_missing_layer() {
        let support = KernelSupport {
            landlock_abi: None,
            seccomp: false,
        };
        let warnings = evaluate_support(SandboxMode::BestEffort, support).unwrap();
        assert_eq!(warnings.len(), 2);
        assert!(
            warnings[0].starts_with("landlock is not available"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("seccomp filtering is not available"),
            "{warnings:?}"
        );
    }
}
