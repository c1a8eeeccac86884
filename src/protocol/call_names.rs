//! Best-effort method and command of a call that [`varlink::parse_call`] rejected, so
//! that the audit record of the rejection names them when the frame contains them.
//!
//! The frame is untrusted client input and is read only in the parser child. The names
//! are returned as the client sent them. The audit logger bounds and quotes them.
//!
//! [`varlink::parse_call`]: super::varlink::parse_call

use serde_json::Value;

use super::varlink::{BROKER_INTERFACE, SERVICE_INTERFACE};

/// Names read from a rejected call. A name the frame does not contain is empty.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CallNames {
    pub method: String,
    /// The `command` of Run and Describe, or the `interface` of GetInterfaceDescription,
    /// which the audit record of a successful call also shows as its command.
    pub command: String,
}

/// Reads the method and, for Run, Describe and GetInterfaceDescription, the command or
/// interface from a frame that failed to parse. Returns empty names when the frame is
/// not a JSON object or a name is not a string.
// NOTE: serde_json keeps the last of repeated keys, so a call rejected for a repeated
// `method` or `command` is recorded with the last value the client sent.
pub fn read_call_names(frame: &[u8]) -> CallNames {
    let Ok(Value::Object(call)) = serde_json::from_slice::<Value>(frame) else {
        return CallNames::default();
    };
    let method = call
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let command_member = match method.rsplit_once('.') {
        Some((BROKER_INTERFACE, "Run" | "Describe")) => Some("command"),
        Some((SERVICE_INTERFACE, "GetInterfaceDescription")) => Some("interface"),
        _ => None,
    };
    let command = command_member
        .and_then(|member| call.get("parameters")?.get(member)?.as_str())
        .unwrap_or_default();
    CallNames {
        method: method.to_string(),
        command: command.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(frame: &str) -> (String, String) {
        let names = read_call_names(frame.as_bytes());
        (names.method, names.command)
    }

    fn pair(method: &str, command: &str) -> (String, String) {
        (method.to_string(), command.to_string())
    }

    #[test]
    fn run_with_bad_arguments_names_command() {
        let frame = r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"greet","arguments":{"name":[1]}}}"#;
        assert_eq!(names(frame), pair("org.securesocket.Broker.Run", "greet"));
    }

    #[test]
    fn describe_with_unknown_parameter_names_command() {
        let frame = r#"{"method":"org.securesocket.Broker.Describe","parameters":{"command":"greet","x":1}}"#;
        assert_eq!(
            names(frame),
            pair("org.securesocket.Broker.Describe", "greet")
        );
    }

    #[test]
    fn interface_description_names_interface() {
        let frame = r#"{"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"a.b","x":1}}"#;
        assert_eq!(
            names(frame),
            pair("org.varlink.service.GetInterfaceDescription", "a.b")
        );
    }

    #[test]
    fn unknown_key_before_method_still_names_method() {
        let frame = r#"{"extra":1,"method":"org.securesocket.Broker.List"}"#;
        assert_eq!(names(frame), pair("org.securesocket.Broker.List", ""));
    }

    #[test]
    fn command_of_other_methods_is_not_read() {
        let frame = r#"{"method":"org.securesocket.Broker.Nope","parameters":{"command":"x"}}"#;
        assert_eq!(names(frame), pair("org.securesocket.Broker.Nope", ""));
    }

    #[test]
    fn unusable_frames_give_empty_names() {
        for frame in [
            "",
            "{",
            "[]",
            r#"{"method":5}"#,
            r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":7}}"#,
            r#"{"method":"org.securesocket.Broker.Run","parameters":[]}"#,
        ] {
            let (method, command) = names(frame);
            assert!(command.is_empty(), "{frame}: command {command:?}");
            assert!(
                method.is_empty() || method == "org.securesocket.Broker.Run",
                "{frame}: method {method:?}"
            );
        }
        assert_eq!(
            read_call_names(b"{\"method\":\"\xff\"}"),
            CallNames::default()
        );
    }
}
