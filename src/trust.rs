//! Ownership and permission checks on the directories above a file that root trusts: the
//! policy directory, scripts and the log file.
//!
//! The rule: every directory above the file is owned by root and not writable by group or
//! others, so that no other user can replace what root checked. The checks read only
//! metadata (lstat). The paths come from root: the parameters and the policy.

use std::collections::BTreeSet;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub(crate) const WRITE_BY_GROUP_OR_OTHERS: u32 = 0o022;
const WRITE_BY_OTHERS: u32 = 0o002;

/// The writers, besides root, that a trusted directory may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writers {
    /// Root alone: the rule for the policy and scripts, which decide what runs as whom.
    Root,
    /// Root and the directory's group. The log file accepts this, because Ubuntu's
    /// /var/log is group-writable by `syslog`, a group that can already rewrite every log
    /// there, and the file itself must still be a regular file owned by root.
    RootAndGroup,
}
const STICKY_BIT: u32 = 0o1000;

pub(crate) fn permission_bits(metadata: &Metadata) -> u32 {
    metadata.mode() & 0o7777
}

/// Checks one directory that must be trusted: a real directory (not a symbolic link), owned
/// by root, not writable by others, nor by its group unless `writers` allows it.
pub(crate) fn check_trusted_directory(
    path: &Path,
    metadata: &Metadata,
    writers: Writers,
) -> Option<String> {
    let path_text = path.display();
    if metadata.file_type().is_symlink() {
        return Some(format!("{path_text} is a symbolic link, not a directory"));
    }
    if !metadata.is_dir() {
        return Some(format!("{path_text} is not a directory"));
    }
    if metadata.uid() != 0 {
        return Some(format!(
            "directory {path_text} is owned by uid {}, not by root",
            metadata.uid()
        ));
    }
    let mode = permission_bits(metadata);
    let forbidden = match writers {
        Writers::Root => WRITE_BY_GROUP_OR_OTHERS,
        Writers::RootAndGroup => WRITE_BY_OTHERS,
    };
    if mode & forbidden != 0 {
        // A sticky directory such as /tmp still lets every user create new names in it, so
        // a name that root trusts today can be taken over once the file is removed (for
        // example by a temporary-file cleaner). OpenSSH applies the same rule to
        // ChrootDirectory.
        let sticky = if mode & STICKY_BIT != 0 {
            "; the sticky bit does not make it safe, because others can still create names \
             in it"
        } else {
            ""
        };
        let writers = match writers {
            Writers::Root => "group or others",
            Writers::RootAndGroup => "others",
        };
        return Some(format!(
            "directory {path_text} is writable by {writers} (mode {mode:04o}){sticky}"
        ));
    }
    None
}

/// Checks every directory above `path`, up to `/`, as written and after resolving symbolic
/// links. A symbolic link on the way (such as `/bin` on merged-/usr systems) is accepted
/// when root owns it, because its directory is checked too and only root can then change
/// it. The directories it leads to are checked through the resolved path.
pub(crate) fn check_ancestors(path: &Path, writers: Writers) -> Vec<String> {
    let mut problems = BTreeSet::new();
    for ancestor in path.ancestors().skip(1) {
        match fs::symlink_metadata(ancestor) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                if metadata.uid() != 0 {
                    problems.insert(format!(
                        "symbolic link {} is owned by uid {}, not by root",
                        ancestor.display(),
                        metadata.uid()
                    ));
                }
            }
            Ok(metadata) => problems.extend(check_trusted_directory(ancestor, &metadata, writers)),
            Err(error) => {
                problems.insert(format!("failed to inspect {}: {error}", ancestor.display()));
            }
        }
    }

    let Some(parent) = path.parent() else {
        return problems.into_iter().collect();
    };
    match fs::canonicalize(parent) {
        Ok(resolved) if resolved != parent => {
            for ancestor in resolved.ancestors() {
                match fs::symlink_metadata(ancestor) {
                    Ok(metadata) => {
                        problems.extend(check_trusted_directory(ancestor, &metadata, writers))
                    }
                    Err(error) => {
                        problems
                            .insert(format!("failed to inspect {}: {error}", ancestor.display()));
                    }
                }
            }
        }
        Ok(_) => {}
        Err(error) => {
            problems.insert(format!("failed to resolve {}: {error}", parent.display()));
        }
    }
    problems.into_iter().collect()
}
