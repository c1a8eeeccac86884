//! Compiled policy types shared by the monitor and the parser child.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Identity of a connected peer, as read by the monitor from the kernel (SO_PEERCRED,
/// SO_PEERGROUPS, SO_PEERPIDFD). Never taken from anything the peer sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// Supplementary groups from SO_PEERGROUPS.
    pub groups: Vec<u32>,
    /// Executable of the peer process, read through its pidfd; `None` when it could not
    /// be read (the process exited, is not dumpable, or the kernel lacks SO_PEERPIDFD).
    pub exe: Option<PathBuf>,
}

impl Peer {
    /// Returns the executable path for the log, empty when it could not be read.
    pub fn exe_text(&self) -> String {
        self.exe
            .as_ref()
            .map(|exe| exe.display().to_string())
            .unwrap_or_default()
    }
}

/// A typed, validated argument value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArgValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// Declared type of one named argument, with its rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ArgKind {
    String {
        /// Maximum length in bytes.
        max_length: usize,
        /// Full-match pattern: the whole value must match.
        pattern: Option<Pattern>,
        /// Expression that each character must match on its own, typically a character
        /// class such as `[a-z0-9._-]`.
        charset: Option<Pattern>,
    },
    Integer {
        min: i64,
        max: i64,
    },
    Enum {
        values: Vec<String>,
    },
    Boolean,
    /// A lexical path: absolute, normalised, no `..`, under one of `prefixes`.
    Path {
        prefixes: Vec<String>,
        max_length: usize,
    },
}

impl ArgKind {
    /// Returns the type name used in policy files and in `ArgumentInfo.kind`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ArgKind::String { .. } => "string",
            ArgKind::Integer { .. } => "integer",
            ArgKind::Enum { .. } => "enum",
            ArgKind::Boolean => "boolean",
            ArgKind::Path { .. } => "path",
        }
    }
}

impl ArgValue {
    /// Returns the JSON type name of the value, for error messages that must not show it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ArgValue::Str(_) => "string",
            ArgValue::Int(_) => "integer",
            ArgValue::Bool(_) => "boolean",
        }
    }
}

/// Maximum length of a pattern source, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// Maximum size of one compiled pattern (`regex::RegexBuilder::size_limit`) and of its lazy
/// DFA cache, in bytes. The regex crate matches in linear time, so this bounds memory, not
/// time.
pub const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// A compiled full-match regular expression that serialises as its source text.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The expression as written in the policy, without anchors.
    pub source: String,
    /// `source` compiled as `^(?:source)$`.
    pub regex: regex::Regex,
}

/// Reason a pattern source was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("pattern is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("failed to compile pattern")]
    Compile(#[source] regex::Error),
}

impl Pattern {
    /// Compiles `source` as a full match, `^(?:source)$`.
    ///
    /// The source is first compiled on its own. Without that step a source such as
    /// `a)|(?:b` would be accepted, because wrapping it yields the valid expression
    /// `^(?:a)|(?:b)$`, which is no longer anchored at both ends.
    pub fn new(source: &str) -> Result<Pattern, PatternError> {
        if source.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::TooLong {
                max: MAX_PATTERN_BYTES,
            });
        }
        compile_bounded(source).map_err(PatternError::Compile)?;
        let regex = compile_bounded(&format!("^(?:{source})$")).map_err(PatternError::Compile)?;
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    /// Returns whether the whole of `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

fn compile_bounded(source: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(source)
        .size_limit(PATTERN_SIZE_LIMIT)
        .dfa_size_limit(PATTERN_SIZE_LIMIT)
        .build()
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Pattern, D::Error> {
        let source = String::deserialize(deserializer)?;
        Pattern::new(&source).map_err(|error| {
            let cause = match &error {
                PatternError::TooLong { .. } => String::new(),
                PatternError::Compile(cause) => format!(": {cause}"),
            };
            serde::de::Error::custom(format!("{error}{cause}"))
        })
    }
}

/// Declaration of one named argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArgSpec {
    pub name: String,
    pub description: String,
    pub kind: ArgKind,
    pub required: bool,
    /// Sensitive values never appear in logs or error messages, only their length.
    pub sensitive: bool,
    /// Secure defaults for strings, each lifted only by an explicit declaration.
    pub allow_leading_dash: bool,
    pub allow_newline: bool,
    pub allow_control: bool,
}

/// The part of a command that the parser child receives: enough to validate a request
/// and to describe the command, nothing about how or as whom it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandSpec {
    pub name: String,
    pub description: String,
    /// Sorted by name.
    pub arguments: Vec<ArgSpec>,
    pub timeout_ms: u64,
    pub capture_output: bool,
    /// Maximum bytes captured from each of stdout and stderr.
    pub output_limit: usize,
    /// Maximum stdin payload in bytes; 0 means stdin is /dev/null.
    pub stdin_limit: usize,
    /// Maximum concurrent runs, shown to clients; the monitor enforces the copy in
    /// [`Command`].
    pub max_concurrent: usize,
    /// Per-peer rate limit, shown to clients; the monitor enforces the copy in
    /// [`Command`].
    pub rate_limit: Option<RateLimit>,
}

/// One element of an argv or environment template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// The value of the named argument, inserted as is: never split or interpreted.
    Argument(String),
}

/// A template element made of literals and argument references, for example
/// `--user={user}`. An element that refers to an absent optional argument is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

/// Resource limits applied to the script process before exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rlimits {
    /// RLIMIT_CPU, seconds.
    pub cpu_seconds: Option<u64>,
    /// RLIMIT_AS, bytes.
    pub address_space: Option<u64>,
    /// RLIMIT_NOFILE.
    pub open_files: Option<u64>,
    /// RLIMIT_NPROC, counted per real user id by the kernel.
    pub processes: Option<u64>,
    /// RLIMIT_FSIZE, bytes.
    pub file_size: Option<u64>,
}

/// The user and groups a script runs as, resolved at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups of `user` from the group database at load time.
    pub groups: Vec<u32>,
}

/// A per-peer rate limit: a token bucket of `requests` tokens that refills at `requests`
/// per `per_seconds`. Both values are at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests: u32,
    pub per_seconds: u32,
}

impl RateLimit {
    /// Returns the time in which the bucket regains one token.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.per_seconds)) / self.requests.max(1)
    }
}

/// A fully compiled command, kept by the monitor only.
#[derive(Debug, Clone)]
pub struct Command {
    pub spec: CommandSpec,
    pub script: PathBuf,
    pub run_as: RunAs,
    pub allow_users: Vec<u32>,
    pub allow_groups: Vec<u32>,
    /// When set, the peer's executable must be one of these paths.
    pub allow_executables: Vec<PathBuf>,
    pub argv: Vec<Template>,
    pub env: Vec<(String, Template)>,
    pub rlimits: Rlimits,
    /// Capabilities the script gets. `None`: a root script keeps root's usual set and any
    /// other user gets none. `Some`: exactly these, as the bounding set of a root script or
    /// as ambient capabilities of any other user.
    pub capabilities: Option<Vec<caps::Capability>>,
    /// Maximum concurrent runs of this command.
    pub max_concurrent: usize,
    /// Maximum request rate of one peer uid for this command; `None` means no limit.
    pub rate_limit: Option<RateLimit>,
    /// File and line that defined the command, for messages.
    pub origin: String,
}

impl Command {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.spec.timeout_ms)
    }

    /// Checks whether `peer` may run this command: its uid is listed, or its primary or
    /// one of its supplementary groups is, and, when executables are listed, its
    /// executable is one of them. The error names the rule that rejects the peer.
    pub fn permits(&self, peer: &Peer) -> Result<(), PermissionError> {
        let by_user = self.allow_users.contains(&peer.uid);
        let by_group = self.allow_groups.contains(&peer.gid)
            || peer.groups.iter().any(|g| self.allow_groups.contains(g));
        if !(by_user || by_group) {
            return Err(PermissionError::UserNotAllowed);
        }
        if self.allow_executables.is_empty() {
            return Ok(());
        }
        match &peer.exe {
            Some(exe) if self.allow_executables.contains(exe) => Ok(()),
            Some(exe) => Err(PermissionError::ExecutableNotAllowed(exe.clone())),
            None => Err(PermissionError::ExecutableUnreadable),
        }
    }
}

/// Reason why a peer may not run a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    #[error("neither the peer's uid nor its groups are in allow_users or allow_groups")]
    UserNotAllowed,
    #[error("the peer's executable {} is not in allow_executables", .0.display())]
    ExecutableNotAllowed(PathBuf),
    /// The monitor could not read /proc/PID/exe: the process exited, is not dumpable, or
    /// has capabilities the monitor lacks. The kernel clears the dumpable flag when a
    /// process changes its uid, as php-fpm workers do; in both cases only CAP_SYS_PTRACE,
    /// which the monitor does not keep, can read the link.
    #[error(
        "the broker could not read the peer's executable, so it cannot match \
         allow_executables. A process that changed its uid, cleared its dumpable flag or \
         holds capabilities the broker lacks (as most processes of root do) hides its \
         executable from the broker; allow it by user or group instead"
    )]
    ExecutableUnreadable,
}

impl PermissionError {
    /// Returns the policy key whose check failed.
    pub fn rule(&self) -> &'static str {
        match self {
            PermissionError::UserNotAllowed => "allow_users",
            PermissionError::ExecutableNotAllowed(_) | PermissionError::ExecutableUnreadable => {
                "allow_executables"
            }
        }
    }
}

/// A loaded, validated policy. Immutable once built; a reload builds a new one.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub commands: BTreeMap<String, Command>,
}

/// What a policy may hand to scripts, which decides the monitor's bounding and permitted
/// capability sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityNeeds {
    /// A root command declares no capabilities, so it keeps root's usual set and the
    /// bounding set must stay whole.
    pub full_bounding: bool,
    /// Union of every declared `capabilities` list.
    pub declared: caps::CapsHashSet,
    /// A root command declares capabilities, so the runner must cut the script's bounding
    /// set, which takes CAP_SETPCAP.
    pub restricts_root: bool,
}

impl CapabilityNeeds {
    /// Returns whether a monitor set up for `self` can serve a policy that needs `other`:
    /// capabilities can be dropped but never regained, so a reload may not ask for more.
    pub fn covers(&self, other: &CapabilityNeeds) -> bool {
        (self.full_bounding || !other.full_bounding)
            && (self.restricts_root || !other.restricts_root)
            && other.declared.is_subset(&self.declared)
    }
}

impl Policy {
    /// Returns what the commands of this policy may hand to their scripts.
    pub fn capability_needs(&self) -> CapabilityNeeds {
        let mut needs = CapabilityNeeds::default();
        for command in self.commands.values() {
            let root = command.run_as.uid == 0;
            match &command.capabilities {
                None if root => needs.full_bounding = true,
                None => {}
                Some(list) => {
                    needs.declared.extend(list.iter().copied());
                    needs.restricts_root |= root;
                }
            }
        }
        needs
    }

    /// Returns the specs of the commands `peer` may run, sorted by name.
    pub fn specs_for(&self, peer: &Peer) -> Vec<CommandSpec> {
        self.commands
            .values()
            .filter(|command| command.permits(peer).is_ok())
            .map(|command| command.spec.clone())
            .collect()
    }
}
