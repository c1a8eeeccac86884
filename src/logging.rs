//! Log output of the monitor: `tracing` events written as one line each to log_file or
//! stderr. Client-supplied strings reach the log only as `Debug`-formatted fields, which
//! escape control characters and newlines, so a client cannot forge a log line.
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use crate::config::LogFormat;

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
    #[error("failed to install the log subscriber: {0}")]
    Install(String),
}

/// Installs the global subscriber at `level`, appending to `log_file` (created with mode
/// 0640 when missing) or writing to stderr, as text lines or JSON lines.
pub fn init(
    log_file: Option<&Path>,
    level: tracing::Level,
    format: LogFormat,
) -> Result<(), LoggingError> {
    let writer = match log_file {
        Some(path) => Some(open_log_file(path)?),
        None => None,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_thread_ids(false);
    let result = match (format, writer) {
        (LogFormat::Json, Some(file)) => builder
            .json()
            .flatten_event(true)
            .with_writer(Mutex::new(file))
            .try_init(),
        (LogFormat::Json, None) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
        (LogFormat::Text, Some(file)) => builder
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init(),
        (LogFormat::Text, None) => {
            // Colour only for a person at a terminal; journald and files get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .try_init()
        }
    };
    result.map_err(|error| LoggingError::Install(error.to_string()))
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
