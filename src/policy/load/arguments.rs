//! Compilation of the `[command.NAME.arguments.ARGUMENT]` tables into [`ArgSpec`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Range, RangeInclusive};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::FileReport;
use super::compile::{check_description, describe_character_rule, is_argument_name, to_unsigned};
use super::raw::ArgumentTable;
use crate::policy::types::{ArgKind, ArgSpec, Pattern, PatternError};
use crate::policy::validate::{check_path_syntax, describe_path_rule, find_forbidden_character};

/// Most arguments one command declares. The monitor/child channel carries at most 64
/// arguments in one request.
const MAX_ARGUMENTS: usize = 64;
const DEFAULT_STRING_MAX_LENGTH: i64 = 256;
const STRING_MAX_LENGTH_RANGE: RangeInclusive<i64> = 1..=65_536;
/// PATH_MAX on Linux, which counts the terminating NUL.
const DEFAULT_PATH_MAX_LENGTH: i64 = 4096;
const PATH_MAX_LENGTH_RANGE: RangeInclusive<i64> = 1..=4096;

/// Keys that apply only to some types, with where each is written.
type TypedKey<'a> = (&'a str, Option<Range<usize>>, &'a [ArgType]);

/// The declared type of an argument, before its keys are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgType {
    String,
    Integer,
    Enum,
    Boolean,
    Path,
}

impl ArgType {
    fn parse(name: &str) -> Option<ArgType> {
        match name {
            "string" => Some(ArgType::String),
            "integer" => Some(ArgType::Integer),
            "enum" => Some(ArgType::Enum),
            "boolean" => Some(ArgType::Boolean),
            "path" => Some(ArgType::Path),
            _ => None,
        }
    }
}

/// Compiles every `[command.NAME.arguments.ARGUMENT]` table. Returns the compiled
/// declarations, sorted by name, and every declared name with its `sensitive` flag, which
/// includes the arguments that failed to compile so that templates referring to them are
/// not reported as well.
pub(super) fn compile_arguments(
    report: &mut FileReport<'_>,
    command: &DeTable<'_>,
    command_key: &str,
) -> (Vec<ArgSpec>, BTreeMap<String, bool>) {
    let mut specs = Vec::new();
    let mut declared = BTreeMap::new();
    let Some(value) = command.get("arguments") else {
        return (specs, declared);
    };
    let key = format!("{command_key}.arguments");
    let DeValue::Table(arguments) = value.get_ref() else {
        report.error_at(
            value,
            &key,
            "must be a table of argument declarations, [command.NAME.arguments.ARGUMENT]",
        );
        return (specs, declared);
    };
    if arguments.len() > MAX_ARGUMENTS {
        report.error_at(
            value,
            &key,
            format!("more than {MAX_ARGUMENTS} arguments are declared"),
        );
    }
    for (name, value) in arguments {
        let name_text: &str = name.get_ref();
        let argument_key = format!("{key}.{name_text}");
        if !is_argument_name(name_text) {
            report.error_at(
                name,
                &argument_key,
                "invalid argument name: expected 1 to 64 characters from a-z, 0-9, '_' and \
                 '-', starting with a letter",
            );
        }
        declared.insert(name_text.to_owned(), false);
        let DeValue::Table(table) = value.get_ref() else {
            report.error_at(value, &argument_key, "must be a table");
            continue;
        };
        let Some((raw, dropped)) =
            report.deserialize::<ArgumentTable>(table, value.span(), &argument_key)
        else {
            continue;
        };
        declared.insert(name_text.to_owned(), raw.sensitive.unwrap_or(false));
        let mut compiler = ArgumentCompiler {
            report: &mut *report,
            key: &argument_key,
            name_span: name.span(),
            dropped,
        };
        if let Some(spec) = compiler.compile(name_text, &raw) {
            specs.push(spec);
        }
    }
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    (specs, declared)
}

struct ArgumentCompiler<'r, 'f> {
    report: &'r mut FileReport<'f>,
    /// `command.NAME.arguments.ARGUMENT`
    key: &'r str,
    /// Position of the argument's name, for errors about missing keys.
    name_span: Range<usize>,
    /// Keys whose values serde rejected; their errors are already recorded.
    dropped: BTreeSet<String>,
}

impl ArgumentCompiler<'_, '_> {
    fn error(&mut self, span: Range<usize>, name: &str, message: impl Into<String>) {
        let key = format!("{}.{name}", self.key);
        self.report.error(Some(span), &key, message);
    }

    /// Records a missing key at the argument's name, unless the key was written with a
    /// value that serde already rejected.
    fn missing(&mut self, name: &str, message: &str) {
        if !self.dropped.contains(name) {
            self.error(self.name_span.clone(), name, message);
        }
    }

    fn compile(&mut self, name: &str, raw: &ArgumentTable) -> Option<ArgSpec> {
        let errors_before = self.report.count();
        let Some(type_name) = &raw.kind else {
            self.missing(
                "type",
                "missing required key; expected string, integer, enum, boolean or path",
            );
            return None;
        };
        let Some(arg_type) = ArgType::parse(type_name.get_ref()) else {
            self.error(
                type_name.span(),
                "type",
                format!(
                    "unknown type {:?}; expected string, integer, enum, boolean or path",
                    type_name.get_ref()
                ),
            );
            return None;
        };
        self.check_applicable(raw, arg_type);

        let description = match &raw.description {
            None => String::new(),
            Some(text) => {
                if let Some(problem) = check_description(text.get_ref()) {
                    self.error(text.span(), "description", problem);
                }
                text.get_ref().clone()
            }
        };
        let kind = match arg_type {
            ArgType::String => ArgKind::String {
                max_length: self.length(raw, STRING_MAX_LENGTH_RANGE, DEFAULT_STRING_MAX_LENGTH),
                pattern: self.pattern(raw.pattern.as_ref(), "pattern"),
                charset: self.pattern(raw.charset.as_ref(), "charset"),
            },
            ArgType::Integer => self.integer(raw)?,
            ArgType::Enum => ArgKind::Enum {
                values: self.enum_values(raw)?,
            },
            ArgType::Boolean => ArgKind::Boolean,
            ArgType::Path => ArgKind::Path {
                prefixes: self.prefixes(raw)?,
                max_length: self.length(raw, PATH_MAX_LENGTH_RANGE, DEFAULT_PATH_MAX_LENGTH),
            },
        };
        if self.report.count() > errors_before {
            return None;
        }
        let flag = |value: &Option<Spanned<bool>>| value.as_ref().is_some_and(|v| *v.get_ref());
        Some(ArgSpec {
            name: name.to_owned(),
            description,
            kind,
            required: raw.required.unwrap_or(true),
            sensitive: raw.sensitive.unwrap_or(false),
            allow_leading_dash: flag(&raw.allow_leading_dash),
            allow_newline: flag(&raw.allow_newline),
            allow_control: flag(&raw.allow_control),
        })
    }

    /// Records every key that does not belong to the declared type.
    fn check_applicable(&mut self, raw: &ArgumentTable, arg_type: ArgType) {
        use ArgType::{Enum, Integer, Path, String};
        let keys: [TypedKey; 10] = [
            (
                "max_length",
                raw.max_length.as_ref().map(Spanned::span),
                &[String, Path],
            ),
            (
                "pattern",
                raw.pattern.as_ref().map(Spanned::span),
                &[String],
            ),
            (
                "charset",
                raw.charset.as_ref().map(Spanned::span),
                &[String],
            ),
            (
                "allow_leading_dash",
                raw.allow_leading_dash.as_ref().map(Spanned::span),
                &[String],
            ),
            (
                "allow_newline",
                raw.allow_newline.as_ref().map(Spanned::span),
                &[String],
            ),
            (
                "allow_control",
                raw.allow_control.as_ref().map(Spanned::span),
                &[String],
            ),
            ("min", raw.min.as_ref().map(Spanned::span), &[Integer]),
            ("max", raw.max.as_ref().map(Spanned::span), &[Integer]),
            ("values", raw.values.as_ref().map(Spanned::span), &[Enum]),
            (
                "prefixes",
                raw.prefixes.as_ref().map(Spanned::span),
                &[Path],
            ),
        ];
        for (name, span, types) in keys {
            if let Some(span) = span
                && !types.contains(&arg_type)
            {
                let type_name = format!("{arg_type:?}").to_lowercase();
                self.error(span, name, format!("does not apply to type {type_name}"));
            }
        }
    }

    fn length(&mut self, raw: &ArgumentTable, range: RangeInclusive<i64>, default: i64) -> usize {
        let Some(value) = &raw.max_length else {
            return to_unsigned(default) as usize;
        };
        let number = *value.get_ref();
        if !range.contains(&number) {
            let problem = format!(
                "{number} is outside the range {} to {}",
                range.start(),
                range.end()
            );
            self.error(value.span(), "max_length", problem);
        }
        to_unsigned(number) as usize
    }

    fn pattern(&mut self, source: Option<&Spanned<String>>, name: &str) -> Option<Pattern> {
        let source = source?;
        match Pattern::new(source.get_ref()) {
            Ok(pattern) => Some(pattern),
            Err(error) => {
                self.error(source.span(), name, describe_pattern_error(&error));
                None
            }
        }
    }

    fn integer(&mut self, raw: &ArgumentTable) -> Option<ArgKind> {
        let bound = |this: &mut Self, value: &Option<Spanned<i64>>, name: &str| match value {
            Some(value) => Some(*value.get_ref()),
            None => {
                this.missing(name, "missing required key for type integer");
                None
            }
        };
        let min = bound(self, &raw.min, "min");
        let max = bound(self, &raw.max, "max");
        let (min, max) = (min?, max?);
        if min > max
            && let Some(max_value) = &raw.max
        {
            self.error(
                max_value.span(),
                "max",
                format!("max {max} is less than min {min}"),
            );
            return None;
        }
        Some(ArgKind::Integer { min, max })
    }

    fn enum_values(&mut self, raw: &ArgumentTable) -> Option<Vec<String>> {
        let Some(values) = &raw.values else {
            self.missing("values", "missing required key for type enum");
            return None;
        };
        if values.get_ref().is_empty() {
            self.error(values.span(), "values", "must list at least one value");
            return None;
        }
        let mut seen = BTreeSet::new();
        let mut valid = true;
        for value in values.get_ref() {
            let text = value.get_ref();
            let problem = if text.is_empty() {
                Some("empty value".to_owned())
            } else if let Some(rule) = find_forbidden_character(text, false, false) {
                Some(format!("value {text:?} {}", describe_character_rule(rule)))
            } else if text.starts_with('-') {
                Some(format!(
                    "value {text:?} starts with '-', which a script could read as an option"
                ))
            } else if text.len() > to_unsigned(*STRING_MAX_LENGTH_RANGE.end()) as usize {
                Some(format!(
                    "value is longer than {} bytes",
                    STRING_MAX_LENGTH_RANGE.end()
                ))
            } else if !seen.insert(text.as_str()) {
                Some(format!("value {text:?} is listed twice"))
            } else {
                None
            };
            if let Some(problem) = problem {
                self.error(value.span(), "values", problem);
                valid = false;
            }
        }
        valid.then(|| {
            values
                .get_ref()
                .iter()
                .map(|v| v.get_ref().clone())
                .collect()
        })
    }

    fn prefixes(&mut self, raw: &ArgumentTable) -> Option<Vec<String>> {
        let Some(prefixes) = &raw.prefixes else {
            self.missing("prefixes", "missing required key for type path");
            return None;
        };
        if prefixes.get_ref().is_empty() {
            self.error(prefixes.span(), "prefixes", "must list at least one prefix");
            return None;
        }
        let mut valid = true;
        for prefix in prefixes.get_ref() {
            let text = prefix.get_ref();
            let problem = if let Some(rule) = find_forbidden_character(text, false, false) {
                Some(describe_character_rule(rule).to_owned())
            } else if let Err(rule) = check_path_syntax(text) {
                Some(format!("{text:?} is {}", describe_path_rule(rule)))
            } else {
                None
            };
            if let Some(problem) = problem {
                self.error(prefix.span(), "prefixes", problem);
                valid = false;
            }
        }
        valid.then(|| {
            prefixes
                .get_ref()
                .iter()
                .map(|p| p.get_ref().clone())
                .collect()
        })
    }
}

fn describe_pattern_error(error: &PatternError) -> String {
    match error {
        PatternError::TooLong { max } => format!("longer than {max} bytes"),
        PatternError::Compile(regex::Error::CompiledTooBig(limit)) => {
            format!("compiles to more than {limit} bytes; use fewer or smaller repetitions")
        }
        PatternError::Compile(regex::Error::Syntax(text)) => {
            // The regex crate's syntax error spans several lines: the expression, a caret
            // and a last line "error: <reason>".
            let reason = text
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .map(|line| line.trim().trim_start_matches("error: "))
                .unwrap_or("syntax error");
            format!("invalid regular expression: {reason}")
        }
        PatternError::Compile(other) => format!("invalid regular expression: {other}"),
    }
}
