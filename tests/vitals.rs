//! Vitals travel with the call: a patient's simulated home device sends readings on the
//! consultation's `vitals` data channel; they reach the doctor, not the companion or the
//! interpreter, until a host shares them with companions; readings from anyone but the
//! patient are dropped; nothing of them reaches the log (signaling and SFU, one `metaclinic
//! dev` process, our own code logging at debug level).

mod common;

use std::time::Duration;

use common::dev::start_dev_logged;
use metaclinic_loadtest::participant::ParticipantStats;
use metaclinic_loadtest::{
    ClientDriver, ParticipantSpec, Phase, SignalingParticipant, VitalsSpec, join::dev_token,
};
use metaclinic_sfu::vitals::VitalKind;
use metaclinic_signaling::protocol::{ClientMessage, ServerMessage};

const T: Duration = Duration::from_secs(20);
const APPOINTMENT: &str = "demo-consult";
const DOCTOR: &str = "Practitioner/dr-demo";
const PATIENT: &str = "Patient/pat-demo";
const INTERPRETER: &str = "Practitioner/interp-demo";
const COMPANION: &str = "RelatedPerson/family-demo";
/// How often the patient's simulated device reads.
const DEVICE_INTERVAL: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_reach_the_clinicians_only_and_never_the_log() {
    tokio::time::timeout(Duration::from_secs(150), consultation())
        .await
        .expect("the vitals consultation finished within 150 s");
}

async fn consultation() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev_logged(dir.path().join("dev.log")).await;
    let ws = format!("{}/v1/ws", dev.base.replace("http://", "ws://"));
    let driver = ClientDriver::start("vitals").unwrap();
    let join = |who: &'static str, vitals: VitalsSpec| {
        let (driver, ws, base) = (&driver, ws.clone(), dev.base.clone());
        async move {
            let token = dev_token(&base, who).await.unwrap();
            let mut spec = ParticipantSpec::new(who).with_tone(440);
            spec.vitals = Some(vitals);
            SignalingParticipant::join(driver, &ws, APPOINTMENT, &token, None, spec)
                .await
                .unwrap()
        }
    };
    let doctor = join(DOCTOR, VitalsSpec::Receive).await;
    assert!(matches!(doctor.phase(), Phase::InCall(_)));
    let mut patient = join(
        PATIENT,
        VitalsSpec::Device {
            interval: DEVICE_INTERVAL,
        },
    )
    .await;
    // The interpreter's client pretends to have a device: its readings must go nowhere.
    let mut interpreter = join(
        INTERPRETER,
        VitalsSpec::Device {
            interval: Duration::from_millis(300),
        },
    )
    .await;
    let mut companion = join(COMPANION, VitalsSpec::Receive).await;
    for who in [PATIENT, INTERPRETER, COMPANION] {
        doctor.send(ClientMessage::Admit {
            participant: who.into(),
        });
    }
    for p in [&mut patient, &mut interpreter, &mut companion] {
        let phase = p.wait_phase(T, |p| matches!(p, Phase::InCall(_))).await;
        assert!(matches!(phase, Phase::InCall(_)), "{phase:?}");
    }

    // The doctor gets the patient's readings of every kind, as the device sent them.
    let s = doctor
        .wait_media(T, |s| {
            kinds_from(s, PATIENT) == 3 && s.vitals_received.len() >= 6
        })
        .await
        .unwrap();
    assert_eq!(kinds_from(&s, PATIENT), 3, "{:?}", s.vitals_received);
    let sent = patient.stats().await.unwrap().vitals_sent;
    for r in &s.vitals_received {
        assert_eq!(
            r.from, PATIENT,
            "a reading from someone else reached the doctor"
        );
        assert!(
            sent.iter().any(|x| x == &r.reading),
            "the doctor got a reading the patient's device never sent"
        );
    }
    assert_eq!(s.vitals_malformed, 0);
    // Neither the companion (not shared yet) nor the interpreter, nor the patient back.
    for p in [&companion, &interpreter, &patient] {
        assert!(p.stats().await.unwrap().vitals_received.is_empty());
    }
    assert!(!interpreter.stats().await.unwrap().vitals_sent.is_empty());

    // Only a host shares them; then the companion receives them too.
    patient.send(ClientMessage::ShareVitals { companions: true });
    let refused = patient
        .wait_for(
            T,
            |m| matches!(m, ServerMessage::Error { code, .. } if code == "not_host"),
        )
        .await;
    assert!(refused.is_some(), "a patient shared the vitals");
    doctor.send(ClientMessage::ShareVitals { companions: true });
    let s = companion
        .wait_media(T, |s| s.vitals_received.len() >= 3)
        .await
        .unwrap();
    assert!(s.vitals_received.iter().all(|r| r.from == PATIENT));
    assert!(
        interpreter
            .stats()
            .await
            .unwrap()
            .vitals_received
            .is_empty()
    );

    // Nothing of any reading is in the log: no value the device sent, no channel message.
    let log = dev.log();
    assert!(log.contains("session opened"), "the log was not captured");
    let sent = patient.stats().await.unwrap().vitals_sent;
    assert!(sent.len() >= 6);
    for r in &sent {
        assert!(
            !log.contains(&r.at_ms.to_string()),
            "a reading's time is in the log"
        );
    }
    for needle in ["\"k\":", "\"v\":[", "spo2", "\"src\""] {
        assert!(!log.contains(needle), "{needle} is in the log");
    }
    // The SFU counted the interpreter's readings as refused.
    let metrics = reqwest::get(format!("{}/metrics", dev.sfu_control))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = metric(
        &metrics,
        "metaclinic_sfu_dropped_total{reason=\"vitals_refused\"}",
    );
    assert!(refused >= 1.0, "refused readings not counted: {refused}");
    let relayed = metric(&metrics, "metaclinic_sfu_vitals_readings_total");
    assert!(relayed >= 6.0, "relayed readings not counted: {relayed}");
}

fn kinds_from(s: &ParticipantStats, from: &str) -> usize {
    let mut kinds: Vec<VitalKind> = s
        .vitals_received
        .iter()
        .filter(|r| r.from == from)
        .map(|r| r.reading.kind)
        .collect();
    kinds.sort_by_key(|k| *k as u8);
    kinds.dedup();
    kinds.len()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
