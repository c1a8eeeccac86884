//! Messages on the SOCK_SEQPACKET channel between a parser child and the monitor.
//!
//! One message per datagram. A message is a tag byte, then the fields in declaration
//! order. Integers are little-endian, strings and byte strings a u32 length followed by
//! the bytes, options a 0/1 byte followed by the value, lists a u32 count followed by the
//! items.
//! Booleans are a 0/1 byte, an argument value is a type tag followed by the value, and the
//! command list of an Assign is a byte string holding JSON. Every length is checked against
//! the limits below before anything is allocated, strings must be UTF-8, and trailing bytes
//! are an error.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::policy::{ArgValue, CommandSpec, Peer};
use crate::protocol::{BrokerError, ErrorKind};

/// Largest datagram either side sends. Kept below the default socket buffer size
/// (net.core.wmem_default, 212992 bytes) so that a message always fits in one datagram.
pub const MAX_MESSAGE_BYTES: usize = 200 * 1024;
/// Maximum length of a command or argument name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Maximum number of arguments in one Exec.
pub const MAX_ARGUMENTS: usize = 64;
/// Maximum length of a string argument value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest stdin payload.
pub const MAX_STDIN_BYTES: usize = 64 * 1024;
/// Largest captured output per stream.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Parser child to monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildMessage {
    /// Run a command with arguments the child has already validated.
    Exec {
        command: String,
        arguments: Vec<(String, ArgValue)>,
        stdin: Vec<u8>,
    },
    /// The client is done; the child exits after sending this. Carries the number of
    /// audit events the child dropped since its last event that reached the queue, so
    /// that drops at the end of a session are still counted.
    Bye { dropped_events: u32 },
    /// The client is done, this child closed the connection and cleared its state, and
    /// it waits for another Assign of the same peer identity instead of exiting. Carries
    /// the dropped events as Bye does.
    Ready { dropped_events: u32 },
}

/// Monitor to parser child.
#[derive(Debug, Clone)]
pub enum MonitorMessage {
    /// Hands a client connection to an idle child. The connection itself travels in the
    /// same datagram as SCM_RIGHTS.
    Assign {
        /// Random id that the child puts on its audit events, so that the monitor logs
        /// them with the identity it recorded rather than one the child claims.
        session_id: u64,
        peer: Peer,
        /// The commands this peer may run.
        commands: Vec<CommandSpec>,
    },
    /// Result of an Exec that ran.
    ExecDone(ExecOutcome),
    /// An Exec that was rejected or could not run.
    ExecFailed(BrokerError),
}

/// Result of a script run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutcome {
    pub request_id: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_us: u64,
    /// `None` when the command does not capture output.
    pub stdout: Option<Vec<u8>>,
    pub stderr: Option<Vec<u8>>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Maximum length in bytes of a peer's executable path: PATH_MAX on Linux.
const MAX_PATH_BYTES: usize = 4096;
/// Maximum number of supplementary groups of a peer: NGROUPS_MAX on Linux.
const MAX_GROUPS: usize = 65536;
/// Maximum length in bytes of a request id, which the monitor generates.
const MAX_REQUEST_ID_BYTES: usize = MAX_NAME_BYTES;

const TAG_EXEC: u8 = 1;
const TAG_BYE: u8 = 2;
const TAG_READY: u8 = 3;

const TAG_ASSIGN: u8 = 1;
const TAG_EXEC_DONE: u8 = 2;
const TAG_EXEC_FAILED: u8 = 3;

const TAG_VALUE_STR: u8 = 1;
const TAG_VALUE_INT: u8 = 2;
const TAG_VALUE_BOOL: u8 = 3;

/// Failure to decode a channel message. `field` names the message field.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("message truncated in field {field}")]
    Truncated { field: &'static str },
    #[error("unknown tag {tag} in field {field}")]
    UnknownTag { field: &'static str, tag: u8 },
    #[error("invalid flag byte {value} in field {field}, expected 0 or 1")]
    InvalidFlag { field: &'static str, value: u8 },
    #[error("length {length} of field {field} exceeds the limit of {limit}")]
    OverLimit {
        field: &'static str,
        length: usize,
        limit: usize,
    },
    #[error("invalid UTF-8 in field {field}")]
    InvalidUtf8 { field: &'static str },
    #[error("failed to decode the command list")]
    Commands(#[source] serde_json::Error),
    #[error("{count} trailing bytes after the message")]
    TrailingBytes { count: usize },
}

/// Encodes a message for the monitor.
///
/// NOTE: nothing here checks the limits. An Exec whose arguments exceed them, or whose
/// encoding exceeds [`MAX_MESSAGE_BYTES`], is encoded anyway and rejected by the
/// monitor's decoder. `varlink::parse_call` bounds each name and value, and the encoding
/// of a parsed Run is less than 1 KiB larger than its frame. So an Exec fits while
/// max_frame_bytes stays that far below [`MAX_MESSAGE_BYTES`]. The child should still
/// check the encoded length before sending.
pub fn encode_child_message(message: &ChildMessage) -> Vec<u8> {
    let mut writer = Writer::default();
    match message {
        ChildMessage::Exec {
            command,
            arguments,
            stdin,
        } => {
            writer.u8(TAG_EXEC);
            writer.bytes(command.as_bytes());
            writer.count(arguments.len());
            for (name, value) in arguments {
                writer.bytes(name.as_bytes());
                match value {
                    ArgValue::Str(text) => {
                        writer.u8(TAG_VALUE_STR);
                        writer.bytes(text.as_bytes());
                    }
                    ArgValue::Int(number) => {
                        writer.u8(TAG_VALUE_INT);
                        writer.i64(*number);
                    }
                    ArgValue::Bool(flag) => {
                        writer.u8(TAG_VALUE_BOOL);
                        writer.bool(*flag);
                    }
                }
            }
            writer.bytes(stdin);
        }
        ChildMessage::Bye { dropped_events } => {
            writer.u8(TAG_BYE);
            writer.u32(*dropped_events);
        }
        ChildMessage::Ready { dropped_events } => {
            writer.u8(TAG_READY);
            writer.u32(*dropped_events);
        }
    }
    writer.bytes
}

/// Decodes a message from a parser child. The child may be compromised, so every length
/// is checked against its limit and against the bytes left before anything is allocated.
pub fn decode_child_message(bytes: &[u8]) -> Result<ChildMessage, DecodeError> {
    let mut reader = Reader::new(bytes)?;
    let message = match reader.u8("tag")? {
        TAG_EXEC => {
            let command = reader.string("command", MAX_NAME_BYTES)?;
            // The smallest argument is a name length, a type tag and a boolean.
            let count = reader.count("arguments", MAX_ARGUMENTS, 4 + 1 + 1)?;
            let mut arguments = Vec::with_capacity(count);
            for _ in 0..count {
                let name = reader.string("argument name", MAX_NAME_BYTES)?;
                let value = match reader.u8("argument type")? {
                    TAG_VALUE_STR => {
                        ArgValue::Str(reader.string("argument value", MAX_VALUE_BYTES)?)
                    }
                    TAG_VALUE_INT => ArgValue::Int(reader.i64("argument value")?),
                    TAG_VALUE_BOOL => ArgValue::Bool(reader.flag("argument value")?),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            field: "argument type",
                            tag,
                        });
                    }
                };
                arguments.push((name, value));
            }
            let stdin = reader.bytes("stdin", MAX_STDIN_BYTES)?.to_vec();
            ChildMessage::Exec {
                command,
                arguments,
                stdin,
            }
        }
        TAG_BYE => ChildMessage::Bye {
            dropped_events: reader.u32("dropped events")?,
        },
        TAG_READY => ChildMessage::Ready {
            dropped_events: reader.u32("dropped events")?,
        },
        tag => return Err(DecodeError::UnknownTag { field: "tag", tag }),
    };
    reader.finish()?;
    Ok(message)
}

/// Encodes a message for a parser child.
pub fn encode_monitor_message(message: &MonitorMessage) -> Vec<u8> {
    let mut writer = Writer::default();
    match message {
        MonitorMessage::Assign {
            session_id,
            peer,
            commands,
        } => {
            writer.u8(TAG_ASSIGN);
            writer.u64(*session_id);
            writer.u32(peer.uid);
            writer.u32(peer.gid);
            writer.i32(peer.pid);
            writer.count(peer.groups.len());
            for group in &peer.groups {
                writer.u32(*group);
            }
            writer.option(peer.exe.as_ref(), |writer, exe| {
                writer.bytes(exe.as_os_str().as_bytes())
            });
            // serde_json fails only on map keys that are not strings or on a failing
            // Serialize impl, and CommandSpec has neither. Should it fail anyway, an empty
            // list still decodes and the child then permits nothing.
            let commands = serde_json::to_vec(commands).unwrap_or_else(|_| b"[]".to_vec());
            writer.bytes(&commands);
        }
        MonitorMessage::ExecDone(outcome) => {
            writer.u8(TAG_EXEC_DONE);
            writer.bytes(outcome.request_id.as_bytes());
            writer.option(outcome.exit_code.as_ref(), |writer, code| writer.i32(*code));
            writer.option(outcome.signal.as_ref(), |writer, signal| {
                writer.i32(*signal)
            });
            writer.bool(outcome.timed_out);
            writer.u64(outcome.duration_us);
            writer.option(outcome.stdout.as_ref(), |writer, out| writer.bytes(out));
            writer.option(outcome.stderr.as_ref(), |writer, err| writer.bytes(err));
            writer.bool(outcome.stdout_truncated);
            writer.bool(outcome.stderr_truncated);
        }
        MonitorMessage::ExecFailed(error) => {
            writer.u8(TAG_EXEC_FAILED);
            writer.u8(error.kind as u8);
            writer.bytes(error.field.as_bytes());
            writer.bytes(error.rule.as_bytes());
            writer.bytes(error.message.as_bytes());
            writer.bytes(error.request_id.as_bytes());
        }
    }
    writer.bytes
}

/// Decodes a message from the monitor. The child trusts the monitor, but the lengths are
/// bounded all the same so that a bug cannot make the child allocate without limit.
pub fn decode_monitor_message(bytes: &[u8]) -> Result<MonitorMessage, DecodeError> {
    let mut reader = Reader::new(bytes)?;
    let message = match reader.u8("tag")? {
        TAG_ASSIGN => {
            let session_id = reader.u64("session id")?;
            let uid = reader.u32("peer uid")?;
            let gid = reader.u32("peer gid")?;
            let pid = reader.i32("peer pid")?;
            let count = reader.count("peer groups", MAX_GROUPS, 4)?;
            let mut groups = Vec::with_capacity(count);
            for _ in 0..count {
                groups.push(reader.u32("peer groups")?);
            }
            let exe = match reader.flag("peer exe")? {
                true => {
                    let exe = reader.bytes("peer exe", MAX_PATH_BYTES)?;
                    Some(PathBuf::from(OsStr::from_bytes(exe)))
                }
                false => None,
            };
            let json = reader.bytes("commands", MAX_MESSAGE_BYTES)?;
            let commands =
                serde_json::from_slice::<Vec<CommandSpec>>(json).map_err(DecodeError::Commands)?;
            MonitorMessage::Assign {
                session_id,
                peer: Peer {
                    uid,
                    gid,
                    pid,
                    groups,
                    exe,
                },
                commands,
            }
        }
        TAG_EXEC_DONE => {
            let request_id = reader.string("request id", MAX_REQUEST_ID_BYTES)?;
            let exit_code = match reader.flag("exit code")? {
                true => Some(reader.i32("exit code")?),
                false => None,
            };
            let signal = match reader.flag("signal")? {
                true => Some(reader.i32("signal")?),
                false => None,
            };
            let timed_out = reader.flag("timed out")?;
            let duration_us = reader.u64("duration")?;
            let stdout = match reader.flag("stdout")? {
                true => Some(reader.bytes("stdout", MAX_OUTPUT_BYTES)?.to_vec()),
                false => None,
            };
            let stderr = match reader.flag("stderr")? {
                true => Some(reader.bytes("stderr", MAX_OUTPUT_BYTES)?.to_vec()),
                false => None,
            };
            let stdout_truncated = reader.flag("stdout truncated")?;
            let stderr_truncated = reader.flag("stderr truncated")?;
            MonitorMessage::ExecDone(ExecOutcome {
                request_id,
                exit_code,
                signal,
                timed_out,
                duration_us,
                stdout,
                stderr,
                stdout_truncated,
                stderr_truncated,
            })
        }
        TAG_EXEC_FAILED => {
            let tag = reader.u8("error kind")?;
            let kind = ErrorKind::from_u8(tag).ok_or(DecodeError::UnknownTag {
                field: "error kind",
                tag,
            })?;
            let field = reader.string("error field", MAX_NAME_BYTES)?;
            let rule = reader.string("error rule", MAX_NAME_BYTES)?;
            let message = reader.string("error message", MAX_VALUE_BYTES)?;
            let request_id = reader.string("request id", MAX_REQUEST_ID_BYTES)?;
            MonitorMessage::ExecFailed(
                BrokerError::new(kind, field, rule, message).with_request_id(request_id),
            )
        }
        tag => return Err(DecodeError::UnknownTag { field: "tag", tag }),
    };
    reader.finish()?;
    Ok(message)
}

/// Appends fields in the channel encoding.
#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    fn bool(&mut self, value: bool) {
        self.u8(u8::from(value));
    }

    fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    fn i32(&mut self, value: i32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    fn i64(&mut self, value: i64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    /// Writes a length or count. One over `u32::MAX` is written as `u32::MAX`, which every
    /// decoder limit rejects.
    fn count(&mut self, count: usize) {
        self.u32(u32::try_from(count).unwrap_or(u32::MAX));
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.count(bytes.len());
        self.bytes.extend_from_slice(bytes);
    }

    fn option<T>(&mut self, value: Option<&T>, write: impl FnOnce(&mut Writer, &T)) {
        match value {
            Some(value) => {
                self.u8(1);
                write(self, value);
            }
            None => self.u8(0),
        }
    }
}

/// Takes fields off a received message, checking each length before it allocates.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Reader<'a>, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::MessageTooLarge {
                size: bytes.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        Ok(Reader { rest: bytes })
    }

    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(DecodeError::Truncated { field });
        };
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let [byte] = self.take::<1>(field)?;
        Ok(byte)
    }

    /// Reads a byte that must be 0 or 1: a bool or the presence flag of an option.
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::InvalidFlag { field, value }),
        }
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.take(field).map(u32::from_le_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.take(field).map(i32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.take(field).map(u64::from_le_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.take(field).map(i64::from_le_bytes)
    }

    /// Reads an item count of at most `limit`, where each item takes at least
    /// `min_item_bytes`, so that a count the remaining bytes cannot hold fails before the
    /// caller reserves memory for it.
    fn count(
        &mut self,
        field: &'static str,
        limit: usize,
        min_item_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.length(field, limit)?;
        if count.saturating_mul(min_item_bytes) > self.rest.len() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(count)
    }

    fn length(&mut self, field: &'static str, limit: usize) -> Result<usize, DecodeError> {
        let raw = self.u32(field)?;
        let length = usize::try_from(raw).unwrap_or(usize::MAX);
        if length > limit {
            return Err(DecodeError::OverLimit {
                field,
                length,
                limit,
            });
        }
        Ok(length)
    }

    fn bytes(&mut self, field: &'static str, limit: usize) -> Result<&'a [u8], DecodeError> {
        let length = self.length(field, limit)?;
        if length > self.rest.len() {
            return Err(DecodeError::Truncated { field });
        }
        let (head, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(head)
    }

    fn string(&mut self, field: &'static str, limit: usize) -> Result<String, DecodeError> {
        let bytes = self.bytes(field, limit)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })?;
        Ok(text.to_owned())
    }

    fn finish(self) -> Result<(), DecodeError> {
        if !self.rest.is_empty() {
            return Err(DecodeError::TrailingBytes {
                count: self.rest.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::policy::{ArgKind, ArgSpec, Pattern};

    fn exec(arguments: Vec<(String, ArgValue)>) -> ChildMessage {
        ChildMessage::Exec {
            command: "restart".into(),
            arguments,
            stdin: b"input".to_vec(),
        }
    }

    /// Encodes an Exec by hand so that tests can put any length or count in it.
    fn raw_exec(command: &[u8], count: u32, rest: &[u8]) -> Vec<u8> {
        let mut bytes = vec![TAG_EXEC];
        bytes.extend_from_slice(&(command.len() as u32).to_le_bytes());
        bytes.extend_from_slice(command);
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(rest);
        bytes
    }

    #[test]
    fn child_message_round_trip() {
        let messages = [
            ChildMessage::Bye { dropped_events: 0 },
            ChildMessage::Bye {
                dropped_events: u32::MAX,
            },
            ChildMessage::Ready { dropped_events: 3 },
            exec(Vec::new()),
            exec(vec![
                ("name".into(), ArgValue::Str("nginx".into())),
                ("count".into(), ArgValue::Int(i64::MIN)),
                ("force".into(), ArgValue::Bool(true)),
            ]),
        ];
        for message in messages {
            let bytes = encode_child_message(&message);
            assert_eq!(decode_child_message(&bytes).unwrap(), message);
        }
    }

    #[test]
    fn child_decode_rejects_empty_message() {
        let error = decode_child_message(&[]).unwrap_err();
        assert!(matches!(error, DecodeError::Truncated { field: "tag" }));
    }

    #[test]
    fn child_decode_rejects_unknown_tag() {
        let error = decode_child_message(&[9]).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::UnknownTag {
                field: "tag",
                tag: 9
            }
        ));
    }

    #[test]
    fn child_decode_rejects_trailing_bytes() {
        // Bye carries a four-byte count; two more bytes follow it.
        let error = decode_child_message(&[TAG_BYE, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert!(matches!(error, DecodeError::TrailingBytes { count: 2 }));

        let mut bytes = encode_child_message(&exec(Vec::new()));
        bytes.push(0);
        let error = decode_child_message(&bytes).unwrap_err();
        assert!(matches!(error, DecodeError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn child_decode_rejects_message_over_limit() {
        let bytes = vec![TAG_BYE; MAX_MESSAGE_BYTES + 1];
        let error = decode_child_message(&bytes).unwrap_err();
        assert!(matches!(error, DecodeError::MessageTooLarge { size, limit }
            if size == MAX_MESSAGE_BYTES + 1 && limit == MAX_MESSAGE_BYTES));
    }

    #[test]
    fn child_decode_rejects_long_command() {
        let command = vec![b'c'; MAX_NAME_BYTES + 1];
        let error = decode_child_message(&raw_exec(&command, 0, &[0; 4])).unwrap_err();
        assert!(
            matches!(error, DecodeError::OverLimit { field: "command", length, limit }
            if length == MAX_NAME_BYTES + 1 && limit == MAX_NAME_BYTES)
        );
    }

    #[test]
    fn child_decode_rejects_huge_lengths() {
        let mut bytes = vec![TAG_EXEC];
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let error = decode_child_message(&bytes).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::OverLimit {
                field: "command",
                ..
            }
        ));

        let error = decode_child_message(&raw_exec(b"c", u32::MAX, &[])).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::OverLimit {
                field: "arguments",
                ..
            }
        ));
    }

    #[test]
    fn child_decode_rejects_count_beyond_remaining_bytes() {
        let error = decode_child_message(&raw_exec(b"c", MAX_ARGUMENTS as u32, &[])).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::Truncated { field: "arguments" }
        ));
    }

    #[test]
    fn child_decode_rejects_too_many_arguments() {
        let arguments = (0..=MAX_ARGUMENTS)
            .map(|i| (format!("a{i}"), ArgValue::Bool(false)))
            .collect();
        let bytes = encode_child_message(&exec(arguments));
        let error = decode_child_message(&bytes).unwrap_err();
        assert!(
            matches!(error, DecodeError::OverLimit { field: "arguments", length, limit }
            if length == MAX_ARGUMENTS + 1 && limit == MAX_ARGUMENTS)
        );
    }

    #[test]
    fn child_decode_rejects_oversized_fields() {
        let long_name = "n".repeat(MAX_NAME_BYTES + 1);
        let bytes = encode_child_message(&exec(vec![(long_name, ArgValue::Int(1))]));
        let error = decode_child_message(&bytes).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::OverLimit {
                field: "argument name",
                ..
            }
        ));

        let long_value = ArgValue::Str("v".repeat(MAX_VALUE_BYTES + 1));
        let bytes = encode_child_message(&exec(vec![("name".into(), long_value)]));
        let error = decode_child_message(&bytes).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::OverLimit {
                field: "argument value",
                ..
            }
        ));

        let message = ChildMessage::Exec {
            command: "c".into(),
            arguments: Vec::new(),
            stdin: vec![0; MAX_STDIN_BYTES + 1],
        };
        let error = decode_child_message(&encode_child_message(&message)).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::OverLimit { field: "stdin", .. }
        ));
    }

    #[test]
    fn child_decode_accepts_fields_at_limits() {
        let arguments = (0..MAX_ARGUMENTS)
            .map(|i| {
                (
                    format!("{i:0>width$}", width = MAX_NAME_BYTES),
                    ArgValue::Int(1),
                )
            })
            .collect();
        let message = ChildMessage::Exec {
            command: "c".repeat(MAX_NAME_BYTES),
            arguments,
            stdin: vec![7; MAX_STDIN_BYTES],
        };
        let bytes = encode_child_message(&message);
        assert_eq!(decode_child_message(&bytes).unwrap(), message);

        let value = ArgValue::Str("v".repeat(MAX_VALUE_BYTES));
        let message = exec(vec![("name".into(), value)]);
        let bytes = encode_child_message(&message);
        assert_eq!(decode_child_message(&bytes).unwrap(), message);
    }

    #[test]
    fn child_decode_rejects_invalid_utf8() {
        let error = decode_child_message(&raw_exec(b"\xff", 0, &[0; 4])).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::InvalidUtf8 { field: "command" }
        ));
    }

    #[test]
    fn child_decode_rejects_bad_value_tag_and_bool() {
        let mut rest = 1u32.to_le_bytes().to_vec();
        rest.push(b'a');
        rest.push(9);
        let error = decode_child_message(&raw_exec(b"c", 1, &rest)).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::UnknownTag {
                field: "argument type",
                tag: 9
            }
        ));

        let mut rest = 1u32.to_le_bytes().to_vec();
        rest.extend_from_slice(&[b'a', TAG_VALUE_BOOL, 2, 0, 0, 0, 0]);
        let error = decode_child_message(&raw_exec(b"c", 1, &rest)).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::InvalidFlag {
                field: "argument value",
                value: 2
            }
        ));
    }

    #[test]
    fn child_decode_rejects_every_truncation() {
        let message = exec(vec![
            ("name".into(), ArgValue::Str("nginx".into())),
            ("count".into(), ArgValue::Int(4)),
            ("force".into(), ArgValue::Bool(true)),
        ]);
        let bytes = encode_child_message(&message);
        for end in 0..bytes.len() {
            let error = decode_child_message(&bytes[..end]).unwrap_err();
            assert!(
                matches!(error, DecodeError::Truncated { .. }),
                "end {end}: {error}"
            );
        }
    }

    fn command_spec() -> CommandSpec {
        CommandSpec {
            name: "deploy".into(),
            description: "Deploy".into(),
            arguments: vec![ArgSpec {
                name: "branch".into(),
                description: String::new(),
                kind: ArgKind::String {
                    max_length: 64,
                    pattern: Some(Pattern::new("[a-z]+").unwrap()),
                    charset: None,
                },
                required: true,
                sensitive: false,
                allow_leading_dash: false,
                allow_newline: false,
                allow_control: false,
            }],
            timeout_ms: 1000,
            capture_output: true,
            output_limit: 100,
            stdin_limit: 0,
            max_concurrent: 4,
            rate_limit: None,
        }
    }

    fn assign(exe: Option<PathBuf>) -> MonitorMessage {
        MonitorMessage::Assign {
            session_id: u64::MAX - 1,
            peer: Peer {
                uid: 33,
                gid: 33,
                pid: 4242,
                groups: vec![33, 1000],
                exe,
            },
            commands: vec![command_spec()],
        }
    }

    /// Compares monitor messages by their encoding, because `CommandSpec` has no
    /// `PartialEq`.
    fn assert_monitor_round_trip(message: &MonitorMessage) {
        let bytes = encode_monitor_message(message);
        let decoded = decode_monitor_message(&bytes).unwrap();
        assert_eq!(encode_monitor_message(&decoded), bytes);
    }

    #[test]
    fn monitor_message_round_trip() {
        assert_monitor_round_trip(&assign(None));
        assert_monitor_round_trip(&assign(Some(PathBuf::from(OsStr::from_bytes(
            b"/usr/\xffphp",
        )))));
        assert_monitor_round_trip(&MonitorMessage::ExecDone(ExecOutcome::default()));
        assert_monitor_round_trip(&MonitorMessage::ExecFailed(BrokerError::new(
            ErrorKind::Busy,
            "command",
            "max_concurrent",
            "too many runs",
        )));
    }

    #[test]
    fn monitor_decode_keeps_assign_fields() {
        let bytes = encode_monitor_message(&assign(Some("/usr/bin/php".into())));
        let MonitorMessage::Assign {
            session_id,
            peer,
            commands,
        } = decode_monitor_message(&bytes).unwrap()
        else {
            panic!("expected Assign");
        };
        assert_eq!(session_id, u64::MAX - 1);
        assert_eq!(peer.uid, 33);
        assert_eq!(peer.pid, 4242);
        assert_eq!(peer.groups, vec![33, 1000]);
        assert_eq!(peer.exe, Some(PathBuf::from("/usr/bin/php")));
        assert_eq!(commands.len(), 1);
        let ArgKind::String { pattern, .. } = &commands[0].arguments[0].kind else {
            panic!("expected a string argument");
        };
        assert!(pattern.as_ref().unwrap().is_match("main"));
    }

    #[test]
    fn monitor_decode_rejects_bad_commands_json() {
        let mut bytes = vec![TAG_ASSIGN];
        bytes.extend_from_slice(&[0; 8 + 4 + 4 + 4 + 4]);
        bytes.push(0);
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(b"[{]");
        let error = decode_monitor_message(&bytes).unwrap_err();
        assert!(matches!(error, DecodeError::Commands(_)));
    }

    #[test]
    fn monitor_decode_rejects_unknown_error_kind() {
        let message = MonitorMessage::ExecFailed(BrokerError::new(ErrorKind::Busy, "", "", ""));
        let mut bytes = encode_monitor_message(&message);
        bytes[1] = 200;
        let error = decode_monitor_message(&bytes).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::UnknownTag {
                field: "error kind",
                tag: 200
            }
        ));
    }

    #[test]
    fn monitor_decode_rejects_oversized_output() {
        let outcome = ExecOutcome {
            stderr: Some(vec![b'e'; MAX_OUTPUT_BYTES + 1]),
            ..ExecOutcome::default()
        };
        let bytes = encode_monitor_message(&MonitorMessage::ExecDone(outcome));
        let error = decode_monitor_message(&bytes).unwrap_err();
        assert!(matches!(
            error,
            DecodeError::OverLimit {
                field: "stderr",
                ..
            }
        ));
    }

    #[test]
    fn monitor_decode_rejects_every_truncation() {
        let outcome = ExecOutcome {
            request_id: "r".into(),
            exit_code: Some(0),
            signal: Some(9),
            stdout: Some(b"out".to_vec()),
            stderr: Some(Vec::new()),
            ..ExecOutcome::default()
        };
        for message in [
            assign(Some("/bin/sh".into())),
            MonitorMessage::ExecDone(outcome),
        ] {
            let bytes = encode_monitor_message(&message);
            for end in 0..bytes.len() {
                assert!(decode_monitor_message(&bytes[..end]).is_err(), "end {end}");
            }
        }
    }

    fn arg_value() -> impl Strategy<Value = ArgValue> {
        prop_oneof![
            any::<i64>().prop_map(ArgValue::Int),
            any::<bool>().prop_map(ArgValue::Bool),
            ".{0,40}".prop_map(ArgValue::Str),
        ]
    }

    fn child_message() -> impl Strategy<Value = ChildMessage> {
        let exec = (
            ".{0,32}",
            prop::collection::vec((".{0,32}", arg_value()), 0..=MAX_ARGUMENTS),
            prop::collection::vec(any::<u8>(), 0..256),
        )
            .prop_map(|(command, arguments, stdin)| ChildMessage::Exec {
                command,
                arguments,
                stdin,
            });
        let bye = any::<u32>().prop_map(|dropped_events| ChildMessage::Bye { dropped_events });
        let ready = any::<u32>().prop_map(|dropped_events| ChildMessage::Ready { dropped_events });
        prop_oneof![bye, ready, exec]
    }

    fn exec_outcome() -> impl Strategy<Value = ExecOutcome> {
        let output = || prop::option::of(prop::collection::vec(any::<u8>(), 0..256));
        (
            ".{0,32}",
            any::<Option<i32>>(),
            any::<Option<i32>>(),
            any::<(bool, bool, bool)>(),
            any::<u64>(),
            output(),
            output(),
        )
            .prop_map(
                |(request_id, exit_code, signal, flags, duration_us, stdout, stderr)| ExecOutcome {
                    request_id,
                    exit_code,
                    signal,
                    timed_out: flags.0,
                    duration_us,
                    stdout,
                    stderr,
                    stdout_truncated: flags.1,
                    stderr_truncated: flags.2,
                },
            )
    }

    proptest! {
        #[test]
        fn child_round_trip_any_message(message in child_message()) {
            let bytes = encode_child_message(&message);
            prop_assert_eq!(decode_child_message(&bytes).unwrap(), message);
        }

        #[test]
        fn child_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode_child_message(&bytes);
        }

        /// Random bytes rarely get past the tag, so also damage valid encodings.
        #[test]
        fn child_decode_survives_damage(
            message in child_message(),
            damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode_child_message(&message);
            for (index, byte) in damage {
                let at = index.index(bytes.len());
                bytes[at] = byte;
            }
            let end = cut.index(bytes.len() + 1);
            let _ = decode_child_message(&bytes[..end]);
            let _ = decode_child_message(&bytes);
        }

        #[test]
        fn monitor_round_trip_exec_done(outcome in exec_outcome()) {
            let bytes = encode_monitor_message(&MonitorMessage::ExecDone(outcome.clone()));
            let decoded = decode_monitor_message(&bytes).unwrap();
            let MonitorMessage::ExecDone(decoded) = decoded else {
                panic!("expected ExecDone");
            };
            prop_assert_eq!(decoded, outcome);
        }

        #[test]
        fn monitor_round_trip_exec_failed(
            tag in 1u8..=11,
            field in ".{0,32}",
            rule in ".{0,32}",
            message in ".{0,200}",
        ) {
            let kind = ErrorKind::from_u8(tag).unwrap();
            let error = BrokerError::new(kind, field, rule, message);
            let bytes = encode_monitor_message(&MonitorMessage::ExecFailed(error.clone()));
            let MonitorMessage::ExecFailed(decoded) = decode_monitor_message(&bytes).unwrap()
            else {
                panic!("expected ExecFailed");
            };
            prop_assert_eq!(decoded, error);
        }

        #[test]
        fn monitor_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode_monitor_message(&bytes);
        }

        #[test]
        fn monitor_decode_survives_damage(
            outcome in exec_outcome(),
            damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = encode_monitor_message(&MonitorMessage::ExecDone(outcome));
            for (index, byte) in damage {
                let at = index.index(bytes.len());
                bytes[at] = byte;
            }
            let _ = decode_monitor_message(&bytes);
        }
    }
}
