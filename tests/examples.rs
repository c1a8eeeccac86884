//! Runs the client examples under examples/ against a real broker: the PHP client with
//! Debian's php-cli and the Python client with Debian's /usr/bin/python3, both as
//! www-data (and as daemon, whom the policy does not allow).
//!
//! Each language is checked twice. The command-line example is checked by its exit code,
//! stdout and stderr. A driver in tests/clients/ calls the client library and prints the
//! reply or the caught error as JSON, so that reply fields and error parameters are checked
//! one by one. The example files are copied into the fixture, because www-data
//! may not be able to enter the directory that holds the source tree.
//!
//! The tests install nothing. `.ci/run` installs php-cli and python3 with apt-get.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use common::{
    BINARY_STDERR, BINARY_STDOUT, Broker, DAEMON, Fixture, ProcessOutput, User, WWW_DATA,
    command_as, spawn,
};
use secure_socket::protocol::base64;

const PHP: &str = "/usr/bin/php";

/// Debian's interpreter: www-data cannot enter /root, where pyenv's interpreters live.
const PYTHON: &str = "/usr/bin/python3";

const POLICY: &str = r#"
[command.greet]
description = "Print a greeting for one name"
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["www-data"]
argv = ["{name}"]
capture_output = true

[command.greet.arguments.name]
type = "string"
pattern = "[a-z]+"
max_length = 16

[command.exit-with]
description = "Print one line on each stream and exit with the given code"
script = "@FIXTURE@/scripts/exit-with"
run_as = "nobody"
allow_users = ["www-data"]
argv = ["{code}"]
capture_output = true

[command.exit-with.arguments.code]
type = "integer"
min = 0
max = 100

[command.two-lines]
description = """
First line
second line"""
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["www-data"]
argv = ["two"]

[command.root-only]
description = "A command that only root may run, so List must leave it out"
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["root"]
argv = ["root"]
"#;

const GREET_SCRIPT: &str = "#!/bin/sh\necho \"hello, $1\"\n";

const EXIT_WITH_SCRIPT: &str =
    "#!/bin/sh\necho \"on stdout\"\necho \"exiting with $1\" >&2\nexit \"$1\"\n";

/// One client example: the interpreter, the files it needs in the fixture, and the
/// programs that the tests start.
struct Language {
    interpreter: &'static str,
    missing_hint: &'static str,
    /// Files copied from the repository into the fixture directory, by repository path.
    files: &'static [&'static str],
    /// Command-line example, by file name in the fixture.
    cli: &'static str,
    /// Driver that prints replies and errors as JSON, by file name in the fixture.
    driver: &'static str,
}

const PHP_EXAMPLE: Language = Language {
    interpreter: PHP,
    missing_hint: "install php-cli (`apt-get install php-cli`, as .ci/run does)",
    files: &[
        "examples/php/secure_socket_client.php",
        "examples/php/run_command.php",
        "tests/clients/call_example_client.php",
    ],
    cli: "run_command.php",
    driver: "call_example_client.php",
};

const PYTHON_EXAMPLE: Language = Language {
    interpreter: PYTHON,
    missing_hint: "install python3 (`apt-get install python3`, as .ci/run does)",
    files: &[
        "examples/python/secure_socket_client.py",
        "tests/clients/call_example_client.py",
    ],
    cli: "secure_socket_client.py",
    driver: "call_example_client.py",
};

/// A running broker with the policy above and one language's files in its fixture.
struct Setup {
    language: &'static Language,
    // Dropped before the fixture, because the broker's socket lives in the fixture.
    broker: Broker,
    fixture: Fixture,
}

impl Setup {
    fn start(language: &'static Language) -> Setup {
        assert!(
            Path::new(language.interpreter).exists(),
            "{} is missing: {}",
            language.interpreter,
            language.missing_hint
        );
        let fixture = Fixture::new();
        fixture.write_policy("commands", POLICY);
        fixture.write_output_commands();
        fixture.write_script("greet", GREET_SCRIPT);
        fixture.write_script("exit-with", EXIT_WITH_SCRIPT);
        for file in language.files {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let name = Path::new(file).file_name().unwrap().to_str().unwrap();
            fixture.copy_in(&source, name);
        }
        let broker = Broker::start(&fixture, &[]);
        Setup {
            language,
            broker,
            fixture,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.fixture.path().join(name)
    }

    /// Runs `interpreter PROGRAM args...` as `user` and waits for it.
    fn run_as(&self, user: User, program: &str, args: &[&str]) -> ProcessOutput {
        let program = self.file(program);
        let program = program.to_string_lossy();
        let mut full_args = vec![program.as_ref()];
        full_args.extend_from_slice(args);
        spawn(command_as(
            user,
            Path::new(self.language.interpreter),
            &full_args,
            &[],
        ))
        .finish(common::CLIENT_TIMEOUT)
    }

    /// Runs the command-line example as www-data: `PROGRAM --socket PATH args...`.
    fn run_cli(&self, args: &[&str]) -> ProcessOutput {
        let socket = self.fixture.socket_path();
        let socket = socket.to_string_lossy();
        let mut full_args = vec!["--socket", socket.as_ref()];
        full_args.extend_from_slice(args);
        self.run_as(WWW_DATA, self.language.cli, &full_args)
    }

    /// Runs the driver as `user` and returns the JSON object it printed.
    fn run_driver(&self, user: User, args: &[&str]) -> Value {
        let socket = self.fixture.socket_path();
        let socket = socket.to_string_lossy();
        let mut full_args = vec![socket.as_ref()];
        full_args.extend_from_slice(args);
        let output = self.run_as(user, self.language.driver, &full_args);
        assert_eq!(
            output.code(),
            Some(0),
            "the driver failed\n{}\n{}",
            output.describe(),
            self.broker.diagnostics()
        );
        output.stdout_json()
    }

    /// Calls Run through the driver as `user`.
    fn driver_run(&self, user: User, command: &str, arguments: Value) -> Value {
        self.run_driver(user, &["run", command, &arguments.to_string()])
    }
}

/// Returns `outcome["reply"]`, or fails with the whole outcome when the client threw.
fn reply_of(outcome: &Value) -> &Value {
    outcome
        .get("reply")
        .unwrap_or_else(|| panic!("expected a reply, got {outcome}"))
}

fn cli_run_prints_output_and_exit_code(language: &'static Language) {
    let setup = Setup::start(language);

    let output = setup.run_cli(&["greet", "name=world"]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert_eq!(output.stdout, "hello, world\n", "{}", output.describe());

    let output = setup.run_cli(&["exit-with", "code:=3"]);
    assert_eq!(output.code(), Some(3), "{}", output.describe());
    assert_eq!(output.stdout, "on stdout\n", "{}", output.describe());
    assert!(
        output.stderr.contains("exiting with 3"),
        "{}",
        output.describe()
    );
}

fn cli_writes_non_utf8_output_exactly(language: &'static Language) {
    let setup = Setup::start(language);

    let output = setup.run_cli(&["binary"]);

    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert_eq!(output.stdout_bytes, BINARY_STDOUT, "{}", output.describe());
    assert_eq!(output.stderr_bytes, BINARY_STDERR, "{}", output.describe());
}

fn cli_notes_truncated_output(language: &'static Language) {
    let setup = Setup::start(language);

    let output = setup.run_cli(&["flood"]);

    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert_eq!(output.stdout, "o".repeat(16), "{}", output.describe());
    let expected_stderr = format!(
        "{}note: the command's stdout and stderr output was truncated at its output_limit\n",
        "e".repeat(16)
    );
    assert_eq!(output.stderr, expected_stderr, "{}", output.describe());
}

fn cli_reports_rejection_with_exit_65(language: &'static Language) {
    let setup = Setup::start(language);

    let output = setup.run_cli(&["greet", "name=World!"]);
    assert_eq!(output.code(), Some(65), "{}", output.describe());
    assert!(
        output
            .stderr
            .contains("org.securesocket.Broker.InvalidArgument"),
        "{}",
        output.describe()
    );
    assert!(output.stdout.is_empty(), "{}", output.describe());
}

/// Checks that a JSON argument that JSON cannot carry (NaN, an infinity, or a number too
/// large for a float) is a usage error, and that nothing reaches the broker.
fn cli_rejects_non_finite_number(language: &'static Language) {
    let setup = Setup::start(language);

    for argument in [
        "code:=NaN",
        "code:=Infinity",
        "code:=-Infinity",
        "code:=1e999",
    ] {
        let output = setup.run_cli(&["exit-with", argument]);
        assert_eq!(output.code(), Some(64), "{argument}\n{}", output.describe());
        assert!(
            output.stdout.is_empty(),
            "{argument}\n{}",
            output.describe()
        );
        assert!(
            output.stderr.contains("invalid"),
            "{argument}\n{}",
            output.describe()
        );
        assert!(
            !output.stderr.contains("exiting with"),
            "{argument}: the script ran\n{}",
            output.describe()
        );
    }
}

fn client_run_returns_reply_fields(language: &'static Language) {
    let setup = Setup::start(language);

    let outcome = setup.driver_run(WWW_DATA, "greet", json!({ "name": "world" }));
    let reply = reply_of(&outcome);
    assert_eq!(reply["exit_code"], json!(0), "{outcome}");
    assert_eq!(reply["stdout"], json!("hello, world\n"), "{outcome}");
    assert_eq!(reply["stderr"], json!(""), "{outcome}");
    assert_eq!(reply.get("stdout_base64"), None, "{outcome}");
    assert_eq!(reply.get("stderr_base64"), None, "{outcome}");
    assert_eq!(reply["signal"], Value::Null, "{outcome}");
    assert_eq!(reply["timed_out"], json!(false), "{outcome}");
    assert!(reply["duration_ms"].is_u64(), "{outcome}");
    let request_id = reply["request_id"].as_str().unwrap_or_default();
    assert!(!request_id.is_empty(), "{outcome}");

    let outcome = setup.driver_run(WWW_DATA, "exit-with", json!({ "code": 7 }));
    let reply = reply_of(&outcome);
    assert_eq!(reply["exit_code"], json!(7), "{outcome}");
    assert_eq!(reply["stdout"], json!("on stdout\n"), "{outcome}");
    assert_eq!(reply["stderr"], json!("exiting with 7\n"), "{outcome}");
}

fn client_run_returns_base64_for_non_utf8(language: &'static Language) {
    let setup = Setup::start(language);

    let outcome = setup.driver_run(WWW_DATA, "binary", json!({}));
    let reply = reply_of(&outcome);
    assert_eq!(
        reply["stdout"],
        json!("caf\u{e9} \u{fffd}\u{fffd}\u{0}end\n"),
        "{outcome}"
    );
    let stdout = base64::decode(reply["stdout_base64"].as_str().unwrap_or_default());
    assert_eq!(stdout, Ok(BINARY_STDOUT.to_vec()), "{outcome}");
    let stderr = base64::decode(reply["stderr_base64"].as_str().unwrap_or_default());
    assert_eq!(stderr, Ok(BINARY_STDERR.to_vec()), "{outcome}");
}

fn client_lists_permitted_commands(language: &'static Language) {
    let setup = Setup::start(language);

    let outcome = setup.run_driver(WWW_DATA, &["list"]);
    let commands = reply_of(&outcome).as_array().unwrap_or_else(|| {
        panic!("List did not return an array: {outcome}");
    });
    let mut names: Vec<&str> = commands
        .iter()
        .map(|command| command["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["binary", "exit-with", "flood", "greet", "two-lines"],
        "{outcome}"
    );

    let greet = commands
        .iter()
        .find(|command| command["name"] == "greet")
        .unwrap();
    assert_eq!(
        greet["description"],
        json!("Print a greeting for one name"),
        "{outcome}"
    );
    assert_eq!(greet["arguments"][0]["name"], json!("name"), "{outcome}");
    assert_eq!(greet["arguments"][0]["kind"], json!("string"), "{outcome}");
}

fn client_raises_invalid_argument(language: &'static Language) {
    let setup = Setup::start(language);

    let outcome = setup.driver_run(WWW_DATA, "greet", json!({ "name": "World!" }));
    assert_eq!(
        outcome["error"],
        json!("org.securesocket.Broker.InvalidArgument"),
        "{outcome}"
    );
    assert_eq!(
        outcome["parameters"]["argument"],
        json!("name"),
        "{outcome}"
    );
    assert_eq!(outcome["parameters"]["rule"], json!("pattern"), "{outcome}");
    assert!(outcome["parameters"]["message"].is_string(), "{outcome}");
}

fn client_raises_permission_denied(language: &'static Language) {
    let setup = Setup::start(language);

    let outcome = setup.driver_run(DAEMON, "greet", json!({ "name": "world" }));
    assert_eq!(
        outcome["error"],
        json!("org.securesocket.Broker.PermissionDenied"),
        "{outcome}"
    );
    assert_eq!(
        outcome["parameters"]["command"],
        json!("greet"),
        "{outcome}"
    );
}

#[test]
fn php_cli_run_prints_output_and_exit_code() {
    cli_run_prints_output_and_exit_code(&PHP_EXAMPLE);
}

#[test]
fn php_cli_writes_non_utf8_output_exactly() {
    cli_writes_non_utf8_output_exactly(&PHP_EXAMPLE);
}

#[test]
fn php_cli_notes_truncated_output() {
    cli_notes_truncated_output(&PHP_EXAMPLE);
}

#[test]
fn php_cli_reports_rejection_with_exit_65() {
    cli_reports_rejection_with_exit_65(&PHP_EXAMPLE);
}

/// Checks that an argument that is not UTF-8 is a usage error that shows the argument,
/// and that nothing reaches the broker.
fn cli_rejects_non_utf8_argument(language: &'static Language) {
    use std::os::unix::ffi::OsStrExt;

    let setup = Setup::start(language);
    let program = setup.file(language.cli);
    let socket = setup.fixture.socket_path();
    let mut command = command_as(
        WWW_DATA,
        Path::new(language.interpreter),
        &[
            &program.to_string_lossy(),
            "--socket",
            &socket.to_string_lossy(),
            "greet",
        ],
        &[],
    );
    command.arg(std::ffi::OsStr::from_bytes(b"name=\xff"));

    let output = spawn(command).finish(common::CLIENT_TIMEOUT);

    assert_eq!(output.code(), Some(64), "{}", output.describe());
    assert!(output.stdout.is_empty(), "{}", output.describe());
    assert!(
        output.stderr.contains("invalid argument"),
        "{}",
        output.describe()
    );
    assert!(
        output.stderr.contains("not valid UTF-8"),
        "{}",
        output.describe()
    );
    assert!(output.stderr.contains("name="), "{}", output.describe());
    assert!(
        !output.stderr.contains("org.securesocket"),
        "the request reached the broker\n{}",
        output.describe()
    );
}

#[test]
fn php_cli_rejects_non_utf8_argument() {
    cli_rejects_non_utf8_argument(&PHP_EXAMPLE);
}

#[test]
fn python_cli_rejects_non_utf8_argument() {
    cli_rejects_non_utf8_argument(&PYTHON_EXAMPLE);
}

#[test]
fn php_cli_help_prints_usage() {
    let setup = Setup::start(&PHP_EXAMPLE);

    for args in [
        &["--help"][..],
        &["-h"],
        &["--socket", "/run/b.sock", "--help"],
    ] {
        let output = setup.run_as(WWW_DATA, PHP_EXAMPLE.cli, args);
        assert_eq!(output.code(), Some(0), "{args:?}\n{}", output.describe());
        assert!(
            output.stdout.starts_with("usage: php run_command.php "),
            "{args:?}\n{}",
            output.describe()
        );
        assert!(output.stderr.is_empty(), "{args:?}\n{}", output.describe());
    }
}

#[test]
fn python_cli_list_escapes_line_break() {
    let setup = Setup::start(&PYTHON_EXAMPLE);

    let output = setup.run_cli(&["--list"]);

    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert_eq!(output.stdout.lines().count(), 5, "{}", output.describe());
    assert!(
        output
            .stdout
            .lines()
            .any(|line| line == "two-lines\tFirst line\\nsecond line"),
        "{}",
        output.describe()
    );
}

#[test]
fn php_cli_rejects_non_finite_number() {
    cli_rejects_non_finite_number(&PHP_EXAMPLE);
}

#[test]
fn php_cli_socket_without_value_is_usage_error() {
    let setup = Setup::start(&PHP_EXAMPLE);

    let output = setup.run_as(WWW_DATA, PHP_EXAMPLE.cli, &["--socket"]);

    assert_eq!(output.code(), Some(64), "{}", output.describe());
    assert!(output.stdout.is_empty(), "{}", output.describe());
    assert!(
        output
            .stderr
            .starts_with("missing value for option --socket\nusage: php run_command.php"),
        "{}",
        output.describe()
    );
}

#[test]
fn php_client_run_returns_reply_fields() {
    client_run_returns_reply_fields(&PHP_EXAMPLE);
}

#[test]
fn php_client_run_returns_base64_for_non_utf8() {
    client_run_returns_base64_for_non_utf8(&PHP_EXAMPLE);
}

#[test]
fn php_client_lists_permitted_commands() {
    client_lists_permitted_commands(&PHP_EXAMPLE);
}

#[test]
fn php_client_raises_invalid_argument() {
    client_raises_invalid_argument(&PHP_EXAMPLE);
}

#[test]
fn php_client_raises_permission_denied() {
    client_raises_permission_denied(&PHP_EXAMPLE);
}

#[test]
fn python_cli_run_prints_output_and_exit_code() {
    cli_run_prints_output_and_exit_code(&PYTHON_EXAMPLE);
}

#[test]
fn python_cli_writes_non_utf8_output_exactly() {
    cli_writes_non_utf8_output_exactly(&PYTHON_EXAMPLE);
}

#[test]
fn python_cli_notes_truncated_output() {
    cli_notes_truncated_output(&PYTHON_EXAMPLE);
}

#[test]
fn python_cli_reports_rejection_with_exit_65() {
    cli_reports_rejection_with_exit_65(&PYTHON_EXAMPLE);
}

#[test]
fn python_cli_rejects_non_finite_number() {
    cli_rejects_non_finite_number(&PYTHON_EXAMPLE);
}

#[test]
fn python_client_run_returns_reply_fields() {
    client_run_returns_reply_fields(&PYTHON_EXAMPLE);
}

#[test]
fn python_client_run_returns_base64_for_non_utf8() {
    client_run_returns_base64_for_non_utf8(&PYTHON_EXAMPLE);
}

#[test]
fn python_client_lists_permitted_commands() {
    client_lists_permitted_commands(&PYTHON_EXAMPLE);
}

#[test]
fn python_client_raises_invalid_argument() {
    client_raises_invalid_argument(&PYTHON_EXAMPLE);
}

#[test]
fn python_client_raises_permission_denied() {
    client_raises_permission_denied(&PYTHON_EXAMPLE);
}
