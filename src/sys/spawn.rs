//! Starts processes without fork: clone(2) with `CLONE_VM | CLONE_VFORK | CLONE_PIDFD`,
//! the way glibc's posix_spawn does, plus the steps the broker needs before exec
//! (session, resource limits, descriptors, user, capabilities, parent-death signal).
//!
//! fork copies the monitor's page tables, and the child tears the copy down again when
//! it execs. That cost grows with the monitor's threads, one per connection: the
//! benchmark measured 1.1 ms of CPU per start at 12 threads and 3 ms at 200.
//! With `CLONE_VM` the child runs on the monitor's memory until it execs, and the thread
//! that called [`spawn`] sleeps until then (`CLONE_VFORK`), so nothing is copied.
//!
//! The price is that the child must not touch memory other threads use. The code
//! between clone and exec therefore makes raw system calls only: no allocation, no
//! locks, no glibc wrapper that keeps state. glibc's setresuid, setresgid and
//! setgroups signal every thread of the process to change its credentials too, and the
//! child shares the monitor's thread list. The raw calls change only the child. Every input of the child is prepared before clone and only read after it.
//!
//! Input comes from the monitor itself (the policy and the validated request), never
//! directly from a client.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use super::pre_exec::{self, ScriptCapabilities};

/// Bytes of stack for the child until it execs; a guard page sits below it. The child's
/// code calls a few small functions and keeps no arrays on its stack.
const STACK_SIZE: usize = 64 * 1024;
/// Size of one page; the guard page is one page and mmap rounds to pages.
const PAGE_SIZE: usize = 4096;
/// Highest signal number, for resetting dispositions (the kernel's _NSIG).
const LAST_SIGNAL: c_int = 64;

/// The user a process runs as, and its capabilities.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [u32],
    pub capabilities: ScriptCapabilities,
}

/// Description of a process for [`spawn`]. Between clone and exec the child applies it
/// in this order: signal dispositions, process group, resource limits, working directory,
/// close-on-exec from descriptor 3 up, `descriptors`, user, parent-death signal, signal
/// mask, exec.
pub struct Plan<'a> {
    /// Absolute path of the program.
    pub program: &'a CStr,
    /// Arguments, `argv[0]` included.
    pub argv: &'a [CString],
    /// The whole environment, as `NAME=value`.
    pub env: &'a [CString],
    /// Working directory.
    pub directory: &'a CStr,
    /// `(source, target)`: the child gets `source` as descriptor `target`. Targets
    /// must differ from each other; sources are moved out of the way of targets here.
    pub descriptors: &'a [(BorrowedFd<'a>, RawFd)],
    /// The child leads a new process group and has no controlling terminal.
    pub new_process_group: bool,
    /// Resource limits, soft and hard set to the same value.
    pub rlimits: &'a [(libc::__rlimit_resource_t, u64)],
    /// None keeps the monitor's user.
    pub credentials: Option<Credentials<'a>>,
    /// The child is killed when the thread that spawned it exits.
    pub kill_with_parent: bool,
}

/// A step of the child before exec, reported when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Signals,
    ProcessGroup,
    Limits,
    Directory,
    Descriptors,
    User,
    ParentDeath,
    Exec,
}

impl Step {
    const ALL: [Step; 8] = [
        Step::Signals,
        Step::ProcessGroup,
        Step::Limits,
        Step::Directory,
        Step::Descriptors,
        Step::User,
        Step::ParentDeath,
        Step::Exec,
    ];

    fn code(self) -> i32 {
        self as i32 + 1
    }

    fn from_code(code: i32) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.code() == code)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Step::Signals => "reset signal dispositions",
            Step::ProcessGroup => "start a process group",
            Step::Limits => "set resource limits",
            Step::Directory => "change directory",
            Step::Descriptors => "set up descriptors",
            Step::User => "switch user",
            Step::ParentDeath => "set the parent-death signal",
            Step::Exec => "execute the program",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("failed to prepare descriptors")]
    Prepare(#[source] io::Error),
    #[error("failed to map the child's stack")]
    Stack(#[source] io::Error),
    #[error("failed to clone")]
    Clone(#[source] io::Error),
    #[error("the child failed to {step}")]
    Child {
        step: Step,
        #[source]
        source: io::Error,
    },
}

impl SpawnError {
    /// Returns the errno behind the error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            SpawnError::Prepare(source)
            | SpawnError::Stack(source)
            | SpawnError::Clone(source)
            | SpawnError::Child { source, .. } => source.raw_os_error(),
        }
    }
}

/// A started process, not yet reaped. Like std's `Child`, dropping it neither kills nor
/// reaps the process.
#[derive(Debug)]
pub struct Process {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    status: Option<ExitStatus>,
}

impl Process {
    /// Takes over a process started by std, for tests that need a stand-in child.
    pub fn adopt(child: std::process::Child) -> io::Result<Process> {
        let pid = child.id() as libc::pid_t;
        let pidfd = super::pidfd_open(pid)?;
        Ok(Process {
            pid,
            pidfd,
            status: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Returns a pidfd of the process, which becomes readable once the process exits.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Sends SIGKILL through the pidfd, so the signal cannot reach another process that
    /// reused the pid. Succeeds when the process has already been reaped.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        super::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL)
    }

    /// Waits for the process to exit and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            match wait_pid(self.pid, 0) {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    return Ok(status);
                }
                Ok(None) => continue,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Reaps the process if it has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let status = wait_pid(self.pid, libc::WNOHANG)?;
        self.status = status;
        Ok(status)
    }
}

fn wait_pid(pid: libc::pid_t, flags: c_int) -> io::Result<Option<ExitStatus>> {
    let mut status: c_int = 0;
    // SAFETY: `status` is a live c_int the kernel writes the wait status into.
    let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
    match rc {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        _ => Ok(Some(ExitStatus::from_raw(status))),
    }
}

/// Data the child reads and writes. It lives on the spawning thread's stack, which the
/// child shares and which does not change while the thread sleeps in clone.
struct Shared<'a> {
    plan: &'a Plan<'a>,
    argv: *const *const c_char,
    env: *const *const c_char,
    /// `(source, target)` after sources were moved above every target.
    descriptors: &'a [(RawFd, RawFd)],
    parent: libc::pid_t,
    failed_step: AtomicI32,
    failed_errno: AtomicI32,
}

/// Starts `plan.program` as described by `plan` and returns once it has called exec.
/// A failure of any step before exec is returned with that step and its errno, and the
/// child is reaped.
pub fn spawn(plan: &Plan<'_>) -> Result<Process, SpawnError> {
    let argv = pointer_array(plan.argv);
    let env = pointer_array(plan.env);

    // A source that is also a target of the plan, or that a target below it would
    // overwrite before it is read, is copied above every target first.
    let lowest_free = plan
        .descriptors
        .iter()
        .map(|(_, target)| target + 1)
        .max()
        .unwrap_or(3)
        .max(3);
    let mut moved: Vec<OwnedFd> = Vec::new();
    let mut descriptors: Vec<(RawFd, RawFd)> = Vec::with_capacity(plan.descriptors.len());
    for (source, target) in plan.descriptors {
        let raw = source.as_raw_fd();
        if raw < lowest_free {
            let copy = duplicate_above(*source, lowest_free).map_err(SpawnError::Prepare)?;
            descriptors.push((copy.as_raw_fd(), *target));
            moved.push(copy);
        } else {
            descriptors.push((raw, *target));
        }
    }

    let stack = match Stack::take_free() {
        Some(stack) => stack,
        None => Stack::map().map_err(SpawnError::Stack)?,
    };
    let shared = Shared {
        plan,
        argv: argv.as_ptr(),
        env: env.as_ptr(),
        descriptors: &descriptors,
        parent: std::process::id() as libc::pid_t,
        failed_step: AtomicI32::new(0),
        failed_errno: AtomicI32::new(0),
    };

    // Block every signal in this thread, so that no handler of the monitor runs in the
    // child before it has reset the dispositions. The child unblocks just before exec.
    let all = full_signal_set();
    let mut previous = empty_signal_set();
    // SAFETY: both sets are live sigset_t values; this changes only this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous) };

    let mut pidfd: c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    // SAFETY: `stack.top()` is the aligned top of a mapping of STACK_SIZE bytes that
    // nothing else uses. With CLONE_VFORK this thread sleeps until the child has exec'd
    // or exited, so the mapping outlives the child's use of it. `shared` and everything it points to (plan, pointer arrays,
    // descriptors) stay alive and unchanged over the same time. `child_main` only makes
    // raw system calls (see the module comment). The kernel writes the pidfd into
    // `pidfd` (CLONE_PIDFD uses the parent_tid argument).
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            flags,
            (&shared as *const Shared<'_>).cast_mut().cast::<c_void>(),
            &mut pidfd as *mut c_int,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: `previous` is the mask saved above; this restores it for this thread.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    stack.release();
    drop(moved);

    if pid == -1 {
        return Err(SpawnError::Clone(clone_error));
    }
    // SAFETY: clone succeeded with CLONE_PIDFD, so the kernel installed a new pidfd in
    // `pidfd` that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut process = Process {
        pid,
        pidfd,
        status: None,
    };
    let step = shared.failed_step.load(Ordering::Acquire);
    if step != 0 {
        let errno = shared.failed_errno.load(Ordering::Acquire);
        let _ = process.wait();
        return Err(SpawnError::Child {
            step: Step::from_code(step).unwrap_or(Step::Exec),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    Ok(process)
}

/// A null-terminated array of pointers into `strings`, which must outlive it.
fn pointer_array(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|string| string.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn duplicate_above(fd: BorrowedFd<'_>, lowest: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one or -1.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, lowest) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the new descriptor is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(rc) })
}

fn full_signal_set() -> libc::sigset_t {
    let mut set = empty_signal_set();
    // SAFETY: `set` is a live sigset_t.
    unsafe { libc::sigfillset(&mut set) };
    set
}

fn empty_signal_set() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value; sigemptyset makes it the empty set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    set
}

/// Most stacks kept for later starts. Unmapping a stack after every start costs a TLB
/// flush on every CPU that runs a monitor thread, and a stack per session thread would
/// cost memory with hundreds of connections. A few cover the starts that run at once.
const FREE_STACKS_MAX: usize = 8;

/// Stacks of children that have exec'd or exited, for the next starts.
static FREE_STACKS: std::sync::Mutex<Vec<Stack>> = std::sync::Mutex::new(Vec::new());

/// The child's stack: an anonymous mapping with a guard page at its low end, so that an
/// overflow faults instead of writing over the monitor's memory.
struct Stack {
    base: *mut c_void,
    length: usize,
}

// SAFETY: a Stack owns its mapping alone; it is used by one child at a time and moves
// between threads only through FREE_STACKS.
unsafe impl Send for Stack {}

impl Stack {
    /// Takes a stack kept by [`Stack::release`], if there is one.
    fn take_free() -> Option<Stack> {
        FREE_STACKS.lock().ok()?.pop()
    }

    /// Keeps the stack for a later start, or unmaps it when enough are kept.
    fn release(self) {
        if let Ok(mut free) = FREE_STACKS.lock()
            && free.len() < FREE_STACKS_MAX
        {
            free.push(self);
        }
    }

    fn map() -> io::Result<Stack> {
        let length = STACK_SIZE + PAGE_SIZE;
        // SAFETY: a new private anonymous mapping at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, length };
        // SAFETY: the first page lies inside the mapping made above.
        if unsafe { libc::mprotect(base, PAGE_SIZE, libc::PROT_NONE) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The highest address of the mapping, where a downward-growing stack starts; mmap
    /// returns page-aligned addresses, so it is 16-byte aligned as the ABI needs.
    fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.length)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: `base` and `length` describe the mapping made in `map`, which no one
        // uses any more: the child has exec'd or exited.
        unsafe { libc::munmap(self.base, self.length) };
    }
}

/// Runs the child between clone and exec. Because it shares the monitor's memory, it
/// only reads `Shared` and makes raw system calls. When a step fails it records the
/// step and errno in `Shared` and exits with 127.
extern "C" fn child_main(argument: *mut c_void) -> c_int {
    // SAFETY: `argument` is the `Shared` passed to clone by `spawn`, alive and
    // unchanged while this child runs (the spawning thread sleeps until exec or exit).
    let shared = unsafe { &*argument.cast::<Shared<'_>>() };
    if let Err((step, errno)) = prepare(shared) {
        shared.failed_errno.store(errno, Ordering::Release);
        shared.failed_step.store(step.code(), Ordering::Release);
    }
    // SAFETY: _exit ends this process at once, without running anything of the
    // monitor's (no atexit handlers, no buffered output).
    unsafe { libc::_exit(127) }
}

/// Applies the steps of [`Plan`], then execs. Returns only on failure.
fn prepare(shared: &Shared<'_>) -> Result<(), (Step, i32)> {
    let plan = shared.plan;
    let fail = |step: Step| move |error: io::Error| (step, error.raw_os_error().unwrap_or(0));

    reset_signal_dispositions().map_err(fail(Step::Signals))?;
    if plan.new_process_group {
        pre_exec::new_process_group().map_err(fail(Step::ProcessGroup))?;
    }
    for (resource, value) in plan.rlimits {
        pre_exec::set_rlimit(*resource, *value).map_err(fail(Step::Limits))?;
    }
    // SAFETY: `directory` is a NUL-terminated string alive for the child's lifetime.
    raw_result(unsafe { libc::syscall(libc::SYS_chdir, plan.directory.as_ptr()) })
        .map_err(fail(Step::Directory))?;
    // Sweep first: dup2 below clears close-on-exec on each target it installs.
    pre_exec::cloexec_from_3().map_err(fail(Step::Descriptors))?;
    for (source, target) in shared.descriptors {
        // SAFETY: dup2 takes integers; a source is an open descriptor of the child's
        // copy of the descriptor table (no CLONE_FILES), above every target.
        raw_result(unsafe { libc::syscall(libc::SYS_dup2, *source, *target) })
            .map_err(fail(Step::Descriptors))?;
    }
    if let Some(credentials) = plan.credentials {
        pre_exec::switch_user(
            credentials.uid,
            credentials.gid,
            credentials.groups,
            credentials.capabilities,
        )
        .map_err(fail(Step::User))?;
    }
    if plan.kill_with_parent {
        pre_exec::kill_with_parent(shared.parent).map_err(fail(Step::ParentDeath))?;
    }
    let empty = [0u64; 1];
    // SAFETY: `empty` is a live 8-byte kernel signal set; the call changes only the
    // child's mask, which exec keeps for the program.
    raw_result(unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            empty.as_ptr(),
            std::ptr::null_mut::<u64>(),
            std::mem::size_of_val(&empty),
        )
    })
    .map_err(fail(Step::Signals))?;
    // SAFETY: program, argv and env are NUL-terminated strings and null-terminated
    // pointer arrays built before clone and alive until exec replaces this process.
    unsafe {
        libc::syscall(
            libc::SYS_execve,
            plan.program.as_ptr(),
            shared.argv,
            shared.env,
        )
    };
    Err((
        Step::Exec,
        io::Error::last_os_error().raw_os_error().unwrap_or(0),
    ))
}

fn raw_result(rc: libc::c_long) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `struct sigaction` as the kernel's rt_sigaction takes it (not glibc's layout).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Puts every signal back to its default disposition. A signal with a handler of the
/// monitor must not run monitor code in the child before exec. An ignored signal (such as
/// SIGPIPE, which Rust's runtime ignores) would stay ignored in the program after exec.
fn reset_signal_dispositions() -> io::Result<()> {
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=LAST_SIGNAL {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a live value of the kernel's layout that sets the default
        // disposition; the old action is not read. 8 is the kernel's signal set size.
        raw_result(unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
