//! Parses arbitrary bytes as one client frame, as the parser child does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| secure_socket_fuzz::check_call(data));
