//! The structured audit log: with log_format=json, every request produces one JSON
//! record whose fields are checked here one by one. That includes connections the
//! monitor rejects before any parsing, frames the parser child rejects, and calls that
//! fail to parse: each reply carries the request id of its record.
//!
//! Run as root: `cargo test --release -- --test-threads=2`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{
    Broker, CLIENT_TIMEOUT, Fixture, WWW_DATA, command_as, error_name, parameters, run_client_as,
    spawn, wait_for,
};

const POLICY: &str = r#"
[command.greet]
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["www-data"]
argv = ["{name}"]
env = { GREETING_TOKEN = "{token}" }
capture_output = true

[command.greet.arguments.name]
type = "string"
pattern = "[a-z]+"

[command.greet.arguments.token]
type = "string"
sensitive = true

[command.tally]
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["root"]
argv = ["{name}"]
stdin_limit = 64

[command.tally.arguments.name]
type = "string"
pattern = "[a-z]+"

[command.tally.arguments.count]
type = "integer"
min = 0
max = 10
required = false

[command.tally.arguments.force]
type = "boolean"
required = false

[command.tally.arguments.password]
type = "string"
sensitive = true
required = false
"#;

const SECRET: &str = "hunter-two-secret";

fn start() -> (Fixture, Broker) {
    start_with(&[])
}

/// Starts a broker with log_format=json and the extra parameters `params`.
fn start_with(params: &[(&str, &str)]) -> (Fixture, Broker) {
    let fixture = Fixture::new();
    fixture.write_policy("greet.toml", POLICY);
    fixture.write_script("greet", "#!/bin/sh\necho \"hello $1\"\n");
    let mut all_params = vec![("log_format", "json")];
    all_params.extend_from_slice(params);
    let broker = Broker::start(&fixture, &all_params);
    (fixture, broker)
}

/// Waits up to 5 s for the one log record whose request_id is `request_id`, and
/// returns it. Fails when there is none or more than one.
fn record_of(fixture: &Fixture, request_id: &Value) -> Value {
    assert!(request_id.is_string(), "request id {request_id}");
    let find = || -> Vec<Value> {
        fixture
            .log()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|record| &record["request_id"] == request_id)
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(5), || !find().is_empty()),
        "no record with request id {request_id}; log:\n{}",
        fixture.log()
    );
    let found = find();
    assert_eq!(found.len(), 1, "records: {found:?}");
    found.into_iter().next().unwrap_or_default()
}

/// Returns the request id of an error reply, after checking the error's name.
fn error_request_id(reply: &Value, expected_error: &str) -> Value {
    assert_eq!(error_name(reply), Some(expected_error), "reply: {reply}");
    let request_id = parameters(reply)["request_id"].clone();
    assert!(request_id.is_string(), "reply: {reply}");
    request_id
}

/// Checks the peer fields of a record made for a connection of this test process.
fn assert_peer_is_this_process(record: &Value) {
    assert_eq!(record["peer_uid"], json!(0), "{record}");
    assert_eq!(record["peer_gid"], json!(0), "{record}");
    assert_eq!(record["peer_pid"], json!(std::process::id()), "{record}");
    // Without CAP_SYS_PTRACE, the kernel allows reading /proc/PID/exe only of a process
    // whose permitted capabilities are all in the reader's effective set. The monitor
    // keeps three, so it cannot read the executable of this root process.
    assert_eq!(record["peer_exe"], json!(""), "{record}");
}

/// Returns every log record whose message is `message`.
fn records(fixture: &Fixture, message: &str) -> Vec<Value> {
    fixture
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["message"] == json!(message))
        .collect()
}

fn call_greet(fixture: &Fixture, name: &str) -> common::ProcessOutput {
    let token = format!("token={SECRET}");
    let name = format!("name={name}");
    run_client_as(
        fixture,
        WWW_DATA,
        &["call", "--json", "greet", &name, &token],
    )
}

#[test]
fn json_log_every_line_is_json() {
    let (fixture, _broker) = start();
    call_greet(&fixture, "alice");
    let log = fixture.log();
    assert!(!log.trim().is_empty());
    for line in log.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

#[test]
fn json_audit_record_has_every_field() {
    let (fixture, _broker) = start();
    let output = call_greet(&fixture, "alice");
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    let reply = output.stdout_json();
    let request_id = reply["parameters"]["request_id"].clone();
    assert!(request_id.is_string(), "reply: {reply}");

    assert!(wait_for(std::time::Duration::from_secs(5), || {
        !records(&fixture, "request ran").is_empty()
    }));
    let found = records(&fixture, "request ran");
    assert_eq!(found.len(), 1, "records: {found:?}");
    let record = &found[0];

    assert!(
        record["timestamp"]
            .as_str()
            .is_some_and(|t| t.contains('T'))
    );
    assert_eq!(record["level"], json!("INFO"));
    assert_eq!(record["peer_uid"], json!(WWW_DATA.uid));
    assert_eq!(record["peer_gid"], json!(WWW_DATA.gid));
    assert!(record["peer_pid"].as_i64().is_some_and(|pid| pid > 1));
    let client = fixture.client_binary().display().to_string();
    assert_eq!(record["peer_exe"], json!(client));
    assert_eq!(record["command"], json!("greet"));
    assert_eq!(record["decision"], json!("allowed"));
    assert_eq!(record["request_id"], request_id);
    assert_eq!(record["exit_code"], json!(0));
    assert_eq!(record["outcome"], json!("exit 0"));
    assert!(record["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    let arguments = &record["arguments"];
    assert!(arguments.is_object(), "arguments: {arguments}");
    assert_eq!(arguments["name"], json!("alice"), "arguments: {arguments}");
    assert_eq!(
        arguments["token"],
        json!(format!("<redacted, {} bytes>", SECRET.len())),
        "arguments: {arguments}"
    );
}

#[test]
fn json_audit_record_of_rejection() {
    let (fixture, _broker) = start();
    let output = call_greet(&fixture, "Alice");
    assert_eq!(output.code(), Some(65), "{}", output.describe());
    let reply = output.stdout_json();
    let request_id = reply["parameters"]["request_id"].clone();
    assert!(request_id.is_string(), "reply: {reply}");
    assert!(wait_for(std::time::Duration::from_secs(5), || {
        !records(&fixture, "request rejected").is_empty()
    }));
    let found = records(&fixture, "request rejected");
    assert_eq!(found.len(), 1, "records: {found:?}");
    let record = &found[0];
    assert_eq!(record["level"], json!("WARN"));
    assert_eq!(record["peer_uid"], json!(WWW_DATA.uid));
    assert_eq!(record["command"], json!("greet"));
    assert_eq!(
        record["outcome"],
        json!("org.securesocket.Broker.InvalidArgument")
    );
    assert_eq!(record["field"], json!("name"));
    assert_eq!(record["rule"], json!("pattern"));
    assert_eq!(record["decision"], json!("rejected"));
    assert_eq!(record["request_id"], request_id);
    assert_eq!(record["peer_gid"], json!(WWW_DATA.gid));
    let client = fixture.client_binary().display().to_string();
    assert_eq!(record["peer_exe"], json!(client));
}

#[test]
fn json_log_never_contains_sensitive_value() {
    let (fixture, _broker) = start();
    call_greet(&fixture, "alice");
    call_greet(&fixture, "Alice");
    assert!(wait_for(std::time::Duration::from_secs(5), || {
        !records(&fixture, "request rejected").is_empty()
    }));
    assert!(!fixture.log().contains(SECRET));
}

#[test]
fn global_filter_rejection_has_record() {
    let (fixture, broker) = start_with(&[("authorised_peer_uid", "33")]);
    // The monitor replies at once, before the client writes anything.
    let mut connection = broker.connect();
    let reply = connection.receive();

    let request_id = error_request_id(&reply, "org.securesocket.Broker.PermissionDenied");
    let message = parameters(&reply)["message"].as_str().unwrap_or_default();
    assert!(message.contains("authorised_peer_uid"), "reply: {reply}");
    let rule = &parameters(&reply)["rule"];
    assert_eq!(rule, &json!("authorised_peer_uid"), "reply: {reply}");
    assert!(connection.is_closed_by_peer(), "connection left open");

    let record = record_of(&fixture, &request_id);
    assert_eq!(record["level"], json!("WARN"));
    assert_eq!(record["decision"], json!("rejected"));
    assert_eq!(record["rule"], json!("authorised_peer_uid"));
    assert_eq!(
        record["outcome"],
        json!("org.securesocket.Broker.PermissionDenied")
    );
    assert_peer_is_this_process(&record);
    assert!(record.get("command").is_none(), "{record}");
    assert!(record.get("method").is_none(), "{record}");
    assert!(record["duration_ms"].as_f64().is_some(), "{record}");
}

#[test]
fn uid_limit_rejection_has_record() {
    let (fixture, broker) = start_with(&[
        ("max_connections_per_uid", "1"),
        ("request_timeout_ms", "60000"),
    ]);
    // The probe of Broker::start may hold root's only slot for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let _served = loop {
        let mut connection = broker.connect();
        // A write to a connection that the monitor rejected and closed fails, and the
        // Busy reply is still there to read.
        let _ = connection.send_bytes(b"{\"method\":\"org.varlink.service.GetInfo\"}\0");
        let reply = connection.receive();
        if error_name(&reply).is_none() {
            break connection;
        }
        assert!(Instant::now() < deadline, "never served: {reply}");
        std::thread::sleep(Duration::from_millis(50));
    };

    let mut rejected_connection = broker.connect();
    let reply = rejected_connection.receive();

    let request_id = error_request_id(&reply, "org.securesocket.Broker.Busy");
    assert_eq!(parameters(&reply)["rule"], json!("max_connections_per_uid"));
    assert_eq!(parameters(&reply)["field"], json!("connections"));
    let record = record_of(&fixture, &request_id);
    assert_eq!(record["decision"], json!("rejected"));
    assert_eq!(record["rule"], json!("max_connections_per_uid"));
    assert_eq!(record["outcome"], json!("org.securesocket.Broker.Busy"));
    assert_peer_is_this_process(&record);
    assert!(record.get("command").is_none(), "{record}");
}

#[test]
fn oversized_frame_has_request_record() {
    let (fixture, broker) = start_with(&[("max_frame_bytes", "1024")]);
    let mut connection = broker.connect();
    // The child may close the connection before it reads all of this, so a failed
    // write still leaves the reply to read.
    let _ = connection.send_bytes(&[b' '; 4096]);
    let reply = connection.receive();

    let request_id = error_request_id(&reply, "org.securesocket.Broker.RequestTooLarge");
    let record = record_of(&fixture, &request_id);
    assert_eq!(record["message"], json!("request rejected"));
    assert_eq!(record["decision"], json!("rejected"));
    assert_eq!(
        record["outcome"],
        json!("org.securesocket.Broker.RequestTooLarge")
    );
    assert_eq!(record["field"], json!("frame"));
    assert_eq!(record["rule"], json!("max_frame_bytes"));
    assert!(record.get("method").is_none(), "{record}");
    assert!(record.get("command").is_none(), "{record}");
    assert_peer_is_this_process(&record);
}

#[test]
fn incomplete_frame_timeout_has_request_record() {
    let (fixture, broker) = start_with(&[("request_timeout_ms", "300")]);
    let mut connection = broker.connect();
    connection
        .send_bytes(b"{\"method\":\"org.varlink.service.Get")
        .unwrap();
    let reply = connection.receive();

    let request_id = error_request_id(&reply, "org.securesocket.Broker.TimedOut");
    let record = record_of(&fixture, &request_id);
    assert_eq!(record["message"], json!("request rejected"));
    assert_eq!(record["decision"], json!("rejected"));
    assert_eq!(record["outcome"], json!("org.securesocket.Broker.TimedOut"));
    assert_eq!(record["field"], json!("frame"));
    assert_eq!(record["rule"], json!("request_timeout_ms"));
    let duration_ms = record["duration_ms"].as_f64().unwrap_or_default();
    assert!(duration_ms >= 300.0, "{record}");
}

#[test]
fn varlink_service_errors_carry_request_id() {
    let (fixture, broker) = start();
    let mut connection = broker.connect();
    let cases = [
        (
            json!({ "method": "org.varlink.service.Nope" }),
            "org.varlink.service.MethodNotFound",
        ),
        (
            json!({
                "method": "org.varlink.service.GetInterfaceDescription",
                "parameters": { "interface": "org.example.Missing" },
            }),
            "org.varlink.service.InterfaceNotFound",
        ),
        (
            json!({ "method": "org.securesocket.Broker.List", "parameters": { "x": 1 } }),
            "org.varlink.service.InvalidParameter",
        ),
    ];
    for (call, expected_error) in cases {
        connection.send(&call);
        let reply = connection.receive();
        let request_id = error_request_id(&reply, expected_error);
        let record = record_of(&fixture, &request_id);
        assert_eq!(record["outcome"], json!(expected_error), "{record}");
        assert_eq!(record["method"], call["method"], "{record}");
    }
}

#[test]
fn parse_failure_records_method_and_command() {
    let (fixture, broker) = start();
    let mut connection = broker.connect();
    let cases = [
        (
            json!({
                "method": "org.securesocket.Broker.Run",
                "parameters": { "command": "greet", "arguments": [1] },
            }),
            "org.varlink.service.InvalidParameter",
            "org.securesocket.Broker.Run",
        ),
        (
            json!({
                "method": "org.securesocket.Broker.Run",
                "parameters": { "command": "greet", "arguments": { "name": 1.5 } },
            }),
            "org.securesocket.Broker.InvalidArgument",
            "org.securesocket.Broker.Run",
        ),
        (
            json!({
                "method": "org.securesocket.Broker.Describe",
                "parameters": { "command": "greet", "extra": true },
            }),
            "org.varlink.service.InvalidParameter",
            "org.securesocket.Broker.Describe",
        ),
    ];
    for (call, expected_error, method) in cases {
        connection.send(&call);
        let reply = connection.receive();
        let request_id = error_request_id(&reply, expected_error);
        let record = record_of(&fixture, &request_id);
        assert_eq!(record["method"], json!(method), "{record}");
        assert_eq!(record["command"], json!("greet"), "{record}");
    }
}

#[test]
fn json_arguments_object_keeps_types() {
    let (fixture, broker) = start();
    let mut connection = broker.connect();
    let arguments = json!({ "name": "bob", "count": 5, "force": true, "password": SECRET });
    let reply = connection.run("tally", arguments);
    assert_eq!(parameters(&reply)["exit_code"], json!(0), "reply: {reply}");

    let record = record_of(&fixture, &parameters(&reply)["request_id"]);
    let expected = json!({
        "name": "bob",
        "count": 5,
        "force": true,
        "password": format!("<redacted, {} bytes>", SECRET.len()),
    });
    assert_eq!(record["arguments"], expected, "{record}");
    assert!(!fixture.log().contains(SECRET));
}

#[test]
fn text_log_keeps_quoted_arguments() {
    let fixture = Fixture::new();
    fixture.write_policy("greet.toml", POLICY);
    fixture.write_script("greet", "#!/bin/sh\necho \"hello $1\"\n");
    let broker = Broker::start(&fixture, &[]);
    let reply = broker
        .connect()
        .run("tally", json!({ "name": "bob", "password": SECRET }));
    let request_id = parameters(&reply)["request_id"]
        .as_str()
        .unwrap_or_default();
    assert!(!request_id.is_empty(), "reply: {reply}");

    let line_of_request = || {
        fixture
            .log()
            .lines()
            .find(|line| line.contains("request ran") && line.contains(request_id))
            .map(str::to_string)
    };
    assert!(
        wait_for(Duration::from_secs(5), || line_of_request().is_some()),
        "log:\n{}",
        fixture.log()
    );
    let line = line_of_request().unwrap_or_default();
    let expected = format!(
        r#"arguments="name=\"bob\" password=<redacted, {} bytes>""#,
        SECRET.len()
    );
    assert!(line.contains(&expected), "{line}");
}

/// Returns the text of every `"duration_ms":` value in `line`.
fn duration_texts(line: &str) -> Vec<&str> {
    line.split("\"duration_ms\":")
        .skip(1)
        .map(|rest| {
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn duration_ms_has_whole_microseconds() {
    let (fixture, broker) = start();
    let mut connection = broker.connect();
    for _ in 0..5 {
        connection.run("tally", json!({ "name": "bob" }));
        connection.run("tally", json!({ "name": "Bob" }));
        connection.call("org.securesocket.Broker.List", json!({}));
    }
    assert!(
        wait_for(Duration::from_secs(5), || {
            records(&fixture, "request").len() >= 5
        }),
        "log:\n{}",
        fixture.log()
    );

    let log = fixture.log();
    let durations: Vec<&str> = log.lines().flat_map(duration_texts).collect();
    assert!(durations.len() >= 15, "log:\n{log}");
    for text in durations {
        let decimals = text
            .split_once('.')
            .map_or(0, |(_, fraction)| fraction.len());
        assert!(decimals <= 3, "duration_ms {text} has more than 3 decimals");
    }
}

/// Connects to the socket in argv[1] and runs the command in argv[2]. With argv[3] set
/// to `non-dumpable`, the process first clears its dumpable flag with prctl(2), which
/// hides /proc/PID/exe from every process without CAP_SYS_PTRACE.
const PYTHON_PEER: &str = r#"
import ctypes
import json
import socket
import sys

PR_SET_DUMPABLE = 4

socket_path, command, mode = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "non-dumpable":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_DUMPABLE) failed: errno %d" % ctypes.get_errno())
call = {"method": "org.securesocket.Broker.Run", "parameters": {"command": command}}
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
    client.connect(socket_path)
    client.sendall(json.dumps(call).encode() + b"\0")
    received = bytearray()
    while b"\0" not in received:
        block = client.recv(65536)
        if not block:
            sys.exit("connection closed before the reply ended")
        received += block
sys.stdout.write(received.split(b"\0")[0].decode())
"#;

/// Debian's interpreter. www-data cannot enter /root, where pyenv's interpreters are.
const PYTHON: &str = "/usr/bin/python3";

/// Starts a broker whose `python-only` command allows www-data only from Debian's
/// python3, and writes `PYTHON_PEER` into the fixture as peer.py.
fn python_peer_fixture() -> (Fixture, Broker) {
    let fixture = Fixture::new();
    let python = std::fs::canonicalize(PYTHON).unwrap();
    let policy = format!(
        r#"
[command.python-only]
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["www-data"]
allow_executables = ["{}"]
"#,
        python.display()
    );
    fixture.write_policy("python.toml", &policy);
    fixture.write_script("greet", "#!/bin/sh\necho hello\n");
    let program = fixture.path().join("peer.py");
    std::fs::write(&program, PYTHON_PEER).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o644)).unwrap();
    let broker = Broker::start(&fixture, &[("log_format", "json")]);
    (fixture, broker)
}

/// Runs peer.py as www-data in `mode` (`dumpable` or `non-dumpable`) and returns the
/// reply it printed.
fn python_peer_reply(fixture: &Fixture, mode: &str) -> Value {
    let program = fixture.path().join("peer.py");
    let socket = fixture.socket_path();
    let args = [
        "-I",
        program.to_str().unwrap(),
        socket.to_str().unwrap(),
        "python-only",
        mode,
    ];
    let output = spawn(command_as(WWW_DATA, Path::new(PYTHON), &args, &[])).finish(CLIENT_TIMEOUT);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    serde_json::from_str(&output.stdout).unwrap()
}

#[test]
fn unreadable_executable_names_allow_executables() {
    let (fixture, _broker) = python_peer_fixture();
    let allowed = python_peer_reply(&fixture, "dumpable");
    assert_eq!(error_name(&allowed), None, "reply: {allowed}");

    let reply = python_peer_reply(&fixture, "non-dumpable");
    let request_id = error_request_id(&reply, "org.securesocket.Broker.PermissionDenied");
    let message = parameters(&reply)["message"].as_str().unwrap_or_default();
    assert!(message.contains("could not read"), "reply: {reply}");
    assert!(message.contains("allow_executables"), "reply: {reply}");
    let record = record_of(&fixture, &request_id);
    assert_eq!(record["rule"], json!("allow_executables"), "{record}");
    assert_eq!(record["peer_uid"], json!(WWW_DATA.uid), "{record}");
    assert_eq!(record["peer_exe"], json!(""), "{record}");
    assert_eq!(record["command"], json!("python-only"), "{record}");
}

#[test]
fn other_executable_names_allow_executables() {
    let (fixture, _broker) = python_peer_fixture();
    let output = run_client_as(&fixture, WWW_DATA, &["call", "--json", "python-only"]);
    let reply = output.stdout_json();
    let request_id = error_request_id(&reply, "org.securesocket.Broker.PermissionDenied");
    let message = parameters(&reply)["message"].as_str().unwrap_or_default();
    let client = fixture.client_binary().display().to_string();
    assert!(message.contains(&client), "reply: {reply}");
    assert!(
        message.contains("not in allow_executables"),
        "reply: {reply}"
    );
    let rule = &parameters(&reply)["rule"];
    assert_eq!(rule, &json!("allow_executables"), "reply: {reply}");
    let record = record_of(&fixture, &request_id);
    assert_eq!(record["rule"], json!("allow_executables"), "{record}");
    assert_eq!(record["peer_exe"], json!(client), "{record}");
}

#[test]
fn introspection_replies_carry_record_id() {
    let (fixture, broker) = start();
    let mut connection = broker.connect();
    for method in [
        "org.securesocket.Broker.List",
        "org.varlink.service.GetInfo",
    ] {
        let reply = connection.call(method, json!({}));
        let request_id = &parameters(&reply)["request_id"];
        assert!(request_id.is_string(), "reply: {reply}");
        let record = record_of(&fixture, request_id);
        assert_eq!(record["method"], json!(method), "{record}");
    }
}

#[test]
fn run_record_has_stdin_length_only() {
    let (fixture, broker) = start();
    let mut connection = broker.connect();
    let reply = connection.call(
        "org.securesocket.Broker.Run",
        json!({ "command": "tally", "arguments": { "name": "bob" }, "stdin": "stdin-text" }),
    );
    let request_id = &parameters(&reply)["request_id"];
    assert!(request_id.is_string(), "reply: {reply}");

    let record = record_of(&fixture, request_id);
    assert_eq!(record["stdin_bytes"], json!(10), "{record}");
    assert!(!fixture.log().contains("stdin-text"));
}
