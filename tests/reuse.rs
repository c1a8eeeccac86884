//! Reuse of parser children. A child that served a connection serves later connections
//! of the same peer identity (uid, gid, supplementary groups, executable) and no other,
//! within max_connections_per_child and cached_child_idle_ms. A reload, a shutdown or a
//! kill ends it. Each test reads the broker's JSON log, where every connection has one
//! "connection assigned to parser child" record with the child's pid and whether it was
//! fresh or reused.
//!
//! Run as root: `cargo test --release --test reuse`.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};

use common::{
    Broker, CLIENT_TIMEOUT, DAEMON, Fixture, ProcessOutput, RunningProcess, User, WWW_DATA,
    command_as, idle_parser_children, process_is_alive, spawn, wait_for,
};

const POLICY: &str = r#"
[command.greet]
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["www-data", "daemon", "root"]
argv = ["{name}"]
env = { GREETING_TOKEN = "{token}" }
capture_output = true

[command.greet.arguments.name]
type = "string"
pattern = "[a-z]+"

[command.greet.arguments.token]
type = "string"
sensitive = true

[command.slow]
script = "@FIXTURE@/scripts/slow"
run_as = "nobody"
allow_users = ["www-data"]
"#;

/// The broker's default pool_size, which these tests keep.
const POOL_SIZE: usize = 4;

/// Time the broker gets to log an event or to end a child.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

const ASSIGNED: &str = "connection assigned to parser child";
const CACHED: &str = "parser child cached for the next connection of this peer identity";

fn start(params: &[(&str, &str)]) -> (Fixture, Broker) {
    let fixture = Fixture::new();
    fixture.write_policy("greet", POLICY);
    fixture.write_script("greet", "#!/bin/sh\necho \"hello $1\"\n");
    fixture.write_script(
        "slow",
        "#!/bin/sh\ntouch @FIXTURE@/out/slow.started\nsleep 2\n",
    );
    let mut all = vec![("log_format", "json")];
    all.extend_from_slice(params);
    let broker = Broker::start(&fixture, &all);
    // A child that a session's own thread starts, because the pool is empty, is never
    // cached. So the tests start once the refill thread has filled the pool.
    assert!(
        wait_for(LOG_TIMEOUT, || idle_parser_children(&broker).len()
            >= POOL_SIZE),
        "the pool never filled\n{}",
        broker.diagnostics()
    );
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

/// Returns the assignment records of connections from `uid`, oldest first.
fn assignments_of(fixture: &Fixture, uid: u32) -> Vec<Value> {
    records(fixture, ASSIGNED)
        .into_iter()
        .filter(|record| record["peer_uid"] == json!(uid))
        .collect()
}

/// Returns the pid of the child of an assignment record.
fn child_pid(record: &Value) -> i32 {
    record["child_pid"].as_i64().unwrap() as i32
}

/// Runs `greet` through `program` (the client command line) as `user`, checks that it
/// succeeded, and waits until the broker has dealt with the child it used.
fn greet(fixture: &Fixture, user: User, program: &Path) -> ProcessOutput {
    let output = run_client(
        fixture,
        user,
        program,
        &[
            "call",
            "--json",
            "greet",
            "name=reuse",
            "token=hunter-two-secret",
        ],
    );
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    output
}

/// Runs the client command line `program SUBCOMMAND --socket PATH REST...` as `user`,
/// where `args` is `[SUBCOMMAND, REST...]`, and waits until the broker has dealt with
/// the child it used: cached it, or made it exit.
fn run_client(fixture: &Fixture, user: User, program: &Path, args: &[&str]) -> ProcessOutput {
    let released_before = released(fixture);
    let socket = fixture.socket_path();
    let socket = socket.to_string_lossy();
    let mut full_args = vec![args[0], "--socket", &socket];
    full_args.extend_from_slice(&args[1..]);
    let output = spawn(command_as(user, program, &full_args, &[])).finish(CLIENT_TIMEOUT);
    let settled = wait_for(LOG_TIMEOUT, || released(fixture) > released_before);
    assert!(
        settled,
        "the broker never released the child\n{}",
        fixture.log()
    );
    output
}

/// Counts the log records of children that the broker cached or made exit after a
/// connection.
fn released(fixture: &Fixture) -> usize {
    [
        CACHED,
        "parser child not cached",
        "parser child exited",
        "parser child killed by a signal; its connection is closed",
    ]
    .iter()
    .map(|message| records(fixture, message).len())
    .sum()
}

/// Checks that no child pid served two identities. Pids may be reused by the kernel,
/// but not within one of these short tests.
fn assert_one_identity_per_child(fixture: &Fixture) {
    let mut identities: HashMap<i32, (Value, Value, Value)> = HashMap::new();
    for record in records(fixture, ASSIGNED) {
        let identity = (
            record["peer_uid"].clone(),
            record["peer_gid"].clone(),
            record["peer_exe"].clone(),
        );
        let first = identities
            .entry(child_pid(&record))
            .or_insert(identity.clone());
        assert_eq!(
            *first,
            identity,
            "child {} served two identities\n{}",
            child_pid(&record),
            fixture.log()
        );
    }
}

/// Starts a `slow` call as www-data and returns the client process and the pid of the
/// child serving it, once the script runs.
fn start_slow_call(fixture: &Fixture) -> (RunningProcess, i32) {
    let socket = fixture.socket_path();
    let socket = socket.to_string_lossy();
    let args = ["call", "--socket", &socket, "slow"];
    let running = spawn(command_as(WWW_DATA, fixture.client_binary(), &args, &[]));
    assert!(
        wait_for(LOG_TIMEOUT, || fixture.out_file("slow.started").exists()),
        "{}",
        fixture.log()
    );
    let serving = child_pid(&assignments_of(fixture, WWW_DATA.uid)[0]);
    (running, serving)
}

/// Copies the client binary to a second path, so that the same user runs a different
/// executable.
fn second_client_binary(fixture: &Fixture) -> PathBuf {
    let target = fixture.path().join("bin").join("secure_socket-second");
    fs::copy(fixture.client_binary(), &target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    target
}

#[test]
fn same_identity_reuses_child() {
    let (fixture, _broker) = start(&[]);
    let client = fixture.client_binary().to_path_buf();
    greet(&fixture, WWW_DATA, &client);
    greet(&fixture, WWW_DATA, &client);

    let assigned = assignments_of(&fixture, WWW_DATA.uid);
    assert_eq!(assigned.len(), 2, "{}", fixture.log());
    assert_eq!(assigned[0]["child"], json!("fresh"));
    assert_eq!(assigned[1]["child"], json!("reused"));
    assert_eq!(child_pid(&assigned[0]), child_pid(&assigned[1]));
    assert_eq!(assigned[1]["child_connection"], json!(2));
    assert_one_identity_per_child(&fixture);
}

#[test]
fn other_uid_never_gets_cached_child() {
    let (fixture, _broker) = start(&[]);
    let client = fixture.client_binary().to_path_buf();
    greet(&fixture, WWW_DATA, &client);
    greet(&fixture, DAEMON, &client);
    greet(&fixture, DAEMON, &client);
    greet(&fixture, WWW_DATA, &client);

    let www_data = assignments_of(&fixture, WWW_DATA.uid);
    let daemon = assignments_of(&fixture, DAEMON.uid);
    assert_eq!(www_data.len(), 2, "{}", fixture.log());
    assert_eq!(daemon.len(), 2, "{}", fixture.log());
    assert_eq!(daemon[0]["child"], json!("fresh"));
    assert_ne!(child_pid(&daemon[0]), child_pid(&www_data[0]));
    assert_ne!(child_pid(&daemon[1]), child_pid(&www_data[0]));
    // The www-data child waited in the cache while daemon connected twice.
    assert_eq!(www_data[1]["child"], json!("reused"));
    assert_eq!(child_pid(&www_data[1]), child_pid(&www_data[0]));
    assert_one_identity_per_child(&fixture);
}

#[test]
fn other_executable_gets_other_child() {
    let (fixture, _broker) = start(&[]);
    let client = fixture.client_binary().to_path_buf();
    let second = second_client_binary(&fixture);
    greet(&fixture, WWW_DATA, &client);
    greet(&fixture, WWW_DATA, &second);

    let assigned = assignments_of(&fixture, WWW_DATA.uid);
    assert_eq!(assigned.len(), 2, "{}", fixture.log());
    assert_eq!(assigned[1]["child"], json!("fresh"));
    assert_ne!(child_pid(&assigned[0]), child_pid(&assigned[1]));
    assert_eq!(assigned[1]["peer_exe"], json!(second.to_string_lossy()));
    assert_one_identity_per_child(&fixture);
}

#[test]
fn connection_limit_per_child_honoured() {
    let (fixture, _broker) = start(&[("max_connections_per_child", "3")]);
    let client = fixture.client_binary().to_path_buf();
    for _ in 0..5 {
        greet(&fixture, WWW_DATA, &client);
    }

    let assigned = assignments_of(&fixture, WWW_DATA.uid);
    assert_eq!(assigned.len(), 5, "{}", fixture.log());
    let pids: Vec<i32> = assigned.iter().map(child_pid).collect();
    let counts: Vec<&Value> = assigned
        .iter()
        .map(|record| &record["child_connection"])
        .collect();
    assert_eq!(
        counts,
        [&json!(1), &json!(2), &json!(3), &json!(1), &json!(2)]
    );
    assert_eq!(pids[0], pids[1]);
    assert_eq!(pids[0], pids[2]);
    assert_ne!(pids[3], pids[0]);
    assert_eq!(pids[3], pids[4]);
    assert!(
        wait_for(LOG_TIMEOUT, || !process_is_alive(pids[0])),
        "child {} still runs after its third connection",
        pids[0]
    );
}

#[test]
fn reuse_disabled_gives_fresh_child_each_time() {
    let (fixture, _broker) = start(&[("max_connections_per_child", "1")]);
    let client = fixture.client_binary().to_path_buf();
    for _ in 0..3 {
        greet(&fixture, WWW_DATA, &client);
    }

    let assigned = assignments_of(&fixture, WWW_DATA.uid);
    assert_eq!(assigned.len(), 3, "{}", fixture.log());
    let mut pids: Vec<i32> = assigned.iter().map(child_pid).collect();
    for record in &assigned {
        assert_eq!(record["child"], json!("fresh"));
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "{}", fixture.log());
    assert!(records(&fixture, CACHED).is_empty(), "{}", fixture.log());
}

/// Runs one www-data call and returns the pid of the child the broker cached after it.
fn cache_www_data_child(fixture: &Fixture) -> i32 {
    let client = fixture.client_binary().to_path_buf();
    greet(fixture, WWW_DATA, &client);
    let cached = child_pid(&assignments_of(fixture, WWW_DATA.uid)[0]);
    assert!(process_is_alive(cached));
    cached
}

/// Sends SIGHUP to the broker and checks that the cached child `cached` is killed and
/// reaped.
fn assert_reload_kills(fixture: &Fixture, broker: &Broker, cached: i32) {
    signal::kill(Pid::from_raw(broker.pid()), Signal::SIGHUP).unwrap();
    assert!(
        wait_for(LOG_TIMEOUT, || !Path::new(&format!("/proc/{cached}"))
            .exists()),
        "cached child {cached} was not killed and reaped after SIGHUP\n{}",
        fixture.log()
    );
}

#[test]
fn reload_kills_cached_children() {
    let (fixture, broker) = start(&[]);
    let cached = cache_www_data_child(&fixture);
    assert_reload_kills(&fixture, &broker, cached);

    greet(&fixture, WWW_DATA, fixture.client_binary());
    let assigned = assignments_of(&fixture, WWW_DATA.uid);
    assert_eq!(assigned[1]["child"], json!("fresh"));
    assert_ne!(child_pid(&assigned[1]), cached);
}

#[test]
fn rejected_reload_kills_cached_children() {
    let (fixture, broker) = start(&[]);
    let cached = cache_www_data_child(&fixture);
    fixture.write_policy("broken", "[command.broken\n");
    assert_reload_kills(&fixture, &broker, cached);

    let rejected = records(
        &fixture,
        "policy reload rejected, the previous policy stays in force",
    );
    assert_eq!(rejected.len(), 1, "{}", fixture.log());
}

#[test]
fn reload_during_connection_retires_child() {
    let (fixture, broker) = start(&[]);
    let (running, serving) = start_slow_call(&fixture);

    signal::kill(Pid::from_raw(broker.pid()), Signal::SIGHUP).unwrap();
    assert!(wait_for(LOG_TIMEOUT, || {
        !records(&fixture, "policy reloaded").is_empty()
    }));
    let output = running.finish(CLIENT_TIMEOUT);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert!(
        wait_for(LOG_TIMEOUT, || !Path::new(&format!("/proc/{serving}"))
            .exists()),
        "child {serving} that served across a reload was cached\n{}",
        fixture.log()
    );
    let not_cached = records(&fixture, "parser child not cached");
    assert!(
        not_cached
            .iter()
            .any(|record| record["child_pid"] == json!(serving)
                && record["reason"] == json!("the policy was reloaded during the connection")),
        "{}",
        fixture.log()
    );
}

#[test]
fn idle_timeout_reaps_cached_child() {
    let (fixture, _broker) = start(&[("cached_child_idle_ms", "300")]);
    let client = fixture.client_binary().to_path_buf();
    greet(&fixture, WWW_DATA, &client);
    let cached = child_pid(&assignments_of(&fixture, WWW_DATA.uid)[0]);

    assert!(
        wait_for(Duration::from_secs(5), || {
            !Path::new(&format!("/proc/{cached}")).exists()
        }),
        "cached child {cached} still exists 5 s after a 300 ms idle limit\n{}",
        fixture.log()
    );
}

#[test]
fn killed_cached_child_never_reused() {
    let (fixture, _broker) = start(&[]);
    let client = fixture.client_binary().to_path_buf();
    greet(&fixture, WWW_DATA, &client);
    let cached = child_pid(&assignments_of(&fixture, WWW_DATA.uid)[0]);
    signal::kill(Pid::from_raw(cached), Signal::SIGKILL).unwrap();
    // A child that dies between the monitor's check and the Assign loses the connection,
    // as a pool child would, so the next connection waits for the death to complete.
    assert!(wait_for(LOG_TIMEOUT, || !process_is_alive(cached)));

    greet(&fixture, WWW_DATA, &client);
    let assigned = assignments_of(&fixture, WWW_DATA.uid);
    assert_eq!(assigned[1]["child"], json!("fresh"), "{}", fixture.log());
    assert_ne!(child_pid(&assigned[1]), cached);
}

#[test]
fn child_killed_while_serving_never_reused() {
    let (fixture, _broker) = start(&[]);
    let client = fixture.client_binary().to_path_buf();
    let (running, serving) = start_slow_call(&fixture);
    signal::kill(Pid::from_raw(serving), Signal::SIGKILL).unwrap();
    let output = running.finish(CLIENT_TIMEOUT);
    assert_ne!(output.code(), Some(0), "{}", output.describe());
    assert!(
        wait_for(LOG_TIMEOUT, || !Path::new(&format!("/proc/{serving}"))
            .exists()),
        "{}",
        fixture.log()
    );

    greet(&fixture, WWW_DATA, &client);
    let assigned = assignments_of(&fixture, WWW_DATA.uid);
    assert_eq!(assigned[1]["child"], json!("fresh"), "{}", fixture.log());
    assert_ne!(child_pid(&assigned[1]), serving);
}

#[test]
fn shutdown_kills_cached_children() {
    let (fixture, mut broker) = start(&[]);
    let client = fixture.client_binary().to_path_buf();
    greet(&fixture, WWW_DATA, &client);
    let cached = child_pid(&assignments_of(&fixture, WWW_DATA.uid)[0]);
    assert!(process_is_alive(cached));

    let status = broker.terminate();
    assert!(status.success(), "{status}\n{}", broker.diagnostics());
    assert!(!Path::new(&format!("/proc/{cached}")).exists());
}

#[test]
fn reused_child_attributes_events_per_connection() {
    let (fixture, _broker) = start(&[]);
    let client = fixture.client_binary().to_path_buf();
    let first = greet(&fixture, WWW_DATA, &client);
    let second = greet(&fixture, WWW_DATA, &client);
    assert!(first.stdout.contains("hello reuse"), "{}", first.describe());
    assert!(
        second.stdout.contains("hello reuse"),
        "{}",
        second.describe()
    );

    let assigned = assignments_of(&fixture, WWW_DATA.uid);
    assert_eq!(assigned.len(), 2, "{}", fixture.log());
    assert_eq!(child_pid(&assigned[0]), child_pid(&assigned[1]));
    assert_ne!(assigned[0]["peer_pid"], assigned[1]["peer_pid"]);
    assert_ne!(assigned[0]["session"], assigned[1]["session"]);

    // The child's sandbox event of each connection is logged with that connection's
    // client pid, which the monitor read from the kernel.
    let sandbox = records(&fixture, "parser child sandbox status");
    for (index, record) in assigned.iter().enumerate() {
        let expected = format!("connection {} of this child", index + 1);
        let matching: Vec<&Value> = sandbox
            .iter()
            .filter(|event| event["peer_pid"] == record["peer_pid"])
            .collect();
        assert_eq!(matching.len(), 1, "{}", fixture.log());
        let detail = matching[0]["detail"].as_str().unwrap();
        assert!(detail.ends_with(&expected), "{detail}");
    }

    // Requests ran under each connection's own peer pid and request id.
    let ran = records(&fixture, "request ran");
    assert_eq!(ran.len(), 2, "{}", fixture.log());
    assert_eq!(ran[0]["peer_pid"], assigned[0]["peer_pid"]);
    assert_eq!(ran[1]["peer_pid"], assigned[1]["peer_pid"]);
    assert_ne!(ran[0]["request_id"], ran[1]["request_id"]);
    for record in &ran {
        let arguments = &record["arguments"];
        assert!(arguments.is_object(), "{arguments}");
        assert!(!arguments.to_string().contains("hunter"), "{arguments}");
    }
}

#[test]
fn reused_child_restarts_request_count() {
    let (fixture, _broker) = start(&[("max_requests_per_connection", "1")]);
    let client = fixture.client_binary().to_path_buf();
    for round in 0..3 {
        let output = run_client(&fixture, WWW_DATA, &client, &["list"]);
        assert_eq!(
            output.code(),
            Some(0),
            "round {round}: {}",
            output.describe()
        );
    }

    // Each connection used up its one request, and the child still served the next
    // one, numbering its requests from 1 under the new session id.
    let assigned = assignments_of(&fixture, WWW_DATA.uid);
    assert_eq!(assigned.len(), 3, "{}", fixture.log());
    assert_eq!(assigned[2]["child"], json!("reused"), "{}", fixture.log());
    assert_eq!(
        child_pid(&assigned[0]),
        child_pid(&assigned[2]),
        "{}",
        fixture.log()
    );
    let requests: Vec<Value> = records(&fixture, "request")
        .into_iter()
        .filter(|record| record["peer_uid"] == json!(WWW_DATA.uid))
        .collect();
    assert_eq!(requests.len(), 3, "{}", fixture.log());
    for (request, assignment) in requests.iter().zip(&assigned) {
        let expected = format!("{}-1", assignment["session"].as_str().unwrap());
        assert_eq!(request["request_id"], json!(expected));
        assert_eq!(request["peer_pid"], assignment["peer_pid"]);
    }
}

#[test]
fn peer_without_executable_never_reused() {
    // The monitor keeps only CAP_SETUID, CAP_SETGID and CAP_KILL, so Linux refuses it
    // /proc/PID/exe of this test process, which runs as root with every capability.
    let (fixture, broker) = start(&[]);
    for round in 0..3 {
        let released_before = released(&fixture);
        let mut connection = broker.connect();
        let reply = connection.call("org.securesocket.Broker.List", json!({}));
        assert!(
            reply["parameters"]["commands"].is_array(),
            "round {round}: {reply}"
        );
        drop(connection);
        assert!(wait_for(LOG_TIMEOUT, || released(&fixture) > released_before));
    }

    // The readiness probe of Broker::start is the first of four connections.
    let assigned = assignments_of(&fixture, 0);
    assert_eq!(assigned.len(), 4, "{}", fixture.log());
    let mut pids: Vec<i32> = assigned.iter().map(child_pid).collect();
    for record in &assigned {
        assert_eq!(record["peer_exe"], json!(""));
        assert_eq!(record["child"], json!("fresh"));
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 4, "{}", fixture.log());
}

/// Returns the contents of every writable mapping of `pid` (heap, stacks, anonymous
/// memory and data segments), read through /proc/PID/mem.
fn writable_memory(pid: i32) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};

    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut memory = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut contents = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let permissions = fields.next().unwrap();
        if !permissions.starts_with("rw") || line.ends_with("[vvar]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut region = vec![0u8; (end - start) as usize];
        memory.seek(SeekFrom::Start(start)).unwrap();
        // A mapping may have pages that cannot be read (guard pages); those stay zero.
        let _ = memory.read_exact(&mut region);
        contents.extend_from_slice(&region);
    }
    contents
}

#[test]
fn cached_child_memory_holds_no_request() {
    let (fixture, _broker) = start(&[]);
    let client = fixture.client_binary().to_path_buf();
    // A value that occurs nowhere else: the test process's pid and the time.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!("{}x{nanos}", std::process::id());
    let token = format!("token=secret{marker}");
    let output = run_client(
        &fixture,
        WWW_DATA,
        &client,
        &["call", "--json", "greet", "name=reuse", &token],
    );
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    let cached = child_pid(&assignments_of(&fixture, WWW_DATA.uid)[0]);
    assert!(!records(&fixture, CACHED).is_empty(), "{}", fixture.log());

    let memory = writable_memory(cached);
    let needle = format!("secret{marker}");
    let found = memory
        .windows(needle.len())
        .position(|window| window == needle.as_bytes());
    assert_eq!(
        found, None,
        "the cached child still holds the previous request"
    );
}
