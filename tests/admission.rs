//! A node knows what it can carry. One media thread wide and loaded past the share of its
//! time the operator allows (`rooms.max_thread_busy_pct`, set low here so that a few calls
//! cross it on any machine), it refuses what would make its calls worse: a new room and a
//! new participant get `overloaded` (503), a shared room answers `room_full`, while the
//! calls already running keep flowing without loss and a participant of a running call may
//! still reconnect.

mod common;

use std::time::Duration;

use metaclinic_loadtest::{ClientDriver, ParticipantSpec, SfuParticipant, VideoSpec};
use metaclinic_sfu::events::Rights;
use metaclinic_sfu::room::RoomKind;

const MAX_BUSY_PCT: f64 = 2.0;

fn spec(name: &str, hz: u32) -> ParticipantSpec {
    ParticipantSpec::new(name)
        .with_tone(hz)
        .with_video(VideoSpec {
            width: 320,
            height: 240,
            fps: 15,
            kbps: 300,
            keyframe_interval: Duration::from_secs(2),
            ..VideoSpec::default()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_past_its_capacity_refuses_new_work_and_keeps_its_calls_whole() {
    let sfu = common::start_sfu_with(1, &[("METACLINIC_SFU__ROOMS__MAX_THREAD_BUSY_PCT", "2")]);
    let c = &sfu.control;
    let driver = ClientDriver::start("admission").unwrap();
    // Rooms are opened while the thread is still idle.
    c.create_room_of_kind("hall", RoomKind::Shared)
        .await
        .unwrap();
    let rooms: Vec<String> = (0..3).map(|i| format!("call-{i}")).collect();
    for room in &rooms {
        c.create_room(room).await.unwrap();
    }
    let mut calls = Vec::new();
    for room in &rooms {
        for (name, hz) in [("doctor", 440), ("patient", 660)] {
            let name = format!("{room}-{name}");
            calls.push(
                SfuParticipant::join(&driver, c, room, None, spec(&name, hz))
                    .await
                    .unwrap(),
            );
        }
    }
    // Wait (boundedly) until the thread measures itself past the limit.
    let busy_pct = || async {
        let m = c.metrics().await.unwrap();
        100.0 * common::metric(&m, "metaclinic_sfu_media_thread_busy_ratio", "shard=\"0\"")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut busy = busy_pct().await;
    while busy < 2.0 * MAX_BUSY_PCT && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        busy = busy_pct().await;
    }
    assert!(
        busy >= 2.0 * MAX_BUSY_PCT,
        "the calls never loaded the thread: {busy:.2}%"
    );
    eprintln!("media thread busy: {busy:.2}% (limit {MAX_BUSY_PCT}%)");

    // No new room, no new participant in a running consultation, no new avatar in the hall.
    let e = c.create_room("one-too-many").await.unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (503, "overloaded"), "{e:?}");
    let e = c
        .open_session("call-0", "late-interpreter", None, Rights::default())
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (503, "overloaded"), "{e:?}");
    let e = c
        .open_session("hall", "avatar", None, Rights::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, "room_full", "{e:?}");
    // A participant of a running call who reconnects keeps their place.
    c.open_session("call-1", "call-1-patient", None, Rights::default())
        .await
        .expect("a reconnect is not new work");

    // The other calls went on whole all along.
    for p in calls.iter().filter(|p| !p.room.ends_with("call-1")) {
        let s = p.stats().await.unwrap();
        assert!(!s.remote.is_empty(), "{} receives nothing: {s:#?}", p.name);
        for t in &s.remote {
            assert!(t.packets > 0, "{}: {t:#?}", p.name);
            assert_eq!(t.lost, 0, "{} lost packets: {t:#?}", p.name);
            assert_eq!(t.frames_incomplete, 0, "{}: {t:#?}", p.name);
        }
    }
}
