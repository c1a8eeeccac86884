//! Validation of request arguments against a command's declarations, and rendering of argv
//! and environment templates from the validated values.
//!
//! Argument names and values are untrusted. The parser child validates what the client sent,
//! and the monitor validates the result again because the child may be compromised. Error
//! messages name the argument, the rule and the limit, and never contain a value.

use std::collections::BTreeSet;

use super::types::{ArgKind, ArgSpec, ArgValue, CommandSpec, Template, TemplatePart};

/// A rejected argument. `rule` is one of the associated constants below; the message names
/// the argument, the rule and the limit, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ArgError {
    pub argument: String,
    pub rule: &'static str,
    pub message: String,
}

impl ArgError {
    pub const UNKNOWN: &'static str = "unknown";
    pub const REQUIRED: &'static str = "required";
    pub const DUPLICATE: &'static str = "duplicate";
    pub const TYPE: &'static str = "type";
    pub const NUL: &'static str = "nul";
    pub const CONTROL: &'static str = "control";
    pub const NEWLINE: &'static str = "newline";
    pub const LEADING_DASH: &'static str = "leading_dash";
    pub const MAX_LENGTH: &'static str = "max_length";
    pub const PATTERN: &'static str = "pattern";
    pub const CHARSET: &'static str = "charset";
    pub const RANGE: &'static str = "range";
    pub const ENUM: &'static str = "enum";
    pub const ABSOLUTE: &'static str = "absolute";
    pub const DOTDOT: &'static str = "dotdot";
    pub const NORMALISED: &'static str = "normalised";
    pub const PREFIX: &'static str = "prefix";

    fn new(argument: &str, rule: &'static str, detail: impl std::fmt::Display) -> ArgError {
        ArgError {
            argument: argument.to_owned(),
            rule,
            message: format!(
                "invalid argument {}: {detail} (rule {rule})",
                quote_name(argument)
            ),
        }
    }
}

/// Maximum number of characters of an undeclared argument name repeated in a message.
const MAX_QUOTED_NAME_CHARS: usize = 64;

/// Quotes an argument name for a message. Declared names are plain ASCII, but an undeclared
/// name comes from the client, so it is escaped (no control characters reach a log line) and
/// cut short.
fn quote_name(name: &str) -> String {
    let mut quoted = String::from("\"");
    for (count, c) in name.chars().enumerate() {
        if count == MAX_QUOTED_NAME_CHARS {
            quoted.push_str("...");
            break;
        }
        quoted.extend(c.escape_debug());
    }
    quoted.push('"');
    quoted
}

impl CommandSpec {
    /// Checks request arguments against the declarations and returns them sorted by name.
    ///
    /// Arguments are checked in the order given, then missing required arguments in name
    /// order; the first rule broken is returned.
    pub fn validate(
        &self,
        arguments: &[(String, ArgValue)],
    ) -> Result<Vec<(String, ArgValue)>, ArgError> {
        let mut seen = BTreeSet::new();
        let mut accepted = Vec::with_capacity(arguments.len());
        for (name, value) in arguments {
            let Some(spec) = self.argument(name) else {
                return Err(ArgError::new(
                    name,
                    ArgError::UNKNOWN,
                    "this command declares no argument of that name",
                ));
            };
            if !seen.insert(name.as_str()) {
                return Err(ArgError::new(
                    name,
                    ArgError::DUPLICATE,
                    "given more than once",
                ));
            }
            spec.check(value)?;
            accepted.push((name.clone(), value.clone()));
        }

        for spec in &self.arguments {
            if spec.required && !seen.contains(spec.name.as_str()) {
                return Err(ArgError::new(
                    &spec.name,
                    ArgError::REQUIRED,
                    "missing, but this command requires it",
                ));
            }
        }

        accepted.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(accepted)
    }

    /// Returns the declaration of the argument `name`.
    pub fn argument(&self, name: &str) -> Option<&ArgSpec> {
        self.arguments.iter().find(|spec| spec.name == name)
    }
}

impl ArgSpec {
    /// Checks one value against this declaration.
    pub fn check(&self, value: &ArgValue) -> Result<(), ArgError> {
        let name = self.name.as_str();
        match (&self.kind, value) {
            (
                ArgKind::String {
                    max_length,
                    pattern,
                    charset,
                },
                ArgValue::Str(text),
            ) => {
                check_length(name, text, *max_length)?;
                check_characters(name, text, self.allow_newline, self.allow_control)?;
                if !self.allow_leading_dash && text.starts_with('-') {
                    return Err(ArgError::new(
                        name,
                        ArgError::LEADING_DASH,
                        "starts with '-', which the script could read as an option",
                    ));
                }
                if let Some(charset) = charset {
                    let mut buffer = [0u8; 4];
                    let outside = text
                        .chars()
                        .any(|c| !charset.is_match(c.encode_utf8(&mut buffer)));
                    if outside {
                        return Err(ArgError::new(
                            name,
                            ArgError::CHARSET,
                            format_args!(
                                "contains a character outside the charset {}",
                                charset.source
                            ),
                        ));
                    }
                }
                if let Some(pattern) = pattern
                    && !pattern.is_match(text)
                {
                    return Err(ArgError::new(
                        name,
                        ArgError::PATTERN,
                        format_args!("does not match the pattern {}", pattern.source),
                    ));
                }
                Ok(())
            }
            (ArgKind::Integer { min, max }, ArgValue::Int(number)) => {
                if number < min || number > max {
                    return Err(ArgError::new(
                        name,
                        ArgError::RANGE,
                        format_args!("outside the range {min} to {max}"),
                    ));
                }
                Ok(())
            }
            (ArgKind::Enum { values }, ArgValue::Str(text)) => {
                if !values.iter().any(|allowed| allowed == text) {
                    return Err(ArgError::new(name, ArgError::ENUM, describe_enum(values)));
                }
                Ok(())
            }
            (ArgKind::Boolean, ArgValue::Bool(_)) => Ok(()),
            (
                ArgKind::Path {
                    prefixes,
                    max_length,
                },
                ArgValue::Str(text),
            ) => {
                check_length(name, text, *max_length)?;
                check_characters(name, text, false, false)?;
                if let Err(rule) = check_path_syntax(text) {
                    return Err(ArgError::new(name, rule, describe_path_rule(rule)));
                }
                if !prefixes.iter().any(|prefix| path_has_prefix(text, prefix)) {
                    return Err(ArgError::new(
                        name,
                        ArgError::PREFIX,
                        format_args!("not under any of the prefixes {}", prefixes.join(", ")),
                    ));
                }
                Ok(())
            }
            (kind, value) => Err(ArgError::new(
                name,
                ArgError::TYPE,
                format_args!(
                    "expected {}, got {}",
                    expected_json_type(kind),
                    value.type_name()
                ),
            )),
        }
    }
}

fn expected_json_type(kind: &ArgKind) -> &'static str {
    match kind {
        ArgKind::String { .. } | ArgKind::Enum { .. } | ArgKind::Path { .. } => "a string",
        ArgKind::Integer { .. } => "an integer",
        ArgKind::Boolean => "a boolean",
    }
}

/// Maximum length in bytes of an enum value list spelled out in a message.
const MAX_LISTED_VALUES_BYTES: usize = 512;

fn describe_enum(values: &[String]) -> String {
    let listed = values.join(", ");
    if listed.len() <= MAX_LISTED_VALUES_BYTES {
        format!("not one of the values {listed}")
    } else {
        format!("not one of the {} declared values", values.len())
    }
}

fn check_length(name: &str, text: &str, max_length: usize) -> Result<(), ArgError> {
    if text.len() > max_length {
        return Err(ArgError::new(
            name,
            ArgError::MAX_LENGTH,
            format_args!("longer than {max_length} bytes"),
        ));
    }
    Ok(())
}

/// Applies the character rules in order: NUL, then line breaks, then other control
/// characters.
fn check_characters(
    name: &str,
    text: &str,
    allow_newline: bool,
    allow_control: bool,
) -> Result<(), ArgError> {
    match find_forbidden_character(text, allow_newline, allow_control) {
        None => Ok(()),
        Some(rule) => {
            let detail = match rule {
                ArgError::NUL => "contains a NUL character, which an argv element cannot carry",
                ArgError::NEWLINE => "contains a line break, which this argument does not allow",
                _ => "contains a control character, which this argument does not allow",
            };
            Err(ArgError::new(name, rule, detail))
        }
    }
}

/// Returns the rule that the first forbidden character of `text` breaks. NUL is always
/// forbidden; line breaks and control characters only unless allowed.
pub(super) fn find_forbidden_character(
    text: &str,
    allow_newline: bool,
    allow_control: bool,
) -> Option<&'static str> {
    for c in text.chars() {
        if c == '\0' {
            return Some(ArgError::NUL);
        }
        if is_line_break(c) {
            if !allow_newline {
                return Some(ArgError::NEWLINE);
            }
        } else if is_control(c) && !allow_control {
            return Some(ArgError::CONTROL);
        }
    }
    None
}

/// Line terminators: LF, CR, NEL (U+0085), LINE SEPARATOR and PARAGRAPH SEPARATOR. A log
/// reader or a script that splits on lines would see one value as several.
fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Control characters other than line breaks: C0 (tab included), DEL and C1, plus the
/// Unicode bidirectional formatting characters, which can make text display in an order
/// other than the order a script reads it.
fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// Checks that `path` is absolute and lexically normalised: no `..` component, no empty
/// component (`//`), no `.` component and no trailing slash except for `/` itself. Returns
/// the rule broken. The file system is not consulted, so symbolic links are not resolved.
pub(super) fn check_path_syntax(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ArgError::ABSOLUTE);
    };
    if rest.is_empty() {
        return Ok(());
    }
    let components: Vec<&str> = rest.split('/').collect();
    if components.contains(&"..") {
        return Err(ArgError::DOTDOT);
    }
    if components
        .iter()
        .any(|component| component.is_empty() || *component == ".")
    {
        return Err(ArgError::NORMALISED);
    }
    Ok(())
}

pub(super) fn describe_path_rule(rule: &str) -> &'static str {
    match rule {
        ArgError::ABSOLUTE => "not an absolute path",
        ArgError::DOTDOT => "contains a '..' component",
        _ => "not normalised: it has an empty or '.' component, or a trailing slash",
    }
}

/// Returns whether `path` equals `prefix` or lies below it, comparing whole components, so
/// that `/srv/www` is under `/srv` but `/srv2` is not. Both must be normalised.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl Template {
    /// Renders the template with validated values. Returns `None` when it refers to an
    /// argument that is not among `values`, so that the caller leaves the element out.
    /// Integers render as decimal, booleans as `true` or `false`.
    pub fn render(&self, values: &[(String, ArgValue)]) -> Option<String> {
        let mut rendered = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(text) => rendered.push_str(text),
                TemplatePart::Argument(name) => {
                    let (_, value) = values.iter().find(|(given, _)| given == name)?;
                    match value {
                        ArgValue::Str(text) => rendered.push_str(text),
                        ArgValue::Int(number) => rendered.push_str(&number.to_string()),
                        ArgValue::Bool(flag) => {
                            rendered.push_str(if *flag { "true" } else { "false" })
                        }
                    }
                }
            }
        }
        Some(rendered)
    }

    /// Returns the names of the arguments the template refers to.
    pub fn argument_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            TemplatePart::Argument(name) => Some(name.as_str()),
            TemplatePart::Literal(_) => None,
        })
    }
}

#[cfg(test)]
mod tests;
