//! The command-line client: `call`, `list` and `describe` over the varlink protocol.
//!
//! Runs as any user. Trusts nothing but the socket path it is given; replies are parsed
//! as JSON and printed.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value, json};

/// Exit status when the broker rejected the request (the error is on stderr).
pub const EXIT_REJECTED: u8 = 65;
/// Exit status when the broker could not be reached or the connection failed.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit status for a usage error.
pub const EXIT_USAGE: u8 = 64;
/// Exit status when the script timed out.
pub const EXIT_TIMED_OUT: u8 = 124;

const DEFAULT_SOCKET: &str = "/run/secure_socket/broker.sock";
/// Largest reply the client accepts, in bytes.
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

pub const USAGE: &str = "\
usage: secure_socket call [--socket PATH] [--json] COMMAND [name=value | name:=JSON]...
       secure_socket list [--socket PATH] [--json]
       secure_socket describe [--socket PATH] [--json] COMMAND

  name=value   sends the argument as a string
  name:=JSON   sends a JSON value, for example count:=5 or force:=true
  --socket     broker socket (default: $SECURE_SOCKET_PATH or /run/secure_socket/broker.sock)
  --json       print the whole reply as JSON (list and describe print text otherwise)

call prints the script's stdout and stderr and exits with its exit code;
124 when it timed out, 128+N when signal N killed it, 65 when the broker
rejected the request, 69 when the broker could not be reached, 64 on usage errors.";

struct Options {
    socket: String,
    json: bool,
    positional: Vec<String>,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        socket: std::env::var("SECURE_SOCKET_PATH").unwrap_or_else(|_| DEFAULT_SOCKET.to_string()),
        json: false,
        positional: Vec::new(),
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--json" => options.json = true,
            "--socket" => {
                options.socket = iter
                    .next()
                    .ok_or_else(|| "--socket needs a path".to_string())?
                    .clone()
            }
            _ => match arg.strip_prefix("--socket=") {
                Some(path) => options.socket = path.to_string(),
                None => options.positional.push(arg.clone()),
            },
        }
    }
    Ok(options)
}

/// Parses `name=value` (string) and `name:=JSON` arguments into a JSON object.
pub fn parse_call_arguments(items: &[String]) -> Result<Map<String, Value>, String> {
    let mut arguments = Map::new();
    for item in items {
        // The first `=` ends the name, so a string value may itself contain `:=`.
        let Some((head, rest)) = item.split_once('=') else {
            return Err(format!(
                "invalid argument {item:?}: expected name=value or name:=JSON"
            ));
        };
        let (name, value) = match head.strip_suffix(':') {
            Some(name) => {
                let value: Value = serde_json::from_str(rest).map_err(|error| {
                    format!("invalid JSON value for argument {name:?}: {error}")
                })?;
                (name, value)
            }
            None => (head, Value::String(rest.to_string())),
        };
        if name.is_empty() {
            return Err(format!("invalid argument {item:?}: the name is empty"));
        }
        if arguments.insert(name.to_string(), value).is_some() {
            return Err(format!("argument {name:?} given twice"));
        }
    }
    Ok(arguments)
}

/// Sends one varlink call and returns the reply object.
fn call(socket: &str, method: &str, parameters: Value) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|error| format!("failed to connect to {socket}: {error}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3600)));
    let mut request = serde_json::to_vec(&json!({ "method": method, "parameters": parameters }))
        .map_err(|error| format!("failed to encode the request: {error}"))?;
    request.push(0);
    // A broker that rejects the connection at once (Busy) writes its reply and closes
    // without reading, so the send may fail while that reply is already waiting.
    let sent = stream.write_all(&request);
    let mut reply = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let count = match (stream.read(&mut chunk), &sent) {
            (Ok(count), _) if count > 0 => count,
            (_, Err(error)) => return Err(format!("failed to send the request: {error}")),
            (Ok(_), Ok(())) => {
                return Err("the broker closed the connection without a reply".to_string());
            }
            (Err(error), Ok(())) => return Err(format!("failed to read the reply: {error}")),
        };
        reply.extend_from_slice(&chunk[..count]);
        if let Some(end) = reply.iter().position(|&byte| byte == 0) {
            reply.truncate(end);
            break;
        }
        if reply.len() > MAX_REPLY_BYTES {
            return Err("the reply is larger than 4 MiB".to_string());
        }
    }
    serde_json::from_slice(&reply)
        .map_err(|error| format!("invalid reply from the broker: {error}"))
}

/// Runs `call`, `list` or `describe` with the arguments after the subcommand.
pub fn main(subcommand: &str, args: &[String]) -> ExitCode {
    let options = match parse_options(args) {
        Ok(options) => options,
        Err(message) => return usage_error(&message),
    };
    let (method, parameters) = match (subcommand, options.positional.as_slice()) {
        ("list", []) => ("org.securesocket.Broker.List", json!({})),
        ("describe", [command]) => (
            "org.securesocket.Broker.Describe",
            json!({ "command": command }),
        ),
        ("call", [command, rest @ ..]) => match parse_call_arguments(rest) {
            Ok(arguments) => (
                "org.securesocket.Broker.Run",
                json!({ "command": command, "arguments": arguments }),
            ),
            Err(message) => return usage_error(&message),
        },
        _ => return usage_error("wrong number of arguments"),
    };
    let reply = match call(&options.socket, method, parameters) {
        Ok(reply) => reply,
        Err(message) => {
            eprintln!("secure_socket: {message}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    if options.json {
        println!("{reply}");
    }
    if let Some(error) = reply.get("error").and_then(Value::as_str) {
        if !options.json {
            let parameters = reply.get("parameters").cloned().unwrap_or(Value::Null);
            eprintln!("secure_socket: {error}: {parameters}");
        }
        return ExitCode::from(EXIT_REJECTED);
    }
    let parameters = reply.get("parameters").cloned().unwrap_or(Value::Null);
    if subcommand != "call" {
        if !options.json {
            let text = match subcommand {
                "list" => format_list(&parameters),
                _ => format_command(&parameters["command"]),
            };
            print!("{text}");
        }
        return ExitCode::SUCCESS;
    }
    if !options.json {
        if let Some(text) = parameters.get("stdout").and_then(Value::as_str) {
            print!("{text}");
        }
        if let Some(text) = parameters.get("stderr").and_then(Value::as_str) {
            eprint!("{text}");
        }
    }
    exit_status(&parameters)
}

/// Formats a List reply as one line per command: name, then description.
fn format_list(parameters: &Value) -> String {
    let commands = parameters["commands"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let width = commands
        .iter()
        .filter_map(|command| command["name"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for command in &commands {
        let name = command["name"].as_str().unwrap_or_default();
        let description = command["description"].as_str().unwrap_or_default();
        text.push_str(&format!("{name:<width$}  {description}\n"));
    }
    text
}

/// Formats a Describe reply: the command, its limits, then one line per argument with
/// its type and rules.
fn format_command(command: &Value) -> String {
    let text_of = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut text = format!(
        "{}: {}\n",
        text_of(&command["name"]),
        text_of(&command["description"])
    );
    for key in [
        "timeout_ms",
        "capture_output",
        "output_limit",
        "stdin_limit",
        "max_concurrent",
        "rate_limit_requests",
        "rate_limit_seconds",
    ] {
        if !command[key].is_null() {
            text.push_str(&format!("  {key}: {}\n", text_of(&command[key])));
        }
    }
    let arguments = command["arguments"].as_array().cloned().unwrap_or_default();
    if !arguments.is_empty() {
        text.push_str("  arguments:\n");
    }
    for argument in &arguments {
        let mut line = format!(
            "    {} ({}, {})",
            text_of(&argument["name"]),
            text_of(&argument["kind"]),
            if argument["required"] == Value::Bool(true) {
                "required"
            } else {
                "optional"
            }
        );
        for key in [
            "max_length",
            "pattern",
            "charset",
            "min",
            "max",
            "values",
            "prefixes",
        ] {
            if !argument[key].is_null() {
                line.push_str(&format!(" {key}={}", argument[key]));
            }
        }
        if argument["sensitive"] == Value::Bool(true) {
            line.push_str(" sensitive");
        }
        let description = text_of(&argument["description"]);
        if !description.is_empty() {
            line.push_str(&format!(": {description}"));
        }
        text.push_str(&line);
        text.push('\n');
    }
    text
}

fn exit_status(parameters: &Value) -> ExitCode {
    if parameters.get("timed_out").and_then(Value::as_bool) == Some(true) {
        return ExitCode::from(EXIT_TIMED_OUT);
    }
    if let Some(code) = parameters.get("exit_code").and_then(Value::as_i64) {
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    if let Some(signal) = parameters.get("signal").and_then(Value::as_i64) {
        return ExitCode::from((128 + signal).clamp(0, 255) as u8);
    }
    ExitCode::from(EXIT_UNAVAILABLE)
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("secure_socket: {message}\n{USAGE}");
    ExitCode::from(EXIT_USAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn call_arguments_string_and_json() {
        let arguments = parse_call_arguments(&strings(&["name=a=b", "count:=5"])).unwrap();
        assert_eq!(arguments["name"], json!("a=b"));
        assert_eq!(arguments["count"], json!(5));
    }

    #[test]
    fn call_arguments_string_value_containing_json_marker() {
        let arguments = parse_call_arguments(&strings(&["text=a:=5"])).unwrap();
        assert_eq!(arguments["text"], json!("a:=5"));
    }

    #[test]
    fn list_text_has_one_line_per_command() {
        let reply = json!({ "commands": [
            { "name": "restart", "description": "Restart a service" },
            { "name": "renew-certificate", "description": "Renew" },
        ]});
        let text = format_list(&reply);
        assert_eq!(text.lines().count(), 2);
        assert_eq!(
            text.lines().next(),
            Some("restart            Restart a service")
        );
    }

    #[test]
    fn describe_text_names_argument_rules() {
        let command = json!({
            "name": "restart", "description": "Restart a service", "timeout_ms": 5000,
            "arguments": [{ "name": "service", "kind": "enum", "required": true,
                "sensitive": false, "description": "", "values": ["nginx"] }],
        });
        let text = format_command(&command);
        assert!(text.contains("  timeout_ms: 5000\n"), "{text}");
        assert!(
            text.contains("    service (enum, required) values=[\"nginx\"]\n"),
            "{text}"
        );
    }

    #[test]
    fn call_arguments_duplicate_rejected() {
        assert!(parse_call_arguments(&strings(&["a=1", "a=2"])).is_err());
    }

    #[test]
    fn call_arguments_without_equals_rejected() {
        assert!(parse_call_arguments(&strings(&["flag"])).is_err());
    }

    #[test]
    fn exit_status_signal_adds_128() {
        assert_eq!(
            exit_status(&json!({ "signal": 9, "timed_out": false })),
            ExitCode::from(137)
        );
    }
}
