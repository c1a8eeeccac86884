//! The parser child: the only process that reads bytes a client wrote.
//!
//! The monitor starts it by re-executing its own binary with [`ROLE_ARGUMENT`], as root,
//! with an empty environment, the channel to the monitor on descriptor 3 and the audit
//! queue on descriptor 4. Before it receives a client connection it closes every other
//! descriptor, switches to the unprivileged user, sets no_new_privs, and applies landlock
//! and seccomp. It then waits for an `Assign` from the monitor carrying a client
//! connection, the peer identity the monitor read from the kernel and the commands that
//! peer may run, and serves that client. With `max_connections` above 1 it then closes
//! the connection, clears its per-connection state, sends `Ready` and waits for the next
//! `Assign`, which the monitor sends only for a connection of the same peer identity.
//! After `max_connections` connections, or at end of file on the channel, it exits.
//!
//! Trusted input: the monitor's messages. Untrusted: everything read from the client.

pub mod scrub;
mod serve;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags};

use crate::audit::AuditSender;
use crate::protocol::channel::{self, MAX_MESSAGE_BYTES, MonitorMessage};
use crate::sandbox::{self, SandboxMode};

/// First argument that selects the parser child role. Not a documented command.
pub const ROLE_ARGUMENT: &str = "__parser-child";
/// Descriptor of the SOCK_SEQPACKET channel to the monitor.
pub const CHANNEL_FD: RawFd = 3;
/// Descriptor of the audit queue's non-blocking sending end.
pub const QUEUE_FD: RawFd = 4;

/// Settings the monitor passes on the child's command line.
#[derive(Debug, Clone)]
pub struct ChildSettings {
    pub uid: u32,
    pub gid: u32,
    pub sandbox: SandboxMode,
    pub max_frame_bytes: usize,
    pub request_timeout: Duration,
    pub max_requests: u32,
    /// Connections this child serves before it exits; 0 counts as 1.
    pub max_connections: u32,
    /// Pid of the monitor, to detect that it died before this child asked to die with it.
    pub monitor_pid: i32,
}

impl ChildSettings {
    /// Renders the settings as arguments after [`ROLE_ARGUMENT`].
    pub fn to_args(&self) -> Vec<String> {
        vec![
            self.uid.to_string(),
            self.gid.to_string(),
            self.sandbox.to_string(),
            self.max_frame_bytes.to_string(),
            self.request_timeout.as_millis().to_string(),
            self.max_requests.to_string(),
            self.max_connections.to_string(),
            self.monitor_pid.to_string(),
        ]
    }

    fn from_args(args: &[String]) -> Option<ChildSettings> {
        let [
            uid,
            gid,
            sandbox,
            max_frame_bytes,
            timeout_ms,
            max_requests,
            max_connections,
            monitor_pid,
        ] = args
        else {
            return None;
        };
        Some(ChildSettings {
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            sandbox: sandbox.parse().ok()?,
            max_frame_bytes: max_frame_bytes.parse().ok()?,
            request_timeout: Duration::from_millis(timeout_ms.parse().ok()?),
            max_requests: max_requests.parse().ok()?,
            max_connections: max_connections.parse().ok()?,
            monitor_pid: monitor_pid.parse().ok()?,
        })
    }
}

/// Exit status of a child whose setup failed; the monitor logs it.
const EXIT_SETUP_FAILED: u8 = 70;

/// Runs the parser child role. `args` are the arguments after [`ROLE_ARGUMENT`].
pub fn run(args: &[String]) -> ExitCode {
    // A panic must not write to a descriptor that may by then be the client connection,
    // so the hook prints nothing and the process aborts.
    std::panic::set_hook(Box::new(|_| std::process::abort()));

    // Every block freed from here on is zeroed first, so a later connection cannot find
    // an earlier one's bytes in this process.
    scrub::enable();
    let Some(settings) = ChildSettings::from_args(args) else {
        return ExitCode::from(EXIT_SETUP_FAILED);
    };
    let Ok((channel, queue)) = crate::sys::take_child_descriptors(CHANNEL_FD, QUEUE_FD) else {
        return ExitCode::from(EXIT_SETUP_FAILED);
    };
    let audit = AuditSender::new(queue);

    // Privileges go first, while the filters still allow setgroups and setresuid.
    if sandbox::drop_privileges(settings.uid, settings.gid).is_err() {
        return ExitCode::from(EXIT_SETUP_FAILED);
    }
    // Die with the monitor. The uid change above clears this setting, so it comes after.
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err() {
        return ExitCode::from(EXIT_SETUP_FAILED);
    }
    // A monitor that died before the call above left this process to another parent.
    if nix::unistd::getppid().as_raw() != settings.monitor_pid {
        return ExitCode::from(EXIT_SETUP_FAILED);
    }
    let status = match sandbox::confine_parser_child(settings.sandbox) {
        Ok(status) => status,
        Err(_) => return ExitCode::from(EXIT_SETUP_FAILED),
    };

    // From here on the seccomp filter allows only the calls the serve loop makes.
    let max_connections = settings.max_connections.max(1);
    let mut carried = serve::Carried {
        channel,
        audit,
        settings,
        buffer: vec![0u8; MAX_MESSAGE_BYTES],
    };
    let mut served: u32 = 0;
    loop {
        // End of file on the channel after a connection means the monitor decided not to
        // send another one, which is a normal end.
        let Some((client, message)) = receive_assignment(&carried.channel, &mut carried.buffer)
        else {
            return if served == 0 {
                ExitCode::from(EXIT_SETUP_FAILED)
            } else {
                ExitCode::SUCCESS
            };
        };
        let MonitorMessage::Assign {
            session_id,
            peer: _,
            commands,
        } = message
        else {
            return ExitCode::from(EXIT_SETUP_FAILED);
        };
        served += 1;
        let mut session = serve::Session::new(session_id, client, commands, carried);
        session.sandbox_event(&status.to_string(), served);
        session.serve();
        match session.finish(served < max_connections) {
            Some(next) => carried = next,
            None => return ExitCode::SUCCESS,
        }
        scrub::erase_stack();
    }
}

/// Waits for the monitor's Assign message and the client descriptor that travels with it.
fn receive_assignment(channel: &OwnedFd, buffer: &mut [u8]) -> Option<(OwnedFd, MonitorMessage)> {
    let mut control = nix::cmsg_space!(RawFd);
    let (length, client) = {
        let mut iov = [std::io::IoSliceMut::new(buffer)];
        let message = loop {
            match nix::sys::socket::recvmsg::<()>(
                channel.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::empty(),
            ) {
                Ok(message) => break message,
                Err(nix::Error::EINTR) => continue,
                Err(_) => return None,
            }
        };
        if message
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
        {
            return None;
        }
        let mut client = None;
        for control_message in message.cmsgs().ok()? {
            if let ControlMessageOwned::ScmRights(fds) = control_message {
                for fd in fds {
                    let owned = crate::sys::own_received_fd(fd);
                    if client.is_none() {
                        client = Some(owned);
                    }
                }
            }
        }
        (message.bytes, client?)
    };
    let message = channel::decode_monitor_message(&buffer[..length]).ok()?;
    Some((client, message))
}
