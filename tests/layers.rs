//! Defences that another layer would otherwise hide: each test fails when its one layer
//! is removed, even though a second defence still stops the request.
//!
//! Run as root: `cargo test --release -- --test-threads=2`.

mod common;

use std::fs;
use std::time::Duration;

use serde_json::json;

use common::{
    Broker, Fixture, WWW_DATA, error_name, parameters, process_is_alive, run_client_as, wait_for,
};

const POLICY: &str = r#"
[command.hello]
script = "@FIXTURE@/scripts/hello"
run_as = "nobody"
allow_users = ["www-data", "root"]
capture_output = true

[command.checked]
script = "@FIXTURE@/scripts/hello"
run_as = "nobody"
allow_users = ["www-data", "root"]
argv = ["{name}"]

[command.checked.arguments.name]
type = "string"
pattern = "[a-z]+"

[command.leave-behind]
script = "@FIXTURE@/scripts/leave-behind"
run_as = "nobody"
allow_users = ["root"]
"#;

/// Starts a background sleep that outlives the script unless the broker kills it, and
/// records its pid.
const LEAVE_BEHIND: &str = "#!/bin/sh\n\
sleep 60 >/dev/null 2>&1 </dev/null &\n\
echo $! > @FIXTURE@/out/leftover.pid\n\
exit 0\n";

fn fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.write_policy("layers.toml", POLICY);
    fixture.write_script("hello", "#!/bin/sh\necho hello\n");
    fixture.write_script("leave-behind", LEAVE_BEHIND);
    fixture
}

#[test]
fn global_uid_filter_closes_other_peer() {
    let fixture = fixture();
    let broker = Broker::start(&fixture, &[("authorised_peer_uid", "33")]);

    // The test runs as root, which the filter does not allow.
    let mut connection = broker.connect();
    let message = json!({ "method": "org.varlink.service.GetInfo" });
    let mut bytes = serde_json::to_vec(&message).unwrap();
    bytes.push(0);
    // The monitor may already have closed the connection, so a failed write is the same
    // outcome as a close.
    let sent = connection.send_bytes(&bytes);
    assert!(sent.is_err() || connection.is_closed_by_peer());

    let logged = wait_for(Duration::from_secs(5), || {
        fixture.log().contains("peer rejected by the global filter")
    });
    assert!(logged, "log:\n{}", fixture.log());
    assert!(fixture.log().contains("authorised_peer_uid"));

    let output = run_client_as(&fixture, WWW_DATA, &["call", "hello"]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
}

#[test]
fn parser_child_rejects_invalid_argument_first() {
    let fixture = fixture();
    let broker = Broker::start(&fixture, &[]);
    let reply = broker.connect().run("checked", json!({ "name": "UPPER" }));
    assert_eq!(
        error_name(&reply),
        Some("org.securesocket.Broker.InvalidArgument")
    );
    assert_eq!(parameters(&reply)["rule"], json!("pattern"));
    // The monitor logs this line when a child forwards an Exec that fails validation. An
    // honest child rejects the value itself, so the line must be absent.
    assert!(
        !fixture.log().contains("fails validation"),
        "log:\n{}",
        fixture.log()
    );
}

#[test]
fn script_exit_kills_leftover_process() {
    let fixture = fixture();
    let broker = Broker::start(&fixture, &[]);
    let reply = broker.connect().run("leave-behind", json!({}));
    assert_eq!(parameters(&reply)["exit_code"], json!(0), "reply: {reply}");

    let pid_text = fs::read_to_string(fixture.out_file("leftover.pid")).expect("pid file");
    let pid: i32 = pid_text.trim().parse().expect("a pid");
    // A killed process may stay a zombie, because pid 1 here does not reap orphans;
    // process_is_alive counts a zombie as gone.
    let gone = wait_for(Duration::from_secs(3), || !process_is_alive(pid));
    assert!(gone, "process {pid} outlived its script");
}
