//! Text output of `list` and `describe`, built from the broker's reply.
//!
//! The reply comes from the broker, and a missing or mistyped field prints as empty or
//! JSON null instead of failing. Control characters in its strings are escaped, so that
//! a line break cannot split a line and an escape sequence cannot reach the terminal.

use serde_json::Value;

/// Formats a List reply as one line per command: name, then description.
pub(super) fn format_list(parameters: &Value) -> String {
    let commands = parameters["commands"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rows: Vec<(String, String)> = commands
        .iter()
        .map(|command| {
            let name = command["name"].as_str().unwrap_or_default();
            let description = command["description"].as_str().unwrap_or_default();
            (escape_control(name), escape_control(description))
        })
        .collect();
    let width = rows
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (name, description) in &rows {
        if description.is_empty() {
            text.push_str(name);
        } else {
            text.push_str(&format!("{name:<width$}  {description}"));
        }
        text.push('\n');
    }
    text
}

/// Returns `text` with every control character (Unicode category Cc: C0, DEL and C1)
/// replaced by its Rust escape, such as `\n` or `\u{1b}`. Other characters, backslash
/// included, are kept.
pub(super) fn escape_control(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if character.is_control() {
            escaped.extend(character.escape_debug());
        } else {
            escaped.push(character);
        }
    }
    escaped
}

/// Quotes `word` for a POSIX shell when it contains anything but letters, digits and
/// `-_./:=@%+,`, so that a suggested command line can be pasted as it is.
pub(super) fn shell_word(word: &str) -> String {
    let is_plain =
        |character: char| character.is_ascii_alphanumeric() || "-_./:=@%+,".contains(character);
    if !word.is_empty() && word.chars().all(is_plain) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Returns `value` as JSON text with its control characters escaped. serde_json escapes
/// the C0 controls itself, but writes DEL and the C1 controls as they are.
fn text_of_json(value: &Value) -> String {
    escape_control(&value.to_string())
}

/// Formats a Describe reply: the command, its limits, then one line per argument with
/// its type and rules.
pub(super) fn format_command(command: &Value) -> String {
    let text_of = |value: &Value| match value {
        Value::String(text) => escape_control(text),
        other => escape_control(&other.to_string()),
    };
    let description = text_of(&command["description"]);
    let mut text = if description.is_empty() {
        format!("{}\n", text_of(&command["name"]))
    } else {
        format!("{}: {description}\n", text_of(&command["name"]))
    };
    for key in [
        "timeout_ms",
        "capture_output",
        "output_limit",
        "stdin_limit",
        "max_concurrent",
        "rate_limit_requests",
        "rate_limit_seconds",
    ] {
        if !command[key].is_null() {
            text.push_str(&format!("  {key}: {}\n", text_of(&command[key])));
        }
    }
    let arguments = command["arguments"].as_array().cloned().unwrap_or_default();
    if !arguments.is_empty() {
        text.push_str("  arguments:\n");
    }
    for argument in &arguments {
        let mut line = format!(
            "    {} ({}, {})",
            text_of(&argument["name"]),
            text_of(&argument["kind"]),
            if argument["required"] == Value::Bool(true) {
                "required"
            } else {
                "optional"
            }
        );
        for key in [
            "max_length",
            "pattern",
            "charset",
            "min",
            "max",
            "values",
            "prefixes",
        ] {
            if !argument[key].is_null() {
                line.push_str(&format!(" {key}={}", text_of_json(&argument[key])));
            }
        }
        // The broker sends these flags for string arguments only, and a string argument
        // rejects line breaks, other control characters and a leading '-' unless its
        // flag is true. So the text names only the flags that lift a rule.
        for key in ["allow_newline", "allow_control", "allow_leading_dash"] {
            if argument[key] == Value::Bool(true) {
                line.push_str(&format!(" {key}"));
            }
        }
        if argument["sensitive"] == Value::Bool(true) {
            line.push_str(" sensitive");
        }
        let description = text_of(&argument["description"]);
        if !description.is_empty() {
            line.push_str(&format!(": {description}"));
        }
        text.push_str(&line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn list_text_has_one_line_per_command() {
        let reply = json!({ "commands": [
            { "name": "restart", "description": "Restart a service" },
            { "name": "renew-certificate", "description": "Renew" },
        ]});
        let text = format_list(&reply);
        assert_eq!(text.lines().count(), 2);
        assert_eq!(
            text.lines().next(),
            Some("restart            Restart a service")
        );
    }

    #[test]
    fn describe_text_names_argument_rules() {
        let command = json!({
            "name": "restart", "description": "Restart a service", "timeout_ms": 5000,
            "arguments": [{ "name": "service", "kind": "enum", "required": true,
                "sensitive": false, "description": "", "values": ["nginx"] }],
        });
        let text = format_command(&command);
        assert!(text.contains("  timeout_ms: 5000\n"), "{text}");
        assert!(
            text.contains("    service (enum, required) values=[\"nginx\"]\n"),
            "{text}"
        );
    }

    #[test]
    fn describe_text_without_description_ends_at_name() {
        let text = format_command(&json!({ "name": "note", "description": "" }));
        assert!(text.starts_with("note\n"), "{text:?}");
    }

    #[test]
    fn describe_text_names_lifted_string_rules() {
        let command = json!({
            "name": "note", "description": "",
            "arguments": [
                { "name": "body", "kind": "string", "required": true, "description": "", "max_length": 64,
                  "allow_newline": true, "allow_control": false, "allow_leading_dash": true },
                { "name": "title", "kind": "string", "required": true, "description": "", "max_length": 8,
                  "allow_newline": false, "allow_control": false, "allow_leading_dash": false },
                { "name": "raw", "kind": "string", "required": false, "description": "", "max_length": 8,
                  "allow_control": true },
            ],
        });
        let text = format_command(&command);
        assert!(
            text.contains(
                "    body (string, required) max_length=64 allow_newline allow_leading_dash\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    title (string, required) max_length=8\n"),
            "{text}"
        );
        assert!(
            text.contains("    raw (string, optional) max_length=8 allow_control\n"),
            "{text}"
        );
    }

    #[test]
    fn list_text_escapes_line_breaks() {
        let reply = json!({ "commands": [
            { "name": "a", "description": "first\nsecond" },
            { "name": "b\u{1b}[2J", "description": "clear \u{9b}2J" },
        ]});
        let text = format_list(&reply);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(text.lines().next(), Some("a           first\\nsecond"));
        assert_eq!(text.lines().nth(1), Some("b\\u{1b}[2J  clear \\u{9b}2J"));
    }

    #[test]
    fn list_text_empty_description_has_no_padding() {
        let reply = json!({ "commands": [
            { "name": "status", "description": "" },
            { "name": "renew-certificate", "description": "Renew" },
        ]});
        let text = format_list(&reply);
        assert_eq!(text.lines().next(), Some("status"));
    }

    #[test]
    fn describe_text_escapes_control_characters() {
        let command = json!({
            "name": "x", "description": "line\none",
            "arguments": [{ "name": "a\u{7f}", "kind": "enum", "required": false,
                "description": "\u{1b}[31m", "values": ["\u{9b}1m"] }],
        });
        let text = format_command(&command);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn shell_word_quotes_when_needed() {
        assert_eq!(shell_word("/run/b.sock"), "/run/b.sock");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
