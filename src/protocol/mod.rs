//! Wire formats: the varlink client protocol spoken by the parser child, and the binary
//! channel between the parser child and the monitor.
//!
//! Client bytes are untrusted and parsed only in the parser child. Channel messages from
//! the child are untrusted too, because the child may be compromised: the monitor decodes
//! them with [`channel::decode_child_message`], which bounds every length.
#![forbid(unsafe_code)]

pub mod base64;
pub mod call_names;
pub mod channel;
mod error;
pub mod frame;
pub mod varlink;

pub use error::{BrokerError, ErrorKind};
