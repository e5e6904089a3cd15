//! A client's frames as the session sees them ([`first_frame`], [`read`]), and how the
//! server ends a WebSocket: a close frame whose code says why ([`send_close`]), then a short
//! wait for the client's own ([`linger`]).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{SinkExt, StreamExt};

use super::{FrameSink, FrameStream};
use crate::protocol::{self, ClientMessage, Close, Refusal, close_code};

/// The client's first frame (pings skipped), or none within the join timeout.
pub enum FirstFrame {
    TimedOut,
    Frame(Option<Result<Message, axum::Error>>),
}

impl FirstFrame {
    /// The appointment a well-formed join asks for (where its consultation runs decides
    /// where the session runs).
    /// The appointment id and the token of a well-formed join.
    pub fn joins(&self) -> Option<(String, String)> {
        let FirstFrame::Frame(Some(Ok(Message::Text(t)))) = self else {
            return None;
        };
        match protocol::parse_client(t) {
            Ok(ClientMessage::Join {
                appointment, token, ..
            }) => crate::booking::appointment_id(&appointment).map(|id| (id.to_owned(), token)),
            _ => None,
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            FirstFrame::Frame(Some(Ok(Message::Text(t)))) => Some(t.as_str()),
            _ => None,
        }
    }
}

/// Read the first frame a client sends, skipping pings, within `timeout`.
pub async fn first_frame(stream: &mut FrameStream, timeout: Duration) -> FirstFrame {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return FirstFrame::TimedOut,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(frame) => return FirstFrame::Frame(frame),
        }
    }
}

/// The bytes a frame carries (what the byte budget counts).
pub(crate) fn size(frame: &Option<Result<Message, axum::Error>>) -> usize {
    match frame {
        Some(Ok(Message::Text(t))) => t.len(),
        Some(Ok(Message::Binary(b))) => b.len(),
        _ => 0,
    }
}

/// What an incoming frame is to the session.
pub(crate) enum Incoming {
    Message(ClientMessage),
    /// Not a message: refused with this code (the session carries on once joined).
    Bad(Refusal),
    /// Over the size limit (tungstenite refuses it before we see it): the session ends.
    TooLarge,
    /// A frame the WebSocket layer could not read: the session ends.
    Broken,
    /// A WebSocket ping or pong (answered by the WebSocket layer).
    Skip,
    Closed,
}

pub(crate) fn read(frame: Option<Result<Message, axum::Error>>) -> Incoming {
    match frame {
        None | Some(Ok(Message::Close(_))) => Incoming::Closed,
        // tungstenite's capacity errors read "Space limit exceeded: Message too long: ..."
        // (tests/protocol_conformance.rs checks that an oversized message still gets 1009).
        Some(Err(e)) if e.to_string().starts_with("Space limit exceeded") => Incoming::TooLarge,
        Some(Err(_)) => Incoming::Broken,
        Some(Ok(Message::Text(t))) => match protocol::parse_client(&t) {
            Ok(m) => Incoming::Message(m),
            Err(r) => Incoming::Bad(r),
        },
        Some(Ok(Message::Binary(_))) => Incoming::Bad(Refusal {
            code: "bad_message",
            message: "binary messages are not part of the protocol".into(),
        }),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Skip,
    }
}

/// End the WebSocket with `close` (the client may already be gone).
pub(crate) async fn send_close(sink: &mut FrameSink, close: Close) {
    let frame = CloseFrame {
        code: close.code,
        reason: close.reason.into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

/// How long the server waits for the client's close frame after sending its own.
const LINGER: Duration = Duration::from_millis(500);

/// After our close frame `close`, read until the client's (the closing handshake), for a
/// short while: a socket closed with the client's data unread is reset, and a reset can
/// make the client lose our last messages and the close frame itself.
pub(crate) async fn linger(stream: &mut FrameStream, close: Close) {
    let deadline = tokio::time::Instant::now() + LINGER;
    if matches!(
        close.code,
        close_code::MESSAGE_TOO_BIG | close_code::PROTOCOL_ERROR
    ) {
        // The stream ended at the frame it could not read (what is left of it stays
        // unread): give the client the time to read what we sent before the reset.
        tokio::time::sleep_until(deadline).await;
        return;
    }
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(frame: Option<Result<Message, axum::Error>>) -> &'static str {
        match read(frame) {
            Incoming::Message(m) => m.type_name(),
            Incoming::Bad(r) => r.code,
            Incoming::TooLarge => "too_large",
            Incoming::Broken => "broken",
            Incoming::Skip => "skip",
            Incoming::Closed => "closed",
        }
    }

    #[test]
    fn each_kind_of_frame_is_told_apart() {
        let text = |t: &str| Some(Ok(Message::Text(t.to_owned().into())));
        let error = |e: &str| Some(Err(axum::Error::new(std::io::Error::other(e.to_owned()))));
        assert_eq!(code(text(r#"{"type":"ping"}"#)), "ping");
        assert_eq!(code(text(r#"{"type":"ping","x":1}"#)), "bad_message");
        assert_eq!(
            code(Some(Ok(Message::Binary(vec![1].into())))),
            "bad_message"
        );
        assert_eq!(code(Some(Ok(Message::Ping(vec![].into())))), "skip");
        assert_eq!(code(Some(Ok(Message::Close(None)))), "closed");
        assert_eq!(code(None), "closed");
        // As tungstenite words an oversized message; anything else it refuses is broken.
        assert_eq!(
            code(error(
                "Space limit exceeded: Message too long: 70000 > 65536"
            )),
            "too_large"
        );
        assert_eq!(
            code(error("WebSocket protocol error: bad opcode")),
            "broken"
        );
    }
}
