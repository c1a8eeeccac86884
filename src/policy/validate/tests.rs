use super::*;
use crate::policy::types::Pattern;

fn spec(name: &str, kind: ArgKind) -> ArgSpec {
    ArgSpec {
        name: name.to_owned(),
        description: String::new(),
        kind,
        required: true,
        sensitive: false,
        allow_leading_dash: false,
        allow_newline: false,
        allow_control: false,
    }
}

fn string_kind(max_length: usize) -> ArgKind {
    ArgKind::String {
        max_length,
        pattern: None,
        charset: None,
    }
}

fn string_spec(max_length: usize) -> ArgSpec {
    spec("text", string_kind(max_length))
}

fn pattern_spec(source: &str) -> ArgSpec {
    spec(
        "text",
        ArgKind::String {
            max_length: 256,
            pattern: Some(Pattern::new(source).unwrap()),
            charset: None,
        },
    )
}

fn charset_spec(source: &str) -> ArgSpec {
    spec(
        "text",
        ArgKind::String {
            max_length: 256,
            pattern: None,
            charset: Some(Pattern::new(source).unwrap()),
        },
    )
}

fn allowing(mut spec: ArgSpec, dash: bool, newline: bool, control: bool) -> ArgSpec {
    spec.allow_leading_dash = dash;
    spec.allow_newline = newline;
    spec.allow_control = control;
    spec
}

fn integer_spec(min: i64, max: i64) -> ArgSpec {
    spec("count", ArgKind::Integer { min, max })
}

fn enum_spec() -> ArgSpec {
    spec(
        "action",
        ArgKind::Enum {
            values: vec!["start".to_owned(), "stop".to_owned()],
        },
    )
}

fn path_spec(prefixes: &[&str], max_length: usize) -> ArgSpec {
    spec(
        "path",
        ArgKind::Path {
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            max_length,
        },
    )
}

fn text(value: &str) -> ArgValue {
    ArgValue::Str(value.to_owned())
}

/// Checks every case and reports each mismatch with its label.
fn run_cases(cases: Vec<(&str, ArgSpec, ArgValue, Result<(), &str>)>) {
    for (label, spec, value, expected) in cases {
        let outcome = spec.check(&value).map_err(|error| error.rule);
        assert_eq!(outcome, expected, "case: {label}");
    }
}

#[test]
fn string_defaults() {
    run_cases(vec![
        ("plain", string_spec(8), text("plain"), Ok(())),
        ("empty", string_spec(8), text(""), Ok(())),
        ("at the limit", string_spec(8), text("12345678"), Ok(())),
        (
            "over the limit",
            string_spec(8),
            text("123456789"),
            Err("max_length"),
        ),
        (
            "limit counts bytes",
            string_spec(8),
            text("ééééé"),
            Err("max_length"),
        ),
        ("inner dash", string_spec(8), text("a-b"), Ok(())),
        ("space", string_spec(8), text("a b"), Ok(())),
        ("non-ASCII letter", string_spec(8), text("é"), Ok(())),
        ("NUL", string_spec(8), text("a\0b"), Err("nul")),
        ("tab", string_spec(8), text("a\tb"), Err("control")),
        ("escape", string_spec(8), text("a\x1bb"), Err("control")),
        ("DEL", string_spec(8), text("a\x7fb"), Err("control")),
        ("C1 CSI", string_spec(8), text("a\u{9b}b"), Err("control")),
        (
            "bidi override",
            string_spec(8),
            text("a\u{202e}b"),
            Err("control"),
        ),
        (
            "bidi isolate",
            string_spec(8),
            text("a\u{2066}b"),
            Err("control"),
        ),
        ("line feed", string_spec(8), text("a\nb"), Err("newline")),
        (
            "carriage return",
            string_spec(8),
            text("a\rb"),
            Err("newline"),
        ),
        (
            "next line",
            string_spec(8),
            text("a\u{85}b"),
            Err("newline"),
        ),
        (
            "line separator",
            string_spec(8),
            text("a\u{2028}b"),
            Err("newline"),
        ),
        (
            "leading dash",
            string_spec(8),
            text("-rf"),
            Err("leading_dash"),
        ),
        (
            "double dash",
            string_spec(8),
            text("--"),
            Err("leading_dash"),
        ),
        ("integer", string_spec(8), ArgValue::Int(1), Err("type")),
        ("boolean", string_spec(8), ArgValue::Bool(true), Err("type")),
    ]);
}

#[test]
fn string_allowances() {
    let dash = allowing(string_spec(8), true, false, false);
    let newline = allowing(string_spec(8), false, true, false);
    let control = allowing(string_spec(8), false, false, true);
    let all = allowing(string_spec(8), true, true, true);
    run_cases(vec![
        ("dash allowed", dash.clone(), text("-v"), Ok(())),
        ("dash allows no newline", dash, text("-\n"), Err("newline")),
        ("newline allowed", newline.clone(), text("a\nb"), Ok(())),
        (
            "carriage return allowed",
            newline.clone(),
            text("a\r\nb"),
            Ok(()),
        ),
        (
            "newline allows no tab",
            newline,
            text("a\tb"),
            Err("control"),
        ),
        ("control allowed", control.clone(), text("a\tb"), Ok(())),
        (
            "control allows no newline",
            control.clone(),
            text("a\nb"),
            Err("newline"),
        ),
        ("control allows no NUL", control, text("a\0b"), Err("nul")),
        ("all allow no NUL", all.clone(), text("-\0"), Err("nul")),
        ("all allowed", all, text("-\n\t"), Ok(())),
    ]);
}

#[test]
fn string_charset() {
    let charset = || charset_spec("[a-z0-9._-]");
    run_cases(vec![
        ("inside", charset(), text("abc.1_x"), Ok(())),
        ("empty", charset(), text(""), Ok(())),
        ("upper case", charset(), text("abC"), Err("charset")),
        ("space", charset(), text("a b"), Err("charset")),
        ("non-ASCII", charset(), text("é"), Err("charset")),
        (
            "leading dash first",
            charset(),
            text("-a"),
            Err("leading_dash"),
        ),
        (
            "multi-character charset",
            charset_spec("ab"),
            text("ab"),
            Err("charset"),
        ),
    ]);
}

#[test]
fn string_pattern() {
    run_cases(vec![
        ("full match", pattern_spec("[a-z]+"), text("abc"), Ok(())),
        (
            "trailing extra",
            pattern_spec("[a-z]+"),
            text("abc1"),
            Err("pattern"),
        ),
        (
            "leading extra",
            pattern_spec("[a-z]+"),
            text("1abc"),
            Err("pattern"),
        ),
        ("empty", pattern_spec("[a-z]+"), text(""), Err("pattern")),
        ("alternation left", pattern_spec("a|b"), text("a"), Ok(())),
        (
            "alternation anchored",
            pattern_spec("a|b"),
            text("ab"),
            Err("pattern"),
        ),
        (
            "newline before pattern",
            pattern_spec("(?s).*"),
            text("a\n"),
            Err("newline"),
        ),
    ]);
}

#[test]
fn integer_range() {
    run_cases(vec![
        ("minimum", integer_spec(-5, 10), ArgValue::Int(-5), Ok(())),
        ("maximum", integer_spec(-5, 10), ArgValue::Int(10), Ok(())),
        ("inside", integer_spec(-5, 10), ArgValue::Int(0), Ok(())),
        (
            "below",
            integer_spec(-5, 10),
            ArgValue::Int(-6),
            Err("range"),
        ),
        (
            "above",
            integer_spec(-5, 10),
            ArgValue::Int(11),
            Err("range"),
        ),
        (
            "i64 minimum",
            integer_spec(-5, 10),
            ArgValue::Int(i64::MIN),
            Err("range"),
        ),
        (
            "i64 maximum",
            integer_spec(-5, 10),
            ArgValue::Int(i64::MAX),
            Err("range"),
        ),
        ("string", integer_spec(-5, 10), text("5"), Err("type")),
        (
            "boolean",
            integer_spec(-5, 10),
            ArgValue::Bool(false),
            Err("type"),
        ),
    ]);
}

#[test]
fn enum_values() {
    run_cases(vec![
        ("first", enum_spec(), text("start"), Ok(())),
        ("second", enum_spec(), text("stop"), Ok(())),
        ("case differs", enum_spec(), text("Start"), Err("enum")),
        ("trailing space", enum_spec(), text("start "), Err("enum")),
        ("prefix only", enum_spec(), text("sta"), Err("enum")),
        ("empty", enum_spec(), text(""), Err("enum")),
        ("integer", enum_spec(), ArgValue::Int(0), Err("type")),
    ]);
}

#[test]
fn boolean_values() {
    let flag = || spec("force", ArgKind::Boolean);
    run_cases(vec![
        ("true", flag(), ArgValue::Bool(true), Ok(())),
        ("false", flag(), ArgValue::Bool(false), Ok(())),
        ("string", flag(), text("true"), Err("type")),
        ("integer", flag(), ArgValue::Int(1), Err("type")),
    ]);
}

#[test]
fn path_rules() {
    let path = || path_spec(&["/srv/data", "/var/backups"], 32);
    run_cases(vec![
        ("prefix itself", path(), text("/srv/data"), Ok(())),
        ("below prefix", path(), text("/srv/data/a/b.txt"), Ok(())),
        ("second prefix", path(), text("/var/backups/x"), Ok(())),
        ("dots inside a name", path(), text("/srv/data/a..b"), Ok(())),
        ("hidden file", path(), text("/srv/data/.x"), Ok(())),
        ("relative", path(), text("srv/data/x"), Err("absolute")),
        ("empty", path(), text(""), Err("absolute")),
        (
            "dotdot inside",
            path(),
            text("/srv/data/../etc"),
            Err("dotdot"),
        ),
        ("dotdot at end", path(), text("/srv/data/.."), Err("dotdot")),
        ("dotdot at root", path(), text("/.."), Err("dotdot")),
        (
            "empty component",
            path(),
            text("/srv/data//x"),
            Err("normalised"),
        ),
        (
            "dot component",
            path(),
            text("/srv/data/./x"),
            Err("normalised"),
        ),
        (
            "trailing dot",
            path(),
            text("/srv/data/."),
            Err("normalised"),
        ),
        (
            "trailing slash",
            path(),
            text("/srv/data/x/"),
            Err("normalised"),
        ),
        (
            "partial component",
            path(),
            text("/srv/database"),
            Err("prefix"),
        ),
        ("parent of prefix", path(), text("/srv"), Err("prefix")),
        ("root", path(), text("/"), Err("prefix")),
        ("elsewhere", path(), text("/etc/passwd"), Err("prefix")),
        ("NUL", path(), text("/srv/data/a\0"), Err("nul")),
        ("newline", path(), text("/srv/data/a\nb"), Err("newline")),
        ("tab", path(), text("/srv/data/a\tb"), Err("control")),
        (
            "too long",
            path(),
            text("/srv/data/01234567890123456789012"),
            Err("max_length"),
        ),
        ("integer", path(), ArgValue::Int(1), Err("type")),
    ]);
}

#[test]
fn path_under_root_prefix() {
    let root = || path_spec(&["/"], 64);
    run_cases(vec![
        ("root", root(), text("/"), Ok(())),
        ("anything absolute", root(), text("/etc/passwd"), Ok(())),
        ("still normalised", root(), text("/etc/"), Err("normalised")),
    ]);
}

fn command(arguments: Vec<ArgSpec>) -> CommandSpec {
    CommandSpec {
        name: "test".to_owned(),
        description: String::new(),
        arguments,
        timeout_ms: 1000,
        capture_output: false,
        output_limit: 1024,
        stdin_limit: 0,
        max_concurrent: 4,
        rate_limit: None,
    }
}

fn optional(mut spec: ArgSpec) -> ArgSpec {
    spec.required = false;
    spec
}

fn sample_command() -> CommandSpec {
    command(vec![
        enum_spec(),
        optional(integer_spec(0, 9)),
        optional(spec("force", ArgKind::Boolean)),
    ])
}

fn given(pairs: &[(&str, ArgValue)]) -> Vec<(String, ArgValue)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect()
}

#[test]
fn validate_sorts_by_name() {
    let request = given(&[
        ("force", ArgValue::Bool(true)),
        ("count", ArgValue::Int(3)),
        ("action", text("stop")),
    ]);
    let accepted = sample_command().validate(&request).unwrap();
    let names: Vec<&str> = accepted.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["action", "count", "force"]);
}

#[test]
fn validate_keeps_values() {
    let request = given(&[("count", ArgValue::Int(3)), ("action", text("stop"))]);
    let accepted = sample_command().validate(&request).unwrap();
    assert_eq!(
        accepted,
        given(&[("action", text("stop")), ("count", ArgValue::Int(3))])
    );
}

#[test]
fn validate_allows_missing_optional() {
    let accepted = sample_command().validate(&given(&[("action", text("start"))]));
    assert_eq!(accepted, Ok(given(&[("action", text("start"))])));
}

#[test]
fn validate_rejections() {
    // (label, request, argument named in the error, rule)
    let cases = [
        (
            "missing required",
            given(&[("count", ArgValue::Int(1))]),
            "action",
            "required",
        ),
        ("nothing given", given(&[]), "action", "required"),
        (
            "undeclared",
            given(&[("colour", text("red"))]),
            "colour",
            "unknown",
        ),
        (
            "duplicate",
            given(&[("action", text("start")), ("action", text("stop"))]),
            "action",
            "duplicate",
        ),
        (
            "bad value",
            given(&[("action", text("start")), ("count", ArgValue::Int(10))]),
            "count",
            "range",
        ),
        (
            "first error in request order",
            given(&[("count", ArgValue::Int(10)), ("colour", text("red"))]),
            "count",
            "range",
        ),
        (
            "bad value before missing required",
            given(&[("force", text("yes"))]),
            "force",
            "type",
        ),
    ];
    for (label, request, argument, rule) in cases {
        let error = sample_command().validate(&request).unwrap_err();
        assert_eq!(
            (error.argument.as_str(), error.rule),
            (argument, rule),
            "case: {label}"
        );
    }
}

const MARKER: &str = "Zq9Marker";

/// Returns one rejected value per rule, each containing `MARKER`.
fn leaking_cases() -> Vec<(ArgSpec, ArgValue, &'static str)> {
    let marked = |prefix: &str, suffix: &str| text(&format!("{prefix}{MARKER}{suffix}"));
    vec![
        (string_spec(4), marked("", ""), "max_length"),
        (string_spec(64), marked("", "\0"), "nul"),
        (string_spec(64), marked("", "\t"), "control"),
        (string_spec(64), marked("", "\n"), "newline"),
        (string_spec(64), marked("-", ""), "leading_dash"),
        (charset_spec("[a-z]"), marked("", ""), "charset"),
        (pattern_spec("[a-z]+"), marked("", ""), "pattern"),
        (enum_spec(), marked("", ""), "enum"),
        (integer_spec(0, 10), marked("", ""), "type"),
        (path_spec(&["/srv"], 64), marked("", ""), "absolute"),
        (path_spec(&["/srv"], 64), marked("/srv/", "/.."), "dotdot"),
        (path_spec(&["/srv"], 64), marked("/srv/", "/"), "normalised"),
        (path_spec(&["/srv"], 64), marked("/etc/", ""), "prefix"),
    ]
}

#[test]
fn messages_never_contain_value() {
    for (spec, value, rule) in leaking_cases() {
        let error = spec.check(&value).unwrap_err();
        assert!(
            !error.message.contains(MARKER),
            "rule {rule}: {}",
            error.message
        );
    }
}

#[test]
fn range_message_omits_value() {
    let error = integer_spec(0, 10)
        .check(&ArgValue::Int(987_654_321))
        .unwrap_err();
    assert!(!error.message.contains("987654321"), "{}", error.message);
}

#[test]
fn messages_name_argument_and_rule() {
    for (spec, value, rule) in leaking_cases() {
        let error = spec.check(&value).unwrap_err();
        assert_eq!(error.rule, rule);
        let quoted_name = format!("\"{}\"", spec.name);
        assert!(error.message.contains(&quoted_name), "{}", error.message);
        assert!(
            error.message.contains(&format!("rule {rule}")),
            "{}",
            error.message
        );
    }
}

#[test]
fn messages_name_limit() {
    let length = string_spec(4).check(&text("12345")).unwrap_err();
    assert!(length.message.contains("4 bytes"), "{}", length.message);
    let range = integer_spec(-3, 7).check(&ArgValue::Int(8)).unwrap_err();
    assert!(range.message.contains("-3 to 7"), "{}", range.message);
    let pattern = pattern_spec("[a-z]+").check(&text("1")).unwrap_err();
    assert!(pattern.message.contains("[a-z]+"), "{}", pattern.message);
    let prefix = path_spec(&["/srv"], 64).check(&text("/etc")).unwrap_err();
    assert!(prefix.message.contains("/srv"), "{}", prefix.message);
    let values = enum_spec().check(&text("x")).unwrap_err();
    assert!(values.message.contains("start, stop"), "{}", values.message);
}

#[test]
fn display_is_message() {
    let error = string_spec(4).check(&text("12345")).unwrap_err();
    assert_eq!(error.to_string(), error.message);
}

#[test]
fn unknown_name_is_escaped() {
    let request = given(&[("evil\nname\u{1b}[2J", text("x"))]);
    let error = sample_command().validate(&request).unwrap_err();
    assert!(!error.message.contains('\n'), "{}", error.message);
    assert!(!error.message.contains('\u{1b}'), "{}", error.message);
}

#[test]
fn unknown_name_is_shortened() {
    let long_name = "n".repeat(1000);
    let error = sample_command()
        .validate(&given(&[(&long_name, text("x"))]))
        .unwrap_err();
    assert!(error.message.len() < 200, "{}", error.message);
}

#[test]
fn unknown_name_kept_in_field() {
    let error = sample_command()
        .validate(&given(&[("colour", text("x"))]))
        .unwrap_err();
    assert_eq!(error.argument, "colour");
}

#[test]
fn long_enum_list_is_summarised() {
    let values: Vec<String> = (0..200).map(|i| format!("value-{i}")).collect();
    let spec = spec("choice", ArgKind::Enum { values });
    let error = spec.check(&text("other")).unwrap_err();
    assert!(
        error.message.contains("200 declared values"),
        "{}",
        error.message
    );
}

#[test]
fn path_syntax_rules() {
    let cases = [
        ("/", Ok(())),
        ("/a/b", Ok(())),
        ("a/b", Err("absolute")),
        ("", Err("absolute")),
        ("/a/../b", Err("dotdot")),
        ("//", Err("normalised")),
        ("/a//b", Err("normalised")),
        ("/a/./b", Err("normalised")),
        ("/a/b/", Err("normalised")),
    ];
    for (path, expected) in cases {
        assert_eq!(check_path_syntax(path), expected, "path {path:?}");
    }
}

#[test]
fn path_prefix_by_component() {
    let cases = [
        ("/srv/data", "/srv/data", true),
        ("/srv/data/x", "/srv/data", true),
        ("/srv/database", "/srv/data", false),
        ("/srv", "/srv/data", false),
        ("/x", "/", true),
        ("/", "/", true),
    ];
    for (path, prefix, expected) in cases {
        assert_eq!(
            path_has_prefix(path, prefix),
            expected,
            "{path} under {prefix}"
        );
    }
}

fn template(parts: &[TemplatePart]) -> Template {
    Template {
        parts: parts.to_vec(),
    }
}

fn literal(text: &str) -> TemplatePart {
    TemplatePart::Literal(text.to_owned())
}

fn reference(name: &str) -> TemplatePart {
    TemplatePart::Argument(name.to_owned())
}

#[test]
fn render_literal_only() {
    let rendered = template(&[literal("--verbose")]).render(&[]);
    assert_eq!(rendered.as_deref(), Some("--verbose"));
}

#[test]
fn render_string_verbatim() {
    let values = given(&[("user", text("a b {c} $HOME;"))]);
    let rendered = template(&[literal("--user="), reference("user")]).render(&values);
    assert_eq!(rendered.as_deref(), Some("--user=a b {c} $HOME;"));
}

#[test]
fn render_integer_decimal() {
    let values = given(&[("count", ArgValue::Int(-42))]);
    let rendered = template(&[reference("count")]).render(&values);
    assert_eq!(rendered.as_deref(), Some("-42"));
}

#[test]
fn render_booleans() {
    let on = given(&[("force", ArgValue::Bool(true))]);
    let off = given(&[("force", ArgValue::Bool(false))]);
    let element = template(&[reference("force")]);
    assert_eq!(element.render(&on).as_deref(), Some("true"));
    assert_eq!(element.render(&off).as_deref(), Some("false"));
}

#[test]
fn render_absent_argument() {
    let values = given(&[("user", text("alice"))]);
    let rendered = template(&[reference("user"), reference("group")]).render(&values);
    assert_eq!(rendered, None);
}

#[test]
fn render_two_references() {
    let values = given(&[("a", text("x")), ("b", ArgValue::Int(1))]);
    let rendered = template(&[reference("a"), literal(":"), reference("b")]).render(&values);
    assert_eq!(rendered.as_deref(), Some("x:1"));
}

#[test]
fn spec_json_round_trip() {
    let original = command(vec![charset_spec("[a-z]"), pattern_spec("[a-z]+")]);
    let json = serde_json::to_string(&original).unwrap();
    let decoded: CommandSpec = serde_json::from_str(&json).unwrap();
    let value = text("abc1");
    assert_eq!(
        decoded.arguments[1].check(&value).map_err(|e| e.rule),
        Err("pattern")
    );
}

#[test]
fn pattern_serialises_as_source() {
    let json = serde_json::to_string(&Pattern::new("[a-z]+").unwrap()).unwrap();
    assert_eq!(json, "\"[a-z]+\"");
}

#[test]
fn pattern_deserialise_anchors() {
    let pattern: Pattern = serde_json::from_str("\"a|b\"").unwrap();
    assert!(!pattern.is_match("ab"));
}

#[test]
fn pattern_rejects_unbalanced_source() {
    assert!(Pattern::new("a)|(?:b").is_err());
}

#[test]
fn pattern_rejects_oversized() {
    assert!(Pattern::new(&"a".repeat(2000)).is_err());
}

#[test]
fn pattern_rejects_huge_program() {
    assert!(Pattern::new("\\w{1000}").is_err());
}

#[test]
fn pattern_deserialise_rejects_invalid() {
    let decoded: Result<Pattern, _> = serde_json::from_str("\"(\"");
    assert!(decoded.is_err());
}
