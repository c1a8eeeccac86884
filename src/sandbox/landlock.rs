//! Landlock ruleset of the parser child: every access right handled and no rule added, so
//! no path on the filesystem can be opened, executed, listed, created or removed.
//!
//! Trusted input: only the sandbox mode, which comes from the monitor's parameters.
//!
//! The ruleset is pinned to [`PINNED_ABI`], the newest ABI that version 0.4.8 of the
//! `landlock` crate supports, and requests every right of that ABI. The crate drops the
//! rights that the running kernel does not support, and reports the result as fully
//! enforced (the kernel supports every right), partially enforced (it supports some) or not
//! enforced (no landlock).
//!
//! [`SandboxMode::Strict`] makes the filesystem rights of ABI 1 a hard requirement and
//! takes everything newer as best effort. Requiring all of [`PINNED_ABI`] would reject
//! every kernel older than the crate, including kernels that enforce every right they
//! support. The ABI 1 rights already deny opening, executing, listing, creating and removing
//! any path, because the ruleset has no rules. The newer rights cover operations that the
//! seccomp allowlist forbids in the child anyway. These are truncate (ABI 3), TCP bind and
//! connect (ABI 4), device ioctl (ABI 5), abstract unix sockets and signals (ABI 6) and
//! connecting to pathname unix sockets (ABI 9). Rename and link across directories (ABI 2) need
//! create and remove rights, which ABI 1 already denies here.

use std::fmt;

use ::landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, RestrictionStatus, Ruleset,
    RulesetAttr, RulesetStatus, Scope,
};

use super::{SandboxError, SandboxMode};

/// Newest landlock ABI that version 0.4.8 of the `landlock` crate supports.
const PINNED_ABI: ABI = ABI::V10;

/// ABI whose filesystem rights [`SandboxMode::Strict`] requires.
const STRICT_REQUIRED_ABI: ABI = ABI::V1;

/// Flag of `landlock_create_ruleset` that returns the ABI version instead of a ruleset.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// How much of the requested ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// The kernel enforces every right of the pinned ABI.
    FullyEnforced,
    /// The kernel enforces the rights it supports, which are fewer than the pinned ABI has.
    PartiallyEnforced,
    /// The kernel enforces nothing, because landlock is missing or disabled.
    NotEnforced,
}

/// Outcome of [`restrict_filesystem`], for the child to report and the monitor to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LandlockStatus {
    /// Enforcement of the ruleset.
    pub enforcement: Enforcement,
    /// ABI version of the running kernel, or `None` without landlock.
    pub kernel_abi: Option<i32>,
    /// ABI version the ruleset was written for.
    pub pinned_abi: i32,
}

impl fmt::Display for LandlockStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let enforcement = match self.enforcement {
            Enforcement::FullyEnforced => "fully enforced",
            Enforcement::PartiallyEnforced => "partially enforced",
            Enforcement::NotEnforced => "not enforced",
        };
        match self.kernel_abi {
            Some(abi) => write!(
                f,
                "landlock {enforcement} (kernel ABI {abi}, ruleset ABI {})",
                self.pinned_abi
            ),
            None => write!(f, "landlock {enforcement} (not available in the kernel)"),
        }
    }
}

/// Restricts the calling thread and its future children to no filesystem access at all.
///
/// Handles every filesystem and network right and both scopes of the pinned ABI, adds no
/// rule and calls `landlock_restrict_self`. Because nothing is allowed, no path can be
/// opened or created afterwards, no TCP port bound or connected (ABI 4), and no abstract
/// unix socket or process outside the sandbox reached (ABI 6). Descriptors that are already
/// open keep working. Under [`SandboxMode::Strict`] a kernel without landlock is an error.
/// The crate also sets no_new_privs, which is a no-op when the caller already did.
pub fn restrict_filesystem(mode: SandboxMode) -> Result<LandlockStatus, SandboxError> {
    let required_level = match mode {
        SandboxMode::Strict => CompatLevel::HardRequirement,
        SandboxMode::BestEffort => CompatLevel::BestEffort,
    };

    let ruleset = Ruleset::default()
        .set_compatibility(required_level)
        .handle_access(AccessFs::from_all(STRICT_REQUIRED_ABI))
        .and_then(|ruleset| {
            ruleset
                .set_compatibility(CompatLevel::BestEffort)
                .handle_access(AccessFs::from_all(PINNED_ABI))
        })
        .and_then(|ruleset| ruleset.handle_access(AccessNet::from_all(PINNED_ABI)))
        .and_then(|ruleset| ruleset.scope(Scope::from_all(PINNED_ABI)))
        .map_err(|source| SandboxError::HandleLandlockAccess { source })?;

    let created = ruleset
        .create()
        .map_err(|source| SandboxError::CreateLandlockRuleset { source })?;

    let restriction = created
        .restrict_self()
        .map_err(|source| SandboxError::RestrictLandlock { source })?;

    let status = status_from_restriction(&restriction);
    if mode == SandboxMode::Strict && status.enforcement == Enforcement::NotEnforced {
        return Err(SandboxError::LandlockNotEnforced { status });
    }
    tracing::debug!(%status, "restricted filesystem access");
    Ok(status)
}

fn status_from_restriction(restriction: &RestrictionStatus) -> LandlockStatus {
    let enforcement = match restriction.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::FullyEnforced,
        RulesetStatus::PartiallyEnforced => Enforcement::PartiallyEnforced,
        RulesetStatus::NotEnforced => Enforcement::NotEnforced,
    };
    let kernel_abi = match restriction.landlock {
        ::landlock::LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => Some(kernel_abi.unwrap_or(effective_abi as i32)),
        ::landlock::LandlockStatus::NotEnabled | ::landlock::LandlockStatus::NotImplemented => None,
    };
    LandlockStatus {
        enforcement,
        kernel_abi,
        pinned_abi: PINNED_ABI as i32,
    }
}

/// Returns the landlock ABI version of the running kernel, or `None` when landlock is not
/// built in (`ENOSYS`) or not enabled at boot (`EOPNOTSUPP`).
pub(super) fn probe_landlock_abi() -> Option<i32> {
    // SAFETY: with a null attribute pointer, a size of 0 and only the VERSION flag, the
    // kernel reads no memory of this process and returns the ABI version or an error.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if version >= 1 {
        i32::try_from(version).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_abi_handles_more_than_required() {
        let required = AccessFs::from_all(STRICT_REQUIRED_ABI);
        let pinned = AccessFs::from_all(PINNED_ABI);
        assert!(pinned.contains(required));
        assert!(pinned != required);
    }

    #[test]
    fn required_rights_deny_open_exec_and_create() {
        let required = AccessFs::from_all(STRICT_REQUIRED_ABI);
        for right in [
            AccessFs::ReadFile,
            AccessFs::WriteFile,
            AccessFs::Execute,
            AccessFs::ReadDir,
            AccessFs::MakeReg,
            AccessFs::MakeDir,
            AccessFs::MakeSock,
            AccessFs::MakeSym,
            AccessFs::RemoveFile,
            AccessFs::RemoveDir,
        ] {
            assert!(
                required.contains(right),
                "{right:?} missing from ABI 1 rights"
            );
        }
    }

    #[test]
    fn pinned_abi_has_network_and_scopes() {
        assert!(AccessNet::from_all(PINNED_ABI).contains(AccessNet::BindTcp));
        assert!(AccessNet::from_all(PINNED_ABI).contains(AccessNet::ConnectTcp));
        assert!(Scope::from_all(PINNED_ABI).contains(Scope::AbstractUnixSocket));
        assert!(Scope::from_all(PINNED_ABI).contains(Scope::Signal));
    }

    #[test]
    fn status_display_names_enforcement_and_abis() {
        let status = LandlockStatus {
            enforcement: Enforcement::PartiallyEnforced,
            kernel_abi: Some(7),
            pinned_abi: 10,
        };
        assert_eq!(
            status.to_string(),
            "landlock partially enforced (kernel ABI 7, ruleset ABI 10)"
        );
    }

    #[test]
    fn status_display_without_landlock() {
        let status = LandlockStatus {
            enforcement: Enforcement::NotEnforced,
            kernel_abi: None,
            pinned_abi: 10,
        };
        assert_eq!(
            status.to_string(),
            "landlock not enforced (not available in the kernel)"
        );
    }

    #[test]
    fn probe_returns_positive_abi_or_none() {
        // The probe only queries the kernel, so it runs in the unprivileged test harness.
        if let Some(abi) = probe_landlock_abi() {
            assert!(abi >= 1, "ABI {abi}");
        }
    }
}
