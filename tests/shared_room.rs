//! A shared room end to end: three real clients, audio mixed on the server into one binaural
//! stream per listener. As the speaker's avatar walks from the listener's left to its right,
//! the listener's decoded stereo moves from left-heavy to right-heavy.

mod common;

use std::time::Duration;

use metaclinic_loadtest::participant::ParticipantStats;
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, SfuParticipant};
use metaclinic_sfu::events::Rights;
use metaclinic_sfu::room::RoomKind;
use metaclinic_sfu::spatial::Pose;

fn mix(s: &ParticipantStats) -> Option<&metaclinic_loadtest::participant::RemoteTrackStats> {
    s.remote
        .iter()
        .find(|t| t.from == "spatial-mix" && !t.ended)
}

/// Balance (left over right, dB) once the mix has settled after a move.
async fn balance_after_move(listener: &SfuParticipant) -> f64 {
    // Half a second of jitter buffer, crossfades and the analyser's window.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let s = listener.stats().await.unwrap();
    mix(&s)
        .and_then(|t| t.balance_db)
        .unwrap_or_else(|| panic!("no balance: {s:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_moves_from_the_left_ear_to_the_right_as_its_avatar_walks() {
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("shared").unwrap();
    let c = &sfu.control;
    c.create_room_of_kind("hall", RoomKind::Shared)
        .await
        .unwrap();

    // 3 kHz: the head shadows high frequencies most, as for the consonants of speech.
    let mut speaker = ParticipantSpec::new("speaker").with_tone(3000);
    speaker.data_channel = true;
    let mut listener = ParticipantSpec::new("listener");
    listener.data_channel = true;
    let mut other = ParticipantSpec::new("other").with_tone(700);
    other.data_channel = true;
    if let Some(a) = &mut other.publish.audio {
        a.level_dbfs = -90.0; // present but silent
    }
    let speaker = SfuParticipant::join(&driver, c, "hall", None, speaker)
        .await
        .unwrap();
    let listener = SfuParticipant::join(&driver, c, "hall", None, listener)
        .await
        .unwrap();
    let other = SfuParticipant::join(&driver, c, "hall", None, other)
        .await
        .unwrap();

    // The listener gets one stereo mix, not the others' audio tracks.
    let s = listener
        .wait_for(Duration::from_secs(10), |s| {
            mix(s).is_some_and(|t| t.audio_frames_decoded > 50)
        })
        .await
        .unwrap();
    assert!(mix(&s).is_some(), "{s:#?}");
    assert!(
        s.audio_from("speaker").is_none(),
        "a shared room must not forward voices: {s:#?}"
    );
    assert!(s.audio_from("other").is_none());

    // Poses travel on the data channel: the listener at the origin facing -z (forward),
    // the other far away, the speaker two metres to the listener's left.
    let send =
        |p: &SfuParticipant, pose: Pose| driver.send_on_channel(p.key, pose.encode().to_vec());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while send(&listener, Pose::at([0.0, 0.0, 0.0])).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the data channel never opened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send(&other, Pose::at([0.0, 0.0, 10.0])).await.unwrap();
    send(&speaker, Pose::at([-2.0, 0.0, 0.0])).await.unwrap();
    let left = balance_after_move(&listener).await;

    // The speaker walks around to the listener's right.
    for x in [-1.5f32, -0.5, 0.5, 1.5, 2.0] {
        send(&speaker, Pose::at([x, 0.0, -0.5])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send(&speaker, Pose::at([2.0, 0.0, 0.0])).await.unwrap();
    let right = balance_after_move(&listener).await;
    eprintln!("listener's balance: speaker on the left {left:.1} dB, on the right {right:.1} dB");
    assert!(
        left > 6.0,
        "a voice on the left must be louder in the left ear: {left:.1} dB"
    );
    assert!(
        right < -6.0,
        "a voice on the right must be louder in the right ear: {right:.1} dB"
    );

    // The speaker hears nothing of itself; the listener still hears the speaker's tone.
    let s = listener.stats().await.unwrap();
    let hz = mix(&s).and_then(|t| t.tone_hz).unwrap();
    assert!((hz - 3000.0).abs() < 30.0, "{hz}");
    let m = c.metrics().await.unwrap();
    assert_eq!(
        common::metric(&m, "metaclinic_sfu_dropped_total", "reason=\"bad_pose\""),
        0.0
    );

    // Hostile poses: garbage is refused, a flood is cut to the rate limit, the mix goes on.
    driver
        .send_on_channel(other.key, vec![9; 29])
        .await
        .unwrap();
    driver
        .send_on_channel(other.key, vec![1, 2, 3])
        .await
        .unwrap();
    for _ in 0..50 {
        send(&other, Pose::at([0.0, 0.0, 10.0])).await.unwrap();
    }
    let mut counted = (0.0, 0.0);
    for _ in 0..30 {
        let m = c.metrics().await.unwrap();
        counted = (
            common::metric(&m, "metaclinic_sfu_dropped_total", "reason=\"bad_pose\""),
            common::metric(&m, "metaclinic_sfu_dropped_total", "reason=\"pose_rate\""),
        );
        if counted.0 >= 1.0 && counted.1 >= 30.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        counted.0 >= 1.0 && counted.1 >= 30.0,
        "bad poses and the flood must be counted: {counted:?}"
    );
    let before = mix(&listener.stats().await.unwrap())
        .unwrap()
        .audio_frames_decoded;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = mix(&listener.stats().await.unwrap())
        .unwrap()
        .audio_frames_decoded;
    assert!(
        after >= before + 15,
        "the mix must go on: {before} -> {after}"
    );
}

/// A waiting hall holds more people than a consultation: the shared room's cap is its
/// mixer's (`spatial.max_participants`), not `rooms.max_participants`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_room_holds_more_than_a_consultation() {
    let sfu = common::start_sfu_with(
        1,
        &[
            ("METACLINIC_SFU__ROOMS__MAX_PARTICIPANTS", "2"),
            ("METACLINIC_SFU__SPATIAL__MAX_PARTICIPANTS", "3"),
        ],
    );
    let c = &sfu.control;
    c.create_room_of_kind("consult", RoomKind::Consultation)
        .await
        .unwrap();
    c.create_room_of_kind("hall", RoomKind::Shared)
        .await
        .unwrap();
    for who in ["a", "b"] {
        c.open_session("consult", who, None, Rights::default())
            .await
            .unwrap();
    }
    let full = c
        .open_session("consult", "c", None, Rights::default())
        .await
        .unwrap_err();
    assert_eq!(full.code, "room_full", "{full:?}");
    for who in ["a", "b", "c"] {
        c.open_session("hall", who, None, Rights::default())
            .await
            .unwrap_or_else(|e| panic!("{who} enters the hall: {e:?}"));
    }
    let full = c
        .open_session("hall", "d", None, Rights::default())
        .await
        .unwrap_err();
    assert_eq!(full.code, "room_full", "{full:?}");
}
