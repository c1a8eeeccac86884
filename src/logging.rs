//! Log output of the monitor: the `tracing` subscriber and its destination. Events go to
//! stderr, log_file or a syslog socket as one text or JSON line each. They go to the
//! systemd journal as one entry each, with every field as a journal field.
//!
//! Client-supplied strings reach the log only as `Debug`-escaped field values (see
//! `audit.rs` and `monitor/session.rs`), so they carry no line break into a line. The
//! journal protocol adds a second guard: tracing-journald 0.3 writes every field value
//! with a length prefix, so no value can start another field or entry.
#![forbid(unsafe_code)]

pub(crate) mod json_fields;
mod syslog_writer;

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use crate::config::{Config, LogDestination, LogFormat};

/// Native socket of systemd-journald. tracing-journald 0.3 sends to this fixed path.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// SYSLOG_IDENTIFIER of journal entries and the tag of syslog lines.
pub const IDENTIFIER: &str = "secure_socket";

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("failed to open log file {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing log file {path}: it must be owned by root and not writable by group or \
         others (owner uid {uid}, mode {mode:o})"
    )]
    UnsafeFile { path: String, uid: u32, mode: u32 },
    #[error("log_destination=file requires log_file")]
    MissingLogFile,
    #[error(
        "failed to connect to the journal socket {path}; start systemd-journald or choose \
         another log_destination"
    )]
    ConnectJournald {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "failed to connect to the syslog socket {path}; start the syslog daemon or set \
         syslog_socket"
    )]
    ConnectSyslog {
        path: String,
        #[source]
        source: syslog::Error,
    },
    #[error("failed to install the log subscriber: {0}")]
    Install(String),
}

/// Opens the log destination of `config` and installs the global subscriber at the
/// configured verbosity. Call it while the process still runs as root with all its
/// capabilities: a destination that cannot be opened or reached stops the start.
pub fn init(config: &Config) -> Result<(), LoggingError> {
    let level = config.verbosity;
    let format = config.log_format;
    match config.log_destination {
        LogDestination::Stderr => {
            // Colour only for a person at a terminal. Under systemd stderr is the journal.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            install_lines(level, format, std::io::stderr, ansi)
        }
        LogDestination::File => {
            let Some(path) = config.log_file.as_deref() else {
                return Err(LoggingError::MissingLogFile);
            };
            let file = open_log_file(path)?;
            install_lines(level, format, Mutex::new(file), false)
        }
        LogDestination::Syslog => {
            let writer = syslog_writer::SyslogMakeWriter::connect(&config.syslog_socket).map_err(
                |source| LoggingError::ConnectSyslog {
                    path: config.syslog_socket.display().to_string(),
                    source,
                },
            )?;
            install_lines(level, format, writer, false)
        }
        LogDestination::Journald => {
            let layer = journald_layer()?.with_filter(LevelFilter::from_level(level));
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::set_global_default(subscriber)
                .map_err(|error| LoggingError::Install(error.to_string()))
        }
    }
}

/// Installs a formatter that writes each event as one text or JSON line to `writer`.
fn install_lines<W>(
    level: tracing::Level,
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Result<(), LoggingError>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_thread_ids(false)
        .with_writer(writer);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .map_event_format(json_fields::ObjectArguments::new)
            .try_init(),
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
    };
    result.map_err(|error| LoggingError::Install(error.to_string()))
}

/// Connects to the journal. tracing-journald checks the socket at once by sending an
/// empty datagram, which journald discards.
// NOTE: tracing-journald 0.3.2 drops an event that it fails to send, without a report,
// and its send blocks while journald's receive queue is full.
fn journald_layer() -> Result<tracing_journald::Layer, LoggingError> {
    let layer = tracing_journald::Layer::new().map_err(|source| LoggingError::ConnectJournald {
        path: JOURNALD_SOCKET,
        source,
    })?;
    // Each level gets the syslog severity of the same name, as syslog_writer uses. The
    // crate's default would file INFO as NOTICE.
    let priorities = PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    };
    // Without a prefix, a field such as `request_id` becomes REQUEST_ID, so that
    // `journalctl REQUEST_ID=...` finds a request. The broker's field names differ from
    // those journald defines (PRIORITY, MESSAGE_ID, CODE_LINE, SYSLOG_*...), which the
    // journald test checks for the audit record. tracing-journald strips a leading `_`,
    // so no field can pose as one that only journald may set.
    Ok(layer
        .with_field_prefix(None)
        .with_syslog_identifier(IDENTIFIER.to_string())
        .with_priority_mappings(priorities))
}

/// Opens the log file for appending, refusing one that another user could alter.
fn open_log_file(path: &Path) -> Result<std::fs::File, LoggingError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| LoggingError::Open {
            path: path.display().to_string(),
            source,
        })?;
    // Another user who can write the log could forge or erase audit records.
    let metadata = file.metadata().map_err(|source| LoggingError::Open {
        path: path.display().to_string(),
        source,
    })?;
    if metadata.uid() != 0 || metadata.mode() & 0o022 != 0 {
        return Err(LoggingError::UnsafeFile {
            path: path.display().to_string(),
            uid: metadata.uid(),
            mode: metadata.mode() & 0o7777,
        });
    }
    Ok(file)
}
