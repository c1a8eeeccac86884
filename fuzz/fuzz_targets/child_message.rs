//! Decodes arbitrary bytes as a parser child's channel message, as the monitor does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| secure_socket_fuzz::check_child_message(data));
