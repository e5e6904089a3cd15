//! A finished consultation as a FHIR R4 `Encounter`: status finished, class virtual (v3
//! ActCode VR), its period, the appointment it fulfils, the patient as subject, and everyone
//! else who was in the call as a participant with their type and period. References only.
//!
//! R4 allows Practitioner, PractitionerRole and RelatedPerson as `participant.individual`;
//! a patient is the `subject`. The Encounter carries the consultation's id as its
//! identifier, so that a retried write creates it once (`ifNoneExist`) and so that other
//! resources (Observations) can point at it before its server id is known.

use serde_json::{Value, json};

use super::writeback::CONSULTATION_SYSTEM;
use crate::webhooks::lifecycle::Draft;

const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";

/// The Encounter of the consultation `draft`, ended at `ended_at`.
pub fn encounter(draft: &Draft, ended_at: &str) -> Value {
    let mut participants = Vec::new();
    let mut subject = None;
    for (reference, span) in &draft.participants {
        // Only who was in the call; someone who only waited in the lobby was not.
        let Some(first_in) = &span.first_in else {
            continue;
        };
        if reference.starts_with("Patient/") {
            subject.get_or_insert_with(|| reference.clone());
            continue;
        }
        let individual_ok = ["Practitioner/", "PractitionerRole/", "RelatedPerson/"]
            .iter()
            .any(|p| reference.starts_with(p));
        if !individual_ok {
            continue;
        }
        let (code, display) = match span.role.as_deref() {
            Some("host") => ("PPRF", "primary performer"),
            Some("interpreter") => ("TRANS", "Translator"),
            Some("companion") => ("ESC", "escort"),
            _ => ("PART", "Participation"),
        };
        let mut period = json!({ "start": first_in });
        period["end"] = span.last_out.as_deref().unwrap_or(ended_at).into();
        participants.push(json!({
            "type": [{ "coding": [{ "system": PARTICIPATION, "code": code, "display": display }] }],
            "period": period,
            "individual": { "reference": reference },
        }));
    }
    let mut enc = json!({
        "resourceType": "Encounter",
        "identifier": [{ "system": CONSULTATION_SYSTEM, "value": draft.consultation }],
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "VR",
            "display": "virtual"
        },
        "period": { "start": draft.started_at, "end": ended_at },
        "appointment": [{ "reference": format!("Appointment/{}", draft.appointment) }],
    });
    if let Some(s) = subject {
        enc["subject"] = json!({ "reference": s });
    }
    if !participants.is_empty() {
        enc["participant"] = participants.into();
    }
    enc
}

/// How other resources point at the consultation's Encounter before its server id is
/// known: a logical reference by identifier.
pub fn reference_by_identifier(consultation: &str) -> Value {
    json!({
        "type": "Encounter",
        "identifier": { "system": CONSULTATION_SYSTEM, "value": consultation }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::lifecycle::tests::{DOCTOR, INTERPRETER, PATIENT, consultation};
    use crate::webhooks::lifecycle::{Applied, apply};

    fn finished() -> (Draft, String) {
        let mut draft = None;
        let mut ended = None;
        for r in consultation() {
            let Applied { ended: e, .. } = apply(&r, &mut draft);
            ended = ended.or(e);
        }
        ended.unwrap()
    }

    /// The elements FHIR R4 requires of an Encounter, and what the write-back promises.
    pub(crate) fn assert_r4_encounter(v: &Value) {
        assert_eq!(v["resourceType"], "Encounter");
        assert_eq!(v["status"], "finished");
        assert_eq!(v["class"]["code"], "VR");
        assert_eq!(
            v["class"]["system"],
            "http://terminology.hl7.org/CodeSystem/v3-ActCode"
        );
        assert!(v["period"]["start"].is_string() && v["period"]["end"].is_string());
        assert!(v["appointment"][0]["reference"].is_string());
    }

    #[test]
    fn a_finished_consultation_is_a_virtual_encounter() {
        let (d, end) = finished();
        let v = encounter(&d, &end);
        assert_r4_encounter(&v);
        assert_eq!(v["appointment"][0]["reference"], "Appointment/appt-1");
        assert_eq!(v["subject"]["reference"], PATIENT);
        assert_eq!(v["period"]["start"], "2026-03-01T10:01:00.000Z");
        assert_eq!(v["period"]["end"], "2026-03-01T10:12:00.000Z");
        assert_eq!(v["identifier"][0]["value"], d.consultation);
        let parts = v["participant"].as_array().unwrap();
        let find = |r: &str| {
            parts
                .iter()
                .find(|p| p["individual"]["reference"] == r)
                .unwrap()
                .clone()
        };
        assert_eq!(find(DOCTOR)["type"][0]["coding"][0]["code"], "PPRF");
        let interp = find(INTERPRETER);
        assert_eq!(interp["type"][0]["coding"][0]["code"], "TRANS");
        assert_eq!(interp["period"]["start"], "2026-03-01T10:08:00.000Z");
        // The patient is the subject, not a participant (R4).
        assert!(
            parts
                .iter()
                .all(|p| p["individual"]["reference"] != PATIENT)
        );
    }

    #[test]
    fn lobby_only_participants_are_not_in_the_encounter() {
        let (mut d, end) = finished();
        d.participants.get_mut(INTERPRETER).unwrap().first_in = None;
        let v = encounter(&d, &end);
        let parts = v["participant"].as_array().unwrap();
        assert!(
            parts
                .iter()
                .all(|p| p["individual"]["reference"] != INTERPRETER)
        );
    }
}
