//! Root-only tests of the sandbox: the privilege drop, landlock denials, seccomp kills and
//! the monitor's capability sets, each checked against the real kernel.
//!
//! Every case runs in a child forked from the test thread, so the uid switch, the filter and
//! the capability changes never reach the test harness. A child reports a failed check by
//! writing a message to a pipe and exiting with status 1, and the parent asserts on the wait
//! status and that message.
//!
//! Forking from the multi-threaded harness is safe for these bodies. The seccomp cases make
//! only raw system calls in the child, with a filter built before the fork. The other cases
//! also allocate, which is safe because glibc's fork takes the malloc locks around the fork.
//! No child touches stdout, stderr or any other lock a harness thread may have held at the
//! fork. Re-executing the test binary per case was rejected: libtest runs even a single
//! selected test on its own thread, so the filtered process would not be single-threaded.

use std::ffi::CStr;
use std::fs::{self, File};
use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use nix::errno::Errno;
use nix::mqueue::{MQ_OFlag, MqAttr, mq_open, mq_send, mq_unlink};
use nix::poll::{PollFd, PollFlags, poll, ppoll};
use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{self, ForkResult, Gid, Uid};
use secure_socket::sandbox::{
    Enforcement, SandboxError, SandboxMode, apply_seccomp, confine_parser_child, drop_privileges,
    parser_child_filter, probe_kernel_support, restrict_filesystem, restrict_monitor_capabilities,
    set_no_new_privs,
};

const NOBODY_UID: u32 = 65534;
const NOGROUP_GID: u32 = 65534;
const WWW_DATA_ID: u32 = 33;

/// CAP_KILL (5), CAP_SETGID (6) and CAP_SETUID (7), as in the `Cap*` lines of
/// /proc/PID/status.
const MONITOR_MASK: u64 = 0xe0;
/// CAP_NET_BIND_SERVICE (10).
const NET_BIND_SERVICE_MASK: u64 = 0x400;

fn require_root() {
    assert!(
        unistd::geteuid().is_root(),
        "the sandbox tests need root (euid 0) to switch users and apply filters; run \
         `cargo test --test sandbox` as root"
    );
}

/// Wait status and pipe message of a forked child.
struct ChildOutcome {
    status: WaitStatus,
    message: String,
}

/// Forks, runs `body` in the child and returns how the child ended.
///
/// The child exits with status 0 when `body` returns `Ok`, and writes the message to the
/// pipe and exits with status 1 when it returns `Err`. `body` may also end the child
/// itself, for example by being killed by the seccomp filter. Core dumps are disabled in
/// the child so that seccomp kills leave no core files.
fn run_in_child<F>(body: F) -> ChildOutcome
where
    F: FnOnce(&OwnedFd) -> Result<(), String>,
{
    let (read_end, write_end) = unistd::pipe().unwrap();

    // SAFETY: the child runs only `body` and then calls _exit, so it never returns into the
    // harness. The bodies in this file make raw system calls, allocate (glibc's fork leaves
    // the malloc locks usable in the child) and write to the pipe, and never touch stdout,
    // stderr or other locks that another harness thread may hold.
    match unsafe { unistd::fork() }.unwrap() {
        ForkResult::Child => {
            drop(read_end);
            let code = match setrlimit(Resource::RLIMIT_CORE, 0, 0) {
                Err(error) => report(
                    &write_end,
                    &format!("failed to disable core dumps: {error}"),
                ),
                Ok(()) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    body(&write_end)
                })) {
                    Ok(Ok(())) => 0,
                    Ok(Err(message)) => report(&write_end, &message),
                    Err(_) => report(&write_end, "the child body panicked"),
                },
            };
            // SAFETY: _exit ends the child without running the harness's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut message = String::new();
            File::from(read_end).read_to_string(&mut message).unwrap();
            let status = waitpid(child, None).unwrap();
            ChildOutcome { status, message }
        }
    }
}

fn report(pipe: &OwnedFd, message: &str) -> i32 {
    // A failed write leaves the message empty, and the exit status still reports the
    // failure.
    let _ = unistd::write(pipe.as_fd(), message.as_bytes());
    1
}

fn assert_exited_ok(outcome: &ChildOutcome, case: &str) {
    assert!(
        matches!(outcome.status, WaitStatus::Exited(_, 0)),
        "{case}: child ended with {:?}, message: {}",
        outcome.status,
        outcome.message
    );
}

fn assert_killed_by_sigsys(outcome: &ChildOutcome, case: &str) {
    assert!(
        matches!(outcome.status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
        "{case}: expected SIGSYS, child ended with {:?}, message: {}",
        outcome.status,
        outcome.message
    );
}

/// Applies the parser child's filter in a child, runs `attempt` and expects SIGSYS.
fn assert_filter_kills(case: &str, attempt: impl FnOnce() -> libc::c_long) {
    require_root();
    let program = parser_child_filter().unwrap();
    let outcome = run_in_child(|_| {
        set_no_new_privs().map_err(|error| format!("failed to set no_new_privs: {error}"))?;
        apply_seccomp(&program).map_err(|error| format!("failed to apply the filter: {error}"))?;
        let result = attempt();
        let errno = Errno::last();
        Err(format!(
            "{case} returned {result} ({errno}) instead of killing the child"
        ))
    });
    assert_killed_by_sigsys(&outcome, case);
}

/// Defines a test that expects the filter to kill the child at `$attempt`.
macro_rules! seccomp_kill_test {
    ($test:ident, $case:literal, $attempt:expr) => {
        #[test]
        fn $test() {
            // SAFETY: the call runs in a forked child that exits right after it. Its
            // pointer arguments are null or static C strings, so even a call the filter
            // wrongly allowed writes no memory that the child still uses.
            assert_filter_kills($case, || unsafe { $attempt });
        }
    };
}

const ETC_PASSWD: &CStr = c"/etc/passwd";

seccomp_kill_test!(
    seccomp_kills_execve,
    "execve",
    libc::syscall(
        libc::SYS_execve,
        c"/nonexistent/secure_socket".as_ptr(),
        std::ptr::null::<*const libc::c_char>(),
        std::ptr::null::<*const libc::c_char>()
    )
);

#[cfg(target_arch = "x86_64")]
seccomp_kill_test!(
    seccomp_kills_open,
    "open",
    libc::syscall(libc::SYS_open, ETC_PASSWD.as_ptr(), libc::O_RDONLY)
);

seccomp_kill_test!(
    seccomp_kills_openat,
    "openat",
    libc::syscall(
        libc::SYS_openat,
        libc::AT_FDCWD,
        ETC_PASSWD.as_ptr(),
        libc::O_RDONLY
    )
);

seccomp_kill_test!(
    seccomp_kills_socket,
    "socket",
    libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0)
);

seccomp_kill_test!(
    seccomp_kills_connect,
    "connect",
    libc::syscall(libc::SYS_connect, -1, std::ptr::null::<libc::sockaddr>(), 0)
);

seccomp_kill_test!(
    seccomp_kills_ptrace,
    "ptrace",
    libc::syscall(libc::SYS_ptrace, libc::PTRACE_PEEKDATA, 1, 0, 0)
);

// CLONE_THREAD without CLONE_SIGHAND is invalid, so a wrongly allowed call fails with
// EINVAL instead of starting a process.
seccomp_kill_test!(
    seccomp_kills_clone,
    "clone",
    libc::syscall(libc::SYS_clone, libc::CLONE_THREAD, 0, 0, 0, 0)
);

seccomp_kill_test!(
    seccomp_kills_clone3,
    "clone3",
    libc::syscall(libc::SYS_clone3, std::ptr::null::<libc::c_void>(), 0)
);

#[cfg(target_arch = "x86_64")]
seccomp_kill_test!(seccomp_kills_fork, "fork", libc::syscall(libc::SYS_fork));

seccomp_kill_test!(
    seccomp_kills_setuid,
    "setuid",
    libc::syscall(libc::SYS_setuid, 0)
);

seccomp_kill_test!(
    seccomp_kills_mq_open,
    "mq_open",
    libc::syscall(
        libc::SYS_mq_open,
        c"secure_socket_test_never_created".as_ptr(),
        libc::O_RDONLY,
        0,
        std::ptr::null::<libc::mq_attr>()
    )
);

seccomp_kill_test!(
    seccomp_kills_mprotect,
    "mprotect",
    libc::syscall(libc::SYS_mprotect, 0, 0, libc::PROT_READ)
);

seccomp_kill_test!(
    seccomp_kills_executable_mmap,
    "mmap with PROT_EXEC",
    libc::syscall(
        libc::SYS_mmap,
        0,
        4096,
        libc::PROT_READ | libc::PROT_EXEC,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0
    )
);

// Only F_GETFD is allowed, for Rust std's check before closing an OwnedFd.
seccomp_kill_test!(
    seccomp_kills_fcntl_setfl,
    "fcntl F_SETFL",
    libc::syscall(libc::SYS_fcntl, 0, libc::F_SETFL, libc::O_NONBLOCK)
);

seccomp_kill_test!(
    seccomp_kills_getrandom,
    "getrandom",
    libc::syscall(libc::SYS_getrandom, 0, 0, 0)
);

seccomp_kill_test!(
    seccomp_kills_landlock_restrict_self,
    "landlock_restrict_self",
    libc::syscall(libc::SYS_landlock_restrict_self, -1, 0)
);

// Signal 0 only checks permission, so a wrongly allowed call sends nothing.
seccomp_kill_test!(
    seccomp_kills_tgkill,
    "tgkill",
    libc::syscall(libc::SYS_tgkill, 1, 1, 0)
);

// The x32 number of write: bit 30 set on top of the x86_64 number.
#[cfg(target_arch = "x86_64")]
seccomp_kill_test!(
    seccomp_kills_x32_write,
    "x32 write",
    libc::syscall(0x4000_0000 | libc::SYS_write, -1, 0, 0)
);

// abort() first calls rt_sigprocmask, which the filter forbids, so the documented outcome
// of an abort in the child is SIGSYS and not SIGABRT.
#[test]
fn seccomp_turns_abort_into_sigsys() {
    assert_filter_kills("abort", || std::process::abort());
}

// Rust std's SIGSEGV handler resets the action with rt_sigaction before the fault repeats,
// and the filter forbids rt_sigaction, so a segmentation fault also ends with SIGSYS.
#[test]
fn seccomp_turns_segfault_into_sigsys() {
    assert_filter_kills("write through a null pointer", || {
        // SAFETY: the write faults on purpose, in a forked child that the fault ends.
        unsafe { std::ptr::write_volatile(std::ptr::null_mut::<libc::c_long>(), 1) };
        0
    });
}

/// Control case: a filter that killed every call would fail here.
#[test]
fn seccomp_allows_parser_child_calls() {
    require_root();
    let program = parser_child_filter().unwrap();
    let queue_name = format!("/secure_socket_test_{}", std::process::id());

    let outcome = run_in_child(|_| {
        // Descriptors the child would hold: a channel, a pipe and an unlinked queue.
        let (channel, monitor_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|error| format!("failed to create the socketpair: {error}"))?;
        let (pipe_read, pipe_write) =
            unistd::pipe().map_err(|error| format!("failed to create the pipe: {error}"))?;
        // nix passes mode and attributes only with Some(attributes), and O_CREAT needs both.
        let attributes = MqAttr::new(0, 4, 128, 0);
        let queue = mq_open(
            queue_name.as_str(),
            MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_WRONLY | MQ_OFlag::O_NONBLOCK,
            Mode::S_IRUSR | Mode::S_IWUSR,
            Some(&attributes),
        )
        .map_err(|error| format!("failed to create the queue: {error}"))?;
        mq_unlink(queue_name.as_str()).map_err(|error| format!("failed to unlink: {error}"))?;

        set_no_new_privs().map_err(|error| format!("failed to set no_new_privs: {error}"))?;
        apply_seccomp(&program).map_err(|error| format!("failed to apply the filter: {error}"))?;

        exercise_allowed_calls(&channel, &monitor_end, &pipe_read, &pipe_write)?;
        mq_send(&queue, b"event", 1).map_err(|error| format!("mq_send failed: {error}"))?;
        Ok(())
    });
    assert_exited_ok(&outcome, "allowed calls");
}

fn exercise_allowed_calls(
    channel: &OwnedFd,
    monitor_end: &OwnedFd,
    pipe_read: &OwnedFd,
    pipe_write: &OwnedFd,
) -> Result<(), String> {
    sendmsg::<()>(
        channel.as_raw_fd(),
        &[IoSlice::new(b"request")],
        &[],
        MsgFlags::empty(),
        None,
    )
    .map_err(|error| format!("sendmsg failed: {error}"))?;
    let mut buffer = [0u8; 16];
    let mut slices = [IoSliceMut::new(&mut buffer)];
    let received = recvmsg::<()>(
        monitor_end.as_raw_fd(),
        &mut slices,
        None,
        MsgFlags::empty(),
    )
    .map_err(|error| format!("recvmsg failed: {error}"))?;
    if received.bytes != b"request".len() {
        return Err(format!("recvmsg returned {} bytes", received.bytes));
    }

    unistd::write(pipe_write.as_fd(), b"reply").map_err(|error| format!("write: {error}"))?;
    let mut fds = [PollFd::new(pipe_read.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, 0u8).map_err(|error| format!("poll failed: {error}"))?;
    ppoll(&mut fds, None, None).map_err(|error| format!("ppoll failed: {error}"))?;
    let mut reply = [0u8; 5];
    unistd::read(pipe_read.as_fd(), &mut reply).map_err(|error| format!("read: {error}"))?;

    // Allocator: small blocks come from brk, large ones from mmap, growth uses mremap.
    let mut small: Vec<u8> = Vec::with_capacity(64);
    small.extend_from_slice(b"small");
    let mut large: Vec<u8> = vec![1; 4 << 20];
    large.resize(16 << 20, 2);
    drop(large);

    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let futex_word = AtomicU32::new(0);
    // SAFETY: each pointer refers to a live local of this function, and each call reads or
    // writes only that local or kernel state of this process.
    let results = unsafe {
        [
            (
                "clock_gettime",
                libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut time),
            ),
            (
                "futex",
                libc::syscall(
                    libc::SYS_futex,
                    futex_word.as_ptr(),
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    1,
                ),
            ),
            ("brk", libc::syscall(libc::SYS_brk, 0)),
            (
                "fcntl F_GETFD",
                libc::syscall(libc::SYS_fcntl, pipe_read.as_raw_fd(), libc::F_GETFD),
            ),
            (
                "madvise",
                libc::syscall(libc::SYS_madvise, 0, 0, libc::MADV_DONTNEED),
            ),
            (
                "sigaltstack",
                libc::syscall(
                    libc::SYS_sigaltstack,
                    std::ptr::null::<libc::stack_t>(),
                    std::ptr::null_mut::<libc::stack_t>(),
                ),
            ),
        ]
    };
    for (name, result) in results {
        if result == -1 {
            return Err(format!("{name} failed: {}", Errno::last()));
        }
    }
    Ok(())
}

/// Control case for the thread exit call: the process ends with its only thread.
#[test]
fn seccomp_allows_thread_exit() {
    require_root();
    let program = parser_child_filter().unwrap();
    let outcome = run_in_child(|_| {
        set_no_new_privs().map_err(|error| format!("failed to set no_new_privs: {error}"))?;
        apply_seccomp(&program).map_err(|error| format!("failed to apply the filter: {error}"))?;
        // SAFETY: ends the only thread of the forked child, which ends the child.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
        Err("exit returned".to_string())
    });
    assert_exited_ok(&outcome, "exit");
}

/// A stop signal during a poll with a timeout makes the kernel resume the poll through
/// restart_syscall, which the filter must allow. glibc's poll() uses the poll call only
/// on x86_64; ppoll elsewhere is restarted under its own number.
#[cfg(target_arch = "x86_64")]
#[test]
fn seccomp_allows_poll_restart_after_stop() {
    require_root();
    let program = parser_child_filter().unwrap();
    let (wake_read, wake_write) = unistd::pipe().unwrap();
    let (report_read, report_write) = unistd::pipe().unwrap();

    // SAFETY: as in run_in_child, the child makes raw system calls on descriptors it
    // already holds and ends with _exit, without touching locks of other harness threads.
    match unsafe { unistd::fork() }.unwrap() {
        ForkResult::Child => {
            drop(report_read);
            drop(wake_write);
            let code = match setrlimit(Resource::RLIMIT_CORE, 0, 0)
                .map_err(|error| error.to_string())
                .and_then(|()| set_no_new_privs().map_err(|error| error.to_string()))
                .and_then(|()| apply_seccomp(&program).map_err(|error| error.to_string()))
            {
                Err(message) => report(&report_write, &message),
                Ok(()) => {
                    let mut fds = [PollFd::new(wake_read.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, 10_000u16) {
                        Ok(1) => 0,
                        other => report(&report_write, &format!("poll returned {other:?}")),
                    }
                }
            };
            // SAFETY: _exit ends the child without running the harness's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wake_read);
            drop(report_write);

            // /proc/PID/syscall starts with the number of the call the task is blocked in.
            let syscall_path = format!("/proc/{child}/syscall");
            let poll_prefix = format!("{} ", libc::SYS_poll);
            let mut in_poll = false;
            for _ in 0..500 {
                let current = fs::read_to_string(&syscall_path).unwrap_or_default();
                if current.starts_with(&poll_prefix) {
                    in_poll = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }

            nix::sys::signal::kill(child, Signal::SIGSTOP).unwrap();
            let stopped = waitpid(child, Some(nix::sys::wait::WaitPidFlag::WUNTRACED)).unwrap();
            nix::sys::signal::kill(child, Signal::SIGCONT).unwrap();
            unistd::write(&wake_write, b"x").unwrap();

            let mut message = String::new();
            File::from(report_read)
                .read_to_string(&mut message)
                .unwrap();
            let status = waitpid(child, None).unwrap();

            assert!(
                in_poll,
                "the child never blocked in poll, message: {message}"
            );
            assert!(
                matches!(stopped, WaitStatus::Stopped(_, Signal::SIGSTOP)),
                "child did not stop: {stopped:?}"
            );
            let outcome = ChildOutcome { status, message };
            assert_exited_ok(&outcome, "poll restarted after SIGSTOP and SIGCONT");
        }
    }
}

#[test]
fn apply_seccomp_requires_no_new_privs() {
    require_root();
    let program = parser_child_filter().unwrap();
    let outcome = run_in_child(|_| {
        match apply_seccomp(&program) {
            Err(SandboxError::NoNewPrivsNotSet) => {}
            other => return Err(format!("expected NoNewPrivsNotSet, got {other:?}")),
        }
        // The filter must not be installed: openat still works.
        File::open("/etc/passwd").map_err(|error| format!("open failed: {error}"))?;
        Ok(())
    });
    assert_exited_ok(&outcome, "apply without no_new_privs");
}

#[test]
fn drop_privileges_switches_to_nobody() {
    require_root();
    let outcome = run_in_child(|_| {
        drop_privileges(NOBODY_UID, NOGROUP_GID)
            .map_err(|error| format!("drop_privileges failed: {error}"))?;

        let uids = unistd::getresuid().map_err(|error| error.to_string())?;
        let nobody = Uid::from_raw(NOBODY_UID);
        if (uids.real, uids.effective, uids.saved) != (nobody, nobody, nobody) {
            return Err(format!("uids are {uids:?}"));
        }
        let gids = unistd::getresgid().map_err(|error| error.to_string())?;
        let nogroup = Gid::from_raw(NOGROUP_GID);
        if (gids.real, gids.effective, gids.saved) != (nogroup, nogroup, nogroup) {
            return Err(format!("gids are {gids:?}"));
        }
        let groups = unistd::getgroups().map_err(|error| error.to_string())?;
        if groups != [nogroup] {
            return Err(format!("supplementary groups are {groups:?}"));
        }
        match unistd::setuid(Uid::from_raw(0)) {
            Err(Errno::EPERM) => {}
            other => return Err(format!("setuid(0) returned {other:?}, expected EPERM")),
        }
        if prctl::get_dumpable().map_err(|error| error.to_string())? {
            return Err("the process is still dumpable".to_string());
        }

        let status = read_proc_status()?;
        expect_field(&status, "Uid", "65534\t65534\t65534\t65534")?;
        expect_field(&status, "Gid", "65534\t65534\t65534\t65534")?;
        expect_field(&status, "Groups", "65534")?;
        expect_mask(&status, "CapEff", 0)?;
        expect_mask(&status, "CapPrm", 0)?;
        expect_mask(&status, "CapAmb", 0)?;
        Ok(())
    });
    assert_exited_ok(&outcome, "drop to nobody");
}

#[test]
fn drop_privileges_switches_to_www_data() {
    require_root();
    let outcome = run_in_child(|_| {
        drop_privileges(WWW_DATA_ID, WWW_DATA_ID)
            .map_err(|error| format!("drop_privileges failed: {error}"))?;
        let status = read_proc_status()?;
        expect_field(&status, "Uid", "33\t33\t33\t33")?;
        expect_field(&status, "Gid", "33\t33\t33\t33")?;
        expect_field(&status, "Groups", "33")?;
        Ok(())
    });
    assert_exited_ok(&outcome, "drop to www-data");
}

#[test]
fn drop_privileges_fails_without_privilege() {
    require_root();
    let outcome = run_in_child(|_| {
        drop_privileges(NOBODY_UID, NOGROUP_GID)
            .map_err(|error| format!("first drop_privileges failed: {error}"))?;
        match drop_privileges(WWW_DATA_ID, WWW_DATA_ID) {
            Err(SandboxError::SetGroups {
                source: Errno::EPERM,
                ..
            }) => Ok(()),
            other => Err(format!(
                "second drop returned {other:?}, expected SetGroups EPERM"
            )),
        }
    });
    assert_exited_ok(&outcome, "second drop as nobody");
}

/// Directory under the system temporary directory, removed when dropped.
struct TestDirectory(PathBuf);

impl TestDirectory {
    fn create(purpose: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let number = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "secure_socket_{purpose}_{}_{number}",
            std::process::id()
        ));
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        TestDirectory(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDirectory {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn expect_eacces<T>(result: std::io::Result<T>, action: &str) -> Result<(), String> {
    match result {
        Ok(_) => Err(format!("{action} succeeded under landlock")),
        Err(error) if error.raw_os_error() == Some(libc::EACCES) => Ok(()),
        Err(error) => Err(format!("{action} failed with {error}, expected EACCES")),
    }
}

#[test]
fn landlock_denies_readable_file() {
    require_root();
    let directory = TestDirectory::create("landlock");
    let file = directory.path().join("readable");
    fs::write(&file, b"content").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let writable = directory.path().join("writable");
    fs::create_dir(&writable).unwrap();
    fs::set_permissions(&writable, fs::Permissions::from_mode(0o777)).unwrap();

    let outcome = run_in_child(|_| {
        File::open(&file).map_err(|error| format!("open as root failed: {error}"))?;
        drop_privileges(NOBODY_UID, NOGROUP_GID)
            .map_err(|error| format!("drop_privileges failed: {error}"))?;

        // The file permissions let user nobody read the file, list the directory and write
        // to the second one, so the denials below come from landlock.
        File::open(&file).map_err(|error| format!("open as nobody failed: {error}"))?;
        fs::read_dir(directory.path()).map_err(|error| format!("listing failed: {error}"))?;
        File::create(writable.join("before"))
            .map_err(|error| format!("create as nobody failed: {error}"))?;

        let status = restrict_filesystem(SandboxMode::Strict)
            .map_err(|error| format!("restrict_filesystem failed: {error}"))?;
        if status.enforcement == Enforcement::NotEnforced {
            return Err(format!("strict mode returned {status}"));
        }

        expect_eacces(File::open(&file), "opening the readable file")?;
        expect_eacces(fs::read_dir(directory.path()), "listing the directory")?;
        expect_eacces(File::create(writable.join("after")), "creating a file")?;
        expect_eacces(
            fs::create_dir(writable.join("subdirectory")),
            "creating a directory",
        )?;
        Ok(())
    });
    assert_exited_ok(&outcome, "landlock denial");
    assert!(
        !writable.join("after").exists(),
        "a file was created under landlock"
    );
}

#[test]
fn landlock_status_reports_kernel_abi() {
    require_root();
    let kernel_abi = probe_kernel_support().landlock_abi;
    assert!(kernel_abi.is_some(), "the kernel reports no landlock ABI");
    let outcome = run_in_child(|_| {
        let status = restrict_filesystem(SandboxMode::BestEffort)
            .map_err(|error| format!("restrict_filesystem failed: {error}"))?;
        if status.kernel_abi != kernel_abi {
            return Err(format!("status {status:?}, probe {kernel_abi:?}"));
        }
        let expected = if kernel_abi >= Some(status.pinned_abi) {
            Enforcement::FullyEnforced
        } else {
            Enforcement::PartiallyEnforced
        };
        if status.enforcement != expected {
            return Err(format!("status {status:?}, expected {expected:?}"));
        }
        Ok(())
    });
    assert_exited_ok(&outcome, "landlock status");
}

#[test]
fn kernel_supports_both_layers() {
    require_root();
    let support = probe_kernel_support();
    assert!(support.landlock_abi.is_some(), "no landlock: {support:?}");
    assert!(support.seccomp, "no seccomp filtering: {support:?}");
}

/// The whole confinement sequence of the parser child, then a forbidden call.
#[test]
fn confine_parser_child_then_openat_kills() {
    require_root();
    let outcome = run_in_child(|pipe| {
        drop_privileges(NOBODY_UID, NOGROUP_GID)
            .map_err(|error| format!("drop_privileges failed: {error}"))?;
        let status = confine_parser_child(SandboxMode::Strict)
            .map_err(|error| format!("confine_parser_child failed: {error}"))?;
        if !status.seccomp || status.landlock.enforcement == Enforcement::NotEnforced {
            return Err(format!("incomplete confinement: {status}"));
        }
        report(pipe, &format!("confined: {status}"));
        // SAFETY: the arguments are a static C string and flags, and the call is expected to
        // kill the child.
        unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                ETC_PASSWD.as_ptr(),
                libc::O_RDONLY,
            )
        };
        Err("openat returned after confinement".to_string())
    });
    assert_killed_by_sigsys(&outcome, "openat after confine_parser_child");
    assert!(
        outcome.message.starts_with("confined: landlock"),
        "message: {}",
        outcome.message
    );
}

/// The parser creates HashSet values after confinement. The fork happens on a new thread,
/// whose hash keys are not yet seeded, so only confine_parser_child can have seeded them.
#[test]
fn confine_parser_child_allows_hash_set() {
    require_root();
    let outcome = std::thread::spawn(|| {
        run_in_child(|_| {
            confine_parser_child(SandboxMode::Strict)
                .map_err(|error| format!("confine_parser_child failed: {error}"))?;
            let mut seen = std::collections::HashSet::new();
            seen.insert("key");
            Ok(())
        })
    })
    .join()
    .unwrap();
    assert_exited_ok(&outcome, "HashSet after confinement");
}

fn read_proc_status() -> Result<String, String> {
    fs::read_to_string("/proc/self/status")
        .map_err(|error| format!("failed to read /proc/self/status: {error}"))
}

fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == key).then(|| value.trim())
    })
}

fn expect_field(status: &str, key: &str, expected: &str) -> Result<(), String> {
    match field(status, key) {
        Some(value) if value == expected => Ok(()),
        other => Err(format!("{key} is {other:?}, expected {expected:?}")),
    }
}

fn mask(status: &str, key: &str) -> Result<u64, String> {
    let value = field(status, key).ok_or_else(|| format!("{key} missing"))?;
    u64::from_str_radix(value, 16).map_err(|error| format!("{key} {value:?}: {error}"))
}

fn expect_mask(status: &str, key: &str, expected: u64) -> Result<(), String> {
    let found = mask(status, key)?;
    if found == expected {
        Ok(())
    } else {
        Err(format!("{key} is {found:#x}, expected {expected:#x}"))
    }
}

#[test]
fn monitor_capabilities_without_scripts() {
    require_root();
    let outcome = run_in_child(|_| {
        restrict_monitor_capabilities(&caps::CapsHashSet::new(), false)
            .map_err(|error| format!("restrict_monitor_capabilities failed: {error}"))?;
        let status = read_proc_status()?;
        expect_mask(&status, "CapEff", MONITOR_MASK)?;
        expect_mask(&status, "CapPrm", MONITOR_MASK)?;
        expect_mask(&status, "CapBnd", MONITOR_MASK)?;
        expect_mask(&status, "CapInh", 0)?;
        expect_mask(&status, "CapAmb", 0)?;
        Ok(())
    });
    assert_exited_ok(&outcome, "monitor capabilities");
}

#[test]
fn monitor_capabilities_with_script_capability() {
    require_root();
    let outcome = run_in_child(|_| {
        let scripts: caps::CapsHashSet = [caps::Capability::CAP_NET_BIND_SERVICE].into();
        restrict_monitor_capabilities(&scripts, false)
            .map_err(|error| format!("restrict_monitor_capabilities failed: {error}"))?;
        let status = read_proc_status()?;
        expect_mask(&status, "CapEff", MONITOR_MASK)?;
        expect_mask(&status, "CapPrm", MONITOR_MASK | NET_BIND_SERVICE_MASK)?;
        expect_mask(&status, "CapBnd", MONITOR_MASK | NET_BIND_SERVICE_MASK)?;
        expect_mask(&status, "CapInh", 0)?;
        Ok(())
    });
    assert_exited_ok(&outcome, "monitor capabilities with a script capability");
}

#[test]
fn monitor_capabilities_keep_full_bounding() {
    require_root();
    let outcome = run_in_child(|_| {
        let before = mask(&read_proc_status()?, "CapBnd")?;
        restrict_monitor_capabilities(&caps::CapsHashSet::new(), true)
            .map_err(|error| format!("restrict_monitor_capabilities failed: {error}"))?;
        let status = read_proc_status()?;
        expect_mask(&status, "CapBnd", before)?;
        expect_mask(&status, "CapEff", MONITOR_MASK)?;
        expect_mask(&status, "CapPrm", MONITOR_MASK)?;
        Ok(())
    });
    assert_exited_ok(&outcome, "monitor capabilities with the full bounding set");
}
