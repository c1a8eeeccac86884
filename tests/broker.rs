//! End-to-end tests of the broker binary: a real broker on a socket under /run, real
//! scripts, clients running as www-data and daemon. Written against the wire, command
//! line and policy contracts only, never against the broker's code.
//!
//! Run as root: `cargo test --release -- --test-threads=2`.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{
    Broker, DAEMON, Fixture, NOBODY_UID, WWW_DATA, broker_arguments, child_pids, error_name,
    json_reply_parameters, parameters, process_is_alive, run_broker_to_exit, run_client_as,
    spawn_client_as, status_field, wait_for,
};

/// Commands used across the tests. `root` appears in some `allow_users` lists so that
/// tests can speak raw varlink from the (root) test process itself.
const POLICY: &str = r#"
[command.hello]
description = "Print the date and the peer uid"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["www-data"]
capture_output = true

[command.exit-three]
description = "Exit with status 3"
script = "@FIXTURE@/scripts/exit-three"
run_as = "root"
allow_users = ["www-data"]
capture_output = true

[command.guarded]
description = "Write a marker file (only www-data may run it)"
script = "@FIXTURE@/scripts/guarded"
run_as = "root"
allow_users = ["www-data"]

[command.checked]
description = "Print its arguments, one per line"
script = "@FIXTURE@/scripts/checked"
run_as = "root"
allow_users = ["www-data", "root"]
argv = ["{name}", "{count}", "{mode}", "{text}"]
capture_output = true

[command.checked.arguments.name]
type = "string"
pattern = "[a-z]+"
max_length = 16

[command.checked.arguments.count]
type = "integer"
min = 1
max = 10

[command.checked.arguments.mode]
type = "enum"
values = ["fast", "slow"]

[command.checked.arguments.text]
type = "string"
required = false
max_length = 64

[command.root-only]
description = "A command that only root may run"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["root"]

[command.sleep-past-timeout]
description = "Start a background sleep, then sleep past the timeout"
script = "@FIXTURE@/scripts/sleep-past-timeout"
run_as = "root"
allow_users = ["www-data", "root"]
timeout_ms = 500

[command.print-environment]
description = "Print the script environment"
script = "@FIXTURE@/scripts/print-environment"
run_as = "root"
allow_users = ["www-data", "root"]
capture_output = true

[command.slow]
description = "Sleep for two seconds"
script = "@FIXTURE@/scripts/slow"
run_as = "root"
allow_users = ["www-data"]
"#;

/// The commands of [`POLICY`] that www-data may run, sorted.
const WWW_DATA_COMMANDS: &[&str] = &[
    "checked",
    "exit-three",
    "guarded",
    "hello",
    "print-environment",
    "sleep-past-timeout",
    "slow",
];

const SCRIPTS: &[(&str, &str)] = &[
    (
        "hello",
        "#!/bin/sh\ndate\necho \"peer uid: $SECURE_SOCKET_PEER_UID\"\n",
    ),
    ("exit-three", "#!/bin/sh\necho 'exiting with 3'\nexit 3\n"),
    ("guarded", "#!/bin/sh\ntouch @FIXTURE@/out/guarded.ran\n"),
    (
        "checked",
        "#!/bin/sh\ntouch @FIXTURE@/out/checked.ran\nprintf '%s\\n' \"$@\"\n",
    ),
    (
        "sleep-past-timeout",
        "#!/bin/sh\nsleep 60 &\necho $! > @FIXTURE@/out/grandchild.pid\nsleep 30\n",
    ),
    ("print-environment", "#!/bin/sh\nenv\n"),
    (
        "slow",
        "#!/bin/sh\ntouch @FIXTURE@/out/slow.started\nsleep 2\n",
    ),
];

/// The expected script environment PATH, fixed by the policy contract.
const SCRIPT_PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// A fixture holding [`POLICY`] and [`SCRIPTS`].
fn policy_fixture() -> Fixture {
    Fixture::with_commands(POLICY, SCRIPTS)
}

/// A fixture with [`POLICY`] and a broker started on it with the default test parameters.
fn start_default() -> (Fixture, Broker) {
    let fixture = policy_fixture();
    let broker = Broker::start(&fixture, &[]);
    (fixture, broker)
}

/// Checks that www-data can still run `hello` through the command line client.
fn assert_www_data_still_served(fixture: &Fixture, broker: &Broker) {
    let output = run_client_as(fixture, WWW_DATA, &["call", "hello"]);
    assert_eq!(
        output.code(),
        Some(0),
        "www-data could not run hello afterwards\n{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
}

#[test]
fn call_as_www_data_prints_peer_uid() {
    let (fixture, broker) = start_default();

    let output = run_client_as(&fixture, WWW_DATA, &["call", "hello"]);

    assert_eq!(
        output.code(),
        Some(0),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
    assert!(
        output.stdout.contains("peer uid: 33"),
        "stdout lacks the peer uid 33\n{}",
        output.describe()
    );
}

#[test]
fn call_exits_with_script_exit_code() {
    let (fixture, broker) = start_default();

    let output = run_client_as(&fixture, WWW_DATA, &["call", "exit-three"]);

    assert_eq!(
        output.code(),
        Some(3),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
}

#[test]
fn run_reply_carries_script_exit_code() {
    let (fixture, broker) = start_default();

    let output = run_client_as(&fixture, WWW_DATA, &["call", "--json", "exit-three"]);
    let reply = output.stdout_json();
    let reply = json_reply_parameters(&reply);

    assert_eq!(
        reply["exit_code"],
        json!(3),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
    assert_eq!(reply["timed_out"], json!(false), "{}", output.describe());
}

#[test]
fn call_inside_allow_users_runs_script() {
    let (fixture, broker) = start_default();

    let output = run_client_as(&fixture, WWW_DATA, &["call", "guarded"]);

    assert_eq!(
        output.code(),
        Some(0),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
    assert!(
        fixture.out_file("guarded.ran").exists(),
        "the script did not write its marker file\n{}",
        broker.diagnostics()
    );
}

#[test]
fn call_outside_allow_users_is_denied() {
    let (fixture, broker) = start_default();

    let output = run_client_as(&fixture, DAEMON, &["call", "guarded"]);

    assert_eq!(
        output.code(),
        Some(65),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
    assert!(
        output
            .stderr
            .contains("org.securesocket.Broker.PermissionDenied"),
        "stderr does not name PermissionDenied\n{}",
        output.describe()
    );
    assert!(
        !fixture.out_file("guarded.ran").exists(),
        "the script ran for a peer outside allow_users\n{}",
        broker.diagnostics()
    );
}

/// Returns valid arguments for `checked`. Each rejection test breaks one of them.
fn valid_checked_arguments() -> Value {
    json!({ "name": "abc", "count": 3, "mode": "fast" })
}

/// Sends `checked` with `arguments` and checks that the broker rejects `argument` for
/// breaking `rule`, and that the script did not run.
fn assert_argument_rejected(arguments: Value, argument: &str, rule: &str) {
    let (fixture, broker) = start_default();
    let mut connection = broker.connect();

    let reply = connection.run("checked", arguments);

    assert_eq!(
        error_name(&reply),
        Some("org.securesocket.Broker.InvalidArgument"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        parameters(&reply)["argument"],
        json!(argument),
        "reply: {reply}"
    );
    assert_eq!(parameters(&reply)["rule"], json!(rule), "reply: {reply}");
    assert!(
        !fixture.out_file("checked.ran").exists(),
        "the script ran although an argument was invalid\n{}",
        broker.diagnostics()
    );
}

fn with_argument(name: &str, value: Value) -> Value {
    let mut arguments = valid_checked_arguments();
    arguments[name] = value;
    arguments
}

#[test]
fn run_passes_valid_arguments_as_argv() {
    let (fixture, broker) = start_default();
    let mut connection = broker.connect();

    let reply = connection.run("checked", valid_checked_arguments());

    assert_eq!(
        error_name(&reply),
        None,
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(parameters(&reply)["exit_code"], json!(0), "reply: {reply}");
    // The optional `text` was not given, so its argv element is left out.
    assert_eq!(
        parameters(&reply)["stdout"],
        json!("abc\n3\nfast\n"),
        "reply: {reply}"
    );
    assert!(fixture.out_file("checked.ran").exists());
}

#[test]
fn run_rejects_pattern_mismatch() {
    assert_argument_rejected(with_argument("name", json!("ABC")), "name", "pattern");
}

#[test]
fn run_rejects_integer_out_of_range() {
    assert_argument_rejected(with_argument("count", json!(11)), "count", "range");
}

#[test]
fn run_rejects_unlisted_enum_value() {
    assert_argument_rejected(with_argument("mode", json!("medium")), "mode", "enum");
}

#[test]
fn run_rejects_leading_dash() {
    assert_argument_rejected(with_argument("text", json!("-rf")), "text", "leading_dash");
}

#[test]
fn run_rejects_newline() {
    assert_argument_rejected(with_argument("text", json!("one\ntwo")), "text", "newline");
}

#[test]
fn run_rejects_nul_byte() {
    assert_argument_rejected(with_argument("text", json!("one\u{0}two")), "text", "nul");
}

#[test]
fn call_reports_invalid_argument() {
    let (fixture, broker) = start_default();

    let output = run_client_as(
        &fixture,
        WWW_DATA,
        &["call", "checked", "name=ABC", "count:=3", "mode=fast"],
    );

    assert_eq!(
        output.code(),
        Some(65),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
    assert!(
        output
            .stderr
            .contains("org.securesocket.Broker.InvalidArgument"),
        "stderr does not name InvalidArgument\n{}",
        output.describe()
    );
    assert!(
        output.stderr.contains("name"),
        "stderr does not name the argument\n{}",
        output.describe()
    );
    assert!(!fixture.out_file("checked.ran").exists());
}

#[test]
fn run_unknown_command_is_rejected() {
    let (_fixture, broker) = start_default();
    let mut connection = broker.connect();

    let reply = connection.run("no-such-command", json!({}));

    assert_eq!(
        error_name(&reply),
        Some("org.securesocket.Broker.UnknownCommand"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        parameters(&reply)["command"],
        json!("no-such-command"),
        "reply: {reply}"
    );
}

#[test]
fn call_unknown_command_exits_65() {
    let (fixture, broker) = start_default();

    let output = run_client_as(&fixture, WWW_DATA, &["call", "no-such-command"]);

    assert_eq!(
        output.code(),
        Some(65),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
    assert!(
        output
            .stderr
            .contains("org.securesocket.Broker.UnknownCommand"),
        "stderr does not name UnknownCommand\n{}",
        output.describe()
    );
}

#[test]
fn describe_forbidden_command_reports_unknown() {
    let (fixture, broker) = start_default();

    let output = run_client_as(&fixture, WWW_DATA, &["describe", "--json", "root-only"]);
    let reply = output.stdout_json();

    assert_eq!(
        error_name(&reply),
        Some("org.securesocket.Broker.UnknownCommand"),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
}

#[test]
fn describe_permitted_command_lists_arguments() {
    let (_fixture, broker) = start_default();
    let mut connection = broker.connect();

    let reply = connection.call(
        "org.securesocket.Broker.Describe",
        json!({ "command": "checked" }),
    );
    let command = &parameters(&reply)["command"];
    let mut names: Vec<&str> = command["arguments"]
        .as_array()
        .map(|arguments| {
            arguments
                .iter()
                .filter_map(|a| a["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    names.sort_unstable();

    assert_eq!(
        command["name"],
        json!("checked"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(names, ["count", "mode", "name", "text"], "reply: {reply}");
}

#[test]
fn malformed_json_keeps_connection_open() {
    let (fixture, broker) = start_default();
    let mut connection = broker.connect();

    connection.send_bytes(b"{\"method\": \0").unwrap();
    let reply = connection.receive();
    let info = connection.call("org.varlink.service.GetInfo", json!({}));

    assert_eq!(
        error_name(&reply),
        Some("org.securesocket.Broker.InvalidRequest"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert!(
        parameters(&info)["interfaces"].is_array(),
        "GetInfo on the same connection failed: {info}\n{}",
        broker.diagnostics()
    );
    assert_www_data_still_served(&fixture, &broker);
}

#[test]
fn oversized_frame_closes_connection() {
    let (fixture, broker) = {
        let fixture = policy_fixture();
        let broker = Broker::start(&fixture, &[("max_frame_bytes", "1024")]);
        (fixture, broker)
    };
    let mut connection = broker.connect();
    let padding = "x".repeat(4096);
    let request = json!({
        "method": "org.varlink.service.GetInfo",
        "parameters": { "padding": padding },
    });
    let mut frame = serde_json::to_vec(&request).unwrap();
    frame.push(0);

    // The broker may close the connection before it has read the whole frame, which
    // makes this write fail; the reply is what counts.
    let _ = connection.send_bytes(&frame);
    let reply = connection.receive();

    assert_eq!(
        error_name(&reply),
        Some("org.securesocket.Broker.RequestTooLarge"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert!(
        connection.is_closed_by_peer(),
        "the connection stayed open after RequestTooLarge\n{}",
        broker.diagnostics()
    );
    assert_www_data_still_served(&fixture, &broker);
}

#[test]
fn disconnect_mid_frame_spares_next_client() {
    let (fixture, broker) = start_default();
    let mut connection = broker.connect();

    connection
        .send_bytes(b"{\"method\": \"org.varlink.service.Get")
        .unwrap();
    drop(connection);
    let mut next = broker.connect();
    let info = next.call("org.varlink.service.GetInfo", json!({}));

    assert!(
        parameters(&info)["interfaces"].is_array(),
        "the next client got {info}\n{}",
        broker.diagnostics()
    );
    assert_www_data_still_served(&fixture, &broker);
}

#[test]
fn more_flag_is_rejected() {
    let (_fixture, broker) = start_default();
    let mut connection = broker.connect();

    connection.send(&json!({
        "method": "org.varlink.service.GetInfo",
        "parameters": {},
        "more": true,
    }));
    let reply = connection.receive();

    assert_eq!(
        error_name(&reply),
        Some("org.securesocket.Broker.InvalidRequest"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(parameters(&reply)["field"], json!("more"), "reply: {reply}");
}

#[test]
fn oneway_run_runs_script_without_reply() {
    let (fixture, broker) = start_default();
    let mut connection = broker.connect();

    connection.send(&json!({
        "method": "org.securesocket.Broker.Run",
        "parameters": { "command": "checked", "arguments": valid_checked_arguments() },
        "oneway": true,
    }));
    // With no reply to the oneway call, the next reply belongs to GetInfo.
    let info = connection.call("org.varlink.service.GetInfo", json!({}));
    let ran = wait_for(Duration::from_secs(10), || {
        fixture.out_file("checked.ran").exists()
    });

    assert!(
        parameters(&info)["interfaces"].is_array(),
        "expected the GetInfo reply, got {info}\n{}",
        broker.diagnostics()
    );
    assert!(
        ran,
        "the oneway Run did not run the script\n{}",
        broker.diagnostics()
    );
}

#[test]
fn get_info_lists_both_interfaces() {
    let (_fixture, broker) = start_default();
    let mut connection = broker.connect();

    let reply = connection.call("org.varlink.service.GetInfo", json!({}));
    let interfaces = &parameters(&reply)["interfaces"];
    let listed = |name: &str| {
        interfaces
            .as_array()
            .is_some_and(|list| list.iter().any(|entry| entry == name))
    };

    assert!(
        listed("org.varlink.service"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert!(listed("org.securesocket.Broker"), "reply: {reply}");
}

#[test]
fn interface_description_starts_with_interface_line() {
    let (_fixture, broker) = start_default();
    let mut connection = broker.connect();

    let reply = connection.call(
        "org.varlink.service.GetInterfaceDescription",
        json!({ "interface": "org.securesocket.Broker" }),
    );
    let description = parameters(&reply)["description"].as_str().unwrap_or("");
    let first_line = description
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'));

    assert_eq!(
        first_line,
        Some("interface org.securesocket.Broker"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
}

#[test]
fn interface_description_of_unknown_interface_is_rejected() {
    let (_fixture, broker) = start_default();
    let mut connection = broker.connect();

    let reply = connection.call(
        "org.varlink.service.GetInterfaceDescription",
        json!({ "interface": "org.example.Missing" }),
    );

    assert_eq!(
        error_name(&reply),
        Some("org.varlink.service.InterfaceNotFound"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        parameters(&reply)["interface"],
        json!("org.example.Missing"),
        "reply: {reply}"
    );
}

#[test]
fn list_as_www_data_shows_only_permitted_commands() {
    let (fixture, broker) = start_default();

    let output = run_client_as(&fixture, WWW_DATA, &["list", "--json"]);
    let reply = output.stdout_json();
    let mut names: Vec<&str> = json_reply_parameters(&reply)["commands"]
        .as_array()
        .map(|commands| commands.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    names.sort_unstable();

    assert_eq!(
        names,
        WWW_DATA_COMMANDS,
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
}

#[test]
fn timeout_kills_script_and_grandchild() {
    let (fixture, broker) = start_default();
    let mut connection = broker.connect();

    let started = Instant::now();
    let reply = connection.run("sleep-past-timeout", json!({}));
    let elapsed = started.elapsed();
    let grandchild: i32 = fs::read_to_string(fixture.out_file("grandchild.pid"))
        .unwrap_or_else(|error| panic!("the script wrote no grandchild pid: {error}"))
        .trim()
        .parse()
        .unwrap();
    // The kill is sent before the reply, but the kernel may take a moment to deliver it.
    let grandchild_gone = wait_for(Duration::from_secs(3), || !process_is_alive(grandchild));

    assert_eq!(
        parameters(&reply)["timed_out"],
        json!(true),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "a 500 ms timeout took {elapsed:?}"
    );
    assert!(
        grandchild_gone,
        "the script's background sleep (pid {grandchild}) survived the timeout\n{}",
        broker.diagnostics()
    );
}

#[test]
fn script_environment_is_rebuilt_from_scratch() {
    let fixture = policy_fixture();
    let broker = Broker::start_with_env(
        &fixture,
        &[],
        &[
            ("LD_PRELOAD", "/lib/x86_64-linux-gnu/libm.so.6"),
            ("PYTHONPATH", "/nonexistent/secure_socket-test"),
            ("SECURE_SOCKET_TEST_LEAK", "leaked"),
        ],
    );
    let mut connection = broker.connect();

    let reply = connection.run("print-environment", json!({}));
    let environment = parameters(&reply)["stdout"].as_str().unwrap_or("");
    let has_variable = |name: &str| {
        environment
            .lines()
            .any(|line| line.starts_with(&format!("{name}=")))
    };
    let path_line = environment.lines().find(|line| line.starts_with("PATH="));

    assert_eq!(
        parameters(&reply)["exit_code"],
        json!(0),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert!(!has_variable("LD_PRELOAD"), "environment:\n{environment}");
    assert!(!has_variable("PYTHONPATH"), "environment:\n{environment}");
    assert!(
        !has_variable("SECURE_SOCKET_TEST_LEAK"),
        "environment:\n{environment}"
    );
    assert_eq!(path_line, Some(SCRIPT_PATH), "environment:\n{environment}");
    assert!(
        environment
            .lines()
            .any(|line| line == "SECURE_SOCKET_COMMAND=print-environment"),
        "environment:\n{environment}"
    );
}

/// Runs the broker with the default test arguments plus `extra` and checks that it exits
/// with status 78 (EX_CONFIG) without creating its socket. Returns the output for further
/// checks.
fn assert_parameters_rejected(extra: &[(&str, &str)]) -> common::ProcessOutput {
    let fixture = policy_fixture();

    let output = run_broker_to_exit(&broker_arguments(&fixture, extra));

    assert_eq!(output.code(), Some(78), "{}", output.describe());
    assert!(
        !fixture.socket_path().exists(),
        "the broker created its socket despite invalid parameters"
    );
    output
}

#[test]
fn parameter_inet_domain_is_rejected() {
    let output = assert_parameters_rejected(&[("domain", "inet")]);
    let message = output.stderr.to_lowercase();

    assert!(
        message.contains("inet"),
        "stderr does not name inet\n{}",
        output.describe()
    );
    assert!(
        message.contains("identity") || message.contains("credential"),
        "stderr does not give the missing peer identity as the reason\n{}",
        output.describe()
    );
}

#[test]
fn parameter_unknown_key_is_rejected() {
    let output = assert_parameters_rejected(&[("bogus_key", "1")]);

    assert!(
        output.stderr.contains("bogus_key"),
        "stderr does not name the key\n{}",
        output.describe()
    );
}

#[test]
fn parameter_non_numeric_max_connections_is_rejected() {
    let output = assert_parameters_rejected(&[("max_connections", "abc")]);

    assert!(
        output.stderr.contains("max_connections"),
        "stderr does not name the key\n{}",
        output.describe()
    );
    assert!(
        output.stderr.contains("abc"),
        "stderr does not name the value\n{}",
        output.describe()
    );
}

#[test]
fn sigterm_removes_socket_and_exits_zero() {
    let (fixture, mut broker) = start_default();

    let status = broker.terminate();

    assert_eq!(status.code(), Some(0), "{}", broker.diagnostics());
    assert!(
        !fixture.socket_path().exists(),
        "socket still exists\n{}",
        broker.diagnostics()
    );
}

#[test]
fn parser_child_is_sandboxed() {
    let (fixture, broker) = start_default();
    let client = spawn_client_as(&fixture, WWW_DATA, &["call", "slow"]);
    let started = wait_for(Duration::from_secs(10), || {
        fixture.out_file("slow.started").exists()
    });
    assert!(
        started,
        "the slow script never started\n{}",
        broker.diagnostics()
    );

    // Parser children run as uid 65534. This leaves out the script, which runs as root, and
    // any child that has not switched users yet.
    let nobody = NOBODY_UID.to_string();
    let parser_children: Vec<i32> = child_pids(broker.pid())
        .into_iter()
        .filter(|&pid| {
            status_field(pid, "Uid")
                .is_some_and(|uids| uids.split_whitespace().all(|uid| uid == nobody))
        })
        .collect();
    assert!(
        !parser_children.is_empty(),
        "no child of broker pid {} runs as uid {NOBODY_UID}\n{}",
        broker.pid(),
        broker.diagnostics()
    );

    for pid in parser_children {
        // A pool child started a moment ago may still be between setuid and seccomp.
        wait_for(Duration::from_secs(2), || {
            status_field(pid, "Seccomp").as_deref() == Some("2")
        });
        let exited = status_field(pid, "Seccomp").is_none();
        if exited {
            continue;
        }
        assert_eq!(
            status_field(pid, "NoNewPrivs").as_deref(),
            Some("1"),
            "parser child {pid}"
        );
        assert_eq!(
            status_field(pid, "Seccomp").as_deref(),
            Some("2"),
            "parser child {pid}"
        );
        assert_eq!(
            status_field(pid, "CapEff").as_deref(),
            Some("0000000000000000"),
            "parser child {pid}"
        );
    }

    let output = client.finish(common::CLIENT_TIMEOUT);
    assert_eq!(
        output.code(),
        Some(0),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
}
