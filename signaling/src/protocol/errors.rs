//! What the server says when it refuses something, and how it closes the WebSocket: the
//! `error` codes of PROTOCOL.md's "Errors" table and the close codes of its "Closing" table.
//! Unit tests hold both tables to these lists, so the document and the code agree.

use super::{EndReason, ServerMessage};

/// Every `code` an `error` message can carry.
pub const ERROR_CODES: &[&str] = &[
    // Any message.
    "malformed_json",
    "bad_message",
    "unknown_type",
    "message_too_large",
    "rate_limited",
    "flooding",
    // Joining: identity.
    "token_missing",
    "token_malformed",
    "algorithm_not_allowed",
    "signature_invalid",
    "token_expired",
    "token_not_yet_valid",
    "issuer_invalid",
    "audience_invalid",
    "unknown_key",
    "fhir_user_missing",
    "fhir_user_invalid",
    "jwks_unavailable",
    // Joining: the appointment and the policy.
    "appointment_not_found",
    "booking_unavailable",
    "booking_invalid",
    "appointment_status",
    "no_time_window",
    "too_early",
    "too_late",
    "not_a_participant",
    "participant_declined",
    "information_only",
    "unsupported_participant_type",
    "invite_invalid",
    // Joining: the consultation and the service.
    "removed_by_host",
    "consultation_ended",
    "sfu_unavailable",
    "media_server_busy",
    "room_full",
    "audit_unavailable",
    "state_unavailable",
    "join_timeout",
    "join_first",
    "unsupported_version",
    "already_joined",
    // Media.
    "not_in_call",
    "glare",
    "invalid_sdp",
    "no_pending_offer",
    "invalid_candidate",
    "track_not_found",
    "media_lost",
    // Host controls.
    "not_host",
    "no_such_participant",
    "wrong_presence",
    "extension_limit",
    "no_interpreter_slot",
    "ended",
    // Chat.
    "chat_too_long",
    "chat_invalid",
    "chat_rate_limited",
    "chat_off",
];

/// Refusals caused by the service or what it depends on, not by the client: the session
/// closes with 1011 and trying again later may work.
const SERVER_SIDE: &[&str] = &[
    "jwks_unavailable",
    "booking_unavailable",
    "booking_invalid",
    "sfu_unavailable",
    "media_server_busy",
    "audit_unavailable",
    "state_unavailable",
];

/// WebSocket close codes (RFC 6455 §7.4.1) the server uses.
pub mod close_code {
    /// The session is over as intended: left, replaced, the consultation ended.
    pub const NORMAL: u16 = 1000;
    /// This server goes away: reconnect (a drain, a room moved, a restart).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame the WebSocket layer could not read (not a valid WebSocket frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Refused: by policy (join refusals, a host's decision) or for flooding.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message over the size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The service or one of its dependencies failed.
    pub const SERVER_ERROR: u16 = 1011;
}

/// How the server ends a WebSocket: the close frame's code and its short reason (the
/// `error` code or the message type that came last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

impl Close {
    /// The client sent `leave`.
    pub const LEFT: Close = Close {
        code: close_code::NORMAL,
        reason: "leave",
    };
    /// A frame the WebSocket layer refused (other than for its size).
    pub const BROKEN_FRAME: Close = Close {
        code: close_code::PROTOCOL_ERROR,
        reason: "protocol_error",
    };
    /// The session lost its consultation's mailbox: a broken invariant, not the client.
    pub const INTERNAL: Close = Close {
        code: close_code::SERVER_ERROR,
        reason: "internal",
    };

    /// The close after an `error` with `code` that ends the session.
    pub fn after_error(code: &str) -> Close {
        let reason = ERROR_CODES
            .iter()
            .copied()
            .find(|c| *c == code)
            .unwrap_or("error");
        let code = match reason {
            "message_too_large" => close_code::MESSAGE_TOO_BIG,
            r if SERVER_SIDE.contains(&r) => close_code::SERVER_ERROR,
            _ => close_code::POLICY_VIOLATION,
        };
        Close { code, reason }
    }

    /// The close after `msg`, the last message of a session the server ends.
    pub fn after(msg: &ServerMessage) -> Close {
        let (code, reason) = match msg {
            ServerMessage::Error { code, .. } => return Close::after_error(code),
            ServerMessage::Reconnect { .. } => (close_code::GOING_AWAY, "reconnect"),
            ServerMessage::Ended {
                reason: EndReason::ServiceRestart,
            } => (close_code::GOING_AWAY, "ended"),
            ServerMessage::Ended { .. } => (close_code::NORMAL, "ended"),
            ServerMessage::Replaced => (close_code::NORMAL, "replaced"),
            ServerMessage::Denied { .. } => (close_code::POLICY_VIOLATION, "denied"),
            ServerMessage::Removed => (close_code::POLICY_VIOLATION, "removed"),
            _ => (close_code::NORMAL, "normal"),
        };
        Close { code, reason }
    }
}

/// Whether `code` is one PROTOCOL.md documents (for a debug check where errors are sent).
pub fn is_documented(code: &str) -> bool {
    ERROR_CODES.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consultation::ActionError;
    use crate::identity::AuthError;
    use crate::policy::Denial;
    use crate::protocol::tests::{backticked, doc_table as table};

    #[test]
    fn the_error_table_lists_exactly_the_codes_the_server_sends() {
        let rows = table("Errors");
        let documented: Vec<String> = rows.iter().map(|r| backticked(&r[0])[0].clone()).collect();
        let mut sorted = documented.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            documented.len(),
            "a code twice: {documented:?}"
        );
        for code in ERROR_CODES {
            assert!(
                documented.contains(&code.to_string()),
                "{code} is not in PROTOCOL.md"
            );
        }
        for code in &documented {
            assert!(is_documented(code), "PROTOCOL.md lists {code}, never sent");
        }
        // Each row says what happens to the connection, and closes with the code it says.
        for row in &rows {
            let code = backticked(&row[0])[0].clone();
            let then = &row[2];
            assert!(
                then.contains("stays open") || then.contains("closes"),
                "{code}: {then}"
            );
            if then.contains("closes") {
                let expected = Close::after_error(&code).code.to_string();
                assert!(
                    then.contains(&expected),
                    "{code} closes with {expected}: {then}"
                );
            }
        }
    }

    #[test]
    fn every_code_of_the_deciding_modules_is_documented() {
        use AuthError::*;
        let auth = [
            TokenMissing,
            TokenMalformed,
            AlgorithmNotAllowed,
            SignatureInvalid,
            TokenExpired,
            TokenNotYetValid,
            IssuerInvalid,
            AudienceInvalid,
            UnknownKey,
            FhirUserMissing,
            FhirUserInvalid,
            JwksUnavailable,
        ];
        let denials = [
            Denial::AppointmentStatus,
            Denial::NoTimeWindow,
            Denial::TooEarly,
            Denial::TooLate,
            Denial::NotAParticipant,
            Denial::ParticipantDeclined,
            Denial::InformationOnly,
            Denial::UnsupportedParticipantType,
            Denial::InviteInvalid,
        ];
        let actions = [
            ActionError::NotHost,
            ActionError::NoSuchParticipant,
            ActionError::WrongPresence,
            ActionError::ExtensionLimit,
            ActionError::NoInterpreterSlot,
            ActionError::Ended,
        ];
        let booking = [
            crate::booking::BookingError::NotFound,
            crate::booking::BookingError::Unavailable(String::new()),
            crate::booking::BookingError::Invalid(String::new()),
        ];
        use crate::consultation::chat::ChatRefusal;
        let chat = [
            ChatRefusal::TooLong,
            ChatRefusal::Invalid,
            ChatRefusal::RateLimited,
            ChatRefusal::Off,
            ChatRefusal::NotInCall,
        ];
        let codes = auth
            .iter()
            .map(AuthError::code)
            .chain(chat.iter().map(ChatRefusal::code))
            .chain(denials.iter().map(Denial::code))
            .chain(actions.iter().map(ActionError::code))
            .chain(booking.iter().map(|b| b.code()));
        for code in codes {
            assert!(is_documented(code), "{code} is sent but not in PROTOCOL.md");
        }
    }

    #[test]
    fn the_closing_table_matches_the_codes_used() {
        let rows = table("Closing");
        let codes: Vec<u16> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
        for c in [
            close_code::NORMAL,
            close_code::GOING_AWAY,
            close_code::PROTOCOL_ERROR,
            close_code::POLICY_VIOLATION,
            close_code::MESSAGE_TOO_BIG,
            close_code::SERVER_ERROR,
        ] {
            assert!(codes.contains(&c), "close code {c} is not in PROTOCOL.md");
        }
        assert_eq!(codes.len(), 6, "{codes:?}");
    }

    #[test]
    fn the_close_follows_the_last_message() {
        let err = |c: &str| ServerMessage::Error {
            code: c.into(),
            message: String::new(),
        };
        assert_eq!(Close::after(&err("token_expired")).code, 1008);
        assert_eq!(Close::after(&err("token_expired")).reason, "token_expired");
        assert_eq!(Close::after(&err("booking_unavailable")).code, 1011);
        assert_eq!(Close::after(&err("message_too_large")).code, 1009);
        assert_eq!(Close::after(&err("flooding")).code, 1008);
        assert_eq!(
            Close::after(&ServerMessage::Reconnect { after_ms: 5 }).code,
            1001
        );
        assert_eq!(Close::after(&ServerMessage::Replaced).code, 1000);
        let ended = |reason| ServerMessage::Ended { reason };
        assert_eq!(Close::after(&ended(EndReason::HostEnded)).code, 1000);
        assert_eq!(Close::after(&ended(EndReason::ServiceRestart)).code, 1001);
        assert_eq!(Close::after(&ServerMessage::Removed).code, 1008);
        // A reason never carries what the client sent: unknown codes are just "error".
        assert_eq!(Close::after(&err("<script>")).reason, "error");
    }
}
