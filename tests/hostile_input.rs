//! Hostile input against a running SFU: every kind of bad datagram and control request is
//! refused with a counted reason, nothing panics, and the call in progress carries on.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{CREDENTIAL, metric};
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, SfuParticipant, VideoSpec};
use metaclinic_sfu::events::Rights;

fn stun_binding_request(username: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112A442u32.to_be_bytes());
    m.extend_from_slice(&[9; 12]);
    m.extend_from_slice(&attrs);
    m
}

fn rtp(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 111, 0, 1, 0, 0, 0, 0];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0u8; 80]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_dropped_with_reasons_and_the_call_carries_on() {
    let mut sfu = common::start_sfu(1);
    let c = sfu.control.clone();
    c.create_room("calm").await.unwrap();
    let driver = ClientDriver::start("hostile").unwrap();
    let video = VideoSpec {
        width: 320,
        height: 240,
        fps: 15,
        kbps: 100,
        keyframe_interval: Duration::from_secs(2),
        ..VideoSpec::default()
    };
    let doctor = SfuParticipant::join(
        &driver,
        &c,
        "calm",
        Some("host"),
        ParticipantSpec::new("doctor")
            .with_tone(440)
            .with_video(video.clone()),
    )
    .await
    .unwrap();
    let patient = SfuParticipant::join(
        &driver,
        &c,
        "calm",
        Some("patient"),
        ParticipantSpec::new("patient")
            .with_tone(660)
            .with_video(video),
    )
    .await
    .unwrap();
    for (p, other) in [(&patient, "doctor"), (&doctor, "patient")] {
        let flowing = |s: &metaclinic_loadtest::ParticipantStats| {
            s.audio_from(other)
                .is_some_and(|a| a.audio_frames_decoded > 20)
                && s.video_from(other).is_some_and(|v| v.keyframes > 0)
        };
        let s = p.wait_for(Duration::from_secs(15), flowing).await.unwrap();
        assert!(flowing(&s), "the call never started: {s:#?}");
    }

    // --- Datagrams from a stranger.
    let media = sfu.media_addr();
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..50 {
        stranger.send_to(&[0xff; 64], media).unwrap();
    }
    stranger.send_to(&[], media).unwrap();
    stranger
        .send_to(&stun_binding_request("nosuchufrag:abcd"), media)
        .unwrap();
    stranger
        .send_to(&[0x00, 0x01, 0x00, 0x08, 0x21, 0x12], media)
        .unwrap(); // truncated STUN
    stranger.send_to(&rtp(0xdead_beef), media).unwrap();
    stranger.send_to(&[22; 40], media).unwrap(); // DTLS from nowhere
    stranger.send_to(&[0x80, 0x60, 0x00], media).unwrap(); // truncated RTP header
    stranger.send_to(&[0x80; 4000], media).unwrap(); // oversized

    // --- From the doctor's own, verified address: undeclared SSRCs, broken headers, junk.
    driver
        .send_undeclared_rtp(doctor.key, 0x0bad_c0de, 20)
        .await
        .unwrap();
    driver
        .send_raw(
            doctor.key,
            media,
            vec![
                vec![0x80, 0x60],
                vec![0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1],
                vec![0xff; 30],
                vec![23; 20],
            ],
        )
        .await
        .unwrap();

    // --- Control API abuse.
    let http = reqwest::Client::new();
    let base = format!("http://{}", sfu.control_addr);
    let r = http
        .post(format!("{base}/v1/rooms"))
        .json(&serde_json::json!({"room": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no credential");
    let r = http
        .post(format!("{base}/v1/rooms"))
        .bearer_auth("wrong-credential-0000000")
        .json(&serde_json::json!({"room": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "wrong credential");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = http
        .post(format!("{base}/v1/rooms"))
        .bearer_auth(CREDENTIAL)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "malformed JSON");
    let r = http
        .post(format!("{base}/v1/rooms"))
        .bearer_auth(CREDENTIAL)
        .body(vec![b' '; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "oversized body");
    let r = http
        .post(format!("{base}/v1/rooms"))
        .bearer_auth(CREDENTIAL)
        .json(&serde_json::json!({"room": "bad id!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "invalid room id");
    c.open_session("calm", "intruder", None, Rights::default())
        .await
        .unwrap();
    let err = c
        .offer("calm", "intruder", "v=0\r\nthis is not sdp\r\n".into())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status, err.code.as_str()),
        (400, "invalid_sdp"),
        "{err}"
    );
    let err = c
        .answer("calm", "intruder", "v=0\r\n".into())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status, err.code.as_str()),
        (409, "no_pending_offer"),
        "{err}"
    );
    let err = c
        .offer("calm", "nobody", "v=0\r\n".into())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status, err.code.as_str()),
        (404, "participant_not_found"),
        "{err}"
    );
    let err = c
        .offer("no-such-room", "nobody", "v=0\r\n".into())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status, err.code.as_str()),
        (404, "room_not_found"),
        "{err}"
    );
    // Video preferences name a track the participant receives, or nothing happens.
    use metaclinic_sfu::control::api::{VideoPreference, VideoQuality};
    let stray = VideoPreference {
        track: metaclinic_sfu::ids::TrackId(999_999),
        max_quality: Some(VideoQuality::Low),
        pinned: true,
    };
    let err = c
        .set_video_preference("calm", "doctor", &stray)
        .await
        .unwrap_err();
    assert_eq!(
        (err.status, err.code.as_str()),
        (404, "track_not_found"),
        "{err}"
    );
    let r = http
        .post(format!(
            "{}/v1/rooms/calm/participants/doctor/video",
            c.base()
        ))
        .bearer_auth(CREDENTIAL)
        .body(r#"{"track":"t1","max_quality":"ultra"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "an unknown quality");
    c.close_session("calm", "intruder").await.unwrap();

    // --- Every drop is counted under its reason.
    tokio::time::sleep(Duration::from_millis(600)).await; // tallies publish every 200 ms
    let m = c.metrics().await.unwrap();
    let dropped = |reason: &str| {
        metric(
            &m,
            "metaclinic_sfu_dropped_total",
            &format!("reason=\"{reason}\""),
        )
    };
    assert!(dropped("unclassifiable") >= 52.0, "{m}");
    assert!(dropped("unknown_ufrag") >= 1.0, "{m}");
    assert!(dropped("malformed_stun") >= 1.0, "{m}");
    assert!(dropped("unknown_peer") >= 2.0, "{m}");
    assert!(dropped("truncated_rtp") >= 3.0, "{m}");
    assert!(dropped("oversized") >= 1.0, "{m}");
    assert!(dropped("unknown_ssrc") >= 20.0, "{m}");
    assert_eq!(dropped("peer_panic"), 0.0, "{m}");
    let refused = |code: &str| {
        metric(
            &m,
            "metaclinic_sfu_control_refused_total",
            &format!("code=\"{code}\""),
        )
    };
    assert!(refused("unauthorized") >= 2.0, "{m}");
    assert!(refused("bad_request") >= 3.0, "{m}");
    assert!(refused("track_not_found") >= 1.0, "{m}");
    assert!(refused("payload_too_large") >= 1.0, "{m}");
    assert!(refused("invalid_sdp") >= 1.0, "{m}");

    // --- The process lives and the call carries on, both ways.
    assert!(sfu.is_alive());
    let before = (
        patient
            .stats()
            .await
            .unwrap()
            .audio_from("doctor")
            .unwrap()
            .packets,
        doctor
            .stats()
            .await
            .unwrap()
            .video_from("patient")
            .unwrap()
            .packets,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = (
        patient
            .stats()
            .await
            .unwrap()
            .audio_from("doctor")
            .unwrap()
            .packets,
        doctor
            .stats()
            .await
            .unwrap()
            .video_from("patient")
            .unwrap()
            .packets,
    );
    assert!(
        after.0 >= before.0 + 30,
        "doctor's audio stalled: {before:?} -> {after:?}"
    );
    assert!(
        after.1 >= before.1 + 10,
        "patient's video stalled: {before:?} -> {after:?}"
    );
    let room = c.room("calm").await.unwrap();
    assert_eq!(room.participants.len(), 2);
}
