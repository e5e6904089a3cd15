//! The session protocol on `/v1/ws`: JSON messages tagged by `type`, documented in
//! `signaling/PROTOCOL.md`. Unknown types, unknown fields and keys given twice are refused
//! ([`parse_client`], the one place client frames are read), so a client cannot smuggle a
//! target (say, another participant's SDP) past the server. [`errors`] lists the `error`
//! codes and close codes; unit tests hold PROTOCOL.md's tables to this module.

use serde::{Deserialize, Deserializer, Serialize};

use crate::policy::Role;

pub mod errors;
pub mod media;
mod parse;

pub use media::{Quality, RoomKind, VideoQuality};

pub use crate::ice::IceServer;
pub use errors::{Close, ERROR_CODES, close_code};
pub use parse::{Refusal, parse_client};

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
    Sdp { description: Description },
    /// A trickled ICE candidate (browser `RTCIceCandidateInit`).
    Ice { candidate: serde_json::Value },
    /// How this client shows a video it receives: the best quality its tile needs, and
    /// whether it is pinned (reduced last when the client's bandwidth falls).
    VideoPreference {
        track: String,
        #[serde(default)]
        max_quality: Option<VideoQuality>,
        #[serde(default)]
        pinned: bool,
    },
    /// Host: let someone in from the lobby.
    Admit { participant: String },
    /// Host: turn someone away from the lobby.
    Deny { participant: String },
    /// Host: send someone in the call back to the lobby.
    ReturnToLobby { participant: String },
    /// Host: mute or unmute someone's audio or video (enforced by the SFU).
    Mute {
        participant: String,
        kind: MediaKind,
        muted: bool,
    },
    /// Host: remove someone from the consultation.
    Remove { participant: String },
    /// Host: whether companions see the patient's vitals too (clinicians always do).
    ShareVitals { companions: bool },
    /// In the call: a line of text for everyone in the call (PROTOCOL.md, "Chat").
    Chat { text: String },
    /// Host: allow the call's text chat, or stop it.
    AllowChat { allowed: bool },
    /// Host: end the consultation for everyone.
    #[serde(deserialize_with = "no_fields")]
    End,
    /// Host: extend past the scheduled end.
    Extend { minutes: u32 },
    /// Host: create a single-use invite for the appointment's unassigned interpreter slot.
    #[serde(deserialize_with = "no_fields")]
    InviteInterpreter,
    /// Leave on purpose (no reconnect grace).
    #[serde(deserialize_with = "no_fields")]
    Leave,
    #[serde(deserialize_with = "no_fields")]
    Ping,
}

/// The field-less messages take no fields. serde ignores extra fields on the unit variants
/// of an internally tagged enum whatever `deny_unknown_fields` says, so `{"type": "ping",
/// "x": 1}` would pass; this refuses it like any other unknown field.
fn no_fields<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoFields {}
    NoFields::deserialize(d).map(|_| ())
}

impl ClientMessage {
    /// Every `type` a client may send.
    pub const TYPES: &[&str] = &[
        "join",
        "sdp",
        "ice",
        "video_preference",
        "admit",
        "deny",
        "return_to_lobby",
        "mute",
        "remove",
        "share_vitals",
        "chat",
        "allow_chat",
        "end",
        "extend",
        "invite_interpreter",
        "leave",
        "ping",
    ];

    /// This message's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Sdp { .. } => "sdp",
            ClientMessage::Ice { .. } => "ice",
            ClientMessage::VideoPreference { .. } => "video_preference",
            ClientMessage::Admit { .. } => "admit",
            ClientMessage::Deny { .. } => "deny",
            ClientMessage::ReturnToLobby { .. } => "return_to_lobby",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::Remove { .. } => "remove",
            ClientMessage::ShareVitals { .. } => "share_vitals",
            ClientMessage::Chat { .. } => "chat",
            ClientMessage::AllowChat { .. } => "allow_chat",
            ClientMessage::End => "end",
            ClientMessage::Extend { .. } => "extend",
            ClientMessage::InviteInterpreter => "invite_interpreter",
            ClientMessage::Leave => "leave",
            ClientMessage::Ping => "ping",
        }
    }
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
        /// The appointment's booked start and end, RFC 3339 in UTC (clients show them in
        /// the patient's own time zone).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        starts_at: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ends_at: Option<String>,
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
        /// STUN/TURN servers for the peer connection (`RTCIceServer`s), with credentials.
        #[serde(default)]
        ice_servers: Vec<IceServer>,
        /// Whether the call's text chat is on (a host can stop it).
        #[serde(default = "chat_on")]
        chat_allowed: bool,
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
    Quality(Quality),
    Pong,
    /// A chat line from someone in the call (the sender too hears it), to everyone in it.
    Chat {
        from: String,
        role: Role,
        text: String,
        /// When the server passed it on, RFC 3339 in UTC.
        sent_at: String,
    },
    /// A host allowed the chat, or stopped it.
    ChatAllowed {
        allowed: bool,
    },
}

/// A time as the protocol writes it: RFC 3339 in UTC, to the second.
pub fn utc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A `joined` without `chat_allowed` (an older server) has the chat on.
fn chat_on() -> bool {
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The rows of the first markdown table under the `## {heading}` of PROTOCOL.md (or
    /// of every table in that section), header left out, cells trimmed.
    pub(crate) fn doc_table(heading: &str) -> Vec<Vec<String>> {
        let doc = include_str!("../PROTOCOL.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with(heading))
            .unwrap_or_else(|| panic!("PROTOCOL.md has no section {heading}"));
        let mut rows = Vec::new();
        let mut header = true;
        for line in section.lines() {
            if !line.starts_with('|') {
                header = true;
                continue;
            }
            if line.starts_with("|---") {
                continue;
            }
            if std::mem::take(&mut header) {
                continue;
            }
            let cells = line.trim().trim_matches('|').split(" | ");
            rows.push(cells.map(|c| c.trim().to_owned()).collect());
        }
        rows
    }

    /// The `code` spans of a markdown cell.
    pub(crate) fn backticked(cell: &str) -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    impl ClientMessage {
        /// The smallest valid message of type `t`.
        pub(crate) fn sample(t: &str) -> ClientMessage {
            let p = || "Patient/p".to_owned();
            match t {
                "join" => ClientMessage::Join {
                    v: VERSION,
                    appointment: "a".into(),
                    token: "t".into(),
                    invite: None,
                },
                "sdp" => ClientMessage::Sdp {
                    description: Description {
                        kind: SdpKind::Offer,
                        sdp: "v=0".into(),
                    },
                },
                "ice" => ClientMessage::Ice {
                    candidate: serde_json::json!({ "candidate": "" }),
                },
                "video_preference" => ClientMessage::VideoPreference {
                    track: "t1".into(),
                    max_quality: None,
                    pinned: false,
                },
                "admit" => ClientMessage::Admit { participant: p() },
                "deny" => ClientMessage::Deny { participant: p() },
                "return_to_lobby" => ClientMessage::ReturnToLobby { participant: p() },
                "mute" => ClientMessage::Mute {
                    participant: p(),
                    kind: MediaKind::Audio,
                    muted: true,
                },
                "remove" => ClientMessage::Remove { participant: p() },
                "share_vitals" => ClientMessage::ShareVitals { companions: true },
                "chat" => ClientMessage::Chat { text: "hi".into() },
                "allow_chat" => ClientMessage::AllowChat { allowed: false },
                "end" => ClientMessage::End,
                "extend" => ClientMessage::Extend { minutes: 5 },
                "invite_interpreter" => ClientMessage::InviteInterpreter,
                "leave" => ClientMessage::Leave,
                "ping" => ClientMessage::Ping,
                other => panic!("no sample of {other}"),
            }
        }
    }

    /// One of each server message (the match makes a new variant fail to compile here).
    fn server_samples() -> Vec<ServerMessage> {
        let v = vec![
            ServerMessage::Lobby {
                v: 1,
                role: Role::Patient,
                participant: "Patient/p".into(),
                starts_at: None,
                ends_at: None,
            },
            ServerMessage::Joined {
                v: 1,
                role: Role::Host,
                participant: "Practitioner/d".into(),
                closes_at: "2026-01-01T00:00:00Z".into(),
                members: vec![],
                room_kind: RoomKind::Consultation,
                ice_servers: vec![],
                chat_allowed: true,
            },
            ServerMessage::LobbyChanged { waiting: vec![] },
            ServerMessage::MembersChanged { members: vec![] },
            ServerMessage::Sdp {
                description: Description {
                    kind: SdpKind::Offer,
                    sdp: "v=0".into(),
                },
            },
            ServerMessage::TrackPublished {
                participant: "p".into(),
                track: "t1".into(),
                kind: "audio".into(),
            },
            ServerMessage::TrackEnded {
                participant: "p".into(),
                track: "t1".into(),
            },
            ServerMessage::TrackMuted {
                participant: "p".into(),
                track: "t1".into(),
                muted: true,
            },
            ServerMessage::MutedByHost {
                kind: MediaKind::Audio,
                muted: true,
            },
            ServerMessage::Warning {
                code: "ending_soon".into(),
                closes_at: String::new(),
            },
            ServerMessage::Extended {
                closes_at: String::new(),
            },
            ServerMessage::Invite {
                code: String::new(),
                expires_at: String::new(),
            },
            ServerMessage::Denied {
                code: "denied_by_host".into(),
            },
            ServerMessage::Removed,
            ServerMessage::ReturnedToLobby,
            ServerMessage::Ended {
                reason: EndReason::HostEnded,
            },
            ServerMessage::Replaced,
            ServerMessage::Reconnect { after_ms: 0 },
            ServerMessage::Error {
                code: "bad_message".into(),
                message: String::new(),
            },
            ServerMessage::ActiveSpeaker { participant: None },
            ServerMessage::Quality(Quality::default()),
            ServerMessage::Pong,
            ServerMessage::Chat {
                from: "Patient/p".into(),
                role: Role::Patient,
                text: "hi".into(),
                sent_at: String::new(),
            },
            ServerMessage::ChatAllowed { allowed: false },
        ];
        for m in &v {
            match m {
                ServerMessage::Lobby { .. }
                | ServerMessage::Joined { .. }
                | ServerMessage::LobbyChanged { .. }
                | ServerMessage::MembersChanged { .. }
                | ServerMessage::Sdp { .. }
                | ServerMessage::TrackPublished { .. }
                | ServerMessage::TrackEnded { .. }
                | ServerMessage::TrackMuted { .. }
                | ServerMessage::MutedByHost { .. }
                | ServerMessage::Warning { .. }
                | ServerMessage::Extended { .. }
                | ServerMessage::Invite { .. }
                | ServerMessage::Denied { .. }
                | ServerMessage::Removed
                | ServerMessage::ReturnedToLobby
                | ServerMessage::Ended { .. }
                | ServerMessage::Replaced
                | ServerMessage::Reconnect { .. }
                | ServerMessage::Error { .. }
                | ServerMessage::ActiveSpeaker { .. }
                | ServerMessage::Quality(_)
                | ServerMessage::Pong
                | ServerMessage::Chat { .. }
                | ServerMessage::ChatAllowed { .. } => {}
            }
        }
        v
    }

    fn first_backticked(rows: &[Vec<String>]) -> Vec<String> {
        rows.iter().map(|r| backticked(&r[0])[0].clone()).collect()
    }

    #[test]
    fn the_client_message_table_lists_every_type() {
        let mut documented = first_backticked(&doc_table("Client messages"));
        documented.sort();
        let mut types: Vec<String> = ClientMessage::TYPES.iter().map(|t| t.to_string()).collect();
        types.sort();
        assert_eq!(documented, types);
        for t in ClientMessage::TYPES {
            let m = ClientMessage::sample(t);
            assert_eq!(m.type_name(), *t);
            assert_eq!(serde_json::to_value(&m).unwrap()["type"], *t);
        }
    }

    #[test]
    fn the_server_message_table_lists_every_type() {
        let mut documented = first_backticked(&doc_table("Server messages"));
        documented.sort();
        let mut types: Vec<String> = server_samples()
            .iter()
            .map(|m| {
                serde_json::to_value(m).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        types.sort();
        assert_eq!(documented, types);
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
            starts_at: None,
            ends_at: None,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"lobby","v":1,"role":"patient","participant":"Patient/p"}"#
        );
        // Clients built on this crate (the load tool) send field-less messages bare.
        assert_eq!(
            serde_json::to_string(&ClientMessage::Ping).unwrap(),
            r#"{"type":"ping"}"#
        );
    }
}
