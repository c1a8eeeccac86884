//! Black-box tests of how the broker creates its socket. Each test puts something at the
//! socket path or on a directory above it: a symlink, a stale or live socket, a regular
//! file, or an unsafe owner or mode. The broker must reject each with a message instead of
//! following or replacing it, except a stale socket, which it replaces.
//!
//! Run as root: `cargo test --release --test socket_path -- --test-threads=2`.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::json;

use common::{
    Broker, DAEMON, Fixture, ProcessOutput, VarlinkConnection, broker_arguments, child_pids,
    parameters, process_is_alive, run_broker_to_exit, wait_for,
};

const POLICY: &str = r#"
[command.hello]
description = "Print a greeting"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["root"]
capture_output = true
"#;

/// Contents of files that the broker must leave untouched.
const UNTOUCHED_TEXT: &str = "written by the test; the broker must not change this\n";

fn policy_fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.write_policy("commands", POLICY);
    fixture.write_script("hello", "#!/bin/sh\necho hello\n");
    fixture
}

/// Runs the broker on `fixture` with `socket_path` and waits for it to exit, which it
/// must do because it rejects the path.
fn run_rejected_broker(fixture: &Fixture, socket_path: &Path) -> ProcessOutput {
    let socket_path = socket_path.to_string_lossy();
    run_broker_to_exit(&broker_arguments(fixture, &[("socket_path", &socket_path)]))
}

/// Checks that the broker exited by itself with a failure status.
fn assert_start_failed(output: &ProcessOutput) {
    assert!(
        output.code().is_some_and(|code| code != 0),
        "the broker should exit with a non-zero status\n{}",
        output.describe()
    );
}

/// Checks that `hello` still runs through a fresh connection to `broker`.
fn assert_broker_serves(broker: &Broker) {
    let mut connection = VarlinkConnection::connect(broker.socket_path());

    let reply = connection.run("hello", json!({}));

    assert_eq!(
        parameters(&reply)["exit_code"],
        json!(0),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        parameters(&reply)["stdout"],
        json!("hello\n"),
        "reply: {reply}"
    );
}

fn write_untouched_file(path: &Path) {
    fs::write(path, UNTOUCHED_TEXT).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn socket_path_symlink_is_rejected() {
    let fixture = policy_fixture();
    let target = fixture.out_file("link-target");
    write_untouched_file(&target);
    symlink(&target, fixture.socket_path()).unwrap();

    let output = run_rejected_broker(&fixture, &fixture.socket_path());

    assert_start_failed(&output);
    assert!(
        output
            .stderr
            .contains(&*fixture.socket_path().to_string_lossy()),
        "stderr does not name the socket path\n{}",
        output.describe()
    );
    assert!(
        output.stderr.contains("symlink"),
        "stderr does not say that the path is a symlink\n{}",
        output.describe()
    );
    assert_eq!(
        fs::read_link(fixture.socket_path()).ok(),
        Some(target.clone()),
        "the symlink at the socket path was replaced"
    );
    assert!(
        fs::symlink_metadata(&target).unwrap().is_file(),
        "the link target is no longer a regular file"
    );
    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        UNTOUCHED_TEXT,
        "the link target was changed"
    );
}

#[test]
fn socket_directory_symlink_is_rejected() {
    let fixture = policy_fixture();
    let real_directory = fixture.path().join("real-run");
    fs::create_dir(&real_directory).unwrap();
    fs::set_permissions(&real_directory, fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_dir(fixture.socket_dir()).unwrap();
    symlink(&real_directory, fixture.socket_dir()).unwrap();

    let output = run_rejected_broker(&fixture, &fixture.socket_path());

    assert_start_failed(&output);
    assert!(
        output
            .stderr
            .contains(&*fixture.socket_dir().to_string_lossy()),
        "stderr does not name the socket directory\n{}",
        output.describe()
    );
    assert!(
        output.stderr.contains("symlink"),
        "stderr does not say that the directory is a symlink\n{}",
        output.describe()
    );
    assert_eq!(
        fs::read_dir(&real_directory).unwrap().count(),
        0,
        "the broker created something in the symlink's target directory"
    );
}

#[test]
fn regular_file_at_socket_path_is_rejected() {
    let fixture = policy_fixture();
    write_untouched_file(&fixture.socket_path());

    let output = run_rejected_broker(&fixture, &fixture.socket_path());

    assert_start_failed(&output);
    assert!(
        output
            .stderr
            .contains(&*fixture.socket_path().to_string_lossy()),
        "stderr does not name the socket path\n{}",
        output.describe()
    );
    assert!(
        output.stderr.contains("not a socket"),
        "stderr does not say that the file is not a socket\n{}",
        output.describe()
    );
    assert!(
        fs::symlink_metadata(fixture.socket_path())
            .unwrap()
            .is_file(),
        "the file at the socket path is no longer a regular file"
    );
    assert_eq!(
        fs::read_to_string(fixture.socket_path()).unwrap(),
        UNTOUCHED_TEXT,
        "the file at the socket path was changed"
    );
}

#[test]
fn socket_directory_owned_by_other_user_is_rejected() {
    let fixture = policy_fixture();
    std::os::unix::fs::chown(fixture.socket_dir(), Some(DAEMON.uid), Some(DAEMON.gid)).unwrap();

    let output = run_rejected_broker(&fixture, &fixture.socket_path());

    assert_start_failed(&output);
    assert!(
        output
            .stderr
            .contains(&*fixture.socket_dir().to_string_lossy()),
        "stderr does not name the socket directory\n{}",
        output.describe()
    );
    assert!(
        output.stderr.contains("owned"),
        "stderr does not give the owner as the reason\n{}",
        output.describe()
    );
    assert!(
        !fixture.socket_path().exists(),
        "the broker created its socket in a directory owned by {}",
        DAEMON.name
    );
}

#[test]
fn group_writable_socket_directory_is_rejected() {
    let fixture = policy_fixture();
    fs::set_permissions(fixture.socket_dir(), fs::Permissions::from_mode(0o775)).unwrap();

    let output = run_rejected_broker(&fixture, &fixture.socket_path());

    assert_start_failed(&output);
    assert!(
        output
            .stderr
            .contains(&*fixture.socket_dir().to_string_lossy()),
        "stderr does not name the socket directory\n{}",
        output.describe()
    );
    assert!(
        output.stderr.contains("writable"),
        "stderr does not give the mode as the reason\n{}",
        output.describe()
    );
    assert!(
        !fixture.socket_path().exists(),
        "the broker created its socket in a group-writable directory"
    );
}

#[test]
fn world_writable_ancestor_without_sticky_bit_is_rejected() {
    let fixture = policy_fixture();
    let open_directory = fixture.path().join("open");
    fs::create_dir(&open_directory).unwrap();
    fs::set_permissions(&open_directory, fs::Permissions::from_mode(0o777)).unwrap();
    let socket_directory = open_directory.join("run");

    let output = run_rejected_broker(&fixture, &socket_directory.join("broker.sock"));

    assert_start_failed(&output);
    assert!(
        output.stderr.contains(&*open_directory.to_string_lossy()),
        "stderr does not name the world-writable directory\n{}",
        output.describe()
    );
    assert!(
        output.stderr.contains("writable"),
        "stderr does not give the mode as the reason\n{}",
        output.describe()
    );
    assert!(
        !socket_directory.exists(),
        "the broker created its socket directory below a world-writable directory"
    );
}

/// A directory directly under /tmp for one test, removed with everything in it on drop.
struct TemporaryDirectory {
    path: PathBuf,
}

impl TemporaryDirectory {
    /// Reserves the name without creating the directory, because the broker creates it.
    fn reserve(name: &str) -> TemporaryDirectory {
        let path = PathBuf::from(format!("/tmp/{name}-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).unwrap();
        }
        TemporaryDirectory { path }
    }
}

impl Drop for TemporaryDirectory {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        if let Err(error) = fs::remove_dir_all(&self.path) {
            eprintln!("failed to remove {}: {error}", self.path.display());
        }
    }
}

#[test]
fn socket_directory_under_sticky_tmp_is_created() {
    let fixture = policy_fixture();
    let directory = TemporaryDirectory::reserve("secure_socket-test");
    let socket_path = directory.path.join("broker.sock");
    let socket_path_text = socket_path.to_string_lossy();
    let tmp_mode = fs::metadata("/tmp").unwrap().mode();
    assert_eq!(
        tmp_mode & 0o1777,
        0o1777,
        "this test needs /tmp to be world-writable with the sticky bit"
    );

    let mut broker = Broker::start(&fixture, &[("socket_path", &socket_path_text)]);
    let metadata = fs::symlink_metadata(&directory.path).unwrap();

    assert!(
        metadata.is_dir(),
        "{} is not a directory",
        directory.path.display()
    );
    assert_eq!(metadata.uid(), 0, "owner of {}", directory.path.display());
    assert_eq!(
        metadata.mode() & 0o7777,
        0o755,
        "mode of {}",
        directory.path.display()
    );
    assert_broker_serves(&broker);
    let status = broker.terminate();
    assert_eq!(status.code(), Some(0), "{}", broker.diagnostics());
    assert!(
        !socket_path.exists(),
        "the broker left {socket_path_text} behind\n{}",
        broker.diagnostics()
    );
}

#[test]
fn stale_socket_after_sigkill_is_replaced() {
    let fixture = policy_fixture();
    let mut killed = Broker::start(&fixture, &[]);
    let orphans = child_pids(killed.pid());
    signal::kill(Pid::from_raw(killed.pid()), Signal::SIGKILL).unwrap();
    let status = killed.terminate();
    assert_eq!(status.code(), None, "the first broker was not killed");
    assert!(
        fixture.socket_path().exists(),
        "SIGKILL left no stale socket, so this test checks nothing"
    );
    // The parser children of the killed broker lose their channel and exit by themselves.
    let orphans_exited = wait_for(Duration::from_secs(5), || {
        orphans.iter().all(|&pid| !process_is_alive(pid))
    });
    for &pid in &orphans {
        // The command line check keeps a reused pid from being killed.
        let command_line = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if process_is_alive(pid) && command_line.starts_with(b"secure_socket-parser") {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    assert!(
        orphans_exited,
        "parser children {orphans:?} outlived the killed broker by 5 s"
    );

    // Declared after `killed`, so it is dropped first and removes the socket.
    let broker = Broker::start(&fixture, &[]);

    assert_broker_serves(&broker);
}

#[test]
fn live_socket_of_running_broker_is_kept() {
    let fixture = policy_fixture();
    let broker = Broker::start(&fixture, &[]);
    let inode = fs::symlink_metadata(fixture.socket_path()).unwrap().ino();
    let second_log = fixture.path().join("second-broker.log");
    let second_log = second_log.to_string_lossy();

    let output = run_broker_to_exit(&broker_arguments(&fixture, &[("log_file", &second_log)]));

    assert_start_failed(&output);
    assert!(
        output.stderr.contains("in use"),
        "stderr does not say that the socket is in use\n{}",
        output.describe()
    );
    assert_eq!(
        fs::symlink_metadata(fixture.socket_path())
            .map(|metadata| metadata.ino())
            .ok(),
        Some(inode),
        "the second broker replaced the first broker's socket"
    );
    assert_broker_serves(&broker);
}
