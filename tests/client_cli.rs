//! Runs the command-line client (`secure_socket call`) as www-data against a real broker:
//! exact output bytes, the note after truncated output, exit codes that a script can
//! share with the client's own errors or with a signal, and option parsing.

mod common;

use serde_json::{Value, json};

use common::{
    BINARY_SCRIPT, BINARY_STDERR, BINARY_STDOUT, Broker, CLIENT_TIMEOUT, FLOOD_SCRIPT, Fixture,
    ProcessOutput, WWW_DATA, command_as, json_reply_parameters, run_client_as, spawn,
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

[command.binary]
description = "Print bytes that are not UTF-8 on both streams"
script = "@FIXTURE@/scripts/binary"
run_as = "nobody"
allow_users = ["www-data"]
capture_output = true

[command.split-character]
description = "Print five bytes, of which the limit keeps half of the last character"
script = "@FIXTURE@/scripts/split-character"
run_as = "nobody"
allow_users = ["www-data"]
capture_output = true
output_limit = 4

[command.flood]
description = "Print 64 bytes on each stream, above the limit of 16"
script = "@FIXTURE@/scripts/flood"
run_as = "nobody"
allow_users = ["www-data"]
capture_output = true
output_limit = 16

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
"#;

/// Appends the name to out/greet.log, so that a test can tell whether the script ran.
const GREET_SCRIPT: &str =
    "#!/bin/sh\necho \"$1\" >> @FIXTURE@/out/greet.log\necho \"hello, $1\"\n";

const SPLIT_CHARACTER_SCRIPT: &str = "#!/bin/sh\nprintf 'abc\\303\\251'\n";

const EXIT_WITH_SCRIPT: &str = "#!/bin/sh\nexit \"$1\"\n";

const SELF_KILL_SCRIPT: &str = "#!/bin/sh\nkill -KILL $$\n";

const SLEEP_SCRIPT: &str = "#!/bin/sh\nsleep 30\n";

/// A running broker with the policy above. The broker is dropped before the fixture,
/// because its socket lives in the fixture.
struct Setup {
    broker: Broker,
    fixture: Fixture,
}

impl Setup {
    fn start() -> Setup {
        let fixture = Fixture::new();
        fixture.write_policy("commands", POLICY);
        fixture.write_script("greet", GREET_SCRIPT);
        fixture.write_script("binary", BINARY_SCRIPT);
        fixture.write_script("split-character", SPLIT_CHARACTER_SCRIPT);
        fixture.write_script("flood", FLOOD_SCRIPT);
        fixture.write_script("exit-with", EXIT_WITH_SCRIPT);
        fixture.write_script("self-kill", SELF_KILL_SCRIPT);
        fixture.write_script("sleep", SLEEP_SCRIPT);
        let broker = Broker::start(&fixture, &[]);
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

/// Checks that `output` is a usage error: exit 64, nothing on stdout, and `message` and
/// the usage on stderr.
fn assert_usage_error(output: &ProcessOutput, message: &str) {
    assert_eq!(output.code(), Some(64), "{}", output.describe());
    assert!(output.stdout.is_empty(), "{}", output.describe());
    assert!(output.stderr.contains(message), "{}", output.describe());
    assert!(
        output.stderr.contains("usage: secure_socket call"),
        "{}",
        output.describe()
    );
}

fn truncation_note(streams: &str, command: &str) -> String {
    format!(
        "secure_socket: the script's {streams} truncated at the command's output_limit, \
         which `secure_socket describe {command}` shows\n"
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
        truncation_note("stdout was", "split-character"),
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
        truncation_note("stdout and stderr were", "flood")
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
        &["describe", "greet", "--help"],
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
