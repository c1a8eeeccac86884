//! A real seccomp kill of a parser child, end to end. Needs the test-only
//! `fault-injection` feature, which lets a client make its child call a forbidden system
//! call; .ci/run runs it with
//! `cargo test --release --features fault-injection --test seccomp_fault`.
#![cfg(feature = "fault-injection")]

mod common;

use std::time::Duration;

use serde_json::json;

use common::{Broker, Fixture, wait_for};

const POLICY: &str = r#"
[command.hello]
script = "@FIXTURE@/scripts/hello"
run_as = "nobody"
allow_users = ["root"]
capture_output = true
"#;

/// The frame the `fault-injection` build reacts to.
const FORBIDDEN_SYSCALL_FRAME: &[u8] =
    br#"{"method":"org.securesocket.FaultInjection.ForbiddenSyscall"}"#;

#[test]
fn seccomp_violation_is_logged_and_survived() {
    let fixture = Fixture::new();
    fixture.write_policy("hello.toml", POLICY);
    fixture.write_script("hello", "#!/bin/sh\necho hello\n");
    let broker = Broker::start(&fixture, &[("pool_size", "2")]);

    let mut connection = broker.connect();
    let mut frame = FORBIDDEN_SYSCALL_FRAME.to_vec();
    frame.push(0);
    connection.send_bytes(&frame).expect("send the frame");
    assert!(
        connection.is_closed_by_peer(),
        "the connection of the killed child must close without a reply"
    );

    let logged = wait_for(Duration::from_secs(5), || {
        fixture.log().lines().any(|line| {
            line.contains("parser child killed by a signal")
                && line.contains("seccomp_violation=true")
        })
    });
    assert!(logged, "log:\n{}", fixture.log());
    let line = fixture
        .log()
        .lines()
        .find(|line| line.contains("parser child killed by a signal"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains("signal=31"), "line: {line}");
    assert!(line.contains("peer_uid=0"), "line: {line}");
    assert!(
        line.contains(&format!("peer_pid={}", std::process::id())),
        "line: {line}"
    );

    let reply = broker.connect().run("hello", json!({}));
    assert_eq!(reply["parameters"]["exit_code"], json!(0), "reply: {reply}");
}
