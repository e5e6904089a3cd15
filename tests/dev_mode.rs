//! The README's try-out, as a test: `metaclinic dev` (signaling, an SFU node, demo
//! appointments and the dev token issuer in one process), then a doctor and a patient join
//! `demo-consult` with `loadtest join`'s code: the doctor admits the patient from the lobby
//! and they hear each other's tone.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metaclinic_loadtest::join::{self, JoinArgs};
use metaclinic_loadtest::local::{free_tcp_addr, free_udp_ports};
use metaclinic_sfu::media::Codec;

/// The dev process, killed when the test ends however it ends.
struct DevProcess(Child);

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let http = free_tcp_addr().unwrap();
    let udp = free_udp_ports(1).unwrap();
    let base = format!("http://{http}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_metaclinic"))
        .arg("dev")
        .env("METACLINIC_SIGNALING__HTTP__LISTEN", http.to_string())
        .env("METACLINIC_SIGNALING__HTTP__PUBLIC_URL", &base)
        .env("METACLINIC_SFU__RTC__UDP_PORT", udp.to_string())
        .env(
            "METACLINIC_SFU__RTC__TCP_PORT",
            free_tcp_addr().unwrap().port().to_string(),
        )
        .env("METACLINIC_SFU__RTC__MEDIA_THREADS", "1")
        .env("METACLINIC_SFU__RTC__BIND_IP", "127.0.0.1")
        .env("METACLINIC_SFU__NODE__ANNOUNCED_IP", "127.0.0.1")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _dev = DevProcess(child);

    // The banner says what to do; read it (bounded) until the token example.
    let banner = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.contains("May they join?") {
                break;
            }
        }
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !banner.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let banner = banner.join().unwrap();
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
        serde_json::json!({ "role": "patient", "admission": "lobby" })
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
