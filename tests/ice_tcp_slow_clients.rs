//! Clients that open ICE-TCP connections and then dribble their first check (two bytes of
//! length, then one byte every two seconds) cannot lock a patient out: each such connection
//! is cut when its whole first check is overdue, one address holds only a few of the node's
//! slots, and there are slots to spare for a real client meanwhile.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use metaclinic_loadtest::participant::ParticipantStats;
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, SfuParticipant, VideoSpec};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_slow_clients_cannot_stop_a_patients_ice_tcp_join() {
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("tcp-slow").unwrap();
    let c = &sfu.control;
    c.create_room("tcp-slow").await.unwrap();
    let tcp_addr = SocketAddr::from(([127, 0, 0, 1], sfu.tcp_port));

    // 64 slow connections from 16 loopback addresses (127.0.0.2 ...), four each, dripping
    // one byte every two seconds, for ten seconds at most.
    let mut drippers = Vec::new();
    for n in 0..64u8 {
        let local = SocketAddr::from(([127, 0, 0, 2 + n / 4], 0));
        drippers.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind(local).expect("bind a loopback address");
            let Ok(mut s) = socket.connect(tcp_addr).await else {
                return;
            };
            if s.write_all(&[0, 200]).await.is_err() {
                return;
            }
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if s.write_all(&[0]).await.is_err() {
                    return;
                }
            }
        }));
    }
    // Let them take their slots.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let video = VideoSpec {
        width: 320,
        height: 240,
        fps: 15,
        kbps: 150,
        ..VideoSpec::default()
    };
    let _doctor = SfuParticipant::join(
        &driver,
        c,
        "tcp-slow",
        None,
        ParticipantSpec::new("doctor")
            .with_tone(440)
            .with_video(video.clone()),
    )
    .await
    .unwrap();
    let mut spec = ParticipantSpec::new("patient")
        .with_tone(660)
        .with_video(video);
    spec.tcp_only = true;
    let patient = SfuParticipant::join(&driver, c, "tcp-slow", None, spec)
        .await
        .unwrap();
    let both = |s: &ParticipantStats| {
        s.audio_from("doctor")
            .is_some_and(|a| a.audio_frames_decoded > 25)
            && s.video_from("doctor")
                .is_some_and(|v| v.frames_complete > 10)
    };
    let s = patient
        .wait_for(Duration::from_secs(15), both)
        .await
        .unwrap();
    assert!(
        both(&s),
        "the patient's ICE-TCP join did not get through: {s:#?}"
    );
    for d in drippers {
        d.abort();
    }
}
