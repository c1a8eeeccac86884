//! Log lines to a syslog daemon through the `syslog` crate: one datagram per event, in the
//! RFC 3164 form `<PRI>TIMESTAMP secure_socket[PID]: LINE`, with the severity of the
//! event's level and the daemon facility.
//!
//! The lines come from the text or JSON formatter, which has already escaped every
//! client-supplied string, so a line contains no line break of a client's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use syslog::{Facility, Formatter3164, LogFormat, Logger, LoggerBackend, Severity};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use super::IDENTIFIER;

/// Length, in bytes, that a line is cut to when the socket rejects it as too long
/// (EMSGSIZE: a datagram larger than the socket's send buffer). The audit record puts the
/// arguments last, so a cut line still contains the request id, decision and outcome.
const CUT_LINE_BYTES: usize = 8 * 1024;

/// Hands the fmt layer one [`SyslogLine`] per event.
pub(super) struct SyslogMakeWriter {
    connection: Mutex<Connection>,
}

struct Connection {
    socket_path: PathBuf,
    logger: Logger<LoggerBackend, Formatter3164>,
    /// Lines lost since the last line that was sent.
    lost: u64,
}

impl SyslogMakeWriter {
    /// Connects to the datagram (or, failing that, stream) socket at `socket_path`.
    pub(super) fn connect(socket_path: &Path) -> Result<SyslogMakeWriter, syslog::Error> {
        let logger = connect_logger(socket_path)?;
        Ok(SyslogMakeWriter {
            connection: Mutex::new(Connection {
                socket_path: socket_path.to_path_buf(),
                logger,
                lost: 0,
            }),
        })
    }

    fn line(&self, severity: Severity) -> SyslogLine<'_> {
        SyslogLine {
            connection: &self.connection,
            severity,
            buffer: Vec::new(),
        }
    }
}

fn connect_logger(
    socket_path: &Path,
) -> Result<Logger<LoggerBackend, Formatter3164>, syslog::Error> {
    let formatter = Formatter3164 {
        facility: Facility::LOG_DAEMON,
        hostname: None,
        process: IDENTIFIER.to_string(),
        pid: std::process::id(),
    };
    syslog::unix_custom(formatter, socket_path)
}

impl<'writer> MakeWriter<'writer> for SyslogMakeWriter {
    type Writer = SyslogLine<'writer>;

    fn make_writer(&'writer self) -> SyslogLine<'writer> {
        self.line(Severity::LOG_INFO)
    }

    fn make_writer_for(&'writer self, metadata: &Metadata<'_>) -> SyslogLine<'writer> {
        self.line(severity_of(*metadata.level()))
    }
}

/// Syslog severity with the name of the level, as the journal priorities in `logging.rs`.
fn severity_of(level: Level) -> Severity {
    match level {
        Level::ERROR => Severity::LOG_ERR,
        Level::WARN => Severity::LOG_WARNING,
        Level::INFO => Severity::LOG_INFO,
        Level::DEBUG | Level::TRACE => Severity::LOG_DEBUG,
    }
}

/// One formatted event, collected from the formatter's writes and sent when dropped.
pub(super) struct SyslogLine<'writer> {
    connection: &'writer Mutex<Connection>,
    severity: Severity,
    buffer: Vec<u8>,
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let line = text.trim_end_matches('\n');
        // A panic while holding the lock leaves the connection usable: at worst one line
        // is half sent.
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        connection.send(self.severity, line);
    }
}

impl Connection {
    /// Sends a line: cut when it is too long for one datagram, and after one reconnect
    /// when the socket fails otherwise, for example because the daemon restarted. A line
    /// that still fails is counted as lost and reported on stderr.
    // NOTE: the send blocks while the daemon's receive queue is full, and the lock makes
    // every other thread that logs wait too, as syslog(3) would.
    fn send(&mut self, severity: Severity, line: &str) {
        let result = match self.send_once(severity, line) {
            Err(error) if is_too_long(&error) => self.send_once(severity, &cut(line)),
            Err(_) => match connect_logger(&self.socket_path) {
                Ok(logger) => {
                    self.logger = logger;
                    self.send_once(severity, line)
                }
                Err(error) => Err(error),
            },
            Ok(()) => Ok(()),
        };
        match result {
            Ok(()) if self.lost > 0 => {
                eprintln!(
                    "secure_socket: syslog socket {} accepts log lines again; {} lines were lost",
                    self.socket_path.display(),
                    self.lost
                );
                self.lost = 0;
            }
            Ok(()) => {}
            Err(error) => {
                self.lost += 1;
                if self.lost == 1 {
                    eprintln!(
                        "secure_socket: failed to send a log line to syslog socket {}: {error}; \
                         lines are lost until a send succeeds",
                        self.socket_path.display()
                    );
                }
            }
        }
    }

    fn send_once(&mut self, severity: Severity, line: &str) -> Result<(), syslog::Error> {
        let Logger { formatter, backend } = &mut self.logger;
        formatter.format(backend, severity, line)
    }
}

fn is_too_long(error: &syslog::Error) -> bool {
    match error {
        syslog::Error::Write(error) | syslog::Error::Io(error) => {
            error.raw_os_error() == Some(libc::EMSGSIZE)
        }
        syslog::Error::Initialization(_) => false,
    }
}

/// Cuts `line` to at most CUT_LINE_BYTES at a character boundary and marks the cut at the
/// end.
fn cut(line: &str) -> String {
    let mut end = line.len().min(CUT_LINE_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [line cut from {} bytes]", &line[..end], line.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_line_ends_at_char_boundary() {
        let line = "é".repeat(CUT_LINE_BYTES);
        let shortened = cut(&line);
        let prefix = shortened.split(" [line cut").next().unwrap();
        assert!(prefix.len() <= CUT_LINE_BYTES);
        assert!(prefix.chars().all(|c| c == 'é'));
    }

    #[test]
    fn cut_line_names_original_length() {
        let line = "a".repeat(CUT_LINE_BYTES + 10);
        let shortened = cut(&line);
        assert!(shortened.ends_with(&format!("[line cut from {} bytes]", line.len())));
    }
}
