//! The wire types of the internal control API (JSON). Signaling, the client library and the
//! tests speak exactly these.

use serde::{Deserialize, Serialize};

use crate::events::{MediaState, Rights};
use crate::ids::{ParticipantId, RoomId, TrackId};
use crate::media::{Codec, MediaKind};
use crate::room::RoomKind;

fn consultation() -> RoomKind {
    RoomKind::Consultation
}

/// `POST /v1/rooms`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    pub room: RoomId,
    #[serde(default = "consultation")]
    pub kind: RoomKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomCreated {
    pub room: RoomId,
    pub kind: RoomKind,
    pub node: String,
    /// False when the room already existed (creating is idempotent).
    pub created: bool,
}

/// `POST /v1/rooms/{room}/participants`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenSession {
    pub participant: ParticipantId,
    /// The participant's role as signaling derived it (host, patient, interpreter,
    /// companion); passed on to the others in room events.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub rights: Rights,
}

/// Longest role label accepted.
pub const MAX_ROLE_LEN: usize = 32;

impl OpenSession {
    pub fn role_is_valid(&self) -> bool {
        self.role.as_deref().is_none_or(|r| {
            !r.is_empty()
                && r.len() <= MAX_ROLE_LEN
                && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionOpened {
    pub room: RoomId,
    pub participant: ParticipantId,
    pub node: String,
    /// True when an earlier session of the same participant was replaced (a reconnect).
    pub replaced: bool,
    /// This session's id in the room's events (`offer.session`).
    #[serde(default)]
    pub session: u64,
    /// The node's embedded TURN server, when it runs (signaling hands it to the client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<crate::turn::TurnAdvert>,
}

/// `POST /v1/rooms/{room}/participants/{participant}/sdp`, and the answer to an offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SessionDescription {
    Offer { sdp: String },
    Answer { sdp: String },
}

/// `POST .../candidates`, in the browser's `RTCIceCandidateInit` shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, rename = "sdpMid")]
    pub sdp_mid: Option<String>,
    #[serde(default, rename = "sdpMLineIndex")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, rename = "usernameFragment")]
    pub username_fragment: Option<String>,
}

/// How good a video a subscriber wants at most: what its tile on screen can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoQuality {
    Low,
    Medium,
    High,
}

impl VideoQuality {
    /// As an index into a publication's layers, lowest first (clamped to what is sent).
    pub fn rank(self) -> usize {
        match self {
            VideoQuality::Low => 0,
            VideoQuality::Medium => 1,
            VideoQuality::High => usize::MAX,
        }
    }
}

/// `POST .../participants/{p}/video`: how the participant wants one video it receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoPreference {
    pub track: TrackId,
    /// The best quality wanted (`high` when absent).
    #[serde(default)]
    pub max_quality: Option<VideoQuality>,
    /// A pinned video is reduced last when bandwidth falls.
    #[serde(default)]
    pub pinned: bool,
}

/// `POST .../mute`: a host mutes or unmutes a participant's audio or video at the SFU.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMuted {
    pub kind: MediaKind,
    pub muted: bool,
}

/// `POST /v1/rooms/{room}/vitals`: whether a host lets companions see the patient's vitals
/// (clinicians always do; see `vitals`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitalsSharing {
    pub companions: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrackInfo {
    pub track: TrackId,
    pub participant: ParticipantId,
    pub kind: MediaKind,
    pub codec: Codec,
    pub muted: bool,
    pub subscribers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub participant: ParticipantId,
    pub role: Option<String>,
    pub rights: Rights,
    pub media: MediaState,
    pub publications: Vec<TrackId>,
    pub subscriptions: usize,
    pub audio_muted: bool,
    pub video_muted: bool,
}

/// `GET /v1/rooms/{room}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomInfo {
    pub room: RoomId,
    pub kind: RoomKind,
    pub participants: Vec<ParticipantInfo>,
    pub tracks: Vec<TrackInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: usize,
    pub media_port: u16,
    pub rooms: usize,
    pub sessions: usize,
}

/// `GET /v1/node`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub announced_ip: std::net::IpAddr,
    pub rooms: usize,
    pub participants: usize,
    pub shards: Vec<ShardInfo>,
    /// Shutting down: takes no new rooms (its rooms run to their end).
    #[serde(default)]
    pub draining: bool,
    /// The node's embedded TURN server, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<crate::turn::TurnAdvert>,
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
