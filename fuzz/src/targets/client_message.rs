//! The session protocol's client messages (`signaling/PROTOCOL.md`): every WebSocket text
//! frame goes through `parse_client`, at most `http.max_message_bytes` (64 KiB) of it.

use metaclinic_signaling::protocol::{ClientMessage, errors, parse_client};

use super::{Target, outcome, text};
use crate::mutate::Grammar;

const DICT: &[&[u8]] = &[
    b"type",
    b"v",
    b"appointment",
    b"token",
    b"invite",
    b"description",
    b"sdp",
    b"offer",
    b"answer",
    b"ice",
    b"candidate",
    b"sdpMid",
    b"sdpMLineIndex",
    b"video_preference",
    b"track",
    b"max_quality",
    b"pinned",
    b"low",
    b"medium",
    b"high",
    b"admit",
    b"deny",
    b"return_to_lobby",
    b"mute",
    b"participant",
    b"kind",
    b"audio",
    b"video",
    b"muted",
    b"remove",
    b"end",
    b"extend",
    b"minutes",
    b"invite_interpreter",
    b"leave",
    b"ping",
    b"join",
];

pub fn target() -> Target {
    Target {
        name: "client-message",
        entry: "signaling::protocol::parse_client",
        grammar: Grammar::Json,
        max_len: 64 * 1024,
        dict: DICT,
        seeds: Vec::new,
        build: || {
            Box::new(|data: &[u8]| {
                let frame = text(data);
                match parse_client(&frame) {
                    Ok(msg) => {
                        assert!(ClientMessage::TYPES.contains(&msg.type_name()));
                        // What the server accepted, written back, is accepted as the same.
                        let again = serde_json::to_string(&msg)
                            .expect("invariant: a parsed message serialises");
                        assert_eq!(
                            parse_client(&again).as_ref(),
                            Ok(&msg),
                            "invariant: a parsed message survives a round trip ({again})"
                        );
                        outcome(&["ok", msg.type_name()])
                    }
                    Err(refusal) => {
                        assert!(
                            errors::is_documented(refusal.code),
                            "invariant: refusal code {} is not in PROTOCOL.md",
                            refusal.code
                        );
                        outcome(&[refusal.code, &refusal.message])
                    }
                }
            })
        },
    }
}
