//! End-to-end tests of the policy language against a real broker: every argument type and
//! rule through a real Run, sensitive arguments, peer matching by group and by executable,
//! max_concurrent, rate_limit, reload under load, and `check-policy`.
//!
//! A rejected value must not reach the script. Every script here first appends the command
//! name to `out/runs`, so each case compares the number of runs before and after its
//! request. The broker replies only after the script has exited, so the count is final.
//!
//! Run as root: `cargo test --release -- --test-threads=2`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::{Group, Pid, User as SystemUser};
use serde_json::{Value, json};

use common::{
    Broker, CLIENT_TIMEOUT, Fixture, ProcessOutput, VarlinkConnection, WWW_DATA, command_as,
    error_name, parameters, run_broker_to_exit, run_client_as, spawn, wait_for,
};

const RUN_METHOD: &str = "org.securesocket.Broker.Run";
const INVALID_ARGUMENT: &str = "org.securesocket.Broker.InvalidArgument";
const BUSY: &str = "org.securesocket.Broker.Busy";
const PERMISSION_DENIED: &str = "org.securesocket.Broker.PermissionDenied";

/// Records the run, then prints each argument followed by a NUL byte, so that the test
/// can tell exactly where one argv element ends.
const RECORD_SCRIPT: &str = "#!/bin/sh\n\
    echo \"$SECURE_SOCKET_COMMAND\" >> @FIXTURE@/out/runs\n\
    printf '%s\\0' \"$@\"\n";

/// Records the run, then prints two environment variables the policy fills.
const PRINT_ENV_SCRIPT: &str = "#!/bin/sh\n\
    echo \"$SECURE_SOCKET_COMMAND\" >> @FIXTURE@/out/runs\n\
    printf '%s\\0' \"$VALUE\" \"$LABEL\"\n";

/// Records the run, then copies stdin to stdout.
const CAT_SCRIPT: &str = "#!/bin/sh\n\
    echo \"$SECURE_SOCKET_COMMAND\" >> @FIXTURE@/out/runs\n\
    cat\n";

/// One command per argument type or rule set, each with its argument between two fixed
/// argv elements. Root may run them all, so that the test process speaks raw varlink.
const TYPES_POLICY: &str = r#"
[command.string-default]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root"]
argv = ["first", "{value}", "last"]
capture_output = true

[command.string-default.arguments.value]
type = "string"
max_length = 32

[command.string-pattern]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root"]
argv = ["first", "{value}", "last"]
capture_output = true

[command.string-pattern.arguments.value]
type = "string"
max_length = 16
pattern = "[a-z]+(-[a-z]+)?"

[command.string-charset]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root"]
argv = ["first", "{value}", "last"]
capture_output = true

[command.string-charset.arguments.value]
type = "string"
charset = "[a-z0-9 ]"

[command.string-lenient]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root"]
argv = ["first", "{value}", "last"]
capture_output = true

[command.string-lenient.arguments.value]
type = "string"
max_length = 32
allow_leading_dash = true
allow_newline = true
allow_control = true

[command.integer]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root"]
argv = ["first", "{value}", "--count={value}"]
capture_output = true

[command.integer.arguments.value]
type = "integer"
min = -5
max = 10

[command.enum]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root"]
argv = ["first", "{value}", "last"]
capture_output = true

[command.enum.arguments.value]
type = "enum"
values = ["fast", "slow"]

[command.boolean]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root"]
argv = ["first", "{value}", "last"]
capture_output = true

[command.boolean.arguments.value]
type = "boolean"

[command.path]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root"]
argv = ["first", "{value}", "last"]
capture_output = true

[command.path.arguments.value]
type = "path"
prefixes = ["/srv/data", "/var/www"]
max_length = 32

[command.optional]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root"]
argv = ["first", "{value}", "--value={value}", "last"]
capture_output = true

[command.optional.arguments.value]
type = "string"
required = false

[command.env-mapped]
script = "@FIXTURE@/scripts/print-env"
run_as = "root"
allow_users = ["root"]
env = { VALUE = "{value}", LABEL = "value={value}" }
capture_output = true

[command.env-mapped.arguments.value]
type = "string"
max_length = 32

[command.stdin-limited]
script = "@FIXTURE@/scripts/cat"
run_as = "root"
allow_users = ["root"]
stdin_limit = 16
capture_output = true

[command.no-stdin]
script = "@FIXTURE@/scripts/cat"
run_as = "root"
allow_users = ["root"]
capture_output = true
"#;

/// What a case expects of the broker.
#[derive(Debug)]
enum Expect {
    /// The script runs and receives exactly these argv elements after its own path.
    Argv(Vec<String>),
    /// The script runs and prints exactly this.
    Stdout(String),
    /// InvalidArgument naming the argument and rule, and the script does not run.
    Rejected {
        argument: &'static str,
        rule: &'static str,
    },
}

/// One Run request and what it must lead to.
#[derive(Debug)]
struct Case {
    command: &'static str,
    arguments: Value,
    stdin: Option<String>,
    expect: Expect,
}

/// Builds a case whose `value` argument is accepted and arrives as the element between
/// the fixed `first` and `last`.
fn accepted(command: &'static str, value: Value, arrives_as: &str) -> Case {
    Case {
        command,
        arguments: json!({ "value": value }),
        stdin: None,
        expect: Expect::Argv(vec!["first".into(), arrives_as.into(), "last".into()]),
    }
}

/// Builds a case whose `value` argument is rejected for breaking `rule`.
fn rejected(command: &'static str, value: Value, rule: &'static str) -> Case {
    Case {
        command,
        arguments: json!({ "value": value }),
        stdin: None,
        expect: Expect::Rejected {
            argument: "value",
            rule,
        },
    }
}

/// A fixture with [`TYPES_POLICY`] and its scripts, and a broker started on it.
fn start_types_broker() -> (Fixture, Broker) {
    let fixture = Fixture::new();
    fixture.write_policy("types", TYPES_POLICY);
    fixture.write_script("record", RECORD_SCRIPT);
    fixture.write_script("print-env", PRINT_ENV_SCRIPT);
    fixture.write_script("cat", CAT_SCRIPT);
    let broker = Broker::start(&fixture, &[]);
    (fixture, broker)
}

/// Returns the command names the scripts recorded in `out/runs`, in order.
fn runs(fixture: &Fixture) -> Vec<String> {
    match fs::read_to_string(fixture.out_file("runs")) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("failed to read the run records: {error}"),
    }
}

/// Splits output of the form `a\0b\0` into its elements.
fn nul_separated(text: &str) -> Vec<String> {
    let mut elements: Vec<String> = text.split('\0').map(str::to_owned).collect();
    assert_eq!(
        elements.pop().as_deref(),
        Some(""),
        "output does not end with NUL: {text:?}"
    );
    elements
}

/// Sends each case on one connection and checks its reply and whether its script ran.
fn check_cases(fixture: &Fixture, broker: &Broker, cases: &[Case]) {
    let mut connection = broker.connect();
    for (index, case) in cases.iter().enumerate() {
        // Stay below max_requests_per_connection, 100 by default.
        if index > 0 && index % 50 == 0 {
            connection = broker.connect();
        }
        let mut request = json!({ "command": case.command, "arguments": case.arguments });
        if let Some(stdin) = &case.stdin {
            request["stdin"] = json!(stdin);
        }
        let runs_before = runs(fixture).len();
        let reply = connection.call(RUN_METHOD, request);
        let runs_after = runs(fixture).len();
        let context = format!("case {index}: {case:?}\nreply: {reply}");

        match &case.expect {
            Expect::Argv(_) | Expect::Stdout(_) => {
                assert_eq!(
                    error_name(&reply),
                    None,
                    "{context}\n{}",
                    broker.diagnostics()
                );
                assert_eq!(parameters(&reply)["exit_code"], json!(0), "{context}");
                assert_eq!(runs_after, runs_before + 1, "script did not run: {context}");
            }
            Expect::Rejected { argument, rule } => {
                assert_eq!(error_name(&reply), Some(INVALID_ARGUMENT), "{context}");
                assert_eq!(parameters(&reply)["argument"], json!(argument), "{context}");
                assert_eq!(parameters(&reply)["rule"], json!(rule), "{context}");
                assert_eq!(runs_after, runs_before, "script ran: {context}");
            }
        }
        let stdout = parameters(&reply)["stdout"].as_str().unwrap_or_default();
        match &case.expect {
            Expect::Argv(expected) => assert_eq!(&nul_separated(stdout), expected, "{context}"),
            Expect::Stdout(expected) => assert_eq!(stdout, expected, "{context}"),
            Expect::Rejected { .. } => {}
        }
    }
}

#[test]
fn string_values_end_to_end() {
    let (fixture, broker) = start_types_broker();
    let max = "x".repeat(32);
    let cases = vec![
        // Defaults: any UTF-8 text up to max_length bytes, passed as one element.
        accepted("string-default", json!("hello"), "hello"),
        accepted("string-default", json!("two words"), "two words"),
        accepted(
            "string-default",
            json!("$(id);`id`|*?~><&"),
            "$(id);`id`|*?~><&",
        ),
        accepted("string-default", json!("é ü 中"), "é ü 中"),
        accepted("string-default", json!("a-b"), "a-b"),
        accepted("string-default", json!(""), ""),
        accepted("string-default", json!(max), &max),
        rejected("string-default", json!("x".repeat(33)), "max_length"),
        // 17 characters, 34 bytes: the limit counts bytes.
        rejected("string-default", json!("é".repeat(17)), "max_length"),
        rejected("string-default", json!("a\u{0}b"), "nul"),
        rejected("string-default", json!("a\nb"), "newline"),
        rejected("string-default", json!("a\rb"), "newline"),
        rejected("string-default", json!("a\u{85}b"), "newline"),
        rejected("string-default", json!("a\u{2028}b"), "newline"),
        rejected("string-default", json!("a\u{2029}b"), "newline"),
        rejected("string-default", json!("a\tb"), "control"),
        rejected("string-default", json!("a\u{1b}[31m"), "control"),
        rejected("string-default", json!("a\u{7f}"), "control"),
        rejected("string-default", json!("a\u{9b}b"), "control"),
        rejected("string-default", json!("a\u{202e}b"), "control"),
        rejected("string-default", json!("a\u{2066}b"), "control"),
        rejected("string-default", json!("-rf"), "leading_dash"),
        rejected("string-default", json!("--help"), "leading_dash"),
        rejected("string-default", json!(5), "type"),
        rejected("string-default", json!(true), "type"),
        rejected("string-default", json!(null), "type"),
        rejected("string-default", json!(["a"]), "type"),
        rejected("string-default", json!({ "a": 1 }), "type"),
        // pattern: the whole value must match.
        accepted("string-pattern", json!("abc"), "abc"),
        accepted("string-pattern", json!("abc-def"), "abc-def"),
        rejected("string-pattern", json!("abc-"), "pattern"),
        rejected("string-pattern", json!("1abc"), "pattern"),
        rejected("string-pattern", json!("abc1"), "pattern"),
        rejected("string-pattern", json!("ABC"), "pattern"),
        rejected("string-pattern", json!("a b"), "pattern"),
        rejected("string-pattern", json!(""), "pattern"),
        rejected("string-pattern", json!("abcdefghijklmnopq"), "max_length"),
        // charset: every character on its own.
        accepted("string-charset", json!("a1 b2"), "a1 b2"),
        accepted("string-charset", json!(""), ""),
        rejected("string-charset", json!("A"), "charset"),
        rejected("string-charset", json!("a_b"), "charset"),
        rejected("string-charset", json!("é"), "charset"),
        // Each default is lifted by its own declaration, but NUL stays rejected.
        accepted("string-lenient", json!("-rf"), "-rf"),
        accepted("string-lenient", json!("one\ntwo"), "one\ntwo"),
        accepted("string-lenient", json!("tab\there"), "tab\there"),
        accepted("string-lenient", json!("\u{1b}[0m"), "\u{1b}[0m"),
        rejected("string-lenient", json!("a\u{0}b"), "nul"),
        rejected("string-lenient", json!("y".repeat(33)), "max_length"),
    ];
    check_cases(&fixture, &broker, &cases);
}

#[test]
fn integer_enum_boolean_values_end_to_end() {
    let (fixture, broker) = start_types_broker();
    let integer = |value: i64| Case {
        command: "integer",
        arguments: json!({ "value": value }),
        stdin: None,
        expect: Expect::Argv(vec![
            "first".into(),
            value.to_string(),
            format!("--count={value}"),
        ]),
    };
    let cases = vec![
        integer(-5),
        integer(0),
        integer(10),
        rejected("integer", json!(11), "range"),
        rejected("integer", json!(-6), "range"),
        rejected("integer", json!(i64::MAX), "range"),
        rejected("integer", json!(i64::MIN), "range"),
        rejected("integer", json!(9_223_372_036_854_775_808u64), "range"),
        rejected("integer", json!("3"), "type"),
        rejected("integer", json!(1.5), "type"),
        rejected("integer", json!(3.0), "type"),
        rejected("integer", json!(true), "type"),
        accepted("enum", json!("fast"), "fast"),
        accepted("enum", json!("slow"), "slow"),
        rejected("enum", json!("medium"), "enum"),
        rejected("enum", json!("FAST"), "enum"),
        rejected("enum", json!("fast "), "enum"),
        rejected("enum", json!(""), "enum"),
        rejected("enum", json!(1), "type"),
        accepted("boolean", json!(true), "true"),
        accepted("boolean", json!(false), "false"),
        rejected("boolean", json!("true"), "type"),
        rejected("boolean", json!(1), "type"),
        rejected("boolean", json!(null), "type"),
    ];
    check_cases(&fixture, &broker, &cases);
}

#[test]
fn path_values_end_to_end() {
    let (fixture, broker) = start_types_broker();
    let cases = vec![
        accepted("path", json!("/srv/data"), "/srv/data"),
        accepted(
            "path",
            json!("/srv/data/site one/x"),
            "/srv/data/site one/x",
        ),
        accepted("path", json!("/var/www/a.b"), "/var/www/a.b"),
        accepted("path", json!("/var/www/.hidden"), "/var/www/.hidden"),
        rejected("path", json!("srv/data/x"), "absolute"),
        rejected("path", json!(""), "absolute"),
        rejected("path", json!("/srv/data/../etc"), "dotdot"),
        rejected("path", json!("/srv/data/.."), "dotdot"),
        rejected("path", json!("/srv/data//x"), "normalised"),
        rejected("path", json!("/srv/data/./x"), "normalised"),
        rejected("path", json!("/srv/data/"), "normalised"),
        rejected("path", json!("/srv/database"), "prefix"),
        rejected("path", json!("/srv"), "prefix"),
        rejected("path", json!("/etc/passwd"), "prefix"),
        rejected("path", json!("/"), "prefix"),
        rejected("path", json!("/srv/data/a\nb"), "newline"),
        rejected("path", json!("/srv/data/a\u{0}"), "nul"),
        rejected("path", json!("/srv/data/a\u{1b}"), "control"),
        rejected(
            "path",
            json!(format!("/srv/data/{}", "x".repeat(30))),
            "max_length",
        ),
        rejected("path", json!(5), "type"),
    ];
    check_cases(&fixture, &broker, &cases);
}

#[test]
fn optional_argument_left_out_of_argv() {
    let (fixture, broker) = start_types_broker();
    let argv = |elements: &[&str]| Expect::Argv(elements.iter().map(|e| e.to_string()).collect());
    let cases = vec![
        Case {
            command: "optional",
            arguments: json!({}),
            stdin: None,
            expect: argv(&["first", "last"]),
        },
        Case {
            command: "optional",
            arguments: json!({ "value": "x y" }),
            stdin: None,
            expect: argv(&["first", "x y", "--value=x y", "last"]),
        },
        // An empty string is a value, unlike a missing argument.
        Case {
            command: "optional",
            arguments: json!({ "value": "" }),
            stdin: None,
            expect: argv(&["first", "", "--value=", "last"]),
        },
    ];
    check_cases(&fixture, &broker, &cases);
}

#[test]
fn env_mapping_end_to_end() {
    let (fixture, broker) = start_types_broker();
    let env = |value: &str| Case {
        command: "env-mapped",
        arguments: json!({ "value": value }),
        stdin: None,
        expect: Expect::Argv(vec![value.to_string(), format!("value={value}")]),
    };
    let cases = vec![
        env("plain"),
        env("two words;$(id) `id` *"),
        env(""),
        rejected("env-mapped", json!("a\nb"), "newline"),
        rejected("env-mapped", json!("a\u{0}b"), "nul"),
        rejected("env-mapped", json!("-x"), "leading_dash"),
        rejected("env-mapped", json!("z".repeat(33)), "max_length"),
    ];
    check_cases(&fixture, &broker, &cases);
}

#[test]
fn stdin_limit_end_to_end() {
    let (fixture, broker) = start_types_broker();
    let with_stdin = |command: &'static str, stdin: &str, expect: Expect| Case {
        command,
        arguments: json!({}),
        stdin: Some(stdin.to_string()),
        expect,
    };
    let echoed = |text: &str| Expect::Stdout(text.to_string());
    let stdin_rejected = |rule| Expect::Rejected {
        argument: "stdin",
        rule,
    };
    let sixteen = "0123456789abcdef";
    let cases = vec![
        with_stdin("stdin-limited", "one\ntwo\n", echoed("one\ntwo\n")),
        with_stdin("stdin-limited", sixteen, echoed(sixteen)),
        with_stdin("stdin-limited", "", echoed("")),
        with_stdin(
            "stdin-limited",
            &format!("{sixteen}!"),
            stdin_rejected("max_length"),
        ),
        with_stdin("no-stdin", "x", stdin_rejected("not_accepted")),
        // Without a payload the script reads /dev/null.
        Case {
            command: "stdin-limited",
            arguments: json!({}),
            stdin: None,
            expect: echoed(""),
        },
        Case {
            command: "no-stdin",
            arguments: json!({}),
            stdin: None,
            expect: echoed(""),
        },
    ];
    check_cases(&fixture, &broker, &cases);
}

#[test]
fn missing_unknown_duplicate_arguments_named() {
    let (fixture, broker) = start_types_broker();
    let cases = vec![
        Case {
            command: "string-default",
            arguments: json!({}),
            stdin: None,
            expect: Expect::Rejected {
                argument: "value",
                rule: "required",
            },
        },
        Case {
            command: "string-default",
            arguments: json!({ "value": "ok", "extra": "x" }),
            stdin: None,
            expect: Expect::Rejected {
                argument: "extra",
                rule: "unknown",
            },
        },
    ];
    check_cases(&fixture, &broker, &cases);

    // serde_json cannot build an object with a repeated key, so this frame is written out.
    let mut connection = broker.connect();
    let frame = concat!(
        r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"string-default","#,
        r#""arguments":{"value":"first-value","value":"second-value"}}}"#,
        "\0"
    );
    let runs_before = runs(&fixture).len();
    connection.send_bytes(frame.as_bytes()).unwrap();
    let reply = connection.receive();

    assert_eq!(error_name(&reply), Some(INVALID_ARGUMENT), "reply: {reply}");
    assert_eq!(parameters(&reply)["argument"], json!("value"), "{reply}");
    assert_eq!(parameters(&reply)["rule"], json!("duplicate"), "{reply}");
    assert!(!reply.to_string().contains("-value"), "reply: {reply}");
    assert_eq!(runs(&fixture).len(), runs_before, "the script ran");
}

/// A command with a sensitive argument passed through the environment. The script keeps
/// the value it received so that the test can check it arrived.
const SECRET_POLICY: &str = r#"
[command.set-password]
script = "@FIXTURE@/scripts/set-password"
run_as = "root"
allow_users = ["root", "www-data"]
env = { PASSWORD = "{password}" }
capture_output = true

[command.set-password.arguments.password]
type = "string"
sensitive = true
max_length = 24
pattern = "[A-Za-z0-9]+"
"#;

const SECRET_SCRIPT: &str = "#!/bin/sh\n\
    echo \"$SECURE_SOCKET_COMMAND\" >> @FIXTURE@/out/runs\n\
    printf '%s' \"$PASSWORD\" > @FIXTURE@/out/password\n\
    echo stored\n";

#[test]
fn sensitive_value_never_logged() {
    let fixture = Fixture::new();
    fixture.write_policy("secret", SECRET_POLICY);
    fixture.write_script("set-password", SECRET_SCRIPT);
    let broker = Broker::start(&fixture, &[]);
    let mut connection = broker.connect();

    let valid = "Pw0rdValidSecret1";
    let reply = connection.run("set-password", json!({ "password": valid }));
    assert_eq!(error_name(&reply), None, "reply: {reply}");
    assert_eq!(
        fs::read_to_string(fixture.out_file("password")).unwrap(),
        valid,
        "the script did not receive the value"
    );

    // Each value breaks a different rule, and none may appear in the reply or the log.
    let too_long = format!("Pw0rdTooLongSecret3{}", "x".repeat(20));
    let invalid = [
        ("Pw0rd!PatternSecret2", "pattern"),
        (too_long.as_str(), "max_length"),
        ("Pw0rd\nNewlineSecret4", "newline"),
        ("-Pw0rdDashSecret5", "leading_dash"),
        ("Pw0rd\u{0}NulSecret6", "nul"),
    ];
    let mut secrets = vec![valid.to_string()];
    for (value, rule) in invalid {
        let reply = connection.run("set-password", json!({ "password": value }));
        assert_eq!(error_name(&reply), Some(INVALID_ARGUMENT), "rule {rule}");
        assert_eq!(parameters(&reply)["argument"], json!("password"));
        assert_eq!(parameters(&reply)["rule"], json!(rule), "reply: {reply}");
        assert!(
            !reply.to_string().contains("Secret"),
            "the reply repeats the value: {reply}"
        );
        secrets.push(value.to_string());
    }

    let reply = connection.run("set-password", json!({ "password": ["Pw0rdArraySecret7"] }));
    assert_eq!(parameters(&reply)["rule"], json!("type"), "reply: {reply}");
    assert!(!reply.to_string().contains("Secret"), "reply: {reply}");
    secrets.push("Pw0rdArraySecret7".into());

    let frame = concat!(
        r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"set-password","#,
        r#""arguments":{"password":"Pw0rdDupSecret8a","password":"Pw0rdDupSecret8b"}}}"#,
        "\0"
    );
    connection.send_bytes(frame.as_bytes()).unwrap();
    let reply = connection.receive();
    assert_eq!(
        parameters(&reply)["rule"],
        json!("duplicate"),
        "reply: {reply}"
    );
    assert!(!reply.to_string().contains("Secret"), "reply: {reply}");
    secrets.push("Pw0rdDupSecret8a".into());
    secrets.push("Pw0rdDupSecret8b".into());

    // The command-line client prints the broker's error on stderr.
    let output = run_client_as(
        &fixture,
        WWW_DATA,
        &["call", "set-password", "password=Pw0rd!CliSecret9"],
    );
    assert_eq!(output.code(), Some(65), "{}", output.describe());
    assert!(!output.stderr.contains("Secret"), "{}", output.describe());
    assert!(!output.stdout.contains("Secret"), "{}", output.describe());
    secrets.push("Pw0rd!CliSecret9".into());
    drop(connection);

    let mut broker = broker;
    broker.terminate();
    let diagnostics = broker.diagnostics();
    assert!(
        diagnostics.contains("<redacted, 17 bytes>"),
        "the log lacks the redacted run of the valid value\n{diagnostics}"
    );
    for secret in &secrets {
        assert!(
            !diagnostics.contains(secret.as_str()),
            "the broker output contains {secret:?}\n{diagnostics}"
        );
    }
    // Every secret contains "Secret", so this also catches one logged with its line break
    // or NUL escaped.
    assert!(!diagnostics.contains("Secret"), "{diagnostics}");
    assert_eq!(
        runs(&fixture).len(),
        1,
        "a rejected value reached the script"
    );
}

/// A user and two groups that exist for one test and are removed on drop, also when the
/// test fails. The user is listed as a member of `member_group` in /etc/group and not of
/// `other_group`.
struct TestAccounts {
    user: String,
    member_group: String,
    other_group: String,
}

static ACCOUNT_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestAccounts {
    fn create() -> TestAccounts {
        common::require_root();
        let base = format!(
            "ss-test-{}-{}",
            std::process::id(),
            ACCOUNT_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        // Built before the first account exists, so that Drop removes whatever the steps
        // below managed to create.
        let accounts = TestAccounts {
            user: base.clone(),
            member_group: format!("{base}-m"),
            other_group: format!("{base}-o"),
        };
        run_tool("groupadd", &["--system", &accounts.member_group]);
        run_tool("groupadd", &["--system", &accounts.other_group]);
        run_tool(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                "--groups",
                &accounts.member_group,
                &accounts.user,
            ],
        );
        accounts
    }

    fn uid(&self) -> u32 {
        SystemUser::from_name(&self.user)
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    }

    fn gid(&self) -> u32 {
        group_id(&self.user)
    }
}

impl Drop for TestAccounts {
    fn drop(&mut self) {
        // userdel also removes the user's own group when login.defs sets USERGROUPS_ENAB,
        // and groupdel then fails harmlessly.
        for (tool, name) in [
            ("userdel", &self.user),
            ("groupdel", &self.user),
            ("groupdel", &self.member_group),
            ("groupdel", &self.other_group),
        ] {
            let _ = Command::new(tool).arg(name).output();
        }
    }
}

fn group_id(name: &str) -> u32 {
    Group::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("group {name} does not exist"))
        .gid
        .as_raw()
}

/// Runs an account tool and panics with its output when it fails.
fn run_tool(tool: &str, args: &[&str]) {
    let output = Command::new(tool).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `secure_socket call COMMAND` with the given real and effective uid and gid and
/// exactly `groups` as supplementary groups, through setpriv.
fn call_with_groups(
    fixture: &Fixture,
    uid: u32,
    gid: u32,
    groups: &[u32],
    command: &str,
) -> ProcessOutput {
    let mut setpriv = Command::new("/usr/bin/setpriv");
    setpriv.arg(format!("--reuid={uid}"));
    setpriv.arg(format!("--regid={gid}"));
    if groups.is_empty() {
        setpriv.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        setpriv.arg(format!("--groups={}", list.join(",")));
    }
    setpriv
        .arg("--")
        .arg(fixture.client_binary())
        .args(["call", "--socket"])
        .arg(fixture.socket_path())
        .arg(command)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/");
    spawn(setpriv).finish(CLIENT_TIMEOUT)
}

#[test]
fn peer_matched_by_kernel_groups() {
    let accounts = TestAccounts::create();
    let fixture = Fixture::new();
    let policy = format!(
        r#"
[command.by-other-group]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_groups = ["{other}"]

[command.by-member-group]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_groups = ["{member}"]
"#,
        other = accounts.other_group,
        member = accounts.member_group,
    );
    fixture.write_policy("groups", &policy);
    fixture.write_script("record", RECORD_SCRIPT);
    let broker = Broker::start(&fixture, &[]);
    let (uid, gid) = (accounts.uid(), accounts.gid());
    let other = group_id(&accounts.other_group);
    let member = group_id(&accounts.member_group);

    // /etc/group does not list the user in other_group, but the process carries it as a
    // supplementary group, and the kernel's list is what counts.
    let output = call_with_groups(&fixture, uid, gid, &[other], "by-other-group");
    assert_eq!(
        output.code(),
        Some(0),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
    assert_eq!(runs(&fixture), ["by-other-group"]);

    // The same group as the primary group.
    let output = call_with_groups(&fixture, uid, other, &[], "by-other-group");
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert_eq!(runs(&fixture).len(), 2);

    // /etc/group lists the user in member_group, but this process does not carry it.
    let output = call_with_groups(&fixture, uid, gid, &[], "by-member-group");
    assert_eq!(output.code(), Some(65), "{}", output.describe());
    assert!(
        output.stderr.contains(PERMISSION_DENIED),
        "{}",
        output.describe()
    );
    let output = call_with_groups(&fixture, uid, gid, &[other], "by-member-group");
    assert_eq!(output.code(), Some(65), "{}", output.describe());
    assert_eq!(runs(&fixture).len(), 2, "a denied peer's script ran");

    let output = call_with_groups(&fixture, uid, gid, &[other, member], "by-member-group");
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert_eq!(runs(&fixture).len(), 3);
}

/// Debian's interpreter: www-data cannot enter /root, where pyenv's interpreters live.
const PYTHON: &str = "/usr/bin/python3";

/// Sends one Run without arguments and prints the reply frame.
const PYTHON_RUN: &str = r#"
import json, socket, sys
path, command = sys.argv[1], sys.argv[2]
connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
connection.connect(path)
request = {"method": "org.securesocket.Broker.Run", "parameters": {"command": command}}
connection.sendall(json.dumps(request).encode() + b"\0")
reply = b""
while not reply.endswith(b"\0"):
    chunk = connection.recv(4096)
    if not chunk:
        break
    reply += chunk
print(reply.rstrip(b"\0").decode())
"#;

#[test]
fn allow_executables_match_peer_binary() {
    let fixture = Fixture::new();
    // The kernel reports the executable with symbolic links resolved.
    let python = fs::canonicalize(PYTHON).unwrap();
    let client = fixture.client_binary().to_path_buf();
    let policy = format!(
        r#"
[command.python-only]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["www-data"]
allow_executables = ["{python}"]
capture_output = true

[command.client-only]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["www-data"]
allow_executables = ["{client}"]
capture_output = true
"#,
        python = python.display(),
        client = client.display(),
    );
    fixture.write_policy("executables", &policy);
    fixture.write_script("record", RECORD_SCRIPT);
    let program = fixture.path().join("run.py");
    fs::write(&program, PYTHON_RUN).unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o644)).unwrap();
    let broker = Broker::start(&fixture, &[]);

    let python_call = |command: &str| -> Value {
        let socket = fixture.socket_path();
        let args = [
            "-I",
            program.to_str().unwrap(),
            socket.to_str().unwrap(),
            command,
        ];
        let output =
            spawn(command_as(WWW_DATA, Path::new(PYTHON), &args, &[])).finish(CLIENT_TIMEOUT);
        assert_eq!(output.code(), Some(0), "{}", output.describe());
        serde_json::from_str(output.stdout.trim()).unwrap()
    };

    let reply = python_call("python-only");
    assert_eq!(
        error_name(&reply),
        None,
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(runs(&fixture), ["python-only"]);
    let reply = python_call("client-only");
    assert_eq!(error_name(&reply), Some(PERMISSION_DENIED), "{reply}");

    let output = run_client_as(&fixture, WWW_DATA, &["call", "client-only"]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    let output = run_client_as(&fixture, WWW_DATA, &["call", "python-only"]);
    assert_eq!(output.code(), Some(65), "{}", output.describe());
    assert!(
        output.stderr.contains(PERMISSION_DENIED),
        "{}",
        output.describe()
    );
    assert_eq!(runs(&fixture), ["python-only", "client-only"]);
}

const LIMITS_POLICY: &str = r#"
[command.one-at-a-time]
script = "@FIXTURE@/scripts/sleep"
run_as = "root"
allow_users = ["root"]
argv = ["{seconds}"]
max_concurrent = 1

[command.one-at-a-time.arguments.seconds]
type = "integer"
min = 0
max = 10

[command.limited]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root", "www-data"]
rate_limit = { requests = 2, per_seconds = 3600 }

[command.limited-short]
script = "@FIXTURE@/scripts/record"
run_as = "root"
allow_users = ["root"]
rate_limit = { requests = 1, per_seconds = 1 }
"#;

const SLEEP_SCRIPT: &str = "#!/bin/sh\n\
    echo \"$SECURE_SOCKET_COMMAND\" >> @FIXTURE@/out/runs\n\
    sleep \"$1\"\n";

fn start_limits_broker() -> (Fixture, Broker) {
    let fixture = Fixture::new();
    fixture.write_policy("limits", LIMITS_POLICY);
    fixture.write_script("sleep", SLEEP_SCRIPT);
    fixture.write_script("record", RECORD_SCRIPT);
    let broker = Broker::start(&fixture, &[]);
    (fixture, broker)
}

#[test]
fn max_concurrent_busy_after_wait() {
    let (fixture, broker) = start_limits_broker();
    let mut first = broker.connect();
    let holder = thread::spawn(move || first.run("one-at-a-time", json!({ "seconds": 5 })));
    assert!(
        wait_for(Duration::from_secs(5), || runs(&fixture).len() == 1),
        "the first run did not start\n{}",
        broker.diagnostics()
    );

    let started = Instant::now();
    let reply = broker
        .connect()
        .run("one-at-a-time", json!({ "seconds": 0 }));
    let waited = started.elapsed();

    assert_eq!(
        error_name(&reply),
        Some(BUSY),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    assert_eq!(parameters(&reply)["field"], json!("one-at-a-time"));
    assert_eq!(parameters(&reply)["rule"], json!("max_concurrent"));
    assert!(
        waited >= Duration::from_millis(1900),
        "Busy came after {waited:?}, before the 2 s wait"
    );
    let first_reply = holder.join().unwrap();
    assert_eq!(
        parameters(&first_reply)["exit_code"],
        json!(0),
        "{first_reply}"
    );
    assert_eq!(runs(&fixture).len(), 1, "the rejected request's script ran");

    // The slot is free again.
    let reply = broker
        .connect()
        .run("one-at-a-time", json!({ "seconds": 0 }));
    assert_eq!(parameters(&reply)["exit_code"], json!(0), "reply: {reply}");
    assert_eq!(runs(&fixture).len(), 2);
}

#[test]
fn rate_limit_rejects_excess_per_peer() {
    let (fixture, broker) = start_limits_broker();
    let mut connection = broker.connect();
    for request in 0..2 {
        let reply = connection.run("limited", json!({}));
        assert_eq!(
            error_name(&reply),
            None,
            "request {request}: {reply}\n{}",
            broker.diagnostics()
        );
    }

    let reply = connection.run("limited", json!({}));
    assert_eq!(error_name(&reply), Some(BUSY), "reply: {reply}");
    assert_eq!(parameters(&reply)["field"], json!("limited"));
    assert_eq!(parameters(&reply)["rule"], json!("rate_limit"));
    let message = parameters(&reply)["message"].as_str().unwrap();
    assert!(message.contains("\"limited\""), "{message}");
    // Two requests per hour: the next token comes 1800 s after the first request.
    let retry: u64 = message
        .rsplit_once("try again in ")
        .and_then(|(_, rest)| rest.strip_suffix(" s"))
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or_else(|| panic!("no retry time in {message:?}"));
    assert!((1790..=1800).contains(&retry), "{message}");
    assert_eq!(runs(&fixture).len(), 2, "the rate-limited request ran");

    // Another connection of the same uid shares the bucket.
    let reply = broker.connect().run("limited", json!({}));
    assert_eq!(parameters(&reply)["rule"], json!("rate_limit"), "{reply}");

    // Another uid has a bucket of its own.
    let output = run_client_as(&fixture, WWW_DATA, &["call", "limited"]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert_eq!(runs(&fixture).len(), 3);

    // One request per second: rejected at once, served again after a second.
    let reply = connection.run("limited-short", json!({}));
    assert_eq!(error_name(&reply), None, "reply: {reply}");
    let reply = connection.run("limited-short", json!({}));
    assert_eq!(parameters(&reply)["rule"], json!("rate_limit"), "{reply}");
    thread::sleep(Duration::from_millis(1100));
    let reply = connection.run("limited-short", json!({}));
    assert_eq!(error_name(&reply), None, "reply: {reply}");
    assert_eq!(runs(&fixture).len(), 5);
}

/// Version A and B of one command. Script, argv template and environment all change, so
/// a request served under a mix of both would print a mix.
const PROBE_A: &str = r#"
[command.probe]
script = "@FIXTURE@/scripts/probe-a"
run_as = "root"
allow_users = ["root"]
argv = ["A", "{n}"]
env = { VERSION = "A" }
capture_output = true
max_concurrent = 16

[command.probe.arguments.n]
type = "integer"
min = 0
max = 1000000
"#;

const PROBE_B: &str = r#"
[command.probe]
script = "@FIXTURE@/scripts/probe-b"
run_as = "root"
allow_users = ["root"]
argv = ["B", "n={n}"]
env = { VERSION = "B" }
capture_output = true
max_concurrent = 16

[command.probe.arguments.n]
type = "integer"
min = 0
max = 1000000
"#;

/// Prints the script's own version, then sleeps briefly so that reloads land while
/// scripts run, then prints what the policy passed in.
const PROBE_SCRIPT: &str = "#!/bin/sh\n\
    printf '%s\\0' \"script=@VERSION@\"\n\
    sleep 0.02\n\
    printf '%s\\0' \"env=$VERSION\" \"$@\"\n";

/// Returns the output each version prints for `n`.
fn probe_outputs(n: u64) -> [Vec<String>; 2] {
    let a = ["script=A", "env=A", "A"].map(String::from);
    let b = ["script=B", "env=B", "B"].map(String::from);
    let mut a = a.to_vec();
    a.push(n.to_string());
    let mut b = b.to_vec();
    b.push(format!("n={n}"));
    [a, b]
}

fn start_probe_broker() -> (Fixture, Broker) {
    let fixture = Fixture::new();
    fixture.write_script("probe-a", &PROBE_SCRIPT.replace("@VERSION@", "A"));
    fixture.write_script("probe-b", &PROBE_SCRIPT.replace("@VERSION@", "B"));
    fixture.write_policy("probe", PROBE_A);
    let broker = Broker::start(&fixture, &[]);
    (fixture, broker)
}

/// Replaces `policy/probe.toml` by a rename, so that the broker never reads half a file.
fn replace_probe_policy(fixture: &Fixture, text: &str) {
    let temporary = fixture.policy_dir().join(".probe.toml.new");
    fs::write(&temporary, fixture.expand(text)).unwrap();
    fs::set_permissions(&temporary, fs::Permissions::from_mode(0o644)).unwrap();
    fs::rename(&temporary, fixture.policy_dir().join("probe.toml")).unwrap();
}

/// Sends SIGHUP and waits until the log contains `marker` at least `expected` times.
fn reload_and_wait(fixture: &Fixture, broker: &Broker, marker: &str, expected: usize) {
    signal::kill(Pid::from_raw(broker.pid()), Signal::SIGHUP).unwrap();
    let count = || fixture.log().matches(marker).count();
    assert!(
        wait_for(Duration::from_secs(10), || count() >= expected),
        "the log shows {} of {expected} {marker:?}\n{}",
        count(),
        broker.diagnostics()
    );
}

/// Runs `probe` once with `n` and returns which version served it, or why the reply is
/// wrong.
fn probe_once(connection: &mut VarlinkConnection, n: u64) -> Result<char, String> {
    let reply = connection.run("probe", json!({ "n": n }));
    if error_name(&reply).is_some() || parameters(&reply)["exit_code"] != json!(0) {
        return Err(format!("request {n} failed: {reply}"));
    }
    let stdout = parameters(&reply)["stdout"].as_str().unwrap_or_default();
    let elements: Vec<String> = stdout.split_terminator('\0').map(String::from).collect();
    let [a, b] = probe_outputs(n);
    if elements == a {
        Ok('A')
    } else if elements == b {
        Ok('B')
    } else {
        Err(format!(
            "request {n} got a mixed or foreign output: {elements:?}"
        ))
    }
}

#[test]
fn reload_under_load_serves_whole_versions() {
    let (fixture, broker) = start_probe_broker();
    let socket = fixture.socket_path();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served = Arc::new(Mutex::new([0usize; 2]));

    let clients: Vec<_> = (0..3u64)
        .map(|client| {
            let (socket, stop) = (socket.clone(), stop.clone());
            let (failures, served) = (failures.clone(), served.clone());
            thread::spawn(move || {
                let mut n = client * 100_000;
                while !stop.load(Ordering::Relaxed) {
                    // A fresh connection now and then, well below max_requests_per_connection.
                    let mut connection = VarlinkConnection::connect(&socket);
                    for _ in 0..40 {
                        n += 1;
                        match probe_once(&mut connection, n) {
                            Ok(version) => served.lock().unwrap()[usize::from(version == 'B')] += 1,
                            Err(failure) => failures.lock().unwrap().push(failure),
                        }
                    }
                }
            })
        })
        .collect();

    let rounds = 20;
    for round in 0..rounds {
        let text = if round % 2 == 0 { PROBE_B } else { PROBE_A };
        replace_probe_policy(&fixture, text);
        reload_and_wait(&fixture, &broker, "policy reloaded", round + 1);
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} requests failed, first ones: {:#?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        broker.diagnostics()
    );
    let [a, b] = *served.lock().unwrap();
    assert!(a > 0, "no request was served by version A ({b} by B)");
    assert!(b > 0, "no request was served by version B ({a} by A)");
}

#[test]
fn broken_reload_keeps_old_policy() {
    let (fixture, broker) = start_probe_broker();
    let mut connection = broker.connect();
    assert_eq!(probe_once(&mut connection, 1), Ok('A'));

    // Version B plus a second command with a misspelt key: B must not take effect either.
    let broken = format!(
        "{PROBE_B}\n[command.other]\nscript = \"@FIXTURE@/scripts/probe-a\"\nrun_as = \"root\"\n\
         allow_users = [\"root\"]\ntimeout_sm = 5\n"
    );
    let line = broken[..broken.find("timeout_sm").unwrap()]
        .matches('\n')
        .count()
        + 1;
    replace_probe_policy(&fixture, &broken);
    reload_and_wait(&fixture, &broker, "policy reload rejected", 1);

    assert_eq!(probe_once(&mut connection, 2), Ok('A'));
    let log = fixture.log();
    let file = fixture.policy_dir().join("probe.toml");
    let error_line = log
        .lines()
        .find(|entry| entry.contains("command.other.timeout_sm"))
        .unwrap_or_else(|| panic!("no log line names the key\n{log}"));
    assert!(
        error_line.contains(&file.display().to_string()),
        "{error_line}"
    );
    assert!(error_line.contains(&format!("line={line}")), "{error_line}");
    assert!(error_line.contains("unknown field"), "{error_line}");

    // A valid policy is taken again after the rejected one.
    replace_probe_policy(&fixture, PROBE_B);
    reload_and_wait(&fixture, &broker, "policy reloaded", 1);
    assert_eq!(probe_once(&mut connection, 3), Ok('B'));
}

/// Returns a valid command for the check-policy tests, followed by `extra` lines in its
/// table.
fn checked_command(fixture: &Fixture, extra: &str) -> String {
    format!(
        "[command.job]\nscript = \"{}/scripts/record\"\nrun_as = \"root\"\n\
         allow_users = [\"www-data\"]\n{extra}\n",
        fixture.path().display()
    )
}

/// Writes `text` as the only policy file and runs `secure_socket check-policy` on it.
fn check_policy(fixture: &Fixture, text: &str) -> (PathBuf, ProcessOutput) {
    fixture.write_script("record", RECORD_SCRIPT);
    let file = fixture.write_policy("job", text);
    let dir = fixture.policy_dir().to_string_lossy().into_owned();
    let output = run_broker_to_exit(&["check-policy".to_string(), dir]);
    (file, output)
}

/// Checks that check-policy failed and printed `FILE:LINE: KEY: ...` with `detail`.
fn assert_check_names(output: &ProcessOutput, file: &Path, line: usize, key: &str, detail: &str) {
    assert_eq!(output.code(), Some(1), "{}", output.describe());
    let expected = format!("{}:{line}: {key}: ", file.display());
    let printed = output
        .stdout
        .lines()
        .find(|entry| entry.starts_with(&expected))
        .unwrap_or_else(|| panic!("no line starts with {expected:?}\n{}", output.describe()));
    assert!(printed.contains(detail), "{printed}");
}

fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

#[test]
fn check_policy_names_typo_key() {
    let fixture = Fixture::new();
    let text = checked_command(&fixture, "timout_ms = 5000");
    let (file, output) = check_policy(&fixture, &text);
    let line = line_of(&text, "timout_ms");
    assert_check_names(
        &output,
        &file,
        line,
        "command.job.timout_ms",
        "unknown field",
    );
}

#[test]
fn check_policy_names_bad_pattern() {
    let fixture = Fixture::new();
    let text = checked_command(
        &fixture,
        "argv = [\"{name}\"]\n[command.job.arguments.name]\ntype = \"string\"\npattern = \"[a-z\"",
    );
    let (file, output) = check_policy(&fixture, &text);
    let line = line_of(&text, "pattern");
    let key = "command.job.arguments.name.pattern";
    assert_check_names(&output, &file, line, key, "pattern");
}

#[test]
fn check_policy_names_unknown_user() {
    let fixture = Fixture::new();
    let text = checked_command(&fixture, "").replace("\"root\"", "\"no-such-user-ss\"");
    let (file, output) = check_policy(&fixture, &text);
    let line = line_of(&text, "run_as");
    assert_check_names(
        &output,
        &file,
        line,
        "command.job.run_as",
        "no-such-user-ss",
    );
}

#[test]
fn check_policy_names_unsafe_script() {
    let fixture = Fixture::new();
    let text = checked_command(&fixture, "");
    fixture.write_script("record", RECORD_SCRIPT);
    let script = fixture.scripts_dir().join("record");
    let file = fixture.write_policy("job", &text);
    fs::set_permissions(&script, fs::Permissions::from_mode(0o777)).unwrap();
    let dir = fixture.policy_dir().to_string_lossy().into_owned();
    let output = run_broker_to_exit(&["check-policy".to_string(), dir]);
    let line = line_of(&text, "script");
    assert_check_names(&output, &file, line, "command.job.script", "writable");
}

#[test]
fn check_policy_reports_every_error() {
    let fixture = Fixture::new();
    let text = format!(
        "{}\n[command.second]\nscript = \"scripts/relative\"\nrun_as = \"no-such-user-ss\"\n\
         allow_users = [\"www-data\"]\nrate_limit = {{ requests = 0, per_seconds = 60 }}\n",
        checked_command(&fixture, "timout_ms = 5000")
    );
    let (file, output) = check_policy(&fixture, &text);
    assert_check_names(
        &output,
        &file,
        line_of(&text, "timout_ms"),
        "command.job.timout_ms",
        "unknown field",
    );
    assert_check_names(
        &output,
        &file,
        line_of(&text, "scripts/relative"),
        "command.second.script",
        "absolute",
    );
    assert_check_names(
        &output,
        &file,
        line_of(&text, "no-such-user-ss"),
        "command.second.run_as",
        "no-such-user-ss",
    );
    assert_check_names(
        &output,
        &file,
        line_of(&text, "requests = 0"),
        "command.second.rate_limit.requests",
        "outside the range 1 to 10000",
    );
}

#[test]
fn check_policy_accepts_valid_dir() {
    let fixture = Fixture::new();
    let text = checked_command(&fixture, "rate_limit = { requests = 10, per_seconds = 60 }");
    let (_file, output) = check_policy(&fixture, &text);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert!(
        output.stdout.contains("valid, 1 command"),
        "{}",
        output.describe()
    );
}

#[test]
fn check_policy_accepts_every_type() {
    let fixture = Fixture::new();
    fixture.write_script("record", RECORD_SCRIPT);
    fixture.write_script("print-env", PRINT_ENV_SCRIPT);
    fixture.write_script("cat", CAT_SCRIPT);
    fixture.write_policy("types", TYPES_POLICY);
    let dir = fixture.policy_dir().to_string_lossy().into_owned();
    let output = run_broker_to_exit(&["check-policy".to_string(), dir]);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
}
