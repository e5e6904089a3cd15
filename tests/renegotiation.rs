//! Mid-call changes renegotiate: a camera turned on reaches the others as a new track (here
//! in H.264), turned off it ends for them; a participant who only watches receives everything
//! over a connection that carries no media of its own.

mod common;

use std::time::Duration;

use metaclinic_loadtest::{ClientDriver, ParticipantSpec, SfuParticipant, VideoSpec};
use metaclinic_sfu::media::Codec;

fn vp8() -> VideoSpec {
    VideoSpec {
        width: 320,
        height: 240,
        fps: 15,
        kbps: 150,
        keyframe_interval: Duration::from_secs(2),
        ..VideoSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cameras_turned_on_and_off_mid_call_renegotiate() {
    let sfu = common::start_sfu(1);
    let c = &sfu.control;
    c.create_room("reneg").await.unwrap();
    let driver = ClientDriver::start("reneg").unwrap();
    let doctor = SfuParticipant::join(
        &driver,
        c,
        "reneg",
        Some("host"),
        ParticipantSpec::new("doctor")
            .with_tone(440)
            .with_video(vp8()),
    )
    .await
    .unwrap();
    // The patient joins with the microphone only.
    let patient = SfuParticipant::join(
        &driver,
        c,
        "reneg",
        Some("patient"),
        ParticipantSpec::new("patient").with_tone(660),
    )
    .await
    .unwrap();
    // A family member who only watches: publishes nothing.
    let mut watcher_spec = ParticipantSpec::new("companion");
    watcher_spec.decode_audio = true;
    let companion = SfuParticipant::join(&driver, c, "reneg", Some("companion"), watcher_spec)
        .await
        .unwrap();

    let s = doctor
        .wait_for(Duration::from_secs(15), |s| {
            s.audio_from("patient")
                .is_some_and(|a| a.audio_frames_decoded > 10)
        })
        .await
        .unwrap();
    assert!(
        s.audio_from("patient")
            .is_some_and(|a| a.audio_frames_decoded > 10),
        "{s:#?}"
    );
    assert!(s.video_from("patient").is_none(), "no camera yet: {s:#?}");

    // The patient turns the camera on, in H.264.
    patient
        .set_video(Some(VideoSpec {
            codec: Codec::H264,
            ..vp8()
        }))
        .await
        .unwrap();
    let got_video = |s: &metaclinic_loadtest::ParticipantStats| {
        s.video_from("patient")
            .is_some_and(|v| v.keyframes >= 1 && v.frames >= 10)
    };
    let s = doctor
        .wait_for(Duration::from_secs(15), got_video)
        .await
        .unwrap();
    assert!(
        got_video(&s),
        "the doctor never saw the patient's camera: {s:#?}"
    );
    assert_eq!(s.video_from("patient").unwrap().codec, Codec::H264);

    // The companion, with no media of its own, receives all of it.
    let watched = |s: &metaclinic_loadtest::ParticipantStats| {
        s.audio_from("doctor")
            .is_some_and(|a| a.audio_frames_decoded > 10)
            && s.video_from("doctor").is_some_and(|v| v.keyframes >= 1)
            && s.audio_from("patient")
                .is_some_and(|a| a.audio_frames_decoded > 10)
            && s.video_from("patient").is_some_and(|v| v.keyframes >= 1)
    };
    let s = companion
        .wait_for(Duration::from_secs(15), watched)
        .await
        .unwrap();
    assert!(watched(&s), "{s:#?}");
    assert_eq!(s.sent_packets, 0);

    // The camera goes off: the track ends for the others; the patient's audio goes on.
    patient.set_video(None).await.unwrap();
    let ended = |s: &metaclinic_loadtest::ParticipantStats| {
        s.remote
            .iter()
            .filter(|t| t.from == "patient" && t.codec == Codec::H264)
            .all(|t| t.ended)
    };
    for p in [&doctor, &companion] {
        let s = p.wait_for(Duration::from_secs(10), ended).await.unwrap();
        assert!(
            ended(&s),
            "{}: the patient's camera track did not end: {s:#?}",
            p.name
        );
    }
    let before = doctor
        .stats()
        .await
        .unwrap()
        .audio_from("patient")
        .unwrap()
        .packets;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = doctor
        .stats()
        .await
        .unwrap()
        .audio_from("patient")
        .unwrap()
        .packets;
    assert!(
        after >= before + 10,
        "the patient's audio stopped with the camera: {before} -> {after}"
    );
    let room = c.room("reneg").await.unwrap();
    assert_eq!(
        room.tracks
            .iter()
            .filter(|t| t.participant.as_str() == "patient")
            .count(),
        1,
        "{room:#?}"
    );

    // And on again: a new track.
    patient.set_video(Some(vp8())).await.unwrap();
    let back = |s: &metaclinic_loadtest::ParticipantStats| {
        s.video_from("patient")
            .is_some_and(|v| v.codec == Codec::Vp8 && v.keyframes >= 1)
    };
    let s = doctor
        .wait_for(Duration::from_secs(15), back)
        .await
        .unwrap();
    assert!(back(&s), "{s:#?}");
}
