//! Room events: what happened in a room, streamed to signaling over the control API. Some are
//! for everyone in the room; an SDP offer is addressed to one participant.

use serde::{Deserialize, Serialize};

use crate::ids::{ParticipantId, RoomId, TrackId};
use crate::media::{Codec, MediaKind};

/// What a participant may do, granted by signaling from the appointment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rights {
    pub publish: bool,
    pub subscribe: bool,
}

impl Default for Rights {
    fn default() -> Self {
        Rights {
            publish: true,
            subscribe: true,
        }
    }
}

/// Why a participant's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// Removed through the control API (left, removed by a host, session revoked).
    Removed,
    /// The room was closed.
    RoomClosed,
    /// ICE never connected, or the client went silent for too long.
    Timeout,
    /// The connection failed (ICE or DTLS).
    Failed,
    /// The WebRTC stack broke on this session's input; the session was closed to protect
    /// the others.
    InternalError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaState {
    Connected,
    Disconnected,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEvent {
    ParticipantJoined {
        participant: ParticipantId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        rights: Rights,
    },
    ParticipantLeft {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    /// The participant's media connection came up or went quiet.
    ParticipantMedia {
        participant: ParticipantId,
        state: MediaState,
    },
    TrackPublished {
        track: TrackId,
        participant: ParticipantId,
        kind: MediaKind,
        codec: Codec,
    },
    TrackEnded {
        track: TrackId,
        participant: ParticipantId,
    },
    TrackMuted {
        track: TrackId,
        participant: ParticipantId,
        muted: bool,
    },
    /// The SFU offers the participant a new set of subscriptions; answer with
    /// `POST .../sdp {"type":"answer"}`.
    Offer {
        participant: ParticipantId,
        /// The session it is for (`SessionOpened.session`): an offer of a session since
        /// replaced (a reconnect) is stale and must not reach the new one.
        #[serde(default)]
        session: u64,
        sdp: String,
    },
    /// How the participant's connection is doing (every few seconds), for its connection
    /// indicator and for metrics.
    Quality {
        participant: ParticipantId,
        #[serde(flatten)]
        quality: QualityReport,
    },
    /// Who is talking now (smoothed over a second or so); `None` when nobody is.
    DominantSpeaker {
        participant: Option<ParticipantId>,
    },
    /// A checked reading from the patient's device (see `vitals`), for the record (FHIR
    /// write-back). Signaling must never log it.
    VitalSign {
        participant: ParticipantId,
        reading: crate::vitals::Reading,
    },
    RoomClosed,
}

/// One participant's connection, as the SFU measures it over the last reporting interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// Round trip between the SFU and the participant (from RTCP reports), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Share of the participant's packets lost on the way to the SFU, percent.
    pub loss_up_pct: f64,
    /// Share of the SFU's packets the participant reports lost, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_down_pct: Option<f64>,
    /// Interarrival jitter of what the participant sends, milliseconds (worst stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    /// What the participant sends and receives, kbit/s.
    pub kbps_up: f64,
    pub kbps_down: f64,
    /// Packets the participant asked to be sent again (NACK), and the SFU's retransmissions.
    pub nacks: u64,
    pub retransmissions: u64,
    /// The bandwidth the SFU estimates towards the participant (transport-wide feedback, or
    /// REMB), kbit/s: what its video layers are chosen by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_kbps: Option<f64>,
    /// Each video the participant receives: which layer of how many, or paused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub video: Vec<ReceivedVideo>,
}

/// One received video in a quality report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedVideo {
    pub track: crate::ids::TrackId,
    pub from: ParticipantId,
    /// The quality being received, 0 the lowest, of `layers` being sent; absent when paused
    /// for bandwidth or not started yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    pub layers: usize,
    pub paused: bool,
}

impl RoomEvent {
    /// The one participant this event is for, or `None` when it is for the whole room.
    pub fn addressee(&self) -> Option<&ParticipantId> {
        match self {
            RoomEvent::Offer { participant, .. } | RoomEvent::Quality { participant, .. } => {
                Some(participant)
            }
            _ => None,
        }
    }
}

/// An event as it travels: numbered per room, so a consumer can tell when it missed some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomEventEnvelope {
    pub room: RoomId,
    pub seq: u64,
    #[serde(flatten)]
    pub event: RoomEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_a_stable_wire_form() {
        let e = RoomEventEnvelope {
            room: RoomId::new("r1").unwrap(),
            seq: 3,
            event: RoomEvent::TrackPublished {
                track: TrackId(7),
                participant: ParticipantId::new("p1").unwrap(),
                kind: MediaKind::Audio,
                codec: Codec::Opus,
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"room":"r1","seq":3,"type":"track_published","track":"t7","participant":"p1","kind":"audio","codec":"opus"}"#
        );
        assert_eq!(serde_json::from_str::<RoomEventEnvelope>(&json).unwrap(), e);
    }
}
