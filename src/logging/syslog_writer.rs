//! Log lines to a syslog daemon through the `syslog` crate: one datagram per event, in the
//! RFC 3164 form `<PRI>TIMESTAMP secure_socket[PID]: LINE`, with the severity of the
//! event's level and the daemon facility.
//!
//! The lines come from the text or JSON formatter, which has already escaped every
//! client-supplied string, so a line contains no line break of a client's. Input trusted:
//! the administrator's syslog_socket path.

use std::fmt::Display;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use syslog::{Facility, LogFormat, Logger, LoggerBackend, Severity};
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
    logger: Logger<LoggerBackend, Rfc3164Formatter>,
    /// Lines lost since the last line that was sent.
    lost: u64,
}

impl SyslogMakeWriter {
    /// Connects a datagram socket to `socket_path`. Fails with EPROTOTYPE when the path
    /// is a stream socket. The broker never falls back to a stream, because a stream has
    /// no message boundaries, so each event would need a NUL or newline terminator.
    pub(super) fn connect(socket_path: &Path) -> std::io::Result<SyslogMakeWriter> {
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

/// Opens a datagram socket connected to `socket_path`. `syslog::unix_custom` would fall
/// back to a stream socket, which this function never does.
fn connect_logger(socket_path: &Path) -> std::io::Result<Logger<LoggerBackend, Rfc3164Formatter>> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(socket_path)?;
    // A daemon that stops reading must not stall the thread that logs: a full receive
    // queue fails the send with EAGAIN, and the line is counted as lost.
    socket.set_nonblocking(true)?;
    let formatter = Rfc3164Formatter {
        process: IDENTIFIER.to_string(),
        pid: std::process::id(),
    };
    Ok(Logger::new(LoggerBackend::Unix(socket), formatter))
}

/// RFC 3164 line format with facility daemon and no host name, which the local daemon
/// adds. It replaces `syslog::Formatter3164`, which in syslog 7.0.0 writes the day of the
/// month zero-padded (`Dec 04`), where RFC 3164 section 4.1.2 requires a space (`Dec  4`).
struct Rfc3164Formatter {
    process: String,
    pid: u32,
}

impl<T: Display> LogFormat<T> for Rfc3164Formatter {
    fn format<W: Write>(
        &self,
        writer: &mut W,
        severity: Severity,
        message: T,
    ) -> syslog::Result<()> {
        let priority = Facility::LOG_DAEMON as u8 | severity as u8;
        let timestamp = format_timestamp(SystemTime::now());
        write!(
            writer,
            "<{priority}>{timestamp} {}[{}]: {message}",
            self.process, self.pid
        )
        .map_err(syslog::Error::Write)
    }
}

const MONTH_NAMES: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats `time` as an RFC 3164 TIMESTAMP, `Mmm dd hh:mm:ss` with the day padded by a
/// space, in UTC.
// NOTE: RFC 3164 specifies local time, but the line carries UTC, as syslog 7.0.0 did on
// unix, because std offers no time zone conversion.
fn format_timestamp(time: SystemTime) -> String {
    // A clock before 1970 is shown as the epoch.
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let days = seconds / 86_400;
    let second_of_day = seconds % 86_400;
    let (month, day) = month_and_day(days);
    format!(
        "{} {day:>2} {:02}:{:02}:{:02}",
        MONTH_NAMES[month - 1],
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Returns the month (1 to 12) and day of the month of the Gregorian date `days` days
/// after 1970-01-01. The calculation counts from 0000-03-01, so that the leap day is
/// the last day of its year, and uses 400-year cycles of 146097 days.
fn month_and_day(days: u64) -> (usize, u64) {
    // 719468 days lie between 0000-03-01 and 1970-01-01.
    let shifted = days + 719_468;
    let day_of_cycle = shifted % 146_097;
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / 146_096) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    // Months counted from March: 0 is March, 11 is February. 153 days fill five months.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    (month as usize, day)
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
    fn send(&mut self, severity: Severity, line: &str) {
        let result = match self.send_once(severity, line) {
            Err(error) if is_too_long(&error) => self.send_once(severity, &cut(line)),
            Err(error) if is_queue_full(&error) => Err(error),
            Err(_) => match connect_logger(&self.socket_path) {
                Ok(logger) => {
                    self.logger = logger;
                    self.send_once(severity, line)
                }
                Err(error) => Err(syslog::Error::Io(error)),
            },
            Ok(()) => Ok(()),
        };
        match result {
            Ok(()) if self.lost > 0 => {
                // Not eprintln!, which panics when stderr is a closed pipe.
                let _ = writeln!(
                    std::io::stderr(),
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
                    let _ = writeln!(
                        std::io::stderr(),
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

/// Returns whether a send failed because the daemon's receive queue is full.
fn is_queue_full(error: &syslog::Error) -> bool {
    match error {
        syslog::Error::Write(error) | syslog::Error::Io(error) => {
            error.kind() == std::io::ErrorKind::WouldBlock
        }
        syslog::Error::Initialization(_) => false,
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

    /// Returns the time `seconds` after the epoch.
    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(seconds)
    }

    #[test]
    fn timestamp_pads_single_digit_day_with_space() {
        // 2026-12-04 21:50:09 UTC.
        assert_eq!(format_timestamp(at(1_796_421_009)), "Dec  4 21:50:09");
    }

    #[test]
    fn timestamp_of_epoch() {
        assert_eq!(format_timestamp(at(0)), "Jan  1 00:00:00");
    }

    #[test]
    fn timestamp_of_leap_day() {
        // 2024-02-29 12:00:00 UTC.
        assert_eq!(format_timestamp(at(1_709_208_000)), "Feb 29 12:00:00");
    }

    #[test]
    fn timestamp_of_last_second_of_year() {
        // 2025-12-31 23:59:59 UTC.
        assert_eq!(format_timestamp(at(1_767_225_599)), "Dec 31 23:59:59");
    }

    #[test]
    fn month_and_day_of_every_day_in_order() {
        // Walks from 2000-01-01 (a leap year, divisible by 400) to 2100-12-31 (2100 is no
        // leap year) and checks that each day follows the one before.
        let lengths = |month: usize, year: u64| match month {
            2 if year.is_multiple_of(4)
                && (!year.is_multiple_of(100) || year.is_multiple_of(400)) =>
            {
                29
            }
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let (mut year, mut month, mut day) = (2000u64, 1usize, 1u64);
        for days in 10_957..47_847 {
            assert_eq!(month_and_day(days), (month, day), "day {days} of {year}");
            day += 1;
            if day > lengths(month, year) {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

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
