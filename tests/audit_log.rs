//! The structured audit log: with log_format=json, every request produces one JSON
//! record whose fields are checked here one by one.
//!
//! Run as root: `cargo test --release -- --test-threads=2`.

mod common;

use serde_json::{Value, json};

use common::{Broker, Fixture, WWW_DATA, run_client_as, wait_for};

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
"#;

const SECRET: &str = "hunter-two-secret";

fn start() -> (Fixture, Broker) {
    let fixture = Fixture::new();
    fixture.write_policy("greet.toml", POLICY);
    fixture.write_script("greet", "#!/bin/sh\necho \"hello $1\"\n");
    let broker = Broker::start(&fixture, &[("log_format", "json")]);
    (fixture, broker)
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
    let arguments = record["arguments"].as_str().unwrap_or_default();
    assert!(
        arguments.contains("name=\"alice\""),
        "arguments: {arguments}"
    );
    assert!(
        arguments.contains(&format!("token=<redacted, {} bytes>", SECRET.len())),
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
    assert_eq!(record["detail"], json!("name pattern"));
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
