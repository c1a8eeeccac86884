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
mod text_fields;

use std::fs::{File, FileType, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use crate::config::{Config, LogDestination, LogFormat};
use crate::trust;

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
         others (owner uid {uid}, mode {mode:04o})"
    )]
    UnsafeFile { path: String, uid: u32, mode: u32 },
    #[error(
        "log file {path} rejected: every directory above it must be owned by root and not \
         writable by others, but {reason}"
    )]
    UnsafeDirectory { path: String, reason: String },
    #[error(
        "log file {path} rejected: it is a symbolic link, which is not followed; name the \
         file itself"
    )]
    SymbolicLink { path: String },
    #[error("log file {path} rejected: it is a {kind}, not a regular file")]
    NotRegularFile { path: String, kind: &'static str },
    #[error("failed to inspect log file {path}")]
    Inspect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to clear O_NONBLOCK on log file {path}")]
    ClearNonBlocking {
        path: String,
        #[source]
        source: nix::Error,
    },
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
        source: std::io::Error,
    },
    #[error(
        "syslog socket {path} rejected: it is a stream socket, but the broker sends one \
         datagram per event; set syslog_socket to the daemon's datagram socket, such as \
         /dev/log"
    )]
    SyslogNotDatagram { path: String },
    #[error("syslog socket {path} rejected: it is a {kind}, not a socket")]
    SyslogNotSocket { path: String, kind: &'static str },
    #[error("failed to install the log subscriber: {0}")]
    Install(String),
}

/// Returns `value` as it is, or quoted with escapes when a key=value parser could split
/// it, by the rule of the text log format.
pub(crate) fn quoted(value: &str) -> String {
    if text_fields::needs_quotes(value) {
        format!("{value:?}")
    } else {
        value.to_string()
    }
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
            STDERR_IN_USE.store(true, Ordering::Relaxed);
            install_lines(level, format, StderrLines, ansi)
        }
        LogDestination::File => {
            let Some(path) = config.log_file.as_deref() else {
                return Err(LoggingError::MissingLogFile);
            };
            let log_file = LogFile {
                path: path.to_path_buf(),
                file: Mutex::new(open_log_file(path)?),
                failing: AtomicBool::new(false),
            };
            let log_file = LOG_FILE.get_or_init(|| log_file);
            install_lines(level, format, log_file, false)
        }
        LogDestination::Syslog => {
            let writer = syslog_writer::SyslogMakeWriter::connect(&config.syslog_socket)
                .map_err(|source| describe_syslog_error(&config.syslog_socket, source))?;
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
        LogFormat::Text => builder
            .with_ansi(ansi)
            .fmt_fields(text_fields::QuotedFields)
            .try_init(),
    };
    result.map_err(|error| LoggingError::Install(error.to_string()))
}

/// Connects to the journal.
// NOTE: the first datagram the broker sends to the journal is empty. tracing-journald
// 0.3.2 sends it in `Layer::new`, its only constructor, to fail early when journald is
// unreachable, and journald discards it. The crate offers no way to skip it.
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

impl LoggingError {
    /// Returns whether the error comes from the parameters or from the files they name, so
    /// that a restart fails the same way until the administrator changes something.
    pub fn is_configuration(&self) -> bool {
        match self {
            LoggingError::UnsafeFile { .. }
            | LoggingError::UnsafeDirectory { .. }
            | LoggingError::SymbolicLink { .. }
            | LoggingError::NotRegularFile { .. }
            | LoggingError::MissingLogFile
            | LoggingError::SyslogNotDatagram { .. }
            | LoggingError::SyslogNotSocket { .. } => true,
            LoggingError::Open { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES | libc::EROFS)
            ),
            // A missing socket or one without a receiver (ENOENT, ECONNREFUSED) usually
            // means that the syslog daemon has not started yet, and a restart may
            // succeed. A path through a file or without permission stays wrong.
            LoggingError::ConnectSyslog { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOTDIR | libc::EACCES))
            }
            LoggingError::Inspect { .. }
            | LoggingError::ClearNonBlocking { .. }
            | LoggingError::ConnectJournald { .. }
            | LoggingError::Install(_) => false,
        }
    }
}

/// Turns a failed connect to the syslog socket into the rule it broke where there is one.
/// A stream socket fails with EPROTOTYPE. A file that is not a socket fails with
/// ECONNREFUSED, as does a socket without a receiver.
fn describe_syslog_error(path: &Path, source: std::io::Error) -> LoggingError {
    let path_text = path.display().to_string();
    match source.raw_os_error() {
        Some(libc::EPROTOTYPE) => LoggingError::SyslogNotDatagram { path: path_text },
        Some(libc::ECONNREFUSED) => match std::fs::metadata(path) {
            Ok(metadata) if !metadata.file_type().is_socket() => LoggingError::SyslogNotSocket {
                path: path_text,
                kind: describe_file_type(metadata.file_type()),
            },
            _ => LoggingError::ConnectSyslog {
                path: path_text,
                source,
            },
        },
        _ => LoggingError::ConnectSyslog {
            path: path_text,
            source,
        },
    }
}

/// The file that log_destination=file appends to, and the path it was opened from.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
    /// Set while writes to the file fail, so that stderr hears of a failure streak once.
    failing: AtomicBool,
}

/// Lines that may wait for the stderr worker before new ones are dropped.
const STDERR_QUEUE_LINES: usize = 4096;

/// Set when the log goes to stderr, the only destination that gets a worker thread.
static STDERR_IN_USE: AtomicBool = AtomicBool::new(false);

/// The stderr worker's writer, once [`start_stderr_worker`] has run.
static STDERR_QUEUE: OnceLock<tracing_appender::non_blocking::NonBlocking> = OnceLock::new();

/// The stderr worker's guard; dropping it writes the lines still queued.
static STDERR_WORKER: Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> = Mutex::new(None);

/// Moves stderr log lines to a worker thread, so that a stderr that no process reads (a
/// full pipe) drops lines instead of blocking the thread that logged. A session thread
/// blocked there would leave its client without a reply. Call it after the monitor has restricted its
/// capabilities, because a thread keeps the capabilities of the thread that started it.
/// Until then lines are written directly. Does nothing when the log goes elsewhere.
pub fn start_stderr_worker() {
    if !STDERR_IN_USE.load(Ordering::Relaxed) || STDERR_QUEUE.get().is_some() {
        return;
    }
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(STDERR_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(LossyStderr(std::io::stderr()));
    if STDERR_QUEUE.set(writer).is_ok() {
        *STDERR_WORKER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(guard);
    }
}

/// Writes the log lines still queued for stderr, waiting at most about a second. Call it
/// before the process exits.
pub fn flush() {
    let guard = STDERR_WORKER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    drop(guard);
}

/// Stderr lines: through the worker once it runs, directly before.
struct StderrLines;

impl<'writer> MakeWriter<'writer> for StderrLines {
    type Writer = StderrLine;

    fn make_writer(&'writer self) -> StderrLine {
        match STDERR_QUEUE.get() {
            Some(queue) => StderrLine::Queued(queue.clone()),
            None => StderrLine::Direct(LossyStderr(std::io::stderr())),
        }
    }
}

/// One event's writer for [`StderrLines`].
enum StderrLine {
    Queued(tracing_appender::non_blocking::NonBlocking),
    Direct(LossyStderr),
}

impl Write for StderrLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            StderrLine::Queued(queue) => queue.write(bytes),
            StderrLine::Direct(stderr) => stderr.write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            StderrLine::Queued(queue) => queue.flush(),
            StderrLine::Direct(stderr) => stderr.flush(),
        }
    }
}

/// Standard error as a log destination. A failed write loses the line and reports
/// success: tracing-subscriber reports a write error with `eprintln!`, which panics when
/// stderr itself is broken (a closed pipe), and the panic would end the thread that logged,
/// such as a session thread in the middle of a request.
struct LossyStderr(std::io::Stderr);

impl Write for LossyStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        Ok(self.0.write(bytes).unwrap_or(bytes.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// The log file, kept so that SIGHUP can reopen it. It is global because the subscriber
/// that writes to it is global too.
static LOG_FILE: OnceLock<LogFile> = OnceLock::new();

impl LogFile {
    fn lock(&self) -> MutexGuard<'_, File> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Writes one event to the log file while holding its lock, so that a reopen takes
/// effect between two events and never splits one.
///
/// A failed write (a full disk, say) loses the line, reports success for the reason given
/// at [`LossyStderr`], and is reported on stderr once per streak of failures.
struct LogFileWriter<'file> {
    file: MutexGuard<'file, File>,
    log_file: &'file LogFile,
}

impl Write for LogFileWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.file.write(bytes) {
            Ok(written) => {
                if self.log_file.failing.swap(false, Ordering::Relaxed) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "secure_socket: log file {} accepts lines again",
                        self.log_file.path.display()
                    );
                }
                Ok(written)
            }
            Err(error) => {
                if !self.log_file.failing.swap(true, Ordering::Relaxed) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "secure_socket: failed to write to log file {}: {error}; lines are lost \
                         until a write succeeds",
                        self.log_file.path.display()
                    );
                }
                Ok(bytes.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.file.flush();
        Ok(())
    }
}

impl MakeWriter<'_> for &'static LogFile {
    type Writer = LogFileWriter<'static>;

    fn make_writer(&self) -> Self::Writer {
        LogFileWriter {
            file: self.lock(),
            log_file: self,
        }
    }
}

/// Reopens log_file by its path, with the checks of the first open, and swaps the new file
/// in between two events. Returns the path, or `Ok(None)` when the log does not go to a
/// file. On error the log keeps going to the file opened before.
///
/// logrotate's default rotation renames the file and creates a new one, so the broker has
/// to reopen the path to write to the new file.
pub fn reopen_log_file() -> Result<Option<&'static Path>, LoggingError> {
    let Some(log_file) = LOG_FILE.get() else {
        return Ok(None);
    };
    let file = open_log_file(&log_file.path)?;
    let previous = std::mem::replace(&mut *log_file.lock(), file);
    drop(previous);
    Ok(Some(&log_file.path))
}

/// Opens the log file for appending. The file must be a regular file owned by root and not
/// writable by group or others, and every directory above it must be owned by root and
/// not writable by others. Another user who could write the file or replace it could forge
/// or erase audit records. A directory's group may write it (see [`trust::Writers`]).
fn open_log_file(path: &Path) -> Result<File, LoggingError> {
    let path_text = || path.display().to_string();
    // The directories are checked before the open, which may create the file in them.
    let problems = trust::check_ancestors(path, trust::Writers::RootAndGroup);
    if !problems.is_empty() {
        return Err(LoggingError::UnsafeDirectory {
            path: path_text(),
            reason: problems.join("; "),
        });
    }
    // A file of another user is named as such before the open, which would otherwise fail
    // with a bare EACCES once the monitor has dropped CAP_DAC_OVERRIDE (at a reopen).
    if let Ok(metadata) = std::fs::symlink_metadata(path)
        && metadata.is_file()
        && (metadata.uid() != 0 || metadata.mode() & trust::WRITE_BY_GROUP_OR_OTHERS != 0)
    {
        return Err(LoggingError::UnsafeFile {
            path: path_text(),
            uid: metadata.uid(),
            mode: metadata.mode() & 0o7777,
        });
    }
    // O_NONBLOCK keeps the open of a FIFO from waiting for a reader. std adds O_CLOEXEC.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| describe_open_error(path, source))?;
    let metadata = file.metadata().map_err(|source| LoggingError::Inspect {
        path: path_text(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(LoggingError::NotRegularFile {
            path: path_text(),
            kind: describe_file_type(metadata.file_type()),
        });
    }
    if metadata.uid() != 0 || metadata.mode() & trust::WRITE_BY_GROUP_OR_OTHERS != 0 {
        return Err(LoggingError::UnsafeFile {
            path: path_text(),
            uid: metadata.uid(),
            mode: metadata.mode() & 0o7777,
        });
    }
    clear_non_blocking(&file).map_err(|source| LoggingError::ClearNonBlocking {
        path: path_text(),
        source,
    })?;
    Ok(file)
}

/// Turns a failed open into the rule it broke where there is one. A FIFO without a reader
/// and a unix socket both fail with ENXIO, and a directory with EISDIR.
fn describe_open_error(path: &Path, source: std::io::Error) -> LoggingError {
    let path_text = path.display().to_string();
    match source.raw_os_error() {
        Some(libc::ELOOP) => LoggingError::SymbolicLink { path: path_text },
        Some(libc::ENXIO | libc::EISDIR) => match std::fs::symlink_metadata(path) {
            Ok(metadata) => LoggingError::NotRegularFile {
                path: path_text,
                kind: describe_file_type(metadata.file_type()),
            },
            Err(_) => LoggingError::Open {
                path: path_text,
                source,
            },
        },
        _ => LoggingError::Open {
            path: path_text,
            source,
        },
    }
}

fn describe_file_type(file_type: FileType) -> &'static str {
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Clears O_NONBLOCK, so that a write to a full disk or a slow filesystem waits instead of
/// failing with EAGAIN.
fn clear_non_blocking(file: &File) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(file.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        file.as_fd(),
        FcntlArg::F_SETFL(flags.difference(OFlag::O_NONBLOCK)),
    )?;
    Ok(())
}

/// Returns whether log events of `destination` reach this process's stderr: always with
/// stderr, and with journald when stderr is a journal stream. systemd then sets
/// JOURNAL_STREAM to the stream's device and inode numbers (systemd.exec(5)).
pub fn events_reach_stderr(destination: LogDestination) -> bool {
    match destination {
        LogDestination::Stderr => true,
        LogDestination::Journald => stderr_is_journal_stream(),
        LogDestination::File | LogDestination::Syslog => false,
    }
}

fn stderr_is_journal_stream() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    names_stream(&value, stat.st_dev, stat.st_ino)
}

/// Returns whether a JOURNAL_STREAM value, `DEVICE:INODE` in decimal, names the file with
/// `device` and `inode`.
fn names_stream(journal_stream: &str, device: u64, inode: u64) -> bool {
    let Some((device_text, inode_text)) = journal_stream.split_once(':') else {
        return false;
    };
    device_text.parse::<u64>().ok() == Some(device) && inode_text.parse::<u64>().ok() == Some(inode)
}

/// Formats `error` followed by each error of its source chain, joined by ": ".
pub fn format_error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_matches_device_and_inode() {
        assert!(names_stream("64768:1234", 64768, 1234));
        assert!(!names_stream("64768:1235", 64768, 1234));
        assert!(!names_stream("64769:1234", 64768, 1234));
    }

    #[test]
    fn malformed_journal_stream_matches_nothing() {
        for value in ["", "64768", "64768:", ":1234", "a:b", "64768:1234:5"] {
            assert!(!names_stream(value, 64768, 1234), "{value:?}");
        }
    }

    #[test]
    fn error_chain_joins_every_cause() {
        let error = LoggingError::Open {
            path: "/var/log/broker.log".to_string(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        let text = format_error_chain(&error);
        assert!(
            text.starts_with("failed to open log file /var/log/broker.log: "),
            "{text}"
        );
        assert!(text.contains("Permission denied"), "{text}");
    }
}
