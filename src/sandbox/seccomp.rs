//! Seccomp allowlist of the parser child.
//!
//! Trusted input: none from outside. The allowlist is a constant of this file, and the
//! architecture is the one the binary was built for.
//!
//! Any system call outside the allowlist kills the whole process (`SECCOMP_RET_KILL_PROCESS`)
//! with SIGSYS. The filter that seccompiler builds first compares the architecture in
//! `seccomp_data` with the target and kills on a mismatch, so the other system call table
//! of a multi-ABI kernel (i386 on x86_64, for example) cannot reach the allowed numbers.
//! x32 system calls on x86_64 carry bit 30 in their number, so they match no entry below.
//!
//! The child does not get `rt_sigprocmask`, `rt_sigaction`, `getpid`, `gettid` or
//! `tgkill`. A Rust abort (after a panic while panicking, an allocation failure or a stack
//! overflow, for example) and a segmentation fault therefore end with SIGSYS at the first
//! of these calls, instead of SIGABRT or SIGSEGV. The kernel's seccomp audit record names
//! that call, which distinguishes such a crash from an attack. Allowing `tgkill` would
//! let a compromised child signal the parser children of other clients, which run as the
//! same user, on kernels without landlock signal scoping (ABI 6).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SandboxError;
use super::privdrop::require_no_new_privs;

/// Argument checks of one allowed system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arguments {
    /// Any arguments.
    Any,
    /// The `prot` argument (index 2 of mmap) must not contain `PROT_EXEC`.
    NoExecProtection,
    /// The `cmd` argument (index 1 of fcntl) must be `F_GETFD`.
    GetDescriptorFlags,
}

/// One entry of the allowlist, with its number on each supported architecture.
#[derive(Debug, Clone, Copy)]
struct AllowedSyscall {
    name: &'static str,
    x86_64: Option<i64>,
    aarch64: Option<i64>,
    arguments: Arguments,
}

impl AllowedSyscall {
    const fn both(name: &'static str, x86_64: i64, aarch64: i64) -> Self {
        AllowedSyscall {
            name,
            x86_64: Some(x86_64),
            aarch64: Some(aarch64),
            arguments: Arguments::Any,
        }
    }

    const fn x86_64_only(name: &'static str, x86_64: i64) -> Self {
        AllowedSyscall {
            name,
            x86_64: Some(x86_64),
            aarch64: None,
            arguments: Arguments::Any,
        }
    }

    const fn with_arguments(self, arguments: Arguments) -> Self {
        AllowedSyscall { arguments, ..self }
    }

    fn number(&self, arch: TargetArch) -> Option<i64> {
        match arch {
            TargetArch::x86_64 => self.x86_64,
            TargetArch::aarch64 => self.aarch64,
            TargetArch::riscv64 => None,
        }
    }
}

/// System calls the parser child makes after it is confined. The x86_64 numbers are those
/// of libc's `SYS_*` constants (a unit test compares them), the aarch64 numbers those of
/// the kernel header asm-generic/unistd.h.
const ALLOWED_SYSCALLS: &[AllowedSyscall] = &[
    // Parser: reads varlink requests from the client socket.
    AllowedSyscall::both("read", 0, 63),
    // Parser: writes varlink replies to the client socket.
    AllowedSyscall::both("write", 1, 64),
    // Monitor channel: receives the client descriptor, the peer identity and results.
    AllowedSyscall::both("recvmsg", 47, 212),
    // Monitor channel: sends Exec, List and Bye requests.
    AllowedSyscall::both("sendmsg", 46, 211),
    // Request timeout: glibc's poll() uses this call on x86_64.
    AllowedSyscall::x86_64_only("poll", 7),
    // Request timeout: glibc's poll() uses ppoll where poll does not exist (aarch64).
    AllowedSyscall::both("ppoll", 271, 73),
    // Kernel: resumes a poll with a timeout after a stop signal (SIGSTOP, then SIGCONT).
    AllowedSyscall::both("restart_syscall", 219, 128),
    // Parser: closes the client socket and the channel at the end of the connection.
    AllowedSyscall::both("close", 3, 57),
    // Rust std: with debug assertions, dropping an OwnedFd first checks it with F_GETFD.
    AllowedSyscall::both("fcntl", 72, 25).with_arguments(Arguments::GetDescriptorFlags),
    // Audit events: glibc's mq_send() is a wrapper around mq_timedsend.
    AllowedSyscall::both("mq_timedsend", 242, 182),
    // Timeouts and durations: the vDSO serves them, the system call is its fallback.
    AllowedSyscall::both("clock_gettime", 228, 113),
    // Rust std: Mutex, Once and OnceLock wait and wake through futexes.
    AllowedSyscall::both("futex", 202, 98),
    // Allocator: glibc malloc grows and shrinks the main heap.
    AllowedSyscall::both("brk", 12, 214),
    // Allocator: large blocks and a fallback when brk fails, never executable (see below).
    AllowedSyscall::both("mmap", 9, 222).with_arguments(Arguments::NoExecProtection),
    // Allocator: frees large blocks.
    AllowedSyscall::both("munmap", 11, 215),
    // Allocator: realloc of large blocks.
    AllowedSyscall::both("mremap", 25, 216),
    // Allocator: returns freed pages to the kernel.
    AllowedSyscall::both("madvise", 28, 233),
    // Rust std: returns from the SIGSEGV and SIGBUS handlers of its stack overflow check.
    AllowedSyscall::both("rt_sigreturn", 15, 139),
    // Rust std: removes the alternate signal stack of that handler when the thread exits.
    AllowedSyscall::both("sigaltstack", 131, 132),
    // Rust std: the end of a thread.
    AllowedSyscall::both("exit", 60, 93),
    // Rust std and glibc: the end of the process.
    AllowedSyscall::both("exit_group", 231, 94),
];

/// Builds the allowlist filter of the parser child for the architecture of this build.
///
/// The parser child installs the result with [`apply_seccomp`] as its last confinement
/// step. Tests install the result of this same function.
pub fn parser_child_filter() -> Result<BpfProgram, SandboxError> {
    build_filter(running_arch()?)
}

/// Installs `program` on the calling thread. Threads started later inherit it.
///
/// no_new_privs must already be set (see [`set_no_new_privs`](super::set_no_new_privs)),
/// and this function returns [`SandboxError::NoNewPrivsNotSet`] otherwise. An unprivileged
/// process could not install the filter without it, and seccompiler would set the flag on
/// its own before installing. The explicit check keeps the order of the confinement steps
/// visible in the caller.
pub fn apply_seccomp(program: &BpfProgram) -> Result<(), SandboxError> {
    require_no_new_privs()?;
    seccompiler::apply_filter(program).map_err(|source| SandboxError::ApplySeccomp { source })?;
    tracing::debug!("applied seccomp filter");
    Ok(())
}

/// Returns whether the kernel accepts seccomp filters with `SECCOMP_RET_KILL_PROCESS`.
pub(super) fn probe_seccomp_filter() -> bool {
    let action: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 through the pointer, which points to
    // `action`, a local that lives until the call returns. Nothing is written.
    let result = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0u32,
            &action as *const u32,
        )
    };
    result == 0
}

/// Clears the READ_IMPLIES_EXEC personality flag if the process inherited it.
///
/// With that flag, the kernel makes every readable mapping executable, which would undo
/// the `PROT_EXEC` check of the mmap rule. The kernel sets it at exec only for binaries
/// without a non-executable stack marker, but it also survives exec once a parent set it
/// (`setarch --read-implies-exec`, for example).
pub(super) fn clear_read_implies_exec() -> Result<(), SandboxError> {
    const QUERY_PERSONALITY: libc::c_ulong = 0xffff_ffff;
    let read_implies_exec = libc::READ_IMPLIES_EXEC as libc::c_ulong;

    // SAFETY: personality takes an integer and touches no memory of this process. The
    // value 0xffffffff only returns the current personality.
    let current = unsafe { libc::personality(QUERY_PERSONALITY) };
    let Ok(current) = libc::c_ulong::try_from(current) else {
        return Err(SandboxError::ReadPersonality {
            source: std::io::Error::last_os_error(),
        });
    };
    if current & read_implies_exec == 0 {
        return Ok(());
    }

    // SAFETY: as above, personality only takes an integer.
    let result = unsafe { libc::personality(current & !read_implies_exec) };
    if result == -1 {
        return Err(SandboxError::ClearReadImpliesExec {
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::debug!("cleared the READ_IMPLIES_EXEC personality flag");
    Ok(())
}

fn running_arch() -> Result<TargetArch, SandboxError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SandboxError::UnsupportedArchitecture {
            arch: std::env::consts::ARCH.to_string(),
        })
    }
}

fn build_filter(arch: TargetArch) -> Result<BpfProgram, SandboxError> {
    let build_error = |source| SandboxError::BuildSeccompFilter {
        arch: format!("{arch:?}"),
        source,
    };
    if arch == TargetArch::riscv64 {
        return Err(SandboxError::UnsupportedArchitecture {
            arch: format!("{arch:?}"),
        });
    }

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for syscall in ALLOWED_SYSCALLS {
        let Some(number) = syscall.number(arch) else {
            continue;
        };
        let conditions = match syscall.arguments {
            Arguments::Any => Vec::new(),
            Arguments::NoExecProtection => vec![no_exec_protection_rule().map_err(build_error)?],
            Arguments::GetDescriptorFlags => {
                vec![get_descriptor_flags_rule().map_err(build_error)?]
            }
        };
        rules.insert(number, conditions);
    }

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(build_error)?;
    let program = BpfProgram::try_from(filter).map_err(build_error)?;
    tracing::debug!(
        ?arch,
        allowed = ?allowed_names(arch),
        instructions = program.len(),
        "built seccomp filter"
    );
    Ok(program)
}

fn allowed_names(arch: TargetArch) -> Vec<&'static str> {
    ALLOWED_SYSCALLS
        .iter()
        .filter(|syscall| syscall.number(arch).is_some())
        .map(|syscall| syscall.name)
        .collect()
}

/// Rule that matches an mmap whose `prot` lacks `PROT_EXEC`.
///
/// The kernel's prot argument is an unsigned long, but it reads only the low PROT_* bits,
/// so comparing the low 32 bits (Dword) is enough. The masked comparison keeps
/// `PROT_EXEC` out of every new mapping. With mprotect forbidden as well, the child
/// cannot request executable memory, so injected code cannot run and only code that the
/// binary already maps can. glibc's allocator does not request executable memory.
/// A READ_IMPLIES_EXEC personality would add `PROT_EXEC` inside the kernel, after the
/// filter, so [`clear_read_implies_exec`] removes it before the filter is applied.
fn no_exec_protection_rule() -> Result<SeccompRule, seccompiler::BackendError> {
    let prot_exec = libc::PROT_EXEC as u64;
    let condition = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(prot_exec),
        0,
    )?;
    SeccompRule::new(vec![condition])
}

/// Rule that matches an fcntl whose `cmd` is `F_GETFD`, which only reads the
/// close-on-exec flag of a descriptor the process already holds.
fn get_descriptor_flags_rule() -> Result<SeccompRule, seccompiler::BackendError> {
    let condition = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::F_GETFD as u64,
    )?;
    SeccompRule::new(vec![condition])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_read_implies_exec_removes_flag() {
        // The personality belongs to the calling thread, so this changes only the thread of
        // this test, and the original value is restored at the end.
        // SAFETY: personality only takes an integer. 0xffffffff queries the current value.
        let original = unsafe { libc::personality(0xffff_ffff) };
        assert!(original >= 0, "personality query failed");
        let original = original as libc::c_ulong;
        let read_implies_exec = libc::READ_IMPLIES_EXEC as libc::c_ulong;

        // SAFETY: as above.
        let set_result = unsafe { libc::personality(original | read_implies_exec) };
        assert_ne!(set_result, -1, "failed to set READ_IMPLIES_EXEC");
        clear_read_implies_exec().unwrap();
        // SAFETY: as above.
        let cleared = unsafe { libc::personality(0xffff_ffff) } as libc::c_ulong;
        // SAFETY: as above.
        unsafe { libc::personality(original) };

        assert_eq!(cleared, original & !read_implies_exec);
    }

    #[test]
    fn filter_builds_for_x86_64() {
        let program = build_filter(TargetArch::x86_64).unwrap();
        assert!(!program.is_empty());
    }

    #[test]
    fn filter_builds_for_aarch64() {
        let program = build_filter(TargetArch::aarch64).unwrap();
        assert!(!program.is_empty());
    }

    #[test]
    fn filter_rejects_riscv64() {
        let error = build_filter(TargetArch::riscv64).unwrap_err();
        assert!(matches!(
            error,
            SandboxError::UnsupportedArchitecture { .. }
        ));
    }

    #[test]
    fn filter_builds_for_running_arch() {
        assert!(!parser_child_filter().unwrap().is_empty());
    }

    #[test]
    fn filters_differ_between_arches() {
        let x86_64 = build_filter(TargetArch::x86_64).unwrap();
        let aarch64 = build_filter(TargetArch::aarch64).unwrap();
        assert_ne!(x86_64, aarch64);
    }

    #[test]
    fn allowlist_has_no_duplicate_numbers() {
        for arch in [TargetArch::x86_64, TargetArch::aarch64] {
            let mut numbers: Vec<i64> = ALLOWED_SYSCALLS
                .iter()
                .filter_map(|syscall| syscall.number(arch))
                .collect();
            let count = numbers.len();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(numbers.len(), count, "duplicate number for {arch:?}");
        }
    }

    #[test]
    fn allowlist_omits_mprotect_and_process_calls() {
        for name in [
            "mprotect", "execve", "clone", "clone3", "fork", "openat", "socket",
        ] {
            assert!(
                ALLOWED_SYSCALLS.iter().all(|syscall| syscall.name != name),
                "{name} is in the allowlist"
            );
        }
    }

    #[test]
    fn argument_checks_on_mmap_and_fcntl() {
        for syscall in ALLOWED_SYSCALLS {
            let expected = match syscall.name {
                "mmap" => Arguments::NoExecProtection,
                "fcntl" => Arguments::GetDescriptorFlags,
                _ => Arguments::Any,
            };
            assert_eq!(syscall.arguments, expected, "{}", syscall.name);
        }
    }

    /// Compares the table with the libc constants of the architecture this test runs on,
    /// which catches a mistyped number. The other architecture's column was checked
    /// against the kernel headers when it was written.
    #[test]
    fn numbers_match_libc_for_running_arch() {
        let expected: &[(&str, libc::c_long)] = &[
            ("read", libc::SYS_read),
            ("write", libc::SYS_write),
            ("recvmsg", libc::SYS_recvmsg),
            ("sendmsg", libc::SYS_sendmsg),
            #[cfg(target_arch = "x86_64")]
            ("poll", libc::SYS_poll),
            ("ppoll", libc::SYS_ppoll),
            ("restart_syscall", libc::SYS_restart_syscall),
            ("close", libc::SYS_close),
            ("fcntl", libc::SYS_fcntl),
            ("mq_timedsend", libc::SYS_mq_timedsend),
            ("clock_gettime", libc::SYS_clock_gettime),
            ("futex", libc::SYS_futex),
            ("brk", libc::SYS_brk),
            ("mmap", libc::SYS_mmap),
            ("munmap", libc::SYS_munmap),
            ("mremap", libc::SYS_mremap),
            ("madvise", libc::SYS_madvise),
            ("rt_sigreturn", libc::SYS_rt_sigreturn),
            ("sigaltstack", libc::SYS_sigaltstack),
            ("exit", libc::SYS_exit),
            ("exit_group", libc::SYS_exit_group),
        ];
        let arch = running_arch().unwrap();
        let table: Vec<(&str, i64)> = ALLOWED_SYSCALLS
            .iter()
            .filter_map(|syscall| Some((syscall.name, syscall.number(arch)?)))
            .collect();
        assert_eq!(table.len(), expected.len());
        for (name, number) in expected {
            assert!(
                table.contains(&(*name, *number)),
                "{name} should be {number} on {arch:?}"
            );
        }
    }
}
