//! Text output of `list` and `describe`, built from the broker's reply.
//!
//! The reply comes from the broker, and a missing or mistyped field prints as empty or
//! JSON null instead of failing.

use serde_json::Value;

/// Formats a List reply as one line per command: name, then description.
pub(super) fn format_list(parameters: &Value) -> String {
    let commands = parameters["commands"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let width = commands
        .iter()
        .filter_map(|command| command["name"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for command in &commands {
        let name = command["name"].as_str().unwrap_or_default();
        let description = command["description"].as_str().unwrap_or_default();
        text.push_str(&format!("{name:<width$}  {description}\n"));
    }
    text
}

/// Formats a Describe reply: the command, its limits, then one line per argument with
/// its type and rules.
pub(super) fn format_command(command: &Value) -> String {
    let text_of = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut text = format!(
        "{}: {}\n",
        text_of(&command["name"]),
        text_of(&command["description"])
    );
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
                line.push_str(&format!(" {key}={}", argument[key]));
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
}
