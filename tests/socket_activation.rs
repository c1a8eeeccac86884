//! Socket activation: the broker started the way systemd starts it, with a listening
//! socket on descriptor 3, LISTEN_FDS=1 and LISTEN_PID set to its own pid.
//!
//! Run as root: `cargo test --release -- --test-threads=2`.

mod common;

use common::{BROKER_BINARY, Fixture, WWW_DATA, broker_arguments, run_client_as};
use std::os::fd::{AsRawFd, RawFd};
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

#[test]
fn activated_socket_that_is_not_listening_is_rejected() {
    let fixture = Fixture::new();
    fixture.write_policy("hello.toml", POLICY);
    fixture.write_script("hello", "#!/bin/sh\necho hello\n");
    // A bound unix stream socket that was never put into the listening state.
    let passed = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
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
