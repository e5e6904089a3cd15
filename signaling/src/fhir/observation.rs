//! A reading from the patient's home device as a FHIR R4 `Observation` of the vital signs
//! profile: heart rate (LOINC 8867-4, /min), oxygen saturation (59408-5 with 2708-6, %),
//! blood pressure panel (85354-9 with systolic 8480-6 and diastolic 8462-4 components,
//! mm[Hg]); the patient as subject and performer, the consultation's Encounter (by
//! identifier while the call runs: its server id does not exist yet), and an identifier of
//! its own so that a retried write creates it once.

use chrono::{DateTime, SecondsFormat, Utc};
use metaclinic_protocol::vitals::{Reading, VitalKind, VitalSource};
use serde_json::{Value, json};

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// The system of the Observations' own identifiers.
pub const READING_SYSTEM: &str = "urn:metaclinic:vital-reading";

fn coding(code: &str, display: &str) -> Value {
    json!({ "system": LOINC, "code": code, "display": display })
}

fn quantity(value: f64, unit: &str, code: &str) -> Value {
    json!({ "value": value, "unit": unit, "system": UCUM, "code": code })
}

/// The Observation of `reading`, sent by `patient` (a `Patient/...` reference) in the
/// consultation whose Encounter `encounter` refers to.
pub fn observation(reading: &Reading, patient: &str, encounter: &Value) -> Value {
    let consultation = encounter["identifier"]["value"]
        .as_str()
        .unwrap_or_default();
    let effective = DateTime::<Utc>::from_timestamp_millis(reading.at_ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    let (profile, kind) = match reading.kind {
        VitalKind::HeartRate => ("heartrate", "hr"),
        VitalKind::OxygenSaturation => ("oxygensat", "spo2"),
        VitalKind::BloodPressure => ("bp", "bp"),
    };
    let mut obs = json!({
        "resourceType": "Observation",
        "meta": { "profile": [format!("http://hl7.org/fhir/StructureDefinition/{profile}")] },
        "identifier": [{
            "system": READING_SYSTEM,
            "value": format!("{consultation}/{kind}/{}", reading.at_ms),
        }],
        "status": "final",
        "category": [{ "coding": [{
            "system": CATEGORY, "code": "vital-signs", "display": "Vital Signs"
        }] }],
        "subject": { "reference": patient },
        "performer": [{ "reference": patient }],
        "encounter": encounter,
        "effectiveDateTime": effective,
        "method": { "text": match reading.source {
            VitalSource::Ble => "home device (Bluetooth)",
            VitalSource::Manual => "entered by the patient",
            VitalSource::Sim => "simulated device",
        } },
    });
    let v = &reading.values;
    match reading.kind {
        VitalKind::HeartRate => {
            obs["code"] = json!({ "coding": [coding("8867-4", "Heart rate")] });
            obs["valueQuantity"] = quantity(v[0], "beats/minute", "/min");
        }
        VitalKind::OxygenSaturation => {
            obs["code"] = json!({ "coding": [
                coding("2708-6", "Oxygen saturation in Arterial blood"),
                coding("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
            ] });
            obs["valueQuantity"] = quantity(v[0], "%", "%");
        }
        VitalKind::BloodPressure => {
            obs["code"] = json!({ "coding": [
                coding("85354-9", "Blood pressure panel with all children optional")
            ] });
            obs["component"] = json!([
                {
                    "code": { "coding": [coding("8480-6", "Systolic blood pressure")] },
                    "valueQuantity": quantity(v[0], "mmHg", "mm[Hg]"),
                },
                {
                    "code": { "coding": [coding("8462-4", "Diastolic blood pressure")] },
                    "valueQuantity": quantity(v[1], "mmHg", "mm[Hg]"),
                },
            ]);
        }
    }
    obs
}

/// The bundle entry that creates the Observation once (by its identifier).
pub fn observation_entry(observation: &Value) -> Value {
    let id = observation["identifier"][0]["value"]
        .as_str()
        .unwrap_or_default();
    json!({
        "resource": observation,
        "request": {
            "method": "POST",
            "url": "Observation",
            "ifNoneExist": format!("identifier={READING_SYSTEM}%7C{}", id.replace('/', "%2F")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encounter(consultation: &str) -> Value {
        crate::fhir::encounter::reference_by_identifier(consultation)
    }

    fn reading(json: &str) -> Reading {
        Reading::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn each_kind_has_its_loinc_code_unit_and_references() {
        let hr = observation(
            &reading(r#"{"k":"hr","v":[72],"t":1765000000000,"src":"ble"}"#),
            "Patient/p1",
            &encounter("c-1"),
        );
        assert_eq!(hr["resourceType"], "Observation");
        assert_eq!(hr["status"], "final");
        assert_eq!(hr["code"]["coding"][0]["code"], "8867-4");
        assert_eq!(hr["valueQuantity"]["value"], 72.0);
        assert_eq!(hr["valueQuantity"]["code"], "/min");
        assert_eq!(hr["subject"]["reference"], "Patient/p1");
        assert_eq!(hr["encounter"]["identifier"]["value"], "c-1");
        assert_eq!(hr["effectiveDateTime"], "2025-12-06T05:46:40.000Z");
        assert_eq!(hr["category"][0]["coding"][0]["code"], "vital-signs");

        let spo2 = observation(
            &reading(r#"{"k":"spo2","v":[97],"t":1,"src":"sim"}"#),
            "Patient/p1",
            &encounter("c-1"),
        );
        let codes: Vec<&str> = spo2["code"]["coding"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["code"].as_str())
            .collect();
        assert!(codes.contains(&"59408-5"), "{codes:?}");
        assert_eq!(spo2["valueQuantity"]["code"], "%");

        let bp = observation(
            &reading(r#"{"k":"bp","v":[128,82],"t":1,"src":"manual"}"#),
            "Patient/p1",
            &encounter("c-1"),
        );
        assert_eq!(bp["code"]["coding"][0]["code"], "85354-9");
        assert!(bp.get("valueQuantity").is_none());
        assert_eq!(bp["component"][0]["code"]["coding"][0]["code"], "8480-6");
        assert_eq!(bp["component"][0]["valueQuantity"]["value"], 128.0);
        assert_eq!(bp["component"][1]["code"]["coding"][0]["code"], "8462-4");
        assert_eq!(bp["component"][1]["valueQuantity"]["code"], "mm[Hg]");
    }

    #[test]
    fn the_same_reading_has_the_same_identifier() {
        let r = reading(r#"{"k":"hr","v":[72],"t":5,"src":"ble"}"#);
        let a = observation(&r, "Patient/p1", &encounter("c-1"));
        let b = observation(&r, "Patient/p1", &encounter("c-1"));
        assert_eq!(a["identifier"], b["identifier"]);
        let entry = observation_entry(&a);
        assert_eq!(entry["request"]["url"], "Observation");
        assert!(
            entry["request"]["ifNoneExist"]
                .as_str()
                .unwrap()
                .starts_with("identifier=urn:metaclinic:vital-reading%7Cc-1%2Fhr%2F5")
        );
        let other = observation(&r, "Patient/p1", &encounter("c-2"));
        assert_ne!(a["identifier"], other["identifier"]);
    }
}
