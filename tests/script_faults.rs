//! Scripts that misbehave under a real broker. A grandchild ignores SIGTERM past the
//! timeout, a fork loop runs into the `processes` rlimit, and a flood of output fills
//! both streams. One script is deleted and one made non-executable after the policy was
//! loaded, and two close their output early but keep running.
//!
//! Run as root: `cargo test --release --test script_faults`. The fork test creates a
//! system user of its own with useradd and removes it with userdel, also when it fails.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{
    Broker, Fixture, error_name, parameters, process_is_alive, status_field, vm_rss_kib, wait_for,
};

const POLICY: &str = r#"
[command.hello]
description = "Print a greeting"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["root"]
capture_output = true

[command.stubborn]
description = "Start a grandchild that ignores SIGTERM, then sleep past the timeout"
script = "@FIXTURE@/scripts/stubborn"
run_as = "root"
allow_users = ["root"]
timeout_ms = 1000

[command.flood]
description = "Write 32 MiB to stdout and to stderr"
script = "@FIXTURE@/scripts/flood"
run_as = "root"
allow_users = ["root"]
capture_output = true
output_limit = 4096
timeout_ms = 30000

[command.vanishing]
description = "A script that the test deletes after the broker started"
script = "@FIXTURE@/scripts/vanishing"
run_as = "root"
allow_users = ["root"]

[command.locked]
description = "A script whose execute bits the test clears after the broker started"
script = "@FIXTURE@/scripts/locked"
run_as = "root"
allow_users = ["root"]

[command.close-stdout]
description = "Close stdout, keep running for a second, then write to stderr"
script = "@FIXTURE@/scripts/close-stdout"
run_as = "root"
allow_users = ["root"]
capture_output = true

[command.close-both]
description = "Close stdout and stderr, then keep running for a second"
script = "@FIXTURE@/scripts/close-both"
run_as = "root"
allow_users = ["root"]
capture_output = true
"#;

const SCRIPTS: &[(&str, &str)] = &[
    ("hello", "#!/bin/sh\necho hello\n"),
    (
        "stubborn",
        "#!/bin/sh\n\
         sh -c 'trap \"\" TERM INT HUP; echo $$ > @FIXTURE@/out/stubborn.pid; \
         while :; do sleep 1; done' &\n\
         sleep 30\n",
    ),
    (
        "flood",
        "#!/bin/sh\n\
         head -c 33554432 /dev/zero | tr '\\0' o &\n\
         head -c 33554432 /dev/zero | tr '\\0' e >&2\n\
         wait\n",
    ),
    (
        "vanishing",
        "#!/bin/sh\ntouch @FIXTURE@/out/vanishing.ran\n",
    ),
    ("locked", "#!/bin/sh\ntouch @FIXTURE@/out/locked.ran\n"),
    (
        "close-stdout",
        "#!/bin/sh\necho before\nexec 1>&-\nsleep 1\necho after >&2\n\
         touch @FIXTURE@/out/close-stdout.done\n",
    ),
    (
        "close-both",
        "#!/bin/sh\nexec 1>&- 2>&-\nsleep 1\ntouch @FIXTURE@/out/close-both.done\n",
    ),
];

/// Time a script's processes get to disappear after the reply: the kill is sent before
/// the reply, but the kernel may take a moment to deliver it.
const KILL_DELIVERY: Duration = Duration::from_secs(3);

fn policy_fixture() -> Fixture {
    Fixture::with_commands(POLICY, SCRIPTS)
}

fn start_default() -> (Fixture, Broker) {
    let fixture = policy_fixture();
    let broker = Broker::start(&fixture, &[]);
    (fixture, broker)
}

/// Checks that `hello` still runs, so a fault left the broker serving.
fn assert_still_serving(broker: &Broker) {
    let reply = broker.connect().run("hello", json!({}));
    assert_eq!(
        parameters(&reply)["stdout"],
        json!("hello\n"),
        "the broker stopped serving: {reply}\n{}",
        broker.diagnostics()
    );
}

/// Returns whether bit `signal` is set in the hexadecimal `SigIgn` mask of `pid`.
fn ignores_signal(pid: i32, signal: i32) -> bool {
    status_field(pid, "SigIgn")
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

#[test]
fn timeout_kills_grandchild_ignoring_sigterm() {
    let (fixture, broker) = start_default();
    let pid_file = fixture.out_file("stubborn.pid");

    let socket = broker.socket_path().to_path_buf();
    let request = thread::spawn(move || {
        let started = Instant::now();
        let reply = common::VarlinkConnection::connect(&socket).run("stubborn", json!({}));
        (reply, started.elapsed())
    });
    let written = wait_for(Duration::from_secs(5), || {
        fs::read_to_string(&pid_file).is_ok_and(|text| text.ends_with('\n'))
    });
    assert!(
        written,
        "the script wrote no grandchild pid\n{}",
        broker.diagnostics()
    );
    let grandchild: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ignores_term = ignores_signal(grandchild, libc::SIGTERM);
    let (reply, elapsed) = request.join().unwrap();
    let grandchild_gone = wait_for(KILL_DELIVERY, || !process_is_alive(grandchild));

    assert!(
        ignores_term,
        "the grandchild {grandchild} does not ignore SIGTERM, so the test proves nothing"
    );
    assert_eq!(
        parameters(&reply)["timed_out"],
        json!(true),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "a 1 s timeout took {elapsed:?}"
    );
    assert!(
        grandchild_gone,
        "the grandchild {grandchild} that ignores SIGTERM survived the timeout\n{}",
        broker.diagnostics()
    );
    assert_still_serving(&broker);
}

/// A system user created for one test, so that RLIMIT_NPROC, which the kernel counts per
/// real uid, counts only the test's processes. Drop kills what still runs as the user
/// and deletes it.
struct TestUser {
    name: String,
    uid: u32,
}

impl TestUser {
    fn create() -> TestUser {
        let name = format!("ss-nproc-{}", std::process::id());
        // Another test binary may hold the lock on /etc/passwd for a moment.
        let mut attempts = 0;
        loop {
            let output = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--user-group",
                    &name,
                ])
                .output()
                .unwrap();
            if output.status.success() {
                break;
            }
            attempts += 1;
            assert!(
                attempts < 20,
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            thread::sleep(Duration::from_millis(250));
        }
        let uid = nix::unistd::User::from_name(&name)
            .unwrap()
            .unwrap_or_else(|| panic!("useradd created {name}, but it cannot be looked up"))
            .uid
            .as_raw();
        TestUser { name, uid }
    }

    /// Returns the pids of the live processes whose real uid is this user's.
    fn processes(&self) -> Vec<i32> {
        let uid = self.uid.to_string();
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| {
                status_field(pid, "Uid")
                    .is_some_and(|uids| uids.split_whitespace().next() == Some(uid.as_str()))
            })
            .filter(|&pid| process_is_alive(pid))
            .collect()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        wait_for(Duration::from_secs(5), || self.processes().is_empty());
        let mut attempts = 0;
        loop {
            match Command::new("userdel").arg(&self.name).output() {
                Ok(output) if output.status.success() => return,
                Ok(output) if attempts < 20 => {
                    attempts += 1;
                    eprintln!(
                        "userdel {} failed, retrying: {}",
                        self.name,
                        String::from_utf8_lossy(&output.stderr)
                    );
                    thread::sleep(Duration::from_millis(250));
                }
                Ok(output) => {
                    eprintln!(
                        "failed to remove test user {}: {}",
                        self.name,
                        String::from_utf8_lossy(&output.stderr)
                    );
                    return;
                }
                Err(error) => {
                    eprintln!("failed to run userdel {}: {error}", self.name);
                    return;
                }
            }
        }
    }
}

#[test]
fn fork_loop_stopped_by_process_limit() {
    let user = TestUser::create();
    let fixture = Fixture::new();
    let limit = 8;
    fixture.write_policy(
        "commands",
        &format!(
            r#"
[command.hello]
description = "Print a greeting"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["root"]
capture_output = true

[command.fork-loop]
description = "Start 50 background sleeps as a dedicated user"
script = "@FIXTURE@/scripts/fork-loop"
run_as = "{name}"
allow_users = ["root"]
capture_output = true
timeout_ms = 10000

[command.fork-loop.rlimits]
processes = {limit}
"#,
            name = user.name
        ),
    );
    fixture.write_script("hello", "#!/bin/sh\necho hello\n");
    fixture.write_script(
        "fork-loop",
        "#!/bin/sh\ni=0\nwhile [ $i -lt 50 ]; do\n  sleep 30 &\n  \
         echo $! >> @FIXTURE@/out/forked.pids\n  i=$((i + 1))\ndone\nwait\n",
    );
    let broker = Broker::start(&fixture, &[]);

    let started = Instant::now();
    let reply = broker.connect().run("fork-loop", json!({}));
    let elapsed = started.elapsed();
    let forked = fs::read_to_string(fixture.out_file("forked.pids"))
        .unwrap_or_default()
        .lines()
        .count();
    let leftovers_gone = wait_for(KILL_DELIVERY, || user.processes().is_empty());
    let stderr = parameters(&reply)["stderr"].as_str().unwrap_or("");

    assert_eq!(
        error_name(&reply),
        None,
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_ne!(
        parameters(&reply)["exit_code"],
        json!(0),
        "the fork loop finished although at most {limit} processes were allowed: {reply}"
    );
    assert_eq!(
        parameters(&reply)["timed_out"],
        json!(false),
        "reply: {reply}"
    );
    assert!(
        stderr.contains("fork"),
        "the script's stderr does not report the failed fork: {reply}"
    );
    // The script itself is one of the `limit` processes of its user.
    assert!(
        (1..limit).contains(&forked),
        "the script started {forked} background processes under a limit of {limit}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "the fork loop took {elapsed:?}"
    );
    assert!(
        leftovers_gone,
        "processes of {} survived the script: {:?}",
        user.name,
        user.processes()
    );
    assert_still_serving(&broker);
}

/// Runs `flood` and checks that each stream is cut at output_limit and flagged.
fn assert_flood_capped(reply: &Value, broker: &Broker) {
    let limit = 4096;
    assert_eq!(
        parameters(reply)["exit_code"],
        json!(0),
        "reply without its output: {}\n{}",
        json!({
            "error": reply.get("error"),
            "timed_out": parameters(reply)["timed_out"],
            "signal": parameters(reply)["signal"],
        }),
        broker.diagnostics()
    );
    assert_eq!(parameters(reply)["timed_out"], json!(false));
    assert_eq!(
        parameters(reply)["stdout"].as_str().map(str::len),
        Some(limit)
    );
    assert_eq!(
        parameters(reply)["stderr"].as_str().map(str::len),
        Some(limit)
    );
    assert_eq!(parameters(reply)["stdout"], json!("o".repeat(limit)));
    assert_eq!(parameters(reply)["stderr"], json!("e".repeat(limit)));
    assert_eq!(parameters(reply)["stdout_truncated"], json!(true));
    assert_eq!(parameters(reply)["stderr_truncated"], json!(true));
}

#[test]
fn output_flood_capped_with_flat_memory() {
    let (_fixture, broker) = start_default();
    // One run first, so that allocations made once (thread stacks, buffers) are counted
    // in the baseline.
    assert_flood_capped(&broker.connect().run("flood", json!({})), &broker);
    let rss_before = vm_rss_kib(broker.pid()).unwrap();
    let peak_before: u64 = status_field(broker.pid(), "VmHWM")
        .and_then(|value| value.strip_suffix(" kB")?.trim().parse().ok())
        .unwrap();

    // 4 runs at a time (the default max_concurrent), 3 rounds: 768 MiB of output.
    for _ in 0..3 {
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let socket = broker.socket_path().to_path_buf();
                thread::spawn(move || {
                    common::VarlinkConnection::connect(&socket).run("flood", json!({}))
                })
            })
            .collect();
        for run in runs {
            assert_flood_capped(&run.join().unwrap(), &broker);
        }
    }
    let rss_after = vm_rss_kib(broker.pid()).unwrap();
    let peak_after: u64 = status_field(broker.pid(), "VmHWM")
        .and_then(|value| value.strip_suffix(" kB")?.trim().parse().ok())
        .unwrap();
    println!(
        "broker VmRSS {rss_before} kB before and {rss_after} kB after 768 MiB of output; \
         VmHWM {peak_before} kB before, {peak_after} kB after"
    );

    // The monitor keeps at most output_limit per stream and reads the rest through one
    // 16 KiB buffer per run. The bounds leave room for allocator noise, not for output.
    assert!(
        rss_after < rss_before + 4096,
        "broker RSS grew from {rss_before} kB to {rss_after} kB"
    );
    assert!(
        peak_after < peak_before + 8192,
        "broker peak RSS grew from {peak_before} kB to {peak_after} kB during the floods"
    );
    assert_still_serving(&broker);
}

/// Runs `command` and checks that it fails with a typed ExecutionFailed naming it.
fn assert_execution_failed(broker: &Broker, command: &str) {
    let reply = broker.connect().run(command, json!({}));

    assert_eq!(
        error_name(&reply),
        Some("org.securesocket.Broker.ExecutionFailed"),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        parameters(&reply)["field"],
        json!(command),
        "reply: {reply}"
    );
    assert_eq!(parameters(&reply)["rule"], json!("spawn"), "reply: {reply}");
}

#[test]
fn deleted_script_is_execution_failed() {
    let (fixture, broker) = start_default();
    fs::remove_file(fixture.scripts_dir().join("vanishing")).unwrap();

    assert_execution_failed(&broker, "vanishing");
    assert!(!fixture.out_file("vanishing.ran").exists());
    assert_still_serving(&broker);
}

#[test]
fn script_without_execute_bit_is_execution_failed() {
    let (fixture, broker) = start_default();
    fs::set_permissions(
        fixture.scripts_dir().join("locked"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    assert_execution_failed(&broker, "locked");
    assert!(!fixture.out_file("locked.ran").exists());
    assert_still_serving(&broker);
}

#[test]
fn script_closing_stdout_runs_to_end() {
    let (fixture, broker) = start_default();

    let reply = broker.connect().run("close-stdout", json!({}));

    assert_eq!(
        parameters(&reply)["exit_code"],
        json!(0),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        parameters(&reply)["timed_out"],
        json!(false),
        "reply: {reply}"
    );
    assert_eq!(
        parameters(&reply)["stdout"],
        json!("before\n"),
        "reply: {reply}"
    );
    assert_eq!(
        parameters(&reply)["stderr"],
        json!("after\n"),
        "reply: {reply}"
    );
    // The script sleeps for a second after closing stdout, and the reply waits for its exit.
    assert!(
        parameters(&reply)["duration_ms"].as_u64() >= Some(900),
        "reply: {reply}"
    );
    assert!(fixture.out_file("close-stdout.done").exists());
}

#[test]
fn script_closing_both_streams_runs_to_end() {
    let (fixture, broker) = start_default();

    let reply = broker.connect().run("close-both", json!({}));

    assert_eq!(
        parameters(&reply)["exit_code"],
        json!(0),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        parameters(&reply)["timed_out"],
        json!(false),
        "reply: {reply}"
    );
    assert_eq!(parameters(&reply)["stdout"], json!(""), "reply: {reply}");
    assert_eq!(parameters(&reply)["stderr"], json!(""), "reply: {reply}");
    assert!(
        parameters(&reply)["duration_ms"].as_u64() >= Some(900),
        "reply: {reply}"
    );
    assert!(fixture.out_file("close-both.done").exists());
}
