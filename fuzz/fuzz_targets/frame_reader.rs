//! Reads an arbitrary byte stream, written in arbitrary pieces, through the frame reader on
//! a socket pair, and parses every frame it returns.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| secure_socket_fuzz::check_frames(data));
