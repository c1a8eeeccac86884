//! The audit queue under pressure: a burst of requests that parser children reply to
//! without the monitor fills the queue, children drop and count the events that do not fit,
//! and the log reports the counts. No request waits for the queue or loses its reply.
//!
//! Each parser child sends one sandbox status event after its assignment and one event per
//! request. A dropped event is counted in the child and reported with its next event that
//! reaches the queue, or with the Bye message at the end of the session. So the events the
//! log shows plus the drops it reports must add up to exactly the events sent.
//!
//! Run as root: `cargo test --release -- --test-threads=2`.

mod common;

use std::io;
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, unshare};
use serde_json::{Value, json};

use common::{Broker, Fixture, VarlinkConnection, error_name, parameters};

/// Clients sending at once, every one as root. Well below max_connections_per_uid: a
/// client reconnects as soon as it has its replies, while the monitor may still hold the
/// slot of its previous connection until that session has ended.
const CLIENTS: usize = 16;
/// Connections each client opens, one after another.
const CONNECTIONS_PER_CLIENT: usize = 5;
/// Requests on each connection, all written before the first reply is read. Below
/// max_requests_per_connection (100), which would add a protocol event.
const REQUESTS_PER_CONNECTION: usize = 60;

/// How long the logger gets to take the last events off the queue after the burst.
const LOG_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

const POLICY: &str = r#"
[command.unused]
description = "Present so that the policy is not empty; the burst never runs a script"
script = "@FIXTURE@/scripts/unused"
run_as = "daemon"
allow_users = ["root"]
"#;

const GET_INFO: &str = "org.varlink.service.GetInfo";
const DESCRIBE: &str = "org.securesocket.Broker.Describe";
const UNKNOWN_COMMAND: &str = "org.securesocket.Broker.UnknownCommand";

/// Starts a broker in a new IPC namespace. A new namespace has the kernel's default
/// fs.mqueue.msg_max of 10, so the audit queue has room for 10 events whatever the host's
/// sysctl is set to, and other brokers' queues are out of reach.
fn start_broker(fixture: &Fixture) -> Broker {
    let params = [
        ("log_format", "json"),
        ("max_connections", "128"),
        ("max_connections_per_uid", "128"),
        ("pool_size", "4"),
    ];
    Broker::start_with_command(fixture, &params, &[], |command| {
        // SAFETY: the closure runs in the forked child before exec and makes one system
        // call, unshare(2), which takes no lock and allocates nothing.
        unsafe {
            command.pre_exec(|| unshare(CloneFlags::CLONE_NEWIPC).map_err(io::Error::from));
        }
    })
}

/// Request `index` of a connection: GetInfo and Describe of an unknown command in turn,
/// so that events of both priorities (info for replies, warn for rejections) compete for
/// the queue. The parser child replies to both without asking the monitor.
fn request(index: usize) -> Value {
    if index.is_multiple_of(2) {
        json!({ "method": GET_INFO })
    } else {
        json!({ "method": DESCRIBE, "parameters": { "command": "no-such-command" } })
    }
}

/// Checks the reply to request `index` and returns what is wrong with it, if anything.
fn reply_problem(index: usize, reply: &Value) -> Option<String> {
    let correct = if index.is_multiple_of(2) {
        error_name(reply).is_none() && parameters(reply)["vendor"] == json!("secure_socket")
    } else {
        error_name(reply) == Some(UNKNOWN_COMMAND)
    };
    (!correct).then(|| format!("request {index} got {reply}"))
}

/// Opens one connection, writes all its requests in one go, then reads every reply.
fn send_burst(broker_socket: &std::path::Path) -> Vec<String> {
    let mut connection = VarlinkConnection::connect(broker_socket);
    let mut bytes = Vec::new();
    for index in 0..REQUESTS_PER_CONNECTION {
        bytes.extend_from_slice(request(index).to_string().as_bytes());
        bytes.push(0);
    }
    connection.send_bytes(&bytes).unwrap();
    (0..REQUESTS_PER_CONNECTION)
        .filter_map(|index| reply_problem(index, &connection.receive()))
        .collect()
}

/// Counts of the log records that account for audit events.
#[derive(Debug, Default, PartialEq, Eq)]
struct EventCounts {
    /// Request events the logger received from children ("request", "request rejected").
    requests: u64,
    /// Sandbox status events the logger received from children.
    sandbox: u64,
    /// Sum of the `dropped` fields of "audit events dropped because the queue was full".
    dropped: u64,
    /// Records of drops, whether reported by the logger or at a child's Bye.
    drop_records: u64,
    /// Audit events the logger could not attribute or decode.
    unattributed: u64,
}

impl EventCounts {
    fn accounted(&self) -> u64 {
        self.requests + self.sandbox + self.dropped
    }

    /// Returns the counts added since `earlier`.
    fn since(&self, earlier: &EventCounts) -> EventCounts {
        EventCounts {
            requests: self.requests - earlier.requests,
            sandbox: self.sandbox - earlier.sandbox,
            dropped: self.dropped - earlier.dropped,
            drop_records: self.drop_records - earlier.drop_records,
            unattributed: self.unattributed - earlier.unattributed,
        }
    }
}

fn count_events(log: &str) -> EventCounts {
    let mut counts = EventCounts::default();
    for record in log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
    {
        match record["message"].as_str().unwrap_or_default() {
            "request" | "request rejected" => counts.requests += 1,
            "parser child sandbox status" => counts.sandbox += 1,
            "audit events dropped because the queue was full" => {
                assert_eq!(
                    record["peer_uid"],
                    json!(0),
                    "drop record not attributed to the root peer: {record}"
                );
                counts.drop_records += 1;
                counts.dropped += record["dropped"].as_u64().unwrap_or_else(|| {
                    panic!("drop record without a numeric dropped field: {record}")
                });
            }
            "audit event from an unknown session, identity not verified"
            | "malformed audit event discarded" => counts.unattributed += 1,
            _ => {}
        }
    }
    counts
}

#[test]
fn full_queue_drops_are_counted_and_requests_unaffected() {
    let fixture = Fixture::new();
    fixture.write_policy("unused", POLICY);
    fixture.write_script("unused", "#!/bin/sh\nexit 0\n");
    let broker = start_broker(&fixture);
    let socket = broker.socket_path().to_path_buf();
    // The harness's readiness check was a connection too, and its parser child sent a
    // sandbox status event. Count from after that event.
    let mut before = EventCounts::default();
    let probe_logged = common::wait_for(LOG_SETTLE_TIMEOUT, || {
        before = count_events(&fixture.log());
        before.accounted() >= 1
    });
    assert!(
        probe_logged,
        "the readiness check's session left no event\n{}",
        broker.diagnostics()
    );

    let started = Instant::now();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let socket = socket.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                (0..CONNECTIONS_PER_CLIENT)
                    .flat_map(|_| send_burst(&socket))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let problems: Vec<String> = clients
        .into_iter()
        .flat_map(|client| client.join().unwrap())
        .collect();
    let burst = started.elapsed();

    let sessions = (CLIENTS * CONNECTIONS_PER_CLIENT) as u64;
    let requests = sessions * REQUESTS_PER_CONNECTION as u64;
    // One sandbox status event per session, then one event per request.
    let events_sent = sessions + requests;
    let mut counts = EventCounts::default();
    common::wait_for(LOG_SETTLE_TIMEOUT, || {
        counts = count_events(&fixture.log()).since(&before);
        counts.accounted() >= events_sent
    });
    println!(
        "queue pressure: {requests} requests on {sessions} connections in {burst:?}; \
         {events_sent} events sent, {} logged ({} request, {} sandbox), {} dropped in {} \
         drop records",
        counts.requests + counts.sandbox,
        counts.requests,
        counts.sandbox,
        counts.dropped,
        counts.drop_records,
    );

    assert!(
        problems.is_empty(),
        "{} of {requests} requests got a wrong reply, first: {}\n{}",
        problems.len(),
        problems[0],
        broker.diagnostics()
    );
    assert!(
        counts.dropped > 0,
        "the burst filled no queue, so this test checked nothing: {counts:?}"
    );
    assert_eq!(
        counts.unattributed, 0,
        "events were logged without their identity: {counts:?}"
    );
    assert!(
        counts.sandbox <= sessions,
        "more sandbox events than sessions: {counts:?}"
    );
    assert!(
        counts.requests <= requests,
        "more request events than requests: {counts:?}"
    );
    assert_eq!(
        counts.accounted(),
        events_sent,
        "logged events plus reported drops ({counts:?}) differ from the {events_sent} \
         events sent ({sessions} sandbox, {requests} request)"
    );
}
