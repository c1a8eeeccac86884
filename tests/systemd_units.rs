//! Checks the installed systemd units with systemd's own tools and against the broker.
//! `systemd-analyze verify` and `systemd-analyze security` run on the units that
//! install.sh lays out. The stop timeout is compared with the shutdown grace that the
//! service passes, and RestartPreventExitStatus with the broker's exit status for an
//! invalid parameter and an invalid policy.
//!
//! The tests that run systemd-analyze skip with a printed reason when it is not installed.
//! CI installs it (.ci/run).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Fixture, ProcessOutput, spawn};

const REPOSITORY: &str = env!("CARGO_MANIFEST_DIR");

const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

/// Where the unit's ExecStart expects the broker.
const INSTALLED_BINARY: &str = "/usr/local/bin/secure_socket";

const UNITS: [&str; 2] = ["secure_socket.service", "secure_socket.socket"];

/// Highest `systemd-analyze security` exposure the service may have, in tenths as
/// `--threshold` takes it: 2.9 with systemd 252.38 (Debian 12). SECURITY.md lists the
/// directives behind it.
const EXPOSURE_THRESHOLD: &str = "29";

/// Returns false, after printing why, when systemd-analyze is not installed.
fn systemd_analyze_available() -> bool {
    if Path::new(SYSTEMD_ANALYZE).exists() {
        return true;
    }
    eprintln!("skipped: {SYSTEMD_ANALYZE} is missing (Debian package systemd)");
    false
}

/// Installs into `<fixture>/destdir` with install.sh and copies the installed units into
/// `<fixture>/units`, with ExecStart pointed at the staged binary. systemd-analyze verify
/// reports an ExecStart binary that does not exist, and the real /usr/local/bin must stay
/// untouched, so the copy names a binary that exists and is otherwise the installed unit.
fn install_units(fixture: &Fixture) -> PathBuf {
    let destdir = fixture.path().join("destdir");
    fs::create_dir(&destdir).unwrap();
    let output = common::run_install_script(&destdir);
    assert_eq!(output.code(), Some(0), "{}", output.describe());

    let staged_binary = format!("{}{INSTALLED_BINARY}", destdir.display());
    let units = fixture.path().join("units");
    fs::create_dir(&units).unwrap();
    for unit in UNITS {
        let text = fs::read_to_string(destdir.join("etc/systemd/system").join(unit)).unwrap();
        fs::write(
            units.join(unit),
            text.replace(INSTALLED_BINARY, &staged_binary),
        )
        .unwrap();
    }
    units
}

fn run_systemd_analyze(args: &[&str], units: &Path) -> ProcessOutput {
    let mut command = Command::new(SYSTEMD_ANALYZE);
    command.args(args).current_dir(units);
    spawn(command).finish(Duration::from_secs(60))
}

/// Returns the setting lines of the repository's service unit, without comment lines and
/// with continuation lines joined.
fn service_unit_lines() -> Vec<String> {
    let path = Path::new(REPOSITORY).join("systemd/secure_socket.service");
    let text = fs::read_to_string(path).unwrap();
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// Returns the value of the service's single `key=` line.
fn service_setting(key: &str) -> String {
    let prefix = format!("{key}=");
    let values: Vec<String> = service_unit_lines()
        .iter()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().to_string())
        .collect();
    assert_eq!(
        values.len(),
        1,
        "expected one {key}= line, found {values:?}"
    );
    values[0].clone()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if !systemd_analyze_available() {
        return;
    }
    let fixture = Fixture::new();
    let units = install_units(&fixture);

    let output = run_systemd_analyze(&["verify", UNITS[0], UNITS[1]], &units);

    // verify loads every unit that ours reference (sysinit.target, the journal sockets and
    // what they pull in) from the host's systemd, and it reports problems in those too,
    // such as a system call name that the host's libseccomp does not know. Those lines
    // describe the host, not this repository, so only lines that name our units count.
    let ours: Vec<&str> = output
        .stdout
        .lines()
        .chain(output.stderr.lines())
        .filter(|line| UNITS.iter().any(|unit| line.contains(unit)))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify reported our units:\n{}",
        ours.join("\n")
    );
    assert_eq!(output.code(), Some(0), "{}", output.describe());
}

#[test]
fn service_exposure_within_threshold() {
    if !systemd_analyze_available() {
        return;
    }
    let fixture = Fixture::new();
    let units = install_units(&fixture);

    let threshold = format!("--threshold={EXPOSURE_THRESHOLD}");
    let output = run_systemd_analyze(&["security", "--offline=yes", &threshold, UNITS[0]], &units);
    assert_eq!(
        output.code(),
        Some(0),
        "the exposure rose above {EXPOSURE_THRESHOLD} tenths: update SECURITY.md and \
         this threshold only if the new directive is intended\n{}",
        output.describe()
    );
}

#[test]
fn stop_timeout_exceeds_shutdown_grace() {
    let exec_start = service_setting("ExecStart");
    let grace_ms: u64 = exec_start
        .split_whitespace()
        .find_map(|argument| argument.strip_prefix("shutdown_grace_ms="))
        .unwrap_or_else(|| panic!("ExecStart does not set shutdown_grace_ms: {exec_start}"))
        .parse()
        .unwrap();

    let timeout = service_setting("TimeoutStopSec");
    let timeout_seconds: u64 = timeout
        .strip_suffix('s')
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or_else(|| panic!("expected TimeoutStopSec in whole seconds, found {timeout}"));

    // The monitor needs time after the grace to kill and reap scripts and flush its log.
    let margin_ms = 10_000;
    assert!(
        timeout_seconds * 1000 >= grace_ms + margin_ms,
        "TimeoutStopSec={timeout} leaves less than {margin_ms} ms after \
         shutdown_grace_ms={grace_ms}"
    );
}

/// The status that RestartPreventExitStatus names must be the one the broker exits with
/// for an invalid parameter, or systemd restarts a broker that cannot start.
#[test]
fn restart_prevent_status_matches_invalid_parameter() {
    let status: i32 = service_setting("RestartPreventExitStatus").parse().unwrap();

    let output = common::run_broker_to_exit(&["shutdown_grace_ms=600001".to_string()]);
    assert_eq!(
        output.code(),
        Some(status),
        "RestartPreventExitStatus={status}\n{}",
        output.describe()
    );
}

/// A policy that does not load cannot be fixed by a restart either.
#[test]
fn restart_prevent_status_matches_invalid_policy() {
    let status: i32 = service_setting("RestartPreventExitStatus").parse().unwrap();
    let fixture = Fixture::new();
    fixture.write_policy("broken", "[command.broken]\nscript = 42\n");

    let output = common::run_broker_to_exit(&common::broker_arguments(&fixture, &[]));
    assert_eq!(
        output.code(),
        Some(status),
        "RestartPreventExitStatus={status}\n{}\nlog:\n{}",
        output.describe(),
        fixture.log()
    );
}
