//! Log destinations over real sockets: log_destination=journald and log_destination=syslog
//! send to a datagram socket that the test binds and reads, and each field of one
//! request's audit record is checked as it arrives.
//!
//! tracing-journald sends to the fixed path /run/systemd/journal/socket. The journald
//! tests therefore start the broker in its own mount namespace, where the fixture's
//! `systemd/` directory is bind-mounted over /run/systemd. Nothing on the host changes,
//! and the namespace ends with the broker. The host's /run/systemd must exist as a mount
//! point.
//!
//! Run as root: `cargo test --release --test log_destinations`.

mod common;

use std::ffi::{CStr, CString};
use std::fs;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use serde_json::{Value, json};

use common::{BROKER_BINARY, Broker, Fixture, WWW_DATA, run_client_as, wait_for};

const POLICY: &str = r#"
[command.greet]
script = "@FIXTURE@/scripts/greet"
run_as = "nobody"
allow_users = ["www-data"]
argv = ["{name}", "{note}"]
env = { GREETING_TOKEN = "{token}" }
capture_output = true

[command.greet.arguments.name]
type = "string"
pattern = "[a-z]+"

[command.greet.arguments.token]
type = "string"
sensitive = true

[command.greet.arguments.note]
type = "string"
required = false
allow_newline = true
allow_control = true
"#;

const SECRET: &str = "hunter-two-secret";

/// A note that tries to end its field and start others, in both the journal's
/// `KEY=value` lines and a syslog line.
const HOSTILE_NOTE: &str =
    "x\nPRIORITY=0\nSYSLOG_IDENTIFIER=forged\nMESSAGE=forged entry\n\n<9>forged syslog line";

/// A command name with the same intent. The parser child rejects it as unknown.
const HOSTILE_COMMAND: &str = "nope\nPRIORITY=0\nMESSAGE=forged entry";

/// Length of U+0001 in a log record, escaped as `\u{1}`.
const ESCAPED_CONTROL_BYTES: usize = 5;

/// How long a record may take to reach the test's socket.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// syslog facility `daemon` (3), shifted as in the PRI part of a syslog line.
const FACILITY_DAEMON: u32 = 3 << 3;

/// One datagram that reached the test's socket.
#[derive(Debug, Clone)]
struct Datagram {
    bytes: Vec<u8>,
    /// Whether the payload came in a memfd passed with SCM_RIGHTS, as tracing-journald
    /// sends a payload too large for one datagram.
    via_memfd: bool,
}

/// A datagram socket bound by the test, with a thread that reads it until dropped. The
/// thread keeps the queue short, because a sender blocks while a unix datagram socket's
/// queue is full.
struct Collector {
    datagrams: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Collector {
    fn bind(path: &Path) -> Collector {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let datagrams = datagrams.clone();
            let stop = stop.clone();
            std::thread::spawn(move || read_datagrams(&socket, &datagrams, &stop))
        };
        Collector {
            datagrams,
            stop,
            reader: Some(reader),
        }
    }

    fn datagrams(&self) -> Vec<Datagram> {
        self.datagrams.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }
}

fn read_datagrams(socket: &UnixDatagram, datagrams: &Mutex<Vec<Datagram>>, stop: &AtomicBool) {
    // Larger than any datagram the broker sends: neither logging crate raises its socket's
    // send buffer above net.core.wmem_default, and a larger datagram fails with EMSGSIZE.
    let mut buffer = vec![0u8; 8 * 1024 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut control = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let received = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let message = match received {
            Ok(message) => message,
            Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => continue,
            Err(error) => panic!("failed to receive from the test socket: {error}"),
        };
        assert!(
            !message.flags.contains(MsgFlags::MSG_TRUNC),
            "datagram larger than the receive buffer"
        );
        let length = message.bytes;
        let mut passed: Vec<OwnedFd> = Vec::new();
        for control_message in message.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = control_message {
                for fd in fds {
                    // SAFETY: the kernel just installed `fd` in this process for this
                    // message, and nothing else owns it.
                    passed.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let datagram = match passed.pop() {
            Some(fd) => Datagram {
                bytes: read_memfd(fd),
                via_memfd: true,
            },
            None => Datagram {
                bytes: buffer[..length].to_vec(),
                via_memfd: false,
            },
        };
        // tracing-journald checks the socket at start with an empty datagram.
        if !datagram.bytes.is_empty() {
            datagrams.lock().unwrap().push(datagram);
        }
    }
}

/// Reads a sealed memfd from offset 0: the sender's writes left the shared file offset
/// at the end.
fn read_memfd(fd: OwnedFd) -> Vec<u8> {
    let file = fs::File::from(fd);
    let length = file.metadata().unwrap().len() as usize;
    let mut bytes = vec![0u8; length];
    file.read_exact_at(&mut bytes, 0).unwrap();
    bytes
}

/// One journal entry: its fields in the order sent.
type Entry = Vec<(String, Vec<u8>)>;

/// Parses a payload of the journal's native protocol: `NAME=value\n` for a value without
/// a line break, or `NAME\n`, a 64-bit little-endian length, the value and `\n`. Panics
/// on anything else, so that a malformed payload fails the test.
fn parse_entry(payload: &[u8]) -> Entry {
    let mut fields = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&byte| byte == b'=' || byte == b'\n')
            .unwrap_or_else(|| panic!("field name without end in {payload:?}"));
        let name = String::from_utf8(rest[..end].to_vec()).unwrap();
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'_'),
            "invalid field name {name:?}"
        );
        if rest[end] == b'=' {
            let value_start = end + 1;
            let value_end = value_start
                + rest[value_start..]
                    .iter()
                    .position(|&byte| byte == b'\n')
                    .unwrap_or_else(|| panic!("field {name} without line end"));
            fields.push((name, rest[value_start..value_end].to_vec()));
            rest = &rest[value_end + 1..];
        } else {
            let length_start = end + 1;
            let length_bytes: [u8; 8] = rest[length_start..length_start + 8].try_into().unwrap();
            let length = u64::from_le_bytes(length_bytes) as usize;
            let value_start = length_start + 8;
            let value_end = value_start + length;
            assert_eq!(
                rest[value_end], b'\n',
                "field {name} not closed by a line end"
            );
            fields.push((name, rest[value_start..value_end].to_vec()));
            rest = &rest[value_end + 1..];
        }
    }
    fields
}

/// Returns the values of field `name` in `entry`.
fn values<'entry>(entry: &'entry Entry, name: &str) -> Vec<&'entry str> {
    entry
        .iter()
        .filter(|(field, _)| field == name)
        .map(|(_, value)| std::str::from_utf8(value).unwrap())
        .collect()
}

/// Returns the only value of field `name`, failing when it is missing or repeated.
fn field<'entry>(entry: &'entry Entry, name: &str) -> &'entry str {
    let found = values(entry, name);
    assert_eq!(found.len(), 1, "field {name} in {entry:?}");
    found[0]
}

fn journal_entries(collector: &Collector) -> Vec<(Entry, bool)> {
    collector
        .datagrams()
        .iter()
        .map(|datagram| (parse_entry(&datagram.bytes), datagram.via_memfd))
        .collect()
}

/// Waits for the journal entry whose REQUEST_ID is `request_id`.
fn journal_entry_of(collector: &Collector, request_id: &str) -> (Entry, bool) {
    let matches = |entry: &Entry| values(entry, "REQUEST_ID") == [request_id];
    assert!(
        wait_for(RECORD_TIMEOUT, || {
            journal_entries(collector)
                .iter()
                .any(|(entry, _)| matches(entry))
        }),
        "no journal entry with REQUEST_ID={request_id}"
    );
    let mut found: Vec<(Entry, bool)> = journal_entries(collector)
        .into_iter()
        .filter(|(entry, _)| matches(entry))
        .collect();
    assert_eq!(found.len(), 1, "entries: {found:?}");
    found.remove(0)
}

fn fixture_with_policy() -> Fixture {
    let fixture = Fixture::new();
    fixture.write_policy("greet.toml", POLICY);
    fixture.write_script("greet", "#!/bin/sh\necho \"hello $1\"\n");
    fixture
}

/// Creates `<fixture>/systemd/journal/` (0755) for the journald socket and returns the
/// `systemd` directory.
fn make_systemd_dir(fixture: &Fixture) -> PathBuf {
    let systemd = fixture.path().join("systemd");
    fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(systemd.join("journal"))
        .unwrap();
    systemd
}

/// Makes `command` start in a new mount namespace where `systemd_dir` is mounted over
/// /run/systemd.
fn with_private_run_systemd(command: &mut Command, systemd_dir: &Path) {
    assert!(
        Path::new("/run/systemd").is_dir(),
        "/run/systemd must exist as the mount point for the test's journal directory"
    );
    let source = CString::new(systemd_dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: the closure runs in the forked child before exec and makes only system
    // calls, on strings prepared before the fork, so it takes no lock and allocates
    // nothing.
    unsafe {
        command.pre_exec(move || enter_private_run_systemd(&source));
    }
}

fn enter_private_run_systemd(source: &CStr) -> std::io::Result<()> {
    let check = |result: libc::c_int| {
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: unshare takes no pointers. It affects only this forked child.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null
    // where mount(2) ignores the argument. Making / private keeps the bind mount below
    // from propagating to the host's namespace.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    // SAFETY: as above, and `source` lives until the closure that owns it is dropped.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            c"/run/systemd".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

/// Starts the broker with log_destination=journald in its own mount namespace, with a
/// collector bound where /run/systemd/journal/socket is inside that namespace.
fn start_journald(fixture: &Fixture, params: &[(&str, &str)]) -> (Collector, Broker) {
    let systemd_dir = make_systemd_dir(fixture);
    let collector = Collector::bind(&systemd_dir.join("journal/socket"));
    let mut all_params = vec![("log_file", ""), ("log_destination", "journald")];
    all_params.extend_from_slice(params);
    let broker = Broker::start_with_command(fixture, &all_params, &[], |command| {
        with_private_run_systemd(command, &systemd_dir)
    });
    (collector, broker)
}

/// Starts the broker with log_destination=syslog and a collector at `<fixture>/syslog`.
fn start_syslog(fixture: &Fixture, params: &[(&str, &str)]) -> (Collector, Broker) {
    let socket = fixture.path().join("syslog");
    let collector = Collector::bind(&socket);
    let socket = socket.to_string_lossy().to_string();
    let mut all_params = vec![
        ("log_file", ""),
        ("log_destination", "syslog"),
        ("syslog_socket", socket.as_str()),
    ];
    all_params.extend_from_slice(params);
    let broker = Broker::start(fixture, &all_params);
    (collector, broker)
}

/// Calls greet as www-data and returns the request id from the reply.
fn call_greet(fixture: &Fixture, name: &str, extra: &[&str]) -> String {
    let name = format!("name={name}");
    let token = format!("token={SECRET}");
    let mut args = vec!["call", "--json", "greet", &name, &token];
    args.extend_from_slice(extra);
    let output = run_client_as(fixture, WWW_DATA, &args);
    let reply = output.stdout_json();
    let request_id = common::json_reply_parameters(&reply)["request_id"].clone();
    request_id
        .as_str()
        .unwrap_or_else(|| panic!("no request_id in reply: {}", output.describe()))
        .to_string()
}

/// Size of the socket send buffer that a datagram must exceed to be rejected with
/// EMSGSIZE, from net.core.wmem_default.
fn send_buffer_bytes() -> usize {
    fs::read_to_string("/proc/sys/net/core/wmem_default")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Writes a policy with a `bulk` command and returns the client arguments of one call
/// whose audit record exceeds the socket send buffer. The value is made of U+0001, which
/// the log escapes as the 5 bytes `\u{1}`, because a parser child forwards at most
/// 200 KiB of arguments to the monitor.
fn write_bulk_policy(fixture: &Fixture) -> Vec<String> {
    let policy = "[command.bulk]\nscript = \"@FIXTURE@/scripts/greet\"\nrun_as = \"nobody\"\n\
                  allow_users = [\"www-data\"]\nargv = [\"{blob}\"]\n\n\
                  [command.bulk.arguments.blob]\ntype = \"string\"\nmax_length = 65536\n\
                  allow_control = true\n";
    fixture.write_policy("bulk.toml", policy);
    let count = send_buffer_bytes() / ESCAPED_CONTROL_BYTES + 1000;
    assert!(count <= 65536, "the send buffer is too large for this test");
    vec![format!("blob={}", "\u{1}".repeat(count))]
}

fn call_bulk(fixture: &Fixture, arguments: &[String]) -> String {
    let mut args = vec!["call", "--json", "bulk"];
    args.extend(arguments.iter().map(String::as_str));
    let output = run_client_as(fixture, WWW_DATA, &args);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    let reply = output.stdout_json();
    common::json_reply_parameters(&reply)["request_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn journal_audit_record_has_every_field() {
    let fixture = fixture_with_policy();
    let (collector, _broker) = start_journald(&fixture, &[]);
    let request_id = call_greet(&fixture, "alice", &[]);
    let (entry, _) = journal_entry_of(&collector, &request_id);

    assert_eq!(field(&entry, "MESSAGE"), "request ran");
    assert_eq!(field(&entry, "PRIORITY"), "6");
    assert_eq!(field(&entry, "SYSLOG_IDENTIFIER"), "secure_socket");
    assert_eq!(field(&entry, "REQUEST_ID"), request_id);
    assert_eq!(field(&entry, "PEER_UID"), WWW_DATA.uid.to_string());
    assert_eq!(field(&entry, "PEER_GID"), WWW_DATA.gid.to_string());
    let peer_pid: i64 = field(&entry, "PEER_PID").parse().unwrap();
    assert!(peer_pid > 1, "PEER_PID={peer_pid}");
    let client = fixture.client_binary().display().to_string();
    assert_eq!(field(&entry, "PEER_EXE"), client);
    assert_eq!(field(&entry, "COMMAND"), "greet");
    assert_eq!(field(&entry, "DECISION"), "allowed");
    assert_eq!(field(&entry, "EXIT_CODE"), "0");
    assert_eq!(field(&entry, "OUTCOME"), "exit 0");
    let duration_ms: f64 = field(&entry, "DURATION_MS").parse().unwrap();
    assert!(duration_ms >= 0.0, "DURATION_MS={duration_ms}");
    let arguments = field(&entry, "ARGUMENTS");
    assert!(arguments.contains("name=\"alice\""), "{arguments}");
    assert!(
        arguments.contains(&format!("token=<redacted, {} bytes>", SECRET.len())),
        "{arguments}"
    );
    let mut names: Vec<&str> = entry.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "a field repeats: {entry:?}");
}

#[test]
fn journal_rejection_has_warning_priority() {
    let fixture = fixture_with_policy();
    let (collector, _broker) = start_journald(&fixture, &[]);
    let request_id = call_greet(&fixture, "Alice", &[]);
    let (entry, _) = journal_entry_of(&collector, &request_id);

    assert_eq!(field(&entry, "MESSAGE"), "request rejected");
    assert_eq!(field(&entry, "PRIORITY"), "4");
    assert_eq!(field(&entry, "DECISION"), "rejected");
    assert_eq!(
        field(&entry, "OUTCOME"),
        "org.securesocket.Broker.InvalidArgument"
    );
    assert_eq!(field(&entry, "PEER_UID"), WWW_DATA.uid.to_string());
    assert_eq!(field(&entry, "COMMAND"), "greet");
}

#[test]
fn journal_never_contains_sensitive_value() {
    let fixture = fixture_with_policy();
    let (collector, _broker) = start_journald(&fixture, &[]);
    let allowed = call_greet(&fixture, "alice", &[]);
    let rejected = call_greet(&fixture, "Alice", &[]);
    journal_entry_of(&collector, &allowed);
    journal_entry_of(&collector, &rejected);
    let secret = SECRET.as_bytes();
    for datagram in collector.datagrams() {
        assert!(
            !datagram
                .bytes
                .windows(secret.len())
                .any(|window| window == secret),
            "secret in {:?}",
            String::from_utf8_lossy(&datagram.bytes)
        );
    }
}

#[test]
fn journal_hostile_strings_stay_in_their_field() {
    let fixture = fixture_with_policy();
    let (collector, _broker) = start_journald(&fixture, &[]);
    let note = format!("note={HOSTILE_NOTE}");
    let request_id = call_greet(&fixture, "alice", &[&note]);
    let (entry, _) = journal_entry_of(&collector, &request_id);
    let output = run_client_as(&fixture, WWW_DATA, &["call", "--json", HOSTILE_COMMAND]);
    let reply = output.stdout_json();
    let rejected_id = common::json_reply_parameters(&reply)["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_id: {}", output.describe()))
        .to_string();
    let (rejected, _) = journal_entry_of(&collector, &rejected_id);

    assert_eq!(field(&entry, "PRIORITY"), "6");
    assert_eq!(field(&entry, "SYSLOG_IDENTIFIER"), "secure_socket");
    assert_eq!(field(&entry, "MESSAGE"), "request ran");
    let arguments = field(&entry, "ARGUMENTS");
    assert!(
        arguments.contains(&format!("note={HOSTILE_NOTE:?}")),
        "{arguments}"
    );
    assert!(!arguments.contains('\n'), "{arguments}");

    assert_eq!(field(&rejected, "PRIORITY"), "4");
    assert_eq!(field(&rejected, "SYSLOG_IDENTIFIER"), "secure_socket");
    // The journal's binary field form carries the name unchanged, newlines included.
    assert_eq!(field(&rejected, "COMMAND"), HOSTILE_COMMAND);

    // Every datagram parsed as exactly one entry (parse_entry panics otherwise), and none
    // carries what the hostile strings tried to set.
    for (entry, _) in journal_entries(&collector) {
        assert_eq!(values(&entry, "PRIORITY").len(), 1, "{entry:?}");
        assert_ne!(values(&entry, "PRIORITY"), ["0"], "{entry:?}");
        assert_eq!(values(&entry, "SYSLOG_IDENTIFIER"), ["secure_socket"]);
        assert_eq!(values(&entry, "MESSAGE").len(), 1, "{entry:?}");
        assert_ne!(values(&entry, "MESSAGE"), ["forged entry"], "{entry:?}");
    }
}

#[test]
fn journal_large_record_sent_through_memfd() {
    let fixture = fixture_with_policy();
    let arguments = write_bulk_policy(&fixture);
    let (collector, _broker) = start_journald(&fixture, &[("max_frame_bytes", "1048576")]);
    let request_id = call_bulk(&fixture, &arguments);
    let (entry, via_memfd) = journal_entry_of(&collector, &request_id);

    let total: usize = entry.iter().map(|(_, value)| value.len()).sum();
    assert!(
        via_memfd,
        "a record above the send buffer came as a datagram: {total}"
    );
    assert_eq!(field(&entry, "MESSAGE"), "request ran");
    assert_eq!(field(&entry, "DECISION"), "allowed");
    let logged = field(&entry, "ARGUMENTS");
    assert!(logged.len() > send_buffer_bytes(), "{} bytes", logged.len());
}

#[test]
fn journal_unreachable_stops_start() {
    let fixture = fixture_with_policy();
    // The journal directory exists in the broker's namespace, but nothing listens in it.
    let systemd_dir = make_systemd_dir(&fixture);
    let arguments = common::broker_arguments(
        &fixture,
        &[("log_file", ""), ("log_destination", "journald")],
    );
    let mut command = Command::new(BROKER_BINARY);
    command.args(&arguments).current_dir("/");
    with_private_run_systemd(&mut command, &systemd_dir);
    let output = common::spawn(command).finish(Duration::from_secs(10));

    assert_eq!(output.code(), Some(1), "{}", output.describe());
    assert!(
        output.stderr.contains("/run/systemd/journal/socket"),
        "{}",
        output.describe()
    );
    assert!(!fixture.socket_path().exists());
}

/// Splits a syslog line `<PRI>Mmm dd hh:mm:ss TAG[PID]: MESSAGE` into PRI, tag, pid and
/// message.
fn parse_syslog_line(line: &str) -> (u32, String, i32, String) {
    let pattern = regex::Regex::new(
        r"(?s)^<(\d+)>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d ([^\[]+)\[(\d+)\]: (.*)$",
    )
    .unwrap();
    let captures = pattern
        .captures(line)
        .unwrap_or_else(|| panic!("not a syslog line: {line:?}"));
    (
        captures[1].parse().unwrap(),
        captures[2].to_string(),
        captures[3].parse().unwrap(),
        captures[4].to_string(),
    )
}

/// Waits for the one syslog line that contains `request_id`.
fn syslog_line_of(collector: &Collector, request_id: &str) -> String {
    let lines = || -> Vec<String> {
        collector
            .datagrams()
            .iter()
            .map(|datagram| String::from_utf8(datagram.bytes.clone()).unwrap())
            .filter(|line| line.contains(request_id))
            .collect()
    };
    assert!(
        wait_for(RECORD_TIMEOUT, || !lines().is_empty()),
        "no syslog line with {request_id}"
    );
    let mut found = lines();
    assert_eq!(found.len(), 1, "lines: {found:?}");
    found.remove(0)
}

#[test]
fn syslog_json_audit_record_has_every_field() {
    let fixture = fixture_with_policy();
    let (collector, broker) = start_syslog(&fixture, &[("log_format", "json")]);
    let request_id = call_greet(&fixture, "alice", &[]);
    let line = syslog_line_of(&collector, &request_id);
    let (priority, tag, pid, message) = parse_syslog_line(&line);

    assert_eq!(priority, FACILITY_DAEMON + 6);
    assert_eq!(tag, "secure_socket");
    assert_eq!(pid, broker.pid());
    let record: Value = serde_json::from_str(&message).unwrap();
    assert_eq!(record["message"], json!("request ran"));
    assert_eq!(record["level"], json!("INFO"));
    assert!(
        record["timestamp"]
            .as_str()
            .is_some_and(|time| time.contains('T'))
    );
    assert_eq!(record["request_id"], json!(request_id));
    assert_eq!(record["peer_uid"], json!(WWW_DATA.uid));
    assert_eq!(record["peer_gid"], json!(WWW_DATA.gid));
    assert!(record["peer_pid"].as_i64().is_some_and(|pid| pid > 1));
    let client = fixture.client_binary().display().to_string();
    assert_eq!(record["peer_exe"], json!(client));
    assert_eq!(record["command"], json!("greet"));
    assert_eq!(record["decision"], json!("allowed"));
    assert_eq!(record["exit_code"], json!(0));
    assert_eq!(record["outcome"], json!("exit 0"));
    assert!(record["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    let arguments = record["arguments"].as_str().unwrap_or_default();
    assert!(arguments.contains("name=\"alice\""), "{arguments}");
    assert!(
        arguments.contains(&format!("token=<redacted, {} bytes>", SECRET.len())),
        "{arguments}"
    );
    assert!(!line.contains(SECRET));
}

#[test]
fn syslog_text_line_escapes_hostile_note() {
    let fixture = fixture_with_policy();
    let (collector, _broker) = start_syslog(&fixture, &[]);
    let note = format!("note={HOSTILE_NOTE}");
    let request_id = call_greet(&fixture, "alice", &[&note]);
    let line = syslog_line_of(&collector, &request_id);
    let (priority, tag, _, message) = parse_syslog_line(&line);

    assert_eq!(priority, FACILITY_DAEMON + 6);
    assert_eq!(tag, "secure_socket");
    assert!(!line.contains('\n'), "{line:?}");
    assert!(message.contains("request ran"), "{message}");
    assert!(message.contains("decision=\"allowed\""), "{message}");
    // The arguments are one quoted value of the line, so the note's own escaping is
    // escaped once more.
    let quoted_note = format!("{:?}", format!("note={HOSTILE_NOTE:?}"));
    assert!(message.contains(quoted_note.trim_matches('"')), "{message}");
    for datagram in collector.datagrams() {
        let text = String::from_utf8(datagram.bytes).unwrap();
        assert!(!text.contains("forged syslog line\n"), "{text:?}");
        assert!(text.starts_with('<'), "{text:?}");
    }
}

#[test]
fn syslog_rejection_has_warning_severity() {
    let fixture = fixture_with_policy();
    let (collector, _broker) = start_syslog(&fixture, &[]);
    let request_id = call_greet(&fixture, "Alice", &[]);
    let line = syslog_line_of(&collector, &request_id);
    let (priority, _, _, message) = parse_syslog_line(&line);

    assert_eq!(priority, FACILITY_DAEMON + 4);
    assert!(message.contains("request rejected"), "{message}");
}

#[test]
fn syslog_too_long_line_is_cut() {
    let fixture = fixture_with_policy();
    let arguments = write_bulk_policy(&fixture);
    let (collector, _broker) = start_syslog(&fixture, &[("max_frame_bytes", "1048576")]);
    let request_id = call_bulk(&fixture, &arguments);
    let line = syslog_line_of(&collector, &request_id);

    assert!(line.len() < 9 * 1024, "{} bytes", line.len());
    assert!(line.contains("decision=\"allowed\""), "{line}");
    assert!(line.contains("request ran"), "{line}");
    assert!(line.ends_with(" bytes]"), "{}", &line[line.len() - 100..]);
    assert!(
        line.contains("[line cut from "),
        "{}",
        &line[line.len() - 100..]
    );
}

#[test]
fn syslog_unreachable_stops_start() {
    let fixture = fixture_with_policy();
    let missing = fixture.path().join("no-syslog-here");
    let missing = missing.to_string_lossy().to_string();
    let arguments = common::broker_arguments(
        &fixture,
        &[
            ("log_file", ""),
            ("log_destination", "syslog"),
            ("syslog_socket", missing.as_str()),
        ],
    );
    let output = common::run_broker_to_exit(&arguments);

    assert_eq!(output.code(), Some(1), "{}", output.describe());
    assert!(output.stderr.contains(&missing), "{}", output.describe());
    assert!(!fixture.socket_path().exists());
}

#[test]
fn syslog_reconnects_after_daemon_restart() {
    let fixture = fixture_with_policy();
    let (collector, _broker) = start_syslog(&fixture, &[]);
    let first = call_greet(&fixture, "alice", &[]);
    syslog_line_of(&collector, &first);

    // A restarted daemon closes its socket and binds a new one at the same path.
    drop(collector);
    let socket = fixture.path().join("syslog");
    fs::remove_file(&socket).unwrap();
    let collector = Collector::bind(&socket);
    let second = call_greet(&fixture, "alice", &[]);
    let line = syslog_line_of(&collector, &second);

    assert!(line.contains("request ran"), "{line}");
}

/// Returns today's UTC date as `date -u '+%b %e'` prints it: `Dec  4`.
fn utc_month_and_day() -> String {
    let output = Command::new("date")
        .args(["-u", "+%b %e"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

#[test]
fn syslog_timestamp_pads_day_with_space() {
    let fixture = fixture_with_policy();
    let (collector, _broker) = start_syslog(&fixture, &[]);
    let before = utc_month_and_day();
    let request_id = call_greet(&fixture, "alice", &[]);
    let line = syslog_line_of(&collector, &request_id);
    let after = utc_month_and_day();

    let pattern = regex::Regex::new(r"^<\d+>([A-Z][a-z]{2} [ 123]\d) \d\d:\d\d:\d\d ").unwrap();
    let captures = pattern
        .captures(&line)
        .unwrap_or_else(|| panic!("no RFC 3164 timestamp: {line:?}"));
    let month_and_day = &captures[1];
    assert!(
        month_and_day == before || month_and_day == after,
        "timestamp {month_and_day:?}, expected {before:?} (UTC): {line:?}"
    );
}

#[test]
fn syslog_stream_socket_stops_start() {
    let fixture = fixture_with_policy();
    let path = fixture.path().join("syslog-stream");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let path = path.to_string_lossy().to_string();
    let arguments = common::broker_arguments(
        &fixture,
        &[
            ("log_file", ""),
            ("log_destination", "syslog"),
            ("syslog_socket", path.as_str()),
        ],
    );
    let output = common::run_broker_to_exit(&arguments);

    assert_eq!(output.code(), Some(78), "{}", output.describe());
    assert!(
        output.stderr.contains("it is a stream socket"),
        "{}",
        output.describe()
    );
    assert!(output.stderr.contains(&path), "{}", output.describe());
    assert!(!fixture.socket_path().exists());
}

#[test]
fn syslog_daemon_not_reading_does_not_stall_requests() {
    let fixture = fixture_with_policy();
    let path = fixture.path().join("syslog");
    // Bound but never read: its receive queue fills after net.unix.max_dgram_qlen lines.
    let _stalled = UnixDatagram::bind(&path).unwrap();
    let socket = path.to_string_lossy().to_string();
    let params = [
        ("log_file", ""),
        ("log_destination", "syslog"),
        ("syslog_socket", socket.as_str()),
        ("verbosity", "debug"),
    ];
    let _broker = Broker::start(&fixture, &params);

    for _ in 0..40 {
        call_greet(&fixture, "alice", &[]);
    }
}
