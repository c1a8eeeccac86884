//! Connections the monitor rejects itself, before any parser child receives them: a peer that
//! the global authorised_peer_* filter rejects, and a uid over max_connections_per_uid.
//!
//! The monitor reads nothing from the client, by design, so it never learns the method,
//! command or arguments of such a connection. The reply has a fixed shape built only
//! from values the monitor chose: the error, the rule and a new request id. The audit
//! record carries the same request id and the peer identity that the kernel reported,
//! and no command.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use nix::sys::socket::MsgFlags;

use crate::policy::Peer;
use crate::protocol::BrokerError;
use crate::protocol::varlink;

/// Sends `error` with a new request id to the client, logs the audit record under
/// `message`, and lets the caller close the connection.
///
/// A client that already wrote its request reads the error and then gets ECONNRESET
/// instead of end of file, because Linux resets a unix stream connection that closes
/// with unread bytes. Reading those bytes to avoid it would mean reading client input.
pub(super) fn reject(
    connection: &OwnedFd,
    peer: &Peer,
    error: BrokerError,
    accepted: Instant,
    message: &'static str,
) {
    let request_id = format!("{:016x}", crate::sys::random_u64().unwrap_or_default());
    let error = error.with_request_id(request_id);
    let reply = varlink::encode_error(&error);
    // A new connection's send buffer is empty, and the reply is a few hundred bytes, so
    // a non-blocking send writes it whole unless the client has gone.
    let sent = nix::sys::socket::send(
        connection.as_raw_fd(),
        &reply,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
    let peer_exe = peer.exe_text();
    tracing::warn!(
        peer_uid = peer.uid,
        peer_gid = peer.gid,
        peer_pid = peer.pid,
        peer_exe = peer_exe.as_str(),
        decision = "rejected",
        request_id = error.request_id.as_str(),
        outcome = error.varlink_name(),
        field = (!error.field.is_empty()).then_some(error.field.as_str()),
        rule = error.rule.as_str(),
        reply_sent = sent.is_ok(),
        duration_ms = crate::audit::elapsed_ms(accepted),
        "{message}"
    );
}
