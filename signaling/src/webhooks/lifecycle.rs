//! A consultation's life, read from its audit records: which webhook events a record makes,
//! and the running account of the consultation (its [`Draft`]: start, who was in the call
//! as what, from when to when) that becomes its `Encounter` when it ends.
//!
//! [`apply`] is pure: the same record applied to the same draft makes the same events (with
//! the same ids) and the same draft, so replaying records after a crash repeats, never
//! invents. Drafts are kept in the outbox's store, so that a restarted (or another) replica
//! continues them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::{EventKind, WebhookEvent, Who, event_id};
use crate::audit::Committed;

/// The running account of one consultation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Draft {
    /// The consultation's id ([`consultation_id`]).
    pub consultation: String,
    /// The appointment's id (without "Appointment/").
    pub appointment: String,
    pub started_at: String,
    /// The last record applied (stale drafts are dropped after a day).
    pub updated_at: String,
    /// Everyone who joined, by FHIR reference.
    pub participants: BTreeMap<String, Span>,
}

/// One participant of a consultation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub role: Option<String>,
    /// When they first entered the call (None: they only waited in the lobby).
    pub first_in: Option<String>,
    /// When they last left it (None while in the call).
    pub last_out: Option<String>,
}

/// What one record does.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub events: Vec<WebhookEvent>,
    /// The consultation ended with this record: its final draft and the end time.
    pub ended: Option<(Draft, String)>,
}

/// The appointment's id in a record's `appointment` ("Appointment/<id>" or a bare id).
pub fn appointment_id(record: &Committed) -> Option<&str> {
    let a = record.event.appointment.as_deref()?;
    Some(a.strip_prefix("Appointment/").unwrap_or(a))
}

/// A consultation's id: the appointment's id and the start time's digits, e.g.
/// `appt-1.20260301T100100000Z` (a valid FHIR id and query value as it is).
pub fn consultation_id(appointment: &str, started_at: &str) -> String {
    let compact: String = started_at
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("{appointment}.{compact}")
}

/// Apply one audit record to the appointment's `draft` (None: no consultation running).
pub fn apply(record: &Committed, draft: &mut Option<Draft>) -> Applied {
    let e = &record.event;
    let mut out = Applied::default();
    if !matches!(e.outcome.as_str(), "ok" | "allow") {
        return out;
    }
    let Some(appointment) = appointment_id(record) else {
        return out;
    };
    let t = record.time.clone();
    let new_draft = || Draft {
        consultation: consultation_id(appointment, &t),
        appointment: appointment.to_owned(),
        started_at: t.clone(),
        updated_at: t.clone(),
        participants: BTreeMap::new(),
    };
    let action = e.action.as_str();
    match action {
        "start" => {
            if draft.is_none() {
                let d = draft.insert(new_draft());
                let consultation = Some(d.consultation.clone());
                out.events
                    .push(event(record, EventKind::ConsultationStarted, &consultation));
            }
            // Else the same consultation opened again on a restarted process: it goes on.
            return out;
        }
        // Someone in a consultation whose start was not seen (webhooks turned on mid-call,
        // or a draft that expired): its account starts here.
        "lobby" | "enter_call" | "admit" => {
            draft.get_or_insert_with(new_draft);
        }
        // After the end everyone leaves: the end said so already.
        "join" | "leave" if draft.is_none() => return out,
        "join" | "leave" | "remove" | "extend" | "end" => {}
        _ => return out,
    }
    let consultation = draft.as_ref().map(|d| d.consultation.clone());
    let actor = e.fhir_user.clone();
    if let Some(d) = draft.as_mut() {
        d.updated_at = t.clone();
        // A record's role is its actor's own.
        if let (Some(a), Some(role), "join" | "lobby" | "enter_call") = (&actor, &e.role, action) {
            d.participants.entry(a.clone()).or_default().role = Some(role.clone());
        }
    }
    let who = |reference: &Option<String>, d: &Option<Draft>| {
        reference.as_ref().map(|r| Who {
            reference: r.clone(),
            role: d
                .as_ref()
                .and_then(|d| d.participants.get(r))
                .and_then(|s| s.role.clone()),
        })
    };
    let by = who(&actor, draft);
    let target = if matches!(action, "admit" | "remove") {
        &e.target
    } else {
        &actor
    };
    let ev = |kind| event(record, kind, &consultation);
    match action {
        "lobby" => {
            let mut j = ev(EventKind::ParticipantJoined);
            j.participant = by;
            j.location = Some("lobby".into());
            out.events.push(j);
        }
        "enter_call" | "admit" => {
            let Some(r) = target.clone() else {
                return out;
            };
            let span = draft.as_mut().map(|d| d.participants.entry(r).or_default());
            let mut interpreter = false;
            if let Some(span) = span {
                span.first_in.get_or_insert_with(|| t.clone());
                span.last_out = None;
                interpreter = span.role.as_deref() == Some("interpreter");
            }
            let participant = who(target, draft);
            let mut j = if action == "admit" {
                let mut j = ev(EventKind::ParticipantAdmitted);
                j.by = by;
                j
            } else {
                let mut j = ev(EventKind::ParticipantJoined);
                j.location = Some("call".into());
                j
            };
            j.participant = participant.clone();
            out.events.push(j);
            if interpreter {
                let mut j = ev(EventKind::InterpreterJoined);
                j.participant = participant;
                out.events.push(j);
            }
        }
        "leave" | "remove" => {
            if let (Some(r), Some(d)) = (target.as_ref(), draft.as_mut())
                && let Some(span) = d.participants.get_mut(r)
                && span.first_in.is_some()
            {
                span.last_out = Some(t.clone());
            }
            let participant = who(target, draft);
            let mut j = if action == "remove" {
                let mut j = ev(EventKind::ParticipantRemoved);
                j.by = by;
                j
            } else {
                let mut j = ev(EventKind::ParticipantLeft);
                j.reason = e.reason.clone();
                j
            };
            j.participant = participant;
            out.events.push(j);
        }
        "extend" => {
            let mut j = ev(EventKind::AppointmentExtended);
            j.by = by;
            out.events.push(j);
        }
        "end" => {
            let mut j = ev(EventKind::ConsultationEnded);
            j.by = by;
            j.reason = e.reason.clone();
            out.events.push(j);
            if let Some(mut d) = draft.take() {
                // Whoever was still in the call left when it ended.
                for span in d.participants.values_mut() {
                    if span.first_in.is_some() && span.last_out.is_none() {
                        span.last_out = Some(t.clone());
                    }
                }
                out.ended = Some((d, t));
            }
        }
        _ => {} // "join": roles learnt above, no event of its own
    }
    out
}

fn event(record: &Committed, kind: EventKind, consultation: &Option<String>) -> WebhookEvent {
    let appointment = appointment_id(record).unwrap_or_default();
    WebhookEvent {
        id: event_id(&record.mac, kind),
        event: kind,
        created_at: record.time.clone(),
        appointment: format!("Appointment/{appointment}"),
        consultation: consultation.clone(),
        participant: None,
        by: None,
        location: None,
        reason: None,
        ends_at: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::AuditEvent;

    pub(crate) const DOCTOR: &str = "Practitioner/prac-77";
    pub(crate) const PATIENT: &str = "Patient/pat-1042";
    pub(crate) const INTERPRETER: &str = "Practitioner/interp-9";

    pub(crate) fn rec(
        seq: u64,
        who: Option<&str>,
        role: Option<&str>,
        action: &str,
        target: Option<&str>,
    ) -> Committed {
        Committed {
            seq,
            time: format!("2026-03-01T10:{seq:02}:00.000Z"),
            mac: format!("{seq:064x}"),
            event: AuditEvent {
                fhir_user: who.map(str::to_owned),
                appointment: Some("Appointment/appt-1".into()),
                role: role.map(str::to_owned),
                action: action.into(),
                outcome: "ok".into(),
                target: target.map(str::to_owned),
                reason: (action == "end").then(|| "host_ended".to_owned()),
                ..AuditEvent::default()
            },
        }
    }

    /// A whole consultation: doctor in, patient waits and is admitted, interpreter admitted,
    /// extension, patient leaves, doctor ends.
    pub(crate) fn consultation() -> Vec<Committed> {
        let (h, p, i) = (Some("host"), Some("patient"), Some("interpreter"));
        vec![
            rec(1, None, None, "start", None),
            rec(2, Some(DOCTOR), h, "join", None),
            rec(3, Some(DOCTOR), h, "enter_call", None),
            rec(4, Some(PATIENT), p, "join", None),
            rec(5, Some(PATIENT), p, "lobby", None),
            rec(6, Some(DOCTOR), h, "admit", Some(PATIENT)),
            rec(7, Some(INTERPRETER), i, "lobby", None),
            rec(8, Some(DOCTOR), h, "admit", Some(INTERPRETER)),
            rec(9, Some(DOCTOR), h, "extend", None),
            rec(10, Some(DOCTOR), h, "mute", Some(PATIENT)),
            rec(11, Some(PATIENT), p, "leave", None),
            rec(12, Some(DOCTOR), h, "end", None),
        ]
    }

    #[test]
    fn a_consultation_makes_its_events_and_its_draft() {
        let mut draft = None;
        let mut kinds = Vec::new();
        let mut ended = None;
        for r in consultation() {
            let a = apply(&r, &mut draft);
            kinds.extend(a.events.iter().map(|e| e.event.name()));
            for e in &a.events {
                assert_eq!(e.appointment, "Appointment/appt-1");
                assert_eq!(
                    e.consultation.as_deref(),
                    Some("appt-1.20260301T100100000Z")
                );
            }
            if a.ended.is_some() {
                ended = a.ended;
            }
        }
        assert_eq!(
            kinds,
            [
                "consultation.started",
                "participant.joined",
                "participant.joined",
                "participant.admitted",
                "participant.joined",
                "participant.admitted",
                "interpreter.joined",
                "appointment.extended",
                "participant.left",
                "consultation.ended",
            ]
        );
        assert!(draft.is_none());
        let (d, end) = ended.unwrap();
        assert_eq!(end, "2026-03-01T10:12:00.000Z");
        let p = &d.participants[PATIENT];
        assert_eq!(p.role.as_deref(), Some("patient"));
        assert_eq!(p.first_in.as_deref(), Some("2026-03-01T10:06:00.000Z"));
        assert_eq!(p.last_out.as_deref(), Some("2026-03-01T10:11:00.000Z"));
        let i = &d.participants[INTERPRETER];
        assert_eq!(i.last_out.as_deref(), Some("2026-03-01T10:12:00.000Z"));
    }

    #[test]
    fn the_admitted_participant_carries_their_own_role_and_the_host_is_by() {
        let mut draft = None;
        let all: Vec<_> = consultation()
            .iter()
            .flat_map(|r| apply(r, &mut draft).events)
            .collect();
        let admitted = all
            .iter()
            .find(|e| e.event == EventKind::ParticipantAdmitted)
            .unwrap();
        let p = admitted.participant.as_ref().unwrap();
        assert_eq!(
            (p.reference.as_str(), p.role.as_deref()),
            (PATIENT, Some("patient"))
        );
        assert_eq!(admitted.by.as_ref().unwrap().reference, DOCTOR);
        // Every event id is distinct.
        let ids: std::collections::HashSet<_> = all.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), all.len());
    }

    #[test]
    fn replaying_records_repeats_the_same_events() {
        let records = consultation();
        let mut first = None;
        let a: Vec<_> = records[..8]
            .iter()
            .flat_map(|r| apply(r, &mut first).events)
            .collect();
        // A restart re-reads records 6..8 on top of the draft saved after record 5.
        let mut second = None;
        for r in &records[..5] {
            apply(r, &mut second);
        }
        let b: Vec<_> = records[5..8]
            .iter()
            .flat_map(|r| apply(r, &mut second).events)
            .collect();
        assert_eq!(&a[a.len() - b.len()..], &b[..]);
        assert_eq!(first, second);
    }

    #[test]
    fn a_second_start_of_a_running_consultation_continues_it() {
        let mut draft = None;
        let records = consultation();
        for r in &records[..6] {
            apply(r, &mut draft);
        }
        let before = draft.clone();
        let again = apply(&rec(40, None, None, "start", None), &mut draft);
        assert!(again.events.is_empty());
        assert_eq!(draft, before);
    }

    #[test]
    fn leaving_after_the_end_makes_nothing_and_the_next_start_is_new() {
        let mut draft = None;
        for r in consultation() {
            apply(&r, &mut draft);
        }
        let late = apply(
            &rec(13, Some(PATIENT), Some("patient"), "leave", None),
            &mut draft,
        );
        assert!(late.events.is_empty());
        assert!(draft.is_none());
        let again = apply(&rec(20, None, None, "start", None), &mut draft);
        assert_eq!(again.events[0].event, EventKind::ConsultationStarted);
        // The first joiner's access decision comes before the start: nothing yet.
        let mut none = None;
        assert!(
            apply(&rec(1, Some(DOCTOR), Some("host"), "join", None), &mut none)
                .events
                .is_empty()
        );
        assert!(none.is_none());
    }

    #[test]
    fn denials_and_other_appointments_make_nothing() {
        let mut draft = None;
        let mut r = rec(1, Some(PATIENT), Some("patient"), "lobby", None);
        r.event.outcome = "deny".into();
        assert_eq!(apply(&r, &mut draft), Applied::default());
        r.event.outcome = "ok".into();
        r.event.appointment = None;
        assert_eq!(apply(&r, &mut draft), Applied::default());
        assert!(draft.is_none());
    }
}
