//! Media over bad networks: loss on the publisher's and the subscriber's links (recovered by
//! NACK and retransmission), keyframes for a subscriber who joins mid-call, the dominant
//! speaker, and quality figures.

mod common;

use std::time::Duration;

use metaclinic_loadtest::control::StreamItem;
use metaclinic_loadtest::participant::ParticipantStats;
use metaclinic_loadtest::{ClientDriver, LinkSpec, ParticipantSpec, SfuParticipant, VideoSpec};
use metaclinic_sfu::events::RoomEvent;
use metaclinic_sfu::ids::ParticipantId;

fn video(kbps: u32, keyframe_interval: Duration) -> VideoSpec {
    VideoSpec {
        width: 640,
        height: 360,
        fps: 30,
        kbps,
        keyframe_interval,
        ..VideoSpec::default()
    }
}

fn lossy(loss: f64, seed: u64) -> Option<LinkSpec> {
    Some(LinkSpec {
        loss,
        seed,
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(5),
        ..Default::default()
    })
}

fn video_frames(s: &ParticipantStats, from: &str) -> (u64, u64) {
    s.video_from(from)
        .map(|v| (v.frames_complete, v.frames_incomplete))
        .unwrap_or_default()
}

fn audio_frames(s: &ParticipantStats, from: &str) -> u64 {
    s.audio_from(from)
        .map(|a| a.audio_frames_decoded)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_each_way_leaves_video_whole_and_audio_flowing() {
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("lossy").unwrap();
    let c = &sfu.control;
    c.create_room("lossy").await.unwrap();
    // The publisher's link and the subscriber's link each lose 5% of datagrams both ways,
    // with 10-15 ms of delay and jitter (so retransmissions arrive out of order).
    let publisher = ParticipantSpec::new("patient")
        .with_tone(440)
        .with_video(video(500, Duration::from_secs(10)))
        .with_links(lossy(0.05, 11), lossy(0.05, 12));
    let subscriber = ParticipantSpec::new("doctor").with_links(lossy(0.05, 13), lossy(0.05, 14));
    let publisher = SfuParticipant::join(&driver, c, "lossy", Some("patient"), publisher)
        .await
        .unwrap();
    let subscriber = SfuParticipant::join(&driver, c, "lossy", Some("host"), subscriber)
        .await
        .unwrap();

    // Wait until video flows, then measure over a window.
    let ok = subscriber
        .wait_for(Duration::from_secs(15), |s| {
            video_frames(s, "patient").0 > 30
        })
        .await
        .unwrap();
    assert!(video_frames(&ok, "patient").0 > 30, "{ok:#?}");
    let (s0, p0) = (
        subscriber.stats().await.unwrap(),
        publisher.stats().await.unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (s1, p1) = (
        subscriber.stats().await.unwrap(),
        publisher.stats().await.unwrap(),
    );

    let sent = p1.video_frames_sent - p0.video_frames_sent;
    let (c0, i0) = video_frames(&s0, "patient");
    let (c1, i1) = video_frames(&s1, "patient");
    let complete = c1 - c0;
    let ratio = complete as f64 / sent as f64;
    let audio = audio_frames(&s1, "patient") - audio_frames(&s0, "patient");
    let links = (p1.uplink.unwrap(), s1.downlink.unwrap());
    eprintln!(
        "frames sent {sent}, complete {complete} ({:.1}%), given up {}; audio frames {audio} of ~500; links lost {} / {} datagrams",
        ratio * 100.0,
        i1 - i0,
        links.0.lost,
        links.1.lost
    );
    assert!(
        links.0.lost > 50 && links.1.lost > 50,
        "the links must really lose: {links:?}"
    );
    assert!(
        ratio >= 0.98,
        "only {:.1}% of video frames complete",
        ratio * 100.0
    );
    // Opus has no retransmission: about 10% of its packets are lost, the rest play.
    assert!(
        audio >= 400,
        "audio must keep flowing: {audio} frames in 10 s"
    );
    let hz = s1.audio_from("patient").and_then(|a| a.tone_hz).unwrap();
    assert!((hz - 440.0).abs() < 5.0, "{hz}");
    // The SFU answered the subscriber's NACKs from its send buffer, and says so.
    let m = c.metrics().await.unwrap();
    let nacked = common::metric(&m, "metaclinic_sfu_nacked_packets_total", "");
    let resent = common::metric(&m, "metaclinic_sfu_retransmissions_total", "");
    eprintln!("SFU: {nacked} packets NACKed by the subscriber, {resent} retransmitted");
    assert!(
        nacked > 10.0 && resent > 10.0,
        "nacked {nacked}, retransmitted {resent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_joining_mid_call_gets_a_keyframe_at_once() {
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("midcall").unwrap();
    let c = &sfu.control;
    c.create_room("midcall").await.unwrap();
    // Keyframes only when asked (one a minute otherwise).
    let publisher = ParticipantSpec::new("doctor")
        .with_tone(440)
        .with_video(video(300, Duration::from_secs(60)));
    let publisher = SfuParticipant::join(&driver, c, "midcall", Some("host"), publisher)
        .await
        .unwrap();
    let first = SfuParticipant::join(
        &driver,
        c,
        "midcall",
        Some("patient"),
        ParticipantSpec::new("patient"),
    )
    .await
    .unwrap();
    first
        .wait_for(Duration::from_secs(10), |s| {
            s.video_from("doctor").is_some_and(|v| v.keyframes >= 1)
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = publisher.stats().await.unwrap().keyframe_requests;

    let late = SfuParticipant::join(
        &driver,
        c,
        "midcall",
        Some("interpreter"),
        ParticipantSpec::new("interpreter"),
    )
    .await
    .unwrap();
    let s = late
        .wait_for(Duration::from_secs(10), |s| {
            s.video_from("doctor").is_some_and(|v| v.keyframes >= 1)
        })
        .await
        .unwrap();
    let v = s
        .video_from("doctor")
        .unwrap_or_else(|| panic!("{s:#?}\n{:#?}", s.remote));
    let connected = s.connect_ms.unwrap();
    let waited = v.first_packet_ms.unwrap().saturating_sub(connected);
    let after = publisher.stats().await.unwrap().keyframe_requests;
    eprintln!(
        "first video {waited} ms after the connection; publisher asked {} more times",
        after - before
    );
    assert!(
        after > before,
        "the SFU must ask the publisher for a keyframe"
    );
    // The first packet forwarded is a keyframe's; it came within one coalescing interval
    // (500 ms, config rtc.keyframe_request_interval_ms) plus the publisher's next frame.
    assert!(waited <= 600, "waited {waited} ms for the first keyframe");
    assert!(v.frames_incomplete == 0);
}

/// Room events until `until` holds for one of them (bounded).
async fn next_event(
    events: &mut metaclinic_loadtest::control::EventStream,
    timeout: Duration,
    until: impl Fn(&RoomEvent) -> bool,
) -> Option<RoomEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(StreamItem::Event(env))) if until(&env.event) => return Some(env.event),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dominant_speaker_follows_whoever_talks_and_everyone_gets_quality_figures() {
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("speakers").unwrap();
    let c = &sfu.control;
    c.create_room("speakers").await.unwrap();
    let mut events = c.room_events("speakers").await.unwrap();
    let mut people = Vec::new();
    for (name, hz) in [("doctor", 440), ("patient", 660), ("interpreter", 880)] {
        // Everyone starts quiet (-80 dBFS: background).
        let mut spec = ParticipantSpec::new(name).with_tone(hz);
        if let Some(a) = &mut spec.publish.audio {
            a.level_dbfs = -80.0;
        }
        people.push(
            SfuParticipant::join(&driver, c, "speakers", None, spec)
                .await
                .unwrap(),
        );
    }
    for turn in ["patient", "doctor", "interpreter", "patient"] {
        for p in &people {
            let level = if p.name == turn { -15.0 } else { -80.0 };
            driver.set_tone_level(p.key, level).await.unwrap();
        }
        let wanted = ParticipantId::new(turn).unwrap();
        let got = next_event(
            &mut events,
            Duration::from_secs(5),
            |e| matches!(e, RoomEvent::DominantSpeaker { participant: Some(p) } if *p == wanted),
        )
        .await;
        assert!(
            got.is_some(),
            "{turn} talks but is not the dominant speaker"
        );
    }
    // Everyone falls silent: nobody is the speaker.
    for p in &people {
        driver.set_tone_level(p.key, -80.0).await.unwrap();
    }
    let got = next_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, RoomEvent::DominantSpeaker { participant: None })
    })
    .await;
    assert!(got.is_some(), "silence must clear the dominant speaker");

    // Quality figures arrive for each participant: bitrates both ways, an RTT from the
    // receiver reports, no loss on loopback.
    let q = next_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, RoomEvent::Quality { participant, quality } if participant.as_str() == "doctor" && quality.rtt_ms.is_some())
    })
    .await;
    let Some(RoomEvent::Quality { quality, .. }) = q else {
        let any = next_event(&mut events, Duration::from_secs(3), |e| {
            matches!(e, RoomEvent::Quality { .. })
        })
        .await;
        panic!("no quality figures with an RTT for the doctor; one of them: {any:?}")
    };
    eprintln!("doctor's quality: {quality:?}");
    assert!(
        quality.kbps_up > 20.0 && quality.kbps_down > 40.0,
        "{quality:?}"
    );
    assert!(
        quality.rtt_ms.unwrap() < 50.0 && quality.loss_up_pct < 1.0,
        "{quality:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_restart_from_a_new_port_resumes_media_without_a_rejoin() {
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("restart").unwrap();
    let c = &sfu.control;
    c.create_room("restart").await.unwrap();
    let doctor = SfuParticipant::join(
        &driver,
        c,
        "restart",
        None,
        ParticipantSpec::new("doctor").with_tone(440),
    )
    .await
    .unwrap();
    let patient = SfuParticipant::join(
        &driver,
        c,
        "restart",
        None,
        ParticipantSpec::new("patient")
            .with_tone(660)
            .with_video(video(300, Duration::from_secs(2))),
    )
    .await
    .unwrap();
    let heard = |s: &ParticipantStats, from: &str| {
        s.audio_from(from)
            .map(|a| a.audio_frames_decoded)
            .unwrap_or(0)
    };
    doctor
        .wait_for(Duration::from_secs(10), |s| heard(s, "patient") > 50)
        .await
        .unwrap();
    let before = doctor.stats().await.unwrap();

    // The patient's phone moves networks: a new local port, the old one gone.
    patient.restart_ice().await.unwrap();
    let after = doctor
        .wait_for(Duration::from_secs(10), |s| {
            heard(s, "patient") > heard(&before, "patient") + 100
        })
        .await
        .unwrap();
    assert!(
        heard(&after, "patient") > heard(&before, "patient") + 100,
        "the patient's audio did not come back"
    );
    let p = patient
        .wait_for(Duration::from_secs(5), |s| heard(s, "doctor") > 200)
        .await
        .unwrap();
    assert!(
        heard(&p, "doctor") > 200,
        "the patient no longer hears the doctor"
    );
    // Still the same session: nobody left, the tracks are the originals.
    let room = c.room("restart").await.unwrap();
    assert_eq!(room.participants.len(), 2);
    assert_eq!(
        after
            .remote
            .iter()
            .filter(|t| t.from == "patient" && !t.ended)
            .count(),
        2,
        "{after:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_a_udp_blocking_firewall_joins_over_ice_tcp() {
    let sfu = common::start_sfu(2);
    let driver = ClientDriver::start("tcp").unwrap();
    let c = &sfu.control;
    c.create_room("tcp").await.unwrap();
    let doctor = SfuParticipant::join(
        &driver,
        c,
        "tcp",
        None,
        ParticipantSpec::new("doctor")
            .with_tone(440)
            .with_video(video(300, Duration::from_secs(2))),
    )
    .await
    .unwrap();
    // Hostile connections first: a frame longer than any datagram, a frame that is not STUN,
    // and one that never says anything. Each is closed; nobody else notices.
    use std::io::{Read, Write};
    let tcp_addr = std::net::SocketAddr::from(([127, 0, 0, 1], sfu.tcp_port));
    let mut closers = Vec::new();
    for bytes in [&[0xff, 0xff, 1, 2, 3][..], &[0, 4, 1, 2, 3, 4][..], &[][..]] {
        let mut s = std::net::TcpStream::connect(tcp_addr).unwrap();
        s.write_all(bytes).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        closers.push(std::thread::spawn(move || {
            let mut b = [0u8; 16];
            matches!(s.read(&mut b), Ok(0) | Err(_))
        }));
    }
    let mut spec = ParticipantSpec::new("patient")
        .with_tone(660)
        .with_video(video(300, Duration::from_secs(2)));
    spec.tcp_only = true;
    let patient = SfuParticipant::join(&driver, c, "tcp", None, spec)
        .await
        .unwrap();

    let both = |s: &ParticipantStats, from: &str| {
        s.audio_from(from)
            .is_some_and(|a| a.audio_frames_decoded > 50)
            && s.video_from(from).is_some_and(|v| v.frames_complete > 20)
    };
    let p = patient
        .wait_for(Duration::from_secs(15), |s| both(s, "doctor"))
        .await
        .unwrap();
    assert!(
        both(&p, "doctor"),
        "the TCP-only patient must receive the doctor: {p:#?}"
    );
    let d = doctor
        .wait_for(Duration::from_secs(10), |s| both(s, "patient"))
        .await
        .unwrap();
    assert!(
        both(&d, "patient"),
        "the doctor must receive the TCP-only patient: {d:#?}"
    );
    let hz = d.audio_from("patient").and_then(|a| a.tone_hz).unwrap();
    assert!((hz - 660.0).abs() < 5.0, "{hz}");
    eprintln!("over ICE-TCP: patient connected in {:?} ms", p.connect_ms);
    for c in closers {
        assert!(
            c.join().unwrap(),
            "a hostile ICE-TCP connection was left open"
        );
    }
}
