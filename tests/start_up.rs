//! Start-up from the administrator's side: each start error is reported once with its
//! causes, a failed start exits with a documented status, authorised_peer_uid gives the
//! socket a group, and `--help` names every parameter with its default.
//!
//! Run as root: `cargo test --release --test start_up`.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use secure_socket::config::Config;

use common::{
    Broker, EXIT_CONFIG, Fixture, WWW_DATA, broker_arguments, run_broker_to_exit, run_client_as,
    wait_for,
};

/// A policy with two errors: a misspelt key and a missing script.
const BROKEN_POLICY: &str = r#"
[command.greet]
script = "@FIXTURE@/scripts/missing"
run_as = "nobody"
allow_users = ["www-data"]
timeout_sec = 5
"#;

/// Exit status of a start that failed for another reason.
const EXIT_START_FAILED: i32 = 1;

/// A uid with no entry in /etc/passwd on the test machine.
const UID_WITHOUT_USER: u32 = 4242;

/// Counts the lines of `text` that contain `pattern`.
fn count(text: &str, pattern: &str) -> usize {
    text.lines().filter(|line| line.contains(pattern)).count()
}

#[test]
fn policy_error_reported_once_on_stderr() {
    let fixture = Fixture::new();
    fixture.write_policy("greet", BROKEN_POLICY);
    let arguments = broker_arguments(&fixture, &[("log_file", ""), ("log_destination", "stderr")]);

    let output = run_broker_to_exit(&arguments);

    assert_eq!(output.code(), Some(EXIT_CONFIG), "{}", output.describe());
    let stderr = &output.stderr;
    assert_eq!(count(stderr, "broker failed to start"), 1, "{stderr}");
    assert_eq!(count(stderr, "is invalid (2 errors)"), 1, "{stderr}");
    assert_eq!(count(stderr, "timeout_sec"), 1, "{stderr}");
    assert_eq!(
        count(stderr, "scripts/missing does not exist"),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("None"), "{stderr}");
}

#[test]
fn policy_error_count_in_singular() {
    let fixture = Fixture::new();
    // Only the script is wrong, so the policy has exactly one error.
    fixture.write_policy(
        "greet",
        "[command.greet]\nscript = \"@FIXTURE@/scripts/missing\"\nrun_as = \"nobody\"\n\
         allow_users = [\"www-data\"]\n",
    );
    let arguments = broker_arguments(&fixture, &[("log_file", ""), ("log_destination", "stderr")]);

    let output = run_broker_to_exit(&arguments);

    assert_eq!(output.code(), Some(EXIT_CONFIG), "{}", output.describe());
    let stderr = &output.stderr;
    assert_eq!(count(stderr, "is invalid (1 error)"), 1, "{stderr}");
    assert_eq!(count(stderr, "errors)"), 0, "{stderr}");
}

#[test]
fn policy_error_with_log_file_reaches_both() {
    let fixture = Fixture::new();
    fixture.write_policy("greet", BROKEN_POLICY);

    let output = run_broker_to_exit(&broker_arguments(&fixture, &[]));

    assert_eq!(output.code(), Some(EXIT_CONFIG), "{}", output.describe());
    let stderr = &output.stderr;
    let log = fixture.log();
    assert_eq!(count(stderr, "is invalid (2 errors)"), 1, "{stderr}");
    assert_eq!(count(stderr, "timeout_sec"), 1, "{stderr}");
    assert_eq!(count(&log, "broker failed to start"), 1, "{log}");
    assert_eq!(count(&log, "timeout_sec"), 1, "{log}");
    assert!(!log.contains("None"), "{log}");
}

#[test]
fn start_error_shows_cause_chain_once() {
    let fixture = Fixture::with_greet();
    // The broker creates the socket directory, but not the directories above it.
    let socket_path = fixture.path().join("missing/run/broker.sock");
    let socket_path = socket_path.display().to_string();
    let arguments = broker_arguments(
        &fixture,
        &[
            ("socket_path", &socket_path),
            ("log_file", ""),
            ("log_destination", "stderr"),
        ],
    );

    let output = run_broker_to_exit(&arguments);

    assert_eq!(output.code(), Some(EXIT_CONFIG), "{}", output.describe());
    let stderr = &output.stderr;
    let failure_lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("failed to open directory"))
        .collect();
    assert_eq!(failure_lines.len(), 1, "{stderr}");
    assert!(
        failure_lines[0].contains("No such file or directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("None"), "{stderr}");
}

/// Runs the broker with `overrides` on top of the test parameters, logging to stderr, and
/// asserts that it exits with EXIT_CONFIG and names `expected` on stderr.
fn assert_config_failure(fixture: &Fixture, overrides: &[(&str, &str)], expected: &str) {
    let mut parameters = vec![("log_file", ""), ("log_destination", "stderr")];
    parameters.extend_from_slice(overrides);
    let output = run_broker_to_exit(&broker_arguments(fixture, &parameters));

    assert_eq!(output.code(), Some(EXIT_CONFIG), "{}", output.describe());
    assert!(output.stderr.contains(expected), "{}", output.describe());
}

/// Writes a regular file at `<fixture>/regular-file` and returns its path.
fn regular_file(fixture: &Fixture) -> String {
    let path = fixture.path().join("regular-file");
    fs::write(&path, "not a directory\n").unwrap();
    path.display().to_string()
}

#[test]
fn socket_path_below_file_is_config_error() {
    let fixture = Fixture::with_greet();
    let file = regular_file(&fixture);
    let socket_path = format!("{file}/sub/broker.sock");

    assert_config_failure(&fixture, &[("socket_path", &socket_path)], &file);
}

#[test]
fn missing_policy_dir_is_config_error() {
    let fixture = Fixture::with_greet();
    let policy_dir = fixture
        .path()
        .join("missing/policy.d")
        .display()
        .to_string();

    assert_config_failure(&fixture, &[("policy_dir", &policy_dir)], &policy_dir);
}

#[test]
fn policy_dir_file_is_config_error() {
    let fixture = Fixture::with_greet();
    let policy_dir = regular_file(&fixture);

    assert_config_failure(&fixture, &[("policy_dir", &policy_dir)], &policy_dir);
}

#[test]
fn unusable_log_file_path_is_config_error() {
    let fixture = Fixture::with_greet();
    let in_missing_directory = fixture.path().join("missing/broker.log");
    let below_file = format!("{}/broker.log", regular_file(&fixture));

    for log_file in [in_missing_directory.display().to_string(), below_file] {
        let output = run_broker_to_exit(&broker_arguments(&fixture, &[("log_file", &log_file)]));

        assert_eq!(output.code(), Some(EXIT_CONFIG), "{}", output.describe());
        assert!(output.stderr.contains(&log_file), "{}", output.describe());
    }
}

#[test]
fn syslog_socket_below_file_is_config_error() {
    let fixture = Fixture::with_greet();
    let syslog_socket = format!("{}/log", regular_file(&fixture));

    assert_config_failure(
        &fixture,
        &[
            ("log_destination", "syslog"),
            ("syslog_socket", &syslog_socket),
        ],
        &syslog_socket,
    );
}

#[test]
fn syslog_socket_file_is_config_error() {
    let fixture = Fixture::with_greet();
    let syslog_socket = regular_file(&fixture);

    assert_config_failure(
        &fixture,
        &[
            ("log_destination", "syslog"),
            ("syslog_socket", &syslog_socket),
        ],
        "is a regular file, not a socket",
    );
}

#[test]
fn uid_limit_above_max_is_config_error() {
    let fixture = Fixture::with_greet();

    assert_config_failure(
        &fixture,
        &[
            ("max_connections", "10"),
            ("max_connections_per_uid", "100"),
        ],
        "max_connections_per_uid (100) is larger than max_connections (10)",
    );
}

#[test]
fn invalid_parameter_exits_with_config_status() {
    let fixture = Fixture::with_greet();
    let arguments = broker_arguments(&fixture, &[("max_connections", "0")]);

    let output = run_broker_to_exit(&arguments);

    assert_eq!(output.code(), Some(EXIT_CONFIG), "{}", output.describe());
    assert_eq!(
        count(&output.stderr, "max_connections"),
        1,
        "{}",
        output.stderr
    );
}

#[test]
fn unknown_user_exits_with_config_status() {
    let fixture = Fixture::with_greet();
    let arguments = broker_arguments(&fixture, &[("unprivileged_user", "no-such-user")]);

    let output = run_broker_to_exit(&arguments);

    assert_eq!(output.code(), Some(EXIT_CONFIG), "{}", output.describe());
    assert!(
        output.stderr.contains("no-such-user"),
        "{}",
        output.describe()
    );
}

#[test]
fn unreachable_syslog_exits_with_start_failure() {
    let fixture = Fixture::with_greet();
    let missing = fixture.path().join("no-syslog.sock").display().to_string();
    let arguments = broker_arguments(
        &fixture,
        &[
            ("log_file", ""),
            ("log_destination", "syslog"),
            ("syslog_socket", &missing),
        ],
    );

    let output = run_broker_to_exit(&arguments);

    assert_eq!(
        output.code(),
        Some(EXIT_START_FAILED),
        "{}",
        output.describe()
    );
}

#[test]
fn authorised_peer_uid_sets_socket_group() {
    let fixture = Fixture::with_greet();
    let uid = WWW_DATA.uid.to_string();
    let _broker = Broker::start(
        &fixture,
        &[
            ("authorised_peer_uid", &uid),
            ("socket_permissions", "0660"),
        ],
    );

    let metadata = fs::metadata(fixture.socket_path()).unwrap();
    assert_eq!(metadata.gid(), WWW_DATA.gid);
    assert_eq!(metadata.mode() & 0o777, 0o660);
    let output = run_client_as(&fixture, WWW_DATA, &["call", "greet"]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert!(output.stdout.contains("hello"), "{}", output.describe());
}

#[test]
fn authorised_peer_uid_without_user_warns() {
    let fixture = Fixture::with_greet();
    let uid = UID_WITHOUT_USER.to_string();
    let _broker = Broker::start(&fixture, &[("authorised_peer_uid", &uid)]);

    let metadata = fs::metadata(fixture.socket_path()).unwrap();
    assert_eq!(metadata.gid(), 0);
    assert!(wait_for(Duration::from_secs(5), || fixture
        .log()
        .contains("broker started")));
    let log = fixture.log();
    let warning = log
        .lines()
        .find(|line| line.contains("WARN") && line.contains("authorised_peer_uid"))
        .unwrap_or_else(|| panic!("no warning naming authorised_peer_uid:\n{log}"));
    assert!(warning.contains("authorised_peer_gid"), "{warning}");
    assert!(warning.contains(&uid), "{warning}");
}

/// Returns the keys of the start-up banner's effective parameters for `arguments`.
fn effective_keys(arguments: &[&str]) -> Vec<String> {
    let config = Config::from_args(arguments.iter().copied()).unwrap();
    config
        .effective_parameters()
        .split(' ')
        .filter_map(|entry| entry.split_once('=').map(|(key, _)| key.to_string()))
        .collect()
}

#[test]
fn help_gives_default_of_every_effective_parameter() {
    // Optional parameters appear in the banner only when set, and syslog_socket only with
    // log_destination=syslog, so two configurations cover every key.
    let mut keys = effective_keys(&[
        "log_file=/var/log/broker.log",
        "authorised_peer_username=www-data",
        "authorised_peer_uid=33",
        "authorised_peer_gid=33",
        "authorised_peer_pid=1",
        "authorised_peer_process_name=php",
    ]);
    keys.extend(effective_keys(&["log_destination=syslog"]));
    let output = run_broker_to_exit(&["--help".to_string()]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());

    for key in keys {
        let line = output
            .stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(key.as_str()))
            .unwrap_or_else(|| panic!("{key} missing from --help:\n{}", output.stdout));
        assert!(line.contains("default: "), "{line}");
    }
}

#[test]
fn help_documents_exit_statuses() {
    let output = run_broker_to_exit(&["--help".to_string()]);

    assert!(output.stdout.contains("78 when"), "{}", output.stdout);
    assert!(output.stdout.contains("1 when"), "{}", output.stdout);
    assert!(
        output.stdout.contains("SIGHUP reopens log_file"),
        "{}",
        output.stdout
    );
}

#[test]
fn check_policy_usage_error_exits_64() {
    let output = run_broker_to_exit(&["check-policy".to_string()]);

    assert_eq!(output.code(), Some(64), "{}", output.describe());
    assert!(output.stderr.contains("usage:"), "{}", output.describe());
}

#[test]
fn broken_stderr_keeps_serving_and_stopping() {
    let fixture = Fixture::with_greet();
    // A pipe whose reader is gone: every write to the broker's stderr fails with EPIPE.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let params = [("log_file", ""), ("log_destination", "stderr")];
    let mut broker = Broker::start_with_command(&fixture, &params, &[], |command| {
        command.stderr(std::process::Stdio::from(writer));
    });

    for _ in 0..3 {
        let output = run_client_as(&fixture, WWW_DATA, &["call", "greet"]);
        assert_eq!(output.code(), Some(0), "{}", output.describe());
    }
    let status = broker.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn full_stderr_keeps_serving_and_stopping() {
    let fixture = Fixture::with_greet();
    // A pipe that no process reads. Once its buffer (64 KiB, pipe(7)) is full, a blocking
    // write waits.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    let params = [
        ("log_file", ""),
        ("log_destination", "stderr"),
        ("verbosity", "debug"),
    ];
    let mut broker = Broker::start_with_command(&fixture, &params, &[], |command| {
        command.stderr(std::process::Stdio::from(writer));
    });

    for _ in 0..120 {
        let output = run_client_as(&fixture, WWW_DATA, &["call", "greet"]);
        assert_eq!(output.code(), Some(0), "{}", output.describe());
    }
    let status = broker.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(reader);
}
