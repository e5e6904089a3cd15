//! The elements of FHIR R4 resources that we read. Field names follow the specification;
//! elements not listed here are ignored when parsing.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A booked (or proposed, cancelled, ...) encounter: who takes part, and when.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Appointment {
    pub id: Option<String>,
    /// An `AppointmentStatus` code: `proposed`, `booked`, `cancelled`, ...
    pub status: String,
    #[serde(default, deserialize_with = "instant")]
    pub start: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "instant")]
    pub end: Option<DateTime<Utc>>,
    #[serde(default)]
    pub participant: Vec<AppointmentParticipant>,
    /// The style of appointment (R4 `appointmentType`): read to tell a shared room.
    #[serde(rename = "appointmentType", default)]
    pub appointment_type: Option<CodeableConcept>,
    /// The services it provides (R4 `serviceType`): read to tell a shared room.
    #[serde(rename = "serviceType", default)]
    pub service_type: Vec<CodeableConcept>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppointmentParticipant {
    /// The participant's role in the appointment (ATND, translator, ...).
    #[serde(rename = "type", default)]
    pub type_: Vec<CodeableConcept>,
    /// Who: absent for a slot not yet filled (an interpreter to be assigned).
    pub actor: Option<Reference>,
    /// `required`, `optional` or `information-only`.
    pub required: Option<String>,
    /// The participant's own answer: `accepted`, `declined`, `tentative`, `needs-action`.
    pub status: String,
}

/// A pointer to another resource, by reference, by description, or both.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct Reference {
    pub reference: Option<String>,
    /// Free text, often a person's name: read only to tell a described actor from a missing
    /// one, and never printed.
    pub display: Option<String>,
}

impl Reference {
    /// The relative reference ("Patient/pat-1042") this points to, if it points to a resource.
    pub fn relative(&self) -> Option<&str> {
        self.reference.as_deref().and_then(relative_reference)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reference")
            .field("reference", &self.reference)
            .field("display", &self.display.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CodeableConcept {
    #[serde(default)]
    pub coding: Vec<Coding>,
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Coding {
    pub system: Option<String>,
    pub code: Option<String>,
    pub display: Option<String>,
}

/// A practitioner in a role at an organisation; appointments may name the role, not the
/// person, as a participant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PractitionerRole {
    pub id: Option<String>,
    pub practitioner: Option<Reference>,
    pub active: Option<bool>,
}

/// The relative form "Type/id" of a literal reference, which may be relative
/// ("Patient/x"), absolute (`https://fhir.example/R4/Patient/x`) or versioned
/// (".../Patient/x/_history/2"): all three name the same resource, and identity checks must
/// not depend on how the booking system chose to write it. Anything else (a contained
/// "#ref", a "urn:uuid:", a search URL) names no resource we can compare, and gives `None`.
pub fn relative_reference(reference: &str) -> Option<&str> {
    let path = match reference.rsplit_once("/_history/") {
        Some((resource, version)) if is_id(version) => resource,
        _ => reference,
    };
    let (head, id) = path.rsplit_once('/')?;
    let type_start = head.rfind('/').map_or(0, |slash| slash + 1);
    let resource_type = &head[type_start..];
    (is_resource_type(resource_type) && is_id(id)).then(|| &path[type_start..])
}

fn is_resource_type(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphabetic())
}

/// FHIR's id: `[A-Za-z0-9\-\.]{1,64}`.
fn is_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// A FHIR `instant`: always with seconds and a time zone, so RFC 3339 exactly. A date alone
/// or a local time is refused rather than guessed: it would move the consultation window.
fn instant<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(&text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| D::Error::custom("expected an instant (RFC 3339, with a time zone)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_references_are_kept() {
        assert_eq!(
            relative_reference("Patient/pat-1042"),
            Some("Patient/pat-1042")
        );
        assert_eq!(
            relative_reference("PractitionerRole/role-5"),
            Some("PractitionerRole/role-5")
        );
    }

    #[test]
    fn absolute_and_versioned_references_name_the_same_resource() {
        assert_eq!(
            relative_reference("https://fhir.example/R4/Patient/x"),
            Some("Patient/x")
        );
        assert_eq!(
            relative_reference("Practitioner/prac-77/_history/3"),
            Some("Practitioner/prac-77")
        );
        assert_eq!(
            relative_reference("https://fhir.example/R4/Practitioner/a.b-1/_history/12"),
            Some("Practitioner/a.b-1")
        );
    }

    #[test]
    fn references_to_no_comparable_resource_give_none() {
        for reference in [
            "",
            "#contained-1",
            "urn:uuid:9d3c6a1e-3b5e-4a8b-9d1e-5e0c8b1f2a7c",
            "Patient",
            "Patient/",
            "/pat-1042",
            "patient/pat-1042",              // types are capitalised
            "Patient?identifier=urn:x|1042", // a search, not a resource
            "Patient/pat 1042",              // not an id
            "Patient/pat-1042/_history/",    // no version
            "Patient/_history/2",
            "https://fhir.example/R4/Patient/x/",
        ] {
            assert_eq!(relative_reference(reference), None, "{reference:?}");
        }
        let long_id = format!("Patient/{}", "1".repeat(65));
        assert_eq!(relative_reference(&long_id), None);
    }

    #[test]
    fn a_reference_relative_form_ignores_its_display() {
        let described = Reference {
            reference: None,
            display: Some("Phone Call".into()),
        };
        let referenced = Reference {
            reference: Some("Patient/x".into()),
            display: Some("Peter James Chalmers".into()),
        };

        assert_eq!(described.relative(), None);
        assert_eq!(referenced.relative(), Some("Patient/x"));
    }

    #[test]
    fn debug_output_never_shows_display_text() {
        let reference = Reference {
            reference: Some("Patient/x".into()),
            display: Some("Peter James Chalmers".into()),
        };

        let printed = format!("{reference:?}");
        assert!(printed.contains("Patient/x"));
        assert!(printed.contains("<redacted>"));
        assert!(!printed.contains("Chalmers"));
    }
}
