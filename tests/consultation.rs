//! A consultation through a real SFU process: doctor, patient and interpreter are real
//! WebRTC participants (the client library), each publishing an Opus tone of its own
//! frequency and synthetic VP8.

mod common;

use std::time::Duration;

use metaclinic_loadtest::participant::ParticipantStats;
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, SfuParticipant, VideoSpec};

fn spec(name: &str, hz: u32) -> ParticipantSpec {
    ParticipantSpec::new(name)
        .with_tone(hz)
        .with_video(VideoSpec {
            width: 320,
            height: 240,
            fps: 15,
            kbps: 150,
            keyframe_interval: Duration::from_secs(2),
            ..VideoSpec::default()
        })
}

/// Receiving well from `from`: decoded audio, the sender's tone, and video from a keyframe on.
fn hears_and_sees(s: &ParticipantStats, from: &str) -> bool {
    let audio = s
        .audio_from(from)
        .is_some_and(|a| a.audio_frames_decoded >= 25);
    let video = s
        .video_from(from)
        .is_some_and(|v| v.keyframes >= 1 && v.frames >= 10);
    audio && video
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_patient_and_interpreter_hear_and_see_each_other() {
    let sfu = common::start_sfu(2);
    let driver = ClientDriver::start("consult").unwrap();
    let c = &sfu.control;
    c.create_room("consult-1").await.unwrap();
    c.create_room("consult-2").await.unwrap();

    let doctor = SfuParticipant::join(&driver, c, "consult-1", Some("host"), spec("doctor", 440))
        .await
        .unwrap();
    let patient = SfuParticipant::join(
        &driver,
        c,
        "consult-1",
        Some("patient"),
        spec("patient", 660),
    )
    .await
    .unwrap();
    let interpreter = SfuParticipant::join(
        &driver,
        c,
        "consult-1",
        Some("interpreter"),
        spec("interpreter", 880),
    )
    .await
    .unwrap();
    // A second consultation at the same time, on the same node.
    let other_a = SfuParticipant::join(
        &driver,
        c,
        "consult-2",
        Some("host"),
        spec("other-doctor", 300),
    )
    .await
    .unwrap();
    let other_b = SfuParticipant::join(
        &driver,
        c,
        "consult-2",
        Some("patient"),
        spec("other-patient", 350),
    )
    .await
    .unwrap();

    let tones = [
        ("doctor", 440.0),
        ("patient", 660.0),
        ("interpreter", 880.0),
    ];
    for p in [&doctor, &patient, &interpreter] {
        let others: Vec<_> = tones.iter().filter(|(n, _)| *n != p.name).collect();
        let s = p
            .wait_for(Duration::from_secs(20), |s| {
                others.iter().all(|(o, _)| hears_and_sees(s, o))
            })
            .await
            .unwrap();
        for (o, hz) in &others {
            assert!(
                hears_and_sees(&s, o),
                "{} does not receive {o} well: {s:#?}",
                p.name
            );
            let got = s.audio_from(o).unwrap().tone_hz.unwrap_or(0.0);
            assert!(
                (got - hz).abs() < 5.0,
                "{} hears {o} at {got} Hz, sent {hz} Hz",
                p.name
            );
            let audio = s.audio_from(o).unwrap();
            assert_eq!(audio.decode_errors, 0);
        }
        // Nothing from the other room.
        assert!(
            s.remote.iter().all(|t| !t.from.starts_with("other-")),
            "{} received another room's media: {s:#?}",
            p.name
        );
    }
    for p in [&other_a, &other_b] {
        let peer = if p.name == "other-doctor" {
            "other-patient"
        } else {
            "other-doctor"
        };
        let s = p
            .wait_for(Duration::from_secs(20), |s| hears_and_sees(s, peer))
            .await
            .unwrap();
        assert!(hears_and_sees(&s, peer), "{s:#?}");
        assert!(
            s.remote.iter().all(|t| t.from.starts_with("other-")),
            "room 2 received room 1's media: {s:#?}"
        );
    }

    // The interpreter leaves: its tracks end for the others, and the others carry on.
    interpreter.leave().await.unwrap();
    for p in [&doctor, &patient] {
        let s = p
            .wait_for(Duration::from_secs(10), |s| {
                s.remote
                    .iter()
                    .filter(|t| t.from == "interpreter")
                    .all(|t| t.ended)
            })
            .await
            .unwrap();
        let ended: Vec<_> = s
            .remote
            .iter()
            .filter(|t| t.from == "interpreter")
            .collect();
        assert_eq!(ended.len(), 2, "{s:#?}");
        assert!(
            ended.iter().all(|t| t.ended),
            "{} still has live tracks of the interpreter: {s:#?}",
            p.name
        );
    }
    let before = patient
        .stats()
        .await
        .unwrap()
        .audio_from("doctor")
        .unwrap()
        .packets;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = patient
        .stats()
        .await
        .unwrap()
        .audio_from("doctor")
        .unwrap()
        .packets;
    assert!(
        after > before + 10,
        "the remaining call stopped: {before} -> {after}"
    );
    let room = c.room("consult-1").await.unwrap();
    assert_eq!(room.participants.len(), 2);
    assert_eq!(room.tracks.len(), 4);
}
