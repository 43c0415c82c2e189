//! Writing pgwire messages into the console's output buffer, for the
//! session loop and the `SHOW` tables alike.

use bytes::BytesMut;
use pgwire::messages::Message;

/// Appends `message`. pgwire refuses only messages over its length limits
/// (1 GiB); the console's are far below, so a failure is logged, not sent.
pub(super) fn encode<M: Message>(out: &mut BytesMut, message: &M) {
    if let Err(e) = message.encode(out) {
        tracing::error!(error = %e, "admin console message not encoded");
    }
}
