//! The script runner: spawns a policy command as its run_as user and waits for it.
//!
//! The script gets an environment built from scratch, an argv built from the policy's
//! template (never through a shell), stdin from the request or /dev/null, its own
//! process group and no controlling terminal, the policy's rlimits, and no descriptor
//! of the broker except stdin, stdout and stderr. When the timeout expires the whole process group is
//! killed. When the script exits, whatever it left running in its group is killed too.
//! Captured output is bounded per stream.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, pipe2};

use crate::policy::{ArgValue, Command, Peer};
use crate::protocol::channel::ExecOutcome;
use crate::sys;
use crate::sys::spawn::{Credentials, Plan, Process, SpawnError, Step};

/// PATH given to every script.
pub const SCRIPT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// How long output is still read after the script exits, for data its pipes still hold.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("script {path} could not be started: {reason}")]
    Spawn { path: String, reason: String },
    #[error("failed to wait for the script")]
    Wait(#[source] std::io::Error),
}

/// Process groups of running scripts, so that shutdown can kill what outlives the grace
/// period.
#[derive(Default)]
pub struct ProcessGroups {
    groups: Mutex<HashSet<i32>>,
}

impl ProcessGroups {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Sends SIGKILL to every running script's process group.
    pub fn kill_all(&self) {
        for pgid in self.lock().iter() {
            let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
        }
    }
}

/// One run of a command, with arguments that both the child and the monitor validated.
pub struct RunRequest<'a> {
    pub command: &'a Command,
    pub arguments: &'a [(String, ArgValue)],
    pub stdin: &'a [u8],
    pub peer: &'a Peer,
    pub request_id: &'a str,
    /// The channel to the parser child, watched during the run: the child must wait for
    /// the result, so anything arriving on it meanwhile ends the session afterwards.
    pub channel: Option<BorrowedFd<'a>>,
}

/// Result of a run, with whether the channel became readable while it ran.
pub struct RunResult {
    pub outcome: ExecOutcome,
    pub channel_readable: bool,
}

/// Builds the argv after the script path: each template element rendered, elements that
/// refer to an absent optional argument left out.
pub fn build_argv(command: &Command, arguments: &[(String, ArgValue)]) -> Vec<String> {
    command
        .argv
        .iter()
        .filter_map(|template| template.render(arguments))
        .collect()
}

/// Builds the script's whole environment.
pub fn build_env(request: &RunRequest<'_>) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), SCRIPT_PATH.to_string()),
        (
            "SECURE_SOCKET_COMMAND".to_string(),
            request.command.spec.name.clone(),
        ),
        (
            "SECURE_SOCKET_REQUEST_ID".to_string(),
            request.request_id.to_string(),
        ),
        (
            "SECURE_SOCKET_PEER_UID".to_string(),
            request.peer.uid.to_string(),
        ),
        (
            "SECURE_SOCKET_PEER_GID".to_string(),
            request.peer.gid.to_string(),
        ),
        (
            "SECURE_SOCKET_PEER_PID".to_string(),
            request.peer.pid.to_string(),
        ),
    ];
    for (name, template) in &request.command.env {
        if let Some(value) = template.render(request.arguments) {
            env.push((name.clone(), value));
        }
    }
    env
}

/// Runs the script and waits for it, its timeout or its output limit.
pub fn run(request: &RunRequest<'_>, groups: &ProcessGroups) -> Result<RunResult, RunError> {
    let command = request.command;
    let started = Instant::now();
    let mut child = spawn(request)?;
    let pgid = child.process.id() as i32;
    groups.lock().insert(pgid);

    let result = supervise(&mut child, request, started);

    // Kill whatever the script left running in its group, then reap the script.
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    let status = child.process.wait();
    groups.lock().remove(&pgid);
    let status = status.map_err(RunError::Wait)?;
    let Supervised {
        stdout,
        stderr,
        timed_out,
        channel_readable,
    } = result;

    let capture = command.spec.capture_output;
    let outcome = ExecOutcome {
        request_id: request.request_id.to_string(),
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        duration_us: started.elapsed().as_micros() as u64,
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        stdout: capture.then_some(stdout.bytes),
        stderr: capture.then_some(stderr.bytes),
    };
    Ok(RunResult {
        outcome,
        channel_readable,
    })
}

/// A started script and the monitor's ends of its pipes.
struct Started {
    process: Process,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

fn spawn(request: &RunRequest<'_>) -> Result<Started, RunError> {
    let command = request.command;
    let spawn_error = |reason: String| RunError::Spawn {
        path: command.script.display().to_string(),
        reason,
    };
    let to_c = |text: Vec<u8>| {
        CString::new(text)
            .map_err(|_| spawn_error("an argument or variable holds a NUL byte".to_string()))
    };
    let program = to_c(command.script.as_os_str().as_bytes().to_vec())?;
    let mut argv = vec![program.clone()];
    for argument in build_argv(command, request.arguments) {
        argv.push(to_c(argument.into_bytes())?);
    }
    let mut env = Vec::new();
    for (name, value) in build_env(request) {
        env.push(to_c(format!("{name}={value}").into_bytes())?);
    }

    let io_error = |error: std::io::Error| {
        spawn_error(format!("failed to set up its standard streams: {error}"))
    };
    let null = sys::dev_null().map_err(io_error)?;
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|error| io_error(error.into()));
    let (stdin_child, stdin_monitor) = if request.stdin.is_empty() {
        (None, None)
    } else {
        let (read_end, write_end) = pipe()?;
        (Some(read_end), Some(write_end))
    };
    let capture = command.spec.capture_output;
    let (stdout_monitor, stdout_child) = if capture {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let (stderr_monitor, stderr_child) = if capture {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let descriptors = [
        (stdin_child.as_ref().map_or(null, AsFd::as_fd), 0),
        (stdout_child.as_ref().map_or(null, AsFd::as_fd), 1),
        (stderr_child.as_ref().map_or(null, AsFd::as_fd), 2),
    ];

    let rlimits = rlimit_list(command);
    let plan = Plan {
        program: &program,
        argv: &argv,
        env: &env,
        directory: c"/",
        descriptors: &descriptors,
        new_process_group: true,
        rlimits: &rlimits,
        credentials: Some(Credentials {
            uid: command.run_as.uid,
            gid: command.run_as.gid,
            groups: &command.run_as.groups,
            capabilities: script_capabilities(command),
        }),
        // A script must not outlive a monitor that is killed: nothing would enforce its
        // timeout any more.
        kill_with_parent: true,
    };
    let process = sys::spawn::spawn(&plan).map_err(|error| {
        spawn_error(match (&error, error.raw_os_error()) {
            (
                SpawnError::Child {
                    step: Step::Exec, ..
                },
                Some(libc::ENOENT),
            ) => "the file no longer exists".to_string(),
            (
                SpawnError::Child {
                    step: Step::Exec, ..
                },
                Some(libc::EACCES),
            ) => "permission denied (is it executable?)".to_string(),
            _ => match std::error::Error::source(&error) {
                Some(source) => format!("{error}: {source}"),
                None => error.to_string(),
            },
        })
    })?;
    Ok(Started {
        process,
        stdin: stdin_monitor,
        stdout: stdout_monitor,
        stderr: stderr_monitor,
    })
}

/// Turns the command's declared capabilities into the plan the child applies before exec.
fn script_capabilities(command: &Command) -> sys::pre_exec::ScriptCapabilities {
    use sys::pre_exec::ScriptCapabilities;
    let Some(list) = &command.capabilities else {
        return ScriptCapabilities::Default;
    };
    let keep = list
        .iter()
        .fold(0u64, |mask, capability| mask | capability.bitmask());
    if command.run_as.uid == 0 {
        let monitor_permitted = caps::read(None, caps::CapSet::Permitted)
            .map(|set| {
                set.iter()
                    .fold(0u64, |mask, capability| mask | capability.bitmask())
            })
            .unwrap_or(0);
        ScriptCapabilities::RootOnly {
            keep,
            monitor_permitted,
        }
    } else {
        ScriptCapabilities::Ambient { keep }
    }
}

fn rlimit_list(command: &Command) -> Vec<(libc::__rlimit_resource_t, u64)> {
    let limits = &command.rlimits;
    let mut list = Vec::new();
    let pairs = [
        (libc::RLIMIT_CPU, limits.cpu_seconds),
        (libc::RLIMIT_AS, limits.address_space),
        (libc::RLIMIT_NOFILE, limits.open_files),
        (libc::RLIMIT_NPROC, limits.processes),
        (libc::RLIMIT_FSIZE, limits.file_size),
        // No core files: a script's memory may hold secrets from its arguments.
        (libc::RLIMIT_CORE, Some(0)),
    ];
    for (resource, value) in pairs {
        if let Some(value) = value {
            list.push((resource, value));
        }
    }
    list
}

/// Captured bytes of one stream, at most `limit`; the rest is read and discarded.
struct Capture {
    bytes: Vec<u8>,
    truncated: bool,
    open: bool,
}

impl Capture {
    fn new(open: bool) -> Capture {
        Capture {
            bytes: Vec::new(),
            truncated: false,
            open,
        }
    }

    /// Reads what is available; marks the stream closed at end of file or on error.
    fn read_from(&mut self, fd: BorrowedFd<'_>, limit: usize, scratch: &mut [u8]) {
        loop {
            match nix::unistd::read(fd, scratch) {
                Ok(0) => {
                    self.open = false;
                    return;
                }
                Ok(count) => {
                    let room = limit.saturating_sub(self.bytes.len());
                    let kept = count.min(room);
                    self.bytes.extend_from_slice(&scratch[..kept]);
                    if kept < count {
                        self.truncated = true;
                    }
                }
                Err(nix::Error::EAGAIN) => return,
                Err(nix::Error::EINTR) => continue,
                Err(_) => {
                    self.open = false;
                    return;
                }
            }
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) {
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd, FcntlArg::F_SETFL(flags));
    }
}

/// Observations of [`supervise`].
struct Supervised {
    stdout: Capture,
    stderr: Capture,
    /// The timeout expired and the process group was killed.
    timed_out: bool,
    channel_readable: bool,
}

/// Feeds stdin, reads output, watches the channel and waits for exit or the timeout, in
/// one poll loop.
fn supervise(child: &mut Started, request: &RunRequest<'_>, started: Instant) -> Supervised {
    let limit = request.command.spec.output_limit;
    let deadline = started + request.command.timeout();
    let stdout_pipe = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    let mut stdin_pipe = child.stdin.take();
    let mut stdout = Capture::new(stdout_pipe.is_some());
    let mut stderr = Capture::new(stderr_pipe.is_some());
    for pipe in [
        stdout_pipe.as_ref().map(AsFd::as_fd),
        stderr_pipe.as_ref().map(AsFd::as_fd),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(pipe);
    }
    if let Some(pipe) = &stdin_pipe {
        set_nonblocking(pipe.as_fd());
    }
    let pgid = Pid::from_raw(child.process.id() as i32);
    let mut stdin_written = 0usize;
    let mut scratch = vec![0u8; 16 * 1024];
    let mut exited_at: Option<Instant> = None;
    let mut timed_out = false;
    let mut channel_readable = false;

    loop {
        let now = Instant::now();
        if exited_at.is_none() && now >= deadline {
            let _ = killpg(pgid, Signal::SIGKILL);
            timed_out = true;
            exited_at = Some(now);
        }
        let outputs_open = stdout.open || stderr.open;
        match exited_at {
            Some(at) if !outputs_open || now >= at + DRAIN_AFTER_EXIT => break,
            _ => {}
        }

        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(5);
        let mut slots = [None; 5];
        if exited_at.is_none() {
            slots[0] = Some(fds.len());
            fds.push(PollFd::new(child.process.pidfd(), PollFlags::POLLIN));
        }
        if let (Some(pipe), true) = (&stdout_pipe, stdout.open) {
            slots[1] = Some(fds.len());
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        if let (Some(pipe), true) = (&stderr_pipe, stderr.open) {
            slots[2] = Some(fds.len());
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        if let Some(pipe) = &stdin_pipe {
            slots[3] = Some(fds.len());
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLOUT));
        }
        if let (Some(channel), false) = (request.channel, channel_readable) {
            slots[4] = Some(fds.len());
            fds.push(PollFd::new(channel, PollFlags::POLLIN));
        }
        let wake_at = match exited_at {
            Some(at) => at + DRAIN_AFTER_EXIT,
            None => deadline,
        };
        let wait = wake_at.saturating_duration_since(now);
        let timeout = PollTimeout::try_from(wait.as_millis().min(60_000) as u32 + 1)
            .unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
        let ready = |slot: Option<usize>, fds: &[PollFd<'_>]| {
            slot.and_then(|index| fds[index].revents())
                .is_some_and(|events| !events.is_empty())
        };
        let pid_ready = ready(slots[0], &fds);
        let stdout_ready = ready(slots[1], &fds);
        let stderr_ready = ready(slots[2], &fds);
        let stdin_ready = ready(slots[3], &fds);
        channel_readable |= ready(slots[4], &fds);
        drop(fds);

        if pid_ready {
            exited_at = Some(Instant::now());
        }
        if stdout_ready && let Some(pipe) = &stdout_pipe {
            stdout.read_from(pipe.as_fd(), limit, &mut scratch);
        }
        if stderr_ready && let Some(pipe) = &stderr_pipe {
            stderr.read_from(pipe.as_fd(), limit, &mut scratch);
        }
        if stdin_ready && let Some(pipe) = &stdin_pipe {
            match nix::unistd::write(pipe, &request.stdin[stdin_written..]) {
                Ok(count) => stdin_written += count,
                Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
                Err(_) => stdin_written = request.stdin.len(),
            }
            if stdin_written >= request.stdin.len() {
                // Closing the pipe gives the script end of file.
                stdin_pipe = None;
            }
        }
    }
    Supervised {
        stdout,
        stderr,
        timed_out,
        channel_readable,
    }
}
