//! secure_socket: a local access broker.
//!
//! A privileged monitor owns the listening unix socket and runs the scripts that the
//! policy names; an unprivileged, sandboxed parser child per connection parses everything
//! the client sends and passes only typed, validated requests back to the monitor.
//!
//! Modules by role: [`config`] (start-up parameters), [`policy`] (what may run),
//! [`protocol`] (varlink client protocol and the monitor/child channel), [`monitor`]
//! (listener, peer identity, child pool, script runner), [`child`] (the parser child),
//! [`sandbox`] (privilege drop, landlock, seccomp, capabilities), [`audit`] (events over
//! the POSIX message queue), [`logging`], [`client`] (the command-line client), [`trust`]
//! (ownership checks on the directories above trusted files) and [`sys`] (raw system
//! calls that the libraries do not wrap).

pub mod audit;
pub mod child;
pub mod client;
pub mod config;
pub mod logging;
pub mod monitor;
pub mod policy;
pub mod protocol;
pub mod sandbox;
pub mod sys;
pub mod trust;
