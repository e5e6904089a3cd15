//! Which kind of SFU room an appointment opens: a consultation (everyone's tracks forwarded)
//! or a shared room (audio mixed per listener in space, avatars on a map). The booking
//! system says so through the appointment's codes, matched against `rooms.shared_codes`.

use metaclinic_protocol::room::RoomKind;

use crate::config::RoomsSection;
use crate::fhir::{Appointment, Coding};

/// A shared room when `appointmentType` or any `serviceType` has a coding listed in
/// `rooms.shared_codes`; a consultation otherwise.
pub fn room_kind(appointment: &Appointment, rooms: &RoomsSection) -> RoomKind {
    let shared = appointment
        .appointment_type
        .iter()
        .chain(&appointment.service_type)
        .flat_map(|concept| &concept.coding)
        .any(|coding| rooms.shared_codes.iter().any(|p| matches(p, coding)));
    if shared {
        RoomKind::Shared
    } else {
        RoomKind::Consultation
    }
}

/// `"system|code"` (both non-empty) or a bare `"code"`.
pub fn is_code_pattern(pattern: &str) -> bool {
    match pattern.split_once('|') {
        Some((system, code)) => !system.is_empty() && !code.is_empty() && !code.contains('|'),
        None => !pattern.is_empty(),
    }
}

fn matches(pattern: &str, coding: &Coding) -> bool {
    let Some(code) = coding.code.as_deref() else {
        return false;
    };
    match pattern.split_once('|') {
        Some((system, want)) => coding.system.as_deref() == Some(system) && code == want,
        None => code == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::parse_appointment;

    fn appointment(extra: serde_json::Value) -> Appointment {
        let mut a = serde_json::json!({
            "resourceType": "Appointment",
            "status": "booked",
            "participant": [],
        });
        if let (Some(a), Some(extra)) = (a.as_object_mut(), extra.as_object()) {
            a.extend(extra.clone());
        }
        parse_appointment(&serde_json::to_vec(&a).unwrap()).unwrap()
    }

    fn coding(system: &str, code: &str) -> serde_json::Value {
        serde_json::json!({ "coding": [{ "system": system, "code": code }] })
    }

    #[test]
    fn the_default_code_in_service_type_or_appointment_type_opens_a_shared_room() {
        let rooms = RoomsSection::default();
        let by_service = appointment(serde_json::json!({
            "serviceType": [coding("http://snomed.info/sct", "394913002"), coding("urn:metaclinic:room-kind", "shared")]
        }));
        assert_eq!(room_kind(&by_service, &rooms), RoomKind::Shared);
        let by_type = appointment(serde_json::json!({
            "appointmentType": coding("urn:metaclinic:room-kind", "shared")
        }));
        assert_eq!(room_kind(&by_type, &rooms), RoomKind::Shared);
    }

    #[test]
    fn other_codes_systems_or_none_open_a_consultation() {
        let rooms = RoomsSection::default();
        for extra in [
            serde_json::json!({}),
            serde_json::json!({ "appointmentType": coding("http://terminology.hl7.org/CodeSystem/v2-0276", "ROUTINE") }),
            serde_json::json!({ "serviceType": [coding("urn:other", "shared")] }),
            serde_json::json!({ "serviceType": [{ "text": "shared" }] }),
        ] {
            assert_eq!(
                room_kind(&appointment(extra.clone()), &rooms),
                RoomKind::Consultation,
                "{extra}"
            );
        }
        let none = RoomsSection {
            shared_codes: Vec::new(),
        };
        let a = appointment(serde_json::json!({
            "serviceType": [coding("urn:metaclinic:room-kind", "shared")]
        }));
        assert_eq!(room_kind(&a, &none), RoomKind::Consultation);
    }

    #[test]
    fn a_bare_code_matches_in_any_system() {
        let rooms = RoomsSection {
            shared_codes: vec!["GROUP".into()],
        };
        let a = appointment(serde_json::json!({
            "appointmentType": coding("https://hospital.example/codes", "GROUP")
        }));
        assert_eq!(room_kind(&a, &rooms), RoomKind::Shared);
    }

    #[test]
    fn code_patterns_are_checked() {
        for ok in ["a|b", "b", "urn:metaclinic:room-kind|shared"] {
            assert!(is_code_pattern(ok), "{ok}");
        }
        for bad in ["", "|b", "a|", "a|b|c"] {
            assert!(!is_code_pattern(bad), "{bad}");
        }
    }
}
