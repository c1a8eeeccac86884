//! Socket activation: the broker started the way systemd starts it, with a listening
//! socket on descriptor 3, LISTEN_FDS=1 and LISTEN_PID set to its own pid.
//!
//! Run as root: `cargo test --release -- --test-threads=2`.

mod common;

use common::{BROKER_BINARY, Fixture, WWW_DATA, broker_arguments, run_client_as};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const POLICY: &str = r#"
[command.hello]
script = "@FIXTURE@/scripts/hello"
run_as = "nobody"
allow_users = ["www-data", "root"]
capture_output = true
"#;

/// Builds a broker command that receives `passed` as descriptor 3. It runs through
/// /bin/sh so that LISTEN_PID can name the broker's own pid: `exec` keeps the shell's
/// pid, which `$$` gives.
fn activated_command(fixture: &Fixture, passed: RawFd) -> Command {
    // socket_path names a file that must stay absent: the passed socket is used instead.
    let unused = fixture.socket_dir().join("unused.sock");
    let unused = unused.to_string_lossy();
    let arguments = broker_arguments(fixture, &[("socket_path", unused.as_ref())]);
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(BROKER_BINARY)
        .args(&arguments)
        .stdin(Stdio::null());
    // SAFETY: dup2 and fcntl between fork and exec are async-signal-safe; `passed` stays
    // open in the test until the command has been spawned.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set, so clear it directly then.
            let result = if passed == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(passed, 3)
            };
            if result == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

#[test]
fn activated_socket_serves_www_data() {
    let fixture = Fixture::new();
    fixture.write_policy("hello.toml", POLICY);
    fixture.write_script(
        "hello",
        "#!/bin/sh\necho \"hello $SECURE_SOCKET_PEER_UID\"\n",
    );
    let path = fixture.socket_dir().join("activated.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let mut broker = activated_command(&fixture, listener.as_raw_fd())
        .spawn()
        .expect("start the broker");
    drop(listener);

    let path_text = path.display().to_string();
    let output = run_client_as(
        &fixture,
        WWW_DATA,
        &["call", "--socket", &path_text, "hello"],
    );
    let stdout = output.stdout.clone();

    let pid = nix::unistd::Pid::from_raw(broker.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = broker.wait().expect("wait for the broker");

    assert_eq!(
        output.code(),
        Some(0),
        "{}\nlog:\n{}",
        output.describe(),
        fixture.log()
    );
    assert_eq!(stdout.trim(), "hello 33");
    assert!(
        status.success(),
        "broker exit: {status:?}\nlog:\n{}",
        fixture.log()
    );
    assert!(
        path.exists(),
        "the broker must leave the passed socket's file alone"
    );
    assert!(
        !fixture.socket_dir().join("unused.sock").exists(),
        "the broker must not create its own socket when one is passed"
    );
}

/// Creates a fixture with the hello policy and an unbound unix stream socket.
fn fixture_and_stream_socket() -> (Fixture, OwnedFd) {
    let fixture = Fixture::new();
    fixture.write_policy("hello.toml", POLICY);
    fixture.write_script("hello", "#!/bin/sh\necho hello\n");
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    (fixture, socket)
}

#[test]
fn activated_socket_that_is_not_listening_is_rejected() {
    // A bound unix stream socket that was never put into the listening state.
    let (fixture, passed) = fixture_and_stream_socket();
    let path = fixture.socket_dir().join("not-listening.sock");
    let address = nix::sys::socket::UnixAddr::new(&path).expect("address");
    nix::sys::socket::bind(passed.as_raw_fd(), &address).expect("bind");
    let output = activated_command(&fixture, passed.as_raw_fd())
        .stderr(Stdio::piped())
        .output()
        .expect("run the broker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("not listening"), "stderr: {stderr}");
}

/// Binds `passed` to `address`, listens, and runs the broker with it as descriptor 3. A
/// broker that accepted the socket would keep running, so it gets a bounded time.
fn run_with_listening_socket(
    fixture: &Fixture,
    passed: &OwnedFd,
    address: &nix::sys::socket::UnixAddr,
) -> common::ProcessOutput {
    nix::sys::socket::bind(passed.as_raw_fd(), address).expect("bind");
    nix::sys::socket::listen(passed, nix::sys::socket::Backlog::new(4).unwrap()).expect("listen");
    common::spawn(activated_command(fixture, passed.as_raw_fd()))
        .finish(std::time::Duration::from_secs(10))
}

#[test]
fn activated_abstract_socket_is_rejected() {
    let (fixture, passed) = fixture_and_stream_socket();
    let name = format!("secure_socket-test-{}", std::process::id());
    let address = nix::sys::socket::UnixAddr::new_abstract(name.as_bytes()).expect("address");
    let output = run_with_listening_socket(&fixture, &passed, &address);
    let stderr = &output.stderr;

    assert_eq!(output.code(), Some(78), "stderr: {stderr}");
    assert!(stderr.contains("abstract unix socket"), "stderr: {stderr}");
    assert!(stderr.contains(&name), "stderr: {stderr}");
    assert!(stderr.contains("no file mode"), "stderr: {stderr}");
}

/// Returns the first log line that contains every one of `patterns`.
fn line_with<'log>(log: &'log str, patterns: &[&str]) -> Option<&'log str> {
    log.lines()
        .find(|line| patterns.iter().all(|pattern| line.contains(pattern)))
}

#[test]
fn activated_socket_differences_are_logged() {
    let fixture = Fixture::new();
    fixture.write_policy("hello.toml", POLICY);
    fixture.write_script("hello", "#!/bin/sh\necho hello\n");
    // The parameters set mode 0666 and group root for unused.sock, and the passed
    // socket has mode 0640 and group www-data at another path.
    let path = fixture.socket_dir().join("activated.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    std::os::unix::fs::chown(&path, Some(0), Some(WWW_DATA.gid)).expect("chown");
    let mut broker = activated_command(&fixture, listener.as_raw_fd())
        .spawn()
        .expect("start the broker");
    drop(listener);

    let started = common::wait_for(std::time::Duration::from_secs(10), || {
        fixture.log().contains("broker started")
    });
    let pid = nix::unistd::Pid::from_raw(broker.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    broker.wait().expect("wait for the broker");
    let log = fixture.log();
    assert!(started, "log:\n{log}");

    let path_text = path.display().to_string();
    let unused = fixture
        .socket_dir()
        .join("unused.sock")
        .display()
        .to_string();
    let path_warning = line_with(&log, &["WARN", "not at socket_path"])
        .unwrap_or_else(|| panic!("no warning about the path:\n{log}"));
    assert!(path_warning.contains(&path_text), "{path_warning}");
    assert!(path_warning.contains(&unused), "{path_warning}");

    let mode_warning = line_with(&log, &["WARN", "socket_permissions"])
        .unwrap_or_else(|| panic!("no warning about the mode:\n{log}"));
    assert!(
        mode_warning.contains("socket_mode=\"0640\""),
        "{mode_warning}"
    );
    assert!(
        mode_warning.contains("socket_permissions=\"0666\""),
        "{mode_warning}"
    );

    let group_warning = line_with(&log, &["WARN", "SocketGroup="])
        .unwrap_or_else(|| panic!("no warning about the group:\n{log}"));
    assert!(
        group_warning.contains(&format!("socket_gid={}", WWW_DATA.gid)),
        "{group_warning}"
    );
    assert!(
        group_warning.contains("expected_socket_gid=0"),
        "{group_warning}"
    );

    let banner = line_with(&log, &["broker started"]).unwrap();
    assert!(
        banner.contains(&format!("socket_path={path_text}")),
        "{banner}"
    );
    assert!(banner.contains("socket_uid=0"), "{banner}");
    assert!(
        banner.contains(&format!("socket_gid={}", WWW_DATA.gid)),
        "{banner}"
    );
    assert!(banner.contains("socket_mode=\"0640\""), "{banner}");
}

#[test]
fn activation_without_descriptor_is_rejected() {
    let fixture = Fixture::new();
    fixture.write_policy("hello.toml", POLICY);
    let unused = fixture.socket_dir().join("unused.sock");
    let unused = unused.to_string_lossy();
    let arguments = broker_arguments(&fixture, &[("socket_path", unused.as_ref())]);
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("exec 3>&-; LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(BROKER_BINARY)
        .args(&arguments);

    let output = common::spawn(command).finish(std::time::Duration::from_secs(10));
    let stderr = &output.stderr;

    assert_eq!(output.code(), Some(78), "stderr: {stderr}");
    assert!(
        stderr.contains("descriptor 3 is not open"),
        "stderr: {stderr}"
    );
}

#[test]
fn activated_socket_in_writable_directory_is_rejected() {
    let (fixture, passed) = fixture_and_stream_socket();
    let directory = fixture.path().join("open");
    std::fs::create_dir(&directory).unwrap();
    std::fs::set_permissions(
        &directory,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let address = nix::sys::socket::UnixAddr::new(&directory.join("passed.sock")).expect("address");
    let output = run_with_listening_socket(&fixture, &passed, &address);
    let stderr = &output.stderr;

    assert_eq!(output.code(), Some(78), "stderr: {stderr}");
    assert!(stderr.contains("writable by"), "stderr: {stderr}");
}
