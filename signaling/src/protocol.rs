//! The session protocol on `/v1/ws`: JSON messages tagged by `type`, documented in
//! `signaling/PROTOCOL.md`. Unknown types and unknown fields are refused, so a client
//! cannot smuggle a target (say, another participant's SDP) past the server.

use metaclinic_sfu::room::RoomKind;
use serde::{Deserialize, Serialize};

use crate::policy::Role;

/// The protocol version this server speaks.
pub const VERSION: u32 = 1;

/// An SDP description as browsers write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    #[serde(rename = "type")]
    pub kind: SdpKind,
    pub sdp: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpKind {
    Offer,
    Answer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The first message: ask to join an appointment's consultation.
    Join {
        /// The protocol version the client speaks.
        v: u32,
        /// The FHIR Appointment id (or `Appointment/<id>`).
        appointment: String,
        /// The identity provider's JWT.
        token: String,
        /// A host's interpreter invite, for an unassigned interpreter slot.
        #[serde(default)]
        invite: Option<String>,
    },
    /// The client's offer or its answer to the SFU's offer.
    Sdp {
        description: Description,
    },
    /// A trickled ICE candidate (browser `RTCIceCandidateInit`).
    Ice {
        candidate: serde_json::Value,
    },
    /// How this client shows a video it receives: the best quality its tile needs, and
    /// whether it is pinned (reduced last when the client's bandwidth falls).
    VideoPreference {
        track: String,
        #[serde(default)]
        max_quality: Option<metaclinic_sfu::control::api::VideoQuality>,
        #[serde(default)]
        pinned: bool,
    },
    /// Host: let someone in from the lobby.
    Admit {
        participant: String,
    },
    /// Host: turn someone away from the lobby.
    Deny {
        participant: String,
    },
    /// Host: send someone in the call back to the lobby.
    ReturnToLobby {
        participant: String,
    },
    /// Host: mute or unmute someone's audio or video (enforced by the SFU).
    Mute {
        participant: String,
        kind: MediaKind,
        muted: bool,
    },
    /// Host: remove someone from the consultation.
    Remove {
        participant: String,
    },
    /// Host: end the consultation for everyone.
    End,
    /// Host: extend past the scheduled end.
    Extend {
        minutes: u32,
    },
    /// Host: create a single-use invite for the appointment's unassigned interpreter slot.
    InviteInterpreter,
    Leave,
    Ping,
}

/// Someone in the consultation, as others see them: a FHIR reference and a role, no names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub participant: String,
    pub role: Role,
    pub state: MemberState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    Lobby,
    InCall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A host ended it for everyone.
    HostEnded,
    /// The appointment's end plus grace (and any extension) passed.
    TimeOver,
    /// The booking system says the appointment is no longer on.
    Cancelled,
    /// The service is shutting down; reconnect.
    ServiceRestart,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Waiting for a host to admit.
    Lobby {
        v: u32,
        role: Role,
        participant: String,
    },
    /// In the consultation: negotiate media now (send an offer).
    Joined {
        v: u32,
        role: Role,
        participant: String,
        /// When the call stops (appointment end plus grace and extensions), RFC 3339.
        closes_at: String,
        members: Vec<Member>,
        /// `consultation`, or `shared`: a room with spatial audio (one stereo mix of
        /// everyone, placed by their avatars' poses on the data channel).
        room_kind: RoomKind,
    },
    /// Hosts: who is waiting.
    LobbyChanged {
        waiting: Vec<Member>,
    },
    /// Everyone in the call: who is here now.
    MembersChanged {
        members: Vec<Member>,
    },
    /// An SDP from the SFU: an answer to the client's offer, or an offer of new tracks.
    Sdp {
        description: Description,
    },
    TrackPublished {
        participant: String,
        track: String,
        kind: String,
    },
    TrackEnded {
        participant: String,
        track: String,
    },
    TrackMuted {
        participant: String,
        track: String,
        muted: bool,
    },
    /// A host muted or unmuted this client.
    MutedByHost {
        kind: MediaKind,
        muted: bool,
    },
    /// The consultation ends soon.
    Warning {
        code: String,
        closes_at: String,
    },
    Extended {
        closes_at: String,
    },
    /// A host's invite: pass `code` to the interpreter, who joins with it before `expires_at`.
    Invite {
        code: String,
        expires_at: String,
    },
    /// A host turned this client away, or removed it; the session ends.
    Denied {
        code: String,
    },
    Removed,
    /// Back to the lobby by a host.
    ReturnedToLobby,
    Ended {
        reason: EndReason,
    },
    /// Another connection of the same person took over this session.
    Replaced,
    /// Reconnect after this long (the service is draining).
    Reconnect {
        after_ms: u64,
    },
    Error {
        code: String,
        message: String,
    },
    /// Who is talking now (`null`: nobody), from the SFU's audio levels.
    ActiveSpeaker {
        participant: Option<String>,
    },
    /// Your own connection as the SFU measures it, every few seconds.
    Quality(metaclinic_sfu::events::QualityReport),
    Pong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_strictly() {
        let join: ClientMessage =
            serde_json::from_str(r#"{"type":"join","v":1,"appointment":"tele-1","token":"x.y.z"}"#)
                .unwrap();
        assert!(matches!(join, ClientMessage::Join { invite: None, .. }));
        let sdp: ClientMessage =
            serde_json::from_str(r#"{"type":"sdp","description":{"type":"offer","sdp":"v=0"}}"#)
                .unwrap();
        assert!(matches!(sdp, ClientMessage::Sdp { .. }));
        // A target for SDP is not part of the protocol: refused, not ignored.
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"sdp","participant":"Patient/x","description":{"type":"offer","sdp":"v=0"}}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"become_host"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"end"}"#).is_ok());
    }

    #[test]
    fn server_messages_have_a_stable_wire_form() {
        let m = ServerMessage::Ended {
            reason: EndReason::HostEnded,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"ended","reason":"host_ended"}"#
        );
        let m = ServerMessage::Lobby {
            v: 1,
            role: Role::Patient,
            participant: "Patient/p".into(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"lobby","v":1,"role":"patient","participant":"Patient/p"}"#
        );
    }
}
