//! JSON log lines whose `arguments` field is a JSON object rather than a string.
//!
//! tracing records no object values, so the monitor renders a request's arguments as the
//! text of a JSON object (see `monitor/redact.rs`) and logs that text as a string field.
//! [`ObjectArguments`] wraps tracing-subscriber's JSON formatter and writes that field's
//! text in place of the string that contains it. It trusts only text that parses as one
//! JSON object on one line. Any other value stays a string, so a field value cannot add
//! members or lines to the record.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Config, LogDestination, LogFormat};

/// Name of the field that carries a request's arguments.
const ARGUMENTS_FIELD: &str = "arguments";

/// Returns whether request records should carry their arguments as the text of a JSON
/// object: with log_format=json on stderr or in log_file. Syslog lines, text or JSON, and
/// journal entries keep the `name="value"` text form in one string field.
pub fn arguments_as_object(config: &Config) -> bool {
    config.log_format == LogFormat::Json
        && matches!(
            config.log_destination,
            LogDestination::Stderr | LogDestination::File
        )
}

/// An event formatter that writes the `arguments` field of an event as a JSON object when
/// its value is the text of one. `inner` is tracing-subscriber's JSON formatter.
pub struct ObjectArguments<F> {
    inner: F,
}

impl<F> ObjectArguments<F> {
    pub fn new(inner: F) -> ObjectArguments<F> {
        ObjectArguments { inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for ObjectArguments<F>
where
    S: tracing::Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut visitor = ArgumentsVisitor::default();
        event.record(&mut visitor);
        let Some(object) = visitor.arguments.filter(|text| is_one_line_object(text)) else {
            return self.inner.format_event(context, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(context, Writer::new(&mut line), event)?;
        writer.write_str(&replace_string_member(&line, &object))
    }
}

/// Collects the string value of the `arguments` field.
#[derive(Default)]
struct ArgumentsVisitor {
    arguments: Option<String>,
}

impl Visit for ArgumentsVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == ARGUMENTS_FIELD {
            self.arguments = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}

/// Returns whether `text` is exactly one JSON object with no line break.
fn is_one_line_object(text: &str) -> bool {
    text.starts_with('{')
        && !text.contains(['\n', '\r'])
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Replaces the member `"arguments":"<object as an escaped string>"` of a JSON line
/// with `"arguments":<object>`. Returns the line unchanged when the member is missing.
///
/// The pattern can only match a member name: inside a JSON string every `"` is escaped,
/// so the unescaped `":"` after the name cannot occur there.
fn replace_string_member(line: &str, object: &str) -> String {
    let name = serde_json::Value::from(ARGUMENTS_FIELD);
    let as_string = serde_json::Value::from(object);
    let pattern = format!("{name}:{as_string}");
    match line.find(&pattern) {
        Some(start) => {
            let end = start + pattern.len();
            format!("{}{name}:{object}{}", &line[..start], &line[end..])
        }
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_text_is_accepted() {
        assert!(is_one_line_object(r#"{"name":"a","count":5}"#));
        assert!(is_one_line_object("{}"));
    }

    #[test]
    fn other_text_is_rejected() {
        for text in [
            r#"name="a""#,
            r#"{"name":"a"} {"#,
            r#"{"name":"a"},"forged":1"#,
            "{\n}",
            "[1]",
            "",
        ] {
            assert!(!is_one_line_object(text), "{text:?}");
        }
    }

    #[test]
    fn string_member_becomes_object() {
        let object = r#"{"name":"a \"b\"","count":5}"#;
        let line = serde_json::json!({
            "message": "request ran",
            "arguments": object,
            "request_id": "0f",
        })
        .to_string();
        let replaced = replace_string_member(&line, object);
        let record: serde_json::Value = serde_json::from_str(&replaced).unwrap();
        assert_eq!(record["arguments"]["name"], serde_json::json!("a \"b\""));
        assert_eq!(record["arguments"]["count"], serde_json::json!(5));
        assert_eq!(record["request_id"], serde_json::json!("0f"));
    }

    #[test]
    fn same_text_inside_other_value_is_kept() {
        let object = r#"{"x":1}"#;
        let decoy = format!("\"arguments\":{}", serde_json::Value::from(object));
        let line = serde_json::json!({ "detail": decoy }).to_string();
        assert_eq!(replace_string_member(&line, object), line);
    }
}
