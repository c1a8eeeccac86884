//! Clients that stall a real broker: one that connects and sends nothing, one that sends a
//! request one byte per second, one that never reads its replies. Each is cut off by
//! request_timeout_ms, and a normal client is served promptly while they are stuck.
//!
//! Run as root: `cargo test --release --test slow_clients`.

mod common;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{
    Broker, Fixture, VarlinkConnection, WWW_DATA, error_name, parameters, process_is_alive,
    run_client_as, serving_child_pid, wait_for,
};

const POLICY: &str = r#"
[command.hello]
description = "Print a greeting"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["root", "www-data"]
capture_output = true

[command.flood]
description = "Print 64 KiB on stdout and on stderr, and count its runs"
script = "@FIXTURE@/scripts/flood"
run_as = "root"
allow_users = ["root"]
capture_output = true
output_limit = 65536
"#;

const SCRIPTS: &[(&str, &str)] = &[
    ("hello", "#!/bin/sh\necho hello\n"),
    (
        "flood",
        "#!/bin/sh\necho run >> @FIXTURE@/out/flood.runs\n\
         head -c 65536 /dev/zero | tr '\\0' x\n\
         head -c 65536 /dev/zero | tr '\\0' y >&2\n",
    ),
];

/// Time allowed past a deadline for the child to notice it and the reply to arrive.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1500);

/// Time a normal request may take while other clients are stuck. An unloaded broker
/// replies within a few milliseconds, and the bound leaves room for a busy test machine.
const PROMPT_REPLY: Duration = Duration::from_secs(1);

fn policy_fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.write_policy("commands", POLICY);
    for (name, text) in SCRIPTS {
        fixture.write_script(name, text);
    }
    fixture
}

/// Checks that `reply` is the TimedOut error of a request frame that did not arrive
/// within request_timeout_ms.
fn assert_frame_timed_out(reply: &Value, broker: &Broker) {
    assert_eq!(
        error_name(reply),
        Some("org.securesocket.Broker.TimedOut"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(parameters(reply)["field"], json!("frame"), "reply: {reply}");
    assert_eq!(
        parameters(reply)["rule"],
        json!("request_timeout_ms"),
        "reply: {reply}"
    );
}

#[test]
fn silent_client_times_out_then_closed() {
    let fixture = policy_fixture();
    let broker = Broker::start(&fixture, &[("request_timeout_ms", "500")]);
    let timeout = Duration::from_millis(500);

    let started = Instant::now();
    let mut connection = broker.connect();
    let reply = connection.receive();
    let elapsed = started.elapsed();
    let closed = connection.is_closed_by_peer();

    assert_frame_timed_out(&reply, &broker);
    assert!(
        elapsed >= timeout,
        "the broker gave up after {elapsed:?}, before request_timeout_ms"
    );
    assert!(
        elapsed < timeout + DEADLINE_MARGIN,
        "the TimedOut error came {elapsed:?} after connecting"
    );
    assert!(
        closed,
        "the connection stayed open after TimedOut\n{}",
        broker.diagnostics()
    );
}

#[test]
fn byte_per_second_client_cut_at_deadline() {
    let fixture = policy_fixture();
    // Longer than the gap between two bytes, so an idle timer reset by each byte would
    // never fire: only a deadline for the whole frame stops this client.
    let timeout = Duration::from_millis(1500);
    let broker = Broker::start(&fixture, &[("request_timeout_ms", "1500")]);
    let request = b"{\"method\":\"org.varlink.service.GetInfo\"}\0";
    let mut stream = UnixStream::connect(broker.socket_path()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();

    let started = Instant::now();
    let mut received = Vec::new();
    let mut sent = 0;
    let mut buffer = [0u8; 4096];
    while !received.contains(&0) && started.elapsed() < Duration::from_secs(20) {
        if sent < request.len() {
            // The broker may already have closed the connection.
            if stream.write_all(&request[sent..=sent]).is_ok() {
                sent += 1;
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => received.extend_from_slice(&buffer[..count]),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(error) => panic!("failed to read from the broker: {error}"),
        }
    }
    let elapsed = started.elapsed();
    let frame_end = received.iter().position(|&byte| byte == 0);
    let reply: Value = match frame_end {
        Some(end) => serde_json::from_slice(&received[..end]).unwrap(),
        None => panic!(
            "no reply after {elapsed:?} and {sent} bytes sent\n{}",
            broker.diagnostics()
        ),
    };
    let mut connection = VarlinkConnection::from_stream(stream);

    assert_frame_timed_out(&reply, &broker);
    assert!(
        sent < request.len(),
        "the whole request went through ({sent} bytes) before the deadline"
    );
    assert!(
        elapsed < timeout + DEADLINE_MARGIN,
        "the slow client was cut off only after {elapsed:?}"
    );
    assert!(
        connection.is_closed_by_peer(),
        "the connection stayed open after TimedOut\n{}",
        broker.diagnostics()
    );
}

#[test]
fn client_that_never_reads_loses_session() {
    let fixture = policy_fixture();
    let timeout = Duration::from_millis(500);
    let broker = Broker::start(&fixture, &[("request_timeout_ms", "500")]);
    let requests = 8;
    let mut pipelined = Vec::new();
    for _ in 0..requests {
        pipelined.extend_from_slice(
            b"{\"method\":\"org.securesocket.Broker.Run\",\"parameters\":{\"command\":\"flood\"}}\0",
        );
    }
    let mut connection = broker.connect();

    // Each reply carries 128 KiB of output. Nothing is read, so the socket buffer fills
    // and a reply write blocks until the child gives up at the write deadline.
    connection.send_bytes(&pipelined).unwrap();
    let child = serving_child_pid(&broker, connection.stream());
    let sent = Instant::now();
    let child_exited = wait_for(Duration::from_secs(20), || !process_is_alive(child));
    let session_time = sent.elapsed();
    let runs = std::fs::read_to_string(fixture.out_file("flood.runs"))
        .unwrap_or_default()
        .lines()
        .count();
    let closed = connection.is_closed_by_peer();

    assert!(
        child_exited,
        "parser child {child} still serves a client that reads nothing\n{}",
        broker.diagnostics()
    );
    assert!(
        runs < requests,
        "all {requests} pipelined requests ran although their replies were never read"
    );
    // Each run takes a few milliseconds, and only the reply write that finds the socket
    // buffer full waits for the deadline.
    assert!(
        session_time < timeout * 2 + DEADLINE_MARGIN,
        "the child held the session for {session_time:?}"
    );
    assert!(
        closed,
        "the connection did not end\n{}",
        broker.diagnostics()
    );
    assert!(
        fixture.log().contains("write_failed"),
        "the log does not record the failed reply write\n{}",
        broker.diagnostics()
    );
}

#[test]
fn stuck_clients_do_not_delay_others() {
    let fixture = policy_fixture();
    let timeout = Duration::from_secs(3);
    let broker = Broker::start(
        &fixture,
        &[
            ("request_timeout_ms", "3000"),
            ("max_connections", "64"),
            ("max_connections_per_uid", "32"),
        ],
    );
    let stuck_started = Instant::now();
    // Silent clients, and clients that stop halfway through a frame.
    let mut stuck: Vec<VarlinkConnection> = (0..16).map(|_| broker.connect()).collect();
    for connection in stuck.iter_mut().skip(8) {
        connection.send_bytes(b"{\"method\":\"org.var").unwrap();
    }
    // Once this loop returns, a parser child serves every stuck client.
    for connection in &stuck {
        serving_child_pid(&broker, connection.stream());
    }

    let raw_started = Instant::now();
    let raw_reply = broker.connect().run("hello", json!({}));
    let raw_elapsed = raw_started.elapsed();
    let cli_started = Instant::now();
    let cli = run_client_as(&fixture, WWW_DATA, &["call", "hello"]);
    let cli_elapsed = cli_started.elapsed();
    let still_stuck = stuck_started.elapsed() < timeout;

    assert_eq!(
        parameters(&raw_reply)["stdout"],
        json!("hello\n"),
        "reply: {raw_reply}\n{}",
        broker.diagnostics()
    );
    assert!(
        raw_elapsed < PROMPT_REPLY,
        "a root request took {raw_elapsed:?} while 16 clients were stuck"
    );
    assert_eq!(cli.code(), Some(0), "{}", cli.describe());
    // The command line client also starts a process, so it gets twice the bound.
    assert!(
        cli_elapsed < PROMPT_REPLY * 2,
        "a www-data request took {cli_elapsed:?} while 16 clients were stuck"
    );
    assert!(
        still_stuck,
        "the stuck clients timed out before the normal requests were measured"
    );

    // Each stuck client is then cut off at its deadline and frees its parser child.
    for connection in &mut stuck {
        let reply = connection.receive();
        assert_frame_timed_out(&reply, &broker);
        assert!(connection.is_closed_by_peer(), "{}", broker.diagnostics());
    }
    assert!(
        stuck_started.elapsed() < timeout + DEADLINE_MARGIN * 2,
        "the stuck clients were cut off only after {:?}",
        stuck_started.elapsed()
    );
}
