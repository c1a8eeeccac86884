//! Raw Linux system calls that nix and std do not wrap. Every `unsafe` block of the
//! monitor outside the sandbox module lives here, each with the invariant it relies on.
//!
//! Inputs are descriptors and ids owned by the caller; nothing here reads client bytes.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub mod spawn;

/// Most supplementary groups SO_PEERGROUPS can return (the kernel's NGROUPS_MAX).
const NGROUPS_MAX: usize = 65_536;

/// Reads the peer's supplementary groups (SO_PEERGROUPS), as recorded by the kernel when
/// the peer called connect().
pub fn peer_groups(socket: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut length = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `socket` is an open descriptor borrowed for this call; `groups` is a live
        // buffer of exactly `length` bytes, and the kernel writes at most `length` bytes.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast::<c_void>(),
                &mut length,
            )
        };
        let count = length as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        // ERANGE reports the size needed in `length`.
        if error.raw_os_error() == Some(libc::ERANGE)
            && count > groups.len()
            && count <= NGROUPS_MAX
        {
            groups.resize(count, 0);
            continue;
        }
        return Err(error);
    }
}

/// Returns a pidfd for the peer process (SO_PEERPIDFD, Linux 6.5 and later). The pidfd
/// refers to the process that connected, even if its pid is later reused.
pub fn peer_pidfd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `socket` is an open descriptor; `fd` is a live c_int and `length` its size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast::<c_void>(),
            &mut length,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the kernel installed a new descriptor `fd` that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a pidfd for `pid` (pidfd_open(2)).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the kernel installed a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// Returns a descriptor of /dev/null, opened for reading and writing on first use and
/// kept for the monitor's lifetime, for the standard streams of the processes it starts.
pub fn dev_null() -> io::Result<BorrowedFd<'static>> {
    static DEV_NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_fd());
    }
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(DEV_NULL.get_or_init(|| OwnedFd::from(opened)).as_fd())
}

/// Sends `signal` to the process a pidfd refers to (pidfd_send_signal(2)); unlike kill
/// with a pid, this cannot reach another process that reused the pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd is an open descriptor; a null siginfo and zero flags are valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns whether the process a pidfd refers to is still running, using
/// pidfd_send_signal with signal 0 (a permission and existence check, nothing is sent).
pub fn pidfd_is_alive(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: pidfd is an open descriptor; a null siginfo and zero flags are valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

/// Sets the filesystem uid and gid of the calling thread only (the raw system calls act
/// per thread, unlike glibc wrappers of setuid). Returns the previous values.
///
/// The monitor uses this to read /proc/PID/exe of a peer with the peer's own filesystem
/// identity, so that the kernel's ptrace access check passes without CAP_SYS_PTRACE.
pub fn set_thread_fs_ids(uid: u32, gid: u32) -> (u32, u32) {
    // SAFETY: setfsgid and setfsuid take one integer and touch no memory of this
    // process. They return the previous id.
    let old_gid = unsafe { libc::syscall(libc::SYS_setfsgid, gid) } as u32;
    // SAFETY: as above.
    let old_uid = unsafe { libc::syscall(libc::SYS_setfsuid, uid) } as u32;
    (old_uid, old_gid)
}

/// Calls getppid, which the parser child's seccomp filter does not allow, so the kernel
/// kills the calling process. Only in builds with the test-only `fault-injection`
/// feature.
#[cfg(feature = "fault-injection")]
pub fn call_forbidden_syscall() {
    // SAFETY: getppid takes no arguments and touches no memory.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

/// Tunes glibc's allocator for a monitor with one thread per connection. It fixes the mmap
/// threshold at 128 KiB, so that the monitor's per-session buffers
/// (about 200 KiB each) come from mmap and return to the kernel when a session ends.
/// Without it glibc raises the threshold after the first such buffer is freed, and later
/// ones stay in its arenas: the benchmark in docs/BENCHMARKS.md measured monitor RSS
/// after 200 connections at 32.4 MiB without this and 9.2 MiB with it.
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator tuning; it is called at start, before any
    // other thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    // At most two malloc arenas instead of glibc's eight per CPU: session threads each
    // touch an arena of their own otherwise. Measured at 200 connections: 0.45 MiB less.
    // SAFETY: as above.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
}

/// Fills `buffer` from the kernel's random number generator.
pub fn fill_random(buffer: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: `rest` is a live, writable buffer of `rest.len()` bytes.
        let rc = unsafe { libc::getrandom(rest.as_mut_ptr().cast::<c_void>(), rest.len(), 0) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        filled += rc as usize;
    }
    Ok(())
}

/// Returns a random u64.
pub fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    fill_random(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Marks every descriptor from 3 up close-on-exec (close_range(2) with
/// CLOSE_RANGE_CLOEXEC): used at start for descriptors the broker inherited.
pub fn mark_inherited_cloexec() -> io::Result<()> {
    pre_exec::cloexec_from_3()
}

/// Steps run in a child between clone and exec (see [`spawn`]). The child shares the
/// memory of the multi-threaded monitor, so everything here makes raw system calls only:
/// no allocation, no locks, no glibc wrapper that keeps state.
pub mod pre_exec {
    use std::io;

    fn check(rc: libc::c_int) -> io::Result<()> {
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Makes the process the leader of a new process group in its session, and detaches
    /// it from the session's controlling terminal, if there is one.
    ///
    /// This replaces setsid: with `kernel.sched_autogroup_enabled` every new session is a
    /// scheduling group of its own, which gave each script as much CPU as the monitor and
    /// every other session together, and stretched the broker's tail latencies. In one
    /// process group of the monitor's session the scripts share the monitor's group.
    pub fn new_process_group() -> io::Result<()> {
        // SAFETY: setpgid takes integers only; 0, 0 means this process, its own pid.
        check(unsafe { libc::setpgid(0, 0) })?;
        // SAFETY: the path is a NUL-terminated literal; the call returns a descriptor or -1.
        let terminal = unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/dev/tty".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        } as libc::c_int;
        if terminal == -1 {
            // ENXIO: no controlling terminal, the usual case for a daemon. Any other
            // error leaves the terminal attached, so it fails the start.
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::ENXIO) => Ok(()),
                _ => Err(error),
            };
        }
        // SAFETY: `terminal` is the descriptor opened above; TIOCNOTTY takes no argument.
        // For a process that does not lead its session it detaches only this process.
        let detached = check(unsafe { libc::ioctl(terminal, libc::TIOCNOTTY) });
        // SAFETY: `terminal` was opened above and is closed once.
        unsafe { libc::close(terminal) };
        detached
    }

    /// Asks the kernel to SIGKILL this process when the thread that started it exits, and
    /// fails when that thread's process is already gone (the parent is no longer
    /// `parent_pid`). Must come after the uid change, which clears the setting.
    pub fn kill_with_parent(parent_pid: libc::pid_t) -> io::Result<()> {
        prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0)?;
        // SAFETY: getppid takes no arguments and touches no memory.
        if unsafe { libc::getppid() } != parent_pid {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        Ok(())
    }

    /// Marks every descriptor from 3 up close-on-exec (close_range(2) with
    /// CLOSE_RANGE_CLOEXEC), so the script inherits only stdin, stdout and stderr.
    /// Descriptors std itself needs until exec stay usable.
    pub fn cloexec_from_3() -> io::Result<()> {
        // SAFETY: close_range takes integers only; with CLOSE_RANGE_CLOEXEC it closes
        // nothing, it only sets a flag.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        check(rc as libc::c_int)
    }

    /// Sets one resource limit, soft and hard.
    pub fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: `limit` is a live rlimit value; setrlimit is async-signal-safe.
        check(unsafe { libc::setrlimit(resource, &limit) })
    }

    /// Capabilities a script starts with, as bit masks prepared before clone.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ScriptCapabilities {
        /// No change: a root script gets the bounding set, any other user nothing.
        Default,
        /// A root script that gets exactly `keep`: every other capability is dropped from
        /// its bounding set, which needs CAP_SETPCAP from `monitor_permitted`.
        RootOnly { keep: u64, monitor_permitted: u64 },
        /// A non-root script that gets `keep` as ambient capabilities.
        Ambient { keep: u64 },
    }

    /// Highest capability number the loops below try; the kernel rejects unknown ones
    /// with EINVAL, which is ignored.
    const LAST_CAPABILITY: u32 = 63;

    /// `struct __user_cap_header_struct` of linux/capability.h.
    #[repr(C)]
    struct CapabilityHeader {
        version: u32,
        pid: libc::c_int,
    }

    /// `struct __user_cap_data_struct` of linux/capability.h.
    #[repr(C)]
    struct CapabilityData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    /// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two data elements.
    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

    /// Sets effective, permitted and inheritable of the calling thread (capset(2)).
    fn set_capabilities(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        let mut header = CapabilityHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let low = |mask: u64| mask as u32;
        let high = |mask: u64| (mask >> 32) as u32;
        let data = [
            CapabilityData {
                effective: low(effective),
                permitted: low(permitted),
                inheritable: low(inheritable),
            },
            CapabilityData {
                effective: high(effective),
                permitted: high(permitted),
                inheritable: high(inheritable),
            },
        ];
        // SAFETY: `header` and `data` are live and laid out as capset(2) requires for
        // version 3 (one header, two data elements); the kernel only reads them.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        check(rc as libc::c_int)
    }

    fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> io::Result<()> {
        // SAFETY: the prctl options used here take integer arguments only.
        check(unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) })
    }

    /// Switches to the script's user and sets its capabilities: supplementary groups,
    /// then gid, then uid, because changing groups needs the privilege that the uid
    /// change gives up. Capability steps sit around the uid change as each plan needs.
    pub fn switch_user(
        uid: u32,
        gid: u32,
        groups: &[u32],
        capabilities: ScriptCapabilities,
    ) -> io::Result<()> {
        if let ScriptCapabilities::RootOnly {
            keep,
            monitor_permitted,
        } = capabilities
        {
            // Raise CAP_SETPCAP (held in permitted only) to drop bounding capabilities.
            set_capabilities(monitor_permitted, monitor_permitted, 0)?;
            for capability in 0..=LAST_CAPABILITY {
                if keep & (1u64 << capability) == 0 {
                    match prctl(libc::PR_CAPBSET_DROP, capability.into(), 0) {
                        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {}
                        other => other?,
                    }
                }
            }
        }
        if let ScriptCapabilities::Ambient { .. } = capabilities {
            // Keep permitted across the uid change so ambient can be raised after it.
            prctl(libc::PR_SET_KEEPCAPS, 1, 0)?;
        }

        // Raw system calls, not glibc's wrappers: those make every thread of the process
        // change its credentials, and a child started by `spawn` shares the monitor's
        // memory and so glibc's list of the monitor's threads.
        // SAFETY: `groups` is a live slice; the kernel copies it.
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        check(rc as libc::c_int)?;
        // SAFETY: integer arguments only.
        check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } as libc::c_int)?;
        // SAFETY: integer arguments only.
        check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } as libc::c_int)?;

        if let ScriptCapabilities::Ambient { keep } = capabilities {
            prctl(libc::PR_SET_KEEPCAPS, 0, 0)?;
            set_capabilities(0, keep, keep)?;
            for capability in 0..=LAST_CAPABILITY {
                if keep & (1u64 << capability) != 0 {
                    prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        capability.into(),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Takes ownership of the two descriptors a parser child inherits and closes every other
/// descriptor, standard input, output and error included, so that the child holds only
/// what it needs before it is confined.
pub fn take_child_descriptors(channel: RawFd, queue: RawFd) -> io::Result<(OwnedFd, OwnedFd)> {
    for fd in [channel, queue] {
        // SAFETY: F_GETFD only reads the descriptor flags; an invalid fd yields EBADF.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    if channel < 3 || queue < 3 || channel == queue {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let (low, high) = (channel.min(queue) as u32, channel.max(queue) as u32);
    let ranges = [(0, low - 1), (low + 1, high - 1), (high + 1, u32::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range closes descriptors this process owns and no Rust object
        // refers to: at this point of the child's start only std's standard streams
        // (which Rust never closes itself) and inherited strays exist.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: both descriptors were checked open above and nothing else owns them.
    let owned = unsafe { (OwnedFd::from_raw_fd(channel), OwnedFd::from_raw_fd(queue)) };
    Ok(owned)
}

/// Takes ownership of a descriptor received with SCM_RIGHTS.
pub fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process when the message was received,
    // and nothing else refers to it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
