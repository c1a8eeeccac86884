//! SIGTERM while requests run. Running scripts finish within shutdown_grace_ms, and their
//! clients get the real result. The socket file goes at once, so new clients are
//! refused, and a request on a connection that was already open gets Busy. The broker
//! exits with status 0, and scripts that outlive the grace period are killed.
//!
//! Run as root: `cargo test --release --test shutdown`.

mod common;

use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};

use common::{Broker, Fixture, VarlinkConnection, error_name, parameters, wait_for};

const POLICY: &str = r#"
[command.sleep-then-exit]
description = "Mark its start, sleep for the given seconds, print its token and exit 7"
script = "@FIXTURE@/scripts/sleep-then-exit"
run_as = "root"
allow_users = ["root"]
argv = ["{token}", "{seconds}"]
capture_output = true
max_concurrent = 16
timeout_ms = 60000

[command.sleep-then-exit.arguments.token]
type = "string"
pattern = "[a-z0-9-]+"
max_length = 32

[command.sleep-then-exit.arguments.seconds]
type = "integer"
min = 1
max = 60
"#;

const SCRIPT: &str =
    "#!/bin/sh\ntouch @FIXTURE@/out/$1.started\nsleep $2\necho \"$1 done\"\nexit 7\n";

/// Requests running when SIGTERM arrives.
const RUNNING: usize = 6;

fn policy_fixture() -> Fixture {
    Fixture::with_commands(POLICY, &[("sleep-then-exit", SCRIPT)])
}

/// Starts one client per token that runs `sleep-then-exit` for `seconds`, and waits until
/// every script has started.
fn start_requests(
    fixture: &Fixture,
    broker: &Broker,
    seconds: u32,
) -> Vec<(String, JoinHandle<Value>)> {
    let requests: Vec<(String, JoinHandle<Value>)> = (0..RUNNING)
        .map(|index| {
            let token = format!("request-{index}");
            let socket = broker.socket_path().to_path_buf();
            let arguments = json!({ "token": token, "seconds": seconds });
            let handle = thread::spawn(move || {
                VarlinkConnection::connect(&socket).run("sleep-then-exit", arguments)
            });
            (token, handle)
        })
        .collect();
    let all_started = wait_for(Duration::from_secs(10), || {
        requests
            .iter()
            .all(|(token, _)| fixture.out_file(&format!("{token}.started")).exists())
    });
    assert!(
        all_started,
        "not every script started\n{}",
        broker.diagnostics()
    );
    requests
}

#[test]
fn sigterm_lets_running_requests_finish() {
    let fixture = policy_fixture();
    let mut broker = Broker::start(&fixture, &[("shutdown_grace_ms", "5000")]);
    // A connection that a parser child serves, and that stays open across the signal.
    let mut idle = broker.connect();
    let info = idle.call("org.varlink.service.GetInfo", json!({}));
    assert!(parameters(&info)["interfaces"].is_array(), "reply: {info}");
    let requests = start_requests(&fixture, &broker, 1);

    let signalled = Instant::now();
    signal::kill(Pid::from_raw(broker.pid()), Signal::SIGTERM).unwrap();
    let socket_removed = wait_for(Duration::from_secs(2), || !fixture.socket_path().exists());
    let late_connect = UnixStream::connect(fixture.socket_path());
    let late_request = idle.run(
        "sleep-then-exit",
        json!({ "token": "after-sigterm", "seconds": 1 }),
    );
    let replies: Vec<(String, Value)> = requests
        .into_iter()
        .map(|(token, handle)| (token, handle.join().unwrap()))
        .collect();
    drop(idle);
    let status = broker.wait_for_exit(Duration::from_secs(10));
    let exit_time = signalled.elapsed();

    assert!(
        socket_removed,
        "the socket file still exists after SIGTERM\n{}",
        broker.diagnostics()
    );
    assert!(
        late_connect.is_err(),
        "a new client could connect after SIGTERM\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        error_name(&late_request),
        Some("org.securesocket.Broker.Busy"),
        "reply to a request sent after SIGTERM: {late_request}\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        parameters(&late_request)["rule"],
        json!("shutting_down"),
        "reply: {late_request}"
    );
    assert!(!fixture.out_file("after-sigterm.started").exists());
    for (token, reply) in &replies {
        assert_eq!(
            parameters(reply)["exit_code"],
            json!(7),
            "request {token} did not get its script's result: {reply}\n{}",
            broker.diagnostics()
        );
        assert_eq!(
            parameters(reply)["stdout"],
            json!(format!("{token} done\n")),
            "reply: {reply}"
        );
        assert_eq!(
            parameters(reply)["timed_out"],
            json!(false),
            "reply: {reply}"
        );
    }
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(0),
        "exit status {status:?}\n{}",
        broker.diagnostics()
    );
    // The scripts needed one more second, so the 5 s grace period was not used up.
    assert!(
        exit_time < Duration::from_secs(4),
        "the broker took {exit_time:?} to exit"
    );
}

#[test]
fn sigterm_kills_scripts_after_grace() {
    let fixture = policy_fixture();
    let mut broker = Broker::start(&fixture, &[("shutdown_grace_ms", "500")]);
    let requests = start_requests(&fixture, &broker, 30);

    let signalled = Instant::now();
    signal::kill(Pid::from_raw(broker.pid()), Signal::SIGTERM).unwrap();
    let replies: Vec<(String, Value)> = requests
        .into_iter()
        .map(|(token, handle)| (token, handle.join().unwrap()))
        .collect();
    let status = broker.wait_for_exit(Duration::from_secs(10));
    let exit_time = signalled.elapsed();

    for (token, reply) in &replies {
        assert_eq!(
            parameters(reply)["signal"],
            json!(libc::SIGKILL),
            "request {token} should report its script killed at the end of the grace \
             period: {reply}\n{}",
            broker.diagnostics()
        );
    }
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(0),
        "exit status {status:?}\n{}",
        broker.diagnostics()
    );
    assert!(
        exit_time < Duration::from_secs(4),
        "with a 500 ms grace period the broker took {exit_time:?} to exit"
    );
}
