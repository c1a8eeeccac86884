//! The seed corpus: real requests, channel messages and audit events made by the broker's
//! own encoders, and a few malformed inputs for each target.
//!
//! `cargo run --example write_seeds` writes them to `fuzz/corpus/<target>/`, and the test
//! `committed_seeds_match_generator` fails when the committed files differ, for example
//! after a change to an encoding.

use secure_socket::audit::{Event, EventKind};
use secure_socket::policy::ArgValue;
use secure_socket::protocol::channel::{self, ChildMessage};

/// One corpus file.
pub struct Seed {
    /// Fuzz target, which is also the corpus directory.
    pub target: &'static str,
    /// File name within the corpus directory.
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// Whether the target's decoder accepts the input.
    pub valid: bool,
}

fn seed(target: &'static str, name: &'static str, bytes: Vec<u8>, valid: bool) -> Seed {
    Seed {
        target,
        name,
        bytes,
        valid,
    }
}

/// Returns every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let mut all = Vec::new();
    all.extend(call_seeds());
    all.extend(frame_seeds());
    all.extend(child_message_seeds());
    all.extend(audit_event_seeds());
    all
}

const GET_INFO: &str = r#"{"method":"org.varlink.service.GetInfo"}"#;
const DESCRIBE_INTERFACE: &str = r#"{"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"org.securesocket.Broker"}}"#;
const LIST: &str = r#"{"method":"org.securesocket.Broker.List","parameters":{}}"#;
const DESCRIBE: &str =
    r#"{"method":"org.securesocket.Broker.Describe","parameters":{"command":"add-mail-user"}}"#;
const RUN_NO_ARGUMENTS: &str = r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"report-caller","arguments":{}}}"#;
const RUN_TYPED_ARGUMENTS: &str = r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"add-mail-user","arguments":{"user":"alice","domain":"example.org","quota_mb":500,"password":"s3cret","notify":true}}}"#;
const RUN_STDIN_ONEWAY: &str = r#"{"method":"org.securesocket.Broker.Run","oneway":true,"parameters":{"command":"import","arguments":{"path":"/srv/www"},"stdin":"line one\nline two\n"}}"#;

fn call_seeds() -> Vec<Seed> {
    let target = "varlink_call";
    let mut deep = "[".repeat(40);
    deep.push_str(&"]".repeat(40));
    let deep =
        format!(r#"{{"method":"org.securesocket.Broker.List","parameters":{{"x":{deep}}}}}"#);
    let mut invalid_utf8 =
        br#"{"method":"org.securesocket.Broker.Describe","parameters":{"command":""#.to_vec();
    invalid_utf8.extend_from_slice(b"\xc3\x28\xff");
    invalid_utf8.extend_from_slice(br#""}}"#);
    vec![
        seed(target, "get-info", GET_INFO.into(), true),
        seed(target, "get-interface-description", DESCRIBE_INTERFACE.into(), true),
        seed(target, "list", LIST.into(), true),
        seed(target, "describe", DESCRIBE.into(), true),
        seed(target, "run-no-arguments", RUN_NO_ARGUMENTS.into(), true),
        seed(target, "run-typed-arguments", RUN_TYPED_ARGUMENTS.into(), true),
        seed(target, "run-stdin-oneway", RUN_STDIN_ONEWAY.into(), true),
        seed(
            target,
            "run-duplicate-argument",
            br#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"c","arguments":{"a":"1","a":"2"}}}"#.to_vec(),
            false,
        ),
        seed(
            target,
            "duplicate-method-key",
            br#"{"method":"org.securesocket.Broker.List","method":"org.securesocket.Broker.Run"}"#
                .to_vec(),
            false,
        ),
        seed(
            target,
            "run-huge-numbers",
            br#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"c","arguments":{"a":18446744073709551616,"b":-9223372036854775809,"c":1e400,"d":0.5}}}"#.to_vec(),
            false,
        ),
        seed(
            target,
            "run-nul-and-escapes",
            br#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"c\u0000d","arguments":{"x\u001b[31m":"\ud800"}}}"#.to_vec(),
            false,
        ),
        seed(target, "deep-nesting", deep.into_bytes(), false),
        seed(target, "invalid-utf8", invalid_utf8, false),
        seed(
            target,
            "more-flag",
            br#"{"method":"org.securesocket.Broker.List","more":true}"#.to_vec(),
            false,
        ),
        seed(
            target,
            "unknown-interface",
            br#"{"method":"com.example.Other.Run","parameters":null}"#.to_vec(),
            false,
        ),
        seed(target, "not-an-object", b"[1,2,3]".to_vec(), false),
        seed(
            target,
            "trailing-text",
            br#"{"method":"org.varlink.service.GetInfo"} {}"#.to_vec(),
            false,
        ),
    ]
}

/// Builds a frame_reader input: limit byte, write pattern byte, then the stream.
fn frame_input(limit: u8, write_pattern: u8, frames: &[&[u8]], tail: &[u8]) -> Vec<u8> {
    let mut bytes = vec![limit, write_pattern];
    for frame in frames {
        bytes.extend_from_slice(frame);
        bytes.push(0);
    }
    bytes.extend_from_slice(tail);
    bytes
}

fn frame_seeds() -> Vec<Seed> {
    let target = "frame_reader";
    let get_info = GET_INFO.as_bytes();
    let list = LIST.as_bytes();
    let run = RUN_NO_ARGUMENTS.as_bytes();
    vec![
        seed(
            target,
            "three-requests-one-write",
            frame_input(255, 0, &[get_info, list, run], b""),
            true,
        ),
        seed(
            target,
            "requests-in-single-bytes",
            frame_input(255, 97, &[get_info, list], b""),
            true,
        ),
        seed(
            target,
            "requests-in-varied-writes",
            frame_input(200, 13, &[list, b"", run], b""),
            true,
        ),
        seed(
            target,
            "unterminated-tail",
            frame_input(255, 5, &[get_info], br#"{"method":"#),
            true,
        ),
        seed(
            target,
            "frame-over-limit",
            frame_input(40, 7, &[b"{}", list], b""),
            true,
        ),
        seed(
            target,
            "zero-limit-empty-frames",
            frame_input(0, 1, &[b"", b"", b""], b"x"),
            true,
        ),
    ]
}

fn exec(arguments: Vec<(&str, ArgValue)>, stdin: &[u8]) -> Vec<u8> {
    channel::encode_child_message(&ChildMessage::Exec {
        command: "add-mail-user".into(),
        arguments: arguments
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect(),
        stdin: stdin.to_vec(),
    })
}

fn child_message_seeds() -> Vec<Seed> {
    let target = "child_message";
    let typed = exec(
        vec![
            ("user", ArgValue::Str("alice".into())),
            ("quota_mb", ArgValue::Int(500)),
            ("notify", ArgValue::Bool(true)),
            ("password", ArgValue::Str("s3cret".into())),
        ],
        b"",
    );

    let mut truncated = typed.clone();
    truncated.truncate(typed.len() / 2);
    let mut trailing = typed.clone();
    trailing.push(0);
    let mut unknown_value_type = exec(vec![("user", ArgValue::Bool(false))], b"");
    // Tag byte, command length and name, argument count, argument name length and name:
    // the byte after them is the value's type tag.
    let type_tag_at = 1 + 4 + "add-mail-user".len() + 4 + 4 + "user".len();
    unknown_value_type[type_tag_at] = 9;

    vec![
        seed(target, "exec-no-arguments", exec(Vec::new(), b""), true),
        seed(target, "exec-typed-arguments", typed, true),
        seed(
            target,
            "exec-with-stdin",
            exec(vec![("user", ArgValue::Str("bob".into()))], b"line\n"),
            true,
        ),
        seed(
            target,
            "exec-extreme-integers",
            exec(
                vec![
                    ("low", ArgValue::Int(i64::MIN)),
                    ("high", ArgValue::Int(i64::MAX)),
                ],
                b"",
            ),
            true,
        ),
        seed(
            target,
            "bye",
            channel::encode_child_message(&ChildMessage::Bye { dropped_events: 0 }),
            true,
        ),
        seed(
            target,
            "bye-with-drops",
            channel::encode_child_message(&ChildMessage::Bye { dropped_events: 7 }),
            true,
        ),
        seed(
            target,
            "ready",
            channel::encode_child_message(&ChildMessage::Ready { dropped_events: 0 }),
            true,
        ),
        seed(target, "exec-truncated", truncated, false),
        seed(target, "exec-trailing-byte", trailing, false),
        seed(target, "exec-unknown-value-type", unknown_value_type, false),
        seed(target, "unknown-tag", vec![3, 0, 0, 0, 0], false),
        seed(
            target,
            "exec-huge-count",
            [&[1u8][..], &[1, 0, 0, 0, b'c'], &u32::MAX.to_le_bytes()].concat(),
            false,
        ),
    ]
}

fn event(kind: EventKind, dropped: u32, outcome: &str, detail: &str) -> Event {
    Event {
        session_id: 0x0123_4567_89ab_cdef,
        kind,
        dropped,
        duration_us: 1500,
        method: "org.securesocket.Broker.Run".into(),
        command: "add-mail-user".into(),
        outcome: outcome.into(),
        detail: detail.into(),
        request_id: "0123456789abcdef-3".into(),
        field: "user".into(),
        rule: "pattern".into(),
    }
}

fn audit_event_seeds() -> Vec<Seed> {
    let target = "audit_event";
    let request = event(EventKind::Request, 0, "ok", "").encode();
    let mut bad_kind = request.clone();
    bad_kind[8] = 0;
    let mut truncated = request.clone();
    truncated.pop();
    vec![
        seed(target, "request-ok", request, true),
        seed(
            target,
            "request-rejected-after-drops",
            event(
                EventKind::Request,
                3,
                "org.securesocket.Broker.InvalidArgument",
                "user pattern",
            )
            .encode(),
            true,
        ),
        seed(
            target,
            "protocol-error",
            event(
                EventKind::ProtocolError,
                0,
                "org.securesocket.Broker.TimedOut",
                "no complete request within 10000 ms",
            )
            .encode(),
            true,
        ),
        seed(
            target,
            "sandbox-status",
            event(EventKind::Sandbox, 0, "ok", "landlock fully enforced").encode(),
            true,
        ),
        seed(
            target,
            "connection-closed-escapes",
            event(
                EventKind::ConnectionClosed,
                1,
                "ok",
                "line\n\u{1b}[2Jforged",
            )
            .encode(),
            true,
        ),
        seed(target, "unknown-kind", bad_kind, false),
        seed(target, "truncated", truncated, false),
    ]
}
