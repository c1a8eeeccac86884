//! Load tests on real files. They run as root, because fixtures must be owned by root and
//! some are handed to other users with chown. Fixtures live under /run, which is owned by
//! root and not world-writable; /tmp cannot hold them, because the ancestor checks rightly
//! reject everything below a world-writable directory.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::template::parse_template;
use super::*;
use crate::policy::types::{ArgKind, RateLimit, Rlimits, TemplatePart};

static NEXT_FIXTURE: AtomicUsize = AtomicUsize::new(0);

const WWW_DATA: u32 = 33;

/// A fresh directory `/run/secure_socket-policy-tests-PID-N` (mode 0755) holding `policy/`
/// and `bin/`, removed on drop, so also when a test fails.
struct Fixture {
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the policy load tests must run as root: fixtures are owned by root and some are \
             given to other users with chown"
        );
        let number = NEXT_FIXTURE.fetch_add(1, Ordering::Relaxed);
        let root = PathBuf::from(format!(
            "/run/secure_socket-policy-tests-{}-{number}",
            process::id()
        ));
        fs::create_dir(&root).unwrap();
        let fixture = Fixture { root };
        set_mode(&fixture.root, 0o755);
        fixture.make_dir("policy", 0o755);
        fixture.make_dir("bin", 0o755);
        fixture
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn make_dir(&self, relative: &str, mode: u32) -> PathBuf {
        let path = self.path(relative);
        fs::create_dir(&path).unwrap();
        set_mode(&path, mode);
        path
    }

    fn policy_dir(&self) -> PathBuf {
        self.path("policy")
    }

    fn write_policy(&self, name: &str, text: &str) -> PathBuf {
        let path = self.policy_dir().join(name);
        fs::write(&path, text).unwrap();
        set_mode(&path, 0o644);
        path
    }

    /// Writes a shell script at `relative` with `mode` and returns its absolute path.
    fn write_script(&self, relative: &str, mode: u32) -> String {
        let path = self.path(relative);
        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        set_mode(&path, mode);
        path.to_str().unwrap().to_owned()
    }

    fn script(&self) -> String {
        self.write_script("bin/script", 0o755)
    }

    fn load(&self) -> Result<Policy, LoadError> {
        load_dir(&self.policy_dir())
    }

    fn errors(&self) -> Vec<PolicyError> {
        self.load().unwrap_err().errors
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Returns a valid command named `name`, followed by `extra` lines in the same table.
fn command(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[command.{name}]\n\
         script = \"{script}\"\n\
         run_as = \"root\"\n\
         allow_users = [\"www-data\"]\n\
         {extra}\n"
    )
}

/// Returns the 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let offset = text.find(needle).unwrap();
    text[..offset].matches('\n').count() + 1
}

fn single(errors: Vec<PolicyError>) -> PolicyError {
    assert_eq!(errors.len(), 1, "expected one error: {errors:#?}");
    errors.into_iter().next().unwrap()
}

/// Loads one file `a.toml` with `text` and returns its only error.
fn single_error(fixture: &Fixture, text: &str) -> PolicyError {
    fixture.write_policy("a.toml", text);
    single(fixture.errors())
}

#[test]
fn minimal_command_defaults() {
    let fixture = Fixture::new();
    fixture.write_policy("a.toml", &command("ping", &fixture.script(), ""));
    let policy = fixture.load().unwrap();
    let ping = &policy.commands["ping"];
    assert_eq!(ping.spec.timeout_ms, 10_000);
    assert_eq!(ping.spec.output_limit, 65_536);
    assert_eq!(ping.spec.stdin_limit, 0);
    assert!(!ping.spec.capture_output);
    assert_eq!(ping.max_concurrent, 4);
    assert_eq!(ping.rlimits, Rlimits::default());
    assert_eq!(ping.allow_users, [WWW_DATA]);
    assert!(ping.allow_groups.is_empty());
    assert_eq!(ping.run_as.uid, 0);
    assert_eq!(ping.run_as.gid, 0);
    assert!(ping.argv.is_empty());
}

#[test]
fn origin_names_file_and_line() {
    let fixture = Fixture::new();
    let text = format!("# comment\n\n{}", command("ping", &fixture.script(), ""));
    let file = fixture.write_policy("a.toml", &text);
    let policy = fixture.load().unwrap();
    assert_eq!(
        policy.commands["ping"].origin,
        format!("{}:3", file.display())
    );
}

#[test]
fn full_command() {
    let fixture = Fixture::new();
    let script = fixture.script();
    let text = format!(
        r#"
[command.restart-service]
description = "Restart one of the web services"
script = "{script}"
run_as = "root"
run_as_group = "daemon"
allow_users = ["www-data", 1000, "65534"]
allow_groups = ["www-data"]
allow_executables = ["/usr/sbin/php-fpm8.2"]
argv = ["--service", "{{service}}", "--lines={{lines}}", "{{{{literal}}}}"]
env = {{ SERVICE = "{{service}}", TOKEN = "{{token}}" }}
timeout_ms = 5000
capture_output = true
output_limit = 4096
stdin_limit = 1024
max_concurrent = 2

[command.restart-service.rlimits]
cpu_seconds = 10
address_space = 1073741824
open_files = 256
processes = 64
file_size = 0

[command.restart-service.arguments.service]
type = "enum"
description = "Which service"
values = ["nginx", "php-fpm"]

[command.restart-service.arguments.lines]
type = "integer"
required = false
min = 1
max = 1000

[command.restart-service.arguments.token]
type = "string"
sensitive = true
max_length = 64
pattern = "[A-Za-z0-9]+"
charset = "[A-Za-z0-9]"
"#
    );
    fixture.write_policy("a.toml", &text);
    let policy = fixture.load().unwrap();
    let command = &policy.commands["restart-service"];
    let names: Vec<&str> = command
        .spec
        .arguments
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["lines", "service", "token"]);
    assert_eq!(command.run_as.gid, 1);
    assert_eq!(command.allow_users, [WWW_DATA, 1000, 65534]);
    assert_eq!(command.allow_groups, [WWW_DATA]);
    assert_eq!(
        command.allow_executables,
        [PathBuf::from("/usr/sbin/php-fpm8.2")]
    );
    assert_eq!(command.argv.len(), 4);
    assert_eq!(
        command.argv[3].parts,
        [TemplatePart::Literal("{literal}".to_owned())]
    );
    assert_eq!(command.env.len(), 2);
    assert_eq!(command.spec.timeout_ms, 5000);
    assert!(command.spec.capture_output);
    assert_eq!(command.spec.output_limit, 4096);
    assert_eq!(command.spec.stdin_limit, 1024);
    assert_eq!(command.max_concurrent, 2);
    assert_eq!(command.rlimits.open_files, Some(256));
    assert_eq!(command.rlimits.file_size, Some(0));
    assert!(!command.spec.arguments[0].required);
    assert!(command.spec.arguments[2].sensitive);
    assert!(matches!(
        command.spec.arguments[0].kind,
        ArgKind::Integer { min: 1, max: 1000 }
    ));
}

#[test]
fn typo_in_command_key() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "timeout_sm = 5");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.timeout_sm");
    assert_eq!(error.line, Some(line_of(&text, "timeout_sm")));
    assert_eq!(error.file, fixture.policy_dir().join("a.toml"));
    assert!(error.message.contains("unknown field"), "{}", error.message);
}

#[test]
fn typo_in_argument_key() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "[command.ping.arguments.host]\ntype = \"string\"\nmax_lenght = 5",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.arguments.host.max_lenght");
    assert_eq!(error.line, Some(line_of(&text, "max_lenght")));
}

#[test]
fn typo_in_rlimits_key() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "[command.ping.rlimits]\ncpu_second = 5",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.rlimits.cpu_second");
    assert_eq!(error.line, Some(line_of(&text, "cpu_second")));
}

#[test]
fn every_unknown_key_reported() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "first_typo = 1
second_typo = 2
run_as_group = \"no-such-group-xq\"",
    );
    fixture.write_policy("a.toml", &text);
    let keys: Vec<String> = fixture
        .errors()
        .into_iter()
        .map(|error| error.key)
        .collect();
    assert_eq!(
        keys,
        [
            "command.ping.first_typo",
            "command.ping.second_typo",
            "command.ping.run_as_group"
        ]
    );
}

#[test]
fn wrong_type_not_reported_missing() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "").replace("run_as = \"root\"", "run_as = true");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.run_as");
    assert_eq!(error.line, Some(line_of(&text, "run_as")));
}

#[test]
fn wrong_argument_type_not_reported_missing() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "[command.ping.arguments.count]\ntype = \"integer\"\nmin = \"1\"\nmax = 5",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.arguments.count.min");
}

#[test]
fn errors_in_line_order() {
    let fixture = Fixture::new();
    let script = fixture.script();
    let text = [
        command("zeta", &script, "timeout_ms = 0"),
        command("alpha", &script, "timeout_ms = 0"),
    ]
    .concat();
    fixture.write_policy("a.toml", &text);
    let keys: Vec<String> = fixture
        .errors()
        .into_iter()
        .map(|error| error.key)
        .collect();
    assert_eq!(
        keys,
        ["command.zeta.timeout_ms", "command.alpha.timeout_ms"]
    );
}

#[test]
fn unknown_top_level_key() {
    let fixture = Fixture::new();
    let text = format!(
        "[comand.ping]\n\n{}",
        command("pong", &fixture.script(), "")
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "comand");
    assert_eq!(error.line, Some(1));
}

#[test]
fn wrong_value_type() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "timeout_ms = \"5\"");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.timeout_ms");
    assert_eq!(error.line, Some(line_of(&text, "timeout_ms")));
}

#[test]
fn syntax_error_line() {
    let fixture = Fixture::new();
    let text = format!("{}\nbroken = = 1\n", command("ping", &fixture.script(), ""));
    fixture.write_policy("a.toml", &text);
    let errors = fixture.errors();
    assert!(!errors.is_empty());
    assert_eq!(errors[0].line, Some(line_of(&text, "broken")));
}

#[test]
fn bad_pattern() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "[command.ping.arguments.host]\ntype = \"string\"\npattern = \"[a-z\"",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.arguments.host.pattern");
    assert_eq!(error.line, Some(line_of(&text, "pattern")));
    assert!(
        error.message.contains("unclosed character class"),
        "{}",
        error.message
    );
}

#[test]
fn unanchoring_pattern() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "[command.ping.arguments.host]\ntype = \"string\"\npattern = \"a)|(?:b\"",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.arguments.host.pattern");
}

#[test]
fn oversized_pattern() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "[command.ping.arguments.host]\ntype = \"string\"\npattern = '\\w{1000}'",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.arguments.host.pattern");
    assert!(
        error.message.contains("compiles to more than"),
        "{}",
        error.message
    );
}

#[test]
fn bad_charset() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "[command.ping.arguments.host]\ntype = \"string\"\ncharset = \"[z-a]\"",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.arguments.host.charset");
}

#[test]
fn unknown_run_as_user() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "")
        .replace("run_as = \"root\"", "run_as = \"no-such-user-xq\"");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.run_as");
    assert_eq!(error.line, Some(line_of(&text, "run_as")));
    assert!(error.message.contains("unknown user"), "{}", error.message);
}

#[test]
fn unknown_allowed_user() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "")
        .replace("[\"www-data\"]", "[\"www-data\", \"no-such-user-xq\"]");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.allow_users");
    assert_eq!(error.line, Some(line_of(&text, "allow_users")));
}

#[test]
fn unknown_allowed_group() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "allow_groups = [\"no-such-group-xq\"]",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.allow_groups");
    assert!(error.message.contains("unknown group"), "{}", error.message);
}

#[test]
fn unknown_run_as_group() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "run_as_group = \"no-such-group-xq\"",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.run_as_group");
}

#[test]
fn reserved_ids() {
    // Each case replaces the allow_users line of the valid command.
    let cases = [
        ("allow_users = [65535]", "command.ping.allow_users"),
        ("allow_users = [4294967295]", "command.ping.allow_users"),
        ("allow_users = [\"65535\"]", "command.ping.allow_users"),
        ("allow_groups = [4294967295]", "command.ping.allow_groups"),
        ("allow_groups = [\"65535\"]", "command.ping.allow_groups"),
        (
            "allow_users = [33]\nrun_as_group = 65535",
            "command.ping.run_as_group",
        ),
    ];
    for (lines, key) in cases {
        let fixture = Fixture::new();
        let text =
            command("ping", &fixture.script(), "").replace("allow_users = [\"www-data\"]", lines);
        let error = single_error(&fixture, &text);
        assert_eq!(error.key, key, "case {lines}");
    }
}

#[test]
fn reserved_run_as_uid() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "").replace("\"root\"", "4294967295");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.run_as");
    assert!(error.message.contains("reserved"), "{}", error.message);
}

#[test]
fn out_of_range_ids() {
    let cases = [
        "allow_users = [-1]",
        "allow_users = [4294967296]",
        "allow_users = [\"99999999999\"]",
    ];
    for line in cases {
        let fixture = Fixture::new();
        let text =
            command("ping", &fixture.script(), "").replace("allow_users = [\"www-data\"]", line);
        let error = single_error(&fixture, &text);
        assert_eq!(error.key, "command.ping.allow_users", "case {line}");
    }
}

#[test]
fn numeric_peer_without_entry() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "").replace("[\"www-data\"]", "[123456]");
    fixture.write_policy("a.toml", &text);
    let policy = fixture.load().unwrap();
    assert_eq!(policy.commands["ping"].allow_users, [123_456]);
}

#[test]
fn numeric_run_as_without_entry() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "").replace("\"root\"", "123456");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.run_as");
}

#[test]
fn numeric_run_as() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "").replace("\"root\"", "\"1\"");
    fixture.write_policy("a.toml", &text);
    let policy = fixture.load().unwrap();
    assert_eq!(policy.commands["ping"].run_as.user, "daemon");
}

/// Returns the groups that `id -G` prints for `user`, sorted.
fn id_groups(user: &str) -> Vec<u32> {
    let output = process::Command::new("id")
        .args(["-G", user])
        .output()
        .unwrap();
    assert!(output.status.success());
    let mut groups: Vec<u32> = String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .map(|gid| gid.parse().unwrap())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

#[test]
fn supplementary_groups_match_id() {
    for user in ["root", "daemon", "www-data"] {
        let fixture = Fixture::new();
        let text =
            command("ping", &fixture.script(), "").replace("\"root\"", &format!("\"{user}\""));
        fixture.write_policy("a.toml", &text);
        let policy = fixture.load().unwrap();
        assert_eq!(
            policy.commands["ping"].run_as.groups,
            id_groups(user),
            "user {user}"
        );
    }
}

#[test]
fn both_allow_lists_empty() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "").replace("[\"www-data\"]", "[]");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.allow_users");
    assert_eq!(error.line, Some(line_of(&text, "[command.ping]")));
}

#[test]
fn relative_allowed_executable() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "allow_executables = [\"php-fpm\"]",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.allow_executables");
}

#[test]
fn unnormalised_allowed_executable() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "allow_executables = [\"/usr//bin/php\"]",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.allow_executables");
}

/// Loads a command whose script is `script` and returns the only error, which must be on
/// the `script` key.
fn script_error(fixture: &Fixture, script: &str) -> PolicyError {
    let text = command("ping", script, "");
    let error = single_error(fixture, &text);
    assert_eq!(error.key, "command.ping.script");
    assert_eq!(error.line, Some(line_of(&text, "script")));
    error
}

#[test]
fn script_relative() {
    let fixture = Fixture::new();
    fixture.script();
    let error = script_error(&fixture, "bin/script");
    assert!(error.message.contains("absolute"), "{}", error.message);
}

#[test]
fn script_not_normalised() {
    let fixture = Fixture::new();
    let script = fixture.script().replace("/bin/", "/bin/./");
    let error = script_error(&fixture, &script);
    assert!(error.message.contains("normalised"), "{}", error.message);
}

#[test]
fn script_missing() {
    let fixture = Fixture::new();
    let error = script_error(&fixture, fixture.path("bin/missing").to_str().unwrap());
    assert!(
        error.message.contains("does not exist"),
        "{}",
        error.message
    );
}

#[test]
fn script_group_writable() {
    let fixture = Fixture::new();
    let script = fixture.write_script("bin/script", 0o775);
    let error = script_error(&fixture, &script);
    assert!(
        error.message.contains("writable by group or others"),
        "{}",
        error.message
    );
}

#[test]
fn script_world_writable() {
    let fixture = Fixture::new();
    let script = fixture.write_script("bin/script", 0o757);
    let error = script_error(&fixture, &script);
    assert!(
        error.message.contains("writable by group or others"),
        "{}",
        error.message
    );
}

#[test]
fn script_owned_by_other_user() {
    let fixture = Fixture::new();
    let script = fixture.script();
    chown(&script, Some(WWW_DATA), None).unwrap();
    let error = script_error(&fixture, &script);
    assert!(
        error.message.contains("owned by uid 33"),
        "{}",
        error.message
    );
}

#[test]
fn script_owned_by_run_as() {
    let fixture = Fixture::new();
    let script = fixture.script();
    chown(&script, Some(WWW_DATA), None).unwrap();
    let text = command("ping", &script, "").replace("run_as = \"root\"", "run_as = \"www-data\"");
    fixture.write_policy("a.toml", &text);
    assert!(fixture.load().is_ok());
}

#[test]
fn script_not_executable_by_run_as() {
    let fixture = Fixture::new();
    let script = fixture.write_script("bin/script", 0o750);
    let text = command("ping", &script, "").replace("run_as = \"root\"", "run_as = \"www-data\"");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.script");
    assert!(
        error.message.contains("not executable"),
        "{}",
        error.message
    );
}

#[test]
fn script_executable_through_group() {
    let fixture = Fixture::new();
    let script = fixture.write_script("bin/script", 0o750);
    chown(&script, None, Some(WWW_DATA)).unwrap();
    let text = command("ping", &script, "").replace("run_as = \"root\"", "run_as = \"www-data\"");
    fixture.write_policy("a.toml", &text);
    assert!(fixture.load().is_ok());
}

#[test]
fn script_without_execute_bit() {
    let fixture = Fixture::new();
    let script = fixture.write_script("bin/script", 0o644);
    let error = script_error(&fixture, &script);
    assert!(
        error.message.contains("not executable"),
        "{}",
        error.message
    );
}

#[test]
fn script_setuid() {
    let fixture = Fixture::new();
    let script = fixture.write_script("bin/script", 0o4755);
    let error = script_error(&fixture, &script);
    assert!(error.message.contains("set-user-ID"), "{}", error.message);
}

#[test]
fn script_symlink() {
    let fixture = Fixture::new();
    let target = fixture.script();
    let link = fixture.path("bin/link");
    symlink(&target, &link).unwrap();
    let error = script_error(&fixture, link.to_str().unwrap());
    assert!(error.message.contains("symbolic link"), "{}", error.message);
}

#[test]
fn script_directory() {
    let fixture = Fixture::new();
    let directory = fixture.make_dir("bin/dir", 0o755);
    let error = script_error(&fixture, directory.to_str().unwrap());
    assert!(
        error.message.contains("not a regular file"),
        "{}",
        error.message
    );
}

#[test]
fn script_in_sticky_world_writable_dir() {
    let fixture = Fixture::new();
    let shared = fixture.make_dir("shared", 0o1777);
    let script = fixture.write_script("shared/script", 0o755);
    let error = script_error(&fixture, &script);
    assert!(
        error.message.contains(shared.to_str().unwrap()),
        "{}",
        error.message
    );
    assert!(error.message.contains("sticky bit"), "{}", error.message);
}

#[test]
fn script_in_group_writable_dir() {
    let fixture = Fixture::new();
    let shared = fixture.make_dir("shared", 0o775);
    let script = fixture.write_script("shared/script", 0o755);
    let error = script_error(&fixture, &script);
    assert!(
        error.message.contains(shared.to_str().unwrap()),
        "{}",
        error.message
    );
}

#[test]
fn script_dir_owned_by_other_user() {
    let fixture = Fixture::new();
    let owned = fixture.make_dir("owned", 0o755);
    chown(&owned, Some(WWW_DATA), None).unwrap();
    let script = fixture.write_script("owned/script", 0o755);
    let error = script_error(&fixture, &script);
    assert!(
        error.message.contains("owned by uid 33"),
        "{}",
        error.message
    );
}

#[test]
fn script_under_unsafe_grandparent() {
    let fixture = Fixture::new();
    fixture.make_dir("open", 0o777);
    fixture.make_dir("open/inner", 0o755);
    let script = fixture.write_script("open/inner/script", 0o755);
    let error = script_error(&fixture, &script);
    assert!(
        error.message.contains("open is writable"),
        "{}",
        error.message
    );
}

#[test]
fn script_through_root_symlinked_dir() {
    let fixture = Fixture::new();
    let script = fixture.script();
    symlink(fixture.path("bin"), fixture.path("linked")).unwrap();
    let through_link = script.replace("/bin/", "/linked/");
    fixture.write_policy("a.toml", &command("ping", &through_link, ""));
    assert!(fixture.load().is_ok());
}

#[test]
fn script_through_symlink_to_unsafe_dir() {
    let fixture = Fixture::new();
    fixture.make_dir("shared", 0o777);
    let script = fixture.write_script("shared/script", 0o755);
    symlink(fixture.path("shared"), fixture.path("linked")).unwrap();
    let through_link = script.replace("/shared/", "/linked/");
    let error = script_error(&fixture, &through_link);
    assert!(
        error.message.contains("shared is writable"),
        "{}",
        error.message
    );
}

#[test]
fn duplicate_command_across_files() {
    let fixture = Fixture::new();
    let script = fixture.script();
    let first = fixture.write_policy("a.toml", &command("ping", &script, ""));
    let text = format!("\n{}", command("ping", &script, ""));
    let second = fixture.write_policy("b.toml", &text);
    let error = single(fixture.errors());
    assert_eq!(error.key, "command.ping");
    assert_eq!(error.file, second);
    assert_eq!(error.line, Some(2));
    assert!(
        error.message.contains(&format!("{}:1", first.display())),
        "{}",
        error.message
    );
    assert!(
        error.message.contains(&format!("{}:2", second.display())),
        "{}",
        error.message
    );
}

#[test]
fn errors_from_every_file() {
    let fixture = Fixture::new();
    let script = fixture.script();
    let first = fixture.write_policy("a.toml", &command("one", &script, "bogus = 1"));
    let second = fixture.write_policy("b.toml", &command("two", &script, "timeout_ms = 0"));
    let errors = fixture.errors();
    let files: Vec<&Path> = errors.iter().map(|error| error.file.as_path()).collect();
    assert_eq!(files, [first.as_path(), second.as_path()]);
}

#[test]
fn errors_from_every_argument() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "[command.ping.arguments.a]\ntype = \"string\"\ntypo = 1\n\
         [command.ping.arguments.b]\ntype = \"integer\"\nmin = 2\nmax = 1\n",
    );
    fixture.write_policy("a.toml", &text);
    let keys: Vec<String> = fixture
        .errors()
        .into_iter()
        .map(|error| error.key)
        .collect();
    assert_eq!(
        keys,
        [
            "command.ping.arguments.a.typo",
            "command.ping.arguments.b.max"
        ]
    );
}

#[test]
fn unknown_template_argument() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "argv = [\"--host={hots}\"]");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.argv");
    assert_eq!(error.line, Some(line_of(&text, "argv")));
    assert!(error.message.contains("{hots}"), "{}", error.message);
}

#[test]
fn unknown_env_template_argument() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "env = { HOST = \"{host}\" }");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.env.HOST");
}

#[test]
fn unbalanced_template_braces() {
    for element in ["{host", "host}", "{}", "{ host }", "{Host}"] {
        let fixture = Fixture::new();
        let extra =
            format!("argv = [\"{element}\"]\n[command.ping.arguments.host]\ntype = \"string\"");
        let error = single_error(&fixture, &command("ping", &fixture.script(), &extra));
        assert_eq!(error.key, "command.ping.argv", "element {element}");
    }
}

#[test]
fn template_parsing() {
    let literal = |text: &str| TemplatePart::Literal(text.to_owned());
    let argument = |name: &str| TemplatePart::Argument(name.to_owned());
    let cases = [
        ("plain", vec![literal("plain")]),
        ("", vec![]),
        ("{a}", vec![argument("a")]),
        ("--x={a}", vec![literal("--x="), argument("a")]),
        ("{a}{b}", vec![argument("a"), argument("b")]),
        ("{{a}}", vec![literal("{a}")]),
        ("{{{a}}}", vec![literal("{"), argument("a"), literal("}")]),
        ("a}}b{{c", vec![literal("a}b{c")]),
    ];
    for (text, parts) in cases {
        assert_eq!(
            parse_template(text).map(|t| t.parts),
            Ok(parts),
            "template {text:?}"
        );
    }
}

#[test]
fn template_parse_errors() {
    for text in ["{", "}", "{a", "a}", "{}", "{-a}", "{a b}", "{{a}", "{a}}"] {
        assert!(parse_template(text).is_err(), "template {text:?}");
    }
}

#[test]
fn sensitive_argument_in_argv() {
    let fixture = Fixture::new();
    let text = command(
        "login",
        &fixture.script(),
        "argv = [\"{password}\"]\n\
         [command.login.arguments.password]\ntype = \"string\"\nsensitive = true",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.login.argv");
    assert!(error.message.contains("sensitive"), "{}", error.message);
}

#[test]
fn sensitive_argument_in_env() {
    let fixture = Fixture::new();
    let text = command(
        "login",
        &fixture.script(),
        "env = { PASSWORD = \"{password}\" }\n\
         [command.login.arguments.password]\ntype = \"string\"\nsensitive = true",
    );
    fixture.write_policy("a.toml", &text);
    assert!(fixture.load().is_ok());
}

#[test]
fn env_names() {
    let cases = [
        ("lower", false),
        ("1ABC", false),
        ("A-B", false),
        ("PATH", false),
        ("LD_PRELOAD", false),
        ("LD_LIBRARY_PATH", false),
        ("SECURE_SOCKET_COMMAND", false),
        ("MY_VAR_2", true),
        ("_PRIVATE", true),
        ("PATHS", true),
    ];
    for (name, accepted) in cases {
        let fixture = Fixture::new();
        let text = command(
            "ping",
            &fixture.script(),
            &format!("env = {{ \"{name}\" = \"x\" }}"),
        );
        fixture.write_policy("a.toml", &text);
        match fixture.load() {
            Ok(_) => assert!(accepted, "{name} was accepted"),
            Err(error) => {
                assert!(!accepted, "{name} was rejected: {error}");
                assert_eq!(single(error.errors).key, format!("command.ping.env.{name}"));
            }
        }
    }
}

#[test]
fn code_loading_variable_from_argument() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "env = { BASH_ENV = \"{file}\" }\n[command.ping.arguments.file]\ntype = \"string\"",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.env.BASH_ENV");
}

#[test]
fn code_loading_variable_literal() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "env = { PYTHONPATH = \"/opt/lib\" }",
    );
    fixture.write_policy("a.toml", &text);
    assert!(fixture.load().is_ok());
}

#[test]
fn nul_in_literal() {
    let fixture = Fixture::new();
    let text = command("ping", &fixture.script(), "argv = [\"a\\u0000b\"]");
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.argv");
}

#[test]
fn numeric_limits() {
    let cases = [
        ("timeout_ms = 0", "command.ping.timeout_ms"),
        ("timeout_ms = 3600001", "command.ping.timeout_ms"),
        ("output_limit = 0", "command.ping.output_limit"),
        ("output_limit = 65537", "command.ping.output_limit"),
        ("stdin_limit = -1", "command.ping.stdin_limit"),
        ("stdin_limit = 65537", "command.ping.stdin_limit"),
        ("max_concurrent = 0", "command.ping.max_concurrent"),
        ("max_concurrent = 1025", "command.ping.max_concurrent"),
        (
            "rlimits = { open_files = 2 }",
            "command.ping.rlimits.open_files",
        ),
        (
            "rlimits = { cpu_seconds = 0 }",
            "command.ping.rlimits.cpu_seconds",
        ),
        (
            "rlimits = { file_size = -1 }",
            "command.ping.rlimits.file_size",
        ),
    ];
    for (line, key) in cases {
        let fixture = Fixture::new();
        let text = command("ping", &fixture.script(), line);
        let error = single_error(&fixture, &text);
        assert_eq!(error.key, key, "case {line}");
    }
}

#[test]
fn numeric_limits_at_bounds() {
    let fixture = Fixture::new();
    let extra = "timeout_ms = 3600000\noutput_limit = 65536\nstdin_limit = 65536\n\
                 max_concurrent = 1024";
    fixture.write_policy("a.toml", &command("ping", &fixture.script(), extra));
    assert!(fixture.load().is_ok());
}

#[test]
fn rate_limit_inline_and_table() {
    let fixture = Fixture::new();
    let script = fixture.script();
    let inline = command(
        "inline",
        &script,
        "rate_limit = { requests = 10, per_seconds = 60 }",
    );
    let table = command(
        "table",
        &script,
        "[command.table.rate_limit]\nrequests = 1\nper_seconds = 86400",
    );
    fixture.write_policy("a.toml", &format!("{inline}\n{table}"));
    let policy = fixture.load().unwrap();
    let expected = RateLimit {
        requests: 10,
        per_seconds: 60,
    };
    assert_eq!(policy.commands["inline"].rate_limit, Some(expected));
    assert_eq!(
        policy.commands["inline"].rate_limit.unwrap().interval(),
        std::time::Duration::from_secs(6)
    );
    let expected = RateLimit {
        requests: 1,
        per_seconds: 86_400,
    };
    assert_eq!(policy.commands["table"].rate_limit, Some(expected));
}

#[test]
fn rate_limit_absent_by_default() {
    let fixture = Fixture::new();
    fixture.write_policy("a.toml", &command("ping", &fixture.script(), ""));
    assert_eq!(fixture.load().unwrap().commands["ping"].rate_limit, None);
}

#[test]
fn rate_limit_errors() {
    let cases = [
        (
            "rate_limit = { requests = 10, per_second = 60 }",
            "command.ping.rate_limit.per_second",
            "per_second",
        ),
        (
            "rate_limit = { requests = 10 }",
            "command.ping.rate_limit.per_seconds",
            "rate_limit",
        ),
        (
            "rate_limit = { per_seconds = 60 }",
            "command.ping.rate_limit.requests",
            "rate_limit",
        ),
        (
            "rate_limit = { requests = 0, per_seconds = 60 }",
            "command.ping.rate_limit.requests",
            "requests = 0",
        ),
        (
            "rate_limit = { requests = 10001, per_seconds = 60 }",
            "command.ping.rate_limit.requests",
            "requests = 10001",
        ),
        (
            "rate_limit = { requests = 10, per_seconds = 0 }",
            "command.ping.rate_limit.per_seconds",
            "per_seconds = 0",
        ),
        (
            "rate_limit = { requests = 10, per_seconds = 86401 }",
            "command.ping.rate_limit.per_seconds",
            "per_seconds = 86401",
        ),
        (
            "rate_limit = { requests = \"10\", per_seconds = 60 }",
            "command.ping.rate_limit.requests",
            "requests = ",
        ),
        ("rate_limit = 10", "command.ping.rate_limit", "rate_limit"),
    ];
    for (line, key, place) in cases {
        let fixture = Fixture::new();
        let text = command("ping", &fixture.script(), line);
        let error = single_error(&fixture, &text);
        assert_eq!(error.key, key, "case {line}: {error}");
        assert_eq!(error.line, Some(line_of(&text, place)), "case {line}");
    }
}

/// Loads a command with one argument `arg` declared by `body` and returns the only error.
fn argument_error(body: &str) -> PolicyError {
    let fixture = Fixture::new();
    let extra = format!("[command.ping.arguments.arg]\n{body}");
    let text = command("ping", &fixture.script(), &extra);
    single_error(&fixture, &text)
}

#[test]
fn argument_declaration_errors() {
    let cases = [
        ("description = \"x\"", "type"),
        ("type = \"text\"", "type"),
        ("type = \"string\"\nmax_length = 0", "max_length"),
        ("type = \"string\"\nmax_length = 65537", "max_length"),
        ("type = \"string\"\nmin = 1", "min"),
        ("type = \"string\"\nvalues = [\"a\"]", "values"),
        ("type = \"integer\"\nmax = 1", "min"),
        ("type = \"integer\"\nmin = 1", "max"),
        ("type = \"integer\"\nmin = 2\nmax = 1", "max"),
        (
            "type = \"integer\"\nmin = 0\nmax = 1\npattern = \"x\"",
            "pattern",
        ),
        ("type = \"enum\"", "values"),
        ("type = \"enum\"\nvalues = []", "values"),
        ("type = \"enum\"\nvalues = [\"\"]", "values"),
        ("type = \"enum\"\nvalues = [\"-f\"]", "values"),
        ("type = \"enum\"\nvalues = [\"a\\nb\"]", "values"),
        ("type = \"enum\"\nvalues = [\"a\\tb\"]", "values"),
        ("type = \"enum\"\nvalues = [\"a\", \"a\"]", "values"),
        (
            "type = \"enum\"\nvalues = [\"a\"]\nallow_newline = true",
            "allow_newline",
        ),
        ("type = \"boolean\"\nmax_length = 3", "max_length"),
        ("type = \"path\"", "prefixes"),
        ("type = \"path\"\nprefixes = []", "prefixes"),
        ("type = \"path\"\nprefixes = [\"srv\"]", "prefixes"),
        ("type = \"path\"\nprefixes = [\"/srv/\"]", "prefixes"),
        ("type = \"path\"\nprefixes = [\"/srv/../etc\"]", "prefixes"),
        (
            "type = \"path\"\nprefixes = [\"/srv\"]\nmax_length = 4097",
            "max_length",
        ),
        (
            "type = \"path\"\nprefixes = [\"/srv\"]\nallow_leading_dash = true",
            "allow_leading_dash",
        ),
        (
            "type = \"string\"\ndescription = \"a\\u001bb\"",
            "description",
        ),
    ];
    for (body, key) in cases {
        let error = argument_error(body);
        assert_eq!(
            error.key,
            format!("command.ping.arguments.arg.{key}"),
            "case {body:?}"
        );
    }
}

#[test]
fn invalid_argument_name() {
    let fixture = Fixture::new();
    let text = command(
        "ping",
        &fixture.script(),
        "[command.ping.arguments.Host]\ntype = \"string\"",
    );
    let error = single_error(&fixture, &text);
    assert_eq!(error.key, "command.ping.arguments.Host");
}

#[test]
fn invalid_command_names() {
    for name in ["Ping", "-ping", "\"pi ng\"", "\"\"", &"p".repeat(65)] {
        let fixture = Fixture::new();
        let text = command(name, &fixture.script(), "");
        let error = single_error(&fixture, &text);
        assert!(
            error.key.starts_with("command."),
            "name {name}: {}",
            error.key
        );
        assert_eq!(error.line, Some(1), "name {name}");
    }
}

#[test]
fn valid_command_names() {
    let fixture = Fixture::new();
    let script = fixture.script();
    let text = [
        command("a", &script, ""),
        command("\"0.b_c-d\"", &script, ""),
    ]
    .concat();
    fixture.write_policy("a.toml", &text);
    assert_eq!(check_dir(&fixture.policy_dir()), Ok(2));
}

#[test]
fn missing_required_keys() {
    let fixture = Fixture::new();
    fixture.write_policy("a.toml", "[command.ping]\nallow_users = [\"www-data\"]\n");
    let keys: Vec<String> = fixture
        .errors()
        .into_iter()
        .map(|error| error.key)
        .collect();
    assert_eq!(keys, ["command.ping.run_as", "command.ping.script"]);
}

#[test]
fn unsafe_policy_file_mode() {
    let fixture = Fixture::new();
    let file = fixture.write_policy("a.toml", &command("ping", &fixture.script(), ""));
    set_mode(&file, 0o664);
    let error = single(fixture.errors());
    assert_eq!(error.file, file);
    assert_eq!(error.line, None);
    assert!(
        error.message.contains("writable by group or others"),
        "{}",
        error.message
    );
}

#[test]
fn policy_file_owned_by_other_user() {
    let fixture = Fixture::new();
    let file = fixture.write_policy("a.toml", &command("ping", &fixture.script(), ""));
    chown(&file, Some(WWW_DATA), None).unwrap();
    let error = single(fixture.errors());
    assert_eq!(error.file, file);
    assert!(
        error.message.contains("owned by uid 33"),
        "{}",
        error.message
    );
}

#[test]
fn symlinked_policy_file() {
    let fixture = Fixture::new();
    let target = fixture.path("real.toml");
    fs::write(&target, command("ping", &fixture.script(), "")).unwrap();
    set_mode(&target, 0o644);
    let link = fixture.policy_dir().join("a.toml");
    symlink(&target, &link).unwrap();
    let errors = fixture.errors();
    let first = &errors[0];
    assert_eq!(first.file, link);
    assert!(first.message.contains("symbolic link"), "{}", first.message);
}

#[test]
fn policy_dir_group_writable() {
    let fixture = Fixture::new();
    fixture.write_policy("a.toml", &command("ping", &fixture.script(), ""));
    set_mode(&fixture.policy_dir(), 0o775);
    let error = single(fixture.errors());
    assert_eq!(error.file, fixture.policy_dir());
    assert!(
        error.message.contains("writable by group or others"),
        "{}",
        error.message
    );
}

#[test]
fn policy_dir_symlink() {
    let fixture = Fixture::new();
    fixture.write_policy("a.toml", &command("ping", &fixture.script(), ""));
    let link = fixture.path("linked-policy");
    symlink(fixture.policy_dir(), &link).unwrap();
    let error = single(load_dir(&link).unwrap_err().errors);
    assert!(error.message.contains("symbolic link"), "{}", error.message);
}

#[test]
fn policy_dir_under_world_writable() {
    let fixture = Fixture::new();
    let open = fixture.make_dir("open", 0o1777);
    let dir = fixture.make_dir("open/policy", 0o755);
    let errors = load_dir(&dir).unwrap_err().errors;
    assert!(
        errors[0].message.contains(open.to_str().unwrap()),
        "{}",
        errors[0].message
    );
}

#[test]
fn policy_dir_missing() {
    let fixture = Fixture::new();
    let error = single(load_dir(&fixture.path("absent")).unwrap_err().errors);
    assert!(
        error.message.contains("failed to inspect"),
        "{}",
        error.message
    );
}

#[test]
fn no_commands() {
    let fixture = Fixture::new();
    fixture.write_policy("a.toml", "# nothing yet\n");
    let error = single(fixture.errors());
    assert_eq!(error.file, fixture.policy_dir());
    assert_eq!(error.key, "command");
}

#[test]
fn empty_directory() {
    let fixture = Fixture::new();
    let error = single(fixture.errors());
    assert_eq!(error.key, "command");
}

#[test]
fn other_files_ignored() {
    let fixture = Fixture::new();
    fixture.write_policy("a.toml", &command("ping", &fixture.script(), ""));
    fixture.write_policy("notes.txt", "not toml at all = = =");
    fixture.write_policy(".hidden.toml", "not toml at all = = =");
    fixture.write_policy("a.toml.bak", "not toml at all = = =");
    assert_eq!(check_dir(&fixture.policy_dir()), Ok(1));
}

#[test]
fn files_loaded_in_name_order() {
    let fixture = Fixture::new();
    let script = fixture.script();
    let text = command("ping", &script, "");
    fixture.write_policy("b.toml", &text);
    let first = fixture.write_policy("a.toml", &text);
    let error = single(fixture.errors());
    assert!(
        error.message.contains(&format!("{}:1", first.display())),
        "{}",
        error.message
    );
}

#[test]
fn oversized_policy_file() {
    let fixture = Fixture::new();
    let padding = "#".repeat(1 << 20);
    let file = fixture.write_policy("a.toml", &format!("{padding}\n"));
    let error = single(fixture.errors());
    assert_eq!(error.file, file);
    assert!(error.message.contains("larger than"), "{}", error.message);
}

#[test]
fn invalid_utf8_policy_file() {
    let fixture = Fixture::new();
    let file = fixture.write_policy("a.toml", "");
    fs::write(&file, b"# \xff\n").unwrap();
    let error = single(fixture.errors());
    assert!(error.message.contains("UTF-8"), "{}", error.message);
}

#[test]
fn error_display_format() {
    let error = PolicyError {
        file: PathBuf::from("/etc/p/a.toml"),
        line: Some(7),
        key: "command.x.script".to_owned(),
        message: "script /x does not exist".to_owned(),
    };
    assert_eq!(
        error.to_string(),
        "/etc/p/a.toml:7: command.x.script: script /x does not exist"
    );
}

#[test]
fn error_display_without_line_or_key() {
    let error = PolicyError {
        file: PathBuf::from("/etc/p/a.toml"),
        line: None,
        key: String::new(),
        message: "policy file is not a regular file".to_owned(),
    };
    assert_eq!(
        error.to_string(),
        "/etc/p/a.toml: policy file is not a regular file"
    );
}

#[test]
fn load_error_counts_more_errors() {
    let error = |message: &str| PolicyError {
        file: PathBuf::from("/etc/p/a.toml"),
        line: None,
        key: String::new(),
        message: message.to_owned(),
    };
    let two = LoadError {
        errors: vec![error("first"), error("second")],
    };
    assert_eq!(
        two.to_string(),
        "invalid policy: /etc/p/a.toml: first (and 1 more error)"
    );
    let three = LoadError {
        errors: vec![error("first"), error("second"), error("third")],
    };
    assert_eq!(
        three.to_string(),
        "invalid policy: /etc/p/a.toml: first (and 2 more errors)"
    );
}
