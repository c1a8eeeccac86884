//! The privileged monitor: start-up sequence, accept loop, reload and shutdown.
//!
//! The monitor never reads a byte a client wrote. It reads the peer's identity from the
//! kernel, hands the connection to a sandboxed parser child, and acts only on typed,
//! bounded messages from that child, which it checks again against the policy.

mod listener;
mod peer;
mod pool;
mod rate;
mod redact;
mod rejection;
mod reuse;
mod runner;
mod session;

#[cfg(test)]
mod hostile_child_tests;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{SockFlag, accept4};
use nix::unistd::User;

use crate::audit::{self, SessionRegistry};
use crate::child::ChildSettings;
use crate::config::Config;
use crate::logging;
use crate::policy::{self, Policy};
use crate::protocol::{BrokerError, ErrorKind};
use crate::sandbox;

pub use listener::ListenerError;
pub use runner::SCRIPT_PATH;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("secure_socket must be started as root (effective uid is {0})")]
    NotRoot(u32),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("invalid value {name:?} for {key}: expected an existing user name or uid")]
    UnknownUser { key: &'static str, name: String },
    #[error("failed to look up user {name:?}")]
    UserLookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "policy in {dir} is invalid ({} {})",
        errors.len(),
        if errors.len() == 1 { "error" } else { "errors" }
    )]
    Policy {
        dir: String,
        errors: Vec<policy::PolicyError>,
    },
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
    #[error("failed to block signals for the signal thread")]
    Signals(#[source] nix::Error),
    #[error("failed to create the wake-up pipe")]
    Pipe(#[source] nix::Error),
    #[error("failed to start the {name} thread")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl MonitorError {
    /// Returns whether the error comes from the parameters, the policy, or the users and
    /// files they name, so that a restart fails the same way until the administrator
    /// changes something. A missing sandbox layer counts, because sandbox=strict requires
    /// it.
    pub fn is_configuration(&self) -> bool {
        match self {
            MonitorError::NotRoot(_)
            | MonitorError::UnknownUser { .. }
            | MonitorError::Conflict(_)
            | MonitorError::Policy { .. } => true,
            MonitorError::Sandbox(error) => {
                matches!(error, sandbox::SandboxError::MissingKernelSupport { .. })
            }
            MonitorError::Listener(error) => error.is_configuration(),
            MonitorError::UserLookup { .. }
            | MonitorError::Audit(_)
            | MonitorError::Pool(_)
            | MonitorError::Signals(_)
            | MonitorError::Pipe(_)
            | MonitorError::Thread { .. } => false,
        }
    }
}

/// State shared by the accept loop, the session threads and the signal thread.
pub(crate) struct Shared {
    config: Config,
    policy: RwLock<Arc<Policy>>,
    /// Capability needs of the policy loaded at start. A reload may not exceed them.
    capability_needs: policy::CapabilityNeeds,
    registry: Arc<SessionRegistry>,
    pool: Arc<pool::Pool>,
    /// Children that served a connection and wait for another of the same identity.
    children: Arc<reuse::ChildCache>,
    process_groups: runner::ProcessGroups,
    shutting_down: AtomicBool,
    active: Mutex<usize>,
    active_changed: Condvar,
    running: Mutex<HashMap<String, usize>>,
    running_changed: Condvar,
    /// Token buckets of commands with a `rate_limit`, kept across reloads.
    rate_limiter: rate::RateLimiter,
    /// Open connections per peer uid, against max_connections_per_uid.
    connections_by_uid: Mutex<HashMap<u32, usize>>,
    /// Pids of parser children serving a connection, killed when the grace period ends.
    session_children: Mutex<std::collections::HashSet<u32>>,
}

/// A held concurrency slot of one command, released on drop.
pub(crate) struct Slot<'a> {
    shared: &'a Shared,
    command: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut running = lock(&self.shared.running);
        if let Some(count) = running.get_mut(&self.command) {
            *count = count.saturating_sub(1);
        }
        self.shared.running_changed.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn current_policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Takes one of `max` slots of `command`, waiting at most `wait` for one to free.
    pub(crate) fn acquire_slot(
        &self,
        command: &str,
        max: usize,
        wait: Duration,
    ) -> Option<Slot<'_>> {
        let running = lock(&self.running);
        let (mut running, _) = self
            .running_changed
            .wait_timeout_while(running, wait, |running| {
                running.get(command).copied().unwrap_or(0) >= max
            })
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = running.entry(command.to_string()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot {
            shared: self,
            command: command.to_string(),
        })
    }

    /// Counts a new connection of `uid`. Returns false when the uid already has its share.
    fn take_uid_slot(&self, uid: u32) -> bool {
        let mut counts = lock(&self.connections_by_uid);
        let count = counts.entry(uid).or_insert(0);
        if *count >= self.config.connections_per_uid() {
            return false;
        }
        *count += 1;
        true
    }

    fn release_uid_slot(&self, uid: u32) {
        let mut counts = lock(&self.connections_by_uid);
        if let Some(count) = counts.get_mut(&uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&uid);
            }
        }
    }

    /// Reloads the policy and kills every cached parser child, whether or not the new
    /// policy is accepted: a child may still hold command lists of the old policy.
    fn reload_policy(&self) {
        self.load_policy();
        let killed = self.children.invalidate();
        tracing::info!(
            killed,
            "cached parser children killed after SIGHUP; children serving a connection exit \
             at its end"
        );
    }

    fn load_policy(&self) {
        let dir = &self.config.policy_dir;
        match policy::load_dir(dir) {
            Ok(policy) if !self.capability_needs.covers(&policy.capability_needs()) => {
                tracing::error!(
                    policy_dir = %dir.display(),
                    started_with = ?self.capability_needs,
                    requested = ?policy.capability_needs(),
                    "policy reload rejected: it gives scripts capabilities the broker dropped \
                     at start; restart the broker to widen them"
                );
            }
            Ok(policy) => {
                let names: Vec<&str> = policy.commands.keys().map(String::as_str).collect();
                tracing::info!(policy_dir = %dir.display(), commands = names.join(",").as_str(), "policy reloaded");
                *self
                    .policy
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policy);
            }
            Err(error) => {
                log_policy_errors(&error);
                tracing::error!(
                    policy_dir = %dir.display(),
                    errors = error.errors.len(),
                    "policy reload rejected, the previous policy stays in force"
                );
            }
        }
    }
}

/// Warns when the parser children's uid is also a script's run_as user or a peer's: a
/// process of that uid could signal the children and stall connections. A dedicated
/// unprivileged_user avoids it.
fn warn_about_shared_uid(policy: &Policy, unprivileged_uid: u32, config: &Config) {
    for command in policy.commands.values() {
        if command.run_as.uid == unprivileged_uid {
            tracing::warn!(
                command = %command.spec.name,
                uid = unprivileged_uid,
                "the command's run_as user is also unprivileged_user, so its script could \
                 signal parser children; use a dedicated unprivileged_user"
            );
        }
        if command.allow_users.contains(&unprivileged_uid) {
            tracing::warn!(
                command = %command.spec.name,
                uid = unprivileged_uid,
                "unprivileged_user may call the command, so its peers could signal parser \
                 children; use a dedicated unprivileged_user"
            );
        }
    }
    if config.authorised_peer_uid == Some(unprivileged_uid) {
        tracing::warn!(
            uid = unprivileged_uid,
            "authorised_peer_uid is unprivileged_user; use a dedicated unprivileged_user"
        );
    }
}

/// Reopens log_file by its path, so that a rotation that renamed the file takes effect.
/// After a failure the log keeps going to the file opened before.
fn reopen_log_file() {
    match logging::reopen_log_file() {
        Ok(Some(path)) => {
            tracing::info!(path = %path.display(), "log file reopened after SIGHUP");
        }
        Ok(None) => {}
        Err(error) => {
            tracing::error!(
                error = %logging::format_error_chain(&error),
                "failed to reopen the log file after SIGHUP; still writing to the file \
                 opened before"
            );
        }
    }
}

/// Returns the group of the socket file: authorised_peer_gid, else the primary group of
/// authorised_peer_username or of authorised_peer_uid, else root. Without it a socket
/// limited to one peer would stay unusable by that peer under socket_permissions=0660.
/// A uid without a user entry has no primary group, so the group stays root with a
/// warning.
fn socket_group(config: &Config, username_user: Option<&User>) -> Result<u32, MonitorError> {
    if let Some(gid) = config.authorised_peer_gid {
        return Ok(gid);
    }
    if let Some(user) = username_user {
        return Ok(user.gid.as_raw());
    }
    let Some(uid) = config.authorised_peer_uid else {
        return Ok(0);
    };
    let user = User::from_uid(nix::unistd::Uid::from_raw(uid)).map_err(|source| {
        MonitorError::UserLookup {
            name: uid.to_string(),
            source,
        }
    })?;
    match user {
        Some(user) => {
            tracing::info!(
                authorised_peer_uid = uid,
                socket_gid = user.gid.as_raw(),
                "the socket's group is the primary group of authorised_peer_uid"
            );
            Ok(user.gid.as_raw())
        }
        None => {
            tracing::warn!(
                authorised_peer_uid = uid,
                socket_permissions = format!("{:04o}", config.socket_permissions),
                "authorised_peer_uid has no user entry, so the socket's group stays root and \
                 that uid can connect only if socket_permissions lets others write; set \
                 authorised_peer_gid to give the socket a group"
            );
            Ok(0)
        }
    }
}

/// Logs each policy error as its own event, with file, line and key as fields.
fn log_policy_errors(error: &policy::LoadError) {
    for entry in &error.errors {
        tracing::error!(
            file = %entry.file.display(),
            line = entry.line,
            key = %entry.key,
            // Not `message`: that name is the event's own text in JSON and journald.
            reason = %entry.message,
            "policy error"
        );
    }
}

fn resolve_user(key: &'static str, name: &str) -> Result<User, MonitorError> {
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    found
        .map_err(|source| MonitorError::UserLookup {
            name: name.to_string(),
            source,
        })?
        .ok_or_else(|| MonitorError::UnknownUser {
            key,
            name: name.to_string(),
        })
}

/// A listening socket passed by systemd-style socket activation.
pub struct ActivatedSocket(listener::Listener);

/// Takes the socket passed by socket activation, if any. Call it first thing, before the
/// process opens any file, so that descriptor 3 cannot be anything but what was passed,
/// and while the process is single-threaded, because it edits the environment.
pub fn take_activated_socket(
    socket_path: &std::path::Path,
) -> Result<Option<ActivatedSocket>, ListenerError> {
    Ok(listener::take_activated(socket_path)?.map(ActivatedSocket))
}

/// Runs the broker until SIGTERM or SIGINT. `activated` is the socket passed by the
/// service manager, used instead of creating one at socket_path.
pub fn run(config: Config, activated: Option<ActivatedSocket>) -> Result<(), MonitorError> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(MonitorError::NotRoot(euid.as_raw()));
    }

    // Refuse to start without the sandbox layers unless the administrator chose
    // best-effort; then warn at every start.
    for warning in sandbox::check_support(config.sandbox)? {
        tracing::warn!(%warning, "sandbox layer missing; running in best-effort mode");
    }

    let unprivileged = resolve_user("unprivileged_user", &config.unprivileged_user)?;
    if unprivileged.uid.is_root() {
        return Err(MonitorError::Conflict(
            "unprivileged_user resolves to uid 0".to_string(),
        ));
    }
    let username_user = match &config.authorised_peer_username {
        Some(name) => Some(resolve_user("authorised_peer_username", name)?),
        None => None,
    };
    if let (Some(user), Some(uid)) = (&username_user, config.authorised_peer_uid)
        && user.uid.as_raw() != uid
    {
        return Err(MonitorError::Conflict(format!(
            "authorised_peer_username {} has uid {}, but authorised_peer_uid is {uid}",
            user.name, user.uid
        )));
    }
    // A socket passed by the service manager keeps the group the manager gave it, and
    // the broker only compares that group with this one.
    let socket_gid = socket_group(&config, username_user.as_ref())?;

    let policy = match policy::load_dir(&config.policy_dir) {
        Ok(policy) => policy,
        Err(error) => {
            log_policy_errors(&error);
            return Err(MonitorError::Policy {
                dir: config.policy_dir.display().to_string(),
                errors: error.errors,
            });
        }
    };

    warn_about_shared_uid(&policy, unprivileged.uid.as_raw(), &config);

    let queue = audit::create_queue(&config.mq_name)?;
    // A socket passed by the service manager is used as it is: the manager created the
    // file, chose its owner and mode, and removes it.
    let listener = match activated.map(|socket| socket.0) {
        Some(listener) => {
            tracing::info!(
                passed_socket_path = %listener.path.display(),
                "using the socket passed by the service manager"
            );
            listener::warn_about_passed_socket(
                &listener,
                &config.socket_path,
                config.socket_permissions,
                socket_gid,
            );
            listener
        }
        None => listener::create(&config.socket_path, socket_gid, config.socket_permissions)?,
    };

    // Signals are taken by a dedicated thread with sigwait; block them before any other
    // thread starts so every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    signals.thread_block().map_err(MonitorError::Signals)?;

    // From here on the monitor keeps in its effective set only what it uses itself. The
    // bounding and permitted sets keep what the policy may hand to scripts, and no more:
    // a reload can drop capabilities from scripts but never add any.
    let capability_needs = policy.capability_needs();
    let mut script_capabilities = capability_needs.declared.clone();
    if capability_needs.restricts_root {
        script_capabilities.insert(caps::Capability::CAP_SETPCAP);
    }
    sandbox::restrict_monitor_capabilities(&script_capabilities, capability_needs.full_bounding)?;
    tracing::debug!(?capability_needs, "monitor capabilities restricted");
    crate::logging::start_stderr_worker();

    // Clients can connect only from here on, so none ever meets a monitor that still
    // has its start-up privileges.
    listener.listen(config.max_connections)?;

    let settings = ChildSettings {
        uid: unprivileged.uid.as_raw(),
        gid: unprivileged.gid.as_raw(),
        sandbox: config.sandbox,
        max_frame_bytes: config.max_frame_bytes,
        request_timeout: config.request_timeout,
        max_requests: config.max_requests_per_connection,
        max_connections: if config.reuses_children() {
            config.max_connections_per_child
        } else {
            1
        },
        monitor_pid: std::process::id() as i32,
    };
    let spawner = pool::Spawner::new(settings, &queue.sender)?;
    let pool = Arc::new(pool::Pool::new(spawner, config.pool_size));
    let registry = Arc::new(SessionRegistry::default());
    let children = Arc::new(reuse::ChildCache::new(&config));

    let command_names: Vec<String> = policy.commands.keys().cloned().collect();
    let shared = Arc::new(Shared {
        config,
        policy: RwLock::new(Arc::new(policy)),
        capability_needs,
        registry: registry.clone(),
        pool: pool.clone(),
        children: children.clone(),
        process_groups: runner::ProcessGroups::default(),
        shutting_down: AtomicBool::new(false),
        active: Mutex::new(0),
        active_changed: Condvar::new(),
        running: Mutex::new(HashMap::new()),
        running_changed: Condvar::new(),
        rate_limiter: rate::RateLimiter::default(),
        session_children: Mutex::new(std::collections::HashSet::new()),
        connections_by_uid: Mutex::new(HashMap::new()),
    });

    let logger_stop = Arc::new(AtomicBool::new(false));
    let logger = {
        let stop = logger_stop.clone();
        std::thread::Builder::new()
            .name("audit-logger".to_string())
            .spawn(move || audit::run_logger(queue.receiver, registry, stop))
            .map_err(|source| MonitorError::Thread {
                name: "audit-logger",
                source,
            })?
    };
    let refill = {
        let pool = pool.clone();
        std::thread::Builder::new()
            .name("pool-refill".to_string())
            .spawn(move || pool.run_refill())
            .map_err(|source| MonitorError::Thread {
                name: "pool-refill",
                source,
            })?
    };
    let reaper = {
        let children = children.clone();
        std::thread::Builder::new()
            .name("child-cache".to_string())
            .spawn(move || children.run_reaper())
            .map_err(|source| MonitorError::Thread {
                name: "child-cache",
                source,
            })?
    };
    let (wake_read, wake_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(MonitorError::Pipe)?;
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("signals".to_string())
            .spawn(move || handle_signals(signals, &shared, wake_write))
            .map_err(|source| MonitorError::Thread {
                name: "signals",
                source,
            })?;
    }

    let config = &shared.config;
    // The socket fields describe the socket in use, read from its file. A socket passed
    // by the service manager has the path, owner and mode the manager gave it, which may
    // differ from the parameters.
    let socket_origin = if listener.file.is_some() {
        "created"
    } else {
        "passed by the service manager"
    };
    let socket_status = match listener.file_status() {
        Ok(status) => Some(status),
        Err(error) => {
            tracing::warn!(
                socket_path = %listener.path.display(),
                %error,
                "failed to inspect the socket file for the start-up banner"
            );
            None
        }
    };
    let socket_mode = socket_status.map(|status| format!("{:04o}", status.mode));
    tracing::info!(
        socket_path = %listener.path.display(),
        socket = socket_origin,
        socket_uid = socket_status.map(|status| status.uid),
        socket_gid = socket_status.map(|status| status.gid),
        socket_mode = socket_mode.as_deref(),
        commands = %command_names.join(","),
        version = env!("CARGO_PKG_VERSION"),
        parameters = config.effective_parameters().as_str(),
        "broker started"
    );

    let filter = peer::PeerFilter::new(config, username_user.map(|user| user.uid.as_raw()));
    accept_loop(&shared, &listener, &wake_read, &filter);

    shut_down(&shared, &listener);
    children.stop();
    let _ = reaper.join();
    pool.stop();
    let _ = refill.join();
    logger_stop.store(true, Ordering::Relaxed);
    let _ = logger.join();
    tracing::info!("broker stopped");
    Ok(())
}

fn handle_signals(signals: SigSet, shared: &Arc<Shared>, wake: OwnedFd) {
    loop {
        let signal = match signals.wait() {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "failed to wait for signals");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match signal {
            Signal::SIGHUP => {
                // The log file first, so that the reload's own events go to the new file.
                reopen_log_file();
                shared.reload_policy();
            }
            _ => {
                tracing::info!(signal_name = %signal, "shutting down");
                shared.shutting_down.store(true, Ordering::Relaxed);
                let _ = nix::unistd::write(&wake, &[1]);
                return;
            }
        }
    }
}

fn accept_loop(
    shared: &Arc<Shared>,
    listener: &listener::Listener,
    wake: &OwnedFd,
    filter: &peer::PeerFilter,
) {
    let max = shared.config.max_connections;
    while !shared.is_shutting_down() {
        // At max_connections, stop accepting: further clients wait in the listen backlog.
        {
            let active = lock(&shared.active);
            let _unused = shared
                .active_changed
                .wait_timeout_while(active, Duration::from_millis(200), |active| {
                    *active >= max && !shared.is_shutting_down()
                })
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if *lock(&shared.active) >= max {
            continue;
        }
        let mut fds = [
            PollFd::new(listener.socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(error) => {
                tracing::error!(%error, "failed to poll the listening socket");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        // The signal thread writes one byte and exits. The pipe then stays readable or
        // hung up, so poll would return at once forever if the loop went on.
        let woken = fds[1].revents().is_some_and(|events| !events.is_empty());
        if woken && !shared.is_shutting_down() {
            tracing::error!("the signal thread ended without a shutdown; shutting down");
            shared.shutting_down.store(true, Ordering::Relaxed);
        }
        let listener_ready = fds[0]
            .revents()
            .is_some_and(|events| events.contains(PollFlags::POLLIN));
        if shared.is_shutting_down() || !listener_ready {
            continue;
        }
        let connection = match accept4(&listener.socket, SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(nix::Error::EINTR) | Err(nix::Error::ECONNABORTED) => continue,
            Err(error) => {
                tracing::error!(%error, "failed to accept a connection");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        accept_one(shared, connection, filter);
    }
}

fn accept_one(shared: &Arc<Shared>, connection: OwnedFd, filter: &peer::PeerFilter) {
    let accepted = Instant::now();
    let peer = match peer::read_peer(&connection) {
        Ok(peer) => peer,
        Err(error) => {
            tracing::error!(%error, "failed to read the peer's identity; connection closed");
            return;
        }
    };
    if let Err(parameter) = filter.check(&peer) {
        let error = BrokerError::new(
            ErrorKind::PermissionDenied,
            "",
            parameter,
            format!("this peer does not match the broker's {parameter} parameter"),
        );
        rejection::reject(
            &connection,
            &peer,
            error,
            accepted,
            "peer rejected by the global filter; connection closed",
        );
        return;
    }
    let uid = peer.uid;
    if !shared.take_uid_slot(uid) {
        let error = BrokerError::new(
            ErrorKind::Busy,
            "connections",
            "max_connections_per_uid",
            format!(
                "this user already holds {} connections, its max_connections_per_uid. Try \
                 again later",
                shared.config.connections_per_uid()
            ),
        );
        rejection::reject(
            &connection,
            &peer,
            error,
            accepted,
            "peer uid holds max_connections_per_uid connections; connection rejected with Busy",
        );
        return;
    }
    *lock(&shared.active) += 1;
    let slot = SessionSlot {
        shared: shared.clone(),
        uid,
    };
    let spawned = std::thread::Builder::new()
        .name("session".to_string())
        .spawn(move || {
            session::run(&slot.shared, connection, peer);
            drop(slot);
        });
    // On failure the closure, and the slot in it, is already dropped.
    if let Err(error) = spawned {
        tracing::error!(%error, "failed to start a session thread; connection closed");
    }
}

/// A connection's place in the uid and max_connections counts. Dropping it gives the
/// place back, also when the session thread panics or never starts.
struct SessionSlot {
    shared: Arc<Shared>,
    uid: u32,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.shared.release_uid_slot(self.uid);
        *lock(&self.shared.active) -= 1;
        self.shared.active_changed.notify_all();
    }
}

/// Stops accepting, removes the socket, gives running sessions the grace period, then
/// kills the process groups of scripts still running.
fn shut_down(shared: &Arc<Shared>, listener: &listener::Listener) {
    if let Err(error) = listener.remove_socket_file() {
        tracing::error!(%error, path = %listener.path.display(), "failed to remove the socket file");
    }
    let grace_end = Instant::now() + shared.config.shutdown_grace;
    let wait_for_sessions = |until: Instant| {
        let mut active = lock(&shared.active);
        while *active > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            active = shared
                .active_changed
                .wait_timeout(active, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *active
    };
    let remaining = wait_for_sessions(grace_end);
    if remaining > 0 {
        tracing::warn!(
            sessions = remaining,
            scripts = shared.process_groups.count(),
            "grace period over; killing running scripts"
        );
        shared.process_groups.kill_all();
        // Sessions whose script was just killed still send that result to their client.
        let remaining = wait_for_sessions(Instant::now() + Duration::from_secs(1));
        if remaining > 0 {
            tracing::warn!(
                sessions = remaining,
                "killing parser children still serving"
            );
            for pid in lock(&shared.session_children).iter() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        wait_for_sessions(Instant::now() + Duration::from_secs(2));
    }
}
