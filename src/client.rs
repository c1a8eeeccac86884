//! The command-line client: `call`, `list` and `describe` over the varlink protocol.
//!
//! Runs as any user and trusts nothing but the socket path it is given. An invalid reply
//! is an error (exit 69), never printed in part: one that is not JSON or too large, whose
//! output does not decode, or whose exit code or signal no process can have, alone or
//! together. The client escapes control characters in the strings of a reply before they
//! reach the terminal, but writes the script's output byte for byte.
#![forbid(unsafe_code)]

mod args;
mod format;

use std::error::Error;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use thiserror::Error;

pub use args::{Subcommand, USAGE};

use crate::protocol::base64;
use crate::protocol::channel::MAX_STDIN_BYTES;

/// Exit status when the broker rejected the request (the error is on stderr).
pub const EXIT_REJECTED: u8 = 65;
/// Exit status when the broker could not be reached, the connection failed, or the reply
/// was invalid.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit status for a usage error.
pub const EXIT_USAGE: u8 = 64;
/// Exit status when `call --stdin` failed to read standard input (EX_NOINPUT).
pub const EXIT_NO_INPUT: u8 = 66;
/// Exit status when the script timed out.
pub const EXIT_TIMED_OUT: u8 = 124;

/// Largest reply the client accepts, in bytes. A Run reply carries at most two streams of
/// 64 KiB, each as escaped JSON text and, when it is not UTF-8, in base64 as well.
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// Time to wait for a reply: the longest timeout_ms that a policy accepts (one hour),
/// plus a minute for the broker to collect the output and reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3600 + 60);

/// A call that failed after the command line was accepted. The client exits with 69.
#[derive(Debug, Error)]
enum CallError {
    #[error("failed to connect to {socket}")]
    Connect {
        socket: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to encode the request")]
    Encode(#[source] serde_json::Error),
    #[error("failed to send the request")]
    Send(#[source] io::Error),
    #[error("failed to read the reply")]
    Read(#[source] io::Error),
    #[error("the broker closed the connection without a reply")]
    Closed,
    #[error("the reply is larger than {MAX_REPLY_BYTES} bytes")]
    ReplyTooLarge,
    #[error("invalid reply from the broker: not JSON")]
    InvalidReply(#[source] serde_json::Error),
    #[error("invalid reply from the broker: not a JSON object")]
    ReplyNotObject,
    #[error("invalid reply from the broker: {field} is not a string")]
    OutputNotString { field: String },
    #[error("invalid reply from the broker: {field} is not valid base64")]
    InvalidBase64 {
        field: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error(
        "invalid reply from the broker: Run reply has neither exit_code nor signal, \
         and timed_out is {timed_out}"
    )]
    MissingOutcome { timed_out: String },
    #[error(
        "invalid reply from the broker: Run reply has both exit_code {exit_code} and \
         signal {signal}, but a process either exits or is killed"
    )]
    ContradictoryOutcome { exit_code: Value, signal: Value },
    #[error("invalid reply from the broker: exit_code {value} is not an integer from 0 to 255")]
    InvalidExitCode { value: Value },
    #[error("invalid reply from the broker: signal {value} is not an integer from 1 to 64")]
    InvalidSignal { value: Value },
}

/// Runs `call`, `list` or `describe` with the words after the subcommand.
pub fn main(subcommand: Subcommand, words: &[String]) -> ExitCode {
    let mut request = match args::parse(subcommand, words, std::env::var_os(args::SOCKET_ENV)) {
        Ok(args::Invocation::Help) => {
            write_stdout(format!("{USAGE}\n").as_bytes());
            return ExitCode::SUCCESS;
        }
        Ok(args::Invocation::Request(request)) => request,
        Err(error) => return usage_error(subcommand, &error),
    };
    // Standard input is read only with --stdin, so an interactive call does not wait
    // for input the user did not mean to send.
    if request.stdin {
        match args::read_stdin(io::stdin().lock(), MAX_STDIN_BYTES) {
            Ok(text) => request.parameters["stdin"] = Value::String(text),
            Err(error @ args::StdinError::Read(_)) => {
                print_error(&error);
                return ExitCode::from(EXIT_NO_INPUT);
            }
            Err(error) => return usage_error(subcommand, &error),
        }
    }
    let reply = match call(&request.socket, request.method, &request.parameters) {
        Ok(reply) => reply,
        Err(error) => {
            print_error(&error);
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    if request.json {
        write_stdout(format!("{reply}\n").as_bytes());
    }

    if let Some(error) = reply.get("error").and_then(Value::as_str) {
        if !request.json {
            // print_stderr escapes the control characters of the name and parameters.
            let parameters = reply.get("parameters").cloned().unwrap_or(Value::Null);
            print_stderr(&format!("secure_socket: {error}: {parameters}"));
        }
        return ExitCode::from(EXIT_REJECTED);
    }
    let parameters = reply.get("parameters").cloned().unwrap_or(Value::Null);
    match subcommand {
        Subcommand::Call => finish_call(&request, &parameters),
        Subcommand::List | Subcommand::Describe => {
            if !request.json {
                let text = match subcommand {
                    Subcommand::List => format::format_list(&parameters),
                    _ => format::format_command(&parameters["command"]),
                };
                write_stdout(text.as_bytes());
            }
            ExitCode::SUCCESS
        }
    }
}

/// Prints a usage error with the subcommand's usage line and returns exit status 64.
fn usage_error(subcommand: Subcommand, error: &dyn Error) -> ExitCode {
    print_error(error);
    print_stderr(args::usage_line(subcommand));
    print_stderr(&format!(
        "run `secure_socket {} --help` for more",
        subcommand.name()
    ));
    ExitCode::from(EXIT_USAGE)
}

/// Writes the output of a Run reply, followed by a note when it was truncated, and
/// returns the exit status of `call`. With `--json` the reply is already printed, so
/// only the status is left.
fn finish_call(request: &args::Request, parameters: &Value) -> ExitCode {
    let outcome = exit_status(parameters).and_then(|status| {
        if request.json {
            return Ok((status, Vec::new(), Vec::new()));
        }
        // Both streams are decoded before either is written, so that an invalid reply
        // prints no output at all.
        let stdout = output_bytes(parameters, "stdout")?;
        let stderr = output_bytes(parameters, "stderr")?;
        Ok((status, stdout, stderr))
    });
    let (status, stdout, stderr) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            print_error(&error);
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    if !request.json {
        write_stdout(&stdout);
        write_stream(&mut io::stderr().lock(), "stderr", &stderr);
        let command = request.parameters["command"].as_str().unwrap_or_default();
        let socket = request
            .socket_from_option
            .then_some(request.socket.as_path());
        if let Some(note) = truncation_note(parameters, command, socket) {
            print_stderr(&note);
        }
        if let Some(note) = outcome_note(parameters) {
            print_stderr(&note);
        }
    }
    ExitCode::from(status)
}

/// Sends one varlink call and returns the reply object.
fn call(socket: &Path, method: &str, parameters: &Value) -> Result<Value, CallError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| CallError::Connect {
        socket: socket.display().to_string(),
        source,
    })?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(CallError::Read)?;
    let mut request = serde_json::to_vec(&json!({ "method": method, "parameters": parameters }))
        .map_err(CallError::Encode)?;
    request.push(0);
    // A broker that rejects the connection at once (Busy) writes its reply and closes
    // without reading, so the send may fail while that reply is already waiting.
    let sent = stream.write_all(&request);
    let frame = match (read_frame(&mut stream), sent) {
        (Ok(frame), _) => frame,
        (Err(_), Err(error)) => return Err(CallError::Send(error)),
        (Err(error), Ok(())) => return Err(error),
    };
    let reply: Value = serde_json::from_slice(&frame).map_err(CallError::InvalidReply)?;
    if !reply.is_object() {
        return Err(CallError::ReplyNotObject);
    }
    Ok(reply)
}

/// Reads up to the first NUL byte and returns the bytes before it.
fn read_frame(stream: &mut UnixStream) -> Result<Vec<u8>, CallError> {
    let mut frame = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let count = match stream.read(&mut chunk) {
            Ok(0) => return Err(CallError::Closed),
            Ok(count) => count,
            Err(error) => return Err(CallError::Read(error)),
        };
        frame.extend_from_slice(&chunk[..count]);
        if let Some(end) = frame.iter().position(|&byte| byte == 0) {
            frame.truncate(end);
            return Ok(frame);
        }
        if frame.len() > MAX_REPLY_BYTES {
            return Err(CallError::ReplyTooLarge);
        }
    }
}

/// Returns the exact bytes of one output stream of a Run reply: the `<stream>_base64`
/// field when the broker sent one (because the output is not UTF-8), else the text field.
/// Output that was not captured is empty.
fn output_bytes(parameters: &Value, stream: &str) -> Result<Vec<u8>, CallError> {
    let base64_field = format!("{stream}_base64");
    let (field, value) = match parameters.get(&base64_field) {
        Some(value) if !value.is_null() => (base64_field, value),
        _ => (stream.to_string(), &parameters[stream]),
    };
    let text = match value {
        Value::Null => return Ok(Vec::new()),
        Value::String(text) => text,
        _ => return Err(CallError::OutputNotString { field }),
    };
    if field == stream {
        return Ok(text.as_bytes().to_vec());
    }
    base64::decode(text).map_err(|source| CallError::InvalidBase64 { field, source })
}

/// Returns the one-line note that follows truncated output, or `None` when the broker
/// truncated neither stream. The suggested `describe` command line carries `socket`,
/// the path the user gave with `--socket`, when there is one.
fn truncation_note(parameters: &Value, command: &str, socket: Option<&Path>) -> Option<String> {
    let is_truncated = |stream: &str| parameters[format!("{stream}_truncated")] == json!(true);
    let streams = match (is_truncated("stdout"), is_truncated("stderr")) {
        (false, false) => return None,
        (true, false) => "stdout was",
        (false, true) => "stderr was",
        (true, true) => "stdout and stderr were",
    };
    let mut describe = String::from("secure_socket describe");
    if let Some(socket) = socket {
        describe.push_str(" --socket ");
        describe.push_str(&format::shell_word(&socket.to_string_lossy()));
    }
    if command.starts_with('-') {
        describe.push_str(" --");
    }
    describe.push(' ');
    describe.push_str(&format::shell_word(command));
    Some(format!(
        "secure_socket: the script's {streams} truncated at the command's output_limit, \
         which `{describe}` shows"
    ))
}

/// Returns the note that follows the output of a script that timed out or that a signal
/// killed, because its exit status alone looks like an exit code of the script. Returns
/// `None` for a script that exited. Call it only on a reply that [`exit_status`] accepted.
fn outcome_note(parameters: &Value) -> Option<String> {
    if parameters.get("timed_out").and_then(Value::as_bool) == Some(true) {
        let after = match parameters.get("duration_ms").and_then(Value::as_u64) {
            Some(duration_ms) => format!(" after {duration_ms} ms"),
            None => String::new(),
        };
        return Some(format!(
            "secure_socket: the script timed out{after} and the broker killed it, so call \
             exits with {EXIT_TIMED_OUT}"
        ));
    }
    let signal = parameters.get("signal").and_then(Value::as_u64)?;
    let name = signal_name(signal).map_or(String::new(), |name| format!(" ({name})"));
    Some(format!(
        "secure_socket: signal {signal}{name} killed the script, so call exits with {}",
        128 + signal
    ))
}

/// Returns the name of Linux signal `number`, such as SIGKILL, or SIGRTMIN+k for a
/// real-time signal counted from glibc's SIGRTMIN (34). Returns `None` for 32 and 33,
/// which glibc reserves for itself, and for numbers that are no signal.
fn signal_name(number: u64) -> Option<String> {
    let number = i32::try_from(number).ok()?;
    if let Ok(signal) = Signal::try_from(number) {
        return Some(signal.as_str().to_string());
    }
    let (first, last) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    match number {
        _ if number == first => Some("SIGRTMIN".to_string()),
        _ if number == last => Some("SIGRTMAX".to_string()),
        _ if number > first && number < last => Some(format!("SIGRTMIN+{}", number - first)),
        _ => None,
    }
}

/// Returns the exit status of `call` for a Run reply: 124 when the script timed out, its
/// exit code when it exited, and 128+N when signal N killed it. An exit code outside
/// 0..=255, a signal outside 1..=64 (the range of Linux signal numbers), or both at once
/// is an invalid reply, so that a faulty or hostile server cannot turn a failure into
/// exit status 0.
fn exit_status(parameters: &Value) -> Result<u8, CallError> {
    let is_set = |key: &str| parameters.get(key).is_some_and(|value| !value.is_null());
    if is_set("exit_code") && is_set("signal") {
        return Err(CallError::ContradictoryOutcome {
            exit_code: parameters["exit_code"].clone(),
            signal: parameters["signal"].clone(),
        });
    }
    if parameters.get("timed_out").and_then(Value::as_bool) == Some(true) {
        return Ok(EXIT_TIMED_OUT);
    }
    match parameters.get("exit_code") {
        None | Some(Value::Null) => {}
        Some(value) => {
            return value
                .as_u64()
                .and_then(|code| u8::try_from(code).ok())
                .ok_or_else(|| CallError::InvalidExitCode {
                    value: value.clone(),
                });
        }
    }
    match parameters.get("signal") {
        None | Some(Value::Null) => Err(CallError::MissingOutcome {
            timed_out: parameters
                .get("timed_out")
                .map_or_else(|| "missing".to_string(), Value::to_string),
        }),
        Some(value) => value
            .as_u64()
            .filter(|signal| (1..=64).contains(signal))
            .and_then(|signal| u8::try_from(128 + signal).ok())
            .ok_or_else(|| CallError::InvalidSignal {
                value: value.clone(),
            }),
    }
}

fn write_stdout(bytes: &[u8]) {
    write_stream(&mut io::stdout().lock(), "stdout", bytes);
}

/// Writes `bytes` to one of the client's own streams. A reader that went away (for
/// example `| head`) is not reported, and any other failure is reported on stderr without
/// changing the exit status, which stays the script's.
fn write_stream(stream: &mut impl Write, name: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    match stream.write_all(bytes).and_then(|()| stream.flush()) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {}
        Err(error) => print_stderr(&format!("secure_socket: failed to write {name}: {error}")),
    }
}

/// Prints `secure_socket: ERROR: CAUSE: ...` on stderr, with every cause in the chain.
fn print_error(error: &dyn Error) {
    let mut line = format!("secure_socket: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    print_stderr(&line);
}

/// Prints one line on stderr, with its control characters escaped, because the line may
/// carry strings from the server, such as an error name or message. There is nowhere
/// left to report a write failure to, so it is ignored.
fn print_stderr(line: &str) {
    let line = format::escape_control(line);
    let _ = writeln!(io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::channel::ExecOutcome;
    use crate::protocol::varlink;

    #[test]
    fn largest_run_reply_fits_reply_limit() {
        // The largest output_limit that a policy accepts, in bytes.
        const MAX_OUTPUT_LIMIT: usize = 65_536;
        // A control byte takes six bytes of JSON (\u0001), the most of any byte, and one
        // byte that is not UTF-8 adds the base64 field.
        let mut output = vec![0x01u8; MAX_OUTPUT_LIMIT - 1];
        output.push(0xff);
        let outcome = ExecOutcome {
            stdout: Some(output.clone()),
            stderr: Some(output),
            ..ExecOutcome::default()
        };

        let frame = varlink::encode_reply(varlink::run_reply(&outcome));

        assert!(frame.len() <= MAX_REPLY_BYTES, "{} bytes", frame.len());
    }

    #[test]
    fn exit_status_signal_adds_128() {
        let status = exit_status(&json!({ "signal": 9, "timed_out": false }));
        assert_eq!(status.ok(), Some(137));
    }

    #[test]
    fn exit_status_timeout_wins_over_signal() {
        let status = exit_status(&json!({ "signal": 9, "timed_out": true }));
        assert_eq!(status.ok(), Some(EXIT_TIMED_OUT));
    }

    #[test]
    fn exit_status_without_outcome_is_error() {
        let status = exit_status(&json!({ "exit_code": null, "signal": null }));
        assert!(
            matches!(status, Err(CallError::MissingOutcome { .. })),
            "{status:?}"
        );
    }

    #[test]
    fn missing_outcome_names_missing_fields() {
        let status = exit_status(&json!({ "timed_out": false }));
        let message = status.unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid reply from the broker: Run reply has neither exit_code nor signal, \
             and timed_out is false"
        );
        let message = exit_status(&json!({})).unwrap_err().to_string();
        assert!(message.ends_with("and timed_out is missing"), "{message}");
    }

    #[test]
    fn exit_status_rejects_exit_code_with_signal() {
        for parameters in [
            json!({ "exit_code": 0, "signal": 9, "timed_out": false }),
            json!({ "exit_code": 0, "signal": 9, "timed_out": true }),
            json!({ "exit_code": 1, "signal": 15 }),
        ] {
            let status = exit_status(&parameters);
            assert!(
                matches!(status, Err(CallError::ContradictoryOutcome { .. })),
                "{parameters}: {status:?}"
            );
        }
    }

    #[test]
    fn outcome_note_names_timeout_and_signal() {
        let note = outcome_note(&json!({ "timed_out": true, "signal": 9, "duration_ms": 1002 }));
        assert_eq!(
            note.as_deref(),
            Some(
                "secure_socket: the script timed out after 1002 ms and the broker killed it, \
                 so call exits with 124"
            )
        );
        let note = outcome_note(&json!({ "timed_out": false, "signal": 15 }));
        assert_eq!(
            note.as_deref(),
            Some("secure_socket: signal 15 (SIGTERM) killed the script, so call exits with 143")
        );
        let note = outcome_note(&json!({ "timed_out": false, "exit_code": 0 }));
        assert_eq!(note, None);
    }

    #[test]
    fn signal_name_covers_real_time_signals() {
        assert_eq!(signal_name(9).as_deref(), Some("SIGKILL"));
        assert_eq!(signal_name(64).as_deref(), Some("SIGRTMAX"));
        let first = u64::try_from(libc::SIGRTMIN()).unwrap();
        assert_eq!(signal_name(first).as_deref(), Some("SIGRTMIN"));
        assert_eq!(signal_name(first + 2).as_deref(), Some("SIGRTMIN+2"));
        assert_eq!(signal_name(32), None);
    }

    #[test]
    fn output_bytes_prefers_base64() {
        let reply = json!({ "stdout": "ok\u{fffd}", "stdout_base64": "b2v/" });
        assert_eq!(output_bytes(&reply, "stdout").unwrap(), b"ok\xff");
    }

    #[test]
    fn output_bytes_uses_text_without_base64() {
        let reply = json!({ "stdout": "caf\u{e9}", "stderr": null });
        assert_eq!(
            output_bytes(&reply, "stdout").unwrap(),
            "caf\u{e9}".as_bytes()
        );
        assert_eq!(output_bytes(&reply, "stderr").unwrap(), b"");
    }

    #[test]
    fn output_bytes_rejects_invalid_base64() {
        let reply = json!({ "stdout": "x", "stdout_base64": "b2v" });
        let error = output_bytes(&reply, "stdout").unwrap_err();
        assert!(matches!(error, CallError::InvalidBase64 { .. }), "{error}");
        let reply = json!({ "stdout": 5 });
        let error = output_bytes(&reply, "stdout").unwrap_err();
        assert!(
            matches!(error, CallError::OutputNotString { .. }),
            "{error}"
        );
    }

    #[test]
    fn truncation_note_names_streams_and_limit() {
        let reply = json!({ "stdout_truncated": true, "stderr_truncated": false });
        let note = truncation_note(&reply, "greet", None).unwrap();
        assert_eq!(
            note,
            "secure_socket: the script's stdout was truncated at the command's \
             output_limit, which `secure_socket describe greet` shows"
        );
        let reply = json!({ "stdout_truncated": true, "stderr_truncated": true });
        let note = truncation_note(&reply, "greet", None).unwrap();
        assert!(note.contains("stdout and stderr were truncated"), "{note}");
        let reply = json!({ "stdout_truncated": false, "stderr_truncated": false });
        assert_eq!(truncation_note(&reply, "greet", None), None);
    }

    #[test]
    fn truncation_note_passes_socket_option() {
        let reply = json!({ "stdout_truncated": true });
        let note = truncation_note(&reply, "greet", Some(Path::new("/run/my broker.sock")));
        assert!(
            note.unwrap()
                .ends_with("`secure_socket describe --socket '/run/my broker.sock' greet` shows"),
        );
        let note = truncation_note(&reply, "-x", Some(Path::new("/run/b.sock")));
        assert!(
            note.unwrap()
                .ends_with("`secure_socket describe --socket /run/b.sock -- -x` shows")
        );
    }

    #[test]
    fn exit_status_rejects_impossible_values() {
        for parameters in [
            json!({ "exit_code": -1 }),
            json!({ "exit_code": 256 }),
            json!({ "exit_code": 300 }),
            json!({ "exit_code": 1.5 }),
            json!({ "exit_code": "0" }),
        ] {
            let status = exit_status(&parameters);
            assert!(
                matches!(status, Err(CallError::InvalidExitCode { .. })),
                "{parameters}: {status:?}"
            );
        }
        for parameters in [
            json!({ "signal": 0 }),
            json!({ "signal": 65 }),
            json!({ "signal": 200 }),
            json!({ "signal": -9 }),
        ] {
            let status = exit_status(&parameters);
            assert!(
                matches!(status, Err(CallError::InvalidSignal { .. })),
                "{parameters}: {status:?}"
            );
        }
    }

    #[test]
    fn exit_status_accepts_range_ends() {
        assert_eq!(exit_status(&json!({ "exit_code": 0 })).ok(), Some(0));
        assert_eq!(exit_status(&json!({ "exit_code": 255 })).ok(), Some(255));
        assert_eq!(exit_status(&json!({ "signal": 1 })).ok(), Some(129));
        assert_eq!(exit_status(&json!({ "signal": 64 })).ok(), Some(192));
    }

    #[test]
    fn usage_names_stdin_maximum() {
        let words = USAGE.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains(&format!("at most {MAX_STDIN_BYTES} bytes")),
            "{USAGE}"
        );
    }
}
