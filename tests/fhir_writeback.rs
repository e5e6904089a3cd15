//! FHIR write-back: a consultation held through signaling (real SFU, real WebRTC peers)
//! reaches the hospital's FHIR server (a double that checks SMART Backend Services tokens
//! and answers batch Bundles as a server does) as one `Encounter` and one `AuditEvent` per
//! audit record, with the elements FHIR R4 requires, through the authenticated client, even
//! though the server refuses the first batches; the patient's simulated device's readings as
//! LOINC-coded Observations of that Encounter. `metaclinic audit export --fhir` writes the
//! same log as NDJSON that parses as AuditEvents.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::eventually;
use common::signaling::{Harness, fixture_now};
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, Phase, SignalingParticipant, VitalsSpec};
use metaclinic_signaling::protocol::{ClientMessage, ServerMessage};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
const APPOINTMENT: &str = "tele-interp-1";
const DOCTOR: &str = "Practitioner/prac-77";
const PATIENT: &str = "Patient/pat-1042";

/// The elements FHIR R4 requires of an AuditEvent: type, recorded, agent (each with
/// requestor), source with observer; and entity.what where there are entities.
fn assert_r4_audit_event(v: &Value) {
    assert_eq!(v["resourceType"], "AuditEvent", "{v}");
    assert!(
        v["type"]["system"].is_string() && v["type"]["code"].is_string(),
        "{v}"
    );
    let recorded = v["recorded"].as_str().expect("recorded");
    chrono::DateTime::parse_from_rfc3339(recorded).expect("recorded is an instant");
    let agents = v["agent"].as_array().expect("agent");
    assert!(!agents.is_empty(), "{v}");
    assert!(agents.iter().all(|a| a["requestor"].is_boolean()), "{v}");
    assert!(v["source"]["observer"].is_object(), "{v}");
    for e in v["entity"].as_array().into_iter().flatten() {
        assert!(e["what"].is_object(), "{v}");
    }
    assert!(["0", "4", "8", "12"].contains(&v["outcome"].as_str().unwrap_or("0")));
}

/// Nothing the appointment says in free text (names, descriptions) is written anywhere.
fn assert_no_free_text(text: &str) {
    for display in [
        "Attending surgeon",
        "Medical interpreter",
        "Family member",
        "Post-operative",
    ] {
        assert!(!text.contains(display), "{display:?} was written: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_consultation_is_written_back_as_an_encounter_and_audit_events() {
    let h = Harness::start_with(|cfg| {
        cfg.fhir_writeback.enabled = true;
        cfg.fhir_writeback.batch_size = 4;
        cfg.booking.fhir.scope = "system/Appointment.read system/PractitionerRole.read \
                                  system/Encounter.write system/AuditEvent.write system/Observation.write"
            .into();
        cfg.webhooks.outbox_path = cfg.audit.path.with_file_name("outbox.jsonl");
        cfg.webhooks.retry_initial_ms = 100;
        cfg.webhooks.retry_max_ms = 400;
    })
    .await;
    h.fhir
        .put(fixture_now("appointment-telehealth-interpreter", 30));
    // The server is unavailable for its first batches: they are retried.
    h.fhir.fail_writes(3);
    let driver = ClientDriver::start("fhir-writeback").unwrap();
    let join = |who: &'static str, hz, vitals: VitalsSpec| {
        let token = h.token(who);
        let mut spec = ParticipantSpec::new(who).with_tone(hz);
        spec.vitals = Some(vitals);
        let (driver, url) = (&driver, h.ws_url.clone());
        async move {
            SignalingParticipant::join(driver, &url, APPOINTMENT, &token, None, spec)
                .await
                .unwrap()
        }
    };
    let doctor = join(DOCTOR, 440, VitalsSpec::Receive).await;
    assert!(matches!(doctor.phase(), Phase::InCall(_)));
    let device = VitalsSpec::Device {
        interval: Duration::from_millis(200),
    };
    let mut patient = join(PATIENT, 660, device).await;
    assert!(matches!(
        patient.wait_phase(T, |p| *p == Phase::Lobby).await,
        Phase::Lobby
    ));
    doctor.send(ClientMessage::Admit {
        participant: PATIENT.into(),
    });
    assert!(matches!(
        patient
            .wait_phase(T, |p| matches!(p, Phase::InCall(_)))
            .await,
        Phase::InCall(_)
    ));
    // The device's readings reach the doctor (every kind) before the end.
    let got = doctor
        .wait_media(T, |s| s.vitals_received.len() >= 4)
        .await
        .unwrap();
    assert!(got.vitals_received.len() >= 4, "{:?}", got.vitals_received);
    // What the device sent so far (a reading or two may follow before the end).
    let sent = patient.stats().await.unwrap().vitals_sent;
    doctor.send(ClientMessage::End);
    assert!(
        patient
            .wait_for(T, |m| matches!(m, ServerMessage::Ended { .. }))
            .await
            .is_some()
    );

    // One Encounter, with what R4 requires and what the write-back promises.
    assert!(
        eventually(T, || async { h.fhir.written("Encounter").len() == 1 }).await,
        "no Encounter reached the FHIR server"
    );
    let enc = &h.fhir.written("Encounter")[0];
    assert_eq!(enc["status"], "finished");
    assert_eq!(
        enc["class"]["system"],
        "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    );
    assert_eq!(enc["class"]["code"], "VR");
    assert_eq!(
        enc["appointment"][0]["reference"],
        format!("Appointment/{APPOINTMENT}")
    );
    assert_eq!(enc["subject"]["reference"], PATIENT);
    let start = enc["period"]["start"].as_str().unwrap();
    let end = enc["period"]["end"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(start).unwrap()
            <= chrono::DateTime::parse_from_rfc3339(end).unwrap()
    );
    let host = enc["participant"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["individual"]["reference"] == DOCTOR)
        .expect("the doctor is a participant");
    assert_eq!(host["type"][0]["coding"][0]["code"], "PPRF");
    assert!(host["period"]["start"].is_string());
    let identifier = enc["identifier"][0]["value"].as_str().unwrap().to_owned();

    // The readings as Observations of the patient in this Encounter, LOINC-coded by kind.
    assert!(
        eventually(T, || async { h.fhir.written("Observation").len() >= 4 }).await,
        "{} Observations",
        h.fhir.written("Observation").len()
    );
    let observations = h.fhir.written("Observation");
    let mut ids = std::collections::BTreeSet::new();
    let mut matched = 0;
    for o in &observations {
        assert_eq!(o["status"], "final", "{o}");
        assert_eq!(o["subject"]["reference"], PATIENT);
        assert_eq!(o["encounter"]["identifier"]["value"], identifier.as_str());
        assert_eq!(o["category"][0]["coding"][0]["code"], "vital-signs");
        assert!(
            ids.insert(o["identifier"][0]["value"].to_string()),
            "written twice"
        );
        let codes = o["code"]["coding"].to_string();
        let at = chrono::DateTime::parse_from_rfc3339(o["effectiveDateTime"].as_str().unwrap())
            .unwrap()
            .timestamp_millis() as u64;
        let Some(reading) = sent.iter().find(|r| r.at_ms == at) else {
            let last = sent.last().map_or(0, |r| r.at_ms);
            assert!(
                at > last,
                "an Observation of a reading the device never sent"
            );
            continue;
        };
        matched += 1;
        let (code, value) = match reading.kind {
            metaclinic_sfu::vitals::VitalKind::HeartRate => ("8867-4", &o["valueQuantity"]),
            metaclinic_sfu::vitals::VitalKind::OxygenSaturation => ("59408-5", &o["valueQuantity"]),
            metaclinic_sfu::vitals::VitalKind::BloodPressure => {
                assert!(o["component"][1]["code"].to_string().contains("8462-4"));
                ("85354-9", &o["component"][0]["valueQuantity"])
            }
        };
        assert!(codes.contains(code), "{codes}");
        assert_eq!(value["value"].as_f64(), Some(reading.values[0]));
    }
    assert!(
        matched >= 4,
        "{matched} Observations of the readings seen sent"
    );
    let kinds: std::collections::BTreeSet<String> = observations
        .iter()
        .map(|o| o["code"]["coding"][0]["code"].to_string())
        .collect();
    assert_eq!(kinds.len(), 3, "every kind: {kinds:?}");

    // Every audit record (the end and the leaves too) as an AuditEvent.
    let all_written = eventually(T, || async {
        let records = h.audit().len();
        records > 0 && h.fhir.written("AuditEvent").len() == records
    })
    .await;
    let events = h.fhir.written("AuditEvent");
    assert!(
        all_written,
        "{} AuditEvents for {} audit records",
        events.len(),
        h.audit().len()
    );
    for e in &events {
        assert_r4_audit_event(e);
    }
    let admitted = events
        .iter()
        .find(|e| e["subtype"][0]["code"] == "admit")
        .expect("the admission");
    assert_eq!(admitted["agent"][0]["who"]["reference"], DOCTOR);
    assert_eq!(admitted["agent"][0]["requestor"], true);
    let entities = admitted["entity"].to_string();
    assert!(entities.contains(&format!("Appointment/{APPOINTMENT}")));
    assert!(entities.contains(PATIENT));
    assert!(entities.contains(&identifier), "{entities}");
    assert_no_free_text(&serde_json::to_string(&h.fhir.written("AuditEvent")).unwrap());
    assert_no_free_text(&enc.to_string());

    // Through the SMART client: tokens were fetched and no write went without one.
    assert!(h.fhir.token_requests() >= 1);
    assert_eq!(h.fhir.unauthorized_writes(), 0);
    let metrics = h.state.metrics.render();
    assert!(
        common::metric(
            &metrics,
            "metaclinic_signaling_webhooks_retried_total",
            "endpoint=\"fhir\",reason=\"http_5xx\""
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        common::metric(
            &metrics,
            "metaclinic_signaling_webhooks_delivered_total",
            "endpoint=\"fhir\""
        ),
        (events.len() + 1 + observations.len()) as f64
    );

    // The Encounter's server id stays reachable for what refers to it later.
    let reference = h
        .state
        .webhooks
        .as_ref()
        .unwrap()
        .encounter_reference(APPOINTMENT)
        .await
        .expect("the Encounter's reference is kept");
    assert_eq!(
        reference["reference"],
        format!("Encounter/{}", enc["id"].as_str().unwrap())
    );
    assert_eq!(reference["identifier"]["value"], identifier.as_str());

    // The export of the same log: one AuditEvent per record, as written back.
    let out = Command::new(env!("CARGO_BIN_EXE_metaclinic"))
        .args(["audit", "export", "--fhir"])
        .arg(&h.audit_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON resource"))
        .collect();
    assert_eq!(exported.len(), h.audit().len());
    for e in &exported {
        assert_r4_audit_event(e);
        assert!(e["id"].is_string());
    }
    let ids: std::collections::HashSet<_> = exported.iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), exported.len(), "export ids are unique");
    // The pure mapping is shared: the same record makes the same AuditEvent.
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("id");
        v
    };
    let written_admit = strip(admitted.clone());
    assert!(
        exported.into_iter().map(strip).any(|e| e == written_admit),
        "the export and the write-back disagree"
    );
}

#[test]
fn the_export_refuses_a_log_that_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, "{\"seq\":1}\nnot json\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_metaclinic"))
        .args(["audit", "export", "--fhir"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let missing = Command::new(env!("CARGO_BIN_EXE_metaclinic"))
        .args(["audit", "export"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!missing.status.success(), "--fhir is required");
}
