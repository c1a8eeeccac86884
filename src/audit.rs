//! Audit events from parser children to the monitor's logger, over a POSIX message queue.
//!
//! The monitor creates the queue with a random name, mode 0600 and O_EXCL, opens a
//! receiving and a sending descriptor, and unlinks the name at once, so no other process
//! can open it. Children inherit only the non-blocking sending descriptor: a full queue
//! drops the event (counted, reported with the next event that fits) and never blocks a
//! request. Message priority carries the level, so alerts are received first.
//!
//! Events are untrusted: a compromised child may send anything. The logger therefore
//! bounds every field, logs client-supplied strings as string values (the text format
//! quotes and escapes them, JSON and journald keep each in its own field), and
//! attributes an event to the peer identity the monitor recorded for the event's session
//! id, never to an identity the child claims.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::mqueue::{MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::Mode;

use crate::policy::Peer;

/// Maximum length of a text field in an event. Longer text is cut.
const MAX_FIELD_BYTES: usize = 240;
/// Bytes of an event before its text fields: session id, kind, dropped count, duration.
const HEADER_BYTES: usize = 8 + 1 + 4 + 8;
/// Text fields of an event, each with a one-byte length prefix.
const TEXT_FIELDS: usize = 7;
/// Largest event on the queue, in bytes: every text field at its maximum length.
pub const MAX_EVENT_BYTES: usize = HEADER_BYTES + TEXT_FIELDS * (1 + MAX_FIELD_BYTES);
/// Requested queue depth: events the queue can contain before children drop them.
const QUEUE_DEPTH: i64 = 256;

/// Priorities: higher is received first.
pub const PRIORITY_INFO: u32 = 1;
pub const PRIORITY_WARN: u32 = 5;
pub const PRIORITY_ALERT: u32 = 9;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("failed to create message queue {name}")]
    Create {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("failed to open message queue {name} for sending")]
    OpenSender {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("failed to unlink message queue {name}")]
    Unlink {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("failed to read random bytes for the queue name")]
    Random(#[source] std::io::Error),
}

/// The monitor's two ends of the audit queue. The name is already unlinked.
pub struct AuditQueue {
    pub receiver: MqdT,
    /// Non-blocking sending descriptor handed to every parser child.
    pub sender: OwnedFd,
}

/// Creates the queue under `prefix` plus a random suffix, opens both ends and unlinks it.
pub fn create_queue(prefix: &str) -> Result<AuditQueue, AuditError> {
    let suffix = crate::sys::random_u64().map_err(AuditError::Random)?;
    let name = format!("{prefix}.{suffix:016x}");
    let mode = Mode::S_IRUSR | Mode::S_IWUSR;
    // The kernel allows a depth above fs.mqueue.msg_max (10 by default) only with
    // CAP_SYS_RESOURCE, so ask for QUEUE_DEPTH first and fall back to msg_max.
    // NOTE: at a depth of 10, a burst of requests that parser children reply to themselves
    // fills the queue. The drops are counted and logged with the peer, never waited for.
    let message_size = (MAX_EVENT_BYTES as i64)
        .min(read_sysctl("/proc/sys/fs/mqueue/msgsize_max").unwrap_or(8192));
    let create_flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDONLY;
    let open_with_depth = |depth: i64| {
        let attributes = MqAttr::new(0, depth, message_size, 0);
        nix::mqueue::mq_open(name.as_str(), create_flags, mode, Some(&attributes))
    };
    let opened = match open_with_depth(QUEUE_DEPTH) {
        Err(nix::Error::EINVAL) => {
            open_with_depth(read_sysctl("/proc/sys/fs/mqueue/msg_max").unwrap_or(10))
        }
        other => other,
    };
    let receiver = opened.map_err(|source| AuditError::Create {
        name: name.clone(),
        source,
    })?;
    let sender_flags = MQ_OFlag::O_WRONLY | MQ_OFlag::O_NONBLOCK;
    let sender = nix::mqueue::mq_open(name.as_str(), sender_flags, Mode::empty(), None);
    // Unlink before checking the sender, so a failure leaves no name behind.
    let unlinked = nix::mqueue::mq_unlink(name.as_str());
    let sender = sender.map_err(|source| AuditError::OpenSender {
        name: name.clone(),
        source,
    })?;
    unlinked.map_err(|source| AuditError::Unlink { name, source })?;
    let sender = into_owned_fd(sender);
    Ok(AuditQueue { receiver, sender })
}

/// Returns the time since `started` in milliseconds, computed from whole microseconds.
/// Dividing a whole number below 2^53 by 1000 gives the double nearest to the exact
/// quotient, so the value prints with at most three decimals (2.3, not
/// 2.3000000000000003).
pub fn elapsed_ms(started: Instant) -> f64 {
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    micros_to_ms(micros)
}

/// Converts whole microseconds to milliseconds; see [`elapsed_ms`].
pub fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn read_sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Converts a queue descriptor, which is a file descriptor on Linux, into an OwnedFd.
fn into_owned_fd(mqd: MqdT) -> OwnedFd {
    let raw = mqd.into_raw_fd();
    // SAFETY: `raw` came from into_raw_fd, so this is its only owner.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Kind of an audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    /// A request the child replied to itself (introspection, or a rejection).
    Request = 1,
    /// A protocol error: malformed frame, oversized frame, timeout.
    ProtocolError = 2,
    /// The child's sandbox status after start.
    Sandbox = 3,
    /// The connection ended.
    ConnectionClosed = 4,
}

/// One audit event as a parser child sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub session_id: u64,
    pub kind: EventKind,
    /// Events this child dropped because the queue was full, since its last event.
    pub dropped: u32,
    pub duration_us: u64,
    pub method: String,
    pub command: String,
    /// "ok" or the varlink error name.
    pub outcome: String,
    /// Extra detail: a sandbox status, the cause of a protocol error.
    pub detail: String,
    /// Id of the request, also sent to the client with an error reply.
    pub request_id: String,
    /// Field of a rejected request that broke a rule (argument, command, frame, ...).
    pub field: String,
    /// Rule that the field broke, as the error reply names it.
    pub rule: String,
}

fn push_text(buffer: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_FIELD_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    buffer.push(end as u8);
    buffer.extend_from_slice(&text.as_bytes()[..end]);
}

impl Event {
    /// Encodes the event: session id, kind, dropped count, duration, then TEXT_FIELDS
    /// length-prefixed (one byte) UTF-8 fields cut at MAX_FIELD_BYTES.
    pub fn encode(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(64);
        buffer.extend_from_slice(&self.session_id.to_le_bytes());
        buffer.push(self.kind as u8);
        buffer.extend_from_slice(&self.dropped.to_le_bytes());
        buffer.extend_from_slice(&self.duration_us.to_le_bytes());
        push_text(&mut buffer, &self.method);
        push_text(&mut buffer, &self.command);
        push_text(&mut buffer, &self.outcome);
        push_text(&mut buffer, &self.detail);
        push_text(&mut buffer, &self.request_id);
        push_text(&mut buffer, &self.field);
        push_text(&mut buffer, &self.rule);
        buffer
    }

    /// Decodes an event from the queue; `None` for anything malformed.
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        let mut reader = Reader { bytes, at: 0 };
        let session_id = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
        let kind = match reader.take(1)?[0] {
            1 => EventKind::Request,
            2 => EventKind::ProtocolError,
            3 => EventKind::Sandbox,
            4 => EventKind::ConnectionClosed,
            _ => return None,
        };
        let dropped = u32::from_le_bytes(reader.take(4)?.try_into().ok()?);
        let duration_us = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
        let method = reader.text()?;
        let command = reader.text()?;
        let outcome = reader.text()?;
        let detail = reader.text()?;
        let request_id = reader.text()?;
        let field = reader.text()?;
        let rule = reader.text()?;
        if reader.at != bytes.len() {
            return None;
        }
        Some(Event {
            session_id,
            kind,
            dropped,
            duration_us,
            method,
            command,
            outcome,
            detail,
            request_id,
            field,
            rule,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(count)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn text(&mut self) -> Option<String> {
        let length = self.take(1)?[0] as usize;
        if length > MAX_FIELD_BYTES {
            return None;
        }
        let raw = self.take(length)?;
        String::from_utf8(raw.to_vec()).ok()
    }
}

/// The child's sending side: non-blocking, counting what a full queue drops.
pub struct AuditSender {
    queue: MqdT,
    session_id: u64,
    dropped: u32,
}

impl AuditSender {
    /// Wraps the inherited queue descriptor.
    pub fn new(queue: OwnedFd) -> AuditSender {
        // SAFETY: the queue descriptor is a message queue descriptor inherited from the
        // monitor, owned by `queue` and handed over here.
        let queue = unsafe { MqdT::from_raw_fd(queue.into_raw_fd()) };
        AuditSender {
            queue,
            session_id: 0,
            dropped: 0,
        }
    }

    pub fn set_session(&mut self, session_id: u64) {
        self.session_id = session_id;
    }

    /// Returns the dropped count and resets it, so that a count reported at the end of
    /// one connection is not reported again for the next one.
    pub fn take_dropped(&mut self) -> u32 {
        std::mem::take(&mut self.dropped)
    }

    pub fn raw_fd(&self) -> i32 {
        self.queue.as_raw_fd()
    }

    /// Sends an event without waiting. A full queue drops it and counts the drop.
    pub fn send(&mut self, mut event: Event, priority: u32) {
        event.session_id = self.session_id;
        event.dropped = self.dropped;
        let bytes = event.encode();
        match nix::mqueue::mq_send(&self.queue, &bytes, priority) {
            Ok(()) => self.dropped = 0,
            Err(_) => self.dropped = self.dropped.saturating_add(1),
        }
    }
}

/// Peer identities of live sessions, by session id, so that the logger attributes a
/// child's events to the identity the monitor recorded.
#[derive(Default)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    /// When ended sessions were last removed; sweeping on every insert would cost a scan
    /// of the whole map per connection.
    last_sweep: Mutex<Option<Instant>>,
}

struct SessionEntry {
    peer: Peer,
    ended: Option<Instant>,
}

/// How long an ended session's identity stays known, for events still in the queue.
const ENDED_SESSION_RETENTION: Duration = Duration::from_secs(60);

impl SessionRegistry {
    pub fn insert(&self, session_id: u64, peer: Peer) {
        let mut sessions = self.lock();
        if self.sweep_due() {
            sessions.retain(|_, entry| {
                entry
                    .ended
                    .is_none_or(|ended| ended.elapsed() < ENDED_SESSION_RETENTION)
            });
            // Give memory back after a burst of connections.
            if sessions.capacity() > 64 && sessions.len() < sessions.capacity() / 4 {
                sessions.shrink_to_fit();
            }
        }
        sessions.insert(session_id, SessionEntry { peer, ended: None });
    }

    /// Returns true when the last sweep is at least a second old, and records this one.
    fn sweep_due(&self) -> bool {
        let mut last = self
            .last_sweep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    pub fn end(&self, session_id: u64) {
        if let Some(entry) = self.lock().get_mut(&session_id) {
            entry.ended = Some(Instant::now());
        }
    }

    pub fn peer(&self, session_id: u64) -> Option<Peer> {
        self.lock().get(&session_id).map(|entry| entry.peer.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SessionEntry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // insert/update calls), so a poisoned lock is still usable.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Receives events until `stop` is set, logging each with the recorded peer identity.
pub fn run_logger(
    receiver: MqdT,
    registry: Arc<SessionRegistry>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut buffer = vec![0u8; MAX_EVENT_BYTES];
    let mut malformed: u64 = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut priority = 0u32;
        let deadline = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
            .map(|now| now + nix::sys::time::TimeSpec::from_duration(Duration::from_millis(200)));
        let Ok(deadline) = deadline else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let received =
            nix::mqueue::mq_timedreceive(&receiver, &mut buffer, &mut priority, &deadline);
        let length = match received {
            Ok(length) => length,
            Err(nix::Error::ETIMEDOUT) | Err(nix::Error::EINTR) => continue,
            Err(error) => {
                tracing::error!(%error, "failed to receive from the audit queue");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        match Event::decode(&buffer[..length]) {
            Some(event) => log_event(&event, priority, &registry),
            None => {
                malformed += 1;
                tracing::warn!(
                    malformed_total = malformed,
                    "malformed audit event discarded"
                );
            }
        }
    }
}

/// Returns `text` unchanged when it contains only ASCII letters, digits and `-`, as the
/// request ids that the child generates do, and quoted and escaped otherwise. So a
/// compromised child cannot add fields to a text log line through its request id.
fn plain_or_quoted(text: &str) -> String {
    if text
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || character == '-')
    {
        text.to_string()
    } else {
        format!("{text:?}")
    }
}

/// Returns `text`, or `None` so that the record leaves the field out when the child had
/// no value for it (a frame that was not valid JSON has no method).
fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn log_event(event: &Event, priority: u32, registry: &SessionRegistry) {
    let Some(peer) = registry.peer(event.session_id) else {
        tracing::warn!(
            session = event.session_id,
            outcome = event.outcome.as_str(),
            detail = event.detail.as_str(),
            dropped = event.dropped,
            "audit event from an unknown session, identity not verified"
        );
        return;
    };
    let peer_uid = peer.uid;
    let peer_gid = peer.gid;
    let peer_pid = peer.pid;
    let peer_exe = peer
        .exe
        .as_ref()
        .map(|exe| exe.display().to_string())
        .unwrap_or_default();
    let request_id = plain_or_quoted(&event.request_id);
    let duration_ms = micros_to_ms(event.duration_us);
    if event.dropped > 0 {
        tracing::warn!(
            peer_uid,
            peer_pid,
            dropped = event.dropped,
            "audit events dropped because the queue was full"
        );
    }
    match (event.kind, priority >= PRIORITY_WARN) {
        (EventKind::Request, false) => tracing::info!(
            peer_uid,
            peer_gid,
            peer_pid,
            peer_exe = peer_exe.as_str(),
            request_id = %request_id,
            decision = "answered",
            method = non_empty(&event.method),
            command = non_empty(&event.command),
            outcome = event.outcome.as_str(),
            duration_ms,
            "request"
        ),
        (EventKind::Request, true) => tracing::warn!(
            peer_uid,
            peer_gid,
            peer_pid,
            peer_exe = peer_exe.as_str(),
            request_id = %request_id,
            decision = "rejected",
            method = non_empty(&event.method),
            command = non_empty(&event.command),
            outcome = event.outcome.as_str(),
            field = event.field.as_str(),
            rule = event.rule.as_str(),
            duration_ms,
            "request rejected"
        ),
        (EventKind::ProtocolError, _) => tracing::warn!(
            peer_uid,
            peer_gid,
            peer_pid,
            peer_exe = peer_exe.as_str(),
            outcome = event.outcome.as_str(),
            detail = event.detail.as_str(),
            "protocol error"
        ),
        (EventKind::Sandbox, _) => tracing::debug!(
            peer_uid,
            peer_pid,
            detail = event.detail.as_str(),
            "parser child sandbox status"
        ),
        (EventKind::ConnectionClosed, _) => tracing::debug!(
            peer_uid,
            peer_pid,
            detail = event.detail.as_str(),
            "connection closed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            session_id: 7,
            kind: EventKind::Request,
            dropped: 2,
            duration_us: 1500,
            method: "org.securesocket.Broker.List".to_string(),
            command: "déjà".to_string(),
            outcome: "ok".to_string(),
            detail: String::new(),
            request_id: "00000000000000ab-1".to_string(),
            field: "name".to_string(),
            rule: "pattern".to_string(),
        }
    }

    #[test]
    fn micros_to_ms_prints_at_most_three_decimals() {
        assert_eq!(micros_to_ms(2300).to_string(), "2.3");
        assert_eq!(micros_to_ms(0).to_string(), "0");
        for micros in (0..200_000).chain(u64::MAX - 1000..u64::MAX) {
            let text = micros_to_ms(micros).to_string();
            let decimals = text
                .split_once('.')
                .map_or(0, |(_, fraction)| fraction.len());
            assert!(decimals <= 3, "{micros} us printed as {text}");
        }
    }

    #[test]
    fn event_round_trip() {
        let event = sample();
        assert_eq!(Event::decode(&event.encode()), Some(event));
    }

    #[test]
    fn event_long_field_cut_at_char_boundary() {
        let mut event = sample();
        event.detail = "é".repeat(300);
        let decoded = Event::decode(&event.encode()).unwrap();
        assert!(decoded.detail.len() <= MAX_FIELD_BYTES);
    }

    #[test]
    fn event_with_every_field_full_fits_queue_message() {
        let long = "x".repeat(MAX_FIELD_BYTES + 10);
        let event = Event {
            method: long.clone(),
            command: long.clone(),
            outcome: long.clone(),
            detail: long.clone(),
            request_id: long.clone(),
            field: long.clone(),
            rule: long,
            ..sample()
        };
        assert!(event.encode().len() <= MAX_EVENT_BYTES);
    }

    #[test]
    fn event_truncated_rejected() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert_eq!(Event::decode(&bytes[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn event_trailing_bytes_rejected() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert_eq!(Event::decode(&bytes), None);
    }
}
