//! The hospital's booking system, behind one trait: a FHIR R4 server (SMART Backend
//! Services) in production, a folder of FHIR JSON files for development and demos.
//! Signaling reads appointments itself; it never trusts appointment data from a client.

mod fhir_rest;
mod files;
mod smart;

use std::collections::HashMap;

use futures_util::future::BoxFuture;

pub use fhir_rest::FhirBooking;
pub use files::FileBooking;
pub use smart::{ClientAssertionKey, SmartAuth};

use crate::fhir::{Appointment, PractitionerRole, relative_reference};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BookingError {
    #[error("no such resource")]
    NotFound,
    /// The booking system cannot be reached or fails; joins are refused, never allowed.
    #[error("booking system unavailable: {0}")]
    Unavailable(String),
    /// It answered with something that is not a usable resource.
    #[error("invalid resource: {0}")]
    Invalid(String),
}

impl BookingError {
    pub fn code(&self) -> &'static str {
        match self {
            BookingError::NotFound => "appointment_not_found",
            BookingError::Unavailable(_) => "booking_unavailable",
            BookingError::Invalid(_) => "booking_invalid",
        }
    }
}

pub trait BookingSystem: Send + Sync {
    fn appointment<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Appointment, BookingError>>;
    fn practitioner_role<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<PractitionerRole, BookingError>>;
}

/// A FHIR logical id: `[A-Za-z0-9\-\.]{1,64}`. Checked before it goes into a URL or a
/// file lookup.
pub fn is_fhir_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Accept `id` or `Appointment/id`.
pub fn appointment_id(s: &str) -> Option<&str> {
    let id = s.strip_prefix("Appointment/").unwrap_or(s);
    is_fhir_id(id).then_some(id)
}

/// Resolve every PractitionerRole actor of an appointment to its Practitioner, so the policy
/// can match a practitioner's `fhirUser` against a role booked in the appointment.
pub async fn resolve_practitioner_roles(
    booking: &dyn BookingSystem,
    appointment: &Appointment,
) -> Result<HashMap<String, String>, BookingError> {
    let mut resolved = HashMap::new();
    for p in &appointment.participant {
        let Some(reference) = p.actor.as_ref().and_then(|a| a.reference.as_deref()) else {
            continue;
        };
        let Some(id) =
            relative_reference(reference).and_then(|r| r.strip_prefix("PractitionerRole/"))
        else {
            continue;
        };
        if !is_fhir_id(id) || resolved.contains_key(&format!("PractitionerRole/{id}")) {
            continue;
        }
        match booking.practitioner_role(id).await {
            // An inactive role is a job the person no longer holds: it resolves to nobody.
            Ok(role) if role.active == Some(false) => {}
            Ok(role) => {
                if let Some(practitioner) = role
                    .practitioner
                    .as_ref()
                    .and_then(|r| r.reference.as_deref())
                    .and_then(relative_reference)
                {
                    resolved.insert(format!("PractitionerRole/{id}"), practitioner.to_owned());
                }
            }
            // A role that no longer exists resolves to nobody; an unreachable system is an error.
            Err(BookingError::NotFound) | Err(BookingError::Invalid(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_use() {
        assert_eq!(appointment_id("Appointment/tele-1"), Some("tele-1"));
        assert_eq!(appointment_id("tele.1"), Some("tele.1"));
        assert_eq!(appointment_id("../etc/passwd"), None);
        assert_eq!(appointment_id("a/b"), None);
        assert_eq!(appointment_id(""), None);
        assert_eq!(appointment_id(&"x".repeat(65)), None);
    }
}
