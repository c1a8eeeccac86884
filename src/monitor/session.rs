//! One client connection on the monitor's side: hand the connection to a parser child,
//! serve that child's Exec messages until it sends Bye or Ready or goes away, then cache
//! the child for the same peer identity or make it exit.
//!
//! The child is treated as hostile. Its messages go through the bounded channel decoder,
//! and every Exec is checked again against the current policy and against the peer
//! identity this module recorded from the kernel, never against anything the child
//! claims. A malformed message ends the session and kills the child.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, MsgFlags, Shutdown};

use super::Shared;
use super::pool::ParserChild;
use super::redact;
use super::reuse::{AssignedChild, Identity, NotCached};
use super::runner::{self, RunRequest, RunResult};
use crate::policy::{ArgValue, Peer, Policy};
use crate::protocol::channel::{self, ChildMessage, MAX_MESSAGE_BYTES, MonitorMessage};
use crate::protocol::{BrokerError, ErrorKind};

/// Attempts to hand a connection to an idle child before giving up; a child may have
/// died while idle.
const ASSIGN_ATTEMPTS: usize = 3;
/// Time a child gets to exit after Bye or end of session before it is killed.
const CHILD_EXIT_GRACE: Duration = Duration::from_secs(2);
/// Most time an Exec waits for a free slot of its command before it gets Busy.
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// How a session ended, which decides whether its child may serve again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionEnd {
    /// The child sent Ready: it closed the connection and waits for another Assign.
    Ready,
    /// The child sent Bye and exits.
    Bye,
    /// The child hung up, broke the protocol, stalled or was killed. It never serves
    /// another connection.
    Failed,
}

/// Serves one accepted connection to its end. Runs on its own thread.
pub fn run(shared: &Arc<Shared>, connection: OwnedFd, peer: Peer) {
    let session_id = crate::sys::random_u64().unwrap_or_default();
    shared.registry.insert(session_id, peer.clone());
    let identity = if shared.config.reuses_children() {
        Identity::of(&peer)
    } else {
        None
    };
    let Some(mut assigned) = assign(shared, connection, session_id, &peer, identity.as_ref())
    else {
        shared.registry.end(session_id);
        return;
    };
    let child_pid = assigned.child.process.id();
    log_assignment(&assigned, session_id, &peer);
    super::lock(&shared.session_children).insert(child_pid);
    let end = serve_child(shared, &mut assigned.child, &peer);
    // Forget the pid before the child can be reaped, so shutdown never signals a reused
    // pid. A cached child is killed by the cache instead.
    super::lock(&shared.session_children).remove(&child_pid);
    release_child(shared, assigned, end, identity, &peer);
    shared.registry.end(session_id);
}

/// Logs which child serves a connection and whether it served this identity before.
fn log_assignment(assigned: &AssignedChild, session_id: u64, peer: &Peer) {
    let peer_exe = peer
        .exe
        .as_ref()
        .map(|exe| exe.display().to_string())
        .unwrap_or_default();
    tracing::info!(
        session = %format!("{session_id:016x}"),
        child_pid = assigned.child.process.id(),
        child = if assigned.is_reused() { "reused" } else { "fresh" },
        child_connection = assigned.previous_connections.saturating_add(1),
        peer_uid = peer.uid,
        peer_gid = peer.gid,
        peer_pid = peer.pid,
        peer_exe = peer_exe.as_str(),
        "connection assigned to parser child"
    );
}

/// Caches the child of a session that ended with Ready, when its identity allows reuse
/// and the cache accepts it. Every other child is made to exit and reaped.
pub(super) fn release_child(
    shared: &Arc<Shared>,
    assigned: AssignedChild,
    end: SessionEnd,
    identity: Option<Identity>,
    peer: &Peer,
) {
    let child_pid = assigned.child.process.id();
    let connections_served = assigned.previous_connections.saturating_add(1);
    let mut child = match (end, identity) {
        (SessionEnd::Ready, Some(identity)) => match shared.children.put(identity, assigned) {
            Ok(()) => {
                tracing::debug!(
                    child_pid,
                    peer_uid = peer.uid,
                    connections_served,
                    cached_children = shared.children.len(),
                    "parser child cached for the next connection of this peer identity"
                );
                return;
            }
            Err((mut child, reason)) => {
                tracing::debug!(
                    child_pid,
                    peer_uid = peer.uid,
                    connections_served,
                    reason = reason.reason(),
                    "parser child not cached"
                );
                if reason == NotCached::ChannelNotQuiet {
                    let _ = child.process.kill();
                }
                child
            }
        },
        _ => assigned.child,
    };
    if end == SessionEnd::Ready {
        // The child waits for another Assign; end of file on its channel makes it exit.
        let _ = nix::sys::socket::shutdown(child.channel.as_raw_fd(), Shutdown::Both);
    }
    reap(&mut child, peer);
}

/// Sends the connection, the peer identity and the peer's commands to a child: a cached
/// child of the same identity when there is one, otherwise an idle child of the pool.
fn assign(
    shared: &Arc<Shared>,
    connection: OwnedFd,
    session_id: u64,
    peer: &Peer,
    identity: Option<&Identity>,
) -> Option<AssignedChild> {
    // The child reads and writes with poll and deadlines, so the connection must not
    // block. The flag belongs to the open file description the child receives.
    if let Err(error) = set_nonblocking(&connection) {
        tracing::error!(%error, peer_uid = peer.uid, "failed to make the connection non-blocking");
        return None;
    }
    let commands = shared.current_policy().specs_for(peer);
    let message = MonitorMessage::Assign {
        session_id,
        peer: peer.clone(),
        commands,
    };
    let bytes = channel::encode_monitor_message(&message);
    if bytes.len() > MAX_MESSAGE_BYTES {
        tracing::error!(
            bytes = bytes.len(),
            limit = MAX_MESSAGE_BYTES,
            "the commands for this peer do not fit in one channel message; shorten the policy"
        );
        return None;
    }
    if let Some(assigned) = identity.and_then(|identity| shared.children.take(identity)) {
        match send_assignment(&assigned.child, &connection, &bytes) {
            Ok(()) => return Some(assigned),
            Err(error) => {
                tracing::warn!(%error, child_pid = assigned.child.process.id(), "cached parser child gone; taking one from the pool");
                let mut child = assigned.child;
                let _ = child.process.kill();
                let _ = child.process.wait();
            }
        }
    }
    for attempt in 0..ASSIGN_ATTEMPTS {
        // Read before the child is taken: a reload from here on makes the child too old
        // to be cached after this connection.
        let generation = shared.children.generation();
        // The last attempt starts a fresh child rather than trusting the idle queue.
        let queued = if attempt + 1 == ASSIGN_ATTEMPTS {
            None
        } else {
            shared.pool.take_idle()
        };
        let started_here = queued.is_none();
        let available = match queued {
            Some(child) => Ok(child),
            None => shared.pool.spawn_now(),
        };
        let mut child = match available {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(%error, peer_uid = peer.uid, "no parser child available");
                return None;
            }
        };
        match send_assignment(&child, &connection, &bytes) {
            Ok(()) => {
                return Some(AssignedChild {
                    child,
                    previous_connections: 0,
                    generation,
                    started_by_session: started_here,
                });
            }
            Err(error) => {
                tracing::warn!(%error, child_pid = child.process.id(), "idle parser child gone; trying another");
                let _ = child.process.kill();
                let _ = child.process.wait();
            }
        }
    }
    tracing::error!(
        peer_uid = peer.uid,
        "failed to hand the connection to a parser child"
    );
    None
}

/// Sends an encoded Assign with the connection attached as SCM_RIGHTS.
fn send_assignment(child: &ParserChild, connection: &OwnedFd, bytes: &[u8]) -> nix::Result<()> {
    let fds: [RawFd; 1] = [connection.as_raw_fd()];
    let rights = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(bytes)];
    nix::sys::socket::sendmsg::<()>(
        child.channel.as_raw_fd(),
        &iov,
        &rights,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(|_| ())
}

fn set_nonblocking(connection: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(connection, FcntlArg::F_GETFL)?);
    fcntl(connection, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Reads the child's messages and replies to each Exec, until Bye or Ready, end of file,
/// a malformed message, the idle limit, or more Execs than the connection may carry.
pub(super) fn serve_child(
    shared: &Arc<Shared>,
    child: &mut ParserChild,
    peer: &Peer,
) -> SessionEnd {
    let mut buffer = vec![0u8; MAX_MESSAGE_BYTES];
    // A child waits at most request_timeout for each frame and each reply write; allow
    // both plus a margin before deciding it hangs.
    let idle_limit = shared.config.request_timeout * 2 + Duration::from_secs(5);
    let max_execs = shared.config.max_requests_per_connection;
    let mut execs: u32 = 0;
    loop {
        let length = match receive(&child.channel, &mut buffer, idle_limit) {
            Ok(Some(length)) => length,
            Ok(None) => return SessionEnd::Failed,
            Err(reason) => {
                end_session(child, peer, reason);
                return SessionEnd::Failed;
            }
        };
        let message = match channel::decode_child_message(&buffer[..length]) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(peer_uid = peer.uid, peer_pid = peer.pid, child_pid = child.process.id(), %error, "malformed message from parser child; killing it");
                let _ = child.process.kill();
                return SessionEnd::Failed;
            }
        };
        let (command, arguments, stdin) = match message {
            ChildMessage::Exec {
                command,
                arguments,
                stdin,
            } => (command, arguments, stdin),
            ChildMessage::Bye { dropped_events } => {
                // Nothing the child sends afterwards is read.
                log_dropped_events(peer, dropped_events);
                return SessionEnd::Bye;
            }
            ChildMessage::Ready { dropped_events } => {
                log_dropped_events(peer, dropped_events);
                return SessionEnd::Ready;
            }
        };
        // The child enforces max_requests_per_connection too; counting here keeps a
        // compromised child from holding its session open with a stream of cheap Execs.
        execs += 1;
        if execs > max_execs {
            end_session(child, peer, "more Execs than max_requests_per_connection");
            return SessionEnd::Failed;
        }
        let (reply, channel_readable) =
            handle_exec(shared, peer, &child.channel, &command, &arguments, &stdin);
        let bytes = channel::encode_monitor_message(&reply);
        if let Err(reason) = send(&child.channel, &bytes, shared.config.request_timeout) {
            end_session(child, peer, reason);
            return SessionEnd::Failed;
        }
        if channel_readable {
            // An honest child waits for the result; one that sent something
            // meanwhile broke the protocol, and one that hung up is gone.
            end_session(
                child,
                peer,
                "parser child used the channel while a script ran",
            );
            return SessionEnd::Failed;
        }
    }
}

/// Logs the audit events a child dropped because the queue was full, with the peer of
/// the session that ends.
fn log_dropped_events(peer: &Peer, dropped_events: u32) {
    if dropped_events > 0 {
        tracing::warn!(
            peer_uid = peer.uid,
            peer_pid = peer.pid,
            dropped = dropped_events,
            "audit events dropped because the queue was full"
        );
    }
}

/// Logs why a session ends early and kills its child.
fn end_session(child: &mut ParserChild, peer: &Peer, reason: &str) {
    tracing::warn!(
        peer_uid = peer.uid,
        peer_pid = peer.pid,
        child_pid = child.process.id(),
        reason,
        "ending session with parser child"
    );
    let _ = child.process.kill();
}

/// Sends one datagram without blocking longer than `limit`: a child that never reads
/// its replies must not hold the session thread.
fn send(channel: &OwnedFd, bytes: &[u8], limit: Duration) -> Result<(), &'static str> {
    let deadline = Instant::now() + limit;
    let iov = [std::io::IoSlice::new(bytes)];
    loop {
        let sent = nix::sys::socket::sendmsg::<()>(
            channel.as_raw_fd(),
            &iov,
            &[],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        );
        match sent {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err("parser child does not read its replies");
                }
                let mut fds = [PollFd::new(channel.as_fd(), PollFlags::POLLOUT)];
                let timeout = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX);
                let _ = poll(&mut fds, timeout);
            }
            Err(_) => return Err("failed to send a result to the parser child"),
        }
    }
}

/// Waits for one datagram. `Ok(None)` is a clean end of file.
fn receive(
    channel: &OwnedFd,
    buffer: &mut [u8],
    idle_limit: Duration,
) -> Result<Option<usize>, &'static str> {
    let mut fds = [PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(idle_limit.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, timeout) {
            Ok(0) => return Err("parser child idle for too long"),
            Ok(_) => break,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return Err("failed to poll the channel"),
        }
    }
    let hung_up = fds[0]
        .revents()
        .is_some_and(|events| events.contains(PollFlags::POLLHUP));
    let mut iov = [std::io::IoSliceMut::new(buffer)];
    let message = loop {
        match nix::sys::socket::recvmsg::<()>(
            channel.as_raw_fd(),
            &mut iov,
            None,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(message) => break message,
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::ECONNRESET) => return Ok(None),
            Err(_) => return Err("failed to receive from the channel"),
        }
    };
    if message.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err("oversized message from parser child");
    }
    // SOCK_SEQPACKET delivers empty datagrams, and recvmsg returns 0 for them as it does
    // at end of file. Only a channel whose other end is closed is at end of file.
    if message.bytes == 0 {
        return if hung_up {
            Ok(None)
        } else {
            Err("empty message from parser child")
        };
    }
    Ok(Some(message.bytes))
}

/// Checks an Exec against the policy and the recorded peer, runs it, and logs one event.
/// Returns the reply and whether the channel became readable while the script ran.
///
/// The event lists the arguments last, because they are the only field a client can make
/// long, and a syslog line that is cut keeps the fields before them.
fn handle_exec(
    shared: &Arc<Shared>,
    peer: &Peer,
    channel: &OwnedFd,
    command_name: &str,
    arguments: &[(String, ArgValue)],
    stdin: &[u8],
) -> (MonitorMessage, bool) {
    let started = Instant::now();
    // A snapshot: a reload during the run does not change what this request runs under.
    let policy = shared.current_policy();
    let request_id = format!("{:016x}", crate::sys::random_u64().unwrap_or_default());
    let request = ExecRequest {
        peer,
        channel,
        command_name,
        arguments,
        stdin,
        request_id: &request_id,
    };
    let result = check_and_run(shared, &policy, &request)
        .map_err(|error| error.with_request_id(request_id.clone()));
    let duration_ms = crate::audit::elapsed_ms(started);
    let as_object = crate::logging::json_fields::arguments_as_object(&shared.config);
    let logged_arguments = match policy.commands.get(command_name) {
        Some(command) if as_object => redact::arguments_as_json(&command.spec, arguments),
        Some(command) => redact::arguments_as_text(&command.spec, arguments),
        None if as_object => "{}".to_string(),
        None => String::new(),
    };
    let peer_exe = peer
        .exe
        .as_ref()
        .map(|exe| exe.display().to_string())
        .unwrap_or_default();
    match &result {
        Ok(RunResult { outcome, .. }) => tracing::info!(
            peer_uid = peer.uid,
            peer_gid = peer.gid,
            peer_pid = peer.pid,
            peer_exe = peer_exe.as_str(),
            command = command_name,
            decision = "allowed",
            request_id = %outcome.request_id,
            outcome = %describe_outcome(outcome),
            exit_code = outcome.exit_code,
            signal = outcome.signal,
            timed_out = outcome.timed_out,
            duration_ms,
            stdin_bytes = stdin.len(),
            arguments = logged_arguments.as_str(),
            "request ran"
        ),
        Err(error) => tracing::warn!(
            peer_uid = peer.uid,
            peer_gid = peer.gid,
            peer_pid = peer.pid,
            peer_exe = peer_exe.as_str(),
            command = command_name,
            decision = "rejected",
            request_id = %request_id,
            outcome = error.varlink_name(),
            field = error.field.as_str(),
            rule = %error.rule,
            duration_ms,
            stdin_bytes = stdin.len(),
            arguments = logged_arguments.as_str(),
            "request rejected"
        ),
    }
    match result {
        Ok(result) => (
            MonitorMessage::ExecDone(result.outcome),
            result.channel_readable,
        ),
        Err(error) => (MonitorMessage::ExecFailed(error), false),
    }
}

/// An Exec as the child sent it, with the identity and channel the monitor recorded.
struct ExecRequest<'a> {
    peer: &'a Peer,
    channel: &'a OwnedFd,
    command_name: &'a str,
    arguments: &'a [(String, ArgValue)],
    stdin: &'a [u8],
    request_id: &'a str,
}

/// Describes how a run ended, for the log: "exit 0", "signal 9", "timed out, signal 9".
fn describe_outcome(outcome: &channel::ExecOutcome) -> String {
    let ending = match (outcome.exit_code, outcome.signal) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "unknown".to_string(),
    };
    if outcome.timed_out {
        format!("timed out, {ending}")
    } else {
        ending
    }
}

fn check_and_run(
    shared: &Arc<Shared>,
    policy: &Policy,
    exec: &ExecRequest<'_>,
) -> Result<RunResult, BrokerError> {
    let ExecRequest {
        peer,
        channel,
        command_name,
        arguments,
        stdin,
        request_id,
    } = *exec;
    let Some(command) = policy.commands.get(command_name) else {
        return Err(BrokerError::new(
            ErrorKind::UnknownCommand,
            command_name,
            "unknown_command",
            "no such command",
        ));
    };
    if let Err(denied) = command.permits(peer) {
        return Err(BrokerError::new(
            ErrorKind::PermissionDenied,
            command_name,
            denied.rule(),
            denied.to_string(),
        ));
    }
    // The child validated these already. A failure here means the child is broken or
    // compromised, so it is logged as an error as well as rejected.
    let accepted = command.spec.validate(arguments).map_err(|error| {
        tracing::error!(peer_uid = peer.uid, peer_pid = peer.pid, command = command_name, argument = error.argument.as_str(), rule = %error.rule, "parser child sent an Exec that fails validation");
        BrokerError::new(
            ErrorKind::InvalidArgument,
            error.argument.clone(),
            error.rule.to_string(),
            error.to_string(),
        )
    })?;
    if stdin.len() > command.spec.stdin_limit {
        return Err(BrokerError::new(
            ErrorKind::InvalidArgument,
            "stdin",
            "max_length",
            format!(
                "stdin exceeds the limit of {} bytes",
                command.spec.stdin_limit
            ),
        ));
    }
    if shared.is_shutting_down() {
        return Err(BrokerError::new(
            ErrorKind::Busy,
            "broker",
            "shutting_down",
            "the broker is shutting down",
        ));
    }
    // Checked before the wait for a slot, so that a peer over its rate never occupies one.
    // Every request that gets this far takes a token, even one that then gets Busy.
    if let Some(limit) = &command.rate_limit {
        shared
            .rate_limiter
            .check(command_name, peer.uid, limit, Instant::now())
            .map_err(|limited| limited.to_broker_error(command_name, limit))?;
    }
    let _slot = shared
        .acquire_slot(command_name, command.max_concurrent, BUSY_WAIT)
        .ok_or_else(|| {
            BrokerError::new(
                ErrorKind::Busy,
                command_name,
                "max_concurrent",
                format!(
                    "all {} slots of this command are in use; try again later",
                    command.max_concurrent
                ),
            )
        })?;
    let request = RunRequest {
        command,
        arguments: &accepted,
        stdin,
        peer,
        request_id,
        channel: Some(channel.as_fd()),
    };
    runner::run(&request, &shared.process_groups).map_err(|error| {
        tracing::error!(%error, command = command_name, "script failed to run");
        BrokerError::new(
            ErrorKind::ExecutionFailed,
            command_name,
            "spawn",
            error.to_string(),
        )
    })
}

/// Waits for the child to exit and logs how it ended; kills it if it lingers.
fn reap(child: &mut ParserChild, peer: &Peer) {
    let deadline = Instant::now() + CHILD_EXIT_GRACE;
    let status = loop {
        match child.process.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.process.kill();
                break child.process.wait().ok();
            }
            Err(_) => break None,
        }
    };
    let child_pid = child.process.id();
    match status {
        Some(status) if status.success() => {
            tracing::debug!(child_pid, peer_uid = peer.uid, "parser child exited");
        }
        Some(status) => match status.signal() {
            Some(signal) => tracing::error!(
                child_pid,
                peer_uid = peer.uid,
                peer_gid = peer.gid,
                peer_pid = peer.pid,
                signal,
                seccomp_violation = signal == libc::SIGSYS,
                "parser child killed by a signal; its connection is closed"
            ),
            None => tracing::error!(
                child_pid,
                peer_uid = peer.uid,
                peer_pid = peer.pid,
                exit_code = ?status.code(),
                "parser child failed"
            ),
        },
        None => tracing::error!(
            child_pid,
            peer_uid = peer.uid,
            "failed to reap parser child"
        ),
    }
}
