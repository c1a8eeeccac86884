//! Load test of a real broker: 200 concurrent clients in this process (uid 0) and a few
//! command line clients as www-data, each sending many Run requests over one persistent
//! connection and over fresh connections. The script appends the request's token to a
//! file, so the test can check that every accepted run happened exactly once and that
//! nothing ran that no client asked for.
//!
//! Ignored by default, because it takes tens of seconds. .ci/run runs it on its own:
//! `cargo test --release --test load -- --ignored --test-threads=1 --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::net::Shutdown;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{
    Broker, CLIENT_TIMEOUT, Fixture, VarlinkConnection, WWW_DATA, command_as, error_name,
    parameters, spawn,
};

/// Clients running as threads of this process, all at once.
const THREAD_CLIENTS: usize = 200;
/// Requests each thread client sends over its one persistent connection.
const PERSISTENT_REQUESTS: usize = 20;
/// Connections each thread client then opens for one request each.
const FRESH_CONNECTIONS: usize = 5;
/// Command line clients running as www-data, each calling in a loop.
const WWW_DATA_CLIENTS: usize = 4;
/// Calls each www-data client makes, one process and one connection per call.
const WWW_DATA_CALLS: usize = 10;
/// Upper bound on the whole run. A 2-core machine needs about a tenth of it.
const RUN_TIME_LIMIT: Duration = Duration::from_secs(150);

/// The script runs as root and appends its token. dash's printf writes the short line
/// with one write(2) in O_APPEND mode, so concurrent runs do not interleave inside a line.
const POLICY: &str = r#"
[command.append]
description = "Append the token to a file and print it"
script = "@FIXTURE@/scripts/append"
run_as = "root"
allow_users = ["root", "www-data"]
argv = ["{token}"]
capture_output = true
max_concurrent = 32

[command.append.arguments.token]
type = "string"
pattern = "[a-z0-9-]+"
max_length = 32
"#;

const SCRIPT: &str =
    "#!/bin/sh\nprintf '%s\\n' \"$1\" >> @FIXTURE@/out/runs\nprintf '%s\\n' \"$1\"\n";

/// How one request ended.
enum Outcome {
    /// The script ran and the reply carried this request's token.
    Ran,
    /// Busy, because all max_concurrent slots stayed taken for 2 s. The script did not run.
    Busy,
    /// Anything else: a wrong or missing reply, another error, an extra frame.
    Failed(String),
}

/// Tokens by outcome, from one client or all of them.
#[derive(Default)]
struct Tally {
    ran: Vec<String>,
    busy: Vec<String>,
    failed: Vec<String>,
    connections: usize,
}

impl Tally {
    fn record(&mut self, token: String, outcome: Outcome) {
        match outcome {
            Outcome::Ran => self.ran.push(token),
            Outcome::Busy => self.busy.push(token),
            Outcome::Failed(reason) => self.failed.push(format!("{token}: {reason}")),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ran.extend(other.ran);
        self.busy.extend(other.busy);
        self.failed.extend(other.failed);
        self.connections += other.connections;
    }

    fn requests(&self) -> usize {
        self.ran.len() + self.busy.len() + self.failed.len()
    }
}

/// Classifies the reply to the Run of `token`.
fn classify(token: &str, reply: &Value) -> Outcome {
    match error_name(reply) {
        None if parameters(reply)["exit_code"] == json!(0)
            && parameters(reply)["stdout"] == json!(format!("{token}\n")) =>
        {
            Outcome::Ran
        }
        Some("org.securesocket.Broker.Busy")
            if parameters(reply)["rule"] == json!("max_concurrent") =>
        {
            Outcome::Busy
        }
        _ => Outcome::Failed(format!("unexpected reply {reply}")),
    }
}

/// Sends the Run of `token` and reads one frame.
fn run_once(connection: &mut VarlinkConnection, token: &str) -> Outcome {
    let mut request = serde_json::to_vec(&json!({
        "method": "org.securesocket.Broker.Run",
        "parameters": { "command": "append", "arguments": { "token": token } },
    }))
    .unwrap();
    request.push(0);
    if let Err(error) = connection.send_bytes(&request) {
        return Outcome::Failed(format!("failed to send: {error}"));
    }
    match connection.receive_frame() {
        Ok(Some(frame)) => match serde_json::from_slice::<Value>(&frame) {
            Ok(reply) => classify(token, &reply),
            Err(error) => Outcome::Failed(format!("reply is not JSON: {error}")),
        },
        Ok(None) => Outcome::Failed("connection closed without a reply".to_string()),
        Err(error) => Outcome::Failed(format!("failed to read the reply: {error}")),
    }
}

/// Closes the sending side and checks that the broker sends nothing more before it
/// closes the connection: every request got exactly one reply.
fn check_no_extra_reply(connection: &mut VarlinkConnection) -> Option<String> {
    let stream = connection.stream();
    if let Err(error) = stream.shutdown(Shutdown::Write) {
        return Some(format!("failed to shut down the connection: {error}"));
    }
    let mut rest = Vec::new();
    let mut reader = stream;
    match reader.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => None,
        Ok(_) => Some(format!(
            "{} bytes after the last reply: {:?}",
            rest.len(),
            String::from_utf8_lossy(&rest)
        )),
        Err(error) => Some(format!("failed to read to the end: {error}")),
    }
}

/// Runs one thread client: requests over a persistent connection, then over fresh ones.
fn thread_client(socket: &Path, client: usize, start: &Barrier) -> Tally {
    let mut tally = Tally::default();
    start.wait();

    let mut persistent = VarlinkConnection::connect(socket);
    tally.connections += 1;
    for request in 0..PERSISTENT_REQUESTS {
        let token = format!("c{client:03}-p{request:02}");
        let outcome = run_once(&mut persistent, &token);
        tally.record(token, outcome);
    }
    if let Some(problem) = check_no_extra_reply(&mut persistent) {
        tally
            .failed
            .push(format!("client {client} persistent: {problem}"));
    }

    for request in 0..FRESH_CONNECTIONS {
        let token = format!("c{client:03}-f{request:02}");
        let mut connection = VarlinkConnection::connect(socket);
        tally.connections += 1;
        let outcome = run_once(&mut connection, &token);
        tally.record(token.clone(), outcome);
        if let Some(problem) = check_no_extra_reply(&mut connection) {
            tally.failed.push(format!("{token}: {problem}"));
        }
    }
    tally
}

/// Runs one www-data client, which calls through the command line client `binary` with
/// one process and one connection per call.
fn www_data_client(binary: &Path, socket: &Path, client: usize) -> Tally {
    let mut tally = Tally::default();
    let socket = socket.to_string_lossy();
    for call in 0..WWW_DATA_CALLS {
        let token = format!("w{client}-{call:02}");
        let argument = format!("token={token}");
        let arguments = ["call", "--socket", &socket, "append", &argument];
        let output = spawn(command_as(WWW_DATA, binary, &arguments, &[])).finish(CLIENT_TIMEOUT);
        tally.connections += 1;
        let outcome = match output.code() {
            Some(0) if output.stdout == format!("{token}\n") => Outcome::Ran,
            Some(65) if output.stderr.contains("org.securesocket.Broker.Busy") => Outcome::Busy,
            _ => Outcome::Failed(output.describe()),
        };
        tally.record(token, outcome);
    }
    tally
}

#[test]
#[ignore = "load test; .ci/run runs it explicitly"]
fn load_every_accepted_run_once() {
    let fixture = Fixture::new();
    fixture.write_policy("commands", POLICY);
    fixture.write_script("append", SCRIPT);
    // max_connections 256: the 200 thread clients hold one connection each at a time, the
    // www-data clients 4 more and Broker::start's probe one. The rest is margin, so no
    // client waits in the listen backlog. max_connections_per_uid 256: all thread clients
    // are uid 0, so the default of half max_connections would refuse 72 of them with
    // Busy. pool_size 32 keeps parser child start-up off most connections of a burst.
    let broker = Broker::start(
        &fixture,
        &[
            ("max_connections", "256"),
            ("max_connections_per_uid", "256"),
            ("pool_size", "32"),
            ("verbosity", "info"),
        ],
    );
    let socket = broker.socket_path().to_path_buf();
    let binary = fixture.client_binary().to_path_buf();
    let start = Arc::new(Barrier::new(THREAD_CLIENTS + 1));

    let threads: Vec<_> = (0..THREAD_CLIENTS)
        .map(|client| {
            let socket = socket.clone();
            let start = start.clone();
            thread::Builder::new()
                .name(format!("client-{client}"))
                .spawn(move || thread_client(&socket, client, &start))
                .unwrap()
        })
        .collect();
    start.wait();
    let started = Instant::now();
    let mut tally = Tally::default();
    thread::scope(|scope| {
        let (binary, socket) = (&binary, &socket);
        let www_data: Vec<_> = (0..WWW_DATA_CLIENTS)
            .map(|client| scope.spawn(move || www_data_client(binary, socket, client)))
            .collect();
        for handle in www_data {
            tally.merge(handle.join().unwrap());
        }
    });
    for handle in threads {
        tally.merge(handle.join().unwrap());
    }
    let duration = started.elapsed();

    let lines = fs::read_to_string(fixture.out_file("runs")).unwrap_or_default();
    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for line in lines.lines() {
        *runs.entry(line).or_insert(0) += 1;
    }
    let ran: BTreeSet<&str> = tally.ran.iter().map(String::as_str).collect();
    let log = fixture.log();
    let logged_runs = log
        .lines()
        .filter(|line| line.contains("request ran") && line.contains("command=\"append\""))
        .count();

    println!(
        "load: {} requests ({} ran, {} busy, {} failed) over {} connections from {} \
         concurrent clients ({THREAD_CLIENTS} threads as root, {WWW_DATA_CLIENTS} command \
         line clients as www-data) in {:.1} s, {:.0} requests/s",
        tally.requests(),
        tally.ran.len(),
        tally.busy.len(),
        tally.failed.len(),
        tally.connections,
        THREAD_CLIENTS + WWW_DATA_CLIENTS,
        duration.as_secs_f64(),
        tally.requests() as f64 / duration.as_secs_f64(),
    );

    assert!(
        tally.failed.is_empty(),
        "{} requests failed, first ones: {:#?}\n{}",
        tally.failed.len(),
        &tally.failed[..tally.failed.len().min(10)],
        broker.diagnostics()
    );
    assert_eq!(
        tally.requests(),
        THREAD_CLIENTS * (PERSISTENT_REQUESTS + FRESH_CONNECTIONS)
            + WWW_DATA_CLIENTS * WWW_DATA_CALLS,
        "not every request was counted"
    );
    assert_eq!(ran.len(), tally.ran.len(), "a token was accepted twice");
    for token in &ran {
        assert_eq!(
            runs.get(token).copied(),
            Some(1),
            "accepted request {token} did not run exactly once"
        );
    }
    for token in &tally.busy {
        assert!(
            !runs.contains_key(token.as_str()),
            "request {token} got Busy but its script ran"
        );
    }
    let unrequested: Vec<&&str> = runs.keys().filter(|token| !ran.contains(**token)).collect();
    assert!(
        unrequested.is_empty(),
        "runs that no accepted request asked for: {unrequested:?}"
    );
    assert_eq!(
        logged_runs,
        tally.ran.len(),
        "the log should hold one \"request ran\" line per accepted request"
    );
    assert!(
        duration < RUN_TIME_LIMIT,
        "the load run took {duration:?}, more than {RUN_TIME_LIMIT:?}"
    );
}
