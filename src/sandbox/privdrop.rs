//! Switch of the parser child from root to the unprivileged user, and no_new_privs.
//!
//! Trusted input: the uid and gid come from the monitor's `unprivileged_user` parameter.
//! The caller is the freshly executed parser child, which is single-threaded, so the plain
//! per-thread calls below change the credentials of the whole process.

use nix::errno::Errno;
use nix::sys::prctl;
use nix::unistd::{self, Gid, Uid};

use super::SandboxError;

/// Switches the calling process for good to `uid` and `gid`, then verifies the switch.
///
/// The steps are: supplementary groups set to `[gid]`, real, effective and saved gid set to
/// `gid`, the same for the uid, and the dumpable flag cleared. The verification reads the
/// ids and groups back, checks that no permitted capability survived, and checks that
/// `setuid(0)` now fails with `EPERM`. Uid 0 and gid 0 are rejected as targets.
///
/// Call it as root (or with CAP_SETUID and CAP_SETGID) from a single-threaded process: the
/// kernel changes the credentials of the calling thread only.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), SandboxError> {
    if uid == 0 || gid == 0 {
        return Err(SandboxError::RootTarget { uid, gid });
    }
    let target_uid = Uid::from_raw(uid);
    let target_gid = Gid::from_raw(gid);

    // Supplementary groups first, while CAP_SETGID is still held. setresgid leaves them
    // untouched, so without this step the child would keep the groups of the monitor
    // (group 0 at least) and their access to files. The new list holds only the primary
    // group, which is the list initgroups builds for a user without other memberships.
    // Listing it grants nothing beyond what the effective gid grants.
    unistd::setgroups(&[target_gid]).map_err(|source| SandboxError::SetGroups { gid, source })?;

    // The gid before the uid, because changing the uid away from 0 drops CAP_SETGID.
    unistd::setresgid(target_gid, target_gid, target_gid)
        .map_err(|source| SandboxError::SetGid { gid, source })?;

    // Setting all three uids to a nonzero value clears the permitted and effective
    // capability sets, unless SECBIT_KEEP_CAPS is set. verify_dropped checks the result.
    unistd::setresuid(target_uid, target_uid, target_uid)
        .map_err(|source| SandboxError::SetUid { uid, source })?;

    // On the uid change the kernel sets the dumpable flag to the fs.suid_dumpable sysctl,
    // which is 0 by default. Clearing it here keeps other processes of the same user (for
    // example the parser children of other clients) from attaching with ptrace or reading
    // this child's memory through /proc, whatever that sysctl is set to.
    prctl::set_dumpable(false).map_err(|source| SandboxError::ClearDumpable { source })?;

    verify_dropped(target_uid, target_gid)?;
    tracing::debug!(uid, gid, "dropped privileges");
    Ok(())
}

/// Checks that ids, groups and capabilities are those of `uid` and `gid` alone, and that
/// the process cannot become root again.
fn verify_dropped(uid: Uid, gid: Gid) -> Result<(), SandboxError> {
    let uids = unistd::getresuid().map_err(|source| SandboxError::ReadCredentials { source })?;
    if uids.real != uid || uids.effective != uid || uids.saved != uid {
        return Err(SandboxError::UidNotChanged {
            expected: uid.as_raw(),
            real: uids.real.as_raw(),
            effective: uids.effective.as_raw(),
            saved: uids.saved.as_raw(),
        });
    }

    let gids = unistd::getresgid().map_err(|source| SandboxError::ReadCredentials { source })?;
    if gids.real != gid || gids.effective != gid || gids.saved != gid {
        return Err(SandboxError::GidNotChanged {
            expected: gid.as_raw(),
            real: gids.real.as_raw(),
            effective: gids.effective.as_raw(),
            saved: gids.saved.as_raw(),
        });
    }

    let groups = unistd::getgroups().map_err(|source| SandboxError::ReadCredentials { source })?;
    if groups != [gid] {
        return Err(SandboxError::GroupsNotChanged {
            expected: gid.as_raw(),
            found: groups.iter().map(|group| group.as_raw()).collect(),
        });
    }

    // With SECBIT_KEEP_CAPS set, the permitted set survives the uid change while the
    // effective set is emptied. setuid(0) below would then fail even though the process
    // could raise CAP_SETUID again and succeed, so the permitted set is checked as well.
    let permitted = ::caps::read(None, ::caps::CapSet::Permitted).map_err(|source| {
        SandboxError::ReadCapabilities {
            set: "permitted",
            source,
        }
    })?;
    if !permitted.is_empty() {
        return Err(SandboxError::CapabilitiesRetained {
            capabilities: super::caps::format_capabilities(&permitted),
        });
    }

    match unistd::setuid(Uid::from_raw(0)) {
        Err(Errno::EPERM) => Ok(()),
        Ok(()) => Err(SandboxError::RootRegained),
        Err(source) => Err(SandboxError::UnexpectedSetuidError { source }),
    }
}

/// Sets no_new_privs on the calling thread and checks that the kernel reports it set.
///
/// Once set, no execve can grant privileges (set-user-ID bits and file capabilities are
/// ignored), the flag cannot be cleared, and it is inherited by children. The kernel
/// requires it before an unprivileged process may apply a landlock ruleset or a seccomp
/// filter.
pub fn set_no_new_privs() -> Result<(), SandboxError> {
    prctl::set_no_new_privs().map_err(|source| SandboxError::SetNoNewPrivs { source })?;
    require_no_new_privs()?;
    tracing::debug!("set no_new_privs");
    Ok(())
}

/// Returns an error unless no_new_privs is set on the calling thread.
pub(super) fn require_no_new_privs() -> Result<(), SandboxError> {
    let set =
        prctl::get_no_new_privs().map_err(|source| SandboxError::ReadNoNewPrivs { source })?;
    if set {
        Ok(())
    } else {
        Err(SandboxError::NoNewPrivsNotSet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These cases return before any system call, so they are safe to run unprivileged and
    // inside the test harness. The switch itself is tested as root in tests/sandbox.rs.

    #[test]
    fn drop_privileges_rejects_root_uid() {
        let error = drop_privileges(0, 65534).unwrap_err();
        assert!(matches!(
            error,
            SandboxError::RootTarget { uid: 0, gid: 65534 }
        ));
    }

    #[test]
    fn drop_privileges_rejects_root_gid() {
        let error = drop_privileges(65534, 0).unwrap_err();
        assert!(matches!(
            error,
            SandboxError::RootTarget { uid: 65534, gid: 0 }
        ));
    }

    #[test]
    fn root_target_message_names_ids() {
        let message = SandboxError::RootTarget { uid: 0, gid: 0 }.to_string();
        assert_eq!(
            message,
            "failed to drop privileges to uid 0 and gid 0, because uid 0 and gid 0 keep root's \
             access"
        );
    }

    #[test]
    fn uid_mismatch_message_lists_ids() {
        let error = SandboxError::UidNotChanged {
            expected: 65534,
            real: 65534,
            effective: 0,
            saved: 0,
        };
        let message = error.to_string();
        assert!(message.contains("expected 65534"), "{message}");
        assert!(message.contains("found 65534, 0 and 0"), "{message}");
    }
}
