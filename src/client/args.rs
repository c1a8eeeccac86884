//! Command-line parsing of the client: options, the subcommand's positional words and the
//! `name=value` arguments of `call`.
//!
//! Every word comes from the user who runs the client. A word that is not understood is a
//! [`UsageError`], never a request sent with a guessed meaning.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

use serde_json::{Map, Value, json};
use thiserror::Error;

/// Environment variable that sets the socket path when `--socket` is not given.
pub const SOCKET_ENV: &str = "SECURE_SOCKET_PATH";

const DEFAULT_SOCKET: &str = "/run/secure_socket/broker.sock";

/// Size of `sun_path` in Linux's `struct sockaddr_un`. The path needs a terminating NUL
/// there, so a socket path is at most one byte shorter.
const SUN_PATH_BYTES: usize = 108;

/// Returns the subcommand's line of [`USAGE`], which a usage error prints.
pub fn usage_line(subcommand: Subcommand) -> &'static str {
    match subcommand {
        Subcommand::Call => {
            "usage: secure_socket call [OPTIONS] [--] COMMAND [name=value | name:=JSON]..."
        }
        Subcommand::List => "usage: secure_socket list [OPTIONS]",
        Subcommand::Describe => "usage: secure_socket describe [OPTIONS] [--] COMMAND",
    }
}

pub const USAGE: &str = "\
usage: secure_socket call [OPTIONS] [--] COMMAND [name=value | name:=JSON]...
       secure_socket list [OPTIONS]
       secure_socket describe [OPTIONS] [--] COMMAND

options:
  --socket PATH  broker socket (default: $SECURE_SOCKET_PATH, else
                 /run/secure_socket/broker.sock)
  --json         print the broker's whole reply as one JSON object on stdout
  --stdin        call only: read standard input to its end and send it to the
                 script (UTF-8 text, at most 65536 bytes, and at most the
                 command's stdin_limit). The whole request must also fit the
                 broker's max_frame_bytes (default 65536). Without --stdin,
                 standard input is not read.
  -h, --help     print this help (with COMMAND or arguments it is a usage error)
  --             end the options, so that the next word is COMMAND even when it
                 starts with '-'

arguments of call:
  name=value     sends the argument as a string
  name:=JSON     sends a JSON value, for example count:=5 or force:=true

call writes the script's stdout and stderr byte for byte. When the broker truncated
either at the command's output_limit, when the script timed out, or when a signal
killed it, a one-line note on stderr follows the output (not with --json).

exit status of call: the script's own exit code, 128+N when signal N killed the
script, and 124 when it timed out. The client itself exits with 65 when the broker
rejected the request (the varlink error is on stderr), 69 when the broker could not
be reached or sent an invalid reply, 66 when --stdin failed to read standard input
(for example a directory), and 64 on usage errors. list and describe exit with 0 or
one of 64, 65 and 69.

A script can itself exit with 64, 65, 66, 69, 124 or a code above 128, so the exit
status alone cannot tell the script's code from an error or a signal. The output of
--json can. Its stdout is empty after a usage or connection error, the reply has an
\"error\" field when the broker rejected the request, and otherwise the reply's
\"parameters\" carry the script's exit_code, signal and timed_out.";

/// The subcommands of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subcommand {
    Call,
    List,
    Describe,
}

impl Subcommand {
    /// Returns the subcommand's name as the user types it.
    pub fn name(self) -> &'static str {
        match self {
            Subcommand::Call => "call",
            Subcommand::List => "list",
            Subcommand::Describe => "describe",
        }
    }
}

/// The action that a command line requests.
#[derive(Debug)]
pub enum Invocation {
    Help,
    Request(Request),
}

/// One varlink call, with the socket to send it to and the output format.
#[derive(Debug)]
pub struct Request {
    pub socket: PathBuf,
    pub json: bool,
    /// Whether the socket path came from `--socket`, so that a hint that names another
    /// command line passes it on.
    pub socket_from_option: bool,
    /// Whether `call` reads standard input and sends it as the Run request's stdin.
    pub stdin: bool,
    pub method: &'static str,
    pub parameters: Value,
}

/// A command line that the client does not accept. The client exits with 64 and prints
/// the usage.
#[derive(Debug, Error)]
pub enum UsageError {
    #[error("unknown option {option:?} (write `-- COMMAND` for a command that starts with '-')")]
    UnknownOption { option: String },
    #[error("missing value for option {option}")]
    MissingValue { option: &'static str },
    #[error("invalid socket path from {origin}: the path is empty")]
    EmptySocketPath { origin: &'static str },
    #[error(
        "invalid socket path from {origin}: {length} bytes long, but a unix socket path \
         has at most {max} bytes",
        max = SUN_PATH_BYTES - 1
    )]
    SocketPathTooLong { origin: &'static str, length: usize },
    #[error("missing COMMAND: {subcommand} needs the name of a command")]
    MissingCommand { subcommand: &'static str },
    #[error("unexpected argument {argument:?}: {subcommand} takes {expected}")]
    UnexpectedArgument {
        subcommand: &'static str,
        argument: String,
        expected: &'static str,
    },
    #[error("invalid argument {item:?}: expected name=value or name:=JSON")]
    InvalidArgumentSyntax { item: String },
    #[error("invalid argument {item:?}: the name is empty")]
    EmptyArgumentName { item: String },
    #[error("invalid JSON value for argument {name:?}")]
    InvalidJsonValue {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("argument {name:?} given twice")]
    DuplicateArgument { name: String },
    #[error("option --stdin is valid for call only, not for {subcommand}")]
    StdinNotForSubcommand { subcommand: &'static str },
    #[error("option {option} given twice")]
    DuplicateOption { option: &'static str },
    #[error(
        "unexpected argument {argument:?}: {option} takes options only, no COMMAND or arguments"
    )]
    HelpWithArgument { option: String, argument: String },
}

/// Standard input that `call --stdin` cannot send.
#[derive(Debug, Error)]
pub enum StdinError {
    /// The client exits with 66 (EX_NOINPUT), because the input, not the command line,
    /// is at fault, for example a directory given with `< DIR`.
    #[error("failed to read standard input")]
    Read(#[source] std::io::Error),
    #[error("standard input is larger than {max} bytes, the maximum that a Run request carries")]
    TooLarge { max: usize },
    #[error("invalid standard input: not valid UTF-8, but the protocol sends stdin as a string")]
    NotUtf8,
}

/// Parses the words after the subcommand. `socket_env` is the value of
/// [`SOCKET_ENV`], which `--socket` overrides.
///
/// Options may come before or after the positional words, up to a `--`, after which
/// every word is positional. A lone `-` is positional too. `--help` with a positional
/// word is a usage error, so that `call --help greet` does not exit 0 as if it ran.
pub fn parse(
    subcommand: Subcommand,
    words: &[String],
    socket_env: Option<OsString>,
) -> Result<Invocation, UsageError> {
    let mut socket_option = None;
    let mut json = false;
    let mut stdin = false;
    let mut help = None;
    let mut positional: Vec<&String> = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--" => {
                positional.extend(words.by_ref());
                break;
            }
            "-h" | "--help" => help = Some(word),
            "--json" => json = true,
            "--stdin" if subcommand == Subcommand::Call && stdin => {
                return Err(UsageError::DuplicateOption { option: "--stdin" });
            }
            "--stdin" if subcommand == Subcommand::Call => stdin = true,
            "--stdin" => {
                return Err(UsageError::StdinNotForSubcommand {
                    subcommand: subcommand.name(),
                });
            }
            "--socket" => {
                let path = words
                    .next()
                    .ok_or(UsageError::MissingValue { option: "--socket" })?;
                socket_option = Some(PathBuf::from(path));
            }
            _ => {
                if let Some(path) = word.strip_prefix("--socket=") {
                    socket_option = Some(PathBuf::from(path));
                } else if word.starts_with('-') && word != "-" {
                    return Err(UsageError::UnknownOption {
                        option: word.clone(),
                    });
                } else {
                    positional.push(word);
                }
            }
        }
    }

    if let Some(help) = help {
        return match positional.first() {
            None => Ok(Invocation::Help),
            Some(argument) => Err(UsageError::HelpWithArgument {
                option: help.clone(),
                argument: argument.to_string(),
            }),
        };
    }

    let (socket, origin) = match (socket_option, socket_env) {
        (Some(path), _) => (path, "--socket"),
        (None, Some(value)) => (PathBuf::from(value), SOCKET_ENV),
        (None, None) => (PathBuf::from(DEFAULT_SOCKET), "the default"),
    };
    check_socket_path(&socket, origin)?;
    let socket_from_option = origin == "--socket";

    let (method, parameters) = method_call(subcommand, &positional)?;
    Ok(Invocation::Request(Request {
        socket,
        json,
        socket_from_option,
        stdin,
        method,
        parameters,
    }))
}

/// Reads `reader` to its end as the stdin of a Run request: UTF-8 text of at most
/// `max_bytes` bytes. It reads one byte past the maximum at most, so a larger or endless
/// input is rejected without being stored.
pub fn read_stdin(reader: impl Read, max_bytes: usize) -> Result<String, StdinError> {
    let mut bytes = Vec::new();
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(StdinError::Read)?;
    if bytes.len() > max_bytes {
        return Err(StdinError::TooLarge { max: max_bytes });
    }
    String::from_utf8(bytes).map_err(|_| StdinError::NotUtf8)
}

/// Rejects a path that no unix socket can have, which `connect` would otherwise report
/// like an unreachable broker.
fn check_socket_path(path: &std::path::Path, origin: &'static str) -> Result<(), UsageError> {
    let length = path.as_os_str().len();
    if length == 0 {
        return Err(UsageError::EmptySocketPath { origin });
    }
    if length >= SUN_PATH_BYTES {
        return Err(UsageError::SocketPathTooLong { origin, length });
    }
    Ok(())
}

/// Builds the method name and parameters from the positional words.
fn method_call(
    subcommand: Subcommand,
    positional: &[&String],
) -> Result<(&'static str, Value), UsageError> {
    let unexpected = |argument: &String, expected| UsageError::UnexpectedArgument {
        subcommand: subcommand.name(),
        argument: argument.clone(),
        expected,
    };
    match (subcommand, positional) {
        (Subcommand::List, []) => Ok(("org.securesocket.Broker.List", json!({}))),
        (Subcommand::List, [extra, ..]) => Err(unexpected(extra, "no arguments")),
        (Subcommand::Describe, [command]) => Ok((
            "org.securesocket.Broker.Describe",
            json!({ "command": command }),
        )),
        (Subcommand::Describe, [_, extra, ..]) => Err(unexpected(extra, "one COMMAND only")),
        (Subcommand::Call, [command, rest @ ..]) => {
            let arguments = parse_call_arguments(rest)?;
            Ok((
                "org.securesocket.Broker.Run",
                json!({ "command": command, "arguments": arguments }),
            ))
        }
        (Subcommand::Describe | Subcommand::Call, []) => Err(UsageError::MissingCommand {
            subcommand: subcommand.name(),
        }),
    }
}

/// Parses `name=value` (string) and `name:=JSON` arguments into a JSON object.
pub fn parse_call_arguments(items: &[&String]) -> Result<Map<String, Value>, UsageError> {
    let mut arguments = Map::new();
    for item in items {
        // The first `=` ends the name, so a string value may itself contain `:=`.
        let Some((head, rest)) = item.split_once('=') else {
            return Err(UsageError::InvalidArgumentSyntax {
                item: item.to_string(),
            });
        };
        let (name, value) = match head.strip_suffix(':') {
            Some(name) => {
                let value: Value =
                    serde_json::from_str(rest).map_err(|source| UsageError::InvalidJsonValue {
                        name: name.to_string(),
                        source,
                    })?;
                (name, integer_for_negative_zero(rest, value))
            }
            None => (head, Value::String(rest.to_string())),
        };
        if name.is_empty() {
            return Err(UsageError::EmptyArgumentName {
                item: item.to_string(),
            });
        }
        if arguments.insert(name.to_string(), value).is_some() {
            return Err(UsageError::DuplicateArgument {
                name: name.to_string(),
            });
        }
    }
    Ok(arguments)
}

/// Returns 0 when `text` is the JSON number `-0`, which serde_json parses as the float
/// -0.0 and the broker then rejects from an integer argument. Any other value, `-0.0`
/// included, is returned unchanged.
fn integer_for_negative_zero(text: &str, value: Value) -> Value {
    if text.trim() == "-0" {
        return json!(0);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    fn parse_words(subcommand: Subcommand, words: &[&str]) -> Result<Invocation, UsageError> {
        parse(subcommand, &strings(words), None)
    }

    fn request(subcommand: Subcommand, words: &[&str]) -> Request {
        match parse_words(subcommand, words) {
            Ok(Invocation::Request(request)) => request,
            other => panic!("expected a request for {words:?}, got {other:?}"),
        }
    }

    fn usage_error(subcommand: Subcommand, words: &[&str]) -> UsageError {
        match parse_words(subcommand, words) {
            Err(error) => error,
            Ok(other) => panic!("expected a usage error for {words:?}, got {other:?}"),
        }
    }

    fn call_arguments(items: &[&str]) -> Result<Map<String, Value>, UsageError> {
        let items = strings(items);
        let items: Vec<&String> = items.iter().collect();
        parse_call_arguments(&items)
    }

    #[test]
    fn call_arguments_string_and_json() {
        let arguments = call_arguments(&["name=a=b", "count:=5"]).unwrap();
        assert_eq!(arguments["name"], json!("a=b"));
        assert_eq!(arguments["count"], json!(5));
    }

    #[test]
    fn call_arguments_string_value_containing_json_marker() {
        let arguments = call_arguments(&["text=a:=5"]).unwrap();
        assert_eq!(arguments["text"], json!("a:=5"));
    }

    #[test]
    fn call_arguments_duplicate_rejected() {
        let error = call_arguments(&["a=1", "a=2"]).unwrap_err();
        assert!(
            matches!(error, UsageError::DuplicateArgument { .. }),
            "{error}"
        );
    }

    #[test]
    fn call_arguments_without_equals_rejected() {
        let error = call_arguments(&["flag"]).unwrap_err();
        assert!(
            matches!(error, UsageError::InvalidArgumentSyntax { .. }),
            "{error}"
        );
    }

    #[test]
    fn call_arguments_empty_name_rejected() {
        let error = call_arguments(&[":=5"]).unwrap_err();
        assert!(
            matches!(error, UsageError::EmptyArgumentName { .. }),
            "{error}"
        );
    }

    #[test]
    fn options_before_and_after_command() {
        let request = request(
            Subcommand::Call,
            &["--json", "greet", "name=x", "--socket", "/run/b.sock"],
        );
        assert!(request.json);
        assert_eq!(request.socket, PathBuf::from("/run/b.sock"));
        assert_eq!(request.method, "org.securesocket.Broker.Run");
        assert_eq!(
            request.parameters,
            json!({ "command": "greet", "arguments": { "name": "x" } })
        );
    }

    #[test]
    fn double_dash_makes_next_word_command() {
        let request = request(Subcommand::Call, &["--", "--json", "name=x"]);
        assert!(!request.json);
        assert_eq!(request.parameters["command"], json!("--json"));
        assert_eq!(request.parameters["arguments"], json!({ "name": "x" }));
    }

    #[test]
    fn double_dash_alone_leaves_command_missing() {
        let error = usage_error(Subcommand::Call, &["--"]);
        assert!(
            matches!(error, UsageError::MissingCommand { .. }),
            "{error}"
        );
    }

    #[test]
    fn double_dash_keeps_later_options_positional() {
        let request = request(Subcommand::Describe, &["--json", "--", "-x"]);
        assert!(request.json);
        assert_eq!(request.parameters, json!({ "command": "-x" }));
        let error = usage_error(Subcommand::Describe, &["--", "x", "--json"]);
        assert!(
            matches!(&error, UsageError::UnexpectedArgument { argument, .. } if argument == "--json"),
            "{error}"
        );
    }

    #[test]
    fn unknown_option_rejected() {
        for words in [
            &["--bogus"][..],
            &["greet", "--bogus"],
            &["-x", "greet"],
            &["--json=true", "greet"],
            &["--Socket", "/run/b.sock", "greet"],
        ] {
            let error = usage_error(Subcommand::Call, words);
            assert!(
                matches!(error, UsageError::UnknownOption { .. }),
                "{words:?}: {error}"
            );
        }
    }

    #[test]
    fn lone_dash_is_command() {
        let request = request(Subcommand::Call, &["-"]);
        assert_eq!(request.parameters["command"], json!("-"));
    }

    #[test]
    fn help_rejects_positional_words() {
        assert!(matches!(
            parse_words(Subcommand::Call, &["--help"]),
            Ok(Invocation::Help)
        ));
        assert!(matches!(
            parse_words(Subcommand::List, &["-h"]),
            Ok(Invocation::Help)
        ));
        assert!(matches!(
            parse_words(
                Subcommand::List,
                &["--socket", "/run/b.sock", "-h", "--json"]
            ),
            Ok(Invocation::Help)
        ));
        for words in [
            &["--help", "extra"][..],
            &["greet", "--help"],
            &["--help", "--", "greet"],
        ] {
            let error = usage_error(Subcommand::Call, words);
            assert!(
                matches!(error, UsageError::HelpWithArgument { .. }),
                "{words:?}: {error}"
            );
        }
        let error = usage_error(Subcommand::Call, &["--help", "extra"]);
        assert_eq!(
            error.to_string(),
            "unexpected argument \"extra\": --help takes options only, no COMMAND or arguments"
        );
    }

    #[test]
    fn help_after_double_dash_is_command() {
        let call = request(Subcommand::Call, &["--", "--help"]);
        assert_eq!(call.parameters["command"], json!("--help"));
        let describe = request(Subcommand::Describe, &["--", "-h"]);
        assert_eq!(describe.parameters["command"], json!("-h"));
    }

    #[test]
    fn stdin_option_twice_rejected() {
        let error = usage_error(Subcommand::Call, &["--stdin", "greet", "--stdin"]);
        assert!(
            matches!(error, UsageError::DuplicateOption { option: "--stdin" }),
            "{error}"
        );
    }

    #[test]
    fn socket_without_value_rejected() {
        let error = usage_error(Subcommand::List, &["--socket"]);
        assert!(matches!(error, UsageError::MissingValue { .. }), "{error}");
    }

    #[test]
    fn empty_socket_path_rejected() {
        for words in [&["--socket", "", "greet"][..], &["--socket=", "greet"]] {
            let error = usage_error(Subcommand::Call, words);
            assert!(
                matches!(error, UsageError::EmptySocketPath { origin: "--socket" }),
                "{words:?}: {error}"
            );
        }
        let error = parse(Subcommand::List, &[], Some(OsString::new())).unwrap_err();
        assert!(
            matches!(error, UsageError::EmptySocketPath { origin: SOCKET_ENV }),
            "{error}"
        );
    }

    #[test]
    fn socket_path_longer_than_sun_path_rejected() {
        let longest = format!("/{}", "s".repeat(SUN_PATH_BYTES - 2));
        assert_eq!(
            request(Subcommand::List, &["--socket", &longest])
                .socket
                .as_os_str()
                .len(),
            107
        );
        let too_long = format!("{longest}s");
        let error = usage_error(Subcommand::List, &["--socket", &too_long]);
        assert!(
            matches!(error, UsageError::SocketPathTooLong { length: 108, .. }),
            "{error}"
        );
    }

    #[test]
    fn socket_option_overrides_environment() {
        let words = strings(&["--socket", "/run/option.sock"]);
        let Ok(Invocation::Request(request)) =
            parse(Subcommand::List, &words, Some("/run/env.sock".into()))
        else {
            panic!("expected a request");
        };
        assert_eq!(request.socket, PathBuf::from("/run/option.sock"));
        let Ok(Invocation::Request(request)) =
            parse(Subcommand::List, &[], Some("/run/env.sock".into()))
        else {
            panic!("expected a request");
        };
        assert_eq!(request.socket, PathBuf::from("/run/env.sock"));
    }

    #[test]
    fn positional_count_checked_per_subcommand() {
        let error = usage_error(Subcommand::List, &["extra"]);
        assert!(
            matches!(error, UsageError::UnexpectedArgument { .. }),
            "{error}"
        );
        let error = usage_error(Subcommand::Describe, &[]);
        assert!(
            matches!(error, UsageError::MissingCommand { .. }),
            "{error}"
        );
        let error = usage_error(Subcommand::Describe, &["a", "b"]);
        assert!(
            matches!(error, UsageError::UnexpectedArgument { .. }),
            "{error}"
        );
        let error = usage_error(Subcommand::Call, &[]);
        assert!(
            matches!(error, UsageError::MissingCommand { .. }),
            "{error}"
        );
    }

    #[test]
    fn call_arguments_negative_zero_is_integer() {
        let arguments = call_arguments(&["n:=-0", "f:=-0.0"]).unwrap();
        assert_eq!(arguments["n"], json!(0));
        assert!(arguments["n"].is_u64(), "{}", arguments["n"]);
        assert!(arguments["f"].is_f64(), "{}", arguments["f"]);
    }

    #[test]
    fn stdin_option_only_for_call() {
        assert!(request(Subcommand::Call, &["--stdin", "greet"]).stdin);
        assert!(!request(Subcommand::Call, &["greet"]).stdin);
        for subcommand in [Subcommand::List, Subcommand::Describe] {
            let error = usage_error(subcommand, &["--stdin", "greet"]);
            assert!(
                matches!(error, UsageError::StdinNotForSubcommand { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn read_stdin_accepts_up_to_max() {
        let text = read_stdin(&b"caf\xc3\xa9"[..], 5).unwrap();
        assert_eq!(text, "caf\u{e9}");
        let error = read_stdin(&b"123456"[..], 5).unwrap_err();
        assert!(matches!(error, StdinError::TooLarge { max: 5 }), "{error}");
    }

    #[test]
    fn read_stdin_stops_after_max() {
        // An endless reader ends with the error instead of filling memory.
        let error = read_stdin(std::io::repeat(b'a'), 1024).unwrap_err();
        assert!(
            matches!(error, StdinError::TooLarge { max: 1024 }),
            "{error}"
        );
    }

    #[test]
    fn read_stdin_reports_read_error() {
        let directory = std::fs::File::open("/").unwrap();
        let error = read_stdin(directory, 16).unwrap_err();
        let StdinError::Read(cause) = &error else {
            panic!("expected a read error, got {error}");
        };
        assert_eq!(cause.kind(), std::io::ErrorKind::IsADirectory, "{cause}");
    }

    #[test]
    fn read_stdin_rejects_non_utf8() {
        let error = read_stdin(&b"ok\xff"[..], 16).unwrap_err();
        assert!(matches!(error, StdinError::NotUtf8), "{error}");
    }

    #[test]
    fn socket_origin_recorded() {
        assert!(request(Subcommand::List, &["--socket", "/run/b.sock"]).socket_from_option);
        assert!(request(Subcommand::List, &["--socket=/run/b.sock"]).socket_from_option);
        assert!(!request(Subcommand::List, &[]).socket_from_option);
    }
}
