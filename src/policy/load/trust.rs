//! Ownership and permission checks on the policy directory, the policy files and the
//! scripts they name.
//!
//! The rule everywhere: the object and every directory above it are owned by root and not
//! writable by group or others, so that no other user can replace what root checked. A
//! script may also be owned by the user it runs as, because that user gains nothing by
//! changing it. The checks read only metadata (lstat, fstat) and follow no symbolic link
//! in the last component.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::policy::types::RunAs;
use crate::policy::validate::{check_path_syntax, describe_path_rule};
use crate::trust::{
    WRITE_BY_GROUP_OR_OTHERS, Writers, check_ancestors, check_trusted_directory, permission_bits,
};

/// Largest policy file read, in bytes.
pub(super) const MAX_POLICY_FILE_BYTES: u64 = 1 << 20;

const SET_ID_BITS: u32 = 0o6000;

/// Checks the policy directory itself and every directory above it.
pub(super) fn check_policy_dir(dir: &Path) -> Vec<String> {
    if !dir.is_absolute() {
        // NOTE: a relative directory is resolved against the working directory, so the
        // checks above it cover the working directory's ancestors as well.
        if let Ok(absolute) = std::path::absolute(dir) {
            return check_policy_dir(&absolute);
        }
    }
    let mut problems = Vec::new();
    match fs::symlink_metadata(dir) {
        Ok(metadata) => problems.extend(check_trusted_directory(dir, &metadata, Writers::Root)),
        Err(error) => {
            problems.push(format!("failed to inspect policy directory: {error}"));
            return problems;
        }
    }
    problems.extend(check_ancestors(dir, Writers::Root));
    problems
}

/// Returns the `*.toml` files directly in `dir`, sorted by name. Hidden files (names that
/// start with a dot) are skipped, as a shell glob would skip them.
pub(super) fn list_policy_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let bytes = name.as_encoded_bytes();
        if bytes.starts_with(b".") || !bytes.ends_with(b".toml") {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

/// Opens and reads one policy file after checking the opened file itself (fstat), so that
/// the checked file is the one read. A symbolic link is refused by O_NOFOLLOW, and
/// O_NONBLOCK keeps a FIFO from blocking the open.
pub(super) fn read_policy_file(path: &Path) -> Result<String, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| match error.raw_os_error() {
            Some(libc::ELOOP) => "policy file is a symbolic link; symbolic links are not \
                                  followed, place the file itself in the directory"
                .to_owned(),
            _ => format!("failed to open policy file: {error}"),
        })?;
    let metadata = file
        .metadata()
        .map_err(|error| format!("failed to inspect policy file: {error}"))?;
    if !metadata.is_file() {
        return Err("policy file is not a regular file".to_owned());
    }
    if metadata.uid() != 0 {
        return Err(format!(
            "policy file is owned by uid {}, not by root",
            metadata.uid()
        ));
    }
    let mode = permission_bits(&metadata);
    if mode & WRITE_BY_GROUP_OR_OTHERS != 0 {
        return Err(format!(
            "policy file is writable by group or others (mode {mode:04o})"
        ));
    }
    read_bounded(file)
}

fn read_bounded(file: File) -> Result<String, String> {
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("failed to read policy file: {error}"))?;
    if bytes.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(format!(
            "policy file is larger than {MAX_POLICY_FILE_BYTES} bytes"
        ));
    }
    String::from_utf8(bytes).map_err(|error| {
        format!(
            "policy file is not valid UTF-8 (first invalid byte at offset {})",
            error.utf8_error().valid_up_to()
        )
    })
}

/// Checks a script and returns its problems. The path must be absolute and normalised and
/// name a regular file, not a symbolic link. The file must be owned by root or by the
/// run_as user, not writable by group or others, without set-id bits, and executable by
/// the run_as user. Every directory above it must be trusted. Without a resolved `run_as`
/// the checks that depend on it are skipped.
pub(super) fn check_script(path: &str, run_as: Option<&RunAs>) -> Vec<String> {
    if let Err(rule) = check_path_syntax(path) {
        return vec![format!(
            "script path {path:?} is {}",
            describe_path_rule(rule)
        )];
    }
    let shown = Path::new(path).display();
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return vec![format!("script {shown} does not exist")];
        }
        Err(error) => return vec![format!("failed to inspect script {shown}: {error}")],
    };
    if metadata.file_type().is_symlink() {
        return vec![format!(
            "script {shown} is a symbolic link; name the file it points to"
        )];
    }
    if !metadata.is_file() {
        return vec![format!("script {shown} is not a regular file")];
    }

    let mut problems = Vec::new();
    let mode = permission_bits(&metadata);
    if let Some(run_as) = run_as
        && metadata.uid() != 0
        && metadata.uid() != run_as.uid
    {
        problems.push(format!(
            "script {shown} is owned by uid {}; it must be owned by root or by the run_as \
             user (uid {})",
            metadata.uid(),
            run_as.uid
        ));
    }
    if mode & WRITE_BY_GROUP_OR_OTHERS != 0 {
        problems.push(format!(
            "script {shown} is writable by group or others (mode {mode:04o})"
        ));
    }
    if mode & SET_ID_BITS != 0 {
        problems.push(format!(
            "script {shown} has the set-user-ID or set-group-ID bit (mode {mode:04o}), which \
             would run it with its owner's or group's ids instead of run_as"
        ));
    }
    if let Some(run_as) = run_as
        && !is_executable_by(&metadata, run_as)
    {
        problems.push(format!(
            "script {shown} is not executable by the run_as user {:?} (mode {mode:04o})",
            run_as.user
        ));
    }
    problems.extend(check_ancestors(Path::new(path), Writers::Root));
    problems
}

/// Applies the permission bits the way the kernel does for execute access, ignoring ACLs:
/// root needs any execute bit, the owner the user bit, a member of the file's group the
/// group bit, anyone else the other bit.
fn is_executable_by(metadata: &Metadata, run_as: &RunAs) -> bool {
    let mode = metadata.mode();
    let bit = if run_as.uid == 0 {
        0o111
    } else if metadata.uid() == run_as.uid {
        0o100
    } else if metadata.gid() == run_as.gid || run_as.groups.contains(&metadata.gid()) {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}
