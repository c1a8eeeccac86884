//! Policy: which peer may run which command, with which arguments, as whom.
//!
//! The files under `policy_dir` are trusted input (root-owned, checked at load). Everything
//! else that reaches this module, argument values above all, is untrusted and goes through
//! [`CommandSpec::validate`], which both the parser child and the monitor call.
#![forbid(unsafe_code)]

mod load;
mod types;
mod validate;

pub use load::{LoadError, PolicyError, check_dir, load_dir};
pub use types::*;
pub use validate::ArgError;
