//! Errors of the control plane, each with a stable code (callers branch on it) and the HTTP
//! status the control API answers with.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("missing or wrong service credential")]
    Unauthorized,
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("no such room")]
    RoomNotFound,
    #[error("no such participant in this room")]
    ParticipantNotFound,
    #[error("the participant receives no such video track")]
    TrackNotFound,
    #[error("the room is full")]
    RoomFull,
    #[error("this node takes no more rooms")]
    NodeFull,
    #[error("this node's media threads are too busy for more: place the room elsewhere")]
    Overloaded,
    #[error("this node is draining: it takes no new rooms; place the room on another node")]
    Draining,
    #[error("unsupported room kind")]
    UnsupportedRoomKind,
    #[error("the room exists with another kind")]
    RoomKindMismatch,
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    #[error("the SFU's own offer is waiting for an answer; answer it, then offer again")]
    Glare,
    #[error("no offer of the SFU is waiting for an answer")]
    NoPendingOffer,
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
    #[error("the node is shutting down")]
    Unavailable,
    #[error("internal error")]
    Internal,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body too large")]
    PayloadTooLarge,
}

impl ControlError {
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::Unauthorized => "unauthorized",
            ControlError::BadRequest(_) => "bad_request",
            ControlError::RoomNotFound => "room_not_found",
            ControlError::ParticipantNotFound => "participant_not_found",
            ControlError::TrackNotFound => "track_not_found",
            ControlError::RoomFull => "room_full",
            ControlError::NodeFull => "node_full",
            ControlError::Overloaded => "overloaded",
            ControlError::Draining => "draining",
            ControlError::UnsupportedRoomKind => "unsupported_room_kind",
            ControlError::RoomKindMismatch => "room_kind_mismatch",
            ControlError::InvalidSdp(_) => "invalid_sdp",
            ControlError::Glare => "glare",
            ControlError::NoPendingOffer => "no_pending_offer",
            ControlError::InvalidCandidate(_) => "invalid_candidate",
            ControlError::Unavailable => "unavailable",
            ControlError::Internal => "internal",
            ControlError::NotFound => "not_found",
            ControlError::MethodNotAllowed => "method_not_allowed",
            ControlError::PayloadTooLarge => "payload_too_large",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ControlError::Unauthorized => 401,
            ControlError::BadRequest(_)
            | ControlError::InvalidSdp(_)
            | ControlError::InvalidCandidate(_)
            | ControlError::UnsupportedRoomKind => 400,
            ControlError::RoomNotFound
            | ControlError::ParticipantNotFound
            | ControlError::TrackNotFound
            | ControlError::NotFound => 404,
            ControlError::MethodNotAllowed => 405,
            ControlError::RoomFull
            | ControlError::Glare
            | ControlError::NoPendingOffer
            | ControlError::RoomKindMismatch => 409,
            ControlError::PayloadTooLarge => 413,
            ControlError::NodeFull
            | ControlError::Overloaded
            | ControlError::Draining
            | ControlError::Unavailable => 503,
            ControlError::Internal => 500,
        }
    }
}
