//! Parser children that die: a serving child killed with SIGKILL in the middle of a run, a
//! serving child killed by SIGSYS in the middle of a frame, and idle children killed in
//! the pool. The monitor must log each death with the peer it served, close that peer's
//! connection, keep the pool full and serve the next client.
//!
//! The SIGSYS here comes from kill(2), not from the seccomp filter: no request a client
//! can send makes the child call a forbidden system call. tests/sandbox.rs applies the
//! child's real filter in forked processes and checks that forbidden calls die of
//! SIGSYS. This file checks what the monitor does when a child dies of that signal.
//!
//! Run as root: `cargo test --release --test child_faults`.

mod common;

use std::io;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::json;

use common::{
    Broker, Fixture, VarlinkConnection, idle_parser_children, parameters, process_is_alive,
    serving_child_pid, wait_for,
};

const POLICY: &str = r#"
[command.hello]
description = "Print a greeting"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["root"]
capture_output = true

[command.slow]
description = "Mark its start, then sleep for two seconds"
script = "@FIXTURE@/scripts/slow"
run_as = "root"
allow_users = ["root"]
capture_output = true
"#;

const SCRIPTS: &[(&str, &str)] = &[
    ("hello", "#!/bin/sh\necho hello\n"),
    (
        "slow",
        "#!/bin/sh\ntouch @FIXTURE@/out/slow.started\nsleep 2\necho done\n",
    ),
];

/// Pool size of the brokers in this file.
const POOL_SIZE: usize = 2;

/// How long the monitor may take to notice a death, log it and refill the pool. The
/// SIGKILL case waits for the 2 s script first.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);

fn policy_fixture() -> Fixture {
    Fixture::with_commands(POLICY, SCRIPTS)
}

fn start_broker(fixture: &Fixture, pool_size: usize) -> Broker {
    Broker::start(
        fixture,
        &[
            ("pool_size", &pool_size.to_string()),
            ("request_timeout_ms", "60000"),
        ],
    )
}

/// Returns whether the broker closes `connection` without sending a frame.
fn closed_without_reply(connection: &mut VarlinkConnection) -> bool {
    connection
        .stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    match connection.receive_frame() {
        Ok(None) => true,
        Ok(Some(_)) => false,
        Err(error) => error.kind() == io::ErrorKind::ConnectionReset,
    }
}

/// Waits for the monitor's log line about the death of `child` and returns it.
fn death_log_line(fixture: &Fixture, child: i32) -> Option<String> {
    let child_field = format!("child_pid={child} ");
    let mut found = None;
    wait_for(RECOVERY_TIMEOUT, || {
        found = fixture
            .log()
            .lines()
            .find(|line| {
                line.contains("parser child killed by a signal") && line.contains(&child_field)
            })
            .map(str::to_string);
        found.is_some()
    });
    found
}

/// Checks that the death of `child` by `signal` is logged with the peer identity of this
/// test process, that the pool is full again and that the next client is served.
fn assert_death_handled(fixture: &Fixture, broker: &Broker, child: i32, signal: Signal) {
    let line = death_log_line(fixture, child).unwrap_or_else(|| {
        panic!(
            "no log line records the death of parser child {child}\n{}",
            broker.diagnostics()
        )
    });
    let pool_full = wait_for(RECOVERY_TIMEOUT, || {
        idle_parser_children(broker).len() == POOL_SIZE
    });
    let reply = broker.connect().run("hello", json!({}));

    assert!(line.contains("peer_uid=0 "), "log line: {line}");
    assert!(
        line.contains(&format!("peer_pid={} ", std::process::id())),
        "the log line does not name this test process as the peer: {line}"
    );
    assert!(
        line.contains(&format!("signal={} ", signal as i32)),
        "log line: {line}"
    );
    let seccomp_violation = signal == Signal::SIGSYS;
    assert!(
        line.contains(&format!("seccomp_violation={seccomp_violation}")),
        "log line: {line}"
    );
    assert!(
        pool_full,
        "the pool did not return to {POOL_SIZE} idle children: {:?}\n{}",
        idle_parser_children(broker),
        broker.diagnostics()
    );
    assert_eq!(
        parameters(&reply)["stdout"],
        json!("hello\n"),
        "the next client was not served: {reply}\n{}",
        broker.diagnostics()
    );
}

#[test]
fn sigkill_during_run_closes_connection() {
    let fixture = policy_fixture();
    let broker = start_broker(&fixture, POOL_SIZE);
    let mut connection = broker.connect();
    connection.send(&json!({
        "method": "org.securesocket.Broker.Run",
        "parameters": { "command": "slow" },
    }));
    let started = wait_for(RECOVERY_TIMEOUT, || {
        fixture.out_file("slow.started").exists()
    });
    assert!(
        started,
        "the slow script never started\n{}",
        broker.diagnostics()
    );
    let child = serving_child_pid(&broker, connection.stream());

    signal::kill(Pid::from_raw(child), Signal::SIGKILL).unwrap();

    assert!(
        closed_without_reply(&mut connection),
        "the client of the killed child was not disconnected\n{}",
        broker.diagnostics()
    );
    assert_death_handled(&fixture, &broker, child, Signal::SIGKILL);
}

#[test]
fn sigsys_during_frame_logged_as_seccomp() {
    let fixture = policy_fixture();
    let broker = start_broker(&fixture, POOL_SIZE);
    let mut connection = broker.connect();
    connection
        .send_bytes(b"{\"method\":\"org.securesocket.Broker.Ru")
        .unwrap();
    let child = serving_child_pid(&broker, connection.stream());

    signal::kill(Pid::from_raw(child), Signal::SIGSYS).unwrap();

    assert!(
        closed_without_reply(&mut connection),
        "the client of the killed child was not disconnected\n{}",
        broker.diagnostics()
    );
    assert_death_handled(&fixture, &broker, child, Signal::SIGSYS);
}

#[test]
fn killed_idle_children_are_replaced() {
    let fixture = policy_fixture();
    // The default pool size, which is larger than the monitor's three attempts to hand a
    // connection to an idle child.
    let pool_size = 4;
    let broker = start_broker(&fixture, pool_size);
    // Broker::start probes the socket with a connection. Its session must be over, or it
    // could take one of the children killed below.
    let probe_served = wait_for(RECOVERY_TIMEOUT, || {
        fixture.log().contains("parser child exited")
    });
    assert!(
        probe_served,
        "the start-up probe was not served\n{}",
        broker.diagnostics()
    );
    let mut idle = Vec::new();
    let filled = wait_for(RECOVERY_TIMEOUT, || {
        idle = idle_parser_children(&broker);
        idle.len() == pool_size
    });
    assert!(filled, "the pool never filled\n{}", broker.diagnostics());

    for &pid in &idle {
        signal::kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    }
    let all_dead = wait_for(RECOVERY_TIMEOUT, || {
        idle.iter().all(|&pid| !process_is_alive(pid))
    });
    let refilled = wait_for(RECOVERY_TIMEOUT, || {
        idle_parser_children(&broker).len() == pool_size
    });
    let mut connection = broker.connect();
    let _ = connection.send_bytes(b"{\"method\":\"org.varlink.service.GetInfo\"}\0");
    let reply = connection.receive_frame();

    assert!(all_dead, "the killed idle children did not die");
    assert!(
        refilled,
        "the pool did not replace its killed idle children: live idle children {:?}\n{}",
        idle_parser_children(&broker),
        broker.diagnostics()
    );
    assert!(
        matches!(reply, Ok(Some(_))),
        "the first client after the kill got no reply: {reply:?}\n{}",
        broker.diagnostics()
    );
}
