//! The policy file format as serde reads it: one struct per table, every key optional so
//! that the compiler can report a missing key with its own message, and
//! `deny_unknown_fields` so that a misspelt key is an error rather than a silently ignored
//! setting. Numbers are read as `i64` and range-checked by the compiler.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{IgnoredAny, Visitor};
use toml::Spanned;

/// One `[command.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CommandTable {
    pub description: Option<Spanned<String>>,
    pub script: Option<Spanned<String>>,
    pub run_as: Option<Spanned<IdRef>>,
    pub run_as_group: Option<Spanned<IdRef>>,
    pub allow_users: Option<Vec<Spanned<IdRef>>>,
    pub allow_groups: Option<Vec<Spanned<IdRef>>>,
    pub allow_executables: Option<Vec<Spanned<String>>>,
    pub argv: Option<Vec<Spanned<String>>>,
    pub env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub timeout_ms: Option<Spanned<i64>>,
    pub capture_output: Option<bool>,
    pub output_limit: Option<Spanned<i64>>,
    pub stdin_limit: Option<Spanned<i64>>,
    pub max_concurrent: Option<Spanned<i64>>,
    pub rate_limit: Option<Spanned<RateLimitTable>>,
    pub capabilities: Option<Vec<Spanned<String>>>,
    pub rlimits: Option<RlimitsTable>,
    /// Read separately, one argument table at a time, so that an error in one argument
    /// does not hide the errors in the others.
    #[serde(rename = "arguments")]
    _arguments: Option<IgnoredAny>,
}

/// `[command.NAME.rlimits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RlimitsTable {
    pub cpu_seconds: Option<Spanned<i64>>,
    pub address_space: Option<Spanned<i64>>,
    pub open_files: Option<Spanned<i64>>,
    pub processes: Option<Spanned<i64>>,
    pub file_size: Option<Spanned<i64>>,
}

/// `rate_limit = { requests = N, per_seconds = S }`, or a `[command.NAME.rate_limit]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitTable {
    pub requests: Option<Spanned<i64>>,
    pub per_seconds: Option<Spanned<i64>>,
}

/// `[command.NAME.arguments.ARGUMENT]`. Keys that do not apply to the declared type are
/// rejected by the compiler.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ArgumentTable {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub description: Option<Spanned<String>>,
    pub required: Option<bool>,
    pub sensitive: Option<bool>,
    pub max_length: Option<Spanned<i64>>,
    pub pattern: Option<Spanned<String>>,
    pub charset: Option<Spanned<String>>,
    pub allow_leading_dash: Option<Spanned<bool>>,
    pub allow_newline: Option<Spanned<bool>>,
    pub allow_control: Option<Spanned<bool>>,
    pub min: Option<Spanned<i64>>,
    pub max: Option<Spanned<i64>>,
    pub values: Option<Spanned<Vec<Spanned<String>>>>,
    pub prefixes: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A user or group as written in the policy: a name, or a numeric id given as an integer
/// or as a string of digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IdRef {
    Name(String),
    Id(i64),
}

impl<'de> Deserialize<'de> for IdRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<IdRef, D::Error> {
        deserializer.deserialize_any(IdRefVisitor)
    }
}

struct IdRefVisitor;

impl Visitor<'_> for IdRefVisitor {
    type Value = IdRef;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a name or a numeric id")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<IdRef, E> {
        Ok(IdRef::Name(text.to_owned()))
    }

    fn visit_i64<E: serde::de::Error>(self, number: i64) -> Result<IdRef, E> {
        Ok(IdRef::Id(number))
    }

    fn visit_u64<E: serde::de::Error>(self, number: u64) -> Result<IdRef, E> {
        // Only values above i64::MAX arrive here, and those are out of range for any id.
        Ok(IdRef::Id(i64::try_from(number).unwrap_or(i64::MAX)))
    }
}

impl fmt::Display for IdRef {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        match self {
            IdRef::Name(name) => write!(formatter, "{name:?}"),
            IdRef::Id(number) => write!(formatter, "{number}"),
        }
    }
}
