//! The checks that the fuzz targets run on each input, and the seed corpus they start from.
//!
//! Every input is untrusted: it stands for bytes a client sends to a parser child, or
//! bytes a possibly compromised parser child sends to the monitor. A check panics, which
//! libFuzzer reports as a crash and saves under `fuzz/artifacts/<target>/`, when a decoder
//! panics or breaks a property stated in the check.

use std::collections::HashSet;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use secure_socket::audit::Event;
use secure_socket::policy::ArgValue;
use secure_socket::protocol::BrokerError;
use secure_socket::protocol::channel::{
    self, ChildMessage, MAX_ARGUMENTS, MAX_NAME_BYTES, MAX_STDIN_BYTES, MAX_VALUE_BYTES,
};
use secure_socket::protocol::frame::{FrameError, FrameReader};
use secure_socket::protocol::varlink::{self, Request};

mod seeds;

pub use seeds::{Seed, seeds};

/// Maximum length of the byte stream [`check_frames`] writes into its socket pair. Far below the default
/// socket buffer (net.core.wmem_default, 212992 bytes), so a write never blocks while the
/// reader has not caught up.
const MAX_STREAM_BYTES: usize = 64 * 1024;

/// Parses one client frame as the parser child does, then checks the result.
///
/// A parsed Run must respect every bound that `parse_call` promises and must cross the
/// channel: its Exec message decodes in the monitor to the same request. An error must
/// encode as exactly one reply frame, so that a client can always read it.
pub fn check_call(frame: &[u8]) {
    match varlink::parse_call(frame) {
        Ok(call) => check_request(&call.request),
        Err(error) => check_error_reply(&error),
    }
}

fn check_request(request: &Request) {
    let Request::Run {
        command,
        arguments,
        stdin,
    } = request
    else {
        return;
    };
    assert!(command.len() <= MAX_NAME_BYTES, "command over the limit");
    assert!(arguments.len() <= MAX_ARGUMENTS, "too many arguments");
    let mut names = HashSet::new();
    for (name, value) in arguments {
        assert!(name.len() <= MAX_NAME_BYTES, "argument name over the limit");
        assert!(names.insert(name), "duplicate argument {name:?} accepted");
        if let ArgValue::Str(text) = value {
            assert!(
                text.len() <= MAX_VALUE_BYTES,
                "argument value over the limit"
            );
        }
    }
    let stdin = stdin.clone().map(String::into_bytes).unwrap_or_default();
    assert!(stdin.len() <= MAX_STDIN_BYTES, "stdin over the limit");

    let exec = ChildMessage::Exec {
        command: command.clone(),
        arguments: arguments.clone(),
        stdin,
    };
    let bytes = channel::encode_child_message(&exec);
    match channel::decode_child_message(&bytes) {
        Ok(decoded) => assert_eq!(decoded, exec, "Exec changed on the channel"),
        Err(error) => panic!("the monitor rejects the Exec of an accepted Run: {error}"),
    }
}

fn check_error_reply(error: &BrokerError) {
    let bytes = varlink::encode_error(error);
    let Some((&terminator, body)) = bytes.split_last() else {
        panic!("empty error reply");
    };
    assert_eq!(terminator, 0, "error reply does not end with NUL");
    assert!(!body.contains(&0), "error reply has a NUL inside its frame");
    let reply: serde_json::Value = match serde_json::from_slice(body) {
        Ok(reply) => reply,
        Err(parse_error) => panic!("error reply is not JSON: {parse_error}"),
    };
    assert_eq!(reply["error"], error.varlink_name(), "error name changed");
}

/// The end of a stream of frames, as [`FrameReader`] reports it.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// The writer closed the stream right after a frame's NUL, or before any byte.
    Closed,
    /// The writer closed the stream inside a frame of this many bytes.
    ClosedMidFrame(usize),
    /// A frame is longer than the limit; the reader stops there.
    TooLarge,
}

/// Reads a byte stream through [`FrameReader`] on a real socket pair, written in pieces,
/// and compares the frames with those cut from the whole stream at once. Each frame then
/// goes through [`check_call`].
///
/// Input layout: byte 0 is `max_frame_bytes` (0 to 255), byte 1 chooses the sizes of the
/// writes, and the remaining bytes are the stream. A size byte of 0 writes the stream at
/// once, and any other value cycles through sizes of 1 to 97 bytes.
pub fn check_frames(data: &[u8]) {
    let [limit, write_pattern, stream @ ..] = data else {
        return;
    };
    if stream.len() > MAX_STREAM_BYTES {
        return;
    }
    let limit = usize::from(*limit);
    let (expected_frames, expected_end) = cut_frames(stream, limit);

    let (ours, mut theirs) = UnixStream::pair().expect("failed to create a socket pair");
    ours.set_nonblocking(true)
        .expect("failed to make the socket non-blocking");
    let mut reader = FrameReader::new(limit);
    let mut frames = Vec::new();
    let mut end = None;
    let mut rest = stream;
    let mut sizes = write_sizes(*write_pattern);
    while !rest.is_empty() && end.is_none() {
        let size = sizes.next().unwrap_or(usize::MAX).min(rest.len());
        theirs
            .write_all(&rest[..size])
            .expect("failed to write to the socket pair");
        rest = &rest[size..];
        // A deadline that has already passed makes the reader take every byte written so
        // far and then return TimedOut instead of waiting for more.
        loop {
            match reader.read_frame(ours.as_fd(), Instant::now()) {
                Ok(frame) => frames.push(frame),
                Err(FrameError::TimedOut) => break,
                Err(error) => {
                    end = Some(stream_end(error));
                    break;
                }
            }
        }
    }
    drop(theirs);
    let end = end.unwrap_or_else(|| {
        loop {
            match reader.read_frame(ours.as_fd(), Instant::now()) {
                Ok(frame) => frames.push(frame),
                Err(error) => break stream_end(error),
            }
        }
    });

    assert_eq!(
        frames, expected_frames,
        "frames differ from the whole stream's"
    );
    assert_eq!(end, expected_end, "stream ends differently");
    for frame in &frames {
        check_call(frame);
    }
}

fn stream_end(error: FrameError) -> StreamEnd {
    match error {
        FrameError::Closed => StreamEnd::Closed,
        FrameError::ClosedMidFrame { received } => StreamEnd::ClosedMidFrame(received),
        FrameError::TooLarge { .. } => StreamEnd::TooLarge,
        FrameError::TimedOut | FrameError::Io(_) => {
            panic!("unexpected error from a closed socket pair: {error}")
        }
    }
}

/// Cuts `stream` into NUL-terminated frames the simple way: the reference that the
/// reader's result must match, whatever the sizes of the writes.
fn cut_frames(stream: &[u8], limit: usize) -> (Vec<Vec<u8>>, StreamEnd) {
    let mut frames = Vec::new();
    let mut rest = stream;
    while let Some(nul) = rest.iter().position(|&byte| byte == 0) {
        if nul > limit {
            return (frames, StreamEnd::TooLarge);
        }
        frames.push(rest[..nul].to_vec());
        rest = &rest[nul + 1..];
    }
    let end = match rest.len() {
        0 => StreamEnd::Closed,
        length if length > limit => StreamEnd::TooLarge,
        length => StreamEnd::ClosedMidFrame(length),
    };
    (frames, end)
}

/// Returns the sizes of successive writes for a pattern byte.
fn write_sizes(pattern: u8) -> impl Iterator<Item = usize> {
    let pattern = usize::from(pattern);
    (1..).map(move |index: usize| {
        if pattern == 0 {
            usize::MAX
        } else {
            1 + pattern.wrapping_mul(index) % 97
        }
    })
}

/// Decodes a channel message as the monitor does. The encoding has exactly one form per
/// message, so whatever decodes must encode back to the same bytes, within the limits
/// the decoder promises.
pub fn check_child_message(bytes: &[u8]) {
    let Ok(message) = channel::decode_child_message(bytes) else {
        return;
    };
    assert_eq!(
        channel::encode_child_message(&message),
        bytes,
        "decoded message encodes to other bytes"
    );
    if let ChildMessage::Exec {
        command,
        arguments,
        stdin,
    } = &message
    {
        assert!(command.len() <= MAX_NAME_BYTES, "command over the limit");
        assert!(arguments.len() <= MAX_ARGUMENTS, "too many arguments");
        assert!(stdin.len() <= MAX_STDIN_BYTES, "stdin over the limit");
        for (name, value) in arguments {
            assert!(name.len() <= MAX_NAME_BYTES, "argument name over the limit");
            if let ArgValue::Str(text) = value {
                assert!(
                    text.len() <= MAX_VALUE_BYTES,
                    "argument value over the limit"
                );
            }
        }
    }
}

/// Decodes an audit event as the monitor's logger does. As with channel messages, what
/// decodes must encode back to the same bytes.
pub fn check_audit_event(bytes: &[u8]) {
    let Some(event) = Event::decode(bytes) else {
        return;
    };
    assert_eq!(
        event.encode(),
        bytes,
        "decoded event encodes to other bytes"
    );
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn corpus_dir() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))
    }

    #[test]
    fn committed_seeds_match_generator() {
        for seed in seeds() {
            let path = corpus_dir().join(seed.target).join(seed.name);
            let committed = std::fs::read(&path).unwrap_or_else(|error| {
                panic!(
                    "failed to read {}: {error}; run `cargo run --example write_seeds`",
                    path.display()
                )
            });
            assert_eq!(
                committed,
                seed.bytes,
                "{} is stale; run `cargo run --example write_seeds`",
                path.display()
            );
        }
    }

    #[test]
    fn seeds_pass_their_checks() {
        for seed in seeds() {
            match seed.target {
                "varlink_call" => check_call(&seed.bytes),
                "frame_reader" => check_frames(&seed.bytes),
                "child_message" => check_child_message(&seed.bytes),
                "audit_event" => check_audit_event(&seed.bytes),
                other => panic!("seed {} names unknown target {other}", seed.name),
            }
        }
    }

    #[test]
    fn valid_seeds_decode() {
        for seed in seeds().iter().filter(|seed| seed.valid) {
            let decodes = match seed.target {
                "varlink_call" => varlink::parse_call(&seed.bytes).is_ok(),
                "frame_reader" => true,
                "child_message" => channel::decode_child_message(&seed.bytes).is_ok(),
                "audit_event" => Event::decode(&seed.bytes).is_some(),
                other => panic!("seed {} names unknown target {other}", seed.name),
            };
            assert!(
                decodes,
                "valid seed {}/{} fails to decode",
                seed.target, seed.name
            );
        }
    }

    #[test]
    fn cut_frames_reference() {
        let (frames, end) = cut_frames(b"ab\0\0cd", 4);
        assert_eq!(frames, vec![b"ab".to_vec(), Vec::new()]);
        assert_eq!(end, StreamEnd::ClosedMidFrame(2));

        let (frames, end) = cut_frames(b"ab\0toolong\0", 4);
        assert_eq!(frames, vec![b"ab".to_vec()]);
        assert_eq!(end, StreamEnd::TooLarge);

        let (_, end) = cut_frames(b"ab\0", 4);
        assert_eq!(end, StreamEnd::Closed);
    }

    #[test]
    fn frames_survive_single_byte_writes() {
        let mut data = vec![16, 97];
        data.extend_from_slice(b"{\"method\":\"x\"}\0\0tail");
        check_frames(&data);
        data[0] = 3;
        check_frames(&data);
        data[1] = 0;
        check_frames(&data);
    }
}
