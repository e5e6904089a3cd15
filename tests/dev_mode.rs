//! The README's try-out, as a test: `metaclinic dev` (signaling, an SFU node, demo
//! appointments and the dev token issuer in one process), then a doctor and a patient join
//! `demo-consult` with `loadtest join`'s code: the doctor admits the patient from the lobby
//! and they hear each other's tone.

mod common;

use std::time::Duration;

use metaclinic_loadtest::join::{self, JoinArgs};
use metaclinic_sfu::media::Codec;

fn args(base: &str, who: &str, tone: u32) -> JoinArgs {
    JoinArgs {
        signaling: base.to_owned(),
        appointment: "demo-consult".into(),
        fhir_user: who.into(),
        token: None,
        invite: None,
        tone,
        video_kbps: Some(200),
        admit_all: false,
        seconds: 8,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_consultation_in_dev_mode() {
    let dev = common::dev::start_dev().await;
    let (base, banner) = (dev.base.clone(), dev.banner.clone());
    for expected in [
        "Practitioner/dr-demo",
        "Patient/pat-demo",
        "demo-consult",
        &base,
    ] {
        assert!(
            banner.contains(expected),
            "the banner lacks {expected}:\n{banner}"
        );
    }

    // A token from the dev issuer lets the patient check before joining.
    let token = join::dev_token(&base, "Patient/pat-demo").await.unwrap();
    let access: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/v1/appointments/demo-consult/access"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        access,
        // No TURN in dev mode unless a shared secret is configured: no ICE servers to try.
        serde_json::json!({ "role": "patient", "admission": "lobby", "ice_servers": [] })
    );

    let doctor = tokio::spawn(join::run(
        JoinArgs {
            admit_all: true,
            ..args(&base, "Practitioner/dr-demo", 440)
        },
        |l| eprintln!("doctor: {l}"),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut patient_lines = Vec::new();
    let patient = join::run(
        JoinArgs {
            seconds: 7,
            ..args(&base, "Patient/pat-demo", 660)
        },
        |l| patient_lines.push(l.to_owned()),
    )
    .await
    .unwrap();
    let doctor = doctor.await.unwrap().unwrap();

    assert!(
        patient_lines.iter().any(|l| l.contains("lobby")),
        "{patient_lines:#?}"
    );
    // Signaling relays the SFU's view: who talks, and how the patient's connection is.
    let saw = |what: &str| patient_lines.iter().any(|l| l.contains(what));
    assert!(saw("\"type\":\"active_speaker\""), "{patient_lines:#?}");
    assert!(saw("\"kbps_up\""), "{patient_lines:#?}");
    assert_eq!(patient.ended, "left");
    let heard = patient.last_stats.expect("the patient got into the call");
    let from_doctor = heard
        .audio_from("Practitioner/dr-demo")
        .expect("audio from the doctor");
    let hz = from_doctor.tone_hz.expect("a tone");
    assert!((hz - 440.0).abs() < 5.0, "patient hears {hz} Hz");
    assert!(
        heard
            .video_from("Practitioner/dr-demo")
            .is_some_and(|v| v.keyframes > 0),
        "{heard:#?}"
    );
    let heard = doctor.last_stats.expect("the doctor was in the call");
    // The patient left first, so its tracks have ended by the doctor's last report.
    let from_patient = |codec| {
        heard
            .remote
            .iter()
            .find(|t| t.from == "Patient/pat-demo" && t.codec == codec)
    };
    let video =
        from_patient(Codec::Vp8).unwrap_or_else(|| panic!("video from the patient: {heard:#?}"));
    assert!(
        video.frames_complete > 30 && video.frames_incomplete == 0,
        "{video:#?}"
    );
    let hz = from_patient(Codec::Opus).and_then(|t| t.tone_hz);
    let hz = hz.unwrap_or_else(|| panic!("the doctor hears the patient: {heard:#?}"));
    assert!((hz - 660.0).abs() < 5.0, "doctor hears {hz} Hz");
}
