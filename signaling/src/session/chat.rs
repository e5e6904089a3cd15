//! A member's chat line, and a host allowing or stopping the chat (PROTOCOL.md, "Chat").
//! The text goes to the consultation and from there to the people in the call; here it is
//! neither logged nor audited: the audit records that the member sent a line, no more.

use std::time::Instant;

use super::{Joined, Sink, host, send_error};
use crate::protocol::ClientMessage;
use crate::state::AppState;

/// Carry out `chat` or `allow_chat`.
pub(super) async fn handle(deps: &AppState, sink: &mut Sink, j: &Joined, msg: ClientMessage) {
    let c = &j.consultation;
    match msg {
        ClientMessage::Chat { text } => {
            match c.chat(&j.participant, &text, Instant::now(), deps.clock.now()) {
                Ok(_) => {
                    deps.metrics.chat_messages.inc();
                    let _ = deps.audit.record(j.event("chat", "ok", None, None)).await;
                }
                Err(refusal) => {
                    let code = refusal.code();
                    j.refused(deps, code).await;
                    send_error(sink, code, refusal.to_string()).await;
                }
            }
        }
        ClientMessage::AllowChat { allowed } => {
            let action = if allowed { "chat_on" } else { "chat_off" };
            let r = c.allow_chat(&j.participant, allowed);
            host::done(deps, sink, j, action, r, "").await;
        }
        other => {
            // A broken invariant, not the client: the session passes only chat messages.
            debug_assert!(false, "not a chat message: {}", other.type_name());
        }
    }
}
