//! Renders the arguments of an Exec for the audit record, with the values of sensitive
//! arguments replaced by their length.
//!
//! The arguments come from a parser child and were validated against the policy, but
//! they are still client strings: the text form escapes them with `Debug`, the JSON form
//! with serde_json, so neither can end the field or the line.

use crate::policy::{ArgValue, CommandSpec};

/// One argument value as the audit record shows it.
enum LoggedValue<'a> {
    Text(&'a str),
    Int(i64),
    Bool(bool),
    /// A sensitive value: its length in bytes for a string, nothing for other types.
    Redacted(Option<usize>),
}

impl LoggedValue<'_> {
    fn redaction(&self) -> Option<String> {
        match self {
            LoggedValue::Redacted(Some(bytes)) => Some(format!("<redacted, {bytes} bytes>")),
            LoggedValue::Redacted(None) => Some("<redacted>".to_string()),
            _ => None,
        }
    }
}

fn logged_values<'a>(
    spec: &'a CommandSpec,
    arguments: &'a [(String, ArgValue)],
) -> impl Iterator<Item = (&'a str, LoggedValue<'a>)> {
    arguments.iter().map(move |(name, value)| {
        let sensitive = spec
            .arguments
            .iter()
            .any(|spec| &spec.name == name && spec.sensitive);
        let logged = match value {
            ArgValue::Str(text) if sensitive => LoggedValue::Redacted(Some(text.len())),
            _ if sensitive => LoggedValue::Redacted(None),
            ArgValue::Str(text) => LoggedValue::Text(text),
            ArgValue::Int(number) => LoggedValue::Int(*number),
            ArgValue::Bool(flag) => LoggedValue::Bool(*flag),
        };
        (name.as_str(), logged)
    })
}

/// Renders arguments as space-separated `name=value` pairs: strings through `Debug`, so
/// that quotes and control characters are escaped, and sensitive values replaced by
/// `<redacted, N bytes>`.
pub(super) fn arguments_as_text(spec: &CommandSpec, arguments: &[(String, ArgValue)]) -> String {
    let mut rendered = String::new();
    for (name, value) in logged_values(spec, arguments) {
        let rendered_value = match &value {
            LoggedValue::Text(text) => format!("{text:?}"),
            LoggedValue::Int(number) => number.to_string(),
            LoggedValue::Bool(flag) => flag.to_string(),
            LoggedValue::Redacted(_) => value.redaction().unwrap_or_default(),
        };
        if !rendered.is_empty() {
            rendered.push(' ');
        }
        rendered.push_str(&format!("{}={rendered_value}", name.escape_debug()));
    }
    rendered
}

/// Renders arguments as the text of one JSON object, in the order the client sent them:
/// strings as JSON strings, integers and booleans as JSON numbers and booleans, and
/// sensitive values as the string `<redacted, N bytes>`.
pub(super) fn arguments_as_json(spec: &CommandSpec, arguments: &[(String, ArgValue)]) -> String {
    let mut members = Vec::with_capacity(arguments.len());
    for (name, value) in logged_values(spec, arguments) {
        let json_value = match &value {
            LoggedValue::Text(text) => serde_json::Value::from(*text),
            LoggedValue::Int(number) => serde_json::Value::from(*number),
            LoggedValue::Bool(flag) => serde_json::Value::from(*flag),
            LoggedValue::Redacted(_) => serde_json::Value::from(value.redaction()),
        };
        members.push(format!("{}:{json_value}", serde_json::Value::from(name)));
    }
    format!("{{{}}}", members.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ArgKind, ArgSpec};

    fn argument(name: &str, sensitive: bool) -> ArgSpec {
        ArgSpec {
            name: name.to_string(),
            description: String::new(),
            kind: ArgKind::Boolean,
            required: false,
            sensitive,
            allow_leading_dash: false,
            allow_newline: false,
            allow_control: false,
        }
    }

    fn spec() -> CommandSpec {
        CommandSpec {
            name: "sample".to_string(),
            description: String::new(),
            arguments: vec![
                argument("count", false),
                argument("force", false),
                argument("name", false),
                argument("password", true),
                argument("pin", true),
            ],
            timeout_ms: 1000,
            capture_output: false,
            output_limit: 1024,
            stdin_limit: 0,
            max_concurrent: 1,
            rate_limit: None,
        }
    }

    fn arguments() -> Vec<(String, ArgValue)> {
        vec![
            ("name".to_string(), ArgValue::Str("a \"b\"\n".to_string())),
            (
                "password".to_string(),
                ArgValue::Str("hunter22".to_string()),
            ),
            ("count".to_string(), ArgValue::Int(5)),
            ("force".to_string(), ArgValue::Bool(true)),
            ("pin".to_string(), ArgValue::Int(1234)),
        ]
    }

    #[test]
    fn text_form_quotes_and_redacts() {
        let text = arguments_as_text(&spec(), &arguments());
        assert_eq!(
            text,
            r#"name="a \"b\"\n" password=<redacted, 8 bytes> count=5 force=true pin=<redacted>"#
        );
    }

    #[test]
    fn json_form_is_object_in_client_order() {
        let text = arguments_as_json(&spec(), &arguments());
        assert_eq!(
            text,
            r#"{"name":"a \"b\"\n","password":"<redacted, 8 bytes>","count":5,"force":true,"pin":"<redacted>"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["name"], serde_json::json!("a \"b\"\n"));
        assert!(!text.contains("hunter22"));
        assert!(!text.contains("1234"));
    }

    #[test]
    fn json_form_of_no_arguments_is_empty_object() {
        assert_eq!(arguments_as_json(&spec(), &[]), "{}");
    }
}
