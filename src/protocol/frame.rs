//! Varlink framing: one JSON object per message, terminated by a NUL byte.
//!
//! Owns reading and writing whole frames on the client's unix stream socket. The bytes
//! are untrusted: a frame is only cut out of the stream here and bounded in size, never
//! interpreted.
//!
//! The parser child calls these functions under a seccomp filter, so they use only
//! read(2), write(2) and poll(2) with a timeout computed from `Instant` (clock_gettime).
//! The socket must already be non-blocking: setting it here would need fcntl(2). No
//! recv(2) or send(2) either, because libc maps them to recvfrom and sendto.
//!
//! NOTE: write(2) on a socket whose peer has gone raises SIGPIPE, which send(2) with
//! MSG_NOSIGNAL would avoid. The process must ignore SIGPIPE (Rust binaries do so by
//! default before `main`) so that [`write_all`] returns `EPIPE` instead of dying.

use std::os::fd::BorrowedFd;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Initial buffer size in bytes. The buffer grows by doubling up to the frame limit plus one.
const INITIAL_BUFFER_BYTES: usize = 4096;

/// Failure to read or write a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between two frames: the normal end of a session.
    #[error("connection closed by the peer")]
    Closed,
    /// The peer closed the connection inside a frame.
    #[error("connection closed by the peer after {received} bytes of an unterminated frame")]
    ClosedMidFrame { received: usize },
    /// The frame is longer than the limit, not counting its NUL terminator.
    #[error("frame exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The deadline passed before a whole frame arrived or all bytes were written.
    #[error("timed out waiting for the peer")]
    TimedOut,
    /// read(2), write(2) or poll(2) failed.
    #[error("failed to read, write or poll the socket")]
    Io(#[source] nix::Error),
}

/// Reads NUL-terminated frames from a non-blocking stream socket.
///
/// Bytes that arrive after a frame's NUL stay buffered for the next call, so one read may
/// deliver several frames and a frame may arrive one byte at a time. The internal buffer
/// is reused across calls and never grows past `max_frame_bytes + 1` bytes.
#[derive(Debug)]
pub struct FrameReader {
    max_frame_bytes: usize,
    /// Received bytes are `buffer[start..end]`, and `buffer.len()` is the capacity in use.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// `buffer[start..scanned]` is known to contain no NUL.
    scanned: usize,
}

impl FrameReader {
    /// Creates a reader that rejects frames longer than `max_frame_bytes`, not counting
    /// the NUL terminator.
    pub fn new(max_frame_bytes: usize) -> FrameReader {
        let initial = INITIAL_BUFFER_BYTES.min(max_frame_bytes.saturating_add(1));
        FrameReader {
            max_frame_bytes,
            buffer: vec![0; initial],
            start: 0,
            end: 0,
            scanned: 0,
        }
    }

    /// Reads the next frame from `fd` and returns it without its NUL terminator.
    ///
    /// Waits with poll(2) until `deadline`. Bytes already received stay buffered after
    /// [`FrameError::TimedOut`], so a later call continues the same frame. After any other
    /// error the connection is unusable and the reader should be dropped.
    pub fn read_frame(&mut self, fd: BorrowedFd, deadline: Instant) -> Result<Vec<u8>, FrameError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }

            self.make_room();
            match nix::unistd::read(fd, &mut self.buffer[self.end..]) {
                Ok(0) => {
                    let received = self.end - self.start;
                    if received == 0 {
                        return Err(FrameError::Closed);
                    }
                    return Err(FrameError::ClosedMidFrame { received });
                }
                Ok(count) => self.end += count,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => wait_for(fd, PollFlags::POLLIN, deadline)?,
                Err(error) => return Err(FrameError::Io(error)),
            }
        }
    }

    /// Returns the next complete frame in the buffer, or `None` when more bytes are
    /// needed. Fails once the unterminated or complete frame is over the limit.
    fn take_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let unscanned = &self.buffer[self.scanned..self.end];
        let Some(offset) = unscanned.iter().position(|&byte| byte == 0) else {
            self.scanned = self.end;
            if self.end - self.start > self.max_frame_bytes {
                return Err(self.too_large());
            }
            return Ok(None);
        };

        let nul = self.scanned + offset;
        if nul - self.start > self.max_frame_bytes {
            return Err(self.too_large());
        }
        let frame = self.buffer[self.start..nul].to_vec();
        self.start = nul + 1;
        self.scanned = self.start;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
        }
        Ok(Some(frame))
    }

    /// Drops the buffered bytes and returns the error for an oversized frame.
    fn too_large(&mut self) -> FrameError {
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
        FrameError::TooLarge {
            limit: self.max_frame_bytes,
        }
    }

    /// Ensures free space after `end`, first by moving the unterminated frame to the
    /// front of the buffer, then by doubling the buffer.
    fn make_room(&mut self) {
        if self.end < self.buffer.len() {
            return;
        }
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
            return;
        }
        // `take_frame` fails before an unterminated frame fills `max_frame_bytes + 1`
        // bytes, so the buffer never needs to grow past that.
        let limit = self.max_frame_bytes.saturating_add(1);
        let grown = self.buffer.len().saturating_mul(2).clamp(1, limit);
        self.buffer.resize(grown, 0);
    }
}

/// Writes all of `bytes` to the non-blocking `fd`, waiting with poll(2) for buffer space
/// until `deadline`. A peer that stops reading makes this fail with
/// [`FrameError::TimedOut`].
pub fn write_all(fd: BorrowedFd, bytes: &[u8], deadline: Instant) -> Result<(), FrameError> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            // A socket never accepts 0 bytes of a non-empty write. Retrying on a descriptor
            // that does would spin until the deadline, so it counts as an I/O error.
            Ok(0) => return Err(FrameError::Io(Errno::EIO)),
            Err(Errno::EAGAIN) => wait_for(fd, PollFlags::POLLOUT, deadline)?,
            Ok(count) => rest = &rest[count..],
            Err(Errno::EINTR) => {}
            Err(error) => return Err(FrameError::Io(error)),
        }
    }
    Ok(())
}

/// Waits until `fd` reports `events` or an error condition, or `deadline` passes.
///
/// Returning `Ok` does not promise that the next read or write succeeds. The caller
/// retries it and comes back here on `EAGAIN`.
fn wait_for(fd: BorrowedFd, events: PollFlags, deadline: Instant) -> Result<(), FrameError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(FrameError::TimedOut);
    }

    // Round up so that less than a millisecond left still waits instead of spinning on a
    // zero timeout.
    let millis = remaining.as_nanos().div_ceil(1_000_000);
    let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(fd, events)];
    match poll(&mut fds, timeout) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(error) => Err(FrameError::Io(error)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn nonblocking_pair() -> (UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (ours, theirs)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn reader_splits_frames_from_one_write() {
        let (ours, mut theirs) = nonblocking_pair();
        theirs.write_all(b"{\"a\":1}\0\0{}\0").unwrap();
        let mut reader = FrameReader::new(64);

        assert_eq!(
            reader.read_frame(ours.as_fd(), soon()).unwrap(),
            b"{\"a\":1}"
        );
        assert_eq!(reader.read_frame(ours.as_fd(), soon()).unwrap(), b"");
        assert_eq!(reader.read_frame(ours.as_fd(), soon()).unwrap(), b"{}");
    }

    #[test]
    fn reader_joins_single_byte_writes() {
        let (ours, mut theirs) = nonblocking_pair();
        let writer = std::thread::spawn(move || {
            for byte in b"hello\0world\0" {
                theirs.write_all(&[*byte]).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            theirs
        });
        let mut reader = FrameReader::new(64);

        assert_eq!(reader.read_frame(ours.as_fd(), soon()).unwrap(), b"hello");
        assert_eq!(reader.read_frame(ours.as_fd(), soon()).unwrap(), b"world");
        drop(writer.join().unwrap());
        assert!(matches!(
            reader.read_frame(ours.as_fd(), soon()),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn reader_reports_close_between_frames() {
        let (ours, mut theirs) = nonblocking_pair();
        theirs.write_all(b"one\0").unwrap();
        drop(theirs);
        let mut reader = FrameReader::new(64);

        assert_eq!(reader.read_frame(ours.as_fd(), soon()).unwrap(), b"one");
        assert!(matches!(
            reader.read_frame(ours.as_fd(), soon()),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn reader_reports_close_mid_frame() {
        let (ours, mut theirs) = nonblocking_pair();
        theirs.write_all(b"one\0partial").unwrap();
        drop(theirs);
        let mut reader = FrameReader::new(64);

        assert_eq!(reader.read_frame(ours.as_fd(), soon()).unwrap(), b"one");
        let error = reader.read_frame(ours.as_fd(), soon()).unwrap_err();
        assert!(matches!(error, FrameError::ClosedMidFrame { received: 7 }));
    }

    #[test]
    fn reader_accepts_frame_at_limit() {
        let (ours, mut theirs) = nonblocking_pair();
        theirs.write_all(&[b'x'; 16]).unwrap();
        theirs.write_all(b"\0").unwrap();
        let mut reader = FrameReader::new(16);

        assert_eq!(reader.read_frame(ours.as_fd(), soon()).unwrap(), [b'x'; 16]);
    }

    #[test]
    fn reader_rejects_terminated_frame_over_limit() {
        let (ours, mut theirs) = nonblocking_pair();
        theirs.write_all(&[b'x'; 17]).unwrap();
        theirs.write_all(b"\0").unwrap();
        let mut reader = FrameReader::new(16);

        let error = reader.read_frame(ours.as_fd(), soon()).unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { limit: 16 }));
    }

    #[test]
    fn reader_stops_at_endless_frame() {
        let (ours, mut theirs) = nonblocking_pair();
        theirs.set_nonblocking(true).unwrap();
        // Fill the socket buffer: far more than the limit is waiting to be read.
        let chunk = [b'x'; 4096];
        let mut written = 0;
        while let Ok(count) = theirs.write(&chunk) {
            written += count;
        }
        let mut reader = FrameReader::new(1000);

        let error = reader.read_frame(ours.as_fd(), soon()).unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { limit: 1000 }));
        assert!(written > 4096);
        assert!(reader.buffer.len() <= 1001);
    }

    #[test]
    fn reader_times_out_on_silent_peer() {
        let (ours, mut theirs) = nonblocking_pair();
        theirs.write_all(b"partial").unwrap();
        let mut reader = FrameReader::new(64);
        let started = Instant::now();

        let error = reader
            .read_frame(ours.as_fd(), started + Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(error, FrameError::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn reader_keeps_partial_frame_after_timeout() {
        let (ours, mut theirs) = nonblocking_pair();
        theirs.write_all(b"par").unwrap();
        let mut reader = FrameReader::new(64);

        let error = reader.read_frame(ours.as_fd(), Instant::now()).unwrap_err();
        assert!(matches!(error, FrameError::TimedOut));
        theirs.write_all(b"tial\0").unwrap();
        assert_eq!(reader.read_frame(ours.as_fd(), soon()).unwrap(), b"partial");
    }

    #[test]
    fn reader_reuses_buffer_across_frames() {
        let (ours, mut theirs) = nonblocking_pair();
        let mut reader = FrameReader::new(100_000);
        let frame = vec![b'y'; 10_000];
        theirs.write_all(&frame).unwrap();
        theirs.write_all(b"\0").unwrap();
        assert_eq!(reader.read_frame(ours.as_fd(), soon()).unwrap(), frame);
        let capacity = reader.buffer.len();

        for _ in 0..20 {
            theirs.write_all(&frame).unwrap();
            theirs.write_all(b"\0").unwrap();
            assert_eq!(reader.read_frame(ours.as_fd(), soon()).unwrap(), frame);
        }
        assert_eq!(reader.buffer.len(), capacity);
    }

    #[test]
    fn write_all_sends_more_than_socket_buffer() {
        let (ours, theirs) = nonblocking_pair();
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let expected = payload.clone();
        let reader = std::thread::spawn(move || {
            let mut received = Vec::new();
            std::io::Read::read_to_end(&mut &theirs, &mut received).unwrap();
            received
        });

        write_all(ours.as_fd(), &payload, soon()).unwrap();
        drop(ours);
        assert_eq!(reader.join().unwrap(), expected);
    }

    #[test]
    fn write_all_times_out_without_reader() {
        let (ours, _theirs) = nonblocking_pair();
        let payload = vec![b'z'; 4 * 1024 * 1024];
        let started = Instant::now();

        let error = write_all(ours.as_fd(), &payload, started + Duration::from_millis(50));
        assert!(matches!(error, Err(FrameError::TimedOut)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn write_all_reports_closed_peer() {
        let (ours, theirs) = nonblocking_pair();
        drop(theirs);

        let error = write_all(ours.as_fd(), b"reply\0", soon()).unwrap_err();
        assert!(matches!(error, FrameError::Io(Errno::EPIPE)));
    }

    /// Frames made of any bytes but NUL.
    fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(1u8..=255, 0..200), 0..12)
    }

    proptest! {
        /// Writes the stream in arbitrary pieces and reads after each piece with a deadline
        /// that has already passed, so every read returns exactly the bytes written so far.
        #[test]
        fn reader_frames_any_split(
            frames in frames(),
            cuts in prop::collection::vec(1usize..64, 1..400),
        ) {
            let mut stream = Vec::new();
            for frame in &frames {
                stream.extend_from_slice(frame);
                stream.push(0);
            }
            let (ours, mut theirs) = nonblocking_pair();
            let mut reader = FrameReader::new(200);
            let mut received = Vec::new();
            let mut rest = stream.as_slice();
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let size = (*cut.next().unwrap()).min(rest.len());
                theirs.write_all(&rest[..size]).unwrap();
                rest = &rest[size..];
                loop {
                    match reader.read_frame(ours.as_fd(), Instant::now()) {
                        Ok(frame) => received.push(frame),
                        Err(FrameError::TimedOut) => break,
                        Err(error) => panic!("unexpected error: {error}"),
                    }
                }
            }
            drop(theirs);
            prop_assert!(matches!(
                reader.read_frame(ours.as_fd(), soon()),
                Err(FrameError::Closed)
            ));
            prop_assert_eq!(received, frames);
        }
    }
}
