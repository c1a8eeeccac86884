//! Typed errors returned to clients as varlink errors.

use serde_json::{Value, json};

/// The kind of a client-facing error; the channel carries it as one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorKind {
    UnknownCommand = 1,
    PermissionDenied = 2,
    InvalidArgument = 3,
    Busy = 4,
    ExecutionFailed = 5,
    RequestTooLarge = 6,
    InvalidRequest = 7,
    TimedOut = 8,
    MethodNotFound = 9,
    InterfaceNotFound = 10,
    InvalidParameter = 11,
}

impl ErrorKind {
    pub fn from_u8(value: u8) -> Option<ErrorKind> {
        use ErrorKind::*;
        let kind = match value {
            1 => UnknownCommand,
            2 => PermissionDenied,
            3 => InvalidArgument,
            4 => Busy,
            5 => ExecutionFailed,
            6 => RequestTooLarge,
            7 => InvalidRequest,
            8 => TimedOut,
            9 => MethodNotFound,
            10 => InterfaceNotFound,
            11 => InvalidParameter,
            _ => return None,
        };
        Some(kind)
    }
}

/// An error sent to a client. `field` names what was wrong (an argument, a parameter, a
/// method or a command), `rule` the rule it broke, `message` a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BrokerError {
    pub kind: ErrorKind,
    pub field: String,
    pub rule: String,
    pub message: String,
    /// Id of the request in the broker's audit log; empty when the error has none.
    pub request_id: String,
}

impl BrokerError {
    pub fn new(
        kind: ErrorKind,
        field: impl Into<String>,
        rule: impl Into<String>,
        message: impl Into<String>,
    ) -> BrokerError {
        BrokerError {
            kind,
            field: field.into(),
            rule: rule.into(),
            message: message.into(),
            request_id: String::new(),
        }
    }

    /// Returns the error with the audit log's request id attached.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> BrokerError {
        self.request_id = request_id.into();
        self
    }

    /// Returns the fully qualified varlink error name.
    pub fn varlink_name(&self) -> &'static str {
        match self.kind {
            ErrorKind::UnknownCommand => "org.securesocket.Broker.UnknownCommand",
            ErrorKind::PermissionDenied => "org.securesocket.Broker.PermissionDenied",
            ErrorKind::InvalidArgument => "org.securesocket.Broker.InvalidArgument",
            ErrorKind::Busy => "org.securesocket.Broker.Busy",
            ErrorKind::ExecutionFailed => "org.securesocket.Broker.ExecutionFailed",
            ErrorKind::RequestTooLarge => "org.securesocket.Broker.RequestTooLarge",
            ErrorKind::InvalidRequest => "org.securesocket.Broker.InvalidRequest",
            ErrorKind::TimedOut => "org.securesocket.Broker.TimedOut",
            ErrorKind::MethodNotFound => "org.varlink.service.MethodNotFound",
            ErrorKind::InterfaceNotFound => "org.varlink.service.InterfaceNotFound",
            ErrorKind::InvalidParameter => "org.varlink.service.InvalidParameter",
        }
    }

    /// Returns the varlink error parameters, matching the error declarations in the
    /// interface description, plus `request_id` when the error has one. The
    /// org.varlink.service errors do not declare `request_id`, and the Python `varlink`
    /// package 31.0 ignores it there (tests/python_client.rs checks InterfaceNotFound).
    pub fn varlink_parameters(&self) -> Value {
        let mut parameters = self.declared_parameters();
        if !self.request_id.is_empty()
            && let Some(object) = parameters.as_object_mut()
        {
            object.insert("request_id".to_string(), json!(self.request_id));
        }
        parameters
    }

    fn declared_parameters(&self) -> Value {
        match self.kind {
            ErrorKind::UnknownCommand => {
                json!({ "command": self.field, "message": self.message })
            }
            ErrorKind::PermissionDenied => {
                json!({ "command": self.field, "rule": self.rule, "message": self.message })
            }
            ErrorKind::InvalidArgument => {
                json!({ "argument": self.field, "rule": self.rule, "message": self.message })
            }
            ErrorKind::MethodNotFound => json!({ "method": self.field }),
            ErrorKind::InterfaceNotFound => json!({ "interface": self.field }),
            ErrorKind::InvalidParameter => json!({ "parameter": self.field }),
            ErrorKind::Busy
            | ErrorKind::ExecutionFailed
            | ErrorKind::RequestTooLarge
            | ErrorKind::InvalidRequest
            | ErrorKind::TimedOut => {
                json!({ "field": self.field, "rule": self.rule, "message": self.message })
            }
        }
    }
}
