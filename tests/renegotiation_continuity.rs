//! Nobody already in a call notices someone joining it: while the SFU renegotiates a
//! subscriber (an interpreter's tracks are offered to the doctor and the patient), the tracks
//! that are already flowing keep flowing, with no hole in their numbering and no frame lost,
//! even when a participant takes 300 ms to answer. The same in a shared room, where a
//! camera turned on must not interrupt anyone's mix; and a subscriber whose first keyframe
//! packet is lost still starts its picture long before the publisher's next keyframe.

mod common;

use std::time::Duration;

use metaclinic_loadtest::SfuControl;
use metaclinic_loadtest::netem::LinkSpec;
use metaclinic_loadtest::participant::{ParticipantStats, RemoteTrackStats};
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, SfuParticipant, VideoSpec};
use metaclinic_sfu::room::RoomKind;

fn video() -> VideoSpec {
    VideoSpec {
        width: 320,
        height: 240,
        fps: 15,
        kbps: 150,
        keyframe_interval: Duration::from_secs(3),
        ..VideoSpec::default()
    }
}

fn spec(name: &str, hz: u32) -> ParticipantSpec {
    ParticipantSpec::new(name).with_tone(hz).with_video(video())
}

/// Audio decoded and whole video frames from `from`.
fn receives(s: &ParticipantStats, from: &str) -> bool {
    s.audio_from(from)
        .is_some_and(|a| a.audio_frames_decoded >= 10)
        && s.video_from(from).is_some_and(|v| v.frames_complete >= 5)
}

/// The stream from `from` arrived whole: no hole in its numbering, nothing missing, no frame
/// given up on, and (where the sender itself skipped nothing) no stretch of media withheld:
/// at most a few frames' time between packets adjacent in the numbering.
fn whole(s: &ParticipantStats, from: &str, sender_skipped: u64) -> Result<(), String> {
    let tracks: Vec<&RemoteTrackStats> = s.remote.iter().filter(|t| t.from == from).collect();
    if tracks.len() != 2 {
        return Err(format!("expected audio and video from {from}: {tracks:#?}"));
    }
    for t in tracks {
        if t.seq_gaps > 0 || t.lost > 0 || t.frames_incomplete > 0 {
            return Err(format!("{from}'s {:?} has holes: {t:#?}", t.codec));
        }
        // Audio comes every 20 ms, video frames every 67 ms.
        if sender_skipped == 0 && t.max_media_gap_ms > 150.0 {
            return Err(format!("{from}'s {:?} was withheld: {t:#?}", t.codec));
        }
    }
    Ok(())
}

/// One consultation: doctor and patient talk, then the interpreter joins. The doctor
/// answers every offer of the SFU 300 ms late.
async fn one_consultation(driver: &ClientDriver, c: &SfuControl, room: &str) -> Result<(), String> {
    let wait = Duration::from_secs(20);
    c.create_room(room).await.map_err(|e| e.to_string())?;
    let mut slow = spec(&format!("{room}-doctor"), 440);
    slow.answer_delay = Duration::from_millis(300);
    let doctor = SfuParticipant::join(driver, c, room, Some("host"), slow)
        .await
        .map_err(|e| e.to_string())?;
    let patient_name = format!("{room}-patient");
    let patient = SfuParticipant::join(driver, c, room, Some("patient"), spec(&patient_name, 660))
        .await
        .map_err(|e| e.to_string())?;
    let doctor_name = doctor.name.clone();
    let s = doctor.wait_for(wait, |s| receives(s, &patient_name)).await;
    let s = s.map_err(|e| e.to_string())?;
    if !receives(&s, &patient_name) {
        return Err(format!("the doctor never got the patient: {s:#?}"));
    }
    let s = patient.wait_for(wait, |s| receives(s, &doctor_name)).await;
    let s = s.map_err(|e| e.to_string())?;
    if !receives(&s, &doctor_name) {
        return Err(format!("the patient never got the doctor: {s:#?}"));
    }

    let interpreter_name = format!("{room}-interpreter");
    let interpreter = SfuParticipant::join(
        driver,
        c,
        room,
        Some("interpreter"),
        spec(&interpreter_name, 880),
    )
    .await
    .map_err(|e| e.to_string())?;
    // Everyone receives everyone once the renegotiations are done.
    for (p, others) in [
        (&doctor, [&patient_name, &interpreter_name]),
        (&patient, [&doctor_name, &interpreter_name]),
        (&interpreter, [&doctor_name, &patient_name]),
    ] {
        let s = p
            .wait_for(wait, |s| others.iter().all(|o| receives(s, o)))
            .await
            .map_err(|e| e.to_string())?;
        if !others.iter().all(|o| receives(&s, o)) {
            return Err(format!("{} decoded too little: {s:#?}", p.name));
        }
    }
    // And what flowed before the interpreter came never broke. (A sender starved of CPU
    // skips frames itself, which is not the SFU's doing.)
    let (d, p) = (doctor.stats().await, patient.stats().await);
    let d = d.map_err(|e| e.to_string())?;
    let p = p.map_err(|e| e.to_string())?;
    whole(&d, &patient_name, p.frames_skipped)?;
    whole(&p, &doctor_name, d.frames_skipped)?;
    for p in [doctor, patient, interpreter] {
        let _ = p.leave().await;
    }
    let _ = c.close_room(room).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreter_joining_freezes_nobody_twenty_times_over() {
    let sfu = common::start_sfu(2);
    let driver = ClientDriver::start("continuity").unwrap();
    let c = &sfu.control;
    // Twenty consultations, four at a time.
    for batch in 0..5 {
        let runs = (0..4).map(|i| {
            let room = format!("continuity-{}", batch * 4 + i);
            let (driver, c) = (&driver, c);
            async move { (room.clone(), one_consultation(driver, c, &room).await) }
        });
        for (room, result) in futures_util::future::join_all(runs).await {
            if let Err(e) = result {
                panic!("{room}: {e}");
            }
        }
    }
    let m = c.metrics().await.unwrap();
    assert_eq!(
        common::metric(&m, "metaclinic_sfu_dropped_total", "reason=\"send_failed\""),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_first_keyframe_packet_is_recovered_without_waiting_for_the_next_keyframe() {
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("first-keyframe").unwrap();
    let c = &sfu.control;
    c.create_room("first-keyframe").await.unwrap();
    // The publisher's own keyframes come only every 30 s: a picture sooner than that was
    // repaired by the SFU (a retransmission or a keyframe it asked for).
    let publisher = ParticipantSpec::new("doctor").with_video(VideoSpec {
        keyframe_interval: Duration::from_secs(30),
        ..video()
    });
    let _doctor = SfuParticipant::join(&driver, c, "first-keyframe", Some("host"), publisher)
        .await
        .unwrap();
    // The subscriber's link loses the first VP8 packet of every stream it receives: the
    // first packet of its first keyframe.
    let down = LinkSpec {
        lose_first_of_payload_type: Some(metaclinic_sfu::webrtc::PT_VP8),
        ..LinkSpec::default()
    };
    let patient = SfuParticipant::join(
        &driver,
        c,
        "first-keyframe",
        Some("patient"),
        ParticipantSpec::new("patient").with_links(None, Some(down)),
    )
    .await
    .unwrap();
    let s = patient
        .wait_for(Duration::from_secs(10), |s| {
            s.video_from("doctor")
                .is_some_and(|v| v.frames_complete >= 5)
        })
        .await
        .unwrap();
    let v = s.video_from("doctor").unwrap_or_else(|| panic!("{s:#?}"));
    assert!(v.frames_complete >= 5, "the picture never started: {v:#?}");
    assert!(
        s.downlink.is_some_and(|l| l.lost >= 1),
        "the link must have lost the first keyframe packet: {s:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_turned_on_in_a_shared_room_interrupts_no_mix() {
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("shared-camera").unwrap();
    let c = &sfu.control;
    c.create_room_of_kind("hall", RoomKind::Shared)
        .await
        .unwrap();
    let mut people = Vec::new();
    for (name, hz) in [("a", 500), ("b", 700), ("c", 900)] {
        let mut p = ParticipantSpec::new(name).with_tone(hz);
        p.data_channel = true;
        // One listener answers slowly, as a phone on a weak network would.
        if name == "b" {
            p.answer_delay = Duration::from_millis(300);
        }
        people.push(
            SfuParticipant::join(&driver, c, "hall", None, p)
                .await
                .unwrap(),
        );
    }
    let mix = |s: &ParticipantStats| -> Option<RemoteTrackStats> {
        s.remote
            .iter()
            .find(|t| t.from == "spatial-mix" && !t.ended)
            .cloned()
    };
    for p in &people {
        let s = p
            .wait_for(Duration::from_secs(10), |s| {
                mix(s).is_some_and(|t| t.audio_frames_decoded > 50)
            })
            .await
            .unwrap();
        assert!(mix(&s).is_some(), "{} has no mix: {s:#?}", p.name);
    }
    let before: Vec<RemoteTrackStats> = {
        let mut v = Vec::new();
        for p in &people {
            v.push(mix(&p.stats().await.unwrap()).unwrap());
        }
        v
    };
    // "a" turns the camera on: the others are offered its video.
    people[0].set_video(Some(video())).await.unwrap();
    for p in &people[1..] {
        let s = p
            .wait_for(Duration::from_secs(10), |s| {
                s.video_from("a").is_some_and(|v| v.frames_complete >= 5)
            })
            .await
            .unwrap();
        assert!(
            s.video_from("a").is_some(),
            "{} never saw a's camera: {s:#?}",
            p.name
        );
    }
    for (p, before) in people.iter().zip(&before) {
        let m = mix(&p.stats().await.unwrap()).unwrap();
        assert_eq!(m.seq_gaps, 0, "{}'s mix broke off: {m:#?}", p.name);
        // The mixer's clock runs on while a mix cannot be sent: a timestamp jump is a
        // stretch of the mix withheld.
        assert!(
            m.max_media_gap_ms < 100.0,
            "{}'s mix was withheld: {m:#?}",
            p.name
        );
        assert_eq!(m.lost, 0, "{}'s mix lost packets: {m:#?}", p.name);
        // The mix runs at 50 packets a second: over the second or more the renegotiation
        // took, it went on.
        assert!(
            m.packets > before.packets + 25,
            "{}'s mix stalled: {before:#?} -> {m:#?}",
            p.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_mute_and_unmute_leave_no_hole_to_nack() {
    use metaclinic_sfu::media::MediaKind;
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("mute-continuity").unwrap();
    let c = &sfu.control;
    c.create_room("mute").await.unwrap();
    let doctor = SfuParticipant::join(&driver, c, "mute", Some("host"), spec("doctor", 440))
        .await
        .unwrap();
    let _patient = SfuParticipant::join(&driver, c, "mute", Some("patient"), spec("patient", 660))
        .await
        .unwrap();
    let s = doctor
        .wait_for(Duration::from_secs(15), |s| receives(s, "patient"))
        .await
        .unwrap();
    assert!(receives(&s, "patient"), "{s:#?}");
    for kind in [MediaKind::Audio, MediaKind::Video] {
        c.set_muted("mute", "patient", kind, true).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let muted = doctor.stats().await.unwrap();
    for kind in [MediaKind::Audio, MediaKind::Video] {
        c.set_muted("mute", "patient", kind, false).await.unwrap();
    }
    let frames = |s: &ParticipantStats| s.video_from("patient").map_or(0, |v| v.frames_complete);
    let before = frames(&muted);
    let s = doctor
        .wait_for(Duration::from_secs(10), |s| frames(s) >= before + 10)
        .await
        .unwrap();
    assert!(frames(&s) >= before + 10, "the video never resumed: {s:#?}");
    for t in s.remote.iter().filter(|t| t.from == "patient") {
        // What the SFU withheld while muted is not a hole the doctor's side would NACK.
        assert_eq!(t.seq_gaps, 0, "{t:#?}");
        assert_eq!(t.lost, 0, "{t:#?}");
        assert_eq!(t.frames_incomplete, 0, "{t:#?}");
    }
}
