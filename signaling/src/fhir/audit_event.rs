//! An audit record as a FHIR R4 `AuditEvent`, after IHE Basic Audit Log Patterns (BALP): the
//! acting user as the requesting agent (their FHIR reference, the token's `jti` as the
//! agent's policy, the client address as its network), this service as the source and
//! observer, the appointment, the patient concerned and the consultation (the Encounter's
//! identifier) as entities. References and codes only: no names, nothing said in the call.
//!
//! One pure function, [`audit_event`], serves both the write-back and
//! `metaclinic audit export --fhir`.

use serde_json::{Value, json};

use crate::audit::Committed;

pub const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// The codes of our own actions ("join", "admit", ...), as AuditEvent.subtype.
pub const ACTION_SYSTEM: &str = "urn:metaclinic:audit-action";
/// The roles of the consultation (host, patient, interpreter, companion).
pub const ROLE_SYSTEM: &str = "urn:metaclinic:role";
/// This service, as the observer of every event.
pub const SOURCE_SYSTEM: &str = "urn:metaclinic:source";
pub const SOURCE_ID: &str = "metaclinic-signaling";

/// The `AuditEvent` of `record`; `consultation` is its consultation's id (the Encounter's
/// identifier value) where the record belongs to a running one.
pub fn audit_event(record: &Committed, consultation: Option<&str>) -> Value {
    let e = &record.event;
    let (type_code, type_display, subtype) = match (e.action.as_str(), e.outcome.as_str()) {
        ("join" | "access_check" | "connect", _) => {
            ("110114", "User Authentication", Some(("110122", "Login")))
        }
        ("leave", _) => ("110114", "User Authentication", Some(("110123", "Logout"))),
        _ => ("110100", "Application Activity", None),
    };
    let mut subtypes = vec![json!({ "system": ACTION_SYSTEM, "code": e.action })];
    if let Some((code, display)) = subtype {
        subtypes.push(json!({ "system": DCM, "code": code, "display": display }));
    }
    // 0 success, 4 minor failure (a refusal), 8 serious failure (our error).
    let outcome = match e.outcome.as_str() {
        "ok" | "allow" => "0",
        "deny" => "4",
        _ => "8",
    };
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": { "system": DCM, "code": type_code, "display": type_display },
        "subtype": subtypes,
        // Execute: our actions are operations of the consultation, not reads of a record.
        "action": "E",
        "recorded": record.time,
        "outcome": outcome,
        "agent": [user_agent(record), source_agent()],
        "source": {
            "observer": { "identifier": { "system": SOURCE_SYSTEM, "value": SOURCE_ID } },
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server"
            }]
        },
    });
    let mut description = e.reason.clone().unwrap_or_default();
    if let Some(count) = e.count {
        // A summary of refusals: how many this one record stands for.
        description = format!("{description} (x{count})").trim().to_owned();
    }
    if !description.is_empty() {
        event["outcomeDesc"] = description.into();
    }
    let entities = entities(record, consultation);
    if !entities.is_empty() {
        event["entity"] = entities.into();
    }
    event
}

/// The same, with the `id` of an export (derived from the record's MAC: stable and unique).
pub fn exported_audit_event(record: &Committed, consultation: Option<&str>) -> Value {
    let mut event = audit_event(record, consultation);
    event["id"] = resource_id(record).into();
    event
}

/// Write the audit log at `path` as NDJSON of AuditEvents to `out`, one line per record
/// (with the consultation each belongs to, worked out as the write-back does). Returns how
/// many were written; stops at the first unreadable line.
pub fn export_ndjson(path: &std::path::Path, out: &mut impl std::io::Write) -> Result<u64, String> {
    let records =
        crate::audit::read_records(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut drafts: std::collections::HashMap<String, Option<crate::webhooks::lifecycle::Draft>> =
        std::collections::HashMap::new();
    let mut written = 0;
    for r in records {
        let r = r.map_err(|e| format!("{}: {e}", path.display()))?;
        let mut consultation = None;
        if let Some(a) = crate::webhooks::lifecycle::appointment_id(&r) {
            let draft = drafts.entry(a.to_owned()).or_default();
            let applied = crate::webhooks::lifecycle::apply(&r, draft);
            consultation = draft
                .as_ref()
                .map(|d| d.consultation.clone())
                .or_else(|| applied.ended.map(|(d, _)| d.consultation));
        }
        let event = exported_audit_event(&r, consultation.as_deref());
        serde_json::to_writer(&mut *out, &event).map_err(|e| e.to_string())?;
        out.write_all(b"\n").map_err(|e| e.to_string())?;
        written += 1;
    }
    Ok(written)
}

/// A FHIR id for the record's AuditEvent.
pub fn resource_id(record: &Committed) -> String {
    let tag: String = record
        .mac
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(32)
        .collect();
    format!("mc-{}-{tag}", record.seq)
}

fn user_agent(record: &Committed) -> Value {
    let e = &record.event;
    let is_patient = e
        .fhir_user
        .as_deref()
        .is_some_and(|u| u.starts_with("Patient/"));
    let agent_type = if is_patient {
        json!({ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PAT", "display": "patient" }] })
    } else {
        json!({ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "AGNT", "display": "agent" }] })
    };
    let who = match &e.fhir_user {
        Some(r) => json!({ "reference": r }),
        // Not authenticated: nobody to name but the address.
        None => json!({ "identifier": { "system": SOURCE_SYSTEM, "value": "unauthenticated" } }),
    };
    let mut agent = json!({ "type": agent_type, "who": who, "requestor": true });
    if let Some(role) = &e.role {
        agent["role"] = json!([{ "coding": [{ "system": ROLE_SYSTEM, "code": role }] }]);
    }
    if let Some(jti) = &e.jti {
        // BALP (OAuth access token use): the token's id is the agent's policy.
        agent["policy"] = json!([jti]);
    }
    if let Some(ip) = &e.client_ip {
        // Network access point type 2: an IP address.
        agent["network"] = json!({ "address": ip, "type": "2" });
    }
    agent
}

fn source_agent() -> Value {
    json!({
        "type": { "coding": [{ "system": DCM, "code": "110153", "display": "Source Role ID" }] },
        "who": { "identifier": { "system": SOURCE_SYSTEM, "value": SOURCE_ID } },
        "requestor": false
    })
}

fn entities(record: &Committed, consultation: Option<&str>) -> Vec<Value> {
    let e = &record.event;
    let object_type = |code: &str, display: &str| json!({ "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": code, "display": display });
    let object_role = |code: &str, display: &str| json!({ "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": code, "display": display });
    let mut out = Vec::new();
    if let Some(a) = &e.appointment {
        let reference = if a.contains('/') {
            a.clone()
        } else {
            format!("Appointment/{a}")
        };
        out.push(json!({
            "what": { "reference": reference },
            "type": object_type("2", "System Object"),
            "role": object_role("4", "Domain Resource"),
        }));
    }
    if let Some(c) = consultation {
        out.push(json!({
            "what": { "identifier": { "system": super::writeback::CONSULTATION_SYSTEM, "value": c } },
            "type": object_type("2", "System Object"),
            "role": object_role("4", "Domain Resource"),
        }));
    }
    // The patient concerned (BALP: patient-centric events name the patient as an entity).
    let patient = [&e.target, &e.fhir_user]
        .into_iter()
        .flatten()
        .find(|r| r.starts_with("Patient/"));
    if let Some(p) = patient {
        out.push(json!({
            "what": { "reference": p },
            "type": object_type("1", "Person"),
            "role": object_role("1", "Patient"),
        }));
    }
    if let Some(t) = e.target.as_ref().filter(|t| Some(*t) != patient) {
        out.push(json!({
            "what": { "reference": t },
            "type": object_type("1", "Person"),
            "role": object_role("6", "User"),
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::lifecycle::tests::{DOCTOR, PATIENT, consultation, rec};

    /// The elements FHIR R4 requires of an AuditEvent (and of its agents and source).
    pub(crate) fn assert_r4_audit_event(v: &Value) {
        assert_eq!(v["resourceType"], "AuditEvent");
        assert!(
            v["type"]["system"].is_string() && v["type"]["code"].is_string(),
            "{v}"
        );
        assert!(v["recorded"].is_string(), "{v}");
        let agents = v["agent"].as_array().unwrap();
        assert!(!agents.is_empty());
        assert!(agents.iter().all(|a| a["requestor"].is_boolean()), "{v}");
        assert!(agents.iter().filter(|a| a["requestor"] == true).count() == 1);
        assert!(v["source"]["observer"].is_object(), "{v}");
        if let Some(entities) = v["entity"].as_array() {
            assert!(entities.iter().all(|e| e["what"].is_object()));
        }
    }

    #[test]
    fn every_record_of_a_consultation_is_an_r4_audit_event() {
        for r in consultation() {
            let v = audit_event(&r, Some("appt-1.20260301T100100000Z"));
            assert_r4_audit_event(&v);
        }
    }

    #[test]
    fn an_admission_names_host_patient_appointment_and_consultation() {
        let mut r = rec(6, Some(DOCTOR), Some("host"), "admit", Some(PATIENT));
        r.event.jti = Some("jti-1".into());
        r.event.client_ip = Some("192.0.2.7".into());
        let v = audit_event(&r, Some("appt-1.x"));
        assert_eq!(v["type"]["code"], "110100");
        assert_eq!(v["subtype"][0]["code"], "admit");
        assert_eq!(v["outcome"], "0");
        let user = &v["agent"][0];
        assert_eq!(user["who"]["reference"], DOCTOR);
        assert_eq!(user["policy"][0], "jti-1");
        assert_eq!(user["network"]["address"], "192.0.2.7");
        assert_eq!(user["role"][0]["coding"][0]["code"], "host");
        let whats: Vec<String> = v["entity"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["what"].to_string())
            .collect();
        assert!(whats[0].contains("Appointment/appt-1"));
        assert!(whats[1].contains("appt-1.x"));
        assert!(whats[2].contains(PATIENT));
    }

    #[test]
    fn refusals_are_minor_failures_with_their_reason() {
        let mut r = rec(3, None, None, "join", None);
        r.event.outcome = "deny".into();
        r.event.reason = Some("token_invalid".into());
        r.event.count = Some(12);
        let v = audit_event(&r, None);
        assert_r4_audit_event(&v);
        assert_eq!(v["outcome"], "4");
        assert_eq!(v["outcomeDesc"], "token_invalid (x12)");
        assert_eq!(v["type"]["code"], "110114");
        assert_eq!(
            v["agent"][0]["who"]["identifier"]["value"],
            "unauthenticated"
        );
    }

    #[test]
    fn exported_events_have_stable_ids() {
        let r = rec(6, Some(DOCTOR), Some("host"), "admit", Some(PATIENT));
        let a = exported_audit_event(&r, None);
        assert_eq!(a["id"], exported_audit_event(&r, None)["id"]);
        assert!(a["id"].as_str().unwrap().len() <= 64);
    }
}
