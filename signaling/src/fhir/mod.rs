//! The FHIR R4 resources we read from the hospital's booking system, and nothing more.
//!
//! Lenient about what we do not read: booking systems add extensions and elements freely, and
//! an unknown field must not turn a booked consultation into a refused one. Strict about the
//! types of what we do read: a `status` that is not a string, or a `start` that is not an
//! instant, is a broken resource, not an unknown value to guess around.
//!
//! Resources carry patient data. Errors here say where a document is wrong, never what it
//! contains, and `Reference::display` (free text, often a name) never reaches `Debug` output.

pub mod audit_event;
pub mod encounter;
mod model;
pub mod observation;
pub mod writeback;

pub use model::{
    Appointment, AppointmentParticipant, CodeableConcept, Coding, PractitionerRole, Reference,
    relative_reference,
};

use serde::de::DeserializeOwned;

/// Why a document is not a resource we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirError {
    #[error("not a JSON document (line {line}, column {column})")]
    Syntax { line: usize, column: usize },
    #[error(
        "expected a FHIR {expected}, got {}",
        found.as_deref().unwrap_or("no resourceType")
    )]
    WrongResourceType {
        expected: &'static str,
        /// The resourceType found, kept only if it looks like a type name: a server that
        /// answers with an `OperationOutcome` is worth saying so, arbitrary text is not.
        found: Option<String>,
    },
    #[error("not a valid FHIR {resource} (line {line}, column {column})")]
    Invalid {
        resource: &'static str,
        line: usize,
        column: usize,
    },
}

/// Read an `Appointment` resource.
pub fn parse_appointment(json: &[u8]) -> Result<Appointment, FhirError> {
    parse(json, "Appointment")
}

/// Read a `PractitionerRole` resource (to resolve an appointment's `PractitionerRole` actor).
pub fn parse_practitioner_role(json: &[u8]) -> Result<PractitionerRole, FhirError> {
    parse(json, "PractitionerRole")
}

fn parse<T: DeserializeOwned>(json: &[u8], expected: &'static str) -> Result<T, FhirError> {
    // The resource type first: a Patient or an OperationOutcome handed to us as an
    // Appointment should be reported as such, not as "missing field status". Read as a map,
    // because serde would also accept a struct written as a JSON array.
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| {
            if e.is_data() {
                // Valid JSON, but not an object.
                FhirError::WrongResourceType {
                    expected,
                    found: None,
                }
            } else {
                FhirError::Syntax {
                    line: e.line(),
                    column: e.column(),
                }
            }
        })?;
    let resource_type = object.get("resourceType").and_then(|t| t.as_str());
    if resource_type != Some(expected) {
        let found = resource_type.filter(|t| is_type_name(t)).map(String::from);
        return Err(FhirError::WrongResourceType { expected, found });
    }
    // serde_json's messages quote the offending value ("invalid type: string \"Peter ...\""),
    // which may be patient data: keep the position only.
    serde_json::from_slice(json).map_err(|e| FhirError::Invalid {
        resource: expected,
        line: e.line(),
        column: e.column(),
    })
}

fn is_type_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn reads_the_fields_we_use_and_ignores_the_rest() {
        let json = br#"{
            "resourceType": "Appointment",
            "id": "a1",
            "status": "booked",
            "meta": {"versionId": "3"},
            "extension": [{"url": "http://example.org/x", "valueBoolean": true}],
            "start": "2026-12-01T01:00:00Z",
            "end": "2026-12-01T01:30:00Z",
            "participant": [
                {"type": [{"coding": [{"system": "http://example.org/participant-type",
                                       "code": "translator", "display": "Translator"}],
                           "text": "Interpreter"}],
                 "actor": {"reference": "Practitioner/interp-9", "type": "Practitioner"},
                 "required": "required", "status": "accepted", "period": {}}
            ]
        }"#;
        let appointment = parse_appointment(json).unwrap();

        assert_eq!(appointment.id.as_deref(), Some("a1"));
        assert_eq!(appointment.status, "booked");
        assert_eq!(
            appointment.start,
            Some(Utc.with_ymd_and_hms(2026, 12, 1, 1, 0, 0).unwrap())
        );
        let participant = &appointment.participant[0];
        let concept = &participant.type_[0];
        assert_eq!(concept.text.as_deref(), Some("Interpreter"));
        assert_eq!(concept.coding[0].code.as_deref(), Some("translator"));
        assert_eq!(concept.coding[0].display.as_deref(), Some("Translator"));
        assert_eq!(
            participant.actor.as_ref().unwrap().reference.as_deref(),
            Some("Practitioner/interp-9")
        );
        assert_eq!(participant.required.as_deref(), Some("required"));
        assert_eq!(participant.status, "accepted");
    }

    #[test]
    fn absent_optional_elements_are_none_or_empty() {
        let appointment =
            parse_appointment(br#"{"resourceType": "Appointment", "status": "proposed"}"#).unwrap();

        assert_eq!(appointment.id, None);
        assert_eq!((appointment.start, appointment.end), (None, None));
        assert!(appointment.participant.is_empty());
    }

    #[test]
    fn instants_with_an_offset_are_read_in_utc() {
        let appointment = parse_appointment(
            br#"{"resourceType": "Appointment", "status": "booked",
                 "start": "2026-12-01T10:00:00+09:00", "end": "2026-12-01T10:30:00.250+09:00"}"#,
        )
        .unwrap();

        assert_eq!(
            appointment.start,
            Some(Utc.with_ymd_and_hms(2026, 12, 1, 1, 0, 0).unwrap())
        );
        assert_eq!(
            appointment.end.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-12-01T01:30:00.250+00:00")
        );
    }

    #[test]
    fn a_start_that_is_not_an_instant_is_invalid() {
        for start in [
            r#""2026-12-01""#,               // a date, not an instant
            r#""2026-12-01T01:00:00""#,      // no time zone
            r#""tomorrow at nine, Mr Kim""#, // free text
            "1795000000",                    // a number
        ] {
            let json = format!(
                r#"{{"resourceType": "Appointment", "status": "booked", "start": {start}}}"#
            );
            assert!(
                matches!(
                    parse_appointment(json.as_bytes()),
                    Err(FhirError::Invalid {
                        resource: "Appointment",
                        ..
                    })
                ),
                "start {start}"
            );
        }
    }

    #[test]
    fn wrong_types_are_invalid_not_ignored() {
        for json in [
            r#"{"resourceType": "Appointment", "status": 1}"#,
            r#"{"resourceType": "Appointment"}"#,
            r#"{"resourceType": "Appointment", "status": "booked", "participant": {}}"#,
            r#"{"resourceType": "Appointment", "status": "booked", "participant": [{}]}"#,
            r#"{"resourceType": "Appointment", "status": "booked",
                "participant": [{"status": "accepted", "actor": "Patient/x"}]}"#,
            r#"{"resourceType": "Appointment", "status": "booked",
                "participant": [{"status": "accepted", "required": true}]}"#,
            r#"{"resourceType": "Appointment", "status": "booked",
                "participant": [{"status": "accepted", "type": {"text": "ATND"}}]}"#,
        ] {
            let parsed = parse_appointment(json.as_bytes());
            assert!(matches!(parsed, Err(FhirError::Invalid { .. })), "{json}");
        }
    }

    #[test]
    fn errors_point_at_the_problem_without_quoting_it() {
        let json = br#"{"resourceType": "Appointment", "status": "booked",
            "participant": [{"actor": "Peter James Chalmers", "status": "accepted"}]}"#;
        let error = parse_appointment(json).unwrap_err();

        let FhirError::Invalid { line, column, .. } = error else {
            panic!("expected Invalid, got {error:?}");
        };
        assert_eq!(line, 2);
        assert!(column > 0);
        assert!(!error.to_string().contains("Chalmers"));
        assert!(!format!("{error:?}").contains("Chalmers"));
    }

    #[test]
    fn another_resource_type_is_refused_by_name() {
        let error =
            parse_appointment(br#"{"resourceType": "OperationOutcome", "issue": []}"#).unwrap_err();

        assert_eq!(
            error,
            FhirError::WrongResourceType {
                expected: "Appointment",
                found: Some("OperationOutcome".into())
            }
        );
        assert_eq!(
            error.to_string(),
            "expected a FHIR Appointment, got OperationOutcome"
        );
    }

    #[test]
    fn a_resource_type_that_is_not_a_type_name_is_not_repeated() {
        for json in [
            r#"{"resourceType": "Peter James Chalmers", "status": "booked"}"#,
            r#"{"status": "booked"}"#,
            r#"{"resourceType": 7, "status": "booked"}"#,
            r#"["Appointment"]"#,
        ] {
            assert_eq!(
                parse_appointment(json.as_bytes()),
                Err(FhirError::WrongResourceType {
                    expected: "Appointment",
                    found: None
                }),
                "{json}"
            );
        }
    }

    #[test]
    fn what_is_not_json_is_a_syntax_error() {
        assert!(matches!(
            parse_appointment(b"<Appointment/>"),
            Err(FhirError::Syntax { line: 1, .. })
        ));
        assert!(matches!(
            parse_appointment(br#"{"resourceType": "Appointment""#),
            Err(FhirError::Syntax { .. })
        ));
    }

    #[test]
    fn reads_a_practitioner_role() {
        let role = parse_practitioner_role(
            br#"{"resourceType": "PractitionerRole", "id": "role-5", "active": true,
                 "practitioner": {"reference": "Practitioner/prac-12", "display": "Dr Park"},
                 "code": [{"text": "doctor"}]}"#,
        )
        .unwrap();

        assert_eq!(role.id.as_deref(), Some("role-5"));
        assert_eq!(role.active, Some(true));
        assert_eq!(
            role.practitioner.and_then(|p| p.reference).as_deref(),
            Some("Practitioner/prac-12")
        );
        assert!(matches!(
            parse_practitioner_role(br#"{"resourceType": "Appointment", "status": "booked"}"#),
            Err(FhirError::WrongResourceType {
                expected: "PractitionerRole",
                ..
            })
        ));
    }
}
