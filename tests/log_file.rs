//! log_destination=file. SIGHUP reopens log_file by its path, so that a rotation that
//! renames the file (logrotate's default) loses no record. The broker rejects a log file
//! that is not a regular file, or that another user could replace, at start and at reopen.
//!
//! Run as root: `cargo test --release --test log_file`.

mod common;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use common::{
    Broker, DAEMON, EXIT_CONFIG, Fixture, WWW_DATA, broker_arguments, run_broker_to_exit,
    run_client_as, wait_for,
};

/// How long the broker gets to act on a signal or to write a record.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `greet` as www-data and returns the request id of the reply.
fn call_greet(fixture: &Fixture) -> String {
    let output = run_client_as(fixture, WWW_DATA, &["call", "--json", "greet"]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    let reply = output.stdout_json();
    let request_id = reply["parameters"]["request_id"].as_str();
    request_id
        .unwrap_or_else(|| panic!("reply without request_id: {reply}"))
        .to_string()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the file at `path` contains `text`.
fn wait_for_text(path: &Path, text: &str) -> bool {
    wait_for(LOG_TIMEOUT, || read(path).contains(text))
}

fn send_sighup(broker: &Broker) {
    kill(Pid::from_raw(broker.pid()), Signal::SIGHUP).unwrap();
}

#[test]
fn sighup_reopens_renamed_log_file() {
    let fixture = Fixture::with_greet();
    let broker = Broker::start(&fixture, &[]);
    let log_path = fixture.log_path();
    let rotated = fixture.path().join("broker.log.1");
    let first_id = call_greet(&fixture);
    assert!(
        wait_for_text(&log_path, &first_id),
        "{}",
        broker.diagnostics()
    );

    fs::rename(&log_path, &rotated).unwrap();
    send_sighup(&broker);
    assert!(
        wait_for_text(&log_path, "log file reopened"),
        "no new log file after SIGHUP\n{}",
        broker.diagnostics()
    );
    let second_id = call_greet(&fixture);
    assert!(
        wait_for_text(&log_path, &second_id),
        "{}",
        broker.diagnostics()
    );

    let new_log = read(&log_path);
    let old_log = read(&rotated);
    assert!(old_log.contains("broker started"), "{old_log}");
    assert!(old_log.contains(&first_id), "{old_log}");
    assert!(!old_log.contains(&second_id), "{old_log}");
    assert!(!new_log.contains(&first_id), "{new_log}");
    assert!(new_log.contains("policy reloaded"), "{new_log}");
}

#[test]
fn reopened_log_file_has_safe_mode() {
    let fixture = Fixture::with_greet();
    let broker = Broker::start(&fixture, &[]);
    let log_path = fixture.log_path();
    fs::rename(&log_path, fixture.path().join("broker.log.1")).unwrap();

    send_sighup(&broker);
    assert!(
        wait_for_text(&log_path, "log file reopened"),
        "{}",
        broker.diagnostics()
    );

    let metadata = fs::metadata(&log_path).unwrap();
    let mode = metadata.permissions().mode();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&metadata), 0);
    assert_eq!(mode & 0o022, 0, "mode {mode:o}");
}

/// Sends SIGHUP and returns the reopen error that the broker logs to `rotated`, the file
/// it keeps writing to.
fn reopen_error_line(broker: &Broker, rotated: &Path) -> String {
    send_sighup(broker);
    assert!(
        wait_for_text(rotated, "failed to reopen the log file"),
        "{}",
        broker.diagnostics()
    );
    read(rotated)
        .lines()
        .find(|line| line.contains("failed to reopen the log file"))
        .unwrap()
        .to_string()
}

#[test]
fn failed_reopen_keeps_old_file() {
    let fixture = Fixture::with_greet();
    let broker = Broker::start(&fixture, &[]);
    let log_path = fixture.log_path();
    let rotated = fixture.path().join("broker.log.1");
    fs::rename(&log_path, &rotated).unwrap();
    // A symbolic link at the path must never be followed, so the reopen fails.
    std::os::unix::fs::symlink(&rotated, &log_path).unwrap();

    let error_line = reopen_error_line(&broker, &rotated);
    let request_id = call_greet(&fixture);
    assert!(
        wait_for_text(&rotated, &request_id),
        "{}",
        broker.diagnostics()
    );

    let old_log = read(&rotated);
    assert!(error_line.contains("symbolic link"), "{error_line}");
    assert!(
        error_line.contains(&log_path.display().to_string()),
        "{error_line}"
    );
    assert!(old_log.contains("policy reloaded"), "{old_log}");
    let link = fs::symlink_metadata(&log_path).unwrap();
    assert!(link.file_type().is_symlink());
}

/// Starts the broker with `log_file` and checks that it exits with EX_CONFIG and a
/// message naming the path and `rule`, without creating its socket. The broker must exit
/// on its own: a FIFO without a reader would block a blocking open.
fn assert_log_file_rejected(fixture: &Fixture, log_file: &Path, rule: &str) {
    let log_file = log_file.display().to_string();
    let arguments = broker_arguments(fixture, &[("log_file", &log_file)]);

    let output = run_broker_to_exit(&arguments);

    assert_eq!(output.code(), Some(EXIT_CONFIG), "{}", output.describe());
    assert!(output.stderr.contains(&log_file), "{}", output.describe());
    assert!(output.stderr.contains(rule), "{}", output.describe());
    assert!(!fixture.socket_path().exists());
}

fn make_dir(path: &Path, mode: u32) -> PathBuf {
    fs::DirBuilder::new().mode(mode).create(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    path.to_path_buf()
}

#[test]
fn fifo_log_file_rejected_without_hanging() {
    let fixture = Fixture::with_greet();
    let fifo = fixture.path().join("log.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    assert_log_file_rejected(&fixture, &fifo, "FIFO, not a regular file");
}

#[test]
fn directory_log_file_rejected() {
    let fixture = Fixture::with_greet();
    let directory = make_dir(&fixture.path().join("logs"), 0o755);

    assert_log_file_rejected(&fixture, &directory, "directory, not a regular file");
}

#[test]
fn symlinked_log_file_rejected() {
    let fixture = Fixture::with_greet();
    let target = fixture.path().join("real.log");
    fs::write(&target, "").unwrap();
    let link = fixture.path().join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    assert_log_file_rejected(&fixture, &link, "symbolic link");
}

#[test]
fn log_file_of_other_user_rejected() {
    let fixture = Fixture::with_greet();
    let log = fixture.path().join("other.log");
    fs::write(&log, "").unwrap();
    std::os::unix::fs::chown(&log, Some(DAEMON.uid), Some(DAEMON.gid)).unwrap();

    assert_log_file_rejected(&fixture, &log, "owned by root");
}

#[test]
fn log_file_in_group_writable_directory_accepted() {
    // Ubuntu's /var/log is root:syslog with mode 0775.
    let fixture = Fixture::with_greet();
    let directory = make_dir(&fixture.path().join("shared"), 0o775);
    let log_path = directory.join("broker.log");
    let log_text = log_path.to_string_lossy().to_string();

    let broker = Broker::start(&fixture, &[("log_file", log_text.as_str())]);
    assert!(
        wait_for_text(&log_path, "broker started"),
        "{}",
        broker.diagnostics()
    );
}

#[test]
fn log_file_in_world_writable_directory_rejected() {
    let fixture = Fixture::with_greet();
    let directory = make_dir(&fixture.path().join("open"), 0o777);

    assert_log_file_rejected(&fixture, &directory.join("broker.log"), "writable by");
    assert!(!directory.join("broker.log").exists());
}

#[test]
fn log_file_under_unsafe_grandparent_rejected() {
    let fixture = Fixture::with_greet();
    let unsafe_parent = make_dir(&fixture.path().join("sticky"), 0o1777);
    let directory = make_dir(&unsafe_parent.join("logs"), 0o755);

    assert_log_file_rejected(&fixture, &directory.join("broker.log"), "writable by");
}

#[test]
fn log_file_in_directory_of_other_user_rejected() {
    let fixture = Fixture::with_greet();
    let directory = make_dir(&fixture.path().join("daemon-logs"), 0o755);
    std::os::unix::fs::chown(&directory, Some(DAEMON.uid), Some(DAEMON.gid)).unwrap();

    assert_log_file_rejected(&fixture, &directory.join("broker.log"), "not by root");
}

#[test]
fn reopen_names_owner_of_other_users_file() {
    let fixture = Fixture::with_greet();
    let broker = Broker::start(&fixture, &[]);
    let log_path = fixture.log_path();
    let rotated = fixture.path().join("broker.log.1");
    fs::rename(&log_path, &rotated).unwrap();
    fs::write(&log_path, "").unwrap();
    std::os::unix::fs::chown(&log_path, Some(WWW_DATA.uid), Some(WWW_DATA.gid)).unwrap();
    fs::set_permissions(&log_path, fs::Permissions::from_mode(0o600)).unwrap();

    let error_line = reopen_error_line(&broker, &rotated);
    assert!(
        error_line.contains(&format!("owner uid {}", WWW_DATA.uid)),
        "{error_line}"
    );
}
