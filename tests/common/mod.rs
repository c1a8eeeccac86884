//! Harness for the black-box tests: a scratch directory under /run, a broker started from
//! the built binary, a raw varlink connection, and helpers that run clients as other users.
//!
//! Everything here runs as root, because the broker must start as root to switch users.
//! [`Fixture::new`] calls [`require_root`] first, so a test run as another user fails with
//! a clear message instead of passing without checking anything.
//!
//! Each test binary uses a different part of this module, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::cell::OnceCell;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// The broker binary that cargo built for this test run.
pub const BROKER_BINARY: &str = env!("CARGO_BIN_EXE_secure_socket");

/// Placeholder in policy and script text that [`Fixture`] replaces with its directory.
pub const FIXTURE_PLACEHOLDER: &str = "@FIXTURE@";

/// Uid of `nobody`, the broker's default unprivileged user for parser children.
pub const NOBODY_UID: u32 = 65534;

/// How long the broker gets to accept its first connection.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the broker gets to exit after SIGTERM before it is killed. The broker's own
/// shutdown grace period defaults to 5 s, so this leaves room for it.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a client process may run before the harness kills it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Read timeout on raw varlink connections, so that a broker that never replies fails
/// the test instead of hanging it.
const CONNECTION_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Script that prints [`BINARY_STDOUT`] and [`BINARY_STDERR`]: a valid two-byte
/// character, bytes that are never UTF-8, a NUL, and a lone continuation byte.
pub const BINARY_SCRIPT: &str =
    "#!/bin/sh\nprintf 'caf\\303\\251 \\377\\376\\000end\\n'\nprintf 'warning \\200\\n' >&2\n";
pub const BINARY_STDOUT: &[u8] = b"caf\xc3\xa9 \xff\xfe\x00end\n";
pub const BINARY_STDERR: &[u8] = b"warning \x80\n";

/// Script that prints 64 bytes on each stream: `o` on stdout and `e` on stderr.
pub const FLOOD_SCRIPT: &str = "#!/bin/sh\n\
    printf 'oooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooo'\n\
    printf 'eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee' >&2\n";

/// A local account that tests run clients as.
#[derive(Debug, Clone, Copy)]
pub struct User {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
}

/// The web server account, the broker's typical client.
pub const WWW_DATA: User = User {
    name: "www-data",
    uid: 33,
    gid: 33,
};

/// A system account that no test policy allows.
pub const DAEMON: User = User {
    name: "daemon",
    uid: 1,
    gid: 1,
};

/// Panics unless the test process runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test starts the broker, which must run as root: run the tests as root \
         (for example `sudo -E cargo test --release -- --test-threads=2`)"
    );
}

static FIXTURE_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, root-owned directory `/run/secure_socket-test-<pid>-<n>` holding:
/// `policy/` (0755), `scripts/` (0755), `run/` (socket directory, 0755), `out/` (0777, so
/// scripts running as any user can write marker files) and `bin/` (a copy of the binary
/// that other users can execute). /run is used because the broker rejects scripts below a
/// world-writable directory such as /tmp. Drop removes the whole directory.
pub struct Fixture {
    root: PathBuf,
    client_binary: OnceCell<PathBuf>,
}

/// The commands of [`Fixture::write_output_commands`].
const OUTPUT_POLICY: &str = r#"
[command.binary]
description = "Print bytes that are not UTF-8 on both streams"
script = "@FIXTURE@/scripts/binary"
run_as = "nobody"
allow_users = ["www-data"]
capture_output = true

[command.flood]
description = "Print 64 bytes on each stream, above the limit of 16"
script = "@FIXTURE@/scripts/flood"
run_as = "nobody"
allow_users = ["www-data"]
capture_output = true
output_limit = 16
"#;

/// A policy with one command, `greet`, that www-data may run and that prints `hello`.
pub const GREET_POLICY: &str = r#"
[command.greet]
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["www-data"]
capture_output = true
"#;

/// Exit status of a broker start rejected for its parameters, its policy or the files and
/// users they name (EX_CONFIG from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

impl Fixture {
    /// Creates a fixture with [`GREET_POLICY`] and its script.
    pub fn with_greet() -> Fixture {
        Fixture::with_commands(GREET_POLICY, &[("greet", "#!/bin/sh\necho hello\n")])
    }

    /// Writes the policy file `output` with the commands `binary` ([`BINARY_SCRIPT`]) and
    /// `flood` ([`FLOOD_SCRIPT`], output_limit 16), and their scripts.
    pub fn write_output_commands(&self) {
        self.write_policy("output", OUTPUT_POLICY);
        self.write_script("binary", BINARY_SCRIPT);
        self.write_script("flood", FLOOD_SCRIPT);
    }

    /// Creates a fixture whose policy file `commands` contains `policy`, with each
    /// `(name, text)` of `scripts` written as a script.
    pub fn with_commands(policy: &str, scripts: &[(&str, &str)]) -> Fixture {
        let fixture = Fixture::new();
        fixture.write_policy("commands", policy);
        for (name, text) in scripts {
            fixture.write_script(name, text);
        }
        fixture
    }

    pub fn new() -> Fixture {
        require_root();

        let number = FIXTURE_COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = PathBuf::from(format!(
            "/run/secure_socket-test-{}-{number}",
            std::process::id()
        ));
        if root.exists() {
            fs::remove_dir_all(&root).unwrap();
        }

        make_dir(&root, 0o755);
        let fixture = Fixture {
            root,
            client_binary: OnceCell::new(),
        };
        make_dir(&fixture.policy_dir(), 0o755);
        make_dir(&fixture.scripts_dir(), 0o755);
        make_dir(&fixture.socket_dir(), 0o755);
        make_dir(&fixture.out_dir(), 0o777);
        fixture
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.root.join("policy")
    }

    pub fn scripts_dir(&self) -> PathBuf {
        self.root.join("scripts")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir().join("broker.sock")
    }

    pub fn out_dir(&self) -> PathBuf {
        self.root.join("out")
    }

    /// Path of a marker or output file that a script writes under `out/`.
    pub fn out_file(&self, name: &str) -> PathBuf {
        self.out_dir().join(name)
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("broker.log")
    }

    /// Replaces every [`FIXTURE_PLACEHOLDER`] in `text` with this fixture's directory.
    pub fn expand(&self, text: &str) -> String {
        text.replace(FIXTURE_PLACEHOLDER, &self.root.to_string_lossy())
    }

    /// Writes `policy/<name>.toml` (root-owned, 0644) after expanding the placeholder.
    pub fn write_policy(&self, name: &str, text: &str) -> PathBuf {
        let path = self.policy_dir().join(format!("{name}.toml"));
        write_file(&path, &self.expand(text), 0o644);
        path
    }

    /// Writes `scripts/<name>` (root-owned, 0755) after expanding the placeholder.
    pub fn write_script(&self, name: &str, text: &str) -> PathBuf {
        let path = self.scripts_dir().join(name);
        write_file(&path, &self.expand(text), 0o755);
        path
    }

    /// Copies a file into the fixture (0644) so that other users can read it even when
    /// the source tree sits in a directory they cannot enter.
    pub fn copy_in(&self, source: &Path, name: &str) -> PathBuf {
        let target = self.root.join(name);
        fs::copy(source, &target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        target
    }

    /// Copies the broker binary to `bin/` (0755) on first use and returns that path, so
    /// that www-data and daemon can execute it even when the cargo target directory sits
    /// below a directory they cannot enter.
    pub fn client_binary(&self) -> &Path {
        self.client_binary.get_or_init(|| {
            let dir = self.root.join("bin");
            make_dir(&dir, 0o755);
            let target = dir.join("secure_socket");
            fs::copy(BROKER_BINARY, &target).unwrap();
            fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
            target
        })
    }

    /// Returns the broker's log file, or a note that it does not exist.
    pub fn log(&self) -> String {
        read_or_note(&self.log_path())
    }
}

impl Default for Fixture {
    fn default() -> Fixture {
        Fixture::new()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.root) {
            eprintln!("failed to remove fixture {}: {error}", self.root.display());
        }
    }
}

fn make_dir(path: &Path, mode: u32) {
    fs::DirBuilder::new().mode(mode).create(path).unwrap();
    // The umask may have cleared bits of `mode`, so set it again explicitly.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn write_file(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn read_or_note(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| format!("<{}: {error}>", path.display()))
}

/// A broker process started by the test. Drop sends SIGTERM to the pid it started, waits
/// up to 15 s (then sends SIGKILL to that pid) and checks that the socket file is gone.
pub struct Broker {
    child: Child,
    exit_status: Option<ExitStatus>,
    socket_path: PathBuf,
    log_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Broker {
    /// Starts the broker on the fixture with the default test parameters, each replaced
    /// by an entry of `params` with the same key, and waits until its socket accepts a
    /// connection.
    pub fn start(fixture: &Fixture, params: &[(&str, &str)]) -> Broker {
        Broker::start_with_env(fixture, params, &[])
    }

    /// Like [`Broker::start`], with extra environment variables for the broker process.
    pub fn start_with_env(
        fixture: &Fixture,
        params: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Broker {
        Broker::start_with_command(fixture, params, env, |_| {})
    }

    /// Like [`Broker::start_with_env`], with `configure` applied to the command just before
    /// the broker is spawned, for example to hand the broker an extra descriptor.
    pub fn start_with_command(
        fixture: &Fixture,
        params: &[(&str, &str)],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Broker {
        let arguments = broker_arguments(fixture, params);
        let stdout_path = fixture.path().join("broker.stdout");
        let stderr_path = fixture.path().join("broker.stderr");
        let mut command = Command::new(BROKER_BINARY);
        command
            .args(&arguments)
            .envs(env.iter().copied())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap());
        configure(&mut command);
        let child = command.spawn().unwrap();

        // From here on, Drop stops the broker even when waiting below panics.
        let mut broker = Broker {
            child,
            exit_status: None,
            socket_path: socket_path_from(&arguments),
            log_path: fixture.log_path(),
            stdout_path,
            stderr_path,
        };
        broker.wait_until_ready();
        broker
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Opens a raw varlink connection as root.
    pub fn connect(&self) -> VarlinkConnection {
        VarlinkConnection::connect(&self.socket_path)
    }

    /// Returns the log file, stdout and stderr of the broker, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- broker log ---\n{}\n--- broker stdout ---\n{}\n--- broker stderr ---\n{}",
            read_or_note(&self.log_path),
            read_or_note(&self.stdout_path),
            read_or_note(&self.stderr_path),
        )
    }

    /// Sends SIGTERM and waits for the broker to exit. After the deadline the broker gets
    /// SIGKILL, which shows as a signal in the returned status.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.exit_status {
            return status;
        }

        if let Ok(Some(status)) = self.child.try_wait() {
            self.exit_status = Some(status);
            return status;
        }

        let pid = Pid::from_raw(self.pid());
        // ESRCH only means that the broker exited on its own, and the wait below reaps it.
        let _ = signal::kill(pid, Signal::SIGTERM);
        let status = match wait_with_deadline(&mut self.child, BROKER_STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                eprintln!(
                    "broker pid {} did not exit within {BROKER_STOP_TIMEOUT:?} of SIGTERM; \
                     sending SIGKILL",
                    pid
                );
                let _ = signal::kill(pid, Signal::SIGKILL);
                self.child.wait().unwrap()
            }
        };
        self.exit_status = Some(status);
        status
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exit_status = Some(status);
                panic!(
                    "broker exited with {status} before it accepted a connection\n{}",
                    self.diagnostics()
                );
            }

            if UnixStream::connect(&self.socket_path).is_ok() {
                return;
            }

            assert!(
                Instant::now() < deadline,
                "broker socket {} did not accept a connection within {BROKER_START_TIMEOUT:?}\n{}",
                self.socket_path.display(),
                self.diagnostics()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let status = self.terminate();
        if thread::panicking() {
            // A second panic would abort the test binary and hide the first message.
            return;
        }

        assert!(
            !self.socket_path.exists(),
            "broker left its socket {} behind after exiting with {status}\n{}",
            self.socket_path.display(),
            self.diagnostics()
        );
    }
}

/// Returns the default test parameters with `overrides` applied, as `key=value` arguments.
pub fn broker_arguments(fixture: &Fixture, overrides: &[(&str, &str)]) -> Vec<String> {
    let mut params: Vec<(String, String)> = vec![
        (
            "socket_path".into(),
            fixture.socket_path().to_string_lossy().into(),
        ),
        (
            "policy_dir".into(),
            fixture.policy_dir().to_string_lossy().into(),
        ),
        (
            "log_file".into(),
            fixture.log_path().to_string_lossy().into(),
        ),
        ("verbosity".into(), "debug".into()),
        ("socket_permissions".into(), "0666".into()),
    ];

    for (key, value) in overrides {
        match params.iter_mut().find(|(existing, _)| existing == key) {
            Some(entry) => entry.1 = (*value).to_string(),
            None => params.push(((*key).to_string(), (*value).to_string())),
        }
    }

    params
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

fn socket_path_from(arguments: &[String]) -> PathBuf {
    arguments
        .iter()
        .find_map(|argument| argument.strip_prefix("socket_path="))
        .map(PathBuf::from)
        .unwrap()
}

/// Runs the broker binary with `arguments` as given (no defaults added) and waits up to
/// 10 s for it to exit. Tests of parameter errors use it, because those must stop the
/// broker before it starts.
pub fn run_broker_to_exit(arguments: &[String]) -> ProcessOutput {
    let mut command = Command::new(BROKER_BINARY);
    command.args(arguments).current_dir("/");
    spawn(command).finish(Duration::from_secs(10))
}

/// A client end of the varlink protocol: JSON messages, each followed by a NUL byte.
pub struct VarlinkConnection {
    stream: UnixStream,
    /// Bytes read past the end of the last returned frame.
    pending: Vec<u8>,
}

impl VarlinkConnection {
    pub fn connect(socket_path: &Path) -> VarlinkConnection {
        let stream = UnixStream::connect(socket_path).unwrap_or_else(|error| {
            panic!("failed to connect to {}: {error}", socket_path.display())
        });
        stream
            .set_read_timeout(Some(CONNECTION_READ_TIMEOUT))
            .unwrap();
        VarlinkConnection {
            stream,
            pending: Vec::new(),
        }
    }

    /// Writes raw bytes, framing and all, exactly as given.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Writes one message and its terminating NUL.
    pub fn send(&mut self, message: &Value) {
        let mut bytes = serde_json::to_vec(message).unwrap();
        bytes.push(0);
        self.send_bytes(&bytes).unwrap();
    }

    /// Reads one frame without its NUL. Returns `Ok(None)` when the broker closed the
    /// connection before a complete frame arrived.
    pub fn receive_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.pending.iter().position(|&byte| byte == 0) {
                let frame = self.pending[..end].to_vec();
                self.pending.drain(..=end);
                return Ok(Some(frame));
            }

            let mut buffer = [0u8; 4096];
            let count = self.stream.read(&mut buffer)?;
            if count == 0 {
                return Ok(None);
            }
            self.pending.extend_from_slice(&buffer[..count]);
        }
    }

    /// Reads one message and parses it as JSON. Panics when the connection ends first.
    pub fn receive(&mut self) -> Value {
        let frame = match self.receive_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("broker closed the connection instead of replying"),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                panic!("broker sent no reply within {CONNECTION_READ_TIMEOUT:?}")
            }
            Err(error) => panic!("failed to read the broker's reply: {error}"),
        };
        serde_json::from_slice(&frame).unwrap_or_else(|error| {
            panic!(
                "broker sent a frame that is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&frame)
            )
        })
    }

    /// Sends one method call and returns the reply message.
    pub fn call(&mut self, method: &str, parameters: Value) -> Value {
        self.send(&json!({ "method": method, "parameters": parameters }));
        self.receive()
    }

    /// Calls `org.securesocket.Broker.Run`.
    pub fn run(&mut self, command: &str, arguments: Value) -> Value {
        self.call(
            "org.securesocket.Broker.Run",
            json!({ "command": command, "arguments": arguments }),
        )
    }

    /// Returns whether the broker closes the connection within 5 s: a read returns end of
    /// file or a connection reset (Linux reports the reset when the broker closed with
    /// unread bytes still queued).
    pub fn is_closed_by_peer(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buffer = [0u8; 4096];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => return true,
                // Discard whatever else the broker sent before closing.
                Ok(_) => continue,
                Err(error) => return error.kind() == io::ErrorKind::ConnectionReset,
            }
        }
    }
}

/// Returns the varlink error name of a reply, if it is an error.
pub fn error_name(reply: &Value) -> Option<&str> {
    reply.get("error").and_then(Value::as_str)
}

/// Returns the `parameters` of a reply, or JSON null when it has none.
pub fn parameters(reply: &Value) -> &Value {
    reply.get("parameters").unwrap_or(&Value::Null)
}

/// Exit status and output of a finished process.
#[derive(Debug)]
pub struct ProcessOutput {
    pub status: ExitStatus,
    /// Stdout as text, with bytes that are not UTF-8 replaced by U+FFFD.
    pub stdout: String,
    pub stderr: String,
    /// Stdout exactly as the process wrote it.
    pub stdout_bytes: Vec<u8>,
    pub stderr_bytes: Vec<u8>,
}

impl ProcessOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Formats the status and whole output, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Parses stdout as one JSON value (the output of `--json`).
    pub fn stdout_json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|error| {
            panic!(
                "client output is not one JSON value ({error})\n{}",
                self.describe()
            )
        })
    }
}

/// Returns the parameters of a reply printed by `--json`. The client contract specifies
/// "the whole reply object", which may mean the envelope `{"parameters": {...}}` or the
/// bare parameters, so both are accepted.
pub fn json_reply_parameters(reply: &Value) -> &Value {
    let is_envelope = reply.as_object().is_some_and(|object| {
        object.contains_key("error") || (object.len() == 1 && object.contains_key("parameters"))
    });
    if is_envelope {
        parameters(reply)
    } else {
        reply
    }
}

/// A process started by the harness, whose stdout and stderr two threads read.
pub struct RunningProcess {
    child: Child,
    stdout_reader: JoinHandle<Vec<u8>>,
    stderr_reader: JoinHandle<Vec<u8>>,
}

impl RunningProcess {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits up to `timeout` for the process to exit. After that it kills the process by
    /// pid and panics.
    pub fn finish(mut self, timeout: Duration) -> ProcessOutput {
        let status = wait_with_deadline(&mut self.child, timeout);
        let timed_out = status.is_none();
        let status = match status {
            Some(status) => status,
            None => {
                let _ = signal::kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
                self.child.wait().unwrap()
            }
        };

        let stdout_bytes = self.stdout_reader.join().unwrap();
        let stderr_bytes = self.stderr_reader.join().unwrap();
        let output = ProcessOutput {
            status,
            stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
            stderr: String::from_utf8_lossy(&stderr_bytes).into_owned(),
            stdout_bytes,
            stderr_bytes,
        };
        assert!(
            !timed_out,
            "process did not exit within {timeout:?} and was killed\n{}",
            output.describe()
        );
        output
    }
}

/// Starts `command` with piped stdout and stderr and no stdin.
pub fn spawn(command: Command) -> RunningProcess {
    spawn_with_stdin(command, Stdio::null())
}

/// Like [`spawn`], with `stdin` as the process's standard input.
pub fn spawn_with_stdin(mut command: Command, stdin: Stdio) -> RunningProcess {
    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A binary that the harness has just copied can be briefly busy (ETXTBSY): another
    // test thread may have forked while the copy was open for writing, and its child
    // holds that descriptor until it calls exec. Retry for a short while.
    let mut attempts = 0;
    let mut child = loop {
        match command.spawn() {
            Ok(child) => break child,
            Err(error) if error.kind() == io::ErrorKind::ExecutableFileBusy && attempts < 50 => {
                attempts += 1;
                thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("failed to start {command:?}: {error}"),
        }
    };
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    RunningProcess {
        child,
        stdout_reader: thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stdout.read_to_end(&mut bytes);
            bytes
        }),
        stderr_reader: thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stderr.read_to_end(&mut bytes);
            bytes
        }),
    }
}

/// Runs the repository's install.sh with `DESTDIR=destdir` and the test binary as
/// BINARY, and waits for it.
pub fn run_install_script(destdir: impl AsRef<std::ffi::OsStr>) -> ProcessOutput {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh");
    let mut command = Command::new("/bin/sh");
    command
        .arg(script)
        .env("DESTDIR", destdir)
        .env("BINARY", BROKER_BINARY)
        .current_dir("/");
    spawn(command).finish(CLIENT_TIMEOUT)
}

/// Builds a command that runs `program` as `user` (uid, gid, no supplementary groups) with an
/// environment of only PATH and `env`, in `/`.
pub fn command_as(user: User, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .current_dir("/")
        .uid(user.uid)
        .gid(user.gid);
    command
}

/// Starts the client command line as `user`: `secure_socket SUBCOMMAND --socket PATH
/// REST...`, where `args` is `[SUBCOMMAND, REST...]`.
pub fn spawn_client_as(fixture: &Fixture, user: User, args: &[&str]) -> RunningProcess {
    let socket = fixture.socket_path();
    let socket = socket.to_string_lossy();
    let mut full_args = vec![args[0], "--socket", &socket];
    full_args.extend_from_slice(&args[1..]);
    spawn(command_as(user, fixture.client_binary(), &full_args, &[]))
}

/// Runs the client command line as `user` (see [`spawn_client_as`]) and waits for it.
pub fn run_client_as(fixture: &Fixture, user: User, args: &[&str]) -> ProcessOutput {
    spawn_client_as(fixture, user, args).finish(CLIENT_TIMEOUT)
}

fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `condition` every 20 ms until it is true or `timeout` passes, and returns its
/// last value.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Returns the pids of the processes whose parent is `parent`, read from /proc/*/stat.
pub fn child_pids(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // The process may exit between read_dir and this read.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if stat_field(&stat, 1).and_then(|ppid| ppid.parse::<i32>().ok()) == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// Returns field `index` (0 = state) after the command name of a /proc/PID/stat line. The name
/// is in parentheses and may itself contain spaces and parentheses, so parsing starts
/// after the last `)`.
fn stat_field(stat: &str, index: usize) -> Option<&str> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(index)
}

/// Returns the value of one `Key:` line of /proc/PID/status, whitespace-trimmed.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == key).then(|| value.trim().to_string())
    })
}

/// Returns whether `pid` is a live process. A zombie counts as dead: it has been killed
/// and only waits for a parent to reap it, and the init process of some containers never
/// reaps orphans.
pub fn process_is_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_field(&stat, 0) != Some("Z"),
        Err(_) => false,
    }
}

impl VarlinkConnection {
    /// Wraps a stream that the test connected and used itself, with the usual read
    /// timeout.
    pub fn from_stream(stream: UnixStream) -> VarlinkConnection {
        stream
            .set_read_timeout(Some(CONNECTION_READ_TIMEOUT))
            .unwrap();
        VarlinkConnection {
            stream,
            pending: Vec::new(),
        }
    }

    /// Returns the socket itself, for tests that shut down one direction, change its
    /// timeouts or look up the parser child at its other end.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

impl Broker {
    /// Waits up to `timeout` for the broker to exit without signalling it, for tests
    /// that sent the signal themselves. Returns `None` while it still runs; Drop then
    /// stops it as usual.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit_status {
            return Some(status);
        }
        let status = wait_with_deadline(&mut self.child, timeout)?;
        self.exit_status = Some(status);
        Some(status)
    }
}

/// Returns the resident set size of `pid` in KiB (`VmRSS` of /proc/PID/status), or
/// `None` when the process is gone.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    status_field(pid, "VmRSS")?
        .strip_suffix(" kB")?
        .trim()
        .parse()
        .ok()
}

/// Returns the targets of the open descriptors of `pid` (`socket:[N]`, paths), empty
/// when the process is gone.
pub fn descriptor_targets(pid: i32) -> Vec<String> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        // A descriptor may be closed between read_dir and read_link.
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect()
}

/// Returns the pids of the broker's parser children that are idle: confined (running as
/// `nobody` under seccomp) and holding only their channel and the audit queue. A child
/// that serves a connection holds that connection as a third descriptor.
pub fn idle_parser_children(broker: &Broker) -> Vec<i32> {
    let nobody = NOBODY_UID.to_string();
    child_pids(broker.pid())
        .into_iter()
        .filter(|&pid| {
            let runs_as_nobody = status_field(pid, "Uid")
                .is_some_and(|uids| uids.split_whitespace().all(|uid| uid == nobody));
            runs_as_nobody
                && status_field(pid, "Seccomp").as_deref() == Some("2")
                && descriptor_targets(pid).len() == 2
        })
        .collect()
}

/// Returns the inode of the unix socket connected to the one with inode `inode`, as `ss`
/// from iproute2 reads it from the kernel (sock_diag), or `None` when `ss` does not list
/// `inode`.
fn unix_peer_inode(inode: u64) -> Option<u64> {
    let output = Command::new("ss")
        .args(["--unix", "--all", "--numeric", "--no-header"])
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "failed to run ss, which finds the peer of a unix socket \
                 (apt-get install iproute2): {error}"
            )
        });
    assert!(
        output.status.success(),
        "ss failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let inode = inode.to_string();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            // Netid, State, Recv-Q, Send-Q, local address, local inode, peer address, peer
            // inode. The addresses of the sockets these tests use contain no spaces.
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(5) != Some(&inode.as_str()) {
                return None;
            }
            fields.get(7)?.parse().ok()
        })
}

/// Returns the pid of the parser child that holds the other end of `client`. Panics
/// when no child of the broker holds it within 10 s.
pub fn serving_child_pid(broker: &Broker, client: &UnixStream) -> i32 {
    let client_inode = nix::sys::stat::fstat(client).unwrap().st_ino;
    let broker_command_line = fs::read(format!("/proc/{}/cmdline", broker.pid())).unwrap();
    let mut found = None;
    let assigned = wait_for(Duration::from_secs(10), || {
        let Some(peer) = unix_peer_inode(client_inode) else {
            return false;
        };
        let link = format!("socket:[{peer}]");
        // A child between fork and exec still has the broker's command line and a copy
        // of every descriptor of the broker, so it is left out.
        found = child_pids(broker.pid())
            .into_iter()
            .filter(|&pid| {
                fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default() != broker_command_line
            })
            .find(|&pid| descriptor_targets(pid).contains(&link));
        found.is_some()
    });
    assert!(
        assigned,
        "no child of broker pid {} holds the other end of client socket {client_inode}\n{}",
        broker.pid(),
        broker.diagnostics()
    );
    found.unwrap()
}
