//! Decodes arbitrary bytes as a parser child's audit event, as the monitor's logger does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| secure_socket_fuzz::check_audit_event(data));
