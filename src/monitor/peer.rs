//! Peer identity from the kernel, and the global authorised_peer_* filter.
//!
//! Every value comes from the kernel: SO_PEERCRED (uid, gid, pid at connect time),
//! SO_PEERGROUPS (supplementary groups at connect time) and SO_PEERPIDFD (a handle on the
//! connecting process that a recycled pid cannot impersonate). Nothing the peer sends is
//! read here.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::socket::{getsockopt, sockopt};

use crate::config::Config;
use crate::policy::Peer;
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("failed to read SO_PEERCRED")]
    Credentials(#[source] nix::Error),
    #[error("failed to read SO_PEERGROUPS")]
    Groups(#[source] std::io::Error),
}

/// Reads the peer's identity. The executable is `None` when it cannot be read reliably.
pub fn read_peer(connection: &OwnedFd) -> Result<Peer, PeerError> {
    let credentials =
        getsockopt(connection, sockopt::PeerCredentials).map_err(PeerError::Credentials)?;
    let groups = sys::peer_groups(connection.as_fd()).map_err(PeerError::Groups)?;
    let uid = credentials.uid();
    let gid = credentials.gid();
    let pid = credentials.pid();
    let exe = read_peer_executable(connection, pid, uid, gid);
    Ok(Peer {
        uid,
        gid,
        pid,
        groups,
        exe,
    })
}

/// Reads /proc/PID/exe and then checks, through the pidfd taken from the socket, that the
/// process which connected is still alive. A pidfd keeps its pid from being reused, so a
/// live pidfd means the link that was read belongs to the connecting process.
///
/// The read runs with this thread's filesystem ids set to the peer's, because the kernel
/// allows reading another user's /proc/PID/exe only to that user or to CAP_SYS_PTRACE,
/// which the monitor does not keep.
fn read_peer_executable(connection: &OwnedFd, pid: i32, uid: u32, gid: u32) -> Option<PathBuf> {
    let pidfd = sys::peer_pidfd(connection.as_fd()).ok()?;
    let (old_uid, old_gid) = sys::set_thread_fs_ids(uid, gid);
    let link = std::fs::read_link(format!("/proc/{pid}/exe"));
    sys::set_thread_fs_ids(old_uid, old_gid);
    let link = link.ok()?;
    if !sys::pidfd_is_alive(pidfd.as_fd()) {
        return None;
    }
    Some(link)
}

/// The global filter from authorised_peer_* parameters, with names resolved at start.
#[derive(Debug, Clone, Default)]
pub struct PeerFilter {
    pub uid: Option<u32>,
    /// The parameter that set `uid`, for messages.
    pub uid_parameter: &'static str,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    pub process_name: Option<String>,
}

impl PeerFilter {
    /// Builds the filter; `username_uid` is authorised_peer_username resolved to a uid.
    pub fn new(config: &Config, username_uid: Option<u32>) -> PeerFilter {
        let uid_parameter = if config.authorised_peer_uid.is_some() {
            "authorised_peer_uid"
        } else {
            "authorised_peer_username"
        };
        PeerFilter {
            uid: config.authorised_peer_uid.or(username_uid),
            uid_parameter,
            gid: config.authorised_peer_gid,
            pid: config.authorised_peer_pid,
            process_name: config.authorised_peer_process_name.clone(),
        }
    }

    /// Returns `Err` with the name of the first check that failed. Every value that is
    /// set must match.
    pub fn check(&self, peer: &Peer) -> Result<(), &'static str> {
        if self.uid.is_some_and(|uid| uid != peer.uid) {
            return Err(self.uid_parameter);
        }
        if self.gid.is_some_and(|gid| gid != peer.gid) {
            return Err("authorised_peer_gid");
        }
        if self.pid.is_some_and(|pid| pid != peer.pid) {
            return Err("authorised_peer_pid");
        }
        if let Some(name) = &self.process_name {
            let matches = peer
                .exe
                .as_ref()
                .and_then(|exe| exe.file_name())
                .is_some_and(|file_name| file_name == name.as_str());
            if !matches {
                return Err("authorised_peer_process_name");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            uid: 33,
            gid: 33,
            pid: 100,
            groups: vec![33],
            exe: Some(PathBuf::from("/usr/bin/php8.2")),
        }
    }

    #[test]
    fn filter_empty_accepts_everyone() {
        assert_eq!(PeerFilter::default().check(&peer()), Ok(()));
    }

    #[test]
    fn filter_uid_mismatch_named() {
        let filter = PeerFilter {
            uid: Some(0),
            uid_parameter: "authorised_peer_uid",
            ..PeerFilter::default()
        };
        assert_eq!(filter.check(&peer()), Err("authorised_peer_uid"));
    }

    #[test]
    fn filter_process_name_matches_file_name() {
        let filter = PeerFilter {
            process_name: Some("php8.2".to_string()),
            ..PeerFilter::default()
        };
        assert_eq!(filter.check(&peer()), Ok(()));
    }

    #[test]
    fn filter_process_name_unknown_exe_rejected() {
        let filter = PeerFilter {
            process_name: Some("php8.2".to_string()),
            ..PeerFilter::default()
        };
        let mut unknown = peer();
        unknown.exe = None;
        assert_eq!(filter.check(&unknown), Err("authorised_peer_process_name"));
    }
}
