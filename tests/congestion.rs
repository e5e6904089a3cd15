//! Simulcast under congestion: a publisher sends three layers, and each subscriber gets the
//! best one the bandwidth towards it carries (estimated from transport-wide feedback). A
//! subscriber whose line is capped steps down alone, keeps its audio, and climbs back when
//! the cap lifts.

mod common;

use std::time::{Duration, Instant};

use metaclinic_loadtest::{
    ClientDriver, LinkSpec, ParticipantSpec, ParticipantStats, SfuParticipant, VideoSpec,
};
use metaclinic_sfu::media::Codec;

/// 640x360 at 900 kbit/s on top; 320x180 and 160x90 below it.
fn simulcast() -> VideoSpec {
    VideoSpec {
        codec: Codec::Vp8,
        width: 640,
        height: 360,
        fps: 30,
        kbps: 900,
        keyframe_interval: Duration::from_secs(10),
        simulcast: true,
    }
}

fn width_from(s: &ParticipantStats, from: &str) -> Option<u16> {
    s.video_from(from).and_then(|v| v.width)
}

/// Audio from `from`: (packets, lost).
fn audio_from(s: &ParticipantStats, from: &str) -> (u64, u64) {
    s.audio_from(from).map_or((0, 0), |a| (a.packets, a.lost))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_subscriber_steps_down_alone_and_climbs_back_when_the_cap_lifts() {
    let sfu = common::start_sfu(1);
    let driver = ClientDriver::start("congestion").unwrap();
    let c = &sfu.control;
    c.create_room("cap").await.unwrap();
    let patient = ParticipantSpec::new("patient")
        .with_tone(440)
        .with_video(simulcast());
    let _patient = SfuParticipant::join(&driver, c, "cap", Some("patient"), patient)
        .await
        .unwrap();
    let doctor = SfuParticipant::join(
        &driver,
        c,
        "cap",
        Some("host"),
        ParticipantSpec::new("doctor"),
    )
    .await
    .unwrap();
    let family = SfuParticipant::join(
        &driver,
        c,
        "cap",
        Some("companion"),
        ParticipantSpec::new("family"),
    )
    .await
    .unwrap();

    // Both start on a good line and reach the top layer.
    for who in [&doctor, &family] {
        let s = who
            .wait_for(Duration::from_secs(20), |s| {
                width_from(s, "patient") == Some(640)
            })
            .await
            .unwrap();
        assert_eq!(width_from(&s, "patient"), Some(640), "{s:#?}");
    }

    // The family member's home line drops to 600 kbit/s (a home router's 400 ms queue):
    // below the top layer with audio, above the middle one.
    let cap = LinkSpec {
        rate_kbps: Some(600),
        queue: Duration::from_millis(400),
        ..Default::default()
    };
    driver
        .set_links(family.key, None, Some(cap.clone()))
        .await
        .unwrap();
    let capped_at = Instant::now();
    let before = family.stats().await.unwrap();
    let stepped = family
        .wait_for(Duration::from_secs(10), |s| {
            width_from(s, "patient").is_some_and(|w| w < 640)
        })
        .await
        .unwrap();
    let took = capped_at.elapsed();
    let width = width_from(&stepped, "patient");
    eprintln!("capped subscriber stepped down to width {width:?} after {took:?}");
    assert!(width.is_some_and(|w| w < 640), "{stepped:#?}");
    // It stays down while the cap lasts (a step up may be tried now and then, and is undone
    // at once), and its audio keeps arriving.
    let mut samples = Vec::new();
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = family.stats().await.unwrap();
        samples.push(width_from(&s, "patient").unwrap_or(0));
    }
    let during = family.stats().await.unwrap();
    let (p0, l0) = audio_from(&before, "patient");
    let (p1, l1) = audio_from(&during, "patient");
    let (packets, lost) = (p1 - p0, l1.saturating_sub(l0));
    let loss = lost as f64 * 100.0 / (packets + lost).max(1) as f64;
    let link = during.downlink.unwrap();
    let down_share = samples.iter().filter(|&&w| w < 640).count() as f64 / samples.len() as f64;
    eprintln!(
        "under the cap: {packets} audio packets, {lost} lost ({loss:.2}%); link dropped {} datagrams at the queue; below the top layer {:.0}% of the time",
        link.queue_drops,
        down_share * 100.0
    );
    assert!(packets > 300, "audio must keep flowing: {packets} packets");
    assert!(loss < 1.0, "audio loss under the cap {loss:.2}%");
    assert!(down_share >= 0.8, "widths under the cap: {samples:?}");
    // The uncapped subscriber kept the top layer all along.
    let d = doctor.stats().await.unwrap();
    assert_eq!(width_from(&d, "patient"), Some(640), "{d:#?}");

    // The line recovers: the subscriber climbs back to the top layer.
    driver.set_links(family.key, None, None).await.unwrap();
    let lifted_at = Instant::now();
    let back = family
        .wait_for(Duration::from_secs(40), |s| {
            width_from(s, "patient") == Some(640)
        })
        .await
        .unwrap();
    eprintln!(
        "back to the top layer {:?} after the cap lifted",
        lifted_at.elapsed()
    );
    assert_eq!(width_from(&back, "patient"), Some(640), "{back:#?}");

    let m = c.metrics().await.unwrap();
    let down = common::metric(
        &m,
        "metaclinic_sfu_layer_switches_total",
        "direction=\"down\"",
    );
    let up = common::metric(
        &m,
        "metaclinic_sfu_layer_switches_total",
        "direction=\"up\"",
    );
    eprintln!("layer switches: {down} down, {up} up");
    assert!(down >= 1.0 && up >= 1.0, "down {down}, up {up}");
}
