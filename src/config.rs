//! Start-up parameters: `key=value` arguments, parsed and checked before the broker
//! creates anything.
//!
//! Input comes from the administrator's command line (trusted, but checked so that a
//! mistake is reported with the key, the value and what is accepted).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use crate::sandbox::SandboxMode;

/// Broker parameters after parsing. Field names follow the `key=value` names.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket_path: PathBuf,
    /// Prefix of the POSIX message queue name; a random suffix is appended.
    pub mq_name: String,
    /// Destination of log events. `File` appends to log_file.
    pub log_destination: LogDestination,
    /// File that log_destination=file appends to. Setting it alone selects that destination.
    pub log_file: Option<PathBuf>,
    /// Datagram socket of the syslog daemon, for log_destination=syslog.
    pub syslog_socket: PathBuf,
    pub max_connections: usize,
    /// Connections one peer uid may hold at once; `None` means half of max_connections.
    pub max_connections_per_uid: Option<usize>,
    /// Mode of the socket file, for example 0o660.
    pub socket_permissions: u32,
    pub authorised_peer_username: Option<String>,
    pub authorised_peer_uid: Option<u32>,
    pub authorised_peer_gid: Option<u32>,
    pub authorised_peer_pid: Option<i32>,
    pub authorised_peer_process_name: Option<String>,
    pub verbosity: tracing::Level,
    pub log_format: LogFormat,
    pub policy_dir: PathBuf,
    pub unprivileged_user: String,
    pub pool_size: usize,
    /// Time a client has to deliver one complete request frame, and to read one reply.
    pub request_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_requests_per_connection: u32,
    /// Connections one parser child may serve in total, each of the same peer identity.
    /// 0 and 1 both mean one connection per child, so no reuse.
    pub max_connections_per_child: u32,
    /// Children that finished a connection and wait for the next one of the same peer
    /// identity, kept at most.
    pub max_cached_children: usize,
    /// Time a cached child may wait for its next connection before it is killed.
    pub cached_child_idle: Duration,
    /// Time running scripts get to finish after SIGTERM before their groups are killed.
    pub shutdown_grace: Duration,
    pub sandbox: SandboxMode,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            socket_path: PathBuf::from("/run/secure_socket/broker.sock"),
            mq_name: "/secure_socket".to_string(),
            log_destination: LogDestination::Stderr,
            log_file: None,
            syslog_socket: PathBuf::from(DEFAULT_SYSLOG_SOCKET),
            max_connections: 64,
            max_connections_per_uid: None,
            socket_permissions: 0o660,
            authorised_peer_username: None,
            authorised_peer_uid: None,
            authorised_peer_gid: None,
            authorised_peer_pid: None,
            authorised_peer_process_name: None,
            verbosity: tracing::Level::INFO,
            log_format: LogFormat::Text,
            policy_dir: PathBuf::from("/etc/secure_socket/policy.d"),
            unprivileged_user: "nobody".to_string(),
            pool_size: 4,
            request_timeout: Duration::from_millis(10_000),
            max_frame_bytes: 65_536,
            max_requests_per_connection: 100,
            // Reuse saves re-executing and confining a child (about 2 ms of CPU) on all
            // but one of these connections, so 32 keeps that cost under 0.1 ms per
            // connection. A compromised child receives at most 31 later connections of
            // its own identity. A larger value saves almost nothing more.
            max_connections_per_child: 32,
            // Enough for one cached child per concurrent client of a busy web server,
            // whose workers are one identity. Each idle child costs about 1 to 3 MiB.
            max_cached_children: 16,
            // Long enough to bridge the pauses between calls of a lightly loaded web
            // server, short enough that an idle child of a client that went away does
            // not wait long for a connection.
            cached_child_idle: Duration::from_millis(10_000),
            shutdown_grace: Duration::from_millis(5_000),
            sandbox: SandboxMode::Strict,
        }
    }
}

/// Socket that syslog daemons listen on for local messages.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

/// Destination of log events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDestination {
    Stderr,
    /// Appended to log_file.
    File,
    /// The systemd journal's native socket, one journal entry per event with every field
    /// as a journal field.
    Journald,
    /// One line per event to syslog_socket.
    Syslog,
}

/// Format of log events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, with every field at the top level.
    Json,
}

/// A rejected parameter. The message names the key, the value and what is accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid argument {argument:?}: expected key=value")]
    NotKeyValue { argument: String },
    #[error("unknown parameter {key:?}; run `secure_socket --help` for the list of parameters")]
    UnknownKey { key: String },
    #[error("parameter {key} given twice")]
    Duplicate { key: String },
    #[error("invalid value {value:?} for {key}: expected {expected}")]
    InvalidValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{key}={value} is not supported: {reason}")]
    Unsupported {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("conflicting parameters: {reason}")]
    Conflict { reason: String },
}

/// One documented parameter, for `--help`.
pub struct ParameterDoc {
    pub key: &'static str,
    pub default: &'static str,
    /// Unit of the value, such as "milliseconds", or "" for a count or a name.
    pub unit: &'static str,
    /// Smallest and largest value accepted, for the parameters that parse to a number in
    /// a range.
    pub range: Option<(u64, u64)>,
    pub help: &'static str,
}

/// Every parameter the broker accepts, with its default and unit.
pub const PARAMETERS: &[ParameterDoc] = &[
    ParameterDoc {
        key: "socket_path",
        default: "/run/secure_socket/broker.sock",
        unit: "",
        range: None,
        help: "absolute path of the listening unix socket",
    },
    ParameterDoc {
        key: "policy_dir",
        default: "/etc/secure_socket/policy.d",
        unit: "",
        range: None,
        help: "directory whose *.toml files define the commands (root-owned)",
    },
    ParameterDoc {
        key: "unprivileged_user",
        default: "nobody",
        unit: "",
        range: None,
        help: "user the parser children run as (name or uid, not root)",
    },
    ParameterDoc {
        key: "log_destination",
        default: "file when log_file is set, else stderr",
        unit: "",
        range: None,
        help: "stderr, file (log_file), journald (native journal fields) or syslog (syslog_socket)",
    },
    ParameterDoc {
        key: "log_file",
        default: "(none)",
        unit: "",
        range: None,
        help: "absolute path of the log file to append to, which selects log_destination=file; \
               a regular file owned by root, in directories only root can write",
    },
    ParameterDoc {
        key: "syslog_socket",
        default: DEFAULT_SYSLOG_SOCKET,
        unit: "",
        range: None,
        help: "absolute path of the syslog daemon's socket, for log_destination=syslog",
    },
    ParameterDoc {
        key: "verbosity",
        default: "info",
        unit: "",
        range: None,
        help: "error, warn, info, debug or trace (or 0 to 4)",
    },
    ParameterDoc {
        key: "log_format",
        default: "text",
        unit: "",
        range: None,
        help: "text (one readable line per event) or json (one JSON object per line), not with journald",
    },
    ParameterDoc {
        key: "mq_name",
        default: "/secure_socket",
        unit: "",
        range: None,
        help: "prefix of the audit message queue name: / and 1 to 200 letters, digits, \
               '_', '-' or '.'; a random suffix is added",
    },
    ParameterDoc {
        key: "domain",
        default: "unix",
        unit: "",
        range: None,
        help: "socket domain; only unix (AF_UNIX) is supported",
    },
    ParameterDoc {
        key: "protocol",
        default: "stream",
        unit: "",
        range: None,
        help: "socket type; only stream (SOCK_STREAM, as varlink requires)",
    },
    ParameterDoc {
        key: "max_connections",
        default: "64",
        unit: "",
        range: Some((1, 4096)),
        help: "connections served at once and the listen backlog",
    },
    ParameterDoc {
        key: "max_connections_per_uid",
        default: "half of max_connections",
        unit: "",
        range: Some((1, 4096)),
        help: "connections one peer uid may hold at once, at most max_connections; more \
               get a Busy error",
    },
    ParameterDoc {
        key: "socket_permissions",
        default: "0660",
        unit: "",
        range: None,
        help: "octal mode of the socket file, from 0600 to 0777; the owner bits must be rw",
    },
    ParameterDoc {
        key: "authorised_peer_username",
        default: "(any)",
        unit: "",
        range: None,
        help: "only this user (name or uid, 1 to 32 characters) may connect; the socket's \
               group becomes the user's primary group",
    },
    ParameterDoc {
        key: "authorised_peer_uid",
        default: "(any)",
        unit: "",
        range: None,
        help: "only this uid (0 to 4294967294, not 65535) may connect; without \
               authorised_peer_gid the socket's group becomes the uid's primary group",
    },
    ParameterDoc {
        key: "authorised_peer_gid",
        default: "(any)",
        unit: "",
        range: None,
        help: "only peers with this primary gid (0 to 4294967294, not 65535) may connect; \
               also the socket's group",
    },
    ParameterDoc {
        key: "authorised_peer_pid",
        default: "(any)",
        unit: "",
        range: Some((1, 4_194_304)),
        help: "only this process id may connect",
    },
    ParameterDoc {
        key: "authorised_peer_process_name",
        default: "(any)",
        unit: "",
        range: None,
        help: "only peers whose executable has this file name (1 to 255 bytes, no '/') \
               may connect",
    },
    ParameterDoc {
        key: "pool_size",
        default: "4",
        unit: "",
        range: Some((1, 256)),
        help: "parser children started ahead of connections",
    },
    ParameterDoc {
        key: "request_timeout_ms",
        default: "10000",
        unit: "milliseconds",
        range: Some((10, 3_600_000)),
        help: "time a client has to send one request or read one reply",
    },
    ParameterDoc {
        key: "max_frame_bytes",
        default: "65536",
        unit: "bytes",
        range: Some((1024, 1_048_576)),
        help: "largest request frame",
    },
    ParameterDoc {
        key: "max_requests_per_connection",
        default: "100",
        unit: "",
        range: Some((1, 1_000_000)),
        help: "requests served on one connection before it is closed",
    },
    ParameterDoc {
        key: "max_connections_per_child",
        default: "32",
        unit: "",
        range: Some((0, 1_000_000)),
        help: "connections one parser child serves in total, all of the same peer \
               identity (uid, gid, groups, executable); 0 or 1 turns reuse off",
    },
    ParameterDoc {
        key: "max_cached_children",
        default: "16",
        unit: "",
        range: Some((0, 1024)),
        help: "parser children kept waiting for the next connection of the identity they \
               served",
    },
    ParameterDoc {
        key: "cached_child_idle_ms",
        default: "10000",
        unit: "milliseconds",
        range: Some((10, 3_600_000)),
        help: "time a cached parser child waits for a connection before it is killed",
    },
    ParameterDoc {
        key: "shutdown_grace_ms",
        default: "5000",
        unit: "milliseconds",
        range: Some((0, 600_000)),
        help: "time running scripts get after SIGTERM before they are killed",
    },
    ParameterDoc {
        key: "sandbox",
        default: "strict",
        unit: "",
        range: None,
        help: "strict: refuse to start without landlock and seccomp; best-effort: warn",
    },
];

/// Returns one `--help` line per parameter: its key, what it sets, and in brackets the
/// accepted range and unit where the parser enforces one, and the default.
pub fn parameters_help() -> String {
    let mut text = String::new();
    for parameter in PARAMETERS {
        let mut details = Vec::new();
        match (parameter.range, parameter.unit) {
            (Some((min, max)), "") => details.push(format!("{min} to {max}")),
            (Some((min, max)), unit) => details.push(format!("{min} to {max} {unit}")),
            (None, "") => {}
            (None, unit) => details.push(unit.to_string()),
        }
        details.push(format!("default: {}", parameter.default));
        text.push_str(&format!(
            "  {:<30} {} ({})\n",
            parameter.key,
            parameter.help,
            details.join("; ")
        ));
    }
    text
}

impl Config {
    /// Parses `key=value` arguments on top of the defaults.
    pub fn from_args<I, S>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut config = Config::default();
        let mut seen: Vec<String> = Vec::new();
        for argument in args {
            let argument = argument.as_ref();
            let Some((key, value)) = argument.split_once('=') else {
                return Err(ConfigError::NotKeyValue {
                    argument: argument.to_string(),
                });
            };
            if seen.iter().any(|k| k == key) {
                return Err(ConfigError::Duplicate {
                    key: key.to_string(),
                });
            }
            seen.push(key.to_string());
            config.set(key, value)?;
        }
        let has = |key: &str| seen.iter().any(|k| k == key);
        if !has("log_destination") && config.log_file.is_some() {
            config.log_destination = LogDestination::File;
        }
        config.check_log_combinations(has("log_format"), has("syslog_socket"))?;
        config.check_combinations()?;
        Ok(config)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "socket_path" => self.socket_path = parse_file_path("socket_path", value)?,
            "policy_dir" => self.policy_dir = parse_absolute_path("policy_dir", value)?,
            "log_file" => {
                self.log_file = if value.is_empty() {
                    None
                } else {
                    Some(parse_file_path("log_file", value)?)
                }
            }
            "log_destination" => {
                self.log_destination = match value {
                    "stderr" => LogDestination::Stderr,
                    "file" => LogDestination::File,
                    "journald" => LogDestination::Journald,
                    "syslog" => LogDestination::Syslog,
                    _ => {
                        return Err(invalid(
                            "log_destination",
                            value,
                            "stderr, file, journald or syslog",
                        ));
                    }
                }
            }
            "syslog_socket" => self.syslog_socket = parse_file_path("syslog_socket", value)?,
            "mq_name" => self.mq_name = parse_mq_name(value)?,
            "domain" => parse_domain(value)?,
            "protocol" => parse_protocol(value)?,
            "max_connections" => {
                self.max_connections = parse_in_range(
                    "max_connections",
                    value,
                    1,
                    4096,
                    "an integer from 1 to 4096",
                )?
            }
            "max_connections_per_uid" => {
                self.max_connections_per_uid = Some(parse_in_range(
                    "max_connections_per_uid",
                    value,
                    1,
                    4096,
                    "an integer from 1 to 4096",
                )?)
            }
            "socket_permissions" => self.socket_permissions = parse_mode(value)?,
            "authorised_peer_username" => {
                self.authorised_peer_username = Some(parse_name("authorised_peer_username", value)?)
            }
            "authorised_peer_uid" => {
                self.authorised_peer_uid = Some(parse_id("authorised_peer_uid", value)?)
            }
            "authorised_peer_gid" => {
                self.authorised_peer_gid = Some(parse_id("authorised_peer_gid", value)?)
            }
            "authorised_peer_pid" => {
                let pid = parse_in_range(
                    "authorised_peer_pid",
                    value,
                    1,
                    4_194_304,
                    "a process id from 1 to 4194304",
                )?;
                self.authorised_peer_pid = Some(pid as i32);
            }
            "authorised_peer_process_name" => {
                self.authorised_peer_process_name = Some(parse_process_name(value)?)
            }
            "verbosity" => self.verbosity = parse_verbosity(value)?,
            "log_format" => {
                self.log_format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(invalid("log_format", value, "text or json")),
                }
            }
            "unprivileged_user" => self.unprivileged_user = parse_name("unprivileged_user", value)?,
            "pool_size" => {
                self.pool_size =
                    parse_in_range("pool_size", value, 1, 256, "an integer from 1 to 256")?
            }
            "request_timeout_ms" => {
                let ms = parse_in_range(
                    "request_timeout_ms",
                    value,
                    10,
                    3_600_000,
                    "milliseconds from 10 to 3600000",
                )?;
                self.request_timeout = Duration::from_millis(ms as u64);
            }
            "max_frame_bytes" => {
                self.max_frame_bytes = parse_in_range(
                    "max_frame_bytes",
                    value,
                    1024,
                    1_048_576,
                    "bytes from 1024 to 1048576",
                )?
            }
            "max_requests_per_connection" => {
                self.max_requests_per_connection = parse_in_range(
                    "max_requests_per_connection",
                    value,
                    1,
                    1_000_000,
                    "an integer from 1 to 1000000",
                )? as u32
            }
            "max_connections_per_child" => {
                self.max_connections_per_child = parse_in_range(
                    "max_connections_per_child",
                    value,
                    0,
                    1_000_000,
                    "an integer from 0 to 1000000 (0 or 1 turns reuse off)",
                )? as u32
            }
            "max_cached_children" => {
                self.max_cached_children = parse_in_range(
                    "max_cached_children",
                    value,
                    0,
                    1024,
                    "an integer from 0 to 1024",
                )?
            }
            "cached_child_idle_ms" => {
                let ms = parse_in_range(
                    "cached_child_idle_ms",
                    value,
                    10,
                    3_600_000,
                    "milliseconds from 10 to 3600000",
                )?;
                self.cached_child_idle = Duration::from_millis(ms as u64);
            }
            "shutdown_grace_ms" => {
                let ms = parse_in_range(
                    "shutdown_grace_ms",
                    value,
                    0,
                    600_000,
                    "milliseconds from 0 to 600000",
                )?;
                self.shutdown_grace = Duration::from_millis(ms as u64);
            }
            "sandbox" => {
                self.sandbox = value.parse().map_err(|_| ConfigError::InvalidValue {
                    key: "sandbox",
                    value: value.to_string(),
                    expected: "strict or best-effort",
                })?
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Returns every parameter as `key=value` in the spelling `--help` documents, for the
    /// start-up banner. Unset optional values are left out; the values hold no secret.
    pub fn effective_parameters(&self) -> String {
        let entries: Vec<(&str, Option<String>)> = vec![
            ("socket_path", Some(self.socket_path.display().to_string())),
            ("policy_dir", Some(self.policy_dir.display().to_string())),
            ("unprivileged_user", Some(self.unprivileged_user.clone())),
            (
                "log_destination",
                Some(
                    match self.log_destination {
                        LogDestination::Stderr => "stderr",
                        LogDestination::File => "file",
                        LogDestination::Journald => "journald",
                        LogDestination::Syslog => "syslog",
                    }
                    .to_string(),
                ),
            ),
            (
                "log_file",
                self.log_file
                    .as_ref()
                    .map(|path| path.display().to_string()),
            ),
            (
                "syslog_socket",
                (self.log_destination == LogDestination::Syslog)
                    .then(|| self.syslog_socket.display().to_string()),
            ),
            ("verbosity", Some(self.verbosity.to_string().to_lowercase())),
            (
                "log_format",
                Some(
                    match self.log_format {
                        LogFormat::Text => "text",
                        LogFormat::Json => "json",
                    }
                    .to_string(),
                ),
            ),
            ("mq_name", Some(self.mq_name.clone())),
            // The parser accepts only these, so the values are fixed.
            ("domain", Some("unix".to_string())),
            ("protocol", Some("stream".to_string())),
            ("max_connections", Some(self.max_connections.to_string())),
            (
                "max_connections_per_uid",
                Some(self.connections_per_uid().to_string()),
            ),
            (
                "socket_permissions",
                Some(format!("{:04o}", self.socket_permissions)),
            ),
            (
                "authorised_peer_username",
                self.authorised_peer_username.clone(),
            ),
            (
                "authorised_peer_uid",
                self.authorised_peer_uid.map(|uid| uid.to_string()),
            ),
            (
                "authorised_peer_gid",
                self.authorised_peer_gid.map(|gid| gid.to_string()),
            ),
            (
                "authorised_peer_pid",
                self.authorised_peer_pid.map(|pid| pid.to_string()),
            ),
            (
                "authorised_peer_process_name",
                self.authorised_peer_process_name.clone(),
            ),
            ("pool_size", Some(self.pool_size.to_string())),
            (
                "request_timeout_ms",
                Some(self.request_timeout.as_millis().to_string()),
            ),
            ("max_frame_bytes", Some(self.max_frame_bytes.to_string())),
            (
                "max_requests_per_connection",
                Some(self.max_requests_per_connection.to_string()),
            ),
            (
                "max_connections_per_child",
                Some(self.max_connections_per_child.to_string()),
            ),
            (
                "max_cached_children",
                Some(self.max_cached_children.to_string()),
            ),
            (
                "cached_child_idle_ms",
                Some(self.cached_child_idle.as_millis().to_string()),
            ),
            (
                "shutdown_grace_ms",
                Some(self.shutdown_grace.as_millis().to_string()),
            ),
            ("sandbox", Some(self.sandbox.to_string())),
        ];
        entries
            .into_iter()
            .filter_map(|(key, value)| {
                value.map(|value| format!("{key}={}", crate::logging::quoted(&value)))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Returns whether a parser child may serve more than one connection.
    pub fn reuses_children(&self) -> bool {
        self.max_connections_per_child > 1 && self.max_cached_children > 0
    }

    /// Connections one peer uid may hold at once.
    pub fn connections_per_uid(&self) -> usize {
        self.max_connections_per_uid
            .unwrap_or((self.max_connections / 2).max(1))
            .min(self.max_connections)
    }

    /// Rejects log parameters that the chosen destination would ignore, so that a mistake
    /// is reported instead of logging somewhere else than the administrator expects.
    fn check_log_combinations(
        &self,
        format_given: bool,
        syslog_socket_given: bool,
    ) -> Result<(), ConfigError> {
        let conflict = |reason: &str| {
            Err(ConfigError::Conflict {
                reason: reason.to_string(),
            })
        };
        match self.log_destination {
            LogDestination::File if self.log_file.is_none() => {
                return conflict("log_destination=file requires log_file");
            }
            LogDestination::Stderr | LogDestination::Journald | LogDestination::Syslog
                if self.log_file.is_some() =>
            {
                return conflict(
                    "log_file is only used with log_destination=file, so remove one of them",
                );
            }
            LogDestination::Journald if format_given && self.log_format == LogFormat::Json => {
                return conflict(
                    "log_format=json has no effect with log_destination=journald, which stores \
                     every field as a journal field; remove log_format",
                );
            }
            _ => {}
        }
        if syslog_socket_given && self.log_destination != LogDestination::Syslog {
            return conflict("syslog_socket is only used with log_destination=syslog");
        }
        Ok(())
    }

    fn check_combinations(&self) -> Result<(), ConfigError> {
        if self.log_file.as_deref() == Some(self.socket_path.as_path()) {
            return Err(ConfigError::Conflict {
                reason: "log_file and socket_path are the same path".to_string(),
            });
        }
        if self.log_destination == LogDestination::Syslog && self.syslog_socket == self.socket_path
        {
            return Err(ConfigError::Conflict {
                reason: "syslog_socket and socket_path are the same path".to_string(),
            });
        }
        if self
            .socket_path
            .parent()
            .is_none_or(|p| p == std::path::Path::new("/"))
        {
            return Err(ConfigError::Conflict {
                reason: format!(
                    "socket_path {:?} must be inside a directory other than /",
                    self.socket_path
                ),
            });
        }
        if let Some(per_uid) = self.max_connections_per_uid
            && per_uid > self.max_connections
        {
            return Err(ConfigError::Conflict {
                reason: format!(
                    "max_connections_per_uid ({per_uid}) is larger than max_connections ({}), \
                     so no uid could ever reach it; lower max_connections_per_uid or raise \
                     max_connections",
                    self.max_connections
                ),
            });
        }
        if self.unprivileged_user == "root" || self.unprivileged_user == "0" {
            return Err(ConfigError::Conflict {
                reason: "unprivileged_user must not be root".to_string(),
            });
        }
        Ok(())
    }
}

fn invalid(key: &'static str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        key,
        value: value.to_string(),
        expected,
    }
}

fn parse_absolute_path(key: &'static str, value: &str) -> Result<PathBuf, ConfigError> {
    let expected = "an absolute path without \"..\" components or control characters";
    let path = std::path::Path::new(value);
    let has_parent_component = path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if !path.is_absolute() || has_parent_component || value.chars().any(char::is_control) {
        return Err(invalid(key, value, expected));
    }
    Ok(path.to_path_buf())
}

/// Like [`parse_absolute_path`], for a path that names a file: no trailing slash.
fn parse_file_path(key: &'static str, value: &str) -> Result<PathBuf, ConfigError> {
    if value.ends_with('/') {
        return Err(invalid(
            key,
            value,
            "an absolute path to a file, without a trailing slash",
        ));
    }
    parse_absolute_path(key, value)
}

fn parse_mq_name(value: &str) -> Result<String, ConfigError> {
    let expected = "a name starting with / followed by 1 to 200 letters, digits, '_', '-' or '.'";
    let Some(rest) = value.strip_prefix('/') else {
        return Err(invalid("mq_name", value, expected));
    };
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if rest.is_empty() || rest.len() > 200 || !rest.chars().all(valid_char) {
        return Err(invalid("mq_name", value, expected));
    }
    Ok(value.to_string())
}

fn parse_domain(value: &str) -> Result<(), ConfigError> {
    match value {
        "unix" | "AF_UNIX" | "local" | "AF_LOCAL" => Ok(()),
        "inet" | "AF_INET" | "inet6" | "AF_INET6" => Err(ConfigError::Unsupported {
            key: "domain",
            value: value.to_string(),
            reason: "an internet socket carries no kernel-verified peer identity \
                     (SO_PEERCRED), so the policy could not know who is asking; use domain=unix",
        }),
        _ => Err(invalid("domain", value, "unix")),
    }
}

fn parse_protocol(value: &str) -> Result<(), ConfigError> {
    match value {
        "stream" | "SOCK_STREAM" | "0" => Ok(()),
        "seqpacket" | "SOCK_SEQPACKET" | "dgram" | "SOCK_DGRAM" => Err(ConfigError::Unsupported {
            key: "protocol",
            value: value.to_string(),
            reason: "the varlink protocol runs over a byte stream; use protocol=stream",
        }),
        _ => Err(invalid("protocol", value, "stream")),
    }
}

fn parse_in_range(
    key: &'static str,
    value: &str,
    min: usize,
    max: usize,
    expected: &'static str,
) -> Result<usize, ConfigError> {
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(key, value, expected)),
    }
}

fn parse_mode(value: &str) -> Result<u32, ConfigError> {
    let expected =
        "an octal mode from 0600 to 0777 that the owner can read and write, such as 0660";
    let digits = value.strip_prefix("0o").unwrap_or(value);
    if digits.is_empty() || digits.len() > 4 || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(invalid("socket_permissions", value, expected));
    }
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| invalid("socket_permissions", value, expected))?;
    if mode > 0o777 || mode & 0o600 != 0o600 {
        return Err(invalid("socket_permissions", value, expected));
    }
    Ok(mode)
}

fn parse_id(key: &'static str, value: &str) -> Result<u32, ConfigError> {
    let expected = "a numeric id from 0 to 4294967294, other than 65535";
    match value.parse::<u32>() {
        Ok(id) if id != u32::MAX && id != 65535 => Ok(id),
        _ => Err(invalid(key, value, expected)),
    }
}

fn parse_name(key: &'static str, value: &str) -> Result<String, ConfigError> {
    let expected = "a user name of 1 to 32 letters, digits, '_', '-' or '.', or a numeric uid";
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if value.is_empty()
        || value.len() > 32
        || !value.chars().all(valid_char)
        || value.starts_with('-')
    {
        return Err(invalid(key, value, expected));
    }
    Ok(value.to_string())
}

fn parse_process_name(value: &str) -> Result<String, ConfigError> {
    let expected = "an executable file name of 1 to 255 bytes without '/' or control characters";
    if value.is_empty()
        || value.len() > 255
        || value.contains('/')
        || value.chars().any(char::is_control)
    {
        return Err(invalid("authorised_peer_process_name", value, expected));
    }
    Ok(value.to_string())
}

fn parse_verbosity(value: &str) -> Result<tracing::Level, ConfigError> {
    let level = match value {
        "error" | "0" => tracing::Level::ERROR,
        "warn" | "1" => tracing::Level::WARN,
        "info" | "2" => tracing::Level::INFO,
        "debug" | "3" => tracing::Level::DEBUG,
        "trace" | "4" => tracing::Level::TRACE,
        _ => {
            return Err(invalid(
                "verbosity",
                value,
                "error, warn, info, debug, trace or 0 to 4",
            ));
        }
    };
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(args.iter().copied())
    }

    #[test]
    fn effective_parameters_use_documented_spelling() {
        let config = parse(&["sandbox=best-effort", "log_format=json"]).unwrap();
        let text = config.effective_parameters();
        let entries: Vec<&str> = text.split(' ').collect();
        assert!(entries.contains(&"sandbox=best-effort"), "{text}");
        assert!(entries.contains(&"log_format=json"), "{text}");
        assert!(entries.contains(&"log_destination=stderr"), "{text}");
        assert!(entries.contains(&"max_connections_per_uid=32"), "{text}");
        assert!(entries.contains(&"socket_permissions=0660"), "{text}");
    }

    #[test]
    fn effective_parameters_quote_value_with_space() {
        let text = parse(&["policy_dir=/etc/secure socket x=y"])
            .unwrap()
            .effective_parameters();
        assert!(
            text.contains(r#"policy_dir="/etc/secure socket x=y""#),
            "{text}"
        );
    }

    #[test]
    fn effective_parameters_include_domain_and_protocol() {
        let text = parse(&[]).unwrap().effective_parameters();
        let entries: Vec<&str> = text.split(' ').collect();
        assert!(entries.contains(&"domain=unix"), "{text}");
        assert!(entries.contains(&"protocol=stream"), "{text}");
    }

    #[test]
    fn per_uid_limit_above_max_connections_rejected() {
        let error = parse(&["max_connections_per_uid=100", "max_connections=10"]).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, ConfigError::Conflict { .. }), "{text}");
        assert!(text.contains("max_connections_per_uid (100)"), "{text}");
        assert!(text.contains("max_connections (10)"), "{text}");
    }

    #[test]
    fn per_uid_limit_above_default_max_rejected() {
        let error = parse(&["max_connections_per_uid=65"]).unwrap_err();
        assert!(
            error.to_string().contains("max_connections (64)"),
            "{error}"
        );
    }

    #[test]
    fn per_uid_limit_equal_to_max_accepted() {
        let config = parse(&["max_connections_per_uid=10", "max_connections=10"]).unwrap();
        assert_eq!(config.connections_per_uid(), 10);
    }

    #[test]
    fn effective_parameters_name_every_set_parameter() {
        let config = parse(&["authorised_peer_uid=33", "shutdown_grace_ms=1500"]).unwrap();
        let text = config.effective_parameters();
        let keys: Vec<&str> = text
            .split(' ')
            .filter_map(|entry| entry.split_once('=').map(|(key, _)| key))
            .collect();
        assert!(keys.contains(&"authorised_peer_uid"), "{text}");
        assert!(keys.contains(&"shutdown_grace_ms"), "{text}");
        assert!(!keys.contains(&"authorised_peer_gid"), "{text}");
    }

    #[test]
    fn defaults_without_arguments() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.socket_permissions, 0o660);
        assert_eq!(config.unprivileged_user, "nobody");
    }

    #[test]
    fn unknown_key_is_named() {
        let error = parse(&["bogus=1"]).unwrap_err();
        assert!(error.to_string().contains("\"bogus\""));
    }

    #[test]
    fn inet_domain_rejected_with_reason() {
        let error = parse(&["domain=inet"]).unwrap_err();
        assert!(error.to_string().contains("SO_PEERCRED"));
    }

    #[test]
    fn malformed_values_name_key_and_value() {
        let cases = [
            ("max_connections=abc", "max_connections", "abc"),
            ("max_connections=0", "max_connections", "0"),
            ("socket_permissions=0999", "socket_permissions", "0999"),
            ("socket_permissions=0066", "socket_permissions", "0066"),
            ("socket_path=relative.sock", "socket_path", "relative.sock"),
            ("socket_path=/run/dir/", "socket_path", "/run/dir/"),
            ("mq_name=no_slash", "mq_name", "no_slash"),
            ("mq_name=/a/b", "mq_name", "/a/b"),
            ("authorised_peer_uid=-1", "authorised_peer_uid", "-1"),
            (
                "authorised_peer_uid=4294967295",
                "authorised_peer_uid",
                "4294967295",
            ),
            ("verbosity=loud", "verbosity", "loud"),
            ("log_format=xml", "log_format", "xml"),
            ("log_destination=network", "log_destination", "network"),
            ("syslog_socket=dev/log", "syslog_socket", "dev/log"),
            ("sandbox=off", "sandbox", "off"),
            ("request_timeout_ms=5", "request_timeout_ms", "5"),
            (
                "max_connections_per_child=-1",
                "max_connections_per_child",
                "-1",
            ),
            ("max_cached_children=2000", "max_cached_children", "2000"),
            ("cached_child_idle_ms=0", "cached_child_idle_ms", "0"),
        ];
        for (argument, key, value) in cases {
            let message = parse(&[argument]).unwrap_err().to_string();
            assert!(message.contains(key), "{argument}: {message}");
            assert!(message.contains(value), "{argument}: {message}");
            assert!(message.contains("expected"), "{argument}: {message}");
        }
    }

    #[test]
    fn duplicate_key_rejected() {
        let error = parse(&["pool_size=2", "pool_size=3"]).unwrap_err();
        assert_eq!(
            error,
            ConfigError::Duplicate {
                key: "pool_size".to_string()
            }
        );
    }

    #[test]
    fn root_as_unprivileged_user_rejected() {
        assert!(parse(&["unprivileged_user=root"]).is_err());
    }

    #[test]
    fn reuse_on_by_default() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.max_connections_per_child, 32);
        assert!(config.reuses_children());
    }

    #[test]
    fn reuse_off_at_one_or_zero() {
        for limit in ["0", "1"] {
            let argument = format!("max_connections_per_child={limit}");
            let config = parse(&[argument.as_str()]).unwrap();
            assert!(!config.reuses_children(), "{argument}");
        }
        let config = parse(&["max_cached_children=0"]).unwrap();
        assert!(!config.reuses_children());
    }

    #[test]
    fn octal_mode_parsed() {
        let config = parse(&["socket_permissions=0666"]).unwrap();
        assert_eq!(config.socket_permissions, 0o666);
    }

    #[test]
    fn every_parameter_is_documented() {
        let arguments = [
            "socket_path=/run/x/s",
            "policy_dir=/etc/p",
            "unprivileged_user=nobody",
            "log_destination=syslog",
            "log_file=/var/log/x",
            "syslog_socket=/run/x/log",
            "verbosity=debug",
            "log_format=json",
            "mq_name=/q",
            "domain=unix",
            "protocol=stream",
            "max_connections=5",
            "max_connections_per_uid=2",
            "socket_permissions=0600",
            "authorised_peer_username=www-data",
            "authorised_peer_uid=33",
            "authorised_peer_gid=33",
            "authorised_peer_pid=1",
            "authorised_peer_process_name=php",
            "pool_size=2",
            "request_timeout_ms=100",
            "max_frame_bytes=4096",
            "max_requests_per_connection=5",
            "shutdown_grace_ms=10",
            "max_connections_per_child=4",
            "max_cached_children=2",
            "cached_child_idle_ms=500",
            "sandbox=best-effort",
        ];
        // Some of these exclude each other, so each is set on its own.
        for argument in arguments {
            let (key, value) = argument.split_once('=').unwrap();
            assert!(
                Config::default().set(key, value).is_ok(),
                "{argument} rejected"
            );
            assert!(
                PARAMETERS.iter().any(|parameter| parameter.key == key),
                "{key} missing from PARAMETERS"
            );
        }
        assert_eq!(PARAMETERS.len(), arguments.len());
    }

    #[test]
    fn documented_ranges_match_parser() {
        for parameter in PARAMETERS {
            let Some((min, max)) = parameter.range else {
                continue;
            };
            let key = parameter.key;
            for accepted in [min, max] {
                let value = accepted.to_string();
                let result = Config::default().set(key, &value);
                assert!(result.is_ok(), "{key}={value} rejected: {result:?}");
            }
            let mut rejected = vec![max + 1];
            if min > 0 {
                rejected.push(min - 1);
            }
            for value in rejected {
                let value = value.to_string();
                let result = Config::default().set(key, &value);
                assert!(result.is_err(), "{key}={value} accepted");
            }
        }
    }

    #[test]
    fn help_gives_range_and_unit() {
        let help = parameters_help();
        for parameter in PARAMETERS {
            let line = help
                .lines()
                .find(|line| line.split_whitespace().next() == Some(parameter.key))
                .unwrap_or_else(|| panic!("{} missing from help:\n{help}", parameter.key));
            assert!(line.contains("default: "), "{line}");
            if let Some((min, max)) = parameter.range {
                assert!(line.contains(&format!("{min} to {max}")), "{line}");
            }
            assert!(line.contains(parameter.unit), "{line}");
        }
    }

    #[test]
    fn log_destination_defaults_to_stderr() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.log_destination, LogDestination::Stderr);
    }

    #[test]
    fn log_file_alone_selects_file() {
        let config = parse(&["log_file=/var/log/broker.log"]).unwrap();
        assert_eq!(config.log_destination, LogDestination::File);
    }

    #[test]
    fn syslog_socket_defaults_to_dev_log() {
        let config = parse(&["log_destination=syslog"]).unwrap();
        assert_eq!(config.log_destination, LogDestination::Syslog);
        assert_eq!(config.syslog_socket, PathBuf::from("/dev/log"));
    }

    #[test]
    fn journald_accepts_text_format() {
        let config = parse(&["log_destination=journald", "log_format=text"]).unwrap();
        assert_eq!(config.log_destination, LogDestination::Journald);
    }

    #[test]
    fn log_parameters_that_would_be_ignored_rejected() {
        let cases: [&[&str]; 6] = [
            &["log_destination=file"],
            &["log_destination=journald", "log_file=/var/log/x"],
            &["log_destination=stderr", "log_file=/var/log/x"],
            &["log_destination=journald", "log_format=json"],
            &["syslog_socket=/run/x/log"],
            &[
                "log_destination=syslog",
                "syslog_socket=/run/x/s",
                "socket_path=/run/x/s",
            ],
        ];
        for arguments in cases {
            let error = parse(arguments).unwrap_err();
            assert!(
                matches!(error, ConfigError::Conflict { .. }),
                "{arguments:?}: {error}"
            );
        }
    }

    #[test]
    fn unknown_log_destination_rejected() {
        let message = parse(&["log_destination=network"]).unwrap_err().to_string();
        assert!(
            message.contains("stderr, file, journald or syslog"),
            "{message}"
        );
    }
}
