//! Field formatting for text log lines (stderr, log_file and syslog with log_format=text).
//!
//! Each field is written as `name=value`, and every value that a key=value (logfmt)
//! parser could split is quoted: string values always, and any other value that is
//! empty or contains whitespace, `"`, `=` or a control character. tracing-subscriber's
//! default writes Display values such as `outcome=exit 0` or an error's text bare, so a
//! parser reads `0` as a key of its own. The message is written first, bare, with control
//! characters escaped so that it stays on one line.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Formats the fields of text lines with the quoting described in the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct QuotedFields;

impl<'writer> FormatFields<'writer> for QuotedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = QuotingVisitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct QuotingVisitor<'writer> {
    writer: Writer<'writer>,
    result: fmt::Result,
    first: bool,
}

impl QuotingVisitor<'_> {
    fn write_field(&mut self, field: &Field, value: &str, is_string: bool) {
        let name = field.name();
        // Fields that tracing-log adds to events from the `log` crate; the default
        // formatter leaves them out too.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            write!(self.writer, "{separator}{}", escape_controls(value))
        } else if is_string || needs_quotes(value) {
            write!(self.writer, "{separator}{name}={value:?}")
        } else {
            write!(self.writer, "{separator}{name}={value}")
        };
    }
}

impl Visit for QuotingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write_field(field, value, true);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        if write!(text, "{value:?}").is_err() {
            self.result = Err(fmt::Error);
            return;
        }
        self.write_field(field, &text, false);
    }
}

/// Returns whether a logfmt parser could misread `value` written bare.
pub(super) fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value.chars().any(|character| {
            character.is_whitespace() || character.is_control() || matches!(character, '"' | '=')
        })
}

/// Escapes control characters, so that a message never ends a line early.
fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|character| {
            if character.is_control() {
                character.escape_default().to_string()
            } else {
                character.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what a subscriber writes, for one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'writer> MakeWriter<'writer> for Captured {
        type Writer = Captured;

        fn make_writer(&'writer self) -> Captured {
            self.clone()
        }
    }

    /// Runs `log` under a text subscriber with QuotedFields and returns the line it wrote.
    fn line_of(log: impl FnOnce()) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .fmt_fields(QuotedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn display_with_space_is_quoted() {
        let outcome = "exit 0";
        let line = line_of(|| tracing::info!(outcome = %outcome, "request ran"));
        assert!(line.contains(r#"outcome="exit 0""#), "{line}");
    }

    #[test]
    fn display_without_space_stays_bare() {
        let line = line_of(|| tracing::info!(path = %"/run/x.sock", "started"));
        assert!(line.contains("path=/run/x.sock"), "{line}");
    }

    #[test]
    fn string_value_is_always_quoted() {
        let line = line_of(|| tracing::info!(command = "greet", "request ran"));
        assert!(line.contains(r#"command="greet""#), "{line}");
    }

    #[test]
    fn numbers_stay_bare() {
        let line = line_of(|| tracing::info!(peer_uid = 33u32, duration_ms = 1.5, "request ran"));
        assert!(line.contains("peer_uid=33 duration_ms=1.5"), "{line}");
    }

    #[test]
    fn forged_field_stays_inside_quotes() {
        let reason = "bad decision=allowed";
        let line = line_of(|| tracing::warn!(reason = %reason, "rejected"));
        assert!(line.contains(r#"reason="bad decision=allowed""#), "{line}");
    }

    #[test]
    fn message_control_characters_escaped() {
        let line = line_of(|| tracing::info!("first\nsecond"));
        assert_eq!(line.lines().count(), 1, "{line}");
    }

    #[test]
    fn message_comes_first_without_name() {
        let line = line_of(|| tracing::info!(peer_uid = 1u32, "request ran"));
        assert!(line.contains("request ran peer_uid=1"), "{line}");
    }

    #[test]
    fn empty_display_value_is_quoted() {
        let line = line_of(|| tracing::info!(reason = %"", "rejected"));
        assert!(line.contains(r#"reason="""#), "{line}");
    }
}
