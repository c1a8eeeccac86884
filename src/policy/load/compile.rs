//! Compilation of one `[command.NAME]` table into a [`Command`]: defaults and limits, user
//! and group resolution, script checks, and argv and environment templates. Argument
//! declarations are compiled in `arguments`. Every problem is recorded in the [`FileReport`]; a command with any problem
//! is left out of the policy.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;

use toml::Spanned;
use toml::de::DeValue;

use super::FileReport;
use super::accounts::{resolve_account, resolve_gid, resolve_uid, supplementary_groups};
use super::arguments::compile_arguments;
use super::raw::{CommandTable, IdRef, RateLimitTable, RlimitsTable};
use super::template::{CODE_LOADING_VARIABLES, check_env_name, parse_template};
use super::trust::check_script;
use crate::policy::types::{
    Command, CommandSpec, RateLimit, Rlimits, RunAs, Template, TemplatePart,
};
use crate::policy::validate::{
    ArgError, check_path_syntax, describe_path_rule, find_forbidden_character,
};

/// Maximum length of a command or argument name, in bytes.
pub(super) const MAX_NAME_LENGTH: usize = 64;
/// Maximum length of a command or argument description, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 1024;

const DEFAULT_TIMEOUT_MS: i64 = 10_000;
const TIMEOUT_MS_RANGE: RangeInclusive<i64> = 1..=3_600_000;
const DEFAULT_OUTPUT_LIMIT: i64 = 65_536;
const OUTPUT_LIMIT_RANGE: RangeInclusive<i64> = 1..=65_536;
const DEFAULT_STDIN_LIMIT: i64 = 0;
const STDIN_LIMIT_RANGE: RangeInclusive<i64> = 0..=65_536;
const DEFAULT_MAX_CONCURRENT: i64 = 4;
const MAX_CONCURRENT_RANGE: RangeInclusive<i64> = 1..=1024;
const RATE_LIMIT_REQUESTS_RANGE: RangeInclusive<i64> = 1..=10_000;
/// Up to one day.
const RATE_LIMIT_PER_SECONDS_RANGE: RangeInclusive<i64> = 1..=86_400;

/// Compiles the command `name` whose table is `definition`. Returns `None` when any
/// problem was recorded.
pub(super) fn compile_command(
    report: &mut FileReport<'_>,
    name: &str,
    name_span: Range<usize>,
    definition: &Spanned<DeValue<'_>>,
) -> Option<Command> {
    let key = format!("command.{name}");
    let errors_before = report.count();
    if !is_command_name(name) {
        report.error(
            Some(name_span.clone()),
            &key,
            "invalid command name: expected 1 to 64 characters from a-z, 0-9, '.', '_' and \
             '-', starting with a letter or digit",
        );
    }
    let DeValue::Table(table) = definition.get_ref() else {
        report.error(
            Some(definition.span()),
            &key,
            "must be a table, [command.NAME]",
        );
        return None;
    };

    // The command table and the argument tables are read separately, so that an unknown
    // key in one does not hide the errors in the others.
    let raw: Option<(CommandTable, BTreeSet<String>)> =
        report.deserialize(table, definition.span(), &key);
    let (arguments, declared) = compile_arguments(report, table, &key);
    let (raw, dropped) = raw?;
    let mut command = CommandCompiler {
        report,
        key: &key,
        name_span,
        dropped,
    };

    let description = command.description(raw.description.as_ref(), "description");
    let run_as = command.run_as(raw.run_as.as_ref(), raw.run_as_group.as_ref());
    let script = command.script(raw.script.as_ref(), run_as.as_ref());
    let allow_users = command.ids(raw.allow_users.as_deref(), "allow_users", resolve_uid);
    let allow_groups = command.ids(raw.allow_groups.as_deref(), "allow_groups", resolve_gid);
    // Checked on the lists as written, so that an entry that failed to resolve is not
    // reported a second time as an empty list.
    let written = |list: Option<&Vec<Spanned<IdRef>>>| list.is_some_and(|list| !list.is_empty());
    if !written(raw.allow_users.as_ref())
        && !written(raw.allow_groups.as_ref())
        && !command.dropped.contains("allow_groups")
    {
        command.missing(
            "allow_users",
            "allow_users and allow_groups are both empty, so no peer could run this command",
        );
    }
    let allow_executables = command.executables(raw.allow_executables.as_deref());
    let argv = command.argv(raw.argv.as_deref(), &declared);
    let env = command.env(raw.env.as_ref(), &declared);
    let timeout_ms = command.limit(
        raw.timeout_ms.as_ref(),
        "timeout_ms",
        TIMEOUT_MS_RANGE,
        DEFAULT_TIMEOUT_MS,
    );
    let output_limit = command.limit(
        raw.output_limit.as_ref(),
        "output_limit",
        OUTPUT_LIMIT_RANGE,
        DEFAULT_OUTPUT_LIMIT,
    );
    let stdin_limit = command.limit(
        raw.stdin_limit.as_ref(),
        "stdin_limit",
        STDIN_LIMIT_RANGE,
        DEFAULT_STDIN_LIMIT,
    );
    let max_concurrent = command.limit(
        raw.max_concurrent.as_ref(),
        "max_concurrent",
        MAX_CONCURRENT_RANGE,
        DEFAULT_MAX_CONCURRENT,
    );
    let rate_limit = command.rate_limit(raw.rate_limit.as_ref());
    let rlimits = command.rlimits(raw.rlimits.as_ref());
    let capabilities = command.capabilities(raw.capabilities.as_deref());

    if report.count() > errors_before {
        return None;
    }
    let (Some(run_as), Some(script)) = (run_as, script) else {
        return None;
    };
    Some(Command {
        spec: CommandSpec {
            name: name.to_owned(),
            description,
            arguments,
            timeout_ms: to_unsigned(timeout_ms),
            capture_output: raw.capture_output.unwrap_or(false),
            output_limit: to_unsigned(output_limit) as usize,
            stdin_limit: to_unsigned(stdin_limit) as usize,
            max_concurrent: to_unsigned(max_concurrent) as usize,
            rate_limit,
        },
        script,
        run_as,
        allow_users,
        allow_groups,
        allow_executables,
        argv,
        env,
        rlimits,
        capabilities,
        max_concurrent: to_unsigned(max_concurrent) as usize,
        rate_limit,
        origin: String::new(),
    })
}

/// Converts a value that has passed a range check with a non-negative lower bound.
pub(super) fn to_unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// `[a-z0-9][a-z0-9._-]{0,63}`
fn is_command_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'));
    first_ok
        && name.len() <= MAX_NAME_LENGTH
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

/// `[a-z][a-z0-9_-]{0,63}`
pub(super) fn is_argument_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b'a'..=b'z'));
    first_ok
        && name.len() <= MAX_NAME_LENGTH
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

pub(super) fn describe_character_rule(rule: &str) -> &'static str {
    match rule {
        ArgError::NUL => "contains a NUL character",
        ArgError::NEWLINE => "contains a line break",
        _ => "contains a control character",
    }
}

/// Compiles the state shared by the checks of one command's keys.
struct CommandCompiler<'r, 'f> {
    report: &'r mut FileReport<'f>,
    /// `command.NAME`
    key: &'r str,
    /// Position of the command's name, for errors about missing keys.
    name_span: Range<usize>,
    /// Keys whose values serde rejected; their errors are already recorded.
    dropped: BTreeSet<String>,
}

impl CommandCompiler<'_, '_> {
    fn sub_key(&self, name: &str) -> String {
        format!("{}.{name}", self.key)
    }

    fn error<T>(&mut self, spanned: &Spanned<T>, name: &str, message: impl Into<String>) {
        let key = self.sub_key(name);
        self.report.error_at(spanned, &key, message);
    }

    /// Records a problem with a key that has no place of its own, at the command's header,
    /// unless the key was written with a value that serde already rejected.
    fn missing(&mut self, name: &str, message: impl Into<String>) {
        if self.dropped.contains(name) {
            return;
        }
        let key = self.sub_key(name);
        self.report
            .error(Some(self.name_span.clone()), &key, message);
    }

    fn description(&mut self, text: Option<&Spanned<String>>, name: &str) -> String {
        let Some(text) = text else {
            return String::new();
        };
        if let Some(problem) = check_description(text.get_ref()) {
            self.error(text, name, problem);
        }
        text.get_ref().clone()
    }

    fn run_as(
        &mut self,
        user: Option<&Spanned<IdRef>>,
        group: Option<&Spanned<IdRef>>,
    ) -> Option<RunAs> {
        // Both keys are resolved before either error returns, so that both are reported.
        let gid = group.map(|group| (group, resolve_gid(group.get_ref())));
        let account = user.map(|user| (user, resolve_account(user.get_ref())));
        let gid = match gid {
            None => None,
            Some((_, Ok(gid))) => Some(gid),
            Some((group, Err(problem))) => {
                self.error(group, "run_as_group", problem);
                None
            }
        };
        let (user, account) = match account {
            None => {
                self.missing("run_as", "missing required key");
                return None;
            }
            Some((user, Err(problem))) => {
                self.error(user, "run_as", problem);
                return None;
            }
            Some((user, Ok(account))) => (user, account),
        };
        if group.is_some() && gid.is_none() {
            return None;
        }
        let groups = match supplementary_groups(&account) {
            Ok(groups) => groups,
            Err(problem) => {
                self.error(user, "run_as", problem);
                return None;
            }
        };
        Some(RunAs {
            user: account.name,
            uid: account.uid,
            gid: gid.unwrap_or(account.gid),
            groups,
        })
    }

    fn script(
        &mut self,
        path: Option<&Spanned<String>>,
        run_as: Option<&RunAs>,
    ) -> Option<PathBuf> {
        let Some(path) = path else {
            self.missing("script", "missing required key");
            return None;
        };
        let problems = check_script(path.get_ref(), run_as);
        let safe = problems.is_empty();
        for problem in problems {
            self.error(path, "script", problem);
        }
        safe.then(|| PathBuf::from(path.get_ref()))
    }

    /// Resolves each entry of `allow_users` or `allow_groups`, sorted and without
    /// duplicates.
    fn ids(
        &mut self,
        entries: Option<&[Spanned<IdRef>]>,
        name: &str,
        resolve: fn(&IdRef) -> Result<u32, String>,
    ) -> Vec<u32> {
        let mut ids = BTreeSet::new();
        for entry in entries.unwrap_or_default() {
            match resolve(entry.get_ref()) {
                Ok(id) => {
                    ids.insert(id);
                }
                Err(problem) => self.error(entry, name, problem),
            }
        }
        ids.into_iter().collect()
    }

    fn executables(&mut self, entries: Option<&[Spanned<String>]>) -> Vec<PathBuf> {
        let mut executables = Vec::new();
        for entry in entries.unwrap_or_default() {
            let path = entry.get_ref();
            if let Some(rule) = find_forbidden_character(path, false, false) {
                self.error(entry, "allow_executables", describe_character_rule(rule));
            } else if let Err(rule) = check_path_syntax(path) {
                let problem = format!("{path:?} is {}", describe_path_rule(rule));
                self.error(entry, "allow_executables", problem);
            } else {
                executables.push(PathBuf::from(path));
            }
        }
        executables
    }

    /// Parses one argv or env template and checks what it refers to. `sensitive_allowed`
    /// is false for argv, which every local user can read in /proc/PID/cmdline.
    fn template(
        &mut self,
        text: &Spanned<String>,
        name: &str,
        what: &str,
        declared: &BTreeMap<String, bool>,
        sensitive_allowed: bool,
    ) -> Option<Template> {
        let template = match parse_template(text.get_ref()) {
            Ok(template) => template,
            Err(problem) => {
                self.error(text, name, format!("{what}: {problem}"));
                return None;
            }
        };
        let mut valid = true;
        for part in &template.parts {
            let TemplatePart::Literal(literal) = part else {
                continue;
            };
            if literal.contains('\0') {
                self.error(text, name, format!("{what} contains a NUL character"));
                valid = false;
            }
        }
        for argument in template.argument_names() {
            match declared.get(argument) {
                None => {
                    let problem = format!(
                        "{what} refers to {{{argument}}}, which is not a declared argument; \
                         write {{{{ and }}}} for literal braces"
                    );
                    self.error(text, name, problem);
                    valid = false;
                }
                Some(true) if !sensitive_allowed => {
                    let problem = format!(
                        "{what} refers to the sensitive argument {{{argument}}}, and argv is \
                         readable by every local user in /proc/PID/cmdline; pass it through \
                         env instead"
                    );
                    self.error(text, name, problem);
                    valid = false;
                }
                Some(_) => {}
            }
        }
        valid.then_some(template)
    }

    fn argv(
        &mut self,
        elements: Option<&[Spanned<String>]>,
        declared: &BTreeMap<String, bool>,
    ) -> Vec<Template> {
        let mut argv = Vec::new();
        for (index, element) in elements.unwrap_or_default().iter().enumerate() {
            let what = format!("argv[{index}]");
            argv.extend(self.template(element, "argv", &what, declared, false));
        }
        argv
    }

    fn env(
        &mut self,
        entries: Option<&BTreeMap<Spanned<String>, Spanned<String>>>,
        declared: &BTreeMap<String, bool>,
    ) -> Vec<(String, Template)> {
        let mut env = Vec::new();
        for (variable, value) in entries.into_iter().flatten() {
            let variable_name = variable.get_ref();
            let key = format!("env.{variable_name}");
            if let Some(problem) = check_env_name(variable_name) {
                self.error(variable, &key, problem);
                continue;
            }
            let Some(template) = self.template(value, &key, "value", declared, true) else {
                continue;
            };
            let from_argument = template.argument_names().next().is_some();
            if from_argument && CODE_LOADING_VARIABLES.contains(&variable_name.as_str()) {
                let problem = "takes its value from an argument, but this variable makes libc, \
                               a shell or an interpreter load code or files it names; give a \
                               literal value";
                self.error(value, &key, problem);
                continue;
            }
            env.push((variable_name.clone(), template));
        }
        env
    }

    /// Checks an integer setting against its range and returns it, or the default when the
    /// key is absent. An out-of-range value is recorded and replaced by the default.
    fn limit(
        &mut self,
        value: Option<&Spanned<i64>>,
        name: &str,
        range: RangeInclusive<i64>,
        default: i64,
    ) -> i64 {
        let Some(value) = value else {
            return default;
        };
        let number = *value.get_ref();
        if range.contains(&number) {
            return number;
        }
        let problem = format!(
            "{number} is outside the range {} to {}",
            range.start(),
            range.end()
        );
        self.error(value, name, problem);
        default
    }

    fn optional_limit(
        &mut self,
        value: Option<&Spanned<i64>>,
        name: &str,
        minimum: i64,
    ) -> Option<u64> {
        let value = value?;
        let number = *value.get_ref();
        if number < minimum {
            let problem = format!("{number} is below the minimum {minimum}");
            self.error(value, name, problem);
            return None;
        }
        Some(to_unsigned(number))
    }

    /// Reads `capabilities`: names as the kernel spells them, such as
    /// `CAP_NET_BIND_SERVICE`. `None` when the key is absent, which is not the same as an
    /// empty list: a root command without the key keeps root's usual set.
    fn capabilities(&mut self, names: Option<&[Spanned<String>]>) -> Option<Vec<caps::Capability>> {
        let names = names?;
        let mut capabilities = Vec::with_capacity(names.len());
        for name in names {
            match name.get_ref().parse::<caps::Capability>() {
                Ok(capability) if capabilities.contains(&capability) => self.error(
                    name,
                    "capabilities",
                    format!("{} is listed twice", name.get_ref()),
                ),
                Ok(capability) => capabilities.push(capability),
                Err(_) => self.error(
                    name,
                    "capabilities",
                    format!(
                        "unknown capability {:?}; use a name such as CAP_NET_BIND_SERVICE",
                        name.get_ref()
                    ),
                ),
            }
        }
        capabilities.sort_by_key(|capability| capability.index());
        Some(capabilities)
    }

    /// Reads `rate_limit`. Both keys are required, so that a table with one of them left
    /// out is an error rather than a limit that silently takes a default.
    fn rate_limit(&mut self, table: Option<&Spanned<RateLimitTable>>) -> Option<RateLimit> {
        let table = table?;
        // A misspelt key was reported as unknown already, so reporting the key it was meant
        // to be as missing too would only repeat the problem.
        let misspelt = self.dropped.contains("rate_limit");
        let mut value = |key: Option<&Spanned<i64>>, name: &str, range: RangeInclusive<i64>| {
            let Some(key) = key else {
                if !misspelt {
                    let problem = format!("missing required key {name}");
                    self.error(table, &format!("rate_limit.{name}"), problem);
                }
                return None;
            };
            let number = *key.get_ref();
            if !range.contains(&number) {
                let problem = format!(
                    "{number} is outside the range {} to {}",
                    range.start(),
                    range.end()
                );
                self.error(key, &format!("rate_limit.{name}"), problem);
                return None;
            }
            u32::try_from(number).ok()
        };
        let requests = value(
            table.get_ref().requests.as_ref(),
            "requests",
            RATE_LIMIT_REQUESTS_RANGE,
        );
        let per_seconds = value(
            table.get_ref().per_seconds.as_ref(),
            "per_seconds",
            RATE_LIMIT_PER_SECONDS_RANGE,
        );
        Some(RateLimit {
            requests: requests?,
            per_seconds: per_seconds?,
        })
    }

    /// Checks the optional rlimits. The minimums keep a limit from making the exec fail:
    /// a CPU, address-space or process limit of 0, or fewer than the 3 standard file
    /// descriptors. A file size limit of 0 is allowed and forbids writing regular files.
    fn rlimits(&mut self, table: Option<&RlimitsTable>) -> Rlimits {
        let Some(table) = table else {
            return Rlimits::default();
        };
        Rlimits {
            cpu_seconds: self.optional_limit(table.cpu_seconds.as_ref(), "rlimits.cpu_seconds", 1),
            address_space: self.optional_limit(
                table.address_space.as_ref(),
                "rlimits.address_space",
                1,
            ),
            open_files: self.optional_limit(table.open_files.as_ref(), "rlimits.open_files", 3),
            processes: self.optional_limit(table.processes.as_ref(), "rlimits.processes", 1),
            file_size: self.optional_limit(table.file_size.as_ref(), "rlimits.file_size", 0),
        }
    }
}

/// Returns what is wrong with a description: too long, or a control character other than
/// a line break.
pub(super) fn check_description(text: &str) -> Option<String> {
    if text.len() > MAX_DESCRIPTION_BYTES {
        return Some(format!("longer than {MAX_DESCRIPTION_BYTES} bytes"));
    }
    find_forbidden_character(text, true, false).map(|rule| describe_character_rule(rule).to_owned())
}
