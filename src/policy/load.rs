//! Loading of the policy directory: trust checks on the directory and its files, TOML
//! parsing with line numbers, and compilation of every command into a [`Policy`].
//!
//! Policy files are trusted only after the checks in [`trust`] pass (owned by root, not
//! writable by group or others, no symbolic links). Even then a file is treated as
//! possibly wrong: every error found is collected with its file, line and dotted key, so
//! that one run of `check-policy` shows them all.

mod accounts;
mod arguments;
mod compile;
mod raw;
mod template;
mod trust;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::types::Policy;

/// One problem in the policy, located by file, line and dotted key (for example
/// `command.backup.arguments.path.prefixes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// Dotted key; empty for problems with the file as a whole.
    pub key: String,
    pub message: String,
}

impl PolicyError {
    fn new(file: &Path, line: Option<usize>, key: &str, message: impl Into<String>) -> Self {
        PolicyError {
            file: file.to_owned(),
            line,
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Formats as `FILE:LINE: KEY: message`, leaving out the line or the key when there is none.
impl fmt::Display for PolicyError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(formatter, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(formatter, ": {}", self.key)?;
        }
        write!(formatter, ": {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

/// A policy that failed to load, with every problem found. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub errors: Vec<PolicyError>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [] => formatter.write_str("invalid policy"),
            [only] => write!(formatter, "invalid policy: {only}"),
            [first, _] => write!(formatter, "invalid policy: {first} (and 1 more error)"),
            [first, rest @ ..] => write!(
                formatter,
                "invalid policy: {first} (and {} more errors)",
                rest.len()
            ),
        }
    }
}

impl std::error::Error for LoadError {}

/// Loads and compiles every `*.toml` file directly in `dir`, in name order.
///
/// Nothing is read from a directory that fails the trust checks. Otherwise each file is
/// parsed and each command compiled independently, and all errors are returned together.
pub fn load_dir(dir: &Path) -> Result<Policy, LoadError> {
    let mut errors = Vec::new();
    for message in trust::check_policy_dir(dir) {
        errors.push(PolicyError::new(dir, None, "", message));
    }
    if !errors.is_empty() {
        return Err(LoadError { errors });
    }

    let files = trust::list_policy_files(dir).map_err(|error| LoadError {
        errors: vec![PolicyError::new(
            dir,
            None,
            "",
            format!("failed to list policy directory: {error}"),
        )],
    })?;

    let mut policy = Policy::default();
    // Where each command name was first defined, kept even when the command had errors,
    // so that a second definition is reported either way.
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    for file in &files {
        let text = match trust::read_policy_file(file) {
            Ok(text) => text,
            Err(message) => {
                errors.push(PolicyError::new(file, None, "", message));
                continue;
            }
        };
        let first_error = errors.len();
        let mut report = FileReport {
            file,
            text: &text,
            errors: &mut errors,
        };
        load_file(&mut report, &mut defined, &mut policy);
        // Commands are visited in key order, so the errors of one file are put back in line
        // order. The sort is stable, which keeps the order of errors on the same line.
        errors[first_error..].sort_by_key(|error| error.line);
    }

    if defined.is_empty() && errors.is_empty() {
        errors.push(PolicyError::new(
            dir,
            None,
            "command",
            "no command is defined in any *.toml file in the policy directory",
        ));
    }
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(LoadError { errors })
    }
}

/// Loads `dir` as [`load_dir`] does and returns the number of commands, for the
/// `check-policy` subcommand.
pub fn check_dir(dir: &Path) -> Result<usize, LoadError> {
    load_dir(dir).map(|policy| policy.commands.len())
}

/// Parses one file and compiles its commands into `policy`.
fn load_file(
    report: &mut FileReport<'_>,
    defined: &mut BTreeMap<String, String>,
    policy: &mut Policy,
) {
    let text = report.text;
    let (document, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for error in syntax_errors {
            report.error(
                error.span(),
                "",
                format!("invalid TOML: {}", error.message()),
            );
        }
        return;
    }

    for (key, value) in document.get_ref() {
        if key.get_ref() != "command" {
            report.error(
                Some(key.span()),
                key.get_ref(),
                "unknown key; a policy file contains only [command.NAME] tables",
            );
            continue;
        }
        let DeValue::Table(commands) = value.get_ref() else {
            report.error(
                Some(value.span()),
                "command",
                "must be a table of commands, [command.NAME]",
            );
            continue;
        };
        for (name, definition) in commands {
            let name_text: &str = name.get_ref();
            let line = report.line(name.span().start);
            let origin = format!("{}:{line}", report.file.display());
            if let Some(first) = defined.get(name_text) {
                report.error(
                    Some(name.span()),
                    &format!("command.{name_text}"),
                    format!("command is defined twice: first at {first}, again at {origin}"),
                );
            } else {
                defined.insert(name_text.to_owned(), origin.clone());
            }
            let compiled = compile::compile_command(report, name_text, name.span(), definition);
            if let Some(mut command) = compiled
                && !policy.commands.contains_key(name_text)
            {
                command.origin = origin;
                policy.commands.insert(name_text.to_owned(), command);
            }
        }
    }
}

/// Collects the errors of one policy file and turns byte offsets into line numbers.
struct FileReport<'a> {
    file: &'a Path,
    text: &'a str,
    errors: &'a mut Vec<PolicyError>,
}

impl FileReport<'_> {
    /// Returns the 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        let newlines = self.text.as_bytes()[..end]
            .iter()
            .filter(|byte| **byte == b'\n')
            .count();
        newlines + 1
    }

    fn error(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let line = span.map(|span| self.line(span.start));
        self.errors
            .push(PolicyError::new(self.file, line, key, message));
    }

    fn error_at<T>(&mut self, spanned: &Spanned<T>, key: &str, message: impl Into<String>) {
        self.error(Some(spanned.span()), key, message);
    }

    fn count(&self) -> usize {
        self.errors.len()
    }

    /// Deserializes one table and returns it with the top-level keys that were dropped to
    /// read it. Each serde error is recorded under the dotted key of the entry it points
    /// to. That entry is then removed and the table read again, so that one unknown key
    /// does not hide the errors after it. Returns `None` when an error points to no entry.
    fn deserialize<T: DeserializeOwned>(
        &mut self,
        table: &DeTable<'_>,
        span: Range<usize>,
        key: &str,
    ) -> Option<(T, BTreeSet<String>)> {
        let mut table = table.clone();
        let mut dropped = BTreeSet::new();
        // Ends because every round either returns or removes one entry.
        loop {
            let value = Spanned::new(span.clone(), DeValue::Table(table.clone()));
            let error = match T::deserialize(ValueDeserializer::from(value)) {
                Ok(parsed) => return Some((parsed, dropped)),
                Err(error) => error,
            };
            let path = error
                .span()
                .and_then(|span| entry_path_at_offset(&table, span.start));
            let dotted = match &path {
                Some(path) => format!("{key}.{}", path.join(".")),
                None => key.to_owned(),
            };
            self.error(error.span(), &dotted, error.message());
            let path = path?;
            if !remove_entry(&mut table, &path) {
                return None;
            }
            dropped.insert(path[0].clone());
        }
    }
}

/// Returns the key path of the innermost entry of `table` whose key or value covers
/// `offset`. Serde reports an unknown key at the key and a wrong type at the value.
fn entry_path_at_offset(table: &DeTable<'_>, offset: usize) -> Option<Vec<String>> {
    for (key, value) in table {
        let name = key.get_ref().to_string();
        if key.span().contains(&offset) {
            return Some(vec![name]);
        }
        if let DeValue::Table(inner) = value.get_ref() {
            if let Some(mut inner_path) = entry_path_at_offset(inner, offset) {
                inner_path.insert(0, name);
                return Some(inner_path);
            }
        } else if value.span().contains(&offset) {
            return Some(vec![name]);
        }
    }
    None
}

/// Removes the entry at `path` from `table`; returns whether there was one.
fn remove_entry(table: &mut DeTable<'_>, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last.as_str()).is_some(),
        [first, rest @ ..] => match table.get_mut(first.as_str()).map(Spanned::get_mut) {
            Some(DeValue::Table(inner)) => remove_entry(inner, rest),
            _ => false,
        },
    }
}
