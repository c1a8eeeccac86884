//! Tests of the monitor's side of a session against a compromised parser child.
//!
//! Each test builds a real [`Shared`](super::Shared) with a policy made in code, whose
//! scripts write a marker file when they run, and runs `session::serve_child` on a thread
//! against a stand-in child process. The test plays the compromised child: it owns the
//! child's end of the channel and sends hand-made datagrams (see [`harness`]). A missing
//! marker proves that no script ran, and the positive controls prove that the same
//! harness does run a script for a valid Exec. After each hostile case a fresh session on
//! the same `Shared` must still run a script, so a leaked concurrency slot or process
//! group would show.
//!
//! Trusted input: none. Everything here runs as root on files and sockets it creates.

mod harness;

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, sockopt};

use crate::config::Config;
use crate::policy::{ArgValue, Peer};
use crate::protocol::channel::{
    self, ChildMessage, MAX_MESSAGE_BYTES, MAX_VALUE_BYTES, MonitorMessage,
};
use crate::protocol::{BrokerError, ErrorKind};
use harness::{
    ALLOWED_UID, Fixture, KILL_LIMIT, NOBODY, PADDINGS, UNLISTED_UID, WAIT_LIMIT, mark_exec,
    offered_commands, peer, test_config, wait_readable, wait_writable,
};

/// Returns an Exec of `mark` with the given arguments.
fn mark_with(arguments: Vec<(&str, ArgValue)>) -> ChildMessage {
    ChildMessage::Exec {
        command: "mark".to_string(),
        arguments: arguments
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect(),
        stdin: Vec::new(),
    }
}

fn text(value: &str) -> ArgValue {
    ArgValue::Str(value.to_string())
}

/// Returns a valid Exec of `bulk` whose encoding is exactly `size` bytes.
fn bulk_exec_of_size(marker: &str, size: usize) -> Vec<u8> {
    let encode = |lengths: [usize; 4]| {
        let mut arguments = vec![("marker".to_string(), text(marker))];
        for (name, length) in PADDINGS.iter().zip(lengths) {
            arguments.push((name.to_string(), ArgValue::Str("x".repeat(length))));
        }
        channel::encode_child_message(&ChildMessage::Exec {
            command: "bulk".to_string(),
            arguments,
            stdin: Vec::new(),
        })
    };
    let mut left = size - encode([0; 4]).len();
    let mut lengths = [0; 4];
    for length in &mut lengths {
        *length = left.min(MAX_VALUE_BYTES);
        left -= *length;
    }
    assert_eq!(left, 0, "{size} bytes do not fit in the padding arguments");
    let bytes = encode(lengths);
    assert_eq!(bytes.len(), size);
    bytes
}

/// Returns the start of an Exec of `command`, up to and including the argument count.
fn exec_header(command: &[u8], argument_count: u32) -> Vec<u8> {
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&(command.len() as u32).to_le_bytes());
    bytes.extend_from_slice(command);
    bytes.extend_from_slice(&argument_count.to_le_bytes());
    bytes
}

fn expect_exec_done(reply: MonitorMessage) -> channel::ExecOutcome {
    match reply {
        MonitorMessage::ExecDone(outcome) => outcome,
        other => panic!("expected ExecDone, got {other:?}"),
    }
}

fn expect_exec_failed(reply: MonitorMessage) -> BrokerError {
    match reply {
        MonitorMessage::ExecFailed(error) => error,
        other => panic!("expected ExecFailed, got {other:?}"),
    }
}

/// Sends `bytes` as the child of an allowed peer and checks that the session ends at
/// once: the child is killed, `serve_child` returns, no reply comes and no script runs.
fn assert_malformed_ends_session(fixture: &Fixture, bytes: &[u8]) {
    let session = fixture.start_session(peer(ALLOWED_UID));
    if bytes.len() > MAX_MESSAGE_BYTES {
        // A datagram larger than the send buffer fails with EMSGSIZE instead of arriving.
        let size = 2 * bytes.len();
        nix::sys::socket::setsockopt(&session.channel, sockopt::SndBufForce, &size).unwrap();
    }
    session.send(bytes);
    assert!(
        session.child_killed_within(KILL_LIMIT),
        "the monitor did not kill the child"
    );
    assert!(
        session.ended_within(WAIT_LIMIT),
        "serve_child did not return"
    );
    assert_eq!(
        session.next_datagram(),
        None,
        "the monitor replied to a malformed message"
    );
    assert_eq!(fixture.markers(), Vec::<String>::new(), "a script ran");
}

/// Sends a well-formed Exec that the policy rejects and returns the error, after checking
/// that no script ran and that the session still ends on Bye.
fn rejected_exec(fixture: &Fixture, peer: Peer, message: &ChildMessage) -> BrokerError {
    let session = fixture.start_session(peer);
    session.send_message(message);
    let error = expect_exec_failed(session.reply());
    session.end_with_bye();
    assert!(
        session.ended_within(WAIT_LIMIT),
        "serve_child did not return after Bye"
    );
    assert_eq!(fixture.markers(), Vec::<String>::new(), "a script ran");
    error
}

/// Checks an Exec of `mark` that breaks one argument rule: InvalidArgument naming `field`
/// and `rule`, no script run, and a monitor that still serves.
fn assert_argument_rejected(arguments: Vec<(&str, ArgValue)>, field: &str, rule: &str) {
    let fixture = Fixture::new();
    let error = rejected_exec(&fixture, peer(ALLOWED_UID), &mark_with(arguments));
    assert_eq!(error.kind, ErrorKind::InvalidArgument);
    assert_eq!(error.field, field);
    assert_eq!(error.rule, rule);
    fixture.assert_still_serves();
}

#[test]
fn serve_child_runs_valid_exec() {
    let fixture = Fixture::new();
    let session = fixture.start_session(peer(ALLOWED_UID));
    session.send_message(&mark_exec("control"));
    let outcome = expect_exec_done(session.reply());
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.signal, None);
    assert!(!outcome.timed_out);
    assert_eq!(fixture.markers(), vec!["control".to_string()]);
    assert_eq!(fixture.marker_owner("control"), NOBODY);

    session.send_message(&mark_exec("again"));
    let outcome = expect_exec_done(session.reply());
    assert_eq!(outcome.exit_code, Some(0));
    assert!(fixture.markers().contains(&"again".to_string()));
    session.end_with_bye();
    assert!(session.ended_within(WAIT_LIMIT));
    // The positive control of the kill checks in the hostile cases.
    assert!(
        session.child_running(),
        "serve_child killed the child of a session that ended with Bye"
    );
}

#[test]
fn specs_for_offers_allowed_peer_its_commands() {
    // NOTE: session::assign takes its child from the pool, which would re-execute this
    // test binary, so the Assign message itself goes untested here. This checks the
    // command list that assign sends: `restricted` needs uid 2 and `php_only` needs the
    // executable /usr/bin/php, which the recorded peer does not have.
    let fixture = Fixture::new();
    assert_eq!(
        offered_commands(&fixture.shared, &peer(ALLOWED_UID)),
        vec!["bulk", "mark"]
    );
}

#[test]
fn serve_child_accepts_message_at_limit() {
    let fixture = Fixture::new();
    let session = fixture.start_session(peer(ALLOWED_UID));
    session.send(&bulk_exec_of_size("limit", MAX_MESSAGE_BYTES));
    let outcome = expect_exec_done(session.reply());
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(fixture.markers(), vec!["limit".to_string()]);
    session.end_with_bye();
    assert!(session.ended_within(WAIT_LIMIT));
}

#[test]
fn serve_child_denies_command_peer_may_not_run() {
    let fixture = Fixture::new();
    let message = ChildMessage::Exec {
        command: "restricted".to_string(),
        arguments: vec![("marker".to_string(), text("restricted"))],
        stdin: Vec::new(),
    };
    let error = rejected_exec(&fixture, peer(ALLOWED_UID), &message);
    assert_eq!(error.kind, ErrorKind::PermissionDenied);
    assert_eq!(error.field, "restricted");
    fixture.assert_still_serves();
}

#[test]
fn serve_child_denies_unlisted_recorded_peer() {
    // The Exec is valid and names a command that uid 33 may run, but the monitor recorded
    // uid 1 for this session. An Exec has no field for an identity, so the check can only
    // use the recorded one.
    let fixture = Fixture::new();
    assert_eq!(
        offered_commands(&fixture.shared, &peer(UNLISTED_UID)),
        Vec::<String>::new(),
        "the child was offered commands"
    );
    let session = fixture.start_session(peer(UNLISTED_UID));
    session.send_message(&mark_exec("impostor"));
    let error = expect_exec_failed(session.reply());
    assert_eq!(error.kind, ErrorKind::PermissionDenied);
    assert_eq!(error.field, "mark");
    session.end_with_bye();
    assert!(session.ended_within(WAIT_LIMIT));
    assert_eq!(fixture.markers(), Vec::<String>::new(), "a script ran");
    fixture.assert_still_serves();
}

#[test]
fn serve_child_denies_unlisted_peer_executable() {
    let fixture = Fixture::new();
    let message = ChildMessage::Exec {
        command: "php_only".to_string(),
        arguments: vec![("marker".to_string(), text("nophp"))],
        stdin: Vec::new(),
    };
    let error = rejected_exec(&fixture, peer(ALLOWED_UID), &message);
    assert_eq!(error.kind, ErrorKind::PermissionDenied);
    assert_eq!(error.field, "php_only");
    fixture.assert_still_serves();
}

#[test]
fn serve_child_rejects_pattern_mismatch() {
    assert_argument_rejected(vec![("marker", text("Upper"))], "marker", "pattern");
}

#[test]
fn serve_child_rejects_integer_out_of_range() {
    let arguments = vec![("marker", text("range")), ("delay", ArgValue::Int(99))];
    assert_argument_rejected(arguments, "delay", "range");
}

#[test]
fn serve_child_rejects_unknown_argument() {
    let arguments = vec![("marker", text("unknown")), ("shell", text("sh"))];
    assert_argument_rejected(arguments, "shell", "unknown");
}

#[test]
fn serve_child_rejects_missing_required_argument() {
    assert_argument_rejected(vec![("delay", ArgValue::Int(0))], "marker", "required");
}

#[test]
fn serve_child_rejects_wrong_argument_type() {
    let arguments = vec![("marker", text("typed")), ("delay", text("1"))];
    assert_argument_rejected(arguments, "delay", "type");
}

#[test]
fn serve_child_rejects_leading_dash() {
    assert_argument_rejected(vec![("marker", text("-rf"))], "marker", "leading_dash");
}

#[test]
fn serve_child_rejects_duplicate_argument() {
    let arguments = vec![("marker", text("first")), ("marker", text("second"))];
    assert_argument_rejected(arguments, "marker", "duplicate");
}

#[test]
fn serve_child_rejects_stdin_over_limit() {
    let fixture = Fixture::new();
    let message = ChildMessage::Exec {
        command: "mark".to_string(),
        arguments: vec![("marker".to_string(), text("stdin"))],
        stdin: b"data".to_vec(),
    };
    let error = rejected_exec(&fixture, peer(ALLOWED_UID), &message);
    assert_eq!(error.kind, ErrorKind::InvalidArgument);
    assert_eq!(error.field, "stdin");
    fixture.assert_still_serves();
}

#[test]
fn serve_child_rejects_unknown_command() {
    let fixture = Fixture::new();
    let message = ChildMessage::Exec {
        command: "no_such_command".to_string(),
        arguments: Vec::new(),
        stdin: Vec::new(),
    };
    let error = rejected_exec(&fixture, peer(ALLOWED_UID), &message);
    assert_eq!(error.kind, ErrorKind::UnknownCommand);
    assert_eq!(error.field, "no_such_command");
    fixture.assert_still_serves();
}

#[test]
fn serve_child_kills_on_truncated_message() {
    let fixture = Fixture::new();
    let mut bytes = channel::encode_child_message(&mark_exec("truncated"));
    bytes.pop();
    assert_malformed_ends_session(&fixture, &bytes);
    fixture.assert_still_serves();
}

#[test]
fn serve_child_kills_on_empty_datagram() {
    // An empty datagram is the shortest truncated message. recvmsg returns 0 for it, as it
    // does at end of file.
    let fixture = Fixture::new();
    assert_malformed_ends_session(&fixture, &[]);
    fixture.assert_still_serves();
}

#[test]
fn serve_child_kills_on_oversized_datagram() {
    // The first MAX_MESSAGE_BYTES bytes are a valid Exec, so a monitor that missed the
    // truncation of the datagram would run it.
    let fixture = Fixture::new();
    let mut bytes = bulk_exec_of_size("oversized", MAX_MESSAGE_BYTES);
    bytes.push(0);
    assert_malformed_ends_session(&fixture, &bytes);
    fixture.assert_still_serves();
}

#[test]
fn serve_child_kills_on_unknown_tag() {
    let fixture = Fixture::new();
    assert_malformed_ends_session(&fixture, &[0x7f]);
    fixture.assert_still_serves();
}

#[test]
fn serve_child_kills_on_unknown_argument_type() {
    let fixture = Fixture::new();
    let mut bytes = exec_header(b"mark", 1);
    bytes.extend_from_slice(&6u32.to_le_bytes());
    bytes.extend_from_slice(b"marker");
    bytes.push(9);
    bytes.extend_from_slice(&0u32.to_le_bytes());
    assert_malformed_ends_session(&fixture, &bytes);
    fixture.assert_still_serves();
}

#[test]
fn serve_child_kills_on_trailing_bytes() {
    // Without the trailing byte this Exec is valid and would run.
    let fixture = Fixture::new();
    let mut bytes = channel::encode_child_message(&mark_exec("trailing"));
    bytes.push(0);
    assert_malformed_ends_session(&fixture, &bytes);
    fixture.assert_still_serves();
}

#[test]
fn serve_child_kills_on_invalid_utf8_name() {
    let fixture = Fixture::new();
    let mut bytes = exec_header(&[b'm', 0xff, b'r', b'k'], 0);
    bytes.extend_from_slice(&0u32.to_le_bytes());
    assert_malformed_ends_session(&fixture, &bytes);
    fixture.assert_still_serves();
}

#[test]
fn serve_child_kills_on_argument_count_over_limit() {
    let fixture = Fixture::new();
    let mut bytes = exec_header(b"mark", u32::MAX);
    bytes.extend_from_slice(&0u32.to_le_bytes());
    assert_malformed_ends_session(&fixture, &bytes);
    fixture.assert_still_serves();
}

#[test]
fn serve_child_kills_on_exec_during_run() {
    let fixture = Fixture::new();
    let session = fixture.start_session(peer(ALLOWED_UID));
    let slow = mark_with(vec![("marker", text("first")), ("delay", ArgValue::Int(1))]);
    session.send_message(&slow);
    // The first script sleeps for 1 s before it writes its marker.
    std::thread::sleep(Duration::from_millis(300));
    session.send_message(&mark_exec("second"));

    let outcome = expect_exec_done(session.reply());
    assert_eq!(
        outcome.exit_code,
        Some(0),
        "the first script did not complete"
    );
    assert!(
        session.child_killed_within(KILL_LIMIT),
        "the monitor did not kill the child"
    );
    assert!(
        session.ended_within(WAIT_LIMIT),
        "serve_child did not return"
    );
    assert_eq!(
        session.next_datagram(),
        None,
        "the monitor replied to the second Exec"
    );
    assert_eq!(fixture.markers(), vec!["first".to_string()]);
    fixture.assert_still_serves();
}

#[test]
fn serve_child_ignores_messages_after_bye() {
    // The stand-in stays alive after Bye, as a compromised child might.
    let fixture = Fixture::new();
    let session = fixture.start_session(peer(ALLOWED_UID));
    session.send_message(&ChildMessage::Bye { dropped_events: 0 });
    session.send_message(&mark_exec("afterbye"));
    assert!(
        session.ended_within(WAIT_LIMIT),
        "serve_child did not return"
    );
    assert_eq!(
        session.next_datagram(),
        None,
        "the monitor replied to a message after Bye"
    );
    assert_eq!(fixture.markers(), Vec::<String>::new(), "a script ran");
    fixture.assert_still_serves();
}

#[test]
fn serve_child_ends_on_channel_close() {
    let fixture = Fixture::new();
    let session = fixture.start_session(peer(ALLOWED_UID));
    session.close_channel();
    assert!(
        session.ended_within(WAIT_LIMIT),
        "serve_child did not return at end of file"
    );
    fixture.assert_still_serves();
}

#[test]
fn serve_child_drops_passed_descriptors() {
    // A child may attach descriptors to a datagram. The monitor receives without a
    // control buffer, so the kernel must close them: once the test closes its own write
    // end, the read end has to reach end of file.
    let fixture = Fixture::new();
    let session = fixture.start_session(peer(ALLOWED_UID));
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let bytes = channel::encode_child_message(&mark_exec("passed"));
    let fds = [write_end.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        session.channel.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .unwrap();
    let outcome = expect_exec_done(session.reply());
    assert_eq!(outcome.exit_code, Some(0));
    drop(write_end);
    assert!(
        wait_readable(read_end.as_fd(), WAIT_LIMIT),
        "a copy of the passed write end is still open"
    );
    let read = nix::unistd::read(&read_end, &mut [0u8; 1]).unwrap();
    assert_eq!(read, 0, "a copy of the passed write end is still open");
    session.end_with_bye();
    assert!(session.ended_within(WAIT_LIMIT));
    fixture.assert_still_serves();
}

#[test]
fn serve_child_kills_child_that_never_reads() {
    // With max_requests_per_connection out of the way, only the send deadline of
    // request_timeout can end this session early. The idle limit is 2 * 200 ms + 5 s.
    let config = Config {
        request_timeout: Duration::from_millis(200),
        max_requests_per_connection: u32::MAX,
        ..test_config()
    };
    let fixture = Fixture::with_config(config);
    let session = fixture.start_session(peer(ALLOWED_UID));
    let bytes = channel::encode_child_message(&ChildMessage::Exec {
        command: "no_such_command".to_string(),
        arguments: Vec::new(),
        stdin: Vec::new(),
    });

    // Each Exec gets an ExecFailed that stays unread, until the replies fill the channel
    // and the monitor's send waits. The test sends until its own sends stop draining for
    // STALL_LIMIT or the monitor closes its end.
    const STALL_LIMIT: Duration = Duration::from_millis(500);
    let started = Instant::now();
    let mut sent = 0;
    loop {
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "the channel never filled after {sent} Execs"
        );
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match nix::sys::socket::send(session.channel.as_raw_fd(), &bytes, flags) {
            Ok(_) => sent += 1,
            Err(nix::Error::EAGAIN) => {
                if !wait_writable(session.channel.as_fd(), STALL_LIMIT) {
                    break;
                }
            }
            // The monitor closed its end: ECONNRESET when Execs of the test were still
            // unread there, EPIPE otherwise.
            Err(nix::Error::EPIPE | nix::Error::ECONNRESET) => break,
            Err(error) => panic!("failed to send Exec number {sent}: {error}"),
        }
    }
    assert!(sent > 0, "no Exec reached the monitor");

    // 3 s is well above the send deadline of 200 ms and below the idle limit of 5.4 s,
    // which would also end a session, but only while serve_child waits to receive.
    assert!(
        session.child_killed_within(Duration::from_secs(3)),
        "the monitor did not kill a child that reads no replies, {:?} after the first \
         of {sent} Execs",
        started.elapsed()
    );
    assert!(
        session.ended_within(WAIT_LIMIT),
        "serve_child did not return"
    );
    fixture.assert_still_serves();
}

#[test]
fn serve_child_ends_session_over_max_requests() {
    // A rejected Exec counts as well, so that a compromised child cannot keep its
    // session open with a stream of cheap Execs.
    let config = Config {
        max_requests_per_connection: 3,
        ..test_config()
    };
    let fixture = Fixture::with_config(config);
    let session = fixture.start_session(peer(ALLOWED_UID));

    session.send_message(&mark_exec("first"));
    assert_eq!(expect_exec_done(session.reply()).exit_code, Some(0));
    session.send_message(&ChildMessage::Exec {
        command: "no_such_command".to_string(),
        arguments: Vec::new(),
        stdin: Vec::new(),
    });
    let error = expect_exec_failed(session.reply());
    assert_eq!(error.kind, ErrorKind::UnknownCommand);
    session.send_message(&mark_exec("third"));
    assert_eq!(expect_exec_done(session.reply()).exit_code, Some(0));
    assert!(
        session.child_running(),
        "the monitor killed the child at max_requests_per_connection"
    );

    session.send_message(&mark_exec("fourth"));
    assert!(
        session.child_killed_within(KILL_LIMIT),
        "the monitor did not kill the child after an Exec over the limit"
    );
    assert!(
        session.ended_within(WAIT_LIMIT),
        "serve_child did not return"
    );
    assert_eq!(
        session.next_datagram(),
        None,
        "the monitor replied to the Exec over the limit"
    );
    assert_eq!(
        fixture.markers(),
        vec!["first".to_string(), "third".to_string()]
    );
    // The count belongs to the session, so a new session of the same peer runs again.
    fixture.assert_still_serves();
}

/// Runs a reusable session for an allowed peer, lets `act` play the child, and returns
/// the number of cached children once the session has ended. The cache is emptied
/// afterwards, which reaps every child it held.
fn cached_after(act: impl FnOnce(&harness::Session)) -> usize {
    let fixture = Fixture::new();
    let session = fixture.start_reusable_session(peer(ALLOWED_UID));
    act(&session);
    assert!(session.ended_within(WAIT_LIMIT), "the session did not end");
    let cached = fixture.shared.children.len();
    fixture.shared.children.stop();
    cached
}

#[test]
fn reuse_caches_child_after_clean_ready() {
    // The positive control of the cases below.
    let cached = cached_after(|session| {
        session.send_message(&mark_exec("control"));
        expect_exec_done(session.reply());
        session.end_with_ready();
    });
    assert_eq!(cached, 1);
}

#[test]
fn reuse_skips_child_that_sent_bye() {
    assert_eq!(cached_after(|session| session.end_with_bye()), 0);
}

#[test]
fn reuse_skips_child_with_malformed_message() {
    let cached = cached_after(|session| {
        // release_child reaps the killed child, so the test cannot wait for it itself.
        session.send(&[0xff, 0, 0]);
    });
    assert_eq!(cached, 0);
}

#[test]
fn reuse_skips_child_that_hung_up() {
    assert_eq!(cached_after(|session| session.close_channel()), 0);
}

#[test]
fn reuse_skips_child_over_exec_limit() {
    let mut config = test_config();
    config.max_requests_per_connection = 1;
    let fixture = Fixture::with_config(config);
    let session = fixture.start_reusable_session(peer(ALLOWED_UID));
    session.send_message(&mark_exec("first"));
    expect_exec_done(session.reply());
    session.send_message(&mark_exec("second"));
    assert!(session.ended_within(WAIT_LIMIT));
    assert_eq!(fixture.shared.children.len(), 0);
    fixture.shared.children.stop();
}

#[test]
fn reuse_skips_child_noisy_after_ready() {
    let fixture = Fixture::new();
    let session = fixture.start_reusable_session(peer(ALLOWED_UID));
    session.end_with_ready();
    assert!(session.ended_within(WAIT_LIMIT));
    assert_eq!(fixture.shared.children.len(), 1);
    // A child that writes while cached is killed instead of getting a connection.
    session.send_message(&mark_exec("while-cached"));
    let mut recorded = peer(ALLOWED_UID);
    recorded.exe = Some(std::path::PathBuf::from("/usr/bin/sleep"));
    let identity = super::reuse::Identity::of(&recorded).unwrap();
    assert!(fixture.shared.children.take(&identity).is_none());
    assert_eq!(fixture.shared.children.len(), 0);
    assert_eq!(fixture.markers(), Vec::<String>::new(), "a script ran");
}

#[test]
fn reuse_never_hands_child_to_other_identity() {
    let fixture = Fixture::new();
    let session = fixture.start_reusable_session(peer(ALLOWED_UID));
    session.end_with_ready();
    assert!(session.ended_within(WAIT_LIMIT));
    assert_eq!(fixture.shared.children.len(), 1);

    let with_exe = |uid: u32, gid: u32, groups: Vec<u32>, exe: &str| Peer {
        uid,
        gid,
        pid: 1,
        groups,
        exe: Some(std::path::PathBuf::from(exe)),
    };
    let others = [
        with_exe(UNLISTED_UID, ALLOWED_UID, Vec::new(), "/usr/bin/sleep"),
        with_exe(ALLOWED_UID, UNLISTED_UID, Vec::new(), "/usr/bin/sleep"),
        with_exe(ALLOWED_UID, ALLOWED_UID, vec![4], "/usr/bin/sleep"),
        with_exe(ALLOWED_UID, ALLOWED_UID, Vec::new(), "/usr/bin/php"),
    ];
    for other in &others {
        let identity = super::reuse::Identity::of(other).unwrap();
        assert!(
            fixture.shared.children.take(&identity).is_none(),
            "child handed to {other:?}"
        );
    }
    let mut without_exe = peer(ALLOWED_UID);
    without_exe.exe = None;
    assert!(super::reuse::Identity::of(&without_exe).is_none());

    // The same identity, with its groups in another order, gets the child.
    let same = with_exe(ALLOWED_UID, ALLOWED_UID, Vec::new(), "/usr/bin/sleep");
    let identity = super::reuse::Identity::of(&same).unwrap();
    let reused = fixture.shared.children.take(&identity);
    assert!(reused.is_some());
    let mut reused = reused.unwrap();
    assert!(reused.is_reused());
    let _ = reused.child.process.kill();
    let _ = reused.child.process.wait();
    fixture.shared.children.stop();
}

#[test]
fn reuse_identity_ignores_group_order() {
    let mut first = peer(ALLOWED_UID);
    first.exe = Some(std::path::PathBuf::from("/usr/bin/php"));
    first.groups = vec![4, 27, 4];
    let mut second = first.clone();
    second.groups = vec![27, 4];
    second.pid = 2;
    assert_eq!(
        super::reuse::Identity::of(&first),
        super::reuse::Identity::of(&second)
    );
}

#[test]
fn reuse_skips_child_after_reload() {
    let fixture = Fixture::new();
    let session = fixture.start_reusable_session(peer(ALLOWED_UID));
    session.send_message(&mark_exec("reload"));
    expect_exec_done(session.reply());
    // A reload while the child serves: the session took the child in the old
    // generation, so the cache refuses it.
    fixture.shared.children.invalidate();
    session.end_with_ready();
    assert!(session.ended_within(WAIT_LIMIT));
    assert_eq!(fixture.shared.children.len(), 0);
    fixture.shared.children.stop();
}

#[test]
fn reuse_evicts_least_recently_cached() {
    let mut config = test_config();
    config.max_cached_children = 1;
    let fixture = Fixture::with_config(config);
    let first = fixture.start_reusable_session(peer(ALLOWED_UID));
    first.end_with_ready();
    assert!(first.ended_within(WAIT_LIMIT));
    let second = fixture.start_reusable_session(peer(UNLISTED_UID));
    second.end_with_ready();
    assert!(second.ended_within(WAIT_LIMIT));
    assert_eq!(fixture.shared.children.len(), 1);

    let identity_of = |uid: u32| {
        let mut recorded = peer(uid);
        recorded.exe = Some(std::path::PathBuf::from("/usr/bin/sleep"));
        super::reuse::Identity::of(&recorded).unwrap()
    };
    assert!(
        fixture
            .shared
            .children
            .take(&identity_of(ALLOWED_UID))
            .is_none()
    );
    let kept = fixture.shared.children.take(&identity_of(UNLISTED_UID));
    assert!(kept.is_some());
    let mut kept = kept.unwrap();
    let _ = kept.child.process.kill();
    let _ = kept.child.process.wait();
    fixture.shared.children.stop();
}
