//! Runs the command-line client (`secure_socket call`) as www-data against a real broker:
//! exact output bytes, the note after truncated output, exit codes that a script can
//! share with the client's own errors or with a signal, stdin, and option parsing.
//!
//! Replies that no broker sends (an impossible exit code, escape sequences in an error)
//! come from a one-shot unix socket server that the test starts in its own fixture.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use serde_json::{Value, json};

use common::{
    BINARY_STDERR, BINARY_STDOUT, Broker, CLIENT_TIMEOUT, Fixture, ProcessOutput, WWW_DATA,
    command_as, json_reply_parameters, run_client_as, spawn, spawn_with_stdin,
};
use secure_socket::protocol::base64;

const POLICY: &str = r#"
[command.greet]
description = "Print a greeting for one name and record the name"
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["www-data"]
argv = ["{name}"]
capture_output = true

[command.greet.arguments.name]
type = "string"
pattern = "[a-z]+"
max_length = 16

[command.split-character]
description = "Print five bytes, of which the limit keeps half of the last character"
script = "@FIXTURE@/scripts/split-character"
run_as = "nobody"
allow_users = ["www-data"]
capture_output = true
output_limit = 4

[command.exit-with]
description = "Exit with the given code"
script = "@FIXTURE@/scripts/exit-with"
run_as = "nobody"
allow_users = ["www-data"]
argv = ["{code}"]
capture_output = true

[command.exit-with.arguments.code]
type = "integer"
min = 0
max = 255

[command.self-kill]
description = "Kill itself with SIGKILL"
script = "@FIXTURE@/scripts/self-kill"
run_as = "nobody"
allow_users = ["www-data"]
capture_output = true

[command.sleep]
description = "Sleep past the timeout"
script = "@FIXTURE@/scripts/sleep"
run_as = "nobody"
allow_users = ["www-data"]
timeout_ms = 300
capture_output = true

[command.echo-stdin]
description = "Copy stdin to stdout"
script = "@FIXTURE@/scripts/echo-stdin"
run_as = "nobody"
allow_users = ["www-data"]
capture_output = true
stdin_limit = 65536
output_limit = 65536

[command.quiet]
description = ""
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["www-data"]
argv = ["quiet"]

[command.note]
description = "Accept a note whose string rules are lifted in part"
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["www-data"]
argv = ["{body}"]

[command.note.arguments.body]
type = "string"
max_length = 64
allow_newline = true
allow_leading_dash = true

[command.note.arguments.title]
type = "string"
max_length = 8
required = false
"#;

/// Appends the name to out/greet.log, so that a test can tell whether the script ran.
const GREET_SCRIPT: &str =
    "#!/bin/sh\necho \"$1\" >> @FIXTURE@/out/greet.log\necho \"hello, $1\"\n";

const SPLIT_CHARACTER_SCRIPT: &str = "#!/bin/sh\nprintf 'abc\\303\\251'\n";

const EXIT_WITH_SCRIPT: &str = "#!/bin/sh\nexit \"$1\"\n";

const SELF_KILL_SCRIPT: &str = "#!/bin/sh\nkill -KILL $$\n";

const SLEEP_SCRIPT: &str = "#!/bin/sh\nsleep 30\n";

const ECHO_STDIN_SCRIPT: &str = "#!/bin/sh\nexec cat\n";

/// Largest stdin of a Run request, in bytes.
const MAX_STDIN_BYTES: usize = 65_536;

/// A running broker with the policy above. The broker is dropped before the fixture,
/// because its socket lives in the fixture.
struct Setup {
    broker: Broker,
    fixture: Fixture,
}

impl Setup {
    fn start() -> Setup {
        Setup::start_with(&[])
    }

    /// Starts the broker with `params` in place of their defaults.
    fn start_with(params: &[(&str, &str)]) -> Setup {
        let fixture = Fixture::new();
        fixture.write_policy("commands", POLICY);
        fixture.write_output_commands();
        fixture.write_script("greet", GREET_SCRIPT);
        fixture.write_script("split-character", SPLIT_CHARACTER_SCRIPT);
        fixture.write_script("exit-with", EXIT_WITH_SCRIPT);
        fixture.write_script("self-kill", SELF_KILL_SCRIPT);
        fixture.write_script("sleep", SLEEP_SCRIPT);
        fixture.write_script("echo-stdin", ECHO_STDIN_SCRIPT);
        let broker = Broker::start(&fixture, params);
        Setup { broker, fixture }
    }

    /// Runs `secure_socket SUBCOMMAND --socket FIXTURE_SOCKET REST...` as www-data.
    fn client(&self, args: &[&str]) -> ProcessOutput {
        run_client_as(&self.fixture, WWW_DATA, args)
    }

    /// Runs `secure_socket ARGS...` as www-data with exactly the given arguments and
    /// environment, for tests that choose the socket themselves.
    fn client_without_socket(&self, args: &[&str], env: &[(&str, &str)]) -> ProcessOutput {
        let command = command_as(WWW_DATA, self.fixture.client_binary(), args, env);
        spawn(command).finish(CLIENT_TIMEOUT)
    }

    /// Returns the names that the greet script recorded, one per run.
    fn greet_log(&self) -> String {
        std::fs::read_to_string(self.fixture.out_file("greet.log")).unwrap_or_default()
    }

    fn describe(&self, output: &ProcessOutput) -> String {
        format!("{}\n{}", output.describe(), self.broker.diagnostics())
    }
}

/// Checks that `output` is a usage error: exit 64, nothing on stdout, and on stderr three
/// lines: `message`, the one-line usage and the pointer to `--help`.
fn assert_usage_error(output: &ProcessOutput, message: &str) {
    assert_eq!(output.code(), Some(64), "{}", output.describe());
    assert!(output.stdout.is_empty(), "{}", output.describe());
    let lines: Vec<&str> = output.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", output.describe());
    assert!(lines[0].contains(message), "{}", output.describe());
    assert!(
        lines[1].starts_with("usage: secure_socket "),
        "{}",
        output.describe()
    );
    assert!(
        lines[2].starts_with("run `secure_socket ") && lines[2].ends_with(" --help` for more"),
        "{}",
        output.describe()
    );
}

/// Returns the note after truncated output. `socket` is the path passed with `--socket`,
/// which the suggested command line repeats.
fn truncation_note(streams: &str, socket: Option<&Path>, command: &str) -> String {
    let socket_option = match socket {
        Some(path) => format!("--socket {} ", path.display()),
        None => String::new(),
    };
    format!(
        "secure_socket: the script's {streams} truncated at the command's output_limit, \
         which `secure_socket describe {socket_option}{command}` shows\n"
    )
}

#[test]
fn call_writes_non_utf8_output_exactly() {
    let setup = Setup::start();

    let output = setup.client(&["call", "binary"]);

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert_eq!(
        output.stdout_bytes,
        BINARY_STDOUT,
        "{}",
        setup.describe(&output)
    );
    assert_eq!(
        output.stderr_bytes,
        BINARY_STDERR,
        "{}",
        setup.describe(&output)
    );
}

#[test]
fn call_json_carries_base64_for_non_utf8() {
    let setup = Setup::start();

    let output = setup.client(&["call", "--json", "binary"]);
    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    let reply = output.stdout_json();
    let parameters = json_reply_parameters(&reply);
    assert_eq!(
        parameters["stdout"],
        json!("caf\u{e9} \u{fffd}\u{fffd}\u{0}end\n"),
        "{reply}"
    );
    assert_eq!(parameters["stderr"], json!("warning \u{fffd}\n"), "{reply}");
    let stdout = base64::decode(parameters["stdout_base64"].as_str().unwrap_or_default());
    assert_eq!(stdout, Ok(BINARY_STDOUT.to_vec()), "{reply}");
    let stderr = base64::decode(parameters["stderr_base64"].as_str().unwrap_or_default());
    assert_eq!(stderr, Ok(BINARY_STDERR.to_vec()), "{reply}");
    assert!(output.stderr.is_empty(), "{}", output.describe());

    let output = setup.client(&["call", "--json", "greet", "name=world"]);
    let reply = output.stdout_json();
    let parameters = json_reply_parameters(&reply);
    assert_eq!(parameters["stdout"], json!("hello, world\n"), "{reply}");
    assert_eq!(parameters.get("stdout_base64"), None, "{reply}");
    assert_eq!(parameters.get("stderr_base64"), None, "{reply}");
}

#[test]
fn call_writes_output_cut_inside_character() {
    let setup = Setup::start();

    let output = setup.client(&["call", "split-character"]);

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert_eq!(
        output.stdout_bytes,
        b"abc\xc3",
        "{}",
        setup.describe(&output)
    );
    assert_eq!(
        output.stderr,
        truncation_note(
            "stdout was",
            Some(&setup.fixture.socket_path()),
            "split-character"
        ),
        "{}",
        output.describe()
    );
}

#[test]
fn call_notes_truncation_after_output() {
    let setup = Setup::start();

    let output = setup.client(&["call", "flood"]);

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert_eq!(output.stdout, "o".repeat(16), "{}", output.describe());
    let expected_stderr = format!(
        "{}{}",
        "e".repeat(16),
        truncation_note(
            "stdout and stderr were",
            Some(&setup.fixture.socket_path()),
            "flood"
        )
    );
    assert_eq!(output.stderr, expected_stderr, "{}", output.describe());
}

#[test]
fn truncation_note_without_socket_option() {
    let setup = Setup::start();
    let socket = setup.fixture.socket_path();

    let output = setup.client_without_socket(
        &["call", "flood"],
        &[("SECURE_SOCKET_PATH", &socket.to_string_lossy())],
    );

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    let expected_stderr = format!(
        "{}{}",
        "e".repeat(16),
        truncation_note("stdout and stderr were", None, "flood")
    );
    assert_eq!(output.stderr, expected_stderr, "{}", output.describe());
}

#[test]
fn call_json_truncation_has_no_note() {
    let setup = Setup::start();

    let output = setup.client(&["call", "--json", "flood"]);

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert!(output.stderr.is_empty(), "{}", output.describe());
    let reply = output.stdout_json();
    let parameters = json_reply_parameters(&reply);
    assert_eq!(parameters["stdout_truncated"], json!(true), "{reply}");
    assert_eq!(parameters["stderr_truncated"], json!(true), "{reply}");
}

#[test]
fn call_untruncated_output_has_no_note() {
    let setup = Setup::start();

    let output = setup.client(&["call", "greet", "name=world"]);

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert_eq!(output.stdout, "hello, world\n", "{}", output.describe());
    assert!(output.stderr.is_empty(), "{}", output.describe());
}

/// Returns the error name of a `--json` reply, or `None` for a Run reply.
fn json_error_name(reply: &Value) -> Option<&str> {
    reply.get("error").and_then(Value::as_str)
}

#[test]
fn json_tells_exit_65_from_rejection() {
    let setup = Setup::start();

    let script = setup.client(&["call", "exit-with", "code:=65"]);
    let rejected = setup.client(&["call", "greet", "name=World!"]);
    assert_eq!(script.code(), Some(65), "{}", setup.describe(&script));
    assert_eq!(rejected.code(), Some(65), "{}", setup.describe(&rejected));

    let script = setup.client(&["call", "--json", "exit-with", "code:=65"]);
    assert_eq!(script.code(), Some(65), "{}", script.describe());
    let reply = script.stdout_json();
    assert_eq!(json_error_name(&reply), None, "{reply}");
    assert_eq!(
        json_reply_parameters(&reply)["exit_code"],
        json!(65),
        "{reply}"
    );

    let rejected = setup.client(&["call", "--json", "greet", "name=World!"]);
    assert_eq!(rejected.code(), Some(65), "{}", rejected.describe());
    let reply = rejected.stdout_json();
    assert_eq!(
        json_error_name(&reply),
        Some("org.securesocket.Broker.InvalidArgument"),
        "{reply}"
    );
    assert_eq!(
        json_reply_parameters(&reply)["argument"],
        json!("name"),
        "{reply}"
    );
}

#[test]
fn json_tells_exit_124_from_timeout() {
    let setup = Setup::start();

    let script = setup.client(&["call", "--json", "exit-with", "code:=124"]);
    assert_eq!(script.code(), Some(124), "{}", setup.describe(&script));
    let reply = script.stdout_json();
    assert_eq!(json_error_name(&reply), None, "{reply}");
    assert_eq!(
        json_reply_parameters(&reply)["timed_out"],
        json!(false),
        "{reply}"
    );
    assert_eq!(
        json_reply_parameters(&reply)["exit_code"],
        json!(124),
        "{reply}"
    );

    let timed_out = setup.client(&["call", "--json", "sleep"]);
    assert_eq!(
        timed_out.code(),
        Some(124),
        "{}",
        setup.describe(&timed_out)
    );
    let reply = timed_out.stdout_json();
    assert_eq!(json_error_name(&reply), None, "{reply}");
    assert_eq!(
        json_reply_parameters(&reply)["timed_out"],
        json!(true),
        "{reply}"
    );
    assert_eq!(
        json_reply_parameters(&reply)["exit_code"],
        Value::Null,
        "{reply}"
    );

    let timed_out = setup.client(&["call", "sleep"]);
    assert_eq!(timed_out.code(), Some(124), "{}", timed_out.describe());
}

#[test]
fn json_tells_exit_69_from_unreachable() {
    let setup = Setup::start();

    let script = setup.client(&["call", "--json", "exit-with", "code:=69"]);
    assert_eq!(script.code(), Some(69), "{}", setup.describe(&script));
    let reply = script.stdout_json();
    assert_eq!(
        json_reply_parameters(&reply)["exit_code"],
        json!(69),
        "{reply}"
    );

    let missing_socket = setup.fixture.socket_dir().join("missing.sock");
    let missing_socket = missing_socket.to_string_lossy();
    let unreachable = setup.client_without_socket(
        &[
            "call",
            "--json",
            "--socket",
            &missing_socket,
            "exit-with",
            "code:=69",
        ],
        &[],
    );
    assert_eq!(unreachable.code(), Some(69), "{}", unreachable.describe());
    assert!(unreachable.stdout.is_empty(), "{}", unreachable.describe());
    assert!(
        unreachable.stderr.contains("failed to connect to"),
        "{}",
        unreachable.describe()
    );
}

#[test]
fn json_tells_exit_137_from_signal() {
    let setup = Setup::start();

    let script = setup.client(&["call", "--json", "exit-with", "code:=137"]);
    assert_eq!(script.code(), Some(137), "{}", setup.describe(&script));
    let reply = script.stdout_json();
    assert_eq!(
        json_reply_parameters(&reply)["exit_code"],
        json!(137),
        "{reply}"
    );
    assert_eq!(
        json_reply_parameters(&reply)["signal"],
        Value::Null,
        "{reply}"
    );

    let killed = setup.client(&["call", "--json", "self-kill"]);
    assert_eq!(killed.code(), Some(137), "{}", setup.describe(&killed));
    let reply = killed.stdout_json();
    assert_eq!(
        json_reply_parameters(&reply)["exit_code"],
        Value::Null,
        "{reply}"
    );
    assert_eq!(json_reply_parameters(&reply)["signal"], json!(9), "{reply}");
}

#[test]
fn call_notes_timeout_after_output() {
    let setup = Setup::start();

    let output = setup.client(&["call", "sleep"]);

    assert_eq!(output.code(), Some(124), "{}", setup.describe(&output));
    let lines: Vec<&str> = output.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", output.describe());
    assert!(
        lines[0].starts_with("secure_socket: the script timed out after "),
        "{}",
        output.describe()
    );
    assert!(
        lines[0].ends_with(" ms and the broker killed it, so call exits with 124"),
        "{}",
        output.describe()
    );

    let json = setup.client(&["call", "--json", "sleep"]);
    assert_eq!(json.code(), Some(124), "{}", setup.describe(&json));
    assert!(json.stderr.is_empty(), "{}", json.describe());
}

#[test]
fn call_notes_signal_after_output() {
    let setup = Setup::start();

    let output = setup.client(&["call", "self-kill"]);

    assert_eq!(output.code(), Some(137), "{}", setup.describe(&output));
    assert_eq!(
        output.stderr,
        "secure_socket: signal 9 (SIGKILL) killed the script, so call exits with 137\n",
        "{}",
        output.describe()
    );

    let json = setup.client(&["call", "--json", "self-kill"]);
    assert_eq!(json.code(), Some(137), "{}", setup.describe(&json));
    assert!(json.stderr.is_empty(), "{}", json.describe());

    let exited = setup.client(&["call", "exit-with", "code:=137"]);
    assert_eq!(exited.code(), Some(137), "{}", setup.describe(&exited));
    assert!(exited.stderr.is_empty(), "{}", exited.describe());
}

#[test]
fn call_notes_signal_after_fake_output() {
    let fixture = Fixture::new();
    let reply = r#"{"parameters":{"stdout":"partial\n","stderr":"warning\n",
        "exit_code":null,"signal":15,"timed_out":false}}"#;
    let server = FakeServer::start(&fixture, "sigterm", reply);

    let output = server.client(&fixture, &["call", "greet"]);

    assert_eq!(output.code(), Some(143), "{}", output.describe());
    assert_eq!(output.stdout, "partial\n", "{}", output.describe());
    assert_eq!(
        output.stderr,
        "warning\nsecure_socket: signal 15 (SIGTERM) killed the script, so call exits \
         with 143\n",
        "{}",
        output.describe()
    );
}

#[test]
fn describe_shows_lifted_string_rules() {
    let setup = Setup::start();

    let output = setup.client(&["describe", "note"]);

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert!(
        output.stdout.contains(
            "    body (string, required) max_length=64 allow_newline allow_leading_dash\n"
        ),
        "{}",
        output.describe()
    );
    assert!(
        output
            .stdout
            .contains("    title (string, optional) max_length=8\n"),
        "{}",
        output.describe()
    );

    let json = setup.client(&["describe", "--json", "note"]);
    assert_eq!(json.code(), Some(0), "{}", setup.describe(&json));
    let reply = json.stdout_json();
    let arguments = &json_reply_parameters(&reply)["command"]["arguments"];
    let body = &arguments[0];
    assert_eq!(body["name"], json!("body"), "{reply}");
    assert_eq!(body["allow_newline"], json!(true), "{reply}");
    assert_eq!(body["allow_control"], json!(false), "{reply}");
    assert_eq!(body["allow_leading_dash"], json!(true), "{reply}");
    let title = &arguments[1];
    assert_eq!(title["name"], json!("title"), "{reply}");
    assert_eq!(title["allow_newline"], json!(false), "{reply}");
    assert_eq!(title["allow_control"], json!(false), "{reply}");
    assert_eq!(title["allow_leading_dash"], json!(false), "{reply}");

    let greet = setup.client(&["describe", "--json", "exit-with"]);
    let reply = greet.stdout_json();
    let code = &json_reply_parameters(&reply)["command"]["arguments"][0];
    assert_eq!(code["allow_newline"], Value::Null, "{reply}");
}

/// Returns whether `text` is 16 lowercase hex digits, the form of a random 64-bit id.
fn is_hex_id(text: &str) -> bool {
    text.len() == 16
        && text
            .chars()
            .all(|character| character.is_ascii_digit() || ('a'..='f').contains(&character))
}

#[test]
fn request_id_has_two_forms() {
    let setup = Setup::start();

    // The monitor replies to a script run with a random 64-bit id.
    let run = setup.client(&["call", "--json", "exit-with", "code:=0"]);
    assert_eq!(run.code(), Some(0), "{}", setup.describe(&run));
    let reply = run.stdout_json();
    let run_id = json_reply_parameters(&reply)["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(is_hex_id(&run_id), "{reply}");

    // The parser child replies to Describe with `<session>-<n>`, the first request on a
    // new connection being number 1.
    let describe = setup.client(&["describe", "--json", "greet"]);
    assert_eq!(describe.code(), Some(0), "{}", setup.describe(&describe));
    let reply = describe.stdout_json();
    let describe_id = json_reply_parameters(&reply)["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (session, number) = describe_id.split_once('-').unwrap_or_default();
    assert!(is_hex_id(session), "{reply}");
    assert_eq!(number, "1", "{reply}");
}

#[test]
fn unknown_option_is_usage_error() {
    let setup = Setup::start();

    for args in [
        &["call", "--bogus", "greet", "name=world"][..],
        &["call", "greet", "--bogus", "name=world"],
        &["call", "greet", "name=world", "-x"],
        &["call", "--json=yes", "greet", "name=world"],
        &["list", "--bogus"],
        &["describe", "--bogus", "greet"],
    ] {
        let output = setup.client(args);
        assert_usage_error(&output, "unknown option");
    }
    assert_eq!(setup.greet_log(), "", "a usage error ran the script");
}

#[test]
fn double_dash_ends_options() {
    let setup = Setup::start();

    let output = setup.client(&["call", "--", "greet", "name=world"]);
    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert_eq!(output.stdout, "hello, world\n", "{}", output.describe());

    // After `--`, "--json" is the command name, which the broker does not know.
    let output = setup.client(&["call", "--", "--json"]);
    assert_eq!(output.code(), Some(65), "{}", setup.describe(&output));
    assert!(output.stdout.is_empty(), "{}", output.describe());
    assert!(
        output
            .stderr
            .contains("org.securesocket.Broker.UnknownCommand"),
        "{}",
        output.describe()
    );

    let output = setup.client(&["call", "--json", "--", "greet", "name=world"]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    let reply = output.stdout_json();
    assert_eq!(
        json_reply_parameters(&reply)["stdout"],
        json!("hello, world\n"),
        "{reply}"
    );

    let output = setup.client(&["call", "--"]);
    assert_usage_error(&output, "missing COMMAND");
    assert_eq!(setup.greet_log(), "world\nworld\n");
}

#[test]
fn invalid_socket_path_is_usage_error() {
    let setup = Setup::start();

    let output = setup.client_without_socket(&["call", "--socket", "", "greet", "name=world"], &[]);
    assert_usage_error(
        &output,
        "invalid socket path from --socket: the path is empty",
    );

    let output = setup.client_without_socket(&["call", "--socket=", "greet", "name=world"], &[]);
    assert_usage_error(
        &output,
        "invalid socket path from --socket: the path is empty",
    );

    let output = setup.client_without_socket(
        &["call", "greet", "name=world"],
        &[("SECURE_SOCKET_PATH", "")],
    );
    assert_usage_error(
        &output,
        "invalid socket path from SECURE_SOCKET_PATH: the path is empty",
    );

    let too_long = format!(
        "{}/{}.sock",
        setup.fixture.socket_dir().display(),
        "s".repeat(108)
    );
    let output = setup.client_without_socket(&["list", "--socket", &too_long], &[]);
    assert_usage_error(&output, "but a unix socket path has at most 107 bytes");

    let output = setup.client_without_socket(&["list", "--socket"], &[]);
    assert_usage_error(&output, "missing value for option --socket");

    assert_eq!(setup.greet_log(), "", "a usage error ran the script");
}

#[test]
fn socket_from_environment_reaches_broker() {
    let setup = Setup::start();
    let socket = setup.fixture.socket_path();

    let output = setup.client_without_socket(
        &["call", "greet", "name=world"],
        &[("SECURE_SOCKET_PATH", &socket.to_string_lossy())],
    );

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert_eq!(output.stdout, "hello, world\n", "{}", output.describe());
}

#[test]
fn help_prints_usage_on_stdout() {
    let setup = Setup::start();

    for args in [
        &["call", "--help"][..],
        &["list", "-h"],
        &["describe", "--help"],
    ] {
        let output = setup.client(args);
        assert_eq!(output.code(), Some(0), "{}", output.describe());
        assert!(
            output.stdout.starts_with("usage: secure_socket call"),
            "{}",
            output.describe()
        );
        // The help text wraps its lines, so the words are compared without line breaks.
        let words = output
            .stdout
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            words.contains("the exit status alone cannot tell"),
            "{}",
            output.describe()
        );
        assert!(output.stderr.is_empty(), "{}", output.describe());
    }
}

#[test]
fn help_with_argument_is_usage_error() {
    let setup = Setup::start();

    for (args, message) in [
        (
            &["call", "--help", "extra"][..],
            "unexpected argument \"extra\": --help takes options only",
        ),
        (
            &["describe", "greet", "--help"],
            "unexpected argument \"greet\": --help takes options only",
        ),
        (
            &["list", "-h", "--", "extra"],
            "unexpected argument \"extra\": -h takes options only",
        ),
    ] {
        let output = setup.client(args);
        assert_usage_error(&output, message);
    }
}

#[test]
fn non_utf8_argument_is_usage_error() {
    use std::os::unix::ffi::OsStrExt;
    let argument = std::ffi::OsStr::from_bytes(b"name=\xff");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_secure_socket"))
        .args([
            std::ffi::OsStr::new("call"),
            std::ffi::OsStr::new("greet"),
            argument,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
}

/// Runs the client as www-data with `--socket` and `args`, like [`Setup::client`], but
/// with `stdin` as its standard input. A client still running after [`CLIENT_TIMEOUT`]
/// is killed and the test fails.
fn client_with_stdin(setup: &Setup, args: &[&str], stdin: Stdio) -> ProcessOutput {
    let socket = setup.fixture.socket_path();
    let socket = socket.to_string_lossy();
    let mut full_args = vec![args[0], "--socket", &socket];
    full_args.extend_from_slice(&args[1..]);
    let command = command_as(WWW_DATA, setup.fixture.client_binary(), &full_args, &[]);
    spawn_with_stdin(command, stdin).finish(CLIENT_TIMEOUT)
}

/// Writes `bytes` to a file in the fixture and returns it as a stdin for the client.
fn stdin_file(setup: &Setup, name: &str, bytes: &[u8]) -> Stdio {
    let path = setup.fixture.out_file(name);
    std::fs::write(&path, bytes).unwrap();
    Stdio::from(File::open(&path).unwrap())
}

#[test]
fn call_stdin_reaches_script() {
    let setup = Setup::start();
    let text = "caf\u{e9}\nsecond line\n";

    let stdin = stdin_file(&setup, "stdin-text", text.as_bytes());
    let output = client_with_stdin(&setup, &["call", "--stdin", "echo-stdin"], stdin);

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert_eq!(output.stdout, text, "{}", output.describe());
    assert!(output.stderr.is_empty(), "{}", output.describe());
}

#[test]
fn call_stdin_at_max_is_sent() {
    // The request carries the stdin and its JSON envelope, which the default
    // max_frame_bytes (65536) cannot hold together.
    let setup = Setup::start_with(&[("max_frame_bytes", "1048576")]);
    let text = "x".repeat(MAX_STDIN_BYTES);

    let stdin = stdin_file(&setup, "stdin-max", text.as_bytes());
    let output = client_with_stdin(&setup, &["call", "--stdin", "echo-stdin"], stdin);

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert_eq!(output.stdout.len(), MAX_STDIN_BYTES);
    assert!(output.stdout == text, "stdout differs from stdin");
}

#[test]
fn call_stdin_over_frame_limit_is_rejected() {
    let setup = Setup::start();

    let stdin = stdin_file(&setup, "stdin-max", &vec![b'x'; MAX_STDIN_BYTES]);
    let output = client_with_stdin(&setup, &["call", "--stdin", "echo-stdin"], stdin);

    assert_eq!(output.code(), Some(65), "{}", setup.describe(&output));
    assert!(
        output
            .stderr
            .contains("org.securesocket.Broker.RequestTooLarge"),
        "{}",
        output.describe()
    );
}

#[test]
fn call_stdin_over_max_is_usage_error() {
    let setup = Setup::start();

    let stdin = stdin_file(&setup, "stdin-large", &vec![b'x'; MAX_STDIN_BYTES + 1]);
    let output = client_with_stdin(&setup, &["call", "--stdin", "echo-stdin"], stdin);

    assert_usage_error(&output, "standard input is larger than 65536 bytes");
}

#[test]
fn call_stdin_non_utf8_is_usage_error() {
    let setup = Setup::start();

    let stdin = stdin_file(&setup, "stdin-binary", b"ok\xff\n");
    let output = client_with_stdin(&setup, &["call", "--stdin", "echo-stdin"], stdin);

    assert_usage_error(&output, "invalid standard input: not valid UTF-8");
}

#[test]
fn call_stdin_option_twice_is_usage_error() {
    let setup = Setup::start();

    let stdin = stdin_file(&setup, "stdin-twice", b"text\n");
    let output = client_with_stdin(&setup, &["call", "--stdin", "echo-stdin", "--stdin"], stdin);

    assert_usage_error(&output, "option --stdin given twice");
}

#[test]
fn call_stdin_directory_exits_66() {
    let setup = Setup::start();

    let directory = File::open(setup.fixture.path()).unwrap();
    let output = client_with_stdin(
        &setup,
        &["call", "--stdin", "echo-stdin"],
        Stdio::from(directory),
    );

    assert_eq!(output.code(), Some(66), "{}", output.describe());
    assert!(output.stdout.is_empty(), "{}", output.describe());
    assert_eq!(
        output.stderr.lines().collect::<Vec<_>>(),
        ["secure_socket: failed to read standard input: Is a directory (os error 21)"],
        "{}",
        output.describe()
    );
}

#[test]
fn call_without_stdin_option_reads_nothing() {
    let setup = Setup::start();
    // The write end stays open with data in the pipe, so a client that read stdin would
    // wait until the timeout or send the data.
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(b"not for the script\n").unwrap();

    let output = client_with_stdin(&setup, &["call", "echo-stdin"], Stdio::from(reader));

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert_eq!(output.stdout, "", "{}", output.describe());
    drop(writer);
}

#[test]
fn stdin_option_rejected_outside_call() {
    let setup = Setup::start();

    for args in [&["list", "--stdin"][..], &["describe", "--stdin", "greet"]] {
        let output = setup.client(args);
        assert_usage_error(&output, "option --stdin is valid for call only");
    }
}

#[test]
fn call_negative_zero_is_integer_zero() {
    let setup = Setup::start();

    let output = setup.client(&["call", "exit-with", "code:=-0"]);

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert!(output.stderr.is_empty(), "{}", output.describe());
}

#[test]
fn list_prints_one_line_per_command() {
    let setup = Setup::start();

    let output = setup.client(&["list"]);

    assert_eq!(output.code(), Some(0), "{}", setup.describe(&output));
    assert_eq!(output.stdout.lines().count(), 10, "{}", output.describe());
    for line in output.stdout.lines() {
        assert_eq!(line, line.trim_end(), "trailing spaces in {line:?}");
    }
    assert!(
        output.stdout.lines().any(|line| line == "quiet"),
        "{}",
        output.describe()
    );
}

#[test]
fn list_escapes_line_break_in_description() {
    let fixture = Fixture::new();
    let reply = json!({ "parameters": { "commands": [
        { "name": "a", "description": "first\nsecond" },
        { "name": "b", "description": "red \u{1b}[31mtext" },
    ]}});
    let server = FakeServer::start(&fixture, "list", &reply.to_string());

    let output = server.client(&fixture, &["list"]);

    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert_eq!(
        output.stdout,
        "a  first\\nsecond\nb  red \\u{1b}[31mtext\n",
        "{}",
        output.describe()
    );
}

/// A unix socket server that accepts one connection, reads one request up to its NUL
/// byte, and sends `reply` followed by NUL, as a faulty or hostile broker could.
struct FakeServer {
    path: PathBuf,
    request: mpsc::Receiver<Vec<u8>>,
}

impl FakeServer {
    fn start(fixture: &Fixture, name: &str, reply: &str) -> FakeServer {
        let path = fixture.socket_dir().join(format!("{name}.sock"));
        let listener = UnixListener::bind(&path).unwrap();
        // www-data connects, which needs write permission on the socket.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut frame = reply.as_bytes().to_vec();
        frame.push(0);
        let (sender, request) = mpsc::channel();
        thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut received = Vec::new();
            let mut chunk = [0u8; 4096];
            while !received.contains(&0) {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(count) => received.extend_from_slice(&chunk[..count]),
                }
            }
            let _ = stream.write_all(&frame);
            let _ = sender.send(received);
        });
        FakeServer { path, request }
    }

    /// Runs the client as www-data against this server.
    fn client(&self, fixture: &Fixture, args: &[&str]) -> ProcessOutput {
        let socket = self.path.to_string_lossy();
        let mut full_args = vec![args[0], "--socket", &socket];
        full_args.extend_from_slice(&args[1..]);
        spawn(command_as(
            WWW_DATA,
            fixture.client_binary(),
            &full_args,
            &[],
        ))
        .finish(CLIENT_TIMEOUT)
    }

    /// Returns the request the server received, without its NUL byte.
    fn received_request(&self) -> Value {
        let mut request = self
            .request
            .recv_timeout(CLIENT_TIMEOUT)
            .expect("the fake server received no request");
        request.retain(|&byte| byte != 0);
        serde_json::from_slice(&request).unwrap()
    }
}

#[test]
fn call_rejects_impossible_exit_status() {
    let fixture = Fixture::new();
    // Outcome fields of a Run reply, and the part of the error message that names them.
    let cases = [
        (r#""exit_code":-1,"timed_out":false"#, "exit_code -1 is not"),
        (
            r#""exit_code":256,"timed_out":false"#,
            "exit_code 256 is not",
        ),
        (
            r#""exit_code":300,"timed_out":false"#,
            "exit_code 300 is not",
        ),
        (
            r#""exit_code":"0","timed_out":false"#,
            "exit_code \"0\" is not",
        ),
        (r#""exit_code":null,"signal":0"#, "signal 0 is not"),
        (r#""exit_code":null,"signal":65"#, "signal 65 is not"),
        (r#""exit_code":null,"signal":200"#, "signal 200 is not"),
        (
            r#""exit_code":0,"signal":9,"timed_out":false"#,
            "has both exit_code 0 and signal 9",
        ),
        (
            r#""exit_code":0,"signal":9,"timed_out":true"#,
            "has both exit_code 0 and signal 9",
        ),
        (
            r#""timed_out":false"#,
            "has neither exit_code nor signal, and timed_out is false",
        ),
        (
            r#""exit_code":null,"signal":null"#,
            "has neither exit_code nor signal, and timed_out is missing",
        ),
    ];
    for (index, (parameters, message)) in cases.iter().enumerate() {
        let reply = format!(r#"{{"parameters":{{"stdout":"out","stderr":null,{parameters}}}}}"#);
        let server = FakeServer::start(&fixture, &format!("exit-{index}"), &reply);

        let output = server.client(&fixture, &["call", "greet"]);

        assert_eq!(output.code(), Some(69), "{reply}\n{}", output.describe());
        assert!(output.stdout.is_empty(), "{reply}\n{}", output.describe());
        assert!(
            output.stderr.contains("invalid reply from the broker"),
            "{reply}\n{}",
            output.describe()
        );
        assert!(
            output.stderr.contains(message),
            "{reply}\n{}",
            output.describe()
        );
    }
}

#[test]
fn call_escapes_control_characters_in_error() {
    let fixture = Fixture::new();
    let reply = json!({
        "error": "org.securesocket.Broker.\u{1b}]0;title\u{7}Denied",
        "parameters": {
            "field": "\u{9b}31m",
            "rule": "\u{7f}",
            "message": "a\u{1b}[2Jb\nsecond line",
        },
    });
    let server = FakeServer::start(&fixture, "escape", &reply.to_string());

    let output = server.client(&fixture, &["call", "greet"]);

    assert_eq!(output.code(), Some(65), "{}", output.describe());
    let stderr = &output.stderr_bytes;
    assert!(!stderr.contains(&0x1b), "ESC in {:?}", output.stderr);
    assert!(!stderr.contains(&0x07), "BEL in {:?}", output.stderr);
    assert!(!stderr.contains(&0x7f), "DEL in {:?}", output.stderr);
    assert!(
        !stderr.windows(2).any(|pair| pair == [0xc2, 0x9b]),
        "CSI in {:?}",
        output.stderr
    );
    assert_eq!(output.stderr.lines().count(), 1, "{}", output.describe());
    assert!(
        output
            .stderr
            .contains("org.securesocket.Broker.\\u{1b}]0;title\\u{7}Denied"),
        "{}",
        output.describe()
    );
}

#[test]
fn call_without_stdin_option_omits_field() {
    let fixture = Fixture::new();
    let reply = r#"{"parameters":{"exit_code":0,"signal":null,"timed_out":false}}"#;

    let server = FakeServer::start(&fixture, "no-stdin", reply);
    let output = server.client(&fixture, &["call", "greet"]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    let request = server.received_request();
    assert_eq!(request["parameters"].get("stdin"), None, "{request}");
}

/// Runs the binary as root with exactly `args`.
fn run_binary(args: &[&str]) -> ProcessOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_secure_socket"));
    command.args(args);
    spawn(command).finish(CLIENT_TIMEOUT)
}

#[test]
fn version_takes_no_arguments() {
    let output = run_binary(&["--version"]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert!(
        output.stdout.starts_with("secure_socket "),
        "{}",
        output.describe()
    );

    let output = run_binary(&["--version", "extra"]);
    assert_eq!(output.code(), Some(64), "{}", output.describe());
    assert!(output.stdout.is_empty(), "{}", output.describe());
}

#[test]
fn help_takes_no_arguments() {
    let output = run_binary(&["--help"]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());

    for args in [&["--help", "extra"][..], &["-h", "call"], &["help", "call"]] {
        let output = run_binary(args);
        assert_eq!(output.code(), Some(64), "{args:?}\n{}", output.describe());
        assert!(output.stdout.is_empty(), "{args:?}\n{}", output.describe());
        assert!(
            output
                .stderr
                .starts_with("usage: secure_socket --help (it takes no arguments"),
            "{args:?}\n{}",
            output.describe()
        );
    }
}

#[test]
fn check_policy_help_exits_zero() {
    for option in ["--help", "-h"] {
        let output = run_binary(&["check-policy", option]);
        assert_eq!(output.code(), Some(0), "{}", output.describe());
        assert!(
            output
                .stdout
                .starts_with("usage: secure_socket check-policy DIR\n"),
            "{}",
            output.describe()
        );
        assert!(output.stderr.is_empty(), "{}", output.describe());
    }
}

#[test]
fn check_policy_counts_in_singular() {
    let fixture = Fixture::new();
    fixture.write_policy(
        "one",
        "[command.one]\ndescription = \"\"\nscript = \"/bin/true\"\nrun_as = \"nobody\"\n\
         allow_users = [\"www-data\"]\n",
    );
    let dir = fixture.policy_dir();
    let dir = dir.to_string_lossy();

    let output = run_binary(&["check-policy", &dir]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert_eq!(output.stdout, format!("{dir}: valid, 1 command\n"));

    fixture.write_policy(
        "two",
        "[command.two]\ndescription = \"\"\nscript = \"/bin/true\"\nrun_as = \"nobody\"\n\
         allow_users = [\"www-data\"]\ntimeout_ms = -1\n",
    );
    let output = run_binary(&["check-policy", &dir]);
    assert_eq!(output.code(), Some(1), "{}", output.describe());
    assert!(
        output.stderr.ends_with(": invalid, 1 error\n"),
        "{}",
        output.describe()
    );
}
