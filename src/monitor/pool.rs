//! The pool of pre-started parser children.
//!
//! Children are started ahead of connections, so that re-executing the binary and
//! confining it stay off the request path. A child taken from here serves one
//! connection. It serves later connections of the same peer identity only through the
//! cache in `reuse`. A refill thread keeps `pool_size` children waiting.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use crate::child::{CHANNEL_FD, ChildSettings, QUEUE_FD, ROLE_ARGUMENT};
use crate::sys::spawn::{self, Plan, Process, SpawnError};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("failed to create the channel socketpair")]
    Socketpair(#[source] nix::Error),
    #[error("failed to duplicate a descriptor for the child")]
    Duplicate(#[source] nix::Error),
    #[error("failed to open /dev/null for a parser child")]
    Null(#[source] std::io::Error),
    #[error("failed to build the arguments of a parser child: {0}")]
    Argument(String),
    #[error("failed to start a parser child")]
    Spawn(#[source] SpawnError),
}

/// A started parser child and the monitor's end of its channel.
pub struct ParserChild {
    pub process: Process,
    pub channel: OwnedFd,
}

/// Starts parser children. Holds the audit queue's sending end at a descriptor number of
/// 10 or more, so that moving it to [`QUEUE_FD`] in the child never overwrites the
/// channel.
pub struct Spawner {
    settings: ChildSettings,
    queue: OwnedFd,
}

/// Lowest descriptor number used for descriptors that are moved before exec.
const HIGH_FD: RawFd = 10;

impl Spawner {
    pub fn new(settings: ChildSettings, queue: &OwnedFd) -> Result<Spawner, PoolError> {
        let queue = duplicate_high(queue)?;
        Ok(Spawner { settings, queue })
    }

    /// Starts one child: re-executes this binary in the parser role, as root with an
    /// empty environment; the child drops its privileges before it reads anything.
    pub fn spawn(&self) -> Result<ParserChild, PoolError> {
        let (monitor_end, child_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(PoolError::Socketpair)?;
        let mut argv = Vec::new();
        for argument in ["secure_socket-parser", ROLE_ARGUMENT]
            .into_iter()
            .map(str::to_string)
            .chain(self.settings.to_args())
        {
            argv.push(
                CString::new(argument).map_err(|error| PoolError::Argument(error.to_string()))?,
            );
        }
        let null = crate::sys::dev_null().map_err(PoolError::Null)?;
        let descriptors = [
            (null, 0),
            (null, 1),
            (null, 2),
            (child_end.as_fd(), CHANNEL_FD),
            (self.queue.as_fd(), QUEUE_FD),
        ];
        let plan = Plan {
            program: c"/proc/self/exe",
            argv: &argv,
            env: &[],
            directory: c"/",
            descriptors: &descriptors,
            new_process_group: false,
            rlimits: &[],
            credentials: None,
            kill_with_parent: false,
        };
        let process = spawn::spawn(&plan).map_err(PoolError::Spawn)?;
        drop(child_end);
        Ok(ParserChild {
            process,
            channel: monitor_end,
        })
    }
}

fn duplicate_high(fd: &OwnedFd) -> Result<OwnedFd, PoolError> {
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(HIGH_FD)).map_err(PoolError::Duplicate)?;
    Ok(crate::sys::own_received_fd(raw))
}

impl ParserChild {
    /// Returns whether the child is still running; reaps it when it is not.
    pub(super) fn is_alive(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }
}

fn log_idle_death(child: &ParserChild) {
    tracing::warn!(
        child_pid = child.process.id(),
        "idle parser child died; it will be replaced"
    );
}

/// Idle children waiting for a connection.
pub struct Pool {
    spawner: Spawner,
    size: usize,
    idle: Mutex<VecDeque<ParserChild>>,
    changed: Condvar,
    stopping: AtomicBool,
}

impl Pool {
    pub fn new(spawner: Spawner, size: usize) -> Pool {
        Pool {
            spawner,
            size,
            idle: Mutex::new(VecDeque::with_capacity(size)),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ParserChild>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a live child from the idle queue without starting one. Children taken here
    /// were started by the refill thread, which lives as long as the pool.
    pub fn take_idle(&self) -> Option<ParserChild> {
        loop {
            let mut child = self.lock().pop_front()?;
            self.changed.notify_all();
            if child.is_alive() {
                return Some(child);
            }
            log_idle_death(&child);
        }
    }

    /// Starts a child at once, bypassing the idle queue.
    pub fn spawn_now(&self) -> Result<ParserChild, PoolError> {
        self.spawner.spawn()
    }

    /// Reaps idle children that died, so the refill thread replaces them.
    fn remove_dead(&self) {
        let mut idle = self.lock();
        let before = idle.len();
        idle.retain_mut(|child| {
            let alive = child.is_alive();
            if !alive {
                log_idle_death(child);
            }
            alive
        });
        if idle.len() != before {
            self.changed.notify_all();
        }
    }

    /// Keeps `size` live children idle until [`Pool::stop`]. Runs on its own thread.
    pub fn run_refill(self: &Arc<Pool>) {
        let mut failures: u32 = 0;
        while !self.stopping.load(Ordering::Relaxed) {
            self.remove_dead();
            {
                let idle = self.lock();
                let _unused = self
                    .changed
                    .wait_timeout_while(idle, Duration::from_secs(1), |idle| {
                        idle.len() >= self.size && !self.stopping.load(Ordering::Relaxed)
                    })
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if self.stopping.load(Ordering::Relaxed) || self.lock().len() >= self.size {
                continue;
            }
            match self.spawner.spawn() {
                Ok(child) => {
                    failures = 0;
                    self.lock().push_back(child);
                }
                Err(error) => {
                    failures += 1;
                    tracing::error!(error = %error, source = ?std::error::Error::source(&error), failures, "failed to start a parser child");
                    // Back off so a persistent failure does not spin.
                    std::thread::sleep(Duration::from_millis(100 * u64::from(failures.min(50))));
                }
            }
        }
    }

    /// Stops refilling and kills the idle children.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.changed.notify_all();
        let mut idle = self.lock();
        while let Some(mut child) = idle.pop_front() {
            let _ = child.process.kill();
            let _ = child.process.wait();
        }
    }
}
