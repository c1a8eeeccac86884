//! The harness of the hostile child tests: a fixture with a policy, scripts and a real
//! [`Shared`], and a session in which the test plays the parser child.
//!
//! A session creates its own SOCK_SEQPACKET socketpair and starts a stand-in process
//! (`sleep`) in place of the parser child, then runs `session::serve_child` on a thread
//! with the monitor's end of the pair. The test owns the other end. The stand-in never
//! touches the channel. It gives `serve_child` a real process to kill, and the test reads
//! its exit status with waitid to tell whether `serve_child` sent SIGKILL.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, mpsc};
use std::thread::JoinHandle;

use crate::sys::spawn::Process;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use crate::audit::SessionRegistry;
use crate::child::ChildSettings;
use crate::config::Config;
use crate::monitor::{Shared, lock, pool, reuse, runner, session};
use crate::policy::{
    ArgKind, ArgSpec, ArgValue, Command, CommandSpec, Pattern, Peer, Policy, Rlimits, RunAs,
    Template, TemplatePart,
};
use crate::protocol::channel::{self, ChildMessage, MAX_MESSAGE_BYTES, MonitorMessage};
use crate::sandbox::SandboxMode;

/// Peer uid that may run `mark` and `bulk` (www-data).
pub(super) const ALLOWED_UID: u32 = 33;
/// Peer uid that may run nothing (daemon).
pub(super) const UNLISTED_UID: u32 = 1;
/// The only peer uid that may run `restricted` (bin).
const RESTRICTED_UID: u32 = 2;
/// Every script runs as the user nobody.
pub(super) const NOBODY: u32 = 65534;
/// Names of the padding arguments of `bulk`, which let an Exec reach the message limit.
pub(super) const PADDINGS: [&str; 4] = ["pad_a", "pad_b", "pad_c", "pad_d"];

/// Limit for a reply and for a session to end. Generous, because both cores may be busy.
pub(super) const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Limit for `serve_child` to kill the stand-in once the test sent the message that
/// should end the session. Nothing else signals the stand-in before the session is
/// dropped, and its sleep outlasts every test.
pub(super) const KILL_LIMIT: Duration = Duration::from_secs(1);

/// Program run as the stand-in parser child.
const STAND_IN_PROGRAM: &str = "/usr/bin/sleep";
/// Seconds the stand-in sleeps: longer than any test takes, so a stand-in that is gone
/// was killed.
const STAND_IN_SECONDS: &str = "600";

/// Index of the next fixture of this test process.
static NEXT_FIXTURE: AtomicUsize = AtomicUsize::new(0);

fn fixture_dir(test_pid: u32, index: usize) -> PathBuf {
    PathBuf::from(format!("/run/secure_socket-hostile-{test_pid}-{index}"))
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "hostile child tests must run as root: they create directories under /run and run \
         scripts as nobody"
    );
}

/// Returns the script of every command: `$1` names the marker file, and `$2`, when
/// given, is a delay in seconds before the marker is written.
fn marker_script(out: &Path) -> String {
    format!(
        "#!/bin/sh\nif [ -n \"$2\" ]; then sleep \"$2\"; fi\n: > '{}/'\"$1\"\n",
        out.display()
    )
}

fn argument(name: &str) -> Template {
    Template {
        parts: vec![TemplatePart::Argument(name.to_string())],
    }
}

fn arg_spec(name: &str, kind: ArgKind, required: bool) -> ArgSpec {
    ArgSpec {
        name: name.to_string(),
        description: String::new(),
        kind,
        required,
        sensitive: false,
        allow_leading_dash: false,
        allow_newline: false,
        allow_control: false,
    }
}

/// Returns the required `marker` argument: 1 to 16 lowercase letters.
fn marker_arg() -> ArgSpec {
    let kind = ArgKind::String {
        max_length: 16,
        pattern: Some(Pattern::new("[a-z]{1,16}").unwrap()),
        charset: None,
    };
    arg_spec("marker", kind, true)
}

fn command(name: &str, script: &Path, arguments: Vec<ArgSpec>, allow_users: Vec<u32>) -> Command {
    let mut arguments = arguments;
    arguments.sort_by(|a, b| a.name.cmp(&b.name));
    Command {
        spec: CommandSpec {
            name: name.to_string(),
            description: String::new(),
            arguments,
            timeout_ms: 10_000,
            capture_output: false,
            output_limit: 0,
            stdin_limit: 0,
            max_concurrent: 4,
            rate_limit: None,
        },
        script: script.to_path_buf(),
        run_as: RunAs {
            user: "nobody".to_string(),
            uid: NOBODY,
            gid: NOBODY,
            groups: Vec::new(),
        },
        allow_users,
        allow_groups: Vec::new(),
        allow_executables: Vec::new(),
        argv: vec![argument("marker"), argument("delay")],
        env: Vec::new(),
        rlimits: Rlimits::default(),
        capabilities: None,
        // One slot, so that a slot leaked by a hostile session makes the next run Busy.
        max_concurrent: 1,
        rate_limit: None,
        origin: "hostile_child_tests".to_string(),
    }
}

/// Builds the policy: `mark` (marker, optional delay 0 to 2) and `bulk` (marker and four
/// paddings of up to 64 KiB) for uid 33, `restricted` for uid 2 only, and `php_only` for
/// uid 33 but only from /usr/bin/php.
fn build_policy(script: &Path) -> Policy {
    let delay = arg_spec("delay", ArgKind::Integer { min: 0, max: 2 }, false);
    let mark = command("mark", script, vec![marker_arg(), delay], vec![ALLOWED_UID]);

    let mut bulk_arguments = vec![marker_arg()];
    for name in PADDINGS {
        let kind = ArgKind::String {
            max_length: channel::MAX_VALUE_BYTES,
            pattern: None,
            charset: None,
        };
        bulk_arguments.push(arg_spec(name, kind, false));
    }
    let bulk = command("bulk", script, bulk_arguments, vec![ALLOWED_UID]);

    let restricted = command(
        "restricted",
        script,
        vec![marker_arg()],
        vec![RESTRICTED_UID],
    );

    let mut php_only = command("php_only", script, vec![marker_arg()], vec![ALLOWED_UID]);
    php_only.allow_executables = vec![PathBuf::from("/usr/bin/php")];

    Policy {
        commands: [mark, bulk, restricted, php_only]
            .into_iter()
            .map(|command| (command.spec.name.clone(), command))
            .collect(),
    }
}

/// Returns a peer identity as the monitor would record it from the kernel.
pub(super) fn peer(uid: u32) -> Peer {
    Peer {
        uid,
        gid: uid,
        pid: std::process::id() as i32,
        groups: Vec::new(),
        exe: None,
    }
}

/// Returns a valid Exec of `mark` that writes `marker`.
pub(super) fn mark_exec(marker: &str) -> ChildMessage {
    ChildMessage::Exec {
        command: "mark".to_string(),
        arguments: vec![("marker".to_string(), ArgValue::Str(marker.to_string()))],
        stdin: Vec::new(),
    }
}

/// Returns the default configuration of a fixture: a request timeout of 1 s, so that
/// `serve_child`'s idle limit (2 * request_timeout + 5 s) is 7 s.
pub(super) fn test_config() -> Config {
    Config {
        request_timeout: Duration::from_secs(1),
        ..Config::default()
    }
}

/// Returns the names of the commands the current policy offers `peer`, which is what
/// `session::assign` puts in the Assign message.
pub(super) fn offered_commands(shared: &Shared, peer: &Peer) -> Vec<String> {
    shared
        .current_policy()
        .specs_for(peer)
        .into_iter()
        .map(|spec| spec.name)
        .collect()
}

/// A root-owned directory under /run holding the script and its out/ directory (mode
/// 0777, so that the user nobody can write markers), and a [`Shared`] over the policy.
/// Dropping it removes the directory.
pub(super) struct Fixture {
    _dir: FixtureDir,
    out: PathBuf,
    pub(super) shared: Arc<Shared>,
}

/// Removes a fixture directory when dropped, also when a test panics.
struct FixtureDir(PathBuf);

impl Drop for FixtureDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Fixture {
    pub(super) fn new() -> Fixture {
        Fixture::with_config(test_config())
    }

    pub(super) fn with_config(config: Config) -> Fixture {
        require_root();
        let index = NEXT_FIXTURE.fetch_add(1, Ordering::Relaxed);
        let path = fixture_dir(std::process::id(), index);
        fs::DirBuilder::new().mode(0o755).create(&path).unwrap();
        let dir = FixtureDir(path);
        // The umask may have cleared bits of the modes given at creation.
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
        let out = dir.0.join("out");
        fs::create_dir(&out).unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
        let script = dir.0.join("mark.sh");
        fs::write(&script, marker_script(&out)).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

        // Shared needs a pool, but serve_child never takes a child from it, so the
        // spawner never starts one and the queue descriptor is never passed on.
        let settings = ChildSettings {
            uid: NOBODY,
            gid: NOBODY,
            sandbox: SandboxMode::Strict,
            max_frame_bytes: config.max_frame_bytes,
            request_timeout: config.request_timeout,
            max_requests: config.max_requests_per_connection,
            max_connections: config.max_connections_per_child,
            monitor_pid: std::process::id() as i32,
        };
        let queue = OwnedFd::from(fs::File::open("/dev/null").unwrap());
        let spawner = pool::Spawner::new(settings, &queue).unwrap();
        let policy = build_policy(&script);
        let capability_needs = policy.capability_needs();
        let children = Arc::new(reuse::ChildCache::new(&config));
        let shared = Arc::new(Shared {
            config,
            policy: RwLock::new(Arc::new(policy)),
            capability_needs,
            registry: Arc::new(SessionRegistry::default()),
            pool: Arc::new(pool::Pool::new(spawner, 0)),
            children,
            process_groups: runner::ProcessGroups::default(),
            shutting_down: AtomicBool::new(false),
            active: Mutex::new(0),
            active_changed: Condvar::new(),
            running: Mutex::new(Default::default()),
            running_changed: Condvar::new(),
            session_children: Mutex::new(Default::default()),
            rate_limiter: Default::default(),
            connections_by_uid: Mutex::new(Default::default()),
        });
        Fixture {
            _dir: dir,
            out,
            shared,
        }
    }

    /// Returns the names of the marker files, sorted.
    pub(super) fn markers(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.out)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    pub(super) fn marker_owner(&self, marker: &str) -> u32 {
        fs::metadata(self.out.join(marker)).unwrap().uid()
    }

    /// Starts a stand-in child and runs `session::serve_child` for `peer` on a thread,
    /// with the monitor's end of a new channel. The test gets the child's end.
    pub(super) fn start_session(&self, peer: Peer) -> Session {
        self.start_session_with(peer, false)
    }

    /// Like [`Fixture::start_session`], but after `serve_child` the thread hands the
    /// child to `session::release_child`, as `session::run` does, which may put it in
    /// the cache of reusable children. The peer gets an executable so that it has an
    /// identity that reuse accepts.
    pub(super) fn start_reusable_session(&self, mut peer: Peer) -> Session {
        peer.exe = Some(PathBuf::from(STAND_IN_PROGRAM));
        self.start_session_with(peer, true)
    }

    fn start_session_with(&self, peer: Peer, release: bool) -> Session {
        let (monitor_end, child_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let process = std::process::Command::new(STAND_IN_PROGRAM)
            .arg(STAND_IN_SECONDS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stand_in = Pid::from_raw(process.id() as i32);
        let mut child = pool::ParserChild {
            process: Process::adopt(process).unwrap(),
            channel: monitor_end,
        };

        let (done, ended) = mpsc::channel::<()>();
        let shared = self.shared.clone();
        let generation = shared.children.generation();
        let thread = std::thread::spawn(move || {
            let end = session::serve_child(&shared, &mut child, &peer);
            if release {
                let assigned = reuse::AssignedChild {
                    child,
                    previous_connections: 0,
                    generation,
                    started_by_session: false,
                };
                let identity = reuse::Identity::of(&peer);
                session::release_child(&shared, assigned, end, identity, &peer);
                drop(done);
                return None;
            }
            let pool::ParserChild { process, channel } = child;
            // session::run closes the monitor's end when it drops the child. The test
            // reads end of file only once that has happened, so it comes before `done`.
            drop(channel);
            drop(done);
            Some(process)
        });
        Session {
            channel: child_end,
            stand_in,
            ended,
            thread: Some(thread),
        }
    }

    /// Checks that a fresh session on the same [`Shared`] still runs a script and gets
    /// ExecDone with exit code 0, and that no slot, process group or child pid is left.
    pub(super) fn assert_still_serves(&self) {
        let session = self.start_session(peer(ALLOWED_UID));
        session.send_message(&mark_exec("alive"));
        let outcome = match session.reply() {
            MonitorMessage::ExecDone(outcome) => outcome,
            other => panic!("the monitor stopped serving: {other:?}"),
        };
        assert_eq!(outcome.exit_code, Some(0), "follow-up run failed");
        assert!(
            self.markers().contains(&"alive".to_string()),
            "follow-up script did not run"
        );

        session.end_with_bye();
        assert!(
            session.ended_within(WAIT_LIMIT),
            "follow-up session did not end"
        );

        assert_eq!(
            self.shared.process_groups.count(),
            0,
            "process groups left over"
        );
        let running = lock(&self.shared.running);
        assert!(
            running.values().all(|count| *count == 0),
            "concurrency slots left over: {running:?}"
        );
        drop(running);
        // session::run adds and removes child pids around serve_child, which must not
        // touch the set itself.
        assert!(
            lock(&self.shared.session_children).is_empty(),
            "session child pids left over"
        );
    }
}

/// A session from the side of the compromised child.
pub(super) struct Session {
    /// The child's end of the channel.
    pub(super) channel: OwnedFd,
    /// Pid of the stand-in child. Only [`Session`]'s drop reaps it, so the pid cannot be
    /// reused while the session exists.
    stand_in: Pid,
    /// Disconnected once `serve_child` has returned and the monitor's end is closed.
    ended: mpsc::Receiver<()>,
    /// Thread that runs `serve_child` and then returns the stand-in process, or `None`
    /// when `release_child` took it.
    thread: Option<JoinHandle<Option<Process>>>,
}

impl Session {
    pub(super) fn send(&self, bytes: &[u8]) {
        let sent = nix::sys::socket::send(self.channel.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL)
            .unwrap();
        assert_eq!(sent, bytes.len(), "datagram sent in part");
    }

    pub(super) fn send_message(&self, message: &ChildMessage) {
        self.send(&channel::encode_child_message(message));
    }

    /// Returns the next datagram from the monitor, or `None` at end of file.
    pub(super) fn next_datagram(&self) -> Option<Vec<u8>> {
        assert!(
            wait_readable(self.channel.as_fd(), WAIT_LIMIT),
            "the monitor neither replied nor closed the channel"
        );
        let mut buffer = vec![0u8; MAX_MESSAGE_BYTES];
        loop {
            match nix::sys::socket::recv(self.channel.as_raw_fd(), &mut buffer, MsgFlags::empty()) {
                Ok(0) => return None,
                Ok(length) => return Some(buffer[..length].to_vec()),
                // The kernel sets ECONNRESET when the monitor closes its end with messages
                // of the test still unread, and reports it once, before datagrams that are
                // already queued. So a reply may still follow.
                Err(nix::Error::ECONNRESET) => continue,
                Err(error) => panic!("failed to receive from the channel: {error}"),
            }
        }
    }

    pub(super) fn reply(&self) -> MonitorMessage {
        let bytes = self
            .next_datagram()
            .expect("the monitor closed the channel instead of replying");
        channel::decode_monitor_message(&bytes).unwrap()
    }

    /// Returns the stand-in's exit status without reaping it, or `None` while it runs.
    fn stand_in_status(&self) -> Option<WaitStatus> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.stand_in), flags).unwrap() {
            WaitStatus::StillAlive => None,
            status => Some(status),
        }
    }

    /// Returns whether the stand-in child died of SIGKILL within `limit`. It returns
    /// false at once if the stand-in ended any other way.
    pub(super) fn child_killed_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match self.stand_in_status() {
                Some(WaitStatus::Signaled(_, Signal::SIGKILL, _)) => return true,
                Some(_) => return false,
                None if Instant::now() >= deadline => return false,
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Returns whether the stand-in child is still running.
    pub(super) fn child_running(&self) -> bool {
        self.stand_in_status().is_none()
    }

    /// Returns whether `serve_child` returned within `limit`.
    pub(super) fn ended_within(&self, limit: Duration) -> bool {
        !matches!(
            self.ended.recv_timeout(limit),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }

    /// Sends Ready, as an honest child that may serve again does at the end of its
    /// session.
    pub(super) fn end_with_ready(&self) {
        self.send_message(&ChildMessage::Ready { dropped_events: 0 });
    }

    /// Sends Bye, as an honest child does at the end of its session.
    pub(super) fn end_with_bye(&self) {
        self.send_message(&ChildMessage::Bye { dropped_events: 0 });
    }

    /// Closes the channel in both directions, which the monitor reads as end of file.
    pub(super) fn close_channel(&self) {
        nix::sys::socket::shutdown(self.channel.as_raw_fd(), nix::sys::socket::Shutdown::Both)
            .unwrap();
    }
}

impl Drop for Session {
    /// Ends the session, waits for `serve_child`, then kills and reaps the stand-in, so
    /// that a failed test leaves no process behind.
    fn drop(&mut self) {
        let _ =
            nix::sys::socket::shutdown(self.channel.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let ended = self.ended_within(WAIT_LIMIT);
        // Nothing has reaped the stand-in yet, so its pid still names it, also while a
        // serve_child that never returned still owns its Process.
        let _ = nix::sys::signal::kill(self.stand_in, Signal::SIGKILL);
        if ended
            && let Some(thread) = self.thread.take()
            && let Ok(Some(mut process)) = thread.join()
        {
            let _ = process.wait();
        }
    }
}

/// Waits until `fd` is readable or hung up, at most `limit`.
pub(super) fn wait_readable(fd: BorrowedFd<'_>, limit: Duration) -> bool {
    wait_for(fd, PollFlags::POLLIN, limit)
}

/// Waits until `fd` is writable, hung up or in error, at most `limit`.
pub(super) fn wait_writable(fd: BorrowedFd<'_>, limit: Duration) -> bool {
    wait_for(fd, PollFlags::POLLOUT, limit)
}

fn wait_for(fd: BorrowedFd<'_>, events: PollFlags, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left.as_millis() as i32).unwrap();
        let mut fds = [PollFd::new(fd, events)];
        match poll(&mut fds, timeout) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::Error::EINTR) => continue,
            Err(error) => panic!("failed to poll: {error}"),
        }
    }
}
