//! What a receiver gets: one JSON object per event, references only (the appointment, the
//! participants' FHIR references and roles, times; never a name or anything said in the
//! call), with an `id` to de-duplicate by. The `id` is derived from the audit record the
//! event comes from, so a record read twice (after a restart) makes the same event.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "consultation.started")]
    ConsultationStarted,
    #[serde(rename = "consultation.ended")]
    ConsultationEnded,
    #[serde(rename = "participant.joined")]
    ParticipantJoined,
    #[serde(rename = "participant.admitted")]
    ParticipantAdmitted,
    #[serde(rename = "participant.left")]
    ParticipantLeft,
    #[serde(rename = "participant.removed")]
    ParticipantRemoved,
    #[serde(rename = "interpreter.joined")]
    InterpreterJoined,
    #[serde(rename = "appointment.extended")]
    AppointmentExtended,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::ConsultationStarted,
        EventKind::ConsultationEnded,
        EventKind::ParticipantJoined,
        EventKind::ParticipantAdmitted,
        EventKind::ParticipantLeft,
        EventKind::ParticipantRemoved,
        EventKind::InterpreterJoined,
        EventKind::AppointmentExtended,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::ConsultationStarted => "consultation.started",
            EventKind::ConsultationEnded => "consultation.ended",
            EventKind::ParticipantJoined => "participant.joined",
            EventKind::ParticipantAdmitted => "participant.admitted",
            EventKind::ParticipantLeft => "participant.left",
            EventKind::ParticipantRemoved => "participant.removed",
            EventKind::InterpreterJoined => "interpreter.joined",
            EventKind::AppointmentExtended => "appointment.extended",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A participant as events name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Who {
    /// Their FHIR reference, e.g. "Practitioner/prac-77".
    pub reference: String,
    /// host | patient | interpreter | companion (absent when not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event; the same on every delivery of it.
    pub id: String,
    pub event: EventKind,
    /// When it happened (RFC 3339, UTC).
    pub created_at: String,
    /// "Appointment/<id>".
    pub appointment: String,
    /// This consultation of the appointment: the same on all its events, and the value of
    /// its Encounter's identifier (system [`crate::fhir::writeback::CONSULTATION_SYSTEM`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consultation: Option<String>,
    /// Whom the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<Who>,
    /// Who did it (the host who admitted, removed, extended or ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Who>,
    /// participant.joined: "lobby" or "call".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// A stable code: why someone left ("left", "disconnected") or the call ended
    /// ("host_ended", "time_over", "cancelled", "service_restart").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// appointment.extended: the consultation's new hard stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
}

/// The id of the `kind` event made from the audit record whose MAC is `record_mac`.
pub fn event_id(record_mac: &str, kind: EventKind) -> String {
    let digest = Sha256::new()
        .chain_update(record_mac.as_bytes())
        .chain_update(b":")
        .chain_update(kind.name().as_bytes())
        .finalize();
    format!("evt_{}", &hex::encode(digest)[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.name()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        assert_eq!(EventKind::parse("nope"), None);
    }

    #[test]
    fn ids_are_stable_and_distinct_per_kind() {
        let a = event_id("abc", EventKind::ParticipantAdmitted);
        assert_eq!(a, event_id("abc", EventKind::ParticipantAdmitted));
        assert_ne!(a, event_id("abc", EventKind::InterpreterJoined));
        assert_ne!(a, event_id("abd", EventKind::ParticipantAdmitted));
        assert_eq!(a.len(), 36);
    }
}
