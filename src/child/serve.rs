//! The parser child's request loop for one client connection.
//!
//! Every frame is parsed and validated here. Requests the child can reply to alone
//! (introspection, and every rejection) never reach the monitor; a valid Run becomes a
//! typed Exec message on the channel, and the monitor checks it again.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use nix::sys::socket::MsgFlags;
use serde_json::{Value, json};

use super::ChildSettings;
use crate::audit::{AuditSender, Event, EventKind, PRIORITY_INFO, PRIORITY_WARN};
use crate::policy::CommandSpec;
use crate::protocol::call_names;
use crate::protocol::channel::{self, ChildMessage, MonitorMessage};
use crate::protocol::frame::{self, FrameError, FrameReader};
use crate::protocol::varlink::{self, Request};
use crate::protocol::{BrokerError, ErrorKind};

/// The frame that makes a `fault-injection` build call a forbidden system call.
#[cfg(feature = "fault-injection")]
pub const FORBIDDEN_SYSCALL_FRAME: &[u8] =
    br#"{"method":"org.securesocket.FaultInjection.ForbiddenSyscall"}"#;

pub(super) struct Session {
    /// Random id the monitor gave this connection; request ids are derived from it.
    session_id: u64,
    /// Requests read so far on this connection.
    requests: u64,
    client: OwnedFd,
    channel: OwnedFd,
    audit: AuditSender,
    commands: Vec<CommandSpec>,
    settings: ChildSettings,
    /// Receive buffer for monitor messages, reused for every reply.
    buffer: Vec<u8>,
}

/// State a child keeps from one connection to the next: its channel, its audit sender,
/// its start-up settings and the zeroed receive buffer. Nothing here depends on the
/// client or on the commands of the policy.
pub(super) struct Carried {
    pub channel: OwnedFd,
    pub audit: AuditSender,
    pub settings: ChildSettings,
    pub buffer: Vec<u8>,
}

/// Next step for the connection after a request.
enum Next {
    Continue,
    Close,
}

impl Session {
    /// Starts the state of one connection. Request numbers start again at zero and audit
    /// events carry the new session id from here on.
    pub fn new(
        session_id: u64,
        client: OwnedFd,
        commands: Vec<CommandSpec>,
        carried: Carried,
    ) -> Session {
        let Carried {
            channel,
            mut audit,
            settings,
            buffer,
        } = carried;
        audit.set_session(session_id);
        Session {
            session_id,
            requests: 0,
            client,
            channel,
            audit,
            commands,
            settings,
            buffer,
        }
    }

    /// Sends the sandbox status, and how many connections this child has served counting
    /// this one, so that the log shows a reused child.
    pub fn sandbox_event(&mut self, status: &str, connections_served: u32) {
        self.audit.send(
            Event {
                session_id: 0,
                kind: EventKind::Sandbox,
                dropped: 0,
                duration_us: 0,
                method: String::new(),
                command: String::new(),
                outcome: "ok".to_string(),
                detail: format!("{status}; connection {connections_served} of this child"),
                request_id: String::new(),
                field: String::new(),
                rule: String::new(),
            },
            PRIORITY_INFO,
        );
    }

    pub fn serve(&mut self) {
        let mut reader = FrameReader::new(self.settings.max_frame_bytes);
        for _ in 0..self.settings.max_requests {
            let waiting_since = Instant::now();
            let deadline = waiting_since + self.settings.request_timeout;
            let frame = match reader.read_frame(self.client.as_fd(), deadline) {
                Ok(frame) => frame,
                Err(error) => {
                    self.handle_frame_error(error, waiting_since);
                    return;
                }
            };
            let started = Instant::now();
            if let Next::Close = self.handle_frame(&frame, started) {
                return;
            }
        }
        self.protocol_event("closed", "max_requests_per_connection reached");
    }

    /// Closes the client connection and sends the monitor `Ready` when `serve_again` is
    /// set, so the monitor may send another Assign, or `Bye` otherwise. Returns what the next connection reuses, or `None` when this child
    /// exits now.
    pub fn finish(self, serve_again: bool) -> Option<Carried> {
        let Session {
            client,
            channel,
            mut audit,
            settings,
            mut buffer,
            commands,
            ..
        } = self;
        // The client sees end of file before the monitor can hand this child another
        // connection, and nothing of this client or its commands stays reachable.
        drop(client);
        drop(commands);
        buffer.fill(0);
        let dropped_events = audit.take_dropped();
        let message = if serve_again {
            ChildMessage::Ready { dropped_events }
        } else {
            ChildMessage::Bye { dropped_events }
        };
        let sent = send_message(&channel, &message);
        if !serve_again || sent.is_err() {
            return None;
        }
        Some(Carried {
            channel,
            audit,
            settings,
            buffer,
        })
    }

    /// Replies to a frame that is too large or incomplete at the deadline and records it
    /// as a rejected request under a request id of its own. A connection that ends or
    /// fails gets a protocol event only, because no reply can reach the client.
    fn handle_frame_error(&mut self, error: FrameError, waiting_since: Instant) {
        let rejection = match error {
            FrameError::Closed => return,
            FrameError::ClosedMidFrame { received } => {
                self.protocol_event("closed_mid_frame", &format!("{received} bytes received"));
                return;
            }
            FrameError::Io(errno) => {
                self.protocol_event("io_error", &errno.to_string());
                return;
            }
            FrameError::TooLarge { limit } => BrokerError::new(
                ErrorKind::RequestTooLarge,
                "frame",
                "max_frame_bytes",
                format!("request frame exceeds the limit of {limit} bytes"),
            ),
            FrameError::TimedOut => {
                let limit_ms = self.settings.request_timeout.as_millis();
                BrokerError::new(
                    ErrorKind::TimedOut,
                    "frame",
                    "request_timeout_ms",
                    format!("no complete request within {limit_ms} ms"),
                )
            }
        };
        self.requests += 1;
        let rejection = rejection.with_request_id(self.request_id());
        self.write_error(&rejection);
        self.request_event("", "", &rejection, waiting_since);
    }

    /// Returns the id of the current request, for requests this child replies to itself:
    /// the session id and the request's number on the connection.
    fn request_id(&self) -> String {
        format!("{:016x}-{}", self.session_id, self.requests)
    }

    fn handle_frame(&mut self, frame: &[u8], started: Instant) -> Next {
        self.requests += 1;
        #[cfg(feature = "fault-injection")]
        if frame == FORBIDDEN_SYSCALL_FRAME {
            crate::sys::call_forbidden_syscall();
        }
        let call = match varlink::parse_call(frame) {
            Ok(call) => call,
            Err(error) => {
                let error = error.with_request_id(self.request_id());
                self.write_error(&error);
                let names = call_names::read_call_names(frame);
                self.request_event(&names.method, &names.command, &error, started);
                return Next::Continue;
            }
        };
        let oneway = call.oneway;
        let (method, command, result) = match call.request {
            Request::GetInfo => (
                "org.varlink.service.GetInfo",
                String::new(),
                Ok(varlink::get_info_parameters()),
            ),
            Request::GetInterfaceDescription { interface } => {
                let result = match varlink::interface_description(&interface) {
                    Some(description) => Ok(json!({ "description": description })),
                    None => Err(BrokerError::new(
                        ErrorKind::InterfaceNotFound,
                        interface.clone(),
                        "unknown_interface",
                        "interface not found",
                    )),
                };
                (
                    "org.varlink.service.GetInterfaceDescription",
                    interface,
                    result,
                )
            }
            Request::List => {
                let commands: Vec<Value> =
                    self.commands.iter().map(varlink::command_info).collect();
                (
                    "org.securesocket.Broker.List",
                    String::new(),
                    Ok(json!({ "commands": commands })),
                )
            }
            Request::Describe { command } => {
                let result = match self.find(&command) {
                    Some(spec) => Ok(json!({ "command": varlink::command_info(spec) })),
                    None => Err(unknown_command(&command)),
                };
                ("org.securesocket.Broker.Describe", command, result)
            }
            Request::Run {
                command,
                arguments,
                stdin,
            } => {
                return self.run(command, arguments, stdin, oneway, started);
            }
        };
        match result {
            Ok(mut parameters) => {
                // The audit record of this request carries the same id. GetInfo and
                // GetInterfaceDescription get it as an extra member, which varlink
                // clients ignore.
                if let Some(object) = parameters.as_object_mut() {
                    object.insert("request_id".to_string(), json!(self.request_id()));
                }
                if !oneway && !self.write_reply(parameters) {
                    return Next::Close;
                }
                self.ok_event(method, &command, started);
            }
            Err(error) => {
                let error = error.with_request_id(self.request_id());
                if !oneway {
                    self.write_error(&error);
                }
                self.request_event(method, &command, &error, started);
            }
        }
        Next::Continue
    }

    fn run(
        &mut self,
        command: String,
        arguments: Vec<(String, crate::policy::ArgValue)>,
        stdin: Option<String>,
        oneway: bool,
        started: Instant,
    ) -> Next {
        let method = "org.securesocket.Broker.Run";
        let stdin = stdin.map(String::into_bytes).unwrap_or_default();
        // A command this child does not know goes to the monitor without arguments or
        // stdin: the monitor decides between UnknownCommand and PermissionDenied, so the
        // child never learns the names of commands its peer may not run, and no
        // unvalidated value crosses the channel.
        let checked = match self.find(&command) {
            Some(spec) => check_request(spec, &arguments, &stdin),
            None => Ok(Vec::new()),
        };
        let stdin = if self.find(&command).is_some() {
            stdin
        } else {
            Vec::new()
        };
        let arguments = match checked {
            Ok(arguments) => arguments,
            Err(error) => {
                let error = error.with_request_id(self.request_id());
                if !oneway {
                    self.write_error(&error);
                }
                self.request_event(method, &command, &error, started);
                return Next::Continue;
            }
        };
        let message = ChildMessage::Exec {
            command,
            arguments,
            stdin,
        };
        if self.send_to_monitor(&message).is_err() {
            return Next::Close;
        }
        let reply = match self.receive_from_monitor() {
            Some(reply) => reply,
            None => return Next::Close,
        };
        if oneway {
            return Next::Continue;
        }
        // The monitor logs the request event for every Exec it receives.
        let written = match reply {
            MonitorMessage::ExecDone(outcome) => self.write_reply(varlink::run_reply(&outcome)),
            MonitorMessage::ExecFailed(error) => self.write_error(&error),
            MonitorMessage::Assign { .. } => false,
        };
        if written { Next::Continue } else { Next::Close }
    }

    fn find(&self, command: &str) -> Option<&CommandSpec> {
        self.commands.iter().find(|spec| spec.name == command)
    }

    fn write_reply(&mut self, parameters: Value) -> bool {
        let bytes = varlink::encode_reply(parameters);
        self.write_bytes(&bytes)
    }

    fn write_error(&mut self, error: &BrokerError) -> bool {
        let bytes = varlink::encode_error(error);
        self.write_bytes(&bytes)
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> bool {
        let deadline = Instant::now() + self.settings.request_timeout;
        match frame::write_all(self.client.as_fd(), bytes, deadline) {
            Ok(()) => true,
            Err(error) => {
                self.protocol_event("write_failed", &error.to_string());
                false
            }
        }
    }

    fn send_to_monitor(&mut self, message: &ChildMessage) -> nix::Result<()> {
        send_message(&self.channel, message)
    }

    fn receive_from_monitor(&mut self) -> Option<MonitorMessage> {
        let length = {
            let mut iov = [std::io::IoSliceMut::new(&mut self.buffer)];
            let message = loop {
                match nix::sys::socket::recvmsg::<()>(
                    self.channel.as_raw_fd(),
                    &mut iov,
                    None,
                    MsgFlags::empty(),
                ) {
                    Ok(message) => break message,
                    Err(nix::Error::EINTR) => continue,
                    Err(_) => return None,
                }
            };
            if message.bytes == 0 || message.flags.contains(MsgFlags::MSG_TRUNC) {
                return None;
            }
            message.bytes
        };
        channel::decode_monitor_message(&self.buffer[..length]).ok()
    }

    fn ok_event(&mut self, method: &str, command: &str, started: Instant) {
        self.audit.send(
            Event {
                session_id: 0,
                kind: EventKind::Request,
                dropped: 0,
                duration_us: started.elapsed().as_micros() as u64,
                method: method.to_string(),
                command: command.to_string(),
                outcome: "ok".to_string(),
                detail: String::new(),
                request_id: self.request_id(),
                field: String::new(),
                rule: String::new(),
            },
            PRIORITY_INFO,
        );
    }

    fn request_event(
        &mut self,
        method: &str,
        command: &str,
        error: &BrokerError,
        started: Instant,
    ) {
        self.audit.send(
            Event {
                session_id: 0,
                kind: EventKind::Request,
                dropped: 0,
                duration_us: started.elapsed().as_micros() as u64,
                method: method.to_string(),
                command: command.to_string(),
                outcome: error.varlink_name().to_string(),
                detail: String::new(),
                request_id: error.request_id.clone(),
                field: error.field.clone(),
                rule: error.rule.clone(),
            },
            PRIORITY_WARN,
        );
    }

    fn protocol_event(&mut self, outcome: &str, detail: &str) {
        self.audit.send(
            Event {
                session_id: 0,
                kind: EventKind::ProtocolError,
                dropped: 0,
                duration_us: 0,
                method: String::new(),
                command: String::new(),
                outcome: outcome.to_string(),
                detail: detail.to_string(),
                request_id: String::new(),
                field: String::new(),
                rule: String::new(),
            },
            PRIORITY_WARN,
        );
    }
}

/// Sends one message to the monitor, retrying when a signal interrupts the call.
fn send_message(channel: &OwnedFd, message: &ChildMessage) -> nix::Result<()> {
    let bytes = channel::encode_child_message(message);
    let iov = [std::io::IoSlice::new(&bytes)];
    loop {
        match nix::sys::socket::sendmsg::<()>(
            channel.as_raw_fd(),
            &iov,
            &[],
            MsgFlags::empty(),
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(error) => return Err(error),
        }
    }
}

fn unknown_command(command: &str) -> BrokerError {
    BrokerError::new(
        ErrorKind::UnknownCommand,
        command,
        "unknown_command",
        "no such command, or not one this peer may run",
    )
}

/// Validates arguments and stdin of a Run against the command's spec.
fn check_request(
    spec: &CommandSpec,
    arguments: &[(String, crate::policy::ArgValue)],
    stdin: &[u8],
) -> Result<Vec<(String, crate::policy::ArgValue)>, BrokerError> {
    let accepted = spec.validate(arguments).map_err(|error| {
        BrokerError::new(
            ErrorKind::InvalidArgument,
            error.argument.clone(),
            error.rule.to_string(),
            error.to_string(),
        )
    })?;
    if stdin.len() > spec.stdin_limit {
        let (rule, message) = if spec.stdin_limit == 0 {
            ("not_accepted", "this command takes no stdin".to_string())
        } else {
            (
                "max_length",
                format!("stdin exceeds the limit of {} bytes", spec.stdin_limit),
            )
        };
        return Err(BrokerError::new(
            ErrorKind::InvalidArgument,
            "stdin",
            rule,
            message,
        ));
    }
    Ok(accepted)
}
