//! Capability sets of the monitor after start-up.
//!
//! Trusted input: the capabilities that the loaded policy lets scripts declare, and the
//! monitor's decision whether a root command without declared capabilities exists.
//!
//! The monitor keeps uid 0 but only three effective capabilities for the rest of its life.
//! Its permitted set adds the capabilities that scripts may receive, so that the script
//! runner can pass them on, and the bounding set limits what any later exec as root can
//! gain. Capabilities are per thread: call [`restrict_monitor_capabilities`] on the main
//! thread before any other thread starts, so that every thread inherits the reduced sets.

use ::caps::{CapSet, Capability, CapsHashSet};

use super::SandboxError;

/// Capabilities the monitor keeps in its effective set: CAP_SETUID and CAP_SETGID to
/// switch to the users of scripts and parser children, CAP_KILL to signal the process
/// groups of scripts that run as other users.
pub const MONITOR_CAPABILITIES: &[Capability] = &[
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_KILL,
];

/// Highest capability number that the capability sets of the kernel ABI can hold.
const MAX_CAPABILITY_INDEX: u8 = 63;

/// Reduces the capability sets of the calling thread for the life of the monitor.
///
/// - bounding: [`MONITOR_CAPABILITIES`] and `script_capabilities`, or left whole when
///   `keep_full_bounding` is set. The policy sets it when a command runs as root without
///   declaring capabilities, because such a script gets root's usual capabilities from the
///   bounding set when it is executed.
/// - permitted: [`MONITOR_CAPABILITIES`] and `script_capabilities`.
/// - effective: [`MONITOR_CAPABILITIES`].
/// - inheritable and ambient: empty.
///
/// The sets are read back afterwards, and a mismatch is an error.
pub fn restrict_monitor_capabilities(
    script_capabilities: &CapsHashSet,
    keep_full_bounding: bool,
) -> Result<(), SandboxError> {
    let effective: CapsHashSet = MONITOR_CAPABILITIES.iter().copied().collect();
    let permitted: CapsHashSet = effective.union(script_capabilities).copied().collect();

    // The bounding set first, because PR_CAPBSET_DROP requires CAP_SETPCAP in the
    // effective set, which the effective set below no longer contains.
    if !keep_full_bounding {
        cut_bounding_set(&permitted)?;
    }

    // The ambient set can only contain capabilities that are both permitted and
    // inheritable, and the kernel would empty it with the inheritable set below. It is
    // cleared explicitly so that the intent does not rest on that rule.
    ::caps::clear(None, CapSet::Ambient).map_err(|source| SandboxError::ClearCapabilities {
        set: "ambient",
        source,
    })?;

    // The script runner raises the inheritable and ambient capabilities a script needs in
    // its own forked process, so the monitor itself keeps none.
    ::caps::clear(None, CapSet::Inheritable).map_err(|source| SandboxError::ClearCapabilities {
        set: "inheritable",
        source,
    })?;

    // The effective set before the permitted set, because capset rejects a permitted set
    // that does not contain the current effective set.
    set_capabilities(CapSet::Effective, "effective", &effective)?;
    set_capabilities(CapSet::Permitted, "permitted", &permitted)?;

    verify_set(CapSet::Effective, "effective", &effective)?;
    verify_set(CapSet::Permitted, "permitted", &permitted)?;
    verify_set(CapSet::Inheritable, "inheritable", &CapsHashSet::new())?;
    if !keep_full_bounding {
        verify_bounding_set(&permitted)?;
    }
    tracing::debug!(
        effective = %format_capabilities(&effective),
        permitted = %format_capabilities(&permitted),
        keep_full_bounding,
        "restricted monitor capabilities"
    );
    Ok(())
}

/// Formats a capability set as names sorted by capability number, or "none".
pub(super) fn format_capabilities(capabilities: &CapsHashSet) -> String {
    if capabilities.is_empty() {
        return "none".to_string();
    }
    let mut sorted: Vec<Capability> = capabilities.iter().copied().collect();
    sorted.sort_by_key(|capability| capability.index());
    let names: Vec<String> = sorted.iter().map(ToString::to_string).collect();
    names.join(", ")
}

fn set_capabilities(
    set: CapSet,
    name: &'static str,
    capabilities: &CapsHashSet,
) -> Result<(), SandboxError> {
    ::caps::set(None, set, capabilities).map_err(|source| SandboxError::SetCapabilities {
        set: name,
        capabilities: format_capabilities(capabilities),
        source,
    })
}

fn verify_set(set: CapSet, name: &'static str, expected: &CapsHashSet) -> Result<(), SandboxError> {
    let found = ::caps::read(None, set)
        .map_err(|source| SandboxError::ReadCapabilities { set: name, source })?;
    if &found == expected {
        Ok(())
    } else {
        Err(SandboxError::CapabilitySetMismatch {
            set: name,
            expected: format_capabilities(expected),
            found: format_capabilities(&found),
        })
    }
}

/// Bit mask with one bit per capability number, as in the `Cap*` lines of
/// /proc/PID/status.
fn capability_mask(capabilities: &CapsHashSet) -> u64 {
    capabilities
        .iter()
        .fold(0, |mask, capability| mask | capability.bitmask())
}

/// Drops from the bounding set every capability that `keep` lacks.
///
/// The loop goes by number up to the kernel's last capability instead of over the `caps`
/// crate's list, so that a capability newer than the crate is dropped as well.
fn cut_bounding_set(keep: &CapsHashSet) -> Result<(), SandboxError> {
    let keep_mask = capability_mask(keep);
    for index in 0..=MAX_CAPABILITY_INDEX {
        let Some(present) = read_bounding_capability(index)? else {
            break;
        };
        if present && keep_mask & (1 << index) == 0 {
            // SAFETY: PR_CAPBSET_DROP takes the capability number as an integer and
            // touches no memory of this process.
            let result = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(index)) };
            if result != 0 {
                return Err(SandboxError::DropBoundingCapability {
                    index,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
    }
    Ok(())
}

fn verify_bounding_set(expected: &CapsHashSet) -> Result<(), SandboxError> {
    let mut found_mask = 0u64;
    for index in 0..=MAX_CAPABILITY_INDEX {
        match read_bounding_capability(index)? {
            Some(true) => found_mask |= 1 << index,
            Some(false) => {}
            None => break,
        }
    }
    let expected_mask = capability_mask(expected);
    if found_mask == expected_mask {
        Ok(())
    } else {
        Err(SandboxError::CapabilitySetMismatch {
            set: "bounding",
            expected: format!("{expected_mask:#x}"),
            found: format!("{found_mask:#x}"),
        })
    }
}

/// Returns whether capability `index` is in the bounding set, or `None` when the kernel has
/// no capability with that number.
fn read_bounding_capability(index: u8) -> Result<Option<bool>, SandboxError> {
    // SAFETY: PR_CAPBSET_READ takes the capability number as an integer and touches no
    // memory of this process.
    let result = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(index)) };
    match result {
        0 => Ok(Some(false)),
        1 => Ok(Some(true)),
        _ => {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EINVAL) {
                Ok(None)
            } else {
                Err(SandboxError::ReadBoundingCapability { index, source })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_capabilities_mask() {
        let monitor: CapsHashSet = MONITOR_CAPABILITIES.iter().copied().collect();
        // CAP_KILL is 5, CAP_SETGID 6 and CAP_SETUID 7.
        assert_eq!(capability_mask(&monitor), 0xe0);
    }

    #[test]
    fn capability_mask_of_empty_set() {
        assert_eq!(capability_mask(&CapsHashSet::new()), 0);
    }

    #[test]
    fn format_sorts_by_number() {
        let set: CapsHashSet = [
            Capability::CAP_SETUID,
            Capability::CAP_KILL,
            Capability::CAP_SETGID,
        ]
        .into_iter()
        .collect();
        assert_eq!(
            format_capabilities(&set),
            "CAP_KILL, CAP_SETGID, CAP_SETUID"
        );
    }

    #[test]
    fn format_empty_set() {
        assert_eq!(format_capabilities(&CapsHashSet::new()), "none");
    }

    #[test]
    fn bounding_read_of_unknown_number_is_none() {
        // Numbers past the kernel's last capability give EINVAL. Reading needs no
        // privilege, so this runs in the unprivileged test harness.
        assert_eq!(
            read_bounding_capability(MAX_CAPABILITY_INDEX).unwrap(),
            None
        );
    }

    #[test]
    fn bounding_read_of_chown_is_known() {
        assert!(read_bounding_capability(0).unwrap().is_some());
    }
}
