//! Connection limits of a real broker: a client past max_connections waits in the listen
//! backlog until a slot frees, and a uid past max_connections_per_uid gets a typed Busy
//! error and a closed connection while other uids are still served.
//!
//! Run as root: `cargo test --release --test limits`.

mod common;

use std::io;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{
    Broker, Fixture, User, VarlinkConnection, WWW_DATA, error_name, parameters, run_client_as,
    wait_for,
};

const POLICY: &str = r#"
[command.hello]
description = "Print a greeting"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["root", "www-data"]
capture_output = true
"#;

/// How long a freed slot may take to serve a waiting client: the session that held it
/// ends when its parser child has exited, which the monitor waits up to 2 s for.
const SLOT_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

fn policy_fixture() -> Fixture {
    Fixture::with_commands(POLICY, &[("hello", "#!/bin/sh\necho hello\n")])
}

/// Sends GetInfo and returns the first frame the broker sends back. A broker that
/// refuses the connection may close it before the request is written, so a failed write
/// is ignored: the refusal is still there to read.
fn get_info(connection: &mut VarlinkConnection) -> Value {
    let _ = connection.send_bytes(b"{\"method\":\"org.varlink.service.GetInfo\"}\0");
    connection.receive()
}

fn is_get_info_reply(reply: &Value) -> bool {
    parameters(reply)["interfaces"].is_array()
}

fn is_uid_limit_busy(reply: &Value) -> bool {
    error_name(reply) == Some("org.securesocket.Broker.Busy")
        && parameters(reply)["rule"] == json!("max_connections_per_uid")
}

/// Opens a connection and checks that a parser child serves it. The connection that
/// `Broker::start` used to probe the socket occupies a slot of root until its session has
/// ended, so a per-uid Busy is retried for a short while.
fn connect_served(broker: &Broker) -> VarlinkConnection {
    let deadline = Instant::now() + SLOT_RELEASE_TIMEOUT;
    loop {
        let mut connection = broker.connect();
        let reply = get_info(&mut connection);
        if is_get_info_reply(&reply) {
            return connection;
        }
        assert!(
            is_uid_limit_busy(&reply) && Instant::now() < deadline,
            "a connection within the limits was not served: {reply}\n{}",
            broker.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a broker on `fixture` that serves 8 connections, at most 2 of them per uid.
fn start_with_uid_limit_two(fixture: &Fixture) -> Broker {
    Broker::start(
        fixture,
        &[
            ("max_connections", "8"),
            ("max_connections_per_uid", "2"),
            ("request_timeout_ms", "60000"),
        ],
    )
}

#[test]
fn client_past_max_connections_waits_in_backlog() {
    let fixture = policy_fixture();
    let broker = Broker::start(
        &fixture,
        &[
            ("max_connections", "2"),
            ("max_connections_per_uid", "2"),
            ("request_timeout_ms", "60000"),
        ],
    );
    let first = connect_served(&broker);
    let _second = connect_served(&broker);

    // connect() succeeds because the kernel queues the connection in the listen backlog;
    // the broker does not accept it while both slots are taken.
    let mut waiting = broker.connect();
    waiting
        .send_bytes(b"{\"method\":\"org.varlink.service.GetInfo\"}\0")
        .unwrap();
    waiting
        .stream()
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let early = waiting.receive_frame();
    drop(first);
    let freed = Instant::now();
    waiting
        .stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reply = waiting.receive();
    let waited = freed.elapsed();

    assert!(
        matches!(&early, Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
        "the third client got an answer while both slots were taken: {early:?}\n{}",
        broker.diagnostics()
    );
    assert!(
        is_get_info_reply(&reply),
        "the waiting client got {reply} instead of the GetInfo reply\n{}",
        broker.diagnostics()
    );
    assert!(
        waited < SLOT_RELEASE_TIMEOUT,
        "the waiting client was served {waited:?} after a slot was freed"
    );
    assert!(
        !fixture.log().contains("Busy"),
        "waiting in the backlog must not produce a Busy error\n{}",
        broker.diagnostics()
    );
}

#[test]
fn uid_over_its_limit_gets_busy() {
    let fixture = policy_fixture();
    let broker = start_with_uid_limit_two(&fixture);
    let first = connect_served(&broker);
    let _second = connect_served(&broker);

    let mut third = broker.connect();
    // The broker sends the error at once, before the client has sent anything.
    let reply = third.receive();
    let closed = third.is_closed_by_peer();
    let other_uid = run_client_as(&fixture, WWW_DATA, &["call", "hello"]);

    assert_eq!(
        error_name(&reply),
        Some("org.securesocket.Broker.Busy"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        parameters(&reply)["rule"],
        json!("max_connections_per_uid"),
        "reply: {reply}"
    );
    assert_eq!(
        parameters(&reply)["field"],
        json!("connections"),
        "reply: {reply}"
    );
    assert!(
        closed,
        "the connection stayed open after the Busy error\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        other_uid.code(),
        Some(0),
        "www-data was not served while root was at its limit\n{}\n{}",
        other_uid.describe(),
        broker.diagnostics()
    );
    assert_eq!(other_uid.stdout, "hello\n", "{}", other_uid.describe());
    assert!(
        fixture
            .log()
            .lines()
            .any(|line| line.contains("max_connections_per_uid") && line.contains("peer_uid=0")),
        "the log does not record the refused connection of uid 0\n{}",
        broker.diagnostics()
    );

    // Closing one connection gives the slot back to root.
    drop(first);
    let served_again = wait_for(SLOT_RELEASE_TIMEOUT, || {
        is_get_info_reply(&get_info(&mut broker.connect()))
    });
    assert!(
        served_again,
        "root was not served again after closing one of its connections\n{}",
        broker.diagnostics()
    );
}

#[test]
fn cli_over_uid_limit_reports_busy() {
    // The broker replies Busy and closes without reading the request, so the client's
    // send can fail while the reply is already waiting. The client must still report it.
    const ROOT: User = User {
        name: "root",
        uid: 0,
        gid: 0,
    };
    let fixture = policy_fixture();
    let broker = start_with_uid_limit_two(&fixture);
    let _first = connect_served(&broker);
    let _second = connect_served(&broker);

    let output = run_client_as(&fixture, ROOT, &["call", "hello"]);

    assert_eq!(output.code(), Some(65), "{}", output.describe());
    assert!(
        output.stderr.contains("org.securesocket.Broker.Busy"),
        "{}",
        output.describe()
    );
}

#[test]
fn uid_limit_defaults_to_half() {
    let fixture = policy_fixture();
    let broker = Broker::start(
        &fixture,
        &[("max_connections", "4"), ("request_timeout_ms", "60000")],
    );
    let _first = connect_served(&broker);
    let _second = connect_served(&broker);

    let reply = broker.connect().receive();

    assert!(
        is_uid_limit_busy(&reply),
        "with max_connections=4 the third connection of one uid should get Busy, got \
         {reply}\n{}",
        broker.diagnostics()
    );
}
