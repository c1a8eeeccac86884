//! Malformed and hostile requests from the corpus in tests/hostile/, sent to a real broker
//! as raw bytes: whole, and for some cases one byte at a time. Each case must get its
//! documented error naming the field and rule, leave the connection open or closed as
//! documented, and run no script. Afterwards the broker's log must still hold one line
//! per event, with every client string escaped: no raw control byte, and no line that a
//! client could have forged with an embedded newline.
//!
//! Run as root: `cargo test --release --test hostile_inputs`.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use common::{Broker, Fixture, error_name, parameters, wait_for};

/// `mark` writes a marker file, so any request that reaches the script shows.
const POLICY: &str = r#"
[command.mark]
description = "Write a marker file"
script = "@FIXTURE@/scripts/mark"
run_as = "root"
allow_users = ["root"]
argv = ["{name}", "{count}"]

[command.mark.arguments.name]
type = "string"
pattern = "[a-z]+"
max_length = 16

[command.mark.arguments.count]
type = "integer"
min = 1
max = 10

[command.mark.arguments.note]
type = "string"
required = false
max_length = 64

[command.hello]
description = "Print a greeting"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["root"]
"#;

const MARKER: &str = "mark.ran";

/// The request timeout of the broker in these tests: long enough for a request sent one
/// byte per millisecond, short enough for the unterminated frame to time out quickly.
const REQUEST_TIMEOUT_MS: &str = "2000";

/// Cases sent one byte at a time as well as whole.
const SPLIT_CASES: &[&str] = &[
    "invalid_utf8.bin",
    "raw_nul_inside_string.bin",
    "duplicate_argument.bin",
    "escape_in_command_name.bin",
    "escape_in_argument_value.bin",
];

/// What a command name, argument name or method carries to forge a log line: terminal
/// escape sequences, then a newline and a complete fake log line. `FORGED-*` marks it.
fn forged_text(marker: &str) -> String {
    format!("\u{1b}[2J\u{1b}]0;owned\u{7}\n2026-01-01T00:00:00.000000Z  INFO {marker} request ran")
}

/// Escapes [`forged_text`] as the broker's log shows it.
fn escaped_forged_text(marker: &str) -> String {
    forged_text(marker).escape_debug().to_string()
}

/// Returns the part of [`forged_text`] that the broker reads as the end of the interface
/// name of `org.securesocket.Broker.` + [`forged_text`]: everything before the last dot.
fn forged_interface() -> String {
    let method = forged_text("FORGED-METHOD");
    method.rsplit_once('.').unwrap().0.to_string()
}

fn escaped_forged_interface() -> String {
    forged_interface().escape_debug().to_string()
}

/// One reply the broker must send.
enum Reply {
    /// A varlink error: its name, one parameter that names the offending field, and the
    /// rule when the error declares one.
    Error {
        name: &'static str,
        parameter: &'static str,
        value: String,
        rule: Option<&'static str>,
    },
    /// The reply to GetInfo, which shows that the connection still works.
    Interfaces,
}

fn error(name: &str, parameter: &'static str, value: &str, rule: Option<&'static str>) -> Reply {
    Reply::Error {
        name: match name {
            "InvalidRequest" => "org.securesocket.Broker.InvalidRequest",
            "InvalidArgument" => "org.securesocket.Broker.InvalidArgument",
            "UnknownCommand" => "org.securesocket.Broker.UnknownCommand",
            "TimedOut" => "org.securesocket.Broker.TimedOut",
            "MethodNotFound" => "org.varlink.service.MethodNotFound",
            "InterfaceNotFound" => "org.varlink.service.InterfaceNotFound",
            other => panic!("no expectation for error {other}"),
        },
        parameter,
        value: value.to_string(),
        rule,
    }
}

/// Whether the broker keeps the connection after the case.
#[derive(Clone, Copy, Debug)]
enum After {
    Open,
    Closed,
}

struct Case {
    file: &'static str,
    replies: Vec<Reply>,
    after: After,
    /// Text that exactly one log line must contain after this case, when the case's
    /// client string reaches the log.
    logged: Option<String>,
}

fn case(file: &'static str, replies: Vec<Reply>) -> Case {
    Case {
        file,
        replies,
        after: After::Open,
        logged: None,
    }
}

/// Returns the expected outcome of every file in tests/hostile/.
fn cases() -> Vec<Case> {
    let json_error = || error("InvalidRequest", "field", "request", Some("json"));
    let mut many_frames = Vec::new();
    for _ in 0..10 {
        many_frames.push(json_error());
        many_frames.push(error(
            "MethodNotFound",
            "method",
            "org.securesocket.Broker.Nope",
            None,
        ));
        many_frames.push(error(
            "InvalidArgument",
            "argument",
            "name",
            Some("pattern"),
        ));
        many_frames.push(Reply::Interfaces);
    }
    vec![
        case(
            "invalid_utf8.bin",
            vec![error("InvalidRequest", "field", "request", Some("utf8"))],
        ),
        // A raw NUL ends the frame, so the rest of the request arrives as a second frame.
        case(
            "raw_nul_inside_string.bin",
            vec![json_error(), json_error()],
        ),
        case(
            "escaped_nul_in_argument.bin",
            vec![error("InvalidArgument", "argument", "note", Some("nul"))],
        ),
        case(
            "deep_nesting.bin",
            vec![error("InvalidRequest", "field", "request", Some("depth"))],
        ),
        case(
            "huge_integer.bin",
            vec![error("InvalidArgument", "argument", "count", Some("range"))],
        ),
        case(
            "integer_above_i64.bin",
            vec![error("InvalidArgument", "argument", "count", Some("range"))],
        ),
        // 1e999999 is valid JSON grammar, but serde_json rejects a number out of f64 range.
        case("huge_exponent.bin", vec![json_error()]),
        case(
            "duplicate_call_key.bin",
            vec![error(
                "InvalidRequest",
                "field",
                "method",
                Some("duplicate"),
            )],
        ),
        case(
            "duplicate_parameter.bin",
            vec![error(
                "InvalidRequest",
                "field",
                "command",
                Some("duplicate"),
            )],
        ),
        case(
            "duplicate_argument.bin",
            vec![error(
                "InvalidArgument",
                "argument",
                "name",
                Some("duplicate"),
            )],
        ),
        Case {
            after: After::Closed,
            ..case(
                "unterminated_frame.bin",
                vec![error(
                    "TimedOut",
                    "field",
                    "frame",
                    Some("request_timeout_ms"),
                )],
            )
        },
        case("many_frames.bin", many_frames),
        Case {
            logged: Some(escaped_forged_text("FORGED-COMMAND")),
            ..case(
                "escape_in_command_name.bin",
                vec![error(
                    "UnknownCommand",
                    "command",
                    &forged_text("FORGED-COMMAND"),
                    None,
                )],
            )
        },
        // JSON forbids raw control characters in strings.
        case("raw_escape_in_command_name.bin", vec![json_error()]),
        case(
            "escape_in_argument_value.bin",
            vec![error(
                "InvalidArgument",
                "argument",
                "note",
                Some("control"),
            )],
        ),
        case(
            "newline_in_argument_value.bin",
            vec![error(
                "InvalidArgument",
                "argument",
                "note",
                Some("newline"),
            )],
        ),
        Case {
            logged: Some(escaped_forged_text("FORGED-ARGUMENT")),
            ..case(
                "escape_in_argument_name.bin",
                vec![error(
                    "InvalidArgument",
                    "argument",
                    &forged_text("FORGED-ARGUMENT"),
                    Some("unknown"),
                )],
            )
        },
        // The interface is the part of the method before the last dot, and the forged
        // timestamp has a dot, so the error names an interface cut inside the forgery.
        Case {
            logged: Some(format!(
                "org.securesocket.Broker.{}",
                escaped_forged_interface()
            )),
            ..case(
                "escape_in_method.bin",
                vec![error(
                    "InterfaceNotFound",
                    "interface",
                    &format!("org.securesocket.Broker.{}", forged_interface()),
                    None,
                )],
            )
        },
    ]
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

fn policy_fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.write_policy("commands", POLICY);
    fixture.write_script(
        "mark",
        &format!("#!/bin/sh\ntouch @FIXTURE@/out/{MARKER}\n"),
    );
    fixture.write_script("hello", "#!/bin/sh\necho hello\n");
    fixture
}

fn start_broker(fixture: &Fixture) -> Broker {
    Broker::start(fixture, &[("request_timeout_ms", REQUEST_TIMEOUT_MS)])
}

/// Checks one reply against its expectation and returns its request id, if any.
fn check_reply(file: &str, index: usize, expected: &Reply, reply: &Value) -> Option<String> {
    let context = format!("{file}, reply {index}: {reply}");
    match expected {
        Reply::Interfaces => {
            assert!(
                parameters(reply)["interfaces"].is_array(),
                "expected the GetInfo reply; {context}"
            );
        }
        Reply::Error {
            name,
            parameter,
            value,
            rule,
        } => {
            assert_eq!(error_name(reply), Some(*name), "{context}");
            assert_eq!(parameters(reply)[*parameter], json!(value), "{context}");
            if let Some(rule) = rule {
                assert_eq!(parameters(reply)["rule"], json!(rule), "{context}");
            }
        }
    }
    parameters(reply)["request_id"].as_str().map(str::to_string)
}

/// Sends one corpus file, whole or one byte per millisecond, checks the replies, the
/// connection afterwards and the marker, and returns the request ids of the replies.
fn run_case(fixture: &Fixture, broker: &Broker, case: &Case, split: bool) -> Vec<String> {
    let bytes = fs::read(corpus_dir().join(case.file)).unwrap();
    let mut connection = broker.connect();
    if split {
        for byte in &bytes {
            connection.send_bytes(std::slice::from_ref(byte)).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
    } else {
        connection.send_bytes(&bytes).unwrap();
    }

    let mut request_ids = Vec::new();
    for (index, expected) in case.replies.iter().enumerate() {
        let reply = connection.receive();
        request_ids.extend(check_reply(case.file, index, expected, &reply));
    }
    match case.after {
        After::Open => {
            let info = connection.call("org.varlink.service.GetInfo", json!({}));
            assert!(
                parameters(&info)["interfaces"].is_array(),
                "{}: the connection no longer works: {info}\n{}",
                case.file,
                broker.diagnostics()
            );
        }
        After::Closed => assert!(
            connection.is_closed_by_peer(),
            "{}: the connection stayed open\n{}",
            case.file,
            broker.diagnostics()
        ),
    }
    assert!(
        !fixture.out_file(MARKER).exists(),
        "{}: the request reached the script\n{}",
        case.file,
        broker.diagnostics()
    );
    request_ids
}

/// Returns whether `line` starts with a timestamp such as `2026-12-04T16:39:51.829750Z`.
fn starts_with_timestamp(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 20
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
}

/// Checks the whole log: no control byte but line feeds, every line starts with a
/// timestamp, forged text appears only escaped, each request id is logged once, and each
/// `logged` text of the cases sent is on exactly one line.
fn assert_log_is_clean(
    fixture: &Fixture,
    broker: &Broker,
    request_ids: &[String],
    cases: &[&Case],
) {
    // Events travel through the audit queue, so the logger gets time to write them.
    let id_field = |id: &str| format!("request_id={id} ");
    let all_logged = wait_for(Duration::from_secs(5), || {
        let log = fixture.log();
        request_ids.iter().all(|id| log.contains(&id_field(id)))
            && cases
                .iter()
                .filter_map(|case| case.logged.as_deref())
                .all(|text| log.contains(text))
    });
    let log = fs::read(fixture.log_path()).unwrap();
    let text = String::from_utf8(log.clone()).expect("the log is not valid UTF-8");

    assert!(
        all_logged,
        "some rejected requests are missing from the log\n{}",
        broker.diagnostics()
    );
    let control: BTreeSet<u8> = log
        .iter()
        .copied()
        .filter(|byte| *byte < 0x20 && *byte != b'\n' || *byte == 0x7f)
        .collect();
    assert!(
        control.is_empty(),
        "the log contains raw control bytes {control:?}\n{}",
        broker.diagnostics()
    );
    for line in text.lines() {
        assert!(
            starts_with_timestamp(line),
            "a log line does not start with a timestamp: {line:?}"
        );
        assert!(
            !line.starts_with("2026-01-01T00:00:00.000000Z"),
            "a client forged a log line: {line:?}"
        );
        assert!(
            !line.contains("FORGED")
                || line.contains("\\n2026-01-01T00:00:00.000000Z  INFO FORGED"),
            "forged text appears unescaped: {line:?}"
        );
    }
    assert!(
        !text.contains("FORGED-VALUE"),
        "an argument value reached the log\n{}",
        broker.diagnostics()
    );
    for id in request_ids {
        let lines = text
            .lines()
            .filter(|line| line.contains(&id_field(id)))
            .count();
        assert_eq!(lines, 1, "request {id} is on {lines} log lines\n{text}");
    }
    for text_logged in cases.iter().filter_map(|case| case.logged.as_deref()) {
        let lines = text
            .lines()
            .filter(|line| line.contains(text_logged))
            .count();
        assert_eq!(lines, 1, "{text_logged:?} is on {lines} log lines\n{text}");
    }
}

#[test]
fn corpus_matches_expectations() {
    let mut files: Vec<String> = fs::read_dir(corpus_dir())
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".bin"))
        .collect();
    files.sort();
    let mut expected: Vec<String> = cases().iter().map(|case| case.file.to_string()).collect();
    expected.sort();

    assert_eq!(
        files, expected,
        "every file in tests/hostile/ needs an expectation in cases(), and every case a file"
    );
}

#[test]
fn hostile_corpus_sent_whole() {
    let fixture = policy_fixture();
    let broker = start_broker(&fixture);
    let cases = cases();

    let mut request_ids = Vec::new();
    let mut single_request_ids = Vec::new();
    for case in &cases {
        let ids = run_case(&fixture, &broker, case, false);
        // Forty rejections in one burst can overflow the audit queue, which drops and
        // counts events rather than wait, so only single requests must all be logged.
        if case.replies.len() == 1 {
            single_request_ids.extend(ids.iter().cloned());
        }
        request_ids.extend(ids);
    }
    let all_cases: Vec<&Case> = cases.iter().collect();
    assert_log_is_clean(&fixture, &broker, &single_request_ids, &all_cases);

    // No request id may be logged twice, including those of the burst.
    let text = fixture.log();
    for id in &request_ids {
        let lines = text
            .lines()
            .filter(|line| line.contains(&format!("request_id={id} ")))
            .count();
        assert!(lines <= 1, "request {id} is on {lines} log lines\n{text}");
    }

    // The same broker still runs a valid request, so the checks above are not vacuous.
    let reply = broker
        .connect()
        .run("mark", json!({ "name": "abc", "count": 1 }));
    assert_eq!(
        parameters(&reply)["exit_code"],
        json!(0),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert!(fixture.out_file(MARKER).exists());
}

#[test]
fn hostile_corpus_split_into_bytes() {
    let fixture = policy_fixture();
    let broker = start_broker(&fixture);
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|case| SPLIT_CASES.contains(&case.file))
        .collect();
    assert_eq!(cases.len(), SPLIT_CASES.len(), "a split case has no file");

    let mut request_ids = Vec::new();
    for case in &cases {
        request_ids.extend(run_case(&fixture, &broker, case, true));
    }
    let sent: Vec<&Case> = cases.iter().collect();
    assert_log_is_clean(&fixture, &broker, &request_ids, &sent);
}

#[test]
fn command_name_cannot_add_log_fields() {
    let fixture = policy_fixture();
    let broker = start_broker(&fixture);
    let forged = "x decision=allowed peer_uid=0 outcome=exit";

    let reply = broker.connect().run(forged, json!({}));
    let expected_field = format!("command={forged:?}");
    let appeared = wait_for(Duration::from_secs(5), || {
        fixture.log().contains(&expected_field)
    });

    assert_eq!(
        error_name(&reply),
        Some("org.securesocket.Broker.UnknownCommand"),
        "{reply}"
    );
    assert!(
        appeared,
        "the command name is not one quoted value in the log\n{}",
        fixture.log()
    );
    assert!(
        !fixture.log().contains("command=x "),
        "the command name was logged unquoted\n{}",
        fixture.log()
    );
}
