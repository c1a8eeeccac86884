//! Argv and environment templates: parsing of `{name}` references and the rules for
//! environment variable names.

use crate::policy::types::{Template, TemplatePart};

use super::compile::is_argument_name;

/// Environment variables that make libc, a shell or a common interpreter load code or read
/// files named by their value. The first group is glibc's list of variables that it drops
/// for set-user-ID programs (`unsecvars.h`, without TMPDIR). A client must not choose
/// these values, so an `env` entry for one of them may hold only literal text.
/// NOTE: the list is not exhaustive; a variable that another tool interprets as code is
/// still accepted.
pub(super) const CODE_LOADING_VARIABLES: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_TRACE",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TZDIR",
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "IFS",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PERL5LIB",
    "PERL5OPT",
    "PERLLIB",
    "RUBYLIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
];

/// `[A-Z_][A-Z0-9_]*`
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b'A'..=b'Z' | b'_'));
    first_ok && bytes.all(|b| matches!(b, b'A'..=b'Z' | b'0'..=b'9' | b'_'))
}

pub(super) fn check_env_name(name: &str) -> Option<&'static str> {
    if !is_env_name(name) {
        return Some("invalid variable name: expected [A-Z_][A-Z0-9_]*");
    }
    if name == "PATH" {
        return Some("PATH is reserved: the broker sets it to /usr/sbin:/usr/bin:/sbin:/bin");
    }
    if name.starts_with("LD_") {
        return Some("LD_* variables are reserved: they change what the dynamic loader loads");
    }
    if name.starts_with("SECURE_SOCKET_") {
        return Some("SECURE_SOCKET_* variables are reserved for the values the broker sets");
    }
    None
}

/// Parses an argv element or env value: `{name}` refers to an argument, `{{` and `}}` are
/// literal braces, and any other brace is an error.
pub(super) fn parse_template(text: &str) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(position) = rest.find(['{', '}']) {
        literal.push_str(&rest[..position]);
        let from_brace = &rest[position..];
        if let Some(after) = from_brace.strip_prefix("{{") {
            literal.push('{');
            rest = after;
        } else if let Some(after) = from_brace.strip_prefix("}}") {
            literal.push('}');
            rest = after;
        } else if from_brace.starts_with('}') {
            return Err("unmatched '}'; write '}}' for a literal brace".to_owned());
        } else {
            let inside = &from_brace[1..];
            let Some(end) = inside.find('}') else {
                return Err("unclosed '{'; write '{{' for a literal brace".to_owned());
            };
            let name = &inside[..end];
            if !is_argument_name(name) {
                return Err(format!(
                    "{{{name}}} is not an argument reference: a name is [a-z][a-z0-9_-]* \
                     (at most 64 bytes); write '{{{{' for a literal brace"
                ));
            }
            if !literal.is_empty() {
                parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
            }
            parts.push(TemplatePart::Argument(name.to_owned()));
            rest = &inside[end + 1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    Ok(Template { parts })
}
