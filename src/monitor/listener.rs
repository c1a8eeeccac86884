//! Creation of the listening socket: its directory, a stale socket from an earlier run,
//! bind, owner, mode and listen.
//!
//! Every step works relative to a directory descriptor opened without following
//! symlinks, so a link placed at the socket path or at any directory on the way is
//! refused rather than followed. Input: the administrator's socket_path (trusted, checked).

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrStorage, UnixAddr, getsockopt, sockopt,
};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("failed to open directory {path} without following symlinks")]
    OpenDirectory {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("refusing socket directory {path}: {reason}")]
    UnsafeDirectory { path: PathBuf, reason: String },
    #[error("refusing directory {path} above the socket: {reason}")]
    UnsafeAncestor { path: PathBuf, reason: String },
    #[error("failed to create socket directory {path}")]
    CreateDirectory {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("refusing to replace {path}: {reason}")]
    UnsafeSocketPath { path: PathBuf, reason: String },
    #[error("refusing the socket passed by the service manager: {reason}")]
    Activation { reason: String },
    #[error("socket {path} is in use by a running process; stop it first")]
    InUse { path: PathBuf },
    #[error("failed to {step} socket {path}")]
    Socket {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

impl ListenerError {
    /// Returns whether the error comes from the socket path or from the socket passed by
    /// the service manager, so that a restart fails the same way until the
    /// administrator changes something.
    pub fn is_configuration(&self) -> bool {
        match self {
            ListenerError::UnsafeDirectory { .. }
            | ListenerError::UnsafeAncestor { .. }
            | ListenerError::UnsafeSocketPath { .. }
            | ListenerError::Activation { .. } => true,
            ListenerError::OpenDirectory { source, .. }
            | ListenerError::CreateDirectory { source, .. } => is_path_error(*source),
            ListenerError::InUse { .. } | ListenerError::Socket { .. } => false,
        }
    }
}

/// Returns whether `error` means that a path from the parameters is unusable: a missing
/// directory, a file where a directory belongs, no permission, or a read-only filesystem.
/// Retrying the start fails the same way.
fn is_path_error(error: nix::Error) -> bool {
    matches!(
        error,
        nix::Error::ENOENT | nix::Error::ENOTDIR | nix::Error::EACCES | nix::Error::EROFS
    )
}

/// The listening socket. `file` is set when the broker created the socket file itself,
/// and holds the directory it lives in (kept open, so the socket can be removed at
/// shutdown relative to the same directory); it is `None` for a socket passed by the
/// service manager, which owns the file.
pub struct Listener {
    pub socket: OwnedFd,
    pub file: Option<SocketFile>,
    pub path: PathBuf,
}

/// The socket file the broker created.
pub struct SocketFile {
    pub directory: OwnedFd,
    pub name: CString,
}

/// Owner, group and permission bits of the socket file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketFileStatus {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Listener {
    /// Starts listening with `backlog`. A socket passed by the service manager already
    /// listens, and listening again only updates its backlog.
    pub fn listen(&self, backlog: usize) -> Result<(), ListenerError> {
        let backlog = socket::Backlog::new(backlog.min(i32::MAX as usize) as i32)
            .map_err(|source| socket_error("listen on", &self.path, source))?;
        socket::listen(&self.socket, backlog)
            .map_err(|source| socket_error("listen on", &self.path, source))
    }

    /// Reads the owner, group and mode of the socket file in use: relative to the
    /// directory opened at start for a created socket, by its path for a passed one.
    /// Symlinks are not followed.
    pub fn file_status(&self) -> nix::Result<SocketFileStatus> {
        let stat = match &self.file {
            Some(file) => nix::sys::stat::fstatat(
                &file.directory,
                file.name.as_c_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?,
            None => nix::sys::stat::lstat(&self.path)?,
        };
        Ok(SocketFileStatus {
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: stat.st_mode & 0o7777,
        })
    }

    /// Removes the socket file, relative to the directory opened at start. Does nothing
    /// for a socket passed by the service manager.
    pub fn remove_socket_file(&self) -> nix::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        nix::unistd::unlinkat(
            &file.directory,
            file.name.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
    }
}

/// First descriptor passed by socket activation (SD_LISTEN_FDS_START in sd-daemon.h).
const LISTEN_FDS_START: RawFd = 3;

/// Takes the listening socket passed by systemd-style socket activation: LISTEN_PID is
/// this process and LISTEN_FDS is 1. Returns `Ok(None)` when no socket was passed. The
/// variables are removed, as sd_listen_fds(3) does, so they describe nothing to anyone
/// else. The descriptor must be a listening AF_UNIX stream socket bound to a path.
///
/// An abstract socket (a name that starts with NUL) or an unnamed one is rejected: it has
/// no file, so no file mode or group limits who connects, and any process in the same
/// network namespace could reach the broker. `socket_path` only names the socket in
/// errors. The monitor compares the two paths once the log is open.
pub fn take_activated(socket_path: &Path) -> Result<Option<Listener>, ListenerError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: the monitor calls this before it starts any thread, so no other thread
        // can read the environment while it changes.
        unsafe { std::env::remove_var(name) };
    }
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(None);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let reject = |reason: String| ListenerError::Activation { reason };
    if count != "1" {
        return Err(reject(format!(
            "LISTEN_FDS is {count:?}, but the broker takes exactly one socket"
        )));
    }
    // A closed descriptor 3 must not become an OwnedFd: closing it later would close
    // whatever the process opened there meanwhile (debug builds abort instead).
    // SAFETY: F_GETFD only reads the descriptor flags of an integer descriptor number,
    // open or not, and touches no memory.
    if unsafe { libc::fcntl(LISTEN_FDS_START, libc::F_GETFD) } == -1 {
        return Err(reject(
            "LISTEN_FDS is 1, but descriptor 3 is not open; pass a ListenStream= socket"
                .to_string(),
        ));
    }
    // SAFETY: descriptor 3 is open (checked above) and was passed to this process for it
    // to own under the socket activation protocol. The monitor calls this before it starts
    // any thread and keeps no file of its own open yet, so no other owner exists. Anything
    // else at descriptor 3 fails the checks below and stops the start.
    let socket = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    let is_stream = getsockopt(&socket, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
    let address = nix::sys::socket::getsockname::<SockaddrStorage>(socket.as_raw_fd()).ok();
    let unix_address = address.as_ref().and_then(|address| address.as_unix_addr());
    let Some(unix_address) = unix_address.filter(|_| is_stream) else {
        return Err(reject(
            "descriptor 3 is not a unix stream socket; pass a ListenStream= path".to_string(),
        ));
    };
    let path = passed_socket_path(unix_address).map_err(reject)?;
    // The checks of a socket the broker creates itself: another user who can write a
    // directory above the socket could replace its file and collect the clients' requests.
    let (directory, _) = split_socket_path(&path)?;
    open_socket_directory(&directory)?;
    if !getsockopt(&socket, sockopt::AcceptConn).unwrap_or(false) {
        return Err(reject("descriptor 3 is not listening".to_string()));
    }
    // The descriptor must not reach parser children or scripts.
    nix::fcntl::fcntl(
        &socket,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|source| socket_error("mark close-on-exec", socket_path, source))?;
    Ok(Some(Listener {
        socket,
        file: None,
        path,
    }))
}

/// Logs a warning for each way the socket passed by the service manager differs from the
/// parameters: its path, its mode and its group. systemd's ListenStream=, SocketMode= and
/// SocketGroup= set these, and the broker leaves them as they are, so a difference is a
/// warning and not an error. `socket_gid` is the group the parameters give a socket that
/// the broker creates.
pub fn warn_about_passed_socket(
    listener: &Listener,
    socket_path: &Path,
    socket_permissions: u32,
    socket_gid: u32,
) {
    if listener.path != socket_path {
        tracing::warn!(
            passed_socket_path = %listener.path.display(),
            socket_path = %socket_path.display(),
            "the socket passed by the service manager is not at socket_path; clients must \
             connect to the passed socket, so set socket_path to its path"
        );
    }
    let status = match listener.file_status() {
        Ok(status) => status,
        Err(error) => {
            tracing::warn!(
                passed_socket_path = %listener.path.display(),
                %error,
                "failed to inspect the file of the socket passed by the service manager, so \
                 its mode and group are not checked"
            );
            return;
        }
    };
    if status.mode != socket_permissions {
        tracing::warn!(
            passed_socket_path = %listener.path.display(),
            socket_mode = format!("{:04o}", status.mode),
            socket_permissions = format!("{socket_permissions:04o}"),
            "the socket passed by the service manager has a mode other than \
             socket_permissions; set SocketMode= in the socket unit to match"
        );
    }
    if status.gid != socket_gid {
        tracing::warn!(
            passed_socket_path = %listener.path.display(),
            socket_gid = status.gid,
            expected_socket_gid = socket_gid,
            "the socket passed by the service manager has a group other than the one the \
             parameters give the socket; set SocketGroup= in the socket unit to match"
        );
    }
}

/// Returns the file path that a passed socket is bound to, or the reason why the socket
/// has none.
fn passed_socket_path(address: &UnixAddr) -> Result<PathBuf, String> {
    if let Some(name) = address.as_abstract() {
        return Err(format!(
            "descriptor 3 is the abstract unix socket @{}, which has no file mode, so any \
             process in the network namespace could connect; pass a socket bound to a path \
             (ListenStream=/run/...)",
            String::from_utf8_lossy(name).escape_debug()
        ));
    }
    match address.path() {
        Some(path) if path.is_absolute() => Ok(path.to_path_buf()),
        Some(path) => Err(format!(
            "descriptor 3 is bound to the relative path {}, which cannot be checked; pass a \
             socket bound to an absolute path",
            path.display()
        )),
        None => Err(
            "descriptor 3 is an unnamed unix socket, which has no file mode to limit who \
             connects; pass a socket bound to a path (ListenStream=/run/...)"
                .to_string(),
        ),
    }
}

/// Creates the socket directory if needed, removes a stale socket, binds, and sets group
/// and mode. The socket accepts no connection until [`Listener::listen`].
pub fn create(socket_path: &Path, socket_gid: u32, mode: u32) -> Result<Listener, ListenerError> {
    let (directory_path, name) = split_socket_path(socket_path)?;
    let directory = open_socket_directory(&directory_path)?;
    remove_stale_socket(&directory, &name, socket_path)?;

    let socket = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|source| socket_error("create", socket_path, source))?;

    // bind() takes a path, so bind relative to the directory descriptor: change into it
    // (the monitor is still single-threaded here), bind the bare name, change back. A
    // restrictive umask keeps the socket private until its group and mode are set.
    let old_umask = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let bound = nix::unistd::fchdir(&directory).and_then(|()| {
        let address = UnixAddr::new(Path::new(OsStr::from_bytes(name.as_bytes())))?;
        socket::bind(socket.as_raw_fd(), &address)
    });
    nix::sys::stat::umask(old_umask);
    let _ = nix::unistd::chdir("/");
    bound.map_err(|source| socket_error("bind", socket_path, source))?;

    // From here on a failure must not leave the new socket file behind.
    let finish = || -> Result<(), ListenerError> {
        nix::unistd::fchownat(
            &directory,
            name.as_c_str(),
            Some(Uid::from_raw(0)),
            Some(Gid::from_raw(socket_gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|source| socket_error("set the group of", socket_path, source))?;
        nix::sys::stat::fchmodat(
            &directory,
            name.as_c_str(),
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|source| socket_error("set the mode of", socket_path, source))?;
        Ok(())
    };
    if let Err(error) = finish() {
        let _ = nix::unistd::unlinkat(
            &directory,
            name.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        return Err(error);
    }

    Ok(Listener {
        socket,
        file: Some(SocketFile { directory, name }),
        path: socket_path.to_path_buf(),
    })
}

fn socket_error(step: &'static str, path: &Path, source: nix::Error) -> ListenerError {
    ListenerError::Socket {
        step,
        path: path.to_path_buf(),
        source,
    }
}

fn split_socket_path(socket_path: &Path) -> Result<(PathBuf, CString), ListenerError> {
    let unsafe_path = |reason: &str| ListenerError::UnsafeSocketPath {
        path: socket_path.to_path_buf(),
        reason: reason.to_string(),
    };
    let name = socket_path
        .file_name()
        .ok_or_else(|| unsafe_path("the path has no file name"))?;
    // sun_path has room for 108 bytes including the terminating NUL.
    if name.len() > 100 {
        return Err(unsafe_path("the file name is longer than 100 bytes"));
    }
    let name = CString::new(name.as_bytes()).map_err(|_| unsafe_path("the name contains NUL"))?;
    let directory = socket_path
        .parent()
        .ok_or_else(|| unsafe_path("the path has no directory"))?;
    Ok((directory.to_path_buf(), name))
}

/// Opens `path` component by component from `/` with O_NOFOLLOW, creating the last
/// component (mode 0755, owned by root) when it is missing.
///
/// Every directory on the way must be owned by root and not writable by group or others.
/// The exception is a world-writable ancestor with the sticky bit (such as /tmp), because
/// others cannot rename or remove what root created in it. The socket directory
/// itself must be owned by root and writable by nobody else.
fn open_socket_directory(path: &Path) -> Result<OwnedFd, ListenerError> {
    let components: Vec<&OsStr> = path
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut current = nix::fcntl::open("/", flags, Mode::empty()).map_err(|source| {
        ListenerError::OpenDirectory {
            path: PathBuf::from("/"),
            source,
        }
    })?;
    let mut current_path = PathBuf::from("/");
    check_ancestor(&current, &current_path)?;

    for (index, name) in components.iter().enumerate() {
        let is_last = index + 1 == components.len();
        current_path.push(name);
        let opened = nix::fcntl::openat(&current, *name, flags, Mode::empty());
        let next = match opened {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) if is_last => {
                nix::sys::stat::mkdirat(&current, *name, Mode::from_bits_truncate(0o755)).map_err(
                    |source| ListenerError::CreateDirectory {
                        path: current_path.clone(),
                        source,
                    },
                )?;
                nix::fcntl::openat(&current, *name, flags, Mode::empty()).map_err(|source| {
                    ListenerError::OpenDirectory {
                        path: current_path.clone(),
                        source,
                    }
                })?
            }
            Err(nix::Error::ELOOP) | Err(nix::Error::ENOTDIR) => {
                return Err(ListenerError::UnsafeDirectory {
                    path: current_path,
                    reason: "it is a symlink or not a directory".to_string(),
                });
            }
            Err(source) => {
                return Err(ListenerError::OpenDirectory {
                    path: current_path,
                    source,
                });
            }
        };
        if is_last {
            check_socket_directory(&next, &current_path)?;
        } else {
            check_ancestor(&next, &current_path)?;
        }
        current = next;
    }
    Ok(current)
}

fn stat_directory(fd: &OwnedFd, path: &Path) -> Result<FileStat, ListenerError> {
    nix::sys::stat::fstat(fd).map_err(|source| ListenerError::OpenDirectory {
        path: path.to_path_buf(),
        source,
    })
}

fn check_ancestor(fd: &OwnedFd, path: &Path) -> Result<(), ListenerError> {
    let stat = stat_directory(fd, path)?;
    let unsafe_directory = |reason: String| ListenerError::UnsafeAncestor {
        path: path.to_path_buf(),
        reason,
    };
    if stat.st_uid != 0 {
        return Err(unsafe_directory(format!(
            "it is owned by uid {}, not root",
            stat.st_uid
        )));
    }
    let writable_by_others = stat.st_mode & 0o022 != 0;
    let sticky = stat.st_mode & libc::S_ISVTX != 0;
    if writable_by_others && !sticky {
        return Err(unsafe_directory(format!(
            "it is writable by group or others (mode {:o}) without the sticky bit",
            stat.st_mode & 0o7777
        )));
    }
    Ok(())
}

fn check_socket_directory(fd: &OwnedFd, path: &Path) -> Result<(), ListenerError> {
    let stat = stat_directory(fd, path)?;
    if stat.st_uid != 0 {
        return Err(ListenerError::UnsafeDirectory {
            path: path.to_path_buf(),
            reason: format!(
                "it is owned by uid {}, not root; remove it or give it to root",
                stat.st_uid
            ),
        });
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(ListenerError::UnsafeDirectory {
            path: path.to_path_buf(),
            reason: format!(
                "it is writable by group or others (mode {:o}); use mode 0755",
                stat.st_mode & 0o7777
            ),
        });
    }
    Ok(())
}

/// Removes a socket left by an earlier run: only a socket file owned by root, and only
/// when nothing accepts connections on it. Anything else at the path is refused.
fn remove_stale_socket(
    directory: &OwnedFd,
    name: &CString,
    socket_path: &Path,
) -> Result<(), ListenerError> {
    let stat =
        match nix::sys::stat::fstatat(directory, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(nix::Error::ENOENT) => return Ok(()),
            Err(source) => return Err(socket_error("inspect", socket_path, source)),
        };
    let file_type = SFlag::from_bits_truncate(stat.st_mode & libc::S_IFMT);
    let refuse = |reason: &str| ListenerError::UnsafeSocketPath {
        path: socket_path.to_path_buf(),
        reason: reason.to_string(),
    };
    if file_type != SFlag::S_IFSOCK {
        let what = if file_type == SFlag::S_IFLNK {
            "it is a symlink"
        } else {
            "it is not a socket"
        };
        return Err(refuse(what));
    }
    if stat.st_uid != 0 {
        return Err(refuse("the existing socket is not owned by root"));
    }
    if socket_is_live(directory, name) {
        return Err(ListenerError::InUse {
            path: socket_path.to_path_buf(),
        });
    }
    nix::unistd::unlinkat(
        directory,
        name.as_c_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    )
    .map_err(|source| socket_error("remove stale", socket_path, source))
}

/// Returns whether something accepts connections on the socket `name` in `directory`.
/// Connects relative to the directory, like bind above (still single-threaded).
fn socket_is_live(directory: &OwnedFd, name: &CString) -> bool {
    let Ok(probe) = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let connected = nix::unistd::fchdir(directory).and_then(|()| {
        let address = UnixAddr::new(Path::new(OsStr::from_bytes(name.as_bytes())))?;
        socket::connect(probe.as_raw_fd(), &address)
    });
    let _ = nix::unistd::chdir("/");
    connected.is_ok()
}
