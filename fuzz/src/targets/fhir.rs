//! FHIR R4 resources from the hospital's booking system: `Appointment` and `PractitionerRole`
//! documents, as `signaling::booking` reads them (`fhir::parse_*`). An appointment that parses
//! then goes where the product takes it: the access policy for each of its participants, the
//! interpreter slots, the room kind.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use metaclinic_signaling::config::RoomsSection;
use metaclinic_signaling::fhir::{FhirError, parse_appointment, parse_practitioner_role};
use metaclinic_signaling::policy::{self, Caller, PolicyConfig};
use metaclinic_signaling::rooms::room_kind;

use super::{Target, outcome};
use crate::mutate::Grammar;

const DICT: &[&[u8]] = &[
    b"resourceType",
    b"Appointment",
    b"PractitionerRole",
    b"OperationOutcome",
    b"id",
    b"status",
    b"booked",
    b"arrived",
    b"checked-in",
    b"cancelled",
    b"proposed",
    b"start",
    b"end",
    b"participant",
    b"type",
    b"actor",
    b"reference",
    b"display",
    b"required",
    b"information-only",
    b"accepted",
    b"declined",
    b"coding",
    b"system",
    b"code",
    b"text",
    b"appointmentType",
    b"serviceType",
    b"practitioner",
    b"active",
    b"translator",
    b"ATND",
    b"PPRF",
    b"http://terminology.hl7.org/CodeSystem/participant-type",
    b"http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
    b"urn:metaclinic:room-kind",
    b"shared",
    b"Patient/pat-1042",
    b"Practitioner/prac-12",
    b"PractitionerRole/role-5",
    b"RelatedPerson/family-demo",
    b"Location/room-1",
    b"#contained",
    b"urn:uuid:1",
    b"https://fhir.example/R4/Patient/p1/_history/3",
    b"2013-12-10T09:00:00Z",
    b"2013-12-10T09:00:00+14:00",
    b"+262143-12-31T23:59:59Z",
    b"-262143-01-01T00:00:00Z",
    b"2013-12-10",
    b"2013-12-10T09:00:00",
];

/// Errors say where a document is wrong, never what it holds (it may hold patient data).
fn check_error(e: &FhirError) {
    let shown = e.to_string();
    assert!(
        shown.is_ascii() && !shown.contains('"') && shown.len() <= 120,
        "invariant: a FHIR error shows document content: {shown}"
    );
    if let FhirError::WrongResourceType { found: Some(t), .. } = e {
        assert!(t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphabetic()));
    }
}

pub fn appointment() -> Target {
    Target {
        name: "fhir-appointment",
        entry: "signaling::fhir::parse_appointment, then policy::decide and rooms::room_kind",
        grammar: Grammar::Json,
        max_len: 64 * 1024,
        dict: DICT,
        seeds: Vec::new,
        build: || {
            let cfg = PolicyConfig::default();
            let rooms = RoomsSection::default();
            let roles = HashMap::from([(
                "PractitionerRole/role-5".to_owned(),
                "Practitioner/prac-12".to_owned(),
            )]);
            Box::new(move |data: &[u8]| match parse_appointment(data) {
                Ok(a) => {
                    let _ = room_kind(&a, &rooms);
                    let slots = policy::unassigned_translator_slots(&a);
                    assert!(slots.iter().all(|&i| i < a.participant.len()));
                    let times: Vec<DateTime<Utc>> = [
                        a.start,
                        a.end,
                        Some(DateTime::<Utc>::MIN_UTC),
                        Some(DateTime::<Utc>::MAX_UTC),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    let mut decisions = String::new();
                    let callers = a
                        .participant
                        .iter()
                        .filter_map(|p| p.actor.as_ref()?.reference.clone())
                        .chain(["Practitioner/prac-12".to_owned()]);
                    for who in callers.take(8) {
                        for now in &times {
                            let invite = slots.first().map(|&i| policy::InviteGrant {
                                appointment_id: a.id.clone().unwrap_or_default(),
                                participant_index: i,
                            });
                            let caller = Caller {
                                fhir_user: &who,
                                resolved_roles: &roles,
                                invite,
                            };
                            match policy::decide(&a, &caller, *now, &cfg) {
                                Ok(access) => {
                                    assert!(access.opens_at <= access.closes_at);
                                    assert!(access.participant_index < a.participant.len());
                                    decisions.push_str(&format!("{:?},", access.role));
                                }
                                Err(d) => decisions.push_str(d.code()),
                            }
                        }
                    }
                    outcome(&["ok", &decisions])
                }
                Err(e) => {
                    check_error(&e);
                    outcome(&[&e.to_string()])
                }
            })
        },
    }
}

pub fn practitioner_role() -> Target {
    Target {
        name: "fhir-practitioner-role",
        entry: "signaling::fhir::parse_practitioner_role",
        grammar: Grammar::Json,
        max_len: 64 * 1024,
        dict: DICT,
        seeds: Vec::new,
        build: || {
            Box::new(|data: &[u8]| match parse_practitioner_role(data) {
                Ok(role) => {
                    let practitioner = role.practitioner.as_ref().and_then(|p| p.relative());
                    outcome(&[
                        "ok",
                        &format!(
                            "{} {}",
                            practitioner.is_some(),
                            role.active
                                .map_or("-", |a| if a { "active" } else { "inactive" })
                        ),
                    ])
                }
                Err(e) => {
                    check_error(&e);
                    outcome(&[&e.to_string()])
                }
            })
        },
    }
}
